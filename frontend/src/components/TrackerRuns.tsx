import type { Federation } from "../api/types";

/** Where the federation's metrics went in the experiment trackers, and how far (docs: Experiment trackers). */
export function TrackerRuns({ trackers }: { trackers: Federation["trackers"] }) {
  if (!trackers || trackers.length === 0) return null;
  return (
    <ul className="trackers" data-testid="tracker-runs">
      {trackers.map((t) => (
        <li key={t.tracker}>
          <strong>{t.tracker === "mlflow" ? "MLflow" : "TensorBoard"}</strong>{" "}
          {t.run_id ? (
            <>
              run <code>{t.run_id}</code>
            </>
          ) : (
            "no run yet"
          )}
          , rounds up to {t.exported_round}
          {t.finished ? " (closed)" : ""}
          {t.error ? <span className="error-text"> · not reachable, retrying: {t.error}</span> : null}
        </li>
      ))}
    </ul>
  );
}
