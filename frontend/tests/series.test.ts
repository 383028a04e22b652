import { describe, expect, it } from "vitest";
import { chartLines, FEDERATION_CHARTS, plottedRounds } from "../src/metrics/charts";
import { applyMetricsUpdates, detectCollapse, findSeries } from "../src/metrics/series";
import { metricsResponse } from "./fixtures";

const discChart = FEDERATION_CHARTS.find((c) => c.testId === "chart-disc-acc")!;

describe("chart lines from the metrics response", () => {
  it("draws the balanced accuracy, its parts, the fresh accuracy and each node's own accuracy", () => {
    const labels = chartLines(discChart, metricsResponse()).map((l) => l.label);
    expect(labels).toEqual(["balanced", "on sources", "on target", "fresh", "mnist (own)", "mnistm (own)"]);
  });

  it("leaves out series without points and counts the rounds of disc_acc", () => {
    const target = FEDERATION_CHARTS.find((c) => c.testId === "chart-target-acc")!;
    expect(chartLines(target, metricsResponse())).toEqual([]);
    expect(plottedRounds(discChart, metricsResponse(3))).toBe(3);
    expect(plottedRounds(discChart, undefined)).toBe(0);
  });
});

describe("the target's label-free chart", () => {
  it("draws information and class balance once the target reports them, live", () => {
    const chart = FEDERATION_CHARTS.find((c) => c.testId === "chart-target-label-free")!;
    expect(chartLines(chart, metricsResponse())).toEqual([]);
    const list = applyMetricsUpdates(metricsResponse(1), [
      { round: 2, node: null, metrics: { target_information: 1.2, target_class_balance: 1.7 } },
    ]);
    expect(chartLines(chart, list)).toEqual([
      { label: "information", points: [{ round: 2, value: 1.2 }] },
      { label: "class balance", points: [{ round: 2, value: 1.7 }] },
    ]);
    expect(plottedRounds(chart, list)).toBe(1);
  });
});

describe("live metrics events", () => {
  it("append the event's round to the federation's series", () => {
    const list = applyMetricsUpdates(metricsResponse(3), [
      { round: 4, node: null, metrics: { disc_acc: 0.52 } },
    ]);
    expect(findSeries(list, "disc_acc")!.points.at(-1)).toEqual({ round: 4, value: 0.52 });
    expect(plottedRounds(discChart, list)).toBe(4);
  });

  it("go to the node's own series, creating series the response did not have", () => {
    const list = applyMetricsUpdates(metricsResponse(3), [
      { round: 4, node: "mnistm", metrics: { disc_acc_own: 0.5, target_acc: 0.41 } },
    ]);
    expect(findSeries(list, "disc_acc_own", "mnistm")!.points).toHaveLength(4);
    expect(findSeries(list, "target_acc", "mnistm")!.points).toEqual([{ round: 4, value: 0.41 }]);
    expect(findSeries(list, "disc_acc_own", "mnist")!.points).toHaveLength(3);
  });

  it("replace a round re-sent after a reconnect instead of adding it twice", () => {
    const once = applyMetricsUpdates(metricsResponse(3), [
      { round: 3, node: null, metrics: { disc_acc: 0.42 } },
    ]);
    const twice = applyMetricsUpdates(once, [{ round: 3, node: null, metrics: { disc_acc: 0.42 } }]);
    expect(findSeries(twice, "disc_acc")!.points.map((p) => p.round)).toEqual([1, 2, 3]);
    expect(findSeries(twice, "disc_acc")!.points[2]!.value).toBe(0.42);
    // Nothing new: the same object, so nothing re-renders for a replay.
    expect(twice).toBe(once);
  });

  it("replace the point of a round the snapshot already holds, keeping its last_event_id", () => {
    const snapshot = metricsResponse(3, 30);
    const list = applyMetricsUpdates(snapshot, [
      { round: 3, node: null, metrics: { disc_acc: 0.55 } },
      { round: 3, node: "mnist", metrics: { task_loss: 0.3 } },
    ]);
    expect(findSeries(list, "disc_acc")!.points).toHaveLength(3);
    expect(findSeries(list, "disc_acc")!.points[2]).toEqual({ round: 3, value: 0.55 });
    expect(findSeries(list, "task_loss", "mnist")!.points.map((p) => p.value)).toEqual([1, 0.5, 0.3]);
    expect(list.last_event_id).toBe(30);
    expect(findSeries(snapshot, "disc_acc")!.points[2]!.value).toBeCloseTo(0.6); // not mutated
  });

  it("keep points in round order when an older round arrives late", () => {
    const start = {
      federation_id: "f",
      last_event_id: 0,
      series: [
        {
          name: "pad",
          node: null,
          points: [
            { round: 1, value: 1 },
            { round: 3, value: 0.5 },
          ],
        },
      ],
    };
    const list = applyMetricsUpdates(start, [{ round: 2, node: null, metrics: { pad: 0.8 } }]);
    expect(findSeries(list, "pad")!.points.map((p) => p.round)).toEqual([1, 2, 3]);
  });
});

describe("discriminator collapse", () => {
  const withParts = (source: number[], target: number[]) =>
    applyMetricsUpdates(
      { federation_id: "f", series: [], last_event_id: 0 },
      source.map((s, i) => ({
        round: i + 1,
        node: null,
        metrics: { disc_acc: (s + target[i]!) / 2, disc_acc_source: s, disc_acc_target: target[i]! },
      })),
    );

  it("is reported when the latest round calls nearly everything one domain, though balanced reads 0.5", () => {
    expect(detectCollapse(withParts([0.7, 0.97], [0.6, 0.03]))).toMatchObject({
      round: 2,
      label: "source",
      metric: "disc_acc",
    });
    expect(detectCollapse(withParts([0.05], [0.95]))).toMatchObject({ label: "target" });
  });

  it("is not reported for a discriminator that is merely fooled, or one that recovered", () => {
    expect(detectCollapse(withParts([0.55, 0.5], [0.45, 0.5]))).toBeNull();
    expect(detectCollapse(withParts([0.99, 0.7], [0.01, 0.6]))).toBeNull();
    expect(detectCollapse(undefined)).toBeNull();
  });

  it("is reported from the fresh discriminator's parts too", () => {
    const list = applyMetricsUpdates({ federation_id: "f", series: [], last_event_id: 0 }, [
      { round: 5, node: null, metrics: { disc_acc_fresh_source: 0.02, disc_acc_fresh_target: 0.99 } },
    ]);
    expect(detectCollapse(list)).toMatchObject({ round: 5, label: "target", metric: "disc_acc_fresh" });
  });
});
