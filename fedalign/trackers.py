"""Experiment trackers: a federation's per-round metrics and its config, streamed to MLflow or TensorBoard.

A tracker run is one federation (or one simulation). Its metrics are logged with the round as the step:
federation-wide metrics under their own names (``disc_acc``, ``target_acc``, ...), each node's under
``<node>/<metric>`` (``alpha/task_loss``). The config goes in as parameters (MLflow: one per flattened key,
``hyperparameters.adv_weight``) or as a text summary (TensorBoard: the ``config`` tag), so that runs can be
compared by what differed. Both are optional extras (``fedalign[mlflow]``, ``fedalign[tensorboard]``);
their packages load only when a run is opened.

The served side (`backend.services.trackers`) and ``fedalign simulate --mlflow/--tensorboard`` both write
through `open_run`, so a simulated and a served federation look alike in the tracker.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

TrackerName = Literal["mlflow", "tensorboard"]
TRACKER_NAMES: tuple[TrackerName, ...] = ("mlflow", "tensorboard")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
NodeMetrics = Mapping[str, Mapping[str, float]]

# MLflow's limits per log_batch call and on a parameter's value.
_MLFLOW_MAX_METRICS = 1000
_MLFLOW_MAX_PARAMS = 100
_MLFLOW_MAX_PARAM_CHARS = 6000
# The tag that finds a federation's run again after a restart.
FEDERATION_TAG = "fedalign.federation"


class TrackerError(RuntimeError):
    """A tracker that cannot be used: its extra is not installed, or its destination refused."""


class TrackerNotInstalled(TrackerError, ValueError):
    """The tracker's extra is not installed (a ValueError too: settings that name it are invalid)."""


class TrackerRun(Protocol):
    """One federation's run in a tracker."""

    @property
    def run_id(self) -> str: ...

    def log_round(
        self, round_: int, metrics: Mapping[str, float], nodes: Mapping[str, Mapping[str, float]]
    ) -> None:
        """Every metric of one round (federation-wide, and per node)."""

    def finish(self, status: RunStatus) -> None:
        """Close the run (flushes what is buffered)."""


@dataclass(frozen=True)
class Destinations:
    """Where runs go: an MLflow tracking URI (a server, or ``sqlite:///path.db``) and a TensorBoard folder."""

    mlflow_uri: str | None = None
    mlflow_experiment: str = "fedalign"
    tensorboard_dir: Path | None = None

    def configured(self) -> tuple[TrackerName, ...]:
        return tuple(
            name
            for name, where in (("mlflow", self.mlflow_uri), ("tensorboard", self.tensorboard_dir))
            if where is not None
        )


def selected(wanted: Sequence[TrackerName] | None, destinations: Destinations) -> tuple[TrackerName, ...]:
    """The trackers a federation streams to: those configured where it runs, filtered by its config's
    ``trackers`` (None: all of them)."""
    configured = destinations.configured()
    return configured if wanted is None else tuple(t for t in configured if t in wanted)


