"""The shapes every floor agrees on: the span batch, detection and candidate rows.

They live at the bottom floor (``storage``) so that processors and the collector
can build on them without importing each other. The Arrow schema of a span
batch is the column list of the ``spans`` table, in the same order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

SPAN_KINDS = (
    "LLM", "TOOL", "AGENT", "RETRIEVER", "CHAIN", "EMBEDDING", "RERANKER",
    "GUARDRAIL", "EVALUATOR", "PROMPT", "DECISION", "UNKNOWN",
)

FAILURE_MODES = (
    "tool_invocation", "tool_argument", "retrieval_miss", "hallucination",
    "format_violation", "truncation", "refusal_overreach", "latency_breach",
    "loop", "blast_radius_breach", "llm_error", "negative_feedback",
)
SEVERITIES = ("P0", "P1", "P2", "P3")
BLAST_RADII = (
    "customer_visible", "internal_visible", "irreversible_write",
    "reversible_write", "no_external_effect",
)
CANDIDATE_STATUSES = ("new", "promoted", "rejected", "duplicate")
DATASET_SCHEMA_VERSION = 1

_TS = pa.timestamp("us", tz="UTC")

#: The ``spans`` table as an Arrow schema: one decoded request is one table of this shape.
#: JSON columns travel as strings (already serialised, already sanitized).
SPAN_SCHEMA = pa.schema([
    ("trace_id", pa.string()),
    ("span_id", pa.string()),
    ("parent_span_id", pa.string()),
    ("name", pa.string()),
    ("span_kind", pa.string()),
    ("start_time", _TS),
    ("end_time", _TS),
    ("duration_ms", pa.float64()),
    ("status_code", pa.string()),
    ("status_message", pa.string()),
    ("service_name", pa.string()),
    ("session_id", pa.string()),
    ("user_id", pa.string()),
    ("input_value", pa.string()),
    ("input_mime_type", pa.string()),
    ("output_value", pa.string()),
    ("output_mime_type", pa.string()),
    ("llm_model_name", pa.string()),
    ("llm_provider", pa.string()),
    ("llm_finish_reason", pa.string()),
    ("llm_token_count_prompt", pa.int64()),
    ("llm_token_count_completion", pa.int64()),
    ("llm_token_count_total", pa.int64()),
    ("tool_name", pa.string()),
    ("attributes", pa.string()),
    ("resource_attributes", pa.string()),
    ("events", pa.string()),
    ("links", pa.string()),
    ("scope_name", pa.string()),
    ("scope_version", pa.string()),
    ("otel_span_kind", pa.string()),
    ("trace_state", pa.string()),
    ("dropped_attributes_count", pa.int64()),
    ("dropped_events_count", pa.int64()),
    ("dropped_links_count", pa.int64()),
    ("received_at", _TS),
    ("pii_redactions", pa.string()),
    ("scope_attributes", pa.string()),  # added by migration 5: last, as ALTER TABLE put it
])

SPAN_COLUMNS: tuple[str, ...] = tuple(SPAN_SCHEMA.names)

#: Columns holding JSON text. Redaction treats them as JSON (escapes stay valid).
JSON_SPAN_COLUMNS = frozenset({"attributes", "resource_attributes", "scope_attributes", "events", "links",
                               "pii_redactions"})

#: Free-text columns the sanitizer scans (every string column that can carry content).
TEXT_SPAN_COLUMNS = (
    "name", "status_message", "service_name", "session_id", "user_id",
    "input_value", "output_value", "llm_model_name", "llm_provider", "llm_finish_reason", "tool_name",
    "attributes", "resource_attributes", "events", "links", "scope_name", "scope_version", "scope_attributes",
    "trace_state", "input_mime_type", "output_mime_type",
)


def empty_span_batch() -> pa.Table:
    return SPAN_SCHEMA.empty_table()


class CommitClock:
    """UTC wall time that never runs backwards in this process.

    ``spans.received_at`` and ``trace_state.first_received_at`` are stamped with it, and the writer
    finds a re-delivered span (and the judge a trace's spans) only among rows received since the
    trace's first arrival, less store.RECEIVED_MARGIN. Had the system clock been stepped back further
    than that margin (an NTP correction, a resumed VM), a span stored after the step would fall
    outside that window: stored twice when re-delivered, missed when its trace is judged. When the
    wall clock is behind the last reading, this one runs on at half the monotonic rate until the wall
    clock catches up: a step back of a minute is absorbed in two, and the settle delay reads up to
    twice as long meanwhile.
    """

    def __init__(self, wall: Callable[[], dt.datetime] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall or (lambda: dt.datetime.now(dt.timezone.utc))
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last: dt.datetime | None = None
        self._last_tick = 0.0

    def now(self) -> dt.datetime:
        wall = self._wall()
        with self._lock:
            tick = self._monotonic()
            if self._last is not None and wall < self._last:
                wall = self._last + dt.timedelta(seconds=max(0.0, tick - self._last_tick) / 2)
            self._last, self._last_tick = wall, tick
            return wall

    def not_before(self, moment: dt.datetime | None) -> None:
        """Never read earlier than ``moment``: the latest time the store already holds, at start-up."""
        if moment is None:
            return
        moment = moment.astimezone(dt.timezone.utc)
        with self._lock:
            if self._last is None or moment > self._last:
                self._last, self._last_tick = moment, self._monotonic()


#: The collector's clock (see CommitClock); ``utcnow`` reads it.
CLOCK = CommitClock()


def utcnow() -> dt.datetime:
    return CLOCK.now()


def stable_id(*parts: object, length: int = 16) -> str:
    """A deterministic hex id of the parts: the same finding always gets the same id."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:length]


@dataclasses.dataclass(frozen=True)
class Detection:
    """One finding of one rule on one trace. ``detection_id`` is derived, so judging twice is idempotent."""

    trace_id: str
    span_id: str
    detector: str
    failure_mode: str
    severity: str
    blast_radius: str
    message: str
    evidence: Mapping[str, Any]

    @property
    def detection_id(self) -> str:
        return stable_id(self.trace_id, self.span_id, self.detector, self.failure_mode)

    def as_row(self, detected_at: dt.datetime) -> dict[str, Any]:
        return {
            "detection_id": self.detection_id,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "detector": self.detector,
            "failure_mode": self.failure_mode,
            "severity": self.severity,
            "blast_radius": self.blast_radius,
            "message": self.message,
            "evidence": json.dumps(self.evidence, default=str, ensure_ascii=False),
            "detected_at": detected_at,
        }


@dataclasses.dataclass
class Candidate:
    """A draft regression case built from one detection (see DESIGN.md, candidates)."""

    detector: str
    failure_mode: str
    severity: str
    blast_radius: str
    input_hash: str
    input: dict[str, Any]
    context: dict[str, Any]
    observed: dict[str, Any]
    expected: dict[str, Any]
    source: dict[str, Any]
    trace_id: str
    intent: str = ""
    #: 'new' or 'duplicate' as decided by promotion; an existing row keeps its own status on upsert.
    status: str = "new"
    #: candidate_id of the earlier candidate this one nearly duplicates (status 'duplicate').
    duplicate_of: str | None = None
    #: MinHash signature of the input's normal form (word shingles), for near-duplicate checks.
    signature: list[int] = dataclasses.field(default_factory=list)
    #: When the failure was seen: its trace's latest span arrival (``received_at``); None = when stored.
    seen_at: dt.datetime | None = None

    @property
    def candidate_id(self) -> str:
        """``c`` + 11 hex of (detector, failure_mode, input_hash): the same failure is the same candidate everywhere."""
        return "c" + stable_id(self.detector, self.failure_mode, self.input_hash, length=11)


def json_loads_or(value: str | None, default: Any = None) -> Any:
    """Parse stored JSON text; return ``default`` for NULL or text that is not JSON."""
    if value is None:
        return default
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return default
