"""Planning ``medai score``: which series to score, and a row for every other one.

:func:`plan_inputs` reads headers only (main process): it finds every series
under the inputs (:func:`medai.ingest.discovery.find_series`), picks the series to
score per study (:func:`medai.ingest.qc.select_per_study`) and turns every other
series into a ``skipped`` row with its reason. When no series of a study can
be scored, its series become ``error`` rows: the study failed. Identifiers
(accession number, patient ID and name) are pseudonymized here, before a job
leaves the process.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medai.batch.pseudonym import Pseudonymizer
from medai.errors import MedaiError, QCReason
from medai.ingest.discovery import find_series, list_files, read_header
from medai.ingest.nifti import is_nifti_name
from medai.ingest.qc import DEFAULT_RULES, SelectionRules, select_per_study
from medai.ingest.sources import SeriesInfo, SeriesList, SkippedFile
from medai.report.results import RowStatus, ScoreReason

__all__ = [
    "MapUnordered",
    "ScoreJob",
    "ScorePlan",
    "discover_chunk",
    "make_row",
    "merge_series",
    "plan_inputs",
    "read_score_manifest",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreJob:
    """One series (or NIfTI file) to score, with the row fields known before loading it.

    Attributes:
        series: the series from discovery; None for a NIfTI file.
        nifti_path: the NIfTI file; None for DICOM.
        fields: row fields from the headers (source, UIDs, identity already pseudonymized, ...).
    """

    series: SeriesInfo | None
    nifti_path: str | None
    fields: Mapping[str, Any]

    @property
    def key(self) -> str:
        """What the job is about: the series UID, else its source."""
        return str(self.fields.get("series_uid") or self.fields.get("source") or "")


@dataclass
class ScorePlan:
    """Output of :func:`plan_inputs`: jobs to score, rows decided while planning, files ignored."""

    jobs: list[ScoreJob] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[SkippedFile] = field(default_factory=list)


def read_score_manifest(path: str | Path) -> list[Path]:
    """The ``path`` column of a manifest CSV, resolved against the manifest's folder.

    Other columns (label, split, ...) are ignored: scoring needs only the paths.

    Raises:
        MedaiError: no ``path`` column or no rows.

    Example:
        >>> read_score_manifest("manifest.csv")  # doctest: +SKIP
        [PosixPath('/data/case_0000'), PosixPath('/data/case_0001')]
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns:
            raise MedaiError(f"{path}: a manifest must have a 'path' column, not {columns}")
        paths = []
        for row in reader:
            value = next((v for k, v in row.items() if (k or "").strip() == "path"), "")
            value = (value or "").strip()
            if value:
                candidate = Path(value)
                paths.append(candidate if candidate.is_absolute() else path.resolve().parent / candidate)
    if not paths:
        raise MedaiError(f"{path}: a manifest must list at least one path, not none")
    return paths


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _identity(header: Mapping[str, Any], pseudonymizer: Pseudonymizer | None) -> dict[str, Any]:
    accession, patient_id, patient_name = (
        str(header.get(k) or "") for k in ("AccessionNumber", "PatientID", "PatientName")
    )
    if pseudonymizer is None:
        return {
            "accession_number": accession,
            "patient_id": patient_id,
            "patient_name": patient_name,
            "pseudonymized": False,
        }
    return {
        "accession_number": pseudonymizer("AccessionNumber", accession),
        "patient_id": pseudonymizer("PatientID", patient_id),
        "patient_name": "",
        "pseudonymized": True,
    }


def _series_fields(info: SeriesInfo, pseudonymizer: Pseudonymizer | None) -> dict[str, Any]:
    try:
        dataset = read_header(info.sources[0])
        header = {k: dataset.get(k) for k in ("AccessionNumber", "PatientID", "PatientName")}
    except MedaiError:
        header = {}
    return {
        "source": str(info.location) if info.sources else "",
        "study_uid": info.study_uid,
        "series_uid": info.series_uid,
        **_identity(header, pseudonymizer),
        "series_number": info.series_number,
        "series_description": info.series_description,
        "n_slices": info.n_slices,
    }


