"""The organs as solids: mediastinal tubes and blobs, abdominal organs, ribs, clavicles and arms.

Positions are anatomical landmarks scaled by the patient's width (``x``),
depth (``y``) and height (``z``) scales and jittered per patient. Each
solid carries the tissue it paints and the fat margin it keeps from the lungs
(what makes the mediastinum and the hila). Built once per case by
:func:`build_organs`; painted by :mod:`~medai.phantoms.independent.voxelize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medai.phantoms.independent.patient import N_THETA, Patient
from medai.phantoms.independent.shapes import Blob, Tube
from medai.phantoms.independent.tissue import Label

__all__ = ["Organs", "Painted", "RibCage", "build_organs"]


@dataclass
class Painted:
    """A solid with what it paints.

    Attributes:
        shape: the :class:`Tube` or :class:`Blob`.
        label: tissue inside.
        margin_mm: fat kept between it and the lungs (0: none).
        wall_mm: wall thickness painted as ``wall_label`` (0: none).
        wall_label: tissue of the wall.
        over: labels it may overwrite (None: any but bone).
    """

    shape: Tube | Blob
    label: Label
    margin_mm: float = 0.0
    wall_mm: float = 0.0
    wall_label: Label = Label.AIR
    over: frozenset[Label] | None = None


@dataclass
class Organs:
    """Every solid of one patient, in painting order, and the roots of the lung trees."""

    mediastinum: list[Painted] = field(default_factory=list)
    heart: Blob | None = None
    chambers: list[tuple[Blob, Label]] = field(default_factory=list)
    pericardial_fat_mm: float = 5.0
    neck: list[Painted] = field(default_factory=list)
    abdomen: list[Painted] = field(default_factory=list)
    stomach: Blob | None = None
    stomach_gas_y: float = 0.0
    stomach_food: bool = False
    gut: list[tuple[Tube, float, float]] = field(default_factory=list)  # (tube, gas level y, wall mm): colon, bowel
    liver_edge: tuple[float, float, float] = (0.0, 0.0, 0.0)
    liver_bottom: tuple[float, float] = (0.0, 0.0)
    spleen: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    bones: list[Painted] = field(default_factory=list)
    ribs: RibCage | None = None
    humerus_heads: list[Blob] = field(default_factory=list)
    arms: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (z, x, y, rx, ry) knots per arm
    septum_mm: float = 3.0
    septum_below: float = -1e9
    roots: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)


def _axes(e1: tuple[float, float, float], hint: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(e1, dtype=np.float64)
    a /= np.linalg.norm(a)
    b = np.asarray(hint, dtype=np.float64)
    b = b - (b @ a) * a
    b /= np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


_EYE = np.eye(3)
_SOFT = frozenset({Label.LUNG_R, Label.LUNG_L, Label.FAT, Label.MUSCLE, Label.THYMUS, Label.NODE})


def build_organs(patient: Patient, rng: np.random.Generator) -> Organs:
    """All solids of ``patient``, with anatomical variation drawn from ``rng``."""
    p = patient
    w, d, h = p.w, p.d, p.h
    s = (w * d * h) ** (1.0 / 3.0)
    age = p.age
    vessel = math.sqrt(w * d) * (1.0 + 0.004 * max(age - 40, 0))
    o = Organs()

    def j(scale: float = 1.0) -> float:
        return float(rng.normal(0.0, scale))

    def pt(x: float, y: float, z: float) -> tuple[float, float, float]:
        return (x * w + j(1.5), y * d + j(1.5), z * h + j(1.5))

    zc = p.z_carina / h
    zh = p.z_heart / h
    zdr, zdl = p.z_dome_r / h, p.z_dome_l / h
    small = 0.9 if p.sex == "F" else 1.0

    # ---- airways
    trachea_r = 9.5 * math.sqrt(w) * small * float(rng.uniform(0.9, 1.1))
    carina = pt(2, 18, zc)
    trachea = Tube(np.array([pt(0, -10, 140), pt(0, -4, 40), pt(0, 3, 0), pt(1, 10, -50), carina]), trachea_r, 4.0)
    o.mediastinum.append(Painted(trachea, Label.AIRWAY_LUMEN, 4.0, 2.2, Label.AIRWAY_WALL))
    right_main = np.array([carina, pt(-22, 20, zc - 16), pt(-40, 22, zc - 28)])
    left_main = np.array([carina, pt(25, 20, zc - 14), pt(45, 24, zc - 30), pt(52, 26, zc - 40)])
    o.mediastinum.append(
        Painted(Tube(right_main, [7.2, 6.8, 6.2], 3.0), Label.AIRWAY_LUMEN, 3.0, 1.6, Label.AIRWAY_WALL)
    )
    o.mediastinum.append(
        Painted(Tube(left_main, [6.5, 6.0, 5.6, 5.3], 3.0), Label.AIRWAY_LUMEN, 3.0, 1.5, Label.AIRWAY_WALL)
    )
    o.roots["airway_R"] = (right_main[-1], right_main[-1] - right_main[-2], 6.0)
    o.roots["airway_L"] = (left_main[-1], left_main[-1] - left_main[-2], 5.3)

    # ---- esophagus
    eso = np.array(
        [pt(2, 16, 140), pt(3, 24, 0), pt(6, 34, -60), pt(9, 40, -120), pt(16, 36, zdl + 5), pt(32, 12, zdl - 20)]
    )
    o.mediastinum.append(Painted(Tube(eso, 8.0 * s, 3.0), Label.ESOPHAGUS, 3.0))

    # ---- heart
    a1, a2, a3 = 72.0 * s, 43.0 * s, 37.0 * s
    big = float(rng.uniform(0.93, 1.1)) * (1.12 if rng.random() < 0.1 else 1.0)
    heart_axes = _axes((0.62 + j(0.05), -0.62 + j(0.05), -0.48 + j(0.05)), (0.6, 0.8, 0.0))
    center = np.array([31.0 * w + j(3.0), -14.0 * d + j(3.0), p.z_heart])
    o.pericardial_fat_mm = float(np.clip(3.0 + 0.08 * max(age - 30, 0) + 0.08 * p.fat_mm + j(1.5), 2.0, 14.0))
    o.heart = Blob(center, heart_axes, np.array([a1, a2, a3]) * big, taper=0.28, reach_mm=o.pericardial_fat_mm)

    def chamber(c: tuple[float, float, float], r: tuple[float, float, float], extra: float = 0.0) -> Blob:
        assert o.heart is not None
        rad = o.heart.radii
        pos = center + heart_axes @ (np.asarray(c) * rad)
        return Blob(pos, heart_axes, np.asarray(r) * rad + extra)

    o.chambers = [
        (chamber((0.15, 0.27, 0.0), (0.55, 0.33, 0.4), 10.0 * s), Label.MYOCARDIUM),
        (chamber((0.15, 0.27, 0.0), (0.55, 0.33, 0.4)), Label.BLOOD_LEFT),
        (chamber((0.05, -0.45, 0.05), (0.55, 0.4, 0.55)), Label.BLOOD_RIGHT),
        (chamber((-0.68, 0.35, 0.15), (0.35, 0.42, 0.42)), Label.BLOOD_LEFT),
        (chamber((-0.55, -0.55, -0.05), (0.4, 0.36, 0.45)), Label.BLOOD_RIGHT),
    ]
    hz = zh  # heart level in units of h

    # ---- great vessels (blood labels by compartment)
    aorta = np.array(
        [
            pt(6, -8, hz + 38),
            pt(-6, -20, hz + 62),
            pt(-12, -24, -95),
            pt(-8, -24, -72),
            pt(2, -14, -61),
            pt(15, 5, -61),
            pt(24, 24, -68),
            pt(26, 36, -88),
            pt(24, 40, -130),
            pt(19, 42, -180),
            pt(14, 38, zdl - 30),
            pt(10, 30, -380),
            pt(8, 26, -520),
        ]
    )
    ra = 13.5 * vessel
    aorta_r = np.array([1.1, 1.1, 1.05, 1.0, 0.95, 0.92, 0.9, 0.88, 0.85, 0.82, 0.78, 0.72, 0.7]) * ra
    o.mediastinum.append(Painted(Tube(aorta, aorta_r, 4.0), Label.BLOOD_LEFT, 4.0))
    arch = [aorta[3], aorta[4], aorta[5]]
    branches = [
        (arch[0], [pt(-14, -15, -30), pt(-20, -10, -5), pt(-26, -6, 30), pt(-30, -4, 140)], 4.6),
        (arch[1], [pt(14, -8, -25), pt(22, -5, 10), pt(28, -4, 140)], 4.0),
        (arch[2], [pt(24, 8, -28), pt(46, 10, -8), pt(90, 4, -22)], 4.6),
        (arch[0], [pt(-20, -10, -5), pt(-48, 4, -6), pt(-90, 2, -22)], 4.4),
    ]
    for start, rest, radius in branches:
        o.mediastinum.append(Painted(Tube(np.array([start, *rest]), radius * vessel, 2.0), Label.BLOOD_LEFT, 2.0))

    zb = zc - 12
    trunk = np.array([pt(24, -40, hz + 42), pt(22, -26, zb - 8), pt(15, -10, zb)])
    lpa = np.array([trunk[-1], pt(32, 2, zb + 6), pt(48, 12, zb - 2), pt(58, 18, zb - 14)])
    rpa = np.array([trunk[-1], pt(0, -4, zb - 3), pt(-26, 2, zb - 6), pt(-46, 8, zb - 13)])
    rp = 10.0 * vessel
    o.mediastinum.append(Painted(Tube(trunk, [1.35 * rp, 1.3 * rp, 1.25 * rp], 3.0), Label.BLOOD_PULM_ART, 3.0))
    o.mediastinum.append(Painted(Tube(lpa, rp, 3.0), Label.BLOOD_PULM_ART, 3.0))
    o.mediastinum.append(Painted(Tube(rpa, rp, 3.0), Label.BLOOD_PULM_ART, 3.0))
    o.roots["artery_R"] = (rpa[-1], rpa[-1] - rpa[-2], 0.85 * rp)
    o.roots["artery_L"] = (lpa[-1], lpa[-1] - lpa[-2], 0.85 * rp)

    la = center + heart_axes @ (np.array([-0.68, 0.35, 0.15]) * o.heart.radii)
    veins = {
        "vein_RS": pt(-44, -4, zc - 38),
        "vein_RI": pt(-44, 16, zc - 68),
        "vein_LS": pt(44, -4, zc - 34),
        "vein_LI": pt(44, 16, zc - 64),
    }
    for name, end in veins.items():
        mid = 0.5 * (la + np.asarray(end)) + np.array([0.0, 6.0 * d, 0.0])
        tube = np.array([la, mid, end])
        o.mediastinum.append(Painted(Tube(tube, 6.5 * vessel, 2.0), Label.BLOOD_PULM_VEIN, 2.0))
        o.roots[name] = (tube[-1], tube[-1] - tube[-2], 5.5 * vessel)

    injected_right = rng.random() < 0.75
    right_vein = Label.BLOOD_SVC if injected_right else Label.BLOOD_IVC
    left_vein = Label.BLOOD_IVC if injected_right else Label.BLOOD_SVC
    confluence = pt(-25, -15, -38)
    svc = np.array([confluence, pt(-28, -12, -80), pt(-29, -8, hz + 38), pt(-31, -4, hz + 14)])
    o.mediastinum.append(Painted(Tube(svc, 10.0 * vessel, 2.0), Label.BLOOD_SVC, 2.0))
    rbcv = np.array([confluence, pt(-36, -12, -5), pt(-42, -8, 30), pt(-44, -6, 140)])
    lbcv = np.array([confluence, pt(0, -30, -40), pt(30, -22, -25), pt(40, -10, -5), pt(44, -8, 30), pt(46, -6, 140)])
    o.mediastinum.append(Painted(Tube(rbcv, 7.0 * vessel, 2.0), right_vein, 2.0))
    o.mediastinum.append(Painted(Tube(lbcv, 6.0 * vessel, 2.0), left_vein, 2.0))
    ivc = np.array([pt(-31, 0, hz - 30), pt(-22, 12, zdr - 10), pt(-20, 26, zdr - 60), pt(-18, 28, -520)])
    o.mediastinum.append(Painted(Tube(ivc, 12.0 * vessel, 1.0), Label.BLOOD_IVC, 1.0))
    azygos = np.array([pt(-8, 48, -330), pt(-9, 46, zc - 20), pt(-20, 22, zc + 4), pt(-27, -8, zc + 12)])
    o.mediastinum.append(Painted(Tube(azygos, 4.0, 1.5), Label.BLOOD_IVC, 1.5))

    # ---- anterior mediastinum and nodes (push the lungs apart, fill the junctions)
    thymus = Blob(np.array([0.0, -58.0 * d, -78.0 * h]), _EYE, np.array([20.0 * w, 18.0 * d, 44.0 * h]), reach_mm=2.0)
    o.mediastinum.append(Painted(thymus, Label.THYMUS, 2.0, over=_SOFT))
    upper = Blob(np.array([0.0, -5.0 * d, -40.0 * h]), _EYE, np.array([24.0 * w, 55.0 * d, 42.0 * h]), power=3.0)
    o.mediastinum.append(Painted(upper, Label.FAT, 0.0, over=frozenset({Label.LUNG_R, Label.LUNG_L})))
    for _ in range(int(rng.integers(2, 7))):
        c = np.array(pt(float(rng.uniform(-25, 25)), float(rng.uniform(-20, 30)), float(rng.uniform(zc - 30, zc + 25))))
        node = Blob(c, _EYE, np.full(3, float(rng.uniform(3.0, 6.5))), reach_mm=1.0)
        o.mediastinum.append(Painted(node, Label.NODE, 1.0, over=frozenset({Label.FAT, Label.LUNG_R, Label.LUNG_L})))
    o.septum_mm = float(rng.uniform(2.0, 5.0))
    o.septum_below = float(center[2] + 0.45 * o.heart.radii[0])

    # ---- neck
    for side in (-1, 1):
        c = np.array(pt(side * 19, -8, 48))
        o.neck.append(Painted(Blob(c, _EYE, np.array([11.0 * w, 12.0 * d, 24.0 * h])), Label.THYROID))

    # ---- abdomen
    o.liver_edge = (float(rng.uniform(40, 90)) * w, -18.0 * w, float(rng.uniform(-10, 10)))
    o.liver_bottom = (p.z_dome_r - float(rng.uniform(140, 190)) * h, p.z_dome_r - float(rng.uniform(45, 80)) * h)
    o.spleen = (35.0 + j(5.0), 62.0 + j(5.0), p.z_dome_l - 2.0, p.z_dome_l - float(rng.uniform(90, 130)) * h, 40.0 * s)
    stomach_c = np.array(pt(58, -12, zdl - 52))
    o.stomach = Blob(stomach_c, _axes((0.3, -0.2, -1.0), (1.0, 0.0, 0.0)), np.array([62.0, 46.0, 40.0]) * s, 0.15)
    o.stomach_gas_y = float(stomach_c[1] - 40.0 * s + rng.uniform(8.0, 40.0))
    o.stomach_food = bool(rng.random() < 0.4)
    chilaiditi = rng.random() < 0.15
    hepatic = pt(-70, -50, zdr - 30) if chilaiditi else pt(-85, -30, zdr - 115)
    colon = np.array(
        [
            pt(-95, 20, -520),
            pt(-92, 10, zdr - 160),
            hepatic,
            pt(-40, -62, zdr - 130),
            pt(20, -58, zdr - 125),
            pt(70, -30, zdl - 70),
            pt(96, 12, zdl - 42),
            pt(100, 30, zdl - 110),
            pt(100, 34, -520),
        ]
    )
    o.gut.append((Tube(colon, 21.0 * s * float(rng.uniform(0.85, 1.2))), float(rng.uniform(-40.0, 30.0)) * d, 2.5))
    for _ in range(int(rng.integers(2, 6))):  # small-bowel loops in the left upper quadrant, below the stomach
        start = np.array(
            pt(float(rng.uniform(-10, 80)), float(rng.uniform(-60, 10)), zdl - float(rng.uniform(95, 160)))
        )
        heading = rng.normal(size=3) * np.array([1.0, 1.0, 0.4])
        loop = [start]
        for _ in range(5):
            heading = heading + rng.normal(size=3) * np.array([0.8, 0.8, 0.3])
            loop.append(loop[-1] + 18.0 * s * heading / max(float(np.linalg.norm(heading)), 1e-6))
        gas_y = float(rng.uniform(-80.0, 0.0)) * d if rng.random() < 0.6 else -1e3  # some loops hold only fluid
        o.gut.append((Tube(np.array(loop), float(rng.uniform(9.0, 14.0)) * s), gas_y, 1.8))
    for side in (-1, 1):
        kz = (zdr - 95 - (0 if side < 0 else -12)) + j(8.0)
        c = np.array(pt(side * 72, 58, kz))
        axes = _axes((side * 0.25, 0.15, 1.0), (side * 1.0, -0.6, 0.0))
        kidney = Blob(c, axes, np.array([55.0, 30.0, 24.0]) * s)
        o.abdomen.append(Painted(kidney, Label.KIDNEY_CORTEX, over=None))
        inner = Blob(c + axes[:, 1] * 4.0, axes, np.array([44.0, 18.0, 14.0]) * s)
        o.abdomen.append(Painted(inner, Label.KIDNEY_MEDULLA, over=frozenset({Label.KIDNEY_CORTEX})))
    if rng.random() < 0.7:
        gb = Blob(np.array(pt(-42, -52, zdr - 100)), _axes((0.2, -0.5, -1.0), (1, 0, 0)), np.array([35, 15, 14]) * s)
        o.abdomen.append(Painted(gb, Label.FLUID, over=frozenset({Label.LIVER, Label.FAT})))
    hv_top = np.array(pt(-20, 16, zdr - 22))
    for target in (pt(-90, -10, zdr - 45), pt(-45, -55, zdr - 40), pt(30, -50, zdr - 35)):
        o.abdomen.append(
            Painted(Tube(np.array([hv_top, target]), [5.5, 2.5]), Label.BLOOD_IVC, over=frozenset({Label.LIVER}))
        )
    porta = np.array(pt(-35, 0, zdr - 95))
    portal = [np.array([pt(0, 25, zdr - 150), pt(-15, 15, zdr - 120), porta])]
    portal += [np.array([porta, pt(-85, -5, zdr - 75)]), np.array([porta, pt(10, -45, zdr - 70)])]
    for k, path in enumerate(portal):
        vessel_tube = Tube(path, [7.0, 5.5, 6.0][: len(path)] if k == 0 else [5.0, 2.5])
        o.abdomen.append(Painted(vessel_tube, Label.BLOOD_PORTAL, over=frozenset({Label.LIVER, Label.FAT})))

    # ---- skeleton
    o.ribs, heads = _ribs(p, rng)
    o.bones.extend(heads)
    for side in (-1, 1):
        clav = np.array(
            [
                (side * 16 * w, -64 * d, p.z_notch + 8 * h),
                (side * 60 * w, -58 * d, p.z_notch + 20 * h),
                (side * 100 * w, -28 * d, 12 * h),
                (side * 128 * w, -2 * d, 8 * h),
            ]
        )
        o.bones.append(Painted(Tube(clav, 7.0 * s), Label.BONE_MARROW, wall_mm=2.2, wall_label=Label.BONE_CORTEX))
    for side in (-1, 1):
        con = p.contours(-25.0 * h, flatten=False)
        lateral = float(con.muscle[0 if side < 0 else N_THETA // 2])
        knots, rows = _arm_path(p, side)
        if p.arms_down:
            head = np.array([side * (lateral - 28.0 * s), -4.0 * d, -28.0 * h])
            below = knots < -55.0 * h
            axis = np.column_stack([rows[below, 0] - side * 0.15 * rows[below, 2], rows[below, 1] + 3.0, knots[below]])
        else:
            head = np.array([side * (lateral - 34.0 * s), -6.0 * d, -10.0 * h])
            above = knots > 5.0 * h
            axis = np.column_stack([rows[above, 0], rows[above, 1], knots[above]])
        shaft = np.concatenate([head[None], axis])
        o.humerus_heads.append(Blob(head, _EYE, np.full(3, 23.0 * s)))
        shaft_tube = Tube(shaft, 10.0 * s)
        o.bones.append(Painted(shaft_tube, Label.BONE_MARROW, wall_mm=3.5 * s, wall_label=Label.BONE_CORTEX))
        o.arms.append((knots, rows))
    return o


def _arm_path(p: Patient, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``z`` and rows ``(x, y, rx, ry)`` of one arm's axial cross-section along the body axis.

    Arms down hang beside the trunk, a few millimetres to a few centimetres from it; arms up leave the
    shoulder upward and run beside the neck and head.
    """
    h, w = p.h, p.w
    r = 40.0 * w + 0.8 * p.fat_mm
    rng = np.random.default_rng([p.rng_seed, 12, side + 1])
    lateral_bin = 0 if side < 0 else N_THETA // 2
    if p.arms_down:
        z = np.array([-20.0, -60.0, -120.0, -190.0, -260.0, -330.0, -600.0]) * h
        gap = float(rng.uniform(-4.0, 30.0))
        trunk = np.array([float(p.contours(float(zk), flatten=False).trunk[lateral_bin]) for zk in z])
        x = side * (trunk + gap + r * np.array([-0.3, 0.55, 0.95, 1.0, 1.0, 0.95, 0.95]))
        y = np.array([-5.0, -5.0, -2.0, 5.0, 10.0, 12.0, 12.0]) + float(rng.uniform(-15.0, 15.0))
        rx = np.array([0.8, 0.92, 1.0, 0.95, 0.85, 0.75, 0.75]) * r
        ry = rx * 1.12
    else:
        lateral = float(p.contours(-25.0 * h, flatten=False).muscle[lateral_bin])
        z = np.array([-30.0, 10.0, 60.0, 140.0, 300.0]) * h
        x = side * np.array([lateral - 0.6 * r, lateral + 0.2 * r, lateral + 0.55 * r - 10.0, 130.0 * w, 110.0 * w])
        y = np.array([-5.0, -10.0, -16.0, -22.0, -30.0])
        rx = np.array([0.6, 0.85, 1.0, 1.0, 0.95]) * r
        ry = rx * 1.05
    return z, np.stack([x, y, rx, ry], axis=1)


