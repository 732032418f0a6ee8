"""The training jobs of the DVC train stage, and the stage's watch over them.

On SLURM (and the debug executor) every (variant, seed) is one task of one job array. On the local executor
with one task per job, the stage starts at most ``cluster.array_parallelism`` worker jobs which train the runs
one after another (:class:`LocalWorker`, :mod:`hardmask.cluster.queue`): a job process's start-up costs about
as much as a tenth of a CPU run of the default study.

A run is idempotent and resumable: it trains into ``<base.runs_dir>/<variant>/seed<seed>/`` and the training
loop continues from ``checkpoints/last.pt`` there. That directory outlives a change of parameters (the DVC
output is ``persist``), so before submitting, a run whose training config differs from the current one is
moved to ``<base.runs_dir>.superseded/`` and trained afresh (:func:`supersede_stale_runs`).

On a SLURM time-out or preemption submitit calls :meth:`TrainJob.checkpoint` (:meth:`LocalWorker.checkpoint`
on a local time-out), which resubmits the same call; the requeued job finds its run directory and resumes.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
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
from hardmask.cluster.executor import (
    describe_slurm,
    detached_local_jobs,
    interrupt_local_job,
    make_executor,
)
from hardmask.cluster.queue import RunCrashed, RunQueue
from hardmask.config import Config, config_from_dict
from hardmask.console import duration
from hardmask.errors import HardmaskError
from hardmask.models import check_variants
from hardmask.process import start_worker_process

log = logging.getLogger("hardmask.cluster")

DEFAULT_TARGET = "hardmask.training.loop:train"


class SubmissionError(HardmaskError, RuntimeError):
    """The cluster refused the jobs (e.g. SLURM cannot satisfy the requested resources)."""


class TrainingJobsFailed(HardmaskError, RuntimeError):
    """At least one job of the array failed; the message carries each failed job's remote traceback."""

    def __init__(self, failures: Sequence[JobFailure], total: int) -> None:
        self.failures = tuple(failures)
        parts = [f"{len(failures)} of {total} training runs failed:"]
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


@dataclass(frozen=True)
class JobError:
    """What a job returns instead of raising when it meets an expected failure (a
    :class:`~hardmask.errors.HardmaskError`): its message, which the train stage reports without a
    traceback."""

    message: str


def _train_run(target: str, cfg: Config, variant: str, seed: int) -> Any:
    """``target(cfg, variant, seed, run_dir, dist)`` in this job's process group; an expected failure (a
    :class:`~hardmask.errors.HardmaskError`) is returned as a :class:`JobError`."""
    from hardmask.training.distributed import cleanup, init_distributed

    train = resolve_target(target)
    try:
        dist = init_distributed()
        try:
            return train(cfg, variant, seed, layout.run_dir(cfg, variant, seed), dist)
        finally:
            cleanup()
    except HardmaskError as exc:
        log.error("%s/seed%d: %s", variant, seed, exc)
        return JobError(str(exc))
    except KeyboardInterrupt:
        log.warning("%s/seed%d interrupted; its last checkpoint is kept", variant, seed)
        raise


class TrainJob(submitit.helpers.Checkpointable):
    """Callable run by every task of a job that trains one run: ``target(cfg, variant, seed, run_dir, dist)``.

    ``target`` is ``"module:function"``, imported by name inside the job (the pickle carries no code); tests
    pass small stand-ins.
    """

    def __init__(self, target: str = DEFAULT_TARGET) -> None:
        self.target = target

    def __call__(self, config: dict[str, Any], variant: str, seed: int) -> Any:
        start_worker_process()
        cfg = config_from_dict(config, source=f"config submitted for {variant}/seed{seed}")
        return _train_run(self.target, cfg, variant, seed)

    def checkpoint(
        self, config: dict[str, Any], variant: str, seed: int
    ) -> submitit.helpers.DelayedSubmission:
        """Requeue the same call: progress lives in the run directory, not in this object."""
        log.warning("%s/seed%d interrupted; requeueing to resume from its run directory", variant, seed)
        return submitit.helpers.DelayedSubmission(TrainJob(self.target), config, variant, seed)


