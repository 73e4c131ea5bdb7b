"""Fuzzed ingestion: every input loads into a sane volume or raises a MedaiError with a reason; no other
exception, no hang, no memory blow-up.

* Structured mutations of a valid series (hypothesis: 300 examples, fixed seed): missing or contradictory
  geometry, odd rescale values, truncated or oversized pixel data, mixed series, wrong VRs, absurd dimensions.
* Every crash ever found (``tests/ingest/crashes/*.bin``, inputs of ``scripts/fuzz_ingest.py``) is replayed.
* Coverage-guided fuzzing (atheris) for a bounded time with a fixed seed; ``make fuzz`` runs it longer.
"""

from __future__ import annotations

import copy
import os
import signal
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medai.errors import MedaiError, QCReason
from medai.ingest.discovery import find_series
from medai.ingest.load import load_series
from medai.ingest.qc import SelectionRules, select_series
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
CRASHES = Path(__file__).parent / "crashes"
#: Each input must finish within this many seconds and allocate at most this much memory at its peak.
INPUT_TIMEOUT_S = 20
MEMORY_GROWTH_MB = 1500
#: Structured mutations per run: 300 with a fixed seed in make test; make fuzz sets more (and a random seed).
EXAMPLES = int(os.environ.get("MEDAI_FUZZ_EXAMPLES", "300"))
RULES = SelectionRules(min_slices=2, min_coverage_mm=0.0, require_original_primary=False)


