"""The coordinator's and partners' commands (``fedalign federations ...``, ``fedalign node register``)
against a live server: a real uvicorn on a loopback port, on SQLite and on PostgreSQL (`live_server`),
driven as a user types them, with every ``--json`` answer parsed. One test runs both the server and the
commands as the installed console script in their own processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import ADMIN_TOKEN, RUN_TIMEOUT_S, write_vectors
from click.testing import Result
from process_support import Processes, child_env, cli, free_port, wait_ready
from typer.testing import CliRunner

from cli import exit_codes
from cli.main import app
from workers.client import ClientError, NodeClient, run_node

CONFIG = """
name = "cli vectors"
algorithm = "fedalign"
architecture = "mlp"
rounds = 2
seed = 5
[model]
num_classes = 3
input_shape = [8]
hidden = 8
[hyperparameters]
local_steps = 2
disc_steps = 2
batch_size = 8
[[nodes]]
name = "alpha"
role = "source"
dataset = "{alpha}"
[[nodes]]
name = "beta"
role = "source"
dataset = "{beta}"
[[nodes]]
name = "omega"
role = "target"
dataset = "{omega}"
"""

Invoke = Callable[..., Result]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    specs = {
        name: write_vectors(tmp_path / f"{name}.npz", seed, shift)
        for name, seed, shift in (("alpha", 1, 0.0), ("beta", 2, 0.3), ("omega", 3, 1.5))
    }
    path = tmp_path / "federation.toml"
    path.write_text(CONFIG.format(**specs), encoding="utf-8")
    return path


@pytest.fixture
def fedalign(live_server: str, tmp_path: Path) -> Invoke:
    """`fedalign ARGS...` against the live server with the admin token in the environment, as a user sets it;
    no config file (FEDALIGN_CLI_CONFIG names one that does not exist)."""
    env = {
        "FEDALIGN_URL": live_server,
        "FEDALIGN_TOKEN": ADMIN_TOKEN,
        "FEDALIGN_CLI_CONFIG": str(tmp_path / "no-cli.toml"),
        "COLUMNS": "200",
    }

    def invoke(*args: str, env_overrides: dict[str, str | None] | None = None) -> Result:
        return CliRunner(env={**env, **(env_overrides or {})}).invoke(app, list(args))

    return invoke


def parsed(result: Result, status: int = 0) -> Any:
    assert result.exit_code == status, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return json.loads(result.stdout)


@pytest.fixture
def nodes_running(live_server: str) -> Iterator[Callable[[dict[str, str]], None]]:
    """Start each registered node's REST loop in a thread (its dataset as registered); joined at the end."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def start(tokens: dict[str, str]) -> None:
        def run(token: str) -> None:
            try:
                with NodeClient(live_server, token) as client:
                    run_node(client, poll_interval_s=0.05)
            except BaseException as exc:  # reported by the test, not lost in a thread
                errors.append(exc)

        for token in tokens.values():
            thread = threading.Thread(target=run, args=(token,), daemon=True)
            thread.start()
            threads.append(thread)

    yield start
    for thread in threads:
        thread.join(timeout=RUN_TIMEOUT_S)
    assert not errors, errors


# ------------------------------------------------------------------------------------------ a whole run


