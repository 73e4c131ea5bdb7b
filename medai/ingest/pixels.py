"""Decode DICOM frames into a preallocated HU array.

The caller (:func:`medai.ingest.load.load_series`) has already run the QC gate and
ordered the frames; this module checks the pixel attributes, allocates the
output once and fills it slice by slice:

* native little-endian 16-bit data (the common case) is read straight from
  the file into the output slice with ``readinto`` and converted in place;
* everything else (big-endian, deflated, RLE, JPEG, JPEG-LS, JPEG 2000, zip
  members) goes through pydicom's pixel decoders: in forked worker processes for a
  large compressed series (gdcm first, where a codec crash only breaks the pool),
  else on a small thread pool with pylibjpeg / pyjpegls (gdcm only where nothing
  else decodes a syntax, :data:`SAFE_PLUGINS`: it can kill the process).

HU = stored x RescaleSlope + RescaleIntercept, per frame. Stored values equal
to PixelPaddingValue (or within PixelPaddingRangeLimit) mark air outside the
field of view and become -1024 HU. The output is int16 unless a slope or
intercept is non-integer (or a slice leaves the int16 range), then float32.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000, UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from medai.errors import InvalidSeriesError, QCReason
from medai.ingest.header import value

if TYPE_CHECKING:
    from medai.ingest.sources import DicomSource

__all__ = ["PADDING_HU", "FrameTask", "decode_frames"]

log = logging.getLogger(__name__)

#: HU written where PixelPaddingValue marks air outside the reconstruction field of view.
PADDING_HU = -1024
_INT16 = (-32768, 32767)
_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_JPEG2000 = {JPEG2000, JPEG2000Lossless}
# Compressed series with at least this many frames are decoded in worker processes.
_PROCESS_MIN_FRAMES = 16


@dataclass(frozen=True, eq=False)
class FrameTask:
    """One output slice: which frame of which instance, and its rescale."""

    dataset: Dataset
    source: DicomSource
    frame: int
    slope: float
    intercept: float


class _Int16Overflow(Exception):
    """A slice's HU do not fit int16: redo the volume in float32."""


@dataclass(frozen=True)
class _PixelModule:
    """Pixel attributes of one instance, checked once."""

    rows: int
    columns: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    padding: tuple[int, int] | None
    transfer_syntax: Any
    native_offset: int | None  # file offset of native little-endian 16-bit pixel data, for the fast path

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.bits_allocated // 8


