"""Crash safety: `serve` killed with SIGKILL at random moments loses no acknowledged span and stores none twice.

Raw OTLP senders (gRPC and HTTP, the exact bytes the SDK exporters send) keep a
stream going and record exactly which spans were acknowledged; a request that
got no answer is retried, against the restarted collector, until it is. Some
acknowledged requests are sent again on purpose: re-delivery must not duplicate.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import threading
import time
from pathlib import Path

import duckdb
import grpc
import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import RunningCollector
from proc_helpers import children_of, kill_all, wait_gone
from test_pii_canary import CANARIES, assert_no_canary

SEED = 20261122
ROUNDS = 3
SENDERS = 4  # two gRPC, two HTTP
CONFIG = {"service": {"span_workers": 1, "pipelines": {"traces": {"processors": ["pii"]}}}}


def canary_request(rng: random.Random, n_spans: int) -> tuple[ExportTraceServiceRequest, set[tuple[str, str]]]:
    """A request of ``n_spans`` fresh spans whose attributes carry PII canaries; returns it and its ids."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "crash-sender"
    ss = rs.scope_spans.add()
    tid = rng.randbytes(16)
    ids = set()
    for i in range(n_spans):
        sid = rng.randbytes(8)
        span = ss.spans.add(trace_id=tid, span_id=sid, name=f"step-{i}",
                            start_time_unix_nano=1_795_300_000_000_000_000 + i,
                            end_time_unix_nano=1_795_300_001_000_000_000 + i)
        span.attributes.add(key="openinference.span.kind").value.string_value = "CHAIN"
        span.attributes.add(key="input.value").value.string_value = (
            f"customer {CANARIES['EMAIL']} card {CANARIES['CARD']} " + "x" * rng.randrange(0, 2000))
        ids.add((tid.hex(), sid.hex()))
    return req, ids


class Sender(threading.Thread):
    """Sends requests one after another; a request counts as acked only on a success answer."""

    def __init__(self, index: int, transport: str, collector, stop: threading.Event) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.rng = random.Random(SEED + index)
        self.transport = transport
        self.collector = collector
        self.stop_event = stop
        self.acked: set[tuple[str, str]] = set()
        self.sent_requests = 0
        self.redelivered = 0
        self.failures = 0
        self.unexpected: list[str] = []
        self._acked_bodies: list[ExportTraceServiceRequest] = []
        self._channel: grpc.Channel | None = None

    def run(self) -> None:
        while not self.stop_event.is_set():
            if self._acked_bodies and self.rng.random() < 0.15:
                req, ids = self.rng.choice(self._acked_bodies), set()
                self.redelivered += 1
            else:
                req, ids = canary_request(self.rng, self.rng.randrange(5, 30))
            self._deliver(req)
            self.acked |= ids
            self.sent_requests += 1
            self._acked_bodies.append(req)
        if self._channel is not None:
            self._channel.close()

    def _deliver(self, req: ExportTraceServiceRequest) -> None:
        """Retry until acknowledged (the collector may be dead or restarting in between)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self._send_once(req):
                    return
            except (grpc.RpcError, httpx.HTTPError):
                self.failures += 1
                if self._channel is not None:
                    self._channel.close()
                    self._channel = None
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: a request was never acknowledged")

    def _send_once(self, req: ExportTraceServiceRequest) -> bool:
        if self.transport == "grpc":
            if self._channel is None:
                self._channel = grpc.insecure_channel(self.collector.grpc_endpoint)
            try:
                response = trace_service_pb2_grpc.TraceServiceStub(self._channel).Export(req, timeout=15)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      grpc.StatusCode.CANCELLED):
                    self.unexpected.append(f"gRPC {exc.code().name}: {exc.details()}")
                raise
            if response.partial_success.rejected_spans:
                self.unexpected.append(f"partial success: {response.partial_success.error_message}")
            return True
        response = httpx.post(f"{self.collector.http_url}/v1/traces", content=req.SerializeToString(),
                              headers={"content-type": "application/x-protobuf"}, timeout=15)
        if response.status_code == 200:
            return True
        if response.status_code not in (502, 503, 504):
            self.unexpected.append(f"HTTP {response.status_code}: {response.text[:200]}")
        self.failures += 1
        return False


def test_sigkill_at_random_moments_loses_no_acked_span_and_stores_none_twice(start_collector):
    killer = random.Random(SEED)
    c = start_collector(CONFIG)
    stop = threading.Event()
    senders = [Sender(i, "grpc" if i % 2 == 0 else "http", c, stop) for i in range(SENDERS)]
    orphans: list[int] = []
    try:
        for s in senders:
            s.start()
        for _ in range(ROUNDS):
            time.sleep(killer.uniform(0.5, 1.5))
            orphans += _sigkill(c)
            c.start()
        _let_senders_finish(senders, stop)
        # The end is a crash too: the file must open after SIGKILL with nothing but duckdb.connect.
        orphans += _sigkill(c)
    finally:
        stop.set()
        kill_all(orphans)

    acked = set().union(*(s.acked for s in senders))
    assert sum(s.failures for s in senders) > 0, "no request ever failed: the kills did not hit the stream"
    assert sum(s.redelivered for s in senders) > 0
    assert [u for s in senders for u in s.unexpected] == []
    assert len(acked) > 200

    db = Path(c.db_path)
    wal = Path(str(db) + ".wal")
    wal_bytes = wal.read_bytes() if wal.exists() else b""  # before opening replays (and may fold) it
    con = duckdb.connect(str(db))
    try:
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans").fetchone()
        stored = set(con.execute("SELECT trace_id, span_id FROM spans").fetchall())
        dump = "\n".join(str(row) for row in con.execute("SELECT * FROM spans").fetchall())
    finally:
        con.close()
    assert total == distinct, f"{total - distinct} spans are stored more than once"
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged spans are not stored, e.g. {sorted(missing)[:3]}"

    # PII: the crash left a WAL, a log and a file; none holds a canary.
    assert_no_canary(wal_bytes, "the WAL left by SIGKILL")
    assert_no_canary(dump.encode(), "the spans table after the crashes")
    assert_no_canary(db.read_bytes(), "the database file")
    assert_no_canary(c.log().encode(), "the server log")
    assert "Traceback" not in c.log()


def _let_senders_finish(senders: list[Sender], stop: threading.Event) -> None:
    """A last second against the running collector, then each sender delivers what it holds and stops."""
    time.sleep(1.0)
    stop.set()
    for s in senders:
        s.join(150)
    assert not any(s.is_alive() for s in senders), "a sender hung"


def _sigkill(c) -> list[int]:
    """SIGKILL ``serve`` and check its span workers leave by themselves (they watch their parent)."""
    workers = children_of(c.proc.pid)
    assert workers, "span_workers: 1 should have spawned a worker"
    c.stop(signal.SIGKILL)
    left = wait_gone(workers, timeout=15)
    kill_all(left)
    assert left == [], f"span workers outlived the killed collector: {left}"
    return workers


def test_a_killed_collector_leaves_no_warning_or_traceback_on_its_stderr(start_collector):
    """After SIGKILL, multiprocessing's resource tracker (a child that outlives the collector) wrote a
    two-line "leaked semaphore objects" UserWarning into the collector's stderr."""
    from sdk_helpers import emit_agent_trace, sdk_tracer

    c = start_collector(CONFIG)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        emit_agent_trace(tracer)
    children = children_of(c.proc.pid)
    _sigkill(c)
    left = wait_gone(children, timeout=15)  # the tracker too: it writes its warning as it leaves
    kill_all(left)
    assert left == []
    log = c.log()
    assert "tracesieve is up" in log
    assert "Warning" not in log and "Traceback" not in log, log[-2000:]


