"""Losses: one small function per term, combined by :class:`Criterion` with the weights of ``LossSection``."""

from hardmask.losses.classification import classification_loss
from hardmask.losses.criterion import LOSS_GROUPS, TERMS, Criterion, LossOutput
from hardmask.losses.equivariance import (
    SimilarityTransform,
    equivariance_loss,
    sample_similarity_transform,
    unwarp_maps,
    warp_images,
)
from hardmask.losses.part_priors import (
    border_weight,
    concentration_loss,
    enforced_presence_loss,
    foreground_presence_loss,
    orthogonality_loss,
    pixel_entropy_loss,
    presence_loss,
    total_variation_loss,
)

__all__ = [
    "LOSS_GROUPS",
    "TERMS",
    "Criterion",
    "LossOutput",
    "SimilarityTransform",
    "border_weight",
    "classification_loss",
    "concentration_loss",
    "enforced_presence_loss",
    "equivariance_loss",
    "foreground_presence_loss",
    "orthogonality_loss",
    "pixel_entropy_loss",
    "presence_loss",
    "sample_similarity_transform",
    "total_variation_loss",
    "unwarp_maps",
    "warp_images",
]
