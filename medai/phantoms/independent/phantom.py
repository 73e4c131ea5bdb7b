"""Build one independent phantom: plan on a coarse grid, render fine planes, reconstruct slices.

The pipeline streams along the body axis. Fine planes (about 1.5 mm
apart, a whole number per slice increment) are labelled, given attenuation,
lungs, lesions, fissures and trees, and kept only as long as a reconstructed
slice still needs them; each slice is the profile-weighted sum of its planes,
then the kernel's blur, streaks and the kernel's noise are applied in-plane.
Ground truth takes the same weights: a voxel is lung (lesion) when at least
half of its profile is lung (lesion), and never lung when a fifth of its
profile is gas in the stomach or bowel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medai.phantoms.independent.coarse import CoarseGrid, lung_map
from medai.phantoms.independent.header import ct_header, series_uids
from medai.phantoms.independent.lesions import CONSOLIDATION, GGO, Lesions
from medai.phantoms.independent.lungmap import Segments
from medai.phantoms.independent.organs import Organs, build_organs
from medai.phantoms.independent.parenchyma import Parenchyma
from medai.phantoms.independent.patient import Patient
from medai.phantoms.independent.raster import TreeRaster
from medai.phantoms.independent.scanner import Kernel, NoiseBank, slice_weights
from medai.phantoms.independent.shapes import Tube
from medai.phantoms.independent.spec import IndependentSpec
from medai.phantoms.independent.tissue import Label, attenuation_table
from medai.phantoms.independent.trees import grow_lungs
from medai.phantoms.independent.voxelize import Voxelizer
from medai.volume import Volume

__all__ = ["IndependentPhantom", "generate_independent"]

_FINE_MM = 1.5  # target spacing of the fine planes (a whole number of them per slice increment)
_COARSE_MM = 3.0  # planning grid
_TEXTURE_MM = 5.0  # grid of the soft-tissue texture
# texture amplitude (HU per unit noise) by label
_TEXTURE_HU = np.zeros(len(Label), dtype=np.float32)
for _label, _amp in {
    Label.FAT: 7.0,
    Label.MUSCLE: 5.0,
    Label.LIVER: 4.0,
    Label.SPLEEN: 5.0,
    Label.KIDNEY_CORTEX: 5.0,
    Label.CHYME: 55.0,
    Label.GLAND: 25.0,
    Label.BONE_MARROW: 35.0,
    Label.THYMUS: 12.0,
    Label.MYOCARDIUM: 4.0,
}.items():
    _TEXTURE_HU[_label] = _amp
_GUT_GAS = 3  # marks gut gas in the per-plane side array
_GAS_VETO = 0.2  # a voxel whose profile is this much gut gas is never lung, whatever the rest
_TREE_OVER = np.zeros(len(Label), dtype=bool)
_TREE_OVER[[Label.LUNG_R, Label.LUNG_L, Label.FAT, Label.NODE, Label.THYMUS]] = True


@dataclass(frozen=True, eq=False)
class IndependentPhantom:
    """One case of the independent family with its exact ground truth.

    Attributes:
        volume: int16 HU in LPS with a CT-like header and a synthetic identity.
        lung_mask: uint8 ``(z, y, x)``: 0 none, 1 right lung, 2 left lung (lesions included).
        lesion_mask: uint8: 0 none, 1 ground glass, 2 consolidation (inside the lungs only).
        spec: what was drawn.
    """

    volume: Volume
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    spec: IndependentSpec

    @property
    def lesion_percent(self) -> float:
        """Lesion voxels as a percentage of lung voxels."""
        lung = int(np.count_nonzero(self.lung_mask))
        return 100.0 * int(np.count_nonzero(self.lesion_mask)) / lung if lung else 0.0

    @property
    def lung_volume_ml(self) -> float:
        """Volume of both lungs (ml)."""
        return int(np.count_nonzero(self.lung_mask)) * self.volume.voxel_volume_ml


def generate_independent(spec: IndependentSpec) -> IndependentPhantom:
    """Render the case ``spec`` (deterministic: the same spec gives the same arrays).

    Example:
        >>> from medai.phantoms.independent import sample_independent_spec
        >>> spec = sample_independent_spec(np.random.default_rng(1), label="normal", matrix=128)
        >>> ph = generate_independent(spec)  # doctest: +SKIP
        >>> ph.volume.hu.dtype, ph.lung_mask.max()  # doctest: +SKIP
        (dtype('int16'), 2)
    """
    return _Renderer(spec).run()


def _rng(spec: IndependentSpec, stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, stream])


class _Renderer:
    def __init__(self, spec: IndependentSpec) -> None:
        self.spec = spec
        f = self.f = spec.factors
        self.patient = p = Patient(spec)
        self.organs: Organs = build_organs(p, _rng(spec, 2))
        matrix = int(f["matrix"])
        fov = float(f["fov_mm"])
        self.px = px = fov / matrix
        cx, cy = (float(v) for v in f["fov_center_mm"])
        self.xs = cx - fov / 2.0 + (np.arange(matrix) + 0.5) * px
        self.ys = cy - fov / 2.0 + (np.arange(matrix) + 0.5) * px
        # slices
        thickness, increment = float(f["slice_mm"]), float(f["increment_mm"])
        z_top = float(f["scan_range"]["top_mm"]) * p.h
        z_bottom = p.z_lowest - float(f["scan_range"]["bottom_mm"])
        n_out = math.floor((z_top - z_bottom) / increment) + 1
        self.z_out = z_bottom + np.arange(n_out) * increment
        n_sub = max(1, round(increment / _FINE_MM))
        self.dz = dz = increment / n_sub
        motion = f["motion"]
        reach = 0.5 * thickness + 4.0 * (0.17 * thickness + 0.15) + float(motion["respiratory_mm"]) + 2.0 * dz
        pad = math.ceil(reach / dz)
        self.z_fine = self.z_out[0] + dz * np.arange(-pad, (n_out - 1) * n_sub + pad + 1)
        shift = mix = None
        if motion["respiratory_mm"]:
            at = z_bottom + float(motion["respiratory_at"]) * (z_top - z_bottom)
            mix = 0.45 * np.exp(-(((self.z_out - at) / 30.0) ** 2))
            shift = np.full(n_out, float(motion["respiratory_mm"]))
        self.weights = slice_weights(self.z_out, self.z_fine, thickness_mm=thickness, shift_mm=shift, mix=mix)
        self.table = attenuation_table(
            f["contrast"], enhancement=f["enhancement"], kvp=f["kvp"], age_years=f["age_years"], rng=_rng(spec, 3)
        )
        self._plan()
        self._prepare_fine()

    # ------------------------------------------------------------------ planning

    def _plan(self) -> None:
        p, spec = self.patient, self.spec
        half = p.cavity_half_width(-200.0 * p.h) + 15.0
        xs = np.arange(-half, half + 1e-6, _COARSE_MM)
        ys = np.arange(-130.0 * p.d, 125.0 * p.d, _COARSE_MM)
        zs = np.arange(p.z_lowest - 6.0, 6.0, _COARSE_MM)
        self.grid = grid = CoarseGrid(xs, ys, zs)
        coarse = Voxelizer(p, self.organs, xs, ys, table=False, lungs_only=True)
        self.lungs, _ = lung_map(coarse, grid)
        self.trees = grow_lungs(self.lungs, self.organs.roots, _rng(spec, 4))
        self.parenchyma = Parenchyma(self.f, p, self.lungs, grid, _rng(spec, 5))
        self.lesions = Lesions(spec, p, self.lungs, grid, self.organs.roots, _rng(spec, 6))
        grid.attach(self.xs, self.ys)
        # soft-tissue texture over the whole field of view
        tx = np.arange(self.xs[0] - _TEXTURE_MM, self.xs[-1] + 2 * _TEXTURE_MM, _TEXTURE_MM)
        ty = np.arange(self.ys[0] - _TEXTURE_MM, self.ys[-1] + 2 * _TEXTURE_MM, _TEXTURE_MM)
        tz = np.arange(self.z_fine[0] - _TEXTURE_MM, self.z_fine[-1] + 2 * _TEXTURE_MM, _TEXTURE_MM)
        self.texture_grid = CoarseGrid(tx, ty, tz)
        from scipy import ndimage

        noise = _rng(spec, 7).standard_normal(self.texture_grid.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, 0.8)
        self.texture = noise / max(float(noise.std()), 1e-6)
        self.texture_grid.attach(self.xs, self.ys)

    def _prepare_fine(self) -> None:
        p, f = self.patient, self.f
        self.voxelizer = Voxelizer(p, self.organs, self.xs, self.ys, table=bool(f["table"]))
        lobe = self.lungs.lobe
        if (lobe > 0).any():
            k, j, i = np.nonzero(lobe)
            lo = self.grid.origin + np.array([i.min(), j.min(), k.min()]) * self.grid.spacing - 25.0
            hi = self.grid.origin + np.array([i.max(), j.max(), k.max()]) * self.grid.spacing + 25.0
        else:
            lo, hi = np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0])
        c0, c1 = np.searchsorted(self.xs, lo[0]), np.searchsorted(self.xs, hi[0])
        r0, r1 = np.searchsorted(self.ys, lo[1]), np.searchsorted(self.ys, hi[1])
        self.win = (slice(int(r0), int(max(r1, r0 + 1))), slice(int(c0), int(max(c1, c0 + 1))))
        self.lung_z = (float(lo[2]), float(hi[2]))
        shape = (self.win[0].stop - self.win[0].start, self.win[1].stop - self.win[1].start)
        origin = {"x0": float(self.xs[self.win[1].start]), "y0": float(self.ys[self.win[0].start])}
        walls, lumen = self.trees["airway"]

        def raster(segments: Segments, splat: bool) -> TreeRaster:
            x0, y0 = origin["x0"], origin["y0"]
            return TreeRaster(segments, x0=x0, y0=y0, pixel_mm=self.px, dz_mm=self.dz, shape=shape, splat=splat)

        self.rasters = {
            "artery": raster(self.trees["artery"][0], True),
            "vein": raster(self.trees["vein"][0], True),
            "wall": raster(walls, False),
            "lumen": raster(lumen, False),
            "holes": raster(self.parenchyma.holes, False),
        }
        fis = self.voxelizer.fissures
        self.sheets = {}
        for name, height in fis.items():
            h = height[self.win]
            gy, gx = np.gradient(h, self.px)
            self.sheets[name] = (h, (1.0 / np.sqrt(1.0 + gx * gx + gy * gy)).astype(np.float32))
        completeness = p.fissure_complete
        xw = np.abs(self.xs[self.win[1]])[None, :]
        self.fissure_visible = np.broadcast_to(xw > (1.0 - completeness) * 90.0 * p.w + 15.0, shape)
        kernel_scale = float(_rng(self.spec, 8).uniform(0.9, 1.1))
        body = p.contours(-150.0 * p.h).body
        aspect = float(body.max() / max(float(body[len(body) * 3 // 4]), 1.0))
        stretch = float(np.clip(0.45 * (aspect - 1.0), 0.0, 0.45))
        self.kernel = Kernel(
            f["kernel"], (len(self.ys), len(self.xs)), self.px, float(f["iterative"]), stretch, kernel_scale
        )
        self.noise = NoiseBank(self.kernel, _rng(self.spec, 9))
        yy = (self.ys[:, None] - 0.0) ** 2
        xx = (self.xs[None, :] - 0.0) ** 2
        self.rho2 = (xx + yy).astype(np.float32)

    # ------------------------------------------------------------------ fine planes

    def _plane(self, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """HU of the fine plane ``z``; on the lung window, its lung side or gut gas and its lesion class.

        The side array holds 0 (neither), 1 (right lung), 2 (left lung) or :data:`_GUT_GAS`.
        """
        lab = self.voxelizer.plane(z)
        hu = np.take(self.table, lab)
        tex = self.texture_grid.plane(self.texture, z)
        hu += np.take(_TEXTURE_HU, lab) * tex
        chyme = lab == Label.CHYME
        if chyme.any():
            hu[chyme & (tex > 0.9)] = -960.0
        rows, cols = self.win
        sub = lab[self.win]
        side = np.zeros(sub.shape, dtype=np.uint8)
        cls = np.zeros(sub.shape, dtype=np.uint8)
        side[sub == Label.GAS] = _GUT_GAS
        if not self.lung_z[0] <= z <= self.lung_z[1]:
            return hu, side, cls
        lung_r = sub == Label.LUNG_R
        lung = lung_r | (sub == Label.LUNG_L)
        h = hu[self.win]
        if lung.any():
            side[lung_r] = 1
            side[lung & ~lung_r] = 2
            dens = self.parenchyma.plane(z, rows, cols, self.ys)
            lobe = self.voxelizer.lobes(z, lung_r, window=self.win)
            les, density, lines = self.lesions.plane(z, rows, cols, lung, lobe)
            cls = les
            ggo = les == GGO
            cons = les == CONSOLIDATION
            if ggo.any():
                level = (
                    np.float32(-730.0)
                    + np.float32(360.0) * density**0.8
                    + np.float32(18.0) * (self.grid.plane(self.parenchyma.texture, z, rows, cols))
                )
                dens = np.where(ggo, np.maximum(dens, level), dens)
                if lines is not None:
                    dens = np.where(ggo & (lines < 0.13), dens + np.float32(150.0), dens)
            if cons.any():
                cons_hu = np.float32(10.0 + 0.25 * (self.table[Label.MUSCLE] - 50.0))
                dens = np.where(
                    cons, cons_hu + np.float32(8.0) * self.grid.plane(self.parenchyma.texture, z, rows, cols), dens
                )
            holes = self.rasters["holes"].plane(z)
            dens = dens + holes * (np.float32(-990.0) - dens) * (les == 0)
            dens = (
                dens
                + self.parenchyma.fissures(
                    z, self.sheets, lung_r, self.fissure_visible, pixel_mm=self.px, dz_mm=self.dz
                )
                * ~cons
            )
            h[lung] = dens[lung]
        over = np.take(_TREE_OVER, sub)
        if over.any():
            for name, label in (("artery", Label.BLOOD_PULM_ART), ("vein", Label.BLOOD_PULM_VEIN)):
                cov = self.rasters[name].plane(z) * over
                h += cov * (np.float32(self.table[label]) - h)
            cov = self.rasters["wall"].plane(z) * over
            h += cov * (np.float32(self.table[Label.AIRWAY_WALL]) - h)
            cov = self.rasters["lumen"].plane(z) * over
            h += cov * (np.float32(-1000.0) - h)
        return hu, side, cls

    @staticmethod
    def _truth(hu: np.ndarray, side: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """A fine plane as kept until its slices are done: HU, and its ground-truth indicators (None if empty)."""
        if not side.any():
            return hu, None
        truth = np.stack([side == 1, side == 2, side == _GUT_GAS, cls > 0, cls == CONSOLIDATION]).astype(np.float32)
        return hu, truth

    # ------------------------------------------------------------------ slices

    def run(self) -> IndependentPhantom:
        f, spec = self.f, self.spec
        n_out = len(self.z_out)
        rows, cols = len(self.ys), len(self.xs)
        out = np.empty((n_out, rows, cols), dtype=np.int16)
        lung_mask = np.zeros((n_out, rows, cols), dtype=np.uint8)
        lesion_mask = np.zeros((n_out, rows, cols), dtype=np.uint8)
        cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        rng = _rng(spec, 10)
        artifacts = _Artifacts(self, rng)
        win_shape = (self.win[0].stop - self.win[0].start, self.win[1].stop - self.win[1].start)
        tmp = np.empty((rows, cols), dtype=np.float32)
        for k in range(n_out):
            idx, w = self.weights[k]
            for j in idx:
                if j not in cache:
                    cache[int(j)] = self._truth(*self._plane(float(self.z_fine[j])))
            hu = np.zeros((rows, cols), dtype=np.float32)
            frac = np.zeros((5, *win_shape), dtype=np.float32)  # right, left, gut gas, lesion, consolidation
            for j, wj in zip(idx, w, strict=True):
                plane, truth = cache[int(j)]
                hu += np.multiply(plane, wj, out=tmp)
                if truth is not None:
                    frac += wj * truth
            r_frac, l_frac, gas, les, con = frac
            lung = ((r_frac + l_frac) >= 0.5) & (gas < _GAS_VETO)
            lung_mask[k][self.win] = np.where(lung, np.where(r_frac >= l_frac, 1, 2), 0)
            lesion = lung & (les >= 0.5)
            lesion_mask[k][self.win] = np.where(lesion, np.where(con >= les - con, 2, 1), 0)
            out[k] = artifacts.finish(k, hu)
            nxt = self.weights[k + 1][0].min() if k + 1 < n_out else len(self.z_fine)
            for j in [j for j in cache if j < nxt]:
                del cache[j]
        study_uid, series_uid = series_uids(spec.seed)
        z_shift = float(_rng(spec, 11).uniform(-250.0, -50.0))
        volume = Volume(
            out,
            spacing_mm=(float(f["increment_mm"]), self.px, self.px),
            origin_mm=(float(self.xs[0]), float(self.ys[0]), float(self.z_out[0]) + z_shift),
            direction=np.eye(3),
            series_uid=series_uid,
            study_uid=study_uid,
            header=ct_header(spec),
        )
        return IndependentPhantom(volume=volume, lung_mask=lung_mask, lesion_mask=lesion_mask, spec=spec)


class _Artifacts:
    """In-plane steps of one reconstructed slice: motion ghost, kernel blur, streaks, noise, field of view."""

    def __init__(self, r: _Renderer, rng: np.random.Generator) -> None:
        self.r, self.rng = r, rng
        f = r.f
        self.cardiac = float(f["motion"]["cardiac_mm"])
        self.shoulder = bool(f["artifacts"]["shoulder_streaks"])
        self.contrast = bool(f["artifacts"]["contrast_streaks"])
        self.gamma = 0.45 if f["aec"] else 1.5
        self.noise_hu = float(f["noise_hu"])
        fov = float(f["fov_mm"])
        cx, cy = (float(v) for v in f["fov_center_mm"])
        dx = r.xs[None, :] - cx
        dy = r.ys[:, None] - cy
        self.outside = (dx * dx + dy * dy) > (fov / 2.0) ** 2 if f["fov_circle"] else None
        self.svc = next((item.shape for item in r.organs.mediastinum if item.label == Label.BLOOD_SVC), None)

    def finish(self, k: int, hu: np.ndarray) -> np.ndarray:
        r = self.r
        z = float(r.z_out[k])
        if self.cardiac:
            hu = self._heart_motion(hu, z)
        hu = r.kernel.blur(hu)
        water = np.clip((hu + 1000.0) / 1000.0, 0.0, 3.0)
        d_w = 2.0 * math.sqrt(float(water.sum()) * r.px * r.px / math.pi)
        sigma = self.noise_hu * float(np.clip((d_w / 280.0) ** self.gamma, 0.3, 4.0))
        radius2 = max(d_w / 2.0, 60.0) ** 2
        if self.shoulder:
            hu += self._shoulder_streaks(z, sigma)
        if self.contrast and self.svc is not None:
            hu += self._contrast_streaks(z)
        profile = np.float32(1.12) - np.float32(0.32) * np.minimum(r.rho2 / np.float32(radius2), 1.2)
        hu += r.noise.draw() * (np.float32(sigma) * profile)
        if self.outside is not None:
            hu[self.outside] = -1024.0
        return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    def _heart_motion(self, hu: np.ndarray, z: float) -> np.ndarray:
        """Pulsation: near the heart's left border the slice mixes with a copy shifted by the motion amplitude."""
        heart = self.r.organs.heart
        if heart is None or abs(z - heart.center[2]) > heart.extent:
            return hu
        r = self.r
        reach = float(heart.radii.max()) + 60.0
        c0, c1 = np.searchsorted(r.xs, heart.center[0] - 30.0), np.searchsorted(r.xs, heart.center[0] + reach)
        r0, r1 = np.searchsorted(r.ys, heart.center[1] - reach), np.searchsorted(r.ys, heart.center[1] + reach)
        if c1 - c0 < 4 or r1 - r0 < 4:
            return hu
        dx = (r.xs[None, c0:c1] - heart.center[0]).astype(np.float32)
        dy = (r.ys[r0:r1, None] - heart.center[1]).astype(np.float32)
        ring = np.sqrt(dx * dx + dy * dy) - np.float32(0.8 * heart.radii[1])
        alpha = np.float32(0.45) * np.exp(-(ring * ring) / np.float32(2 * 22.0**2))
        shift = max(1, round(self.cardiac / r.px))
        box = hu[r0:r1, c0:c1]
        moved = np.empty_like(box)  # the box moved right by `shift` and down by a third of it, edges repeated
        moved[:, shift:] = box[:, :-shift]
        moved[:, :shift] = box[:, :1]
        down = shift // 3
        if down:
            moved[down:] = moved[:-down].copy()
        hu = hu.copy()
        hu[r0:r1, c0:c1] = box + alpha * (moved - box)
        return hu

    def _lines(self, x0: float, y0: float, angles: np.ndarray, amps: np.ndarray, decay_mm: float) -> np.ndarray:
        """Thin lines through ``(x0, y0)`` at ``angles``, fading with the distance from that point.

        Each line is drawn along its length one pixel at a time, with a Gaussian profile over the few
        pixels across it (cost per line: its length, not the image).
        """
        r = self.r
        rows, cols = len(r.ys), len(r.xs)
        out = np.zeros(rows * cols, dtype=np.float32)
        half = 0.6 * float(r.xs[-1] - r.xs[0])
        t = np.arange(-half, half, 0.7 * r.px)
        across = np.arange(-3, 4)
        width = 0.8 * r.px
        for angle, amp in zip(angles, amps, strict=True):
            c, s = math.cos(angle), math.sin(angle)
            px = (x0 + t * c - r.xs[0]) / r.px
            py = (y0 + t * s - r.ys[0]) / r.px
            horizontal = abs(c) >= abs(s)
            # step across the line along the image axis closer to its normal
            cx, cy = np.broadcast_arrays(
                np.rint(px)[:, None] + (0 if horizontal else across[None, :]),
                np.rint(py)[:, None] + (across[None, :] if horizontal else 0),
            )
            dist = np.abs((cx - px[:, None]) * s - (cy - py[:, None]) * c) * r.px
            value = amp * np.exp(-(dist * dist) / (2 * width * width)) * np.exp(-np.abs(t) / decay_mm)[:, None]
            value *= 0.7  # samples every 0.7 pixel along the line
            ok = (cx >= 0) & (cx < cols) & (cy >= 0) & (cy < rows)
            np.add.at(out, (cy[ok] * cols + cx[ok]).astype(np.intp), value[ok].astype(np.float32))
        return out.reshape(rows, cols)

    def _shoulder_streaks(self, z: float, sigma: float) -> np.ndarray:
        p = self.r.patient
        t = (z - (-30.0 * p.h)) / (45.0 * p.h)
        if abs(t) >= 1.0:
            return np.zeros((len(self.r.ys), len(self.r.xs)), dtype=np.float32)
        strength = 0.5 * (1.0 + math.cos(math.pi * t))
        n = int(self.rng.integers(8, 18))
        angles = self.rng.normal(0.0, 0.08, n)
        amps = self.rng.uniform(-3.5, 1.5, n) * sigma * strength
        y0 = float(self.rng.normal(0.0, 25.0))
        return self._lines(0.0, y0, angles, amps, 400.0)

    def _contrast_streaks(self, z: float) -> np.ndarray:
        if not isinstance(self.svc, Tube):
            return np.zeros((len(self.r.ys), len(self.r.xs)), dtype=np.float32)
        pts = self.svc.points
        lo, hi = pts[:, 2].min(), pts[:, 2].max()
        if not lo < z < hi:
            return np.zeros((len(self.r.ys), len(self.r.xs)), dtype=np.float32)
        order = np.argsort(pts[:, 2])
        x0 = float(np.interp(z, pts[order, 2], pts[order, 0]))
        y0 = float(np.interp(z, pts[order, 2], pts[order, 1]))
        n = int(self.rng.integers(8, 16))
        angles = self.rng.uniform(0.0, math.pi, n)
        amps = self.rng.uniform(-1.0, 1.0, n) * 160.0
        return self._lines(x0, y0, angles, amps, 35.0)
