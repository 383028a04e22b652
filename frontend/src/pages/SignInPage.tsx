import { type FormEvent, useState } from "react";
import { ApiError, errorMessage } from "../api/client";
import { useSession } from "../session/session";

/** Exchanges a token (an access token of any role, or the admin token) for a session cookie. The token
 * lives only in this form's state and is cleared as soon as it has been sent. */
export function SignInPage({ reason }: { reason?: string }) {
  const { signIn } = useSession();
  const [token, setToken] = useState("");
  const [pending, setPending] = useState(false);
  const [failure, setFailure] = useState<string | null>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (!token.trim() || pending) return;
    setPending(true);
    setFailure(null);
    const sent = token.trim();
    setToken("");
    try {
      await signIn(sent);
    } catch (error) {
      setFailure(
        error instanceof ApiError && error.status === 401
          ? "That token is not valid for this server (mistyped, revoked, or from another server). Check it and try again."
          : errorMessage(error),
      );
      setPending(false);
    }
  };

  return (
    <main className="sign-in">
      <form onSubmit={submit} aria-labelledby="sign-in-title" className="panel">
        <h1 id="sign-in-title">Sign in to FedAlign</h1>
        {reason && <p className="notice">{reason}</p>}
        <div className="field">
          <label htmlFor="admin-token">Access token</label>
          <input
            id="admin-token"
            name="admin-token"
            type="password"
            autoComplete="current-password"
            required
            autoFocus
            value={token}
            onChange={(e) => setToken(e.target.value)}
            aria-invalid={failure ? true : undefined}
            aria-describedby={failure ? "sign-in-error" : "sign-in-hint"}
          />
          <small id="sign-in-hint" className="hint">
            Your access token (coordinator, owner or viewer), or the admin token that <code>fedalign up</code>{" "}
            and <code>fedalign serve</code> print where to find; the dashboard keeps a session cookie, not the
            token.
          </small>
        </div>
        {failure && (
          <p id="sign-in-error" className="notice error" role="alert">
            {failure}
          </p>
        )}
        <button type="submit" className="primary" disabled={pending || !token.trim()}>
          {pending ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </main>
  );
}
