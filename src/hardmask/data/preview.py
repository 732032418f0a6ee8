"""A figure of a few samples per group, with the ground-truth object outline where the dataset has masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hardmask.data.common import GroupedImageDataset, read_rgb
from hardmask.io import atomic_path


def pick_per_group(
    groups: np.ndarray, per_group: int, max_groups: int, seed: int = 0
) -> dict[int, np.ndarray]:
    """Up to ``per_group`` random indices of each of the first ``max_groups`` non-empty groups (seeded)."""
    order = np.random.default_rng(seed).permutation(len(groups))
    chosen = {}
    for group in np.unique(groups)[:max_groups]:
        chosen[int(group)] = order[groups[order] == group][:per_group]
    return chosen


def save_sample_grid(
    dataset: GroupedImageDataset, path: str | Path, per_group: int = 4, max_groups: int = 12, seed: int = 0
) -> Path:
    """Rows = groups (named), columns = samples; the object outline is drawn in yellow when masks exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = pick_per_group(dataset.groups, per_group, max_groups, seed)
    fig, axes = plt.subplots(
        len(chosen), per_group, figsize=(1.6 * per_group + 1.4, 1.6 * len(chosen)), squeeze=False
    )
    for row, (group, indices) in enumerate(chosen.items()):
        for col in range(per_group):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(indices):
                ax.axis("off")
                continue
            image = read_rgb(dataset.image_path(int(indices[col])))
            ax.imshow(image, interpolation="nearest")
            if dataset.has_masks:
                fg, _ = dataset.read_masks(int(indices[col]), image.shape[:2])
                if fg.any():
                    ax.contour(fg, levels=[0.5], colors="yellow", linewidths=0.8)
        axes[row, 0].set_ylabel(dataset.group_spec.names[group].replace("_on_", "\non "), fontsize=8)
    fig.suptitle(f"{dataset.description}: {per_group} samples per group", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path
