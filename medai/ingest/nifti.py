"""NIfTI files <-> :class:`~medai.volume.Volume`.

NIfTI stores voxel ``(i, j, k)`` (x, y, z) data with an affine to RAS+
millimetres; medai volumes are ``(z, y, x)`` arrays in DICOM LPS. The two
frames differ by a sign on the first two patient axes, which is applied here
and nowhere else.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from medai.errors import InvalidSeriesError, QCReason
from medai.ingest.qc import DEFAULT_RULES, ORTHONORMAL_TOLERANCE
from medai.volume import Volume

__all__ = ["NIFTI_SUFFIXES", "is_mask_beside_case", "is_nifti_name", "nifti_stem", "read_nifti", "write_nifti"]

log = logging.getLogger(__name__)

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_name(name: str | Path) -> bool:
    """Whether a file name ends with a NIfTI suffix, in any letter case (exports from Windows tools vary).

    Example:
        >>> is_nifti_name("CT.NII.GZ"), is_nifti_name("ct.nii"), is_nifti_name("ct.dcm")
        (True, True, False)
    """
    return Path(name).name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(name: str | Path) -> str:
    """A NIfTI file's name without its suffix, in any letter case; other names are returned whole.

    Example:
        >>> nifti_stem("CT.NII.GZ"), nifti_stem("a/ct.nii"), nifti_stem("ct.dcm")
        ('CT', 'ct', 'ct.dcm')
    """
    base = Path(name).name
    lower = base.lower()
    for suffix in NIFTI_SUFFIXES:  # no suffix ends another one
        if lower.endswith(suffix):
            return base[: -len(suffix)]
    return base


def is_mask_beside_case(path: str | Path) -> bool:
    """Whether a NIfTI file is a ``<case>_lung`` / ``<case>_lesion`` mask written beside its case (``medai synth``).

    Such masks are ground truth, not CT volumes: scoring and the viewer's worklist leave them out.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "ct.nii.gz").touch()
        >>> is_mask_beside_case(folder / "ct_lung.nii.gz"), is_mask_beside_case(folder / "ct.nii.gz")
        (True, False)
    """
    path = Path(path)
    stem = nifti_stem(path)
    suffix = path.name[len(stem) :]
    for mask in ("_lung", "_lesion"):
        if stem.endswith(mask) and (path.parent / f"{stem[: -len(mask)]}{suffix}").is_file():
            return True
    return False


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI CT volume (``.nii`` or ``.nii.gz``) in HU.

    The scaling (``scl_slope``/``scl_inter``) is applied; integral values that
    fit are kept as int16, anything else becomes float32.

    Raises:
        InvalidSeriesError: the file is unreadable (``unreadable``); not a 3D volume with voxels of a CT's size
            (``implausible_dimensions``; :attr:`~medai.ingest.qc.SelectionRules.voxel_size_range_mm`); holds
            values that are not real and finite (``not_hounsfield``); or has a non-finite or singular affine
            (``inconsistent_geometry``) or a sheared one
            (``inconsistent_orientation``).

    Example:
        >>> import tempfile, os
        >>> v = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing_mm=(2.0, 0.5, 0.7))
        >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii.gz")
        >>> write_nifti(v, path)
        >>> w = read_nifti(path)
        >>> bool((w.hu == v.hu).all()), w.spacing_mm
        (True, (2.0, 0.5, 0.7))
    """
    import nibabel as nib  # imported here: callers that only check a name stay light

    path = Path(path)
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)  # type: ignore[attr-defined]
    except Exception as exc:
        raise InvalidSeriesError(QCReason.UNREADABLE, f"cannot read NIfTI {str(path)!r}: {exc}") from exc
    # Checked on the header, before the data is read: a small .nii.gz can declare (and inflate to) gigabytes.
    rules = DEFAULT_RULES
    if max(shape[:2], default=0) > rules.max_matrix or math.prod(shape) > rules.max_voxels:
        raise InvalidSeriesError(
            QCReason.IMPLAUSIBLE_DIMENSIONS,
            f"NIfTI {str(path)!r} must have an in-plane matrix of at most {rules.max_matrix} and at most "
            f"{rules.max_voxels} voxels, not shape {shape}",
        )
    try:
        data = np.asanyarray(img.dataobj)  # type: ignore[attr-defined]
    except Exception as exc:
        raise InvalidSeriesError(QCReason.UNREADABLE, f"cannot read NIfTI {str(path)!r}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidSeriesError(
            QCReason.IMPLAUSIBLE_DIMENSIONS, f"NIfTI {str(path)!r} must hold a 3D volume, not shape {data.shape}"
        )
    if 0 in data.shape:
        raise InvalidSeriesError(
            QCReason.IMPLAUSIBLE_DIMENSIONS, f"NIfTI {str(path)!r} holds no voxels (shape {data.shape})"
        )
    if data.dtype.kind not in "iuf":
        raise InvalidSeriesError(
            QCReason.NOT_HOUNSFIELD,
            f"NIfTI {str(path)!r} holds {data.dtype} values; a CT volume holds real numbers (HU), not colour, "
            "complex or structured data",
        )
    affine = _RAS_FROM_LPS @ np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]  # LPS affine
    if not np.all(np.isfinite(affine)):
        raise InvalidSeriesError(
            QCReason.INCONSISTENT_GEOMETRY, f"NIfTI {str(path)!r} has a non-finite affine (NaN or infinity)"
        )
    spacing_xyz = np.linalg.norm(affine[:3, :3], axis=0)
    # NIfTI stores float32: round away the representation noise (0.699999988 -> 0.7)
    spacing = tuple(round(float(s), 5) for s in spacing_xyz[::-1])
    if min(spacing) <= 0:
        raise InvalidSeriesError(QCReason.INCONSISTENT_GEOMETRY, f"NIfTI {str(path)!r} has a singular affine")
    low, high = rules.voxel_size_range_mm
    if not (low <= min(spacing) and max(spacing) <= high):
        raise InvalidSeriesError(
            QCReason.IMPLAUSIBLE_DIMENSIONS,
            f"NIfTI {str(path)!r} voxel size must lie within {low:g}..{high:g} mm, not {spacing} (z, y, x)",
        )
    direction = affine[:3, :3] / spacing_xyz[None, :]
    if np.abs(direction.T @ direction - np.eye(3)).max() > ORTHONORMAL_TOLERANCE:
        raise InvalidSeriesError(
            QCReason.INCONSISTENT_ORIENTATION,
            f"NIfTI {str(path)!r} has a sheared affine (its axes are not orthogonal; a gantry tilt kept in the "
            "geometry?): resample it onto an orthogonal grid first",
        )
    hu = np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0))
    if np.issubdtype(hu.dtype, np.floating):
        if np.all(np.isfinite(hu)) and np.all(hu == np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767:
            hu = hu.astype(np.int16)
        else:
            hu = hu.astype(np.float32)
    elif hu.dtype != np.int16:
        hu = hu.astype(np.int16) if hu.min() >= -32768 and hu.max() <= 32767 else hu.astype(np.float32)
    if hu.dtype == np.float32 and not np.all(np.isfinite(hu)):
        raise InvalidSeriesError(
            QCReason.NOT_HOUNSFIELD,
            f"NIfTI {str(path)!r} holds non-finite values (NaN or infinity, or beyond float32), not HU",
        )
    return Volume(
        hu,
        spacing_mm=spacing,  # type: ignore[arg-type]
        origin_mm=tuple(float(o) for o in affine[:3, 3]),  # type: ignore[arg-type]
        direction=direction,
        header={"SourceFormat": "NIfTI", "SourcePath": str(path)},
    )


def write_nifti(volume: Volume, path: str | Path, *, description: str = "") -> None:
    """Write a volume as NIfTI (RAS+ affine, qform and sform set, int16 or float32 data).

    ``description`` goes into the header's ``descrip`` field (at most 79 ASCII characters): medai marks its
    own outputs there (:data:`medai.ingest.outputs.SALIENCY_DESCRIPTION`) so discovery leaves them out.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.nii")
        >>> write_nifti(Volume(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0)), path)
    """
    data = np.asarray(volume.hu).transpose(2, 1, 0)
    affine = _RAS_FROM_LPS @ volume.affine_lps()
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = description.encode("ascii", errors="replace")[:79]
    nib.save(img, str(path))
