"""A resumable, rank-sharded data order whose augmentation randomness depends only on (seed, epoch, index).

The sampler yields *keys* ``epoch * len(dataset) + index``; :class:`SeededSamples` decodes a key, seeds the
sample's transform from ``(seed, epoch, index)`` and returns the sample. So the images of a batch are the same
whichever worker loads them, and a run resumed in the middle of an epoch sees exactly the batches (and the
augmentations) an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Wraps a dataset whose ``transform`` has ``set_random_seed`` (albumentations); decodes sampler keys."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), len(self.dataset))
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(sample_seed(self.seed, epoch, index))
        return self.dataset[index]


class ResumableSampler(Sampler[int]):
    """Seeded permutation per epoch, split across ranks, that can start after ``skip_batches`` batches.

    Every rank draws the same permutation and takes a contiguous block of ``batch_size`` indices per batch in
    turn (rank r takes batch positions r, r + world, ...), dropping the last incomplete global batch as the
    reference does (``drop_last=True``).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < batch_size * world_size:
            raise ValueError(
                f"training split has {n} samples, "
                f"fewer than one global batch ({batch_size} x {world_size} ranks)"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        )
        perm = torch.randperm(self.n, generator=g)
        global_batch = self.batch_size * self.world_size
        for b in range(self.skip_batches, self.batches_per_epoch):
            start = b * global_batch + self.rank * self.batch_size
            for idx in perm[start : start + self.batch_size].tolist():
                yield self.epoch * self.n + idx
