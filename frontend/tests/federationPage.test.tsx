import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render, screen } from "@testing-library/react";
import { MemoryRouter, Route, Routes } from "react-router";
import { describe, expect, it, vi } from "vitest";
import { keys } from "../src/api/queries";
import type { Federation } from "../src/api/types";
import { FederationPage } from "../src/pages/FederationPage";
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
    created_at: "2026-11-25T03:00:00+00:00",
    updated_at: "2026-11-25T03:00:00+00:00",
    started_at: "2026-11-25T03:00:00+00:00",
    finished_at: "2026-11-25T04:00:00+00:00",
    ...overrides,
  };
}

function renderPage(fed: Federation) {
  // Everything is in the cache and fresh: the page makes no request.
  const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });
  client.setQueryData(keys.federation(fed.id), fed);
  client.setQueryData(keys.nodes(fed.id), { items: [] });
  client.setQueryData(keys.rounds(fed.id), { items: [] });
  client.setQueryData(keys.metrics(fed.id), metricsResponse(3));
  render(
    <QueryClientProvider client={client}>
      <MemoryRouter initialEntries={[`/federations/${fed.id}`]}>
        <Routes>
          <Route path="/federations/:federationId" element={<FederationPage />} />
        </Routes>
      </MemoryRouter>
    </QueryClientProvider>,
  );
  return screen.getByRole("button", { name: "Download model" });
}

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
