"""``GET /metrics`` scraped and parsed with prometheus_client's parser after known traffic; /healthz and /readyz."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAST_JUDGE
from sdk_helpers import emit_agent_trace, sdk_tracer

TOKEN = "metrics-test-token-9f2c"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CONFIG = {**FAST_JUDGE, "service": {"span_workers": 0},
          "receivers": {"otlp": {"auth": {"bearer_token": "${env:TS_METRICS_TOKEN}"}}}}


def scrape(collector: Any, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by the real parser: {(sample name, sorted labels): value}."""
    response = httpx.get(f"{collector.http_url}/metrics", headers=headers or AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("tracesieve_"), family.name
        assert family.documentation, f"{family.name} has no HELP text"
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def request_with_a_bad_span_id(n_good: int) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    trace_id = os.urandom(16)
    for i in range(n_good + 1):
        spans.add(trace_id=trace_id, span_id=os.urandom(8) if i < n_good else b"\x01\x02\x03",
                  name=f"span-{i}", start_time_unix_nano=1_795_300_000_000_000_000,
                  end_time_unix_nano=1_795_300_001_000_000_000)
    return req


def post(collector: Any, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{collector.http_url}/v1/traces", content=body, timeout=30,
                      headers={"content-type": "application/x-protobuf", **headers})


def test_scrape_counts_spans_by_receiver_and_reason_detections_redactions_and_commits(start_collector):
    c = start_collector(CONFIG, env={"TS_METRICS_TOKEN": TOKEN})

    # /metrics needs the token; the health endpoints stay open
    assert httpx.get(f"{c.http_url}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{c.http_url}/metrics", headers={"authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert httpx.get(f"{c.http_url}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{c.http_url}/readyz", timeout=30).status_code == 200

    # 5 spans over gRPC (a failing tool call), 5 over HTTP (an e-mail address in the question), both via the SDK
    with sdk_tracer("grpc", c.grpc_endpoint, headers=AUTH) as tracer:
        emit_agent_trace(tracer, tool_error=True)
    with sdk_tracer("http", c.http_url, headers=AUTH) as tracer:
        emit_agent_trace(tracer, question="Refund me, I am jane.roe@example.org")
    # 2 good spans and one with a 3-byte span id (rejected alone), a request with no token, an undecodable one
    partial = post(c, request_with_a_bad_span_id(2).SerializeToString(), **AUTH)
    assert partial.status_code == 200
    assert post(c, request_with_a_bad_span_id(1).SerializeToString()).status_code == 401
    assert post(c, b"\xff\xff not protobuf", **AUTH).status_code == 400
    with grpc.insecure_channel(c.grpc_endpoint) as channel, pytest.raises(grpc.RpcError) as denied:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request_with_a_bad_span_id(1), timeout=30)
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

    deadline = time.monotonic() + 60
    samples = scrape(c)
    while time.monotonic() < deadline and not (
            value(samples, "tracesieve_detections", failure_mode="tool_invocation") >= 1
            and value(samples, "tracesieve_pending_traces") == 0):
        time.sleep(0.3)
        samples = scrape(c)

    assert value(samples, "tracesieve_spans_received_total", receiver="grpc") == 5
    assert value(samples, "tracesieve_spans_accepted_total", receiver="grpc") == 5
    assert value(samples, "tracesieve_spans_received_total", receiver="http") == 5 + 3
    assert value(samples, "tracesieve_spans_accepted_total", receiver="http") == 5 + 2
    assert value(samples, "tracesieve_spans_refused_total", receiver="http", reason="invalid_span") == 1
    assert value(samples, "tracesieve_export_requests_refused_total", receiver="http", reason="unauthenticated") == 1
    assert value(samples, "tracesieve_export_requests_refused_total", receiver="http", reason="invalid_request") == 1
    assert value(samples, "tracesieve_export_requests_refused_total", receiver="grpc", reason="unauthenticated") == 1
    assert value(samples, "tracesieve_spans_refused_total", receiver="grpc", reason="invalid_span") == 0

    # request latency histogram per receiver: every answered request counted, buckets cumulative
    assert value(samples, "tracesieve_export_request_duration_seconds_count", receiver="grpc") >= 1
    assert value(samples, "tracesieve_export_request_duration_seconds_count", receiver="http") >= 1 + 3
    assert value(samples, "tracesieve_export_request_duration_seconds_bucket", receiver="http", le="+Inf") == \
        value(samples, "tracesieve_export_request_duration_seconds_count", receiver="http")
    assert value(samples, "tracesieve_export_request_duration_seconds_sum", receiver="http") > 0

    # every accepted span went through exactly one group commit
    assert value(samples, "tracesieve_commit_batch_spans_sum") == 5 + 5 + 2
    assert value(samples, "tracesieve_commit_duration_seconds_count") == value(samples, "tracesieve_commit_batch_spans_count") >= 1
    assert value(samples, "tracesieve_queued_spans") == 0

    assert value(samples, "tracesieve_redactions_total", type="EMAIL") >= 1
    assert value(samples, "tracesieve_detections", failure_mode="tool_invocation") >= 1
    assert value(samples, "tracesieve_candidates", status="new") >= 1
    assert value(samples, "tracesieve_traces_judged_total") >= 2
    lags = value(samples, "tracesieve_trace_judge_lag_seconds_count")
    assert lags >= 2
    assert 0 <= value(samples, "tracesieve_trace_judge_lag_seconds_sum") / lags < 30, "lag in seconds, not hours"
    assert value(samples, "tracesieve_pending_traces") == 0
    assert value(samples, "tracesieve_trace_stage_lag_seconds") == 0
    assert TOKEN not in c.log() and "jane.roe@example.org" not in c.log()


def test_every_failure_mode_candidate_status_and_pii_type_is_a_series_from_the_first_scrape(start_collector):
    c = start_collector(FAST_JUDGE)
    samples = scrape(c)  # (value() reads a missing series as 0: these look the series up themselves)
    for mode in ("tool_invocation", "hallucination", "negative_feedback"):
        assert samples[("tracesieve_detections", (("failure_mode", mode),))] == 0
    for status in ("new", "promoted", "rejected", "duplicate"):
        assert samples[("tracesieve_candidates", (("status", status),))] == 0
    assert samples[("tracesieve_redactions_total", (("type", "EMAIL"),))] == 0


def test_an_extra_pattern_type_is_a_series_from_the_first_scrape(start_collector):
    """README: every PII type is a series at 0 from the first scrape. A type of the pii processor's own
    `extra_patterns` (EMPLOYEE_ID) had no sample until its first match: its `rate()` read "no data"."""
    c = start_collector({**FAST_JUDGE, "processors": {**FAST_JUDGE.get("processors", {}), "pii": {
        "extra_patterns": [{"name": "EMPLOYEE_ID", "regex": "EMP-[0-9]{6}"}]}}})
    samples = scrape(c, headers={})
    assert samples[("tracesieve_redactions_total", (("type", "EMPLOYEE_ID"),))] == 0
    assert samples[("tracesieve_redactions_total", (("type", "EMAIL"),))] == 0


def test_every_refusal_reason_is_a_series_from_the_first_scrape(start_collector):
    """The refusal counters had no sample until a first refusal: `rate()` and alerts on them read "no data"
    where the detections, candidates and redactions read 0."""
    c = start_collector(FAST_JUDGE)
    samples = scrape(c, headers={})
    assert samples[("tracesieve_spans_already_stored_total", ())] == 0
    for receiver in ("grpc", "http"):
        for reason in ("invalid_span", "throttled", "commit_timeout", "commit_failed"):
            key = ("tracesieve_spans_refused_total", (("reason", reason), ("receiver", receiver)))
            assert samples[key] == 0, key
        for reason in ("unauthenticated", "too_large", "invalid_request", "unsupported_media_type", "unavailable",
                       "internal"):
            key = ("tracesieve_export_requests_refused_total", (("reason", reason), ("receiver", receiver)))
            assert samples[key] == 0, key


def test_two_collectors_in_one_process_keep_separate_metrics():
    from tracesieve.collector.metrics import Metrics

    first, second = Metrics(), Metrics()
    first.receiver("grpc").accepted(7)
    first.observe_commit(7, 0, 0.01)
    parsed = {s.name: s.value for f in text_string_to_metric_families(second.render().decode())
              for s in f.samples if not s.labels or s.labels.get("receiver") == "grpc"}
    assert parsed["tracesieve_spans_accepted_total"] == 0
    assert parsed["tracesieve_commit_batch_spans_count"] == 0
    assert first.spans_accepted_total() == 7


def test_readyz_needs_open_storage_and_a_running_writer(tmp_path):
    from tracesieve.collector.config import Endpoint, load_config
    from tracesieve.collector.server import Collector

    config = dataclasses.replace(load_config(None, db_path=str(tmp_path / "ready.duckdb")),
                                 grpc=None, http=Endpoint("127.0.0.1", 0), span_workers=0)
    collector = Collector(config)
    assert not collector.ready(), "not ready before start"
    collector.start()
    try:
        url = f"http://127.0.0.1:{collector.http_port}"
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        collector.writer.close()  # the writer thread ends: nothing can be committed any more
        response = httpx.get(f"{url}/readyz", timeout=30)
        assert response.status_code == 503 and response.text == "not ready\n"
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    finally:
        collector.stop()
    assert not collector.ready(), "not ready once stopped"


def test_checkpoints_keep_running_while_operators_scrape_and_query(start_collector):
    """A scrape or a `tracesieve query` once left a result, and with it a transaction, open on a cursor
    that then waited; after the next judge commit DuckDB refused every checkpoint (5 done, 412
    refused in 20 s), and the WAL grew for as long as the collector ran."""
    from test_receivers import make_request

    c = start_collector(CONFIG, env={"TS_METRICS_TOKEN": TOKEN})
    env = {"TRACESIEVE_TOKEN": TOKEN}
    wal = c.db_path.with_name(c.db_path.name + ".wal")
    biggest = scraped_wal = 0
    for i in range(60):  # ~16 KB of WAL a span (input.value and attributes): ~96 MB, 3 times the writer's mark
        assert post(c, make_request(100, pad=8_000).SerializeToString(), **AUTH).status_code == 200
        if i % 5 == 0:  # between commits, as a scraper and an operator would
            scraped_wal = max(scraped_wal, value(scrape(c), "tracesieve_wal_bytes"))
            assert c.cli("query", "SELECT count(*) AS n FROM spans", env=env).returncode == 0
            time.sleep(0.4)  # a judge round commits meanwhile (decision_wait 300ms)
        biggest = max(biggest, wal.stat().st_size if wal.exists() else 0)
    samples = scrape(c)
    assert value(samples, "tracesieve_checkpoints_total", result="done") >= 2
    assert 4 * 1024 * 1024 < biggest < 40 * 1024 * 1024  # the mark and one request more, not the whole run
    assert 0 < scraped_wal < 40 * 1024 * 1024  # what operators see of it


def test_the_readme_lists_every_metric_a_scrape_shows(start_collector):
    """metrics.py promises every metric name is in README.md's table: a counter added without a README row
    (or a row for a metric that is gone) is an operator's alert on a name nobody documented."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(tracesieve_\w+)` \|", readme, re.MULTILINE))
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:  # a commit and a judgement: every family has samples
        emit_agent_trace(tracer, tool_error=True)
    c.wait_for("SELECT count(*) AS n FROM detections", lambda r: r != [{"n": 0}])
    response = httpx.get(f"{c.http_url}/metrics", timeout=30)
    shown = {family.name + ("_total" if family.type == "counter" else "")
             for family in text_string_to_metric_families(response.text)}
    assert shown - table == set(), "scraped but not in the README's metrics table"
    assert table - shown <= {"tracesieve_resident_memory_bytes"}, "in the README but not scraped"
