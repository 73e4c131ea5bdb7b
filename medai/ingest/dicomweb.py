"""A small DICOMweb client: QIDO-RS to list studies and series, WADO-RS to retrieve a series onto disk.

Standard library only (``urllib``): the viewer's PACS worklist lists a server's studies with
:meth:`DicomWebClient.studies`, and opening one retrieves its CT series (:meth:`DicomWebClient.retrieve_study`)
into a folder that the ordinary discovery, QC gate and loader then read, so a study from a PACS is checked
exactly like one from disk. Tested against Orthanc with its DICOMweb plugin.

Only ``http``/``https`` URLs are accepted; a response larger than ``max_bytes`` is refused while it is read.
Every failure is a :class:`~medai.errors.DicomWebError` with a one-line reason. Log lines name UIDs and
counts, never a patient.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from medai.errors import DicomWebError

__all__ = ["DicomWebClient", "SeriesRecord", "StudyRecord", "split_multipart"]

log = logging.getLogger(__name__)

_DICOM_PARTS = 'multipart/related; type="application/dicom"'
_STUDY_FIELDS = ("StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


@dataclass(frozen=True)
class StudyRecord:
    """A study as QIDO-RS lists it.

    Attributes:
        study_uid: StudyInstanceUID.
        description: StudyDescription ("" when absent).
        date: StudyDate as ``YYYYMMDD`` ("" when absent).
        modalities: ModalitiesInStudy.
        n_series, n_instances: NumberOfStudyRelatedSeries / Instances (0 when the server does not say).
        accession_number: AccessionNumber ("" when absent).
    """

    study_uid: str
    description: str
    date: str
    modalities: tuple[str, ...]
    n_series: int
    n_instances: int
    accession_number: str = ""


@dataclass(frozen=True)
class SeriesRecord:
    """A series as QIDO-RS lists it."""

    series_uid: str
    modality: str
    description: str
    number: int | None
    n_instances: int


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a ``multipart/related`` payload (RFC 2046), in order.

    Raises:
        DicomWebError: not multipart, or no boundary parameter.

    Example:
        >>> body = b"--b\\r\\nContent-Type: x\\r\\n\\r\\nONE\\r\\n--b\\r\\n\\r\\nTWO\\r\\n--b--"
        >>> split_multipart(body, "multipart/related; boundary=b")
        [b'ONE', b'TWO']
    """
    message = Message()
    message["Content-Type"] = content_type
    boundary = message.get_param("boundary")
    if message.get_content_maintype() != "multipart" or not isinstance(boundary, str) or not boundary:
        raise DicomWebError(f"a WADO-RS answer must be multipart/related with a boundary, not {content_type!r}")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    parts = []
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        _, separator, content = chunk.partition(b"\r\n\r\n")
        if separator:
            parts.append(content)
    return parts


