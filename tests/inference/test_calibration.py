"""Temperature scaling and the decision rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medai.evaluation.reliability import expected_calibration_error
from medai.inference.calibration import DecisionRule, fit_temperature, nll, softmax


@pytest.fixture
def calibrated_toy() -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution, labels drawn from it."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(1500, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    return logits, labels


def test_softmax_rows_sum_to_one_and_are_stable() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]))
    assert np.allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] == pytest.approx(1.0)
    assert softmax(np.array([2.0, 0.0]), temperature=2.0)[0] == pytest.approx(1 / (1 + np.exp(-1.0)))
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        softmax(np.array([1.0, 0.0]), temperature=0.0)
    with pytest.raises(ValueError, match="logits must be finite"):
        softmax(np.array([np.nan, 0.0]))


def test_temperature_scaling_fixes_overconfident_logits(calibrated_toy: tuple[np.ndarray, np.ndarray]) -> None:
    logits, labels = calibrated_toy
    overconfident = 3.0 * logits
    fit, test = slice(0, 750), slice(750, None)  # fit on one half ("validation"), measure on the other
    temperature = fit_temperature(overconfident[fit], labels[fit])
    assert 2.4 < temperature < 3.6
    before = softmax(overconfident[test])
    after = softmax(overconfident[test], temperature)
    ece_before = expected_calibration_error(labels[test], before)
    ece_after = expected_calibration_error(labels[test], after)
    assert ece_after < 0.5 * ece_before
    assert nll(overconfident[test], labels[test], temperature) < nll(overconfident[test], labels[test])


def test_temperature_of_calibrated_and_underconfident_logits(calibrated_toy: tuple[np.ndarray, np.ndarray]) -> None:
    logits, labels = calibrated_toy
    assert 0.85 < fit_temperature(logits, labels) < 1.15
    assert fit_temperature(0.3 * logits, labels) < 0.45


def test_fit_temperature_degenerate_and_invalid_inputs() -> None:
    labels = np.array([0, 1, 2, 0])
    assert fit_temperature(np.zeros((4, 3)), labels) == 1.0  # flat objective: no scaling
    with pytest.raises(ValueError, match="logits must be finite"):
        fit_temperature(np.array([[np.inf, 0.0, 0.0]] * 4), labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        fit_temperature(np.zeros((4, 3)), labels[:3])
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\]"):
        fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        fit_temperature(np.zeros((4, 3)), labels.astype(float))
    with pytest.raises(ValueError, match="bounds must satisfy"):
        fit_temperature(np.zeros((4, 3)), labels, bounds=(2.0, 5.0))


def test_fit_temperature_separable_data_stays_within_bounds() -> None:
    labels = np.array([0, 1, 2] * 5)
    logits = 5.0 * np.eye(3)[labels]  # always right: NLL keeps falling as T shrinks
    temperature = fit_temperature(logits, labels, bounds=(0.1, 10.0))
    assert 0.1 <= temperature < 0.2


# --------------------------------------------------------------------------- DecisionRule


@pytest.fixture
def rule() -> DecisionRule:
    return DecisionRule(threshold=0.5, band_half_width=0.1)


def test_decide_positive_negative_and_band(rule: DecisionRule) -> None:
    assert rule.decide([0.2, 0.7, 0.1]) == ("covid19", False)
    assert rule.decide([0.3, 0.2, 0.5]) == ("other_pneumonia", False)
    assert rule.decide([0.45, 0.55, 0.0]) == ("covid19", True)  # inside (0.4, 0.6)
    assert rule.decide([0.5, 0.45, 0.05]) == ("normal", True)


def test_decide_band_edges_are_decided(rule: DecisionRule) -> None:
    assert rule.decide([0.4, 0.6, 0.0]) == ("covid19", False)  # upper edge: decided positive
    assert rule.decide([0.6, 0.4, 0.0]) == ("normal", False)  # lower edge: decided negative
    assert rule.decide([0.3, 0.5, 0.2]) == ("covid19", True)  # exactly at the threshold: positive, in band


def test_decide_without_band_never_indeterminate() -> None:
    strict = DecisionRule(threshold=0.5, band_half_width=0.0)
    assert strict.decide([0.5, 0.5, 0.0]) == ("covid19", False)
    assert strict.decide([0.5, 0.4999, 0.0001]) == ("normal", False)


def test_below_threshold_picks_best_other_class_even_if_positive_is_top() -> None:
    high = DecisionRule(threshold=0.6, band_half_width=0.0)
    assert high.decide([0.3, 0.45, 0.25]) == ("normal", False)


def test_min_top_probability_makes_flat_cases_indeterminate() -> None:
    cautious = DecisionRule(band_half_width=0.0, min_top_probability=0.6)
    assert cautious.decide([0.5, 0.1, 0.4]) == ("normal", True)
    assert cautious.decide([0.6, 0.1, 0.3]) == ("normal", False)


def test_decide_batch_matches_decide(rule: DecisionRule) -> None:
    probs = softmax(np.random.default_rng(1).normal(size=(20, 3)) * 2)
    labels, flags = rule.decide_batch(probs)
    assert [(label, bool(flag)) for label, flag in zip(labels, flags, strict=True)] == [rule.decide(p) for p in probs]
    indices, flags2 = rule.decide_indices(probs)
    assert [rule.class_names[i] for i in indices] == labels and np.array_equal(flags, flags2)


def test_decision_rule_validation() -> None:
    with pytest.raises(ValueError, match="positive_class must be one of"):
        DecisionRule(positive_class="flu")
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        DecisionRule(threshold=1.0)
    with pytest.raises(ValueError, match=r"band_half_width must be in \[0, 0.5\)"):
        DecisionRule(band_half_width=0.5)
    with pytest.raises(ValueError, match="min_top_probability must be in"):
        DecisionRule(min_top_probability=1.2)
    with pytest.raises(ValueError, match="class_names must be at least two distinct names"):
        DecisionRule(class_names=("covid19", "covid19"))
    with pytest.raises(ValueError, match=r"probabilities must have shape \(3,\)"):
        DecisionRule().decide([0.5, 0.5])
    with pytest.raises(ValueError, match="finite values in"):
        DecisionRule().decide([0.5, np.nan, 0.5])


def test_decision_rule_round_trips_through_json() -> None:
    rule = DecisionRule(threshold=0.35, band_half_width=0.05, min_top_probability=0.4)
    restored = DecisionRule.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert restored == rule
    with pytest.raises(ValueError, match="decision rule keys must be among"):
        DecisionRule.from_dict({"threshold": 0.5, "cutoff": 0.2})
