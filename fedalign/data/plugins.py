"""Dataset plug-ins: ``python:package.module:loader[?key=value&...]``, a user's code that reads any format.

The contract (public, documented in docs/byo-data.md):

- ``loader`` is a callable taking one `LoaderContext` (the node's role, the federation's model input shape,
  number of classes and preprocessing settings, and the spec's ``?key=value`` options) and returning a dict
  ``{"train": Dataset, "val": Dataset | None, "test": Dataset | None}`` ("val" and "test" may be left out).
- Each value is a map-style dataset (``len(ds)`` and ``ds[i]`` for ``0 <= i < len(ds)``, e.g. a
  ``torch.utils.data.Dataset``), read lazily a batch at a time. Item ``i`` is ``x`` (unlabelled) or
  ``(x, y)`` (labelled): ``x`` a floating-point tensor (or NumPy array) of the federation's
  ``model.input_shape``, already preprocessed (``LoaderContext.preprocess`` applies the resize and
  normalisation; augmentation of training batches is FedAlign's); ``y`` an integer class index in
  ``0..num_classes-1``.
- "train" is required; a source's must be labelled. Without "val", 15% of "train" is drawn (fixed seed) as
  the validation split. "test" is the labelled evaluation split (a target's ``target_acc``); without it
  there is none.

Items are checked when the data are loaded (the first `CHECKED_AT_LOAD` of each split) and again whenever
one is read, and every error names the spec, the split and the item's index.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch

from fedalign.config import Preprocessing
from fedalign.data.core import UNLABELLED, DatasetError, NodeData, Split
from fedalign.data.preprocessing import ImageTransform
from fedalign.data.splits import SPLIT_FRACTIONS, SPLIT_SEED

SCHEME = "python"
SPLIT_NAMES = ("train", "val", "test")
# Items of each split checked when the data are loaded (every item is checked again when it is read).
CHECKED_AT_LOAD = 8
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_LOADER_PATH = re.compile(rf"^({_IDENTIFIER}(?:\.{_IDENTIFIER})*):({_IDENTIFIER})$")
FORM = "python:package.module:loader[?key=value&...]"


@dataclass(frozen=True)
class LoaderContext:
    """What a dataset loader is told about the federation it loads a node's data for.

    ``role``: "source" or "target" (None when the data are loaded outside a federation); ``input_shape`` and
    ``num_classes``: the federation's model (None outside a federation), which every item must fit;
    ``preprocessing``: the federation's ``[preprocessing]`` settings; ``options``: the spec's ``?key=value``
    pairs, e.g. ``{"path": "/data/site-a.csv"}``.
    """

    role: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    spec: str = ""

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """The federation's resize and per-channel normalisation of an image (C, H, W) or a batch
        (N, C, H, W), float in [0, 1]; the image unchanged when none is set."""
        transform = ImageTransform.of(self.preprocessing)
        return image if transform is None else transform(image)


Loader = Callable[[LoaderContext], Mapping[str, Any]]


def parse_plugin_argument(argument: str, spec: str) -> tuple[str, str, dict[str, str]]:
    """``package.module:loader[?key=value&...]`` -> (module, attribute, options)."""
    path, _, query = argument.partition("?")
    match = _LOADER_PATH.match(path)
    if match is None:
        raise DatasetError(
            f"dataset spec {spec!r} does not name a loader; expected {FORM}, e.g. "
            f"'python:my_datasets.csv:load?path=/data/a.csv'"
        )
    options: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise DatasetError(
                f"dataset spec {spec!r} has options {query!r} that are not key=value pairs joined by '&' "
                f"({exc}); percent-encode '&', '=' and '%' inside a value"
            ) from exc
        for key, value in pairs:
            if key in options:
                raise DatasetError(f"dataset spec {spec!r} gives option {key!r} twice; give it once")
            options[key] = value
    return match.group(1), match.group(2), options


def resolve_loader(module_name: str, attribute: str, spec: str) -> Loader:
    """The loader function a spec names, imported on this node; a clear error for each way it can fail."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise DatasetError(
                f"dataset spec {spec!r}: cannot import module {module_name!r} ({exc}); the loader's module "
                f"must be importable on this node: install its package, or add its folder to PYTHONPATH"
            ) from exc
        raise DatasetError(
            f"dataset spec {spec!r}: importing module {module_name!r} failed: {exc}; install what it imports"
        ) from exc
    except Exception as exc:  # the user's module: any error at import is theirs to see
        raise DatasetError(
            f"dataset spec {spec!r}: importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    loader = getattr(module, attribute, None)
    if loader is None:
        raise DatasetError(
            f"dataset spec {spec!r}: module {module_name!r} has no attribute {attribute!r}; expected a "
            f"function {attribute}(context: fedalign.data.LoaderContext) returning a dict of datasets"
        )
    if not callable(loader):
        raise DatasetError(
            f"dataset spec {spec!r}: {module_name}.{attribute} is a {type(loader).__name__}, not callable; "
            f"expected a function {attribute}(context) returning a dict of datasets"
        )
    return loader  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------- items


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor | np.ndarray):
        return f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


