"""Tissue labels of one axial plane: contours first, then organs, bones, arms and the table.

:class:`Voxelizer` precomputes, for one in-plane grid, what does not change
from plane to plane (polar coordinates, the diaphragm and apex height
fields, the fissure height fields, the table) and then labels any plane
``z`` in a few milliseconds. The same code labels the coarse planning grid and
the fine rendering grid.
"""

from __future__ import annotations

import math

import numpy as np

from medai.phantoms.independent.organs import Organs, Painted
from medai.phantoms.independent.patient import N_THETA, Patient, angle_bins
from medai.phantoms.independent.shapes import Tube, bbox_slices
from medai.phantoms.independent.tissue import Label

__all__ = ["LUNGS", "Voxelizer"]

#: Labels of lung parenchyma.
LUNGS = (Label.LUNG_R, Label.LUNG_L)
_NOT_BONE = np.ones(len(Label), dtype=bool)
_NOT_BONE[[Label.BONE_CORTEX, Label.BONE_MARROW, Label.CARTILAGE, Label.DISC, Label.CANAL]] = False
_BONE_OVER = np.ones(len(Label), dtype=bool)
_BONE_OVER[[Label.LUNG_R, Label.LUNG_L, Label.AIR, Label.AIRWAY_LUMEN]] = False
_THETA = (np.arange(N_THETA) + 0.5) * (2.0 * math.pi / N_THETA) - math.pi
_COS = np.cos(_THETA).astype(np.float32)
_SIN = np.sin(_THETA).astype(np.float32)


