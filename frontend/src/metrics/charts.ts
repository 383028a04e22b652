/**
 * Which series each chart of a federation draws. The names are the method's metric names (docs/method.md,
 * "Metrics"); the first federation-level line of a chart is the one its `data-points` counts.
 */
import type { MetricSeriesList, Node } from "../api/types";
import type { ChartLine, ChartScale } from "../charts/lineOption";
import { findSeries, nodesReporting } from "./series";

export interface ChartSpec {
  title: string;
  testId: string;
  scale: ChartScale;
  /** Federation-level series and their legend labels. */
  federation: readonly { name: string; label: string }[];
  /** A per-node series drawn once for each node that reports it. */
  perNode?: { name: string; label: (node: string) => string };
  help: string;
  /** Drawn only when the target has a labelled evaluation split (target_acc is measured on it alone). */
  needsTargetLabels?: boolean;
}

/** What the target-accuracy chart says for a run whose target has no labelled evaluation split. */
export const NO_TARGET_LABELS =
  "No labelled evaluation split: the target has no labelled test data, so this run has no target accuracy " +
  "(every other metric still works).";

const ACCURACY = { y: "accuracy", min: 0, max: 1 } as const;

export const FEDERATION_CHARTS: readonly ChartSpec[] = [
  {
    title: "Discriminator accuracy",
    testId: "chart-disc-acc",
    scale: { ...ACCURACY, reference: { value: 0.5, label: "aligned (0.5)" } },
    federation: [
      { name: "disc_acc", label: "balanced" },
      { name: "disc_acc_source", label: "on sources" },
      { name: "disc_acc_target", label: "on target" },
      { name: "disc_acc_fresh", label: "fresh" },
    ],
    perNode: { name: "disc_acc_own", label: (node) => `${node} (own)` },
    help:
      "0.5 balanced means the discriminator cannot tell the domains apart; read it with its parts. Fresh: the " +
      "next round's discriminator on the same features. Own: on each node's own features.",
  },
  {
    title: "Adversarial weight λ",
    testId: "chart-adv-weight",
    scale: { y: "λ", min: 0 },
    federation: [{ name: "adv_weight", label: "λ" }],
    help:
      "The adversarial term's weight in each evaluated round, under its schedule: 0 means nothing is " +
      "aligned to the discriminator, whatever its accuracy.",
  },
  {
    title: "Proxy A-distance",
    testId: "chart-pad",
    scale: { y: "PAD", reference: { value: 0, label: "indistinguishable (0)" } },
    federation: [{ name: "pad", label: "proxy A-distance" }],
    help: "2(2·acc − 1) of the fresh discriminator accuracy: 0 or below, indistinguishable; 2, fully separable.",
  },
  {
    title: "Task loss",
    testId: "chart-task-loss",
    scale: { y: "loss" },
    federation: [{ name: "task_loss", label: "federation" }],
    perNode: { name: "task_loss", label: (node) => node },
    help: "The sources' classification loss.",
  },
  {
    title: "Adversarial loss",
    testId: "chart-adv-loss",
    scale: { y: "loss" },
    federation: [{ name: "adv_loss", label: "federation" }],
    perNode: { name: "adv_loss", label: (node) => node },
    help: "Each extractor's loss against the averaged discriminator.",
  },
  {
    title: "Source validation accuracy",
    testId: "chart-source-val-acc",
    scale: ACCURACY,
    federation: [{ name: "source_val_acc", label: "sources" }],
    perNode: { name: "source_val_acc", label: (node) => node },
    help: "Accuracy on the sources' held-out labelled data.",
  },
  {
    title: "Target accuracy",
    testId: "chart-target-acc",
    scale: ACCURACY,
    federation: [{ name: "target_acc", label: "target" }],
    help: "On the target's labelled test split, read for reporting only: no step uses target labels.",
    needsTargetLabels: true,
  },
  {
    title: "Target predictions (label-free)",
    testId: "chart-target-label-free",
    scale: { y: "nats", min: 0 },
    federation: [
      { name: "target_information", label: "information" },
      { name: "target_class_balance", label: "class balance" },
    ],
    help:
      "The target's model on the target's own unlabelled training data, no label read: class balance (0 when " +
      "every sample falls into one class, a collapse) minus the mean entropy is the information. Compare two " +
      "runs on the same target by it, higher first; a model can still be confidently wrong.",
  },
];

/** The lines a chart draws from the series list; series with no points yet are left out. */
export function chartLines(spec: ChartSpec, list: MetricSeriesList | undefined): ChartLine[] {
  const lines: ChartLine[] = spec.federation.map((f) => ({
    label: f.label,
    points: findSeries(list, f.name)?.points ?? [],
  }));
  if (spec.perNode) {
    const { name, label } = spec.perNode;
    for (const node of nodesReporting(list, name)) {
      lines.push({ label: label(node), points: findSeries(list, name, node)?.points ?? [] });
    }
  }
  return lines.filter((line) => line.points.length > 0);
}

/** Rounds plotted for the chart's first federation-level series (for `data-points`). */
export function plottedRounds(spec: ChartSpec, list: MetricSeriesList | undefined): number {
  const first = spec.federation[0];
  return first ? (findSeries(list, first.name)?.points.length ?? 0) : 0;
}

/**
 * Whether the federation's target has a labelled evaluation split, as its setup reported (the sample count
 * of its test split); undefined before the target's setup.
 */
export function targetHasLabels(nodes: readonly Node[] | undefined): boolean | undefined {
  const samples = nodes?.find((node) => node.role === "target")?.samples;
  if (!samples || samples.test === undefined) return undefined;
  return samples.test > 0;
}
