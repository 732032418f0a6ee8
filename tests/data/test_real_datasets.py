"""CUB, CUB -> Waterbirds, MetaShift, ImageNet and ImageNet-9 readers on hand-made miniature layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hardmask.data import (
    CUBDataset,
    DataError,
    ImageNet9Dataset,
    ImageNetDataset,
    MetaShiftDataset,
    build_dataset,
)

from ..conftest import make_tiny_config
from .conftest import centre_box_mask, write_image, write_mask

CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")


def make_cub(parent: Path, per_class: int = 6, size=(40, 30)) -> Path:
    """CUB_200_2011/ with ``per_class`` images per class, the first two of each class in the test split."""
    root = parent / "CUB_200_2011"
    images, labels, split = [], [], []
    image_id = 0
    for c, class_dir in enumerate(CUB_CLASSES):
        for i in range(per_class):
            image_id += 1
            rel = f"{class_dir}/{class_dir[4:]}_{image_id:04d}.jpg"
            write_image(root / "images" / rel, size, (30 * c, 90, 10 * i))
            write_mask(root / "segmentations" / Path(rel).with_suffix(".png"), centre_box_mask(size))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {0 if i < 2 else 1}")
    for name, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
    ):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_cub_splits_and_masks(tmp_path):
    make_cub(tmp_path)
    train = CUBDataset(tmp_path, "train", val_fraction=0.25)
    val = CUBDataset(tmp_path, "val", val_fraction=0.25)
    test = CUBDataset(tmp_path, "test")
    assert (len(train), len(val), len(test)) == (9, 3, 6)  # 4 train per class: 1 held out
    assert np.bincount(val.labels).tolist() == [1, 1, 1]
    assert not set(train.records.files) & set(val.records.files)
    assert train.class_names == ("Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross")
    assert train.group_spec.names == train.class_names and train.num_classes == 3
    assert set(CUBDataset(tmp_path, "val", val_fraction=0.25).records.files) == set(
        val.records.files
    )  # stable
    sample = test[0]
    assert sample["has_mask"] and sample["fg_mask"].sum() == 20 * 15


def test_cub_waterbirds_reads_the_test_images_from_the_waterbirds_folder(tmp_path):
    cub = make_cub(tmp_path / "cubwb")
    test = CUBDataset(tmp_path / "cubwb", "test")
    for rel in test.records.files:  # the same bird on a "Places" background: a different colour here
        write_image(cub / "waterbird_complete95_forest2water2" / rel, (40, 30), (250, 250, 250))
    (cub / "waterbird_complete95_forest2water2" / "metadata.csv").write_text(
        "img_id,img_filename,y,split,place\n"
    )
    cfg = make_tiny_config(
        tmp_path, data={"dataset": "cub_waterbirds", "root": str(tmp_path / "cubwb"), "image_size": 16}
    )
    ood = build_dataset(cfg, "cub_waterbirds")
    in_dist = build_dataset(cfg, "test")
    assert list(ood.records.files) == list(in_dist.records.files)
    assert np.array_equal(ood.labels, in_dist.labels)
    assert "waterbird_complete95_forest2water2" in str(ood.image_path(0))
    assert ood[0]["image"].mean() > in_dist[0]["image"].mean() + 1  # read from the other folder
    assert len(build_dataset(cfg, "train", train=True)) == 12


def make_metashift(parent: Path) -> Path:
    root = parent / "MetaDatasetCatDog"
    layout = {
        "train": {"cat": {"cat(bed)": 4, "cat(sofa)": 3}, "dog": {"dog(bench)": 4, "dog(bike)": 2}},
        "test": {"cat": {"cat(shelf)": 10}, "dog": {"dog(shelf)": 10}},
    }
    for split, classes in layout.items():
        for cls, contexts in classes.items():
            for context, n in contexts.items():
                for i in range(n):
                    write_image(root / split / cls / context / f"{i:03d}.jpg", (20, 20), (i, 0, 0))
    return root


def test_metashift_groups_and_val_carving(tmp_path):
    make_metashift(tmp_path)
    train = MetaShiftDataset(tmp_path, "train")
    assert train.class_names == ("cat", "dog")
    assert train.group_spec.place_names == ("bed", "bench", "bike", "shelf", "sofa")
    counts = train.group_spec.counts(train.groups)
    assert counts[counts > 0].to_dict() == {
        "cat_on_bed": 4,
        "cat_on_sofa": 3,
        "dog_on_bench": 4,
        "dog_on_bike": 2,
    }
    val = MetaShiftDataset(tmp_path, "val", val_fraction=0.2)
    test = MetaShiftDataset(tmp_path, "test", val_fraction=0.2)
    assert val.group_spec.counts(val.groups)[["cat_on_shelf", "dog_on_shelf"]].tolist() == [2, 2]
    assert len(test) == 16 and not set(val.records.files) & set(test.records.files)
    assert set(MetaShiftDataset(tmp_path, "val", val_fraction=0.2).records.files) == set(val.records.files)


def test_imagenet_and_imagenet9(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            for i in range(n):
                write_image(tmp_path / "in1k" / split / wnid / f"{wnid}_{i}.JPEG", (30, 20), (1, 2, 3))
    (tmp_path / "in1k" / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish\n"
    )
    train = ImageNetDataset(tmp_path / "in1k", "train")
    assert len(train) == 6 and train.class_names == ("tench", "goldfish")
    assert len(ImageNetDataset(tmp_path / "in1k", "test")) == 4  # test = val

    in9 = tmp_path / "data" / "imagenet9"  # the default root of dataset imagenet9 under base.data_dir
    for variant in ("original", "mixed_rand"):
        for cls in ("00_dog", "01_bird"):
            write_image(in9 / "bg_challenge" / variant / "val" / cls / "a.JPEG", (24, 24), (5, 5, 5))
    (in9 / "in_to_in9.json").write_text(json.dumps({"0": -1, "1": 1, "999": 0}))
    mixed = ImageNet9Dataset(in9, "mixed_rand")
    assert mixed.class_names == ("dog", "bird") and mixed.labels.tolist() == [0, 1]
    assert mixed.in_to_in9.shape == (1000,) and mixed.in_to_in9[[0, 1, 999, 500]].tolist() == [-1, 1, 0, -1]

    cfg = make_tiny_config(
        tmp_path, data={"dataset": "imagenet", "root": str(tmp_path / "in1k"), "image_size": 16}
    )
    assert build_dataset(cfg, "val")[0]["image"].shape == (3, 16, 16)
    assert len(build_dataset(cfg, "original")) == 2  # IN-9 variants read from <data_dir>/imagenet9
    cfg9 = make_tiny_config(tmp_path, data={"dataset": "imagenet9", "image_size": 16})
    assert build_dataset(cfg9, "test").split == "original"
    (tmp_path / "data" / "imagenet").symlink_to(tmp_path / "in1k")
    assert build_dataset(cfg9, "train").num_classes == 2  # the ImageNet-1k training split


@pytest.mark.parametrize("dataset", ["cub", "metashift", "imagenet9"])
def test_unknown_split_is_named(tmp_path, dataset):
    make_cub(tmp_path)
    make_metashift(tmp_path)
    (tmp_path / "bg_challenge" / "original").mkdir(parents=True)
    cfg = make_tiny_config(tmp_path, data={"dataset": dataset, "root": str(tmp_path)})
    with pytest.raises(DataError, match="'holdout' unknown; expected"):
        build_dataset(cfg, "holdout")