def test_a_federation_is_created_from_its_config_file_run_and_watched_to_its_end(
    fedalign: Invoke, config_file: Path, nodes_running: Callable[[dict[str, str]], None]
) -> None:
    created = parsed(fedalign("federations", "create", str(config_file), "--register-nodes", "--json"))
    assert created["status"] == "created" and created["join_token"].startswith("fa_join_")
    assert created["config"]["rounds"] == 2 and created["config"]["architecture"] == "mlp"
    tokens = {n["name"]: n["token"] for n in created["node_tokens"]}
    assert sorted(tokens) == ["alpha", "beta", "omega"]

    started = parsed(fedalign("federations", "start", created["id"], "--json"))
    assert started["status"] == "running"
    nodes_running(tokens)
    watched = fedalign("federations", "watch", created["id"], "--json")
    ended = parsed(watched, exit_codes.OK)
    assert ended["status"] == "finished" and ended["progress"]["rounds_done"] == 2

    shown = parsed(fedalign("federations", "show", created["id"], "--json"))
    assert shown["federation"]["id"] == created["id"]
    assert {n["name"]: n["samples"]["train"] for n in shown["nodes"]} == {
        "alpha": 40,
        "beta": 40,
        "omega": 40,
    }
    evaluated = [r for r in shown["rounds"] if "disc_acc" in r["metrics"]]
    assert [r["round"] for r in evaluated] == [1, 2]
    listed = parsed(fedalign("federations", "list", "--json"))
    assert [f["id"] for f in listed["items"]] == [created["id"]]

    table = fedalign("federations", "show", created["id"])
    assert table.exit_code == 0 and "per-round metrics" in table.stdout and "omega" in table.stdout
    assert created["name"] in fedalign("federations", "list").stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_watch_follows_a_run_live_and_says_how_it_ended(
    fedalign: Invoke, config_file: Path, nodes_running: Callable[[dict[str, str]], None]
) -> None:
    create = ("federations", "create", str(config_file), "--register-nodes", "--start", "--json")
    created = parsed(fedalign(*create))
    nodes_running({n["name"]: n["token"] for n in created["node_tokens"]})
    watched = fedalign("federations", "watch", created["id"])
    assert watched.exit_code == exit_codes.OK, watched.stderr
    assert "finished after 2 of 2 rounds" in watched.stdout and "target acc" in watched.stdout
    assert "status: finished" in watched.stdout  # followed live, not read once at the end

    # One round more: the nodes (which left when it finished) run again, and it ends after 3 of 3 rounds.
    continued = parsed(fedalign("federations", "continue", created["id"], "--rounds", "1", "--json"))
    assert continued["status"] == "running" and continued["config"]["rounds"] == 3
    nodes_running({n["name"]: n["token"] for n in created["node_tokens"]})
    watched = fedalign("federations", "watch", created["id"])
    assert watched.exit_code == exit_codes.OK, watched.stdout + watched.stderr
    assert "finished after 3 of 3 rounds" in watched.stdout
    again = fedalign("federations", "continue", created["id"], "--rounds", "0")
    assert again.exit_code == 2  # typer's usage error: at least 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_pause_resume_and_cancel_drive_the_run_and_watch_says_it_was_cancelled(
    fedalign: Invoke, config_file: Path
) -> None:
    created = parsed(
        fedalign("federations", "create", str(config_file), "--register-nodes", "--start", "--json")
    )
    assert created["status"] == "running"
    # By name as well as by id: what a person types.
    assert parsed(fedalign("federations", "pause", "cli vectors", "--json"))["status"] == "paused"
    assert parsed(fedalign("federations", "resume", created["id"][:8], "--json"))["status"] == "running"
    assert parsed(fedalign("federations", "cancel", created["id"], "--json"))["status"] == "cancelled"
    watched = fedalign("federations", "watch", created["id"], "--json")
    assert parsed(watched, exit_codes.CANCELLED)["status"] == "cancelled"
    said = fedalign("federations", "watch", created["id"])
    assert said.exit_code == exit_codes.CANCELLED and "cancelled" in said.stdout


# ------------------------------------------------------------------------------------ a partner joining


def test_a_partner_registers_its_node_with_the_join_token_alone(fedalign: Invoke, config_file: Path) -> None:
    created = parsed(fedalign("federations", "create", str(config_file), "--json"))
    join = {"FEDALIGN_TOKEN": created["join_token"]}
    register = ("node", "register", created["id"], "--role", "source")
    node = parsed(
        fedalign(
            *register, "--name", "hospital-a", "--dataset", "npz:/data/a.npz", "--json", env_overrides=join
        )
    )
    assert node["name"] == "hospital-a" and node["mode"] == "rest" and node["token"].startswith("fa_node_")
    assert "fedalign node run" in node["run_command"]
    said = fedalign(*register, "--name", "hospital-b", "--dataset", "npz:/b.npz", env_overrides=join)
    assert said.exit_code == 0 and "fa_node_" in said.stdout and "fedalign node run" in said.stdout
    # The join token registers nodes and does nothing else.
    refused = fedalign("federations", "list", "--json", env_overrides=join)
    assert refused.exit_code == exit_codes.ERROR and "403 forbidden" in refused.stderr
    assert refused.stdout == ""


