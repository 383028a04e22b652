"""Secure aggregation (Bonawitz et al. 2017): exact unmasking, masks that hide, dropouts, keys, ranges."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from fedalign.aggregate import average_states
from fedalign.config import FederationConfig
from fedalign.manifest import Manifest
from fedalign.params import ParameterError, to_bytes
from fedalign.phases import Schedule
from fedalign.secagg import (
    DEFAULT_FIXED_POINT,
    FixedPoint,
    KeyPair,
    MaskContext,
    MaskedSum,
    Masker,
    SecAggError,
    SeedReveal,
    expand_mask,
    masked_manifest,
    validate_masked,
)

NODES = ("alpha", "beta", "gamma", "target")
CONTEXT = MaskContext("fed-1", round=3, phase="adaptation", model="G")
FP = DEFAULT_FIXED_POINT
F32_HALF_ULP = 2.0**-24  # relative rounding of the decoded float64 value to float32
# p-value below which a uniformity test counts as failed; every input below is fixed, so each test is
# deterministic, and this only says how unusual a fixed outcome would have to be to fail it.
ALPHA = 1e-3


def keys(node: str) -> KeyPair:
    """Deterministic key pairs, so that the statistical tests are reproducible."""
    return KeyPair.from_private_bytes(hashlib.sha256(f"key:{node}".encode()).digest())


KEYS = {n: keys(n) for n in NODES}
PUBLIC = {n: k.public_bytes for n, k in KEYS.items()}


def node_state(index: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(index)
    return {"w": torch.randn(8, 16, generator=g), "b": 3 * torch.randn(16, generator=g)}


STATES = {n: node_state(i) for i, n in enumerate(NODES)}
MANIFEST = Manifest.from_state_dict("G", STATES["alpha"])
_raw = torch.rand(len(NODES), generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.1
WEIGHTS = {n: float(w) for n, w in zip(NODES, _raw / _raw.sum(), strict=True)}


def maskers(context: MaskContext = CONTEXT, nodes: tuple[str, ...] = NODES) -> dict[str, Masker]:
    """Every node's masker for one context, with self seeds fixed per node and context."""
    public = {n: PUBLIC[n] for n in nodes}
    return {
        n: Masker(
            n,
            KEYS[n],
            public,
            WEIGHTS[n],
            context,
            self_seed=hashlib.sha256(f"self:{n}:{context}".encode()).digest(),
        )
        for n in nodes
    }


def as_f64(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in state.items()}


def assert_close_to(
    result: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], bound: float
) -> None:
    """Within the fixed-point bound, plus the half-ulp of the final cast to float32."""
    for name, ref in reference.items():
        assert result[name].dtype == torch.float32
        slack = bound + ref.abs() * F32_HALF_ULP
        assert bool(((result[name].double() - ref).abs() <= slack).all()), name


def bytes_of(tensor: torch.Tensor) -> np.ndarray:
    return tensor.contiguous().numpy().view(np.uint8).ravel()


def bit_fractions(tensor: torch.Tensor, bits: range) -> np.ndarray:
    """The fraction of elements with each of ``bits`` set."""
    values = tensor.numpy().view(np.uint64).ravel()
    return np.array([np.mean((values >> np.uint64(b)) & np.uint64(1)) for b in bits])


def sign_extended_fraction(tensor: torch.Tensor) -> float:
    """The fraction of elements whose top byte is 0x00 or 0xFF, as for every small signed value."""
    top = tensor.numpy().view(np.uint64).ravel() >> np.uint64(56)
    return float(np.mean((top == 0) | (top == 0xFF)))


def uniform_bytes_p(tensor: torch.Tensor) -> float:
    """Chi-square goodness of fit of the tensor's byte values to the uniform distribution on 0..255."""
    counts = np.bincount(bytes_of(tensor), minlength=256)
    return float(stats.chisquare(counts).pvalue)


# ---------------------------------------------------------------------------------------------------------
# 1. Unmasked result = plain weighted average


