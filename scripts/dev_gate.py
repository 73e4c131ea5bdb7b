"""A development gate for the quantification's opacity rules: cache development cases once, then score the rules of
whichever ``medai`` is imported on them, with a stability yardstick.

A change to the rules (``medai.quantify.opacities``) needs many readings of the same cases while it is developed.
Scoring them with ``scripts/eval_ood.py`` regenerates every phantom and reruns both networks each time (10-30 s a
case); this script does that once per case (``cache``: the coarse HU, the served lungs, the classifier's logits and
QC flags), and ``score`` then reads only the opacity step, the measurement, the decision layer and the served
label (about a second a case). It reads the shipped pipeline exactly: on independent-val seed set 4 the cached
``/19`` arm equals what ``medai predict`` serves (docs/ood.md, "ninth").

The stability yardstick (docs/ood.md, "eighth"): each case is read again with 5 % of its lungs' surface voxels
taken away at random (0.9 % of the volume); a rule that jumps with the mask moves the lesion % and the label.

Usage (a candidate lives in another checkout, say a worktree of a branch; ``--medai-from`` imports it instead of
this checkout's ``medai``)::

    python scripts/dev_gate.py cache --world independent-val --seed 4 --n 180 --normals-after 90 \\
        --cache-dir runs/devgate/iv-s4 --shard 0/2 &   # and --shard 1/2 beside it: 120 cases in about 25 minutes
    python scripts/dev_gate.py score --cache-dir runs/devgate/iv-s4 --json runs/devgate/q19.json
    python scripts/dev_gate.py score --cache-dir runs/devgate/iv-s4 --medai-from ../wt-candidate \\
        --json runs/devgate/candidate.json
    python scripts/dev_gate.py score --cache-dir runs/devgate/iv-s4 --set DEPENDENT_BAND_CLEARING=0.65   # one variant

Where the cache holds the true lesions (phantom worlds; cached since 2026-12-08), each reading is also split
against them: opacity counted outside the true lesions, and true lesion missed (``truth_split``). The real
patient's worlds (``real-sweep``, ``real-atelectasis``: the atelectasis grid is the band rules' hardest normal) are
cached the same way, with ``--world``.

The cache holds generated phantoms' coarse volumes (tens of MB): keep it under ``runs/`` (ignored by git).
Development cases only: a seed set scored here is spent for checks (docs/ood.md keeps the list). Research use only.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRIM_SHARE = 0.05  # of the lungs' surface voxels taken away by the stability yardstick


def _import_medai_from(root: str) -> None:
    """Import ``medai`` from ``root`` instead of the editable install (whose finder would win over ``sys.path``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, os.path.abspath(root))
    import medai

    if not os.path.abspath(medai.__file__).startswith(os.path.abspath(root)):
        raise SystemExit(f"--medai-from {root}: medai was imported from {medai.__file__}")


