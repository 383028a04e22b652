import { render, screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import type { MetricSeriesList } from "../src/api/types";
import { AlignmentSummary } from "../src/components/AlignmentSummary";
import { adversarialTerm, freshTrend } from "../src/metrics/alignment";

function withSeries(series: Record<string, [number, number][]>): MetricSeriesList {
  return {
    federation_id: "fed-1",
    series: Object.entries(series).map(([name, points]) => ({
      name,
      node: null,
      points: points.map(([round, value]) => ({ round, value })),
    })),
    last_event_id: 1,
  };
}

describe("the adversarial term", () => {
  it("is on with the latest evaluated round's lambda", () => {
    const list = withSeries({
      adv_weight: [
        [10, 0.02],
        [20, 0.05],
      ],
    });
    expect(adversarialTerm(list, "fedalign")).toEqual({ state: "on", round: 20, weight: 0.05 });
  });

  it("is off when lambda is 0, pending before any evaluated round, none without a discriminator", () => {
    expect(adversarialTerm(withSeries({ adv_weight: [[5, 0]] }), "fedalign")).toEqual({
      state: "off",
      round: 5,
    });
    expect(adversarialTerm(withSeries({}), "fedalign")).toEqual({ state: "pending" });
    expect(adversarialTerm(withSeries({ adv_weight: [[5, 0.1]] }), "fedavg")).toEqual({ state: "none" });
  });
});

describe("the fresh discriminator's trend", () => {
  it("falls when the fitted change over the last five rounds is below -0.02", () => {
    const list = withSeries({
      disc_acc_fresh: [
        [1, 0.99],
        [2, 0.9],
        [3, 0.85],
        [4, 0.8],
        [5, 0.75],
        [6, 0.7],
      ],
    });
    const trend = freshTrend(list);
    expect(trend.state).toBe("falling");
    if (trend.state !== "falling") return;
    expect(trend.from).toBe(0.9); // only the last five points count
    expect(trend.rounds).toBe(4);
    expect(trend.change).toBeCloseTo(-0.2);
  });

  it("rises, stays flat, or is unknown with fewer than two points", () => {
    expect(
      freshTrend(
        withSeries({
          disc_acc_fresh: [
            [1, 0.6],
            [2, 0.7],
          ],
        }),
      ).state,
    ).toBe("rising");
    expect(
      freshTrend(
        withSeries({
          disc_acc_fresh: [
            [1, 0.6],
            [2, 0.61],
            [3, 0.6],
          ],
        }),
      ).state,
    ).toBe("flat");
    expect(freshTrend(withSeries({ disc_acc_fresh: [[1, 0.6]] })).state).toBe("unknown");
  });
});

describe("the alignment summary", () => {
  it("says whether alignment is asked for and whether it happens", () => {
    const list = withSeries({
      adv_weight: [
        [1, 0.0],
        [2, 0.05],
      ],
      disc_acc_fresh: [
        [1, 0.9],
        [2, 0.7],
      ],
    });
    render(<AlignmentSummary metrics={list} algorithm="fedalign" />);
    expect(screen.getByTestId("adversarial-term")).toHaveTextContent("on, λ = 0.050 in round 2");
    expect(screen.getByTestId("fresh-trend")).toHaveTextContent("0.90 → 0.70 over 1 rounds, falling");
  });

  it("says a baseline has no adversarial term and shows no trend", () => {
    render(<AlignmentSummary metrics={withSeries({})} algorithm="fedavg" />);
    expect(screen.getByTestId("adversarial-term")).toHaveTextContent("none (fedavg trains no discriminator)");
    expect(screen.queryByTestId("fresh-trend")).toBeNull();
  });
});
