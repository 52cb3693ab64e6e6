"""Trace settling and the trace stage: judge each trace once it has been quiet for ``decision_wait``.

One judge thread polls ``trace_state`` for traces whose latest version has not
been judged and that received nothing for ``decision_wait``, runs the trace-stage
processors on them, and hands the results to the writer thread as one task
(detections replaced idempotently, candidates upserted, the judged version
recorded). Because the state lives in the database, a crash loses nothing: the
next start judges whatever was pending. A span arriving after its trace was
judged bumps the version, so the trace is judged again, without duplicates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
import time
from concurrent.futures import Future
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tracesieve.collector.metrics import Metrics
from tracesieve.processors.base import TraceBatch, TraceProcessor
from tracesieve.processors.detectors import DetectorsProcessor
from tracesieve.processors.promotion import PromotionProcessor
from tracesieve.processors.rules import Finding, TraceView
from tracesieve.storage import candidates as candidate_store
from tracesieve.storage import store
from tracesieve.storage.lake import redact
from tracesieve.storage.schema import Candidate, Detection, utcnow
from tracesieve.storage.writer import GroupCommitWriter

log = logging.getLogger("tracesieve.judge")

POLL_SECONDS = 0.25
#: While rounds keep failing (the store or the lake's catalog is down), the poll backs off up to this
#: and the failure is logged once per this many seconds, not four times a second.
FAILING_POLL_SECONDS = 5.0
#: A round whose traces settled longer ago than this is behind (DESIGN's target: detections within
#: decision_wait + 2 s): its rule jobs then queue in the span workers all at once, as Export requests
#: do, instead of one per worker at a time (span_stage.ProcessSpanStage.find_rule_findings).
LAG_BUDGET_SECONDS = 2.0
TRACES_PER_ROUND = 300
PENDING_COUNT_SECONDS = 2.0


class CursorReader:
    """StoreReader over one DuckDB cursor (used only by the judge thread), each query inside ``gate``."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection,
                 gate: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext) -> None:
        self._cursor = cursor
        self._gate = gate

    def query(self, sql: str, params: Sequence[Any] = (), *, time_limit: float | None = None) -> list[dict[str, Any]]:
        """Rows of ``sql`` as dicts; past ``time_limit`` seconds the statement is interrupted (InterruptException)."""
        with self._gate():
            timer = threading.Timer(time_limit, self._cursor.interrupt) if time_limit else None
            if timer is not None:
                timer.start()
            try:
                rel = self._cursor.execute(sql, list(params))
                columns = [d[0] for d in rel.description or []]
                return [dict(zip(columns, row)) for row in rel.fetchall()]
            finally:
                if timer is not None:  # joined: a timer still holding the cursor at exit aborts DuckDB
                    timer.cancel()
                    timer.join()


class TraceStore(Protocol):
    """Where settling state lives when it is not the DuckDB file's (a lake: storage.lake_writes.LakeTraceStore).

    ``save_judgement`` and ``mark_judged`` run on the writer thread inside its transaction.
    """

    def settled_traces(self, con: duckdb.DuckDBPyConnection, quiet_since: dt.datetime | None,
                       limit: int) -> list[tuple[str, int, dt.datetime | None]]: ...

    def count_unjudged(self, con: duckdb.DuckDBPyConnection) -> int: ...

    def save_judgement(self, con: duckdb.DuckDBPyConnection, due: Sequence[tuple[str, int, Any]],
                       detections: Sequence[Detection], candidates: Sequence[Candidate],
                       now: dt.datetime) -> None: ...

    def mark_judged(self, con: duckdb.DuckDBPyConnection, due: Sequence[tuple[str, int, Any]],
                    now: dt.datetime) -> None: ...


class RuleFinder(Protocol):
    """Runs the built-in detector rules elsewhere (span_stage.ProcessSpanStage: in its worker processes)."""

    def find_rule_findings(self, detectors: DetectorsProcessor, table: pa.Table, *,
                           behind: bool = False) -> dict[str, list[Finding]]: ...


