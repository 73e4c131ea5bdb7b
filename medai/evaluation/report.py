"""Write an :class:`~medai.evaluation.evaluate.EvaluationResult` as report.html, metrics.json and predictions.csv.

The HTML report is one self-contained file (inline CSS, plots as inline SVG
drawn here; no JavaScript, no network, no plotting library), headed by the
intended-use line. ``metrics.json`` holds the same numbers machine-readably;
``predictions.csv`` has one row per case, failed cases included with their
error.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medai.evaluation.evaluate import EvaluationResult, OperatingPoint
from medai.evaluation.intervals import Interval
from medai.evaluation.reliability import ReliabilityBins

__all__ = ["INTENDED_USE_HEADER", "render_html", "write_predictions_csv", "write_report"]

INTENDED_USE_HEADER = "Research use only — not a medical device"

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_SIZE, _LEFT, _BOTTOM, _TOP, _RIGHT = 300, 48, 40, 24, 12

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
.banner{background:#b00020;color:#fff;padding:.6em 1em;font-weight:600;font-size:1.1em;border-radius:4px}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.small{color:#888}.note{color:#555;font-size:.92em}
.plots{display:flex;flex-wrap:wrap;gap:1.5em}.err{color:#b00020}figure{margin:0}figcaption{font-size:.9em;color:#555}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _iv(interval: Interval | None) -> str:
    return "n/a" if interval is None else interval.format()


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text. Cells are escaped."""

    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{_e(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------- SVG plots


def _px(x: float, y: float) -> tuple[float, float]:
    """Unit-square coordinates to SVG pixels inside the plot frame."""
    return _LEFT + x * _SIZE, _TOP + (1 - y) * _SIZE


def _axes(title: str, xlabel: str, ylabel: str) -> list[str]:
    w, h = _LEFT + _SIZE + _RIGHT, _TOP + _SIZE + _BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'font-family="sans-serif" font-size="11" role="img" aria-label="{_e(title)}">',
        f'<text x="{_LEFT + _SIZE / 2}" y="15" text-anchor="middle" font-size="13">{_e(title)}</text>',
    ]
    for t in np.linspace(0, 1, 6):
        x0, y0 = _px(t, 0)
        x1, y1 = _px(0, t)
        parts.append(f'<line x1="{x0:.1f}" y1="{_TOP}" x2="{x0:.1f}" y2="{_TOP + _SIZE}" stroke="#eee"/>')
        parts.append(f'<line x1="{_LEFT}" y1="{y1:.1f}" x2="{_LEFT + _SIZE}" y2="{y1:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{x0:.1f}" y="{_TOP + _SIZE + 14}" text-anchor="middle">{t:.1f}</text>')
        parts.append(f'<text x="{_LEFT - 5}" y="{y1 + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    parts.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{_SIZE}" height="{_SIZE}" fill="none" stroke="#444"/>')
    parts.append(f'<text x="{_LEFT + _SIZE / 2}" y="{_TOP + _SIZE + 32}" text-anchor="middle">{_e(xlabel)}</text>')
    parts.append(
        f'<text x="12" y="{_TOP + _SIZE / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_TOP + _SIZE / 2})">{_e(ylabel)}</text>'
    )
    x0, y0 = _px(0, 0)
    x1, y1 = _px(1, 1)
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4 3"/>')
    return parts


def svg_roc(roc: Mapping[str, tuple[Sequence[float], Sequence[float]]], auc: Mapping[str, Interval]) -> str:
    """ROC curves, one polyline per class, legend with the AUCs."""
    parts = _axes("ROC, one class vs rest", "1 - specificity", "sensitivity")
    for i, (name, (fpr, tpr)) in enumerate(roc.items()):
        color = _COLORS[i % len(_COLORS)]
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in (_px(x, y) for x, y in zip(fpr, tpr, strict=True)))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        lx, ly = _px(0.38, 0.06 + 0.07 * (len(roc) - 1 - i))
        parts.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 16}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        label = f"{name}  AUC {_num(auc[name].estimate)}" if name in auc else name
        parts.append(f'<text x="{lx + 20}" y="{ly}">{_e(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def svg_reliability(bins: ReliabilityBins, title: str) -> str:
    """Reliability diagram: observed accuracy per confidence bin (bars), mean confidence (dots), counts."""
    parts = _axes(title, "confidence (top-class probability)", "observed accuracy")
    n_bins = bins.count.size
    width = _SIZE / n_bins
    for b in range(n_bins):
        if bins.count[b] == 0:
            continue
        observed, confidence = float(bins.observed[b]), float(bins.mean_confidence[b])
        x, y = _px(float(bins.edges[b]), observed)
        _, y0 = _px(0, 0)
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{width - 2:.1f}" height="{y0 - y:.1f}" '
            f'fill="#1f77b4" fill-opacity="0.55" stroke="#1f77b4"/>'
        )
        cx, cy = _px(confidence, observed)
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="#d62728"/>')
        parts.append(
            f'<text x="{x + width / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9">'
            f"{int(bins.count[b])}</text>"
        )
    parts.append(f'<text x="{_LEFT + 6}" y="{_TOP + 14}">ECE {_num(bins.ece)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _confusion_html(matrix: np.ndarray, names: Sequence[str], caption: str) -> str:
    rows = []
    for i, name in enumerate(names):
        total = matrix[i].sum()
        cells = []
        for j in range(len(names)):
            frac = matrix[i, j] / total if total else 0.0
            color = "44,160,44" if i == j else "214,39,40"
            cells.append(f'<td style="background:rgba({color},{0.08 + 0.6 * frac:.2f})">{int(matrix[i, j])}</td>')
        rows.append(f'<tr><th class="l">{_e(name)}</th>{"".join(cells)}<td>{int(total)}</td></tr>')
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    return (
        f"<figure><figcaption>{_e(caption)}</figcaption><table><thead><tr><th class='l'>true \\ predicted</th>"
        f"{head}<th>n</th></tr></thead><tbody>{''.join(rows)}</tbody></table></figure>"
    )


def _operating_rows(ops: Sequence[OperatingPoint]) -> list[list[str]]:
    return [
        [
            op.name,
            op.positive_class,
            str(op.counts.tp + op.counts.fp + op.counts.tn + op.counts.fn),
            str(op.n_excluded),
            _iv(op.sensitivity),
            _iv(op.specificity),
            _iv(op.ppv),
            _iv(op.npv),
            _iv(op.ppv_at_prevalence),
            _iv(op.npv_at_prevalence),
        ]
        for op in ops
    ]


def render_html(result: EvaluationResult, *, model: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The self-contained HTML report.

    Args:
        result: the evaluation.
        model: facts about the model shown at the top (model_id, sha256, path, ...).
        data: facts about the data (source, split, counts, ...).

    Example:
        >>> import numpy as np
        >>> from medai.evaluation.evaluate import evaluate_predictions
        >>> y = np.array([0, 1, 2, 0, 1, 2])
        >>> r = evaluate_predictions(y, 2.0 * np.eye(3)[y], temperature=1.0,
        ...                          class_names=("normal", "covid19", "other_pneumonia"), n_bootstrap=0)
        >>> INTENDED_USE_HEADER in render_html(r, model={"model_id": "m"}, data={})
        True
    """
    from medai import __version__
    from medai.labels import INTENDED_USE

    names = result.class_names
    rule = result.decision_rule
    cal = result.calibration
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medai evaluation: {_e(model.get('model_id', 'model'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<div class="banner">{_e(INTENDED_USE_HEADER)}</div>',
        "<h1>medai evaluation report</h1>",
        f'<p class="note">{_e(INTENDED_USE)} Generated {_e(created)} by medai {_e(__version__)}.</p>',
        "<h2>Model</h2>",
        _table(["field", "value"], [[k, v] for k, v in model.items()], left=2),
        "<h2>Data</h2>",
        _table(["field", "value"], [[k, v] for k, v in data.items()], left=2),
        _table(
            ["", *names, "total", "errors (not scored)"],
            [["cases", *result.n_per_class.values(), result.n_cases, len(result.errors)]],
        ),
    ]

    ci = f"{result.n_bootstrap} stratified bootstrap replicates, seed {result.seed}"
    out += [
        "<h2>Discrimination</h2>",
        f'<p class="note">One-vs-rest ROC AUC on calibrated probabilities; 95% percentile CIs from {_e(ci)}.</p>',
        _table(
            ["class", "n positive", "ROC AUC (95% CI)"],
            [[n, result.n_per_class[n], _iv(result.auc[n])] for n in names]
            + [
                ["macro average", result.n_cases, _iv(result.macro_auc)],
                ["accuracy (argmax)", "", _iv(result.accuracy)],
            ],
        ),
        f'<div class="plots"><figure>{svg_roc(result.roc, result.auc)}</figure></div>',
    ]

    prev = result.prevalence
    prev_text = (
        f"PPV/NPV at prevalence {prev:.3g} of {rule.positive_class} are computed by Bayes' rule from sensitivity "
        "and specificity (the other columns use the prevalence of this sample)."
        if prev is not None
        else "No target prevalence was given (--prevalence); PPV/NPV use the prevalence of this sample."
    )
    out += [
        "<h2>Operating points</h2>",
        f'<p class="note">"argmax": a class is called when it has the highest calibrated probability. '
        f'"threshold": {_e(rule.positive_class)} is called when its probability is ≥ {rule.threshold:.2f} '
        f"(the decision rule stored with the model). {_e(prev_text)}</p>",
        _table(
            [
                "operating point",
                "positive class",
                "n",
                "excluded",
                "sensitivity",
                "specificity",
                "PPV",
                "NPV",
                "PPV at prevalence",
                "NPV at prevalence",
            ],
            _operating_rows(result.operating_points),
            left=2,
        ),
        "<h2>Confusion matrices</h2>",
        '<div class="plots">',
        _confusion_html(result.confusion_argmax, names, "argmax of calibrated probabilities"),
        _confusion_html(result.confusion_decision, names, f"decision rule (threshold {rule.threshold:.2f})"),
        "</div>",
        "<h2>Indeterminate cases</h2>",
        f'<p class="note">A case is indeterminate when P({_e(rule.positive_class)}) lies strictly inside '
        f"({rule.threshold - rule.band_half_width:.2f}, {rule.threshold + rule.band_half_width:.2f}) or its top "
        f"class probability is below {rule.min_top_probability:.2f}. Such cases go to a reader without a call.</p>",
        _table(
            ["", "all", *names],
            [
                [
                    "indeterminate rate",
                    _num(result.indeterminate_rate),
                    *(_num(v) for v in result.indeterminate_by_class.values()),
                ]
            ],
        ),
    ]

    after_title = f"Reliability after scaling (T = {result.temperature:.2f})"
    out += [
        "<h2>Calibration</h2>",
        f'<p class="note">Temperature T = {result.temperature:.3f} was fitted on the validation split during '
        'training and stored in the checkpoint; it is never fitted on these (test) cases. "Before" is '
        'softmax(logits), "after" is softmax(logits / T). ECE uses '
        f"{int(cal['n_bins'])} equal-width bins; top-label ECE compares the top-class probability with accuracy, "
        "class-wise ECE averages the per-class ECE of each class probability.</p>",
        _table(
            ["metric", "before (T = 1)", f"after (T = {result.temperature:.3f})"],
            [
                ["ECE, top-label", _num(cal["ece_top_label_before"]), _num(cal["ece_top_label_after"])],
                ["ECE, class-wise", _num(cal["ece_classwise_before"]), _num(cal["ece_classwise_after"])],
                ["negative log-likelihood", _num(cal["nll_before"]), _num(cal["nll_after"])],
                ["Brier score", _num(cal["brier_before"]), _num(cal["brier_after"])],
            ],
        ),
        '<div class="plots">',
        f"<figure>{svg_reliability(result.reliability_before, 'Reliability before scaling (T = 1)')}</figure>",
        f"<figure>{svg_reliability(result.reliability_after, after_title)}</figure>",
        "</div>",
        '<p class="note">Bars: observed accuracy per confidence bin; red dots: mean confidence of the bin; '
        "numbers: cases per bin; dashed line: perfect calibration.</p>",
    ]

    out.append("<h2>Subgroups</h2>")
    if result.subgroups:
        out.append(
            f'<p class="note">Groups with fewer than {result.min_subgroup_size} cases are listed with their size but '
            f"no metrics (marked “n &lt; {result.min_subgroup_size}”). Accuracy, sensitivity and specificity with "
            f"Wilson 95% CIs; sensitivity/specificity of {_e(rule.positive_class)} at threshold {rule.threshold:.2f}. "
            "Numeric attributes are grouped at fixed cut-offs; a group of a variable lists the cases that had it.</p>"
        )
        rows = []
        for s in result.subgroups:
            flag = f"n < {result.min_subgroup_size}" if s.small else ""
            per_class = ", ".join(f"{k} {v}" for k, v in s.n_per_class.items())
            rows.append(
                [
                    s.variable,
                    s.group,
                    s.n,
                    per_class,
                    _iv(s.accuracy),
                    _num(s.macro_auc),
                    _num(s.positive_auc),
                    _iv(s.sensitivity),
                    _iv(s.specificity),
                    _num(s.indeterminate_rate),
                    flag,
                ]
            )
        out.append(
            _table(
                [
                    "variable",
                    "group",
                    "n",
                    "n per class",
                    "accuracy",
                    "macro AUC",
                    f"AUC {rule.positive_class}",
                    "sensitivity",
                    "specificity",
                    "indeterminate",
                    "flag",
                ],
                rows,
                left=2,
            )
        )
    else:
        out.append('<p class="note">No subgroup attributes were available for these cases.</p>')

    out.append("<h2>Cases that could not be scored</h2>")
    if result.errors:
        out.append(_table(["case", "label", "error"], [[e.case_id, e.label, e.message] for e in result.errors], left=3))
    else:
        out.append('<p class="note">None: every case was scored.</p>')
    out.append(
        '<p class="note">Per-case probabilities: predictions.csv. All numbers: metrics.json. '
        "These numbers describe these cases only; they are not a clinical validation.</p></body></html>"
    )
    return "\n".join(out)


def write_predictions_csv(result: EvaluationResult, path: Path) -> None:
    """One row per case: calibrated probabilities, argmax, decision, indeterminate, subgroups; errors last."""
    names = result.class_names
    groups = list(result.subgroup_values)
    header = [
        "case_id",
        "label",
        *(f"p_{n}" for n in names),
        "predicted",
        "decision",
        "indeterminate",
        *groups,
        "error",
    ]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, case_id in enumerate(result.case_ids):
            writer.writerow(
                [
                    case_id,
                    names[result.labels[i]],
                    *(f"{v:.6f}" for v in result.probabilities[i]),
                    names[result.predicted[i]],
                    names[result.decided[i]],
                    str(bool(result.indeterminate[i])).lower(),
                    *(result.subgroup_values[g][i] for g in groups),
                    "",
                ]
            )
        for e in result.errors:
            writer.writerow([e.case_id, e.label, *([""] * (len(header) - 3)), e.message])


def write_report(
    result: EvaluationResult,
    out_dir: Path | str,
    *,
    model: Mapping[str, Any],
    data: Mapping[str, Any],
) -> dict[str, Path]:
    """Write ``report.html``, ``metrics.json`` and ``predictions.csv`` into ``out_dir`` (created if needed).

    Returns:
        ``{"html": ..., "json": ..., "csv": ...}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "json": out / "metrics.json", "csv": out / "predictions.csv"}
    paths["html"].write_text(render_html(result, model=model, data=data), encoding="utf-8")
    payload = {"intended_use": INTENDED_USE_HEADER, "model": dict(model), "data": dict(data), **result.to_dict()}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str, allow_nan=False), encoding="utf-8")
    write_predictions_csv(result, paths["csv"])
    return paths
