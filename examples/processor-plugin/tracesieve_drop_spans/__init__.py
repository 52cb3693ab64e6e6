"""A tiny third-party span-stage processor: drop spans whose name is in a configured list.

Registered through the entry-point group ``tracesieve.processors`` (see
pyproject.toml), then named in a pipeline like a built-in::

    processors:
      drop_spans: {names: [healthcheck, ping]}
    service:
      pipelines:
        traces: {processors: [pii, drop_spans, detectors, promotion]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from tracesieve.processors.base import SpanProcessor
from tracesieve.processors.options import OptionReader


class DropSpans(SpanProcessor):
    kind: ClassVar[str] = "span"

    def __init__(self, names: list[str]) -> None:
        self._names = pa.array(names, pa.string())

    @classmethod
    def from_config(cls, options: Mapping[str, Any], *, path: str) -> DropSpans:
        opts = OptionReader(options, path)
        names = opts.list("names", [])
        for i, name in enumerate(names):
            if not isinstance(name, str):
                opts.problem("names", f"item {i} must be a string, got {name!r}")
        opts.finish()
        return cls([n for n in names if isinstance(n, str)])

    def process(self, batch: pa.Table) -> pa.Table:
        if len(self._names) == 0:
            return batch
        keep = pc.invert(pc.fill_null(pc.is_in(batch.column("name"), value_set=self._names), False))
        return batch.filter(keep)

    def shutdown(self) -> None:
        return None
