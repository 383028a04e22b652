/**
 * Form fields derived from a JSON schema: one field per scalar property (nested objects become groups),
 * with the schema's default as the initial value and its bounds as validation messages, shown while the
 * user types. Values are kept as the inputs' text (or a checkbox's boolean) and parsed on submit.
 */
import { type JsonSchema, resolveRef } from "./jsonSchema";

export type FieldValue = string | boolean;
export type FormValues = Record<string, FieldValue>;
export type FieldKind = "integer" | "number" | "string" | "boolean" | "enum" | "integer-list";

export interface FieldSpec {
  /** Dotted path in the request body, e.g. "hyperparameters.lr"; also the form value's key. */
  key: string;
  name: string;
  label: string;
  kind: FieldKind;
  /** Empty input means null (the schema allows null: "default: all", "wait indefinitely"). */
  nullable: boolean;
  required: boolean;
  options: string[];
  initial: FieldValue;
  description?: string;
  schema: JsonSchema;
}

export interface FieldGroup {
  /** "" for the top-level properties, else the nested object's property name. */
  key: string;
  title: string;
  fields: FieldSpec[];
}

const humanize = (name: string) => {
  const words = name.replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
};

function kindOf(schema: JsonSchema): FieldKind {
  if (schema.enum) return "enum";
  if (schema.type === "array" && schema.items?.type === "integer") return "integer-list";
  if (schema.type === "integer" || schema.type === "number" || schema.type === "boolean") return schema.type;
  return "string";
}

