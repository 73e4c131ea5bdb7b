"""The coarse planning grid: lungs and lobes at a few millimetres, and smooth fields read back on fine planes.

Growth of the trees and the lesion fields are planned here, where a whole
lung fits in a few hundred thousand voxels. :class:`CoarseGrid` also carries
values back to the fine rendering grid: a field is interpolated linearly in
``z`` between its two nearest coarse planes and then bilinearly in-plane by
two small interpolation matrices (one matrix product per fine plane).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medai.phantoms.independent.lungmap import LungMap
from medai.phantoms.independent.voxelize import Voxelizer

__all__ = ["CoarseGrid", "interpolation_matrix", "lung_map"]


def interpolation_matrix(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Matrix ``(len(fine), len(coarse))`` of linear interpolation weights (clamped at the ends)."""
    step = float(coarse[1] - coarse[0])
    t = np.clip((fine - coarse[0]) / step, 0.0, len(coarse) - 1.0)
    i0 = np.minimum(np.floor(t).astype(int), len(coarse) - 2)
    w = (t - i0).astype(np.float32)
    m = np.zeros((len(fine), len(coarse)), dtype=np.float32)
    rows = np.arange(len(fine))
    m[rows, i0] = 1.0 - w
    m[rows, i0 + 1] += w
    return m


class CoarseGrid:
    """A regular grid ``(z, y, x)`` with coordinate vectors in mm (each increasing).

    Args:
        xs, ys, zs: coordinate vectors (mm).
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> None:
        self.xs, self.ys, self.zs = (np.asarray(v, dtype=np.float64) for v in (xs, ys, zs))
        self.shape = (len(self.zs), len(self.ys), len(self.xs))
        self.origin = np.array([self.xs[0], self.ys[0], self.zs[0]])
        self.spacing = np.array([self.xs[1] - self.xs[0], self.ys[1] - self.ys[0], self.zs[1] - self.zs[0]])
        self._rows: np.ndarray | None = None
        self._cols: np.ndarray | None = None

    def attach(self, fine_xs: np.ndarray, fine_ys: np.ndarray) -> None:
        """Prepare reading fields back on a fine in-plane grid."""
        self._cols = interpolation_matrix(np.asarray(fine_xs), self.xs).T.copy()  # (nxc, nxf)
        self._rows = interpolation_matrix(np.asarray(fine_ys), self.ys)  # (nyf, nyc)

    def plane(self, field: np.ndarray, z: float, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """``field`` (coarse ``(z, y, x)``) interpolated on the fine plane at ``z`` (optionally a window of it)."""
        if self._rows is None or self._cols is None:
            raise ValueError("attach() must be called with the fine grid before plane()")
        t = float(np.clip((z - self.zs[0]) / self.spacing[2], 0.0, len(self.zs) - 1.0))
        k = min(int(t), len(self.zs) - 2)
        w = np.float32(t - k)
        coarse = field[k] * (1.0 - w) + field[k + 1] * w
        return self._rows[rows] @ coarse.astype(np.float32) @ self._cols[:, cols]

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate arrays ``(x, y, z)`` of the grid."""
        return self.xs[None, None, :], self.ys[None, :, None], self.zs[:, None, None]


def lung_map(voxelizer: Voxelizer, grid: CoarseGrid) -> tuple[LungMap, np.ndarray]:
    """Label the coarse grid, find the lobes and the distance to the nearest pleura or fissure.

    Returns:
        The :class:`LungMap` and the coarse tissue labels.
    """
    labels = np.stack([voxelizer.plane(float(z)) for z in grid.zs])
    lung = (labels == 4) | (labels == 5)
    right = labels == 4
    lobe = np.zeros(grid.shape, dtype=np.uint8)
    for k, z in enumerate(grid.zs):
        lobe[k] = np.where(lung[k], voxelizer.lobes(float(z), right[k]), 0)
    boundary = np.zeros(grid.shape, dtype=bool)
    for axis in range(3):
        diff = np.diff(lobe, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        boundary[tuple(lo)] |= diff
        boundary[tuple(hi)] |= diff
    boundary |= lobe == 0
    sampling = tuple(float(s) for s in grid.spacing[::-1])
    depth = ndimage.distance_transform_edt(~boundary, sampling=sampling).astype(np.float32)
    depth[lobe == 0] = 0.0
    smooth = ndimage.gaussian_filter(depth, 1.0)
    gz, gy, gx = np.gradient(smooth, *sampling)
    norm = np.sqrt(gx * gx + gy * gy + gz * gz) + 1e-6
    gradient = np.stack([gx / norm, gy / norm, gz / norm]).astype(np.float32)
    nearest = None
    if (lobe > 0).any():
        nearest = tuple(ndimage.distance_transform_edt(lobe == 0, return_distances=False, return_indices=True))
    pleura = ndimage.distance_transform_edt(lobe > 0, sampling=sampling).astype(np.float32)
    return LungMap(grid.origin, grid.spacing, lobe, depth, gradient, nearest, pleura), labels