@functools.cache
def _decoder_problem(syntax: UID) -> str:
    """Why frames in ``syntax`` cannot be decoded here ("" when they can)."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"no decoder for transfer syntax {syntax.name}"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        return f"transfer syntax {syntax.name} needs a decoder plugin that is not installed ({missing})"
    return ""


def _pixel_module(ds: Dataset, source: DicomSource, series_uid: str) -> _PixelModule:
    def fail(reason: QCReason, message: str) -> InvalidSeriesError:
        return InvalidSeriesError(reason, f"{source}: {message}", series_uid=series_uid)

    if "PixelData" not in ds:
        kind = "FloatPixelData" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else "no pixel data"
        raise fail(QCReason.MISSING_ATTRIBUTE, f"PixelData must be present, not {kind}")

    def integer(keyword: str, default: int | None = None) -> int:
        found = value(ds, keyword, default)
        if isinstance(found, int) and not isinstance(found, bool):
            return found
        shown = "absent" if found is None else repr(found)[:40]
        raise fail(QCReason.MISSING_ATTRIBUTE, f"{keyword} must be one integer, not {shown}")

    samples = integer("SamplesPerPixel", 1)
    if samples != 1:
        raise fail(QCReason.IMPLAUSIBLE_DIMENSIONS, f"SamplesPerPixel must be 1 (grayscale CT), not {samples}")
    bits_allocated = integer("BitsAllocated")
    bits_stored = integer("BitsStored", bits_allocated)
    signed = integer("PixelRepresentation", 0) == 1
    if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
        raise fail(
            QCReason.IMPLAUSIBLE_DIMENSIONS,
            f"BitsAllocated must be 8, 16 or 32 with BitsStored <= it, not {bits_allocated}/{bits_stored}",
        )
    file_meta = getattr(ds, "file_meta", None)
    syntax = value(file_meta, "TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        raise fail(QCReason.MISSING_ATTRIBUTE, "the file meta TransferSyntaxUID must be present")
    problem = _decoder_problem(syntax)
    if problem:
        raise fail(QCReason.UNDECODABLE_TRANSFER_SYNTAX, problem)
    rows, cols = integer("Rows"), integer("Columns")
    frames = value(ds, "NumberOfFrames", 1)
    frames = frames if isinstance(frames, int) and frames > 0 else 1  # pydicom reads an invalid value as 1 too
    padding = None
    pad_value = value(ds, "PixelPaddingValue")
    if isinstance(pad_value, int):
        limit = value(ds, "PixelPaddingRangeLimit")
        limit = limit if isinstance(limit, int) else pad_value
        padding = (min(pad_value, limit), max(pad_value, limit))
    native_offset = None
    if not syntax.is_compressed:
        expected = rows * cols * frames * bits_allocated // 8
        raw = ds.get_item("PixelData", keep_deferred=True)
        deferred = getattr(raw, "value", b"") is None
        length = raw.length if deferred else len(ds.PixelData)  # type: ignore[union-attr,attr-defined]
        if length < expected:
            raise fail(
                QCReason.TRUNCATED_PIXEL_DATA,
                f"PixelData must hold {expected} bytes ({frames}x{rows}x{cols}x{bits_allocated} bits), not {length}",
            )
        if deferred and syntax in _NATIVE_LE and bits_allocated == 16 and source.member is None:
            native_offset = int(raw.value_tell)  # type: ignore[union-attr,attr-defined]
    return _PixelModule(rows, cols, frames, bits_allocated, bits_stored, signed, padding, syntax, native_offset)


def _is_integral(value: float) -> bool:
    return float(value).is_integer()


def _to_hu(stored: np.ndarray, out: np.ndarray, task: FrameTask, module: _PixelModule) -> None:
    """Write HU of ``stored`` (any integer dtype) into ``out`` (one slice)."""
    pad = None
    if module.padding is not None:
        pad = (stored >= module.padding[0]) & (stored <= module.padding[1])
    slope, intercept = task.slope, task.intercept
    if out.dtype == np.int16:
        values = stored[~pad] if pad is not None and pad.any() else stored
        if values.size:
            ends = (int(values.min()) * slope + intercept, int(values.max()) * slope + intercept)
            if min(ends) < _INT16[0] or max(ends) > _INT16[1]:
                raise _Int16Overflow
        if slope == 1 and _INT16[0] <= intercept <= _INT16[1]:
            if np.shares_memory(stored, out):
                out += np.int16(intercept)  # wraps modulo 2**16: exact because the result fits int16
            else:
                np.add(stored, np.int32(intercept), out=out, dtype=np.int32, casting="unsafe")
        else:
            hu = stored.astype(np.int64) * int(slope) + int(intercept)
            np.copyto(out, hu, casting="unsafe")
    else:
        out[...] = stored.astype(np.float64) * slope + intercept
    if pad is not None:
        out[pad] = PADDING_HU


def _fill_native(task: FrameTask, module: _PixelModule, out: np.ndarray) -> None:
    """Read native little-endian 16-bit pixels straight into ``out`` and convert in place."""
    buffer = out if out.dtype == np.int16 else np.empty(out.shape, np.int16)
    offset = int(module.native_offset or 0) + task.frame * module.frame_bytes
    with open(task.source.path, "rb") as fp:
        fp.seek(offset)
        n = fp.readinto(memoryview(buffer).cast("B"))  # type: ignore[arg-type]
    if n != module.frame_bytes:
        raise InvalidSeriesError(
            QCReason.TRUNCATED_PIXEL_DATA,
            f"{task.source}: frame {task.frame} must have {module.frame_bytes} bytes of pixel data, not {n}",
        )
    stored = buffer if module.signed else buffer.view(np.uint16)
    if module.bits_stored < 16:
        shift = 16 - module.bits_stored
        if module.signed:
            stored <<= shift
            stored >>= shift  # arithmetic shift: sign-extends BitsStored
        else:
            stored &= np.uint16((1 << module.bits_stored) - 1)
    if buffer is out:
        _to_hu(stored, out, task, module)
    else:
        _to_hu(stored, out, task, module)


def _fill_decoded(task: FrameTask, module: _PixelModule, out: np.ndarray) -> None:
    """Decode one frame with pydicom's pixel handlers and convert it."""
    index = task.frame if module.frames > 1 else None
    try:
        syntax = module.transfer_syntax
        array, _ = get_decoder(syntax).as_array(task.dataset, index=index, decoding_plugin=_plugin(syntax))
    except BaseException as exc:  # codecs raise anything from ValueError to a Rust panic on bad streams
        if not _is_codec_failure(exc):
            raise
        raise _undecodable(task, module, exc) from exc
    _check_decoded(array, task, out)
    _to_hu(array, out, task, module)


