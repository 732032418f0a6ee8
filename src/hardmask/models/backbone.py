"""Helpers around a timm ``VisionTransformer`` used by composition (never subclassed, never class-swapped).

Every model of hardmask holds one or two plain timm ViTs and drives them through their public pieces
(``patch_embed``, ``_pos_embed``, ``blocks``, ``norm``). The classifier parts of the timm model are removed so
that no parameter sits unused (unused parameters break DDP and distort parameter counts); each model owns its
head.

Parameter roles: every model reports a role for each of its parameters (:data:`ParamRole`). Freezing
(``registry.apply_freezing``) and optimiser groups (``training.optim``) are decided on roles, never on name
substrings, so a renamed attribute cannot silently move a parameter into the wrong group.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from hardmask.errors import HardmaskError

ParamRole = Literal[
    "stage1_backbone",  # stage-1 ViT weights (frozen by model.freeze_backbone)
    "stage1_tokens",  # stage-1 cls/register tokens and position embedding (frozen by freeze_params_stage1)
    "prototypes",  # part prototypes fc_landmarks ("finer" lr factor, no weight decay)
    "modulation",  # LayerNorm([D, K+1]) modulation (modulation lr factor, no weight decay)
    "stage1_head",  # shared part classifier (scratch lr factor)
    "stage2_backbone",  # predictor ViT weights (frozen by model.freeze_stage2)
    "stage2_tokens",  # predictor cls/register tokens and position embedding (frozen by freeze_params_stage2)
    "stage2_head",  # predictor fc_norm + head (scratch lr factor)
]

# Parameters of a timm ViT that are "tokens": trained even with a frozen backbone, never weight-decayed.
TOKEN_PARAMETERS = ("cls_token", "reg_token", "pos_embed")


class BackboneError(HardmaskError, ValueError):
    """A timm model that the two-stage architecture cannot drive."""


def prepare_backbone(vit: nn.Module, where: str) -> VisionTransformer:
    """Check that ``vit`` is a usable timm ViT and drop its classifier parts (returned object is ``vit``)."""
    if not isinstance(vit, VisionTransformer):
        raise BackboneError(f"{where}: expected a timm VisionTransformer, got {type(vit).__name__}")
    if vit.cls_token is None:
        raise BackboneError(
            f"{where}: the backbone has no class token (class_token=False); the heads read the class token"
        )
    if not isinstance(vit.patch_drop, nn.Identity):
        raise BackboneError(
            f"{where}: patch_drop_rate > 0 reorders tokens and cannot be combined with token masks"
        )
    # The heads live in the hardmask models; timm's pooling/head would only hold unused parameters.
    vit.attn_pool = None
    vit.fc_norm = nn.Identity()
    vit.head_drop = nn.Identity()
    vit.head = nn.Identity()
    vit.num_classes = 0
    return vit


def token_grid(vit: VisionTransformer, images: Tensor) -> tuple[int, int]:
    """Patch grid (h, w) of ``images`` [B,3,H,W] for this backbone (dynamic image sizes included)."""
    if vit.dynamic_img_size:
        return tuple(vit.patch_embed.dynamic_feat_size(images.shape[-2:]))
    return tuple(vit.patch_embed.grid_size)


def embed_tokens(vit: VisionTransformer, images: Tensor) -> Tensor:
    """Patch embedding + prefix tokens + position embedding: [B,3,H,W] -> [B, P + h*w, D].

    Positions are added here, before any token is masked or gathered away, as in the reference.
    """
    tokens = vit.patch_embed(images)
    tokens = vit._pos_embed(tokens)
    tokens = vit.patch_drop(tokens)  # Identity (checked in prepare_backbone)
    return vit.norm_pre(tokens)


def run_blocks(vit: VisionTransformer, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """Every transformer block with the same ``attn_mask`` (timm semantics), then the final norm."""
    if attn_mask is None:
        tokens = vit.blocks(tokens)
    else:
        for block in vit.blocks:
            tokens = block(tokens, attn_mask=attn_mask)
    return vit.norm(tokens)


def backbone_roles(vit: VisionTransformer, prefix: str, stage: Literal[1, 2]) -> dict[str, ParamRole]:
    """Roles of a backbone's parameters keyed by full name under ``prefix`` (e.g. ``"stage1.backbone."``)."""
    tokens: ParamRole = "stage1_tokens" if stage == 1 else "stage2_tokens"
    weights: ParamRole = "stage1_backbone" if stage == 1 else "stage2_backbone"
    return {
        prefix + name: (tokens if name in TOKEN_PARAMETERS else weights) for name, _ in vit.named_parameters()
    }


def attention_dtype(reference: Tensor) -> torch.dtype:
    """The dtype attention scores will have: the autocast dtype inside autocast, else ``reference``'s dtype.

    A float attention bias must match the query dtype for ``scaled_dot_product_attention``.
    """
    device_type = reference.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return reference.dtype


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the model's timm backbone expects (training and evaluation build their datasets with it)."""
    from timm.data import resolve_model_data_config
    from timm.models import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            data_cfg = resolve_model_data_config(module)
            return tuple(data_cfg["mean"]), tuple(data_cfg["std"])
    return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
