"""Recognise medai's own outputs, so that discovery leaves them out of the inputs.

A user who writes ``medai score TREE --out TREE/results.csv --saliency-dir TREE/keys`` and scores the tree
again must not see the results file reported as unusable input, nor the saliency maps scored as CT volumes.
Each output is recognised by its content, never by its name alone (a name can be anything a user chose):

* results files of ``medai score``: a CSV whose header or a JSONL whose first record has medai's result
  columns (``status``, ``model_id``, ``series_uid``), a Parquet file whose schema names them;
* audit logs (:mod:`medai.report.audit`): JSON lines with ``hash`` and ``prev_hash``, and their ``.head`` file;
* key images: PNG files whose ``Software`` text chunk is ``medai``;
* saliency maps: NIfTI files whose ``descrip`` header field starts with :data:`SALIENCY_DESCRIPTION`;
* a PACS spool: a folder holding ``queue.sqlite3`` beside ``instances/`` (pruned whole).

Only the first bytes of a file are read (the last 64 KiB of a Parquet file, where its schema is).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from pathlib import Path

__all__ = ["SALIENCY_DESCRIPTION", "is_spool_folder", "medai_output_kind"]

log = logging.getLogger(__name__)

#: The NIfTI ``descrip`` of a saliency map written by medai (:func:`medai.report.keyimages.write_saliency_nifti`).
SALIENCY_DESCRIPTION = "medai saliency"
_RESULT_COLUMNS = ("status", "model_id", "series_uid")
_AUDIT_KEYS = ("hash", "prev_hash")
_SNIFF_BYTES = 4096
_PARQUET_TAIL = 65536
_NIFTI_DESCRIP = slice(148, 228)  # char descrip[80] in the NIfTI-1 header


def is_spool_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is the spool of ``medai pacs serve`` (its queue and received instances).

    Example:
        >>> import tempfile
        >>> is_spool_folder(tempfile.mkdtemp())
        False
    """
    folder = Path(folder)
    return (folder / "queue.sqlite3").is_file() and (folder / "instances").is_dir()


def _first_line(head: bytes) -> str:
    return head.split(b"\n", 1)[0].decode("utf-8", errors="replace").lstrip("\ufeff").strip()


def _json_keys(line: str) -> set[str]:
    try:
        record = json.loads(line)
    except ValueError:
        return set()
    return set(record) if isinstance(record, dict) else set()


def _text_kind(head: bytes) -> str | None:
    line = _first_line(head)
    if line.startswith("{"):
        keys = _json_keys(line)
        if all(k in keys for k in _AUDIT_KEYS) or "medai_audit_head" in keys:
            return "audit log"
        if all(k in keys for k in _RESULT_COLUMNS):
            return "results file"
        return None
    columns = {c.strip().strip('"') for c in line.split(",")}
    return "results file" if all(c in columns for c in _RESULT_COLUMNS) else None


def _png_kind(head: bytes) -> str | None:
    return "key image" if b"tEXtSoftware\x00medai" in head else None


def _nifti_kind(path: Path, head: bytes) -> str | None:
    try:
        header = gzip.decompress(head[:_SNIFF_BYTES]) if head[:2] == b"\x1f\x8b" else head
    except (OSError, EOFError, zlib.error):
        # a gzip stream cut at the sniff size: decompress what is there
        header = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(head[:_SNIFF_BYTES])
    descrip = header[_NIFTI_DESCRIP].split(b"\x00", 1)[0].decode("ascii", errors="replace")
    return "saliency map" if descrip.startswith(SALIENCY_DESCRIPTION) else None


def _parquet_kind(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.seek(max(0, size - _PARQUET_TAIL))
            tail = handle.read()
    except OSError:
        return None
    return "results file" if all(c.encode() in tail for c in _RESULT_COLUMNS) else None


def medai_output_kind(path: str | Path, head: bytes | None = None) -> str | None:
    """What medai output ``path`` is (``"results file"``, ``"audit log"``, ``"key image"``, ``"saliency map"``),
    or None for anything else.

    Args:
        path: the file.
        head: its first bytes when the caller has read them already (more are read when needed).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "r.csv"
        >>> _ = path.write_text("source,status,reason,model_id,series_uid\\n")
        >>> medai_output_kind(path)
        'results file'
    """
    path = Path(path)
    try:
        if head is None or len(head) < _SNIFF_BYTES:
            with open(path, "rb") as handle:
                head = handle.read(_SNIFF_BYTES)
    except OSError:
        return None
    if head.startswith(b"\x89PNG"):
        return _png_kind(head)
    if head.startswith(b"PAR1"):
        return _parquet_kind(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_kind(path, head)
    if head[:1] in (b"{", b"\xef") or b"," in head[:200]:
        return _text_kind(head)
    return None
