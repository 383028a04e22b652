"""Parameters on the wire and at rest: safetensors only, and the checks an upload must pass.

Pickle is never used anywhere (``torch.load`` runs arbitrary code from whoever wrote the file), so every
reader here goes through safetensors. An upload comes from another party and is checked by
:func:`validate` before anything is stored: its size, then its header, parsed here from the raw bytes so
that a hostile header (one that claims terabytes, overlaps, or points past the end) is refused before a
single tensor is materialised, then its names, dtypes and shapes against the manifest's shared part, and
last its values, one tensor at a time.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from fedalign.manifest import Manifest, is_floating

# A model's header is a few hundred bytes per tensor; 100 MB is also safetensors' own ceiling.
DEFAULT_MAX_HEADER_BYTES = 100_000_000
# Elements per slice when scanning values, so that checking a large tensor needs a few MB of temporaries.
FINITE_CHECK_CHUNK = 1 << 20
# How many offending names an error message lists before it summarises.
MESSAGE_NAME_LIMIT = 10

# Bytes per element of every dtype the safetensors format defines (not only those a manifest may hold),
# so that a well-formed file with an exotic dtype is reported as a dtype mismatch, not as corrupt.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

# Exponent bits of each float format read as an unsigned integer: a value is NaN or Inf exactly when all
# of them are set. Testing bits works on raw bytes for every format, bfloat16 included (numpy has none).
_EXPONENT_MASKS: dict[str, tuple[np.dtype, int]] = {
    "F16": (np.dtype("<u2"), 0x7C00),
    "BF16": (np.dtype("<u2"), 0x7F80),
    "F32": (np.dtype("<u4"), 0x7F800000),
    "F64": (np.dtype("<u8"), 0x7FF0000000000000),
}

# How a pickle announces itself: torch.save's zip archive, or a bare pickle's protocol opcode.
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_SAFETENSORS_EXPECTED = "parameters must be a safetensors file (https://github.com/huggingface/safetensors)"


class ParameterError(ValueError):
    """A parameter file that cannot be accepted; ``code`` is for machines, the message for people."""

    def __init__(self, code: str, message: str, *, tensor: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.tensor = tensor


class TensorEntry(NamedTuple):
    """One tensor as a safetensors header declares it; ``offsets`` are absolute positions in the file."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# ---------------------------------------------------------------------------------------------------------
# Reading and writing


