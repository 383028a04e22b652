/**
 * The request-body JSON schemas of the committed OpenAPI document, so that forms take their defaults,
 * bounds and descriptions from the backend's own models (fedalign/config.py) instead of copies.
 */
// The named import lets the bundler keep only `components`, not the document's much larger `paths`.
import { components } from "../../openapi.json";

export interface JsonSchema {
  type?: string;
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  /** Suggested values (the form offers them in a list; others are allowed). */
  examples?: unknown[];
  anyOf?: JsonSchema[];
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  $ref?: string;
}

const schemas = (components as unknown as { schemas: Record<string, JsonSchema> }).schemas;

/** A named schema of the document (e.g. "FederationSettings"), or an error naming what is missing. */
export function componentSchema(name: string): JsonSchema {
  const schema = schemas[name];
  if (!schema) throw new Error(`openapi.json has no schema ${name}; run npm run gen:api`);
  return schema;
}

/** Follows a `$ref` to `#/components/schemas/...`, keeping the referring schema's own default. */
export function resolveRef(schema: JsonSchema): JsonSchema {
  if (!schema.$ref) return schema;
  const { $ref, ...rest } = schema;
  return { ...componentSchema($ref.replace("#/components/schemas/", "")), ...rest };
}
