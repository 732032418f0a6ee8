"""The MLflow UI shows what the trackers logged: a real `mlflow ui` read by headless Chromium (`--dump-dom`).

Needs Chromium (`scripts/install_browser.sh`); slow (the UI server starts in ~10-20 s on two cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardmask.tracking import RunTracker, init_tracking

from ..conftest import make_tiny_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow(seconds=15),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: run scripts/install_browser.sh"),
]
# The MLflow version and its bundled UI come with the environment; the UI is a JavaScript app, so the page is
# read after Chromium has run its scripts for a (virtual) while.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--virtual-time-budget=15000",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(mlflow_uri: str, tmp_path: Path) -> Iterator[str]:
    """`mlflow ui` on the test's store; yields its base URL and stops its whole process group afterwards."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", mlflow_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(tmp_path / "mlflow-ui.log", "wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp_path / "mlflow-ui.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow ui did not come up on port {port}:\n{log_text}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _page_text(url: str, profile: Path) -> str:
    """The visible text of ``url`` once Chromium ran the page's scripts (markup, styles, scripts removed)."""
    out = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", out.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_ui_lists_the_logged_runs_and_shows_their_metrics(mlflow_uri: str, mlflow_ui: str, tmp_path: Path):
    cfg = make_tiny_config(
        tmp_path,
        tracking={"uri": mlflow_uri, "experiment": "ui-check"},
        train={"variants": ["baseline_vit", "two_stage_hard"], "seeds": [0]},
    )
    init_tracking(cfg)
    logged = {"baseline_vit": 0.875, "two_stage_hard": 0.625}
    run_ids = {}
    for variant, accuracy in logged.items():
        with RunTracker.for_training(cfg, variant=variant, seed=0, run_key=variant) as tracker:
            tracker.log_metrics({"val_worst_group_acc": accuracy}, step=3)
        run_ids[variant] = tracker.run_id

    # The REST API the UI reads from.
    api = f"{mlflow_ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check"
    with urllib.request.urlopen(api, timeout=10) as response:
        experiment_id = json.load(response)["experiment"]["experiment_id"]

    runs_page = _page_text(f"{mlflow_ui}/#/experiments/{experiment_id}/runs", tmp_path / "chromium-runs")
    assert "ui-check" in runs_page
    for variant in logged:  # the parent runs, one per variant, with the seeds nested under them
        assert variant in runs_page, runs_page[:2000]

    for variant, accuracy in logged.items():
        run_page = _page_text(
            f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_ids[variant]}",
            tmp_path / f"chromium-{variant}",
        )
        assert f"{variant}/seed0/train" in run_page, run_page[:2000]
        assert f"val_worst_group_acc {accuracy}" in run_page, run_page[:2000]
