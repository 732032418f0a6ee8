"""Backbone creation and weight loading.

- :func:`create_backbone`: ``timm.create_model(name, num_classes=0, img_size=..., **kwargs)``; with
  ``backbone.checkpoint_path`` the weights come from that local file (``torch.load(weights_only=True)`` or
  safetensors, converted and position-resampled by timm's ViT ``checkpoint_filter_fn``); otherwise with
  ``backbone.pretrained`` timm fetches its pretrained weights by name (Hugging Face hub or its local cache).
  Offline without a cached copy or a local file is a :class:`WeightsError` saying what to set.
- :func:`load_reference_checkpoint`: the authors' released two-stage checkpoints (``model_state``, optional
  DDP ``module.`` prefix, keys ``stage_1.*`` / ``stage_2.*`` as in method.md §1.7, §9.1) into a
  :class:`TwoStageViT`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from hardmask.config import BackboneSection
from hardmask.errors import HardmaskError


class WeightsError(HardmaskError, RuntimeError):
    """Weights could not be found or do not fit the model."""


def create_backbone(cfg: BackboneSection, image_size: int, drop_path_rate: float = 0.0) -> VisionTransformer:
    """A timm ViT without classifier from ``model.backbone``: random, pretrained by name, or a local file."""
    kwargs = dict(num_classes=0, img_size=image_size, drop_path_rate=drop_path_rate, **cfg.kwargs)
    from_hub = cfg.pretrained and cfg.checkpoint_path is None
    try:
        vit = timm.create_model(cfg.name, pretrained=from_hub, **kwargs)
    except OSError as exc:  # hub unreachable and nothing cached (huggingface_hub errors are OSErrors)
        raise WeightsError(
            f"model.backbone: could not fetch pretrained weights for {cfg.name!r} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}). Offline, set model.backbone.checkpoint_path to a local weights "
            "file (.safetensors/.pth), pre-populate the Hugging Face cache (HF_HOME), or set "
            "model.backbone.pretrained=false"
        ) from exc
    except RuntimeError as exc:
        if "pretrained" in str(exc).lower():
            raise WeightsError(f"model.backbone: {cfg.name!r}: {exc}") from exc
        raise
    if not isinstance(vit, VisionTransformer):
        raise WeightsError(
            f"model.backbone.name: {cfg.name!r} is a {type(vit).__name__}, not a timm VisionTransformer"
        )
    if cfg.pos_embed_init == "sincos" and not from_hub:  # loaded weights below replace it
        init_sincos_pos_embed(vit)
    if cfg.checkpoint_path is not None:
        load_backbone_weights(vit, cfg.checkpoint_path)
    return vit


def init_sincos_pos_embed(vit: VisionTransformer) -> None:
    """Set the patch rows of ``vit.pos_embed`` to the 2-D sin-cos table of its patch grid, prefix rows to 0.

    Why: a learned embedding starts as noise (std 0.02), and a small ViT trained from scratch on a few
    thousand images takes many epochs to discover the 2-D layout from it; recognising a shape depends on
    that layout. The table gives every token its row and column from the first step (it stays trainable).
    """
    if vit.pos_embed is None:
        raise WeightsError("model.backbone.pos_embed_init=sincos: the backbone has no position embedding")
    if vit.embed_dim % 4:
        raise WeightsError(
            f"model.backbone.pos_embed_init=sincos: embed_dim {vit.embed_dim} must be divisible by 4 "
            "(sin and cos of the row and of the column)"
        )
    from timm.layers import build_sincos2d_pos_embed

    grid = tuple(vit.patch_embed.grid_size)
    table = build_sincos2d_pos_embed(grid, vit.embed_dim)  # [h*w, D], rows in raster order as the patches
    num_patches = grid[0] * grid[1]
    with torch.no_grad():
        vit.pos_embed.zero_()  # prefix rows (when the class token has a position) start at 0, as in MAE
        vit.pos_embed[0, -num_patches:] = table.to(vit.pos_embed.dtype)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or ``torch.save`` file (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of many kinds: name the file and the safe-loading constraint
        raise WeightsError(f"{path}: not a loadable weights file with weights_only=True ({exc})") from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    return dict(obj)


def load_backbone_weights(vit: VisionTransformer, path: str | Path) -> None:
    """Load a local backbone checkpoint (timm, DINOv2, or wrapped in model/state_dict/model_state)."""
    state = read_state_dict(path)
    for wrapper in ("model_state", "model", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = checkpoint_filter_fn(state, vit)  # DINOv2/CLIP key conversion, pos-embed resampling to our grid
    head_keys = {k for k in state if k.startswith(("head.", "fc_norm.", "head_drop."))}
    missing, unexpected = _load(vit, {k: v for k, v in state.items() if k not in head_keys}, path)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: does not fit the backbone (missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}); "
            "check model.backbone.name and model.backbone.kwargs against the checkpoint's architecture"
        )


def _load(
    module: torch.nn.Module, state: Mapping[str, Tensor], path: str | Path
) -> tuple[list[str], list[str]]:
    try:
        return module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        raise WeightsError(f"{path}: tensor shapes do not fit the model: {exc}") from exc


# Reference module names (models/two_stage_double_classification.py) -> hardmask module names.
_REFERENCE_HEADS = {
    "stage_1.fc_landmarks.": "stage1.fc_landmarks.",
    "stage_1.modulation.": "stage1.modulation.",
    "stage_1.fc_class_landmarks.": "stage1.fc_class_landmarks.",
    "stage_2.fc_norm.": "stage2.fc_norm.",
    "stage_2.head.": "stage2.head.",
}
_REFERENCE_BACKBONES = {"stage_1.": "stage1.backbone.", "stage_2.": "stage2.backbone."}
_REFERENCE_BUFFERS = (
    "stage_2.prefix_attn_mask",
)  # a constant of ones in the reference, rebuilt on the fly here


def reference_to_hardmask_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an authors' two-stage state dict to this package's module layout."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in _REFERENCE_BUFFERS:
            continue
        for old, new in (*_REFERENCE_HEADS.items(), *_REFERENCE_BACKBONES.items()):
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise WeightsError(
                f"reference checkpoint: unexpected key {key!r} (expected stage_1.* or stage_2.*)"
            )
    return out


def load_reference_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load an authors' released checkpoint (``{"model_state": ...}``) into a two-stage model, strictly."""
    state = read_state_dict(path)
    if isinstance(state.get("model_state"), Mapping):
        state = dict(state["model_state"])
    renamed = reference_to_hardmask_keys(state)
    missing, unexpected = _load(model, renamed, path)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: reference checkpoint does not fit the model (missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}); build the model with the checkpoint's backbone, "
            "image size, K and number of classes"
        )
