"""Volume -> model input: the only preprocessing in medai.

Training, evaluation, export and serving all call :func:`to_model_input` with
the :class:`PreprocessParams` stored in the model, so they cannot disagree.
Pure numpy/scipy (no torch). Steps:

1. **Reorient** to a fixed patient frame without copying: the array axes are
   permuted and flipped so that, in the result, ``x`` runs to patient Left,
   ``y`` to Posterior and ``z`` to Superior (LPS order; slice 0 is the most
   inferior). Oblique volumes beyond a tolerance are refused.
2. **Lung mask**: the caller's (the quantification's lungs on its coarse grid, when the model was
   trained with lung-restricted input), else a quick one on a subsampled copy
   (:func:`fast_lung_mask`): air below a threshold, minus outside air, largest 1-2 parts.
3. **Crop** a lung-centred box (bounding box + margin) grown to the aspect of
   the output grid, so output voxels are isotropic. With ``lung_margin_mm`` set,
   everything farther than that from the given lungs becomes ``outside_lungs_hu``:
   the network sees the lungs and their surroundings only, not the heart, the
   abdomen, contrast or arms, which differ most between scanners and patients.
4. **Resample** anti-aliased: integer block mean (box filter of about one
   output voxel) over the crop, then trilinear interpolation to the grid.
5. **Window** (clip) and **normalise**.

The :class:`ModelInput` keeps the affine from model-grid indices back to the
source array's indices, so saliency can be resampled to the patient grid.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import edt
import numpy as np
from scipy import ndimage

from medai.errors import InvalidSeriesError, QCReason
from medai.volume import Volume

__all__ = [
    "AIR_HU",
    "ModelInput",
    "Normalization",
    "PreprocessParams",
    "canonical_axes",
    "check_hounsfield",
    "depth_mm",
    "fast_lung_mask",
    "set_threads",
    "to_model_input",
    "within_mm",
]

log = logging.getLogger(__name__)


class Normalization(enum.StrEnum):
    """How windowed HU become network input values."""

    UNIT = "unit"  # window [lo, hi] -> [0, 1]
    ZSCORE = "zscore"  # zero mean, unit variance over the cropped grid


@dataclass(frozen=True)
class PreprocessParams:
    """Preprocessing settings; they travel inside checkpoints and ONNX metadata.

    Example:
        >>> p = PreprocessParams(grid_shape=(32, 48, 48))
        >>> PreprocessParams.from_dict(p.to_dict()) == p
        True
    """

    # Output grid (z, y, x) in voxels, shaped like adult lungs (~280 x 210 x 320 mm plus margins): with
    # isotropic voxels they fit at ~3.5-4 mm, enough for GGO patches and cheap enough for CPU training.
    # Each size divisible by 16 (four stride-2 stages).
    grid_shape: tuple[int, int, int] = (80, 64, 96)
    # Never use output voxels finer than this (small patients, tight crops): detail below it is noise here.
    min_spacing_mm: float = 2.0
    # Clip range in HU: aerated lung (-900) through GGO (-700..-300) and consolidation (0..50) to soft tissue.
    window_hu: tuple[float, float] = (-1000.0, 400.0)
    normalization: Normalization = Normalization.UNIT
    # Voxels below this are air (aerated lung, airways, outside air) for the lung mask.
    lung_threshold_hu: float = -400.0
    # Margin added around the lung bounding box on every side, in mm.
    crop_margin_mm: float = 12.0
    # The lung mask is computed on a strided copy with about this spacing (speed; only the box is used).
    mask_spacing_mm: float = 6.0
    # Volumes whose axes are further than this from the patient axes are refused as oblique.
    oblique_tolerance_deg: float = 5.0
    # Lung-restricted input: 0 keeps the whole crop; > 0 needs the lungs from the caller and replaces everything
    # farther than this from them by outside_lungs_hu (the pleura and the chest wall's inner layer stay visible).
    lung_margin_mm: float = 0.0
    outside_lungs_hu: float = 0.0

    def __post_init__(self) -> None:
        grid = tuple(int(n) for n in self.grid_shape)
        if len(grid) != 3 or min(grid) < 8:
            raise ValueError(f"grid_shape must be three sizes >= 8 (z, y, x), not {self.grid_shape}")
        window = tuple(float(w) for w in self.window_hu)
        if len(window) != 2 or window[0] >= window[1]:
            raise ValueError(f"window_hu must be (low, high) with low < high, not {self.window_hu}")
        object.__setattr__(self, "grid_shape", grid)
        object.__setattr__(self, "window_hu", window)
        object.__setattr__(self, "normalization", Normalization(self.normalization))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (lists instead of tuples, enum values as strings)."""
        out = asdict(self)
        out["grid_shape"] = list(self.grid_shape)
        out["window_hu"] = list(self.window_hu)
        out["normalization"] = self.normalization.value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessParams:
        """Inverse of :meth:`to_dict`; unknown keys raise, missing keys take the defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"preprocessing parameters must be among {sorted(known)}, not {unknown}")
        kwargs = dict(data)
        for key in ("grid_shape", "window_hu"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


@dataclass(frozen=True, eq=False)
class ModelInput:
    """A preprocessed volume and the way back to its source.

    Attributes:
        array: float32 network input, shape ``(1, D, H, W)`` = ``(1, *grid_shape)``.
        spacing_mm: isotropic output voxel size, as ``(z, y, x)``.
        index_affine: 4x4 matrix mapping a model-grid index ``(z, y, x, 1)`` to the
            (fractional) index ``(z, y, x, 1)`` of the source ``Volume.hu`` array.
        source_shape: shape of the source array.
        lung_volume_ml: aerated lung volume from the quick air mask (QC: ~0 means no lungs found; compared
            with the quantification's lungs to catch a lung mask that misses most of the lung field).
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    index_affine: np.ndarray
    source_shape: tuple[int, int, int]
    lung_volume_ml: float

    def to_source_index(self, zyx: np.ndarray) -> np.ndarray:
        """Source-array indices ``(..., 3)`` of model-grid indices ``(..., 3)``, both ``(z, y, x)``."""
        pts = np.asarray(zyx, dtype=np.float64)
        return pts @ self.index_affine[:3, :3].T + self.index_affine[:3, 3]

    @property
    def crop_box_source(self) -> tuple[np.ndarray, np.ndarray]:
        """Corners (min, max) of the model grid's outer edges, in source index space ``(z, y, x)``."""
        shape = np.asarray(self.array.shape[1:], dtype=np.float64)
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
        src = self.to_source_index(corners * shape - 0.5)
        return src.min(axis=0), src.max(axis=0)

    @property
    def scale(self) -> tuple[float, float, float]:
        """Source voxels per model voxel along each model axis ``(z, y, x)``."""
        return tuple(float(s) for s in np.abs(self.index_affine[:3, :3]).sum(axis=0))  # type: ignore[return-value]


def canonical_axes(volume: Volume, tolerance_deg: float) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Permutation and flips that bring ``volume.hu`` to (S, P, L)-increasing (z, y, x) axes.

    Canonical numpy axis ``m`` is ``volume.hu``'s axis ``perm[m]``, reversed when ``flips[m]``: slice 0 is
    the most inferior, row 0 the most anterior, column 0 the patient's rightmost. The model input and the
    viewer's display orientation both start from it.

    Raises:
        InvalidSeriesError: an array axis is more than ``tolerance_deg`` off every patient axis (oblique), or
            two array axes map to the same patient axis.

    Example:
        >>> canonical_axes(Volume(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0)), 10.0)
        ((0, 1, 2), (False, False, False))
    """
    direction = volume.direction
    lps_axis_of_np_axis = []
    sign_of_np_axis = []
    cos_tol = math.cos(math.radians(tolerance_deg))
    for n in range(3):  # numpy axis n is direction column 2 - n
        col = direction[:, 2 - n]
        norm = float(np.linalg.norm(col))
        if norm == 0:
            raise InvalidSeriesError(QCReason.INCONSISTENT_GEOMETRY, "direction has a zero column")
        k = int(np.argmax(np.abs(col)))
        if abs(col[k]) / norm < cos_tol:
            angle = math.degrees(math.acos(min(1.0, abs(col[k]) / norm)))
            raise InvalidSeriesError(
                QCReason.NOT_AXIAL,
                f"volume axes must be within {tolerance_deg:g} degrees of the patient axes, not {angle:.1f} (oblique)",
                series_uid=volume.series_uid,
            )
        lps_axis_of_np_axis.append(k)
        sign_of_np_axis.append(col[k] > 0)
    if sorted(lps_axis_of_np_axis) != [0, 1, 2]:
        raise InvalidSeriesError(
            QCReason.INCONSISTENT_GEOMETRY,
            f"direction must map array axes to distinct patient axes, not {np.round(direction, 3).tolist()}",
            series_uid=volume.series_uid,
        )
    # canonical numpy axis m holds LPS axis 2 - m
    perm = tuple(lps_axis_of_np_axis.index(2 - m) for m in range(3))
    flips = tuple(not sign_of_np_axis[perm[m]] for m in range(3))
    return perm, flips  # type: ignore[return-value]


def fast_lung_mask(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    threshold_hu: float = -400.0,
    max_components: int = 2,
    min_volume_ml: float = 50.0,
) -> np.ndarray:
    """Coarse lung mask: air inside the body, largest one or two connected parts.

    Air is ``hu < threshold_hu``. Air components are outside air and dropped
    when they reach round a corner of the slice (touch a y side and an x side),
    or cover more than half of one side; lungs clipped by a small field of view
    touch only the lateral (x) sides over a small patch and are kept. The z
    sides do not count (the first and last slices may cut the trachea or the
    lungs). Of the rest the largest component is kept, plus the next ones if
    at least 15% of its size.
    Meant for cropping and QC on a subsampled array, not for quantification.

    Args:
        hu: ``(z, y, x)`` array in HU (any resolution; pass a strided copy for speed).
        spacing_mm: voxel size ``(z, y, x)`` of ``hu``.
        threshold_hu: air threshold.
        max_components: keep at most this many components (2: left and right lung).
        min_volume_ml: components smaller than this are never lungs.

    Returns:
        Boolean mask of ``hu``'s shape; all False when no lungs are found.

    Example:
        >>> hu = np.full((20, 40, 40), -1000, np.int16)
        >>> hu[:, 5:35, 5:35] = 40
        >>> hu[3:17, 10:30, 8:18] = -850
        >>> hu[3:17, 10:30, 22:32] = -850
        >>> int(fast_lung_mask(hu, (5.0, 5.0, 5.0)).sum())
        5600
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D (z, y, x) array, not {hu.ndim}D")
    air = hu < threshold_hu
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    outside = _outside_air_labels(labels, n)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    sizes[0] = 0
    sizes[outside] = 0
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    order = np.argsort(sizes)[::-1]
    keep: list[int] = []
    for lab in order[:max_components]:
        size = sizes[lab]
        if size * voxel_ml < min_volume_ml or (keep and size < 0.15 * sizes[keep[0]]):
            break
        keep.append(int(lab))
    if not keep:
        return np.zeros(hu.shape, dtype=bool)
    return np.isin(labels, keep)