def cache_cases(
    world: str, seed: int, n: int, normals_after: int, cache_dir: Path, shard: tuple[int, int] = (0, 1)
) -> int:
    """Score cases ``0..n-1`` of ``world`` (only the normals from ``normals_after`` on) with the served pipeline and
    keep what the opacity step and the decision need; cases already cached are skipped. ``shard`` ``(k, m)``: only
    every ``m``-th of those cases from the ``k``-th (one process per core). Returns how many were new."""
    from medai.inference.classifier import Classifier
    from medai.labels import CLASS_NAMES
    from medai.quantify.grid import block_mean
    from medai.quantify.measure import _orientation

    cache_dir.mkdir(parents=True, exist_ok=True)
    clf = Classifier.load(None, threads=1)
    new = 0
    wanted = [i for i in range(n) if i < normals_after or CLASS_NAMES[i % len(CLASS_NAMES)] == "normal"]
    mine = [i for i in wanted[shard[0] :: shard[1]] if not (cache_dir / f"{i:04d}.pkl").exists()]
    for i, case in _cases(world, seed, mine):
        out = cache_dir / f"{i:04d}.pkl"
        t0 = time.perf_counter()
        volume = case.volume
        pred = clf.predict(volume)
        quant = pred.quantification
        lr_dim, _, sup_high = _orientation(volume)
        ap_dim = 3 - lr_dim
        record = {
            "case_id": case.case_id,
            "label": case.label,
            "truth": case.lesion_percent,
            "contrast": case.factors.get("contrast") not in (None, "none", False),
            "coarse": block_mean(volume.hu, quant.grid.factors),
            "lungs": quant.lung_mask.copy(),
            "grid": quant.grid,
            "logits": np.asarray(pred.logits, np.float64),
            "flags": tuple(pred.qc_flags),
            "ap_dim": ap_dim,
            "posterior_high": bool(volume.direction[1, 2 - ap_dim] > 0),  # as quantify reads it
            "sup_high": sup_high,
            # the true lesions on the coarse grid (each block's share), for reading parts against the truth
            "truth_coarse": None if case.lesion_mask is None else block_mean(case.lesion_mask > 0, quant.grid.factors),
            "served_lesion": quant.lesion_percent,
            "served_label": pred.label,
        }
        tmp = out.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(record, f)
        tmp.replace(out)
        new += 1
        print(
            f"{case.case_id} {case.label:16s} true {case.lesion_percent:6.2f} read {quant.lesion_percent:6.2f} "
            f"{pred.label} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    return new


def _cases(world: str, seed: int, indices: Sequence[int]) -> Iterator[tuple[int, Any]]:
    """Cases ``indices`` of ``world``, each with its index. A synthetic world makes each case from its own seed
    (one call per case skips the others' phantoms); the real patient's worlds make their copies in turn (one pass,
    not one pass per case)."""
    from medai.evaluation.worlds import REAL_WORLDS, world_cases

    if not indices:
        return
    if world in REAL_WORLDS:
        wanted = set(indices)
        for i, case in enumerate(world_cases(world, max(indices) + 1, seed=seed, matrix=None)):
            if i in wanted:
                yield i, case
        return
    for i in indices:
        yield i, next(world_cases(world, i + 1, seed=seed, start=i, matrix=None))


def set_constants(assignments: Sequence[str]) -> dict[str, Any]:
    """Override constants of the imported ``medai.quantify.opacities`` (``NAME=V`` or ``NAME=LO,HI``) so that one
    cache reads several variants of a rule without a branch each; returns what was set.

    Raises:
        ValueError: not ``NAME=VALUE``, no such upper-case constant, or not numbers.
    """
    import medai.quantify.opacities as opacities

    out: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or not name.isupper() or not hasattr(opacities, name):
            raise ValueError(f"--set {assignment!r}: NAME=VALUE with NAME a constant of medai.quantify.opacities")
        try:
            numbers = [float(x) for x in text.split(",")]
        except ValueError:
            raise ValueError(f"--set {assignment!r}: the value must be a number or numbers lo,hi") from None
        value = numbers[0] if len(numbers) == 1 else tuple(numbers)
        setattr(opacities, name, value)
        out[name] = value
    return out


def trimmed(lungs: np.ndarray, seed: int, share: float = TRIM_SHARE) -> np.ndarray:
    """``lungs`` with ``share`` of their surface voxels (6-neighbour) set to 0, drawn with ``seed``."""
    from scipy import ndimage

    lung = lungs > 0
    surface = np.flatnonzero(lung & ~ndimage.binary_erosion(lung, border_value=1))
    out = lungs.copy()
    rng = np.random.default_rng(seed)
    out.flat[rng.choice(surface, size=int(share * surface.size), replace=False)] = 0
    return out


def read_case(record: dict[str, Any], lungs: np.ndarray, clf: Any) -> dict[str, Any]:
    """The imported ``medai``'s opacity step, measurement, decision layer and served label on cached lungs."""
    from medai.inference.classifier import served_decision
    from medai.quantify.measure import _measure
    from medai.quantify.opacities import segment_opacities
    from medai.quantify.params import QuantifyParams

    found = segment_opacities(
        record["coarse"],
        lungs,
        record["grid"].spacing_mm,
        QuantifyParams(),
        ap_dim=record["ap_dim"],
        posterior_high=record["posterior_high"],
    )
    in_lungs = lungs > 0
    weight = getattr(found, "weight", None)
    if weight is None:  # a rules version that counts its mask
        lesion_w = ((found.mask > 0) & in_lungs).astype(np.float32)
        cons_w = lesion_w * (found.mask == 2)
    else:
        lesion_w, cons_w = weight * in_lungs, found.consolidation * in_lungs
    quant = _measure(
        lungs,
        in_lungs.astype(np.float32),
        lesion_w,
        cons_w,
        record["grid"],
        sup_high=record["sup_high"],
        lung_mask=lungs,
        lesion_mask=found.mask,
    )
    flags = tuple(f for f in record["flags"] if f != "expiration") + (("expiration",) if found.expiration else ())
    probabilities = clf._probabilities(record["logits"], quant)
    label, _ = served_decision(clf.rule, probabilities, quant.lesion_percent, flags)
    out = {"lesion": float(quant.lesion_percent), "pred": label, "p_covid19": float(probabilities[1])}
    out.update(truth_split(record, lesion_w, lungs))
    return out


def truth_split(record: dict[str, Any], lesion_w: np.ndarray, lungs: np.ndarray) -> dict[str, float]:
    """Where the counted opacity ``lesion_w`` lies against the true lesions (the cache's ``truth_coarse``, each
    block's true share; a normal without it has none), as % of the ``lungs``: ``read_in_truth`` (counted inside
    true lesions), ``false_opacity`` (counted outside them) and ``missed`` (true lesion not counted). Empty when the
    case's truth was not cached."""
    truth = record.get("truth_coarse")
    if truth is None and record["label"] == "normal":
        truth = np.zeros(lesion_w.shape, np.float32)
    if truth is None:
        return {}
    in_lungs = lungs > 0
    n = max(1, int(np.count_nonzero(in_lungs)))
    t = np.where(in_lungs, truth, np.float32(0))
    inside = float((lesion_w * t).sum())
    return {
        "read_in_truth": 100.0 * inside / n,
        "false_opacity": 100.0 * float((lesion_w * (1.0 - t)).sum()) / n,
        "missed": 100.0 * (float(t.sum()) - inside) / n,
    }


def summarize(rows: list[dict[str, Any]], mae_cases: int) -> dict[str, Any]:
    """The gate's numbers: normals at 1 % or more (and without contrast), normals called normal, lesion MAE of the
    first ``mae_cases`` cases, the layer's covid19-vs-rest AUC, the trim's moves, and where cases were cached with
    their truth, the opacity read outside the true lesions and the true lesion missed (:func:`truth_split`)."""
    from medai.evaluation.metrics import roc_auc

    normals = [r for r in rows if r["label"] == "normal"]
    first = [r for r in rows if r["index"] < mae_cases]
    out: dict[str, Any] = {
        "cases": len(rows),
        "normals": len(normals),
        "normals_at_1_percent": sum(r["lesion"] >= 1.0 for r in normals),
        "normals_without_contrast_at_1_percent": sum(r["lesion"] >= 1.0 for r in normals if not r["contrast"]),
        "normals_without_contrast": sum(not r["contrast"] for r in normals),
        "normals_called_normal": float(np.mean([r["pred"] == "normal" for r in normals])) if normals else None,
        "lesion_mae": float(np.mean([abs(r["lesion"] - r["truth"]) for r in first])) if first else None,
        "covid19_auc": roc_auc([r["label"] == "covid19" for r in rows], [r["p_covid19"] for r in rows]),
        "trim_moved_over_0_5": sum(abs(r["trim_lesion"] - r["lesion"]) > 0.5 for r in rows),
        "trim_moved_over_1": sum(abs(r["trim_lesion"] - r["lesion"]) > 1.0 for r in rows),
        "trim_labels_changed": sum(r["trim_pred"] != r["pred"] for r in rows),
        "trim_mean_abs_move": float(np.mean([abs(r["trim_lesion"] - r["lesion"]) for r in rows])) if rows else None,
    }
    # Against the true lesions (cases cached with their truth): false opacity in normals and in disease, and the
    # true lesion missed in disease, each the mean % of the lungs.
    known = [r for r in rows if "missed" in r]
    disease = [r for r in known if r["label"] != "normal"]
    for name, group, key in (
        ("normals_false_opacity", [r for r in known if r["label"] == "normal"], "false_opacity"),
        ("disease_false_opacity", disease, "false_opacity"),
        ("disease_missed", disease, "missed"),
    ):
        out[name] = float(np.mean([r[key] for r in group])) if group else None
    out["cases_with_truth"] = len(known)
    return out


def score(cache_dir: Path, mae_cases: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every cached case read with the imported ``medai``, as is and under the trim; the rows and their summary."""
    from medai.inference.classifier import Classifier
    from medai.quantify.measure import QUANTIFY_VERSION

    clf = Classifier.load(None, threads=1)
    rows = []
    for path in sorted(cache_dir.glob("*.pkl")):
        with path.open("rb") as f:
            record = pickle.load(f)
        index = int(path.stem)
        row = {"case_id": record["case_id"], "index": index, "label": record["label"], "truth": record["truth"]}
        row["contrast"] = record["contrast"]
        row.update(read_case(record, record["lungs"], clf))
        moved = read_case(record, trimmed(record["lungs"], index), clf)
        row.update(trim_lesion=moved["lesion"], trim_pred=moved["pred"])
        rows.append(row)
    summary = {"rules": QUANTIFY_VERSION, **summarize(rows, mae_cases)}
    return rows, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="score development cases once with the served pipeline and keep them")
    c.add_argument("--world", default="independent-val")
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--n", type=int, required=True, help="cases 0..n-1")
    c.add_argument("--normals-after", type=int, default=None, help="from this case on, keep only the normals")
    c.add_argument("--cache-dir", type=Path, required=True)
    c.add_argument("--shard", default="0/1", help="K/M: every M-th case from the K-th (run M processes, K = 0..M-1)")
    s = sub.add_parser("score", help="read the cached cases with the imported medai's rules")
    s.add_argument("--cache-dir", type=Path, required=True)
    s.add_argument("--mae-cases", type=int, default=90, help="lesion MAE over the cases below this index")
    s.add_argument("--medai-from", default=None, help="import medai from this checkout (a candidate's worktree)")
    s.add_argument("--json", type=Path, default=None, help="write the rows and the summary here")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=V[,V]",
        help="override a constant of medai.quantify.opacities for this reading (a number, or a pair as lo,hi)",
    )
    args = parser.parse_args(argv)
    if args.command == "cache":
        normals_after = args.n if args.normals_after is None else args.normals_after
        k, m = (int(x) for x in args.shard.split("/"))
        if not 0 <= k < m:
            parser.error(f"--shard must be K/M with 0 <= K < M, not {args.shard}")
        cache_cases(args.world, args.seed, args.n, normals_after, args.cache_dir, (k, m))
        return 0
    if args.medai_from:
        _import_medai_from(args.medai_from)
    try:
        overrides = set_constants(args.set)
    except ValueError as error:
        parser.error(str(error))
    rows, summary = score(args.cache_dir, args.mae_cases)
    if overrides:
        summary["overrides"] = overrides
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
