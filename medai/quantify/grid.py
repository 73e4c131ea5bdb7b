"""The coarse grid of quantification: integer block means of the source CT and the way back.

Quantification works on block means of the HU volume (about 3 mm voxels):
denoised, partial-volume honest and 30-60x fewer voxels than a 512x512 series.
:class:`QuantGrid` records the block factors so masks map back to the source
array for display. numpy only (serving path, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QuantGrid", "block_mean", "coarse_grid", "neighbour_extreme", "upsample_mask"]


@dataclass(frozen=True)
class QuantGrid:
    """The coarse grid the masks live on: integer block factors of the source grid.

    Coarse voxel ``[k, j, i]`` is the mean of source block
    ``[k*fz:(k+1)*fz, j*fy:(j+1)*fy, i*fx:(i+1)*fx]``. The last ``n % f`` source
    voxels along an axis are not covered; :meth:`upsample` repeats the last
    coarse plane into them.

    Example:
        >>> g = coarse_grid((1.25, 0.7, 0.7), (300, 512, 512))
        >>> g.factors, g.shape, g.spacing_mm
        ((2, 4, 4), (150, 128, 128), (2.5, 2.8, 2.8))
    """

    factors: tuple[int, int, int]
    source_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Coarse array shape ``(z, y, x)``."""
        return tuple(max(1, n // f) for n, f in zip(self.source_shape, self.factors, strict=True))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one coarse voxel in millilitres."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    def to_source_index(self, zyx: np.ndarray) -> np.ndarray:
        """Source-array index ``(..., 3)`` (z, y, x) of the centre of coarse voxels ``zyx``."""
        f = np.asarray(self.factors, dtype=np.float64)
        return np.asarray(zyx, dtype=np.float64) * f + (f - 1.0) / 2.0

    def upsample(self, mask: np.ndarray) -> np.ndarray:
        """A coarse mask on the source grid (nearest neighbour), e.g. for display."""
        return upsample_mask(mask, self.factors, self.source_shape)


def coarse_grid(
    spacing_mm: tuple[float, float, float],
    shape: tuple[int, int, int],
    *,
    target_spacing_mm: tuple[float, float, float] = (2.5, 2.5, 2.5),
) -> QuantGrid:
    """The block-mean grid with voxels closest to ``target_spacing_mm`` (never finer than the source).

    Example:
        >>> coarse_grid((5.0, 0.8, 0.8), (60, 512, 512)).factors
        (1, 3, 3)
    """
    factors = tuple(max(1, min(round(t / s), n)) for t, s, n in zip(target_spacing_mm, spacing_mm, shape, strict=True))
    spacing = tuple(s * f for s, f in zip(spacing_mm, factors, strict=True))
    return QuantGrid(factors, tuple(int(n) for n in shape), spacing)  # type: ignore[arg-type]


def block_mean(hu: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean of ``hu`` over blocks of ``factors`` voxels, as float32 (tails beyond whole blocks dropped).

    Strided sums, integer accumulation for integer input, a few coarse planes at a time so that the
    partial sums stay in the CPU cache: about 0.025 s for 300x512x512 int16 with factors (3, 4, 4)
    (0.06 s in one pass over the whole array).

    Example:
        >>> block_mean(np.arange(16, dtype=np.int16).reshape(1, 4, 4), (1, 2, 2))
        array([[[ 2.5,  4.5],
                [10.5, 12.5]]], dtype=float32)
    """
    fz, fy, fx = (int(f) for f in factors)
    if min(fz, fy, fx) < 1:
        raise ValueError(f"factors must be positive integers, not {factors}")
    nz, ny, nx = (max(1, n // f) for n, f in zip(hu.shape, (fz, fy, fx), strict=True))
    out = np.empty((nz, ny, nx), dtype=np.float32)
    plane_bytes = fz * hu.shape[1] * hu.shape[2] * hu.itemsize  # source bytes per coarse plane
    step = max(1, _SLAB_BYTES // max(1, plane_bytes))
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        out[z0:z1] = _block_sum(hu[z0 * fz : z1 * fz, : ny * fy, : nx * fx], (fz, fy, fx))
    out *= np.float32(1.0 / (fz * fy * fx))
    return out


_SLAB_BYTES = 3 << 20  # source bytes per pass of block_mean: partial sums of that much fit in a 2-core box's caches


def _block_sum(src: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Block sums of ``src`` (whole blocks only) as float32."""
    fz, fy, fx = factors
    acc_dtype: type = np.int32 if src.dtype.kind in "iu" and src.itemsize <= 2 else np.float32
    acc: np.ndarray = src[:, 0::fy].astype(acc_dtype)  # rows first: contiguous x, the cheapest pass
    for k in range(1, fy):
        acc += src[:, k::fy]
    zsum: np.ndarray = acc[0::fz]
    for k in range(1, fz):
        zsum += acc[k::fz]
    out: np.ndarray = zsum[..., 0::fx].astype(np.float32)
    for k in range(1, fx):
        out += zsum[..., k::fx]
    return out


def upsample_mask(mask: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a coarse mask to the source ``shape`` (tails repeat the edge).

    Example:
        >>> upsample_mask(np.array([[[1, 2]]], np.uint8), (1, 1, 2), (1, 1, 5))
        array([[[1, 1, 2, 2, 2]]], dtype=uint8)
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (z, y, x), not {mask.ndim}D")
    expected = tuple(max(1, int(n) // int(f)) for n, f in zip(shape, factors, strict=True))
    if mask.shape != expected:
        raise ValueError(f"shape must be the source shape of a {mask.shape} mask with factors {factors}, not {shape}")
    out = mask
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, int(f), axis=axis)
    out = out[: shape[0], : shape[1], : shape[2]]
    pad = [(0, int(s) - o) for s, o in zip(shape, out.shape, strict=True)]
    if any(after for _, after in pad):
        out = np.pad(out, pad, mode="edge")
    return out


def neighbour_extreme(values: np.ndarray, axes: tuple[int, ...], extreme: np.ufunc) -> np.ndarray:
    """Each voxel combined by ``extreme`` with its two neighbours along each of ``axes`` (a new array).

    ``np.maximum`` / ``np.logical_or`` give a dilation by the 6-neighbour cross, ``np.minimum`` /
    ``np.logical_and`` an erosion; neighbours outside the array are left out (scipy's ``mode="nearest"`` for
    minima and maxima). Shifted in-place ufuncs: several times faster than scipy's filters on the ~3 mm
    grid, where their per-line overhead dominates.

    Example:
        >>> neighbour_extreme(np.array([[[0, 0, 2, 0, 1]]], np.uint8), (2,), np.maximum)
        array([[[0, 2, 2, 2, 1]]], dtype=uint8)
    """
    out = values.copy()
    for axis in axes:
        n = values.shape[axis]
        if n < 2:
            continue
        low = tuple(slice(0, n - 1) if a == axis else slice(None) for a in range(values.ndim))
        high = tuple(slice(1, n) if a == axis else slice(None) for a in range(values.ndim))
        extreme(out[low], values[high], out=out[low])
        extreme(out[high], values[low], out=out[high])
    return out
