"""Discrimination and decisions: ROC AUC and curves, confusion matrices, operating points, prevalence.

The arithmetic is scikit-learn's (``roc_auc_score``, ``roc_curve``, ``confusion_matrix``); what is left here
is medai's conventions around it and what no library has in this form (one-vs-rest AUCs that tolerate an
absent class, an operating point of one class against the rest, predictive values at another prevalence).
Confidence intervals are in :mod:`medai.evaluation.intervals`, calibration in
:mod:`medai.evaluation.reliability`.

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

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "BinaryRates",
    "binary_rates",
    "check_multiclass",
    "confusion_matrix",
    "macro_auc",
    "one_vs_rest_auc",
    "operating_point",
    "predictive_values_at_prevalence",
    "roc_auc",
    "roc_curve",
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
    if pos.all() or not pos.any():
        return math.nan
    return float(skm.roc_auc_score(pos, sc))


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
    if pos.size == 0:
        return np.array([0.0]), np.array([0.0]), np.array([np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", skm._ranking.UndefinedMetricWarning)  # one class only: nan rates
        fpr, tpr, thresholds = skm.roc_curve(pos, sc, drop_intermediate=False)
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds


def check_multiclass(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` as int64 class indices and ``probabilities`` as float64 ``(n, n_classes)``, both checked."""
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
    y, p = check_multiclass(labels, probabilities)
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
    if y.size == 0:  # scikit-learn refuses empty input
        return np.zeros((n_classes, n_classes), np.int64)
    return skm.confusion_matrix(y, p, labels=np.arange(n_classes)).astype(np.int64)


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
    if pos.size == 0:  # scikit-learn refuses empty input
        return BinaryRates(tp=0, fp=0, tn=0, fn=0)
    tn, fp, fn, tp = skm.confusion_matrix(pos, pred, labels=[False, True]).ravel()
    return BinaryRates(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn))


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
    y, p = check_multiclass(labels, probabilities)
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
