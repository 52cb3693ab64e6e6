"""Every figure issue #7 asks for, with one command.

Runs, one after another (never two servers at once on a small machine):

1. ``ingest.py`` over gRPC and over HTTP, with processors off and with the
   default pipeline (pii + detectors + promotion): realistic OpenInference
   spans (about 4.6 KB each), ``--spans-per-request`` per request (default 512),
   ``--concurrency`` senders, for ``--duration`` seconds each.
2. ``lag.py``: detection lag at a steady ``--lag-rate`` spans/s.
3. ``queries.py``: operator queries over a ``--query-spans`` store.

and prints each tool's block, then one summary table. ``--quick`` shortens
every step (for a smoke run, not for figures).

    python bench/all.py
    python bench/all.py --quick
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SPANS_PER_TRACE = 6.5  # generator.py's average


def run(args: list[str], timeout: float) -> str:
    print(f"\n$ python {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=HERE + "/..")
    out = proc.stdout + (f"\n[exit {proc.returncode}] {proc.stderr.strip()[-2000:]}" if proc.returncode else "")
    print(out, flush=True)
    return out


def grab(pattern: str, text: str, default: str = "-") -> str:
    m = re.search(pattern, text)
    return m.group(1) if m else default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of sending per ingest run")
    ap.add_argument("--rate-guess", type=float, default=4000.0,
                    help="spans/s used to size each ingest run so it lasts about --duration")
    ap.add_argument("--spans-per-request", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--lag-rate", type=float, default=10_000.0)
    ap.add_argument("--lag-duration", type=float, default=30.0)
    ap.add_argument("--query-spans", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.duration, a.lag_duration, a.query_spans = 8.0, 8.0, 50_000
    per_request = max(1, round(a.spans_per_request / SPANS_PER_TRACE))
    traces = max(per_request, int(a.rate_guess * a.duration / SPANS_PER_TRACE))
    rows = []
    for transport in ("grpc", "http"):
        for pipeline in ("off", "default"):
            off = ["--pii", "off", "--trace-stage", "off"] if pipeline == "off" else []
            out = run([f"{HERE}/ingest.py", "--transport", transport, "--traces", str(traces),
                       "--traces-per-request", str(per_request), "--concurrency", str(a.concurrency), *off],
                      timeout=a.duration * 20 + 300)
            rows.append((f"ingest {transport}, processors {pipeline}",
                         grab(r"throughput\s+([\d,]+) spans/s", out), grab(r"spans/s acked, ([\d.,]+) MB/s", out),
                         grab(r"Export latency\s+p50 ([\d.,]+ ms)", out), grab(r"Export latency.*p99 ([\d.,]+ ms)", out),
                         grab(r"peak RSS\s+([\d,]+ MB)", out), grab(r"\(([\d,]+ B/span)\)", out),
                         grab(r"server CPU.*?([\d,]+ us/span)", out)))
    # The ingest runs' request size and twice their senders: with 52-span requests from 4 senders the
    # lag step measured its own request latency (about 2,400 spans/s), not the collector's limit.
    out = run([f"{HERE}/lag.py", "--rate", str(a.lag_rate), "--duration", str(a.lag_duration),
               "--traces-per-request", str(per_request), "--concurrency", str(2 * a.concurrency)],
              timeout=a.lag_duration * 10 + 300)
    lag = (grab(r"achieved rate\s+([\d,]+) spans/s", out), grab(r"lag \(detected_at\)\s+(.*)", out))
    run([f"{HERE}/queries.py", "--spans", str(a.query_spans)], timeout=3600)

    print("\n== summary (2 shared cores; figures move with the machine's other load)")
    print(f"{'run':34s} {'spans/s':>8s} {'MB/s':>6s} {'p50':>10s} {'p99':>10s} {'peak RSS':>9s} {'disk':>11s} "
          f"{'server CPU':>12s}")
    for r in rows:
        print(f"{r[0]:34s} {r[1]:>8s} {r[2]:>6s} {r[3]:>10s} {r[4]:>10s} {r[5]:>9s} {r[6]:>11s} {r[7]:>12s}")
    print(f"detection lag at {a.lag_rate:,.0f} spans/s target: achieved {lag[0]} spans/s, {lag[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