def test_unmasked_sum_is_the_weighted_average_within_the_fixed_point_bound(tmp_path: Path) -> None:
    ms = maskers()
    uploads: dict[str, bytes | Path] = {n: to_bytes(m.mask_state(STATES[n], MANIFEST)) for n, m in ms.items()}
    stored = tmp_path / "target.safetensors"  # one upload read from a file, one tensor at a time
    stored.write_bytes(uploads["target"])
    uploads["target"] = stored
    for data in uploads.values():
        validate_masked(data, MANIFEST, max_bytes=1 << 20)

    total = MaskedSum(MANIFEST, WEIGHTS)
    for n in NODES:
        total.offer(n, uploads[n])
    reveals = {n: m.reveal([]) for n, m in ms.items()}
    result = total.unmask(reveals)

    # Bound: half a fixed-point step per summand, 4 x 2^-25 ≈ 1.2e-7, then float32's half-ulp.
    bound = total.error_bound()
    assert bound == pytest.approx(1.01 * len(NODES) * 2.0**-25)
    exact = average_states({n: as_f64(s) for n, s in STATES.items()}, WEIGHTS)
    assert_close_to(result, exact, bound)
    # And against the plain float32 path, which carries its own accumulation error (a few float32 ulps).
    plain = average_states(STATES, WEIGHTS)
    for name in plain:
        scale = max(float(s[name].abs().max()) for s in STATES.values())
        assert float((result[name] - plain[name]).abs().max()) <= bound + 8 * F32_HALF_ULP * scale

    # Ring addition is exact and commutative: any arrival order gives the same bits.
    again = MaskedSum(MANIFEST, WEIGHTS)
    for n in reversed(NODES):
        again.offer(n, uploads[n])
    for name, tensor in again.unmask(reveals).items():
        assert torch.equal(tensor, result[name])


# ---------------------------------------------------------------------------------------------------------
# 2. What the aggregator receives hides the parameters


def test_a_masked_upload_is_uniform_whatever_the_input() -> None:
    n = 4096  # 32 KiB of ring bytes: 128 expected per byte value
    inputs = {
        "zeros": torch.zeros(n),
        "structured": torch.linspace(-1000.0, 1000.0, n),  # large, sorted, half negative: easy to spot
    }
    masked: dict[str, torch.Tensor] = {}
    for exchange, (label, x) in enumerate(inputs.items(), start=1):
        context = MaskContext("fed-1", round=3, phase="discriminator", model="D", exchange=exchange)
        masked[label] = maskers(context)["alpha"].mask("w", x)

    sigma = (0.25 / n) ** 0.5
    for label, y in masked.items():
        assert uniform_bytes_p(y) > ALPHA, label
        # Low bits carry the fixed-point fraction, high bits the sign: both must look like coin flips.
        for fractions in (bit_fractions(y, range(8)), bit_fractions(y, range(56, 64))):
            assert np.all(np.abs(fractions - 0.5) < 5 * sigma), label
        # A small value in two's complement has a top byte of 0x00 or 0xFF; a uniform one, 2 times in 256.
        assert sign_extended_fraction(y) < 2 / 256 + 5 * (2 / 256 / n) ** 0.5, label
        # Decoded on its own, a masked upload is garbage: nowhere near the parameters.
        garbage = FP.decode(y, WEIGHTS["alpha"], torch.float64)
        assert float((garbage - inputs[label].double()).abs().median()) > 1e6, label

    # The two inputs' masked byte distributions cannot be told apart (two-sample chi-square).
    table = np.stack([np.bincount(bytes_of(masked[k]), minlength=256) for k in inputs])
    assert stats.chi2_contingency(table).pvalue > ALPHA

    # The same tests do see through an unmasked encoding: they have the power to detect structure.
    plain = FP.encode(inputs["structured"], WEIGHTS["alpha"])
    assert uniform_bytes_p(plain) < ALPHA
    assert sign_extended_fraction(plain) == 1.0


