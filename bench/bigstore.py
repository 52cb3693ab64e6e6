"""Commits into a big store: does the writer keep working, and at what memory, once the store is large?

Every other benchmark starts from an empty store, which is how a primary key whose index DuckDB
kept whole in memory went unnoticed until session 7: past ~3 million spans, every commit failed.
This fills a store with ``--spans`` small spans (ids, a name, a timestamp; the keys are what
matter, not the payload) and ``--traces`` (``--spans / 8``) traces in ``trace_state``, reopens it
exactly as ``tracesieve serve`` does (``open_database``, ``recent_traces.fit_at_start``,
``tune_for_ingest``), and runs ``--commits``
group commits of realistic decoded spans (the bench generator's, new trace ids each time) through
the real writer, checkpointing as the collector does. Prints the commit time, the failed
commits, the process's peak RSS and DuckDB's memory by tag.

    python bench/bigstore.py                        # 4,000,000 spans
    python bench/bigstore.py --spans 1000000 --commits 50
    python bench/bigstore.py --spans 1000000 --traces 6000000   # trace_state's key (session 8)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import send  # noqa: E402
from ingest import _proc_kib  # noqa: E402

from tracesieve.collector.decode import DecodeLimits, decode_request, parse_protobuf  # noqa: E402
from tracesieve.storage import recent_traces, store  # noqa: E402
from tracesieve.storage.writer import GroupCommitWriter  # noqa: E402

FILL_STEP = 500_000


def _kib(field: str) -> int:
    return _proc_kib(os.getpid(), field)


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux), so that the peak is the commits', not the fill's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def fill(path: str, n_spans: int, n_traces: int) -> float:
    """``n_spans`` small spans in 8-span traces, and ``n_traces`` judged traces; returns seconds taken."""
    t0 = time.perf_counter()
    con = store.open_database(path)
    for start in range(0, n_spans, FILL_STEP):
        stop = min(n_spans, start + FILL_STEP)
        con.execute(
            "INSERT INTO spans (trace_id, span_id, name, received_at) SELECT md5('t' || (i // 8)::VARCHAR), "
            f"substr(md5('s' || i::VARCHAR), 1, 16), 'filler', now() FROM range({start}, {stop}) AS r(i)")
        con.execute("CHECKPOINT")
    for start in range(0, n_traces, FILL_STEP):
        stop = min(n_traces, start + FILL_STEP)
        con.execute(  # a day of arrivals, in order
            "INSERT INTO trace_state (trace_id, first_received_at, last_received_at, received_seq, judged_seq) "
            f"SELECT md5('t' || i::VARCHAR), now() - INTERVAL 1 DAY + INTERVAL (i * 10) MICROSECOND, "
            f"now() - INTERVAL 1 DAY + INTERVAL (i * 10) MICROSECOND, 1, 1 FROM range({start}, {stop}) AS r(i)")
        con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def realistic_batch() -> pa.Table:
    """One request of the bench generator's traces, decoded as the span worker decodes it."""
    payload = send.build_pool(80, seed=1, traces_per_request=80)[0]
    return decode_request(parse_protobuf(payload.body), DecodeLimits()).batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=4_000_000)
    ap.add_argument("--traces", type=int, default=None, help="traces in trace_state (default: --spans / 8)")
    ap.add_argument("--commits", type=int, default=100)
    ap.add_argument("--requests-per-commit", type=int, default=4,
                    help="requests of 528 spans grouped in one commit, as the writer groups them under load")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with the store")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="tracesieve-bigstore-")
    path = os.path.join(tmp, "big.duckdb")
    try:
        traces = a.spans // 8 if a.traces is None else a.traces
        filled_s = fill(path, a.spans, traces)
        print(f"store              {a.spans:,} spans, {traces:,} traces, "
              f"{os.path.getsize(path) / 2**20:,.0f} MB, filled in {filled_s:.1f} s")
        batch = realistic_batch()
        _reset_peak_rss()
        con = store.open_database(path)
        started = time.perf_counter()
        trimmed = recent_traces.fit_at_start(con)
        if trimmed:
            print(f"trace_state        {trimmed:,} oldest traces dropped at start in "
                  f"{time.perf_counter() - started:.1f} s")
        store.tune_for_ingest(con)
        rss_open = _kib("VmRSS") / 1024
        writer = GroupCommitWriter(con)
        trace_at = batch.schema.get_field_index("trace_id")
        ids = batch.column("trace_id")
        distinct = pc.unique(ids)
        positions = pc.index_in(ids, distinct)
        times, failed = [], 0
        try:
            for k in range(a.commits):
                # Random ids, as real traffic has: each new key takes its own path down the key's index.
                part = pa.concat_tables([
                    batch.set_column(trace_at, batch.schema.field(trace_at), pc.take(
                        pa.array([os.urandom(16).hex() for _ in range(len(distinct))]), positions))
                    for _ in range(a.requests_per_commit)])
                t0 = time.perf_counter()
                try:
                    writer.reserve(part.num_rows)
                    writer.submit_spans(part, part.num_rows).result(timeout=120)
                except Exception as exc:  # a refused commit is the figure this benchmark exists for
                    failed += 1
                    if failed == 1:
                        print(f"first failed commit: #{k + 1}: {exc}")
                times.append(time.perf_counter() - t0)
            memory = con.execute("SELECT tag, memory_usage_bytes // 1048576 FROM duckdb_memory() "
                                 "WHERE memory_usage_bytes >= 1048576 ORDER BY 2 DESC").fetchall()
        finally:
            writer.close()
        con.close()
        print(f"commits            {a.commits} of {a.requests_per_commit * batch.num_rows} realistic spans each, "
              f"{failed} failed, {writer.stats.checkpoints} checkpoints")
        print(f"commit time        p50 {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms (checkpoints included)")
        print(f"RSS                {rss_open:,.0f} MB after opening, peak {_kib('VmHWM') / 1024:,.0f} MB "
              "while committing")
        print("DuckDB memory      " + (", ".join(f"{tag} {mb} MB" for tag, mb in memory) or "under 1 MB"))
        return 1 if failed else 0
    finally:
        if a.keep:
            print(f"kept               {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
