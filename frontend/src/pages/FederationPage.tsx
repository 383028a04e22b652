import { useQuery } from "@tanstack/react-query";
import { Link, useParams } from "react-router";
import {
  downloadUrls,
  federationAccessQuery,
  federationQuery,
  metricsQuery,
  nodesQuery,
  roundsQuery,
} from "../api/queries";
import type { Federation, Operation } from "../api/types";
import { MetricChart } from "../charts/MetricChart";
import { AlignmentSummary } from "../components/AlignmentSummary";
import { CheckpointsTable } from "../components/CheckpointsTable";
import { CurrentRound } from "../components/CurrentRound";
import { download } from "../components/download";
import { FederationControls } from "../components/FederationControls";
import { ErrorNotice, Loading } from "../components/feedback";
import { NodesTable } from "../components/NodesTable";
import { PrivacyChart } from "../components/PrivacyChart";
import { RegisterNodeForm } from "../components/RegisterNodeForm";
import { RoundsTable } from "../components/RoundsTable";
import { StatusBadge } from "../components/StatusBadge";
import { JoinTokenControls } from "../components/TokenControls";
import { TrackerRuns } from "../components/TrackerRuns";
import { type StreamState, useFederationEvents } from "../live/useFederationEvents";
import { FEDERATION_CHARTS, NO_TARGET_LABELS, targetHasLabels } from "../metrics/charts";
import { type Collapse, detectCollapse } from "../metrics/series";
import { useTitle } from "../useTitle";

export function FederationPage() {
  const { federationId = "" } = useParams();
  const federation = useQuery(federationQuery(federationId));

  if (federation.isPending) return <Loading what="the federation" />;
  if (federation.isError) {
    return (
      <>
        <ErrorNotice error={federation.error} what="the federation" retry={() => void federation.refetch()} />
        <p>
          <Link to="/">Back to the federations</Link>
        </p>
      </>
    );
  }
  return <FederationView federation={federation.data} />;
}

const STREAM_TEXT: Record<StreamState, string> = {
  connecting: "Connecting to live updates…",
  live: "Live",
  reconnecting: "Connection lost; reconnecting…",
  stopped: "Live updates stopped; retrying in a few seconds.",
};

