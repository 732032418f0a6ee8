"""Imports run one way: stages, the ``hardmask`` command line (cli) -> jobs and commands (cluster, report,
bench, predict, export) -> training, evaluation -> data, models, losses, tracking -> foundation (config, io,
layout, runtime, metrics, checkpoint, errors, console). Nothing imports upwards, and models, data and losses
never import one another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SRC = REPO / "src" / "hardmask"
LAYERS = {
    0: {"config", "io", "layout", "runtime", "metrics", "checkpoint", "errors", "console"},
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


def test_the_report_loads_no_model_code():
    """The report stage reads tables and arrays: importing it must not pull in torch, timm or the models."""
    code = (
        "import sys, hardmask.report.render, hardmask.report.inputs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm') "
        "or m.startswith(('hardmask.models', 'hardmask.data', 'hardmask.training'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_train_stage_checks_its_variants_without_loading_model_code():
    """Before it submits any job the train stage imports its modules and checks the variants: torch, timm and
    the models load in the jobs, not there (they held the first job back by about 3 s, with a core idle)."""
    code = (
        "import sys; sys.path.insert(0, '.'); import stages.train; "
        "from hardmask.models import VARIANTS, check_variants, describe_variants; "
        "check_variants(VARIANTS); describe_variants(VARIANTS); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'albumentations') "
        "or (m.startswith(('hardmask.models.', 'hardmask.data', 'hardmask.training')) "
        "and m != 'hardmask.models.registry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
