"""The HTML case report: self-contained, the banner, the numbers, the key images, identifiers on request."""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Callable

import numpy as np
import pytest

from medai.inference.classifier import QC_FLAG_MEANINGS, Classifier
from medai.phantoms import synthetic
from medai.report.case_report import RESEARCH_BANNER, case_report_html, indeterminate_warning, key_views
from medai.report.keyimages import OPACITY_CAPTION


def test_case_report_is_self_contained_with_banner_numbers_and_key_images(
    shipped_classifier: Classifier, small_phantom: Callable[..., synthetic.Phantom]
) -> None:
    phantom = small_phantom("covid19", 0.35, 31)
    prediction = shipped_classifier.predict(phantom.volume)
    page = case_report_html(phantom.volume, prediction, title="case_31", model_card="models/medai-ref.json")
    assert page.count(RESEARCH_BANNER) >= 2
    assert f'<p class="label">{prediction.label}' in page
    for name, p in prediction.probabilities.items():
        assert f"{name}</th>" in page and f"{p:.3f}" in page
    assert f"{prediction.lesion_percent:.1f} % of lung volume" in page and prediction.severity.value in page
    assert prediction.model_id in page and "models/medai-ref.json" in page
    assert len(re.findall(r'<img alt="(axial|coronal) [^"]+" src="data:image/png;base64,', page)) >= 2
    assert not re.search(r'(src|href)="(https?:)?//', page)  # loads nothing from anywhere
    patient_id = str(phantom.volume.header["PatientID"])
    assert patient_id in page
    assert patient_id not in case_report_html(phantom.volume, prediction, show_identifiers=False)
    assert "Indeterminate:" not in page or prediction.indeterminate
    by_network = dataclasses.replace(prediction, evidence="network")
    by_findings = dataclasses.replace(prediction, evidence="findings")
    findings_page, network_page = (case_report_html(phantom.volume, p) for p in (by_findings, by_network))
    assert OPACITY_CAPTION in findings_page and "saliency colour scale" not in findings_page  # what decided
    assert OPACITY_CAPTION not in network_page and "saliency colour scale" in network_page
    assert (
        key_views(phantom.volume, by_findings)[0][1].tobytes() != key_views(phantom.volume, by_network)[0][1].tobytes()
    )
    quant = dataclasses.replace(
        prediction.quantification, lesion_mask=np.zeros_like(prediction.quantification.lesion_mask)
    )  # a findings decision with no opacity to show: the network's view, said to be only that
    clear = dataclasses.replace(by_findings, quantification=quant)
    assert "the label comes from the measured opacities" in case_report_html(phantom.volume, clear)
    unsure = dataclasses.replace(prediction, indeterminate=True)
    assert "Indeterminate: the probabilities are close" in case_report_html(phantom.volume, unsure)
    expired = dataclasses.replace(unsure, qc_flags=("thick_slices", "expiration"))
    assert html.escape(f"expiration: {QC_FLAG_MEANINGS['expiration']}") in case_report_html(phantom.volume, expired)
    other = small_phantom("normal", 0.0, 32, slices=24)
    with pytest.raises(ValueError, match="prediction must belong to the volume"):
        case_report_html(other.volume, prediction)


def test_a_normal_label_under_the_ct0_line_says_why_it_is_indeterminate(
    shipped_classifier: Classifier, small_phantom: Callable[..., synthetic.Phantom]
) -> None:
    """A lung measured under the CT-0 line is labelled normal whatever the probabilities; when they lean to a
    disease, the reader is told that this, not a close call, is why the label is flagged."""
    phantom = small_phantom("normal", 0.0, 33)
    prediction = shipped_classifier.predict(phantom.volume)
    assert prediction.lesion_percent < 1.0
    leaning = {"normal": 0.3, "covid19": 0.6, "other_pneumonia": 0.1}
    gated = dataclasses.replace(prediction, label="normal", indeterminate=True, probabilities=leaning)
    page = case_report_html(phantom.volume, gated)
    assert "the probabilities lean to covid19, but the measured opacity" in page and "CT-0 line (1 %)" in page
    assert "close to the decision threshold" not in page
    close = dataclasses.replace(gated, probabilities={"normal": 0.55, "covid19": 0.4, "other_pneumonia": 0.05})
    assert "close to the decision threshold" in case_report_html(phantom.volume, close)
    assert indeterminate_warning("normal", leaning, 2.5).startswith("Indeterminate: the probabilities are close")
