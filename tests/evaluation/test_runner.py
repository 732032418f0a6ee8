"""evaluate_run end to end on a fake dataset and a fake two-stage model whose every output is known.

The fake model predicts ``label`` except on images carrying a "shortcut" flag, where it predicts the other
class — unless part 1 (the part that 'reads the background') is removed. Its part assignment on the 2x2 patch
grid is always (part 0, part 1, background, background); the ground-truth foreground is the left half.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from hardmask import layout
from hardmask.checkpoint import training_key
from hardmask.data.common import DataError
from hardmask.data.groups import GroupSpec
from hardmask.evaluation import checkpoints, pool, runner
from hardmask.evaluation.checkpoints import EvaluationError
from hardmask.evaluation.overlays import OverlaySamples
from hardmask.evaluation.tidy import BG_GAP_SPLIT, EVAL_COLUMNS, summarize
from hardmask.models.outputs import ModelOutput
from hardmask.tracking import RunTracker

from ..conftest import make_tiny_config

SPEC = GroupSpec(("round", "long"), ("land", "water"))
SIZE, GRID, K = 8, (2, 2), 2
ASSIGNMENT = torch.tensor([0, 1, 2, 2])  # patch -> part (2 = background)
GT_PATCHES = np.array([True, False, True, False])  # left half of the image
# (label, place, shortcut flag) per image; group id = 2 * label + place
SPLITS = {
    "train": [(0, 0, 0)] * 3 + [(0, 1, 0), (1, 0, 0)] + [(1, 1, 0)] * 3,
    "val": [(0, 0, 0), (0, 0, 0), (0, 1, 1), (0, 1, 0), (1, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0)],
    "test": [(0, 0, 0), (0, 0, 0), (0, 1, 1), (0, 1, 0), (1, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0)],
    "mixed_same": [(0, 0, 0), (0, 0, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0)],
    "mixed_rand": [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0), (1, 0, 1), (1, 0, 0), (1, 1, 0), (1, 1, 0)],
}


class FakeDataset(torch.utils.data.Dataset):
    def __init__(self, split: str) -> None:
        rows = np.array(SPLITS[split])
        self.labels, self.places, self.flags = rows[:, 0], rows[:, 1], rows[:, 2]
        self.group_spec = SPEC
        self.groups = np.asarray(SPEC.group_of(self.labels, self.places))
        self.num_classes = 2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = torch.zeros(3, SIZE, SIZE)
        image[0] = float(self.labels[i])
        image[1, 0, 0] = float(self.flags[i])
        fg = torch.zeros(SIZE, SIZE)
        fg[:, : SIZE // 2] = 1
        return {
            "image": image,
            "label": torch.tensor(self.labels[i]),
            "place": torch.tensor(self.places[i]),
            "group": torch.tensor(self.groups[i]),
            "index": torch.tensor(i),
            "fg_mask": fg,
            "parts": fg.long(),
            "has_mask": torch.tensor(True),
        }


def fake_build_dataset(cfg, split, train, mean=None, std=None):
    if split not in SPLITS:
        raise DataError(f"metadata.csv: no rows for split '{split}'")
    return FakeDataset(split)


class FakeTwoStage(torch.nn.Module):
    grid_size = GRID

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))  # last.pt sets it to always predict class 0
        self.calls: list[dict] = []

    def forward(self, images, fg_mask=None, interventions=None) -> ModelOutput:
        removed = tuple(interventions.part_ids_to_remove) if interventions is not None else ()
        self.calls.append({"training": self.training, "grad": torch.is_grad_enabled(), "fg_mask": fg_mask})
        batch = images.shape[0]
        labels = images[:, 0, 0, 0].long()
        shortcut = (images[:, 1, 0, 0] > 0.5) & (1 not in removed)
        preds = torch.where(shortcut, 1 - labels, labels)
        logits = 5.0 * torch.nn.functional.one_hot(preds, 2).float() + self.bias
        assignment = ASSIGNMENT.clone()
        for part in removed:
            assignment[assignment == part] = K
        part_logits = 10.0 * torch.nn.functional.one_hot(assignment, K + 1).T.float()  # [K+1, 4]
        part_logits = part_logits.reshape(1, K + 1, *GRID).expand(batch, -1, -1, -1)
        part_sims = torch.arange(1.0, K + 2).reshape(1, K + 1, 1, 1).expand(batch, -1, *GRID)  # sim_k = k + 1
        return ModelOutput(
            logits=logits,
            part_maps=part_logits.softmax(1),
            part_logits=part_logits,
            part_sims=part_sims,
            hard_mask=(assignment < K).expand(batch, -1),
        )


@pytest.fixture
def fakes(monkeypatch) -> dict:
    built: list[FakeTwoStage] = []

    def build_model(variant, model_cfg, num_classes, image_size):
        assert num_classes == 2 and not model_cfg.stochastic_eval
        built.append(FakeTwoStage())
        return built[-1]

    monkeypatch.setattr(runner, "build_dataset", fake_build_dataset)
    monkeypatch.setattr(checkpoints, "build_model", build_model)
    logged: list[tuple] = []
    monkeypatch.setattr(
        runner, "log_evaluation", lambda cfg, run, run_dir, frame: logged.append((run, frame))
    )
    return {"models": built, "logged": logged}


def _write_run(cfg, variant: str = "two_stage_hard", seed: int = 0) -> Path:
    run_dir = layout.run_dir(cfg, variant, seed)
    model = FakeTwoStage()
    common = {
        "variant": variant,
        "seed": seed,
        "config": cfg.dump(),
    }
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({**common, "model": model.state_dict()}, run_dir / "checkpoints" / "best.pt")
    last = {"bias": torch.tensor([10.0, 0.0])}  # always class 0: avg acc 0.5 on the balanced splits
    torch.save({**common, "model": last, "ema": None}, run_dir / "checkpoints" / "last.pt")
    return run_dir


def _value(df: pd.DataFrame, split: str, metric: str, intervention: str = "none", checkpoint: str = "best"):
    sel = df.query("split == @split and metric == @metric and intervention == @intervention")
    sel = sel[sel["checkpoint"] == checkpoint]
    assert len(sel) == 1, f"expected one row for {split}/{intervention}/{metric}, got {len(sel)}"
    return sel["value"].iloc[0]


def test_evaluate_run_metrics_interventions_and_files(tmp_path, fakes):
    cfg = make_tiny_config(tmp_path)
    run_dir = _write_run(cfg)
    df = runner.evaluate_run(cfg, run_dir)

    assert list(df.columns) == list(EVAL_COLUMNS)
    assert set(df["split"]) == {"val", "test", "mixed_same", "mixed_rand", BG_GAP_SPLIT}  # no only_fg/only_bg
    # no intervention: one shortcut image of 8 (group round_on_water) is wrong
    assert _value(df, "test", "avg_acc") == pytest.approx(7 / 8)
    assert _value(df, "test", "worst_group_acc") == pytest.approx(0.5)
    assert _value(df, "test", "group_acc/round_on_water") == pytest.approx(0.5)
    # train groups 3/1/1/3: minority = {1, 2}; adjusted = (3 * 1 + 1 * 0.5 + 1 * 1 + 3 * 1) / 8
    assert _value(df, "test", "adj_avg_acc") == pytest.approx(7.5 / 8)
    assert _value(df, "test", "minority_class_acc") == pytest.approx(0.5)
    # mask (part0, part1) vs truth (patches 0, 2): TP 1, union 3 per image
    assert _value(df, "test", "fg_iou") == pytest.approx(1 / 3)
    assert _value(df, "test", "fg_fraction") == pytest.approx(0.5)
    gt, pred = np.tile([1, 0, 1, 0], 8), np.tile(ASSIGNMENT.numpy(), 8)
    assert _value(df, "test", "nmi") == pytest.approx(normalized_mutual_info_score(gt, pred))
    assert _value(df, "test", "ari") == pytest.approx(adjusted_rand_score(gt, pred))
    # removing part 1 removes the shortcut and the wrong mask patch
    assert _value(df, "test", "worst_group_acc", "drop_part_1") == pytest.approx(1.0)
    assert _value(df, "test", "fg_iou", "drop_part_1") == pytest.approx(0.5)
    assert _value(df, "test", "worst_group_acc", "drop_part_0") == pytest.approx(0.5)
    # thresholds from the training split: part k's matched similarities are all k + 1
    assert _value(df, "test", "avg_acc", "threshold_q0.05") == pytest.approx(7 / 8)
    # drop_part_1 wins on validation and is what "selected" reports on every split
    for split in ("val", "test", "mixed_rand"):
        assert _value(df, split, "avg_acc", "selected") == pytest.approx(1.0)
    # BG-gap = acc(mixed_same) - acc(mixed_rand) = 1 - 6/8 without intervention, 0 with the selected one
    assert _value(df, BG_GAP_SPLIT, "bg_gap") == pytest.approx(0.25)
    assert _value(df, BG_GAP_SPLIT, "bg_gap", "selected") == pytest.approx(0.0)
    # OOD splits are not swept: none and selected only
    assert set(df.query("split == 'mixed_rand'")["intervention"]) == {"none", "selected", "drop_part_1"}
    assert _value(df, "test", "avg_acc", checkpoint="last") == pytest.approx(0.5)

    eval_dir = layout.eval_files(cfg, "two_stage_hard", 0).root
    assert not (run_dir / "eval").exists()  # the training run (a DVC output of train) is left untouched
    pd.testing.assert_frame_equal(pd.read_csv(eval_dir / "metrics.csv"), df, check_dtype=False)
    selection = json.loads((eval_dir / "selection.json").read_text())
    assert selection["selected"] == "drop_part_1"
    assert selection["thresholds"] == {"0.01": [1.0, 2.0], "0.05": [1.0, 2.0], "0.1": [1.0, 2.0]}
    groups = pd.read_csv(eval_dir / "groups.csv")
    row = groups.query("split == 'test' and intervention == 'none' and name == 'round_on_water'").iloc[0]
    assert (row["n"], row["correct"]) == (2, 1)
    predictions = pd.read_csv(eval_dir / "predictions.csv")
    test_none = predictions.query("split == 'test' and intervention == 'none'")
    assert test_none["index"].tolist() == list(range(8)) and test_none["correct"].sum() == 7
    assert set(predictions.columns) >= {"index", "label", "pred", "group", "fg_fraction"}
    overlays = OverlaySamples.load(eval_dir / "overlays.npz")
    assert overlays.images.shape == (8, SIZE, SIZE, 3) and overlays.part_maps.shape == (8, K + 1, *GRID)
    assert overlays.hard_masks.shape == (8, *GRID) and overlays.group_names == SPEC.names
    assert (overlays.preds != overlays.labels).sum() == 1  # the failure is shown

    calls = [c for m in fakes["models"] for c in m.calls]
    assert calls and not any(c["training"] or c["grad"] for c in calls)  # eval mode, no autograd
    assert all(c["fg_mask"] is None for c in calls)  # only the oracle reads the ground truth
    ((run, logged_frame),) = fakes["logged"]
    assert run.run_key == training_key(cfg.dump(), "two_stage_hard", 0) and logged_frame is df


def test_a_last_checkpoint_equal_to_the_best_is_not_evaluated_again(tmp_path, fakes):
    cfg = make_tiny_config(tmp_path)
    run_dir = _write_run(cfg)
    ckpt_dir = run_dir / "checkpoints"
    best = torch.load(ckpt_dir / "best.pt", weights_only=True)
    torch.save({**best, "ema": None}, ckpt_dir / "last.pt")  # training ended on its best epoch
    df = runner.evaluate_run(cfg, run_dir)

    best_model, last_model = fakes["models"]
    assert best_model.calls and not last_model.calls
    rows = df.query("split in ['val', 'test'] and intervention == 'none'")
    pd.testing.assert_frame_equal(
        rows[rows["checkpoint"] == "last"].drop(columns="checkpoint").reset_index(drop=True),
        rows[rows["checkpoint"] == "best"].drop(columns="checkpoint").reset_index(drop=True),
    )
    assert _value(df, "test", "avg_acc", checkpoint="last") == pytest.approx(7 / 8)


def test_evaluation_is_deterministic(tmp_path, fakes):
    cfg = make_tiny_config(tmp_path)
    run_dir = _write_run(cfg)
    first = runner.evaluate_run(cfg, run_dir)
    second = runner.evaluate_run(cfg, run_dir)
    pd.testing.assert_frame_equal(first, second)


def test_models_without_parts_get_no_interventions_and_the_oracle_reads_the_mask(tmp_path, fakes):
    cfg = make_tiny_config(tmp_path, evaluate={"checkpoint": "last"})
    df = runner.evaluate_run(cfg, _write_run(cfg, variant="oracle_mask"))
    assert set(df["intervention"]) == {"none"} and set(df["checkpoint"]) == {"last"}
    assert all(c["fg_mask"] is not None for c in fakes["models"][0].calls)


def test_evaluate_all_covers_every_variant_and_seed_and_summarizes(tmp_path, fakes):
    cfg = make_tiny_config(tmp_path, train={"variants": ["two_stage_hard", "baseline_vit"], "seeds": [0, 1]})
    for variant in cfg.train.variants:
        for seed in cfg.train.seeds:
            _write_run(cfg, variant, seed)
    df = pool.evaluate_all(cfg)
    assert set(zip(df["model"], df["seed"])) == {(v, s) for v in cfg.train.variants for s in cfg.train.seeds}
    summary = summarize(df)
    assert summary["two_stage_hard"]["test"]["worst_group_acc"] == {"mean": 0.5, "std": 0.0, "n": 2}
    assert (
        "test/drop_part_1" in summary["two_stage_hard"] and "test/drop_part_1" not in summary["baseline_vit"]
    )


def test_missing_run_and_bad_part_ids_are_named(tmp_path, fakes):
    cfg = make_tiny_config(tmp_path)
    with pytest.raises(EvaluationError, match=r"seed0/checkpoints/best.pt: checkpoint not found"):
        runner.evaluate_run(cfg, layout.run_dir(cfg, "two_stage_hard", 0))
    bad = make_tiny_config(tmp_path, evaluate={"remove_parts": [7]})
    with pytest.raises(ValueError, match=r"evaluate.remove_parts: part ids \[7\] do not exist"):
        runner.evaluate_run(bad, _write_run(bad))
    assert not layout.eval_files(bad, "two_stage_hard", 0).root.exists()  # nothing half-written


def test_a_checkpoint_from_other_data_is_refused(tmp_path, fakes):
    cfg = make_tiny_config(tmp_path)
    run_dir = _write_run(cfg)
    other = make_tiny_config(tmp_path, data={"image_size": 64, "synthetic": {"image_size": 64}})
    with pytest.raises(EvaluationError, match="trained on synthetic at 32 px.*data.image_size=64"):
        runner.evaluate_run(other, run_dir)


def test_evaluation_is_logged_to_mlflow_linked_to_its_training_run(tmp_path, fakes, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.undo()  # the real log_evaluation, but keep the fake data and model
    monkeypatch.setattr(runner, "build_dataset", fake_build_dataset)
    monkeypatch.setattr(checkpoints, "build_model", lambda *a, **k: FakeTwoStage())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_tiny_config(tmp_path)
    run_dir = _write_run(cfg)
    with RunTracker.for_training(
        cfg, variant="two_stage_hard", seed=0, run_key=training_key(cfg.dump(), "two_stage_hard", 0)
    ) as trained:
        pass
    runner.evaluate_run(cfg, run_dir)

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id], "tags.kind = 'eval'"
    )
    assert run.data.tags["train_run_id"] == trained.run_id
    assert run.data.tags["checkpoint"] == "best"
    assert run.data.metrics["test/worst_group_acc"] == pytest.approx(0.5)
    assert run.data.metrics["test/drop_part_1/worst_group_acc"] == pytest.approx(1.0)
    assert run.data.metrics[f"{BG_GAP_SPLIT}/bg_gap"] == pytest.approx(0.25)
    artifacts = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"metrics.csv", "groups.csv", "predictions.csv", "selection.json", "overlays.npz"} <= artifacts
