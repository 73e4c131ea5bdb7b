"""Temperature scaling and the decision rule that turns probabilities into a triage label.

This module is on the serving path: it uses numpy and scipy only, never torch.

* :func:`softmax` turns logits into probabilities, optionally divided by a
  temperature ``T`` first (``T > 1`` softens, ``T < 1`` sharpens).
* :func:`fit_temperature` finds the ``T`` that minimises the negative
  log-likelihood of held-out logits (Guo et al. 2017, "On calibration of modern
  neural networks"). Fit it on the **validation** split, never on the test
  split that later reports the calibration.
* :class:`DecisionRule` is the frozen, documented rule that maps one case's
  calibrated probabilities to ``(label, indeterminate)``. It travels inside the
  checkpoint and the exported model (``to_dict``/``from_dict``), so training,
  evaluation and serving apply the same rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize

from medai.labels import CLASS_NAMES

__all__ = [
    "DecisionRule",
    "fit_temperature",
    "log_softmax",
    "nll",
    "softmax",
]

log = logging.getLogger(__name__)


#: Search range for the temperature (the optimiser works on log T within it).
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)


def _check_logits(logits: np.ndarray) -> np.ndarray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] < 2:
        raise ValueError(
            f"logits must have shape (n_classes,) or (n, n_classes) with n_classes >= 2, not {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("logits must be finite, not contain NaN or inf")
    return array


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a positive finite number, not {temperature!r}")
    return value


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable ``log(softmax(logits / temperature))`` over the last axis.

    Args:
        logits: shape ``(n_classes,)`` or ``(n, n_classes)``.
        temperature: positive divisor applied to the logits first.

    Returns:
        float64 array of the same shape.

    Example:
        >>> import numpy as np
        >>> np.round(np.exp(log_softmax(np.array([0.0, 0.0]))), 3)
        array([0.5, 0.5])
    """
    scaled = _check_logits(logits) / _check_temperature(temperature)
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``softmax(logits / temperature)`` over the last axis.

    Args:
        logits: shape ``(n_classes,)`` or ``(n, n_classes)``.
        temperature: positive divisor applied to the logits first; the value
            fitted by :func:`fit_temperature` gives calibrated probabilities.

    Returns:
        float64 array of the same shape whose rows sum to 1.

    Example:
        >>> import numpy as np
        >>> np.round(softmax(np.array([2.0, 0.0]), temperature=2.0), 3)
        array([0.731, 0.269])
    """
    return np.exp(log_softmax(logits, temperature))


def _check_labels(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the logits, not {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, not dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(
            f"labels must be class indices in [0, {n_classes - 1}], not range [{array.min()}, {array.max()}]"
        )
    return array.astype(np.int64)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of integer labels under ``softmax(logits / T)``.

    Example:
        >>> import numpy as np
        >>> round(nll(np.array([[0.0, 0.0]]), np.array([1])), 4)
        0.6931
    """
    logp = log_softmax(logits, temperature)
    if logp.ndim != 2:
        raise ValueError(f"logits must have shape (n, n_classes), not {logp.shape}")
    y = _check_labels(labels, logp.shape[0], logp.shape[1])
    if y.size == 0:
        raise ValueError("logits must contain at least one case, not 0")
    return float(-logp[np.arange(y.size), y].mean())


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """Fit the temperature ``T`` that minimises the NLL of ``softmax(logits / T)``.

    The search runs over ``log T`` with bounded Brent minimisation (the NLL is
    convex in ``1/T``, hence unimodal in ``log T``), then the bounds and
    ``T = 1`` are compared with the optimum so a flat or degenerate objective
    never returns something worse than no scaling. Use the validation split.

    Args:
        logits: uncalibrated logits, shape ``(n, n_classes)``.
        labels: integer class indices, shape ``(n,)``.
        bounds: ``(min_T, max_T)`` search range.

    Returns:
        The fitted temperature (``1.0`` when scaling does not lower the NLL).

    Raises:
        ValueError: on empty, non-finite or mismatched inputs, or bad bounds.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> true = rng.normal(scale=2.0, size=(2000, 3))  # calibrated logits
        >>> y = np.array([rng.choice(3, p=p) for p in softmax(true)])
        >>> round(fit_temperature(3.0 * true, y), 1)  # overconfident by 3x
        3.0
    """
    array = _check_logits(logits)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"logits must have shape (n, n_classes) with n >= 1, not {array.shape}")
    y = _check_labels(labels, array.shape[0], array.shape[1])
    low, high = (float(b) for b in bounds)
    if not (0 < low < 1 < high) or not math.isfinite(high):
        raise ValueError(f"bounds must satisfy 0 < min_T < 1 < max_T, not {bounds}")
    rows = np.arange(y.size)

    def objective(log_t: float) -> float:
        logp = log_softmax(array, math.exp(log_t))
        return float(-logp[rows, y].mean())

    candidates = [0.0, math.log(low), math.log(high)]
    try:
        result = optimize.minimize_scalar(
            objective, bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-5}
        )
        if np.isfinite(result.fun):
            candidates.append(float(result.x))
    except (ValueError, FloatingPointError) as exc:  # pragma: no cover - defensive; objective is smooth
        log.warning("temperature optimisation failed (%s); falling back to the best of T=1 and the bounds", exc)
    values = [objective(c) for c in candidates]
    best = candidates[int(np.argmin(values))]
    if values[0] <= min(values) + 1e-12:
        best = 0.0  # prefer no scaling when it is as good as anything else
    temperature = math.exp(best)
    if best in (math.log(low), math.log(high)) or abs(temperature - low) < 1e-3 or abs(temperature - high) < 1e-2:
        log.warning(
            "fitted temperature %.4g is at the search bound %s; the logits may be degenerate", temperature, bounds
        )
    log.info("fitted temperature %.4f (NLL %.4f -> %.4f)", temperature, values[0], objective(best))
    return temperature


