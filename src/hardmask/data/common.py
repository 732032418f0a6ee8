"""What every dataset shares: reading images and masks, the sample dict, and the base dataset class.

A dataset reader (``waterbirds.py``, ``cub.py``, ...) parses its on-disk layout into :class:`ImageRecords`
(one row per image of one split) and a :class:`~hardmask.data.groups.GroupSpec`; :class:`GroupedImageDataset`
turns them into samples with the keys of docs/architecture.md::

    image    float32 [3, H, W]  normalised          label  int64 []      place  int64 []
    group    int64 []                               index  int64 []
    fg_mask  float32 [H, W] in {0, 1}               parts  int64 [H, W]  (0 = background, 1..P = part id)
    has_mask bool []   (False: the dataset has no masks and fg_mask / parts are zeros)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hardmask.data.groups import GroupSpec
from hardmask.errors import HardmaskError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(HardmaskError, RuntimeError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------- reading
def read_rgb(path: Path) -> np.ndarray:
    """An image as uint8 [H, W, 3]; unreadable or truncated files raise :class:`DataError` naming the file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: PIL opens lazily and a truncated file only fails here
            return np.array(img.convert("RGB"))  # writable, as torch.from_numpy wants
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def read_label_mask(path: Path, size_hw: tuple[int, int], binary: bool) -> np.ndarray:
    """A single-channel mask as uint8 [H, W]; ``binary`` maps every non-zero value to 1 (CUB's soft masks)."""
    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img.convert("L") if img.mode not in ("L", "P") else img)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read mask ({exc})") from exc
    if mask.shape != tuple(size_hw):
        raise DataError(
            f"{path}: mask of the wrong size: {mask.shape[1]}x{mask.shape[0]} (WxH), "
            f"expected {size_hw[1]}x{size_hw[0]} like its image"
        )
    return (mask > 0).astype(np.uint8) if binary else mask.astype(np.uint8)