class LocalWorker(submitit.helpers.Checkpointable):
    """Callable of a local job with one task that trains the runs of a :class:`RunQueue` one after another,
    each as :class:`TrainJob` would, until every run is taken. A run that raises goes into the queue as a
    :class:`RunCrashed` and the worker goes on with the next run, as separate jobs would."""

    def __init__(self, target: str = DEFAULT_TARGET) -> None:
        self.target = target
        self.current: int | None = None  # the run being trained (given back on a requeue)

    def __call__(self, config: dict[str, Any], queue_dir: str, runs: list[tuple[str, int]]) -> int:
        """Returns the number of runs this worker trained."""
        start_worker_process()
        queue = RunQueue(queue_dir, runs)
        worker = str(submitit.JobEnvironment().job_id)
        trained = 0
        while (index := queue.claim(worker)) is not None:
            self.current = index
            variant, seed = runs[index]
            try:
                # the config afresh for every run, as a job of its own would have it
                cfg = config_from_dict(config, source=f"config submitted for {variant}/seed{seed}")
                outcome = _train_run(self.target, cfg, variant, seed)
            except Exception as exc:  # noqa: BLE001 (reported by the stage with the run's name)
                log.exception("%s/seed%d failed", variant, seed)
                outcome = RunCrashed("".join(traceback.format_exception(exc)))
            queue.finish(index, outcome)
            self.current, trained = None, trained + 1
        return trained

    def checkpoint(
        self, config: dict[str, Any], queue_dir: str, runs: list[tuple[str, int]]
    ) -> submitit.helpers.DelayedSubmission:
        """Requeue the worker; the run it was training goes back to the queue and resumes from its run
        directory in whichever worker takes it next."""
        if self.current is not None:
            variant, seed = runs[self.current]
            log.warning("%s/seed%d interrupted; requeueing to resume from its run directory", variant, seed)
            RunQueue(queue_dir, runs).release(self.current)
        return submitit.helpers.DelayedSubmission(LocalWorker(self.target), config, queue_dir, runs)


def uses_local_workers(cfg: Config) -> bool:
    """Whether the stage hands its runs to :class:`LocalWorker` jobs (the local executor, one task per job;
    a multi-task job keeps one run per job, its process group being the run's)."""
    return cfg.cluster.executor == "local" and cfg.cluster.local_tasks == 1


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
    if target != DEFAULT_TARGET:  # fail here, not once per job, on a misspelled target
        # (the package's own trainer is tested to resolve; importing it here would load torch, timm and the
        # data stack before the first job could start)
        resolve_target(target)
    check_variants([variant for variant, _ in variants_seeds])
    supersede_stale_runs(cfg, variants_seeds)
    executor = make_executor(cfg.cluster, layout.logs_dir(cfg, "train"), name)
    watch = JobWatch(cfg, len(variants_seeds))
    try:
        if uses_local_workers(cfg):
            _run_local_workers(executor, LocalWorker(target), cfg, variants_seeds, watch)
        else:
            _submit(executor, TrainJob(target), cfg, variants_seeds, watch)
            while watch.poll():  # every job is submitted: the count left is the condition, no extra sleep
                time.sleep(cfg.cluster.poll_interval_s)
    except KeyboardInterrupt:  # Ctrl-C on the stage: do not leave its jobs running
        watch.cancel()
        raise
    return watch.results()


def _run_local_workers(
    executor: submitit.Executor,
    worker: LocalWorker,
    cfg: Config,
    variants_seeds: Sequence[tuple[str, int]],
    watch: JobWatch,
) -> None:
    """Put the runs into a queue of this stage's own and keep up to ``cluster.array_parallelism`` workers
    on it until every run has ended."""
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
    queue = RunQueue.create(layout.run_queue_dir(cfg, stamp), variants_seeds)
    # the time limit is per run: a worker may train every run, as separate jobs would have one after another
    executor.update_parameters(timeout_min=cfg.cluster.slurm.time_min * len(variants_seeds))
    watch.follow(queue)
    config, runs = cfg.dump(), list(variants_seeds)  # pickled together, as a job of its own has them
    while watch.poll():
        if watch.wants_worker():
            with detached_local_jobs(layout.logs_dir(cfg, "train") / "controllers.log"):
                watch.add_worker(executor.submit(worker, config, str(queue.root), runs))
            continue  # the next worker, if one is wanted, without waiting a poll interval
        time.sleep(cfg.cluster.poll_interval_s)


