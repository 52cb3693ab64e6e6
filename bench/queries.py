"""Operator queries over a large store: are they still interactive at a million spans?

Builds a store of ``--spans`` spans (default 1,000,000) the way the collector
fills it: a base of generated traces goes through the real decode, pii and
detectors (so ``attributes`` are real sanitized JSON and ``detections`` real
findings), then the base is copied with fresh trace ids until the store is big
enough, and checkpointed. Then it times three questions operators ask first,
each run ``--repeat`` times (median reported):

* failure-mode summary: detections and share of traces per failure_mode
* per-model latency: p50 / p95 / p99 of LLM span duration per model
* trace fetch: every span of one trace by id, attributes included

They are timed twice: in this process on a connection tuned like the
collector's (:func:`tracesieve.storage.store.tune_for_ingest`: one thread),
which is what ``tracesieve query`` gets while ``serve`` runs, and through the
real CLI opening the file itself (``tracesieve query ... --format json``), whose
time includes starting Python.

    python bench/queries.py                  # 1,000,000 spans
    python bench/queries.py --spans 200000 --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyarrow as pa  # noqa: E402

import generator  # noqa: E402

QUERIES = {
    "failure-mode summary": (
        "SELECT d.failure_mode, count(*) AS detections, count(DISTINCT d.trace_id) AS traces, "
        "round(100.0 * count(DISTINCT d.trace_id) / (SELECT count(DISTINCT trace_id) FROM spans), 2) AS pct_traces "
        "FROM detections d GROUP BY 1 ORDER BY 2 DESC"
    ),
    "per-model latency p50/p95/p99": (
        "SELECT llm_model_name, count(*) AS calls, quantile_cont(duration_ms, 0.5) AS p50_ms, "
        "quantile_cont(duration_ms, 0.95) AS p95_ms, quantile_cont(duration_ms, 0.99) AS p99_ms "
        "FROM spans WHERE span_kind = 'LLM' GROUP BY 1 ORDER BY 2 DESC"
    ),
    "trace fetch by id": (
        "SELECT span_id, parent_span_id, name, span_kind, start_time, duration_ms, status_code, attributes "
        "FROM spans WHERE trace_id = '{trace_id}' ORDER BY start_time"
    ),
}


def build_store(path: str, n_spans: int, base_traces: int) -> str:
    """Fill ``path`` with about ``n_spans`` spans; returns a trace id to fetch."""
    from tracesieve.collector.config import load_config
    from tracesieve.collector.decode import decode_request
    from tracesieve.collector.judge import CursorReader
    from tracesieve.processors.base import TraceBatch
    from tracesieve.storage import candidates as candidate_store
    from tracesieve.storage import store
    from tracesieve.storage.schema import utcnow

    config = load_config(None, db_path=path)
    t0 = time.perf_counter()
    batches = []
    for request in generator.make_requests(base_traces, seed=3, traces_per_request=16, failure_rate=0.1,
                                           service="bench-agent", genai_variant=True):
        batch = decode_request(request).batch
        for proc in config.span_processors:
            batch = proc.process(batch)
        batches.append(batch)
    base = pa.concat_tables(batches)
    con = store.open_database(path)
    con.register("base", base)
    con.execute("INSERT INTO spans SELECT * FROM base")
    con.unregister("base")
    trace_ids = [r[0] for r in con.execute("SELECT DISTINCT trace_id FROM spans").fetchall()]
    traces = store.load_traces(con, trace_ids)
    judged = TraceBatch(traces=traces)
    reader = CursorReader(con)
    for proc in config.trace_processors:
        judged = proc.process_traces(judged, reader)
    store.save_detections(con, trace_ids, judged.detections, utcnow())
    candidate_store.upsert_candidates(con, judged.candidates, utcnow())
    copies = max(0, -(-n_spans // base.num_rows) - 1)
    # Copies get fresh trace ids (md5 of id and copy number) and later receive times.
    con.execute(
        "INSERT INTO spans SELECT spans.* REPLACE (substr(md5(trace_id || '-' || k), 1, 32) AS trace_id, "
        "received_at + k * INTERVAL 1 MINUTE AS received_at, start_time + k * INTERVAL 1 MINUTE AS start_time, "
        "end_time + k * INTERVAL 1 MINUTE AS end_time) FROM spans, range(1, ?) AS r(k) ",
        [copies + 1],
    )
    con.execute(
        "INSERT INTO detections SELECT detections.* REPLACE (md5(detection_id || '-' || k) AS detection_id, "
        "substr(md5(trace_id || '-' || k), 1, 32) AS trace_id) FROM detections, range(1, ?) AS r(k)",
        [copies + 1],
    )
    con.execute("CHECKPOINT")
    total = con.execute("SELECT count(*) FROM spans").fetchone()[0]
    detections = con.execute("SELECT count(*) FROM detections").fetchone()[0]
    con.close()
    size = os.path.getsize(path)
    print(f"store              {total:,} spans, {detections:,} detections, {size / 1e6:,.0f} MB "
          f"({size / total:,.0f} B/span), built in {time.perf_counter() - t0:.0f} s")
    return trace_ids[len(trace_ids) // 2]


def time_in_process(path: str, sql: str, repeat: int) -> tuple[float, int]:
    import duckdb

    con = duckdb.connect(path, read_only=True)
    con.execute("SET threads = 1")  # as tune_for_ingest leaves the collector's instance
    times, rows = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        rows = len(con.execute(sql).fetchall())
        times.append(time.perf_counter() - t)
    con.close()
    return statistics.median(times), rows


def time_cli(path: str, sql: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tracesieve.collector.cli", "query", sql, "--db", path,
                               "--format", "json"], capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"query failed: {proc.stderr.strip()}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--base-traces", type=int, default=3000, help="traces generated and judged for real")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with the store")
    a = ap.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="tracesieve-queries-")
    path = os.path.join(workdir, "bench.duckdb")
    try:
        trace_id = build_store(path, a.spans, a.base_traces)
        print(f"{'query':32s} {'1 thread, in process':>22s} {'CLI (python start incl.)':>26s}  rows")
        for label, sql in QUERIES.items():
            sql = sql.format(trace_id=trace_id)
            inproc, rows = time_in_process(path, sql, a.repeat)
            cli = time_cli(path, sql, max(1, a.repeat // 2))
            print(f"{label:32s} {inproc * 1000:>19,.0f} ms {cli * 1000:>23,.0f} ms  {rows}")
    finally:
        if a.keep:
            print(f"kept               {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
