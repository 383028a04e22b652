"""Secure aggregation: the aggregator learns the weighted average of what nodes upload, and nothing else.

This is the transport-free core of Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS '17), simplified to an honest-but-curious aggregator and
dropouts. The paper's rounds map onto it as follows:

* **AdvertiseKeys.** Every node makes an X25519 :class:`KeyPair`; the aggregator only relays the public
  keys (and the normalised weights, which every node must know).
* **MaskedInputCollection.** A node encodes each tensor as fixed-point integers in the ring Z_{2^64}
  (:class:`FixedPoint`), pre-multiplied by its weight, and adds masks (:class:`Masker`): for every other
  node j a pairwise mask PRG(s_ij), with + when j sorts after i and - when it sorts before, so that the
  pairwise masks cancel in the sum over all nodes; and a self mask PRG(b_i) from a private seed b_i
  (the paper's "double masking"). The aggregator folds the masked uploads into a :class:`MaskedSum`.
* **Unmasking.** The aggregator names who dropped. Every survivor i sends a :class:`SeedReveal`: its self
  seed b_i and, for each dropped node d, the pairwise seed s_id. The aggregator removes the survivors'
  self masks and the dropped nodes' unmatched pairwise masks, and decodes the survivors' weighted
  average (their weighted sum divided by their total weight).

**Threat model of this simplified version** (stated plainly; the paper's full protocol covers more):

* It protects each node's upload from an **honest-but-curious aggregator** (one that runs the protocol as
  written but studies everything it receives) and from any party that sees uploads in transit or at
  rest: a masked upload is uniformly random in the ring, and so is any sum over fewer than all
  survivors' uploads. Only the survivors' weighted sum (average) can be decoded.
* The paper secret-shares b_i and the key that derives s_ij (Shamir, threshold t) so that the remaining
  nodes can reconstruct them; `fedalign.secagg_shares` shares each context's seeds that way. Survivors
  reveal (directly, or through their shares) **the pairwise seed s_id with a dropped node d**. That is
  safe only while the aggregator **does not lie about who dropped**: if it told d "you survived"
  (getting b_d) and told everyone else "d dropped" (getting every s_id), it could unmask d's upload.
  A consistent lie is harmless: a node declared dropped reveals nothing, so its self mask still hides
  its upload even if the upload did arrive ("dropped late"). An actively malicious
  aggregator, one that sends different dropout lists to different nodes or forges public keys, is NOT
  covered; that needs the paper's signatures and consistency check.
* Nodes must not collude with the aggregator: a node knows its pairwise seeds, and the aggregator plus
  all but one survivor learn the last survivor's upload from the sum anyway. In particular, when the
  target node aggregates it knows its own upload, so the sum reveals the sum of the others: with a single
  other survivor, that survivor's upload. :meth:`Masker.reveal` therefore refuses to unmask fewer than
  ``min_survivors`` nodes; count the aggregator's own node when choosing it.
* A node that **uploads and then fails to reveal** is covered by `fedalign.secagg_shares`: every node
  hands the roster threshold shares of its seeds with its upload, and any t survivors reconstruct the
  :class:`SeedReveal` of each survivor, so the sum unmasks without it. Revealing directly
  (:meth:`Masker.reveal`) remains the path where every survivor answers.
* The sum itself is revealed by design; protecting what it says about one training example is the job
  of differential privacy (DESIGN.md 5), not of this module.

Every mask stream is bound to a :class:`MaskContext` (federation, round, phase, model, exchange) and to
the tensor's name: the same mask on two different values would leak their difference, so a context
must never be reused for a second upload, and :class:`Masker` refuses to mask one name twice.

Masks are expanded with ChaCha20 (a CSPRNG; never torch's RNG) tensor by tensor, so a node masks and the
aggregator folds and unmasks one tensor at a time, as :mod:`fedalign.aggregate` does. Ring arithmetic
is done on unsigned 64-bit views (numpy), where wrap-around is defined behaviour, of int64 tensors,
the dtype that travels in safetensors.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from safetensors import safe_open

from fedalign import params
from fedalign.manifest import Manifest, TensorSpec, is_floating
from fedalign.phases import Phase
from fedalign.torch_dtypes import SAFETENSORS_DTYPES
from fedalign.weighting import WEIGHT_SUM_TOLERANCE

Source = Path | str | bytes

# Domain separation for every key derived here; a new encoding or derivation gets a new version.
PROTOCOL_LABEL = b"fedalign-secagg-v1"
SEED_BYTES = 32  # X25519 secrets, HKDF outputs and ChaCha20 keys are all 256-bit
RING_BITS = 64
# The ring's signed range: a sum decodes correctly while its true value lies in [-2^63, 2^63).
RING_HALF = 1 << (RING_BITS - 1)
# The dtype of a masked tensor, in torch and in a safetensors header.
RING_DTYPE = torch.int64
RING_DTYPE_NAME = "I64"
# ChaCha20 keystream is produced in slices this big, so expanding a large tensor's mask needs one slice
# of zeros besides the mask itself.
KEYSTREAM_CHUNK = 1 << 20
_ZEROS = bytes(KEYSTREAM_CHUNK)
# Fewer survivors than this and the "sum" is one node's upload: nodes refuse to help unmask it.
MIN_SURVIVORS = 2


class SecAggError(ValueError):
    """A misuse of secure aggregation: a value out of range, a missing reveal, a reused context..."""


# ---------------------------------------------------------------------------------------------------------
# Fixed-point encoding in Z_{2^64}


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding of real values in the ring Z_{2^64}, held as int64 (two's complement).

    A value v is encoded as round(v * 2^scale_bits) mod 2^64; the paper masks inputs in Z_R, and this
    is how real-valued parameters get there. A node encodes ``weight * x`` with ``weight`` in [0, 1] and
    refuses any ``|x| > max_abs``, so every summand is at most ``max_abs * 2^scale_bits`` in magnitude
    and a sum of at most ``max_summands`` of them stays inside the ring's signed range (no wrap-around
    in the true sum, whatever the weights in [0, 1]):

        max_summands * max_abs * 2^scale_bits < 2^63     (checked when constructed)

    The defaults give 2^18 * 2^20 * 2^24 = 2^62: up to 262,144 nodes, parameters within ±1,048,576,
    a resolution of 2^-24 (about 6e-8). Rounding costs at most half a step per summand, so a decoded
    weighted sum of n summands is within ``n * 2^-(scale_bits+1)`` of the exact one, and an average
    divided by a total weight W within that over W (:meth:`error_bound`).
    """

    scale_bits: int = 24
    max_abs: float = float(1 << 20)
    max_summands: int = 1 << 18

    def __post_init__(self) -> None:
        if not 0 <= self.scale_bits < RING_BITS - 1:
            raise SecAggError(f"scale_bits must lie in [0, {RING_BITS - 2}]; got {self.scale_bits}")
        if not (math.isfinite(self.max_abs) and self.max_abs > 0) or self.max_summands < 1:
            raise SecAggError("max_abs must be a positive finite value and max_summands at least 1")
        worst = self.max_summands * math.ceil(self.max_abs * self.scale)
        if worst >= RING_HALF:
            raise SecAggError(
                f"{self.max_summands} summands of up to {self.max_abs} at scale 2^{self.scale_bits} could "
                f"reach {worst}, past the ring's signed range 2^63; lower one of them"
            )

    @property
    def scale(self) -> float:
        return float(1 << self.scale_bits)

    def encode(self, tensor: torch.Tensor, weight: float = 1.0, *, name: str = "tensor") -> torch.Tensor:
        """``round(weight * tensor * 2^scale_bits)`` as an int64 ring element; refuses out-of-range values.

        Raises :class:`SecAggError` (a ValueError) when a value is NaN, infinite or beyond ``max_abs``,
        or the weight is outside [0, 1]: such a value would wrap around and silently corrupt the sum.
        """
        if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
            raise SecAggError(f"weight must lie in [0, 1]; got {weight!r}")
        if not tensor.is_floating_point():
            raise SecAggError(f"tensor {name!r} is {tensor.dtype}; only floating tensors can be encoded")
        # float64 holds every float32/16 value exactly, and the scaled values (below 2^63) to 53 bits.
        values = tensor.detach().to(device="cpu", dtype=torch.float64)
        if values.numel():
            if not bool(torch.isfinite(values).all()):
                raise SecAggError(f"tensor {name!r} holds NaN or infinite values; they cannot be encoded")
            largest = float(values.abs().max())
            if largest > self.max_abs:
                raise SecAggError(
                    f"tensor {name!r} holds a value of magnitude {largest:.6g}, beyond the representable "
                    f"±{self.max_abs:.6g} (fixed point 2^-{self.scale_bits}, up to {self.max_summands} "
                    "summands in Z_2^64)"
                )
        return torch.round(values * weight * self.scale).to(RING_DTYPE).contiguous()

    def decode(
        self, ring: torch.Tensor, total_weight: float = 1.0, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """A ring element read as a signed fixed-point value, divided by ``total_weight``, as ``dtype``."""
        if not (math.isfinite(total_weight) and total_weight > 0):
            raise SecAggError(f"total weight must be positive; got {total_weight!r}")
        return (ring.to(torch.float64) / self.scale / total_weight).to(dtype)

    def error_bound(self, summands: int, total_weight: float = 1.0) -> float:
        """Most a decoded sum of ``summands`` encodings, over ``total_weight``, differs from the exact value.

        Rounding to the grid costs half a step per summand; the float64 arithmetic around it adds
        relative errors near 2^-52, covered here by a 1% margin. A cast of the result to float32 adds
        its own half-ulp, which callers account for.
        """
        return 1.01 * summands * 0.5 / self.scale / total_weight


DEFAULT_FIXED_POINT = FixedPoint()


def _ring_add_(acc: torch.Tensor, value: torch.Tensor, sign: int = 1) -> None:
    """``acc += sign * value`` in Z_2^64, in place.

    Signed overflow is undefined behaviour in C++, the language of torch's kernels; numpy's unsigned
    arithmetic wraps by definition. Both views share the tensors' memory.
    """
    a = acc.numpy().view(np.uint64)
    v = value.detach().cpu().contiguous().numpy().view(np.uint64)
    if sign > 0:
        np.add(a, v, out=a)
    else:
        np.subtract(a, v, out=a)


# ---------------------------------------------------------------------------------------------------------
# Key agreement and mask expansion


@dataclass(frozen=True)
class MaskContext:
    """What one masked upload is for; every seed and mask is bound to it.

    ``phase`` names the phase ("discriminator", "adaptation"), ``model`` the model uploaded (the
    adaptation phase uploads G and T under the same round and phase), ``exchange`` the discriminator
    exchange within the round. A context must never mask two different uploads of one node.
    """

    federation: str
    round: int
    phase: str
    model: str
    exchange: int = 0

    def fields(self) -> tuple[str, ...]:
        return (self.federation, str(self.round), self.phase, self.model, str(self.exchange))

    @classmethod
    def of_phase(cls, federation: str, round_: int, phase: Phase, model: str) -> MaskContext:
        """The one context of a phase's uploads of one model (discriminator exchanges apart by number)."""
        if phase.kind == "discriminator":
            return cls(federation, round_, "discriminator", model, exchange=phase.exchange)
        # fedalign's adaptation phase is "adaptation" in its masks; fedavg's "train" keeps its own name.
        return cls(federation, round_, "adaptation" if phase.name == "adapt" else phase.name, model)


def _encode_info(*parts: str | bytes) -> bytes:
    """Length-prefixed fields, so that no two different field lists give the same HKDF info."""
    out = bytearray(PROTOCOL_LABEL)
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


class KeyPair:
    """A node's X25519 key pair for one federation (the paper's AdvertiseKeys round).

    Only :attr:`public_bytes` leaves the node, relayed by the aggregator. A long-lived key pair is
    acceptable here because every seed is derived per :class:`MaskContext`: revealing the seed shared
    with a dropped node in one phase says nothing about any other phase's seeds.
    """

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private = private_key

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Restore a key pair from its 32-byte private key (a node's own storage; never sent)."""
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The raw private key, for the node to persist between its steps; it must never be uploaded."""
        return self._private.private_bytes_raw()

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    def pair_seed(self, own_name: str, peer_name: str, peer_public: bytes, context: MaskContext) -> bytes:
        """s_ij = HKDF-SHA256(X25519(sk_i, pk_j), info = context and both names in sorted order).

        Both ends derive the same seed (Diffie-Hellman is symmetric and the names are sorted); a third
        party, lacking either private key, cannot.
        """
        if own_name == peer_name:
            raise SecAggError(f"node {own_name!r} has no pairwise seed with itself")
        low, high = sorted((own_name, peer_name))
        info = _encode_info("pair", *context.fields(), low, high)
        return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=PROTOCOL_LABEL, info=info).derive(
            self._agree(peer_name, peer_public)
        )

    def share_key(self, sender: str, holder: str, other_public: bytes, context: MaskContext) -> bytes:
        """The key that encrypts the seed shares ``sender`` hands ``holder`` in ``context``.

        HKDF-SHA256 of the same X25519 agreement as the pairwise seed, under its own info (ordered names:
        the key from i to j is not the key from j to i), so revealing a pairwise seed, as the Unmasking
        round may, says nothing about it. ``other_public`` is the holder's key when called by the sender,
        the sender's when called by the holder; a node's share to itself uses its own public key.
        """
        info = _encode_info("share", *context.fields(), sender, holder)
        return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=PROTOCOL_LABEL, info=info).derive(
            self._agree(f"{sender}/{holder}", other_public)
        )

    def _agree(self, peer_name: str, peer_public: bytes) -> bytes:
        """The raw X25519 agreement with ``peer_name``'s public key (only ever fed to HKDF)."""
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # a malformed or low-order public key
            raise SecAggError(f"node {peer_name!r}'s public key is unusable: {exc}") from exc

    def private_seed(self, purpose: str, own_name: str, context: MaskContext) -> bytes:
        """HKDF-SHA256(sk_i, info = purpose, the context and this node's name): a secret only this node has.

        The coefficients of this node's sharing polynomials derive from it (`fedalign.secagg_shares`), so
        that a re-run step hands out the same shares; it is never revealed, shared or sent.
        """
        info = _encode_info(purpose, *context.fields(), own_name)
        return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=PROTOCOL_LABEL, info=info).derive(
            self.private_bytes()
        )

    def self_seed(self, own_name: str, context: MaskContext) -> bytes:
        """b_i = HKDF-SHA256(sk_i, info = "self", the context and this node's name), for a served node.

        A node whose step runs again in a new process (a restarted worker) must mask the same upload
        identically, and answer the Unmasking round with the b_i it masked with, without storing a seed
        per upload. Deriving b_i from the private key makes it both reproducible and secret: HKDF is a
        pseudorandom function keyed by sk_i, so b_i is uniform to anyone without sk_i, and revealing it
        (which the Unmasking round does) says nothing about sk_i, the pairwise seeds, or the b_i of any
        other context. The one rule a fresh random b_i would not need: a context must never mask two
        *different* values, or the two uploads' difference would show through the equal masks. A served
        context is unique per upload (federation id, round, phase, model, exchange), a re-run step
        uploads the same bytes (its saved result), and the node keeps a ledger that refuses a second,
        different masked upload in one context (`workers.state.SecAggLedger`).
        """
        info = _encode_info("self", *context.fields(), own_name)
        return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=PROTOCOL_LABEL, info=info).derive(
            self.private_bytes()
        )


