"""build_model: variants, parameter roles and the freeze flags."""

from __future__ import annotations

import pytest
import torch

from hardmask.models import VARIANTS, build_model
from tests.models.tiny import tiny_model, tiny_model_cfg


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown model variant 'two_stage'.*baseline_vit"):
        build_model("two_stage", tiny_model_cfg(), num_classes=2, image_size=32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_has_a_role(variant):
    model = tiny_model(variant)
    roles = model.parameter_roles()
    assert set(roles) == {n for n, _ in model.named_parameters()}


def test_default_trains_everything():
    model = tiny_model()
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_freeze_backbone_keeps_stage1_tokens_and_everything_else_trainable():
    model = tiny_model(freeze_backbone=True, kwargs={"reg_tokens": 2})
    names = trainable(model)
    assert {"stage1.backbone.cls_token", "stage1.backbone.reg_token", "stage1.backbone.pos_embed"} <= names
    assert "stage1.backbone.blocks.0.attn.qkv.weight" not in names
    assert "stage1.backbone.norm.weight" not in names and "stage1.backbone.patch_embed.proj.bias" not in names
    assert {
        "stage1.fc_landmarks.weight",
        "stage1.modulation.weight",
        "stage1.fc_class_landmarks.weight",
    } <= names
    assert all(n in names for n, _ in model.stage2.named_parameters(prefix="stage2"))


def test_freeze_params_stage1_and_stage2_flags():
    model = tiny_model(
        freeze_backbone=True, freeze_params_stage1=True, freeze_stage2=True, freeze_params_stage2=True
    )
    names = trainable(model)
    assert names == {
        "stage1.fc_landmarks.weight",
        "stage1.modulation.weight",
        "stage1.modulation.bias",
        "stage1.fc_class_landmarks.weight",
        "stage2.fc_norm.weight",
        "stage2.fc_norm.bias",
        "stage2.head.weight",
    }


def test_baseline_vit_uses_the_predictor_flags():
    model = tiny_model("baseline_vit", freeze_stage2=True, freeze_backbone=True)
    assert trainable(model) == {
        "backbone.cls_token",
        "backbone.pos_embed",
        "fc_norm.weight",
        "fc_norm.bias",
        "head.weight",
    }
