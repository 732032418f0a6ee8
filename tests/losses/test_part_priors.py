"""Part-discovery priors: hand-computed values, the configuration each one rewards, finite gradients."""

from __future__ import annotations

import math

import pytest
import torch

from hardmask.losses import (
    border_weight,
    classification_loss,
    concentration_loss,
    enforced_presence_loss,
    foreground_presence_loss,
    orthogonality_loss,
    pixel_entropy_loss,
    presence_loss,
    total_variation_loss,
)


def two_part_maps(fg: torch.Tensor) -> torch.Tensor:
    """Foreground map(s) [B,K,h,w] -> maps [B,K+1,h,w] with the background the remainder (last channel)."""
    return torch.cat([fg, 1 - fg.sum(1, keepdim=True)], dim=1)


def assert_finite_gradient(loss_fn, tensor: torch.Tensor) -> None:
    tensor = tensor.clone().requires_grad_()
    loss_fn(tensor).backward()
    assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


# ------------------------------------------------------------------------------------------------- presence
def test_presence_hand_computed():
    fg = torch.zeros(2, 2, 3, 3)
    fg[0, 0] = 1.0  # part 0 fills image 0
    fg[0, 1], fg[1, 1] = 0.5, 0.25  # part 1 at most half present anywhere in the batch
    fg[1, 0] = 0.0
    assert presence_loss(two_part_maps(fg * 0.5)).item() == pytest.approx(1 - (0.5 + 0.25) / 2)
    assert presence_loss(torch.cat([fg, torch.zeros(2, 1, 3, 3)], 1)).item() == pytest.approx(0.25)


def test_presence_is_zero_when_every_part_fills_a_3x3_block_somewhere_in_the_batch():
    fg = torch.zeros(2, 2, 5, 5)
    fg[0, 0, :3, :3] = 1  # part 0 only in image 0, part 1 only in image 1: the max runs over the batch
    fg[1, 1, 2:, 2:] = 1
    assert presence_loss(two_part_maps(fg)).item() == 0.0
    assert presence_loss(two_part_maps(torch.full((2, 2, 5, 5), 0.3))).item() > 0.5
    assert_finite_gradient(presence_loss, two_part_maps(torch.rand(2, 2, 5, 5) / 2))


def test_presence_needs_a_3x3_grid():
    with pytest.raises(ValueError, match=r"grid \(2, 2\) is smaller than 3x3"):
        presence_loss(torch.rand(1, 3, 2, 2))


# -------------------------------------------------------------------------------------- foreground presence
def test_foreground_presence_hand_computed():
    # 5x5 maps -> 3x3 pooled grid; centre weight 1 - R = [[0, .5, 0], [.5, 1, .5], [0, .5, 0]].
    # image 0: parts 0 and 1 together fill the central 3x3 block -> pooled fg 1 at the centre -> m = 1.
    # image 1: foreground 0.5 everywhere -> pooled 0.5, weighted max 0.5 at the centre -> m = 0.5.
    fg = torch.zeros(2, 2, 5, 5)
    fg[0, 0, 1:4, 1:4], fg[0, 1, 1:4, 1:4] = 0.25, 0.75
    fg[1, 0] = 0.5
    expected = -(math.log(1.0) + math.log(0.5)) / 2
    assert foreground_presence_loss(two_part_maps(fg)).item() == pytest.approx(expected, rel=1e-5)


def test_foreground_presence_asks_every_image_for_an_object_near_its_centre():
    one_object = torch.zeros(2, 1, 5, 5)
    one_object[0, 0, 1:4, 1:4] = 1  # image 1 is all background
    assert presence_loss(two_part_maps(one_object)).item() == 0.0  # the batch-level prior is satisfied
    assert foreground_presence_loss(two_part_maps(one_object)).item() == pytest.approx(50.0)  # log clamp / 2
    both = one_object.clone()
    both[1, 0, 1:4, 1:4] = 1
    assert foreground_presence_loss(two_part_maps(both)).item() == pytest.approx(0.0, abs=1e-6)
    in_a_corner = torch.zeros(2, 1, 5, 5)
    in_a_corner[:, 0, :3, :3] = 1  # a full block where the centre weight is 0; the centre window sees 4/9
    assert foreground_presence_loss(two_part_maps(in_a_corner)).item() == pytest.approx(math.log(9 / 4))
    assert_finite_gradient(foreground_presence_loss, torch.rand(2, 3, 5, 5).softmax(1))


# ---------------------------------------------------------------------------------------- enforced presence
def test_border_weight_is_zero_in_the_centre_and_one_in_the_corners():
    weight = border_weight(3, 3)
    torch.testing.assert_close(weight, torch.tensor([[1.0, 0.5, 1.0], [0.5, 0.0, 0.5], [1.0, 0.5, 1.0]]))


