"""The real training loop as a cluster job: two gloo processes on the local executor, tracked in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardmask.checkpoint import training_key
from hardmask.cluster import submit_training
from hardmask.tracking import init_tracking

from ..conftest import make_tiny_config

pytestmark = pytest.mark.slow(seconds=8)


def test_ddp_training_job_writes_its_run_dir_and_one_mlflow_run(tmp_path: Path, mlflow_uri: str):
    data = pytest.importorskip("hardmask.data")
    if not hasattr(data, "generate_synthetic"):
        pytest.skip("hardmask.data.generate_synthetic is not available yet")
    from mlflow.tracking import MlflowClient

    cfg = make_tiny_config(
        tmp_path,
        cluster={"executor": "local", "local_tasks": 2, "poll_interval_s": 0.5},
        tracking={"uri": mlflow_uri},
        optim={"epochs": 1},
    )
    data.generate_synthetic(cfg.data.synthetic, cfg.data_root, seed=cfg.base.seed)
    init_tracking(cfg)
    (result,) = submit_training(cfg, [("two_stage_hard", 0)])

    run_dir = tmp_path / "runs" / "two_stage_hard" / "seed0"
    assert Path(result.run_dir) == run_dir
    assert result.steps > 0 and result.epochs == 1
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == result.steps
    assert (run_dir / "checkpoints" / "last.pt").is_file()

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    runs = client.search_runs([experiment], "tags.kind = 'train'")
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id]  # rank 1 did not open a run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["cluster.local_tasks"] == "2"
    assert any(key.startswith("epoch/") for key in run.data.metrics)
    # the run key links the MLflow run to what it trained, and the best weights are an artifact
    assert run.data.tags["run_key"] == training_key(cfg.dump(), "two_stage_hard", 0)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
