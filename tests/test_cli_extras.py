"""The `fedalign` command where an extra is not installed: what the partner's machine (no server) and the
coordinator's laptop (the base install) look like. Each case runs the command in a process that cannot see
the extra's distributions, neither their modules nor their metadata, as if pip had never installed them.
A command that needs the missing extra says which one to install; every other command works.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli import exit_codes

ROOT = Path(__file__).resolve().parent.parent

# Top-level modules and distribution names as pip would have left them out (test data, not a contract:
# which distributions each extra needs is pyproject.toml's, read by cli.extras from the installed metadata).
SERVER_MODULES = """fastapi starlette uvicorn sqlalchemy alembic sse_starlette psycopg psycopg_binary celery
    kombu redis prometheus_client pythonjsonlogger swagger_ui_bundle"""
SERVER_DISTRIBUTIONS = """fastapi starlette uvicorn sqlalchemy alembic sse-starlette psycopg psycopg-binary
    celery kombu redis prometheus-client python-json-logger swagger-ui-bundle-v2"""
NODE_MODULES = "torch torchvision numpy safetensors opacus sklearn skimage mlxtend PIL"
NODE_DISTRIBUTIONS = "torch torchvision numpy safetensors opacus scikit-learn scikit-image mlxtend pillow"
SERVER = {"modules": set(SERVER_MODULES.split()), "distributions": set(SERVER_DISTRIBUTIONS.split())}
NODE = {"modules": set(NODE_MODULES.split()), "distributions": set(NODE_DISTRIBUTIONS.split())}

HIDE = """
import importlib.machinery, importlib.metadata, re, sys
MODULES, DISTRIBUTIONS = {modules!r}, {distributions!r}

class Hidden:
    '''PathFinder as it would be without those packages installed.'''
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in MODULES:
            return None
        return self.inner.find_spec(name, path, target)
    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        for dist in self.inner.find_distributions(context):
            if re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() not in DISTRIBUTIONS:
                yield dist
    def invalidate_caches(self):
        self.inner.invalidate_caches()

sys.meta_path[:] = [Hidden(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from cli.main import app
sys.argv = ["fedalign", *{args!r}]
app()
"""


def fedalign_without(hidden: list[dict[str, set[str]]], *args: str) -> subprocess.CompletedProcess[str]:
    modules = set().union(*(h["modules"] for h in hidden))
    distributions = set().union(*(h["distributions"] for h in hidden))
    code = textwrap.dedent(HIDE).format(modules=modules, distributions=distributions, args=list(args))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "FEDALIGN_CLI_CONFIG": "/nonexistent/cli.toml", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "args",
    [["serve"], ["db", "upgrade"], ["up"], ["openapi"], ["worker", "--aggregator"]],
    ids=lambda a: " ".join(a),
)
def test_a_server_command_without_the_server_extra_says_what_to_install(args: list[str]) -> None:
    said = fedalign_without([SERVER], *args)
    assert said.returncode == exit_codes.NOT_INSTALLED, said.stderr
    assert "'server' extra" in said.stderr and "pip install 'fedalign[server]'" in said.stderr
    assert "fastapi" in said.stderr  # what is missing, by name
    assert "Traceback" not in said.stderr


def test_a_node_without_the_server_extra_runs_its_commands(tmp_path: Path) -> None:
    helped = fedalign_without([SERVER], "node", "run", "--help")
    assert helped.returncode == 0 and "--token" in helped.stdout
    # No token: it gets as far as asking for one, past every import a node needs.
    started = fedalign_without([SERVER], "node", "run", "--data-dir", str(tmp_path))
    assert started.returncode == 2 and "--token" in started.stdout + started.stderr, started.stderr
    celery = fedalign_without([SERVER], "worker", "--node", "a")
    assert celery.returncode == exit_codes.NOT_INSTALLED and "'celery' extra" in celery.stderr


def test_the_base_install_runs_the_client_commands_and_names_the_node_extra_for_the_rest(
    tmp_path: Path,
) -> None:
    nothing = f"http://127.0.0.1:{_closed_port()}"
    register = ["node", "register", "f", "--name", "a", "--role", "source", "--dataset", "npz:/a"]
    for args in (["federations", "list"], register):
        said = fedalign_without([SERVER, NODE], *args, "--url", nothing, "--token", "t")
        # Past every import: it tried the server.
        assert said.returncode == exit_codes.UNREACHABLE, said.stderr
        assert "cannot reach the FedAlign API" in said.stderr
    config = tmp_path / "f.toml"
    config.write_text('[[nodes]]\nname = "a"\nrole = "source"\ndataset = "npz:/a"\n', encoding="utf-8")
    for args in (
        ["simulate", str(config)],
        ["node", "run"],
        ["data", "build"],
        ["init-model", str(config), "-o", "x"],
    ):
        said = fedalign_without([SERVER, NODE], *args)
        assert said.returncode == exit_codes.NOT_INSTALLED, said.stderr
        assert "pip install 'fedalign[node]'" in said.stderr and "torch" in said.stderr
    assert fedalign_without([SERVER, NODE], "--version").stdout.startswith("fedalign ")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
