"""Every tracking test gets its own migrated MLflow store and leaves MLFLOW_TRACKING_URI as it found it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .store import create_template, fresh_store


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_template(tmp_path_factory.mktemp("mlflow-template"))


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first so that teardown also removes a URI that init_tracking exports during the test
    for name in (
        "MLFLOW_TRACKING_URI",
        "DVC_EXP_NAME",
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
    ):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def mlflow_uri(mlflow_template: Path, tmp_path: Path) -> str:
    return fresh_store(mlflow_template, tmp_path)
