"""Phantoms on disk: DICOM series and NIfTI files with their ground truth, and ``medai synth``.

:func:`write_dicom` writes a phantom of :mod:`medai.phantoms.synthetic` as a CT Image Storage series (any of the
supported transfer syntaxes), :func:`write_nifti` as a NIfTI volume with its lung and lesion masks beside
it; :func:`run_cli` is ``medai synth``, which writes studies and a ``manifest.csv`` in the
:mod:`medai.training.manifest` format.

Every phantom is synthetic: not patient data, not for clinical use.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medai.labels import CLASS_NAMES
from medai.phantoms.synthetic import Phantom, generate, phantom_uid, sample_spec

__all__ = ["MANIFEST_COLUMNS", "run_cli", "write_dicom", "write_nifti"]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "path",
    "label",
    "patient_id",
    "split",
    "acquisition_ranges",
    "severity",
    "lesion_percent",
    "seed",
    "case_id",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "n_slices",
    "noise_hu",
    "kernel",
    "patient_scale",
    "nifti_path",
)


def write_dicom(
    phantom: Phantom,
    folder: str | Path,
    *,
    transfer_syntax: str = "explicit",
    patient_id: str | None = None,
    file_names: list[str] | None = None,
) -> list[Path]:
    """Write the phantom as a CT Image Storage series, one file per slice (``IM00000.dcm`` ...).

    Example:
        >>> import tempfile
        >>> acq = Acquisition(matrix=32, pixel_spacing_mm=12.0, slice_thickness_mm=10.0)
        >>> ph = generate(PhantomSpec("normal", 0.0, seed=1, acquisition=acq), fast=True)
        >>> len(write_dicom(ph, tempfile.mkdtemp())) == ph.volume.shape[0]
        True
    """
    from medai.phantoms.ctwriter import write_ct_series

    attributes = {k: v for k, v in phantom.volume.header.items() if k != "SliceThickness"}
    if patient_id is not None:
        attributes["PatientID"] = patient_id
    attributes["StudyInstanceUID"] = phantom.volume.study_uid
    attributes["SeriesInstanceUID"] = phantom.volume.series_uid
    attributes["FrameOfReferenceUID"] = phantom_uid(phantom.spec, "frame")
    return write_ct_series(
        phantom.volume,
        folder,
        transfer_syntax=transfer_syntax,
        attributes=attributes,
        file_names=file_names,
        slice_thickness_mm=phantom.spec.acquisition.slice_thickness_mm,
    )


def write_nifti(phantom: Phantom, path: str | Path) -> Path:
    """Write the HU image to ``path`` (``.nii.gz``) and the masks beside it as ``*_lung`` and ``*_lesion``.

    The affine maps voxels to RAS+ millimetres (NIfTI convention; LPS with x
    and y negated), so the same voxel has the same physical position as in DICOM.

    Example:
        >>> import tempfile, os
        >>> acq = Acquisition(matrix=32, pixel_spacing_mm=12.0, slice_thickness_mm=10.0)
        >>> ph = generate(PhantomSpec("normal", 0.0, seed=1, acquisition=acq), fast=True)
        >>> write_nifti(ph, os.path.join(tempfile.mkdtemp(), "case.nii.gz")).name
        'case.nii.gz'
    """
    from medai.ingest import nifti

    path = Path(path)
    stem = nifti.nifti_stem(path.name)
    suffix = path.name[len(stem) :] or ".nii.gz"  # kept as given, letter case included
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.parent / f"{stem}{suffix}"
    nifti.write_nifti(phantom.volume, out)
    nifti.write_nifti(phantom.volume.with_array(phantom.lung_mask), path.parent / f"{stem}_lung{suffix}")
    nifti.write_nifti(phantom.volume.with_array(phantom.lesion_mask), path.parent / f"{stem}_lesion{suffix}")
    return out


# --- command line ------------------------------------------------------------------------------------


def run_cli(args: argparse.Namespace) -> int:
    """``medai synth``: write phantom studies and ``manifest.csv`` (paths relative to the manifest).

    The manifest follows :mod:`medai.training.manifest`: ``split`` is empty for cases in
    the training acquisition ranges (assigned later by patient) and ``test``
    for ``--split heldout``; ``acquisition_ranges`` names the ranges used.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    console = Console()
    classes = [c.strip() for c in str(args.classes).split(",") if c.strip()]
    bad = [c for c in classes if c not in CLASS_NAMES]
    if bad or not classes:
        console.print(
            f"medai synth: --classes must be a comma-separated subset of {','.join(CLASS_NAMES)}, not {args.classes!r}"
        )
        return 2
    if args.cases < 1:
        console.print(f"medai synth: --cases must be >= 1, not {args.cases}")
        return 2
    split = getattr(args, "split", "train")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    console.print("[bold]Synthetic phantoms[/bold] (not patient data; research use only)")
    rows = []
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task("generating", total=args.cases)
        for i in range(args.cases):
            spec = sample_spec(rng, label=classes[i % len(classes)], split=split)
            fov = spec.acquisition.matrix * spec.acquisition.pixel_spacing_mm
            acq = replace(spec.acquisition, matrix=args.matrix, pixel_spacing_mm=round(fov / args.matrix, 4))
            if args.slice_thickness is not None:
                acq = replace(acq, slice_thickness_mm=args.slice_thickness)
            if args.slices is not None:
                acq = replace(acq, n_slices=args.slices)
            spec = replace(spec, acquisition=acq)
            phantom = generate(spec, fast=args.matrix <= 192)
            case_id = f"case_{i:04d}"
            nifti_path = ""
            path = ""
            if args.format in ("dicom", "both"):
                write_dicom(phantom, out / case_id, transfer_syntax=args.transfer_syntax)
                path = case_id
            if args.format in ("nifti", "both"):
                write_nifti(phantom, out / "nifti" / f"{case_id}.nii.gz")
                nifti_path = f"nifti/{case_id}.nii.gz"
                path = path or nifti_path
            header = phantom.volume.header
            rows.append(
                {
                    "path": path,
                    "label": spec.label,
                    "patient_id": header["PatientID"],
                    "split": "test" if split == "heldout" else "",
                    "acquisition_ranges": split,
                    "severity": spec.severity,
                    "lesion_percent": round(phantom.lesion_percent, 3),
                    "seed": spec.seed,
                    "case_id": case_id,
                    "slice_thickness_mm": acq.slice_thickness_mm,
                    "pixel_spacing_mm": acq.pixel_spacing_mm,
                    "n_slices": phantom.volume.shape[0],
                    "noise_hu": acq.noise_hu,
                    "kernel": header["ConvolutionKernel"],
                    "patient_scale": acq.patient_scale,
                    "nifti_path": nifti_path,
                }
            )
            progress.advance(task)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"{len(rows)} synthetic studies in {out} ({time.perf_counter() - start:.1f} s)")
    columns = ("case_id", "label", "severity", "lesion_percent", "n_slices", "slice_thickness_mm", "kernel")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)
    console.print(
        f"manifest: {out / 'manifest.csv'} (paths relative to its folder). Synthetic data, not for clinical use."
    )
    return 0
