"""Compare ``medai deidentify`` with dicognito (a maintained de-identifier) on the same phantom series.

Writes a phantom CT series carrying a fake identity in the attributes a real export has, de-identifies one
instance with each tool and prints, per attribute, the original, dicognito's value and medai's value, then
which of the fake identity strings each output still contains. docs/deidentification.md discusses the
differences; ``tests/report/test_deidentify.py`` runs this comparison and checks that what the document says
still holds.

    python scripts/deid_compare.py            # the table, as Markdown
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from medai.phantoms import synthetic
from medai.phantoms.ctwriter import write_ct_series
from medai.report.deidentify import Deidentifier

#: A fake identity in the attributes a hospital export carries (a name inside a description too).
FAKE_IDENTITY = {
    "PatientName": "Testpatient^Hildegard",
    "PatientID": "MRN-90412-TEST",
    "PatientBirthDate": "19510203",
    "OtherPatientIDs": "OTHER-4471",
    "PatientAddress": "12 Testweg Berlin",
    "AccessionNumber": "ACC-778812",
    "InstitutionName": "St Hildegard Hospital",
    "InstitutionAddress": "Klosterweg 1",
    "ReferringPhysicianName": "Drsmith^Anna",
    "OperatorsName": "Opname^Bob",
    "StationName": "CTSTATION7",
    "DeviceSerialNumber": "SN-55512",
    "StudyDescription": "CT THORAX Hildegard",
    "StudyDate": "20240305",
    "StudyTime": "101500",
    "PatientSex": "F",
    "PatientAge": "072Y",
}
#: Strings that must not survive de-identification (the identity's distinctive parts).
IDENTITY_STRINGS = ("Testpatient", "Hildegard", "MRN-90412", "19510203", "OTHER-4471", "Testweg", "ACC-778812")
IDENTITY_STRINGS += ("Drsmith", "Opname", "CTSTATION7", "SN-55512", "Klosterweg", "20240305")


@dataclass(frozen=True)
class Row:
    """One attribute: its original value and what each tool made of it (``None``: removed)."""

    keyword: str
    original: str
    dicognito: str | None
    medai: str | None


def write_identified_series(folder: Path, *, slices: int = 24) -> list[Path]:
    """A small phantom CT series carrying :data:`FAKE_IDENTITY` and a private attribute holding the name."""
    acq = synthetic.Acquisition(matrix=64, pixel_spacing_mm=6.0, slice_thickness_mm=8.0, n_slices=slices)
    phantom = synthetic.generate(synthetic.PhantomSpec("covid19", 0.3, 3, acq), fast=True)
    paths = write_ct_series(phantom.volume, folder, attributes=FAKE_IDENTITY)
    for path in paths:
        ds = pydicom.dcmread(path)
        block = ds.private_block(0x0009, "HOSPITAL PRIVATE", create=True)
        block.add_new(0x01, "LO", FAKE_IDENTITY["PatientName"])
        ds.save_as(path)
    return paths


def _value(ds: pydicom.Dataset, keyword: str) -> str | None:
    if keyword not in ds:
        return None
    value = ds[keyword].value
    return "" if value is None else str(value)


def compare(folder: Path) -> tuple[list[Row], dict[str, list[str]]]:
    """The per-attribute table for one instance of ``folder``, and the identity strings each output kept."""
    from dicognito.anonymizer import Anonymizer

    path = sorted(folder.glob("*.dcm"))[0]
    original = pydicom.dcmread(path)
    theirs = pydicom.dcmread(path)
    Anonymizer().anonymize(theirs)
    ours = Deidentifier().dataset(pydicom.dcmread(path))
    rows = []
    for elem in original:
        if elem.tag.group == 0x7FE0 or elem.tag.is_private or not elem.keyword:
            continue
        before, a, b = str(elem.value), _value(theirs, elem.keyword), _value(ours, elem.keyword)
        if a != before or b != before:
            rows.append(Row(elem.keyword, before, a, b))
    kept = {}
    for name, ds in (("dicognito", theirs), ("medai", ours)):
        text = str(ds) + "".join(str(e.value) for e in ds.iterall() if e.tag.is_private)
        kept[name] = [s for s in IDENTITY_STRINGS if s in text]
    return rows, kept


def markdown(rows: Sequence[Row], kept: dict[str, list[str]]) -> str:
    """The comparison as a Markdown table and a line per tool on the identity strings left."""
    lines = ["| attribute | original | dicognito 0.19 | medai |", "|---|---|---|---|"]
    for r in rows:
        shown = [v if v is not None else "(removed)" for v in (r.original, r.dicognito, r.medai)]
        shown = [v[:28] + "..." if len(v) > 31 else (v or "(empty)") for v in shown]
        lines.append(f"| {r.keyword} | {' | '.join(shown)} |")
    lines.append("")
    for name, strings in kept.items():
        lines.append(f"- {name} kept: {', '.join(strings) or 'nothing of the identity'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_identified_series(Path(tmp) / "series")
        print(markdown(*compare(Path(tmp) / "series")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
