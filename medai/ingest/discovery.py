"""Find DICOM series on disk and describe them from their headers.

:func:`find_series` walks a folder, a single file or a zip archive (also zip
archives found inside folders), reads only headers (``stop_before_pixels``)
and groups instances by SeriesInstanceUID into :class:`SeriesInfo` records,
with one :class:`FrameHeader` per 2D frame (classic or Enhanced CT functional
groups). Files that are not DICOM, DICOMDIR, empty or unreadable files are
skipped and listed on the result (``.skipped``), never fatal.

Loading and QC live in :mod:`medai.ingest.load` and :mod:`medai.ingest.qc`.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medai.errors import InvalidSeriesError, NoSeriesError, QCReason
from medai.ingest.header import value
from medai.ingest.nifti import is_mask_beside_case, is_nifti_name
from medai.ingest.outputs import is_spool_folder, medai_output_kind
from medai.ingest.sources import BoundedFile, DicomSource, FrameHeader, SeriesInfo, SeriesList, SkippedFile

__all__ = [
    "HEADER_KEYWORDS",
    "KEYWORDS_READ",
    "MAX_FRAMES",
    "find_series",
    "frames_from_dataset",
    "group_series",
    "list_files",
    "read_header",
    "scan_files",
]

log = logging.getLogger(__name__)

_DICM_OFFSET = 128


# ---------------------------------------------------------------- discovery


def list_files(root: Path, skipped: list[SkippedFile]) -> list[Path]:
    """Every file under ``root`` in a stable order, following symbolic links to folders and files.

    A folder reached twice (a link loop, or two links to one study) is walked once, a file reached through
    two paths is listed once; the second path is recorded in ``skipped``. medai's own outputs are left out:
    a PACS spool folder is not entered, and result files, audit logs, key images and saliency maps
    (:func:`medai.ingest.outputs.medai_output_kind`) are dropped by :func:`scan_files`.

    Raises:
        NoSeriesError: ``root`` does not exist.
    """
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise NoSeriesError(f"path must be an existing folder, file or zip archive, not {str(root)!r}")
    seen_dirs: dict[tuple[int, int], Path] = {}
    seen_files: dict[tuple[int, int], Path] = {}
    files: list[Path] = []

    def identity(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError as exc:
            skipped.append(SkippedFile(DicomSource(path), f"unreadable: {exc.strerror or exc}"))
            return None
        return st.st_dev, st.st_ino

    def enter(folder: Path) -> bool:
        key = identity(folder)
        if key is None:
            return False
        if key in seen_dirs:
            reason = f"folder already walked as {seen_dirs[key]} (a link loop or a second link to it)"
            skipped.append(SkippedFile(DicomSource(folder), reason))
            log.info("not walking %s again: %s", folder, reason)
            return False
        seen_dirs[key] = folder
        if is_spool_folder(folder) and folder != root:
            log.info("not walking %s: the spool of medai pacs serve (medai's own output)", folder)
            return False
        return True

    if not enter(root):
        return files
    for folder, dirs, names in os.walk(root, followlinks=True):
        base = Path(folder)
        dirs.sort()
        dirs[:] = [d for d in dirs if enter(base / d)]
        for name in sorted(names):
            path = base / name
            key = identity(path)
            if key is None:
                continue
            if key in seen_files:
                skipped.append(SkippedFile(DicomSource(path), f"the same file as {seen_files[key]}"))
                continue
            seen_files[key] = path
            files.append(path)
    return files


def _iter_candidates(
    root: Path, skipped: list[SkippedFile], volumes: list[Path]
) -> Iterator[tuple[DicomSource, bytes]]:
    """Yield (source, first bytes) for every non-empty file under ``root`` that may be DICOM, opening zip
    archives; NIfTI volumes go to ``volumes`` and medai's own outputs are left out."""
    for path in list_files(root, skipped):
        source = DicomSource(path)
        if path.name.upper() == "DICOMDIR":
            skipped.append(SkippedFile(source, "DICOMDIR (media index, not an image)"))
            continue
        try:
            if path.stat().st_size == 0:
                skipped.append(SkippedFile(source, "empty file"))
                continue
            with open(path, "rb") as fp:
                head = fp.read(_DICM_OFFSET + 4)
        except OSError as exc:
            skipped.append(SkippedFile(source, f"unreadable: {exc.strerror or exc}"))
            continue
        if head[_DICM_OFFSET : _DICM_OFFSET + 4] != b"DICM":
            kind = medai_output_kind(path)
            if kind is not None:
                log.debug("left out %s: medai's own output (%s)", path, kind)
                continue
            if is_nifti_name(path) and not is_mask_beside_case(path):
                volumes.append(path)
                continue
        if head[:4] == b"PK\x03\x04" and zipfile.is_zipfile(path):
            yield from _iter_zip(path, skipped)
        else:
            yield source, head


