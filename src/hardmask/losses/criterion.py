"""``Criterion(loss_cfg, variant)``: the weighted sum of the losses a variant trains with (method.md §2).

Terms are named after their ``LossSection`` weight. Which terms a variant uses:

- ``two_stage_hard`` / ``two_stage_soft``: everything;
- ``stage1_only``: the stage-1 terms (its part classifier is the prediction);
- ``baseline_vit`` / ``oracle_mask``: only ``classification_stage2`` (cross-entropy of the prediction).

A term whose weight is 0 is not computed (e.g. ``concentration`` by default, or the equivariance pass). In
eval mode only the classification terms are computed (the reference's evaluation loss). ``LossOutput.terms``
holds the unweighted values; ``total = sum(weight * term)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hardmask.config import VARIANTS, LossSection
from hardmask.losses.classification import classification_loss
from hardmask.losses.equivariance import equivariance_loss, sample_similarity_transform, warp_images
from hardmask.losses.part_priors import (
    concentration_loss,
    enforced_presence_loss,
    foreground_presence_loss,
    orthogonality_loss,
    pixel_entropy_loss,
    presence_loss,
    total_variation_loss,
)
from hardmask.models.backbone import autocast_disabled
from hardmask.models.outputs import ModelOutput

STAGE1_TERMS = (
    "classification_stage1",
    "presence",
    "enforced_presence",
    "foreground_presence",
    "equivariance",
    "orthogonality",
    "total_variation",
    "entropy",
    "concentration",
)
VARIANT_TERMS: dict[str, tuple[str, ...]] = {
    "two_stage_hard": ("classification_stage2", *STAGE1_TERMS),
    "two_stage_soft": ("classification_stage2", *STAGE1_TERMS),
    "stage1_only": STAGE1_TERMS,
    "baseline_vit": ("classification_stage2",),
    "oracle_mask": ("classification_stage2",),
}
CLASSIFICATION_TERMS = ("classification_stage2", "classification_stage1")


@dataclass(frozen=True, eq=False)  # holds tensors: no field-wise == (ambiguous truth value)
class LossOutput:
    total: Tensor  # scalar, what backward() is called on
    terms: dict[str, Tensor]  # unweighted scalar per active term, detached (for logging)


class Criterion:
    def __init__(self, loss_cfg: LossSection, variant: str) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"Criterion: unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        self.cfg = loss_cfg
        self.variant = variant
        self.weights = {name: float(getattr(loss_cfg, name)) for name in VARIANT_TERMS[variant]}
        self.weights = {name: weight for name, weight in self.weights.items() if weight > 0}

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, output: ModelOutput) -> LossOutput:
        names = [n for n in self.weights if model.training or n in CLASSIFICATION_TERMS]
        terms = {name: self._term(name, model, images, labels, output) for name in names}
        if not terms:
            raise ValueError(f"Criterion({self.variant}): every loss weight is 0, nothing to train")
        total = sum(self.weights[name] * value for name, value in terms.items())
        return LossOutput(total=total, terms={name: value.detach() for name, value in terms.items()})

    def _term(
        self, name: str, model: nn.Module, images: Tensor, labels: Tensor, output: ModelOutput
    ) -> Tensor:
        smoothing = self.cfg.label_smoothing
        if name == "classification_stage2":
            return classification_loss(output.logits, labels, smoothing)
        if name == "classification_stage1":
            return classification_loss(
                _required(output.stage1_logits, "stage1_logits", self.variant), labels, smoothing
            )
        if name == "equivariance":
            return self._equivariance(model, images, _required(output.part_maps, "part_maps", self.variant))
        with autocast_disabled(images):  # the priors are small; float32 keeps logs and ratios exact
            if name == "orthogonality":
                return orthogonality_loss(_required(output.part_features, "part_features", self.variant))
            maps = _required(output.part_maps, "part_maps", self.variant)
            prior = {
                "presence": presence_loss,
                "enforced_presence": enforced_presence_loss,
                "foreground_presence": foreground_presence_loss,
                "total_variation": total_variation_loss,
                "entropy": pixel_entropy_loss,
                "concentration": concentration_loss,
            }[name]
            return prior(maps)

    def _equivariance(self, model: nn.Module, images: Tensor, maps: Tensor) -> Tensor:
        """One random similarity transform for the batch; only stage 1 runs on the warped images."""
        cfg = self.cfg
        size = tuple(images.shape[-2:])
        transform = sample_similarity_transform(cfg.eq_degrees, cfg.eq_translate, cfg.eq_scale, size)
        module = getattr(model, "module", model)  # unwrap DistributedDataParallel
        maps_of_warped = module.stage1_maps(warp_images(images, transform))
        with autocast_disabled(images):
            return equivariance_loss(maps, maps_of_warped, transform, size)


def _required(value: Tensor | None, field: str, variant: str) -> Tensor:
    if value is None:
        raise ValueError(f"Criterion({variant}): the model output has no {field}, which this loss needs")
    return value