def list_images(directory: Path) -> list[Path]:
    """Image files below ``directory`` (recursive), in a deterministic order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES))
    return found


def require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} directory does not exist. {hint}")
    return path


def carve_fraction(keys: Iterable[str], strata: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic held-out subset: in each stratum, the ``round(fraction * n)`` keys with the smallest
    hash.

    Hashing the key (a relative path) instead of drawing from a seeded permutation keeps the choice stable
    when files are added or the listing order changes. Returns a boolean array (True = held out).
    """
    keys = list(keys)
    scores = np.array(
        [int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") for k in keys], dtype=np.uint64
    )
    held_out = np.zeros(len(keys), dtype=bool)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        n_out = int(round(fraction * len(members)))
        held_out[members[np.argsort(scores[members], kind="stable")[:n_out]]] = True
    return held_out


# ----------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class ImageRecords:
    """One split as found on disk. Paths are relative to ``image_root`` / ``mask_root`` / ``part_root``."""

    image_root: Path
    files: np.ndarray  # [N] str, relative image paths
    labels: np.ndarray  # [N] int64
    places: np.ndarray  # [N] int64
    mask_root: Path | None = None  # binary foreground masks <mask_root>/<file stem>.png
    part_root: Path | None = None  # part-id masks <part_root>/<file stem>.png (0 = background)

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def single_place(
        cls, image_root: Path, files: Sequence[str], labels: Sequence[int], mask_root: Path | None = None
    ) -> ImageRecords:
        """Records of a dataset without a place (background) annotation: every image in place 0."""
        return cls(
            image_root=image_root,
            files=np.array(files, dtype=str),
            labels=np.array(labels, dtype=np.int64),
            places=np.zeros(len(files), dtype=np.int64),
            mask_root=mask_root,
        )


def mask_file(root: Path, relative_image: str) -> Path:
    return root / Path(relative_image).with_suffix(".png")


class DecodedFiles:
    """Decoded image and mask files kept in memory, up to ``budget_mb``: an epoch, or an evaluation of another
    run in the same process, reads each file from disk and decodes it once. Filled in the order files are
    first read and never evicted (every consumer sweeps whole splits); a file that no longer fits is decoded
    again. The arrays are returned as stored: callers must not write into them (the transforms make new
    ones)."""

    def __init__(self, budget_mb: float = 0.0) -> None:
        self.budget = int(budget_mb * 2**20)
        self.used = 0
        self._arrays: dict[tuple[Path, str], np.ndarray] = {}

    def resize(self, budget_mb: float) -> None:
        """Allow up to ``budget_mb`` from now on (what is held stays)."""
        self.budget = int(budget_mb * 2**20)

    def get(self, path: Path, kind: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
        key = (path, kind)
        array = self._arrays.get(key)
        if array is None:
            array = decode()
            if self.used + array.nbytes <= self.budget:
                self._arrays[key] = array
                self.used += array.nbytes
        return array


# One per process: the train split's files are shared by the epochs of a job, the evaluation splits by every
# run the evaluate stage evaluates. Sized by data.loader.cache_mb (hardmask.data.build_dataset).
DECODED = DecodedFiles()


class GroupedImageDataset(Dataset):
    """Serves :class:`ImageRecords` as sample dicts; ``transform`` is an albumentations ``Compose``.

    The transform is called as ``transform(image=uint8 [H,W,3], mask=uint8 [H,W], parts=uint8 [H,W])`` and
    must return tensors (``ToTensorV2``); it is a public attribute so a sampler can reseed it per sample
    (``transform.set_random_seed``). Without a transform, images come back as float [0, 1] at their own size.
    """

    def __init__(
        self,
        records: ImageRecords,
        group_spec: GroupSpec,
        transform: Callable[..., dict[str, Any]] | None = None,
        description: str = "dataset",
    ) -> None:
        if len(records) == 0:
            raise DataError(f"{description}: the split is empty (no images)")
        self.records = records
        self.group_spec = group_spec
        self.transform = transform
        self.description = description
        self.labels = records.labels.astype(np.int64)
        self.places = records.places.astype(np.int64)
        self.groups = np.asarray(group_spec.group_of(self.labels, self.places), dtype=np.int64)
        self._masks_dropped = False
        if records.mask_root is not None:
            missing = [f for f in records.files if not mask_file(records.mask_root, f).is_file()]
            if missing:
                raise DataError(
                    f"{mask_file(records.mask_root, missing[0])}: mask file not found "
                    f"({len(missing)} of {len(records)} masks of {description} are missing)"
                )

    # ------------------------------------------------------------------------------------------ metadata
    @property
    def num_classes(self) -> int:
        return self.group_spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.group_spec.class_names

    @property
    def has_masks(self) -> bool:
        """Whether samples carry ground-truth masks (the dataset has them and they were not dropped)."""
        return self.records.mask_root is not None and not self._masks_dropped

    def drop_masks(self) -> GroupedImageDataset:
        """Serve no ground-truth masks (``fg_mask``/``parts`` zeros, ``has_mask`` false) to a consumer that
        never reads them: reading and warping two masks per image cost a third of a training job's data time.
        The images are unchanged: the augmentation draws its parameters independently of its targets."""
        self._masks_dropped = True
        return self

    def image_path(self, index: int) -> Path:
        return self.records.image_root / self.records.files[index]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.description}, n={len(self)}, groups={self.group_spec.num_groups})"
        )

    # ------------------------------------------------------------------------------------------ samples
    def read_masks(self, index: int, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Foreground mask and part-id mask, uint8 [H, W] each (zeros where the dataset has none)."""
        rec = self.records
        if rec.mask_root is None:
            zeros = np.zeros(size_hw, dtype=np.uint8)
            return zeros, zeros
        fg_path = mask_file(rec.mask_root, rec.files[index])
        fg = DECODED.get(fg_path, "fg", lambda: read_label_mask(fg_path, size_hw, binary=True))
        if rec.part_root is None:
            return fg, fg  # no part annotation: the whole object is part 1
        parts_path = mask_file(rec.part_root, rec.files[index])
        parts = DECODED.get(parts_path, "parts", lambda: read_label_mask(parts_path, size_hw, binary=False))
        return fg, parts

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.image_path(index)
        image = DECODED.get(path, "rgb", lambda: read_rgb(path))
        masks = {}
        if self.has_masks:
            fg, parts = self.read_masks(index, image.shape[:2])
            masks = {"mask": fg, "parts": parts}
        if self.transform is not None:
            out = self.transform(image=image, **masks)
            image_t = out["image"]
        else:  # copies: the decoded arrays are shared (DECODED)
            image_t = torch.tensor(image).permute(2, 0, 1).float().div_(255)
            out = {name: torch.tensor(array) for name, array in masks.items()}
        if masks:
            fg_t, parts_t = out["mask"], out["parts"]
        else:  # the sample format keeps the keys; has_mask says they hold nothing
            fg_t = parts_t = torch.zeros(image_t.shape[-2:], dtype=torch.uint8)
        return {
            "image": image_t.float(),  # [3, H, W]
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "place": torch.tensor(self.places[index], dtype=torch.int64),
            "group": torch.tensor(self.groups[index], dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "fg_mask": fg_t.float(),  # [H, W] in {0, 1}
            "parts": parts_t.long(),  # [H, W]
            "has_mask": torch.tensor(self.has_masks),
        }
