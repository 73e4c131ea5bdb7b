"""What the viewer keeps between reruns and shares between sessions: the model, the worklists, the prepared views.

Streamlit reruns the script on every click. Loading the model, reading a folder's headers, scoring a series
and preparing its overlays happen once and are shared by every session (``st.cache_resource``); a study is
scored once per series whoever opens it (:class:`medai.report.worklist.Worklist` makes sure of that).
"""

from __future__ import annotations

import atexit
import logging
import secrets
import shutil
import tempfile
from pathlib import Path

import streamlit as st

from medai.inference.classifier import Classifier
from medai.ingest.dicomweb import DicomWebClient
from medai.report.audit import AuditTrail
from medai.report.rendering import MPR, Overlays
from medai.report.results import read_results
from medai.report.worklist import (
    SourceKind,
    Worklist,
    entries_from_dicomweb,
    entries_from_folder,
    entries_from_results,
    merge_results,
)

log = logging.getLogger(__name__)

#: The audit trail every worklist of this server appends to (``medai app --audit-log PATH``), or None.
_AUDIT: list[AuditTrail] = []


def use_audit_log(path: str) -> None:
    """Record every scoring of this server in the audit trail at ``path`` (set once, before any worklist)."""
    if path and not _AUDIT:
        _AUDIT.append(AuditTrail(path))


@st.cache_resource
def deidentify_key() -> bytes:
    """The UID key of this server's de-identified exports: random at start, so they cannot be linked to another
    server's (or a later run's) exports, and one study keeps its new UIDs across its report, JSON and SR."""
    return secrets.token_bytes(32)


def audit_trail() -> AuditTrail | None:
    """The server's audit trail, if ``--audit-log`` was given."""
    return _AUDIT[0] if _AUDIT else None


@st.cache_resource(show_spinner="Loading the model ...")
def classifier() -> Classifier:
    """The shipped model (or ``$MEDAI_MODEL``), loaded once for all sessions."""
    return Classifier.load()


def private_folder(prefix: str) -> Path:
    """A temporary folder only this user can read, removed when the server stops (uploads, PACS retrievals)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def folder_worklist(folder: str, results: str) -> Worklist:
    """The worklist of a folder and/or a results file, scoring in the background; shared by all sessions.

    Paths are resolved first, so the same folder reached two ways is one worklist, scored once.
    """
    return _folder_worklist(
        str(Path(folder).resolve()) if folder else "", str(Path(results).resolve()) if results else ""
    )


@st.cache_resource(show_spinner="Reading the studies' headers ...", max_entries=8)
def _folder_worklist(folder: str, results: str) -> Worklist:
    entries = entries_from_folder(folder) if folder else []
    if results:
        entries = merge_results(entries, entries_from_results(read_results(results)))
    worklist = Worklist(entries, classifier=classifier, audit=audit_trail())
    worklist.start_scoring()
    return worklist


def upload_worklist(folder: Path) -> Worklist:
    """The worklist of one upload (one per session, not shared), scoring in the background."""
    entries = entries_from_folder(folder, kind=SourceKind.UPLOAD)
    worklist = Worklist(entries, classifier=classifier, audit=audit_trail())
    worklist.start_scoring()
    return worklist


@st.cache_resource(show_spinner="Listing the PACS studies ...", max_entries=4)
def dicomweb_worklist(url: str) -> Worklist:
    """The worklist of a DICOMweb server's CT studies; studies are retrieved when scored."""
    client = DicomWebClient(url)
    entries = entries_from_dicomweb(client)
    worklist = Worklist(entries, classifier=classifier, cache_dir=private_folder("medai-pacs-"), audit=audit_trail())
    worklist.start_scoring()
    return worklist


@st.cache_resource(max_entries=4, show_spinner=False)
def prepared_view(_worklist: Worklist, worklist_id: int, key: str, scored: bool) -> MPR:
    """A study's volume and overlays ready to render (its slices cached inside), shared by all sessions.

    ``scored`` False opens a results-file row without running the model (no overlays).
    """
    case = _worklist.open(key, score=scored)
    overlays = Overlays.from_prediction(case.prediction) if case.prediction is not None else None
    return MPR(case.volume, overlays)
