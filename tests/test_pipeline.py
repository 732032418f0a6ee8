"""`dvc repro` of the real dvc.yaml on a shrunken params.yaml, in a fresh clone of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hardmask.config import deep_merge

from .conftest import REPO, TINY_OVERRIDES

DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
@pytest.mark.skipif(DVC is None, reason="dvc is not installed in this environment")
def test_dvc_repro_runs_every_stage_then_nothing_then_only_what_changed(tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("needs the project's git repository to clone")
    work = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    # The working tree's pipeline code, so that the test checks what is being changed, not the last commit.
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    for folder in ("stages", "src"):
        shutil.rmtree(work / folder)
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))

    params = yaml.safe_load((work / "params.yaml").read_text())
    tiny = deep_merge(
        TINY_OVERRIDES,
        {
            "optim": {"epochs": 1},
            "train": {"variants": ["baseline_vit", "two_stage_hard"], "seeds": [0, 1]},
            "cluster": {"executor": "local", "array_parallelism": 2},
            "evaluate": {"threshold_quantiles": [0.05]},
            "report": {"overlay_per_group": 1},
        },
    )
    (work / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, tiny), sort_keys=False))

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(work / "src")

    first = _run([DVC, "repro"], work, env)
    assert _ran(first) == {"prepare", "train", "evaluate", "report"}
    for out in ("reports/report.md", "reports/report.html", "reports/metrics.json", "reports/eval/eval.csv"):
        assert (work / out).is_file(), out
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    assert {"baseline_vit", "two_stage_hard"} <= set(metrics)
    assert metrics["two_stage_hard"]["test"]["worst_group_acc"]["n"] == 2
    assert (work / "mlflow.db").is_file()
    runs = json.loads((work / "reports" / "train_metrics.json").read_text())
    assert set(runs) == {f"{v}/seed{k}" for v in ("baseline_vit", "two_stage_hard") for k in (0, 1)}
    assert all(isinstance(value, int | float) for run in runs.values() for value in run.values()), runs

    second = _run([DVC, "repro"], work, env)
    assert _ran(second) == set(), second

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["leave_one_part_out"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([DVC, "repro"], work, env)
    assert _ran(third) == {"evaluate", "report"}, third

    shown = _run([DVC, "metrics", "show"], work, env)
    assert "worst_group_acc" in shown

    # An experiment changes parameters without editing files; lists use DVC's (Hydra) override syntax.
    splits = "evaluate.splits=[val,test,mixed_rand,mixed_same]"
    exp = _run([DVC, "exp", "run", "-S", splits, "-S", "report.overlay_per_group=2"], work, env)
    assert _ran(exp) == {"evaluate", "report"}, exp
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["evaluate"]["splits"] == ["val", "test", "mixed_rand", "mixed_same"]
    assert params["report"]["overlay_per_group"] == 2
    table = _run([DVC, "exp", "show", "--no-pager", "--csv"], work, env)
    assert "evaluate.splits" in table.splitlines()[0] and "two_stage_hard.test.worst_group_acc.mean" in table
