"""The DataLoader factory: OpenCV without its thread pool, in the process and in its workers, same samples."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from hardmask.data import build_train_transform, make_loader

from ..conftest import DEFAULT


class _OpenCVThreads(Dataset):
    """Each sample is the number of threads OpenCV would use in the process that loads it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return cv2.getNumThreads()


@pytest.fixture
def opencv_pool():
    """OpenCV with a pool of 4 threads, as a fresh process on a 4-core machine has; restored afterwards."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(4)
    yield
    cv2.setNumThreads(previous)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_samples_are_loaded_with_opencv_on_one_thread(opencv_pool, num_workers: int):
    loader = make_loader(_OpenCVThreads(), 2, num_workers=num_workers, pin_memory=False)
    assert torch.cat(list(loader)).tolist() == [1, 1, 1, 1]


def test_opencv_threads_do_not_change_an_augmented_sample(opencv_pool):
    size = DEFAULT.data.image_size
    transform = build_train_transform(size, DEFAULT.data.augment)  # the default study's training augmentation
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    parts = rng.integers(0, 5, (size, size), dtype=np.uint8)

    def sample() -> dict[str, torch.Tensor]:
        transform.set_random_seed(7)
        return transform(image=image, mask=(parts > 0).astype(np.uint8), parts=parts)

    pooled = sample()
    cv2.setNumThreads(0)
    alone = sample()
    assert all(torch.equal(pooled[key], alone[key]) for key in ("image", "mask", "parts"))
