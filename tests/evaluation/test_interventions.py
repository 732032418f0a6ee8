"""Per-part thresholds on a known tensor, the settings list, and selection on validation."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hardmask.evaluation.interventions import (
    NO_INTERVENTION,
    InterventionSetting,
    intervention_settings,
    matched_similarities,
    quantile_thresholds,
    select_intervention,
    training_split_thresholds,
)


def _known_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """K = 2 foreground parts + background on a 1x5 grid, one image.

    Assignment (argmax of the logits): tokens 0,1,2 -> part 0; token 3 -> part 1; token 4 -> background (2).
    """
    logits = torch.full((1, 3, 1, 5), -10.0)
    for token, part in enumerate([0, 0, 0, 1, 2]):
        logits[0, part, 0, token] = 0.0
    sims = torch.arange(15, dtype=torch.float32).reshape(1, 3, 1, 5)  # sims[k, t] = 5k + t
    return sims, logits


def test_matched_similarities_take_the_assigned_tokens_of_each_foreground_part():
    sims, logits = _known_batch()
    matched = matched_similarities(sims, logits)
    assert len(matched) == 2  # the background part gets no threshold
    assert matched[0].tolist() == [0.0, 1.0, 2.0]  # part 0's sims at tokens 0..2
    assert matched[1].tolist() == [8.0]  # part 1's sim at token 3


def test_matched_similarities_shape_errors():
    with pytest.raises(ValueError, match=r"must both be \[B,K\+1,h,w\]"):
        matched_similarities(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4))


def test_quantile_thresholds_match_numpy_linear_quantiles():
    matched = [np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([10.0, 20.0])]
    thresholds = quantile_thresholds(matched, [0.25, 0.05])
    assert list(thresholds) == [0.05, 0.25]
    assert thresholds[0.25] == pytest.approx((2.0, 12.5))
    assert thresholds[0.05] == pytest.approx((1.2, 10.5))


def test_a_never_assigned_part_is_not_gated(caplog):
    with caplog.at_level(logging.WARNING, logger="hardmask.evaluate"):
        thresholds = quantile_thresholds([np.array([1.0]), np.array([])], [0.05])
    assert thresholds[0.05] == (1.0, float("-inf"))
    assert "part 1 was never assigned" in caplog.text


def test_quantiles_outside_the_unit_interval_are_rejected():
    with pytest.raises(ValueError, match="evaluate.threshold_quantiles: 1.5"):
        quantile_thresholds([np.array([1.0])], [1.5])


class _PartModel(torch.nn.Module):
    """Returns the known batch for every image, so thresholds pool tokens over a two-batch 'dataset'."""

    def forward(self, images, fg_mask=None, interventions=None):
        sims, logits = _known_batch()
        batch = images.shape[0]
        return SimpleNamespace(
            part_sims=sims.expand(batch, -1, -1, -1), part_logits=logits.expand(batch, -1, -1, -1)
        )


def test_training_split_thresholds_pool_every_batch():
    loader = [{"image": torch.zeros(2, 3, 4, 4)}, {"image": torch.zeros(1, 3, 4, 4)}]
    thresholds = training_split_thresholds(_PartModel(), loader, [0.5], device=torch.device("cpu"))
    # part 0: values 0,1,2 from each of 3 images -> median 1; part 1: 8 three times -> 8
    assert thresholds == {0.5: (1.0, 8.0)}


def test_settings_cover_none_thresholds_each_part_and_user_removal():
    settings = intervention_settings(
        num_parts=3, thresholds={0.05: (1.0, 2.0, 3.0)}, leave_one_part_out=True, remove_parts=(2, 0)
    )
    names = [s.name for s in settings]
    assert names == [
        "none",
        "threshold_q0.05",
        "drop_part_0",
        "drop_part_1",
        "drop_part_2",
        "remove_parts_0+2",
    ]
    assert settings[1].thresholds == (1.0, 2.0, 3.0)
    assert settings[-1].remove_parts == (0, 2)
    only_none = intervention_settings(num_parts=3, thresholds=None, leave_one_part_out=False)
    assert [s.name for s in only_none] == ["none"]


def test_settings_reject_unknown_parts_and_wrong_threshold_counts():
    with pytest.raises(ValueError, match=r"evaluate.remove_parts: part ids \[5\] do not exist"):
        intervention_settings(num_parts=2, thresholds=None, leave_one_part_out=False, remove_parts=(5,))
    with pytest.raises(ValueError, match="2 entries, expected 3"):
        intervention_settings(num_parts=3, thresholds={0.1: (1.0, 2.0)}, leave_one_part_out=False)


def test_no_intervention_passes_none_to_the_model():
    assert InterventionSetting(NO_INTERVENTION).model_interventions() is None


def test_model_interventions_carry_parts_and_threshold_tensor():
    interventions = InterventionSetting("x", remove_parts=(1,), thresholds=(0.5, 1.5)).model_interventions()
    assert interventions.part_ids_to_remove == (1,)
    torch.testing.assert_close(interventions.thresholds, torch.tensor([0.5, 1.5]))


def test_selection_maximises_validation_worst_group_and_prefers_none_on_ties():
    assert select_intervention({"none": 0.5, "drop_part_0": 0.7, "drop_part_1": 0.7}) == "drop_part_0"
    assert select_intervention({"threshold_q0.05": 0.6, "none": 0.6}) == "none"
    with pytest.raises(ValueError, match="no intervention was evaluated"):
        select_intervention({})
