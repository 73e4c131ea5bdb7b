"""The audit log of the PACS hook: one JSON line per finished job in ``SPOOL/audit.jsonl``.

The records themselves are written by the queue, in the transaction that finishes a job, so there is
exactly one per job whatever crashes. This module copies the ones not yet in the file, in sequence order,
each line fsynced: after a crash the next start appends what is missing (a torn last line is cut first).
A record names the series and study (UIDs only: no patient names or IDs), the calling AE titles, the number
of instances, the model id and sha256, the outcome, the result objects' UIDs, each destination with its
attempts and delivery time, and the times of every step.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from medai.pacs.queue import JobQueue

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)


class AuditLog:
    """``audit.jsonl``, appended from the queue's audit table.

    Example:
        >>> AuditLog(spool.audit_log).sync(queue)  # doctest: +SKIP
        2
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last_seq = self._repair_and_read_last_seq()

    def _repair_and_read_last_seq(self) -> int:
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a torn last line from a crash: cut it, it is rewritten
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
                os.fsync(handle.fileno())
            data = data[:cut]
            log.warning("audit log %s ended in a torn line; cut it (it is written again)", self.path)
        lines = data.splitlines()
        if not lines:
            return 0
        return int(json.loads(lines[-1])["seq"])

    def sync(self, queue: JobQueue) -> int:
        """Append the queue's audit records not yet in the file; returns how many were written."""
        with self._lock:
            records = queue.audit_records(self._last_seq)
            if not records:
                return 0
            with open(self.path, "a", encoding="utf-8") as handle:
                for seq, record in records:
                    handle.write(json.dumps({"seq": seq, **record}, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._last_seq = records[-1][0]
            return len(records)
