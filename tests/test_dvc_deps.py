"""dvc.yaml declares what each stage really uses, so that `dvc repro` reruns whatever a change can affect.

Each stage runs on tiny data under tests/stage_audit.py, which records the project modules it imported, the
files it read and the config keys it read. Every module must be a declared dependency of that stage (a file or
a folder above it), every file read a dependency (or the stage's own output), every key a declared param.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hardmask.config import flatten, save_config

from .conftest import DEFAULT, REPO, make_tiny_config

STAGES = ("prepare", "train", "evaluate", "report")
pytestmark = pytest.mark.xdist_group("stage-audit")  # one worker audits the four stages


def _resolve(text: str) -> str:
    """DVC's ``${a.b}`` templating, from the committed params.yaml."""
    values = flatten(DEFAULT.dump())
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(values[m.group(1).strip()]), text)


def _paths(entries: list[Any]) -> list[str]:
    return [_resolve(next(iter(e)) if isinstance(e, dict) else e).rstrip("/") for e in entries or []]


def declared(stage: str) -> tuple[list[str], list[str], list[str]]:
    """(deps, params keys, outs) of ``stage`` in dvc.yaml; params of params.yaml only."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    params: list[str] = []
    for entry in spec.get("params", []):
        if isinstance(entry, dict):  # {file: [keys]}
            for file, keys in entry.items():
                assert file == "params.yaml", f"{stage}: params from {file}"
                params += keys
        else:
            params.append(entry)
    outs = _paths(spec.get("outs", [])) + _paths(spec.get("metrics", [])) + _paths(spec.get("plots", []))
    return _paths(spec.get("deps", [])), params, outs


def covered(path: str, declared_paths: list[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in declared_paths)


def key_covered(key: str, params: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in params)


@pytest.fixture(scope="module")
def audits(tmp_path_factory) -> dict[str, dict]:
    """Every stage, in pipeline order, on tiny data in a scratch project (relative paths, as in
    params.yaml)."""
    work = tmp_path_factory.mktemp("project")
    cfg = make_tiny_config(
        work,
        base={key: getattr(DEFAULT.base, key) for key in ("data_dir", "runs_dir", "reports_dir")},
        evaluate={"threshold_quantiles": [0.05]},
        report={"overlay_per_group": 1},
    )
    save_config(cfg, work / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    records = {}
    for stage in STAGES:
        out = work / f"audit-{stage}.json"
        cmd = [sys.executable, str(REPO / "tests" / "stage_audit.py"), str(REPO / "stages" / f"{stage}.py")]
        proc = subprocess.run(cmd + [str(out)], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stderr[-3000:]}"
        records[stage] = json.loads(out.read_text()) | {"work": str(work)}
    return records


def test_the_module_runs_on_one_worker(request):
    """Under `make test` (pytest-xdist, --dist loadgroup) this module's tests go to one worker, which audits
    the stages once. pytest-xdist 3.8 drops the groups without a word on pytest 9.2
    (pytest-dev/pytest-xdist#1386, hence the pin in pyproject.toml): then both workers would build the module
    fixture, and both would run the SLURM tests on the one local node."""
    if getattr(request.config.option, "loadgroup", False):
        assert request.node.nodeid.endswith("@stage-audit"), request.node.nodeid


@pytest.mark.parametrize("stage", STAGES)
def test_every_project_module_a_stage_imports_is_a_declared_dependency(audits, stage):
    deps, _, _ = declared(stage)
    used = sorted(
        os.path.relpath(path, REPO)
        for path in audits[stage]["modules"]
        if path.startswith((str(REPO / "src") + os.sep, str(REPO / "stages") + os.sep))
    )
    assert f"stages/{stage}.py" in used
    missing = [path for path in used if not covered(path, deps)]
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_file_a_stage_reads_is_a_declared_dependency(audits, stage):
    deps, _, outs = declared(stage)
    work = Path(audits[stage]["work"])
    read = []
    for path in map(Path, audits[stage]["opened"]):
        if not path.is_file():  # folders opened to fsync them, temporary files since renamed
            continue
        if path.is_relative_to(work):
            rel = path.relative_to(work).as_posix()
            # the stage's own outputs, the MLflow store and job logs (shared bookkeeping, not inputs)
            if (
                rel == "params.yaml"
                or covered(rel, outs)
                or rel.startswith(("logs/", "mlflow", "mlartifacts"))
            ):
                continue
            read.append(rel)
        elif (
            path.is_relative_to(REPO)
            and not path.is_relative_to(REPO / ".venv")
            and ".egg-info" not in path.parts[-2]
        ):
            read.append(path.relative_to(REPO).as_posix())
    auditor = "tests/stage_audit.py"
    missing = sorted({p for p in read if not covered(p, deps) and not p.endswith(".pyc") and p != auditor})
    assert not missing, f"dvc.yaml stage {stage!r} reads but does not depend on {missing[:10]}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_config_key_a_stage_reads_is_a_declared_param(audits, stage):
    _, params, _ = declared(stage)
    missing = [key for key in audits[stage]["keys"] if not key_covered(key, params)]
    assert not missing, f"dvc.yaml stage {stage!r} reads params it does not declare: {missing}"
