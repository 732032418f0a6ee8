"""Augmentation moves masks with the image and keeps them binary / integer; eval resizing and cropping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardmask.config import AugmentSection
from hardmask.data import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform

STRONG = AugmentSection(
    hflip=0.5, degrees=60, translate=0.15, scale=(0.7, 1.3), color_jitter=0.2, planckian_jitter=0.5
)


def _scene(h: int = 40, w: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A white off-centre rectangle on black; parts: its left half 1, right half 2."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    fg = np.zeros((h, w), dtype=np.uint8)
    fg[6:22, 8:30] = 1
    image[fg > 0] = 255
    parts = fg.copy()
    parts[:, 19:] *= 2
    return image, fg, parts


def _denormalise(image: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (image * std + mean).mean(0).numpy()  # [H, W] grey level in [0, 1]


def test_masks_stay_binary_and_move_with_the_image():
    transform = build_train_transform(40, STRONG)
    image, fg, parts = _scene()
    moved = 0
    for seed in range(25):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=fg, parts=parts)
        mask, part_ids = out["mask"].numpy(), out["parts"].numpy()
        assert out["image"].shape == (3, 40, 40) and mask.shape == (40, 40)
        assert set(np.unique(mask)) <= {0, 1}
        assert set(np.unique(part_ids)) <= {0, 1, 2}
        assert np.array_equal(mask > 0, part_ids > 0)
        bright = _denormalise(out["image"]) > 0.5
        iou = (bright & (mask > 0)).sum() / max(1, (bright | (mask > 0)).sum())
        assert iou > 0.85, f"seed {seed}: mask and object disagree (IoU {iou:.2f})"
        moved += not np.array_equal(mask, fg)
    assert moved >= 20, "the geometric augmentation should move the object"


def test_same_seed_same_augmentation():
    transform = build_train_transform(40, STRONG)
    image, fg, parts = _scene()
    outs = []
    for _ in range(2):
        transform.set_random_seed(7)
        outs.append(transform(image=image, mask=fg, parts=parts))
    assert torch.equal(outs[0]["image"], outs[1]["image"]) and torch.equal(outs[0]["mask"], outs[1]["mask"])


def test_colour_jitter_leaves_masks_alone():
    transform = build_train_transform(
        40,
        AugmentSection(hflip=0, degrees=0, translate=0, scale=(1, 1), color_jitter=0.4, planckian_jitter=0.0),
    )
    image, fg, parts = _scene()
    image = (image * 0.5 + 60).astype(np.uint8)
    changed = False
    for seed in range(5):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=fg, parts=parts)
        assert np.array_equal(out["mask"].numpy(), fg) and np.array_equal(out["parts"].numpy(), parts)
        changed |= not np.allclose(_denormalise(out["image"]), image.mean(-1) / 255, atol=1e-3)
    assert changed


def test_eval_transform_resizes_and_centre_crops():
    h, w = 30, 60
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, w // 2 :] = 255  # right half white
    fg = np.zeros((h, w), dtype=np.uint8)
    fg[:, w // 2 :] = 1
    out = build_eval_transform(20)(image=image, mask=fg, parts=fg)
    assert out["image"].shape == (3, 20, 20)
    # 30x60 -> 20x40 -> centre 20x20 = columns 10..29: the white half starts at column 10 of the crop
    assert out["mask"][:, :10].sum() == 0 and out["mask"][:, 10:].all()
    crop = build_eval_transform(20, crop_pct=0.5)(image=image, mask=fg, parts=fg)
    assert crop["mask"].shape == (20, 20)


@pytest.mark.parametrize("mean,std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), (IMAGENET_MEAN, IMAGENET_STD)])
def test_normalisation_uses_the_given_statistics(mean, std):
    value = np.array(mean) * 255
    image = np.broadcast_to(value.round().astype(np.uint8), (8, 8, 3)).copy()
    zeros = np.zeros((8, 8), dtype=np.uint8)
    out = build_eval_transform(8, mean, std)(image=image, mask=zeros, parts=zeros)
    assert out["image"].abs().max() < 0.02
