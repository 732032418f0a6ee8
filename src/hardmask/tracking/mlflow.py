"""MLflow bookkeeping of training and evaluation runs; only global rank 0 writes.

Layout in the experiment ``cfg.tracking.experiment`` (tagged as model development, so that the MLflow 3 UI
opens on its runs): one parent run per variant and DVC experiment, holding the mean and sd over seeds of the
headline metrics, with one child run per (variant, seed) and kind (``train`` or ``eval``); one ``report`` run
per report. A child carries the flattened resolved config, its variant and training seed as params, and
cross-link tags (git commit, ``DVC_EXP_NAME``, SLURM job/array ids, dataset fingerprint, ``run_key``).

``run_key`` (:func:`hardmask.checkpoint.training_key`) names what a training run computes; a requeued job
continues the MLflow run of its key and an evaluation links to it, so no run id is written into the run
directories (DVC outputs stay a function of their inputs).

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
from hardmask.errors import HardmaskError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("hardmask.tracking")

URI_ENV = "MLFLOW_TRACKING_URI"
RunKind = Literal["train", "eval", "report"]
# MLflow's own tag names (mlflow.utils.mlflow_tags), spelled out to keep mlflow out of import time.
PARENT_RUN_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # what the MLflow 3 UI opens an experiment on
MODEL_DEVELOPMENT = "custom_model_development"
RUN_KEY_TAG = "run_key"
# Limits of one MLflow log_batch call and of one param value (mlflow.utils.validation).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_CHARS = 6000


class TrackingError(HardmaskError, RuntimeError):
    """The tracking store cannot be used as configured."""


# ------------------------------------------------------------------------------------------------ store setup
def resolve_tracking_uri(cfg: Config, root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``cfg.tracking.uri``; a relative sqlite path is made absolute
    against ``root`` (default: the project root, :func:`hardmask.layout.project_root`, so that a queued DVC
    experiment, which runs in a temporary copy, writes to the project's store)."""
    uri = os.environ.get(URI_ENV) or cfg.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db_path = (Path(root) if root is not None else layout.project_root()) / uri[len(prefix) :]
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
    """The id of experiment ``name``, created on first use and tagged as model development. With a sqlite
    store its artifacts go to ``mlartifacts/`` beside the database, whatever the working directory of the job
    that logs them."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        db_path = _sqlite_path(uri)
        artifacts = str(db_path.parent / "mlartifacts") if db_path is not None else None
        try:
            return client.create_experiment(
                name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT}
            )
        except MlflowException as error:  # jobs that start together: another one created it since the lookup
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a store made before the tag existed
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    return experiment.experiment_id


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


def experiment_group() -> str:
    """The DVC experiment the stage runs for (``DVC_EXP_NAME``), or ``workspace``."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def parent_run_for(client: MlflowClient, experiment_id: str, variant: str) -> str:
    """The run grouping every seed of ``variant`` within the current DVC experiment (created if missing)."""
    group = experiment_group()
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
        run_key: str | None = None,
        resume: bool = False,
        enabled: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> RunTracker:
        """Start the run of (``variant``, ``seed``, ``kind``) under the variant's parent and log its config;
        with ``resume``, continue the latest run of ``run_key`` instead, if there is one."""
        if not enabled:
            return cls.disabled()
        uri = resolve_tracking_uri(cfg)
        client = _client(uri)
        experiment_id = ensure_experiment(client, cfg.tracking.experiment, uri)
        run_tags_ = {**run_tags(cfg, kind, variant, seed), **(tags or {})}
        if run_key is not None:
            run_tags_[RUN_KEY_TAG] = run_key
        run_id = latest_run(client, experiment_id, kind, run_key) if resume and run_key else None
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=_tag_entities(run_tags_))  # SLURM ids of the new attempt
            log.info("continuing MLflow run %s (%s %s seed %d)", run_id, kind, variant, seed)
        else:
            parent = parent_run_for(client, experiment_id, variant)
            run = client.create_run(
                experiment_id,
                run_name=f"{variant}/seed{seed}/{kind}",
                tags={**run_tags_, PARENT_RUN_TAG: parent},
            )
            run_id = run.info.run_id
        tracker = cls(client, run_id)
        tracker.log_params({"variant": variant, "seed": seed, **cfg.dump()})
        if cfg.tracking.log_system_metrics:
            tracker._start_system_metrics(uri, resumed=run_id is not None)
        return tracker

    @classmethod
    def for_training(
        cls,
        cfg: Config,
        *,
        variant: str,
        seed: int,
        run_key: str,
        resume: bool = False,
        enabled: bool = True,
    ) -> RunTracker:
        """The training run of ``run_key``; ``resume`` (a checkpoint is being continued) picks up its run."""
        return cls.start(
            cfg, kind="train", variant=variant, seed=seed, run_key=run_key, resume=resume, enabled=enabled
        )

    @classmethod
    def for_evaluation(cls, cfg: Config, *, variant: str, seed: int, run_key: str) -> RunTracker:
        """A new eval run, tagged ``train_run_id`` with the training run of ``run_key`` when the store has
        it."""
        tracker = cls.start(cfg, kind="eval", variant=variant, seed=seed, run_key=run_key)
        train_run = find_training_run(cfg, run_key)
        if train_run is not None:
            tracker.set_tags({"train_run_id": train_run})
        return tracker

    @classmethod
    def for_report(cls, cfg: Config) -> RunTracker:
        """The run of one report: top level (no variant), named ``report``, tagged ``kind=report``."""
        uri = resolve_tracking_uri(cfg)
        client = _client(uri)
        experiment_id = ensure_experiment(client, cfg.tracking.experiment, uri)
        tags = {"kind": "report", "group": experiment_group(), "git_commit": git_commit()}
        run = client.create_run(experiment_id, run_name="report", tags=tags)
        return cls(client, run.info.run_id)

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
        self.end(end_status(exc_type))

    def _start_system_metrics(self, uri: str, resumed: bool) -> None:
        """CPU, memory and GPU usage as ``system/*`` metrics, sampled every 10 s in a background thread."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=resumed, tracking_uri=uri)
        self._monitor.start()


# ------------------------------------------------------------------------------------------------ lookups
def end_status(exc_type: type | None) -> Literal["FINISHED", "FAILED", "KILLED"]:
    """How a run that ended with ``exc_type`` (None = normally) is marked: Ctrl-C and SIGTERM are KILLED."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt | SystemExit) else "FAILED"


