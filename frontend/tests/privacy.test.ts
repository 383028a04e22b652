import { describe, expect, it } from "vitest";
import type { MetricSeriesList } from "../src/api/types";
import { lineOption } from "../src/charts/lineOption";
import { chartLines } from "../src/metrics/charts";
import { overBudget, privacyChartSpec, privacySettings } from "../src/metrics/privacy";
import { metricsResponse } from "./fixtures";

const dp = { noise_multiplier: 1.1, delta: 1e-5, epsilon_budget: 2, budget_action: "warn" };

function withEpsilon(values: Record<string, number[]>): MetricSeriesList {
  const base = metricsResponse(3);
  const series = Object.entries(values).map(([node, eps]) => ({
    name: "dp_epsilon",
    node,
    points: eps.map((value, i) => ({ round: i + 1, value })),
  }));
  return { ...base, series: [...base.series, ...series] };
}

describe("privacy settings", () => {
  it("are off without a noise multiplier, whatever else is set", () => {
    expect(privacySettings({})).toBeNull();
    expect(privacySettings({ privacy: { noise_multiplier: 0, delta: 1e-5 } })).toBeNull();
    expect(privacySettings({ privacy: "on" })).toBeNull();
  });

  it("read sigma, delta, the budget and its action", () => {
    expect(privacySettings({ privacy: dp })).toEqual({
      noiseMultiplier: 1.1,
      delta: 1e-5,
      budget: 2,
      budgetAction: "warn",
    });
    expect(privacySettings({ privacy: { noise_multiplier: 1, epsilon_budget: null } })?.budget).toBeNull();
  });
});

describe("the privacy chart", () => {
  it("draws one line per node that reports dp_epsilon and nothing else", () => {
    const spec = privacyChartSpec(privacySettings({ privacy: dp })!);
    const lines = chartLines(spec, withEpsilon({ mnist: [0.5, 0.9, 1.2], mnistm: [0.4, 0.8, 1.1] }));
    expect(lines.map((l) => l.label)).toEqual(["mnist", "mnistm"]);
    expect(lines[0]!.points.map((p) => p.value)).toEqual([0.5, 0.9, 1.2]);
    expect(chartLines(spec, metricsResponse(3))).toEqual([]); // not yet reported
  });

  it("shows the budget as a dashed line only when there is one, and names delta", () => {
    const withBudget = privacyChartSpec(privacySettings({ privacy: dp })!);
    expect(withBudget.title).toBe("Privacy budget spent (ε at δ = 1e−5)");
    const series = lineOption([], withBudget.scale).series as { markLine?: { data: unknown[] } }[];
    expect(series.at(-1)!.markLine!.data).toEqual([{ yAxis: 2 }]);
    const without = privacyChartSpec(privacySettings({ privacy: { ...dp, epsilon_budget: null } })!);
    expect(without.scale.reference).toBeUndefined();
    expect(lineOption([], without.scale).series).toEqual([]);
  });

  it("names the nodes past the budget with the round they passed it in", () => {
    const list = withEpsilon({ mnist: [0.5, 2.0, 2.4], syn: [0.7, 2.1, 2.9], mnistm: [0.4, 0.8, 1.1] });
    // At the budget is not past it: mnist's 2.0 in round 2 is within.
    expect(overBudget(list, 2)).toEqual([
      { node: "mnist", round: 3, epsilon: 2.4 },
      { node: "syn", round: 2, epsilon: 2.1 },
    ]);
    expect(overBudget(list, null)).toEqual([]);
    expect(overBudget(list, 5)).toEqual([]);
  });
});