class PluginSamples:
    """One split a loader returned (or the rows ``positions`` of it), its items checked and converted:
    ``x`` to a float32 tensor of the split's sample shape, ``y`` to an int64 class index in range."""

    def __init__(
        self,
        dataset: Any,
        split: str,
        context: LoaderContext,
        positions: np.ndarray | None = None,
    ) -> None:
        self.dataset = dataset
        self.split = split
        self.context = context
        self.positions = positions
        if len(self) == 0:
            raise DatasetError(f"dataset spec {context.spec!r}: the {split!r} split is empty")
        first = positions[0] if positions is not None else 0
        x, y = self._item(int(first), expect=None)
        self.labelled = y is not None
        self.sample_shape: tuple[int, ...] = tuple(x.shape)
        if context.input_shape is not None and self.sample_shape != tuple(context.input_shape):
            raise self._error(
                int(first),
                f"x has shape {self.sample_shape}, but the federation's model takes "
                f"{tuple(context.input_shape)} (model.input_shape)",
            )

    def __len__(self) -> int:
        return len(self.positions) if self.positions is not None else len(self.dataset)

    def _error(self, index: int, problem: str) -> DatasetError:
        return DatasetError(f"dataset spec {self.context.spec!r}: {self.split} item {index}: {problem}")

    def _item(self, index: int, expect: bool | None) -> tuple[torch.Tensor, int | None]:
        try:
            item = self.dataset[index]
        except Exception as exc:  # the user's dataset: its error, with where it happened
            raise self._error(index, f"reading it raised {type(exc).__name__}: {exc}") from exc
        if isinstance(item, tuple | list):
            if len(item) != 2:
                raise self._error(
                    index, f"is a {type(item).__name__} of {len(item)} values; expected x or (x, y)"
                )
            raw_x, raw_y = item
        else:
            raw_x, raw_y = item, None
        if not isinstance(raw_x, torch.Tensor | np.ndarray):
            raise self._error(index, f"x is {_describe(raw_x)}; expected a float tensor (or NumPy array)")
        x = torch.as_tensor(raw_x)
        if not x.is_floating_point():
            raise self._error(
                index,
                f"x has dtype {x.dtype}; expected floating point (convert it, e.g. images: x.float() / 255)",
            )
        y = None if raw_y is None else self._label(index, raw_y)
        if expect is not None and (y is not None) != expect:
            kind = "labelled (x, y)" if expect else "unlabelled (x alone)"
            raise self._error(
                index, f"is {'x alone' if y is None else '(x, y)'}, but the split's items are {kind}"
            )
        return x.float(), y

    def _label(self, index: int, raw: object) -> int:
        value = raw
        if isinstance(raw, torch.Tensor | np.ndarray):
            if raw.ndim != 0 or raw.dtype in (torch.bool, np.bool_):
                raise self._error(index, f"y is {_describe(raw)}; expected one integer class index")
            value = raw.item()
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise self._error(index, f"y is {_describe(raw)}; expected an integer class index")
        label = int(value)
        classes = self.context.num_classes
        if label < 0 or (classes is not None and label >= classes):
            bound = (
                f"0..{classes - 1} (model.num_classes = {classes})" if classes is not None else "0 or more"
            )
            raise self._error(index, f"y is {label}; expected a class index in {bound}")
        return label

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.positions[position]) if self.positions is not None else position
        x, y = self._item(index, expect=self.labelled)
        if tuple(x.shape) != self.sample_shape:
            raise self._error(
                index, f"x has shape {tuple(x.shape)}, but the split's first item has {self.sample_shape}"
            )
        return x, torch.tensor(UNLABELLED if y is None else y, dtype=torch.int64)

    def check(self, count: int = CHECKED_AT_LOAD) -> None:
        """Reads the first ``count`` items, so a bad one fails now rather than in the middle of a run."""
        for position in range(min(count, len(self))):
            self[position]


