"""The generated benchmark: determinism, split statistics, masks that match the objects, OOD variants."""

from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hardmask.data import DataError, generate_synthetic, is_up_to_date
from hardmask.data.synthetic import CLASS_TEMPLATES, aligned_place, load_manifest

from .conftest import TINY_SYNTHETIC

SMALL = TINY_SYNTHETIC.model_copy(update={"n_train": 24, "n_val": 8, "n_test": 8, "n_ood": 8})


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name != "manifest.json":  # holds the wall-clock time
                path = Path(dirpath) / name
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


def _meta(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "metadata.csv")


def _load(root: Path, rel: str, kind: str) -> np.ndarray:
    path = root / rel if kind == "image" else root / kind / Path(rel).with_suffix(".png")
    return np.asarray(Image.open(path))


def test_generation_is_bit_identical_for_a_seed_whatever_the_workers(tmp_path):
    one = generate_synthetic(SMALL, tmp_path / "a", seed=3, num_workers=1)
    two = generate_synthetic(SMALL, tmp_path / "b", seed=3, num_workers=2)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert all(files_a[k] == files_b[k] for k in files_a), "same seed must give identical bytes"
    assert one.fingerprint == two.fingerprint
    other = generate_synthetic(SMALL, tmp_path / "c", seed=4, num_workers=1)
    assert other.fingerprint != one.fingerprint
    differing = [k for k, v in _files(tmp_path / "c").items() if k.endswith(".jpg") and files_a.get(k) != v]
    assert len(differing) > 0.9 * sum(k.endswith(".jpg") for k in files_a)


def test_layout_is_waterbirds_format(synthetic_root):
    meta = _meta(synthetic_root)
    assert {"img_id", "img_filename", "y", "split", "place"} <= set(meta.columns)
    assert meta["img_id"].tolist() == list(range(1, len(meta) + 1))
    class_dirs = meta["img_filename"].str.split("/").str[0]
    assert set(class_dirs) == {"001.round", "002.long"}
    assert (class_dirs == meta["y"].map({0: "001.round", 1: "002.long"})).all()
    codes = meta.groupby("split_name")["split"].unique().map(lambda c: c.tolist())
    assert codes.to_dict() == {
        "train": [0],
        "val": [1],
        "test": [2],
        "only_fg": [3],
        "mixed_rand": [4],
        "mixed_same": [5],
        "only_bg": [6],
    }
    for rel in meta["img_filename"].iloc[::50]:
        assert _load(synthetic_root, rel, "image").shape == (32, 32, 3)
        assert (synthetic_root / "masks" / Path(rel).with_suffix(".png")).is_file()
        assert (synthetic_root / "parts" / Path(rel).with_suffix(".png")).is_file()


def test_split_sizes_and_group_statistics(synthetic_root):
    meta, cfg = _meta(synthetic_root), TINY_SYNTHETIC
    sizes = meta["split_name"].value_counts().to_dict()
    assert sizes == {
        "train": 400,
        "val": 24,
        "test": 40,
        "only_fg": 16,
        "mixed_rand": 16,
        "mixed_same": 16,
        "only_bg": 16,
    }

    train = meta[meta["split_name"] == "train"]
    assert train["y"].value_counts().tolist() == [200, 200]  # classes balanced exactly
    aligned = (train["place"] == aligned_place(train["y"], cfg.n_places)).mean()
    tolerance = 4 * np.sqrt(cfg.spurious_prob * (1 - cfg.spurious_prob) / len(train))  # 4 binomial sd
    assert abs(aligned - cfg.spurious_prob) < tolerance
    assert (1 - aligned) * len(train) > 0  # minority groups exist

    for split in (
        "val",
        "test",
        "mixed_rand",
        "only_bg",
    ):  # every label x place group, sizes within one image
        counts = meta[meta["split_name"] == split].groupby(["y", "place"]).size()
        assert len(counts) == cfg.n_classes * cfg.n_places and counts.max() - counts.min() <= 1, split
    for split in ("mixed_same", "only_fg"):
        rows = meta[meta["split_name"] == split]
        assert (rows["place"] == aligned_place(rows["y"], cfg.n_places)).all()


def _saturation(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float32) / 255
    return (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1e-6)


def test_masks_match_the_objects(synthetic_root):
    meta = _meta(synthetic_root)
    objects = meta[meta["split_name"] != "only_bg"]
    for rel, fraction in zip(objects["img_filename"].iloc[::7], objects["fg_fraction"].iloc[::7]):
        image, fg, parts = (_load(synthetic_root, rel, kind) for kind in ("image", "masks", "parts"))
        assert set(np.unique(fg)) == {0, 255}
        assert np.array_equal(fg > 0, parts > 0), "foreground mask must be the union of the part masks"
        assert 0.15 < (fg > 0).mean() < 0.5 and (fg > 0).mean() == pytest.approx(fraction, abs=1e-4)
        n_parts = len(np.unique(parts)) - 1
        assert 2 <= n_parts <= 5
        # objects are saturated, backgrounds are not: the mask sits on the object (away from JPEG edges)
        sat, inner = _saturation(image), _erode(fg > 0)
        assert sat[inner].mean() > 0.35
        if not rel.split("/")[1].startswith("only_fg"):
            assert sat[~_dilate(fg > 0)].mean() < 0.3
    for rel in meta.loc[meta["split_name"] == "only_bg", "img_filename"]:
        assert not _load(synthetic_root, rel, "masks").any() and not _load(synthetic_root, rel, "parts").any()


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    return ~_erode(~mask)


