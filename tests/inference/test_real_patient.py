"""The shipped model on the one real chest CT we may use (TCIA LIDC-IDRI-0001, `make real-ct`; a test, never
training data): the scan as it is reads normal and CT-0, lesions inserted into it are found and measured, and
its thin and thick reconstructions agree (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medai.evaluation.real_ct import DEFAULT_FOLDER, real_cases
from medai.inference.classifier import Classifier, Prediction

ROOT = Path(__file__).resolve().parents[2]
DICOM_FOLDER = ROOT / "cache" / "real" / "lidc-dicom"
WANTED = ("as-is", "thick-5mm", "shallow-breath", "covid-moderate", "covid-severe", "lobar-right_lower")

pytestmark = pytest.mark.skipif(
    not (DEFAULT_FOLDER / "cxr.nii.gz").is_file(), reason="the real CT is missing: run `make real-ct`"
)


@pytest.fixture(scope="module")
def scored(shipped_classifier: Classifier) -> dict[str, tuple[object, Prediction]]:
    out = {}
    for case in real_cases():
        if case.name in WANTED:
            out[case.name] = (case, shipped_classifier.predict(case.volume))
        if len(out) == len(WANTED):
            break
    return out


def test_the_real_normal_scan_reads_normal_and_ct0(scored: dict) -> None:
    case, pred = scored["as-is"]
    assert pred.label == "normal" and not pred.indeterminate, (pred.probabilities, pred.qc_flags)
    assert pred.severity.value == "CT-0"
    assert pred.probabilities["covid19"] < 0.2
    # the quantification alone: lungs within 10 % of the patient's lobe mask, no gas below the diaphragm
    assert abs(pred.quantification.lung_volume_ml - case.lung_volume_ml) < 0.10 * case.lung_volume_ml
    assert not {"lung_volume_implausible", "lung_mask_incomplete", "lung_sides_unequal"} & set(pred.qc_flags)


def test_thin_and_thick_reconstructions_agree(scored: dict) -> None:
    """At 5 mm the scan read 0.7 % and other_pneumonia until medai.quantify/8 peeled the chest wall's fat the lung
    mask had taken in (docs/ood.md); at 2.5 mm it reads 0.0 % and normal."""
    _, thin = scored["as-is"]
    _, thick = scored["thick-5mm"]
    assert thick.label == thin.label and thick.severity == thin.severity
    assert abs(thick.lesion_percent - thin.lesion_percent) < 2.0
    lungs = thin.quantification.lung_volume_ml
    assert abs(thick.quantification.lung_volume_ml - lungs) < 0.05 * lungs


def test_a_shallower_breath_is_not_ground_glass(scored: dict) -> None:
    """Aerated lung 70 HU denser in front and 190 HU at the back (a shallow breath): the dense back half read
    10.6 % of ground glass until medai.quantify/9 levelled dense slabs that rise no faster than gravity by their
    own parenchyma, and 1.8 % until /10 read the slabs that straddle the clear-lung line at their parenchyma,
    not at a censored median. 1.1 % remains (the lung's texture against a 40 HU margin; docs/ood.md, failure
    mode 9), and the decision layer calls it covid19: that part is not solved."""
    case, pred = scored["shallow-breath"]
    assert pred.lesion_percent < 1.5, pred.lesion_percent
    lungs = case.lung_volume_ml
    assert abs(pred.quantification.lung_volume_ml - lungs) < 0.10 * lungs


@pytest.mark.parametrize("name", ["covid-moderate", "covid-severe"])
def test_covid_lesions_inserted_into_the_real_scan_are_found_and_measured(scored: dict, name: str) -> None:
    case, pred = scored[name]
    assert pred.label == "covid19", pred.probabilities
    assert abs(pred.lesion_percent - case.lesion_percent) < 8.0, (pred.lesion_percent, case.lesion_percent)
    assert pred.severity.value != "CT-0"


def test_lobar_pneumonia_in_the_real_scan_is_pneumonia_and_measured(scored: dict) -> None:
    case, pred = scored["lobar-right_lower"]
    assert pred.label in ("other_pneumonia", "covid19") and not pred.indeterminate, pred.probabilities
    assert pred.probabilities["normal"] < 0.2
    assert abs(pred.lesion_percent - case.lesion_percent) < 8.0, (pred.lesion_percent, case.lesion_percent)


@pytest.mark.skipif(not DICOM_FOLDER.is_dir(), reason="the real CT's DICOM series is missing: run `make real-ct`")
def test_medai_predict_on_the_real_dicom_series_as_a_user_runs_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "medai.cli", "predict", str(DICOM_FOLDER), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["label"] == "normal" and not result["indeterminate"], result["probabilities"]
    assert result["quantification"]["lung_volume_ml"] > 3000
