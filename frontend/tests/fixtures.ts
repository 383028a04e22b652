import type { MetricSeriesList } from "../src/api/types";

/** A metrics response as GET /federations/{id}/metrics answers it: federation series first, then nodes. */
export function metricsResponse(rounds = 3, lastEventId = 30): MetricSeriesList {
  const points = (f: (r: number) => number) =>
    Array.from({ length: rounds }, (_, i) => ({ round: i + 1, value: f(i + 1) }));
  return {
    federation_id: "fed-1",
    series: [
      { name: "disc_acc", node: null, points: points((r) => 0.9 - r * 0.1) },
      { name: "disc_acc_source", node: null, points: points(() => 0.7) },
      { name: "disc_acc_target", node: null, points: points(() => 0.6) },
      { name: "disc_acc_fresh", node: null, points: points(() => 0.65).slice(0, -1) },
      { name: "target_acc", node: null, points: [] },
      { name: "disc_acc_own", node: "mnist", points: points(() => 0.8) },
      { name: "disc_acc_own", node: "mnistm", points: points(() => 0.55) },
      { name: "task_loss", node: "mnist", points: points((r) => 1 / r) },
    ],
    last_event_id: lastEventId,
  };
}
