"""Uncertainty of the headline comparison: a paired bootstrap over test images (numpy only).

Seeds give one source of spread (the sd over seeds in every table); the finite test set gives another. The
bootstrap here measures the second: within a seed, test images are resampled with replacement and *both*
models are scored on the same resampled images (their errors on an image are correlated, so resampling them
apart would overstate the spread of the difference); the per-seed gains are averaged over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (method correct [N] bool, baseline correct [N] bool, group [N] int) of one seed, aligned image by image
PairedRun = tuple[np.ndarray, np.ndarray, np.ndarray]

_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once: keeps a 50k-image test set at ~100 MB


def resampled_worst_group_accuracy(
    correct: np.ndarray, groups: np.ndarray, indices: np.ndarray
) -> np.ndarray:
    """Worst-group accuracy of each resample: ``correct``, ``groups`` [N]; ``indices`` [B,M] -> [B].

    As on the full split, the minimum is over the groups present: a group a resample misses is left out.
    """
    _, group_ids = np.unique(groups, return_inverse=True)
    num_groups = int(group_ids.max()) + 1
    num_samples = len(indices)
    bins = (np.arange(num_samples)[:, None] * num_groups + group_ids[indices]).ravel()
    size = num_samples * num_groups
    counts = np.bincount(bins, minlength=size).reshape(num_samples, num_groups)
    hits = np.bincount(bins, weights=correct[indices].ravel(), minlength=size).reshape(
        num_samples, num_groups
    )
    accuracy = np.divide(hits, counts, out=np.full(counts.shape, np.inf), where=counts > 0)
    return accuracy.min(axis=1)


def paired_bootstrap_gain(
    runs: Sequence[PairedRun], *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the worst-group-accuracy gain (method - baseline), averaged over seeds.

    Each seed's test images are resampled with replacement ``n_resamples`` times, the same indices for both
    models; resample ``b``'s gain is the mean over seeds of their gains in resample ``b``. The interval covers
    test-set sampling only (the trained models are held fixed). Deterministic for a given ``seed``.
    """
    if not runs:
        raise ValueError("no paired runs to bootstrap")
    rng = np.random.default_rng(seed)
    gains = np.zeros(n_resamples)
    for method, baseline, groups in runs:
        n = len(groups)
        if not len(method) == len(baseline) == n > 0:
            raise ValueError("each run needs one method, baseline and group entry per test image")
        chunk = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, n_resamples, chunk):
            indices = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
            gains[start : start + len(indices)] += resampled_worst_group_accuracy(
                method, groups, indices
            ) - resampled_worst_group_accuracy(baseline, groups, indices)
    gains /= len(runs)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(gains, [tail, 100 - tail])
    return float(low), float(high)
