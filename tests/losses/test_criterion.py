"""Criterion: the terms of each variant, the weighted total, eval mode, the stage-1-only equivariance pass."""

from __future__ import annotations

import pytest
import torch

from hardmask.config import LossSection
from hardmask.losses import Criterion, LossOutput
from hardmask.models import ModelOutput, get_variant
from tests.conftest import PAPER, changed
from tests.models.tiny import IMAGE_SIZE, images, tiny_model

STAGE1_ACTIVE = {
    "classification_stage1",
    "presence",
    "enforced_presence",
    "equivariance",
    "orthogonality",
    "total_variation",
    "entropy",
}  # concentration and foreground_presence are off (weight 0) in the paper's recipe
LABELS = torch.tensor([0, 1, 2, 0])


def criterion_of(variant: str, loss_cfg: LossSection = PAPER.loss) -> Criterion:
    return Criterion(loss_cfg, get_variant(variant).losses, variant)


def losses_of(
    variant: str, loss_cfg: LossSection | None = None, train: bool = True
) -> tuple[LossOutput, Criterion]:
    model = tiny_model(variant)
    model.train(train)
    x = images(4)
    fg = torch.zeros(4, IMAGE_SIZE, IMAGE_SIZE)
    fg[:, 8:24, 8:24] = 1
    out = model(x, fg_mask=fg)
    criterion = criterion_of(variant, loss_cfg or PAPER.loss)
    return criterion(model, x, LABELS, out), criterion


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("two_stage_hard", {"classification_stage2"} | STAGE1_ACTIVE),
        ("two_stage_soft", {"classification_stage2"} | STAGE1_ACTIVE),
        ("stage1_only", STAGE1_ACTIVE),
        ("baseline_vit", {"classification_stage2"}),
        ("oracle_mask", {"classification_stage2"}),
    ],
)
def test_terms_per_variant_and_weighted_total(variant, expected):
    losses, criterion = losses_of(variant)
    assert set(losses.terms) == expected
    total = sum(criterion.weights[name] * value for name, value in losses.terms.items())
    torch.testing.assert_close(losses.total, total)
    assert all(torch.isfinite(v) for v in losses.terms.values())
    losses.total.backward()


def test_weights_come_from_the_loss_section_and_zero_weights_are_skipped():
    cfg = changed(
        PAPER.loss,
        enforced_presence=2.0,
        equivariance=0.0,
        concentration=0.5,
        total_variation=3.0,
        foreground_presence=4.0,
    )
    losses, criterion = losses_of("two_stage_hard", cfg)
    assert "equivariance" not in losses.terms and "concentration" in losses.terms
    assert criterion.weights["foreground_presence"] == 4.0 and "foreground_presence" in losses.terms
    assert criterion.weights["enforced_presence"] == 2.0 and criterion.weights["total_variation"] == 3.0
    total = sum(criterion.weights[name] * value for name, value in losses.terms.items())
    torch.testing.assert_close(losses.total, total)


def test_eval_mode_computes_only_the_classification_terms():
    losses, _ = losses_of("two_stage_hard", train=False)
    assert set(losses.terms) == {"classification_stage2", "classification_stage1"}


def test_equivariance_pass_runs_stage1_only(monkeypatch):
    model = tiny_model().train()
    x = images(4)
    out = model(x)
    calls = []
    monkeypatch.setattr(model.stage2, "forward", lambda *a, **k: calls.append("stage2"))
    stage1_maps = model.stage1_maps
    monkeypatch.setattr(model, "stage1_maps", lambda imgs: calls.append("stage1_maps") or stage1_maps(imgs))
    losses = criterion_of("two_stage_hard")(model, x, LABELS, out)
    assert calls == ["stage1_maps"]
    assert 0 <= losses.terms["equivariance"].item() <= 2


def test_gradients_reach_stage1_and_stage2():
    model = tiny_model().train()
    x = images(4)
    losses = criterion_of("two_stage_hard")(model, x, LABELS, model(x))
    losses.total.backward()
    assert model.stage1.fc_landmarks.weight.grad.abs().sum() > 0
    assert model.stage1.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.stage2.head.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown loss groups \['classification'\]"):
        Criterion(PAPER.loss, ("classification",), "vit")
    with pytest.raises(ValueError, match="no stage1_logits"):
        criterion_of("two_stage_hard")(
            tiny_model().train(), images(4), LABELS, ModelOutput(torch.zeros(4, 3))
        )
    silent = criterion_of("baseline_vit", changed(PAPER.loss, classification_stage2=0.0))
    with pytest.raises(ValueError, match="every loss weight is 0"):
        silent(tiny_model("baseline_vit"), images(4), LABELS, ModelOutput(torch.zeros(4, 3)))
