"""Opacities inside the lungs: ground glass and consolidation on the quantification grid (classical).

Step 3 of :mod:`medai.quantify.measure`'s classical and hybrid methods, given the
lung mask: vessels suppressed (a voxel far brighter than its grey opening
takes the opening's value), values averaged within the lung over
``smoothing_mm`` when that is wider than the grid, ground glass judged
against the patient's own parenchyma baseline (a line along
anterior-posterior) and the faintest ground glass, and an opening that drops
thin opacities (atelectasis bands, pleural partial volume).

numpy/scipy only (serving path, no torch). Research use only, not for clinical use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from medai.labels import LESION_NOISE_FLOOR_PERCENT
from medai.preprocess import depth_mm
from medai.quantify.grid import neighbour_extreme
from medai.quantify.lungs import bbox

if TYPE_CHECKING:
    from medai.quantify.params import QuantifyParams

__all__ = ["Opacities", "expiration_scan", "rank_correlation", "segment_opacities"]


@dataclass(frozen=True, eq=False)
class Opacities:
    """What :func:`segment_opacities` found.

    Attributes:
        mask: uint8 0 / 1 ground glass / 2 consolidation, on the quantification grid.
        expiration: the lungs were read as an expiration scan (:func:`expiration_scan`): their baseline is a low
            quantile of each slab, not the clear parenchyma's median. Such a reading is unreliable both ways: the
            independent phantom family's expiration normals read up to 3 % of opacity, and a COVID-19 of 24 %
            read 2 % (docs/ood.md, failure mode 12).
    """

    mask: np.ndarray
    expiration: bool


def _grey_opening(values: np.ndarray, sizes: tuple[int, int, int]) -> np.ndarray:
    """Grey opening with a box of odd ``sizes``: separable minimum then maximum (edges as scipy's ``nearest``)."""
    return _box_extreme(_box_extreme(values, sizes, np.minimum), sizes, np.maximum)


def _box_extreme(values: np.ndarray, sizes: tuple[int, int, int], extreme: np.ufunc) -> np.ndarray:
    """Running minimum or maximum over a box of odd ``sizes``, one axis after the other.

    A window of ``2 r + 1`` along an axis is ``r`` neighbour steps (clipped at the edges: the same result as
    scipy's ``minimum_filter1d(..., mode="nearest")``).
    """
    out = values.copy()
    for axis, size in enumerate(sizes):
        for _ in range(size // 2):
            out = neighbour_extreme(out, (axis,), extreme)
    return out


def _steps(spacing_mm: tuple[float, float, float], depth_mm: float) -> list[tuple[int, ...]]:
    """Axes of the 6-neighbour steps whose successive use reaches about ``depth_mm`` along each axis."""
    counts = [max(0, round(depth_mm / s)) for s in spacing_mm]
    return [tuple(axis for axis in range(3) if counts[axis] > k) for k in range(max(counts))]


def _erode(mask: np.ndarray, axes: tuple[int, ...], *, border: bool = False) -> np.ndarray:
    """Binary erosion by the 6-neighbour cross along ``axes``; outside the array counts as ``border``.

    The same as ``scipy.ndimage.binary_erosion`` with that cross (tested), several times faster here.
    """
    out = neighbour_extreme(mask, axes, np.logical_and)
    if not border:
        for axis in axes:
            view = np.moveaxis(out, axis, 0)
            view[0] = False
            view[-1] = False
    return out


def _dilate(mask: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Binary dilation by the 6-neighbour cross along ``axes`` (as scipy's, tested)."""
    return neighbour_extreme(mask, axes, np.logical_or)


def segment_opacities(
    coarse: np.ndarray,
    lungs: np.ndarray,
    spacing_mm: tuple[float, float, float],
    params: QuantifyParams,
    *,
    ap_dim: int,
    posterior_high: bool = True,
) -> Opacities:
    """Opacity mask (uint8 0 / 1 ground glass / 2 consolidation) inside the lungs, and whether the lungs were read
    as an expiration scan (:class:`Opacities`).

    Vessels: a voxel much brighter than the grey opening (bright structures
    narrower than ``vessel_opening_mm`` removed) takes the opening's value.
    Noise: the values are averaged within the lung over ``smoothing_mm``
    (normalised box filter, the chest wall does not bleed in). The baseline is
    the patient's own parenchyma (:func:`_parenchyma_baseline`) plus the
    dependent lung's excess under its pleura (:func:`_dependent_density`).
    Thin opacities (dependent atelectasis, pleural partial volume) vanish in an
    opening of ``min_opacity_radius_mm``; the opacity around what survives is kept. Connected opacities that
    are bands of dependent atelectasis (posterior, shallow, clearing with depth) are dropped
    (:func:`_drop_dependent_bands`), and so are small ones that are only the partial-volume rim of a vessel
    too wide for the opening (:func:`_drop_vessel_halos`).

    ``posterior_high``: posterior lies at high indices along ``ap_dim`` (LPS rows, the DICOM default).
    """
    out = np.zeros(lungs.shape, dtype=np.uint8)
    lung_all = lungs > 0
    if not lung_all.any():
        return Opacities(out, expiration=False)
    box = bbox(lung_all, (1, 1, 1))
    lung = lung_all[box]
    # The lung's surface layer is partial volume with the chest wall.
    inner = _erode(lung, (0, 1, 2), border=True)
    value, sharp = _opacity_values(coarse[box], lung, inner, spacing_mm, params)
    expiration = expiration_scan(value, inner, params)
    baseline = _parenchyma_baseline(
        value,
        inner,
        ap_dim=ap_dim,
        ap_mm=spacing_mm[ap_dim],
        params=params,
        posterior_high=posterior_high,
        expiration=expiration,
    )
    depth = depth_mm(lung, spacing_mm)  # under the lung's surface: the dependent-density and band rules read it
    baseline = baseline + _dependent_density(
        value - baseline, lung, inner, depth, spacing_mm, ap_dim=ap_dim, posterior_high=posterior_high
    )
    contrast = np.maximum(
        params.ggo_threshold_fraction * (params.ggo_floor_hu - baseline), params.ggo_min_contrast_hu
    ).astype(np.float32)
    opacity = _above(value, baseline + contrast, lung, params)
    # Thin opacities (dependent atelectasis, partial volume along the pleura, lone vessels) vanish in an
    # opening; what survives, with the opacity around it, is a lesion.
    steps = _steps(spacing_mm, params.min_opacity_radius_mm)
    grown = opacity
    for axes in steps:
        grown = _erode(grown, axes)
    for axes in steps:
        grown = _dilate(grown, axes)
    for axes in steps:
        grown = _dilate(grown, axes) & opacity
    # Both part-level rules read the same connected parts (each rule drops whole parts, so the labels stay true).
    parts = ndimage.label(grown, structure=np.ones((3, 3, 3), bool))
    opacity = _drop_dependent_bands(
        grown, coarse[box], lung, depth, ap_dim=ap_dim, posterior_high=posterior_high, parts=parts
    )
    opacity = _drop_vessel_halos(opacity, coarse[box], inner, spacing_mm, parts=parts)
    opacity = _drop_fringed_bands(
        opacity, grown, value, baseline, contrast, coarse[box], lung, depth, params, ap_dim, posterior_high
    )
    view = out[box]
    view[opacity] = 1
    view[opacity & (sharp >= params.consolidation_range_hu[0])] = 2
    return Opacities(out, expiration=expiration)


def _above(value: np.ndarray, threshold: np.ndarray, lung: np.ndarray, params: QuantifyParams) -> np.ndarray:
    """Lung voxels whose ``value`` reaches ``threshold`` and is no denser than consolidation (the opacity test; the
    band rule's fringe reads it at a share of the contrast)."""
    return lung & (value >= threshold) & (value <= params.consolidation_range_hu[1])


def _opacity_values(
    raw: np.ndarray,
    lung: np.ndarray,
    inner: np.ndarray,
    spacing_mm: tuple[float, float, float],
    params: QuantifyParams,
) -> tuple[np.ndarray, np.ndarray]:
    """HU judged by the opacity thresholds (vessels removed, smoothed within the lung) and the unsmoothed HU."""
    sizes = tuple(2 * round(0.5 * params.vessel_opening_mm / s) + 1 for s in spacing_mm)
    opened = _grey_opening(raw, sizes)  # type: ignore[arg-type]
    # Noise (robust std from neighbour differences along x) raises the vessel bar: noise peaks are not vessels.
    pairs = lung[..., 1:] & lung[..., :-1]
    diffs = np.abs(raw[..., 1:] - raw[..., :-1])[pairs]
    noise_hu = 1.4826 * float(np.median(diffs)) / math.sqrt(2.0) if diffs.size else 0.0
    del pairs, diffs
    tophat = max(params.vessel_tophat_hu, params.vessel_noise_factor * noise_hu)
    value = np.where(raw - opened > tophat, opened, raw)
    del opened
    # The lung's surface layer (outside ``inner``) borrows its neighbours' values.
    sharp = value.copy()  # decides ground glass or consolidation once a voxel is an opacity
    value[~inner] = 0.0
    weight = inner.astype(np.float32)
    smooth_sizes = [2 * round(0.5 * params.smoothing_mm / s) + 1 for s in spacing_mm]
    value = ndimage.uniform_filter(value, smooth_sizes, mode="constant")
    weight = ndimage.uniform_filter(weight, smooth_sizes, mode="constant")
    value = np.where(weight > 0.05, value / np.maximum(weight, np.float32(0.05)), raw)
    del weight
    return value, sharp


# Below this share of the inner lung under baseline_max_hu, the lung is read as an expiration scan ...
EXPIRATION_SHARE = 0.15
# ... whose baseline is this quantile of each anterior-posterior slab (its normal parenchyma: no clear part to
# fit, the whole lung sits at -700..-450 HU and follows gravity) ...
EXPIRATION_QUANTILE = 40.0
# ... never above this (a lung denser than this everywhere is disease, not expiration).
EXPIRATION_CAP_HU = -450.0
# The gravity gradient a baseline may take up: HU per mm from anterior to posterior (supine expiration reaches
# about 0.8; more is disease pooled in the dependent lung).
MAX_GRADIENT_HU_PER_MM = 1.2
# A slab with less than this share of its inner lung under baseline_max_hu is dense: the median of its few clear
# voxels would be a censored median, far under its parenchyma (a half-expired lung is -780 HU in front and -680
# behind: read against -765, its whole dependent half was "ground glass", a held-out normal 28.6 %) ...
DENSE_SLAB_SHARE = 0.5
# ... and it is dense parenchyma, read like an expiration scan's slab, when its low quantile rises from the clear
# slab in front of it (or from dense parenchyma so read) no faster than gravity does (MAX_GRADIENT_HU_PER_MM): a
# band of dependent atelectasis or disease filling the back of the lung rises faster.
# A slab with less than this share of its inner lung under baseline_max_hu is censored: the median of its clear
# voxels, and the low quantile of a dense slab, read under its parenchyma (a shallow breath's -770 HU slab read
# -790) ...
CENSORED_SHARE = 0.9
# ... so its level is its own low tail lifted by the spread that the lung's uncensored slabs show between that
# quantile and their median (the patient's texture; disease, above the parenchyma, does not move a low quantile),
# never above the slab's median.
TAIL_QUANTILE = 10.0


def expiration_scan(value: np.ndarray, inner: np.ndarray, params: QuantifyParams) -> bool:
    """Whether a lung is read as an expiration scan: at least 200 inner voxels, and fewer than
    :data:`EXPIRATION_SHARE` of them clearly aerated (``value`` under ``params.baseline_max_hu``).

    Example:
        >>> from medai.quantify.params import QuantifyParams
        >>> inner = np.ones((10, 10, 10), bool)
        >>> expiration_scan(np.full(inner.shape, -600.0), inner, QuantifyParams())
        True
        >>> expiration_scan(np.full(inner.shape, -860.0), inner, QuantifyParams())
        False
    """
    n_inner = int(inner.sum())
    n_clear = int((inner & (value < params.baseline_max_hu)).sum())
    return n_inner >= 200 and n_clear < EXPIRATION_SHARE * n_inner


def _uncensored_level(level: float, tail: float, median: float, tail_spread: float | None) -> float:
    """``level`` of a censored slab (:data:`CENSORED_SHARE`) lifted towards its parenchyma's median: its
    :data:`TAIL_QUANTILE` (``tail``) plus ``tail_spread``, never over its ``median``."""
    if tail_spread is None:
        return level
    return max(level, min(tail + tail_spread, median))


def _parenchyma_baseline(
    value: np.ndarray,
    inner: np.ndarray,
    *,
    ap_dim: int,
    ap_mm: float,
    params: QuantifyParams,
    posterior_high: bool = True,
    expiration: bool,
) -> np.ndarray:
    """The patient's normal-parenchyma HU at every voxel: a line along the anterior-posterior axis.

    Fitted (weighted least squares) through one level per slab of ``baseline_slabs`` slabs, so
    opacities, vessels and the lung's surface do not pull it; the gravity
    gradient of dependent lung is what the slope takes up. A clear slab's level is the median of its clearly
    aerated (``< baseline_max_hu``) inner-lung values, and the line is capped below the ground-glass floor.
    A censored slab (:data:`CENSORED_SHARE`), dense or clear, is read by its low tail and the texture of the
    lung's uncensored slabs (:func:`_uncensored_level`), never under its old reading nor over its median.
    An expiration scan (hardly any lung below ``baseline_max_hu``) has no clear
    part: its line goes through a low quantile of each slab instead, capped at
    :data:`EXPIRATION_CAP_HU`. So does a dense slab (:data:`DENSE_SLAB_SHARE`) of a lung that is clear in
    front, when its low quantile rises from the parenchyma in front of it no faster than gravity
    (:data:`MAX_GRADIENT_HU_PER_MM`): a half-expired lung, not a band or disease filling the back. Whenever a
    slab is read so, the slope is kept within that gradient. Fewer than two usable slabs: one level, the median.

    ``posterior_high``: posterior lies at high indices along ``ap_dim``. ``expiration``: :func:`expiration_scan` of
    ``value`` and ``inner`` (the caller reports it too).
    """
    position = np.arange(value.shape[ap_dim], dtype=np.float32)
    shape = [1, 1, 1]
    shape[ap_dim] = -1
    position = position.reshape(shape)
    cap = params.ggo_floor_hu - params.ggo_min_contrast_hu
    n_clear = int((inner & (value < params.baseline_max_hu)).sum())
    if n_clear < 50 and not expiration:
        return np.full(value.shape, cap, np.float32)
    where = np.broadcast_to(position, value.shape)[inner]
    values = value[inner]
    edges = np.linspace(float(where.min()), float(where.max()) + 1e-3, params.baseline_slabs + 1)
    slab = np.digitize(where, edges[1:-1])
    members = [values[slab == i] for i in range(params.baseline_slabs)]
    aerated = [m[m < params.baseline_max_hu] for m in members]
    clear = [m.size >= 50 and a.size >= DENSE_SLAB_SHARE * m.size for m, a in zip(members, aerated, strict=True)]
    uncensored = [m.size >= 50 and a.size >= CENSORED_SHARE * m.size for m, a in zip(members, aerated, strict=True)]
    centres, levels, weights = [], [], []
    dense = expiration
    # Each usable slab's tail quantile, low quantile and median, in one partition.
    tail, low, median = np.full((3, params.baseline_slabs), np.nan)
    for i, m in enumerate(members):
        if m.size >= 50:
            tail[i], low[i], median[i] = np.percentile(m, (TAIL_QUANTILE, EXPIRATION_QUANTILE, 50.0))
    spread = None  # an expiration scan has no clear part to learn the texture from: its quantile stands
    if any(uncensored) and not expiration:
        kept = [i for i, u in enumerate(uncensored) if u]
        spread = float(np.average(median[kept] - tail[kept], weights=[members[i].size for i in kept]))
    last: tuple[float, float] | None = None  # centre and low quantile of the last slab read as parenchyma
    # From the non-dependent side: a dense slab continues the parenchyma in front of it.
    for i in range(params.baseline_slabs) if posterior_high else reversed(range(params.baseline_slabs)):
        m, a = members[i], aerated[i]
        if m.size < 50:
            continue
        centre = 0.5 * (edges[i] + edges[i + 1])
        gravity = MAX_GRADIENT_HU_PER_MM * ap_mm * abs(centre - last[0]) if last else 0.0
        if expiration or (not clear[i] and last and low[i] <= last[1] + gravity):
            level = _uncensored_level(float(low[i]), float(tail[i]), float(median[i]), spread)
            n, dense, last = m.size, True, (centre, float(low[i]))
        elif a.size >= 50:
            level, n = float(np.median(a)), a.size
            if not uncensored[i]:
                level = _uncensored_level(level, float(tail[i]), float(median[i]), spread)
            if clear[i]:
                last = (centre, float(low[i]))
        else:
            continue
        centres.append(centre)
        levels.append(level)
        weights.append(math.sqrt(n))
    if dense:
        cap = EXPIRATION_CAP_HU
    if len(centres) < 2:
        one = (
            np.percentile(values, EXPIRATION_QUANTILE)
            if expiration
            else np.median(values[values < params.baseline_max_hu])
        )
        return np.full(value.shape, min(float(one), cap), np.float32)
    slope, intercept = np.polyfit(centres, levels, 1, w=weights)
    if dense:
        # Disease pools in the dependent lung: a steeper line than gravity gives is lesion taken for baseline.
        # Keep the slope within bounds, pivoting on the weighted centre of the slabs.
        bound = MAX_GRADIENT_HU_PER_MM * ap_mm
        limited = float(np.clip(slope, 0.0, bound) if posterior_high else np.clip(slope, -bound, 0.0))
        centre = float(np.average(centres, weights=weights))
        intercept += (slope - limited) * centre
        slope = limited
    return np.broadcast_to(np.minimum(intercept + slope * position, cap).astype(np.float32), value.shape)


# Dependent density (gravity): the dependent lung's excess over the non-dependent lung at the same depth under the
# pleura and the same height, taken at this quantile of each cell (what most of a band along the dependent pleura
# has is that patient's normal lung: atelectasis and gravity, not disease; patchy disease leaves most of it clear) ...
DEPENDENT_QUANTILE = 70.0
# ... less this (noise), ...
DEPENDENT_MARGIN_HU = 25.0
# ... in these depth bins (mm under the pleura); deeper lung has no dependent excess.
DEPENDENT_DEPTH_EDGES_MM = (0.0, 4.0, 7.0, 10.0, 14.0, 20.0)
# A band fades: when the dependent lung's excess 20-30 mm under the pleura is still more than this share of its
# excess nearest the pleura, the density is disease reaching into the lung (severe COVID-19 is posterior too),
# not a band, and nothing is added there. (Chosen on the training, held-out and independent-val worlds.)
DEPENDENT_FADE_MM = 30.0
DEPENDENT_FADE_SHARE = 0.5
_MIN_CELL = 30  # voxels of a cell's bin for a quantile


def _dependent_density(
    residual: np.ndarray,
    lung: np.ndarray,
    inner: np.ndarray,
    depth: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    ap_dim: int,
    posterior_high: bool,
) -> np.ndarray:
    """Dependent density to add to the baseline: how much denser the dependent lung is under its pleura.

    The lungs' box is cut into thirds along cranio-caudal and anterior-posterior, and the lung under the pleura
    into depth bins (:data:`DEPENDENT_DEPTH_EDGES_MM`). In each height third, the middle and posterior thirds'
    residual (HU over the baseline line) at :data:`DEPENDENT_QUANTILE` in each depth bin, less the anterior
    third's at the same depth and :data:`DEPENDENT_MARGIN_HU`, is their excess; it never grows with depth, and a
    bin without inner voxels takes the next deeper bin's. A band of dependent atelectasis along the whole
    posterior pleura lifts the quantile; a patchy lesion does not, until it covers most of the band; an excess
    that does not fade by 20-30 mm (:data:`DEPENDENT_FADE_SHARE`) is disease and stays. The most severe disease
    can still lose part of its dependent rim.

    Args:
        residual: smoothed HU minus the baseline line.
        lung, inner: the lung mask and its inner part (on the lungs' box).
        depth: each voxel's depth under the lung's surface, mm (:func:`medai.preprocess.depth_mm` of ``lung``).
        spacing_mm: voxel size (z, y, x).
        ap_dim: the anterior-posterior array dimension.
        posterior_high: posterior is at high indices along ``ap_dim``.
    """
    edges = (*DEPENDENT_DEPTH_EDGES_MM, DEPENDENT_FADE_MM)
    n_bins = len(edges) - 1  # the last bin is the fade check's
    near = lung & (depth < edges[-1])
    where = np.nonzero(near)
    ap_third = (3 * where[ap_dim]) // residual.shape[ap_dim]
    if not posterior_high:
        ap_third = 2 - ap_third
    z_third = (3 * where[0]) // residual.shape[0]
    depth_bin = np.digitize(depth[where], edges[1:])
    cell = (z_third * 3 + ap_third) * n_bins + depth_bin  # one code per (height, AP third, depth bin)
    # The quantile of each cell's inner voxels (the surface layer is partial volume with the chest wall), all
    # cells at once: sort by cell.
    used = inner[where]
    codes, values = cell[used].astype(np.int16), residual[where][used]
    order = np.argsort(codes, kind="stable")  # a radix sort of small codes; a percentile needs no sorted values
    codes, values = codes[order], values[order]
    starts = np.searchsorted(codes, np.arange(9 * n_bins + 1))
    flat = np.full(9 * n_bins, np.nan)
    for code in np.flatnonzero(np.diff(starts) >= _MIN_CELL):
        flat[code] = np.percentile(values[starts[code] : starts[code + 1]], DEPENDENT_QUANTILE)
    level = flat.reshape(3, 3, n_bins)  # height, AP third, depth bin
    excess = np.maximum(level[:, 1:] - level[:, :1] - DEPENDENT_MARGIN_HU, 0.0)  # middle and posterior thirds
    missing = np.isnan(excess)
    excess = np.minimum.accumulate(np.where(missing, np.inf, excess), axis=2)  # never more at depth than nearer
    # A bin without a quantile of its own (the first, on a 3 mm grid: no inner voxel lies within 4 mm of the
    # pleura) takes the next deeper bin's excess; none measured, none added.
    for b in range(n_bins - 2, -1, -1):
        excess[..., b] = np.where(missing[..., b], excess[..., b + 1], excess[..., b])
    excess[~np.isfinite(excess)] = 0.0
    excess[excess[..., -1] > DEPENDENT_FADE_SHARE * excess[..., 0]] = 0.0  # no fade: disease
    excess[..., -1] = 0.0
    table = np.concatenate([np.zeros((3, 1, n_bins)), excess], axis=1).reshape(-1)
    out = np.zeros(residual.shape, np.float32)
    out[where] = table[cell]
    return out


# A connected opacity is a band of dependent atelectasis, not a lesion, when it lies in the dependent lung (its
# median voxel in the posterior 40 % of the lungs' anterior-posterior extent), stays near the pleura (no voxel more
# than DEPENDENT_BAND_MAX_DEPTH_MM under the lung's surface) and gets clearer away from it (the Spearman rank
# correlation of its HU with that depth under DEPENDENT_BAND_MAX_RHO): collapse is densest against the pleura and
# fades inward, where a lesion keeps its own density. (Chosen on the training, held-out and independent-val
# worlds, docs/ood.md; the depth limit was 25 mm until medai.quantify/12: the independent family's thickest bands
# reach 26-33 mm, and at 35 mm one of 60 training-world cases moved, a 50 % COVID-19 by 0.8 points.)
DEPENDENT_BAND_POSTERIOR = 0.6
DEPENDENT_BAND_MAX_DEPTH_MM = 35.0
DEPENDENT_BAND_MAX_RHO = -0.5
_MIN_BAND_VOXELS = 6
# A band also shows itself locally: of the part's pairs of face neighbours at different depths, the deeper voxel
# is the clearer one in at least DEPENDENT_BAND_CLEARING of them (behind the posterior line), or in at least
# DEPENDENT_BAND_CLEARING_FORWARD of them when the part's median lies only behind DEPENDENT_BAND_FORWARD: a band
# over the back half of the diaphragm's dome lies there. Ground glass of its own density clears in about half of
# its pairs, a lesion denser inward in fewer. (medai.quantify/15; chosen on development drawings of the real
# lungs and the cached development phantoms, docs/ood.md failure mode 1: the correlations are pooled over a part
# whose thickness varies along the pleura, its pairs are not.) The bar behind the posterior line was 0.7 until
# medai.quantify/20: the independent family's normals hold bands that clear in 0.55-0.79 of their pairs (median
# 0.69) and its lesions in 0.47-0.63 (docs/ood.md, "tenth"); at 0.65 two more development normals read under 1 %,
# the real patient's 24 atelectasis copies still all do, and the training world's covid19 AUC moves 0.807 -> 0.798.
DEPENDENT_BAND_CLEARING = 0.65
DEPENDENT_BAND_FORWARD = 0.5
DEPENDENT_BAND_CLEARING_FORWARD = 0.75


# Where the threshold cuts a band, the dense core it leaves against the pleura may no longer clear inward: the band's
# clearing fringe lies just under the threshold. So each part is judged again with the lung beside it (one voxel
# step) that is above BAND_FRINGE_SHARE of the opacity contrast (medai.quantify/18, docs/ood.md). That reading cannot
# tell a band from the training world's posterior subpleural COVID-19 ground glass (it took parts of 3-750 ml there),
# so it is read in context, as a radiologist reads a dependent band: only when the rest of the lung is clear, under
# the CT-0 line (medai.labels.LESION_NOISE_FLOOR_PERCENT), is the band atelectasis; beside disease elsewhere it stays
# (medai.quantify/19).
BAND_FRINGE_SHARE = 0.7
BAND_FRINGE_CLEAR_LUNG_PERCENT = LESION_NOISE_FLOOR_PERCENT


def _drop_fringed_bands(
    opacity: np.ndarray,
    grown: np.ndarray,
    value: np.ndarray,
    baseline: np.ndarray,
    contrast: np.ndarray,
    hu: np.ndarray,
    lung: np.ndarray,
    depth: np.ndarray,
    params: QuantifyParams,
    ap_dim: int,
    posterior_high: bool,
) -> np.ndarray:
    """``opacity`` without the parts that read as dependent bands once their faint fringe is added, when what is
    left is under :data:`BAND_FRINGE_CLEAR_LUNG_PERCENT` of ``lung``; otherwise ``opacity`` unchanged.

    ``grown``: the opened opacity whose parts the band rules read; ``value``, ``baseline``, ``contrast``: what the
    opacity threshold compared (:func:`segment_opacities`); ``hu``: the coarse HU the band rule reads.
    """
    floor = BAND_FRINGE_CLEAR_LUNG_PERCENT * int(np.count_nonzero(lung))
    # A band lies wholly within DEPENDENT_BAND_MAX_DEPTH_MM of the pleura: opacity deeper than that always stays.
    if not opacity.any() or 100.0 * int(np.count_nonzero(opacity & (depth >= DEPENDENT_BAND_MAX_DEPTH_MM))) >= floor:
        return opacity
    faint = _above(value, baseline + BAND_FRINGE_SHARE * contrast, lung, params)
    fringed = (_dilate(grown, (0, 1, 2)) & faint) | grown
    del faint
    parts = ndimage.label(fringed, structure=np.ones((3, 3, 3), bool))
    kept = opacity & _drop_dependent_bands(
        fringed, hu, lung, depth, ap_dim=ap_dim, posterior_high=posterior_high, parts=parts
    )
    return kept if 100.0 * int(np.count_nonzero(kept)) < floor else opacity


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` from 0, ties sharing their average rank (as scipy.stats.rankdata, less one; importing
    scipy.stats would add 0.35 s to every served process's start)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (0 when either is constant).

    Example:
        >>> rank_correlation(np.array([1.0, 2, 3, 4]), np.array([9.0, 7, 7, 1]))
        -0.9486832980505138
    """
    ra, rb = _average_ranks(np.ravel(a)), _average_ranks(np.ravel(b))
    ra -= ra.mean()
    rb -= rb.mean()
    norm = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / norm if norm > 0 else 0.0


def _drop_dependent_bands(
    opacity: np.ndarray,
    hu: np.ndarray,
    lung: np.ndarray,
    depth: np.ndarray,
    *,
    ap_dim: int,
    posterior_high: bool,
    parts: tuple[np.ndarray, int],
) -> np.ndarray:
    """``opacity`` without its connected parts that are bands of dependent atelectasis.

    A part is such a band when it lies in the dependent lung (:data:`DEPENDENT_BAND_POSTERIOR`), no deeper
    than :data:`DEPENDENT_BAND_MAX_DEPTH_MM` under the lung's surface (``depth``, mm), and its ``hu`` falls with
    that depth (:data:`DEPENDENT_BAND_MAX_RHO`). The rule of :func:`_dependent_density` takes up a band that
    runs along the whole dependent pleura; this one takes the bands that are thick only in places (at the
    bases, in one lung), which that rule leaves. A band whose thickness varies along the pleura (5 mm here, 25 mm
    there) clears inward everywhere while its voxels' depths, pooled over the part, barely tell its density: so
    a part is a band too when nearly every pair of its face neighbours at different depths is clearer on the
    deeper side (:func:`_clearing_share`, :data:`DEPENDENT_BAND_CLEARING`), and then it may lie a little further
    forward (a band over the back half of the diaphragm's dome, :data:`DEPENDENT_BAND_FORWARD`). Posterior
    disease that keeps its density away from the pleura, or reaches deeper, stays. ``parts``: ``opacity``'s
    connected parts (26 neighbours), as ``ndimage.label`` gives.
    """
    labels, n = parts
    if n == 0:
        return opacity
    where = np.nonzero(labels)
    label = labels[where]
    extent = np.flatnonzero(lung.any(axis=tuple(a for a in range(3) if a != ap_dim)))
    position = (where[ap_dim] - extent[0]) / max(1, int(extent[-1] - extent[0]))
    if not posterior_high:
        position = 1.0 - position
    # Per part, all at once: its voxels sorted by label (and by position within it, for the median).
    order = np.lexsort((position, label))
    label, position, part_depth = label[order], position[order], depth[where][order]
    counts = np.bincount(label, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    posterior = 0.5 * (position[starts + (counts - 1) // 2] + position[starts + counts // 2])
    deepest = np.maximum.reduceat(part_depth, starts)
    shallow = (deepest < DEPENDENT_BAND_MAX_DEPTH_MM) & (counts >= _MIN_BAND_VOXELS)  # fewer: nothing to judge
    candidates = shallow & (posterior > DEPENDENT_BAND_POSTERIOR)
    forward = shallow & (posterior > DEPENDENT_BAND_FORWARD)
    if not forward.any():
        return opacity
    clearing = _clearing_share(labels, n, hu, depth)
    bands = np.zeros(n + 1, bool)
    bands[1:] = (candidates & (clearing >= DEPENDENT_BAND_CLEARING)) | (
        forward & (clearing >= DEPENDENT_BAND_CLEARING_FORWARD)
    )
    part_hu = hu[where][order]
    for i in np.flatnonzero(candidates & ~bands[1:]):
        span = slice(starts[i], starts[i] + counts[i])
        bands[i + 1] = rank_correlation(part_depth[span], part_hu[span]) < DEPENDENT_BAND_MAX_RHO
    return opacity & ~bands[labels] if bands.any() else opacity


def _clearing_share(labels: np.ndarray, n: int, hu: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Per part ``1..n`` of ``labels``: of its pairs of face neighbours (both in the part) whose ``depth`` differs by
    more than 0.5 mm, the share in which the deeper voxel has the lower ``hu`` (0.5 for a part without such pairs).

    Example:
        >>> labels = np.zeros((1, 1, 6), np.int32)
        >>> labels[..., 1:5] = 1
        >>> depth = np.arange(6.0).reshape(1, 1, 6)
        >>> hu = np.array([[[0.0, -300, -400, -450, -420, 0]]])  # clears inward, then one step denser
        >>> _clearing_share(labels, 1, hu, depth).round(2).tolist()
        [0.67]
    """
    clear = np.zeros(n + 1)
    pairs = np.zeros(n + 1)
    for axis in range(3):
        head = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        tail = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        same = (labels[head] == labels[tail]) & (labels[head] > 0)
        step = depth[tail][same] - depth[head][same]
        rise = hu[tail][same] - hu[head][same]
        judged = np.abs(step) > 0.5
        part = labels[head][same][judged]
        pairs += np.bincount(part, minlength=n + 1)
        clear += np.bincount(part, weights=(step[judged] * rise[judged] < 0), minlength=n + 1)
    return np.where(pairs > 0, clear / np.maximum(pairs, 1), 0.5)[1:]


# A connected opacity of at most VESSEL_HALO_MAX_ML (a ball of about 21 mm) that lies, for at least
# VESSEL_HALO_SHARE of its voxels, on or beside (26 neighbours) a bright core of the inner lung (block mean at
# least VESSEL_CORE_HU: a vessel's or bronchial wall's soft tissue or contrast) is that core's partial-volume
# rim: the hilar and lobar arteries are wider than the vessel opening, so their rims survived as 0.1-0.5 % of
# "ground glass" in most normals of every phantom family (docs/ood.md, What changed, item 14). A part that is
# mostly core itself (VESSEL_HALO_MAX_CORE or more: a small solid consolidation) is not a rim and stays.
VESSEL_HALO_MAX_ML = 5.0
VESSEL_HALO_SHARE = 0.9
VESSEL_HALO_MAX_CORE = 0.7
VESSEL_CORE_HU = -150.0


def _drop_vessel_halos(
    opacity: np.ndarray,
    hu: np.ndarray,
    inner: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    parts: tuple[np.ndarray, int],
) -> np.ndarray:
    """``opacity`` without its small connected parts that are the rims of bright cores (vessels, bronchial walls).

    A part goes when it holds at most :data:`VESSEL_HALO_MAX_ML`, at least :data:`VESSEL_HALO_SHARE` of its
    voxels are a bright core of the inner lung (``hu`` >= :data:`VESSEL_CORE_HU`) or touch one, and less than
    :data:`VESSEL_HALO_MAX_CORE` of them are core. Only the inner lung's cores count, so the chest wall does not
    make a subpleural opacity a rim. Ground glass away from vessels, small solid consolidation (mostly core), and
    every part larger than a small ball stay; the cost is small ground glass that wraps a vessel (the nodules of
    a bronchopneumonia, the halo of the smallest consolidations). ``parts``: connected parts (26 neighbours) of
    ``opacity`` or of a mask it was made from by dropping whole parts.
    """
    if not opacity.any():
        return opacity
    core = inner & (hu >= VESSEL_CORE_HU)
    near = _box_extreme(core, (3, 3, 3), np.logical_or)  # on a core or one of its 26 neighbours
    labels, n = parts
    part = labels[opacity]  # per opacity voxel: its part (counting over these alone, not the whole box)
    size = np.bincount(part, minlength=n + 1)
    beside = np.bincount(part, weights=near[opacity], minlength=n + 1)
    solid = np.bincount(part, weights=core[opacity], minlength=n + 1)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    rims = (size * voxel_ml <= VESSEL_HALO_MAX_ML) & (beside >= VESSEL_HALO_SHARE * size)
    rims &= solid < VESSEL_HALO_MAX_CORE * size
    rims[0] = False
    return opacity & ~rims[labels] if rims.any() else opacity