# --------------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_refused_request_prints_the_servers_code_and_message(fedalign: Invoke, config_file: Path) -> None:
    created = parsed(fedalign("federations", "create", str(config_file), "--json"))
    twice = fedalign("federations", "cancel", created["id"])
    assert twice.exit_code == 0
    again = fedalign("federations", "start", created["id"], "--json")
    assert again.exit_code == exit_codes.ERROR and again.stdout == ""
    assert "409 illegal_transition" in again.stderr
    missing = fedalign("federations", "show", "no-such-federation")
    assert missing.exit_code == exit_codes.ERROR and "not_found" in missing.stderr
    wrong = fedalign("federations", "list", env_overrides={"FEDALIGN_TOKEN": "not-the-admin-token"})
    assert wrong.exit_code == exit_codes.ERROR and "401 unauthorized" in wrong.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_config_the_server_refuses_is_named_field_by_field(fedalign: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = 0\n[hyperparameters]\nbatch_size = "many"\n', encoding="utf-8")
    said = fedalign("federations", "create", str(bad))
    assert said.exit_code == exit_codes.USAGE
    assert "rounds" in said.stderr and "batch_size" in said.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unreachable_server_and_a_missing_token_each_have_their_exit_status(fedalign: Invoke) -> None:
    down = fedalign("federations", "list", env_overrides={"FEDALIGN_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.exit_code == exit_codes.UNREACHABLE and "cannot reach" in down.stderr
    anonymous = fedalign("federations", "list", env_overrides={"FEDALIGN_TOKEN": None})
    assert anonymous.exit_code == exit_codes.USAGE and "FEDALIGN_TOKEN" in anonymous.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_config_file_supplies_url_and_token_only_when_its_owner_alone_can_read_it(
    fedalign: Invoke, live_server: str, tmp_path: Path
) -> None:
    path = tmp_path / "cli.toml"
    path.write_text(f'url = "{live_server}"\ntoken = "{ADMIN_TOKEN}"\n', encoding="utf-8")
    from_file = {"FEDALIGN_URL": None, "FEDALIGN_TOKEN": None, "FEDALIGN_CLI_CONFIG": str(path)}
    path.chmod(0o644)
    shared = fedalign("federations", "list", env_overrides=from_file)
    assert shared.exit_code == exit_codes.USAGE and f"chmod 600 {path}" in shared.stderr
    path.chmod(0o600)
    assert parsed(fedalign("federations", "list", "--json", env_overrides=from_file)) == {"items": []}


def test_version_names_the_installed_distribution() -> None:
    from importlib.metadata import version

    said = CliRunner().invoke(app, ["--version"])
    assert said.exit_code == 0 and said.stdout.strip() == f"fedalign {version('fedalign')}"


# ------------------------------------------------------------------------------ the installed commands


def test_the_console_script_against_fedalign_serve(tmp_path: Path, config_file: Path) -> None:
    """Both sides as installed: `fedalign serve` in its own process, each command a process of its own."""
    processes = Processes(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = child_env(FEDALIGN_DATA_DIR=str(tmp_path / "server"), FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN)
    try:
        processes.start("api", cli("serve", "--port", str(port), "--log-level", "warning"), server_env)
        wait_ready(url, processes)
        client_env = {
            **os.environ,
            "FEDALIGN_URL": url,
            "FEDALIGN_TOKEN": ADMIN_TOKEN,
            "FEDALIGN_CLI_CONFIG": str(tmp_path / "none.toml"),
        }

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(cli(*args), env=client_env, capture_output=True, text=True, timeout=120)

        created = run("federations", "create", str(config_file), "--json")
        assert created.returncode == 0, created.stderr
        federation = json.loads(created.stdout)
        shown = run("federations", "show", federation["id"], "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["federation"]["status"] == "created"
        refused = run("federations", "pause", federation["id"])
        assert refused.returncode == exit_codes.ERROR and "409" in refused.stderr
    finally:
        processes.stop()


# ------------------------------------------------------------------------------ a plug-in architecture


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_plugin_federation_is_created_with_the_initial_parameters_init_model_wrote(
    fedalign: Invoke, config_file: Path, tmp_path: Path, test_plugins: Path
) -> None:
    """The creator builds the initial parameters where the plug-in is installed; `create --initial` uploads
    them with their manifest document, which the server checks them against (it never imports the plug-in)."""
    plugin = tmp_path / "plugin.toml"
    text = config_file.read_text(encoding="utf-8")
    plugin.write_text(
        text.replace(
            'architecture = "mlp"', 'architecture = "fedalign_test_plugins.architectures:vector_net"'
        ),
        encoding="utf-8",
    )
    initial = tmp_path / "init.safetensors"
    assert fedalign("init-model", str(plugin), "-o", str(initial)).exit_code == 0
    assert (tmp_path / "init.manifest.json").is_file()

    without = fedalign("federations", "create", str(plugin))
    assert without.exit_code == 0 and f"fedalign init-model {plugin}" in without.stderr

    created = parsed(fedalign("federations", "create", str(plugin), "--initial", str(initial), "--json"))
    assert created["initial_model"]["ready"] is True
    assert created["initial_model"]["sha256"] == hashlib.sha256(initial.read_bytes()).hexdigest()

    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(initial.read_bytes()[:-8])
    refused = fedalign(
        "federations", "create", str(plugin), "--initial", str(wrong), "--manifest",
        str(tmp_path / "init.manifest.json"),
    )  # fmt: skip
    assert refused.exit_code == exit_codes.ERROR and "initial parameters refused" in refused.stderr


# ------------------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_coordinator_rotates_and_revokes_join_and_node_tokens(
    fedalign: Invoke, config_file: Path, live_server: str
) -> None:
    created = parsed(fedalign("federations", "create", str(config_file), "--register-nodes", "--json"))
    fid, old_join = created["id"], created["join_token"]
    alpha = next(n["token"] for n in created["node_tokens"] if n["name"] == "alpha")
    register = ("node", "register", fid, "--role", "source", "--dataset", "npz:/x.npz", "--json")

    new_join = parsed(fedalign("federations", "join-token", fid, "--json"))["join_token"]
    assert new_join != old_join
    refused = fedalign(*register, "--name", "late", env_overrides={"FEDALIGN_TOKEN": old_join})
    assert refused.exit_code == exit_codes.ERROR and "401" in refused.stderr
    assert parsed(fedalign(*register, "--name", "late", env_overrides={"FEDALIGN_TOKEN": new_join}))["name"]
    limited = fedalign(
        "federations", "join-token", fid, "--max-nodes", "1", "--role", "target", "--expires-in", "3600"
    )
    assert limited.exit_code == 0 and "registers 1 node(s), only target nodes" in limited.stdout
    limited_token = limited.stdout.split("(shown once): ", 1)[1].split()[0]
    wrong_role = fedalign(*register, "--name", "src", env_overrides={"FEDALIGN_TOKEN": limited_token})
    assert wrong_role.exit_code == exit_codes.ERROR and "only target nodes" in wrong_role.stderr
    too_soon = fedalign("federations", "join-token", fid, "--expires-in", "5")
    assert too_soon.exit_code == 2  # at least a minute: typer's usage error, nothing rotated
    said = fedalign("federations", "join-token", fid, "--revoke")
    assert said.exit_code == 0 and "revoked" in said.stdout
    gone = fedalign(*register, "--name", "later", env_overrides={"FEDALIGN_TOKEN": new_join})
    assert gone.exit_code == exit_codes.ERROR and "401" in gone.stderr

    def task_status(token: str) -> int:
        with NodeClient(live_server, token) as client:
            try:
                client.next_task()
            except ClientError as exc:
                return exc.status
        return 200

    assert task_status(alpha) == 200
    rotated = parsed(fedalign("federations", "node-token", fid, "alpha", "--json"))
    assert rotated["token"] != alpha and "fedalign node run" in rotated["run_command"]
    assert task_status(alpha) == 401 and task_status(rotated["token"]) == 200
    shown = fedalign("federations", "node-token", fid, "alpha", "--revoke")
    assert shown.exit_code == 0 and "revoked" in shown.stdout
    assert task_status(rotated["token"]) == 401
    missing = fedalign("federations", "node-token", fid, "nobody")
    assert missing.exit_code == exit_codes.ERROR and "404" in missing.stderr


def test_the_coordinator_issues_rotates_and_revokes_access_tokens(
    fedalign: Invoke, config_file: Path, live_server: str
) -> None:
    fid = parsed(fedalign("federations", "create", str(config_file), "--json"))["id"]
    register = ("node", "register", fid, "--role", "target", "--dataset", "npz:/x.npz", "--json")
    node = parsed(fedalign(*register, "--name", "omega", "--organisation", "acme"))
    assert node["organisation"] == "acme"
    viewer = parsed(
        fedalign("tokens", "create", "acme-dash", "--role", "viewer", "--organisation", "acme", "--json")
    )
    assert viewer["role"] == "viewer" and viewer["token"].startswith("fa_access_")
    as_viewer = {"FEDALIGN_TOKEN": viewer["token"]}
    listed = parsed(fedalign("federations", "list", "--json", env_overrides=as_viewer))
    assert [f["id"] for f in listed["items"]] == [fid]
    refused = fedalign("federations", "start", fid, env_overrides=as_viewer)
    assert refused.exit_code == exit_codes.ERROR and "403" in refused.stderr
    no_org = fedalign("tokens", "create", "nobody", "--role", "owner", "--json")
    assert no_org.exit_code != 0 and "organisation" in no_org.stdout + no_org.stderr

    rotated = parsed(fedalign("tokens", "rotate", viewer["id"], "--json"))
    assert rotated["id"] == viewer["id"] and rotated["token"] != viewer["token"]
    gone = fedalign("federations", "list", "--json", env_overrides=as_viewer)
    assert gone.exit_code == exit_codes.ERROR and "401" in gone.stderr
    assert parsed(fedalign("tokens", "revoke", viewer["id"], "--json")) == {
        "id": viewer["id"],
        "revoked": True,
    }
    (kept,) = parsed(fedalign("tokens", "list", "--json"))["items"]
    assert kept["revoked_at"] is not None
    table = fedalign("tokens", "list")
    assert table.exit_code == 0 and "acme-dash" in table.stdout
