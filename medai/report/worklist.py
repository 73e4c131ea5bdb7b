"""The triage worklist: studies from a folder, an upload, a ``medai score`` results file or a DICOMweb server.

A :class:`Worklist` holds one row per study in the results-file format (:mod:`medai.report.results`:
label, probabilities, severity, lesion %, QC flags, status, reason), so a results file's rows are shown as
they are and a study scored here gets the same columns. It is sorted by :func:`triage_rank`:

0. ``covid19`` or indeterminate, 1. other pneumonia, 2. could not be scored (QC failed: read it without the
model), 3. not scored yet, 4. normal; within a group by the probability of COVID-19, highest first.

Scoring runs once per series: :meth:`Worklist.start_scoring` scores the pending studies in a background
thread, one at a time, and :meth:`Worklist.open` (the study a reader opens) scores it at once in the caller's
thread or waits for the background thread when it is already on it. Predictions and loaded volumes are kept
in small LRU caches. Thread-safe; no Streamlit here (the viewer in ``app/`` is its UI). Log lines name
series UIDs and counts, never a patient.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medai.errors import DicomWebError, InvalidSeriesError, MedaiError, NoSeriesError, QCReason
from medai.ingest.discovery import find_series
from medai.ingest.load import load_series, load_study
from medai.ingest.nifti import is_nifti_name, nifti_stem, read_nifti
from medai.ingest.qc import select_per_study
from medai.ingest.sources import DicomSource, SeriesInfo
from medai.report.audit import AuditTrail, current_user, scoring_record
from medai.report.results import RowStatus, prediction_fields
from medai.volume import Volume

if TYPE_CHECKING:
    from medai.inference.classifier import Classifier, Prediction
    from medai.ingest.dicomweb import DicomWebClient

__all__ = [
    "Case",
    "SourceKind",
    "StudyRef",
    "Worklist",
    "WorklistEntry",
    "entries_from_dicomweb",
    "entries_from_folder",
    "entries_from_results",
    "loggable",
    "merge_results",
    "triage_group",
    "triage_rank",
]

log = logging.getLogger(__name__)

PENDING = "pending"  # a row's status before it is scored (results files know only ok / error / skipped)
SCORING = "scoring"
TRIAGE_GROUPS = ("COVID-19 or indeterminate", "other pneumonia", "not scored: QC", "not scored yet", "normal")


class SourceKind(enum.StrEnum):
    """Where a worklist's studies come from."""

    FOLDER = "folder"
    UPLOAD = "upload"
    RESULTS = "results"
    DICOMWEB = "dicomweb"


@dataclass(frozen=True, eq=False)
class StudyRef:
    """How to load one worklist study's series.

    Exactly one of ``series`` (DICOM on disk), ``nifti_path``, ``results_source`` (the ``source`` of a results
    row, with ``series_uid``) and ``dicomweb`` (client, study UID) is set.

    Attributes:
        key: unique in a worklist: the series UID, a NIfTI file, or ``dicomweb:<study UID>``.
        title: what the worklist shows (folder or file name, study description); never the patient's name.
        kind: the source.
    """

    key: str
    title: str
    kind: SourceKind
    series: SeriesInfo | None = None
    nifti_path: Path | None = None
    results_source: str = ""
    series_uid: str = ""
    dicomweb: tuple[DicomWebClient, str] | None = None


@dataclass(eq=False)
class WorklistEntry:
    """One study: where it is and its row (results-file columns; ``status`` pending until scored)."""

    ref: StudyRef
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def status(self) -> str:
        return str(self.row.get("status") or PENDING)


@dataclass(frozen=True, eq=False)
class Case:
    """An opened study: its volume, its prediction (None when its row came from a results file and it was not
    scored here) and the DICOM instances of its series (empty for NIfTI)."""

    key: str
    volume: Volume
    prediction: Prediction | None
    sources: tuple[DicomSource, ...] = ()


def triage_group(row: Mapping[str, Any]) -> int:
    """The triage group of a row: 0 COVID-19 or indeterminate ... 4 normal (see the module docstring).

    Example:
        >>> triage_group({"status": "ok", "label": "normal", "indeterminate": True})
        0
        >>> triage_group({"status": "error"}), triage_group({}), triage_group({"status": "ok", "label": "normal"})
        (2, 3, 4)
    """
    status = row.get("status") or PENDING
    if status == RowStatus.OK:
        if row.get("label") == "covid19" or row.get("indeterminate"):
            return 0
        return 1 if row.get("label") == "other_pneumonia" else 4
    return 2 if status == RowStatus.ERROR else 3


