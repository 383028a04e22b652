/** Loading, error and empty states: each says what is happening and what to do. */
import type { ReactNode } from "react";
import { errorMessage } from "../api/client";

export function Loading({ what }: { what: string }) {
  return (
    <p className="muted" role="status">
      Loading {what}…
    </p>
  );
}

export function ErrorNotice({ error, retry, what }: { error: unknown; retry?: () => void; what?: string }) {
  return (
    <div className="notice error" role="alert">
      <p>
        {what ? `Could not load ${what}: ` : ""}
        {errorMessage(error)}
      </p>
      {retry && (
        <button type="button" onClick={retry}>
          Try again
        </button>
      )}
    </div>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="notice empty">{children}</div>;
}

/** Why the server refused a form's request, read out when it appears. */
export function SubmitFailure({ failure }: { failure: string | null }) {
  if (!failure) return null;
  return (
    <p className="notice error" role="alert">
      {failure}
    </p>
  );
}
