"""Counters behind ``GET /metrics`` (Prometheus text format). Updated per batch, never per span."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.redactions: collections.Counter[str] = collections.Counter()
        self.refused_by_reason: collections.Counter[str] = collections.Counter()
        self.export_seconds_total = 0.0
        self.exports = 0

    def add(self, name: str, value: float = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def add_redactions(self, counts: Mapping[str, int]) -> None:
        if counts:
            with self._lock:
                self.redactions.update(counts)

    def refused(self, reason: str, spans: int) -> None:
        with self._lock:
            self.refused_by_reason[reason] += spans
            self.counters["spans_refused"] += spans

    def observe_export(self, seconds: float) -> None:
        with self._lock:
            self.export_seconds_total += seconds
            self.exports += 1

    def render(self, gauges: Mapping[str, float], detections_by_mode: Mapping[str, int],
               candidates_by_status: Mapping[str, int], commit: Callable[[], tuple[int, float, float]]) -> str:
        commits, last, total = commit()
        with self._lock:
            c = dict(self.counters)
            red = dict(self.redactions)
            refused = dict(self.refused_by_reason)
            exports, export_total = self.exports, self.export_seconds_total
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value:g}")

        metric("tracesieve_spans_received_total", "counter", "Spans received in export requests.",
               [("", c.get("spans_received", 0))])
        metric("tracesieve_spans_accepted_total", "counter", "Spans committed to the store (acknowledged).",
               [("", c.get("spans_accepted", 0))])
        metric("tracesieve_spans_rejected_total", "counter", "Spans rejected one by one (partial_success).",
               [("", c.get("spans_rejected", 0))])
        metric("tracesieve_spans_refused_total", "counter", "Spans refused with their whole request, by reason.",
               [(f'{{reason="{r}"}}', v) for r, v in sorted(refused.items())] or [('{reason="none"}', 0)])
        metric("tracesieve_export_requests_total", "counter", "Export requests answered.", [("", exports)])
        metric("tracesieve_export_seconds_total", "counter", "Time spent answering export requests.",
               [("", export_total)])
        metric("tracesieve_queue_spans", "gauge", "Spans accepted but not yet committed.",
               [("", gauges.get("queue_spans", 0))])
        metric("tracesieve_pending_traces", "gauge", "Traces waiting to be judged.",
               [("", gauges.get("pending_traces", 0))])
        metric("tracesieve_commits_total", "counter", "Group commits.", [("", commits)])
        metric("tracesieve_commit_seconds_total", "counter", "Time spent in group commits.", [("", total)])
        metric("tracesieve_commit_latency_seconds", "gauge", "Duration of the last group commit.", [("", last)])
        metric("tracesieve_redactions_total", "counter", "Values replaced by the pii processor, by type.",
               [(f'{{type="{t}"}}', v) for t, v in sorted(red.items())])
        metric("tracesieve_traces_judged_total", "counter", "Trace judgements run.",
               [("", c.get("traces_judged", 0))])
        metric("tracesieve_detections", "gauge", "Stored detections by failure_mode.",
               [(f'{{failure_mode="{m}"}}', v) for m, v in sorted(detections_by_mode.items())])
        metric("tracesieve_candidates", "gauge", "Candidates by status.",
               [(f'{{status="{s}"}}', v) for s, v in sorted(candidates_by_status.items())])
        return "\n".join(lines) + "\n"
