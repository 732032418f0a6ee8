"""``python -m hardmask.bench``: forced masks and one JSON line per measurement."""

from __future__ import annotations

import json

import pytest
import torch

from hardmask.bench import forced_patch_mask, main, time_interleaved
from tests.conftest import REPO

TINY = [
    "--set", "data.image_size=32",
    "--set", "model.backbone.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
    "--set", "model.num_parts=2",
]  # fmt: skip


def test_forced_mask_has_the_requested_fraction():
    g = torch.Generator().manual_seed(0)
    exact = forced_patch_mask(8, 100, 0.3, 0.0, g)
    assert exact.shape == (8, 100) and (exact.sum(1) == 30).all()
    spread = forced_patch_mask(500, 100, 0.3, 0.5, g).sum(1)
    assert spread.min() >= 15 and spread.max() <= 45 and abs(spread.float().mean() - 30) < 2
    assert not forced_patch_mask(4, 10, 0.0, 0.5, g).any() and forced_patch_mask(4, 10, 1.0, 0.0, g).all()


def test_steps_are_interleaved_and_warmup_is_untimed():
    calls: list[str] = []
    timings = time_interleaved(
        [lambda: calls.append("a"), lambda: calls.append("b")], rounds=3, warmup=1, device=torch.device("cpu")
    )
    assert calls == ["a", "b"] * 4
    assert [len(t) for t in timings] == [3, 3]


def test_bench_prints_one_json_line_per_measurement(capsys):
    args = ["--params", str(REPO / "params.yaml"), *TINY, "--steps", "1", "--warmup", "0", "--batch", "4"]
    assert main([*args, "--device", "cpu"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    measured = [(r["measurement"], r["model"], r.get("stage2_impl")) for r in records]
    assert measured == [
        ("train_step", "two_stage_hard", "packed"),
        ("train_step", "two_stage_hard", "dense"),
        ("train_step", "baseline_vit", None),
        ("eval", "two_stage_hard", "packed"),
        ("eval", "two_stage_hard", "dense"),
        ("eval", "baseline_vit", None),
        ("packed_dense_ratio", "two_stage_hard", None),
    ]
    for record in records[:-1]:
        assert record["ms_per_step"] > 0 and record["images_per_s"] > 0 and record["batch"] == 4
    ratio = records[-1]
    assert ratio["train_step_ms_ratio"] == pytest.approx(
        records[0]["ms_per_step"] / records[1]["ms_per_step"], rel=1e-2
    )
    assert ratio["fg_fraction"] == 0.3


def test_bench_rejects_bad_fractions():
    with pytest.raises(SystemExit):
        main(["--fg-fraction", "1.5"])
