"""Evaluate a model on labelled cases: discrimination, operating points, calibration, subgroups.

Two layers:

* :func:`evaluate_predictions` is the core. It takes labels and logits (plain
  arrays, no model) and returns an :class:`EvaluationResult` with every number
  of the report: one-vs-rest ROC AUC per class and macro AUC with stratified
  bootstrap 95% CIs, sensitivity/specificity/PPV/NPV at the operating points
  (argmax of calibrated probabilities; the decision rule's threshold) and at a
  user-given prevalence, confusion matrices, the indeterminate rate, ECE/NLL/Brier
  before and after temperature scaling with reliability bins, and subgroup
  metrics with their sizes.
* :mod:`medai.evaluation.run` is the thin model-running part (``medai
  evaluate``): it loads each case, runs the shared preprocessing and the model,
  and turns a case that fails into an error row instead of stopping.

Subgroup metrics live in :mod:`medai.evaluation.subgroups`; the report files (HTML,
JSON, CSV) are written by :mod:`medai.evaluation.report`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medai.evaluation.intervals import Interval, bootstrap_ci
from medai.evaluation.metrics import BinaryRates, binary_rates, confusion_matrix, one_vs_rest_auc, roc_curve
from medai.evaluation.reliability import (
    CalibrationMode,
    ReliabilityBins,
    brier_score,
    expected_calibration_error,
    reliability_bins,
)
from medai.evaluation.subgroups import SubgroupResult, subgroup_metrics
from medai.inference.calibration import DecisionRule, nll, softmax

__all__ = [
    "CaseError",
    "EvaluationResult",
    "OperatingPoint",
    "evaluate_predictions",
]

log = logging.getLogger(__name__)

#: Maximum number of points kept per ROC curve for plotting (the AUC uses all cases).
MAX_ROC_POINTS = 400


@dataclass(frozen=True)
class CaseError:
    """A case that could not be scored: listed in the report, excluded from every metric."""

    case_id: str
    message: str
    label: str = ""


@dataclass(frozen=True)
class OperatingPoint:
    """One binary decision (a class against the rest) and its rates with bootstrap CIs.

    Attributes:
        name: what the decision is, e.g. ``"argmax"`` or ``"threshold 0.50"``.
        positive_class: the class treated as positive.
        threshold: probability threshold, or ``None`` for argmax.
        counts: confusion counts (tp, fp, tn, fn) on the cases used.
        n_excluded: cases left out (indeterminate ones for "decided only").
        sensitivity, specificity, ppv, npv: rates at the sample prevalence.
        ppv_at_prevalence, npv_at_prevalence: by Bayes at the user-given
            prevalence (``None`` when no prevalence applies to this class).
    """

    name: str
    positive_class: str
    threshold: float | None
    counts: BinaryRates
    n_excluded: int
    sensitivity: Interval
    specificity: Interval
    ppv: Interval
    npv: Interval
    ppv_at_prevalence: Interval | None = None
    npv_at_prevalence: Interval | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """Everything the evaluation report shows; :meth:`to_dict` is the ``metrics.json`` content.

    Probabilities are ``softmax(logits, temperature)`` (calibrated) unless a
    field says "before". Per-case arrays are in case order.
    """

    class_names: tuple[str, ...]
    temperature: float
    decision_rule: DecisionRule
    prevalence: float | None
    n_bootstrap: int
    seed: int
    min_subgroup_size: int
    case_ids: tuple[str, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    probabilities_before: np.ndarray
    predicted: np.ndarray
    decided: np.ndarray
    indeterminate: np.ndarray
    auc: dict[str, Interval]
    macro_auc: Interval
    roc: dict[str, tuple[list[float], list[float]]]
    operating_points: list[OperatingPoint]
    confusion_argmax: np.ndarray
    confusion_decision: np.ndarray
    accuracy: Interval
    indeterminate_by_class: dict[str, float]
    calibration: dict[str, float]
    reliability_before: ReliabilityBins
    reliability_after: ReliabilityBins
    subgroups: list[SubgroupResult]
    subgroup_values: dict[str, list[str]]
    errors: list[CaseError] = field(default_factory=list)

    @property
    def n_cases(self) -> int:
        """Cases with predictions (errors excluded)."""
        return int(self.labels.size)

    @property
    def n_per_class(self) -> dict[str, int]:
        """Cases per true class."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    @property
    def indeterminate_rate(self) -> float:
        """Fraction of cases the decision rule calls indeterminate."""
        return float(self.indeterminate.mean()) if self.indeterminate.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (nan becomes ``None``); per-case values are in ``predictions.csv``, not here."""
        return _jsonable(
            {
                "class_names": list(self.class_names),
                "n_cases": self.n_cases,
                "n_errors": len(self.errors),
                "n_per_class": self.n_per_class,
                "temperature": self.temperature,
                "decision_rule": self.decision_rule.to_dict(),
                "prevalence": self.prevalence,
                "bootstrap": {"n": self.n_bootstrap, "seed": self.seed, "confidence": 0.95, "stratified": True},
                "auc": {k: v.to_dict() for k, v in self.auc.items()},
                "macro_auc": self.macro_auc.to_dict(),
                "accuracy": self.accuracy.to_dict(),
                "operating_points": [_operating_point_dict(op) for op in self.operating_points],
                "confusion_matrix": {
                    "rows": "true class",
                    "columns": "predicted class",
                    "argmax": self.confusion_argmax.tolist(),
                    "decision_rule": self.confusion_decision.tolist(),
                },
                "indeterminate": {"rate": self.indeterminate_rate, "by_true_class": self.indeterminate_by_class},
                "calibration": {
                    **self.calibration,
                    "reliability_before": self.reliability_before.to_dict(),
                    "reliability_after": self.reliability_after.to_dict(),
                },
                "min_subgroup_size": self.min_subgroup_size,
                "subgroups": [s.to_dict() for s in self.subgroups],
                "errors": [vars(e) for e in self.errors],
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _operating_point_dict(op: OperatingPoint) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": op.name,
        "positive_class": op.positive_class,
        "threshold": op.threshold,
        "counts": {"tp": op.counts.tp, "fp": op.counts.fp, "tn": op.counts.tn, "fn": op.counts.fn},
        "n_excluded": op.n_excluded,
    }
    for key in ("sensitivity", "specificity", "ppv", "npv", "ppv_at_prevalence", "npv_at_prevalence"):
        interval = getattr(op, key)
        out[key] = interval.to_dict() if interval is not None else None
    return out


def _interval(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, i: int | None = None) -> Interval:
    if i is None:
        return Interval(float(estimate), float(low), float(high))
    return Interval(float(estimate[i]), float(low[i]), float(high[i]))


def _rates_vector(positive: np.ndarray, called: np.ndarray, prevalence: float | None) -> np.ndarray:
    r = binary_rates(positive, called)
    ppv_p, npv_p = (math.nan, math.nan) if prevalence is None else r.at_prevalence(prevalence)
    return np.array([r.sensitivity, r.specificity, r.ppv, r.npv, ppv_p, npv_p])


def _operating_point(
    name: str,
    labels: np.ndarray,
    positive: int,
    called: np.ndarray,
    keep: np.ndarray,
    *,
    class_names: Sequence[str],
    threshold: float | None,
    prevalence: float | None,
    n_bootstrap: int,
    seed: int,
) -> OperatingPoint:
    """Rates of ``called`` (bool per case) for class ``positive``, on the cases where ``keep``."""
    is_pos = labels == positive

    def stat(idx: np.ndarray) -> np.ndarray:
        idx = idx[keep[idx]]
        return _rates_vector(is_pos[idx], called[idx], prevalence)

    est, low, high = bootstrap_ci(stat, labels, n_bootstrap=n_bootstrap, seed=seed)
    iv = [_interval(est, low, high, i) for i in range(6)]
    return OperatingPoint(
        name=name,
        positive_class=class_names[positive],
        threshold=threshold,
        counts=binary_rates(is_pos[keep], called[keep]),
        n_excluded=int((~keep).sum()),
        sensitivity=iv[0],
        specificity=iv[1],
        ppv=iv[2],
        npv=iv[3],
        ppv_at_prevalence=iv[4] if prevalence is not None else None,
        npv_at_prevalence=iv[5] if prevalence is not None else None,
    )


def _thin_curve(fpr: np.ndarray, tpr: np.ndarray) -> tuple[list[float], list[float]]:
    if fpr.size > MAX_ROC_POINTS:
        keep = np.unique(np.linspace(0, fpr.size - 1, MAX_ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [float(x) for x in fpr], [float(y) for y in tpr]


def evaluate_predictions(
    labels: np.ndarray,
    logits: np.ndarray,
    *,
    temperature: float,
    class_names: Sequence[str],
    subgroups: Mapping[str, Sequence[str]] | None = None,
    prevalence: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    decision_rule: DecisionRule | None = None,
    min_subgroup_size: int = 20,
    n_bins: int = 10,
    case_ids: Sequence[str] | None = None,
    errors: Sequence[CaseError] = (),
) -> EvaluationResult:
    """Compute every metric of the evaluation report from labels and logits.

    Args:
        labels: integer true class per case, shape ``(n,)``.
        logits: model logits, shape ``(n, n_classes)``.
        temperature: temperature fitted on the validation split (from the
            checkpoint); probabilities are ``softmax(logits, temperature)``.
        class_names: names of the model's output classes, in order.
        subgroups: grouping variable -> group value per case (strings), e.g.
            ``{"slice_thickness": ["<= 1.5 mm", ...]}``.
        prevalence: prevalence of the decision rule's positive class in the
            target population, for PPV/NPV by Bayes; ``None`` to skip.
        n_bootstrap: stratified bootstrap replicates for the 95% CIs (0: none).
        seed: bootstrap seed.
        decision_rule: threshold/indeterminate rule (default: ``DecisionRule``
            with these class names).
        min_subgroup_size: subgroups smaller than this are listed with their
            size but no metrics.
        n_bins: equal-width bins for ECE and the reliability diagram.
        case_ids: one id per case (default ``case-0``, ``case-1``, ...).
        errors: cases that could not be scored (reported, not counted).

    Returns:
        The :class:`EvaluationResult`.

    Raises:
        ValueError: on inconsistent shapes, bad labels or parameters.

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 1, 2, 0, 1, 2])
        >>> logits = 3.0 * np.eye(3)[y] + np.linspace(0, 1, 18).reshape(6, 3)
        >>> r = evaluate_predictions(y, logits, temperature=1.0, class_names=("normal", "covid19", "other_pneumonia"),
        ...                          n_bootstrap=50)
        >>> r.macro_auc.estimate, int(r.confusion_argmax.trace())
        (1.0, 6)
    """
    names = tuple(str(c) for c in class_names)
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] != len(names):
        raise ValueError(f"logits must have shape (n, {len(names)}) for classes {names}, not {z.shape}")
    if y.shape != (z.shape[0],) or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels must be {z.shape[0]} integer class indices, not shape {y.shape} dtype {y.dtype}")
    if z.shape[0] < 2:
        raise ValueError(f"evaluation needs at least 2 scored cases, not {z.shape[0]}")
    if y.min() < 0 or y.max() >= len(names):
        raise ValueError(f"labels must be in [0, {len(names) - 1}], not range [{y.min()}, {y.max()}]")
    y = y.astype(np.int64)
    if prevalence is not None and not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), not {prevalence}")
    if min_subgroup_size < 1:
        raise ValueError(f"min_subgroup_size must be >= 1, not {min_subgroup_size}")
    rule = decision_rule if decision_rule is not None else DecisionRule(class_names=names)
    if rule.class_names != names:
        raise ValueError(f"decision rule class_names must be {names}, not {rule.class_names}")
    ids = tuple(str(c) for c in case_ids) if case_ids is not None else tuple(f"case-{i}" for i in range(y.size))
    if len(ids) != y.size:
        raise ValueError(f"case_ids must have {y.size} entries, not {len(ids)}")
    groups = {str(k): [str(v) for v in vals] for k, vals in (subgroups or {}).items()}
    for key, vals in groups.items():
        if len(vals) != y.size:
            raise ValueError(f"subgroup {key!r} must have {y.size} values, not {len(vals)}")

    k = len(names)
    p_before = softmax(z, 1.0)
    p = softmax(z, temperature)
    predicted = np.argmax(p, axis=1)
    decided, indeterminate = rule.decide_indices(p)
    present = np.bincount(y, minlength=k) > 0
    if present.sum() < 2:
        log.warning("only one class present among the labels; AUCs are undefined")

    def auc_stat(idx: np.ndarray) -> np.ndarray:
        per_class = one_vs_rest_auc(y[idx], p[idx])
        macro = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else math.nan
        return np.r_[per_class, macro]

    est, low, high = bootstrap_ci(auc_stat, y, n_bootstrap=n_bootstrap, seed=seed)
    auc = {names[i]: _interval(est, low, high, i) for i in range(k)}
    macro = _interval(est, low, high, k)
    roc = {}
    for i in range(k):
        if present[i] and (y != i).any():
            fpr, tpr, _ = roc_curve(y == i, p[:, i])
            roc[names[i]] = _thin_curve(fpr, tpr)

    everyone = np.ones(y.size, dtype=bool)
    pos = rule.positive_index
    called = p[:, pos] >= rule.threshold

    def op(name: str, positive: int, calls: np.ndarray, keep: np.ndarray, threshold: float | None) -> OperatingPoint:
        return _operating_point(
            name,
            y,
            positive,
            calls,
            keep,
            class_names=names,
            threshold=threshold,
            prevalence=prevalence if positive == pos else None,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )

    ops = [op("argmax", i, predicted == i, everyone, None) for i in range(k)]
    ops.append(op(f"threshold {rule.threshold:.2f}", pos, called, everyone, rule.threshold))
    ops.append(op(f"threshold {rule.threshold:.2f}, decided cases only", pos, called, ~indeterminate, rule.threshold))

    acc_est, acc_low, acc_high = bootstrap_ci(
        lambda idx: float((predicted[idx] == y[idx]).mean()), y, n_bootstrap=n_bootstrap, seed=seed
    )
    calibration = {
        "n_bins": float(n_bins),
        "ece_top_label_before": expected_calibration_error(y, p_before, n_bins=n_bins),
        "ece_top_label_after": expected_calibration_error(y, p, n_bins=n_bins),
        "ece_classwise_before": expected_calibration_error(y, p_before, n_bins=n_bins, mode=CalibrationMode.CLASSWISE),
        "ece_classwise_after": expected_calibration_error(y, p, n_bins=n_bins, mode=CalibrationMode.CLASSWISE),
        "nll_before": nll(z, y, 1.0),
        "nll_after": nll(z, y, temperature),
        "brier_before": brier_score(y, p_before),
        "brier_after": brier_score(y, p),
    }
    by_class = {names[i]: float(indeterminate[y == i].mean()) if present[i] else math.nan for i in range(k)}
    return EvaluationResult(
        class_names=names,
        temperature=float(temperature),
        decision_rule=rule,
        prevalence=prevalence,
        n_bootstrap=n_bootstrap,
        seed=seed,
        min_subgroup_size=min_subgroup_size,
        case_ids=ids,
        labels=y,
        probabilities=p,
        probabilities_before=p_before,
        predicted=predicted,
        decided=decided,
        indeterminate=indeterminate,
        auc=auc,
        macro_auc=macro,
        roc=roc,
        operating_points=ops,
        confusion_argmax=confusion_matrix(y, predicted, n_classes=k),
        confusion_decision=confusion_matrix(y, decided, n_classes=k),
        accuracy=_interval(acc_est, acc_low, acc_high),
        indeterminate_by_class=by_class,
        calibration=calibration,
        reliability_before=reliability_bins(y, p_before, n_bins=n_bins),
        reliability_after=reliability_bins(y, p, n_bins=n_bins),
        subgroups=subgroup_metrics(groups, y, p, rule, indeterminate, min_size=min_subgroup_size),
        subgroup_values=groups,
        errors=list(errors),
    )
