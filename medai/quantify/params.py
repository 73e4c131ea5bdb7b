"""Settings of quantification: which method, and every threshold and size it uses.

Its own module because every step of :mod:`medai.quantify` reads it (lungs,
opacities, the learned head, the measurement that combines them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["QuantMethod", "QuantifyParams"]


class QuantMethod(enum.StrEnum):
    """How :func:`quantify` finds lungs and opacities."""

    HYBRID = "hybrid"  # lungs from the learned head, opacities by the classical thresholds (the default)
    LEARNED = "learned"  # medai.quantify.head: per-voxel fractions from a small CNN (onnxruntime)
    CLASSICAL = "classical"  # HU thresholds and morphology (medai.quantify.lungs + opacity thresholds)


@dataclass(frozen=True)
class QuantifyParams:
    """Settings of :func:`quantify`; the defaults are what the benchmarks measured.

    Example:
        >>> QuantifyParams().closing_radius_mm
        20.0
    """

    # Lungs from the learned head and opacities by HU thresholds (hybrid, the default: the most accurate on the
    # held-out phantoms, see docs/benchmarks.md), all classical, or all learned. The settings below are the
    # classical steps'.
    method: QuantMethod = QuantMethod.HYBRID

    # Coarse grid voxel size aimed at (z, y, x); factors are integers, so 0.7 mm pixels give 2.8 mm.
    target_spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    # Air, aerated lung and most ground glass are below this (on the block-mean grid).
    lung_threshold_hu: float = -300.0
    # Airway lumen (about -1000 HU) is below this; normal parenchyma (-850 +- 50) is above.
    airway_threshold_hu: float = -950.0
    # The trachea's cross-section at the top of the volume is at most this.
    max_trachea_area_mm2: float = 800.0
    # ... and its centre at most this far from the lungs' midline.
    max_trachea_offset_mm: float = 40.0
    # A dark airway tree larger than this has leaked into (emphysematous) lung; tighten or give up.
    max_airway_ml: float = 300.0
    # Air parts smaller than this (or than 5 % of the largest) are not lung.
    min_lung_part_ml: float = 20.0
    # Lungs that touch are cut within this distance of the midline.
    midline_search_mm: float = 35.0
    # Ball radius of the closing that adds pleural-based opacities.
    closing_radius_mm: float = 20.0
    # Closing may add only voxels in this HU range (no bone, no air).
    closing_range_hu: tuple[float, float] = (-900.0, 120.0)
    # Bone (for the body's midline, the mirror of the symmetry prior) is above this on the coarse grid.
    bone_threshold_hu: float = 200.0
    # A lung covering less than this share of its mirrored partner gets its dense part back from the mirror.
    symmetry_coverage: float = 0.75
    # Grey opening width (box, mm) removing vessels before the opacity thresholds.
    vessel_opening_mm: float = 7.0
    # A voxel this much brighter than its grey opening is a vessel: it is judged by the opening's value.
    vessel_tophat_hu: float = 60.0
    # ... or this many times the image noise (std, HU), whichever is more.
    vessel_noise_factor: float = 3.0
    # Opacity thresholds apply to the HU averaged within the lung over this width (noise, texture). At or
    # below 1.5 grid voxels (the default on the ~3 mm grid) there is no extra averaging: the block mean has
    # denoised enough, and wider boxes merged patchy opacities and their gaps (over-counting them).
    smoothing_mm: float = 2.0
    # Opacities thinner than twice this (atelectasis bands, pleural partial volume) are not lesions.
    min_opacity_radius_mm: float = 5.0
    # The faintest ground glass (about -700 HU); a voxel is an opacity above a point between the patient's
    # parenchyma baseline at its depth and this ...
    ggo_floor_hu: float = -720.0
    # ... (this fraction of the way from baseline to floor) ...
    ggo_threshold_fraction: float = 0.55
    # ... and at least this far above the baseline (noise on the ~3 mm block-mean grid is about 10-25 HU).
    ggo_min_contrast_hu: float = 40.0
    # The parenchyma baseline is fitted to smoothed lung voxels below this (clearly aerated) ...
    baseline_max_hu: float = -760.0
    # ... as a line along anterior-posterior, through the medians of this many slabs.
    baseline_slabs: int = 8
    consolidation_range_hu: tuple[float, float] = (-300.0, 150.0)
    # Lungs whose lateral edge falls back from its neighbours' (a dense pleural-based opacity) get the dense
    # voxels out to the envelope of the edge within this window (mm, cranio-caudal x anterior-posterior) ...
    lateral_envelope_mm: float = 90.0
    # ... never past the ribs (bone within this cranio-caudal distance, bridging intercostal gaps).
    rib_search_mm: float = 15.0
    # Learned lungs (hybrid) take in the aerated coarse voxels (block mean below this, i.e. mostly lung) that
    # touch them, in this many 6-neighbour steps: the head misses thin rims over the diaphragm and at the apex.
    rim_threshold_hu: float = -400.0
    rim_steps: int = 1
    # Learned lungs end this far below each lung's lowest slice with aerated tissue (at least this share of its
    # largest aerated slice): deeper "lung" is the crura, the psoas or the abdomen (a real patient's 7 % of false
    # consolidation; docs/ood.md).
    base_margin_mm: float = 20.0
    base_aerated_share: float = 0.02
    # Dense parts of the learned lungs (block mean >= consolidation_range_hu[0]) need aerated lung (block mean
    # below support_aerated_hu) beside them: a component whose faces touch aerated lung less than
    # support_min_contact of the time, or less than support_fat_contact with a fat-like median (below
    # support_fat_hu), is not lung (neck and shoulder tissue above the apex, crura, pericardial fat pads: a
    # real normal scan's 4 % of "consolidation"); real consolidation borders the lung it fills. A component of
    # half its lung or more (a white lung) is always kept, and so is one under support_min_ml.
    support_aerated_hu: float = -500.0
    support_min_contact: float = 0.05
    support_fat_contact: float = 0.12
    support_fat_hu: float = -60.0
    support_min_ml: float = 0.5
    # A dense component most of whose voxels (at least support_fat_share) lie in support_fat_range_hu is fat
    # whatever lung borders it (a pericardial or mediastinal fat pad the lung head took in: the independent
    # family's normals read 1-6 % of "consolidation" from it); consolidation (soft tissue mixed with some air) and
    # dense ground glass spread over -300..+50 and never sit mostly in the fat window (a wider window, -150..-40,
    # dropped the training world's partly aerated lobar consolidation).
    support_fat_range_hu: tuple[float, float] = (-140.0, -70.0)
    support_fat_share: float = 0.6
    # Lung voxels in surface_fat_range_hu (nearly pure fat: at most about an eighth of consolidation or air mixed
    # in) reached from the lung mask's surface through more such voxels are the chest wall's, the pericardium's or
    # the abdomen's fat, where a lung head carried the mask on along dense disease (peel_surface_fat).
    surface_fat_range_hu: tuple[float, float] = (-140.0, -85.0)
    # Gas that the lungs' own air does not reach is the stomach's or the colon's under a dome (drop_gut_gas): an
    # aerated pocket of the mask (below support_aerated_hu) outside the lungs' large aerated parts (this share of
    # the largest), of at least gut_gas_min_ml with a mean below gut_gas_max_hu (gas, not parenchyma cut off by
    # consolidation: -520..-810 HU on the development cases), round (this share survives a one-voxel erosion; air
    # bronchograms and bronchi do not), centred in the lowest gut_gas_lower_share of the lungs' height. It and the
    # mask it reaches within gut_gas_reach_mm before the lungs' air does go (60 mm took lobar consolidation over
    # the stomach on development cases; docs/ood.md).
    gut_gas_main_share: float = 0.2
    gut_gas_min_ml: float = 3.0
    gut_gas_max_hu: float = -830.0
    gut_gas_core_share: float = 0.2
    gut_gas_lower_share: float = 0.4
    gut_gas_reach_mm: float = 30.0
