"""A node's local state persists between steps on its machine, and a step run twice changes nothing.

In-process (the API behind a TestClient): each step lands in a new `NodeRunner`, as it would in a new
worker process after a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import RUN_TIMEOUT_S, Api, tiny_settings
from test_api_end_to_end import served_rounds

from fedalign.config import FederationConfig
from fedalign.simulate import simulate
from messaging.node_api import SubmitResult, UploadResult
from workers.client import ClientError, NodeClient, NodeRunner
from workers.state import NodeStateFile

NODES = {"alpha": "source", "beta": "source", "omega": "target"}


def config_of(settings: dict[str, Any], specs: dict[str, str]) -> FederationConfig:
    nodes = [{"name": n, "role": r, "dataset": specs[n]} for n, r in NODES.items()]
    return FederationConfig.model_validate({**settings, "nodes": nodes})


def drive_with_fresh_runners(api: Api, tokens: dict[str, str], state_dirs: dict[str, Path] | None) -> None:
    """Every step of every node runs in a runner built for it alone (a new process, as far as the node's
    state goes), with the node's state directory or without one."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    finished = set()
    while len(finished) < len(tokens):
        progressed = False
        for name, token in tokens.items():
            client = NodeClient("http://testserver", token, http=api.client)
            task = client.next_task()
            if task is None:
                if client.federation_status in ("finished", "cancelled", "failed"):
                    finished.add(name)
                continue
            NodeRunner(client, state_dir=state_dirs[name] if state_dirs else None).run(task)
            progressed = True
        if not progressed:
            assert time.monotonic() < deadline, "the federation did not finish in time"
            time.sleep(0.01)


def test_steps_landing_in_new_processes_continue_the_nodes_state_exactly(
    api: Api, vector_specs: Callable[[], dict[str, str]], tmp_path: Path
) -> None:
    specs = vector_specs()
    settings = tiny_settings(rounds=3)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    api.start(federation["id"])

    drive_with_fresh_runners(api, tokens, {name: tmp_path / name for name in tokens})

    reference = simulate(config_of(settings, specs))
    assert served_rounds(api, federation["id"]) == {
        r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes
    }


def test_without_saved_state_a_new_process_would_lose_the_nodes_models(
    api: Api, vector_specs: Callable[[], dict[str, str]]
) -> None:
    """The control for the test above: it would fail if the state did not persist."""
    specs = vector_specs()
    settings = tiny_settings(rounds=3)
    federation, tokens = api.federation_with_nodes(specs, **settings)
    api.start(federation["id"])

    drive_with_fresh_runners(api, tokens, None)

    reference = simulate(config_of(settings, specs))
    assert served_rounds(api, federation["id"]) != {
        r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes
    }


def test_a_step_delivered_again_after_it_ran_sends_its_saved_result_and_changes_nothing(
    api: Api, vector_specs: Callable[[], dict[str, str]], tmp_path: Path
) -> None:
    specs = vector_specs()
    settings = tiny_settings()
    federation, tokens = api.federation_with_nodes(specs, **settings)
    api.start(federation["id"])
    state_dirs = {name: tmp_path / name for name in tokens}
    runners = {
        name: NodeRunner(NodeClient("http://testserver", token, http=api.client), state_dir=state_dirs[name])
        for name, token in tokens.items()
    }
    for runner in runners.values():  # setup steps
        assert runner.step_once()
    alpha = runners["alpha"]
    task = alpha.client.next_task()
    assert task is not None and task.kind == "discriminator"

    # The worker trains and uploads, then dies before completing.
    result = alpha._train(task)
    first = {slot: alpha.client.upload(url, result.uploads[slot]) for slot, url in task.uploads.items()}
    assert all(answer.stored for answer in first.values())
    state_file = NodeStateFile(state_dirs["alpha"], federation["id"], "alpha")
    saved = state_file.path.read_bytes()

    # The message comes again, to a new process: it claims the step again and runs it.
    client = RecordingClient("http://testserver", tokens["alpha"], http=api.client)
    again = NodeRunner(client, state_dir=state_dirs["alpha"])
    again.run(client.claim(task.step_id))

    assert [answer.stored for answer in client.answers] == [False] * len(task.uploads)
    assert state_file.path.read_bytes() == saved, "the node's state moved twice"
    with pytest.raises(ClientError) as done:
        again.client.claim(task.step_id)
    assert done.value.status == 409 and done.value.code == "already_completed"

    runners["alpha"] = again
    drive_runners(runners)
    reference = simulate(config_of(settings, specs))
    assert served_rounds(api, federation["id"]) == {
        r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes
    }


class RecordingClient(NodeClient):
    """Keeps the server's answer to each upload (sent alone, or in a submission with the completion)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: list[UploadResult] = []

    def upload_bytes(self, url: str, data: bytes) -> UploadResult:
        answer = super().upload_bytes(url, data)
        self.answers.append(answer)
        return answer

    def submit(
        self, url: str, files: Any, metrics: Any, samples: Any = None, sealed: Any = None
    ) -> SubmitResult:
        answer = super().submit(url, files, metrics, samples, sealed)
        self.answers.extend(answer.uploads.values())
        return answer


def drive_runners(runners: dict[str, NodeRunner]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not all(r.finished for r in runners.values()):
        ran = [r.step_once() for r in runners.values()]  # every node polls each turn
        if not any(ran):
            assert time.monotonic() < deadline, "the federation did not finish in time"
            time.sleep(0.01)


@pytest.mark.parametrize("env, durable", [(None, True), ("1", True), ("false", False), ("0", False)])
def test_the_state_file_is_fsynced_unless_the_setting_says_not_to(
    api: Api,
    vector_specs: Callable[[], dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    durable: bool,
) -> None:
    """A killed process needs only the atomic rename; a machine crash needs the fsync too
    (``FEDALIGN_NODE_STATE_FSYNC``), which a node worker passes from its settings to its state file."""
    from workers.settings import WorkerSettings

    if env is None:
        monkeypatch.delenv("FEDALIGN_NODE_STATE_FSYNC", raising=False)
    else:
        monkeypatch.setenv("FEDALIGN_NODE_STATE_FSYNC", env)
    _, tokens = api.federation_with_nodes(vector_specs(), **tiny_settings(rounds=1))
    client = NodeClient("http://testserver", tokens["alpha"], http=api.client)
    runner = NodeRunner(client, state_dir=tmp_path, state_fsync=WorkerSettings().node_state_fsync)
    assert runner.state is not None and runner.state.durable is durable
