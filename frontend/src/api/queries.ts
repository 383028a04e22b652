/** Query keys and query options for the API's reads, in one place so live events can invalidate them. */
import { queryOptions } from "@tanstack/react-query";
import { api, unwrap } from "./client";

export const keys = {
  federations: ["federations"] as const,
  // Not ["federation", id]: that would be a prefix of every key below, and invalidating it would refetch
  // them all (the metrics included, which the event stream keeps current instead).
  federation: (id: string) => ["federation", id, "detail"] as const,
  access: (id: string) => ["federation", id, "access"] as const,
  nodes: (id: string) => ["federation", id, "nodes"] as const,
  rounds: (id: string) => ["federation", id, "rounds"] as const,
  round: (id: string, n: number) => ["federation", id, "rounds", n] as const,
  metrics: (id: string) => ["federation", id, "metrics"] as const,
  checkpoints: (id: string) => ["federation", id, "checkpoints"] as const,
};

const path = (federation_id: string) => ({ params: { path: { federation_id } } });

export const federationsQuery = () =>
  queryOptions({
    queryKey: keys.federations,
    queryFn: ({ signal }) => unwrap(api.GET("/api/v1/federations", { signal })),
    // The list has no event stream of its own; a slow poll keeps statuses and progress current.
    refetchInterval: 5000,
  });

export const federationQuery = (id: string) =>
  queryOptions({
    queryKey: keys.federation(id),
    queryFn: ({ signal }) => unwrap(api.GET("/api/v1/federations/{federation_id}", { ...path(id), signal })),
  });

/** What the signed-in token may do on this federation: its role's operations, narrowed by the federation
 * (a viewer of a source's organisation reads no model), decided by the server's one access policy. */
export const federationAccessQuery = (id: string) =>
  queryOptions({
    queryKey: keys.access(id),
    queryFn: ({ signal }) =>
      unwrap(api.GET("/api/v1/federations/{federation_id}/access", { ...path(id), signal })),
  });

export const nodesQuery = (id: string) =>
  queryOptions({
    queryKey: keys.nodes(id),
    queryFn: ({ signal }) =>
      unwrap(api.GET("/api/v1/federations/{federation_id}/nodes", { ...path(id), signal })),
  });

export const roundsQuery = (id: string) =>
  queryOptions({
    queryKey: keys.rounds(id),
    queryFn: ({ signal }) =>
      unwrap(api.GET("/api/v1/federations/{federation_id}/rounds", { ...path(id), signal })),
  });

export const roundQuery = (id: string, round: number) =>
  queryOptions({
    queryKey: keys.round(id, round),
    queryFn: ({ signal }) =>
      unwrap(
        api.GET("/api/v1/federations/{federation_id}/rounds/{round_number}", {
          params: { path: { federation_id: id, round_number: round } },
          signal,
        }),
      ),
  });

export const metricsQuery = (id: string) =>
  queryOptions({
    queryKey: keys.metrics(id),
    queryFn: ({ signal }) =>
      unwrap(api.GET("/api/v1/federations/{federation_id}/metrics", { ...path(id), signal })),
    // Fetched once; from then on the event stream, opened after the snapshot's last_event_id, adds the
    // points (live/useFederationEvents.ts). A refetch would only race with the stream.
    staleTime: Infinity,
    refetchOnWindowFocus: false,
  });

export const checkpointsQuery = (id: string) =>
  queryOptions({
    queryKey: keys.checkpoints(id),
    queryFn: ({ signal }) =>
      unwrap(api.GET("/api/v1/federations/{federation_id}/checkpoints", { ...path(id), signal })),
  });

/** Same-origin URLs the browser downloads itself (the cookie authenticates them). */
export const downloadUrls = {
  // With its card in the file's metadata: what `fedalign predict` and `fedalign export` read.
  model: (id: string) => `/api/v1/federations/${encodeURIComponent(id)}/model?card=true`,
  checkpoint: (id: string, round: number) =>
    `/api/v1/federations/${encodeURIComponent(id)}/checkpoints/${round}?card=true`,
  metricsCsv: (id: string) => `/api/v1/federations/${encodeURIComponent(id)}/metrics.csv`,
  events: (id: string) => `/api/v1/federations/${encodeURIComponent(id)}/events`,
};