def _is_codec_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a codec failing on its input: any Exception, or the ``PanicException`` that Rust codecs
    (pylibjpeg-rle, through pyo3) raise, which derives from BaseException; never an interrupt or an exit."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _undecodable(task: FrameTask, module: _PixelModule, exc: BaseException) -> InvalidSeriesError:
    return InvalidSeriesError(
        QCReason.UNDECODABLE_TRANSFER_SYNTAX,
        f"{task.source}: frame {task.frame} cannot be decoded from {module.transfer_syntax.name}: {exc!r}",
    )


def _check_decoded(array: np.ndarray, task: FrameTask, out: np.ndarray) -> None:
    if array.shape != out.shape:
        raise InvalidSeriesError(
            QCReason.INCONSISTENT_GEOMETRY,
            f"{task.source}: decoded frame must be {out.shape}, not {array.shape}",
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidSeriesError(
            QCReason.UNDECODABLE_TRANSFER_SYNTAX,
            f"{task.source}: stored pixel values must be integers, not {array.dtype}",
        )


@contextmanager
def _unreadable_pixel_module(source: DicomSource, series_uid: str) -> Iterator[None]:
    """pydicom's errors on a corrupt pixel module (an unknown VR, a value it cannot convert) raised as ``unreadable``
    naming the instance: the header gate parsed every other element ingestion reads, not PixelData."""
    try:
        yield
    except InvalidSeriesError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidSeriesError(
            QCReason.UNREADABLE,
            f"{source}: its pixel module cannot be parsed ({type(exc).__name__}: {str(exc)[:200]})",
            series_uid=series_uid,
        ) from exc


def decode_frames(plan: Sequence[FrameTask], *, series_uid: str = "", workers: int | None = None) -> np.ndarray:
    """Decode ``plan`` (one task per slice, in z order) into a ``(z, y, x)`` HU array.

    Args:
        plan: frames in output order, with their rescale.
        series_uid: for error messages.
        workers: decoding threads (default: one per core, at most 4).

    Returns:
        int16 array, or float32 when a rescale is non-integer or a slice leaves int16.

    Raises:
        InvalidSeriesError: missing pixel data, truncated data, undecodable transfer syntax.

    Example:
        >>> decode_frames([]).shape
        (0, 0, 0)
    """
    if not plan:
        return np.zeros((0, 0, 0), np.int16)
    modules: dict[int, _PixelModule] = {}
    for task in plan:
        if id(task.dataset) not in modules:
            with _unreadable_pixel_module(task.source, series_uid):
                modules[id(task.dataset)] = _pixel_module(task.dataset, task.source, series_uid)
    shape = {(m.rows, m.columns) for m in modules.values()}
    if len(shape) != 1:
        raise InvalidSeriesError(
            QCReason.INCONSISTENT_GEOMETRY,
            f"all slices must have one Rows x Columns, not {sorted(shape)}",
            series_uid=series_uid,
        )
    rows, cols = shape.pop()
    integral = all(_is_integral(t.slope) and _is_integral(t.intercept) for t in plan)
    workers = workers or min(4, os.cpu_count() or 1)
    # multi-frame objects decoded by pydicom share one dataset: load its pixel data once, here
    for task in plan:
        module = modules[id(task.dataset)]
        if module.frames > 1 and module.native_offset is None:
            with _unreadable_pixel_module(task.source, series_uid):
                _ = task.dataset.PixelData
    dtype = np.int16 if integral else np.float32
    try:
        return _decode_into(plan, modules, np.empty((len(plan), rows, cols), dtype), workers)
    except _Int16Overflow:
        log.warning("series %s: HU values exceed int16; loading as float32", series_uid)
        return _decode_into(plan, modules, np.empty((len(plan), rows, cols), np.float32), workers)


# Jobs of the current process-pool decode, inherited by the forked workers (no pickling of datasets).
_FORK_JOBS: list[tuple[Dataset, int | None, UID]] = []


def _decode_inherited(k: int) -> np.ndarray:
    """Process-pool worker: decode job ``k`` of :data:`_FORK_JOBS`, returning stored values."""
    dataset, index, syntax = _FORK_JOBS[k]
    return get_decoder(syntax).as_array(dataset, index=index, decoding_plugin=_pool_plugin(syntax))[0]


# Decoder plugins for frames decoded in medai's own process, in the order asked for. gdcm comes last, used only
# where no other plugin can decode a syntax: on corrupt streams it can take the process down with it (a JPEG
# Lossless header claiming 116 bits per sample: a segmentation fault; a corrupt JPEG Baseline stream: an uncaught
# C++ exception, abort; tests/ingest/crashes/process-killers/), which neither a batch nor the PACS listener
# survives. pyjpegls's and pylibjpeg's codecs raise errors instead (pyjpegls first: it only decodes JPEG-LS, 1.2x as
# fast as gdcm there and 3x as fast as pylibjpeg; scripts/bench_decoders.py).
SAFE_PLUGINS = ("pyjpegls", "pylibjpeg", "pillow", "pydicom")


@functools.cache
def _plugin(syntax: UID) -> str:
    """The in-process decoder plugin for ``syntax``: the first of :data:`SAFE_PLUGINS` installed for it, else
    pydicom's own choice ("")."""
    available = get_decoder(syntax).available_plugins
    return next((name for name in SAFE_PLUGINS if name in available), "")


@functools.cache
def _pool_plugin(syntax: UID) -> str:
    """Decoder plugin for forked worker processes, where a codec that kills its process breaks the pool
    (``BrokenProcessPool``, read as an undecodable frame) and not the caller: pydicom's own choice (gdcm first:
    twice as fast as pylibjpeg on JPEG Lossless, scripts/bench_decoders.py), except JPEG 2000, which gdcm
    decodes with several OpenJPEG threads (fastest alone, slowest when each worker process also spawns
    threads); pylibjpeg-openjpeg uses one thread per frame.
    """
    if syntax in _JPEG2000 and "pylibjpeg" in get_decoder(syntax).available_plugins:
        return "pylibjpeg"
    return ""


def _process_pool(workers: int) -> ProcessPoolExecutor | None:
    """A fork-based pool, or None where forking is not safe (other threads running, no fork)."""
    # fork only a single-threaded process (a PACS listener or viewer keeps the thread path); spawn and
    # forkserver would re-import the caller's __main__, which library code must not impose on scripts
    if threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))


