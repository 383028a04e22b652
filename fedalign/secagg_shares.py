"""Threshold recovery for secure aggregation: any t survivors unmask a phase, whoever else vanishes.

The secret sharing of Bonawitz et al. 2017 (CCS '17, section 4), on top of `fedalign.secagg`'s masks. With
its masked upload, every node i hands each node j of the phase's roster (itself included) an encrypted
share of its seeds (:func:`share_seeds`): a Shamir share (`fedalign.shamir`, threshold t) of its self seed
b_i and of each pairwise seed s_ik, k a peer. The shares travel through the aggregator encrypted with
ChaCha20-Poly1305 under a key from the pair's X25519 agreement (`KeyPair.share_key`), the context, sender
and holder bound as associated data: the aggregator can neither read nor forge them.

At unmasking the aggregator names the one dropout list of the context (roster nodes whose uploads are not
in the sum); the survivors are the rest. Any t survivors answer (:func:`reveal_shares`), each with, for
every survivor i, its share of b_i, and for every survivor i and dropped node d, its share of s_id; and
nothing else. The aggregator combines t answers into each survivor's :class:`~fedalign.secagg.SeedReveal`
(:func:`recover`), as if the survivor had revealed its own seeds, and unmasks the sum with
`MaskedSum.unmask`. A survivor that uploads and then never answers no longer stalls the phase.

**The invariant** that keeps one upload secret: for one node, a holder never reveals both its self seed's
share and a share of a pairwise seed with a survivor. Self-seed shares are revealed for survivors only;
pairwise-seed shares only between a survivor and a dropped node; a dropped node's own shares are never
opened (it sent none in the context, or, dropped late, they stay sealed). So a node declared dropped whose
upload did arrive stays hidden by its self mask, and a survivor's pairwise masks with other survivors stay
on, cancelling only in the sum.

**Why the shares are per upload, not per key setup.** The paper shares each user's pairwise private key
once per round, with fresh keys every round. Here a node's X25519 key lives as long as the federation and
every seed is derived per :class:`~fedalign.secagg.MaskContext`; reconstructing a dropped node's private
key would expose its pairwise masks in every context, including the ones where it survived and its self
seed was revealed, i.e. all its uploads. So each node shares the seeds of one context with that context's
upload: what t holders can reconstruct is bound to one upload, and the invariant holds per context. The
cost is one ciphertext of ``2 + 66 n + 28`` bytes per holder, n^2 of them per context.

**Threat model** (as `fedalign.secagg`): an honest-but-curious aggregator that colludes with fewer than
t nodes, and nodes that answer one dropout list per context (the served node's ledger enforces it). The
threshold is a majority or more (`threshold`): two disjoint groups of holders, each told a different list
by a lying aggregator, cannot both reach t. An actively malicious aggregator (forged keys, per-node lists
with overlapping holders) needs the paper's signatures and consistency round, not implemented here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedalign import shamir
from fedalign.secagg import MIN_SURVIVORS, KeyPair, MaskContext, Masker, SecAggError, SeedReveal, _encode_info
from fedalign.secagg_limits import INDEX_BYTES, MIN_THRESHOLD, NONCE_BYTES, ciphertext_bytes


def share_index(roster: Collection[str], holder: str) -> int:
    """The holder's x coordinate: its 1-based place in the sorted roster."""
    ordered = sorted(roster)
    if holder not in ordered:
        raise SecAggError(f"node {holder!r} is not in the roster {ordered}")
    return ordered.index(holder) + 1


def _associated_data(context: MaskContext, sender: str, holder: str) -> bytes:
    return _encode_info("shares", *context.fields(), sender, holder)


