"""DICOM ingestion: find series, select the one to score, load it as a :class:`~medai.volume.Volume`.

Three stages, in the vocabulary of monai-deploy (loader, series selector,
series-to-volume):

* :func:`find_series` (:mod:`medai.ingest.discovery`) walks a folder, file or zip
  archive, reads headers only and groups instances into :class:`SeriesInfo`;
  skipped files are listed on the result.
* :func:`select_series` (:mod:`medai.ingest.qc`) picks the series to score and says
  why every other one was rejected.
* :func:`load_series` runs the QC gate (:func:`medai.ingest.qc.check_frames`) on the
  headers, refuses absurd dimensions *before* allocating, then decodes the
  pixels into a preallocated int16 volume (:mod:`medai.ingest.pixels`).

Slice order always comes from ImagePositionPatient projected on the slice
normal, never from file names or InstanceNumber.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medai.errors import InvalidSeriesError, MedaiError, NoSeriesError, QCReason
from medai.ingest import pixels
from medai.ingest.discovery import (
    HEADER_KEYWORDS,
    as_number,
    as_text,
    frames_from_dataset,
    group_series,
    read_header,
    scan_files,
)
from medai.ingest.nifti import read_nifti
from medai.ingest.qc import DEFAULT_RULES, QCReport, SelectionReport, SelectionRules, check_frames, select_per_study
from medai.ingest.sources import DicomSource, FrameHeader, SeriesInfo
from medai.volume import Volume

__all__ = ["HEADER_KEYWORDS", "check_series", "load_series", "load_study"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- loading


def _load_headers(
    source: SeriesInfo | str | Path | Sequence[str | Path | DicomSource],
) -> list[tuple[DicomSource, Dataset]]:
    """Read every instance's header (pixel data deferred) for :func:`load_series`."""
    if isinstance(source, SeriesInfo):
        return [(s, read_header(s, stop_before_pixels=False)) for s in source.sources]
    if isinstance(source, (str, Path)):
        found, _, _ = scan_files(Path(source), stop_before_pixels=False)
        if not found:
            raise NoSeriesError(f"no DICOM series found under {str(source)!r}")
        uids = sorted({str(ds.SeriesInstanceUID) for _, ds in found})
        if len(uids) > 1:
            raise InvalidSeriesError(
                QCReason.MIXED_SERIES,
                f"{str(source)!r} must hold exactly one series, not {len(uids)}: {', '.join(uids)}; "
                "use find_series and select_series to choose one",
            )
        return found
    if isinstance(source, Sequence):
        if len(source) == 0:
            raise NoSeriesError("the list of DICOM files is empty")
        items = [s if isinstance(s, DicomSource) else DicomSource(Path(s)) for s in source]
        return [(s, read_header(s, stop_before_pixels=False)) for s in items]
    raise TypeError(f"source must be a SeriesInfo, a folder/zip path or a list of files, not {type(source).__name__}")


def _header_values(ds: Dataset) -> dict[str, Any]:
    header: dict[str, Any] = {}
    for keyword in HEADER_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if keyword in {"SliceThickness", "KVP"}:
            value = as_number(value)
        elif keyword == "SeriesNumber":
            value = as_number(value, int)
        else:
            value = as_text(value)
        if value is not None:
            header[keyword] = value
    return header


def _gate(
    source: SeriesInfo | str | Path | Sequence[str | Path | DicomSource], rules: SelectionRules
) -> tuple[list[tuple[DicomSource, Dataset]], list[FrameHeader], QCReport]:
    return _gate_datasets(_load_headers(source), rules)


def _gate_datasets(
    datasets: list[tuple[DicomSource, Dataset]], rules: SelectionRules
) -> tuple[list[tuple[DicomSource, Dataset]], list[FrameHeader], QCReport]:
    frames = [f for src, ds in datasets for f in frames_from_dataset(ds, src)]
    first = datasets[0][1]
    report = check_frames(frames, rules=rules, description=str(first.get("SeriesDescription", "")))
    return datasets, frames, report


def check_series(
    source: SeriesInfo | str | Path | Sequence[str | Path | DicomSource],
    *,
    rules: SelectionRules = DEFAULT_RULES,
) -> QCReport:
    """Run the header-level QC gate on a series without decoding pixels.

    Args:
        source: as for :func:`load_series`.
        rules: thresholds and tolerances (min slices, coverage, spacing, tilt).

    Returns:
        The :class:`~medai.ingest.qc.QCReport` of the checks that passed.

    Raises:
        InvalidSeriesError: the first failed check, with its :class:`QCReason`.
        NoSeriesError: nothing to check.

    Example:
        >>> check_series(found[0]).n_slices  # doctest: +SKIP
        120
    """
    return _gate(source, rules)[2]


