"""Saliency maps from the model's in-graph class activation map (CAM).

The network ends in one linear layer applied at every position of its last
feature grid, so the exported graph returns ``cam`` ``(C, d, h, w)``: the
class scores at every position, which the logit pools (mean, or a log-sum-exp
soft maximum; see :mod:`medai.training.network`). This module turns that into a map a
radiologist can read:

1. *Contrast.* ``cam[c] - cam.mean(0)``: evidence for class ``c`` relative to
   the average class. Softmax ignores anything added to every class alike, so
   this is the part of the map that moves the probability (with mean pooling
   its spatial mean is ``logit_c - mean(logits)``). The sign is kept: positive is evidence *for* the
   class, negative against.
2. *Upsampling.* Trilinear, treating feature cells as areas (each covers
   ``input / feature`` model voxels), onto the model's input grid.
3. *Lungs only.* Multiplied by the lung mask from quantification, resampled
   onto the model grid.
4. *Scale.* Divided by the largest absolute value inside the lungs, so values
   are in [-1, 1] with the sign unchanged.

The map stays on the model grid (80x64x96 voxels, 2 MB) with the affine to
the source array; :meth:`Saliency.source_slice` resamples one axial slice for
display and :meth:`Saliency.to_source` the whole volume on demand.

numpy/scipy only: this is on the serving path (no torch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Saliency", "cam_contrast", "lungs_on_model_grid", "make_saliency"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Saliency:
    """A signed saliency map on the model grid and the way to the source volume.

    Attributes:
        map: float32 ``(D, H, W)`` on the model input grid, in [-1, 1]; positive is
            evidence for :attr:`class_name`; 0 outside the lungs.
        class_name: the class the map explains.
        index_affine: 4x4, model-grid index ``(z, y, x, 1)`` -> source-array index
            (from :class:`medai.preprocess.ModelInput`).
        source_shape: shape ``(z, y, x)`` of the source ``Volume.hu``.
    """

    map: np.ndarray
    class_name: str
    index_affine: np.ndarray
    source_shape: tuple[int, int, int]

    @property
    def positive_peak(self) -> float:
        """The largest positive value of :attr:`map` (0 without evidence for the class).

        The map is scaled by its largest *absolute* value, which may be counter-evidence; overlays that show
        the evidence for the class divide by this instead, so their strongest evidence is drawn in full.
        """
        return max(float(self.map.max(initial=0.0)), 0.0)

    def _source_to_model(self) -> np.ndarray:
        return np.linalg.inv(self.index_affine)

    def to_source(self) -> np.ndarray:
        """The map resampled (trilinear) onto the full source grid, float32 ``source_shape``.

        Costs ``4 * prod(source_shape)`` bytes (300 MB for 300x512x512); prefer
        :meth:`source_slice` for display.
        """
        inv = self._source_to_model()
        return ndimage.affine_transform(
            self.map,
            inv[:3, :3],
            offset=inv[:3, 3],
            output_shape=self.source_shape,
            order=1,
            mode="constant",
            cval=0.0,
            output=np.float32,
        )

    def source_slice(self, z: int) -> np.ndarray:
        """The map on source slice ``z`` (array index along the first axis), float32 ``(y, x)``.

        Example:
            >>> s = Saliency(np.ones((2, 2, 2), np.float32), "covid19", np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4))
            >>> s.source_slice(1).shape
            (4, 4)
        """
        nz, ny, nx = self.source_shape
        if not 0 <= z < nz:
            raise ValueError(f"z must be a slice index in [0, {nz - 1}], not {z}")
        inv = self._source_to_model()
        yy, xx = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
        pts = np.stack([np.full_like(yy, float(z)), yy, xx], axis=0).reshape(3, -1)
        coords = inv[:3, :3] @ pts + inv[:3, 3:4]
        values = ndimage.map_coordinates(self.map, coords, order=1, mode="constant", cval=0.0)
        return values.reshape(ny, nx).astype(np.float32)

    def on_grid(self, factors: tuple[int, int, int]) -> np.ndarray:
        """The map sampled (trilinear) at the centres of a block grid of the source, float32.

        Block ``[k, j, i]`` covers source voxels ``[k*fz:(k+1)*fz, ...]`` (the quantification's coarse grid,
        :class:`medai.quantify.grid.QuantGrid`): a whole-volume map for display at a few MB, where
        :meth:`to_source` costs hundreds.

        Example:
            >>> s = Saliency(np.ones((2, 2, 2), np.float32), "covid19", np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4))
            >>> s.on_grid((2, 2, 2)).shape
            (2, 2, 2)
        """
        f = np.asarray(factors, dtype=np.float64)
        if f.shape != (3,) or np.any(f < 1):
            raise ValueError(f"factors must be three integers >= 1, not {factors}")
        shape = tuple(max(1, n // int(k)) for n, k in zip(self.source_shape, factors, strict=True))
        inv = self._source_to_model()
        # grid index c -> source index c * f + (f - 1) / 2 -> model index
        matrix = inv[:3, :3] @ np.diag(f)
        offset = inv[:3, :3] @ ((f - 1.0) / 2.0) + inv[:3, 3]
        return ndimage.affine_transform(
            self.map, matrix, offset=offset, output_shape=shape, order=1, mode="constant", cval=0.0, output=np.float32
        )

    def top_slices(self, k: int) -> list[int]:
        """Source slice indices (ascending) of the ``k`` model planes with the most positive saliency.

        Planes are ranked by the sum of the positive map; each is mapped to its
        nearest source slice (duplicates dropped, so fewer than ``k`` may return).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        # the model axis that maps onto source axis 0 (slices)
        axis = int(np.argmax(np.abs(self.index_affine[0, :3])))
        other = tuple(a for a in range(3) if a != axis)
        score = np.clip(self.map, 0.0, None).sum(axis=other)
        order = np.argsort(-score, kind="stable")
        chosen: list[int] = []
        for plane in order:
            if score[plane] <= 0.0 and chosen:
                break
            centre = np.asarray(self.map.shape, dtype=np.float64) / 2.0
            centre[axis] = plane
            z = round(float(self.index_affine[0, :3] @ centre + self.index_affine[0, 3]))
            z = min(max(z, 0), self.source_shape[0] - 1)
            if z not in chosen:
                chosen.append(z)
            if len(chosen) == k:
                break
        return sorted(chosen)


