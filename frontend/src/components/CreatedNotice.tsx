import { Link } from "react-router";
import type { FederationCreated, NodeCreated } from "../api/types";
import { CopyButton } from "./CopyButton";
import { SecretOnce } from "./SecretOnce";

interface Props {
  created: FederationCreated & { node_tokens?: NodeCreated[] };
  verb: string;
  onDismiss(): void;
}

/** After a create or a clone: the join token (and a clone's node tokens), shown this once, and the way to
 * the new federation. */
export function CreatedNotice({ created, verb, onDismiss }: Props) {
  const nodes = created.node_tokens ?? [];
  return (
    <section className="notice success" aria-labelledby="created-title">
      <h2 id="created-title">
        {verb} “{created.name}”
      </h2>
      <p>
        Tokens are shown only now: the server keeps just their hashes. Organisations register their nodes with
        the join token.
      </p>
      <SecretOnce label="Join token" value={created.join_token} testId="join-token" />
      {nodes.length > 0 && (
        <>
          <h3>Copied nodes</h3>
          <p>Each runs its command on the machine that holds its data.</p>
          {nodes.map((node) => (
            <div key={node.name} className="cloned-node">
              <SecretOnce
                label={`Token of ${node.name}`}
                value={node.token}
                testId={`node-token-${node.name}`}
              />
              <pre className="command">
                <code data-testid={`run-command-${node.name}`}>{node.run_command}</code>
              </pre>
              <CopyButton text={node.run_command} label={`Copy command of ${node.name}`} />
            </div>
          ))}
        </>
      )}
      <div className="actions">
        <Link to={`/federations/${encodeURIComponent(created.id)}`}>Open {created.name}</Link>
        <button type="button" onClick={onDismiss}>
          Done
        </button>
      </div>
    </section>
  );
}
