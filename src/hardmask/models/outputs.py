"""Named outputs of every hardmask model (docs/architecture.md, "Models")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from hardmask.models.mask import PatchMask
    from hardmask.models.stage1 import Stage1Output


@dataclass(frozen=True, eq=False)  # holds tensors: no field-wise == (ambiguous truth value)
class ModelOutput:
    """What ``model(images, ...)`` returns. Fields a variant does not produce are ``None``.

    ``h, w`` is the patch grid, ``K`` the number of foreground parts (channel ``K`` is the background part).
    """

    logits: Tensor  # [B,C] the prediction (stage 2 for two-stage models)
    stage1_logits: Tensor | None = None  # [B,C] part classifier, averaged over the K foreground parts
    part_maps: Tensor | None = None  # [B,K+1,h,w] soft assignment maps the losses use
    part_logits: Tensor | None = None  # [B,K+1,h,w] -squared distance to the prototypes (after interventions)
    part_sims: Tensor | None = None  # [B,K+1,h,w] dot products <x, w_k> (thresholds gate on these)
    hard_mask: Tensor | None = None  # [B,h*w] bool, True = foreground: the tokens stage 2 attends to
    # (soft variant: the argmax mask of the same draw, for evaluation; stage 2 then uses soft_mask)
    soft_mask: Tensor | None = None  # [B,h*w] float, max surviving foreground probability
    part_features: Tensor | None = None  # [B,D,K+1] modulated part features

    @classmethod
    def from_stage1(cls, logits: Tensor, s1: Stage1Output, mask: PatchMask) -> ModelOutput:
        """The output of a model built on stage 1: ``logits`` plus stage 1's maps, features and ``mask``."""
        return cls(
            logits=logits,
            stage1_logits=s1.logits,
            part_maps=s1.part_maps,
            part_logits=s1.part_logits,
            part_sims=s1.part_sims,
            hard_mask=mask.hard,
            soft_mask=mask.soft,
            part_features=s1.part_features,
        )