def check_public_key(raw: bytes) -> None:
    """Refuse what cannot serve as a node's X25519 public key: not 32 bytes, or a low-order point.

    A low-order point makes every Diffie-Hellman result with it the all-zero value, so the "pairwise"
    masks of every peer with that node would be public; the relay refuses such a key up front.
    """
    if len(raw) != SEED_BYTES:
        raise SecAggError(f"an X25519 public key is {SEED_BYTES} bytes; got {len(raw)}")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise SecAggError("the public key is a low-order point, unusable for key agreement") from exc


def expand_mask(seed: bytes, name: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """PRG(seed) for one tensor: uniformly random int64 ring elements of ``shape``.

    The seed is stretched to a per-tensor key by HKDF-Expand(SHA-256, info = the tensor's name), and the
    key drives ChaCha20 (zero nonce, zero plaintext: each key is used once) for 8 bytes per element,
    read little-endian. Deterministic, so the aggregator regenerates exactly the node's mask.
    """
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"a seed is {SEED_BYTES} bytes; got {len(seed)}")
    key = HKDFExpand(algorithm=hashes.SHA256(), length=SEED_BYTES, info=_encode_info("tensor", name)).derive(
        seed
    )
    count = math.prod(shape)
    out = np.empty(count, dtype="<u8")
    stream = out.view(np.uint8)
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    zeros = memoryview(_ZEROS)
    for start in range(0, stream.size, KEYSTREAM_CHUNK):
        n = min(KEYSTREAM_CHUNK, stream.size - start)
        stream[start : start + n] = np.frombuffer(encryptor.update(zeros[:n]), dtype=np.uint8)
    native = out.astype(np.uint64, copy=False)  # a no-op on little-endian hosts
    return torch.from_numpy(native.view(np.int64)).reshape(tuple(shape))


