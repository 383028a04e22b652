"""A candidate aggregation for the shared extractor, tried in the benchmark before it may enter the method.

Every round all copies of G start from G_agg and take one step; averaged by sample count, the target's copy
(which takes no labelled step) carries a share π_t of G_agg, so the sources' labelled step reaches it at
(1 − π_t) of its size (docs/benchmarks/accuracy.md, "Why averaging the target's copy costs"). Keeping the
target's copy out removes that damping but also the tie that holds the target's self-training near G_agg
(the offset candidate, `bench.residual`, drifted). This candidate keeps the average and takes a server step
on it instead, as FedOpt's server learning rate does (Reddi et al. 2021):

    G_agg ← G_prev + η (average − G_prev),   η = 1 / (1 − π_t)

so the sources' step reaches G_agg at its full size, as in FedAvg (where π_t = 0 and η = 1: FedAvg is
unchanged), and the target's own step at π_t / (1 − π_t) of its size. η comes from the average's own weights
(a share of sample counts), never from labels. Only G's average takes the step: the task model and the
discriminator are averaged as they are.

The benchmark swaps the simulator (`simulate`); nothing here runs in the service.
"""

from __future__ import annotations

from fedalign.config import FederationConfig
from fedalign.node import State
from fedalign.protocol import Action, Aggregate
from fedalign.simulate import SimulationResult, Simulator

MODEL = "G"


def server_step(weights: dict[str, float], target: str) -> float:
    """η for an average with these weights: 1 / (1 − the target's share); 1 where it is not averaged in."""
    return 1.0 / (1.0 - weights.get(target, 0.0))


def extrapolate(base: State, average: State, step: float) -> State:
    """base + step · (average − base) for floating tensors; integer tensors (counters) keep the average's."""
    return {
        name: base[name] + step * (value - base[name]) if value.is_floating_point() else value
        for name, value in average.items()
    }


class ServerStepSimulator(Simulator):
    """`fedalign.simulate.Simulator` with G's average followed by the server step."""

    def _carry_out(self, action: Action) -> list[Action]:
        if not (isinstance(action, Aggregate) and action.model == MODEL):
            return super()._carry_out(action)
        if self.secure:
            raise ValueError("the server-step candidate is not built for secure aggregation")
        base = self.store[self.protocol.state.latest[MODEL]]
        step = server_step(action.weights, self.config.target.name)
        actions = super()._carry_out(action)
        if step != 1.0:
            self.store[action.key] = extrapolate(base, self.store[action.key], step)
        return actions


def simulate(config: FederationConfig) -> SimulationResult:
    import torch

    with torch.random.fork_rng(devices=[]):
        return ServerStepSimulator(config).run()