def test_redelivery_of_the_same_span_with_different_content_keeps_one_row(start_collector):
    """Idempotence is by (trace_id, span_id): a retry whose body differs (re-batched) adds nothing."""
    c = start_collector({"service": {"pipelines": {"traces": {"processors": []}}}})
    rng = random.Random(SEED)
    req, ids = canary_request(rng, 10)
    again = ExportTraceServiceRequest()
    again.CopyFrom(req)
    for span in again.resource_spans[0].scope_spans[0].spans:
        span.name = "renamed on retry"
    url = f"{c.http_url}/v1/traces"
    headers = {"content-type": "application/x-protobuf"}
    assert httpx.post(url, content=req.SerializeToString(), headers=headers, timeout=30).status_code == 200
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(again, timeout=30)
    assert httpx.post(url, content=again.SerializeToString(), headers=headers, timeout=30).status_code == 200
    rows = c.query("SELECT count(*) AS n, count(DISTINCT span_id) AS d, min(name) AS name FROM spans")
    assert rows == [{"n": 10, "d": 10, "name": "step-0"}]
    assert os.path.exists(c.db_path)


def test_a_disk_that_refuses_the_wal_stops_serve_and_the_restart_loses_no_acked_span(tmp_path):
    """A full disk fails the WAL write of a commit. Answering "retry" from the same DuckDB instance
    grew its memory with every failed commit until every commit failed, even after space was freed;
    so `serve` stops taking spans, says what it could not write, and exits 1 for its supervisor,
    and the restart replays the WAL. A file size limit on `serve` stands in for the full disk
    (the write fails with EFBIG where a full disk gives ENOSPC; DuckDB reports both the same way).
    """
    c = RunningCollector(tmp_path, json.loads(json.dumps(CONFIG)), None, ())
    limit = 1_500_000
    c.preexec_fn = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    c.start()
    stop = threading.Event()
    senders = [Sender(i, "grpc" if i % 2 == 0 else "http", c, stop) for i in range(2)]
    try:
        for s in senders:
            s.start()
        assert c.proc is not None
        c.proc.wait(90)
        assert c.proc.returncode == 1, c.log()
        log_text = c.log()
        wal = f"{os.path.realpath(c.db_path)}.wal"
        assert f"cannot write {wal}: File too large" in log_text, log_text[-2000:]
        assert "CRITICAL" in log_text and "Traceback" not in log_text
        c.preexec_fn = None
        c.start()
        _let_senders_finish(senders, stop)
        assert c.stop() == 0
    finally:
        stop.set()
        c.kill()
    acked = set().union(*(s.acked for s in senders))
    assert [u for s in senders for u in s.unexpected] == []
    con = duckdb.connect(str(c.db_path))
    try:
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans").fetchone()
        stored = set(con.execute("SELECT trace_id, span_id FROM spans").fetchall())
    finally:
        con.close()
    assert total == distinct
    assert acked and not acked - stored, f"{len(acked - stored)} acknowledged spans are not stored"
