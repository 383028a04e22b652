import { useState } from "react";
import { createBrowserRouter, NavLink, Outlet, RouterProvider } from "react-router";
import { errorMessage } from "./api/client";
import { FederationsPage } from "./pages/FederationsPage";
import { NotFoundPage } from "./pages/NotFoundPage";
import { SignInPage } from "./pages/SignInPage";
import { useSession } from "./session/session";

/** Every page needs the session; without one the sign-in form takes the page's place, so the address
 * the user opened is still there after signing in. */
function Layout() {
  const { session, signOut } = useSession();
  const [failure, setFailure] = useState<string | null>(null);
  if (session.status === "checking")
    return (
      <p className="muted centered" role="status">
        Checking your session…
      </p>
    );
  if (session.status === "signed-out") return <SignInPage reason={session.reason} />;
  return (
    <>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="top-bar">
        <span className="brand">FedAlign</span>
        <nav aria-label="Main">
          <NavLink to="/" end>
            Federations
          </NavLink>
          <NavLink to="/compare">Compare</NavLink>
        </nav>
        <span className="muted" data-testid="signed-in-as">
          {session.role}
          {session.organisation ? ` · ${session.organisation}` : ""}
        </span>
        <button type="button" onClick={() => signOut().catch((e: unknown) => setFailure(errorMessage(e)))}>
          Sign out
        </button>
      </header>
      {failure && (
        <p className="notice error" role="alert">
          {failure}
        </p>
      )}
      <main id="main">
        <Outlet />
      </main>
    </>
  );
}

const router = createBrowserRouter([
  {
    element: <Layout />,
    // Shown while a lazily loaded page arrives on a first visit straight to it.
    hydrateFallbackElement: (
      <p className="muted centered" role="status">
        Loading…
      </p>
    ),
    children: [
      { index: true, element: <FederationsPage /> },
      // The chart pages load on first visit: ECharts is most of the bundle, and sign-in and the list need none of it.
      {
        path: "federations/:federationId",
        lazy: () => import("./pages/FederationPage").then((m) => ({ Component: m.FederationPage })),
      },
      {
        path: "compare",
        lazy: () => import("./pages/ComparePage").then((m) => ({ Component: m.ComparePage })),
      },
      { path: "*", element: <NotFoundPage /> },
    ],
  },
]);

export function App() {
  return <RouterProvider router={router} />;
}
