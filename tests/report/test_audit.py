"""The tamper-evident audit trail: every edit, deletion, reordering or truncation is named by ``medai audit
verify``; concurrent writers (threads and processes) never interleave a record; batch and viewer scorings
append records with the pixel hash, the model and the code version."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from medai.cli import main as cli_main
from medai.inference.classifier import Classifier
from medai.phantoms import files as phantom_files
from medai.phantoms import synthetic
from medai.report.audit import AuditTrail, head_path, pixel_sha256, verify_audit_log
from medai.report.worklist import Worklist, entries_from_folder

REPO = Path(__file__).resolve().parents[2]


def _log(tmp_path: Path, n: int = 5) -> Path:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    for k in range(n):
        trail.append({"event": "scoring", "series_uid": f"1.2.{k}", "result": {"label": "normal"}})
    return trail.path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _verify_cli(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli_main(["audit", "verify", str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_intact_log_verifies_and_prints_its_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path)
    code, out = _verify_cli(path, capsys)
    assert code == 0 and "intact, 5 records" in out
    head = verify_audit_log(path).head_hash
    assert _verify_cli(path, capsys, "--head", head)[0] == 0


def _edit(lines: list[str]) -> list[str]:
    record = json.loads(lines[2])
    record["result"]["label"] = "covid19"
    return [*lines[:2], json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n", *lines[3:]]


@pytest.mark.parametrize(
    ("tamper", "bad", "words"),
    [
        (_edit, 3, "does not match its hash (edited)"),
        (lambda lines: lines[:1] + lines[2:], 2, "deleted or moved"),
        (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], 2, "deleted or moved"),
        (lambda lines: lines[1:], 1, "deleted or moved"),
        (lambda lines: [*lines[:4], lines[4][:40]], 5, "truncated inside a record"),
        (lambda lines: lines[:3], 4, "the log ends at record 3 but its head names record 5 (cut)"),
    ],
    ids=["edit", "delete", "reorder", "delete-first", "truncate-in-record", "cut-last-records"],
)
def test_tampering_is_named_at_the_first_bad_record(
    tamper: Callable[[list[str]], list[str]],
    bad: int,
    words: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _log(tmp_path)
    path.write_text("".join(tamper(_lines(path))))
    result = verify_audit_log(path)
    assert not result.ok and result.bad_record == bad and words in result.problem
    code, out = _verify_cli(path, capsys)
    assert code == 1 and f"record {bad}:" in out


def test_a_deleted_head_or_a_rewritten_history_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path)
    kept = verify_audit_log(path).head_hash
    head_path(path).unlink()
    assert "head file" in verify_audit_log(path).problem
    # someone rewrites the whole log consistently (new chain, new head): only the head kept elsewhere shows it
    path.unlink()
    _log(tmp_path, n=5)
    path.write_text("".join(_lines(path)))  # same length, different times and hashes
    assert verify_audit_log(path).ok
    code, out = _verify_cli(path, capsys, "--head", kept)
    assert code == 1 and "the log was rewritten" in out


_WRITER = """
import sys
from medai.report.audit import AuditTrail
trail = AuditTrail(sys.argv[1])
for k in range(int(sys.argv[3])):
    trail.append({"event": "scoring", "who": sys.argv[2], "k": k, "pad": "x" * 3000})
"""


def test_concurrent_writers_never_interleave_or_fork_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    processes = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"process-{p}", "40"], cwd=REPO) for p in range(3)
    ]
    trail = AuditTrail(path)
    threads = [
        threading.Thread(target=lambda t=t: [trail.append({"who": f"thread-{t}", "k": k}) for k in range(40)])
        for t in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    result = verify_audit_log(path)
    assert result.ok and result.records == 240
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["who"], r["k"]) for r in records) == sorted(
        (f"{kind}-{n}", k) for kind in ("process", "thread") for n in range(3) for k in range(40)
    )


def test_batch_and_viewer_scorings_append_records(
    small_phantom: Callable[..., synthetic.Phantom],
    shipped_classifier: Classifier,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    phantom = small_phantom("covid19", 0.3, 21)
    phantom_files.write_dicom(phantom, tmp_path / "studies" / "a")
    path = tmp_path / "audit.jsonl"
    args = ["score", str(tmp_path / "studies"), "--out", str(tmp_path / "r.csv"), "--no-progress"]
    assert cli_main([*args, "--audit-log", str(path)]) == 0
    worklist = Worklist(
        entries_from_folder(tmp_path / "studies"), classifier=lambda: shipped_classifier, audit=AuditTrail(path)
    )
    case = worklist.open(worklist.entries()[0].key)
    batch, viewer = (json.loads(line) for line in path.read_text().splitlines())
    assert (batch["source"], viewer["source"]) == ("batch", "viewer")
    for record in (batch, viewer):
        assert record["series_uid"] == phantom.volume.series_uid
        assert record["pixel_sha256"] == pixel_sha256(case.volume)
        assert record["model_sha256"] == shipped_classifier.sha256 and record["code_version"].startswith("medai ")
        assert record["result"]["label"] == case.prediction.label and record["who"]  # type: ignore[union-attr]
    assert batch["outputs"]["results"] == str((tmp_path / "r.csv").resolve())
    assert _verify_cli(path, capsys)[0] == 0