def _pair_sign(own: str, peer: str) -> int:
    """+1 when ``peer`` sorts after ``own``, -1 before: node i adds +PRG(s_ij) for j > i, -PRG for j < i."""
    return 1 if peer > own else -1


# ---------------------------------------------------------------------------------------------------------
# The node's side


@dataclass(frozen=True)
class SeedReveal:
    """What a survivor sends in the Unmasking round: its self seed and its seeds with dropped nodes only.

    Never a seed shared with another survivor (that would strip a survivor's pairwise masks), and never
    anything from a node that was itself declared dropped.
    """

    node: str
    self_seed: bytes
    pair_seeds: Mapping[str, bytes] = field(default_factory=dict)


class Masker:
    """One node's masking of one upload (one :class:`MaskContext`), tensor by tensor.

    ``public_keys`` maps every node of the phase's roster (this one included) to its relayed public key;
    ``weight`` is this node's normalised weight, known to all, by which every value is pre-multiplied so
    that the unmasked sum is the weighted average. A fresh random self seed b_i is drawn unless one is
    given (tests only: a reused self seed leaks the difference of two uploads).
    """

    def __init__(
        self,
        node: str,
        keys: KeyPair,
        public_keys: Mapping[str, bytes],
        weight: float,
        context: MaskContext,
        *,
        fixed_point: FixedPoint = DEFAULT_FIXED_POINT,
        self_seed: bytes | None = None,
    ) -> None:
        if public_keys.get(node) != keys.public_bytes:
            # The relay must carry this node's own key unchanged, or peers mask against someone else's.
            raise SecAggError(f"the relayed public keys do not hold node {node!r}'s own key")
        if len(public_keys) > fixed_point.max_summands:
            raise SecAggError(
                f"{len(public_keys)} nodes exceed the {fixed_point.max_summands} summands the encoding allows"
            )
        if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
            raise SecAggError(f"weight must lie in [0, 1]; got {weight!r}")
        self.node = node
        self.weight = weight
        self.context = context
        self.fixed_point = fixed_point
        self.peers = sorted(n for n in public_keys if n != node)
        self._self_seed = secrets.token_bytes(SEED_BYTES) if self_seed is None else self_seed
        if len(self._self_seed) != SEED_BYTES:
            raise SecAggError(f"a self seed is {SEED_BYTES} bytes; got {len(self._self_seed)}")
        self._pair_seeds = {
            peer: keys.pair_seed(node, peer, public_keys[peer], context) for peer in self.peers
        }
        self.keys = keys
        self.public_keys = dict(public_keys)
        self._masked: set[str] = set()
        self._reveal: SeedReveal | None = None
        self._revealed_dropped: frozenset[str] | None = None

    def seeds_to_share(self) -> tuple[bytes, dict[str, bytes]]:
        """This upload's self seed and its pairwise seeds with every peer, for `fedalign.secagg_shares`
        to split into encrypted shares; they must never leave the node whole."""
        return self._self_seed, dict(self._pair_seeds)

    def mask(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """encode(weight * tensor) + PRG(b_i) + sum_j ±PRG(s_ij): the int64 tensor to upload as ``name``."""
        if name in self._masked:
            raise SecAggError(f"tensor {name!r} was already masked in this context; masks are single-use")
        if self._reveal is not None:
            raise SecAggError("this node has revealed its seeds; it cannot mask anything more")
        ring = self.fixed_point.encode(tensor, self.weight, name=name)
        _ring_add_(ring, expand_mask(self._self_seed, name, ring.shape))
        for peer, seed in self._pair_seeds.items():
            _ring_add_(ring, expand_mask(seed, name, ring.shape), _pair_sign(self.node, peer))
        self._masked.add(name)
        return ring

    def mask_state(self, state: Mapping[str, torch.Tensor], manifest: Manifest) -> dict[str, torch.Tensor]:
        """The masked upload of the shared tensors of ``manifest``, masked one tensor at a time."""
        spec_manifest = masked_manifest(manifest)
        out: dict[str, torch.Tensor] = {}
        for spec in spec_manifest:
            tensor = state.get(spec.name)
            if tensor is None:
                raise SecAggError(f"tensor {spec.name!r} of model {manifest.model!r} is missing")
            if tuple(tensor.shape) != spec.shape:
                raise SecAggError(
                    f"tensor {spec.name!r} is {list(tensor.shape)}, expected {list(spec.shape)}"
                )
            out[spec.name] = self.mask(spec.name, tensor)
        return out

    def reveal(self, dropped: Collection[str], *, min_survivors: int = MIN_SURVIVORS) -> SeedReveal:
        """This survivor's answer to the aggregator's dropout list (the paper's Unmasking round).

        Refuses when this node is itself listed as dropped (its upload may have arrived: revealing b_i
        then would let the aggregator unmask it), when the list names unknown nodes, or when fewer than
        ``min_survivors`` nodes would remain. Answers one dropout list only: asked again with another list,
        it refuses, since two answers could together reveal both masks of one node.
        """
        dropped_set = frozenset(dropped)
        if self._revealed_dropped is not None:
            if dropped_set != self._revealed_dropped:
                raise SecAggError(
                    f"node {self.node!r} already answered dropout list {sorted(self._revealed_dropped)}; "
                    f"it will not answer a different one ({sorted(dropped_set)})"
                )
            assert self._reveal is not None
            return self._reveal
        if self.node in dropped_set:
            raise SecAggError(f"node {self.node!r} is listed as dropped; a dropped node reveals nothing")
        unknown = sorted(dropped_set - set(self.peers))
        if unknown:
            raise SecAggError(f"the dropout list names nodes outside this phase: {unknown}")
        survivors = len(self.peers) + 1 - len(dropped_set)
        if survivors < min_survivors:
            raise SecAggError(
                f"only {survivors} node(s) would survive; unmasking fewer than {min_survivors} "
                "would reveal individual uploads"
            )
        self._reveal = SeedReveal(
            self.node, self._self_seed, {d: self._pair_seeds[d] for d in sorted(dropped_set)}
        )
        self._revealed_dropped = dropped_set
        return self._reveal


# ---------------------------------------------------------------------------------------------------------
# Masked uploads: their manifest and their validation


def masked_manifest(manifest: Manifest) -> Manifest:
    """The manifest a masked upload follows: the shared tensors of ``manifest``, each as int64 (I64).

    Only floating tensors can be averaged under masks; a shared integer tensor (BatchNorm's
    ``num_batches_tracked`` under the local policy "none") is aggregated by a maximum in the clear, which
    masks cannot compute, so it is refused here: keep it local, or send it outside the secure sum.
    """
    shared = manifest.shared()
    integral = [spec.name for spec in shared if not is_floating(spec.dtype)]
    if integral:
        raise SecAggError(
            f"model {manifest.model!r} shares non-floating tensor(s) {integral}; secure aggregation "
            "averages floating tensors only, so keep them local"
        )
    return Manifest(
        manifest.model, tuple(TensorSpec(s.name, s.shape, RING_DTYPE_NAME, shared=True) for s in shared)
    )


def validate_masked(
    data: bytes | str | os.PathLike[str],
    manifest: Manifest,
    max_bytes: int,
    *,
    max_header_bytes: int = params.DEFAULT_MAX_HEADER_BYTES,
) -> dict[str, params.TensorEntry]:
    """Check a masked upload against ``manifest`` (the model's plain manifest); return its parsed header.

    Size, header, then names, dtype I64 and shapes of the shared tensors, raising
    :class:`fedalign.params.ParameterError` with the same codes as :func:`fedalign.params.validate`, so
    the API answers a masked upload as it answers a plain one. Values cannot be checked while masked
    (every int64 is a valid ring element); value checks apply to the unmasked sum.
    """
    size = len(data) if isinstance(data, bytes | bytearray | memoryview) else os.stat(data).st_size
    if size > max_bytes:
        raise params.ParameterError("too_large", f"the upload is {size} bytes; the limit is {max_bytes}")
    header = params.read_header(data, max_header_bytes, allow_metadata=False)
    params.check_against(header, masked_manifest(manifest))
    return header


# ---------------------------------------------------------------------------------------------------------
# The aggregator's side


class MaskedSum:
    """The aggregator's running sum of masked uploads in Z_2^64, then its unmasking and decoding.

    ``manifest`` is the model's plain manifest; ``weights`` maps every node of the roster (all that
    received the public keys and masked against each other) to the normalised weight it pre-multiplied
    by. Uploads fold as they arrive, one tensor at a time into one preallocated int64 buffer per tensor:
    addition in the ring is exact and commutative, so the result is bit-identical in any arrival order
    and memory does not grow with the number of nodes.

    Dropouts: the result is the survivors' weighted sum divided by the survivors' total weight, i.e. the
    survivors' average with the roster's weights renormalised over them. That equals the average under
    weights recomputed over the survivors for the ``samples`` and ``uniform`` schemes; for ``balanced``
    with a source missing, the target's share rises above one half.
    """

    def __init__(
        self,
        manifest: Manifest,
        weights: Mapping[str, float],
        *,
        fixed_point: FixedPoint = DEFAULT_FIXED_POINT,
    ) -> None:
        self.manifest = manifest.shared()
        self.masked = masked_manifest(manifest)
        self.weights = _check_weights(weights)
        if len(self.weights) > fixed_point.max_summands:
            raise SecAggError(
                f"{len(self.weights)} nodes exceed the {fixed_point.max_summands} summands "
                "the encoding allows"
            )
        self.fixed_point = fixed_point
        self.buffers = {spec.name: torch.zeros(spec.shape, dtype=RING_DTYPE) for spec in self.masked}
        self._folded: list[str] = []
        self._state = "open"  # "open" -> "unmasked", or "failed" after a partial fold

    @property
    def folded(self) -> list[str]:
        """Nodes whose uploads are in the sum, sorted."""
        return sorted(self._folded)

    @property
    def missing(self) -> list[str]:
        """Roster nodes whose uploads have not arrived: the dropped ones, if the phase closes now."""
        return sorted(set(self.weights) - set(self._folded))

    def offer(self, node: str, source: Source) -> None:
        """Fold ``node``'s masked upload (safetensors file or bytes) after checking its header."""
        self._check_foldable(node)
        source = Path(source) if isinstance(source, str) else source
        params.check_against(params.read_header(source, allow_metadata=False), self.masked)
        if isinstance(source, bytes):
            self._fold(node, safetensors.torch.load(source).__getitem__)
            return
        with safe_open(os.fspath(source), framework="pt") as handle:
            self._fold(node, handle.get_tensor)

    def add_state(self, node: str, state: Mapping[str, torch.Tensor]) -> None:
        """Fold ``node``'s masked upload held in memory (the simulator's path)."""
        self._check_foldable(node)
        for spec in self.masked:
            tensor = state.get(spec.name)
            if tensor is None or tensor.dtype != RING_DTYPE or tuple(tensor.shape) != spec.shape:
                raise SecAggError(
                    f"node {node!r}'s tensor {spec.name!r} must be int64 of shape {list(spec.shape)}"
                )
        extra = sorted(set(state) - set(self.buffers))
        if extra:
            raise SecAggError(f"node {node!r} uploads tensors outside the shared manifest: {extra}")
        self._fold(node, state.__getitem__)

    def unmask_ring(self, reveals: Mapping[str, SeedReveal]) -> dict[str, torch.Tensor]:
        """Remove the masks in place; return the survivors' plain sum, still fixed-point ring elements.

        ``reveals`` must hold exactly one :class:`SeedReveal` per survivor (folded node), each with a
        pairwise seed for every dropped node (roster nodes never folded) and none other. The sum is then
        consumed: a second call raises.
        """
        if self._state != "open":
            raise SecAggError(f"this sum is {self._state} and cannot be unmasked")
        survivors, dropped = self.folded, self.missing
        if not survivors:
            raise SecAggError("no upload arrived; there is nothing to unmask")
        if set(reveals) != set(survivors):
            raise SecAggError(
                f"reveals must come from exactly the survivors {survivors}; missing "
                f"{sorted(set(survivors) - set(reveals))}, unexpected {sorted(set(reveals) - set(survivors))}"
            )
        for node in survivors:
            reveal = reveals[node]
            if reveal.node != node or set(reveal.pair_seeds) != set(dropped):
                raise SecAggError(
                    f"node {node!r}'s reveal must hold its seeds with exactly the dropped nodes {dropped}; "
                    f"it holds {sorted(reveal.pair_seeds)}"
                )
            seeds = [reveal.self_seed, *reveal.pair_seeds.values()]
            if any(len(seed) != SEED_BYTES for seed in seeds):
                # Checked before any mask is removed: a failure halfway would leave the sum unusable.
                raise SecAggError(f"node {node!r}'s reveal holds a seed that is not {SEED_BYTES} bytes")
        self._state = "unmasked"
        for name, acc in self.buffers.items():
            for node in survivors:
                reveal = reveals[node]
                _ring_add_(acc, expand_mask(reveal.self_seed, name, acc.shape), -1)
                for peer, seed in reveal.pair_seeds.items():
                    # The survivor added sign x PRG(s); the dropped peer's matching mask never arrived.
                    _ring_add_(acc, expand_mask(seed, name, acc.shape), -_pair_sign(node, peer))
        return self.buffers

    def unmask(self, reveals: Mapping[str, SeedReveal]) -> dict[str, torch.Tensor]:
        """The survivors' weighted average, decoded to each tensor's manifest dtype."""
        ring = self.unmask_ring(reveals)
        total = self.total_weight()
        return {
            spec.name: self.fixed_point.decode(ring[spec.name], total, SAFETENSORS_DTYPES[spec.dtype])
            for spec in self.manifest
        }

    def total_weight(self) -> float:
        """The survivors' total weight, by which their weighted sum is divided."""
        return math.fsum(self.weights[n] for n in self._folded)

    def effective_weights(self) -> dict[str, float]:
        """Each survivor's share of the result: the roster's weights renormalised over the survivors."""
        total = self.total_weight()
        return {n: self.weights[n] / total for n in self.folded}

    def error_bound(self) -> float:
        """Most the decoded average (before its cast to the manifest dtype) differs from the exact one."""
        return self.fixed_point.error_bound(len(self._folded), self.total_weight())

    def _check_foldable(self, node: str) -> None:
        if self._state != "open":
            raise SecAggError(f"this sum is {self._state}; no more uploads can be folded")
        if node not in self.weights:
            raise SecAggError(f"node {node!r} is not in this phase's roster {sorted(self.weights)}")
        if node in self._folded:
            raise SecAggError(f"node {node!r} was offered twice")

    def _fold(self, node: str, get_tensor: Callable[[str], torch.Tensor]) -> None:
        try:
            for name, acc in self.buffers.items():
                _ring_add_(acc, get_tensor(name))
        except BaseException:
            # Half an upload in the sum cannot be told apart from the rest: the sum is unusable.
            self._state = "failed"
            raise
        self._folded.append(node)


def _check_weights(node_weights: Mapping[str, float]) -> dict[str, float]:
    if not node_weights:
        raise SecAggError("no weights: the roster is empty")
    bad = {n: w for n, w in node_weights.items() if not (math.isfinite(w) and 0.0 <= w <= 1.0)}
    if bad:
        raise SecAggError(f"weights must lie in [0, 1]; got {bad}")
    total = math.fsum(node_weights.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise SecAggError(f"weights must be normalised (sum to 1); they sum to {total!r}")
    return dict(node_weights)
