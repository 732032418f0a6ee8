"""The training job: one (variant, seed) per job, submitted as one job array, awaited by the DVC stage.

A job is idempotent and resumable: it trains into ``<base.runs_dir>/<variant>/seed<seed>/`` and the training
loop continues from ``checkpoints/last.pt`` there. That directory outlives a change of parameters (the DVC
output is ``persist``), so before submitting, a run whose training config differs from the current one is
moved to ``<base.runs_dir>.superseded/`` and trained afresh (:func:`supersede_stale_runs`).

On a SLURM time-out or preemption submitit calls :meth:`TrainJob.checkpoint`, which resubmits the same
call; the requeued job finds its run directory and resumes.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError

from hardmask import layout
from hardmask.checkpoint import describe_config_diff, training_config_diff
from hardmask.cluster.executor import make_executor
from hardmask.config import Config, config_from_dict
from hardmask.models import check_variants

log = logging.getLogger("hardmask.cluster")

DEFAULT_TARGET = "hardmask.training.loop:train"


class SubmissionError(RuntimeError):
    """The cluster refused the jobs (e.g. SLURM cannot satisfy the requested resources)."""


class TrainingJobsFailed(RuntimeError):
    """At least one job of the array failed; the message carries each failed job's remote traceback."""

    def __init__(self, failures: Sequence[JobFailure], total: int) -> None:
        self.failures = tuple(failures)
        parts = [f"{len(failures)} of {total} training jobs failed:"]
        for failure in failures:
            parts.append(
                f"\n=== {failure.variant}/seed{failure.seed} (job {failure.job_id}) ===\n{failure.error}"
            )
        super().__init__("\n".join(parts))


@dataclass(frozen=True)
class JobFailure:
    variant: str
    seed: int
    job_id: str
    error: str  # submitit's message: remote traceback and the paths of the job's logs


def supersede_stale_runs(cfg: Config, variants_seeds: Sequence[tuple[str, int]]) -> list[Path]:
    """Move every resumable run directory that was trained under another training config out of the way.

    A run is compared through its ``config.yaml`` (written by each start of the loop, after the loop has
    checked that the checkpoint matches it), so no checkpoint is loaded. Moved runs keep everything under
    ``<base.runs_dir>.superseded/<variant>/seed<seed>-<UTC time>/``; the moved paths are returned.
    """
    import yaml

    moved = []
    current = cfg.dump()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for variant, seed in variants_seeds:
        files = layout.run_files(cfg, variant, seed)
        if not files.last.exists() or not files.config.exists():
            continue
        saved = yaml.safe_load(files.config.read_text()) or {}
        diff = training_config_diff(saved, current)
        if not diff:
            continue
        target = layout.superseded_dir(cfg, variant, seed, stamp)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(files.root), str(target))
        log.warning(
            "%s/seed%d: the training config changed (%s); moved the old run to %s and training afresh",
            variant,
            seed,
            describe_config_diff(diff),
            target,
        )
        moved.append(target)
    return moved


