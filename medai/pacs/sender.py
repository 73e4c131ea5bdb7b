"""The sender: a job's result objects to every destination, C-STORE (pynetdicom) or DICOMweb STOW-RS.

One background thread works through the due deliveries. Per attempt, every result object of the job goes in
one association (or one STOW-RS request). It is recorded as delivered only when the destination acknowledged
all of them; otherwise it is retried with exponential backoff (``retry_base_s`` doubling up to
``retry_max_s``) while the destination is down or out of resources, and given up after ``give_up_hours`` or
after three refusals of the data itself. Result objects keep their SOP Instance UIDs across retries, so a
destination that stored part of an attempt simply receives the same instances again (at most once each in
any PACS, which stores by SOP Instance UID): delivery is at least once, and idempotent.

Transfer syntax fallback: the association proposes each object's own syntax and Explicit and Implicit VR
Little Endian. When a destination does not accept a compressed syntax (or refuses a compressed object with
a failure status), the object is decompressed and sent in Explicit VR Little Endian.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from medai.pacs.audit import AuditLog
from medai.pacs.background import BackgroundLoop
from medai.pacs.config import Destination, PacsConfig, StowDestination
from medai.pacs.dicom_status import is_success, is_transient
from medai.pacs.failpoint import failpoint
from medai.pacs.queue import Delivery, JobQueue, OutputRecord

__all__ = ["Attempt", "Sender", "send_cstore", "send_stow"]

log = logging.getLogger(__name__)

#: Refusals of the data (not of the connection) tolerated before a delivery is given up.
MAX_DATA_REFUSALS = 3


@dataclass(frozen=True)
class Attempt:
    """The result of sending a job's objects to one destination once."""

    delivered: bool
    error: str = ""
    permanent: bool = False  # the destination refused the data itself (retrying unchanged will not help)


def _propose(ae: AE, datasets: Sequence[pydicom.Dataset]) -> None:
    proposed: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = proposed.setdefault(str(ds.SOPClassUID), [])
        for syntax in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    for sop_class, syntaxes in proposed.items():
        ae.add_requested_context(sop_class, syntaxes)


def _accepted_syntaxes(assoc: Any, sop_class: str) -> set[str]:
    return {
        str(syntax)
        for cx in assoc.accepted_contexts
        if str(cx.abstract_syntax) == sop_class
        for syntax in cx.transfer_syntax
    }


def _decompressed(ds: pydicom.Dataset) -> pydicom.Dataset:
    copy = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encode(ds)))
    copy.decompress()
    return copy


