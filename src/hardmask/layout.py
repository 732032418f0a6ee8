"""Where every file of a study lives: the one owner of paths (runs, checkpoints, evaluation, report, logs).

Per (variant, seed)::

    <base.runs_dir>/<variant>/seed<seed>/          a training run (the train stage's DVC output)
        config.yaml  history.csv  metrics.json
        checkpoints/last.pt  checkpoints/best.pt
    <base.reports_dir>/eval/<variant>/seed<seed>/  its evaluation (the evaluate stage's DVC output)
        metrics.csv  groups.csv  predictions.csv  overlays.npz  selection.json

and per study ``<base.reports_dir>/{eval/eval.csv, eval/summary.json, metrics/<model>.json, samples.png,
report.md, ...}``.

Paths shared by every experiment of a project (the MLflow store, job logs) resolve against the project root:
``DVC_ROOT``, which DVC sets for every stage (for a queued or ``--temp`` experiment it names the workspace the
experiment came from, not its temporary copy), else the working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hardmask.config import Config


# ------------------------------------------------------------------------------------------------ project
def project_root() -> Path:
    """The project's workspace: ``DVC_ROOT`` under DVC (also in a queued experiment's copy), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def shared_path(path: str | Path) -> Path:
    """``path`` made absolute against :func:`project_root` (an absolute path is returned as it is)."""
    path = Path(path)
    return path if path.is_absolute() else project_root() / path


def logs_dir(cfg: Config, kind: str = "train") -> Path:
    """submitit's job folders (pickles, stdout/stderr) of ``kind`` jobs; shared by all experiments."""
    return shared_path(cfg.cluster.logs_dir) / kind


def run_queue_dir(cfg: Config, stamp: str) -> Path:
    """The queue through which one train stage hands its runs to local workers
    (:mod:`hardmask.cluster.queue`); ``stamp`` makes it that stage's own."""
    return logs_dir(cfg, "train") / "queues" / stamp


# ------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class RunFiles:
    """The files of one training run."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def checkpoint(self, which: str) -> Path:
        """``best`` or ``last``."""
        return self.checkpoints / f"{which}.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


def run_dir(cfg: Config, variant: str, seed: int) -> Path:
    return Path(cfg.base.runs_dir) / variant / f"seed{seed}"


def run_files(cfg: Config, variant: str, seed: int) -> RunFiles:
    return RunFiles(run_dir(cfg, variant, seed))


def superseded_dir(cfg: Config, variant: str, seed: int, stamp: str) -> Path:
    """Where a run trained under another configuration is moved before its variant/seed is trained afresh."""
    return Path(f"{cfg.base.runs_dir}.superseded") / variant / f"seed{seed}-{stamp}"


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass(frozen=True)
class EvalFiles:
    """The files of one run's evaluation."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def groups(self) -> Path:
        return self.root / "groups.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays.npz"

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    def within(self, directory: Path) -> EvalFiles:
        """The same names in ``directory`` (the temporary directory an evaluation is written to)."""
        return EvalFiles(directory)


def eval_root(cfg: Config) -> Path:
    return Path(cfg.base.reports_dir) / "eval"


def eval_files(cfg: Config, variant: str, seed: int) -> EvalFiles:
    return EvalFiles(eval_root(cfg) / variant / f"seed{seed}")


def eval_table(cfg: Config) -> Path:
    """The tidy table of every evaluated run (hardmask.evaluation.tidy)."""
    return eval_root(cfg) / "eval.csv"


def eval_variants(cfg: Config) -> Path:
    """What each evaluated variant is, for the report (which reads no model code)."""
    return eval_root(cfg) / "variants.json"


def eval_summary(cfg: Config) -> Path:
    """Every metric of every split and intervention, mean/std/n over seeds (hardmask.evaluation.tidy)."""
    return eval_root(cfg) / "summary.json"


# ------------------------------------------------------------------------------------------------ study
def reports_dir(cfg: Config) -> Path:
    return Path(cfg.base.reports_dir)


def metrics_dir(cfg: Config) -> Path:
    """The DVC metrics: one headline file per model, ``<model>.json``."""
    return reports_dir(cfg) / "metrics"


def samples_figure(cfg: Config) -> Path:
    return reports_dir(cfg) / "samples.png"


def dataset_manifest(cfg: Config) -> Path:
    """What the prepare stage found or generated (fingerprint, groups)."""
    return Path(cfg.base.data_dir) / cfg.data.dataset / "manifest.json"
