"""A node's local optimisers (``hyperparameters.optimizer``) and their state as named tensors.

``sgd`` (the default) is SGD with momentum and weight decay as an L2 term; ``adam`` adds weight decay to
the gradient as well (Kingma and Ba, ICLR 2015); ``adamw`` decouples it (Loshchilov and Hutter, ICLR 2019).
The learning-rate schedule sets each step's rate on the optimiser's groups, whichever it is
(`fedalign.steps.set_lr`).

The state (SGD's momentum buffers; Adam's first and second moments and its step count) stays on the node
between steps and never travels: `state_tensors` and `load_state_tensors` turn it into named tensors for
the node's state file and back. Names are ``opt.<optimiser>.<i>`` for SGD's momentum of the optimiser's
i-th parameter (the name the node state file has always used), ``opt.<optimiser>.<i>.<key>`` for every
other state entry (``exp_avg``, ``exp_avg_sq``, ``step``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from fedalign.config import Hyperparameters

State = dict[str, torch.Tensor]

# Adam's step count lives on the CPU (torch's default for non-capturable, non-fused Adam).
_CPU_ENTRIES = frozenset({"step"})


def build_optimizer(hp: Hyperparameters, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The federation's optimiser over `params` at learning rate `lr`."""
    params = list(params)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=hp.adam_betas, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=hp.adam_betas, weight_decay=hp.weight_decay)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}; expected 'sgd', 'adam' or 'adamw'")


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def state_tensors(name: str, optimizer: torch.optim.Optimizer) -> State:
    """The optimiser's state as CPU tensors named ``opt.<name>.<i>[.<key>]``."""
    out: State = {}
    for i, p in enumerate(_parameters(optimizer)):
        for key, value in optimizer.state.get(p, {}).items():
            if value is None:  # nothing kept (SGD without momentum)
                continue
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            label = f"opt.{name}.{i}" if key == "momentum_buffer" else f"opt.{name}.{i}.{key}"
            out[label] = tensor.detach().cpu().clone()
    return out


def load_state_tensors(
    name: str, optimizer: torch.optim.Optimizer, state: Mapping[str, torch.Tensor]
) -> None:
    """Restore what `state_tensors` saved (entries it does not name stay as they are)."""
    prefix = f"opt.{name}."
    parameters = _parameters(optimizer)
    for label, tensor in state.items():
        if not label.startswith(prefix):
            continue
        index, _, key = label[len(prefix) :].partition(".")
        if not index.isdigit() or int(index) >= len(parameters):
            raise ValueError(f"saved optimiser state {label!r} names no parameter of optimiser {name!r}")
        p = parameters[int(index)]
        key = key or "momentum_buffer"
        device = torch.device("cpu") if key in _CPU_ENTRIES else p.device
        optimizer.state[p][key] = tensor.to(device).clone()
