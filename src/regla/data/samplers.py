"""The training sampler of the dense tasks: a fixed number of samples per epoch, sharded over ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled indices for ``rank`` out of ``world_size``; the order is a function of ``(seed, epoch)`` only.

    ``samples_per_epoch`` (all ranks together) maps iteration-based recipes onto epochs (mmseg's 80k iterations of
    batch 16 = 80 epochs of 16,000 samples); None is one pass over the data. Like ``DistributedSampler``, the
    indices are padded by repetition so every rank gets the same count; :meth:`set_epoch` is called by the harness.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 samples_per_epoch: int | None = None, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("EpochSampler needs a non-empty dataset")
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, shuffle
        total = samples_per_epoch or size
        self.per_rank = -(-total // world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        need = self.per_rank * self.world_size
        rounds = -(-need // self.size)
        order = [torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
                 for _ in range(rounds)]
        indices = torch.cat(order)[:need]
        return iter(indices[self.rank::self.world_size].tolist())
