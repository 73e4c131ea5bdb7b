"""The durable job queue of the PACS hook: SQLite in WAL mode, one row per series job.

A job's life (:class:`JobState`)::

    receiving --(idle_seconds without a new instance)--> scoring --> sending --> sent
                                                             \\            \\--> failed (a delivery gave up)
                                                              \\--> failed (interrupted too often; nothing to send)

Every change is one transaction (``BEGIN IMMEDIATE``, ``synchronous=FULL``), and every state change is
conditional on the state it leaves (``UPDATE ... WHERE state = ?``), so a job can never complete twice, even
when two threads race or a process restarts half-way. After a crash :meth:`JobQueue.recover` puts work back:
a job that was ``scoring`` is scored again (its results were never sent: outputs and deliveries are written
in the transaction that leaves ``scoring``), deliveries still pending are retried at once, and series still
``receiving`` get a fresh idle period so their senders can finish.

A series is complete after ``idle_seconds`` without a new instance, counted from the end of the last
association that sent part of it when that is later; while such an association is still open the series waits
longer (the listener's ``network_timeout_s``): a sender stalled mid-series (a lost response it waits out, a
slow link) is not a finished one, and scoring it early would send a result for half a series and then a second
one for the whole.

Instances belong to a series. An instance whose SOP Instance UID is already known is a duplicate (a peer
resending after a failure) and changes nothing. An instance of a series whose job has already left
``receiving`` opens a new job for the series (the next *generation*), scored with every instance received so
far; its results supersede the earlier ones.

Each job that finishes (``sent`` or ``failed``) gets exactly one audit record, written in the same
transaction (:mod:`medai.pacs.audit` copies them to ``audit.jsonl``).
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Delivery",
    "DeliveryState",
    "Job",
    "JobOutcome",
    "JobQueue",
    "JobState",
    "OutputRecord",
]

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    """Where a series job is."""

    RECEIVING = "receiving"  # instances arriving; complete after the idle time
    SCORING = "scoring"  # the worker loads, scores and encodes it
    SENDING = "sending"  # results written; deliveries pending or retrying
    SENT = "sent"  # every destination has the results
    FAILED = "failed"  # given up: see reason and message


class JobOutcome(enum.StrEnum):
    """What scoring produced."""

    SCORED = "scored"  # a prediction and its SR/SC(/SEG)
    NOT_SCORED = "not_scored"  # QC or loading failed: a failure SR says why


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    scoring_started_at REAL,
    scored_at REAL,
    finished_at REAL,
    outcome TEXT,
    reason TEXT,
    message TEXT,
    model_id TEXT,
    model_sha256 TEXT,
    label TEXT,
    pixel_sha256 TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_receiving ON jobs(series_uid) WHERE state = 'receiving';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    path TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_job ON instances(job_id);
CREATE TABLE IF NOT EXISTS outputs (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (job_id, destination)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL UNIQUE REFERENCES jobs(id),
    record TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    """One row of the queue."""

    id: int
    series_uid: str
    study_uid: str
    state: JobState
    attempts: int
    created_at: float
    last_received_at: float


@dataclass(frozen=True)
class OutputRecord:
    """A result object of a job, written to the spool."""

    kind: str  # "sr", "sc", "seg"
    sop_class_uid: str
    sop_uid: str
    path: str


@dataclass(frozen=True)
class Delivery:
    """A job's results still to be sent to one destination."""

    job_id: int
    destination: str
    attempts: int
    created_at: float


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=int(row["id"]),
        series_uid=row["series_uid"],
        study_uid=row["study_uid"],
        state=JobState(row["state"]),
        attempts=int(row["attempts"]),
        created_at=float(row["created_at"]),
        last_received_at=float(row["last_received_at"]),
    )


