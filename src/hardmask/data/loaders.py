"""The one DataLoader factory of training, evaluation and benchmarks."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


def make_loader(
    dataset: Any,
    batch_size: int,
    *,
    num_workers: int,
    pin_memory: bool,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """Batches of ``dataset`` in ``sampler``'s order (training: full batches only), else in index order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=sampler is not None,
        persistent_workers=False,
        # its own generator: creating an iterator must not draw from the global RNG, or a resumed epoch would
        # see different Gumbel noise than an uninterrupted one
        generator=torch.Generator(),
    )
