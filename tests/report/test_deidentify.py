"""medai deidentify: the Basic Profile removes a fake identity everywhere (private attributes included), keeps
UIDs consistent across the study, leaves pixels alone (the copy scores identically), honours the Retain UIDs
and Retain Longitudinal Temporal Information options, refuses burned-in annotation; and how it differs from
dicognito on the same input (docs/deidentification.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medai.cli import main as cli_main
from medai.errors import DeidentificationError
from medai.inference.classifier import Classifier
from medai.ingest.discovery import find_series
from medai.ingest.load import load_series
from medai.report.deidentify import Deidentifier
from tests.conftest import load_script

compare = load_script("deid_compare")


@pytest.fixture(scope="module")
def identified(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("identified") / "series"
    compare.write_identified_series(folder)
    return folder


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_deidentify_removes_the_identity_and_scores_identically(
    identified: Path, tmp_path: Path, shipped_classifier: Classifier
) -> None:
    out = tmp_path / "deid"
    assert cli_main(["deidentify", str(identified), str(out)]) == 0
    data = _all_bytes(out)
    assert [s for s in compare.IDENTITY_STRINGS if s.encode() in data] == []
    (original,), (copy,) = find_series(identified), find_series(out)
    assert copy.n_instances == original.n_instances == 24
    assert copy.series_uid != original.series_uid and copy.study_uid != original.study_uid
    datasets = [pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1 and len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    first = datasets[0]
    assert first.PatientIdentityRemoved == "YES" and first.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in first.DeidentificationMethodCodeSequence] == ["113100"]
    assert not [e for e in first.iterall() if e.tag.is_private]
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    before, after = load_series(original), load_series(copy)
    assert np.array_equal(before.hu, after.hu) and before.spacing_mm == after.spacing_mm
    p, q = shipped_classifier.predict(before), shipped_classifier.predict(after)
    assert p.probabilities == q.probabilities and p.lesion_percent == q.lesion_percent
    assert after.series_uid == copy.series_uid


def test_the_options_retain_uids_and_dates(identified: Path, tmp_path: Path) -> None:
    out = tmp_path / "deid"
    assert cli_main(["deidentify", str(identified), str(out), "--retain-uids", "--retain-dates"]) == 0
    (original,), (copy,) = find_series(identified), find_series(out)
    assert copy.series_uid == original.series_uid
    ds = pydicom.dcmread(next(out.rglob("*.dcm")))
    assert ds.StudyDate == "20240305" and str(ds.PatientName) == "" and ds.PatientBirthDate == "19510203"
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113110", "113106"]


def test_references_between_instances_keep_pointing_at_the_same_instance() -> None:
    target, referring = pydicom.Dataset(), pydicom.Dataset()
    target.SOPInstanceUID, target.StudyInstanceUID = "1.2.3.4", "1.2.3"
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    referring.ReferencedImageSequence, referring.StudyInstanceUID = [item], "1.2.3"
    deid = Deidentifier(key=b"0123456789abcdef")
    a, b = deid.dataset(target), deid.dataset(referring)
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID != "1.2.3.4"
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # a class, not an id
    assert a.StudyInstanceUID == b.StudyInstanceUID


def test_burned_in_annotation_is_refused_not_passed_on(identified: Path, tmp_path: Path) -> None:
    paths = sorted(identified.glob("*.dcm"))
    ds = pydicom.dcmread(paths[0])
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation is YES"):
        Deidentifier().dataset(ds)
    ds.BurnedInAnnotation, ds.SOPClassUID = None, "1.2.840.10008.5.1.4.1.1.7"  # secondary capture, unknown
    del ds.BurnedInAnnotation
    with pytest.raises(DeidentificationError, match="must be NO"):
        Deidentifier().dataset(ds)
    tree = tmp_path / "in"
    tree.mkdir()
    for k, path in enumerate(paths[:3]):
        ds = pydicom.dcmread(path)
        ds.BurnedInAnnotation = "YES" if k == 0 else "NO"
        ds.save_as(tree / path.name)
    assert cli_main(["deidentify", str(tree), str(tmp_path / "out")]) == 1  # one refused, two written
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2


def test_compared_with_dicognito_on_the_same_input(identified: Path) -> None:
    """What docs/deidentification.md says about the two tools still holds."""
    rows, kept = compare.compare(identified)
    by = {r.keyword: r for r in rows}
    assert kept["medai"] == []
    assert "Hildegard" in kept["dicognito"] and "Testpatient" in kept["dicognito"]  # a description, a private tag
    assert by["StudyDescription"].dicognito == "CT THORAX Hildegard" and by["StudyDescription"].medai is None
    assert by["DeviceSerialNumber"].dicognito == "SN-55512" and by["DeviceSerialNumber"].medai == ""
    assert by["PatientName"].dicognito not in ("", None) and by["PatientName"].medai == ""  # fake name vs empty
    assert by["StudyDate"].dicognito not in ("", "20240305") and by["StudyDate"].medai == ""  # shifted vs removed
    assert by["PatientAge"].dicognito == "072Y" and by["PatientAge"].medai is None
    assert "Testpatient" not in compare.markdown(rows, kept).split("- medai kept")[1]
