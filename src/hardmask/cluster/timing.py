"""What an executor costs: the round trip of an empty job, and a real training job submitted through it.

``python -m hardmask.bench --only executors --executors local,slurm`` prints one JSON line per executor. The
figures answer "how much slower is training when the train stage goes through SLURM than when it runs here":

- ``round_trip_s``: submit -> ``job.result()`` of a job that returns at once (median and all values), i.e.
  the scheduler, the interpreter start and submitit's pickles, nothing else;
- ``train_images_per_s``: the throughput the training loop measured inside the job (optimisation steps only);
- ``job_wall_s`` and ``end_to_end_images_per_s``: submit -> result of one training job (start-up, every
  epoch's validation, checkpoints and MLflow included), and the training images it saw per second of that.

Every measurement trains from nothing in its own fresh directory under ``workdir`` (its own MLflow store
too), so no run resumes another's checkpoint.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from hardmask import layout
from hardmask.cluster.executor import make_executor
from hardmask.cluster.job import submit_training
from hardmask.config import Config, config_from_dict, deep_merge


def _empty_job() -> int:
    return 0


def round_trip_seconds(cfg: Config, folder: Path, repeats: int) -> list[float]:
    """Wall seconds from submit to result of ``repeats`` empty jobs, one after the other."""
    executor = make_executor(cfg.cluster, folder, "hardmask-round-trip")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        executor.submit(_empty_job).result()
        seconds.append(time.perf_counter() - start)
    return seconds


def executor_config(cfg: Config, executor: str, variant: str, epochs: int, workdir: Path) -> Config:
    """``cfg`` training seed 0 of ``variant`` for ``epochs`` on ``executor``, writing below ``workdir``."""
    override = {
        "base": {"runs_dir": str(workdir / "runs")},
        "optim": {"epochs": epochs},
        "train": {"variants": [variant], "seeds": [0]},
        "cluster": {"executor": executor, "logs_dir": str(workdir / "logs")},
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
    }
    return config_from_dict(deep_merge(cfg.dump(), override), source=f"executor timing ({executor})")


def executor_record(
    cfg: Config, executor: str, variant: str, epochs: int, repeats: int, workdir: Path
) -> dict:
    from hardmask.data import build_dataset
    from hardmask.tracking import init_tracking

    workdir.mkdir(parents=True, exist_ok=True)
    run_cfg = executor_config(cfg, executor, variant, epochs, Path(tempfile.mkdtemp(dir=workdir)))
    trips = round_trip_seconds(run_cfg, layout.logs_dir(run_cfg, "round-trip"), repeats)
    n_train = len(build_dataset(run_cfg, "train", train=False))
    init_tracking(run_cfg)  # as the train stage does: the store exists before the job writes to it
    start = time.perf_counter()
    (result,) = submit_training(run_cfg, [(variant, 0)], name="hardmask-timing")
    job_wall = time.perf_counter() - start
    return {
        "measurement": "executors",
        "executor": executor,
        "variant": variant,
        "epochs": epochs,
        "train_images": epochs * n_train,
        "round_trip_s": round(statistics.median(trips), 3),
        "round_trips_s": [round(t, 3) for t in trips],
        "train_images_per_s": round(result.train_images_per_s, 1),
        "job_wall_s": round(job_wall, 2),
        "end_to_end_images_per_s": round(epochs * n_train / job_wall, 1),
        "threads": run_cfg.train.num_threads,
    }
