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
from hardmask.losses.group_dro import GroupDRO
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
    "group_dro": ("group_dro",),  # the prediction's cross-entropy, worst training group weighted up
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
WEIGHT_OF = {"group_dro": "classification_stage2"}  # terms weighted by another term's LossSection field


@dataclass(frozen=True, eq=False)  # holds tensors: no field-wise == (ambiguous truth value)
class LossOutput:
    total: Tensor  # scalar, what backward() is called on
    terms: dict[str, Tensor]  # unweighted scalar per active term, detached (for logging)


class Criterion:
    """``losses``: the keys of :data:`LOSS_GROUPS` that apply (``Variant.losses``), in order; ``name`` labels
    error messages; ``num_groups``: the training split's groups, for ``group_dro``."""

    def __init__(
        self, loss_cfg: LossSection, losses: Sequence[str], name: str = "model", num_groups: int | None = None
    ) -> None:
        unknown = sorted(set(losses) - set(LOSS_GROUPS))
        if unknown:
            raise ValueError(
                f"Criterion({name}): unknown loss groups {unknown}; expected some of {list(LOSS_GROUPS)}"
            )
        self.cfg = loss_cfg
        self.name = name
        terms = [term for group in losses for term in LOSS_GROUPS[group]]
        self.weights = {term: float(getattr(loss_cfg, WEIGHT_OF.get(term, term))) for term in terms}
        self.weights = {term: weight for term, weight in self.weights.items() if weight > 0}
        self.group_dro = None
        if "group_dro" in self.weights:
            if num_groups is None:
                raise ValueError(f"Criterion({name}): group_dro needs the number of training groups")
            self.group_dro = GroupDRO(num_groups, loss_cfg.group_dro_step_size)

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, output: Any, groups: Tensor | None = None
    ) -> LossOutput:
        """The losses of ``output``, the ``hardmask.models.ModelOutput`` of ``model(images)``; ``groups``
        [B]: the images' group labels (only ``group_dro`` reads them)."""
        names = [n for n in self.weights if model.training or n in CLASSIFICATION_TERMS]
        terms = {name: self._term(name, model, images, labels, output, groups) for name in names}
        if not terms:
            raise ValueError(f"Criterion({self.name}): every loss weight is 0, nothing to train")
        total = sum(self.weights[name] * value for name, value in terms.items())
        return LossOutput(total=total, terms={name: value.detach() for name, value in terms.items()})

    def state_dict(self) -> dict[str, Any]:
        """What the criterion learns across steps (the group weights of ``group_dro``), for checkpoints."""
        return {"group_dro": self.group_dro.state_dict()} if self.group_dro is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.group_dro is not None:
            self.group_dro.load_state_dict(state["group_dro"])

    def _term(
        self, name: str, model: nn.Module, images: Tensor, labels: Tensor, output: Any, groups: Tensor | None
    ) -> Tensor:
        smoothing = self.cfg.label_smoothing
        if name == "classification_stage2":
            return classification_loss(output.logits, labels, smoothing)
        if name == "group_dro":
            return self.group_dro(
                output.logits, labels, _required(groups, "group labels", self.name), smoothing
            )
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
        raise ValueError(
            f"Criterion({variant}): no {field} (in the model output or the batch), which this loss needs"
        )
    return value
