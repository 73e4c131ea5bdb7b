"""Failure drills with their figures: run them, then write docs/reliability.md from what they measured.

Each drill runs medai for real on loopback (``medai pacs serve`` or ``medai score`` as a subprocess, a real
Orthanc as the PACS, a pynetdicom modality that counts every C-STORE it sends and every Success it gets back)
and counts, in instances (series for batch): **sent** (C-STOREs the modality made, resends included),
**acknowledged** (distinct instances medai answered Success), **scored** (acknowledged instances that the
scored job's SR lists as its evidence), **delivered** (acknowledged instances covered by an SR stored in the
PACS), **lost** (acknowledged but not delivered: must be 0) and **duplicated** (result sets beyond one per
series in the PACS or the queue, rows beyond one per series for batch: must be 0).

PACS drills: SIGKILL during receive, during scoring and during sending (the failpoints of
:mod:`medai.pacs.failpoint`, as ``tests/pacs/test_drills.py`` uses them), a destination that refuses the
association and one that is down, the disk nearly full (a ballast file takes the spool's disk under the
watermark mid-series), and 16 concurrent associations with 1,000 instances in total. Batch: ``medai score``
SIGKILLed mid-run, then the same command again. The machinery (Orthanc, medai as a subprocess, the queue
readers) is the PACS tests' own (``tests/conftest.py``, ``tests/pacs/conftest.py``).

    python scripts/drills.py --out docs/reliability.md          # make drills: the full drills
    python scripts/drills.py --short --out /tmp/reliability.md  # the short version make test runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]  # noqa: E402

from medai.pacs.failpoint import FAILPOINT_ENV  # noqa: E402
from medai.phantoms import synthetic  # noqa: E402
from medai.phantoms.ctwriter import write_ct_series  # noqa: E402
from medai.report.audit import verify_audit_log  # noqa: E402
from medai.volume import Volume  # noqa: E402
from tests.conftest import OrthancServer, free_port, start_orthanc  # noqa: E402
from tests.pacs.conftest import (  # noqa: E402
    MedaiProcess,
    jobs,
    orthanc_results,
    settings,
    start_medai,
    wait_for,
    write_config,
)


@dataclass
class Drill:
    """One drill's figures (instances for PACS drills, series for batch)."""

    name: str
    what: str
    unit: str = "instances"
    series: int = 0
    sent: int = 0
    acknowledged: int = 0
    scored: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.delivered == self.acknowledged > 0


@dataclass(frozen=True)
class Scale:
    """Sizes of one run: the short version in make test, the full one in make drills."""

    slices: int  # per series in the single-series drills
    concurrent: int  # associations in the load drill
    load_instances: int  # instances in total over them
    batch_studies: int


SHORT = Scale(slices=24, concurrent=16, load_instances=320, batch_studies=4)
FULL = Scale(slices=100, concurrent=16, load_instances=1000, batch_studies=12)


# ---------------------------------------------------------------- the modality


