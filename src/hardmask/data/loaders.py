"""The one DataLoader factory of training, evaluation and benchmarks."""

from __future__ import annotations

from typing import Any

import cv2
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
    """Batches of ``dataset`` in ``sampler``'s order (training: full batches only), else in index order.

    OpenCV, which albumentations calls for every sample, runs without its thread pool here and in the loader's
    workers (albumentations' performance guide: ``cv2.setNumThreads(0)`` where it runs in DataLoader workers).
    By default it starts a thread per core for each warp of a sample, which costs more CPU than it saves and
    takes the cores that torch, the other loader workers or the other training job of a 2-core machine run on
    (a default training sample: 0.65 ms of CPU instead of about 1.0). Every pixel is the same either way.
    """
    _sequential_opencv()
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
        # a forked worker inherits the setting; a spawned one (macOS, Windows) does not
        worker_init_fn=_sequential_opencv if num_workers else None,
    )


def _sequential_opencv(worker_id: int | None = None) -> None:
    cv2.setNumThreads(0)
