"""The DICOMweb client against a real Orthanc (Debian orthanc + orthanc-dicomweb) on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from medai.errors import DicomWebError
from medai.ingest.dicomweb import DicomWebClient, split_multipart
from medai.ingest.load import load_study
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from tests.conftest import OrthancServer, free_port


def store(orthanc: OrthancServer, files: list[Path]) -> None:
    for path in files:
        orthanc.rest("POST", "/instances", path.read_bytes())


def test_lists_and_retrieves_a_study_from_orthanc(
    orthanc: OrthancServer, small_phantom: Callable[..., synthetic.Phantom], tmp_path: Path
) -> None:
    phantom = small_phantom("covid19", 0.2, 11, slices=24)
    store(orthanc, phantom_files.write_dicom(phantom, tmp_path / "src"))
    client = DicomWebClient(orthanc.url + "/dicom-web/")
    (study,) = client.studies()
    assert study.study_uid == phantom.volume.study_uid
    assert study.modalities == ("CT",) and study.n_instances == 24
    (series,) = client.series(study.study_uid)
    assert (series.series_uid, series.modality, series.n_instances) == (phantom.volume.series_uid, "CT", 24)
    files = client.retrieve_study(study.study_uid, tmp_path / "cache")
    assert len(files) == 24
    _, volume = load_study(tmp_path / "cache")
    assert volume.series_uid == phantom.volume.series_uid
    assert (volume.hu == phantom.volume.hu).all()
    assert client.studies(modality="MR") == []
    with pytest.raises(DicomWebError, match="must have a series of modality MR"):
        client.retrieve_study(study.study_uid, tmp_path / "mr", modalities=("MR",))


def test_failures_are_one_line_dicomweb_errors(orthanc: OrthancServer) -> None:
    with pytest.raises(DicomWebError, match="must start with http:// or https://"):
        DicomWebClient("file:///etc/passwd")
    with pytest.raises(DicomWebError, match="cannot reach the DICOMweb server"):
        DicomWebClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=5).studies()
    with pytest.raises(DicomWebError, match="answered 404"):
        DicomWebClient(orthanc.url + "/no-such-root").studies()
    with pytest.raises(DicomWebError, match="must be 1-64 digits and dots"):
        DicomWebClient(orthanc.url + "/dicom-web").series("1.2/../../tools")


def test_multipart_bodies_are_split_on_the_boundary_only() -> None:
    body = b"--xyz\r\nContent-Type: application/dicom\r\n\r\nA--xyzB\r\n--xyz\r\n\r\n\r\nC\r\n--xyz--\r\n"
    assert split_multipart(body, 'multipart/related; type="application/dicom"; boundary="xyz"') == [
        b"A--xyzB",
        b"\r\nC",
    ]
    with pytest.raises(DicomWebError, match="must be multipart/related with a boundary"):
        split_multipart(body, "application/dicom")
