"""Classification metrics for evaluation: ROC AUC, bootstrap CIs, operating points, calibration.

numpy only (no torch, no scikit-learn), small enough to read and check by hand.

Conventions used throughout:

* ``labels`` are integer class indices, shape ``(n,)``; ``probabilities`` are
  shape ``(n, n_classes)`` with rows summing to 1.
* Binary functions take a boolean ``positive`` array (the truth) and a score or
  a boolean ``predicted`` array.
* A value that is undefined for the data (a rate with an empty denominator, an
  AUC with only one class present) is ``nan``, never an exception: evaluation
  reports should show "n/a", not crash on a small subgroup.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BinaryRates",
    "CalibrationMode",
    "Interval",
    "ReliabilityBins",
    "binary_rates",
    "bootstrap_ci",
    "brier_score",
    "confusion_matrix",
    "expected_calibration_error",
    "macro_auc",
    "one_vs_rest_auc",
    "operating_point",
    "predictive_values_at_prevalence",
    "reliability_bins",
    "roc_auc",
    "roc_curve",
    "wilson_interval",
]


def _binary_inputs(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(positive)
    sc = np.asarray(scores, dtype=np.float64)
    if pos.ndim != 1 or sc.shape != pos.shape:
        raise ValueError(
            f"positive and scores must be 1D arrays of equal length, not shapes {pos.shape} and {sc.shape}"
        )
    if pos.dtype != bool:
        if not np.isin(pos, (0, 1)).all():
            raise ValueError("positive must be boolean or 0/1")
        pos = pos.astype(bool)
    if not np.all(np.isfinite(sc)):
        raise ValueError("scores must be finite, not contain NaN or inf")
    return pos, sc


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (like scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    average = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic.

    Equals the probability that a random positive scores higher than a random
    negative, counting ties as one half. ``nan`` when either class is absent.

    Args:
        positive: truth, boolean or 0/1, shape ``(n,)``.
        scores: higher means more likely positive, shape ``(n,)``.

    Example:
        >>> roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])  # pairs: 1, 1, 0.5, 1 of 4
        0.875
    """
    pos, sc = _binary_inputs(np.asarray(positive), np.asarray(scores))
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(sc)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points, one per distinct score, from (0, 0) to (1, 1).

    Returns:
        ``(fpr, tpr, thresholds)``; point ``i`` calls positive every case with
        ``score >= thresholds[i]`` (the first threshold is ``+inf``). ``nan``
        rates when a class is absent.

    Example:
        >>> fpr, tpr, thr = roc_curve([1, 0, 1, 0], [0.8, 0.6, 0.4, 0.2])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    pos, sc = _binary_inputs(np.asarray(positive), np.asarray(scores))
    order = np.argsort(-sc, kind="mergesort")
    sc_sorted, pos_sorted = sc[order], pos[order]
    last_of_run = np.r_[sc_sorted[1:] != sc_sorted[:-1], True]
    tp = np.cumsum(pos_sorted)[last_of_run]
    fp = np.cumsum(~pos_sorted)[last_of_run]
    thresholds = np.r_[np.inf, sc_sorted[last_of_run]]
    n_pos, n_neg = pos.sum(), (~pos).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0, tp] / n_pos
        fpr = np.r_[0, fp] / n_neg
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds


