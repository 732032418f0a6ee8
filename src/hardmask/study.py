"""The paper's comparison and ablation tables and a robustness grid on the built-in benchmark: ``make study``.

Every row is a DVC experiment of the real pipeline, queued with ``dvc exp run --queue -n study-<name> -S ...``
and run by ``dvc queue start``: DVC caches each one's runs and reports (``dvc exp apply study-<name>`` brings
one back), and MLflow files its runs under the experiment's name. Runs that a setting shares with the default
study (same training config) are not trained again: the baseline's run directories travel with the experiment
and are picked up as finished. ``python -m hardmask.study report`` then reads every experiment's headline
metrics (``dvc.api.exp_show``) and writes one table per question to ``<reports_dir>/study.md`` and
``study.html``: mean ± sd over seeds of worst-group and average accuracy, BG-gap and fg IoU, with the default
study's rows as the reference.

    python -m hardmask.study run      # the default study (dvc repro), every missing setting, the report
    python -m hardmask.study report    # the tables from the experiments that exist
"""

from __future__ import annotations

import argparse
import html
import logging
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hardmask.config import CONF_DIR, compose_config, load_config
from hardmask.console import configure_logging, duration
from hardmask.errors import HardmaskError, reported_errors
from hardmask.models import VARIANTS

log = logging.getLogger("hardmask.study")

PREFIX = "study-"
REFERENCE = "default study"
COMPARED = ["baseline_vit", "two_stage_hard", "oracle_mask"]  # the default study's variants
NOT_COMPARED = [v for v in VARIANTS if v not in COMPARED]


@dataclass(frozen=True)
class Setting:
    """One DVC experiment of the study: the question it answers, its row label and its Hydra overrides."""

    name: str  # the experiment is named study-<name>
    question: str
    label: str
    overrides: tuple[str, ...]

    @property
    def experiment(self) -> str:
        return PREFIX + self.name


def _variants(*names: str) -> str:
    return f"train.variants=[{','.join(names)}]"


