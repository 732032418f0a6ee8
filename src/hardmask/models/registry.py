"""The variant registry: one table of every model variant, which every other module asks.

A :class:`Variant` says how the model is built, whether it has stage-1 parts (test-time interventions, part
metrics), whether it reads the ground-truth foreground mask, and which loss groups it trains with
(``hardmask.losses.LOSS_GROUPS``: ``prediction``, the cross-entropy of its prediction; ``stage1``, stage 1's
part classifier and part-discovery priors). Training, evaluation, the benchmark and the study look these up
by name; adding a variant is one entry here (plus its model class and tests), and the study's comparison
runs it.

Freezing works on parameter roles (``backbone.ParamRole``), for every variant alike:

| flag                     | frozen roles    | meaning                                                    |
|--------------------------|-----------------|------------------------------------------------------------|
| ``freeze_backbone``      | stage1_backbone | stage-1 ViT frozen except cls/register tokens, pos-embed   |
| ``freeze_params_stage1`` | stage1_tokens   | ... and those tokens too                                   |
| ``freeze_stage2``        | stage2_backbone | predictor ViT frozen except tokens/pos-embed (head trains) |
| ``freeze_params_stage2`` | stage2_tokens   | predictor tokens and pos-embed frozen                      |

The predictor ViT is stage 2 for two-stage and oracle models and the single ViT of ``baseline_vit``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hardmask.config import ConfigError, ModelSection

if TYPE_CHECKING:
    from torch import nn

    from hardmask.models.backbone import ParamRole
    from hardmask.models.stage1 import PartDiscoveryViT
    from hardmask.models.stage2 import MaskedViT

# The table itself loads no model code (each builder imports what it builds): a stage that only checks or
# describes variants, such as the train stage before it submits its jobs, does not wait for torch and timm.
Builder = Callable[[ModelSection, int, int], "nn.Module"]  # (model config, num_classes, image_size) -> model


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str  # one line for reports and --help
    build: Builder  # without freezing (build_model applies it)
    has_parts: bool  # stage-1 parts: interventions, part thresholds, NMI/ARI
    takes_fg_mask: bool  # the forward pass reads the ground-truth pixel mask (``model(images, fg_mask=...)``)
    losses: tuple[str, ...]  # loss groups (hardmask.losses.LOSS_GROUPS); a term with weight 0 is skipped
    uses_group_labels: bool = False  # training reads each image's group (label x place): reports say so
    frozen_roles: tuple[ParamRole, ...] = ()  # always frozen, whatever the model.freeze_* flags say


# ----------------------------------------------------------------------------------------------- builders
def _stage1(cfg: ModelSection, num_classes: int, image_size: int) -> PartDiscoveryViT:
    from hardmask.models.stage1 import PartDiscoveryViT
    from hardmask.models.weights import create_backbone

    backbone = cfg.backbone
    return PartDiscoveryViT(
        create_backbone(backbone, image_size, backbone.drop_path_stage1),
        num_parts=cfg.num_parts,
        num_classes=num_classes,
        part_dropout=cfg.part_dropout,
        gumbel_softmax=cfg.gumbel_softmax,
        tau=cfg.gumbel_tau,
        stochastic_eval=cfg.stochastic_eval,
        position_free=cfg.stage1_position_free,
    )


def _stage2(cfg: ModelSection, num_classes: int, image_size: int) -> MaskedViT:
    from hardmask.models.stage2 import MaskedViT
    from hardmask.models.weights import create_backbone

    backbone = create_backbone(cfg.backbone, image_size, cfg.backbone.drop_path_stage2)
    return MaskedViT(backbone, num_classes, impl=cfg.stage2_impl)


def _two_stage(soft_masks: bool) -> Builder:
    def build(cfg: ModelSection, num_classes: int, image_size: int) -> nn.Module:
        from hardmask.models.two_stage import TwoStageViT

        stage1 = _stage1(cfg, num_classes, image_size)  # built first: the RNG draws of stage 1 come first
        return TwoStageViT(
            stage1,
            _stage2(cfg, num_classes, image_size),
            part_dropout_stage2=cfg.part_dropout_stage2,
            mask_grad=cfg.mask_grad,
            soft_masks=soft_masks,
        )

    return build


def _baseline(cfg: ModelSection, num_classes: int, image_size: int) -> nn.Module:
    from hardmask.models.baselines import BaselineViT
    from hardmask.models.weights import create_backbone

    return BaselineViT(create_backbone(cfg.backbone, image_size, cfg.backbone.drop_path_stage2), num_classes)


def _stage1_only(cfg: ModelSection, num_classes: int, image_size: int) -> nn.Module:
    from hardmask.models.baselines import Stage1OnlyModel

    return Stage1OnlyModel(_stage1(cfg, num_classes, image_size))


def _oracle(cfg: ModelSection, num_classes: int, image_size: int) -> nn.Module:
    from hardmask.models.baselines import OracleMaskModel

    return OracleMaskModel(_stage2(cfg, num_classes, image_size), patch_threshold=cfg.oracle_patch_threshold)


def _late_mask(cfg: ModelSection, num_classes: int, image_size: int) -> nn.Module:
    from hardmask.models.baselines import LateMaskOracle
    from hardmask.models.weights import create_backbone

    backbone = create_backbone(cfg.backbone, image_size, cfg.backbone.drop_path_stage2)
    return LateMaskOracle(backbone, num_classes, patch_threshold=cfg.oracle_patch_threshold)


# ----------------------------------------------------------------------------------------------- the table
# In the order of the study's comparison table (hardmask.study): baselines, the method's kin, the method, then
# the ground-truth-mask bounds. A new variant goes where its row should stand.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "baseline_vit",
            "single-stage ViT fine-tuned with a class-token head",
            _baseline,
            has_parts=False,
            takes_fg_mask=False,
            losses=("prediction",),
        ),
        Variant(
            "linear_probe",
            "a frozen backbone and a trained head (random features from scratch, DINOv2's when pretrained)",
            _baseline,
            has_parts=False,
            takes_fg_mask=False,
            losses=("prediction",),
            frozen_roles=("stage2_backbone", "stage2_tokens"),
        ),
        Variant(
            "group_dro",
            "the single-stage ViT trained with Group DRO (uses the training group labels)",
            _baseline,
            has_parts=False,
            takes_fg_mask=False,
            losses=("group_dro",),
            uses_group_labels=True,
        ),
        Variant(
            "stage1_only",
            "the stage-1 part classifier alone (PDiscoFormer-style)",
            _stage1_only,
            has_parts=True,
            takes_fg_mask=False,
            losses=("stage1",),
        ),
        Variant(
            "two_stage_soft",
            "ablation: stage 2 gets a soft additive attention bias instead of the hard mask",
            _two_stage(soft_masks=True),
            has_parts=True,
            takes_fg_mask=False,
            losses=("prediction", "stage1"),
        ),
        Variant(
            "two_stage_hard",
            "the method: stage-1 part discovery, stage-2 ViT attending only to foreground tokens",
            _two_stage(soft_masks=False),
            has_parts=True,
            takes_fg_mask=False,
            losses=("prediction", "stage1"),
        ),
        Variant(
            "late_mask_oracle",
            "late masking: a ViT over the whole image, its features pooled over the ground-truth foreground",
            _late_mask,
            has_parts=False,
            takes_fg_mask=True,
            losses=("prediction",),
        ),
        Variant(
            "oracle_mask",
            "stage 2 given the ground-truth foreground mask (upper bound; needs masks)",
            _oracle,
            has_parts=False,
            takes_fg_mask=True,
            losses=("prediction",),
        ),
    )
}


def get_variant(name: str, key: str = "variant") -> Variant:
    """The registry entry of ``name``; an unknown name is a :class:`ConfigError` naming ``key``."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(
            f"{key}: unknown model variant {name!r}; expected one of {', '.join(VARIANTS)}"
        ) from None


