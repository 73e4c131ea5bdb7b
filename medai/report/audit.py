"""The tamper-evident audit trail: one hash-chained JSON line per scoring, shared by batch, the PACS hook and the
viewer.

Each record carries ``seq`` (1, 2, ...), ``prev_hash`` (the ``hash`` of the record before it; 64 zeros for the
first) and ``hash``, the SHA-256 of the record's canonical JSON without ``hash``. Editing a record changes its
hash; deleting, inserting or reordering records breaks the sequence and the chain. Cutting records off the end
leaves a valid chain, so every append also rewrites a small *head* file beside the log (``PATH.head``, atomic
rename) naming the last record's ``seq`` and ``hash``: :func:`verify_audit_log` checks that the log ends where
its head says. Someone able to rewrite both files can forge a consistent history, as with any local log: keep
the head hash that ``medai audit verify`` prints somewhere else (a ticket, a second machine) and pass it back
with ``--head`` to detect that too.

Writers append under an exclusive ``flock`` on the log file, read the last record under that lock, and fsync
before releasing it: batch worker processes, the PACS worker and viewer sessions writing one log never
interleave or fork the chain. A torn last line (a writer killed mid-write, before its fsync returned, so
never acknowledged) is cut by the next writer and reported by :func:`verify_audit_log` until then.

Records hold UIDs, hashes, model identity, outputs and who asked (a user name or calling AE titles), never a
patient's name or ID.
"""

from __future__ import annotations

import fcntl
import functools
import getpass
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medai.errors import MedaiError

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction
    from medai.volume import Volume

__all__ = [
    "GENESIS_HASH",
    "AuditTrail",
    "AuditVerification",
    "code_version",
    "current_user",
    "pixel_sha256",
    "scoring_record",
    "verify_audit_log",
]

log = logging.getLogger(__name__)

#: ``prev_hash`` of the first record.
GENESIS_HASH = "0" * 64
_TAIL_BYTES = 65536


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of a record's canonical JSON, its own ``hash`` left out."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def head_path(path: str | Path) -> Path:
    """The head file of the log at ``path`` (``PATH.head``)."""
    return Path(f"{path}.head")


