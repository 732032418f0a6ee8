"""The opt-in study (hardmask.study): every setting is a valid experiment; the tables read DVC's results."""

from __future__ import annotations

import pandas as pd
import pytest

from hardmask import study
from hardmask.config import compose_config
from hardmask.errors import HardmaskError
from hardmask.models import VARIANTS

from .conftest import REPO


@pytest.mark.parametrize("setting", study.SETTINGS, ids=lambda s: s.name)
def test_every_setting_composes_into_a_valid_config_of_known_variants(setting):
    cfg = compose_config(list(setting.overrides), conf_dir=REPO / "conf")  # what `dvc exp run -S` writes
    assert set(cfg.train.variants) <= set(VARIANTS)
    assert setting.question in study.QUESTIONS and setting.experiment.startswith("study-")


def test_the_comparison_has_every_variant_of_the_registry_with_the_default_studys_as_reference():
    (comparison,) = [s for s in study.SETTINGS if s.question == "comparison"]
    cfg = compose_config(list(comparison.overrides), conf_dir=REPO / "conf")
    default = compose_config([], conf_dir=REPO / "conf").train.variants
    assert list(default) == study.COMPARED  # the reference rows are what `dvc repro` trains
    assert set(cfg.train.variants) == set(VARIANTS) - set(default)  # trained once, not again here


def _fake_exp_show() -> list[dict]:
    def metrics(model: str, wga: float, avg: float = 0.8) -> dict:
        key = f"reports/metrics/{model}.json"
        return {
            f"{key}:test.worst_group_acc": wga,
            f"{key}:test.worst_group_acc_sd": 0.01,
            f"{key}:test.avg_acc": avg,
            f"{key}:bg_gap": 0.1,
        }

    return [  # newest first, as DVC lists them
        {
            "Experiment": None,
            "rev": "workspace",
            **metrics("two_stage_hard", 0.9),
            **metrics("baseline_vit", 0.5),
        },
        {
            "Experiment": "study-3x3",
            "rev": "9876fed",
            **metrics("two_stage_hard", 0.3, avg=0.40),
            # one seed: the headline file's null sd, as dvc.api.exp_show returns it
            "reports/metrics/two_stage_hard.json:test.worst_group_acc_sd": "None",
        },
        {"Experiment": "study-k1", "rev": "abc1234", **metrics("two_stage_hard", 0.7), "optim.lr": 0.002},
        {"Experiment": "someone-else", "rev": "def5678", **metrics("two_stage_hard", 0.1)},
        {
            "Experiment": "study-align095",
            "rev": "0123abc",
            **metrics("oracle_mask", 0.95),
            **metrics("two_stage_hard", 0.65),
            **metrics("baseline_vit", 0.55),
        },
    ]


def _collect(monkeypatch) -> pd.DataFrame:
    import dvc.api

    monkeypatch.setattr(dvc.api, "exp_show", _fake_exp_show)
    return study.collect(study.SETTINGS, conf_dir=REPO / "conf")


def test_tables_put_the_reference_rows_first_and_format_mean_sd(monkeypatch, tmp_path):
    results = _collect(monkeypatch)
    align = "alignment 0.95 (Waterbirds')"
    assert set(results["setting"]) == {study.REFERENCE, "K = 1", align, "3 classes x 3 places"}  # not others
    table = study.question_table(results, "parts")
    assert list(table.index) == [(study.REFERENCE, "two_stage_hard"), ("K = 1", "two_stage_hard")]
    assert table.loc[("K = 1", "two_stage_hard"), "worst-group acc"] == "0.700 ± 0.010"
    assert table.loc[("K = 1", "two_stage_hard"), "fg IoU"] == "–"  # not in the metrics: said, not invented
    robustness = study.question_table(results, "robustness")
    assert robustness.loc[("3 classes x 3 places", "two_stage_hard"), "worst-group acc"] == "0.300"
    path = study.write_report(results, tmp_path, wall_s=125)
    text = path.read_text()
    assert "## Ablation: the number of parts K" in text and "2m05s" in text
    page = (tmp_path / "study.html").read_text()
    # a table per question, and the robustness margins
    assert "Ablation: the number of parts K" in page and page.count("<table") == len(study.QUESTIONS) + 1
    assert f"falls under 0.15 in: {align}" in text  # +0.100: named; the default study's +0.400 is not


