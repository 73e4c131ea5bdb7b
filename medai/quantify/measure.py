"""Lung and opacity quantification: lungs, ground glass, consolidation, lesion %, severity CT-0..CT-4.

What a COVID-19 CT report gives besides the class: lung volumes, the share of
each lung (and of each cranio-caudal third) covered by opacities, the split
into ground glass and consolidation, and a MosMedData-style severity grade.
Three methods (:class:`QuantMethod`), all numpy/scipy/onnxruntime only (no torch), all on a
**coarse grid** (:class:`QuantGrid`):

* ``hybrid`` (the default): lungs from the learned head (below) plus the aerated rim the head misses on
  thick slices (coarse voxels below ``rim_threshold_hu`` touching them: lung bases over the diaphragm,
  apices), opacities inside them by the classical thresholds (steps 3 below). On the held-out phantoms
  this beats both pure methods: the learned lungs follow dense pleural disease and leave out the denser
  partial-volume voxels (diaphragm, mediastinum) that the thresholds would read as opacities; the
  thresholds count faint ground glass the head under-reads.
* ``learned`` (``QuantifyParams(method="learned")``, head ``models/medai-quant.onnx``): a
  small 3D CNN (:mod:`medai.quantify.head`) gives every coarse voxel its lung fraction and the ground-glass and
  consolidation shares of that lung; volumes and percentages are sums of fractions (partial-volume
  aware, no thresholds); the lung mask is lung fraction >= 0.5, split right/left near the midline.
* ``classical``: HU thresholds and morphology, steps below (no model file needed).

Classical method:

1. *Coarse grid.* Integer block mean of the HU volume, factors per axis chosen
   for voxels of about ``target_spacing_mm`` (0.7 mm pixels -> 4x, 1 mm
   slices -> 3x). The block mean is also the first denoising step.
2. *Lungs* (:mod:`medai.quantify.lungs`): aerated lung, airways removed, right/left,
   dense pathology added by hole filling, a closing and a symmetry prior.
3. *Opacities.* Vessels suppressed (a voxel far brighter than its grey
   opening takes the opening's value; the bar rises with the image noise),
   values averaged within the lung over ``smoothing_mm`` (the lung's surface
   layer borrows its neighbours' values). Ground glass is judged against the
   patient's own parenchyma: its level is fitted as a straight line along the
   anterior-posterior axis (dependent lung is denser by 20-90 HU), from the
   median of the clearly aerated voxels in slabs, and a voxel is an opacity
   above the point ``ggo_threshold_fraction`` of the way from that baseline
   to the faintest ground glass (``ggo_floor_hu``), up to
   ``consolidation_range_hu``. An opening of
   ``min_opacity_radius_mm`` drops thin opacities (atelectasis bands, pleural
   partial volume) and keeps the opacity around what survives.

Zones: each lung's cranio-caudal extent (its first to last slice containing
that lung) is cut into three equal thirds: upper (most superior), middle,
lower. A zone's lesion percentage is lesion volume / lung volume in it.

Research use only, not for clinical use.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medai.errors import InvalidSeriesError, QCReason
from medai.labels import Severity, severity_from_percent
from medai.quantify.grid import QuantGrid, block_mean, coarse_grid, upsample_mask
from medai.quantify.lungs import (
    add_aerated_rim,
    bbox,
    drop_detached_parts,
    drop_gut_gas,
    drop_unsupported_dense,
    peel_surface_fat,
    segment_lungs,
    split_sides,
    trim_below_aerated_base,
)
from medai.quantify.opacities import segment_opacities
from medai.quantify.params import QuantifyParams, QuantMethod
from medai.volume import Volume

__all__ = [
    "METHOD",
    "QUANTIFY_VERSION",
    "QuantGrid",
    "Quantification",
    "Side",
    "Zone",
    "block_mean",
    "coarse_grid",
    "quantify",
    "upsample_mask",
]

log = logging.getLogger(__name__)

METHOD = (
    "medai.quantify/3 (coarse grid, airways, hole filling + closing + symmetry + lateral-envelope priors, "
    "thresholds against the fitted parenchyma baseline)"
)
# The served quantification's version: every change to what it measures bumps it (docs/ood.md, "What changed").
QUANTIFY_VERSION = "medai.quantify/20"
METHOD_HYBRID = (
    f"{QUANTIFY_VERSION} hybrid (learned lungs + aerated rim - below the aerated base - fat reached from the mask's "
    "surface - dense parts no aerated lung borders - fat - parts detached above the apex or under the base - "
    "gut gas under a dome and what it reaches first, "
    "classical opacities against a baseline that follows expiration, half-expired dense slabs, censored slabs' "
    "texture and dependent density, without bands of dependent atelectasis (their fade read between neighbours) "
    "or small rims of vessels; CT-0 below 1 %)"
)


class Side(enum.StrEnum):
    """Patient side of a lung."""

    RIGHT = "right"
    LEFT = "left"


class Zone(enum.StrEnum):
    """Cranio-caudal third of a lung's extent."""

    UPPER = "upper"
    MIDDLE = "middle"
    LOWER = "lower"


