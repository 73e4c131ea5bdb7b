"""Pneumonia as a scalar field on the coarse lung grid, cut at the level that gives the target lesion share.

Every pattern is a *ranking* of lung voxels: a field whose highest values
are where that disease appears first. The lesion is the top ``fraction`` of
the lung by that field (a quantile, so the share is exact on the planning
grid and close after sampling), consolidation the top part of the lesion,
ground glass the rest. Fine planes read the field back by interpolation
and cut it at the same levels; lobar and segmental lesions are also cut at the
exact fissure surfaces.

* covid19: a sum of anisotropic Gaussian foci, flat along the pleura and thin
  across it, centred by a prior that favours the subpleural, posterior and
  lower lung (both lungs in most cases), modulated by smooth noise; the same
  prior breaks ties at high severity, so confluent disease stays peripheral
  and basal. Crazy paving adds septal lines (zero crossings of band-pass noise).
* lobar: distance from the hilum within one lobe: the lobe consolidates
  from its periphery inward, the hilar remainder stays aerated, the edge is
  ground glass.
* segmental: closeness in angle to an axis from the hilum to a pleural point
  of one lobe: a wedge with its base on the pleura.
* focal: distance from a centre, lobulated: a round consolidation, sometimes
  with a ground-glass halo.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medai.phantoms.independent.coarse import CoarseGrid
from medai.phantoms.independent.lungmap import LungMap
from medai.phantoms.independent.patient import Patient
from medai.phantoms.independent.spec import LOBES, IndependentSpec

__all__ = ["CONSOLIDATION", "GGO", "Lesions"]

GGO = 1
CONSOLIDATION = 2
_LOBE_INDEX = {name: k + 1 for k, name in enumerate(LOBES)}
_OUTSIDE = -1e6  # field value outside the lobe of a lobe-bound pattern


def _noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


class Lesions:
    """The lesion field of one case and its two cut levels.

    Args:
        spec: the case (label, pattern, lesion fraction and lesion factors).
        patient: the shape model.
        lungs: the coarse lung map.
        grid: the coarse grid.
        roots: hilar points by name (to place lobar and segmental lesions).
        rng: randomness of the lesion shape.
    """

    def __init__(
        self,
        spec: IndependentSpec,
        patient: Patient,
        lungs: LungMap,
        grid: CoarseGrid,
        roots: dict[str, tuple[np.ndarray, np.ndarray, float]],
        rng: np.random.Generator,
    ) -> None:
        self.pattern = spec.pattern
        self.grid = grid
        self.lobe_target = 0
        self.crazy_paving: np.ndarray | None = None
        self.field: np.ndarray | None = None
        self.t_lesion = self.t_consolidation = np.inf
        self.target_fraction = spec.lesion_fraction
        if spec.pattern == "none":
            return
        lung = lungs.lobe > 0
        f: dict[str, Any] = spec.factors["lesion"]
        x, y, z = grid.points()
        shape = grid.shape
        hila = {side: np.mean([roots[f"artery_{side}"][0], roots[f"airway_{side}"][0]], axis=0) for side in "RL"}
        if spec.pattern == "covid":
            field, order = self._covid(f, patient, lungs, grid, rng)
        else:
            lobe_name = f.get("lobe")
            if lobe_name is None:  # focal: a lobe by volume
                counts = np.bincount(lungs.lobe[lung], minlength=6)[1:].astype(float)
                lobe = int(rng.choice(5, p=counts / counts.sum())) + 1
            else:
                lobe = _LOBE_INDEX[str(lobe_name)]
            self.lobe_target = lobe
            in_lobe = lungs.lobe == lobe
            hilum = hila["R" if lobe <= 3 else "L"]
            dist = np.sqrt((x - hilum[0]) ** 2 + (y - hilum[1]) ** 2 + (z - hilum[2]) ** 2)
            if spec.pattern == "lobar":
                field = dist / max(float(dist[in_lobe].max()), 1.0) + 0.06 * _noise(shape, 2.0, rng)
            elif spec.pattern == "segmental":
                k, j, i = np.nonzero(in_lobe & (lungs.depth < 5.0) & (dist > np.median(dist[in_lobe])))
                pick = int(rng.integers(len(k)))
                target = grid.origin + np.array([i[pick], j[pick], k[pick]]) * grid.spacing
                axis = (target - hilum) / np.linalg.norm(target - hilum)
                cos = ((x - hilum[0]) * axis[0] + (y - hilum[1]) * axis[1] + (z - hilum[2]) * axis[2]) / np.maximum(
                    dist, 1.0
                )
                near = dist < 0.3 * np.linalg.norm(target - hilum)
                field = cos + 0.02 * _noise(shape, 1.5, rng) - 2.0 * near
            else:
                field = self._focal(f, lungs, in_lobe, grid, rng)
            field = np.where(in_lobe, field, _OUTSIDE).astype(np.float32)
            order = field
        values = field[lung]
        n_lesion = round(spec.lesion_fraction * values.size)
        n_lesion = min(max(n_lesion, 1), values.size - 1)
        if self.lobe_target:
            n_lesion = min(n_lesion, int(0.98 * np.count_nonzero(lungs.lobe == self.lobe_target)))
        self.t_lesion = float(np.partition(values, values.size - n_lesion)[values.size - n_lesion])
        lesion = lung & (field >= self.t_lesion)
        share = self._consolidation_share(spec, f)
        ranked = order[lesion]
        n_cons = round(share * ranked.size)
        if n_cons > 0:
            self.t_consolidation = float(np.partition(ranked, ranked.size - n_cons)[ranked.size - n_cons])
        self.order_offset = lungs.extend((order - field).astype(np.float32)) if spec.pattern == "covid" else None
        if self.lobe_target:  # read back only the target lobe's values near its fissures
            _, nearest = ndimage.distance_transform_edt(lungs.lobe != self.lobe_target, return_indices=True)
            self.field = field[tuple(nearest)].astype(np.float32)
        else:
            self.field = lungs.extend(field)
        if spec.pattern == "covid" and f.get("crazy_paving"):
            band = _noise(shape, 1.0, rng) - _noise(shape, 2.2, rng)
            self.crazy_paving = (band / max(float(band.std()), 1e-6)).astype(np.float32)

    # ------------------------------------------------------------------ fields

    def _covid(
        self, f: dict[str, Any], patient: Patient, lungs: LungMap, grid: CoarseGrid, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        lung = lungs.lobe > 0
        x, y, z = grid.points()
        shape = grid.shape
        z_mid = patient.z_dome_r + 90.0 * patient.h
        pleura = lungs.pleura if lungs.pleura is not None else lungs.depth
        lateral = 1.0 / (1.0 + np.exp(-(np.abs(x) - 45.0 * patient.w) / 15.0))  # away from the mediastinum
        prior = (
            np.exp(-pleura / float(f["subpleural_mm"]))
            * (0.3 + lateral)
            * (0.45 + 1.0 / (1.0 + np.exp(-(y - 10.0) / 30.0)))
            * (0.5 + 1.0 / (1.0 + np.exp((z - z_mid) / 45.0)))
        )
        prior = np.where(lung, prior, 0.0)
        right_only = not f["bilateral"] and rng.random() < 0.5
        weights = prior.copy()
        if not f["bilateral"]:
            weights[(lungs.lobe <= 3) != right_only] = 0.0
        flat = weights.ravel() / weights.sum()
        picks = rng.choice(flat.size, size=int(f["foci"]), p=flat)
        field = np.zeros(shape, dtype=np.float32)
        fraction = self.target_fraction
        for idx in picks:
            k, j, i = np.unravel_index(idx, shape)
            c = grid.origin + np.array([i, j, k]) * grid.spacing
            normal = lungs.gradient[:, k, j, i].astype(np.float64)
            normal /= max(float(np.linalg.norm(normal)), 1e-6)
            s_t = float(rng.uniform(10.0, 30.0)) * (1.0 + 1.5 * fraction)
            s_n = float(rng.uniform(6.0, 16.0)) * (1.0 + 1.0 * fraction)
            reach = 3.0 * s_t
            lo = np.maximum(np.floor((c - reach - grid.origin) / grid.spacing).astype(int), 0)
            hi = np.minimum(np.ceil((c + reach - grid.origin) / grid.spacing).astype(int) + 1, shape[::-1])
            bx, by, bz = grid.xs[lo[0] : hi[0]], grid.ys[lo[1] : hi[1]], grid.zs[lo[2] : hi[2]]
            dx, dy, dz = bx[None, None, :] - c[0], by[None, :, None] - c[1], bz[:, None, None] - c[2]
            dn = dx * normal[0] + dy * normal[1] + dz * normal[2]
            dt2 = dx * dx + dy * dy + dz * dz - dn * dn
            amp = float(rng.uniform(0.6, 1.4))
            blob = amp * np.exp(-(dn * dn) / (2 * s_n * s_n) - dt2 / (2 * s_t * s_t))
            field[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] += blob.astype(np.float32)
        field *= 1.0 + 0.35 * _noise(shape, 1.5, rng)
        field += 0.12 * prior + 0.04 * _noise(shape, 1.0, rng)
        order = field + 0.15 * (1.0 / (1.0 + np.exp(-(y - 20.0) / 25.0)))
        return field, order.astype(np.float32)

    def _focal(
        self, f: dict[str, Any], lungs: LungMap, in_lobe: np.ndarray, grid: CoarseGrid, rng: np.random.Generator
    ) -> np.ndarray:
        radius = 0.5 * float(f["diameter_mm"]) + float(f["halo_mm"])
        ok = in_lobe & (lungs.depth >= min(0.6 * radius, 15.0))
        if not ok.any():
            ok = in_lobe & (lungs.depth >= lungs.depth[in_lobe].max() * 0.7)
        k, j, i = np.nonzero(ok)
        pick = int(rng.integers(len(k)))
        c = grid.origin + np.array([i[pick], j[pick], k[pick]]) * grid.spacing
        x, y, z = grid.points()
        dist = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        lobulation = float(f["lobulation"])
        return -dist * (1.0 + lobulation * _noise(grid.shape, 2.0, rng))

    def _consolidation_share(self, spec: IndependentSpec, f: dict[str, Any]) -> float:
        if spec.pattern == "covid":
            return float(f["consolidation_share"])
        if spec.pattern == "focal":
            halo = float(f["halo_mm"])
            core = 0.5 * float(f["diameter_mm"])
            return (core / (core + halo)) ** 3
        return 1.0 - float(f["ggo_share"])

    # ------------------------------------------------------------------ per plane

    def plane(
        self, z: float, rows: slice, cols: slice, lung: np.ndarray, lobe: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Lesion class (0, :data:`GGO`, :data:`CONSOLIDATION`), ground-glass density (0..1) and septal lines.

        Args:
            z: height of the fine plane.
            rows, cols: the window of the plane.
            lung: lung membership on the window.
            lobe: lobe index on the window.
        """
        cls = np.zeros(lung.shape, dtype=np.uint8)
        if self.field is None:
            return cls, np.zeros(lung.shape, dtype=np.float32), None
        field = self.grid.plane(self.field, z, rows, cols)
        region = lung & (field >= self.t_lesion)
        if self.lobe_target:
            region &= lobe == self.lobe_target
        cls[region] = GGO
        order = field if self.order_offset is None else field + self.grid.plane(self.order_offset, z, rows, cols)
        cls[region & (order >= self.t_consolidation)] = CONSOLIDATION
        span = max(self.t_consolidation - self.t_lesion, 1e-3) if np.isfinite(self.t_consolidation) else 0.3
        density = np.clip((field - self.t_lesion) / span, 0.0, 1.0)
        lines = None
        if self.crazy_paving is not None:
            lines = np.abs(self.grid.plane(self.crazy_paving, z, rows, cols))
        return cls, density.astype(np.float32), lines