def make_row(
    fields: Mapping[str, Any], status: RowStatus, reason: str = "", message: str = "", **extra: Any
) -> dict[str, Any]:
    """A result row: ``fields`` plus status, reason code and a one-line message (and ``extra`` columns).

    Example:
        >>> make_row({"source": "a"}, RowStatus.ERROR, "not_ct", "Modality must be CT,   not MR")["message"]
        'Modality must be CT, not MR'
    """
    return {**fields, "status": status.value, "reason": reason, "message": _one_line(message), **extra}


#: ``map_unordered(function, items)`` yields ``function(item)`` for every item, in any order.
MapUnordered = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]]
_FILES_PER_CHUNK = 64


def discover_chunk(chunk: tuple[int, tuple[str, ...]]) -> tuple[int, SeriesList]:
    """Headers of one chunk of files (a worker's share of discovery): ``(input index, series found)``, the
    series list carrying the chunk's skipped files and NIfTI volumes.

    Example:
        >>> index, found = discover_chunk((0, ()))
        >>> index, list(found), found.skipped, found.volumes
        (0, [], (), ())
    """
    index, files = chunk
    series: list[SeriesInfo] = []
    skipped: list[SkippedFile] = []
    volumes: list[Path] = []
    for name in files:
        found = find_series(name)
        series.extend(found)
        skipped.extend(found.skipped)
        volumes.extend(found.volumes)
    out = SeriesList(merge_series(series))
    out.skipped, out.volumes = tuple(skipped), tuple(volumes)
    return index, out


def _chunks(index: int, path: Path, skipped: list[SkippedFile]) -> list[tuple[int, tuple[str, ...]]]:
    """The files under one input (links followed once each, as :func:`find_series` walks) in chunks."""
    files = [str(f) for f in list_files(path, skipped)]
    return [(index, tuple(files[start : start + _FILES_PER_CHUNK])) for start in range(0, len(files), _FILES_PER_CHUNK)]


def _coverage_mm(frames: Sequence[Any]) -> float:
    orientation = frames[0].orientation
    positions = [f.position_mm for f in frames if f.position_mm is not None]
    if orientation is None or len(positions) < 2:
        return 0.0
    along = np.asarray(positions) @ np.cross(orientation[:3], orientation[3:])
    return float(along.max() - along.min())


def merge_series(parts: Sequence[SeriesInfo]) -> list[SeriesInfo]:
    """Join the pieces of series found in separate chunks of files (same UID), as :func:`find_series` would.

    Header fields come from the piece with the first file; sources and frames
    are united in file order; counts and coverage are recomputed.

    Example:
        >>> merge_series([])
        []
    """
    by_uid: dict[str, list[SeriesInfo]] = {}
    for info in parts:
        by_uid.setdefault(info.series_uid, []).append(info)
    merged = []
    for pieces in by_uid.values():
        if len(pieces) == 1:
            merged.append(pieces[0])
            continue
        pieces.sort(key=lambda s: s.sources[0])
        frames = tuple(sorted((f for p in pieces for f in p.frames), key=lambda f: (f.source, f.frame)))
        sources = tuple(sorted(s for p in pieces for s in p.sources))
        merged.append(
            replace(
                pieces[0],
                sources=sources,
                frames=frames,
                n_instances=len(sources),
                n_slices=len(frames),
                coverage_mm=_coverage_mm(frames),
            )
        )
    merged.sort(key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else 1 << 30, s.series_uid))
    return merged


def _discover(paths: Sequence[Path], map_unordered: MapUnordered) -> dict[int, SeriesList]:
    pieces: dict[int, list[SeriesInfo]] = {}
    skipped: dict[int, list[SkippedFile]] = {}
    volumes: dict[int, list[Path]] = {}
    chunks = []
    for i, p in enumerate(paths):
        if p.exists() and not is_nifti_name(p):
            chunks += _chunks(i, p, skipped.setdefault(i, []))
    for index, found in map_unordered(discover_chunk, chunks):
        pieces.setdefault(index, []).extend(found)
        skipped.setdefault(index, []).extend(found.skipped)
        volumes.setdefault(index, []).extend(found.volumes)
    out = {}
    for index in range(len(paths)):
        result = SeriesList(merge_series(pieces.get(index, [])))
        result.skipped = tuple(sorted(skipped.get(index, []), key=lambda f: f.source))
        result.volumes = tuple(sorted(volumes.get(index, [])))
        out[index] = result
    return out


