"""Lung opacities of the phantom world: COVID-19, other pneumonia, and look-alikes.

Each class is a *propensity* field over the lungs built from its radiology;
thresholding it at the quantile that leaves ``severity`` of the lung volume
above gives the lesion extent, so lesion volume is exact whatever the pattern.
A separate *density* field decides ground glass (about -700..-300 HU) against
consolidation (about -100..+40 HU), identically for every class; only
location, distribution and morphology differ:

* ``covid19``: multifocal, bilateral (90 %), peripheral/subpleural, posterior
  and lower-zone predominant ground glass; crazy paving (septal reticulation)
  in the progressive stage; consolidation in the cores at later stages.
* ``other_pneumonia``: lobar consolidation bounded by fissures with
  air bronchograms (the airways are drawn over it) and ground-glass margins;
  segmental consolidation (a wedge from the hilum's side out to the pleura,
  within one lobe); focal (round) pneumonia, a consolidated ball with a
  ground-glass halo; bronchopneumonia (clustered centrilobular/peribronchial
  nodules along bronchovascular bundles, patchy confluence); or central
  peribronchial opacities around one or both hila.

Confounders independent of the label (dependent atelectasis, plate-like
atelectasis and scars, small solid nodules, emphysema) are applied to every
class and never enter the lesion mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medai.phantoms.anatomy import Anatomy, Grid, Lobe, SmoothField
from medai.phantoms.render import AnatomyImage

__all__ = ["SEVERITY_CAP", "Lesions", "Pattern", "apply_confounders", "render_lesions", "sample_pattern"]

#: Largest lesion share a pattern draws, whatever the asked severity: a segment, or a round pneumonia.
SEVERITY_CAP = {"segmental": 0.2, "focal": 0.05}

GGO_HU = (-720.0, -300.0)
CONSOLIDATION_HU = (-90.0, 40.0)


@dataclass(frozen=True)
class Pattern:
    """The disease pattern drawn for a seed and label."""

    label: str
    kind: str  # none | covid | lobar | segmental | focal | bronchopneumonia | central
    stage: float  # 0 early (ground glass) .. 1 late (consolidation)
    crazy_paving: float  # 0..1 strength of septal reticulation in ground glass
    bilateral: bool


@dataclass(frozen=True, eq=False)
class Lesions:
    """Lesion layers over the lung box."""

    fraction: np.ndarray  # float32 partial-volume lesion fraction (>= 0.5 inside the lesion)
    hu: np.ndarray  # float32 lesion HU
    consolidation: np.ndarray  # float32 1 where the lesion is consolidation (density >= 0.5)


def sample_pattern(label: str, seed: int) -> Pattern:
    """The pattern of ``label`` for ``seed`` (deterministic).

    Example:
        >>> sample_pattern("covid19", 1).kind
        'covid'
    """
    rng = np.random.default_rng([seed, 4])
    stage, cp, bilateral_draw, kind_draw = rng.random(4)
    if label == "normal":
        return Pattern(label, "none", 0.0, 0.0, False)
    if label == "covid19":
        paving = float(np.clip(1.2 - abs(stage - 0.5) * 3.5, 0, 1)) * (cp < 0.75)
        return Pattern(label, "covid", float(stage), paving, bool(bilateral_draw < 0.9))
    kinds = ((0.3, "lobar"), (0.5, "segmental"), (0.65, "focal"), (0.85, "bronchopneumonia"), (1.0, "central"))
    kind = next(name for bound, name in kinds if kind_draw < bound)
    one_sided = kind in ("lobar", "segmental", "focal")
    return Pattern(label, kind, float(0.4 + 0.6 * stage), 0.0, bool(bilateral_draw < (0.1 if one_sided else 0.5)))


def _add_blobs(
    out: np.ndarray, grid: Grid, box: tuple[slice, ...], centres: np.ndarray, sigmas: np.ndarray, amps: np.ndarray
) -> None:
    sub = Grid(*(g[s] for g, s in zip((grid.z, grid.y, grid.x), box, strict=True)))
    for c, sig, amp in zip(centres, sigmas, amps, strict=True):
        b = sub.box(c - 3 * sig, c + 3 * sig)
        if b is None:
            continue
        z, y, x = sub.axes(b)
        q = ((x - c[0]) / sig[0]) ** 2 + ((y - c[1]) / sig[1]) ** 2 + ((z - c[2]) / sig[2]) ** 2
        out[b] += np.float32(amp) * np.exp(-0.5 * q)


def _sample_points(a: Anatomy, rng: np.random.Generator, n: int, weight, side: int | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``n`` lung points drawn with acceptance probability ``weight(x, y, z)`` in [0, 1]."""
    A, B, H = a.half_width, a.half_depth, a.height
    lo = np.array([-A if side != 1 else 0.0, -B, -0.06 * H])
    hi = np.array([A if side != 0 else 0.0, 1.1 * B, H])
    out: list[np.ndarray] = []
    count = 0
    for _ in range(200):
        cand = lo + (hi - lo) * rng.random((64 * max(n, 1), 3))
        cand = cand[a.inside_lungs(cand)]
        cand = cand[rng.random(len(cand)) < weight(*cand.T)]
        out.append(cand)
        count += len(cand)
        if count >= n:
            break
    pts = np.concatenate(out) if out else np.zeros((0, 3))
    return pts[:n]