@dataclass
class RibCage:
    """Ribs and costal cartilages as flat bands along the cavity wall, tabulated per contour direction.

    Row ``k`` is one rib (or its cartilage): for each contour-table direction it holds the height ``z`` and
    radius ``rho`` of the band's centre line (NaN where the band does not pass). A plane cuts a band where
    ``|z_plane - z| < half_height``; the cut is an ellipse in (radius, height).
    """

    z: np.ndarray  # (n, N_THETA)
    rho: np.ndarray  # (n, N_THETA)
    label: np.ndarray  # (n,) Label of each row
    half_thickness: np.ndarray  # (n,) radial half-thickness (mm)
    half_height: np.ndarray  # (n,) half-height (mm)


def _ribs(p: Patient, rng: np.random.Generator) -> tuple[RibCage, list[Painted]]:
    """Twelve pairs of ribs sloping down toward the front, their cartilages, and the rib heads at the spine."""
    h, s = p.h, (p.w * p.d * p.h) ** (1.0 / 3.0)
    levels = np.arange(16, -340, -4.0) * h
    tables = np.stack([p.contours(float(z), flatten=False).cavity for z in levels])
    theta_bins = -math.pi + (np.arange(N_THETA) + 0.5) * 2.0 * math.pi / N_THETA

    def bins_between(a_deg: float, b_deg: float, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Bins from angle a to b (left-side convention) and their left-convention angles."""
        lo, hi = sorted((math.radians(a_deg), math.radians(b_deg)))
        theta_left = theta_bins if side > 0 else np.angle(np.exp(1j * (math.pi - theta_bins)))
        idx = np.flatnonzero((theta_left >= lo) & (theta_left <= hi))
        return idx, theta_left[idx]

    def cavity(idx: np.ndarray, z: np.ndarray) -> np.ndarray:
        k = np.clip(np.round((16.0 * h - z) / (4.0 * h)).astype(int), 0, len(levels) - 1)
        return tables[k, idx]

    rows_z, rows_rho, labels, thick, height, heads = [], [], [], [], [], []
    for i in range(1, 13):
        z_head = (2.0 - (i - 1) * 24.0) * h + float(rng.normal(0, 2.0))
        end_deg = {1: -70, 2: -72, 3: -72, 4: -70, 5: -68, 6: -62, 7: -55, 8: -35, 9: -20, 10: -5, 11: 20, 12: 45}[i]
        drop = (28.0 + 7.0 * min(i, 7) - (3.0 * (i - 7) if i > 7 else 0.0)) * h
        t_rib = (2.6 + 0.1 * min(i, 6)) * s
        h_rib = (4.0 + 0.35 * min(i, 7)) * s
        for side in (-1, 1):
            start = 80.0
            idx, th = bins_between(end_deg, start, side)
            frac = (math.radians(start) - th) / (math.radians(start) - math.radians(end_deg))
            z = z_head + 4.0 * h * np.sin(math.pi * np.clip(frac * 4.0, 0, 1)) - drop * frac**1.1
            rz = np.full(N_THETA, np.nan)
            rr = np.full(N_THETA, np.nan)
            rz[idx] = z
            rr[idx] = cavity(idx, z) + t_rib + 1.0
            rows_z.append(rz)
            rows_rho.append(rr)
            labels.append(Label.BONE_MARROW)
            thick.append(t_rib)
            height.append(h_rib)
            # rib head: from the vertebra to where the band starts
            first = idx[np.argmax(th)]
            y_vb, rx_vb, _ = p.spine(float(z_head))
            angle = theta_bins[first]
            band_start = np.array([rr[first] * math.cos(angle), rr[first] * math.sin(angle), rz[first]])
            heads.append(np.array([[side * (rx_vb + 2.0), y_vb + 2.0, z_head], band_start]))
            if i <= 10:
                z_end = float(z[np.argmin(th)])
                if i <= 7:
                    target_deg, z_target = -82.0, p.z_notch - (8.0 + 22.0 * (i - 1)) * h
                else:
                    target_deg, z_target = end_deg - 28.0, z_end + 22.0 * h
                idx2, th2 = bins_between(target_deg, end_deg, side)
                frac2 = (math.radians(end_deg) - th2) / (math.radians(end_deg) - math.radians(target_deg))
                z2 = z_end + (z_target - z_end) * frac2
                cz = np.full(N_THETA, np.nan)
                cr = np.full(N_THETA, np.nan)
                cz[idx2] = z2
                cr[idx2] = cavity(idx2, z2) + t_rib + 1.0
                rows_z.append(cz)
                rows_rho.append(cr)
                labels.append(Label.CARTILAGE)
                thick.append(0.95 * t_rib)
                height.append(0.9 * h_rib)
    cage = RibCage(
        z=np.array(rows_z, dtype=np.float32),
        rho=np.array(rows_rho, dtype=np.float32),
        label=np.array(labels, dtype=np.uint8),
        half_thickness=np.array(thick, dtype=np.float32),
        half_height=np.array(height, dtype=np.float32),
    )
    head_tubes = [
        Painted(Tube(pts, [3.5 * s, 3.0 * s]), Label.BONE_MARROW, wall_mm=1.4, wall_label=Label.BONE_CORTEX)
        for pts in heads
    ]
    return cage, head_tubes
