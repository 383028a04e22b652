import { useMemo } from "react";
import type { Federation, MetricSeriesList } from "../api/types";
import { MetricChart } from "../charts/MetricChart";
import { overBudget, privacyChartSpec, privacySettings } from "../metrics/privacy";

/** The privacy budget each node has spent, for a federation with differential privacy on (else nothing),
 * with why the run ended when its budget stopped it, or which nodes went past it under "warn". */
export function PrivacyChart({
  federation,
  metrics,
}: {
  federation: Federation;
  metrics: MetricSeriesList | undefined;
}) {
  // The query keeps the config's identity while it is unchanged, so the chart's option is built once.
  const settings = useMemo(() => privacySettings(federation.config), [federation.config]);
  const spec = useMemo(() => (settings ? privacyChartSpec(settings) : null), [settings]);
  if (!settings || !spec) return null;
  const over = overBudget(metrics, settings.budget);
  const stopped = federation.status === "finished" ? federation.stall_reason : null;
  return (
    <div data-testid="privacy-panel">
      <MetricChart spec={spec} metrics={metrics} />
      {stopped ? (
        <p className="notice warning" role="status" data-testid="privacy-stopped">
          <strong>Stopped early:</strong> {stopped}
        </p>
      ) : over.length > 0 ? (
        <p className="notice warning" role="status" data-testid="privacy-over-budget">
          <strong>Over the budget of ε = {settings.budget}:</strong>{" "}
          {over.map((o) => `${o.node} (ε ${o.epsilon.toFixed(2)} in round ${o.round})`).join(", ")}.
        </p>
      ) : null}
    </div>
  );
}
