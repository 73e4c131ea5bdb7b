"""Benchmark DICOM ingestion: medai.load_series against SimpleITK and MONAI.

Writes (once, cached under ``.bench/ingest``) the same 300-slice 512x512 CT
series uncompressed and as JPEG 2000 lossless, then loads each with every
loader, each load in a fresh subprocess (so imports, caches and peak memory
do not leak between loaders): a warm-up load whose peak RSS increase is the
memory figure, then a timed load. Rounds interleave the loaders so that
background load on a shared machine hits all of them alike. Prints the
median times, the ratios peer/medai and each loader's peak memory relative
to the int16 volume size. Files are read warm (page cache), as on a
scoring box that just received a study.

Usage::

    .venv/bin/python scripts/bench_ingest.py [--repeats 5] [--out .bench/ingest] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

SLICES, MATRIX = 300, 512
VOLUME_BYTES = SLICES * MATRIX * MATRIX * 2
LOADERS = ("medai", "simpleitk", "monai-itk", "monai-pydicom")
DATASETS = ("uncompressed", "jpeg2000")


def _phantom() -> np.ndarray:
    """A body-like int16 HU volume: air, soft-tissue ellipse, ribs, two lungs, vessels, noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[-1 : 1 : MATRIX * 1j, -1 : 1 : MATRIX * 1j]
    hu = np.full((SLICES, MATRIX, MATRIX), -1000, np.int16)
    for k in range(SLICES):
        t = k / (SLICES - 1)
        a, b = 0.85 - 0.1 * t, 0.6 - 0.05 * t
        body = (x / a) ** 2 + (y / b) ** 2 <= 1
        ring = body & ((x / (a - 0.06)) ** 2 + (y / (b - 0.06)) ** 2 > 1)
        lung_r = 0.3 * np.sin(np.pi * (0.1 + 0.8 * t)) + 0.05
        lungs = ((np.abs(x) - 0.38) / 0.28) ** 2 + (y / (lung_r + 0.2)) ** 2 <= 1
        plane = np.where(body, 40, -1000).astype(np.float32)
        plane[ring] = 700
        plane[lungs & body] = -850
        vessels = (np.sin(23 * x + 5 * t) * np.sin(19 * y - 3 * t) > 0.96) & lungs
        plane[vessels] = 30
        plane += rng.normal(0, 15, plane.shape).astype(np.float32)
        hu[k] = np.clip(np.round(plane), -1024, 3071).astype(np.int16)
    return hu


def _write_datasets(out: Path) -> dict[str, Path]:
    from medai.phantoms.ctwriter import write_ct_series
    from medai.volume import Volume

    folders = {name: out / name for name in DATASETS}
    if all((f / ".complete").exists() for f in folders.values()):
        return folders
    print(f"writing the benchmark series to {out} (once) ...", flush=True)
    volume = Volume(_phantom(), spacing_mm=(1.0, 0.7, 0.7), origin_mm=(-179.0, -179.0, -300.0))
    for name, syntax in (("uncompressed", "explicit"), ("jpeg2000", "jpeg2000")):
        folder = folders[name]
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.dcm"):
            old.unlink()
        write_ct_series(volume, folder, transfer_syntax=syntax, attributes={"ConvolutionKernel": "B70f"})
        (folder / ".complete").write_text("ok\n")
    return folders


def _loader(name: str) -> Callable[[Path], np.ndarray]:
    if name == "medai":
        from medai.ingest.load import load_series

        return lambda folder: load_series(folder).hu
    if name == "simpleitk":
        import SimpleITK as sitk

        def load_sitk(folder: Path) -> np.ndarray:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
            return sitk.GetArrayViewFromImage(reader.Execute())

        return load_sitk
    if name in ("monai-itk", "monai-pydicom"):
        from monai.transforms import LoadImage

        reader = "ITKReader" if name == "monai-itk" else "PydicomReader"
        load = LoadImage(reader=reader, image_only=True)
        return lambda folder: np.asarray(load(str(folder)))
    raise ValueError(f"loader must be one of {LOADERS}, not {name!r}")


