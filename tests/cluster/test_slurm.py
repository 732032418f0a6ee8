"""Jobs on a real SLURM (``scripts/slurm.sh start`` gives a single-node one): resources, arrays, requeue and
resume, jobs that die without a result, DDP over two tasks, and requests SLURM refuses."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hardmask.cluster import SubmissionError, TrainingJobsFailed, TrainJob, make_executor, submit_training
from hardmask.config import Config
from hardmask.training.distributed import DistContext

from ..conftest import make_tiny_config
from .standins import (
    STEP_SECONDS_ENV,
    STEPS_ENV,
    assert_two_ranks_match_single_process,
    counting_train,
    ddp_train,
    expected_checksum,
)

# One worker runs them all: the local SLURM node has room for one test's jobs at a time.
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

ECHO = "tests.cluster.standins:echo_train"
COUNTING = "tests.cluster.standins:counting_train"
# Small jobs that fit the 2-CPU test node side by side.
SMALL = {"cpus_per_task": 1, "mem_gb": 0.5, "time_min": 5}


def _cfg(tmp_path: Path, slurm: dict | None = None, **cluster: Any) -> Config:
    cluster = {"executor": "slurm", "array_parallelism": 2, "poll_interval_s": 0.5, **cluster}
    return make_tiny_config(tmp_path, cluster={**cluster, "slurm": {**SMALL, **(slurm or {})}})


def _unique_name() -> str:
    return f"hm-test-{uuid.uuid4().hex[:8]}"


def _wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _squeue(name: str) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of every array task of the jobs called ``name``."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-n", name, "-o", "%i|%T|%r"], capture_output=True, text=True, check=True
    )
    return [tuple(line.split("|")) for line in out.stdout.split()]  # type: ignore[misc]


def _release_requeued(job_id: str) -> None:
    """SLURM holds a requeued batch job for 120 s (Reason=BeginTime); start it sooner to keep the test short.

    Not at once: slurmd refuses to relaunch a job within the second its old credential was revoked in.
    """
    _wait_for(lambda: _state(job_id) == ("PENDING", "BeginTime"), 60, f"job {job_id} to be requeued")
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


def _state(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True)
    return tuple(out.stdout.strip().split("|")) if out.stdout.strip() else ("", "")  # type: ignore[return-value]


def _scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
    )
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def _sacct(job_id: str, fields: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", fields], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split("|")


def _in_background(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


# ------------------------------------------------------------------------------------------------ tests
def test_job_runs_on_slurm_with_the_requested_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARDMASK_SETUP_PROBE", "")
    cfg = _cfg(
        tmp_path,
        slurm={
            "partition": "debug",
            "time_min": 3,
            "additional_parameters": {"comment": "hardmask-test"},
            "setup": ["export HARDMASK_SETUP_PROBE=from-setup"],
        },
    )
    started = time.perf_counter()
    (result,) = submit_training(cfg, [("baseline_vit", 0)], target=ECHO)
    print(f"SLURM round trip of a trivial job: {time.perf_counter() - started:.1f} s")

    assert result.slurm_job_id is not None and result.run_dir == str(tmp_path / "runs/baseline_vit/seed0")
    assert result.setup_probe == "from-setup"  # cluster.slurm.setup ran before the task
    # the result file is written before the job's processes exit: wait for SLURM to see it end
    _wait_for(lambda: _scontrol_job(result.slurm_job_id)["JobState"] == "COMPLETED", 30, "the job to end")
    job = _scontrol_job(result.slurm_job_id)
    assert (job["Partition"], job["NumCPUs"], job["MinMemoryNode"]) == ("debug", "1", "512M")  # mem_gb = 0.5
    assert (job["TimeLimit"], job["Comment"]) == ("00:03:00", "hardmask-test")
    # accounting knows the job too: submitit asks sacct about jobs that end without a result
    _wait_for(lambda: _sacct(result.slurm_job_id, "State") == ["COMPLETED"], 30, "sacct to record the job")


def test_array_of_two_variants_runs_as_one_slurm_array(tmp_path: Path):
    pairs = [("baseline_vit", 0), ("two_stage_hard", 0)]
    results = submit_training(_cfg(tmp_path), pairs, target=ECHO)
    assert [(r.variant, r.seed) for r in results] == pairs
    (first_array, first_task), (second_array, second_task) = (r.slurm_array_task for r in results)
    assert first_array == second_array  # one sbatch --array ...
    assert (first_task, second_task) == ("0", "1")  # ... of two tasks, in the order of the pairs


@pytest.mark.parametrize("interrupt", ["preemption signal", "scontrol requeue"])
def test_requeued_job_resumes_from_its_run_dir_and_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: str
):
    """Interrupt a running job: submitit's USR2 handler (timeout/preemption: checkpoint() + requeue) or a hard
    `scontrol requeue` (killed without a checkpoint call). Either way the rerun resumes from progress.json."""
    steps = (
        32  # the 28 steps left after the interruption outlast SLURM's KillWait (5 s), SIGTERM's grace time
    )
    monkeypatch.setenv(STEPS_ENV, str(steps))
    monkeypatch.setenv(STEP_SECONDS_ENV, "0.3")
    cfg, name = _cfg(tmp_path), _unique_name()
    progress = tmp_path / "runs/two_stage_hard/seed2/progress.json"
    pending = _in_background(submit_training, cfg, [("two_stage_hard", 2)], target=COUNTING, name=name)

    _wait_for(lambda: progress.exists() and '"step": 4' in progress.read_text(), 60, "4 steps of the job")
    (job_id, _, _), *_ = _squeue(name)
    if interrupt == "preemption signal":
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before a time-out
    else:
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    _release_requeued(job_id)
    (result,) = pending.result(timeout=120)

    monkeypatch.setenv(STEP_SECONDS_ENV, "0")
    uninterrupted = counting_train(cfg, "two_stage_hard", 2, tmp_path / "uninterrupted", DistContext.single())
    assert result.checksum == uninterrupted.checksum == expected_checksum(steps, seed=2)
    assert result.steps == steps
    assert len(result.start_steps) == 2 and result.start_steps[0] == 0 and result.start_steps[1] >= 4


def test_time_out_beyond_max_num_timeout_fails_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(STEPS_ENV, "100")
    monkeypatch.setenv(STEP_SECONDS_ENV, "0.3")
    cfg, name = _cfg(tmp_path, slurm={"max_num_timeout": 0}), _unique_name()
    pending = _in_background(submit_training, cfg, [("baseline_vit", 1)], target=COUNTING, name=name)
    progress = tmp_path / "runs/baseline_vit/seed1/progress.json"
    _wait_for(progress.exists, 60, "the job to start")
    (job_id, _, _), *_ = _squeue(name)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    with pytest.raises(TrainingJobsFailed, match="timed-out too many times"):
        pending.result(timeout=60)


def test_job_killed_without_a_result_is_reported_from_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(STEPS_ENV, "100")
    monkeypatch.setenv(STEP_SECONDS_ENV, "0.3")
    cfg, name = _cfg(tmp_path), _unique_name()
    pending = _in_background(submit_training, cfg, [("baseline_vit", 2)], target=COUNTING, name=name)
    _wait_for((tmp_path / "runs/baseline_vit/seed2/progress.json").exists, 60, "the job to start")
    (job_id, _, _), *_ = _squeue(name)
    subprocess.run(["scancel", job_id], check=True)
    with pytest.raises(
        TrainingJobsFailed, match=r"(?s)baseline_vit/seed2.*has not produced any output.*CANCELLED"
    ):
        pending.result(timeout=90)


def test_two_task_slurm_job_all_reduces_like_a_single_process(tmp_path: Path, mlflow_uri: str):
    cfg = make_tiny_config(
        tmp_path,
        cluster={"executor": "slurm", "slurm": {**SMALL, "tasks_per_node": 2}},
        tracking={"uri": mlflow_uri},
    )
    executor = make_executor(cfg.cluster, tmp_path / "logs", name=_unique_name())
    ranks = executor.submit(
        TrainJob("tests.cluster.standins:ddp_train"), cfg.dump(), "baseline_vit", 0
    ).results()
    single = ddp_train(cfg, "baseline_vit", 1, tmp_path / "single", DistContext.single())
    assert_two_ranks_match_single_process(ranks, single)


@pytest.mark.parametrize(
    ("slurm", "sbatch_says"),
    [
        ({"nodes": 1000}, "More processors requested than permitted"),
        ({"mem_gb": 10_000}, "Requested node configuration is not available"),
    ],
)
def test_impossible_request_is_refused_with_a_clear_error(tmp_path: Path, slurm: dict, sbatch_says: str):
    key, value = next(iter(slurm.items()))
    with pytest.raises(SubmissionError) as caught:
        submit_training(_cfg(tmp_path, slurm=slurm), [("baseline_vit", 0)], target=ECHO)
    message = str(caught.value)
    assert message.startswith("cluster.executor=slurm: the cluster refused the job array")
    assert f"{key}={float(value) if key == 'mem_gb' else value}" in message
    assert sbatch_says in message
    # what the cluster does offer, so that the fix is in the message too
    partition = subprocess.run(["sinfo", "--noheader", "--format", "%P"], capture_output=True, text=True)
    assert "The cluster offers (sinfo):" in message
    assert f"partition {partition.stdout.split()[0]} (up): 1 nodes, 2 CPUs" in message
