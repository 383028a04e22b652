import type { FieldSpec, FieldValue } from "./schemaForm";

interface Props {
  field: FieldSpec;
  value: FieldValue;
  error: string | null;
  onChange(key: string, value: FieldValue): void;
  placeholder?: string;
}

/** One labelled input for a schema field, its description as a hint and its problem, if any, below. */
export function SchemaField({ field, value, error, onChange, placeholder }: Props) {
  const id = `field-${field.key.replaceAll(".", "-")}`;
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const describedBy = [field.description ? hintId : null, error ? errorId : null].filter(Boolean).join(" ");
  const common = {
    id,
    name: field.key,
    "aria-invalid": error ? true : undefined,
    "aria-describedby": describedBy || undefined,
  };

  let input;
  if (field.kind === "boolean") {
    input = (
      <input
        {...common}
        type="checkbox"
        checked={value === true}
        onChange={(e) => onChange(field.key, e.target.checked)}
      />
    );
  } else if (field.kind === "enum") {
    input = (
      <select {...common} value={String(value)} onChange={(e) => onChange(field.key, e.target.value)}>
        {/* Null allowed: an empty choice means "the server's default" (named by the placeholder). No default
            at all: the user must choose, so nothing is preselected. */}
        {field.nullable ? (
          <option value="">{placeholder ?? "none"}</option>
        ) : (
          field.initial === "" && (
            <option value="" disabled>
              Choose…
            </option>
          )
        )}
        {field.options.map((option) => (
          <option key={option} value={option}>
            {option}
          </option>
        ))}
      </select>
    );
  } else {
    const numeric = field.kind === "integer" || field.kind === "number";
    const suggestions = (field.schema.examples ?? []).filter((e): e is string => typeof e === "string");
    const listId = suggestions.length > 0 ? `${id}-suggestions` : undefined;
    input = (
      <>
        <input
          {...common}
          list={listId}
          type="text"
          inputMode={field.kind === "number" ? "decimal" : numeric ? "numeric" : undefined}
          autoComplete="off"
          spellCheck={false}
          placeholder={placeholder ?? (field.nullable ? "none" : undefined)}
          value={String(value)}
          onChange={(e) => onChange(field.key, e.target.value)}
        />
        {listId && (
          <datalist id={listId}>
            {suggestions.map((s) => (
              <option key={s} value={s} />
            ))}
          </datalist>
        )}
      </>
    );
  }

  return (
    <div className={`field field-${field.kind}${error ? " invalid" : ""}`}>
      <label htmlFor={id}>{field.label}</label>
      {input}
      {field.description && (
        <small id={hintId} className="hint">
          {field.description}
        </small>
      )}
      {error && (
        <small id={errorId} className="field-error">
          {error}
        </small>
      )}
    </div>
  );
}
