import { useMutation, useQueryClient } from "@tanstack/react-query";
import { api, errorMessage, unwrap } from "../api/client";
import { keys } from "../api/queries";
import type { Node } from "../api/types";
import { formatTime } from "../format";
import { Empty } from "./feedback";
import { NodeTokenControls } from "./TokenControls";

function samplesText(samples: Node["samples"]): string {
  if (!samples) return "—";
  return Object.entries(samples)
    .map(([split, count]) => `${split} ${count.toLocaleString()}`)
    .join(", ");
}

/** A node's state, with the reason of its last failed step (the node's own report, e.g. a model that does
 * not match the federation's manifest): prominent while the node is out, muted once it is back. */
function NodeState({ node }: { node: Node }) {
  return (
    <>
      <span className={node.state === "failed" ? "state-failed" : undefined}>{node.state}</span>
      {node.failure && (
        <p
          className={node.state === "failed" ? "node-failure" : "node-failure muted"}
          data-testid={`node-failure-${node.name}`}
        >
          {node.state === "failed" ? "" : "Last failure: "}
          {node.failure}
        </p>
      )}
    </>
  );
}

/** The federation's nodes; before the start, each can be removed. `manageable`: the role may manage nodes
 * (remove them, rotate or revoke their tokens); otherwise the table is read-only. */
export function NodesTable({
  federationId,
  nodes,
  removable,
  manageable,
}: {
  federationId: string;
  nodes: Node[];
  removable: boolean;
  manageable: boolean;
}) {
  const client = useQueryClient();
  const remove = useMutation({
    mutationFn: (name: string) =>
      unwrap(
        api.DELETE("/api/v1/federations/{federation_id}/nodes/{name}", {
          params: { path: { federation_id: federationId, name } },
        }),
      ),
    onSuccess: () => client.invalidateQueries({ queryKey: keys.nodes(federationId) }),
  });

  if (nodes.length === 0) {
    return (
      <Empty>
        <p>
          No nodes yet. A federation needs one target and at least one source: register them below, or give
          the federation's join token to each organisation.
        </p>
      </Empty>
    );
  }
  return (
    <div className="table-wrap">
      <table>
        <caption className="visually-hidden">Nodes</caption>
        <thead>
          <tr>
            <th scope="col">Node</th>
            <th scope="col">Organisation</th>
            <th scope="col">Role</th>
            <th scope="col">Mode</th>
            <th scope="col">Dataset</th>
            <th scope="col">Samples</th>
            <th scope="col">State</th>
            <th scope="col">Last seen</th>
            {manageable && removable && <th scope="col">Remove</th>}
            {manageable && <th scope="col">Token</th>}
          </tr>
        </thead>
        <tbody>
          {nodes.map((node) => (
            <tr key={node.id}>
              <th scope="row">{node.name}</th>
              <td>{node.organisation ?? "—"}</td>
              <td>{node.role}</td>
              <td>{node.mode}</td>
              <td>
                <code>{node.dataset}</code>
              </td>
              <td>{samplesText(node.samples)}</td>
              <td>
                <NodeState node={node} />
              </td>
              <td>{formatTime(node.last_seen)}</td>
              {manageable && removable && (
                <td>
                  <button
                    type="button"
                    onClick={() => remove.mutate(node.name)}
                    disabled={remove.isPending}
                    aria-label={`Remove node ${node.name}`}
                  >
                    Remove
                  </button>
                </td>
              )}
              {manageable && (
                <td>
                  <NodeTokenControls federationId={federationId} name={node.name} />
                </td>
              )}
            </tr>
          ))}
        </tbody>
      </table>
      {remove.error && (
        <p className="field-error" role="alert">
          {errorMessage(remove.error)}
        </p>
      )}
    </div>
  );
}