class JobQueue:
    """The queue in ``path`` (created when missing). Thread-safe: one connection behind a lock.

    Example:
        >>> queue = JobQueue(spool.database)  # doctest: +SKIP
        >>> queue.record_instance(series_uid="1.2", study_uid="1.1", sop_uid="1.2.3", ...)  # doctest: +SKIP
        True
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA busy_timeout = 30000")
        if not read_only:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")  # an acknowledged instance survives a power cut
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "pixel_sha256" not in columns:  # a queue written before the audit trail recorded pixel hashes
                self._db.execute("ALTER TABLE jobs ADD COLUMN pixel_sha256 TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params))

    # ------------------------------------------------------------ receiving

    def record_instance(
        self,
        *,
        series_uid: str,
        study_uid: str,
        sop_uid: str,
        path: Path,
        sop_class_uid: str,
        transfer_syntax: str,
        size_bytes: int,
        calling_ae: str,
        now: float | None = None,
    ) -> bool:
        """Record a stored instance; returns False when its SOP Instance UID was already known (a duplicate)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            open_job = db.execute(
                "SELECT id FROM jobs WHERE series_uid = ? AND state = ?", (series_uid, JobState.RECEIVING)
            ).fetchone()
            known = db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
            if known is not None:
                if open_job is not None:  # the peer is still sending this series: keep its job open
                    db.execute("UPDATE jobs SET last_received_at = ? WHERE id = ?", (now, open_job["id"]))
                return False
            if open_job is None:
                job_id = db.execute(
                    "INSERT INTO jobs (series_uid, study_uid, state, created_at, last_received_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (series_uid, study_uid, JobState.RECEIVING, now, now),
                ).lastrowid
            else:
                job_id = open_job["id"]
                db.execute("UPDATE jobs SET last_received_at = ? WHERE id = ?", (now, job_id))
            db.execute(
                "INSERT INTO instances (sop_uid, series_uid, job_id, path, sop_class_uid, transfer_syntax, "
                "size_bytes, calling_ae, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, series_uid, job_id, str(path), sop_class_uid, transfer_syntax, size_bytes, calling_ae, now),
            )
        return True

    def hold_series(self, series_uid: str, until: float) -> bool:
        """Count a receiving series' idle time from ``until`` at the earliest: an instance of it was refused for
        lack of space (its sender will retry, and scoring the part that arrived would send a result for half a
        series), or the association that sent it just ended. The next instance received ends the hold (the idle
        time counts from it again). Returns whether a receiving job was held."""
        with self._transaction() as db:
            return bool(
                db.execute(
                    "UPDATE jobs SET last_received_at = MAX(last_received_at, ?) WHERE series_uid = ? AND state = ?",
                    (until, series_uid, JobState.RECEIVING),
                ).rowcount
            )

    def is_known(self, sop_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID was already recorded (a resend)."""
        return bool(self._query("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)))

    # ------------------------------------------------------------ scoring

    def claim_ready(
        self,
        idle_seconds: float,
        *,
        held: Collection[str] = (),
        held_seconds: float | None = None,
        now: float | None = None,
    ) -> Job | None:
        """Move the oldest complete series to ``scoring`` and return it.

        A series is complete when no instance of it arrived for ``idle_seconds``. A series in ``held`` (one
        that an association still open has sent part of: its sender may be stalled mid-series, not finished)
        waits ``held_seconds`` instead (default: the same idle time)."""
        now = time.time() if now is None else now
        ready = self.next_ready_at(idle_seconds, held=held, held_seconds=held_seconds)
        if ready is None or ready > now:  # a read, not a write lock: the listener is never held up by polling
            return None
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, series_uid, last_received_at FROM jobs WHERE state = ? ORDER BY last_received_at",
                (JobState.RECEIVING,),
            ).fetchall()
            due = _due_times(rows, idle_seconds, held, held_seconds)
            row = next((r for r, at in zip(rows, due, strict=True) if at <= now), None)
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, scoring_started_at = ? WHERE id = ? AND state = ?",
                (JobState.SCORING, now, row["id"], JobState.RECEIVING),
            )
            claimed = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _job(claimed)

    def next_ready_at(
        self, idle_seconds: float, *, held: Collection[str] = (), held_seconds: float | None = None
    ) -> float | None:
        """When the next receiving series becomes complete (``None`` when none is receiving); ``held`` and
        ``held_seconds`` as in :meth:`claim_ready`."""
        rows = self._query("SELECT series_uid, last_received_at FROM jobs WHERE state = ?", (JobState.RECEIVING,))
        return min(_due_times(rows, idle_seconds, held, held_seconds), default=None)

    def series_instances(self, series_uid: str) -> list[tuple[Path, str, str]]:
        """``(path, SOP Instance UID, SOP Class UID)`` of every stored (not purged) instance of a series, in the
        order received."""
        rows = self._query(
            "SELECT path, sop_uid, sop_class_uid FROM instances WHERE series_uid = ? AND purged = 0 "
            "ORDER BY received_at, sop_uid",
            (series_uid,),
        )
        return [(Path(r[0]), str(r[1]), str(r[2])) for r in rows]

    def series_files(self, series_uid: str) -> list[Path]:
        """Every stored (not purged) instance of a series, in the order received."""
        return [path for path, _, _ in self.series_instances(series_uid)]

    def finish_scoring(
        self,
        job_id: int,
        *,
        outcome: JobOutcome,
        outputs: Sequence[OutputRecord],
        destinations: Sequence[str],
        model_id: str,
        model_sha256: str,
        label: str = "",
        reason: str = "",
        message: str = "",
        pixel_sha256: str = "",
        now: float | None = None,
    ) -> bool:
        """``scoring`` -> ``sending``: record the outputs and one pending delivery per destination, atomically.

        Returns False (and changes nothing) when the job is no longer ``scoring``.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = ?, scored_at = ?, outcome = ?, reason = ?, message = ?, model_id = ?, "
                "model_sha256 = ?, label = ?, pixel_sha256 = ? WHERE id = ? AND state = ?",
                (
                    JobState.SENDING,
                    now,
                    outcome,
                    reason,
                    message,
                    model_id,
                    model_sha256,
                    label,
                    pixel_sha256,
                    job_id,
                    JobState.SCORING,
                ),
            ).rowcount
            if not changed:
                return False
            db.executemany(
                "INSERT INTO outputs (job_id, kind, sop_class_uid, sop_uid, path) VALUES (?, ?, ?, ?, ?)",
                [(job_id, o.kind, o.sop_class_uid, o.sop_uid, o.path) for o in outputs],
            )
            db.executemany(
                "INSERT INTO deliveries (job_id, destination, state, next_attempt_at) VALUES (?, ?, ?, ?)",
                [(job_id, d, DeliveryState.PENDING, now) for d in destinations],
            )
        return True

    def fail_job(self, job_id: int, *, reason: str, message: str, now: float | None = None) -> bool:
        """``scoring`` -> ``failed`` with a reason (nothing could be sent); returns False if it was not scoring."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, reason = ?, message = ? WHERE id = ? AND state = ?",
                (JobState.FAILED, now, reason, message, job_id, JobState.SCORING),
            ).rowcount
            if changed:
                self._insert_audit(db, job_id)
        return bool(changed)

    # ------------------------------------------------------------ sending

    def due_deliveries(self, *, now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT d.job_id, d.destination, d.attempts, j.scored_at FROM deliveries d JOIN jobs j ON j.id = d.job_id "
            "WHERE d.state = ? AND d.next_attempt_at <= ? AND j.state = ? ORDER BY d.next_attempt_at, d.job_id",
            (DeliveryState.PENDING, now, JobState.SENDING),
        )
        return [Delivery(int(r[0]), r[1], int(r[2]), float(r[3] or now)) for r in rows]

    def next_delivery_at(self) -> float | None:
        rows = self._query("SELECT MIN(next_attempt_at) FROM deliveries WHERE state = ?", (DeliveryState.PENDING,))
        return None if rows[0][0] is None else float(rows[0][0])

    def outputs(self, job_id: int) -> list[OutputRecord]:
        rows = self._query(
            "SELECT kind, sop_class_uid, sop_uid, path FROM outputs WHERE job_id = ? ORDER BY rowid", (job_id,)
        )
        return [OutputRecord(r[0], r[1], r[2], r[3]) for r in rows]

    def record_attempt(
        self,
        job_id: int,
        destination: str,
        *,
        delivered: bool,
        error: str = "",
        retry_at: float | None = None,
        now: float | None = None,
    ) -> JobState | None:
        """Record one delivery attempt; when it was the job's last pending delivery, finish the job.

        Args:
            delivered: the destination acknowledged every result object.
            error: why not (when not delivered).
            retry_at: when to try again; ``None`` with ``delivered=False`` gives the delivery up.

        Returns:
            The job's final state when this attempt finished it (``sent`` or ``failed``), else ``None``.
        """
        now = time.time() if now is None else now
        if delivered:
            state, next_at = DeliveryState.DELIVERED, now
        elif retry_at is not None:
            state, next_at = DeliveryState.PENDING, retry_at
        else:
            state, next_at = DeliveryState.FAILED, now
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?, "
                "delivered_at = ? WHERE job_id = ? AND destination = ? AND state = ?",
                (state, next_at, error or None, now if delivered else None, job_id, destination, DeliveryState.PENDING),
            ).rowcount
            if not changed:
                return None
            states = [r[0] for r in db.execute("SELECT state FROM deliveries WHERE job_id = ?", (job_id,))]
            if DeliveryState.PENDING in states:
                return None
            final = JobState.SENT if all(s == DeliveryState.DELIVERED for s in states) else JobState.FAILED
            reason = "" if final is JobState.SENT else "delivery_failed"
            finished = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, reason = CASE WHEN ? = '' THEN reason ELSE ? END "
                "WHERE id = ? AND state = ?",
                (final, now, reason, reason, job_id, JobState.SENDING),
            ).rowcount
            if not finished:
                return None
            self._insert_audit(db, job_id)
        return final

    # ------------------------------------------------------------ recovery, retention

    def recover(self, *, now: float | None = None) -> dict[str, int]:
        """After a restart: re-queue interrupted scoring, retry pending deliveries now, give receiving series
        a fresh idle period. Returns how many rows of each kind were touched."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            rescored = 0
            for job in db.execute("SELECT id, series_uid FROM jobs WHERE state = ?", (JobState.SCORING,)).fetchall():
                newer = db.execute(
                    "SELECT 1 FROM jobs WHERE series_uid = ? AND state = ?", (job["series_uid"], JobState.RECEIVING)
                ).fetchone()
                if newer is not None:  # a later generation of the series will score every instance anyway
                    db.execute(
                        "UPDATE jobs SET state = ?, finished_at = ?, reason = 'superseded', message = ? WHERE id = ?",
                        (JobState.FAILED, now, "interrupted; a later job of the same series scores it", job["id"]),
                    )
                    self._insert_audit(db, job["id"])
                else:
                    db.execute("UPDATE jobs SET state = ? WHERE id = ?", (JobState.RECEIVING, job["id"]))
                    rescored += 1
            db.execute(
                "UPDATE jobs SET last_received_at = ? WHERE state = ? AND attempts = 0",
                (now, JobState.RECEIVING),
            )
            resent = db.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE state = ?", (now, DeliveryState.PENDING)
            ).rowcount
        return {"rescore": rescored, "resend": resent}

    def finished_series(self, older_than: float) -> list[str]:
        """Series whose every job finished before ``older_than`` and that still have files (for retention)."""
        rows = self._query(
            "SELECT DISTINCT i.series_uid FROM instances i WHERE i.purged = 0 AND NOT EXISTS (SELECT 1 FROM jobs j "
            "WHERE j.series_uid = i.series_uid AND (j.state NOT IN (?, ?) OR j.finished_at >= ?))",
            (JobState.SENT, JobState.FAILED, older_than),
        )
        return [r[0] for r in rows]

    def mark_purged(self, series_uid: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE instances SET purged = 1 WHERE series_uid = ?", (series_uid,))

    # ------------------------------------------------------------ audit, status

    def _insert_audit(self, db: sqlite3.Connection, job_id: int) -> None:
        job = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        instances = db.execute(
            "SELECT COUNT(*), MIN(received_at), MAX(received_at), GROUP_CONCAT(DISTINCT calling_ae) FROM instances "
            "WHERE series_uid = ? AND received_at <= ?",
            (job["series_uid"], job["scoring_started_at"] or job["last_received_at"]),
        ).fetchone()
        outputs = db.execute("SELECT kind, sop_class_uid, sop_uid FROM outputs WHERE job_id = ?", (job_id,)).fetchall()
        deliveries = db.execute(
            "SELECT destination, state, attempts, delivered_at, last_error FROM deliveries WHERE job_id = ?", (job_id,)
        ).fetchall()
        record = {
            "job": job_id,
            "series_uid": job["series_uid"],
            "study_uid": job["study_uid"],
            "state": job["state"],
            "outcome": job["outcome"],
            "reason": job["reason"],
            "label": job["label"],
            "model_id": job["model_id"],
            "model_sha256": job["model_sha256"],
            "pixel_sha256": job["pixel_sha256"] or "",
            "calling_ae": sorted((instances[3] or "").split(",")) if instances[3] else [],
            "instances": int(instances[0]),
            "first_received_at": instances[1],
            "last_received_at": instances[2],
            "scoring_attempts": job["attempts"],
            "scored_at": job["scored_at"],
            "finished_at": job["finished_at"],
            "outputs": [{"kind": o[0], "sop_class_uid": o[1], "sop_uid": o[2]} for o in outputs],
            "destinations": [
                {"destination": d[0], "state": d[1], "attempts": d[2], "delivered_at": d[3], "last_error": d[4]}
                for d in deliveries
            ],
        }
        db.execute("INSERT INTO audit (job_id, record) VALUES (?, ?)", (job_id, json.dumps(record, sort_keys=True)))

    def audit_records(self, after_seq: int = 0) -> list[tuple[int, dict[str, Any]]]:
        """Audit records with a sequence number above ``after_seq``, in order."""
        rows = self._query("SELECT seq, record FROM audit WHERE seq > ? ORDER BY seq", (after_seq,))
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    def jobs_overview(self) -> list[dict[str, Any]]:
        """One dictionary per job, newest first, with instance and delivery counts (for ``medai pacs status``)."""
        rows = self._query(
            "SELECT j.*, (SELECT COUNT(*) FROM instances i WHERE i.job_id = j.id) AS received, "
            "(SELECT COUNT(*) FROM instances i WHERE i.series_uid = j.series_uid) AS series_instances, "
            "(SELECT GROUP_CONCAT(d.destination || '=' || d.state || ':' || d.attempts "
            "|| COALESCE(' ' || d.last_error, ''), '; ') FROM deliveries d WHERE d.job_id = j.id) AS deliveries "
            "FROM jobs j ORDER BY j.id DESC"
        )
        return [dict(r) for r in rows]


def _due_times(
    rows: Sequence[sqlite3.Row], idle_seconds: float, held: Collection[str], held_seconds: float | None
) -> list[float]:
    """When each receiving job's series becomes complete: its last instance plus the idle time, or plus
    ``held_seconds`` while an open association holds it."""
    hold = idle_seconds if held_seconds is None else max(idle_seconds, held_seconds)
    return [float(r["last_received_at"]) + (hold if r["series_uid"] in held else idle_seconds) for r in rows]
