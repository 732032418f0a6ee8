"""Training jobs on the debug (in-process) and local (subprocess) executors: arrays, errors, resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit

from hardmask.cluster import (
    DEFAULT_TARGET,
    ClusterSetupError,
    TrainingJobsFailed,
    TrainJob,
    make_executor,
    submit_training,
)
from hardmask.cluster.executor import GPU_DEVICE_FILES
from hardmask.cluster.job import JobWatch, LocalWorker, resolve_target
from hardmask.cluster.queue import RunQueue
from hardmask.config import Config

from ..conftest import make_tiny_config
from .standins import STEP_SECONDS_ENV, STEPS_ENV, STOP_AFTER_ENV, SimulatedKill, expected_checksum

ECHO = "tests.cluster.standins:echo_train"
FAILING = "tests.cluster.standins:failing_train"
COUNTING = "tests.cluster.standins:counting_train"
DYING = "tests.cluster.standins:dying_train"


def _cfg(tmp_path: Path, **cluster) -> Config:
    return make_tiny_config(tmp_path, cluster=cluster)


def test_default_target_is_the_training_loop():
    from hardmask.training.loop import train

    assert TrainJob().target == DEFAULT_TARGET
    assert resolve_target(DEFAULT_TARGET) is train
    assert isinstance(TrainJob(), submitit.helpers.Checkpointable)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon_here", "expected 'package.module:function'"),
        ("tests.cluster.standins:no_such_function", "cannot be imported"),
        ("tests.cluster.standins:STEPS_ENV", "is not callable"),
    ],
)
def test_bad_target_is_refused_before_submitting(tmp_path: Path, target: str, message: str):
    with pytest.raises(ValueError, match=message):
        submit_training(_cfg(tmp_path), [("baseline_vit", 0)], target=target)
    assert not (tmp_path / "logs").exists()  # nothing was submitted


def test_debug_array_returns_results_in_order_with_run_dirs(tmp_path: Path):
    cfg = _cfg(tmp_path, executor="debug")
    pairs = [("two_stage_hard", 1), ("baseline_vit", 0), ("baseline_vit", 2)]
    results = submit_training(cfg, pairs, target=ECHO)
    assert [(r.variant, r.seed) for r in results] == pairs
    assert [r.run_dir for r in results] == [str(tmp_path / "runs" / v / f"seed{s}") for v, s in pairs]
    assert {(r.rank, r.world_size) for r in results} == {(0, 1)}


def test_the_stage_returns_when_the_last_job_ends_not_a_poll_interval_later(tmp_path: Path):
    cfg = _cfg(tmp_path, executor="debug", poll_interval_s=30.0)  # debug jobs end at their first poll
    start = time.monotonic()
    submit_training(cfg, [("baseline_vit", 0), ("baseline_vit", 1)], target=ECHO)
    assert time.monotonic() - start < 30.0


def test_failures_wait_for_all_jobs_and_carry_the_remote_traceback(tmp_path: Path):
    cfg = _cfg(tmp_path, executor="local", array_parallelism=2, poll_interval_s=0.2)
    with pytest.raises(TrainingJobsFailed) as caught:
        submit_training(cfg, [("baseline_vit", 0), ("oracle_mask", 4)], target=FAILING)
    message = str(caught.value)
    assert message.startswith("2 of 2 training runs failed:")
    assert "=== baseline_vit/seed0 (job " in message and "=== oracle_mask/seed4 (job " in message
    assert "Traceback" in message and "in failing_train" in message  # the frames of the job process
    assert "ValueError: boom from the stand-in (oracle_mask/seed4)" in message
    assert ".err" in message  # where the job's full stderr is
    assert [(f.variant, f.seed) for f in caught.value.failures] == [("baseline_vit", 0), ("oracle_mask", 4)]


def test_debug_failure_is_reported_without_a_debugger(tmp_path: Path):
    # submitit's debug jobs open pdb on an exception raised through result(); submit_training must not.
    with pytest.raises(TrainingJobsFailed, match=r"(?s)1 of 1 .*ValueError: boom from the stand-in"):
        submit_training(_cfg(tmp_path, executor="debug"), [("baseline_vit", 0)], target=FAILING)


def test_local_array_parallelism_one_runs_jobs_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(STEP_SECONDS_ENV, "0.5")
    cfg = _cfg(tmp_path, executor="local", array_parallelism=1, poll_interval_s=0.1)
    first, second = submit_training(cfg, [("baseline_vit", 0), ("baseline_vit", 1)], target=ECHO)
    assert first.pid == second.pid  # one worker process trains both, paying its start-up once
    assert first.finished <= second.started


def test_local_workers_share_the_runs_at_most_array_parallelism_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(STEP_SECONDS_ENV, "1.0")
    cfg = _cfg(tmp_path, executor="local", array_parallelism=2, poll_interval_s=0.1)
    pairs = [("baseline_vit", 0), ("two_stage_hard", 0), ("oracle_mask", 0), ("baseline_vit", 1)]
    results = submit_training(cfg, pairs, target=ECHO)
    assert [(r.variant, r.seed) for r in results] == pairs
    assert len({r.pid for r in results}) == 2  # two worker processes, each training runs in turn
    # the time limit is per run: a worker that trained every run would have had as long as four jobs
    assert {r.local_timeout_s for r in results} == {str(4 * 60 * cfg.cluster.slurm.time_min)}
    for result in results:  # when a run starts, at most one other is running
        assert sum(other.started <= result.started < other.finished for other in results) <= 2


def test_a_worker_goes_on_after_a_run_that_raised(tmp_path: Path):
    cfg = _cfg(tmp_path, executor="local", array_parallelism=1, poll_interval_s=0.1)
    with pytest.raises(TrainingJobsFailed) as caught:
        submit_training(cfg, [("baseline_vit", 0), ("oracle_mask", 4)], target=FAILING)
    assert str(caught.value).count("ValueError: boom from the stand-in") == 2  # both runs ran
    assert len({f.job_id for f in caught.value.failures}) == 1  # in the one worker


def test_a_run_whose_worker_is_killed_fails_and_a_new_worker_takes_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # submitit waits 15 s for the result file of a job that ended (for slow shared file systems); a killed
    # job never writes one
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)
    cfg = _cfg(tmp_path, executor="local", array_parallelism=1, poll_interval_s=0.1)
    with pytest.raises(TrainingJobsFailed) as caught:
        submit_training(cfg, [("baseline_vit", 0), ("baseline_vit", 1)], target=DYING)
    assert str(caught.value).startswith("1 of 2 training runs failed:")
    (failure,) = caught.value.failures
    assert (failure.variant, failure.seed) == ("baseline_vit", 0)
    assert len(list((tmp_path / "logs" / "train").glob("[0-9]*"))) == 2  # the killed worker and its successor


def test_workers_that_fail_before_their_first_run_are_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    shadow = tmp_path / "shadow" / "hardmask"  # job processes import this package instead of hardmask
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no hardmask in this job')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    cfg = _cfg(tmp_path, executor="local", array_parallelism=2, poll_interval_s=0.1)
    pairs = [("baseline_vit", 0), ("baseline_vit", 1), ("baseline_vit", 2)]
    with pytest.raises(TrainingJobsFailed) as caught:
        submit_training(cfg, pairs, target=ECHO)
    message = str(caught.value)
    assert message.startswith("3 of 3 training runs failed:")
    assert message.count("no worker took it") == 3 and "no hardmask in this job" in message
    assert len(list((tmp_path / "logs" / "train").glob("[0-9]*"))) == 2  # the first two, not replaced


def test_a_local_job_with_several_tasks_trains_one_run(tmp_path: Path):
    cfg = _cfg(tmp_path, executor="local", array_parallelism=2, local_tasks=2, poll_interval_s=0.2)
    first, second = submit_training(cfg, [("baseline_vit", 0), ("baseline_vit", 1)], target=ECHO)
    assert first.pid != second.pid  # the process group is the run's: a job of its own
    assert (first.world_size, second.world_size) == (2, 2)


def test_checkpoint_resubmits_the_same_call_which_resumes_from_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """What a requeue does, in-process: a killed attempt, then the DelayedSubmission from checkpoint()."""
    cfg = _cfg(tmp_path)
    monkeypatch.setenv(STEPS_ENV, "12")
    monkeypatch.setenv(STOP_AFTER_ENV, "5")
    job = TrainJob(COUNTING)
    with pytest.raises(SimulatedKill):
        job(cfg.dump(), "two_stage_hard", 3)
    resubmission = job.checkpoint(cfg.dump(), "two_stage_hard", 3)
    assert isinstance(resubmission.function, TrainJob) and resubmission.function.target == COUNTING
    assert resubmission.args == (cfg.dump(), "two_stage_hard", 3)

    monkeypatch.delenv(STOP_AFTER_ENV)
    result = resubmission.result()
    assert result.checksum == expected_checksum(12, seed=3)  # every step exactly once
    assert result.start_steps == (0, 5)  # the second attempt resumed instead of starting over


def test_a_requeued_worker_gives_its_run_back_and_the_next_attempt_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A local time-out, in-process: the worker is killed in its first run, checkpoint() gives the run back,
    and the resubmitted worker resumes it from its run directory, then trains the next."""
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # what submitit's local job environment reads
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    monkeypatch.setenv(STEPS_ENV, "12")
    monkeypatch.setenv(STOP_AFTER_ENV, "5")
    runs = [("two_stage_hard", 3), ("baseline_vit", 1)]
    queue = RunQueue.create(tmp_path / "queue", runs)
    worker = LocalWorker(COUNTING)
    with pytest.raises(SimulatedKill):
        worker(cfg.dump(), str(queue.root), runs)
    assert queue.claimed_by(0) == "4242" and queue.claimed_by(1) is None
    resubmission = worker.checkpoint(cfg.dump(), str(queue.root), runs)
    assert queue.claimed_by(0) is None  # given back
    assert isinstance(resubmission.function, LocalWorker) and resubmission.function.target == COUNTING
    assert resubmission.args == (cfg.dump(), str(queue.root), runs)

    monkeypatch.delenv(STOP_AFTER_ENV)
    assert resubmission.result() == 2  # both runs, in this attempt
    first, second = queue.outcome(0), queue.outcome(1)
    assert first.checksum == expected_checksum(12, seed=3) and first.start_steps == (0, 5)  # resumed
    assert second.checksum == expected_checksum(12, seed=1) and second.start_steps == (0,)


