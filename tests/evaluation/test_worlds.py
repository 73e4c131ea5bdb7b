"""Test worlds and the served evaluation: balanced, deterministic, honest about the real patient."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medai.cli import main as cli_main
from medai.evaluation.real_ct import (
    BLOOD_LABELS,
    BONE_LABELS,
    DEFAULT_FOLDER,
    EMPHYSEMA_HU,
    EMPHYSEMA_SHARE,
    HEART_LABEL,
    LOBES,
    MOTION_REACH_MM,
    ORGAN_PLAIN_HU,
    UNENHANCED_BLOOD_HU,
    _dependent_atelectasis,
    _lung_mask,
    _shallow_breath,
    load_lidc,
    real_cases,
)
from medai.evaluation.served import ScoredCase, score_cases, summarize
from medai.evaluation.worlds import world_cases
from medai.inference.classifier import Classifier

needs_real_ct = pytest.mark.skipif(
    not (DEFAULT_FOLDER / "mask.nii.gz").is_file(),
    reason="the real CT is fetched by `make real-ct` (make test runs it)",
)


def test_synthetic_worlds_are_balanced_deterministic_and_disjoint() -> None:
    a = list(world_cases("train", 3, matrix=64))
    b = list(world_cases("train", 3, matrix=64))
    held = list(world_cases("heldout", 3, matrix=64))
    assert [c.label for c in a] == ["normal", "covid19", "other_pneumonia"]
    assert [c.case_id for c in a] == [c.case_id for c in b]
    np.testing.assert_array_equal(a[1].volume.hu, b[1].volume.hu)
    assert all(c.factors["slice_thickness_mm"] <= 5.0 for c in a)
    assert all(c.factors["slice_thickness_mm"] >= 5.0 for c in held)
    assert a[0].lesion_percent == 0.0 and a[1].lesion_percent > 0
    with pytest.raises(ValueError, match="world must be one of"):
        world_cases("mars", 3)


@pytest.mark.parametrize("world", ["train", "independent-val"])
def test_later_cases_alone_are_the_same_cases(world: str) -> None:
    """``start`` skips cases without changing the rest, so cached rows can be extended by the missing cases only
    (the independent family draws every spec from one stream, so its skipped cases must still be drawn)."""
    every = list(world_cases(world, 3, seed=3, matrix=64))
    later = list(world_cases(world, 3, seed=3, matrix=64, start=1))
    assert [c.case_id for c in later] == [c.case_id for c in every[1:]]
    for a, b in zip(every[1:], later, strict=True):
        assert (a.label, a.lesion_percent, a.factors) == (b.label, b.lesion_percent, b.factors)
        np.testing.assert_array_equal(a.volume.hu, b.volume.hu)


def test_summary_counts_failures_and_measures_the_targets() -> None:
    p_ok = {"normal": 0.8, "covid19": 0.1, "other_pneumonia": 0.1}
    rows = [
        ScoredCase("n1", "w", "normal", "none", 0.0, 4000.0, p_ok, "normal", False, 0.5, 3000.0, "CT-0"),
        ScoredCase("c1", "w", "covid19", "covid", 30.0, 4000.0, {**p_ok, "normal": 0.1, "covid19": 0.8}, "covid19",
                   False, 24.0, 4100.0, "CT-1"),
        ScoredCase("x", "w", "covid19", "covid", 30.0, 4000.0, error="InvalidSeriesError: not axial"),
    ]  # fmt: skip
    s = summarize(rows, n_bootstrap=0)
    assert s["n_cases"] == 3 and s["n_failed"] == 1
    assert s["lesion_mae_points"] == pytest.approx(3.25)
    assert s["lung_volume_error_max_percent"] == pytest.approx(25.0)
    assert s["normals_ct0"] == 1.0 and s["severity_agreement"] == pytest.approx(0.5)


def test_summary_shows_where_the_auc_is_lost() -> None:
    """A severe COVID-19 case split between covid19 and other pneumonia, ranked under a normal lung whose false
    opacity looks like early COVID-19: the covid19-vs-rest AUC hides it, the pairs and bands name it. The normals'
    grades are also given apart for scans without and with IV contrast, when the cases say which."""

    def case(i: int, label: str, truth: float, p_covid: float, predicted: str, indeterminate: bool) -> ScoredCase:
        p_normal = 0.9 - p_covid if label == "normal" else 0.0
        probs = {"normal": p_normal, "covid19": p_covid, "other_pneumonia": 1.0 - p_covid - p_normal}
        return ScoredCase(f"c{i}", "w", label, "none", truth, 4000.0, probs, predicted, indeterminate, truth, 4000.0,
                          "CT-0")  # fmt: skip

    rows = [
        case(0, "normal", 0.0, 0.05, "normal", False),
        case(1, "normal", 0.0, 0.30, "normal", True),  # a normal label flagged indeterminate
        case(2, "normal", 0.0, 0.85, "covid19", False),  # false opacity that looks like early COVID-19
        case(3, "covid19", 2.0, 0.90, "covid19", False),
        case(4, "covid19", 5.0, 0.70, "covid19", False),
        case(5, "covid19", 40.0, 0.45, "other_pneumonia", True),  # severe, split with other pneumonia
        case(6, "other_pneumonia", 20.0, 0.20, "other_pneumonia", False),
    ]
    s = summarize(rows, n_bootstrap=0)
    assert "normals_ct0_without_contrast" not in s  # the cases do not say how they were scanned
    assert s["normals_called_normal"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["normals_called_normal_confidently"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["covid19_auc_vs_other_pneumonia"] == 1.0
    assert s["covid19_auc_vs_normal"] == pytest.approx(7 / 9, abs=1e-4)  # 7 of the 9 covid19-normal pairs ranked right
    assert s["covid19_auc_vs_normal_burden_0_3"] == 1.0
    assert s["covid19_auc_vs_normal_burden_3_10"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["covid19_auc_vs_normal_burden_10_100"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["measured_lesion_auc_vs_normal"] == 1.0  # measured as true here: the burden alone separates them
    # Normals apart by how they were scanned: the one graded CT-1 was scanned without contrast.
    phases = {"c0": "venous", "c1": "none", "c2": "none", "c3": "none"}
    plain = [dataclasses.replace(r, factors={"contrast": phases.get(r.case_id, "arterial")}) for r in rows]
    plain[2] = dataclasses.replace(plain[2], severity="CT-1")
    split = summarize(plain, n_bootstrap=0)
    assert (split["normals_ct0_without_contrast"], split["normals_without_contrast"]) == (0.5, 2)
    assert (split["normals_ct0_with_contrast"], split["normals_with_contrast"]) == (1.0, 1)
    assert split["normals_ct0"] == pytest.approx(2 / 3, abs=1e-4)
    rows[2] = dataclasses.replace(rows[2], lesion_estimate=3.0)  # the false opacity measured: 3 % of "lesion"
    assert summarize(rows, n_bootstrap=0)["measured_lesion_auc_vs_normal"] == pytest.approx(8 / 9, abs=1e-4)
    only_normals = summarize([r for r in rows if r.label == "normal"], n_bootstrap=0)
    assert not any(k.startswith("covid19_auc") for k in only_normals)


@needs_real_ct
def test_real_patient_world_has_exact_ground_truth() -> None:
    cases = {c.name: c for c in real_cases()}
    assert {c.label for c in cases.values()} == {"normal", "covid19", "other_pneumonia"}
    assert cases["as-is"].lesion_percent == 0.0
    assert 3000 < cases["as-is"].lung_volume_ml < 5000
    moderate = cases["covid-moderate"]
    assert 14.0 < moderate.lesion_percent < 16.0
    changed = moderate.volume.hu != cases["as-is"].volume.hu
    assert changed.any() and not (changed & (moderate.lung_mask == 0)).any()  # lesions only inside the lungs
    assert cases["thick-5mm"].volume.spacing_mm[0] == pytest.approx(5.0)
    assert abs(cases["thick-5mm"].lung_volume_ml - cases["as-is"].lung_volume_ml) < 0.05 * cases["as-is"].lung_volume_ml
    lobar = cases["lobar-right_lower"]
    assert (lobar.lesion_mask == 2).sum() > (lobar.lesion_mask == 1).sum()  # mostly consolidation
    shallow, as_is = cases["shallow-breath"].volume.hu, cases["as-is"].volume.hu
    inside = cases["as-is"].lung_mask > 0
    added = shallow.astype(np.int32) - as_is
    parenchyma = inside & (as_is > -900) & (as_is < -800)
    assert not added[~inside].any() and np.median(added[parenchyma]) >= 100 and added[inside].max() <= 191
    assert not added[inside & (as_is > 40)].any()  # vessels keep their density
    # ... and the lung its noise: what is added does not follow it (voxel by voxel it did, 0.09)
    noise = as_is - ndimage.gaussian_filter(as_is.astype(np.float32), 2.0 / np.array(cases["as-is"].volume.spacing_mm))
    aerated = inside & (as_is < -700)
    assert abs(np.corrcoef(added[aerated], noise[aerated])[0, 1]) < 0.03


@needs_real_ct
def test_acquisition_sweep_varies_what_it_names() -> None:
    """The real normal under acquisition changes: each change is really made, and nothing else is."""
    volume, lobes = load_lidc(DEFAULT_FOLDER)
    as_is = volume.hu.astype(np.float32)
    inside = lobes > 0
    z = volume.shape[0] // 2

    def detail(hu: np.ndarray, mask: np.ndarray) -> float:  # in-plane high-pass energy of the middle slice's lung
        plane = hu[z].astype(np.float32)
        return float(np.std((plane - ndimage.gaussian_filter(plane, 1.0))[mask[z]]))

    cases = {}
    for case in world_cases("real-sweep", None):
        assert (case.world, case.label, case.lesion_percent) == ("real-sweep", "normal", 0.0)
        cases[case.case_id.removeprefix("real-sweep-")] = case
    assert len(cases) == 20
    base = detail(as_is, inside)
    assert detail(cases["sharp-kernel"].volume.hu, inside) > 1.5 * base
    assert detail(cases["sharper-kernel"].volume.hu, inside) > detail(cases["sharp-kernel"].volume.hu, inside)
    assert detail(cases["smooth-kernel"].volume.hu, inside) < 0.7 * base
    for sigma in (80, 120):
        added = cases[f"noise-{sigma}"].volume.hu.astype(np.float32) - as_is
        assert sigma * 0.9 < float(added[inside].std()) < sigma * 1.1
    for plane in ("axial", "sagittal"):
        tilted = cases[f"tilt-6-{plane}"]
        assert tilted.volume.shape == volume.shape and (tilted.volume.hu != volume.hu).mean() > 0.3
        assert abs(tilted.lung_volume_ml - cases["sharp-kernel"].lung_volume_ml) < 0.03 * tilted.lung_volume_ml
    thick = ("thick-5mm+sharp", "thick-5mm+noise-60", "shallow-breath+thick-5mm", "unenhanced+thick-5mm")
    for name in (*thick, "unenhanced-body+thick-5mm"):
        assert cases[name].volume.spacing_mm[0] == pytest.approx(5.0)
    shallow = cases["shallow-breath+sharp"].volume.hu.astype(np.float32)
    parenchyma = inside & (as_is > -900) & (as_is < -800)
    assert float(np.median(shallow[parenchyma] - as_is[parenchyma])) >= 100  # denser lungs, and ...
    plain = _shallow_breath(volume, _lung_mask(lobes)).hu
    assert detail(shallow, inside) > 1.5 * detail(plain, inside)  # ... a sharper kernel than the shallow copy's
    # Without contrast the lungs' vessels lose their enhancement (cores at 300-460 HU fall near blood's 40), while
    # clear parenchyma and the lung's noise stay, and nothing outside the lungs moves.
    unenhanced = cases["unenhanced"].volume.hu.astype(np.float32)
    lung = _lung_mask(lobes) > 0  # (``inside`` is every labelled organ of the mask)
    smooth = ndimage.gaussian_filter(as_is, (0.0, 1.0, 1.0))
    cores = lung & (smooth > 250)
    assert float(np.median(as_is[cores] - unenhanced[cores])) > 200
    assert float(np.median(unenhanced[cores])) < 150
    clear = lung & (smooth < -870)
    assert float(np.abs(unenhanced[clear] - as_is[clear]).max()) == 0
    assert detail(unenhanced, lung & (as_is < -800)) > 0.9 * detail(as_is, lung & (as_is < -800))
    assert bool((unenhanced[~lung] == as_is[~lung]).all())
    # The whole body without contrast: the blood pools and the organs under the diaphragm fall to their plain
    # density (blood about 40 HU), the lungs read as ``unenhanced`` reads them, and bone does not move.
    body = cases["unenhanced-body"].volume.hu.astype(np.float32)
    levels = {label: UNENHANCED_BLOOD_HU for label in BLOOD_LABELS[:3]} | ORGAN_PLAIN_HU  # heart, aorta, veins
    for label, level in levels.items():
        organ = lobes == label
        assert float(np.median(as_is[organ])) > level + 15 and abs(float(np.median(body[organ])) - level) < 10
    assert bool((body[lung] == unenhanced[lung]).all())
    bone = np.isin(lobes, BONE_LABELS)
    assert bool((body[bone] == as_is[bone]).all())
    # The heart's beat smears its border and the lung beside it; lung beyond the blur's reach does not move.
    beating = cases["cardiac-motion"].volume.hu.astype(np.float32)
    to_heart = ndimage.distance_transform_edt(lobes != HEART_LABEL, sampling=volume.spacing_mm)
    border = lung & (to_heart <= 10)
    assert float(np.mean(np.abs(beating[border] - as_is[border]) > 20)) > 0.3
    far = to_heart > MOTION_REACH_MM
    assert bool((beating[far] == as_is[far]).all())
    assert float(np.mean(beating[lung] != as_is[lung])) < 0.5
    # A badly held breath smears the lung bases head to foot; the upper lungs do not move.
    breathing = cases["breathing-motion"].volume.hu.astype(np.float32)
    rows = np.flatnonzero(lung.any(axis=(1, 2)))  # slices holding lung, inferior first (z up in this scan)
    assert volume.direction[2, 2] > 0
    base, apex = slice(rows[0], rows[0] + 6), slice(rows[len(rows) // 2], rows[-1] + 1)
    assert float(np.mean(np.abs(breathing[base] - as_is[base])[lung[base]] > 20)) > 0.2
    assert bool((breathing[apex] == as_is[apex]).all())
    # Emphysema destroys about EMPHYSEMA_SHARE of the upper lobes' parenchyma into holes; the lower lobes keep theirs.
    smoker = cases["emphysema"].volume.hu.astype(np.float32)
    upper = np.isin(lobes, (LOBES["left_upper"], LOBES["right_upper"]))
    lower = np.isin(lobes, (LOBES["left_lower"], LOBES["right_lower"]))
    holes = upper & (smoker < EMPHYSEMA_HU + 40) & (as_is > EMPHYSEMA_HU + 60)
    assert 0.6 * EMPHYSEMA_SHARE < holes.sum() / np.count_nonzero(upper & (as_is < -700)) < 1.2 * EMPHYSEMA_SHARE
    assert bool((smoker[lower] == as_is[lower]).all())
    # Dependent atelectasis: the lower lobes' back under the pleura denser, clearing inward; the front untouched.
    supine = cases["dependent-atelectasis"].volume.hu.astype(np.float32)
    depth = ndimage.distance_transform_edt(lung, sampling=volume.spacing_mm)
    extent = np.flatnonzero(lung.any(axis=(0, 2)))
    y = (np.arange(volume.shape[1]) - extent[0]) / (extent[-1] - extent[0])  # 0 front .. 1 back of the lungs
    assert volume.direction[1, 1] < 0  # this scan's rows run from the back (low) to the front
    y = (1.0 - y)[None, :, None] * np.ones(volume.shape, bool)
    back = lower & (y > 0.7) & (as_is < -700)
    added = supine - as_is
    assert float(np.median(added[back & (depth < 3)])) > 150
    assert float(np.median(added[back & (depth < 3)])) > 3 * float(np.median(added[back & (depth > 20)]))
    front = y < 0.4
    assert bool((supine[front | upper] == as_is[front | upper]).all())


@needs_real_ct
def test_atelectasis_world_draws_the_band_where_its_name_says() -> None:
    """``real-atelectasis``: normals whose lower lobes' back is denser under the pleura, on the named side only,
    reaching no further forward than named, and thicker bands change more lung."""
    volume, lobes = load_lidc(DEFAULT_FOLDER)
    as_is = volume.hu.astype(np.float32)
    lung = _lung_mask(lobes) > 0
    extent = np.flatnonzero(lung.any(axis=(0, 2)))
    y = 1.0 - (np.arange(volume.shape[1]) - extent[0]) / (extent[-1] - extent[0])  # 0 front .. 1 back (rows: back low)
    y = y[None, :, None] * np.ones(volume.shape, bool)
    left, right = lobes == LOBES["left_lower"], lobes == LOBES["right_lower"]
    changed: dict[str, np.ndarray] = {}
    names = ["band-5mm-reach-60-both", "band-5mm-reach-60-left", "band-5mm-reach-60-right", "band-5mm-reach-45-both"]
    for case, name in zip(world_cases("real-atelectasis", 4), names, strict=True):
        assert (case.case_id, case.label, case.lesion_percent) == (f"real-atelectasis-{name}", "normal", 0.0)
        changed[name] = case.volume.hu != volume.hu
    both, only_left, only_right = (changed[f"band-5mm-reach-60-{s}"] for s in ("both", "left", "right"))
    assert only_left[left].any() and not only_left[~left].any()
    assert only_right[right].any() and not only_right[~right].any()
    assert not both[~(left | right)].any() and not both[y < 0.4].any()
    assert changed["band-5mm-reach-45-both"][y >= 0.4].any() and not changed["band-5mm-reach-45-both"][y < 0.55].any()
    depth = ndimage.distance_transform_edt(lung, sampling=volume.spacing_mm)
    thicker = _dependent_atelectasis(volume, lobes, np.random.default_rng(0), band_mm=20.0, depth=depth) - as_is
    assert np.count_nonzero(thicker) > 2 * np.count_nonzero(both)
    back = (left | right) & (y > 0.7) & (as_is < -700)
    assert float(np.median(thicker[back & (depth < 3)])) > 3 * float(np.median(thicker[back & (depth > 20)]))


def test_medai_evaluate_offers_every_world() -> None:
    """The CLI keeps its own list of worlds (importing the evaluation package would slow every command's start):
    it must name the same ones as :data:`medai.evaluation.worlds.WORLDS`."""
    import argparse

    from medai.cli import _add_evaluate
    from medai.evaluation.worlds import WORLDS

    sub = argparse.ArgumentParser().add_subparsers()
    _add_evaluate(sub)
    evaluate = next(a for a in sub.choices["evaluate"]._actions if "--world" in a.option_strings)
    assert tuple(evaluate.choices) == WORLDS


def test_medai_evaluate_world_writes_the_served_targets(tmp_path: Path) -> None:
    out = tmp_path / "report"
    model = Path(__file__).resolve().parents[2] / "models" / "medai-ref.onnx"
    code = cli_main(["evaluate", "--model", str(model), "--world", "train", "--n", "3", "--bootstrap", "0",
                     "--out", str(out)])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["served_targets"]["n_cases"] == 3
    assert {"lesion_mae_points", "normals_ct0", "lung_volume_error_max_percent"} <= set(metrics["served_targets"])
    assert len(metrics["served_cases"]) == 3
    assert "Research use only" in (out / "report.html").read_text()
    assert cli_main(["evaluate", "--model", str(model.with_suffix(".pt")), "--world", "real", "--out",
                     str(out)]) == 1  # fmt: skip


def test_score_cases_turns_a_failure_into_a_row(shipped_classifier: Classifier) -> None:
    case = next(world_cases("train", 1, matrix=64))
    blank = case.volume.with_array(np.zeros_like(case.volume.hu))  # not Hounsfield units: refused by QC
    broken = type(case)(case.case_id, case.world, case.label, blank, 0.0, 0.0, "none")
    rows = score_cases(shipped_classifier, [broken])
    assert "not_hounsfield" in rows[0].error and rows[0].predicted == ""
