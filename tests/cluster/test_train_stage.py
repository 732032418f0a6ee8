"""What a person sees of the train stage: per-job start and end lines, per-epoch progress in each job's log,
expected failures in one message, and Ctrl-C stopping cleanly and resuming next time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from hardmask.cluster import submit_training
from hardmask.config import save_config
from hardmask.data import generate_synthetic
from hardmask.tracking import init_tracking

from ..conftest import REPO, make_tiny_config

ONE_RUN = {"variants": ["two_stage_hard"], "seeds": [0]}


def _job_logs(cfg) -> str:
    return "\n".join(p.read_text() for p in sorted(Path(cfg.cluster.logs_dir).rglob("*.err")))


def test_a_training_job_logs_every_epoch_with_validation_and_eta_and_the_stage_says_what_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    cfg = make_tiny_config(tmp_path, cluster={"executor": "local", "poll_interval_s": 0.2}, train=ONE_RUN)
    generate_synthetic(cfg.data.synthetic, cfg.data_root, seed=cfg.base.seed)
    init_tracking(cfg)
    with caplog.at_level("INFO", logger="hardmask.cluster"):
        (result,) = submit_training(cfg, [("two_stage_hard", 0)])
    epochs = [line for line in _job_logs(cfg).splitlines() if "two_stage_hard/seed0 epoch " in line]
    assert len(epochs) == cfg.optim.epochs, _job_logs(cfg)[-2000:]
    for line in epochs:  # the job configured logging: its lines are in its log file
        assert "worst-group 0." in line or "worst-group 1." in line
        assert " img/s, waiting for data " in line and "%, validation " in line and " s, ETA " in line
        assert "val acc " in line and "loss " in line
    said = caplog.text
    assert "started two_stage_hard/seed0 (job " in said and ".err" in said  # where its log is
    assert "finished two_stage_hard/seed0 (1/1) in " in said
    assert f"best validation worst-group accuracy {result.best_val_worst_group_acc:.3f}" in said


def _stage(params: Path, cwd: Path, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HARDMASK_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    command = [sys.executable, str(REPO / "stages" / "train.py"), "--params", str(params)]
    return subprocess.Popen(command, cwd=cwd, env=env, text=True, stderr=subprocess.PIPE, **popen)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_failing_job_ends_the_stage_with_its_message_and_no_traceback(tmp_path: Path):
    cfg = make_tiny_config(tmp_path, cluster={"executor": "local", "poll_interval_s": 0.2}, train=ONE_RUN)
    save_config(cfg, tmp_path / "params.yaml")  # no dataset generated
    proc = _stage(tmp_path / "params.yaml", tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "error: 1 of 1 training runs failed:" in err
    assert f"{cfg.data_root}: Waterbirds directory does not exist" in err and "prepare" in err
    assert "Traceback" not in err, err


@pytest.mark.slow(seconds=20)
def test_ctrl_c_stops_cleanly_marks_the_run_killed_and_the_next_run_resumes(tmp_path: Path):
    cfg = make_tiny_config(
        tmp_path,
        cluster={"executor": "local", "poll_interval_s": 0.2},
        train={**ONE_RUN, "checkpoint_every_steps": 1},
        optim={"epochs": 12},  # long enough to be interrupted mid-way
    )
    generate_synthetic(cfg.data.synthetic, cfg.data_root, seed=cfg.base.seed)
    params = tmp_path / "params.yaml"
    save_config(cfg, params)
    last = tmp_path / "runs" / "two_stage_hard" / "seed0" / "checkpoints" / "last.pt"

    # its own process group, like a terminal's, and SIGINT's default action even where the tests run as a
    # background job (whose children inherit an ignored SIGINT, so that Ctrl-C would never arrive)
    proc = _stage(params, tmp_path, start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 240
    while not (last.exists() and torch.load(last, weights_only=True)["loop"]["epoch"] >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on `dvc repro` sends to the whole group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "interrupted: every run keeps its last checkpoint; `dvc repro` resumes them"
    )
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err

    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    (run,) = client.search_runs([experiment], "tags.kind = 'train'")
    assert run.info.status == "KILLED"

    stopped_at = torch.load(last, weights_only=True)["loop"]
    resumed = _stage(params, tmp_path)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert (
        f"resumed two_stage_hard/seed0 from epoch {stopped_at['epoch']}, step {stopped_at['global_step']}"
        in err
    )
    (run,) = client.search_runs([experiment], "tags.kind = 'train'")
    assert run.info.status == "FINISHED"  # the same MLflow run, continued to the end
    metrics = json.loads((last.parent.parent / "metrics.json").read_text())
    assert metrics["epochs"] == 12
