"""What a node reports for a step that raised: a reason without local paths, and whether a retry can help."""

from __future__ import annotations

import pytest
import torch

from fedalign.failures import MAX_REASON_CHARS, failure_reason, is_retryable, without_paths
from fedalign.model_manifest import ManifestMismatch
from fedalign.node import StepError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[Errno 2] No such file or directory: '/home/alice/patients/p1.dcm'", "... directory: 'p1.dcm'"),
        ("cannot open C:\\Users\\bob\\site-a\\rows.csv now", "cannot open rows.csv now"),
        ("no file at ~/secret/data.npz.", "no file at data.npz."),
        ("unc \\\\server\\share\\f.txt", "unc f.txt"),
    ],
)
def test_local_paths_are_cut_to_their_file_name(text: str, expected: str) -> None:
    assert without_paths(text).endswith(expected.removeprefix("..."))
    assert "alice" not in without_paths(text) and "bob" not in without_paths(text)


@pytest.mark.parametrize(
    "text", ["shape [12, 8] vs [24, 8]", "ratio 3/4 of a/b", "see http://host/a/b", "G.0.weight"]
)
def test_what_is_not_a_local_path_stays(text: str) -> None:
    assert without_paths(text) == text


def test_the_reason_names_the_error_type_on_one_line_and_is_bounded() -> None:
    assert failure_reason(KeyError("row 17")) == "KeyError: 'row 17'"
    assert failure_reason(RuntimeError("a\n  b")) == "RuntimeError: a b"
    assert failure_reason(RuntimeError()) == "RuntimeError: (no message)"
    long = failure_reason(ValueError("x" * 5000))
    assert len(long) == MAX_REASON_CHARS and long.endswith("…")


def test_errors_of_the_input_the_code_or_the_setup_are_not_retryable() -> None:
    for exc in (
        ManifestMismatch("tensor G.0.weight"),
        StepError("5 classes"),
        KeyError("row"),
        TypeError("x"),
        FileNotFoundError("f"),
        ImportError("m"),
    ):
        assert not is_retryable(exc), exc
    for exc in (torch.cuda.OutOfMemoryError("CUDA out of memory"), MemoryError(), OSError("busy")):
        assert is_retryable(exc), exc