function initialValue(kind: FieldKind, value: unknown): FieldValue {
  if (kind === "boolean") return value === true;
  if (value === undefined || value === null) return "";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function fieldOf(
  key: string,
  name: string,
  property: JsonSchema,
  required: boolean,
  labels: Labels,
): FieldSpec {
  // `int | None` arrives as anyOf [{type: integer, ...bounds}, {type: null}].
  const variants = property.anyOf ?? [property];
  const concrete = variants.find((v) => v.type !== "null") ?? property;
  const schema: JsonSchema = { ...concrete, description: property.description, default: property.default };
  const kind = kindOf(schema);
  return {
    key,
    name,
    label: labels[key] ?? humanize(name),
    kind,
    nullable: variants.some((v) => v.type === "null"),
    required,
    options: (schema.enum ?? []).map(String),
    initial: initialValue(kind, schema.default),
    description: schema.description,
    schema,
  };
}

type Labels = Record<string, string>;

export interface FormOptions {
  /** Legend of the top-level fields. */
  title?: string;
  /** Labels by field key; default: the property name made readable. */
  labels?: Labels;
  /** Labels of nested fields by property name, e.g. kept as they are (`batch_size`), which is how the docs
   * and TOML files spell hyperparameters. */
  nestedLabel?: (name: string) => string;
  /** Keys to put first, in this order. The committed document has its keys sorted (for stable diffs), so
   * the schema's own order is alphabetical; the rest stay that way. */
  order?: readonly string[];
}

function ordered<T>(entries: [string, T][], order: readonly string[], prefix = ""): [string, T][] {
  const rank = (name: string) => {
    const at = order.indexOf(prefix + name);
    return at === -1 ? order.length : at;
  };
  return [...entries].sort((a, b) => rank(a[0]) - rank(b[0]));
}

/** Whether the form can edit a property: a scalar, a choice or a list of whole numbers. A free-form table
 * (`model.options`) or another kind of list (`hyperparameters.adam_betas`) is left out of the form and of
 * the body, so the server's default applies (the API and TOML files set them). */
function editable(property: JsonSchema): boolean {
  const variants = property.anyOf ?? [property];
  const concrete = variants.find((v) => v.type !== "null") ?? property;
  if (concrete.enum) return true;
  if (concrete.type === "object") return false;
  if (concrete.type === "array") return concrete.items?.type === "integer";
  return true;
}

/** Groups of fields for an object schema: its scalar properties first, then one group per nested object. */
export function formGroups(root: JsonSchema, options: FormOptions = {}): FieldGroup[] {
  const { title = "Settings", labels = {}, nestedLabel = humanize, order = [] } = options;
  const top: FieldGroup = { key: "", title, fields: [] };
  const nested: FieldGroup[] = [];
  const required = new Set(root.required ?? []);
  for (const [name, raw] of ordered(Object.entries(root.properties ?? {}), order)) {
    const property = resolveRef(raw);
    if (property.type === "object" && property.properties) {
      const defaults = (property.default ?? {}) as Record<string, unknown>;
      nested.push({
        key: name,
        title: labels[name] ?? humanize(name),
        fields: ordered(
          Object.entries(property.properties).filter(([, schema]) => editable(resolveRef(schema))),
          order,
          `${name}.`,
        ).map(([child, schema]) => {
          const withDefault = { ...schema, default: defaults[child] ?? schema.default };
          const key = `${name}.${child}`;
          return fieldOf(key, child, withDefault, false, { [key]: nestedLabel(child), ...labels });
        }),
      });
    } else if (editable(property)) {
      top.fields.push(fieldOf(name, name, property, required.has(name), labels));
    }
  }
  return [top, ...nested];
}

export const allFields = (groups: readonly FieldGroup[]) => groups.flatMap((g) => g.fields);

export function initialValues(groups: readonly FieldGroup[]): FormValues {
  return Object.fromEntries(allFields(groups).map((f) => [f.key, f.initial]));
}

// Regular expressions read badly in a message; the backend's name pattern (fedalign/config.py) in words.
const PATTERN_HINTS: Record<string, string> = {
  "^[A-Za-z_][A-Za-z0-9_.-]*(:[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*)?$":
    'be a built-in or registered name (e.g. resnet18) or an import path "package.module:factory"',
  "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$":
    'start with a letter or digit and hold only letters, digits, "_", "." and "-" (64 at most)',
};

/** What is wrong with a number against the schema's bounds, or null. */
function rangeProblem(field: FieldSpec, n: number): string | null {
  const { minimum, maximum, exclusiveMinimum, exclusiveMaximum } = field.schema;
  const low = minimum ?? exclusiveMinimum;
  const high = maximum ?? exclusiveMaximum;
  const tooLow =
    (minimum !== undefined && n < minimum) || (exclusiveMinimum !== undefined && n <= exclusiveMinimum);
  const tooHigh =
    (maximum !== undefined && n > maximum) || (exclusiveMaximum !== undefined && n >= exclusiveMaximum);
  if (!tooLow && !tooHigh) return null;
  const lowWords = minimum !== undefined ? `at least ${String(minimum)}` : `greater than ${String(low!)}`;
  const highWords = maximum !== undefined ? `at most ${String(maximum)}` : `less than ${String(high!)}`;
  const expected =
    low !== undefined && high !== undefined ? `${lowWords} and ${highWords}` : tooLow ? lowWords : highWords;
  return `${field.label} must be ${expected}; ${n} is out of range.`;
}

/** The message to show under a field, or null when its value is acceptable. */
export function validateField(field: FieldSpec, value: FieldValue): string | null {
  if (field.kind === "boolean") return null;
  const text = String(value).trim();
  if (text === "") {
    if (field.nullable) return null;
    if (field.kind === "string" && !field.required && field.schema.minLength === undefined) return null;
    return `${field.label} is required.`;
  }
  switch (field.kind) {
    case "enum":
      return field.options.includes(text)
        ? null
        : `${field.label} must be one of ${field.options.join(", ")}.`;
    case "integer":
    case "number": {
      const n = Number(text);
      if (!Number.isFinite(n)) return `${field.label} must be a number.`;
      if (field.kind === "integer" && !Number.isInteger(n)) return `${field.label} must be a whole number.`;
      return rangeProblem(field, n);
    }
    case "integer-list": {
      const parts = text.split(",").map((p) => p.trim());
      const ok = parts.every((p) => /^\d+$/.test(p) && Number(p) > 0);
      return ok ? null : `${field.label} must be positive whole numbers separated by commas, e.g. 3, 28, 28.`;
    }
    case "string": {
      const { minLength, maxLength, pattern } = field.schema;
      if (minLength !== undefined && text.length < minLength)
        return `${field.label} needs at least ${minLength} characters.`;
      if (maxLength !== undefined && text.length > maxLength)
        return `${field.label} takes at most ${maxLength} characters; this has ${text.length}.`;
      if (pattern && !new RegExp(pattern).test(text))
        return `${field.label} must ${PATTERN_HINTS[pattern] ?? `match ${pattern}`}.`;
      return null;
    }
  }
}

/** Each invalid field's message, by field key. */
export function validateForm(groups: readonly FieldGroup[], values: FormValues): Record<string, string> {
  const problems: Record<string, string> = {};
  for (const field of allFields(groups)) {
    const problem = validateField(field, values[field.key] ?? field.initial);
    if (problem) problems[field.key] = problem;
  }
  return problems;
}

function parseValue(field: FieldSpec, value: FieldValue): unknown {
  if (field.kind === "boolean") return value === true;
  const text = String(value).trim();
  if (text === "" && field.nullable) return null;
  switch (field.kind) {
    case "integer":
    case "number":
      return Number(text);
    case "integer-list":
      return text.split(",").map((p) => Number(p.trim()));
    default:
      return text;
  }
}

/** The request body: nested by the fields' dotted keys, with typed values. Call only on a valid form. */
export function toBody(groups: readonly FieldGroup[], values: FormValues): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  for (const field of allFields(groups)) {
    const value = parseValue(field, values[field.key] ?? field.initial);
    const [head, child] = field.key.split(".") as [string, string | undefined];
    if (child === undefined) body[head] = value;
    else ((body[head] ??= {}) as Record<string, unknown>)[child] = value;
  }
  return body;
}
