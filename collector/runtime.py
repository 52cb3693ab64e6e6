"""Process-wide runtime settings the collector's processes start with."""

from __future__ import annotations

import gc

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