def render_lesions(a: Anatomy, grid: Grid, img: AnatomyImage, pattern: Pattern, severity: float) -> Lesions | None:
    """Lesion layers for ``pattern`` covering ``severity`` of the lung volume (None for normal)."""
    if pattern.kind == "none" or severity <= 0:
        return None
    rng = np.random.default_rng([a.seed, 5])
    A, B, H, s = a.half_width, a.half_depth, a.height, a.scale
    box = img.box
    z, y, x = grid.axes(box)
    shape = img.lung_weight.shape
    lung = img.lung_weight >= 0.5
    candidates = lung & (img.lumen < 0.5)
    _, _, cy = a.cavity(z)
    post = np.clip((y - cy) / B * 0.5 + 0.5, 0, 1)  # 0 anterior .. 1 posterior
    low = np.clip(1 - z / H, 0, 1)  # 1 at the bases
    lo_f, hi_f = np.array([-A, -B, -0.1 * H]), np.array([A, 1.2 * B, H])
    margin = SmoothField(rng, lo_f, hi_f, 6.0 * s).on_grid(grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])
    prop = np.zeros(shape, np.float32)

    def depth_fn(px, py, pz):  # type: ignore[no-untyped-def]
        return a.pleural_depth(px, py, pz)

    n_side = [0, 1] if pattern.bilateral else [int(rng.integers(2))]
    if pattern.kind == "covid":
        depth = a.pleural_depth(x, y, z)
        prior = np.exp(-np.maximum(depth, 0) / (18 * s)) * (0.55 + 0.45 * post) * (0.55 + 0.45 * low)
        prop += 0.45 * prior + 0.12 * margin
        n_foci = int(rng.integers(3, 8) + 14 * severity)
        centres = []
        for i in range(n_foci):
            side = n_side[i % len(n_side)]

            def weight(px, py, pz):  # type: ignore[no-untyped-def]
                d = np.maximum(depth_fn(px, py, pz), 0)
                pp = np.clip(py / B * 0.5 + 0.5, 0, 1)
                return np.exp(-d / (12 * s)) * (0.35 + 0.65 * pp) * (0.35 + 0.65 * np.clip(1 - pz / H, 0, 1))

            centres.append(_sample_points(a, rng, 1, weight, side))
        c = np.concatenate(centres)
        sig = rng.uniform(8, 22, (len(c), 3)) * s
        _add_blobs(prop, grid, box, c, sig, rng.uniform(0.7, 1.0, len(c)))
        dens_base, dens_gain = -0.12 + 0.55 * pattern.stage, 0.75 * pattern.stage
    elif pattern.kind == "lobar":
        lobe = a.lobe(x, y, z)
        choices = np.array([Lobe.RIGHT_LOWER, Lobe.LEFT_LOWER, Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE, Lobe.LEFT_UPPER])
        target = int(rng.choice(choices, p=[0.3, 0.25, 0.15, 0.15, 0.15]))
        right_target = target <= Lobe.RIGHT_LOWER
        same_side = (lobe <= Lobe.RIGHT_LOWER) == right_target
        prop += np.where(lobe == target, 1.0, np.where(same_side, 0.45, 0.0)).astype(np.float32)
        seed_pt = _sample_points(a, rng, 1, lambda px, py, pz: (a.lobe(px, py, pz) == target).astype(float))
        if len(seed_pt):
            dist = np.sqrt((x - seed_pt[0, 0]) ** 2 + (y - seed_pt[0, 1]) ** 2 + (z - seed_pt[0, 2]) ** 2)
            prop += 0.35 * np.exp(-dist / (50 * s))
        prop += 0.1 * margin
        dens_base, dens_gain = 0.4 + 0.1 * pattern.stage, 0.9
    elif pattern.kind == "segmental":
        # a wedge within one lobe, apex towards the hilum, base on the pleura: the distal part fills first
        lobe = a.lobe(x, y, z)
        target = int(rng.choice(np.array([Lobe.RIGHT_LOWER, Lobe.LEFT_LOWER, Lobe.RIGHT_UPPER, Lobe.LEFT_UPPER])))
        side = 0 if target <= Lobe.RIGHT_LOWER else 1
        base = _sample_points(
            a, rng, 1, lambda px, py, pz: (a.lobe(px, py, pz) == target) * (a.pleural_depth(px, py, pz) < 12 * s)
        )
        apex = a.hilum(side)
        if len(base):
            axis = base[0] - apex
            length = max(float(np.linalg.norm(axis)), 1.0)
            u = axis / length
            px, py, pz = x - np.float32(apex[0]), y - np.float32(apex[1]), z - np.float32(apex[2])
            along = px * u[0] + py * u[1] + pz * u[2]
            across = np.sqrt(np.maximum(px * px + py * py + pz * pz - along * along, 0))
            opening = np.float32(rng.uniform(0.35, 0.6))
            inside = np.clip(1 - across / (opening * np.maximum(along, 1.0)), 0, 1) * (along > 0)
            prop += (0.5 + 0.5 * np.clip(along / length, 0, 1.2)) * inside * np.where(lobe == target, 1.0, 0.2)
        prop += 0.05 * margin
        severity = min(severity, SEVERITY_CAP["segmental"])
        dens_base, dens_gain = 0.45 + 0.1 * pattern.stage, 0.8
    elif pattern.kind == "focal":
        # round pneumonia: one (or two) consolidated balls with a ground-glass halo
        for _ in range(1 if rng.random() < 0.75 else 2):
            c = _sample_points(a, rng, 1, lambda px, py, pz: 0.4 + 0.6 * np.clip(1 - pz / H, 0, 1), n_side[0])
            if len(c):
                dist2 = (x - c[0, 0]) ** 2 + (y - c[0, 1]) ** 2 + (z - c[0, 2]) ** 2
                prop += np.exp(-dist2 / (rng.uniform(15, 30) * s) ** 2) * rng.uniform(0.8, 1.0)
        prop += 0.004 * margin  # a slightly irregular edge, no satellite islands
        severity = min(severity, SEVERITY_CAP["focal"])
        dens_base, dens_gain = 0.25 + 0.1 * pattern.stage, 1.0
    elif pattern.kind == "bronchopneumonia":
        n_regions = int(rng.integers(1, 4))
        ends = np.concatenate([t.end for t in a.arteries])
        centres, sigmas, amps = [], [], []
        for i in range(n_regions):
            side = n_side[i % len(n_side)]
            focus = _sample_points(a, rng, 1, lambda px, py, pz: 0.3 + 0.7 * np.clip(1 - pz / H, 0, 1), side)
            if not len(focus):
                continue
            near = ends[np.linalg.norm(ends - focus[0], axis=1) < rng.uniform(35, 60) * s]
            centres += [near, focus]
            sigmas += [np.full((len(near), 3), rng.uniform(2.5, 4.5) * s), np.full((1, 3), rng.uniform(12, 20) * s)]
            amps += [rng.uniform(0.7, 1.0, len(near)), np.array([0.6])]
        if centres:
            _add_blobs(prop, grid, box, np.concatenate(centres), np.concatenate(sigmas), np.concatenate(amps))
        depth = a.pleural_depth(x, y, z)
        prop += 0.2 * low + 0.08 * margin + 0.1 * np.clip(depth / (40 * s), 0, 1)
        dens_base, dens_gain = 0.2 + 0.2 * pattern.stage, 0.8
    else:  # central peribronchial
        for side in n_side:
            h = a.hilum(side)
            dist = np.sqrt((x - h[0]) ** 2 + (y - h[1]) ** 2 + (z - h[2]) ** 2)
            prop += np.exp(-dist / (45 * s)) * rng.uniform(0.8, 1.0)
        prop += 0.25 * np.clip(img.vessel * 3, 0, 1) * (prop > 0.2) + 0.12 * margin
        dens_base, dens_gain = 0.1 + 0.3 * pattern.stage, 0.6

    n_lung = int(lung.sum())
    k = round(min(severity, 0.95) * n_lung)
    values = prop[candidates]
    if k <= 0 or values.size == 0:
        return None
    k = min(k, values.size)
    thr = np.partition(values, values.size - k)[values.size - k]
    top = np.partition(values, values.size - 1)[values.size - 1]
    span = max(float(top - thr), 1e-6)
    soft = 0.01 * span + 1e-6
    fraction = np.clip((prop - thr) / soft + 0.5, 0, 1) * candidates
    inner = np.clip((prop - thr) / span, 0, 1)
    noise = SmoothField(rng, lo_f, hi_f, 5.0 * s).on_grid(grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])
    density = np.clip(dens_base + dens_gain * np.sqrt(inner) + 0.12 * noise, 0, 1)
    cons = density >= 0.5
    ggo_hu = GGO_HU[0] + (GGO_HU[1] - GGO_HU[0]) * np.clip(density / 0.5, 0, 1)
    con_hu = CONSOLIDATION_HU[0] + (CONSOLIDATION_HU[1] - CONSOLIDATION_HU[0]) * np.clip((density - 0.5) / 0.5, 0, 1)
    hu = np.where(cons, con_hu, ggo_hu).astype(np.float32) + 8 * noise
    if pattern.crazy_paving > 0:
        ridge = SmoothField(rng, lo_f, hi_f, 3.0 * s).on_grid(grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])
        lines = np.clip(1 - np.abs(ridge) / 0.18, 0, 1)
        hu += np.float32(240 * pattern.crazy_paving) * lines * ~cons
    return Lesions(fraction.astype(np.float32), hu, cons.astype(np.float32))


