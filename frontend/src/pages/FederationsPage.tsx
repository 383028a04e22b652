import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link } from "react-router";
import { api, errorMessage, unwrap } from "../api/client";
import { federationsQuery, keys } from "../api/queries";
import type { Federation, FederationCloned, FederationCreated, FederationSettings } from "../api/types";
import { CloneForm } from "../components/CloneForm";
import { CreatedNotice } from "../components/CreatedNotice";
import { CreateFederationForm } from "../components/CreateFederationForm";
import { Empty, ErrorNotice, Loading } from "../components/feedback";
import { StatusBadge } from "../components/StatusBadge";
import { formatAccuracy } from "../format";
import { useCan } from "../session/session";
import { useTitle } from "../useTitle";

export function FederationsPage() {
  const client = useQueryClient();
  const federations = useQuery(federationsQuery());
  const canCreate = useCan("federations.create");
  useTitle("Federations");
  const [creating, setCreating] = useState(false);
  const [cloning, setCloning] = useState<Federation | null>(null);
  const [created, setCreated] = useState<{
    federation: FederationCreated | FederationCloned;
    verb: string;
  } | null>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());

  const create = async (body: FederationSettings) => {
    const federation = await unwrap(api.POST("/api/v1/federations", { body }));
    setCreating(false);
    setCreated({ federation, verb: "Created" });
    await client.invalidateQueries({ queryKey: keys.federations });
  };

  const toggle = (id: string) =>
    setSelected((current) => {
      const next = new Set(current);
      if (!next.delete(id)) next.add(id);
      return next;
    });
  const compareIds = [...selected].filter((id) => federations.data?.items.some((f) => f.id === id));

  return (
    <>
      <div className="page-head">
        <h1>Federations</h1>
        <div className="actions">
          <Link
            className="button"
            to={
              compareIds.length ? `/compare?ids=${compareIds.map(encodeURIComponent).join(",")}` : "/compare"
            }
          >
            {compareIds.length ? `Compare selected (${compareIds.length})` : "Compare…"}
          </Link>
          {canCreate && (
            <button
              type="button"
              className="primary"
              aria-expanded={creating}
              aria-controls="create-panel"
              onClick={() => setCreating((open) => !open)}
            >
              New federation
            </button>
          )}
        </div>
      </div>

      {created && (
        <CreatedNotice created={created.federation} verb={created.verb} onDismiss={() => setCreated(null)} />
      )}
      {cloning && (
        <section className="panel" aria-labelledby="clone-title">
          <h2 id="clone-title">Clone {cloning.name}</h2>
          <CloneForm
            federation={cloning}
            onCancel={() => setCloning(null)}
            onCloned={(clone) => {
              setCloning(null);
              setCreated({ federation: clone, verb: "Cloned as" });
              void client.invalidateQueries({ queryKey: keys.federations });
            }}
          />
        </section>
      )}
      {creating && (
        <section id="create-panel" className="panel" aria-label="New federation">
          <CreateFederationForm onSubmit={create} onCancel={() => setCreating(false)} />
        </section>
      )}

      {federations.isPending ? (
        <Loading what="federations" />
      ) : federations.isError ? (
        <ErrorNotice
          error={federations.error}
          what="the federations"
          retry={() => void federations.refetch()}
        />
      ) : federations.data.items.length === 0 ? (
        <Empty>
          {canCreate ? (
            <p>
              No federations yet. Create one with <strong>New federation</strong>, or run{" "}
              <code>fedalign up</code> on the server for the digits demo.
            </p>
          ) : (
            <p>No federations that your organisation takes part in yet.</p>
          )}
        </Empty>
      ) : (
        <div className="table-wrap panel">
          <table>
            <caption className="visually-hidden">Federations</caption>
            <thead>
              <tr>
                <th scope="col">Compare</th>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col">Algorithm</th>
                <th scope="col">Rounds</th>
                <th scope="col">Target accuracy</th>
                <th scope="col">Discriminator</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {federations.data.items.map((federation) => (
                <FederationRow
                  key={federation.id}
                  federation={federation}
                  selected={selected.has(federation.id)}
                  onToggle={() => toggle(federation.id)}
                  onClone={() => {
                    setCreating(false);
                    setCloning(federation);
                  }}
                />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

interface RowProps {
  federation: Federation;
  selected: boolean;
  onToggle(): void;
  onClone(): void;
}

function FederationRow({ federation, selected, onToggle, onClone }: RowProps) {
  const client = useQueryClient();
  const canManage = useCan("federation.manage");
  const [confirming, setConfirming] = useState(false);

  const remove = useMutation({
    mutationFn: () =>
      unwrap(
        api.DELETE("/api/v1/federations/{federation_id}", {
          params: { path: { federation_id: federation.id } },
        }),
      ),
    onSuccess: () => client.invalidateQueries({ queryKey: keys.federations }),
  });

  const rounds = Number(federation.config.rounds ?? 0);
  const progress = federation.progress;
  const done = progress.rounds_done;
  const measuredIn = progress.round_of_metrics == null ? undefined : `Round ${progress.round_of_metrics}`;
  return (
    <tr>
      <td>
        <input
          type="checkbox"
          checked={selected}
          onChange={onToggle}
          aria-label={`Select ${federation.name} for comparison`}
        />
      </td>
      <th scope="row">
        <Link to={`/federations/${encodeURIComponent(federation.id)}`}>{federation.name}</Link>
      </th>
      <td>
        <StatusBadge status={federation.status} />
      </td>
      <td>{String(federation.config.algorithm ?? "")}</td>
      <td>
        <progress max={rounds || 1} value={done} aria-label={`${federation.name}: rounds done`} /> {done} /{" "}
        {rounds}
      </td>
      <td title={measuredIn}>{formatAccuracy(progress.target_acc)}</td>
      <td title={measuredIn}>{progress.disc_acc == null ? "—" : progress.disc_acc.toFixed(3)}</td>
      <td className="row-actions">
        {confirming ? (
          <span role="group" aria-label={`Delete ${federation.name}?`}>
            <span>Delete with its rounds and models?</span>{" "}
            <button
              type="button"
              className="danger"
              onClick={() => remove.mutate()}
              disabled={remove.isPending}
            >
              Confirm delete
            </button>{" "}
            <button type="button" autoFocus onClick={() => setConfirming(false)}>
              Keep
            </button>
          </span>
        ) : canManage ? (
          <>
            <button type="button" onClick={onClone} aria-label={`Clone ${federation.name}`}>
              Clone
            </button>{" "}
            <button
              type="button"
              onClick={() => setConfirming(true)}
              aria-label={`Delete ${federation.name}`}
            >
              Delete
            </button>
          </>
        ) : (
          <span className="muted">—</span>
        )}
        {remove.error && (
          <p className="field-error" role="alert">
            {errorMessage(remove.error)}
          </p>
        )}
      </td>
    </tr>
  );
}
