"""``medai pacs status``: the queue of a spool, per series, read-only (safe while the service runs).

A summary line counts the series by state (``receiving``, ``waiting``: complete and not yet picked up,
``scoring``, ``sending``, ``sent``, ``failed``) and the instances received; then one line per job with its
series UID, instances, state, result or reason, and each destination's state and attempts.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from medai.errors import ConfigError
from medai.pacs.queue import JobQueue, JobState

__all__ = ["WAITING", "format_status", "read_status"]

#: The state shown for a series that is complete (idle long enough) but not yet picked up by the worker.
WAITING = "waiting"


def read_status(spool: str | Path, *, idle_seconds: float | None = None) -> dict[str, Any]:
    """The queue of ``spool`` as a JSON-ready dictionary: ``counts`` by state and ``jobs`` newest first.

    Args:
        spool: the service's spool folder.
        idle_seconds: the service's idle time; with it, complete series still queued show as ``waiting``.

    Raises:
        ConfigError: ``spool`` holds no queue.
    """
    database = Path(spool) / "queue.sqlite3"
    if not database.is_file():
        raise ConfigError(f"spool must be the folder of a medai pacs service (with queue.sqlite3), not {str(spool)!r}")
    queue = JobQueue(database, read_only=True)
    try:
        jobs = queue.jobs_overview()
    finally:
        queue.close()
    now = time.time()
    rows = []
    for job in jobs:
        state = job["state"]
        if state == JobState.RECEIVING and idle_seconds is not None and now - job["last_received_at"] >= idle_seconds:
            state = WAITING
        rows.append(
            {
                "job": job["id"],
                "series_uid": job["series_uid"],
                "state": state,
                "received": job["received"],
                "series_instances": job["series_instances"],
                "outcome": job["outcome"],
                "label": job["label"],
                "reason": job["reason"],
                "message": job["message"],
                "attempts": job["attempts"],
                "deliveries": job["deliveries"] or "",
                "model_id": job["model_id"],
            }
        )
    counts = Counter(r["state"] for r in rows)
    summary = {s: counts.get(s, 0) for s in ("receiving", WAITING, "scoring", "sending", "sent", "failed")}
    return {"counts": summary, "instances": sum(r["received"] for r in rows), "jobs": rows}


def format_status(status: dict[str, Any]) -> str:
    """Text for a person: the counts, then one line per job."""
    counts = status["counts"]
    lines = [
        f"series: {', '.join(f'{n} {state}' for state, n in counts.items())}; {status['instances']} instances received"
    ]
    for row in status["jobs"]:
        result = row["label"] or ""
        if row["reason"]:
            result = f"{row['outcome'] or 'failed'}: {row['reason']}" + (
                f" ({row['message']})" if row["message"] else ""
            )
        lines.append(
            f"job {row['job']:>5}  {row['series_uid']}  {row['received']:>4} inst  {row['state']:<9}  "
            f"{result}  {row['deliveries']}".rstrip()
        )
    lines.append("Results are for research use only, not for diagnosis.")
    return "\n".join(lines)
