"""Coverage-guided fuzzing (atheris, libFuzzer) of loading single files and series: ``make fuzz``.

The contract every input must keep (:func:`check_input`): it loads into a sane :class:`~medai.volume.Volume`
or raises a :class:`~medai.errors.MedaiError` with a reason; no other exception, no hang (libFuzzer's
``-timeout``), no memory blow-up (``-rss_limit_mb``). The first byte of an input chooses the target:

* ``file``: the rest is one file, loaded alone (``find_series`` + ``load_series`` with rules that accept one
  slice, so the fuzzer reaches pixel decoding);
* ``series``: the rest replaces one slice of a small valid series (the QC gate and the decoding of the others);
* ``nifti``: the rest is a NIfTI file (``.nii``, or ``.nii.gz`` when it starts with the gzip magic).

The seed corpus is made here from a phantom (a valid slice in several transfer syntaxes, an enhanced
multi-frame object, NIfTI) plus every regression file in ``tests/ingest/crashes/`` (and ``process-killers/``, the
inputs on which a codec killed the process, which make test replays in a child process). A crash stops the run and
leaves ``crash-*`` in ``--artifacts``: reduce it, add it to ``tests/ingest/crashes/`` (replayed by
``make test``) and fix ingestion. ``make test`` runs this for a bounded time with a fixed seed.

    python scripts/fuzz_ingest.py --time 600             # make fuzz
    python scripts/fuzz_ingest.py --time 40 --seed 7     # the bounded run in make test
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CRASHES = ROOT / "tests" / "ingest" / "crashes"
TARGETS = ("file", "series", "nifti")
#: Time a single input may take (seconds) and memory the fuzzing may add to the process (MB).
INPUT_TIMEOUT_S = 20
RSS_GROWTH_LIMIT_MB = 3072
_SERIES_SLICES = 6


def _rules():  # type: ignore[no-untyped-def]
    from medai.ingest.qc import SelectionRules

    return SelectionRules(min_slices=1, min_coverage_mm=0.0, require_original_primary=False)


def _check_volume(volume) -> None:  # type: ignore[no-untyped-def]
    """A loaded volume must be a sane volume (anything else is a silent failure, worse than an error)."""
    hu = volume.hu
    if hu.ndim != 3 or 0 in hu.shape or hu.dtype not in (np.int16, np.float32):
        raise AssertionError(f"loaded a malformed volume: {hu.shape} {hu.dtype}")
    if hu.dtype == np.float32 and not np.isfinite(hu).all():
        raise AssertionError("loaded non-finite HU values")
    if not all(np.isfinite(volume.spacing_mm)) or min(volume.spacing_mm) <= 0:
        raise AssertionError(f"loaded a volume with spacing {volume.spacing_mm}")
    if not np.isfinite(volume.direction).all() or not np.isfinite(volume.origin_mm).all():
        raise AssertionError("loaded a volume with non-finite geometry")


class Workspace:
    """A folder (on tmpfs when there is one) holding a valid base series; each input is written into it."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="medai-fuzz-", dir=base))
        self.series = self.root / "series"
        self.slices = _write_base_series(self.series)

    def target(self, data: bytes) -> tuple[str, bytes]:
        return (TARGETS[data[0] % len(TARGETS)], data[1:]) if data else ("file", b"")


def _base_volume(slices: int = _SERIES_SLICES, matrix: int = 16):  # type: ignore[no-untyped-def]
    from medai.volume import Volume

    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 400, size=(slices, matrix, matrix)).astype(np.int16)
    return Volume(hu, spacing_mm=(5.0, 2.0, 2.0), series_uid="1.2.3.4.5", study_uid="1.2.3.4")


@contextmanager
def reproducible_files() -> Iterator[None]:
    """Fixed UIDs and dates while the seed corpus and the base series are written, so the corpus is the same bytes
    on every machine (fresh UIDs made every run start elsewhere: a crash CI found on 2026-12-06 could not be
    replayed). With ``--seed`` two runs then take the same inputs until timing-dependent paths part them (the
    first ~1,500 of 3,000 measured), so ``--runs N`` replays an early crash of a bounded run, not every one."""
    import datetime
    import itertools
    import types
    from unittest import mock

    counter = itertools.count(1)
    fixed = datetime.datetime(2026, 1, 1, 12, 0, 0)

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
            return fixed

    with (
        mock.patch(
            "medai.phantoms.ctwriter.generate_uid", lambda *_, **__: f"1.2.826.0.1.3680043.10.543.{next(counter)}"
        ),
        mock.patch("medai.phantoms.ctwriter._dt", types.SimpleNamespace(datetime=Clock)),
    ):
        yield


def _write_base_series(folder: Path) -> list[Path]:
    from medai.phantoms.ctwriter import write_ct_series

    return write_ct_series(_base_volume(), folder, attributes={"PatientName": "Fuzz^Base"})


