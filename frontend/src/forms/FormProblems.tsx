import { allFields, type FieldGroup } from "./schemaForm";

/** Why the submit button is disabled: the fields still to fix, by label. */
export function FormProblems({
  id,
  groups,
  problems,
  action,
}: {
  id: string;
  groups: readonly FieldGroup[];
  problems: Record<string, string>;
  action: string;
}) {
  const invalid = allFields(groups).filter((f) => problems[f.key]);
  if (invalid.length === 0) return null;
  return (
    <p id={id} className="form-problems" role="status">
      To {action}, fix {invalid.length === 1 ? "this field" : `these ${invalid.length} fields`}:{" "}
      {invalid.map((f) => f.label).join(", ")}.
    </p>
  );
}