def triage_rank(entry: WorklistEntry) -> tuple[int, float, str]:
    """Sort key of the worklist: triage group, then the probability of COVID-19 (highest first), then title."""
    p = entry.row.get("p_covid19")
    return triage_group(entry.row), -(float(p) if p is not None else 0.0), entry.ref.title


# ---------------------------------------------------------------- building entries


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or path.name
    except ValueError:
        return path.name


def _identity_fields(info: SeriesInfo) -> dict[str, Any]:
    return {
        "study_uid": info.study_uid,
        "series_uid": info.series_uid,
        "series_number": info.series_number,
        "series_description": info.series_description,
        "n_slices": info.n_slices,
    }


def entries_from_folder(root: str | Path, *, kind: SourceKind = SourceKind.FOLDER) -> list[WorklistEntry]:
    """One entry per study under ``root`` (headers only): its selected series, or an error row with the reason
    every series was refused; and one per NIfTI volume (``medai synth`` masks beside a case are left out).

    Raises:
        NoSeriesError: ``root`` does not exist.

    Example:
        >>> [e.ref.title for e in entries_from_folder("demo/studies")]  # doctest: +SKIP
        ['case_0000', 'case_0001', 'case_0002']
    """
    root = Path(root)
    found = find_series(root)
    base = root if root.is_dir() else root.parent
    entries = []
    for report in select_per_study(list(found)).values():
        chosen = report.selected
        if chosen is not None:
            title = _relative(chosen.location, base)
            ref = StudyRef(chosen.series_uid, title, kind, series=chosen, series_uid=chosen.series_uid)
            entries.append(WorklistEntry(ref, {**_identity_fields(chosen), "source": str(chosen.location)}))
            continue
        first = report.rejected[0]
        title = _relative(first.series.location, base)
        row = {
            **_identity_fields(first.series),
            "source": str(first.series.location),
            "status": RowStatus.ERROR.value,
            "reason": first.reason.value,
            "message": " ".join(first.message.split()),
        }
        ref = StudyRef(first.series.series_uid, title, kind, series=first.series, series_uid=first.series.series_uid)
        entries.append(WorklistEntry(ref, row))  # opening it runs the QC gate again: the reason, as an error
    for path in found.volumes:
        title = _relative(path.parent / nifti_stem(path), base)
        entries.append(WorklistEntry(StudyRef(str(path), title, kind, nifti_path=path), {"source": str(path)}))
    log.info("worklist: %d studies under a %s", len(entries), kind.value)
    return entries


def entries_from_results(rows: Iterable[Mapping[str, Any]]) -> list[WorklistEntry]:
    """One entry per ``ok`` or ``error`` row of a results file (``skipped`` rows are other series of a listed
    study); the rows are shown as they are, without scoring again."""
    entries = []
    for row in rows:
        if row.get("status") not in (RowStatus.OK, RowStatus.ERROR):
            continue
        source = str(row.get("source") or "")
        uid = str(row.get("series_uid") or "")
        title = Path(nifti_stem(source)).name if is_nifti_name(source) else Path(source).name or uid
        ref = StudyRef(uid or source, title, SourceKind.RESULTS, results_source=source, series_uid=uid)
        entries.append(WorklistEntry(ref, dict(row)))
    return entries


def merge_results(entries: Sequence[WorklistEntry], results: Sequence[WorklistEntry]) -> list[WorklistEntry]:
    """Entries found on disk, with the row of a results file where it has one for the same series (or file)."""
    by_key = {e.key: e for e in results}
    merged = []
    for entry in entries:
        known = by_key.pop(entry.key, None)
        merged.append(WorklistEntry(entry.ref, dict(known.row)) if known is not None else entry)
    return merged + list(by_key.values())


def entries_from_dicomweb(client: DicomWebClient, *, limit: int = 200) -> list[WorklistEntry]:
    """One entry per study with a CT series on a DICOMweb server (QIDO-RS); scoring retrieves it (WADO-RS).

    Raises:
        DicomWebError: the server cannot be listed.
    """
    entries = []
    for study in client.studies(limit=limit):
        if study.modalities and "CT" not in study.modalities:
            continue
        title = " ".join(x for x in (study.description or "study", study.date) if x) + f" ({study.study_uid[-8:]})"
        ref = StudyRef(f"dicomweb:{study.study_uid}", title, SourceKind.DICOMWEB, dicomweb=(client, study.study_uid))
        entries.append(WorklistEntry(ref, {"study_uid": study.study_uid, "source": f"{client.url}/studies"}))
    return entries


