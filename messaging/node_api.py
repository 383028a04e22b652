"""The node API's wire models: what a node sees (its federation, its next task) and what it sends back.

The server's routes answer with these models (they are the OpenAPI document's schemas) and the node's
client (`workers.client`) parses the answers with the same ones, so the two sides cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from fedalign.config import NAME_PATTERN, Role
from fedalign.failures import MAX_REASON_CHARS
from fedalign.metrics import REPORTED_METRICS
from fedalign.model_manifest import ModelDocument, TensorDocument
from fedalign.protocol import MODELS
from fedalign.secagg_limits import SHARE_BYTES, ciphertext_bytes

FederationStatus = Literal["created", "running", "paused", "stalled", "finished", "cancelled", "failed"]
# A federation in one of these is over: its nodes stop polling, and it takes no more results.
TERMINAL_STATUSES: frozenset[FederationStatus] = frozenset({"finished", "cancelled", "failed"})
# The header of a "no task now" answer (204) that says the federation's status, so a poller knows when
# to stop.
STATUS_HEADER = "FedAlign-Federation-Status"

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# The download slot of an aggregate step's base: the aggregate its average is stepped past (`Task.step`).
BASE_SLOT = "base"


def _canonical_32_bytes(value: str) -> str:
    # One spelling per value: a repeated reveal is recognised by comparing what was stored.
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from exc
    if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != value:
        raise ValueError("must be exactly 32 bytes in canonical base64 (44 characters ending in '=')")
    return value


Bytes32 = Annotated[
    str,
    Field(
        min_length=44,
        max_length=44,
        pattern=r"^[A-Za-z0-9+/]{43}=$",
        description="32 bytes, base64 (RFC 4648, padded).",
        examples=["3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
    ),
    AfterValidator(_canonical_32_bytes),
]
NodeName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class PeerNode(BaseModel):
    name: str
    role: Role
    dataset: str | None = Field(
        description="Only the caller's own dataset spec; other organisations' are none of its business."
    )


class NodeFederation(BaseModel):
    federation_id: str
    status: FederationStatus
    node_id: str = Field(description="The calling node's id: its Celery queue is node.<id>.")
    node: PeerNode = Field(description="The calling node.")
    config: dict[str, Any] = Field(description="The federation's config without nodes (FederationSettings).")
    nodes: list[PeerNode] = Field(description="Every node of the federation, datasets of others withheld.")


class MaskContextOut(BaseModel):
    """What one masked upload is for (fedalign.secagg.MaskContext); every seed and mask is bound to it."""

    federation: str
    round: int
    phase: str
    model: str
    exchange: int


def _canonical_base64(value: str, size: int | None = None) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise ValueError("must be canonical base64 (RFC 4648, padded)")
    if size is not None and len(raw) != size:
        raise ValueError(f"must be exactly {size} bytes; got {len(raw)}")
    return value


# The most nodes one masked roster may have on the wire (a bound on every per-node map below).
MAX_ROSTER = 1024
# One Shamir share of a seed (fedalign.shamir.SHARE_BYTES: 66 bytes, 88 base64 characters).
ShareValue = Annotated[
    str,
    Field(min_length=88, max_length=88, description="One Shamir share of a seed: 66 bytes, base64."),
    AfterValidator(lambda v: _canonical_base64(v, SHARE_BYTES)),
]
# One sender's encrypted shares for one holder (fedalign.secagg_shares.ciphertext_bytes of the roster);
# the exact size is checked against the roster, this bounds it first.
SealedShares = Annotated[
    str,
    Field(
        min_length=4,
        max_length=4 * ((ciphertext_bytes(MAX_ROSTER) + 2) // 3),
        description="A node's seed shares for one holder, sealed with ChaCha20-Poly1305 (base64).",
    ),
    AfterValidator(_canonical_base64),
]


class ShareAnswer(BaseModel):
    """A holder's answer to a masked model's dropout list (fedalign.secagg_shares.ShareReveal): its shares
    of every survivor's self seed, and of every survivor's pairwise seed with each dropped node, nothing
    else."""

    model_config = ConfigDict(extra="forbid")

    x: int = Field(
        ge=1, le=MAX_ROSTER, description="The holder's share index: its place in the sorted roster."
    )
    self_shares: dict[NodeName, ShareValue] = Field(
        max_length=MAX_ROSTER, description="Survivor -> the holder's share of its self seed."
    )
    pair_shares: dict[NodeName, dict[NodeName, ShareValue]] = Field(
        max_length=MAX_ROSTER,
        description="Survivor -> dropped node -> the holder's share of their pairwise seed.",
    )

    @classmethod
    def encode(
        cls, x: int, self_shares: Mapping[str, bytes], pair_shares: Mapping[str, Mapping[str, bytes]]
    ) -> ShareAnswer:
        return cls(
            x=x,
            self_shares={n: _b64(v) for n, v in self_shares.items()},
            pair_shares={n: {d: _b64(v) for d, v in pairs.items()} for n, pairs in pair_shares.items()},
        )

    def decoded(self) -> tuple[int, dict[str, bytes], dict[str, dict[str, bytes]]]:
        """(x, self shares, pair shares) as bytes: the fields of `fedalign.secagg_shares.ShareReveal`."""
        return (
            self.x,
            {n: base64.b64decode(v) for n, v in self.self_shares.items()},
            {n: {d: base64.b64decode(v) for d, v in pairs.items()} for n, pairs in self.pair_shares.items()},
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class SecureSlot(BaseModel):
    context: MaskContextOut
    weights: dict[str, float] = Field(
        description="Every roster node's normalised weight; a node pre-multiplies its upload by its own."
    )
    public_keys: dict[str, str] = Field(
        description="Every roster node's X25519 public key (base64), relayed as the nodes sent them."
    )
    threshold: int = Field(
        default=0,
        ge=0,
        description="t: how many survivors' shares unmask the sum; a training step splits its seeds so (0 "
        "only in steps stored before threshold recovery existed, which cannot be unmasked this way).",
    )
    dropped: list[str] = Field(
        default_factory=list,
        description="Reveal and aggregate steps: roster nodes whose uploads are not in the sum (the same "
        "list for every survivor).",
    )
    shares: dict[str, str] = Field(
        default_factory=dict,
        description="A reveal step: survivor -> its sealed shares for this node, relayed as it sent them.",
    )
    answers: dict[str, ShareAnswer] = Field(
        default_factory=dict,
        description="A target's aggregate step: holder -> its answer (at least threshold of them).",
    )


class Task(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "step_id": 42,
                    "federation_id": "0b7f...",
                    "node": "alpha",
                    "round": 3,
                    "phase": "disc1",
                    "kind": "discriminator",
                    "model": "",
                    "seed": 1234567,
                    "downloads": {"D": "http://127.0.0.1:8000/api/v1/node/artifacts/r2/disc1/D"},
                    "uploads": {"D": "http://127.0.0.1:8000/api/v1/node/steps/42/uploads/D"},
                    "complete_url": "http://127.0.0.1:8000/api/v1/node/steps/42/complete",
                    "fail_url": "http://127.0.0.1:8000/api/v1/node/steps/42/fail",
                    "lease_expires_at": "2026-01-01T12:00:10Z",
                    "heartbeat_url": "http://127.0.0.1:8000/api/v1/node/steps/42/heartbeat",
                    "heartbeat_s": 3.3,
                    "inputs": {},
                    "weights": {},
                }
            ]
        }
    )

    step_id: int
    federation_id: str
    node: str
    round: int
    phase: str
    kind: str = Field(description="setup, discriminator, adapt, evaluate, publish or aggregate.")
    model: str = Field(description="For aggregate steps, the model to average.")
    seed: int
    downloads: dict[str, str] = Field(description="Slot (model) -> URL of the aggregate to load first.")
    uploads: dict[str, str] = Field(description="Slot -> URL to PUT this step's safetensors result to.")
    complete_url: str
    fail_url: str = Field(
        description="Where to POST a failure (reason, retryable) when the step cannot be run, instead of "
        "letting its lease run out."
    )
    lease_expires_at: dt.datetime = Field(
        description="The lease's end: renewed by each heartbeat; once it passes without one, the step is "
        "handed out again."
    )
    heartbeat_url: str = Field(
        description="Where to POST a heartbeat while the step runs (from the claim until its completion): "
        "each one renews the lease."
    )
    heartbeat_s: float = Field(
        gt=0,
        description="How often to send a heartbeat: a third of the lease, so that one lost heartbeat does "
        "not lose the step.",
    )
    inputs: dict[str, str] = Field(description="Aggregate steps: node -> URL of its submission.")
    weights: dict[str, float] = Field(description="Aggregate steps: node -> normalised weight.")
    step: FiniteFloat = Field(
        default=1.0,
        ge=1.0,
        description=f"Aggregate steps: the result is base + step * (average - base), base the artifact at "
        f"downloads[{BASE_SLOT!r}] (fedalign.aggregate.step_past); 1 (and no base): the average itself.",
    )
    secure: dict[str, SecureSlot] = Field(
        default_factory=dict,
        description="Secure aggregation, slot -> its masking: for a training step, the uploads to mask "
        "(fedalign.secagg.Masker); for a reveal step, what to reveal (POST the seeds to complete_url); for a "
        "target's aggregate step, the survivors' reveals to unmask the sum with (fedalign.secagg.MaskedSum).",
    )
    submit_url: str | None = Field(
        default=None,
        description="Where to POST the uploads and the completion in one multipart/form-data request (one "
        "part per upload slot, and a 'completion' part); the same as PUTting each upload, then POSTing "
        "complete_url. None for a reveal step.",
    )
    inline: dict[str, str] = Field(
        default_factory=dict,
        description="Download URL -> the artifact's safetensors bytes (base64), for the downloads and inputs "
        "at most inline_max_bytes large when the poll or claim asked for them: no request to fetch those.",
    )


# The share of a lease between two heartbeats: two may be lost (or late) before the lease runs out.
HEARTBEATS_PER_LEASE = 3


class HeartbeatResult(BaseModel):
    step_id: int
    lease_expires_at: dt.datetime = Field(description="The renewed lease's end.")


class UploadResult(BaseModel):
    key: str
    sha256: str
    size: int
    stored: bool = Field(description="False when the slot already held exactly these bytes.")


# Sample counts weight the averages: a node with no training data has nothing to contribute (and an all-zero
# weighting divides by zero), and a count beyond any real data set is a bug or an attempt to dominate.
MAX_SAMPLES = 10**12


class Samples(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
    val: Annotated[int, Field(ge=0, le=MAX_SAMPLES)] = 0
    test: Annotated[int, Field(ge=0, le=MAX_SAMPLES)] = 0


class CompleteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"metrics": {"disc_loss": 0.69}, "samples": None}]},
    )

    metrics: dict[Annotated[str, Field(max_length=64)], FiniteFloat] = Field(
        default_factory=dict, max_length=256, description="Scalar metrics of this step, by name."
    )
    samples: Samples | None = Field(default=None, description="Setup steps: sample counts per split.")
    shares: dict[Annotated[str, Field(max_length=16)], dict[NodeName, SealedShares]] = Field(
        default_factory=dict,
        max_length=len(MODELS),
        description="Secure aggregation: each masked upload (slot) -> holder -> this node's seed shares "
        "for the holder, sealed to it (fedalign.secagg_shares.share_seeds); one entry per roster node.",
    )

    @field_validator("metrics")
    @classmethod
    def _declared_names(cls, metrics: dict[str, float]) -> dict[str, float]:
        # Only the declared scalars leave a node: a free-form name could carry anything.
        unknown = sorted(set(metrics) - REPORTED_METRICS)
        if unknown:
            raise ValueError(
                f"unknown metric names {unknown}; a node reports only these: {sorted(REPORTED_METRICS)}"
            )
        return metrics


class CompleteResult(BaseModel):
    step_id: int
    status: str
    federation_status: FederationStatus
    round: int | None
    phase: str | None


class SubmitResult(CompleteResult):
    uploads: dict[str, UploadResult] = Field(description="Each upload slot of the submission, as stored.")


# The longest wait a task poll may ask for (wait_s); the server holds it at most FEDALIGN_LONG_POLL_MAX_S.
MAX_POLL_WAIT_S = 60.0


# ----------------------------------------------------------------------------------------- failed steps


class FailRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"reason": "OutOfMemoryError: CUDA out of memory (2.00 GiB more)", "retryable": True}
            ]
        },
    )

    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON_CHARS)] = Field(
        description="What went wrong, for people: the error's type and message, without local paths "
        "(fedalign.failures.failure_reason)."
    )
    retryable: bool = Field(
        default=False,
        description="Whether running the step again may succeed (out of memory, a passing I/O error); a "
        "failure of the input, the code or the setup (a model that does not match the federation's "
        "manifest) is not.",
    )


class FailResult(CompleteResult):
    retry: bool = Field(
        description="The step is offered again (poll or claim it); otherwise the phase goes on without this "
        "node, or the run stalls with its reason (the target)."
    )


# ------------------------------------------------------------------------------------------- the manifest


class PublishedLayout(BaseModel):
    slot: str = Field(description="The publish step's upload slot.")
    tensors: list[TensorDocument] = Field(
        description="The published target model: every tensor of G and T (shared and local), named "
        "'G.<name>' and 'T.<name>', one safetensors file."
    )


class FederationManifest(BaseModel):
    """The federation's models before a run: what a node's own models must match at setup, and what every
    upload must hold (its shared tensors)."""

    architecture: str = Field(description="The architecture's name: a built-in, an import path or a name.")
    version: str = Field(description="The architecture's declared version; a node's must be the same.")
    builtin: bool = Field(description="A built-in architecture (the server built the initial parameters).")
    models: dict[Literal[MODELS], ModelDocument] = Field(  # type: ignore[valid-type]
        description="G, T and D: every tensor with its shape, safetensors dtype and whether it is shared "
        "(travels after round 0) or local (stays on the node)."
    )
    published: PublishedLayout | None = Field(
        description="The model the target publishes at the end; null when the federation does not publish."
    )


# ------------------------------------------------------------------------------- secure aggregation


class PublicKeyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"public_key": "3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]},
    )

    public_key: Bytes32 = Field(description="The node's X25519 public key (32 bytes, base64).")


class PublicKeyOut(BaseModel):
    node: str
    public_key: str
    stored: bool = Field(description="False when the node had already sent exactly this key.")


class PublicKeys(BaseModel):
    public_keys: dict[str, str] = Field(
        description="Every node of the caller's federation that sent its key: name -> X25519 public key."
    )


class RevealRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shares: dict[Annotated[str, Field(max_length=16)], ShareAnswer] = Field(
        max_length=len(MODELS),
        description="Each model the reveal step lists (its 'secure' slots) -> this node's answer for it.",
    )
