"""The collector's process settings: the C heap gives freed pages back to the OS."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Allocates 400 MB of 4 KB strings (malloc, not pymalloc) and frees 49 in 50 of them: the survivors
# are spread over the heap, so glibc's own top-of-heap trim cannot return the free pages between
# them. Prints RSS in MB before and after trim_heap.
PROBE = textwrap.dedent("""
    import sys
    from tracesieve.collector.runtime import trim_heap

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS:"))

    held = [bytes(4000) + bytes([i % 256]) for i in range(100_000)]
    survivors = held[::50]
    del held
    before = rss()
    trim_heap()
    print(before, rss())
""")


def test_trim_heap_returns_freed_pages_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    before, after = (int(x) for x in out.stdout.split())
    assert before > 350, f"the probe did not hold the freed heap ({before} MB before the trim)"
    assert after < before - 300, f"trim_heap returned little: {before} MB -> {after} MB"


def test_heap_trimmer_stops() -> None:
    from tracesieve.collector.runtime import HeapTrimmer

    trimmer = HeapTrimmer(every=0.01).start()
    trimmer.stop()
    assert not trimmer._thread.is_alive()
