"""Cluster tests: skip `slurm` tests without a reachable controller; let jobs import the stand-ins; give each
test its own MLflow store and leave the environment as it was."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import REPO
from ..tracking.store import create_template, fresh_store

START_HINT = "start one with `scripts/slurm.sh install && scripts/slurm.sh start`"


@functools.cache
def slurm_unavailable_reason() -> str | None:
    """Why SLURM tests cannot run here, or None when `sinfo` reaches a controller with a usable node."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return f"SLURM client commands (sinfo, sbatch) not installed; {START_HINT}"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 15 s; {START_HINT}"
    if out.returncode != 0:
        return f"sinfo cannot reach a SLURM controller ({out.stderr.strip()}); {START_HINT}"
    states = out.stdout.split()
    if not any(s.rstrip("*~#").startswith(("idle", "mix", "alloc", "completing")) for s in states):
        return f"no SLURM node is up (sinfo states: {states or 'none'}); {START_HINT}"
    return None


@pytest.fixture(autouse=True)
def _skip_without_slurm(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slurm") and (reason := slurm_unavailable_reason()):
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _job_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Jobs (local subprocesses, SLURM tasks) inherit this environment: they must import the stand-ins, and
    # must not inherit a tracking URI or DVC experiment name from the shell that runs pytest.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_template(tmp_path_factory.mktemp("mlflow-template"))


@pytest.fixture
def mlflow_uri(mlflow_template: Path, tmp_path: Path) -> str:
    return fresh_store(mlflow_template, tmp_path)