def round_values(metrics: Mapping[str, float], nodes: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """One round's metrics as the tracker's flat names: ``disc_acc``, ``alpha/task_loss``."""
    flat = {name: float(value) for name, value in metrics.items()}
    for node, values in nodes.items():
        flat.update({f"{node}/{name}": float(value) for name, value in values.items()})
    return flat


def flatten_config(config: Mapping[str, Any]) -> dict[str, str]:
    """The config as ``dotted.key -> value`` strings (nodes by name: ``nodes.alpha.dataset``)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        elif prefix == "nodes" and isinstance(value, list):
            for node in value:
                walk(f"nodes.{node['name']}", {k: v for k, v in node.items() if k != "name"})
        else:
            flat[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", config)
    return flat


def run_name(name: str, federation_id: str | None) -> str:
    return f"{name} ({federation_id[:8]})" if federation_id else name


class MlflowRun:
    """A run through MLflow's client API (no global state: one server process serves many federations)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        name: str,
        config: Mapping[str, Any],
        federation_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise TrackerNotInstalled("MLflow is not installed: pip install 'fedalign[mlflow]'") from exc
        # MLflow reports its own database migrations at INFO, and its SQLAlchemy store warns of SQLAlchemy's
        # deprecations: the product's output is the product's.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
        self._client = MlflowClient(tracking_uri=tracking_uri)
        if run_id is not None:
            self._run_id = run_id
            return
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        tags = {FEDERATION_TAG: federation_id} if federation_id else {}
        created = self._client.create_run(experiment_id, run_name=run_name(name, federation_id), tags=tags)
        self._run_id = created.info.run_id
        params = [Param(k, v[:_MLFLOW_MAX_PARAM_CHARS]) for k, v in flatten_config(config).items()]
        for start in range(0, len(params), _MLFLOW_MAX_PARAMS):
            self._client.log_batch(self._run_id, params=params[start : start + _MLFLOW_MAX_PARAMS])

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_round(
        self, round_: int, metrics: Mapping[str, float], nodes: Mapping[str, Mapping[str, float]]
    ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, round_) for key, value in round_values(metrics, nodes).items()]
        for start in range(0, len(batch), _MLFLOW_MAX_METRICS):
            self._client.log_batch(self._run_id, metrics=batch[start : start + _MLFLOW_MAX_METRICS])

    def finish(self, status: RunStatus) -> None:
        self._client.set_terminated(self._run_id, status=status)


class TensorBoardRun:
    """Event files in ``<dir>/<run folder>``: scalars per round, the config as text at step 0."""

    def __init__(
        self,
        log_dir: Path,
        name: str,
        config: Mapping[str, Any],
        federation_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackerNotInstalled(
                "TensorBoard is not installed: pip install 'fedalign[tensorboard]'"
            ) from exc
        # A folder name a file system takes: the federation's name, made safe, and its id.
        folder = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "federation"
        self._run_id = run_id or (f"{folder}-{federation_id[:8]}" if federation_id else folder)
        self.path = Path(log_dir) / self._run_id
        self._writer = SummaryWriter(log_dir=str(self.path))
        if run_id is None:  # a run reopened after a restart has its config already
            table = "\n".join(f"| `{k}` | `{v}` |" for k, v in flatten_config(config).items())
            self._writer.add_text("config", "| key | value |\n|---|---|\n" + table, global_step=0)
            self._writer.flush()

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_round(
        self, round_: int, metrics: Mapping[str, float], nodes: Mapping[str, Mapping[str, float]]
    ) -> None:
        for key, value in round_values(metrics, nodes).items():
            self._writer.add_scalar(key, value, global_step=round_)
        self._writer.flush()

    def finish(self, status: RunStatus) -> None:
        self._writer.add_text("status", status)
        self._writer.close()


def require(tracker: TrackerName) -> None:
    """Raise `TrackerNotInstalled` unless `tracker`'s extra is installed (without opening anything)."""
    import importlib.util

    if importlib.util.find_spec(tracker) is None:  # each extra's package is named as its tracker
        raise TrackerNotInstalled(f"{tracker} is not installed: pip install 'fedalign[{tracker}]'")


def open_run(
    tracker: TrackerName,
    destinations: Destinations,
    name: str,
    config: Mapping[str, Any],
    federation_id: str | None = None,
    run_id: str | None = None,
) -> TrackerRun:
    """A new run (or, with `run_id`, the run opened before a restart) in `tracker` at `destinations`."""
    if tracker == "mlflow":
        if destinations.mlflow_uri is None:
            raise TrackerError("no MLflow tracking URI is configured")
        return MlflowRun(
            destinations.mlflow_uri, destinations.mlflow_experiment, name, config, federation_id, run_id
        )
    if destinations.tensorboard_dir is None:
        raise TrackerError("no TensorBoard folder is configured")
    return TensorBoardRun(destinations.tensorboard_dir, name, config, federation_id, run_id)
