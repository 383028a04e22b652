import { useQuery } from "@tanstack/react-query";
import { roundQuery } from "../api/queries";
import type { Federation } from "../api/types";
import { ErrorNotice, Loading } from "./feedback";

/** The open round: its phases in order and each node's step in the phase under way. */
export function CurrentRound({ federation }: { federation: Federation }) {
  const round = federation.round;
  const detail = useQuery({ ...roundQuery(federation.id, round ?? 0), enabled: round != null });
  const total = Number(federation.config.rounds ?? 0);

  if (round == null) {
    const done = federation.progress.rounds_done;
    if (federation.status === "created") {
      return <p className="muted">Not started: rounds begin when the federation starts.</p>;
    }
    return (
      <p className="round-heading">
        {federation.status === "finished" ? "Finished" : `Ended (${federation.status})`} after {done} of{" "}
        {total} rounds.
      </p>
    );
  }
  const heading = (
    <p className="round-heading">
      {round === 0 ? "Setup round" : `Round ${round} of ${total}`}
      {federation.phase ? (
        <>
          {" "}
          · phase <strong>{federation.phase}</strong>
        </>
      ) : null}
    </p>
  );
  if (detail.isPending)
    return (
      <>
        {heading}
        <Loading what="the round's steps" />
      </>
    );
  if (detail.isError)
    return (
      <>
        {heading}
        <ErrorNotice error={detail.error} what="the round" retry={() => void detail.refetch()} />
      </>
    );

  const current = detail.data.phases.find((p) => p.state === "open" || p.state === "aggregating");
  return (
    <>
      {heading}
      <ol className="phases" aria-label="Phases of this round">
        {detail.data.phases.map((phase) => (
          <li key={phase.name} className={`phase phase-${phase.state}`}>
            {phase.name} <span className="muted">({phase.state})</span>
          </li>
        ))}
      </ol>
      {current && current.steps.length > 0 && (
        <div className="table-wrap">
          <table>
            <caption>Steps of phase {current.name}</caption>
            <thead>
              <tr>
                <th scope="col">Node</th>
                <th scope="col">Step</th>
                <th scope="col">State</th>
                <th scope="col">Attempts</th>
              </tr>
            </thead>
            <tbody>
              {current.steps.map((step) => (
                <tr key={step.id}>
                  <th scope="row">{step.node}</th>
                  <td>
                    {step.kind}
                    {step.model ? ` (${step.model})` : ""}
                  </td>
                  <td>
                    <span className={`badge step-${step.status}`}>{step.status}</span>
                    {step.failure && <p className="node-failure muted">{step.failure}</p>}
                  </td>
                  <td>{step.attempts}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}
