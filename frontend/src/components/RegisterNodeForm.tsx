import { useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, unwrap } from "../api/client";
import { keys } from "../api/queries";
import type { NodeCreate, NodeCreated } from "../api/types";
import { componentSchema } from "../forms/jsonSchema";
import { FormProblems } from "../forms/FormProblems";
import { SchemaField } from "../forms/SchemaField";
import { allFields, formGroups, toBody } from "../forms/schemaForm";
import { useSchemaForm } from "../forms/useSchemaForm";
import { useSubmission } from "../forms/useSubmission";
import { SubmitFailure } from "./feedback";
import { CopyButton } from "./CopyButton";
import { SecretOnce } from "./SecretOnce";

const nodeGroups = formGroups(componentSchema("NodeCreate"), {
  title: "Register a node",
  labels: { name: "Node name" },
  order: ["name", "role", "dataset", "mode"],
});
const PLACEHOLDERS: Record<string, string> = { name: "hospital-a", dataset: "digits:mnist" };

/** Registers a node and shows its token and run command once; they are gone when dismissed. */
export function RegisterNodeForm({ federationId }: { federationId: string }) {
  const client = useQueryClient();
  const { values, problems, shown, setValue, reset, valid } = useSchemaForm(nodeGroups);
  const [registered, setRegistered] = useState<NodeCreated | null>(null);

  const { pending, failure, submit } = useSubmission(valid, async () => {
    const node = await unwrap(
      api.POST("/api/v1/federations/{federation_id}/nodes", {
        params: { path: { federation_id: federationId } },
        body: toBody(nodeGroups, values) as NodeCreate,
      }),
    );
    setRegistered(node);
    reset();
    await client.invalidateQueries({ queryKey: keys.nodes(federationId) });
  });

  if (registered) {
    return (
      <section className="notice success" aria-labelledby="registered-title">
        <h3 id="registered-title">Registered {registered.name}</h3>
        <p>
          The node's token is shown only now. Run this on the machine that holds the node's data (
          <code>{registered.dataset}</code>):
        </p>
        <pre className="command">
          <code data-testid="run-command">{registered.run_command}</code>
        </pre>
        <CopyButton text={registered.run_command} label="Copy command" />
        <SecretOnce label="Node token" value={registered.token} testId="node-token" />
        <div className="actions">
          <button type="button" onClick={() => setRegistered(null)}>
            Done
          </button>
        </div>
      </section>
    );
  }

  const fields = allFields(nodeGroups);
  return (
    <form className="register-form" aria-label="Register a node" onSubmit={submit} noValidate>
      <div className="field-grid">
        {fields.map((field) => (
          <SchemaField
            key={field.key}
            field={field}
            value={values[field.key]!}
            error={shown[field.key] ?? null}
            onChange={setValue}
            placeholder={PLACEHOLDERS[field.key]}
          />
        ))}
      </div>
      <FormProblems
        id="register-problems"
        groups={nodeGroups}
        problems={problems}
        action="register the node"
      />
      <SubmitFailure failure={failure} />
      <div className="actions">
        <button
          type="submit"
          className="primary"
          disabled={!valid || pending}
          aria-describedby={valid ? undefined : "register-problems"}
        >
          Register node
        </button>
      </div>
    </form>
  );
}
