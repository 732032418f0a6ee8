"""Experiment tracking (MLflow): rank-0 run handling, params flattening, cross-link tags, artifacts."""

from hardmask.tracking.mlflow import (
    RunTracker,
    TrackingError,
    flatten_config,
    init_tracking,
    parent_run_for,
    resolve_tracking_uri,
    run_tags,
)

__all__ = [
    "RunTracker",
    "TrackingError",
    "flatten_config",
    "init_tracking",
    "parent_run_for",
    "resolve_tracking_uri",
    "run_tags",
]