QUESTIONS = {
    "comparison": "The method against the baselines and the ground-truth-mask bounds",
    "parts": "Ablation: the number of parts K",
    "stage2": "Ablation: training stage 2, part dropout of the stage-2 mask, the equivariance pass",
    "stage1": "Stage 1's own classifier: position-free (the default recipe) or with a position embedding",
    "robustness": "Robustness: the built-in benchmark under other settings (not used to choose the recipe)",
}
# The default study's rows each question is read against; "comparison" also lends stage1_only to "stage1".
REFERENCE_MODELS = {
    "comparison": COMPARED,
    "parts": ["two_stage_hard"],
    "stage2": ["two_stage_hard"],
    "stage1": ["two_stage_hard"],
    "robustness": COMPARED,
}
METHOD_ONLY = _variants("two_stage_hard")
# Fewer seeds than the comparison's three, to fit the hour on 2 cores (each row's "seeds" column says so): the
# ablations and the stage-1 check two, the robustness grid one (breadth over depth: its margins are read
# against the default study's seed spread).
TWO_SEEDS = "train.seeds=[0,1]"
ONE_SEED = "train.seeds=[0]"
ABLATION = (METHOD_ONLY, TWO_SEEDS)
# What every study experiment shares: the tables read the unmodified val and test splits and the BG-gap's
# two, so the intervention sweep (a third of a two-stage evaluation) and the only_fg/only_bg splits are left
# out; the default study's report has them.
COMMON = (
    "evaluate.threshold_quantiles=[]",
    "evaluate.leave_one_part_out=false",
    "evaluate.splits=[val,test,mixed_same,mixed_rand]",
)
# Experiments at a time (`dvc queue start -j`): a second one overlaps DVC's own work per experiment (set-up,
# hashing, collecting: about a minute each) and fills the core that an odd job out (a third seed) leaves idle.
JOBS = 2
SETTINGS: tuple[Setting, ...] = (
    # Every variant of the registry, in its order, but the default study's: those are the reference rows
    # (`dvc repro`), and training them again here would only repeat them.
    Setting("comparison", "comparison", "the other variants", (_variants(*NOT_COMPARED),)),
    Setting("k1", "parts", "K = 1", ("model.num_parts=1", *ABLATION)),
    Setting("k2", "parts", "K = 2", ("model.num_parts=2", *ABLATION)),
    Setting("k8", "parts", "K = 8", ("model.num_parts=8", *ABLATION)),
    Setting("frozen-stage2", "stage2", "stage 2 frozen", ("model.freeze_stage2=true", *ABLATION)),
    Setting("dropout0", "stage2", "stage-2 part dropout 0", ("model.part_dropout_stage2=0.0", *ABLATION)),
    Setting("equivariance", "stage2", "with the equivariance pass", ("loss.equivariance=1.0", *ABLATION)),
    Setting(
        "stage1-positions",
        "stage1",
        "stage 1 with a position embedding",
        ("model.stage1_position_free=false", _variants("stage1_only", "two_stage_hard"), TWO_SEEDS),
    ),
    Setting("data-seed1", "robustness", "another data seed", ("base.seed=1", ONE_SEED)),
    Setting(
        "align095",
        "robustness",
        "alignment 0.95 (Waterbirds')",
        ("data.synthetic.spurious_prob=0.95", ONE_SEED),
    ),
    Setting(
        "small-objects",
        "robustness",
        "smaller objects (0.5-0.65)",
        ("data.synthetic.object_scale=[0.5,0.65]", ONE_SEED),
    ),
    Setting(  # the same objects in pixels of a patch as at the default size: a finer grid for the mask
        "small-objects-96px",
        "robustness",
        "smaller objects, 96 px images",
        (
            "data.synthetic.object_scale=[0.5,0.65]",
            "data.synthetic.image_size=96",
            "data.image_size=96",
            _variants("two_stage_hard", "oracle_mask"),
            ONE_SEED,
        ),
    ),
    Setting(
        "3x3",
        "robustness",
        "3 classes x 3 places",
        ("data.synthetic.n_classes=3", "data.synthetic.n_places=3", ONE_SEED),
    ),
)
COLUMNS = (  # (title, key in a headline metrics file, has an sd)
    ("worst-group acc", "test.worst_group_acc", True),
    ("avg acc", "test.avg_acc", True),
    ("BG-gap", "bg_gap", True),
    ("fg IoU", "test.fg_iou", True),
    ("val worst-group", "val.worst_group_acc", False),
    ("seeds", "seeds", False),
)
METHOD_VS = ("two_stage_hard", "baseline_vit")  # the margin: the first model's minus the second's
MARGIN = 0.15  # the method's worst-group margin over the baseline that the robustness section checks
NEAR_CHANCE = 0.1  # a test average accuracy less than this above chance: the task is not learned


# ------------------------------------------------------------------------------------------------ running
def _dvc_command() -> list[str]:
    dvc = Path(sys.executable).parent / "dvc"
    return [str(dvc if dvc.exists() else "dvc")]


def _dvc(*args: str, capture: bool = False) -> str:
    """Run ``dvc *args``; with ``capture``, return its standard output.

    Output is captured in files, not pipes: ``dvc queue start`` leaves a daemonised worker behind that
    inherits the output streams, and reading a pipe to its end would wait for that worker, i.e. for the whole
    queue.
    """
    command = [*_dvc_command(), *args]
    if not capture:
        proc = subprocess.run(command)
        out = err = ""
    else:
        with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
            proc = subprocess.run(command, stdout=out_file, stderr=err_file, text=True)
            out_file.seek(0)
            err_file.seek(0)
            out, err = out_file.read(), err_file.read()
    if proc.returncode != 0:
        detail = f": {err.strip()[-2000:]}" if capture else " (see its output above)"
        raise HardmaskError(f"`dvc {' '.join(args)}` failed{detail}")
    return out


def existing_experiments() -> set[str]:
    return set(_dvc("exp", "list", "--name-only", capture=True).split())


def run(settings: Sequence[Setting], jobs: int = JOBS) -> float:
    """The default study, then every setting not run yet, through DVC's queue; returns the wall seconds."""
    start = time.perf_counter()
    log.info("the default study (the reference rows): dvc repro")
    _dvc("repro")
    done = existing_experiments()
    todo = [s for s in settings if s.experiment not in done]
    for setting in settings:
        if setting.experiment in done:
            log.info("%s: exists (dvc exp remove %s to run it again)", setting.experiment, setting.experiment)
    for setting in todo:
        args = [arg for override in (*COMMON, *setting.overrides) for arg in ("-S", override)]
        # up to evaluate: the tables read the metrics, and `dvc exp apply` + `dvc repro` makes the report
        _dvc("exp", "run", "--queue", "-n", setting.experiment, *args, "evaluate", capture=True)
        log.info("queued %s: %s", setting.experiment, " ".join(setting.overrides))
    if todo:
        _dvc("queue", "start", "-j", str(jobs), capture=True)
        _wait_for_queue([s.experiment for s in todo], start)
    return time.perf_counter() - start


