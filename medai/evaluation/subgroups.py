"""Subgroup analysis: which cases form a subgroup, and the metrics per subgroup.

Performance is reported per slice-thickness bin, per noise and kernel bin and
per scanner/site when those are known, each with its size ``n``. Subgroups
smaller than a minimum size are listed with ``n`` but get no metrics: a
sensitivity from five cases says little and would be over-read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medai.evaluation.intervals import Interval, wilson_interval
from medai.evaluation.metrics import binary_rates, macro_auc, roc_auc
from medai.inference.calibration import DecisionRule

__all__ = [
    "SubgroupResult",
    "bin_fixed",
    "slice_thickness_group",
    "subgroup_metrics",
    "subgroups_from_attributes",
]

#: Numeric attributes binned at fixed edges: attribute -> (variable name, edges, group labels).
NUMERIC_ATTRIBUTES: dict[str, tuple[str, tuple[float, ...], tuple[str, ...]]] = {
    "noise_hu": ("noise", (15.0, 30.0), ("< 15 HU", "15-30 HU", ">= 30 HU")),
    "kernel_sharpness": ("kernel", (0.33, 0.67), ("soft (< 0.33)", "standard (0.33-0.67)", "sharp (>= 0.67)")),
    "patient_scale": ("patient_size", (0.9, 1.1), ("small (< 0.9)", "typical (0.9-1.1)", "large (>= 1.1)")),
}

#: Categorical attributes used as they are: attribute -> variable name. The first
#: present attribute of a variable wins (manifest columns before DICOM header keywords).
CATEGORICAL_ATTRIBUTES: dict[str, str] = {
    "site": "site",
    "InstitutionName": "site",
    "scanner": "scanner",
    "ManufacturerModelName": "scanner",
    "manufacturer": "manufacturer",
    "Manufacturer": "manufacturer",
    "kernel": "kernel",
    "ConvolutionKernel": "kernel",
}

#: Attributes holding the slice thickness in mm, in order of preference.
THICKNESS_ATTRIBUTES: tuple[str, ...] = ("slice_thickness_mm", "slice_thickness", "SliceThickness")


@dataclass(frozen=True)
class SubgroupResult:
    """Metrics of one subgroup (e.g. slice thickness "<= 1.5 mm"); ``small`` ones have no metrics.

    Attributes:
        variable: the grouping variable, e.g. ``"slice_thickness"``.
        group: the group's value.
        n: number of cases.
        n_per_class: cases per true class.
        small: ``n < min_subgroup_size``; metrics are withheld (nan) as too noisy.
        accuracy: argmax accuracy with a Wilson 95% CI.
        macro_auc: nan unless at least two classes are present.
        positive_auc: AUC of the decision rule's positive class against the rest.
        sensitivity, specificity: of the positive class at the decision threshold.
        indeterminate_rate: fraction flagged indeterminate by the decision rule.
    """

    variable: str
    group: str
    n: int
    n_per_class: dict[str, int]
    small: bool
    accuracy: Interval
    macro_auc: float
    positive_auc: float
    sensitivity: Interval
    specificity: Interval
    indeterminate_rate: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nan may remain; the caller cleans it)."""
        return {
            "variable": self.variable,
            "group": self.group,
            "n": self.n,
            "n_per_class": self.n_per_class,
            "small": self.small,
            "accuracy": self.accuracy.to_dict(),
            "macro_auc": self.macro_auc,
            "positive_auc": self.positive_auc,
            "sensitivity": self.sensitivity.to_dict(),
            "specificity": self.specificity.to_dict(),
            "indeterminate_rate": self.indeterminate_rate,
        }


def _group_order(group: str) -> tuple[bool, float, int, str]:
    """Sort key: numeric bins by their lower value ("<= a" before "a-b" before "> a"), "unknown" last."""
    match = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", group)
    number = float(match.group()) if match else math.inf
    rank = 0 if group.startswith("<") else 2 if group.startswith(">") else 1
    return group == "unknown", number, rank, group


