"""Stage 2: a second ViT whose every block attends only to the prefix tokens and the foreground tokens (§1.4).

Execution paths (all give the class token the same value for a hard mask; tests hold them to float tolerance):

- ``dense`` (the reference): all tokens stay in the sequence; a boolean key mask [B,1,1,N] (prefix +
  foreground = True) goes through timm's native ``attn_mask`` in every block. Background tokens are still
  processed as queries but no token ever attends to them.
- ``packed`` (§10.9, the fast path, training and evaluation): positions are added first, then each image's
  prefix + foreground tokens are gathered (in sequence order). The images are sorted by kept count and cut
  into groups of at most ``pack_group_size``; each group is padded to its own largest count (one outlier
  image no longer pads the whole batch) and the padding slots are masked as keys. Nothing attends to a
  dropped token in either path, so dropping them is exact.
- soft masks (ablation): additive bias ``log(m + 1e-10)`` on the keys, dense only (every token keeps a
  weight).
- straight-through (``mask_grad: ste``, §10.1): dense, non-fused attention. The attention probabilities are
  the hard-masked softmax plus ``r - r.detach()`` where ``r = renorm(softmax(scores) * m_ste)``: the forward
  value is exactly the hard-masked attention, the scores get the exact gradient, and the mask gets the
  surrogate gradient of "multiply the attention weights by m_ste and renormalise" (non-zero for kept and
  dropped keys alike).

The prefix tokens are always attendable, so an image with an empty foreground still has a well-defined output.
Head: final norm -> class token -> new ``fc_norm`` LayerNorm -> bias-free linear head (trunc-normal 0.02).
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from hardmask.models.backbone import (
    BackboneError,
    ParamRole,
    attention_dtype,
    backbone_roles,
    embed_tokens,
    prepare_backbone,
    run_blocks,
)

Stage2Impl = Literal["packed", "dense"]
SOFT_MASK_EPS = 1e-10  # the reference's log(m + 1e-10): about -23 for a zero mask
PACK_GROUP_SIZE = 32  # packed path: at most this many images share one padded length (see length_groups)


class MaskedViT(nn.Module):
    """Stage 2 (also the oracle-mask model's network)."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        *,
        impl: Stage2Impl = "packed",
        pack_group_size: int = PACK_GROUP_SIZE,
    ) -> None:
        super().__init__()
        if impl not in ("packed", "dense"):
            raise ValueError(f"model.stage2_impl: expected 'packed' or 'dense', got {impl!r}")
        if pack_group_size < 1:
            raise ValueError(f"stage 2: pack_group_size must be >= 1, got {pack_group_size}")
        self.backbone = prepare_backbone(backbone, "stage 2")
        dim = backbone.embed_dim
        self.impl: Stage2Impl = impl  # mutable on purpose: benchmarks and tests switch paths on one model
        self.pack_group_size = pack_group_size  # packed path: images per padded group (sorted by kept count)
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes, bias=False)
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    @property
    def num_prefix_tokens(self) -> int:
        return self.backbone.num_prefix_tokens

    def parameter_roles(self, prefix: str = "") -> dict[str, ParamRole]:
        roles = backbone_roles(self.backbone, prefix + "backbone.", stage=2)
        for module_name in ("fc_norm", "head"):
            module = getattr(self, module_name)
            roles.update({f"{prefix}{module_name}.{n}": "stage2_head" for n, _ in module.named_parameters()})
        return roles

    # ------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        images: Tensor,
        hard_mask: Tensor | None = None,
        *,
        soft_mask: Tensor | None = None,
        ste_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits [B,C] of ``images`` [B,3,H,W] seen through a patch mask [B,h*w].

        Exactly one of ``hard_mask`` (bool, True = foreground) and ``soft_mask`` (float in [0,1]) is given.
        ``ste_mask`` (value == hard_mask, with a gradient) selects the straight-through path while grad is
        enabled.
        """
        if (hard_mask is None) == (soft_mask is None):
            raise ValueError("stage 2: pass exactly one of hard_mask and soft_mask")
        tokens = embed_tokens(self.backbone, images)  # [B,P+h*w,D], positions already added
        patch_mask = hard_mask if hard_mask is not None else soft_mask
        expected = tokens.shape[1] - self.num_prefix_tokens
        if patch_mask.shape != (tokens.shape[0], expected):
            raise ValueError(
                f"stage 2: patch mask of shape {tuple(patch_mask.shape)} does not match the token grid "
                f"(expected [{tokens.shape[0]}, {expected}])"
            )
        if soft_mask is not None:
            class_token = self._forward_soft(tokens, soft_mask)
        elif ste_mask is not None and torch.is_grad_enabled():
            class_token = self._forward_straight_through(tokens, hard_mask, ste_mask)
        elif self.impl == "dense":
            class_token = self._forward_dense(tokens, hard_mask)
        else:
            class_token = self._forward_packed(tokens, hard_mask)
        return self.head(self.fc_norm(class_token))

    def _with_prefix(self, patch_values: Tensor) -> Tensor:
        """[B,h*w] -> [B,P+h*w] with the prefix tokens set to one / True (always attendable, full weight)."""
        # new_ones, not new_full(..., True): TorchScript's tracer cannot record new_full with a bool fill
        prefix = patch_values.new_ones((patch_values.shape[0], self.num_prefix_tokens))
        return torch.cat([prefix, patch_values], dim=1)

    # Each path returns the final-norm class token [B,D] (the first prefix token).
    def _forward_dense(self, tokens: Tensor, hard_mask: Tensor) -> Tensor:
        key_mask = self._with_prefix(hard_mask.bool())[:, None, None, :]  # [B,1,1,N], True = attend
        return run_blocks(self.backbone, tokens, key_mask)[:, 0]

    def _forward_packed(self, tokens: Tensor, hard_mask: Tensor) -> Tensor:
        batch, num_tokens, dim = tokens.shape
        keep = self._with_prefix(hard_mask.bool())  # [B,N]
        kept_counts = keep.sum(dim=1)  # [B]
        # images shortest first, so that each group pads to a length close to its own images' counts
        by_length = kept_counts.argsort(stable=True)  # [B]
        sorted_counts = kept_counts[by_length]  # [B]
        counts = sorted_counts.tolist()  # the one host sync of the path
        # a stable sort on "dropped?" lists the kept tokens first, in sequence order (class token first)
        token_order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # [B,N]
        flat_tokens = tokens.reshape(batch * num_tokens, dim)
        class_tokens = []
        for group in length_groups(counts, self.pack_group_size):
            image_ids, length = by_length[group], counts[group.stop - 1]  # [n], the group's longest count
            rows = image_ids[:, None] * num_tokens + token_order[image_ids, :length]  # [n,L] into flat_tokens
            packed = flat_tokens[rows]  # [n,L,D]: one gather
            if counts[group.start] == length:
                packed = run_blocks(self.backbone, packed)  # no padding: plain (fastest) attention
            else:  # slots past an image's kept count hold dropped tokens; they are masked as keys
                valid = torch.arange(length, device=tokens.device) < sorted_counts[group, None]  # [n,L]
                packed = run_blocks(self.backbone, packed, valid[:, None, None, :])
            class_tokens.append(packed[:, 0])
        return torch.cat(class_tokens)[by_length.argsort()]  # [B,D], back in batch order

    def _forward_soft(self, tokens: Tensor, soft_mask: Tensor) -> Tensor:
        weights = self._with_prefix(soft_mask)  # [B,N]
        bias = torch.log(weights + SOFT_MASK_EPS).to(attention_dtype(tokens))[:, None, None, :]  # [B,1,1,N]
        return run_blocks(self.backbone, tokens, bias)[:, 0]

    def _forward_straight_through(self, tokens: Tensor, hard_mask: Tensor, ste_mask: Tensor) -> Tensor:
        key_keep = self._with_prefix(hard_mask.bool())  # [B,N]
        key_weight = self._with_prefix(ste_mask)  # [B,N], value == key_keep
        for block in self.backbone.blocks:
            tokens = _straight_through_block(block, tokens, key_keep, key_weight)
        return self.backbone.norm(tokens)[:, 0]


def length_groups(sorted_counts: list[int], group_size: int) -> list[slice]:
    """Consecutive groups of images sorted by kept count, each padded to its own longest image.

    Near-equal groups of at most ``group_size`` images (smaller groups pad less, larger ones make larger
    matrix products); neighbours whose longest counts are equal are merged, as splitting them saves nothing.
    """
    total = len(sorted_counts)
    num_groups = max(1, -(-total // group_size))  # ceil
    bounds = [round(i * total / num_groups) for i in range(num_groups + 1)]
    groups = [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]
    merged = groups[:1]
    for group in groups[1:]:
        if sorted_counts[merged[-1].stop - 1] == sorted_counts[group.stop - 1]:
            merged[-1] = slice(merged[-1].start, group.stop)
        else:
            merged.append(group)
    return merged


def _straight_through_block(block: nn.Module, x: Tensor, key_keep: Tensor, key_weight: Tensor) -> Tensor:
    """timm ``Block.forward`` with the attention replaced by :func:`_straight_through_attention`."""
    if type(block) is not Block or not isinstance(block.attn, Attention):
        raise BackboneError(
            f"model.mask_grad=ste needs timm's standard Block/Attention, got {type(block).__name__}/"
            f"{type(getattr(block, 'attn', None)).__name__}; use mask_grad=none with this backbone"
        )
    x = x + block.drop_path1(
        block.ls1(_straight_through_attention(block.attn, block.norm1(x), key_keep, key_weight))
    )
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _straight_through_attention(attn: Attention, x: Tensor, key_keep: Tensor, key_weight: Tensor) -> Tensor:
    """timm ``Attention.forward`` (non-fused) with hard key masking and a straight-through mask gradient."""
    batch, length, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B,H,N,d] each
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)  # [B,H,N,N]
    masked_scores = scores.masked_fill(~key_keep[:, None, None, :], float("-inf"))  # exact hard masking
    probs = masked_scores.softmax(dim=-1)
    # surrogate r = renorm(softmax(scores) * m_ste); scores detached so they keep exactly the masked gradient
    weighted = scores.detach().softmax(dim=-1) * key_weight[:, None, None, :].to(scores.dtype)
    surrogate = weighted / weighted.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    probs = probs + (surrogate - surrogate.detach())  # + exact zero in the forward pass
    out = attn.attn_drop(probs) @ v  # [B,H,N,d]
    out = out.transpose(1, 2).reshape(batch, length, attn.num_heads * attn.head_dim)
    out = getattr(attn, "norm", nn.Identity())(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))
