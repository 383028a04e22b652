"""Shared fixtures: tiny data sets, so that every test trains for seconds at most."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from fedalign.data import NodeData, Split


def vector_domain(seed: int, shift: float, n: int = 96, dim: int = 8, classes: int = 3) -> NodeData:
    """Three Gaussian classes in `dim` dimensions, moved by `shift`: a domain with a known offset."""
    g = torch.Generator().manual_seed(seed)

    def split(size: int) -> Split:
        y = torch.randint(0, classes, (size,), generator=g)
        x = (
            torch.randn(size, dim, generator=g) * 0.5
            + shift
            + 2.0 * torch.nn.functional.one_hot(y, dim)[:, :dim]
        )
        return Split(x, y)

    return NodeData(
        spec=f"vectors:{seed}",
        train=split(n),
        val=split(n // 4),
        test=split(n // 4),
        num_classes=classes,
        input_shape=(dim,),
    )


@pytest.fixture
def vector_federation() -> Callable[..., tuple[dict, dict[str, NodeData]]]:
    """A config dict for the mlp architecture and the in-memory data of its three nodes."""

    def make(**overrides: object) -> tuple[dict, dict[str, NodeData]]:
        hp = {"local_steps": 2, "disc_steps": 2, "batch_size": 16, **overrides.pop("hyperparameters", {})}
        config = {
            "algorithm": "fedalign",
            "architecture": "mlp",
            "model": {"num_classes": 3, "input_shape": [8], "hidden": 16},
            "rounds": 3,
            "seed": 3,
            "hyperparameters": hp,
            "nodes": [
                {"name": "alpha", "role": "source", "dataset": "vectors:1"},
                {"name": "beta", "role": "source", "dataset": "vectors:2"},
                {"name": "omega", "role": "target", "dataset": "vectors:3"},
            ],
            **overrides,
        }
        data = {"alpha": vector_domain(1, 0.0), "beta": vector_domain(2, 0.3), "omega": vector_domain(3, 1.5)}
        return config, data

    return make


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # Tiny models: threads only add contention on a shared CI machine.
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ skips in CI

# CI (.ci/run) starts PostgreSQL and Redis and `make test` installs Chromium before the tests, so there a skip
# means a test that should have run did not: it fails instead, named, with its reason. Outside CI a missing
# service still skips, saying why, so that a laptop without PostgreSQL can run the rest.
_SKIPPED_IN_CI: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"
        _SKIPPED_IN_CI.append(f"{item.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIPPED_IN_CI:
        terminalreporter.section("tests that skipped under CI (each counted as a failure)", red=True)
        for line in _SKIPPED_IN_CI:
            terminalreporter.line(line)


# Plug-ins outside the fedalign package, as a user's would be (tests/plugins/fedalign_test_plugins).
PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def test_plugins(monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/plugins on sys.path for the test: ``fedalign_test_plugins.architectures:tiny_cnn`` imports."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    return PLUGINS