def subgroup_metrics(
    subgroups: Mapping[str, Sequence[str]],
    labels: np.ndarray,
    probabilities: np.ndarray,
    rule: DecisionRule,
    indeterminate: np.ndarray,
    *,
    min_size: int,
) -> list[SubgroupResult]:
    """Metrics per group of each grouping variable; groups below ``min_size`` get their size only.

    Args:
        subgroups: variable -> group value of each case.
        labels: integer true class per case.
        probabilities: calibrated probabilities, ``(n, n_classes)``.
        rule: the decision rule (positive class, threshold).
        indeterminate: the rule's indeterminate flag per case.
        min_size: smallest group that gets metrics.

    Example:
        >>> import numpy as np
        >>> from medai.inference.calibration import DecisionRule
        >>> y = np.array([0, 1, 2, 1]); p = np.eye(3)[y] * 0.7 + 0.1
        >>> rows = subgroup_metrics({"site": ["A", "A", "A", "B"]}, y, p, DecisionRule(), np.zeros(4, bool), min_size=2)
        >>> [(r.group, r.n, r.small, r.accuracy.estimate) for r in rows]
        [('A', 3, False, 1.0), ('B', 1, True, nan)]
    """
    names = rule.class_names
    pos = rule.positive_index
    predicted = np.argmax(probabilities, axis=1)
    called = probabilities[:, pos] >= rule.threshold
    nan_iv = Interval(math.nan, math.nan, math.nan)
    results = []
    for variable, values in subgroups.items():
        values_arr = np.asarray([str(v) for v in values], dtype=object)
        for group in sorted(set(values_arr.tolist()), key=_group_order):
            mask = values_arr == group
            n = int(mask.sum())
            y, p = labels[mask], probabilities[mask]
            counts = np.bincount(y, minlength=len(names))
            small = n < min_size
            if small:
                acc = sens = spec = nan_iv
                m_auc = p_auc = ind_rate = math.nan
            else:
                acc = wilson_interval(int((predicted[mask] == y).sum()), n)
                m_auc = macro_auc(y, p) if (counts > 0).sum() >= 2 else math.nan
                p_auc = roc_auc(y == pos, p[:, pos])
                r = binary_rates(y == pos, called[mask])
                sens = wilson_interval(r.tp, r.tp + r.fn)
                spec = wilson_interval(r.tn, r.tn + r.fp)
                ind_rate = float(indeterminate[mask].mean())
            results.append(
                SubgroupResult(
                    variable=variable,
                    group=group,
                    n=n,
                    n_per_class={name: int(c) for name, c in zip(names, counts, strict=True)},
                    small=small,
                    accuracy=acc,
                    macro_auc=m_auc,
                    positive_auc=p_auc,
                    sensitivity=sens,
                    specificity=spec,
                    indeterminate_rate=ind_rate,
                )
            )
    return results


def slice_thickness_group(thickness_mm: float | None) -> str:
    """Clinical slice-thickness bin: ``"<= 1.5 mm"``, ``"1.5-3 mm"``, ``"> 3 mm"`` or ``"unknown"``.

    Example:
        >>> slice_thickness_group(1.25), slice_thickness_group(5.0)
        ('<= 1.5 mm', '> 3 mm')
    """
    if thickness_mm is None or not math.isfinite(thickness_mm):
        return "unknown"
    if thickness_mm <= 1.5:
        return "<= 1.5 mm"
    if thickness_mm <= 3.0:
        return "1.5-3 mm"
    return "> 3 mm"


def bin_fixed(values: Sequence[float | None], edges: Sequence[float], labels: Sequence[str]) -> list[str]:
    """Bin numbers at fixed edges: ``labels[i]`` for ``edges[i-1] <= v < edges[i]``; missing -> ``"unknown"``.

    Fixed edges (not quantiles of the evaluated cases) keep groups comparable
    between runs and datasets.

    Example:
        >>> bin_fixed([5.0, 15.0, None, 40.0], [15.0, 30.0], ["< 15 HU", "15-30 HU", ">= 30 HU"])
        ['< 15 HU', '15-30 HU', 'unknown', '>= 30 HU']
    """
    if len(labels) != len(edges) + 1:
        raise ValueError(f"labels must number len(edges) + 1 = {len(edges) + 1}, not {len(labels)}")
    cuts = np.asarray(edges, dtype=np.float64)
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append("unknown")
        else:
            out.append(labels[int(np.searchsorted(cuts, v, side="right"))])
    return out


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):  # multi-valued DICOM attributes, e.g. ConvolutionKernel
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def subgroups_from_attributes(attributes: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Group values per case from raw case attributes (manifest columns, DICOM header, phantom acquisition).

    * slice thickness (``slice_thickness_mm`` or ``SliceThickness``): fixed
      bins ``<= 1.5 mm``, ``1.5-3 mm``, ``> 3 mm``;
    * ``noise_hu``, ``kernel_sharpness`` (phantom kernel, 0 soft .. 1 sharp),
      ``patient_scale``: fixed bins, see :data:`NUMERIC_ATTRIBUTES`;
    * site, scanner, manufacturer, kernel: the value itself.

    A variable is included only when at least one case has a value; cases
    without one are ``"unknown"``.

    Example:
        >>> subgroups_from_attributes([{"slice_thickness_mm": 1.0, "site": "A"}, {"slice_thickness_mm": 5.0}])
        {'slice_thickness': ['<= 1.5 mm', '> 3 mm'], 'site': ['A', 'unknown']}
    """
    out: dict[str, list[str]] = {}
    thickness = [
        next((_number(a[key]) for key in THICKNESS_ATTRIBUTES if _number(a.get(key)) is not None), None)
        for a in attributes
    ]
    if any(t is not None for t in thickness):
        out["slice_thickness"] = [slice_thickness_group(t) for t in thickness]
    for key, (variable, edges, labels) in NUMERIC_ATTRIBUTES.items():
        numbers = [_number(a.get(key)) for a in attributes]
        if any(v is not None for v in numbers):
            out[variable] = bin_fixed(numbers, edges, labels)
    for variable in dict.fromkeys(CATEGORICAL_ATTRIBUTES.values()):
        keys = [k for k, v in CATEGORICAL_ATTRIBUTES.items() if v == variable]
        values = [next((_text(a[k]) for k in keys if _text(a.get(k))), "") for a in attributes]
        if any(values):
            out[variable] = [v or "unknown" for v in values]
    return out
