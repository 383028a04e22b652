"""Which layers of an architecture Opacus cannot make private: the config's check before it accepts a
federation with differential privacy (built-in architectures), and the node's when it builds a plug-in's.

`fedalign.config` imports this module only when privacy is on (it loads torch, and Opacus when called);
nothing here imports the config back at run time, so the check closes no import cycle.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fedalign.architecture_names import BUILTINS
from fedalign.architectures import ArchitectureContext
from fedalign.models import ModelSet, meta_models

if TYPE_CHECKING:
    from fedalign.config import FederationConfig

# Which layers Opacus supports does not depend on their sizes: the check builds each architecture small (on
# the meta device), so that a config with absurd sizes (the API validates what anyone sends) costs nothing.
_PROBE_INPUTS: dict[str, tuple[int, ...]] = {
    "digits_cnn": (1, 28, 28),
    "mlp": (4,),
    "resnet18": (3, 32, 32),
    "resnet50": (3, 32, 32),
    "mobilenet_v3_small": (3, 32, 32),
}


def unsupported_in(models: ModelSet) -> list[str]:
    """What Opacus cannot make private in `models` (empty when it can)."""
    from opacus.validators import ModuleValidator

    return [
        f"{name}: {error}"
        for name, module in models.items()
        for error in ModuleValidator.validate(module, strict=False)
    ]


@functools.lru_cache(maxsize=64)
def _unsupported(architecture: str, context: ArchitectureContext) -> tuple[str, ...]:
    try:
        models = meta_models(architecture, context)
    except ValueError:
        return ()  # a shape that does not fit the architecture fails with its own message where it is built
    return tuple(unsupported_in(models))


def unsupported_layers(config: FederationConfig) -> list[str]:
    """What Opacus cannot make private in the federation's models (empty when it can).

    Only built-in architectures are checked here: the config is validated where a plug-in's code may not
    be installed (the server never imports it); a node checks a plug-in's models when it builds them.
    """
    if config.architecture not in BUILTINS:
        return []
    m = config.model
    context = ArchitectureContext(
        _PROBE_INPUTS.get(config.architecture, tuple(m.input_shape)),
        num_classes=2,
        hidden=4,
        conditional=config.hyperparameters.conditional,
        normalization=m.normalization,
    )
    return list(_unsupported(config.architecture, context))
