"""Resumable, process-aware batching.

``GlobalBatchSampler`` shuffles once per epoch with a seeded generator and cuts the order into
global batches; process r takes the r-th contiguous block of each, so the global batch and its
row order are the same for any number of processes. It can start at any batch of an epoch,
which is how a resumed run continues at its data position. ``SeededSamples`` draws each
sample's random augmentation from a generator seeded by (seed, epoch, index), so the pixels do
not depend on loader workers or on where a run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

_EPOCH_STRIDE = 1_000_003
_INDEX_STRIDE = 7_919


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices for process ``rank`` of ``world_size`` (drop last)."""

    def __init__(
        self,
        length: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        self.length = length
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        if length < self.global_batch:
            raise ValueError(
                f"{length} samples cannot fill one global batch of {self.global_batch} "
                f"({batch_size} per process x {world_size} processes): lower the batch size"
            )
        self.seed, self.rank, self.shuffle = seed, rank, shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.length // self.global_batch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        for batch in range(self.start_batch, self.length // self.global_batch):
            first = batch * self.global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size]


class SeededSamples(Dataset):
    """``dataset[i]`` with torch's RNG seeded from (seed, epoch, i) while it is read."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * _EPOCH_STRIDE + self.epoch) * _INDEX_STRIDE + index)
            return self.dataset[index]
