"""Write a :class:`~medai.volume.Volume` as a CT Image Storage series, or as one Enhanced CT object.

Used by the phantom world (``medai synth``), the tests, the fuzzer and the benchmarks to produce real DICOM
files: one file per axial slice (:func:`write_ct_series`) in any of the transfer syntaxes medai reads, or
one multi-frame object with functional groups (:func:`write_enhanced_ct`). HU values are stored exactly: the
writer refuses values that the chosen pixel representation cannot hold rather than clipping them.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from medai.volume import Volume

__all__ = ["TransferSyntax", "write_ct_series", "write_enhanced_ct"]


class TransferSyntax(enum.StrEnum):
    """Transfer syntaxes the writer can produce (all lossless)."""

    EXPLICIT = "explicit"
    IMPLICIT = "implicit"
    BIG_ENDIAN = "big-endian"
    DEFLATED = "deflated"
    RLE = "rle"
    JPEG2000 = "jpeg2000"
    JPEGLS = "jpegls"
    JPEG_LOSSLESS = "jpeg-lossless"

    @property
    def uid(self) -> UID:
        return _UIDS[self]


_UIDS = {
    TransferSyntax.EXPLICIT: ExplicitVRLittleEndian,
    TransferSyntax.IMPLICIT: ImplicitVRLittleEndian,
    TransferSyntax.BIG_ENDIAN: ExplicitVRBigEndian,
    TransferSyntax.DEFLATED: DeflatedExplicitVRLittleEndian,
    TransferSyntax.RLE: RLELossless,
    TransferSyntax.JPEG2000: JPEG2000Lossless,
    TransferSyntax.JPEGLS: JPEGLSLossless,
    TransferSyntax.JPEG_LOSSLESS: JPEGLosslessSV1,
}
_COMPRESSED = {TransferSyntax.RLE, TransferSyntax.JPEG2000, TransferSyntax.JPEGLS, TransferSyntax.JPEG_LOSSLESS}


def _axial_direction_ok(direction: np.ndarray) -> bool:
    return bool(np.allclose(direction.T @ direction, np.eye(3), atol=1e-6))


def _checked_hu(volume: Volume, *, signed: bool) -> np.ndarray:
    """``volume.hu`` as integers, after checking that the pixel representation holds them and the geometry is
    orthonormal.

    Raises:
        ValueError: non-integer HU, HU out of the representation's range, or a direction that is not orthonormal.
    """
    hu = np.asarray(volume.hu)
    if not np.issubdtype(hu.dtype, np.integer):
        if not np.array_equal(hu, np.round(hu)):
            raise ValueError("volume.hu must hold integer HU values to be written exactly")
        hu = hu.astype(np.int32)
    low, high = (-32768, 32767) if signed else (-1024, 65535 - 1024)
    if hu.size and (hu.min() < low or hu.max() > high):
        raise ValueError(
            f"HU values must lie in [{low}, {high}] for {'signed' if signed else 'unsigned'} storage, "
            f"not [{hu.min()}, {hu.max()}]"
        )
    if not _axial_direction_ok(volume.direction):
        raise ValueError("volume.direction must be orthonormal")
    return hu


def write_ct_series(
    volume: Volume,
    folder: str | Path,
    *,
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
    signed: bool = False,
    attributes: Mapping[str, Any] | None = None,
    file_names: Sequence[str] | None = None,
    slice_thickness_mm: float | None = None,
) -> list[Path]:
    """Write ``volume`` as one CT Image Storage file per slice.

    Args:
        volume: integer-valued HU volume (int16, or float holding integers).
        folder: destination folder, created if needed.
        transfer_syntax: one of :class:`TransferSyntax` (lossless only).
        signed: store signed int16 with intercept 0; otherwise unsigned
            uint16 with RescaleIntercept -1024 (the usual CT export).
        attributes: DICOM attributes by keyword applied to every slice
            (PatientName, PatientID, ConvolutionKernel, Manufacturer, ...).
            Series/study UIDs come from ``volume`` unless given here.
        file_names: one name per slice in ``z`` order (default ``IM%05d.dcm``);
            pass shuffled names to test that order never comes from names.
        slice_thickness_mm: SliceThickness (default: the z spacing).

    Returns:
        The written paths in ``z`` order.

    Example:
        >>> import numpy as np, tempfile
        >>> v = Volume(np.full((3, 8, 8), -1000, np.int16), spacing_mm=(2.5, 0.7, 0.7))
        >>> len(write_ct_series(v, tempfile.mkdtemp()))
        3
    """
    syntax = TransferSyntax(transfer_syntax)
    hu = _checked_hu(volume, signed=signed)
    nz = hu.shape[0]
    if file_names is not None and len(file_names) != nz:
        raise ValueError(f"file_names must have one name per slice ({nz}), not {len(file_names)}")
    names = list(file_names) if file_names is not None else [f"IM{k:05d}.dcm" for k in range(nz)]

    attrs = dict(attributes or {})
    study_uid = attrs.pop("StudyInstanceUID", None) or volume.study_uid or generate_uid()
    series_uid = attrs.pop("SeriesInstanceUID", None) or volume.series_uid or generate_uid()
    for_uid = attrs.pop("FrameOfReferenceUID", None) or generate_uid()
    now = _dt.datetime.now()
    row_dir = volume.direction[:, 0]  # direction of increasing column index (x)
    col_dir = volume.direction[:, 1]  # direction of increasing row index (y)
    spacing_z, spacing_y, spacing_x = volume.spacing_mm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(nz):
        stored = hu[k].astype(np.int16) if signed else (hu[k] + 1024).astype(np.uint16)
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = "Phantom^Anonymous"
        ds.PatientID = "PHANTOM"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.SeriesDate = ds.StudyDate
        ds.ContentDate = ds.StudyDate
        ds.AccessionNumber = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "medai phantom"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "FFS"
        ds.KVP = 120
        ds.SliceThickness = round(float(slice_thickness_mm or spacing_z), 4)
        ds.PixelSpacing = [round(spacing_y, 6), round(spacing_x, 6)]
        position = volume.index_to_patient(np.array([k, 0, 0]))
        ds.ImagePositionPatient = [round(float(c), 4) for c in position]
        ds.ImageOrientationPatient = [round(float(c), 6) for c in (*row_dir, *col_dir)]
        ds.SliceLocation = round(float(position[2]), 4)
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = 0 if signed else -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        for key, value in attrs.items():
            setattr(ds, key, value)

        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        if syntax is TransferSyntax.JPEG_LOSSLESS:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
        elif syntax in _COMPRESSED:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(syntax.uid, np.ascontiguousarray(stored), generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = syntax.uid
            big = syntax is TransferSyntax.BIG_ENDIAN
            ds.PixelData = stored.astype(stored.dtype.newbyteorder(">" if big else "<")).tobytes()
        path = folder / names[k]
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(
            path,
            implicit_vr=syntax is TransferSyntax.IMPLICIT,
            little_endian=syntax is not TransferSyntax.BIG_ENDIAN,
            enforce_file_format=True,
        )
        if syntax is TransferSyntax.JPEG_LOSSLESS:
            _transcode_jpeg_lossless(path)
        paths.append(path)
    return paths


def write_enhanced_ct(
    volume: Volume,
    path: str | Path,
    *,
    transfer_syntax: TransferSyntax | str = TransferSyntax.EXPLICIT,
    order: Sequence[int] | np.ndarray | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``volume`` as one Enhanced CT Image Storage object: signed int16 frames, the pixel spacing,
    orientation and rescale in shared functional groups, each frame's position in its per-frame group.

    Args:
        volume: integer-valued HU volume within int16.
        path: the file to write (its folder is created if needed).
        transfer_syntax: explicit little endian, or one of the compressed syntaxes but JPEG lossless.
        order: the slice of ``volume`` stored in each frame (default: z order); shuffle it to test that the
            reader orders frames by position.
        attributes: DICOM attributes by keyword (SeriesDescription, PatientID, ...). Series/study UIDs come
            from ``volume`` unless given here.

    Returns:
        ``path``.

    Example:
        >>> import numpy as np, tempfile, os
        >>> v = Volume(np.full((3, 8, 8), -1000, np.int16), spacing_mm=(2.5, 0.7, 0.7))
        >>> os.path.getsize(write_enhanced_ct(v, os.path.join(tempfile.mkdtemp(), "e.dcm"))) > 3 * 8 * 8 * 2
        True
    """
    syntax = TransferSyntax(transfer_syntax)
    if syntax is not TransferSyntax.EXPLICIT and (syntax not in _COMPRESSED or syntax is TransferSyntax.JPEG_LOSSLESS):
        raise ValueError(f"transfer_syntax must be explicit or a compressed one but jpeg-lossless, not {syntax.value}")
    hu = _checked_hu(volume, signed=True)
    order = np.arange(hu.shape[0]) if order is None else np.asarray(order)
    attrs = dict(attributes or {})
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, generate_uid()
    ds.StudyInstanceUID = attrs.pop("StudyInstanceUID", None) or volume.study_uid or generate_uid()
    ds.SeriesInstanceUID = attrs.pop("SeriesInstanceUID", None) or volume.series_uid or generate_uid()
    ds.FrameOfReferenceUID = attrs.pop("FrameOfReferenceUID", None) or generate_uid()
    ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PatientName, ds.PatientID, ds.SeriesNumber = "Phantom^Anonymous", "PHANTOM", 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = int(hu.shape[1]), int(hu.shape[2]), len(order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    measures, orientation, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [round(s, 6) for s in volume.spacing_mm[1:]]
    measures.SliceThickness = round(float(volume.spacing_mm[0]), 4)
    orientation.ImageOrientationPatient = [
        round(float(c), 6) for c in (*volume.direction[:, 0], *volume.direction[:, 1])
    ]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 0, "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [round(float(c), 4) for c in volume.index_to_patient(np.array([k, 0, 0]))]
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frames = np.ascontiguousarray(hu[order]).astype("<i2")
    if syntax is TransferSyntax.EXPLICIT:
        ds.PixelData = frames.tobytes()
    else:
        ds.compress(syntax.uid, frames, generate_instance_uid=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _transcode_jpeg_lossless(path: Path) -> None:
    """Re-encode ``path`` in place as JPEG Lossless SV1 with GDCM (pydicom has no encoder for it)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    if not reader.Read():
        raise OSError(f"GDCM could not re-read {path} to encode it as JPEG Lossless")
    change.SetInput(reader.GetImage())
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    if not change.Change():
        raise OSError(f"GDCM could not encode {path} as JPEG Lossless")
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise OSError(f"GDCM could not write {path}")
