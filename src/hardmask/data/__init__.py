"""Datasets of hardmask: the built-in benchmark and the paper's real datasets, one sample format for all.

``build_dataset(cfg, split, train)`` is the entry point of the other packages; the sample keys and dataset
attributes are specified in docs/architecture.md and documented in :mod:`hardmask.data.common`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hardmask.config import Config
from hardmask.data.common import DECODED, DataError, GroupedImageDataset, ImageRecords
from hardmask.data.cub import CUBDataset, resolve_cub_root
from hardmask.data.download import download, ensure_dataset, extract_archive
from hardmask.data.groups import GroupSpec
from hardmask.data.imagenet import IN9_VARIANTS, ImageNet9Dataset, ImageNetDataset, load_in9_mapping
from hardmask.data.loaders import make_loader
from hardmask.data.metashift import MetaShiftDataset
from hardmask.data.synthetic import SyntheticManifest, generate_synthetic, is_up_to_date
from hardmask.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform
from hardmask.data.waterbirds import SPLIT_CODES, WaterbirdsDataset, resolve_waterbirds_root

__all__ = [
    "CUBDataset",
    "DataError",
    "GroupSpec",
    "GroupedImageDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IN9_VARIANTS",
    "ImageNet9Dataset",
    "ImageNetDataset",
    "ImageRecords",
    "MetaShiftDataset",
    "SPLIT_CODES",
    "SyntheticManifest",
    "WaterbirdsDataset",
    "build_dataset",
    "build_eval_transform",
    "build_train_transform",
    "download",
    "ensure_dataset",
    "eval_crop_pct",
    "extract_archive",
    "generate_synthetic",
    "is_up_to_date",
    "load_in9_mapping",
    "make_loader",
]

IMAGENET_EVAL_CROP_PCT = 0.875  # timm's centre crop for ImageNet at < 384 px (method spec §4.1)
CUB_WATERBIRDS_SPLIT = "cub_waterbirds"


def eval_crop_pct(dataset: str, split: str) -> float:
    """timm's centre-crop fraction of ``dataset``'s evaluation transform for ``split``: ImageNet-1k images
    (``imagenet`` outside the ImageNet-9 variants, ``imagenet9``'s train split) are cropped, others not."""
    imagenet_1k = (dataset == "imagenet" and split not in IN9_VARIANTS) or (
        dataset == "imagenet9" and split == "train"
    )
    return IMAGENET_EVAL_CROP_PCT if imagenet_1k else 1.0


def build_dataset(
    cfg: Config,
    split: str,
    train: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> GroupedImageDataset:
    """The ``split`` of ``cfg.data.dataset`` with training (``train=True``) or evaluation transforms.

    ``split`` is ``train | val | test`` or a dataset-specific evaluation set: the benchmark's OOD variants
    (``only_fg | mixed_rand | mixed_same | only_bg``), ``cub_waterbirds`` (CUB test images on Waterbirds
    backgrounds) and the ImageNet-9 variants (``original | mixed_same | mixed_rand | ...``, for ``imagenet``
    read from ``<base.data_dir>/imagenet9``; for ``imagenet9``, val/test mean ``original`` and train is the
    ImageNet-1k training split of ``<base.data_dir>/imagenet``). ``mean``/``std``: the model's normalisation.
    """
    data, root, name = cfg.data, cfg.data_root, cfg.data.dataset
    DECODED.resize(data.loader.cache_mb)
    if train:
        transform = build_train_transform(data.image_size, data.augment, mean, std)
    else:
        transform = build_eval_transform(data.image_size, mean, std, crop_pct=eval_crop_pct(name, split))

    if name in ("synthetic", "waterbirds"):
        return WaterbirdsDataset(root, split, transform, mask_dir=data.mask_dir)
    if name == "cub":
        return CUBDataset(root, split, transform, mask_dir=data.mask_dir, val_fraction=data.cub_val_fraction)
    if name == "cub_waterbirds":
        image_root = None
        if split == CUB_WATERBIRDS_SPLIT:
            cub_root = resolve_cub_root(root)
            image_root = resolve_waterbirds_root(
                cub_root if (cub_root / "waterbird_complete95_forest2water2").is_dir() else root
            )
            split = "test"
        return CUBDataset(
            root,
            split,
            transform,
            mask_dir=data.mask_dir,
            image_root=image_root,
            val_fraction=data.cub_val_fraction,
        )
    if name == "metashift":
        return MetaShiftDataset(root, split, transform, val_fraction=data.metashift_val_fraction)
    if name == "imagenet":
        if split in IN9_VARIANTS:
            return ImageNet9Dataset(
                Path(cfg.base.data_dir) / "imagenet9", split, transform, mapping=data.in9_mapping
            )
        return ImageNetDataset(root, split, transform)
    if name == "imagenet9":
        if split == "train":  # IN-9 evaluates ImageNet-1k models: their training split (thresholds, classes)
            return ImageNetDataset(Path(cfg.base.data_dir) / "imagenet", "train", transform)
        variant = "original" if split in ("val", "test") else split
        return ImageNet9Dataset(root, variant, transform, mapping=data.in9_mapping)
    raise DataError(f"data.dataset '{name}' has no loader")  # unreachable while config.py's Literal matches
