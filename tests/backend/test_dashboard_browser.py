"""The dashboard in real headless Chromium, against the real API and real Celery workers.

Real processes, as `fedalign up` runs them: the API (``fedalign serve``, serving the built dashboard from
frontend/dist) on SQLite with the filesystem broker, the server's aggregator worker, and one worker per node
started from the very command the page shows when the node is registered. A person's path through the
page: sign in, create a federation, register its nodes, start it, watch the discriminator chart gain a
point per round without a reload, pause and resume, download the model and the metrics, reload.
Nothing is mocked. A screenshot of the federation page goes to test-artifacts/.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, write_vectors
from process_support import (
    Processes,
    child_env,
    cli,
    free_port,
    wait_ready,
    wait_until,
)
from safetensors import safe_open

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROUNDS = 6
# name, role, data seed, domain shift
NODES = (("alpha", "source", 1, 0.0), ("beta", "source", 2, 0.3), ("omega", "target", 3, 1.5))
TIMEOUT_MS = 120_000


def missing(reason: str) -> None:
    pytest.skip(reason)  # under CI, tests/conftest.py turns a skip into a failure


@dataclass
class Stack:
    url: str
    tmp: Path
    processes: Processes
    admin: httpx.Client
    venv_bin: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not (DIST / "index.html").is_file():
        missing("the dashboard is not built: run `make setup` (npm ci and npm run build in frontend/)")
    tmp = tmp_path_factory.mktemp("dashboard")
    processes = Processes(tmp)
    server_env = child_env(
        FEDALIGN_DATA_DIR=str(tmp / "server"),
        FEDALIGN_BROKER_URL=f"filesystem://{tmp / 'broker'}",
        FEDALIGN_QUEUE_PREFIX=f"t{uuid.uuid4().hex[:10]}.",
        FEDALIGN_BROKER_POLL_S="0.05",
        FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
        FEDALIGN_SWEEP_INTERVAL_S="1",
        FEDALIGN_FRONTEND_DIR=str(DIST),
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        processes.start("api", cli("serve", "--port", str(port), "--log-level", "warning"), server_env)
        processes.start("aggregator", cli("worker", "--aggregator", "--threads", "1"), server_env)
        wait_ready(url, processes)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        ) as admin:
            yield Stack(url, tmp, processes, admin, Path(cli()[0]).parent)
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        missing(
            "Chromium is not installed: scripts/ensure-chromium.sh installs it (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Any, url: str, token: str = ADMIN_TOKEN) -> None:
    page.goto(url)
    page.get_by_label("Access token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def run_node_command(stack: Stack, name: str, command: str) -> None:
    """Run the command the page showed, as its user would paste it, with this checkout's `fedalign`."""
    env = child_env(PATH=f"{stack.venv_bin}{os.pathsep}{os.environ['PATH']}")
    # The node's own machine: its state goes to a folder of its own (the broker's folder comes in the
    # command itself), and one torch thread, since everything here shares two cores.
    env["FEDALIGN_NODE_STATE_DIR"] = str(stack.tmp / f"state-{name}")
    stack.processes.start(f"node-{name}", ["bash", "-c", f"{command} --threads 1 --device cpu"], env)


def federation_status(stack: Stack, federation_id: str) -> str:
    stack.processes.assert_alive()
    return str(stack.admin.get(f"/api/v1/federations/{federation_id}").json()["status"])


def metric_event_times(stack: Stack, federation_id: str) -> dict[int, dt.datetime]:
    """When the server recorded each round's federation-level disc_acc (the event's created_at)."""
    response = stack.admin.get(f"/api/v1/federations/{federation_id}/events", params={"follow": "false"})
    times = {}
    for line in response.text.splitlines():
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        payload = event["payload"]
        if event["type"] == "metrics" and payload["node"] is None and "disc_acc" in payload["metrics"]:
            created = dt.datetime.fromisoformat(event["created_at"])
            times[payload["round"]] = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
    return times


# Records, in the page, the wall-clock time at which the discriminator chart's point count changed.
WATCH_POINTS = """() => {
  window.__points = [];
  const seen = () => {
    const chart = document.querySelector('[data-testid="chart-disc-acc"]');
    const count = chart ? Number(chart.dataset.points) : -1;
    const last = window.__points[window.__points.length - 1];
    if (!last || last[0] !== count) window.__points.push([count, Date.now()]);
  };
  seen();
  // The whole page: React may replace the chart's element, which would silence an observer on it.
  new MutationObserver(seen).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['data-points'],
  });
}"""


