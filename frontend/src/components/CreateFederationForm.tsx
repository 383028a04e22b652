import { type ReactNode, useState } from "react";
import type { FederationSettings } from "../api/types";
import { componentSchema } from "../forms/jsonSchema";
import { SchemaField } from "../forms/SchemaField";
import { FormProblems } from "../forms/FormProblems";
import { type FieldGroup, formGroups, toBody } from "../forms/schemaForm";
import { useSchemaForm } from "../forms/useSchemaForm";
import { useSubmission } from "../forms/useSubmission";
import { SubmitFailure } from "./feedback";

const LABELS = {
  phase_deadline_s: "Phase deadline (seconds)",
  model: "Model",
  hyperparameters: "Hyperparameters",
};

/** The create form's fields, from the backend's FederationSettings schema (openapi.json). Model options and
 * hyperparameters are labelled with their own names (batch_size, adv_weight), as the configuration reference
 * and TOML files spell them. */
export const federationSettingsGroups: FieldGroup[] = formGroups(componentSchema("FederationSettings"), {
  title: "Federation",
  labels: LABELS,
  nestedLabel: (name) => name,
  order: [
    ...[
      "name",
      "algorithm",
      "architecture",
      "rounds",
      "seed",
      "aggregator",
      "min_sources",
      "phase_deadline_s",
    ],
    ...["publish_model", "hyperparameters", "model"],
  ],
});

interface Props {
  groups?: FieldGroup[];
  /** Sends the body; a rejection's message is shown on the form. */
  onSubmit(body: FederationSettings): Promise<unknown>;
  onCancel?(): void;
}

export function CreateFederationForm({ groups = federationSettingsGroups, onSubmit, onCancel }: Props) {
  const { values, problems, shown, setValue, valid } = useSchemaForm(groups);

  const { pending, failure, submit } = useSubmission(valid, async () => {
    await onSubmit(toBody(groups, values) as FederationSettings);
  });

  const [top, ...nested] = groups;
  return (
    <form className="create-form" aria-label="Create federation" onSubmit={submit} noValidate>
      {top && (
        <fieldset>
          <legend>{top.title}</legend>
          <div className="field-grid">
            {top.fields.map((field) => (
              <SchemaField
                key={field.key}
                field={field}
                value={values[field.key]!}
                error={shown[field.key] ?? null}
                onChange={setValue}
              />
            ))}
          </div>
        </fieldset>
      )}
      {nested.map((group) => (
        <Collapsible key={group.key} group={group} hasProblems={group.fields.some((f) => shown[f.key])}>
          {group.fields.map((field) => (
            <SchemaField
              key={field.key}
              field={field}
              value={values[field.key]!}
              error={shown[field.key] ?? null}
              onChange={setValue}
            />
          ))}
        </Collapsible>
      ))}
      <FormProblems id="create-problems" groups={groups} problems={problems} action="create the federation" />
      <SubmitFailure failure={failure} />
      <div className="actions">
        <button
          type="submit"
          className="primary"
          disabled={!valid || pending}
          aria-describedby={valid ? undefined : "create-problems"}
        >
          {pending ? "Creating…" : "Create federation"}
        </button>
        {onCancel && (
          <button type="button" onClick={onCancel}>
            Close
          </button>
        )}
      </div>
    </form>
  );
}

/** A group of fields folded away by default, unfolded while any of them has a problem. */
function Collapsible({
  group,
  hasProblems,
  children,
}: {
  group: FieldGroup;
  hasProblems: boolean;
  children: ReactNode;
}) {
  const [open, setOpen] = useState(false);
  return (
    <details open={open || hasProblems} onToggle={(e) => setOpen(e.currentTarget.open)}>
      <summary>
        {group.title} <span className="muted">({group.fields.length} settings, each with its default)</span>
      </summary>
      <div className="field-grid">{children}</div>
    </details>
  );
}
