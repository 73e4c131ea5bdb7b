"""Two primitive solids evaluated one axial plane at a time: swept tubes and deformed ellipsoids.

Both answer "where does this solid cut the plane ``z``?" as a signed distance
(mm, negative inside) on the rows and columns of a small bounding box, so a
slice costs only the pixels near the solid. Grids are given by their 1D
coordinate vectors ``xs`` (columns, mm) and ``ys`` (rows, mm).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Blob", "Tube", "bbox_slices"]

Box = tuple[slice, slice]


def bbox_slices(xs: np.ndarray, ys: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> Box | None:
    """Row and column slices of the grid points inside ``[x0, x1] x [y0, y1]`` (None when empty).

    ``xs`` and ``ys`` must be increasing and evenly spaced.
    """
    dx = float(xs[1] - xs[0])
    dy = float(ys[1] - ys[0])
    c0 = max(0, int(np.ceil((x0 - xs[0]) / dx)))
    c1 = min(len(xs), int(np.floor((x1 - xs[0]) / dx)) + 1)
    r0 = max(0, int(np.ceil((y0 - ys[0]) / dy)))
    r1 = min(len(ys), int(np.floor((y1 - ys[0]) / dy)) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


class Tube:
    """A tube swept along a polyline with a radius per vertex (truncated-cone segments).

    Args:
        points: vertices ``(n, 3)`` as ``(x, y, z)`` mm, ``n >= 2``.
        radii: radius (mm) per vertex, or one for all.
        reach_mm: extra distance around the tube that callers ask about (fat margins).
    """

    def __init__(self, points: ArrayLike, radii: ArrayLike, reach_mm: float = 0.0) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        if self.points.ndim != 2 or self.points.shape[1] != 3 or len(self.points) < 2:
            raise ValueError(f"points must be an (n >= 2, 3) array, not shape {self.points.shape}")
        self.radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(self.points),)).copy()
        self.reach_mm = float(reach_mm)
        self._a = self.points[:-1]
        self._u = self.points[1:] - self.points[:-1]
        reach = np.maximum(self.radii[:-1], self.radii[1:]) + self.reach_mm
        self._zlo = np.minimum(self.points[:-1, 2], self.points[1:, 2]) - reach
        self._zhi = np.maximum(self.points[:-1, 2], self.points[1:, 2]) + reach
        self.z_min, self.z_max = float(self._zlo.min()), float(self._zhi.max())
        lo = np.minimum(self.points[:-1], self.points[1:]) - reach[:, None]
        hi = np.maximum(self.points[:-1], self.points[1:]) + reach[:, None]
        self._lo, self._hi = lo[:, :2], hi[:, :2]
        self._a32 = self._a.astype(np.float32)
        self._u32 = self._u.astype(np.float32)
        self._inv = (1.0 / np.maximum(np.sum(self._u * self._u, axis=1), 1e-9)).astype(np.float32)
        self._r0 = self.radii[:-1].astype(np.float32)
        self._dr = (self.radii[1:] - self.radii[:-1]).astype(np.float32)

    @property
    def z_range(self) -> tuple[float, float]:
        """Lowest and highest ``z`` any part of the tube (with its reach) touches."""
        return self.z_min, self.z_max

    def cuts(self, z: float, xs: np.ndarray, ys: np.ndarray) -> Iterator[tuple[Box, np.ndarray]]:
        """Signed distance to the tube where the plane ``z`` cuts it, one bounding box per run of cut segments."""
        if not self.z_min <= z <= self.z_max:
            return
        active = np.flatnonzero((self._zlo <= z) & (self._zhi >= z))
        if not len(active):
            return
        starts = [0, *(np.flatnonzero(np.diff(active) > 1) + 1).tolist(), len(active)]
        for r0, r1 in itertools.pairwise(starts):
            run = active[r0:r1]
            lo = self._lo[run].min(axis=0)
            hi = self._hi[run].max(axis=0)
            box = bbox_slices(xs, ys, lo[0], hi[0], lo[1], hi[1])
            if box is None:
                continue
            a = self._a32[run][:, :, None, None]  # (S, 3, 1, 1)
            u = self._u32[run][:, :, None, None]
            px = xs[box[1]].astype(np.float32)[None, None, :] - a[:, 0]
            py = ys[box[0]].astype(np.float32)[None, :, None] - a[:, 1]
            pz = np.float32(z) - a[:, 2]
            t = np.clip((px * u[:, 0] + py * u[:, 1] + pz * u[:, 2]) * self._inv[run][:, None, None], 0.0, 1.0)
            dx = px - t * u[:, 0]
            dy = py - t * u[:, 1]
            dz = pz - t * u[:, 2]
            r = self._r0[run][:, None, None] + t * self._dr[run][:, None, None]
            sd = np.sqrt(dx * dx + dy * dy + dz * dz) - r
            yield box, sd.min(axis=0) if len(run) > 1 else sd[0]


@dataclass
class Blob:
    """A deformed ellipsoid: rotated, tapered along its first axis, with a superquadric exponent.

    Attributes:
        center: ``(x, y, z)`` mm.
        axes: 3x3 matrix whose columns are the blob's unit axes in patient space.
        radii: half-lengths (mm) along the three axes.
        taper: the cross-section shrinks by this fraction toward the ``+axis 0`` end.
        power: superquadric exponent (2 = ellipsoid, larger = boxier).
        reach_mm: extra distance around the blob that callers ask about.
    """

    center: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    taper: float = 0.0
    power: float = 2.0
    reach_mm: float = 0.0

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)
        self.axes = np.asarray(self.axes, dtype=np.float64)
        self.radii = np.asarray(self.radii, dtype=np.float64)
        if self.axes.shape != (3, 3) or self.radii.shape != (3,) or self.radii.min() <= 0:
            raise ValueError(f"axes must be 3x3 and radii three positive numbers, not {self.axes.shape}, {self.radii}")

    @property
    def extent(self) -> float:
        """Radius (mm) of a sphere around the centre that holds the blob and its reach."""
        return float(self.radii.max() * (1.0 + abs(self.taper)) + self.reach_mm)

    def local(self, z: float, xs: np.ndarray, ys: np.ndarray, box: Box) -> tuple[np.ndarray, ...]:
        """Coordinates along the blob's axes, in units of its radii, on ``box`` of plane ``z``."""
        px = (xs[box[1]] - self.center[0]).astype(np.float32)[None, :]
        py = (ys[box[0]] - self.center[1]).astype(np.float32)[:, None]
        pz = np.float32(z - self.center[2])
        out = []
        for k in range(3):
            e = self.axes[:, k] / self.radii[k]
            out.append(px * np.float32(e[0]) + py * np.float32(e[1]) + pz * np.float32(e[2]))
        return tuple(out)

    def cut(self, z: float, xs: np.ndarray, ys: np.ndarray) -> tuple[Box, np.ndarray] | None:
        """Approximate signed distance (mm) on the plane ``z`` near the blob, or None when it misses."""
        ext = self.extent
        if abs(z - self.center[2]) > ext:
            return None
        box = bbox_slices(
            xs, ys, self.center[0] - ext, self.center[0] + ext, self.center[1] - ext, self.center[1] + ext
        )
        if box is None:
            return None
        u, v, w = self.local(z, xs, ys, box)
        scale = np.clip(1.0 - self.taper * u, 0.3, None)
        p = self.power
        if p == 2.0:
            s = np.sqrt(u * u + (v * v + w * w) / (scale * scale))
        else:
            s = (np.abs(u) ** p + (np.abs(v) ** p + np.abs(w) ** p) / scale**p) ** (1.0 / p)
        return box, (s - 1.0) * np.float32(self.radii.min())
