"""The :class:`Volume`: a CT volume in Hounsfield units with its geometry.

Axis convention, defined here once for the whole package:

* ``Volume.hu`` is indexed ``[z, y, x]`` (``[k, j, i]``): ``z`` runs along the
  slice normal (slice order), ``y`` along the image rows, ``x`` along the
  columns. Every ``*_mm`` tuple that describes array axes (``spacing_mm``,
  shapes) follows the same ``(z, y, x)`` order.
* Patient coordinates are DICOM LPS millimetres written ``(x, y, z)`` as in
  DICOM (``origin_mm`` and the columns of ``direction``).
* ``direction`` is the 3x3 matrix whose columns are the LPS unit vectors of
  the array axes ``x``, ``y``, ``z`` (the ITK/SimpleITK convention), so::

      patient_mm = origin_mm + direction @ (spacing_xyz * [i, j, k])

  with ``spacing_xyz = spacing_mm[::-1]``.

This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Volume"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in HU, in patient geometry.

    Attributes:
        hu: voxel values in Hounsfield units, shape ``(z, y, x)``, int16 or float32.
        spacing_mm: voxel size ``(z, y, x)`` in millimetres; ``z`` is the
            distance between slice centres, not the slice thickness.
        origin_mm: LPS position ``(x, y, z)`` of the centre of voxel ``[0, 0, 0]``.
        direction: 3x3 matrix, columns are the LPS directions of array axes x, y, z.
        series_uid: SeriesInstanceUID ("" for non-DICOM sources).
        study_uid: StudyInstanceUID ("" for non-DICOM sources).
        header: selected DICOM attributes by keyword (Modality, Manufacturer,
            ConvolutionKernel, SliceThickness, PatientID, AccessionNumber, ...).
        sop_instance_uids: SOPInstanceUID of each slice in ``z`` order (empty
            for non-DICOM sources and for enhanced multi-frame objects, which
            have one SOP instance).

    Example:
        >>> import numpy as np
        >>> v = Volume(np.zeros((2, 3, 4), np.int16), spacing_mm=(2.0, 0.5, 0.5))
        >>> v.shape, v.voxel_volume_ml
        ((2, 3, 4), 0.0005)
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    series_uid: str = ""
    study_uid: str = ""
    header: Mapping[str, Any] = field(default_factory=dict)
    sop_instance_uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"hu must be a 3D (z, y, x) array, not {self.hu.ndim}D with shape {self.hu.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers (z, y, x), not {self.spacing_mm}")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3):
            raise ValueError(f"direction must be a 3x3 matrix, not shape {direction.shape}")
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        z, y, x = self.hu.shape
        return int(z), int(y), int(x)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size ``(z, y, x)`` covered by the voxel grid."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing_mm, strict=True))  # type: ignore[return-value]

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous index ``(i, j, k, 1)`` (x, y, z order) to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * np.asarray(self.spacing_mm[::-1])[None, :]
        affine[:3, 3] = self.origin_mm
        return affine

    def index_to_patient(self, zyx: np.ndarray) -> np.ndarray:
        """LPS positions ``(..., 3)`` (x, y, z) of array indices ``(..., 3)`` given as (z, y, x)."""
        ijk = np.asarray(zyx, dtype=np.float64)[..., ::-1]
        return ijk @ self.affine_lps()[:3, :3].T + np.asarray(self.origin_mm)

    def with_array(self, hu: np.ndarray) -> Volume:
        """The same geometry and metadata around another array of the same shape."""
        if hu.shape != self.hu.shape:
            raise ValueError(f"array shape must be {self.hu.shape}, not {hu.shape}")
        return Volume(
            hu,
            self.spacing_mm,
            self.origin_mm,
            self.direction,
            self.series_uid,
            self.study_uid,
            self.header,
            self.sop_instance_uids,
        )
