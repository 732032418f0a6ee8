"""Image transforms (albumentations 2.0): geometry moves image, foreground mask and part mask together.

Targets are ``image`` uint8 [H,W,3], ``mask`` uint8 [H,W] (foreground) and ``parts`` uint8 [H,W] (part ids).
Masks are always resampled with nearest-neighbour interpolation, so they stay binary / integer-valued, and
areas that a rotation brings in from outside the image are background (0) in both masks and black in the
image. Colour transforms touch the image only.

Train: shorter side -> image_size, horizontal flip, affine (rotation, translation, scale), random square crop,
colour jitter (timm's convention: one strength for brightness, contrast and saturation, hue untouched),
optional Planckian jitter (the reference's ``cub_original`` recipe), normalise. Eval: shorter side ->
image_size / crop_pct, centre crop, normalise. For square inputs already at image_size (the generated
benchmark, ImageNet-9) both resizes and crops are identities.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from hardmask.config import AugmentSection

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_TARGETS = {"parts": "mask"}  # the foreground mask is albumentations' own "mask" target


def _compose(transforms: list[A.BasicTransform]) -> A.Compose:
    return A.Compose(transforms, additional_targets=MASK_TARGETS, mask_interpolation=cv2.INTER_NEAREST)


def _resize_shorter_side(size: int) -> A.SmallestMaxSize:
    # area averaging when shrinking (no aliasing), bilinear when enlarging; masks nearest via the Compose
    return A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image")


def build_train_transform(
    image_size: int,
    augment: AugmentSection,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    geometric = augment.degrees > 0 or augment.translate > 0 or tuple(augment.scale) != (1.0, 1.0)
    transforms: list[A.BasicTransform] = [
        _resize_shorter_side(image_size),
        A.HorizontalFlip(p=augment.hflip),
        A.Affine(
            rotate=(-augment.degrees, augment.degrees),
            translate_percent=(-augment.translate, augment.translate),
            scale=tuple(augment.scale),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=1.0 if geometric else 0.0,
        ),
        A.RandomCrop(height=image_size, width=image_size),
    ]
    if augment.color_jitter > 0:
        cj = augment.color_jitter
        transforms.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=1.0))
    if augment.planckian_jitter > 0:
        transforms.append(A.PlanckianJitter(mode="blackbody", p=augment.planckian_jitter))
    transforms += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return _compose(transforms)


def build_eval_transform(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 1.0,
) -> A.Compose:
    """Shorter side to ``image_size / crop_pct``, then centre-crop ``image_size`` (timm's crop_pct)."""
    return _compose(
        [
            _resize_shorter_side(round(image_size / crop_pct)),
            A.CenterCrop(height=image_size, width=image_size),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )
