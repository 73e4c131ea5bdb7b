"""Lung segmentation on the quantification grid: aerated lungs, airways, right/left, dense pathology.

Classical image processing on the block-mean grid of :mod:`medai.quantify.measure`
(numpy/scipy only, no torch). Steps, all on the coarse grid:

1. *Aerated lung.* ``hu < lung_threshold_hu`` minus air connected (within its
   slice) to the in-plane image border, i.e. outside air; then large 3D parts.
2. *Airways.* The trachea is the dark (``< airway_threshold_hu``) part entering
   at the top near the midline; it and its connected dark bronchi are removed.
3. *Right/left.* Patient right is LPS -x; separate parts are assigned whole;
   lungs that touch are cut, slice by slice, at the thinnest column near the midline.
4. *Dense pathology.* Consolidation and ground glass are not air: per-slice hole
   filling adds enclosed opacities and vessels, a 3D closing with a ball of
   ``closing_radius_mm`` adds pleural-based ones.
5. *Symmetry.* A lung whose consolidation reaches the chest wall over a whole
   lobe is not recovered by a closing. The other lung, mirrored about the
   body's midline (the bones' centre), is the shape prior: soft-tissue voxels
   inside the mirror, connected to that side's lung and lateral to its medial
   edge, are added back.
6. *Lateral envelope.* Bilateral peripheral consolidation (COVID-19) defeats
   the mirror. A lung's lateral edge, as a height map over (slice, row), is
   smooth; where it falls back from the grey closing of that map over
   ``lateral_envelope_mm`` (a pleural-based bite), the soft-tissue voxels
   between the edge and the envelope, contiguous with the lung, are added,
   never closer to the ribs than the patient's usual lung-to-rib gap.

Research use only, not for clinical use.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from medai.quantify.grid import neighbour_extreme

if TYPE_CHECKING:
    from medai.quantify.params import QuantifyParams

__all__ = [
    "bbox",
    "drop_detached_parts",
    "drop_gut_gas",
    "drop_unsupported_dense",
    "peel_surface_fat",
    "segment_lungs",
    "split_sides",
    "trim_below_aerated_base",
]

log = logging.getLogger(__name__)

_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[1] = ndimage.generate_binary_structure(2, 1)


def bbox(mask: np.ndarray, margin: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(idx[0]) - margin[axis]) if idx.size else 0
        hi = min(mask.shape[axis], int(idx[-1]) + 1 + margin[axis]) if idx.size else 0
        slices.append(slice(lo, hi))
    return slices[0], slices[1], slices[2]


def _part_sizes_and_means(labels: np.ndarray, n: int, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count and mean HU of each labelled part, indexed by label (``n + 1`` entries; the background's are 0)."""
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n + 1).astype(np.float64)
    sizes[0] = 0.0
    sums = np.bincount(flat, weights=hu.ravel(), minlength=n + 1)
    return sizes, np.divide(sums, sizes, out=np.zeros_like(sums), where=sizes > 0)