# A name queued again after it failed is listed twice; its newer state ranks higher.
QUEUE_STATES = ("Failed", "Success", "Queued", "Running")
# Seconds without a live queue worker (several polls: one can miss a busy worker's answer) before the study
# stops waiting for unfinished experiments.
WORKERLESS_S = 300.0


def queue_states(status: str) -> dict[str, str]:
    """``{experiment: Queued | Running | Success | Failed}`` from the table ``dvc queue status`` prints
    (columns Task, Name, Created, Status; every study experiment has a name)."""
    states: dict[str, str] = {}
    for line in status.splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in QUEUE_STATES:
            earlier = states.get(words[1], QUEUE_STATES[0])
            states[words[1]] = max(earlier, words[-1], key=QUEUE_STATES.index)
    return states


def queue_workers(status: str) -> int | None:
    """How many queue workers are alive (active or idle), from the last line of ``dvc queue status``."""
    found = re.search(r"Worker status: (\d+) active, (\d+) idle", status)
    return None if found is None else int(found[1]) + int(found[2])


def _wait_for_queue(experiments: Sequence[str], start: float, poll_s: float = 30.0) -> None:
    """Until every one of ``experiments`` has succeeded or failed. An experiment the status does not list is
    not done: ``dvc queue status`` briefly leaves out a task that a worker has taken but not yet started. A
    worker that dies (killed, out of memory) leaves its experiment ``Running`` for ever, so no worker for
    :data:`WORKERLESS_S` with experiments unfinished ends the wait with what to do."""
    workerless_since = None
    while True:
        status = _dvc("queue", "status", capture=True)
        states = queue_states(status)
        mine = {name: states.get(name) for name in experiments}
        ended = [name for name, state in mine.items() if state in ("Success", "Failed")]
        running = [name for name, state in mine.items() if state == "Running"]
        log.info(
            "study: %d of %d experiments done, %s elapsed%s",
            len(ended),
            len(mine),
            duration(time.perf_counter() - start),
            f"; running {', '.join(running)}" if running else "",
        )
        if len(ended) == len(mine):
            break
        if queue_workers(status) != 0:
            workerless_since = None
        elif workerless_since is None:
            workerless_since = time.monotonic()
        elif time.monotonic() - workerless_since >= WORKERLESS_S:
            unfinished = ", ".join(name for name in mine if name not in ended)
            kill = " ".join(running) or "<name>"
            raise HardmaskError(
                f"no DVC queue worker has been alive for {duration(WORKERLESS_S)}, but {unfinished} did not "
                f"finish: a worker died (killed, out of memory?). `dvc queue kill {kill}` and "
                "`dvc queue remove --queued`, then `make study` runs the missing experiments again (finished "
                "ones are kept)"
            )
        time.sleep(poll_s)
    if failed := [name for name, state in mine.items() if state == "Failed"]:
        raise HardmaskError(f"study experiments failed: {failed}; `dvc queue logs <name>` shows why")


# ------------------------------------------------------------------------------------------------ tables
def collect(settings: Sequence[Setting], conf_dir: str | Path = CONF_DIR) -> pd.DataFrame:
    """One row per (setting, model) with the headline columns and the chance accuracy of the setting's
    benchmark: the workspace (the default study) and every study experiment that exists, from
    ``dvc.api.exp_show``; in the order of :data:`SETTINGS` and of the variant registry."""
    import dvc.api

    wanted = {s.experiment: (i, s) for i, s in enumerate(settings)}
    reference = (-1, Setting("", "", REFERENCE, ()))  # the workspace: no question of its own
    rows = []
    for exp in dvc.api.exp_show():
        if exp.get("rev") == "workspace":
            position, setting = reference
        elif (exp.get("Experiment") or "") in wanted:
            position, setting = wanted[exp["Experiment"]]
        else:
            continue
        # what `dvc exp run -S` composed for it: the number of classes sets the chance level
        chance = 1 / compose_config(list(setting.overrides), conf_dir).data.synthetic.n_classes
        for model, values in _models_of(exp).items():
            rank = list(VARIANTS).index(model) if model in VARIANTS else len(VARIANTS)
            rows.append(
                {"setting": setting.label, "question": setting.question or None, "model": model}
                | {"chance": chance, **values, "_order": (position, rank)}
            )
    results = pd.DataFrame(rows)
    if results.empty:
        return results
    return results.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def _models_of(exp: dict) -> dict[str, dict[str, float]]:
    """``{model: {headline key: value}}`` from the flat columns ``reports/metrics/<model>.json:<key>``."""
    models: dict[str, dict[str, float]] = {}
    for column, value in exp.items():
        path, sep, key = column.rpartition(":")
        if not sep or "/metrics/" not in path or not path.endswith(".json"):
            continue
        number = pd.to_numeric(value, errors="coerce")  # dvc.api.exp_show gives a JSON null as 'None'
        if pd.notna(number):
            models.setdefault(Path(path).stem, {})[key] = float(number)
    return models


