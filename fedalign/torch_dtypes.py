"""safetensors dtype names <-> torch dtypes (the names are `fedalign.manifest.DTYPE_NAMES`)."""

from __future__ import annotations

import torch

from fedalign.dtype_names import DTYPE_NAMES

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``"F32"``)."""
    try:
        return TORCH_TO_SAFETENSORS[dtype]
    except KeyError as exc:
        raise ValueError(f"dtype {dtype} cannot be stored in a manifest") from exc


if tuple(SAFETENSORS_DTYPES) != DTYPE_NAMES:  # the manifest's list of names is the one that counts
    raise ImportError(f"torch dtypes {list(SAFETENSORS_DTYPES)} differ from the manifest's {DTYPE_NAMES}")