def share_seeds(masker: Masker, t: int) -> dict[str, bytes]:
    """The sender's side: holder -> its encrypted shares of this upload's self and pairwise seeds.

    Plaintext: the holder's index (2 bytes), then the share of b_i and the shares of s_ik for each peer
    k in sorted order, 66 bytes each. The polynomials' coefficients derive from the node's private key
    and the context, so masking one upload again hands out the same shares.
    """
    roster = sorted(masker.public_keys)
    if not MIN_THRESHOLD <= t <= len(roster):
        raise SecAggError(f"threshold {t} must lie in [{MIN_THRESHOLD}, {len(roster)}] for this roster")
    self_seed, pair_seeds = masker.seeds_to_share()
    # Keyed by a secret of the node's own and bound to the seeds themselves: two different seed sets in
    # one context (a misuse) still get independent polynomials, so no holder learns their difference.
    coefficients = hashlib.blake2b(
        self_seed + b"".join(pair_seeds[peer] for peer in masker.peers),
        key=masker.keys.private_seed("share-coefficients", masker.node, masker.context),
        digest_size=32,
    ).digest()
    secrets_ = [(b"self", self_seed)] + [
        (b"pair/" + peer.encode("utf-8"), pair_seeds[peer]) for peer in masker.peers
    ]
    split = [shamir.split(secret, len(roster), t, coefficients, label) for label, secret in secrets_]
    out: dict[str, bytes] = {}
    for x, holder in enumerate(roster, start=1):
        plaintext = x.to_bytes(INDEX_BYTES, "big") + b"".join(shares[x - 1].value_bytes() for shares in split)
        key = masker.keys.share_key(masker.node, holder, masker.public_keys[holder], masker.context)
        # A synthetic nonce (a keyed hash of the plaintext): a re-run step sends the same bytes, which the
        # server recognises as a repeated completion, and two different plaintexts under one key never
        # share a nonce.
        nonce = hashlib.blake2b(plaintext, key=key, digest_size=NONCE_BYTES).digest()
        out[holder] = nonce + ChaCha20Poly1305(key).encrypt(
            nonce, plaintext, _associated_data(masker.context, masker.node, holder)
        )
    return out


@dataclass(frozen=True)
class HeldShares:
    """One sender's shares as its holder decrypted them: index x, the share of b, the shares of s per peer."""

    x: int
    self_share: bytes
    pair_shares: Mapping[str, bytes]


def open_shares(
    holder: str,
    keys: KeyPair,
    public_keys: Mapping[str, bytes],
    context: MaskContext,
    sender: str,
    ciphertext: bytes,
) -> HeldShares:
    """Decrypt and check what ``sender`` handed ``holder``; refuses anything forged, swapped or malformed."""
    roster = sorted(public_keys)
    if sender not in public_keys:
        raise SecAggError(f"shares from {sender!r}, a node outside the roster {roster}")
    if len(ciphertext) != ciphertext_bytes(len(roster)):
        raise SecAggError(
            f"{sender!r}'s shares are {len(ciphertext)} bytes; a roster of {len(roster)} needs "
            f"{ciphertext_bytes(len(roster))}"
        )
    key = keys.share_key(sender, holder, public_keys[sender], context)
    nonce, sealed = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, sealed, _associated_data(context, sender, holder))
    except InvalidTag as exc:
        raise SecAggError(
            f"{sender!r}'s shares for {holder!r} do not authenticate in context {context}"
        ) from exc
    x = int.from_bytes(plaintext[:INDEX_BYTES], "big")
    if x != share_index(roster, holder):
        raise SecAggError(f"{sender!r}'s shares carry index {x}, not {holder!r}'s")
    values = [
        plaintext[INDEX_BYTES + k * shamir.SHARE_BYTES : INDEX_BYTES + (k + 1) * shamir.SHARE_BYTES]
        for k in range(len(roster))
    ]
    peers = [n for n in roster if n != sender]
    return HeldShares(x, values[0], dict(zip(peers, values[1:], strict=True)))


@dataclass(frozen=True)
class ShareReveal:
    """A holder's answer to the dropout list: shares of the survivors' self seeds and of their pairwise
    seeds with dropped nodes, never anything else (the module's invariant)."""

    holder: str
    x: int
    self_shares: Mapping[str, bytes]  # survivor -> share of its self seed
    pair_shares: Mapping[str, Mapping[str, bytes]]  # survivor -> dropped node -> share of their pair seed


