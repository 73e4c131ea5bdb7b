"""Data manifests: which CT, which label, which patient, which split.

A manifest is a CSV file with a header row:

* ``path`` (required): DICOM series folder, zip archive, or NIfTI file,
  relative to the manifest's folder (absolute paths are kept).
* ``label`` (required): one of :data:`CLASS_NAMES`.
* ``patient_id`` (optional): rows of one patient always share a split. When
  empty, each row counts as its own patient (a warning is logged).
* ``split`` (optional): ``train``, ``val`` or ``test``; empty rows are assigned
  by :func:`assign_splits`.
* any other column (site, scanner, slice_thickness, kernel, ...) is kept as a
  string in :attr:`ManifestRow.extra` for subgroup analysis.
"""

from __future__ import annotations

import csv
import enum
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medai.errors import ManifestError
from medai.labels import CLASS_NAMES
from medai.volume import Volume

__all__ = [
    "ManifestError",
    "ManifestRow",
    "Split",
    "assign_splits",
    "check_patient_splits",
    "load_case",
    "read_manifest",
    "write_manifest",
]

log = logging.getLogger(__name__)

_REQUIRED = ("path", "label")
_KNOWN = ("path", "label", "patient_id", "split")


class Split(enum.StrEnum):
    """Dataset split of a manifest row."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ManifestRow:
    """One case of a manifest.

    Attributes:
        path: absolute path to the DICOM folder, zip or NIfTI file.
        label: class name, one of :data:`CLASS_NAMES`.
        patient_id: patient key (``""`` when the manifest has none).
        split: assigned split, or ``None`` before :func:`assign_splits`.
        extra: other columns, as strings.
        row_number: line number in the CSV (header is line 1), for messages.
    """

    path: Path
    label: str
    patient_id: str = ""
    split: Split | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    row_number: int = 0

    @property
    def label_index(self) -> int:
        """Index of :attr:`label` in :data:`CLASS_NAMES`."""
        return CLASS_NAMES.index(self.label)

    @property
    def patient_key(self) -> str:
        """``patient_id``, or the path when there is none (each case its own patient)."""
        return self.patient_id or str(self.path)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and check a manifest CSV.

    Raises:
        ManifestError: missing file or columns, empty path, unknown label or split
            (the row number and the allowed values are in the message), or a
            patient in two splits.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> with open(os.path.join(folder, "m.csv"), "w") as f:
        ...     _ = f.write("path,label,patient_id,site\\na.nii.gz,covid19,p1,A\\n")
        >>> rows = read_manifest(os.path.join(folder, "m.csv"))
        >>> rows[0].label, rows[0].split, dict(rows[0].extra)
        ('covid19', None, {'site': 'A'})
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest must be an existing CSV file, not {str(path)!r}")
    base = path.resolve().parent
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in _REQUIRED if c not in columns]
        if missing:
            raise ManifestError(f"{path}: manifest must have columns {list(_REQUIRED)}, missing {missing}")
        rows: list[ManifestRow] = []
        for line, raw in enumerate(reader, start=2):
            rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not rec["path"]:
                raise ManifestError(f"{path} row {line}: path must not be empty")
            label = rec["label"]
            if label not in CLASS_NAMES:
                raise ManifestError(f"{path} row {line}: label must be one of {list(CLASS_NAMES)}, not {label!r}")
            split_text = rec.get("split", "")
            try:
                split = Split(split_text) if split_text else None
            except ValueError:
                allowed = [s.value for s in Split]
                raise ManifestError(
                    f"{path} row {line}: split must be one of {allowed} or empty, not {split_text!r}"
                ) from None
            case_path = Path(rec["path"])
            rows.append(
                ManifestRow(
                    path=case_path if case_path.is_absolute() else base / case_path,
                    label=label,
                    patient_id=rec.get("patient_id", ""),
                    split=split,
                    extra={k: v for k, v in rec.items() if k not in _KNOWN},
                    row_number=line,
                )
            )
    if not rows:
        raise ManifestError(f"{path}: manifest must list at least one case, not none")
    check_patient_splits(rows)
    return rows


def check_patient_splits(rows: Sequence[ManifestRow]) -> None:
    """Raise :class:`ManifestError` if one patient has rows in two splits (unassigned rows are ignored)."""
    seen: dict[str, tuple[Split, int]] = {}
    for row in rows:
        if row.split is None or not row.patient_id:
            continue
        first = seen.setdefault(row.patient_id, (row.split, row.row_number))
        if first[0] is not row.split:
            raise ManifestError(
                f"patient {row.patient_id!r} must be in one split, not {first[0].value} (row {first[1]}) "
                f"and {row.split.value} (row {row.row_number})"
            )


def assign_splits(
    rows: Sequence[ManifestRow], *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> list[ManifestRow]:
    """Give every row without a split one, at patient level and stratified by label.

    Rows that already have a split keep it; other rows of the same patient
    follow it. The remaining patients are shuffled (seeded) within each label
    (a patient's label is that of its first row) and cut into test, val and
    train by the fractions.

    Raises:
        ManifestError: a patient already spans two splits.
        ValueError: fractions outside [0, 1) or summing to 1 or more.

    Example:
        >>> rows = [ManifestRow(Path(f"c{i}"), "normal", patient_id=f"p{i // 2}") for i in range(20)]
        >>> out = assign_splits(rows, val_fraction=0.2, test_fraction=0.2, seed=0)
        >>> sorted({r.split.value for r in out})
        ['test', 'train', 'val']
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in [0, 1) with sum < 1, not {val_fraction} and {test_fraction}"
        )
    check_patient_splits(rows)
    if any(not r.patient_id for r in rows if r.split is None):
        log.warning("rows without patient_id are treated as separate patients; splits may leak if they are not")
    fixed: dict[str, Split] = {r.patient_key: r.split for r in rows if r.split is not None}
    patients_by_label: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set(fixed)
    for r in rows:
        if r.patient_key not in seen:
            seen.add(r.patient_key)
            patients_by_label[r.label].append(r.patient_key)
    rng = np.random.default_rng(seed)
    chosen: dict[str, Split] = dict(fixed)
    for label in sorted(patients_by_label):
        keys = sorted(patients_by_label[label])
        rng.shuffle(keys)
        n_test = round(len(keys) * test_fraction)
        n_val = round(len(keys) * val_fraction)
        for i, key in enumerate(keys):
            chosen[key] = Split.TEST if i < n_test else Split.VAL if i < n_test + n_val else Split.TRAIN
    out = [replace(r, split=chosen[r.patient_key]) for r in rows]
    check_patient_splits(out)
    return out


def write_manifest(rows: Sequence[ManifestRow], path: str | Path) -> None:
    """Write rows as a manifest CSV, paths relative to its folder where possible."""
    path = Path(path)
    base = path.resolve().parent
    extras = sorted({k for r in rows for k in r.extra})
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*_KNOWN, *extras])
        for r in rows:
            try:
                rel = str(r.path.resolve().relative_to(base))
            except ValueError:
                rel = str(r.path)
            writer.writerow(
                [rel, r.label, r.patient_id, r.split.value if r.split else "", *[r.extra.get(k, "") for k in extras]]
            )


def load_case(row: ManifestRow) -> Volume:
    """Load the CT volume of a manifest row: NIfTI via :func:`medai.ingest.nifti.read_nifti`, else DICOM.

    Raises:
        InvalidSeriesError, NoSeriesError: from the readers.
    """
    from medai.ingest.nifti import is_nifti_name, read_nifti

    if is_nifti_name(row.path):
        return read_nifti(row.path)
    from medai.ingest.load import load_series

    return load_series(row.path)
