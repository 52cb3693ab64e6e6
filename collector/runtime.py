"""Process-wide runtime settings the collector's processes start with."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from collections.abc import Callable
from typing import Any, Self

#: Allocations between young-generation collections (Python's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Collect garbage less often, and never walk what start-up loaded.

    Decoding a 512-span request or judging 300 traces allocates hundreds of thousands of
    short-lived objects, and with the default thresholds the collector spent about a quarter
    of decode time and a tenth of judge time in ``gc`` (bench/ingest.py, py-spy). Nothing on
    the hot path builds reference cycles that need prompt collection, so a young generation
    of 50,000 objects is safe; ``gc.freeze`` moves the modules, config and compiled patterns
    loaded at start-up out of every later full collection.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


# --------------------------------------------------------------------------- the C heap

#: Seconds between two returns of the C heap's free pages to the OS. Every page given back is faulted
#: in and zeroed again when the heap grows into it; at 10 s the heap regrew between trims under
#: overload (main process 630-720 MB against 410-590 MB at 2 s), and the CPU cost of 2 s did not
#: stand out of the machine's noise (bench/ingest.py, processors off: 196-203 us/span either way).
TRIM_SECONDS = 2.0


def _glibc() -> Any | None:
    """The C library when it is glibc (malloc_trim exists), else None: musl, macOS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def trim_heap() -> None:
    """Return the C heap's free pages to the OS (DuckDB, protobuf and big Python strings live there).

    glibc gives back only the top of a heap by itself; the pages of freed request bodies and
    span rows in the middle stay resident until ``malloc_trim`` releases them. About 10-20 ms
    for a few hundred MB held. (Fewer malloc arenas held less as well, but DuckDB's writer then
    waited on the arena locks: ~3% fewer spans/s in bench/ingest.py.)
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class Periodic:
    """A daemon thread named ``name`` that calls ``action`` every ``every`` seconds until stopped."""

    def __init__(self, every: float, action: Callable[[], None], name: str) -> None:
        self._every = every
        self._action = action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._action()


class HeapTrimmer(Periodic):
    """Calls :func:`trim_heap` every ``every`` seconds until stopped (only where glibc is the C library)."""

    def __init__(self, every: float = TRIM_SECONDS) -> None:
        super().__init__(every, trim_heap, "tracesieve-heap-trim")

    def start(self) -> Self:
        return super().start() if _LIBC is not None else self


# --------------------------------------------------------------------------- resident memory

#: Seconds between two readings of the resident memory: a 512-span request grows the collector by a
#: few MB, so requests arriving within one interval are admitted against the same reading.
MEMORY_SAMPLE_SECONDS = 0.2

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (Linux /proc; 0 where that cannot be read: another OS, a process gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


class MemoryWatch(Periodic):
    """The resident memory of this process and its span workers, read every MEMORY_SAMPLE_SECONDS.

    ``receivers.otlp.limits.max_memory`` compares against it, as the OpenTelemetry Collector's
    memory_limiter does: past the limit, requests get the throttling answer instead of growing the
    process (the exporters retry). A daemon thread reads it so that no request pays for the reading.
    """

    def __init__(self, worker_pids: Callable[[], list[int]], every: float = MEMORY_SAMPLE_SECONDS) -> None:
        super().__init__(every, self._refresh, "tracesieve-memory")
        self._worker_pids = worker_pids
        self.resident = self._read()

    def _refresh(self) -> None:
        self.resident = self._read()

    def _read(self) -> int:
        try:
            pids = self._worker_pids()
        except Exception:  # the pool is being replaced: count this process alone until the next reading
            pids = []
        return sum(resident_bytes(pid) for pid in (os.getpid(), *pids))
