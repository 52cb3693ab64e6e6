"""The processor protocol: what a span-stage or trace-stage step must provide.

Two stages, one registry (entry-point group ``tracesieve.processors``, which the
built-ins use too):

* **span stage** (``kind = "span"``): runs inline on the receiver's worker thread,
  once per decoded request, *before* the writer. It takes a span batch (a
  ``pyarrow.Table`` of :data:`tracesieve.storage.schema.SPAN_SCHEMA`) and returns
  the batch to store. It may rewrite any column but must keep the schema.
* **trace stage** (``kind = "trace"``): runs on the judge thread once a trace has
  settled (no new span for ``decision_wait``). It takes a :class:`TraceBatch`
  and returns it, usually with detections or candidates added.

A processor class is built with ``from_config(options, path=...)``, which must
validate every option and raise :class:`ConfigError` naming each problem with
its YAML path (``processors.pii.extra_patterns[2]: ...``) -- at startup, not at 3 am.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from tracesieve.storage.schema import Candidate, Detection

#: A span as the trace stage sees it: one ``spans`` row as a dict, JSON columns
#: (attributes, resource_attributes, scope_attributes, events, links, pii_redactions) already parsed,
#: times as aware datetimes.
SpanRow = dict[str, Any]


@dataclasses.dataclass
class TraceBatch:
    """Settled traces travelling through the trace stage.

    ``traces`` maps trace_id to its spans (sorted by start_time). Detectors add
    to ``detections``; promotion adds to ``candidates``. The writer stores both.
    """

    traces: dict[str, list[SpanRow]]
    detections: list[Detection] = dataclasses.field(default_factory=list)
    candidates: list[Candidate] = dataclasses.field(default_factory=list)


class StoreReader(Protocol):
    """Read-only access to the store for trace-stage processors (e.g. existing candidates for dedupe)."""

    def query(self, sql: str, params: Sequence[Any] = (), *, time_limit: float | None = None) -> list[dict[str, Any]]:
        """Run one read statement and return its rows as dicts; one running past ``time_limit`` seconds
        is interrupted and raises."""
        ...


@runtime_checkable
class SpanProcessor(Protocol):
    """A span-stage step. Runs on a receiver worker thread, once per batch, possibly concurrently."""

    kind: ClassVar[str]  # "span"

    def process(self, batch: pa.Table) -> pa.Table:
        """Return the batch to pass on (same schema). Must not keep references to it."""
        ...

    def shutdown(self) -> None:
        """Release resources. Safe to call twice, and before any batch."""
        ...


@runtime_checkable
class TraceProcessor(Protocol):
    """A trace-stage step. Runs on the single judge thread; must be deterministic so judging is idempotent."""

    kind: ClassVar[str]  # "trace"

    def process_traces(self, batch: TraceBatch, store: StoreReader) -> TraceBatch:
        """Return the batch with this step's findings added."""
        ...

    def shutdown(self) -> None:
        """Release resources. Safe to call twice, and before any batch."""
        ...


class ProcessorFactory(Protocol):
    """What an entry point in ``tracesieve.processors`` must resolve to (usually the class itself)."""

    kind: ClassVar[str]

    def from_config(self, options: Mapping[str, Any], *, path: str) -> SpanProcessor | TraceProcessor:
        ...
