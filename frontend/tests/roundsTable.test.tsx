import { render, screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import type { RoundSummary } from "../src/api/types";
import { leftOutText, RoundsTable } from "../src/components/RoundsTable";

const round = (n: number, left_out: RoundSummary["left_out"]): RoundSummary => ({
  round: n,
  state: "done",
  phases: ["disc1", "adapt", "eval"],
  open_phase: null,
  metrics: { disc_acc: 0.6 },
  left_out,
});

describe("the rounds table's left-out column", () => {
  it("groups the phases each node was left out of and keeps the reasons", () => {
    const r = round(2, [
      { phase: "disc1", nodes: ["beta"], reason: "deadline passed without beta" },
      { phase: "adapt", nodes: ["beta", "gamma"], reason: "deadline passed without beta, gamma" },
    ]);
    expect(leftOutText(r)).toEqual({
      text: "beta (disc1, adapt); gamma (adapt)",
      reasons: "disc1: deadline passed without beta\nadapt: deadline passed without beta, gamma",
    });
  });

  it("shows the left-out nodes of a round, and a dash where every node took part", () => {
    render(
      <RoundsTable
        rounds={[round(1, []), round(2, [{ phase: "eval", nodes: ["beta"], reason: "deadline passed" }])]}
      />,
    );
    const cell = screen.getByTestId("left-out-2");
    expect(cell).toHaveTextContent("beta (eval)");
    expect(cell).toHaveAttribute("title", "eval: deadline passed");
    expect(screen.queryByTestId("left-out-1")).toBeNull();
  });
});
