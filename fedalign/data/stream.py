"""Minibatches for the local training steps, in an order fixed by a seed."""

from __future__ import annotations

import torch

from fedalign.data.core import DatasetError, Split


class BatchStream:
    """Endless stream of minibatches from a Split, reshuffled every epoch, fully determined by `seed`.

    The stream is the concatenation of one random permutation of the split per epoch, cut into consecutive
    batches of exactly ``batch_size`` samples: a batch at an epoch's end wraps into the next permutation
    instead of coming out smaller. So every batch has the same size (BatchNorm and the balanced adversarial
    losses need no special case, and a batch of one never occurs), while each epoch's ``len(split)``
    consecutive samples of the stream still hold every sample exactly once. A split smaller than a batch
    simply repeats within the batch, one permutation after another.
    """

    def __init__(self, split: Split, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(split) == 0:
            raise DatasetError("cannot draw batches from an empty split")
        self._split = split
        self._batch_size = batch_size
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._position = 0
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """How many permutations have been started (1 after the first batch)."""
        return self._epoch

    def _next_indices(self) -> torch.Tensor:
        chunks: list[torch.Tensor] = []
        wanted = self._batch_size
        while wanted > 0:
            if self._position == len(self._order):
                self._order = torch.randperm(len(self._split), generator=self._generator)
                self._position = 0
                self._epoch += 1
            take = min(wanted, len(self._order) - self._position)
            chunks.append(self._order[self._position : self._position + take])
            self._position += take
            wanted -= take
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch, ``batch_size`` samples, on the split's device."""
        index = self._next_indices()
        return self._split.x[index], self._split.y[index]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next()