POINTS = "() => Number(document.querySelector('[data-testid=\"chart-disc-acc\"]')?.dataset.points ?? -1)"


def wait_for_points(page: Any, at_least: int, exactly: bool = False, timeout_ms: int = TIMEOUT_MS) -> None:
    check = "===" if exactly else ">="
    page.wait_for_function(f"n => ({POINTS})() {check} n", arg=at_least, timeout=timeout_ms)


def test_a_person_runs_a_federation_from_the_dashboard(stack: Stack, page: Any) -> None:
    # Sign in: a wrong token is refused with a message, the right one opens the federations list.
    page.goto(stack.url)
    page.get_by_label("Access token", exact=True).fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").wait_for()
    sign_in(page, stack.url)
    assert ADMIN_TOKEN not in page.url
    assert page.evaluate("() => document.cookie") == "", "the session cookie must be HttpOnly"

    # Create a federation: the tiny mlp on 8-dimensional vectors, so that a round takes a moment.
    page.get_by_role("button", name="New federation").click()
    form = page.get_by_role("form", name="Create federation")
    form.get_by_label("Name", exact=True).fill("browser run")
    form.get_by_label("Architecture", exact=True).fill("mlp")  # a name or an import path: a text field
    form.get_by_label("Rounds", exact=True).fill(str(ROUNDS))
    form.locator("summary", has_text="Model").click()
    form.get_by_label("input_shape", exact=True).fill("8")
    form.get_by_label("num_classes", exact=True).fill("3")
    form.get_by_label("hidden", exact=True).fill("8")
    form.locator("summary", has_text="Hyperparameters").click()
    for name, value in (("local_steps", "2"), ("disc_steps", "2"), ("batch_size", "8")):
        form.get_by_label(name, exact=True).fill(value)
    form.get_by_role("button", name="Create federation").click()
    page.get_by_test_id("join-token").wait_for()
    page.get_by_role("link", name="Open browser run").click()
    page.wait_for_url("**/federations/*")
    federation_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    # Register the nodes; each one's worker runs from the command the page shows, once.
    for name, role, seed, shift in NODES:
        spec = write_vectors(stack.tmp / f"{name}.npz", seed, shift)
        register = page.get_by_role("form", name="Register a node")
        register.get_by_label("Node name", exact=True).fill(name)
        register.get_by_label("Role", exact=True).select_option(role)
        register.get_by_label("Dataset", exact=True).fill(spec)
        register.get_by_label("Mode", exact=True).select_option("celery")
        register.get_by_role("button", name="Register node").click()
        command = page.get_by_test_id("run-command").inner_text()
        assert page.get_by_test_id("node-token").inner_text() in command
        run_node_command(stack, name, command)
        page.get_by_role("button", name="Done").click()
    nodes = stack.admin.get(f"/api/v1/federations/{federation_id}/nodes").json()["items"]
    assert sorted(n["name"] for n in nodes) == ["alpha", "beta", "omega"]

    # Start, and watch the chart gain points from the live stream (no reload from here on).
    chart = page.get_by_test_id("chart-disc-acc")
    chart.wait_for()
    page.evaluate(WATCH_POINTS)
    page.get_by_role("button", name="Start").click()
    wait_for_points(page, 2)
    # The target's worker is frozen (SIGSTOP): the run cannot finish before the page pauses it, however
    # fast the remaining rounds would go. It is thawed once paused; its steps are sent again on resume.
    target = stack.processes.running["node-omega"]
    os.killpg(target.pid, signal.SIGSTOP)
    try:
        assert federation_status(stack, federation_id) == "running"
        page.get_by_role("button", name="Pause").click()
        wait_until(lambda: federation_status(stack, federation_id) == "paused", 30, "the pause")
    finally:
        os.killpg(target.pid, signal.SIGCONT)
    # The button appears with the paused status; it is enabled once the page's own pause request is done.
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name="Resume")).to_be_enabled(timeout=30_000)
    page.get_by_role("button", name="Resume").click()
    wait_until(lambda: federation_status(stack, federation_id) == "finished", TIMEOUT_MS / 1000, "the run")
    wait_for_points(page, ROUNDS, exactly=True)
    nodes = stack.admin.get(f"/api/v1/federations/{federation_id}/nodes").json()["items"]
    assert {n["state"] for n in nodes} == {"finished"}, "Celery nodes never poll, yet they are done"
    seen: list[list[int]] = page.evaluate("() => window.__points")
    counts = [count for count, _ in seen if count >= 0]
    assert counts == sorted(counts) and set(range(1, ROUNDS + 1)) <= set(counts), counts
    # The server recorded every round's metrics, each of which the page plotted live (above). How fast is
    # a benchmark's question, not this test's.
    recorded = metric_event_times(stack, federation_id)
    assert sorted(recorded) == list(range(1, ROUNDS + 1)), recorded

    # The published model and the metrics, as downloads.
    download_button = page.get_by_role("button", name="Download model")
    page.wait_for_function(
        "() => ![...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Download model')"
        ".disabled"
    )
    with page.expect_download() as model_download:
        download_button.click()
    model_path = stack.tmp / "model.safetensors"
    model_download.value.save_as(model_path)
    with safe_open(str(model_path), framework="pt") as model:
        names = set(model.keys())
        metadata = model.metadata() or {}
    assert names and all(n.startswith(("G.", "T.")) for n in names), names
    assert "fedalign.model_card" in metadata, "the download carries its card (fedalign predict reads it)"
    with page.expect_download() as csv_download:
        page.get_by_role("button", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text())))
    assert {int(r["round"]) for r in rows if r["node"] == "" and r.get("disc_acc")} == set(
        range(1, ROUNDS + 1)
    )

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-federation.png"), full_page=True)
    # A laptop's width: the page reflows instead of scrolling sideways.
    page.set_viewport_size({"width": 1280, "height": 800})
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(ARTIFACTS / "dashboard-federation-laptop.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1000})

    # A reload keeps the session (the cookie) and redraws every round from the server.
    page.reload()
    wait_for_points(page, ROUNDS, exactly=True)
    # Continue the finished run for one more round: the Celery workers take it, the charts grow by a round.
    page.get_by_label("More rounds").fill("1")
    page.get_by_role("button", name="Continue").click()
    wait_for_points(page, ROUNDS + 1, exactly=True)
    wait_until(
        lambda: federation_status(stack, federation_id) == "finished", TIMEOUT_MS / 1000, "the extension"
    )
    # Compare it with a baseline that has no rounds yet: one line per federation with points.
    baseline = stack.admin.post(f"/api/v1/federations/{federation_id}/clone", json={"algorithm": "fedavg"})
    assert baseline.status_code == 201, baseline.text
    page.goto(f"{stack.url}/compare?ids={federation_id},{baseline.json()['id']}")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"chart-compare-target-acc\"]')?.dataset.lines === '1'"
    )
    # The settings in which they differ: the algorithm and the name, each federation's value in its column.
    diff = page.get_by_test_id("settings-diff")
    algorithm = diff.get_by_role("row", name="algorithm")
    algorithm.get_by_role("cell").last.wait_for()  # drawn once both federations' configs are in
    assert algorithm.get_by_role("cell").all_inner_texts() == ["fedalign", "fedavg"]
    assert diff.get_by_role("row", name="rounds").count() == 0  # the same in both: not listed
    # Which to deploy without a label: the run has reported its target's information, the baseline not yet.
    choice = page.get_by_test_id("label-free-choice")
    expect(choice).to_contain_text(f"Waiting for {baseline.json()['name']} to report target_information")
    assert choice.get_attribute("data-chosen") is None
    # A run whose target holds other data: the two runs' scores are not compared at all.
    settings = {**baseline.json()["config"], "name": "elsewhere"}
    elsewhere = stack.admin.post("/api/v1/federations", json=settings)
    assert elsewhere.status_code == 201, elsewhere.text
    other = {"name": "far", "role": "target", "dataset": "npz:/elsewhere.npz", "mode": "rest"}
    registered = stack.admin.post(f"/api/v1/federations/{elsewhere.json()['id']}/nodes", json=other)
    assert registered.status_code == 201, registered.text
    page.goto(f"{stack.url}/compare?ids={federation_id},{elsewhere.json()['id']}")
    expect(choice).to_contain_text("adapt to different target data", timeout=TIMEOUT_MS)
    expect(choice).to_contain_text("npz:/elsewhere.npz")
    page.goto(f"{stack.url}/compare?ids={federation_id},{baseline.json()['id']}")
    # Any metric either reports can be drawn: task_loss joins the charts, and the URL keeps the choice. The
    # box is checked from the URL, which the router updates after the click (not within it): `check()` would
    # read the box too early, so the test clicks and waits for the box, as a person would see it.
    task_loss = page.get_by_role("checkbox", name="task_loss")
    task_loss.click()
    expect(task_loss).to_be_checked(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"chart-compare-task-loss\"]')?.dataset.lines === '1'"
    )
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert query["metrics"] == ["target_acc,disc_acc,task_loss"]

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Access token", exact=True).wait_for()