class Modality:
    """A pynetdicom modality: sends files to medai, counts C-STOREs and Successes, resends what was not
    acknowledged (as a store-and-forward modality does)."""

    def __init__(self, port: int, *, calling: str = "MODALITY") -> None:
        self.port = port
        self.calling = calling
        self.sent = 0
        self.acknowledged: set[str] = set()
        self._lock = threading.Lock()

    def send(
        self,
        files: Sequence[Path],
        *,
        on_ack: Callable[[int], None] | None = None,
        stall_after: int | None = None,
        stall_s: float = 0.0,
    ) -> bool:
        """One association sending every file not yet acknowledged; False when it could not finish. With
        ``stall_after``, it stops once that many are acknowledged, keeps the association open for ``stall_s``
        (a response it waits out) and aborts it."""
        ae = AE(ae_title=self.calling)
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate("127.0.0.1", self.port, ae_title="MEDAI")
        if not assoc.is_established:
            return False
        try:
            for path in files:
                ds = pydicom.dcmread(path)
                uid = str(ds.SOPInstanceUID)
                if uid in self.acknowledged:
                    continue
                with self._lock:
                    self.sent += 1
                try:
                    status = assoc.send_c_store(ds)
                except (RuntimeError, OSError):
                    return False
                if not status or "Status" not in status:
                    return False  # the association broke (medai killed)
                if int(status.Status) == 0:
                    with self._lock:
                        self.acknowledged.add(uid)
                    if on_ack is not None:
                        on_ack(len(self.acknowledged))
                if stall_after is not None and len(self.acknowledged) >= stall_after:
                    time.sleep(stall_s)
                    assoc.abort()
                    return False
            return all(
                str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) in self.acknowledged for p in files
            )
        finally:
            if assoc.is_established:
                assoc.release()

    def send_until_acknowledged(self, files: Sequence[Path], *, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.send(files):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the modality could not deliver its series within {timeout_s:.0f} s")
            time.sleep(0.5)


# ---------------------------------------------------------------- helpers


def _volume(slices: int, seed: int) -> Volume:
    acq = synthetic.Acquisition(matrix=64, pixel_spacing_mm=6.0, slice_thickness_mm=6.0, n_slices=slices)
    return synthetic.generate(synthetic.PhantomSpec("covid19", 0.3, seed, acq), fast=True).volume


def _series(volume: Volume, folder: Path) -> list[Path]:
    attributes = {
        "PatientName": "Drill^Patient",
        "PatientID": "DRILL-1",
        "StudyInstanceUID": pydicom.uid.generate_uid(),
        "SeriesInstanceUID": pydicom.uid.generate_uid(),
    }
    return write_ct_series(volume, folder, attributes=attributes)


def _deliveries(spool: Path) -> str:
    rows = jobs(spool)
    return str(rows[0]["deliveries"] or "") if rows else ""


def _deliver_once_fixed(drill: Drill, spool: Path, fix: Callable[[], None]) -> None:
    """Wait for two failed delivery tries, let 6 s pass, ``fix`` the destination, wait for the delivery."""
    wait_for(lambda: re.search(r"=pending:[2-9]", _deliveries(spool)), timeout=120, what="two failed tries")
    time.sleep(6)
    fix()
    wait_for(lambda: _finished(spool, 1), timeout=120, what="the delivery once the destination is fixed")
    drill.notes.append(f"deliveries: {_deliveries(spool)}")


def _finished(spool: Path, n: int) -> bool:
    rows = jobs(spool)
    return len(rows) >= n and all(r["state"] in ("sent", "failed") for r in rows)


def _audit_note(check: Any) -> str:
    state = "intact" if check.ok else f"BROKEN: {check.problem}"
    return f"audit trail {state}: {check.records} record{'s' if check.records != 1 else ''}"


def _sr_evidence(dataset: pydicom.Dataset) -> set[str]:
    return {
        str(ref.ReferencedSOPInstanceUID)
        for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for ref in series.get("ReferencedSOPSequence", [])
    }


def _count_pacs(drill: Drill, modality: Modality, orthanc: OrthancServer, spool: Path, studies: list[str]) -> None:
    """Fill the figures from the modality's counts, the spool's queue and results, and the PACS."""
    drill.series = len(studies)
    drill.sent, drill.acknowledged = modality.sent, len(modality.acknowledged)
    scored: set[str] = set()
    for row in jobs(spool):
        if row["outcome"] == "scored":
            for path in (spool / "results" / str(row["id"])).glob("sr-*.dcm"):
                scored |= _sr_evidence(pydicom.dcmread(path))
    delivered: set[str] = set()
    duplicated = 0
    finished: dict[str, int] = {}
    for row in jobs(spool):
        if row["state"] == "sent":
            finished[row["series_uid"]] = finished.get(row["series_uid"], 0) + 1
    duplicated += sum(n - 1 for n in finished.values())
    for study in studies:
        found = orthanc_results(orthanc, study)
        srs = found.get("SR", [])
        duplicated += max(0, len(srs) - 1)
        for instance in srs:
            data = orthanc.rest("GET", f"/instances/{instance}/file", raw=True)
            delivered |= _sr_evidence(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)))
    drill.scored = len(modality.acknowledged & scored)
    drill.delivered = len(modality.acknowledged & delivered)
    drill.lost = len(modality.acknowledged - delivered)
    drill.duplicated = duplicated
    audit = spool / "audit.jsonl"
    if audit.exists():
        check = verify_audit_log(audit)
        drill.notes.append(_audit_note(check))


