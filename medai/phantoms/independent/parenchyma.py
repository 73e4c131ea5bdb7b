"""Healthy lung density: gravity gradient, dependent atelectasis, expiration, emphysema and fissures.

The density of aerated lung rises toward the dependent (posterior, in a
supine patient) side; expiration raises it everywhere. Dependent
atelectasis is a band of higher density along the posterior pleura of the
lower lobes, thicker at the bases; it is normal lung, never lesion.
Centrilobular emphysema is a scatter of small low-density holes, upper-lobe
predominant; paraseptal bullae sit under the pleura. Fissures are thin
sheets on the lobes' height fields, rendered with the area (thickness times
contrast) they really have, spread over the plane's sampling so that a sheet
oblique to a thick slice becomes a faint band of partial volume.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from medai.phantoms.independent.coarse import CoarseGrid
from medai.phantoms.independent.lungmap import LungMap, Segments
from medai.phantoms.independent.patient import Patient

__all__ = ["Parenchyma"]


class Parenchyma:
    """Lung density fields of one patient on the coarse grid, read back per fine plane.

    Args:
        factors: the spec's factors (lung state, atelectasis, emphysema, age).
        patient: the shape model (fissures).
        lungs: the coarse lung map (depth to the pleura, lobes).
        grid: the coarse grid the map lives on.
        rng: patient variation.
    """

    def __init__(
        self, factors: dict[str, Any], patient: Patient, lungs: LungMap, grid: CoarseGrid, rng: np.random.Generator
    ) -> None:
        self.p, self.grid = patient, grid
        expiration = factors["lung_state"] == "expiration"
        emphysema = str(factors["emphysema"])
        self.base_hu = float(rng.uniform(-700.0, -620.0) if expiration else rng.uniform(-920.0, -870.0))
        self.base_hu -= {"none": 0.0, "mild": 15.0, "moderate": 35.0}[emphysema]
        self.gradient_hu = float(rng.uniform(90.0, 150.0) if expiration else rng.uniform(30.0, 80.0))
        self.texture_hu = float(rng.uniform(3.0, 8.0))
        _, y, z = grid.points()
        lung = lungs.lobe > 0
        noise = rng.standard_normal(grid.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, 1.2)
        self.texture = (noise / max(float(noise[lung].std()), 1e-6)).astype(np.float32) if lung.any() else noise
        severity = float(factors["atelectasis"])
        lower = 1.0 / (1.0 + np.exp((z - (patient.z_dome_r + 45.0 * patient.h)) / 25.0))
        thickness = 3.0 + 12.0 * severity * lower + (6.0 if expiration else 0.0)
        posterior = 1.0 / (1.0 + np.exp(-(y - 25.0) / 10.0))
        dependent = np.exp(-lungs.depth / np.maximum(thickness, 1.0)) * posterior * (0.25 + severity * lower)
        dependent *= 1.0 + 0.4 * self.texture
        self.dependent = lungs.extend(np.where(lung, np.clip(dependent, 0.0, 1.0), 0.0))
        self.atelectasis_hu = float(rng.uniform(-450.0, -150.0))
        self.holes = self._emphysema(emphysema, lungs, rng)

    def plane(self, z: float, rows: slice, cols: slice, ys: np.ndarray) -> np.ndarray:
        """Aerated-lung density (HU) on a window of the fine plane ``z``."""
        g = self.grid
        hu = np.float32(self.base_hu) + np.float32(self.gradient_hu / 180.0) * (
            ys[rows, None].astype(np.float32) + 90.0
        )
        hu = hu + np.float32(self.texture_hu) * g.plane(self.texture, z, rows, cols)
        dep = g.plane(self.dependent, z, rows, cols)
        return hu + dep * (np.float32(self.atelectasis_hu) - hu)

    def fissures(
        self,
        z: float,
        sheets: dict[str, tuple[np.ndarray, np.ndarray]],
        right: np.ndarray,
        visible: np.ndarray,
        *,
        pixel_mm: float,
        dz_mm: float,
    ) -> np.ndarray:
        """HU to add for the fissure sheets on a plane window.

        Args:
            z: height of the plane.
            sheets: per fissure, its height field and ``1 / |(-grad h, 1)|`` (the normal's z part) on the window.
            right: which points of the window belong to the right lung.
            visible: where fissures are complete (drawn).
            pixel_mm: in-plane spacing.
            dz_mm: plane spacing.
        """
        out = np.zeros(right.shape, dtype=np.float32)
        area = 0.2 * 880.0  # sheet thickness (mm) x contrast (HU)
        for name, side in (("R_oblique", True), ("L_oblique", False), ("R_horizontal", True)):
            height, nz = sheets[name]
            dist = (z - height) * nz
            sigma2 = 0.3 + (pixel_mm * pixel_mm) / 12.0 + (dz_mm * nz) ** 2 / 12.0
            near = np.abs(dist) < 3.0 * np.sqrt(sigma2)
            mask = near & visible & (right if side else ~right)
            if name == "R_horizontal":
                mask &= z > sheets["R_oblique"][0]
            if mask.any():
                s2 = sigma2[mask]
                out[mask] += (area / np.sqrt(2.0 * math.pi * s2)) * np.exp(-(dist[mask] ** 2) / (2.0 * s2))
        return out

    def _emphysema(self, kind: str, lungs: LungMap, rng: np.random.Generator) -> Segments:
        if kind == "none":
            return Segments.empty()
        count = {"mild": 150, "moderate": 600}[kind]
        k, j, i = np.nonzero(lungs.lobe > 0)
        xyz = lungs.origin + np.stack([i, j, k], axis=1) * lungs.spacing
        upper = np.clip((xyz[:, 2] - self.p.z_dome_r) / 150.0, 0.0, 1.0) ** 2
        weight = upper + 0.05
        pick = rng.choice(len(xyz), size=count, p=weight / weight.sum())
        centers = xyz[pick] + rng.uniform(-1.5, 1.5, (count, 3))
        radii = rng.gamma(2.0, 0.8, count) + 0.6
        depth = lungs.depth.ravel()[np.ravel_multi_index((k[pick], j[pick], i[pick]), lungs.lobe.shape)]
        bulla = depth < 6.0
        radii[bulla] *= rng.uniform(1.3, 2.2, int(bulla.sum()))
        return Segments(centers, centers.copy(), radii, radii)
