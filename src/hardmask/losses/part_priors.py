"""Part-discovery priors on the stage-1 part maps (method.md §2, formulas 3, 4, 6-9).

``maps`` is always [B,K+1,h,w] with the background part last; ``features`` is [B,D,K+1]. Each function returns
a scalar; 0 is its best value except where stated. They are computed in float32 (the reference disables
autocast for the log-based terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POOL = 3  # the 3x3 neighbourhood (stride 1, no padding) over which presence is measured


def _check_maps(maps: Tensor, name: str, min_side: int = 1) -> Tensor:
    if maps.ndim != 4 or maps.shape[1] < 2:
        raise ValueError(f"{name}: expected part maps [B,K+1,h,w] with K >= 1, got shape {tuple(maps.shape)}")
    if min(maps.shape[-2:]) < min_side:
        raise ValueError(
            f"{name}: the part-map grid {tuple(maps.shape[-2:])} is smaller than {min_side}x{min_side}"
        )
    return maps.float()


def presence_loss(maps: Tensor) -> Tensor:
    """ "original" presence: ``1 - mean_k max_b max_ij AvgPool3x3(A_k)``, foreground parts only.

    Every foreground part must fill some 3x3 neighbourhood in at least one image of the batch (a max over the
    batch, not per image). 0 when each part owns a full 3x3 block somewhere in the batch.
    """
    fg = _check_maps(maps, "presence_loss", POOL)[:, :-1]
    pooled = F.avg_pool2d(fg, POOL, stride=1)  # [B,K,h-2,w-2]
    best = pooled.amax(dim=(-2, -1)).amax(dim=0)  # [K]
    return 1 - best.mean()


def border_weight(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Radial weight [height,width], 0 in the centre, 1 in the corners: ``(gx^2 + gy^2) / max``."""
    gy = torch.linspace(-1, 1, height, device=device)[:, None]
    gx = torch.linspace(-1, 1, width, device=device)[None, :]
    radius = gx**2 + gy**2
    return radius / radius.max()


def _bce_to_one(probs: Tensor) -> Tensor:
    """``mean(-log p)`` with the log clamped at -100, in float32 outside autocast, like
    ``binary_cross_entropy``.

    Why not ``-p.log().clamp_min(-100)``: at p = 0 its backward multiplies an infinite log-gradient by the
    clamp's zero and gives NaN (a 2x2 pooled grid, where the radial weight is 0 or 1 everywhere, hits it).
    PyTorch's BCE bounds the gradient instead; it refuses half precision, hence the float32 island.
    """
    with torch.autocast(device_type=probs.device.type, enabled=False):
        probs = probs.float().clamp(0.0, 1.0)
        return F.binary_cross_entropy(probs, torch.ones_like(probs))


def enforced_presence_loss(maps: Tensor) -> Tensor:
    """Background presence near the border: ``mean_b BCE(max_ij (AvgPool3x3(A_bg) * R)_ij, 1)``.

    Every image must have a 3x3 background neighbourhood towards its corners; 0 when the background fills a
    corner. BCE against 1 is ``-log m``, with the log clamped at -100 as PyTorch's ``binary_cross_entropy``
    does (see :func:`_bce_to_one`).
    """
    bg = _check_maps(maps, "enforced_presence_loss", POOL)[:, -1:]
    pooled = F.avg_pool2d(bg, POOL, stride=1)[:, 0]  # [B,h-2,w-2]
    weighted = pooled * border_weight(*pooled.shape[-2:], device=pooled.device)
    per_image = weighted.amax(dim=(-2, -1))  # [B]
    return _bce_to_one(per_image)


def foreground_presence_loss(maps: Tensor) -> Tensor:
    """Foreground presence towards the centre: ``mean_b BCE(max_ij (AvgPool3x3(1 - A_bg) * (1 - R))_ij, 1)``.

    Not in the paper: the mirror image of :func:`enforced_presence_loss` (background towards the border),
    with all K foreground parts together and the radial weight reversed (1 in the centre, 0 in the corners).
    The reference's presence loss takes its max over the whole batch, so a from-scratch stage 1 satisfies it
    with a few foreground tokens in a few images; this term asks every image for a foreground 3x3 block near
    its centre, the place where photographs (and the benchmark) put the object. 0 when each image has one in
    the very centre.
    """
    fg = 1 - _check_maps(maps, "foreground_presence_loss", POOL)[:, -1:]  # [B,1,h,w], all parts together
    pooled = F.avg_pool2d(fg, POOL, stride=1)[:, 0]  # [B,h-2,w-2]
    centre_weight = 1 - border_weight(*pooled.shape[-2:], device=pooled.device)
    per_image = (pooled * centre_weight).amax(dim=(-2, -1))  # [B]
    return _bce_to_one(per_image)


def total_variation_loss(maps: Tensor) -> Tensor:
    """Anisotropic TV over all K+1 channels, summed, divided by ``B*h*w`` (not by K+1), as the reference.

    The normaliser is recomputed per batch (the reference caches the first batch's).
    """
    maps = _check_maps(maps, "total_variation_loss")
    vertical = (maps[..., 1:, :] - maps[..., :-1, :]).abs().sum()
    horizontal = (maps[..., :, 1:] - maps[..., :, :-1]).abs().sum()
    batch, _, height, width = maps.shape
    return (vertical + horizontal) / (batch * height * width)


def pixel_entropy_loss(maps: Tensor) -> Tensor:
    """Mean entropy of each token's part distribution (maps normalised over parts, ``0 log 0 = 0``)."""
    maps = _check_maps(maps, "pixel_entropy_loss")
    probs = maps / maps.sum(dim=1, keepdim=True)
    log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return -(probs * log_probs).sum(dim=1).mean()


def concentration_loss(maps: Tensor) -> Tensor:
    """Spatial spread of each foreground part around its centroid (off in the paper's runs).

    ``mean_{b,k<K,i,j} A_k(i,j) * [((i - mu_k^i) / w)^2 + ((j - mu_k^j) / h)^2]`` with the centroid's
    normaliser (sum of the map) detached, as the reference (which divides the row offset by the width and vice
    versa).
    """
    maps = _check_maps(maps, "concentration_loss")
    height, width = maps.shape[-2:]
    rows = torch.arange(height, device=maps.device, dtype=maps.dtype)[:, None]  # [h,1]
    cols = torch.arange(width, device=maps.device, dtype=maps.dtype)[None, :]  # [1,w]
    mass = maps.sum(dim=(-2, -1)).detach()  # [B,K+1]
    mu_row = (maps * rows).sum(dim=(-2, -1)) / mass
    mu_col = (maps * cols).sum(dim=(-2, -1)) / mass
    spread = ((rows - mu_row[..., None, None]) / width) ** 2 + (
        (cols - mu_col[..., None, None]) / height
    ) ** 2
    return (spread * maps)[:, :-1].mean()


def orthogonality_loss(features: Tensor) -> Tensor:
    """Part orthogonality (§10.2, the intended PDiscoFormer form): ``mean((F^T F - I)^2)`` over [B,K+1,K+1].

    ``features`` [B,D,K+1] are L2-normalised over D first, so the penalty is on the cosine similarity between
    the K+1 modulated part vectors (background included); 0 when they are mutually orthogonal.
    """
    if features.ndim != 3:
        raise ValueError(
            f"orthogonality_loss: expected part features [B,D,K+1], got shape {tuple(features.shape)}"
        )
    unit = F.normalize(features.float(), dim=1)
    gram = unit.transpose(1, 2) @ unit  # [B,K+1,K+1]
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return (gram - eye).square().mean()
