"""``build_model(variant, model_cfg, num_classes, image_size)``: the configured model of a variant.

Freezing works on parameter roles (``backbone.ParamRole``), for every variant alike:

| flag                     | frozen roles    | meaning                                                    |
|--------------------------|-----------------|------------------------------------------------------------|
| ``freeze_backbone``      | stage1_backbone | stage-1 ViT frozen except cls/register tokens, pos-embed   |
| ``freeze_params_stage1`` | stage1_tokens   | ... and those tokens too                                   |
| ``freeze_stage2``        | stage2_backbone | predictor ViT frozen except tokens/pos-embed (head trains) |
| ``freeze_params_stage2`` | stage2_tokens   | predictor tokens and pos-embed frozen                      |

The predictor ViT is stage 2 for two-stage and oracle models and the single ViT of ``baseline_vit``.
"""

from __future__ import annotations

from torch import nn

from hardmask.config import VARIANTS, ModelSection
from hardmask.models.backbone import ParamRole
from hardmask.models.baselines import BaselineViT, OracleMaskModel, Stage1OnlyModel
from hardmask.models.stage1 import PartDiscoveryViT
from hardmask.models.stage2 import MaskedViT
from hardmask.models.two_stage import TwoStageViT
from hardmask.models.weights import create_backbone


def build_model(variant: str, model_cfg: ModelSection, num_classes: int, image_size: int) -> nn.Module:
    """The model of ``variant`` (one of ``hardmask.config.VARIANTS``), ``model_cfg``'s freezing applied."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if num_classes < 1:
        raise ValueError(f"build_model: num_classes must be >= 1, got {num_classes}")
    backbone_cfg = model_cfg.backbone

    def stage1() -> PartDiscoveryViT:
        return PartDiscoveryViT(
            create_backbone(backbone_cfg, image_size, backbone_cfg.drop_path_stage1),
            num_parts=model_cfg.num_parts,
            num_classes=num_classes,
            part_dropout=model_cfg.part_dropout,
            gumbel_softmax=model_cfg.gumbel_softmax,
            tau=model_cfg.gumbel_tau,
            stochastic_eval=model_cfg.stochastic_eval,
            position_free=model_cfg.stage1_position_free,
        )

    def stage2() -> MaskedViT:
        backbone = create_backbone(backbone_cfg, image_size, backbone_cfg.drop_path_stage2)
        return MaskedViT(backbone, num_classes, impl=model_cfg.stage2_impl)

    if variant in ("two_stage_hard", "two_stage_soft"):
        model: nn.Module = TwoStageViT(
            stage1(),
            stage2(),
            part_dropout_stage2=model_cfg.part_dropout_stage2,
            mask_grad=model_cfg.mask_grad,
            soft_masks=variant == "two_stage_soft",
        )
    elif variant == "stage1_only":
        model = Stage1OnlyModel(stage1())
    elif variant == "oracle_mask":
        model = OracleMaskModel(stage2(), patch_threshold=model_cfg.oracle_patch_threshold)
    else:  # baseline_vit
        model = BaselineViT(
            create_backbone(backbone_cfg, image_size, backbone_cfg.drop_path_stage2), num_classes
        )
    apply_freezing(model, model_cfg)
    return model


def frozen_roles(model_cfg: ModelSection) -> set[ParamRole]:
    roles: set[ParamRole] = set()
    if model_cfg.freeze_backbone:
        roles.add("stage1_backbone")
    if model_cfg.freeze_params_stage1:
        roles.add("stage1_tokens")
    if model_cfg.freeze_stage2:
        roles.add("stage2_backbone")
    if model_cfg.freeze_params_stage2:
        roles.add("stage2_tokens")
    return roles


def apply_freezing(model: nn.Module, model_cfg: ModelSection) -> None:
    """Set ``requires_grad`` from the freeze flags (see the module docstring)."""
    frozen = frozen_roles(model_cfg)
    roles = model.parameter_roles()
    for name, param in model.named_parameters():
        param.requires_grad_(roles[name] not in frozen)
