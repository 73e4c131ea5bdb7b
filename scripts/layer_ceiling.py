"""How far the decision features can go: each decision-layer feature set fitted *inside* a world, cross-validated.

The shipped layer is fitted on the training world and read on others. This asks a different question: if the
layer could be fitted on the world it is read on (its own family's cases, other folds), what covid19 AUC would
the same features give? If even that stays under a target, no refitting, reweighting or pooling of fitting
worlds can reach it: the evidence itself must change (docs/ood.md, "The findings' ceiling").

Rows are ``(truth, decision features)`` of the served pipeline's cases (:func:`medai.inference.decision.
decision_features` of the shipped network's logits and quantification): scored here for every ``--world``
given as ``WORLD:SEED:N`` and kept in ``--out-dir`` (reused while the model and quantification are the same),
and, with ``--stage-rows``, rows a decision stage cached (``scripts/train_reference.py --decision-only
--out-dir DIR`` keeps one ``DIR/decision_rows_WORLD-sSEED.pkl`` per world and seed set: its fitting world, seed
set 1; its choosing and report worlds, seed set 0). Rows of one world from several seed sets are pooled.

For every world, feature set and regularization: stratified 5-fold cross-validation, repeated with shuffled
folds, reporting the covid19-vs-rest AUC, against the normals and against other pneumonia, and the share of
normals whose most probable class is normal. ``--with-train`` also adds the training world's rows to every
fold's fit (a layer fitted on both families). Research use only.

Example:
    python scripts/layer_ceiling.py --stage-rows runs/q13d/decision_rows_{train-s1,heldout-s0}.pkl \
        --world independent-val:1:90
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medai.evaluation.metrics import roc_auc
from medai.inference.decision import FEATURE_SETS
from medai.labels import CLASS_NAMES
from medai.training.decision_fit import fit_decision_layer

Row = tuple[str, str, dict[str, float]]  # (world, label, decision features)


def scored_rows(world: str, seed: int, n: int, out_dir: Path) -> list[Row]:
    """The served pipeline's decision features of ``n`` cases of ``world`` (seed set ``seed``), cached."""
    from medai.evaluation.served import decision_rows
    from medai.inference.classifier import Classifier

    clf = Classifier.load()
    cache = out_dir / f"rows-{world}-s{seed}-n{n}.json"
    if cache.exists():
        kept = json.loads(cache.read_text())
        if kept["scoring_id"] == clf.scoring_id:
            print(f"{world} seed set {seed}: {n} rows reused from {cache}", flush=True)
            return [(world, label, features) for label, features in kept["rows"]]
    rows = [(case.label, features) for case, features, _ in decision_rows(clf, world, n, seed)]
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"scoring_id": clf.scoring_id, "rows": rows}))
    return [(world, label, features) for label, features in rows]


def stage_rows(path: Path) -> list[Row]:
    """The rows of one world and seed set that a decision stage cached (``decision_rows_WORLD-sSEED.pkl``)."""
    return [(case.world, case.label, features) for case, features, _ in pickle.loads(path.read_bytes())["rows"]]


def _auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC of two groups of scores (nan when one is empty)."""
    truth = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    return float(roc_auc(truth, np.r_[positives, negatives]))


def cross_validated(
    rows: list[Row], feature_set: str, strength: float, *, extra: Sequence[Row] = (), repeats: int = 5
) -> dict[str, float]:
    """Mean over ``repeats`` shuffles of 5-fold cross-validated metrics; ``extra`` rows join every fold's fit."""
    from sklearn.model_selection import StratifiedKFold

    y = np.array([CLASS_NAMES.index(label) for _, label, _ in rows])
    covid, normal = CLASS_NAMES.index("covid19"), CLASS_NAMES.index("normal")
    got: dict[str, list[float]] = {"covid19_auc": [], "vs_normal": [], "vs_other_pneumonia": [], "normals_normal": []}
    for repeat in range(repeats):
        p_covid, top = np.zeros(len(rows)), np.zeros(len(rows), int)
        for fit, test in StratifiedKFold(5, shuffle=True, random_state=repeat).split(np.zeros(len(rows)), y):
            train = [rows[i] for i in fit] + list(extra)
            layer = fit_decision_layer(
                [f for _, _, f in train], [label for _, label, _ in train], feature_set=feature_set,
                regularization=strength,
            )  # fmt: skip
            for i in test:
                p = layer.probabilities(rows[i][2])
                p_covid[i], top[i] = p[covid], int(np.argmax(p))
        pos = p_covid[y == covid]
        got["covid19_auc"].append(_auc(pos, p_covid[y != covid]))
        got["vs_normal"].append(_auc(pos, p_covid[y == normal]))
        got["vs_other_pneumonia"].append(_auc(pos, p_covid[(y != covid) & (y != normal)]))
        got["normals_normal"].append(float(np.mean(top[y == normal] == normal)))
    return {k: round(float(np.mean(v)), 3) for k, v in got.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--world", action="append", default=[], help="WORLD:SEED:N to score here (repeatable)")
    parser.add_argument(
        "--stage-rows", type=Path, nargs="+", default=[], help="a decision stage's cached decision_rows_WORLD-sSEED.pkl"
    )
    parser.add_argument("--feature-sets", nargs="+", default=["cnn", "findings", "combined"], choices=FEATURE_SETS)
    parser.add_argument("--regularizations", nargs="+", type=float, default=[0.3, 1.0])
    parser.add_argument("--repeats", type=int, default=5, help="shuffled 5-fold splits per variant")
    parser.add_argument("--with-train", action="store_true", help="also fit every fold with the training rows")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/layer_ceiling"))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    rows: list[Row] = [row for path in args.stage_rows for row in stage_rows(path)]
    for spec in args.world:
        try:
            world, seed, n = spec.split(":")
            rows += scored_rows(world, int(seed), int(n), args.out_dir)
        except ValueError:
            parser.error(f"--world must be WORLD:SEED:N, not {spec!r}")
    by_world: dict[str, list[Row]] = {}
    for row in rows:
        by_world.setdefault(row[0], []).append(row)
    if not by_world:
        parser.error("no rows: give --world or --stage-rows")
    training = by_world.get("train", [])
    results: dict[str, Any] = {}
    for world, world_rows in by_world.items():
        counts = {c: sum(label == c for _, label, _ in world_rows) for c in CLASS_NAMES}
        print(f"\n{world}: {len(world_rows)} rows {counts}, fitted inside the world (5-fold x {args.repeats})")
        plans: list[tuple[str, Sequence[Row]]] = [("", [])]
        if args.with_train and world != "train" and training:
            plans.append((" + training rows", training))
        for suffix, extra in plans:
            for feature_set in args.feature_sets:
                for strength in args.regularizations:
                    name = f"{feature_set}, C={strength:g}{suffix}"
                    m = cross_validated(world_rows, feature_set, strength, extra=extra, repeats=args.repeats)
                    results.setdefault(world, {})[name] = m
                    print(f"  {name:40s} " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
