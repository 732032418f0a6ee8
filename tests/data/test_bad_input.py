"""Every bad input named in the issue stops with a message that names the file and what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardmask.data import (
    DataError,
    GroupedImageDataset,
    GroupSpec,
    ImageRecords,
    WaterbirdsDataset,
    build_dataset,
)
from hardmask.data.cub import CUBDataset

from ..conftest import make_tiny_config
from .conftest import WATERBIRDS_ROWS, make_waterbirds_folder, write_mask


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"nowhere: Waterbirds directory does not exist.*stages/prepare\.py"):
        WaterbirdsDataset(missing, "train")
    cfg = make_tiny_config(tmp_path, data={"dataset": "cub", "root": str(missing)})
    with pytest.raises(DataError, match=r"nowhere: CUB-200-2011 directory does not exist"):
        build_dataset(cfg, "train")


def test_directory_without_metadata(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/metadata\.csv: file not found"):
        WaterbirdsDataset(tmp_path / "empty", "train")


@pytest.mark.parametrize("column", ["img_filename", "y", "split", "place"])
def test_metadata_without_a_required_column(tmp_path, column):
    root = make_waterbirds_folder(tmp_path, with_segmentations=False)
    meta = root / "metadata.csv"
    header, *rows = [line.split(",") for line in meta.read_text().splitlines()]
    keep = [i for i, name in enumerate(header) if name != column]
    meta.write_text("\n".join(",".join(r[i] for i in keep) for r in [header, *rows]) + "\n")
    with pytest.raises(DataError, match=rf"metadata\.csv: required column '{column}' is missing"):
        WaterbirdsDataset(root, "train")


def test_metadata_with_non_integer_labels(tmp_path):
    root = make_waterbirds_folder(tmp_path, with_segmentations=False)
    meta = root / "metadata.csv"
    meta.write_text(meta.read_text().replace(",1,0,1,", ",bird,0,1,", 1))
    with pytest.raises(DataError, match=r"metadata\.csv: column 'y' must hold integers"):
        WaterbirdsDataset(root, "train")


def test_truncated_image_names_the_file(tmp_path):
    root = make_waterbirds_folder(tmp_path, with_segmentations=False)
    dataset = WaterbirdsDataset(root, "train")
    path = dataset.image_path(1)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    dataset[0]  # the others still load
    with pytest.raises(DataError, match=rf"{path.name}: cannot read image"):
        dataset[1]
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=rf"{path.name}: cannot read image"):
        dataset[1]
    path.unlink()
    with pytest.raises(DataError, match=rf"{path.name}: image file not found"):
        dataset[1]


def test_mask_of_the_wrong_size(tmp_path):
    root = make_waterbirds_folder(tmp_path)
    rel = Path(WATERBIRDS_ROWS[0][0]).with_suffix(".png")
    write_mask(tmp_path / "segmentations" / rel, np.ones((10, 12), dtype=np.uint8))
    dataset = WaterbirdsDataset(root, "train", mask_dir=tmp_path / "segmentations")
    with pytest.raises(
        DataError, match=rf"{rel.name}: mask of the wrong size: 12x10 \(WxH\), expected 48x36"
    ):
        dataset[0]


def test_missing_masks_are_reported_up_front(tmp_path):
    root = make_waterbirds_folder(tmp_path)
    (tmp_path / "segmentations" / Path(WATERBIRDS_ROWS[1][0]).with_suffix(".png")).unlink()
    with pytest.raises(DataError, match=r"Albatross_0002_2\.png: mask file not found \(1 of 4 masks"):
        WaterbirdsDataset(root, "train", mask_dir=tmp_path / "segmentations")
    with pytest.raises(DataError, match=r"nomasks: mask directory does not exist"):
        WaterbirdsDataset(root, "train", mask_dir=tmp_path / "nomasks")


def test_empty_split(tmp_path):
    root = make_waterbirds_folder(tmp_path, with_segmentations=False)
    meta = root / "metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text(
        "\n".join(line for line in lines if line.split(",")[3] != "1") + "\n"
    )  # drop every val row
    with pytest.raises(
        DataError, match=r"metadata\.csv: no rows for split 'val' \(the file has splits: train, test\)"
    ):
        WaterbirdsDataset(root, "val")
    with pytest.raises(DataError, match=r"no rows for split 'mixed_rand'"):
        WaterbirdsDataset(root, "mixed_rand")
    empty = ImageRecords(tmp_path, np.array([], dtype=str), np.array([], np.int64), np.array([], np.int64))
    with pytest.raises(DataError, match=r"my split: the split is empty"):
        GroupedImageDataset(empty, GroupSpec(("a",)), description="my split")


def test_cub_split_table_with_a_missing_entry(tmp_path):
    root = tmp_path / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    (root / "images.txt").write_text("1 001.A/a.jpg\n2 001.A/b.jpg\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n")
    (root / "train_test_split.txt").write_text("1 1\n")
    with pytest.raises(DataError, match=r"train_test_split\.txt: no entry for image id 2"):
        CUBDataset(tmp_path, "train")
