"""The architecture plug-in contract: what a factory receives, what it returns, and how a name finds it.

An architecture is a *factory*: a callable that takes an `ArchitectureContext` (the federation's model
settings) and returns an `Architecture`: the feature extractor G, the task model T, optionally the domain
discriminator D, and a version string. `resolve` finds a factory by name:

- a built-in name (`BUILTINS`: ``digits_cnn``, ``mlp``, ``resnet18``, ``resnet50``, ``mobilenet_v3_small``);
- an import path ``"package.module:factory"`` (the module must be importable where the models are built);
- a name that an installed package registers in the entry-point group ``fedalign.architectures``.

`build_architecture` calls the factory and checks what it returned: nn.Module types, G's output a batch of
feature vectors (N, F), T mapping F features to ``num_classes`` logits, a supplied D mapping its inputs to
one logit. Without a D from the factory, FedAlign builds one on G's feature size F (F x num_classes inputs
with ``conditional``). Every failure is an `ArchitectureError` that names the factory and what was wrong.

Nothing here runs on the server for a plug-in: the server never imports a user's code; it validates
uploads against the manifest of the initial parameters that the federation's creator built (DESIGN.md 2).
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedalign.architecture_names import BUILTINS, ENTRY_POINT_GROUP

if TYPE_CHECKING:
    from fedalign.config import FederationConfig

# "package.module:attribute" (the attribute may be dotted: "module:Class.method").
_IMPORT_PATH = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][\w.]*)$")

# The batch of the probes that find G's feature size and check T and D (two: BatchNorm refuses one).
_PROBE_BATCH = 2


class ArchitectureError(ValueError):
    """An architecture that cannot be found or built, or whose models break the contract."""


@dataclass(frozen=True)
class ArchitectureContext:
    """What a factory knows about the federation's models: the config's ``[model]`` table, and whether D is
    class-conditional.

    Attributes:
        input_shape: one input without the batch dimension: (channels, height, width) for images, (length,)
            for vectors.
        num_classes: the classes T predicts.
        options: the config's free-form ``model.options`` table (JSON scalars, lists and tables), for the
            factory's own settings.
        hidden: a width hint (the built-in mlp's hidden layers, the default D's hidden layer).
        normalization: ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm, per example: what differential
            privacy needs); `norm` builds the right layer.
        conditional: D reads G's features times T's class probabilities (CDAN), so F x num_classes inputs.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    # Not hashed (a dict is not hashable; equal contexts still hash alike): contexts key caches.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    hidden: int = 128
    normalization: str = "batch"
    conditional: bool = False

    @classmethod
    def of(cls, config: FederationConfig) -> ArchitectureContext:
        """The context of a federation's models."""
        m = config.model
        return cls(
            input_shape=tuple(m.input_shape),
            num_classes=m.num_classes,
            options=copy.deepcopy(m.options),
            hidden=m.hidden,
            normalization=m.normalization,
            conditional=config.hyperparameters.conditional,
        )

    def norm(self, channels: int, spatial: bool) -> nn.Module:
        """G's normalisation layer over `channels` features (of images when `spatial`)."""
        if self.normalization == "batch":
            return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
        if self.normalization == "group":
            # Images: groups of channels as in Wu and He (ECCV 2018), 8 groups here as the channel counts
            # are small; vectors: one group, i.e. layer normalisation over the features.
            return nn.GroupNorm(math.gcd(8, channels) if spatial else 1, channels)
        raise ValueError(f"unknown normalization {self.normalization!r}; expected 'batch' or 'group'")

    def disc_inputs(self, feature_dim: int) -> int:
        """The width of D's input for G's feature size."""
        return feature_dim * self.num_classes if self.conditional else feature_dim


@dataclass
class Architecture:
    """What a factory returns.

    Attributes:
        G: the feature extractor: a batch of inputs (N, *input_shape) to a batch of features (N, F).
        T: the task model: (N, F) features to (N, num_classes) logits.
        D: optional domain discriminator: (N, F) features (N, F x num_classes with ``conditional``) to (N, 1)
            logits. Left out, FedAlign builds a two-layer perceptron of width ``hidden``.
        version: the architecture's version, compared at every node's setup with the federation's: change
            it whenever the factory builds different layers, so a node with an old copy stops, saying why.
    """

    G: nn.Module
    T: nn.Module
    D: nn.Module | None = None
    version: str = "1"


Factory = Callable[[ArchitectureContext], Architecture]


