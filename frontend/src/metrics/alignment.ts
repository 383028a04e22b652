/**
 * Whether alignment is asked for and whether it happens, read from a federation's metric series.
 *
 * `adv_weight` is λ, the adversarial term's weight in each evaluated round (0: the discriminator trains,
 * but no extractor is pushed towards it). `disc_acc_fresh` is the honest alignment signal: the next round's
 * discriminator on a round's features, before they adapt again; its trend over the last evaluated rounds
 * says whether the domains are getting harder to tell apart (alignment happening) or easier (drifting).
 */
import type { MetricPoint, MetricSeriesList } from "../api/types";
import { findSeries } from "./series";

/** How many of the latest fresh measurements the trend is fitted to. */
export const TREND_POINTS = 5;
/** A fitted change per round smaller than this, times the rounds spanned, reads as flat. */
export const FLAT_CHANGE = 0.02;

export type AdversarialTerm =
  | { state: "none" }
  | { state: "pending" }
  | { state: "off"; round: number }
  | { state: "on"; round: number; weight: number };

export type Trend =
  | { state: "unknown" }
  | { state: "falling" | "rising" | "flat"; from: number; to: number; change: number; rounds: number };

/** λ in the latest evaluated round; "none" for algorithms without an adversarial term. */
export function adversarialTerm(list: MetricSeriesList | undefined, algorithm: string): AdversarialTerm {
  if (algorithm !== "fedalign") return { state: "none" };
  const latest = findSeries(list, "adv_weight")?.points.at(-1);
  if (!latest) return { state: "pending" };
  return latest.value > 0
    ? { state: "on", round: latest.round, weight: latest.value }
    : { state: "off", round: latest.round };
}

/** Least-squares change of the fresh discriminator accuracy over its last `TREND_POINTS` rounds. */
export function freshTrend(list: MetricSeriesList | undefined): Trend {
  const points: MetricPoint[] = (findSeries(list, "disc_acc_fresh")?.points ?? []).slice(-TREND_POINTS);
  if (points.length < 2) return { state: "unknown" };
  const n = points.length;
  const meanX = points.reduce((s, p) => s + p.round, 0) / n;
  const meanY = points.reduce((s, p) => s + p.value, 0) / n;
  const sxx = points.reduce((s, p) => s + (p.round - meanX) ** 2, 0);
  const sxy = points.reduce((s, p) => s + (p.round - meanX) * (p.value - meanY), 0);
  const rounds = points.at(-1)!.round - points[0]!.round;
  const change = sxx > 0 ? (sxy / sxx) * rounds : 0;
  const state = Math.abs(change) < FLAT_CHANGE ? "flat" : change < 0 ? "falling" : "rising";
  return { state, from: points[0]!.value, to: points.at(-1)!.value, change, rounds };
}
