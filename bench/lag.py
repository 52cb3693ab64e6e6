"""Detection lag at steady load.

Starts the collector (as ``ingest.py`` does) with ``processors.detectors.decision_wait``
set (default 5s), sends generated traces at a steady target rate (default
10,000 spans/s for 30 s) of which ``--failure-rate`` carry a failure the
detectors should catch, and records for every trace the wall-clock time its
request was acknowledged (each trace travels whole in one request, so that is
the ack of its last span).  Meanwhile, every ``--poll-interval`` seconds it runs

    python -m tracesieve.collector.cli query \
        "SELECT trace_id, min(detected_at) ... FROM detections GROUP BY 1" --db DB --format json

which goes through the running collector.  After sending it keeps polling until
every failing trace has a detection or ``decision_wait + --settle-timeout`` passes.

Reported, for the failing traces:
  lag (detected_at)  = detections.detected_at (server clock) - last ack
  lag (visible)      = first poll that returned the trace     - last ack
as p50 / p95 / max, plus detected/missed counts, detections on traces sent
without a failure, and the achieved send rate.  Lag is at least decision_wait by design.

    python bench/lag.py                                   # 10k spans/s, 30 s, 5% failing, decision_wait 5s
    python bench/lag.py --rate 3000 --duration 20 --decision-wait 2s
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generator  # noqa: E402
import send  # noqa: E402
from ingest import Server  # noqa: E402
from tracesieve.storage.units import parse_duration  # noqa: E402

DETECTIONS_SQL = ("SELECT trace_id, min(detected_at) AS first_detected, "
                  "string_agg(DISTINCT failure_mode, ',') AS modes FROM detections GROUP BY 1")


def parse_ts(v) -> float | None:
    """Epoch seconds from what ``query --format json`` prints for a TIMESTAMPTZ (ISO text or a number)."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        x = float(v)
        return x / 1e6 if x > 1e14 else (x / 1e3 if x > 1e11 else x)  # us / ms / s
    s = str(v).strip().replace("Z", "+00:00")
    if s.endswith(("+00", "-00")) or (len(s) > 3 and s[-3] in "+-" and s[-2:].isdigit() and ":" not in s[-6:]):
        s += ":00"
    try:
        d = datetime.fromisoformat(s)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)  # DuckDB TIMESTAMPTZ shown without offset is UTC in the JSON path
    return d.timestamp()


