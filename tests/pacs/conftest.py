"""Fixtures of the PACS hook's tests: CT series on disk, medai in-process or as a real subprocess, dcmtk.

Everything talks to 127.0.0.1 on free ports. dcmtk's tools are taken from the system (``/usr/bin``), never the
same-named pynetdicom scripts in the virtual environment.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from medai.inference.classifier import Classifier
from medai.pacs.config import build_config
from medai.pacs.queue import JobQueue
from medai.pacs.service import PacsService
from medai.phantoms import synthetic
from medai.phantoms.ctwriter import write_ct_series
from medai.volume import Volume
from tests.conftest import OrthancServer, free_port

REPO = Path(__file__).resolve().parents[2]
#: Identities written into the test series; no log or result pixel may contain them.
PATIENT_NAME = "Testpatient^Hildegard"
PATIENT_ID = "MRN-90412-TEST"


def dcmtk(tool: str) -> str:
    """The system's dcmtk/dicom3tools executable ``tool`` (installed by ``make system``)."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        if Path(folder, tool).is_file():
            return str(Path(folder, tool))
    pytest.fail(f"{tool} is not installed: `make test` installs the Debian packages dcmtk and dicom3tools")


#: storescu's option proposing each transfer syntax first (medai's writer names).
PROPOSE = {
    "implicit": "-xi",
    "explicit": "-xe",
    "deflated": "-xd",
    "rle": "-xr",
    "jpegls": "-xt",
    "jpeg2000": "-xv",
    "jpeg-lossless": "-xs",
    "big-endian": "-xb",
}


def storescu(
    port: int,
    *paths: Path,
    calling: str = "MODALITY",
    called: str = "MEDAI",
    syntax: str = "explicit",
    timeout: float = 120,
) -> Any:
    """dcmtk storescu sending files or folders (``+sd``) to medai, proposing ``syntax`` first (the files' own,
    so they go unconverted); returns the CompletedProcess."""
    args = [dcmtk("storescu"), "-aet", calling, "-aec", called, "-to", "30", PROPOSE[syntax], "+sd", "+r"]
    return subprocess.run(
        [*args, "127.0.0.1", str(port), *map(str, paths)], capture_output=True, text=True, timeout=timeout
    )


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60.0, every: float = 0.1, what: str = "") -> Any:
    """Poll until ``predicate()`` is truthy; returns its value or fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


@pytest.fixture(scope="session")
def chest_volume() -> Volume:
    """A covid19 phantom, 40 slices of 112x112 at 8 mm (a few hundred KB as DICOM)."""
    acq = synthetic.Acquisition(matrix=112, pixel_spacing_mm=3.2, slice_thickness_mm=8.0, n_slices=40)
    return synthetic.generate(synthetic.PhantomSpec("covid19", 0.4, 11, acq), fast=True).volume


@pytest.fixture(scope="session")
def long_volume() -> Volume:
    """A normal phantom of 100 slices of 64x64 at 3 mm, for the load and receive drills."""
    acq = synthetic.Acquisition(matrix=64, pixel_spacing_mm=6.0, slice_thickness_mm=3.0, n_slices=100)
    return synthetic.generate(synthetic.PhantomSpec("normal", 0.0, 12, acq), fast=True).volume


@pytest.fixture
def write_series(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``write_series(volume, name, **writer_options)`` -> folder of a new CT series (fresh UIDs) in
    a new study, carrying the test patient identity."""

    def write(volume: Volume, name: str = "series", **options: Any) -> Path:
        folder = tmp_path / "sent" / name
        attributes = {
            "PatientName": PATIENT_NAME,
            "PatientID": PATIENT_ID,
            "StudyInstanceUID": pydicom.uid.generate_uid(),
            "SeriesInstanceUID": pydicom.uid.generate_uid(),
            **options.pop("attributes", {}),
        }
        write_ct_series(volume, folder, attributes=attributes, **options)
        return folder

    return write


def first_slices(volume: Volume, n: int) -> Volume:
    """The first ``n`` slices of a volume, same geometry."""
    return dataclasses.replace(volume, hu=volume.hu[:n])


def study_uid_of(folder: Path) -> str:
    first = next(iter(sorted(folder.glob("*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def settings(spool: Path, orthanc: OrthancServer | None, **overrides: Any) -> dict[str, Any]:
    """Service settings for a test: loopback, a free port, MODALITY and ORTHANC allowed, Orthanc as destination."""
    values: dict[str, Any] = {
        "port": free_port(),
        "allow_ae": "MODALITY,ORTHANC",
        "spool": str(spool),
        "idle_seconds": 1.0,
        "retry_base_s": 0.3,
        "retry_max_s": 1.0,
        "min_free_mb": 1.0,
    }
    if orthanc is not None:
        values["destination"] = [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"]
    values.update(overrides)
    return values


@pytest.fixture
def pacs_service(shipped_classifier: Classifier) -> Iterator[Callable[..., PacsService]]:
    """Factory: ``pacs_service(settings)`` -> a started in-process service (the session's classifier), stopped
    after the test."""
    started: list[PacsService] = []

    def start(values: dict[str, Any]) -> PacsService:
        service = PacsService(build_config(values), classifier=shipped_classifier)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def jobs(spool: Path) -> list[dict[str, Any]]:
    """The queue's jobs (read-only, works while a service runs or after it died)."""
    if not (spool / "queue.sqlite3").is_file():
        return []
    queue = JobQueue(spool / "queue.sqlite3", read_only=True)
    try:
        return queue.jobs_overview()
    finally:
        queue.close()


def all_finished(spool: Path, n: int) -> list[dict[str, Any]] | None:
    rows = jobs(spool)
    done = [r for r in rows if r["state"] in ("sent", "failed")]
    return rows if len(done) >= n and len(done) == len(rows) else None


@dataclass
class MedaiProcess:
    """``medai pacs serve`` as a real subprocess (``python -m medai.cli``)."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_medai(config: Path, log: Path, *, port: int, env: dict[str, str] | None = None) -> MedaiProcess:
    """Start ``medai pacs serve --config CONFIG`` and wait until it listens (its start-up line)."""
    handle = log.open("ab")
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "medai.cli", "pacs", "serve", "--config", str(config)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=environment,
    )
    started = MedaiProcess(process, log, port)
    mark = log.stat().st_size if log.exists() else 0

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"medai pacs serve exited with {process.returncode}: {started.output()[-3000:]}")
        return "medai pacs: listening" in log.read_text(errors="replace")[mark:]

    wait_for(ready, timeout=90, what="medai pacs serve to listen")
    return started


def write_config(path: Path, values: dict[str, Any]) -> Path:
    """A TOML config file from flat settings (``destination`` as a list of AE@HOST:PORT strings)."""

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    path.write_text("".join(f"{key} = {literal(value)}\n" for key, value in values.items()))
    return path


def orthanc_results(orthanc: OrthancServer, study_uid: str) -> dict[str, list[str]]:
    """Orthanc's instance ids per modality in the study ``study_uid`` (empty when the study is absent)."""
    found = orthanc.rest("POST", "/tools/lookup", study_uid.encode())
    studies = [f["ID"] for f in found if f["Type"] == "Study"]
    out: dict[str, list[str]] = {}
    for study in studies:
        for series in orthanc.rest("GET", f"/studies/{study}/series"):
            out.setdefault(series["MainDicomTags"]["Modality"], []).extend(series["Instances"])
    return out


def instance_bytes(orthanc: OrthancServer, instance: str) -> bytes:
    return bytes(orthanc.rest("GET", f"/instances/{instance}/file", raw=True))
