"""Parameter groups (§3.1): lr factors, weight-decay exemptions, normalised decay, sqrt scaling, freezing."""

from __future__ import annotations

import math

import pytest
import torch

from hardmask.config import Config
from hardmask.training.optim import build_optimizer, build_param_groups
from tests.conftest import DEFAULT, changed
from tests.models.tiny import images, tiny_model

FACTORS = {
    "scratch_lr_factor": 10.0,
    "modulation_lr_factor": 20.0,
    "finer_lr_factor": 30.0,
    "stage2_lr_factor": 0.5,
}


def config(batch: int = 64, **optim) -> Config:
    optim = {"lr": 1e-3, "reference_batch_size": 16, "weight_decay": 0.05, "epochs": 4, **optim}
    return changed(DEFAULT, data={"loader": {"batch_size": batch}}, optim=optim)


def group_of(groups, param: torch.nn.Parameter) -> str:
    names = [g.name for g in groups.groups if any(p is param for p in g.params)]
    assert len(names) == 1, names
    return names[0]


def test_lr_factors_weight_decay_and_sqrt_batch_scaling():
    model = tiny_model(kwargs={"reg_tokens": 2})
    groups = build_param_groups(model, "two_stage_hard", config(**FACTORS), steps_per_epoch=25, world_size=2)
    scale = math.sqrt(64 * 2 / 16)
    wd = 0.05 * math.sqrt(1 / (25 * 4))
    assert groups.lr_scale == pytest.approx(scale) and groups.lr == pytest.approx(1e-3 * scale)
    assert groups.effective_batch == 128 and groups.weight_decay == pytest.approx(wd)
    expected = {  # name -> (lr factor, weight decay)
        "stage1_backbone": (1.0, wd),
        "stage1_backbone_no_wd": (1.0, 0.0),
        "stage1_tokens": (1.0, 0.0),
        "prototypes": (30.0, 0.0),
        "modulation": (20.0, 0.0),
        "stage1_head": (10.0, wd),
        "stage2_backbone": (0.5, wd),
        "stage2_backbone_no_wd": (0.5, 0.0),
        "stage2_tokens": (0.5, 0.0),
        "stage2_head": (10.0, wd),
        "stage2_head_no_wd": (10.0, 0.0),
    }
    assert {g.name for g in groups.groups} == set(expected)
    for g in groups.groups:
        assert (g.lr_factor, g.weight_decay) == pytest.approx(expected[g.name]), g.name
    for g in groups.groups:
        assert g.lr == pytest.approx(1e-3 * scale * g.lr_factor)
    s1, s2 = model.stage1.backbone, model.stage2.backbone
    assert group_of(groups, s1.cls_token) == group_of(groups, s1.reg_token) == group_of(groups, s1.pos_embed)
    assert (
        group_of(groups, s1.pos_embed) == "stage1_tokens"
        and group_of(groups, s2.reg_token) == "stage2_tokens"
    )
    assert group_of(groups, s1.blocks[0].norm1.weight) == "stage1_backbone_no_wd"
    assert group_of(groups, s1.blocks[0].attn.qkv.bias) == "stage1_backbone_no_wd"
    assert group_of(groups, s2.blocks[0].mlp.fc1.weight) == "stage2_backbone"
    assert group_of(groups, model.stage2.fc_norm.weight) == "stage2_head_no_wd"
    assert group_of(groups, model.stage2.head.weight) == "stage2_head"
    all_params = [p for g in groups.groups for p in g.params]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))


def test_gradient_accumulation_counts_in_the_effective_batch_and_scaling_can_be_off():
    model = tiny_model("baseline_vit")
    groups = build_param_groups(
        model, "baseline_vit", config(batch=8, grad_accumulation=4), steps_per_epoch=10
    )
    assert groups.effective_batch == 32 and groups.lr == pytest.approx(1e-3 * math.sqrt(2))
    assert "sqrt(32/16)" in groups.scaling_note
    flat = build_param_groups(
        model, "baseline_vit", config(sqrt_batch_scaling=False, normalized_weight_decay=False), 10
    )
    assert flat.lr == 1e-3 and flat.weight_decay == 0.05 and "no batch scaling" in flat.scaling_note
    assert {g.name for g in flat.groups} == {
        "stage2_backbone", "stage2_backbone_no_wd", "stage2_tokens", "stage2_head", "stage2_head_no_wd"
    }  # fmt: skip


def test_frozen_parameters_are_left_out_and_counted():
    model = tiny_model(freeze_backbone=True)
    groups = build_param_groups(model, "two_stage_hard", config(), steps_per_epoch=10)
    names = {g.name for g in groups.groups}
    assert (
        "stage1_backbone" not in names and "stage1_backbone_no_wd" not in names and "stage1_tokens" in names
    )
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert groups.frozen_numel == frozen > 0
    summary = groups.summary()
    assert summary["frozen_params"] == frozen and summary["group/prototypes/lr"] == pytest.approx(groups.lr)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        build_param_groups(tiny_model(), "two_stage_hard", config(), steps_per_epoch=0)
    frozen = tiny_model("stage1_only", freeze_backbone=True, freeze_params_stage1=True)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_param_groups(frozen, "stage1_only", config(), steps_per_epoch=1)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_optimizer_uses_the_groups_and_steps(optimizer):
    model = tiny_model()
    cfg = config(optimizer=optimizer, **FACTORS)
    groups = build_param_groups(model, "two_stage_hard", cfg, steps_per_epoch=10)
    opt = build_optimizer(groups, cfg)
    assert [g["name"] for g in opt.param_groups] == [g.name for g in groups.groups]
    assert [g["lr"] for g in opt.param_groups] == [g.lr for g in groups.groups]
    assert [g["weight_decay"] for g in opt.param_groups] == [g.weight_decay for g in groups.groups]
    if optimizer != "sgd":
        assert not opt.defaults.get("fused")  # CPU tensors: the fused kernels are for CUDA
    before = model.stage2.head.weight.detach().clone()
    model(images(2)).logits.sum().backward()
    opt.step()
    assert not torch.equal(before, model.stage2.head.weight)
