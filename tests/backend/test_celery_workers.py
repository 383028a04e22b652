"""A served federation on real Celery workers, end to end, on both brokers.

Real processes: the API (``fedalign serve``), the server's aggregator worker and one worker per node
(``fedalign worker --node``), each node with a data directory of its own. Redis (a database number of its
own, flushed, with queue names unique to the run) with PostgreSQL, and the embedded default's filesystem
transport with SQLite. Three federations of 3 sources and 1 target run side by side: one per topology, and
one with secure aggregation (masked uploads, keys and seed reveals through the API, unmasked by the
aggregator worker). The nodes reach the API only through a recording proxy, so the tests see every byte
they send.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_TOKEN, tiny_settings, write_vectors
from process_support import (
    REDIS_URL,
    RUN_TIMEOUT_S,
    Processes,
    Recorded,
    RecordingProxy,
    child_env,
    cli,
    flush_redis,
    free_port,
    redis_or_skip,
    scratch_postgres,
    wait_ready,
    wait_until,
)
from test_api_end_to_end import served_rounds

from backend.services.manifests import slot_manifest
from fedalign import params, secagg
from fedalign.config import FederationConfig
from fedalign.metrics import REPORTED_METRICS
from fedalign.model_manifest import ModelManifest
from fedalign.secagg_limits import SHARE_BYTES, ciphertext_bytes
from fedalign.simulate import simulate
from messaging import multipart
from workers import client

TOPOLOGIES = ("server", "target")
SECURE = "secure"  # a third federation: secure aggregation, aggregated by the server's aggregator worker
SETTINGS = {
    "server": {"aggregator": "server"},
    "target": {"aggregator": "target"},
    SECURE: {"aggregator": "server", "secure_aggregation": True},
}
# name, role, data seed, domain shift
NODES = (
    ("alpha", "source", 1, 0.0),
    ("beta", "source", 2, 0.3),
    ("gamma", "source", 4, 0.6),
    ("omega", "target", 3, 1.5),
)
RECEIVED = re.compile(r"received step (\d+) for node (\S+)")


@dataclass
class ServedRun:
    broker: str
    configs: dict[str, FederationConfig]
    rounds: dict[str, dict[int, dict[str, Any]]]
    status: dict[str, str]
    models: dict[str, bytes]
    node_ids: dict[tuple[str, str], str]
    # node token -> (topology, node name)
    tokens: dict[str, tuple[str, str]]
    records: list[Recorded]
    worker_logs: dict[tuple[str, str], str]
    # Everything the run wrote: every process's log, the server's and each node's data directory, the
    # filesystem broker's folder; and every secret it handed out (admin, join and node tokens).
    tmp: Path
    secrets: list[str]


@pytest.fixture(scope="module", params=["redis", "filesystem"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServedRun:
    broker: str = request.param
    tmp = tmp_path_factory.mktemp(f"celery-{broker}")
    specs = {name: write_vectors(tmp / f"{name}.npz", seed, shift) for name, _, seed, shift in NODES}
    prefix = f"t{uuid.uuid4().hex[:10]}."
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            redis_or_skip()
            flush_redis()
            stack.callback(flush_redis)
            database_url = stack.enter_context(scratch_postgres())
            broker_url = REDIS_URL
        else:
            database_url = f"sqlite:///{tmp / 'server' / 'fedalign.db'}"
            broker_url = f"filesystem://{tmp / 'broker'}"
        processes = Processes(tmp)
        stack.callback(processes.stop)
        shared = {
            "FEDALIGN_BROKER_URL": broker_url,
            "FEDALIGN_QUEUE_PREFIX": prefix,
            "FEDALIGN_BROKER_POLL_S": "0.05",
        }
        server_env = child_env(
            **shared,
            FEDALIGN_DATA_DIR=str(tmp / "server"),
            FEDALIGN_DATABASE_URL=database_url,
            FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
            FEDALIGN_SWEEP_INTERVAL_S="1",
            # Every average on the aggregator worker, even these tiny models' (the API would average them
            # itself): this is the aggregator queue's test.
            FEDALIGN_INLINE_AGGREGATION_MAX_BYTES="0",
        )
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        processes.start("api", cli("serve", "--port", str(port), "--log-level", "warning"), server_env)
        processes.start("aggregator", cli("worker", "--aggregator", "--threads", "1"), server_env)
        wait_ready(api_url, processes)
        proxy = stack.enter_context(RecordingProxy(api_url))
        admin = stack.enter_context(
            httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
        )

        federations: dict[str, str] = {}
        node_ids: dict[tuple[str, str], str] = {}
        tokens: dict[str, tuple[str, str]] = {}
        join_tokens: list[str] = []
        for topology, overrides in SETTINGS.items():
            created = admin.post(
                "/api/v1/federations", json=tiny_settings(name=f"celery-{topology}", **overrides)
            )
            assert created.status_code == 201, created.text
            federations[topology] = created.json()["id"]
            join_tokens.append(created.json()["join_token"])
            for name, role, _, _ in NODES:
                node = admin.post(
                    f"/api/v1/federations/{federations[topology]}/nodes",
                    json={"name": name, "role": role, "dataset": specs[name], "mode": "celery"},
                )
                assert node.status_code == 201, node.text
                node_ids[topology, name] = node.json()["id"]
                tokens[node.json()["token"]] = (topology, name)
        for token, (topology, name) in tokens.items():
            env = child_env(
                **shared, FEDALIGN_DATA_DIR=str(tmp / f"node-{topology}-{name}"), FEDALIGN_NODE_TOKEN=token
            )
            argv = cli("worker", "--node", name, "--api", proxy.url, "--threads", "1", "--device", "cpu")
            processes.start(f"{topology}-{name}", argv, env)
        for fid in federations.values():
            assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200

        def done() -> bool:
            processes.assert_alive()
            return all(
                admin.get(f"/api/v1/federations/{fid}").json()["status"]
                in ("finished", "failed", "cancelled")
                for fid in federations.values()
            )

        wait_until(done, RUN_TIMEOUT_S, "both federations to finish", poll_s=0.5)
        configs = {
            topology: FederationConfig.model_validate(
                {
                    **tiny_settings(name=f"celery-{topology}", **overrides),
                    "nodes": [{"name": n, "role": r, "dataset": specs[n]} for n, r, _, _ in NODES],
                }
            )
            for topology, overrides in SETTINGS.items()
        }
        served_run = ServedRun(
            broker=broker,
            configs=configs,
            rounds={t: served_rounds_http(admin, fid) for t, fid in federations.items()},
            status={
                t: admin.get(f"/api/v1/federations/{fid}").json()["status"] for t, fid in federations.items()
            },
            models={
                t: admin.get(f"/api/v1/federations/{fid}/model").content for t, fid in federations.items()
            },
            node_ids=node_ids,
            tokens=tokens,
            records=list(proxy.records),
            worker_logs={key: processes.log(f"{key[0]}-{key[1]}") for key in node_ids},
            tmp=tmp,
            secrets=[ADMIN_TOKEN, *join_tokens, *tokens],
        )
    # Out of the stack: every process has stopped, its logs and files are complete.
    return served_run


def served_rounds_http(admin: httpx.Client, federation_id: str) -> dict[int, dict[str, Any]]:
    class Adapter:  # served_rounds reads through the in-process test API's `ok`
        def ok(self, method: str, path: str) -> Any:
            response = admin.request(method, path)
            assert response.status_code == 200, response.text
            return response.json()

    return served_rounds(Adapter(), federation_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_a_federation_on_celery_workers_gives_the_simulators_metrics_exactly(
    served: ServedRun, topology: str
) -> None:
    assert served.status[topology] == "finished"
    reference = simulate(served.configs[topology])
    expected = {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    # Exact: every process runs one torch thread on the CPU, as the simulation here does, and every random
    # choice derives from the seed, the node, the round and the phase.
    assert served.rounds[topology] == expected
    assert params.from_bytes(served.models[topology]).keys() == reference.models["target_model"].keys()
    assert served.models[topology] == params.to_bytes(reference.models["target_model"])


def test_a_secure_federation_on_celery_workers_gives_the_simulators_metrics_exactly(
    served: ServedRun,
) -> None:
    """The masks cancel exactly in the ring, so the simulator's secure run is matched bit for bit: keys
    relayed, uploads masked on the nodes' workers, seeds revealed, the sums unmasked by the aggregator."""
    assert served.status[SECURE] == "finished"
    reference = simulate(served.configs[SECURE])
    assert served.rounds[SECURE] == {r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes}
    assert served.models[SECURE] == params.to_bytes(reference.models["target_model"])


