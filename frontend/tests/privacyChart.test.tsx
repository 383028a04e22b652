import { render, screen } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import type { Federation, MetricSeriesList } from "../src/api/types";
import { PrivacyChart } from "../src/components/PrivacyChart";
import { metricsResponse } from "./fixtures";

vi.mock("../src/charts/EChart", () => ({
  EChart: ({ option: _option, label, ...rest }: { option: unknown; label: string }) => (
    <div role="img" aria-label={label} {...rest} />
  ),
}));

function federation(privacy: Record<string, unknown> | undefined, overrides: Partial<Federation> = {}) {
  return {
    id: "fed-1",
    name: "digits",
    status: "running",
    stall_reason: null,
    config: { algorithm: "fedalign", rounds: 3, ...(privacy ? { privacy } : {}) },
    ...overrides,
  } as Federation;
}

const epsilon: MetricSeriesList = {
  ...metricsResponse(2),
  series: [
    {
      name: "dp_epsilon",
      node: "mnist",
      points: [
        { round: 1, value: 1.5 },
        { round: 2, value: 2.5 },
      ],
    },
    {
      name: "dp_epsilon",
      node: "mnistm",
      points: [
        { round: 1, value: 1.2 },
        { round: 2, value: 1.9 },
      ],
    },
  ],
};

describe("the privacy panel", () => {
  it("is absent when differential privacy is off", () => {
    const { container } = render(<PrivacyChart federation={federation(undefined)} metrics={epsilon} />);
    expect(container).toBeEmptyDOMElement();
  });

  it("charts each node's epsilon and names the nodes past a budget under warn", () => {
    const privacy = { noise_multiplier: 1, delta: 1e-5, epsilon_budget: 2, budget_action: "warn" };
    render(<PrivacyChart federation={federation(privacy)} metrics={epsilon} />);
    expect(screen.getByRole("img", { name: "Privacy budget spent (ε at δ = 1e−5) per round" })).toBeVisible();
    expect(screen.getByTestId("privacy-over-budget")).toHaveTextContent(
      "Over the budget of ε = 2: mnist (ε 2.50 in round 2).",
    );
  });

  it("says why a run its budget stopped ended", () => {
    const privacy = { noise_multiplier: 1, epsilon_budget: 2, budget_action: "stop" };
    const reason = "privacy budget: round 3 would take mnist to 3.1, above the budget of 2";
    render(
      <PrivacyChart
        federation={federation(privacy, { status: "finished", stall_reason: reason })}
        metrics={epsilon}
      />,
    );
    expect(screen.getByTestId("privacy-stopped")).toHaveTextContent(`Stopped early: ${reason}`);
  });
});
