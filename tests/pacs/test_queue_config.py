"""The durable queue's guarantees (exactly one completion, recovery, one audit record per job) and the settings."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from medai.errors import ConfigError
from medai.pacs.audit import AuditLog
from medai.pacs.config import AllowedPeer, Destination, build_config, load_config_file
from medai.pacs.queue import JobOutcome, JobQueue, JobState, OutputRecord
from medai.pacs.spool import Spool
from medai.report.audit import verify_audit_log


def _record(queue: JobQueue, sop: str, *, series: str = "1.2.3", now: float = 100.0) -> bool:
    return queue.record_instance(
        series_uid=series,
        study_uid="1.2",
        sop_uid=sop,
        path=Path(f"/x/{sop}.dcm"),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        size_bytes=10,
        calling_ae="CT",
        now=now,
    )


def _output() -> list[OutputRecord]:
    return [OutputRecord("sr", "1.2.840.10008.5.1.4.1.1.88.34", "1.9.1", "/x/sr.dcm")]


def test_instances_group_into_one_job_and_duplicates_change_nothing(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite3")
    assert _record(queue, "1.2.3.1") and _record(queue, "1.2.3.2", now=101.0)
    assert not _record(queue, "1.2.3.1", now=102.0)  # a resend
    assert queue.claim_ready(5.0, now=104.0) is None  # idle only 2 s: the duplicate kept the series open
    job = queue.claim_ready(5.0, now=107.5)
    assert job is not None and job.state is JobState.SCORING and job.attempts == 1
    assert queue.claim_ready(5.0, now=200.0) is None
    assert [p.name for p in queue.series_files("1.2.3")] == ["1.2.3.1.dcm", "1.2.3.2.dcm"]
    assert not _record(queue, "1.2.3.2", now=300.0)  # a resend after scoring started: no new job
    assert _record(queue, "1.2.3.3", now=300.0)  # a late new instance: the next generation of the series
    assert [r["state"] for r in queue.jobs_overview()] == ["receiving", "scoring"]


def test_a_job_completes_once_even_when_threads_race(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite3")
    _record(queue, "1.2.3.1")
    job = queue.claim_ready(0.0, now=200.0)
    assert job is not None
    common = {"outcome": JobOutcome.SCORED, "outputs": _output(), "model_id": "m", "model_sha256": "s"}
    assert queue.finish_scoring(job.id, destinations=["A", "B"], **common)
    assert not queue.finish_scoring(job.id, destinations=["A", "B"], **common)  # already left scoring
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(queue.record_attempt(job.id, "A", delivered=True)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 8  # B still pending
    assert queue.record_attempt(job.id, "B", delivered=False, error="down", retry_at=0.0) is None
    assert queue.record_attempt(job.id, "B", delivered=True) is JobState.SENT
    assert queue.record_attempt(job.id, "B", delivered=True) is None
    audit = AuditLog(tmp_path / "audit.jsonl")
    assert audit.sync(queue) == 1 and audit.sync(queue) == 0
    record = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])
    assert record["state"] == "sent" and record["model_sha256"] == "s" and record["outputs"][0]["sop_uid"] == "1.9.1"
    assert {d["destination"]: d["attempts"] for d in record["destinations"]} == {"A": 1, "B": 2}


def test_recover_rescores_interrupted_jobs_and_the_audit_log_heals_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    queue = JobQueue(path)
    _record(queue, "1.2.3.1")
    assert queue.claim_ready(0.0, now=200.0) is not None
    queue.close()  # "crash" while scoring
    queue = JobQueue(path)
    assert queue.recover(now=300.0) == {"rescore": 1, "resend": 0}
    job = queue.claim_ready(5.0, now=300.0)  # complete already: no new idle wait
    assert job is not None and job.attempts == 2
    assert queue.fail_job(job.id, reason="x", message="y")
    log = tmp_path / "audit.jsonl"
    AuditLog(log).sync(queue)
    log.write_text(log.read_text() + '{"seq": 2, "tor')  # a crash mid-line
    assert not verify_audit_log(log).ok
    assert AuditLog(log).sync(queue) == 0
    job = _record(queue, "1.2.3.2") and queue.claim_ready(0.0, now=400.0)
    assert job and queue.fail_job(job.id, reason="x", message="y")
    assert AuditLog(log).sync(queue) == 1  # the next record cuts the torn line and goes on with the chain
    assert [json.loads(line)["queue_seq"] for line in log.read_text().splitlines()] == [1, 2]
    assert verify_audit_log(log).ok


def test_spool_refuses_names_that_are_not_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.write_instance("1.2.3", "1.2.3.4", b"DICM")
    assert path.read_bytes() == b"DICM" and not list(spool.tmp.iterdir())
    with pytest.raises(ValueError, match="must be DICOM UIDs"):
        spool.write_instance("../../etc", "1.2", b"x")


def test_config_from_file_with_flags_over_it(tmp_path: Path) -> None:
    path = tmp_path / "pacs.toml"
    path.write_text(
        'ae_title = "MEDAI"\nallow_ae = ["CT01", "ORTHANC@10.0.0.5"]\nidle_seconds = 5\nseg = true\n'
        '[[destination]]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
        '[[stow]]\nurl = "https://pacs.example.org/dicom-web"\n'
    )
    config = build_config(load_config_file(path), {"port": 11113, "idle_seconds": 2.5, "seg": None})
    assert config.port == 11113 and config.idle_seconds == 2.5 and config.seg is True
    assert config.host == "127.0.0.1"  # loopback unless told otherwise
    assert config.destinations == (Destination("PACS", "10.0.0.5", 104),)
    assert config.allow_ae[1] == AllowedPeer("ORTHANC", "10.0.0.5")
    assert config.allow_ae[1].admits("ORTHANC", "10.0.0.5") and not config.allow_ae[1].admits("ORTHANC", "10.0.0.6")
    assert config.stow[0].name == "stow:https://pacs.example.org/dicom-web"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"destination": ["PACS@h:104"]}, "allow_ae must list"),
        ({"allow_ae": "CT"}, "at least one"),
        ({"allow_ae": "CT", "destination": ["PACS@h"]}, "AE@HOST:PORT, not 'PACS@h'"),
        (
            {"allow_ae": "CT", "destination": ["PACS@h:104"], "port": 70000},
            "port must be a TCP port 1-65535, not 70000",
        ),
        ({"allow_ae": "A_TITLE_THAT_IS_TOO_LONG", "destination": ["P@h:1"]}, "allow_ae must be an AE title"),
        ({"allow_ae": "CT", "destination": ["P@h:1"], "idle_seconds": -1.0}, "idle_seconds must be a number >= 0"),
        ({"allow_ae": "CT", "destination": ["P@h:1"], "colour": 1}, "not \\['colour'\\]"),
    ],
)
def test_config_errors_say_what_is_wrong(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(values)


def test_cli_refuses_a_bad_config_with_one_line_and_status_needs_a_spool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medai.cli import main

    assert main(["pacs", "serve", "--port", "11112", "--destination", "PACS@127.0.0.1:104"]) == 1
    assert "allow_ae must list the calling AE titles" in capsys.readouterr().err
    assert main(["pacs", "serve", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "config must be an existing TOML file" in capsys.readouterr().err
    assert main(["pacs", "status", "--spool", str(tmp_path)]) == 1
    assert "spool must be the folder of a medai pacs service" in capsys.readouterr().err


def test_a_series_with_a_refused_instance_is_held_until_its_sender_retries(tmp_path: Path) -> None:
    """The disk-full drill found it: half a series acknowledged, the rest refused (0xA700), and the half was
    scored and sent on its own after the idle time, then the whole series again when the rest came."""
    queue = JobQueue(tmp_path / "q.sqlite3")
    _record(queue, "1.2.3.1", now=100.0)
    assert queue.hold_series("1.2.3", until=100.0 + 120.0)
    assert queue.claim_ready(5.0, now=110.0) is None  # idle long enough, but an instance was refused: held
    _record(queue, "1.2.3.2", now=130.0)  # the sender retries: the hold ends, the idle time counts from here
    assert queue.claim_ready(5.0, now=134.0) is None
    job = queue.claim_ready(5.0, now=136.0)
    assert job is not None and len(queue.series_files("1.2.3")) == 2
    assert not queue.hold_series("1.2.3", until=999.0)  # nothing receiving any more


def test_a_series_an_open_association_is_sending_waits_for_its_sender(tmp_path: Path) -> None:
    """The load drill found it on a starved machine: a modality lost a C-STORE response, waited it out with its
    association open for 30 s, and resent; after the idle time the part already received was scored and sent
    on its own, then the whole series again."""
    queue = JobQueue(tmp_path / "q.sqlite3")
    _record(queue, "1.2.3.1", now=100.0)
    _record(queue, "9.9.9.1", series="9.9.9", now=100.0)
    held = {"held": {"1.2.3"}, "held_seconds": 60.0}
    assert queue.next_ready_at(5.0, **held) == 105.0  # the other series is not held
    job = queue.claim_ready(5.0, now=110.0, **held)
    assert job is not None and job.series_uid == "9.9.9"
    assert queue.claim_ready(5.0, now=130.0, **held) is None  # idle 30 s, but its association is still open
    assert queue.next_ready_at(5.0, **held) == 160.0
    assert queue.hold_series("1.2.3", until=131.0)  # the association ends: the idle time counts from here
    assert queue.claim_ready(5.0, now=135.0) is None
    _record(queue, "1.2.3.2", now=135.5)  # the sender's new association: the rest of the series
    job = queue.claim_ready(5.0, now=141.0)
    assert job is not None and len(queue.series_files("1.2.3")) == 2
    _record(queue, "7.7.7.1", series="7.7.7", now=200.0)
    job = queue.claim_ready(5.0, now=260.5, held={"7.7.7"}, held_seconds=60.0)  # a sender silent this long
    assert job is not None and job.series_uid == "7.7.7"  # is dropped by the network timeout anyway
