/**
 * Differential privacy on the dashboard: a federation's privacy settings (config.privacy), the chart of
 * each node's spent budget (`dp_epsilon`, epsilon at the federation's delta), and which nodes are over
 * the budget. Pure, so the tests and the page share it.
 */
import type { MetricSeriesList } from "../api/types";
import type { ChartSpec } from "./charts";
import { findSeries, nodesReporting } from "./series";

export interface PrivacySettings {
  noiseMultiplier: number;
  delta: number;
  /** Epsilon a node may spend; null: no budget. */
  budget: number | null;
  budgetAction: "stop" | "warn";
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

const finite = (value: unknown): number | null =>
  typeof value === "number" && Number.isFinite(value) ? value : null;

/** The federation's privacy settings, or null when differential privacy is off (noise multiplier 0). */
export function privacySettings(config: Record<string, unknown>): PrivacySettings | null {
  const privacy = config.privacy;
  if (!isRecord(privacy)) return null;
  const noiseMultiplier = finite(privacy.noise_multiplier) ?? 0;
  if (noiseMultiplier <= 0) return null;
  return {
    noiseMultiplier,
    delta: finite(privacy.delta) ?? 1e-5,
    budget: finite(privacy.epsilon_budget),
    budgetAction: privacy.budget_action === "warn" ? "warn" : "stop",
  };
}

/** The chart: one line per node, the budget as a dashed line when there is one. */
export function privacyChartSpec(settings: PrivacySettings): ChartSpec {
  const delta = settings.delta.toExponential().replace("e-", "e−");
  return {
    title: `Privacy budget spent (ε at δ = ${delta})`,
    testId: "chart-dp-epsilon",
    scale: {
      y: "ε",
      min: 0,
      ...(settings.budget === null
        ? {}
        : { reference: { value: settings.budget, label: `budget ε = ${settings.budget}` } }),
    },
    federation: [],
    perNode: { name: "dp_epsilon", label: (node) => node },
    help:
      `Each node's ε after each round, from its own accountant over every noised local step (σ = ` +
      `${settings.noiseMultiplier}). It bounds what the models reveal about one training example of that ` +
      "node; the accuracies and losses a node reports are not privatised.",
  };
}

export interface OverBudget {
  node: string;
  /** The first round the node's ε passed the budget, and its ε then. */
  round: number;
  epsilon: number;
}

/** Nodes whose ε has passed the budget (none without one), in the server's order. */
export function overBudget(list: MetricSeriesList | undefined, budget: number | null): OverBudget[] {
  if (budget === null) return [];
  return nodesReporting(list, "dp_epsilon").flatMap((node) => {
    const first = findSeries(list, "dp_epsilon", node)?.points.find((p) => p.value > budget);
    return first ? [{ node, round: first.round, epsilon: first.value }] : [];
  });
}
