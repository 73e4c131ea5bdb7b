"""Metric functions against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from medai.evaluation.intervals import bootstrap_ci, wilson_interval
from medai.evaluation.metrics import (
    binary_rates,
    confusion_matrix,
    macro_auc,
    one_vs_rest_auc,
    operating_point,
    predictive_values_at_prevalence,
    roc_auc,
    roc_curve,
)
from medai.evaluation.reliability import (
    CalibrationMode,
    brier_score,
    ece_if_calibrated,
    expected_calibration_error,
    reliability_bins,
)


def brute_force_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (pos.size * neg.size)


# --------------------------------------------------------------------------- ROC AUC


@pytest.mark.parametrize(
    ("positive", "scores", "expected"),
    [
        ([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1], 0.875),  # one tied pair counts 1/2: (1 + 1 + 0.5 + 1) / 4
        ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], 0.0),
        ([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5], 0.5),  # all tied
        ([1, 0, 0], [0.4, 0.4, 0.2], 0.75),  # (0.5 + 1) / 2
    ],
)
def test_roc_auc_hand_values(positive: list[int], scores: list[float], expected: float) -> None:
    assert roc_auc(np.array(positive), np.array(scores)) == pytest.approx(expected)


def test_roc_auc_matches_pairwise_count_with_many_ties() -> None:
    rng = np.random.default_rng(1)
    positive = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.3 * positive, 1)  # rounding creates ties
    assert roc_auc(positive, scores) == pytest.approx(brute_force_auc(positive, scores))


def test_roc_auc_is_nan_when_a_class_is_missing() -> None:
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert math.isnan(roc_auc(np.array([0, 0]), np.array([0.2, 0.3])))


def test_roc_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        roc_auc(np.array([1, 0]), np.array([0.2]))
    with pytest.raises(ValueError, match="boolean or 0/1"):
        roc_auc(np.array([2, 0]), np.array([0.2, 0.1]))
    with pytest.raises(ValueError, match="finite"):
        roc_auc(np.array([1, 0]), np.array([np.nan, 0.1]))


def test_roc_curve_points_and_area_equal_auc() -> None:
    fpr, tpr, thresholds = roc_curve(np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.4, 0.2]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[0] == np.inf
    rng = np.random.default_rng(2)
    positive = rng.random(50) < 0.5
    scores = np.round(rng.random(50), 1)
    fpr, tpr, _ = roc_curve(positive, scores)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(positive, scores))


def test_one_vs_rest_and_macro_auc() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]]
    )
    # class 0: positives 0.8, 0.4 vs negatives 0.3, 0.2, 0.1, 0.5 -> (4 + 3) / 8
    # class 1: positives 0.6, 0.7 vs 0.1, 0.5, 0.2, 0.1 -> 8 / 8
    # class 2: positives 0.7, 0.4 vs 0.1 x4 -> 8 / 8
    aucs = one_vs_rest_auc(labels, probs)
    assert aucs.tolist() == pytest.approx([0.875, 1.0, 1.0])
    assert macro_auc(labels, probs) == pytest.approx((0.875 + 1 + 1) / 3)


def test_macro_auc_skips_absent_class() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    aucs = one_vs_rest_auc(np.array([0, 1, 0]), probs)
    assert math.isnan(aucs[2])
    assert macro_auc(np.array([0, 1, 0]), probs) == pytest.approx(1.0)


# --------------------------------------------------------------------------- confusion and rates


def test_confusion_matrix_hand() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), n_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match=r"predicted must be in \[0, 2\]"):
        confusion_matrix(np.array([0]), np.array([3]), n_classes=3)


def test_binary_rates_hand() -> None:
    # truth:     1 1 1 1 0 0 0 0 0 0
    # predicted: 1 1 1 0 1 0 0 0 0 0  -> tp 3, fn 1, fp 1, tn 5
    r = binary_rates(np.array([1] * 4 + [0] * 6), np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0]))
    assert (r.tp, r.fp, r.tn, r.fn) == (3, 1, 5, 1)
    assert r.sensitivity == pytest.approx(0.75)
    assert r.specificity == pytest.approx(5 / 6)
    assert r.ppv == pytest.approx(0.75)
    assert r.npv == pytest.approx(5 / 6)
    assert r.prevalence == pytest.approx(0.4)


def test_binary_rates_empty_denominators_are_nan() -> None:
    r = binary_rates(np.array([0, 0]), np.array([0, 0]))
    assert math.isnan(r.sensitivity) and math.isnan(r.ppv)
    assert r.specificity == 1.0 and r.npv == 1.0


def test_operating_point_argmax_and_threshold() -> None:
    probs = np.array([[0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.35, 0.35], [0.1, 0.3, 0.6]])
    labels = np.array([1, 1, 0, 2])
    by_argmax = operating_point(labels, probs, positive_class=1)
    assert (by_argmax.tp, by_argmax.fn, by_argmax.fp, by_argmax.tn) == (1, 1, 1, 1)
    by_threshold = operating_point(labels, probs, positive_class=1, threshold=0.4)
    assert (by_threshold.tp, by_threshold.fn, by_threshold.fp, by_threshold.tn) == (2, 0, 0, 2)
    with pytest.raises(ValueError, match="positive_class must be in"):
        operating_point(labels, probs, positive_class=3)


def test_predictive_values_at_prevalence_by_hand() -> None:
    ppv, npv = predictive_values_at_prevalence(0.9, 0.8, 0.1)
    assert ppv == pytest.approx(0.09 / (0.09 + 0.18))
    assert npv == pytest.approx(0.72 / (0.72 + 0.01))
    assert predictive_values_at_prevalence(0.9, 0.8, 0.0) == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"prevalence must be in \[0, 1\]"):
        predictive_values_at_prevalence(0.9, 0.8, 1.5)


def test_prevalence_adjusted_values_equal_sample_values_at_sample_prevalence() -> None:
    r = binary_rates(np.array([1] * 4 + [0] * 6), np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0]))
    ppv, npv = r.at_prevalence(r.prevalence)
    assert ppv == pytest.approx(r.ppv)
    assert npv == pytest.approx(r.npv)


def test_wilson_interval_known_value() -> None:
    iv = wilson_interval(8, 10)
    assert (iv.estimate, round(iv.low, 3), round(iv.high, 3)) == (0.8, 0.49, 0.943)
    assert math.isnan(wilson_interval(0, 0).estimate)
    with pytest.raises(ValueError, match="successes must be in"):
        wilson_interval(3, 2)


# --------------------------------------------------------------------------- calibration metrics


def test_top_label_ece_by_hand() -> None:
    # 2 bins. Top confidences 0.9 (wrong), 0.9 (right), 0.6 (right), 0.7 (right), 0.55 (wrong)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([1, 0, 0, 1, 1])
    # all in bin [0.5, 1]: mean confidence 3.65 / 5 = 0.73, accuracy 3 / 5 = 0.6
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.13)
    # 5 bins: [0.4,0.6): conf 0.55 acc 0 (n1); [0.6,0.8): 0.6, 0.7 acc 1 (n2); [0.8,1]: 0.9, 0.9 acc 0.5 (n2)
    expected = (1 * 0.55 + 2 * abs(1 - 0.65) + 2 * abs(0.5 - 0.9)) / 5
    assert expected_calibration_error(labels, probs, n_bins=5) == pytest.approx(expected)


def test_classwise_ece_by_hand() -> None:
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 0])
    # class 0 (2 bins): 0.4 -> bin 0 (obs 1), 0.8 -> bin 1 (obs 1): (0.6 + 0.2) / 2 = 0.4
    # class 1: 0.2 -> bin 0 (obs 0), 0.6 -> bin 1 (obs 0): (0.2 + 0.6) / 2 = 0.4
    assert expected_calibration_error(labels, probs, n_bins=2, mode=CalibrationMode.CLASSWISE) == pytest.approx(0.4)


def test_reliability_bins_put_probability_one_in_last_bin_and_mark_empty_bins() -> None:
    bins = reliability_bins(np.array([0, 0]), np.array([[1.0, 0.0], [0.5, 0.5]]), n_bins=4)
    assert bins.count.tolist() == [0, 0, 1, 1]
    assert math.isnan(bins.observed[0])
    assert bins.observed[3] == 1.0 and bins.mean_confidence[3] == 1.0
    assert bins.ece == pytest.approx(0.5 * 0.5)
    payload = bins.to_dict()
    assert payload["observed"][0] is None and len(payload["edges"]) == 5


def test_perfectly_calibrated_bins_have_zero_ece() -> None:
    # in each bin the accuracy equals the confidence
    probs = np.array([[0.75, 0.25]] * 4 + [[0.25, 0.75]] * 4)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    assert expected_calibration_error(labels, probs, n_bins=10) == pytest.approx(0.0)


def test_brier_score_by_hand() -> None:
    assert brier_score(np.array([0, 1]), np.array([[1.0, 0.0], [0.5, 0.5]])) == pytest.approx(0.25)


# --------------------------------------------------------------------------- bootstrap


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    scores = rng.normal(size=n) + 1.0 * labels
    return labels, scores


def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (40, 640):
        labels, scores = _scores(n, seed=3)
        est, low, high = bootstrap_ci(
            lambda i, y=labels, s=scores: roc_auc(y[i] == 1, s[i]), labels, n_bootstrap=300, seed=0
        )
        assert low <= est <= high
        assert est == pytest.approx(roc_auc(labels == 1, scores))
        widths.append(float(high - low))
    assert widths[1] < 0.5 * widths[0]  # ~1/sqrt(16) in theory


def test_bootstrap_is_seeded_and_stratified() -> None:
    labels, scores = _scores(50, seed=4)

    def stat(i: np.ndarray) -> np.ndarray:
        return np.array([roc_auc(labels[i] == 1, scores[i]), float(labels[i].sum())])

    first = bootstrap_ci(stat, labels, n_bootstrap=100, seed=7)
    second = bootstrap_ci(stat, labels, n_bootstrap=100, seed=7)
    other = bootstrap_ci(stat, labels, n_bootstrap=100, seed=8)
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[2], second[2])
    assert first[1][0] != other[1][0]
    # stratified: every replicate keeps the number of positives, so its CI is a point
    assert first[1][1] == first[2][1] == labels.sum()


def test_bootstrap_with_zero_replicates_has_nan_bounds_and_checks_arguments() -> None:
    labels, scores = _scores(20, seed=5)
    est, low, high = bootstrap_ci(lambda i: float(scores[i].mean()), labels, n_bootstrap=0)
    assert math.isfinite(float(est)) and math.isnan(float(low)) and math.isnan(float(high))
    with pytest.raises(ValueError, match="n_bootstrap must be >= 0"):
        bootstrap_ci(lambda i: 0.0, labels, n_bootstrap=-1)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        bootstrap_ci(lambda i: 0.0, labels, confidence=1.0)


def test_ece_if_calibrated_matches_the_binomial_spread_of_one_bin() -> None:
    # 60 cases, all at confidence 0.8 in one bin: a calibrated model's ECE is |k / 60 - 0.8|, k ~ Binomial(60, 0.8)
    from scipy.stats import binom

    n = 60
    gaps = np.abs(np.arange(n + 1) / n - 0.8)
    order = np.argsort(gaps)
    cdf = np.cumsum(binom.pmf(np.arange(n + 1), n, 0.8)[order])
    exact_median = gaps[order][np.searchsorted(cdf, 0.5)]
    exact_95 = gaps[order][np.searchsorted(cdf, 0.95)]
    median, high = ece_if_calibrated(np.tile([0.8, 0.15, 0.05], (n, 1)), n_draws=4000)
    assert median == pytest.approx(exact_median, abs=0.0175)  # one case is 1/60
    assert high == pytest.approx(exact_95, abs=0.0175)
    assert ece_if_calibrated(np.tile([0.8, 0.15, 0.05], (n, 1)), n_draws=4000) == (median, high)  # seeded


def test_ece_if_calibrated_shrinks_with_cases_and_tells_miscalibration_from_noise() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.4, 1.0, 2000)
    p = np.stack([conf, (1 - conf) * 0.6, (1 - conf) * 0.4], axis=1)
    few, _ = ece_if_calibrated(p[:60])
    many, many_high = ece_if_calibrated(p)
    assert 0.06 < few < 0.16 and many < 0.03 and many < few / 3
    # labels drawn from the model's own probabilities land above the 95th percentile about once in 20 draws;
    # an overconfident model lands far above it
    calibrated = [expected_calibration_error((rng.random(2000) > conf).astype(int), p) for _ in range(20)]
    assert sum(e > many_high for e in calibrated) <= 3
    overconfident = (rng.random(2000) > conf - 0.15).astype(int)  # 15 points less accurate than it says
    assert expected_calibration_error(overconfident, p) > 3 * many_high


def test_ece_if_calibrated_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="probabilities must be"):
        ece_if_calibrated(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="n_draws must be"):
        ece_if_calibrated(np.tile([0.5, 0.5], (4, 1)), n_draws=0)