def format_cell(mean: float | None, sd: float | None) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.3f}" if sd is None or pd.isna(sd) else f"{mean:.3f} ± {sd:.3f}"


def question_rows(results: pd.DataFrame, question: str) -> pd.DataFrame:
    """The rows of one question: the default study's reference models first (for ``stage1`` also the
    comparison's position-free ``stage1_only``), then the question's own settings."""
    reference = results[
        (results["setting"] == REFERENCE) & results["model"].isin(REFERENCE_MODELS.get(question, COMPARED))
    ]
    lent = results.iloc[0:0]
    if question == "stage1":
        lent = results[(results["question"] == "comparison") & (results["model"] == "stage1_only")]
    return pd.concat([reference, lent, results[results["question"] == question]], ignore_index=True)


def question_table(results: pd.DataFrame, question: str) -> pd.DataFrame:
    """:func:`question_rows`, display-formatted (mean ± sd)."""
    rows = question_rows(results, question)
    columns = {
        title: [
            str(int(row[key]))
            if key == "seeds" and pd.notna(row.get(key))
            else format_cell(row.get(key), row.get(f"{key}_sd") if sd else None)
            for _, row in rows.iterrows()
        ]
        for title, key, sd in COLUMNS
    }
    return pd.DataFrame({"setting": rows["setting"], "model": rows["model"], **columns}).set_index(
        ["setting", "model"]
    )


def margins(results: pd.DataFrame) -> pd.DataFrame:
    """Per setting of the robustness question (and the default study): the method's test worst-group
    accuracy minus the baseline's (``margin``), the oracle's minus the method's (``oracle_gap``), and how far
    the method's average accuracy is above chance (``above_chance``)."""
    rows = []
    for setting, group in question_rows(results, "robustness").groupby("setting", sort=False):
        hard, base, oracle = (_value(group, m, "test.worst_group_acc") for m in (*METHOD_VS, "oracle_mask"))
        hard_avg = _value(group, METHOD_VS[0], "test.avg_acc")
        rows.append(
            {
                "setting": setting,
                "margin": None if hard is None or base is None else hard - base,
                "oracle_gap": None if hard is None or oracle is None else oracle - hard,
                "above_chance": None if hard_avg is None else hard_avg - float(group["chance"].iloc[0]),
            }
        )
    return pd.DataFrame(rows, columns=["setting", "margin", "oracle_gap", "above_chance"])


def _value(rows: pd.DataFrame, model: str, key: str) -> float | None:
    """``key`` of ``model``'s row in ``rows``, or None where the model or the value is missing."""
    values = rows.loc[rows["model"] == model, key] if key in rows else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) and pd.notna(values.iloc[0]) else None


def margin_sentence(table: pd.DataFrame) -> str:
    """Where the margin over the baseline falls under :data:`MARGIN`, and where the method does not learn the
    task at all (settings without a baseline are not judged on the margin)."""
    judged = table.dropna(subset=["margin"])
    below = judged[judged["margin"] < MARGIN]["setting"].tolist()
    unlearned = table.loc[pd.to_numeric(table["above_chance"]) < NEAR_CHANCE, "setting"].tolist()
    if judged.empty:
        sentence = "No setting has both the method and the baseline yet."
    elif not below:
        sentence = f"The method's worst-group margin over the baseline is at least {MARGIN} in every setting."
    else:
        sentence = f"The margin over the baseline falls under {MARGIN} in: {', '.join(below)}."
    if unlearned:
        sentence += (
            f" The method's average accuracy is within {NEAR_CHANCE} of chance, i.e. it has not learned the"
            f" task and its margin is no success, in: {', '.join(unlearned)}."
        )
    return sentence


