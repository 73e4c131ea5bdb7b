"""Benchmark ``medai score`` throughput: sequential in-process loop against parallel workers, same run.

Writes (once, cached under ``.bench/score``) N synthetic chest-CT series of
300 slices: one phantom per class (fast mode), each written under several
series/study UIDs, uncompressed. Then, with the page cache warm, runs in
rounds (interleaved, so background load on a shared machine hits all alike):

* ``sequential``: ``run_score(workers=1)``: one process, discovery, then per
  series load (pydicom, default decoding threads) and predict (onnxruntime
  with its default threads), rows appended durably;
* ``processes``: ``run_score(workers=W)``: the same plan scored by W spawned
  worker processes (one model session each, cores/W onnxruntime threads,
  one decoding thread), worker start-up included;
* ``dask`` (with ``--dask``): a local Dask cluster of W worker processes,
  cluster start-up included.

Prints the median wall time of each, the ratio parallel / sequential, and
the CPU seconds the main process used per wall second ("main-process
cores": the sequential loop already runs decoding and onnxruntime on
several threads, which bounds what more processes can add on 2 cores).

Usage::

    .venv/bin/python scripts/bench_score.py [--series 20] [--slices 300] [--matrix 256] [--workers 2] [--dask]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _write_series(root: Path, *, n_series: int, slices: int, matrix: int) -> list[Path]:
    from pydicom.uid import generate_uid

    from medai.phantoms import synthetic
    from medai.phantoms.ctwriter import write_ct_series
    from medai.volume import Volume

    folders = [root / f"series_{i:03d}" for i in range(n_series)]
    stamp = root / f".complete-{n_series}-{slices}-{matrix}"
    if stamp.exists():
        return folders
    phantoms = []
    for k, (label, severity) in enumerate((("normal", 0.0), ("covid19", 0.2), ("other_pneumonia", 0.3))):
        acq = synthetic.Acquisition(
            matrix=matrix, pixel_spacing_mm=round(360 / matrix, 4), slice_thickness_mm=1.0, n_slices=slices
        )
        phantoms.append(synthetic.generate(synthetic.PhantomSpec(label, severity, 100 + k, acq), fast=True))
    for i, folder in enumerate(folders):
        ph = phantoms[i % len(phantoms)]
        volume = Volume(
            ph.volume.hu,
            ph.volume.spacing_mm,
            ph.volume.origin_mm,
            ph.volume.direction,
            series_uid=generate_uid(),
            study_uid=generate_uid(),
        )
        header = {k: v for k, v in ph.volume.header.items() if k != "SliceThickness"}
        write_ct_series(volume, folder, attributes={**header, "PatientID": f"BENCH{i:04d}"})
        print(f"wrote {folder} ({i + 1}/{n_series})", file=sys.stderr)
    stamp.touch()
    return folders


def _warm(folders: Sequence[Path]) -> None:
    for folder in folders:
        for path in folder.iterdir():
            path.read_bytes()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20, help="number of series (default: 20)")
    parser.add_argument("--slices", type=int, default=300, help="slices per series (default: 300)")
    parser.add_argument("--matrix", type=int, default=256, help="rows = columns (default: 256)")
    parser.add_argument("--workers", type=int, default=2, help="parallel worker processes (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; medians reported (default: 2)")
    parser.add_argument("--dask", action="store_true", help="also time a local Dask cluster")
    parser.add_argument("--data", default=".bench/score", help="data folder (default: .bench/score)")
    args = parser.parse_args(argv)

    import logging

    from medai.batch.run import run_score

    logging.basicConfig(level=logging.WARNING)
    root = Path(args.data)
    folders = _write_series(root / "series", n_series=args.series, slices=args.slices, matrix=args.matrix)
    _warm(folders)
    load_before = os.getloadavg()[0]
    modes = ["sequential", "processes"] + (["dask"] if args.dask else [])
    times: dict[str, list[float]] = {m: [] for m in modes}
    cores: dict[str, list[float]] = {m: [] for m in modes}  # CPU seconds of this process per wall second
    for round_ in range(args.repeats):
        for mode in modes:
            out = root / f"results-{mode}-{round_}.csv"
            out.unlink(missing_ok=True)
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            summary = run_score(
                folders,
                out,
                workers=1 if mode == "sequential" else args.workers,
                dask=mode == "dask",
            )
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            used = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
            cores[mode].append(used / wall)
            if summary.status["ok"] != args.series:
                print(f"{mode}: only {summary.status['ok']} of {args.series} series scored", file=sys.stderr)
                return 1
            times[mode].append(wall)
            print(f"round {round_ + 1} {mode}: {wall:.2f} s", file=sys.stderr)
    base = statistics.median(times["sequential"])
    print(
        f"medai score, {args.series} series x {args.slices} slices x {args.matrix}^2, uncompressed; "
        f"{os.cpu_count()} cores; Python {platform.python_version()}; medians of {args.repeats}"
    )
    print(f"load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print("| mode | workers | wall s per round | median wall s | scans/min | ratio to sequential | main cores |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for mode in modes:
        wall = statistics.median(times[mode])
        workers = 1 if mode == "sequential" else args.workers
        rounds = ", ".join(f"{t:.1f}" for t in times[mode])
        print(
            f"| {mode} | {workers} | {rounds} | {wall:.2f} | {60 * args.series / wall:.1f} | {wall / base:.2f} "
            f"| {statistics.median(cores[mode]):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
