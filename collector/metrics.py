"""What ``GET /metrics`` shows (Prometheus text format), kept in one registry per collector.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (never the process-wide
default), so several collectors in one process (tests, ``gate``) never mix
their numbers. Instrumentation is per request / per commit / per judge round,
never per span: the ingest path pays a handful of lock-protected additions per
request. Values that already live somewhere (queue depth, pending traces, the
stored detections and candidates) are read when scraped, through
:class:`StateSource`, instead of being mirrored.

Every metric name and label is listed in README.md (Metrics and operations).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tracesieve.processors.pii_patterns import BUILTIN_TYPES
from tracesieve.storage.errors import PermanentError, RetryableError, TooLargeError, UnauthenticatedError
from tracesieve.storage.schema import CANDIDATE_STATUSES, FAILURE_MODES

log = logging.getLogger("tracesieve.metrics")

#: The Content-Type of a scrape.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

RECEIVERS = ("grpc", "http")

#: Why spans or requests were refused (the ``reason`` label). Per-span rejections (bad ids, end before
#: start, answered through partial_success) are ``invalid_span``.
REFUSAL_REASONS = ("invalid_span", "invalid_request", "too_large", "unauthenticated", "throttled", "memory",
                   "commit_timeout", "commit_failed", "unavailable", "unsupported_media_type", "internal")

#: The reasons each refusal counter shows from the first scrape (README, Metrics and operations).
SPAN_REFUSAL_REASONS = ("invalid_span", "throttled", "memory", "commit_timeout", "commit_failed")
REQUEST_REFUSAL_REASONS = ("unauthenticated", "too_large", "invalid_request", "unsupported_media_type",
                           "unavailable", "internal")

REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
COMMIT_SPANS_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
LAG_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


@dataclasses.dataclass(frozen=True)
class StoreState:
    """What a scrape reads from the store: stored detections and candidates, and the judge's backlog."""

    detections_by_mode: Mapping[str, int]
    candidates_by_status: Mapping[str, int]
    trace_stage_lag_seconds: float


@dataclasses.dataclass(frozen=True)
class StateSource:
    """Callables a scrape reads (any thread): queued spans, pending traces, and the store state."""

    queued_spans: Callable[[], int]
    pending_traces: Callable[[], int]
    store_state: Callable[[], StoreState]
    wal_bytes: Callable[[], int | None] = lambda: None
    resident_bytes: Callable[[], int | None] = lambda: None


class ReceiverMetrics:
    """The span counters of one receiver (``grpc`` or ``http``), children bound once. Thread-safe."""

    def __init__(self, metrics: Metrics, receiver: str) -> None:
        self._metrics = metrics
        self.receiver = receiver
        self._received = metrics.spans_received.labels(receiver)
        self._accepted = metrics.spans_accepted.labels(receiver)
        self._duration = metrics.request_seconds.labels(receiver)

    def received(self, spans: int) -> None:
        """Spans counted in a decoded request, before anything is refused."""
        self._received.inc(spans)

    def accepted(self, spans: int) -> None:
        """Spans committed and acknowledged."""
        self._accepted.inc(spans)

    def refused(self, reason: str, spans: int) -> None:
        """Spans not stored, by reason (see REFUSAL_REASONS)."""
        if spans:
            self._metrics.spans_refused.labels(self.receiver, reason).inc(spans)

    def request_refused(self, reason: str) -> None:
        """A whole Export request answered with an error status."""
        self._metrics.requests_refused.labels(self.receiver, reason).inc()

    def observe_request(self, seconds: float) -> None:
        """One Export request answered (success or not), from arrival to response."""
        self._duration.observe(seconds)

    def add_redactions(self, counts: Mapping[str, int]) -> None:
        self._metrics.add_redactions(counts)


