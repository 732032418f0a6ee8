"""The foreground/background patch mask stage 2 attends through (method.md §1.2.6, §1.3, §10.1, §10.3).

Training (reference ``gumbel_softmax_straight_through_custom``): an independent Gumbel draw ``y =
softmax((logits + g) / tau)`` over the K+1 parts; stage-2 part dropout zeroes whole foreground parts per image
with probability ``p`` (no renormalisation: the surviving parts keep their probabilities); a token is
foreground when ``max_k y_k`` over the surviving foreground parts is >= the background probability (ties go to
foreground, as the reference's ``argmax`` over [fg, bg] does).

Evaluation (§10.3): no noise and no dropout; the argmax of the logits decides, so the mask agrees with the
argmax of the deterministic part maps. ``stochastic=True`` reproduces the reference's noisy evaluation.

Gradients (§10.1): the hard mask is boolean and carries no gradient (``mask_grad: none``). With
``straight_through=True`` the mask also carries ``ste = hard + (S - S.detach())`` with ``S`` the sum of the
surviving foreground probabilities (the reference's straight-through value): its value is exactly the hard
mask and its gradient reaches stage 1 (used by stage 2's non-fused attention, see ``stage2.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, eq=False)  # holds tensors: no field-wise == (ambiguous truth value)
class PatchMask:
    hard: Tensor  # [B,h*w] bool, True = foreground (attendable by stage 2)
    soft: Tensor  # [B,h*w] float, max surviving foreground probability (the soft-mask ablation's mask)
    ste: Tensor | None = None  # [B,h*w] float: value == hard, gradient of the surviving foreground mass


def gumbel_noise_like(tensor: Tensor) -> Tensor:
    """Standard Gumbel(0, 1) noise, drawn as ``F.gumbel_softmax`` draws it (-log Exp(1))."""
    return -torch.empty_like(tensor).exponential_().log()


def sample_patch_mask(
    part_logits: Tensor,
    *,
    tau: float,
    part_dropout: float,
    training: bool,
    stochastic: bool,
    straight_through: bool = False,
) -> PatchMask:
    """Patch mask from part logits [B,K+1,h,w] (channel K = background); see the module docstring."""
    num_parts = part_logits.shape[1] - 1
    noisy = part_logits + gumbel_noise_like(part_logits) if stochastic else part_logits
    probs = (noisy / tau).softmax(dim=1)  # [B,K+1,h,w]
    fg_probs, bg_prob = probs[:, :num_parts], probs[:, num_parts]
    if training and part_dropout > 0:
        # whole parts per image (the reference's dropout2d then * (1 - p)): survivors keep their values
        keep = torch.rand(fg_probs.shape[:2], device=fg_probs.device) >= part_dropout  # [B,K]
        fg_probs = fg_probs * keep[:, :, None, None].to(fg_probs.dtype)
    fg_best = fg_probs.amax(dim=1)  # [B,h,w]
    if stochastic or (training and part_dropout > 0):
        hard = fg_best >= bg_prob
    else:
        # deterministic: decide on the logits themselves, so the mask is exactly "argmax is a foreground part"
        hard = noisy[:, :num_parts].amax(dim=1) >= noisy[:, num_parts]
    ste = None
    if straight_through:
        surviving_mass = fg_probs.sum(dim=1)  # [B,h,w]
        ste = hard.to(surviving_mass.dtype) + (surviving_mass - surviving_mass.detach())
        ste = ste.flatten(1)
    return PatchMask(hard=hard.flatten(1), soft=fg_best.flatten(1), ste=ste)


def oracle_patch_mask(fg_mask: Tensor, patch_size: tuple[int, int], threshold: float) -> Tensor:
    """Ground-truth patch mask: pixels [B,H,W] in {0,1} -> [B,h*w] bool, foreground share >= ``threshold``."""
    if fg_mask.ndim != 3:
        raise ValueError(f"oracle mask: expected a pixel mask [B,H,W], got shape {tuple(fg_mask.shape)}")
    share = F.avg_pool2d(fg_mask[:, None].float(), kernel_size=patch_size, stride=patch_size)  # [B,1,h,w]
    return (share >= threshold).flatten(1)
