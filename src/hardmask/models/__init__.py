"""Models: the two-stage ViT (stage 1 part discovery, hard-masked stage 2), its baselines and the registry."""

from hardmask.models.backbone import BackboneError, ParamRole
from hardmask.models.baselines import BaselineViT, OracleMaskModel, Stage1OnlyModel
from hardmask.models.interventions import Interventions, apply_interventions
from hardmask.models.mask import PatchMask, oracle_patch_mask, sample_patch_mask
from hardmask.models.outputs import ModelOutput
from hardmask.models.registry import (
    VARIANTS,
    Variant,
    apply_freezing,
    build_model,
    check_variants,
    describe_variants,
    get_variant,
)
from hardmask.models.stage1 import PartDiscoveryViT, PartScores, Stage1Output
from hardmask.models.stage2 import MaskedViT
from hardmask.models.two_stage import TwoStageViT
from hardmask.models.weights import WeightsError, create_backbone, load_reference_checkpoint

__all__ = [
    "VARIANTS",
    "Variant",
    "check_variants",
    "describe_variants",
    "get_variant",
    "BackboneError",
    "BaselineViT",
    "Interventions",
    "MaskedViT",
    "ModelOutput",
    "OracleMaskModel",
    "ParamRole",
    "PartDiscoveryViT",
    "PartScores",
    "PatchMask",
    "Stage1OnlyModel",
    "Stage1Output",
    "TwoStageViT",
    "WeightsError",
    "apply_freezing",
    "apply_interventions",
    "build_model",
    "create_backbone",
    "load_reference_checkpoint",
    "oracle_patch_mask",
    "sample_patch_mask",
]