def to_bytes(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise a state dict to safetensors bytes."""
    return safetensors.torch.save(_storable(state), metadata=dict(metadata) if metadata else None)


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """What safetensors refuses past the header check (a tensor's bytes) is reported as corrupt input."""
    try:
        yield
    except SafetensorError as exc:
        raise ParameterError("corrupt", f"cannot read {what}: {exc}; {_SAFETENSORS_EXPECTED}") from exc


def from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; the header is checked first, so a hostile one allocates nothing."""
    read_header(data)
    with _reading("parameters"):
        return safetensors.torch.load(data)


def save_file(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    *,
    durable: bool = True,
) -> None:
    """Write a state dict atomically: a reader sees the old file or the whole new one, never a part.

    ``durable`` fsyncs the bytes before the rename, so that the new file also survives a machine crash
    (power loss, kernel panic). Without it the rename is still atomic for every process on the machine,
    a SIGKILLed one included (the page cache outlives any process), and the write costs no disk flush.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file(_storable(state), tmp, metadata=dict(metadata) if metadata else None)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file into memory; the header is checked first."""
    read_header(Path(path))
    with _reading(str(path)):
        return safetensors.torch.load_file(path)


class _FileTensors(Mapping[str, torch.Tensor]):
    """A safetensors file's tensors by name, each read from the memory map when it is looked up."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._names = tuple(sorted(handle.keys()))
        self._known = frozenset(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        return self._handle.get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@contextmanager
def open_tensors(path: str | os.PathLike[str]) -> Iterator[Mapping[str, torch.Tensor]]:
    """A stored file's tensors, each read when it is looked up: a pass that needs every tensor once holds
    one of them at a time, not the whole file beside what it computes. The header is checked first."""
    read_header(Path(path))
    with _reading(str(path)), safe_open(os.fspath(path), framework="pt") as handle:
        yield _FileTensors(handle)


def _storable(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no memory (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:  # tied weights: each name gets its own copy
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# The header, parsed by hand


# What safetensors' own writers may put in __metadata__; nothing else is accepted in a submission.
ALLOWED_METADATA = frozenset({("format", "pt"), ("format", "np")})


def read_header(
    source: bytes | str | os.PathLike[str],
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    *,
    allow_metadata: bool = True,
) -> dict[str, TensorEntry]:
    """The tensors a safetensors file declares, after checking the header describes the file exactly.

    Reads only the first ``8 + header length`` bytes. Refuses (code ``corrupt`` unless said otherwise):
    a pickle; a header length over ``max_header_bytes`` (``header_too_large``) or past the end of the
    data; JSON that is malformed or not the safetensors layout; an unknown dtype; offsets that do not
    match shape x dtype size, overlap, leave gaps, or do not end exactly at the end of the file.
    """
    raw, data_start, size = _raw_header(source, max_header_bytes)
    return _parse_header(raw, data_start, size - data_start, allow_metadata)


def read_metadata(
    source: bytes | str | os.PathLike[str], max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty when it has none), after the checks of
    `read_header`."""
    raw, data_start, size = _raw_header(source, max_header_bytes)
    _parse_header(raw, data_start, size - data_start)
    metadata = json.loads(raw.decode("utf-8")).get("__metadata__", {})
    return dict(metadata)


def header_with_metadata(source: str | os.PathLike[str], metadata: Mapping[str, str]) -> tuple[bytes, int]:
    """A new beginning for a safetensors file, its header's ``__metadata__`` extended by ``metadata``.

    Returns the bytes to write instead of the file's first ``data_start`` bytes, and ``data_start``: the
    new file is those bytes followed by the old file from ``data_start`` on, unchanged (a tensor's offsets
    count from the start of the data, so they stay valid). The header is padded with spaces to a multiple
    of 8 bytes, as safetensors' own writer does, so the data stay aligned.
    """
    raw, data_start, size = _raw_header(source, DEFAULT_MAX_HEADER_BYTES)
    _parse_header(raw, data_start, size - data_start)
    header = json.loads(raw.decode("utf-8"))
    header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
    # __metadata__ first, as safetensors writes it; the tensors in their order.
    ordered = {"__metadata__": header.pop("__metadata__"), **header}
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, data_start


def _raw_header(source: bytes | str | os.PathLike[str], max_header_bytes: int) -> tuple[bytes, int, int]:
    """The header's bytes, where the data start, and the file's size; refuses what is not safetensors."""
    with _opened(source) as (prefix_reader, size):
        head = prefix_reader(0, 8)
        # A header length of 640 (or 896, ...) bytes also starts with a pickle's b"\x80\x02" (...): a pickle
        # is what does not go on with a safetensors header's opening brace.
        if any(head.startswith(magic) for magic in _PICKLE_MAGICS) and prefix_reader(8, 1) != b"{":
            raise ParameterError(
                "corrupt", f"this looks like a pickle (e.g. torch.save output); {_SAFETENSORS_EXPECTED}"
            )
        if len(head) < 8:
            raise ParameterError(
                "corrupt", f"{size} bytes is too short for a header; {_SAFETENSORS_EXPECTED}"
            )
        (header_len,) = struct.unpack("<Q", head)
        if header_len > max_header_bytes:
            raise ParameterError(
                "header_too_large",
                f"the header claims {header_len} bytes, more than the {max_header_bytes} allowed; "
                f"{_SAFETENSORS_EXPECTED}",
            )
        if header_len > size - 8:
            raise ParameterError(
                "corrupt", f"the header claims {header_len} bytes but only {size - 8} follow its length field"
            )
        raw = prefix_reader(8, header_len)
    return raw, 8 + header_len, size


def _parse_header(
    raw: bytes, data_start: int, data_len: int, allow_metadata: bool = True
) -> dict[str, TensorEntry]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ParameterError(
            "corrupt", f"the header is not valid JSON ({exc}); {_SAFETENSORS_EXPECTED}"
        ) from exc
    if not isinstance(header, dict):
        raise ParameterError("corrupt", f"the header must be a JSON object; {_SAFETENSORS_EXPECTED}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ParameterError("corrupt", "the header's __metadata__ must map strings to strings")
    if not allow_metadata and set(metadata.items()) - ALLOWED_METADATA:
        # Free-form metadata travels beside the tensors and could carry anything; parameters travel bare.
        raise ParameterError(
            "metadata_not_allowed",
            f"the header's __metadata__ holds {sorted(metadata)}; submissions carry tensors only (at most "
            "{'format': 'pt'})",
        )
    entries = {name: _parse_entry(name, spec) for name, spec in header.items()}
    _check_layout(entries, data_len)
    return {
        name: TensorEntry(e.dtype, e.shape, (data_start + e.offsets[0], data_start + e.offsets[1]))
        for name, e in entries.items()
    }


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads would keep the last of two equal keys silently; another reader might keep the first.
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a name appears twice")
    return out


def _parse_entry(name: str, spec: object) -> TensorEntry:
    """One header entry, with offsets still relative to the data section."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise ParameterError(
            "corrupt",
            f"tensor {name!r}: a header entry needs exactly dtype, shape and data_offsets",
            tensor=name,
        )
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ParameterError("corrupt", f"tensor {name!r}: unknown dtype {dtype!r}", tensor=name)
    if not _is_int_list(shape) or any(d < 0 for d in shape):
        raise ParameterError(
            "corrupt", f"tensor {name!r}: shape {shape!r} is not a list of sizes", tensor=name
        )
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise ParameterError(
            "corrupt", f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]", tensor=name
        )
    entry = TensorEntry(dtype, tuple(shape), (offsets[0], offsets[1]))
    expected = entry.numel * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise ParameterError(
            "corrupt",
            f"tensor {name!r}: shape {list(shape)} of {dtype} needs {expected} bytes "
            f"but its data_offsets span {offsets[1] - offsets[0]}",
            tensor=name,
        )
    return entry


def _is_int_list(value: object) -> bool:
    # bool is an int in Python but not a size.
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _check_layout(entries: Mapping[str, TensorEntry], data_len: int) -> None:
    """Tensors must tile the data section exactly, as safetensors itself requires."""
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: item[1].offsets):
        begin, end = entry.offsets
        if begin < position:
            raise ParameterError("corrupt", f"tensor {name!r} overlaps the tensor before it", tensor=name)
        if begin > position:
            raise ParameterError(
                "corrupt", f"a gap of {begin - position} bytes precedes tensor {name!r}", tensor=name
            )
        if end > data_len:
            raise ParameterError(
                "corrupt",
                f"tensor {name!r} ends at byte {end} of a {data_len}-byte data section",
                tensor=name,
            )
        position = end
    if position != data_len:
        raise ParameterError("corrupt", f"{data_len - position} bytes after the last tensor belong to none")


_Reader = Callable[[int, int], bytes]


@contextmanager
def _opened(source: bytes | str | os.PathLike[str]) -> Iterator[tuple[_Reader, int]]:
    """A ``read(offset, n)`` over bytes or a file, with the total size, without reading the whole file."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = source

        def read_bytes(offset: int, n: int) -> bytes:
            return bytes(data[offset : offset + n])

        yield read_bytes, len(data)
        return
    with open(source, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size

        def read_file(offset: int, n: int) -> bytes:
            fh.seek(offset)
            return fh.read(n)

        yield read_file, size


# ---------------------------------------------------------------------------------------------------------
# Validation of an upload


def validate(
    data: bytes | str | os.PathLike[str],
    manifest: Manifest,
    max_bytes: int,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> dict[str, TensorEntry]:
    """Check a submission against the shared part of ``manifest``; return its parsed header.

    The checks run cheapest and safest first, and the first failure raises :class:`ParameterError`:
    size (``too_large``), header (``corrupt`` / ``header_too_large``), names (``missing_tensor``, then
    ``unexpected_tensor``), ``dtype_mismatch``, ``shape_mismatch``, then ``non_finite`` values in floating
    tensors, scanned one tensor at a time from a memory map so a file is never loaded whole.
    """
    size = len(data) if isinstance(data, bytes | bytearray | memoryview) else os.stat(data).st_size
    if size > max_bytes:
        raise ParameterError("too_large", f"the upload is {size} bytes; the limit is {max_bytes}")
    header = read_header(data, max_header_bytes, allow_metadata=False)
    shared = manifest.shared()
    _check_names(header, shared, manifest)
    _check_dtypes(header, shared)
    _check_shapes(header, shared)
    _check_finite(data, header)
    return header


def check_against(
    header: Mapping[str, TensorEntry], manifest: Manifest, *, allow_unexpected: bool = False
) -> None:
    """Names, dtypes and shapes of a header against every tensor of ``manifest``.

    ``allow_unexpected`` lets a reader take a subset of a file (say, only what it averages).
    """
    _check_names(header, manifest, manifest, allow_unexpected=allow_unexpected)
    _check_dtypes(header, manifest)
    _check_shapes(header, manifest)


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MESSAGE_NAME_LIMIT])
    more = len(names) - MESSAGE_NAME_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def _check_names(
    header: Mapping[str, object], expected: Manifest, full: Manifest, *, allow_unexpected: bool = False
) -> None:
    missing = [n for n in expected.names if n not in header]
    unexpected = [] if allow_unexpected else sorted(n for n in header if n not in expected)
    if missing:
        extra = f"; it also holds unexpected {_listed(unexpected)}" if unexpected else ""
        raise ParameterError(
            "missing_tensor",
            f"{len(missing)} tensor(s) of model {expected.model!r} are missing: {_listed(missing)}{extra}",
            tensor=missing[0],
        )
    if unexpected:
        local = [n for n in unexpected if n in full.local_names()]
        why = f" ({_listed(local)} stay on the node and are never uploaded)" if local else ""
        raise ParameterError(
            "unexpected_tensor",
            f"{len(unexpected)} tensor(s) are not in model {expected.model!r}'s shared manifest: "
            f"{_listed(unexpected)}{why}",
            tensor=unexpected[0],
        )


def _check_dtypes(header: Mapping[str, TensorEntry], expected: Manifest) -> None:
    wrong = [spec for spec in expected if header[spec.name].dtype != spec.dtype]
    if wrong:
        detail = ", ".join(
            f"{s.name!r} is {header[s.name].dtype}, expected {s.dtype}" for s in wrong[:MESSAGE_NAME_LIMIT]
        )
        raise ParameterError(
            "dtype_mismatch", f"{len(wrong)} tensor(s) have the wrong dtype: {detail}", tensor=wrong[0].name
        )


def _check_shapes(header: Mapping[str, TensorEntry], expected: Manifest) -> None:
    wrong = [spec for spec in expected if header[spec.name].shape != spec.shape]
    if wrong:
        detail = ", ".join(
            f"{s.name!r} is {list(header[s.name].shape)}, expected {list(s.shape)}"
            for s in wrong[:MESSAGE_NAME_LIMIT]
        )
        raise ParameterError(
            "shape_mismatch", f"{len(wrong)} tensor(s) have the wrong shape: {detail}", tensor=wrong[0].name
        )


def _check_finite(data: bytes | str | os.PathLike[str], header: Mapping[str, TensorEntry]) -> None:
    with _buffer(data) as buffer:
        for name, entry in header.items():
            bad = _count_non_finite(buffer, entry)
            if bad:
                raise ParameterError(
                    "non_finite",
                    f"tensor {name!r} holds {bad} NaN or infinite value(s) out of {entry.numel}; "
                    "parameters must be finite",
                    tensor=name,
                )


def _count_non_finite(buffer: object, entry: TensorEntry) -> int:
    if not is_floating(entry.dtype) or entry.numel == 0:
        return 0
    as_int, mask = _EXPONENT_MASKS[entry.dtype]
    values = np.frombuffer(buffer, dtype=as_int, count=entry.numel, offset=entry.offsets[0])
    try:
        bad = 0
        for start in range(0, entry.numel, FINITE_CHECK_CHUNK):
            chunk = values[start : start + FINITE_CHECK_CHUNK]
            bad += int(np.count_nonzero((chunk & as_int.type(mask)) == mask))
        return bad
    finally:
        del values  # a live view would keep the memory map from closing


@contextmanager
def _buffer(data: bytes | str | os.PathLike[str]) -> Iterator[object]:
    """The upload as a buffer: bytes as they are, a file memory-mapped so pages are read as scanned."""
    if isinstance(data, bytes | bytearray | memoryview):
        yield data
        return
    with open(data, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped
