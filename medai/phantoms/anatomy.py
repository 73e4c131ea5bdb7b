"""Patient anatomy of the phantom world, in continuous patient millimetres.

A patient is a handful of numbers drawn from a seed (:func:`sample_anatomy`):
thorax size and shape, diaphragm domes, heart, fissures, a space-filling
pulmonary vessel tree with the bronchial tree beside it. Everything is defined
in LPS millimetres (x to the patient's left, y posterior, z superior; z = 0 at
the lowest costophrenic recess) and only *sampled* on a voxel grid by
:func:`medai.phantoms.render.render_anatomy`, so the same seed gives the same patient at
any resolution.

Used by :mod:`medai.phantoms.synthetic`; the lesions live in :mod:`medai.phantoms.pathology`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "Anatomy",
    "Enhancement",
    "Grid",
    "Lobe",
    "SmoothField",
    "Tissue",
    "Tree",
    "ellipse_sdf",
    "ellipsoid_sdf",
    "enhancement",
    "sample_anatomy",
]


class Tissue(enum.IntEnum):
    """Tissue codes of :attr:`medai.phantoms.render.AnatomyImage.tissue` (dominant tissue per voxel)."""

    AIR = 0
    FAT = 1
    SOFT_TISSUE = 2  # muscle, liver, spleen, oesophagus, airway walls
    BLOOD = 3  # heart, great vessels (unenhanced)
    BONE = 4
    LUNG = 5
    TABLE = 6


class Lobe(enum.IntEnum):
    """Lung lobes (0 outside the lungs)."""

    RIGHT_UPPER = 1
    RIGHT_MIDDLE = 2
    RIGHT_LOWER = 3
    LEFT_UPPER = 4
    LEFT_LOWER = 5


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates (LPS mm) of an axis-aligned grid, axes (z, y, x)."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in (self.z, self.y, self.x))  # type: ignore[return-value]

    def axes(self, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable float32 coordinate arrays ``(z[:,None,None], y[None,:,None], x[None,None,:])``."""
        sz, sy, sx = box or (slice(None),) * 3
        return (
            self.z[sz].astype(np.float32)[:, None, None],
            self.y[sy].astype(np.float32)[None, :, None],
            self.x[sx].astype(np.float32)[None, None, :],
        )

    def box(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) of the voxels inside the LPS box, or None if empty."""
        out = []
        for axis, lo, hi in (
            (self.z, lo_xyz[2], hi_xyz[2]),
            (self.y, lo_xyz[1], hi_xyz[1]),
            (self.x, lo_xyz[0], hi_xyz[0]),
        ):
            step = axis[1] - axis[0] if len(axis) > 1 else 1.0
            i0 = max(int(np.floor((lo - axis[0]) / step)), 0)
            i1 = min(int(np.ceil((hi - axis[0]) / step)) + 1, len(axis))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]


class SmoothField:
    """A smooth zero-mean, unit-variance random field in patient mm.

    Gaussian noise on a lattice of ``step_mm`` covering ``lo..hi``, smoothed by
    one lattice step and interpolated linearly, so it does not depend on the
    grid it is sampled on.
    """

    def __init__(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, step_mm: float) -> None:
        self.lo = np.asarray(lo, np.float64) - 2 * step_mm
        self.step = float(step_mm)
        n = np.ceil((np.asarray(hi) + 2 * step_mm - self.lo) / step_mm).astype(int) + 1
        lattice = ndimage.gaussian_filter(rng.standard_normal((n[2], n[1], n[0])).astype(np.float32), 1.0)
        self.lattice = lattice / max(float(lattice.std()), 1e-6)

    def on_grid(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Field at the tensor grid of 1D coordinates ``z, y, x`` (separable interpolation)."""
        out = self.lattice
        for axis, coords, lo in ((2, x, self.lo[0]), (1, y, self.lo[1]), (0, z, self.lo[2])):
            idx = np.clip((np.ravel(coords) - lo) / self.step, 0, out.shape[axis] - 1.001)
            i0 = idx.astype(np.intp)
            w = (idx - i0).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = len(w)
            w = w.reshape(shape)
            out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i0 + 1, axis=axis) * w
        return out

    def at_points(self, xyz: np.ndarray) -> np.ndarray:
        """Field at points ``(n, 3)`` (x, y, z)."""
        idx = ((np.asarray(xyz) - self.lo) / self.step)[:, ::-1].T
        return ndimage.map_coordinates(self.lattice, idx, order=1, mode="nearest")


@dataclass(frozen=True)
class Tree:
    """Cylindrical segments of a branching tree (vessels or airways), LPS mm."""

    start: np.ndarray  # (n, 3)
    end: np.ndarray  # (n, 3)
    radius: np.ndarray  # (n,)
    depth: np.ndarray  # (n,) generation, 0 at the root

    def __len__(self) -> int:
        return len(self.radius)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One patient: geometry parameters in mm (already patient-scaled) and trees."""

    scale: float
    height: float  # lung height H, recess (z=0) to apex
    half_width: float  # A, thoracic cavity half width at the bases
    half_depth: float  # B, thoracic cavity half depth
    dome: tuple[float, float]  # (right, left) diaphragm dome heights above z=0
    heart: tuple[float, ...]  # centre x, y, z, semi-axes a, b, c, rotation (rad)
    spine_y: float
    spine_radius: float
    fat_mm: float
    muscle_mm: float
    back_muscle_mm: float
    body_exponent: float
    female: bool
    fissure: tuple[float, ...]  # right oblique (post z, ant z), left oblique (post, ant), right horizontal z
    rib_pitch: float
    rib_drop: float
    rib_phase: float
    lung_hu: float  # mean parenchyma HU (inspiration depth)
    gravity_hu: float  # extra HU posterior vs anterior
    fat_hu: float
    muscle_hu: float
    blood_hu: float
    gastric_bubble: bool
    offset: tuple[float, float, float]  # where the scan centre sits relative to the thorax
    tubes: list[tuple[np.ndarray, np.ndarray, float, str]] = field(repr=False)  # start, end, radius, kind
    arteries: tuple[Tree, Tree] = field(repr=False)  # right, left
    veins: tuple[Tree, Tree] = field(repr=False)
    airways: tuple[Tree, Tree] = field(repr=False)
    seed: int = 0
    # Drawn from their own stream ([seed, 10]) so the patient above stays what it was for a seed.
    extra_fat_mm: float = 0.0  # obesity: subcutaneous and abdominal fat on top of fat_mm
    expiration: float = 0.0  # 0 full inspiration .. 1 expiration scan (denser, slightly smaller lungs)
    liver_hu: float = 58.0
    spleen_hu: float = 47.0
    kidney_hu: float = 32.0
    bowel_seed: int = 0  # layout of the gas-filled colon and small-bowel loops under the diaphragm

    # --- analytic geometry, vectorised over broadcastable coordinate arrays -------------------------

    def cavity(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thoracic cavity ellipse (half width, half depth, centre y) at height z."""
        t = np.asarray(z, np.float32) / self.height
        top = np.clip((t - 0.55) / 0.45, 0, 1.15) ** 2
        a = self.half_width * (1 - 0.08 * np.clip(t, 0, 0.55) - 0.45 * top)
        b = self.half_depth * (1 - 0.03 * np.clip(t, 0, 0.55) - 0.25 * top)
        cy = 0.08 * self.half_depth * np.clip((t - 0.5) / 0.5, 0, 1)
        return a, b, cy

    def diaphragm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the diaphragm surface below each lung (domes, posterior recess)."""
        A, B = self.half_width, self.half_depth
        right = x < 0
        dome = np.where(right, self.dome[0], self.dome[1])
        rho2 = ((np.abs(x) - 0.42 * A) / (0.58 * A)) ** 2 + ((y + 0.1 * B) / (0.95 * B)) ** 2
        return np.maximum(dome * (1 - rho2), -0.06 * self.height)

    def apex(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        A, B = self.half_width, self.half_depth
        rho2 = ((np.abs(x) - 0.45 * A) / (0.5 * A)) ** 2 + ((y - 0.1 * B) / (0.8 * B)) ** 2
        return self.height * (1 - 0.4 * rho2)

    def cavity_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        a, b, cy = self.cavity(z)
        return ellipse_sdf(x, y - cy, a, b)

    def mediastinum_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) to mediastinum, heart and vertebral body."""
        A, B, H = self.half_width, self.half_depth, self.height
        t = z / H
        wm = A * (0.13 + 0.07 * np.exp(-(((t - 0.52) / 0.1) ** 2)))
        front = np.clip((y + B) / (1.1 * B), 0, 1)
        column = np.maximum(np.abs(x) - wm * (0.45 + 0.55 * front), y - self.spine_y)
        spine = np.hypot(x / 1.15, y - self.spine_y) - self.spine_radius - 3.0
        return np.minimum(np.minimum(column, spine), self.heart_sdf(x, y, z, margin=4.0))

    def heart_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, *, margin: float = 0.0) -> np.ndarray:
        hx, hy, hz, ha, hb, hc, rot = self.heart
        c, s = np.cos(rot), np.sin(rot)
        u, v = c * (x - hx) + s * (y - hy), -s * (x - hx) + c * (y - hy)
        return ellipsoid_sdf(u, v, z - hz, ha + margin, hb + margin, hc + margin)

    def lung_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) to the lungs, both sides."""
        out = np.maximum(self.cavity_sdf(x, y, z), -self.mediastinum_sdf(x, y, z))
        out = np.maximum(out, self.diaphragm(x, y) - z)
        return np.maximum(out, z - self.apex(x, y))

    def pleural_depth(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Distance (mm) to the costal, diaphragmatic or apical pleura (not the mediastinal one)."""
        depth = np.minimum(-self.cavity_sdf(x, y, z), z - self.diaphragm(x, y))
        return np.minimum(depth, self.apex(x, y) - z)

    def lobe(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Lobe code (:class:`Lobe`) of lung points; callers mask to the lungs."""
        right = x < 0
        lower = z < self.oblique_fissure(x, y)
        rul = z > self.fissure[4] - 0.04 * (y - 0)
        out = np.where(right, np.where(lower, Lobe.RIGHT_LOWER, np.where(rul, Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE)), 0)
        return np.where(right, out, np.where(lower, Lobe.LEFT_LOWER, Lobe.LEFT_UPPER)).astype(np.uint8)

    def oblique_fissure(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        post = np.where(x < 0, self.fissure[0], self.fissure[2])
        ant = np.where(x < 0, self.fissure[1], self.fissure[3])
        A, B = self.half_width, self.half_depth
        return post + (ant - post) * np.clip((B - y + 0.6 * (np.abs(x) - 0.5 * A)) / (1.7 * B), 0, 1.1)

    def fissure_distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate distance (mm) to the nearest fissure."""
        B = self.half_depth
        slope = np.where(x < 0, self.fissure[1] - self.fissure[0], self.fissure[3] - self.fissure[2]) / (1.7 * B)
        d_obl = np.abs(z - self.oblique_fissure(x, y)) / np.sqrt(1 + slope**2)
        d_hor = np.where((x < 0) & (z > self.oblique_fissure(x, y)), np.abs(z - self.fissure[4] + 0.04 * y), 1e3)
        return np.minimum(d_obl, d_hor)

    def inside_lungs(self, xyz: np.ndarray) -> np.ndarray:
        x, y, z = (xyz[:, i].astype(np.float32) for i in range(3))
        return self.lung_sdf(x, y, z) < -1.0

    def hilum(self, side: int) -> np.ndarray:
        """Root of the pulmonary artery tree of ``side`` (0 right, 1 left)."""
        A, B, H = self.half_width, self.half_depth, self.height
        return np.array([-0.24 * A, 0.08 * B, 0.57 * H]) if side == 0 else np.array([0.24 * A, 0.16 * B, 0.6 * H])


@dataclass(frozen=True)
class Enhancement:
    """HU of the blood pools and the solid organs in one contrast phase.

    ``phase``: ``none`` (unenhanced), ``venous`` (portal-venous chest CT: everything moderately bright) or
    ``arterial`` (CT pulmonary angiogram: pulmonary arteries and right heart very bright, veins less).
    """

    phase: str
    pulmonary_artery_hu: float  # pulmonary trunk and arteries (also inside the lungs)
    vein_hu: float  # pulmonary veins, left heart, aorta
    heart_hu: float  # the heart's mean (chambers and myocardium)
    systemic_vein_hu: float  # superior vena cava (undiluted contrast on its way in)
    liver_hu: float
    spleen_hu: float
    kidney_hu: float


def enhancement(a: Anatomy, phase: str, level: float) -> Enhancement:
    """The HU of ``a``'s blood pools and organs in contrast ``phase`` at ``level`` (0..1, bolus strength).

    Example:
        >>> e = enhancement(sample_anatomy(1), "arterial", 0.5)
        >>> e.pulmonary_artery_hu > 250 > sample_anatomy(1).blood_hu
        True
    """
    b = a.blood_hu
    if phase == "none":
        return Enhancement(phase, b, b, b, b, a.liver_hu, a.spleen_hu, a.kidney_hu)
    if phase == "venous":
        blood = 120.0 + 90.0 * level
        return Enhancement(
            phase,
            blood,
            blood,
            0.8 * blood + 10,
            blood + 60,
            a.liver_hu + 45 + 25 * level,
            a.spleen_hu + 60 + 30 * level,
            a.kidney_hu + 120 + 60 * level,
        )
    if phase == "arterial":
        pa = 280.0 + 220.0 * level
        return Enhancement(
            phase,
            pa,
            0.55 * pa,
            0.7 * pa,
            pa + 150,
            a.liver_hu + 10,
            a.spleen_hu + 40 + 40 * level,
            a.kidney_hu + 90 + 80 * level,
        )
    raise ValueError(f"phase must be 'none', 'venous' or 'arterial', not {phase!r}")


def ellipse_sdf(x: np.ndarray, y: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """First-order signed distance to an ellipse (exact on the axes, good near the boundary)."""
    gx, gy = x / (a * a), y / (b * b)
    q = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    return (q - 1) * q / np.maximum(np.sqrt(gx * gx + gy * gy), 1e-6)


def ellipsoid_sdf(u: np.ndarray, v: np.ndarray, w: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    g = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (w / c**2) ** 2)
    return (q - 1) * q / np.maximum(g, 1e-6)


# --- sampling a patient ------------------------------------------------------------------------------


def sample_anatomy(seed: int, *, patient_scale: float = 1.0) -> Anatomy:
    """Draw one patient's anatomy from ``seed`` (independent of any disease label).

    Example:
        >>> a = sample_anatomy(7)
        >>> 150 < a.height < 300 and len(a.arteries[0]) > 100
        True
    """
    rng = np.random.default_rng([seed, 1])
    s = float(patient_scale)
    u = rng.uniform
    A = 125 * s * u(0.9, 1.1)
    B = A * u(0.66, 0.82)
    H = 245 * s * u(0.9, 1.07)
    dome_r = H * u(0.17, 0.3)
    dome = (dome_r, dome_r - H * u(0.0, 0.07))
    hs = u(0.85, 1.15)
    ha, hb, hc = 0.43 * A * hs, 0.55 * B * hs, 0.22 * H * hs
    heart = (0.14 * A, -0.22 * B, dome[1] + 0.55 * hc, ha, hb, hc, u(0.35, 0.75))
    spine_y, spine_r = 0.8 * B, 0.16 * A * u(0.9, 1.1)
    fr = (0.62 * H * u(0.95, 1.05), dome[0] + u(0, 10) * s, 0.66 * H * u(0.95, 1.05), dome[1] + u(0, 10) * s)
    fissure = (*fr, 0.5 * H * u(0.93, 1.07))
    anat_kw = dict(
        scale=s,
        height=H,
        half_width=A,
        half_depth=B,
        dome=dome,
        heart=heart,
        spine_y=spine_y,
        spine_radius=spine_r,
        fat_mm=u(4, 32) * s,
        muscle_mm=u(7, 16) * s,
        back_muscle_mm=u(22, 38) * s,
        body_exponent=u(2.0, 2.7),
        female=bool(rng.random() < 0.5),
        fissure=fissure,
        rib_pitch=H / u(8.5, 9.5),
        rib_drop=0.25 * H * u(0.8, 1.2),
        rib_phase=u(0, 1),
        lung_hu=(lung_hu := u(-880, -810)),
        gravity_hu=(gravity_hu := u(20, 90)),
        fat_hu=u(-110, -90),
        muscle_hu=u(38, 55),
        blood_hu=u(32, 48),
        gastric_bubble=bool(rng.random() < 0.6),
        offset=(u(-15, 15) * s, u(-10, 10) * s, u(-12, 12) * s),
        seed=seed,
    )
    extra = np.random.default_rng([seed, 10])
    obese = extra.random() < 0.2
    expiration = float(extra.uniform(0.4, 1.0)) if extra.random() < 0.12 else 0.0
    anat_kw.update(
        extra_fat_mm=float(extra.uniform(15, 55) * s) if obese else 0.0,
        expiration=expiration,
        liver_hu=float(extra.uniform(50, 68)),
        spleen_hu=float(extra.uniform(42, 52)),
        kidney_hu=float(extra.uniform(28, 38)),
        bowel_seed=int(extra.integers(2**31 - 1)),
    )
    if expiration:  # expiration: denser parenchyma, a stronger dependent gradient
        anat_kw["lung_hu"] = lung_hu + 110 * expiration
        anat_kw["gravity_hu"] = gravity_hu + 60 * expiration
    proto = Anatomy(tubes=[], arteries=(), veins=(), airways=(), **anat_kw)  # type: ignore[arg-type]
    tubes = _mediastinal_tubes(proto)
    tree_rng = np.random.default_rng([seed, 2])
    arteries, veins, airways = [], [], []
    for side in (0, 1):
        pts_a = _points_in_lung(proto, side, 1000, tree_rng)
        pts_v = _points_in_lung(proto, side, 800, tree_rng)
        art = grow_tree(proto.hilum(side), pts_a, 6.0 * s, tree_rng)
        vroot = np.array([(-0.2 if side == 0 else 0.2) * A, -0.02 * B, dome[1] + 0.45 * hc])
        arteries.append(art)
        veins.append(grow_tree(vroot, pts_v, 5.5 * s, tree_rng))
        airways.append(_airways_beside(art, tubes[7 + side][1], tree_rng))
    return Anatomy(tubes=tubes, arteries=tuple(arteries), veins=tuple(veins), airways=tuple(airways), **anat_kw)  # type: ignore[arg-type]


def _mediastinal_tubes(a: Anatomy) -> list[tuple[np.ndarray, np.ndarray, float, str]]:
    """Great vessels, trachea, main bronchi and oesophagus as straight tubes.

    Indices 7 and 8 are the right and left main bronchi; their ends root the airway trees.
    """
    A, B, H, s = a.half_width, a.half_depth, a.height, a.scale
    hz = a.heart[2]

    def p(x: float, y: float, z: float) -> np.ndarray:
        return np.array([x * A, y * B, z * H])

    aorta = [p(-0.06, -0.2, hz / H), p(-0.04, -0.15, 0.68), p(0.05, 0.15, 0.77), p(0.2, 0.45, 0.72), p(0.2, 0.55, 0.64)]
    aorta.append(p(0.2, 0.55, -0.3))
    tubes = [(aorta[i], aorta[i + 1], (14.0 if i < 2 else 12.0) * s, "blood") for i in range(5)]
    trunk, carina = p(0.06, -0.05, 0.56), p(0, 0.25, 0.62)
    atrium_z = (a.dome[1] + 0.45 * a.heart[5]) / H
    tubes += [
        (p(0.12, -0.3, hz / H + 0.05), trunk, 13.0 * s, "blood"),  # 5 pulmonary trunk
        (trunk, a.hilum(0), 10.0 * s, "blood"),  # 6 right pulmonary artery
        (carina, p(-0.22, 0.3, 0.57), 6.5 * s, "air"),  # 7 right main bronchus
        (carina, p(0.24, 0.33, 0.56), 5.5 * s, "air"),  # 8 left main bronchus
        (p(0, 0.2, 1.5), carina, 9.0 * s, "air"),  # 9 trachea
        (trunk, a.hilum(1), 10.0 * s, "blood"),  # 10 left pulmonary artery
        (p(0.05, 0.5, 1.5), p(0.06, 0.5, -0.3), 7.5 * s, "soft"),  # 11 oesophagus
        (p(-0.2, -0.02, atrium_z), p(0.02, 0.05, hz / H + 0.1), 7.0 * s, "blood"),  # 12 right pulmonary veins
        (p(0.2, -0.02, atrium_z), p(0.06, 0.05, hz / H + 0.1), 7.0 * s, "blood"),  # 13 left pulmonary veins
        (p(-0.03, -0.05, 1.5), p(-0.05, -0.1, 0.6), 9.0 * s, "blood"),  # 14 superior vena cava
    ]
    return tubes


def _points_in_lung(a: Anatomy, side: int, n: int, rng: np.random.Generator) -> np.ndarray:
    A, B, H = a.half_width, a.half_depth, a.height
    lo = np.array([-A if side == 0 else 0, -B, -0.06 * H])
    hi = np.array([0 if side == 0 else A, 1.1 * B, H])
    out: list[np.ndarray] = []
    count = 0
    while count < n:
        cand = lo + (hi - lo) * rng.random((4 * n, 3))
        cand = cand[a.inside_lungs(cand)]
        out.append(cand)
        count += len(cand)
    return np.concatenate(out)[:n]


def grow_tree(root: np.ndarray, points: np.ndarray, root_radius: float, rng: np.random.Generator) -> Tree:
    """Space-filling tree from ``root`` to ``points`` by recursive median splits.

    Each node heads part of the way towards the centroid of the points it
    supplies, then splits them in two along a random direction weighted by
    their spread; radii follow Murray's law with the supplied point count, so
    the tree tapers towards the periphery.
    """
    starts, ends, radii, depths = [], [], [], []
    n_total = len(points)
    normals = rng.standard_normal((2 * n_total, 3))
    fracs = rng.uniform(0.3, 0.6, 2 * n_total)
    stack = [(np.asarray(root, np.float64), points, 0)]
    node = 0
    while stack:
        start, pts, depth = stack.pop()
        n = len(pts)
        radius = root_radius * (n / n_total) ** (1 / 2.7)
        centroid = pts.sum(axis=0) / n
        end = centroid if n <= 2 else start + (0.4 if depth == 0 else fracs[node]) * (centroid - start)
        starts.append(start)
        ends.append(end)
        radii.append(radius)
        depths.append(depth)
        if n <= 2:
            continue
        proj = pts @ (normals[node] * (pts.max(axis=0) - pts.min(axis=0)))
        node += 1
        order = np.argpartition(proj, n // 2)
        stack.append((end, pts[order[: n // 2]], depth + 1))
        stack.append((end, pts[order[n // 2 :]], depth + 1))
    return Tree(np.array(starts), np.array(ends), np.array(radii), np.array(depths))


def _airways_beside(artery: Tree, bronchus_end: np.ndarray, rng: np.random.Generator) -> Tree:
    """Bronchi running beside the arteries (same branching), visible down to ~1 mm lumen radius."""
    keep = artery.radius >= 1.1
    start, end, r = artery.start[keep], artery.end[keep], artery.radius[keep] * rng.uniform(0.85, 1.1)
    d = end - start
    perp = np.cross(d, np.array([0.0, 0.0, 1.0]))
    small = np.linalg.norm(perp, axis=1) < 1e-3 * np.linalg.norm(d, axis=1) + 1e-9
    perp[small] = np.cross(d[small], np.array([0.0, 1.0, 0.0]))
    perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
    offset = perp * (artery.radius[keep] + r * 1.25 + 0.8)[:, None]
    new_start, new_end = start + offset, end + offset
    new_start[artery.depth[keep] == 0] = bronchus_end
    return Tree(new_start, new_end, r, artery.depth[keep])