def load_series(
    source: SeriesInfo | str | Path | Sequence[str | Path | DicomSource],
    *,
    rules: SelectionRules = DEFAULT_RULES,
    workers: int | None = None,
) -> Volume:
    """Load one CT series as a :class:`Volume` in HU, after the QC gate.

    Slices are ordered by ImagePositionPatient projected on the slice normal
    (``cross(row, column)``), so the volume's ``z`` axis points along the normal.
    RescaleSlope/Intercept are applied per slice; the result is int16 unless
    a slope or intercept is non-integer (then float32). Voxels equal to
    PixelPaddingValue (or inside the PixelPaddingRangeLimit range) are air
    outside the reconstruction field of view and become -1024 HU; nothing
    else is altered. MONOCHROME1 does not change HU: per PS3.3 C.7.6.3.1.2
    photometric interpretation applies after the modality LUT, to display only.

    Args:
        source: a :class:`SeriesInfo` from :func:`find_series`; a folder or zip
            archive holding exactly one series; or a list of file paths.
        rules: QC thresholds (``min_slices``, ``min_coverage_mm``, tolerances, modalities).
        workers: decoding threads (default: up to 4, one per core).

    Returns:
        The volume, with ``header`` and ``sop_instance_uids`` in ``z`` order.

    Raises:
        InvalidSeriesError: a QC check failed; ``exc.reason`` names it.
        NoSeriesError: no DICOM instance at ``source``.

    Example:
        >>> volume = load_series("study/series_3")  # doctest: +SKIP
        >>> volume.hu.dtype, volume.spacing_mm  # doctest: +SKIP
        (dtype('int16'), (1.0, 0.7, 0.7))
    """
    return _decode(*_gate(source, rules), workers=workers)


def _decode(
    datasets: list[tuple[DicomSource, Dataset]], frames: list[FrameHeader], report: QCReport, *, workers: int | None
) -> Volume:
    by_source = {src: ds for src, ds in datasets}
    ordered = [frames[i] for i in report.slice_order]
    plan = [
        pixels.FrameTask(by_source[f.source], f.source, f.frame, f.rescale_slope, f.rescale_intercept) for f in ordered
    ]
    first = by_source[ordered[0].source]
    hu = pixels.decode_frames(plan, series_uid=report.series_uid, workers=workers)
    direction = np.asarray(report.direction, dtype=np.float64)
    sop_uids = tuple(f.sop_instance_uid for f in ordered) if all(f.number_of_frames == 1 for f in ordered) else ()
    log.info("loaded series %s: %s %s", report.series_uid, hu.shape, hu.dtype)
    return Volume(
        hu,
        spacing_mm=report.spacing_mm,
        origin_mm=report.origin_mm,
        direction=direction,
        series_uid=report.series_uid,
        study_uid=ordered[0].study_uid,
        header=_header_values(first),
        sop_instance_uids=sop_uids,
    )


def load_study(
    path: str | Path,
    *,
    rules: SelectionRules = DEFAULT_RULES,
    workers: int | None = None,
) -> tuple[SelectionReport, Volume]:
    """Find, select and load the series to score of the one study under ``path``, reading each file once.

    ``path`` may also be a NIfTI volume (or a folder holding one): it is read as ``medai score`` reads it,
    and the selection report is empty.

    The same as :func:`find_series` + :func:`select_series` + :func:`load_series`,
    but every file is parsed a single time (``find_series`` reads headers only, so
    for one study that path parses each file twice). Use it for one study; for
    large trees of many studies, :func:`find_series` keeps memory low.

    Returns:
        The selection (with every rejected series and its reason) and the loaded volume.

    Raises:
        NoSeriesError: no DICOM series under ``path``.
        InvalidSeriesError: every series was rejected (the first rejection's reason), or the QC gate failed.
        MedaiError: ``path`` holds more than one study.

    Example:
        >>> report, volume = load_study("exports/study_1.zip")  # doctest: +SKIP
        >>> report.selected.series_uid == volume.series_uid  # doctest: +SKIP
        True
    """
    root = Path(path)
    if not root.exists():
        raise NoSeriesError(f"path must be an existing folder, file or zip archive, not {str(path)!r}")
    found, _, volumes = scan_files(root, stop_before_pixels=False)
    if not found and not volumes:
        raise NoSeriesError(f"no DICOM series and no NIfTI volume under {str(path)!r}")
    studies = select_per_study(group_series(found), rules=rules)
    if len(studies) + len(volumes) > 1:
        count = f"{len(studies)} DICOM studies and {len(volumes)} NIfTI volumes"
        raise MedaiError(f"{str(path)!r} must hold one study, not {count}; score several with medai score")
    if volumes:
        return SelectionReport(study_uid="", selected=None, candidates=(), rejected=()), read_nifti(volumes[0])
    (report,) = studies.values()
    if report.selected is None:
        first = report.rejected[0]
        message = f"no scorable series under {str(path)!r}: {first.message}"
        raise InvalidSeriesError(first.reason, message, series_uid=first.series.series_uid)
    by_source = dict(found)
    datasets = [(src, by_source[src]) for src in report.selected.sources]
    return report, _decode(*_gate_datasets(datasets, rules), workers=workers)
