/**
 * Metric series as the charts hold them: the API's `MetricSeriesList`, grown point by point from live
 * `metrics` events. Every function here is pure, so the live path and the tests share one code path.
 */
import type { MetricPoint, MetricSeries, MetricSeriesList } from "../api/types";

/** A `metrics` event's payload: one round's values from one node (null: the federation's own). */
export interface MetricsUpdate {
  round: number;
  node: string | null;
  metrics: Record<string, number>;
}

export function findSeries(
  list: MetricSeriesList | undefined,
  name: string,
  node: string | null = null,
): MetricSeries | undefined {
  return list?.series.find((s) => s.name === name && (s.node ?? null) === node);
}

/** Nodes that report `name`, in the server's order. */
export function nodesReporting(list: MetricSeriesList | undefined, name: string): string[] {
  return (list?.series ?? []).flatMap((s) => (s.name === name && s.node != null ? [s.node] : []));
}

/** Inserts or replaces the point of `round`, keeping points ordered by round. A round sent again (a
 * replay after reconnecting) replaces its point instead of adding a second one. */
export function upsertPoint(points: readonly MetricPoint[], round: number, value: number): MetricPoint[] {
  const at = points.findIndex((p) => p.round >= round);
  if (at === -1) return [...points, { round, value }];
  if (points[at]!.round === round) {
    if (points[at]!.value === value) return points as MetricPoint[];
    return points.map((p, i) => (i === at ? { round, value } : p));
  }
  return [...points.slice(0, at), { round, value }, ...points.slice(at)];
}

/** The list with the updates' values added; series new to the list are appended. Returns the same
 * object when nothing changed, so React Query does not re-render for a replayed round. */
export function applyMetricsUpdates(
  list: MetricSeriesList,
  updates: readonly MetricsUpdate[],
): MetricSeriesList {
  let series = list.series;
  for (const update of updates) {
    for (const [name, value] of Object.entries(update.metrics)) {
      if (!Number.isFinite(value)) continue;
      const index = series.findIndex((s) => s.name === name && (s.node ?? null) === update.node);
      if (index === -1) {
        series = [...series, { name, node: update.node, points: [{ round: update.round, value }] }];
        continue;
      }
      const current = series[index]!;
      const points = upsertPoint(current.points, update.round, value);
      if (points !== current.points) {
        series = series.map((s, i) => (i === index ? { ...current, points } : s));
      }
    }
  }
  return series === list.series ? list : { ...list, series };
}

// A discriminator that calls (almost) everything one domain reads about 0.5 balanced, like an aligned
// one; its per-domain parts tell them apart. These are the bounds of "(almost) everything".
export const COLLAPSE_HIGH = 0.9;
export const COLLAPSE_LOW = 0.1;

export interface Collapse {
  round: number;
  /** The label the discriminator gives (almost) every feature. */
  label: "source" | "target";
  source: number;
  target: number;
  /** Which measurement showed it. */
  metric: "disc_acc" | "disc_acc_fresh";
}

const PARTS = [
  { metric: "disc_acc", source: "disc_acc_source", target: "disc_acc_target" },
  { metric: "disc_acc_fresh", source: "disc_acc_fresh_source", target: "disc_acc_fresh_target" },
] as const;

/** Whether the discriminator has collapsed to one label in the latest round that has both parts. */
export function detectCollapse(list: MetricSeriesList | undefined): Collapse | null {
  for (const part of PARTS) {
    const sources = findSeries(list, part.source)?.points ?? [];
    const targets = new Map((findSeries(list, part.target)?.points ?? []).map((p) => [p.round, p.value]));
    const latest = [...sources].reverse().find((p) => targets.has(p.round));
    if (!latest) continue;
    const source = latest.value;
    const target = targets.get(latest.round)!;
    const base = { round: latest.round, source, target, metric: part.metric };
    if (source >= COLLAPSE_HIGH && target <= COLLAPSE_LOW) return { ...base, label: "source" };
    if (target >= COLLAPSE_HIGH && source <= COLLAPSE_LOW) return { ...base, label: "target" };
  }
  return null;
}
