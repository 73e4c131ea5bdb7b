"""Score test worlds with the served pipeline and measure it against the truth.

The served pipeline is what a hospital runs: :meth:`medai.inference.classifier.Classifier.predict`
(preprocessing, the ONNX network, the decision layer, quantification, QC flags). Every number here
comes from that call, not from the torch checkpoint, so the evaluation measures the product.

:func:`score_cases` turns each case into a :class:`ScoredCase` (a failure becomes a row with its error);
:func:`summarize` computes the issue's targets for a set of rows: covid19-vs-rest AUC with a bootstrap
interval, ECE (beside the ECE a perfectly calibrated model would show on as many cases), the share of normals
called normal and graded CT-0, specificity, lesion-percentage MAE, the worst lung-volume error and severity
agreement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medai.evaluation.intervals import bootstrap_ci
from medai.evaluation.metrics import roc_auc
from medai.evaluation.reliability import ece_if_calibrated, expected_calibration_error
from medai.evaluation.worlds import TruthCase
from medai.labels import CLASS_NAMES, severity_from_percent

__all__ = ["COMPARED", "ScoredCase", "choice_score", "compare", "decision_rows", "score_cases", "summarize"]

log = logging.getLogger(__name__)


@dataclass
class ScoredCase:
    """One case scored by the served pipeline, beside its truth (``error`` set when scoring failed)."""

    case_id: str
    world: str
    label: str
    pattern: str
    lesion_truth: float
    lung_truth_ml: float
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted: str = ""
    indeterminate: bool = False
    lesion_estimate: float = math.nan
    lung_estimate_ml: float = math.nan
    severity: str = ""
    qc_flags: tuple[str, ...] = ()
    factors: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["qc_flags"] = list(self.qc_flags)
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ScoredCase:
        """The case :meth:`to_dict` wrote (e.g. read back from an evaluation's JSON).

        Example:
            >>> r = ScoredCase("a", "w", "normal", "none", 0.0, 4000.0, qc_flags=("lung_cut_off",))
            >>> ScoredCase.from_dict(r.to_dict()) == r
            True
        """
        return cls(**{**row, "qc_flags": tuple(row.get("qc_flags", ()))})


def score_cases(
    classifier: Any, cases: Iterable[TruthCase], *, progress: Callable[[ScoredCase], None] | None = None
) -> list[ScoredCase]:
    """Predict every case with ``classifier`` (a loaded :class:`~medai.inference.classifier.Classifier`)."""
    rows = []
    for case in cases:
        row = ScoredCase(
            case.case_id, case.world, case.label, case.pattern, case.lesion_percent, case.lung_volume_ml,
            factors=dict(case.factors),
        )  # fmt: skip
        try:
            pred = classifier.predict(case.volume)
            row.probabilities = {k: float(v) for k, v in pred.probabilities.items()}
            row.predicted = pred.label
            row.indeterminate = bool(pred.indeterminate)
            row.lesion_estimate = float(pred.lesion_percent)
            row.lung_estimate_ml = float(pred.quantification.lung_volume_ml)
            row.severity = pred.severity.value
            row.qc_flags = tuple(pred.qc_flags)
        except Exception as exc:  # one bad case must not stop the evaluation; it is reported
            log.warning("case %s failed: %s", case.case_id, exc)
            row.error = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def decision_rows(
    classifier: Any, world: str, n: int | None, seed: int, *, start: int = 0
) -> list[tuple[TruthCase, dict, dict]]:
    """``(truth case, decision features, measured findings)`` of a world's cases under ``classifier``'s network and
    quantification: what a decision layer is fitted and read on (scripts/train_reference.py, scripts/layer_ceiling.py).
    Cases ``start`` to ``n`` of the seed set (:func:`medai.evaluation.worlds.world_cases`).

    The truth cases keep no volume (20 MB of CT each); the measured findings are the lesion %, lung volume, grade,
    QC flags and zone percentages.
    """
    from dataclasses import replace

    from medai.evaluation.worlds import world_cases
    from medai.inference.decision import decision_features

    rows = []
    for case in world_cases(world, n, seed=seed, start=start):
        pred = classifier.predict(case.volume)
        measured = {
            "lesion": pred.lesion_percent,
            "lung_ml": pred.quantification.lung_volume_ml,
            "grade": pred.quantification.severity.value,  # of the lesion %; CT-0 below when the decision is normal
            "flags": pred.qc_flags,
            "zones": {f"{s.value}_{z.value}": v for (s, z), v in pred.quantification.zone_lesion_percent.items()},
        }
        light = replace(case, volume=None)  # type: ignore[arg-type]  # keep the truth, not the CT
        rows.append((light, decision_features(pred.logits, pred.quantification), measured))
        print(
            f"  {case.case_id} {case.label} lesion {case.lesion_percent:.1f} -> {pred.lesion_percent:.1f}", flush=True
        )
    return rows


# Bands of the true lesion % of the covid19 cases, for the covid19-vs-normal AUC per band (summarize).
BURDEN_BANDS = ((0.0, 3.0), (3.0, 10.0), (10.0, 100.0))


def _where_the_auc_is_lost(ok: Sequence[ScoredCase], y: np.ndarray, p_covid: np.ndarray) -> dict[str, float]:
    """The covid19 AUC against each other class alone, against the normals per band of true covid19 burden, and
    against the normals with the measured lesion % as the only score (``measured_lesion_auc_vs_normal``).

    A covid19-vs-rest AUC mixes two questions (is the lung sick; which pneumonia is it) and every burden: a
    severe COVID-19 case that the layer splits between covid19 and other pneumonia ranks under a normal lung
    whose false opacity looks like early COVID-19, and only these pairs show which it is (docs/ood.md). A pair
    or band without both kinds of case is left out.

    Example:
        >>> rows = [ScoredCase(str(i), "w", c, "", t, 4000.0) for i, (c, t) in enumerate(
        ...     [("normal", 0.0), ("covid19", 2.0), ("covid19", 30.0), ("other_pneumonia", 5.0)])]
        >>> y = np.array([CLASS_NAMES.index(r.label) for r in rows])
        >>> out = _where_the_auc_is_lost(rows, y, np.array([0.6, 0.7, 0.5, 0.2]))
        >>> [out[f"covid19_auc_vs_normal{band}"] for band in ("", "_burden_0_3", "_burden_10_100")]
        [0.5, 1.0, 0.0]
    """
    is_covid = y == CLASS_NAMES.index("covid19")
    truth = np.array([r.lesion_truth for r in ok])
    out: dict[str, float] = {}

    def pair_auc(key: str, positives: np.ndarray, negatives: np.ndarray, score: np.ndarray = p_covid) -> None:
        keep = positives | negatives
        if positives.any() and negatives.any() and np.isfinite(score[keep]).all():
            out[key] = round(roc_auc(positives[keep], score[keep]), 4)

    for other in ("normal", "other_pneumonia"):
        pair_auc(f"covid19_auc_vs_{other}", is_covid, y == CLASS_NAMES.index(other))
    normal = y == CLASS_NAMES.index("normal")
    for low, high in BURDEN_BANDS:
        band = is_covid & (truth >= low) & (truth < high if high < 100.0 else truth <= high)
        pair_auc(f"covid19_auc_vs_normal_burden_{low:g}_{high:g}", band, normal)
    # The same pair ranked by the measured lesion % alone, no layer: what the quantification tells apart by itself.
    measured = np.array([r.lesion_estimate for r in ok], dtype=np.float64)
    pair_auc("measured_lesion_auc_vs_normal", is_covid, normal, measured)
    return out


def _rate(hits: int, total: int) -> float:
    return hits / total if total else math.nan


def _ct0_share(normals: Sequence[ScoredCase]) -> float:
    return round(_rate(sum(r.severity == "CT-0" for r in normals), len(normals)), 4)


def _normals_by_contrast(normals: Sequence[ScoredCase]) -> dict[str, Any]:
    """CT-0 among the normals scanned without IV contrast and with it, where the cases say (factor ``contrast``).

    Without contrast the blood pools and the organs under the domes have the density of consolidation, so what the
    lung mask takes in of them is measured as opacity; with contrast they are brighter than the consolidation range
    (docs/ood.md, "Where the normals' false opacity lies now").
    """
    out: dict[str, Any] = {}
    for name, plain in (("without_contrast", True), ("with_contrast", False)):
        group = [r for r in normals if r.factors.get("contrast") and (r.factors["contrast"] == "none") == plain]
        if group:
            out[f"normals_ct0_{name}"] = _ct0_share(group)
            out[f"normals_{name}"] = len(group)
    return out


def summarize(rows: Sequence[ScoredCase], *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The target metrics of a set of scored cases (failed cases counted, then left out of the metrics).

    Example:
        >>> rows = [ScoredCase("a", "w", "normal", "none", 0.0, 4000.0, {"normal": 0.9, "covid19": 0.05,
        ...     "other_pneumonia": 0.05}, "normal", False, 0.2, 4100.0, "CT-0"),
        ...     ScoredCase("b", "w", "covid19", "covid", 20.0, 4000.0, {"normal": 0.1, "covid19": 0.8,
        ...     "other_pneumonia": 0.1}, "covid19", False, 18.0, 3900.0, "CT-1")]
        >>> s = summarize(rows, n_bootstrap=0)
        >>> s["covid19_auc"], s["normals_called_normal"], s["lesion_mae_points"]
        (1.0, 1.0, 1.1)
    """
    ok = [r for r in rows if not r.error]
    out: dict[str, Any] = {"n_cases": len(rows), "n_failed": len(rows) - len(ok)}
    if not ok:
        return out
    y = np.array([CLASS_NAMES.index(r.label) for r in ok])
    p = np.array([[r.probabilities[c] for c in CLASS_NAMES] for r in ok])
    covid = CLASS_NAMES.index("covid19")
    is_covid = y == covid

    def auc(idx: np.ndarray) -> float:
        return roc_auc(is_covid[idx], p[idx, covid])

    if 0 < is_covid.sum() < len(ok):
        est, low, high = bootstrap_ci(auc, y, n_bootstrap=n_bootstrap, seed=seed)
        out["covid19_auc"] = round(float(est), 4)
        out["covid19_auc_ci"] = [round(float(low), 4), round(float(high), 4)]
    out.update(_where_the_auc_is_lost(ok, y, p[:, covid]))
    out["accuracy"] = round(float(np.mean([r.predicted == r.label for r in ok])), 4)
    out["ece"] = round(float(expected_calibration_error(y, p)), 4)
    # What a perfectly calibrated model would read on these cases (median, 95th percentile): at 60 cases in
    # 10 bins about 0.1, so an ECE target of 0.05 needs several hundred cases to be shown at all.
    out["ece_if_calibrated"] = [round(v, 4) for v in ece_if_calibrated(p, seed=seed)]
    normals = [r for r in ok if r.label == "normal"]
    out["normals_called_normal"] = round(_rate(sum(r.predicted == "normal" for r in normals), len(normals)), 4)
    # The label alone decides "called normal" (the operating point); a normal label flagged indeterminate still
    # goes to a reader, so the share called normal without that flag is kept beside it.
    confident = sum(r.predicted == "normal" and not r.indeterminate for r in normals)
    out["normals_called_normal_confidently"] = round(_rate(confident, len(normals)), 4)
    out["normals_ct0"] = _ct0_share(normals)
    out.update(_normals_by_contrast(normals))
    not_covid = [r for r in ok if r.label != "covid19"]
    out["covid19_specificity"] = round(_rate(sum(r.predicted != "covid19" for r in not_covid), len(not_covid)), 4)
    covids = [r for r in ok if r.label == "covid19"]
    out["covid19_sensitivity"] = round(_rate(sum(r.predicted == "covid19" for r in covids), len(covids)), 4)
    out["indeterminate_rate"] = round(float(np.mean([r.indeterminate for r in ok])), 4)
    errors = np.array([abs(r.lesion_estimate - r.lesion_truth) for r in ok])
    out["lesion_mae_points"] = round(float(errors.mean()), 2)
    by_pattern: dict[str, list[float]] = {}
    for r, e in zip(ok, errors, strict=True):
        by_pattern.setdefault(r.pattern, []).append(float(e))
    out["lesion_mae_by_pattern"] = {k: round(float(np.mean(v)), 2) for k, v in sorted(by_pattern.items())}
    volume_error = np.array([abs(r.lung_estimate_ml - r.lung_truth_ml) / max(r.lung_truth_ml, 1.0) for r in ok])
    out["lung_volume_error_max_percent"] = round(100 * float(volume_error.max()), 1)
    out["lung_volume_error_median_percent"] = round(100 * float(np.median(volume_error)), 1)
    out["lung_volume_off_by_25_percent"] = int((volume_error > 0.25).sum())
    out["severity_agreement"] = round(
        float(np.mean([severity_from_percent(min(r.lesion_truth, 100.0)).value == r.severity for r in ok])), 4
    )
    return out


# What compare() reports: the metrics the decision rule and the targets read, and the rule's score.
COMPARED = ("covid19_auc", "normals_called_normal", "ece", "lesion_mae_points", "score")


def choice_score(covid19_auc: float, normals_called_normal: float, ece: float) -> float:
    """The score the decision layer is chosen by (scripts/train_reference.py) and that :func:`compare` reports:
    (covid19 AUC + normals called normal) / 2 - ECE.

    Example:
        >>> round(choice_score(0.9, 0.7, 0.1), 6)
        0.7
    """
    return (covid19_auc + normals_called_normal) / 2 - ece


def _compared_metrics(y: np.ndarray, p: np.ndarray, normal_called: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """The :data:`COMPARED` metrics of cases given as arrays (true classes, probabilities, a normal called normal
    (only read where the truth is normal), lesion errors)."""
    covid = CLASS_NAMES.index("covid19")
    normal = y == CLASS_NAMES.index("normal")
    is_covid = y == covid
    auc = roc_auc(is_covid, p[:, covid]) if 0 < is_covid.sum() < len(y) else math.nan
    called = float(normal_called[normal].mean()) if normal.any() else math.nan
    ece = expected_calibration_error(y, p)
    return np.array([auc, called, ece, float(errors.mean()), choice_score(auc, called, ece)])


def compare(
    before: Sequence[ScoredCase], after: Sequence[ScoredCase], *, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, dict[str, float | list[float]]]:
    """Two scorings of the same cases side by side: each metric of :data:`COMPARED` before and after, and the
    paired difference (after - before) with a stratified bootstrap 95 % interval.

    ``score`` is :func:`choice_score`, what the decision layer is chosen by. Every replicate resamples
    the cases once and scores both versions on the same resample, so what the two share (the same hard cases) does
    not widen the interval: a difference whose interval holds 0 is one these cases cannot tell from noise.
    Failed cases (on either side) are left out.

    Raises:
        ValueError: the two do not hold the same cases with the same truth.

    Example:
        >>> def case(i, label, p_covid, predicted):
        ...     rest = (1 - p_covid) / 2
        ...     probs = {"normal": rest, "covid19": p_covid, "other_pneumonia": rest}
        ...     return ScoredCase(str(i), "w", label, "", 0.0, 4000.0, probs, predicted, False, 0.0, 4000.0, "CT-0")
        >>> a = [case(i, lab, 0.4, "normal") for i, lab in enumerate(["normal", "covid19"] * 5)]
        >>> b = [case(i, lab, 0.9 if lab == "covid19" else 0.1, lab) for i, lab in enumerate(["normal", "covid19"] * 5)]
        >>> d = compare(a, b, n_bootstrap=200)["covid19_auc"]
        >>> d["before"], d["after"], d["difference"]
        (0.5, 1.0, 0.5)
    """
    first = {r.case_id: r for r in before}
    second = {r.case_id: r for r in after}
    if set(first) != set(second):
        raise ValueError(f"both must hold the same cases, not {len(set(first) ^ set(second))} that differ")
    ids = [k for k in first if not first[k].error and not second[k].error]
    for k in ids:
        if (first[k].label, first[k].lesion_truth) != (second[k].label, second[k].lesion_truth):
            raise ValueError(f"case {k} must have the same truth in both, not {first[k].label} and {second[k].label}")
    y = np.array([CLASS_NAMES.index(first[k].label) for k in ids])

    def arrays(rows: dict[str, ScoredCase]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.array([[rows[k].probabilities[c] for c in CLASS_NAMES] for k in ids])
        called = np.array([rows[k].predicted == "normal" for k in ids])
        errors = np.array([abs(rows[k].lesion_estimate - rows[k].lesion_truth) for k in ids])
        return p, called, errors

    pa, ca, ea = arrays(first)
    pb, cb, eb = arrays(second)

    def statistic(idx: np.ndarray) -> np.ndarray:
        a = _compared_metrics(y[idx], pa[idx], ca[idx], ea[idx])
        b = _compared_metrics(y[idx], pb[idx], cb[idx], eb[idx])
        return np.concatenate([a, b, b - a])

    est, low, high = bootstrap_ci(statistic, y, n_bootstrap=n_bootstrap, seed=seed)
    n = len(COMPARED)
    return {
        name: {
            "before": round(float(est[i]), 4),
            "after": round(float(est[n + i]), 4),
            "difference": round(float(est[2 * n + i]), 4),
            "difference_ci": [round(float(low[2 * n + i]), 4), round(float(high[2 * n + i]), 4)],
        }
        for i, name in enumerate(COMPARED)
    }
