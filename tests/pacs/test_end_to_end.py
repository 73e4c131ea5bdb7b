"""End to end with a real Orthanc: results land in the source study; Orthanc can be the sender too; STOW-RS;
the transfer-syntax fallback; a series the QC gate refuses gets a failure SR; no patient identity in logs."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from medai.pacs.service import PacsService
from medai.pacs.status import format_status, read_status
from medai.report.audit import verify_audit_log
from medai.volume import Volume
from tests.conftest import OrthancServer, start_orthanc
from tests.pacs.conftest import (
    PATIENT_ID,
    PATIENT_NAME,
    all_finished,
    dcmtk,
    first_slices,
    instance_bytes,
    orthanc_results,
    settings,
    storescu,
    study_uid_of,
    wait_for,
)


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([dcmtk("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_storescu_to_medai_to_orthanc_sr_sc_seg_in_the_same_study(
    pacs_service: Callable[..., PacsService],
    orthanc: OrthancServer,
    write_series: Callable[..., Path],
    chest_volume: Volume,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # everything anyone logs, pynetdicom and highdicom included
    spool = tmp_path / "spool"
    service = pacs_service(settings(spool, orthanc, seg=True))
    folder = write_series(chest_volume)
    sent = storescu(service.config.port, folder)
    assert sent.returncode == 0, sent.stderr
    rows = wait_for(lambda: all_finished(spool, 1), what="the series to be scored and sent")
    assert rows[0]["state"] == "sent" and rows[0]["label"] and rows[0]["received"] == chest_volume.shape[0]
    study = study_uid_of(folder)
    found = orthanc_results(orthanc, study)
    assert {k: len(v) for k, v in found.items()} == {"SR": 1, "OT": 4, "SEG": 1}  # Orthanc's REST API lists them
    for modality, instances in found.items():
        path = tmp_path / f"{modality}.dcm"
        path.write_bytes(instance_bytes(orthanc, instances[0]))
        assert _dciodvfy_errors(path) == [], modality
        assert pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study
    dump = subprocess.run([dcmtk("dsrdump"), str(tmp_path / "SR.dcm")], capture_output=True, text=True, check=True)
    assert dump.stdout.count('"Probability")=') == 3 and '"Severity")=(CT-' in dump.stdout
    status = read_status(spool)
    assert status["counts"]["sent"] == 1 and "sent" in format_status(status)
    audit = (spool / "audit.jsonl").read_text()
    (record,) = [json.loads(line) for line in audit.splitlines()]
    assert record["state"] == "sent" and record["model_sha256"] == service.classifier.sha256
    assert record["who"] == "AE MODALITY" and len(record["pixel_sha256"]) == 64 and record["source"] == "pacs"
    assert verify_audit_log(spool / "audit.jsonl").ok
    logged = caplog.text
    assert "scored" in logged
    for text in (logged, audit, format_status(status)):
        assert PATIENT_NAME not in text and PATIENT_ID not in text and "Testpatient" not in text


def test_orthanc_forwards_a_study_and_the_results_come_back(
    pacs_service: Callable[..., PacsService],
    orthanc: OrthancServer,
    write_series: Callable[..., Path],
    chest_volume: Volume,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    service = pacs_service(settings(spool, orthanc, allow_ae="ORTHANC@127.0.0.1"))
    folder = write_series(chest_volume)
    for path in sorted(folder.iterdir()):
        orthanc.rest("POST", "/instances", path.read_bytes())
    study = study_uid_of(folder)
    (orthanc_id,) = [f["ID"] for f in orthanc.rest("POST", "/tools/lookup", study.encode()) if f["Type"] == "Study"]
    orthanc.add_modality("MEDAI", "MEDAI", service.config.port)
    orthanc.rest("POST", "/modalities/MEDAI/store", {"Resources": [orthanc_id], "Synchronous": True})
    wait_for(lambda: all_finished(spool, 1), what="the forwarded study to be scored and sent")
    found = orthanc_results(orthanc, study)
    assert len(found["CT"]) == chest_volume.shape[0] and len(found["SR"]) == 1 and len(found["OT"]) == 4
    path = tmp_path / "sr.dcm"  # built from the queue's UIDs and one full header (no SEG asked)
    path.write_bytes(instance_bytes(orthanc, found["SR"][0]))
    assert _dciodvfy_errors(path) == []


def test_stow_rs_and_the_fallback_to_explicit_little_endian(
    pacs_service: Callable[..., PacsService],
    write_series: Callable[..., Path],
    chest_volume: Volume,
    tmp_path: Path,
) -> None:
    # one PACS that accepts only uncompressed syntaxes (gets the RLE key images decompressed), one by DICOMweb
    strict = start_orthanc(
        tmp_path / "strict",
        extra_config={"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]},
    )
    web = start_orthanc(tmp_path / "web")
    try:
        spool = tmp_path / "spool"
        service = pacs_service(settings(spool, strict, image_syntax="rle", stow=[web.url + "/dicom-web"]))
        folder = write_series(chest_volume)
        assert storescu(service.config.port, folder).returncode == 0
        rows = wait_for(lambda: all_finished(spool, 1), what="delivery to both destinations")
        assert rows[0]["state"] == "sent", rows[0]["deliveries"]
        study = study_uid_of(folder)
        for server in (strict, web):
            found = orthanc_results(server, study)
            assert len(found["SR"]) == 1 and len(found["OT"]) == 4
        image = orthanc_results(strict, study)["OT"][0]
        syntax = strict.rest("GET", f"/instances/{image}/metadata/TransferSyntax", raw=True).decode()
        assert syntax == "1.2.840.10008.1.2.1"  # fell back from RLE
        web_image = orthanc_results(web, study)["OT"][0]
        assert (
            web.rest("GET", f"/instances/{web_image}/metadata/TransferSyntax", raw=True).decode()
            == "1.2.840.10008.1.2.5"
        )
    finally:
        strict.stop()
        web.stop()


def test_a_series_the_qc_gate_refuses_gets_a_failure_sr(
    pacs_service: Callable[..., PacsService],
    orthanc: OrthancServer,
    write_series: Callable[..., Path],
    chest_volume: Volume,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    service = pacs_service(settings(spool, orthanc))
    folder = write_series(first_slices(chest_volume, 6))
    assert storescu(service.config.port, folder).returncode == 0
    rows = wait_for(lambda: all_finished(spool, 1), what="the failure SR to be sent")
    assert rows[0]["state"] == "sent" and rows[0]["outcome"] == "not_scored" and rows[0]["reason"] == "too_few_slices"
    found = orthanc_results(orthanc, study_uid_of(folder))
    assert list(found) == ["SR"]
    path = tmp_path / "fail.dcm"
    path.write_bytes(instance_bytes(orthanc, found["SR"][0]))
    dump = subprocess.run([dcmtk("dsrdump"), str(path)], capture_output=True, text=True, check=True).stdout
    assert "Not scored: too few slices" in dump
    assert _dciodvfy_errors(path) == []
    assert "not_scored: too_few_slices" in format_status(read_status(spool))
