"""Which layers of an architecture Opacus cannot make private: the config's check before it accepts a
federation with differential privacy.

`fedalign.config` imports this module only when privacy is on (it loads torch, and Opacus when called);
nothing here imports the config back at run time, so the check closes no import cycle.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from fedalign.models import ModelShape, build

if TYPE_CHECKING:
    from fedalign.config import FederationConfig

# Which layers Opacus supports does not depend on their sizes: the check builds each architecture small, so
# that a config with absurd sizes (the API validates what anyone sends) costs nothing here.
_PROBE_INPUTS: dict[str, tuple[int, ...]] = {"digits_cnn": (1, 28, 28), "mlp": (4,)}


@functools.lru_cache(maxsize=64)
def _unsupported(architecture: str, shape: ModelShape) -> tuple[str, ...]:
    from opacus.validators import ModuleValidator

    try:
        models = build(architecture, shape, seed=0)
    except ValueError:
        return ()  # a shape that does not fit the architecture fails with its own message where it is built
    return tuple(
        f"{name}: {error}"
        for name, module in models.items()
        for error in ModuleValidator.validate(module, strict=False)
    )


def unsupported_layers(config: FederationConfig) -> list[str]:
    """What Opacus cannot make private in the federation's models (empty when it can)."""
    m = config.model
    shape = ModelShape(
        _PROBE_INPUTS.get(config.architecture, tuple(m.input_shape)),
        num_classes=2,
        hidden=4,
        conditional=config.hyperparameters.conditional,
        normalization=m.normalization,
    )
    return list(_unsupported(config.architecture, shape))