def _iter_zip(path: Path, skipped: list[SkippedFile]) -> Iterator[tuple[DicomSource, bytes]]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            for info in members:
                source = DicomSource(path, info.filename)
                if Path(info.filename).name.upper() == "DICOMDIR":
                    skipped.append(SkippedFile(source, "DICOMDIR (media index, not an image)"))
                elif info.file_size == 0:
                    skipped.append(SkippedFile(source, "empty file"))
                else:
                    with archive.open(info) as fp:
                        head = fp.read(_DICM_OFFSET + 4)
                    if head[:4] == b"PK\x03\x04":
                        skipped.append(SkippedFile(source, "zip archive inside a zip archive (not opened)"))
                    else:
                        yield source, head
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
        skipped.append(SkippedFile(DicomSource(path), f"unreadable zip archive: {exc}"))


#: Header attributes a loaded volume keeps in :attr:`Volume.header` (only those present).
HEADER_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "SliceThickness",
    "KVP",
    "PatientID",
    "PatientName",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "FrameOfReferenceUID",
    "BodyPartExamined",
    "InstitutionName",
    "StationName",
)
#: Every attribute ingestion reads from an instance's top level (geometry and functional groups come through
#: :func:`frames_from_dataset`); :func:`read_header` converts each once, so a value that cannot be parsed makes
#: the file unreadable there instead of raising anywhere later.
KEYWORDS_READ = (
    *HEADER_KEYWORDS,
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "ImageType",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
)
#: More frames than this in one instance is not a CT image (checked before any per-frame work).
MAX_FRAMES = 65536


