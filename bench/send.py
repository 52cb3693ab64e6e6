"""Concurrent OTLP trace sender for benchmarks (gRPC or HTTP/protobuf).

Requests are serialized before the clock starts.  N worker threads take payloads
from a shared ``PayloadSource`` and Export them; each worker has its own gRPC
channel (own subchannel pool, so its own connection) or its own ``httpx.Client``.

* gRPC: unary ``/opentelemetry.proto.collector.trace.v1.TraceService/Export``
  built from a channel with an identity request serializer, i.e. exactly what
  ``TraceServiceStub(channel).Export`` sends, minus re-serializing every
  request; ``--gzip`` uses gRPC per-message gzip.
* HTTP: ``POST /v1/traces`` with ``Content-Type: application/x-protobuf``;
  ``--gzip`` sends a gzip body with ``Content-Encoding: gzip``.

Throttling is honoured: gRPC UNAVAILABLE (and RESOURCE_EXHAUSTED carrying
RetryInfo) / HTTP 429, 502, 503, 504 are retried after the server's hint
(``google.rpc.retryinfo-bin`` or ``grpc-status-details-bin`` RetryInfo;
``Retry-After``), else after a capped exponential backoff with jitter; at most
``max_attempts`` (60) attempts and ``request_deadline`` (120) seconds per request.

``target_rate`` (spans/s) paces all workers together for steady load;
``duration`` bounds the run in time, ``PayloadSource(total_requests=...)`` in count.

Standalone use against a running collector::

    python bench/send.py --endpoint 127.0.0.1:4317 --transport grpc --traces 2000 --concurrency 4
    python bench/send.py --endpoint http://127.0.0.1:4318 --transport http --rate 5000 --duration 20
"""

from __future__ import annotations

import argparse
import gzip as gzip_mod
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generator  # noqa: E402

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_HINT_S = 10.0  # never sleep longer than this on one server hint


# ------------------------------------------------------------------------ payloads

@dataclass
class Payload:
    body: bytes                      # serialized ExportTraceServiceRequest (uncompressed)
    spans: int
    trace_ids: list[bytes]           # distinct trace ids, each trace whole in this request
    failures: list[str | None]       # failure kind per trace id (generator.FAILURES) or None
    gz: bytes | None = None          # gzip body, filled lazily
    id_positions: list[tuple[int, int]] | None = None  # where trace_ids sit in body (for resends)


def build_pool(n_traces: int, *, seed: int = 1, traces_per_request: int = 8, failure_rate: float = 0.0,
               genai_variant: bool = False, service: str = "bench-agent") -> list[Payload]:
    """Generate and serialize ``n_traces`` traces into payloads, with their trace ids located for resends."""
    manifest: dict[str, str | None] = {}
    pool = []
    for req in generator.make_requests(n_traces, seed=seed, traces_per_request=traces_per_request,
                                       failure_rate=failure_rate, genai_variant=genai_variant,
                                       service=service, manifest=manifest):
        ids = generator.trace_ids_of(req)
        body = req.SerializeToString()
        pool.append(Payload(body, generator.span_count(req), ids, [manifest[i.hex()] for i in ids],
                            id_positions=generator.id_positions(body, ids)))
    return pool


class PayloadSource:
    """Thread-safe supply: the pool once as generated, then again and again with fresh trace ids.

    ``total_requests`` bounds the count (None: unbounded, bound the run by duration instead).
    """

    def __init__(self, pool: list[Payload], total_requests: int | None = None, seed: int = 1) -> None:
        if not pool:
            raise ValueError("empty payload pool")
        self.pool = pool
        self.total = total_requests
        self.handed = 0
        self._rng = random.Random(seed ^ 0x5EED)
        self._lock = threading.Lock()

    def next(self) -> Payload | None:
        with self._lock:
            if self.total is not None and self.handed >= self.total:
                return None
            i = self.handed
            self.handed += 1
            base = self.pool[i % len(self.pool)]
            if i < len(self.pool):
                return base
            if base.id_positions is None:
                base.id_positions = generator.id_positions(base.body, base.trace_ids)
            body, ids = generator.reidentify(base.body, base.trace_ids, self._rng, base.id_positions)
        return Payload(body, base.spans, ids, base.failures)


