"""The ``medai score`` command: options, progress bar and summary table around :func:`medai.batch.run.run_score`.

Exit codes: 0 every series scored (skipped series are fine), 1 at least one
series failed (an ``error`` row) or the model could not be loaded, 2 usage
errors (missing input, unknown output extension, bad key), 130 interrupted
(every finished row is on disk; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medai.report.results import ResultFormat, RowStatus

__all__ = ["add_arguments", "run_cli"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``medai score``."""
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="folders, zip archives, DICOM/NIfTI files or manifest CSVs"
    )
    p.add_argument("--out", required=True, help="results file: .csv, .jsonl or .parquet (appended to; resumable)")
    p.add_argument("--model", help="ONNX model (default: $MEDAI_MODEL or models/medai-ref.onnx)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes (Dask workers with --dask) for discovery and scoring; 1 works in this process; "
        "default 0: one per core, at most 4 (started only for 2 or more series)",
    )
    p.add_argument("--threads", type=int, help="onnxruntime threads per process (default: cores / workers)")
    p.add_argument("--dask", action="store_true", help="run on a local Dask cluster of --workers processes")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--saliency-dir", help="write a key image (PNG) per scored series into this folder")
    p.add_argument(
        "--saliency-nifti", action="store_true", help="also write saliency maps as NIfTI (needs --saliency-dir)"
    )
    p.add_argument("--key-slices", type=int, default=4, help="slices per key image (default: 4)")
    p.add_argument(
        "--pseudonymize-key",
        metavar="KEY",
        help="replace accession number and patient ID by HMAC-SHA256 pseudonyms and drop the patient name; "
        "KEY is @FILE, env:VARIABLE or the key itself (at least 16 bytes)",
    )
    p.add_argument(
        "--deidentify",
        action="store_true",
        help="results and key images without identifiers: UIDs replaced (keyed by --pseudonymize-key when given), "
        "no name, ID, accession number, description or input path",
    )
    p.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append one tamper-evident record per scored series to this audit trail (medai audit verify PATH)",
    )
    p.add_argument("--force", action="store_true", help="re-score series already in --out for this model")
    p.add_argument("--all-series", action="store_true", help="score every acceptable series, not one per study")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _usage(message: str) -> int:
    print(f"medai score: {message}", file=sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> str | None:
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        return f"INPUT must be an existing folder, zip archive, file or manifest, not {', '.join(map(repr, missing))}"
    try:
        ResultFormat.for_path(args.out)
    except ValueError as exc:
        return f"--out {exc}"
    if args.saliency_nifti and not args.saliency_dir:
        return "--saliency-nifti needs --saliency-dir"
    if args.workers < 0 or (args.threads is not None and args.threads < 1) or args.key_slices < 1:
        return (
            f"--workers must be >= 0, --threads >= 1 and --key-slices >= 1, "
            f"not {args.workers}, {args.threads}, {args.key_slices}"
        )
    if args.dask and args.scheduler:
        return "--dask starts a local cluster and --scheduler uses an existing one: give one of them, not both"
    if args.model and not Path(args.model).is_file():
        return f"--model must be an existing .onnx file, not {args.model!r}"
    return None


def run_cli(args: argparse.Namespace) -> int:
    """``medai score``: returns the exit code (see the module docstring)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from medai.batch.pseudonym import Pseudonymizer, read_key
    from medai.batch.run import run_score
    from medai.labels import INTENDED_USE
    from medai.report.deidentify import RowDeidentifier

    problem = _check(args)
    if problem:
        return _usage(problem)
    pseudonymizer, key = None, None
    if args.pseudonymize_key:
        try:
            key = read_key(args.pseudonymize_key)
            pseudonymizer = Pseudonymizer(key)
        except ValueError as exc:
            return _usage(f"--pseudonymize-key: {exc}")
    console = Console(stderr=True)
    console.print(f"[bold]medai score[/bold] -> {args.out}  ({INTENDED_USE})")
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=args.no_progress,
        transient=False,
    )
    task = progress.add_task("scoring", total=None, rate="")
    started = time.perf_counter()
    counts = {"done": 0, "errors": 0}

    def on_start(n_jobs: int) -> None:
        nonlocal started
        started = time.perf_counter()
        progress.update(task, total=n_jobs)

    def on_row(row: Mapping[str, Any]) -> None:
        if row.get("total_s") is None and row.get("status") != RowStatus.OK:
            return  # rows decided while planning, not scans
        counts["done"] += 1
        counts["errors"] += row.get("status") == RowStatus.ERROR
        per_min = 60.0 * counts["done"] / max(time.perf_counter() - started, 1e-6)
        progress.update(task, advance=1, rate=f"{per_min:.1f} scans/min, {counts['errors']} failed")

    try:
        with progress:
            summary = run_score(
                args.inputs,
                args.out,
                model_path=args.model,
                workers=args.workers,
                threads=args.threads,
                dask=args.dask,
                scheduler=args.scheduler,
                saliency_dir=args.saliency_dir,
                saliency_nifti=args.saliency_nifti,
                key_slices=args.key_slices,
                pseudonymizer=pseudonymizer,
                force=args.force,
                all_series=args.all_series,
                on_start=on_start,
                on_row=on_row,
                audit_log=args.audit_log,
                deidentify=RowDeidentifier(key) if args.deidentify else None,
            )
    except KeyboardInterrupt:
        console.print(
            f"medai score: interrupted after {counts['done']} series; finished rows are in {args.out}. "
            "Run the same command again to resume."
        )
        return 130
    _print_summary(console, summary)
    return 1 if summary.n_errors else 0


def _print_summary(console: Any, summary: Any) -> None:
    from rich.table import Table

    table = Table(title=f"medai score: {summary.out}  (model {summary.model_id})")
    table.add_column("what")
    table.add_column("count", justify="right")
    for status in RowStatus:
        table.add_row(f"status {status.value}", str(summary.status[status.value]))
    for label, n in sorted(summary.labels.items()):
        table.add_row(f"  label {label}", str(n))
    for reason, n in summary.reasons.most_common():
        table.add_row(f"  reason {reason}", str(n))
    table.add_row("scored in this run", str(summary.n_jobs))
    table.add_row("already in the output (resumed)", str(summary.n_resumed))
    table.add_row("files that are not DICOM series (ignored)", str(summary.n_skipped_files))
    rate = summary.n_jobs / summary.wall_s * 60 if summary.wall_s > 0 else 0.0
    table.add_row("wall time", f"{summary.wall_s:.1f} s ({rate:.1f} scans/min)")
    console.print(table)
    if summary.n_errors:
        console.print(f"{summary.n_errors} series failed: see the status, reason and message columns of {summary.out}")
