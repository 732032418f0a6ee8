"""The two-stage model (iFAM): stage 1 finds the parts, stage 2 classifies through the foreground mask (§1).

Data flow of one forward pass (shapes for K parts, grid h x w, D channels, C classes)::

    images [B,3,H,W] -> stage 1 -> part_logits/sims/maps [B,K+1,h,w], part_features [B,D,K+1],
                                   stage1_logits [B,C]
    part_logits -> (interventions, eval only) -> patch mask (own Gumbel draw + part dropout in training)
    images + mask [B,h*w] -> stage 2 (its own ViT, masked in every block) -> logits [B,C]  (the prediction)

The two ViTs share no weights. ``mask_grad="none"`` (default, code-faithful) sends no gradient from stage 2 to
stage 1; ``"ste"`` keeps the forward pass identical and adds a straight-through gradient (§10.1).
``soft_masks`` replaces the hard mask by the max surviving foreground probability as an additive attention
bias (ablation).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from hardmask.models.backbone import ParamRole
from hardmask.models.interventions import Interventions
from hardmask.models.mask import PatchMask, sample_patch_mask
from hardmask.models.outputs import ModelOutput
from hardmask.models.stage1 import PartDiscoveryViT, PartScores
from hardmask.models.stage2 import MaskedViT

MaskGrad = Literal["none", "ste"]


class Stage1Based(nn.Module):
    """What every model built on stage 1 (``self.stage1``) exposes: its patch grid, K, the part maps alone
    and the encoding that no intervention changes."""

    stage1: PartDiscoveryViT

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.stage1.grid_size

    @property
    def num_parts(self) -> int:
        return self.stage1.num_parts

    def stage1_maps(self, images: Tensor) -> Tensor:
        """Part maps [B,K+1,h,w] of ``images`` without running stage 2 (the equivariance pass, §10.10)."""
        return self.stage1.maps(images)

    def encode_parts(self, images: Tensor) -> PartScores:
        """Stage 1's backbone pass and prototype scores [B,K+1,h,w]: everything no intervention changes.

        ``model(images, ...) == model.classify(images, model.encode_parts(images), ...)``; evaluation encodes
        a batch once and classifies it under every intervention setting.
        """
        return self.stage1.part_scores(images)


class TwoStageViT(Stage1Based):
    def __init__(
        self,
        stage1: PartDiscoveryViT,
        stage2: MaskedViT,
        *,
        part_dropout_stage2: float = 0.3,
        mask_grad: MaskGrad = "none",
        soft_masks: bool = False,
    ) -> None:
        super().__init__()
        if mask_grad not in ("none", "ste"):
            raise ValueError(f"model.mask_grad: expected 'none' or 'ste', got {mask_grad!r}")
        stage2_grid = tuple(stage2.backbone.patch_embed.grid_size)
        if stage1.grid_size != stage2_grid:
            raise ValueError(
                f"stage 1 grid {stage1.grid_size} and stage 2 grid {stage2_grid} differ: "
                "both backbones need the same image and patch size"
            )
        self.stage1 = stage1
        self.stage2 = stage2
        self.part_dropout_stage2 = part_dropout_stage2
        self.mask_grad: MaskGrad = mask_grad
        self.soft_masks = soft_masks

    def parameter_roles(self) -> dict[str, ParamRole]:
        return self.stage1.parameter_roles("stage1.") | self.stage2.parameter_roles("stage2.")

    def forward(
        self,
        images: Tensor,
        fg_mask: Tensor | None = None,
        interventions: Interventions | None = None,
        *,
        patch_mask: Tensor | None = None,
    ) -> ModelOutput:
        """``fg_mask`` (pixel ground truth) is ignored here; it is the oracle model's input.

        ``patch_mask`` [B,h*w] replaces the stage-1 mask for stage 2 (benchmarks, faithfulness tests): bool =
        a hard mask, float = a soft mask for the soft variant. Stage 1 still runs (its outputs feed the
        losses).
        """
        del fg_mask
        return self.classify(images, self.encode_parts(images), interventions, patch_mask=patch_mask)

    def classify(
        self,
        images: Tensor,
        parts: PartScores,
        interventions: Interventions | None = None,
        *,
        patch_mask: Tensor | None = None,
        reuse: ModelOutput | None = None,
    ) -> ModelOutput:
        """The rest of the forward pass from ``parts = encode_parts(images)``: interventions, part maps and
        features, stage-1 logits, the patch mask and stage 2 on ``images`` [B,3,H,W].

        ``reuse`` (evaluation only): an earlier output of the same images, e.g. without intervention.
        Stage 2's logits depend on an image and its mask only, so the images whose mask is unchanged keep
        ``reuse``'s logits and only the others go through stage 2.
        """
        s1 = self.stage1.classify_parts(parts, interventions)
        mask = sample_patch_mask(
            s1.part_logits,
            tau=self.stage1.tau,
            part_dropout=self.part_dropout_stage2,
            training=self.training,
            stochastic=self.stage1.stochastic,
            straight_through=self.mask_grad == "ste" and not self.soft_masks,
        )
        if patch_mask is not None:
            mask = _override(mask, patch_mask)
        logits = (
            self._stage2(images, mask) if reuse is None else self._stage2_where_changed(images, mask, reuse)
        )
        return ModelOutput.from_stage1(logits, s1, mask)

    def _stage2(self, images: Tensor, mask: PatchMask) -> Tensor:
        if self.soft_masks:
            return self.stage2(images, soft_mask=mask.soft)
        return self.stage2(images, mask.hard, ste_mask=mask.ste)

    def _stage2_where_changed(self, images: Tensor, mask: PatchMask, reuse: ModelOutput) -> Tensor:
        """Logits [B,C]: ``reuse.logits`` where the mask stage 2 sees is unchanged, stage 2 elsewhere."""
        if self.training:
            raise ValueError("classify(reuse=...) is evaluation-only (stage 2 is stochastic in training)")
        if self.soft_masks:
            changed = (mask.soft != reuse.soft_mask).any(dim=1)  # [B]
        else:
            changed = (mask.hard != reuse.hard_mask).any(dim=1)  # [B]
        rows = changed.nonzero().squeeze(1)  # [n]
        logits = reuse.logits.clone()
        if len(rows) > 0:
            logits[rows] = self._stage2(images[rows], PatchMask(hard=mask.hard[rows], soft=mask.soft[rows]))
        return logits


def _override(sampled: PatchMask, patch_mask: Tensor) -> PatchMask:
    """The stage-2 mask replaced by a caller's ``patch_mask`` (no straight-through gradient)."""
    if patch_mask.shape != sampled.hard.shape:
        raise ValueError(
            f"patch_mask: expected shape {tuple(sampled.hard.shape)} ([B, h*w]), "
            f"got {tuple(patch_mask.shape)}"
        )
    if patch_mask.dtype == sampled.hard.dtype:  # bool: a fixed hard mask
        return PatchMask(hard=patch_mask, soft=patch_mask.to(sampled.soft.dtype))
    return PatchMask(hard=patch_mask > 0.5, soft=patch_mask)
