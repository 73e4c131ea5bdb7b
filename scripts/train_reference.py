"""Reproduce the shipped model ``models/medai-ref.onnx`` and its checkpoint ``.pt`` on a CPU (2 cores, < 60 min).

Synthetic data only: balanced phantoms with varied ``split="train"``
acquisitions (fast generator), strong augmentation, early stopping on the
validation loss, temperature scaling on validation. Then a held-out test set
from ``sample_spec(split="heldout")`` (acquisitions outside the training
ranges, other seeds) is scored and its metrics are printed and stored in the
checkpoint under ``heldout``. Prints where the time went.

Usage::

    python scripts/train_reference.py                # full run: ~50 min on 2 cores (40 + 20 epochs), budget 60 min
    python scripts/train_reference.py --quick        # 2-3 min smoke run (not the shipped model)

The model is a research artefact trained on phantoms: not for clinical use.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medai.evaluation.evaluate import evaluate_predictions
from medai.evaluation.worlds import REAL_WORLDS, WORLDS
from medai.inference.calibration import DecisionRule
from medai.inference.decision import FEATURE_SETS
from medai.labels import CLASS_NAMES, Severity
from medai.preprocess import PreprocessParams
from medai.training.config import TrainConfig
from medai.training.data import prepare_synthetic, synthetic_inputs
from medai.training.loop import train
from medai.training.network import count_params, estimate_flops, load_checkpoint, predict_logits

if TYPE_CHECKING:
    from medai.inference.decision import DecisionLayer


def heldout_set(n: int, *, seed: int, params_dict: dict, workers: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` balanced held-out phantoms (acquisitions outside the training ranges), preprocessed."""
    from medai.phantoms import synthetic

    rng = np.random.default_rng(seed)
    specs = [synthetic.sample_spec(rng, label=CLASS_NAMES[i % 3], split="heldout") for i in range(n)]
    arrays = synthetic_inputs(specs, params=PreprocessParams.from_dict(params_dict), cache_dir="", workers=workers)
    return arrays, np.array([CLASS_NAMES.index(s.label) for s in specs], dtype=np.int64)


def write_model_card(checkpoint: str | Path, *, timings: dict[str, float] | None = None) -> Path:
    """Export ``<checkpoint>.onnx`` (parity-checked) and write the card ``<checkpoint>.json`` beside it.

    The card names the ONNX file as the shipped model (its sha256 is what
    ``medai.Classifier.load`` verifies) and the checkpoint it came from.
    """
    from medai.training.export import export_onnx

    path = Path(checkpoint)
    out = path.with_suffix(".json")
    # A re-export (no new timings: --card-only, --decision-only) keeps what the card recorded of how the model
    # was made; a training run starts a new card.
    before = json.loads(out.read_text()) if out.is_file() and timings is None else {}
    timings = timings if timings is not None else before.get("timings_s")
    report = export_onnx(path, path.with_suffix(".onnx"))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    card = {
        "model": report.path.name,
        "sha256": report.sha256,
        "checkpoint": path.name,
        "checkpoint_sha256": report.checkpoint_sha256,
        "export_parity": {"max_logit_diff": report.max_logit_diff, "min_cam_corr": report.min_cam_corr},
        "intended_use": "Research use only. Not a medical device; not for diagnosis.",
        "training_data": "synthetic phantoms only (medai.phantoms.synthetic, split='train' acquisition ranges): "
        "not validated on patients",
        "class_names": list(ckpt["class_names"]),
        "temperature": float(ckpt["temperature"]),
        "decision_rule": ckpt["decision_rule"],
        "decision_layer": ckpt.get("decision_layer"),
        "decision_ablation": ckpt.get("decision_ablation"),
        "model_spec": ckpt["model_spec"],
        "preprocess": ckpt["preprocess"],
        "validation": {k: float(v) for k, v in ckpt.get("metrics", {}).items()},
        "heldout_test": ckpt.get("heldout", {}),
        "data": ckpt.get("data"),
        "code": ckpt.get("code"),
        "reproduce": before.get("reproduce", "python scripts/train_reference.py"),
        "timings_s": timings or {},
    }
    out.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return out


