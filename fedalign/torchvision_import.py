"""Importing torchvision beside the CPU build of torch.

The torchvision wheels on PyPI are built against CUDA torch: beside the CPU build of torch (what the
project's machines install) their C++ extension cannot load (it links libtorch_cuda), and torchvision
0.28.0 then fails at import, registering a fake kernel for its detection operator ``torchvision::nms``
that was never defined. FedAlign uses no torchvision operator (only the pure-Python model definitions and
transforms), so when the import fails for exactly that reason, the two detection operators' schemas are
declared (with no kernel: calling them raises) and torchvision is imported again. With a matching torch
(CUDA machines) the first import succeeds and nothing is declared.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

# The operators torchvision 0.28's _meta_registrations registers unconditionally.
_DETECTION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared: list[torch.library.Library] = []  # kept alive: a Library's definitions go with it


def import_torchvision() -> ModuleType:
    """The torchvision module, importable whether or not its C++ extension loads."""
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _declared:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # what the failed import left half-initialised
        library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _DETECTION_OPS:
            if not hasattr(torch.ops.torchvision, schema.split("(")[0]):
                library.define(schema)
        _declared.append(library)
        import torchvision
    return torchvision
