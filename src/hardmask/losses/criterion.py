"""``Criterion(loss_cfg, groups)``: the weighted sum of the loss terms a model trains with (method.md §2).

Terms are named after their ``LossSection`` weight and come in groups (:data:`LOSS_GROUPS`): the prediction's
cross-entropy, and stage 1's part classifier with its part-discovery priors. Which groups a model variant
trains with is the variant registry's business (``hardmask.models.registry``, ``Variant.losses``). A term
whose weight is 0 is not computed (e.g. ``concentration`` by default, or the equivariance pass). In eval mode
only the classification terms are computed (the reference's evaluation loss). ``LossOutput.terms`` holds the
unweighted values; ``total = sum(weight * term)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from hardmask.config import LossSection
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
from hardmask.runtime import autocast_disabled

LOSS_GROUPS: dict[str, tuple[str, ...]] = {
    "prediction": ("classification_stage2",),  # cross-entropy of the model's prediction
    "stage1": (  # the part classifier and the part-discovery priors of stage 1
        "classification_stage1",
        "presence",
        "enforced_presence",
        "foreground_presence",
        "equivariance",
        "orthogonality",
        "total_variation",
        "entropy",
        "concentration",
    ),
}
TERMS = tuple(term for terms in LOSS_GROUPS.values() for term in terms)
CLASSIFICATION_TERMS = ("classification_stage2", "classification_stage1")


@dataclass(frozen=True, eq=False)  # holds tensors: no field-wise == (ambiguous truth value)
class LossOutput:
    total: Tensor  # scalar, what backward() is called on
    terms: dict[str, Tensor]  # unweighted scalar per active term, detached (for logging)


class Criterion:
    """``groups``: the keys of :data:`LOSS_GROUPS` that apply (``Variant.losses``), in order; ``name`` labels
    error messages."""

    def __init__(self, loss_cfg: LossSection, groups: Sequence[str], name: str = "model") -> None:
        unknown = sorted(set(groups) - set(LOSS_GROUPS))
        if unknown:
            raise ValueError(
                f"Criterion({name}): unknown loss groups {unknown}; expected some of {list(LOSS_GROUPS)}"
            )
        self.cfg = loss_cfg
        self.name = name
        terms = [term for group in groups for term in LOSS_GROUPS[group]]
        self.weights = {term: float(getattr(loss_cfg, term)) for term in terms}
        self.weights = {term: weight for term, weight in self.weights.items() if weight > 0}

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, output: Any) -> LossOutput:
        """The losses of ``output``, the ``hardmask.models.ModelOutput`` of ``model(images)``."""
        names = [n for n in self.weights if model.training or n in CLASSIFICATION_TERMS]
        terms = {name: self._term(name, model, images, labels, output) for name in names}
        if not terms:
            raise ValueError(f"Criterion({self.name}): every loss weight is 0, nothing to train")
        total = sum(self.weights[name] * value for name, value in terms.items())
        return LossOutput(total=total, terms={name: value.detach() for name, value in terms.items()})

    def _term(self, name: str, model: nn.Module, images: Tensor, labels: Tensor, output: Any) -> Tensor:
        smoothing = self.cfg.label_smoothing
        if name == "classification_stage2":
            return classification_loss(output.logits, labels, smoothing)
        if name == "classification_stage1":
            return classification_loss(
                _required(output.stage1_logits, "stage1_logits", self.name), labels, smoothing
            )
        if name == "equivariance":
            return self._equivariance(model, images, _required(output.part_maps, "part_maps", self.name))
        with autocast_disabled(images):  # the priors are small; float32 keeps logs and ratios exact
            if name == "orthogonality":
                return orthogonality_loss(_required(output.part_features, "part_features", self.name))
            maps = _required(output.part_maps, "part_maps", self.name)
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
