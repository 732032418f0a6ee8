"""Models: the two-stage ViT (stage 1 part discovery, hard-masked stage 2), its baselines and the registry.

Each name is imported from its module on first use (PEP 562), so that ``from hardmask.models import
check_variants`` loads the registry only: the train stage checks its variants before it submits the jobs, and
loading torch and timm there would hold every job back.
"""

from importlib import import_module

_MODULE_OF = {
    "BackboneError": "backbone",
    "ParamRole": "backbone",
    "BaselineViT": "baselines",
    "OracleMaskModel": "baselines",
    "Stage1OnlyModel": "baselines",
    "Interventions": "interventions",
    "apply_interventions": "interventions",
    "PatchMask": "mask",
    "oracle_patch_mask": "mask",
    "sample_patch_mask": "mask",
    "ModelOutput": "outputs",
    "VARIANTS": "registry",
    "Variant": "registry",
    "apply_freezing": "registry",
    "build_model": "registry",
    "check_variants": "registry",
    "describe_variants": "registry",
    "get_variant": "registry",
    "PartDiscoveryViT": "stage1",
    "PartScores": "stage1",
    "Stage1Output": "stage1",
    "MaskedViT": "stage2",
    "TwoStageViT": "two_stage",
    "WeightsError": "weights",
    "create_backbone": "weights",
    "load_reference_checkpoint": "weights",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
