"""Fixtures every test folder shares: the shipped classifier and small, fast phantoms.

Phantoms are built in memory (or into ``tmp_path``) from seeds: nothing generated is committed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from medai.inference.classifier import Classifier
from medai.phantoms import synthetic

#: A coarse, quick acquisition (112x112 at 3.2 mm, 8 mm slices): a phantom in well under a second.
SMALL_ACQUISITION = synthetic.Acquisition(matrix=112, pixel_spacing_mm=3.2, slice_thickness_mm=8.0, n_slices=30)


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` as a module (scripts are not a package), registered in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shipped_classifier() -> Classifier:
    """The shipped model (``models/medai-ref.onnx``), loaded once for the whole run."""
    return Classifier.load()


@pytest.fixture(scope="session")
def small_phantom() -> Callable[..., synthetic.Phantom]:
    """Factory: ``small_phantom(label, severity, seed, slices=30)`` -> a phantom on :data:`SMALL_ACQUISITION`."""

    def make(label: str, severity: float, seed: int, *, slices: int = 30) -> synthetic.Phantom:
        acq = synthetic.Acquisition(
            matrix=SMALL_ACQUISITION.matrix,
            pixel_spacing_mm=SMALL_ACQUISITION.pixel_spacing_mm,
            slice_thickness_mm=SMALL_ACQUISITION.slice_thickness_mm,
            n_slices=slices,
        )
        return synthetic.generate(synthetic.PhantomSpec(label, severity, seed, acq), fast=True)

    return make


# ---------------------------------------------------------------- a real PACS (Orthanc) on loopback


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancServer:
    """A running Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) with a generated config, loopback only.

    Attributes:
        aet: its AE title; dicom_port, http_port: its free ports; folder: its storage, index, config and log.
    """

    aet: str
    dicom_port: int
    http_port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The REST API root; DICOMweb is under ``url + '/dicom-web'``."""
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """One REST call; JSON in and out (``raw`` returns bytes)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
        return payload if raw else (json.loads(payload) if payload else None)

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Declare a DICOM peer Orthanc may send to (``/modalities/<name>/store``)."""
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_orthanc(
    folder: Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, list[Any]] | None = None,
    dicom_port: int | None = None,
    extra_config: dict[str, Any] | None = None,
) -> OrthancServer:
    """Start Orthanc with its DICOMweb plugin on free loopback ports and wait until its REST API answers.

    ``dicom_port`` fixes the DICOM port (e.g. to start a destination that a client already retries);
    ``extra_config`` adds or overrides Orthanc settings (e.g. ``{"AcceptedTransferSyntaxes": [...]}``).
    """
    executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(executable).is_file():
        pytest.fail("Orthanc is not installed: `make test` installs the Debian packages orthanc and orthanc-dicomweb")
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), free_port()
    plugins = [p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",) if Path(p).is_file()]
    config = {
        "Name": "medai-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities or {},
        "DicomModalitiesInDatabase": True,
        "UnknownSopClassAccepted": True,
        "OverwriteInstances": True,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        **(extra_config or {}),
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=1))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([executable, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = OrthancServer(aet, dicom_port, http_port, folder, process)
    deadline = time.monotonic() + 60
    while True:
        try:
            server.rest("GET", "/system")
            return server
        except (OSError, urllib.error.URLError):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh, empty Orthanc for one test (about a second to start); stopped afterwards."""
    server = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()
