"""Minibatches of a split, read through ``torch.utils.data.DataLoader`` in an order fixed by a seed.

A split is a map-style dataset (`fedalign.data.core.SplitDataset`); which samples form each batch is the
batch sampler's choice, made in this process from a seeded generator, and the DataLoader reads them (one
``split[i]`` per sample, or the whole batch at once where the split offers ``__getitems__``). So the batch
order depends on the seed alone, never on how the samples are read, and a split read from disk is never
held in memory whole. Worker processes (``workers`` > 0) read ahead in parallel; the DataLoader hands the
batches back in the sampler's order, and augmentation runs here, in this process, after collation, so the
batches are the same with any number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, default_collate

from fedalign.data.core import Batch, DatasetError, SplitDataset

# Samples per batch of an evaluation pass: evaluation holds no gradients, so this only bounds memory.
EVAL_BATCH_SIZE = 512

BatchAugment = Callable[[torch.Tensor], torch.Tensor]


class Collate:
    """The DataLoader's collate step: stacks ``(x, y)`` items into ``(x, y)`` batches, float32 and int64.

    A batch the dataset stacked itself (`Batch`) passes through; an empty batch (a Poisson sample may be
    empty) becomes empty tensors of the split's sample shape.
    """

    def __init__(self, sample_shape: Sequence[int]) -> None:
        self.sample_shape = tuple(sample_shape)

    def __call__(
        self, items: Batch | list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(items, Batch):
            return items.x, items.y
        if not items:
            return torch.zeros((0, *self.sample_shape)), torch.zeros(0, dtype=torch.int64)
        x, y = default_collate(items)
        return x.float(), torch.as_tensor(y, dtype=torch.int64)


def batch_loader(
    split: SplitDataset, batch_sampler: Iterable[list[int]], workers: int = 0
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader that reads ``split`` in the batches ``batch_sampler`` chooses, in its order."""
    return DataLoader(
        split,  # type: ignore[arg-type]  # a map-style dataset by protocol, not by inheritance
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=Collate(split.sample_shape),
    )


class SeededBatchSampler:
    """Endless batches of indices into a split of ``n`` samples, reshuffled every epoch, fixed by ``seed``.

    The stream of indices is the concatenation of one random permutation of ``range(n)`` per epoch, cut into
    consecutive batches of exactly ``batch_size``: a batch at an epoch's end wraps into the next permutation
    instead of coming out smaller. So every batch has the same size (BatchNorm and the balanced adversarial
    losses need no special case, and a batch of one never occurs), while each epoch's ``n`` consecutive
    indices still hold every sample exactly once. A split smaller than a batch simply repeats within the
    batch, one permutation after another.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if n == 0:
            raise DatasetError("cannot draw batches from an empty split")
        self.n = n
        self.batch_size = batch_size
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._position = 0
        self.epoch = 0  # how many permutations have been started (1 after the first batch)

    def next_indices(self) -> torch.Tensor:
        chunks: list[torch.Tensor] = []
        wanted = self.batch_size
        while wanted > 0:
            if self._position == len(self._order):
                self._order = torch.randperm(self.n, generator=self._generator)
                self._position = 0
                self.epoch += 1
            take = min(wanted, len(self._order) - self._position)
            chunks.append(self._order[self._position : self._position + take])
            self._position += take
            wanted -= take
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_indices().tolist()


class TrainingBatches:
    """A step's training batches: ``split`` read through a DataLoader in the batches of ``batch_sampler``,
    each batch augmented (``augment``, drawing from its own seeded generator) before it is handed out."""

    def __init__(
        self,
        split: SplitDataset,
        batch_sampler: Iterable[list[int]],
        augment: BatchAugment | None = None,
        workers: int = 0,
    ) -> None:
        self._batches = iter(batch_loader(split, batch_sampler, workers))
        self._augment = augment

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch; ``y`` holds `fedalign.data.UNLABELLED` where the split has no labels."""
        x, y = next(self._batches)
        if self._augment is not None and len(x):
            x = self._augment(x)
        return x, y

    def __iter__(self) -> TrainingBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next()


class BatchStream(TrainingBatches):
    """Endless stream of fixed-size minibatches of a split, reshuffled every epoch, fully determined by
    ``seed`` (`SeededBatchSampler` says how the batches are cut)."""

    def __init__(
        self,
        split: SplitDataset,
        batch_size: int,
        seed: int,
        augment: BatchAugment | None = None,
        workers: int = 0,
    ) -> None:
        self._sampler = SeededBatchSampler(len(split), batch_size, seed)
        super().__init__(split, self._sampler, augment, workers)

    @property
    def epoch(self) -> int:
        """How many permutations have been started (1 after the first batch)."""
        return self._sampler.epoch


def evaluation_batches(
    split: SplitDataset,
    batch_size: int = EVAL_BATCH_SIZE,
    workers: int = 0,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split once, in order, in batches of ``batch_size`` (the last one smaller); no augmentation. With
    ``indices``, only those samples, in that order, batched alike."""
    order = range(len(split)) if indices is None else list(indices)
    if len(order) == 0:
        return iter(())
    chunks = [list(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    return iter(batch_loader(split, chunks, workers))


def stack(split: SplitDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as two tensors (x, y), read in order: for small splits and tests, never for training
    (it holds every sample in memory at once, which is what the lazy splits avoid)."""
    xs, ys = zip(*evaluation_batches(split), strict=True) if len(split) else ((), ())
    if not xs:
        return torch.zeros((0, *split.sample_shape)), torch.zeros(0, dtype=torch.int64)
    return torch.cat(xs), torch.cat(ys)
