"""The Waterbirds-format loader on the generated benchmark and on a miniature of the real dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from hardmask.data import GroupSpec, WaterbirdsDataset, build_dataset, build_eval_transform

from ..conftest import make_tiny_config
from .conftest import TINY_SYNTHETIC, WATERBIRDS_ROWS, make_waterbirds_folder

SAMPLE_KEYS = {"image", "label", "place", "group", "index", "fg_mask", "parts", "has_mask"}


def _synthetic_cfg(tmp_path, root, **data):
    return make_tiny_config(
        tmp_path, data={"root": str(root), "synthetic": TINY_SYNTHETIC.model_dump(mode="json"), **data}
    )


def test_sample_contract_on_generated_data(tmp_path, synthetic_root):
    cfg = _synthetic_cfg(tmp_path, synthetic_root)
    dataset = build_dataset(cfg, "test", train=False)
    assert len(dataset) == 40 and dataset.num_classes == 2
    assert dataset.class_names == ("round", "long")
    assert dataset.group_spec.names == ("round_on_land", "round_on_water", "long_on_land", "long_on_water")
    sample = dataset[5]
    assert set(sample) == SAMPLE_KEYS
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["fg_mask"].shape == (32, 32) and sample["fg_mask"].dtype == torch.float32
    assert sample["parts"].shape == (32, 32) and sample["parts"].dtype == torch.int64
    for key in ("label", "place", "group", "index"):
        assert sample[key].dtype == torch.int64 and sample[key].ndim == 0
    assert sample["has_mask"].item() is True
    assert int(sample["group"]) == 2 * int(sample["label"]) + int(sample["place"])
    assert set(sample["fg_mask"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(sample["fg_mask"] > 0, sample["parts"] > 0)
    # the image is normalised with the ImageNet statistics by default
    assert float(sample["image"].min()) > -2.2 and float(sample["image"].max()) < 2.7

    batch = next(iter(DataLoader(dataset, batch_size=8, num_workers=0)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].shape == (8,)
    assert batch["has_mask"].dtype == torch.bool


def test_dropped_masks_leave_the_augmented_images_unchanged(tmp_path, synthetic_root):
    cfg = _synthetic_cfg(tmp_path, synthetic_root)
    full = build_dataset(cfg, "train", train=True)
    maskless = build_dataset(cfg, "train", train=True).drop_masks()
    assert full.has_masks and not maskless.has_masks
    for index in range(40):  # the augmentation's draws do not depend on which targets it moves
        full.transform.set_random_seed(index)
        maskless.transform.set_random_seed(index)
        with_masks, without = full[index], maskless[index]
        assert torch.equal(with_masks["image"], without["image"]), index
        assert with_masks["fg_mask"].sum() > 0 and with_masks["has_mask"].item() is True
        assert without["has_mask"].item() is False
        assert without["fg_mask"].sum() == 0 and without["parts"].sum() == 0
        assert set(without) == SAMPLE_KEYS and without["fg_mask"].dtype == torch.float32
        assert without["parts"].dtype == torch.int64 and without["fg_mask"].shape == (32, 32)


def test_arrays_and_group_counts_agree_with_metadata(synthetic_root):
    meta = pd.read_csv(synthetic_root / "metadata.csv")
    train = WaterbirdsDataset(synthetic_root, "train")
    rows = meta[meta["split"] == 0]
    assert np.array_equal(train.labels, rows["y"]) and np.array_equal(train.places, rows["place"])
    assert np.array_equal(train.groups, rows["y"] * 2 + rows["place"])
    counts = train.group_spec.counts(train.groups)
    assert counts.sum() == 400 and counts["round_on_land"] > 150 and 0 < counts["round_on_water"] < 30


def test_ood_splits_load(synthetic_root):
    only_bg = WaterbirdsDataset(synthetic_root, "only_bg")
    sample = only_bg[0]
    assert sample["fg_mask"].sum() == 0 and sample["has_mask"]
    assert len(WaterbirdsDataset(synthetic_root, "mixed_rand")) == 16


def test_real_waterbirds_layout(tmp_path):
    make_waterbirds_folder(tmp_path)
    train = WaterbirdsDataset(tmp_path, "train")  # finds the tarball's folder below the root
    assert train.class_names == ("landbird", "waterbird")
    assert train.group_spec.place_names == ("land", "water")
    assert "waterbird_on_land" in train.group_spec.names
    assert len(train) == sum(1 for r in WATERBIRDS_ROWS if r[2] == 0)
    assert not train.has_masks and not train[0]["has_mask"] and train[0]["fg_mask"].sum() == 0
    assert train[0]["image"].shape == (3, 36, 48)  # no transform: the image at its own size

    segmentations = tmp_path / "segmentations"
    test = WaterbirdsDataset(tmp_path, "test", build_eval_transform(24), mask_dir=segmentations)
    sample = test[0]
    assert sample["image"].shape == (3, 24, 24) and sample["has_mask"]
    assert set(sample["fg_mask"].unique().tolist()) == {0.0, 1.0}  # CUB's soft 204 becomes 1
    assert torch.equal(sample["parts"], sample["fg_mask"].long())  # no part annotation: the object is part 1


def test_build_dataset_for_real_waterbirds(tmp_path):
    make_waterbirds_folder(tmp_path / "wb")
    cfg = make_tiny_config(
        tmp_path, data={"dataset": "waterbirds", "root": str(tmp_path / "wb"), "image_size": 16}
    )
    dataset = build_dataset(cfg, "train", train=True)
    for i in range(len(dataset)):
        assert dataset[i]["image"].shape == (3, 16, 16)


def test_group_spec():
    spec = GroupSpec(("cat", "dog"), ("bed", "shelf", "sofa"))
    assert spec.num_groups == 6 and spec.names[4] == "dog_on_shelf"
    assert spec.group_of(1, 1) == 4 and spec.label_place_of(4) == (1, 1)
    assert spec.group_of(np.array([0, 1]), np.array([2, 0])).tolist() == [2, 3]
    counts = spec.counts(np.array([4, 4, 0]))
    assert (
        counts["dog_on_shelf"] == 2 and counts["cat_on_bed"] == 1 and counts.sum() == 3 and len(counts) == 6
    )
    assert GroupSpec(("a", "b")).names == ("a", "b")
    with pytest.raises(ValueError, match="place out of range"):
        spec.group_of(0, 3)
