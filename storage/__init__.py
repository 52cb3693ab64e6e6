"""Bottom floor: the span batch schema, DuckDB schema and migrations, the group-commit writer, queries."""

import importlib.abc
import importlib.util
import sys


class _MissingModuleFinder(importlib.abc.MetaPathFinder):
    """Fails imports of the named, known-missing modules at once instead of searching ``sys.path``."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _fail_missing_pandas_fast() -> None:
    """Make DuckDB's per-value ``import pandas`` probe fail without touching the disk.

    DuckDB's Python binding tries ``import pandas`` for every parameter and result it converts (about
    27 times per ``execute`` of the judge's queries). Python does not remember a failed import, so
    without pandas installed each probe searched ``sys.path`` again: measured at half the cost of
    a small query and 7% of the collector's CPU under load. A finder placed first answers "not
    installed" at once (a ``None`` in ``sys.modules`` would do too, but pyarrow reads that as a
    module). When pandas is installed nothing changes.
    """
    if "pandas" in sys.modules or importlib.util.find_spec("pandas") is not None:
        return
    if not any(isinstance(f, _MissingModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MissingModuleFinder(frozenset({"pandas"})))


_fail_missing_pandas_fast()
