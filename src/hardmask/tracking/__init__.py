"""Experiment tracking (MLflow): rank-0 run handling, params flattening, cross-link tags, artifacts."""

from hardmask.tracking.mlflow import (
    RunTracker,
    TrackingError,
    end_status,
    find_training_run,
    flatten_config,
    init_tracking,
    log_parent_metrics,
    parent_run_for,
    resolve_tracking_uri,
    run_tags,
)

__all__ = [
    "RunTracker",
    "TrackingError",
    "end_status",
    "find_training_run",
    "flatten_config",
    "init_tracking",
    "log_parent_metrics",
    "parent_run_for",
    "resolve_tracking_uri",
    "run_tags",
]