def seed_spread_sentence(results: pd.DataFrame) -> str:
    """How uncertain a one-seed robustness margin is: the default study's seed sd of the two models' test
    worst-group accuracy (empty where no robustness row has a single seed, or the reference has no sd)."""
    rows = question_rows(results, "robustness")
    if "seeds" not in rows:
        return ""
    single = rows[(rows["question"] == "robustness") & (pd.to_numeric(rows["seeds"]) == 1)]
    sds = [_value(rows[rows["setting"] == REFERENCE], m, "test.worst_group_acc_sd") for m in METHOD_VS]
    if single.empty or None in sds:
        return ""
    return (
        "Each robustness setting is one training seed; in the default study the test worst-group "
        f"accuracy varies across seeds with sd {sds[0]:.3f} (method) and {sds[1]:.3f} (baseline), so a "
        "one-seed margin is uncertain by about as much."
    )


def write_report(results: pd.DataFrame, reports_dir: Path, wall_s: float | None) -> Path:
    """``study.md`` and ``study.html``: one table per question (mean ± sd over seeds)."""
    from hardmask.io import atomic_write_text
    from hardmask.report.tables import to_markdown

    parts_md, parts_html = ["# hardmask study: comparison, ablations, robustness"], []
    intro = (
        "Test split of the built-in benchmark; mean ± sample sd over the training seeds (the seeds column: "
        "3 for the default study and the comparison; 2 for the ablations and the stage-1 check and 1 for the "
        "robustness grid, to fit the hour on 2 cores); the rows of the default study are the reference. "
        "group_dro is the one row trained with the training group labels; oracle_mask and late_mask_oracle "
        "read the ground-truth foreground mask."
    )
    if wall_s is not None:
        intro += f" The whole study took {duration(wall_s)} on this machine."
    parts_md.append(intro)
    parts_html.append(f"<h1>{html.escape(parts_md[0][2:])}</h1><p>{html.escape(intro)}</p>")
    for question, title in QUESTIONS.items():
        table = question_table(results, question)
        if table.empty:
            continue
        parts_md += [f"## {title}", to_markdown(table)]
        parts_html += [f"<h2>{html.escape(title)}</h2>", table.to_html(border=0)]
        if question == "robustness":
            gaps = margins(results)
            shown = gaps.set_index("setting").map(lambda v: "–" if pd.isna(v) else f"{v:+.3f}")
            sentence = (
                "Test worst-group accuracy: the method minus the baseline (margin), the oracle minus the "
                "method (oracle gap); the method's average accuracy minus chance (above chance). "
                + margin_sentence(gaps)
            )
            if spread := seed_spread_sentence(results):
                sentence += " " + spread
            parts_md += [sentence, to_markdown(shown)]
            parts_html += [f"<p>{html.escape(sentence)}</p>", shown.to_html(border=0)]
    markdown = reports_dir / "study.md"
    atomic_write_text(markdown, "\n\n".join(parts_md) + "\n")
    page = "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>hardmask study</title></head><body>"
    atomic_write_text(reports_dir / "study.html", page + "\n".join(parts_html) + "</body></html>\n")
    return markdown


# ------------------------------------------------------------------------------------------------ command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardmask.study", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "report", "list"))
    parser.add_argument("--only", default="", help=f"comma-separated questions: {', '.join(QUESTIONS)}")
    parser.add_argument("--jobs", type=int, default=JOBS, help="experiments at a time (dvc queue start -j)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    configure_logging()
    only = {q.strip() for q in args.only.split(",") if q.strip()}
    settings = [s for s in SETTINGS if not only or s.question in only]
    with reported_errors("interrupted: finished experiments are kept; `make study` runs the missing ones"):
        if args.command == "list":
            for s in settings:
                print(f"{s.experiment:24s} {s.question:11s} {' '.join(s.overrides)}")
            return 0
        wall_s = run(settings, args.jobs) if args.command == "run" else None
        cfg = load_config(args.params)
        path = write_report(collect(settings), Path(cfg.base.reports_dir), wall_s)
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