class Poller:
    def __init__(self, server: Server, interval: float) -> None:
        self.server = server
        self.interval = interval
        self.seen_at: dict[str, float] = {}
        self.detected_at: dict[str, float | None] = {}
        self.modes: dict[str, str] = {}
        self.polls = 0
        self.poll_seconds: list[float] = []
        self.errors: Counter = Counter()
        self.stop = threading.Event()

    def poll_once(self) -> None:
        t0 = time.monotonic()
        try:
            rows = self.server.query(DETECTIONS_SQL, timeout=60)
        except Exception as e:
            self.errors[str(e).splitlines()[0][:160]] += 1
            return
        finally:
            self.poll_seconds.append(time.monotonic() - t0)
            self.polls += 1
        now = time.time()
        for row in rows:
            vals = list(row.values())
            tid = str(row.get("trace_id", vals[0] if vals else "")).lower()
            if tid and tid not in self.seen_at:
                self.seen_at[tid] = now
                self.detected_at[tid] = parse_ts(row.get("first_detected", vals[1] if len(vals) > 1 else None))
                self.modes[tid] = str(row.get("modes", ""))

    def run(self, until: float) -> None:
        while not self.stop.is_set() and time.monotonic() < until:
            self.poll_once()
            self.stop.wait(self.interval)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=10_000, help="target spans/s")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of sending")
    ap.add_argument("--failure-rate", type=float, default=0.05)
    ap.add_argument("--decision-wait", default="5s")
    ap.add_argument("--poll-interval", type=float, default=0.5)
    ap.add_argument("--settle-timeout", type=float, default=60.0,
                    help="after sending, poll at most decision_wait + this many seconds")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--transport", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--pii", choices=["on", "off"], default="on")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--traces-per-request", type=int, default=8)
    ap.add_argument("--pool-traces", type=int, default=3000)
    ap.add_argument("--span-workers", default=None, help="service.span_workers (default: the config default, auto)")
    ap.add_argument("--cli", default=None, help="command that runs the tracesieve CLI")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    wait_s = parse_duration(a.decision_wait)

    t = time.perf_counter()
    pool = send.build_pool(a.pool_traces, seed=a.seed, traces_per_request=a.traces_per_request,
                           failure_rate=a.failure_rate)
    pool_spans = sum(p.spans for p in pool)
    print(f"generated          {a.pool_traces} distinct traces ({sum(f is not None for p in pool for f in p.failures)}"
          f" failing), {pool_spans:,} spans, {sum(len(p.body) for p in pool) / pool_spans:,.0f} B/span, "
          f"{time.perf_counter() - t:.1f} s")

    acked: dict[str, tuple[float, str | None]] = {}   # trace hex -> (ack wall time, failure kind)
    ack_lock = threading.Lock()

    def on_ack(p: send.Payload, wall: float) -> None:
        with ack_lock:
            for tid, kind in zip(p.trace_ids, p.failures):
                acked[tid.hex()] = (wall, kind)

    server = Server(pii=a.pii == "on", decision_wait=a.decision_wait, cli=shlex.split(a.cli) if a.cli else None,
                    keep=a.keep, span_workers=a.span_workers)
    rc_ok = False
    try:
        server.start()
        print(f"collector ready    in {server.startup_s:.1f} s (decision_wait {a.decision_wait}, dir {server.dir})")
        poller = Poller(server, a.poll_interval)
        hard_end = time.monotonic() + a.duration + wait_s + a.settle_timeout + 120
        pt = threading.Thread(target=poller.run, args=(hard_end,), name="poller", daemon=True)
        pt.start()
        res = send.run(send.PayloadSource(pool, None, seed=a.seed), transport=a.transport,
                       endpoint=server.endpoint(a.transport), concurrency=a.concurrency, use_gzip=a.gzip,
                       target_rate=a.rate, duration=a.duration, on_ack=on_ack)
        failing = {tid for tid, (_, k) in acked.items() if k is not None}
        settle_end = time.monotonic() + wait_s + a.settle_timeout
        while time.monotonic() < settle_end and not failing <= set(poller.seen_at):
            time.sleep(0.25)
        poller.stop.set()
        pt.join(90)

        lag_det, lag_vis = [], []
        by_kind_lag: dict[str, list[float]] = {}
        missed = Counter()
        mode_ok = Counter()
        for tid in failing:
            ack, kind = acked[tid]
            if tid not in poller.seen_at:
                missed[kind] += 1
                continue
            lag_vis.append(poller.seen_at[tid] - ack)
            d = poller.detected_at.get(tid)
            if d is not None:
                lag_det.append(d - ack)
                by_kind_lag.setdefault(kind, []).append(d - ack)
            mode_ok[generator.EXPECTED_MODE[kind] in poller.modes.get(tid, "").split(",")] += 1
        clean_flagged = Counter()
        for tid in poller.seen_at:
            if tid in acked and acked[tid][1] is None:
                for m in poller.modes.get(tid, "?").split(","):
                    clean_flagged[m] += 1
        n_clean = sum(1 for v in acked.values() if v[1] is None)

        rc = server.stop()
        print(f"== lag: target {a.rate:,.0f} spans/s for {a.duration:g} s, failure_rate {a.failure_rate}, "
              f"decision_wait {a.decision_wait}, transport {a.transport}, concurrency {a.concurrency}, pii {a.pii}")
        print(send.format_result(res))
        print(f"achieved rate      {res.spans_acked / res.elapsed:,.0f} spans/s "
              f"({res.spans_acked / res.elapsed / a.rate:.0%} of target)")
        print(f"failing traces     acked {len(failing)}, detected {len(failing) - sum(missed.values())}, "
              f"missed {sum(missed.values())}" + (f" {dict(missed)}" if missed else ""))
        print(f"expected mode      present on {mode_ok[True]} of {mode_ok[True] + mode_ok[False]} detected failing traces")

        def fmt(v):
            return (f"p50 {send.pct(v, 50):.2f} s, p95 {send.pct(v, 95):.2f} s, max {max(v):.2f} s (n={len(v)})"
                    if v else "n/a")
        print(f"lag (detected_at)  {fmt(lag_det)}   [detections.detected_at - last ack]")
        print(f"lag (visible)      {fmt(lag_vis)}   [first poll returning it - last ack]")
        for kind in sorted(by_kind_lag):
            print(f"  {kind:17s} {fmt(by_kind_lag[kind])}")
        print(f"clean traces       {n_clean} sent, {sum(1 for t in poller.seen_at if t in acked and acked[t][1] is None)}"
              f" with a detection" + (f" ({dict(clean_flagged.most_common(6))})" if clean_flagged else ""))
        print(f"polls              {poller.polls}, median {send.pct(poller.poll_seconds, 50):.2f} s per query"
              + (f", errors {dict(poller.errors.most_common(3))}" if poller.errors else ""))
        print(f"peak RSS           {server.peak_rss_kib / 1024:,.0f} MB; shutdown exit {rc} in {server.drain_s:.1f} s")
        rc_ok = rc == 0 and not missed and bool(failing)
        if not rc_ok:
            print(server.log_tail())
    except RuntimeError as e:
        print(f"lag: {e}", file=sys.stderr)
    finally:
        server.kill()
        if a.keep:
            print(f"kept               {server.dir}")
        server.cleanup()
    return 0 if rc_ok else 1


if __name__ == "__main__":
    sys.exit(main())
