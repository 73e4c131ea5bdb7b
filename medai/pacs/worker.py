"""The scoring worker: each complete series -> Classifier -> SR, Secondary Capture (and SEG) in the spool.

One background thread. It claims the oldest series that has been idle for ``idle_seconds``
(:meth:`~medai.pacs.queue.JobQueue.claim_ready`), loads it through the QC gate
(:func:`medai.ingest.load.load_series`), scores it and encodes the results with :mod:`medai.report`. The QC
gate decides: a series it refuses, or one that cannot be read, gets a failure SR naming the reason instead
of silence. The result files are written to the spool first; then one transaction records them with one
pending delivery per destination. A job whose scoring was interrupted ``max_scoring_attempts`` times (the
process killed while scoring it, each time) is failed rather than retried forever.

Like ``medai score``, the worker never dies of one series: every failure becomes a reason on the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from medai.errors import InvalidSeriesError, MedaiError, QCReason
from medai.pacs.audit import AuditLog
from medai.pacs.background import BackgroundLoop
from medai.pacs.config import ImageSyntax, PacsConfig
from medai.pacs.failpoint import failpoint
from medai.pacs.queue import Job, JobOutcome, JobQueue, OutputRecord
from medai.pacs.spool import Spool

if TYPE_CHECKING:
    from medai.inference.classifier import Classifier, Prediction
    from medai.volume import Volume

__all__ = ["Worker", "destination_names"]

log = logging.getLogger(__name__)

#: Reason of a job whose scoring was interrupted too often.
INTERRUPTED = "scoring_interrupted"
#: Reason of a job that failed for an unexpected error (a bug): see the log.
INTERNAL_ERROR = "internal_error"
_RETENTION_CHECK_S = 60.0


def destination_names(config: PacsConfig) -> list[str]:
    """The queue's key of every destination, C-STORE then STOW-RS."""
    return [d.name for d in config.destinations] + [s.name for s in config.stow]


def _headers(instances: Sequence[tuple[Path, str, str]], *, every: bool) -> list[pydicom.Dataset]:
    """The series' headers for the encoders: read from every file when ``every`` (the SEG needs each slice's
    geometry), else the first readable file in full and, for the others, the UIDs the queue already holds
    (the SR's evidence needs no more; that saves reading hundreds of files before the SR can go out)."""
    headers: list[pydicom.Dataset] = []
    for path, sop_uid, sop_class_uid in instances:
        if headers and not every:
            stub = pydicom.Dataset()
            stub.SOPClassUID, stub.SOPInstanceUID = sop_class_uid, sop_uid
            stub.StudyInstanceUID, stub.SeriesInstanceUID = headers[0].StudyInstanceUID, headers[0].SeriesInstanceUID
            headers.append(stub)
            continue
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises many types for a damaged file
            log.warning("cannot read the header of %s: %s", path.name, type(exc).__name__)
    return headers


