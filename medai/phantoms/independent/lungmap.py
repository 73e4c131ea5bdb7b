"""What the trees and lesions know about the lungs, and the straight pieces trees are made of."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LungMap", "Segments"]


@dataclass
class LungMap:
    """What growth needs to know about the lungs, on a coarse regular grid (z, y, x).

    Attributes:
        origin: ``(x, y, z)`` mm of voxel ``[0, 0, 0]``.
        spacing: ``(x, y, z)`` voxel size in mm.
        lobe: lobe index per voxel (0 outside the lungs, 1..5 RUL RML RLL LUL LLL).
        depth: distance (mm) to the nearest pleura or fissure, 0 outside.
        gradient: unit vectors ``(3, z, y, x)`` (x, y, z components) pointing deeper into the lobe.
        nearest: per voxel, the index arrays of its nearest lung voxel (None when there are no lungs).
        pleura: distance (mm) to the lungs' outer surface, ignoring fissures (None: use ``depth``).
    """

    origin: np.ndarray
    spacing: np.ndarray
    lobe: np.ndarray
    depth: np.ndarray
    gradient: np.ndarray
    nearest: tuple[np.ndarray, ...] | None = None
    pleura: np.ndarray | None = None
    _voxels: dict[tuple[int, float], np.ndarray] = field(default_factory=dict, repr=False)

    def extend(self, field: np.ndarray) -> np.ndarray:
        """``field`` with every voxel outside the lungs set to the value of its nearest lung voxel.

        Interpolating the result near the pleura then reads lung values only.
        """
        if self.nearest is None:
            return field.astype(np.float32)
        return field[self.nearest].astype(np.float32)

    def index(self, points: np.ndarray) -> np.ndarray:
        """Flat voxel index of each point ``(..., 3)`` (clipped to the grid)."""
        ijk = np.rint((points - self.origin) / self.spacing).astype(np.intp)
        nz, ny, nx = self.lobe.shape
        i = np.clip(ijk[..., 0], 0, nx - 1)
        j = np.clip(ijk[..., 1], 0, ny - 1)
        k = np.clip(ijk[..., 2], 0, nz - 1)
        inside = (ijk[..., 0] == i) & (ijk[..., 1] == j) & (ijk[..., 2] == k)
        flat = (k * ny + j) * nx + i
        return np.where(inside, flat, -1)

    def lobe_at(self, points: np.ndarray) -> np.ndarray:
        idx = self.index(points)
        return np.where(idx >= 0, self.lobe.ravel()[np.maximum(idx, 0)], 0)

    def depth_at(self, points: np.ndarray) -> np.ndarray:
        idx = self.index(points)
        return np.where(idx >= 0, self.depth.ravel()[np.maximum(idx, 0)], 0.0)

    def voxels(self, lobe: int, min_depth: float) -> np.ndarray:
        """Centres ``(n, 3)`` of the voxels of ``lobe`` at least ``min_depth`` mm from its boundary."""
        key = (lobe, min_depth)
        if key not in self._voxels:
            k, j, i = np.nonzero((self.lobe == lobe) & (self.depth > min_depth))
            self._voxels[key] = self.origin + np.stack([i, j, k], axis=1) * self.spacing
        return self._voxels[key]

    def inward(self, points: np.ndarray) -> np.ndarray:
        idx = np.maximum(self.index(points), 0)
        return np.stack([self.gradient[c].ravel()[idx] for c in range(3)], axis=-1)


@dataclass
class Segments:
    """Straight pieces of one tree: start and end points ``(n, 3)`` and radii ``(n,)`` (mm)."""

    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray

    @staticmethod
    def empty() -> Segments:
        z3 = np.zeros((0, 3))
        return Segments(z3, z3.copy(), np.zeros(0), np.zeros(0))

    @staticmethod
    def concat(parts: list[Segments]) -> Segments:
        if not parts:
            return Segments.empty()
        return Segments(*(np.concatenate([getattr(s, f) for s in parts]) for f in ("a", "b", "ra", "rb")))

    def __len__(self) -> int:
        return len(self.ra)