def resolve_target(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"training target {target!r}: expected 'package.module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"training target {target!r} cannot be imported: {exc}") from exc
    if not callable(function):
        raise ValueError(f"training target {target!r} is not callable")
    return function


class TrainJob(submitit.helpers.Checkpointable):
    """Callable run by every task of a job: ``target(cfg, variant, seed, run_dir, dist)``.

    ``target`` is ``"module:function"``, imported by name inside the job (the pickle carries no code); tests
    pass small stand-ins.
    """

    def __init__(self, target: str = DEFAULT_TARGET) -> None:
        self.target = target

    def __call__(self, config: dict[str, Any], variant: str, seed: int) -> Any:
        from hardmask.training.distributed import cleanup, init_distributed

        cfg = config_from_dict(config, source=f"config submitted for {variant}/seed{seed}")
        train = resolve_target(self.target)
        dist = init_distributed()
        try:
            return train(cfg, variant, seed, layout.run_dir(cfg, variant, seed), dist)
        finally:
            cleanup()

    def checkpoint(
        self, config: dict[str, Any], variant: str, seed: int
    ) -> submitit.helpers.DelayedSubmission:
        """Requeue the same call: progress lives in the run directory, not in this object."""
        log.warning("%s/seed%d interrupted; requeueing to resume from its run directory", variant, seed)
        return submitit.helpers.DelayedSubmission(TrainJob(self.target), config, variant, seed)


def submit_training(
    cfg: Config,
    variants_seeds: Sequence[tuple[str, int]],
    target: str = DEFAULT_TARGET,
    name: str = "hardmask-train",
) -> list[Any]:
    """Run one job per (variant, seed) as one array, wait for all, return the results in input order.

    At most ``cluster.array_parallelism`` jobs run at once. Raises :class:`SubmissionError` when the cluster
    refuses the array and :class:`TrainingJobsFailed`, after every job has ended, when any job failed.
    """
    if not variants_seeds:
        raise ValueError("submit_training: no (variant, seed) pairs to run")
    resolve_target(target)  # fail here, not once per job, on a misspelled target
    check_variants([variant for variant, _ in variants_seeds])
    supersede_stale_runs(cfg, variants_seeds)
    folder = layout.logs_dir(cfg, "train")
    executor = make_executor(cfg.cluster, folder, name)
    job_fn = TrainJob(target)
    started = time.perf_counter()
    jobs: list[submitit.Job] = []
    try:
        _submit(executor, job_fn, cfg, variants_seeds, jobs)
        log.info("submitted %d jobs: %s", len(jobs), ", ".join(str(j.job_id) for j in jobs))
        results = _collect(jobs, variants_seeds)
    except KeyboardInterrupt:  # Ctrl-C on the stage: do not leave its jobs running
        for job in jobs:
            job.cancel(check=False)
        raise
    log.info("%d jobs finished in %.1f s", len(jobs), time.perf_counter() - started)
    return results


def _submit(
    executor: submitit.Executor,
    job_fn: TrainJob,
    cfg: Config,
    variants_seeds: Sequence[tuple[str, int]],
    jobs: list[submitit.Job],
) -> None:
    """Submit one job per pair, appending each to ``jobs`` as soon as it exists (so it can be cancelled)."""
    config = cfg.dump()
    try:
        if cfg.cluster.executor == "local":
            # the local executor has no array throttle: start a job whenever fewer than array_parallelism run
            for variant, seed in variants_seeds:
                while sum(not job.done() for job in jobs) >= cfg.cluster.array_parallelism:
                    time.sleep(cfg.cluster.poll_interval_s)
                jobs.append(executor.submit(job_fn, config, variant, seed))
        else:  # one sbatch --array (debug jobs run in this process when awaited)
            variants, seeds = zip(*variants_seeds)
            jobs.extend(executor.map_array(job_fn, [config] * len(variants_seeds), variants, seeds))
    except (FailedSubmissionError, FailedJobError) as exc:  # sbatch exited non-zero: nothing was queued
        slurm = cfg.cluster.slurm
        raise SubmissionError(
            f"cluster.executor={cfg.cluster.executor}: the cluster refused the job array (cluster.slurm: "
            f"partition={slurm.partition}, nodes={slurm.nodes}, tasks_per_node={slurm.tasks_per_node}, "
            f"gpus_per_node={slurm.gpus_per_node}, cpus_per_task={slurm.cpus_per_task}, "
            f"mem_gb={slurm.mem_gb}, time_min={slurm.time_min}, "
            f"additional_parameters={dict(slurm.additional_parameters)}):\n{exc}"
        ) from None


def _collect(jobs: Sequence[submitit.Job], variants_seeds: Sequence[tuple[str, int]]) -> list[Any]:
    """Wait for every job; rank 0's result of each, or :class:`TrainingJobsFailed` naming every failure."""
    results: list[Any] = []
    failures: list[JobFailure] = []
    for job, (variant, seed) in zip(jobs, variants_seeds):
        # exception() waits and returns the remote error (with traceback) instead of raising; unlike
        # result() it never opens a post-mortem debugger for in-process debug jobs.
        error = job.exception()
        if error is not None:
            failures.append(JobFailure(variant, seed, str(job.job_id), _describe(error)))
            results.append(None)
        else:
            results.append(job.results()[0])  # one result per task; the first is global rank 0's
    if failures:
        raise TrainingJobsFailed(failures, total=len(jobs))
    return results


def _describe(error: BaseException) -> str:
    if isinstance(error, UncompletedJobError):
        return str(error)  # already the remote traceback, plus the paths of the job's stdout/stderr
    return "".join(traceback.format_exception(error))  # a debug job's own exception, raised in this process