class _Worker:
    """What the stage's watch asks of a worker's submitit job."""

    def __init__(self, job_id: str, folder: Path) -> None:
        self.job_id, self.ended = job_id, False
        self.paths = SimpleNamespace(stderr=folder / f"{job_id}_0_log.err")

    def done(self) -> bool:
        return self.ended

    def exception(self) -> BaseException | None:
        return None


def test_a_run_given_back_and_retaken_follows_its_new_worker(tmp_path: Path):
    cfg = _cfg(tmp_path, executor="local")
    queue = RunQueue.create(tmp_path / "queue", [("baseline_vit", 0)])
    watch = JobWatch(cfg, 1)
    watch.follow(queue)
    first, second = _Worker("1", tmp_path), _Worker("2", tmp_path)
    watch.add_worker(first)
    watch.add_worker(second)
    assert queue.claim("1") == 0
    assert watch.poll() == 1 and watch.entries[0].job is first
    queue.release(0)  # the first worker timed out and gave the run back ...
    assert queue.claim("2") == 0  # ... the second took it
    first.ended = True
    assert watch.poll() == 1  # still running, in the second worker: not failed with the first
    assert watch.entries[0].job is second
    queue.finish(0, "trained")
    assert watch.poll() == 0 and watch.results() == ["trained"]


