"""No patient identity leaks: a batch run, a PACS session and a viewer session on a phantom study carrying a fake
identity, with every log line, result file, key image, saliency map, audit record, status page, viewer page and
de-identified export scanned for it.

What is *meant* to carry the identity is not scanned: the result objects the PACS hook sends back into the
patient's own study (their patient module must match the study's for the PACS to file them), and exports the
reader asked for with identifiers (de-identification off).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pydicom
import pytest
from streamlit.testing.v1 import AppTest

from medai.cli import main as cli_main
from medai.inference.classifier import Classifier
from medai.pacs.config import build_config
from medai.pacs.service import PacsService
from medai.pacs.status import format_status, read_status
from medai.report.case_report import case_report_html
from medai.report.deidentify import UidMap, deidentify_case
from medai.report.results import read_results
from medai.report.worklist import Worklist, entries_from_folder
from tests.conftest import OrthancServer, load_script
from tests.pacs.conftest import all_finished, settings, storescu, wait_for

ROOT = Path(__file__).resolve().parents[1]
VIEWER = ROOT / "app" / "viewer.py"


compare = load_script("deid_compare")


def leaks(data: bytes | str) -> list[str]:
    """The fake identity's strings found in ``data``."""
    raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else data
    return [s for s in compare.IDENTITY_STRINGS if s.encode() in raw]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phi")
    compare.write_identified_series(root / "studies" / "study_1")
    assert leaks(_files(root / "studies")["study_1/IM00000.dcm"])  # the input does carry the identity
    return root / "studies"


def test_a_deidentified_batch_run_leaks_nothing(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="medai")
    out = tmp_path / "out"
    args = ["score", str(tree), "--out", str(out / "results.csv"), "--saliency-dir", str(out / "keys")]
    args += ["--saliency-nifti", "--deidentify", "--audit-log", str(out / "audit.jsonl"), "--no-progress"]
    assert cli_main([*args, "--workers", "1"]) == 0
    outputs = _files(out)
    assert {"results.csv", "audit.jsonl", "audit.jsonl.head"} <= set(outputs) and len(outputs) == 5
    for name, data in outputs.items():
        assert leaks(data) == [], name
    captured = capsys.readouterr()
    assert leaks(caplog.text + captured.out + captured.err) == []
    original = str(pydicom.dcmread(tree / "study_1" / "IM00000.dcm", stop_before_pixels=True).SeriesInstanceUID)
    (row,) = read_results(out / "results.csv")
    (record,) = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert row["series_uid"] != original and record["series_uid"] == original  # the trail names the input


def test_a_pacs_session_logs_and_audits_no_identity(
    tree: Path,
    tmp_path: Path,
    orthanc: OrthancServer,
    shipped_classifier: Classifier,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="medai")
    spool = tmp_path / "spool"
    service = PacsService(build_config(settings(spool, orthanc)), classifier=shipped_classifier)
    service.start()
    try:
        assert storescu(service.config.port, tree / "study_1").returncode == 0
        wait_for(lambda: all_finished(spool, 1), timeout=120, what="the series scored and delivered")
    finally:
        service.stop()
    assert cli_main(["pacs", "status", "--spool", str(spool)]) == 0
    assert cli_main(["audit", "verify", str(spool / "audit.jsonl")]) == 0
    captured = capsys.readouterr()
    scanned = {
        "log": caplog.text,
        "console": captured.out + captured.err,
        "status": format_status(read_status(spool)),
        "audit": (spool / "audit.jsonl").read_text(),
        "queue": (spool / "queue.sqlite3").read_bytes(),
    }
    for name, data in scanned.items():
        assert leaks(data) == [], name


def test_a_viewer_session_and_its_deidentified_exports_leak_nothing(
    tree: Path,
    tmp_path: Path,
    shipped_classifier: Classifier,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setattr(sys, "argv", ["viewer.py", "--data", str(tree), "--audit-log", str(audit)])
    at = AppTest.from_file(str(VIEWER), default_timeout=120)
    at.run()
    for _ in range(240):
        page = "\n".join(str(e.value) for kind in ("markdown", "caption", "error", "warning") for e in at.get(kind))
        if "Calibrated probabilities" in page:
            break
        at.run()
    assert "Calibrated probabilities" in page and not at.exception
    lines = [str(o) for r in at.sidebar.radio for o in r.options]
    assert leaks(page + "\n".join(lines)) == []
    at.toggle(key="deidentify_exports").set_value(True).run()
    assert not at.exception
    # the exports the page offers with the switch on, built by the same code the buttons call
    from app import results as app_results

    worklist = Worklist(entries_from_folder(tree), classifier=lambda: shipped_classifier)
    case = worklist.open(worklist.entries()[0].key)
    assert case.prediction is not None
    volume, prediction = deidentify_case(case.volume, case.prediction, UidMap(b"k" * 32))
    report = case_report_html(volume, prediction, title="study 1", show_identifiers=False)
    sr = app_results.sr_bytes(case, case.prediction, deidentify=True)
    assert leaks(app_results.sr_bytes(case, case.prediction))  # without the switch the SR names the patient
    for name, data in {"report": report, "sr": sr, "audit": audit.read_bytes(), "log": caplog.text}.items():
        assert leaks(data) == [], name
