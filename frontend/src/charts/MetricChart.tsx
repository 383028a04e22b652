import { useMemo } from "react";
import type { MetricSeriesList } from "../api/types";
import { type ChartSpec, chartLines, plottedRounds } from "../metrics/charts";
import { EChart } from "./EChart";
import { lineOption } from "./lineOption";

/** One chart of a federation's metrics, titled, with a hint and an empty state. `data-points` holds the
 * rounds plotted for the chart's main series, so a browser test can watch it grow. */
export function MetricChart({ spec, metrics }: { spec: ChartSpec; metrics: MetricSeriesList | undefined }) {
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
      {lines.length === 0 && (
        <p className="chart-empty muted">No values yet: they appear as rounds are evaluated.</p>
      )}
    </figure>
  );
}
