"""The one configuration schema of hardmask: types, ranges and meaning of every key, and no values.

Every section is a pydantic model with ``extra="forbid"`` and no defaults: an unknown or misspelled key, a
missing key, a wrong type or an out-of-range value is an error. The values live in one place, the Hydra tree
``conf/`` that DVC composes into ``params.yaml`` (see :mod:`hardmask.config.loading`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- base
class BaseSection(Section):
    seed: int = Field(ge=0, description="Seed of everything that is not a training seed (data generation).")
    data_dir: str = Field(description="Where datasets live: <data_dir>/<data.dataset>.")
    runs_dir: str = Field(description="Training runs: <runs_dir>/<variant>/seed<k>/.")
    reports_dir: str = Field(description="Evaluation tables, metrics and the report.")
    device: Literal["auto", "cpu", "cuda"]


# --------------------------------------------------------------------------------------------------- data
class SyntheticSection(Section):
    """The built-in spurious-background benchmark (written in the Waterbirds on-disk format)."""

    image_size: int = Field(ge=16, le=1024, description="Side of the generated square images, pixels.")
    n_train: int = Field(ge=8)
    n_val: int = Field(ge=8)
    n_test: int = Field(ge=8)
    n_ood: int = Field(ge=8, description="Images per ImageNet-9-style OOD variant.")
    n_classes: int = Field(ge=2, le=4)
    n_places: int = Field(ge=2, le=4)
    spurious_prob: float = Field(ge=0.0, le=1.0, description="P(place == class's place) in train.")
    object_scale: tuple[float, float] = Field(description="Object extent / image side, range.")
    rotation_deg: float = Field(ge=0, le=180)
    ood_variants: tuple[Literal["only_fg", "mixed_rand", "mixed_same", "only_bg"], ...]
    jpeg_quality: int = Field(ge=50, le=100)

    @model_validator(mode="after")
    def _scale_range(self) -> SyntheticSection:
        lo, hi = self.object_scale
        if not 0.05 <= lo <= hi <= 1.0:
            raise ValueError(f"object_scale must satisfy 0.05 <= low <= high <= 1, got {self.object_scale}")
        return self


class AugmentSection(Section):
    hflip: float = Field(ge=0, le=1)
    degrees: float = Field(ge=0, le=180)
    translate: float = Field(ge=0, le=0.5)
    scale: tuple[float, float]
    color_jitter: float = Field(ge=0, le=1)
    planckian_jitter: float = Field(
        ge=0, le=1, description="Probability of PlanckianJitter (blackbody), as the reference's cub_original."
    )


class LoaderSection(Section):
    batch_size: int = Field(ge=1, description="Training images per process and step.")
    eval_batch_size: int = Field(ge=1)
    num_workers: int = Field(ge=0)
    pin_memory: bool
    cache_mb: float = Field(
        ge=0,
        description="Decoded image and mask files a process keeps in memory (0 = none): an epoch, or the "
        "evaluation of the next run, then decodes nothing again. Results do not depend on it.",
    )


class DataSection(Section):
    dataset: Literal["synthetic", "waterbirds", "cub", "cub_waterbirds", "metashift", "imagenet", "imagenet9"]
    root: str | None = Field(description="Dataset directory; null = <base.data_dir>/<dataset>.")
    download: bool = Field(description="Download the public archives of the dataset if missing.")
    image_size: int = Field(ge=16, le=1024, description="Model input side, pixels.")
    mask_dir: str | None = Field(description="Optional directory of ground-truth foreground masks.")
    in9_mapping: str | None = Field(description="Path of in_to_in9.json for ImageNet-9 evaluation.")
    metashift_val_fraction: float = Field(gt=0, lt=1, description="Share of MetaShift test carved as val.")
    cub_val_fraction: float = Field(gt=0, lt=1, description="Share of CUB train held out as val (per class).")
    synthetic: SyntheticSection
    augment: AugmentSection
    loader: LoaderSection


# --------------------------------------------------------------------------------------------------- model
class BackboneSection(Section):
    """A timm ViT. ``name`` is any timm VisionTransformer; ``kwargs`` override its architecture."""

    name: str
    kwargs: dict[str, Any] = Field(
        description="Architecture overrides passed to timm.create_model (patch_size, embed_dim, ...)."
    )
    pretrained: bool = Field(description="Load timm pretrained weights (needs the hub or a local file).")
    checkpoint_path: str | None = Field(description="Local weights file for the backbone (offline).")
    pos_embed_init: Literal["timm", "sincos"] = Field(
        description="Initial position embedding of a randomly initialised backbone: timm's (trunc-normal, "
        "std 0.02) or a 2-D sin-cos table (MAE, MoCo v3; still trained). Loaded weights replace it."
    )
    drop_path_stage1: float = Field(ge=0, lt=1)
    drop_path_stage2: float = Field(ge=0, lt=1)


class ModelSection(Section):
    backbone: BackboneSection
    num_parts: int = Field(ge=1, le=64, description="K foreground parts (plus one background part).")
    gumbel_tau: float = Field(gt=0)
    gumbel_softmax: bool
    stochastic_eval: bool = Field(description="Reproduce the reference's Gumbel noise at evaluation.")
    part_dropout: float = Field(ge=0, lt=1, description="Dropout1d on part features before the stage-1 head.")
    part_dropout_stage2: float = Field(ge=0, lt=1, description="Whole-part dropout of the stage-2 mask.")
    mask_grad: Literal["none", "ste"]
    stage2_impl: Literal["packed", "dense"]
    stage1_position_free: bool = Field(
        description="Stage 1 without position embedding (not in the paper): its part maps then follow what a "
        "patch and its context look like, never where the patch is. Stage 2 keeps its positions."
    )
    freeze_backbone: bool = Field(description="Freeze stage-1 ViT except prefix tokens and pos-embed.")
    freeze_params_stage1: bool
    freeze_stage2: bool
    freeze_params_stage2: bool
    oracle_patch_threshold: float = Field(
        gt=0, le=1, description="oracle_mask and fg IoU: a patch is foreground when this share of it is."
    )


# --------------------------------------------------------------------------------------------------- loss
class LossSection(Section):
    """Loss weights (0 = the term is not computed) and the equivariance transform (method spec §2)."""

    classification_stage2: float = Field(ge=0)
    classification_stage1: float = Field(ge=0)
    presence: float = Field(ge=0)
    enforced_presence: float = Field(ge=0)
    foreground_presence: float = Field(
        ge=0,
        description="Per-image foreground presence (not in the paper): every image must have a 3x3 block of "
        "foreground tokens. The prior a from-scratch stage 1 lacks (losses/part_priors.py).",
    )
    equivariance: float = Field(ge=0)
    orthogonality: float = Field(ge=0)
    total_variation: float = Field(ge=0)
    entropy: float = Field(ge=0)
    concentration: float = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    eq_degrees: float = Field(ge=0, le=180)
    eq_translate: float = Field(ge=0, le=0.5)
    eq_scale: tuple[float, float]
    group_dro_step_size: float = Field(
        gt=0, description="Step size eta of the group weights of the group_dro variant (Sagawa et al.: 0.01)."
    )


# --------------------------------------------------------------------------------------------------- optim
class OptimSection(Section):
    optimizer: Literal["adamw", "adam", "sgd"]
    lr: float = Field(gt=0, description="Base learning rate at reference_batch_size.")
    reference_batch_size: int = Field(ge=1, description="Batch the base lr is given for.")
    sqrt_batch_scaling: bool = Field(description="lr *= sqrt(effective_batch / reference_batch_size).")
    scratch_lr_factor: float = Field(gt=0)
    modulation_lr_factor: float = Field(gt=0)
    finer_lr_factor: float = Field(gt=0)
    stage2_lr_factor: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    normalized_weight_decay: bool
    betas: tuple[float, float]
    epochs: int = Field(ge=1)
    warmup_epochs: float = Field(ge=0)
    min_lr_ratio: float = Field(ge=0, le=1)
    grad_clip: float = Field(ge=0, description="Max global grad norm; 0 disables.")
    grad_accumulation: int = Field(ge=1)
    ema_decay: float | None = Field(gt=0, lt=1)
    amp: Literal["auto", "bf16", "fp16", "off"]


# --------------------------------------------------------------------------------------------------- train
class TrainSection(Section):
    variants: tuple[str, ...] = Field(description="Model variants (hardmask.models.variants) to train.")
    seeds: tuple[int, ...]
    checkpoint_every_steps: int = Field(ge=1)
    log_every_steps: int = Field(ge=1)
    compile: bool
    deterministic: bool
    num_threads: int = Field(
        ge=0,
        description="torch intra-op threads of a training process on CPU (0 = torch's default). A tiny ViT's "
        "small matmuls scale badly: one thread per job, cluster.array_parallelism jobs at once, is faster.",
    )

    @model_validator(mode="after")
    def _non_empty(self) -> TrainSection:
        if not self.variants or not self.seeds:
            raise ValueError("train.variants and train.seeds must not be empty")
        for name, values in (("variants", self.variants), ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise ValueError(f"train.{name} has duplicates: {values}")
        return self


# --------------------------------------------------------------------------------------------------- cluster
class SlurmSection(Section):
    partition: str | None
    account: str | None
    qos: str | None
    time_min: int = Field(ge=1)
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    tasks_per_node: int = Field(ge=1, description="One task per GPU; set equal to gpus_per_node on GPUs.")
    cpus_per_task: int = Field(ge=1)
    mem_gb: float = Field(gt=0)
    additional_parameters: dict[str, Any] = Field(description="Extra sbatch options.")
    setup: tuple[str, ...] = Field(description="Shell lines run before the job (module load, ...).")
    max_num_timeout: int = Field(ge=0, description="Requeues allowed on timeout/preemption.")


class ClusterSection(Section):
    executor: Literal["local", "debug", "slurm"]
    logs_dir: str
    array_parallelism: int = Field(ge=1, description="Jobs of an array that may run at once.")
    local_tasks: int = Field(ge=1, description="Processes per job with the local executor (DDP on gloo).")
    poll_interval_s: float = Field(gt=0)
    slurm: SlurmSection


# --------------------------------------------------------------------------------------------------- tracking
class TrackingSection(Section):
    uri: str = Field(description="MLflow tracking URI; MLFLOW_TRACKING_URI wins if set.")
    experiment: str
    log_system_metrics: bool
    log_checkpoints: bool = Field(
        description="Log each run's best.pt as an MLflow artifact, so that MLflow alone can reload the model "
        "(the file is copied: turn it off for very large models)."
    )


# --------------------------------------------------------------------------------------------------- evaluate
class EvaluateSection(Section):
    splits: tuple[str, ...]
    checkpoint: Literal["best", "last"]
    threshold_quantiles: tuple[float, ...]
    default_threshold_quantile: float = Field(gt=0, lt=1)
    leave_one_part_out: bool
    remove_parts: tuple[int, ...] = Field(description="Part ids to remove in a user intervention.")
    workers: int = Field(ge=1, description="Runs evaluated at once, by as many processes.")


class ReportSection(Section):
    overlay_per_group: int = Field(ge=0, le=32)
    html: bool


class Config(Section):
    base: BaseSection
    data: DataSection
    model: ModelSection
    loss: LossSection
    optim: OptimSection
    train: TrainSection
    cluster: ClusterSection
    tracking: TrackingSection
    evaluate: EvaluateSection
    report: ReportSection

    @property
    def data_root(self) -> Path:
        return Path(self.data.root) if self.data.root else Path(self.base.data_dir) / self.data.dataset

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able data (tuples become lists)."""
        return self.model_dump(mode="json")
