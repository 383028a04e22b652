"""The metrics of a federation: what a node may report, and the federation-level formulas (DESIGN.md 1).

A node reports scalars of its own steps (`REPORTED_METRICS`, the only names that may leave it besides
parameters and sample counts); the protocol combines them per round into the federation's metrics:

* ``disc_acc``: accuracy of the round's D_all on held-out features of the round's adapted extractors,
  balanced over the two labels: 0.5 x (accuracy on pooled source features, weighted by held-out sample
  count) + 0.5 x (accuracy on target features), with its parts ``disc_acc_source`` and ``disc_acc_target``.
* ``disc_acc_fresh`` (and its parts): the same, measured by the *next* round's D_all on those features
  before they adapt again (reported against the round it measures); ``pad``, the proxy A-distance
  2 (1 - 2 err) with err = 1 - ``disc_acc_fresh``.
* ``source_val_acc`` and ``task_loss``: the sources', weighted by validation sample count; ``target_acc``:
  the target's, on its labelled evaluation split when it has one; ``adv_loss``: the mean over nodes.
* ``target_information`` and ``target_class_balance``: the target's label-free scores of its model's
  predictions on its own unlabelled training split (`fedalign.label_free`; a fixed sample of at most
  ``LIVE_EXAMPLES`` of it): information (class balance minus mean entropy) compares two runs on the same
  target without a label; class balance 0 is a collapse.
* ``adv_weight``: lambda, the adversarial term's weight in that round under its schedule (``fedalign``
  only; 0 means the discriminator trains but no extractor is pushed towards it), so that a chart of the
  discriminator's accuracy can say whether alignment was being asked for at all.

Pure arithmetic on the reported values: the backend's schemas import the names without torch.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedalign.config import FederationConfig
from fedalign.schedules import scheduled_adv_weight

# The target's label-free scores (information, then class balance), federation-level as the target reports
# them.
TARGET_LABEL_FREE = ("target_information", "target_class_balance")
# Every scalar a node may report with a step: the privacy guarantee's list of what leaves a node besides
# parameters and sample counts. The server refuses any other name, and a step that produced one fails on its
# node (`fedalign.node.NodeRuntime.run`).
REPORTED_METRICS = frozenset(
    {
        "disc_loss",  # training D on the node's own features (steps.train_discriminator)
        "disc_train_acc",
        "task_loss",  # source adaptation (steps.adapt_source)
        "adv_loss",  # source and target adaptation
        "entropy",  # target adaptation's unlabelled terms (steps.adapt_target)
        "diversity",
        "pseudo_label_loss",
        "pseudo_label_rate",
        "fresh_disc_acc_own",  # the next round's D_all on this round's features, before adapting
        "disc_acc_own",  # evaluation (steps.discriminator_accuracy)
        "disc_n",
        "disc_eval_loss",
        "source_val_acc",  # evaluation on the sources' labelled validation split
        "val_task_loss",
        "target_acc",  # the target's labelled test split, read for reporting only
        *TARGET_LABEL_FREE,  # label-free scores of the target's predictions (steps.target_label_free)
        "dp_epsilon",  # differential privacy: epsilon spent so far at the federation's delta (its accountant)
    }
)


def _weighted(values: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total > 0 else None


def _disc_parts(
    config: FederationConfig, node_metrics: Mapping[str, Mapping[str, float]], key: str
) -> tuple[float, float] | None:
    """Source-side (pooled, by held-out sample count) and target-side accuracy of D_all."""
    target = config.target.name
    src = [(m[key], m.get("disc_n", 1.0)) for n, m in node_metrics.items() if n != target and key in m]
    tgt = node_metrics.get(target, {}).get(key)
    acc_source = _weighted(src)
    if acc_source is None or tgt is None:
        return None
    return acc_source, tgt


def round_metrics(
    config: FederationConfig,
    node_metrics: Mapping[str, Mapping[str, float]],
    samples: Mapping[str, Mapping[str, int]],
    round_: int,
) -> dict[str, float]:
    """Round `round_`'s federation-level metrics from what each node reported (DESIGN.md section 1)."""
    out: dict[str, float] = {}
    if config.algorithm == "fedalign":
        out["adv_weight"] = scheduled_adv_weight(config.hyperparameters, round_, config.rounds)
    parts = _disc_parts(config, node_metrics, "disc_acc_own")
    if parts:
        out["disc_acc_source"], out["disc_acc_target"] = parts
        out["disc_acc"] = 0.5 * (parts[0] + parts[1])
    target = config.target.name
    for name in ("target_acc", *TARGET_LABEL_FREE):
        if name in node_metrics.get(target, {}):
            out[name] = node_metrics[target][name]
    sources = [n.name for n in config.sources]
    for name in ("source_val_acc", "task_loss"):
        value = _weighted(
            [
                (node_metrics[n][name], samples.get(n, {}).get("val", 1))
                for n in sources
                if name in node_metrics.get(n, {})
            ]
        )
        if value is not None:
            out[name] = value
    adv = [m["adv_loss"] for m in node_metrics.values() if "adv_loss" in m]
    if adv:
        out["adv_loss"] = sum(adv) / len(adv)
    return out


def fresh_metrics(
    config: FederationConfig,
    node_metrics: Mapping[str, Mapping[str, float]],
    samples: Mapping[str, Mapping[str, int]],
) -> dict[str, float]:
    """`disc_acc_fresh` and proxy A-distance of the previous round, measured by this round's D_all."""
    parts = _disc_parts(config, node_metrics, "fresh_disc_acc_own")
    if not parts:
        return {}
    acc = 0.5 * (parts[0] + parts[1])
    return {
        "disc_acc_fresh": acc,
        "disc_acc_fresh_source": parts[0],
        "disc_acc_fresh_target": parts[1],
        "pad": 2.0 * (1.0 - 2.0 * (1.0 - acc)),
    }


def settled_round(open_round: int, finished: bool, last_round: int) -> int:
    """The last round whose metrics can no longer change, with `open_round` the round in progress.

    A round's fresh-discriminator metrics (`fresh_metrics`) are recorded during the next round's adapt
    phase, so while round R runs, round R - 1 may still gain metrics and R - 2 is the last settled one.
    """
    return last_round if finished else max(0, open_round - 2)


def selected_checkpoint(source_val_acc: Mapping[int, float | None]) -> int | None:
    """Of the checkpoints (round -> the sources' validation accuracy that round), the one to use: the best
    source validation accuracy, the later round on a tie; the last one when none was measured. No target
    label takes part: the sources' validation splits are labelled, the target's test split is never read.
    """
    if not source_val_acc:
        return None
    measured = [(value, round_) for round_, value in source_val_acc.items() if value is not None]
    return max(measured)[1] if measured else max(source_val_acc)
