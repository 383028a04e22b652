"""Weighted averaging of submitted parameters, streamed one input and one tensor at a time.

Determinism: floating-point addition is not associative, so the order inputs are folded in changes the
last bits of the result. Inputs are therefore always folded in one fixed order, sorted by node name, and
a submission that arrives early waits (as a file path or its bytes, never as loaded tensors) until the
ones before it are in. A served run and a simulated run thus give bit-identical averages whatever the
order the network delivered the uploads in, and the last upload of a phase costs one fold, not N.

Memory: one preallocated accumulator per tensor plus one input open at a time, so memory does not grow
with the number of nodes. Files are read through ``safetensors.safe_open``, which memory-maps them:
pages of the open input are read as they are added and count towards the resident set only while that
input is open (they are clean page-cache pages the kernel can drop). Bytes inputs are parsed whole, one
input at a time; files are the memory-bounded path for large models.

The weights come from the caller (the protocol fixes them with `fedalign.weighting`'s schemes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from fedalign import params
from fedalign.manifest import Manifest, is_floating
from fedalign.torch_dtypes import SAFETENSORS_DTYPES, dtype_name
from fedalign.weighting import WEIGHT_SUM_TOLERANCE, AggregationError

Source = Path | str | bytes

# Torch threads while folding. A fold is memory-bound: on an idle machine a second thread at most doubles
# its rate, but a parallel region waits for its slowest thread, so on CPUs shared with other processes
# (the API, workers, other folds) torch's default made folds up to 25x slower in bench/aggregate_bench.py,
# while one thread degrades gracefully. ``None`` leaves torch's setting alone.
FOLD_THREADS: int | None = 1
# Torch runs an element-wise op on the calling thread below this many elements (at::internal::GRAIN_SIZE).
# A model with no larger tensor folds single-threaded anyway, so its fold leaves the thread count alone:
# changing it costs the caller's next parallel op about a millisecond (OpenMP rebuilds its team), which
# would dominate a small discriminator's exchange.
TORCH_GRAIN_SIZE = 32768


# ---------------------------------------------------------------------------------------------------------
# The caller's weights (from `fedalign.weighting`'s schemes, fixed by the protocol)


def _check_weights(node_weights: Mapping[str, float]) -> dict[str, float]:
    if not node_weights:
        raise AggregationError("nothing to average: no weights")
    bad = {n: w for n, w in node_weights.items() if not (math.isfinite(w) and w >= 0)}
    if bad:
        raise AggregationError(f"weights must be finite and non-negative; got {bad}")
    total = math.fsum(node_weights.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise AggregationError(f"weights must be normalised (sum to 1); they sum to {total!r}")
    return dict(node_weights)


# ---------------------------------------------------------------------------------------------------------
# The per-tensor rule, shared by the streaming and the in-memory average


def accumulator_dtype(dtype: str) -> torch.dtype:
    """Where a tensor of ``dtype`` accumulates.

    Half precision would lose most of each small weighted addend once the sum has grown, so F16 and
    BF16 accumulate in float32 (as F32 does) and F64 in float64. Integer and boolean tensors are
    counters or flags (BatchNorm's ``num_batches_tracked``): a weighted mean truncated back to an integer
    would be wrong, so they take the element-wise maximum instead, computed exactly in int64.
    """
    if dtype == "F64":
        return torch.float64
    if is_floating(dtype):
        return torch.float32
    return torch.int64


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with torch's (process-wide) intra-op thread count set, restoring it afterwards."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _threads_for(manifest: Manifest, threads: int | None) -> int | None:
    """The thread count to fold ``manifest`` with: ``None`` (leave it) when torch would not split any op."""
    return threads if any(spec.numel >= TORCH_GRAIN_SIZE for spec in manifest) else None


class _Accumulator:
    """One preallocated buffer per tensor of a manifest, and the rule that folds an input into them."""

    def __init__(self, manifest: Manifest, device: torch.device | str = "cpu") -> None:
        self.manifest = manifest
        self.buffers: dict[str, torch.Tensor] = {}
        for spec in manifest:
            acc_dtype = accumulator_dtype(spec.dtype)
            if acc_dtype.is_floating_point:
                self.buffers[spec.name] = torch.zeros(spec.shape, dtype=acc_dtype, device=device)
            else:  # the identity of max, so the first input is taken exactly
                start = torch.iinfo(torch.int64).min
                self.buffers[spec.name] = torch.full(spec.shape, start, dtype=acc_dtype, device=device)

    def fold(self, get_tensor: Callable[[str], torch.Tensor], weight: float) -> None:
        """Add ``weight`` x input to every buffer, fetching the input's tensors one at a time."""
        for name, acc in self.buffers.items():
            tensor = get_tensor(name).to(device=acc.device, dtype=acc.dtype)  # no copy when they agree
            if acc.is_floating_point():
                acc.add_(tensor, alpha=weight)
            else:
                torch.maximum(acc, tensor, out=acc)

    def result(self) -> dict[str, torch.Tensor]:
        """The buffers cast back to the manifest's dtypes (an F32/F64 result shares the buffer's memory)."""
        return {
            spec.name: self.buffers[spec.name].to(SAFETENSORS_DTYPES[spec.dtype]) for spec in self.manifest
        }


# ---------------------------------------------------------------------------------------------------------
# Streaming average of submissions


class StreamingAverage:
    """A weighted average of safetensors submissions, folded in node order as they arrive.

    ``manifest`` names the tensors to average (pass ``manifest.shared()`` for what travels; inputs may
    hold other tensors, which are ignored). ``weights`` maps every expected node to its normalised
    weight, e.g. from :func:`weights`.
    """

    def __init__(
        self, manifest: Manifest, weights: Mapping[str, float], *, threads: int | None = FOLD_THREADS
    ) -> None:
        self.manifest = manifest
        self.weights = _check_weights(weights)
        self._order = sorted(self.weights)
        self._next = 0
        self._waiting: dict[str, Source] = {}
        self.threads = _threads_for(manifest, threads)
        with torch_threads(self.threads):
            self._acc = _Accumulator(manifest)
        self._failed: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._next == len(self._order)

    @property
    def folded(self) -> list[str]:
        """The nodes already in the accumulator, in fold order."""
        return self._order[: self._next]

    @property
    def waiting(self) -> list[str]:
        """Nodes that were offered but wait for an earlier node in the fold order."""
        return sorted(self._waiting)

    @property
    def missing(self) -> list[str]:
        """Nodes not offered yet."""
        return [n for n in self._order[self._next :] if n not in self._waiting]

    def offer(self, node: str, source: Source) -> int:
        """Accept ``node``'s submission; fold whatever is now next in order; return how many were folded.

        The submission's header is checked against the manifest now, so a bad input is refused here,
        attributed to its sender, and nothing is queued.
        """
        self._check_usable()
        if node not in self.weights:
            raise AggregationError(
                f"node {node!r} is not part of this average; expected one of {self._order}"
            )
        if node in self._waiting or node in self.folded:
            raise AggregationError(f"node {node!r} was offered twice")
        source = Path(source) if isinstance(source, str) else source
        params.check_against(params.read_header(source), self.manifest, allow_unexpected=True)
        self._waiting[node] = source
        return self._fold_ready()

    def result(self) -> dict[str, torch.Tensor]:
        """The average, in each tensor's manifest dtype."""
        self._check_usable()
        if not self.done:
            raise AggregationError(f"the average is not complete: still missing {self.missing}")
        return self._acc.result()

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the average atomically as a safetensors file."""
        params.save_file(self.result(), path)

    def _fold_ready(self) -> int:
        count = 0
        while not self.done and self._order[self._next] in self._waiting:
            node = self._order[self._next]
            source = self._waiting.pop(node)
            try:
                with torch_threads(self.threads):
                    _fold_source(self._acc, source, self.weights[node])
            except BaseException as exc:
                # A partial fold cannot be undone: this average is unusable, and says so from now on.
                self._failed = exc
                raise
            self._next += 1
            count += 1
        return count

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise AggregationError(f"this average failed while folding and cannot go on: {self._failed}")


def _fold_source(acc: _Accumulator, source: Path | bytes, weight: float) -> None:
    if isinstance(source, bytes):
        # safetensors reads bytes whole; one input's tensors live until this fold ends.
        tensors = safetensors.torch.load(source)
        acc.fold(tensors.__getitem__, weight)
        return
    with safe_open(os.fspath(source), framework="pt") as handle:
        acc.fold(handle.get_tensor, weight)


def average(
    inputs: Mapping[str, Source],
    weights: Mapping[str, float],
    manifest: Manifest,
    *,
    threads: int | None = FOLD_THREADS,
) -> dict[str, torch.Tensor]:
    """The weighted average of all ``inputs`` (node -> file or bytes) over the tensors of ``manifest``."""
    missing = sorted(set(weights) - set(inputs))
    if missing:
        raise AggregationError(f"no input for weighted node(s) {missing}")
    streaming = StreamingAverage(manifest, weights, threads=threads)
    for node in sorted(inputs):
        streaming.offer(node, inputs[node])
    return streaming.result()


# ---------------------------------------------------------------------------------------------------------
# In-memory average (the simulator's path)


def average_states(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    weights: Mapping[str, float],
    *,
    manifest: Manifest | None = None,
    threads: int | None = FOLD_THREADS,
) -> dict[str, torch.Tensor]:
    """The weighted average of in-memory state dicts, by the same rules as :class:`StreamingAverage`.

    Folds in node-name order; floats accumulate as :func:`accumulator_dtype` says, integers take the
    maximum. ``manifest`` limits the average to its tensors; by default every tensor of the first node's
    state is averaged, and every state must match it. The accumulator lives on that state's device.
    """
    node_weights = _check_weights(weights)
    if set(states) != set(node_weights):
        raise AggregationError(
            f"states and weights name different nodes: {sorted(states)} vs {sorted(node_weights)}"
        )
    order = sorted(states)
    first = states[order[0]]
    if manifest is None:
        manifest = Manifest.from_state_dict("state", first)
    device = next(iter(first.values())).device if first else torch.device("cpu")
    for node in order:
        params.check_against(_header_of(states[node]), manifest, allow_unexpected=True)
    with torch_threads(_threads_for(manifest, threads)):
        acc = _Accumulator(manifest, device)
        for node in order:
            acc.fold(states[node].__getitem__, node_weights[node])
        return acc.result()


# ---------------------------------------------------------------------------------------------------------
# A server step past the average (hyperparameters.server_step)


def step_past(
    base: Mapping[str, torch.Tensor], average: Mapping[str, torch.Tensor], step: float
) -> dict[str, torch.Tensor]:
    """``base + step * (average - base)`` for each floating tensor of ``average``, computed where it
    accumulates (`accumulator_dtype`) and cast back; integer tensors (counters) are kept as averaged.

    ``base`` is the aggregate every averaged copy started from. The same function runs in the simulator, the
    server's aggregation and a target that aggregates, so their results are bit-identical.
    """
    if not (math.isfinite(step) and step >= 1.0):
        raise AggregationError(f"a server step must be finite and at least 1; got {step!r}")
    missing = sorted(name for name in average if name not in base)
    if missing:
        raise AggregationError(f"the base aggregate lacks tensors {missing}")
    result: dict[str, torch.Tensor] = {}
    for name, value in average.items():
        if not value.is_floating_point():
            result[name] = value
            continue
        acc_dtype = accumulator_dtype(dtype_name(value.dtype))
        start = base[name].to(device=value.device, dtype=acc_dtype)
        moved = start + step * (value.to(acc_dtype) - start)
        result[name] = moved.to(value.dtype)
    return result


def _header_of(state: Mapping[str, torch.Tensor]) -> dict[str, params.TensorEntry]:
    """A state dict described like a file header, so both paths share one set of checks."""
    return {
        name: params.TensorEntry(dtype_name(t.dtype), tuple(t.shape), (0, 0)) for name, t in state.items()
    }
