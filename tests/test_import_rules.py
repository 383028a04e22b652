"""The layout's import rules hold: `fedalign` is the method alone, `workers` and `backend` never import each
other, `messaging` imports neither side (DESIGN.md, "Layout").

The rules are import-linter contracts in pyproject.toml ([tool.importlinter]); import-linter reads every
module of each package, function-local and TYPE_CHECKING imports included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"

# One module per rule, each breaking it; the imports sit inside functions, where the old hand-kept
# rules did not look.
BREAKING = {
    "fedalign/__init__.py": "",
    "fedalign/method.py": "def load():\n    import sqlalchemy\n",
    "workers/__init__.py": "",
    "workers/node.py": "def aggregate():\n    from backend import settings\n",
    "backend/__init__.py": "",
    "backend/settings.py": "",
    "backend/server.py": "def run():\n    from workers import node\n",
    "messaging/__init__.py": "",
    "messaging/contract.py": "def names():\n    import backend.settings\n",
    "cli/__init__.py": "",
}


def test_every_package_keeps_the_layouts_import_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_each_rule_refuses_an_import_that_breaks_it(tmp_path: Path) -> None:
    contracts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    for relative, text in BREAKING.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    # Another process, where these packages shadow the real ones (first on the path).
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"Contracts: 0 kept, {len(contracts)} broken." in run.stdout, run.stdout
    for contract in contracts:
        assert f"{contract['name']} BROKEN" in run.stdout, contract["name"]
