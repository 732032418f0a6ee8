"""Small stand-ins for ``hardmask.training.loop.train`` that cluster tests submit as ``TrainJob`` targets.

They share train's signature ``(cfg, variant, seed, run_dir, dist)`` and run in job processes (local
subprocesses or SLURM tasks), so they live in an importable module and read their knobs from the environment,
which both executors pass on to jobs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hardmask.config import Config
from hardmask.io import atomic_write_json
from hardmask.tracking import RunTracker
from hardmask.training.distributed import DistContext, all_reduce_grads, all_reduce_mean

STEPS_ENV = "HARDMASK_STANDIN_STEPS"  # steps of the counting stand-in
STEP_SECONDS_ENV = "HARDMASK_STANDIN_STEP_SECONDS"  # its time per step
STOP_AFTER_ENV = "HARDMASK_STANDIN_STOP_AFTER"  # simulate a kill after this many steps (in-process tests)


class SimulatedKill(BaseException):
    """Raised by the counting stand-in where a real job would have been killed (a BaseException: no
    ``except Exception`` of the code under test handles a kill)."""


@dataclass(frozen=True)
class EchoResult:
    variant: str
    seed: int
    run_dir: str
    rank: int
    world_size: int
    pid: int
    slurm_job_id: str | None
    slurm_array_task: tuple[str, str] | None  # (array job id, task id)
    setup_probe: str | None  # set by cluster.slurm.setup lines in the SLURM tests
    local_timeout_s: str | None  # the local executor's time limit of the job
    started: float
    finished: float


def echo_train(cfg: Config, variant: str, seed: int, run_dir: Path, dist: DistContext) -> EchoResult:
    """Says where and how it ran; sleeps ``HARDMASK_STANDIN_STEP_SECONDS`` to make overlaps observable."""
    started = time.time()
    time.sleep(float(os.environ.get(STEP_SECONDS_ENV, "0")))
    return EchoResult(
        variant=variant,
        seed=seed,
        run_dir=str(run_dir),
        rank=dist.rank,
        world_size=dist.world_size,
        pid=os.getpid(),
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        slurm_array_task=(
            (os.environ["SLURM_ARRAY_JOB_ID"], os.environ["SLURM_ARRAY_TASK_ID"])
            if "SLURM_ARRAY_JOB_ID" in os.environ
            else None
        ),
        setup_probe=os.environ.get("HARDMASK_SETUP_PROBE"),
        local_timeout_s=os.environ.get("SUBMITIT_LOCAL_TIMEOUT_S"),
        started=started,
        finished=time.time(),
    )


def failing_train(cfg: Config, variant: str, seed: int, run_dir: Path, dist: DistContext) -> None:
    raise ValueError(f"boom from the stand-in ({variant}/seed{seed}) on {socket.gethostname()}")


def dying_train(cfg: Config, variant: str, seed: int, run_dir: Path, dist: DistContext) -> EchoResult:
    """Seed 0 kills its own process (as the kernel's out-of-memory killer would); other seeds echo."""
    if seed == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return echo_train(cfg, variant, seed, run_dir, dist)


# ------------------------------------------------------------------------------------------------ resumable
@dataclass(frozen=True)
class CountResult:
    checksum: int  # depends on every step having run exactly once, in order
    steps: int
    start_steps: tuple[int, ...]  # the step each attempt started from


def _step(checksum: int, step: int, seed: int) -> int:
    return (checksum * 31 + (step + 1) * (seed + 7)) % 1_000_003


def expected_checksum(steps: int, seed: int) -> int:
    checksum = 0
    for step in range(steps):
        checksum = _step(checksum, step, seed)
    return checksum


def counting_train(cfg: Config, variant: str, seed: int, run_dir: Path, dist: DistContext) -> CountResult:
    """Counts ``HARDMASK_STANDIN_STEPS`` steps, saving its state after each one in ``run_dir/progress.json``
    and resuming from there, like the real loop does from ``checkpoints/last.pt``."""
    steps = int(os.environ.get(STEPS_ENV, "20"))
    step_seconds = float(os.environ.get(STEP_SECONDS_ENV, "0"))
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "-1"))
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = run_dir / "progress.json"
    state = (
        json.loads(progress.read_text()) if progress.exists() else {"step": 0, "checksum": 0, "starts": []}
    )
    state["starts"].append(state["step"])
    atomic_write_json(progress, state)
    for done, step in enumerate(range(state["step"], steps)):
        if done == stop_after:
            raise SimulatedKill(f"simulated kill at step {step}")
        time.sleep(step_seconds)
        state["checksum"] = _step(state["checksum"], step, seed)
        state["step"] = step + 1
        atomic_write_json(progress, state)
    return CountResult(checksum=state["checksum"], steps=state["step"], start_steps=tuple(state["starts"]))


# ------------------------------------------------------------------------------------------------ DDP
@dataclass(frozen=True)
class DDPResult:
    rank: int
    world_size: int
    loss: float  # mean over the global batch (all-reduced)
    grad: list[float]  # gradient of that mean loss w.r.t. the weights (all-reduced)
    mlflow_run_id: str | None


def regression_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of 8 rows: x [8,3], y [8]; integer-valued so float sums do not depend on the order."""
    x = torch.arange(24, dtype=torch.float64).reshape(8, 3) % 5 - 2
    y = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.0, -0.5], dtype=torch.float64)
    return x, y


def ddp_train(cfg: Config, variant: str, seed: int, run_dir: Path, dist: DistContext) -> DDPResult:
    """Each rank takes rows ``rank::world_size``; after all-reduce every rank holds the full-batch values."""
    x, y = regression_batch()
    shard = slice(dist.rank, None, dist.world_size)
    weights = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    loss = ((x[shard] @ weights - y[shard]) ** 2).mean()  # this rank's share of the batch
    loss.backward()
    all_reduce_grads([weights])
    mean_loss = all_reduce_mean(float(loss.detach()))
    key = f"{variant}-{seed}"
    tracker = RunTracker.for_training(cfg, variant=variant, seed=seed, run_key=key, enabled=dist.is_main)
    tracker.log_metrics({"train/loss": mean_loss}, step=1)
    tracker.end()
    return DDPResult(dist.rank, dist.world_size, mean_loss, weights.grad.tolist(), tracker.run_id)


def assert_two_ranks_match_single_process(ranks: list[DDPResult], single: DDPResult) -> None:
    """Two ranks hold the single-process loss and gradient, and only rank 0 wrote to MLflow."""
    import pytest

    assert [(r.rank, r.world_size) for r in ranks] == [(0, 2), (1, 2)]
    for result in ranks:
        assert result.loss == pytest.approx(single.loss, rel=1e-12)
        assert result.grad == pytest.approx(single.grad, rel=1e-12)
    assert ranks[0].mlflow_run_id is not None and ranks[1].mlflow_run_id is None
