"""Shared fixtures: compose the real params.yaml and shrink it, so tests exercise the real schema."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from hardmask.config import Config, Section, compose_config, config_from_dict, deep_merge, load_config

REPO = Path(__file__).resolve().parents[1]
# The real configurations: the default study (the committed params.yaml) and the paper's recipe on the
# benchmark.
DEFAULT = load_config(REPO / "params.yaml")
PAPER = compose_config(["recipe=paper"], conf_dir=REPO / "conf")


def schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Every leaf key of the schema, dotted (a nested section's fields, never the section itself)."""
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= schema_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def leaf_values(data: dict, prefix: str = "") -> dict[str, object]:
    """``{dotted key: value}`` of a config dict down to the schema's leaves (a dict-valued leaf such as
    ``model.backbone.kwargs`` stays whole); keys the schema lacks are kept as they are."""
    leaves = {}
    schema = schema_keys()
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in schema:
            leaves |= leaf_values(value, f"{key}.")
        else:
            leaves[key] = value
    return leaves


def changed(section: Section, **fields) -> Section:
    """``section`` with ``fields`` deep-merged over it, validated (a real config shrunk for a test)."""
    return type(section).model_validate(deep_merge(section.model_dump(mode="json"), fields))


# A configuration small enough for a CPU test: a few hundred 32 px images, a 2-block ViT, 2 epochs.
TINY_OVERRIDES = {
    "data": {
        "image_size": 32,
        "synthetic": {"image_size": 32, "n_train": 128, "n_val": 64, "n_test": 64, "n_ood": 32},
        "loader": {"batch_size": 16, "eval_batch_size": 64, "num_workers": 0, "pin_memory": False},
    },
    "model": {
        "backbone": {"kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "num_parts": 2,
    },
    "optim": {"epochs": 2, "warmup_epochs": 0.0, "reference_batch_size": 16},
    "train": {
        "variants": ["two_stage_hard"],
        "seeds": [0],
        "checkpoint_every_steps": 2,
        "log_every_steps": 1,
    },
    "cluster": {"executor": "debug"},
    "evaluate": {"workers": 1},  # in-process, where the tests' fakes are; the end-to-end test runs two
}


def _fresh_mlflow_store(tmp_path: Path) -> str:
    """A migrated empty MLflow store in ``tmp_path`` (copying one template per session saves ~10 s a test)."""
    from tests.tracking.store import create_template, fresh_store

    # next to tmp_path in pytest's base temporary directory, which pytest prunes (older sessions' are removed)
    template_dir = tmp_path.parent / "mlflow-template"
    template_dir.mkdir(exist_ok=True)
    return fresh_store(create_template(template_dir), tmp_path)


def make_tiny_config(tmp_path: Path, **sections: dict) -> Config:
    """The real params.yaml, shrunk by TINY_OVERRIDES, with every output under ``tmp_path``."""
    base = DEFAULT.dump()
    paths = {
        "base": {
            "data_dir": str(tmp_path / "data"),
            "runs_dir": str(tmp_path / "runs"),
            "reports_dir": str(tmp_path / "reports"),
            "device": "cpu",
        },
        "cluster": {"logs_dir": str(tmp_path / "logs")},
        "tracking": {"uri": _fresh_mlflow_store(tmp_path)},
    }
    merged = deep_merge(deep_merge(deep_merge(base, TINY_OVERRIDES), paths), sections)
    return config_from_dict(merged, source="tiny test config")


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    return make_tiny_config(tmp_path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The longest first: `make test` hands the tests to two pytest-xdist workers in this order, one at a time
    # as a worker runs short (--dist loadgroup --no-loadscope-reorder; an `xdist_group` goes whole, where its
    # first test comes), so that the run does not end on one long test with the other worker idle.
    items.sort(key=lambda item: -expected_seconds(item))  # stable: file order otherwise


def expected_seconds(item: pytest.Item) -> float:
    """About how long ``item`` keeps a worker busy on a 2-core machine (``slow(seconds=...)``, with its share
    of module fixtures); 0 for the quick tests. Only the order of the tests depends on it."""
    marker = item.get_closest_marker("slow")
    if marker is None:
        return 0.0
    if "seconds" not in marker.kwargs:
        raise pytest.UsageError(f"{item.nodeid}: mark it slow(seconds=...), about how long it runs")
    return float(marker.kwargs["seconds"])


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores on CI: keep intra-op threads low so parallel helpers (DataLoader, subprocesses) don't thrash,
    # and at one per pytest-xdist worker when the workers already fill the cores.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, 2, (os.cpu_count() or 1) // workers)))
    yield
    torch.set_num_threads(previous)
