"""How hardmask's own processes start and end: DVC stages, training jobs and evaluation workers."""

from __future__ import annotations

import atexit
import gc

from hardmask.console import configure_logging

_registered = False


def start_worker_process() -> None:
    """First thing in a training job or an evaluation worker: log to its stderr (a job's log file under
    ``<logs_dir>``, the stage's terminal for an evaluation worker), and end at once when done (the next job of
    its slot, or the pool's shutdown, waits for that exit)."""
    configure_logging()
    skip_exit_collections()


def skip_exit_collections() -> None:
    """At interpreter exit, leave the objects still alive out of its last garbage collections (``gc.freeze``).

    Why: once torch, timm (through torchvision: ``torch._dynamo`` and sympy) and MLflow are loaded, the
    interpreter's exit walks every tracked object in several full collections while it tears the modules down:
    about 1.5 s of CPU after a training job has written its result, during which the next job of its slot
    cannot start (docs/performance.md). Reference counting still frees what it frees; only unreachable
    reference cycles are left to the operating system, and every file hardmask writes is closed before its
    function returns. Idempotent.
    """
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
