import { describe, expect, it } from "vitest";
import type { MetricSeriesList } from "../src/api/types";
import {
  comparableMetrics,
  compareScale,
  compareTestId,
  flattenSettings,
  labelFreeChoice,
  settingDifferences,
  targetDataset,
} from "../src/metrics/compare";

const list = (...series: [string, string | null][]): MetricSeriesList => ({
  federation_id: "f",
  last_event_id: 0,
  series: series.map(([name, node]) => ({ name, node, points: [{ round: 1, value: 0.5 }] })),
});

describe("the metrics a comparison can draw", () => {
  it("lists every federation-level metric of any federation once, the defaults first", () => {
    const a = list(["disc_acc", null], ["task_loss", null], ["task_loss", "alpha"], ["pad", null]);
    const b = list(["target_acc", null], ["adv_weight", null], ["disc_acc", null]);
    expect(comparableMetrics([a, undefined, b])).toEqual([
      "target_acc",
      "disc_acc",
      "adv_weight",
      "pad",
      "task_loss",
    ]);
  });

  it("puts accuracies on [0, 1], the discriminator's with its aligned line, and fits the rest", () => {
    expect(compareScale("disc_acc_fresh")).toMatchObject({ min: 0, max: 1, reference: { value: 0.5 } });
    expect(compareScale("source_val_acc")).toEqual({ y: "accuracy", min: 0, max: 1 });
    expect(compareScale("task_loss")).toEqual({ y: "task_loss" });
    expect(compareTestId("target_acc")).toBe("chart-compare-target-acc");
  });
});

describe("the settings in which configs differ", () => {
  const recipe = {
    name: "recipe",
    algorithm: "fedalign",
    hyperparameters: { adv_weight: 0.1, lr: 0.01 },
    model: { input_shape: [1, 28, 28], options: {} },
    nodes: [{ name: "a", dataset: "digits:mnist" }],
  };

  it("flattens nested settings and lists by dotted path, empty tables as values", () => {
    expect(flattenSettings(recipe)).toEqual({
      name: "recipe",
      algorithm: "fedalign",
      "hyperparameters.adv_weight": "0.1",
      "hyperparameters.lr": "0.01",
      "model.input_shape.0": "1",
      "model.input_shape.1": "28",
      "model.input_shape.2": "28",
      "model.options": "{}",
      "nodes.0.name": "a",
      "nodes.0.dataset": "digits:mnist",
    });
  });

  it("keeps only what differs, with each federation's value, and a key one of them lacks", () => {
    const ablation = { ...recipe, name: "ablation", hyperparameters: { adv_weight: 0, lr: 0.01 } };
    delete (ablation as { nodes?: unknown }).nodes; // not started: no nodes yet
    expect(settingDifferences([recipe, ablation])).toEqual([
      { key: "hyperparameters.adv_weight", values: ["0.1", "0"] },
      { key: "name", values: ["recipe", "ablation"] },
      { key: "nodes.0.dataset", values: ["digits:mnist", undefined] },
      { key: "nodes.0.name", values: ["a", undefined] },
    ]);
    expect(settingDifferences([recipe, { ...recipe }])).toEqual([]);
  });
});

describe("which run to deploy without a label", () => {
  const config = (name: string, normalization: string) => ({ name, model: { normalization } });
  const same = [undefined, undefined, undefined];
  const information = (...values: number[]): MetricSeriesList => ({
    federation_id: "f",
    last_event_id: 0,
    series: [
      { name: "target_information", node: null, points: values.map((value, i) => ({ round: i + 1, value })) },
      { name: "target_information", node: "t", points: [{ round: 1, value: 9 }] },
    ],
  });

  it("names the run with the highest last information, the first on a tie, and counts what differs", () => {
    const configs = [config("bn", "batch"), config("gn", "group"), config("gn-again", "group")];
    // The last point counts, not the best one: the deployed model is the last round's.
    const lists = [information(1.9, 1.2), information(1.0, 1.5), information(1.5)];
    expect(labelFreeChoice(configs, same, lists)).toEqual({
      kind: "chosen",
      chosen: 1,
      values: [1.2, 1.5, 1.5],
      differing: 1,
    });
    const other = { ...config("lr", "group"), hyperparameters: { lr: 0.1 } };
    const two = [information(1.0), information(0.9)];
    expect(labelFreeChoice([config("bn", "batch"), other], same, two)).toMatchObject({
      chosen: 0,
      differing: 2,
    });
  });

  it("waits for every run to report, and refuses to compare runs of different targets", () => {
    const configs = [config("bn", "batch"), config("gn", "group")];
    const waiting = { kind: "waiting", missing: [1] };
    expect(labelFreeChoice(configs, same, [information(1.2), undefined])).toEqual(waiting);
    expect(labelFreeChoice(configs, same, [information(1.2), information()])).toEqual(waiting);
    // A target not known (a run with no node registered yet) does not count as a different one.
    const lists = [information(1.2), information(1.0)];
    expect(labelFreeChoice(configs, ["npz:t.npz", undefined], lists)).toMatchObject({ kind: "chosen" });
    expect(labelFreeChoice(configs, ["npz:t.npz", "digits:mnistm"], lists)).toEqual({
      kind: "different-targets",
      targets: ["npz:t.npz", "digits:mnistm"],
    });
  });

  it("reads the target's data from its registered node, else from the config's nodes", () => {
    const registered = [
      { role: "source", dataset: "npz:a.npz" },
      { role: "target", dataset: "npz:served.npz" },
    ];
    const inFile = { nodes: [{ name: "t", role: "target", dataset: "npz:file.npz" }] };
    expect(targetDataset(registered, inFile)).toBe("npz:served.npz");
    expect(targetDataset([], inFile)).toBe("npz:file.npz");
    expect(targetDataset(undefined, { nodes: "none" })).toBeUndefined();
  });
});
