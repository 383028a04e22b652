"""Dataset loader plug-ins (``python:package.module:loader``): what a loader is told, what it must return,
and the error a node gets for each way a loader can break the contract. The loaders live outside the
fedalign package (tests/data_plugins), as a user's would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedalign.config import FederationConfig, Preprocessing
from fedalign.data import DatasetError, LoaderContext, load, parse_spec, stack
from fedalign.node import NodeRuntime, StepError, load_node_data

PLUGINS = Path(__file__).parent / "data_plugins"


@pytest.fixture(autouse=True)
def _plugins_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))


def config(target: str, source: str = "python:fedalign_test_loaders:gaussians?seed=1") -> FederationConfig:
    return FederationConfig.model_validate(
        {
            "architecture": "mlp",
            "model": {"num_classes": 3, "input_shape": [8], "hidden": 16},
            "nodes": [
                {"name": "site", "role": "source", "dataset": source},
                {"name": "home", "role": "target", "dataset": target},
            ],
        }
    )


def test_a_loader_is_told_the_role_model_preprocessing_and_options() -> None:
    from fedalign_test_loaders import CONTEXTS

    cfg = config("python:fedalign_test_loaders:gaussians?seed=2&shift=1.5&labelled=no")
    data = load_node_data(cfg, "home")
    context = CONTEXTS[-1]
    assert (context.role, context.input_shape, context.num_classes) == ("target", (8,), 3)
    assert dict(context.options) == {"seed": "2", "shift": "1.5", "labelled": "no"}
    assert context.preprocessing == Preprocessing()
    assert not data.labelled and len(data.test) == 0 and data.input_shape == (8,)


def test_without_a_val_split_fifteen_percent_of_train_is_drawn_for_validation() -> None:
    data = load("python:fedalign_test_loaders:gaussians?n=100&test=yes")
    assert [len(s) for s in (data.train, data.val, data.test)] == [85, 15, 24]
    train_x, train_y = stack(data.train)
    val_x, _ = stack(data.val)
    assert not set(map(tuple, train_x.tolist())) & set(map(tuple, val_x.tolist()))
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    again = load("python:fedalign_test_loaders:gaussians?n=100&test=yes")
    assert torch.equal(stack(again.val)[0], val_x)  # a fixed seed, the same in every run


def test_an_unlabelled_source_is_refused_saying_why() -> None:
    cfg = config(
        "python:fedalign_test_loaders:gaussians?seed=2",
        source="python:fedalign_test_loaders:gaussians?seed=1&labelled=no",
    )
    with pytest.raises(StepError, match=r"is a source, but .* no labels .* task loss"):
        NodeRuntime("site", cfg, load_node_data(cfg, "site"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:fedalign_test_loaders", "does not name a loader; expected python:package.module:loader"),
        ("python:no_such_package.loaders:load", "cannot import module 'no_such_package.loaders'.*PYTHONPATH"),
        ("python:fedalign_test_loaders:absent", "has no attribute 'absent'"),
        ("python:fedalign_test_loaders:not_a_function", "is a int, not callable"),
        ("python:fedalign_test_loaders:gaussians?seed=1&seed=2", "gives option 'seed' twice"),
    ],
)
def test_a_loader_that_cannot_be_found_is_a_dataset_error(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load(spec)


def test_the_spec_is_checked_for_form_without_importing_anything() -> None:
    assert parse_spec("python:no_such_package.loaders:load?path=/x") == (
        "python",
        "no_such_package.loaders:load?path=/x",
    )


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        ("raises", "the loader fedalign_test_loaders.raises raised FileNotFoundError: no such file"),
        ("returns_a_list", "returned a list; expected a dict"),
        ("returns_an_iterable", "returned a Stream as 'train'; expected a map-style dataset"),
        ("misses_train", r"returned keys \['training'\]; expected 'train' \(required\)"),
    ],
)
def test_a_loader_that_returns_the_wrong_thing_is_a_dataset_error(loader: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load(f"python:fedalign_test_loaders:{loader}")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("shape", r"train item 3: x has shape \(5,\), but the split's first item has \(8,\)"),
        ("dtype", r"train item 3: x has dtype torch.int64; expected floating point"),
        ("label_range", r"train item 3: y is 7; expected a class index in 0..2 \(model.num_classes = 3\)"),
        ("label_type", r"train item 3: y is a float; expected an integer class index"),
        ("arity", r"train item 3: is a tuple of 3 values; expected x or \(x, y\)"),
        ("unlabelled", r"train item 3: is x alone, but the split's items are labelled"),
        ("raises", r"train item 3: reading it raised KeyError: 'row 3'"),
    ],
)
def test_bad_items_are_dataset_errors_naming_the_item(how: str, message: str) -> None:
    context = LoaderContext(input_shape=(8,), num_classes=3)
    with pytest.raises(DatasetError, match=message):
        load(f"python:fedalign_test_loaders:broken?how={how}&at=3", context=context)


def test_a_bad_item_past_the_first_ones_fails_when_it_is_read() -> None:
    context = LoaderContext(input_shape=(8,), num_classes=3)
    data = load("python:fedalign_test_loaders:broken?how=label_range&at=17", context=context)
    with pytest.raises(DatasetError, match="train item 17: y is 7"):
        stack(data.train), stack(data.val)


def test_items_of_another_shape_than_the_model_takes_are_refused() -> None:
    with pytest.raises(
        DatasetError, match=r"train item \d+: x has shape \(8,\), but the federation's model takes"
    ):
        load(
            "python:fedalign_test_loaders:broken?how=shape&at=99",
            context=LoaderContext(input_shape=(3, 8, 8)),
        )
