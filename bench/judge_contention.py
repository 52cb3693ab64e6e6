"""How long an Export request waits for the span workers while the judge's rounds use them.

The built-in detector rules run in the same worker processes that decode and sanitize Export
requests (``ProcessSpanStage.find_rule_findings``). A judge round of 300 traces (~2,000 spans) is
cut into jobs of ~512 spans; the pool serves its queue in order, so what an Export request waits
for depends on how many of those jobs are queued ahead of it.

This drives the real ``ProcessSpanStage`` with the default config, no server: one thread runs
rounds back to back (``--round-traces`` realistic traces, a 0.25 s pause between rounds, as the
judge polls), while the main thread sends one ``--traces-per-request`` request every
``--interval`` seconds through the same pool and times it until its Arrow batch is back.

    python bench/judge_contention.py                 # 30 s, one worker, rounds on
    python bench/judge_contention.py --rounds off    # the same requests with no rounds: the floor

Prints the rounds' median duration and the requests' p50 / p90 / p99 / max in ms.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generator  # noqa: E402
import send  # noqa: E402

from tracesieve.collector.config import load_config  # noqa: E402
from tracesieve.collector.span_stage import ProcessSpanStage, run_inline  # noqa: E402
from tracesieve.processors.detectors import DetectorsProcessor  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1, help="span worker processes (1 is auto on 2 cores)")
    ap.add_argument("--round-traces", type=int, default=300, help="traces per judge round (the judge's cap)")
    ap.add_argument("--traces-per-request", type=int, default=80)
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between two requests")
    ap.add_argument("--rounds", choices=("on", "off"), default="on")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tracesieve-contention-") as tmp:
        config = load_config(None, db_path=f"{tmp}/unused.duckdb")
        detectors = next(p for p in config.trace_processors if isinstance(p, DetectorsProcessor))
        request = next(generator.make_requests(a.round_traces, seed=7, traces_per_request=a.round_traces,
                                               failure_rate=0.1))
        round_rows = run_inline(request, config.decode_limits, config.span_processors).batch
        payloads = send.build_pool(a.traces_per_request * 8, traces_per_request=a.traces_per_request)
        stage = ProcessSpanStage(a.workers, None, f"{tmp}/unused.duckdb")
        stop = threading.Event()
        rounds: list[float] = []

        def judge() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                stage.find_rule_findings(detectors, round_rows)
                rounds.append(time.perf_counter() - started)
                stop.wait(0.25)

        judging = threading.Thread(target=judge, daemon=True)
        if a.rounds == "on":
            judging.start()
        waits: list[float] = []
        end = time.monotonic() + a.duration
        while time.monotonic() < end:
            started = time.perf_counter()
            stage.run(None, payloads[len(waits) % len(payloads)].body)  # type: ignore[arg-type]
            waits.append((time.perf_counter() - started) * 1000)
            time.sleep(a.interval)
        stop.set()
        if judging.is_alive():
            judging.join()
        stage.shutdown()

    waits.sort()

    def at(q: float) -> float:
        return waits[min(len(waits) - 1, int(len(waits) * q))]

    if rounds:
        print(f"judge rounds       {len(rounds)} of {round_rows.num_rows:,} spans ({a.round_traces} traces), "
              f"median {statistics.median(rounds) * 1000:.0f} ms")
    else:
        print("judge rounds       off")
    print(f"Export requests    {len(waits)} of ~{payloads[0].spans} spans through {a.workers} worker(s): "
          f"p50 {at(0.5):.0f} ms, p90 {at(0.9):.0f} ms, p99 {at(0.99):.0f} ms, max {waits[-1]:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