def test_slurm_executor_without_slurm_commands_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch / srun here
    with pytest.raises(ClusterSetupError, match=r"sbatch, srun.*scripts/slurm.sh"):
        make_executor(_cfg(tmp_path, executor="slurm").cluster, tmp_path / "logs", name="x")


def test_local_executor_takes_tasks_and_time_limit_from_the_config(tmp_path: Path):
    cfg = make_tiny_config(
        tmp_path,
        cluster={"executor": "local", "local_tasks": 2, "slurm": {"time_min": 7, "max_num_timeout": 1}},
    )
    executor = make_executor(cfg.cluster, tmp_path / "logs", name="x")
    assert executor.cluster == "local"
    parameters = executor._executor.parameters  # what the local controller is started with
    assert (parameters["tasks_per_node"], parameters["timeout_min"], parameters["gpus_per_node"]) == (2, 7, 0)
    assert executor._executor.max_num_timeout == 1


@pytest.mark.skipif(
    sys.platform != "linux" or any(os.path.exists(p) for p in GPU_DEVICE_FILES),
    reason="needs a Linux without GPUs",
)
def test_the_gpu_count_asks_torch_only_where_a_gpu_driver_is_there(tmp_path: Path):
    """The local executor's GPU count imported torch into the train stage, 1.2 s before its first job, on
    machines without any GPU driver too."""
    script = (
        "import sys\nfrom hardmask.cluster import executor\n"
        "first = (executor._visible_gpus(), 'torch' in sys.modules)\n"
        f"executor.GPU_DEVICE_FILES = ({str(tmp_path)!r},)  # present: a driver may be there, torch decides\n"
        "print(first, (executor._visible_gpus(), 'torch' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(0, False) (0, True)"


@pytest.mark.slow(seconds=8)  # two job processes importing MLflow on two cores
def test_parallel_jobs_write_to_one_mlflow_store_prepared_before_submission(tmp_path: Path, mlflow_uri: str):
    from mlflow.tracking import MlflowClient

    from hardmask.tracking import init_tracking

    cfg = make_tiny_config(
        tmp_path,
        cluster={"executor": "local", "array_parallelism": 2, "poll_interval_s": 0.2},
        tracking={"uri": mlflow_uri},
        train={"variants": ["baseline_vit", "oracle_mask"], "seeds": [0]},
    )
    init_tracking(cfg)  # what the train stage does before submitting
    pairs = [("baseline_vit", 0), ("oracle_mask", 0)]
    results = submit_training(cfg, pairs, target="tests.cluster.standins:ddp_train")

    client = MlflowClient(mlflow_uri)
    experiment = [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id]
    runs = {r.info.run_id: r for r in client.search_runs(experiment, "tags.kind = 'train'")}
    assert sorted(runs) == sorted(r.mlflow_run_id for r in results)
    parent_runs = client.search_runs(experiment, "tags.kind = 'parent'")
    parents = {r.data.tags["variant"]: r.info.run_id for r in parent_runs}
    for result, (variant, _) in zip(results, pairs):
        run = runs[result.mlflow_run_id]
        assert run.data.tags["mlflow.parentRunId"] == parents[variant]
        assert run.data.params["cluster.executor"] == "local"


def _fake_run(cfg: Config, variant: str, seed: int) -> Path:
    from hardmask.config import save_config

    run_dir = Path(cfg.base.runs_dir) / variant / f"seed{seed}"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def test_a_run_of_another_training_config_is_moved_aside_not_resumed(tmp_path: Path):
    from hardmask.cluster import supersede_stale_runs

    old = make_tiny_config(tmp_path, optim={"lr": 0.01})
    stale, kept = _fake_run(old, "two_stage_hard", 0), _fake_run(old, "baseline_vit", 0)
    current = make_tiny_config(tmp_path, optim={"lr": 0.02}, cluster={"executor": "debug"})
    unchanged_for_baseline = make_tiny_config(tmp_path, optim={"lr": 0.01}, cluster={"executor": "debug"})

    assert supersede_stale_runs(unchanged_for_baseline, [("baseline_vit", 0)]) == []
    (moved,) = supersede_stale_runs(current, [("two_stage_hard", 0), ("oracle_mask", 0)])
    assert not stale.exists() and (moved / "checkpoints" / "last.pt").read_bytes() == b"weights"
    assert moved.parent == tmp_path / "runs.superseded" / "two_stage_hard" and moved.name.startswith("seed0-")
    assert kept.exists()

    # submit_training does it before submitting: the job starts in an empty run directory
    stale_oracle = _fake_run(old, "oracle_mask", 1)
    submit_training(current, [("oracle_mask", 1)], target=ECHO)
    assert not (stale_oracle / "checkpoints" / "last.pt").exists()
    assert len(list((tmp_path / "runs.superseded" / "oracle_mask").iterdir())) == 1
