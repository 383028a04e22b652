import type { RoundSummary } from "../api/types";
import { formatMetric } from "../format";
import { Empty } from "./feedback";

// The federation-level numbers worth a column; every other metric is in the charts and the CSV.
const COLUMNS = [
  "disc_acc",
  "disc_acc_fresh",
  "pad",
  "task_loss",
  "adv_loss",
  "source_val_acc",
  "target_acc",
] as const;

/** "beta (disc1, adapt)": which nodes phases of the round closed without, by node; reasons in the title. */
export function leftOutText(round: RoundSummary): { text: string; reasons: string } {
  const phasesByNode = new Map<string, string[]>();
  for (const closed of round.left_out) {
    for (const node of closed.nodes)
      phasesByNode.set(node, [...(phasesByNode.get(node) ?? []), closed.phase]);
  }
  const text = [...phasesByNode].map(([node, phases]) => `${node} (${phases.join(", ")})`).join("; ");
  const reasons = round.left_out.map((closed) => `${closed.phase}: ${closed.reason}`).join("\n");
  return { text, reasons };
}

/** Rounds begun so far, newest first. */
export function RoundsTable({ rounds }: { rounds: RoundSummary[] }) {
  if (rounds.length === 0)
    return (
      <Empty>
        <p>No rounds yet: they appear once the federation starts.</p>
      </Empty>
    );
  return (
    <div className="table-wrap rounds">
      <table>
        <caption className="visually-hidden">Rounds</caption>
        <thead>
          <tr>
            <th scope="col">Round</th>
            <th scope="col">State</th>
            <th scope="col">Phase</th>
            <th scope="col">Left out</th>
            {COLUMNS.map((name) => (
              <th key={name} scope="col" className="num">
                <code>{name}</code>
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {[...rounds].reverse().map((round) => (
            <tr key={round.round}>
              <th scope="row">{round.round === 0 ? "0 (setup)" : round.round}</th>
              <td>{round.state}</td>
              <td>{round.open_phase ?? "—"}</td>
              <LeftOutCell round={round} />
              {COLUMNS.map((name) => (
                <td key={name} className="num">
                  {formatMetric(round.metrics[name])}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function LeftOutCell({ round }: { round: RoundSummary }) {
  const { text, reasons } = leftOutText(round);
  if (!text) return <td>—</td>;
  return (
    <td className="left-out" title={reasons} data-testid={`left-out-${round.round}`}>
      {text}
    </td>
  );
}
