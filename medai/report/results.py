"""Result rows of ``medai score`` and their durable, resumable files.

One row per series, the same columns in every format (:data:`COLUMNS`).
:class:`ResultStore` appends rows to CSV or JSONL files with
append + flush + fsync, so a row is on disk when :meth:`ResultStore.append`
returns; a Parquet output is rebuilt from a JSONL journal beside it
(``NAME.parquet.journal.jsonl``) through a temporary file and
:func:`os.replace`, so the Parquet file is always either the previous
complete one or the new complete one. On opening an existing output the
store reads its rows back (for resuming) and cuts a torn last line left by a
killed process.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medai.errors import MedaiError

if TYPE_CHECKING:
    from medai.inference.classifier import Prediction

__all__ = [
    "COLUMNS",
    "COLUMN_TYPES",
    "ResultFormat",
    "ResultStore",
    "RowStatus",
    "ScoreReason",
    "coerce_row",
    "latest_rows",
    "prediction_fields",
    "read_results",
    "row_key",
]

log = logging.getLogger(__name__)


class RowStatus(enum.StrEnum):
    """Outcome of one series."""

    OK = "ok"  # scored
    ERROR = "error"  # could not be scored: see reason and message
    SKIPPED = "skipped"  # not scored on purpose: another series of the study was selected


class ScoreReason(enum.StrEnum):
    """Reason codes of rows that are not QC failures (those use :class:`medai.errors.QCReason` values)."""

    NOT_SELECTED = "not_selected"  # acceptable, but another series of the study ranks higher
    NO_SERIES = "no_series"  # an input holds no DICOM series at all
    MODEL_ERROR = "model_error"  # the model could not be loaded or is not the expected one
    INTERNAL_ERROR = "internal_error"  # a bug or an unexpected failure; see the log
    WORKER_LOST = "worker_lost"  # the process scoring the series died (out of memory?)


class ResultFormat(enum.StrEnum):
    """Output formats, chosen by the output file's extension."""

    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"

    @classmethod
    def for_path(cls, path: str | Path) -> ResultFormat:
        """The format of ``path`` from its extension (``.csv``, ``.jsonl``, ``.parquet``).

        Example:
            >>> ResultFormat.for_path("results.jsonl")
            <ResultFormat.JSONL: 'jsonl'>
        """
        suffix = Path(path).suffix.lower().lstrip(".")
        try:
            return cls(suffix)
        except ValueError:
            raise ValueError(f"output file must end with .csv, .jsonl or .parquet, not {Path(path).name!r}") from None


# medai.quantify.measure.Side x Zone (spelled out to keep this module light; a test checks they agree)
_ZONES = [f"{side}_{zone}_lesion_percent" for side in ("right", "left") for zone in ("upper", "middle", "lower")]

#: Column name -> type (str, float, int, bool) in output order.
COLUMN_TYPES: dict[str, type] = {
    "source": str,  # folder, zip archive or file the series was read from
    "study_uid": str,
    "series_uid": str,
    "accession_number": str,  # pseudonym when pseudonymized
    "patient_id": str,  # pseudonym when pseudonymized
    "patient_name": str,  # empty when pseudonymized
    "pseudonymized": bool,
    "series_number": int,
    "series_description": str,
    "n_slices": int,
    "status": str,  # RowStatus
    "reason": str,  # QCReason or ScoreReason value; empty when ok
    "message": str,  # one line
    "p_normal": float,
    "p_covid19": float,
    "p_other_pneumonia": float,
    "label": str,
    "indeterminate": bool,
    "lesion_percent": float,
    "right_lesion_percent": float,
    "left_lesion_percent": float,
    **dict.fromkeys(_ZONES, float),
    "ggo_percent": float,
    "consolidation_percent": float,
    "lung_volume_ml": float,
    "severity": str,  # CT-0 .. CT-4
    "qc_flags": str,  # ';'-separated
    "model_id": str,
    "load_s": float,
    "preprocess_s": float,
    "inference_s": float,
    "saliency_s": float,
    "quantify_s": float,
    "total_s": float,
    "key_image": str,  # PNG path, when --saliency-dir
    "saliency_nifti": str,  # NIfTI path, when --saliency-nifti
    "worker": str,  # host:pid that scored the series
    "scored_at": str,  # UTC ISO 8601
}
#: Output columns, in order.
COLUMNS: tuple[str, ...] = tuple(COLUMN_TYPES)


