"""Where a node's steps run: the torch device, and the precision that goes with it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """Where steps run; CUDA gets bf16 autocast, the CPU runs fp32."""

    torch_device: torch.device

    @classmethod
    def pick(cls, name: str = "auto") -> Device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(torch.device(name))

    @property
    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.torch_device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


CPU = Device(torch.device("cpu"))