@dataclass(frozen=True, eq=False)
class Quantification:
    """Lung and opacity measurements of one CT volume.

    Masks live on :attr:`grid` (coarse); ``grid.upsample(mask)`` brings one to
    the source array for display. Percentages are of lung volume, 0..100.

    Attributes:
        lung_mask: uint8 ``(z, y, x)`` on the coarse grid: 0 none, 1 right lung, 2 left lung.
        lesion_mask: uint8 on the coarse grid: 0 none, 1 ground glass, 2 consolidation.
        grid: the coarse grid and its block factors relative to the source volume.
        lung_volume_ml, right_lung_volume_ml, left_lung_volume_ml: lung volumes.
        lesion_volume_ml: opacity volume, both lungs.
        lesion_percent: opacity volume / lung volume, both lungs.
        right_lesion_percent, left_lesion_percent: the same per lung.
        zone_lesion_percent: per ``(Side, Zone)``: opacity / lung volume in that third of that lung.
        ggo_percent, consolidation_percent: ground glass and consolidation volume / lung volume.
        severity: MosMedData grade of ``lesion_percent``.
        method: the algorithm and its version, for reports.
        expiration: the lungs were read as an expiration scan (:func:`medai.quantify.opacities.expiration_scan`),
            where the measured opacity is unreliable both ways (the classical and hybrid methods; never set by
            the learned method).
    """

    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    grid: QuantGrid
    lung_volume_ml: float
    right_lung_volume_ml: float
    left_lung_volume_ml: float
    lesion_volume_ml: float
    lesion_percent: float
    right_lesion_percent: float
    left_lesion_percent: float
    zone_lesion_percent: Mapping[tuple[Side, Zone], float]
    ggo_percent: float
    consolidation_percent: float
    severity: Severity
    method: str = field(default=METHOD)
    expiration: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no masks); zones flattened to keys like ``"right_upper"``."""
        out: dict[str, Any] = {
            "lung_volume_ml": self.lung_volume_ml,
            "right_lung_volume_ml": self.right_lung_volume_ml,
            "left_lung_volume_ml": self.left_lung_volume_ml,
            "lesion_volume_ml": self.lesion_volume_ml,
            "lesion_percent": self.lesion_percent,
            "right_lesion_percent": self.right_lesion_percent,
            "left_lesion_percent": self.left_lesion_percent,
            "ggo_percent": self.ggo_percent,
            "consolidation_percent": self.consolidation_percent,
            "severity": self.severity.value,
            "method": self.method,
            "expiration": self.expiration,
            "grid_factors": list(self.grid.factors),
        }
        for (side, zone), value in self.zone_lesion_percent.items():
            out[f"{side.value}_{zone.value}_lesion_percent"] = value
        return out


#: Called once by :func:`quantify` with the final coarse lung mask and its grid, before the opacities are measured.
LungsFound = Callable[[np.ndarray, QuantGrid], None]


def quantify(
    volume: Volume,
    *,
    lung_mask: np.ndarray | None = None,
    params: QuantifyParams | None = None,
    on_lungs: LungsFound | None = None,
) -> Quantification:
    """Segment lungs and opacities and measure them.

    Args:
        volume: an axial CT volume in HU.
        lung_mask: a lung mask to reuse instead of segmenting, on the source
            grid (``volume.shape``) or on the coarse grid: uint8 0/1 right/2 left,
            or bool (then split into right and left here).
        params: settings; the defaults when omitted (classical method).
        on_lungs: called with the lungs (the result's ``lung_mask`` and ``grid``) as soon as they are final,
            before the opacities are segmented, so that work needing only the lungs (the classifier's
            lung-restricted network input) can run meanwhile.

    Raises:
        InvalidSeriesError: the volume is not axial (reason ``NOT_AXIAL``).
        ModelError: the learned method is asked for and its model is missing, corrupt or unreadable.
        ValueError: ``lung_mask`` has the wrong shape or values.

    Example:
        >>> hu = np.full((8, 40, 40), -1000, np.int16); hu[:, 4:36, 4:36] = 40
        >>> hu[:, 10:30, 8:18] = -850; hu[:, 10:30, 22:32] = -850
        >>> q = quantify(Volume(hu, spacing_mm=(2.5, 2.5, 2.5)))
        >>> round(q.right_lung_volume_ml, 1), round(q.left_lung_volume_ml, 1), q.severity.value
        (25.0, 25.0, 'CT-0')
    """
    params = params or QuantifyParams()
    lr_dim, right_low, sup_high = _orientation(volume)
    grid = coarse_grid(volume.spacing_mm, volume.shape, target_spacing_mm=params.target_spacing_mm)
    coarse = block_mean(volume.hu, grid.factors)
    method = _resolve_method(params.method)
    if method is QuantMethod.LEARNED:
        return _quantify_learned(volume, coarse, grid, lung_mask=lung_mask, params=params, on_lungs=on_lungs)
    hybrid_lungs = lung_mask is None and method is QuantMethod.HYBRID
    if hybrid_lungs:
        from medai.quantify.head import learned_lungs

        lungs = add_aerated_rim(
            learned_lungs(volume.direction, coarse, grid.spacing_mm, params=params), coarse, params=params
        )
        lungs = trim_below_aerated_base(lungs, coarse, grid.spacing_mm, sup_high=sup_high, params=params)
        lungs = peel_surface_fat(lungs, coarse, params=params)
        lungs = drop_unsupported_dense(lungs, coarse, grid.spacing_mm, params=params)
        lungs = drop_detached_parts(lungs, sup_high=sup_high)
        lungs = drop_gut_gas(lungs, coarse, grid.spacing_mm, sup_high=sup_high, params=params)
    elif lung_mask is None:
        lungs = segment_lungs(
            coarse, grid.spacing_mm, lr_dim=lr_dim, right_low=right_low, params=params, sup_high=sup_high
        )
    else:
        lungs = _coarse_lungs(lung_mask, grid, lr_dim=lr_dim, right_low=right_low, params=params)
    if on_lungs is not None:
        on_lungs(lungs, grid)
    ap_dim = 3 - lr_dim
    posterior_high = bool(volume.direction[1, 2 - ap_dim] > 0)  # LPS: +y is posterior
    found = segment_opacities(coarse, lungs, grid.spacing_mm, params, ap_dim=ap_dim, posterior_high=posterior_high)
    lesions = found.mask
    lung_w = (lungs > 0).astype(np.float32)
    lesion_w = (lesions > 0) & (lungs > 0)
    result = _measure(
        lungs,
        lung_w,
        lesion_w.astype(np.float32),
        (lesion_w & (lesions == 2)).astype(np.float32),
        grid,
        sup_high=sup_high,
        lung_mask=lungs,
        lesion_mask=lesions,
    )
    result = replace(result, expiration=found.expiration)
    if hybrid_lungs:
        from medai.quantify.head import shipped_quantnet

        result = replace(result, method=f"{METHOD_HYBRID} (lungs: {shipped_quantnet().model_id})")
    return result


def _resolve_method(method: QuantMethod | str) -> QuantMethod:
    try:
        method = QuantMethod(method)
    except ValueError:
        raise ValueError(f"method must be one of {[m.value for m in QuantMethod]}, not {method!r}") from None
    return method


def _quantify_learned(
    volume: Volume,
    coarse: np.ndarray,
    grid: QuantGrid,
    *,
    lung_mask: np.ndarray | None,
    params: QuantifyParams,
    on_lungs: LungsFound | None,
) -> Quantification:
    """Quantification from the learned head's per-voxel fractions (in canonical orientation)."""
    from medai.quantify.head import CanonicalAxes, QuantFractions, body_box, embed, lung_sides, shipped_quantnet

    net = shipped_quantnet()
    axes = CanonicalAxes(volume.direction)
    to_canonical, from_canonical = axes.to, axes.back
    spacing = tuple(grid.spacing_mm[p] for p in axes.perm)
    canonical = to_canonical(coarse)
    box = body_box(canonical)
    cropped = net.fractions(np.ascontiguousarray(canonical[box]))
    fractions = QuantFractions(
        *(embed(a, canonical.shape, box) for a in (cropped.lung, cropped.lesion, cropped.consolidation))
    )
    if lung_mask is None:
        sides, midline = lung_sides(fractions.lung, spacing, params=params)
        lung_w = fractions.lung
    else:
        lr_dim, right_low, _ = _orientation(volume)
        sides = to_canonical(_coarse_lungs(lung_mask, grid, lr_dim=lr_dim, right_low=right_low, params=params))
        lung_w = (sides > 0).astype(np.float32)
    served_lungs = from_canonical(sides)
    if on_lungs is not None:
        on_lungs(served_lungs, grid)
    lesion_share = fractions.lesion
    lesions = ((sides > 0) & (lesion_share >= 0.5)).astype(np.uint8)
    lesions[(lesions > 0) & (fractions.consolidation >= 0.5)] = 2
    # Partial-volume lung outside the hard mask counts for the side of the midline it lies on.
    owner = sides
    if lung_mask is None:
        partial = (sides == 0) & (lung_w >= 0.02)
        side_of_x = np.where(np.arange(sides.shape[2]) < midline, np.uint8(1), np.uint8(2))
        owner = np.where(partial, np.broadcast_to(side_of_x, sides.shape), sides)
    lesion_w = lung_w * lesion_share
    result = _measure(
        owner,
        lung_w,
        lesion_w,
        lesion_w * fractions.consolidation,
        grid,
        sup_high=True,
        lung_mask=served_lungs,
        lesion_mask=from_canonical(lesions),
    )
    return replace(result, method=f"medai.quantify/3 learned ({net.model_id}, synthetic training only)")


def _orientation(volume: Volume) -> tuple[int, bool, bool]:
    """(array dim running left-right, patient right at low indices, superior at high z indices)."""
    d = volume.direction
    lr_col = int(np.argmax(np.abs(d[0])))
    si_col = int(np.argmax(np.abs(d[2])))
    if si_col != 2 or lr_col == 2:
        raise InvalidSeriesError(
            QCReason.NOT_AXIAL,
            f"volume must be axial for quantification, not with slice normal {np.round(d[:, 2], 3).tolist()}",
            series_uid=volume.series_uid,
        )
    return 2 - lr_col, bool(d[0, lr_col] > 0), bool(d[2, 2] > 0)


def _coarse_lungs(
    lung_mask: np.ndarray, grid: QuantGrid, *, lr_dim: int, right_low: bool, params: QuantifyParams
) -> np.ndarray:
    """A supplied lung mask on the coarse grid, as uint8 0/1 right/2 left."""
    if lung_mask.shape == grid.shape:
        coarse = lung_mask
    elif lung_mask.shape == grid.source_shape:
        fz, fy, fx = grid.factors
        nz, ny, nx = grid.shape
        coarse = lung_mask[fz // 2 : nz * fz : fz, fy // 2 : ny * fy : fy, fx // 2 : nx * fx : fx]
    else:
        raise ValueError(
            f"lung_mask must have the volume's shape {grid.source_shape} or the coarse shape {grid.shape}, "
            f"not {lung_mask.shape}"
        )
    if coarse.dtype == bool:
        lungs = coarse
        extent = np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != lr_dim)))
        if extent.size == 0:
            return np.zeros(lungs.shape, dtype=np.uint8)
        midline = 0.5 * float(extent[0] + extent[-1])
        return split_sides(lungs, grid.spacing_mm, midline=midline, lr_dim=lr_dim, right_low=right_low, params=params)
    if coarse.dtype.kind not in "iu" or (coarse.size and (coarse.min() < 0 or coarse.max() > 2)):
        raise ValueError(f"lung_mask must be bool or integers 0/1/2, not {coarse.dtype} with values outside 0..2")
    return coarse.astype(np.uint8, copy=True)


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0


