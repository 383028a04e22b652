import { useMemo } from "react";
import type { MetricSeriesList } from "../api/types";
import { type ChartSpec, chartLines, plottedRounds } from "../metrics/charts";
import { EChart } from "./EChart";
import { lineOption } from "./lineOption";

/** One chart of a federation's metrics, titled, with a hint and an empty state. `data-points` holds the
 * rounds plotted for the chart's main series, so a browser test can watch it grow. */
export function MetricChart({
  spec,
  metrics,
  unavailable,
}: {
  spec: ChartSpec;
  metrics: MetricSeriesList | undefined;
  /** Why this run has no values for the chart at all (said instead of "No values yet"). */
  unavailable?: string;
}) {
  const lines = useMemo(() => chartLines(spec, metrics), [spec, metrics]);
  const option = useMemo(() => lineOption(lines, spec.scale), [lines, spec.scale]);
  const titleId = `${spec.testId}-title`;
  return (
    <figure className="chart-card" aria-labelledby={titleId}>
      <figcaption>
        <h3 id={titleId}>{spec.title}</h3>
        <p className="hint">{spec.help}</p>
      </figcaption>
      <EChart
        className="chart"
        option={option}
        label={`${spec.title} per round`}
        data-testid={spec.testId}
        data-points={plottedRounds(spec, metrics)}
      />
      {unavailable ? (
        <p className="chart-empty muted" data-testid={`${spec.testId}-unavailable`}>
          {unavailable}
        </p>
      ) : (
        lines.length === 0 && (
          <p className="chart-empty muted">No values yet: they appear as rounds are evaluated.</p>
        )
      )}
    </figure>
  );
}
