import { QueryClient, QueryClientProvider, useQuery } from "@tanstack/react-query";
import { act, render, screen, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { keys, metricsQuery } from "../src/api/queries";
import type { MetricSeriesList } from "../src/api/types";
import { MetricChart } from "../src/charts/MetricChart";
import { useFederationEvents } from "../src/live/useFederationEvents";
import { FEDERATION_CHARTS } from "../src/metrics/charts";
import { findSeries } from "../src/metrics/series";
import { metricsResponse } from "./fixtures";

// Drawing is ECharts' job (and needs a canvas jsdom lacks); the container and its attributes are ours.
vi.mock("../src/charts/EChart", () => ({
  EChart: ({ option: _option, label, ...rest }: { option: unknown; label: string }) => (
    <div role="img" aria-label={label} {...rest} />
  ),
}));

/** Stands in for the browser's EventSource: the test emits the server's messages. */
class FakeEventSource {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 2;
  static last: FakeEventSource | null = null;
  readyState = FakeEventSource.CONNECTING;
  onopen: (() => void) | null = null;
  onerror: (() => void) | null = null;
  private listeners = new Map<string, (message: { data: string }) => void>();
  constructor(readonly url: string) {
    FakeEventSource.last = this;
  }
  addEventListener(type: string, listener: (message: { data: string }) => void) {
    this.listeners.set(type, listener);
  }
  close() {
    this.readyState = FakeEventSource.CLOSED;
  }
  emit(id: number, type: string, payload: unknown) {
    this.listeners.get(type)?.({ data: JSON.stringify({ id, type, payload, created_at: "" }) });
  }
}

function LiveDiscChart({ id }: { id: string }) {
  const metrics = useQuery(metricsQuery(id));
  useFederationEvents(id, metrics.data?.last_event_id);
  return <MetricChart spec={FEDERATION_CHARTS[0]!} metrics={metrics.data} />;
}

function renderLive(client: QueryClient) {
  render(
    <QueryClientProvider client={client}>
      <LiveDiscChart id="fed-1" />
    </QueryClientProvider>,
  );
  return screen.getByTestId("chart-disc-acc");
}

const discAcc = (client: QueryClient) =>
  findSeries(client.getQueryData<MetricSeriesList>(keys.metrics("fed-1")), "disc_acc")!.points;

describe("the discriminator chart, live", () => {
  beforeEach(() => vi.stubGlobal("EventSource", FakeEventSource));
  afterEach(() => {
    vi.unstubAllGlobals();
    vi.useRealTimers();
  });

  it("follows the stream from the snapshot's last event, and plots each new round once", async () => {
    const client = new QueryClient();
    client.setQueryData(keys.metrics("fed-1"), metricsResponse(3, 30));
    const chart = renderLive(client);
    expect(chart).toHaveAttribute("data-points", "3");
    // Not the whole history again: only what came after the snapshot.
    expect(FakeEventSource.last!.url).toBe("/api/v1/federations/fed-1/events?after=30");

    act(() =>
      FakeEventSource.last!.emit(40, "metrics", { round: 4, node: null, metrics: { disc_acc: 0.51 } }),
    );
    await waitFor(() => expect(chart).toHaveAttribute("data-points", "4"));

    // After a reconnect the server sends round 4 again: still four rounds.
    act(() =>
      FakeEventSource.last!.emit(40, "metrics", { round: 4, node: null, metrics: { disc_acc: 0.51 } }),
    );
    act(() =>
      FakeEventSource.last!.emit(41, "metrics", { round: 5, node: "mnist", metrics: { disc_acc_own: 0.5 } }),
    );
    // Events are handled in order: once a later round is plotted, the two above have been handled too.
    act(() =>
      FakeEventSource.last!.emit(42, "metrics", { round: 6, node: null, metrics: { disc_acc: 0.52 } }),
    );
    await waitFor(() => expect(chart).toHaveAttribute("data-points", "5"));
    expect(discAcc(client).map((point) => point.round)).toEqual([1, 2, 3, 4, 6]);
  });

  it("replaces the point of a round the snapshot already holds", async () => {
    const client = new QueryClient();
    // Round 3 was recorded between the snapshot's last_event_id and its read of the series: its event
    // (after 30) comes anyway.
    client.setQueryData(keys.metrics("fed-1"), metricsResponse(3, 30));
    const chart = renderLive(client);
    expect(discAcc(client)).toEqual([
      { round: 1, value: expect.closeTo(0.8) },
      { round: 2, value: expect.closeTo(0.7) },
      { round: 3, value: expect.closeTo(0.6) },
    ]);

    act(() =>
      FakeEventSource.last!.emit(31, "metrics", { round: 3, node: null, metrics: { disc_acc: 0.55 } }),
    );
    await waitFor(() => expect(discAcc(client)[2]).toEqual({ round: 3, value: 0.55 }));
    expect(discAcc(client)).toHaveLength(3);
    expect(chart).toHaveAttribute("data-points", "3");
  });

  it("starts from the beginning when the federation has no events yet", () => {
    const client = new QueryClient();
    client.setQueryData(keys.metrics("fed-1"), metricsResponse(0, 0));
    renderLive(client);
    expect(FakeEventSource.last!.url).toBe("/api/v1/federations/fed-1/events?after=0");
  });

  it("opens no stream before the snapshot is in", () => {
    FakeEventSource.last = null;
    function NoSnapshot() {
      return <p role="status">{useFederationEvents("fed-1", undefined)}</p>;
    }
    render(
      <QueryClientProvider client={new QueryClient()}>
        <NoSnapshot />
      </QueryClientProvider>,
    );
    expect(FakeEventSource.last).toBeNull();
    expect(screen.getByRole("status")).toHaveTextContent("connecting");
  });

  it("refetches the other queries once, then as events make them stale", async () => {
    const client = new QueryClient();
    client.setQueryData(keys.metrics("fed-1"), metricsResponse(3, 30));
    for (const key of [keys.federation("fed-1"), keys.nodes("fed-1"), keys.rounds("fed-1")]) {
      client.setQueryData(key, {});
    }
    const invalidated = () =>
      [keys.federation("fed-1"), keys.nodes("fed-1"), keys.rounds("fed-1")].map(
        (key) => client.getQueryState(key)!.isInvalidated,
      );
    renderLive(client);
    // Read apart from the snapshot, perhaps before it: the events in between are not sent again.
    expect(invalidated()).toEqual([true, true, true]);

    for (const key of [keys.federation("fed-1"), keys.nodes("fed-1"), keys.rounds("fed-1")]) {
      client.setQueryData(key, {});
    }
    expect(invalidated()).toEqual([false, false, false]);
    act(() => FakeEventSource.last!.emit(31, "node_registered", { node: "syn" }));
    await waitFor(() => expect(invalidated()).toEqual([true, true, false]));
    act(() => FakeEventSource.last!.emit(32, "step_done", { round: 4 }));
    await waitFor(() => expect(invalidated()).toEqual([true, true, true]));
  });

  it("reopens a stream the browser gave up on after the last event seen", () => {
    vi.useFakeTimers();
    const client = new QueryClient();
    client.setQueryData(keys.metrics("fed-1"), metricsResponse(3, 30));
    renderLive(client);
    const first = FakeEventSource.last!;
    act(() => first.emit(35, "phase", { round: 4, phase: "disc" }));
    first.readyState = FakeEventSource.CLOSED;
    act(() => first.onerror!());
    act(() => vi.advanceTimersByTime(5000));
    expect(FakeEventSource.last).not.toBe(first);
    expect(FakeEventSource.last!.url).toBe("/api/v1/federations/fed-1/events?after=35");
  });
});
