"""De-identification: DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile, with the Retain
UIDs and Retain Longitudinal Temporal Information (Full Dates) options.

:class:`Deidentifier` applies Table E.1-1 (:mod:`medai.report.deid_profile`) to a data set, recursively into
sequences:

* ``X`` removes the attribute, ``Z`` empties it, ``D`` replaces it with a dummy value of its VR, ``U`` replaces a
  UID with one derived from it (:class:`UidMap`: ``2.25.`` and 128 bits of HMAC-SHA256 under a key), so every
  instance of a study maps to the same new study, series and frame of reference UIDs and references between
  instances still hold. The type-dependent actions take the choice that keeps the IOD valid and reveals
  least: ``X/Z`` -> Z, ``X/D`` -> D, ``Z/D`` and ``X/Z/D`` -> D for dates and times (Type 1 in enhanced and SR
  objects), Z otherwise, and ``X/Z/U*`` keeps a reference sequence with its UIDs replaced.
* Every private attribute is removed (the profile without the Retain Safe Private option), and so are the
  curve (50xx) and overlay (60xx) groups: overlay planes can hold burned-in text.
* Burned-in annotation is not cleaned (that is the Clean Pixel Data option): an instance whose
  ``BurnedInAnnotation`` or ``RecognizableVisualFeatures`` is ``YES``, or a secondary capture or ultrasound
  image that does not say ``NO``, is refused with :class:`~medai.errors.DeidentificationError`, as the profile
  requires, rather than passed on with a name in its pixels.
* ``retain_uids`` keeps every UID (Retain UIDs Option, code 113110); ``retain_dates`` keeps every date, time and
  date-time (Retain Longitudinal Temporal Information with Full Dates Option, 113106).
* The result says what was done: ``PatientIdentityRemoved`` YES, ``DeidentificationMethod`` and its code
  sequence (113100 and the options), ``LongitudinalTemporalInformationModified``.

Pixel data are never touched, so a de-identified series loads and scores exactly as the original.
:func:`deidentify_tree` is ``medai deidentify IN OUT``. Nothing identifying is logged.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from medai.errors import DeidentificationError, MedaiError
from medai.ingest.discovery import find_series
from medai.ingest.nifti import read_nifti, write_nifti
from medai.report.deid_profile import BASIC_PROFILE, BASIC_PROFILE_BY_TAG

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction
    from medai.volume import Volume

__all__ = [
    "DEFAULT_RESULTS_KEY",
    "DeidSummary",
    "Deidentifier",
    "RowDeidentifier",
    "UidMap",
    "deidentify_case",
    "deidentify_tree",
    "resolve_action",
]

log = logging.getLogger(__name__)

_METHOD = "medai: PS3.15 Basic Application Level Confidentiality Profile"  # LO: 64 characters at most
_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_RETAIN_UIDS_CODE = ("113110", "Retain UIDs Option")
_RETAIN_DATES_CODE = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
_TEMPORAL_VRS = {"DA", "DT", "TM"}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
# SOP classes whose pixels usually carry burned-in text: without BurnedInAnnotation NO they are refused.
_BURNED_IN_PREFIXES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.")
# Technical header fields a de-identified case keeps (the scanner and reconstruction, nothing about a person).
_TECHNICAL = ("Modality", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "SliceThickness", "KVP")


def resolve_action(action: str, vr: str) -> str:
    """The single action taken for a Table E.1-1 action that depends on the attribute's type in its IOD.

    Example:
        >>> resolve_action("X/Z/D", "DT"), resolve_action("Z/D", "LO"), resolve_action("X/Z", "DA")
        ('D', 'Z', 'Z')
    """
    if action in ("X/Z",):
        return "Z"
    if action == "X/D":
        return "D"
    if action in ("Z/D", "X/Z/D"):
        return "D" if vr in _TEMPORAL_VRS else "Z"
    if action == "X/Z/U*":
        return "U*"
    return action


class UidMap:
    """Replacement UIDs: ``2.25.`` followed by 128 bits of HMAC-SHA256(key, uid), the same for the same UID.

    Args:
        key: the secret; the same key gives the same replacements in another run (link studies across
            exports), a fresh random key (the default) makes the replacements unlinkable to the originals.

    Example:
        >>> uids = UidMap(b"0123456789abcdef")
        >>> uids("1.2.3") == uids("1.2.3"), uids("1.2.3").startswith("2.25."), len(uids("1.2.3")) <= 64
        (True, True, True)
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def __repr__(self) -> str:
        return "UidMap(key=<hidden>)"

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\x00")
        if not uid:
            return uid
        digest = hmac.new(self._key, uid.encode("ascii", errors="replace"), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _dummy(vr: str) -> Any:
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b""
    if vr == "SQ":
        return Sequence()
    return _DUMMY_TEXT


def _burned_in(ds: Dataset) -> str:
    """Why ``ds`` may carry identifying text in its pixels ("" when it does not)."""
    for keyword in ("BurnedInAnnotation", "RecognizableVisualFeatures"):
        if str(ds.get(keyword, "")).strip().upper() == "YES":
            return f"{keyword} is YES"
    sop_class = str(ds.get("SOPClassUID", ""))
    says_no = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "NO"
    if "PixelData" in ds and sop_class.startswith(_BURNED_IN_PREFIXES) and not says_no:
        return f"BurnedInAnnotation must be NO for SOP class {sop_class}, not absent"
    return ""


class Deidentifier:
    """Applies the Basic Profile (and the chosen options) to data sets; one instance per export keeps UIDs
    consistent across every instance it sees.

    Args:
        retain_uids: Retain UIDs Option.
        retain_dates: Retain Longitudinal Temporal Information with Full Dates Option.
        key: key of the :class:`UidMap` (None: random, unlinkable).

    Example:
        >>> ds = Dataset()
        >>> ds.PatientName, ds.StudyInstanceUID = "Doe^Jane", "1.2.3"
        >>> out = Deidentifier(key=b"k" * 16).dataset(ds)
        >>> str(out.PatientName), out.StudyInstanceUID.startswith("2.25."), out.PatientIdentityRemoved
        ('', True, 'YES')
    """

    def __init__(self, *, retain_uids: bool = False, retain_dates: bool = False, key: bytes | None = None) -> None:
        self.retain_uids = retain_uids
        self.retain_dates = retain_dates
        self.uids = UidMap(key)

    def _action(self, elem: DataElement) -> str:
        action = BASIC_PROFILE.get(elem.keyword) if elem.keyword else None
        action = action or BASIC_PROFILE_BY_TAG.get(int(elem.tag), "K")
        action = resolve_action(action, elem.VR)
        if action in ("U", "U*") and self.retain_uids:
            return "K" if action == "U" else "U*"
        if self.retain_dates and elem.VR in _TEMPORAL_VRS and action != "K":
            return "K"
        return action

    def _clean(self, ds: Dataset) -> None:
        for elem in list(ds):
            tag = elem.tag
            if tag.is_private or tag.group >> 8 in (0x50, 0x60):
                del ds[tag]
                continue
            action = self._action(elem)
            if action == "X":
                del ds[tag]
            elif action == "Z":
                elem.value = Sequence() if elem.VR == "SQ" else None
            elif action == "D" and elem.VR != "SQ":
                elem.value = self.uids(str(elem.value)) if elem.VR == "UI" else _dummy(elem.VR)
            elif action == "U" and elem.VR == "UI" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                mapped = [self.uids(str(v)) for v in values]
                elem.value = mapped if elem.VM > 1 else mapped[0]
            if elem.VR == "SQ" and tag in ds:  # K, D, U* and unlisted sequences: clean every item
                for item in ds[tag].value:
                    self._clean(item)

    def dataset(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (file meta rebuilt to match).

        Raises:
            DeidentificationError: the instance may carry identifying burned-in text (see the module docstring).
        """
        problem = _burned_in(ds)
        if problem:
            raise DeidentificationError(
                f"an instance must not carry burned-in identifying text to be de-identified, but {problem}; "
                "clean its pixels (or correct the attribute) first"
            )
        out = copy.deepcopy(ds)  # nothing shared with the caller's data set
        self._clean(out)
        out.PatientIdentityRemoved = "YES"
        codes = [_PROFILE_CODE]
        if self.retain_uids:
            codes.append(_RETAIN_UIDS_CODE)
        if self.retain_dates:
            codes.append(_RETAIN_DATES_CODE)
        out.DeidentificationMethod = [_METHOD, *(meaning for _, meaning in codes[1:])]
        out.DeidentificationMethodCodeSequence = Sequence([_code(value, meaning) for value, meaning in codes])
        out.LongitudinalTemporalInformationModified = "UNMODIFIED" if self.retain_dates else "REMOVED"
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            out.file_meta = FileMetaDataset()
            out.file_meta.TransferSyntaxUID = meta.TransferSyntaxUID
            out.file_meta.MediaStorageSOPClassUID = out.get("SOPClassUID", meta.get("MediaStorageSOPClassUID"))
            out.file_meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", "")
        return out


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


@dataclass
class DeidSummary:
    """What :func:`deidentify_tree` did: instances written, instances refused with why, files not DICOM."""

    written: int = 0
    volumes: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0


def deidentify_tree(
    source: str | Path,
    out: str | Path,
    *,
    retain_uids: bool = False,
    retain_dates: bool = False,
    key: bytes | None = None,
    on_instance: Callable[[], None] | None = None,
) -> DeidSummary:
    """De-identify every DICOM instance (and NIfTI volume) under ``source`` into ``out``.

    Instances are written as ``OUT/STUDY/SERIES/SOP.dcm`` under their new UIDs (input paths may name a
    patient, so none is reused), in their own transfer syntax with their pixel data unchanged. NIfTI volumes
    are rewritten without their header's free text as ``OUT/volume-N.nii.gz``. Files that are not DICOM are
    not copied. Instances that cannot be de-identified safely are refused and listed.

    Args:
        source: folder, zip archive or file.
        out: the output folder (created; must not lie inside ``source``).
        retain_uids, retain_dates: the profile's options.
        key: UID key (None: random); keep it to map the same studies to the same UIDs in a later export.
        on_instance: called after each instance (progress).

    Raises:
        MedaiError: ``out`` lies inside ``source``, or nothing was found.

    Example:
        >>> deidentify_tree("export/", "deid/")  # doctest: +SKIP
        DeidSummary(written=120, volumes=0, refused=[], skipped=1)
    """
    source, out = Path(source), Path(out)
    if out.resolve().is_relative_to(source.resolve()) and source.is_dir():
        raise MedaiError(f"OUT must lie outside IN, not inside it: {str(out)!r}")
    found = find_series(source)
    deid = Deidentifier(retain_uids=retain_uids, retain_dates=retain_dates, key=key)
    summary = DeidSummary(skipped=len(found.skipped))
    for info in found:
        for src in info.sources:
            try:
                ds = pydicom.dcmread(src.open(), force=True)
                clean = deid.dataset(ds)
            except DeidentificationError as exc:
                summary.refused.append((str(src), str(exc)))
                log.warning("refused an instance of series %s: %s", info.series_uid, exc)
                continue
            except Exception as exc:  # pydicom raises many types on a damaged file
                summary.refused.append((str(src), f"cannot be read: {type(exc).__name__}"))
                continue
            target = out / str(clean.StudyInstanceUID) / str(clean.SeriesInstanceUID)
            target.mkdir(parents=True, exist_ok=True)
            clean.save_as(target / f"{clean.SOPInstanceUID}.dcm", enforce_file_format=True)
            summary.written += 1
            if on_instance is not None:
                on_instance()
    for k, path in enumerate(found.volumes, start=1):
        out.mkdir(parents=True, exist_ok=True)
        write_nifti(deidentify_case_volume(read_nifti(path)), out / f"volume-{k}.nii.gz")
        summary.volumes += 1
    if not summary.written and not summary.volumes and not summary.refused:
        raise MedaiError(f"IN must hold DICOM instances or NIfTI volumes, not {len(found.skipped)} other files")
    log.info(
        "de-identified %d instances and %d volumes; %d refused", summary.written, summary.volumes, len(summary.refused)
    )
    return summary


def deidentify_case_volume(volume: Volume, uids: UidMap | None = None) -> Volume:
    """The volume with replaced UIDs and only technical header fields (scanner and reconstruction)."""
    uids = uids or UidMap()
    header: Mapping[str, Any] = {k: v for k, v in volume.header.items() if k in _TECHNICAL}
    return dataclasses.replace(
        volume,
        series_uid=uids(volume.series_uid),
        study_uid=uids(volume.study_uid),
        header=header,
        sop_instance_uids=tuple(uids(u) for u in volume.sop_instance_uids),
    )


def deidentify_case(volume: Volume, prediction: Prediction, uids: UidMap) -> tuple[Volume, Prediction]:
    """A scored case fit for a de-identified export (the viewer's case report and JSON result): UIDs replaced
    consistently with ``uids``, the header reduced to technical fields, the numbers unchanged."""
    return deidentify_case_volume(volume, uids), dataclasses.replace(
        prediction, series_uid=uids(prediction.series_uid), study_uid=uids(prediction.study_uid)
    )


#: UID key of de-identified results when no key is given: the replacements are stable (a rerun resumes) but
#: anyone holding an original UID can recompute its replacement; give a key to make them secret.
DEFAULT_RESULTS_KEY = b"medai de-identified results, no key given"
_IDENTITY_COLUMNS = ("patient_id", "patient_name", "accession_number", "series_description")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/,;)]+)+[\\/]?")


class RowDeidentifier:
    """Results-file rows without identifiers, for ``medai score --deidentify``.

    UIDs are replaced as :class:`Deidentifier` replaces them under the same key (a de-identified results file
    matches a ``medai deidentify --key`` export of the same studies), patient name, ID, accession number and
    series description are emptied, the input path becomes ``series-...`` or ``volume-...``, and messages lose
    paths, UIDs and descriptions.

    Example:
        >>> rows = RowDeidentifier(b"0123456789abcdef")
        >>> row = rows.row({"source": "/data/Doe_Jane/ct", "series_uid": "1.2.3", "patient_id": "42", "message": ""})
        >>> row["source"].startswith("series-"), row["series_uid"].startswith("2.25."), row["patient_id"]
        (True, True, '')
    """

    def __init__(self, key: bytes | None = None) -> None:
        self.uids = UidMap(key or DEFAULT_RESULTS_KEY)

    def key(self, key: str) -> str:
        """A row key (a series UID or an input path) as it appears in the de-identified results."""
        if key and all(c.isdigit() or c == "." for c in key):
            return self.uids(key)
        return "volume-" + self.uids(key)[5:21] if key else key

    def row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The de-identified copy of a row that still holds the original values."""
        out = dict(row)
        for name in ("series_uid", "study_uid"):
            if row.get(name):
                out[name] = self.uids(str(row[name]))
        if row.get("series_uid"):
            out["source"] = f"series-{out['series_uid'][5:21]}"
        elif row.get("source"):
            out["source"] = self.key(str(row["source"]))
        for name in _IDENTITY_COLUMNS:
            if name in out:
                out[name] = ""
        out["pseudonymized"] = True
        return self.scrub(out, row)

    def scrub(self, row: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
        """``row`` (already de-identified) with its message cleaned of what ``original`` (the row's fields before
        de-identification) named: input paths, UIDs, the series description."""
        out = dict(row)
        text = _PATH.sub("<file>", str(out.get("message") or ""))
        for name in ("source", "series_description"):
            if original.get(name):
                text = text.replace(str(original[name]), "<input>")
        for name in ("series_uid", "study_uid"):
            if original.get(name):
                text = text.replace(str(original[name]), self.uids(str(original[name])))
        out["message"] = text
        return out