class Judge:
    def __init__(
        self,
        cursor: duckdb.DuckDBPyConnection,
        writer: GroupCommitWriter,
        processors: Sequence[TraceProcessor],
        decision_wait: float,
        metrics: Metrics,
        trace_store: TraceStore | None = None,
        rule_finder: RuleFinder | None = None,
        step_ids: Sequence[str] = (),
    ) -> None:
        self._trace_store = trace_store
        # The pipeline ids (``span_counter``, ``detectors/strict``) the log names a failing step by.
        self._step_ids = {id(p): name for p, name in zip(processors, step_ids)}
        # The rules can run elsewhere when every other step reads only the traces that have detections.
        self._rule_finder = rule_finder if (
            processors and isinstance(processors[0], DetectorsProcessor)
            and all(isinstance(p, PromotionProcessor) for p in processors[1:])) else None
        self._cursor = cursor
        self._reader = CursorReader(cursor, writer.reading)
        self._writer = writer
        self._processors = list(processors)
        self.decision_wait = decision_wait
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracesieve-judge", daemon=True)
        self.pending = 0
        self._pending_counted_at = 0.0
        # The write of the previous round, still with the writer: its traces are left out of the next
        # round, which is judged meanwhile instead of waiting behind the span commits.
        self._in_flight: tuple[Future[None], frozenset[str]] | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        logged_at = 0.0
        while not self._stop.is_set():
            try:
                judged = self.judge_round(quiet=True)
            except Exception as exc:
                failures += 1
                if failures == 1 or time.monotonic() - logged_at >= FAILING_POLL_SECONDS:
                    logged_at = time.monotonic()
                    # redact: a lake's error quotes its catalog connection string, password included
                    log.error("judging failed (%s: %s); will retry%s", type(exc).__name__, redact(str(exc)[:200]),
                              f" ({failures} rounds failed so far)" if failures > 1 else "")
                self._stop.wait(min(POLL_SECONDS * 2 ** min(failures, 5), FAILING_POLL_SECONDS))
                continue
            if failures:
                log.info("judging works again after %d failed rounds", failures)
                failures = 0
            if not judged:
                self._stop.wait(POLL_SECONDS)

    def stop(self) -> None:
        """Stop polling (the thread finishes its current round)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def drain(self, deadline: float) -> int:
        """Judge every pending trace, settled or not, until none is left or ``deadline`` (monotonic) passes."""
        total = 0
        while time.monotonic() < deadline:
            judged = self.judge_round(quiet=False)
            total += judged
            if not judged and self._in_flight is None:
                break
            if not judged:
                self._settle_in_flight()
        self._settle_in_flight()
        return total

    def _settle_in_flight(self) -> None:
        """Wait for the previous round's write; a failed one leaves its traces unjudged, to be judged again."""
        if self._in_flight is None:
            return
        future, _ = self._in_flight
        self._in_flight = None
        try:
            future.result(timeout=120)
        except Exception as exc:
            log.error("writing a judged round failed (%s); its traces will be judged again", type(exc).__name__)

    def _run_processors(self, traces: dict[str, list[dict[str, Any]]], table: pa.Table,
                        since: dt.datetime | None) -> TraceBatch:
        batch = TraceBatch(traces=traces)
        for proc in self._processors:
            batch = self._run_processor(proc, batch)
            if isinstance(proc, DetectorsProcessor):
                batch = self._linked_feedback(batch, table, list(traces), since)
        return batch

    def _step_name(self, proc: TraceProcessor) -> str:
        return self._step_ids.get(id(proc)) or str(getattr(proc, "name", None) or type(proc).__name__)

    def _run_processor(self, proc: TraceProcessor, batch: TraceBatch) -> TraceBatch:
        """One step of the trace stage; a step that raises costs only its own output.

        A third-party step that fails must not take the built-in detectors' findings with it (the
        traces are marked judged either way): the step is tried again trace by trace, and a trace it
        still fails on keeps what the earlier steps found for it.
        """
        try:
            return _stepped(proc, batch, self._reader)
        except Exception as exc:
            if len(batch.traces) > 1:
                log.error("trace processor %s failed on %d traces (%s); running it trace by trace",
                          self._step_name(proc), len(batch.traces), type(exc).__name__)
            else:
                log.error("trace processor %s failed on trace %s (%s); its findings are kept without it",
                          self._step_name(proc), next(iter(batch.traces), "?"), type(exc).__name__)
                return batch
        out = TraceBatch(traces=batch.traces)
        for trace_id, spans in batch.traces.items():
            single = TraceBatch(traces={trace_id: spans},
                                detections=[d for d in batch.detections if d.trace_id == trace_id],
                                candidates=[c for c in batch.candidates if c.trace_id == trace_id])
            try:
                single = _stepped(proc, single, self._reader)
            except Exception as exc:
                log.error("trace processor %s failed on trace %s (%s); its findings are kept without it",
                          self._step_name(proc), trace_id, type(exc).__name__)
            out.detections.extend(single.detections)
            out.candidates.extend(single.candidates)
        return out

    def _judge_table(self, table: pa.Table, trace_ids: list[str], since: dt.datetime | None = None,
                     behind: bool = False) -> TraceBatch:
        """The trace stage over one round's spans; the built-in rules run in the rule finder when there is one.

        Only the traces with a finding become span dicts here (promotion needs them); a trace an
        operator rule matched is judged whole here, since blast radius reads every finding.
        """
        if self._rule_finder is not None:
            try:
                return self._judge_elsewhere(self._rule_finder, table, trace_ids, since, behind)
            except Exception as exc:
                log.warning("judging with the span workers failed (%s); judging this round here", type(exc).__name__)
        # One bad trace or step must not block the others forever (see _run_processor).
        return self._run_processors(store.traces_from_table(table, trace_ids), table, since)

    def _judge_elsewhere(self, finder: RuleFinder, table: pa.Table, trace_ids: list[str],
                         since: dt.datetime | None = None, behind: bool = False) -> TraceBatch:
        detectors = self._processors[0]
        assert isinstance(detectors, DetectorsProcessor)
        found = finder.find_rule_findings(detectors, table, behind=behind) if table.num_rows else {}
        sql = detectors.sql_findings(trace_ids, store.utc_datetimes(table.column("received_at")), self._reader) \
            if detectors.config.rules else {}
        failing = [t for t in trace_ids if t in found or t in sql]
        rows = table.filter(pc.is_in(table.column("trace_id"), pa.array(failing, pa.string())))
        batch = TraceBatch(traces=store.traces_from_table(rows, failing))
        for trace_id in failing:
            spans = batch.traces[trace_id]
            findings = detectors.judge(trace_id, spans, sql[trace_id]) if trace_id in sql else found[trace_id]
            batch.detections.extend(detectors.detections_for(trace_id, findings))
        batch = self._linked_feedback(batch, table, trace_ids, since)
        for proc in self._processors[1:]:
            batch = self._run_processor(proc, batch)
        return batch

    def _linked_feedback(self, batch: TraceBatch, table: pa.Table, trace_ids: Sequence[str],
                         since: dt.datetime | None) -> TraceBatch:
        """Feedback sent later, on a carrier span in a trace of its own, is a failure of the trace it links to.

        OpenInference sends post-hoc annotations that way (a new EVALUATOR span with one link to
        its target). Filed under the carrier's trace, the detection named a span of another trace,
        and its candidate held the carrier's empty input: every thumbs-down on every conversation
        became one candidate that nobody could replay. The finding now moves to the linked trace
        when the store holds it (onto the linked span, or the root for trace feedback), and its
        candidate is built from that trace's spans. A trace judged again gets back the findings
        moved onto it earlier (store.linked_feedback): its own spans no longer show them.
        """
        moved = [d for d in batch.detections
                 if d.failure_mode == "negative_feedback" and isinstance(d.evidence.get("target"), Mapping)]
        margin = store.LAKE_RECEIVED_MARGIN if self._trace_store is not None else store.RECEIVED_MARGIN
        with self._writer.reading():
            carried = store.linked_feedback(self._cursor, trace_ids, since, margin)
        if not moved and not carried:
            return batch
        wanted = ({str(d.evidence["target"].get("trace_id")) for d in moved}
                  | {d.trace_id for d in carried}) - batch.traces.keys()
        in_round = sorted(wanted & set(trace_ids))
        spans_of = store.traces_from_table(
            table.filter(pc.is_in(table.column("trace_id"), pa.array(in_round, pa.string()))), in_round)
        elsewhere = sorted(wanted - set(in_round))
        if elsewhere:
            with self._writer.reading():
                spans_of.update(store.traces_from_table(store.load_traces_table(self._cursor, elsewhere), elsewhere))
        traces = dict(batch.traces)
        moved_ids = {id(d) for d in moved}
        detections = [d for d in batch.detections if id(d) not in moved_ids]
        for d in moved:
            target = d.evidence["target"]
            trace_id = str(target.get("trace_id"))
            spans = traces.get(trace_id) or spans_of.get(trace_id)
            if not spans:  # not stored (yet, or any more): the finding stays with the carrier
                detections.append(d)
                continue
            traces[trace_id] = spans
            view = TraceView(trace_id, spans)  # the root as the rules see it, for trace feedback
            span_id = str(target.get("span_id"))
            if target.get("scope") in ("trace", "session") or span_id not in view.by_id:
                span_id = view.root_id
            detections.append(dataclasses.replace(d, trace_id=trace_id, span_id=span_id, evidence={
                **d.evidence, store.CARRIER_TRACE_KEY: d.trace_id, "carrier_span_id": d.span_id}))
        known = {d.detection_id for d in detections}
        for d in carried:
            spans = traces.get(d.trace_id) or spans_of.get(d.trace_id)
            if spans and d.detection_id not in known:
                traces[d.trace_id] = spans
                detections.append(d)
        return TraceBatch(traces=traces, detections=detections, candidates=list(batch.candidates))

    def _read_round(self, quiet_since: dt.datetime | None, in_flight: frozenset[str]) -> tuple[
            list[tuple[str, int, Any]], pa.Table | None, list[str], dt.datetime | None]:
        """The next due traces (those of the write still in flight left out) and their spans, in one snapshot."""
        cur = self._cursor
        states = self._trace_store
        cur.execute("BEGIN TRANSACTION")
        try:
            due = (states or store).settled_traces(cur, quiet_since, TRACES_PER_ROUND + len(in_flight))
            due = [d for d in due if d[0] not in in_flight][:TRACES_PER_ROUND]
            firsts = [d[2] for d in due if d[2] is not None]
            since = min(firsts) if len(firsts) == len(due) and firsts else None
            margin = store.LAKE_RECEIVED_MARGIN if states is not None else store.RECEIVED_MARGIN
            trace_ids = [d[0] for d in due]
            table = store.load_traces_table(cur, trace_ids, since, margin) if due else None
        finally:
            cur.execute("COMMIT")
        return due, table, trace_ids, since

    def judge_round(self, *, quiet: bool) -> int:
        """Judge up to TRACES_PER_ROUND due traces; returns how many were judged."""
        cur = self._cursor
        quiet_since = utcnow() - dt.timedelta(seconds=self.decision_wait) if quiet else None
        states = self._trace_store
        if not self._processors:
            due = (states or store).settled_traces(cur, quiet_since, TRACES_PER_ROUND)
            if due:
                mark = states.mark_judged if states else store.mark_judged_pending
                self._writer.submit_task(lambda con: mark(con, due, utcnow())).result(timeout=60)
                self._metrics.judged(len(due))
            return len(due)
        if self._in_flight is not None and self._in_flight[0].done():
            self._settle_in_flight()
        in_flight = self._in_flight[1] if self._in_flight is not None else frozenset()
        with self._writer.reading():
            due, table, trace_ids, since = self._read_round(quiet_since, in_flight)
            if time.monotonic() - self._pending_counted_at > PENDING_COUNT_SECONDS or not due:
                self.pending = (states or store).count_unjudged(cur)  # a lake scans trace_state: not every round
                self._pending_counted_at = time.monotonic()
        if table is None:
            return 0
        lags = settle_lags(table, self.decision_wait) if quiet else []
        batch = self._judge_table(table, trace_ids, since, behind=max(lags, default=0.0) > LAG_BUDGET_SECONDS)
        detections = list(batch.detections)
        candidates = list(batch.candidates)

        def write(con: duckdb.DuckDBPyConnection) -> None:
            now = utcnow()
            if states is not None:
                states.save_judgement(con, due, detections, candidates, now)
                return
            # Only a trace committed more than once (received_seq > 1) can have been judged before, or a
            # carrier whose feedback now moved onto its target (store.requeue_stranded_feedback).
            carriers = {d.evidence.get(store.CARRIER_TRACE_KEY) for d in detections}
            rejudged = store.judged_before(con, [d for d in due if d[1] > 1 or d[0] in carriers])
            store.save_detections(con, trace_ids, detections, now, since)
            if candidates:
                candidate_store.upsert_candidates(con, candidates, now)
            if rejudged:  # what a late span changed: the trace leaves the candidates it no longer makes
                candidate_store.withdraw_stale(con, rejudged, candidates, detections)
            store.mark_judged_pending(con, due, now)
            store.requeue_stranded_feedback(con, trace_ids, since)

        self._settle_in_flight()  # at most one round's write outstanding
        self._in_flight = (self._writer.submit_task(write), frozenset(trace_ids))
        self._metrics.judged(len(due), lags)
        if detections:
            log.info("judged %d traces: %d detections, %d candidate updates", len(due), len(detections),
                     len(candidates))
        return len(due)


def settle_lags(table: pa.Table, decision_wait: float) -> list[float]:
    """Per trace, seconds from becoming settled (last span received + decision_wait) until now."""
    now = utcnow()
    last = table.group_by("trace_id").aggregate([("received_at", "max")]).column("received_at_max")
    return [(now - t).total_seconds() - decision_wait for t in store.utc_datetimes(last) if t is not None]


def _stepped(proc: TraceProcessor, batch: TraceBatch, reader: Any) -> TraceBatch:
    """``proc.process_traces`` on a copy of the batch's lists, with an answer that is no TraceBatch (a plugin
    that forgot its ``return``) raised as the step's failure: a step that fails, even after changing the
    batch it was given, costs its own output, never the findings of the steps before it."""
    given = TraceBatch(traces=batch.traces, detections=list(batch.detections), candidates=list(batch.candidates))
    result = proc.process_traces(given, reader)
    if not isinstance(result, TraceBatch):
        raise TypeError(f"process_traces returned {type(result).__name__}, not a TraceBatch")
    return result
