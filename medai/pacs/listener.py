"""The DICOM listener (pynetdicom): C-ECHO and C-STORE of CT series into the durable spool.

What a peer meets:

* **Association.** Accepted only from a calling AE title on the allow-list (optionally from its host), and
  only while the spool's disk has more free space than the watermark. Otherwise it is rejected with a named
  reason (:class:`~medai.pacs.dicom_status.AssociationRejection`): *calling AE title not recognised*
  (permanent) or *local limit exceeded* (transient: try later). At most ``max_associations`` at once, PDUs up
  to ``max_pdu_bytes``, idle peers dropped after ``network_timeout_s``. Optional DICOM TLS.
* **Presentation contexts.** Verification, CT Image Storage and Enhanced CT Image Storage in the common
  transfer syntaxes (:data:`TRANSFER_SYNTAXES`); any other SOP class is refused at negotiation.
* **C-STORE.** The data set is parsed and checked (SOP class as negotiated, UIDs present and valid, native
  pixel data complete); a bad one gets a named failure status and a log line with the reason, and the
  association and the server go on. A good one is written to the spool exactly as received (fsynced, renamed
  into place) and recorded in the queue *before* Success is returned: an acknowledged instance is never lost.

Logs name AE titles, hosts and UIDs, never patient names or IDs.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medai.pacs.config import PacsConfig, TlsSettings
from medai.pacs.dicom_status import AssociationRejection, StoreStatus
from medai.pacs.queue import JobQueue
from medai.pacs.spool import Spool, is_uid

__all__ = ["STORAGE_CLASSES", "TRANSFER_SYNTAXES", "Listener", "check_dataset", "server_tls_context"]

log = logging.getLogger(__name__)

#: SOP classes medai stores.
STORAGE_CLASSES: tuple[UID, ...] = (CTImageStorage, EnhancedCTImageStorage)
#: Transfer syntaxes accepted for them (every one medai's loader decodes).
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The listener's TLS context: TLS 1.2 or later, its certificate, and peers' certificates required when a
    CA bundle is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(str(tls.ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def check_dataset(ds: Dataset, negotiated_class: str) -> tuple[StoreStatus, str]:
    """Whether a received data set may be stored: Success, or a failure status and the reason (no PHI).

    Example:
        >>> check_dataset(Dataset(), CTImageStorage)
        (<StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: 43264>, 'SOPClassUID is missing')
    """
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if not value:
            return StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing"
        if not is_uid(value):
            return StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} must be a UID, not {value[:80]!r}"
    if str(ds.SOPClassUID) != str(negotiated_class):
        return (
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID must be the negotiated {negotiated_class}, not {ds.SOPClassUID}",
        )
    if "PixelData" not in ds:
        return StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "PixelData is missing"
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not UID(syntax).is_compressed:
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
            expected = expected * int(ds.BitsAllocated) // 8
        except (AttributeError, TypeError, ValueError) as exc:
            return StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"image attributes are missing or invalid: {exc}"
        received = len(ds.PixelData)
        if received < expected:
            return (
                StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                f"PixelData must hold {expected} bytes for its rows, columns and frames, not {received} (truncated)",
            )
    return StoreStatus.SUCCESS, ""


class _GatedACSE(ACSE):
    """pynetdicom's ACSE with medai's admission checks run before its own negotiation."""

    def __init__(self, assoc: Any, gate: Callable[[str, str], AssociationRejection | None]) -> None:
        super().__init__(assoc)
        self._gate = gate

    def _negotiate_as_acceptor(self) -> None:
        primitive: Any = self.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        rejection = self._gate(calling, self.assoc.requestor.address)
        if rejection is None:
            super()._negotiate_as_acceptor()
            return
        self.send_reject(rejection.result, rejection.source, rejection.diagnostic)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class Listener:
    """The C-STORE service: builds the pynetdicom AE from the config and runs its server in the background.

    Args:
        config: the service settings.
        spool: where instances go.
        queue: where they are recorded.
        on_stored: called after each new instance (wakes the worker).

    Example:
        >>> listener = Listener(config, spool, queue)  # doctest: +SKIP
        >>> listener.start(); ...; listener.stop()  # doctest: +SKIP
    """

    def __init__(
        self, config: PacsConfig, spool: Spool, queue: JobQueue, *, on_stored: Callable[[], None] | None = None
    ) -> None:
        self.config = config
        self.spool = spool
        self.queue = queue
        self._on_stored = on_stored or (lambda: None)
        self._server: Any = None
        self._stats_lock = threading.Lock()
        self.stats = {"stored": 0, "duplicates": 0, "refused": 0, "rejected_associations": 0}
        self._sending: dict[int, set[str]] = {}  # open association (id) -> series it stored instances of

    def open_series(self) -> frozenset[str]:
        """Series that an association still open has stored instances of (their senders may not be done)."""
        with self._stats_lock:
            return frozenset().union(*self._sending.values())

    def _on_association_end(self, event: Any) -> None:
        """Released, aborted or dropped: the idle time of the series it sent counts from now."""
        with self._stats_lock:
            series = self._sending.pop(id(event.assoc), set())
        if not series:
            return
        now = time.time()
        try:
            for series_uid in series:
                self.queue.hold_series(series_uid, now)
        except Exception as exc:  # the queue closed under a stopping service: recovery restarts the idle time
            log.warning("could not restart the idle time of %d series: %s", len(series), type(exc).__name__)
        self._on_stored()

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # ------------------------------------------------------------ admission

    def admission(self, calling_ae: str, host: str) -> AssociationRejection | None:
        """The rejection for a peer calling as ``calling_ae`` from ``host``, or None to let it in."""
        if not any(peer.admits(calling_ae, host) for peer in self.config.allow_ae):
            log.warning("rejected association from %r at %s: calling AE title not on the allow-list", calling_ae, host)
            self._count("rejected_associations")
            return AssociationRejection.CALLING_AE_NOT_RECOGNIZED
        free = self.spool.free_bytes()
        if free < self.config.min_free_bytes:
            log.warning(
                "rejected association from %r at %s: the spool's disk has %.0f MB free, under the %.0f MB watermark",
                calling_ae,
                host,
                free / 2**20,
                self.config.min_free_mb,
            )
            self._count("rejected_associations")
            return AssociationRejection.LOCAL_LIMIT_EXCEEDED
        return None

    def _on_connection(self, event: Any) -> None:
        event.assoc.acse = _GatedACSE(event.assoc, self.admission)

    # ------------------------------------------------------------ DIMSE

    def _on_echo(self, event: Any) -> int:
        return int(StoreStatus.SUCCESS)

    def _on_store(self, event: Any) -> int:
        peer = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        try:
            status, reason, series_uid = self._store(event)
        except OSError as exc:
            status, reason, series_uid = StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}", ""
        except Exception as exc:  # the edge: one bad data set must never stop the service
            log.exception("unexpected failure storing an instance from %s", peer)
            status, reason, series_uid = StoreStatus.PROCESSING_FAILURE, f"{type(exc).__name__}", ""
        if status is not StoreStatus.SUCCESS:
            self._count("refused")
            log.warning(
                "refused an instance from %s (series %s): %s [%s]", peer, series_uid or "?", reason, status.name
            )
        if status is StoreStatus.OUT_OF_RESOURCES and is_uid(series_uid):
            # the sender will retry: the part of the series already here must not be scored on its own meanwhile
            self.queue.hold_series(series_uid, time.time() + self.config.refused_hold_seconds)
        return int(status)

    def _store(self, event: Any) -> tuple[StoreStatus, str, str]:
        negotiated = str(event.context.abstract_syntax)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            status, reason = check_dataset(ds, negotiated)
        except Exception as exc:  # pydicom raises many types for a data set it cannot parse
            return StoreStatus.CANNOT_UNDERSTAND, f"data set cannot be parsed: {type(exc).__name__}", ""
        series_uid = str(ds.get("SeriesInstanceUID", ""))
        if status is not StoreStatus.SUCCESS:
            return status, reason, series_uid if is_uid(series_uid) else ""
        if self.spool.free_bytes() < self.config.min_free_bytes:
            return StoreStatus.OUT_OF_RESOURCES, "the spool's disk is under its free-space watermark", series_uid
        data = event.encoded_dataset(include_meta=True)
        sop_uid = str(ds.SOPInstanceUID)
        if self.queue.is_known(sop_uid):  # a resend: acknowledged before, nothing to write
            path = self.spool.instance_path(series_uid, sop_uid)
        else:
            try:
                path = self.spool.write_instance(series_uid, sop_uid, data)
            except OSError as exc:  # a full disk between the check and the write
                return StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}", series_uid
        new = self.queue.record_instance(
            series_uid=series_uid,
            study_uid=str(ds.StudyInstanceUID),
            sop_uid=sop_uid,
            path=path,
            sop_class_uid=negotiated,
            transfer_syntax=str(event.context.transfer_syntax[0]),
            size_bytes=len(data),
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
        )
        self._count("stored" if new else "duplicates")
        with self._stats_lock:
            self._sending.setdefault(id(event.assoc), set()).add(series_uid)
        if not new:
            log.info("duplicate instance %s of series %s ignored (already stored)", sop_uid, series_uid)
        self._on_stored()
        return StoreStatus.SUCCESS, "", series_uid

    # ------------------------------------------------------------ server

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.network_timeout = self.config.network_timeout_s
        ae.acse_timeout = self.config.network_timeout_s
        ae.dimse_timeout = self.config.network_timeout_s
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def start(self) -> tuple[str, int]:
        """Start listening (in background threads); returns the bound (host, port)."""
        ae = self._application_entity()
        ssl_context = server_tls_context(self.config.tls) if self.config.tls is not None else None
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_association_end),  # after a release, an abort or a dropped peer
        ]
        self._server = ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
        )
        host, port = self._server.server_address[:2]
        log.info("listening on %s:%d as %s (%s)", host, port, self.config.ae_title, "TLS" if ssl_context else "no TLS")
        return str(host), int(port)

    def stop(self) -> None:
        """Stop accepting and close the server (running associations are aborted)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
