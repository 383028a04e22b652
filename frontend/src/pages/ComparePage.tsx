import { useQueries, useQuery } from "@tanstack/react-query";
import { useMemo } from "react";
import { Link, useSearchParams } from "react-router";
import { federationsQuery, metricsQuery } from "../api/queries";
import { EChart } from "../charts/EChart";
import { type ChartLine, type ChartScale, lineOption } from "../charts/lineOption";
import { Empty, ErrorNotice, Loading } from "../components/feedback";
import { findSeries } from "../metrics/series";
import { useTitle } from "../useTitle";

const COMPARED = [
  {
    name: "target_acc",
    title: "Target accuracy",
    testId: "chart-compare-target-acc",
    scale: { y: "accuracy", min: 0, max: 1 },
  },
  {
    name: "disc_acc",
    title: "Discriminator accuracy (balanced)",
    testId: "chart-compare-disc-acc",
    scale: { y: "accuracy", min: 0, max: 1, reference: { value: 0.5, label: "aligned (0.5)" } },
  },
] as const satisfies readonly { name: string; title: string; testId: string; scale: ChartScale }[];

/** Two or more federations side by side; the selection lives in the URL (?ids=a,b) so it can be shared.
 * Without an event stream per federation, running ones are polled. */
export function ComparePage() {
  const [params, setParams] = useSearchParams();
  const ids = useMemo(() => (params.get("ids") ?? "").split(",").filter(Boolean), [params]);
  const federations = useQuery(federationsQuery());
  const metrics = useQueries({
    queries: ids.map((id) => ({ ...metricsQuery(id), refetchInterval: 10_000 })),
  });

  const toggle = (id: string) => {
    const next = ids.includes(id) ? ids.filter((x) => x !== id) : [...ids, id];
    setParams(next.length ? { ids: next.join(",") } : {}, { replace: true });
  };
  const nameOf = (id: string) => federations.data?.items.find((f) => f.id === id)?.name ?? id;
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
        <div className="chart-grid">
          {metrics.map((m, i) =>
            m.isError ? (
              <ErrorNotice key={ids[i]} error={m.error} what={`the metrics of ${nameOf(ids[i]!)}`} />
            ) : null,
          )}
          {metrics.some((m) => m.isPending) && <Loading what="metrics" />}
          {COMPARED.map((chart) => {
            const lines: ChartLine[] = ids.map((id, i) => ({
              label: nameOf(id),
              points: findSeries(metrics[i]?.data, chart.name)?.points ?? [],
            }));
            return (
              <figure key={chart.testId} className="chart-card" aria-labelledby={`${chart.testId}-title`}>
                <figcaption>
                  <h3 id={`${chart.testId}-title`}>{chart.title}</h3>
                </figcaption>
                <EChart
                  className="chart"
                  option={lineOption(lines, chart.scale)}
                  label={`${chart.title} per round, one line per federation`}
                  data-testid={chart.testId}
                  data-lines={lines.filter((l) => l.points.length > 0).length}
                />
              </figure>
            );
          })}
        </div>
      )}
    </>
  );
}
