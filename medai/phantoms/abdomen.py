"""The upper abdomen under the diaphragm: liver, spleen, stomach, gas-filled colon and bowel, kidneys.

Most clinical chest CTs reach into the upper abdomen, and the gas there (the stomach's air cap, the
splenic flexure and transverse colon with mottled stool, small-bowel loops) sits a few millimetres under
the lung bases. A lung segmentation that has only seen a uniform abdomen takes that gas for lung. Every
organ here is painted inside the abdominal cavity below the diaphragm, so none of it enters the lung
ground truth.

Layout and contents come from the patient's ``bowel_seed``: the same patient, the same bowel, at any
resolution. Used by :func:`medai.phantoms.render.render_anatomy`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from medai.phantoms.anatomy import Anatomy, Enhancement, Grid, SmoothField, Tissue, ellipsoid_sdf

__all__ = ["paint_abdomen"]

Paint = Callable[..., None]


def _tube_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance to a polyline tube of ``radius`` through ``points`` (n, 3 LPS mm)."""
    out = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.inf, np.float32)
    for p0, p1 in itertools.pairwise(points):
        d = (p1 - p0).astype(np.float32)
        dd = max(float(d @ d), 1e-6)
        px, py, pz = x - np.float32(p0[0]), y - np.float32(p0[1]), z - np.float32(p0[2])
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0, 1)
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        np.minimum(out, dist, out=out)
    return out - np.float32(radius)


