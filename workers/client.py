"""The node's side of the REST API: a typed HTTP client and the loop that runs a node's steps.

`NodeClient` speaks the backend's ``/api/v1/node`` endpoints with a node token. `NodeRunner` runs one
claimed task: it downloads the aggregates a step starts from, runs `fedalign.node.NodeRuntime.run` on the
node's own data, uploads the results and completes the step. A target that aggregates (aggregator =
"target") also gets aggregate tasks: it folds the phase's submissions with `fedalign.aggregate.average`,
the code the server would run, and uploads the average. With a state directory the node's local state
persists between steps on its machine (`workers.state`), so steps may land in different processes.

With secure aggregation (`fedalign.secagg`) the node makes its X25519 key pair at setup (the private key
stays in its state directory) and sends the public key; it masks every averaged upload with the roster's
relayed keys and weights its task carries and completes the step with its seeds' threshold shares sealed to
each roster node, answers a reveal step with its shares of the survivors' seeds (`fedalign.secagg_shares`),
and, as a target that aggregates, unmasks the phase's sum with the seeds t holders' answers rebuild.

At setup the node compares the models it built from its own installed architecture with the federation's
manifest (``GET /api/v1/node/manifest``): a different layer or version stops it with the first difference.
A step that raises (that mismatch, data that cannot be read, out of memory) is reported to the server
(``POST /api/v1/node/steps/{id}/fail``, `fedalign.failures`: the error's type and message without local
paths, and whether a retry can help) instead of leaving it to its lease; so is a node that cannot load its
data or build its models at all, at each step it is given.

Whoever runs a step renews its short lease with a heartbeat (``POST`` the task's ``heartbeat_url`` every
``heartbeat_s``, `workers.heartbeat`) from the claim to the completion, so a step may take as long as it
needs and a node that dies mid-step loses it within one lease.

Two ways to get tasks, one step code: `run_node` polls ``GET /api/v1/node/task`` (``fedalign node run``);
the Celery worker claims the step a message points at (`NodeClient.claim`, `workers.celery_app`).

The hot path (``hot_path``, the default): the poll is a long poll (``wait_s``) that answers as soon as a step
opens, the task carries its small downloads inline (``inline_max_bytes``), and the uploads go with the
completion in one request (``submit_url``): a step costs two round trips, not six. Without it the node
uses the separate requests the protocol page walks through, one by one.

This module talks to the backend only over HTTP and never imports it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from fedalign import data as datasets
from fedalign import params, secagg, secagg_shares
from fedalign.aggregate import average, step_past
from fedalign.config import FederationConfig
from fedalign.device import CPU, Device
from fedalign.failures import failure_reason, is_retryable
from fedalign.manifest import Manifest
from fedalign.model_manifest import ModelManifest, ModelManifestDocument
from fedalign.node import StepResult, load_node_data
from fedalign.protocol import StepSpec
from messaging import multipart, node_api
from messaging.heartbeat import Heartbeat
from messaging.node_api import BASE_SLOT, STATUS_HEADER, TERMINAL_STATUSES, Task
from workers.audit import AuditedTransport, AuditLog
from workers.background_submit import BackgroundSubmitter, Submission
from workers.reference_steps import ReferenceSteps
from workers.state import NodeStateFile, SecAggLedger
from workers.step_runtime import StepsRuntime
from workers.steps import StepsFactory

log = logging.getLogger("fedalign.workers")

# Stands in for other nodes' dataset specs, which the server withholds: a node never needs them.
WITHHELD_DATASET = "withheld:"
State = dict[str, torch.Tensor]
# The hot path's defaults: a poll held at most this long (the server holds it at most its own bound), and
# artifacts up to this size inline in the task.
POLL_WAIT_S = 20.0
INLINE_MAX_BYTES = 1 << 20


class ClientError(RuntimeError):
    """An error answer from the API, with its machine-readable code and its message for people."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ServerError(ClientError):
    """A 5xx answer: the server (or a proxy before it) failed; trying again later may succeed."""


