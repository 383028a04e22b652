import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render, screen, within } from "@testing-library/react";
import { MemoryRouter, Route, Routes } from "react-router";
import { describe, expect, it, vi } from "vitest";
import { keys } from "../src/api/queries";
import type { Checkpoint, Federation, Node, Operation } from "../src/api/types";
import { NO_TARGET_LABELS } from "../src/metrics/charts";
import { FederationPage } from "../src/pages/FederationPage";
import { OperationsContext } from "../src/session/session";
import { metricsResponse } from "./fixtures";

vi.mock("../src/charts/EChart", () => ({
  EChart: ({ option: _option, label, ...rest }: { option: unknown; label: string }) => (
    <div role="img" aria-label={label} {...rest} />
  ),
}));
// The stream has its own tests (liveChart.test.tsx); here the page only reads the cache.
vi.mock("../src/live/useFederationEvents", () => ({ useFederationEvents: () => "live" }));

function federation(overrides: Partial<Federation>): Federation {
  return {
    id: "fed-1",
    name: "digits",
    status: "finished",
    stall_reason: null,
    config: { algorithm: "fedalign", rounds: 3, publish_model: true },
    nodes: [],
    round: null,
    phase: null,
    progress: { rounds_done: 3, target_acc: 0.8, disc_acc: 0.52, round_of_metrics: 3 },
    model_published: false,
    initial_model: { ready: true, missing: [], sha256: null, size: null },
    created_at: "2026-11-25T03:00:00+00:00",
    updated_at: "2026-11-25T03:00:00+00:00",
    started_at: "2026-11-25T03:00:00+00:00",
    finished_at: "2026-11-25T04:00:00+00:00",
    ...overrides,
  };
}

// What GET /api/v1/session lists for a coordinator and for a viewer (backend/access.py).
const COORDINATOR: Operation[] = [
  "federations.list",
  "federations.create",
  "federation.read",
  "federation.nodes.read",
  "federation.model.read",
  "federation.control",
  "federation.manage",
  "federation.nodes.manage",
  "access_tokens.manage",
];
const VIEWER: Operation[] = [
  "federations.list",
  "federation.read",
  "federation.nodes.read",
  "federation.model.read",
];

function renderPage(
  fed: Federation,
  nodes: Node[] = [],
  checkpoints: Checkpoint[] = [],
  operations: Operation[] = COORDINATOR,
  // GET .../access: the role's operations on this federation (by default all those of the role).
  onFederation: Operation[] = operations.filter((o) => o.startsWith("federation.")),
) {
  // Everything is in the cache and fresh: the page makes no request.
  const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });
  client.setQueryData(keys.federation(fed.id), fed);
  client.setQueryData(keys.nodes(fed.id), { items: nodes });
  client.setQueryData(keys.rounds(fed.id), { items: [] });
  client.setQueryData(keys.metrics(fed.id), metricsResponse(3));
  client.setQueryData(keys.checkpoints(fed.id), { items: checkpoints });
  // What GET .../access answers: the role's operations on one federation.
  client.setQueryData(keys.access(fed.id), { operations: onFederation });
  render(
    <QueryClientProvider client={client}>
      <OperationsContext.Provider value={operations}>
        <MemoryRouter initialEntries={[`/federations/${fed.id}`]}>
          <Routes>
            <Route path="/federations/:federationId" element={<FederationPage />} />
          </Routes>
        </MemoryRouter>
      </OperationsContext.Provider>
    </QueryClientProvider>,
  );
  return screen.queryByRole("button", { name: "Download model" });
}

describe("what the page offers each role", () => {
  it("gives a coordinator the run controls and each node's token controls", () => {
    renderPage(federation({ status: "running" }), [node({ name: "alpha" })]);
    expect(screen.getByRole("group", { name: "Run controls" })).toBeVisible();
    expect(screen.getByRole("button", { name: "Rotate alpha's token" })).toBeVisible();
    expect(screen.getByRole("button", { name: "Revoke alpha's token" })).toBeVisible();
  });

  it("gives a viewer no control that changes anything, and still the model and the nodes", () => {
    renderPage(
      federation({ status: "created", model_published: true }),
      [node({ name: "alpha" })],
      [],
      VIEWER,
    );
    expect(screen.queryByRole("group", { name: "Run controls" })).toBeNull();
    expect(screen.queryByRole("group", { name: "Join token" })).toBeNull();
    expect(screen.queryByRole("button", { name: /token|Remove|Register/ })).toBeNull();
    expect(screen.getByRole("button", { name: "Download model" })).toBeEnabled();
    expect(screen.getByRole("row", { name: /alpha/ })).toBeVisible();
  });
});

describe("what the page offers on one federation", () => {
  it("offers a source organisation's viewer no model: the server says the model is the target's", () => {
    const onThisOne = VIEWER.filter((o) => o.startsWith("federation.") && o !== "federation.model.read");
    renderPage(federation({ model_published: true }), [node({ name: "alpha" })], [], VIEWER, onThisOne);
    expect(screen.queryByRole("button", { name: "Download model" })).toBeNull();
    expect(screen.getByRole("row", { name: /alpha/ })).toBeVisible();
  });
});

