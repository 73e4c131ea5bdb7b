"""medai.inference.allocator: freed study-sized arrays stay for reuse (no page faults next time), or are given back."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from medai.inference.allocator import KEEP_ENV, keep_freed_memory

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator"
)

# In a fresh process: fill a 200 MB array and free it; print how much of it the process still holds (MB).
_PROBE = """
import numpy as np
from medai.inference.allocator import keep_freed_memory
def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
tuned = keep_freed_memory()
before = rss_mb()
a = np.ones(50_000_000, np.float32)
del a
print(tuned, round(rss_mb() - before))
"""


def _kept_after_free(keep: str) -> tuple[bool, int]:
    env = {**os.environ, KEEP_ENV: keep}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, kept = out.stdout.split()
    return tuned == "True", int(kept)


def test_a_freed_study_sized_array_stays_for_the_next_study() -> None:
    tuned, kept = _kept_after_free("1")
    assert tuned
    assert kept > 150  # the 200 MB stay mapped in the heap: the next study reuses them without faulting them in
    untouched, kept = _kept_after_free("0")
    assert not untouched
    assert kept < 20  # glibc's default: unmapped on free, to be faulted in (and zeroed) again by the next study


# In a fresh process: where a small block comes from in the main thread and in a second thread (libc's malloc).
_HEAP_PROBE = """
import ctypes, sys, threading
from medai.inference.allocator import keep_freed_memory
keep_freed_memory() if sys.argv[1] == "1" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
main = libc.malloc(4096)
seen = []
t = threading.Thread(target=lambda: seen.append(libc.malloc(4096))); t.start(); t.join()
print(abs(seen[0] - main))
"""


def _thread_heap_distance(tune: str) -> int:
    env = {**os.environ, KEEP_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, tune], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_every_thread_allocates_from_the_one_heap() -> None:
    """The network thread's freed arrays serve the next study's main thread instead of being kept in a heap of
    its own (ten studies in one process: 0.86 GiB with glibc's per-thread heaps, 0.68 GiB with one;
    docs/benchmarks.md)."""
    assert _thread_heap_distance("1") < 1 << 30  # beside the main thread's block, in the same heap
    assert _thread_heap_distance("0") > 1 << 30  # glibc's default: a heap mapped for the new thread, far away


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="limit_bytes"):
        keep_freed_memory(1 << 31)
    assert keep_freed_memory() is True and keep_freed_memory() is True  # idempotent