@contextlib.contextmanager
def _pacs(
    work: Path, orthanc: OrthancServer | None, *, env: dict[str, str] | None = None, **overrides: Any
) -> Iterator[tuple[MedaiProcess, Path, Path, dict[str, Any]]]:
    spool = work / "spool"
    values = settings(spool, orthanc, **{"idle_seconds": 1.5, **overrides})
    config = write_config(work / "pacs.toml", values)
    environment = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    medai = start_medai(config, work / "medai.log", port=values["port"], env={**environment, **(env or {})})
    try:
        yield medai, spool, config, values
    finally:
        medai.kill()


def _restart(config: Path, work: Path, port: int) -> MedaiProcess:
    environment = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    return start_medai(config, work / "medai.log", port=port, env=environment)


# ---------------------------------------------------------------- the PACS drills


def drill_kill_during_receive(work: Path, scale: Scale) -> Drill:
    drill = Drill(
        "kill -9 while receiving",
        "medai SIGKILLed after 40 % of a series was acknowledged; restarted; the "
        "modality resends what was not acknowledged",
    )
    orthanc = start_orthanc(work / "orthanc")
    files = _series(_volume(scale.slices, 1), work / "series")
    try:
        with _pacs(work, orthanc, idle_seconds=3.0) as (medai, spool, config, values):
            modality = Modality(values["port"])
            cut = int(0.4 * len(files))
            killed = threading.Event()

            def kill_at(acked: int) -> None:
                if acked >= cut and not killed.is_set():
                    killed.set()
                    medai.kill()

            modality.send(files, on_ack=kill_at)
            drill.notes.append(f"{len(modality.acknowledged)} of {len(files)} acknowledged before the kill")
            medai = _restart(config, work, values["port"])
            try:
                modality.send_until_acknowledged(files)
                wait_for(
                    lambda: _finished(spool, 1) and jobs(spool)[0]["state"] == "sent", timeout=180, what="delivery"
                )
            finally:
                medai.kill()
            _count_pacs(drill, modality, orthanc, spool, [_study(files)])
    finally:
        orthanc.stop()
    return drill