def _decode_into(
    plan: Sequence[FrameTask], modules: dict[int, _PixelModule], out: np.ndarray, workers: int
) -> np.ndarray:
    compressed = [k for k, t in enumerate(plan) if modules[id(t.dataset)].transfer_syntax.is_compressed]
    pool = _process_pool(workers) if workers > 1 and len(compressed) >= _PROCESS_MIN_FRAMES else None
    in_processes = set(compressed) if pool is not None else set()

    def fill(k: int) -> None:
        task = plan[k]
        module = modules[id(task.dataset)]
        if module.native_offset is not None:
            _fill_native(task, module, out[k])
        else:
            _fill_decoded(task, module, out[k])

    if pool is not None:
        # JPEG 2000 / JPEG-LS / JPEG / RLE codecs hold the GIL: decode in forked worker processes
        _FORK_JOBS[:] = [
            (
                plan[k].dataset,
                plan[k].frame if modules[id(plan[k].dataset)].frames > 1 else None,
                modules[id(plan[k].dataset)].transfer_syntax,
            )
            for k in compressed
        ]
        try:
            with pool:
                results = pool.map(_decode_inherited, range(len(compressed)), chunksize=4)
                for k in compressed:
                    task, module = plan[k], modules[id(plan[k].dataset)]
                    try:
                        array = next(results)
                    except BrokenProcessPool as exc:  # a codec killed its worker: which frame is not known
                        raise InvalidSeriesError(
                            QCReason.UNDECODABLE_TRANSFER_SYNTAX,
                            f"a decoder process died on a corrupt {module.transfer_syntax.name} frame of this "
                            f"series (at or after {task.source}, frame {task.frame})",
                        ) from exc
                    except BaseException as exc:
                        if not _is_codec_failure(exc):
                            raise
                        raise _undecodable(task, module, exc) from exc
                    _check_decoded(array, task, out[k])
                    _to_hu(array, out[k], task, module)
        finally:
            _FORK_JOBS.clear()
    rest = [k for k in range(len(plan)) if k not in in_processes]
    if workers <= 1 or len(rest) <= 1:
        for k in rest:
            fill(k)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medai-decode") as threads:
            for _ in threads.map(fill, rest):
                pass
    return out