def test_a_partial_sum_reveals_neither_the_others_nor_the_remaining_node() -> None:
    ms = maskers()
    uploads = {n: m.mask_state(STATES[n], MANIFEST) for n, m in ms.items()}
    weighted = {n: {k: WEIGHTS[n] * v.double() for k, v in s.items()} for n, s in STATES.items()}
    last, first_three = NODES[-1], NODES[:-1]

    partial = MaskedSum(MANIFEST, WEIGHTS)
    for n in first_three:
        partial.add_state(n, uploads[n])
    decoded = {k: FP.decode(v, 1.0, torch.float64) for k, v in partial.buffers.items()}
    true_total = average_states({n: as_f64(s) for n, s in STATES.items()}, WEIGHTS)
    for name in MANIFEST.names:
        assert uniform_bytes_p(partial.buffers[name]) > ALPHA
        three = sum(weighted[n][name] for n in first_three)
        assert float((decoded[name] - three).abs().median()) > 1e6
        # Even knowing the true total, total minus this partial sum is not the last node's part.
        assert float((true_total[name] - decoded[name] - weighted[last][name]).abs().median()) > 1e6


# ---------------------------------------------------------------------------------------------------------
# 3. Dropouts


def test_a_node_dropping_after_masking_leaves_the_survivors_average_exactly() -> None:
    ms = maskers()
    dropped = "gamma"
    survivors = [n for n in NODES if n != dropped]
    total = MaskedSum(MANIFEST, WEIGHTS)
    for n in survivors:  # gamma masked against everyone, then never uploaded
        total.add_state(n, ms[n].mask_state(STATES[n], MANIFEST))
    assert total.missing == [dropped]

    reveals = {n: ms[n].reveal(total.missing) for n in survivors}
    for reveal in reveals.values():  # seeds with the dropped node only; nothing of another survivor
        assert set(reveal.pair_seeds) == {dropped}
    total_weight = total.total_weight()
    ring = total.unmask_ring(reveals)
    for name in MANIFEST.names:  # bit-exact: every mask is gone, only the encodings remain
        expected = sum(FP.encode(STATES[n][name], WEIGHTS[n]) for n in survivors)
        assert torch.equal(ring[name], expected)

    # Weights: the survivors' weighted sum over their total weight = weights renormalised over them.
    renormalised = {n: WEIGHTS[n] / total_weight for n in survivors}
    assert total.effective_weights() == pytest.approx(renormalised)
    exact = average_states({n: as_f64(STATES[n]) for n in survivors}, renormalised)
    result = {k: FP.decode(v, total_weight) for k, v in ring.items()}
    assert_close_to(result, exact, FP.error_bound(len(survivors), total_weight))


def test_a_node_declared_dropped_late_stays_hidden_by_its_self_mask() -> None:
    ms = maskers()
    late = "beta"
    upload = ms[late].mask("b", STATES[late]["b"])  # arrived, but the aggregator says beta dropped
    stripped = upload.clone()
    for n in NODES:
        if n != late:
            seed = ms[n].reveal([late]).pair_seeds[late]
            # Remove beta's pairwise mask with n: beta added +PRG for n after it, -PRG before it.
            mask = expand_mask(seed, "b", stripped.shape)
            stripped -= mask if n > late else -mask
    with pytest.raises(SecAggError, match="listed as dropped"):
        ms[late].reveal([late])
    garbage = FP.decode(stripped, WEIGHTS[late], torch.float64)
    assert float((garbage - STATES[late]["b"].double()).abs().median()) > 1e6
    # The self mask is all that is left: with beta's self seed (never revealed) it would decode.
    self_seed = hashlib.sha256(f"self:{late}:{CONTEXT}".encode()).digest()
    exposed = FP.decode(stripped - expand_mask(self_seed, "b", stripped.shape), WEIGHTS[late])
    assert torch.allclose(exposed, STATES[late]["b"], atol=2 * FP.error_bound(1, WEIGHTS[late]))