def _rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(name: str, folder: Path) -> dict[str, object]:
    """Run in a fresh process: one warm-up load (peak memory measured), then one timed load."""
    try:
        load = _loader(name)
    except ImportError as exc:
        return {"error": f"not installed: {exc}"}
    with contextlib.suppress(OSError):  # reset the peak RSS (VmHWM): imports and the parent do not count
        Path("/proc/self/clear_refs").write_text("5")
    base = _rss_bytes("VmRSS")
    array = load(folder)
    peak = _rss_bytes("VmHWM") - base
    shape = tuple(int(s) for s in array.shape)
    del array
    start = time.perf_counter()
    load(folder)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "shape": shape, "peak_rss_delta": peak}


def _run_worker(name: str, folder: Path) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--worker", name, "--folder", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed loads per loader and dataset (default: 5)")
    parser.add_argument("--out", default=".bench/ingest", help="cache folder for the series (default: .bench/ingest)")
    parser.add_argument("--loaders", default=",".join(LOADERS), help="comma-separated loaders to run")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, Path(args.folder))))
        return 0

    folders = _write_datasets(Path(args.out))
    loaders = [name.strip() for name in args.loaders.split(",") if name.strip()]
    print(
        f"{SLICES} slices {MATRIX}x{MATRIX}, int16 volume {VOLUME_BYTES / 2**20:.0f} MiB, {args.repeats} rounds "
        f"(loaders interleaved, one fresh process per load), {os.cpu_count()} cores, python {platform.python_version()}"
    )
    results: dict[tuple[str, str], dict[str, object]] = {}
    for dataset, folder in folders.items():
        runs: dict[str, list[dict[str, object]]] = {name: [] for name in loaders}
        for _ in range(args.repeats):
            for name in loaders:
                if runs[name] and "error" in runs[name][-1]:
                    continue
                runs[name].append(_run_worker(name, folder))
        for name in loaders:
            done = [r for r in runs[name] if "error" not in r]
            if not done:
                results[dataset, name] = runs[name][-1]
                print(f"  {dataset:13s} {name:14s} unavailable: {runs[name][-1]['error']}")
                continue
            median = statistics.median(float(r["seconds"]) for r in done)  # type: ignore[arg-type]
            memory = max(float(r["peak_rss_delta"]) for r in done) / VOLUME_BYTES  # type: ignore[arg-type]
            results[dataset, name] = {"median": median, "memory": memory, "shape": done[0]["shape"]}
            print(f"  {dataset:13s} {name:14s} median {median:6.3f} s   peak memory {memory:4.2f}x volume")
    rows = []
    for dataset in folders:
        ours = results.get((dataset, "medai"), {}).get("median")
        for name in loaders:
            peer = results.get((dataset, name), {})
            if name == "medai" or "median" not in peer or ours is None:
                continue
            ratio = float(peer["median"]) / float(ours)  # type: ignore[arg-type]
            rows.append((dataset, name, float(peer["median"]), float(ours), ratio))  # type: ignore[arg-type]
            print(f"  {dataset:13s} medai is {ratio:4.2f}x as fast as {name}")
    if args.markdown:
        print("\n| data | loader | median s | peak memory / volume | speed-up of medai |")
        print("| --- | --- | ---: | ---: | ---: |")
        for (dataset, name), result in results.items():
            if "median" not in result:
                print(f"| {dataset} | {name} | n/a | n/a | {result.get('error')} |")
                continue
            mem = float(result["memory"])  # type: ignore[arg-type]
            speed = next((f"{r[4]:.2f}x" for r in rows if r[0] == dataset and r[1] == name), "-")
            print(f"| {dataset} | {name} | {float(result['median']):.3f} | {mem:.2f}x | {speed} |")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
