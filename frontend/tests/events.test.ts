import { describe, expect, it } from "vitest";
import openapi from "../openapi.json";
import { keys } from "../src/api/queries";
import {
  EVENT_TYPES,
  eventStreamUrl,
  metricsUpdateOf,
  parseEvent,
  queriesBeforeSnapshot,
  staleQueries,
} from "../src/live/events";

const message = (type: string, payload: unknown, id = 7) =>
  JSON.stringify({ id, type, payload, created_at: "2026-11-25T03:00:00+00:00" });

describe("parsing an event's data", () => {
  it("reads id, type, payload and time", () => {
    expect(parseEvent(message("phase", { round: 2, phase: "disc" }))).toEqual({
      id: 7,
      type: "phase",
      payload: { round: 2, phase: "disc" },
      createdAt: "2026-11-25T03:00:00+00:00",
    });
  });

  it("rejects what is not an event", () => {
    expect(parseEvent("not json")).toBeNull();
    expect(parseEvent(JSON.stringify({ type: "phase", payload: {} }))).toBeNull();
    expect(parseEvent(JSON.stringify({ id: 1, type: "phase", payload: [] }))).toBeNull();
  });
});

describe("a metrics event's values", () => {
  it("are the round, the node (null: the federation's own) and the numeric metrics", () => {
    const event = parseEvent(
      message("metrics", { round: 3, node: null, metrics: { disc_acc: 0.61, pad: 0.44 } }),
    )!;
    expect(metricsUpdateOf(event)).toEqual({ round: 3, node: null, metrics: { disc_acc: 0.61, pad: 0.44 } });
    const ofNode = parseEvent(message("metrics", { round: 3, node: "syn", metrics: { task_loss: 0.2 } }))!;
    expect(metricsUpdateOf(ofNode)).toEqual({ round: 3, node: "syn", metrics: { task_loss: 0.2 } });
  });

  it("skip values that are not finite numbers, and malformed payloads", () => {
    const event = parseEvent(
      message("metrics", { round: 1, node: null, metrics: { a: 1, b: "x", c: null } }),
    )!;
    expect(metricsUpdateOf(event)!.metrics).toEqual({ a: 1 });
    expect(metricsUpdateOf(parseEvent(message("metrics", { round: "1", metrics: {} }))!)).toBeNull();
    expect(metricsUpdateOf(parseEvent(message("phase", { round: 1 }))!)).toBeNull();
  });
});

describe("the types the stream listens to", () => {
  it("are every type of the backend's EventType, as the OpenAPI document declares it", () => {
    expect([...EVENT_TYPES]).toEqual(openapi.components.schemas.EventType.enum);
    expect(EVENT_TYPES).toEqual(expect.arrayContaining(["unmasking", "privacy_warning", "public_key"]));
  });

  it("each make some query stale", () => {
    for (const type of EVENT_TYPES) {
      expect(staleQueries(parseEvent(message(type, {}))!, "f").length).toBeGreaterThan(0);
    }
  });
});

describe("queries an event makes stale", () => {
  it("never include the metrics, which events update in place", () => {
    for (const type of ["metrics", "status", "phase", "step_done", "node_registered", "something_new"]) {
      const stale = staleQueries(parseEvent(message(type, {}))!, "f").map((k) => JSON.stringify(k));
      expect(stale).not.toContain(JSON.stringify(keys.metrics("f")));
      expect(stale.length).toBeGreaterThan(0);
    }
  });

  it("include the rounds for step and phase events and the nodes for registrations", () => {
    const of = (type: string) => staleQueries(parseEvent(message(type, {}))!, "f");
    expect(of("step_done")).toContainEqual(keys.rounds("f"));
    expect(of("phase_closed")).toContainEqual(keys.rounds("f"));
    expect(of("node_removed")).toContainEqual(keys.nodes("f"));
    expect(of("status")).toContainEqual(keys.federations);
  });

  it("include the checkpoints when a phase opens (a publish phase has closed) and when the run ends", () => {
    const of = (type: string) => staleQueries(parseEvent(message(type, {}))!, "f");
    expect(of("phase")).toContainEqual(keys.checkpoints("f"));
    expect(of("status")).toContainEqual(keys.checkpoints("f"));
  });
});

describe("the stream's URL", () => {
  it("follows on after the metrics snapshot's last_event_id", () => {
    expect(eventStreamUrl("fed-1", 42)).toBe("/api/v1/federations/fed-1/events?after=42");
    expect(eventStreamUrl("a b", 0)).toBe("/api/v1/federations/a%20b/events?after=0");
  });

  it("comes with a refetch of the queries read apart from the snapshot", () => {
    expect(queriesBeforeSnapshot("f")).toEqual([
      keys.federation("f"),
      keys.nodes("f"),
      keys.rounds("f"),
      keys.checkpoints("f"),
    ]);
    expect(queriesBeforeSnapshot("f")).not.toContainEqual(keys.metrics("f"));
  });
});
