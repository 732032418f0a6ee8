"""Checkpoint files of training runs: atomic writes, RNG capture, ``weights_only`` loading, config diffs.

A checkpoint holds everything needed to continue a run to the bit on CPU: model, optimiser, scheduler, grad
scaler and EMA states, the RNG states of torch / numpy / python, and the position in the data order
(epoch and batches done in that epoch). It is written to a temporary file and renamed, so a SIGKILL at any
moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hardmask.config import flatten
from hardmask.errors import HardmaskError
from hardmask.io import atomic_torch_save

if TYPE_CHECKING:
    import torch

# torch is imported where a function needs it: the train stage compares configs (training_config_diff)
# before it submits its jobs, and importing torch there would hold the first job back by a second.


class CheckpointError(HardmaskError, RuntimeError):
    """A checkpoint file is missing, unreadable or from another run."""


def capture_rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a torn or foreign file: say which one
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc


# Config keys that cannot change what a run computes: where files go, how the work is scheduled and logged,
# and what happens after training. A checkpoint may be resumed under a config that differs only here.
RESUME_INDEPENDENT_KEYS = (
    "base.data_dir",
    "base.runs_dir",
    "base.reports_dir",
    "base.device",
    "data.root",
    "data.download",
    "data.loader.num_workers",  # augmentation randomness depends on (seed, epoch, index) only
    "data.loader.eval_batch_size",
    "data.loader.pin_memory",
    "data.loader.cache_mb",
    "train",
    "cluster",
    "tracking",
    "evaluate",
    "report",
)


def _training_relevant(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in RESUME_INDEPENDENT_KEYS)


def training_config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved, current)}`` for every key that would make a resumed run differ from a fresh one.

    Both arguments are dumped configs (``Config.dump()``); keys under :data:`RESUME_INDEPENDENT_KEYS` are
    ignored.
    """

    old, new = flatten(saved), flatten(current)
    missing = object()
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(set(old) | set(new))
        if _training_relevant(key) and old.get(key, missing) != new.get(key, missing)
    }


def training_key(config: Mapping[str, Any], variant: str, seed: int) -> str:
    """A short fingerprint of what a run computes: its variant, seed and the training-relevant config (the
    keys :func:`training_config_diff` compares). Two runs with the same key train the same weights; the MLflow
    run of a training run is found by it (``hardmask.tracking``), so no run id is written into the run."""
    relevant = {key: value for key, value in flatten(config).items() if _training_relevant(key)}
    text = json.dumps({"variant": variant, "seed": seed, "config": relevant}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_config_diff(diff: Mapping[str, tuple[Any, Any]], limit: int = 5) -> str:
    shown = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(diff.items())[:limit]]
    more = f" and {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(shown) + more
