"""The listener against real peers (dcmtk echoscu/storescu, a pynetdicom client): who gets in, what is stored,
what is refused with which status, and that the server outlives every bad peer."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from medai.ingest.load import load_series
from medai.ingest.qc import SelectionRules
from medai.pacs.dicom_status import StoreStatus
from medai.pacs.service import PacsService
from medai.phantoms.ctwriter import TransferSyntax
from medai.volume import Volume
from tests.pacs.conftest import dcmtk, first_slices, jobs, settings, storescu, wait_for

FEW_SLICES = SelectionRules(min_slices=1, min_coverage_mm=0.0)


def echo(port: int, calling: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling, "-aec", "MEDAI", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_allow_list_decides_who_may_associate(pacs_service: Callable[..., PacsService], tmp_path: Path) -> None:
    service = pacs_service(
        settings(tmp_path / "spool", None, destination=["PACS@127.0.0.1:9"], allow_ae="MODALITY,FAR@10.9.9.9")
    )
    port = service.config.port
    assert echo(port).returncode == 0
    stranger = echo(port, "STRANGER")
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stderr
    far = echo(port, "FAR")  # on the list, but only from another host
    assert far.returncode != 0 and "Calling AE Title Not Recognized" in far.stderr
    assert echo(port).returncode == 0  # still serving
    assert service.listener.stats["rejected_associations"] == 2


def test_low_disk_refuses_associations_with_a_clear_status(
    pacs_service: Callable[..., PacsService], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = pacs_service(
        settings(tmp_path / "spool", None, destination=["PACS@127.0.0.1:9"], min_free_mb=float(2**40))
    )
    refused = echo(service.config.port)
    assert refused.returncode != 0
    assert "Rejected Transient" in refused.stderr and "Local Limit Exceeded" in refused.stderr
    assert "under the" in caplog.text and "watermark" in caplog.text


def test_every_common_transfer_syntax_is_stored_as_sent_and_loads(
    pacs_service: Callable[..., PacsService],
    write_series: Callable[..., Path],
    chest_volume: Volume,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    service = pacs_service(settings(spool, None, destination=["PACS@127.0.0.1:9"], idle_seconds=3600.0))
    small = first_slices(chest_volume, 4)
    syntaxes = ["implicit", "explicit", "deflated", "rle", "jpegls", "jpeg2000", "jpeg-lossless", "big-endian"]
    folders = [write_series(small, name, transfer_syntax=name) for name in syntaxes]
    for folder, name in zip(folders, syntaxes, strict=True):  # one association per syntax, proposed first
        result = storescu(service.config.port, folder, syntax=name)
        assert result.returncode == 0, result.stderr
    stored = {r["series_uid"]: r["received"] for r in jobs(spool)}
    assert len(stored) == len(syntaxes) and set(stored.values()) == {4}
    for folder, name in zip(folders, syntaxes, strict=True):
        series_uid = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
        files = service.queue.series_files(series_uid)
        received = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert received == TransferSyntax(name).uid, name  # stored exactly as the peer sent it
        assert (load_series(files, rules=FEW_SLICES).hu == small.hu).all(), name


def _client(port: int, *, tls: ssl.SSLContext | None = None) -> object:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title="MEDAI", tls_args=(tls, "127.0.0.1") if tls else None)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, in medai's listener thread, on '../../evil'
def test_bad_datasets_get_named_failures_and_the_server_goes_on(
    pacs_service: Callable[..., PacsService],
    write_series: Callable[..., Path],
    chest_volume: Volume,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = tmp_path / "spool"
    service = pacs_service(settings(spool, None, destination=["PACS@127.0.0.1:9"], idle_seconds=3600.0))
    folder = write_series(first_slices(chest_volume, 2))
    good = pydicom.dcmread(sorted(folder.iterdir())[0])
    truncated = pydicom.dcmread(sorted(folder.iterdir())[1])
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 2]
    no_uid = pydicom.dcmread(sorted(folder.iterdir())[1])
    no_uid.SOPInstanceUID = pydicom.uid.generate_uid()
    del no_uid.SeriesInstanceUID
    traversal = pydicom.dcmread(sorted(folder.iterdir())[1])
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        traversal.SeriesInstanceUID = "../../evil"
    cut_file = tmp_path / "cut.dcm"  # a file cut in half, sent as it is (the stream ends inside the pixel data)
    cut_file.write_bytes(sorted(folder.iterdir())[1].read_bytes()[:15000])
    assoc = _client(service.config.port)
    assert assoc.is_established  # type: ignore[attr-defined]
    sent = (truncated, cut_file, no_uid, traversal, good)
    statuses = [int(assoc.send_c_store(ds).Status) for ds in sent]  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert statuses == [StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS] * 4 + [StoreStatus.SUCCESS]
    assert "truncated" in caplog.text and "SeriesInstanceUID is missing" in caplog.text
    assert not list((spool / "instances").rglob("*evil*"))
    assert [r["received"] for r in jobs(spool)] == [1]
    assert storescu(service.config.port, folder).returncode == 0  # the next peer is served as usual
    sc_class = storescu(service.config.port, tmp_path / "not-ct.dcm")  # no such file: storescu itself fails
    assert sc_class.returncode != 0


def test_other_sop_classes_are_refused_at_negotiation(pacs_service: Callable[..., PacsService], tmp_path: Path) -> None:
    from pydicom.uid import SecondaryCaptureImageStorage

    service = pacs_service(settings(tmp_path / "spool", None, destination=["PACS@127.0.0.1:9"]))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", service.config.port, ae_title="MEDAI")
    assert assoc.is_established
    assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [str(Verification)]
    assoc.release()


def _certificate(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "medai.key", folder / "medai.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_listener_serves_tls_peers_only(pacs_service: Callable[..., PacsService], tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    service = pacs_service(
        settings(
            tmp_path / "spool",
            None,
            destination=["PACS@127.0.0.1:9"],
            tls={"certificate": str(cert), "private_key": str(key)},
        )
    )
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    assoc = _client(service.config.port, tls=client)
    assert assoc.is_established  # type: ignore[attr-defined]
    assert int(assoc.send_c_echo().Status) == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert echo(service.config.port).returncode != 0  # plain TCP gets nowhere
    again = _client(service.config.port, tls=client)  # and the server outlived the failed handshake
    assert again.is_established  # type: ignore[attr-defined]
    again.release()  # type: ignore[attr-defined]


def test_a_sender_stalled_mid_series_is_waited_for_not_scored_twice(
    pacs_service: Callable[..., PacsService], write_series: Callable[..., Path], chest_volume: Volume, tmp_path: Path
) -> None:
    """The load drill on a starved machine: a modality lost a C-STORE response, waited it out with its
    association open, aborted and resent on a new one. The half already received must not be scored alone."""
    spool = tmp_path / "spool"
    service = pacs_service(settings(spool, None, destination=["PACS@127.0.0.1:9"], idle_seconds=1.0))
    files = sorted(write_series(first_slices(chest_volume, 24)).iterdir())
    stalled = _client(service.config.port)
    for path in files[:10]:
        assert int(stalled.send_c_store(pydicom.dcmread(path)).Status) == 0  # type: ignore[attr-defined]
    time.sleep(4.0)  # four idle times with the association open: the sender is stalled, not done
    assert [(r["state"], r["received"]) for r in jobs(spool)] == [("receiving", 10)]
    assert service.listener.open_series() == {str(pydicom.dcmread(files[0]).SeriesInstanceUID)}
    stalled.abort()  # type: ignore[attr-defined]
    wait_for(lambda: not service.listener.open_series(), timeout=10, what="the aborted association to be let go")
    resend = _client(service.config.port)  # the modality's retry: everything not acknowledged, at once
    for path in files[9:]:
        assert int(resend.send_c_store(pydicom.dcmread(path)).Status) == 0  # type: ignore[attr-defined]
    resend.release()  # type: ignore[attr-defined]
    rows = wait_for(
        lambda: (r := jobs(spool)) and all(j["state"] not in ("receiving", "scoring") for j in r) and r,
        what="the series to be scored",
    )
    assert [(r["received"], r["label"] is not None) for r in rows] == [(24, True)]  # one result, whole series
