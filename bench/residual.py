"""A candidate aggregation for the target's extractor, tried in the benchmark before it may enter the method.

Every round all copies of G start from G_agg and take one step; averaged by sample count, the target's copy
(which takes no labelled step) scales the sources' labelled step by their share of G_agg. On the signals
family that damping costs about as much as FedAvg loses with its step scaled by 0.75 (docs/benchmarks/
accuracy.md, "Why averaging the target's copy costs"). The candidate keeps the target's copy out of G_agg
and the target's own training in an offset of its own:

- the target's G is G_agg + δ wherever it runs (its discriminator features, its adaptation, its
  evaluation), δ its offset, never sent;
- after its adaptation step δ becomes what G moved away from G_agg, so the target's pseudo-labels,
  information maximisation and adversarial term accumulate in δ over the rounds;
- its G stays out of G_agg (``target_warmup_rounds`` = every round), so the protocol is the method's as it
  is: only this node's runtime differs, and the sources' labelled step reaches G_agg in full.

The benchmark swaps the target's runtime in the simulator (`simulate`); nothing here runs in the service.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedalign.config import FederationConfig
from fedalign.node import NodeRuntime, State, StepResult, shared_state
from fedalign.protocol import StepSpec
from fedalign.simulate import SimulationResult, Simulator


class ResidualTarget(NodeRuntime):
    """The target's runtime with its adaptation kept as an offset δ on the shared extractor."""

    offset: State
    base: State

    def load(self, model: str, state: Mapping[str, torch.Tensor], *, every_tensor: bool = False) -> None:
        super().load(model, state, every_tensor=every_tensor)
        if model != "G" or every_tensor:
            return
        G = self.models.G
        self.base = shared_state(G, self.local["G"])  # G_agg as downloaded
        with torch.no_grad():
            own = G.state_dict()
            for name, delta in getattr(self, "offset", {}).items():
                own[name].add_(delta)

    def _adapt(self, step: StepSpec) -> StepResult:
        result = super()._adapt(step)
        now = shared_state(self.models.G, self.local["G"])
        # Integer tensors (BatchNorm's counters) are counts, not parameters: they carry no offset.
        self.offset = {k: now[k] - self.base[k] for k in now if now[k].is_floating_point()}
        return result


def simulator(config: FederationConfig) -> Simulator:
    """A `fedalign.simulate.Simulator` whose target runs `ResidualTarget`."""
    if config.hyperparameters.target_warmup_rounds < config.rounds:
        raise ValueError("the residual target's G must stay out of G_agg: set target_warmup_rounds to rounds")
    built = Simulator(config)
    name = config.target.name
    plain = built.nodes[name]
    built.nodes[name] = ResidualTarget(name, config, plain.data, plain.device)
    return built


def simulate(config: FederationConfig) -> SimulationResult:
    """`fedalign.simulate.simulate` with the target's runtime replaced by `ResidualTarget`."""
    with torch.random.fork_rng(devices=[]):
        return simulator(config).run()