# ------------------------------------------------------------------------ results

@dataclass
class Result:
    transport: str
    gzip: bool
    concurrency: int
    target_rate: float | None
    requests_sent: int = 0
    requests_acked: int = 0
    requests_failed: int = 0
    spans_sent: int = 0
    spans_acked: int = 0
    spans_rejected: int = 0          # partial_success.rejected_spans
    bytes_acked: int = 0             # uncompressed protobuf bytes of acknowledged requests
    retries: int = 0
    throttles: int = 0               # UNAVAILABLE / 429 / 503 answers
    errors: Counter = field(default_factory=Counter)
    attempt_latencies: list[float] = field(default_factory=list)  # successful Export call, seconds
    request_latencies: list[float] = field(default_factory=list)  # first attempt -> ack, retries included
    started: float = 0.0
    finished: float = 0.0
    stopped_by: str = ""

    @property
    def elapsed(self) -> float:
        return max(1e-9, self.finished - self.started)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def format_result(r: Result) -> str:
    el = r.elapsed
    lines = [
        f"transport          {r.transport}{' +gzip' if r.gzip else ''}, concurrency {r.concurrency}"
        + (f", target {r.target_rate:,.0f} spans/s" if r.target_rate else ", unpaced"),
        f"requests           sent {r.requests_sent}, acked {r.requests_acked}, failed {r.requests_failed}",
        f"spans              sent {r.spans_sent:,}, acked {r.spans_acked:,}, rejected (partial) {r.spans_rejected:,}",
        f"elapsed            {el:.2f} s ({r.stopped_by})",
        f"throughput         {r.spans_acked / el:,.0f} spans/s acked, {r.bytes_acked / el / 1e6:,.1f} MB/s "
        f"(uncompressed protobuf)",
        f"Export latency     p50 {pct(r.attempt_latencies, 50) * 1e3:,.1f} ms, "
        f"p99 {pct(r.attempt_latencies, 99) * 1e3:,.1f} ms (successful call)",
        f"request latency    p50 {pct(r.request_latencies, 50) * 1e3:,.1f} ms, "
        f"p99 {pct(r.request_latencies, 99) * 1e3:,.1f} ms (first attempt to ack, retries included)",
        f"retries            {r.retries} (throttled answers {r.throttles})",
    ]
    if r.errors:
        lines.append("errors             " + ", ".join(f"{k} x{v}" for k, v in r.errors.most_common(8)))
    return "\n".join(lines)


# ------------------------------------------------------------------------ transports

class _Retry(Exception):
    def __init__(self, kind: str, hint: float | None, throttled: bool) -> None:
        super().__init__(kind)
        self.kind, self.hint, self.throttled = kind, hint, throttled


class _Fatal(Exception):
    pass


def _grpc_hint(err) -> float | None:
    from google.rpc import error_details_pb2, status_pb2

    try:
        md = err.trailing_metadata() or ()
    except Exception:
        return None
    for key, value in md:
        try:
            if key == "google.rpc.retryinfo-bin":
                ri = error_details_pb2.RetryInfo.FromString(value)
                return ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
            if key == "grpc-status-details-bin":
                st = status_pb2.Status.FromString(value)
                for d in st.details:
                    if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        ri = error_details_pb2.RetryInfo()
                        d.Unpack(ri)
                        return ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
        except Exception:
            continue
    return None


class GrpcExporter:
    def __init__(self, endpoint: str, use_gzip: bool, timeout: float) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        self._grpc = grpc
        target = endpoint.split("://", 1)[-1]
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.use_local_subchannel_pool", 1),     # one connection per worker, like separate exporters
        ])
        self.call = self.channel.unary_unary(EXPORT_METHOD, request_serializer=None,
                                             response_deserializer=ExportTraceServiceResponse.FromString)
        self.compression = grpc.Compression.Gzip if use_gzip else None
        self.timeout = timeout
        code = grpc.StatusCode
        self.retryable = {code.CANCELLED, code.DEADLINE_EXCEEDED, code.ABORTED, code.OUT_OF_RANGE,
                          code.UNAVAILABLE, code.DATA_LOSS}

    def export(self, p: Payload) -> int:
        """Returns rejected span count; raises _Retry / _Fatal."""
        grpc = self._grpc
        try:
            resp = self.call(p.body, timeout=self.timeout, compression=self.compression)
        except grpc.RpcError as e:
            code = e.code()
            hint = _grpc_hint(e)
            if code in self.retryable or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None):
                throttled = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                raise _Retry(f"grpc {code.name}", hint, throttled) from None
            raise _Fatal(f"grpc {code.name}: {(e.details() or '')[:120]}") from None
        return resp.partial_success.rejected_spans if resp.HasField("partial_success") else 0

    def close(self) -> None:
        self.channel.close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except Exception:
        return None


