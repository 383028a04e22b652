import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, errorMessage, unwrap } from "../api/client";
import { keys } from "../api/queries";
import type { Federation, FederationStatus } from "../api/types";

const ACTIONS = [
  { action: "start", label: "Start", when: ["created"] },
  { action: "pause", label: "Pause", when: ["running", "stalled"] },
  { action: "resume", label: "Resume", when: ["paused"] },
  { action: "cancel", label: "Cancel", when: ["created", "running", "paused", "stalled"] },
] as const satisfies readonly { action: string; label: string; when: readonly FederationStatus[] }[];

type Action = (typeof ACTIONS)[number]["action"];

/** Start / pause / resume / cancel (and, once finished, continue for more rounds), each enabled in the statuses the server accepts it in
 * (backend/services/federations.py); the server still has the last word (409). */
export function FederationControls({ federation }: { federation: Federation }) {
  const client = useQueryClient();
  const transition = useMutation({
    mutationFn: (action: Action) =>
      unwrap(
        api.POST(`/api/v1/federations/{federation_id}/${action}`, {
          params: { path: { federation_id: federation.id } },
        }),
      ),
    onSuccess: (updated) => {
      client.setQueryData(keys.federation(federation.id), updated);
      return client.invalidateQueries({ queryKey: keys.federations });
    },
  });

  return (
    <div className="controls" role="group" aria-label="Run controls">
      {ACTIONS.map(({ action, label, when }) => (
        <button
          key={action}
          type="button"
          className={action === "cancel" ? "danger" : action === "start" ? "primary" : undefined}
          disabled={transition.isPending || !(when as readonly string[]).includes(federation.status)}
          onClick={() => transition.mutate(action)}
        >
          {label}
        </button>
      ))}
      {federation.status === "finished" && <ContinueForm federation={federation} />}
      {transition.error && (
        <p className="field-error" role="alert">
          {errorMessage(transition.error)}
        </p>
      )}
    </div>
  );
}

/** A finished federation goes on for more rounds from where it ended (POST .../continue). */
function ContinueForm({ federation }: { federation: Federation }) {
  const client = useQueryClient();
  const [rounds, setRounds] = useState(10);
  const extend = useMutation({
    mutationFn: () =>
      unwrap(
        api.POST("/api/v1/federations/{federation_id}/continue", {
          params: { path: { federation_id: federation.id } },
          body: { rounds },
        }),
      ),
    onSuccess: (updated) => {
      client.setQueryData(keys.federation(federation.id), updated);
      return client.invalidateQueries({ queryKey: keys.federations });
    },
  });
  const valid = Number.isInteger(rounds) && rounds >= 1 && rounds <= 100_000;
  return (
    <form
      className="continue"
      onSubmit={(e) => {
        e.preventDefault();
        if (valid) extend.mutate();
      }}
    >
      <label>
        More rounds{" "}
        <input
          type="number"
          min={1}
          max={100000}
          value={Number.isNaN(rounds) ? "" : rounds}
          onChange={(e) => setRounds(e.target.valueAsNumber)}
        />
      </label>{" "}
      <button type="submit" disabled={extend.isPending || !valid}>
        Continue
      </button>
      {extend.error && (
        <p className="field-error" role="alert">
          {errorMessage(extend.error)}
        </p>
      )}
    </form>
  );
}
