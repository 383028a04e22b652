"""Named sets of hyperparameter values, so that a recipe has one name and is written once.

A config chooses one with ``preset = "<name>"`` in its hyperparameters (the TOML file's ``[hyperparameters]``
table, or the API's ``hyperparameters`` object); every hyperparameter it sets explicitly overrides the
preset's value. The preset is expanded when the config is validated (`fedalign.config.Hyperparameters`),
and the validated config keeps the preset's name beside the values it gave.

Each preset says where its values came from. Plain data: the config imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRESETS: dict[str, Mapping[str, Any]] = {
    # The recipe that works on the digits benchmark (DESIGN.md, "What the measurements say now"; README,
    # "Accuracy"): `bench/accuracy.py`'s `fedalign_im_lambda0.1`, which scored 81.4 on average over the
    # four targets, 10.7 points above FedAvg, at 1500 steps, seeds 0 and 1 (with lambda 0.3 for syn,
    # chosen on source-only validation tasks; the benchmark ran every method with lr_schedule "dann").
    # Its parts, fixed from the method's own analysis before the runs, never tuned on target labels:
    "digits_recipe": {
        # One extractor step per round and one discriminator step per exchange, so that averaging the
        # copies of D is one centralised step on the balanced union of the domains (DESIGN.md, "A measured
        # warning"); sources restart from the aggregates instead of drifting apart between rounds.
        "local_steps": 1,
        "disc_steps": 1,
        "disc_exchanges": 1,
        "source_extractor": "restart",
        "target_extractor": "average",
        # lambda ramps up as in DANN (Ganin et al.) to a small ceiling, chosen on source-only validation
        # tasks (bench.select): larger ones cost the sources' own accuracy.
        "adv_schedule": "dann",
        "adv_weight": 0.1,
        # The target's confident pseudo-labels, and information maximisation (SHOT, Liang et al., ICML
        # 2020, weights 1 and 1 as in that paper): confident predictions spread over the classes.
        "pseudo_label_threshold": 0.95,
        "entropy_weight": 1.0,
        "diversity_weight": 1.0,
    },
}


def expand(hyperparameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """`hyperparameters` over the values of the preset it names (unchanged when it names none, or a name
    that is not a preset: the schema's validation then says which names are)."""
    name = hyperparameters.get("preset")
    if not isinstance(name, str) or name not in PRESETS:
        return hyperparameters
    return {**PRESETS[name], **hyperparameters}
