"""The nouns of ingestion: where an instance lives, a frame's header, a series found on disk.

:class:`DicomSource` (a file or a zip member), :class:`FrameHeader` (one 2D
frame's geometry and rescale), :class:`SeriesInfo` (a series described from its
headers) and the files discovery skipped. Discovery (:mod:`medai.ingest.discovery`)
makes them; the QC gate (:mod:`medai.ingest.qc`), pixel decoding
(:mod:`medai.ingest.pixels`) and loading (:mod:`medai.ingest.load`) read them.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = ["BoundedFile", "DicomSource", "FrameHeader", "SeriesInfo", "SeriesList", "SkippedFile"]


class BoundedFile(io.IOBase):
    """A buffered binary file whose large ``read(n)`` never asks for more than the file still holds.

    A DICOM element states its own length; a damaged or hostile file of a few bytes can claim gigabytes, and
    ``read(n)`` allocates ``n`` bytes before it finds the file short (the fuzzers found a 1.2 KB file that made
    the reader allocate 1.5 GB). pydicom reads through this, and re-opens it by its type and name for deferred
    values; so it wraps a buffered file rather than being one (pydicom re-opens an ``io.BufferedReader`` with
    the builtin ``open``, unbounded). Reads up to :data:`UNCHECKED_READ` bytes skip the check (they cannot
    allocate much); buffering and that shortcut halve the time to parse a CT header (pydicom reads ~125 small
    elements per instance).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "f"
        >>> _ = path.write_bytes(b"abc")
        >>> with BoundedFile(path) as handle:
        ...     handle.read(2**40)
        b'abc'
    """

    def __init__(self, name: str | Path, mode: str = "rb") -> None:
        if mode not in ("r", "rb"):
            raise ValueError(f"mode must be 'rb', not {mode!r}")
        self.name = os.fspath(name)  # a str name: pydicom re-opens deferred values by it
        self._file = open(self.name, "rb", buffering=16384)  # noqa: SIM115 (closed by close())
        self._size = os.fstat(self._file.fileno()).st_size
        self.seek = self._file.seek  # type: ignore[method-assign]
        self.tell = self._file.tell  # type: ignore[method-assign]

    def read(self, size: int | None = -1) -> bytes:
        if size is None:
            size = -1
        elif size > UNCHECKED_READ:
            size = max(0, min(size, self._size - self._file.tell()))
        return self._file.read(size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


#: Reads of at most this many bytes skip :class:`BoundedFile`'s size check.
UNCHECKED_READ = 65536


@dataclass(frozen=True, order=True)
class DicomSource:
    """Where one DICOM instance lives: a file, or a member of a zip archive.

    Attributes:
        path: the file, or the zip archive holding the instance.
        member: name of the member inside the archive; ``None`` for a plain file.

    Example:
        >>> str(DicomSource(Path("study.zip"), "CT/IM0001.dcm"))
        'study.zip!CT/IM0001.dcm'
    """

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}!{self.member}" if self.member is not None else str(self.path)

    def read_bytes(self) -> bytes:
        """The whole encoded instance."""
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(self.member)

    def open(self) -> BinaryIO:
        """A seekable binary file object (a zip member is read into memory); reads are bounded by the file's size
        (:class:`BoundedFile`)."""
        if self.member is None:
            return BoundedFile(self.path)  # type: ignore[return-value]
        return io.BytesIO(self.read_bytes())


@dataclass(frozen=True)
class FrameHeader:
    """The geometry and pixel-value mapping of one 2D frame (a slice).

    A classic CT instance has one frame; an Enhanced CT instance has
    ``NumberOfFrames`` of them, described by its functional groups.
    Attributes that are absent or malformed are ``None``; the QC gate
    decides whether that matters.
    """

    source: DicomSource
    frame: int
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    rows: int | None
    columns: int | None
    number_of_frames: int
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    rescale_slope: float
    rescale_intercept: float
    instance_number: int | None = None
    gantry_tilt_deg: float | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A file that :func:`find_series` did not use, and why."""

    source: DicomSource
    reason: str


@dataclass(frozen=True)
class SeriesInfo:
    """A DICOM series found on disk, described from its headers only.

    Attributes:
        series_uid, study_uid: SeriesInstanceUID and StudyInstanceUID.
        modality, sop_class_uid: e.g. ``"CT"``, ``"1.2.840.10008.5.1.4.1.1.2"``.
        image_type: ImageType values, upper case (e.g. ``("ORIGINAL", "PRIMARY", "AXIAL")``).
        series_description, series_number, convolution_kernel, manufacturer: as in the header.
        n_instances: number of files (SOP instances) in the series.
        n_slices: number of 2D frames (equals ``n_instances`` except for multi-frame objects).
        sources: where each instance lives, sorted by path (not slice order).
        slice_thickness_mm, pixel_spacing_mm, orientation, rows, columns: from the
            first instance (``None`` when absent).
        coverage_mm: extent of slice positions along the slice normal (0 if unknown).
        frames: per-frame headers, used by the QC gate and :func:`load_series`.
    """

    series_uid: str
    study_uid: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    series_description: str
    series_number: int | None
    n_instances: int
    n_slices: int
    sources: tuple[DicomSource, ...]
    slice_thickness_mm: float | None
    convolution_kernel: str
    pixel_spacing_mm: tuple[float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    rows: int | None
    columns: int | None
    manufacturer: str
    study_description: str
    patient_id: str
    coverage_mm: float
    frames: tuple[FrameHeader, ...] = field(repr=False)

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files (or zip archives) holding the instances."""
        return tuple(s.path for s in self.sources)

    @property
    def location(self) -> Path:
        """Where the series lives: its zip archive when every instance is in the same one, else the folder
        holding all its files (their common parent)."""
        zips = {s.path for s in self.sources if s.member is not None}
        if len(zips) == 1 and all(s.member is not None for s in self.sources):
            return next(iter(zips))
        return Path(os.path.commonpath(sorted({str(s.path.parent) for s in self.sources})))

    @property
    def label(self) -> str:
        """Short human label: number and description."""
        number = "" if self.series_number is None else f"#{self.series_number} "
        return f"{number}{self.series_description or '(no description)'}"


class SeriesList(list[SeriesInfo]):
    """The list returned by :func:`find_series`, plus the files it skipped (``.skipped``) and the NIfTI volumes
    it found (``.volumes``)."""

    skipped: tuple[SkippedFile, ...] = ()
    volumes: tuple[Path, ...] = ()
