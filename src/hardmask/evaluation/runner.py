"""Evaluate trained runs: every split, every intervention, tidy rows, per-run files and MLflow records.

For one run directory ``runs/<variant>/seed<seed>/``, :func:`evaluate_run` writes one directory, atomically::

    eval/metrics.csv        tidy rows (hardmask.evaluation.tidy): model, seed, checkpoint, split, ...
    eval/groups.csv         per-group table: ..., split, intervention, group, name, n, correct, acc
    eval/predictions.csv    per image: split, intervention, index, label, pred, group, fg_fraction, ...
    eval/overlays.npz       a few test images per group with part maps and hard masks (report figure)
    eval/selection.json     intervention thresholds and the setting chosen on validation

Protocol (method spec §6, §10.3-10.6):
- deterministic: ``model.eval()``, ``torch.no_grad``, no Gumbel noise unless ``model.stochastic_eval`` asks
  for the reference's noisy evaluation (then every split pass is seeded, so it is repeatable);
- models with parts: every intervention setting is evaluated on ``val`` and ``test``; the one with the best
  validation worst-group accuracy is reported on every split as ``selected``; the other splits (OOD
  variants) get ``none`` and ``selected`` only, which bounds the cost. Models without parts get ``none``;
- the configured checkpoint (``evaluate.checkpoint``, default ``best``) is evaluated in full; with ``best``,
  ``last.pt`` is evaluated too, on ``val``/``test`` without interventions (rows with ``checkpoint=last``;
  where training ended on its best epoch, both checkpoints hold the same weights and share the predictions);
- a split of ``evaluate.splits`` that the dataset does not have is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from hardmask import layout
from hardmask import metrics as M
from hardmask.config import Config
from hardmask.data import DataError, build_dataset, make_loader
from hardmask.evaluation.checkpoints import EvaluationError, LoadedRun, load_run
from hardmask.evaluation.inference import OverlayPicker, SplitPredictions, predict_split
from hardmask.evaluation.interventions import (
    NO_INTERVENTION,
    SELECTED,
    InterventionSetting,
    intervention_settings,
    select_intervention,
    training_split_thresholds,
)
from hardmask.evaluation.tidy import BG_GAP_SPLIT, EVAL_COLUMNS, GROUP_ACC_PREFIX
from hardmask.io import atomic_dir
from hardmask.models.backbone import input_normalization
from hardmask.runtime import autocast_dtype, resolve_device

log = logging.getLogger("hardmask.evaluate")

GROUP_COLUMNS = (*EVAL_COLUMNS[:5], "group", "name", "n", "correct", "acc")
FULL_SWEEP_SPLITS = ("val", "test")  # every intervention setting is evaluated on these, val first

__all__ = ["EvaluationError", "evaluate_run", "split_metrics"]


# ----------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class GroupContext:
    """What the metrics need to know about the groups and the training split."""

    names: tuple[str, ...]
    train_counts: Mapping[int, int]
    minority: frozenset[int]

    @classmethod
    def from_train_split(cls, dataset: Any) -> GroupContext:
        counts = np.bincount(dataset.groups, minlength=dataset.group_spec.num_groups)
        return cls(
            names=tuple(dataset.group_spec.names),
            train_counts={group: int(count) for group, count in enumerate(counts)},
            minority=M.minority_groups(dataset.labels, dataset.groups),
        )


@dataclass(frozen=True)
class SplitResult:
    values: dict[str, float]  # metric name -> value
    groups: pd.DataFrame  # group_accuracy_table
    preds: SplitPredictions


def split_metrics(preds: SplitPredictions, context: GroupContext) -> SplitResult:
    """Every metric of one split under one setting (undefined ones left out) and its per-group table."""
    binary = preds.probs.shape[1] == 2
    values = M.classification_metrics(
        preds.preds,
        preds.labels,
        preds.groups,
        train_group_counts=context.train_counts,
        minority=context.minority,
        scores=preds.probs[:, 1] if binary else None,
    )
    if preds.hard_masks is not None:
        values["fg_fraction"] = M.foreground_fraction(preds.hard_masks)
        if preds.gt_patches is not None:
            iou = M.foreground_iou(preds.hard_masks[preds.has_mask], preds.gt_patches)
            if not np.isnan(iou):
                values["fg_iou"] = iou
    if preds.part_ids is not None and preds.gt_parts is not None:
        values["nmi"], values["ari"] = M.part_agreement(preds.part_ids[preds.has_mask], preds.gt_parts)
    table = M.group_accuracy_table(preds.preds, preds.labels, preds.groups, context.names)
    values |= {f"{GROUP_ACC_PREFIX}{row.name}": float(row.acc) for row in table.itertuples()}
    return SplitResult(values, table, preds)


@dataclass
class _RunRecords:
    """Rows accumulated while evaluating one run."""

    model: str
    seed: int
    checkpoint: str  # the primary one; per-image predictions are kept for it only
    group_names: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    group_tables: list[pd.DataFrame] = field(default_factory=list)
    prediction_tables: list[pd.DataFrame] = field(default_factory=list)

    def add(self, checkpoint: str, split: str, intervention: str, result: SplitResult) -> None:
        key = {"model": self.model, "seed": self.seed, "checkpoint": checkpoint, "split": split}
        key["intervention"] = intervention
        self.rows += [{**key, "metric": name, "value": value} for name, value in result.values.items()]
        self.group_tables.append(result.groups.assign(**key))
        if checkpoint != self.checkpoint or intervention not in (NO_INTERVENTION, SELECTED):
            return
        p = result.preds
        self.prediction_tables.append(
            pd.DataFrame(
                {
                    "split": split,
                    "intervention": intervention,
                    "index": p.index,
                    "label": p.labels,
                    "pred": p.preds,
                    "group": p.groups,
                    "group_name": np.asarray(self.group_names)[p.groups],
                    "correct": p.preds == p.labels,
                    "confidence": p.probs.max(1),
                    "fg_fraction": p.fg_fraction,
                }
            )
        )

    def add_bg_gaps(self) -> None:
        """BG-gap rows wherever both mixed_same and mixed_rand were evaluated under the same setting."""
        acc = {
            (r["checkpoint"], r["split"], r["intervention"]): r["value"]
            for r in self.rows
            if r["metric"] == "avg_acc"
        }
        for (checkpoint, split, intervention), same in list(acc.items()):
            rand = acc.get((checkpoint, "mixed_rand", intervention))
            if split != "mixed_same" or rand is None:
                continue
            key = {"model": self.model, "seed": self.seed, "checkpoint": checkpoint, "split": BG_GAP_SPLIT}
            self.rows.append(
                {**key, "intervention": intervention, "metric": "bg_gap", "value": M.bg_gap(same, rand)}
            )

    def metrics_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(EVAL_COLUMNS))

    def groups_frame(self) -> pd.DataFrame:
        return pd.concat(self.group_tables, ignore_index=True)[list(GROUP_COLUMNS)]

    def predictions_frame(self) -> pd.DataFrame:
        return pd.concat(self.prediction_tables, ignore_index=True)


# ----------------------------------------------------------------------------------------- one run
@dataclass
class _Evaluation:
    """A loaded run with its datasets: everything a split pass needs."""

    cfg: Config
    run: LoadedRun
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_set: Any
    loaders: dict[str, DataLoader]  # the available evaluation splits, in evaluate.splits order
    context: GroupContext

    @property
    def fg_mask_input(self) -> bool:
        return self.run.spec.takes_fg_mask

    def predict(
        self,
        model: nn.Module,
        split: str,
        settings: Sequence[InterventionSetting],
        overlays: OverlayPicker | None = None,
    ) -> dict[str, SplitResult]:
        if self.cfg.model.stochastic_eval:
            torch.manual_seed(self.cfg.base.seed)  # the reference's noisy evaluation, made repeatable
        predictions = predict_split(
            model,
            self.loaders[split],
            settings,
            device=self.device,
            fg_mask_input=self.fg_mask_input,
            patch_threshold=self.run.train_cfg.model.oracle_patch_threshold,
            autocast_dtype=autocast_dtype(self.run.train_cfg.optim.amp, self.device),  # as it was trained
            overlays=overlays,
        )
        return {name: split_metrics(preds, self.context) for name, preds in predictions.items()}


def _loader(cfg: Config, dataset: Any, device: torch.device) -> DataLoader:
    loader = cfg.data.loader
    pin = loader.pin_memory and device.type == "cuda"
    return make_loader(dataset, loader.eval_batch_size, num_workers=loader.num_workers, pin_memory=pin)


def _prepare(cfg: Config, run_dir: Path) -> _Evaluation:
    device = resolve_device(cfg.base.device)
    num_classes = build_dataset(cfg, "train", train=False).num_classes  # as training does
    run = load_run(cfg, run_dir, cfg.evaluate.checkpoint, num_classes, device)
    mean, std = input_normalization(run.model)
    loaders = {}
    for split in cfg.evaluate.splits:
        try:
            dataset = build_dataset(cfg, split, train=False, mean=mean, std=std)
        except DataError as exc:  # e.g. the real Waterbirds has no ImageNet-9-style variants
            log.warning("split %s is not evaluated: %s", split, exc)
            continue
        loaders[split] = _loader(cfg, dataset, device)
    if not loaders:
        raise EvaluationError(f"evaluate.splits={list(cfg.evaluate.splits)}: the dataset has none of them")
    train_set = build_dataset(cfg, "train", train=False, mean=mean, std=std)
    context = GroupContext.from_train_split(train_set)
    return _Evaluation(cfg, run, device, mean, std, train_set, loaders, context)


def _settings(ev: _Evaluation) -> tuple[list[InterventionSetting], dict[float, tuple[float, ...]]]:
    """The intervention settings of the run (just ``none`` for models without parts) and the thresholds."""
    if not ev.run.spec.has_parts:
        return [InterventionSetting(NO_INTERVENTION)], {}
    eval_cfg = ev.cfg.evaluate
    thresholds = training_split_thresholds(
        ev.run.model,
        _loader(ev.cfg, ev.train_set, ev.device),
        {*eval_cfg.threshold_quantiles, eval_cfg.default_threshold_quantile},
        device=ev.device,
        fg_mask_input=ev.fg_mask_input,
    )
    settings = intervention_settings(
        num_parts=ev.run.train_cfg.model.num_parts,
        thresholds=thresholds,
        leave_one_part_out=eval_cfg.leave_one_part_out,
        remove_parts=eval_cfg.remove_parts,
    )
    return settings, thresholds


def _sweep(
    ev: _Evaluation, settings: list[InterventionSetting], records: _RunRecords, overlays: OverlayPicker | None
) -> tuple[str, dict[str, float], dict[str, SplitResult]]:
    """Evaluate every split (val first); return the selected setting, the validation worst-group accs and
    each split's result without intervention."""
    by_name = {s.name: s for s in settings}
    selected, val_wga, unchanged = NO_INTERVENTION, {}, {}
    overlay_split = "test" if "test" in ev.loaders else next(iter(ev.loaders))
    order = {split: rank for rank, split in enumerate(FULL_SWEEP_SPLITS)}
    for split in sorted(ev.loaders, key=lambda s: order.get(s, len(order))):
        sweep = (
            settings if split in FULL_SWEEP_SPLITS else _unique([by_name[NO_INTERVENTION], by_name[selected]])
        )
        results = ev.predict(ev.run.model, split, sweep, overlays if split == overlay_split else None)
        unchanged[split] = results[NO_INTERVENTION]
        for name, result in results.items():
            records.add(ev.run.checkpoint, split, name, result)
        if split == "val":
            val_wga = {name: result.values["worst_group_acc"] for name, result in results.items()}
            selected = select_intervention(val_wga)
            log.info("%s/seed%d: intervention selected on val: %s", ev.run.variant, ev.run.seed, selected)
        if len(settings) > 1:  # "selected" exists only where there was something to choose from
            records.add(ev.run.checkpoint, split, SELECTED, results[selected])
    if "val" not in ev.loaders and len(settings) > 1:
        log.warning("no validation split: 'selected' is 'none' (an intervention is never chosen on test)")
    return selected, val_wga, unchanged


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    wa, wb = a.state_dict(), b.state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _unique(settings: Iterable[InterventionSetting]) -> list[InterventionSetting]:
    return list({s.name: s for s in settings}.values())


