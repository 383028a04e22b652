/**
 * What the compare page draws and lists: the metrics any of the compared federations reports (each can
 * be charted), and the settings in which their configs differ. Pure functions, tested without a browser.
 */
import type { MetricSeriesList } from "../api/types";
import type { ChartScale } from "../charts/lineOption";

/** Drawn when the page opens, where the federations report them. */
export const DEFAULT_COMPARED = ["target_acc", "disc_acc"] as const;

/** Federation-level metric names reported by any of the lists, sorted; defaults first. */
export function comparableMetrics(lists: readonly (MetricSeriesList | undefined)[]): string[] {
  const names = new Set<string>();
  for (const list of lists) for (const s of list?.series ?? []) if (s.node == null) names.add(s.name);
  const defaults = DEFAULT_COMPARED.filter((n) => names.has(n));
  const rest = [...names].filter((n) => !(DEFAULT_COMPARED as readonly string[]).includes(n)).sort();
  return [...defaults, ...rest];
}

/** An accuracy lives in [0, 1] (a discriminator's with its "aligned" 0.5); anything else is fitted. */
export function compareScale(name: string): ChartScale {
  if (name.startsWith("disc_acc")) {
    return { y: "accuracy", min: 0, max: 1, reference: { value: 0.5, label: "aligned (0.5)" } };
  }
  if (name.endsWith("_acc")) return { y: "accuracy", min: 0, max: 1 };
  return { y: name };
}

/** `chart-compare-target-acc` for `target_acc`. */
export function compareTestId(name: string): string {
  return `chart-compare-${name.replace(/[^A-Za-z0-9]+/g, "-")}`;
}

/** A config as `dotted.path -> JSON text`; list items by index (`nodes.0.dataset`). */
export function flattenSettings(value: unknown, prefix = ""): Record<string, string> {
  const flat: Record<string, string> = {};
  const walk = (path: string, v: unknown): void => {
    if (v !== null && typeof v === "object" && Object.keys(v).length > 0) {
      for (const [key, inner] of Object.entries(v)) walk(path ? `${path}.${key}` : key, inner);
    } else {
      flat[path] = typeof v === "string" ? v : JSON.stringify(v);
    }
  };
  walk(prefix, value);
  return flat;
}

export interface SettingDifference {
  key: string;
  /** One per federation, in order; undefined where that config lacks the key. */
  values: (string | undefined)[];
}

/** The settings whose values are not the same in every config, sorted by key. */
export function settingDifferences(configs: readonly unknown[]): SettingDifference[] {
  const flats = configs.map((c) => flattenSettings(c));
  const keys = new Set(flats.flatMap((f) => Object.keys(f)));
  return [...keys]
    .sort()
    .map((key) => ({ key, values: flats.map((f) => f[key]) }))
    .filter((d) => new Set(d.values).size > 1);
}

/** The target's label-free score that the runs of one target are chosen by (fedalign.metrics). */
export const LABEL_FREE_METRIC = "target_information";

/** Which of the compared runs to deploy without a label, or why that cannot be said yet. */
export type LabelFreeChoice =
  | { kind: "different-targets"; targets: (string | undefined)[] }
  | { kind: "waiting"; missing: number[] }
  | { kind: "chosen"; chosen: number; values: number[]; differing: number };

/**
 * The dataset spec of a federation's target: its registered target node's (a served federation's config holds
 * no nodes), else the config's target node's; undefined where neither names one.
 */
export function targetDataset(
  registered: readonly { role: string; dataset: string }[] | undefined,
  config: unknown,
): string | undefined {
  const served = registered?.find((n) => n.role === "target")?.dataset;
  if (served !== undefined) return served;
  const nodes = (config as { nodes?: unknown } | null)?.nodes;
  if (!Array.isArray(nodes)) return undefined;
  const target = nodes.find((n) => (n as { role?: unknown } | null)?.role === "target") as
    { dataset?: unknown } | undefined;
  return typeof target?.dataset === "string" ? target.dataset : undefined;
}

/**
 * The run whose last `target_information` is the highest (the first listed on a tie, as `fedalign choose`
 * deploys), when no two runs name different target data (`targets`, one per run; undefined where unknown)
 * and every run has reported it; `differing` counts the settings in which the configs differ besides their
 * names (the scores compare like with like only).
 */
export function labelFreeChoice(
  configs: readonly unknown[],
  targets: readonly (string | undefined)[],
  lists: readonly (MetricSeriesList | undefined)[],
): LabelFreeChoice {
  if (new Set(targets.filter((t) => t !== undefined)).size > 1) {
    return { kind: "different-targets", targets: [...targets] };
  }
  const last = lists.map((list) => {
    const points = list?.series.find((s) => s.name === LABEL_FREE_METRIC && s.node == null)?.points ?? [];
    return points[points.length - 1]?.value;
  });
  const missing = last.flatMap((v, i) => (v === undefined ? [i] : []));
  if (missing.length > 0) return { kind: "waiting", missing };
  const values = last as number[];
  const chosen = values.reduce((best, v, i) => (v > values[best]! ? i : best), 0);
  const differing = settingDifferences(configs).filter((d) => d.key !== "name").length;
  return { kind: "chosen", chosen, values, differing };
}
