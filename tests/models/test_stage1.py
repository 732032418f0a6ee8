"""Stage 1: prototype scores, part maps, part features and part classifier against brute-force definitions."""

from __future__ import annotations

import pytest
import torch

from tests.models.tiny import GRID, NUM_CLASSES, NUM_PARTS, images, tiny_model


@pytest.fixture
def stage1():
    return tiny_model("stage1_only").stage1


def test_part_logits_are_negative_squared_distances_and_sims_dot_products(stage1):
    x = images(2)
    scores = stage1.part_scores(x)
    tokens = stage1.backbone.forward_features(x)[:, stage1.backbone.num_prefix_tokens :]  # [B,16,D]
    prototypes = stage1.fc_landmarks.weight.flatten(1)  # [K+1,D]
    expected = -torch.cdist(tokens, prototypes).square()  # [B,16,K+1]
    assert scores.part_logits.shape == (2, NUM_PARTS + 1, GRID, GRID)
    torch.testing.assert_close(scores.part_logits.flatten(2).transpose(1, 2), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores.part_sims.flatten(2).transpose(1, 2), tokens @ prototypes.T)


def test_eval_is_deterministic_softmax_whose_argmax_is_the_logits_argmax(stage1):
    stage1.eval()
    x = images(2)
    first, second = stage1(x), stage1(x)
    torch.testing.assert_close(first.part_maps, second.part_maps, rtol=0, atol=0)
    torch.testing.assert_close(first.part_maps, (first.part_logits / stage1.tau).softmax(1))
    assert torch.equal(first.part_maps.argmax(1), first.part_logits.argmax(1))


def test_training_maps_are_gumbel_samples(stage1):
    stage1.train()
    x = images(2)
    a, b = stage1(x).part_maps, stage1(x).part_maps
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a.sum(1), torch.ones_like(a[:, 0]))


def test_stochastic_eval_reproduces_noisy_reference_evaluation():
    stage1 = tiny_model("stage1_only", stochastic_eval=True).stage1.eval()
    x = images(2)
    assert not torch.allclose(stage1(x).part_maps, stage1(x).part_maps)


def test_part_features_are_map_weighted_means_then_layer_norm(stage1):
    stage1.eval()
    x = images(2)
    out = stage1(x)
    tokens = stage1.backbone.forward_features(x)[:, stage1.backbone.num_prefix_tokens :]  # [B,16,D]
    maps = out.part_maps.flatten(2)  # [B,K+1,16]
    brute = (maps[:, None, :, :] * tokens.transpose(1, 2)[:, :, None, :]).mean(-1)  # [B,D,K+1,16] -> mean
    torch.testing.assert_close(out.part_features, stage1.modulation(brute), atol=1e-5, rtol=1e-5)
    assert out.part_features.shape == (2, stage1.backbone.embed_dim, NUM_PARTS + 1)


def test_stage1_logits_average_the_shared_head_over_foreground_parts(stage1):
    stage1.eval()  # no part dropout
    out = stage1(images(2))
    per_part = stage1.fc_class_landmarks(out.part_features[..., :NUM_PARTS].transpose(1, 2))  # [B,K,C]
    torch.testing.assert_close(out.logits, per_part.mean(1))
    assert out.logits.shape == (2, NUM_CLASSES)
    assert stage1.fc_class_landmarks.bias is None and stage1.fc_landmarks.bias is None


def test_part_dropout_zeroes_whole_parts_in_training():
    stage1 = tiny_model("stage1_only", part_dropout=0.5).stage1.train()
    torch.manual_seed(3)
    fg = stage1.modulation(torch.randn(64, stage1.backbone.embed_dim, NUM_PARTS + 1))[..., :NUM_PARTS]
    dropped = stage1.part_dropout(fg.transpose(1, 2))  # [B,K,D]
    zero_rows = (dropped == 0).all(-1)
    assert zero_rows.any() and not zero_rows.all()
    kept = ~zero_rows
    torch.testing.assert_close(dropped[kept], fg.transpose(1, 2)[kept] * 2)  # survivors scaled by 1/(1-p)


def shuffle_patches(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Images [B,3,H,W] with their PATCH x PATCH blocks rearranged: new block i is old block order[i]."""
    from tests.models.tiny import PATCH

    blocks = x.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # [B,3,G,G,P,P]
    blocks = blocks.flatten(2, 3)[:, :, order].unflatten(2, (GRID, GRID))  # [B,3,G,G,P,P]
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(x.shape)


@pytest.mark.parametrize("position_free", [True, False])
def test_position_free_stage1_assigns_parts_by_content_not_place(position_free):
    stage1 = tiny_model("stage1_only", stage1_position_free=position_free).stage1.eval()
    names = {name for name, _ in stage1.named_parameters()}
    assert ("backbone.pos_embed" not in names) == position_free  # nothing to train, freeze or decay
    x = images(2)
    order = torch.randperm(GRID * GRID, generator=torch.Generator().manual_seed(0))
    logits = stage1.part_scores(x).part_logits.flatten(2)  # [B,K+1,G*G]
    moved = stage1.part_scores(shuffle_patches(x, order)).part_logits.flatten(2)
    # without positions, moving the patches moves their part scores with them, unchanged
    assert torch.allclose(moved, logits[:, :, order], atol=1e-4) == position_free
    # ... and stage 1's class logits do not change at all: it classifies a bag of patches, blind to the
    # arrangement that makes a shape (why its classification loss stays at chance on the benchmark)
    same_class_logits = torch.allclose(stage1(shuffle_patches(x, order)).logits, stage1(x).logits, atol=1e-5)
    assert same_class_logits == position_free


def test_position_free_stage1_leaves_stage2_its_positions():
    model = tiny_model("two_stage_hard", stage1_position_free=True)
    assert model.stage1.backbone.pos_embed is None
    assert model.stage2.backbone.pos_embed is not None
