"""The durable spool: received instances and result objects on disk, each written atomically.

Layout under the spool folder::

    queue.sqlite3 (+ -wal, -shm)    the job queue (medai.pacs.queue)
    audit.jsonl                     one line per finished job (medai.pacs.audit)
    instances/SERIES_UID/SOP_UID.dcm   received instances, exactly the bytes the peer sent (with file meta)
    results/JOB_ID/KIND-N.dcm       result objects of a job (sr-1, sc-1.., seg-1)
    tmp/                            files being written; anything left here after a crash is garbage

A file is written to ``tmp/``, flushed and fsynced, renamed into place and its folder fsynced: once
:meth:`Spool.write_instance` returns, the instance survives a crash or a power cut, and a reader never sees
half a file. UIDs become file names only after they are checked to be UIDs (digits and dots), so a peer
cannot write outside the spool.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import pydicom

__all__ = ["Spool", "is_uid"]

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(text: str) -> bool:
    """Whether ``text`` is a syntactically valid DICOM UID (digits and dots, at most 64 characters).

    Example:
        >>> is_uid("1.2.840.10008.5.1.4.1.1.2"), is_uid("../etc")
        (True, False)
    """
    return 0 < len(text) <= 64 and bool(_UID.match(text))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool folder (created with its subfolders).

    Example:
        >>> spool = Spool(tmp_path / "spool")  # doctest: +SKIP
        >>> spool.write_instance(series_uid, sop_uid, data)  # doctest: +SKIP
        PosixPath('.../instances/1.2.3/1.2.3.4.dcm')
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.instances = self.root / "instances"
        self.results = self.root / "results"
        self.tmp = self.root / "tmp"
        for folder in (self.root, self.instances, self.results, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def database(self) -> Path:
        return self.root / "queue.sqlite3"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    def free_bytes(self) -> int:
        """Free space on the spool's file system, in bytes (for unprivileged users)."""
        return int(shutil.disk_usage(self.root).free)

    def clear_tmp(self) -> int:
        """Delete what a crash left in ``tmp/`` (never acknowledged); returns the number of files removed."""
        removed = 0
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def _write_atomic(self, data: bytes, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return target

    def instance_path(self, series_uid: str, sop_uid: str) -> Path:
        if not (is_uid(series_uid) and is_uid(sop_uid)):
            raise ValueError(f"series and SOP instance UIDs must be DICOM UIDs, not {series_uid!r} and {sop_uid!r}")
        return self.instances / series_uid / f"{sop_uid}.dcm"

    def write_instance(self, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Store one received instance (its encoded bytes with file meta) durably; returns its path.

        Raises:
            ValueError: a UID that is not a UID.
            OSError: the disk is full or unwritable.
        """
        return self._write_atomic(data, self.instance_path(series_uid, sop_uid))

    def write_result(self, job_id: int, name: str, dataset: pydicom.Dataset) -> Path:
        """Store one result object of a job durably as a DICOM file (``results/JOB_ID/NAME.dcm``)."""
        from io import BytesIO

        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return self._write_atomic(buffer.getvalue(), self.results / str(job_id) / f"{name}.dcm")

    def clear_results(self, job_id: int) -> None:
        """Remove a job's result files (before it is scored again after an interruption)."""
        shutil.rmtree(self.results / str(job_id), ignore_errors=True)

    def remove_series(self, series_uid: str) -> None:
        """Delete a series' received instances (retention)."""
        if is_uid(series_uid):
            shutil.rmtree(self.instances / series_uid, ignore_errors=True)