def _is_map_style(value: object) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(value, str | bytes)


def _draw_val(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions: a seeded 15% of ``n`` items for validation (unstratified: it reads no item)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    k = int(np.floor(SPLIT_FRACTIONS[1] * n + 0.5)) if n > 1 else 0
    return np.sort(order[k:]), np.sort(order[:k])


def load_plugin(spec: str, argument: str, context: LoaderContext | None = None) -> NodeData:
    """Runs the loader a ``python:`` spec names and checks what it returns (the contract above)."""
    module_name, attribute, options = parse_plugin_argument(argument, spec)
    loader = resolve_loader(module_name, attribute, spec)
    base = context or LoaderContext()
    context = LoaderContext(
        role=base.role,
        input_shape=tuple(base.input_shape) if base.input_shape is not None else None,
        num_classes=base.num_classes,
        preprocessing=base.preprocessing,
        options=MappingProxyType(dict(options)),
        spec=spec,
    )
    name = f"{module_name}.{attribute}"
    try:
        returned = loader(context)
    except Exception as exc:  # the user's code: whatever it raises, the node says where it came from
        raise DatasetError(
            f"dataset spec {spec!r}: the loader {name} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(returned, Mapping):
        raise DatasetError(
            f"dataset spec {spec!r}: the loader {name} returned {_describe(returned)}; expected a dict "
            f"{{'train': Dataset, 'val': Dataset | None, 'test': Dataset | None}}"
        )
    unknown = sorted(str(k) for k in returned if k not in SPLIT_NAMES)
    if unknown or returned.get("train") is None:
        raise DatasetError(
            f"dataset spec {spec!r}: the loader {name} returned keys {sorted(map(str, returned))}; expected "
            f"'train' (required), 'val' and 'test' (optional), nothing else"
        )
    for split, value in returned.items():
        if value is not None and not _is_map_style(value):
            raise DatasetError(
                f"dataset spec {spec!r}: the loader {name} returned {_describe(value)} as {split!r}; "
                f"expected a map-style dataset (len(ds) and ds[i], e.g. a torch.utils.data.Dataset) or None"
            )
    dataset = returned["train"]
    if returned.get("val") is None:
        train_at, val_at = _draw_val(len(dataset))
        train = PluginSamples(dataset, "train", context, train_at)
        val = (
            PluginSamples(dataset, "val", context, val_at) if len(val_at) else Split.empty(train.sample_shape)
        )
    else:
        train = PluginSamples(dataset, "train", context)
        val = PluginSamples(returned["val"], "val", context)
    test = PluginSamples(returned["test"], "test", context) if returned.get("test") is not None else None
    for samples in (train, val, test):
        if isinstance(samples, PluginSamples):
            samples.check()
            if samples.sample_shape != train.sample_shape:
                raise DatasetError(
                    f"dataset spec {spec!r}: {samples.split} items have shape {samples.sample_shape}, "
                    f"train items {train.sample_shape}; every split's items have one shape"
                )
    if test is not None and not test.labelled:
        raise DatasetError(
            f"dataset spec {spec!r}: the 'test' split's items are x alone; 'test' is the labelled "
            f"evaluation split: give (x, y) items, or leave 'test' out"
        )
    if isinstance(val, PluginSamples) and val.labelled != train.labelled:
        raise DatasetError(
            f"dataset spec {spec!r}: 'train' items are {'(x, y)' if train.labelled else 'x alone'} but 'val' "
            f"items are {'(x, y)' if val.labelled else 'x alone'}; give both labels, or neither"
        )
    return NodeData(
        spec=spec,
        train=train,
        val=val,
        test=test if test is not None else Split.empty(train.sample_shape),
        num_classes=context.num_classes,
        input_shape=train.sample_shape,
    )