class Voxelizer:
    """Labels axial planes of one patient on one in-plane grid.

    Args:
        patient: the shape model.
        organs: the solids.
        xs: column coordinates (mm, increasing, even spacing).
        ys: row coordinates (mm, increasing, even spacing).
        table: paint the table (and its pad) under the patient.
        lungs_only: label only what bounds the lungs (cavity, diaphragm, mediastinum): for planning grids.
    """

    def __init__(
        self, patient: Patient, organs: Organs, xs: np.ndarray, ys: np.ndarray, *, table: bool, lungs_only: bool = False
    ) -> None:
        self.p, self.o = patient, organs
        self.lungs_only = lungs_only
        self.xs = np.asarray(xs, dtype=np.float64)
        self.ys = np.asarray(ys, dtype=np.float64)
        X = self.xs.astype(np.float32)[None, :]
        Y = self.ys.astype(np.float32)[:, None]
        Xf = np.broadcast_to(X, (len(ys), len(xs)))
        Yf = np.broadcast_to(Y, (len(ys), len(xs)))
        self.X, self.Y = X, Y
        self.rho = np.hypot(Xf, Yf).astype(np.float32)
        self.bins = angle_bins(Xf, Yf)
        self.theta_deg = (self.bins.astype(np.float32) + 0.5) * np.float32(360.0 / N_THETA) - np.float32(180.0)
        self.diaphragm = patient.diaphragm(Xf, Yf)
        self.apex = patient.apex(Xf, Yf)
        self.side = np.where(Xf < 0, np.uint8(Label.LUNG_R), np.uint8(Label.LUNG_L))
        self.fissures = {
            name: patient.fissure_height(name, Xf, Yf) for name in ("R_oblique", "L_oblique", "R_horizontal")
        }
        self.table = self._table(Xf, Yf) if table else None
        self._groups: dict[str, tuple[list[Painted], np.ndarray, np.ndarray]] = {}
        self._allowed: dict[int, np.ndarray] = {}
        for group in ("mediastinum", "neck", "abdomen", "bones"):
            items: list[Painted] = getattr(organs, group)
            ranges = np.array([_z_range(item) for item in items]).reshape(-1, 2)
            self._groups[group] = (items, ranges[:, 0], ranges[:, 1])
            for item in items:
                bone = item.label in (Label.BONE_CORTEX, Label.BONE_MARROW, Label.CARTILAGE)
                if bone or item.wall_label == Label.BONE_CORTEX:
                    self._allowed[id(item)] = _BONE_OVER
                else:
                    self._allowed[id(item)] = _NOT_BONE if item.over is None else _mask(item.over)
        theta = np.radians((np.arange(N_THETA) + 0.5) * 360.0 / N_THETA - 180.0)
        # relative depth of the intermuscular fat plane per direction (wavy)
        self._plane_frac = (0.55 + 0.1 * np.sin(3.0 * theta + patient.rng_seed % 7)).astype(np.float32)
        self._pixel = float(abs(self.xs[1] - self.xs[0]))

    # ------------------------------------------------------------------ public

    def plane(self, z: float) -> np.ndarray:
        """Tissue labels (uint8 :class:`Label`) of the plane at height ``z``."""
        p = self.p
        con = p.contours(z)
        lab = np.zeros(self.rho.shape, dtype=np.uint8)
        body_box = self._body_box(con.body)
        if body_box is None:
            self._arms(z, lab)
            return self._with_table(lab)
        rho, bins, body = self.rho[body_box], self.bins[body_box], lab[body_box]
        r_body = np.take(con.body, bins)
        inside = rho < r_body
        body[inside] = Label.FAT
        if p.breast_mm:
            r_trunk = np.take(con.trunk, bins)
            gland = inside & (rho > r_trunk + 3.0) & (rho < r_trunk + 0.62 * (r_body - r_trunk))
            body[gland] = Label.GLAND
        body[inside & (rho > r_body - 1.6)] = Label.SKIN
        r_muscle = np.take(con.muscle, bins)
        r_cavity = np.take(con.cavity, bins)
        body[rho < r_muscle] = Label.MUSCLE
        cavity = rho < r_cavity
        dia = self.diaphragm[body_box]
        thorax = cavity & (dia < z - 2.0)
        abdomen_box = cavity & (dia > z + 3.0)
        body[cavity] = Label.MUSCLE  # the diaphragm band keeps this
        body[thorax] = Label.FAT if z < 8.0 * p.h else Label.MUSCLE  # the neck's visceral space is mostly muscle
        if not self.lungs_only:
            self._fat_planes(body, rho, r_cavity, r_muscle, bins)
        lung = thorax & (self.apex[body_box] > z)
        body[lung] = self.side[body_box][lung]
        body[abdomen_box] = Label.FAT
        half = self.o.septum_mm
        box = self._box(-half - 2.0, half + 2.0, -200.0, 200.0)
        if box is not None and z > self.o.septum_below:  # the anterior junction, above the heart
            sub = lab[box]
            near = np.abs(self.X[:, box[1]]) < half
            sub[near & ((sub == Label.LUNG_R) | (sub == Label.LUNG_L))] = Label.FAT
        self._heart(z, lab)
        for item in self._active("mediastinum", z):
            self._paint(item, z, lab)
        if self.lungs_only:
            return lab
        if z > -10.0 * p.h:
            for item in self._active("neck", z):
                self._paint(item, z, lab)
        if abdomen_box.any():
            abdomen = np.zeros(lab.shape, dtype=bool)
            abdomen[body_box] = abdomen_box
            self._abdomen(z, lab, abdomen, con.cavity)
        self._arms(z, lab)
        self._spine(z, lab)
        self._sternum(z, lab, float(con.cavity[N_THETA // 4]))
        self._scapulae(z, lab, con.cavity, body_box)
        self._ribs(z, lab, body_box)
        for item in self._active("bones", z):
            self._paint(item, z, lab)
        for head in self.o.humerus_heads:
            cut = head.cut(z, self.xs, self.ys)
            if cut is not None:
                box, sd = cut
                sub = lab[box]
                sub[(sd < 0) & _BONE_OVER[sub]] = Label.BONE_CORTEX
                sub[(sd < -2.0) & _BONE_OVER[sub]] = Label.BONE_MARROW
        return self._with_table(lab)

    def _with_table(self, lab: np.ndarray) -> np.ndarray:
        if self.table is not None:
            air = lab == Label.AIR
            lab[air] = self.table[air]
        return lab

    def _body_box(self, body: np.ndarray) -> tuple[slice, slice] | None:
        """Rows and columns that the body contour can reach."""
        x = body * _COS
        y = body * _SIN
        return self._box(float(x.min()) - 2.0, float(x.max()) + 2.0, float(y.min()) - 2.0, float(y.max()) + 2.0)

    def lobes(self, z: float, right: np.ndarray, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """Lobe index (1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL) of every point of the plane (or window), by side ``right``."""
        f = self.fissures if window is None else {k: v[window] for k, v in self.fissures.items()}
        lobe_r = np.where(z > f["R_oblique"], np.where(z > f["R_horizontal"], 1, 2), 3)
        lobe_l = np.where(z > f["L_oblique"], 4, 5)
        return np.where(right, lobe_r, lobe_l).astype(np.uint8)

    # ------------------------------------------------------------------ pieces

    def _box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
        return bbox_slices(self.xs, self.ys, x0, x1, y0, y1)

    def _active(self, group: str, z: float) -> list[Painted]:
        """The solids of ``group`` whose height range holds ``z``."""
        items, lo, hi = self._groups[group]
        return [items[i] for i in np.flatnonzero((lo <= z) & (hi >= z))]

    def _paint(self, item: Painted, z: float, lab: np.ndarray) -> None:
        shape = item.shape
        cuts = shape.cuts(z, self.xs, self.ys) if isinstance(shape, Tube) else _one(shape.cut(z, self.xs, self.ys))
        allowed = self._allowed[id(item)]
        inner = []
        for box, sd in cuts:
            sub = lab[box]
            if item.margin_mm:
                sub[(sd < item.margin_mm) & ((sub == Label.LUNG_R) | (sub == Label.LUNG_L))] = Label.FAT
            if item.wall_mm:
                sub[(sd < 0) & allowed[sub]] = item.wall_label
                inner.append((box, sd))
            else:
                sub[(sd < 0) & allowed[sub]] = item.label
        for box, sd in inner:
            sub = lab[box]
            sub[(sd < -item.wall_mm) & ((sub == item.wall_label) | allowed[sub])] = item.label

    def _heart(self, z: float, lab: np.ndarray) -> None:
        heart = self.o.heart
        if heart is None:
            return
        cut = heart.cut(z, self.xs, self.ys)
        if cut is None:
            return
        box, sd = cut
        sub = lab[box]
        above = self.diaphragm[box] < z - 2.0
        lungish = (sub == Label.LUNG_R) | (sub == Label.LUNG_L)
        # pericardial fat: thick over the front and the apex, thin behind
        front = 1.0 / (1.0 + np.exp((self.Y[box[0]] - (heart.center[1] - 10.0)) / 12.0))
        sub[(sd < self.o.pericardial_fat_mm * (0.35 + 1.3 * front)) & lungish] = Label.FAT
        heart_in = (sd < 0) & above & (sub != Label.MUSCLE)
        sub[heart_in] = Label.MYOCARDIUM
        shrunk = heart_in & (sd < -3.0)
        for blob, label in self.o.chambers:
            c = blob.cut(z, self.xs, self.ys)
            if c is None:
                continue
            cbox, csd = c
            r0 = max(cbox[0].start, box[0].start)
            r1 = min(cbox[0].stop, box[0].stop)
            c0 = max(cbox[1].start, box[1].start)
            c1 = min(cbox[1].stop, box[1].stop)
            if r0 >= r1 or c0 >= c1:
                continue
            part = csd[r0 - cbox[0].start : r1 - cbox[0].start, c0 - cbox[1].start : c1 - cbox[1].start]
            win = (slice(r0 - box[0].start, r1 - box[0].start), slice(c0 - box[1].start, c1 - box[1].start))
            sub[win][(part < 0) & shrunk[win]] = label

    def _abdomen(self, z: float, lab: np.ndarray, abdomen: np.ndarray, cavity_table: np.ndarray) -> None:
        o, p = self.o, self.p
        x_ant, x_post, y_mid = o.liver_edge
        bottom_right, bottom_left = o.liver_bottom
        y = self.Y
        edge = x_post + (x_ant - x_post) / (1.0 + np.exp((y - y_mid) / 14.0))
        floor = bottom_right + (bottom_left - bottom_right) * np.clip((self.X + 90.0 * p.w) / (150.0 * p.w), 0.0, 1.0)
        liver = abdomen & (edge > self.X) & (z > floor)
        lab[liver] = Label.LIVER
        th1, th2, z_top, z_bot, thick = o.spleen
        box = self._box(0.0, 400.0, -60.0, 400.0)
        if z_bot < z < z_top and box is not None:
            a = np.clip((self.theta_deg[box] - th1) / (th2 - th1), 0.0, 1.0)
            zf = math.sin(math.pi * (z - z_bot) / (z_top - z_bot)) ** 0.6
            depth = np.take(cavity_table, self.bins[box]) - self.rho[box]
            spleen = (
                abdomen[box] & (depth < thick * zf * np.clip(np.sin(math.pi * a), 0.0, 1.0) ** 0.7) & (a > 0) & (a < 1)
            )
            lab[box][spleen] = Label.SPLEEN
        if o.stomach is not None:
            cut = o.stomach.cut(z, self.xs, self.ys)
            if cut is not None:
                box, sd = cut
                sub = lab[box]
                ok = abdomen[box] & (sd < 0)
                sub[ok] = Label.GUT_WALL
                inner = ok & (sd < -4.0)
                gas = self.Y[box[0]] < o.stomach_gas_y
                content = Label.CHYME if o.stomach_food else Label.FLUID
                gas_b = np.broadcast_to(gas, sub.shape)
                sub[inner & gas_b] = Label.GAS
                sub[inner & ~gas_b] = content
        for gut, gas_y, wall in o.gut:
            for box, sd in gut.cuts(z, self.xs, self.ys):
                sub = lab[box]
                ok = abdomen[box] & (sd < 0) & (sub != Label.GAS)
                sub[ok] = Label.GUT_WALL
                inner = ok & (sd < -wall)
                gas = np.broadcast_to(self.Y[box[0]] < gas_y, sub.shape)
                sub[inner & gas] = Label.GAS
                sub[inner & ~gas] = Label.CHYME if wall > 2.0 else Label.FLUID
        for item in self._active("abdomen", z):
            self._paint(item, z, lab)
        lab[~abdomen & (lab == Label.GAS)] = Label.MUSCLE  # never: gut gas only below the diaphragm

    def _fat_planes(self, lab: np.ndarray, rho: np.ndarray, rc: np.ndarray, rm: np.ndarray, bins: np.ndarray) -> None:
        """Thin fat planes between the layers of the thick chest wall muscles (pectorals, back)."""
        depth = rm - rc
        target = rc + np.take(self._plane_frac, bins) * depth
        plane = (np.abs(rho - target) < 1.1) & (depth > 18.0)
        lab[plane & (lab == Label.MUSCLE)] = Label.FAT

    def _arms(self, z: float, lab: np.ndarray) -> None:
        fat = 0.8 * self.p.fat_mm + 3.0
        for knots, rows in self.o.arms:
            if not knots.min() <= z <= knots.max():
                continue
            cx, cy, rx, ry = (float(np.interp(z, knots, rows[:, k])) for k in range(4))
            box = self._box(cx - rx, cx + rx, cy - ry, cy + ry)
            if box is None:
                continue
            dx = (self.X[:, box[1]] - cx) / rx
            dy = (self.Y[box[0]] - cy) / ry
            q = np.sqrt(dx * dx + dy * dy)
            sub = lab[box]
            free = sub == Label.AIR
            sub[free & (q < 1.0)] = Label.SKIN
            sub[free & (q < 1.0 - 1.6 / rx)] = Label.FAT
            sub[free & (q < 1.0 - fat / rx)] = Label.MUSCLE

    def _spine(self, z: float, lab: np.ndarray) -> None:
        p = self.p
        y_vb, rx, ry = p.spine(z)
        s = math.sqrt(rx / 18.0)
        phase = ((10.0 * p.h - z) / p.vertebra_mm) % 1.0
        canal_y = y_vb + ry + 8.0 * s
        box = self._box(-rx - 30.0, rx + 30.0, y_vb - ry - 2.0, canal_y + 45.0 * s)
        if box is None:
            return
        X = self.X[:, box[1]]
        Y = self.Y[box[0]]
        sub = lab[box]
        q = np.sqrt((X / rx) ** 2 + ((Y - y_vb) / ry) ** 2)
        body = q < 1.0
        if phase > 0.82:
            sub[body] = Label.DISC
        else:
            sub[body] = Label.BONE_CORTEX
            sub[q < 1.0 - 1.8 / rx] = Label.BONE_MARROW
        rc = 8.0 * s
        dc = np.sqrt(X * X + (Y - canal_y) ** 2)
        if 0.05 < phase < 0.8:
            arch = (dc < rc + 5.0) & (y_vb + ry - 2.0 < Y)
            sub[arch & ~body] = Label.BONE_CORTEX
            if 0.12 < phase < 0.45:
                along = np.abs(X) - 6.0 * s
                tp = (along > 0) & (along < rx + 14.0 * s) & (np.abs(Y - canal_y + 4.0 - 0.35 * along) < 3.2 * s)
                sub[tp & ~body] = Label.BONE_CORTEX
        if 0.3 < phase < 0.97:
            tip = canal_y + rc + 30.0 * s
            spinous = (np.abs(X) < 3.5 * s + 2.0 * (tip - Y) / (30.0 * s)) & (canal_y < Y) & (tip > Y)
            sub[spinous & ~body] = Label.BONE_CORTEX
            sub[spinous & ~body & (np.abs(X) < 1.5 * s + 1.0 * (tip - Y) / (30.0 * s))] = Label.BONE_MARROW
        sub[dc < rc] = Label.CANAL

    def _ribs(self, z: float, full: np.ndarray, body_box: tuple[slice, slice]) -> None:
        cage = self.o.ribs
        if cage is None:
            return
        with np.errstate(invalid="ignore"):
            q = np.abs(z - cage.z) / cage.half_height[:, None]
        q = np.where(np.isnan(q), np.inf, q)
        k = np.argmin(q, axis=0)
        cols = np.arange(q.shape[1])
        qk = q[k, cols]
        if not (qk < 1.0).any():
            return
        half = np.where(qk < 1.0, cage.half_thickness[k] * np.sqrt(np.maximum(1.0 - qk * qk, 0.0)), 0.0)
        center = np.where(qk < 1.0, cage.rho[k, cols], 0.0).astype(np.float32)
        is_bone = cage.label[k] == Label.BONE_MARROW
        lab, bins = full[body_box], self.bins[body_box]
        d = np.abs(self.rho[body_box] - np.take(center, bins))
        hp = np.take(half.astype(np.float32), bins)
        band = (d < hp) & _BONE_OVER[lab]
        if not band.any():
            return
        bone = np.take(is_bone, bins)
        lab[band & ~bone] = Label.CARTILAGE
        lab[band & bone] = Label.BONE_CORTEX
        lab[band & bone & (d < hp - 1.3)] = Label.BONE_MARROW

    def _sternum(self, z: float, lab: np.ndarray, front_radius: float) -> None:
        p = self.p
        top = p.z_notch
        if not top - 235.0 * p.h < z < top:
            return
        if z > top - 50.0 * p.h:
            hw, ht = 24.0 * p.w, 6.5
        elif z > top - 205.0 * p.h:
            hw, ht = 15.0 * p.w, 5.5
        else:
            hw, ht = 8.0 * p.w, 3.0
        yc = -front_radius - ht - 1.0
        box = self._box(-hw, hw, yc - ht, yc + ht)
        if box is None:
            return
        q = (np.abs(self.X[:, box[1]]) / hw) ** 4 + ((self.Y[box[0]] - yc) / ht) ** 2
        sub = lab[box]
        sub[(q < 1.0) & _BONE_OVER[sub]] = Label.BONE_CORTEX
        sub[(q < 0.55) & _BONE_OVER[sub]] = Label.BONE_MARROW

    def _scapulae(self, z: float, lab: np.ndarray, cavity_table: np.ndarray, body_box: tuple[slice, slice]) -> None:
        p = self.p
        z_top, z_bot = 8.0 * p.h, -145.0 * p.h
        if not z_bot < z < z_top:
            return
        t = (z - z_bot) / (z_top - z_bot)
        half = 26.0 * t**0.55
        center = 42.0 + 8.0 * (1.0 - t)
        off = 12.0 * p.m + 9.0
        rows, cols = body_box
        r0 = max(int(np.searchsorted(self.ys, 0.0)), rows.start)
        if r0 >= rows.stop:
            return
        sl = (slice(r0, rows.stop), cols)
        th = self.theta_deg[sl]
        depth = self.rho[sl] - np.take(cavity_table, self.bins[sl])
        sub = lab[sl]
        band = (depth > off) & (depth < off + 5.0) & (sub == Label.MUSCLE)
        left = np.abs(th - center) < half
        right = np.abs((180.0 - th) - center) < half
        sub[band & (left | right)] = Label.BONE_CORTEX

    def _table(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        p = self.p
        top = p.table_top(X)
        table = np.zeros(X.shape, dtype=np.uint8)
        wide = np.abs(X) < 235.0
        table[wide & (top <= Y) & (top + 2.5 > Y)] = Label.TABLE_SHELL
        table[wide & (top + 2.5 <= Y) & (top + 32.0 > Y)] = Label.TABLE_FOAM
        table[wide & (top + 32.0 <= Y) & (top + 34.5 > Y)] = Label.TABLE_SHELL
        if p.pad_mm > 2.0:
            table[(np.abs(X) < 200.0) & (top - p.pad_mm <= Y) & (top > Y)] = Label.PAD
        return table


def _one(cut: tuple[tuple[slice, slice], np.ndarray] | None) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    return [] if cut is None else [cut]


def _z_range(item: Painted) -> tuple[float, float]:
    shape = item.shape
    if isinstance(shape, Tube):
        return shape.z_min, shape.z_max
    reach = shape.extent + item.margin_mm
    return float(shape.center[2] - reach), float(shape.center[2] + reach)


def _mask(labels: frozenset[Label]) -> np.ndarray:
    out = np.zeros(len(Label), dtype=bool)
    out[list(labels)] = True
    return out