def _check_multiclass(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (n, n_classes >= 2), not {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},) to match probabilities, not {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, not dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be in [0, {p.shape[1] - 1}], not range [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite, not contain NaN or inf")
    return y.astype(np.int64), p


def one_vs_rest_auc(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """ROC AUC of each class against all others, shape ``(n_classes,)``; ``nan`` for a class with no cases.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
        >>> one_vs_rest_auc(np.array([0, 1, 1]), p).tolist()
        [1.0, 1.0]
    """
    y, p = _check_multiclass(labels, probabilities)
    return np.array([roc_auc(y == k, p[:, k]) for k in range(p.shape[1])])


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Unweighted mean of the defined one-vs-rest AUCs; ``nan`` when none is defined.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
        >>> macro_auc(np.array([0, 1, 2, 1]), p)
        1.0
    """
    aucs = one_vs_rest_auc(labels, probabilities)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval (``nan`` bounds when not computable).

    Example:
        >>> Interval(0.9, 0.85, 0.95).format()
        '0.900 (0.850–0.950)'
    """

    estimate: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        """``estimate (low–high)``, ``n/a`` for nan."""

        def f(x: float) -> str:
            return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"

        if not math.isfinite(self.low) or not math.isfinite(self.high):
            return f(self.estimate)
        return f"{f(self.estimate)} ({f(self.low)}–{f(self.high)})"

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready dict with ``None`` for nan."""
        return {k: (None if not math.isfinite(v) else float(v)) for k, v in vars(self).items()}


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray | float],
    labels: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified percentile bootstrap confidence interval of a statistic of the cases.

    Each replicate resamples case indices with replacement **within each true
    class**, so every replicate keeps the class counts (and one-vs-rest AUCs
    stay defined). Replicates where the statistic is ``nan`` are ignored.

    Args:
        statistic: function of an index array (into the original cases)
            returning a float or a 1D array of floats.
        labels: integer class of each case, shape ``(n,)``; defines the strata.
        n_bootstrap: number of replicates (0 gives nan bounds).
        confidence: central coverage of the interval, e.g. 0.95.
        seed: seed of the numpy Generator; same seed, same interval.

    Returns:
        ``(estimate, low, high)`` as float64 arrays of the statistic's shape
        (0-d for a scalar statistic); the estimate is the statistic on all cases.

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 0, 0, 1, 1, 1])
        >>> s = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
        >>> est, lo, hi = bootstrap_ci(lambda i: roc_auc(y[i] == 1, s[i]), y, n_bootstrap=200)
        >>> bool(lo <= est <= hi), float(est)
        (True, 0.7777777777777778)
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1D array, not shape {y.shape}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, not {n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    estimate = np.asarray(statistic(np.arange(y.size)), dtype=np.float64)
    if n_bootstrap == 0:
        nan = np.full(estimate.shape, np.nan)
        return estimate, nan, nan.copy()
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(y == c) for c in np.unique(y)]
    replicates = np.empty((n_bootstrap, *estimate.shape))
    for b in range(n_bootstrap):
        idx = np.concatenate([s[rng.integers(0, s.size, s.size)] for s in strata])
        replicates[b] = statistic(idx)
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns give nan bounds
        low, high = np.nanquantile(replicates, [alpha, 1 - alpha], axis=0)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return estimate, low, high


def wilson_interval(successes: int, total: int, *, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion (``nan`` when ``total == 0``).

    Example:
        >>> wilson_interval(8, 10).format()
        '0.800 (0.490–0.943)'
    """
    if total < 0 or not 0 <= successes <= max(total, 0):
        raise ValueError(f"successes must be in [0, total], not {successes} of {total}")
    if total == 0:
        return Interval(math.nan, math.nan, math.nan)
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    phat = successes / total
    denom = 1 + z * z / total
    centre = (phat + z * z / (2 * total)) / denom
    half = z * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total)) / denom
    return Interval(phat, max(0.0, centre - half), min(1.0, centre + half))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of cases with true class ``i`` predicted as ``j``, shape ``(n_classes, n_classes)``.

    Example:
        >>> import numpy as np
        >>> confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), n_classes=3).tolist()
        [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predicted, dtype=np.int64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and predicted must be 1D of equal length, not shapes {y.shape} and {p.shape}")
    for name, arr in (("labels", y), ("predicted", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} must be in [0, {n_classes - 1}], not range [{arr.min()}, {arr.max()}]")
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass(frozen=True)
class BinaryRates:
    """Counts and rates of a binary decision against the truth (``nan`` for an empty denominator).

    Attributes:
        tp, fp, tn, fn: counts.
        sensitivity: tp / (tp + fn), the true positive rate (recall).
        specificity: tn / (tn + fp).
        ppv: tp / (tp + fp), positive predictive value (precision) at the sample prevalence.
        npv: tn / (tn + fn), negative predictive value at the sample prevalence.
    """

    tp: int
    fp: int
    tn: int
    fn: int

    @staticmethod
    def _ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    @property
    def sensitivity(self) -> float:
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return self._ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        return self._ratio(self.tn, self.tn + self.fn)

    @property
    def prevalence(self) -> float:
        """Fraction of positives in the sample."""
        return self._ratio(self.tp + self.fn, self.tp + self.fp + self.tn + self.fn)

    def at_prevalence(self, prevalence: float) -> tuple[float, float]:
        """``(ppv, npv)`` this sensitivity/specificity would give at another prevalence (Bayes)."""
        return predictive_values_at_prevalence(self.sensitivity, self.specificity, prevalence)


def binary_rates(positive: np.ndarray, predicted: np.ndarray) -> BinaryRates:
    """Confusion counts of a binary decision.

    Example:
        >>> r = binary_rates([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
        >>> r.sensitivity, r.specificity, r.ppv, r.npv
        (0.6666666666666666, 0.5, 0.6666666666666666, 0.5)
    """
    pos = np.asarray(positive).astype(bool)
    pred = np.asarray(predicted).astype(bool)
    if pos.shape != pred.shape or pos.ndim != 1:
        raise ValueError(f"positive and predicted must be 1D of equal length, not shapes {pos.shape} and {pred.shape}")
    return BinaryRates(
        tp=int((pos & pred).sum()),
        fp=int((~pos & pred).sum()),
        tn=int((~pos & ~pred).sum()),
        fn=int((pos & ~pred).sum()),
    )


def operating_point(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    positive_class: int,
    threshold: float | None = None,
) -> BinaryRates:
    """Binary rates of one class against the rest at an operating point.

    Args:
        labels: integer classes, shape ``(n,)``.
        probabilities: shape ``(n, n_classes)``.
        positive_class: index of the class treated as positive.
        threshold: call positive when ``probabilities[:, positive_class] >=
            threshold``; ``None`` calls positive when the class is the argmax.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.35, 0.35]])
        >>> y = np.array([1, 1, 0])
        >>> operating_point(y, p, positive_class=1).sensitivity
        0.5
        >>> operating_point(y, p, positive_class=1, threshold=0.3).specificity
        0.0
    """
    y, p = _check_multiclass(labels, probabilities)
    if not 0 <= positive_class < p.shape[1]:
        raise ValueError(f"positive_class must be in [0, {p.shape[1] - 1}], not {positive_class}")
    by_argmax = np.argmax(p, axis=1) == positive_class
    predicted = by_argmax if threshold is None else p[:, positive_class] >= threshold
    return binary_rates(y == positive_class, predicted)


def predictive_values_at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """PPV and NPV at a given prevalence by Bayes' rule.

    ``PPV = se·π / (se·π + (1−sp)(1−π))`` and ``NPV = sp(1−π) / (sp(1−π) + (1−se)π)``;
    ``nan`` when the denominator is 0 or an input is nan.

    Example:
        >>> ppv, npv = predictive_values_at_prevalence(0.9, 0.8, 0.1)
        >>> round(ppv, 4), round(npv, 4)
        (0.3333, 0.9863)
    """
    if not 0 <= prevalence <= 1:
        raise ValueError(f"prevalence must be in [0, 1], not {prevalence}")
    se, sp, pi = sensitivity, specificity, prevalence
    ppv_den = se * pi + (1 - sp) * (1 - pi)
    npv_den = sp * (1 - pi) + (1 - se) * pi
    ppv = se * pi / ppv_den if ppv_den > 0 else math.nan
    npv = sp * (1 - pi) / npv_den if npv_den > 0 else math.nan
    return float(ppv), float(npv)


class CalibrationMode(enum.StrEnum):
    """Which probabilities the calibration error looks at.

    * ``TOP_LABEL``: confidence = the largest probability of each case,
      correct = argmax equals the label (the ECE of Guo et al. 2017).
    * ``CLASSWISE``: every class probability of every case against
      "the label is this class"; the ECE is the mean over classes.
    """

    TOP_LABEL = "top_label"
    CLASSWISE = "classwise"


@dataclass(frozen=True)
class ReliabilityBins:
    """Reliability-diagram data in equal-width bins on [0, 1].

    Bin ``b`` holds confidences in ``[edges[b], edges[b+1])``; the last bin
    also holds 1.0. Empty bins have ``count == 0`` and nan means.

    Attributes:
        edges: shape ``(n_bins + 1,)``.
        count: cases per bin.
        mean_confidence: mean predicted probability per bin.
        observed: observed frequency (accuracy for top-label) per bin.
    """

    edges: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    observed: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of ``count/N * |observed - confidence|``."""
        total = self.count.sum()
        if total == 0:
            return math.nan
        filled = self.count > 0
        gaps = np.abs(self.observed[filled] - self.mean_confidence[filled])
        return float((self.count[filled] / total * gaps).sum())

    def to_dict(self) -> dict[str, list[float | None]]:
        """JSON-ready lists with ``None`` for empty bins."""

        def clean(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else float(v) for v in a]

        return {
            "edges": clean(self.edges),
            "count": [float(c) for c in self.count],
            "mean_confidence": clean(self.mean_confidence),
            "observed": clean(self.observed),
        }


def _bin_reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> ReliabilityBins:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.floor(confidence * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        observed = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins) / count
    return ReliabilityBins(edges, count, mean_conf, observed)


def reliability_bins(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    n_bins: int = 10,
    mode: CalibrationMode | str = CalibrationMode.TOP_LABEL,
    class_index: int | None = None,
) -> ReliabilityBins:
    """Reliability-diagram bins of top-label confidence, or of one class's probability.

    Args:
        labels: integer classes, shape ``(n,)``.
        probabilities: shape ``(n, n_classes)``.
        n_bins: number of equal-width bins on [0, 1].
        mode: ``top_label`` (max probability vs correct) or ``classwise``
            (needs ``class_index``: that class's probability vs label == class).
        class_index: the class for ``classwise``.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.95, 0.05], [0.65, 0.35], [0.4, 0.6]])
        >>> b = reliability_bins(np.array([0, 1, 1]), p, n_bins=2)
        >>> b.count.tolist(), b.observed.tolist()
        ([0, 3], [nan, 0.6666666666666666])
    """
    y, p = _check_multiclass(labels, probabilities)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, not {n_bins}")
    mode = CalibrationMode(mode)
    if mode is CalibrationMode.TOP_LABEL:
        return _bin_reliability(p.max(axis=1), np.argmax(p, axis=1) == y, n_bins)
    if class_index is None or not 0 <= class_index < p.shape[1]:
        raise ValueError(f"class_index must be in [0, {p.shape[1] - 1}] for classwise bins, not {class_index}")
    return _bin_reliability(p[:, class_index], y == class_index, n_bins)


def expected_calibration_error(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    n_bins: int = 10,
    mode: CalibrationMode | str = CalibrationMode.TOP_LABEL,
) -> float:
    """Expected calibration error with equal-width bins.

    ``TOP_LABEL`` (default): ``sum_b n_b/N * |accuracy_b - mean confidence_b|``
    over bins of the top-class probability. ``CLASSWISE``: the same for each
    class's probability against "label is this class", averaged over classes.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> y = np.array([0, 1, 0, 1])
        >>> round(expected_calibration_error(y, p, n_bins=2), 4)  # bin [0.5,1]: conf 0.775, acc 0.75
        0.025
    """
    mode = CalibrationMode(mode)
    if mode is CalibrationMode.TOP_LABEL:
        return reliability_bins(labels, probabilities, n_bins=n_bins, mode=mode).ece
    k = np.asarray(probabilities).shape[1]
    eces = [reliability_bins(labels, probabilities, n_bins=n_bins, mode=mode, class_index=c).ece for c in range(k)]
    return float(np.mean(eces))


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Multiclass Brier score: mean over cases of ``sum_k (p_k - 1[y == k])^2`` (0 is perfect, 2 is worst).

    Example:
        >>> import numpy as np
        >>> brier_score(np.array([0, 1]), np.array([[1.0, 0.0], [0.5, 0.5]]))
        0.25
    """
    y, p = _check_multiclass(labels, probabilities)
    if y.size == 0:
        return math.nan
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(axis=1).mean())
