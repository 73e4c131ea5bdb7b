"""Typed errors raised by medai.

Every error says what was expected, what was seen and, where possible, what
the user should do. Callers at the edges (CLI, viewer, PACS listener, batch)
catch :class:`MedaiError` and show its one-line message; anything else that
escapes is a bug in medai.
"""

from __future__ import annotations

import enum

__all__ = [
    "ConfigError",
    "DeidentificationError",
    "DicomWebError",
    "InvalidSeriesError",
    "ManifestError",
    "MedaiError",
    "ModelError",
    "NoSeriesError",
    "QCReason",
    "UnsafeUploadError",
]


class QCReason(enum.StrEnum):
    """Machine-readable reasons a series is refused by the QC gate."""

    NOT_DICOM = "not_dicom"
    NOT_CT = "not_ct"
    MIXED_SERIES = "mixed_series"
    INCONSISTENT_ORIENTATION = "inconsistent_orientation"
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"
    NOT_AXIAL = "not_axial"
    GANTRY_TILT = "gantry_tilt"
    SLICE_GAP = "slice_gap"
    DUPLICATE_POSITION = "duplicate_position"
    NONUNIFORM_SPACING = "nonuniform_spacing"
    TOO_FEW_SLICES = "too_few_slices"
    INSUFFICIENT_COVERAGE = "insufficient_coverage"
    MISSING_ATTRIBUTE = "missing_attribute"
    TRUNCATED_PIXEL_DATA = "truncated_pixel_data"
    IMPLAUSIBLE_DIMENSIONS = "implausible_dimensions"
    NOT_HOUNSFIELD = "not_hounsfield"  # no air: a label map, unrescaled stored values, a blank volume
    UNDECODABLE_TRANSFER_SYNTAX = "undecodable_transfer_syntax"
    LOCALIZER = "localizer"
    DERIVED = "derived"
    UNREADABLE = "unreadable"


class MedaiError(Exception):
    """Base class of every error medai raises on purpose.

    Catch this at a program's edge to report a one-line reason to a person.
    """


class InvalidSeriesError(MedaiError):
    """A DICOM series failed the QC gate and cannot be scored.

    Raised by :func:`medai.load_series` (and the selection step) when a series
    is not a usable chest CT volume: wrong modality, gaps, tilted gantry,
    undecodable pixels and so on. Nothing is repaired silently: fix or
    re-export the series (for example without gaps, as a single axial
    reconstruction) and try again.

    Attributes:
        reason: a :class:`QCReason` naming the failed check.
        series_uid: the SeriesInstanceUID concerned, or ``""`` when unknown.
    """

    def __init__(self, reason: QCReason | str, message: str, *, series_uid: str = "") -> None:
        self.reason = QCReason(reason)
        self.series_uid = series_uid
        prefix = f"series {series_uid}: " if series_uid else ""
        super().__init__(f"{prefix}{message} [{self.reason.value}]")


class NoSeriesError(MedaiError):
    """No DICOM series (or no scorable series) was found under the given path.

    Check the path; for a study, the selection report lists why each series
    was rejected.
    """


class ManifestError(MedaiError):
    """A manifest CSV is malformed, names unknown labels, or leaks patients across splits.

    The message names the file and row; fix the CSV and run again.
    """


class ModelError(MedaiError):
    """A model file is missing, corrupt, does not match its card, or fails parity.

    Re-download or re-export the model; never score with a model whose
    checksum does not match.
    """


class ConfigError(MedaiError):
    """A configuration file or command-line option is invalid (for example ``medai pacs serve``'s).

    The message names the setting, what it must be and what it was; fix the file or the option and start
    again.
    """


class UnsafeUploadError(MedaiError):
    """An uploaded file or zip archive was refused before anything was written.

    Raised for a member path that would leave the target folder (``../``, an absolute path, a drive letter),
    a link, an encrypted member, too many files or bytes, or a compression ratio typical of a zip bomb. Check
    where the archive comes from; a genuine study larger than the limits can be opened from a folder instead
    (``medai app --data DIR``).
    """


class DicomWebError(MedaiError):
    """A DICOMweb server could not be reached, refused a request, or answered with something that is not DICOMweb.

    Check the URL (the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``), that the server runs and that
    it accepts requests from this machine.
    """


class DeidentificationError(MedaiError):
    """An instance cannot be de-identified safely and was not written.

    Raised by :mod:`medai.report.deidentify` for an instance whose pixels may show identifying text
    (``BurnedInAnnotation`` or ``RecognizableVisualFeatures`` YES, or a secondary capture or ultrasound image
    that does not say NO): the Basic Profile removes identifiers from the header only. Clean the pixels (or,
    when the image carries no such text, correct the attribute) and run again.
    """
