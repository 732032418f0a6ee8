"""Groups: the (class, place) cells that robustness is measured on.

A group id is ``label * num_places + place``; the readable name is ``<class>_on_<place>``
(``landbird_on_water``,
``round_on_land``, ``cat_on_shelf``). Datasets without a place (CUB, ImageNet) have a single place and their
groups are their classes. A split need not contain every group (MetaShift's test split has two of ten); the
spec is the same for all splits of a dataset, so group ids mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class GroupSpec:
    class_names: tuple[str, ...]
    place_names: tuple[str, ...] = ("any",)

    def __post_init__(self) -> None:
        if not self.class_names or not self.place_names:
            raise ValueError("GroupSpec needs at least one class and one place")
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"GroupSpec: group names are not unique: {names}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_places(self) -> int:
        return len(self.place_names)

    @property
    def num_groups(self) -> int:
        return self.num_classes * self.num_places

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Group names in group-id order."""
        if self.num_places == 1:
            return self.class_names
        return tuple(f"{c}_on_{p}" for c in self.class_names for p in self.place_names)

    def group_of(self, label: int | np.ndarray, place: int | np.ndarray) -> int | np.ndarray:
        """Group id(s) of (label, place); scalars give an int, arrays an int64 array."""
        labels, places = np.asarray(label, dtype=np.int64), np.asarray(place, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"label out of range [0, {self.num_classes}): {np.unique(labels)}")
        if places.size and (places.min() < 0 or places.max() >= self.num_places):
            raise ValueError(f"place out of range [0, {self.num_places}): {np.unique(places)}")
        groups = labels * self.num_places + places
        return int(groups) if groups.ndim == 0 else groups

    def label_place_of(self, group: int) -> tuple[int, int]:
        if not 0 <= group < self.num_groups:
            raise ValueError(f"group {group} out of range [0, {self.num_groups})")
        return divmod(int(group), self.num_places)

    def counts(self, groups: np.ndarray) -> pd.Series:
        """Samples per group, indexed by name, every group listed (zero where absent)."""
        groups = np.asarray(groups, dtype=np.int64)
        counts = np.bincount(groups, minlength=self.num_groups) if groups.size else np.zeros(self.num_groups)
        if len(counts) > self.num_groups:
            raise ValueError(f"group id {int(groups.max())} out of range [0, {self.num_groups})")
        return pd.Series(counts.astype(np.int64), index=pd.Index(self.names, name="group"), name="count")
