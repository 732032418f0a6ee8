"""Plot what a two-stage model's stage 1 keeps: image, argmax part map, hard mask vs ground truth (val split).

python -m experiments.inspect_masks runs/experiments/quick/<name>_two_stage_hard_seed0.pt out.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hardmask.config import config_from_dict  # noqa: E402
from hardmask.data import build_dataset  # noqa: E402
from hardmask.metrics import pool_mask_to_patches  # noqa: E402
from hardmask.models import build_model  # noqa: E402
from hardmask.models.backbone import input_normalization  # noqa: E402


def main(weights: Path, out: Path, count: int = 8) -> None:
    saved = torch.load(weights, map_location="cpu", weights_only=False)
    cfg = config_from_dict(saved["config"])
    model = build_model(
        saved["variant"], cfg.model, num_classes=cfg.data.synthetic.n_classes, image_size=cfg.data.image_size
    )
    model.load_state_dict(saved["model"])
    model.eval()
    mean, std = input_normalization(model)
    dataset = build_dataset(cfg, "val", train=False, mean=mean, std=std)
    samples = [dataset[i] for i in range(0, 40 * count, 40)]
    images = torch.stack([s["image"] for s in samples])
    with torch.no_grad():
        out_ = model(images)
    grid = out_.part_logits.shape[-2:]
    parts = out_.part_logits.argmax(1).numpy()  # [N,h,w], K = background
    hard = out_.hard_mask.reshape(len(samples), *grid).numpy()
    truth = pool_mask_to_patches(np.stack([s["fg_mask"].numpy() for s in samples]), tuple(grid), 0.5)
    truth = truth.reshape(len(samples), *grid)
    fig, axes = plt.subplots(4, count, figsize=(2 * count, 8))
    for i in range(count):
        pixels = (images[i] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(
            0, 1
        )
        axes[0, i].imshow(pixels.permute(1, 2, 0).numpy())
        axes[1, i].imshow(parts[i], cmap="tab10", vmin=0, vmax=9)
        axes[2, i].imshow(hard[i], cmap="gray", vmin=0, vmax=1)
        axes[3, i].imshow(truth[i], cmap="gray", vmin=0, vmax=1)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[:, 0], ("image", "argmax part", "hard mask", "GT >= 50 %")):
        ax.set_ylabel(title)
    fig.tight_layout()
    fig.savefig(out, dpi=60)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