# ---------------------------------------------------------------- loading and scoring


def _load(ref: StudyRef, cache_dir: Path) -> tuple[Volume, tuple[DicomSource, ...]]:
    """The volume of a study's series, and its DICOM instances."""
    if ref.series is not None:
        return load_series(ref.series), ref.series.sources
    if ref.nifti_path is not None:
        return read_nifti(ref.nifti_path), ()
    if ref.dicomweb is not None:
        client, study_uid = ref.dicomweb
        folder = cache_dir / study_uid
        if not (folder / ".complete").is_file():
            client.retrieve_study(study_uid, folder)
            (folder / ".complete").touch()
        report, volume = load_study(folder)
        return volume, report.selected.sources if report.selected is not None else ()
    source = ref.results_source
    if is_nifti_name(source):
        return read_nifti(source), ()
    if not source or not Path(source).exists():
        raise NoSeriesError(f"the results row's source must be an existing folder or file, not {source!r}")
    for info in find_series(source):
        if info.series_uid == ref.series_uid:
            return load_series(info), info.sources
    raise NoSeriesError(f"series {ref.series_uid} must be under {source!r} to be opened, but it is not there any more")


def loggable(key: str) -> str:
    """A worklist key fit for a log line: a UID as it is, a file path (whose folders may be named after a
    patient) as a short hash.

    Example:
        >>> loggable("1.2.840.1"), loggable("/data/Smith_John/ct.nii.gz")[:5]
        ('1.2.840.1', 'file ')
    """
    uid = key.removeprefix("dicomweb:")
    if uid and all(c.isdigit() or c == "." for c in uid):
        return key
    return "file " + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _error_row(exc: MedaiError) -> dict[str, Any]:
    reason = exc.reason.value if isinstance(exc, InvalidSeriesError) else QCReason.UNREADABLE.value
    if isinstance(exc, DicomWebError):
        reason = "dicomweb"
    return {"status": RowStatus.ERROR.value, "reason": reason, "message": " ".join(str(exc).split())}