def plan_inputs(
    inputs: Sequence[str | Path],
    *,
    rules: SelectionRules = DEFAULT_RULES,
    all_series: bool = False,
    pseudonymizer: Pseudonymizer | None = None,
    map_unordered: MapUnordered | None = None,
) -> ScorePlan:
    """Discover and select: what to score, and a row for everything else.

    Args:
        inputs: folders, zip archives, DICOM or NIfTI files, or manifest CSVs (``.csv``, a ``path`` column).
        rules: selection rules and QC thresholds.
        all_series: score every acceptable series of a study, not only the selected one.
        pseudonymizer: replaces identifiers in every row (None: keep them).
        map_unordered: runs :func:`discover_chunk` over chunks of files in parallel (e.g. on the
            worker pool, :meth:`medai.batch.pool.WorkPool.map_unordered`); None walks each input here.

    Returns:
        The :class:`ScorePlan`. Series found in several inputs are scored once.

    Example:
        >>> plan = plan_inputs([])
        >>> plan.jobs, plan.rows
        ([], [])
    """
    plan = ScorePlan()
    paths: list[Path] = []
    for item in inputs:
        path = Path(item).absolute()
        if path.is_file() and path.suffix.lower() == ".csv":
            paths.extend(read_score_manifest(path))
        else:
            paths.append(path)
    discovered = _discover(paths, map_unordered) if map_unordered is not None else {}
    found: dict[str, SeriesInfo] = {}
    niftis: set[Path] = set()

    def add_nifti(nifti: Path) -> None:
        if nifti not in niftis:
            niftis.add(nifti)
            fields = {"source": str(nifti), "pseudonymized": pseudonymizer is not None}
            plan.jobs.append(ScoreJob(series=None, nifti_path=str(nifti), fields=fields))

    for index, path in enumerate(paths):
        if is_nifti_name(path) and path.is_file():
            add_nifti(path)
            continue
        if not path.exists():
            fields = {"source": str(path), "pseudonymized": pseudonymizer is not None}
            plan.rows.append(
                make_row(fields, RowStatus.ERROR, QCReason.UNREADABLE, f"{path} must exist, but it does not")
            )
            continue
        series = discovered[index] if map_unordered is not None else find_series(path)
        # NIfTI volumes under a folder are scored like NIfTI inputs (masks written beside a phantom are not)
        for nifti in series.volumes:
            add_nifti(nifti)
        plan.skipped_files.extend(series.skipped)
        if not series and not series.volumes:
            why = f"; e.g. {series.skipped[0].source}: {series.skipped[0].reason}" if series.skipped else ""
            fields = {"source": str(path), "pseudonymized": pseudonymizer is not None}
            message = f"{path} must hold a DICOM series, not {len(series.skipped)} unusable files{why}"
            plan.rows.append(make_row(fields, RowStatus.ERROR, ScoreReason.NO_SERIES, message))
        for info in series:
            if info.series_uid in found:
                log.warning("series %s found again under %s; scoring it once", info.series_uid, path)
                continue
            found[info.series_uid] = info
    for report in select_per_study(list(found.values()), rules=rules).values():
        chosen = list(report.candidates) if all_series else report.candidates[:1]
        for info in chosen:
            plan.jobs.append(ScoreJob(series=info, nifti_path=None, fields=_series_fields(info, pseudonymizer)))
        for info in report.candidates[len(chosen) :]:
            selected = report.candidates[0]
            message = f"another series of the study was selected: {selected.label} ({selected.series_uid})"
            plan.rows.append(
                make_row(_series_fields(info, pseudonymizer), RowStatus.SKIPPED, ScoreReason.NOT_SELECTED, message)
            )
        status = RowStatus.SKIPPED if chosen else RowStatus.ERROR
        for rejection in report.rejected:
            fields = _series_fields(rejection.series, pseudonymizer)
            plan.rows.append(make_row(fields, status, rejection.reason.value, rejection.message))
    log.info(
        "plan: %d series to score, %d rows decided, %d files skipped",
        len(plan.jobs),
        len(plan.rows),
        len(plan.skipped_files),
    )
    return plan
