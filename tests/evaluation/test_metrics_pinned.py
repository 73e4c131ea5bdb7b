"""The metrics as they were before they moved onto scikit-learn and scipy, pinned case by case.

``fixtures/metrics_pinned.json`` was written by medai's own hand-written metrics (before the swap) on a
seeded three-class set with tied scores. Every point value must stay the same to floating-point tolerance;
bootstrap bounds are Monte Carlo estimates and may move by resampling noise only (2,000 replicates:
a standard error of about 0.005 at these percentiles).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medai.evaluation.intervals import bootstrap_ci, wilson_interval
from medai.evaluation.metrics import confusion_matrix, macro_auc, one_vs_rest_auc, operating_point, roc_auc, roc_curve
from medai.evaluation.reliability import brier_score, expected_calibration_error, reliability_bins

PINNED = json.loads((Path(__file__).parent / "fixtures" / "metrics_pinned.json").read_text())
Y = np.array(PINNED["labels"])
P = np.array(PINNED["probabilities"])


def test_discrimination_is_unchanged() -> None:
    assert roc_auc(Y == 1, P[:, 1]) == pytest.approx(PINNED["roc_auc_covid19"], abs=1e-12)
    assert one_vs_rest_auc(Y, P).tolist() == pytest.approx(PINNED["one_vs_rest_auc"], abs=1e-12)
    assert macro_auc(Y, P) == pytest.approx(PINNED["macro_auc"], abs=1e-12)
    fpr, tpr, thresholds = roc_curve(Y == 1, P[:, 1])
    assert fpr.tolist() == pytest.approx(PINNED["roc_curve"]["fpr"], abs=1e-12)
    assert tpr.tolist() == pytest.approx(PINNED["roc_curve"]["tpr"], abs=1e-12)
    assert thresholds[0] == np.inf
    assert thresholds[1:].tolist() == pytest.approx(PINNED["roc_curve"]["thresholds"][1:], abs=1e-12)


def test_counts_and_rates_are_unchanged() -> None:
    assert confusion_matrix(Y, P.argmax(axis=1), n_classes=3).tolist() == PINNED["confusion_matrix"]
    r = operating_point(Y, P, positive_class=1, threshold=0.4)
    assert [r.tp, r.fp, r.tn, r.fn] == PINNED["operating_point_covid19_0.4"]


def test_wilson_intervals_are_unchanged() -> None:
    w = wilson_interval(17, 40)
    assert [w.estimate, w.low, w.high] == pytest.approx(PINNED["wilson_17_of_40"], abs=1e-12)
    assert [wilson_interval(0, 12).low, wilson_interval(0, 12).high] == pytest.approx(PINNED["wilson_0_of_12"])
    assert [wilson_interval(12, 12).low, wilson_interval(12, 12).high] == pytest.approx(PINNED["wilson_12_of_12"])


def test_calibration_numbers_are_unchanged() -> None:
    assert expected_calibration_error(Y, P) == pytest.approx(PINNED["ece_top_label"], abs=1e-12)
    assert expected_calibration_error(Y, P, mode="classwise") == pytest.approx(PINNED["ece_classwise"], abs=1e-12)
    assert reliability_bins(Y, P).count.tolist() == PINNED["reliability_counts"]
    assert brier_score(Y, P) == pytest.approx(PINNED["brier"], abs=1e-12)


def test_bootstrap_keeps_the_estimate_and_moves_bounds_by_resampling_noise_only() -> None:
    est, low, high = bootstrap_ci(lambda i: one_vs_rest_auc(Y[i], P[i]), Y, n_bootstrap=2000, seed=3)
    pinned = PINNED["bootstrap_ovr_auc"]
    assert est.tolist() == pytest.approx(pinned["estimate"], abs=1e-12)
    assert low.tolist() == pytest.approx(pinned["low"], abs=0.02)
    assert high.tolist() == pytest.approx(pinned["high"], abs=0.02)