def _world_rows(out_dir: Path, key: dict, world: str, seed: int, n: int | None, score: Callable[[int], list]) -> list:
    """The served rows of the first ``n`` cases of ``world``'s seed set ``seed`` (all of them when ``n`` is None).

    Kept in ``out_dir`` beside ``key`` and reused while it is unchanged. Asking for more cases than are kept scores
    only the missing ones: ``score(start)`` returns the rows of cases ``start`` to ``n``, and case ``i`` of a seed set
    is the same whatever ``n`` is (:func:`medai.evaluation.worlds.world_cases`).
    """
    cache = out_dir / f"decision_rows_{world}-s{seed}.pkl"
    cached = pickle.loads(cache.read_bytes()) if cache.exists() else None
    rows, complete = (cached["rows"], cached["complete"]) if cached and cached["key"] == key else ([], False)
    if complete or (n is not None and len(rows) >= n):
        print(f"decision layer: {world} rows (seed set {seed}) reused from {cache}", flush=True)
    else:
        rows = rows + score(len(rows))
        cache.write_bytes(pickle.dumps({"key": key, "rows": rows, "complete": n is None}))
    return rows if n is None else rows[:n]


def _scored(rows: list, layer: object, rule: DecisionRule) -> list:
    from medai.evaluation.served import ScoredCase
    from medai.inference.classifier import served_decision, served_severity

    out = []
    for case, features, measured in rows:
        probs = layer.probabilities(features)  # type: ignore[attr-defined]
        label, indeterminate = served_decision(rule, probs, measured["lesion"], measured["flags"])
        severity = served_severity(label, indeterminate, Severity(measured["grade"])).value
        out.append(
            ScoredCase(
                case.case_id, case.world, case.label, case.pattern, case.lesion_percent, case.lung_volume_ml,
                {c: float(v) for c, v in zip(CLASS_NAMES, probs, strict=True)}, label,
                indeterminate, measured["lesion"], measured["lung_ml"], severity, tuple(measured["flags"]),
            )
        )  # fmt: skip
    return out


def _network_digest(ckpt: dict) -> str:
    """sha256 of what makes the network's logits: its weights, spec, preprocessing and temperature.

    Not of the exported ONNX file, whose bytes differ from one export of the same weights to the next.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(ckpt["model_state"].items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    extra = {k: ckpt.get(k) for k in ("model_spec", "preprocess", "temperature", "class_names")}
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _rows_key(ckpt: dict) -> dict:
    """What the decision stage's served rows depend on: they are reused while it is unchanged."""
    from medai.phantoms.synthetic import GENERATOR
    from medai.quantify.head import shipped_quantnet
    from medai.quantify.measure import METHOD_HYBRID
    from medai.quantify.params import QuantifyParams

    return {
        "network_sha256": _network_digest(ckpt),
        "quantification": f"{METHOD_HYBRID} {QuantifyParams()!r} {shipped_quantnet().model_id}",
        "phantoms": GENERATOR,
    }


def _incumbent(ckpt: dict) -> tuple[str, DecisionLayer] | None:
    """The checkpoint's own decision layer as a candidate: ``(name, layer)``, or None when it has none.

    Named after the variant it was chosen as (``findings (kept, fitted before)``), however often it was kept.
    """
    from medai.inference.decision import DecisionLayer

    if ckpt.get("decision_layer") is None:
        return None
    before = str(ckpt.get("decision_ablation", {}).get("chosen", "previous")).split(" (kept")[0]
    return f"{before} (kept, fitted before)", DecisionLayer.from_dict(ckpt["decision_layer"])


# The decision layer's default menu: every feature set at three strengths. The smaller findings sets and stronger
# regularization transfer better to the independent family and can cost in-distribution AUC, which the choosing
# worlds do not show; the in-distribution guard (IN_DISTRIBUTION_GUARD) keeps the choice from paying that (docs/ood.md).
DEFAULT_FEATURE_SETS = ("cnn", "findings", "combined", "findings-no-location", "findings-burden")
DEFAULT_REGULARIZATIONS = (1.0, 0.3, 0.1)