def latest_run(client: MlflowClient, experiment_id: str, kind: str, run_key: str) -> str | None:
    """The id of the most recent run of ``kind`` tagged ``run_key``, or None."""
    query = f"tags.kind = '{kind}' and tags.{RUN_KEY_TAG} = '{run_key}'"
    found = client.search_runs([experiment_id], query, max_results=1, order_by=["start_time DESC"])
    return found[0].info.run_id if found else None


def find_training_run(cfg: Config, run_key: str) -> str | None:
    """The MLflow run that trained ``run_key`` (see :func:`hardmask.checkpoint.training_key`), or None."""
    uri = resolve_tracking_uri(cfg)
    client = _client(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return None if experiment is None else latest_run(client, experiment.experiment_id, "train", run_key)


def log_parent_metrics(cfg: Config, metrics: Mapping[str, Mapping[str, float]]) -> None:
    """``{variant: {name: value}}`` onto each variant's parent run of the current DVC experiment."""
    from mlflow.entities import Metric

    uri = resolve_tracking_uri(cfg)
    client = _client(uri)
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, uri)
    now = int(time.time() * 1000)
    for variant, values in metrics.items():
        parent = parent_run_for(client, experiment_id, variant)
        entities = [Metric(name, _as_float(name, value), now, 0) for name, value in values.items()]
        for i in range(0, len(entities), MAX_METRICS_PER_BATCH):
            client.log_batch(parent, metrics=entities[i : i + MAX_METRICS_PER_BATCH])


# ------------------------------------------------------------------------------------------------ helpers


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
