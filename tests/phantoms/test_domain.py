"""The phantom world covers what real scanners produce: every randomised factor is really varied.

Issue 13's domain randomization: slice thickness, kernels and dose, bodies from small to obese, fields of
view that cut the body or the arms, arms up and down, IV contrast, scan ranges into the upper abdomen with
gas under the diaphragm (never lung), motion and streaks, expiration, segmental and focal pneumonia.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medai.phantoms.anatomy import Tissue, sample_anatomy
from medai.phantoms.synthetic import Acquisition, PhantomSpec, generate, sample_spec

BASE = Acquisition(matrix=96, pixel_spacing_mm=4.0, slice_thickness_mm=5.0, noise_hu=0.0)


def test_the_sampler_varies_every_protocol_factor() -> None:
    rng = np.random.default_rng(11)
    acqs = [sample_spec(rng).acquisition for _ in range(120)]
    assert {a.contrast for a in acqs} == {"none", "venous", "arterial"}
    assert {a.arms for a in acqs} == {"none", "up", "down"}
    thickness = np.array([a.slice_thickness_mm for a in acqs])
    assert thickness.min() < 1.0 and thickness.max() > 4.5
    fov = np.array([a.pixel_spacing_mm * a.matrix for a in acqs])
    assert fov.min() < 310 and fov.max() > 460
    assert min(a.noise_hu for a in acqs) < 8 and max(a.noise_hu for a in acqs) > 40
    assert min(a.patient_scale for a in acqs) < 0.8 and max(a.patient_scale for a in acqs) > 1.25
    below = np.array([a.range_below_mm for a in acqs])
    assert below.min() < 30 and below.max() > 130
    assert 0.05 < np.mean([a.motion > 0 for a in acqs]) < 0.3
    assert 0.1 < np.mean([a.streaks > 0 for a in acqs]) < 0.35


def test_patients_vary_in_body_habitus_and_breathing() -> None:
    anatomies = [sample_anatomy(seed) for seed in range(60)]
    assert any(a.extra_fat_mm > 20 for a in anatomies) and any(a.extra_fat_mm == 0 for a in anatomies)
    assert any(a.expiration > 0 for a in anatomies)
    expired = [a for a in anatomies if a.expiration > 0]
    assert min(a.lung_hu for a in expired) > min(a.lung_hu for a in anatomies if a.expiration == 0)


@pytest.fixture(scope="module")
def abdominal() -> object:
    acq = replace(BASE, range_below_mm=150.0, range_above_mm=40.0)
    return generate(PhantomSpec("normal", 0.0, 3, acq), fast=True)


def test_the_scan_reaches_the_upper_abdomen_with_gas_that_is_not_lung(abdominal: object) -> None:
    ph = abdominal
    lung_slices = np.flatnonzero(ph.lung_mask.any(axis=(1, 2)))
    first_lung = int(lung_slices[0])
    assert first_lung * ph.spec.acquisition.slice_thickness_mm > 100  # >10 cm of abdomen below the lungs
    below = ph.volume.hu[:first_lung]
    body = below > -500
    rows = np.flatnonzero(body.any(axis=(0, 2)))
    cols = np.flatnonzero(body.any(axis=(0, 1)))
    inner = below[:, rows[0] + 8 : rows[-1] - 8, cols[0] + 8 : cols[-1] - 8]
    gas = inner < -700
    assert gas.sum() > 50  # stomach, colon or bowel gas inside the abdomen
    assert not ph.lung_mask[:first_lung].any()
    assert (ph.tissue_mask[:first_lung] == Tissue.LUNG).sum() == 0


def test_contrast_brightens_the_blood_pools() -> None:
    plain = generate(PhantomSpec("normal", 0.0, 5, BASE), fast=True)
    angio = generate(PhantomSpec("normal", 0.0, 5, replace(BASE, contrast="arterial", contrast_level=0.8)), fast=True)
    blood = plain.tissue_mask == Tissue.BLOOD
    assert float(np.median(plain.volume.hu[blood])) < 80
    assert float(np.median(angio.volume.hu[angio.tissue_mask == Tissue.BLOOD])) > 200
    lungs = plain.lung_mask > 0
    assert np.percentile(angio.volume.hu[lungs], 99.5) > np.percentile(plain.volume.hu[lungs], 99.5) + 50


def test_arms_down_widen_the_body_and_a_small_field_of_view_cuts_them() -> None:
    wide = replace(BASE, matrix=128, pixel_spacing_mm=4.5)
    none = generate(PhantomSpec("normal", 0.0, 7, wide), fast=True)
    down = generate(PhantomSpec("normal", 0.0, 7, replace(wide, arms="down")), fast=True)
    z = down.volume.shape[0] // 2
    width_none = np.count_nonzero((none.volume.hu[z] > -500).any(axis=0))
    width_down = np.count_nonzero((down.volume.hu[z] > -500).any(axis=0))
    assert width_down > width_none + 10
    assert (down.tissue_mask[z] == Tissue.BONE).sum() > (none.tissue_mask[z] == Tissue.BONE).sum()
    cut = generate(PhantomSpec("normal", 0.0, 7, replace(BASE, arms="down", pixel_spacing_mm=3.0)), fast=True)
    assert (cut.volume.hu[z][:, [0, -1]] > -500).any()  # body or arms reach the edge of the field


@pytest.mark.parametrize("factor", ["motion", "streaks"])
def test_artifacts_change_the_image(factor: str) -> None:
    acq = replace(BASE, contrast="venous")
    clean = generate(PhantomSpec("normal", 0.0, 9, acq), fast=True)
    marred = generate(PhantomSpec("normal", 0.0, 9, replace(acq, **{factor: 1.0})), fast=True)
    diff = np.abs(clean.volume.hu.astype(np.float32) - marred.volume.hu)
    assert diff.mean() > 1.0
    np.testing.assert_array_equal(clean.lung_mask, marred.lung_mask)  # artifacts are not anatomy


def test_thin_and_thick_slices_share_the_patient() -> None:
    thin = generate(PhantomSpec("covid19", 0.2, 12, replace(BASE, slice_thickness_mm=1.0)), fast=True)
    thick = generate(PhantomSpec("covid19", 0.2, 12, BASE), fast=True)
    volume = [np.count_nonzero(p.lung_mask) * p.volume.voxel_volume_ml for p in (thin, thick)]
    assert abs(volume[0] - volume[1]) < 0.08 * volume[0]
    # thick slices average vessels into partial-volume densities: fewer very bright lung voxels
    lung_thin, lung_thick = thin.volume.hu[thin.lung_mask > 0], thick.volume.hu[thick.lung_mask > 0]
    assert np.percentile(lung_thick, 99.9) < np.percentile(lung_thin, 99.9)


def _pattern_seed(kind: str) -> int:
    from medai.phantoms.pathology import sample_pattern

    return next(s for s in range(500) if sample_pattern("other_pneumonia", s).kind == kind)


def test_focal_pneumonia_is_one_compact_ball_and_segmental_reaches_the_pleura() -> None:
    from scipy import ndimage

    focal = generate(PhantomSpec("other_pneumonia", 0.3, _pattern_seed("focal"), BASE), fast=True)
    assert focal.pattern == "focal" and 0 < focal.lesion_percent <= 5.5
    _, n = ndimage.label(focal.lesion_mask > 0)
    assert n <= 3
    seg = generate(PhantomSpec("other_pneumonia", 0.1, _pattern_seed("segmental"), BASE), fast=True)
    assert seg.pattern == "segmental" and seg.lesion_percent > 3
    lungs = seg.lung_mask > 0
    surface = lungs & ~ndimage.binary_erosion(lungs)
    assert (surface & (seg.lesion_mask > 0)).sum() > 0
