"""ImageNet-1k (class folders) and the ImageNet-9 Backgrounds Challenge (Xiao et al. 2021).

ImageNet-1k layout: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (validation images sorted
into class folders); ``test`` means ``val`` (the test labels are not public). An optional
``LOC_synset_mapping.txt`` (``<wnid> <names>``) gives readable class names.

ImageNet-9 layout (the release archive): ``<root>/bg_challenge/<variant>/val/<class>/*`` with class folders
``00_dog ... 08_insect`` and ``in_to_in9.json`` mapping each ImageNet class index to an IN-9 class (-1: none).
A 1000-way model is scored on IN-9 by mapping its prediction through :attr:`ImageNet9Dataset.in_to_in9`.
Groups are the classes (one place) for both.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from hardmask.data.common import DataError, GroupedImageDataset, ImageRecords, list_images, require_dir
from hardmask.data.groups import GroupSpec

IN9_VARIANTS = (
    "original",
    "mixed_same",
    "mixed_rand",
    "mixed_next",
    "only_fg",
    "no_fg",
    "only_bg_b",
    "only_bg_t",
)
IN1K_CLASSES = 1000
MAPPING_FILE = "in_to_in9.json"
_IN1K_HINT = (
    "ImageNet-1k cannot be downloaded automatically: get it from https://image-net.org/download.php, sort "
    "the validation images into class folders and point `data.root` at the folder holding train/ and val/."
)
_IN9_HINT = (
    "Download the Backgrounds Challenge data (docs/datasets.md; `data.download: true` with dataset "
    "imagenet9) so that <root>/bg_challenge/<variant>/val/<class>/ exists."
)


def _class_dirs(directory: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


class ImageNetDataset(GroupedImageDataset):
    def __init__(self, root: str | Path, split: str, transform=None) -> None:
        if split not in ("train", "val", "test"):
            raise DataError(f"ImageNet split '{split}' unknown; expected train, val or test (= val)")
        self.root = require_dir(Path(root), "ImageNet", _IN1K_HINT)
        split_dir = require_dir(
            self.root / ("train" if split == "train" else "val"), "ImageNet split", _IN1K_HINT
        )
        wnids = _class_dirs(self.root / "train" if (self.root / "train").is_dir() else split_dir)
        files, labels = [], []
        for label, wnid in enumerate(wnids):
            class_dir = split_dir / wnid
            if class_dir.is_dir():
                names = sorted(e.name for e in os.scandir(class_dir) if e.is_file())
                files += [f"{wnid}/{name}" for name in names]
                labels += [label] * len(names)
        records = ImageRecords.single_place(split_dir, files, labels)
        spec = GroupSpec(self._names(wnids))
        super().__init__(records, spec, transform, description=f"ImageNet {split_dir}")
        self.split = split

    def _names(self, wnids: list[str]) -> tuple[str, ...]:
        mapping = self.root / "LOC_synset_mapping.txt"
        if not mapping.is_file():
            return tuple(wnids)
        names = {}
        for line in mapping.read_text().splitlines():
            wnid, _, text = line.partition(" ")
            names[wnid] = text.split(",")[0].strip()
        readable = [names.get(w, w) for w in wnids]
        # a few ImageNet names repeat (e.g. "crane"); keep the wnid there so group names stay unique
        return tuple(n if readable.count(n) == 1 else f"{n} ({w})" for n, w in zip(readable, wnids))


def resolve_in9_root(root: str | Path) -> Path:
    """The folder holding the variant folders: ``root/bg_challenge`` or ``root`` itself."""
    root = require_dir(Path(root), "ImageNet-9", _IN9_HINT)
    for candidate in (root / "bg_challenge", root):
        if (candidate / "original").is_dir():
            return candidate
    raise DataError(f"{root}: no bg_challenge/original/ (nor original/) folder. {_IN9_HINT}")


def load_in9_mapping(path: str | Path) -> np.ndarray:
    """int64 [1000]: IN-9 class of each ImageNet class index, -1 where unmapped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: in_to_in9.json not found. {_IN9_HINT}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    mapping = np.full(IN1K_CLASSES, -1, dtype=np.int64)
    for key, value in raw.items():
        if not 0 <= int(key) < IN1K_CLASSES:
            raise DataError(f"{path}: ImageNet class index {key} out of range [0, {IN1K_CLASSES})")
        mapping[int(key)] = int(value)
    return mapping


class ImageNet9Dataset(GroupedImageDataset):
    """One ImageNet-9 variant (evaluation only); labels are IN-9 classes 0..8."""

    def __init__(
        self, root: str | Path, variant: str, transform=None, mapping: str | Path | None = None
    ) -> None:
        if variant not in IN9_VARIANTS:
            raise DataError(
                f"ImageNet-9 variant '{variant}' unknown; expected one of {', '.join(IN9_VARIANTS)}"
            )
        self.root = resolve_in9_root(root)
        split_dir = require_dir(self.root / variant / "val", f"ImageNet-9 {variant}", _IN9_HINT)
        classes = _class_dirs(split_dir)
        files, labels = [], []
        for label, class_dir in enumerate(classes):
            found = [str(p.relative_to(split_dir)) for p in list_images(split_dir / class_dir)]
            files += found
            labels += [label] * len(found)
        records = ImageRecords.single_place(split_dir, files, labels)
        spec = GroupSpec(tuple(re.sub(r"^\d+_", "", c) for c in classes))
        super().__init__(records, spec, transform, description=f"ImageNet-9 {split_dir}")
        self.split = variant
        if mapping is None:  # the release keeps in_to_in9.json beside bg_challenge/
            mapping = next(
                (p for p in (self.root.parent / MAPPING_FILE, self.root / MAPPING_FILE) if p.is_file()), None
            )
        self.in_to_in9 = load_in9_mapping(mapping) if mapping is not None else None
