"""The real dvc.yaml and conf/ on a shrunken study, in a fresh clone, driven by DVC's own verbs: `dvc repro`,
`dvc exp run -S` (Hydra composition), queued experiments, `dvc exp apply`, `dvc metrics show`, `dvc plots
show`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hardmask import study
from hardmask.config import deep_merge

from .conftest import REPO, TINY_OVERRIDES

DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
pytestmark = [
    pytest.mark.slow(seconds=90),
    pytest.mark.xdist_group("tiny-project"),  # one worker reproduces the tiny project for both tests
    pytest.mark.skipif(DVC is None, reason="dvc is not installed in this environment"),
]
# The test's study: the tiny config, two variants x two seeds, one epoch, through the local executor.
TINY_STUDY = deep_merge(
    TINY_OVERRIDES,
    {
        "optim": {"epochs": 1},
        "train": {"variants": ["baseline_vit", "two_stage_hard"], "seeds": [0, 1]},
        "cluster": {"executor": "local", "array_parallelism": 2},
        "evaluate": {"threshold_quantiles": [0.05]},
        "report": {"overlay_per_group": 1},
    },
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _tiny_project(work: Path) -> dict[str, str]:
    """Clone the repository into ``work`` with the working tree's pipeline code and a tiny study composed by
    Hydra (conf/tiny.yaml last in the defaults list), committed, so that experiments start from it; returns
    the environment the DVC commands run in."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    # The working tree's pipeline, so that the test checks what is being changed, not the last commit.
    for name in ("dvc.yaml", ".dvc/config", ".dvcignore"):
        shutil.copy(REPO / name, work / name)
    for folder in ("stages", "src", "conf", ".dvc/plots"):
        shutil.rmtree(work / folder, ignore_errors=True)
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "conf" / "tiny.yaml").write_text("# @package _global_\n" + yaml.safe_dump(TINY_STUDY))
    defaults = (
        (work / "conf" / "config.yaml")
        .read_text()
        .replace("  - cluster: local\n", "  - cluster: local\n  - tiny\n")
    )
    (work / "conf" / "config.yaml").write_text(defaults)

    # As on a researcher's machine, Python writes bytecode (__pycache__/) into src/ and stages/, which are the
    # stages' dependencies, while the stages run: DVC must not take it for a change of code.
    unset = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(work / "src")
    _run([sys.executable, "-m", "hardmask.config"], work, env)  # params.yaml of the tiny study
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], cwd=work, check=True
    )
    return env


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """The tiny project after its first `dvc repro`, and what that printed. Both tests start from it, each in
    its own copy: the study is trained once per module instead of once per test."""
    if not (REPO / ".git").exists():
        pytest.skip("needs the project's git repository to clone")
    work = tmp_path_factory.mktemp("reproduced") / "repo"
    env = _tiny_project(work)
    return work, env, _run([DVC, "repro"], work, env)


