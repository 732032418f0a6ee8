"""``predict_split``: stage 1 once per batch, then every intervention setting, with unchanged predictions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hardmask.evaluation.inference import OverlayPicker, encodes_parts, predict_split
from hardmask.evaluation.interventions import InterventionSetting, training_split_thresholds
from hardmask.evaluation.overlays import OverlaySamples
from tests.models.tiny import IMAGE_SIZE, NUM_PARTS, images, tiny_model


def batches(count: int = 2, size: int = 4) -> list[dict[str, torch.Tensor]]:
    fg = torch.zeros(size, IMAGE_SIZE, IMAGE_SIZE)
    fg[:, :, : IMAGE_SIZE // 2] = 1  # left half is foreground
    return [
        {
            "image": images(size, seed=b),
            "label": torch.arange(size) % 2,
            "group": torch.arange(size) % 4,
            "index": torch.arange(b * size, (b + 1) * size),
            "has_mask": torch.ones(size, dtype=torch.bool),
            "fg_mask": fg,
            "parts": fg.long(),
        }
        for b in range(count)
    ]


class WholeForward(torch.nn.Module):
    """The model without ``encode_parts``/``classify``: evaluated the plain way, one forward per setting."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grid_size = model.grid_size

    def forward(self, images, fg_mask=None, interventions=None):
        return self.model(images, fg_mask=fg_mask, interventions=interventions)


def settings_for(model: torch.nn.Module) -> list[InterventionSetting]:
    with torch.no_grad():
        sims = model(images(4)).part_sims
    median = tuple(float(sims[:, k].median()) for k in range(NUM_PARTS))
    return [
        InterventionSetting("none"),
        InterventionSetting("threshold_median", thresholds=median),
        InterventionSetting("drop_part_0", remove_parts=(0,)),
    ]


def predict(model: torch.nn.Module, settings: list[InterventionSetting]):
    return predict_split(
        model, batches(), settings, device=torch.device("cpu"), fg_mask_input=False, patch_threshold=0.5
    )


@pytest.mark.parametrize("variant", ["two_stage_hard", "stage1_only"])
def test_split_forward_gives_the_predictions_of_one_forward_per_setting(variant):
    model = tiny_model(variant, seed=1).eval()
    settings = settings_for(model)
    assert encodes_parts(model) and not encodes_parts(WholeForward(model))
    split, whole = predict(model, settings), predict(WholeForward(model), settings)
    assert split.keys() == whole.keys() == {s.name for s in settings}
    for name in split:
        for field in (
            "index",
            "labels",
            "preds",
            "groups",
            "hard_masks",
            "part_ids",
            "gt_patches",
            "gt_parts",
        ):
            np.testing.assert_array_equal(getattr(split[name], field), getattr(whole[name], field))
        np.testing.assert_allclose(split[name].probs, whole[name].probs, rtol=0, atol=1e-6)
    masks = {name: split[name].hard_masks for name in split}
    assert not np.array_equal(masks["none"], masks["drop_part_0"])  # the settings did differ


def test_stage1_backbone_runs_once_per_batch_whatever_the_number_of_settings(monkeypatch):
    model = tiny_model().eval()
    settings = settings_for(model)
    calls = []
    backbone = model.stage1.backbone
    forward_features = backbone.forward_features
    monkeypatch.setattr(backbone, "forward_features", lambda x: calls.append(len(x)) or forward_features(x))
    predict(model, settings)
    assert calls == [4, 4]  # two batches, three settings


def test_training_split_thresholds_run_stage1_only(monkeypatch):
    model = tiny_model().eval()

    def fail(*args, **kwargs):
        raise AssertionError("the thresholds need no stage 2")

    monkeypatch.setattr(model.stage2, "forward", fail)
    thresholds = training_split_thresholds(model, batches(), [0.5], device=torch.device("cpu"))
    assert len(thresholds[0.5]) == NUM_PARTS


def pick(per_group: int, outcomes: dict[int, str]) -> OverlaySamples:
    """Feed an OverlayPicker one batch: per group a string of outcomes ('c' correct, 'f' failure) in order.
    Image i is uniformly i/100 bright, so that the kept samples can be told apart."""
    groups = np.array([g for g, seq in outcomes.items() for _ in seq])
    correct = np.array([c == "c" for seq in outcomes.values() for c in seq])
    labels = np.zeros(len(groups), dtype=int)
    logits = torch.tensor([[1.0, 0.0] if ok else [0.0, 1.0] for ok in correct])
    output = SimpleNamespace(logits=logits, part_maps=None, hard_mask=None)
    images_in = torch.arange(len(groups)).float()[:, None, None, None].expand(-1, 3, 2, 2) / 100
    picker = OverlayPicker(per_group, mean=(0, 0, 0), std=(1, 1, 1), group_names=("g0", "g1", "g2"))
    picker.add(images_in, labels, groups, output, grid=None)
    return picker.result()


def kept(samples: OverlaySamples) -> list[tuple[int, bool, int]]:
    """(group, correct, which image) of every kept sample, in order."""
    order = np.round(samples.images[:, 0, 0, 0] / 255 * 100).astype(int)
    return list(zip(samples.groups.tolist(), (samples.labels == samples.preds).tolist(), order.tolist()))


def test_overlay_picker_keeps_the_first_successes_and_failures_of_each_group_side_by_side():
    # half of per_group of each kind (rounded up), in the order seen; correct ones before failures
    assert kept(pick(4, {0: "fffccccc", 1: "cccc", 2: "ff"})) == [
        (0, True, 3),
        (0, True, 4),
        (0, False, 0),
        (0, False, 1),
        (1, True, 8),
        (1, True, 9),
        (2, False, 12),
        (2, False, 13),
    ]
    # a model that is nearly always right still shows its failures next to as many successes
    assert kept(pick(1, {0: "cccccf", 1: "fcc"})) == [
        (0, True, 0),
        (0, False, 5),
        (1, True, 7),
        (1, False, 6),
    ]
    assert kept(pick(3, {0: "cfcfcf"})) == [(0, True, 0), (0, True, 2), (0, False, 1), (0, False, 3)]
