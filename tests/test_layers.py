"""Imports run one way: stages, the ``hardmask`` command line (cli) -> jobs and commands (cluster, report,
bench, predict, export) -> training, evaluation -> data, models, losses, tracking -> foundation (config, io,
layout, runtime, metrics, checkpoint, errors, console, process). Nothing imports upwards, and models, data and
losses never import one another."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SRC = REPO / "src" / "hardmask"
LAYERS = {
    0: {"config", "io", "layout", "runtime", "metrics", "checkpoint", "errors", "console", "process"},
    1: {"data", "models", "losses", "tracking"},
    2: {"training", "evaluation"},
    3: {"cluster", "report", "bench", "predict", "export"},
    4: {"cli", "study"},
}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}
SIBLINGS_APART = ({"data", "models", "losses"}, {"training", "evaluation"})


def unit_of(module: str) -> str | None:
    """``hardmask.models.stage1`` -> ``models``; ``hardmask`` itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "hardmask" else None


def imports_of(path: Path) -> set[str]:
    """Every hardmask module ``path`` imports, at any depth of the file (function-level imports too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("hardmask.")}


def test_every_package_module_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if not p.name.startswith(("_", "."))}
    assert units == set(LAYER_OF), "add the new module to LAYERS"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_upwards_or_sideways(path):
    own = unit_of("hardmask." + ".".join(path.relative_to(SRC).with_suffix("").parts))
    if own is None or own not in LAYER_OF:
        return
    bad = []
    for name in imports_of(path):
        other = unit_of(name)
        if other is None or other == own or other not in LAYER_OF:
            continue
        if LAYER_OF[other] > LAYER_OF[own]:
            bad.append(f"{name} (layer {LAYER_OF[other]} above {own}'s {LAYER_OF[own]})")
        elif any({own, other} <= group for group in SIBLINGS_APART):
            bad.append(f"{name} (a sibling of {own})")
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


# What a stage must not load before its jobs or workers start: they load it themselves.
HEAVY = ("torch", "timm", "albumentations")
HEAVY_OWN = ("hardmask.models.", "hardmask.data", "hardmask.training.", "hardmask.evaluation.runner")
LIGHT_OWN = ("hardmask.models.registry", "hardmask.training.result")


def _heavy_modules_after(
    code: str, heavy: tuple = HEAVY, heavy_own: tuple = HEAVY_OWN, light_own: tuple = LIGHT_OWN
) -> list[str]:
    """The heavy modules loaded by running ``code`` in a fresh interpreter at the repository root."""
    report = (
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{heavy!r} or (m.startswith({heavy_own!r}) and m not in {light_own!r})))"
    )
    script = f"import sys; sys.path.insert(0, '.')\n{code}\n{report}"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_the_report_loads_no_model_code():
    """The report stage reads tables and arrays: importing it must not pull in torch, timm or the models."""
    code = "import hardmask.report.render, hardmask.report.inputs"
    own = ("hardmask.models", "hardmask.data", "hardmask.training")
    assert _heavy_modules_after(code, heavy=("torch", "timm"), heavy_own=own, light_own=()) == []


def test_the_train_stage_checks_its_variants_without_loading_model_code():
    """Before it submits any job the train stage imports its modules and checks the variants: torch, timm and
    the models load in the jobs, not there (they held the first job back by about 3 s, with a core idle)."""
    code = (
        "import stages.train\nfrom hardmask.models import VARIANTS, check_variants, describe_variants\n"
        "check_variants(VARIANTS); describe_variants(VARIANTS)"
    )
    assert _heavy_modules_after(code) == []


def test_the_train_stage_reads_a_job_result_without_loading_the_training_code(tmp_path):
    """The stage unpickles every job's result as the job ends. Its class defined with the training loop, the
    first one took torch, timm and the data stack into the stage: 3.3 s before the stage knew that the first
    two jobs had ended and started the next two."""
    from hardmask.training.loop import TrainResult

    result = TrainResult("two_stage_hard", 0, "runs/x", 4, 376, 4, 0.88, 0.9, 0.88, 250.0, "abc")
    path = tmp_path / "result.pkl"
    path.write_bytes(pickle.dumps(("success", result)))
    code = (
        f"import pickle\n_, r = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "assert (r.variant, r.best_val_worst_group_acc) == ('two_stage_hard', 0.88)"
    )
    assert _heavy_modules_after(code) == []


def test_the_evaluate_stage_starts_its_workers_before_loading_the_evaluation_code():
    """Each evaluation worker loads torch, timm, the models and the data itself; the stage loading them first
    held the workers back by about 3 s, with a core idle."""
    assert _heavy_modules_after("import stages.evaluate") == []