def describe_variants(names: Iterable[str]) -> dict[str, dict[str, object]]:
    """What a report says about each variant: its summary and which extra supervision it trains with."""
    return {
        name: {
            "summary": VARIANTS[name].summary,
            "ground_truth_mask": VARIANTS[name].takes_fg_mask,
            "group_labels": VARIANTS[name].uses_group_labels,
        }
        for name in names
    }


def check_variants(names: Iterable[str], key: str = "train.variants") -> None:
    """Every name of ``names`` is a registered variant, or a :class:`ConfigError` naming ``key``."""
    for name in names:
        get_variant(name, key)


def build_model(variant: str, model_cfg: ModelSection, num_classes: int, image_size: int) -> nn.Module:
    """The model of ``variant`` (a key of :data:`VARIANTS`), ``model_cfg``'s freezing applied."""
    spec = get_variant(variant)
    if num_classes < 1:
        raise ValueError(f"build_model: num_classes must be >= 1, got {num_classes}")
    model = spec.build(model_cfg, num_classes, image_size)
    apply_freezing(model, model_cfg, spec.frozen_roles)
    return model


def frozen_roles(model_cfg: ModelSection) -> set[ParamRole]:
    roles: set[ParamRole] = set()
    if model_cfg.freeze_backbone:
        roles.add("stage1_backbone")
    if model_cfg.freeze_params_stage1:
        roles.add("stage1_tokens")
    if model_cfg.freeze_stage2:
        roles.add("stage2_backbone")
    if model_cfg.freeze_params_stage2:
        roles.add("stage2_tokens")
    return roles


def apply_freezing(model: nn.Module, model_cfg: ModelSection, always: Iterable[ParamRole] = ()) -> None:
    """Set ``requires_grad`` from the freeze flags (module docstring) and the roles ``always`` frozen."""
    frozen = frozen_roles(model_cfg) | set(always)
    roles = model.parameter_roles()
    for name, param in model.named_parameters():
        param.requires_grad_(roles[name] not in frozen)