def check_input(data: bytes, workspace: Workspace) -> str:
    """Run one input through its target and enforce the contract; returns ``"loaded"`` or the error reason.

    Raises:
        Exception: anything that is not a :class:`MedaiError` (a crash), or AssertionError for a loaded volume
            that is not sane.
    """
    from medai.errors import InvalidSeriesError, MedaiError
    from medai.ingest.discovery import find_series
    from medai.ingest.load import load_series
    from medai.ingest.nifti import read_nifti

    target, payload = workspace.target(data)
    try:
        if target == "nifti":
            path = workspace.root / ("input.nii.gz" if payload[:2] == b"\x1f\x8b" else "input.nii")
            path.write_bytes(payload)
            _check_volume(read_nifti(path))
            return "loaded"
        if target == "file":
            path = workspace.root / "single" / "input.dcm"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(payload)
            found = find_series(path.parent)
            _check_volume(load_series([path], rules=_rules(), workers=1))
            return f"loaded ({len(found)} series found)"
        victim = workspace.slices[len(payload) % len(workspace.slices)]
        original = victim.read_bytes()
        try:
            victim.write_bytes(payload)
            found = find_series(workspace.series)
            _check_volume(load_series(workspace.series, rules=_rules(), workers=1))
            return f"loaded ({len(found)} series found)"
        finally:
            victim.write_bytes(original)
    except InvalidSeriesError as exc:
        return exc.reason.value
    except MedaiError as exc:
        return type(exc).__name__


def _peak_rss_mb() -> int:
    """This process's peak RSS so far. Linux carries the peak across fork and exec, so a fuzzer started by a large
    process (pytest holding a model) begins with its parent's peak; libFuzzer's RSS limit is on that peak, so
    the limit is set above it."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def seed_corpus(folder: Path) -> list[Path]:
    """Valid inputs for every target (and every regression file) as the fuzzer's starting corpus."""
    from medai.ingest.nifti import write_nifti
    from medai.phantoms.ctwriter import TransferSyntax, write_ct_series, write_enhanced_ct

    folder.mkdir(parents=True, exist_ok=True)
    volume = _base_volume(slices=2, matrix=8)
    seeds: list[bytes] = []
    for syntax in (TransferSyntax.EXPLICIT, TransferSyntax.IMPLICIT, TransferSyntax.RLE, TransferSyntax.DEFLATED):
        with tempfile.TemporaryDirectory() as tmp:
            first = write_ct_series(volume, tmp, transfer_syntax=syntax)[0]
            seeds += [bytes([TARGETS.index("file")]) + first.read_bytes()]
            seeds += [bytes([TARGETS.index("series")]) + first.read_bytes()]
    with tempfile.TemporaryDirectory() as tmp:
        seeds += [bytes([TARGETS.index("file")]) + write_enhanced_ct(volume, Path(tmp) / "e.dcm").read_bytes()]
        write_nifti(volume, Path(tmp) / "v.nii")
        raw = (Path(tmp) / "v.nii").read_bytes()
        seeds += [bytes([TARGETS.index("nifti")]) + raw, bytes([TARGETS.index("nifti")]) + gzip.compress(raw, mtime=0)]
    paths = []
    for k, data in enumerate(seeds):
        path = folder / f"seed-{k:02d}"
        path.write_bytes(data)
        paths.append(path)
    return paths + sorted(CRASHES.rglob("*.bin"))  # process-killers/ too: the fuzzer starts from them


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="coverage-guided fuzzing of medai's ingestion (atheris)")
    parser.add_argument("--time", type=int, default=600, help="seconds to fuzz (default: 600)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed (default: 1)")
    parser.add_argument("--runs", type=int, default=-1, help="stop after this many inputs (default: no limit)")
    parser.add_argument("--artifacts", default=".fuzz", help="folder for crash files and the corpus (default: .fuzz)")
    args = parser.parse_args(argv)
    import atheris

    with atheris.instrument_imports(include=["medai.ingest", "pydicom", "nibabel"]):
        import nibabel  # noqa: F401
        import pydicom  # noqa: F401

        import medai.ingest.discovery
        import medai.ingest.load
        import medai.ingest.nifti  # noqa: F401

    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    artifacts = Path(args.artifacts).resolve()
    corpus = artifacts / "corpus"
    with reproducible_files():
        seeds = seed_corpus(artifacts / "seeds")
        workspace = Workspace()

    def test_one_input(data: bytes) -> None:
        check_input(data, workspace)

    libfuzzer = [
        sys.argv[0],
        f"-seed={args.seed}",
        f"-max_total_time={args.time}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={_peak_rss_mb() + RSS_GROWTH_LIMIT_MB}",
        "-max_len=262144",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    if args.runs >= 0:
        libfuzzer.append(f"-runs={args.runs}")
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (corpus / seed.name).write_bytes(seed.read_bytes())
    atheris.Setup([*libfuzzer, str(corpus)], test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, line_buffering=True)
    raise SystemExit(main())
