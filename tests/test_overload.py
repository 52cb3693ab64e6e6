"""Overload: more senders than the writer absorbs get retryable answers, memory stays bounded, nothing is lost.

Both halves run against a real `serve` with small limits: the real OTel SDK
exporters (which retry UNAVAILABLE / 503 themselves, waiting the hinted delay)
must end with every span they produced stored; raw senders check the exact
throttling answers for the in-flight byte limit and read the memory the
collector and its span workers used.
"""

from __future__ import annotations

import socket
import threading
import time

import grpc
import httpx
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from proc_helpers import children_of, rss_kib
from test_receivers import make_request

EXPORTERS = 6  # three gRPC, three HTTP
SPANS_EACH = 400
#: Generous: the collector plus its span workers idle at roughly 150-250 MiB each on this machine.
MEMORY_BOUND_KIB = 1_500 * 1024


def _refused(c, reason: str) -> float:
    """Spans refused for ``reason``, summed over both receivers."""
    text = httpx.get(f"{c.http_url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tracesieve_spans_refused_total{") and f'reason="{reason}"' in line)


def test_real_sdk_exporters_recover_from_throttling_without_losing_a_span(start_collector):
    c = start_collector({
        "receivers": {"otlp": {"limits": {"max_queued_spans": 40}}},
        "service": {"pipelines": {"traces": {"processors": ["pii"]}}},
    })
    emitted: list[set[str]] = [set() for _ in range(EXPORTERS)]
    start_together = threading.Barrier(EXPORTERS)

    def run(i: int) -> None:
        if i % 2 == 0:
            exporter = GrpcExporter(endpoint=f"http://{c.grpc_endpoint}", insecure=True, timeout=30)
        else:
            exporter = HttpExporter(endpoint=f"{c.http_url}/v1/traces", timeout=30)
        provider = TracerProvider(resource=Resource.create({"service.name": f"overload-{i}"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50,
                                                       max_export_batch_size=200, max_queue_size=4096))
        tracer = provider.get_tracer("overload")
        start_together.wait(60)
        for n in range(SPANS_EACH):
            with tracer.start_as_current_span(f"step-{n}") as span:
                span.set_attribute("input.value", "payload " * 40)
                emitted[i].add(format(span.get_span_context().span_id, "016x"))
        provider.force_flush(60_000)
        provider.shutdown()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(EXPORTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads)

    assert _refused(c, "throttled") > 0, "six exporters against a 40-span queue must have been throttled"
    stored = {r["span_id"] for r in c.query("SELECT span_id FROM spans")}
    everything = set().union(*emitted)
    assert len(everything) == EXPORTERS * SPANS_EACH
    assert everything - stored == set(), f"{len(everything - stored)} spans lost after throttling"
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": EXPORTERS * SPANS_EACH}]


def test_over_max_memory_requests_get_the_throttling_answer_and_sdk_exporters_lose_nothing(start_collector):
    """Past max_memory (here below what an idle collector holds) a request is admitted only when nothing else
    waits for its commit; the others get the retryable answer, and the exporters' retries store every span."""
    c = start_collector({
        "receivers": {"otlp": {"limits": {"max_memory": "64MiB"}}},
        "service": {"pipelines": {"traces": {"processors": ["pii"]}}},
    })
    metrics = httpx.get(f"{c.http_url}/metrics", timeout=30).text
    resident = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("tracesieve_resident_memory_bytes ")]
    assert resident and resident[0] > 64 * 1024 * 1024, metrics[:2000]
    answers: list[httpx.Response] = []
    start_together = threading.Barrier(8)

    def send() -> None:
        start_together.wait(60)
        with httpx.Client(timeout=60) as client:
            for _ in range(6):
                answers.append(client.post(f"{c.http_url}/v1/traces", content=make_request(300).SerializeToString(),
                                           headers={"content-type": "application/x-protobuf"}))

    senders = [threading.Thread(target=send) for _ in range(8)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    refused = [a for a in answers if a.status_code != 200]
    assert len(answers) == 48 and refused, "eight senders over the memory limit must have been pushed back"
    assert all(a.status_code == 503 and 0 < float(a.headers["retry-after"]) <= 5 for a in refused)
    assert _refused(c, "memory") == 300 * len(refused)
    stored = c.query("SELECT count(DISTINCT trace_id) AS t FROM spans")
    assert stored == [{"t": 48 - len(refused)}]  # one trace a request: each refused one stored nothing

    emitted: list[set[str]] = [set() for _ in range(4)]

    def run(i: int) -> None:
        exporter = (GrpcExporter(endpoint=f"http://{c.grpc_endpoint}", insecure=True, timeout=30) if i % 2 == 0
                    else HttpExporter(endpoint=f"{c.http_url}/v1/traces", timeout=30))
        provider = TracerProvider(resource=Resource.create({"service.name": f"memory-{i}"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50,
                                                       max_export_batch_size=200, max_queue_size=4096))
        tracer = provider.get_tracer("memory")
        for n in range(300):
            with tracer.start_as_current_span(f"step-{n}") as span:
                span.set_attribute("input.value", "payload " * 40)
                emitted[i].add(format(span.get_span_context().span_id, "016x"))
        provider.force_flush(60_000)
        provider.shutdown()

    exporters = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in exporters:
        t.start()
    for t in exporters:
        t.join(180)
    assert not any(t.is_alive() for t in exporters)
    stored_ids = {r["span_id"] for r in c.query("SELECT span_id FROM spans WHERE service_name LIKE 'memory-%'")}
    assert set().union(*emitted) - stored_ids == set()


def test_bytes_in_flight_are_capped_with_retryable_answers_and_memory_stays_bounded(start_collector):
    c = start_collector({
        "receivers": {"otlp": {"limits": {"max_inflight_size": "3MiB", "max_queued_spans": 100_000}}},
        "service": {"span_workers": 1, "pipelines": {"traces": {"processors": []}}},
    })
    senders, rounds = 10, 2
    answers: list[tuple[str, str]] = []  # (transport, retry hint) of every throttling answer
    problems: list[str] = []
    lock = threading.Lock()
    start_together = threading.Barrier(senders)
    bodies = [[make_request(4, pad=250_000) for _ in range(rounds)] for _ in range(senders)]  # ~1 MiB each

    # Clients that declare a body and send none hold nothing: only bytes received count.
    idle = [_declare_and_stall(c.http_port, 1_500_000) for _ in range(3)]
    try:
        alone = httpx.post(f"{c.http_url}/v1/traces", content=bodies[0][0].SerializeToString(),
                           headers={"content-type": "application/x-protobuf"}, timeout=60)
        assert alone.status_code == 200, "stalled uploads must not hold the in-flight budget"
    finally:
        for s in idle:
            s.close()

    def send_http(i: int) -> None:
        start_together.wait(60)
        for req in bodies[i]:
            body = req.SerializeToString()
            for _ in range(300):
                r = httpx.post(f"{c.http_url}/v1/traces", content=body,
                               headers={"content-type": "application/x-protobuf"}, timeout=60)
                if r.status_code == 200:
                    break
                if r.status_code != 503 or not 1 <= int(r.headers.get("retry-after", "0")) <= 5:
                    with lock:
                        problems.append(f"HTTP {r.status_code} {r.headers.get('retry-after')}")
                    return
                with lock:
                    answers.append(("http", r.headers["retry-after"]))
                time.sleep(0.1)  # shorter than the hint: this sender pushes harder than an exporter would
            else:
                problems.append("HTTP request never accepted")

    def send_grpc(i: int) -> None:
        with grpc.insecure_channel(c.grpc_endpoint) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            start_together.wait(60)
            for req in bodies[i]:
                for _ in range(300):
                    try:
                        stub.Export(req, timeout=60)
                        break
                    except grpc.RpcError as exc:
                        trailers = dict(exc.trailing_metadata() or ())
                        if exc.code() != grpc.StatusCode.UNAVAILABLE or "google.rpc.retryinfo-bin" not in trailers:
                            with lock:
                                problems.append(f"gRPC {exc.code().name}")
                            return
                        info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
                        with lock:
                            answers.append(("grpc", str(info.retry_delay.ToTimedelta().total_seconds())))
                        time.sleep(0.1)
                else:
                    problems.append("gRPC request never accepted")

    threads = [threading.Thread(target=send_grpc if i % 2 else send_http, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads)
    assert problems == []
    assert {transport for transport, _ in answers} == {"http", "grpc"}, \
        f"10 senders of 1 MiB against a 3 MiB in-flight cap must be throttled on both transports: {answers}"
    assert all(0 < float(hint) <= 5 for _, hint in answers)

    peak = rss_kib(c.proc.pid, "VmHWM") + sum(rss_kib(p, "VmHWM") for p in children_of(c.proc.pid))
    assert 0 < peak < MEMORY_BOUND_KIB, f"collector + span workers peaked at {peak // 1024} MiB"
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": senders * rounds * 4}]  # the first one was sent twice
    assert "Traceback" not in c.log()


def _declare_and_stall(port: int, length: int) -> socket.socket:
    """An HTTP upload that announces ``length`` bytes, sends a few and stalls."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
              f"Content-Length: {length}\r\n\r\n".encode() + b"\x0a" * 100)
    return s
