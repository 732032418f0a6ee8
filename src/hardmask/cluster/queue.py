"""The runs of one train stage, handed out to local worker jobs through files.

A local job process spends about 6 s on start-up (interpreter, torch, timm, MLflow and its store) before its
first batch, and a CPU study has many short runs. So on the local executor the stage starts at most
``cluster.array_parallelism`` worker jobs, and each trains one run after another until none is left
(:class:`hardmask.cluster.job.LocalWorker`). The stage and its workers know the runs (the list submitted with
the workers); the queue is a directory (:func:`hardmask.layout.run_queue_dir`) of two files per run, named by
the run's position in that list::

    <i>.claim            the job id of the worker that took run i (created with O_EXCL: one worker per run)
    <i>.result           the pickled outcome of run i: its result, a JobError or a RunCrashed

Workers take the first run nobody has taken, so runs start in submission order, and a worker that ends early
(its process killed) leaves the others to take the rest; the stage starts a new worker where none is left.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardmask.io import atomic_write_bytes


@dataclass(frozen=True)
class RunCrashed:
    """The outcome of a run that raised an unexpected exception in a worker: its traceback."""

    traceback: str


class RunQueue:
    def __init__(self, root: str | Path, runs: Sequence[tuple[str, int]]) -> None:
        self.root = Path(root)
        self.runs = list(runs)

    @classmethod
    def create(cls, root: str | Path, runs: Sequence[tuple[str, int]]) -> RunQueue:
        Path(root).mkdir(parents=True, exist_ok=False)  # one stage, one queue
        return cls(root, runs)

    def _claim_file(self, index: int) -> Path:
        return self.root / f"{index}.claim"

    def _result_file(self, index: int) -> Path:
        return self.root / f"{index}.result"

    def claim(self, worker: str) -> int | None:
        """Take the first run nobody has taken; None when every run is taken."""
        for index in range(len(self.runs)):
            try:
                fd = os.open(self._claim_file(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(worker)
            return index
        return None

    def release(self, index: int) -> None:
        """Give a run back (a worker requeued after a time-out resumes it, or another worker does)."""
        self._claim_file(index).unlink(missing_ok=True)

    def claimed_by(self, index: int) -> str | None:
        """The worker that took run ``index`` (None while nobody has; '' for the instant between the claim
        and its job id being written)."""
        try:
            return self._claim_file(index).read_text()
        except FileNotFoundError:
            return None

    def unclaimed(self) -> int:
        return sum(not self._claim_file(index).exists() for index in range(len(self.runs)))

    def finish(self, index: int, outcome: Any) -> None:
        atomic_write_bytes(self._result_file(index), pickle.dumps(outcome))

    def finished(self, index: int) -> bool:
        return self._result_file(index).exists()

    def outcome(self, index: int) -> Any:
        return pickle.loads(self._result_file(index).read_bytes())
