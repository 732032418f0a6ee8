"""Every metric against values computed by hand on a tiny, fully known evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hardmask import metrics as M

# Waterbirds-like groups, id = label * 2 + place
NAMES = ("landbird_on_land", "landbird_on_water", "waterbird_on_land", "waterbird_on_water")
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
GROUPS = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
PREDS = np.array([0, 1, 1, 1, 0, 1, 1, 1, 1, 0])
# correct:         1  0  0  1  0  1  1  1  1  0   -> 6 / 10
# group 0: 1/3, group 1: 1/2, group 2: 2/2, group 3: 2/3
TRAIN_COUNTS = {0: 70, 1: 5, 2: 5, 3: 20}


def _train_split() -> tuple[np.ndarray, np.ndarray]:
    groups = np.repeat([0, 1, 2, 3], [TRAIN_COUNTS[g] for g in range(4)])
    return groups // 2, groups  # labels, groups


def test_group_table_counts_names_and_accuracies():
    table = M.group_accuracy_table(PREDS, LABELS, GROUPS, NAMES)
    assert table["group"].tolist() == [0, 1, 2, 3]
    assert table["name"].tolist() == list(NAMES)
    assert table["n"].tolist() == [3, 2, 2, 3]
    assert table["correct"].tolist() == [1, 1, 2, 2]
    np.testing.assert_allclose(table["acc"], [1 / 3, 1 / 2, 1.0, 2 / 3])


def test_group_table_lists_only_present_groups_and_names_missing_names():
    table = M.group_accuracy_table(np.array([1, 0]), np.array([1, 1]), np.array([3, 3]))
    assert table["group"].tolist() == [3] and table["name"].tolist() == ["group_3"]
    with pytest.raises(ValueError, match="group id 3 has no name"):
        M.group_accuracy_table(np.array([1]), np.array([1]), np.array([3]), NAMES[:2])


def test_average_worst_group_adjusted_and_minority():
    table = M.group_accuracy_table(PREDS, LABELS, GROUPS, NAMES)
    assert M.accuracy(PREDS, LABELS) == pytest.approx(0.6)
    assert M.worst_group_accuracy(table) == pytest.approx(1 / 3)  # a majority group is the worst here
    # train frequencies 0.70 / 0.05 / 0.05 / 0.20
    expected_adjusted = 0.70 * (1 / 3) + 0.05 * 0.5 + 0.05 * 1.0 + 0.20 * (2 / 3)
    assert M.adjusted_average_accuracy(table, TRAIN_COUNTS) == pytest.approx(expected_adjusted)
    train_labels, train_groups = _train_split()
    minority = M.minority_groups(train_labels, train_groups)
    assert minority == {1, 2}
    # minority subset = groups 1 and 2: class 0 there 1/2, class 1 there 2/2 -> min 0.5 (differs from WGA)
    assert M.minority_class_accuracy(PREDS, LABELS, GROUPS, minority) == pytest.approx(0.5)


def test_adjusted_average_renormalises_over_present_groups():
    table = M.group_accuracy_table(np.array([0, 1]), np.array([0, 0]), np.array([0, 1]))  # acc 1 and 0
    assert M.adjusted_average_accuracy(table, {0: 30, 1: 10, 3: 60}) == pytest.approx(0.75)
    assert math.isnan(M.adjusted_average_accuracy(table, {3: 5}))


def test_minority_accuracy_without_minority_samples_is_nan():
    assert math.isnan(M.minority_class_accuracy(PREDS, LABELS, GROUPS, frozenset({7})))


def test_bg_gap_and_auroc():
    assert M.bg_gap(0.8, 0.6) == pytest.approx(0.2)
    # of the 4 (positive, negative) pairs only (0.35 vs 0.4) is misordered -> 3/4
    assert M.binary_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert math.isnan(M.binary_auroc(np.array([1, 1]), np.array([0.2, 0.9])))


def test_classification_metrics_bundle_leaves_out_undefined_values():
    train_labels, train_groups = _train_split()
    values = M.classification_metrics(
        PREDS,
        LABELS,
        GROUPS,
        train_group_counts=TRAIN_COUNTS,
        minority=M.minority_groups(train_labels, train_groups),
        scores=np.where(PREDS == 1, 0.9, 0.1),
    )
    assert set(values) == {"avg_acc", "worst_group_acc", "adj_avg_acc", "minority_class_acc", "auroc"}
    assert values["worst_group_acc"] == pytest.approx(1 / 3)
    no_minority = M.classification_metrics(PREDS, LABELS, GROUPS, train_group_counts={}, minority=frozenset())
    assert set(no_minority) == {"avg_acc", "worst_group_acc"}


def test_foreground_iou_is_pooled_over_the_dataset():
    pred = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=bool)
    gt = np.array([[1, 0, 0, 0], [0, 1, 1, 1]], dtype=bool)
    # TP = 1 + 2, union = 2 + 3 -> 3/5 (the mean of per-image IoUs would be (1/2 + 2/3) / 2)
    assert M.foreground_iou(pred, gt) == pytest.approx(0.6)
    assert math.isnan(M.foreground_iou(np.zeros((1, 4), bool), np.zeros((1, 4), bool)))
    with pytest.raises(ValueError, match="differ in shape"):
        M.foreground_iou(pred, gt[:, :3])


def test_pool_mask_to_patches_uses_the_threshold_on_the_patch_share():
    mask = np.zeros((1, 4, 4), dtype=np.float32)
    mask[0, 0, 0] = 1  # patch (0,0): 1/4 foreground
    mask[0, 0:2, 2] = 1  # patch (0,1): 2/4
    mask[0, 2:4, 0:2] = 1
    mask[0, 3, 1] = 0  # patch (1,0): 3/4
    mask[0, 2:4, 2:4] = 1  # patch (1,1): 4/4
    assert M.pool_mask_to_patches(mask, (2, 2), 0.5).tolist() == [[False, True, True, True]]
    assert M.pool_mask_to_patches(mask, (2, 2), 0.25).tolist() == [[True, True, True, True]]
    assert M.pool_mask_to_patches(mask, (2, 2), 1.0).tolist() == [[False, False, False, True]]
    with pytest.raises(ValueError, match="does not tile"):
        M.pool_mask_to_patches(mask, (3, 3), 0.5)


def test_pool_parts_takes_the_most_frequent_id_ties_to_background():
    parts = np.array(
        [
            [
                [0, 0, 2, 2],
                [1, 1, 2, 0],
                [3, 3, 0, 0],
                [3, 1, 0, 1],
            ]
        ]
    )
    # patches: {0,0,1,1} tie -> 0; {2,2,2,0} -> 2; {3,3,3,1} -> 3; {0,0,0,1} -> 0
    assert M.pool_parts_to_patches(parts, (2, 2)).tolist() == [[0, 2, 3, 0]]


def test_nmi_ari_against_hand_computed_values():
    nmi, ari = M.part_agreement(np.array([4, 4, 9, 9]), np.array([0, 0, 1, 1]))  # a relabelling
    assert (nmi, ari) == (pytest.approx(1.0), pytest.approx(1.0))
    gt, pred = np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 1]])
    # ARI: sum C(n_ij,2) = 1, expected = C-pairs(gt) 2 * C-pairs(pred) 3 / 6 = 1 -> (1 - 1) / (2.5 - 1) = 0
    # NMI (arithmetic): H(gt) = ln 2, H(pred) = H(3/4, 1/4), MI = H(gt) - 3/4 H(2/3, 1/3)
    h = lambda *p: -sum(x * math.log(x) for x in p)
    mi = h(0.5, 0.5) - 0.75 * h(2 / 3, 1 / 3)
    nmi, ari = M.part_agreement(pred, gt)
    assert ari == pytest.approx(0.0, abs=1e-12)
    assert nmi == pytest.approx(mi / ((h(0.5, 0.5) + h(0.75, 0.25)) / 2))


def test_foreground_fraction_is_the_mean_over_images():
    masks = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=bool)
    assert M.foreground_fraction(masks) == pytest.approx((0.5 + 0.75) / 2)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="different lengths"):
        M.accuracy(np.array([0, 1]), np.array([0]))
