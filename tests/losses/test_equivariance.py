"""Equivariance loss: transform sampling, the inverse warp's direction, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hardmask.losses import (
    SimilarityTransform,
    equivariance_loss,
    sample_similarity_transform,
    unwarp_maps,
    warp_images,
)

IMAGE = 64
PATCH = 4  # maps on a 16 x 16 grid


def blob_image() -> torch.Tensor:
    """[1,1,64,64]: an off-centre, asymmetric bright blob (so rotations and shifts are visible)."""
    image = torch.zeros(1, 1, IMAGE, IMAGE)
    image[..., 20:36, 24:32] = 1.0
    image[..., 20:26, 32:40] = 1.0
    return image


def maps_of(image: torch.Tensor) -> torch.Tensor:
    """A perfectly equivariant 'stage 1': the foreground map is the pooled image, background the rest."""
    fg = F.avg_pool2d(image, PATCH)  # [B,1,16,16]
    return torch.cat([fg, 1 - fg], dim=1)


def test_sampled_transforms_respect_the_configured_ranges_and_the_generator():
    g = torch.Generator().manual_seed(0)
    draws = [sample_similarity_transform(90.0, 0.11, (0.8, 1.4), (IMAGE, IMAGE), g) for _ in range(200)]
    assert all(-90 <= t.angle <= 90 for t in draws)
    assert all(isinstance(c, int) and abs(c) <= round(0.11 * IMAGE) for t in draws for c in t.translate)
    assert all(0.8 <= t.scale <= 1.4 for t in draws)
    assert max(t.angle for t in draws) > 60 and min(t.angle for t in draws) < -60
    again = sample_similarity_transform(
        90.0, 0.11, (0.8, 1.4), (IMAGE, IMAGE), torch.Generator().manual_seed(0)
    )
    assert again == draws[0]


def test_identity_transform_gives_zero_loss():
    maps = torch.rand(2, 4, 8, 8).softmax(1)
    identity = SimilarityTransform(angle=0.0, translate=(0, 0), scale=1.0)
    assert equivariance_loss(maps, maps, identity, (32, 32)).item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_values_for_disjoint_and_half_overlapping_parts():
    identity = SimilarityTransform(angle=0.0, translate=(0, 0), scale=1.0)
    left, right, top = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    left[..., :, :2], right[..., :, 2:], top[..., :2, :] = 1, 1, 1

    def maps(fg):
        return torch.cat([fg, 1 - fg], 1)

    assert equivariance_loss(maps(left), maps(right), identity, (16, 16)).item() == pytest.approx(1.0)
    # left and top halves share a quarter: cos = 4 / (sqrt(8) * sqrt(8)) = 1/2
    assert equivariance_loss(maps(left), maps(top), identity, (16, 16)).item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "transform",
    [
        SimilarityTransform(angle=90.0, translate=(0, 0), scale=1.0),
        SimilarityTransform(angle=-35.0, translate=(4, -8), scale=1.0),
        SimilarityTransform(angle=20.0, translate=(-4, 4), scale=1.2),
    ],
)
def test_equivariant_maps_score_near_zero_and_the_wrong_inverse_does_not(transform):
    image = blob_image()
    maps = maps_of(image)
    maps_of_warped = maps_of(warp_images(image, transform))
    loss = equivariance_loss(maps, maps_of_warped, transform, (IMAGE, IMAGE)).item()
    assert loss < 0.08
    # the un-warp must invert the warp: misreading any component's direction scores badly
    angle, (tx, ty), scale = transform.angle, transform.translate, transform.scale
    wrong = [SimilarityTransform(-angle, (tx, ty), scale)]
    if tx or ty:
        wrong.append(SimilarityTransform(angle, (-tx, -ty), scale))
    if scale != 1.0:
        wrong.append(SimilarityTransform(angle, (tx, ty), 1 / scale))
    for misread in wrong:
        assert equivariance_loss(maps, maps_of_warped, misread, (IMAGE, IMAGE)).item() > loss + 0.2, misread


def test_unwarp_is_nearest_neighbour_and_keeps_values():
    maps = torch.zeros(1, 2, 16, 16)
    maps[0, 0, 5:9, 6:10] = 0.5
    restored = unwarp_maps(maps, SimilarityTransform(angle=30.0, translate=(8, 4), scale=1.3), (IMAGE, IMAGE))
    assert set(restored.unique().tolist()) == {0.0, 0.5}  # no interpolated values


def test_background_channel_is_ignored_and_gradients_are_finite():
    maps = torch.rand(2, 3, 8, 8).softmax(1).requires_grad_()
    other = maps.detach().clone()
    other[:, -1] = torch.rand(2, 8, 8)  # only the background differs
    identity = SimilarityTransform(angle=0.0, translate=(0, 0), scale=1.0)
    assert equivariance_loss(maps, other, identity, (32, 32)).item() == pytest.approx(0.0, abs=1e-6)
    warped = torch.rand(2, 3, 8, 8).softmax(1).requires_grad_()
    loss = equivariance_loss(maps, warped, SimilarityTransform(30.0, (4, 0), 1.1), (32, 32))
    loss.backward()
    assert 0 < loss.item() <= 2
    assert (
        torch.isfinite(maps.grad).all() and torch.isfinite(warped.grad).all() and warped.grad.abs().sum() > 0
    )


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="differ in shape"):
        equivariance_loss(
            torch.rand(1, 3, 4, 4), torch.rand(1, 3, 5, 5), SimilarityTransform(0, (0, 0), 1), (16, 16)
        )
