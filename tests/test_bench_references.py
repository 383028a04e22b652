import copy

import torch

from bench.references import _DomainStatistics


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def _running(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.named_buffers()}


def test_each_domain_keeps_the_running_statistics_of_its_own_batches_alone() -> None:
    xs, xt = torch.randn(8, 4), torch.randn(8, 4) * 3 + 5
    net = _net()
    only_source, only_target = copy.deepcopy(net), copy.deepcopy(net)
    stats = _DomainStatistics(net)
    for _ in range(3):  # a training step's order: the sources' batch, then the target's between swaps
        source_features = net(xs)
        stats.swap()
        target_features = net(xt)
        stats.swap()
        # The backward runs after both forwards, through the statistics swapped in between.
        (source_features.square().mean() + target_features.square().mean()).backward()
        only_source(xs)
        only_target(xt)
    for name, value in _running(net).items():
        assert torch.equal(value, _running(only_source)[name]), name
    stats.swap()  # the target's statistics, which evaluate it
    for name, value in _running(net).items():
        assert torch.equal(value, _running(only_target)[name]), name
    assert not torch.equal(_running(net)["1.running_mean"], _running(only_source)["1.running_mean"])
