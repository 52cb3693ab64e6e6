"""The built-in rules run in the span worker processes and find exactly what the judge would find itself.

A real spawned pool (the collector's ProcessSpanStage), real stored rows loaded from a DuckDB
file the way the judge loads a round; the reference is the same judge without the pool.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from detector_builders import EMAIL_TOOL, llm, make_span, make_trace, retriever, store_with, tool
from tracesieve.collector import span_stage
from tracesieve.collector.judge import Judge
from tracesieve.collector.metrics import Metrics
from tracesieve.processors.base import TraceBatch
from tracesieve.processors.detectors import DetectorsConfig, DetectorsProcessor
from tracesieve.processors.promotion import PromotionProcessor
from tracesieve.storage import store
from tracesieve.storage.writer import GroupCommitWriter

OPTIONS: dict[str, Any] = {
    "blast_radius": {"send_email": "irreversible_write"},
    "severity": {"truncation": "P1"},
    "rules": [{"name": "empty_tool_result", "failure_mode": "tool_invocation", "severity": "P3",
               "sql": "SELECT trace_id, NULL AS span_id, 'empty result' AS message, NULL AS evidence "
                      "FROM spans WHERE span_kind = 'TOOL' AND output_value = '[]'"}],
}


def _traces() -> list[list[dict[str, Any]]]:
    return [
        make_trace(tool("get_weather", status="ERROR", status_message="timeout"), llm("Sorry.")),   # tool_invocation
        make_trace(llm("The refund is", finish="length")),                                           # truncation
        make_trace(retriever([]), llm("Our policy allows refunds within 90 days.")),                 # retrieval + hallucination
        make_trace(tool("refund_payment", status="ERROR"),                                           # blast radius
                   tool("send_email", '{"to": "<EMAIL>", "body": "refunded"}'), llm("Done.", tools=[EMAIL_TOOL])),
        make_trace(tool("search_kb", '{"q": "x"}', result="[]"), llm("Nothing found.")),             # operator rule only
        make_trace(tool("get_weather"), llm("It is 18 C in Paris.")),                                # clean
        make_trace(make_span("CHAIN", name="plan"), llm("Hello!")),                                  # clean
    ]


@pytest.fixture(scope="module")
def pool():
    stage = span_stage.ProcessSpanStage(1, None, ":memory:")
    yield stage
    stage.shutdown()


def _round(tmp_path) -> tuple[Any, Any, list[str]]:
    traces = _traces()
    reader = store_with(tmp_path, *traces)
    ids = [t[0]["trace_id"] for t in traces]
    return reader, store.load_traces_table(reader.con, ids), ids


def _judge(reader: Any, finder: Any) -> Judge:
    processors = [DetectorsProcessor(DetectorsConfig.from_options(OPTIONS, "processors.detectors"), strict=True),
                  PromotionProcessor()]
    writer = GroupCommitWriter(reader.con)
    judge = Judge(reader.con.cursor(), writer, processors, 5.0, Metrics(), rule_finder=finder)
    judge._reader = reader
    writer.close()  # only its read gate is used here
    return judge


def _rows(batch: TraceBatch) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    detections = sorted((d.detection_id, d.span_id, d.detector, d.failure_mode, d.severity, d.blast_radius,
                         d.message, str(d.evidence)) for d in batch.detections)
    candidates = sorted((c.candidate_id, c.failure_mode, c.status, str(c.source)) for c in batch.candidates)
    return detections, candidates


def test_rules_in_the_workers_find_what_the_judge_finds_itself(tmp_path, pool, monkeypatch):
    monkeypatch.setattr(span_stage, "RULE_JOB_SPANS", 3)  # several jobs, so findings from each are merged
    reader, table, ids = _round(tmp_path)
    assert len(span_stage.rule_jobs(table, 3)) > 1
    root_of = {s["trace_id"]: s["span_id"] for s in table.to_pylist() if s["parent_span_id"] is None}

    here = _judge(reader, None)._judge_table(table, ids)
    elsewhere = _judge(reader, pool)._judge_table(table, ids)

    assert _rows(elsewhere) == _rows(here)
    modes = {d.failure_mode for d in elsewhere.detections}
    assert {"tool_invocation", "truncation", "retrieval_miss", "blast_radius_breach"} <= modes
    rule_hit = next(d for d in elsewhere.detections if d.detector == "empty_tool_result")
    assert (rule_hit.trace_id, rule_hit.span_id) == (ids[4], root_of[ids[4]])  # the rule gave no span: the root
    # Promotion saw the spans of every trace with a finding, and of no clean trace.
    assert set(elsewhere.traces) == {d.trace_id for d in elsewhere.detections}
    assert not set(elsewhere.traces) & set(ids[-2:])


def test_the_workers_return_findings_for_failing_traces_only(tmp_path, pool):
    reader, table, ids = _round(tmp_path)
    detectors = DetectorsProcessor(DetectorsConfig.from_options(OPTIONS, "processors.detectors"))
    found = pool.find_rule_findings(detectors, table)
    assert set(found) == set(ids[:4])  # trace 5 fails only an operator rule, which runs in the collector
    assert found == detectors.findings_by_trace(store.traces_from_table(table, ids))


def test_a_round_read_in_several_arrow_batches_is_judged_the_same(tmp_path, pool, monkeypatch):
    """The judge reads in batches of store.ARROW_BATCH_ROWS (DuckDB's default reserved ~500 MB a read)."""
    reader, whole, ids = _round(tmp_path)
    detectors = DetectorsProcessor(DetectorsConfig.from_options(OPTIONS, "processors.detectors"))
    monkeypatch.setattr(store, "ARROW_BATCH_ROWS", 3)
    table = store.load_traces_table(reader.con, ids)
    assert table.column("trace_id").num_chunks > 1
    assert table.sort_by([("trace_id", "ascending"), ("span_id", "ascending")]).equals(
        whole.sort_by([("trace_id", "ascending"), ("span_id", "ascending")]))
    assert pool.find_rule_findings(detectors, table) == detectors.findings_by_trace(
        store.traces_from_table(whole, ids))


def test_rule_jobs_never_split_a_trace_and_keep_every_row(tmp_path):
    _, table, ids = _round(tmp_path)
    jobs = span_stage.rule_jobs(table, 2)
    seen: list[str] = []
    for job in jobs:
        job_ids = set(job.column("trace_id").to_pylist())
        assert not job_ids & set(seen), "a trace was cut across two jobs"
        seen.extend(job_ids)
    assert sum(j.num_rows for j in jobs) == table.num_rows
    assert sorted(seen) == sorted(ids)


class BrokenFinder:
    def find_rule_findings(self, detectors: DetectorsProcessor, table: Any, *, behind: bool = False) -> dict[str, Any]:
        raise RuntimeError("cannot schedule new futures after shutdown")


def test_a_pool_that_cannot_run_the_rules_leaves_the_judging_to_the_judge(tmp_path):
    reader, table, ids = _round(tmp_path)
    assert _rows(_judge(reader, BrokenFinder())._judge_table(table, ids)) == \
        _rows(_judge(reader, None)._judge_table(table, ids))


def test_a_worker_killed_under_the_rules_is_replaced_for_the_next_round(tmp_path):
    _, table, ids = _round(tmp_path)
    detectors = DetectorsProcessor(DetectorsConfig.from_options(OPTIONS, "processors.detectors"))
    stage = span_stage.ProcessSpanStage(1, None, ":memory:")
    try:
        broken = stage._pool
        for pid in list(getattr(broken, "_processes")):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not getattr(broken, "_broken") and time.monotonic() < deadline:  # the pool notices the death
            time.sleep(0.05)
        with pytest.raises(BrokenProcessPool):
            stage.find_rule_findings(detectors, table)
        assert stage._pool is not broken
        assert set(stage.find_rule_findings(detectors, table)) == set(ids[:4])
    finally:
        stage.shutdown()




def _export_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for n in range(50):
        span = scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"step {n}",
                               start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_001_000_000_000)
        span.attributes.add(key="input.value").value.string_value = "call me at +1 415 555 0100"
    return request


