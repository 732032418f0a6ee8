"""hardmask.cluster.timing: an executor's empty-job round trip and one real training job through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardmask.cluster.timing import executor_config, executor_record
from hardmask.data import generate_synthetic

from ..conftest import make_tiny_config


def test_executor_config_isolates_the_timed_run(tmp_path: Path):
    cfg = make_tiny_config(tmp_path)
    timed = executor_config(cfg, "slurm", "two_stage_hard", 2, tmp_path / "w")
    assert timed.cluster.executor == "slurm" and timed.optim.epochs == 2
    assert (timed.train.variants, timed.train.seeds) == (("two_stage_hard",), (0,))
    assert timed.base.runs_dir == str(tmp_path / "w" / "runs")
    assert timed.tracking.uri == f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}"
    assert timed.model == cfg.model and timed.data == cfg.data  # what is timed is the configured training


@pytest.mark.slow(seconds=17)  # it trains two real jobs and compares their timings
def test_local_executor_record_trains_from_nothing(tmp_path: Path):
    cfg = make_tiny_config(tmp_path, train={"log_every_steps": 1000})
    generate_synthetic(cfg.data.synthetic, cfg.data_root, seed=cfg.base.seed)
    workdir = tmp_path / "bench"
    records = [executor_record(cfg, "local", "two_stage_hard", 1, 2, workdir) for _ in range(2)]
    for record in records:
        assert record["executor"] == "local" and record["train_images"] == cfg.data.synthetic.n_train
        assert len(record["round_trips_s"]) == 2 and 0 < record["round_trip_s"] < record["job_wall_s"]
        assert record["train_images_per_s"] > record["end_to_end_images_per_s"] > 0
    # each measurement trained in its own folder: the second did not resume the first's finished run
    assert len([p for p in workdir.iterdir() if (p / "runs" / "two_stage_hard" / "seed0").is_dir()]) == 2
