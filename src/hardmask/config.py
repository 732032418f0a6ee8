"""The one configuration schema of hardmask, loaded from ``params.yaml``.

Every section is a pydantic model with ``extra="forbid"``: an unknown or misspelled key, a wrong type or an
out-of-range value stops loading with a :class:`ConfigError` that names the file, the dotted key and what was
expected. Stages read only their own sections (plus ``base``); ``dvc.yaml`` declares exactly those as
``params``.

Presets (``configs/*.yaml``) are partial documents merged over ``params.yaml``: select one with
``base.preset: configs/waterbirds.yaml`` (e.g. ``dvc exp run -S base.preset=configs/waterbirds.yaml``).
Explicit ``key=value`` overrides (``load_config(..., overrides=[...])``) are applied last.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

VARIANTS = ("baseline_vit", "two_stage_hard", "two_stage_soft", "stage1_only", "oracle_mask")
Variant = Literal["baseline_vit", "two_stage_hard", "two_stage_soft", "stage1_only", "oracle_mask"]


class ConfigError(ValueError):
    """A configuration problem, with the file and the dotted key it is about."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------------- base
class BaseSection(Section):
    seed: int = Field(
        0, ge=0, description="Seed of everything that is not a training seed (data generation)."
    )
    preset: str | None = Field(None, description="Optional preset file merged over params.yaml.")
    data_dir: str = "data"
    runs_dir: str = "runs/train"
    reports_dir: str = "reports"
    device: Literal["auto", "cpu", "cuda"] = "auto"


# --------------------------------------------------------------------------------------------------- data
class SyntheticSection(Section):
    """The built-in spurious-background benchmark (written in the Waterbirds on-disk format)."""

    image_size: int = Field(64, ge=16, le=1024, description="Side of the generated square images, pixels.")
    n_train: int = Field(3000, ge=8)
    n_val: int = Field(1000, ge=8)
    n_test: int = Field(2000, ge=8)
    n_ood: int = Field(1000, ge=8, description="Images per ImageNet-9-style OOD variant.")
    n_classes: int = Field(2, ge=2, le=4)
    n_places: int = Field(2, ge=2, le=4)
    spurious_prob: float = Field(0.95, ge=0.0, le=1.0, description="P(place == class's place) in train.")
    object_scale: tuple[float, float] = Field((0.75, 0.95), description="Object extent / image side, range.")
    rotation_deg: float = Field(25.0, ge=0, le=180)
    ood_variants: tuple[Literal["only_fg", "mixed_rand", "mixed_same", "only_bg"], ...] = (
        "only_fg",
        "mixed_rand",
        "mixed_same",
        "only_bg",
    )
    jpeg_quality: int = Field(95, ge=50, le=100)

    @model_validator(mode="after")
    def _scale_range(self) -> SyntheticSection:
        lo, hi = self.object_scale
        if not 0.05 <= lo <= hi <= 1.0:
            raise ValueError(f"object_scale must satisfy 0.05 <= low <= high <= 1, got {self.object_scale}")
        return self


class AugmentSection(Section):
    hflip: float = Field(0.5, ge=0, le=1)
    degrees: float = Field(15.0, ge=0, le=180)
    translate: float = Field(0.05, ge=0, le=0.5)
    scale: tuple[float, float] = (0.9, 1.1)
    color_jitter: float = Field(0.1, ge=0, le=1)
    planckian_jitter: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of PlanckianJitter (blackbody), as the reference's cub_original.",
    )


class LoaderSection(Section):
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(2, ge=0)
    pin_memory: bool = True


class DataSection(Section):
    dataset: Literal[
        "synthetic", "waterbirds", "cub", "cub_waterbirds", "metashift", "imagenet", "imagenet9"
    ] = "synthetic"
    root: str | None = Field(None, description="Dataset directory; default <base.data_dir>/<dataset>.")
    download: bool = Field(False, description="Download the public archives of the dataset if missing.")
    image_size: int = Field(64, ge=16, le=1024, description="Model input side, pixels.")
    mask_dir: str | None = Field(None, description="Optional directory of ground-truth foreground masks.")
    in9_mapping: str | None = Field(None, description="Path of in_to_in9.json for ImageNet-9 evaluation.")
    metashift_val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of MetaShift test carved as val."
    )
    cub_val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of CUB train held out as val (per class)."
    )
    synthetic: SyntheticSection = SyntheticSection()
    augment: AugmentSection = AugmentSection()
    loader: LoaderSection = LoaderSection()


