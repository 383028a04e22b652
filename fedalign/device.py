"""Where a node's steps run: the torch device, and the precision that goes with it."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

Precision = Literal["bf16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp32")


@dataclass(frozen=True)
class Device:
    """Where steps run, and in which precision (the federation's ``model.precision``).

    ``"bf16"``: on a CUDA device the forward passes run under bfloat16 autocast; on the CPU, in float32
    (autocast there is slower than float32 on most CPUs, and a simulation should give the numbers a CPU
    node gives). ``"fp32"``: never autocast, for models that need float32 throughout.
    """

    torch_device: torch.device
    precision: Precision = "bf16"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")

    @classmethod
    def pick(cls, name: str = "auto", precision: Precision = "bf16") -> Device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(torch.device(name), precision)

    def with_precision(self, precision: Precision) -> Device:
        """This device with another precision (a node takes its federation's)."""
        return dataclasses.replace(self, precision=precision)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype forward passes autocast to, or None when they run in float32."""
        if self.torch_device.type == "cuda" and self.precision == "bf16":
            return torch.bfloat16
        return None

    @property
    def autocast(self) -> contextlib.AbstractContextManager[object]:
        dtype = self.autocast_dtype
        if dtype is not None:
            return torch.autocast(self.torch_device.type, dtype=dtype)
        return contextlib.nullcontext()


CPU = Device(torch.device("cpu"))