class Worker(BackgroundLoop):
    """The scoring thread.

    Args:
        config: service settings (idle time, outputs, attempts).
        spool, queue, audit: the service's storage.
        classifier: the loaded model.
        on_scored: called after a job's results are recorded (wakes the sender).
        held_series: the series an association still open has sent part of (the listener's
            :meth:`~medai.pacs.listener.Listener.open_series`); they wait ``network_timeout_s`` of silence
            instead of ``idle_seconds``.
    """

    def __init__(
        self,
        config: PacsConfig,
        spool: Spool,
        queue: JobQueue,
        audit: AuditLog,
        classifier: Classifier,
        *,
        on_scored: Callable[[], None] | None = None,
        held_series: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.queue = queue
        self.audit = audit
        self.classifier = classifier
        self._on_scored = on_scored or (lambda: None)
        self._held_series = held_series or frozenset
        self._next_retention = 0.0
        super().__init__("medai-pacs-worker")

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = 1.0
            try:
                idle, held, held_s = self.config.idle_seconds, self._held_series(), self.config.network_timeout_s
                job = self.queue.claim_ready(idle, held=held, held_seconds=held_s)
                if job is not None:
                    self.process(job)
                    continue
                self._retention()
                ready = self.queue.next_ready_at(idle, held=held, held_seconds=held_s)
                if ready is not None:  # sleep until the next series completes, not a fixed poll
                    wait = min(1.0, max(0.01, ready - time.time() + 0.005))
            except Exception:  # the loop must survive anything, a full disk or a locked database included
                log.exception("worker loop error; retrying in a second")
            self._wake.wait(wait)
            self._wake.clear()

    def _retention(self) -> None:
        now = time.time()
        if now < self._next_retention:
            return
        self._next_retention = now + _RETENTION_CHECK_S
        for series_uid in self.queue.finished_series(now - self.config.retention_hours * 3600):
            self.spool.remove_series(series_uid)
            self.queue.mark_purged(series_uid)
            log.info("retention: deleted the received instances of series %s", series_uid)

    # ------------------------------------------------------------ one job

    def process(self, job: Job) -> None:
        """Score one claimed job and record its results (or its failure)."""
        if job.attempts > self.config.max_scoring_attempts:
            message = f"scoring was interrupted {job.attempts - 1} times (the process died); not retried"
            log.error("job %d (series %s): %s", job.id, job.series_uid, message)
            self.queue.fail_job(job.id, reason=INTERRUPTED, message=message)
            self.audit.sync(self.queue)
            return
        started = time.perf_counter()
        self.spool.clear_results(job.id)
        instances = self.queue.series_instances(job.series_uid)
        files = [path for path, _, _ in instances]
        headers = _headers(instances, every=self.config.seg)
        if not headers:
            self.queue.fail_job(job.id, reason=QCReason.UNREADABLE, message="no readable instance in the series")
            self.audit.sync(self.queue)
            return
        clf = self.classifier
        try:
            outputs, label, pixel_hash = self._score(job, files, headers)
            outcome, reason, message = JobOutcome.SCORED, "", ""
        except Exception as exc:
            outcome, label, pixel_hash = JobOutcome.NOT_SCORED, "", ""
            if isinstance(exc, InvalidSeriesError):
                reason, message = exc.reason.value, str(exc)
            elif isinstance(exc, MedaiError):
                reason, message = QCReason.UNREADABLE.value, str(exc)
            else:
                log.exception("job %d (series %s): unexpected failure while scoring", job.id, job.series_uid)
                reason, message = INTERNAL_ERROR, f"unexpected {type(exc).__name__}; see the service log"
            log.warning("job %d (series %s) not scored: %s [%s]", job.id, job.series_uid, message, reason)
            outputs = self._failure_outputs(job, headers, reason, message)
        if not outputs:
            self.queue.fail_job(job.id, reason=reason or INTERNAL_ERROR, message=message or "no result object")
            self.audit.sync(self.queue)
            return
        failpoint("scoring")
        recorded = self.queue.finish_scoring(
            job.id,
            outcome=outcome,
            outputs=outputs,
            destinations=destination_names(self.config),
            model_id=clf.model_id,
            model_sha256=clf.sha256,
            label=label,
            reason=reason,
            message=message,
            pixel_sha256=pixel_hash,
        )
        if recorded:
            log.info(
                "job %d (series %s, %d instances): %s%s in %.2f s",
                job.id,
                job.series_uid,
                len(files),
                outcome.value,
                f" {label}" if label else f" ({reason})",
                time.perf_counter() - started,
            )
            self._on_scored()

    def _score(
        self, job: Job, files: Sequence[Path], headers: Sequence[pydicom.Dataset]
    ) -> tuple[list[OutputRecord], str, str]:
        from medai.ingest.load import load_series
        from medai.report.audit import pixel_sha256

        volume = load_series(list(files))
        prediction = self.classifier.predict(volume)
        return self._encode(job, volume, prediction, headers), prediction.label, pixel_sha256(volume)

    def _write(self, job: Job, kind: str, number: int, dataset: pydicom.Dataset) -> OutputRecord:
        path = self.spool.write_result(job.id, f"{kind}-{number}", dataset)
        return OutputRecord(kind, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), str(path))

    def _encode(
        self, job: Job, volume: Volume, prediction: Prediction, headers: Sequence[pydicom.Dataset]
    ) -> list[OutputRecord]:
        from pydicom.uid import ExplicitVRLittleEndian, RLELossless

        from medai.report.dicom_seg import build_seg
        from medai.report.dicom_sr import build_sr
        from medai.report.secondary_capture import build_secondary_capture

        series = [h for h in headers if str(h.get("SeriesInstanceUID", "")) == job.series_uid]
        outputs = [self._write(job, "sr", 1, build_sr(prediction, series))]
        syntax = RLELossless if self.config.image_syntax == ImageSyntax.RLE else ExplicitVRLittleEndian
        images = build_secondary_capture(
            volume, prediction, series, n_slices=self.config.key_slices, transfer_syntax=syntax
        )
        outputs += [self._write(job, "sc", n, image) for n, image in enumerate(images, start=1)]
        if self.config.seg:
            try:
                outputs.append(self._write(job, "seg", 1, build_seg(volume, prediction, series)))
            except ValueError as exc:  # e.g. an Enhanced CT source: the SR and key images still go out
                log.warning("job %d: no SEG for series %s: %s", job.id, job.series_uid, exc)
        return outputs

    def _failure_outputs(
        self, job: Job, headers: Sequence[pydicom.Dataset], reason: str, message: str
    ) -> list[OutputRecord]:
        from medai.report.dicom_sr import build_failure_sr

        series = [h for h in headers if str(h.get("SeriesInstanceUID", "")) == job.series_uid] or list(headers[:1])
        try:
            sr = build_failure_sr(
                reason, message, series, model_id=self.classifier.model_id, model_sha256=self.classifier.sha256
            )
            return [self._write(job, "sr", 1, sr)]
        except Exception:
            log.exception("job %d: the failure SR could not be built", job.id)
            return []