def _outside_air_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Labels (1..n) of air components that are outside the body (see :func:`fast_lung_mask`)."""
    sides = [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]]  # y = 0, y = end, x = 0, x = end
    contact = np.stack([np.bincount(side.ravel(), minlength=n + 1) / side.size for side in sides])  # (4, n + 1)
    touches_y = (contact[0] > 0) | (contact[1] > 0)
    touches_x = (contact[2] > 0) | (contact[3] > 0)
    # around a corner = around the body; or a large share of one side (air in front of a wide patient)
    outside = (touches_y & touches_x) | (contact.max(axis=0) > 0.5)
    outside[0] = False
    return np.flatnonzero(outside)


def _lung_box(
    arr: np.ndarray, spacing: np.ndarray, params: PreprocessParams, *, warn: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lung bounding box (edges, canonical continuous index) and coarse lung volume in ml."""
    steps = np.maximum(1, np.round(params.mask_spacing_mm / spacing)).astype(int)
    small = arr[:: steps[0], :: steps[1], :: steps[2]]
    small_spacing = spacing * steps
    mask = fast_lung_mask(small, tuple(small_spacing), threshold_hu=params.lung_threshold_hu)  # type: ignore[arg-type]
    lung_ml = float(mask.sum()) * float(np.prod(small_spacing)) / 1000.0
    if not mask.any():
        mask = small > -500  # no lungs: fall back to the body
        if warn:
            log.warning("no lungs found; cropping around the body instead")
        if not mask.any():
            mask = np.ones(small.shape, dtype=bool)
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != m))) for m in range(3)]
    lo = np.array([i[0] for i in idx], dtype=np.float64) * steps - steps / 2.0
    hi = np.array([i[-1] for i in idx], dtype=np.float64) * steps + steps / 2.0
    lo = np.maximum(lo, -0.5)
    hi = np.minimum(hi, np.asarray(arr.shape) - 0.5)
    return lo, hi, lung_ml