def pixel_sha256(volume: Volume) -> str:
    """SHA-256 of a volume's voxels in HU (shape and dtype included): the same series gives the same hash
    whatever its files, transfer syntax or de-identification.

    Example:
        >>> from medai.volume import Volume
        >>> len(pixel_sha256(Volume(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0))))
        64
    """
    hu = np.ascontiguousarray(volume.hu)
    digest = hashlib.sha256(f"{hu.dtype.str}{hu.shape}".encode())
    digest.update(hu.tobytes() if not hu.flags.c_contiguous else memoryview(hu).cast("B"))  # type: ignore[arg-type]
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """``medai VERSION`` and, in a git checkout, ``+gCOMMIT`` (with ``.dirty`` when files changed).

    Example:
        >>> code_version().startswith("medai ")
        True
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = f"medai {version('medai')}"
    except PackageNotFoundError:
        text = "medai (not installed)"
    here = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty=.dirty", "--abbrev=12", "--match=none"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{text}+g{commit}" if commit else text


def current_user() -> str:
    """The user running this process (the uid when it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def scoring_record(
    *,
    source: str,
    who: str,
    volume: Volume | None,
    prediction: Prediction | None,
    model_id: str,
    model_sha256: str,
    outputs: Mapping[str, Any] | None = None,
    series_uid: str = "",
    study_uid: str = "",
    pixel_hash: str = "",
    result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of one scoring's record (``seq``, ``time`` and hashes are added by :meth:`AuditTrail.append`).

    Args:
        source: ``"batch"``, ``"pacs"`` or ``"viewer"``.
        who: the user, or the calling AE titles.
        volume: the scored volume (its UIDs and pixel hash), when at hand.
        prediction: its prediction (label, probabilities, severity), when there is one.
        model_id, model_sha256: the model that scored it.
        outputs: what was written or sent (files, result object UIDs, destinations).
        series_uid, study_uid, pixel_hash: when there is no ``volume`` (a series that failed the QC gate).
        result: the outcome when there is no ``prediction`` (status, reason).
    """
    if volume is not None:
        series_uid = series_uid or volume.series_uid
        study_uid = study_uid or volume.study_uid
        pixel_hash = pixel_hash or pixel_sha256(volume)
    outcome: dict[str, Any] = dict(result or {})
    if prediction is not None:
        outcome.update(
            status="ok",
            label=prediction.label,
            indeterminate=prediction.indeterminate,
            probabilities={k: round(float(v), 6) for k, v in prediction.probabilities.items()},
            severity=prediction.severity.value,
        )
    return {
        "event": "scoring",
        "source": source,
        "who": who,
        "series_uid": series_uid,
        "study_uid": study_uid,
        "pixel_sha256": pixel_hash,
        "model_id": model_id,
        "model_sha256": model_sha256,
        "code_version": code_version(),
        "result": outcome,
        "outputs": dict(outputs or {}),
    }


def _last_line(handle: Any) -> tuple[bytes, int]:
    """The last complete line of an open log and the offset where a torn tail starts (the file size if none)."""
    size = handle.seek(0, os.SEEK_END)
    start = size
    chunk = b""
    while start > 0:
        step = min(_TAIL_BYTES, start)
        start -= step
        handle.seek(start)
        chunk = handle.read(step) + chunk
        lines = chunk.split(b"\n")
        whole = lines[:-1] if start == 0 else lines[1:-1]  # the chunk's first line may be a record's end
        complete = [line for line in whole if line.strip()]
        if complete or start == 0:
            end = size - len(lines[-1])  # everything after the last newline is torn
            return (complete[-1] if complete else b""), end
    return b"", 0


class AuditTrail:
    """An append-only, hash-chained audit log (JSON lines). Safe across threads and processes.

    Args:
        path: the log file (created with its folder); its head is ``PATH.head``.

    Example:
        >>> import tempfile
        >>> trail = AuditTrail(Path(tempfile.mkdtemp()) / "audit.jsonl")
        >>> trail.append({"event": "test"})["seq"], verify_audit_log(trail.path).ok
        (1, True)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AuditTrail({str(self.path)!r})"

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record (under an exclusive lock, fsynced, head updated); returns it with its chain fields.

        Raises:
            MedaiError: the file is not a medai audit log, or cannot be written.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a+b") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    return self._append_locked(handle, fields)
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        except OSError as exc:
            raise MedaiError(f"audit log {str(self.path)!r} must be writable, not {exc.strerror or exc}") from exc

    def _append_locked(self, handle: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
        last, end = _last_line(handle)
        if end != handle.seek(0, os.SEEK_END):
            log.warning("audit log %s ended in a torn record (a writer died mid-write); cut it", self.path)
            handle.truncate(end)
        seq, prev = 0, GENESIS_HASH
        if last:
            try:
                previous = json.loads(last)
                seq, prev = int(previous["seq"]), str(previous["hash"])
            except (ValueError, KeyError, TypeError) as exc:
                raise MedaiError(
                    f"audit log {str(self.path)!r} must end with a medai audit record, not {last[:60]!r}; "
                    "check it with medai audit verify and start a new log"
                ) from exc
        record = {
            "seq": seq + 1,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "prev_hash": prev,
            **{k: v for k, v in fields.items() if k not in ("seq", "time", "prev_hash", "hash")},
        }
        record["hash"] = record_hash(record)
        handle.seek(0, os.SEEK_END)
        handle.write(_canonical(record) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
        self._write_head(record)
        return record

    def _write_head(self, record: Mapping[str, Any]) -> None:
        head = head_path(self.path)
        temp = head.with_name(f".{head.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps({"medai_audit_head": 1, "seq": record["seq"], "hash": record["hash"]}) + "\n")
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, head)

    def records(self) -> Iterator[dict[str, Any]]:
        """The records in order (unverified; use :func:`verify_audit_log` to check them)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for line in handle:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        return


@dataclass(frozen=True)
class AuditVerification:
    """What :func:`verify_audit_log` found.

    Attributes:
        ok: every record is intact, in order, and the log ends where its head says.
        records: records checked (the intact prefix when not ``ok``).
        head_hash: the last intact record's hash (keep it elsewhere to detect a rewrite of the whole log).
        bad_record: the line number (1-based) of the first bad record, or None.
        problem: what is wrong, in one line ("" when ``ok``).
    """

    ok: bool
    records: int
    head_hash: str
    bad_record: int | None = None
    problem: str = ""


def verify_audit_log(path: str | Path, *, expected_head: str | None = None) -> AuditVerification:
    """Check a log's chain, sequence and head; name the first bad record.

    Args:
        path: the log.
        expected_head: a head hash kept elsewhere; the log must contain it as a record's hash.

    Raises:
        MedaiError: the log does not exist.

    Example:
        >>> import tempfile
        >>> trail = AuditTrail(Path(tempfile.mkdtemp()) / "a.jsonl")
        >>> _ = [trail.append({"n": n}) for n in range(3)]
        >>> verify_audit_log(trail.path).records
        3
    """
    path = Path(path)
    if not path.is_file():
        raise MedaiError(f"audit log must be an existing file, not {str(path)!r}")
    data = path.read_bytes()
    prev, seq, hashes = GENESIS_HASH, 0, set()

    def bad(line_no: int, problem: str) -> AuditVerification:
        return AuditVerification(False, seq, prev, line_no, f"record {line_no}: {problem}")

    lines = data.split(b"\n")
    for line_no, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            return bad(line_no, "is not a JSON record (edited or cut)")
        if record.get("seq") != seq + 1:
            return bad(line_no, f"sequence number must be {seq + 1}, not {record.get('seq')!r} (deleted or moved)")
        if record.get("prev_hash") != prev:
            return bad(line_no, "prev_hash must be the hash of the record before it (deleted or moved)")
        if record.get("hash") != record_hash(record):
            return bad(line_no, "its content does not match its hash (edited)")
        prev, seq = str(record["hash"]), seq + 1
        hashes.add(prev)
    if lines[-1].strip():
        return bad(len(lines), "is cut short: the file was truncated inside a record")
    head = head_path(path)
    try:
        named = json.loads(head.read_text())
        head_seq, head_hash = int(named["seq"]), str(named["hash"])
    except FileNotFoundError:
        return bad(seq + 1, f"the head file {head.name} is missing (deleted?)")
    except (ValueError, KeyError, TypeError):
        return bad(seq + 1, f"the head file {head.name} is not a medai audit head (edited)")
    if head_seq != seq or head_hash != prev:
        if head_seq > seq:
            return bad(seq + 1, f"is missing: the log ends at record {seq} but its head names record {head_seq} (cut)")
        return bad(head_seq, "does not match the head file's hash (the log or its head was rewritten)")
    if expected_head is not None and expected_head not in hashes:
        return bad(seq, f"no record has the expected head hash {expected_head[:16]}... (the log was rewritten)")
    return AuditVerification(True, seq, prev)