def test_nodes_refuse_reveals_that_would_unmask_one_node() -> None:
    ms = maskers()
    alpha = ms["alpha"]
    with pytest.raises(SecAggError, match="outside this phase"):
        alpha.reveal(["mallory"])
    with pytest.raises(SecAggError, match="survive"):
        alpha.reveal(["beta", "gamma", "target"])  # alpha's own upload would be the "sum"
    first = alpha.reveal(["gamma"])
    assert alpha.reveal(["gamma"]) is first  # a repeated request changes nothing
    with pytest.raises(SecAggError, match="already answered"):
        alpha.reveal(["beta"])  # a second list could add beta's pair seed to a revealed self seed
    with pytest.raises(SecAggError, match="revealed"):
        alpha.mask("w", STATES["alpha"]["w"])
    ms["beta"].mask("b", STATES["beta"]["b"])
    with pytest.raises(SecAggError, match="single-use"):
        ms["beta"].mask("b", STATES["beta"]["b"])  # one mask on two values leaks their difference

    total = MaskedSum(MANIFEST, WEIGHTS)
    for n in ("alpha", "beta", "target"):
        total.add_state(n, maskers()[n].mask_state(STATES[n], MANIFEST))
    reveal_alpha = SeedReveal("alpha", bytes(32), {"gamma": bytes(32)})
    with pytest.raises(SecAggError, match="exactly the survivors"):
        total.unmask({"alpha": reveal_alpha})
    wrong = {n: SeedReveal(n, bytes(32), {}) for n in ("alpha", "beta", "target")}
    with pytest.raises(SecAggError, match="dropped nodes"):
        total.unmask(wrong)
    short = {n: SeedReveal(n, bytes(31), {"gamma": bytes(32)}) for n in ("alpha", "beta", "target")}
    with pytest.raises(SecAggError, match="not 32 bytes"):
        total.unmask(short)
    assert total.missing == ["gamma"]  # refused reveals leave the sum untouched and open


# ---------------------------------------------------------------------------------------------------------
# 4. Keys


def test_pairwise_seeds_agree_between_the_two_ends_only_and_per_context() -> None:
    a, b, c = KEYS["alpha"], KEYS["beta"], KEYS["gamma"]
    ab = a.pair_seed("alpha", "beta", b.public_bytes, CONTEXT)
    assert len(ab) == 32
    assert ab == b.pair_seed("beta", "alpha", a.public_bytes, CONTEXT)
    others = [
        MaskContext("fed-1", round=4, phase="adaptation", model="G"),
        MaskContext("fed-1", round=3, phase="discriminator", model="G"),
        MaskContext("fed-1", round=3, phase="adaptation", model="T"),
        MaskContext("fed-1", round=3, phase="adaptation", model="G", exchange=1),
        MaskContext("fed-2", round=3, phase="adaptation", model="G"),
    ]
    seeds = {ab} | {a.pair_seed("alpha", "beta", b.public_bytes, ctx) for ctx in others}
    assert len(seeds) == 1 + len(others)
    # A third party holds neither private key: its own exchanges with either end give other seeds.
    assert c.pair_seed("gamma", "beta", b.public_bytes, CONTEXT) != ab
    assert c.pair_seed("gamma", "alpha", a.public_bytes, CONTEXT) != ab
    assert a.pair_seed("alpha", "gamma", c.public_bytes, CONTEXT) != ab
    # Masks expand per tensor name: one seed, two names, two independent streams.
    assert not torch.equal(expand_mask(ab, "w", (64,)), expand_mask(ab, "b", (64,)))
    assert torch.equal(expand_mask(ab, "w", (4, 16)).ravel(), expand_mask(ab, "w", (64,)))
    with pytest.raises(SecAggError, match="own key"):
        Masker("alpha", KEYS["alpha"], {**PUBLIC, "alpha": PUBLIC["beta"]}, 0.5, CONTEXT)


def test_each_phase_masks_under_its_own_context_told_apart_by_exchange() -> None:
    schedule = Schedule.of(FederationConfig.model_validate({"hyperparameters": {"disc_exchanges": 2}}))
    disc1, disc2, adapt, *_ = schedule.round(1)
    assert MaskContext.of_phase("fed-1", 1, disc1, "D") == MaskContext("fed-1", 1, "discriminator", "D", 1)
    assert MaskContext.of_phase("fed-1", 1, disc2, "D") == MaskContext("fed-1", 1, "discriminator", "D", 2)
    assert MaskContext.of_phase("fed-1", 1, adapt, "G") == MaskContext("fed-1", 1, "adaptation", "G")
    (train, *_) = Schedule.of(FederationConfig.model_validate({"algorithm": "fedavg"})).round(1)
    assert MaskContext.of_phase("fed-1", 1, train, "T") == MaskContext("fed-1", 1, "train", "T")


