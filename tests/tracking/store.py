"""A fresh MLflow sqlite store per test, copied from one created per session.

Creating MLflow's schema runs its database migrations (several seconds); copying a migrated empty database
takes milliseconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_template: Path | None = None  # one per test session, shared by the tracking and cluster tests


def create_template(directory: Path) -> Path:
    """A migrated empty store in ``directory`` (or the one an earlier call of this session made)."""
    global _template
    if _template is None or not _template.exists():
        from mlflow.tracking import MlflowClient

        db = directory / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates and migrates the schema
        _template = db
    return _template


def fresh_store(template: Path, directory: Path) -> str:
    """A migrated, empty store at ``directory/mlflow.db``; returns its URI."""
    db = directory / "mlflow.db"
    shutil.copyfile(template, db)
    return f"sqlite:///{db}"
