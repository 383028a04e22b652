"""``fedalign up`` as a new user meets it: one command, a fresh data directory, the demo federation started
through the API and run to its end by the worker it brought up; Ctrl-C stops everything. What it prints on
the way is FedAlign's own: no third-party warning, banner or shutdown line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from process_support import RUN_TIMEOUT_S, Processes, child_env, cli, free_port, wait_ready, wait_until

from fedalign.data.cache import default_cache_dir

DEMO_ROUNDS = 2

# What a first run of `fedalign up` may print: its own lines (the banner, the API's and the worker's start,
# "stopping") and FedAlign's log records (messaging.logs.TextFormatter, loggers under "fedalign"). Anything
# else (a Python warning, setuptools' notices, Celery's banner, root warning or shutdown line, kombu's
# warnings) is a third party's line, which a first run must not show.
PRODUCT_LINES = re.compile(
    "|".join(
        [
            r"generated an admin token; it is in .*",
            r"admin token: in .*",
            r"FedAlign API on http://\S+ \(docs at /docs\); database \S+",
            r"FedAlign is up: the dashboard on .*",
            r"sign in with the admin token \S+",
            r"  \(kept in .*\)",
            r"demo federation \S+: digits -> MNIST-M, .*",
            r"start the demo federation with Start on its page, or:",
            r"  curl -X POST .*",
            r"the demo federation is running",
            r"follow it live: .*",
            r"Ctrl-C stops everything\.",
            r"worker for .*",
            r"stopping",
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|CRITICAL) fedalign(\.[\w.]+)?: .*",
        ]
    )
)


def foreign_lines(output: str) -> list[str]:
    """The lines of ``output`` that FedAlign did not write."""
    return [line for line in output.splitlines() if line.strip() and not PRODUCT_LINES.fullmatch(line)]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_fedalign_up_runs_the_demo_federation_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "fedalign"
    data_dir.mkdir()
    cached = default_cache_dir()
    if cached.is_dir():  # the digit domains are built once per machine (seconds); reuse them
        (data_dir / "datasets").symlink_to(cached)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = Processes(tmp_path)
    up = processes.start(
        "up",
        cli("up", "--data-dir", str(data_dir), "--port", str(port), "--demo-rounds", str(DEMO_ROUNDS)),
        child_env(),
    )
    try:
        wait_ready(url, processes)
        wait_until(lambda: (data_dir / "demo-nodes.json").exists(), 60, "the demo federation")
        wait_until(lambda: "Ctrl-C stops everything" in processes.log("up"), 60, "the banner")
        banner = processes.log("up")
        admin_token = (data_dir / "admin_token").read_text().strip()
        assert url in banner and admin_token in banner
        demo = json.loads((data_dir / "demo-nodes.json").read_text())
        assert (data_dir / "demo-nodes.json").stat().st_mode & 0o077 == 0, "node tokens readable by others"

        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
        fid = demo["federation_id"]
        nodes = admin.get(f"/api/v1/federations/{fid}/nodes").json()["items"]
        assert sorted((n["name"], n["role"], n["mode"]) for n in nodes) == [
            ("mnist", "source", "celery"),
            ("mnistm", "target", "celery"),
            ("optdigits", "source", "celery"),
            ("syn", "source", "celery"),
        ]
        assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200

        def finished() -> bool:
            processes.assert_alive()
            return admin.get(f"/api/v1/federations/{fid}").json()["status"] in ("finished", "failed")

        wait_until(finished, RUN_TIMEOUT_S, "the demo federation to finish", poll_s=0.5)
        assert admin.get(f"/api/v1/federations/{fid}").json()["status"] == "finished"
        series = admin.get(f"/api/v1/federations/{fid}/metrics").json()["series"]
        target_acc = next(s for s in series if s["name"] == "target_acc" and s["node"] is None)
        assert [p["round"] for p in target_acc["points"]] == [DEMO_ROUNDS]
        admin.close()
    finally:
        os.kill(up.pid, signal.SIGINT)  # Ctrl-C
        code = up.wait(timeout=60)
    assert code == 0, processes.log("up")[-3000:]
    output = processes.log("up")
    assert foreign_lines(output) == [], output[-3000:]
    # Run as root (CI, containers), the worker says so once, in its own words instead of Celery's warning.
    assert output.count("running as root") == (1 if os.geteuid() == 0 else 0), output[-3000:]
    assert processes_mentioning(str(data_dir / "demo-nodes.json")) == [], "the worker outlived fedalign up"
    try:
        httpx.get(f"{url}/healthz", timeout=2)
        raise AssertionError("the API outlived fedalign up")
    except httpx.TransportError:
        pass


@pytest.mark.parametrize(
    ("command", "env", "says"),
    [
        ("up", {"FEDALIGN_ADMIN_TOKEN": ""}, "FEDALIGN_ADMIN_TOKEN is set but empty"),
        ("serve", {"FEDALIGN_ADMIN_TOKEN": ""}, "FEDALIGN_ADMIN_TOKEN is set but empty"),
        ("up", {"FEDALIGN_ADMIN_TOKEN": "x"}, "it must have at least 32"),
        ("serve", {"FEDALIGN_DATABASE_URL": ""}, "FEDALIGN_DATABASE_URL is set but empty"),
    ],
)
def test_unusable_settings_stop_the_command_with_a_message_not_a_traceback(
    tmp_path: Path, command: str, env: dict[str, str], says: str
) -> None:
    data_dir = tmp_path / "fedalign"
    done = subprocess.run(
        [*cli(command), "--port", str(free_port())],
        env=child_env(FEDALIGN_DATA_DIR=str(data_dir), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert says in " ".join(output.split()), output
    assert "Traceback" not in output, output
    assert not (data_dir / "fedalign.db").exists(), "the command went on to create the database"