def row_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """What a row is about, for resuming: ``(model_id, series UID or source)``.

    Example:
        >>> row_key({"model_id": "m@1", "series_uid": "1.2.3", "source": "a"})
        ('m@1', '1.2.3')
    """
    return str(row.get("model_id") or ""), str(row.get("series_uid") or row.get("source") or "")


def prediction_fields(pred: Prediction) -> dict[str, Any]:
    """The row fields a prediction fills: probabilities, label, severity, percentages, QC flags, stage timings.

    ``medai score`` adds them to a row's identity fields; the viewer's worklist shows them.

    Example:
        >>> prediction_fields(clf.predict(volume))["label"]  # doctest: +SKIP
        'covid19'
    """
    quant = pred.quantification.to_dict()
    out: dict[str, Any] = {f"p_{name}": round(float(p), 6) for name, p in pred.probabilities.items()}
    out.update(
        label=pred.label,
        indeterminate=pred.indeterminate,
        severity=pred.severity.value,
        qc_flags=";".join(pred.qc_flags),
    )
    for name, value in quant.items():
        if name.endswith("_percent") or name == "lung_volume_ml":
            out[name] = round(float(value), 4)
    for stage in ("preprocess", "inference", "saliency", "quantify"):
        out[f"{stage}_s"] = round(float(pred.timings.get(stage, 0.0)), 4)
    return out


def _convert(value: Any, kind: type) -> Any:
    if value is None or value == "":
        return None
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1"):
                return True
            if value.lower() in ("false", "0"):
                return False
            raise ValueError(f"boolean must be true or false, not {value!r}")
        return bool(value)
    if kind is float:
        number = float(value)
        return None if math.isnan(number) else number
    if kind is int:
        return int(float(value))
    return str(value)


def coerce_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with every column of :data:`COLUMNS`, typed (missing or empty values become ``None``).

    Example:
        >>> coerce_row({"n_slices": "120", "p_covid19": "0.25", "status": "ok"})["n_slices"]
        120
    """
    return {name: _convert(row.get(name), kind) for name, kind in COLUMN_TYPES.items()}


def latest_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last row of each :func:`row_key`, in the order the keys first appeared."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = row_key(row)
        latest.pop(key, None)
        latest[key] = dict(row)
    return list(latest.values())


def _csv_text(row: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    values = []
    for name in COLUMNS:
        value = row.get(name)
        if value is None:
            values.append("")
        elif isinstance(value, bool):
            values.append("true" if value else "false")
        else:
            values.append(" ".join(str(value).split()) if isinstance(value, str) else value)
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _json_text(row: Mapping[str, Any]) -> str:
    clean = {name: row.get(name) for name in COLUMNS}
    for name, value in clean.items():
        if isinstance(value, float) and not math.isfinite(value):
            clean[name] = None
        elif isinstance(value, str):
            clean[name] = " ".join(value.split())  # one line, as in CSV
    return json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n"


def _cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; returns the number of bytes dropped."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        block = 1 << 16
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MedaiError(f"{path} line {number} must be a JSON object, not {line[:60]!r} ({exc})") from exc
    return rows


def _parse_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        if tuple(reader.fieldnames) != COLUMNS:
            raise MedaiError(
                f"{path} must have the columns of this medai version to be resumed, not {len(reader.fieldnames)} "
                f"other columns; write to a new --out file"
            )
        return [dict(row) for row in reader]


def _write_parquet(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
    schema = pa.schema([(name, kinds[kind]) for name, kind in COLUMN_TYPES.items()])
    typed = [coerce_row(r) for r in rows]
    table = pa.Table.from_pylist(typed, schema=schema)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a results file of any format as typed rows (see :func:`coerce_row`).

    A Parquet output that was interrupted before it was rebuilt is read from
    its journal when the journal has more rows.

    Raises:
        MedaiError: the file is missing or not a results file.

    Example:
        >>> read_results("results.csv")[0]["status"]  # doctest: +SKIP
        'ok'
    """
    path = Path(path)
    fmt = ResultFormat.for_path(path)
    if fmt is ResultFormat.PARQUET:
        journal = ResultStore.journal_path(path)
        rows: list[dict[str, Any]] = []
        if path.is_file():
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        if journal.is_file():
            journal_rows = _parse_jsonl(journal)
            if len(journal_rows) > len(rows):
                rows = journal_rows
        if not rows and not path.is_file():
            raise MedaiError(f"results file must exist, not {str(path)!r}")
        return [coerce_row(r) for r in rows]
    if not path.is_file():
        raise MedaiError(f"results file must exist, not {str(path)!r}")
    raw = _parse_csv(path) if fmt is ResultFormat.CSV else _parse_jsonl(path)
    return [coerce_row(r) for r in raw]


