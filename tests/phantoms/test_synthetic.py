"""Tests of the phantom world (medai.phantoms.synthetic, medai.phantoms.anatomy, medai.phantoms.pathology)."""

from __future__ import annotations

import csv
import time
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medai import cli
from medai.labels import CLASS_NAMES
from medai.phantoms.anatomy import Tissue
from medai.phantoms.files import write_dicom, write_nifti
from medai.phantoms.pathology import SEVERITY_CAP
from medai.phantoms.synthetic import (
    HELDOUT_RANGES,
    TRAIN_RANGES,
    Acquisition,
    LesionLabel,
    LungLabel,
    Phantom,
    PhantomSpec,
    generate,
    sample_spec,
)

SMALL = Acquisition(matrix=96, pixel_spacing_mm=4.0, slice_thickness_mm=5.0, noise_hu=10.0)
MEDIUM = Acquisition(matrix=128, pixel_spacing_mm=3.0, slice_thickness_mm=3.0, noise_hu=10.0)


def _phantom(label: str, severity: float, seed: int, acq: Acquisition = SMALL) -> Phantom:
    return generate(PhantomSpec(label, severity, seed, acq), fast=True)


def _lung_geometry(ph: Phantom) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel peripheral flag (outer third by distance to the lung border) and lung voxels."""
    lung = ph.lung_mask > 0
    dist = ndimage.distance_transform_edt(lung, sampling=ph.volume.spacing_mm)
    outer = np.zeros_like(lung)
    for side in (LungLabel.RIGHT, LungLabel.LEFT):
        m = ph.lung_mask == side
        if m.any():
            outer |= m & (dist <= np.percentile(dist[m], 40))
    return outer, lung


@pytest.fixture(scope="module")
def medium_phantoms() -> dict[str, Phantom]:
    return {
        "normal": _phantom("normal", 0.0, 21, MEDIUM),
        "covid19": _phantom("covid19", 0.25, 21, MEDIUM),
        "other_pneumonia": _phantom("other_pneumonia", 0.25, 22, MEDIUM),
    }


def test_same_spec_gives_identical_arrays_and_other_seed_differs() -> None:
    a, b = _phantom("covid19", 0.2, 5), _phantom("covid19", 0.2, 5)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.lesion_mask, b.lesion_mask) and np.array_equal(a.lung_mask, b.lung_mask)
    assert a.volume.series_uid == b.volume.series_uid
    assert not np.array_equal(a.volume.hu, _phantom("covid19", 0.2, 6).volume.hu)


def test_patient_does_not_depend_on_label_or_resolution() -> None:
    normal, covid = _phantom("normal", 0.0, 9), _phantom("covid19", 0.3, 9)
    assert np.array_equal(normal.lung_mask, covid.lung_mask)
    fine = _phantom("normal", 0.0, 9, MEDIUM)
    ml = [np.count_nonzero(p.lung_mask) * p.volume.voxel_volume_ml for p in (normal, fine)]
    assert abs(ml[0] - ml[1]) / ml[1] < 0.06
    assert 2000 < ml[1] < 8000


def test_volume_is_ct_int16_with_lps_geometry_and_header() -> None:
    ph = _phantom("other_pneumonia", 0.1, 3)
    v = ph.volume
    assert v.hu.dtype == np.int16 and v.hu.min() >= -1024
    assert v.spacing_mm == (5.0, 4.0, 4.0)
    assert np.array_equal(v.direction, np.eye(3))
    assert v.header["Modality"] == "CT" and v.header["ConvolutionKernel"]
    assert "SYNTHETIC" in v.header["StudyDescription"]
    assert ph.lung_mask.shape == ph.lesion_mask.shape == v.shape
    # right lung (label 1) lies at negative LPS x (patient right), left lung at positive x
    for label, sign in ((LungLabel.RIGHT, -1), (LungLabel.LEFT, 1)):
        k = np.argwhere(ph.lung_mask == label)
        x = v.index_to_patient(k.astype(float))[:, 0]
        assert np.sign(np.median(x)) == sign


def test_masks_are_nested_in_body_and_lungs() -> None:
    ph = _phantom("covid19", 0.4, 12)
    assert ph.lung_mask.max() == 2 and set(np.unique(ph.lesion_mask)) <= {0, 1, 2}
    assert not np.any((ph.lesion_mask > 0) & (ph.lung_mask == 0))
    body = ndimage.binary_fill_holes(ph.volume.hu > -400, structure=np.ones((1, 3, 3)))
    assert np.all(body[ph.lung_mask > 0])
    assert np.all(ph.tissue_mask[ph.lung_mask > 0] == Tissue.LUNG)


@pytest.mark.parametrize("label", ["covid19", "other_pneumonia"])
@pytest.mark.parametrize("severity", [0.03, 0.2, 0.6])
def test_lesion_percent_matches_severity(label: str, severity: float) -> None:
    ph = _phantom(label, severity, 40 + int(severity * 100))
    expected = 100 * min(severity, SEVERITY_CAP.get(ph.pattern, 1.0))  # a segment or a round pneumonia is capped
    assert abs(ph.lesion_percent - expected) < 3.0


def test_normal_has_no_lesions() -> None:
    assert _phantom("normal", 0.0, 4).lesion_percent == 0.0


def test_covid19_is_bilateral_peripheral_lower_and_posterior() -> None:
    bilateral, peripheral, lower, posterior = [], [], [], []
    for seed in range(8):
        ph = _phantom("covid19", 0.12, 100 + seed)
        les = ph.lesion_mask > 0
        outer, lung = _lung_geometry(ph)
        sides = [np.count_nonzero(les & (ph.lung_mask == s)) for s in (LungLabel.RIGHT, LungLabel.LEFT)]
        bilateral.append(min(sides) / sum(sides) > 0.15)
        peripheral.append((outer & les).sum() / les.sum() / ((outer & lung).sum() / lung.sum()))
        zz, yy = np.nonzero(lung)[0], np.nonzero(lung)[1]
        zl, yl = np.nonzero(les)[0], np.nonzero(les)[1]
        lower.append(np.mean(zl < np.median(zz)))  # z index grows superior
        posterior.append(np.mean(yl > np.median(yy)))  # row index grows posterior
    assert sum(bilateral) >= 6
    assert np.mean(peripheral) > 1.3
    assert np.mean(lower) > 0.55 and np.mean(posterior) > 0.55


def test_other_pneumonia_has_a_dominant_side_or_is_central() -> None:
    covid_like = 0
    for seed in range(8):
        ph = _phantom("other_pneumonia", 0.12, 200 + seed)
        les = ph.lesion_mask > 0
        outer, lung = _lung_geometry(ph)
        sides = [np.count_nonzero(les & (ph.lung_mask == s)) for s in (LungLabel.RIGHT, LungLabel.LEFT)]
        dominant = max(sides) / sum(sides) >= 0.7
        peripheral = (outer & les).sum() / les.sum() / ((outer & lung).sum() / lung.sum())
        if ph.pattern == "lobar":
            assert dominant, f"lobar pneumonia (seed {seed}) must be unilateral-dominant"
        covid_like += int(not dominant and peripheral > 1.3)
    assert covid_like <= 2


def test_consolidation_is_the_dominant_density_of_lobar_pneumonia() -> None:
    seed = next(s for s in range(300, 400) if _pattern_kind("other_pneumonia", s) == "lobar")
    ph = _phantom("other_pneumonia", 0.15, seed)
    cons = np.count_nonzero(ph.lesion_mask == LesionLabel.CONSOLIDATION)
    assert cons > 0.5 * np.count_nonzero(ph.lesion_mask)


def _pattern_kind(label: str, seed: int) -> str:
    from medai.phantoms.pathology import sample_pattern

    return sample_pattern(label, seed).kind


def test_hu_statistics_per_tissue(medium_phantoms: dict[str, Phantom]) -> None:
    ph = medium_phantoms["covid19"]
    hu, tissue = ph.volume.hu.astype(float), ph.tissue_mask
    assert tissue is not None

    def core(code: Tissue) -> np.ndarray:
        return ndimage.binary_erosion(tissue == code, iterations=1)

    parenchyma = core(Tissue.LUNG) & (ph.lesion_mask == 0)
    assert -900 <= hu[parenchyma].mean() <= -750
    assert -130 <= hu[core(Tissue.FAT)].mean() <= -70
    assert 20 <= hu[core(Tissue.SOFT_TISSUE)].mean() <= 70
    assert hu[core(Tissue.BONE)].mean() > 300
    for p in medium_phantoms.values():
        ggo, cons = p.lesion_mask == LesionLabel.GROUND_GLASS, p.lesion_mask == LesionLabel.CONSOLIDATION
        if ggo.sum() > 50:
            assert -750 <= p.volume.hu[ggo].mean() <= -250
        if cons.sum() > 50:
            assert -150 <= p.volume.hu[cons].mean() <= 100


def test_ggo_and_consolidation_hu_overlap_across_classes(medium_phantoms: dict[str, Phantom]) -> None:
    means = {}
    for label in ("covid19", "other_pneumonia"):
        p = medium_phantoms[label]
        means[label] = [p.volume.hu[p.lesion_mask == k].mean() for k in (1, 2) if (p.lesion_mask == k).sum() > 50]
    assert means["covid19"] and means["other_pneumonia"]
    assert abs(means["covid19"][0] - means["other_pneumonia"][0]) < 350


def test_dicom_round_trip_gives_exact_hu_and_geometry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from medai.ingest.load import load_series

    ph = _phantom("covid19", 0.2, 8, replace(SMALL, matrix=64, pixel_spacing_mm=6.0, slice_thickness_mm=10.0))
    paths = write_dicom(ph, tmp_path / "case", transfer_syntax="rle", patient_id="P42")
    assert len(paths) == ph.volume.shape[0]
    loaded = load_series(tmp_path / "case")
    assert np.array_equal(loaded.hu, ph.volume.hu)
    assert np.allclose(loaded.spacing_mm, ph.volume.spacing_mm)
    assert np.allclose(loaded.origin_mm, ph.volume.origin_mm, atol=1e-3)
    assert np.allclose(loaded.direction, ph.volume.direction)
    assert loaded.series_uid == ph.volume.series_uid
    assert loaded.header["PatientID"] == "P42"
    assert loaded.header["ConvolutionKernel"] == ph.volume.header["ConvolutionKernel"]


def test_nifti_round_trip_keeps_lps_positions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ph = _phantom("other_pneumonia", 0.2, 8, replace(SMALL, matrix=64, pixel_spacing_mm=6.0, slice_thickness_mm=10.0))
    path = write_nifti(ph, tmp_path / "case.nii.gz")
    img = nib.load(path)
    assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), ph.volume.hu)
    ijk = np.array([3, 5, 2])  # (x, y, z) index
    ras = img.affine @ np.array([*ijk, 1.0])
    lps = ph.volume.index_to_patient(ijk[::-1].astype(float))
    assert np.allclose(ras[:3] * np.array([-1, -1, 1]), lps)
    lesion = nib.load(tmp_path / "case_lesion.nii.gz")
    assert np.array_equal(np.asarray(lesion.dataobj).transpose(2, 1, 0), ph.lesion_mask)
    assert (tmp_path / "case_lung.nii.gz").exists()


def test_fast_mode_is_fast_at_training_size() -> None:
    acq = Acquisition(matrix=160, pixel_spacing_mm=2.5, slice_thickness_mm=3.0)
    generate(PhantomSpec("covid19", 0.2, 1, acq), fast=True)
    start = time.perf_counter()
    for seed in range(3):
        generate(PhantomSpec("other_pneumonia", 0.2, seed, acq), fast=True)
    assert (time.perf_counter() - start) / 3 < 2.0


def test_sample_spec_is_label_independent_and_heldout_is_outside_training() -> None:
    a = sample_spec(np.random.default_rng(3), label="normal")
    b = sample_spec(np.random.default_rng(3), label="covid19")
    assert a.acquisition == b.acquisition and a.seed == b.seed and a.severity == 0
    rng = np.random.default_rng(0)
    train = [sample_spec(rng).acquisition for _ in range(50)]
    held = [sample_spec(rng, split="heldout").acquisition for _ in range(50)]
    assert {sample_spec(rng).label for _ in range(60)} == set(CLASS_NAMES)
    lo, hi = TRAIN_RANGES.slice_thickness_mm[0]
    assert all(lo <= t.slice_thickness_mm <= hi for t in train)
    assert all(t.slice_thickness_mm >= HELDOUT_RANGES.slice_thickness_mm[0][0] >= hi for t in held)
    noise_hi = TRAIN_RANGES.noise_hu[0][1]
    assert all(t.noise_hu >= noise_hi for t in held)
    k_lo, k_hi = TRAIN_RANGES.kernel_sharpness[0]
    assert all(not k_lo < t.kernel_sharpness < k_hi for t in held)
    s_lo, s_hi = TRAIN_RANGES.patient_scale[0]
    assert all(not s_lo < t.patient_scale < s_hi for t in held)


def test_invalid_specs_raise() -> None:
    with pytest.raises(ValueError, match="label must be one of"):
        PhantomSpec("flu", 0.1, 1)
    with pytest.raises(ValueError, match="severity must be 0 for label 'normal'"):
        PhantomSpec("normal", 0.1, 1)
    with pytest.raises(ValueError, match="severity must be in"):
        PhantomSpec("covid19", 0.95, 1)
    with pytest.raises(ValueError, match="slice_thickness_mm must be"):
        Acquisition(slice_thickness_mm=0.0)
    with pytest.raises(ValueError, match="split must be"):
        sample_spec(np.random.default_rng(0), split="test")


def test_cli_synth_writes_series_nifti_and_manifest(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "synth"
    args = ["synth", str(out), "--cases", "3", "--matrix", "48", "--slice-thickness", "10", "--format", "both"]
    assert cli.main([*args, "--seed", "4", "--transfer-syntax", "implicit"]) == 0
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == list(CLASS_NAMES)
    for row in rows:
        assert len(list((out / row["path"]).glob("*.dcm"))) == int(row["n_slices"])
        assert (out / row["nifti_path"]).exists()
        assert row["split"] == "" and row["acquisition_ranges"] == "train"
        assert row["patient_id"].startswith("SYN")
        asked = 100 * float(row["severity"])  # a segmental or focal pneumonia caps it (SEVERITY_CAP)
        assert float(row["lesion_percent"]) < asked + 5
        if row["label"] == "covid19":
            assert abs(float(row["lesion_percent"]) - asked) < 5
    assert "ynthetic" in capsys.readouterr().out
    assert cli.main(["synth", str(out), "--classes", "flu"]) == 2
