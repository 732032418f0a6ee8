"""How hardmask's processes end (hardmask.process): at once, with their exit status and their output whole."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs last at exit (atexit is last in, first out): what the interpreter's final collections will see.
REPORT_AT_EXIT = (
    "import atexit, gc, sys\n"
    "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, flush=True))\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", REPORT_AT_EXIT + code], capture_output=True, text=True)


@pytest.mark.parametrize("install", [True, False])
def test_the_objects_alive_at_exit_are_left_out_of_the_last_collections_and_the_status_is_kept(install: bool):
    code = (
        "from hardmask.process import skip_exit_collections\n"
        + ("skip_exit_collections(); skip_exit_collections()\n" if install else "")
        + "print('written before exit')\nsys.exit(3)"
    )
    out = _run(code)
    assert out.returncode == 3, out.stderr
    assert out.stdout.splitlines() == ["written before exit", f"frozen at exit: {install}"]


def test_every_stage_ends_that_way():
    out = _run("from hardmask.config.cli import run_stage\nrun_stage(lambda: print('stage ran'))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["stage ran", "frozen at exit: True"]
