"""Calibration: reliability-diagram bins, expected calibration error, Brier score.

The reliability bins stay medai's own (about 40 lines): scikit-learn's ``calibration_curve`` drops empty bins
and returns no counts, and the ECE needs both. The Brier score is scikit-learn's ``brier_score_loss``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import brier_score_loss

from medai.evaluation.metrics import check_multiclass

__all__ = [
    "CalibrationMode",
    "ReliabilityBins",
    "brier_score",
    "ece_if_calibrated",
    "expected_calibration_error",
    "reliability_bins",
]


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
    y, p = check_multiclass(labels, probabilities)
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


def ece_if_calibrated(
    probabilities: np.ndarray, *, n_bins: int = 10, n_draws: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(median, 95th percentile) of the top-label ECE that a perfectly calibrated model would show here.

    The ECE of a finite set of cases is biased upwards: with few cases per bin the observed accuracy scatters
    around the confidence even when the probabilities are exact. This draws each case's label from its own
    predicted probabilities ``n_draws`` times (the model is then calibrated by construction) and measures the
    ECE of each draw, on the same confidences and bins. An observed ECE inside this range cannot be told
    from sampling noise; a target below its median cannot be shown on this many cases at all.

    Example:
        >>> p = np.tile([0.8, 0.1, 0.1], (60, 1))
        >>> median, high = ece_if_calibrated(p, n_draws=500)
        >>> 0.02 < median < 0.08 < high
        True
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must be (n_cases, n_classes) with n_cases >= 1, not shape {p.shape}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, not {n_draws}")
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    draws = rng.random((n_draws, p.shape[0], 1))
    labels = np.minimum((draws > cumulative[None]).sum(axis=2), p.shape[1] - 1)
    eces = [reliability_bins(y, p, n_bins=n_bins).ece for y in labels]
    return float(np.median(eces)), float(np.percentile(eces, 95))


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Multiclass Brier score: mean over cases of ``sum_k (p_k - 1[y == k])^2`` (0 is perfect, 2 is worst).

    Example:
        >>> import numpy as np
        >>> brier_score(np.array([0, 1]), np.array([[1.0, 0.0], [0.5, 0.5]]))
        0.25
    """
    y, p = check_multiclass(labels, probabilities)
    if y.size == 0:
        return math.nan
    return float(brier_score_loss(y, p, labels=np.arange(p.shape[1]), scale_by_half=False))
