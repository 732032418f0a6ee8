"""The training loop: a finished run, what each epoch reports, exact resume, SIGKILL mid-epoch, NaN and
unwritable-output errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from hardmask.config import save_config
from hardmask.data import DataError, generate_synthetic
from hardmask.training.loop import TrainingError, train

from ..conftest import REPO, make_tiny_config


def _prepared(tmp_path: Path, **sections):
    cfg = make_tiny_config(tmp_path, **sections)
    generate_synthetic(cfg.data.synthetic, cfg.data_root, seed=cfg.base.seed)
    return cfg


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a / "checkpoints" / "last.pt"), _weights(b / "checkpoints" / "last.pt")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"weights differ at {key}"
    # the whole run directory is a function of the run's inputs: no timing, no MLflow id in it
    for name in ("history.csv", "config.yaml"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma.pop("run_dir") != mb.pop("run_dir") and ma == mb


def test_train_writes_outputs(tmp_path):
    cfg = _prepared(tmp_path)
    run_dir = tmp_path / "runs" / "two_stage_hard" / "seed0"
    result = train(cfg, "two_stage_hard", 0, run_dir)
    assert result.steps == 2 * (128 // 16)
    for name in ("config.yaml", "metrics.json", "history.csv", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_avg_acc", "val_worst_group_acc", "lr"} <= set(history.columns)
    assert 0.0 <= result.best_val_worst_group_acc <= 1.0
    assert json.loads((run_dir / "metrics.json").read_text())["variant"] == "two_stage_hard"


def test_each_epoch_says_how_long_it_waited_for_data_and_validated(tmp_path, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    from hardmask.data.common import GroupedImageDataset

    cfg = _prepared(tmp_path)
    delay = 0.004  # every sample of training and validation costs the loader at least this
    get_item = GroupedImageDataset.__getitem__

    def slow_item(self, index):
        time.sleep(delay)
        return get_item(self, index)

    monkeypatch.setattr(GroupedImageDataset, "__getitem__", slow_item)
    with caplog.at_level("INFO", logger="hardmask.train"):
        result = train(cfg, "two_stage_hard", 0, tmp_path / "runs" / "two_stage_hard" / "seed0")

    client = MlflowClient(cfg.tracking.uri)
    spent = {
        name: [m.value for m in client.get_metric_history(result.mlflow_run_id, f"epoch/{name}")]
        for name in ("train_s", "data_wait_s", "validation_s")
    }
    lines = [r.getMessage() for r in caplog.records if "two_stage_hard/seed0 epoch " in r.getMessage()]
    assert len(lines) == len(spent["train_s"]) == cfg.optim.epochs
    batch = cfg.data.loader.batch_size
    trained = cfg.data.synthetic.n_train // batch * batch  # full batches only
    for train_s, data_s, val_s, line in zip(*spent.values(), lines, strict=True):
        assert trained * delay <= data_s < train_s  # the loader's time is counted, the steps' is not
        assert val_s >= cfg.data.synthetic.n_val * delay
        share = int(line.split("waiting for data ")[1].split("%")[0])
        assert abs(share - 100 * data_s / train_s) <= 0.5 + 1e-9, line
        assert f", validation {val_s:.1f} s, ETA " in line, line


def test_resume_mid_epoch_is_exact(tmp_path):
    cfg = _prepared(tmp_path)
    full = tmp_path / "full"
    train(cfg, "two_stage_hard", 0, full)

    # Interrupted run: stop at the checkpoint after 2 optimiser steps (mid-epoch 1), then resume to the end.
    part = tmp_path / "part"
    short = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 2})})
    import hardmask.training.loop as loop

    original = loop.save_checkpoint

    def save_then_stop(path, state):
        original(path, state)
        if Path(path).name == "last.pt" and state["loop"]["global_step"] == 2:
            raise KeyboardInterrupt("simulated preemption")

    loop.save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(short, "two_stage_hard", 0, part)
    finally:
        loop.save_checkpoint = original
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=True)["loop"]["batch_in_epoch"] == 2
    train(cfg, "two_stage_hard", 0, part)
    _assert_same_run(full, part)


@pytest.mark.slow(seconds=10)
def test_sigkill_mid_epoch_then_restart_is_exact(tmp_path):
    cfg = _prepared(tmp_path, optim={"epochs": 3})
    params = tmp_path / "params.yaml"
    save_config(cfg, params)
    full = tmp_path / "full"
    train(cfg, "two_stage_hard", 0, full)

    killed = tmp_path / "killed"
    script = (
        "import sys; from hardmask.config import load_config; from hardmask.training.loop import train; "
        f"train(load_config({str(params)!r}), 'two_stage_hard', 0, {str(killed)!r})"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            step = torch.load(last, weights_only=True)["loop"]
            if step["epoch"] >= 1 and step["batch_in_epoch"] > 0:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Whatever moment the kill hit, the checkpoint on disk is whole.
    torch.load(last, weights_only=True)
    train(cfg, "two_stage_hard", 0, killed)
    _assert_same_run(full, killed)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    # lr 1e30: the first update leaves huge but finite weights, the next forward pass overflows
    cfg = _prepared(
        tmp_path,
        optim={"lr": 1e30, "grad_clip": 0.0, "warmup_epochs": 0.0},
        train={"checkpoint_every_steps": 1},
    )
    run_dir = tmp_path / "nan"
    last = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(TrainingError, match=rf"non-finite loss at epoch 0 batch [1-9].*{last} is kept"):
        train(cfg, "baseline_vit", 0, run_dir)
    # the checkpoint on disk is the last one written before the blow-up, with finite weights
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["loop"]["global_step"] >= 1
    assert all(torch.isfinite(w).all() for w in ckpt["model"].values() if w.is_floating_point())


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    cfg = _prepared(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(TrainingError, match="not writable"):
        train(cfg, "baseline_vit", 0, blocker / "run")


def test_resume_refuses_checkpoint_of_another_run(tmp_path):
    cfg = _prepared(tmp_path, optim={"epochs": 1})
    run_dir = tmp_path / "r"
    train(cfg, "baseline_vit", 0, run_dir)
    with pytest.raises(TrainingError, match="belongs to baseline_vit"):
        train(cfg, "two_stage_hard", 0, run_dir)


def test_resume_refuses_a_changed_training_config_but_not_a_changed_schedule_or_log(tmp_path):
    cfg = _prepared(tmp_path, optim={"epochs": 1})
    run_dir = tmp_path / "r"
    first = train(cfg, "baseline_vit", 0, run_dir)
    history = (run_dir / "history.csv").read_text()
    changed_lr = make_tiny_config(tmp_path, optim={"epochs": 1, "lr": 1e-4})
    with pytest.raises(TrainingError, match=r"different configuration \(optim\.lr: 0\.002 -> 0\.0001\)"):
        train(changed_lr, "baseline_vit", 0, run_dir)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.002, "config.yaml kept"
    # where it runs and how it logs cannot change the result: the finished run is picked up as it is
    elsewhere = make_tiny_config(
        tmp_path,
        optim={"epochs": 1},
        train={"log_every_steps": 3, "seeds": [0, 5]},
        cluster={"executor": "debug", "array_parallelism": 7},
        evaluate={"splits": ["test"]},
    )
    again = train(elsewhere, "baseline_vit", 0, run_dir)
    assert again.steps == first.steps and (run_dir / "history.csv").read_text() == history


def test_missing_dataset_is_a_clear_error(tmp_path):
    cfg = make_tiny_config(tmp_path)  # nothing generated
    with pytest.raises(DataError, match=rf"{cfg.data_root}: Waterbirds directory does not exist.*prepare"):
        train(cfg, "baseline_vit", 0, tmp_path / "r")


def test_saved_config_round_trips(tmp_path):
    cfg = _prepared(tmp_path, optim={"epochs": 1})
    run_dir = tmp_path / "r"
    train(cfg, "baseline_vit", 0, run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["epochs"] == 1 and saved["data"]["image_size"] == 32


@pytest.mark.parametrize("variant", ["late_mask_oracle", "group_dro", "linear_probe"])
def test_comparison_variants_train_on_tiny_data(tmp_path, variant):
    cfg = _prepared(tmp_path, optim={"epochs": 1})
    run_dir = tmp_path / variant
    torch.manual_seed(0)
    result = train(cfg, variant, 0, run_dir)
    assert result.steps == 128 // 16 and 0.0 <= result.best_val_worst_group_acc <= 1.0
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    if variant == "group_dro":  # the group weights are part of the state a resume continues from
        weights = ckpt["criterion"]["group_dro"]["weights"]
        assert weights.shape == (4,) and torch.isclose(weights.sum(), weights.new_tensor(1.0))
    if variant == "linear_probe":  # the backbone is exactly the initial one: only the head trained
        from hardmask.models import build_model
        from hardmask.runtime import seed_everything

        seed_everything(0)
        initial = build_model(variant, cfg.model, num_classes=2, image_size=cfg.data.image_size).state_dict()
        for key, value in ckpt["model"].items():
            assert torch.equal(value, initial[key]) == key.startswith("backbone."), key


def test_an_oracle_without_ground_truth_masks_is_refused_before_training(tmp_path):
    from tests.data.conftest import make_waterbirds_folder

    root = make_waterbirds_folder(tmp_path / "wb", with_segmentations=False)
    cfg = make_tiny_config(tmp_path, data={"dataset": "waterbirds", "root": str(root)})
    with pytest.raises(TrainingError, match=r"oracle_mask takes the ground-truth .*data.mask_dir"):
        train(cfg, "oracle_mask", 0, tmp_path / "r")
    assert not list((tmp_path / "r").rglob("*.pt"))  # refused before the first step