def _measure(
    owner: np.ndarray,
    lung_w: np.ndarray,
    lesion_w: np.ndarray,
    cons_w: np.ndarray,
    grid: QuantGrid,
    *,
    sup_high: bool,
    lung_mask: np.ndarray,
    lesion_mask: np.ndarray,
) -> Quantification:
    """Volumes and percentages from per-voxel weights (0/1 for the classical masks, fractions for the learned).

    ``owner`` says which lung (1 right, 2 left) a voxel's weights count for; weights elsewhere are ignored.
    """
    voxel_ml = grid.voxel_volume_ml
    box = bbox(owner > 0, (0, 0, 0))
    owner, lung_w, lesion_w, cons_w = owner[box], lung_w[box], lesion_w[box], cons_w[box]
    # Per-slice sums, shape (z,): lung, lesion and consolidation weight of each side.
    per_slice = {}
    for side, label in ((Side.RIGHT, 1), (Side.LEFT, 2)):
        sel = owner == label
        per_slice[side] = tuple(
            np.where(sel, w, np.float32(0)).sum(axis=(1, 2), dtype=np.float64) for w in (lung_w, lesion_w, cons_w)
        )
    zones: dict[tuple[Side, Zone], float] = {}
    for side, (lung_z, lesion_z, _) in per_slice.items():
        present = np.flatnonzero(lung_z > 0)
        if present.size == 0:
            zones.update({(side, zone): 0.0 for zone in Zone})
            continue
        first, last = int(present[0]), int(present[-1])
        third = np.clip(((np.arange(lung_z.size) - first) * 3) // (last - first + 1), 0, 2)
        order = (Zone.LOWER, Zone.MIDDLE, Zone.UPPER) if sup_high else (Zone.UPPER, Zone.MIDDLE, Zone.LOWER)
        for k, zone in enumerate(order):
            sel_z = third == k
            zones[(side, zone)] = _percent(float(lesion_z[sel_z].sum()), float(lung_z[sel_z].sum()))
    right_lung, right_lesion, right_cons = (float(a.sum()) for a in per_slice[Side.RIGHT])
    left_lung, left_lesion, left_cons = (float(a.sum()) for a in per_slice[Side.LEFT])
    total_lung = right_lung + left_lung
    lesion_percent = min(100.0, _percent(right_lesion + left_lesion, total_lung))
    cons_percent = _percent(right_cons + left_cons, total_lung)
    return Quantification(
        lung_mask=lung_mask,
        lesion_mask=lesion_mask,
        grid=grid,
        lung_volume_ml=total_lung * voxel_ml,
        right_lung_volume_ml=right_lung * voxel_ml,
        left_lung_volume_ml=left_lung * voxel_ml,
        lesion_volume_ml=(right_lesion + left_lesion) * voxel_ml,
        lesion_percent=lesion_percent,
        right_lesion_percent=_percent(right_lesion, right_lung),
        left_lesion_percent=_percent(left_lesion, left_lung),
        zone_lesion_percent=zones,
        ggo_percent=max(0.0, lesion_percent - cons_percent),
        consolidation_percent=cons_percent,
        severity=severity_from_percent(lesion_percent),
    )