def paint_abdomen(
    a: Anatomy,
    grid: Grid,
    box: tuple[slice, slice, slice],
    abdomen: np.ndarray,
    paint: Paint,
    coverage: Callable[[np.ndarray, float], np.ndarray],
    h: float,
    enhance: Enhancement,
) -> None:
    """Paint the abdominal organs into ``box`` of the image, inside the cavity fraction ``abdomen``.

    Args:
        a: the patient.
        grid: the image grid; ``box`` the part of it under the diaphragm.
        abdomen: partial-volume fraction of the abdominal cavity over ``box`` (0 above the diaphragm).
        paint: the renderer's ``paint(fraction, hu, tissue_code, box)``.
        coverage: signed distance -> partial-volume fraction.
        h: in-plane voxel size (mm) for the soft edges.
        enhance: HU of the organs in this scan's contrast phase.
    """
    rng = np.random.default_rng(a.bowel_seed)
    A, B, s = a.half_width, a.half_depth, a.scale
    dome_r, dome_l = a.dome
    z, y, x = grid.axes(box)
    inside = abdomen
    # intra-abdominal fat between the organs (more in obese patients), then the organs over it
    paint(inside, a.fat_hu + 25 - 0.4 * a.extra_fat_mm, Tissue.FAT, box)

    liver = ellipsoid_sdf(x + 0.32 * A, y - 0.05 * B, z - (dome_r - 75 * s), 0.85 * A, 1.05 * B, 120 * s)
    paint(coverage(liver, h) * inside, enhance.liver_hu, Tissue.SOFT_TISSUE, box)
    spleen = ellipsoid_sdf(x - 0.72 * A, y - 0.5 * B, z - (dome_l - 50 * s), 26 * s, 50 * s, 55 * s)
    paint(coverage(spleen, h) * inside, enhance.spleen_hu, Tissue.SOFT_TISSUE, box)
    for side in (-1, 1):
        kz = min(dome_r, dome_l) - rng.uniform(130, 170) * s
        kidney = ellipsoid_sdf(x - side * 0.42 * A, y - 0.62 * B, z - kz, 28 * s, 24 * s, 55 * s)
        paint(coverage(kidney, h) * inside, enhance.kidney_hu, Tissue.SOFT_TISSUE, box)

    # muscles beside the spine under the diaphragm: the crura and psoas (widening downwards) and the quadratus
    # lumborum behind the kidneys. Dense tissue where the posterior lung recesses end: not lung, not opacity.
    top = max(dome_r, dome_l) - 10 * s
    depth_below = np.clip((top - z) / (150 * s), 0, 1)
    for side in (-1, 1):
        psoas = np.hypot(x - side * (a.spine_radius + 14 * s), y - (a.spine_y - 0.1 * a.spine_radius))
        psoas = psoas - (7 + 16 * depth_below) * s
        paint(coverage(np.maximum(psoas, z - top), h) * inside, a.muscle_hu, Tissue.SOFT_TISSUE, box)
        quadratus = np.hypot((x - side * (a.spine_radius + 48 * s)) / 1.6, y - (a.spine_y + 0.3 * a.spine_radius))
        quadratus = quadratus - 12 * s * np.clip(depth_below * 2, 0.3, 1)
        paint(coverage(np.maximum(quadratus, z - top), h) * inside, a.muscle_hu, Tissue.SOFT_TISSUE, box)

    lo, hi = np.array([-A, -B, dome_l - 400 * s]), np.array([A, B, max(dome_r, dome_l)])
    mottle = SmoothField(rng, lo, hi, 4.0 * s).on_grid(grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])

    # stomach under the left dome: food or fluid, an air cap anteriorly (the patient lies supine)
    sc = np.array([0.38 * A, -0.15 * B, dome_l - 50 * s])
    semi = np.array([55.0, 42.0, 52.0]) * s * rng.uniform(0.8, 1.2)
    stomach = coverage(ellipsoid_sdf(x - sc[0], y - sc[1], z - sc[2], *semi), h) * inside
    content = np.float32(rng.uniform(10, 40)) + 25 * mottle * np.float32(rng.uniform(0.2, 1.0))
    paint(stomach, content, Tissue.SOFT_TISSUE, box)
    if a.gastric_bubble:
        level = sc[1] - semi[1] * (1 - 2 * rng.uniform(0.15, 0.55))  # air above this (anterior, smaller y)
        paint(stomach * coverage(y - np.float32(level), h), -1000.0, Tissue.AIR, box)

    # colon: splenic flexure high under the left dome, transverse colon anteriorly, hepatic flexure
    bend = rng.uniform(-15, 15, (5, 3)) * s
    path = (
        np.array(
            [
                [0.72 * A, 0.35 * B, dome_l - 140 * s],
                [0.78 * A, 0.05 * B, dome_l - 45 * s],
                [0.55 * A, -0.55 * B, dome_l - 55 * s],
                [-0.45 * A, -0.7 * B, min(dome_r, dome_l) - 95 * s],
                [-0.72 * A, -0.2 * B, dome_r - 130 * s],
            ]
        )
        + bend
    )
    colon = coverage(_tube_sdf(x, y, z, path, rng.uniform(17, 27) * s), h) * inside
    gas_share = rng.uniform(0.25, 0.85)
    gas = coverage(np.float32(np.quantile(mottle, 1 - gas_share)) - mottle, 1.0)
    stool = np.float32(rng.uniform(-60, 20)) + 45 * mottle
    paint(colon, stool, Tissue.SOFT_TISSUE, box)
    paint(colon * gas, -1000.0, Tissue.AIR, box)

    # small-bowel loops lower down: fluid, thin enhancing walls, some gas
    for _ in range(int(rng.integers(4, 11))):
        start = np.array(
            [rng.uniform(-0.6, 0.6) * A, rng.uniform(-0.8, 0.2) * B, min(dome_r, dome_l) - rng.uniform(90, 220) * s]
        )
        steps = rng.normal(0, 25 * s, (4, 3))
        loop = np.cumsum(np.vstack([start, steps]), axis=0)
        r = rng.uniform(9, 14) * s
        sdf = _tube_sdf(x, y, z, loop, r)
        paint(coverage(sdf, h) * inside, np.float32(enhance.kidney_hu * 0.2 + 30), Tissue.SOFT_TISSUE, box)
        paint(coverage(sdf + 2 * s, h) * inside, np.float32(rng.uniform(5, 30)), Tissue.SOFT_TISSUE, box)
        if rng.random() < 0.5:
            bubble = coverage(sdf + 2 * s, h) * coverage(y - np.float32(loop[:, 1].mean() - 0.3 * r), h)
            paint(bubble * inside, -1000.0, Tissue.AIR, box)
