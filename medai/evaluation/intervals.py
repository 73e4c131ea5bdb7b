"""Confidence intervals: the stratified percentile bootstrap (scipy) and the Wilson score interval (scipy).

:class:`Interval` is the point estimate with its bounds that reports show.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Interval", "bootstrap_ci", "wilson_interval"]


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
    stay defined). The resampling is :func:`scipy.stats.bootstrap`'s (one
    sample per class, unpaired); a class with a single case is kept as it is.
    The bounds are percentiles of the replicates where the statistic is not
    ``nan`` (a rate with an empty denominator in some replicates still gets an
    interval).

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
        >>> from medai.evaluation.metrics import roc_auc
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
    strata = [np.flatnonzero(y == c) for c in np.unique(y)]
    resampled = tuple(s for s in strata if s.size >= 2)
    fixed = np.concatenate([np.empty(0, np.int64), *(s for s in strata if s.size < 2)])
    if not resampled:
        nan = np.full(estimate.shape, np.nan)
        return estimate, nan, nan.copy()

    def replicate(*samples: np.ndarray) -> np.ndarray:
        return np.asarray(statistic(np.concatenate([*samples, fixed]).astype(np.int64)), dtype=np.float64)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nan or constant replicates: handled below
        result = stats.bootstrap(
            resampled,
            replicate,
            n_resamples=n_bootstrap,
            paired=False,
            vectorized=False,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        alpha = (1 - confidence) / 2
        low, high = np.nanquantile(result.bootstrap_distribution, [alpha, 1 - alpha], axis=-1)
    return estimate, np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)


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
    ci = stats.binomtest(successes, total).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / total, float(ci.low), float(ci.high))