def cam_contrast(cam: np.ndarray, class_index: int) -> np.ndarray:
    """Evidence for one class relative to the mean over classes, ``cam[c] - cam.mean(0)``.

    Args:
        cam: ``(C, d, h, w)`` class activation maps of one case.
        class_index: the class to explain.

    Example:
        >>> cam = np.stack([np.zeros((1, 1, 2)), np.array([[[1.0, -1.0]]])])
        >>> cam_contrast(cam, 1).tolist()
        [[[0.5, -0.5]]]
    """
    if cam.ndim != 4:
        raise ValueError(f"cam must have shape (C, d, h, w), not {cam.shape}")
    if not 0 <= class_index < cam.shape[0]:
        raise ValueError(f"class_index must be in [0, {cam.shape[0] - 1}], not {class_index}")
    return (cam[class_index] - cam.mean(axis=0)).astype(np.float32)


def lungs_on_model_grid(
    lung_mask: np.ndarray,
    factors: tuple[int, int, int],
    index_affine: np.ndarray,
    model_shape: tuple[int, int, int],
) -> np.ndarray:
    """A coarse quantification lung mask sampled (nearest) at the model grid's voxel centres, bool.

    Args:
        lung_mask: ``(z, y, x)`` on the coarse grid (block ``factors`` of the source; nonzero = lung).
        factors: block factors of that grid relative to the source array.
        index_affine: model-grid index -> source index (4x4).
        model_shape: the model input grid ``(D, H, W)``.
    """
    f = np.asarray(factors, dtype=np.float64)
    # source index s -> coarse index (s - (f - 1) / 2) / f
    matrix = index_affine[:3, :3] / f[:, None]
    offset = (index_affine[:3, 3] - (f - 1.0) / 2.0) / f
    sampled = ndimage.affine_transform(
        (lung_mask > 0).astype(np.uint8), matrix, offset=offset, output_shape=model_shape, order=0, mode="constant"
    )
    return sampled.astype(bool)


def make_saliency(
    cam: np.ndarray,
    class_index: int,
    class_name: str,
    *,
    lungs: np.ndarray,
    index_affine: np.ndarray,
    source_shape: tuple[int, int, int],
) -> Saliency:
    """Build the :class:`Saliency` of one case from its raw CAM (steps in the module docstring).

    Args:
        cam: ``(C, d, h, w)`` from the graph's ``cam`` output.
        class_index, class_name: the class to explain.
        lungs: bool ``(D, H, W)`` lung mask on the model grid (:func:`lungs_on_model_grid`).
        index_affine: model-grid index -> source index.
        source_shape: the source array's shape.

    Example:
        >>> cam = np.random.default_rng(0).normal(size=(3, 2, 2, 2)).astype(np.float32)
        >>> s = make_saliency(cam, 1, "covid19", lungs=np.ones((8, 8, 8), bool),
        ...                   index_affine=np.eye(4), source_shape=(8, 8, 8))
        >>> s.map.shape, float(np.abs(s.map).max())
        ((8, 8, 8), 1.0)
    """
    contrast = cam_contrast(cam, class_index)
    zoom = [n / m for n, m in zip(lungs.shape, contrast.shape, strict=True)]
    up = ndimage.zoom(contrast, zoom, order=1, mode="nearest", grid_mode=True, output=np.float32)
    if up.shape != lungs.shape:  # zoom rounds the output shape; pad/crop the rare off-by-one
        fixed = np.zeros(lungs.shape, np.float32)
        sl = tuple(slice(0, min(a, b)) for a, b in zip(up.shape, lungs.shape, strict=True))
        fixed[sl] = up[sl]
        up = fixed
    up *= lungs
    peak = float(np.abs(up).max())
    if peak > 0.0:
        up /= peak
    else:
        log.debug("saliency is zero inside the lungs (no lungs found or a flat CAM)")
    return Saliency(map=up, class_name=class_name, index_affine=index_affine, source_shape=source_shape)