def test_each_nodes_worker_receives_only_that_nodes_steps(served: ServedRun) -> None:
    for key, log in served.worker_logs.items():
        received = RECEIVED.findall(log)
        assert received, f"worker {key} received no step"
        assert {node for _, node in received} == {served.node_ids[key]}, f"worker {key} got another's step"
        assert "does not serve" not in log


ALLOWED_JSON = {"metrics", "samples"}
SAMPLE_SPLITS = {"train", "val", "test"}
UPLOAD = re.compile(r"^/api/v1/node/steps/\d+/uploads/(\w+)$")
PUBLIC_KEY = "/api/v1/node/public-key"
REVEAL = re.compile(r"^/api/v1/node/steps/\d+/reveal$")
SUBMIT = re.compile(r"^/api/v1/node/steps/\d+/submit$")
# The only query a node sends: the hot path's fixed numbers (a long poll's wait, the inline size), never a
# value of its own.
HOT_PATH_QUERY = {"wait_s": str(client.POLL_WAIT_S), "inline_max_bytes": str(client.INLINE_MAX_BYTES)}


# Headers an HTTP client sends on its own; anything else a node sent would be a channel out of it.
ALLOWED_HEADERS = {
    "host",
    "accept",
    "accept-encoding",
    "connection",
    "user-agent",
    "authorization",
    "content-type",
    "content-length",
}


