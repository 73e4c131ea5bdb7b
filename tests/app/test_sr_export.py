"""The viewer's DICOM SR export, wired to the SR encoder of medai.report (shared with the PACS hook)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom

from medai.inference.classifier import Classifier
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from medai.report.worklist import Worklist, entries_from_folder


def test_the_sr_of_the_opened_study_is_a_comprehensive_3d_sr_of_its_series(
    shipped_classifier: Classifier, small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path
) -> None:
    from app.results import sr_bytes

    phantom = small_phantom("covid19", 0.3, 61)
    phantom_files.write_dicom(phantom, tmp_path / "study")
    worklist = Worklist(entries_from_folder(tmp_path), classifier=lambda: shipped_classifier)
    case = worklist.open(phantom.volume.series_uid)
    assert case.prediction is not None and len(case.sources) == 30
    sr = pydicom.dcmread(io.BytesIO(sr_bytes(case, case.prediction)))
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == phantom.volume.study_uid and sr.SeriesNumber == 9901