@dataclass(frozen=True)
class NodeFederation:
    """The node's view of its federation, ready to build its runtime: the server's answer
    (`messaging.node_api.NodeFederation`) with its config parsed, other nodes' datasets withheld."""

    federation_id: str
    status: str
    node_id: str
    node: str
    role: str
    dataset: str
    config: FederationConfig

    @classmethod
    def of(cls, answer: node_api.NodeFederation) -> NodeFederation:
        nodes = [
            {"name": n.name, "role": n.role, "dataset": n.dataset or WITHHELD_DATASET} for n in answer.nodes
        ]
        return cls(
            federation_id=answer.federation_id,
            status=answer.status,
            node_id=answer.node_id,
            node=answer.node.name,
            role=answer.node.role,
            dataset=answer.node.dataset or "",
            config=FederationConfig.model_validate({**answer.config, "nodes": nodes}),
        )


def step_spec(task: Task) -> StepSpec:
    """The task as `NodeRuntime.run` takes it (slots map to URLs here; the runtime reads only slots)."""
    return StepSpec(
        node=task.node,
        round=task.round,
        phase=task.phase,
        kind=task.kind,  # type: ignore[arg-type]
        downloads=dict(task.downloads),
        uploads=dict(task.uploads),
        seed=task.seed,
        inputs=dict(task.inputs),
        weights=dict(task.weights),
    )


class _Chunks:
    """A request body sent as 1 MiB views of one buffer.

    Handed a whole ``bytes`` body, the HTTP client re-slices what is left of it after every socket send,
    which copies the remainder each time (quadratic in the body's size: 2 of 2.4 s of a 100 MB upload).
    Views copy nothing; iterable again, so a retried request can send the body a second time.
    """

    SIZE = 1 << 20

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.view), self.SIZE):
            yield self.view[start : start + self.SIZE]  # type: ignore[misc]  # sent as a buffer