def test_nodes_send_only_manifest_parameters_sample_counts_and_scalar_metrics(served: ServedRun) -> None:
    """Nothing a node sends could carry its data or features: paths without queries, standard headers only,
    uploads that are exactly the manifest's shared tensors with no metadata, completions with declared
    scalar metrics and sample counts only.

    With secure aggregation a node also sends protocol data, allowed here on purpose and checked as
    tightly: its uploads are the same tensors masked (int64, exactly the masked manifest); its X25519
    public key (32 bytes, from a random private key); with each masked upload, its seeds' Shamir shares
    sealed to each node (fixed-size ciphertexts); and its reveals (per model, 66-byte shares of the
    survivors' seeds). None is a function of the node's data or features (the seeds derive by HKDF from its
    private key and the mask context), and fixed-size byte strings leave no room to hide any."""
    assert served.records, "the proxy saw no request"
    uploads = masked = reveals = 0
    for record in served.records:
        extra = {h.lower() for h in record.headers} - ALLOWED_HEADERS
        assert not extra, f"{record.method} {record.path} sent headers {sorted(extra)}"
        token = record.headers.get("Authorization", "").removeprefix("Bearer ")
        assert token in served.tokens, f"{record.method} {record.path} without a node's token"
        topology, _ = served.tokens[token]
        url = httpx.URL(record.path)
        path = url.path
        assert path.startswith("/api/v1/node/"), record.path
        query = dict(url.params)
        assert query.items() <= HOT_PATH_QUERY.items(), record.path
        secure = served.configs[topology].secure_aggregation
        if record.method == "GET" or path.endswith("/claim"):
            assert record.body == b"", f"{record.method} {record.path} carried a body"
        elif record.method == "PUT" and record.path == PUBLIC_KEY:
            assert secure, f"a node of a plain federation sent {record.path}"
            body = json.loads(record.body)
            assert set(body) == {"public_key"} and len(b64_32(body["public_key"])) == 32, body
        elif record.method == "PUT":
            match = UPLOAD.match(record.path)
            assert match, record.path
            masked += assert_manifest_parameters(served.configs[topology], match.group(1), record.body)
            uploads += 1
        elif record.method == "POST" and SUBMIT.match(path):
            # The combined submission: each part exactly what its separate request would carry, with the
            # framing's two headers only; the completion last.
            content_type = httpx.Headers(record.headers)["content-type"]
            parts = list(multipart.parts(record.body, content_type))
            assert parts and parts[-1][0].name == multipart.COMPLETION_PART, record.path
            for part, data in parts:
                assert set(part.headers) == {"content-disposition", "content-type"}, part.headers
                if part.name == multipart.COMPLETION_PART:
                    assert part.content_type == "application/json"
                    assert_completion(json.loads(data), secure, record.path)
                else:
                    assert part.content_type == "application/octet-stream"
                    masked += assert_manifest_parameters(served.configs[topology], part.name, data)
                    uploads += 1
        elif record.method == "POST" and REVEAL.match(record.path):
            assert secure, f"a node of a plain federation sent {record.path}"
            assert_shares_only(json.loads(record.body))
            reveals += 1
        else:
            assert record.method == "POST" and path.endswith("/complete"), record.path
            assert_completion(json.loads(record.body), secure, record.path)
    assert uploads > 0 and masked > 0 and reveals > 0


