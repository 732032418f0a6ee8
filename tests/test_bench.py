"""``python -m hardmask.bench``: forced masks, interleaved timing, FLOPs, memory, the loader, JSON lines."""

from __future__ import annotations

import json

import pytest
import torch

from hardmask.bench import (
    RANDOM_WEIGHTS,
    bench_config,
    bench_overrides,
    forced_patch_mask,
    main,
    parse_args,
    peak_memory,
    time_interleaved,
)
from tests.conftest import PAPER, REPO, changed

TINY = [
    "--set", "data.image_size=32",
    "--set", "model.backbone.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
    "--set", "model.num_parts=2",
]  # fmt: skip
# one image of the tiny baseline, forward: 16 patches + 1 class token, D = 32, one block (MLP 128), 2 heads
TINY_BASELINE_FLOPS = (
    16 * (3 * 8 * 8) * 32 * 2  # patch embedding
    + 17 * 32 * (3 * 32) * 2  # qkv
    + 2 * (2 * 2 * 17 * 17 * 16)  # attention: q k^T and attn v, 2 heads of 16
    + 17 * 32 * 32 * 2  # attention projection
    + 2 * (17 * 32 * 128 * 2)  # MLP
    + 32 * 2 * 2  # head on the class token
)


def run_bench(capsys, *extra: str) -> list[dict]:
    args = ["--params", str(REPO / "params.yaml"), *TINY, "--steps", "1", "--warmup", "0", "--batch", "4"]
    assert main([*args, "--eval-batch", "4", "--device", "cpu", *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


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
    assert [(len(t.wall_ms), len(t.cpu_ms)) for t in timings] == [(3, 3), (3, 3)]


def test_cpu_peak_memory_counts_what_the_block_allocates():
    kept = torch.zeros(1024, 1024)  # 4 MiB allocated before the block: not counted
    with peak_memory(torch.device("cpu")) as memory:
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 4 MiB more: the peak
        del a, b
        c = torch.ones(512, 1024)  # 2 MiB, after the peak
    assert memory["memory_kind"] == "cpu_peak_allocated_during_step"
    assert memory["peak_memory_mib"] == pytest.approx(8.0, abs=0.1)
    del kept, c


def test_bench_prints_one_json_line_per_measurement(capsys, tmp_path):
    records = run_bench(capsys, "--set", f"base.data_dir={tmp_path}", "--peak-tflops", "2")
    measured = [(r["measurement"], r.get("model"), r.get("stage2_impl")) for r in records]
    assert measured == [
        ("train_step", "two_stage_hard", "packed"),
        ("train_step", "two_stage_hard", "dense"),
        ("train_step", "baseline_vit", None),
        ("stage2_train", "two_stage_hard", "packed"),
        ("stage2_train", "two_stage_hard", "dense"),
        ("eval", "two_stage_hard", "packed"),
        ("eval", "two_stage_hard", "dense"),
        ("eval", "baseline_vit", None),
        ("train_loader", None, None),
        ("packed_dense_ratio", "two_stage_hard", None),
    ]
    timed = {(r["measurement"], r["model"], r["stage2_impl"]): r for r in records[:8]}
    for record in timed.values():
        assert record["ms_per_step"] > 0 and record["images_per_s"] > 0 and record["batch"] == 4
        assert record["memory_kind"] == "cpu_peak_allocated_during_step" and record["peak_memory_mib"] > 0
        assert record["utilisation"] == pytest.approx(record["tflops"] / 2, rel=1e-2)
    baseline_eval = timed["eval", "baseline_vit", None]
    assert baseline_eval["gflop_per_image"] == pytest.approx(TINY_BASELINE_FLOPS / 1e9, rel=1e-5)
    # stage 2 is the baseline's network: dense, it does the baseline's work; packed, less
    stage2 = {
        impl: timed["stage2_train", "two_stage_hard", impl]["gflop_per_image"] for impl in ("packed", "dense")
    }
    assert stage2["dense"] == pytest.approx(timed["train_step", "baseline_vit", None]["gflop_per_image"])
    assert stage2["packed"] < stage2["dense"]
    assert "no training data" in records[8]["skipped"]  # nothing generated under tmp_path
    ratio = records[-1]
    assert ratio["train_step_ms_ratio"] == pytest.approx(
        records[0]["ms_per_step"] / records[1]["ms_per_step"], rel=1e-2
    )
    assert ratio["stage2_train_ms_ratio"] == pytest.approx(
        records[3]["ms_per_step"] / records[4]["ms_per_step"], rel=1e-2
    )
    assert ratio["fg_fraction"] == 0.3


def test_loader_samples_per_second_on_the_generated_benchmark(capsys, tmp_path):
    from hardmask.data import generate_synthetic

    generate_synthetic(
        changed(PAPER.data.synthetic, image_size=32, n_train=64, n_val=8, n_test=8, n_ood=8),
        tmp_path / "synthetic",
        seed=0,
    )
    records = run_bench(
        capsys, "--set", f"base.data_dir={tmp_path}", "--only", "train_loader", "--loader-workers", "0,1"
    )
    assert [(r["measurement"], r["workers"]) for r in records] == [("train_loader", 0), ("train_loader", 1)]
    for record in records:
        assert record["samples_per_s"] > 0 and record["batches"] == 10 and record["batch"] == 4
    # more batches than an epoch has (64 images in batches of 4): one epoch, less its untimed first batch
    only_loader = ("--set", f"base.data_dir={tmp_path}", "--only", "train_loader", "--loader-workers", "0")
    (whole_epoch,) = run_bench(capsys, *only_loader, "--loader-batches", "50")
    assert whole_epoch["batches"] == 15 and whole_epoch["samples_per_s"] > 0


def test_paper_setting_and_random_weights_are_composed_in_order():
    args = parse_args(["--paper", "--set", "model.num_parts=4"])
    overrides = bench_overrides(args)
    assert overrides[-len(RANDOM_WEIGHTS) :] == list(RANDOM_WEIGHTS)
    assert overrides.index("model.num_parts=4") > overrides.index("model.num_parts=8")  # --set wins
    cfg = bench_config(parse_args(["--paper"]))
    assert cfg.data.image_size == 518 and cfg.model.num_parts == 8 and cfg.model.freeze_backbone
    assert cfg.model.backbone.name.startswith("vit_base_patch14_reg4_dinov2")
    assert cfg.optim.amp == "bf16" and cfg.data.loader.batch_size == 16
    assert not cfg.model.backbone.pretrained


def test_bench_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--fg-fraction", "1.5"])
    with pytest.raises(SystemExit):
        parse_args(["--only", "train_step,bogus"])