def refusal_reason(exc: BaseException) -> str:
    """The ``reason`` label of a whole Export request answered with ``exc``."""
    if isinstance(exc, RetryableError):
        return "unavailable"
    if isinstance(exc, TooLargeError):
        return "too_large"
    if isinstance(exc, UnauthenticatedError):
        return "unauthenticated"
    if isinstance(exc, PermanentError):
        return "invalid_request"
    return "internal"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.spans_received = Counter(
            "tracesieve_spans_received", "Spans in decoded Export requests.", ["receiver"], registry=r)
        self.spans_accepted = Counter(
            "tracesieve_spans_accepted", "Spans committed to the store and acknowledged.", ["receiver"], registry=r)
        self.spans_already_stored = Counter(
            "tracesieve_spans_already_stored", "Acknowledged spans that were stored already (an exporter's "
            "retry of a batch whose answer it lost, a re-sent batch): answered as stored, not stored twice.",
            registry=r)
        self.spans_refused = Counter(
            "tracesieve_spans_refused", "Spans not stored: rejected one by one (reason invalid_span) or "
            "with their whole request.", ["receiver", "reason"], registry=r)
        self.requests_refused = Counter(
            "tracesieve_export_requests_refused", "Export requests answered with an error status.",
            ["receiver", "reason"], registry=r)
        self.request_seconds = Histogram(
            "tracesieve_export_request_duration_seconds", "Time to answer an Export request (to the commit).",
            ["receiver"], buckets=REQUEST_SECONDS_BUCKETS, registry=r)
        self.commit_seconds = Histogram(
            "tracesieve_commit_duration_seconds", "Duration of one group commit of spans.",
            buckets=COMMIT_SECONDS_BUCKETS, registry=r)
        self.commit_spans = Histogram(
            "tracesieve_commit_batch_spans", "Spans in one group commit.", buckets=COMMIT_SPANS_BUCKETS, registry=r)
        self.checkpoints = Counter(
            "tracesieve_checkpoints", "Checkpoints of the store's WAL the writer ran (result done) or DuckDB "
            "refused and the writer will try again (result deferred; many in a row mean the WAL keeps growing).",
            ["result"], registry=r)
        self.checkpoint_seconds = Histogram(
            "tracesieve_checkpoint_duration_seconds", "Duration of one checkpoint the writer ran; requests "
            "arriving meanwhile wait for it.", buckets=COMMIT_SECONDS_BUCKETS, registry=r)
        for result in ("done", "deferred"):
            self.checkpoints.labels(result)
        self.redactions = Counter(
            "tracesieve_redactions", "Values replaced by the pii processor, by type.", ["type"], registry=r)
        self.traces_judged = Counter("tracesieve_traces_judged", "Trace judgements run.", registry=r)
        self.judge_lag = Histogram(
            "tracesieve_trace_judge_lag_seconds", "From a trace becoming settled (quiet for decision_wait) to "
            "its judgement being stored.", buckets=LAG_SECONDS_BUCKETS, registry=r)
        self.expect_redaction_types(BUILTIN_TYPES)  # a type never seen reads 0, not "no data"
        for receiver in RECEIVERS:  # zero samples visible from the first scrape
            self.spans_received.labels(receiver)
            self.spans_accepted.labels(receiver)
            self.request_seconds.labels(receiver)
            for reason in SPAN_REFUSAL_REASONS:
                self.spans_refused.labels(receiver, reason)
            for reason in REQUEST_REFUSAL_REASONS:
                self.requests_refused.labels(receiver, reason)
        self._lock = threading.Lock()
        self._state: StateSource | None = None
        r.register(_ScrapeTimeGauges(self))

    def receiver(self, name: str) -> ReceiverMetrics:
        return ReceiverMetrics(self, name)

    def watch(self, source: StateSource) -> None:
        """Read the gauges from ``source`` on every scrape (set once the collector has started)."""
        with self._lock:
            self._state = source

    def expect_redaction_types(self, types: Iterable[str]) -> None:
        """Show these placeholder types at 0 from the first scrape: the built-in ones, and the collector
        adds each ``extra_patterns`` name (EMPLOYEE_ID read "no data" until its first match, and an alert
        on its rate had nothing to compare)."""
        for kind in types:
            self.redactions.labels(kind)

    def add_redactions(self, counts: Mapping[str, int]) -> None:
        for kind, n in counts.items():
            if n:
                self.redactions.labels(kind).inc(n)

    def observe_commit(self, spans: int, already_stored: int, seconds: float) -> None:
        """One group commit of ``spans`` (writer thread), ``already_stored`` of them not stored again."""
        self.commit_spans.observe(spans)
        if already_stored:
            self.spans_already_stored.inc(already_stored)
        self.commit_seconds.observe(seconds)

    def observe_checkpoint(self, done: bool, seconds: float) -> None:
        """One checkpoint the writer ran or had refused (writer thread)."""
        self.checkpoints.labels("done" if done else "deferred").inc()
        if done:
            self.checkpoint_seconds.observe(seconds)

    def judged(self, traces: int, lags: Iterable[float] = ()) -> None:
        """One judge round stored: how many traces, and each settled trace's lag in seconds."""
        self.traces_judged.inc(traces)
        for lag in lags:
            self.judge_lag.observe(max(0.0, lag))

    def spans_accepted_total(self) -> float:
        """All receivers together (for the periodic status line)."""
        return sum(s.value for family in self.spans_accepted.collect() for s in family.samples
                   if s.name.endswith("_total"))

    def state(self) -> StateSource | None:
        with self._lock:
            return self._state

    def render(self) -> bytes:
        """The scrape body, in the Prometheus text format 0.0.4."""
        return generate_latest(self.registry)


