"""Score one series: load it (QC gate), run the Classifier, and return its results row.

:func:`score_job` runs in any process or Dask worker and never raises for a bad
series: every failure becomes an ``error`` row with a reason code, so one bad
series never stops a batch. :class:`ScoreSettings` is what travels to the
workers with each job. Torch-free.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medai.batch.plan import ScoreJob, make_row
from medai.errors import InvalidSeriesError, MedaiError, ModelError, QCReason
from medai.report.results import RowStatus, ScoreReason, prediction_fields

if TYPE_CHECKING:
    from medai.inference.classifier import Classifier, Prediction
    from medai.volume import Volume

__all__ = ["PIXEL_HASH_FIELD", "ScoreSettings", "get_classifier", "score_job"]

log = logging.getLogger(__name__)

#: The row field carrying the pixel hash from a worker to the audit trail (never written to the results).
PIXEL_HASH_FIELD = "_pixel_sha256"


@dataclass(frozen=True)
class ScoreSettings:
    """How :func:`score_job` scores: the model and the optional outputs. Picklable (sent to workers).

    Attributes:
        model_path: the ``.onnx`` file (absolute for a cluster: every worker must see it).
        model_id: the scoring id (classifier + quantification head) the main process loaded; a worker with other
            models writes ``model_error`` rows.
        threads: onnxruntime intra-op threads per process (None: onnxruntime's default).
        decode_workers: decoding threads per series in :func:`medai.ingest.load.load_series` (None: its default).
        saliency_dir: folder for key images (PNG), or None for none.
        saliency_nifti: also write the saliency map as NIfTI into ``saliency_dir``.
        key_slices: slices per key image.
        pixel_hash: add the SHA-256 of the loaded voxels to the row as ``_pixel_sha256`` (for the audit trail;
            :func:`medai.batch.run.run_score` takes it out before the row is written).
    """

    model_path: str
    model_id: str
    threads: int | None = None
    decode_workers: int | None = None
    saliency_dir: str | None = None
    saliency_nifti: bool = False
    key_slices: int = 4
    pixel_hash: bool = False


# ---------------------------------------------------------------- classifier cache (one per process)

_CLASSIFIERS: dict[tuple[str, int | None], Classifier] = {}
_CLASSIFIERS_LOCK = threading.Lock()


def get_classifier(model_path: str, *, threads: int | None = None) -> Classifier:
    """The process's :class:`~medai.inference.classifier.Classifier` for ``model_path``, loaded once and reused.

    Worker processes and Dask workers call this on every job; the session is
    created on the first call (one per process and thread setting).

    Example:
        >>> get_classifier("models/medai-ref.onnx") is get_classifier("models/medai-ref.onnx")  # doctest: +SKIP
        True
    """
    from medai.inference.classifier import Classifier

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
        from medai.ingest.nifti import read_nifti

        return read_nifti(job.nifti_path)
    from medai.ingest.load import load_series

    if job.series is None:
        raise ValueError("a job must have a series or a NIfTI path, not neither")
    return load_series(job.series, workers=settings.decode_workers)


def _write_key_images(volume: Volume, pred: Prediction, job: ScoreJob, settings: ScoreSettings) -> dict[str, str]:
    from medai.ingest.nifti import nifti_stem
    from medai.report.keyimages import write_key_image, write_saliency_nifti

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
        row = make_row(fields, RowStatus.OK, load_s=round(loaded - start, 4), **prediction_fields(pred))
        if settings.pixel_hash:
            from medai.report.audit import pixel_sha256

            row[PIXEL_HASH_FIELD] = pixel_sha256(volume)
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
