"""The independent phantom family (out-of-distribution test world): determinism, ground truth, factors, DICOM."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medai.ingest.load import load_series
from medai.labels import CLASS_NAMES
from medai.phantoms.ctwriter import write_ct_series
from medai.phantoms.independent import (
    IndependentPhantom,
    IndependentSpec,
    generate_independent,
    sample_independent_spec,
)
from medai.phantoms.independent.phantom import _Renderer
from medai.phantoms.independent.spec import PATTERNS
from medai.phantoms.independent.tissue import Label

SMALL = 112  # matrix of the fast cases


def _spec(label: str | None, seed: int, *, matrix: int = SMALL, **factors: object) -> IndependentSpec:
    spec = sample_independent_spec(np.random.default_rng(seed), label=label, matrix=matrix)
    if not factors:
        return spec
    new = copy.deepcopy(spec.factors)
    new.update(factors)
    return IndependentSpec(spec.label, spec.seed, spec.lesion_fraction, spec.pattern, new)


def _specs(n: int, **kwargs: object) -> list[IndependentSpec]:
    rng = np.random.default_rng(2024)
    return [sample_independent_spec(rng, **kwargs) for _ in range(n)]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cases() -> dict[str, IndependentPhantom]:
    """One small case per pattern (112 matrix; the drawn slices for two, 3 mm for the others to save time)."""
    thick = {"slice_mm": 3.0, "increment_mm": 3.0}
    return {
        "normal": generate_independent(_spec("normal", 3, **thick)),
        "covid_mild": generate_independent(_spec("covid19", 11)),
        "covid_severe": generate_independent(_spec("covid19", 13, **thick)),
        "lobar": generate_independent(_spec("other_pneumonia", 25, **thick)),
        "segmental": generate_independent(_spec("other_pneumonia", 24, **thick)),
        "focal": generate_independent(_spec("other_pneumonia", 22)),
    }


# ---------------------------------------------------------------- specs


def test_specs_have_valid_labels_patterns_and_disjoint_split_seeds() -> None:
    test = _specs(300)
    val = _specs(300, split="val")
    assert {s.label for s in test} == set(CLASS_NAMES)
    for spec in test + val:
        assert spec.pattern in PATTERNS[spec.label]
        assert (spec.lesion_fraction == 0.0) == (spec.label == "normal")
        assert 0.0 <= spec.lesion_fraction <= 0.75
    assert {s.pattern for s in test if s.label == "other_pneumonia"} == {"lobar", "segmental", "focal"}
    assert all(s.seed % 2 == 1 for s in test) and all(s.seed % 2 == 0 for s in val)
    assert not {s.seed for s in test} & {s.seed for s in val}
    covid = [s.lesion_fraction for s in test if s.label == "covid19"]
    assert min(covid) < 0.01 and max(covid) > 0.5  # all severities
    for spec in test[:50]:  # plain JSON: a spec written out rebuilds the same case
        assert json.loads(json.dumps(spec.factors)) == spec.factors
    forced = sample_independent_spec(np.random.default_rng(0), label="covid19", matrix=160)
    assert forced.label == "covid19" and forced.factors["matrix"] == 160
    assert forced.factors["pixel_mm"] == pytest.approx(forced.factors["fov_mm"] / 160, rel=1e-4)


def test_bad_arguments_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="split must be"):
        sample_independent_spec(rng, split="train")
    with pytest.raises(ValueError, match="label must be"):
        sample_independent_spec(rng, label="flu")
    with pytest.raises(ValueError, match="matrix must be"):
        sample_independent_spec(rng, matrix=8)
    with pytest.raises(ValueError, match="pattern of a normal case"):
        IndependentSpec("normal", 1, 0.0, "covid", {})


def test_each_factor_is_really_drawn_over_a_sample() -> None:
    specs = _specs(400)
    f = [s.factors for s in specs]
    count = Counter
    assert set(count(x["contrast"] for x in f)) == {"none", "venous", "arterial", "pulmonary"}
    assert set(count(x["arms"] for x in f)) == {"up", "down"}
    assert set(count(x["kernel"] for x in f)) == {"soft", "standard", "sharp", "bone"}
    assert set(count(x["fov_mode"] for x in f)) == {"body", "wide", "targeted"}
    assert set(count(x["body"]["habitus"] for x in f)) == {"small", "slim", "average", "overweight", "obese"}
    assert {True, False} <= set(count(x["table"] for x in f)) and {True, False} <= set(count(x["fov_cut"] for x in f))
    assert set(count(x["lung_state"] for x in f)) == {"inspiration", "expiration"}
    assert set(count(x["emphysema"] for x in f)) == {"none", "mild", "moderate"}
    slices = [x["slice_mm"] for x in f]
    assert min(slices) == 1.25 and max(slices) == 5.0
    matrices = [x["matrix"] for x in f]
    assert min(matrices) == 256 and max(matrices) == 512
    pixels = [x["pixel_mm"] for x in f]
    assert min(pixels) < 0.7 and 0.9 < max(pixels) <= 0.98
    assert any(x["motion"]["respiratory_mm"] for x in f) and any(x["motion"]["cardiac_mm"] for x in f)
    assert any(x["artifacts"]["shoulder_streaks"] for x in f) and any(x["artifacts"]["contrast_streaks"] for x in f)
    assert any(x["atelectasis"] for x in f) and any(x["breast_mm"] for x in f)
    assert any(x["age_years"] < 18 for x in f)
    noise = [x["noise_hu"] for x in f]
    assert min(noise) < 10 and max(noise) > 60


# ---------------------------------------------------------------- generation


def test_same_spec_gives_identical_arrays_and_another_seed_differs() -> None:
    spec = _spec("covid19", 31, matrix=80, slice_mm=5.0, increment_mm=5.0)
    a, b = generate_independent(spec), generate_independent(spec)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.lung_mask, b.lung_mask) and np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.volume.series_uid == b.volume.series_uid and a.volume.header == b.volume.header
    other = generate_independent(_spec("covid19", 32, matrix=80, slice_mm=5.0, increment_mm=5.0))
    assert other.volume.series_uid != a.volume.series_uid
    assert other.volume.shape != a.volume.shape or not np.array_equal(other.volume.hu, a.volume.hu)


def test_volume_is_int16_ct_in_lps_with_synthetic_header(cases: dict[str, IndependentPhantom]) -> None:
    ph = cases["covid_mild"]
    v, f = ph.volume, ph.spec.factors
    assert v.hu.dtype == np.int16 and v.hu.min() >= -1024 and v.hu.max() <= 3071
    assert v.spacing_mm == pytest.approx((f["increment_mm"], f["pixel_mm"], f["pixel_mm"]), rel=1e-4)
    assert np.array_equal(v.direction, np.eye(3))
    assert v.header["Modality"] == "CT" and v.header["SliceThickness"] == f["slice_mm"]
    assert v.header["ConvolutionKernel"] == f["kernel_name"] and "SYNTHETIC" in v.header["ImageComments"]
    assert v.header["PatientID"].startswith("SYNB") and v.study_uid and v.series_uid
    assert ph.lung_mask.shape == ph.lesion_mask.shape == v.shape
    assert ph.lung_mask.dtype == ph.lesion_mask.dtype == np.uint8


@pytest.mark.parametrize("name", ["covid_mild", "covid_severe", "lobar", "segmental", "focal"])
def test_lesion_share_is_close_to_its_target(cases: dict[str, IndependentPhantom], name: str) -> None:
    ph = cases[name]
    target = 100.0 * ph.spec.lesion_fraction
    assert ph.lesion_percent == pytest.approx(target, rel=0.2, abs=0.08)
    assert set(np.unique(ph.lesion_mask)) <= {0, 1, 2}


def test_normal_has_no_lesion_and_plausible_lungs(cases: dict[str, IndependentPhantom]) -> None:
    ph = cases["normal"]
    assert ph.lesion_percent == 0.0 and not ph.lesion_mask.any()
    assert 1500.0 < ph.lung_volume_ml < 8000.0
    lung_hu = ph.volume.hu[ph.lung_mask > 0]
    assert -950 < np.median(lung_hu) < -650


def test_masks_lesions_inside_lungs_and_right_lung_on_patient_right(cases: dict[str, IndependentPhantom]) -> None:
    for ph in cases.values():
        assert not (ph.lesion_mask.astype(bool) & ~ph.lung_mask.astype(bool)).any()
        v = ph.volume
        centres = {}
        for side in (1, 2):
            zyx = np.argwhere(ph.lung_mask == side).mean(axis=0)
            centres[side] = v.index_to_patient(zyx)
        assert centres[1][0] < -30.0 < 30.0 < centres[2][0]  # LPS x: right lung at negative x
    consolidation = cases["lobar"].lesion_mask == 2
    assert consolidation.sum() > (cases["lobar"].lesion_mask == 1).sum()  # lobar pneumonia is mostly consolidation


def test_consolidation_is_dense_and_ground_glass_between(cases: dict[str, IndependentPhantom]) -> None:
    ph = cases["covid_severe"]
    hu = ph.volume.hu
    ggo = np.median(hu[ph.lesion_mask == 1])
    cons = np.median(hu[ph.lesion_mask == 2])
    healthy = np.median(hu[(ph.lung_mask > 0) & (ph.lesion_mask == 0)])
    assert healthy < ggo - 100 and -780 < ggo < -250 and cons > -250


def test_scan_reaches_the_abdomen_and_gut_gas_is_never_lung() -> None:
    spec = _spec("normal", 41, matrix=96, slice_mm=5.0, increment_mm=5.0)
    renderer = _Renderer(spec)
    ph = renderer.run()
    lung_slices = np.flatnonzero(ph.lung_mask.any(axis=(1, 2)))
    assert lung_slices.min() >= 3  # slices below the lungs: upper abdomen
    assert lung_slices.max() < ph.volume.shape[0] - 2  # and above: the neck
    gas_seen = 0
    for k, z in enumerate(renderer.z_out):
        gas = renderer.voxelizer.plane(float(z)) == Label.GAS
        gas_seen += int(gas.sum())
        assert not (gas & (ph.lung_mask[k] > 0)).any()
    assert gas_seen > 200
    below = ph.volume.hu[: lung_slices.min()]
    assert (below < -900).sum() > 100  # gas in stomach or bowel shows in the image


def test_contrast_brightens_blood_and_kernels_change_noise_texture() -> None:
    base = {"fov_circle": False, "iterative": 0.0, "slice_mm": 5.0, "increment_mm": 5.0, "enhancement": 1.0}
    plain = generate_independent(_spec("normal", 51, matrix=96, contrast="none", **base))
    venous = generate_independent(_spec("normal", 51, matrix=96, contrast="venous", **base))
    brighter = (venous.volume.hu.astype(int) - plain.volume.hu.astype(int)) > 80
    assert brighter.sum() > 2000

    def lag_correlation(kernel: str) -> float:
        ph = generate_independent(_spec("normal", 52, matrix=200, kernel=kernel, noise_hu=40.0, **base))
        air = ph.volume.hu[:, :8, 75:125].astype(float)  # air above the patient: noise only
        a = air[:, :, 1:] - air.mean()
        b = air[:, :, :-1] - air.mean()
        return float((a * b).mean() / (a * a).mean())

    soft, sharp = lag_correlation("soft"), lag_correlation("sharp")
    assert soft > 0.0 > sharp and soft - sharp > 0.2  # smooth kernel: blotchy; sharp: fine grain


def test_small_field_of_view_cuts_the_body() -> None:
    spec = next(s for s in _specs(200, label="normal", matrix=96) if s.factors["fov_mode"] == "targeted")
    new = copy.deepcopy(spec.factors)
    new.update(fov_circle=False, slice_mm=5.0, increment_mm=5.0)
    ph = generate_independent(IndependentSpec(spec.label, spec.seed, 0.0, "none", new))
    middle = ph.volume.hu[np.flatnonzero(ph.lung_mask.any(axis=(1, 2)))[::3]]
    edges = np.concatenate([middle[:, :, :2].ravel(), middle[:, :, -2:].ravel()])
    assert (edges > -200).mean() > 0.2  # soft tissue reaches the left and right borders


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpegls"])
def test_dicom_series_round_trips_to_the_same_hu(
    cases: dict[str, IndependentPhantom], tmp_path: Path, syntax: str
) -> None:
    v = cases["segmental"].volume
    write_ct_series(v, tmp_path, transfer_syntax=syntax, attributes=dict(v.header))
    loaded = load_series(tmp_path)
    assert np.array_equal(loaded.hu, v.hu)
    assert loaded.spacing_mm == pytest.approx(v.spacing_mm, abs=1e-3)
    assert loaded.header["ConvolutionKernel"] == v.header["ConvolutionKernel"]
    assert float(loaded.header["SliceThickness"]) == pytest.approx(v.header["SliceThickness"])