# Worlds a decision layer can be fitted on, each with ``n_fit`` cases of seed set 1 (their test and choosing cases
# are seed set 0): the training world, and the leave-extremes-out world, whose acquisitions lie outside
# training's and whose normal lungs carry the partial-volume opacity that the training world's hardly have.
FIT_WORLDS = ("train", "heldout")
_FIT_DESCRIPTION = {
    "train": "training-world phantoms (medai.evaluation.worlds 'train', seed set 1)",
    "heldout": "leave-extremes-out phantoms (medai.evaluation.worlds 'heldout', seed set 1)",
}


def _fit_sources(fit_worlds: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """``(name suffix, worlds)`` of each set of fitting rows: every fit world alone, then all of them pooled.

    The training world's suffix is empty, so its variants keep the names they had before other worlds could fit.
    """
    unknown = set(fit_worlds) - set(FIT_WORLDS)
    if unknown or not fit_worlds:
        raise ValueError(f"fit worlds must be some of {FIT_WORLDS}, not {sorted(unknown) or 'none'}")
    sources = [("" if w == "train" else f" on {w}", (w,)) for w in fit_worlds]
    if len(fit_worlds) > 1:
        sources.append((f" on {'+'.join(fit_worlds)}", tuple(fit_worlds)))
    return sources


def _variant_name(feature_set: str, tolerance: float, strength: float, suffix: str) -> str:
    """A decision-layer variant's name: its feature set, then only what differs from the defaults.

    The defaults (nothing forgiven, C = 1, fitted on the training world) add nothing, so a variant keeps the
    name it had before the option existed (and a kept layer's name still matches its refit).
    """
    name = feature_set + (f", {tolerance:g} % forgiven" if tolerance else "")
    return name + (f", C={strength:g}" if strength != 1 else "") + suffix


# The in-distribution guard of the decision layer's choice (covid19 AUC points a refit may lose against the kept
# layer's recipe), fixed on 2026-12-05 before the run that first used it (docs/ood.md).
IN_DISTRIBUTION_GUARD = 0.01


def _in_distribution_auc(
    rows_of: dict[str, list], feature_set: str, tolerance: float, strength: float, sources: Sequence[str]
) -> float:
    """A variant's covid19 AUC on the training world, on rows it was not fitted on.

    Cross-validated over the training-world fitting rows (the variant's other fitting worlds always in the fit);
    a variant fitted without the training world scores all of them.
    """
    from medai.training.decision_fit import cross_validated_auc

    train = rows_of["train"]
    others = [row for world in sources if world != "train" for row in rows_of[world]]
    return cross_validated_auc(
        [f for _, f, _ in train],
        [c.label for c, _, _ in train],
        feature_set=feature_set,
        regularization=strength,
        tolerance_percent=tolerance,
        also_fit=([f for _, f, _ in others], [c.label for c, _, _ in others]),
        folds=5 if "train" in sources else 0,
    )


def _guarded(
    candidates: Sequence[str], id_auc: dict[str, float], kept: str | None, guard_auc: float | None
) -> set[str]:
    """The candidates the choice may take: the kept layer, and those whose in-distribution AUC is at most
    ``guard_auc`` below its recipe's (``id_auc`` gains the kept layer's entry: its recipe's, refitted).

    Every candidate when there is no kept layer, no guard, or the kept layer's recipe is not on the menu.
    """
    recipe = None if kept is None else kept.split(" (kept")[0]
    if kept is None or guard_auc is None or recipe not in id_auc:
        if kept is not None and guard_auc is not None:
            print(f"decision layer: no guard (the kept layer's recipe {recipe!r} is not on the menu)", flush=True)
        return set(candidates)
    id_auc[kept] = id_auc[recipe]
    floor = id_auc[recipe] - guard_auc
    print(f"decision layer: in-distribution guard: cross-validated covid19 AUC >= {floor:.3f}", flush=True)
    return {kept} | {name for name in candidates if id_auc.get(name, -1.0) >= floor}


def _choosing_worlds(worlds: Sequence[str], fit_worlds: Sequence[str]) -> list[str]:
    """The validation worlds the variants are chosen on: those no variant was fitted on (a layer fitted on a world
    would be judged on its own distribution there).

    Raises:
        ValueError: every validation world is also a fit world.
    """
    choosing = [w for w in worlds if w not in fit_worlds]
    if not choosing:
        raise ValueError(f"nothing left to choose on: every validation world ({worlds}) is fitted on")
    return choosing


def decision_stage(
    checkpoint: Path,
    *,
    out_dir: Path,
    n_fit: int,
    n_select: int,
    threads: int | None,
    tolerances: Sequence[float] = (0.0,),
    fit_worlds: Sequence[str] = ("train",),
    regularizations: Sequence[float] = DEFAULT_REGULARIZATIONS,
    feature_sets: Sequence[str] = DEFAULT_FEATURE_SETS,
    report_worlds: Sequence[str] = (),
    n_report: int = 60,
    guard_auc: float | None = IN_DISTRIBUTION_GUARD,
    recalibrate: bool = False,
    keep_layer: bool = False,
) -> dict:
    """Fit the decision layer's variants, choose one on the out-of-distribution validation worlds.

    Variants: each of ``feature_sets`` (keys of ``FEATURE_SETS``); those that read the findings once per ``tolerances``
    (points of measured opacity forgiven, :func:`medai.inference.decision.forgive`); each at every inverse L2
    strength of ``regularizations``; each fitted on every source of :func:`_fit_sources`.

    Fit: ``n_fit`` cases of seed set 1 of each of ``fit_worlds`` (:data:`FIT_WORLDS`; their test and choosing
    cases are seed set 0). Choose: the variant with the best mean of (covid19 AUC + normals called normal) / 2
    - ECE over the validation worlds, the independent phantom family's validation split (when present) and the
    leave-extremes-out world, less those fitted on (:func:`_choosing_worlds`; all are still reported). The layer
    the checkpoint already has is a candidate too, scored on the same rows, and stays when it wins. Writes the
    chosen layer and the comparison into the checkpoint.

    Guard: those worlds are all out of distribution, so the rule alone would trade in-distribution AUC it cannot
    see. When the checkpoint has a layer, a refit is eligible only if its in-distribution covid19 AUC
    (:func:`_in_distribution_auc`: cross-validated on the training-world fitting rows) is at most ``guard_auc``
    below that of the kept layer's recipe; ``None`` turns the guard off.

    ``recalibrate``: the chosen layer is then recalibrated on the choosing worlds' rows (one temperature and a
    shift per class, :func:`medai.training.decision_fit.recalibrate`) and the recalibrated layer is the one
    written; its metrics on the choosing worlds are in-sample, the report worlds' are not.

    ``keep_layer``: nothing is refitted; the checkpoint's own layer is the only candidate (to recalibrate it alone).

    ``report_worlds`` (e.g. the test worlds): every variant is also scored there, on ``n_report`` cases of seed
    set 0 (the real patient: all its cases), after the choice and without any part in it; printed and written to
    ``out_dir/decision_report.json``, never into the checkpoint.
    """
    from medai.evaluation.served import choice_score, decision_rows, summarize
    from medai.inference.classifier import Classifier
    from medai.inference.decision import FINDINGS
    from medai.training.decision_fit import fit_decision_layer
    from medai.training.decision_fit import recalibrate as recalibrated
    from medai.training.export import export_onnx

    base = out_dir / "base.onnx"
    export_onnx(checkpoint, base)
    clf = Classifier.load(base, threads=threads)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    previous = ckpt.get("decision_ablation")
    if keep_layer:
        if ckpt.get("decision_layer") is None:
            raise ValueError(f"{checkpoint} has no decision layer to keep")
        feature_sets, guard_auc = (), None  # no variant to fit, so nothing to guard against
    rule = DecisionRule.from_dict(ckpt["decision_rule"])
    worlds = ["heldout"]
    try:
        import medai.phantoms.independent  # noqa: F401

        worlds.insert(0, "independent-val")
    except ImportError:
        print("no independent phantom family here: choosing on the leave-extremes-out world only", flush=True)
    # The served rows cost ~5 s a case; they depend only on the network, the quantification and the phantoms, so
    # they are kept beside the run, per world and seed set, and reused while those are unchanged (a decision-layer
    # change then costs seconds, and more cases cost only the new ones).
    key = _rows_key(ckpt)

    def served(world: str, n: int | None, seed: int, purpose: str) -> list:
        def score(start: int) -> list:
            print(f"decision layer: {world} cases {start} to {n or 'the last'} {purpose} (seed set {seed})", flush=True)
            return decision_rows(clf, world, n, seed, start=start)

        return _world_rows(out_dir, key, world, seed, n, score)

    selection = {w: served(w, n_select, 0, "to choose on") for w in worlds}
    rows_of = {world: served(world, n_fit, 1, "to fit on") for world in dict.fromkeys(("train", *fit_worlds))}
    choosing = _choosing_worlds(worlds, fit_worlds)
    print(f"decision layer: fitted on {' / '.join(fit_worlds)}, chosen on {' + '.join(choosing)}", flush=True)
    comparison, layers, recipes = {}, {}, {}

    def measured(layer: DecisionLayer) -> dict:
        """A variant's metrics on each choosing (and reported) validation world."""
        return {w: summarize(_scored(sel, layer, rule), n_bootstrap=200) for w, sel in selection.items()}

    for suffix, sources in _fit_sources(fit_worlds):
        rows = [row for world in sources for row in rows_of[world]]
        fitted_on = " + ".join(f"{n_fit} {_FIT_DESCRIPTION[w]}" for w in sources)
        for feature_set, tolerance, strength in itertools.product(feature_sets, tolerances, regularizations):
            if tolerance and not set(FEATURE_SETS[feature_set]) & set(FINDINGS):
                continue  # nothing to forgive in the logits
            name = _variant_name(feature_set, tolerance, strength, suffix)
            layer = fit_decision_layer(
                [f for _, f, _ in rows],
                [c.label for c, _, _ in rows],
                feature_set=feature_set,
                regularization=strength,
                tolerance_percent=tolerance,
                fitted_on=fitted_on,
            )
            layers[name] = layer
            recipes[name] = (feature_set, tolerance, strength, sources)
            comparison[name] = measured(layer)

    incumbent = _incumbent(ckpt)
    if incumbent is not None:
        # The layer the checkpoint already has competes too: refitting on new measurements is a candidate, not a
        # given (a layer fitted before a quantification change can still generalise better).
        name, kept = incumbent
        layers[name] = kept
        comparison[name] = measured(kept)

    def score(metrics: dict) -> float:
        return float(
            np.mean(
                [
                    choice_score(m.get("covid19_auc", 0.0), m["normals_called_normal"], m["ece"])
                    for w, m in metrics.items()
                    if w in choosing
                ]
            )
        )

    id_auc = {name: _in_distribution_auc(rows_of, *recipe) for name, recipe in recipes.items()}
    eligible = _guarded(comparison, id_auc, None if incumbent is None else incumbent[0], guard_auc)
    chosen = max((name for name in comparison if name in eligible), key=lambda name: score(comparison[name]))
    for name, metrics in comparison.items():
        mark = "  <- chosen" if name == chosen else ("" if name in eligible else "  (fails the guard)")
        auc = f" in-distribution AUC (cv) {id_auc[name]:.3f}" if name in id_auc else ""
        print(f"  {name:28s} score {score(metrics):.3f}{auc} " + json.dumps(metrics, default=str)[:500] + mark,
              flush=True)  # fmt: skip
    served_as, recalibration = chosen, None
    if recalibrate:
        rows = [row for w in choosing for row in selection[w]]
        where = f"{len(rows)} cases of {' + '.join(choosing)} (seed set 0, the choosing worlds)"
        fixed, how = recalibrated(
            layers[chosen], [f for _, f, _ in rows], [c.label for c, _, _ in rows], fitted_on=where
        )
        served_as, recalibration = f"{chosen} (recalibrated)", how.to_dict()
        layers[served_as] = fixed
        comparison[served_as] = measured(fixed)
        print(
            f"  {served_as:28s} temperature {how.temperature:.3f} class shifts {np.round(how.shift, 3).tolist()} "
            f"NLL {how.nll_before:.3f} -> {how.nll_after:.3f} on its {how.n_rows} rows (in-sample) "
            + json.dumps(comparison[served_as], default=str)[:500],
            flush=True,
        )
    ckpt["decision_layer"] = layers[served_as].to_dict()
    ckpt["decision_ablation"] = {
        "chosen": chosen,
        "recalibration": recalibration,
        "fit_worlds": list(fit_worlds),
        "selection_worlds": choosing,
        "reported_worlds": list(selection),
        "metrics": comparison,
        "in_distribution_auc": id_auc,
        "guard_auc": guard_auc,
        "eligible": sorted(eligible),
    }
    if keep_layer:  # the kept layer's own record (how it was chosen) stays with it
        ckpt["decision_ablation"]["kept_from"] = previous
    torch.save(ckpt, checkpoint)
    if report_worlds:
        _report(report_worlds, n_report, layers, served_as, rule, out_dir=out_dir, served=served)
    return ckpt["decision_ablation"]


def _report(
    worlds: Sequence[str],
    n: int,
    layers: dict,
    chosen: str,
    rule: DecisionRule,
    *,
    out_dir: Path,
    served: Callable[[str, int | None, int, str], list],
) -> None:
    """Every decision-layer variant scored on ``worlds`` once the choice is made (reported, never chosen on)."""
    from medai.evaluation.served import summarize

    report: dict[str, dict] = {}
    for world in worlds:
        count = None if world in REAL_WORLDS else n
        rows = served(world, count, 0, "to report on")
        print(f"decision layer, reported on {world} ({len(rows)} cases; not chosen on):", flush=True)
        for name, layer in layers.items():
            m = summarize(_scored(rows, layer, rule), n_bootstrap=200)
            report.setdefault(name, {})[world] = m
            low, high = m["ece_if_calibrated"]
            print(
                f"  {name:34s} covid19 AUC {m.get('covid19_auc', float('nan')):.3f} ECE {m['ece']:.3f} (calibrated: "
                f"{low:.3f}-{high:.3f}) normals called normal {m['normals_called_normal']:.2f} CT-0 "
                f"{m['normals_ct0']:.2f} indeterminate {m['indeterminate_rate']:.2f}"
                + ("  <- chosen" if name == chosen else ""),
                flush=True,
            )
    (out_dir / "decision_report.json").write_text(json.dumps({"chosen": chosen, "metrics": report}, indent=1))


def _decision_stage_of(args: argparse.Namespace) -> dict:
    """:func:`decision_stage` on the command line's checkpoint and options (alone or after training)."""
    return decision_stage(
        Path(args.output),
        out_dir=Path(args.out_dir),
        n_fit=args.n_fit,
        n_select=args.n_select,
        threads=args.threads,
        tolerances=args.tolerances,
        fit_worlds=args.fit_worlds,
        regularizations=args.regularizations,
        feature_sets=args.feature_sets,
        report_worlds=args.report_worlds,
        n_report=args.n_report,
        guard_auc=None if args.guard_auc < 0 else args.guard_auc,
        recalibrate=args.recalibrate,
        keep_layer=args.keep_layer,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="models/medai-ref.pt", help="final checkpoint (default: %(default)s)")
    parser.add_argument("--out-dir", default="runs/reference", help="run folder (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=900, help="training phantoms (default: %(default)s)")
    parser.add_argument("--n-val", type=int, default=180, help="validation phantoms (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=300, help="held-out test phantoms (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="maximum epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="phantom-generation processes (default: 2)")
    parser.add_argument("--cache-dir", default=None, help="input cache (default: ~/.cache/medai/inputs)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT_DIR/last.pt")
    parser.add_argument("--channels", type=int, nargs="+", help="network stage widths (default: TrainConfig's)")
    parser.add_argument("--strides", type=int, nargs="+", help="stage strides, one per --channels entry")
    parser.add_argument("--pooling", choices=("mean", "lse"), help="class-map pooling (default: TrainConfig's)")
    parser.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=20,
        help="second stage: this many epochs from the first stage's model at --finetune-lr (0: one stage; "
        "default: %(default)s)",
    )
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="second-stage peak LR (default: %(default)s)")
    parser.add_argument("--card-only", action="store_true", help="only (re)export the ONNX model and card of --output")
    parser.add_argument(
        "--decision-only", action="store_true", help="only fit the decision layer of --output, then export and card"
    )
    parser.add_argument("--n-fit", type=int, default=300, help="decision-layer fitting phantoms (default: %(default)s)")
    parser.add_argument(
        "--n-select",
        type=int,
        default=60,
        help="cases per world to choose the decision layer on (default: %(default)s)",
    )
    parser.add_argument(
        "--lung-margin-mm", type=float, default=10.0, help="lung-restricted input margin; 0: whole crop (default: 10)"
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the decision stage")
    parser.add_argument(
        "--tolerances",
        type=float,
        nargs="+",
        default=[0.0],
        help="decision-layer variants that forgive this many points of measured opacity (default: 0 only; "
        "docs/ood.md has the ablation of 0 0.5 1 2)",
    )
    parser.add_argument(
        "--recalibrate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="recalibrate the chosen decision layer on the choosing worlds (a temperature and a shift per class; "
        "docs/ood.md)",
    )
    parser.add_argument(
        "--keep-layer",
        action="store_true",
        help="refit nothing: the checkpoint's own decision layer is the only candidate (with --recalibrate: "
        "recalibrate it alone)",
    )
    parser.add_argument(
        "--fit-worlds",
        nargs="+",
        choices=FIT_WORLDS,
        default=["train"],
        help="worlds the decision layer's variants are fitted on, alone and pooled; the choice is made on the "
        "validation worlds not among them (default: %(default)s; docs/ood.md has the ablation of train heldout)",
    )
    parser.add_argument(
        "--feature-sets",
        nargs="+",
        choices=sorted(FEATURE_SETS),
        default=list(DEFAULT_FEATURE_SETS),
        help="the decision layer's feature sets, one variant each (default: %(default)s; docs/ood.md has the ablation)",
    )
    parser.add_argument(
        "--regularizations",
        type=float,
        nargs="+",
        default=list(DEFAULT_REGULARIZATIONS),
        help="inverse L2 strengths C of the decision layer's logistic regression, one variant each (default: "
        "%(default)s; docs/ood.md has the ablation)",
    )
    parser.add_argument(
        "--report-worlds",
        nargs="+",
        default=[],
        choices=WORLDS,
        help="also score every decision-layer variant on these worlds once the choice is made (the test worlds: "
        "reported, never chosen on; rows cached in --out-dir)",
    )
    parser.add_argument("--n-report", type=int, default=60, help="cases per --report-worlds world (default: 60)")
    parser.add_argument(
        "--guard-auc",
        type=float,
        default=IN_DISTRIBUTION_GUARD,
        help="a refitted decision layer may lose at most this much cross-validated in-distribution covid19 AUC "
        "against the kept layer's recipe (negative: no guard; default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 phantoms, 2 epochs, 30 held-out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.card_only:
        print(f"model card: {write_model_card(args.output)}")
        return 0
    if args.decision_only:
        _decision_stage_of(args)
        print(f"model card: {write_model_card(args.output)}")
        return 0
    if args.quick:
        args.n_train, args.n_val, args.n_test, args.epochs = 60, 15, 30, 2
        args.finetune_epochs = min(args.finetune_epochs, 1)
        args.output = str(Path(args.out_dir) / "quick.pt")
    torch.manual_seed(args.seed)
    cfg = TrainConfig(
        out_dir=args.out_dir,
        seed=args.seed,
        synthetic=args.n_train,
        synthetic_val=args.n_val,
        epochs=args.epochs,
        patience=6,
        batch_size=8,
        num_workers=1,
        cache_dir=args.cache_dir,
        prep_workers=args.workers,
        resume=args.resume,
        init_from=args.init_from,
        lr=args.lr,
        lung_margin_mm=args.lung_margin_mm,
        **({"channels": tuple(args.channels), "strides": tuple(args.strides)} if args.channels else {}),
        **({"pooling": args.pooling} if args.pooling else {}),
        output=str(Path(args.out_dir) / "stage1.pt") if args.finetune_epochs > 0 else args.output,
    )
    params = cfg.preprocess_params()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    data = prepare_synthetic(
        args.n_train,
        n_val=args.n_val,
        seed=args.seed,
        params=params,
        cache_dir=args.cache_dir,
        workers=args.workers,
        show_progress=True,
    )
    timings["phantoms + preprocessing (train/val)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = train(cfg, data=data)
    timings["training"] = time.perf_counter() - t0
    if args.finetune_epochs > 0:
        # Stage 2: the first stage is still improving at its last epoch; continuing at a lower peak LR (a
        # second warm-up + cosine cycle) gains about 0.01 held-out covid19 AUC (docs/benchmarks.md).
        stage2 = replace(
            cfg,
            out_dir=str(Path(args.out_dir) / "finetune"),
            epochs=args.finetune_epochs,
            lr=args.finetune_lr,
            init_from=cfg.output,
            output=args.output,
        )
        t0 = time.perf_counter()
        result2 = train(stage2, data=data)
        timings["fine-tuning"] = time.perf_counter() - t0
        result = replace(result2, history=[*result.history, *result2.history])
    n_steps = sum(1 for _ in result.history) * (args.n_train // cfg.batch_size)
    epochs_done = len(result.history)

    t0 = time.perf_counter()
    test_arrays, test_labels = heldout_set(
        args.n_test, seed=args.seed + 104_729, params_dict=params.to_dict(), workers=args.workers
    )
    timings["held-out phantoms"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, ckpt = load_checkpoint(args.output)
    logits = predict_logits(model, test_arrays, batch_size=8)
    timings["held-out inference"] = time.perf_counter() - t0
    temperature = float(ckpt["temperature"])
    z = logits / temperature
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    summary: dict[str, float] = {
        "n": float(len(test_labels)),
        "accuracy": float((probs.argmax(1) == test_labels).mean()),
    }
    res = evaluate_predictions(
        test_labels,
        logits,
        temperature=temperature,
        class_names=ckpt["class_names"],
        n_bootstrap=1000,
        decision_rule=DecisionRule.from_dict(ckpt["decision_rule"]),
    )
    summary["macro_auc"] = float(res.macro_auc.estimate)
    summary["macro_auc_ci_low"] = float(res.macro_auc.low)
    summary["macro_auc_ci_high"] = float(res.macro_auc.high)
    for name, interval in res.auc.items():
        summary[f"auc_{name}"] = float(interval.estimate)
        summary[f"auc_{name}_ci_low"] = float(interval.low)
        summary[f"auc_{name}_ci_high"] = float(interval.high)
    summary["indeterminate_rate"] = float(np.mean(res.indeterminate))
    summary.update({f"calibration_{k}": float(v) for k, v in res.calibration.items()})
    ckpt["heldout"] = {
        "description": f"{args.n_test} phantoms, sample_spec(split='heldout'), seed {args.seed + 104_729}",
        **summary,
    }
    torch.save(ckpt, args.output)
    t0 = time.perf_counter()
    _decision_stage_of(args)
    timings["decision layer"] = time.perf_counter() - t0
    card = write_model_card(args.output, timings=timings)
    print(f"model card: {card}")

    spec = model.spec
    print(f"reference model: {args.output}")
    print(
        f"  {count_params(model):,} parameters, {estimate_flops(model, spec.input_shape) / 1e9:.2f} GFLOP/forward "
        f"at {spec.input_shape}; epochs run {epochs_done} (best {int(result.metrics['best_epoch']) + 1}), "
        f"~{n_steps} steps; temperature {temperature:.3f}"
    )
    print("  validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print("  held-out (acquisitions outside training ranges): " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    print("  time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
