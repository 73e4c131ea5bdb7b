"""Keep freed memory for the next study: glibc's allocator tuned for a process that scores study after study.

A 300-slice study passes through a few hundred MB of short-lived numpy arrays (the HU volume, its float copies,
the coarse grids). glibc hands every allocation over its ``M_MMAP_THRESHOLD`` (a few MB) to the kernel with
``mmap`` and returns it with ``munmap`` when freed, so the next study touches every page of the same sizes again:
about 15,000 page faults (60 MB) and 0.05-0.2 s of kernel time per study on a 2-core CPU
(docs/benchmarks.md). :func:`keep_freed_memory` raises both thresholds, so freed blocks stay in the heap and
the next study reuses them. The process's peak memory is unchanged (the same arrays, reused); what changes is
that it no longer gives memory back between studies: it stays near the peak of the largest study it scored. Every
thread allocates from the one heap (``M_ARENA_MAX`` 1): with glibc's default of a heap per thread, the arrays the
classifier's network thread frees would be kept in a second heap that the main thread's next study cannot reuse
(0.86 GiB instead of 0.68 GiB after ten 300-slice studies).

:meth:`medai.inference.classifier.Classifier.load` calls it (the CLI, the batch workers, the PACS worker and
the viewer all score through it); ``keep_memory=False`` there, or ``MEDAI_KEEP_FREED_MEMORY=0``, leaves the
allocator as it was. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

__all__ = ["KEEP_ENV", "keep_freed_memory"]

log = logging.getLogger(__name__)

KEEP_ENV = "MEDAI_KEEP_FREED_MEMORY"
# mallopt parameters (<malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks up to this size come from the heap, and the heap keeps this much free memory before trimming.
_DEFAULT_LIMIT = 1 << 30
# Threads share this many heaps: each heap keeps its own freed memory, and a study's arrays freed in one are not
# reused from another (the classifier's network thread would hold a second study's worth).
_ARENAS = 1
_done: set[int] = set()


def keep_freed_memory(limit_bytes: int = _DEFAULT_LIMIT) -> bool:
    """Let this process keep up to ``limit_bytes`` of freed memory for reuse; True when the allocator was tuned.

    Idempotent; False on a C library other than glibc, when ``$MEDAI_KEEP_FREED_MEMORY`` is ``0``, or when
    glibc refuses the values.

    Example:
        >>> keep_freed_memory() in (True, False)
        True
    """
    if os.environ.get(KEEP_ENV, "1").strip() == "0":
        return False
    if limit_bytes in _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if not 0 < limit_bytes < 1 << 31:
        raise ValueError(f"limit_bytes must be in 1 .. 2**31 - 1, not {limit_bytes}")
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(limit_bytes)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(limit_bytes)) == 1 and ok
        ok = libc.mallopt(_M_ARENA_MAX, ctypes.c_int(_ARENAS)) == 1 and ok
    except (OSError, AttributeError) as exc:  # no libc.so.6, or no mallopt in it
        log.debug("allocator left as it was: %s", exc)
        return False
    if ok:
        _done.add(limit_bytes)
    return ok
