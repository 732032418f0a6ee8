"""MLflow bookkeeping of training and evaluation runs; only global rank 0 writes.

Layout in the experiment ``cfg.tracking.experiment``: one parent run per variant (and per DVC experiment),
with one child run per (variant, seed) and kind (``train`` or ``eval``). A child carries the flattened
resolved config as params and cross-link tags (git commit, ``DVC_EXP_NAME``, SLURM job/array ids, dataset
fingerprint); its id is kept in the run directory (``mlflow_<kind>_run_id``), so a requeued job continues the
same MLflow run.

``init_tracking`` runs once in the submitting process, before any job starts: it creates the database schema
and the experiment, so concurrent jobs never race on them, and exports the resolved URI to the jobs'
environment. MLflow itself is imported only when a tracker is used (the import takes a second or two).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hardmask import layout
from hardmask.config import Config, flatten
from hardmask.io import atomic_write_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("hardmask.tracking")

URI_ENV = "MLFLOW_TRACKING_URI"
RunKind = Literal["train", "eval"]
# MLflow's own tag names (mlflow.utils.mlflow_tags), spelled out to keep mlflow out of import time.
PARENT_RUN_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
# Limits of one MLflow log_batch call and of one param value (mlflow.utils.validation).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_CHARS = 6000


class TrackingError(RuntimeError):
    """The tracking store cannot be used as configured."""


# ------------------------------------------------------------------------------------------------ store setup
def resolve_tracking_uri(cfg: Config, root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``cfg.tracking.uri``; a relative sqlite path is made absolute
    against ``root`` (default: the working directory, which is the project root for DVC stages)."""
    uri = os.environ.get(URI_ENV) or cfg.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db_path = (Path(root) if root is not None else Path.cwd()) / uri[len(prefix) :]
        uri = prefix + str(db_path.resolve())
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:////") else None


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    db_path = _sqlite_path(uri)
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created on first use. With a sqlite store its artifacts go to
    ``mlartifacts/`` beside the database, whatever the working directory of the job that logs them."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    db_path = _sqlite_path(uri)
    artifacts = str(db_path.parent / "mlartifacts") if db_path is not None else None
    return client.create_experiment(name, artifact_location=artifacts)


def init_tracking(cfg: Config, root: str | Path | None = None) -> str:
    """Create the store's schema, the experiment and the parent runs of ``cfg.train.variants``; return the
    URI.

    Call once before submitting jobs. The resolved URI is exported as ``MLFLOW_TRACKING_URI`` so that every
    job started from this process (local subprocesses, ``sbatch``'s default ``--export=ALL``) writes to this
    store.
    """
    uri = resolve_tracking_uri(cfg, root)
    started = time.perf_counter()
    try:
        client = _client(uri)
        experiment_id = ensure_experiment(client, cfg.tracking.experiment, uri)
        for variant in cfg.train.variants:
            parent_run_for(client, experiment_id, variant)
    except Exception as exc:
        raise TrackingError(f"tracking.uri={uri!r}: cannot set up the MLflow store: {exc}") from exc
    os.environ[URI_ENV] = uri
    log.info(
        "MLflow store %s, experiment %r ready in %.1f s",
        uri,
        cfg.tracking.experiment,
        time.perf_counter() - started,
    )
    return uri


