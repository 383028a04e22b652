/**
 * The typed API client (openapi-fetch over the generated `paths`), with the two things every request
 * needs from the session: the CSRF header on state-changing requests, and notice of a 401 so the app can
 * fall back to the sign-in page when the cookie expires.
 */
import createClient, { type Middleware } from "openapi-fetch";
import type { paths } from "./schema";

/** The API's error body: `{"error": {"code", "message", "details"}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown = null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

// Kept in memory only (never in storage): a page reload asks GET /session for it again.
let csrfToken: string | null = null;
let unauthorizedListener: (() => void) | null = null;

export function setCsrfToken(token: string | null): void {
  csrfToken = token;
}

/** Called on any 401 outside the session endpoint itself: the cookie expired or was revoked. */
export function onUnauthorized(listener: (() => void) | null): void {
  unauthorizedListener = listener;
}

const SESSION_PATH = "/api/v1/session";

/** Signing in from another tab replaces the cookie, and with it the CSRF token this tab holds: fetch the
 * current one, so that the user's next try succeeds. */
async function refreshCsrfToken(): Promise<void> {
  const response = await fetch(SESSION_PATH, { credentials: "same-origin" });
  if (response.ok) csrfToken = ((await response.json()) as { csrf_token: string }).csrf_token;
}

const session: Middleware = {
  onRequest({ request }) {
    if (!SAFE_METHODS.has(request.method) && csrfToken) request.headers.set("X-CSRF-Token", csrfToken);
    return request;
  },
  async onResponse({ request, response }) {
    const path = new URL(request.url).pathname;
    if (response.status === 401 && path !== SESSION_PATH) unauthorizedListener?.();
    if (response.status === 403) {
      const body = (await response
        .clone()
        .json()
        .catch(() => null)) as { error?: { code?: string } } | null;
      if (body?.error?.code === "csrf") {
        await refreshCsrfToken().catch(() => undefined);
        return Response.json(
          {
            error: {
              code: "csrf",
              message: "This tab's session was renewed elsewhere; it is updated now: try again.",
            },
          },
          { status: 403 },
        );
      }
    }
    return response;
  },
};

export const api = createClient<paths>({
  baseUrl: typeof window === "undefined" ? "http://localhost" : window.location.origin,
  credentials: "same-origin",
});
api.use(session);

/** Turns an error answer into an ApiError, whether or not its body has the API's shape. */
export function toApiError(status: number, body: unknown): ApiError {
  const error = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } } | null)?.error;
  if (error && typeof error.message === "string") {
    return new ApiError(
      status,
      typeof error.code === "string" ? error.code : "error",
      error.message,
      error.details,
    );
  }
  return new ApiError(
    status,
    "http_error",
    `the server answered ${status}; try again, or check the server's log`,
  );
}

/** For query functions: the data of a successful answer, or a thrown ApiError. */
export async function unwrap<T>(
  call: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  let result: { data?: T; error?: unknown; response: Response };
  try {
    result = await call;
  } catch {
    throw new ApiError(0, "network", "the API cannot be reached; check that the server is running");
  }
  if (!result.response.ok) throw toApiError(result.response.status, result.error);
  return result.data as T;
}

/** A message to show for any thrown value. */
export function errorMessage(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error) return error.message;
  return "something went wrong; try again";
}
