"""Parameter files: safetensors round trips, and the checks that stand between an upload and the store."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch

from fedalign.manifest import Manifest, TensorSpec
from fedalign.params import (
    ParameterError,
    from_bytes,
    load_file,
    open_tensors,
    read_header,
    save_file,
    to_bytes,
    validate,
)
from fedalign.torch_dtypes import dtype_name

MANIFEST = Manifest(
    "D",
    (
        TensorSpec("fc.weight", (2, 3), "F32"),
        TensorSpec("fc.bias", (2,), "F32"),
        TensorSpec("bn.running_mean", (2,), "F32", shared=False),
        TensorSpec("bn.num_batches_tracked", (), "I64"),
    ),
)
LIMIT = 1 << 20


def shared_state() -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "fc.bias": torch.tensor([0.5, -0.5]),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def raw_file(header: dict[str, object], data: bytes = b"") -> bytes:
    """A safetensors file written by hand, so a test can say exactly what a hostile header holds."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def code_of(data: bytes | Path, manifest: Manifest = MANIFEST, max_bytes: int = LIMIT) -> str:
    with pytest.raises(ParameterError) as info:
        validate(data, manifest, max_bytes)
    return info.value.code


# Round trips


def test_bytes_round_trip_keeps_names_dtypes_and_values() -> None:
    state = {**shared_state(), "half": torch.tensor([1.5], dtype=torch.bfloat16)}
    back = from_bytes(to_bytes(state))
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], tensor)


def test_non_contiguous_and_tied_tensors_are_stored_as_copies() -> None:
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    back = from_bytes(to_bytes({"t": weight.t(), "a": weight, "b": weight}))
    assert torch.equal(back["t"], weight.t())
    assert torch.equal(back["a"], back["b"])


