import { api, unwrap } from "../api/client";
import type { Federation, FederationClone, FederationCloned } from "../api/types";
import { FormProblems } from "../forms/FormProblems";
import { componentSchema } from "../forms/jsonSchema";
import { SchemaField } from "../forms/SchemaField";
import { allFields, formGroups, toBody } from "../forms/schemaForm";
import { useSchemaForm } from "../forms/useSchemaForm";
import { useSubmission } from "../forms/useSubmission";
import { SubmitFailure } from "./feedback";

const cloneGroups = formGroups(componentSchema("FederationClone"), {
  title: "Clone",
  labels: { nodes: "Register the same nodes" },
  order: ["name", "algorithm", "seed", "nodes"],
});

/** Copies a federation's config (optionally with another name, algorithm or seed, and its nodes). */
export function CloneForm({
  federation,
  onCloned,
  onCancel,
}: {
  federation: Federation;
  onCloned(clone: FederationCloned): void;
  onCancel(): void;
}) {
  const { values, problems, shown, setValue, valid } = useSchemaForm(cloneGroups);
  // What an empty field leaves to the server, in the field itself.
  const placeholders: Record<string, string> = {
    name: `${federation.name} (copy)`,
    algorithm: `same as the original (${String(federation.config.algorithm)})`,
    seed: String(federation.config.seed ?? ""),
  };

  const { pending, failure, submit } = useSubmission(valid, async () => {
    const clone = await unwrap(
      api.POST("/api/v1/federations/{federation_id}/clone", {
        params: { path: { federation_id: federation.id } },
        body: toBody(cloneGroups, values) as FederationClone,
      }),
    );
    onCloned(clone);
  });

  return (
    <form aria-label={`Clone ${federation.name}`} onSubmit={submit} noValidate>
      <div className="field-grid">
        {allFields(cloneGroups).map((field) => (
          <SchemaField
            key={field.key}
            field={field}
            value={values[field.key]!}
            error={shown[field.key] ?? null}
            onChange={setValue}
            placeholder={placeholders[field.key]}
          />
        ))}
      </div>
      <FormProblems id="clone-problems" groups={cloneGroups} problems={problems} action="clone" />
      <SubmitFailure failure={failure} />
      <div className="actions">
        <button type="submit" className="primary" disabled={!valid || pending}>
          {pending ? "Cloning…" : "Clone federation"}
        </button>
        <button type="button" onClick={onCancel}>
          Close
        </button>
      </div>
    </form>
  );
}
