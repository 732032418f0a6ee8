"""The result at the top of the report: the paired bootstrap and the sentences built from a known table."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hardmask.report import result
from hardmask.report.stats import paired_bootstrap_gain, resampled_worst_group_accuracy

from .fake_eval import SEEDS, fake_eval_df, fake_test_predictions, fake_value


def test_resampled_worst_group_accuracy_is_the_minimum_over_the_groups_drawn():
    correct = np.array([True, False, True, True])
    groups = np.array([0, 0, 1, 1])
    indices = np.array([[0, 1, 2, 3], [0, 0, 2, 2], [1, 1, 3, 3], [0, 1, 0, 1]])
    # group accuracies (0.5, 1), (1, 1), (0, 1), and group 1 not drawn at all: only group 0 counts
    np.testing.assert_allclose(resampled_worst_group_accuracy(correct, groups, indices), [0.5, 1.0, 0.0, 0.5])


def test_identical_predictions_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(0)
    correct, groups = rng.random(300) < 0.7, rng.integers(0, 4, 300)
    # only a paired resampling cancels exactly: independent draws per model would spread around 0
    assert paired_bootstrap_gain([(correct, correct, groups)] * 2) == (0.0, 0.0)


def test_bootstrap_interval_matches_the_binomial_spread_of_a_known_case():
    n = 400
    groups = np.zeros(n, dtype=int)
    method = np.ones(n, dtype=bool)
    baseline = np.arange(n) % 2 == 0  # accuracy 0.5: the gain is 1 - a binomial(400, 0.5) proportion
    low, high = paired_bootstrap_gain([(method, baseline, groups)], n_resamples=2000)
    half_width = 1.96 * np.sqrt(0.5 * 0.5 / n)  # normal approximation, 0.049
    assert low == pytest.approx(0.5 - half_width, abs=0.01)
    assert high == pytest.approx(0.5 + half_width, abs=0.01)
    assert paired_bootstrap_gain([(method, baseline, groups)], n_resamples=2000) == (low, high)  # fixed seed


def test_bootstrap_averages_the_gain_over_seeds():
    groups = np.array([0, 0, 1, 1, 1])
    right, wrong = np.ones(5, dtype=bool), np.zeros(5, dtype=bool)
    # seed A: a gain of 1 in every resample; seed B: 0 in every resample -> their mean, 0.5, every time
    assert paired_bootstrap_gain([(right, wrong, groups), (right, right, groups)]) == (0.5, 0.5)


def _gain_numbers(sentence: str) -> dict[str, str]:
    number, mean_sd = r"[+-]\d\.\d{3}", r"\S+ ± \S+"
    match = re.search(
        rf"^two_stage_hard \(the method\) over baseline_vit: test worst-group accuracy (?P<gain>{number}), "
        rf"from (?P<before>{mean_sd}) to (?P<after>{mean_sd}) \(the gain is the mean of the paired per-seed "
        r"gains over seeds 0, 1, 2, sd (?P<sd>\d\.\d{3}) over seeds; 95 % paired bootstrap interval "
        rf"over test images \[(?P<low>{number}), (?P<high>{number})\]\)\.$",
        sentence,
    )
    assert match, sentence
    return match.groupdict()


def test_gain_sentence_states_mean_sd_and_bootstrap_interval_of_a_known_table():
    df = fake_eval_df()
    # fake_value: worst-group gain 0.1 on every seed; make seed 2's 0.16 so that the sd is not 0
    seed2 = (
        (df["model"] == "two_stage_hard")
        & (df["seed"] == 2)
        & (df["split"] == "test")
        & (df["metric"] == "worst_group_acc")
        & (df["intervention"] == "none")
        & (df["checkpoint"] == "best")
    )
    df.loc[seed2, "value"] += 0.06
    predictions = fake_test_predictions()
    first = result.result_sentences(df, predictions)[0]
    numbers = _gain_numbers(first)
    assert numbers["gain"] == "+0.120"  # mean of 0.1, 0.1, 0.16
    assert numbers["sd"] == f"{np.std([0.1, 0.1, 0.16], ddof=1):.3f}" == "0.035"
    baseline = [fake_value("baseline_vit", s, "test", "worst_group_acc") for s in SEEDS]
    assert numbers["before"] == f"{np.mean(baseline):.3f} ± {np.std(baseline, ddof=1):.3f}"
    low, high = paired_bootstrap_gain(
        list(result.paired_runs(predictions, "two_stage_hard", "baseline_vit").values())
    )
    assert (numbers["low"], numbers["high"]) == (f"{low:+.3f}", f"{high:+.3f}")
    assert float(numbers["low"]) < 0.3 < float(numbers["high"])  # the fake predictions' gain, ~0.33
    assert result.result_sentences(df, predictions) == result.result_sentences(df, predictions)


def test_bg_gap_and_oracle_sentences_give_their_numbers():
    sentences = result.result_sentences(fake_eval_df(), {})
    bg_gap = [s for s in sentences if s.startswith("BG-gap")]
    assert bg_gap == [
        "BG-gap (acc(mixed_same) - acc(mixed_rand); near 0 = the background does not sway the prediction): "
        "-0.020 ± 0.000 for two_stage_hard vs -0.020 ± 0.000 for baseline_vit."
    ]
    oracle = [fake_value("oracle_mask", s, "test", "worst_group_acc") for s in SEEDS]
    (upper,) = [s for s in sentences if "oracle_mask" in s]
    assert f"worst-group accuracy {np.mean(oracle):.3f} ± {np.std(oracle, ddof=1):.3f}, 0.100 above" in upper
    assert "no per-image test predictions of both models, so no bootstrap interval" in sentences[0]


def test_a_missing_model_is_said_not_crashed_on():
    df = fake_eval_df()
    sentences = result.result_sentences(df[df["model"] != "baseline_vit"], fake_test_predictions())
    assert sentences[0] == (
        "No method-vs-baseline comparison: it needs the test worst-group accuracy of both two_stage_hard and "
        "baseline_vit, and this report has two_stage_hard, oracle_mask."
    )
    only_seed0 = df[(df["model"] != "two_stage_hard") | (df["seed"] == 0)]
    predictions = {k: v for k, v in fake_test_predictions().items() if k[1] == 0}
    first = result.result_sentences(only_seed0, predictions)[0]
    assert (
        "over seed 0, one seed, so no sd over seeds" in first
        and "bootstrap interval over test images" in first
    )
    one_model = df[df["model"] == "oracle_mask"]
    assert result.result_sentences(one_model)[0].startswith("No method-vs-baseline comparison")
