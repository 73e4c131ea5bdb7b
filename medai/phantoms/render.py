"""The phantom anatomy on a voxel grid: partial-volume tissue fractions, HU and the layers lesions need.

:func:`render_anatomy` samples an :class:`medai.phantoms.anatomy.Anatomy` (continuous LPS millimetres) on a
:class:`medai.phantoms.anatomy.Grid`: body, fat, muscle, the thoracic cavity, abdomen, lungs, heart, spine, ribs,
sternum, vessels and airways, each with soft edges one voxel wide (partial volume). The lung layers
(parenchyma, vessel, lumen, wall, fissure fractions) are kept apart for :mod:`medai.phantoms.pathology`.

Used by :mod:`medai.phantoms.synthetic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medai.phantoms.abdomen import paint_abdomen
from medai.phantoms.anatomy import (
    Anatomy,
    Enhancement,
    Grid,
    SmoothField,
    Tissue,
    ellipse_sdf,
    ellipsoid_sdf,
    enhancement,
)

__all__ = ["AnatomyImage", "draw_segments", "render_anatomy"]


def _coverage(sdf: np.ndarray, h: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (mm) with an edge one voxel (h mm) wide."""
    return np.clip(0.5 - sdf / h, 0.0, 1.0).astype(np.float32, copy=False)


def draw_segments(
    out: np.ndarray,
    grid: Grid,
    start: np.ndarray,
    end: np.ndarray,
    radius: np.ndarray,
    *,
    box: tuple[slice, slice, slice] | None = None,
) -> None:
    """Max-accumulate the partial-volume fraction of cylinders into ``out``.

    Segments thinner than half a voxel are splatted (trilinear, volume
    preserving), thicker ones are rasterised by distance with a soft edge.
    ``out`` covers ``grid`` restricted to ``box``.
    """
    if len(radius) == 0:
        return
    sub = Grid(*(a[s] for a, s in zip((grid.z, grid.y, grid.x), box or (slice(None),) * 3, strict=True)))
    spacing = np.array(sub.spacing)
    h = float(np.sqrt(spacing[1] * spacing[2]))
    thin = radius < 0.5 * h
    _splat(out, sub, start[thin], end[thin], radius[thin])
    for p0, p1, r in zip(start[~thin], end[~thin], radius[~thin], strict=True):
        lo, hi = np.minimum(p0, p1) - r - h, np.maximum(p0, p1) + r + h
        b = sub.box(lo, hi)
        if b is None:
            continue
        z, y, x = sub.axes(b)
        d = (p1 - p0).astype(np.float32)
        dd = max(float(d @ d), 1e-6)
        px, py, pz = x - np.float32(p0[0]), y - np.float32(p0[1]), z - np.float32(p0[2])
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0, 1)
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        np.maximum(out[b], _coverage(dist - np.float32(r), h), out=out[b])


def _splat(out: np.ndarray, grid: Grid, start: np.ndarray, end: np.ndarray, radius: np.ndarray) -> None:
    if len(radius) == 0:
        return
    spacing = np.array(grid.spacing)
    step = 0.5 * float(spacing.min())
    length = np.linalg.norm(end - start, axis=1)
    n = np.maximum(np.ceil(length / step).astype(int), 1)
    seg = np.repeat(np.arange(len(n)), n)
    first = np.cumsum(n) - n
    t = (np.arange(len(seg)) - first[seg] + 0.5) / n[seg]
    pts = start[seg] + t[:, None] * (end - start)[seg]
    weight = np.pi * radius[seg] ** 2 * (length / n)[seg] / float(np.prod(spacing))
    origin = np.array([grid.z[0], grid.y[0], grid.x[0]])
    idx = (pts[:, ::-1] - origin) / spacing
    base = np.floor(idx).astype(np.intp)
    frac = idx - base
    shape = np.array(out.shape)
    flat = out.reshape(-1)
    for corner in np.ndindex(2, 2, 2):
        c = base + np.array(corner)
        w = weight * np.prod(np.where(np.array(corner), frac, 1 - frac), axis=1)
        ok = np.all((c >= 0) & (c < shape), axis=1)
        np.add.at(flat, np.ravel_multi_index(c[ok].T, out.shape), w[ok].astype(np.float32))
    np.minimum(out, 1.0, out=out)


