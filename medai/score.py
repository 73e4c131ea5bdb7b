"""``medai score``: score every study under folders, zip archives or a manifest into one results file.

Stages (the vocabulary of :mod:`medai.dicom`):

1. *Plan* (:func:`plan_inputs`, main process, headers only): find every series
   (:func:`medai.discovery.find_series`), pick the series to score per study
   (:func:`medai.qc.select_per_study`) and turn every other series into a
   ``skipped`` row with its reason. When no series of a study can be scored,
   its series become ``error`` rows (the study failed). Identifiers are
   pseudonymized here, before anything leaves the process.
2. *Score* (:func:`score_job`, any process or Dask worker): load the series
   (QC gate), run :meth:`medai.inference.Classifier.predict`, write key images,
   and return one row. Every failure becomes an ``error`` row with a reason
   code; nothing escapes, so one bad series never stops a batch.
3. *Write* (:func:`run_score`, main process): each row is appended durably to
   the output (:class:`medai.results.ResultStore`) as soon as it arrives.
   Series already in the output for the same model id are not scored again
   (resume), unless ``force``.

Where the work runs is :mod:`medai.scaleout`'s business: in-process, local
worker processes, or a Dask cluster. Torch-free.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medai.errors import InvalidSeriesError, MedaiError, ModelError, QCReason
from medai.pseudonym import Pseudonymizer
from medai.qc import DEFAULT_RULES, SelectionRules
from medai.results import ResultStore, RowStatus, ScoreReason, row_key
from medai.scoreplan import ScoreJob, ScorePlan, make_row, plan_inputs

if TYPE_CHECKING:
    from medai.inference import Classifier, Prediction
    from medai.volume import Volume

__all__ = [
    "ScoreJob",
    "ScorePlan",
    "ScoreSettings",
    "ScoreSummary",
    "auto_workers",
    "get_classifier",
    "plan_inputs",
    "run_score",
    "score_job",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreSettings:
    """How :func:`score_job` scores: the model and the optional outputs. Picklable (sent to workers).

    Attributes:
        model_path: the ``.onnx`` file (absolute for a cluster: every worker must see it).
        model_id: the scoring id (classifier + quantification head) the main process loaded; a worker with other
            models writes ``model_error`` rows.
        threads: onnxruntime intra-op threads per process (None: onnxruntime's default).
        decode_workers: decoding threads per series in :func:`medai.dicom.load_series` (None: its default).
        saliency_dir: folder for key images (PNG), or None for none.
        saliency_nifti: also write the saliency map as NIfTI into ``saliency_dir``.
        key_slices: slices per key image.
    """

    model_path: str
    model_id: str
    threads: int | None = None
    decode_workers: int | None = None
    saliency_dir: str | None = None
    saliency_nifti: bool = False
    key_slices: int = 4


@dataclass
class ScoreSummary:
    """What a :func:`run_score` call did."""

    out: Path
    model_id: str
    n_jobs: int = 0  # series to score in this run (after resume)
    n_resumed: int = 0  # series already in the output for this model id, not scored again
    status: Counter[str] = field(default_factory=Counter)  # over every row of the plan (new and resumed)
    reasons: Counter[str] = field(default_factory=Counter)  # reason codes of error and skipped rows
    labels: Counter[str] = field(default_factory=Counter)  # labels of ok rows
    n_skipped_files: int = 0
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def n_errors(self) -> int:
        """Rows with status ``error``."""
        return self.status[RowStatus.ERROR.value]


# ---------------------------------------------------------------- classifier cache (one per process)

_CLASSIFIERS: dict[tuple[str, int | None], Classifier] = {}
_CLASSIFIERS_LOCK = threading.Lock()


def get_classifier(model_path: str, *, threads: int | None = None) -> Classifier:
    """The process's :class:`~medai.inference.Classifier` for ``model_path``, loaded once and reused.

    Worker processes and Dask workers call this on every job; the session is
    created on the first call (one per process and thread setting).

    Example:
        >>> get_classifier("models/medai-ref.onnx") is get_classifier("models/medai-ref.onnx")  # doctest: +SKIP
        True
    """
    from medai.inference import Classifier

    key = (model_path, threads)
    with _CLASSIFIERS_LOCK:
        clf = _CLASSIFIERS.get(key)
        if clf is None:
            clf = Classifier.load(model_path, threads=threads)
            _CLASSIFIERS[key] = clf
        return clf


# ---------------------------------------------------------------- planning


# ---------------------------------------------------------------- scoring one series


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "series"


def _load(job: ScoreJob, settings: ScoreSettings) -> Volume:
    if job.nifti_path is not None:
        from medai.nifti import read_nifti

        return read_nifti(job.nifti_path)
    from medai.dicom import load_series

    if job.series is None:
        raise ValueError("a job must have a series or a NIfTI path, not neither")
    return load_series(job.series, workers=settings.decode_workers)


def _prediction_fields(pred: Prediction) -> dict[str, Any]:
    quant = pred.quantification.to_dict()
    out: dict[str, Any] = {f"p_{name}": round(float(p), 6) for name, p in pred.probabilities.items()}
    out.update(
        label=pred.label,
        indeterminate=pred.indeterminate,
        severity=pred.severity.value,
        qc_flags=";".join(pred.qc_flags),
    )
    for name, value in quant.items():
        if name.endswith("_percent") or name == "lung_volume_ml":
            out[name] = round(float(value), 4)
    for stage in ("preprocess", "inference", "saliency", "quantify"):
        out[f"{stage}_s"] = round(float(pred.timings.get(stage, 0.0)), 4)
    return out


def _write_key_images(volume: Volume, pred: Prediction, job: ScoreJob, settings: ScoreSettings) -> dict[str, str]:
    from medai.keyimages import write_key_image, write_saliency_nifti
    from medai.nifti import nifti_stem

    folder = Path(settings.saliency_dir or ".")
    stem = _safe_name(job.key if job.series is not None else nifti_stem(job.key))
    out = {"key_image": str(write_key_image(volume, pred, folder / f"{stem}.png", n_slices=settings.key_slices))}
    if settings.saliency_nifti:
        out["saliency_nifti"] = str(write_saliency_nifti(volume, pred, folder / f"{stem}_saliency.nii.gz"))
    return out


def score_job(job: ScoreJob, settings: ScoreSettings) -> dict[str, Any]:
    """Load, score and describe one series; always returns a row, never raises for a bad series.

    Runs in any process (or Dask worker): the classifier comes from
    :func:`get_classifier`. QC failures give ``error`` rows with their
    :class:`~medai.errors.QCReason`; a wrong or missing model gives
    ``model_error``; anything unexpected gives ``internal_error`` (logged with
    its traceback).

    Example:
        >>> row = score_job(plan.jobs[0], settings)  # doctest: +SKIP
        >>> row["status"], row["label"]  # doctest: +SKIP
        ('ok', 'covid19')
    """
    start = time.perf_counter()
    fields = {
        **job.fields,
        "model_id": settings.model_id,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }

    def finish(row: dict[str, Any]) -> dict[str, Any]:
        row["total_s"] = round(time.perf_counter() - start, 4)
        row["scored_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return row

    try:
        clf = get_classifier(settings.model_path, threads=settings.threads)
        if clf.scoring_id != settings.model_id:
            raise ModelError(f"worker models must be {settings.model_id}, not {clf.scoring_id} ({clf.path})")
        volume = _load(job, settings)
        loaded = time.perf_counter()
        if job.series is None:  # NIfTI: no UIDs; the row stays keyed by its source file
            fields["n_slices"] = volume.shape[0]
        pred = clf.predict(volume)
        row = make_row(fields, RowStatus.OK, load_s=round(loaded - start, 4), **_prediction_fields(pred))
        if settings.saliency_dir is not None:
            try:
                row.update(_write_key_images(volume, pred, job, settings))
            except (OSError, ValueError, MemoryError) as exc:  # the scores stand without the pictures
                log.error("key image of %s failed: %s", job.key, exc)
                row["message"] = f"key image not written: {type(exc).__name__}: {exc}"
        return finish(row)
    except InvalidSeriesError as exc:
        return finish(make_row(fields, RowStatus.ERROR, exc.reason.value, str(exc)))
    except ModelError as exc:
        return finish(make_row(fields, RowStatus.ERROR, ScoreReason.MODEL_ERROR, str(exc)))
    except MedaiError as exc:
        return finish(make_row(fields, RowStatus.ERROR, QCReason.UNREADABLE, str(exc)))
    except MemoryError:
        return finish(
            make_row(fields, RowStatus.ERROR, ScoreReason.INTERNAL_ERROR, "out of memory scoring this series")
        )
    except Exception as exc:
        log.exception("unexpected failure scoring %s", job.key)
        return finish(make_row(fields, RowStatus.ERROR, ScoreReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- the batch


def _count(summary: ScoreSummary, row: Mapping[str, Any]) -> None:
    status = str(row.get("status") or "")
    summary.status[status] += 1
    if status != RowStatus.OK and row.get("reason"):
        summary.reasons[str(row["reason"])] += 1
    if status == RowStatus.OK and row.get("label"):
        summary.labels[str(row["label"])] += 1


def auto_workers() -> int:
    """Worker processes when none are asked for: one per core, at most 4.

    Workers only start for two or more series or chunks of files, so one
    small study is still scored in this process.

    Example:
        >>> 1 <= auto_workers() <= 4
        True
    """
    return max(1, min(os.cpu_count() or 1, 4))


def run_score(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    model_path: str | Path | None = None,
    workers: int = 1,
    threads: int | None = None,
    dask: bool = False,
    scheduler: str | Any | None = None,
    saliency_dir: str | Path | None = None,
    saliency_nifti: bool = False,
    key_slices: int = 4,
    pseudonymizer: Pseudonymizer | None = None,
    force: bool = False,
    all_series: bool = False,
    rules: SelectionRules = DEFAULT_RULES,
    on_start: Callable[[int], None] | None = None,
    on_row: Callable[[Mapping[str, Any]], None] | None = None,
) -> ScoreSummary:
    """Score every study under ``inputs`` into ``out`` (``.csv``, ``.jsonl`` or ``.parquet``).

    Args:
        inputs: folders, zip archives, files or manifest CSVs.
        out: the results file; rows already there for the same model id are kept and not re-scored.
        model_path: ``.onnx`` model (default: ``$MEDAI_MODEL`` or the shipped model).
        workers: 1 scores in this process; N > 1 uses N local worker processes (or N Dask workers with
            ``dask``); 0 chooses (:func:`auto_workers`). Workers also share discovery (header reading).
        threads: onnxruntime threads per process (default: cores / workers).
        dask: run on a local Dask cluster of ``workers`` processes.
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``) or a ``distributed.Client``.
        saliency_dir: write key images (PNG) here; ``saliency_nifti`` adds NIfTI maps.
        key_slices: slices per key image.
        pseudonymizer: replace accession number and patient ID by keyed pseudonyms, drop the name.
        force: re-score series already in ``out`` (the output keeps the newest row per series).
        all_series: score every acceptable series, not only the one selected per study.
        rules: selection rules and QC thresholds.
        on_start: called with the number of series to score, before the first one.
        on_row: called with each new row after it is on disk.

    Returns:
        A :class:`ScoreSummary`.

    Raises:
        ModelError: the model cannot be loaded (nothing is scored).
        MedaiError: the output cannot be resumed (other columns) or a manifest is malformed.
        KeyboardInterrupt: interrupted; every finished row is on disk and the output is valid.

    Example:
        >>> summary = run_score(["studies/"], "results.csv")  # doctest: +SKIP
        >>> summary.status["ok"], summary.n_errors  # doctest: +SKIP
        (3, 0)
    """
    from medai.inference import DEFAULT_MODEL, MODEL_ENV
    from medai.scaleout import WorkPool

    start = time.perf_counter()
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: automatic), not {workers}")
    workers = workers or auto_workers()
    parallel = workers > 1 or dask or scheduler is not None
    model = str(Path(model_path or os.environ.get(MODEL_ENV) or DEFAULT_MODEL).resolve())
    # validate the model (hash vs card) before any work; in-process scoring reuses this session
    clf = get_classifier(model, threads=threads)
    settings = ScoreSettings(
        model_path=model,
        model_id=clf.scoring_id,
        threads=threads if threads is not None or not parallel else max(1, (os.cpu_count() or 1) // workers),
        decode_workers=1 if parallel else None,
        saliency_dir=str(Path(saliency_dir).resolve()) if saliency_dir is not None else None,
        saliency_nifti=saliency_nifti,
        key_slices=key_slices,
    )
    summary = ScoreSummary(out=Path(out), model_id=settings.model_id)
    with ResultStore(out) as store, WorkPool(workers=workers, dask=dask, scheduler=scheduler) as pool:
        plan = plan_inputs(
            inputs,
            rules=rules,
            all_series=all_series,
            pseudonymizer=pseudonymizer,
            map_unordered=pool.map_unordered if pool.parallel else None,
        )
        summary.n_skipped_files = len(plan.skipped_files)
        done = {row_key(r): r for r in store.existing}
        for row in plan.rows:
            row = {**row, "model_id": settings.model_id}
            previous = done.get(row_key(row))
            if previous is not None and not force:
                _count(summary, previous)
                continue
            row["scored_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            store.append(row)
            _count(summary, row)
            if on_row is not None:
                on_row(row)
        jobs = []
        for job in plan.jobs:
            previous = done.get((settings.model_id, job.key))
            if previous is not None and not force:
                summary.n_resumed += 1
                _count(summary, previous)
            else:
                jobs.append(job)
        summary.n_jobs = len(jobs)
        if summary.n_resumed:
            model = settings.model_id
            log.info("%d series already scored in %s with %s; not scored again", summary.n_resumed, out, model)
        if on_start is not None:
            on_start(len(jobs))
        try:
            for row in pool.score(jobs, settings):
                store.append(row)
                _count(summary, row)
                if on_row is not None:
                    on_row(row)
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        if force:
            store.compact()
    summary.wall_s = time.perf_counter() - start
    return summary