class DicomWebClient:
    """QIDO-RS and WADO-RS against one DICOMweb root.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        timeout_s: per request.
        headers: extra request headers (e.g. ``Authorization``).
        max_bytes: the largest answer accepted (a retrieved series is held in memory once).

    Raises:
        DicomWebError: a URL that is not http(s).

    Example:
        >>> client = DicomWebClient("http://127.0.0.1:8042/dicom-web")
        >>> client.url
        'http://127.0.0.1:8042/dicom-web'
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = 4 << 30,
    ) -> None:
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DicomWebError(f"the DICOMweb URL must start with http:// or https:// and name a host, not {url!r}")
        self.url = url.strip().rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.max_bytes = max_bytes

    def _get(self, path: str, accept: str, query: Mapping[str, Any] | None = None) -> tuple[bytes, str]:
        url = self.url + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        request = urllib.request.Request(url, headers={**self.headers, "Accept": accept}, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                content_type = response.headers.get("Content-Type", "")
                body = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise DicomWebError(f"{self.url} answered {exc.code} {exc.reason} to GET {path}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DicomWebError(f"cannot reach the DICOMweb server {self.url}: {reason}") from exc
        if len(body) > self.max_bytes:
            raise DicomWebError(f"a DICOMweb answer must be at most {self.max_bytes} bytes, not more ({path})")
        return body, content_type

    def _qido(self, path: str, query: Mapping[str, Any]) -> list[Dataset]:
        body, _ = self._get(path, "application/dicom+json", query)
        if not body.strip():
            return []  # some servers answer 204 / an empty body for no match
        try:
            items = json.loads(body)
            if not isinstance(items, list):
                raise ValueError(f"a JSON array, not {type(items).__name__}")
            return [Dataset.from_json(item) for item in items]
        except (ValueError, TypeError, KeyError) as exc:
            raise DicomWebError(f"a QIDO-RS answer from {self.url} must be DICOM JSON: {exc}") from exc

    def studies(self, *, limit: int = 200, modality: str | None = None) -> list[StudyRecord]:
        """The server's studies (QIDO-RS ``/studies``), at most ``limit``, optionally only those with ``modality``.

        Raises:
            DicomWebError: unreachable server, an HTTP error or an answer that is not DICOM JSON.
        """
        query: dict[str, Any] = {"limit": limit, "includefield": list(_STUDY_FIELDS)}
        if modality:
            query["ModalitiesInStudy"] = modality
        out = []
        for ds in self._qido("/studies", query):
            uid = _text(ds, "StudyInstanceUID")
            if not uid:
                continue
            modalities = tuple(m for m in _text(ds, "ModalitiesInStudy").split("\\") if m)
            out.append(
                StudyRecord(
                    study_uid=uid,
                    description=_text(ds, "StudyDescription"),
                    date=_text(ds, "StudyDate"),
                    modalities=modalities,
                    n_series=_int(ds, "NumberOfStudyRelatedSeries"),
                    n_instances=_int(ds, "NumberOfStudyRelatedInstances"),
                    accession_number=_text(ds, "AccessionNumber"),
                )
            )
        log.info("QIDO-RS %s: %d studies", self.url, len(out))
        return out

    def series(self, study_uid: str) -> list[SeriesRecord]:
        """The series of one study (QIDO-RS ``/studies/{uid}/series``)."""
        out = []
        for ds in self._qido(f"/studies/{_uid(study_uid)}/series", {"includefield": "NumberOfSeriesRelatedInstances"}):
            number = ds.get("SeriesNumber")
            out.append(
                SeriesRecord(
                    series_uid=_text(ds, "SeriesInstanceUID"),
                    modality=_text(ds, "Modality"),
                    description=_text(ds, "SeriesDescription"),
                    number=int(number) if number not in (None, "") else None,
                    n_instances=_int(ds, "NumberOfSeriesRelatedInstances"),
                )
            )
        return [s for s in out if s.series_uid]

    def retrieve_series(self, study_uid: str, series_uid: str, folder: str | Path) -> list[Path]:
        """Retrieve one series (WADO-RS) as DICOM files ``folder/<series>/NNNNN.dcm``.

        Raises:
            DicomWebError: the server failed, or answered no DICOM instance.
        """
        path = f"/studies/{_uid(study_uid)}/series/{_uid(series_uid)}"
        body, content_type = self._get(path, _DICOM_PARTS)
        parts = [p for p in split_multipart(body, content_type) if len(p) > 132 and p[128:132] == b"DICM"]
        if not parts:
            raise DicomWebError(f"WADO-RS {path} must return DICOM instances, not none")
        target = Path(folder) / _uid(series_uid)
        target.mkdir(parents=True, exist_ok=True)
        files = []
        for i, part in enumerate(parts):
            file = target / f"{i:05d}.dcm"
            file.write_bytes(part)
            files.append(file)
        log.info("WADO-RS series %s: %d instances", series_uid, len(files))
        return files

    def retrieve_study(self, study_uid: str, folder: str | Path, *, modalities: Sequence[str] = ("CT",)) -> list[Path]:
        """Retrieve a study's series of the given modalities (all series when ``modalities`` is empty).

        Raises:
            DicomWebError: the server failed, or the study has no series of those modalities.
        """
        chosen = [s for s in self.series(study_uid) if not modalities or s.modality in modalities]
        if not chosen:
            wanted = "/".join(modalities) or "any"
            raise DicomWebError(f"study {study_uid} must have a series of modality {wanted} on {self.url}, not none")
        files: list[Path] = []
        for record in chosen:
            files.extend(self.retrieve_series(study_uid, record.series_uid, folder))
        return files


def _uid(uid: str) -> str:
    """A UID as a safe URL path segment and folder name (digits and dots only)."""
    if not uid or not all(c.isdigit() or c == "." for c in uid) or len(uid) > 64:
        raise DicomWebError(f"a DICOM UID must be 1-64 digits and dots, not {uid!r}")
    return uid