class HttpExporter:
    def __init__(self, endpoint: str, use_gzip: bool, timeout: float) -> None:
        import httpx
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        self._httpx = httpx
        self._resp_type = ExportTraceServiceResponse
        base = endpoint if "://" in endpoint else "http://" + endpoint
        self.url = base.rstrip("/") + "/v1/traces" if not base.rstrip("/").endswith("/v1/traces") else base
        self.client = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self.use_gzip = use_gzip

    def export(self, p: Payload) -> int:
        httpx = self._httpx
        headers = {"Content-Type": "application/x-protobuf"}
        body = p.body
        if self.use_gzip:
            if p.gz is None:
                p.gz = gzip_mod.compress(p.body, 6)
            body = p.gz
            headers["Content-Encoding"] = "gzip"
        try:
            r = self.client.post(self.url, content=body, headers=headers)
        except (httpx.TransportError,) as e:
            raise _Retry(f"http {type(e).__name__}", None, False) from None
        if r.status_code == 200:
            if not r.content:
                return 0
            try:
                resp = self._resp_type.FromString(r.content)
            except Exception:
                return 0
            return resp.partial_success.rejected_spans if resp.HasField("partial_success") else 0
        if r.status_code in (429, 502, 503, 504):
            raise _Retry(f"http {r.status_code}", _retry_after(r.headers.get("Retry-After")),
                         r.status_code in (429, 503))
        raise _Fatal(f"http {r.status_code}: {r.text[:120]!r}")

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------ runner

