"""The PACS hook's audit records in the shared tamper-evident trail (:mod:`medai.report.audit`).

The records themselves are written by the queue, in the transaction that finishes a job, so there is
exactly one per job whatever crashes. :class:`AuditLog` copies the ones not yet in the trail, in sequence
order, each appended under the trail's lock and fsynced: after a crash the next start appends what is missing
(the trail cuts a torn last line first). A record names the series and study (UIDs only: no patient names or
IDs), the calling AE titles (``who``), the number of instances, the pixel data's hash, the model id and sha256,
the code version, the outcome, the result objects' UIDs, each destination with its attempts and delivery time,
and the times of every step; ``queue_seq`` is the queue's sequence number of the record.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from medai.pacs.queue import JobQueue
from medai.report.audit import AuditTrail, code_version

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)

#: ``source`` of the PACS hook's records in the trail.
SOURCE = "pacs"


class AuditLog:
    """The queue's audit table, appended to a hash-chained trail (default ``SPOOL/audit.jsonl``).

    Example:
        >>> AuditLog(spool.audit_log).sync(queue)  # doctest: +SKIP
        2
    """

    def __init__(self, path: str | Path) -> None:
        self.trail = AuditTrail(path)
        self.path = self.trail.path
        self._lock = threading.Lock()
        self._last_seq = max(
            (int(r.get("queue_seq") or 0) for r in self.trail.records() if r.get("source") == SOURCE), default=0
        )

    @staticmethod
    def _fields(seq: int, record: dict[str, Any]) -> dict[str, Any]:
        who = ",".join(record.get("calling_ae") or []) or "?"
        return {
            "event": "scoring",
            "source": SOURCE,
            "who": f"AE {who}",
            "queue_seq": seq,
            "code_version": code_version(),
            **record,
        }

    def sync(self, queue: JobQueue) -> int:
        """Append the queue's audit records not yet in the trail; returns how many were written."""
        with self._lock:
            records = queue.audit_records(self._last_seq)
            for seq, record in records:
                self.trail.append(self._fields(seq, record))
                self._last_seq = seq
            return len(records)
