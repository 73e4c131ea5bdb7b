"""Run a model over labelled cases for ``medai evaluate``: load, preprocess, predict, report.

The thin model-running part of the evaluation. :func:`predict_cases` is
generic (callables in, logits out) and turns each failing case into an error
row; :func:`manifest_cases` and :func:`synthetic_cases` produce the cases;
:func:`run_cli` wires them to the checkpoint (``medai.training.network``), the shared
preprocessing (``medai.preprocess``), :func:`medai.evaluation.evaluate.evaluate_predictions`
and :func:`medai.evaluation.report.write_report`, and prints a short summary.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medai.errors import MedaiError
from medai.evaluation.evaluate import CaseError

__all__ = [
    "CasePredictions",
    "CaseSource",
    "manifest_cases",
    "predict_cases",
    "run_cli",
    "run_world",
    "synthetic_cases",
]

log = logging.getLogger(__name__)

#: DICOM header keywords copied into the subgroup attributes of a case.
HEADER_ATTRIBUTES = ("SliceThickness", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "InstitutionName")


@dataclass
class CasePredictions:
    """What :func:`predict_cases` collects: logits of the scored cases, errors of the others.

    Attributes:
        case_ids, labels, logits: scored cases (labels are class indices).
        attributes: per scored case, the raw subgroup attributes (e.g.
            ``{"slice_thickness_mm": 1.25, "site": "A"}``).
        errors: cases that failed to load, preprocess or predict.
    """

    case_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    errors: list[CaseError] = field(default_factory=list)

    def logits_array(self, n_classes: int) -> np.ndarray:
        """Logits as one ``(n, n_classes)`` array."""
        return np.stack(self.logits) if self.logits else np.zeros((0, n_classes))


#: A case to score: ``(case_id, label name, load)`` where ``load()`` returns
#: ``(volume, attributes)``; the volume is a :class:`medai.volume.Volume`.
CaseSource = tuple[str, str, Callable[[], tuple[Any, dict[str, Any]]]]


def predict_cases(
    cases: Iterable[CaseSource],
    *,
    to_array: Callable[[Any], np.ndarray],
    predict: Callable[[list[np.ndarray]], np.ndarray],
    class_names: Sequence[str],
    batch_size: int = 4,
    progress: Callable[[str], None] | None = None,
) -> CasePredictions:
    """Load, preprocess and score cases in batches; a failing case becomes a :class:`CaseError`.

    Args:
        cases: ``(case_id, label, load)`` triples; loading happens here, lazily.
        to_array: volume -> model input array (the shared preprocessing).
        predict: list of model input arrays -> logits ``(len, n_classes)``.
        class_names: model classes; a label outside them is an error row.
        batch_size: cases per ``predict`` call. When a batch fails, its cases
            are retried one by one so only the bad one is lost.
        progress: called with each case id after it is handled.

    Example:
        >>> import numpy as np
        >>> cases = [("a", "x", lambda: (np.ones(2), {})), ("b", "y", lambda: 1 / 0)]  # b fails to load
        >>> out = predict_cases(cases, to_array=lambda v: 2 * v,
        ...                     predict=lambda arrs: np.stack([[a.sum(), 0.0] for a in arrs]), class_names=("x", "y"))
        >>> out.case_ids, out.errors[0].message
        (['a'], 'ZeroDivisionError: division by zero')
    """
    names = tuple(class_names)
    out = CasePredictions()
    pending: list[tuple[str, int, np.ndarray, dict[str, Any]]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            logits = np.asarray(predict([item[2] for item in pending]), dtype=np.float64)
            if logits.shape != (len(pending), len(names)):
                raise ValueError(f"model output must have shape ({len(pending)}, {len(names)}), not {logits.shape}")
            results: list[tuple[tuple[str, int, np.ndarray, dict[str, Any]], np.ndarray | Exception]] = list(
                zip(pending, logits, strict=True)
            )
        except Exception as exc:  # isolate the failing case below
            log.warning("batch of %d failed (%s); retrying case by case", len(pending), exc)
            results = []
            for item in pending:
                try:
                    one = np.asarray(predict([item[2]]), dtype=np.float64).reshape(len(names))
                    results.append((item, one))
                except Exception as exc_one:  # one bad case must not stop the evaluation
                    results.append((item, exc_one))
        for (case_id, label, _, attrs), value in results:
            if isinstance(value, Exception):
                out.errors.append(CaseError(case_id, f"prediction failed: {value}", names[label]))
            elif not np.all(np.isfinite(value)):
                out.errors.append(CaseError(case_id, "prediction failed: non-finite logits", names[label]))
            else:
                out.case_ids.append(case_id)
                out.labels.append(label)
                out.logits.append(value)
                out.attributes.append(attrs)
        pending.clear()

    for case_id, label, load in cases:
        try:
            if label not in names:
                raise ValueError(f"label must be one of {names}, not {label!r}")
            volume, attrs = load()
            array = to_array(volume)
            pending.append((case_id, names.index(label), array, attrs))
        except Exception as exc:  # one bad case must not stop the evaluation
            log.warning("case %s failed: %s", case_id, exc)
            out.errors.append(CaseError(case_id, f"{type(exc).__name__}: {exc}", str(label)))
        if len(pending) >= batch_size:
            flush()
        if progress is not None:
            progress(case_id)
    flush()
    return out


def _header_attributes(volume: Any) -> dict[str, Any]:
    header = getattr(volume, "header", None) or {}
    return {key: header[key] for key in HEADER_ATTRIBUTES if key in header and header[key] not in (None, "")}


def manifest_cases(rows: Sequence[Any]) -> Iterator[CaseSource]:
    """Cases of manifest rows (:class:`~medai.training.manifest.ManifestRow`); attributes: extra columns, then header.

    Case ids are the manifest paths relative to nothing (as given), made unique
    with the row number.
    """
    from medai.training.manifest import load_case

    for row in rows:

        def load(row: Any = row) -> tuple[Any, dict[str, Any]]:
            volume = load_case(row)
            return volume, {**_header_attributes(volume), **dict(row.extra)}

        yield f"{row.path.name}#{row.row_number}", str(row.label), load


def synthetic_cases(n: int, *, seed: int) -> Iterator[CaseSource]:
    """``n`` held-out phantoms from :mod:`medai.phantoms.synthetic` (``split="heldout"``, fast generation).

    Each phantom is generated only when its case is loaded. Attributes are the
    phantom's acquisition parameters (slice thickness, noise, kernel, patient
    size) and its simulated scanner manufacturer.
    """
    from medai.phantoms import synthetic

    rng = np.random.default_rng(seed)
    for i in range(n):
        spec = synthetic.sample_spec(rng, split="heldout")
        label = spec.label
        label_name = str(getattr(label, "value", label))

        def load(spec: Any = spec) -> tuple[Any, dict[str, Any]]:
            phantom = synthetic.generate(spec, fast=True)
            acq = phantom.spec.acquisition
            attrs = {
                key: getattr(acq, key)
                for key in ("slice_thickness_mm", "noise_hu", "kernel_sharpness", "patient_scale")
                if hasattr(acq, key)
            }
            manufacturer = (getattr(phantom.volume, "header", None) or {}).get("Manufacturer")
            if manufacturer:
                attrs["Manufacturer"] = manufacturer
            return phantom.volume, attrs

        yield f"heldout-s{seed}-{i:04d}", label_name, load


# --------------------------------------------------------------------------- medai evaluate


def _describe(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compact(value: Any) -> str:
    """A short human-readable form of a checkpoint field (dicts as ``key=value`` pairs)."""
    if isinstance(value, Mapping):
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()]
        return _describe(", ".join(parts), 240)
    return _describe(value if isinstance(value, str) else str(value))


def _model_facts(
    path: Path, ckpt: Mapping[str, Any], temperature: float, rule: Any, notes: list[str]
) -> dict[str, str]:
    import datetime as dt

    from medai.modelcard import file_sha256

    facts = {
        "model_id": str(ckpt.get("model_id") or ckpt.get("name") or path.stem),
        "checkpoint": str(path),
        "sha256": file_sha256(path),
        "format": str(ckpt.get("format", "")),
        "classes": ", ".join(ckpt.get("class_names", [])),
        "temperature": f"{temperature:.4f} (fitted on the validation split)",
        "decision rule": (
            f"{rule.positive_class} if P >= {rule.threshold:.2f}; indeterminate if P within "
            f"±{rule.band_half_width:.2f} of it or top probability < {rule.min_top_probability:.2f}"
        ),
    }
    if isinstance(ckpt.get("created_unix"), int | float):
        facts["created"] = dt.datetime.fromtimestamp(ckpt["created_unix"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    for key in ("kind", "epoch", "data", "code", "metrics"):
        if key in ckpt:
            facts[key] = _compact(ckpt[key])
    for i, note in enumerate(notes):
        facts[f"note {i + 1}"] = note
    return facts


def _decision_rule(ckpt: Mapping[str, Any], class_names: tuple[str, ...], notes: list[str]) -> Any:
    from medai.inference.calibration import DecisionRule

    for key in ("decision_rule", "indeterminate"):
        value = ckpt.get(key)
        if isinstance(value, Mapping):
            try:
                rule = DecisionRule.from_dict(value)
            except (TypeError, ValueError) as exc:
                notes.append(f"checkpoint {key!r} is not a decision rule ({exc}); the default rule is used")
                continue
            if rule.class_names != class_names:
                rule = DecisionRule.from_dict({**rule.to_dict(), "class_names": list(class_names)})
            return rule
    notes.append("checkpoint has no decision rule; the default rule is used")
    return DecisionRule(class_names=class_names)


def _temperature(ckpt: Mapping[str, Any], notes: list[str]) -> float:
    value = ckpt.get("temperature")
    try:
        temperature = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        temperature = math.nan
    if not math.isfinite(temperature) or temperature <= 0:
        notes.append(f"checkpoint temperature {value!r} is missing or invalid; T = 1 (no calibration) is used")
        return 1.0
    return temperature


def _print_summary(result: Any, paths: Mapping[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"medai evaluate: {result.n_cases} cases scored, {len(result.errors)} failed")
    table.add_column("metric")
    table.add_column("value (95% CI)", justify="right")
    for name, interval in result.auc.items():
        table.add_row(f"AUC {name} vs rest", interval.format())
    table.add_row("macro AUC", result.macro_auc.format())
    table.add_row("accuracy (argmax)", result.accuracy.format())
    threshold_op = result.operating_points[len(result.class_names)]
    table.add_row(
        f"sensitivity {threshold_op.positive_class} @ {threshold_op.threshold:.2f}", threshold_op.sensitivity.format()
    )
    table.add_row(
        f"specificity {threshold_op.positive_class} @ {threshold_op.threshold:.2f}", threshold_op.specificity.format()
    )
    if threshold_op.ppv_at_prevalence is not None:
        table.add_row(
            f"PPV / NPV at prevalence {result.prevalence:.3g}",
            f"{threshold_op.ppv_at_prevalence.format()} / {threshold_op.npv_at_prevalence.format()}",
        )
    table.add_row("indeterminate rate", f"{result.indeterminate_rate:.3f}")
    cal = result.calibration
    table.add_row(
        "ECE top-label before -> after", f"{cal['ece_top_label_before']:.3f} -> {cal['ece_top_label_after']:.3f}"
    )
    table.add_row("temperature", f"{result.temperature:.3f}")
    console.print("[bold red]Research use only — not a medical device[/]")
    console.print(table)
    console.print(f"report: {paths['html']}\nmetrics: {paths['json']}\npredictions: {paths['csv']}")


def _check_arguments(args: argparse.Namespace) -> None:
    if args.prevalence is not None and not 0 < args.prevalence < 1:
        raise MedaiError(f"--prevalence must be in (0, 1), not {args.prevalence}")
    for name, minimum in (("bootstrap", 0), ("min_subgroup", 1), ("batch_size", 1)):
        if getattr(args, name) < minimum:
            raise MedaiError(f"--{name.replace('_', '-')} must be >= {minimum}, not {getattr(args, name)}")


def _select_split(rows: list[Any], split: str, ckpt: Mapping[str, Any]) -> tuple[list[Any], str]:
    """Rows of ``split``; rows without a split get the one training gave them (same seed and fractions)."""
    from medai.training.manifest import assign_splits

    how = "split column of the manifest"
    if any(row.split is None for row in rows):
        cfg = ckpt.get("config") or {}
        if not all(key in cfg for key in ("val_fraction", "test_fraction", "seed")):
            raise MedaiError(
                "manifest rows without a split and a checkpoint without the training split settings: "
                "add a split column or pass --split all"
            )
        rows = assign_splits(
            rows, val_fraction=cfg["val_fraction"], test_fraction=cfg["test_fraction"], seed=cfg["seed"]
        )
        how = (
            f"rows without a split assigned as in training (patient-level, seed {cfg['seed']}, "
            f"val {cfg['val_fraction']}, test {cfg['test_fraction']})"
        )
    return [row for row in rows if row.split is not None and row.split.value == split], how


def run_cli(args: argparse.Namespace) -> int:
    """``medai evaluate``: score cases with a checkpoint and write the report. Returns the exit code.

    Raises:
        MedaiError: unusable checkpoint or manifest, no case selected, or fewer
            than two cases scored.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medai.evaluation.evaluate import evaluate_predictions
    from medai.evaluation.report import write_report
    from medai.evaluation.subgroups import subgroups_from_attributes
    from medai.inference.network_input import network_input
    from medai.preprocess import PreprocessParams
    from medai.training.network import load_checkpoint, predict_logits

    _check_arguments(args)
    if getattr(args, "world", None):
        return run_world(args)
    model_path = Path(args.model)
    model, ckpt = load_checkpoint(model_path, device=args.device)
    class_names = tuple(str(c) for c in ckpt.get("class_names", ()))
    if len(class_names) < 2:
        raise MedaiError(f"checkpoint class_names must list at least two classes, not {class_names!r}")
    try:
        params = PreprocessParams.from_dict(ckpt["preprocess"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MedaiError(f"checkpoint {model_path} has no usable preprocessing parameters: {exc}") from exc
    notes: list[str] = []
    temperature = _temperature(ckpt, notes)
    rule = _decision_rule(ckpt, class_names, notes)
    for note in notes:
        log.warning(note)

    data: dict[str, str]
    cases: Iterable[CaseSource]
    if args.synthetic_heldout is not None:
        if args.synthetic_heldout < 2:
            raise MedaiError(f"--synthetic-heldout must be at least 2, not {args.synthetic_heldout}")
        n_total = args.synthetic_heldout
        cases = synthetic_cases(n_total, seed=args.seed)
        data = {
            "source": (
                f"{n_total} synthetic held-out phantoms (medai.phantoms.synthetic, split='heldout', seed {args.seed})"
            ),
            "split": "heldout (phantom parameters outside the training ranges where the generator defines them)",
        }
    else:
        from medai.modelcard import file_sha256
        from medai.training.manifest import read_manifest

        rows = read_manifest(args.manifest)
        data = {
            "source": f"manifest {args.manifest}",
            "manifest sha256": file_sha256(args.manifest),
            "split": args.split,
        }
        if args.split != "all":
            rows, data["split assignment"] = _select_split(rows, args.split, ckpt)
        if not rows:
            raise MedaiError(f"manifest {args.manifest} has no rows with split {args.split!r}")
        n_total = len(rows)
        cases = manifest_cases(rows)

    def predict(arrays: list[np.ndarray]) -> np.ndarray:
        return predict_logits(model, arrays, batch_size=args.batch_size)

    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        transient=True,
    ) as progress:
        task = progress.add_task("", total=n_total)
        collected = predict_cases(
            cases,
            to_array=lambda volume: network_input(volume, params)[0].array,  # lungs only if so trained
            predict=predict,
            class_names=class_names,
            batch_size=args.batch_size,
            progress=lambda case_id: progress.update(task, advance=1, description=case_id),
        )
    if len(collected.case_ids) < 2:
        reasons = "; ".join(f"{e.case_id}: {e.message}" for e in collected.errors[:3])
        raise MedaiError(f"evaluation needs at least 2 scored cases, not {len(collected.case_ids)} ({reasons})")
    data["cases scored"] = str(len(collected.case_ids))
    data["cases failed"] = str(len(collected.errors))
    result = evaluate_predictions(
        np.asarray(collected.labels, dtype=np.int64),
        collected.logits_array(len(class_names)),
        temperature=temperature,
        class_names=class_names,
        subgroups=subgroups_from_attributes(collected.attributes),
        prevalence=args.prevalence,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        decision_rule=rule,
        min_subgroup_size=args.min_subgroup,
        case_ids=collected.case_ids,
        errors=collected.errors,
    )
    model_facts = _model_facts(model_path, ckpt, temperature, rule, notes)
    paths = write_report(result, args.out, model=model_facts, data=data)
    _print_summary(result, paths)
    return 0


def run_world(args: argparse.Namespace) -> int:
    """``medai evaluate --world W``: the served model (``.onnx``) on a test world, with the quantification targets.

    Writes the usual report (classification, from the served probabilities) and adds the lesion %, lung
    volume, CT-0 and severity metrics of :func:`medai.evaluation.served.summarize` to ``metrics.json``.

    Raises:
        MedaiError: the model is not an exported ``.onnx``, or fewer than two cases scored.
    """
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medai.evaluation.evaluate import evaluate_predictions
    from medai.evaluation.report import write_report
    from medai.evaluation.served import score_cases, summarize
    from medai.evaluation.subgroups import subgroups_from_attributes
    from medai.evaluation.worlds import REAL_WORLDS, world_cases
    from medai.inference.classifier import Classifier
    from medai.labels import CLASS_NAMES
    from medai.modelcard import file_sha256

    model_path = Path(args.model)
    if model_path.suffix != ".onnx":
        raise MedaiError(f"--world scores the served model: --model must be an exported .onnx, not {model_path.name!r}")
    clf = Classifier.load(model_path)
    n = None if args.world in REAL_WORLDS else args.n
    if n is not None and n < 2:
        raise MedaiError(f"--n must be at least 2, not {n}")
    with Progress(
        TextColumn(f"scoring {args.world}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        task = progress.add_task("", total=n or 11)
        rows = score_cases(
            clf, world_cases(args.world, n, seed=args.seed), progress=lambda _: progress.update(task, advance=1)
        )
    ok = [r for r in rows if not r.error]
    if len(ok) < 2:
        raise MedaiError(f"evaluation needs at least 2 scored cases, not {len(ok)}")
    probs = np.array([[r.probabilities[c] for c in CLASS_NAMES] for r in ok])
    result = evaluate_predictions(
        np.array([CLASS_NAMES.index(r.label) for r in ok]),
        np.log(np.clip(probs, 1e-12, 1.0)),  # the served probabilities, as logits of temperature 1
        temperature=1.0,
        class_names=CLASS_NAMES,
        subgroups=subgroups_from_attributes([r.factors for r in ok]),
        prevalence=args.prevalence,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        decision_rule=clf.rule,
        min_subgroup_size=args.min_subgroup,
        case_ids=[r.case_id for r in ok],
        errors=[CaseError(r.case_id, r.error, r.label) for r in rows if r.error],
    )
    targets = summarize(rows, n_bootstrap=args.bootstrap, seed=args.seed)
    model_facts = {
        "model_id": clf.scoring_id,
        "model": str(model_path),
        "sha256": file_sha256(model_path),
        "decision layer": ", ".join(clf.decision_layer.features)
        if clf.decision_layer
        else "none (temperature-scaled logits)",
        "temperature": "1 (the served probabilities)",
    }
    data = {
        "source": f"test world {args.world!r} (medai.evaluation.worlds), seed set {args.seed}",
        "cases scored": str(len(ok)),
        "cases failed": str(len(rows) - len(ok)),
        **{f"served: {k}": json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in targets.items()},
    }
    paths = write_report(result, args.out, model=model_facts, data=data)
    payload = json.loads(paths["json"].read_text())
    payload["served_targets"] = targets
    payload["served_cases"] = [r.to_dict() for r in rows]
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    _print_summary(result, paths)
    return 0