# --------------------------------------------------------------------------------------------------- model
class BackboneSection(Section):
    """A timm ViT. ``name`` is any timm VisionTransformer; ``kwargs`` override its architecture."""

    name: str = "vit_tiny_patch16_224"
    kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3},
        description="Architecture overrides passed to timm.create_model "
        "(patch_size, embed_dim, reg_tokens, ...).",
    )
    pretrained: bool = Field(
        False, description="Load timm pretrained weights (needs the hub or a local file)."
    )
    checkpoint_path: str | None = Field(None, description="Local weights file for the backbone (offline).")
    pos_embed_init: Literal["timm", "sincos"] = Field(
        "timm",
        description="Initial position embedding of a randomly initialised backbone: timm's (trunc-normal, "
        "std 0.02) or a 2-D sin-cos table (MAE, MoCo v3; still trained). A small ViT from scratch needs the "
        "sin-cos start to learn shapes in a few epochs. "
        "Loaded weights (pretrained, checkpoint_path) replace it.",
    )
    drop_path_stage1: float = Field(0.0, ge=0, lt=1)
    drop_path_stage2: float = Field(0.0, ge=0, lt=1)


class ModelSection(Section):
    backbone: BackboneSection = BackboneSection()
    num_parts: int = Field(4, ge=1, le=64, description="K foreground parts (plus one background part).")
    gumbel_tau: float = Field(1.0, gt=0)
    gumbel_softmax: bool = True
    stochastic_eval: bool = Field(False, description="Reproduce the reference's Gumbel noise at evaluation.")
    part_dropout: float = Field(
        0.3, ge=0, lt=1, description="Dropout1d on part features before stage-1 head."
    )
    part_dropout_stage2: float = Field(0.3, ge=0, lt=1, description="Whole-part dropout of the stage-2 mask.")
    mask_grad: Literal["none", "ste"] = "none"
    stage2_impl: Literal["packed", "dense"] = "packed"
    stage1_position_free: bool = Field(
        False,
        description="Stage 1 without position embedding (not in the paper): its part maps then follow what a "
        "patch and its context look like, never where the patch is, so the centre/border presence priors can "
        "only be met by the object's appearance. Stage 2 keeps its positions.",
    )
    freeze_backbone: bool = Field(False, description="Freeze stage-1 ViT except prefix tokens and pos-embed.")
    freeze_params_stage1: bool = False
    freeze_stage2: bool = False
    freeze_params_stage2: bool = False
    oracle_patch_threshold: float = Field(
        0.5, gt=0, le=1, description="oracle_mask: a patch is foreground when this share of its pixels is."
    )


# --------------------------------------------------------------------------------------------------- loss
class LossSection(Section):
    classification_stage2: float = Field(1.0, ge=0)
    classification_stage1: float = Field(1.0, ge=0)
    presence: float = Field(1.0, ge=0)
    enforced_presence: float = Field(2.0, ge=0)
    foreground_presence: float = Field(
        0.0,
        ge=0,
        description="Per-image foreground presence (not in the paper; 0 = off): every image must have a 3x3 "
        "block of foreground tokens. The prior a from-scratch stage 1 lacks (losses/part_priors.py).",
    )
    equivariance: float = Field(1.0, ge=0)
    orthogonality: float = Field(1.0, ge=0)
    total_variation: float = Field(1.0, ge=0)
    entropy: float = Field(1.0, ge=0)
    concentration: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    eq_degrees: float = Field(90.0, ge=0, le=180)
    eq_translate: float = Field(0.11, ge=0, le=0.5)
    eq_scale: tuple[float, float] = (0.8, 1.4)


# --------------------------------------------------------------------------------------------------- optim
class OptimSection(Section):
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="Base learning rate at reference_batch_size.")
    reference_batch_size: int = Field(64, ge=1, description="Batch the base lr is given for.")
    sqrt_batch_scaling: bool = Field(True, description="lr *= sqrt(effective_batch / reference_batch_size).")
    scratch_lr_factor: float = Field(1.0, gt=0)
    modulation_lr_factor: float = Field(1.0, gt=0)
    finer_lr_factor: float = Field(1.0, gt=0)
    stage2_lr_factor: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    normalized_weight_decay: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = Field(15, ge=1)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float = Field(2.0, ge=0, description="Max global grad norm; 0 disables.")
    grad_accumulation: int = Field(1, ge=1)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"