class Worklist:
    """Studies to read, sorted by triage priority, scored once each (see the module docstring).

    Args:
        entries: the studies.
        classifier: returns the :class:`~medai.inference.classifier.Classifier` (called when scoring first needs it).
        cache_dir: where studies retrieved over DICOMweb are kept.
        cached_cases: loaded volumes kept in memory (each 60-300 MB).
        cached_predictions: predictions kept (a few MB each: saliency and masks on coarse grids).
        audit: append one record per scoring to this tamper-evident trail (who: the user running the viewer).

    Example:
        >>> worklist = Worklist(entries_from_folder("demo/studies"), classifier=Classifier.load)  # doctest: +SKIP
        >>> worklist.start_scoring()  # doctest: +SKIP
        >>> case = worklist.open(worklist.entries()[0].key)  # doctest: +SKIP
    """

    def __init__(
        self,
        entries: Sequence[WorklistEntry],
        *,
        classifier: Callable[[], Classifier],
        cache_dir: str | Path | None = None,
        cached_cases: int = 2,
        cached_predictions: int = 32,
        audit: AuditTrail | None = None,
    ) -> None:
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"worklist keys must be unique, not {len(keys) - len(set(keys))} repeated")
        self._entries: dict[str, WorklistEntry] = {e.key: e for e in entries}
        self._classifier_factory = classifier
        self._classifier: Classifier | None = None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(".")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._busy: set[str] = set()
        self._cases: OrderedDict[str, Case] = OrderedDict()
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self._cached_cases = cached_cases
        self._cached_predictions = cached_predictions
        self._thread: threading.Thread | None = None
        self._scored: set[str] = set()
        self._audit = audit

    # ------------------------------------------------ reading

    def entries(self) -> list[WorklistEntry]:
        """A snapshot of the entries in triage order (copies: safe to read while scoring goes on)."""
        with self._lock:
            snapshot = [WorklistEntry(e.ref, dict(e.row)) for e in self._entries.values()]
        return sorted(snapshot, key=triage_rank)

    def entry(self, key: str) -> WorklistEntry:
        """A snapshot of one entry.

        Raises:
            KeyError: no such entry.
        """
        with self._lock:
            e = self._entries[key]
            return WorklistEntry(e.ref, dict(e.row))

    def progress(self) -> tuple[int, int]:
        """``(studies scored or refused, all studies)``."""
        with self._lock:
            done = sum(1 for e in self._entries.values() if e.status in (RowStatus.OK, RowStatus.ERROR))
            return done, len(self._entries)

    def scored_here(self, key: str) -> bool:
        """Whether this worklist ran the model on the study (its row is not one read from a results file)."""
        with self._lock:
            return key in self._scored

    def add(self, entries: Iterable[WorklistEntry]) -> list[str]:
        """Add studies (an upload); an entry already listed keeps its row. Returns the keys added."""
        added = []
        with self._lock:
            for entry in entries:
                if entry.key not in self._entries:
                    self._entries[entry.key] = entry
                    added.append(entry.key)
            self._changed.notify_all()
        return added

    @property
    def classifier(self) -> Classifier:
        """The classifier, loaded on first use."""
        with self._lock:
            if self._classifier is None:
                self._classifier = self._classifier_factory()
            return self._classifier

    # ------------------------------------------------ scoring

    def start_scoring(self) -> None:
        """Score every pending study in a background thread, one at a time (returns at once; idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._score_pending, name="medai-worklist", daemon=True)
            self._thread.start()

    def _next_pending(self) -> str | None:
        with self._lock:
            for entry in sorted(self._entries.values(), key=lambda e: e.ref.title):
                if entry.status == PENDING and entry.key not in self._busy:
                    return entry.key
            return None

    def _score_pending(self) -> None:
        while (key := self._next_pending()) is not None:
            try:
                self.open(key, score=True, keep_volume=False)
            except MedaiError:
                pass  # the row says why
            except Exception:  # a bug: keep the worklist alive, say so in the row and the log
                log.exception("scoring worklist entry %s failed", loggable(key))
                with self._lock:
                    self._entries[key].row.update(status=RowStatus.ERROR.value, reason="internal_error")
                    self._entries[key].row["message"] = "internal error while scoring; see the server log"

    def open(self, key: str, *, score: bool = True, keep_volume: bool = True) -> Case:
        """Load a study (and score it when ``score`` and it has no prediction yet), once even when asked twice.

        Args:
            key: the entry.
            score: run the model when no prediction is cached; False opens a study whose row came from a
                results file with its row's numbers only.
            keep_volume: keep the loaded volume in the case cache (False for background scoring).

        Raises:
            KeyError: no such entry.
            MedaiError: the study cannot be loaded or scored (its row says why too).
        """
        with self._changed:
            while key in self._busy:  # another thread is loading or scoring it: wait for its result
                self._changed.wait()
            case = self._cases.get(key)
            prediction = self._predictions.get(key)
            if case is not None and (case.prediction is not None or not score):
                self._cases.move_to_end(key)
                return case
            self._busy.add(key)
            entry = self._entries[key]
            if score and prediction is None:
                entry.row["status"] = entry.row.get("status") or SCORING
        try:
            volume, sources = (case.volume, case.sources) if case is not None else _load(entry.ref, self.cache_dir)
            if score and prediction is None:
                prediction = self.classifier.predict(volume)
                self._record(volume, prediction)
            case = Case(key, volume, prediction, tuple(sources))
        except MedaiError as exc:
            with self._lock:
                entry.row.update(_error_row(exc))
            raise
        finally:
            with self._changed:
                self._busy.discard(key)
                if entry.row.get("status") == SCORING:
                    entry.row["status"] = None
                self._changed.notify_all()
        with self._lock:
            if prediction is not None:
                self._scored.add(key)
                self._remember(self._predictions, key, prediction, self._cached_predictions)
                if score and entry.row.get("model_id") != self.classifier.scoring_id:
                    entry.row.update(
                        prediction_fields(prediction),
                        status=RowStatus.OK.value,
                        reason="",
                        message="",
                        model_id=self.classifier.scoring_id,
                    )
            if keep_volume:
                self._remember(self._cases, key, case, self._cached_cases)
        log.info("worklist: opened %s (%s)", loggable(key), "scored" if prediction is not None else "results row only")
        return case

    def _record(self, volume: Volume, prediction: Prediction) -> None:
        if self._audit is None:
            return
        clf = self.classifier
        fields = scoring_record(
            source="viewer",
            who=current_user(),
            volume=volume,
            prediction=prediction,
            model_id=clf.scoring_id,
            model_sha256=clf.sha256,
            outputs={"shown": "viewer worklist"},
        )
        self._audit.append(fields)

    @staticmethod
    def _remember(cache: OrderedDict[str, Any], key: str, value: Any, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)