def test_class_and_place_cues(synthetic_root):
    """Object area depends little on the class; places share a palette; only_fg is grey around the object."""
    meta = _meta(synthetic_root)
    test = meta[meta["split_name"] == "test"]
    area = test.groupby("y")["fg_fraction"].mean()
    assert area.between(0.2, 0.4).all()
    mean_colour = {}
    for place in (0, 1):
        rows = test[test["place"] == place]["img_filename"]
        mean_colour[place] = np.mean(
            [_load(synthetic_root, r, "image").reshape(-1, 3).mean(0) for r in rows], axis=0
        )
    assert np.abs(mean_colour[0] - mean_colour[1]).max() < 25  # no place is a colour
    only_fg = meta[meta["split_name"] == "only_fg"]["img_filename"]
    for rel in only_fg.iloc[:4]:
        image, fg = _load(synthetic_root, rel, "image"), _load(synthetic_root, rel, "masks") > 0
        assert np.abs(image[~_dilate(fg)].astype(float) - 128).mean() < 8


def test_ood_variants_share_their_objects(synthetic_root):
    meta = _meta(synthetic_root)
    by_variant = {
        v: meta[meta["split_name"] == v].reset_index() for v in ("only_fg", "mixed_rand", "mixed_same")
    }
    assert (by_variant["only_fg"]["y"] == by_variant["mixed_rand"]["y"]).all()
    for i in range(4):
        masks = [_load(synthetic_root, by_variant[v]["img_filename"][i], "parts") for v in by_variant]
        assert all(np.array_equal(masks[0], m) for m in masks[1:])


def test_templates_have_three_to_five_parts():
    for name, parts in CLASS_TEMPLATES.items():
        assert 3 <= len({p.part_id for p in parts}) <= 5, name


def test_manifest_and_up_to_date_check(tmp_path):
    root = tmp_path / "bench"
    manifest = generate_synthetic(SMALL, root, seed=0, num_workers=1)
    assert manifest.counts["train"] == 24 and manifest.bytes > 0
    assert load_manifest(root) == manifest
    # the DVC output is a function of its inputs: a second generation writes the same bytes, manifest included
    again = tmp_path / "again"
    generate_synthetic(SMALL, again, seed=0, num_workers=2)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert json.loads((root / "manifest.json").read_text())["fingerprint"] == manifest.fingerprint
    assert is_up_to_date(SMALL, root, seed=0)
    assert not is_up_to_date(SMALL, root, seed=1)
    assert not is_up_to_date(SMALL.model_copy(update={"spurious_prob": 0.9}), root, seed=0)
    (root / "metadata.csv").write_text((root / "metadata.csv").read_text().replace("train", "tr4in"))
    assert not is_up_to_date(SMALL, root, seed=0), "an edited metadata.csv must not pass as up to date"


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    root = tmp_path / "precious"
    root.mkdir()
    (root / "thesis.tex").write_text("do not delete")
    with pytest.raises(DataError, match=r"precious.*refusing to replace"):
        generate_synthetic(SMALL, root, seed=0, num_workers=1)
    assert (root / "thesis.tex").read_text() == "do not delete"


def test_failed_generation_leaves_the_previous_output(tmp_path, monkeypatch):
    root = tmp_path / "bench"
    before = generate_synthetic(SMALL, root, seed=0, num_workers=1)
    import hardmask.data.synthetic as synthetic

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_image", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic(SMALL, root, seed=1, num_workers=1)
    assert load_manifest(root) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bench")], (
        "temporary directory left behind"
    )


def test_more_classes_and_places(tmp_path):
    cfg = SMALL.model_copy(update={"n_classes": 4, "n_places": 3, "n_val": 24})
    manifest = generate_synthetic(cfg, tmp_path / "b", seed=0, num_workers=1)
    assert manifest.class_names == ("round", "long", "cross", "twin")
    assert manifest.place_names == ("land", "water", "forest")
    assert set(manifest.group_counts["val"].values()) == {2}  # 24 images over 12 groups


def test_hsv_helper_matches_colorsys():
    from hardmask.data.synthetic import _hsv

    assert np.allclose(_hsv(1.25, 0.5, 0.5), colorsys.hsv_to_rgb(0.25, 0.5, 0.5))
