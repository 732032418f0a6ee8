"""Equivariance of the part maps under a random similarity transform (method.md §2 formula 5, §10.10).

One transform per batch: angle ~ U(-degrees, degrees), integer-pixel translation ~ U(+-translate * side),
scale ~ U(scale range), no shear. The images are warped bilinearly and only stage 1 runs on them
(``model.stage1_maps``); their maps are warped back with two nearest-neighbour affine steps as in the
reference (translate by -t scaled to the patch grid, then rotate by -angle and scale by 1/s), and compared
with the original maps per foreground part by cosine similarity: ``L = 1 - mean_{b,k<K} cos(A_k^b, T^-1
A'_k^b)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class SimilarityTransform:
    angle: float  # degrees, counter-clockwise (torchvision convention)
    translate: tuple[int, int]  # (x, y) in image pixels
    scale: float


def sample_similarity_transform(
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    image_size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> SimilarityTransform:
    """A random similarity transform for images of ``image_size`` (height, width), drawn from torch's RNG."""
    height, width = image_size

    def uniform(low: float, high: float) -> float:
        return float(low + (high - low) * torch.rand((), generator=generator))

    angle = uniform(-degrees, degrees)
    tx = round(uniform(-translate * width, translate * width))
    ty = round(uniform(-translate * height, translate * height))
    return SimilarityTransform(angle=angle, translate=(tx, ty), scale=uniform(*scale))


def warp_images(images: Tensor, transform: SimilarityTransform) -> Tensor:
    """The forward warp of a batch [B,C,H,W] (bilinear, zero fill)."""
    return TF.affine(
        images,
        angle=transform.angle,
        translate=list(transform.translate),
        scale=transform.scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
    )


def unwarp_maps(maps: Tensor, transform: SimilarityTransform, image_size: tuple[int, int]) -> Tensor:
    """Inverse warp of part maps [B,K+1,h,w] computed on warped images (nearest, as the reference)."""
    height, width = image_size
    grid_h, grid_w = maps.shape[-2:]
    back_shift = [-transform.translate[0] * grid_w / width, -transform.translate[1] * grid_h / height]
    nearest = InterpolationMode.NEAREST
    maps = TF.affine(
        maps, angle=0.0, translate=back_shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest
    )
    return TF.affine(
        maps, angle=-transform.angle, translate=[0.0, 0.0], scale=1.0 / transform.scale, shear=[0.0, 0.0],
        interpolation=nearest,
    )  # fmt: skip


def equivariance_loss(
    maps: Tensor, maps_of_warped: Tensor, transform: SimilarityTransform, image_size: tuple[int, int]
) -> Tensor:
    """``1 - mean cos`` of ``maps`` and un-warped ``maps_of_warped`` (both [B,K+1,h,w]), fg parts only."""
    if maps.shape != maps_of_warped.shape:
        raise ValueError(
            f"equivariance_loss: maps {tuple(maps.shape)} and maps of the warped batch "
            f"{tuple(maps_of_warped.shape)} differ in shape"
        )
    restored = unwarp_maps(maps_of_warped.float(), transform, image_size)
    cosine = F.cosine_similarity(
        maps[:, :-1].float().flatten(2), restored[:, :-1].flatten(2), dim=-1
    )  # [B,K]
    return 1 - cosine.mean()
