"""MLflow tracking: URI resolution, store setup, nested runs, params, tags, resume, rank gating."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hardmask.config import Config
from hardmask.tracking import (
    RunTracker,
    find_training_run,
    flatten_config,
    init_tracking,
    log_parent_metrics,
    resolve_tracking_uri,
)
from hardmask.tracking.mlflow import EXPERIMENT_KIND_TAG, PARENT_RUN_TAG

from ..conftest import REPO, make_tiny_config


@pytest.fixture
def cfg(tmp_path: Path, mlflow_uri: str) -> Config:
    return make_tiny_config(
        tmp_path,
        tracking={"uri": mlflow_uri, "experiment": "unit"},
        train={"variants": ["baseline_vit", "two_stage_hard"], "seeds": [0, 1]},
    )


def _runs(uri: str, experiment: str = "unit", kind: str | None = None) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    query = f"tags.kind = '{kind}'" if kind else ""
    return client.search_runs([exp.experiment_id], filter_string=query)


# ------------------------------------------------------------------------------------------------ helpers
def test_flatten_config_writes_leaves_as_strings_with_dotted_keys():
    nested = {"a": {"b": 1, "c": [1, 2], "d": {}, "e": None, "f": "x", "g": True, "h": 0.001}, "top": 2.5}
    assert flatten_config(nested) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "a.d": "{}",
        "a.e": "null",
        "a.f": "x",
        "a.g": "true",
        "a.h": "0.001",
        "top": "2.5",
    }


def test_flatten_config_of_the_real_config_keeps_every_leaf(cfg: Config):
    flat = flatten_config(cfg.dump())
    assert float(flat["optim.lr"]) == cfg.optim.lr  # the value of params.yaml, as text
    assert flat["model.backbone.kwargs.embed_dim"] == "32"
    assert flat["train.variants"] == '["baseline_vit", "two_stage_hard"]'
    assert flat["cluster.slurm.additional_parameters"] == "{}"
    assert not any(isinstance(v, dict) for v in flat.values())


def test_tracking_uri_env_wins_and_relative_sqlite_is_anchored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cfg = make_tiny_config(tmp_path, tracking={"uri": "sqlite:///sub/mlflow.db"})
    assert resolve_tracking_uri(cfg, root=tmp_path) == f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"
    absolute = make_tiny_config(tmp_path, tracking={"uri": "sqlite:////abs/m.db"})
    assert resolve_tracking_uri(absolute, root=tmp_path) == "sqlite:////abs/m.db"
    server = make_tiny_config(tmp_path, tracking={"uri": "http://127.0.0.1:5000"})
    assert resolve_tracking_uri(server) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from_env.db")
    assert resolve_tracking_uri(cfg, root=tmp_path) == f"sqlite:///{tmp_path / 'from_env.db'}"


def test_init_tracking_creates_experiment_and_one_parent_per_variant_once(cfg: Config, tmp_path: Path):
    import os

    uri = init_tracking(cfg)
    init_tracking(cfg)  # a second stage run reuses everything
    assert os.environ["MLFLOW_TRACKING_URI"] == uri
    parents = _runs(uri, kind="parent")
    assert sorted(r.data.tags["variant"] for r in parents) == ["baseline_vit", "two_stage_hard"]
    assert {r.info.status for r in parents} == {"FINISHED"}
    experiment = MlflowClient(uri).get_experiment_by_name("unit")
    assert experiment.artifact_location == str(tmp_path / "mlartifacts")  # beside the database
    # the MLflow 3 UI opens a model-development experiment on its runs, not on the GenAI overview
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_store_made_before_the_experiment_kind_gets_it(cfg: Config):
    uri = resolve_tracking_uri(cfg)
    client = MlflowClient(uri)
    client.create_experiment("unit")
    init_tracking(cfg)
    assert client.get_experiment_by_name("unit").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_queued_experiment_writes_to_the_projects_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str
):
    """DVC runs a queued experiment in a temporary copy and names the project in DVC_ROOT."""
    cfg = make_tiny_config(tmp_path, tracking={"uri": "sqlite:///mlflow.db"})
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(cfg) == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"


def test_parent_runs_are_separate_per_dvc_experiment(cfg: Config, monkeypatch: pytest.MonkeyPatch):
    uri = init_tracking(cfg)
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lamb")
    init_tracking(cfg)
    names = sorted(
        r.info.run_name for r in _runs(uri, kind="parent") if r.data.tags["variant"] == "baseline_vit"
    )
    assert names == ["baseline_vit", "baseline_vit [lucky-lamb]"]


# ------------------------------------------------------------------------------------------------ runs
def test_training_run_is_nested_tagged_and_logs_params_metrics_artifacts(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    uri = init_tracking(cfg)
    cfg.data_root.mkdir(parents=True)
    (cfg.data_root / "manifest.json").write_text(json.dumps({"fingerprint": "abc123"}))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.chdir(REPO)  # the git commit is read from the working directory, like in a DVC stage
    run_dir = tmp_path / "runs" / "two_stage_hard" / "seed1"
    (run_dir / "metrics.json").parent.mkdir(parents=True)
    (run_dir / "metrics.json").write_text("{}")

    tracker = RunTracker.for_training(cfg, variant="two_stage_hard", seed=1, run_key="k1")
    tracker.log_metrics({"train/loss": 0.75, "train/lr": 1e-3}, step=10)
    tracker.log_metrics({"train/loss": 0.5}, step=20)
    tracker.log_artifacts([run_dir / "metrics.json"])
    tracker.end()

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "two_stage_hard/seed1/train"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    parent = client.get_run(tags[PARENT_RUN_TAG])
    assert parent.data.tags["kind"] == "parent" and parent.data.tags["variant"] == "two_stage_hard"
    assert (tags["kind"], tags["variant"], tags["seed"]) == ("train", "two_stage_hard", "1")
    assert (tags["dvc_exp_name"], tags["slurm_job_id"], tags["slurm_array_job_id"]) == (
        "exp-1",
        "4242",
        "4240",
    )
    assert tags["slurm_array_task_id"] == "2" and tags["run_key"] == "k1"
    assert tags["dataset_fingerprint"] == "abc123"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert tags["git_commit"] == tags["mlflow.source.git.commit"] == (head or "unknown")
    # the whole config, and the run's own variant and training seed (base.seed is the data's seed)
    assert run.data.params == flatten_config({"variant": "two_stage_hard", "seed": 1, **cfg.dump()})
    assert run.data.params["seed"] == "1" and run.data.params["base.seed"] == str(cfg.base.seed)
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(10, 0.75), (20, 0.5)]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["metrics.json"]
    assert list(run_dir.iterdir()) == [run_dir / "metrics.json"]  # nothing of MLflow's in the run directory


def test_requeued_job_continues_the_same_run(cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    uri = init_tracking(cfg)
    first = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="k")
    first.log_metrics({"train/loss": 2.0}, step=1)  # then the job is killed: the run is never ended

    changed = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 0.5})})
    with caplog.at_level(logging.WARNING, logger="hardmask.tracking"):
        second = RunTracker.for_training(changed, variant="baseline_vit", seed=0, run_key="k", resume=True)
    second.log_metrics({"train/loss": 1.0}, step=2)
    second.end()

    assert second.run_id == first.run_id
    assert len(_runs(uri, kind="train")) == 1
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "train/loss")] == [1, 2]
    assert (
        float(client.get_run(first.run_id).data.params["optim.lr"]) == cfg.optim.lr != 0.5
    )  # MLflow params are immutable
    assert "optim.lr" in caplog.text


def test_a_fresh_start_or_an_unknown_key_starts_a_new_run(cfg: Config):
    uri = init_tracking(cfg)
    first = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="k")
    first.end()
    again = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="k")  # trained afresh
    other = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="other", resume=True)
    assert len({first.run_id, again.run_id, other.run_id}) == 3 and len(_runs(uri, kind="train")) == 3
    assert find_training_run(cfg, "k") == again.run_id  # the latest run of a key


def test_disabled_tracker_on_other_ranks_writes_nothing(cfg: Config, tmp_path: Path):
    uri = init_tracking(cfg)
    tracker = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="k", enabled=False)
    tracker.log_params({"a": 1})
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    tracker.set_tags({"x": "y"})
    tracker.log_artifacts([tmp_path / "does-not-exist"])
    tracker.end()
    assert tracker.run_id is None and not tracker.enabled
    assert _runs(uri, kind="train") == []
    assert not (tmp_path / "run").exists()


def test_tracker_as_context_manager_marks_a_crash_failed_and_an_interrupt_killed(cfg: Config):
    uri = init_tracking(cfg)
    crashed = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="a")
    with pytest.raises(RuntimeError, match="crash"), crashed:
        raise RuntimeError("crash")
    stopped = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="b")
    with pytest.raises(KeyboardInterrupt), stopped:
        raise KeyboardInterrupt
    client = MlflowClient(uri)
    assert client.get_run(crashed.run_id).info.status == "FAILED"
    assert client.get_run(stopped.run_id).info.status == "KILLED"


def test_eval_run_links_to_its_training_run_under_the_same_parent(cfg: Config, tmp_path: Path):
    uri = init_tracking(cfg)
    train = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="k")
    train.end()
    evaluation = RunTracker.for_evaluation(cfg, variant="baseline_vit", seed=0, run_key="k")
    evaluation.end()
    client = MlflowClient(uri)
    eval_tags, train_tags = (
        client.get_run(evaluation.run_id).data.tags,
        client.get_run(train.run_id).data.tags,
    )
    assert eval_tags["kind"] == "eval" and eval_tags["train_run_id"] == train.run_id
    assert eval_tags[PARENT_RUN_TAG] == train_tags[PARENT_RUN_TAG]
    assert client.get_run(evaluation.run_id).info.run_name == "baseline_vit/seed0/eval"


def test_parents_carry_the_headline_and_the_report_is_a_top_level_run(cfg: Config):
    uri = init_tracking(cfg)
    log_parent_metrics(cfg, {"baseline_vit": {"test.worst_group_acc": 0.5, "test.worst_group_acc_sd": 0.1}})
    (parent,) = [r for r in _runs(uri, kind="parent") if r.data.tags["variant"] == "baseline_vit"]
    assert parent.data.metrics == {"test.worst_group_acc": 0.5, "test.worst_group_acc_sd": 0.1}
    with RunTracker.for_report(cfg):
        pass
    (report,) = _runs(uri, kind="report")
    assert report.info.run_name == "report" and PARENT_RUN_TAG not in report.data.tags
    assert report.info.status == "FINISHED"
    assert not [r for r in _runs(uri, kind="parent") if r.data.tags["variant"] == "report"]


def test_bad_inputs_name_what_is_wrong(cfg: Config, tmp_path: Path):
    init_tracking(cfg)
    tracker = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="k")
    with pytest.raises(TypeError, match=r"metric 'train/acc': expected a number, got str 'high'"):
        tracker.log_metrics({"train/acc": "high"}, step=1)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        tracker.log_artifacts([tmp_path / "missing.csv"])


def test_importing_tracking_and_cluster_does_not_import_mlflow():
    code = "import sys, hardmask.tracking, hardmask.cluster; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_system_metrics_monitor_runs_with_the_tracker_and_stops_at_the_end(tmp_path: Path, mlflow_uri: str):
    cfg = make_tiny_config(tmp_path, tracking={"uri": mlflow_uri, "log_system_metrics": True})
    init_tracking(cfg)

    def monitors() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]

    tracker = RunTracker.for_training(cfg, variant="baseline_vit", seed=0, run_key="k")
    assert len(monitors()) == 1  # sampling in the background
    tracker.end()
    assert monitors() == []
    assert MlflowClient(mlflow_uri).get_run(tracker.run_id).info.status == "FINISHED"


def test_a_job_that_loses_the_race_to_create_the_experiment_uses_the_winners(tmp_path: Path):
    # seen in CI: two training jobs started together on a fresh store both looked the experiment up, found
    # nothing, and the second create_experiment failed on the unique name
    from hardmask.tracking.mlflow import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    winner = ensure_experiment(MlflowClient(uri), "race", uri)

    class LateClient(MlflowClient):  # its lookup ran before the winner's create
        looked_up = False

        def get_experiment_by_name(self, name):
            if not self.looked_up:
                self.looked_up = True
                return None
            return super().get_experiment_by_name(name)

    assert ensure_experiment(LateClient(uri), "race", uri) == winner
    assert len(MlflowClient(uri).search_experiments(filter_string="name = 'race'")) == 1