def _block_mean(arr: np.ndarray, starts: np.ndarray, factors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over non-overlapping blocks (``factors`` per axis) starting at ``starts``, ``counts`` blocks per axis."""
    out: np.ndarray = arr[
        starts[0] : starts[0] + counts[0] * factors[0],
        starts[1] : starts[1] + counts[1] * factors[1],
        starts[2] : starts[2] + counts[2] * factors[2],
    ]
    acc_dtype = np.int32 if np.issubdtype(arr.dtype, np.integer) else np.float32
    for axis in range(3):
        f = int(factors[axis])
        if f == 1:
            continue
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(0, None, f)
        acc = np.array(out[tuple(index)], dtype=acc_dtype)
        for i in range(1, f):
            index[axis] = slice(i, None, f)
            acc += out[tuple(index)]
        out = acc
    return out.astype(np.float32) / float(np.prod(factors))


# A chest CT in Hounsfield units holds air (the lungs, around the body) well below this. A label map (0/1/2),
# stored values never rescaled to HU (0..4095) or a blank volume does not, and would be scored as nonsense.
AIR_HU = -500.0


def check_hounsfield(volume: Volume) -> None:
    """Refuse a volume whose values cannot be chest-CT Hounsfield units (no air, or nearly constant).

    Looks at every 2nd slice and every 4th row and column: air is everywhere in a chest CT.

    Raises:
        InvalidSeriesError: reason ``NOT_HOUNSFIELD``, naming the series and the values found.

    Example:
        >>> labels = Volume(np.zeros((8, 16, 16), np.uint8), (2.0, 2.0, 2.0), series_uid="1.2.3")
        >>> check_hounsfield(labels)
        Traceback (most recent call last):
        ...
        medai.errors.InvalidSeriesError: series 1.2.3: values 0..0 must be chest-CT Hounsfield units, ...
    """
    sample = volume.hu[::2, ::4, ::4]
    lo, hi = float(sample.min()), float(sample.max())
    if lo > AIR_HU or hi - lo < 300.0:
        raise InvalidSeriesError(
            QCReason.NOT_HOUNSFIELD,
            f"values {lo:g}..{hi:g} must be chest-CT Hounsfield units, with air below {AIR_HU:g} HU and a range "
            "of at least 300 HU; is this a label map, or pixel data without its rescale slope and intercept?",
            series_uid=volume.series_uid,
        )


# Threads of the distance transform: at most two (it is separable, line by line; a second core takes a 1.3M-voxel
# lung box from ~41 to ~28 ms, more would mostly start threads), one where a batch already runs one process per
# core (set_threads).
_MAX_DISTANCE_THREADS = 2
_distance_threads = min(_MAX_DISTANCE_THREADS, os.cpu_count() or 1)


def set_threads(threads: int | None) -> None:
    """Threads :func:`depth_mm` may use, at most two; None: the default (two, or one on a one-core machine).

    A worker that runs one thread per process sets 1, as it does for onnxruntime (``Classifier.load(threads=1)``).

    Example:
        >>> set_threads(1); set_threads(None)
    """
    global _distance_threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    _distance_threads = min(_MAX_DISTANCE_THREADS, threads if threads is not None else os.cpu_count() or 1)


def depth_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float] | None = None) -> np.ndarray:
    """Each voxel's distance to the nearest voxel outside ``mask`` (0 outside; voxel units without spacing).

    An exact Euclidean distance transform, as ``scipy.ndimage.distance_transform_edt`` (within float32 rounding:
    the served pipeline thresholds these depths, never needs float64), 2.5-3x faster on one thread (the ``edt``
    package's separable transform; scipy also builds the nearest-voxel index arrays), on up to two threads
    (:func:`set_threads`; the result does not depend on them). Voxels beyond the array's
    edge do not count as outside, as in scipy.

    Example:
        >>> m = np.zeros((1, 1, 7), bool); m[0, 0, 1:6] = True
        >>> depth_mm(m, (1.0, 1.0, 2.0))[0, 0].tolist()
        [0.0, 2.0, 4.0, 6.0, 4.0, 2.0, 0.0]
    """
    anisotropy = (1.0, 1.0, 1.0) if spacing_mm is None else tuple(float(s) for s in spacing_mm)
    return edt.edt(
        np.ascontiguousarray(mask, dtype=bool), anisotropy=anisotropy, black_border=False, parallel=_distance_threads
    )


def _shifted(d: int) -> tuple[slice, slice]:
    """(destination, source) slices that move an axis by ``d`` voxels."""
    return (slice(d, None), slice(None, -d or None)) if d >= 0 else (slice(None, d), slice(-d, None))


def within_mm(mask: np.ndarray, radius_mm: float, spacing_mm: tuple[float, float, float] | None = None) -> np.ndarray:
    """Voxels at most ``radius_mm`` from a voxel of ``mask`` (voxel units without spacing).

    The same as ``depth_mm(~mask, spacing_mm) <= radius_mm`` (tested), for a radius of a few voxels several times
    faster: a dilation by the closed ellipsoid of that radius, as one shifted OR per (z, y) offset of rows that
    were first dilated along x by the ellipsoid's half-width there.

    Example:
        >>> m = np.zeros((1, 1, 9), bool); m[0, 0, 4] = True
        >>> within_mm(m, 4.0, (1.0, 1.0, 2.0))[0, 0].astype(int).tolist()
        [0, 0, 1, 1, 1, 1, 1, 0, 0]
    """
    mask = np.asarray(mask, dtype=bool)
    step = (1.0, 1.0, 1.0) if spacing_mm is None else tuple(float(v) for v in spacing_mm)
    r2 = float(radius_mm) ** 2
    reach = [min(math.floor(radius_mm / v), n - 1) for v, n in zip(step, mask.shape, strict=True)]
    rows = [mask]  # rows[e]: mask dilated along x by e voxels each way
    out = np.zeros_like(mask)
    for dz in range(-reach[0], reach[0] + 1):
        for dy in range(-reach[1], reach[1] + 1):
            rest = r2 - (dz * step[0]) ** 2 - (dy * step[1]) ** 2
            if rest < 0:
                continue
            e = 0
            while e < reach[2] and (dz * step[0]) ** 2 + (dy * step[1]) ** 2 + ((e + 1) * step[2]) ** 2 <= r2:
                e += 1
            while len(rows) <= e:
                k = len(rows)
                grown = rows[-1].copy()
                grown[..., k:] |= mask[..., :-k]
                grown[..., :-k] |= mask[..., k:]
                rows.append(grown)
            src = rows[e]
            (dst_z, src_z), (dst_y, src_y) = _shifted(dz), _shifted(dy)
            out[dst_z, dst_y] |= src[src_z, src_y]
    return out


def _mask_box(
    lungs: np.ndarray, factors: tuple[int, int, int], perm: tuple[int, ...], flips: tuple[bool, ...], shape: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (canonical continuous index edges) of a coarse lung mask given in source array axes."""
    idx = [np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != n))) for n in range(3)]
    lo_src = np.array([i[0] * f for i, f in zip(idx, factors, strict=True)], dtype=np.float64) - 0.5
    hi_src = np.array([(i[-1] + 1) * f for i, f in zip(idx, factors, strict=True)], dtype=np.float64) - 0.5
    lo, hi = np.empty(3), np.empty(3)
    for m in range(3):
        n = perm[m]
        a, b = lo_src[n], hi_src[n]
        if flips[m]:
            a, b = shape[m] - 1 - b, shape[m] - 1 - a
        lo[m], hi[m] = max(a, -0.5), min(b, shape[m] - 0.5)
    return lo, hi