def read_header(source: DicomSource, *, stop_before_pixels: bool = True) -> Dataset:
    """Parse one instance's header (pixel data not read, or deferred) and every value ingestion reads from it.

    Raises:
        InvalidSeriesError: ``not_dicom``, ``unreadable`` (a value that cannot be parsed is named), or
            ``implausible_dimensions`` (more than :data:`MAX_FRAMES` frames).
    """
    try:
        if source.member is None:
            with BoundedFile(source.path) as handle:  # a value's stated length never allocates past the file
                if stop_before_pixels:
                    ds = pydicom.dcmread(handle, stop_before_pixels=True)
                else:
                    ds = pydicom.dcmread(handle, defer_size=4096)
        else:
            ds = pydicom.dcmread(io.BytesIO(source.read_bytes()), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise InvalidSeriesError(QCReason.NOT_DICOM, f"{source} is not a DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidSeriesError(QCReason.UNREADABLE, f"{source} cannot be parsed: {exc!r}") from exc
    keyword = "file meta"
    try:
        _ = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        for keyword in KEYWORDS_READ:
            value(ds, keyword)
        keyword = "geometry or functional groups"
        frames_from_dataset(ds, source)
    except InvalidSeriesError:
        raise
    except Exception as exc:  # a value pydicom cannot convert (wrong length, bad characters, broken sequence)
        message = f"{source}: {keyword} cannot be parsed ({type(exc).__name__}: {str(exc)[:200]})"
        raise InvalidSeriesError(QCReason.UNREADABLE, message) from exc
    return ds


def as_number(value: Any, kind: type = float) -> Any:
    try:
        return None if value is None or value == "" else kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _or(number: float | None, default: float) -> float:
    return default if number is None else number


def _numbers(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _group(item: Dataset | None, sequence: str) -> Dataset | None:
    try:
        seq = item.get(sequence) if item is not None else None
        return seq[0] if seq else None
    except (AttributeError, IndexError, TypeError):
        return None


# Where a parsed header keeps its frames: read_header, grouping and loading all need them, and ingestion never
# changes a header it parsed.
_FRAMES_ATTR = "_medai_frames"


def frames_from_dataset(ds: Dataset, source: DicomSource) -> list[FrameHeader]:
    """One :class:`FrameHeader` per frame, from classic or Enhanced (functional groups) headers.

    Computed once per parsed dataset and source (a dataset changed afterwards keeps its first frames).
    """
    known = ds.__dict__.get(_FRAMES_ATTR)
    if known is not None and known[0] is source:
        return list(known[1])
    frames = _frames_of(ds, source)
    object.__setattr__(ds, _FRAMES_ATTR, (source, tuple(frames)))
    return frames


def _frames_of(ds: Dataset, source: DicomSource) -> list[FrameHeader]:
    n_frames = as_number(value(ds, "NumberOfFrames"), int) or 1
    if not 1 <= n_frames <= MAX_FRAMES:
        raise InvalidSeriesError(
            QCReason.IMPLAUSIBLE_DIMENSIONS,
            f"{source}: NumberOfFrames must be 1..{MAX_FRAMES}, not {n_frames}",
            series_uid=str(value(ds, "SeriesInstanceUID", "")),
        )
    common: dict[str, Any] = {
        "source": source,
        "sop_instance_uid": str(value(ds, "SOPInstanceUID", "")),
        "series_uid": str(value(ds, "SeriesInstanceUID", "")),
        "study_uid": str(value(ds, "StudyInstanceUID", "")),
        "frame_of_reference_uid": str(value(ds, "FrameOfReferenceUID", "")),
        "modality": str(value(ds, "Modality", "")).upper(),
        "rows": as_number(value(ds, "Rows"), int),
        "columns": as_number(value(ds, "Columns"), int),
        "number_of_frames": n_frames,
        "instance_number": as_number(value(ds, "InstanceNumber"), int),
    }
    per_frame = value(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        first = FrameHeader(
            frame=0,
            position_mm=_numbers(value(ds, "ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_numbers(value(ds, "ImageOrientationPatient"), 6),  # type: ignore[arg-type]
            pixel_spacing_mm=_numbers(value(ds, "PixelSpacing"), 2),  # type: ignore[arg-type]
            slice_thickness_mm=as_number(value(ds, "SliceThickness")),
            rescale_slope=_or(as_number(value(ds, "RescaleSlope")), 1.0),
            rescale_intercept=_or(as_number(value(ds, "RescaleIntercept")), 0.0),
            gantry_tilt_deg=as_number(value(ds, "GantryDetectorTilt")),
            **common,
        )
        # a classic object with NumberOfFrames > 1 has no per-frame positions: its
        # extra frames carry none and the QC gate reports missing_attribute
        extra = [
            FrameHeader(
                frame=i,
                position_mm=None,
                orientation=first.orientation,
                pixel_spacing_mm=first.pixel_spacing_mm,
                slice_thickness_mm=first.slice_thickness_mm,
                rescale_slope=first.rescale_slope,
                rescale_intercept=first.rescale_intercept,
                **common,
            )
            for i in range(1, n_frames)
        ]
        return [first, *extra]
    shared = _group(ds, "SharedFunctionalGroupsSequence")
    frames = []
    for i in range(n_frames):
        item = per_frame[i] if i < len(per_frame) else None

        def attr(sequence: str, keyword: str, item: Dataset | None = item) -> Any:
            for group in (item, shared):
                sub = _group(group, sequence)
                if sub is not None and keyword in sub:
                    return value(sub, keyword)
            return None

        frames.append(
            FrameHeader(
                frame=i,
                position_mm=_numbers(attr("PlanePositionSequence", "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_numbers(attr("PlaneOrientationSequence", "ImageOrientationPatient"), 6),  # type: ignore[arg-type]
                pixel_spacing_mm=_numbers(attr("PixelMeasuresSequence", "PixelSpacing"), 2),  # type: ignore[arg-type]
                slice_thickness_mm=as_number(attr("PixelMeasuresSequence", "SliceThickness")),
                rescale_slope=_or(as_number(attr("PixelValueTransformationSequence", "RescaleSlope")), 1.0),
                rescale_intercept=_or(as_number(attr("PixelValueTransformationSequence", "RescaleIntercept")), 0.0),
                **common,
            )
        )
    return frames


def _coverage_mm(frames: Sequence[FrameHeader]) -> float:
    orientation = frames[0].orientation
    positions = [f.position_mm for f in frames if f.position_mm is not None]
    if orientation is None or len(positions) < 2:
        return 0.0
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.asarray(positions) @ normal
    return float(along.max() - along.min())


def _series_info(datasets: list[tuple[DicomSource, Dataset]], frames: list[FrameHeader]) -> SeriesInfo:
    first = datasets[0][1]
    image_type = first.get("ImageType") or ()
    image_type = (image_type,) if isinstance(image_type, str) else image_type
    f0 = frames[0]
    return SeriesInfo(
        series_uid=f0.series_uid,
        study_uid=f0.study_uid,
        modality=f0.modality,
        sop_class_uid=str(first.get("SOPClassUID", "")),
        image_type=tuple(str(v).upper() for v in image_type),
        series_description=str(first.get("SeriesDescription", "")),
        series_number=as_number(first.get("SeriesNumber"), int),
        n_instances=len(datasets),
        n_slices=len(frames),
        sources=tuple(s for s, _ in datasets),
        slice_thickness_mm=f0.slice_thickness_mm,
        convolution_kernel=as_text(first.get("ConvolutionKernel")),
        pixel_spacing_mm=f0.pixel_spacing_mm,
        orientation=f0.orientation,
        rows=f0.rows,
        columns=f0.columns,
        manufacturer=str(first.get("Manufacturer", "")),
        study_description=str(first.get("StudyDescription", "")),
        patient_id=str(first.get("PatientID", "")),
        coverage_mm=_coverage_mm(frames),
        frames=tuple(frames),
    )


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return "\\".join(str(v) for v in value)
    except TypeError:
        return str(value)


def scan_files(
    root: Path, *, stop_before_pixels: bool
) -> tuple[list[tuple[DicomSource, Dataset]], list[SkippedFile], list[Path]]:
    """Parse every DICOM instance under ``root``: ``(instances, files skipped, NIfTI volumes found)``."""
    skipped: list[SkippedFile] = []
    volumes: list[Path] = []
    found: list[tuple[DicomSource, Dataset]] = []
    for source, head in _iter_candidates(root, skipped, volumes):
        if head[_DICM_OFFSET : _DICM_OFFSET + 4] != b"DICM":
            skipped.append(SkippedFile(source, "not a DICOM file (no DICM prefix)"))
            continue
        try:
            ds = read_header(source, stop_before_pixels=stop_before_pixels)
        except InvalidSeriesError as exc:
            skipped.append(SkippedFile(source, str(exc)))
            continue
        if "SeriesInstanceUID" not in ds:
            skipped.append(SkippedFile(source, "DICOM file without SeriesInstanceUID (not an image instance)"))
            continue
        found.append((source, ds))
    for item in skipped:
        log.info("skipped %s: %s", item.source, item.reason)
    return found, skipped, volumes


def group_series(found: list[tuple[DicomSource, Dataset]]) -> list[SeriesInfo]:
    """Group parsed instances (from :func:`scan_files`) into series, sorted by study, number, UID."""
    by_uid: dict[str, list[tuple[DicomSource, Dataset]]] = {}
    for source, ds in found:
        by_uid.setdefault(str(ds.SeriesInstanceUID), []).append((source, ds))
    series = []
    for items in by_uid.values():
        items.sort(key=lambda x: x[0])
        frames = [f for source, ds in items for f in frames_from_dataset(ds, source)]
        series.append(_series_info(items, frames))
    series.sort(key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else 1 << 30, s.series_uid))
    return series


def find_series(root: str | Path) -> SeriesList:
    """Find every DICOM series under a folder, a file or a zip archive.

    This is the one input resolver of every command (``medai score``, ``predict``, ``inspect``, the viewer):
    it reads headers only, follows symbolic links (a folder reached twice is walked once, so a link loop
    ends), opens zip archives found while walking (one level), lists NIfTI volumes on ``.volumes`` (not the
    ``<case>_lung``/``<case>_lesion`` masks written beside a phantom) and leaves medai's own outputs out
    (results files, audit logs, key images, saliency maps, a PACS spool: :mod:`medai.ingest.outputs`).
    Non-DICOM files, DICOMDIR, empty and unreadable files are skipped, logged and listed on ``.skipped``.

    Args:
        root: folder (walked recursively), single DICOM or NIfTI file, or zip archive.

    Returns:
        A :class:`SeriesList` (a list of :class:`SeriesInfo` sorted by study,
        series number, UID) with ``.skipped`` listing the files not used and
        ``.volumes`` the NIfTI volumes found.

    Raises:
        NoSeriesError: ``root`` does not exist.

    Example:
        >>> import tempfile
        >>> list(find_series(tempfile.mkdtemp()))
        []
    """
    found, skipped, volumes = scan_files(Path(root), stop_before_pixels=True)
    result = SeriesList(group_series(found))
    result.skipped = tuple(skipped)
    result.volumes = tuple(volumes)
    log.info("found %d series, %d NIfTI volumes (%d files skipped)", len(result), len(volumes), len(skipped))
    return result
