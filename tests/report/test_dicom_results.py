"""The DICOM result objects: TID 1500 SR, Secondary Capture key images, SEG; checked by dcmtk and dicom3tools."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from medai.inference.classifier import Classifier, Prediction
from medai.phantoms import synthetic
from medai.phantoms.ctwriter import write_ct_series
from medai.report.dicom_seg import build_seg
from medai.report.dicom_sr import CLASS_CODES, MEDAI_SCHEME, build_failure_sr, build_sr, severity_code
from medai.report.keyimages import RESEARCH_NOTICE
from medai.report.secondary_capture import build_secondary_capture
from medai.volume import Volume


def _tool(name: str) -> str:
    for folder in ("/usr/bin", "/usr/local/bin"):
        if Path(folder, name).is_file():
            return str(Path(folder, name))
    pytest.fail(f"{name} is not installed: `make test` installs dcmtk and dicom3tools")


def dciodvfy_errors(path: Path) -> list[str]:
    """dicom3tools' IOD validator: its error lines (it reports on stderr)."""
    result = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def scored(
    small_phantom: Callable[..., synthetic.Phantom],
    shipped_classifier: Classifier,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Volume, Prediction, list[pydicom.Dataset]]:
    """A covid19 phantom written as DICOM with a patient identity, loaded back, scored; its headers."""
    from medai.ingest.load import load_series

    folder = tmp_path_factory.mktemp("ct")
    phantom = small_phantom("covid19", 0.4, 3)
    paths = write_ct_series(phantom.volume, folder, attributes={"PatientName": "Doe^Jane", "PatientID": "MRN77"})
    volume = load_series(paths)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return volume, shipped_classifier.predict(volume), headers


