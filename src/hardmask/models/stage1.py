"""Stage 1: part discovery on a timm ViT (method.md §1.2; PDiscoFormer-style part classifier).

Per patch token ``x`` [D] and prototype ``w_k`` (K foreground parts, the background prototype is the LAST
channel): ``part_sims = <x, w_k>``, ``part_logits = -(|x|^2 - 2 <x, w_k> + |w_k|^2)`` (negative squared
distance). The soft assignment ``part_maps`` pools the tokens into part features (mean over positions), a
LayerNorm over [D, K+1] modulates them, and a shared bias-free linear head classifies each foreground part;
the stage-1 logits are the mean over the K parts.

Part maps: Gumbel-softmax in training (``gumbel_softmax=True``, the paper's setting) or a tempered softmax; at
evaluation a tempered softmax (§10.3: deterministic; its argmax is the argmax of the logits, which is what the
mask uses), unless ``stochastic_eval`` reproduces the reference's Gumbel noise at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from hardmask.models.backbone import ParamRole, backbone_roles, prepare_backbone, token_grid
from hardmask.models.interventions import Interventions, apply_interventions
from hardmask.runtime import autocast_disabled


@dataclass(frozen=True, eq=False)  # holds tensors: no field-wise == (ambiguous truth value)
class PartScores:
    tokens: Tensor  # [B,h*w,D] final-norm patch tokens
    part_sims: Tensor  # [B,K+1,h,w]
    part_logits: Tensor  # [B,K+1,h,w]


@dataclass(frozen=True, eq=False)  # holds tensors: no field-wise == (ambiguous truth value)
class Stage1Output:
    part_sims: Tensor  # [B,K+1,h,w]
    part_logits: Tensor  # [B,K+1,h,w] after interventions (-inf where a part is excluded)
    part_maps: Tensor  # [B,K+1,h,w]
    part_features: Tensor  # [B,D,K+1] modulated
    logits: Tensor  # [B,C] mean over the K foreground parts


class PartDiscoveryViT(nn.Module):
    """Stage 1, module names as in the reference: ``fc_landmarks``, ``modulation``, ``fc_class_landmarks``."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_parts: int,
        num_classes: int,
        *,
        part_dropout: float = 0.3,
        gumbel_softmax: bool = True,
        tau: float = 1.0,
        stochastic_eval: bool = False,
        position_free: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = prepare_backbone(backbone, "stage 1")
        if position_free:
            # timm adds no position embedding when it is None (prefix tokens are still prepended): every
            # token's part assignment is then a function of its content and the set of tokens around it.
            # Why: trained from scratch with a learnable position embedding, stage 1 meets "foreground near
            # the centre, background at the border" by position alone and never looks for the object.
            self.backbone.pos_embed = None
        dim = backbone.embed_dim
        self.num_parts = num_parts
        self.gumbel_softmax = gumbel_softmax
        self.tau = tau
        self.stochastic_eval = stochastic_eval
        # prototypes: weight [K+1, D, 1, 1] as in the reference (PyTorch's default Conv2d init, not
        # re-initialised); applied to token rows by einsum, so the [B,D,h,w] feature map is never built
        self.fc_landmarks = nn.Conv2d(dim, num_parts + 1, kernel_size=1, bias=False)
        self.modulation = nn.LayerNorm([dim, num_parts + 1])
        self.part_dropout = nn.Dropout1d(part_dropout)  # zeroes whole foreground part vectors
        self.fc_class_landmarks = nn.Linear(dim, num_classes, bias=False)
        nn.init.trunc_normal_(self.fc_class_landmarks.weight, std=0.02)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.backbone.patch_embed.grid_size)

    @property
    def stochastic(self) -> bool:
        """Whether the part maps and the mask are sampled with Gumbel noise in the current mode."""
        return self.training or self.stochastic_eval

    def parameter_roles(self, prefix: str = "") -> dict[str, ParamRole]:
        roles = backbone_roles(self.backbone, prefix + "backbone.", stage=1)
        roles[prefix + "fc_landmarks.weight"] = "prototypes"
        roles.update(
            {prefix + "modulation." + n: "modulation" for n, _ in self.modulation.named_parameters()}
        )
        roles[prefix + "fc_class_landmarks.weight"] = "stage1_head"
        return roles

    # ------------------------------------------------------------------------------------------- pieces
    def part_scores(self, images: Tensor) -> PartScores:
        """Backbone pass and prototype scores of every patch token."""
        h, w = token_grid(self.backbone, images)
        tokens = self.backbone.forward_features(images)[:, self.backbone.num_prefix_tokens :]  # [B,h*w,D]
        # float32 even under autocast: the logits are a difference of large squared norms (about D each) whose
        # argmax decides the mask, and K+1 prototypes make this contraction cheap
        with autocast_disabled(tokens):
            prototypes = self.fc_landmarks.weight.flatten(1).float()  # [K+1,D]
            tokens = tokens.float()
            sims = torch.einsum("bnd,kd->bkn", tokens, prototypes)  # [B,K+1,h*w]
            token_sq = tokens.pow(2).sum(-1)  # [B,h*w]
            proto_sq = prototypes.pow(2).sum(-1)  # [K+1]
            logits = -(token_sq[:, None, :] - 2 * sims + proto_sq[None, :, None])
        return PartScores(
            tokens=tokens,
            part_sims=sims.unflatten(-1, (h, w)),
            part_logits=logits.unflatten(-1, (h, w)),
        )

    def assign(self, part_logits: Tensor) -> Tensor:
        """Soft part maps [B,K+1,h,w]: Gumbel-softmax when sampling, else a tempered softmax of the logits."""
        if self.stochastic and self.gumbel_softmax:
            return F.gumbel_softmax(part_logits, tau=self.tau, hard=False, dim=1)
        return (part_logits / self.tau).softmax(dim=1)

    def maps(self, images: Tensor) -> Tensor:
        """Only the part maps [B,K+1,h,w] (the equivariance pass: no part features, no classifier)."""
        return self.assign(self.part_scores(images).part_logits)

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, images: Tensor, interventions: Interventions | None = None) -> Stage1Output:
        return self.classify_parts(self.part_scores(images), interventions)

    def classify_parts(self, scores: PartScores, interventions: Interventions | None = None) -> Stage1Output:
        """Everything after the backbone: interventions, part maps, part features, part classifier.

        Evaluation computes ``part_scores`` once per batch and calls this once per intervention setting.
        """
        part_logits = scores.part_logits
        if interventions is not None and not interventions.is_empty:
            if self.training:
                raise ValueError("interventions are evaluation-only: call model.eval() first")
            part_logits = apply_interventions(part_logits, scores.part_sims, interventions)
        maps = self.assign(part_logits)  # [B,K+1,h,w]
        num_positions = maps.shape[-2] * maps.shape[-1]
        # mean over positions of maps * tokens, as one contraction (never materialises [B,D,K+1,h,w])
        features = torch.einsum("bkn,bnd->bdk", maps.flatten(2), scores.tokens) / num_positions  # [B,D,K+1]
        features = self.modulation(features)
        fg_features = self.part_dropout(features[..., : self.num_parts].transpose(1, 2))  # [B,K,D]
        part_class_logits = self.fc_class_landmarks(fg_features)  # [B,K,C]
        return Stage1Output(
            part_sims=scores.part_sims,
            part_logits=part_logits,
            part_maps=maps,
            part_features=features,
            logits=part_class_logits.mean(dim=1),
        )
