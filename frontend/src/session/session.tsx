/**
 * The browser session: an access token (or the admin token) is exchanged once for an HttpOnly cookie
 * (POST /session) and then forgotten; the CSRF token the exchange returns lives in memory (api/client.ts)
 * and is fetched again with GET /session after a reload, with the role and the operations it may perform:
 * the pages offer only those controls (the server decides, backend/access.py; this only hides what it
 * would refuse).
 */
import { useQueryClient } from "@tanstack/react-query";
import { createContext, type ReactNode, useCallback, useContext, useEffect, useMemo, useState } from "react";
import { ApiError, api, onUnauthorized, setCsrfToken, toApiError, unwrap } from "../api/client";
import type { Operation, SessionOut } from "../api/types";

export interface SignedIn {
  status: "signed-in";
  role: SessionOut["role"];
  organisation: string | null;
  operations: Operation[];
}

export type SessionState = { status: "checking" } | { status: "signed-out"; reason?: string } | SignedIn;

function signedIn(data: SessionOut): SignedIn {
  return {
    status: "signed-in",
    role: data.role,
    organisation: data.organisation ?? null,
    operations: data.operations,
  };
}

interface SessionApi {
  session: SessionState;
  /** Throws ApiError (401: wrong token). */
  signIn(token: string): Promise<void>;
  signOut(): Promise<void>;
}

const SessionContext = createContext<SessionApi | null>(null);
const NONE: readonly Operation[] = [];

export function SessionProvider({ children }: { children: ReactNode }) {
  const client = useQueryClient();
  const [session, setSession] = useState<SessionState>({ status: "checking" });

  const signedOut = useCallback(
    (reason?: string) => {
      setCsrfToken(null);
      client.clear(); // nothing of the last session's data stays on screen or in memory
      setSession({ status: "signed-out", reason });
    },
    [client],
  );

  useEffect(() => {
    let cancelled = false;
    api.GET("/api/v1/session").then(
      ({ data, error, response }) => {
        if (cancelled) return;
        if (data) {
          setCsrfToken(data.csrf_token);
          setSession(signedIn(data));
        } else if (response.status === 401) {
          setSession({ status: "signed-out" }); // no session yet, or it expired: the sign-in page says enough
        } else {
          setSession({ status: "signed-out", reason: toApiError(response.status, error).message });
        }
      },
      () =>
        !cancelled &&
        setSession({ status: "signed-out", reason: "The API cannot be reached; is it running?" }),
    );
    return () => {
      cancelled = true;
    };
  }, []);

  useEffect(() => {
    onUnauthorized(() => signedOut("Your session has ended; sign in again."));
    return () => onUnauthorized(null);
  }, [signedOut]);

  const signIn = useCallback(async (token: string) => {
    const data = await unwrap(api.POST("/api/v1/session", { body: { token } }));
    setCsrfToken(data.csrf_token);
    setSession(signedIn(data));
  }, []);

  const signOut = useCallback(async () => {
    try {
      await unwrap(api.DELETE("/api/v1/session"));
    } catch (error) {
      // Already signed out on the server is what we wanted; anything else is worth showing.
      if (!(error instanceof ApiError && error.status === 401)) throw error;
    }
    signedOut();
  }, [signedOut]);

  const value = useMemo(() => ({ session, signIn, signOut }), [session, signIn, signOut]);
  const operations = session.status === "signed-in" ? session.operations : NONE;
  return (
    <SessionContext.Provider value={value}>
      <OperationsContext.Provider value={operations}>{children}</OperationsContext.Provider>
    </SessionContext.Provider>
  );
}

export function useSession(): SessionApi {
  const value = useContext(SessionContext);
  if (!value) throw new Error("useSession needs a SessionProvider above it");
  return value;
}

/** The operations the signed-in role may perform; a context of its own, so that a page can be rendered
 * (in a test) with a role's operations and no session to fetch. */
export const OperationsContext = createContext<readonly Operation[]>([]);

/** Whether the signed-in role may perform `operation` (within its reach: a federation it sees). */
export function useCan(operation: Operation): boolean {
  return useContext(OperationsContext).includes(operation);
}
