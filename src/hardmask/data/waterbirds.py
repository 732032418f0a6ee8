"""The Waterbirds on-disk format (Sagawa et al. 2020), shared by the real dataset and the built-in benchmark.

Layout::

    <root>/metadata.csv                 img_id, img_filename, y, split, place  (+ optional columns)
    <root>/<class_dir>/<name>.jpg       img_filename is this relative path
    <root>/masks/<class_dir>/<name>.png optional binary foreground masks (generated benchmark)
    <root>/parts/<class_dir>/<name>.png optional part-id masks, 0 = background (generated benchmark)

``split`` is 0/1/2 = train/val/test. The generated benchmark adds its out-of-distribution variants to the same
file with codes 3.. (:data:`SPLIT_CODES`) and a ``split_name`` column; ``place_name`` names the places. The
real dataset (``waterbird_complete95_forest2water2``) has neither: its places are land/water and its classes
landbird/waterbird. Its optional ground truth are the CUB ``segmentations`` (pass ``mask_dir``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from hardmask.data.common import DataError, GroupedImageDataset, ImageRecords, require_dir
from hardmask.data.groups import GroupSpec

REQUIRED_COLUMNS = ("img_id", "img_filename", "y", "split", "place")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "only_fg": 3, "mixed_rand": 4, "mixed_same": 5, "only_bg": 6}
WATERBIRDS_FOLDER = "waterbird_complete95_forest2water2"
REAL_CLASS_NAMES = ("landbird", "waterbird")
REAL_PLACE_NAMES = ("land", "water")
_HINT = (
    "Generate the built-in benchmark with `python stages/prepare.py`, or download Waterbirds "
    "(see docs/datasets.md; `data.download: true` fetches it) and point `data.root` at the folder holding "
    "metadata.csv."
)


def resolve_waterbirds_root(root: str | Path) -> Path:
    """``root`` itself when it holds metadata.csv, else the extracted tarball's folder below it."""
    root = require_dir(Path(root), "Waterbirds", _HINT)
    if (root / "metadata.csv").is_file():
        return root
    for candidate in (root / WATERBIRDS_FOLDER, root / "CUB_200_2011" / WATERBIRDS_FOLDER):
        if (candidate / "metadata.csv").is_file():
            return candidate
    raise DataError(f"{root / 'metadata.csv'}: file not found. {_HINT}")


def read_metadata(path: Path) -> pd.DataFrame:
    """metadata.csv with its required columns checked and typed."""
    try:
        meta = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read metadata ({exc})") from exc
    for column in REQUIRED_COLUMNS:
        if column not in meta.columns:
            raise DataError(
                f"{path}: required column '{column}' is missing "
                f"(expected {', '.join(REQUIRED_COLUMNS)}; found {', '.join(map(str, meta.columns))})"
            )
    for column in ("y", "split", "place"):
        if not pd.api.types.is_integer_dtype(meta[column]):
            raise DataError(f"{path}: column '{column}' must hold integers, found dtype {meta[column].dtype}")
    return meta


def _class_names(meta: pd.DataFrame, num_classes: int) -> tuple[str, ...]:
    """Names from the class directories when each label has exactly one (generated data), else defaults."""
    class_dir = meta["img_filename"].str.split("/", n=1).str[0]
    dirs_per_label = class_dir.groupby(meta["y"]).unique()
    if len(dirs_per_label) == num_classes and all(len(d) == 1 for d in dirs_per_label):
        names = tuple(re.sub(r"^\d+\.", "", dirs_per_label[y][0]) for y in range(num_classes))
        if len(set(names)) == num_classes:
            return names
    if num_classes == len(REAL_CLASS_NAMES):
        return REAL_CLASS_NAMES
    return tuple(f"class{y}" for y in range(num_classes))


def _place_names(meta: pd.DataFrame, num_places: int) -> tuple[str, ...]:
    if "place_name" in meta.columns:
        names = meta.groupby("place")["place_name"].first()
        return tuple(str(names.get(p, f"place{p}")) for p in range(num_places))
    if num_places == len(REAL_PLACE_NAMES):
        return REAL_PLACE_NAMES
    return tuple(f"place{p}" for p in range(num_places))


class WaterbirdsDataset(GroupedImageDataset):
    """One split of a Waterbirds-format folder; groups are label x place.

    ``split`` is ``train | val | test`` or, for the generated benchmark, an OOD variant name
    (``only_fg | mixed_rand | mixed_same | only_bg``). Masks come from ``mask_dir`` when given, else from the
    folder's own ``masks/`` (and ``parts/``) when present.
    """

    def __init__(
        self, root: str | Path, split: str, transform=None, mask_dir: str | Path | None = None
    ) -> None:
        self.root = resolve_waterbirds_root(root)
        meta_path = self.root / "metadata.csv"
        meta = read_metadata(meta_path)
        num_classes, num_places = int(meta["y"].max()) + 1, int(meta["place"].max()) + 1
        spec = GroupSpec(_class_names(meta, num_classes), _place_names(meta, num_places))

        if "split_name" in meta.columns:
            available = sorted(meta["split_name"].unique())
            rows = meta[meta["split_name"] == split]
        else:
            available = [name for name, code in SPLIT_CODES.items() if code in set(meta["split"])]
            rows = meta[meta["split"] == SPLIT_CODES[split]] if split in SPLIT_CODES else meta.iloc[:0]
        if split not in available:
            raise DataError(
                f"{meta_path}: no rows for split '{split}' (the file has splits: {', '.join(available)})"
            )

        mask_root = Path(mask_dir) if mask_dir is not None else self.root / "masks"
        if mask_dir is not None:
            require_dir(mask_root, "mask", "Check `data.mask_dir` (e.g. CUB_200_2011/segmentations).")
        part_root = self.root / "parts" if mask_dir is None and (self.root / "parts").is_dir() else None
        records = ImageRecords(
            image_root=self.root,
            files=rows["img_filename"].to_numpy(dtype=str),
            labels=rows["y"].to_numpy(np.int64),
            places=rows["place"].to_numpy(np.int64),
            mask_root=mask_root if mask_root.is_dir() else None,
            part_root=part_root,
        )
        super().__init__(records, spec, transform, description=f"{meta_path} split '{split}'")
        self.split = split
