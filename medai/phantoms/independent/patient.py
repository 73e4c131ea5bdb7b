"""The patient's shape model: nested star-shaped contours along the body axis and the surfaces that bound the lungs.

Patient coordinates are DICOM LPS millimetres, ``x`` to the patient's left,
``y`` to posterior, ``z`` to superior, with ``z = 0`` at the lung apices and
``(x, y) = (0, 0)`` in the middle of the thoracic cavity.

Every axial cross-section is three nested contours around ``(0, 0)``, each a
radius per direction ``theta = atan2(y, x)``: the thoracic (or abdominal,
or neck visceral) cavity, the outer border of the muscles and the skin. The
cavity is a superellipse with separate anterior and posterior depths, a
notch for the spine and random low-order harmonics; muscles and fat are
thickness functions of ``(theta, z)`` built from angular bumps (pectorals,
paraspinal muscles, shoulders, breasts) whose amplitudes follow smooth
monotone-cubic profiles along ``z``. The back is flattened where it meets
the curved table. Lungs are bounded by that cavity, by the mediastinum
(:mod:`~medai.phantoms.independent.organs`), by two apical domes and by the
diaphragm, a height field made of one paraboloid dome per side; the lobes by
fissure height fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator

from medai.phantoms.independent.spec import IndependentSpec

__all__ = ["N_THETA", "Contours", "Patient", "angle_bins"]

#: Angular resolution of the contour tables.
N_THETA = 1024
_THETA = (-math.pi + (np.arange(N_THETA) + 0.5) * 2.0 * math.pi / N_THETA).astype(np.float32)
_COS = np.cos(_THETA)
_SIN = np.sin(_THETA)


def angle_bins(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Contour-table bin of each point's direction ``atan2(y, x)``."""
    theta = np.arctan2(y, x)
    return np.minimum(((theta + math.pi) * (N_THETA / (2.0 * math.pi))).astype(np.intp), N_THETA - 1)


def _bump(center_deg: float, width_deg: float, power: float = 2.0) -> np.ndarray:
    """Angular bump 0..1 centred on ``center_deg`` over the contour table."""
    delta = np.angle(np.exp(1j * (_THETA - math.radians(center_deg))))
    return np.exp(-((np.abs(delta) / math.radians(width_deg)) ** power)).astype(np.float32)


class _Profile:
    """A smooth function of ``z`` through knots (monotone cubic, constant outside the knots), tabulated."""

    _STEP = 0.5
    _LOW = -800.0

    def __init__(self, z: list[float], values: list[float]) -> None:
        order = np.argsort(z)
        knots = np.asarray(z, dtype=np.float64)[order]
        f = PchipInterpolator(knots, np.asarray(values, dtype=np.float64)[order], extrapolate=False)
        grid = np.clip(self._LOW + self._STEP * np.arange(2400), knots[0], knots[-1])
        self._table = f(grid).tolist()

    def __call__(self, z: float) -> float:
        t = min(max((z - self._LOW) / self._STEP, 0.0), len(self._table) - 1.001)
        i = int(t)
        w = t - i
        return self._table[i] * (1.0 - w) + self._table[i + 1] * w


@dataclass(frozen=True)
class Contours:
    """Radius (mm) per contour-table direction of the three nested contours of one axial level."""

    cavity: np.ndarray
    muscle: np.ndarray
    body: np.ndarray
    trunk: np.ndarray  # body without breasts