# ---------------------------------------------------------------------------------------------------------
# 5. Range and overflow


def test_encoding_refuses_values_outside_the_representable_range() -> None:
    edge = torch.tensor([FP.max_abs, -FP.max_abs, 0.0])
    assert torch.equal(FP.decode(FP.encode(edge), dtype=torch.float64), edge.double())
    for bad, match in (
        (torch.tensor([FP.max_abs * 1.001]), "beyond the representable"),
        (torch.tensor([-(2.0**40)]), "beyond the representable"),
        (torch.tensor([float("nan")]), "NaN or infinite"),
        (torch.tensor([float("inf")]), "NaN or infinite"),
    ):
        with pytest.raises(ValueError, match=match):
            FP.encode(bad)
    with pytest.raises(ValueError, match=r"weight must lie in \[0, 1\]"):
        FP.encode(torch.ones(2), 1.5)


def test_the_summand_bound_is_exact_and_enforced() -> None:
    # 16 summands of 2^50 at scale 2^8 reach 2^62: the largest sum this encoding promises, still exact.
    tight = FixedPoint(scale_bits=8, max_abs=2.0**50, max_summands=16)
    for sign in (1.0, -1.0):
        ring = torch.zeros(3, dtype=torch.int64)
        for _ in range(tight.max_summands):
            ring += tight.encode(torch.full((3,), sign * tight.max_abs))
        assert torch.equal(tight.decode(ring, dtype=torch.float64), torch.full((3,), sign * 2.0**54))
    with pytest.raises(ValueError, match="past the ring's signed range"):
        FixedPoint(scale_bits=8, max_abs=2.0**50, max_summands=32)
    with pytest.raises(SecAggError, match="exceed"):
        MaskedSum(MANIFEST, WEIGHTS, fixed_point=FixedPoint(max_summands=2))


# ---------------------------------------------------------------------------------------------------------
# Validation of masked uploads


def test_masked_uploads_are_checked_for_names_shapes_and_ring_dtype() -> None:
    masked = maskers()["alpha"].mask_state(STATES["alpha"], MANIFEST)
    header = validate_masked(to_bytes(masked), MANIFEST, max_bytes=1 << 20)
    assert {name: entry.dtype for name, entry in header.items()} == {"w": "I64", "b": "I64"}
    cases = {
        "dtype_mismatch": {**masked, "w": masked["w"].to(torch.float64)},  # a plain upload's dtype
        "shape_mismatch": {**masked, "b": masked["b"][:8]},
        "missing_tensor": {"w": masked["w"]},
        "unexpected_tensor": {**masked, "extra": torch.zeros(1, dtype=torch.int64)},
    }
    for code, state in cases.items():
        with pytest.raises(ParameterError) as info:
            validate_masked(to_bytes(state), MANIFEST, max_bytes=1 << 20)
        assert info.value.code == code
    with pytest.raises(ParameterError) as info:
        validate_masked(to_bytes(masked), MANIFEST, max_bytes=100)
    assert info.value.code == "too_large"
    total = MaskedSum(MANIFEST, WEIGHTS)
    with pytest.raises(ParameterError):
        total.offer("alpha", to_bytes(STATES["alpha"]))  # float32 in the clear is not a masked upload
    # An integer tensor is averaged by a maximum in the clear; masks cannot do that, so it must stay local.
    with_counter = Manifest.from_state_dict("G", {**STATES["alpha"], "n": torch.tensor(3)})
    with pytest.raises(SecAggError, match="non-floating"):
        masked_manifest(with_counter)
    kept_local = Manifest.from_state_dict("G", {**STATES["alpha"], "n": torch.tensor(3)}, local=["n"])
    assert masked_manifest(kept_local).names == ["w", "b"]