def apply_confounders(a: Anatomy, grid: Grid, img: AnatomyImage, parenchyma: np.ndarray) -> np.ndarray:
    """Label-independent look-alikes added to the parenchyma HU (not lesions).

    Dependent (posterior subpleural) atelectasis, small solid nodules and
    centrilobular emphysema, each present in some patients of every class.
    """
    rng = np.random.default_rng([a.seed, 6])
    z, y, x = grid.axes(img.box)
    s = a.scale
    out = parenchyma
    p_atel, p_nod, p_emph = rng.random(3)
    p_plate = np.random.default_rng([a.seed, 12]).random()
    if p_atel < 0.45:
        thickness = rng.uniform(2, 9) * s
        _, _, cy = a.cavity(z)
        posterior = np.clip((y - cy) / a.half_depth - 0.45, 0, 1) * 2
        band = np.clip(1 - a.pleural_depth(x, y, z) / thickness, 0, 1) * np.clip(posterior, 0, 1)
        out = out + band * (np.float32(rng.uniform(-380, -150)) - out)
    if p_nod < 0.3:
        n = int(rng.integers(1, 4))
        pts = _sample_points(a, rng, n, lambda px, py, pz: np.ones_like(px))
        for c in pts:
            r = rng.uniform(1.8, 4.0) * s
            dist = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
            frac = np.clip((r - dist) / 0.8 + 0.5, 0, 1)
            out = out + frac * (np.float32(30) - out)
    if p_plate < 0.3:  # plate-like (discoid) atelectasis or a scar: a thin dense band in a lower zone
        prng = np.random.default_rng([a.seed, 13])
        centre = _sample_points(a, prng, 1, lambda px, py, pz: np.clip(1 - pz / a.height, 0, 1))
        if len(centre):
            normal = prng.normal(size=3) * np.array([0.3, 0.3, 1.0])
            normal /= np.linalg.norm(normal)
            c = centre[0]
            px, py, pz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
            off = np.abs(px * normal[0] + py * normal[1] + pz * normal[2])
            reach = np.sqrt(np.maximum(px * px + py * py + pz * pz - off * off, 0))
            half = prng.uniform(1.0, 2.5) * s
            plate = np.clip(1.5 - off / half, 0, 1) * np.clip(1 - reach / (prng.uniform(25, 60) * s), 0, 1)
            out = out + plate * (np.float32(prng.uniform(-250, 0)) - out)
    if p_emph < 0.12:
        lo, hi = np.array([-a.half_width, -a.half_depth, 0]), np.array([a.half_width, a.half_depth, a.height])
        holes = SmoothField(rng, lo, hi, 2.5 * s).on_grid(grid.z[img.box[0]], grid.y[img.box[1]], grid.x[img.box[2]])
        upper = np.clip(z / a.height * 1.6 - 0.5, 0, 1)
        out = out - np.clip(holes - 1.0, 0, 1.5) * 90 * upper
    return out.astype(np.float32)