class _Pieces(_Chunks):
    """A body of several buffers (a multipart submission's headers and files), each sent as `_Chunks`."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            yield from _Chunks(piece)


class NodeClient:
    """The node API with one node's token.

    ``http`` lets several nodes share one connection pool, or tests run against an in-process app
    (Starlette's TestClient is an ``httpx.Client``); a client passed in is not closed here.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        """``audit``: write every request this client sends to that log (`workers.audit`); it needs a
        client of its own, so not with ``http``."""
        if audit is not None and http is not None:
            raise ValueError("an audited NodeClient makes its own HTTP client; do not pass http")
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        transport = AuditedTransport(audit) if audit is not None else None
        self.http = http if http is not None else httpx.Client(timeout=timeout, transport=transport)
        self._auth = {"Authorization": f"Bearer {token}"}
        # The federation's status as the last task poll reported it.
        self.federation_status: str | None = None

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _url(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.base_url + path_or_url

    def _get(self, path_or_url: str) -> httpx.Response:
        return self._check(self.http.get(self._url(path_or_url), headers=self._auth))

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        kind = ServerError if response.status_code >= 500 else ClientError
        try:
            error = response.json()["error"]
            raise kind(response.status_code, error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            raise kind(response.status_code, "http_error", response.text[:500]) from None

    def federation(self) -> NodeFederation:
        answer = node_api.NodeFederation.model_validate_json(self._get("/api/v1/node/federation").content)
        self.federation_status = answer.status
        return NodeFederation.of(answer)

    def next_task(self, wait_s: float = 0.0, inline_max_bytes: int = 0) -> Task | None:
        """Claim the next step, or None when there is none now (see ``federation_status``). ``wait_s``: wait
        up to that long for one (a long poll); ``inline_max_bytes``: ask for downloads up to that size
        inline in the task (`Task.inline`)."""
        query = {"wait_s": wait_s, "inline_max_bytes": inline_max_bytes}
        params = {k: v for k, v in query.items() if v}
        timeout = self.http.timeout
        if wait_s:  # the read waits as long as the server holds the poll, and then as long as any read
            timeout = httpx.Timeout(timeout.connect, read=(timeout.read or 0) + wait_s)
        url = self._url("/api/v1/node/task")
        response = self._check(self.http.get(url, params=params, headers=self._auth, timeout=timeout))
        if response.status_code == 204:
            self.federation_status = response.headers.get(STATUS_HEADER, self.federation_status)
            return None
        self.federation_status = None
        return Task.model_validate_json(response.content)

    def claim(self, step_id: int, inline_max_bytes: int = 0) -> Task:
        """Claim one of this node's steps by id (a Celery message's step); 409 ClientError when it is done,
        cancelled, or its federation is paused or over. ``inline_max_bytes`` as in `next_task`."""
        params = {"inline_max_bytes": inline_max_bytes} if inline_max_bytes else None
        url = self._url(f"/api/v1/node/steps/{step_id}/claim")
        response = self.http.post(url, params=params, headers=self._auth)
        return Task.model_validate_json(self._check(response).content)

    def submit(
        self,
        url: str,
        files: Mapping[str, bytes],
        metrics: Mapping[str, float],
        samples: Mapping[str, int] | None = None,
        shares: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> node_api.SubmitResult:
        """Upload ``files`` (slot -> safetensors bytes) and complete the step in one request (its task's
        ``submit_url``): all stored and the step complete, or (a 4xx) nothing stored."""
        completion = node_api.CompleteRequest.model_validate(_completion(metrics, samples, shares))
        # Only what was given (as the separate completion sends it): a plain federation's carries no shares.
        body = completion.model_dump_json(exclude_unset=True).encode()
        content_type, pieces = multipart.encode(files, body)
        size = sum(len(p) for p in pieces)
        headers = {**self._auth, "Content-Type": content_type, "Content-Length": str(size)}
        response = self.http.post(self._url(url), content=_Pieces(pieces), headers=headers)
        return node_api.SubmitResult.model_validate_json(self._check(response).content)

    def download_bytes(self, url: str) -> bytes:
        return self._get(url).content

    def download(self, url: str) -> State:
        return params.from_bytes(self.download_bytes(url))

    def upload(self, url: str, state: Mapping[str, torch.Tensor]) -> node_api.UploadResult:
        return self.upload_bytes(url, params.to_bytes(state))

    def upload_bytes(self, url: str, data: bytes) -> node_api.UploadResult:
        headers = {
            **self._auth,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        }
        response = self.http.put(self._url(url), content=_Chunks(data), headers=headers)
        return node_api.UploadResult.model_validate_json(self._check(response).content)

    def put_public_key(self, public_key: bytes) -> node_api.PublicKeyOut:
        """Send this node's X25519 public key (secure aggregation); its private key is never sent."""
        body = {"public_key": _b64(public_key)}
        response = self.http.put(self._url("/api/v1/node/public-key"), json=body, headers=self._auth)
        return node_api.PublicKeyOut.model_validate_json(self._check(response).content)

    def public_keys(self) -> dict[str, bytes]:
        """The public keys of this node's federation, as the server relays them."""
        answer = node_api.PublicKeys.model_validate_json(self._get("/api/v1/node/public-keys").content)
        return {name: _unb64(key) for name, key in answer.public_keys.items()}

    def reveal(self, url: str, answers: Mapping[str, secagg_shares.ShareReveal]) -> node_api.CompleteResult:
        """Answer a reveal step: per model, this node's shares of the survivors' self seeds and of their
        pairwise seeds with the dropped nodes."""
        body = node_api.RevealRequest(
            shares={
                model: node_api.ShareAnswer.encode(a.x, a.self_shares, a.pair_shares)
                for model, a in answers.items()
            }
        ).model_dump(mode="json")
        response = self.http.post(self._url(url), json=body, headers=self._auth)
        return node_api.CompleteResult.model_validate_json(self._check(response).content)

    def manifest(self) -> node_api.FederationManifest:
        """The federation's models: every tensor, the architecture and its version, the published layout."""
        return node_api.FederationManifest.model_validate_json(self._get("/api/v1/node/manifest").content)

    def heartbeat(self, url: str, timeout_s: float | None = None) -> node_api.HeartbeatResult:
        """Renew the lease of the step being run (its task's ``heartbeat_url``); 409 ClientError when the
        step is not wanted any more. ``timeout_s``: give up sooner than other requests (a heartbeat that
        waits longer than its period is late anyway)."""
        timeout = self.http.timeout if timeout_s is None else httpx.Timeout(timeout_s)
        response = self.http.post(self._url(url), headers=self._auth, timeout=timeout)
        return node_api.HeartbeatResult.model_validate_json(self._check(response).content)

    def fail(self, url: str, reason: str, retryable: bool) -> node_api.FailResult:
        """Report the task's step failed (its ``fail_url``): ``reason`` for people, and whether a retry may
        help."""
        body = {"reason": reason, "retryable": retryable}
        response = self.http.post(self._url(url), json=body, headers=self._auth)
        return node_api.FailResult.model_validate_json(self._check(response).content)

    def complete(
        self,
        url: str,
        metrics: Mapping[str, float],
        samples: Mapping[str, int] | None = None,
        shares: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> node_api.CompleteResult:
        """Complete a step; with secure aggregation, ``shares`` are the masked uploads' sealed seed shares
        (slot -> holder -> ciphertext), relayed by the server to their holders."""
        body = _completion(metrics, samples, shares)
        response = self.http.post(self._url(url), json=body, headers=self._auth)
        return node_api.CompleteResult.model_validate_json(self._check(response).content)


class NodeRunner:
    """One node: its runtime, built from the federation's config and its own data.

    ``state_dir``: where the node's local state persists between steps (`workers.state`); without it
    the state lives only in this object, as in the simulator; ``state_fsync``: that file also fsynced
    after every step (`workers.state`: what a machine crash costs without it). ``steps``: the node's steps
    (`workers.steps.Steps`), FedAlign's own by default. ``hot_path``: small downloads inline in the task,
    uploads with the completion (see the module's docstring); off, every request separately.
    """

    def __init__(
        self,
        client: NodeClient,
        data: datasets.NodeData | str | None = None,
        device: Device = CPU,
        state_dir: Path | None = None,
        steps: StepsFactory = ReferenceSteps,
        *,
        hot_path: bool = True,
        state_fsync: bool = True,
        submitter: BackgroundSubmitter | None = None,
    ) -> None:
        self.client = client
        self.submitter = submitter
        self._beat: Heartbeat | None = None  # the running step's, while its submission may outlive `run`
        self.steps = steps
        self.hot_path = hot_path
        self.inline_max_bytes = INLINE_MAX_BYTES if hot_path else 0
        self._inline: dict[str, bytes] = {}  # the running task's inline downloads, by URL
        self.federation = client.federation()
        if data is None:
            data = self.federation.dataset
        self.device = device
        # A node that cannot load its data or build its models (a plug-in that is not installed, a loader
        # that raises) says so at every step it gets, so that the server and dashboard show why.
        self.broken: Exception | None = None
        try:
            self.data = (
                load_node_data(self.config, self.federation.node, data) if isinstance(data, str) else data
            )
            self.runtime = self._new_runtime()
        except Exception as exc:
            log.error("node %s cannot take part: %s", self.federation.node, failure_reason(exc))
            self.broken = exc
        self.state = (
            NodeStateFile(state_dir, self.federation.federation_id, self.federation.node, durable=state_fsync)
            if state_dir is not None
            else None
        )
        # The step whose state `runtime` holds: None for a new runtime, which matches no saved file.
        self._runtime_step: int | None = None
        self._downloaded: dict[str, bytes] = {}  # the last step's downloads, by URL
        self.steps_run = 0
        self.secagg = (
            SecAggLedger(state_dir, self.federation.federation_id, self.federation.node)
            if self.config.secure_aggregation
            else None
        )

    def _new_runtime(self) -> StepsRuntime:
        return StepsRuntime(self.federation.node, self.config, self.data, self.device, self.steps)

    @property
    def config(self) -> FederationConfig:
        return self.federation.config

    def step_once(self, wait_s: float = 0.0) -> bool:
        """Claim and run at most one step, waiting up to ``wait_s`` for one; False when there was none."""
        task = self.client.next_task(wait_s, self.inline_max_bytes)
        if task is None:
            return False
        self.run(task)
        self.steps_run += 1
        return True

    def run(self, task: Task) -> None:
        """Run the claimed ``task`` to its completion (or its failure report), renewing its lease with a
        heartbeat all along (`workers.heartbeat`)."""
        if task.round > self.config.rounds:
            # The federation was continued for more rounds after it finished: take its longer config.
            self.federation = self.client.federation()
            if self.broken is None:
                self.runtime.extend_to(self.config.rounds)
        self._inline = {url: _unb64(data) for url, data in task.inline.items()}
        beat = Heartbeat(
            lambda: self.client.heartbeat(task.heartbeat_url, timeout_s=task.heartbeat_s),
            task.heartbeat_s,
            stops_on=_lease_refused,
            name=f"heartbeat-step-{task.step_id}",
        )
        self._beat = beat.start()
        try:
            self._run(task)
        finally:
            if self._beat is not None:  # not handed over with the submission, which stops it when answered
                self._beat = None
                beat.stop()

    def _run(self, task: Task) -> None:
        if task.kind == "reveal":
            self._reveal(task)
            return
        try:
            if self.broken is not None:
                raise self.broken
            if task.kind == "aggregate":
                averaged = self._average(task)
            else:
                if task.kind == "setup":
                    self.check_manifest()
                result = self._train(task)
        except (ClientError, httpx.HTTPError):
            raise  # the API or the network, not the step: retried by the caller
        except Exception as exc:
            self._report_failure(task, exc)
            return
        if task.kind == "aggregate":
            self._deliver(task, {slot: params.to_bytes(averaged) for slot in task.uploads}, {})
            return
        if task.kind == "setup" and self.secagg is not None:
            self.client.put_public_key(self.secagg.key_pair().public_bytes)
        files: dict[str, bytes] = {}
        sealed: dict[str, dict[str, bytes]] = {}
        for slot in task.uploads:
            if slot in task.secure:
                files[slot], sealed[slot] = self._masked(task, slot, result.uploads[slot])
            else:
                files[slot] = params.to_bytes(result.uploads[slot])
        self._deliver(task, files, result.metrics, result.samples, sealed)

    def _deliver(
        self,
        task: Task,
        files: Mapping[str, bytes],
        metrics: Mapping[str, float],
        samples: Mapping[str, int] | None = None,
        sealed: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> None:
        """The step's uploads and completion (with a masked upload's sealed seed shares): one submission on
        the hot path, else each upload then the completion."""
        if self.hot_path and task.submit_url is not None:
            url = task.submit_url
            if self.submitter is not None and self._beat is not None:
                # Sent while this worker runs its next step; the heartbeat goes with it.
                beat, self._beat = self._beat, None
                self.submitter.submit(
                    Submission(
                        node=self.federation.node_id,
                        step_id=task.step_id,
                        send=lambda: self.client.submit(url, files, metrics, samples, sealed),
                        done=beat.stop,
                    )
                )
                return
            self.client.submit(url, files, metrics, samples, sealed)
            return
        for slot, url in task.uploads.items():
            self.client.upload_bytes(url, files[slot])
        self.client.complete(task.complete_url, metrics, samples, sealed)

    def _fetch(self, url: str) -> bytes:
        """A download's bytes: inline in the task, or fetched."""
        data = self._inline.get(url)
        return data if data is not None else self.client.download_bytes(url)

    # ------------------------------------------------------------------------------ secure aggregation

    def _masker(self, masking: node_api.SecureSlot) -> tuple[secagg.Masker, secagg.MaskContext]:
        """This node's masker for one masked slot of a task: the roster's relayed keys, its own weight, and
        the self seed derived from its private key and the context (so a re-run masks identically)."""
        if self.secagg is None:
            raise secagg.SecAggError("this federation does not use secure aggregation")
        keys = self.secagg.key_pair()
        context = secagg.MaskContext(**masking.context.model_dump())
        if context.federation != self.federation.federation_id:
            raise secagg.SecAggError(f"the mask context {context} is not of this node's federation")
        node = self.federation.node
        public_keys = {name: _unb64(key) for name, key in masking.public_keys.items()}
        masker = secagg.Masker(
            node,
            keys,
            public_keys,
            masking.weights[node],
            context,
            self_seed=keys.self_seed(node, context),
        )
        return masker, context

    def _masked(self, task: Task, slot: str, state: State) -> tuple[bytes, dict[str, bytes]]:
        """The masked upload of ``slot`` and its seeds' sealed shares for every roster node (deterministic:
        a re-run step sends the same bytes)."""
        assert self.secagg is not None
        masking = task.secure[slot]
        masker, context = self._masker(masking)
        data = params.to_bytes(masker.mask_state(state, self._manifests()[slot]))
        self.secagg.record_mask(context, hashlib.sha256(data).hexdigest())
        return data, secagg_shares.share_seeds(masker, masking.threshold)

    def _reveal(self, task: Task) -> None:
        """Answer the phase's dropout list as a holder: per masked model, its shares of the survivors' self
        seeds and of their pairwise seeds with the dropped nodes, opened from what the survivors sealed."""
        assert self.secagg is not None
        target = self.config.target.name
        node = self.federation.node
        answers: dict[str, secagg_shares.ShareReveal] = {}
        for slot, masking in task.secure.items():
            context = secagg.MaskContext(**masking.context.model_dump())
            if context.federation != self.federation.federation_id:
                raise secagg.SecAggError(f"the mask context {context} is not of this node's federation")
            # When the target aggregates it knows its own upload: two others must stay hidden in the sum.
            aggregator_in_sum = self.config.aggregator == "target" and target in masking.weights
            dropped = list(masking.dropped)
            answers[slot] = secagg_shares.reveal_shares(
                node,
                self.secagg.key_pair(),
                {name: _unb64(key) for name, key in masking.public_keys.items()},
                context,
                {sender: _unb64(sealed) for sender, sealed in masking.shares.items()},
                dropped,
                min_survivors=secagg.MIN_SURVIVORS + aggregator_in_sum,
            )
            self.secagg.record_reveal(context, dropped)
        self.client.reveal(task.complete_url, answers)

    def _manifests(self) -> Mapping[str, Manifest]:
        # The models this node built, which setup checked against the federation's manifest.
        return self.runtime.manifest.models

    def check_manifest(self) -> None:
        """Compare this node's own models with the federation's manifest; `ManifestMismatch` names the first
        difference (architecture, version, a tensor missing, extra, reshaped or retyped)."""
        answer = self.client.manifest()
        document = ModelManifestDocument(
            architecture=answer.architecture, version=answer.version, models=answer.models
        )
        self.runtime.check_manifest(ModelManifest.from_document(document))

    def _report_failure(self, task: Task, exc: Exception) -> None:
        reason, retryable = failure_reason(exc), is_retryable(exc)
        log.error(
            "step %s (%s, round %s %s) failed%s: %s",
            task.step_id,
            task.kind,
            task.round,
            task.phase,
            " (retryable)" if retryable else "",
            reason,
            exc_info=exc,
        )
        self.client.fail(task.fail_url, reason, retryable)

    def _train(self, task: Task) -> StepResult:
        """The step's result: computed from the node's state, or, for a step already run here, the saved
        one (training twice would move the local state twice)."""
        if self.state is None:
            return self._compute(task)
        saved_step = self.state.step_id()
        if saved_step != self._runtime_step:
            # Another process moved the state on (or this is a new process): take the saved state into a
            # fresh runtime, so that nothing of this one's (momentum of an optimiser the file lacks) stays.
            saved = self.state.load()
            self.runtime = self._new_runtime()
            if saved is not None:
                self.runtime.load_state_tensors(saved.tensors)
            self._runtime_step = saved_step
        if saved_step == task.step_id:
            log.info("step %s already ran on this node; sending its saved result again", task.step_id)
            saved = self.state.load()
            assert saved is not None
            return saved.result
        result = self._compute(task)
        self.state.save(task.step_id, self.runtime.state_tensors(), result)
        self._runtime_step = task.step_id
        return result

    def _compute(self, task: Task) -> StepResult:
        # An artifact's key never names other bytes, and a step mostly downloads the aggregates its
        # previous step did: those come from the last step's bytes, not the network.
        fetched = {url: self._downloaded.get(url) or self._fetch(url) for url in task.downloads.values()}
        self._downloaded = fetched
        downloads = {slot: params.from_bytes(fetched[url]) for slot, url in task.downloads.items()}
        try:
            return self.runtime.run(step_spec(task), downloads)
        except BaseException:
            # A step that failed half-way has trained part of its models: start again from the saved state
            # (or, without a state file, from nothing, as a new node would).
            self.runtime = self._new_runtime()
            self._runtime_step = None
            raise

    def _average(self, task: Task) -> State:
        """Average the phase's submissions in node order, exactly as the server would (with secure
        aggregation: fold the masked submissions and unmask their sum with the seeds that t holders' answers
        rebuild)."""
        manifest = self._manifests()[task.model]
        masking = task.secure.get(task.model)
        if masking is not None:
            total = secagg.MaskedSum(manifest, masking.weights)
            for node, url in sorted(task.inputs.items()):
                total.offer(node, self._fetch(url))
            answers = {
                holder: secagg_shares.ShareReveal(holder, *answer.decoded())
                for holder, answer in masking.answers.items()
            }
            seeds = secagg_shares.recover(masking.weights, masking.dropped, answers, masking.threshold)
            result = total.unmask(seeds)
        else:
            inputs = {node: self._fetch(url) for node, url in task.inputs.items()}
            result = average(inputs, task.weights, manifest.shared())
        base_url = task.downloads.get(BASE_SLOT)
        if base_url is not None:  # the server step (hyperparameters.server_step)
            # The base is the G_agg this node's last step downloaded: its bytes are usually still here.
            base = params.from_bytes(self._downloaded.get(base_url) or self._fetch(base_url))
            result = step_past(base, result, task.step)
        return result

    @property
    def finished(self) -> bool:
        return self.client.federation_status in TERMINAL_STATUSES


def transient(exc: Exception) -> bool:
    """A request that failed on the network or with a 5xx answer: trying again may succeed."""
    return isinstance(exc, ServerError | httpx.HTTPError)


def _lease_refused(exc: Exception) -> bool:
    """A heartbeat answered 4xx: the step is done, failed, cancelled, or not this node's; no retry helps."""
    return isinstance(exc, ClientError) and not isinstance(exc, ServerError)


def _completion(
    metrics: Mapping[str, float],
    samples: Mapping[str, int] | None,
    shares: Mapping[str, Mapping[str, bytes]] | None,
) -> dict[str, Any]:
    """A completion's JSON body (`messaging.node_api.CompleteRequest`), sent alone or in a submission."""
    body: dict[str, Any] = {"metrics": {k: float(v) for k, v in metrics.items()}}
    if samples is not None:
        body["samples"] = dict(samples)
    if shares:
        body["shares"] = {slot: {h: _b64(c) for h, c in held.items()} for slot, held in shares.items()}
    return body


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def run_node(
    client: NodeClient,
    data: datasets.NodeData | str | None = None,
    *,
    stop_when_finished: bool = True,
    poll_interval_s: float = 1.0,
    device: Device = CPU,
    max_steps: int | None = None,
    state_dir: Path | None = None,
    steps: StepsFactory = ReferenceSteps,
    hot_path: bool = True,
    state_fsync: bool = True,
) -> int:
    """Run this node's steps until its federation ends (or ``max_steps``); returns how many ran.

    ``hot_path``: long polls (up to `POLL_WAIT_S`), small downloads inline, each step's uploads with its
    completion; off: a poll every ``poll_interval_s`` and each request separately.

    ``data``: the node's data set, or a spec to load it from; default: the spec it registered with.
    ``state_dir``: where the node's local state persists between steps (a restarted loop continues it);
    ``state_fsync``: that file fsynced after every step too.
    ``steps``: the node's steps (`workers.steps.Steps`), FedAlign's own by default.
    Network errors and 5xx answers are retried after ``poll_interval_s``; a step the server no longer
    wants (its phase closed at the deadline) is dropped and the loop goes on.
    """
    runner = NodeRunner(client, data, device, state_dir, steps, hot_path=hot_path, state_fsync=state_fsync)
    wait_s = POLL_WAIT_S if hot_path else 0.0
    while max_steps is None or runner.steps_run < max_steps:
        try:
            ran = runner.step_once(wait_s)
        except (httpx.TransportError, ServerError) as exc:
            log.warning("cannot reach the server (%s); retrying in %.1f s", exc, poll_interval_s)
            time.sleep(poll_interval_s)
            continue
        except ClientError as exc:
            if exc.status != 409:
                raise
            log.warning("the server refused a result: %s", exc)
            ran = True
        if ran:
            continue
        if stop_when_finished and runner.finished:
            break
        if not wait_s:  # a long poll has already waited
            time.sleep(poll_interval_s)
    return runner.steps_run