class ResultStore:
    """An output file that rows are appended to durably, and read back from on resume.

    Use as a context manager; :meth:`close` rebuilds the Parquet file.

    Args:
        path: ``.csv``, ``.jsonl`` or ``.parquet`` file (created with its folder).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
        >>> with ResultStore(path) as store:
        ...     store.append({"series_uid": "1.2", "status": "ok", "model_id": "m"})
        >>> [r["series_uid"] for r in ResultStore(path).existing]
        ['1.2']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = ResultFormat.for_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        #: The file rows are appended to: the output itself, or the journal of a Parquet output.
        self.append_path = self.journal_path(self.path) if self.format is ResultFormat.PARQUET else self.path
        #: Rows already in the output when it was opened (typed), oldest first.
        self.existing: list[dict[str, Any]] = self._recover()
        self._dirty = False
        self._file = open(self.append_path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        if self._file.tell() == 0 and self.format is ResultFormat.CSV:
            self._write(",".join(COLUMNS) + "\n")

    @staticmethod
    def journal_path(path: Path) -> Path:
        """The JSONL journal beside a Parquet output."""
        return path.with_name(path.name + ".journal.jsonl")

    def _recover(self) -> list[dict[str, Any]]:
        if self.format is ResultFormat.PARQUET and not self.append_path.exists() and self.path.is_file():
            # a finished Parquet output without journal (removed, or copied alone): seed the journal from it
            rows = read_results(self.path)
            with open(self.append_path, "w", encoding="utf-8") as f:
                f.writelines(_json_text(r) for r in rows)
                f.flush()
                os.fsync(f.fileno())
            return rows
        if not self.append_path.exists():
            return []
        dropped = _cut_torn_tail(self.append_path)
        if dropped:
            log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", self.append_path, dropped)
        raw = _parse_csv(self.append_path) if self.format is ResultFormat.CSV else _parse_jsonl(self.append_path)
        return [coerce_row(r) for r in raw]

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row; it is on disk (fsync) when this returns."""
        self._write(_csv_text(row) if self.format is ResultFormat.CSV else _json_text(row))
        self._dirty = True

    def compact(self) -> None:
        """Rewrite the output keeping only the last row of each :func:`row_key` (atomic; used after ``--force``)."""
        self._file.close()
        rows = latest_rows(read_results(self.path) if self.format is not ResultFormat.PARQUET else self._journal())
        temp = self.append_path.with_name(f".{self.append_path.name}.{os.getpid()}.tmp")
        with open(temp, "w", encoding="utf-8", newline="") as f:
            if self.format is ResultFormat.CSV:
                f.write(",".join(COLUMNS) + "\n")
            f.writelines(_csv_text(r) if self.format is ResultFormat.CSV else _json_text(r) for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.append_path)
        _fsync_dir(self.append_path.parent)
        self._file = open(self.append_path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        self._dirty = True

    def _journal(self) -> list[dict[str, Any]]:
        return [coerce_row(r) for r in _parse_jsonl(self.append_path)]

    def close(self) -> None:
        """Close the file; for Parquet, rebuild the ``.parquet`` file from the journal (atomically)."""
        if self._file.closed:
            return
        self._file.close()
        if self.format is ResultFormat.PARQUET and (self._dirty or not self.path.exists()):
            _write_parquet(self._journal(), self.path)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
