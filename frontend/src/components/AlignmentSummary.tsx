import type { MetricSeriesList } from "../api/types";
import { adversarialTerm, freshTrend } from "../metrics/alignment";

/** Beside the discriminator's accuracy: is alignment asked for (λ), and does it happen (the fresh trend)? */
export function AlignmentSummary({
  metrics,
  algorithm,
}: {
  metrics: MetricSeriesList | undefined;
  algorithm: string;
}) {
  const term = adversarialTerm(metrics, algorithm);
  const trend = freshTrend(metrics);
  return (
    <section className="panel alignment" aria-labelledby="alignment-title" data-testid="alignment-summary">
      <h3 id="alignment-title">Alignment</h3>
      <p data-testid="adversarial-term" data-state={term.state}>
        <strong>Adversarial term: </strong>
        {term.state === "none" && `none (${algorithm} trains no discriminator)`}
        {term.state === "pending" && "not measured yet: λ appears with the first evaluated round"}
        {term.state === "off" &&
          `off (λ = 0 in round ${term.round}): the discriminator trains, but no extractor is pushed towards it`}
        {term.state === "on" && `on, λ = ${formatWeight(term.weight)} in round ${term.round}`}
      </p>
      {term.state !== "none" && (
        <p data-testid="fresh-trend" data-state={trend.state}>
          <strong>Fresh discriminator: </strong>
          {trend.state === "unknown"
            ? "not enough rounds measured yet for a trend"
            : `${trend.from.toFixed(2)} → ${trend.to.toFixed(2)} over ${trend.rounds} rounds, ${TREND_TEXT[trend.state]}`}
        </p>
      )}
    </section>
  );
}

const TREND_TEXT = {
  falling: "falling: the domains' features are getting harder to tell apart (alignment is happening)",
  rising: "rising: the domains' features are getting easier to tell apart (they drift apart)",
  flat: "flat: the alignment is not changing",
} as const;

function formatWeight(weight: number): string {
  return weight >= 0.01 ? weight.toFixed(3) : weight.toPrecision(2);
}