class _Pacer:
    """Shared schedule: each request reserves spans/rate seconds; no bursting to catch up."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def wait(self, spans: int, deadline: float) -> bool:
        if not self.rate:
            return True
        with self.lock:
            now = time.monotonic()
            slot = max(self.next_slot, now)
            self.next_slot = slot + spans / self.rate
        delay = slot - time.monotonic()
        if slot > deadline:
            return False
        if delay > 0:
            time.sleep(delay)
        return True


def run(source: PayloadSource, *, transport: str, endpoint: str, concurrency: int = 4, use_gzip: bool = False,
        target_rate: float | None = None, duration: float | None = None, timeout: float = 30.0,
        max_attempts: int = 60, request_deadline: float = 120.0, on_ack=None,
        stop_event: threading.Event | None = None) -> Result:
    """Send everything ``source`` hands out (or until ``duration`` s); return the figures.

    ``on_ack(payload, ack_wall_time)`` is called after every acknowledged request.
    """
    if transport not in ("grpc", "http"):
        raise ValueError("transport must be grpc or http")
    if concurrency < 1:
        raise ValueError("concurrency >= 1")
    res = Result(transport, use_gzip, concurrency, target_rate)
    lock = threading.Lock()
    pacer = _Pacer(target_rate)
    stop = stop_event or threading.Event()
    hard_cap = duration if duration is not None else 24 * 3600.0
    res.started = time.monotonic()
    deadline = res.started + hard_cap
    make = GrpcExporter if transport == "grpc" else HttpExporter
    deadline_hit = threading.Event()

    def worker(idx: int) -> None:
        exp = make(endpoint, use_gzip, timeout)
        rng = random.Random(idx)
        try:
            while not stop.is_set():
                if time.monotonic() >= deadline:
                    deadline_hit.set()
                    break
                p = source.next()
                if p is None:
                    break
                if not pacer.wait(p.spans, deadline):
                    deadline_hit.set()
                    break
                t_first = time.monotonic()
                with lock:
                    res.requests_sent += 1
                    res.spans_sent += p.spans
                attempt = 0
                while True:
                    attempt += 1
                    t0 = time.monotonic()
                    try:
                        rejected = exp.export(p)
                    except _Retry as e:
                        with lock:
                            res.errors[e.kind] += 1
                            res.throttles += e.throttled
                        waited = time.monotonic() - t_first
                        if attempt >= max_attempts or waited >= request_deadline or stop.is_set():
                            with lock:
                                res.requests_failed += 1
                                res.errors["gave up after retries"] += 1
                            break
                        if e.hint is not None:
                            delay = min(e.hint, MAX_HINT_S)
                        else:
                            delay = min(5.0, 0.05 * 2 ** (attempt - 1)) * (0.5 + rng.random())
                        delay = min(delay, max(0.0, request_deadline - waited))
                        with lock:
                            res.retries += 1
                        stop.wait(delay)
                        continue
                    except _Fatal as e:
                        with lock:
                            res.requests_failed += 1
                            res.errors[str(e)] += 1
                        break
                    except Exception as e:  # unexpected client-side failure: count it, keep going
                        with lock:
                            res.requests_failed += 1
                            res.errors[f"client {type(e).__name__}: {str(e)[:80]}"] += 1
                        break
                    t1 = time.monotonic()
                    wall = time.time()
                    with lock:
                        res.requests_acked += 1
                        res.spans_acked += p.spans - rejected
                        res.spans_rejected += rejected
                        res.bytes_acked += len(p.body)
                        res.attempt_latencies.append(t1 - t0)
                        res.request_latencies.append(t1 - t_first)
                        res.finished = max(res.finished, t1)
                    if on_ack is not None:
                        on_ack(p, wall)
                    break
        finally:
            exp.close()

    threads = [threading.Thread(target=worker, args=(i,), name=f"send-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    join_deadline = deadline + request_deadline + timeout + 5
    for t in threads:
        t.join(max(0.0, join_deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        stop.set()
        for t in threads:
            t.join(timeout + 5)
        res.stopped_by = "join timeout, workers stopped"
    elif source.total is not None and source.handed >= source.total:
        res.stopped_by = "all requests handed out"
    elif deadline_hit.is_set() or time.monotonic() >= deadline:
        res.stopped_by = f"duration {hard_cap:g}s reached"
    else:
        res.stopped_by = "stopped"
    if not res.finished:
        res.finished = time.monotonic()
    return res


# ------------------------------------------------------------------------ CLI

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True, help="grpc: HOST:PORT; http: http://HOST:PORT")
    ap.add_argument("--transport", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--traces", type=int, default=2000, help="traces to send (ignored with --duration)")
    ap.add_argument("--duration", type=float, default=None, help="send for this many seconds instead")
    ap.add_argument("--rate", type=float, default=None, help="target spans/s (default: as fast as possible)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--traces-per-request", type=int, default=8)
    ap.add_argument("--pool-traces", type=int, default=3000, help="distinct traces generated; reused with fresh ids")
    ap.add_argument("--failure-rate", type=float, default=0.0)
    ap.add_argument("--genai", action="store_true", help="30%% of traces with OTel GenAI conventions")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)

    n_pool = min(a.traces, a.pool_traces) if a.duration is None else a.pool_traces
    t = time.perf_counter()
    pool = build_pool(n_pool, seed=a.seed, traces_per_request=a.traces_per_request, failure_rate=a.failure_rate,
                      genai_variant=a.genai)
    gen_s = time.perf_counter() - t
    spans = sum(p.spans for p in pool)
    print(f"generated          {n_pool} traces, {spans:,} spans, {sum(len(p.body) for p in pool) / spans:,.0f} B/span "
          f"in {gen_s:.1f} s")
    total = None if a.duration is not None else -(-a.traces // a.traces_per_request)
    res = run(PayloadSource(pool, total, seed=a.seed), transport=a.transport, endpoint=a.endpoint,
              concurrency=a.concurrency, use_gzip=a.gzip, target_rate=a.rate, duration=a.duration)
    print(format_result(res))
    return 0 if res.requests_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
