"""MetaShift Cat-vs-Dog in the layout of the DISC release; groups are class x context.

Layout::

    <root>/MetaDatasetCatDog/train/cat/cat(bed)/<images>      train contexts: cat(bed), cat(sofa),
    <root>/MetaDatasetCatDog/train/dog/dog(bench)/<images>                    dog(bench), dog(bike)
    <root>/MetaDatasetCatDog/test/cat/cat(shelf)/<images>     test context: shelf for both classes

A context folder named ``<class>(<context>)`` gives the place ``<context>``; any other folder name is the
place itself, and images directly in a class folder have the place ``none``. The places are the union over
train and test, so group ids agree between splits. ``val`` is carved from ``test`` deterministically (a share
of each group, chosen by a hash of the file path); ``test`` is the rest.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from hardmask.data.common import (
    DataError,
    GroupedImageDataset,
    ImageRecords,
    carve_fraction,
    list_images,
    require_dir,
)
from hardmask.data.groups import GroupSpec

METASHIFT_FOLDER = "MetaDatasetCatDog"
METASHIFT_SPLITS = ("train", "val", "test")
_CONTEXT = re.compile(r"^(?P<cls>[^()]+)\((?P<ctx>[^()]+)\)$")
_HINT = (
    "MetaShift is not downloadable automatically: build MetaDatasetCatDog with the DISC repository "
    "(https://github.com/Wuyxin/DISC) and point `data.root` at the folder holding train/ and test/."
)


def resolve_metashift_root(root: str | Path) -> Path:
    root = require_dir(Path(root), "MetaShift", _HINT)
    for candidate in (root, root / METASHIFT_FOLDER):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise DataError(f"{root}: no train/ and test/ folders (nor in {root / METASHIFT_FOLDER}). {_HINT}")


def _place_of(relative: Path) -> str:
    """Context of ``<class>/<context>/.../<file>``."""
    if len(relative.parts) < 3:
        return "none"
    match = _CONTEXT.match(relative.parts[1])
    return match["ctx"] if match else relative.parts[1]


def scan_split(split_dir: Path) -> list[tuple[str, str, str]]:
    """(relative file, class, place) of every image below ``split_dir``."""
    out = []
    for path in list_images(split_dir):
        relative = path.relative_to(split_dir)
        if len(relative.parts) < 2:
            raise DataError(
                f"{path}: image outside a class folder (expected {split_dir}/<class>/<context>/...)"
            )
        out.append((str(relative), relative.parts[0], _place_of(relative)))
    return out


class MetaShiftDataset(GroupedImageDataset):
    def __init__(self, root: str | Path, split: str, transform=None, val_fraction: float = 0.2) -> None:
        if split not in METASHIFT_SPLITS:
            raise DataError(
                f"MetaShift split '{split}' unknown; expected one of {', '.join(METASHIFT_SPLITS)}"
            )
        self.root = resolve_metashift_root(root)
        train, test = scan_split(self.root / "train"), scan_split(self.root / "test")
        class_names = tuple(sorted({c for _, c, _ in train + test}))
        place_names = tuple(sorted({p for _, _, p in train + test}))
        spec = GroupSpec(class_names, place_names)

        rows = train if split == "train" else test
        files = np.array([f for f, _, _ in rows], dtype=str)
        labels = np.array([class_names.index(c) for _, c, _ in rows], dtype=np.int64)
        places = np.array([place_names.index(p) for _, _, p in rows], dtype=np.int64)
        if split != "train" and len(rows):
            held_out = carve_fraction(files, np.asarray(spec.group_of(labels, places)), val_fraction)
            keep = held_out if split == "val" else ~held_out
            files, labels, places = files[keep], labels[keep], places[keep]
        split_dir = self.root / ("train" if split == "train" else "test")
        records = ImageRecords(image_root=split_dir, files=files, labels=labels, places=places)
        super().__init__(records, spec, transform, description=f"MetaShift {split_dir} split '{split}'")
        self.split = split