def reveal_shares(
    holder: str,
    keys: KeyPair,
    public_keys: Mapping[str, bytes],
    context: MaskContext,
    received: Mapping[str, bytes],
    dropped: Collection[str],
    *,
    min_survivors: int = MIN_SURVIVORS,
) -> ShareReveal:
    """The holder's side of the Unmasking round for one context.

    ``public_keys`` is the roster's, ``received`` the encrypted shares the aggregator relays to this
    holder, one per survivor (roster nodes not in ``dropped``). Refuses when the holder is listed as
    dropped, the list names nodes outside the roster, fewer than ``min_survivors`` would remain, or a
    survivor's shares are missing; shares relayed from a dropped node are refused unopened. The caller
    answers one dropout list per context (`workers.state.SecAggLedger` for a served node).
    """
    roster = sorted(public_keys)
    dropped_set = set(dropped)
    if holder in dropped_set:
        raise SecAggError(f"node {holder!r} is listed as dropped; a dropped node reveals nothing")
    unknown = sorted(dropped_set - set(roster))
    if unknown:
        raise SecAggError(f"the dropout list names nodes outside this phase: {unknown}")
    survivors = [n for n in roster if n not in dropped_set]
    if len(survivors) < min_survivors:
        raise SecAggError(
            f"only {len(survivors)} node(s) would survive; unmasking fewer than {min_survivors} "
            "would reveal individual uploads"
        )
    from_dropped = sorted(dropped_set & set(received))
    if from_dropped:
        raise SecAggError(f"shares relayed from nodes listed as dropped {from_dropped}: they stay sealed")
    missing = sorted(set(survivors) - set(received))
    if missing:
        raise SecAggError(f"no shares from survivors {missing}: every survivor shared its seeds")
    held = {n: open_shares(holder, keys, public_keys, context, n, received[n]) for n in survivors}
    return ShareReveal(
        holder,
        share_index(roster, holder),
        {n: held[n].self_share for n in survivors},
        {n: {d: held[n].pair_shares[d] for d in sorted(dropped_set)} for n in survivors},
    )


def recover(
    roster: Collection[str], dropped: Collection[str], reveals: Mapping[str, ShareReveal], t: int
) -> dict[str, SeedReveal]:
    """The aggregator's side: each survivor's seeds, reconstructed from at least ``t`` holders' answers.

    The result is what `MaskedSum.unmask` takes: per survivor, its self seed and its pairwise seeds with
    the dropped nodes. Refuses fewer than ``t`` answers, answers from outside the survivors, and answers
    that hold other shares than the dropout list asks for; shares that do not lie on one polynomial (a
    corrupted answer) fail in `fedalign.shamir.combine`.
    """
    ordered = sorted(roster)
    dropped_list = sorted(set(dropped))
    survivors = [n for n in ordered if n not in dropped_list]
    if len(reveals) < t:
        raise SecAggError(
            f"{len(reveals)} holder(s) answered ({sorted(reveals)}); unmasking needs {t} of the "
            f"survivors {survivors}"
        )
    for holder, answer in reveals.items():
        if holder not in survivors or answer.holder != holder or answer.x != share_index(ordered, holder):
            raise SecAggError(f"an answer from {holder!r}, which is no survivor of this phase or misnamed")
        if set(answer.self_shares) != set(survivors) or set(answer.pair_shares) != set(survivors):
            raise SecAggError(f"{holder!r}'s answer must hold shares for exactly the survivors {survivors}")
        if any(set(pairs) != set(dropped_list) for pairs in answer.pair_shares.values()):
            raise SecAggError(f"{holder!r}'s answer must hold pair shares with exactly {dropped_list}")
    answers = [reveals[h] for h in sorted(reveals)]

    def combine(values: list[tuple[int, bytes]]) -> bytes:
        try:
            return shamir.combine([shamir.Share.from_bytes(x, raw) for x, raw in values], t)
        except shamir.SharingError as exc:
            raise SecAggError(f"the holders' shares do not give a seed: {exc}") from exc

    return {
        node: SeedReveal(
            node,
            combine([(a.x, a.self_shares[node]) for a in answers]),
            {d: combine([(a.x, a.pair_shares[node][d]) for a in answers]) for d in dropped_list},
        )
        for node in survivors
    }
