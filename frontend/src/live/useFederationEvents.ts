import { type QueryKey, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { keys } from "../api/queries";
import type { MetricSeriesList } from "../api/types";
import { applyMetricsUpdates, type MetricsUpdate } from "../metrics/series";
import {
  EVENT_TYPES,
  eventStreamUrl,
  metricsUpdateOf,
  parseEvent,
  queriesBeforeSnapshot,
  staleQueries,
} from "./events";

export type StreamState = "connecting" | "live" | "reconnecting" | "stopped";

// Events come in bursts (a replay after reconnecting, a phase closing on every node at once); applying
// them in one batch per interval renders the charts once per burst and still within a second.
const FLUSH_MS = 200;
// When the browser gives up on a stream (an error answer rather than a dropped connection), try again
// after this long, resuming after the last event seen.
const RETRY_MS = 5000;

/**
 * Follows a federation's live events once `after` is known: the `last_event_id` of the metrics snapshot
 * in the cache (undefined: not loaded yet, no stream). The stream starts after that event, so the history
 * the snapshot already holds is not replayed. `metrics` events add their points to the cached metrics
 * directly; other events mark the queries they affect stale. EventSource resumes after a dropped
 * connection with Last-Event-ID on its own; when the browser gives up, the stream is reopened with
 * `?after=<last id seen>`. A round sent again (the snapshot and an event can both hold it) replaces its
 * point (`applyMetricsUpdates`).
 */
export function useFederationEvents(federationId: string, after: number | undefined): StreamState {
  const client = useQueryClient();
  const [state, setState] = useState<StreamState>("connecting");

  useEffect(() => {
    if (after === undefined) return;
    let source: EventSource | null = null;
    let lastId = after;
    let flushTimer: ReturnType<typeof setTimeout> | undefined;
    let retryTimer: ReturnType<typeof setTimeout> | undefined;
    let updates: MetricsUpdate[] = [];
    const stale = new Map<string, QueryKey>();

    const flush = () => {
      flushTimer = undefined;
      if (updates.length) {
        const batch = updates;
        updates = [];
        client.setQueryData<MetricSeriesList>(keys.metrics(federationId), (list) =>
          list ? applyMetricsUpdates(list, batch) : list,
        );
      }
      for (const queryKey of stale.values()) void client.invalidateQueries({ queryKey });
      stale.clear();
    };

    const onMessage = (message: MessageEvent<string>) => {
      const event = parseEvent(message.data);
      if (!event) return;
      lastId = event.id;
      const update = metricsUpdateOf(event);
      if (update) updates.push(update);
      for (const key of staleQueries(event, federationId)) stale.set(JSON.stringify(key), key);
      flushTimer ??= setTimeout(flush, FLUSH_MS);
    };

    const connect = () => {
      source = new EventSource(eventStreamUrl(federationId, lastId));
      source.onopen = () => setState("live");
      source.onerror = () => {
        if (source?.readyState === EventSource.CLOSED) {
          setState("stopped");
          // A 401 here means the session ended; a plain query notices and signs the page out.
          void client.invalidateQueries({ queryKey: keys.federation(federationId) });
          retryTimer = setTimeout(connect, RETRY_MS);
        } else {
          setState("reconnecting");
        }
      };
      for (const type of EVENT_TYPES) source.addEventListener(type, onMessage);
    };

    // Events between those queries' reads and the snapshot are not sent; refetch them once.
    for (const queryKey of queriesBeforeSnapshot(federationId)) void client.invalidateQueries({ queryKey });
    connect();
    return () => {
      source?.close();
      clearTimeout(retryTimer);
      clearTimeout(flushTimer);
      setState("connecting");
    };
  }, [client, federationId, after]);

  return state;
}