def test_save_file_replaces_atomically_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    save_file({"w": torch.ones(2)}, path)
    assert torch.equal(load_file(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


@pytest.mark.parametrize("durable", [True, False])
def test_save_file_fsyncs_the_bytes_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    from fedalign import params

    synced: list[str] = []
    real = params._fsync
    monkeypatch.setattr(params, "_fsync", lambda p: (synced.append(p), real(p)))
    path = tmp_path / "p.safetensors"
    save_file({"w": torch.zeros(2)}, path, durable=durable)
    save_file({"w": torch.ones(2)}, path, durable=durable)
    assert len(synced) == (2 if durable else 0)
    # Either way the file is replaced whole by a rename, with no temporary left behind.
    assert torch.equal(load_file(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


def test_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(AttributeError):
        save_file({"w": "not a tensor"}, path)  # type: ignore[dict-item]
    assert torch.equal(load_file(path)["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


# Header


def test_open_tensors_reads_each_tensor_on_lookup_as_load_file_does(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    state = {**shared_state(), "half": torch.tensor([1.5], dtype=torch.bfloat16)}
    save_file(state, path)
    with open_tensors(path) as tensors:
        assert sorted(tensors) == sorted(state) and len(tensors) == len(state)
        assert "fc.bias" in tensors and "absent" not in tensors
        for name, tensor in load_file(path).items():
            assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor)
        with pytest.raises(KeyError):
            tensors["absent"]


def test_open_tensors_refuses_a_pickle_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    path.write_bytes(b"\x80\x04" + b"\x00" * 64)
    with pytest.raises(ParameterError) as info, open_tensors(path):
        pass
    assert info.value.code == "corrupt"


def test_read_header_gives_absolute_offsets() -> None:
    data = to_bytes({"w": torch.tensor([1.0, 2.0])})
    entry = read_header(data)["w"]
    assert (entry.dtype, entry.shape) == ("F32", (2,))
    start, end = entry.offsets
    assert struct.unpack("<2f", data[start:end]) == (1.0, 2.0)


def test_pickle_is_refused_as_corrupt_asking_for_safetensors() -> None:
    buffer = io.BytesIO()
    torch.save(shared_state(), buffer)
    with pytest.raises(ParameterError) as info:
        validate(buffer.getvalue(), MANIFEST, LIMIT)
    assert info.value.code == "corrupt"
    assert "safetensors" in info.value.message


def test_absurd_header_length_is_refused_before_reading_it() -> None:
    assert code_of(struct.pack("<Q", 1 << 60) + b"{}") == "header_too_large"


def test_header_longer_than_the_data_is_corrupt() -> None:
    assert code_of(struct.pack("<Q", 1000) + b"{}") == "corrupt"


def test_truncated_and_malformed_headers_are_corrupt() -> None:
    assert code_of(b"abc") == "corrupt"
    assert code_of(struct.pack("<Q", 5) + b"{oops") == "corrupt"
    assert code_of(raw_file([1, 2])) == "corrupt"  # type: ignore[arg-type]


def test_hostile_header_claiming_a_huge_tensor_is_refused_without_allocating() -> None:
    huge = {"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}
    with pytest.raises(ParameterError) as info:
        read_header(raw_file(huge, b"\0" * 8))
    assert info.value.code == "corrupt"
    assert "'w'" in info.value.message


def test_offsets_that_disagree_with_shape_overlap_or_leave_gaps_are_corrupt() -> None:
    wrong_size = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}
    overlap = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    gap = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    trailing = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    for header, data in ((wrong_size, 8), (overlap, 12), (gap, 8), (trailing, 8)):
        with pytest.raises(ParameterError) as info:
            read_header(raw_file(header, b"\0" * data))
        assert info.value.code == "corrupt", header


# Validation against a manifest


def test_a_matching_upload_passes_from_bytes_and_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    save_file(shared_state(), path)
    assert set(validate(to_bytes(shared_state()), MANIFEST, LIMIT)) == set(shared_state())
    assert set(validate(path, MANIFEST, LIMIT)) == set(shared_state())


def test_a_submission_carries_tensors_only_never_free_form_metadata() -> None:
    smuggling = to_bytes(shared_state(), metadata={"features": "0.12,0.98,0.33"})
    assert code_of(smuggling) == "metadata_not_allowed"
    # safetensors' own format tag is harmless, and reading a file for other purposes keeps its metadata.
    assert set(validate(to_bytes(shared_state(), metadata={"format": "pt"}), MANIFEST, LIMIT))
    assert set(read_header(smuggling)) == set(shared_state())


def test_size_limit_is_checked_before_anything_else() -> None:
    assert code_of(b"\0" * 100, max_bytes=10) == "too_large"


def test_missing_tensors_are_listed() -> None:
    state = shared_state()
    del state["fc.bias"]
    with pytest.raises(ParameterError) as info:
        validate(to_bytes(state), MANIFEST, LIMIT)
    assert info.value.code == "missing_tensor"
    assert "'fc.bias'" in info.value.message


def test_uploading_a_local_tensor_is_unexpected_and_says_it_stays_local() -> None:
    state = {**shared_state(), "bn.running_mean": torch.zeros(2)}
    with pytest.raises(ParameterError) as info:
        validate(to_bytes(state), MANIFEST, LIMIT)
    assert info.value.code == "unexpected_tensor"
    assert "'bn.running_mean'" in info.value.message
    assert "stay on the node" in info.value.message


def test_wrong_dtype_names_tensor_expected_and_got() -> None:
    state = {**shared_state(), "fc.bias": torch.zeros(2, dtype=torch.float16)}
    with pytest.raises(ParameterError) as info:
        validate(to_bytes(state), MANIFEST, LIMIT)
    assert info.value.code == "dtype_mismatch"
    assert "'fc.bias' is F16, expected F32" in info.value.message


def test_wrong_shape_names_tensor_expected_and_got() -> None:
    state = {**shared_state(), "fc.weight": torch.zeros(3, 2)}
    with pytest.raises(ParameterError) as info:
        validate(to_bytes(state), MANIFEST, LIMIT)
    assert info.value.code == "shape_mismatch"
    assert "'fc.weight' is [3, 2], expected [2, 3]" in info.value.message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_in_every_float_format(
    dtype: torch.dtype, bad: float, tmp_path: Path
) -> None:
    manifest = Manifest("m", (TensorSpec("w", (4,), dtype_name(dtype)),))
    state = {"w": torch.tensor([1.0, bad, 2.0, -65504.0], dtype=dtype)}
    assert code_of(to_bytes(state), manifest) == "non_finite"
    save_file(state, tmp_path / "bad.safetensors")
    assert code_of(tmp_path / "bad.safetensors", manifest) == "non_finite"


def test_largest_finite_values_pass() -> None:
    manifest = Manifest("m", (TensorSpec("h", (2,), "F16"), TensorSpec("b", (2,), "BF16")))
    state = {
        "h": torch.tensor([65504.0, -65504.0], dtype=torch.float16),
        "b": torch.tensor([torch.finfo(torch.bfloat16).max] * 2, dtype=torch.bfloat16),
    }
    validate(to_bytes(state), manifest, LIMIT)


def test_a_header_whose_length_begins_like_a_pickle_is_still_read() -> None:
    """A header of 640 bytes starts the file with b"\\x80\\x02", a pickle's protocol-2 opcode."""
    for n in range(1, 700):
        data = to_bytes({"w" * n: torch.zeros(1)})
        if data.startswith(b"\x80\x02"):
            break
    else:
        raise AssertionError("no tensor name gives a 640-byte header")
    assert read_header(data)["w" * n].shape == (1,)