def assert_completion(completion: dict[str, Any], secure: bool, where: str) -> None:
    """A completion: scalar metrics and sample counts, and with secure aggregation the masked uploads'
    sealed seed shares (fixed-size ciphertexts), nothing else."""
    if "shares" in completion:
        assert secure, f"a node of a plain federation sent seed shares to {where}"
        assert_sealed_shares(completion.pop("shares"))
    assert_scalar_completion(completion)


def assert_manifest_parameters(config: FederationConfig, slot: str, data: bytes) -> int:
    """An upload for ``slot``: exactly its manifest's parameters; returns 1 when masked, else 0."""
    manifest = ModelManifest.for_config(config)
    if config.secure_aggregation and slot != "model":
        # Exactly the masked manifest (the shared tensors as int64), no metadata, no stray bytes.
        secagg.validate_masked(data, manifest.models[slot], 1 << 26)
        return 1
    # Names, dtypes and shapes of the manifest's shared tensors, finite values, no metadata, and not one
    # byte beyond the tensors (validate refuses trailing or unclaimed bytes).
    params.validate(data, slot_manifest(manifest, slot), max_bytes=64 * 1024 * 1024)
    return 0


def b64_32(text: Any) -> bytes:
    assert isinstance(text, str) and len(text) == 44, text
    raw = base64.b64decode(text, validate=True)
    assert len(raw) == 32
    return raw


def assert_shares_only(body: Any) -> None:
    """A reveal: per model, the holder's index and 66-byte Shamir shares keyed by node names, nothing else."""
    names = {name for name, _, _, _ in NODES}
    assert isinstance(body, dict) and set(body) == {"shares"}, body
    assert isinstance(body["shares"], dict) and set(body["shares"]) <= {"G", "T", "D"}, body
    for answer in body["shares"].values():
        assert isinstance(answer, dict) and set(answer) == {"x", "self_shares", "pair_shares"}, answer
        assert type(answer["x"]) is int and 1 <= answer["x"] <= len(NODES), answer
        assert set(answer["self_shares"]) <= names and set(answer["pair_shares"]) <= names, answer
        values = [*answer["self_shares"].values()]
        values += [v for pairs in answer["pair_shares"].values() for v in pairs.values()]
        assert all(len(base64.b64decode(v, validate=True)) == SHARE_BYTES for v in values), answer


def assert_sealed_shares(shares: Any) -> None:
    """A masked step's sealed seed shares: per masked model, one fixed-size ciphertext per node."""
    names = {name for name, _, _, _ in NODES}
    assert isinstance(shares, dict) and set(shares) <= {"G", "T", "D"}, shares
    for sealed in shares.values():
        assert isinstance(sealed, dict) and set(sealed) <= names, sealed
        sizes = {len(base64.b64decode(c, validate=True)) for c in sealed.values()}
        assert sizes == {ciphertext_bytes(len(sealed))}, sizes


def assert_scalar_completion(body: Any) -> None:
    assert isinstance(body, dict) and set(body) <= ALLOWED_JSON, body
    metrics = body.get("metrics", {})
    assert isinstance(metrics, dict)
    for name, value in metrics.items():
        assert name in REPORTED_METRICS and type(value) is float and math.isfinite(value), (name, value)
    samples = body.get("samples")
    if samples is not None:
        assert isinstance(samples, dict) and set(samples) <= SAMPLE_SPLITS, samples
        assert all(type(v) is int and v >= 0 for v in samples.values()), samples


def test_no_process_writes_a_token_to_its_logs_or_files(served: ServedRun) -> None:
    """The API's, the aggregator's and every node worker's logs, the server's SQLite database and artifact
    store, each node's data directory and the broker's files: no admin, join or node token in any of them
    (tokens reach these processes through the environment; the database keeps only their hashes)."""
    files = [p for p in served.tmp.rglob("*") if p.is_file() and p.suffix != ".npz"]  # .npz: the test's data
    logs = {p.name for p in files if p.suffix == ".log"}
    assert {"api.log", "aggregator.log"} | {f"{t}-{n}.log" for t, n in served.node_ids} <= logs, logs
    assert any("artifacts" in p.parts for p in files), "the artifact store is scanned too"
    leaked = [
        f"{secret[:8]}... in {path.relative_to(served.tmp)}"
        for path in files
        for secret in served.secrets
        if secret.encode() in path.read_bytes()
    ]
    assert not leaked, leaked