class _ScrapeTimeGauges:
    """Gauges read from their owners at scrape time instead of being mirrored on every change."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        source = self._metrics.state()
        if source is None:
            return
        yield GaugeMetricFamily("tracesieve_queued_spans", "Spans accepted but not yet committed (the queue "
                                "max_queued_spans bounds).", value=source.queued_spans())
        yield GaugeMetricFamily("tracesieve_pending_traces", "Traces with spans not judged yet.",
                                value=source.pending_traces())
        resident = source.resident_bytes()
        if resident:
            yield GaugeMetricFamily("tracesieve_resident_memory_bytes", "Resident memory of the collector and its "
                                    "span workers (what receivers.otlp.limits.max_memory compares).", value=resident)
        wal = source.wal_bytes()
        if wal is not None:
            yield GaugeMetricFamily("tracesieve_wal_bytes", "Bytes in the store's write-ahead log: commits not yet "
                                    "checkpointed, whose rows DuckDB also holds in memory uncompressed. It falls "
                                    "back after each checkpoint; if it only grows, checkpoints are being refused.",
                                    value=wal)
        try:
            state = source.store_state()
        except Exception as exc:  # a lake's catalog is down, say: the process's own series still go out
            log.warning("metrics: the store gauges are left out of this scrape (%s)", type(exc).__name__)
            return
        yield GaugeMetricFamily("tracesieve_trace_stage_lag_seconds", "How long the oldest settled trace has "
                                "been waiting for its judgement (0 when the judge is caught up).",
                                value=state.trace_stage_lag_seconds)
        detections = GaugeMetricFamily("tracesieve_detections", "Stored detections by failure_mode.",
                                       labels=["failure_mode"])
        # Every mode and status is a series from the first scrape: a count that falls to nothing (the
        # last new candidate rejected) reads 0 instead of vanishing.
        by_mode = dict.fromkeys(FAILURE_MODES, 0) | dict(state.detections_by_mode)
        for mode, n in sorted(by_mode.items()):
            detections.add_metric([mode], n)
        yield detections
        candidates = GaugeMetricFamily("tracesieve_candidates", "Candidates by status.", labels=["status"])
        by_status = dict.fromkeys(CANDIDATE_STATUSES, 0) | dict(state.candidates_by_status)
        for status, n in sorted(by_status.items()):
            candidates.add_metric([status], n)
        yield candidates