def write_unlabelled(path: Path, seed: int, shift: float, n: int = 40, dim: int = 8) -> str:
    """A target's npz with no labels at all: 'x' and 'x_val', no 'y', no labelled evaluation split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, dim)) * 0.5 + shift).astype(np.float32)
    x_val = (rng.normal(size=(n // 4, dim)) * 0.5 + shift).astype(np.float32)
    np.savez(path, x=x, x_val=x_val)
    return f"npz:{path}"


def rest_node(stack: Stack, label: str, token: str, **env: str) -> None:
    """A node on its own machine, polling the API (`fedalign node run`)."""
    node_env = child_env(FEDALIGN_DATA_DIR=str(stack.tmp / label), FEDALIGN_NODE_TOKEN=token, **env)
    argv = cli(
        "node", "run", "--api", stack.url, "--threads", "1", "--device", "cpu", "--poll-interval", "0.05"
    )
    stack.processes.start(label, argv, node_env)


def create_with_nodes(
    stack: Stack,
    settings: dict[str, Any],
    datasets: dict[str, str],
    organisations: dict[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    created = stack.admin.post("/api/v1/federations", json=settings)
    assert created.status_code == 201, created.text
    fid = created.json()["id"]
    tokens = {}
    for name, role, _, _ in NODES:
        body = {"name": name, "role": role, "dataset": datasets[name], "mode": "rest"}
        if organisations and name in organisations:
            body["organisation"] = organisations[name]
        registered = stack.admin.post(f"/api/v1/federations/{fid}/nodes", json=body)
        assert registered.status_code == 201, registered.text
        tokens[name] = registered.json()["token"]
    return fid, tokens


def test_a_viewer_sees_its_organisations_federation_and_no_control_until_its_token_is_revoked(
    stack: Stack, page: Any
) -> None:
    from api_support import tiny_settings

    datasets = {name: f"npz:/data/{name}.npz" for name, _, _, _ in NODES}
    create_with_nodes(stack, tiny_settings(name="acme takes part"), datasets, {"omega": "acme"})
    create_with_nodes(stack, tiny_settings(name="zeta only"), datasets, dict.fromkeys(datasets, "zeta"))
    issued = stack.admin.post(
        "/api/v1/tokens", json={"name": "acme", "role": "viewer", "organisation": "acme"}
    )
    assert issued.status_code == 201, issued.text
    viewer = issued.json()

    sign_in(page, stack.url, viewer["token"])
    assert page.get_by_test_id("signed-in-as").inner_text() == "viewer · acme"
    page.get_by_role("row", name=re.compile("acme takes part")).wait_for()
    assert page.get_by_role("row", name=re.compile("zeta only")).count() == 0
    assert page.get_by_role("button", name="New federation").count() == 0
    assert page.get_by_role("button", name=re.compile("^(Clone|Delete) ")).count() == 0

    page.get_by_role("link", name="acme takes part").click()
    page.get_by_role("heading", name=re.compile("acme takes part")).wait_for()
    page.get_by_role("row", name=re.compile("omega")).wait_for()  # its own organisation's node
    assert page.get_by_role("row", name=re.compile("alpha")).count() == 0  # not another's
    for control in ("Start", "Cancel", "Rotate join token", "Register node"):
        assert page.get_by_role("button", name=control).count() == 0, control
    assert page.get_by_role("button", name=re.compile("token")).count() == 0
    assert page.get_by_role("group", name="Run controls").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-viewer.png"), full_page=True)

    # Revoking the token ends the session at once: the next request signs the page out.
    assert stack.admin.delete(f"/api/v1/tokens/{viewer['id']}").status_code == 204
    page.reload()
    page.get_by_label("Access token", exact=True).wait_for()
    assert page.get_by_role("link", name="acme takes part").count() == 0


def test_a_coordinator_rotates_a_nodes_token_from_the_dashboard(stack: Stack, page: Any) -> None:
    from api_support import tiny_settings

    datasets = {name: f"npz:/data/{name}.npz" for name, _, _, _ in NODES}
    fid, tokens = create_with_nodes(stack, tiny_settings(name="rotating"), datasets)
    sign_in(page, stack.url)
    page.goto(f"{stack.url}/federations/{fid}")
    page.get_by_role("button", name="Rotate alpha's token").click()
    rotated = page.get_by_test_id("rotated-token-alpha").inner_text()
    assert rotated.startswith("fa_node_") and rotated != tokens["alpha"]
    old = httpx.get(
        f"{stack.url}/api/v1/node/federation", headers={"Authorization": f"Bearer {tokens['alpha']}"}
    )
    new = httpx.get(f"{stack.url}/api/v1/node/federation", headers={"Authorization": f"Bearer {rotated}"})
    assert (old.status_code, new.status_code) == (401, 200)
    page.get_by_role("button", name="Rotate join token").click()
    assert page.get_by_test_id("rotated-join-token").inner_text().startswith("fa_join_")


def test_a_run_whose_target_has_no_labels_says_so_in_the_target_accuracy_chart(
    stack: Stack, page: Any
) -> None:
    from api_support import tiny_settings

    datasets = {
        name: (
            write_unlabelled(stack.tmp / f"unlabelled-{name}.npz", seed, shift)
            if role == "target"
            else write_vectors(stack.tmp / f"labelled-{name}.npz", seed, shift)
        )
        for name, role, seed, shift in NODES
    }
    fid, tokens = create_with_nodes(stack, tiny_settings(name="no target labels"), datasets)
    assert stack.admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
    for name, token in tokens.items():
        rest_node(stack, f"unlabelled-{name}", token)
    wait_until(lambda: federation_status(stack, fid) == "finished", TIMEOUT_MS / 1000, "the unlabelled run")

    sign_in(page, stack.url)
    page.goto(f"{stack.url}/federations/{fid}")
    unavailable = page.get_by_test_id("chart-target-acc-unavailable")
    unavailable.wait_for()
    assert "No labelled evaluation split" in unavailable.inner_text()
    wait_for_points(page, 2, exactly=True)  # every other chart has its rounds
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-no-target-labels.png"), full_page=True)
    # The list shows no target accuracy for it (never a made-up 0), and its discriminator's.
    page.goto(stack.url)
    row = page.get_by_role("row", name=re.compile("no target labels"))
    row.wait_for()
    cells = row.get_by_role("cell").all_inner_texts()
    assert "—" in cells and not any(c.strip() in ("0", "0.0%", "0.000") for c in cells), cells


def test_a_node_whose_plugin_does_not_match_shows_failed_with_the_first_difference(
    stack: Stack, page: Any, test_plugins: Path
) -> None:
    from api_support import tiny_settings

    from fedalign.config import FederationConfig
    from fedalign.initial_parameters import build_initial

    settings = tiny_settings(
        name="mismatched plug-in", architecture="fedalign_test_plugins.architectures:vector_net"
    )
    datasets = {
        name: write_vectors(stack.tmp / f"plugin-{name}.npz", seed, shift) for name, _, seed, shift in NODES
    }
    fid, tokens = create_with_nodes(stack, settings, datasets)
    initial = build_initial(FederationConfig.model_validate(settings))  # the creator's `fedalign init-model`
    base = f"/api/v1/federations/{fid}/initial-model"
    assert stack.admin.put(f"{base}/manifest", json=initial.manifest.to_json()).status_code == 200
    octets = {"Content-Type": "application/octet-stream"}
    assert (
        stack.admin.put(f"{base}/parameters", content=initial.to_bytes(), headers=octets).status_code == 200
    )
    assert stack.admin.post(f"/api/v1/federations/{fid}/start").status_code == 200

    sign_in(page, stack.url)
    page.goto(f"{stack.url}/federations/{fid}")
    page.get_by_role("heading", name="Nodes").wait_for()
    # beta's machine has another copy of the plug-in, with a wider layer.
    rest_node(
        stack,
        "mismatched-beta",
        tokens["beta"],
        PYTHONPATH=str(test_plugins),
        FEDALIGN_TEST_PLUGIN_VARIANT="wider",
    )
    failure = page.get_by_test_id("node-failure-beta")
    failure.wait_for(timeout=TIMEOUT_MS)  # live, from the step_failed event: no reload
    expected = "tensor G.0.weight has shape [12, 8] in the federation, [24, 8] on this node"
    assert expected in failure.inner_text()
    assert "failed" in page.get_by_role("row", name=re.compile(r"^beta \S+ source")).inner_text()
    page.get_by_role("alert").filter(has_text="Stalled").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-failed-node.png"), full_page=True)