describe("the Download model button", () => {
  it("is enabled when the federation says its model is published", () => {
    expect(renderPage(federation({ model_published: true }))).toBeEnabled();
    expect(screen.getByText("The target's final model, as safetensors.")).toBeVisible();
  });

  it("stays disabled until then", () => {
    expect(renderPage(federation({ status: "running", round: null, model_published: false }))).toBeDisabled();
    expect(screen.getByText(/can be downloaded once the federation has finished/)).toBeVisible();
  });

  it("stays disabled, with a hint, when the federation does not publish its model", () => {
    const fed = federation({ config: { algorithm: "fedalign", rounds: 3, publish_model: false } });
    expect(renderPage(fed)).toBeDisabled();
    expect(screen.getByText(/^Not published: .*publish_model is off/)).toBeVisible();
  });
});

function node(overrides: Partial<Node>): Node {
  return {
    id: `node-${overrides.name ?? "alpha"}`,
    federation_id: "fed-1",
    name: "alpha",
    role: "source",
    organisation: null,
    dataset: "npz:/data/alpha.npz",
    mode: "rest",
    state: "finished",
    samples: { train: 40, val: 10, test: 10 },
    failure: null,
    last_seen: null,
    created_at: "2026-11-25T03:00:00+00:00",
    ...overrides,
  };
}

describe("the target accuracy chart", () => {
  it("says the run has no labelled evaluation split when the target's setup reported no test samples", () => {
    renderPage(federation({}), [
      node({ name: "omega", role: "target", samples: { train: 40, val: 10, test: 0 } }),
    ]);
    expect(screen.getByTestId("chart-target-acc-unavailable")).toHaveTextContent(NO_TARGET_LABELS);
    expect(screen.queryByTestId("chart-disc-acc-unavailable")).toBeNull();
  });

  it("waits for values as usual when the target has a labelled split, or before its setup", () => {
    renderPage(federation({}), [node({ name: "omega", role: "target" })]);
    expect(screen.queryByTestId("chart-target-acc-unavailable")).toBeNull();
  });
});

describe("the nodes table", () => {
  it("shows a failed node with its reason, and a recovered one's last failure muted", () => {
    const reason =
      "ManifestMismatch: tensor G.0.weight has shape [12, 8] in the federation, [24, 8] on this node";
    renderPage(federation({ status: "stalled", stall_reason: reason }), [
      node({ name: "beta", state: "failed", failure: reason }),
      node({ name: "alpha", state: "active", failure: "MemoryError: out of memory" }),
    ]);
    const beta = screen.getByRole("row", { name: /beta/ });
    expect(beta).toHaveTextContent("failed");
    expect(screen.getByTestId("node-failure-beta")).toHaveTextContent(reason);
    expect(screen.getByTestId("node-failure-alpha")).toHaveTextContent(
      "Last failure: MemoryError: out of memory",
    );
  });
});

describe("the experiment tracker runs", () => {
  it("name each run and how far it got, and a tracker that is down with its error", () => {
    renderPage(
      federation({
        trackers: [
          { tracker: "mlflow", run_id: "abc123", exported_round: 3, finished: true, error: null },
          { tracker: "tensorboard", run_id: null, exported_round: 0, finished: false, error: "disk full" },
        ],
      }),
    );
    const runs = screen.getByTestId("tracker-runs");
    expect(runs).toHaveTextContent("MLflow run abc123, rounds up to 3 (closed)");
    expect(runs).toHaveTextContent(
      "TensorBoard no run yet, rounds up to 0 · not reachable, retrying: disk full",
    );
  });

  it("are not shown for a federation that streams to none", () => {
    renderPage(federation({ trackers: [] }));
    expect(screen.queryByTestId("tracker-runs")).toBeNull();
  });
});

describe("the checkpoints", () => {
  const checkpoint = (round: number, acc: number, selected = false): Checkpoint => ({
    round,
    source_val_acc: acc,
    selected,
    sha256: "0".repeat(64),
    size: 100,
  });

  it("list each round's model to download, the selected one marked", () => {
    const config = { algorithm: "fedalign", rounds: 5, publish_model: true, checkpoint_every: 2 };
    renderPage(
      federation({ config }),
      [],
      [checkpoint(2, 0.61), checkpoint(4, 0.74, true), checkpoint(5, 0.7)],
    );
    const table = screen.getByTestId("checkpoints");
    const rows = within(table).getAllByRole("row").slice(1);
    expect(rows.map((r) => r.textContent)).toEqual([
      "261.0%Download round 2",
      "4 selected74.0%Download round 4",
      "570.0%Download round 5",
    ]);
    expect(within(table).getByRole("button", { name: "Download round 4" })).toBeEnabled();
  });

  it("are not shown for a federation without checkpoint_every", () => {
    renderPage(federation({}), [], [checkpoint(3, 0.5, true)]);
    expect(screen.queryByTestId("checkpoints")).toBeNull();
  });
});
