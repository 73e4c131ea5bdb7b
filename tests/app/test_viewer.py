"""The viewer in Streamlit's AppTest: worklist, a study's result and banner, sliders, presets, overlays, uploads."""

from __future__ import annotations

import io
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from medai.inference.classifier import QC_FLAG_MEANINGS, Classifier
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from medai.report.case_report import RESEARCH_BANNER
from medai.report.results import COLUMNS
from tests.conftest import OrthancServer

VIEWER = Path(__file__).resolve().parents[2] / "app" / "viewer.py"


@dataclass
class Studies:
    root: Path
    covid_uid: str
    normal_uid: str


@pytest.fixture(scope="module")
def studies(small_phantom: Callable[..., synthetic.Phantom], tmp_path_factory: pytest.TempPathFactory) -> Studies:
    root = tmp_path_factory.mktemp("viewer")
    covid = small_phantom("covid19", 0.35, 41)
    normal = small_phantom("normal", 0.0, 42)
    phantom_files.write_dicom(covid, root / "b_covid")
    phantom_files.write_dicom(normal, root / "a_normal")
    return Studies(root, covid.volume.series_uid, normal.volume.series_uid)


def viewer(monkeypatch: pytest.MonkeyPatch, *args: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", ["viewer.py", *args])
    at = AppTest.from_file(str(VIEWER), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def wait_until_scored(at: AppTest, timeout_s: float = 120.0) -> AppTest:
    """Rerun until no worklist line waits for the model (the background thread scores them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        labels = [str(o) for r in at.sidebar.radio if r.label.startswith("Worklist") for o in r.options]
        if labels and not any("waiting" in x or "scoring" in x for x in labels):
            return at
        assert time.monotonic() < deadline, labels
        time.sleep(0.5)
        at.run()


def worklist_lines(at: AppTest) -> list[str]:
    (radio,) = [r for r in at.sidebar.radio if r.label.startswith("Worklist")]
    return [str(o) for o in radio.options]  # AppTest holds the formatted lines


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "error", "warning", "info") for e in at.get(kind))


def test_worklist_opens_the_most_urgent_study_with_its_result_and_the_banner(
    studies: Studies, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = wait_until_scored(viewer(monkeypatch, "--data", str(studies.root)))
    lines = worklist_lines(at)
    assert len(lines) == 2 and "b_covid" in lines[0] and "a_normal" in lines[1], lines
    page = texts(at)
    assert RESEARCH_BANNER in page
    assert "## covid19" in page or "## other_pneumonia" in page  # the model's label of the open study
    assert "Calibrated probabilities: normal" in page
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")  # the probability chart
    assert {"Lesions (both lungs)", "Severity", "Right lung", "Left lung"} <= {m.label for m in at.metric}
    assert "Model **medai-ref**" in page
    urls = [i.value[0] for i in at.image]
    assert len(urls) >= 3 and all(u.endswith(".png") for u in urls)  # three views (+ the colour bar), lossless PNG
    buttons = [b.label for b in at.get("download_button")]
    assert buttons[:2] == ["Case report (HTML, print to PDF)", "Result (JSON)"]
    assert buttons[2] == "DICOM SR (TID 1500)"


def images(at: AppTest) -> list[str]:
    return [
        i.value[0] for i in at.image if i.captions and i.captions[0].split(" ")[0] in ("axial", "coronal", "sagittal")
    ]


def test_sliders_presets_and_overlays_change_the_rendered_images(
    studies: Studies, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = wait_until_scored(viewer(monkeypatch, "--data", str(studies.root)))  # the COVID-19 study on top
    assert "## covid19" in texts(at) or "## other_pneumonia" in texts(at)
    at.toggle(key="saliency").set_value(True).run()
    at.toggle(key="lesions").set_value(False).run()
    start = images(at)  # saliency only
    at.toggle(key="saliency").set_value(False).run()
    no_saliency = images(at)
    at.toggle(key="lungs").set_value(True).run()
    contour = images(at)
    at.toggle(key="lesions").set_value(True).run()
    lesions = images(at)
    assert len({start[0], no_saliency[0], contour[0], lesions[0]}) == 4  # each overlay toggles
    assert "right lung" in texts(at) and "ground glass" in texts(at)  # the legend follows the overlays
    at.toggle(key="saliency").set_value(True).run()
    before = images(at)
    axial = next(s for s in at.slider if s.label == "Axial slice")
    axial.set_value(axial.value - 1 if axial.value > 1 else 2).run()
    after = images(at)
    assert after[0] != before[0]  # the axial view moved
    assert after[1] != before[1] and after[2] != before[2]  # and so did the crosshair in the others
    at.selectbox(key="window").set_value("mediastinum").run()
    assert "W400/L40" in images_captions(at)[0] and images(at)[0] != after[0]
    at.selectbox(key="window").set_value("custom").run()
    at.number_input(key="level").set_value(50).run()
    assert "W1500/L50" in images_captions(at)[0]


def test_the_overlay_on_by_default_is_the_evidence_that_decided(
    studies: Studies, monkeypatch: pytest.MonkeyPatch, shipped_classifier: Classifier
) -> None:
    at = wait_until_scored(viewer(monkeypatch, "--data", str(studies.root)))
    by_findings = shipped_classifier.evidence == "findings"
    assert at.toggle(key="lesions").value is by_findings
    assert at.toggle(key="saliency").value is not by_findings
    assert ("decision comes from the measured opacities" in texts(at)) is by_findings
    if by_findings:
        at.toggle(key="saliency").set_value(True).run()
        assert "the network's view did not decide" in texts(at)


def images_captions(at: AppTest) -> list[str]:
    return [i.captions[0] for i in at.image if i.captions and i.captions[0].startswith(("axial", "coronal"))]


def zipped(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*.dcm")):
            zf.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_a_broken_upload_shows_the_qc_reason_in_one_line(
    small_phantom: Callable[..., synthetic.Phantom], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = phantom_files.write_dicom(small_phantom("normal", 0.0, 43), tmp_path / "gap")
    files[len(files) // 2].unlink()  # a missing slice: the QC gate refuses the series
    at = viewer(monkeypatch)
    at.sidebar.radio[0].set_value("Upload").run()
    at.file_uploader[0].set_value(("study.zip", zipped(tmp_path / "gap"), "application/zip")).run()
    assert not at.exception
    (error,) = at.error
    assert "cannot be scored" in error.value and "[slice_gap]" in error.value
    assert "\n" not in error.value and "Traceback" not in error.value


def test_a_zip_with_a_parent_path_is_refused_before_anything_is_written(
    studies: Studies, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = viewer(monkeypatch)
    at.sidebar.radio[0].set_value("Upload").run()
    data = zipped(studies.root / "b_covid", {"../../escape.dcm": b"DICM"})
    at.file_uploader[0].set_value(("study.zip", data, "application/zip")).run()
    (error,) = at.error
    assert error.value.startswith("Upload refused: archive member '../../escape.dcm' must stay inside")
    assert not at.image and not (Path.cwd().parent / "escape.dcm").exists()


def normal_study_results(studies: Studies, name: str, **fields: str) -> Path:
    """A results file beside the studies with one scored row for ``a_normal``, written by an older model."""
    row = dict.fromkeys(COLUMNS, "")
    row.update(
        source=str(studies.root / "a_normal"), series_uid=studies.normal_uid, status="ok", model_id="medai-ref@old"
    )
    row.update(fields)
    results = studies.root.parent / name
    results.write_text(",".join(COLUMNS) + "\n" + ",".join(row[c] for c in COLUMNS) + "\n")
    return results


def test_a_results_file_lists_its_studies_without_scoring(studies: Studies, monkeypatch: pytest.MonkeyPatch) -> None:
    results = normal_study_results(
        studies,
        "results.csv",
        label="covid19",
        indeterminate="false",
        p_normal="0.1",
        p_covid19="0.8",
        p_other_pneumonia="0.1",
        severity="CT-2",
        qc_flags="expiration",
    )
    at = viewer(monkeypatch, "--results", str(results))
    page = texts(at)
    assert "## covid19" in page and "another model version" in page  # the row as written, not re-scored
    assert f"- expiration: {QC_FLAG_MEANINGS['expiration']}" in page  # each QC warning says what it means
    assert "No overlays" in page and not at.toggle(key="saliency").value
    at.button(key=f"score-button:{studies.normal_uid}").click().run()
    assert "No overlays" not in texts(at)  # the reader asked: scored now, overlays on


def test_a_normal_label_under_the_ct0_line_says_why_it_is_indeterminate(
    studies: Studies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The served label of a lung measured under the CT-0 line is normal whatever the probabilities; the reader
    is told that this is why it is flagged, not a close call."""
    results = normal_study_results(
        studies,
        "gated.csv",
        label="normal",
        indeterminate="true",
        p_normal="0.3",
        p_covid19="0.6",
        p_other_pneumonia="0.1",
        lesion_percent="0.8",
        severity="CT-0",
    )
    page = texts(viewer(monkeypatch, "--results", str(results)))
    assert "## normal" in page
    assert "the probabilities lean to covid19, but the measured opacity (0.8 %) is under the CT-0 line" in page


def test_the_pacs_worklist_lists_and_opens_a_study_from_orthanc(
    orthanc: OrthancServer,
    small_phantom: Callable[..., synthetic.Phantom],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    phantom = small_phantom("covid19", 0.3, 44)
    for path in phantom_files.write_dicom(phantom, tmp_path / "pacs"):
        orthanc.rest("POST", "/instances", path.read_bytes())
    at = wait_until_scored(viewer(monkeypatch, "--dicomweb", orthanc.url + "/dicom-web"))
    (line,) = worklist_lines(at)
    assert phantom.volume.study_uid[-8:] in line and "p(COVID)" in line
    assert "Calibrated probabilities" in texts(at) and len(images(at)) == 3


def test_a_nifti_upload_opens_with_its_result(
    small_phantom: Callable[..., synthetic.Phantom], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = phantom_files.write_nifti(small_phantom("covid19", 0.3, 45), tmp_path / "scan.nii.gz")
    at = viewer(monkeypatch)
    at.sidebar.radio[0].set_value("Upload").run()
    at.file_uploader[0].set_value(("scan.nii.gz", path.read_bytes(), "application/gzip")).run()
    assert not at.error and "Calibrated probabilities" in texts(at) and len(images(at)) == 3
    (radio,) = [r for r in at.sidebar.radio if r.label.startswith("Worklist")]
    assert str(radio.options[0]).split(" - ")[0].endswith("scan")
