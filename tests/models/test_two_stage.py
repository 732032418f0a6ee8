"""Two-stage wrapper and baselines: outputs, interventions, the equivariance entry point, architectures."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from hardmask.models import VARIANTS, Interventions, ModelOutput, build_model
from hardmask.models.stage1 import PartDiscoveryViT
from hardmask.models.stage2 import MaskedViT
from hardmask.models.two_stage import TwoStageViT
from tests.conftest import PAPER, changed
from tests.models.tiny import GRID, IMAGE_SIZE, NUM_CLASSES, NUM_PARTS, images, pixel_mask_of, tiny_model

NUM_TOKENS = GRID * GRID


def test_two_stage_output_fields_and_shapes():
    model = tiny_model().eval()
    out = model(images(2))
    assert isinstance(out, ModelOutput)
    maps_shape = (2, NUM_PARTS + 1, GRID, GRID)
    assert out.logits.shape == out.stage1_logits.shape == (2, NUM_CLASSES)
    assert out.part_maps.shape == out.part_logits.shape == out.part_sims.shape == maps_shape
    assert out.hard_mask.shape == (2, NUM_TOKENS) and out.hard_mask.dtype == torch.bool
    assert out.soft_mask.shape == (2, NUM_TOKENS) and out.soft_mask.is_floating_point()
    assert out.part_features.shape == (2, 32, NUM_PARTS + 1)
    assert torch.equal(out.hard_mask, (out.part_logits.argmax(1) < NUM_PARTS).flatten(1))  # §10.3
    assert model.grid_size == (GRID, GRID)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_and_returns_its_fields(variant):
    model = tiny_model(variant).eval()
    fg = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE)
    fg[:, :16] = 1
    out = model(images(2), fg_mask=fg)
    assert out.logits.shape == (2, NUM_CLASSES) and torch.isfinite(out.logits).all()
    spec = VARIANTS[variant]
    assert (out.part_maps is not None) == spec.has_parts
    assert (out.hard_mask is not None) == (spec.has_parts or spec.takes_fg_mask)
    if variant == "stage1_only":
        assert torch.equal(out.logits, out.stage1_logits)
    if spec.takes_fg_mask:  # top half of the image is foreground
        assert (
            out.hard_mask.view(2, GRID, GRID)[:, :2].all()
            and not out.hard_mask.view(2, GRID, GRID)[:, 2:].any()
        )


@pytest.mark.parametrize("variant", [v for v, spec in VARIANTS.items() if spec.takes_fg_mask])
def test_oracles_need_the_ground_truth_mask(variant):
    with pytest.raises(ValueError, match=f"{variant}: the model needs the ground-truth pixel mask"):
        tiny_model(variant)(images(1))


def test_soft_variant_attends_through_the_soft_mask():
    model = tiny_model("two_stage_soft").eval()
    out = model(images(2))
    with torch.no_grad():
        expected = model.stage2(images(2), soft_mask=out.soft_mask)
    torch.testing.assert_close(out.logits, expected)


def test_removing_a_part_removes_exactly_its_tokens():
    model = tiny_model(seed=3).eval()
    x = images(8)
    with torch.no_grad():
        plain = model(x)
        assignment = plain.part_logits.argmax(1).flatten(1)  # [B,16]
        counts = torch.bincount(assignment.flatten(), minlength=NUM_PARTS + 1)
        part = int(counts[:NUM_PARTS].argmax())  # the most used foreground part
        assert counts[part] > 0
        removed = model(x, interventions=Interventions(part_ids_to_remove=(part,)))
    assert torch.equal(removed.hard_mask, plain.hard_mask & (assignment != part))
    assert (removed.part_maps[:, part] == 0).all()  # the removed part is assigned nowhere
    assert torch.equal(
        removed.part_maps.argmax(1).flatten(1) < NUM_PARTS, removed.hard_mask
    )  # maps agree with mask
    assert not torch.equal(removed.logits, plain.logits)


def test_thresholds_gate_parts_and_above_every_similarity_give_empty_foreground():
    model = tiny_model().eval()
    x = images(4)
    with torch.no_grad():
        plain = model(x)
        high = plain.part_sims.max() + 1
        out = model(x, interventions=Interventions(thresholds=torch.full((NUM_PARTS,), float(high))))
    assert not out.hard_mask.any()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.part_maps).all()
    assert (out.part_maps[:, -1] == 1).all()
    with torch.no_grad():  # thresholds below every similarity change nothing
        low = plain.part_sims.min() - 1
        same = model(x, interventions=Interventions(thresholds=torch.full((NUM_PARTS,), float(low))))
    assert torch.equal(same.hard_mask, plain.hard_mask)
    torch.testing.assert_close(same.logits, plain.logits)


def test_threshold_gate_keeps_negative_squared_distance_logits_elsewhere():
    model = tiny_model().eval()
    x = images(2)
    with torch.no_grad():
        plain = model(x)
        thr = plain.part_sims[:, :NUM_PARTS].median().expand(NUM_PARTS).clone()
        out = model(x, interventions=Interventions(thresholds=thr))
    gated = plain.part_sims[:, :NUM_PARTS] < thr.view(1, -1, 1, 1)
    assert gated.any() and (~gated).any()
    assert torch.isneginf(out.part_logits[:, :NUM_PARTS][gated]).all()
    torch.testing.assert_close(
        out.part_logits[:, :NUM_PARTS][~gated], plain.part_logits[:, :NUM_PARTS][~gated]
    )
    torch.testing.assert_close(out.part_logits[:, -1], plain.part_logits[:, -1])


def test_interventions_are_validated_and_eval_only():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"part ids \[7\] out of range"):
        model(images(1), interventions=Interventions(part_ids_to_remove=(7,)))
    with pytest.raises(ValueError, match="one threshold per foreground part"):
        model(images(1), interventions=Interventions(thresholds=torch.zeros(NUM_PARTS + 1)))
    with pytest.raises(ValueError, match="evaluation-only"):
        model.train()(images(1), interventions=Interventions(part_ids_to_remove=(0,)))


def test_stage1_maps_does_not_run_stage2(monkeypatch):
    model = tiny_model().eval()

    def fail(*args, **kwargs):
        raise AssertionError("stage 2 must not run for the equivariance maps")

    monkeypatch.setattr(model.stage2, "forward", fail)
    maps = model.stage1_maps(images(2))
    assert maps.shape == (2, NUM_PARTS + 1, GRID, GRID)
    monkeypatch.undo()
    torch.testing.assert_close(maps, model(images(2)).part_maps)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"reg_tokens": 4, "no_embed_class": True}, {"reg_tokens": 2, "no_embed_class": False}],
    ids=["no-registers", "reg4-no-embed-class", "reg2-embed-class"],
)
def test_architectures_packed_equals_dense_and_stay_faithful(kwargs):
    model = tiny_model(kwargs=kwargs).eval()
    prefix = 1 + kwargs.get("reg_tokens", 0)
    assert model.stage2.num_prefix_tokens == prefix
    x = images(3)
    mask = torch.rand(3, NUM_TOKENS, generator=torch.Generator().manual_seed(0)) < 0.4
    mask[0] = False
    with torch.no_grad():
        model.stage2.impl = "dense"
        dense = model(x, patch_mask=mask).logits
        model.stage2.impl = "packed"
        packed = model(x, patch_mask=mask).logits
        x_changed = torch.where(pixel_mask_of(mask)[:, None], x, torch.randn_like(x))
        packed_changed = model(x_changed, patch_mask=mask).logits
    torch.testing.assert_close(packed, dense, atol=1e-5, rtol=0)
    assert torch.equal(packed, packed_changed)


def test_stages_share_no_weights():
    model = tiny_model()
    first = {id(p) for p in model.stage1.parameters()}
    assert not first & {id(p) for p in model.stage2.parameters()}


def test_grids_must_match():
    cfg = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    vit1 = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **cfg)
    vit2 = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, **cfg)
    with pytest.raises(ValueError, match="need the same image and patch size"):
        TwoStageViT(PartDiscoveryViT(vit1, 2, 2), MaskedViT(vit2, 2))


def test_model_output_is_a_frozen_dataclass():
    out = ModelOutput(logits=torch.zeros(1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.logits = torch.ones(1, 2)


@pytest.mark.slow(seconds=10)
def test_dinov2_reg4_base_at_518_builds_and_runs():
    cfg = changed(
        PAPER.model,
        backbone={"name": "vit_base_patch14_reg4_dinov2", "pretrained": False},
        num_parts=8,
        freeze_backbone=False,
    )
    torch.manual_seed(0)
    model = build_model("two_stage_hard", cfg, num_classes=2, image_size=518).eval()
    assert model.grid_size == (37, 37) and model.stage2.num_prefix_tokens == 5
    assert model.stage1.backbone.no_embed_class
    with torch.no_grad():
        out = model(torch.randn(1, 3, 518, 518))
    assert out.logits.shape == (1, 2) and torch.isfinite(out.logits).all()
    assert out.part_maps.shape == (1, 9, 37, 37)
    # §1.7: two ViT-B/14 @518 backbones (86,582,016 each) + heads for K=8, C=2
    expected = 2 * 86_582_016 + 9 * 768 + 2 * 768 * 9 + 768 * 2 + 1536 + 768 * 2
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("variant", ["two_stage_hard", "two_stage_soft", "stage1_only"])
def test_classify_of_encoded_parts_equals_forward(variant):
    # evaluation encodes a batch once and classifies it under every intervention setting
    model = tiny_model(variant).eval()
    x = images(3)
    with torch.no_grad():
        parts = model.encode_parts(x)
        for interventions in (None, Interventions(part_ids_to_remove=(0,))):
            split = model.classify(x, parts, interventions)
            whole = model(x, interventions=interventions)
            for field in ("logits", "stage1_logits", "part_maps", "hard_mask", "part_features"):
                assert torch.equal(getattr(split, field), getattr(whole, field)), field


def test_classify_reuses_stage2_logits_of_images_whose_mask_is_unchanged(monkeypatch):
    model = tiny_model(seed=3).eval()
    x = images(8)
    with torch.no_grad():
        parts = model.encode_parts(x)
        plain = model.classify(x, parts)
        for part in range(NUM_PARTS):  # a part that some images use and others do not
            removal = Interventions(part_ids_to_remove=(part,))
            expected = model.classify(x, parts, removal)
            changed = (expected.hard_mask != plain.hard_mask).any(1)
            if changed.any() and not changed.all():
                break
        else:
            pytest.fail("every part is used by all images or none: no partial change to test")
        seen = []
        stage2_forward = model.stage2.forward
        monkeypatch.setattr(
            model.stage2, "forward", lambda im, *a, **k: seen.append(len(im)) or stage2_forward(im, *a, **k)
        )
        reused = model.classify(x, parts, removal, reuse=plain)
    assert seen == [int(changed.sum())]  # stage 2 ran on the changed images only
    assert torch.equal(reused.logits[~changed], plain.logits[~changed])
    torch.testing.assert_close(reused.logits, expected.logits, atol=1e-5, rtol=0)
    assert torch.equal(reused.hard_mask, expected.hard_mask)
    with pytest.raises(ValueError, match="evaluation-only"):
        model.train().classify(x, parts, reuse=plain)
