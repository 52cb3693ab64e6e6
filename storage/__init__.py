"""Bottom floor: the span batch schema, DuckDB schema and migrations, the group-commit writer, queries."""

import importlib.util
import sys


def _answer_missing_pandas_from_cache() -> None:
    """Make DuckDB's per-value ``import pandas`` probe fail from ``sys.modules`` instead of the disk.

    DuckDB's Python binding tries ``import pandas`` for every parameter and result it converts (about
    27 times per ``execute`` of the judge's queries). Python does not remember a failed import, so
    without pandas installed each probe searched ``sys.path`` again: measured at half the cost of
    a small query and 7% of the collector's CPU under load. A ``None`` entry makes the import fail
    at once; when pandas is installed nothing changes.
    """
    if "pandas" not in sys.modules and importlib.util.find_spec("pandas") is None:
        sys.modules["pandas"] = None  # type: ignore[assignment]


_answer_missing_pandas_from_cache()
