"""Parameter transfer: a ~100 MB model up and down through the API, against a bare socket, on loopback.

Run with the project's interpreter::

    .venv/bin/python -m bench.transfer_bench --json bench/results/transfer.json

The model: the ``mlp`` architecture with ``hidden`` chosen so that its discriminator D (a hidden x hidden
linear layer and a hidden x 1 one) is ``--megabytes`` of float32 (5000 for 100 MB); no registered
architecture of the digits scale comes near that size, and D's manifest is checked like any other. The
bench starts ``fedalign serve`` (SQLite in a temporary directory, one torch thread), creates a federation
of two REST nodes, runs setup, and claims the source's discriminator step. Then, interleaved over
``--repeats`` rounds (the order rotated each time, so that load from other processes falls on every
method alike):

- API upload: ``PUT /api/v1/node/steps/{id}/uploads/D`` of ready safetensors bytes (one of three
  different payloads in turn, so every upload is new content) with httpx, as `workers.client.NodeClient`
  sends it; the server streams it to disk, fsyncs, validates it against the manifest and stores it;
- API download: ``GET /api/v1/node/artifacts/r0/init/D`` into memory (`NodeClient.download_bytes`);
- the node's view: `NodeClient.upload` (serialise a state dict, then PUT) and `NodeClient.download`
  (GET, then parse);
- bare socket, same bytes, same loopback, to a plain TCP server in another process: into memory (the
  reference for both directions), into a file with fsync (what a durable upload cannot avoid), and a
  file sent with ``sendfile`` (a download's floor from the page cache).

Figures: MB/s (10^6 bytes per second) per method (median and range over repeats), the API's rate as a
fraction of the bare socket's, and the API process's peak resident memory during each transfer above
its resident memory just before (its high-water mark reset through ``/proc/<pid>/clear_refs`` before
every transfer, read from ``VmHWM`` after). Where an upload's time goes is measured apart, in this
process, on the same bytes: hashing, writing and fsyncing, validating against the manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import torch

from backend.services.manifests import slot_manifest
from bench.harness import (
    REPO,
    Child,
    child_env,
    fedalign_command,
    free_port,
    stamped,
    start_child,
    stop_child,
    wait_ready,
    write_json,
)
from fedalign import params
from fedalign.config import FederationConfig
from fedalign.manifest import Manifest, is_floating
from fedalign.model_manifest import ModelManifest
from fedalign.torch_dtypes import SAFETENSORS_DTYPES

ADMIN_TOKEN = "transfer-bench-admin-token-0123456789"
MB = 1_000_000
CHUNK = 1 << 20
HEADER = struct.Struct("!cQ")  # command, length
START_TIMEOUT_S = 120.0


# ----------------------------------------------------------------------------------- bare socket server


def socket_server(payload_path: Path, sink_dir: Path) -> None:
    """One connection at a time: U (receive N bytes into memory), F (into a file, fsynced), D (send N
    bytes from memory), S (send the payload file with sendfile). Each answer to an upload is one byte."""
    payload = payload_path.read_bytes()
    buffer = bytearray(CHUNK)
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(server.getsockname()[1], flush=True)
        while True:
            conn, _ = server.accept()
            with conn:
                command, length = HEADER.unpack(_exactly(conn, HEADER.size))
                if command in (b"U", b"F"):
                    sink = open(sink_dir / "upload.part", "wb") if command == b"F" else None  # noqa: SIM115
                    view = memoryview(buffer)
                    left = length
                    while left:
                        got = conn.recv_into(view, min(CHUNK, left))
                        if not got:
                            raise ConnectionError("the client closed early")
                        if sink is not None:
                            sink.write(view[:got])
                        left -= got
                    if sink is not None:
                        sink.flush()
                        os.fsync(sink.fileno())
                        sink.close()
                    conn.sendall(b"k")
                elif command == b"D":
                    conn.sendall(memoryview(payload)[:length])
                elif command == b"S":
                    with open(payload_path, "rb") as fh:
                        conn.sendfile(fh)
                else:
                    return


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise ConnectionError("closed")
        data += part
    return data


class SocketClient:
    def __init__(self, port: int) -> None:
        self.port = port
        self.buffer = bytearray(CHUNK)

    def _connect(self, command: bytes, length: int) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port))
        conn.sendall(HEADER.pack(command, length))
        return conn

    def upload(self, data: bytes, durable: bool) -> None:
        with self._connect(b"F" if durable else b"U", len(data)) as conn:
            conn.sendall(data)
            if conn.recv(1) != b"k":
                raise ConnectionError("no acknowledgement")

    def download(self, length: int, sendfile: bool) -> None:
        """Into one reused buffer, as the server receives an upload: the transport alone."""
        view = memoryview(self.buffer)
        with self._connect(b"S" if sendfile else b"D", length) as conn:
            done = 0
            while done < length:
                got = conn.recv_into(view, min(CHUNK, length - done))
                if not got:
                    raise ConnectionError("closed early")
                done += got


# ---------------------------------------------------------------------------------------- the API


def mlp_config(megabytes: float) -> FederationConfig:
    hidden = round(math.sqrt(megabytes * MB / 4))
    return FederationConfig.model_validate(
        {
            "name": "transfer-bench",
            "architecture": "mlp",
            "model": {"num_classes": 3, "input_shape": [8], "hidden": hidden},
            "rounds": 1,
            "hyperparameters": {"local_steps": 1, "disc_steps": 1, "batch_size": 8},
            "nodes": [
                {"name": "source", "role": "source", "dataset": "npz:/nowhere/source.npz"},
                {"name": "target", "role": "target", "dataset": "npz:/nowhere/target.npz"},
            ],
        }
    )


def random_state(manifest: Manifest, seed: int) -> dict[str, torch.Tensor]:
    """Valid values for the manifest's shared tensors (random floats), different for every seed."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for spec in manifest.shared():
        dtype = SAFETENSORS_DTYPES[spec.dtype]
        if is_floating(spec.dtype):
            state[spec.name] = (0.01 * torch.randn(spec.shape, generator=generator)).to(dtype)
        else:
            state[spec.name] = torch.zeros(spec.shape, dtype=dtype)
    return state