def test_sr_reports_the_prediction_in_the_source_study_with_coded_concepts(scored: tuple, tmp_path: Path) -> None:
    _, pred, headers = scored
    sr = build_sr(pred, headers)
    assert sr.StudyInstanceUID == headers[0].StudyInstanceUID
    assert sr.SeriesInstanceUID != headers[0].SeriesInstanceUID and sr.SeriesNumber == 9901
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.PatientID == "MRN77"  # filed under the same patient by any PACS
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence} == {h.SOPInstanceUID for h in headers}

    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content  # highdicom parses what it wrote
    assert report is not None
    groups = {str(g.ContentSequence[0].TextValue): g for g in _groups(sr)}
    assert set(groups) == {f"classification: {n}" for n in pred.probabilities} | {"result", "quantification"}
    for name, p in pred.probabilities.items():
        items = groups[f"classification: {name}"].ContentSequence
        finding = next(i for i in items if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071")
        assert finding.ConceptCodeSequence[0].CodeValue == CLASS_CODES[name].value
        num = next(i for i in items if i.ValueType == "NUM")
        assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(p, abs=1e-4)
    result = groups["result"].ContentSequence
    assert any(
        i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodeValue == CLASS_CODES[pred.label].value for i in result
    )  # the predicted class, coded
    as_covid = build_sr(dataclasses.replace(pred, label="covid19", indeterminate=False), headers)
    covid_result = {str(g.ContentSequence[0].TextValue): g for g in _groups(as_covid)}["result"].ContentSequence
    assert any(i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodeValue == "840539006" for i in covid_result)
    quant = groups["quantification"].ContentSequence
    numbers = [float(i.MeasuredValueSequence[0].NumericValue) for i in quant if i.ValueType == "NUM"]
    q = pred.quantification
    expected = [q.lesion_percent, q.right_lesion_percent, q.left_lesion_percent, q.lung_volume_ml]
    np.testing.assert_allclose(numbers[:4], expected, atol=1e-3)
    severity = next(
        i for i in quant if i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodingSchemeDesignator == MEDAI_SCHEME
    )
    assert severity.ConceptCodeSequence[0].CodeValue == q.severity.value
    flagged = build_sr(
        dataclasses.replace(pred, indeterminate=True, qc_flags=("expiration", "lung_sides_unequal")), headers
    )
    warnings = [
        i.ConceptCodeSequence[0]
        for i in {str(g.ContentSequence[0].TextValue): g for g in _groups(flagged)}["result"].ContentSequence
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "QC-WARNING"
    ]
    assert [(w.CodeValue, w.CodeMeaning) for w in warnings] == [
        ("EXPIRATION", "expiration"),
        ("LUNG_SIDES_UNEQU", "lung sides unequal"),
    ]  # why the label is indeterminate, in the PACS
    flagged_path = save(flagged, tmp_path / "flagged.dcm")
    assert dciodvfy_errors(flagged_path) == []
    flagged_dump = subprocess.run(
        [_tool("dsrdump"), str(flagged_path)], capture_output=True, text=True, check=True
    ).stdout
    assert '"Quality control warning")=(EXPIRATION,99MEDAI,"expiration")' in flagged_dump
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == MEDAI_SCHEME
    assert pred.model_sha256 and f"model_sha256={pred.model_sha256}" in _text_values(sr)

    path = save(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    dump = subprocess.run([_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True).stdout
    assert f'"Probability")="{round(pred.probabilities["covid19"], 4)}' in dump
    assert f'"Severity")=({q.severity.value},{MEDAI_SCHEME},"{severity_code(q.severity).meaning}")' in dump
    assert "research use only" in dump


def _text_values(ds: pydicom.Dataset) -> list[str]:
    return [str(e.value) for e in ds.iterall() if e.keyword == "TextValue"]


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return list(measurements.ContentSequence)


def test_failure_sr_names_the_reason(scored: tuple, tmp_path: Path) -> None:
    _, pred, headers = scored
    sr = build_failure_sr("too_few_slices", "5 slices, at least 16 needed", headers[:5], model_id=pred.model_id)
    path = save(sr, tmp_path / "fail.dcm")
    assert dciodvfy_errors(path) == []
    dump = subprocess.run([_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True).stdout
    assert '"Scoring outcome")=(TOO_FEW_SLICES,99MEDAI,"Not scored: too few slices")' in dump
    assert any("5 slices, at least 16 needed" in t for t in _text_values(sr))


def test_sr_refuses_bad_sources(scored: tuple) -> None:
    _, pred, headers = scored
    with pytest.raises(ValueError, match="at least one dataset"):
        build_sr(pred, [])
    other = copy.deepcopy(headers[0])
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(ValueError, match="one series"):
        build_sr(pred, [headers[0], other])
    with pytest.raises(ValueError, match="scored series"):
        build_sr(pred, [other])


def test_key_images_are_valid_secondary_captures_without_patient_identity(scored: tuple, tmp_path: Path) -> None:
    volume, pred, headers = scored
    images = build_secondary_capture(volume, pred, headers, n_slices=3)
    assert 1 <= len(images) <= 3
    assert [im.InstanceNumber for im in images] == list(range(1, len(images) + 1))
    assert len({im.SeriesInstanceUID for im in images}) == 1
    assert all(im.StudyInstanceUID == headers[0].StudyInstanceUID for im in images)
    assert all(im.BurnedInAnnotation == "NO" for im in images)
    assert images[0].pixel_array.shape[-1] == 3
    assert dciodvfy_errors(save(images[0], tmp_path / "sc.dcm")) == []
    rle = build_secondary_capture(volume, pred, headers, n_slices=3, transfer_syntax=RLELossless)[0]
    assert dciodvfy_errors(save(rle, tmp_path / "sc-rle.dcm")) == []
    np.testing.assert_array_equal(rle.pixel_array, images[0].pixel_array)
    # pixels come from the prediction and the voxels only: another patient, the same scan, the same pixels
    renamed = []
    for header in headers:
        twin = copy.deepcopy(header)
        twin.PatientName, twin.PatientID = "Other^Person", "OTHER-ID"
        renamed.append(twin)
    other = build_secondary_capture(volume, pred, renamed, n_slices=3)
    for a, b in zip(images, other, strict=True):
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    assert RESEARCH_NOTICE.startswith("Research use only")


def test_key_image_shows_the_research_notice_line(scored: tuple) -> None:
    from medai.report.keyimages import key_image_array

    volume, pred, _ = scored
    image = key_image_array(volume, pred, slices=[pred.saliency.top_slices(1)[0]], tile_px=256)
    caption = image[256:]
    rows_with_text = np.flatnonzero((caption > 200).any(axis=(1, 2)))
    assert rows_with_text.max() > caption.shape[0] - 25  # the fourth line (the notice) is inside the canvas
    with pytest.raises(ValueError, match="slices must be indices"):
        key_image_array(volume, pred, slices=[volume.shape[0]])


def test_seg_holds_lungs_and_opacities_on_the_source_grid(scored: tuple, tmp_path: Path) -> None:
    volume, pred, headers = scored
    seg = build_seg(volume, pred, list(reversed(headers)))  # any order: frames follow the volume's slices
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "right lung",
        "left lung",
        "ground-glass opacity",
        "consolidation",
    ]
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert dciodvfy_errors(save(seg, tmp_path / "seg.dcm")) == []
    parsed = hd.seg.segread(tmp_path / "seg.dcm")
    right = parsed.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids), segment_numbers=[1], skip_overlap_checks=True
    )[..., 0]
    expected = pred.quantification.grid.upsample(pred.lung_mask) == 1
    np.testing.assert_array_equal(right.astype(bool), expected)
    with pytest.raises(ValueError, match="every slice"):
        build_seg(volume, pred, headers[:-1])
