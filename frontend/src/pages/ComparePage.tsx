import { useQueries, useQuery } from "@tanstack/react-query";
import { useMemo } from "react";
import { Link, useSearchParams } from "react-router";
import { federationsQuery, metricsQuery, nodesQuery } from "../api/queries";
import { EChart } from "../charts/EChart";
import { type ChartLine, lineOption } from "../charts/lineOption";
import { Empty, ErrorNotice, Loading } from "../components/feedback";
import { formatMetric } from "../format";
import {
  comparableMetrics,
  compareScale,
  compareTestId,
  DEFAULT_COMPARED,
  LABEL_FREE_METRIC,
  type LabelFreeChoice,
  labelFreeChoice,
  settingDifferences,
  targetDataset,
} from "../metrics/compare";
import { findSeries } from "../metrics/series";
import { useTitle } from "../useTitle";

/** Two or more federations side by side: any metric they report on one chart each, and the settings in
 * which they differ. The selection lives in the URL (?ids=a,b&metrics=x,y) so it can be shared. Without
 * an event stream per federation, running ones are polled. */
export function ComparePage() {
  const [params, setParams] = useSearchParams();
  const ids = useMemo(() => (params.get("ids") ?? "").split(",").filter(Boolean), [params]);
  const federations = useQuery(federationsQuery());
  // Each federation's registered nodes: where its target's data are (a served config holds no nodes).
  const nodes = useQueries({ queries: ids.map((id) => nodesQuery(id)) });
  const metrics = useQueries({
    queries: ids.map((id) => ({ ...metricsQuery(id), refetchInterval: 10_000 })),
  });

  const available = comparableMetrics(metrics.map((m) => m.data));
  const chosen = params.get("metrics");
  const drawn =
    chosen === null
      ? available.filter((n) => (DEFAULT_COMPARED as readonly string[]).includes(n))
      : chosen.split(",").filter(Boolean);

  const update = (nextIds: string[], nextMetrics: string[] | null) => {
    const next: Record<string, string> = {};
    if (nextIds.length) next.ids = nextIds.join(",");
    if (nextMetrics !== null) next.metrics = nextMetrics.join(",");
    setParams(next, { replace: true });
  };
  const toggle = (id: string) =>
    update(ids.includes(id) ? ids.filter((x) => x !== id) : [...ids, id], chosen === null ? null : drawn);
  const toggleMetric = (name: string) =>
    update(ids, drawn.includes(name) ? drawn.filter((x) => x !== name) : [...drawn, name]);
  const federationOf = (id: string) => federations.data?.items.find((f) => f.id === id);
  const nameOf = (id: string) => federationOf(id)?.name ?? id;
  const differences = settingDifferences(ids.map((id) => federationOf(id)?.config ?? {}));
  useTitle("Compare");

  return (
    <>
      <div className="page-head">
        <h1>Compare federations</h1>
      </div>
      <section className="panel" aria-labelledby="pick-title">
        <h2 id="pick-title">Federations</h2>
        {federations.isPending ? (
          <Loading what="federations" />
        ) : federations.isError ? (
          <ErrorNotice
            error={federations.error}
            what="the federations"
            retry={() => void federations.refetch()}
          />
        ) : federations.data.items.length < 2 ? (
          <Empty>
            <p>
              Comparing needs two federations; there{" "}
              {federations.data.items.length === 1 ? "is one" : "are none"}.{" "}
              <Link to="/">Create or clone one</Link>.
            </p>
          </Empty>
        ) : (
          <fieldset className="picker">
            <legend>Pick two or more</legend>
            {federations.data.items.map((f) => (
              // The details stay outside the label, so each box is named by its federation alone.
              <div key={f.id}>
                <label>
                  <input type="checkbox" checked={ids.includes(f.id)} onChange={() => toggle(f.id)} />{" "}
                  {f.name}
                </label>{" "}
                <span className="muted">
                  ({String(f.config.algorithm)}, {f.status})
                </span>
              </div>
            ))}
          </fieldset>
        )}
      </section>

      {ids.length < 2 ? (
        <p className="muted">Pick two or more federations above to draw their curves on the same charts.</p>
      ) : (
        <>
          <section className="panel" aria-labelledby="metrics-title">
            <h2 id="metrics-title">Metrics</h2>
            {metrics.map((m, i) =>
              m.isError ? (
                <ErrorNotice key={ids[i]} error={m.error} what={`the metrics of ${nameOf(ids[i]!)}`} />
              ) : null,
            )}
            {metrics.some((m) => m.isPending) ? (
              <Loading what="metrics" />
            ) : available.length === 0 ? (
              <p className="muted">None of these federations has reported a metric yet.</p>
            ) : (
              <fieldset className="picker">
                <legend>Draw</legend>
                {available.map((name) => (
                  <label key={name}>
                    <input
                      type="checkbox"
                      checked={drawn.includes(name)}
                      onChange={() => toggleMetric(name)}
                    />{" "}
                    <code>{name}</code>
                  </label>
                ))}
              </fieldset>
            )}
          </section>
          <div className="chart-grid">
            {drawn.map((name) => {
              const testId = compareTestId(name);
              const scale = compareScale(name);
              const lines: ChartLine[] = ids.map((id, i) => ({
                label: nameOf(id),
                points: findSeries(metrics[i]?.data, name)?.points ?? [],
              }));
              return (
                <figure key={name} className="chart-card" aria-labelledby={`${testId}-title`}>
                  <figcaption>
                    <h3 id={`${testId}-title`}>
                      <code>{name}</code> per round
                    </h3>
                  </figcaption>
                  <EChart
                    className="chart"
                    option={lineOption(lines, scale)}
                    label={`${name} per round, one line per federation`}
                    data-testid={testId}
                    data-lines={lines.filter((l) => l.points.length > 0).length}
                  />
                </figure>
              );
            })}
          </div>
          <LabelFreeChoicePanel
            choice={labelFreeChoice(
              ids.map((id) => federationOf(id)?.config ?? {}),
              ids.map((id, i) => targetDataset(nodes[i]?.data?.items, federationOf(id)?.config)),
              metrics.map((m) => m.data),
            )}
            names={ids.map(nameOf)}
          />
          <section className="panel" aria-labelledby="settings-title">
            <h2 id="settings-title">Settings that differ</h2>
            {differences.length === 0 ? (
              <p className="muted">These federations have the same settings.</p>
            ) : (
              <div className="table-wrap">
                <table data-testid="settings-diff">
                  <thead>
                    <tr>
                      <th scope="col">Setting</th>
                      {ids.map((id) => (
                        <th scope="col" key={id}>
                          {nameOf(id)}
                        </th>
                      ))}
                    </tr>
                  </thead>
                  <tbody>
                    {differences.map((d) => (
                      <tr key={d.key}>
                        <th scope="row">
                          <code>{d.key}</code>
                        </th>
                        {d.values.map((v, i) => (
                          <td key={ids[i]}>
                            {v === undefined ? <span className="muted">(not set)</span> : <code>{v}</code>}
                          </td>
                        ))}
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </section>
        </>
      )}
    </>
  );
}

/** Which run to deploy without a label: the highest last `target_information` among runs of one target. */
function LabelFreeChoicePanel({ choice, names }: { choice: LabelFreeChoice; names: string[] }) {
  return (
    <section
      className="panel"
      aria-labelledby="choice-title"
      data-testid="label-free-choice"
      data-chosen={choice.kind === "chosen" ? names[choice.chosen] : undefined}
    >
      <h2 id="choice-title">Which to deploy, without a label</h2>
      {choice.kind === "different-targets" ? (
        <p className="muted">
          These federations adapt to different target data (
          {choice.targets.map((t) => t ?? "not named").join(", ")}
          ): their label-free scores do not compare.
        </p>
      ) : choice.kind === "waiting" ? (
        <p className="muted">
          Waiting for {choice.missing.map((i) => names[i]).join(", ")} to report{" "}
          <code>{LABEL_FREE_METRIC}</code> (the target reports it at each evaluation).
        </p>
      ) : (
        <>
          <p>
            <strong>{names[choice.chosen]}</strong> has the highest <code>{LABEL_FREE_METRIC}</code> at its
            last evaluation: {choice.values.map((v, i) => `${names[i]} ${formatMetric(v)}`).join(", ")}. No
            label is read: it is the class balance of the target model&apos;s predictions on the target&apos;s
            own training data minus their mean entropy.
          </p>
          <p className="muted">
            {choice.differing > 1 ? `These federations differ in ${choice.differing} settings. ` : ""}
            Information compares runs that differ in one setting, such as the normalisation: between runs
            trained differently in many ways the more confident wins whether or not it is right. For the final
            choice, download the models and run <code>fedalign choose</code>, which scores them on the whole
            training split.
          </p>
        </>
      )}
    </section>
  );
}
