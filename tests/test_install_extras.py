"""What each install of the distribution pulls in, resolved by pip itself in a fresh virtual environment.

A partner's node installs ``fedalign[node]`` and must get nothing of the coordinator's server (FastAPI,
SQLAlchemy, Alembic, the PostgreSQL driver, Celery...). pip resolves the install offline: every
distribution of this environment is offered as a stub wheel (its real metadata, so its real requirements,
and no files), the project's own from pyproject.toml, with ``--no-index``. So the resolution is pip's,
against the versions this environment runs, with no network; what it would install is listed in the
failure message.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirement_names(extra: str) -> set[str]:
    """The distributions an extra of pyproject.toml names directly (its own extras' too)."""
    names: set[str] = set()
    for spec in PROJECT["optional-dependencies"][extra]:
        requirement = Requirement(spec)
        if canonicalize_name(requirement.name) == "fedalign":
            for inner in requirement.extras:
                names |= requirement_names(inner)
        else:
            names.add(canonicalize_name(requirement.name))
    return names


# The coordinator's side: what a node never needs (Celery only when the partner runs Celery workers).
SERVER_SIDE = (requirement_names("server") | requirement_names("celery")) - requirement_names("node")
# Pulled in by the server side's own requirements: starlette under FastAPI, kombu under Celery, ...
SERVER_TRANSITIVE = {"starlette", "kombu", "redis", "billiard", "vine", "mako", "psycopg-binary", "greenlet"}


def project_metadata() -> str:
    """The core metadata pip would read from a wheel of this project (PEP 621 -> Requires-Dist)."""
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {PROJECT['name']}",
        f"Version: {PROJECT['version']}",
        f"Requires-Python: {PROJECT['requires-python']}",
    ]
    lines += [f"Requires-Dist: {spec}" for spec in PROJECT["dependencies"]]
    for extra, specs in PROJECT["optional-dependencies"].items():
        lines.append(f"Provides-Extra: {extra}")
        for spec in specs:
            requirement = Requirement(spec)
            marker = f'extra == "{extra}"'
            if requirement.marker is not None:
                marker = f"({requirement.marker}) and {marker}"
                requirement.marker = None
            lines.append(f"Requires-Dist: {requirement}; {marker}")
    return "\n".join(lines) + "\n"


WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: fedalign-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def write_stub_wheel(folder: Path, name: str, version: str, metadata: str) -> None:
    """A wheel that installs nothing but declares ``metadata``: enough for pip's resolver."""
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"
    info = f"{stem}.dist-info"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", metadata)
        wheel.writestr(f"{info}/WHEEL", WHEEL_FILE)
        wheel.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        metadata = dist.read_text("METADATA")
        if name == "fedalign" or name in seen or metadata is None:
            continue
        seen.add(name)
        write_stub_wheel(folder, name, dist.version, metadata)
    write_stub_wheel(folder, "fedalign", PROJECT["version"], project_metadata())
    return folder


def resolve(wheelhouse: Path, tmp_path: Path, target: str) -> dict[str, str]:
    """What ``pip install <target>`` would install into a new, empty virtual environment: name -> version."""
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--isolated",  # no pip.conf, no PIP_* variables: the registry is never asked
            "--python",
            str(env / "bin" / "python"),
            "install",
            "--dry-run",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--report",
            str(report),
            target,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"pip could not resolve {target}:\n{result.stdout}\n{result.stderr}"
    installed = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in installed}


def listing(installed: dict[str, str]) -> str:
    return ", ".join(f"{name}=={version}" for name, version in sorted(installed.items()))


def test_the_node_extra_installs_what_a_node_needs_and_nothing_of_the_server(
    wheelhouse: Path, tmp_path: Path
) -> None:
    installed = resolve(wheelhouse, tmp_path, "fedalign[node]")
    server = sorted((SERVER_SIDE | SERVER_TRANSITIVE) & set(installed))
    assert not server, f"fedalign[node] pulls server-side {server}; it installs: {listing(installed)}"
    needed = {"torch", "numpy", "safetensors", "pydantic", "httpx", "typer", "rich", "cryptography", "opacus"}
    assert needed <= set(installed), f"missing {sorted(needed - set(installed))}: {listing(installed)}"


def test_the_base_install_is_the_command_lines_client_without_torch(wheelhouse: Path, tmp_path: Path) -> None:
    installed = resolve(wheelhouse, tmp_path, "fedalign")
    heavy = sorted(({"torch", "numpy", "scikit-learn", "opacus"} | SERVER_SIDE) & set(installed))
    assert not heavy, f"the base install pulls {heavy}: {listing(installed)}"
    assert {"httpx", "typer", "rich", "pydantic"} <= set(installed)


def test_the_server_extra_brings_the_server_stack_and_the_node_side(wheelhouse: Path, tmp_path: Path) -> None:
    """The same resolution sees the server's distributions where they belong (the check above can fail)."""
    installed = resolve(wheelhouse, tmp_path, "fedalign[server]")
    assert set(installed) >= SERVER_SIDE, f"missing {sorted(SERVER_SIDE - set(installed))}"
    assert requirement_names("node") <= set(installed)