def _study(files: Sequence[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _drill_failpoint(work: Path, scale: Scale, point: str, name: str, what: str) -> Drill:
    drill = Drill(name, what)
    orthanc = start_orthanc(work / "orthanc")
    files = _series(_volume(scale.slices, 2), work / "series")
    try:
        with _pacs(work, orthanc, env={FAILPOINT_ENV: point}) as (medai, spool, config, values):
            modality = Modality(values["port"])
            modality.send_until_acknowledged(files)
            code = medai.process.wait(timeout=180)
            drill.notes.append(f"medai exited with signal {-code} at the '{point}' failpoint")
            medai = _restart(config, work, values["port"])
            try:
                wait_for(lambda: _finished(spool, 1), timeout=180, what="the interrupted job to finish")
            finally:
                medai.kill()
            _count_pacs(drill, modality, orthanc, spool, [_study(files)])
    finally:
        orthanc.stop()
    return drill


def drill_kill_during_scoring(work: Path, scale: Scale) -> Drill:
    return _drill_failpoint(
        work,
        scale,
        "scoring",
        "kill -9 while scoring",
        "medai SIGKILLed with a series scored but its results not yet recorded; restarted",
    )


def drill_kill_during_sending(work: Path, scale: Scale) -> Drill:
    return _drill_failpoint(
        work,
        scale,
        "sent-unrecorded",
        "kill -9 while sending",
        "medai SIGKILLed after the PACS acknowledged the "
        "results, before the delivery was recorded; restarted (it sends them again: same UIDs)",
    )


def drill_destination_down(work: Path, scale: Scale) -> Drill:
    drill = Drill("destination down", "the PACS is not running when the results are ready; it starts 6 s later")
    pacs_port = free_port()
    files = _series(_volume(scale.slices, 3), work / "series")
    started: list[OrthancServer] = []
    overrides = {"destination": [f"ORTHANC@127.0.0.1:{pacs_port}"], "retry_base_s": 0.5, "retry_max_s": 2.0}
    try:
        with _pacs(work, None, **overrides) as (_, spool, _, values):
            modality = Modality(values["port"])
            modality.send_until_acknowledged(files)
            _deliver_once_fixed(
                drill, spool, lambda: started.append(start_orthanc(work / "orthanc", dicom_port=pacs_port))
            )
            _count_pacs(drill, modality, started[0], spool, [_study(files)])
    finally:
        for orthanc in started:
            orthanc.stop()
    return drill


def drill_destination_refusing(work: Path, scale: Scale) -> Drill:
    drill = Drill(
        "destination refusing",
        "the PACS refuses medai's results (medai is not a declared modality there: Orthanc aborts the association "
        "at the first C-STORE); the administrator declares it 6 s later",
    )
    orthanc = start_orthanc(work / "orthanc", extra_config={"DicomAlwaysAllowStore": False})
    files = _series(_volume(scale.slices, 4), work / "series")
    try:
        with _pacs(work, orthanc, retry_base_s=0.5, retry_max_s=2.0) as (_, spool, _, values):
            modality = Modality(values["port"])
            modality.send_until_acknowledged(files)
            _deliver_once_fixed(drill, spool, lambda: orthanc.add_modality("medai", "MEDAI", values["port"]))
            _count_pacs(drill, modality, orthanc, spool, [_study(files)])
    finally:
        orthanc.stop()
    return drill


def drill_stalled_sender(work: Path, scale: Scale) -> Drill:
    drill = Drill(
        "sender stalled mid-series",
        "after 40 % of a series the modality stops with its association open for four idle times (as when it waits "
        "out a lost response), aborts, and sends the rest on a new association",
    )
    orthanc = start_orthanc(work / "orthanc")
    files = _series(_volume(scale.slices, 9), work / "series")
    try:
        with _pacs(work, orthanc) as (_, spool, _, values):
            modality = Modality(values["port"])
            cut = int(0.4 * len(files))
            modality.send(files, stall_after=cut, stall_s=4 * values["idle_seconds"])
            held = [r["state"] for r in jobs(spool)]
            modality.send_until_acknowledged(files)
            wait_for(lambda: _finished(spool, 1), timeout=300, what="the series to be scored and delivered")
            drill.notes.append(f"{cut} instances acknowledged before the stall; their job after it: {', '.join(held)}")
            _count_pacs(drill, modality, orthanc, spool, [_study(files)])
    finally:
        orthanc.stop()
    return drill


def drill_disk_nearly_full(work: Path, scale: Scale) -> Drill:
    drill = Drill(
        "disk nearly full",
        "mid-series a ballast file takes the spool's disk under the free-space watermark: medai answers Out of "
        "Resources (0xA700) and refuses new associations; the ballast goes, the modality resends",
    )
    orthanc = start_orthanc(work / "orthanc")
    files = _series(_volume(scale.slices, 5), work / "series")
    free_mb = shutil.disk_usage(work).free / 2**20
    ballast = work / "ballast.bin"
    try:
        with _pacs(work, orthanc, min_free_mb=round(free_mb - 256)) as (_, spool, _, values):
            modality = Modality(values["port"])
            cut = len(files) // 2

            def fill_disk(acked: int) -> None:
                if acked == cut and not ballast.exists():
                    with open(ballast, "wb") as handle:
                        os.posix_fallocate(handle.fileno(), 0, 768 * 2**20)

            complete = modality.send(files, on_ack=fill_disk)
            refused = len(files) - len(modality.acknowledged)
            again = modality.send(files)
            drill.notes.append(
                f"{refused} instances refused while the disk was full; a new association "
                f"{'was accepted' if again else 'was refused'} while it still was"
            )
            ballast.unlink()
            modality.send_until_acknowledged(files)
            wait_for(lambda: _finished(spool, 1), timeout=120, what="delivery after the disk was freed")
            if complete:
                drill.notes.append("WARNING: the disk never went under the watermark (free space changed?)")
            _count_pacs(drill, modality, orthanc, spool, [_study(files)])
    finally:
        ballast.unlink(missing_ok=True)
        orthanc.stop()
    return drill


def drill_concurrent_load(work: Path, scale: Scale) -> Drill:
    n = scale.concurrent
    drill = Drill(
        f"{n} concurrent associations",
        f"{n} modalities send {scale.load_instances} instances in total ({n} series) at the same time",
    )
    orthanc = start_orthanc(work / "orthanc")
    sizes = [scale.load_instances // n + (1 if k < scale.load_instances % n else 0) for k in range(n)]
    volumes = {size: _volume(size, 6 + size) for size in set(sizes)}
    series = [_series(volumes[size], work / f"series-{k}") for k, size in enumerate(sizes)]
    try:
        with _pacs(work, orthanc, max_associations=n, idle_seconds=3.0) as (_, spool, _, values):
            modalities = [Modality(values["port"], calling="MODALITY") for _ in range(n)]
            threads = [
                threading.Thread(target=m.send_until_acknowledged, args=(files,))
                for m, files in zip(modalities, series, strict=True)
            ]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            drill.notes.append(
                f"all {scale.load_instances} instances acknowledged in {time.monotonic() - started:.1f} s"
            )
            wait_for(lambda: _finished(spool, n), timeout=600, what=f"{n} series scored and delivered")
            total = Modality(values["port"])
            for m in modalities:
                total.sent += m.sent
                total.acknowledged |= m.acknowledged
            _count_pacs(drill, total, orthanc, spool, [_study(files) for files in series])
    finally:
        orthanc.stop()
    return drill


# ---------------------------------------------------------------- the batch drill


def drill_batch_kill_and_resume(work: Path, scale: Scale) -> Drill:
    drill = Drill(
        "medai score: kill -9 mid-run, resume",
        f"medai score over {scale.batch_studies} studies SIGKILLed after half of them; the same command again",
        unit="series",
    )
    tree = work / "studies"
    uids = []
    for k in range(scale.batch_studies):
        files = _series(_volume(24, 20 + k), tree / f"study_{k:02d}")
        uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID))
    out, audit = work / "results.csv", work / "audit.jsonl"
    command = [sys.executable, "-m", "medai.cli", "score", str(tree), "--out", str(out), "--workers", "1"]
    command += ["--no-progress", "--audit-log", str(audit)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def rows() -> list[dict[str, str]]:
        from medai.report.results import read_results

        return read_results(out) if out.exists() else []

    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(rows()) >= scale.batch_studies // 2, timeout=600, what="half the rows", every=0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = len(rows())
    drill.notes.append(f"{at_kill} rows on disk when medai score was killed")
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    drill.notes.append(f"the rerun exited with {finished.returncode}")
    final = rows()
    by_series: dict[str, int] = {}
    for row in final:
        by_series[str(row["series_uid"])] = by_series.get(str(row["series_uid"]), 0) + 1
    drill.series = drill.sent = scale.batch_studies
    drill.acknowledged = scale.batch_studies  # every series found is owed a row
    drill.scored = sum(1 for r in final if r["status"] == "ok")
    drill.delivered = sum(1 for uid in uids if by_series.get(uid))
    drill.lost = sum(1 for uid in uids if not by_series.get(uid))
    drill.duplicated = sum(n - 1 for n in by_series.values())
    check = verify_audit_log(audit)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    series_audited = len({r["series_uid"] for r in records})
    again = (
        " (a series scored when the kill came is recorded at each of its scorings)"
        if len(records) > series_audited
        else ""
    )
    drill.notes.append(f"{_audit_note(check)} for {series_audited} series{again}")
    return drill


DRILLS: dict[str, Callable[[Path, Scale], Drill]] = {
    "receive": drill_kill_during_receive,
    "scoring": drill_kill_during_scoring,
    "sending": drill_kill_during_sending,
    "refusing": drill_destination_refusing,
    "down": drill_destination_down,
    "disk": drill_disk_nearly_full,
    "stall": drill_stalled_sender,
    "load": drill_concurrent_load,
    "batch": drill_batch_kill_and_resume,
}


# ---------------------------------------------------------------- the report


def markdown(drills: Sequence[Drill], *, scale_name: str, wall_s: float) -> str:
    """docs/reliability.md: what was run, on what, and the figures."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability: failure drills and their figures",
        "",
        f"Written by `python scripts/drills.py` ({scale_name} drills) on {when}, on {platform.machine()} with "
        f"{os.cpu_count()} cores, in {wall_s:.0f} s. Do not edit by hand: `make drills` runs the full drills and "
        "rewrites this page; `make test` runs the short version and checks the same figures.",
        "",
        "Every drill runs medai for real on loopback: `medai pacs serve` or `medai score` as a subprocess, a real "
        "Orthanc as the PACS and a pynetdicom modality that counts every C-STORE it sends and every Success it gets "
        "back. Figures are instances (series for `medai score`): **sent** C-STOREs made, resends included; "
        "**acknowledged** distinct instances medai answered Success; **scored** acknowledged instances that the "
        "scored job's SR lists as evidence; **delivered** acknowledged instances covered by an SR stored in the PACS; "
        "**lost** acknowledged but not delivered; **duplicated** result sets beyond one per series (in the PACS or "
        "the queue; for batch, rows beyond one per series).",
        "",
        "| drill | series | sent | acknowledged | scored | delivered | lost | duplicated | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in drills:
        lines.append(
            f"| {d.name} | {d.series} | {d.sent} | {d.acknowledged} | {d.scored} | {d.delivered} | **{d.lost}** | "
            f"**{d.duplicated}** | {d.seconds:.0f} |"
        )
    lost, duplicated = sum(d.lost for d in drills), sum(d.duplicated for d in drills)
    verdict = "nothing lost, nothing duplicated" if lost == duplicated == 0 else f"{lost} LOST, {duplicated} DUPLICATED"
    lines += ["", f"**Result: {verdict}** over {len(drills)} drills.", "", "## The drills", ""]
    for d in drills:
        lines.append(f"- **{d.name}** ({d.unit}): {d.what}. " + "; ".join(d.notes) + ("." if d.notes else ""))
    lines += [
        "",
        "Sent exceeds acknowledged where the modality resent after a failure (medai stores a resent instance once). "
        "The PACS drills with a kill use the failpoints of `medai/pacs/failpoint.py` (`MEDAI_PACS_FAILPOINT`), "
        "which SIGKILL the service at the exact step; `tests/pacs/test_drills.py` runs the same kills as tests.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the failure drills and write docs/reliability.md")
    parser.add_argument("--short", action="store_true", help="the short version (make test)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"), help="the page to write")
    parser.add_argument("--json", help="also write the figures as JSON here")
    parser.add_argument("--only", nargs="*", choices=sorted(DRILLS), help="run only these drills")
    args = parser.parse_args(argv)
    scale = SHORT if args.short else FULL
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="medai-drills-") as tmp:
        for key, run in DRILLS.items():
            if args.only and key not in args.only:
                continue
            work = Path(tmp) / key
            work.mkdir()
            t0 = time.monotonic()
            drill = run(work, scale)
            drill.seconds = time.monotonic() - t0
            print(
                f"{drill.name}: sent {drill.sent}, acknowledged {drill.acknowledged}, scored {drill.scored}, "
                f"delivered {drill.delivered}, lost {drill.lost}, duplicated {drill.duplicated} "
                f"({drill.seconds:.0f} s)",
                flush=True,
            )
            results.append(drill)
    text = markdown(results, scale_name="short" if args.short else "full", wall_s=time.monotonic() - started)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(d) | {"passed": d.passed} for d in results], indent=2))
    return 0 if all(d.passed for d in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