fuzz = load_script("fuzz_ingest")


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail (TimeoutError) when the block runs longer than ``seconds``: a hang is a failure."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"input took more than {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def memory_limit(megabytes: int) -> Iterator[None]:
    """Fail when the block allocates more than ``megabytes`` at its peak (tracemalloc sees Python's and numpy's
    allocations; the process's peak RSS cannot tell, it may have been higher before the block)."""
    tracemalloc.start()
    try:
        yield
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak_mb < megabytes, f"an input allocated {peak_mb:.0f} MB (a memory blow-up)"


# ---------------------------------------------------------------- every crash ever found


def test_every_crash_ever_found_is_replayed() -> None:
    files = sorted(CRASHES.glob("*.bin"))
    assert files, "tests/ingest/crashes/ holds the regression inputs"
    workspace = fuzz.Workspace()
    for path in files:
        with time_limit(INPUT_TIMEOUT_S), memory_limit(MEMORY_GROWTH_MB), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = fuzz.check_input(path.read_bytes(), workspace)
        assert outcome, path.name


@pytest.mark.parametrize("path", sorted((CRASHES / "process-killers").glob("*.bin")), ids=lambda p: p.stem)
def test_corrupt_streams_that_killed_the_process_are_undecodable(path: Path) -> None:
    """Inputs on which a codec took the whole process down (gdcm: a segmentation fault on a JPEG Lossless header
    claiming 116 bits, an uncaught C++ exception on a corrupt JPEG Baseline stream), replayed in a child process so
    that a regression fails this test instead of killing the run: a batch or the PACS listener would die with it."""
    code = (
        "import sys; from pathlib import Path; from tests.conftest import load_script; "
        "fuzz = load_script('fuzz_ingest'); print(fuzz.check_input(Path(sys.argv[1]).read_bytes(), fuzz.Workspace()))"
    )
    assert _last_line_of_a_surviving_child(code, str(path)) == QCReason.UNDECODABLE_TRANSFER_SYNTAX.value


def _last_line_of_a_surviving_child(code: str, *args: str) -> str:
    """Run ``code`` in a child Python; it must not die (a codec crash there fails this test, not the run)."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"the process died (return code {result.returncode}): {result.stderr[-2000:]}"
    return result.stdout.strip().splitlines()[-1]


_KILLER_IN_A_SERIES = """
import io, sys, tempfile
from pathlib import Path
import pydicom
from tests.conftest import load_script
from medai.errors import InvalidSeriesError
from medai.ingest.load import load_series
from medai.phantoms.ctwriter import TransferSyntax, write_ct_series
killer = pydicom.dcmread(io.BytesIO(Path(sys.argv[1]).read_bytes()[1:]))
with tempfile.TemporaryDirectory() as tmp:
    volume = load_script("fuzz_ingest")._base_volume(slices=24, matrix=16)
    paths = write_ct_series(volume, tmp, transfer_syntax=TransferSyntax.JPEG_LOSSLESS)
    ds = pydicom.dcmread(paths[7])
    ds.file_meta.TransferSyntaxUID, ds.PixelData = killer.file_meta.TransferSyntaxUID, killer.PixelData
    ds.save_as(paths[7])
    try:
        load_series(tmp, workers=int(sys.argv[2]))
    except InvalidSeriesError as exc:
        print(exc.reason.value)
"""


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "worker-processes"])
def test_a_process_killer_frame_in_a_large_series_fails_the_series_not_the_process(workers: int) -> None:
    """24 JPEG Lossless slices, one of them the frame that made gdcm segfault. Decoded in medai's process it never
    reaches gdcm; decoded by forked workers (gdcm first there, for speed) it kills a worker, and the broken pool
    is read as an undecodable series."""
    killer = CRASHES / "process-killers" / "gdcm-jpeg-lossless-116-bits-segfault.bin"
    outcome = _last_line_of_a_surviving_child(_KILLER_IN_A_SERIES, str(killer), str(workers))
    assert outcome == QCReason.UNDECODABLE_TRANSFER_SYNTAX.value


def test_frames_decoded_in_process_never_go_to_gdcm_when_another_plugin_can() -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        JPEG2000,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    )

    from medai.ingest.pixels import SAFE_PLUGINS, _plugin

    for syntax in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
                   JPEG2000, RLELossless):  # fmt: skip
        assert _plugin(syntax) in SAFE_PLUGINS and _plugin(syntax) in get_decoder(syntax).available_plugins


def test_a_pixel_module_pydicom_cannot_parse_is_unreadable() -> None:
    # the header gate parses every element ingestion reads but PixelData, whose value pydicom converts when
    # decoding asks for it: this input's PixelData has an unknown VR (pydicom raised NotImplementedError)
    data = (CRASHES / "pixel-data-unknown-vr.bin").read_bytes()
    assert fuzz.check_input(data, fuzz.Workspace()) == QCReason.UNREADABLE.value


# ---------------------------------------------------------------- structured mutations (hypothesis)


@pytest.fixture(scope="module")
def base_series(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    folder = tmp_path_factory.mktemp("base")
    paths = fuzz._write_base_series(folder)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert load_series(folder, rules=RULES).shape == (6, 16, 16)  # the unmutated series loads
    return datasets


ATTRIBUTES = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "SamplesPerPixel",
    "NumberOfFrames",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SOPInstanceUID",
    "Modality",
    "SliceThickness",
    "PixelPaddingValue",
    "ImageType",
)
ODD_VALUES = st.sampled_from(
    [
        "",
        "abc",
        "nan",
        "inf",
        "-inf",
        "1e400",
        "-0",
        "\\",
        "1\\2\\3\\4\\5\\6\\7",
        0,
        -1,
        1,
        65535,
        2**31,
        1e-30,
        1e30,
        float("nan"),
        float("inf"),
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 5.0],
    ]
)
WRONG_VRS = st.sampled_from(["US", "SS", "UL", "FL", "FD", "DS", "IS", "CS", "LO", "OB", "UN", "SQ", "UI"])


@st.composite
def mutation(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(
        st.sampled_from(
            ["delete", "odd_value", "wrong_vr", "truncate", "oversize", "mix", "shift", "rescale", "syntax"]
        )
    )
    where = draw(st.one_of(st.just("all"), st.integers(0, 5)))
    if kind in ("delete", "odd_value", "wrong_vr"):
        keyword = draw(st.sampled_from(ATTRIBUTES))
        extra = draw(ODD_VALUES) if kind == "odd_value" else draw(WRONG_VRS) if kind == "wrong_vr" else None
        return kind, where, keyword, extra
    if kind in ("truncate", "oversize"):
        return kind, where, draw(st.integers(0, 600)), None
    if kind == "rescale":
        value = draw(st.sampled_from([0, 1e-12, -1, 1e12, 0.5, 3.3, float("nan"), float("inf"), -32768]))
        return kind, where, draw(st.sampled_from(["RescaleSlope", "RescaleIntercept"])), value
    if kind == "syntax":
        uid = draw(st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "9.9"]))
        return kind, where, uid, None
    return kind, where, draw(st.floats(-500, 500, allow_nan=False)), None


_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}


def _apply(datasets: list[pydicom.Dataset], change: tuple[Any, ...]) -> None:
    """Mutations of the data sets (the byte-level ones, ``odd_value`` and ``wrong_vr``, are :func:`_patch`)."""
    kind, where, what, extra = change
    targets = datasets if where == "all" else [datasets[where]]
    for ds in targets:
        if kind == "delete" and what in ds:
            delattr(ds, what)
        elif kind == "truncate":
            ds.PixelData = ds.PixelData[: min(what, len(ds.PixelData))]
        elif kind == "oversize":
            ds.PixelData = ds.PixelData + bytes(what)
        elif kind == "mix":
            ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
        elif kind == "shift" and "ImagePositionPatient" in ds:
            ds.ImagePositionPatient = [float(v) + what for v in ds.ImagePositionPatient]
        elif kind == "rescale" and what in ds:
            ds[what].value = extra if np.isfinite(extra) else ds[what].value  # non-finite values: see _patch
        elif kind == "syntax":
            ds.file_meta.TransferSyntaxUID = what


def _element(tag: int, vr: str, value: bytes) -> bytes:
    value = value + b" " * (len(value) % 2)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value) & 0xFFFF) + value


def _patch(data: bytes, keyword: str, vr: str | None, value: bytes | None, start: int) -> bytes:
    """The file with its top-level element ``keyword`` rewritten with ``vr`` and ``value`` bytes (``None``: as
    they were), or inserted when absent; the body is explicit VR little endian from ``start``."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    own_vr = pydicom.datadict.dictionary_VR(tag).split(" ")[0]
    key = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = data.find(key, start)
    while at >= 0 and not data[at + 4 : at + 6].isalpha():
        at = data.find(key, at + 1)
    if at < 0:
        return data + _element(tag, vr or own_vr, value or b"7")
    old_vr = data[at + 4 : at + 6].decode()
    if old_vr in _LONG_VRS:
        size, header = struct.unpack("<I", data[at + 8 : at + 12])[0], 12
    else:
        size, header = struct.unpack("<H", data[at + 6 : at + 8])[0], 8
    old_value = data[at + header : at + header + size]
    return data[:at] + _element(tag, vr or old_vr, old_value if value is None else value) + data[at + header + size :]


def _write(datasets: list[pydicom.Dataset], folder: Path, changes: list[tuple[Any, ...]]) -> None:
    """Each data set as a Part 10 file, its body always in explicit VR little endian whatever its file meta now
    says (a file that lies about its transfer syntax is one of the mutations), then the byte-level mutations."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    for k, ds in enumerate(datasets):
        out = DicomBytesIO()
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, ds.file_meta, enforce_standard=False)
        start = out.tell()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
        data = out.getvalue()
        for kind, where, what, extra in changes:
            if where not in ("all", k):
                continue
            if kind == "odd_value":
                text = "\\".join(map(str, extra)) if isinstance(extra, list) else str(extra)
                data = _patch(data, what, None, text.encode(), start)
            elif kind == "wrong_vr":
                data = _patch(data, what, extra, None, start)
            elif kind == "rescale" and not np.isfinite(extra):
                data = _patch(data, what, "DS", str(extra).encode(), start)
        (folder / f"IM{k:05d}.dcm").write_bytes(data)


def _check(folder: Path) -> None:
    try:
        found = find_series(folder)
        select_series(found, rules=RULES)
        volume = load_series(folder, rules=RULES, workers=1)
    except MedaiError as exc:
        assert str(exc), "a MedaiError must say why"
        return
    fuzz._check_volume(volume)


@settings(
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("MEDAI_FUZZ_EXAMPLES"),  # make fuzz: many random examples; make test: fixed
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(changes=st.lists(mutation(), min_size=1, max_size=4))
def test_structured_mutations_load_or_fail_with_a_reason(
    base_series: list[pydicom.Dataset], changes: list[tuple[Any, ...]]
) -> None:
    datasets = [copy.deepcopy(ds) for ds in base_series]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for change in changes:
            _apply(datasets, change)
        with tempfile.TemporaryDirectory() as tmp:
            _write(datasets, Path(tmp), changes)
            with time_limit(INPUT_TIMEOUT_S), memory_limit(MEMORY_GROWTH_MB):
                _check(Path(tmp))


def test_the_loaded_volume_of_a_mutation_is_the_stored_data(base_series: list[pydicom.Dataset], tmp_path: Path) -> None:
    """Oversized pixel data (trailing bytes) loads the declared frame, nothing more."""
    datasets = [copy.deepcopy(ds) for ds in base_series]
    _apply(datasets, ("oversize", "all", 100, None))
    _write(datasets, tmp_path, [])
    volume = load_series(tmp_path, rules=RULES)
    expected = np.stack([ds.pixel_array.astype(np.int32) - 1024 for ds in base_series])
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in base_series])
    assert np.array_equal(np.sort(volume.hu.ravel()), np.sort(expected[order].ravel()))


# ---------------------------------------------------------------- coverage-guided (atheris), bounded


def test_coverage_guided_fuzzing_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris comes with the fuzz extra (make test installs it)")
    command = [sys.executable, str(ROOT / "scripts" / "fuzz_ingest.py"), "--time", "35", "--seed", "7"]
    result = subprocess.run(
        [*command, "--artifacts", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and not crashes, f"{crashes}\n{result.stderr[-4000:]}"
    assert "Done" in result.stderr and "stat::number_of_executed_units" in result.stderr
