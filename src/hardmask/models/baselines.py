"""Baselines sharing the two-stage model's building blocks (method.md §5.2, §8).

- ``baseline_vit``: one ViT fine-tuned with a class-token head (final norm -> class token -> new LayerNorm ->
  bias-free linear head), the "DINOv2 fine-tuned" row. Its ViT is the predictor, so it takes stage 2's
  parameter roles (lr factor, freeze flags).
- ``stage1_only``: stage 1 alone (PDiscoFormer-style part classifier); its part-classifier logits are the
  prediction.
- ``oracle_mask``: stage 2 alone, given the ground-truth patch mask (the "GT-mask early masking" upper bound).
- ``late_mask_oracle``: one ViT over the whole image whose final patch features are pooled over the
  ground-truth foreground only (the authors' "late masking", ``late_mask_vit.py``): the pooled tokens are
  foreground, but background pixels have reached them through attention in every block, which early masking
  prevents.
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from hardmask.models.backbone import ParamRole, backbone_roles, prepare_backbone
from hardmask.models.interventions import Interventions
from hardmask.models.mask import oracle_patch_mask, sample_patch_mask
from hardmask.models.outputs import ModelOutput
from hardmask.models.stage1 import PartDiscoveryViT, PartScores
from hardmask.models.stage2 import MaskedViT
from hardmask.models.two_stage import Stage1Based


class BaselineViT(nn.Module):
    def __init__(self, backbone: VisionTransformer, num_classes: int) -> None:
        super().__init__()
        self.backbone = prepare_backbone(backbone, "baseline_vit")
        self.fc_norm = nn.LayerNorm(backbone.embed_dim)
        self.head = nn.Linear(backbone.embed_dim, num_classes, bias=False)
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    def parameter_roles(self) -> dict[str, ParamRole]:
        roles = backbone_roles(self.backbone, "backbone.", stage=2)
        for module_name in ("fc_norm", "head"):
            module = getattr(self, module_name)
            roles.update({f"{module_name}.{n}": "stage2_head" for n, _ in module.named_parameters()})
        return roles

    def forward(
        self, images: Tensor, fg_mask: Tensor | None = None, interventions: Interventions | None = None
    ) -> ModelOutput:
        del fg_mask, interventions  # no mask, no parts
        cls = self.backbone.forward_features(images)[:, 0]  # [B,D]
        return ModelOutput(logits=self.head(self.fc_norm(cls)))


class Stage1OnlyModel(Stage1Based):
    """Stage 1 as a classifier. Its ``hard_mask`` is the argmax mask (fg IoU), not used by any prediction."""

    def __init__(self, stage1: PartDiscoveryViT) -> None:
        super().__init__()
        self.stage1 = stage1

    def parameter_roles(self) -> dict[str, ParamRole]:
        return self.stage1.parameter_roles("stage1.")

    def forward(
        self, images: Tensor, fg_mask: Tensor | None = None, interventions: Interventions | None = None
    ) -> ModelOutput:
        del fg_mask
        return self.classify(images, self.encode_parts(images), interventions)

    def classify(
        self,
        images: Tensor,
        parts: PartScores,
        interventions: Interventions | None = None,
        *,
        reuse: ModelOutput | None = None,
    ) -> ModelOutput:
        """The forward pass from ``parts = encode_parts(images)`` (see ``TwoStageViT.classify``; ``images``
        and ``reuse`` are unused: there is no stage 2 to run or skip)."""
        del images, reuse
        s1 = self.stage1.classify_parts(parts, interventions)
        mask = sample_patch_mask(
            s1.part_logits, tau=self.stage1.tau, part_dropout=0.0, training=self.training,
            stochastic=self.stage1.stochastic,
        )  # fmt: skip
        return ModelOutput.from_stage1(s1.logits, s1, mask)


class LateMaskOracle(BaselineViT):
    """Late masking with the ground truth: full-image features, then the mean of the foreground patch tokens
    instead of the class token (same backbone, head and parameter roles as ``BaselineViT``).

    The reference multiplies the final tokens by the mask and averages over the batch's largest kept count;
    here each image averages over its own foreground tokens (an image without any gets zeros), which does not
    depend on the rest of the batch.
    """

    def __init__(self, backbone: VisionTransformer, num_classes: int, patch_threshold: float = 0.5) -> None:
        super().__init__(backbone, num_classes)
        self.patch_threshold = patch_threshold

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.backbone.patch_embed.grid_size)

    def forward(
        self, images: Tensor, fg_mask: Tensor | None = None, interventions: Interventions | None = None
    ) -> ModelOutput:
        del interventions
        mask = _ground_truth_patches(self.backbone, images, fg_mask, self.patch_threshold, "late_mask_oracle")
        tokens = self.backbone.forward_features(images)[:, self.backbone.num_prefix_tokens :]  # [B,N,D]
        weights = mask.to(tokens.dtype)[..., None]  # [B,N,1]
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # [B,D]
        return ModelOutput(logits=self.head(self.fc_norm(pooled)), hard_mask=mask)


def _ground_truth_patches(
    vit: VisionTransformer, images: Tensor, fg_mask: Tensor | None, threshold: float, variant: str
) -> Tensor:
    """The ground-truth patch mask [B,h*w] of ``fg_mask`` [B,H,W], checked against ``images`` [B,3,H,W]."""
    if fg_mask is None:
        raise ValueError(
            f"{variant}: the model needs the ground-truth pixel mask: call model(images, fg_mask=...)"
        )
    if fg_mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"{variant}: fg_mask of shape {tuple(fg_mask.shape)} does not match images of shape "
            f"{tuple(images.shape)}"
        )
    return oracle_patch_mask(fg_mask, tuple(vit.patch_embed.patch_size), threshold)


class OracleMaskModel(nn.Module):
    """Stage 2 given the ground truth: a patch is foreground when ``>= patch_threshold`` of its pixels are."""

    def __init__(self, stage2: MaskedViT, patch_threshold: float = 0.5) -> None:
        super().__init__()
        self.stage2 = stage2
        self.patch_threshold = patch_threshold

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.stage2.backbone.patch_embed.grid_size)

    def parameter_roles(self) -> dict[str, ParamRole]:
        return self.stage2.parameter_roles("stage2.")

    def forward(
        self, images: Tensor, fg_mask: Tensor | None = None, interventions: Interventions | None = None
    ) -> ModelOutput:
        del interventions
        mask = _ground_truth_patches(
            self.stage2.backbone, images, fg_mask, self.patch_threshold, "oracle_mask"
        )
        logits = self.stage2(images, mask)
        return ModelOutput(logits=logits, hard_mask=mask)