def test_the_recording_proxy_is_in_the_nodes_path(served: ServedRun) -> None:
    """Every node worker made its requests through the proxy (the other tests would pass vacuously if a
    worker bypassed it)."""
    seen = {served.tokens[r.headers["Authorization"].removeprefix("Bearer ")] for r in served.records}
    assert seen == set(served.tokens.values())


def test_a_lost_message_is_recovered_by_the_sweep_with_the_same_metrics(tmp_path: Path) -> None:
    """The filesystem transport deletes a message when a worker fetches it: a worker that dies after
    claiming its step leaves nothing to redeliver. The sweep sends the step again once its lease expires.
    (A worker killed in the middle of a step, on both brokers: `test_worker_killed`.)"""
    specs = {name: write_vectors(tmp_path / f"{name}.npz", seed, shift) for name, _, seed, shift in NODES}
    broker_url = f"filesystem://{tmp_path / 'broker'}"
    settings = tiny_settings(name="recovery", rounds=4)
    processes = Processes(tmp_path)
    try:
        env = child_env(
            FEDALIGN_BROKER_URL=broker_url,
            FEDALIGN_BROKER_POLL_S="0.05",
            FEDALIGN_DATA_DIR=str(tmp_path / "server"),
            FEDALIGN_ADMIN_TOKEN=ADMIN_TOKEN,
            FEDALIGN_SWEEP_INTERVAL_S="0.5",
            FEDALIGN_LEASE_SECONDS="3",
        )
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        processes.start("api", cli("serve", "--port", str(port), "--log-level", "warning"), env)
        processes.start("aggregator", cli("worker", "--aggregator", "--threads", "1"), env)
        wait_ready(api_url, processes)
        admin = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
        fid = admin.post("/api/v1/federations", json=settings).json()["id"]
        tokens, ids = {}, {}
        for name, role, _, _ in NODES:
            body = {"name": name, "role": role, "dataset": specs[name], "mode": "celery"}
            node = admin.post(f"/api/v1/federations/{fid}/nodes", json=body).json()
            tokens[name], ids[name] = node["token"], node["id"]

        def start_worker(name: str, label: str) -> None:
            node_env = child_env(
                FEDALIGN_BROKER_URL=broker_url,
                FEDALIGN_BROKER_POLL_S="0.05",
                FEDALIGN_DATA_DIR=str(tmp_path / f"node-{name}"),
                FEDALIGN_NODE_TOKEN=tokens[name],
            )
            processes.start(
                label, cli("worker", "--node", name, "--api", api_url, "--threads", "1"), node_env
            )

        for name in ("beta", "gamma", "omega"):
            start_worker(name, name)
        assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
        # alpha's worker "fetched" its setup message and died holding the claim: the message is gone.
        queue = tmp_path / "broker" / "queue"
        alphas = f"*.node.{ids['alpha']}.msg"  # the transport's file name: <time>_<uuid>.<queue>.msg
        wait_until(lambda: any(queue.glob(alphas)), 30, "alpha's message")
        alpha = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {tokens['alpha']}"})
        claimed = alpha.get("/api/v1/node/task")
        assert claimed.status_code == 200 and claimed.json()["kind"] == "setup"
        for message in queue.glob(alphas):
            message.unlink()
        start_worker("alpha", "alpha")

        def finished() -> bool:
            processes.assert_alive()
            return admin.get(f"/api/v1/federations/{fid}").json()["status"] in ("finished", "failed")

        wait_until(finished, RUN_TIMEOUT_S, "the federation to finish", poll_s=0.5)
        config = FederationConfig.model_validate(
            {**settings, "nodes": [{"name": n, "role": r, "dataset": specs[n]} for n, r, _, _ in NODES]}
        )
        reference = simulate(config)
        assert served_rounds_http(admin, fid) == {
            r.round: r.to_json() for r in reference.rounds if r.metrics or r.nodes
        }
        admin.close()
        alpha.close()
    finally:
        processes.stop()