# --------------------------------------------------------------------------------------------------- train
class TrainSection(Section):
    variants: tuple[Variant, ...] = ("baseline_vit", "two_stage_hard", "oracle_mask")
    seeds: tuple[int, ...] = (0, 1, 2)
    checkpoint_every_steps: int = Field(50, ge=1)
    log_every_steps: int = Field(10, ge=1)
    compile: bool = False
    deterministic: bool = True
    num_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads of a training process on CPU (0 = torch's default). A tiny ViT's "
        "small matmuls scale badly: one thread per job with cluster.array_parallelism jobs at once "
        "is faster.",
    )

    @model_validator(mode="after")
    def _non_empty(self) -> TrainSection:
        if not self.variants or not self.seeds:
            raise ValueError("train.variants and train.seeds must not be empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"train.seeds has duplicates: {self.seeds}")
        return self


# --------------------------------------------------------------------------------------------------- cluster
class SlurmSection(Section):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = Field(60, ge=1)
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int = Field(1, ge=1, description="One task per GPU; set equal to gpus_per_node on GPUs.")
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: float = Field(4, gt=0)
    additional_parameters: dict[str, Any] = Field(default_factory=dict, description="Extra sbatch options.")
    setup: tuple[str, ...] = Field((), description="Shell lines run before the job (module load, ...).")
    max_num_timeout: int = Field(3, ge=0, description="Requeues allowed on timeout/preemption.")


class ClusterSection(Section):
    executor: Literal["local", "debug", "slurm"] = "local"
    logs_dir: str = "logs/submitit"
    array_parallelism: int = Field(1, ge=1, description="Jobs of an array that may run at once.")
    local_tasks: int = Field(1, ge=1, description="Processes per job with the local executor (DDP on gloo).")
    poll_interval_s: float = Field(2.0, gt=0)
    slurm: SlurmSection = SlurmSection()


# --------------------------------------------------------------------------------------------------- tracking
class TrackingSection(Section):
    uri: str = Field(
        "sqlite:///mlflow.db", description="MLflow tracking URI; MLFLOW_TRACKING_URI wins if set."
    )
    experiment: str = "hardmask"
    log_system_metrics: bool = False


# --------------------------------------------------------------------------------------------------- evaluate
class EvaluateSection(Section):
    splits: tuple[str, ...] = ("val", "test", "only_fg", "mixed_rand", "mixed_same", "only_bg")
    checkpoint: Literal["best", "last"] = "best"
    threshold_quantiles: tuple[float, ...] = (0.01, 0.05, 0.10)
    default_threshold_quantile: float = Field(0.05, gt=0, lt=1)
    leave_one_part_out: bool = True
    remove_parts: tuple[int, ...] = Field((), description="Part ids to remove in a user intervention.")


class ReportSection(Section):
    overlay_per_group: int = Field(4, ge=0, le=32)
    html: bool = True


class Config(Section):
    base: BaseSection = BaseSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    loss: LossSection = LossSection()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    cluster: ClusterSection = ClusterSection()
    tracking: TrackingSection = TrackingSection()
    evaluate: EvaluateSection = EvaluateSection()
    report: ReportSection = ReportSection()

    # ----------------------------------------------------------------------------------------- helpers
    @property
    def data_root(self) -> Path:
        return Path(self.data.root) if self.data.root else Path(self.base.data_dir) / self.data.dataset

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able data (tuples become lists)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------- loading
def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=1e-3"`` -> ``{"optim": {"lr": 0.001}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            lines.append(
                f"  - {key}: unknown key (check its spelling against the schema in hardmask/config.py)"
            )
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {err['msg']}{got_s}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(
    path: str | Path = "params.yaml",
    overrides: list[str] | tuple[str, ...] = (),
    root: str | Path | None = None,
) -> Config:
    """Load ``params.yaml``, merge the selected preset, then ``overrides``; validate the result."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    data = _read_yaml(path)
    sources = [str(path)]
    override_dicts = [parse_override(o) for o in overrides]
    preset = data.get("base", {}).get("preset") if isinstance(data.get("base"), dict) else None
    for o in override_dicts:  # a preset chosen on the command line wins over the file's
        preset = o.get("base", {}).get("preset", preset)
    if preset:
        preset_path = root / preset
        data = deep_merge(data, _read_yaml(preset_path))
        sources.append(str(preset_path))
    for o in override_dicts:
        data = deep_merge(data, o)
    return config_from_dict(data, source=" + ".join(sources))


def save_config(cfg: Config, path: str | Path) -> None:
    from hardmask.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.dump(), sort_keys=False))


def stage_cli(
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> tuple[Config, argparse.Namespace]:
    """The command line every ``stages/*.py`` shares: ``--params FILE`` and repeatable ``--set KEY=VALUE``.

    Sets up logging and returns the validated config with the parsed arguments. A configuration error
    ends the process with its message (which names the file and key) and exit status 2, not a traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="the config file (default: %(default)s)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load_config(args.params, overrides=args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, args