def test_rows_in_the_order_of_the_settings_and_of_the_registry_whatever_dvc_lists_first(monkeypatch):
    table = study.question_table(_collect(monkeypatch), "robustness")
    assert list(table.index) == [
        (study.REFERENCE, "baseline_vit"),
        (study.REFERENCE, "two_stage_hard"),
        ("alignment 0.95 (Waterbirds')", "baseline_vit"),
        ("alignment 0.95 (Waterbirds')", "two_stage_hard"),
        ("alignment 0.95 (Waterbirds')", "oracle_mask"),
        ("3 classes x 3 places", "two_stage_hard"),
    ]


def test_a_setting_the_method_does_not_learn_is_named_not_counted_a_success(monkeypatch):
    gaps = study.margins(_collect(monkeypatch)).set_index("setting")
    # 3 classes: chance is 1/3, and an average accuracy of 0.40 is within 0.1 of it
    assert gaps.loc["3 classes x 3 places", "above_chance"] == pytest.approx(0.40 - 1 / 3)
    assert gaps.loc[study.REFERENCE, "above_chance"] == pytest.approx(0.8 - 1 / 2)
    sentence = study.margin_sentence(gaps.reset_index())
    assert sentence.endswith(
        "has not learned the task and its margin is no success, in: 3 classes x 3 places."
    )
    assert "falls under 0.15 in: alignment 0.95 (Waterbirds')." in sentence


def test_robustness_margins_against_the_baseline_and_the_oracle(monkeypatch):
    gaps = study.margins(_collect(monkeypatch)).set_index("setting")
    assert gaps.loc["alignment 0.95 (Waterbirds')", "margin"] == pytest.approx(0.10)
    assert gaps.loc["alignment 0.95 (Waterbirds')", "oracle_gap"] == pytest.approx(0.30)
    assert gaps.loc[study.REFERENCE, "margin"] == pytest.approx(0.40)
    assert pd.isna(gaps.loc[study.REFERENCE, "oracle_gap"])  # no oracle row: not judged, not invented
    assert pd.isna(gaps.loc["3 classes x 3 places", "margin"])  # no baseline: the margin is not judged
    kept = gaps.drop(["alignment 0.95 (Waterbirds')", "3 classes x 3 places"]).reset_index()
    assert study.margin_sentence(kept) == (
        "The method's worst-group margin over the baseline is at least 0.15 in every setting."
    )


def test_one_seed_robustness_rows_are_read_against_the_default_studys_seed_spread(monkeypatch):
    results = _collect(monkeypatch)
    assert study.seed_spread_sentence(results) == ""  # no seed counts: nothing claimed
    results["seeds"] = [3 if s == study.REFERENCE else 1 for s in results["setting"]]
    results.loc[results["model"] == "baseline_vit", "test.worst_group_acc_sd"] = 0.15
    assert "sd 0.010 (method) and 0.150 (baseline)" in study.seed_spread_sentence(results)
    results["seeds"] = 2
    assert study.seed_spread_sentence(results) == ""


@pytest.mark.parametrize("setting", study.SETTINGS, ids=lambda s: s.name)
def test_every_experiment_evaluates_the_splits_the_tables_read(setting):
    from hardmask.evaluation.tidy import BG_GAP_SPLIT, HEADLINE

    cfg = compose_config([*study.COMMON, *setting.overrides], conf_dir=REPO / "conf")
    needed = {split for _, split, _ in HEADLINE} - {BG_GAP_SPLIT} | set(BG_GAP_SPLIT.split("-"))
    assert needed <= set(cfg.evaluate.splits), cfg.evaluate.splits


def test_every_experiment_skips_the_intervention_sweep_and_stops_at_evaluate(monkeypatch):
    calls = []
    monkeypatch.setattr(study, "_dvc", lambda *args, capture=False: calls.append(args) or "")
    monkeypatch.setattr(study, "_wait_for_queue", lambda experiments, start: None)
    (k1,) = [s for s in study.SETTINGS if s.name == "k1"]
    study.run([k1])
    queued = [c for c in calls if c[:2] == ("exp", "run")]
    assert len(queued) == 1 and queued[0][-1] == "evaluate" and "study-k1" in queued[0]
    assert "evaluate.leave_one_part_out=false" in queued[0] and "model.num_parts=1" in queued[0]
    assert ("queue", "start", "-j", str(study.JOBS)) in calls and calls[0] == ("repro",)


