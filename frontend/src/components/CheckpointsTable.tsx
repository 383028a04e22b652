import { useQuery } from "@tanstack/react-query";
import { checkpointsQuery, downloadUrls } from "../api/queries";
import { formatAccuracy } from "../format";
import { download } from "./download";
import { ErrorNotice, Loading } from "./feedback";

/** The target's checkpoints (checkpoint_every): each round's model to download, the selected one marked. */
export function CheckpointsTable({ federationId }: { federationId: string }) {
  const checkpoints = useQuery(checkpointsQuery(federationId));
  if (checkpoints.isPending) return <Loading what="the checkpoints" />;
  if (checkpoints.isError) {
    return (
      <ErrorNotice
        error={checkpoints.error}
        what="the checkpoints"
        retry={() => void checkpoints.refetch()}
      />
    );
  }
  const items = checkpoints.data.items;
  if (items.length === 0) return <p className="hint">No checkpoint yet: the first comes with its round.</p>;
  return (
    <div className="table-wrap">
      <table data-testid="checkpoints">
        <caption className="hint">
          Selected: the best source validation accuracy, a choice that uses no target label.
        </caption>
        <thead>
          <tr>
            <th scope="col">Round</th>
            <th scope="col">Source val acc</th>
            <th scope="col">Model</th>
          </tr>
        </thead>
        <tbody>
          {items.map((c) => (
            <tr key={c.round} aria-current={c.selected ? "true" : undefined}>
              <th scope="row">
                {c.round}
                {c.selected ? (
                  <>
                    {" "}
                    <span className="badge">selected</span>
                  </>
                ) : null}
              </th>
              <td>{formatAccuracy(c.source_val_acc)}</td>
              <td>
                <button
                  type="button"
                  onClick={() => download(downloadUrls.checkpoint(federationId, c.round))}
                >
                  Download round {c.round}
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