def _lung_parts(mask: np.ndarray, hu: np.ndarray, min_voxels: float, *, gas_hu: float) -> np.ndarray:
    """Connected parts (6-connectivity) that look like lung.

    Kept: at least ``min_voxels`` and 5 % of the largest part, and not gas
    (stomach bubble, bowel, oesophagus, a detached trachea): a part other than
    the largest whose mean is below ``gas_hu`` (parenchyma is about -850 HU,
    gas -1000 HU) and which is smaller than 30 % of the largest is dropped.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    sizes, mean_hu = _part_sizes_and_means(labels, n, hu)
    largest = float(sizes.max())
    keep = sizes >= max(min_voxels, 0.05 * largest)
    keep &= ~((mean_hu < gas_hu) & (sizes < 0.3 * largest))
    keep[0] = False
    return keep[labels]


def _border_connected(mask: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` connected, within their slice, to the in-plane border of the array."""
    labels, n = ndimage.label(mask, structure=_INPLANE)
    border = np.zeros(n + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = False  # label 0 is outside the mask
    return border[labels]


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Per-slice hole filling: background not connected (in its slice) to the in-plane border is filled."""
    return mask | ~_border_connected(~mask)


def _closing(mask: np.ndarray, radius_vox: int) -> np.ndarray:
    """Binary closing with an octagonal ball of ``radius_vox`` (alternating 6- and 26-neighbour steps)."""
    if radius_vox < 1:
        return mask.copy()
    cross = ndimage.generate_binary_structure(3, 1)
    cube = ndimage.generate_binary_structure(3, 3)
    steps = [cross if k % 2 == 0 else cube for k in range(radius_vox)]
    out = np.pad(mask, radius_vox)
    for s in steps:
        out = ndimage.binary_dilation(out, structure=s)
    for s in steps:
        out = ndimage.binary_erosion(out, structure=s, border_value=1)
    r = radius_vox
    return out[r:-r, r:-r, r:-r]


def segment_lungs(
    coarse: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    lr_dim: int,
    right_low: bool,
    sup_high: bool,
    params: QuantifyParams,
) -> np.ndarray:
    """Lung mask (uint8 0/1 right/2 left) on the coarse grid."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    air = coarse < params.lung_threshold_hu
    candidate = air & ~_border_connected(air)
    del air
    candidate = _lung_parts(candidate, coarse, params.min_lung_part_ml / voxel_ml, gas_hu=params.airway_threshold_hu)
    out = np.zeros(coarse.shape, dtype=np.uint8)
    if not candidate.any():
        log.warning("no lung found: no air enclosed by the body")
        return out
    radius = [math.ceil(params.closing_radius_mm / s) + 2 for s in spacing_mm]
    box = bbox(candidate, (radius[0], radius[1], radius[2]))
    mirror_axis = _body_midline(coarse[box[0]], lr_dim=lr_dim, params=params)
    if mirror_axis is not None:  # widen the box so that it holds both sides' mirror images
        lr_box = box[lr_dim]
        lo = max(0, math.floor(min(lr_box.start, 2 * mirror_axis - lr_box.stop)))
        hi = min(coarse.shape[lr_dim], math.ceil(max(lr_box.stop, 2 * mirror_axis - lr_box.start + 1)))
        box = tuple(slice(lo, hi) if a == lr_dim else box[a] for a in range(3))  # type: ignore[assignment]
    hu = coarse[box]
    candidate = candidate[box]
    if mirror_axis is not None:
        midline = mirror_axis - box[lr_dim].start
    else:
        lr_extent = np.flatnonzero(candidate.any(axis=tuple(a for a in range(3) if a != lr_dim)))
        midline = 0.5 * float(lr_extent[0] + lr_extent[-1])
    airway = _airways(hu, candidate, spacing_mm, midline=midline, lr_dim=lr_dim, sup_high=sup_high, params=params)
    lungs = _lung_parts(candidate & ~airway, hu, params.min_lung_part_ml / voxel_ml, gas_hu=params.airway_threshold_hu)
    sides = split_sides(lungs, spacing_mm, midline=midline, lr_dim=lr_dim, right_low=right_low, params=params)
    sides = _add_dense_pathology(sides, hu, spacing_mm, lr_dim=lr_dim, right_low=right_low, params=params)
    if mirror_axis is not None:
        sides = _recover_by_symmetry(sides, hu, spacing_mm, axis=midline, lr_dim=lr_dim, params=params)
    sides = _recover_lateral_bites(sides, hu, spacing_mm, lr_dim=lr_dim, right_low=right_low, params=params)
    out[box] = sides
    return out


def _body_midline(coarse: np.ndarray, *, lr_dim: int, params: QuantifyParams) -> float | None:
    """Left-right index of the body's midline: the centre of the bones (spine, sternum, both rib cages)."""
    bone = coarse > params.bone_threshold_hu
    profile = bone.sum(axis=tuple(a for a in range(3) if a != lr_dim)).astype(np.float64)
    total = float(profile.sum())
    if total < 50:
        log.info("too little bone to find the body's midline; no symmetry prior")
        return None
    return float((profile * np.arange(profile.size)).sum() / total)


def _recover_by_symmetry(
    sides: np.ndarray,
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    axis: float,
    lr_dim: int,
    params: QuantifyParams,
) -> np.ndarray:
    """Give back to a lung the dense part that its mirrored partner says is missing.

    Runs for a side covering less than ``symmetry_coverage`` of its partner's
    mirror image (one lung is normally 10-20 % smaller than the other). Added:
    voxels of the mirror (eroded by one voxel, anatomy is not exactly
    symmetric) in ``closing_range_hu``, lateral to the side's own medial edge
    where it has one (heart, mediastinum), connected to the side's lung.
    """
    n = sides.shape[lr_dim]
    source = np.rint(2.0 * axis - np.arange(n)).astype(np.intp)
    valid = (source >= 0) & (source < n)
    shape = [1, 1, 1]
    shape[lr_dim] = n
    soft = (hu >= params.closing_range_hu[0]) & (hu <= params.closing_range_hu[1]) & (sides == 0)
    out = sides.copy()
    for label, other in ((1, 2), (2, 1)):
        mirrored = np.take(sides == other, np.clip(source, 0, n - 1), axis=lr_dim) & valid.reshape(shape)
        mirrored = ndimage.binary_erosion(mirrored)
        lung = sides == label
        size = int(mirrored.sum())
        if size == 0 or int((lung & mirrored).sum()) >= params.symmetry_coverage * size:
            continue
        add = mirrored & soft & (out == 0)
        # lateral to the side's most medial voxel in each row: medial to it lie heart and mediastinum
        rows: np.ndarray = np.moveaxis(lung, lr_dim, -1)
        index = np.arange(n)
        lateral_low = float(np.mean(np.nonzero(rows)[-1])) < axis if rows.any() else True
        if lateral_low:
            medial = n - 1 - np.argmax(rows[..., ::-1], axis=-1)
            ok = index[None, None, :] <= medial[..., None]
        else:
            medial = np.argmax(rows, axis=-1)
            ok = index[None, None, :] >= medial[..., None]
        empty: np.ndarray = np.logical_not(rows.any(axis=-1))
        ok |= empty[..., None]
        add &= np.moveaxis(ok, -1, lr_dim)
        labels, count = ndimage.label(add | lung)
        touching = np.zeros(count + 1, dtype=bool)
        touching[np.unique(labels[lung])] = True
        if not lung.any():  # the whole lung is dense: its largest part
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            sizes[0] = 0
            touching[int(np.argmax(sizes))] = True
        touching[0] = False
        added = add & touching[labels]
        log.info("symmetry prior: %d voxels added to lung %d", int(added.sum()), label)
        out[added] = label
    return out


def _airways(
    hu: np.ndarray,
    candidate: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    midline: float,
    lr_dim: int,
    sup_high: bool,
    params: QuantifyParams,
) -> np.ndarray:
    """Trachea and the dark bronchi connected to it; empty when no trachea is found."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    pixel_mm2 = spacing_mm[1] * spacing_mm[2]
    slices = np.flatnonzero(candidate.any(axis=(1, 2)))
    top = int(slices[-1] if sup_high else slices[0])
    for threshold in (params.airway_threshold_hu, params.airway_threshold_hu - 25.0, params.airway_threshold_hu - 50.0):
        labels, _n = ndimage.label(candidate & (hu < threshold))
        best, best_offset = 0, math.inf
        for i, obj in enumerate(ndimage.find_objects(labels), start=1):
            if obj is None:
                continue
            part_top = obj[0].stop - 1 if sup_high else obj[0].start
            if abs(part_top - top) * spacing_mm[0] > 10.0:
                continue
            plane = labels[part_top] == i
            if plane.sum() * pixel_mm2 > params.max_trachea_area_mm2:
                continue
            lr_axis = 1 if lr_dim == 2 else 0  # the left-right axis within a slice
            centre = float(np.nonzero(plane)[lr_axis].mean())
            offset = abs(centre - midline) * spacing_mm[lr_dim]
            if offset <= params.max_trachea_offset_mm and offset < best_offset:
                best, best_offset = i, offset
        if best == 0:
            log.info("no trachea found at the top of the lungs; airways not removed")
            return np.zeros_like(candidate)
        airway = labels == best
        if airway.sum() * voxel_ml <= params.max_airway_ml:
            return airway
        log.info("airway tree leaks into the lungs below %.0f HU; tightening", threshold)
    log.warning("airways not removed: the dark tree leaks into the lungs (emphysema?)")
    return np.zeros_like(candidate)


def split_sides(
    lungs: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    midline: float,
    lr_dim: int,
    right_low: bool,
    params: QuantifyParams,
) -> np.ndarray:
    """Label lung parts right (1) / left (2): whole parts by side, touching lungs cut near the midline."""
    full = np.zeros(lungs.shape, dtype=np.uint8)
    if not lungs.any():
        return full
    box = bbox(lungs, (0, 0, 0))  # the work is on the lungs' box: 2-3x fewer voxels than the grid
    lungs = lungs[box]
    midline -= box[lr_dim].start
    ap_dim = 1 if lr_dim == 2 else 2
    n_lr = lungs.shape[lr_dim]
    profile = lungs.sum(axis=ap_dim).astype(np.float64)  # (z, lr)
    half = round(params.midline_search_mm / spacing_mm[lr_dim])
    lo, hi = max(0, int(midline) - half), min(n_lr, int(midline) + half + 1)
    coords = np.arange(lo, hi)
    window = profile[:, lo:hi] + 1e-3 * np.abs(coords - midline)[None, :]
    cut = coords[np.argmin(window, axis=1)]
    cut = ndimage.median_filter(cut, size=5, mode="nearest")
    low = np.arange(n_lr)[None, :] < cut[:, None]  # (z, lr)
    low3 = np.expand_dims(low, axis=ap_dim)
    low3 = np.broadcast_to(low3, lungs.shape)
    low_label, high_label = (1, 2) if right_low else (2, 1)
    labels, n = ndimage.label(lungs)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    low_count = np.bincount(labels[low3].ravel(), minlength=n + 1).astype(np.float64)
    frac_low = np.divide(low_count, sizes, out=np.zeros_like(sizes), where=sizes > 0)
    lut = np.zeros(n + 1, dtype=np.uint8)
    lut[frac_low >= 0.9] = low_label
    lut[frac_low <= 0.1] = high_label
    lut[0] = 0
    out = lut[labels]
    straddling = lungs & (out == 0)
    if straddling.any():
        out[straddling & low3] = low_label
        out[straddling & ~low3] = high_label
    full[box] = out
    return full


def add_aerated_rim(sides: np.ndarray, coarse: np.ndarray, *, params: QuantifyParams) -> np.ndarray:
    """``sides`` (0 / 1 right / 2 left) plus the aerated voxels that touch a lung, in ``rim_steps`` steps.

    A coarse voxel with a block mean below ``rim_threshold_hu`` is mostly lung (aerated lung about -850 HU,
    soft tissue about +40, so half of each is about -400). Such voxels along a lung's surface join the lung
    they touch (the left where both do); air connected within its slice to the image border (outside
    the body) never does. This gives back the thin aerated rims a mask can miss: the lung bases over the
    diaphragm domes, the apices and the costophrenic recesses on thick slices.
    """
    lung = sides > 0
    if params.rim_steps < 1 or not lung.any():
        return sides
    # Within the lungs' box plus a margin, air touching the box's in-plane border is outside the body (the
    # margin is the chest wall: no lung reaches it); the whole grid would cost 2-3x more.
    box = bbox(lung, (params.rim_steps, params.rim_steps + 1, params.rim_steps + 1))
    aerated = coarse[box] < params.rim_threshold_hu
    allowed = aerated & ~_border_connected(aerated)
    out = sides.copy()
    view = out[box]
    for _ in range(params.rim_steps):
        grown = neighbour_extreme(view, (0, 1, 2), np.maximum)
        add = allowed & (view == 0) & (grown > 0)
        if not add.any():
            break
        view[add] = grown[add]
    return out


def trim_below_aerated_base(
    sides: np.ndarray, coarse: np.ndarray, spacing_mm: tuple[float, ...], *, sup_high: bool, params: QuantifyParams
) -> np.ndarray:
    """``sides`` without what lies more than ``base_margin_mm`` below each lung's lowest aerated slice.

    Lungs rest on the diaphragm; under the lowest slice where a lung still holds aerated tissue (block mean
    below ``rim_threshold_hu``, in at least ``base_aerated_share`` of that lung's largest aerated slice)
    there is only the posterior recess, a few centimetres at most. Dense tissue further down (the crura and
    psoas beside the spine, the upper abdomen) is not lung, however lung-like its position; a consolidated
    lower lobe keeps aerated tissue in its own slices (bronchograms) or the recess margin covers it.

    Example:
        >>> sides = np.zeros((20, 4, 4), np.uint8); sides[:, 1:3, 1:3] = 1
        >>> hu = np.full((20, 4, 4), 40.0); hu[10:, 1:3, 1:3] = -850
        >>> from medai.quantify.params import QuantifyParams
        >>> trimmed = trim_below_aerated_base(sides, hu, (3.0, 3.0, 3.0), sup_high=True, params=QuantifyParams())
        >>> int(trimmed[:, 1, 1].argmax())  # 20 mm (6 slices of 3 mm) below the lowest aerated slice 10
        4
    """
    out = sides.copy()
    keep = max(0, int(params.base_margin_mm / spacing_mm[0]))
    for side in (1, 2):
        lung = sides == side
        aerated = np.count_nonzero(lung & (coarse < params.rim_threshold_hu), axis=(1, 2))
        if aerated.max() == 0:
            continue
        base = np.flatnonzero(aerated >= params.base_aerated_share * aerated.max())
        if sup_high:
            cut = int(base[0]) - keep
            if cut > 0:
                out[:cut][lung[:cut]] = 0
        else:
            cut = int(base[-1]) + keep + 1
            if cut < len(aerated):
                out[cut:][lung[cut:]] = 0
    return out


def drop_detached_parts(sides: np.ndarray, *, sup_high: bool, max_share: float = 0.3) -> np.ndarray:
    """``sides`` without each side's detached parts that lie above its apex or under its base.

    A lung is one piece from apex to base. A separate part of a side's mask (6-connectivity) smaller than
    ``max_share`` of that side's largest part is not lung when it lies wholly above or below the largest
    part's slices (air between the neck and the raised arms, the larynx, bowel under the diaphragm), or when
    at least 90 % of its voxels lie under the largest part's lowest voxel in their own column (the stomach
    bubble and colon under a dome, separated from the lung by the diaphragm). Parts beside the lung (a lobe
    cut off by a fissure, a recess) are kept.

    Example:
        >>> sides = np.zeros((20, 6, 6), np.uint8); sides[8:18, 1:5, 1:5] = 1
        >>> sides[1:5, 2:4, 2:4] = 1  # gas under the base, in the lung's columns
        >>> int(drop_detached_parts(sides, sup_high=True).sum())  # only the lung is left
        160
    """
    box = bbox(sides > 0, (0, 0, 0))  # everything below works in the lungs' box
    full = sides.copy()
    out, sides = full[box], sides[box]  # out is a view into full
    for side in (1, 2):
        labels, n = ndimage.label(sides == side)
        if n < 2:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        main = int(sizes.argmax())
        lung = labels == main
        slices = np.flatnonzero(lung.any(axis=(1, 2)))
        # the lowest (most inferior) slice of the main part in each column; columns without it never count
        present = lung.any(axis=0)
        low = np.argmax(lung, axis=0) if sup_high else sides.shape[0] - 1 - np.argmax(lung[::-1], axis=0)
        for label, (zs, ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
            if label == main or sizes[label] >= max_share * sizes[main]:
                continue
            part = labels[zs, ys, xs] == label
            outside = zs.stop <= slices[0] or zs.start > slices[-1]
            pz, py, px = np.nonzero(part)
            pz, py, px = pz + zs.start, py + ys.start, px + xs.start
            under = present[py, px] & ((pz < low[py, px]) if sup_high else (pz > low[py, px]))
            if outside or np.count_nonzero(under) >= 0.9 * pz.size:
                out[zs, ys, xs][part] = 0
    return full


def drop_gut_gas(
    sides: np.ndarray, coarse: np.ndarray, spacing_mm: tuple[float, ...], *, sup_high: bool, params: QuantifyParams
) -> np.ndarray:
    """``sides`` without the stomach's or colon's gas under a dome and the tissue around it.

    Under a high dome the stomach bubble and the colon lie beside the lung's lowest slices, separated from it
    only by the diaphragm, and a lung head can take them in with the food and the walls around them, which
    are then measured as consolidation (``drop_detached_parts`` only drops such gas when the mask holds it as
    a separate part). Gas is told from lung by what the lung's own air cannot reach: a pocket of the mask's
    aerated voxels (block mean below ``support_aerated_hu``) that is not one of the lungs' large aerated parts
    (``gut_gas_main_share`` of the largest), holds at least ``gut_gas_min_ml`` of gas (mean below
    ``gut_gas_max_hu``; parenchyma cut off by consolidation is denser), is round rather than tubular (at least
    ``gut_gas_core_share`` of it survives a one-voxel erosion: bronchi and air bronchograms do not) and lies
    in the lowest ``gut_gas_lower_share`` of the lungs' height. The pocket and the mask voxels it reaches
    within ``gut_gas_reach_mm`` before the lungs' aerated parts do (both grow one voxel a step; a tie is the
    lung's) go.

    Example:
        >>> sides = np.zeros((24, 20, 20), np.uint8); sides[2:23, 1:19, 1:19] = 1
        >>> hu = np.full(sides.shape, -850.0)
        >>> hu[2:11, 3:17, 3:17] = 20.0; hu[3:8, 6:12, 6:12] = -1000.0  # the stomach under the dome: food, gas
        >>> from medai.quantify.params import QuantifyParams
        >>> out = drop_gut_gas(sides, hu, (3.0, 3.0, 3.0), sup_high=True, params=QuantifyParams())
        >>> int(out[3:8, 6:12, 6:12].sum()), int(out[2:11, 3:17, 3:17].sum()), int(out[11:].sum())  # of 180, 1764, 3888
        (0, 1241, 3888)
        >>> bool((drop_gut_gas(sides, hu, (3.0, 3.0, 3.0), sup_high=False, params=QuantifyParams()) == sides).all())
        True
    """
    lungs = sides > 0
    if not lungs.any():
        return sides
    box = bbox(lungs, (1, 1, 1))
    lungs, hu = lungs[box], coarse[box]
    aerated = lungs & (hu < params.support_aerated_hu)
    labels, n = ndimage.label(aerated)
    if n < 2:
        return sides
    sizes, mean_hu = _part_sizes_and_means(labels, n, hu)  # the background's size 0 keeps it out of both
    main = sizes >= params.gut_gas_main_share * sizes.max()
    block_ml = float(np.prod(spacing_mm)) / 1000.0
    pocket = ~main & (mean_hu < params.gut_gas_max_hu) & (sizes * block_ml >= params.gut_gas_min_ml)
    if not pocket.any():
        return sides
    # round, not tubular (a part's one-voxel erosion depends on that part alone); centred low in the lungs
    candidates = pocket[labels]
    near = bbox(candidates, (1, 1, 1))
    core = np.bincount(labels[near].ravel(), weights=ndimage.binary_erosion(candidates[near]).ravel(), minlength=n + 1)
    pocket &= core >= params.gut_gas_core_share * sizes
    zs = np.nonzero(candidates)[0]
    centre = np.bincount(labels[candidates], weights=zs.astype(np.float64), minlength=n + 1) / np.maximum(sizes, 1.0)
    height = lungs.shape[0] - 1
    pocket &= (centre if sup_high else height - centre) <= params.gut_gas_lower_share * height
    if not pocket.any():
        return sides
    steps = max(1, round(params.gut_gas_reach_mm / min(spacing_mm)))
    # Both grow one voxel a step, so what the gas reaches within `steps` is decided within 2 * steps of it.
    gas = pocket[labels]
    near = bbox(gas, (2 * steps + 1,) * 3)
    owner = np.zeros(gas[near].shape, np.int8)
    owner[main[labels[near]]] = 1
    owner[gas[near]] = 2
    free = lungs[near] & (owner == 0)
    for _ in range(steps):
        lung_step = neighbour_extreme(owner == 1, (0, 1, 2), np.logical_or) & free
        gas_step = neighbour_extreme(owner == 2, (0, 1, 2), np.logical_or) & free & ~lung_step
        if not gas_step.any():
            break
        owner[lung_step] = 1
        owner[gas_step] = 2
        free &= owner == 0
    log.info("gut gas: %d voxels of stomach or colon dropped from the lungs", int(np.count_nonzero(owner == 2)))
    out = sides.copy()
    out[box][near][owner == 2] = 0
    return out


def peel_surface_fat(sides: np.ndarray, coarse: np.ndarray, *, params: QuantifyParams) -> np.ndarray:
    """``sides`` without the fat-density voxels reached from the mask's surface through fat-density voxels.

    Fat (``surface_fat_range_hu``) is not lung. Where dense disease reaches the pleura a lung head carries
    the mask on into the chest wall's fat, the pericardial fat or the upper abdomen; those voxels are then
    measured as consolidation. Lung voxels in the fat range that touch a voxel outside the mask, and those
    connected to them through more such voxels, go. Consolidation (about 0-40 HU in patients) and the
    aerated lung are outside the range and stop the peel; a consolidation's partial-volume shell against
    aerated lung lies inside the mask and is not reached. The range ends well below soft tissue: the
    training world renders consolidation down to -100 HU, and a wider range (to -70 HU) took 0.25 points of
    lesion off its in-distribution cases (docs/ood.md).

    Example:
        >>> sides = np.zeros((10, 10, 12), np.uint8); sides[1:9, 1:9, 1:11] = 1
        >>> hu = np.full(sides.shape, -850.0); hu[1:9, 1:9, 8:11] = -100.0  # fat on one face of the mask
        >>> hu[3:6, 3:6, 1:4] = 20.0  # a consolidation on another face
        >>> from medai.quantify.params import QuantifyParams
        >>> out = peel_surface_fat(sides, hu, params=QuantifyParams())
        >>> int(out[1:9, 1:9, 8:11].sum()), int(out[3:6, 3:6, 1:4].sum())
        (0, 27)
    """
    all_lung = sides > 0
    low, high = params.surface_fat_range_hu
    all_fat = all_lung & (coarse > low) & (coarse < high)
    if not all_fat.any():
        return sides
    box = bbox(all_fat, (1, 1, 1))  # every fat voxel's six neighbours lie in it (or outside the array)
    lung, fat = all_lung[box], all_fat[box]
    # a fat voxel on the surface: one of its six neighbours is outside the mask (or outside the array)
    surface = fat & ~ndimage.binary_erosion(lung, border_value=0)
    reached = ndimage.binary_propagation(surface, mask=fat)
    out = sides.copy()
    out[box][reached] = 0
    return out


def drop_unsupported_dense(
    sides: np.ndarray, coarse: np.ndarray, spacing_mm: tuple[float, ...], *, params: QuantifyParams
) -> np.ndarray:
    """``sides`` without the dense components that no aerated lung borders (see ``QuantifyParams.support_*``).

    A consolidation fills lung, so aerated lung lies beside it across a good share of its surface; tissue a
    segmenter took for lung by mistake (the neck above the apices, the crura, a pericardial fat pad) borders
    the chest wall, the mediastinum or the abdomen instead, and fat has a median far below soft tissue. A
    component that is mostly fat (``support_fat_share`` in ``support_fat_range_hu``) goes whatever borders it.

    Example:
        >>> sides = np.zeros((12, 12, 12), np.uint8); sides[2:10, 2:10, 2:10] = 1
        >>> hu = np.full(sides.shape, -850.0); hu[2:10, 2:10, 7:10] = 30.0  # borders aerated lung: kept
        >>> from medai.quantify.params import QuantifyParams
        >>> params = QuantifyParams(support_min_ml=0.0)
        >>> int(drop_unsupported_dense(sides, hu, (3.0, 3.0, 3.0), params=params).sum())
        512
        >>> sides[2:10, 2:10, 10] = 1; hu[:, :, 7:] = -100.0; hu[2:10, 2:10, :7] = 0.0  # all dense, fat-like edge
        >>> out = drop_unsupported_dense(sides, hu, (3.0, 3.0, 3.0), params=params)  # one white lung: kept
        >>> int(out.sum())
        576
    """
    all_lungs = sides > 0
    all_dense = all_lungs & (coarse >= params.consolidation_range_hu[0])
    if not all_dense.any():
        return sides
    # Everything below happens on the dense voxels' box grown by one voxel (a face's neighbour lies in it;
    # np.roll's wrap-around reaches only the box's edge planes, which are handled as the array's edges are).
    box = bbox(all_dense, (1, 1, 1))
    full_sides, sides, coarse, lungs, dense = sides, sides[box], coarse[box], all_lungs[box], all_dense[box]
    labels, n = ndimage.label(dense)
    aerated = lungs & (coarse < params.support_aerated_hu)
    faces = np.zeros(n + 1, np.int64)
    touching = np.zeros(n + 1, np.int64)
    for axis in range(3):
        for shift in (1, -1):
            other = np.roll(labels, shift, axis=axis)
            other_aer = np.roll(aerated, shift, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
            boundary = (labels > 0) & (other != labels)
            boundary[tuple(edge)] = labels[tuple(edge)] > 0  # the array's edge is a face, never aerated lung
            faces += np.bincount(labels[boundary], minlength=n + 1)
            hit = boundary & other_aer
            hit[tuple(edge)] = False
            touching += np.bincount(labels[hit], minlength=n + 1)
    index = np.arange(1, n + 1)
    members = labels[dense]  # bincounts over the dense voxels only: per-label medians and maxima were 0.4 s
    sizes = np.bincount(members, minlength=n + 1)[1:]
    below_fat = np.bincount(members, weights=coarse[dense] < params.support_fat_hu, minlength=n + 1)[1:]
    fat_like = below_fat > 0.5 * sizes  # the component's median is below support_fat_hu
    low, high = params.support_fat_range_hu
    in_fat = np.bincount(members, weights=(coarse[dense] > low) & (coarse[dense] < high), minlength=n + 1)[1:]
    fat = in_fat >= params.support_fat_share * sizes  # homogeneous fat: not lung, bordered or not
    contact = touching[1:] / np.maximum(faces[1:], 1)
    in_left = np.bincount(members, weights=sides[dense] == 2, minlength=n + 1)[1:]
    side_of = np.where(in_left > 0, 2, 1)  # its side (a component touching both lungs counts as the left)
    side_size = np.array([np.count_nonzero(full_sides == s) for s in (0, 1, 2)])[side_of]
    block_ml = float(np.prod(spacing_mm)) / 1000.0
    drop = (
        ((contact < params.support_min_contact) | ((contact < params.support_fat_contact) & fat_like) | fat)
        & (sizes < 0.5 * side_size)
        & (sizes * block_ml >= params.support_min_ml)
    )
    if not drop.any():
        return full_sides
    out = full_sides.copy()
    out[box][np.isin(labels, index[drop])] = 0
    return out


def _add_dense_pathology(
    sides: np.ndarray,
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    lr_dim: int,
    right_low: bool,
    params: QuantifyParams,
) -> np.ndarray:
    """Add enclosed (hole filling) and pleural-based (closing) opacities to each lung.

    The closing runs on a grid twice coarser again (it only needs the shape).
    Its additions must lie lateral to the lung's most medial voxel in the same
    row (so the hilum, heart and mediastinal fat in concavities of the
    mediastinal surface are not taken) and in ``closing_range_hu``.
    """
    out = np.zeros_like(sides)
    allowed = (hu >= params.closing_range_hu[0]) & (hu <= params.closing_range_hu[1]) & (sides == 0)
    radius = max(1, round(params.closing_radius_mm / (2.0 * float(np.mean(spacing_mm)))))
    for label in (1, 2):
        lung = sides == label
        if not lung.any():
            continue
        box = bbox(lung, (2 * radius + 2, 2 * radius + 2, 2 * radius + 2))
        part = _fill_holes_2d(lung[box])
        added = _closing(part[::2, ::2, ::2], radius)
        added &= ~part[::2, ::2, ::2]
        for axis in range(3):
            added = np.repeat(added, 2, axis=axis)
        added = added[: part.shape[0], : part.shape[1], : part.shape[2]] & allowed[box] & ~part
        lateral: np.ndarray = np.moveaxis(part, lr_dim, -1)  # (z, ap, lr)
        n = lateral.shape[-1]
        low_side = (label == 1) == right_low
        index = np.arange(n)
        if low_side:  # lung at low indices: its medial edge is its largest index in the row
            medial = n - 1 - np.argmax(lateral[..., ::-1], axis=-1)
            ok = index[None, None, :] <= medial[..., None]
        else:
            medial = np.argmax(lateral, axis=-1)
            ok = index[None, None, :] >= medial[..., None]
        ok |= np.logical_not(lateral.any(axis=-1))[..., None]
        added &= np.moveaxis(ok, -1, lr_dim)
        part = _fill_holes_2d(part | added)
        view = out[box]
        view[part & (view == 0)] = label
    return out


def _recover_lateral_bites(
    sides: np.ndarray,
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    lr_dim: int,
    right_low: bool,
    params: QuantifyParams,
) -> np.ndarray:
    """Give each lung back the pleural-based opacity that bites into its lateral edge (module step 6)."""
    bone = hu > params.bone_threshold_hu
    # ribs cross a slice obliquely: bone within rib_search_mm above or below bridges the intercostal gaps
    bone = ndimage.maximum_filter1d(bone, 2 * round(params.rib_search_mm / spacing_mm[0]) + 1, axis=0)
    soft = (hu >= params.closing_range_hu[0]) & (hu <= params.closing_range_hu[1])
    ap_dim = 3 - lr_dim
    window = [2 * round(0.5 * params.lateral_envelope_mm / spacing_mm[a]) + 1 for a in (0, ap_dim)]
    out = sides.copy()
    for label in (1, 2):
        lung = out == label
        if not lung.any():
            continue
        lateral_low = (label == 1) == right_low  # then flip the rows: _lateral_fill wants lateral at high indices
        add = _lateral_fill(
            _rows(lung, lr_dim, lateral_low),
            _rows(bone, lr_dim, lateral_low),
            _rows(soft & (out == 0), lr_dim, lateral_low),
            window,
        )
        if lateral_low:
            add = add[..., ::-1]
        add = np.moveaxis(add, -1, lr_dim)
        log.debug("lateral envelope: %d voxels added to lung %d", int(add.sum()), label)
        out[add] = label
    return out


def _rows(a: np.ndarray, lr_dim: int, flip: bool) -> np.ndarray:
    """``a`` as rows ``(z, ap, lr)`` along the left-right axis, reversed along it when ``flip``."""
    rows = np.moveaxis(a, lr_dim, -1)
    return rows[..., ::-1] if flip else rows


def _lateral_fill(lung: np.ndarray, bone: np.ndarray, allowed: np.ndarray, window: list[int]) -> np.ndarray:
    """Voxels to add, for rows ``(z, ap, lr)`` whose lateral side is at high ``lr`` indices."""
    n = lung.shape[-1]
    index = np.arange(n)
    has: np.ndarray = np.asarray(lung.any(axis=-1))
    edge = n - 1 - np.argmax(lung[..., ::-1], axis=-1)  # the lateral-most lung voxel of each row
    extent = np.where(has, edge + 1, 0)
    envelope = ndimage.grey_closing(extent, size=window, mode="constant", cval=0)
    target = np.where(has, envelope - 1, -1)
    beyond = bone & (index > edge[..., None])
    has_rib = has & beyond.any(axis=-1)
    if int(has_rib.sum()) >= 20:
        rib = np.where(has_rib, np.argmax(beyond, axis=-1), n)
        usual_gap = int(np.median((rib - edge - 1)[has_rib]))
        target = np.where(has_rib, np.minimum(target, rib - 1 - usual_gap), target)
    region = (index > edge[..., None]) & (index <= target[..., None]) & has[..., None]
    # only what is contiguous with the lung: stop at the first voxel that is not soft tissue
    stop = np.where(region & ~allowed, index, n).min(axis=-1)
    return region & (index < stop[..., None])
