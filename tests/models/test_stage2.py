"""Stage 2: faithfulness of hard masks, packed == dense, empty masks, soft masks, the mask gradient switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.models.tiny import GRID, images, pixel_mask_of, tiny_model

NUM_TOKENS = GRID * GRID
# per-image foreground shares: empty, full, tiny, half, most, a third -> very different kept counts
SHARES = torch.tensor([0.0, 1.0, 0.1, 0.5, 0.9, 0.3])


def varied_mask(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(SHARES), NUM_TOKENS, generator=g) < SHARES[:, None]
    mask[0], mask[1] = False, True  # exactly all-background and all-foreground images
    return mask


def run_impl(model, impl: str, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """Logits and parameter gradients of one forward/backward with a fixed mask (same RNG for both paths)."""
    model.zero_grad(set_to_none=True)
    model.stage2.impl = impl
    torch.manual_seed(123)
    out = model(x, patch_mask=mask)
    (F.cross_entropy(out.logits, labels) + F.cross_entropy(out.stage1_logits, labels)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_and_dense_agree_on_logits_and_gradients(mode):
    model = tiny_model()
    getattr(model, mode)()
    x, mask = images(len(SHARES)), varied_mask()
    labels = torch.arange(len(SHARES)) % 3
    dense_logits, dense_grads = run_impl(model, "dense", x, mask, labels)
    packed_logits, packed_grads = run_impl(model, "packed", x, mask, labels)
    torch.testing.assert_close(packed_logits, dense_logits, atol=1e-5, rtol=0)
    assert dense_grads.keys() == packed_grads.keys()
    assert any(n.startswith("stage2.backbone.blocks") for n in dense_grads)
    for name, grad in dense_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (packed_grads[name] - grad).abs().max() / scale < 1e-4, name


def test_packed_and_dense_agree_with_the_sampled_mask_in_training():
    model = tiny_model().train()
    x = images(4)
    outs = {}
    for impl in ("dense", "packed"):
        model.stage2.impl = impl
        torch.manual_seed(7)  # same Gumbel noise and part dropout for both
        outs[impl] = model(x)
    assert torch.equal(outs["dense"].hard_mask, outs["packed"].hard_mask)
    torch.testing.assert_close(outs["packed"].logits, outs["dense"].logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["dense", "packed"])
def test_hard_mask_is_faithful_changing_masked_out_pixels_leaves_logits_bit_identical(impl):
    model = tiny_model().eval()
    model.stage2.impl = impl
    x, mask = images(len(SHARES)), varied_mask(1)
    noise = 5 * torch.randn_like(x)
    x_changed = torch.where(pixel_mask_of(mask)[:, None], x, noise)  # every masked-out pixel replaced
    assert not torch.equal(x, x_changed)
    with torch.no_grad():
        before, after = model(x, patch_mask=mask).logits, model(x_changed, patch_mask=mask).logits
    assert torch.equal(before, after)
    # ... while changing a kept pixel does change them
    x_kept_changed = torch.where(pixel_mask_of(mask)[:, None], noise, x)
    with torch.no_grad():
        changed = model(x_kept_changed, patch_mask=mask).logits
    assert not torch.equal(before[1:], changed[1:])  # image 0 keeps nothing


def test_soft_mask_is_not_faithful():
    model = tiny_model("two_stage_soft").eval()
    x, hard = images(len(SHARES)), varied_mask(1)
    soft = torch.where(hard, 0.9, 0.2)  # a soft mask that ranks the same tokens first
    x_changed = torch.where(pixel_mask_of(hard)[:, None], x, 5 * torch.randn_like(x))
    with torch.no_grad():
        before, after = model(x, patch_mask=soft).logits, model(x_changed, patch_mask=soft).logits
    assert not torch.allclose(before, after)


def test_empty_foreground_is_finite_and_depends_on_prefix_tokens_only():
    model = tiny_model().eval()
    empty = torch.zeros(2, NUM_TOKENS, dtype=torch.bool)
    for impl in ("dense", "packed"):
        model.stage2.impl = impl
        with torch.no_grad():
            logits = model(images(2), patch_mask=empty).logits
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits[0], logits[1])  # nothing of either image is visible


def test_soft_mask_uses_log_bias_and_a_zero_mask_is_finite():
    model = tiny_model("two_stage_soft").eval()
    with torch.no_grad():
        logits = model(images(2), patch_mask=torch.zeros(2, NUM_TOKENS)).logits
        near_hard = model(images(2), patch_mask=torch.ones(2, NUM_TOKENS)).logits
        model.stage2.impl = "dense"
        full = model.stage2(images(2), torch.ones(2, NUM_TOKENS, dtype=torch.bool))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(near_hard, full, atol=1e-5, rtol=0)  # log(1 + 1e-10) == 0


def test_mask_grad_none_gives_stage1_exactly_zero_gradient_from_stage2_loss():
    for impl in ("dense", "packed"):
        model = tiny_model(stage2_impl=impl).train()
        out = model(images(4))
        F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 0])).backward()
        stage1_grads = [p.grad for p in model.stage1.parameters()]
        assert all(g is None or not g.any() for g in stage1_grads)
        assert any(p.grad is not None and p.grad.any() for p in model.stage2.parameters())


def test_mask_grad_ste_keeps_the_forward_and_reaches_stage1():
    model = tiny_model().train()
    x, labels = images(4), torch.tensor([0, 1, 2, 0])
    outs = {}
    for mask_grad in ("none", "ste"):
        model.mask_grad = mask_grad
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        outs[mask_grad] = model(x)
        F.cross_entropy(outs[mask_grad].logits, labels).backward()
    assert torch.equal(outs["none"].hard_mask, outs["ste"].hard_mask)
    assert 0 < outs["ste"].hard_mask.float().mean() < 1
    torch.testing.assert_close(outs["ste"].logits, outs["none"].logits, atol=1e-5, rtol=0)
    prototype_grad = model.stage1.fc_landmarks.weight.grad
    assert prototype_grad is not None and prototype_grad.abs().sum() > 0
    backbone_grads = [p.grad for p in model.stage1.backbone.parameters()]
    assert all(g is None or torch.isfinite(g).all() for g in backbone_grads)


def test_mask_grad_ste_attention_equals_hard_masked_attention_exactly():
    # the straight-through term adds an exact zero: compare against timm's non-fused masked softmax
    from hardmask.models.stage2 import _straight_through_attention

    model = tiny_model()
    attn = model.stage2.backbone.blocks[0].attn
    torch.manual_seed(0)
    x = torch.randn(2, 5 + 3, 32)
    keep = torch.rand(2, 8) < 0.5
    keep[:, 0] = True
    ste = keep.float().requires_grad_()
    out = _straight_through_attention(attn, x, keep, ste)
    fused = attn.fused_attn
    try:
        attn.fused_attn = False
        reference = attn(x, attn_mask=keep[:, None, None, :])
    finally:
        attn.fused_attn = fused
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)
    out.square().sum().backward()
    assert ste.grad[~keep].abs().sum() > 0  # dropped keys get a surrogate gradient too


def test_patch_mask_of_wrong_shape_is_rejected():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"patch_mask: expected shape \(2, 16\)"):
        model(images(2), patch_mask=torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly one of hard_mask and soft_mask"):
        model.stage2(images(2))


def test_length_groups_cut_sorted_images_into_near_equal_groups():
    from hardmask.models.stage2 import length_groups

    assert length_groups([1, 2, 3, 5, 8, 8, 9], 3) == [slice(0, 2), slice(2, 5), slice(5, 7)]
    assert length_groups([4, 6, 7], 8) == [slice(0, 3)]  # fewer images than a group: one group
    assert length_groups([5, 5, 5, 5, 9, 9], 2) == [slice(0, 4), slice(4, 6)]  # equal longest counts merge


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_groups_pad_to_their_own_longest_image_and_still_equal_dense(mode, monkeypatch):
    import hardmask.models.stage2 as stage2_module

    model = tiny_model()
    getattr(model, mode)()
    model.stage2.pack_group_size = 2
    x, mask = images(len(SHARES)), varied_mask()
    labels = torch.arange(len(SHARES)) % 3
    dense_logits, dense_grads = run_impl(model, "dense", x, mask, labels)
    lengths = []
    run_blocks = stage2_module.run_blocks
    monkeypatch.setattr(
        stage2_module,
        "run_blocks",
        lambda vit, t, m=None: lengths.append(t.shape[:2]) or run_blocks(vit, t, m),
    )
    packed_logits, packed_grads = run_impl(model, "packed", x, mask, labels)
    prefix = model.stage2.num_prefix_tokens
    kept = sorted(int(n) + prefix for n in mask.sum(1))  # 6 images -> 3 groups of 2, shortest first
    assert lengths == [(2, kept[1]), (2, kept[3]), (2, kept[5])]
    torch.testing.assert_close(packed_logits, dense_logits, atol=1e-5, rtol=0)
    for name, grad in dense_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (packed_grads[name] - grad).abs().max() / scale < 1e-4, name