function FederationView({ federation }: { federation: Federation }) {
  const id = federation.id;
  const nodes = useQuery(nodesQuery(id));
  const rounds = useQuery(roundsQuery(id));
  const metrics = useQuery(metricsQuery(id));
  // The stream opens once the metrics snapshot is in and follows on after its last event: no point
  // recorded after the snapshot is lost, and the history the snapshot holds is not sent again.
  const stream = useFederationEvents(id, metrics.data?.last_event_id);
  const collapse = detectCollapse(metrics.data);
  const targetLabels = targetHasLabels(nodes.data?.items);
  const config = federation.config;
  // Only the controls this token may use here (the server refuses the rest anyway): the server says which,
  // per federation, since a viewer's rights depend on its organisation's part in it.
  const access = useQuery(federationAccessQuery(id));
  const allowed: readonly Operation[] = access.data?.operations ?? [];
  const canControl = allowed.includes("federation.control");
  const canManageNodes = allowed.includes("federation.nodes.manage");
  const canReadModel = allowed.includes("federation.model.read");
  useTitle(`${federation.name} (${federation.status})`);
  const chartsSection = (
    <section aria-labelledby="charts-title">
      <h2 id="charts-title">Metrics per round</h2>
      {metrics.isError ? (
        <ErrorNotice error={metrics.error} what="the metrics" retry={() => void metrics.refetch()} />
      ) : metrics.isPending ? (
        <Loading what="the metrics" />
      ) : (
        <>
          <AlignmentSummary metrics={metrics.data} algorithm={String(config.algorithm)} />
          <div className="chart-grid">
            {FEDERATION_CHARTS.map((spec) => (
              <MetricChart
                key={spec.testId}
                spec={spec}
                metrics={metrics.data}
                unavailable={spec.needsTargetLabels && targetLabels === false ? NO_TARGET_LABELS : undefined}
              />
            ))}
            <PrivacyChart federation={federation} metrics={metrics.data} />
          </div>
        </>
      )}
    </section>
  );
  const nodesSection = (
    <section className="panel" aria-labelledby="nodes-title">
      <h2 id="nodes-title">Nodes</h2>
      {nodes.isPending ? (
        <Loading what="the nodes" />
      ) : nodes.isError ? (
        <ErrorNotice error={nodes.error} what="the nodes" retry={() => void nodes.refetch()} />
      ) : (
        <NodesTable
          federationId={id}
          nodes={nodes.data.items}
          removable={federation.status === "created"}
          manageable={canManageNodes}
        />
      )}
      {!canManageNodes ? null : federation.status === "created" ? (
        <>
          <JoinTokenControls federationId={id} />
          <RegisterNodeForm federationId={id} />
        </>
      ) : (
        <p className="hint">
          Nodes register before the start; to add one, clone this federation from <Link to="/">the list</Link>
          .
        </p>
      )}
    </section>
  );

  return (
    <>
      <div className="page-head">
        <div>
          <p className="breadcrumb">
            <Link to="/">Federations</Link> /
          </p>
          <h1>
            {federation.name} <StatusBadge status={federation.status} />
          </h1>
          <p className="muted">
            {String(config.algorithm)} · {String(config.architecture)} · {String(config.rounds)} rounds · seed{" "}
            {String(config.seed)} · aggregator {String(config.aggregator)}
          </p>
        </div>
        <p className={`stream stream-${stream}`} role="status">
          {STREAM_TEXT[stream]}
        </p>
      </div>

      {canControl && <FederationControls federation={federation} />}

      {(federation.status === "stalled" || federation.status === "failed") && (
        <div className="notice warning" role="alert">
          <strong>{federation.status === "stalled" ? "Stalled" : "Failed"}:</strong>{" "}
          {federation.stall_reason ?? "the server gave no reason; see its log."}
        </div>
      )}
      {federation.status === "created" && !federation.initial_model.ready && (
        <InitialModelNotice federation={federation} />
      )}
      {collapse && <CollapseWarning collapse={collapse} />}

      <div className="columns">
        <section className="panel" aria-labelledby="round-title">
          <h2 id="round-title">Progress</h2>
          <CurrentRound federation={federation} />
        </section>
        <section className="panel" aria-labelledby="results-title">
          <h2 id="results-title">Results</h2>
          <div className="actions">
            {canReadModel && (
              <button
                type="button"
                disabled={!federation.model_published}
                onClick={() => download(downloadUrls.model(id))}
              >
                Download model
              </button>
            )}
            <button type="button" onClick={() => download(downloadUrls.metricsCsv(id))}>
              Export CSV
            </button>
          </div>
          <p className="hint">{modelHint(federation)}</p>
          <TrackerRuns trackers={federation.trackers} />
          {federation.config.checkpoint_every != null && federation.status !== "created" ? (
            <CheckpointsTable federationId={id} />
          ) : null}
        </section>
      </div>

      {/* Before the start the job is registering nodes, and there is nothing to chart yet. */}
      {federation.status === "created" ? (
        <>
          {nodesSection}
          {chartsSection}
        </>
      ) : (
        <>
          {chartsSection}
          {nodesSection}
        </>
      )}

      <section className="panel" aria-labelledby="rounds-title">
        <h2 id="rounds-title">Rounds</h2>
        {rounds.isPending ? (
          <Loading what="the rounds" />
        ) : rounds.isError ? (
          <ErrorNotice error={rounds.error} what="the rounds" retry={() => void rounds.refetch()} />
        ) : (
          <RoundsTable rounds={rounds.data.items} />
        )}
      </section>
    </>
  );
}

function modelHint(federation: Federation): string {
  if (federation.model_published) return "The target's final model, as safetensors.";
  if (federation.config.publish_model === false) {
    return federation.status === "finished"
      ? "Not published: this federation keeps its model on the target node (publish_model is off)."
      : "This federation does not publish its model (publish_model is off).";
  }
  if (federation.status === "finished") return "The federation finished without a published model.";
  return "The model can be downloaded once the federation has finished and the target has published it.";
}

function CollapseWarning({ collapse }: { collapse: Collapse }) {
  const name = collapse.metric === "disc_acc" ? "discriminator" : "fresh discriminator";
  return (
    <div className="notice warning" role="alert" data-testid="collapse-warning">
      <strong>The discriminator has collapsed to one label.</strong> In round {collapse.round} the {name}{" "}
      called almost every feature “{collapse.label}” (accuracy {collapse.source.toFixed(2)} on sources,{" "}
      {collapse.target.toFixed(2)} on the target), so its balanced accuracy near 0.5 does not mean the domains
      are aligned: read the per-domain parts in the chart below.
    </div>
  );
}

/** A federation that cannot start yet: its architecture is a plug-in (or it starts from a checkpoint), which
 * the server never builds, so its creator uploads what `fedalign init-model` wrote. */
function InitialModelNotice({ federation }: { federation: Federation }) {
  const missing = federation.initial_model.missing.map((part) =>
    part === "manifest"
      ? "the manifest document (init.manifest.json)"
      : "the initial parameters (init.safetensors)",
  );
  const base = `/api/v1/federations/${federation.id}/initial-model`;
  return (
    <div className="notice warning" role="status" data-testid="initial-model-missing">
      <strong>Waiting for the initial model:</strong> upload {missing.join(" and ")} before the start. Run{" "}
      <code>fedalign init-model CONFIG -o init.safetensors</code> where the architecture is installed, then
      PUT the manifest to <code>{base}/manifest</code> and the parameters to <code>{base}/parameters</code>.
    </div>
  );
}
