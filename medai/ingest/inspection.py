"""``medai inspect PATH``: what is in a folder, which series would be scored, and its QC report.

The report is built as plain data (:func:`inspect_path`), then printed as
text or JSON by :func:`run_inspect_cli`. Exit code 0 when every study found
has a selected series that passed the QC gate, 1 otherwise (including "no
DICOM series found").
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medai.errors import InvalidSeriesError, MedaiError
from medai.ingest.discovery import find_series
from medai.ingest.load import check_series, load_series
from medai.ingest.qc import DEFAULT_RULES, SelectionRules, select_per_study
from medai.ingest.sources import SeriesInfo

__all__ = ["inspect_path", "run_inspect_cli"]

log = logging.getLogger(__name__)


def _short(uid: str) -> str:
    return uid if len(uid) <= 16 else "…" + uid[-15:]


def _series_row(info: SeriesInfo) -> dict[str, Any]:
    return {
        "series_uid": info.series_uid,
        "study_uid": info.study_uid,
        "modality": info.modality,
        "series_number": info.series_number,
        "description": info.series_description,
        "image_type": list(info.image_type),
        "n_instances": info.n_instances,
        "n_slices": info.n_slices,
        "slice_thickness_mm": info.slice_thickness_mm,
        "convolution_kernel": info.convolution_kernel,
        "coverage_mm": round(info.coverage_mm, 2),
    }


def inspect_path(path: str | Path, *, rules: SelectionRules = DEFAULT_RULES, load: bool = True) -> dict[str, Any]:
    """Find, select and (with ``load``) load and QC the series under ``path``.

    Returns:
        A JSON-ready dict: ``series``, ``volumes`` (NIfTI files), ``skipped``, ``studies`` (selection,
        rejections and QC per study), ``ok`` and, on failure, ``error``.

    Example:
        >>> import tempfile
        >>> inspect_path(tempfile.mkdtemp())["ok"]
        False
    """
    report: dict[str, Any] = {
        "path": str(path),
        "series": [],
        "volumes": [],
        "skipped": [],
        "studies": [],
        "ok": False,
    }
    try:
        found = find_series(path)
    except MedaiError as exc:
        report["error"] = str(exc)
        return report
    report["series"] = [_series_row(s) for s in found]
    report["skipped"] = [{"file": str(s.source), "reason": s.reason} for s in found.skipped]
    report["volumes"] = [str(p) for p in found.volumes]
    if not found and found.volumes:
        report["ok"] = True  # NIfTI volumes are scored as they are (no DICOM header to check)
        return report
    if not found:
        report["error"] = f"no DICOM series found under {str(path)!r}"
        return report
    all_ok = True
    for study_uid, selection in select_per_study(found, rules=rules).items():
        study: dict[str, Any] = {
            "study_uid": study_uid,
            "selected": selection.selected.series_uid if selection.selected else None,
            "candidates": [s.series_uid for s in selection.candidates],
            "rejected": [
                {"series_uid": r.series.series_uid, "reason": r.reason.value, "message": r.message}
                for r in selection.rejected
            ],
            "qc": None,
            "error": None,
        }
        if selection.selected is None:
            study["error"] = {"reason": "no_series_selected", "message": "no series of this study can be scored"}
            all_ok = False
        elif load:
            try:
                qc = check_series(selection.selected, rules=rules).as_dict()
                volume = load_series(selection.selected, rules=rules)
                qc.update(
                    shape=list(volume.shape),
                    dtype=str(volume.hu.dtype),
                    hu_min=float(np.min(volume.hu)),
                    hu_max=float(np.max(volume.hu)),
                )
                study["qc"] = qc
            except InvalidSeriesError as exc:
                study["error"] = {"reason": exc.reason.value, "message": str(exc)}
                all_ok = False
            except MedaiError as exc:
                study["error"] = {"reason": "error", "message": str(exc)}
                all_ok = False
        report["studies"].append(study)
    report["ok"] = all_ok
    return report


def _describe(row: dict[str, Any]) -> str:
    number = "" if row["series_number"] is None else f"#{row['series_number']} "
    return f"{_short(row['series_uid'])} {number}{row['description'] or '(no description)'}"


def _print_text(report: dict[str, Any]) -> None:
    series = report["series"]
    by_uid = {row["series_uid"]: row for row in series}
    n_studies = len({row["study_uid"] for row in series})
    print(f"{report['path']}: {len(series)} series in {n_studies} studies, {len(report['skipped'])} files skipped")
    if series:
        print(f"  {'SERIES':17s} {'MOD':4s} {'#':>4s}  {'DESCRIPTION':28s} {'SLICES':>6s} {'THICK':>6s}  KERNEL")
        for row in series:
            thick = f"{row['slice_thickness_mm']:.2f}" if row["slice_thickness_mm"] else "-"
            number = "" if row["series_number"] is None else str(row["series_number"])
            print(
                f"  {_short(row['series_uid']):17s} {row['modality'][:4]:4s} {number:>4s}  "
                f"{row['description'][:28]:28s} {row['n_slices']:6d} {thick:>6s}  {row['convolution_kernel'] or '-'}"
            )
    if report["volumes"]:
        print(f"NIfTI volumes (scored as they are; no DICOM header to check): {len(report['volumes'])}")
        for volume in report["volumes"]:
            print(f"  {volume}")
    if report["skipped"]:
        print("Skipped files:")
        for item in report["skipped"]:
            print(f"  {item['file']}: {item['reason']}")
    if "error" in report:
        print(f"medai: {report['error']}")
    for study in report["studies"]:
        print(f"Study {study['study_uid']}:")
        if study["selected"]:
            row = by_uid[study["selected"]]
            print(f"  selected for scoring: {row['series_uid']} {_describe(row)}")
        else:
            print("  selected for scoring: none")
        for rejection in study["rejected"]:
            row = by_uid[rejection["series_uid"]]
            print(f"  rejected {_describe(row)} [{rejection['reason']}]: {rejection['message']}")
        qc = study["qc"]
        if qc is not None:
            spacing = ", ".join(f"{s:.3g}" for s in qc["spacing_mm"])
            print(
                f"  QC passed: shape {'x'.join(map(str, qc['shape']))} {qc['dtype']}, spacing ({spacing}) mm, "
                f"coverage {qc['coverage_mm']:.1f} mm, tilt {qc['tilt_deg']:.2f} deg, "
                f"max step deviation {qc['max_step_deviation_mm']:.3f} mm, HU {qc['hu_min']:.0f}..{qc['hu_max']:.0f}"
            )
        if study["error"] is not None:
            print(f"  QC failed [{study['error']['reason']}]: {study['error']['message']}")
    print("OK: a series passed QC in every study" if report["ok"] else "NOT OK: nothing to score (see above)")


def run_inspect_cli(args: argparse.Namespace) -> int:
    """Handler of ``medai inspect PATH [--json]``; returns the exit code."""
    report = inspect_path(args.path)
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_text(report)
    return 0 if report["ok"] else 1
