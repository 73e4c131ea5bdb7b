"""Failure drills with medai as a real subprocess and a real Orthanc: a destination down then up, SIGKILL
during receive, scoring and sending, and 8 concurrent associations. Every acknowledged series is delivered
exactly once: one SR and one set of key images per study in the PACS, one finished job, one audit record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from medai.cli import main
from medai.pacs.failpoint import FAILPOINT_ENV
from medai.pacs.service import PacsService
from medai.volume import Volume
from tests.conftest import OrthancServer, free_port, start_orthanc
from tests.pacs.conftest import (
    all_finished,
    dcmtk,
    instance_bytes,
    jobs,
    orthanc_results,
    settings,
    start_medai,
    storescu,
    study_uid_of,
    wait_for,
    write_config,
)


def _exactly_once(orthanc: OrthancServer, folder: Path, spool: Path, *, slices: int) -> None:
    study = study_uid_of(folder)
    found = orthanc_results(orthanc, study)
    finished = [r for r in jobs(spool) if r["state"] == "sent"]
    assert len(finished) == 1 and finished[0]["series_instances"] == slices
    key_images = len(list((spool / "results" / str(finished[0]["id"])).glob("sc-*.dcm")))
    assert {k: len(v) for k, v in found.items()} == {"SR": 1, "OT": key_images}, found
    assert 1 <= key_images <= 4
    audit = spool / "audit.jsonl"  # the worker appends the record just after it marks the job sent
    wait_for(lambda: audit.is_file() and audit.read_text().strip(), timeout=30, what="the audit record")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["study_uid"] for r in records] == [study]
    sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(instance_bytes(orthanc, found["SR"][0])))
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert len(evidence) == slices  # scored with every acknowledged instance


def test_destination_down_then_up_delivers_exactly_once(
    tmp_path: Path, write_series: Callable[..., Path], chest_volume: Volume, capsys: pytest.CaptureFixture[str]
) -> None:
    spool, pacs_port = tmp_path / "spool", free_port()
    values = settings(spool, None, destination=[f"ORTHANC@127.0.0.1:{pacs_port}"])  # nothing listens there yet
    medai = start_medai(write_config(tmp_path / "pacs.toml", values), tmp_path / "medai.log", port=values["port"])
    orthanc = None
    try:
        folder = write_series(chest_volume)
        assert storescu(values["port"], folder).returncode == 0
        wait_for(
            lambda: ":2" in ((jobs(spool) or [{}])[0].get("deliveries") or ""), what="two failed delivery attempts"
        )
        assert main(["pacs", "status", "--spool", str(spool)]) == 0
        assert "sending" in capsys.readouterr().out
        orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=pacs_port)
        wait_for(lambda: all_finished(spool, 1), what="delivery once the destination is up")
        _exactly_once(orthanc, folder, spool, slices=chest_volume.shape[0])
        assert medai.terminate() == 0
        assert "retry in" in medai.output()
    finally:
        medai.kill()
        if orthanc is not None:
            orthanc.stop()


def test_sigkill_during_receive_then_restart(
    tmp_path: Path, orthanc: OrthancServer, write_series: Callable[..., Path], long_volume: Volume
) -> None:
    spool = tmp_path / "spool"
    values = settings(spool, orthanc, idle_seconds=3.0)
    config = write_config(tmp_path / "pacs.toml", values)
    medai = start_medai(config, tmp_path / "medai.log", port=values["port"])
    folder = write_series(long_volume)
    sender = subprocess.Popen(
        [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "MEDAI", "+sd", "127.0.0.1", str(values["port"]), str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: jobs(spool) and jobs(spool)[0]["received"] >= 20, every=0.01, what="20 instances")
        medai.kill()
        assert sender.wait(timeout=60) != 0  # the modality saw the association break
        acknowledged = jobs(spool)[0]["received"]
        assert 20 <= acknowledged < long_volume.shape[0]
        medai = start_medai(config, tmp_path / "medai.log", port=values["port"])
        assert storescu(values["port"], folder).returncode == 0  # the modality sends the series again
        wait_for(lambda: all_finished(spool, 1), timeout=90, what="the resent series to be delivered")
        _exactly_once(orthanc, folder, spool, slices=long_volume.shape[0])
    finally:
        sender.kill()
        medai.kill()


@pytest.mark.parametrize("point", ["scoring", "sent-unrecorded"])
def test_sigkill_during_scoring_or_sending_then_restart(
    point: str, tmp_path: Path, orthanc: OrthancServer, write_series: Callable[..., Path], chest_volume: Volume
) -> None:
    spool = tmp_path / "spool"
    values = settings(spool, orthanc)
    config = write_config(tmp_path / "pacs.toml", values)
    medai = start_medai(config, tmp_path / "medai.log", port=values["port"], env={FAILPOINT_ENV: point})
    try:
        folder = write_series(chest_volume)
        assert storescu(values["port"], folder).returncode == 0  # acknowledged
        assert medai.process.wait(timeout=90) == -signal.SIGKILL
        assert jobs(spool)[0]["state"] == ("scoring" if point == "scoring" else "sending")
        if point == "sent-unrecorded":
            assert len(orthanc_results(orthanc, study_uid_of(folder))["SR"]) == 1  # it did reach the PACS
        environment = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
        medai = start_medai(config, tmp_path / "medai.log", port=values["port"], env=environment)
        wait_for(lambda: all_finished(spool, 1), what="the interrupted job to finish after the restart")
        _exactly_once(orthanc, folder, spool, slices=chest_volume.shape[0])
        assert jobs(spool)[0]["attempts"] == (2 if point == "scoring" else 1)
        assert "recovered after an interruption" in medai.output()
    finally:
        medai.kill()


def test_eight_concurrent_associations_of_100_slices(
    pacs_service: Callable[..., PacsService],
    orthanc: OrthancServer,
    write_series: Callable[..., Path],
    long_volume: Volume,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    service = pacs_service(settings(spool, orthanc, max_associations=8, idle_seconds=2.0))
    folders = [write_series(long_volume, f"s{k}") for k in range(8)]
    results: dict[int, int] = {}

    def send(k: int) -> None:
        results[k] = storescu(service.config.port, folders[k]).returncode

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(range(8), 0)
    rows = wait_for(lambda: all_finished(spool, 8), timeout=240, what="8 series scored and delivered")
    assert sorted(r["state"] for r in rows) == ["sent"] * 8
    assert sorted(r["received"] for r in rows) == [long_volume.shape[0]] * 8
    for folder in folders:
        found = orthanc_results(orthanc, study_uid_of(folder))
        assert len(found["SR"]) == 1 and 1 <= len(found["OT"]) <= 4
    assert service.listener.stats == {"stored": 800, "duplicates": 0, "refused": 0, "rejected_associations": 0}