@dataclass(frozen=True, eq=False)
class AnatomyImage:
    """A rendered patient without lung parenchyma values.

    ``hu`` holds every tissue except the lungs, whose HU enter as
    ``hu + lung_weight * lung_hu`` (``lung_weight`` is the lung's partial-volume
    share left after everything painted over it). The intrapulmonary layers
    cover ``box`` only.
    """

    hu: np.ndarray  # float32 (z, y, x)
    tissue: np.ndarray  # uint8 Tissue codes
    box: tuple[slice, slice, slice]  # lung bounding box in the grid
    lung_weight: np.ndarray  # float32 over box
    parenchyma: np.ndarray  # float32 over box: lung HU without lesions
    vessel: np.ndarray  # float32 over box: vessel fraction
    vessel_hu: np.ndarray  # float32 over box: HU of that vessel blood (arteries and veins differ with contrast)
    lumen: np.ndarray  # float32 over box: airway lumen fraction
    wall: np.ndarray  # float32 over box: airway wall fraction
    fissure: np.ndarray  # float32 over box: fissure fraction (thin line, partial volume)


def _superellipse_sdf(x: np.ndarray, y: np.ndarray, a: float, b: float, p: float) -> np.ndarray:
    ax, ay = np.abs(x) / a + 1e-6, np.abs(y) / b + 1e-6
    q = (ax**p + ay**p) ** (1 / p)
    gx, gy = ax ** (p - 1) / a, ay ** (p - 1) / b
    return (q - 1) / np.maximum(np.sqrt(gx * gx + gy * gy) * q ** (1 - p), 1e-6)


