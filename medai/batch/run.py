"""``medai score``: score every study under folders, zip archives or a manifest into one results file.

Stages (the vocabulary of :mod:`medai.ingest.load`):

1. *Plan* (:func:`plan_inputs`, main process, headers only): find every series
   (:func:`medai.ingest.discovery.find_series`), pick the series to score per study
   (:func:`medai.ingest.qc.select_per_study`) and turn every other series into a
   ``skipped`` row with its reason. When no series of a study can be scored,
   its series become ``error`` rows (the study failed). Identifiers are
   pseudonymized here, before anything leaves the process.
2. *Score* (:func:`score_job`, any process or Dask worker): load the series
   (QC gate), run :meth:`medai.inference.classifier.Classifier.predict`, write key images,
   and return one row. Every failure becomes an ``error`` row with a reason
   code; nothing escapes, so one bad series never stops a batch.
3. *Write* (:func:`run_score`, main process): each row is appended durably to
   the output (:class:`medai.report.results.ResultStore`) as soon as it arrives.
   Series already in the output for the same model id are not scored again
   (resume), unless ``force``.

Where the work runs is :mod:`medai.batch.pool`'s business: in-process, local
worker processes, or a Dask cluster. Torch-free.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medai.batch.job import PIXEL_HASH_FIELD, ScoreSettings, get_classifier
from medai.batch.plan import plan_inputs
from medai.batch.pool import WorkPool
from medai.batch.pseudonym import Pseudonymizer
from medai.ingest.qc import DEFAULT_RULES, SelectionRules
from medai.report.audit import AuditTrail, current_user, scoring_record
from medai.report.deidentify import RowDeidentifier
from medai.report.results import ResultStore, RowStatus, row_key

if TYPE_CHECKING:
    pass

__all__ = ["ScoreSummary", "auto_workers", "run_score"]

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------- the batch


def _count(summary: ScoreSummary, row: Mapping[str, Any]) -> None:
    status = str(row.get("status") or "")
    summary.status[status] += 1
    if status != RowStatus.OK and row.get("reason"):
        summary.reasons[str(row["reason"])] += 1
    if status == RowStatus.OK and row.get("label"):
        summary.labels[str(row["label"])] += 1


def _audit_fields(
    row: Mapping[str, Any], original: Mapping[str, Any], pixel_hash: str, model_sha256: str, out: str | Path
) -> dict[str, Any]:
    """The audit record of one scored row: the input's own UIDs (``original``: the row's fields before any
    de-identification, since the trail stays in the hospital), hashes and numbers; no names, IDs or paths."""
    result = {k: row.get(k) for k in ("status", "reason", "label", "indeterminate", "severity") if row.get(k) != ""}
    result["probabilities"] = {k[2:]: row[k] for k in row if k.startswith("p_") and row[k] is not None}
    outputs = {"results": str(Path(out).resolve())}
    outputs.update({k: str(row[k]) for k in ("key_image", "saliency_nifti") if row.get(k)})
    return scoring_record(
        source="batch",
        who=current_user(),
        volume=None,
        prediction=None,
        model_id=str(row.get("model_id") or ""),
        model_sha256=model_sha256,
        series_uid=str(original.get("series_uid") or ""),
        study_uid=str(original.get("study_uid") or ""),
        pixel_hash=pixel_hash,
        result=result,
        outputs=outputs,
    )


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
    audit_log: str | Path | None = None,
    deidentify: RowDeidentifier | None = None,
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
        deidentify: write rows (and name key images) without identifiers: UIDs replaced, name, ID, accession
            number, description and input paths removed (:class:`medai.report.deidentify.RowDeidentifier`).
        audit_log: append one record per scored series to this tamper-evident trail
            (:class:`medai.report.audit.AuditTrail`): series, pixel hash, model, code version, result, outputs,
            the user.

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
    from medai.inference.classifier import DEFAULT_MODEL, MODEL_ENV

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
        pixel_hash=audit_log is not None,
    )
    trail = AuditTrail(audit_log) if audit_log is not None else None
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
        originals: dict[str, Mapping[str, Any]] = {}
        if deidentify is not None:
            plan.rows = [deidentify.row(row) for row in plan.rows]
            clean_jobs = [replace(job, fields=deidentify.row(job.fields)) for job in plan.jobs]
            originals = {clean.key: job.fields for clean, job in zip(clean_jobs, plan.jobs, strict=True)}
            plan.jobs = clean_jobs
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
                pixel_hash = str(row.pop(PIXEL_HASH_FIELD, "") or "")
                original = originals.get(row_key(row)[1], row)
                if deidentify is not None:
                    row = deidentify.scrub(row, original)
                if trail is not None:  # first: a kill between the two re-scores the series, and audits it again
                    trail.append(_audit_fields(row, original, pixel_hash, clf.sha256, out))
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
