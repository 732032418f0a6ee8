"""The patch mask: argmax at eval, Gumbel + whole-part dropout in training, straight-through, oracle."""

from __future__ import annotations

import math

import pytest
import torch

from hardmask.models import oracle_patch_mask, sample_patch_mask


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """[N tokens][K+1] probabilities -> logits [1,K+1,1,N]."""
    return torch.tensor(probs).log().T[None, :, None, :]


def test_eval_mask_is_argmax_is_foreground_and_soft_is_max_fg_probability():
    logits = logits_of([[0.5, 0.2, 0.3], [0.2, 0.2, 0.6], [0.1, 0.45, 0.45]])  # K=2, bg last
    mask = sample_patch_mask(logits, tau=1.0, part_dropout=0.3, training=False, stochastic=False)
    assert mask.hard.tolist() == [
        [True, False, True]
    ]  # third token: a tie goes to foreground (reference argmax)
    torch.testing.assert_close(mask.soft, torch.tensor([[0.5, 0.2, 0.45]]))
    assert mask.ste is None


def test_eval_mask_with_all_foreground_logits_minus_inf_is_empty():
    logits = torch.full((2, 4, 3, 3), float("-inf"))
    logits[:, -1] = 0.0
    mask = sample_patch_mask(logits, tau=1.0, part_dropout=0.0, training=False, stochastic=False)
    assert not mask.hard.any() and torch.isfinite(mask.soft).all()


def test_training_part_dropout_drops_whole_parts_without_renormalising():
    torch.manual_seed(0)
    # every token: part 0 wins by far, background is the runner-up -> without part 0 the token is background
    logits = torch.tensor([0.0, -30.0, -10.0])[None, :, None, None].expand(512, 3, 2, 2).contiguous()
    mask = sample_patch_mask(logits, tau=1.0, part_dropout=0.5, training=True, stochastic=True)
    per_image = mask.hard.view(512, 4)
    assert ((per_image.all(1)) | (~per_image.any(1))).all()  # a dropped part takes all its tokens at once
    assert per_image.all(1).float().mean().item() == pytest.approx(0.5, abs=0.08)


def test_surviving_parts_keep_their_probabilities():
    torch.manual_seed(1)
    logits = torch.tensor([0.6, 0.1, 0.3]).log()[None, :, None, None].expand(256, 3, 1, 1).contiguous()
    mask = sample_patch_mask(logits, tau=1.0, part_dropout=0.5, training=True, stochastic=False)
    # no noise: part 0 survives with 0.6 (unscaled) or is dropped leaving part 1 (0.1) or nothing (0.0)
    soft = mask.soft.flatten()
    allowed = torch.tensor([0.6, 0.1, 0.0])
    assert torch.isclose(soft[:, None], allowed[None, :]).any(1).all()
    assert torch.isclose(soft, torch.tensor(0.6)).any() and (soft == 0).any()  # both outcomes occur
    assert torch.equal(mask.hard.flatten(), soft > 0.3)


def test_straight_through_value_is_hard_mask_and_carries_gradient():
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    mask = sample_patch_mask(
        logits, tau=1.0, part_dropout=0.3, training=True, stochastic=True, straight_through=True
    )
    assert torch.equal(mask.ste.detach(), mask.hard.float())
    (mask.ste * torch.randn_like(mask.ste)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_stochastic_sampling_uses_gumbel_noise():
    logits = torch.zeros(1, 3, 8, 8)
    a = sample_patch_mask(logits, tau=1.0, part_dropout=0.0, training=False, stochastic=True)
    b = sample_patch_mask(logits, tau=1.0, part_dropout=0.0, training=False, stochastic=True)
    assert not torch.equal(a.soft, b.soft)
    assert 0 < a.hard.float().mean() < 1  # fg wins with prob 2/3 per token


def test_oracle_patch_mask_uses_the_pixel_share_per_patch():
    fg = torch.zeros(1, 4, 4)
    fg[0, :2, :2] = 1  # patch (0,0) fully foreground
    fg[0, 0, 2] = 1  # patch (0,1): 1/4
    fg[0, 2:, 2:] = torch.tensor([[1, 1], [0, 0]])  # patch (1,1): 1/2
    assert oracle_patch_mask(fg, (2, 2), 0.5).tolist() == [[True, False, False, True]]
    assert oracle_patch_mask(fg, (2, 2), 0.25).tolist() == [[True, True, False, True]]
    assert oracle_patch_mask(fg, (2, 2), 1.0).tolist() == [[True, False, False, False]]


def test_oracle_patch_mask_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"pixel mask \[B,H,W\]"):
        oracle_patch_mask(torch.zeros(1, 1, 4, 4), (2, 2), 0.5)


def test_gumbel_mask_matches_reference_frequency():
    # P(argmax of logits + Gumbel is foreground) = sum of fg softmax probabilities (Gumbel-max trick)
    torch.manual_seed(4)
    logits = torch.tensor([0.2, 0.1, 0.7]).log()[None, :, None, None].expand(1, 3, 100, 100).contiguous()
    mask = sample_patch_mask(logits, tau=1.0, part_dropout=0.0, training=False, stochastic=True)
    assert mask.hard.float().mean().item() == pytest.approx(0.3, abs=3 * math.sqrt(0.21 / 1e4))