def test_format_cell_says_what_is_missing():
    assert study.format_cell(None, None) == "–" and study.format_cell(0.5, float("nan")) == "0.500"
    assert study.format_cell(0.25, 0.05) == "0.250 ± 0.050"


def test_dvc_returns_when_the_command_exits_though_a_daemon_it_started_keeps_its_output(monkeypatch):
    # `dvc queue start` daemonises a worker that inherits stdout: the study must not wait for the queue there
    import os
    import signal
    import sys
    import time

    daemon = "import subprocess; print(subprocess.Popen(['sleep', '30']).pid)"
    monkeypatch.setattr(study, "_dvc_command", lambda: [sys.executable, "-c", daemon])
    start = time.perf_counter()
    pid = int(study._dvc("queue", "start", capture=True))
    elapsed = time.perf_counter() - start
    os.kill(pid, signal.SIGTERM)
    assert elapsed < 15  # not the daemon's 30 s


# `dvc queue status` as DVC 3 renders it (dvc.compare.TabularData), then its worker line
QUEUE_STATUS = """\
Task     Name              Created    Status
1a2b3c4  study-comparison  02:51 PM   Running
5d6e7f8  study-k1          02:51 PM   Success
9a8b7c6  study-k2          02:52 PM   Queued
0f1e2d3  study-k8          02:52 PM   Failed

Worker status: 1 active, 0 idle
"""


def test_the_progress_line_names_the_running_experiments_and_failures_end_the_wait(monkeypatch, caplog):
    assert study.queue_states(QUEUE_STATUS) == {
        "study-comparison": "Running",
        "study-k1": "Success",
        "study-k2": "Queued",
        "study-k8": "Failed",
    }
    requeued = QUEUE_STATUS + "7e6d5c4  study-k8          03:40 PM   Queued\n"  # after `make study` again
    assert study.queue_states(requeued)["study-k8"] == "Queued"
    # as seen in a real run: a task a worker has taken but not started is briefly missing from the status
    taken = "\n".join(line for line in QUEUE_STATUS.splitlines() if "study-k2" not in line)
    drained = QUEUE_STATUS.replace("Running", "Success").replace("Queued", "Success")
    answers = iter([QUEUE_STATUS, taken.replace("Running", "Success"), drained])
    monkeypatch.setattr(study, "_dvc", lambda *args, capture=False: next(answers))
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    names = ["study-comparison", "study-k1", "study-k2", "study-k8"]
    with caplog.at_level("INFO", logger="hardmask.study"), pytest.raises(HardmaskError, match="study-k8"):
        study._wait_for_queue(names, start=study.time.perf_counter())
    progress = [r.getMessage() for r in caplog.records]
    assert len(progress) == 3  # not done while study-k2 is missing
    assert "2 of 4 experiments done" in progress[0] and progress[0].endswith("running study-comparison")
    assert "3 of 4 experiments done" in progress[1] and "running" not in progress[1]
    assert "4 of 4 experiments done" in progress[2]


def test_a_queue_without_a_live_worker_ends_the_wait_with_what_to_do(monkeypatch, caplog):
    # what `dvc queue status` said after the worker was killed (SIGKILL) in a real queue: Running for ever
    dead = QUEUE_STATUS.replace("1 active, 0 idle", "0 active, 0 idle")
    assert study.queue_workers(dead) == 0 and study.queue_workers(QUEUE_STATUS) == 1
    assert study.queue_workers("No experiment tasks in the queue.") is None  # unknown: never a reason to stop
    answers = iter([dead, dead, QUEUE_STATUS, dead, dead, dead])
    clock = iter([0.0, 200.0, 250.0, 400.0, 600.0])  # a live worker in between starts the count again
    monkeypatch.setattr(study, "_dvc", lambda *args, capture=False: next(answers))
    monkeypatch.setattr(study.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    names = ["study-comparison", "study-k1", "study-k2"]
    with caplog.at_level("INFO", logger="hardmask.study"), pytest.raises(HardmaskError) as error:
        study._wait_for_queue(names, start=study.time.perf_counter())
    assert len(caplog.records) == 6  # polls: not before 300 s without a worker
    message = str(error.value)
    assert "study-comparison, study-k2 did not finish" in message
    assert "`dvc queue kill study-comparison`" in message and "make study" in message