def _submit(
    executor: submitit.Executor,
    job_fn: TrainJob,
    cfg: Config,
    variants_seeds: Sequence[tuple[str, int]],
    watch: JobWatch,
) -> None:
    """Submit one job per pair, handing each to ``watch`` as soon as it exists (so it can be cancelled)."""
    config = cfg.dump()
    try:
        if cfg.cluster.executor == "local":  # several tasks per job: one job per run
            # the local executor has no array throttle: start a job whenever fewer than array_parallelism run
            for variant, seed in variants_seeds:
                while watch.poll() >= cfg.cluster.array_parallelism:
                    time.sleep(cfg.cluster.poll_interval_s)
                with detached_local_jobs(layout.logs_dir(cfg, "train") / "controllers.log"):
                    job = executor.submit(job_fn, config, variant, seed)
                watch.add(job, variant, seed)
        else:  # one sbatch --array (debug jobs run in this process when polled)
            variants, seeds = zip(*variants_seeds)
            jobs = executor.map_array(job_fn, [config] * len(variants_seeds), variants, seeds)
            for job, (variant, seed) in zip(jobs, variants_seeds):
                watch.add(job, variant, seed)
    except (FailedSubmissionError, FailedJobError) as exc:  # sbatch exited non-zero: nothing was queued
        slurm = cfg.cluster.slurm
        raise SubmissionError(
            f"cluster.executor={cfg.cluster.executor}: the cluster refused the job array (cluster.slurm: "
            f"partition={slurm.partition}, nodes={slurm.nodes}, tasks_per_node={slurm.tasks_per_node}, "
            f"gpus_per_node={slurm.gpus_per_node}, cpus_per_task={slurm.cpus_per_task}, "
            f"mem_gb={slurm.mem_gb}, time_min={slurm.time_min}, "
            f"additional_parameters={dict(slurm.additional_parameters)}).\n{_first_lines(exc)}"
            f"{describe_slurm()}"
        ) from None


# ------------------------------------------------------------------------------------------------ watching
@dataclass
class _Entry:
    variant: str
    seed: int
    submitted: float
    job: submitit.Job | None = None  # the job that trains it (a queued run's: the worker that took it)
    started: float | None = None
    ended: float | None = None
    result: Any = None
    failure: str | None = None
    relayed_resume: bool = False

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    @property
    def log_path(self) -> Path:
        return Path(self.job.paths.stderr)


