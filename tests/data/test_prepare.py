"""The prepare step: generates once, skips when up to date, writes its manifest and the sample figure."""

from __future__ import annotations

import json

import pytest

from hardmask.data import DataError
from hardmask.data.prepare import prepare

from ..conftest import make_tiny_config
from .conftest import TINY_SYNTHETIC, make_waterbirds_folder

SMALL = TINY_SYNTHETIC.model_copy(update={"n_train": 32, "n_val": 8, "n_test": 8, "n_ood": 8}).model_dump(
    mode="json"
)


def test_prepare_generates_then_skips(tmp_path):
    cfg = make_tiny_config(tmp_path, data={"synthetic": SMALL})
    first = prepare(cfg, num_workers=1)
    manifest_path = tmp_path / "data" / "synthetic" / "manifest.json"
    assert json.loads(manifest_path.read_text())["fingerprint"] == first["fingerprint"]
    assert first["groups"] == ["round_on_land", "round_on_water", "long_on_land", "long_on_water"]
    figure = tmp_path / "reports" / "samples.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metadata = tmp_path / "data" / "synthetic" / "metadata.csv"
    stamp = metadata.stat().st_mtime_ns
    second = prepare(cfg, num_workers=1)
    assert metadata.stat().st_mtime_ns == stamp, "an up-to-date benchmark must not be regenerated"
    assert second == first
    changed = make_tiny_config(tmp_path, data={"synthetic": {**SMALL, "spurious_prob": 0.8}})
    third = prepare(changed, num_workers=1)
    assert third["fingerprint"] != first["fingerprint"]


def test_prepare_real_dataset(tmp_path):
    make_waterbirds_folder(tmp_path / "data" / "waterbirds")
    cfg = make_tiny_config(tmp_path, data={"dataset": "waterbirds"})
    manifest = prepare(cfg)
    assert manifest["dataset"] == "waterbirds" and len(manifest["fingerprint"]) == 64
    assert manifest["groups"][1] == "landbird_on_water"
    assert (tmp_path / "data" / "waterbirds" / "manifest.json").is_file()
    assert prepare(cfg)["fingerprint"] == manifest["fingerprint"], "its own manifest must not count"
    missing = make_tiny_config(tmp_path, data={"dataset": "cub"})
    with pytest.raises(DataError, match="cub not found"):
        prepare(missing)