def _encode(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def send_cstore(
    destination: Destination, outputs: Sequence[OutputRecord], *, calling_ae: str, timeout_s: float = 60.0
) -> Attempt:
    """C-STORE every output to ``destination`` in one association (with the syntax fallback)."""
    datasets: list[pydicom.Dataset] = [pydicom.dcmread(o.path) for o in outputs]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    _propose(ae, datasets)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        what = "rejected the association" if assoc.is_rejected else "could not be reached or aborted"
        return Attempt(False, f"{destination.name} {what}")
    try:
        for ds in datasets:
            syntax = UID(str(ds.file_meta.TransferSyntaxUID))
            accepted = _accepted_syntaxes(assoc, str(ds.SOPClassUID))
            if not accepted:
                return Attempt(False, f"{destination.name} accepts no context for {ds.SOPClassUID}", permanent=True)
            if syntax.is_compressed and str(syntax) not in accepted:
                log.info("%s refuses %s: sending %s decompressed", destination.name, syntax.name, ds.SOPInstanceUID)
                ds = _decompressed(ds)
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
            if code is not None and not is_success(code) and syntax.is_compressed and not is_transient(code):
                log.info("%s failed %s with 0x%04X: retrying decompressed", destination.name, syntax.name, code)
                status = assoc.send_c_store(_decompressed(ds))
                code = int(status.Status) if "Status" in status else None
            if code is None:
                return Attempt(False, f"{destination.name} dropped the association (no C-STORE response)")
            if not is_success(code):
                return Attempt(
                    False, f"{destination.name} answered C-STORE 0x{code:04X}", permanent=not is_transient(code)
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return Attempt(True)


def send_stow(stow: StowDestination, outputs: Sequence[OutputRecord]) -> Attempt:
    """STOW-RS every output in one ``multipart/related`` request to ``{url}/studies``."""
    import base64
    import os

    boundary = f"medai-{uuid.uuid4().hex}"
    parts = []
    for output in outputs:
        with open(output.path, "rb") as handle:
            parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + handle.read() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(stow.url.rstrip("/") + "/studies", data=body, method="POST")
    request.add_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    request.add_header("Accept", "application/dicom+json")
    if stow.username:
        password = os.environ.get(stow.password_env or "", "")
        token = base64.b64encode(f"{stow.username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=stow.timeout_s) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        return Attempt(False, f"{stow.name} answered HTTP {exc.code}", permanent=permanent)
    except (urllib.error.URLError, OSError) as exc:
        return Attempt(False, f"{stow.name} could not be reached: {getattr(exc, 'reason', exc)}")
    if code == 200:
        return Attempt(True)
    return Attempt(False, f"{stow.name} stored only part of the request (HTTP {code})")


class Sender(BackgroundLoop):
    """The delivery thread."""

    def __init__(
        self,
        config: PacsConfig,
        queue: JobQueue,
        audit: AuditLog,
        *,
        on_finished: Callable[[int, str], None] | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.audit = audit
        self._on_finished = on_finished or (lambda job_id, state: None)
        self._destinations: dict[str, Destination | StowDestination] = {d.name: d for d in config.destinations}
        self._destinations.update({s.name: s for s in config.stow})
        super().__init__("medai-pacs-sender")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for delivery in self.queue.due_deliveries():
                    if self._stop.is_set():
                        break
                    self.deliver(delivery)
                next_at = self.queue.next_delivery_at()
            except Exception:
                log.exception("sender loop error; retrying in a second")
                next_at = time.time() + 1.0
            wait = 1.0 if next_at is None else min(1.0, max(0.0, next_at - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def _retry_at(self, delivery: Delivery, attempt: Attempt, now: float) -> float | None:
        if attempt.permanent and delivery.attempts + 1 >= MAX_DATA_REFUSALS:
            return None
        if now - delivery.created_at > self.config.give_up_hours * 3600:
            return None
        wait = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** min(delivery.attempts, 30))
        return now + wait

    def deliver(self, delivery: Delivery) -> None:
        """One attempt at one delivery, recorded."""
        target = self._destinations.get(delivery.destination)
        outputs = self.queue.outputs(delivery.job_id)
        if target is None:
            attempt = Attempt(False, f"{delivery.destination} is no longer configured", permanent=True)
        elif isinstance(target, Destination):
            try:
                attempt = send_cstore(
                    target, outputs, calling_ae=self.config.ae_title, timeout_s=self.config.network_timeout_s
                )
            except Exception as exc:  # a broken peer must not stop the other deliveries
                log.exception("C-STORE to %s failed unexpectedly", delivery.destination)
                attempt = Attempt(False, f"{type(exc).__name__}: {exc}")
        else:
            attempt = send_stow(target, outputs)
        now = time.time()
        if attempt.delivered:
            failpoint("sent-unrecorded")
            final = self.queue.record_attempt(delivery.job_id, delivery.destination, delivered=True, now=now)
            log.info("job %d: %d objects delivered to %s", delivery.job_id, len(outputs), delivery.destination)
        else:
            retry_at = self._retry_at(delivery, attempt, now)
            final = self.queue.record_attempt(
                delivery.job_id, delivery.destination, delivered=False, error=attempt.error, retry_at=retry_at, now=now
            )
            if retry_at is None:
                log.error("job %d: gave up delivering to %s: %s", delivery.job_id, delivery.destination, attempt.error)
            else:
                log.warning(
                    "job %d: delivery to %s failed (%s); retry in %.0f s",
                    delivery.job_id,
                    delivery.destination,
                    attempt.error,
                    retry_at - now,
                )
        if final is not None:
            self.audit.sync(self.queue)
            self._on_finished(delivery.job_id, str(final))