def evaluate_run(cfg: Config, run_dir: str | Path) -> pd.DataFrame:
    """Evaluate one training run on every available split and intervention; write its evaluation directory
    (:func:`hardmask.layout.eval_files`).

    Nothing is written into ``run_dir``: it is the train stage's DVC output, and touching it would make DVC
    retrain."""
    run_dir = Path(run_dir)
    ev = _prepare(cfg, run_dir)
    settings, thresholds = _settings(ev)
    records = _RunRecords(ev.run.variant, ev.run.seed, ev.run.checkpoint, group_names=ev.context.names)
    overlays = None
    if cfg.report.overlay_per_group > 0:
        overlays = OverlayPicker(
            cfg.report.overlay_per_group, mean=ev.mean, std=ev.std, group_names=ev.context.names
        )
    selected, val_wga, unchanged = _sweep(ev, settings, records, overlays)

    if cfg.evaluate.checkpoint == "best" and layout.RunFiles(run_dir).last.is_file():  # §10.6
        last = load_run(cfg, run_dir, "last", ev.train_set.num_classes, ev.device)
        # A run whose best epoch is its last holds the same weights twice, and a deterministic evaluation of
        # them gives the same predictions: reuse them (val and test again: a tenth of a two-stage evaluation).
        same = not cfg.model.stochastic_eval and _same_weights(last.model, ev.run.model)
        for split in (s for s in FULL_SWEEP_SPLITS if s in ev.loaders):
            result = (
                unchanged[split]
                if same
                else ev.predict(last.model, split, [InterventionSetting(NO_INTERVENTION)])[NO_INTERVENTION]
            )
            records.add("last", split, NO_INTERVENTION, result)

    records.add_bg_gaps()
    frame = records.metrics_frame()
    selection = {
        "model": ev.run.variant,
        "seed": ev.run.seed,
        "checkpoint": ev.run.checkpoint,
        "settings": [s.name for s in settings],
        "selected": selected,
        "val_worst_group_acc": val_wga,
        "thresholds": {f"{q:g}": list(values) for q, values in thresholds.items()},
        # images per group in the training split: the report marks the groups that were rare there
        "train_group_counts": {ev.context.names[g]: n for g, n in ev.context.train_counts.items()},
        "minority_groups": sorted(ev.context.names[g] for g in ev.context.minority),
    }
    eval_dir = layout.eval_files(cfg, ev.run.variant, ev.run.seed).root
    with atomic_dir(eval_dir) as tmp:  # the directory appears whole or not at all
        files = layout.EvalFiles(tmp)
        frame.to_csv(files.metrics, index=False)
        records.groups_frame().to_csv(files.groups, index=False)
        records.predictions_frame().to_csv(files.predictions, index=False)
        files.selection.write_text(json.dumps(selection, indent=2) + "\n")
        picked = overlays.result() if overlays is not None else None
        if picked is not None:
            picked.save(files.overlays)
    log_evaluation(cfg, ev.run, eval_dir, frame)
    return frame


# ----------------------------------------------------------------------------------------- tracking
def mlflow_metric_name(checkpoint: str, split: str, intervention: str, metric: str) -> str:
    """``[last/]split[/intervention]/metric`` with characters MLflow rejects replaced by ``_``."""
    parts = (["last"] if checkpoint == "last" else []) + [split]
    parts += [] if intervention == NO_INTERVENTION else [intervention]
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", "/".join([*parts, metric]))


def log_evaluation(cfg: Config, run: LoadedRun, eval_dir: Path, frame: pd.DataFrame) -> None:
    """One MLflow run per evaluation, tagged ``train_run_id`` with the training run it evaluates."""
    from hardmask.tracking import RunTracker

    with RunTracker.for_evaluation(cfg, variant=run.variant, seed=run.seed, run_key=run.run_key) as tracker:
        tracker.set_tags({"checkpoint": run.checkpoint})
        metrics = {
            mlflow_metric_name(r.checkpoint, r.split, r.intervention, r.metric): r.value
            for r in frame.itertuples()
        }
        tracker.log_metrics(metrics, step=0)
        tracker.log_artifacts(
            sorted(p for p in eval_dir.iterdir() if p.is_file() and not p.name.startswith(".")),
            artifact_path="eval",
        )
