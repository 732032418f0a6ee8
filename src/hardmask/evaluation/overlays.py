"""The overlay samples of an evaluation (``overlays.npz``): a few images per group with their part maps and
hard masks, for the report. numpy only, so that the report reads them without any model code."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from hardmask.io import atomic_path


@dataclass
class OverlaySamples:
    """A few images per group (failures included) with their part maps and hard masks, for the report."""

    images: np.ndarray  # [N,H,W,3] uint8, de-normalised
    labels: np.ndarray  # [N]
    preds: np.ndarray  # [N]
    groups: np.ndarray  # [N]
    group_names: tuple[str, ...]  # name of every group id of the dataset
    part_maps: np.ndarray | None = None  # [N,K+1,h,w] float16, background last
    hard_masks: np.ndarray | None = None  # [N,h,w] bool

    def save(self, path: str | Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        arrays["group_names"] = np.asarray(self.group_names, dtype=str)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> OverlaySamples:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        arrays["group_names"] = tuple(str(n) for n in arrays["group_names"])
        return cls(**arrays)
