"""The packaging step that puts the dashboard inside the wheel (pyproject.toml: [tool.setuptools.cmdclass]).

The dashboard is a TypeScript app built to static files (``frontend/dist``), which are not committed.
Building a wheel (``pip wheel .``, ``python -m build``, ``pip install .``) runs `BuildPy`, which

1. uses ``frontend/dist`` when it holds a build (``make setup`` makes one), else builds it with
   ``npm ci && npm run build`` when npm is on the PATH;
2. copies it into the wheel as the package data ``backend/dashboard_dist/``, where `backend.dashboard` looks
   first, so an installed wheel serves ``/`` with no checkout, Node or npm.

Without a build and without npm the wheel is built without the dashboard, saying so (the API then answers
``/`` with a page that says how to build it): a partner's node needs no dashboard. An editable install
(``pip install -e .``) copies nothing: it serves the checkout's ``frontend/dist``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"
DIST = FRONTEND / "dist"
# Where the built dashboard goes inside the wheel (backend.dashboard.PACKAGED_DIST reads it there).
PACKAGED = Path("backend") / "dashboard_dist"


def built(dist: Path = DIST) -> bool:
    return (dist / "index.html").is_file()


def build_dashboard() -> bool:
    """Build ``frontend/dist`` with npm when it is missing; whether a build is there afterwards."""
    if built():
        return True
    npm = shutil.which("npm")
    if npm is None or not (FRONTEND / "package-lock.json").is_file():
        return False
    for args in (["ci", "--no-audit", "--no-fund", "--loglevel=error"], ["run", "--silent", "build"]):
        subprocess.run([npm, *args], cwd=FRONTEND, check=True)
    return built()


class BuildPy(build_py):
    """setuptools' build_py, then the built dashboard copied in as package data."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not build_dashboard():
            self.announce(
                "warning: the wheel holds no dashboard: frontend/dist is not built and npm is not on the "
                "PATH (run `make setup`, or install Node.js 20.19+ and build again)",
                level=3,  # distutils' WARN: shown even when the build is quiet
            )
            return
        target = Path(self.build_lib) / PACKAGED
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(DIST, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        target = Path(self.build_lib) / PACKAGED
        if not self.editable_mode and target.is_dir():
            outputs += [str(p) for p in sorted(target.rglob("*")) if p.is_file()]
        return outputs
