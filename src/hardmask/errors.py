"""Expected failures and how commands report them.

:class:`HardmaskError` is the base of every failure a user can fix: a bad config key, a missing dataset, a
checkpoint from another run, a cluster that refuses the jobs. Its message names the file, key or resource and
the fix; :func:`reported_errors` prints it as one message without a traceback (set ``HARDMASK_DEBUG=1`` or
pass ``--debug`` to see the traceback). Ctrl-C ends a command with one line, not a traceback. Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

DEBUG_ENV = "HARDMASK_DEBUG"
INTERRUPTED_EXIT = 130  # the shell's status for a process ended by SIGINT


class HardmaskError(Exception):
    """A failure the user can fix; the message says what and how."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextlib.contextmanager
def reported_errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Run a command's body; a :class:`HardmaskError` or Ctrl-C ends the process with its message and status
    2 or 130, without a traceback (unless :func:`debugging`)."""
    try:
        yield
    except HardmaskError as exc:
        if debugging():
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debugging():
            raise
        print(interrupted, file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT) from None
