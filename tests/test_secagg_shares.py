"""Threshold recovery of secure aggregation: t survivors unmask, whoever vanishes after masking."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import torch

from fedalign.manifest import Manifest
from fedalign.secagg import (
    DEFAULT_FIXED_POINT,
    KeyPair,
    MaskContext,
    MaskedSum,
    Masker,
    SecAggError,
    expand_mask,
)
from fedalign.secagg_limits import threshold
from fedalign.secagg_shares import (
    ShareReveal,
    ciphertext_bytes,
    open_shares,
    recover,
    reveal_shares,
    share_seeds,
)

NODES = ("alpha", "beta", "delta", "gamma", "target")
CONTEXT = MaskContext("fed-1", round=2, phase="adaptation", model="G")
FP = DEFAULT_FIXED_POINT
KEYS = {n: KeyPair.from_private_bytes(hashlib.sha256(f"key:{n}".encode()).digest()) for n in NODES}
PUBLIC = {n: k.public_bytes for n, k in KEYS.items()}
WEIGHTS = {n: w / 15 for n, w in zip(NODES, (1, 2, 3, 4, 5), strict=True)}
T = threshold(len(NODES))  # 3 of 5


def node_state(index: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(index)
    return {"w": torch.randn(4, 6, generator=g), "b": torch.randn(6, generator=g)}


STATES = {n: node_state(i) for i, n in enumerate(NODES)}
MANIFEST = Manifest.from_state_dict("G", STATES["alpha"])


class Phase:
    """One masked context: every node masks and shares; the aggregator folds what arrives."""

    def __init__(self, uploading: tuple[str, ...] = NODES) -> None:
        self.maskers = {n: Masker(n, KEYS[n], PUBLIC, WEIGHTS[n], CONTEXT) for n in NODES}
        self.uploads = {n: self.maskers[n].mask_state(STATES[n], MANIFEST) for n in uploading}
        # sender -> holder -> ciphertext; a node's shares travel with its upload, so only uploaders share.
        self.shares = {n: share_seeds(self.maskers[n], T) for n in uploading}
        self.total = MaskedSum(MANIFEST, WEIGHTS)
        for n in uploading:
            self.total.add_state(n, self.uploads[n])

    def relayed_to(self, holder: str, senders: list[str]) -> dict[str, bytes]:
        return {s: self.shares[s][holder] for s in senders}

    def answer(self, holder: str, dropped: list[str]) -> ShareReveal:
        survivors = [n for n in NODES if n not in dropped]
        return reveal_shares(
            holder, KEYS[holder], PUBLIC, CONTEXT, self.relayed_to(holder, survivors), dropped
        )


def test_a_survivor_lost_after_masking_is_unmasked_from_the_others_shares() -> None:
    """gamma drops before uploading; beta uploads, then never answers; three survivors are enough."""
    phase = Phase(uploading=("alpha", "beta", "delta", "target"))
    dropped = phase.total.missing
    assert dropped == ["gamma"]
    answers = {h: phase.answer(h, dropped) for h in ("alpha", "delta", "target")}
    seeds = recover(NODES, dropped, answers, T)
    # The reconstructed seeds are exactly those each survivor would have revealed itself.
    for node, reveal in seeds.items():
        own = phase.maskers[node].reveal(dropped)
        assert (reveal.self_seed, dict(reveal.pair_seeds)) == (own.self_seed, dict(own.pair_seeds))
    ring = phase.total.unmask_ring(seeds)
    for name in MANIFEST.names:  # bit-exact: beta's masks are gone although beta never answered
        expected = sum(FP.encode(STATES[n][name], WEIGHTS[n]) for n in ("alpha", "beta", "delta", "target"))
        assert torch.equal(ring[name], expected)


def test_any_t_survivors_give_the_same_seeds() -> None:
    phase = Phase()
    answers = {h: phase.answer(h, []) for h in NODES}
    results = [
        recover(NODES, [], {h: answers[h] for h in holders}, T)
        for holders in itertools.combinations(NODES, T)
    ]
    assert all(r == results[0] for r in results)
    assert {n: r.self_seed for n, r in results[0].items()} == {
        n: m.reveal([]).self_seed for n, m in phase.maskers.items()
    }


def test_fewer_than_t_answers_cannot_unmask() -> None:
    phase = Phase()
    answers = {h: phase.answer(h, []) for h in NODES[: T - 1]}
    with pytest.raises(SecAggError, match=f"unmasking needs {T}"):
        recover(NODES, [], answers, T)


@pytest.mark.parametrize(
    "dropped", [list(c) for k in range(0, 4) for c in itertools.combinations(NODES, k)], ids=str
)
def test_no_node_ever_has_both_its_self_seed_and_its_pairwise_seeds_with_survivors_revealed(
    dropped: list[str],
) -> None:
    """The invariant that keeps one upload secret, over every dropout list with two survivors or more:
    self-seed shares for survivors only, pairwise-seed shares only across survivor and dropped node."""
    survivors = [n for n in NODES if n not in dropped]
    phase = Phase(uploading=tuple(survivors))
    for holder in survivors:
        answer = phase.answer(holder, dropped)
        assert set(answer.self_shares) == set(survivors)
        revealed_pairs = {frozenset((n, d)) for n, peers in answer.pair_shares.items() for d in peers}
        assert revealed_pairs == {frozenset((n, d)) for n in survivors for d in dropped}
        for node in NODES:
            self_revealed = node in answer.self_shares
            pairs_with_survivors = [p for p in revealed_pairs if node in p and (p - {node}) <= set(survivors)]
            assert not (self_revealed and pairs_with_survivors), node
            assert self_revealed != (node in dropped)


def test_a_node_declared_dropped_late_stays_hidden() -> None:
    """beta's upload and shares arrived, but the aggregator says beta dropped: the holders open none of
    beta's shares, so its pairwise seeds come out but its self seed does not, and its upload stays masked."""
    phase = Phase()
    late = "beta"
    survivors = [n for n in NODES if n != late]
    with pytest.raises(SecAggError, match="stay sealed"):  # relaying beta's shares gets nothing opened
        reveal_shares("alpha", KEYS["alpha"], PUBLIC, CONTEXT, phase.relayed_to("alpha", list(NODES)), [late])
    answers = {h: phase.answer(h, [late]) for h in survivors}
    assert all(late not in a.self_shares for a in answers.values())
    seeds = recover(NODES, [late], answers, T)
    stripped = phase.uploads[late]["b"].clone()
    for n in survivors:  # strip every pairwise mask of beta's upload with the recovered seeds
        mask = expand_mask(seeds[n].pair_seeds[late], "b", stripped.shape)
        stripped -= mask if n > late else -mask
    garbage = FP.decode(stripped, WEIGHTS[late], torch.float64)
    assert float((garbage - STATES[late]["b"].double()).abs().median()) > 1e6