@dataclass(frozen=True)
class DecisionRule:
    """How one case's calibrated probabilities become a triage label, and when to say "indeterminate".

    The rule, applied to probabilities from ``softmax(logits, temperature)``:

    1. ``p = probabilities[positive_class]``. The label is ``positive_class``
       when ``p >= threshold``; otherwise it is the most probable of the other
       classes.
    2. The case is **indeterminate** when ``p`` lies strictly inside the band
       ``(threshold - band_half_width, threshold + band_half_width)``, or when
       the largest class probability is below ``min_top_probability``.
       Points exactly on a band edge are decided, not indeterminate. With
       ``band_half_width=0`` and ``min_top_probability=0`` no case is
       indeterminate.

    The label is always returned (the best guess); the flag says whether a
    reader should treat it as "no call". The rule is frozen and stored with the
    model (``to_dict``/``from_dict``) so that evaluation and serving agree.

    Attributes:
        class_names: class order of the model output.
        positive_class: the class the threshold applies to (the triage target).
        threshold: probability of ``positive_class`` at or above which it is called.
        band_half_width: half-width of the indeterminate band around ``threshold``.
        min_top_probability: below this top-class probability the case is indeterminate.

    Example:
        >>> rule = DecisionRule(threshold=0.5, band_half_width=0.1)
        >>> rule.decide([0.2, 0.7, 0.1])
        ('covid19', False)
        >>> rule.decide([0.45, 0.55, 0.0])
        ('covid19', True)
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    positive_class: str = "covid19"
    threshold: float = 0.5
    band_half_width: float = 0.1
    min_top_probability: float = 0.0

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"class_names must be at least two distinct names, not {self.class_names!r}")
        object.__setattr__(self, "class_names", names)
        if self.positive_class not in names:
            raise ValueError(f"positive_class must be one of {names}, not {self.positive_class!r}")
        for name in ("threshold", "band_half_width", "min_top_probability"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), not {self.threshold}")
        if not 0.0 <= self.band_half_width < 0.5:
            raise ValueError(f"band_half_width must be in [0, 0.5), not {self.band_half_width}")
        if not 0.0 <= self.min_top_probability <= 1.0:
            raise ValueError(f"min_top_probability must be in [0, 1], not {self.min_top_probability}")

    @property
    def positive_index(self) -> int:
        """Index of ``positive_class`` in ``class_names``."""
        return self.class_names.index(self.positive_class)

    def _check(self, probabilities: np.ndarray, ndim: int) -> np.ndarray:
        array = np.asarray(probabilities, dtype=np.float64)
        k = len(self.class_names)
        if array.ndim != ndim or array.shape[-1] != k:
            expected = f"({k},)" if ndim == 1 else f"(n, {k})"
            raise ValueError(f"probabilities must have shape {expected}, not {array.shape}")
        if not np.all(np.isfinite(array)) or array.min(initial=0.0) < 0 or array.max(initial=0.0) > 1 + 1e-9:
            raise ValueError("probabilities must be finite values in [0, 1]")
        return array

    def decide(self, probabilities: Sequence[float] | np.ndarray) -> tuple[str, bool]:
        """Apply the rule to one case.

        Args:
            probabilities: calibrated class probabilities, shape ``(n_classes,)``.

        Returns:
            ``(label, indeterminate)``.

        Example:
            >>> DecisionRule(min_top_probability=0.6, band_half_width=0.0).decide([0.5, 0.1, 0.4])
            ('normal', True)
        """
        labels, flags = self.decide_batch(self._check(np.asarray(probabilities), 1)[None, :])
        return labels[0], bool(flags[0])

    def decide_batch(self, probabilities: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Apply the rule to many cases, shape ``(n, n_classes)``; returns (labels, indeterminate bool array).

        Example:
            >>> import numpy as np
            >>> DecisionRule().decide_batch(np.array([[0.9, 0.05, 0.05], [0.1, 0.3, 0.6]]))
            (['normal', 'other_pneumonia'], array([False, False]))
        """
        return self._decide_indices(probabilities)[1:]

    def decide_indices(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`decide_batch` but returns class indices ``(n,)`` and the indeterminate flags.

        Example:
            >>> import numpy as np
            >>> DecisionRule().decide_indices(np.array([[0.3, 0.5, 0.2]]))
            (array([1]), array([ True]))
        """
        indices, _, flags = self._decide_indices(probabilities)
        return indices, flags

    def _decide_indices(self, probabilities: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
        array = self._check(probabilities, 2)
        pos = self.positive_index
        p = array[:, pos]
        others = array.copy()
        others[:, pos] = -np.inf
        indices = np.where(p >= self.threshold, pos, np.argmax(others, axis=1)).astype(np.int64)
        low, high = self.threshold - self.band_half_width, self.threshold + self.band_half_width
        in_band = (p > low) & (p < high)
        flags = in_band | (array.max(axis=1) < self.min_top_probability)
        return indices, [self.class_names[i] for i in indices], flags

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` restores the rule.

        Example:
            >>> DecisionRule.from_dict(DecisionRule().to_dict()) == DecisionRule()
            True
        """
        return {
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            "band_half_width": self.band_half_width,
            "min_top_probability": self.min_top_probability,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionRule:
        """Rebuild a rule from :meth:`to_dict` output; unknown keys are an error, missing keys take defaults.

        Example:
            >>> DecisionRule.from_dict({"threshold": 0.3}).threshold
            0.3
        """
        known = {"class_names", "positive_class", "threshold", "band_half_width", "min_top_probability"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"decision rule keys must be among {sorted(known)}, not {sorted(unknown)}")
        kwargs = dict(data)
        if "class_names" in kwargs:
            kwargs["class_names"] = tuple(kwargs["class_names"])
        return cls(**kwargs)