def test_a_round_keeps_one_rule_job_per_worker_queued_so_export_requests_pass_between(tmp_path, pool, monkeypatch):
    """The pool serves its queue in order: a round queued whole made every Export request that arrived
    meanwhile wait for all of it (bench/judge_contention.py: p50 236 ms, against 97 ms now)."""
    monkeypatch.setattr(span_stage, "RULE_JOB_SPANS", 3)
    traces = [make_trace(tool("get_weather", status="ERROR"), llm("Sorry.")) for _ in range(60)]
    reader = store_with(tmp_path, *traces)
    table = store.load_traces_table(reader.con, [t[0]["trace_id"] for t in traces])
    detectors = DetectorsProcessor(DetectorsConfig.from_options(OPTIONS, "processors.detectors"))
    assert len(span_stage.rule_jobs(table, 3)) >= 30
    queued = getattr(pool._pool, "_pending_work_items")  # submitted to the pool and not yet answered
    found: dict[str, Any] = {}
    ended: list[float] = []

    def judge_round() -> None:
        found.update(pool.find_rule_findings(detectors, table))
        ended.append(time.monotonic())

    judging = threading.Thread(target=judge_round)
    judging.start()
    most = 0
    while judging.is_alive():
        most = max(most, len(queued))
    judging.join()
    assert len(found) == 60
    assert most == 1, f"{most} rule jobs were queued at once for 1 worker"

    # An Export request sent while a round is in progress is answered before the round ends.
    judging = threading.Thread(target=judge_round)
    judging.start()
    while not queued and judging.is_alive():
        time.sleep(0.0005)
    result = pool.run(_export_request(), None)
    answered = time.monotonic()
    judging.join()
    assert result.batch.num_rows == 50
    assert answered < ended[-1]

    # A judge behind its target queues the whole round, as Export requests queue. The jobs waiting are
    # counted at each submission as well as by the loop: on a loaded machine this thread could sleep
    # through the whole round (the loop alone once saw none queued).
    found.clear()
    submit = pool._pool.submit
    at_submit: list[int] = []

    def counted_submit(*args: Any, **kwargs: Any) -> Any:
        future = submit(*args, **kwargs)
        at_submit.append(len(queued))
        return future

    monkeypatch.setattr(pool._pool, "submit", counted_submit)
    judging = threading.Thread(target=lambda: found.update(pool.find_rule_findings(detectors, table, behind=True)))
    judging.start()
    most = 0
    while judging.is_alive():
        most = max(most, len(queued))
    judging.join()
    assert len(found) == 60 and len(at_submit) >= 30
    assert max(most, *at_submit) > 1, "the behind round kept to one job at a time"


class _FailingStep:
    """A third-party trace step that raises: on every batch, or only on traces whose spans name ``poison``."""

    kind = "trace"
    name = "flaky_plugin"

    def __init__(self, poison: str | None = None) -> None:
        self.poison = poison

    def process_traces(self, batch: TraceBatch, store: Any) -> TraceBatch:
        if self.poison is None or any(s.get("name") == self.poison for spans in batch.traces.values() for s in spans):
            raise RuntimeError("plugin bug")
        return batch

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("poison", [None, "plan"])
def test_a_failing_trace_step_costs_only_its_own_output(tmp_path, poison, caplog):
    """It used to leave every trace of the round judged without findings, the built-in ones included."""
    reader, table, ids = _round(tmp_path)
    reference = _judge(reader, None)._judge_table(table, ids)
    judge = _judge(reader, None)
    judge._processors.append(_FailingStep(poison))
    judge._rule_finder = None
    with caplog.at_level("ERROR", logger="tracesieve"):
        batch = judge._judge_table(table, ids)
    assert _rows(batch) == _rows(reference)
    assert any("trace processor flaky_plugin failed" in r.getMessage() for r in caplog.records)