def _import_path(path: str) -> Factory:
    match = _IMPORT_PATH.match(path)
    if not match:
        raise ArchitectureError(
            f"architecture {path!r} is not an import path; expected 'package.module:factory'"
        )
    module_name, attribute = match.groups()
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ArchitectureError(
                f"architecture {path!r}: module {module_name!r} cannot be imported ({exc}); install the "
                "package that holds it on this machine, or put its folder on PYTHONPATH"
            ) from exc
        raise ArchitectureError(f"architecture {path!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised while it was imported
        raise ArchitectureError(
            f"architecture {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ArchitectureError(
                f"architecture {path!r}: module {module_name!r} has no attribute {attribute!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ArchitectureError(
            f"architecture {path!r}: {attribute!r} is a {type(target).__name__}, not a callable factory "
            "(a function that takes an ArchitectureContext and returns an Architecture)"
        )
    return target


def registered() -> dict[str, str]:
    """Names installed packages register in the entry-point group ``fedalign.architectures`` -> target."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(name: str) -> Factory:
    """The factory of a built-in name, an import path ``"package.module:factory"`` or a registered name."""
    if name in BUILTINS:
        return _import_path(BUILTINS[name])
    if ":" in name:
        return _import_path(name)
    plugins = registered()
    if name in plugins:
        try:
            return _import_path(plugins[name])
        except ArchitectureError as exc:
            raise ArchitectureError(f"architecture {name!r} (entry point {plugins[name]!r}): {exc}") from exc
    known = sorted(BUILTINS) + sorted(n for n in plugins if n not in BUILTINS)
    raise ArchitectureError(
        f"unknown architecture {name!r}; expected one of {', '.join(known)}, an import path "
        f"'package.module:factory', or a name an installed package registers in the entry-point group "
        f"{ENTRY_POINT_GROUP!r}"
    )


def default_discriminator(context: ArchitectureContext, feature_dim: int) -> nn.Module:
    """D when the factory supplies none: a two-layer perceptron on G's features, one logit out.

    No normalisation layer on purpose: every node trains its copy of D on batches of one domain only, and
    batch normalisation inside D would normalise away exactly the shift D must see.
    """
    width = context.hidden
    return nn.Sequential(nn.Linear(context.disc_inputs(feature_dim), width), nn.ReLU(), nn.Linear(width, 1))


def build_architecture(name: str, context: ArchitectureContext) -> Architecture:
    """Resolve `name`, call its factory, check what it returned, and add D when the factory supplies none.

    The probes that check the models run on the meta device (or, for a layer the meta device cannot run, on
    a copy of the model in eval mode): they draw no random number and touch no BatchNorm statistic, so a
    seeded build gives the same values with or without them.
    """
    factory = resolve(name)
    label = f"architecture {name!r}"
    try:
        built = factory(context)
    except ArchitectureError:
        raise
    except Exception as exc:
        raise ArchitectureError(f"{label}: its factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(built, Architecture):
        raise ArchitectureError(
            f"{label}: its factory returned a {type(built).__name__}; expected "
            "fedalign.architectures.Architecture(G=..., T=..., D=None, version='1')"
        )
    for part in ("G", "T"):
        module = getattr(built, part)
        if not isinstance(module, nn.Module):
            raise ArchitectureError(
                f"{label}: {part} is a {type(module).__name__}; expected a torch.nn.Module"
            )
    if built.D is not None and not isinstance(built.D, nn.Module):
        raise ArchitectureError(
            f"{label}: D is a {type(built.D).__name__}; expected a torch.nn.Module or None"
        )
    if not isinstance(built.version, str) or not built.version or len(built.version) > 100:
        raise ArchitectureError(f"{label}: version must be a non-empty string of at most 100 characters")
    features = feature_size(label, built.G, context.input_shape)
    _check_output(label, "T", built.T, (features,), (context.num_classes,), "G's features")
    if built.D is None:
        D = default_discriminator(context, features)
    else:
        inputs = context.disc_inputs(features)
        _check_output(
            label,
            "D",
            built.D,
            (inputs,),
            (1,),
            "inputs (G's features" + (" x class probabilities)" if context.conditional else ")"),
        )
        D = built.D
    return Architecture(G=built.G, T=built.T, D=D, version=built.version)


def feature_size(label: str, G: nn.Module, input_shape: tuple[int, ...]) -> int:
    """F, the width of G's features, from a probe; G must map (N, *input_shape) to (N, F)."""
    out = _probe(label, "G", G, input_shape)
    if not isinstance(out, torch.Tensor):
        raise ArchitectureError(
            f"{label}: G returned a {type(out).__name__}; expected one tensor of features (N, F)"
        )
    if out.dim() != 2 or out.shape[0] != _PROBE_BATCH:
        raise ArchitectureError(
            f"{label}: G maps inputs of shape {[_PROBE_BATCH, *input_shape]} to shape {list(out.shape)}; "
            "expected (N, F) feature vectors: end G with global pooling and a flatten (e.g. nn.Flatten())"
        )
    return int(out.shape[1])


def _check_output(
    label: str, part: str, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], what: str
) -> None:
    out = _probe(label, part, module, in_shape)
    expected = [_PROBE_BATCH, *out_shape]
    if not isinstance(out, torch.Tensor) or list(out.shape) != expected:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ArchitectureError(
            f"{label}: {part} maps {what} of shape {[_PROBE_BATCH, *in_shape]} to {got}; expected {expected}"
        )


def _probe(label: str, part: str, module: nn.Module, in_shape: tuple[int, ...]) -> Any:
    """`module` run on a zero batch, without changing it or drawing from the global random generator."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            return _meta_forward(module, in_shape)
        except Exception:  # an operation without a meta kernel: run a copy for real
            pass
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            return _meta_forward_or_raise(label, part, module, in_shape)
        probe = copy.deepcopy(module).eval()
        device = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
        try:
            return probe(torch.zeros((_PROBE_BATCH, *in_shape), device=device))
        except Exception as exc:
            raise ArchitectureError(
                f"{label}: {part} fails on a batch of shape {[_PROBE_BATCH, *in_shape]}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _meta_forward(module: nn.Module, in_shape: tuple[int, ...]) -> Any:
    # The module's own tensors replaced by meta ones for the call: nothing is computed or allocated, and
    # BatchNorm's running statistics (meta copies) are left as they are.
    tensors = {n: t.to("meta") for n, t in (*module.named_parameters(), *module.named_buffers())}
    x = torch.zeros((_PROBE_BATCH, *in_shape), device="meta")
    return torch.func.functional_call(module, tensors, (x,), tie_weights=True, strict=False)


def _meta_forward_or_raise(label: str, part: str, module: nn.Module, in_shape: tuple[int, ...]) -> Any:
    try:
        return _meta_forward(module, in_shape)
    except Exception as exc:
        raise ArchitectureError(
            f"{label}: {part} fails on a batch of shape {[_PROBE_BATCH, *in_shape]}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