def render_anatomy(
    a: Anatomy,
    grid: Grid,
    rng: np.random.Generator,
    *,
    z_align: int = 1,
    enhance: Enhancement | None = None,
    arms: str = "none",
) -> AnatomyImage:
    """Sample the patient on ``grid`` (partial volume, noise-free; texture from ``rng``).

    The lung box starts and ends on multiples of ``z_align`` slices (for slice-profile averaging).
    ``enhance`` gives the blood and organ HU of the contrast phase (default: unenhanced); ``arms`` is
    ``none`` (out of the field), ``down`` (beside the chest, often cut by the field of view) or ``up``
    (beside the head: in the slices above the lung apices).
    """
    if arms not in ("none", "up", "down"):
        raise ValueError(f"arms must be 'none', 'up' or 'down', not {arms!r}")
    enhance = enhance or enhancement(a, "none", 0.0)
    z, y, x = grid.axes()
    _, sy, sx = grid.spacing
    h = float(np.sqrt(sy * sx))
    A, B, H, s = a.half_width, a.half_depth, a.height, a.scale
    hu = np.full(grid.shape, -1000.0, np.float32)
    tissue = np.zeros(grid.shape, np.uint8)

    def paint(frac: np.ndarray, value: float | np.ndarray, code: Tissue, box: tuple[slice, ...] | None = None) -> None:
        b = box or (slice(None),) * 3
        target = hu[b]
        target += frac * (np.asarray(value, np.float32) - target)
        t = tissue[b]
        t[np.broadcast_to(frac >= 0.5, t.shape)] = code

    # table (constant along z) and body outline
    fat = a.fat_mm + a.extra_fat_mm
    front = -(B + 10 * s + a.muscle_mm + fat)
    back = B + 10 * s + a.back_muscle_mm + 0.6 * fat
    ab, bb, cyb = A + 10 * s + a.muscle_mm + fat, (back - front) / 2, (back + front) / 2
    y_table = back + 2 - x**2 / 1400.0
    top = _coverage(np.abs(y - y_table - 1.5) - 1.5, h) * (np.abs(x) < 230)
    foam = _coverage(np.abs(y - y_table - 20) - 15, h) * (np.abs(x) < 225)
    bottom = _coverage(np.abs(y - y_table - 38) - 1.5, h) * (np.abs(x) < 220)
    for frac, value in ((foam, -900.0), (top, 180.0), (bottom, 180.0)):
        paint(np.broadcast_to(frac, (1, *frac.shape[1:])), value, Tissue.TABLE)
    body = _superellipse_sdf(x, y - cyb, ab, bb, a.body_exponent)  # constant along z: (1, ny, nx)
    paint(np.broadcast_to(_coverage(body, h), (1, *body.shape[1:])), a.fat_hu, Tissue.FAT)
    if a.female:
        for side in (-1, 1):
            centre = np.array([side * 0.45 * A, front + 5, 0.45 * H])
            semi = np.array([55 * s, 30 * s + a.fat_mm, 55 * s])
            bbox = grid.box(centre - semi - 2, centre + semi + 2)
            if bbox is not None:
                bz, by, bx = grid.axes(bbox)
                sdf = ellipsoid_sdf(bx - centre[0], by - centre[1], bz - centre[2], *semi)
                paint(_coverage(sdf, h), a.fat_hu + 45, Tissue.FAT, bbox)
    inner = _superellipse_sdf(x, y - cyb - 0.2 * fat, ab - fat, bb - 0.8 * fat, 2.2)
    paint(_coverage(inner, h), a.muscle_hu, Tissue.SOFT_TISSUE)
    if arms != "none":
        _paint_arms(a, grid, h, paint, arms=arms, half_width=ab, centre_y=cyb)

    # thoracic cavity: mediastinal fat, abdomen below the diaphragm, lungs, heart
    cav = a.cavity_sdf(x, y, z)
    paint(_coverage(cav, h), a.fat_hu + 5, Tissue.FAT)
    abox = grid.box(np.array([-A - 5, -B - 5, -1e4]), np.array([A + 5, 1.2 * B, max(a.dome) + 10]))
    if abox is not None:
        az, ay, ax = grid.axes(abox)
        abdomen = _coverage(np.maximum(cav[abox] + 2, az - a.diaphragm(ax, ay) + 3), h)
        paint_abdomen(a, grid, abox, abdomen, paint, _coverage, h, enhance)
    box = grid.box(np.array([-A - 4, -B - 4, -0.08 * H - 4]), np.array([A + 4, 1.15 * B + 4, H + 4]))
    if box is None:
        box = (slice(0, 0),) * 3
    zs = box[0]
    box = (slice(zs.start // z_align * z_align, -(-zs.stop // z_align) * z_align), box[1], box[2])
    bz, by, bx = grid.axes(box)
    lung = _coverage(a.lung_sdf(bx, by, bz), h)
    paint(lung, 0.0, Tissue.LUNG, box)
    weight = lung.copy()

    def paint_over(frac: np.ndarray, value: float | np.ndarray, code: Tissue, b: tuple[slice, ...] | None) -> None:
        paint(frac, value, code, b)
        if b is None:
            weight[...] *= 1 - frac[box]
            return
        inter = [slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(b, box, strict=True)]
        if all(sl.stop > sl.start for sl in inter):
            lb = tuple(slice(sl.start - q.start, sl.stop - q.start) for sl, q in zip(inter, box, strict=True))
            fb = tuple(slice(sl.start - p.start, sl.stop - p.start) for sl, p in zip(inter, b, strict=True))
            weight[lb] *= 1 - np.broadcast_to(frac, tuple(sl.stop - sl.start for sl in b))[fb]

    hx, hy, hz, ha, hb, hc, _ = a.heart
    reach = max(ha, hb) + 8 * s
    hbox = grid.box(np.array([hx - reach, hy - reach, hz - hc - 8]), np.array([hx + reach, hy + reach, hz + hc + 8]))
    if hbox is not None:
        hzz, hyy, hxx = grid.axes(hbox)
        heart = a.heart_sdf(hxx, hyy, hzz)
        above = hzz > a.diaphragm(hxx, hyy) - 22
        paint(_coverage(heart - 3 * s, h) * above, a.fat_hu, Tissue.FAT, hbox)
        paint(_coverage(heart, h) * above, enhance.heart_hu, Tissue.BLOOD, hbox)

    # spine: vertebral bodies with discs, canal, posterior elements (2D profile x z-phase)
    yc = a.spine_y + a.spine_radius + 8 * s
    sbox = grid.box(np.array([-40 * s, a.spine_y - a.spine_radius - 4, -1e4]), np.array([40 * s, yc + 45 * s, 1e4]))
    sbox = sbox or (slice(0, 0),) * 3
    z, y, x = grid.axes(sbox)
    phase = ((z - a.rib_phase * a.rib_pitch) / a.rib_pitch) % 1.0
    vb = np.hypot(x / 1.15, y - a.spine_y) - a.spine_radius
    cortex = np.float32(280) + np.float32(600) * np.clip(1 + vb / (2.0 * s), 0, 1)
    disc = (phase < 0.16).astype(np.float32)
    paint(_coverage(vb, h) * (1 - disc), cortex, Tissue.BONE, sbox)
    paint(_coverage(vb, h) * disc, 85.0, Tissue.SOFT_TISSUE, sbox)
    canal = np.hypot(x, y - yc) - 8 * s
    arch = np.maximum(np.hypot(x, y - yc) - 14 * s, -canal)
    spinous = np.maximum(np.abs(x) - 4 * s, np.abs(y - yc - 26 * s) - 15 * s)
    transverse = np.maximum(np.abs(x) - 30 * s, np.abs(y - yc + 2 * s) - 5 * s)
    present = ((phase > 0.25) & (phase < 0.8)).astype(np.float32)
    posterior = _coverage(np.minimum(arch, np.minimum(spinous, transverse) + 1000 * (1 - present)), h)
    paint(posterior, 600.0, Tissue.BONE, sbox)
    paint(np.broadcast_to(_coverage(canal, h), posterior.shape), 15.0, Tissue.SOFT_TISSUE, sbox)
    z, y, x = grid.axes()

    # ribs in a shell outside the cavity; costal cartilage anteriorly; sternum
    rt = 9 * s
    _ca, _cb, ccy = a.cavity(z)
    shell = (cav > -1) & (cav < rt + 3) & (z > -0.15 * H) & (z < 1.1 * H)
    idx = np.nonzero(shell)
    zz, yy, xx = (np.broadcast_to(v, grid.shape)[idx] for v in (z, y, x))
    theta = np.arctan2(xx, yy - np.broadcast_to(ccy, grid.shape)[idx])
    u = (zz + a.rib_drop * (1 - np.cos(theta)) / 2) / a.rib_pitch + a.rib_phase
    hr = 0.42 * a.rib_pitch
    v = (u % 1.0) * a.rib_pitch
    e = np.sqrt(((v - hr / 2) / (hr / 2)) ** 2 + ((cav[idx] - rt / 2 - 1) / (rt / 2)) ** 2)
    ok = (u > 1) & (u < 13) & (np.abs(theta) > 0.25) & (np.abs(theta) < 2.85)
    frac_rib = _coverage((e - 1) * min(hr, rt) / 2, h) * ok
    cartilage = np.abs(theta) > 2.45
    rib_hu = np.where(cartilage, 120.0, 300 + 550 * np.clip((e - 0.6) / 0.4, 0, 1)).astype(np.float32)
    hu[idx] += frac_rib * (rib_hu - hu[idx])
    tissue[tuple(i[frac_rib >= 0.5] for i in idx)] = Tissue.BONE
    stbox = grid.box(np.array([-20 * s, -B - rt - 12, 0.3 * H]), np.array([20 * s, -0.7 * B, 0.88 * H]))
    if stbox is not None:
        stz, sty, stx = grid.axes(stbox)
        sternum = ellipse_sdf(stx, sty + a.cavity(stz)[1] + rt / 2 + 1, 15 * s, 6 * s)
        paint(_coverage(sternum, h), 350.0, Tissue.BONE, stbox)

    # mediastinal tubes: great vessels, trachea and main bronchi (with walls), oesophagus
    # blood by tube index (see medai.phantoms.anatomy._mediastinal_tubes): aorta, pulmonary arteries, veins, SVC
    tube_blood = {5: enhance.pulmonary_artery_hu, 6: enhance.pulmonary_artery_hu, 10: enhance.pulmonary_artery_hu}
    tube_blood.update({12: enhance.vein_hu, 13: enhance.vein_hu, 14: enhance.systemic_vein_hu})
    for index, (p0, p1, r, kind) in enumerate(a.tubes):
        lo, hi = np.minimum(p0, p1) - r - 3 - h, np.maximum(p0, p1) + r + 3 + h
        b = grid.box(lo, hi)
        if b is None:
            continue
        blood = tube_blood.get(index, enhance.vein_hu)
        layers = [(r, blood, Tissue.BLOOD)] if kind == "blood" else [(r, 35.0, Tissue.SOFT_TISSUE)]
        if kind == "air":
            layers = [(r + 1.5 * s, 30.0, Tissue.SOFT_TISSUE), (r, -1000.0, Tissue.AIR)]
        for radius, value, code in layers:
            frac = np.zeros(hu[b].shape, np.float32)
            draw_segments(frac, grid, p0[None], p1[None], np.array([radius]), box=b)
            paint_over(frac, value, code, b)

    # intrapulmonary layers: parenchyma texture, vessels, airways, fissures
    shape = weight.shape
    field_rng = np.random.default_rng([a.seed, 3])
    lo, hi = np.array([-A, -B, -0.1 * H]), np.array([A, 1.2 * B, H])
    medium = SmoothField(field_rng, lo, hi, 5.0 * s).on_grid(grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])
    fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, 0.7, 0.7))
    fine *= 14.0 / max(float(fine.std()), 1e-6)
    gravity = np.float32(a.gravity_hu) * np.clip((by - ccy[box[0]] if ccy.ndim else by) / B, -1, 1) * 0.5
    parenchyma = np.float32(a.lung_hu) + gravity + 9.0 * medium + fine
    artery, vein = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for tree in a.arteries:
        draw_segments(artery, grid, tree.start, tree.end, tree.radius, box=box)
    for tree in a.veins:
        draw_segments(vein, grid, tree.start, tree.end, tree.radius, box=box)
    vessel = np.maximum(artery, vein)
    pa, pv = np.float32(enhance.pulmonary_artery_hu), np.float32(enhance.vein_hu)
    vessel_hu = np.where(artery >= vein, pa, pv).astype(np.float32) if pa != pv else np.full(shape, pa, np.float32)
    lumen, outer = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for tree in a.airways:
        draw_segments(lumen, grid, tree.start, tree.end, tree.radius, box=box)
        draw_segments(outer, grid, tree.start, tree.end, tree.radius * 1.22 + 0.25 * s, box=box)
    wall = np.clip(outer - lumen, 0, 1)
    hf = max(h, grid.spacing[0])
    fissure = np.clip(1 - a.fissure_distance(bx, by, bz) / hf, 0, 1) * np.float32(min(1.0, 0.25 / hf))
    return AnatomyImage(hu, tissue, box, weight, parenchyma.astype(np.float32), vessel, vessel_hu, lumen, wall, fissure)


