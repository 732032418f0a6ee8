"""Would augmenting the collated batch in torch keep the study's result? (issue 17, a prototype)

The training loader spends about 1 ms per sample, half of it in albumentations' per-sample Python (resize,
flip, affine, crop, colour jitter, normalise; reseeding eight generator pairs): a third of the default study's
training time on a 2-core CPU (docs/performance.md). This script trains through the real loop with the
per-sample pipeline cut to what must stay per sample (resize, random crop, [0, 1] scaling) and the rest done
on the whole batch in torch, then scores on validation like ``sweep.py`` (whose records it writes). It
patches two functions for its own process only; nothing in ``src/`` changes. Its draws differ from the
pipeline's augmentation: the same distributions (flip 0.5; rotation, translation and scale as
``data.augment``; brightness, contrast and saturation jitter in one random order per batch instead of per
image), a torch generator seeded by (training seed, optimiser step; exact on resume only at epoch ends)
instead of albumentations' per-sample seeds, and bilinear ``grid_sample`` instead of OpenCV's
``warpAffine`` (nearest for the masks, zeros outside the image).

    .venv/bin/python experiments/batch_augment.py --name xeon_batchaug \\
        --variants baseline_vit two_stage_hard --seeds 0 1 2
"""

from __future__ import annotations

import sys
from pathlib import Path

import albumentations as A
import cv2
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sweep  # noqa: E402  (the script's own directory)

import hardmask.data  # noqa: E402
from hardmask.config import AugmentSection  # noqa: E402
from hardmask.data import transforms as T  # noqa: E402
from hardmask.training.trainer import Trainer  # noqa: E402

# The model's input normalisation, which the loop hands to the training transform (0.5 for a scratch ViT)
NORMALIZATION: dict[str, tuple[float, ...]] = {}


def per_sample_transform(
    image_size: int, augment: AugmentSection, mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD
) -> A.Compose:
    """What stays per sample: the shorter side to ``image_size``, a random square crop, pixels to [0, 1]."""
    del augment  # applied to the batch, and so is the normalisation
    NORMALIZATION.update(mean=tuple(mean), std=tuple(std))
    return A.Compose(
        [
            T._resize_shorter_side(image_size),
            A.RandomCrop(height=image_size, width=image_size),
            A.Normalize(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), max_pixel_value=255.0),
            ToTensorV2(),
        ],
        additional_targets=T.MASK_TARGETS,
        mask_interpolation=cv2.INTER_NEAREST,
    )


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def augment_batch(batch: dict, augment: AugmentSection, generator: torch.Generator) -> dict:
    """Flip, affine (one matrix per image), colour jitter and normalisation of a collated batch."""
    x, fg, parts = batch["image"], batch["fg_mask"], batch["parts"]  # [B,3,H,W] in [0,1], [B,H,W], [B,H,W]
    b = x.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    flip = torch.rand(b, generator=generator) < augment.hflip
    angle = torch.deg2rad(uniform(-augment.degrees, augment.degrees))
    # translation as a fraction of the image size; affine_grid's coordinates span [-1, 1], twice that
    shift = 2 * torch.stack([uniform(-augment.translate, augment.translate) for _ in range(2)], 1)
    scale = uniform(*augment.scale)
    # output -> input coordinates: the inverse of "flip, then rotate and scale about the centre, then shift"
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.stack(
        [
            torch.stack([cos * sign, sin * sign, -(cos * shift[:, 0] + sin * shift[:, 1]) * sign], 1),
            torch.stack([-sin, cos, sin * shift[:, 0] - cos * shift[:, 1]], 1),
        ],
        1,
    )  # [B,2,3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if bool(batch["has_mask"].any()):  # the oracle's input; the other variants are served zeros
        masks = torch.stack([fg.float(), parts.float()], 1)  # [B,2,H,W]
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        fg, parts = masks[:, 0], masks[:, 1].long()

    cj = augment.color_jitter
    if cj > 0:
        factors = {name: uniform(max(0.0, 1 - cj), 1 + cj).view(b, 1, 1, 1) for name in ("b", "c", "s")}
        for name in [("b", "c", "s")[i] for i in torch.randperm(3, generator=generator).tolist()]:
            gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # [B,1,H,W]
            if name == "b":
                x = (x * factors["b"]).clamp_(0, 1)
            elif name == "c":
                x = _blend(x, gray.mean(dim=(2, 3), keepdim=True), factors["c"])
            else:
                x = _blend(x, gray, factors["s"])
    mean = torch.tensor(NORMALIZATION["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(NORMALIZATION["std"]).view(1, 3, 1, 1)
    return {**batch, "image": (x - mean) / std, "fg_mask": fg, "parts": parts}


def main() -> None:
    step = Trainer.step

    def step_on_augmented(self: Trainer, batch):
        if "patch_mask" in batch or not self.model.training:
            return step(self, batch)
        # the run's training seed (the loop seeds torch with it at the start) and the optimiser step
        generator = torch.Generator().manual_seed(torch.initial_seed() * 1_000_003 + self.state.global_step)
        return step(self, augment_batch(batch, self.cfg.data.augment, generator))

    hardmask.data.build_train_transform = per_sample_transform
    Trainer.step = step_on_augmented
    sweep.main()


if __name__ == "__main__":
    main()