class Patient:
    """Shape parameters of one patient, drawn from the spec's seed and factors.

    Args:
        spec: the case; its ``factors`` set sizes, habitus, breathing state and arms.
    """

    def __init__(self, spec: IndependentSpec) -> None:
        f: dict[str, Any] = spec.factors
        rng = np.random.default_rng([spec.seed, 1])
        body = f["body"]
        self.h = h = float(body["height_scale"])
        self.w = w = float(body["width_scale"])
        self.d = d = float(body["depth_scale"])
        self.m = m = float(body["muscle_scale"])
        self.fat_mm = float(body["fat_mm"])
        self.expiration = f["lung_state"] == "expiration"
        self.arms_down = f["arms"] == "down"
        self.sex = str(f["sex"])
        self.age = int(f["age_years"])
        self.breast_mm = float(f["breast_mm"])
        exp_w, exp_d = (0.97, 0.93) if self.expiration else (1.0, 1.0)
        self.rng_seed = spec.seed

        def jitter(scale: float) -> float:
            return float(rng.normal(0.0, scale))

        zk = [130.0, 60.0, 25.0, 0.0, -30.0, -80.0, -150.0, -220.0, -290.0, -380.0, -500.0]
        zs = [z * h for z in zk]
        a = [32, 34, 48, 80, 108, 124, 132, 134, 130, 126, 124]
        ba = [26, 26, 30, 42, 62, 78, 88, 92, 92, 90, 88]
        bp = [20, 22, 30, 48, 68, 82, 88, 88, 84, 80, 78]
        self._a = _Profile(zs, [v * w * exp_w * (1 + jitter(0.02)) for v in a])
        self._ba = _Profile(zs, [v * d * exp_d * (1 + jitter(0.02)) for v in ba])
        self._bp = _Profile(zs, [v * d * exp_d * (1 + jitter(0.02)) for v in bp])
        self._n = _Profile(zs, [2.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.5, 2.4, 2.3, 2.3])
        # spine: vertebral body centre (y) and radii
        self._y_spine = _Profile(zs, [v * d for v in [22, 25, 32, 45, 58, 64, 64, 60, 54, 48, 46]])
        self._vb_rx = _Profile(zs, [v * math.sqrt(w) for v in [13, 14, 15, 16, 17, 18, 20, 22, 24, 25, 25]])
        self._vb_ry = _Profile(zs, [v * math.sqrt(d) for v in [10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 20]])
        # muscles: baseline and bumps (amplitudes along z)
        arm = 1.0 if self.arms_down else 0.62
        self._shoulder = _Profile(
            [z * h for z in [80, 50, 25, 0, -30, -60, -95]],
            [0, 8 * m, 45 * m * arm, 70 * m * arm, 62 * m * arm, 25 * m, 0],
        )
        self._pectoral = _Profile([z * h for z in [10, -20, -80, -150, -200]], [0, 14 * m, 20 * m, 10 * m, 0])
        self._trapezius = _Profile([z * h for z in [110, 70, 30, -10, -40]], [6 * m, 22 * m, 28 * m, 12 * m, 0])
        self._scapular = _Profile([z * h for z in [30, 0, -80, -150, -180]], [0, 14 * m, 16 * m, 8 * m, 0])
        self._paraspinal = _Profile(
            [z * h for z in [130, 0, -150, -300, -400]], [30 * m, 30 * m, 32 * m, 38 * m, 40 * m]
        )
        self._neck_fat = _Profile([z * h for z in [60, 20]], [0.45, 1.0])
        self._abdomen_fat = _Profile([z * h for z in [-180, -300]], [1.0, 1.45])
        self._bump_lateral = _bump(0.0, 34.0) + _bump(180.0, 34.0)
        self._bump_anterior = _bump(-90.0, 52.0)
        self._bump_post = _bump(90.0, 48.0, 2.0)
        self._bump_scap = _bump(35.0, 28.0) + _bump(145.0, 28.0)
        self._bump_trap = _bump(90.0, 75.0)
        self._bump_flank = _bump(15.0, 45.0) + _bump(165.0, 45.0) + 0.6 * _bump(-90.0, 40.0)
        self._bump_breast = 0.75 * (_bump(-90.0 - 45.0 - jitter(3.0), 22.0) + _bump(-90.0 + 45.0 + jitter(3.0), 22.0))
        harmonics = np.zeros(N_THETA, dtype=np.float32)
        for k in range(2, 6):
            harmonics += np.float32(rng.normal(0.0, 0.025 / k)) * np.cos(k * _THETA + np.float32(rng.uniform(0, 6.3)))
        self._harmonics = 1.0 + harmonics
        # landmarks along z
        self.exp_shift = 40.0 * h if self.expiration else 0.0
        self.z_dome_r = -205.0 * h + self.exp_shift + jitter(8.0)
        self.z_dome_l = self.z_dome_r - 18.0 * h + jitter(5.0)
        self.dome_drop = 62.0 * h * (0.8 if self.expiration else 1.0)
        self.z_notch = -25.0 * h
        self.z_carina = -88.0 * h + jitter(5.0)
        self.z_heart = -160.0 * h + 0.5 * self.exp_shift + jitter(6.0)
        self.z_lowest = min(self.z_dome_r, self.z_dome_l) - 1.3 * self.dome_drop
        self.vertebra_mm = 24.0 * h
        # the back lies on a curved table top
        self.table_radius_mm = float(rng.uniform(700.0, 1500.0))
        self.pad_mm = float(rng.uniform(0.0, 25.0))
        chest = self.contours(-150.0 * h, flatten=False)
        back = float(chest.body[N_THETA * 3 // 4])  # theta = +90 deg: straight posterior
        self.y_back = back - 0.3 * self.fat_mm - 0.06 * back
        self._cap = self._table_cap()
        # fissures: height fields z = f(x, y)
        self.fissure = {
            "R_oblique": (-147.0 * h + 0.5 * self.exp_shift + jitter(8.0), 1.15 * h / d + jitter(0.1)),
            "L_oblique": (-150.0 * h + 0.5 * self.exp_shift + jitter(8.0), 1.25 * h / d + jitter(0.1)),
            "R_horizontal": (-124.0 * h + 0.4 * self.exp_shift + jitter(6.0), 0.08 + jitter(0.05)),
        }
        self.fissure_warp = {k: (jitter(4.0), rng.uniform(0, 6.3), rng.uniform(0, 6.3)) for k in self.fissure}
        # the oblique fissures' strike: they run from posteromedial to anterolateral in axial planes
        self.fissure_strike = {"R_oblique": float(rng.uniform(0.45, 0.8)), "L_oblique": float(rng.uniform(0.45, 0.8))}
        self.fissure_complete = float(rng.uniform(0.55, 1.0))

    # ------------------------------------------------------------------ cross-sections

    def spine(self, z: float) -> tuple[float, float, float]:
        """Vertebral body centre ``y`` and half-axes ``(rx, ry)`` at level ``z``."""
        return self._y_spine(z), self._vb_rx(z), self._vb_ry(z)

    def cavity_half_width(self, z: float) -> float:
        """Half-width (mm) of the cavity superellipse at level ``z``."""
        return self._a(z)

    def contours(self, z: float, *, flatten: bool = True) -> Contours:
        """The cavity, muscle and skin contours of level ``z`` as radius tables."""
        a, ba, bp, n = self._a(z), self._ba(z), self._bp(z), self._n(z)
        b = np.where(_SIN < 0, ba, bp)
        cavity = (np.abs(_COS / a) ** n + np.abs(_SIN / b) ** n) ** (-1.0 / n) * self._harmonics
        y_vb, rx_vb, ry_vb = self.spine(z)
        depth = max(0.0, float(cavity[N_THETA * 3 // 4]) - (y_vb - ry_vb - 2.0))
        width = math.atan2(rx_vb + 7.0, max(y_vb - ry_vb, 10.0))
        delta = np.abs(_THETA - math.pi / 2)
        notch = depth * np.exp(-((delta / width) ** 4))
        wall = (
            12.0 * self.m
            + self._shoulder(z) * self._bump_lateral
            + self._pectoral(z) * self._bump_anterior
            + self._paraspinal(z) * self._bump_post
            + self._scapular(z) * self._bump_scap
            + self._trapezius(z) * self._bump_trap
        )
        fat = self.fat_mm * self._neck_fat(z) * (1.0 + (self._abdomen_fat(z) - 1.0) * (0.5 + self._bump_flank))
        fat = fat * (1.0 - 0.3 * self._bump_post) + 1.5
        muscle = cavity + wall
        trunk = muscle + fat
        breast = (
            self.breast_mm * self._bump_breast * _window(z, -125.0 * self.h, 55.0 * self.h) if self.breast_mm else 0.0
        )
        body = trunk + breast
        if flatten:
            cap = self._cap
            body = np.minimum(body, cap)
            trunk = np.minimum(trunk, cap)
            muscle = np.minimum(muscle, cap - 3.0)
        return Contours(
            cavity=(cavity - notch).astype(np.float32),
            muscle=muscle.astype(np.float32),
            body=body.astype(np.float32),
            trunk=trunk.astype(np.float32),
        )

    def _table_cap(self) -> np.ndarray:
        """Largest radius per direction that stays above the curved table top (inf where the ray misses it)."""
        y0, k = self.y_back, 1.0 / (2.0 * self.table_radius_mm)
        qa = k * _COS**2
        disc = _SIN**2 - 4.0 * qa * y0
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(qa > 1e-9, (_SIN - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * qa), y0 / np.maximum(_SIN, 1e-9))
        ok = (_SIN > 0.02) & (disc >= 0.0) & (r > 0)
        return np.where(ok, r, np.inf).astype(np.float32)

    def table_top(self, x: np.ndarray) -> np.ndarray:
        """``y`` of the table top (under the pad) at lateral positions ``x``."""
        return self.y_back + self.pad_mm + x * x / (2.0 * self.table_radius_mm)

    # ------------------------------------------------------------------ lung bounds

    def diaphragm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height ``z`` of the diaphragm's upper surface: one paraboloid dome per side, deepest posterolaterally."""
        w, d = self.w, self.d
        out = None
        for z_dome, x_dome in ((self.z_dome_r, -55.0 * w), (self.z_dome_l, 62.0 * w)):
            dy = y + 8.0 * d
            ly = np.where(dy < 0, 120.0 * d, 95.0 * d)
            q = ((x - x_dome) / (95.0 * w)) ** 2 + (dy / ly) ** 2
            zs = z_dome - self.dome_drop * np.minimum(q, 1.45)
            out = zs if out is None else np.maximum(out, zs)
        assert out is not None
        return out.astype(np.float32)

    def apex(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height ``z`` of the lung tops: one dome per side, highest posteromedially."""
        w, d, h = self.w, self.d, self.h
        dx = np.abs(x) - 40.0 * w
        dy = y - 15.0 * d
        ly = np.where(dy < 0, 70.0 * d, 60.0 * d)
        return (-55.0 * h * ((dx / (52.0 * w)) ** 2 + (dy / ly) ** 2)).astype(np.float32)

    def fissure_height(self, name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height field ``z`` of a fissure (``R_oblique``, ``L_oblique``, ``R_horizontal``)."""
        z0, slope = self.fissure[name]
        amp, px, py = self.fissure_warp[name]
        warp = amp * np.sin(x / 45.0 + px) * np.cos(y / 55.0 + py)
        if name == "R_horizontal":
            return (z0 + slope * (y + 40.0) - 0.06 * (np.abs(x) - 60.0) + warp).astype(np.float32)
        strike = self.fissure_strike[name] * (np.abs(x) - 45.0 * self.w)
        return (z0 + slope * (y + strike) + warp).astype(np.float32)


def _window(z: float, center: float, half: float) -> float:
    """Raised-cosine window of ``z`` around ``center`` (1 at the centre, 0 beyond ``half``)."""
    t = (z - center) / half
    return 0.5 * (1.0 + math.cos(math.pi * t)) if abs(t) < 1.0 else 0.0
