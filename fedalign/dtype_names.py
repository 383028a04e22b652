"""The safetensors dtype names a model may hold, with each one's size in bytes (no torch: the manifest
document is read by installs that never train, such as the coordinator's command line)."""

from __future__ import annotations

DTYPE_BYTES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
DTYPE_NAMES: tuple[str, ...] = tuple(DTYPE_BYTES)
