"""Aggregation: weighting schemes, a fixed fold order, accumulator precision and the integer rule."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from fedalign.aggregate import (
    TORCH_GRAIN_SIZE,
    AggregationError,
    StreamingAverage,
    average,
    average_states,
)
from fedalign.manifest import Manifest
from fedalign.params import ParameterError, load_file, save_file, to_bytes
from fedalign.weighting import Contribution, weights

NODES = ("alpha", "beta", "gamma", "target")
CONTRIBUTIONS = [
    Contribution("alpha", "source", 100),
    Contribution("beta", "source", 300),
    Contribution("gamma", "source", 600),
    Contribution("target", "target", 50),
]


def node_state(index: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(index)
    return {
        "w": torch.randn(3, 4, generator=generator).to(dtype),
        "b": torch.randn(4, generator=generator).to(dtype),
        "bn.num_batches_tracked": torch.tensor(10 * index + 3),
    }


STATES = {node: node_state(i) for i, node in enumerate(NODES)}
MANIFEST = Manifest.from_state_dict("G", STATES["alpha"])


def reference(node_weights: dict[str, float]) -> torch.Tensor:
    """The average of "w", computed by hand in float64."""
    total = torch.zeros(3, 4, dtype=torch.float64)
    for node, w in node_weights.items():
        total += w * STATES[node]["w"]
    return total


def stream(
    order: list[str], sources: dict[str, Path | bytes], node_weights: dict[str, float]
) -> StreamingAverage:
    streaming = StreamingAverage(MANIFEST, node_weights)
    for node in order:
        streaming.offer(node, sources[node])
    return streaming


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {node: tmp_path / f"{node}.safetensors" for node in NODES}
    for node, path in paths.items():
        save_file(STATES[node], path)
    return paths


# Weights


def test_samples_weights_are_proportional_to_sample_counts() -> None:
    assert weights("samples", CONTRIBUTIONS) == pytest.approx(
        {"alpha": 100 / 1050, "beta": 300 / 1050, "gamma": 600 / 1050, "target": 50 / 1050}
    )


def test_uniform_weights_are_equal() -> None:
    assert weights("uniform", CONTRIBUTIONS) == pytest.approx(dict.fromkeys(NODES, 0.25))


def test_balanced_weights_give_target_half_and_sources_half_by_samples() -> None:
    assert weights("balanced", CONTRIBUTIONS) == pytest.approx(
        {"alpha": 0.05, "beta": 0.15, "gamma": 0.30, "target": 0.5}
    )


def test_balanced_falls_back_to_samples_without_a_target_or_without_sources() -> None:
    sources = CONTRIBUTIONS[:2]
    assert weights("balanced", sources) == weights("samples", sources)
    assert weights("balanced", CONTRIBUTIONS[3:]) == {"target": 1.0}


@pytest.mark.parametrize(
    "scheme, contributions",
    [
        ("median", CONTRIBUTIONS),
        ("samples", [Contribution("a", "source", 0)]),
        ("uniform", [Contribution("a", "source", -1)]),
        ("samples", [Contribution("a", "source", 1), Contribution("a", "target", 1)]),
        ("samples", []),
    ],
)
def test_weights_refuse_unknown_scheme_bad_samples_duplicates_and_nothing(
    scheme: str, contributions: list[Contribution]
) -> None:
    with pytest.raises(AggregationError):
        weights(scheme, contributions)


# Exact averages


@pytest.mark.parametrize("scheme", ["samples", "uniform", "balanced"])
def test_average_matches_a_float64_reference(scheme: str, files: dict[str, Path]) -> None:
    node_weights = weights(scheme, CONTRIBUTIONS)
    result = average(files, node_weights, MANIFEST)
    torch.testing.assert_close(result["w"], reference(node_weights), rtol=1e-14, atol=1e-15)
    assert result["w"].dtype == torch.float64


def test_fold_order_is_fixed_so_any_arrival_order_gives_bitwise_the_same(files: dict[str, Path]) -> None:
    node_weights = weights("balanced", CONTRIBUTIONS)
    results = [stream(list(order), files, node_weights).result() for order in itertools.permutations(NODES)]
    for result in results[1:]:
        assert all(torch.equal(result[name], results[0][name]) for name in MANIFEST.names)


def test_files_and_bytes_give_the_same_result(files: dict[str, Path]) -> None:
    node_weights = weights("samples", CONTRIBUTIONS)
    from_files = average(files, node_weights, MANIFEST)
    from_bytes = average({n: to_bytes(STATES[n]) for n in NODES}, node_weights, MANIFEST)
    from_memory = average_states(STATES, node_weights)
    for name in MANIFEST.names:
        assert torch.equal(from_files[name], from_bytes[name])
        assert torch.equal(from_files[name], from_memory[name])


def test_integer_buffers_take_the_exact_maximum() -> None:
    big = 2**53 + 1  # not representable in float64: a float round trip would lose it
    states = {"a": {"n": torch.tensor([big, 1])}, "b": {"n": torch.tensor([5, 2])}}
    result = average_states(states, {"a": 0.5, "b": 0.5})
    assert result["n"].dtype == torch.int64
    assert result["n"].tolist() == [big, 2]


def test_half_precision_inputs_accumulate_in_float32() -> None:
    count = 1000
    value = torch.tensor([0.1] * 4, dtype=torch.float16)
    states = {f"n{i:04d}": {"h": value} for i in range(count)}
    result = average_states(states, dict.fromkeys(states, 1 / count))
    assert result["h"].dtype == torch.float16
    assert torch.equal(result["h"], value)
    in_half = torch.zeros(4, dtype=torch.float16)
    for _ in range(count):
        in_half.add_(value, alpha=1 / count)
    assert not torch.equal(in_half, value), "the example must be one that half precision gets wrong"


def test_write_stores_the_average_atomically(files: dict[str, Path], tmp_path: Path) -> None:
    node_weights = weights("uniform", CONTRIBUTIONS)
    streaming = stream(list(NODES), files, node_weights)
    streaming.write(tmp_path / "avg.safetensors")
    assert torch.equal(load_file(tmp_path / "avg.safetensors")["w"], streaming.result()["w"])


# Arrival and errors


def test_an_early_arrival_waits_for_the_nodes_before_it(files: dict[str, Path]) -> None:
    streaming = StreamingAverage(MANIFEST, weights("uniform", CONTRIBUTIONS))
    assert streaming.offer("gamma", files["gamma"]) == 0
    assert streaming.offer("beta", files["beta"]) == 0
    assert streaming.waiting == ["beta", "gamma"]
    assert streaming.offer("alpha", files["alpha"]) == 3
    assert not streaming.done
    assert streaming.offer("target", files["target"]) == 1
    assert streaming.done


def test_result_before_every_node_is_in_says_who_is_missing(files: dict[str, Path]) -> None:
    streaming = StreamingAverage(MANIFEST, weights("uniform", CONTRIBUTIONS))
    streaming.offer("alpha", files["alpha"])
    with pytest.raises(AggregationError, match="gamma"):
        streaming.result()


def test_unknown_node_and_second_offer_are_refused(files: dict[str, Path]) -> None:
    streaming = StreamingAverage(MANIFEST, weights("uniform", CONTRIBUTIONS))
    with pytest.raises(AggregationError, match="not part"):
        streaming.offer("stranger", files["alpha"])
    streaming.offer("beta", files["beta"])
    with pytest.raises(AggregationError, match="twice"):
        streaming.offer("beta", files["beta"])
    streaming.offer("alpha", files["alpha"])
    with pytest.raises(AggregationError, match="twice"):
        streaming.offer("alpha", files["alpha"])


def test_an_input_missing_a_tensor_is_refused_when_offered_and_nothing_is_queued() -> None:
    streaming = StreamingAverage(MANIFEST, weights("uniform", CONTRIBUTIONS))
    incomplete = {k: v for k, v in STATES["gamma"].items() if k != "b"}
    with pytest.raises(ParameterError) as info:
        streaming.offer("gamma", to_bytes(incomplete))
    assert info.value.code == "missing_tensor"
    assert streaming.waiting == []
    assert streaming.offer("gamma", to_bytes(STATES["gamma"])) == 0


def test_weights_that_do_not_sum_to_one_are_refused() -> None:
    with pytest.raises(AggregationError, match="sum"):
        StreamingAverage(MANIFEST, {"alpha": 0.5, "beta": 0.6})


def test_large_folds_set_the_thread_count_and_restore_it_small_ones_leave_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), set_threads(n)))
    before = torch.get_num_threads()
    large = {node: {"w": torch.ones(TORCH_GRAIN_SIZE)} for node in ("a", "b")}
    average_states(large, {"a": 0.5, "b": 0.5}, threads=before + 1)
    assert calls == [before + 1, before]
    calls.clear()
    average_states(STATES, weights("uniform", CONTRIBUTIONS), threads=before + 1)
    assert calls == []
