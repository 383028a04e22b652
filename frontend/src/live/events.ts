/**
 * The federation event stream's messages (GET /federations/{id}/events, server-sent events): parsing,
 * and what each type means for the cached queries.
 */
import type { QueryKey } from "@tanstack/react-query";
import { downloadUrls, keys } from "../api/queries";
import { eventTypeValues } from "../api/schema";
import type { EventType } from "../api/types";
import type { MetricsUpdate } from "../metrics/series";

/** The SSE `event:` names the server sends: the backend's EventType, from the generated client. EventSource
 * only delivers named events to listeners registered for that name, so this list is also what the stream
 * subscribes to. */
export const EVENT_TYPES: readonly EventType[] = eventTypeValues;

export type { EventType };

const isEventType = (type: string): type is EventType => (EVENT_TYPES as readonly string[]).includes(type);

export interface LiveEvent {
  id: number;
  type: string;
  payload: Record<string, unknown>;
  createdAt: string;
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** A message's `data` (JSON `{id, type, payload, created_at}`), or null when it is not one. */
export function parseEvent(data: string): LiveEvent | null {
  let raw: unknown;
  try {
    raw = JSON.parse(data);
  } catch {
    return null;
  }
  if (
    !isRecord(raw) ||
    typeof raw.id !== "number" ||
    typeof raw.type !== "string" ||
    !isRecord(raw.payload)
  ) {
    return null;
  }
  return {
    id: raw.id,
    type: raw.type,
    payload: raw.payload,
    createdAt: typeof raw.created_at === "string" ? raw.created_at : "",
  };
}

/** A `metrics` event's values (`{round, node, metrics: {name: value}}`), or null for anything else. */
export function metricsUpdateOf(event: LiveEvent): MetricsUpdate | null {
  if (event.type !== "metrics") return null;
  const { round, node, metrics } = event.payload;
  if (typeof round !== "number" || !Number.isInteger(round) || !isRecord(metrics)) return null;
  if (node !== null && node !== undefined && typeof node !== "string") return null;
  const values: Record<string, number> = {};
  for (const [name, value] of Object.entries(metrics)) {
    if (typeof value === "number" && Number.isFinite(value)) values[name] = value;
  }
  return { round, node: node ?? null, metrics: values };
}

/**
 * The stream's URL, following on after event `after`: the metrics snapshot's `last_event_id` when it
 * first opens (so the history the snapshot holds is not replayed), the last event seen when it is
 * reopened. `after=0` (a federation without events yet) sends everything.
 */
export function eventStreamUrl(federationId: string, after: number): string {
  return `${downloadUrls.events(federationId)}?after=${after}`;
}

/**
 * Queries read separately from the metrics snapshot, possibly before it: events between their read and
 * the snapshot's `last_event_id` are not sent again, so they are refetched once when the stream opens.
 * Events after it mark them stale as usual (`staleQueries`).
 */
export function queriesBeforeSnapshot(federationId: string): QueryKey[] {
  return [
    keys.federation(federationId),
    keys.nodes(federationId),
    keys.rounds(federationId),
    keys.checkpoints(federationId),
  ];
}

/** Queries an event makes stale. Metrics points are not refetched: the event carries them. */
export function staleQueries(event: LiveEvent, federationId: string): QueryKey[] {
  const rounds = keys.rounds(federationId); // a prefix: the rounds list and every round's detail
  const federation = keys.federation(federationId);
  const nodes = keys.nodes(federationId);
  // A publish phase closing (a "phase" event) adds a checkpoint; a new source_val_acc may change the pick.
  const checkpoints = keys.checkpoints(federationId);
  // A type this dashboard does not know yet (a newer server): refetch the federation, to be safe.
  if (!isEventType(event.type)) return [federation];
  // Every EventType has its case: a new one fails to compile until it is given its queries.
  switch (event.type) {
    case "status":
      // The federation carries model_published, which turns true with the status "finished".
      return [federation, keys.federations, rounds, nodes, checkpoints];
    case "phase":
      return [federation, rounds, checkpoints];
    case "phase_closed":
    case "unmasking":
      return [federation, rounds];
    case "aggregation":
    case "aggregate":
    case "submission":
      return [rounds];
    case "step_done":
      return [rounds, nodes];
    case "step_failed":
      // The node shows the reason (and "failed" once it is out); the round shows the step.
      return [federation, rounds, nodes];
    case "initial_model":
      return [federation];
    case "metrics":
      return [federation, rounds];
    case "node_registered":
    case "node_removed":
      return [federation, nodes];
    case "public_key":
      return [nodes];
    case "privacy_warning":
      return [federation];
  }
}