def test_enforced_presence_hand_computed():
    bg = torch.zeros(1, 1, 5, 5)
    bg[0, 0, 2, 2] = 1  # background only in the centre: every 3x3 window sees 1/9, corners weigh 1
    maps = torch.cat([1 - bg, bg], dim=1)
    assert enforced_presence_loss(maps).item() == pytest.approx(math.log(9), rel=1e-5)


def test_enforced_presence_rewards_background_in_a_corner_of_every_image():
    bg = torch.zeros(2, 1, 5, 5)
    bg[0, 0, :3, :3] = 1
    bg[1, 0, 2:, 2:] = 1
    assert enforced_presence_loss(torch.cat([1 - bg, bg], 1)).item() == pytest.approx(0.0, abs=1e-6)
    no_bg = torch.cat([torch.ones(2, 1, 5, 5), torch.zeros(2, 1, 5, 5)], 1)
    assert enforced_presence_loss(no_bg).item() == pytest.approx(100.0)  # log clamped at -100, as BCE
    assert_finite_gradient(enforced_presence_loss, torch.rand(2, 3, 5, 5).softmax(1))


# ------------------------------------------------------------------------------------------ total variation
def test_total_variation_hand_computed():
    fg = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # one step down, one step right, per channel
    assert total_variation_loss(two_part_maps(fg)).item() == pytest.approx((2 + 2) / 4)


def test_total_variation_is_zero_for_constant_maps():
    assert total_variation_loss(torch.full((2, 3, 4, 4), 1 / 3)).item() == 0.0
    assert_finite_gradient(total_variation_loss, torch.rand(2, 3, 4, 4))


# -------------------------------------------------------------------------------------------------- entropy
def test_pixel_entropy_hand_computed_and_zero_for_one_hot_maps():
    assert pixel_entropy_loss(torch.full((1, 4, 2, 2), 0.25)).item() == pytest.approx(math.log(4))
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 4, 4)), 3).permute(0, 3, 1, 2).float()
    assert pixel_entropy_loss(one_hot).item() == pytest.approx(0.0, abs=1e-7)
    assert_finite_gradient(pixel_entropy_loss, one_hot)


# -------------------------------------------------------------------------------------------- concentration
def test_concentration_hand_computed_and_zero_for_a_point():
    fg = torch.zeros(1, 1, 3, 3)
    fg[0, 0, 0, 0] = fg[0, 0, 0, 2] = 0.5  # centroid (0, 1): each point 1/3 off in columns
    # sum of 0.5 * (1/3)^2 twice = 1/9, mean over the 9 foreground positions = 1/81
    assert concentration_loss(two_part_maps(fg)).item() == pytest.approx(1 / 81)
    point = torch.zeros(1, 1, 3, 3)
    point[0, 0, 1, 2] = 1.0
    assert concentration_loss(two_part_maps(point)).item() == pytest.approx(0.0, abs=1e-7)
    assert_finite_gradient(concentration_loss, torch.rand(2, 3, 4, 4).softmax(1))


# -------------------------------------------------------------------------------------------- orthogonality
def test_orthogonality_hand_computed():
    features = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])  # [B=1, D=2, K+1=2]: cosine 1/sqrt(2)
    assert orthogonality_loss(features).item() == pytest.approx((0.5 + 0.5) / 4)


def test_orthogonality_is_zero_for_orthogonal_parts_and_normalises_over_features():
    features = torch.eye(8)[:, :3][None] * torch.tensor([2.0, 5.0, 0.1])  # [1,D=8,3] orthogonal, any length
    assert orthogonality_loss(features).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonality_loss(torch.ones(1, 8, 3)).item() == pytest.approx(6 / 9)  # all parallel
    assert_finite_gradient(orthogonality_loss, torch.randn(2, 8, 3))


# ------------------------------------------------------------------------------------------- classification
def test_classification_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert classification_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    smoothed = classification_loss(logits, torch.tensor([1]), label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(0.9 * -math.log(0.75) + 0.1 * -math.log(0.25))
    assert_finite_gradient(lambda t: classification_loss(t, torch.tensor([0])), logits)


def test_presence_priors_have_finite_gradients_when_the_max_is_zero():
    # 4x4 token grid -> 2x2 after the 3x3 pool: the radial weights are 1 (border) or 0 (centre) everywhere, so
    # the foreground term's max is exactly 0; its gradient must stay finite (it was NaN before)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    maps = logits.softmax(dim=1)
    total = foreground_presence_loss(maps) + enforced_presence_loss(maps)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()
