"""CUB-200-2011 (200 bird species) and its Waterbirds-background test set (CUB -> Waterbirds, "Waterbird200").

Layout (the official archive, plus the optional segmentation archive)::

    <root>/CUB_200_2011/images.txt              "<image id> <class_dir>/<file>.jpg"
    <root>/CUB_200_2011/image_class_labels.txt  "<image id> <class 1..200>"
    <root>/CUB_200_2011/train_test_split.txt    "<image id> <1 = train | 0 = test>"
    <root>/CUB_200_2011/classes.txt             "<class id> <class_dir>"       (optional: names)
    <root>/CUB_200_2011/images/<class_dir>/<file>.jpg
    <root>/CUB_200_2011/segmentations/<class_dir>/<file>.png                   (optional: masks)

Splits: ``train`` (train minus a held-out share per class), ``val`` (that share, for model selection; the
reference selects on test, method spec §10.6), ``test``. For CUB -> Waterbirds, the same test images are read
from the Waterbirds folder (``image_root``; identical relative paths, each bird pasted on a Places scene).
Groups are the classes (one place).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from hardmask.data.common import DataError, GroupedImageDataset, ImageRecords, carve_fraction, require_dir
from hardmask.data.groups import GroupSpec

CUB_FOLDER = "CUB_200_2011"
CUB_SPLITS = ("train", "val", "test")
_HINT = "Download CUB-200-2011 (docs/datasets.md; `data.download: true`) and point `data.root` at its folder."


def resolve_cub_root(root: str | Path) -> Path:
    """``root`` when it holds images.txt, else ``root/CUB_200_2011``."""
    root = require_dir(Path(root), "CUB-200-2011", _HINT)
    for candidate in (root, root / CUB_FOLDER):
        if (candidate / "images.txt").is_file():
            return candidate
    raise DataError(
        f"{root / 'images.txt'}: file not found (neither in {root} nor in {root / CUB_FOLDER}). {_HINT}"
    )


def _read_table(path: Path, names: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found. {_HINT}")
    table = pd.read_csv(path, sep=r"\s+", header=None, names=names, dtype=str)
    if table.isna().any().any():
        row = int(table.isna().any(axis=1).to_numpy().argmax())
        raise DataError(f"{path}: line {row + 1} does not have {len(names)} fields ({', '.join(names)})")
    return table


def read_cub_table(cub_root: Path) -> pd.DataFrame:
    """One row per image: ``file, label (0..199), is_train``."""
    images = _read_table(cub_root / "images.txt", ["image_id", "file"])
    labels = _read_table(cub_root / "image_class_labels.txt", ["image_id", "class_id"])
    split = _read_table(cub_root / "train_test_split.txt", ["image_id", "is_train"])
    table = images.merge(labels, on="image_id", how="left").merge(split, on="image_id", how="left")
    for column, source in (("class_id", "image_class_labels.txt"), ("is_train", "train_test_split.txt")):
        if table[column].isna().any():
            missing = table.loc[table[column].isna(), "image_id"].iloc[0]
            raise DataError(f"{cub_root / source}: no entry for image id {missing} of images.txt")
    table["label"] = table["class_id"].astype(int) - 1
    table["is_train"] = table["is_train"].astype(int) == 1
    return table


def _class_names(cub_root: Path, table: pd.DataFrame) -> tuple[str, ...]:
    num_classes = int(table["label"].max()) + 1
    class_dir = table["file"].str.split("/", n=1).str[0].groupby(table["label"]).first()
    return tuple(re.sub(r"^\d+\.", "", class_dir.get(c, f"class{c}")) for c in range(num_classes))


class CUBDataset(GroupedImageDataset):
    """One split of CUB-200-2011; ``image_root`` reads the images elsewhere (the Waterbirds folder)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform=None,
        mask_dir: str | Path | None = None,
        image_root: str | Path | None = None,
        val_fraction: float = 0.1,
    ) -> None:
        if split not in CUB_SPLITS:
            raise DataError(f"CUB split '{split}' unknown; expected one of {', '.join(CUB_SPLITS)}")
        self.root = resolve_cub_root(root)
        table = read_cub_table(self.root)
        spec = GroupSpec(_class_names(self.root, table))
        is_train = table["is_train"].to_numpy()
        held_out = np.zeros(len(table), dtype=bool)
        train_rows = table[is_train]
        held_out[is_train] = carve_fraction(train_rows["file"], train_rows["label"].to_numpy(), val_fraction)
        chosen = {"train": is_train & ~held_out, "val": held_out, "test": ~is_train}[split]
        rows = table[chosen]

        images = Path(image_root) if image_root is not None else self.root / "images"
        require_dir(images, "CUB images", _HINT)
        mask_root = Path(mask_dir) if mask_dir is not None else self.root / "segmentations"
        if mask_dir is not None:
            require_dir(mask_root, "mask", "Check `data.mask_dir` (CUB_200_2011/segmentations).")
        records = ImageRecords.single_place(
            images, rows["file"].tolist(), rows["label"].tolist(), mask_root if mask_root.is_dir() else None
        )
        super().__init__(records, spec, transform, description=f"CUB {images} split '{split}'")
        self.split = split
