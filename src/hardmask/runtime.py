"""Where and how tensors run: the device, autocast, seeds and CPU threads (one place for each)."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``base.device`` (``auto | cpu | cuda``, or ``cuda:N``) as a device; ``auto`` takes GPU ``local_rank``
    when CUDA is available. Asking for CUDA where there is none is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r}: no CUDA device is available (set base.device: auto or cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The dtype of ``torch.autocast`` for ``optim.amp`` on ``device``; None = float32 (always on a CPU)."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``optim.amp`` on ``device``; a no-op on a CPU (float32: exact, reproducible)."""
    dtype = autocast_dtype(amp, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def autocast_disabled(reference: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that runs float32 inside an autocast region on ``reference``'s device (no-op outside one)."""
    device_type = reference.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