def _outside_lungs(
    lungs: np.ndarray, factors: tuple[int, int, int], affine: np.ndarray, grid: np.ndarray, margin_vox: float
) -> np.ndarray:
    """Model-grid voxels farther than ``margin_vox`` from the coarse lung mask (nearest-neighbour sampling)."""
    k = np.indices(tuple(grid), dtype=np.float32).reshape(3, -1)
    src = affine[:3, :3].astype(np.float32) @ k + affine[:3, 3:4].astype(np.float32)
    coarse = np.floor((src + 0.5) / np.asarray(factors, np.float32)[:, None]).astype(np.intp)
    inside = np.all((coarse >= 0) & (coarse < np.asarray(lungs.shape)[:, None]), axis=0)
    on = np.zeros(k.shape[1], dtype=bool)
    on[inside] = lungs[tuple(c[inside] for c in coarse)] > 0
    lung_grid = on.reshape(tuple(grid))
    if not lung_grid.any():
        return np.zeros(tuple(grid), dtype=bool)
    return ~within_mm(lung_grid, margin_vox)


def to_model_input(
    volume: Volume,
    params: PreprocessParams,
    *,
    lung_mask: np.ndarray | None = None,
    lung_mask_factors: tuple[int, int, int] = (1, 1, 1),
) -> ModelInput:
    """Preprocess a CT volume for the network (see the module docstring for the steps).

    Args:
        volume: CT volume in HU.
        params: the preprocessing settings stored with the model.
        lung_mask: the lungs (non-zero) on a grid of integer blocks of the volume's array (the
            quantification's coarse grid), in the array's own axes. Needed when ``params.lung_margin_mm`` > 0;
            then it also sets the crop. Ignored otherwise.
        lung_mask_factors: the block size of ``lung_mask`` in source voxels, per axis.

    Returns:
        The :class:`ModelInput` (array ``(1, *params.grid_shape)`` float32).

    Raises:
        InvalidSeriesError: the volume is oblique beyond ``params.oblique_tolerance_deg`` or its values are not
            Hounsfield units (:func:`check_hounsfield`).
        ValueError: lung-restricted parameters without a lung mask.

    Example:
        >>> hu = np.full((40, 64, 64), -1000, np.int16)
        >>> hu[:, 8:56, 8:56] = 40
        >>> hu[5:35, 16:48, 12:30] = -850
        >>> hu[5:35, 16:48, 34:52] = -850
        >>> mi = to_model_input(Volume(hu, (5.0, 5.0, 5.0)), PreprocessParams(grid_shape=(16, 24, 24)))
        >>> mi.array.shape, float(mi.array.min()) >= 0.0, float(mi.array.max()) <= 1.0
        ((1, 16, 24, 24), True, True)
    """
    check_hounsfield(volume)
    perm, flips = canonical_axes(volume, params.oblique_tolerance_deg)
    arr = volume.hu.transpose(perm)
    arr = arr[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    spacing = np.asarray(volume.spacing_mm, dtype=np.float64)[list(perm)]
    shape = np.asarray(arr.shape)
    grid = np.asarray(params.grid_shape)

    restrict = params.lung_margin_mm > 0
    if restrict and lung_mask is None:
        raise ValueError("lung_mask must be given when lung_margin_mm > 0 (a lung-restricted model), not None")
    use_mask = restrict and lung_mask is not None and bool(lung_mask.any())
    lo, hi, lung_ml = _lung_box(arr, spacing, params, warn=not use_mask)  # the quantification's lungs crop instead
    if use_mask:
        assert lung_mask is not None
        lo, hi = _mask_box(lung_mask, lung_mask_factors, perm, flips, shape)
    extent_mm = (hi - lo) * spacing + 2.0 * params.crop_margin_mm
    out_spacing = max(float(np.max(extent_mm / grid)), params.min_spacing_mm)
    step = out_spacing / spacing  # canonical voxels per output voxel
    edge0 = (lo + hi) / 2.0 - grid * step / 2.0  # continuous canonical index of the grid's first edge

    # box filter of ~one output voxel, then trilinear interpolation to the exact grid
    factors = np.maximum(1, np.floor(step)).astype(int)
    first = edge0 + 0.5 * step
    last = edge0 + (grid - 0.5) * step
    starts = np.clip(np.floor(first).astype(int) - factors, 0, shape - 1)
    ends = np.clip(np.ceil(last).astype(int) + factors + 1, 1, shape)
    factors = np.minimum(factors, np.maximum(1, ends - starts))
    counts = np.maximum(1, (ends - starts) // factors)
    reduced = _block_mean(arr, starts, factors, counts)
    matrix = step / factors
    offset = (first - starts - (factors - 1) / 2.0) / factors
    low_hu, high_hu = params.window_hu
    out = ndimage.affine_transform(
        reduced, matrix, offset=offset, output_shape=tuple(grid), order=1, mode="nearest", output=np.float32
    )
    # outside the scanned volume is air
    for m in range(3):
        centres = edge0[m] + (np.arange(grid[m]) + 0.5) * step[m]
        outside = (centres < -0.5) | (centres > shape[m] - 0.5)
        if outside.any():
            index: list[Any] = [slice(None)] * 3
            index[m] = outside
            out[tuple(index)] = low_hu
    # model index k -> canonical c = edge0 + (k + 0.5) * step -> source index (undo flips, permutation)
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for m in range(3):
        n = perm[m]
        sign = -1.0 if flips[m] else 1.0
        affine[n, m] = sign * step[m]
        base = edge0[m] + 0.5 * step[m]
        affine[n, 3] = (volume.shape[n] - 1 - base) if flips[m] else base
    if restrict and lung_mask is not None:
        out[_outside_lungs(lung_mask, lung_mask_factors, affine, grid, params.lung_margin_mm / out_spacing)] = (
            params.outside_lungs_hu
        )
    np.clip(out, low_hu, high_hu, out=out)
    if params.normalization is Normalization.UNIT:
        out -= low_hu
        out /= high_hu - low_hu
    else:
        out -= out.mean()
        out /= max(float(out.std()), 1e-6)
    return ModelInput(
        array=out[None],
        spacing_mm=(out_spacing, out_spacing, out_spacing),
        index_affine=affine,
        source_shape=volume.shape,
        lung_volume_ml=lung_ml,
    )