@contextlib.contextmanager
def api(data_dir: Path, max_upload_bytes: int) -> Iterator[tuple[str, Child]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(
        FEDALIGN_DATA_DIR=str(data_dir),
        FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
        FEDALIGN_MAX_UPLOAD_BYTES=str(max_upload_bytes),
        FEDALIGN_LEASE_SECONDS="7200",  # the claimed step is held for the whole bench
    )
    port = free_port()
    argv = fedalign_command("serve", "--host", "127.0.0.1", "--port", str(port))
    child = start_child("api", argv, env, data_dir, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, [child], START_TIMEOUT_S)
        yield url, child
    finally:
        stop_child(child)


def claimed_step(url: str, config: FederationConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """The source node's auth header and its claimed discriminator task (setup done by both nodes)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = config.model_dump(mode="json")
    body.pop("nodes")
    with httpx.Client(base_url=url, timeout=300) as http:
        created = http.post("/api/v1/federations", json=body, headers=admin)
        created.raise_for_status()
        fid = created.json()["id"]
        join = {"Authorization": f"Bearer {created.json()['join_token']}"}
        auth: dict[str, dict[str, str]] = {}
        for n in config.nodes:
            r = http.post(
                f"/api/v1/federations/{fid}/nodes",
                json={"name": n.name, "role": n.role, "dataset": n.dataset},
                headers=join,
            )
            r.raise_for_status()
            auth[n.name] = {"Authorization": f"Bearer {r.json()['token']}"}
        http.post(f"/api/v1/federations/{fid}/start", headers=admin).raise_for_status()
        for name in auth:
            task = http.get("/api/v1/node/task", headers=auth[name])
            task.raise_for_status()
            samples = {"train": 100, "val": 10, "test": 10}
            done = http.post(
                task.json()["complete_url"], json={"metrics": {}, "samples": samples}, headers=auth[name]
            )
            done.raise_for_status()
        task = http.get("/api/v1/node/task", headers=auth["source"])
        if task.status_code != 200 or task.json()["kind"] != "discriminator":
            raise RuntimeError(
                f"expected the source's discriminator step, got {task.status_code} {task.text[:300]}"
            )
        return auth["source"], task.json()


# ------------------------------------------------------------------------------------------- memory


def proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    """Reset the process's resident high-water mark (VmHWM) to its current resident size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class RssSampler:
    """The process's anonymous and file-backed resident memory, sampled every 10 ms while it runs: a
    memory-mapped file's pages count as resident (and are reclaimable), heap does not go back."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for key in self.peak:
                self.peak[key] = max(self.peak[key], proc_status_kib(self.pid, key))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rotated(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


# ---------------------------------------------------------------------------------------- main


def upload_anatomy(
    data: bytes, manifest: Manifest, directory: Path, limit: int, repeats: int
) -> dict[str, float]:
    """An upload's server-side work on the same bytes, in this process: median seconds of each part."""
    parts: dict[str, list[float]] = {"sha256": [], "write_fsync": [], "validate": []}
    path = directory / "anatomy.safetensors"
    for _ in range(repeats):
        t = time.perf_counter()
        digest = hashlib.sha256()
        view = memoryview(data)
        for i in range(0, len(data), 65536):
            digest.update(view[i : i + 65536])
        parts["sha256"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with open(path, "wb") as fh:
            for i in range(0, len(data), 65536):
                fh.write(view[i : i + 65536])
            fh.flush()
            os.fsync(fh.fileno())
        parts["write_fsync"].append(time.perf_counter() - t)
        t = time.perf_counter()
        params.validate(path, manifest, limit)
        parts["validate"].append(time.perf_counter() - t)
        path.unlink()
    return {k: statistics.median(v) for k, v in parts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100.0, help="size of the model (D) in MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = mlp_config(args.megabytes)
    manifest = slot_manifest(ModelManifest.for_config(config), "D")
    states = [random_state(manifest, seed) for seed in range(3)]
    payloads = [params.to_bytes(s) for s in states]
    size = len(payloads[0])
    # The default limit (256 MiB) is above 100 MB; raised only when a larger model is asked for.
    limit = max(256 * 1024 * 1024, 2 * size)
    load_at_start = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedalign-transfer-") as tmp:
        root = Path(tmp)
        (root / "sink").mkdir()
        payload_path = root / "payload.safetensors"
        payload_path.write_bytes(payloads[0])
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.transfer_bench",
                "--socket-server",
                str(payload_path),
                str(root / "sink"),
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        try:
            assert server.stdout is not None
            sock = SocketClient(int(server.stdout.readline()))
            with api(root / "server", limit) as (url, child):
                pid = child.process.pid
                auth, task = claimed_step(url, config)
                upload_url = task["uploads"]["D"]
                download_url = task["downloads"]["D"]
                from workers.client import NodeClient

                http = httpx.Client(timeout=600)
                node = NodeClient(url, auth["Authorization"].removeprefix("Bearer "), http=http)
                octet = {**auth, "Content-Type": "application/octet-stream"}
                counter = {"upload": 0}
                sizes: dict[str, int] = {}

                def api_upload() -> None:
                    i = counter["upload"] = counter["upload"] + 1
                    r = http.put(upload_url, content=payloads[i % 3], headers=octet)
                    if r.status_code != 200 or not r.json().get("stored", True):
                        raise RuntimeError(f"upload answered {r.status_code} {r.text[:300]}")

                def api_upload_chunked() -> None:
                    # The same bytes as 1 MiB memoryview slices with the length declared: httpcore's sync
                    # write slices what is left of a bytes body after every send() (a copy each time),
                    # which a memoryview slice does not.
                    i = counter["upload"] = counter["upload"] + 1
                    data = memoryview(payloads[i % 3])
                    chunks = (data[k : k + CHUNK] for k in range(0, len(data), CHUNK))
                    headers = {**octet, "Content-Length": str(len(data))}
                    r = http.put(upload_url, content=chunks, headers=headers)
                    if r.status_code != 200:
                        raise RuntimeError(f"upload answered {r.status_code} {r.text[:300]}")

                def api_download() -> None:
                    sizes["download"] = len(node.download_bytes(download_url))

                def node_upload() -> None:
                    i = counter["upload"] = counter["upload"] + 1
                    node.upload(upload_url, states[i % 3])

                def node_download() -> None:
                    node.download(download_url)

                methods: dict[str, tuple[str, Callable[[], None], bool]] = {
                    "API upload (PUT)": ("up", api_upload, True),
                    "API upload (PUT), body in 1 MiB memoryview chunks": ("up", api_upload_chunked, True),
                    "API download (GET)": ("down", api_download, True),
                    "NodeClient.upload (serialise + PUT)": ("up", node_upload, True),
                    "NodeClient.download (GET + parse)": ("down", node_download, True),
                    "socket upload, into memory": ("up", lambda: sock.upload(payloads[0], False), False),
                    "socket upload, into a file + fsync": (
                        "up",
                        lambda: sock.upload(payloads[0], True),
                        False,
                    ),
                    "socket download, from memory": ("down", lambda: sock.download(size, False), False),
                    "socket download, sendfile": ("down", lambda: sock.download(size, True), False),
                }
                # Warm-up: the connection, the page cache, and the server's manifest of this config (built
                # once per process, at its first upload).
                api_upload()
                api_download()
                sock.download(size, False)
                rows: dict[str, dict[str, list[float]]] = {
                    m: {"s": [], "peak": [], "anon": [], "file": []} for m in methods
                }
                for repeat in range(args.repeats):
                    for name in rotated(list(methods), repeat):
                        _, run, on_api = methods[name]
                        reset_peak(pid)
                        before = {k: proc_status_kib(pid, k) for k in ("VmRSS", "RssAnon", "RssFile")}
                        with RssSampler(pid) as sampler:
                            t = time.perf_counter()
                            run()
                            rows[name]["s"].append(time.perf_counter() - t)
                        row = rows[name]
                        row["peak"].append((proc_status_kib(pid, "VmHWM") - before["VmRSS"]) * 1024 / MB)
                        row["anon"].append((sampler.peak["RssAnon"] - before["RssAnon"]) * 1024 / MB)
                        row["file"].append((sampler.peak["RssFile"] - before["RssFile"]) * 1024 / MB)
                    print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
                http.close()
                anatomy = upload_anatomy(payloads[1], manifest, root / "sink", limit, 3)
        finally:
            server.kill()
            server.wait()
    figures: dict[str, Any] = {}
    for name, r in rows.items():
        direction, _, on_api = methods[name]
        nbytes = sizes["download"] if name.startswith(("API download", "NodeClient.download")) else size
        rates = [nbytes / s / MB for s in r["s"]]
        figures[name] = {
            "direction": direction,
            "bytes": nbytes,
            "mb_per_s": statistics.median(rates),
            "mb_per_s_all": rates,
            "seconds_median": statistics.median(r["s"]),
            "api_peak_rss_above_before_mb": statistics.median(r["peak"]),
            "api_peak_rss_above_before_mb_max": max(r["peak"]),
            "api_peak_anon_above_before_mb": statistics.median(r["anon"]),
            "api_peak_file_backed_above_before_mb": statistics.median(r["file"]),
            "server_is_the_api": on_api,
        }
    up_ref = figures["socket upload, into memory"]["mb_per_s"]
    down_ref = figures["socket download, from memory"]["mb_per_s"]
    for f in figures.values():
        f["ratio_to_bare_socket"] = f["mb_per_s"] / (up_ref if f["direction"] == "up" else down_ref)
    result = {
        "config": {"megabytes": args.megabytes, "hidden": config.model.hidden, "repeats": args.repeats},
        "payload_bytes": size,
        "upload_limit_bytes": limit,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
            "platform": platform.platform(),
        },
        "wall_s": time.perf_counter() - started,
        "methods": figures,
        "upload_anatomy_s": anatomy,
    }
    print_markdown(result)
    if args.json:
        write_json(args.json, stamped(result))
    return 0


def print_markdown(r: dict[str, Any]) -> None:
    print(
        f"\n## Transfer: {r['payload_bytes'] / MB:.1f} MB safetensors (mlp, hidden {r['config']['hidden']}), "
        f"loopback, median of {r['config']['repeats']}\n"
    )
    print(
        "| method | MB/s | range | ratio to bare socket (same direction) | "
        "API peak RSS above before, MB (anonymous / file-backed, sampled) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, f in r["methods"].items():
        peak = (
            f"{f['api_peak_rss_above_before_mb']:.0f} ({f['api_peak_anon_above_before_mb']:.0f} / "
            f"{f['api_peak_file_backed_above_before_mb']:.0f})"
            if f["server_is_the_api"]
            else "–"
        )
        print(
            f"| {name} | {f['mb_per_s']:.0f} | {min(f['mb_per_s_all']):.0f}–{max(f['mb_per_s_all']):.0f} | "
            f"{f['ratio_to_bare_socket']:.2f} | {peak} |"
        )
    a = r["upload_anatomy_s"]
    print(
        "\nAn upload's server-side work on the same bytes, in one process (median s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in a.items())
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--socket-server":
        socket_server(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(main())