def test_a_holder_refuses_lists_that_would_unmask_one_node_or_name_strangers() -> None:
    phase = Phase()
    with pytest.raises(SecAggError, match="listed as dropped"):
        phase.answer("alpha", ["alpha"])
    with pytest.raises(SecAggError, match="outside this phase"):
        reveal_shares(
            "alpha", KEYS["alpha"], PUBLIC, CONTEXT, phase.relayed_to("alpha", list(NODES)), ["zed"]
        )
    with pytest.raises(SecAggError, match="only 1 node"):
        phase.answer("alpha", ["beta", "delta", "gamma", "target"])
    with pytest.raises(SecAggError, match="no shares from survivors"):
        reveal_shares("alpha", KEYS["alpha"], PUBLIC, CONTEXT, phase.relayed_to("alpha", ["alpha"]), [])


def test_shares_are_sealed_to_their_holder_and_context() -> None:
    phase = Phase()
    sealed = phase.shares["beta"]["alpha"]
    assert len(sealed) == ciphertext_bytes(len(NODES))
    assert open_shares("alpha", KEYS["alpha"], PUBLIC, CONTEXT, "beta", sealed).x == 1
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    other_context = MaskContext("fed-1", round=3, phase="adaptation", model="G")
    for holder, context, sender, data in [
        ("alpha", CONTEXT, "beta", tampered),  # altered in transit
        ("delta", CONTEXT, "beta", sealed),  # relayed to another holder
        ("alpha", other_context, "beta", sealed),  # replayed in another context
        ("alpha", CONTEXT, "gamma", sealed),  # claimed to come from another sender
    ]:
        with pytest.raises(SecAggError, match="do not authenticate"):
            open_shares(holder, KEYS[holder], PUBLIC, context, sender, data)
    with pytest.raises(SecAggError, match="bytes"):
        open_shares("alpha", KEYS["alpha"], PUBLIC, CONTEXT, "beta", sealed[:-2])


def test_masking_an_upload_again_hands_out_the_same_sealed_shares() -> None:
    """A re-run step masks identically (served self seeds derive from the key) and must share identically:
    a holder must not get points of two polynomials of one seed, and the server recognises the repeat."""
    seed = KEYS["beta"].self_seed("beta", CONTEXT)
    first, second = (
        share_seeds(Masker("beta", KEYS["beta"], PUBLIC, WEIGHTS["beta"], CONTEXT, self_seed=seed), T)
        for _ in "ab"
    )
    assert first == second
    other = share_seeds(Masker("beta", KEYS["beta"], PUBLIC, WEIGHTS["beta"], CONTEXT), T)  # another b
    assert all(other[h] != first[h] for h in NODES)


def test_a_corrupted_answer_is_detected_when_more_than_t_answer() -> None:
    phase = Phase()
    answers = {h: phase.answer(h, []) for h in NODES}
    bad = answers["gamma"]
    flipped = bytearray(bad.self_shares["alpha"])
    flipped[-1] ^= 1
    answers["gamma"] = ShareReveal(
        bad.holder, bad.x, {**bad.self_shares, "alpha": bytes(flipped)}, bad.pair_shares
    )
    with pytest.raises(SecAggError, match="do not give a seed"):
        recover(NODES, [], answers, T)


def test_answers_holding_other_shares_than_the_list_asks_are_refused() -> None:
    phase = Phase(uploading=("alpha", "beta", "delta", "target"))
    answers = {h: phase.answer(h, ["gamma"]) for h in ("alpha", "delta", "target")}
    with pytest.raises(SecAggError, match="for exactly the survivors"):
        recover(NODES, ["gamma", "beta"], answers, T)
    with pytest.raises(SecAggError, match="no survivor"):
        recover(NODES, ["alpha"], answers, T)


@pytest.mark.parametrize(("n", "t"), [(2, 2), (3, 2), (4, 3), (5, 3), (10, 6)])
def test_the_default_threshold_is_a_strict_majority(n: int, t: int) -> None:
    assert threshold(n) == t


def test_thresholds_outside_the_safe_range_are_refused() -> None:
    assert threshold(10, 0.75) == 8
    assert threshold(10, 0.95) == 10
    for fraction in (0.4, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"\[0.5, 1.0\)"):
            threshold(10, fraction)
    with pytest.raises(SecAggError, match="threshold 1"):
        share_seeds(Phase().maskers["alpha"], 1)