class JobWatch:
    """The train stage's view of its runs: one line when a run starts and when it ends (with its job's log
    file), and every ``STATUS_EVERY_S`` the count, each running run's latest progress line (read from its
    job's log) and the stage's ETA.

    Runs are either jobs of their own (:meth:`add`) or the runs of a :class:`RunQueue` that local workers
    take (:meth:`follow`, :meth:`add_worker`)."""

    STATUS_EVERY_S = 30.0

    def __init__(self, cfg: Config, total: int) -> None:
        self.cfg, self.total = cfg, total
        self.entries: list[_Entry] = []
        self.queue: RunQueue | None = None
        self.workers: list[submitit.Job] = []
        self.worker_failure: str | None = None  # why a worker ended before taking a run
        self.start = time.perf_counter()
        self.last_status = self.start

    def add(self, job: submitit.Job, variant: str, seed: int) -> None:
        self.entries.append(_Entry(variant, seed, submitted=time.perf_counter(), job=job))

    def follow(self, queue: RunQueue) -> None:
        self.queue = queue
        now = time.perf_counter()
        self.entries = [_Entry(variant, seed, submitted=now) for variant, seed in queue.runs]

    def add_worker(self, job: submitit.Job) -> None:
        self.workers.append(job)

    def wants_worker(self) -> bool:
        """Another worker is wanted while runs wait, fewer than ``cluster.array_parallelism`` workers live,
        and no worker has ended without taking a run (it would fail again)."""
        if self.queue is None or self.worker_failure is not None:
            return False
        live = sum(not job.done() for job in self.workers)
        return live < self.cfg.cluster.array_parallelism and self.queue.unclaimed() > 0

    def all_done(self) -> bool:
        return len(self.entries) == self.total and all(e.ended is not None for e in self.entries)

    def poll(self) -> int:
        """Look at every run once; returns how many are still running or waiting."""
        if self.queue is not None:
            self._poll_queue()
        else:
            self._poll_jobs()
        if time.perf_counter() - self.last_status >= self.STATUS_EVERY_S and not self.all_done():
            self.status()
        return sum(e.ended is None for e in self.entries)

    def _poll_jobs(self) -> None:
        for entry in self.entries:
            if entry.ended is not None:
                continue
            if self.cfg.cluster.executor == "debug":  # runs in this process, now
                self._started(entry)
                # exception() runs the job and returns its error; done() or result() would open a debugger
                self._ended_job(entry, entry.job.exception())
                continue
            if entry.job.state.upper() in ("RUNNING", "COMPLETING"):
                self._started(entry)
            if entry.job.done():
                self._ended_job(entry, entry.job.exception())
            elif not entry.relayed_resume:
                self._relay_resume(entry)

    def _poll_queue(self) -> None:
        workers = {str(job.job_id): job for job in self.workers}
        for index, entry in enumerate(self.entries):
            if entry.ended is not None:
                continue
            holder = workers.get(self.queue.claimed_by(index) or "")
            if holder is not None and holder is not entry.job:  # taken (again, after a time-out)
                entry.job = holder
                self._started(entry)
            if entry.job is None:
                continue
            # the worker's state first: a worker that had ended has written any result it was going to
            worker_ended = holder is entry.job and entry.job.done()
            if self.queue.finished(index):
                self._ended(entry, self.queue.outcome(index))
            elif worker_ended:  # it ended in this run: killed or failed
                self._ended(entry, None, entry.job.exception() or RuntimeError("its worker ended"))
            elif not entry.relayed_resume:
                self._relay_resume(entry)
        self._fail_untaken_runs()

    def _fail_untaken_runs(self) -> None:
        """A worker that failed before taking a run (its start-up failed) is not replaced: once no worker is
        left, the runs nobody took fail with its error."""
        if self.worker_failure is None:
            for job in self.workers:
                if job.done() and not any(e.job is job for e in self.entries) and job.exception() is not None:
                    self.worker_failure = _describe(job.exception())
        if self.worker_failure is None or any(not job.done() for job in self.workers):
            return
        for entry in self.entries:
            if entry.job is None and entry.ended is None:
                entry.ended = time.perf_counter()
                entry.failure = f"no worker took it; one failed before its first run:\n{self.worker_failure}"
                log.error("FAILED %s: no worker took it", entry.name)

    def _started(self, entry: _Entry) -> None:
        if entry.started is not None:
            return
        entry.started = time.perf_counter()
        where = "in this process" if self.cfg.cluster.executor == "debug" else f"log {entry.log_path}"
        log.info("started %s (job %s, %s)", entry.name, entry.job.job_id, where)

    def _relay_resume(self, entry: _Entry) -> None:
        line = _last_line(entry.log_path, f"resumed {entry.name} ")
        if line is not None:
            entry.relayed_resume = True
            log.info("%s", line)

    def _ended_job(self, entry: _Entry, error: BaseException | None) -> None:
        """A job of its own ended, with the error it raised (the remote traceback of a job process)."""
        self._ended(entry, None if error is not None else entry.job.results()[0], error)  # rank 0's result

    def _ended(self, entry: _Entry, outcome: Any, error: BaseException | None = None) -> None:
        """Record a run that ended: its outcome (a result, a :class:`JobError` or a :class:`RunCrashed`) or
        the error its job raised."""
        self._started(entry)
        entry.ended = time.perf_counter()
        took = duration(entry.ended - entry.started)
        done = sum(e.ended is not None for e in self.entries)
        if isinstance(outcome, JobError):
            entry.failure = outcome.message
        elif isinstance(outcome, RunCrashed):
            entry.failure = f"{outcome.traceback}\nThe job's log: {entry.log_path}"
        elif error is not None:
            entry.failure = _describe(error)
        if entry.failure is not None:
            log.error(
                "FAILED %s (job %s) after %s; log %s", entry.name, entry.job.job_id, took, entry.log_path
            )
            return
        entry.result = outcome
        best = getattr(outcome, "best_val_worst_group_acc", None)
        summary = f": best validation worst-group accuracy {best:.3f}" if best is not None else ""
        log.info("finished %s (%d/%d) in %s%s", entry.name, done, self.total, took, summary)

    def status(self) -> None:
        self.last_status = time.perf_counter()
        running = [e for e in self.entries if e.started is not None and e.ended is None]
        done = sum(e.ended is not None for e in self.entries)
        waiting = self.total - done - len(running)
        parts = [f"{done}/{self.total} done, {len(running)} running, {waiting} waiting"]
        for entry in running:
            line = _last_line(entry.log_path, f"{entry.name} ")
            parts.append(line or f"{entry.name} starting")
        eta = self.eta(running, waiting)
        log.info("training: %s%s", "; ".join(parts), f"; ETA {duration(eta)}" if eta is not None else "")

    def eta(self, running: list[_Entry], waiting: int) -> float | None:
        """Seconds until the last job ends: the running jobs' own ETAs, then the waiting ones at the mean job
        duration so far, ``cluster.array_parallelism`` at a time."""
        now = time.perf_counter()
        left = [_eta_of(_last_line(e.log_path, f"{e.name} ")) for e in running]
        finished = [e.ended - e.started for e in self.entries if e.ended is not None and e.failure is None]
        known = [now - e.started + t for e, t in zip(running, left) if t is not None]
        if not finished and not known:
            return None
        per_job = sum(finished + known) / len(finished + known)
        slots = max(1, self.cfg.cluster.array_parallelism)
        current = max((t for t in left if t is not None), default=0.0)
        return current + math.ceil(waiting / slots) * per_job

    def cancel(self, grace_s: float = 20.0) -> None:
        """Stop every job that has not ended and give them ``grace_s`` to close their MLflow runs (KILLED);
        their last checkpoints stay, so the next train stage resumes them."""
        pending = [e for e in self.entries if e.ended is None]
        live_workers = [job for job in self.workers if not job.done()]
        jobs = list({id(job): job for job in [e.job for e in pending if e.job] + live_workers}.values())
        local = self.cfg.cluster.executor == "local"
        for job in jobs:
            if local:
                interrupt_local_job(str(job.job_id))
            else:
                job.cancel(check=False)
        deadline = time.perf_counter() + grace_s
        while local and time.perf_counter() < deadline and not all(job.done() for job in jobs):
            time.sleep(0.2)
        for job in jobs:
            if not job.done():
                job.cancel(check=False)  # still running after the grace period: submitit's way
        if pending:
            log.warning("stopped %s", ", ".join(e.name for e in pending))

    def results(self) -> list[Any]:
        """Every job's result in submission order, or :class:`TrainingJobsFailed` naming every failure."""
        failures = [
            JobFailure(e.variant, e.seed, str(e.job.job_id) if e.job else "none", e.failure)
            for e in self.entries
            if e.failure
        ]
        if failures:
            raise TrainingJobsFailed(failures, total=self.total)
        log.info("%d runs finished in %s", self.total, duration(time.perf_counter() - self.start))
        return [e.result for e in self.entries]


def _last_line(path: Path, marker: str, tail_bytes: int = 16384) -> str | None:
    """The text from ``marker`` on of the last line of ``path`` that contains it (None if none yet)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - tail_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        at = line.find(marker)
        if at >= 0:
            return line[at:].strip()
    return None


def _eta_of(line: str | None) -> float | None:
    """The seconds of the ``ETA 1m35s`` at the end of a progress line."""
    match = re.search(r"ETA (?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", line or "")
    if match is None or not any(match.groups()):
        return None
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return 3600 * hours + 60 * minutes + seconds


def _first_lines(error: BaseException, limit: int = 6) -> str:
    lines = str(error).strip().splitlines()
    return "\n".join(lines[:limit]) + ("\n..." if len(lines) > limit else "")


def _describe(error: BaseException) -> str:
    if isinstance(error, UncompletedJobError):
        return str(error)  # already the remote traceback, plus the paths of the job's stdout/stderr
    return "".join(traceback.format_exception(error))  # a debug job's own exception, raised in this process
