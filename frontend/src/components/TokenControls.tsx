import { useMutation } from "@tanstack/react-query";
import { useState } from "react";
import { api, errorMessage, unwrap } from "../api/client";
import { SecretOnce } from "./SecretOnce";

/** Rotate or revoke the federation's join token. A rotated token is shown once; the old one stops working
 * at once, as a revoked one does (until it is rotated again). */
export function JoinTokenControls({ federationId }: { federationId: string }) {
  const [token, setToken] = useState<string | null>(null);
  const [revoked, setRevoked] = useState(false);
  const path = { params: { path: { federation_id: federationId } } };
  const rotate = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/federations/{federation_id}/join-token", path)),
    onSuccess: (rotated) => {
      setRevoked(false);
      setToken(rotated.join_token);
    },
  });
  const revoke = useMutation({
    mutationFn: () => unwrap(api.DELETE("/api/v1/federations/{federation_id}/join-token", path)),
    onSuccess: () => {
      setToken(null);
      setRevoked(true);
    },
  });
  const error = rotate.error ?? revoke.error;
  return (
    <div className="actions" role="group" aria-label="Join token">
      <button type="button" onClick={() => rotate.mutate()} disabled={rotate.isPending || revoke.isPending}>
        Rotate join token
      </button>
      <button
        type="button"
        className="danger"
        onClick={() => revoke.mutate()}
        disabled={rotate.isPending || revoke.isPending}
      >
        Revoke join token
      </button>
      {token && <SecretOnce label="New join token" value={token} testId="rotated-join-token" />}
      {revoked && (
        <p className="hint" role="status">
          The join token is revoked: no node registers with it any more. Rotate it to hand out a new one.
        </p>
      )}
      {error && (
        <p className="field-error" role="alert">
          {errorMessage(error)}
        </p>
      )}
    </div>
  );
}

/** Rotate or revoke one node's token: the node's old token stops working at once. */
export function NodeTokenControls({ federationId, name }: { federationId: string; name: string }) {
  const [token, setToken] = useState<string | null>(null);
  const [revoked, setRevoked] = useState(false);
  const path = { params: { path: { federation_id: federationId, name } } };
  const rotate = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/federations/{federation_id}/nodes/{name}/token", path)),
    onSuccess: (rotated) => {
      setRevoked(false);
      setToken(rotated.token);
    },
  });
  const revoke = useMutation({
    mutationFn: () => unwrap(api.DELETE("/api/v1/federations/{federation_id}/nodes/{name}/token", path)),
    onSuccess: () => {
      setToken(null);
      setRevoked(true);
    },
  });
  const busy = rotate.isPending || revoke.isPending;
  const error = rotate.error ?? revoke.error;
  return (
    <>
      <button
        type="button"
        onClick={() => rotate.mutate()}
        disabled={busy}
        aria-label={`Rotate ${name}'s token`}
      >
        Rotate token
      </button>{" "}
      <button
        type="button"
        onClick={() => revoke.mutate()}
        disabled={busy}
        aria-label={`Revoke ${name}'s token`}
      >
        Revoke token
      </button>
      {token && <SecretOnce label={`${name}'s new token`} value={token} testId={`rotated-token-${name}`} />}
      {revoked && <p className="hint">Revoked: the node is locked out until its token is rotated.</p>}
      {error && (
        <p className="field-error" role="alert">
          {errorMessage(error)}
        </p>
      )}
    </>
  );
}