@pytest.fixture
def project(reproduced, tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """A copy of the reproduced project (git, DVC cache, outputs, MLflow store) that a test may change. The
    MLflow experiment keeps the artifact location it was created with (absolute, in the original), so
    artifacts logged from a copy land there; the tests read the copy's store, not artifacts."""
    original, env, first = reproduced
    work = tmp_path / "repo"
    shutil.copytree(original, work, symlinks=True)
    return work, {**env, "PYTHONPATH": str(work / "src")}, first


def test_dvc_repro_runs_every_stage_then_nothing_then_only_what_changed(project):
    work, env, first = project
    assert _ran(first) == {"prepare", "train", "evaluate", "report"}
    for out in (
        "reports/report.md",
        "reports/report.html",
        "reports/eval/eval.csv",
        "reports/eval/summary.json",
    ):
        assert (work / out).is_file(), out
    headline = {p.stem: json.loads(p.read_text()) for p in (work / "reports" / "metrics").glob("*.json")}
    assert set(headline) == {"baseline_vit", "two_stage_hard"}
    assert (
        headline["two_stage_hard"]["seeds"] == 2
        and 0 <= headline["two_stage_hard"]["test"]["worst_group_acc"] <= 1
    )
    assert (work / "mlflow.db").is_file()

    # Bytecode of every module, as importing the package elsewhere (`make test`, a notebook) leaves it: not
    # a change of any stage's code.
    _run([sys.executable, "-m", "compileall", "-q", "src", "stages"], work, env)
    second = _run([DVC, "repro"], work, env)
    assert _ran(second) == set(), second

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["leave_one_part_out"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([DVC, "repro"], work, env)
    assert _ran(third) == {"evaluate", "report"}, third

    # `dvc metrics show`: one readable row per model
    shown = _run([DVC, "metrics", "show"], work, env).splitlines()
    assert [line.split()[0] for line in shown[1:]] == [
        "reports/metrics/baseline_vit.json",
        "reports/metrics/two_stage_hard.json",
    ]
    assert "test.worst_group_acc" in shown[0] and max(map(len, shown)) < 250

    # An experiment composes params.yaml with Hydra (lists in its override syntax), reruns only what changed.
    splits = "evaluate.splits=[val,test,mixed_rand,mixed_same]"
    exp = _run([DVC, "exp", "run", "-S", splits, "-S", "report.overlay_per_group=2"], work, env)
    assert _ran(exp) == {"evaluate", "report"}, exp
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["evaluate"]["splits"] == ["val", "test", "mixed_rand", "mixed_same"]
    assert params["report"]["overlay_per_group"] == 2 and params["optim"]["epochs"] == 1  # the composed study

    # `dvc plots show --json`: one datum per plotted point
    plots = json.loads(_run([DVC, "plots", "show", "--json"], work, env))["data"]
    data = {
        name: entries[0]["content"]["data"]["values"]
        for name, entries in plots.items()
        if "content" in entries[0]
    }
    accuracy = data["test_worst_group_acc"]
    assert sorted((d["model"], int(d["seed"])) for d in accuracy) == [
        (m, s) for m in ("baseline_vit", "two_stage_hard") for s in (0, 1)
    ]
    curves = data["val_worst_group_acc_per_epoch"]
    assert len(curves) == 4 and len({d["run"] for d in curves}) == 4  # 4 runs x 1 epoch
    images = {name for name, entries in plots.items() if entries[0]["type"] == "image"}
    assert "reports/figures/accuracy_by_model.png" in images  # the report's figures, rendered offline


def test_queued_experiments_keep_their_runs_and_mlflow_records(project):
    """Queued experiments run in temporary copies: their MLflow runs still land in the project's store, and
    `dvc exp apply` brings back their trained runs and report, with nothing left to rerun."""
    from mlflow.tracking import MlflowClient

    work, env, _ = project  # the baseline is reproduced
    for name, lr in (("lr-a", "0.003"), ("lr-b", "0.004")):
        _run([DVC, "exp", "run", "--queue", "-n", name, "-S", f"optim.lr={lr}"], work, env)
    _run([DVC, "queue", "start", "-j", str(study.JOBS)], work, env)  # two at once, as the study runs them
    deadline = time.monotonic() + 900
    while True:
        status = _run([DVC, "queue", "status"], work, env)
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 2, status

    assert {"lr-a", "lr-b"} <= set(_run([DVC, "exp", "list", "--name-only"], work, env).split())
    changed = _run([DVC, "exp", "show", "--no-pager", "--only-changed", "--csv"], work, env).splitlines()
    assert "optim.lr" in changed[0] and len(changed[0].split(",")) < 60, changed[0]  # readable

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hardmask")
    for name in ("lr-a", "lr-b"):
        runs = client.search_runs([experiment.experiment_id], f"tags.dvc_exp_name = '{name}'")
        kinds = sorted(r.data.tags["kind"] for r in runs)
        assert kinds == ["eval"] * 4 + ["train"] * 4, (name, kinds)
        assert all(r.info.status == "FINISHED" for r in runs)

    _run([DVC, "exp", "apply", "lr-a"], work, env)
    assert yaml.safe_load((work / "params.yaml").read_text())["optim"]["lr"] == 0.003
    status = _run([DVC, "status"], work, env)
    assert "up to date" in status, status
    best = work / "runs" / "train" / "two_stage_hard" / "seed0" / "checkpoints" / "best.pt"
    import torch

    assert torch.load(best, weights_only=True)["config"]["optim"]["lr"] == 0.003