def _paint_arms(
    a: Anatomy, grid: Grid, h: float, paint: object, *, arms: str, half_width: float, centre_y: float
) -> None:
    """Arms beside the chest (``down``) or beside the head above the lung apices (``up``): fat, muscle, humerus."""
    s = a.scale
    z, y, x = grid.axes()
    r_arm = 42 * s + 0.5 * a.extra_fat_mm
    for side in (-1, 1):
        if arms == "down":
            cx, cy = side * (half_width + 8 * s + r_arm), centre_y + 10 * s
            level = np.ones_like(z)
        else:
            cx, cy = side * (0.55 * a.half_width + r_arm), centre_y - 15 * s
            level = np.clip((z - (a.height + 25 * s)) / 10.0, 0, 1)
        if arms == "up" and not (level > 0).any():
            continue
        outer = np.hypot(x - cx, y - cy) - r_arm
        muscle = np.hypot(x - cx, y - cy) - (r_arm - 8 * s - 0.5 * a.extra_fat_mm)
        bone = np.hypot(x - cx, y - cy) - 11 * s
        for sdf, value, code in ((outer, a.fat_hu, Tissue.FAT), (muscle, a.muscle_hu, Tissue.SOFT_TISSUE)):
            paint(np.broadcast_to(_coverage(sdf, h), (1, *sdf.shape[1:])) * level, value, code)  # type: ignore[operator]
        paint(np.broadcast_to(_coverage(bone, h), (1, *bone.shape[1:])) * level, 700.0, Tissue.BONE)  # type: ignore[operator]