def parent_run_for(client: MlflowClient, experiment_id: str, variant: str) -> str:
    """The run grouping every seed of ``variant`` within the current DVC experiment (created if missing)."""
    group = os.environ.get("DVC_EXP_NAME") or "workspace"
    query = f"tags.kind = 'parent' and tags.variant = '{variant}' and tags.group = '{group}'"
    found = client.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["start_time ASC"]
    )
    if found:
        return found[0].info.run_id
    name = variant if group == "workspace" else f"{variant} [{group}]"
    run = client.create_run(
        experiment_id, run_name=name, tags={"kind": "parent", "variant": variant, "group": group}
    )
    # a grouping node, not a process that could still be running
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# ------------------------------------------------------------------------------------------------ params
def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"optim.lr": "0.001", "train.seeds": "[0, 1, 2]", ...}`` (params are strings).

    Strings stay as they are; every other leaf, lists and empty mappings included, is written as JSON.
    """
    return {
        key: value if isinstance(value, str) else json.dumps(value, default=str)
        for key, value in flatten(data, prefix).items()
    }


def git_commit(root: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def dataset_fingerprint(cfg: Config) -> str:
    """The ``fingerprint`` in the prepared data's ``manifest.json`` (as the prepare stage wrote it), or
    unknown."""
    for manifest in (layout.dataset_manifest(cfg), cfg.data_root / "manifest.json"):
        try:
            return str(json.loads(manifest.read_text())["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return "unknown"


def run_tags(cfg: Config, kind: str, variant: str, seed: int) -> dict[str, str]:
    """Tags that link a run to its code, data, DVC experiment and cluster job."""
    commit = git_commit()
    tags = {
        "kind": kind,
        "variant": variant,
        "seed": str(seed),
        "git_commit": commit,
        GIT_COMMIT_TAG: commit,
        "dataset_fingerprint": dataset_fingerprint(cfg),
        "dataset": cfg.data.dataset,
    }
    env_tags = {
        "dvc_exp_name": "DVC_EXP_NAME",
        "slurm_job_id": "SLURM_JOB_ID",
        "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
        "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    }
    tags.update({tag: os.environ[var] for tag, var in env_tags.items() if os.environ.get(var)})
    return tags


# ------------------------------------------------------------------------------------------------ the tracker
class RunTracker:
    """One MLflow run of one (variant, seed, kind); every method is a no-op when the tracker is disabled
    (ranks other than 0) — then ``run_id`` is None.

    Use :meth:`for_training` / :meth:`for_evaluation`; as a context manager it ends the run FAILED on an
    error.
    """

    def __init__(self, client: MlflowClient | None = None, run_id: str | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self._ended = client is None
        self._monitor: Any = None

    @property
    def enabled(self) -> bool:
        return self._client is not None

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def disabled(cls) -> RunTracker:
        return cls()

    @classmethod
    def start(
        cls,
        cfg: Config,
        *,
        kind: RunKind,
        variant: str,
        seed: int,
        run_dir: str | Path,
        run_id: str | None = None,
        resume: bool = True,
        enabled: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> RunTracker:
        """Start (or with ``resume``, continue) the run of (``variant``, ``seed``, ``kind``); log its config.

        The run continued is ``run_id`` if given, else the one named in ``run_dir/mlflow_<kind>_run_id``.
        """
        if not enabled:
            return cls.disabled()
        uri = resolve_tracking_uri(cfg)
        client = _client(uri)
        experiment_id = ensure_experiment(client, cfg.tracking.experiment, uri)
        id_file = layout.mlflow_id_file(run_dir, kind)
        if run_id is None and resume and id_file.is_file():
            run_id = id_file.read_text().strip() or None
        run_tags_ = {**run_tags(cfg, kind, variant, seed), **(tags or {})}
        resumed = run_id is not None and _run_exists(client, run_id)
        if resumed:
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=_tag_entities(run_tags_))  # SLURM ids of the new attempt
            log.info("continuing MLflow run %s (%s %s seed %d)", run_id, kind, variant, seed)
        else:
            if run_id is not None:
                log.warning(
                    "MLflow run %s named in %s is not in %s; starting a new run", run_id, id_file, uri
                )
            parent = parent_run_for(client, experiment_id, variant)
            run = client.create_run(
                experiment_id,
                run_name=f"{variant}/seed{seed}/{kind}",
                tags={**run_tags_, PARENT_RUN_TAG: parent},
            )
            run_id = run.info.run_id
        atomic_write_text(id_file, run_id + "\n")
        tracker = cls(client, run_id)
        tracker.log_params(cfg.dump())
        if cfg.tracking.log_system_metrics:
            tracker._start_system_metrics(uri, resumed)
        return tracker

    @classmethod
    def for_training(
        cls,
        cfg: Config,
        *,
        variant: str,
        seed: int,
        run_dir: str | Path,
        run_id: str | None = None,
        enabled: bool = True,
    ) -> RunTracker:
        return cls.start(
            cfg, kind="train", variant=variant, seed=seed, run_dir=run_dir, run_id=run_id, enabled=enabled
        )

    @classmethod
    def for_evaluation(
        cls,
        cfg: Config,
        *,
        variant: str,
        seed: int,
        run_dir: str | Path,
        training_run_id: str | None = None,
        enabled: bool = True,
    ) -> RunTracker:
        """A new eval run, tagged with the training run it evaluates (read from ``run_dir`` if not given)."""
        train_id_file = layout.mlflow_id_file(run_dir, "train")
        if training_run_id is None and train_id_file.is_file():
            training_run_id = train_id_file.read_text().strip() or None
        tags = {"train_run_id": training_run_id} if training_run_id else {}
        return cls.start(
            cfg,
            kind="eval",
            variant=variant,
            seed=seed,
            run_dir=run_dir,
            resume=False,
            enabled=enabled,
            tags=tags,
        )

    # ------------------------------------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params flattened; on a continued run only new keys are logged, as MLflow params are
        immutable (a changed value is reported and the recorded one kept)."""
        if self._client is None:
            return
        from mlflow.entities import Param

        flat = {k: _clip(k, v) for k, v in flatten_config(params).items()}
        existing = self._client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if changed:
            log.warning("run %s keeps its recorded values of changed params %s", self.run_id, changed)
        entities = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(entities), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=entities[i : i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entities = [Metric(k, _as_float(k, v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(entities), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=entities[i : i + MAX_METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._client is None:
            return
        self._client.log_batch(self.run_id, tags=_tag_entities({k: str(v) for k, v in tags.items()}))

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Copy files into the run's artifacts (under ``artifact_path`` if given)."""
        if self._client is None:
            return
        for path in map(Path, paths):
            if not path.is_file():
                raise FileNotFoundError(f"artifact {path} for MLflow run {self.run_id} does not exist")
            self._client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def end(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        if self._client is None or self._ended:
            return
        if self._monitor is not None:
            self._monitor.finish()
        self._client.set_terminated(self.run_id, status)
        self._ended = True

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")

    def _start_system_metrics(self, uri: str, resumed: bool) -> None:
        """CPU, memory and GPU usage as ``system/*`` metrics, sampled every 10 s in a background thread."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=resumed, tracking_uri=uri)
        self._monitor.start()


# ------------------------------------------------------------------------------------------------ helpers
def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _tag_entities(tags: Mapping[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _clip(key: str, value: str) -> str:
    if len(value) <= MAX_PARAM_VALUE_CHARS:
        return value
    log.warning(
        "param %s is %d characters; MLflow keeps the first %d", key, len(value), MAX_PARAM_VALUE_CHARS
    )
    return value[:MAX_PARAM_VALUE_CHARS]


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__} {value!r}") from None
