"""Install with pip: the wheel built from a checkout holds the dashboard, and an installed wheel runs
``fedalign up`` and serves it, with no checkout and no Node.js on the PATH.

Offline: the wheel is built with this environment's setuptools (no build isolation) and installed without
its dependencies into a fresh virtual environment that reads them from this one's site-packages (a .pth
file), so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
from pathlib import Path

import httpx
from process_support import Processes, free_port, wait_ready, wait_until

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "frontend" / "dist"


def checkout_copy(dest: Path) -> Path:
    """The files of a checkout (tracked, and new ones git does not ignore) and the built dashboard, copied:
    the wheel is built from what a user's checkout holds, never from this one's build folders."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    shutil.copytree(DIST, dest / "frontend" / "dist")
    return dest


def without_node(path_dirs: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDALIGN_", "PIP_"))}
    env.update(PATH=os.pathsep.join(str(d) for d in path_dirs), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    assert shutil.which("node", path=env["PATH"]) is None and shutil.which("npm", path=env["PATH"]) is None
    return env


def test_the_wheel_holds_the_dashboard_and_an_installed_wheel_serves_it(tmp_path: Path) -> None:
    assert (DIST / "index.html").is_file(), "frontend/dist is not built: run `make setup`"
    source = checkout_copy(tmp_path / "checkout")
    wheels = tmp_path / "wheels"
    build_env = without_node([Path(sys.executable).parent])
    pip = [sys.executable, "-m", "pip"]
    quiet = ["--quiet", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "wheel", *quiet, "--no-build-isolation", "--wheel-dir", str(wheels), str(source)],
        env=build_env,
        check=True,
    )
    (wheel,) = wheels.glob("fedalign-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies: this environment's packages, after the fresh one's own (where the wheel goes).
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", *quiet, "--ignore-installed", str(wheel)],
        env=build_env,
        check=True,
    )

    run_env = without_node([venv / "bin"])
    elsewhere = tmp_path / "elsewhere"  # no checkout in the working directory either
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import backend.dashboard as d; print(d.__file__); print(d.default_dist())"],
        cwd=elsewhere,
        env=run_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's code and dashboard

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = Processes(tmp_path)
    up = processes.start(
        "up",
        [str(venv / "bin" / "fedalign"), "up", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
        run_env,
    )
    try:
        wait_ready(url, processes)
        wait_until(lambda: "Ctrl-C stops everything" in processes.log("up"), 60, "the banner")
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200, page.text[:500]
        assert page.text == (DIST / "index.html").read_text()
        deep_link = httpx.get(f"{url}/federations/any-id", timeout=30)  # the app's own routes
        assert deep_link.status_code == 200 and deep_link.text == page.text
    finally:
        os.kill(up.pid, signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0, processes.log("up")[-3000:]
