"""Tiny random-init ViTs shared by the model, loss and optimiser tests (32 px images, 4x4 patch grid)."""

from __future__ import annotations

from typing import Any

import torch

from hardmask.config import ModelSection
from hardmask.models import build_model
from tests.conftest import PAPER, changed

IMAGE_SIZE = 32
PATCH = 8
GRID = IMAGE_SIZE // PATCH  # 4 x 4 = 16 patch tokens
NUM_PARTS = 3
NUM_CLASSES = 3
TINY_KWARGS = {"patch_size": PATCH, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_model_cfg(**fields: Any) -> ModelSection:
    """The paper's model settings on a tiny ViT from random weights, nothing frozen, K = 3."""
    kwargs = fields.pop("kwargs", {})
    backbone = {"name": "vit_tiny_patch16_224", "kwargs": {**TINY_KWARGS, **kwargs}, "pretrained": False}
    return changed(
        PAPER.model, backbone=backbone, **{"num_parts": NUM_PARTS, "freeze_backbone": False, **fields}
    )


def tiny_model(variant: str = "two_stage_hard", seed: int = 0, **fields: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(variant, tiny_model_cfg(**fields), num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def pixel_mask_of(patch_mask: torch.Tensor) -> torch.Tensor:
    """[B, GRID*GRID] patch mask -> [B, IMAGE_SIZE, IMAGE_SIZE] pixel mask (each patch's pixels)."""
    grid = patch_mask.view(-1, GRID, GRID)
    return grid.repeat_interleave(PATCH, dim=1).repeat_interleave(PATCH, dim=2)
