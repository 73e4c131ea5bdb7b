"""In- and out-of-distribution evaluation of the served pipeline, side by side, against the issue's targets.

Scores each test world (:mod:`medai.evaluation.worlds`: ``train`` in-distribution, ``heldout``
leave-extremes-out, the independent phantom family, the real patient) with the served
:class:`medai.inference.classifier.Classifier` and prints one column per world: covid19-vs-rest AUC
(bootstrap 95 % CI), ECE, normals called normal and graded CT-0, covid19 specificity and sensitivity,
lesion % MAE, worst lung-volume error, severity agreement; and where the AUC is lost: covid19 against the normals
and against other pneumonia alone, and against the normals per band of true covid19 burden (under 3 %, 3-10 %,
10 % or more), and against the normals ranked by the measured lesion % alone (what the quantification separates
without the layer). ``--json`` keeps every number and every case.

``ece_if_calibrated`` is the ECE (median and 95th percentile) that a perfectly calibrated model would show on the
same confidences and as many cases: an observed ECE inside it is sampling noise. ``--from-json`` recomputes
every summary from the cases an earlier run wrote, without scoring anything (for a metric added since); given
several runs of one model (other seed sets), it pools their cases per world, for intervals that 150 cases are too
few to give (an ECE target of 0.05, say).
``--compare BEFORE AFTER`` puts two runs on the same cases side by side (two models, or two versions of the
quantification): each target metric and the decision rule's score, and their paired difference with a bootstrap
95 % interval, so that a criterion can ask whether a gain is larger than these cases' noise.

Example:
    python scripts/eval_ood.py --worlds train heldout independent-val real --n 60 --json .bench/ood.json
    python scripts/eval_ood.py --from-json .bench/ood.json
    python scripts/eval_ood.py --from-json .bench/ood-s10.json .bench/ood-s11.json .bench/ood-s12.json
    python scripts/eval_ood.py --compare .bench/ood-before.json .bench/ood-after.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

TARGETS = {  # issue 13: out-of-distribution targets (in-distribution: AUC >= 0.97)
    "covid19_auc": (">=", 0.95),
    "lesion_mae_points": ("<=", 5.0),
    "ece": ("<=", 0.05),
    "normals_called_normal": (">=", 0.90),
    "normals_ct0": (">=", 0.90),
    "lung_volume_error_max_percent": ("<=", 25.0),
}
ROWS = (
    "n_cases",
    "n_failed",
    "covid19_auc",
    "covid19_auc_ci",
    "covid19_auc_vs_normal",
    "covid19_auc_vs_other_pneumonia",
    "covid19_auc_vs_normal_burden_0_3",
    "covid19_auc_vs_normal_burden_3_10",
    "covid19_auc_vs_normal_burden_10_100",
    "measured_lesion_auc_vs_normal",
    "accuracy",
    "ece",
    "ece_if_calibrated",
    "normals_called_normal",
    "normals_called_normal_confidently",
    "normals_ct0",
    "normals_ct0_without_contrast",
    "normals_without_contrast",
    "normals_ct0_with_contrast",
    "normals_with_contrast",
    "covid19_specificity",
    "covid19_sensitivity",
    "indeterminate_rate",
    "lesion_mae_points",
    "lung_volume_error_median_percent",
    "lung_volume_error_max_percent",
    "lung_volume_off_by_25_percent",
    "severity_agreement",
)


def _met(name: str, value: object) -> str:
    if name not in TARGETS or not isinstance(value, int | float):
        return ""
    op, bound = TARGETS[name]
    ok = value >= bound if op == ">=" else value <= bound
    return " ✓" if ok else " ✗"


def main(argv: list[str] | None = None) -> int:
    from medai.evaluation.worlds import WORLDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: $MEDAI_MODEL or the shipped model)")
    parser.add_argument("--worlds", nargs="+", default=["train", "heldout", "independent-val", "real"], choices=WORLDS)
    parser.add_argument("--n", type=int, default=60, help="cases per synthetic world (classes in turn)")
    parser.add_argument("--seed", type=int, default=0, help="seed set of the worlds")
    parser.add_argument("--matrix", type=int, default=256, help="phantom matrix (0: the independent family draws it)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write every number and every case here")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="summarize the cases of an earlier run's --json again (nothing is scored; --worlds, --n, --model "
        "and --matrix are then those of that run; --json rewrites it with the new summaries); several runs of "
        "the same model (other seed sets) are pooled, world by world",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="two earlier runs' --json on the same cases: each target metric and the rule's score before and after, "
        "and the paired difference with a bootstrap 95 %% interval (nothing is scored; --json writes the comparison)",
    )
    args = parser.parse_args(argv)
    if args.compare:
        return _compare(args)
    if args.from_json:
        model, results, cases = _resummarize(args)
    else:
        model, results, cases = _score(args)
    worlds = list(results)
    width = max(len(w) for w in worlds) + 4
    print("\n" + " " * 34 + "".join(f"{w:>{width + 8}s}" for w in worlds))
    for name in ROWS:
        cells = []
        for world in worlds:
            value = results[world].get(name, "n/a")
            text = f"{value[0]:.3f}-{value[1]:.3f}" if isinstance(value, list) else str(value)
            cells.append(f"{text + _met(name, value):>{width + 8}s}")
        print(f"{name:34s}" + "".join(cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": model, "argv": sys.argv[1:], "summary": results, "cases": cases}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"written {args.json}")
    return 0


def _score(args: argparse.Namespace) -> tuple[str, dict, dict]:
    """Score every world of ``args`` with the served pipeline: (model id, summaries, cases)."""
    from medai.evaluation.served import score_cases, summarize
    from medai.evaluation.worlds import REAL_WORLDS, world_cases
    from medai.inference.classifier import Classifier

    clf = Classifier.load(args.model, threads=args.threads)
    print(f"model {clf.scoring_id}; {os.cpu_count()} cores", flush=True)
    results, cases = {}, {}
    for world in args.worlds:
        start = time.perf_counter()
        n = None if world in REAL_WORLDS else args.n
        rows = score_cases(
            clf,
            world_cases(world, n, seed=args.seed, matrix=args.matrix or None),
            progress=lambda r: print(
                f"  {r.case_id:28s} {r.label:16s} -> {r.predicted or 'ERROR':16s} p_covid "
                f"{r.probabilities.get('covid19', float('nan')):.3f} lesion {r.lesion_truth:5.1f} -> "
                f"{r.lesion_estimate:5.1f} lungs {r.lung_truth_ml:5.0f} -> {r.lung_estimate_ml:5.0f} ml "
                f"{r.severity} {','.join(r.qc_flags)} {r.error}",
                flush=True,
            ),
        )
        results[world] = summarize(rows, n_bootstrap=args.bootstrap, seed=args.seed)
        results[world]["seconds"] = round(time.perf_counter() - start, 1)
        cases[world] = [r.to_dict() for r in rows]
    return clf.scoring_id, results, cases


def _resummarize(args: argparse.Namespace) -> tuple[str, dict, dict]:
    """The summaries of earlier runs' cases, computed again and pooled per world (their scoring times added):
    (model id, summaries, cases).

    Raises:
        SystemExit: the runs scored different models, or share a case (the same seed set twice).
    """
    from medai.evaluation.served import ScoredCase, summarize

    runs = [(path, json.loads(path.read_text())) for path in args.from_json]
    models = sorted({run["model"] for _, run in runs})
    if len(models) > 1:
        raise SystemExit(f"eval_ood: --from-json runs must score one model to be pooled, not {', '.join(models)}")
    cases: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    for path, run in runs:
        print(f"model {run['model']}; cases of {path} (run with {' '.join(run['argv'])})", flush=True)
        for world, rows in run["cases"].items():
            cases.setdefault(world, []).extend(rows)
            seconds[world] = seconds.get(world, 0.0) + run["summary"].get(world, {}).get("seconds", 0.0)
    results = {}
    for world, rows in cases.items():
        ids = [r["case_id"] for r in rows]
        if len(set(ids)) < len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise SystemExit(
                f"eval_ood: --from-json runs must not share cases, but {twice[0]} and {len(twice) - 1} more are in two"
            )
        results[world] = summarize([ScoredCase.from_dict(r) for r in rows], n_bootstrap=args.bootstrap, seed=args.seed)
        if seconds[world]:
            results[world]["seconds"] = round(seconds[world], 1)
    return models[0], results, cases


def _compare(args: argparse.Namespace) -> int:
    """Print (and with --json write) :func:`medai.evaluation.served.compare` for every world both runs scored."""
    from medai.evaluation.served import ScoredCase, compare

    before, after = (json.loads(path.read_text()) for path in args.compare)
    print(f"before: {before['model']} ({args.compare[0]})\nafter:  {after['model']} ({args.compare[1]})")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for world in [w for w in before["cases"] if w in after["cases"]]:
        rows = [[ScoredCase.from_dict(r) for r in run["cases"][world]] for run in (before, after)]
        out[world] = compare(*rows, n_bootstrap=args.bootstrap, seed=args.seed)
        print(f"\n{world} ({len(rows[0])} cases)   before     after   difference (95 % interval, paired)")
        for name, m in out[world].items():
            low, high = m["difference_ci"]
            change = f"{m['difference']:+.4f} ({low:+.4f} to {high:+.4f})"
            print(f"  {name:24s} {m['before']:8.4f}  {m['after']:8.4f}  {change}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"before": before["model"], "after": after["model"], "compare": out}, indent=1))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
