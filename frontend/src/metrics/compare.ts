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
