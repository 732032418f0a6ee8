"""Evaluation metrics as pure functions on numpy arrays (method spec §4.2, §7, §10.5).

Argument order is ``(preds, labels, ...)`` throughout. Accuracies are fractions in [0, 1].

Conventions that the functions below share:
- A *group* is the dataset's (label, place) cell; only groups present in the evaluated split count towards
  the worst-group accuracy.
- Masks and part assignments are compared **at the patch grid** of the model. The pixel-level ground truth is
  pooled to patches first (:func:`pool_mask_to_patches`): a patch is ground-truth foreground when at least
  ``threshold`` of its pixels are foreground (the project uses ``model.oracle_patch_threshold``, default 0.5,
  so that the ``oracle_mask`` model scores an IoU of exactly 1), and a patch's ground-truth part is the most
  frequent part id among its pixels (:func:`pool_parts_to_patches`, ties to the lower id, so background wins
  a tie). The hard mask is never upsampled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def _as_1d(name: str, values: np.ndarray | Sequence) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {array.shape}")
    return array


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays of different lengths: {lengths}")


# ----------------------------------------------------------------------------------------- accuracies
def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Micro average accuracy (share of correct predictions)."""
    preds, labels = _as_1d("preds", preds), _as_1d("labels", labels)
    _check_same_length(preds=preds, labels=labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return float(np.mean(preds == labels))


def group_accuracy_table(
    preds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    group_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Accuracy per group present in the split.

    Returns one row per group with at least one sample, sorted by group id, with columns
    ``group`` (id), ``name`` (readable; ``group_<id>`` without names), ``n``, ``correct``, ``acc``.
    """
    preds, labels, groups = _as_1d("preds", preds), _as_1d("labels", labels), _as_1d("groups", groups)
    _check_same_length(preds=preds, labels=labels, groups=groups)
    present = np.unique(groups)
    if group_names is not None and len(present) and present.max() >= len(group_names):
        raise ValueError(f"group id {int(present.max())} has no name (group_names has {len(group_names)})")
    correct = preds == labels
    rows = []
    for group in present:
        in_group = groups == group
        n = int(in_group.sum())
        n_correct = int(correct[in_group].sum())
        name = group_names[group] if group_names is not None else f"group_{int(group)}"
        rows.append({"group": int(group), "name": name, "n": n, "correct": n_correct, "acc": n_correct / n})
    return pd.DataFrame(rows, columns=["group", "name", "n", "correct", "acc"])


def worst_group_accuracy(table: pd.DataFrame) -> float:
    """Minimum accuracy over the groups of a :func:`group_accuracy_table` (all groups present, §10.5)."""
    if table.empty:
        raise ValueError("worst-group accuracy of an empty split is undefined")
    return float(table["acc"].min())


def adjusted_average_accuracy(table: pd.DataFrame, train_group_counts: Mapping[int, int]) -> float:
    """Waterbirds-style average: per-group accuracy weighted by the group's frequency in the training split.

    Groups of the evaluated split that never occur in training get weight 0; the weights are renormalised over
    the groups present in the evaluated split. ``nan`` when no group present has training samples.
    """
    weights = np.array([float(train_group_counts.get(int(g), 0)) for g in table["group"]])
    if weights.sum() <= 0:
        return float("nan")
    return float(np.sum(weights * table["acc"].to_numpy()) / weights.sum())


def minority_groups(train_labels: np.ndarray, train_groups: np.ndarray) -> frozenset[int]:
    """Groups that are not the most frequent group of their class in training (Waterbirds: the two
    "bird on the other background" groups). Ties go to the lower group id as the majority."""
    train_labels, train_groups = _as_1d("train_labels", train_labels), _as_1d("train_groups", train_groups)
    _check_same_length(train_labels=train_labels, train_groups=train_groups)
    minority: set[int] = set()
    for label in np.unique(train_labels):
        ids, counts = np.unique(train_groups[train_labels == label], return_counts=True)
        majority = ids[np.argmax(counts)]  # np.unique sorts ids, argmax takes the first maximum
        minority.update(int(g) for g in ids if g != majority)
    return frozenset(minority)


def minority_class_accuracy(
    preds: np.ndarray, labels: np.ndarray, groups: np.ndarray, minority: frozenset[int] | set[int]
) -> float:
    """The reference code's Waterbirds "WGA": the minimum per-class accuracy on the minority-group subset.

    ``nan`` when the split has no sample of a minority group.
    """
    preds, labels, groups = _as_1d("preds", preds), _as_1d("labels", labels), _as_1d("groups", groups)
    _check_same_length(preds=preds, labels=labels, groups=groups)
    subset = np.isin(groups, list(minority))
    if not subset.any():
        return float("nan")
    per_class = [np.mean(preds[subset & (labels == c)] == c) for c in np.unique(labels[subset])]
    return float(min(per_class))


def bg_gap(acc_mixed_same: float, acc_mixed_rand: float) -> float:
    """ImageNet-9 background gap: acc(mixed_same) - acc(mixed_rand). Larger = more background reliance."""
    return float(acc_mixed_same - acc_mixed_rand)


def binary_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of ``scores`` (P(class 1)) against binary ``labels``; ``nan`` when only one class is present."""
    labels, scores = _as_1d("labels", labels), _as_1d("scores", scores)
    _check_same_length(labels=labels, scores=scores)
    if len(np.unique(labels)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score  # imported here: 0.7 s that a training job never needs

    return float(roc_auc_score(labels, scores))


# ----------------------------------------------------------------------------------------- masks and parts
def _patch_view(array: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[N,H,W] -> [N,h,w,H/h * W/w]: the pixels of every patch on the last axis."""
    n, height, width = array.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"mask of size {height}x{width} does not tile into a {h}x{w} patch grid")
    ph, pw = height // h, width // w
    return array.reshape(n, h, ph, w, pw).transpose(0, 1, 3, 2, 4).reshape(n, h, w, ph * pw)


def pool_mask_to_patches(fg_masks: np.ndarray, grid: tuple[int, int], threshold: float) -> np.ndarray:
    """Pixel masks [N,H,W] in {0,1} -> patch masks [N,h*w] bool: patch foreground share >= threshold."""
    fractions = _patch_view(np.asarray(fg_masks, dtype=np.float32), grid).mean(-1)  # [N,h,w]
    return (fractions >= threshold).reshape(len(fractions), -1)


def pool_parts_to_patches(parts: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Pixel part ids [N,H,W] (0 = background) -> most frequent id per patch [N,h*w] (ties: lower id)."""
    parts = np.asarray(parts)
    if parts.size and parts.min() < 0:
        raise ValueError("part ids must be >= 0 (0 = background)")
    pixels = _patch_view(parts, grid)  # [N,h,w,P]
    n_ids = int(parts.max()) + 1 if parts.size else 1
    counts = np.stack([(pixels == i).sum(-1) for i in range(n_ids)], axis=-1)  # [N,h,w,ids]
    return counts.argmax(-1).reshape(len(parts), -1)


def foreground_iou(pred_masks: np.ndarray, gt_masks: np.ndarray) -> float:
    """Dataset-level IoU of the foreground: TP / (TP + FP + FN) pooled over every image and patch.

    ``nan`` when neither mask has any foreground.
    """
    pred, gt = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted masks {pred.shape} and ground-truth masks {gt.shape} differ in shape")
    tp = np.sum(pred & gt)
    union = np.sum(pred | gt)  # = TP + FP + FN
    return float(tp / union) if union else float("nan")


def part_agreement(pred_parts: np.ndarray, gt_parts: np.ndarray) -> tuple[float, float]:
    """(NMI, ARI) between predicted part assignments and ground-truth part ids over every patch, background
    included on both sides (the predicted background part and ground-truth id 0 are ordinary clusters)."""
    pred, gt = np.asarray(pred_parts).ravel(), np.asarray(gt_parts).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"predicted parts {pred.shape} and ground-truth parts {gt.shape} differ in size")
    if pred.size == 0:
        return float("nan"), float("nan")
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return float(normalized_mutual_info_score(gt, pred)), float(adjusted_rand_score(gt, pred))


def foreground_fraction(masks: np.ndarray) -> float:
    """Mean over images of the share of patches kept as foreground; masks [N, h*w] bool."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or len(masks) == 0:
        raise ValueError(f"expected masks of shape [N, patches] with N > 0, got {masks.shape}")
    return float(masks.mean(axis=1).mean())


# ----------------------------------------------------------------------------------------- one split
def classification_metrics(
    preds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    train_group_counts: Mapping[int, int],
    minority: frozenset[int],
    scores: np.ndarray | None = None,
) -> dict[str, float]:
    """The accuracy metrics of one evaluated split. ``scores`` = P(class 1) adds the binary AUROC.

    Undefined metrics (no minority sample, one class only) are left out rather than reported as ``nan``.
    """
    table = group_accuracy_table(preds, labels, groups)
    metrics = {
        "avg_acc": accuracy(preds, labels),
        "worst_group_acc": worst_group_accuracy(table),
        "adj_avg_acc": adjusted_average_accuracy(table, train_group_counts),
        "minority_class_acc": minority_class_accuracy(preds, labels, groups, minority),
    }
    if scores is not None:
        metrics["auroc"] = binary_auroc(labels, scores)
    return {name: value for name, value in metrics.items() if not np.isnan(value)}
