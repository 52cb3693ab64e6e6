"""Aggregate ingest throughput of 1, 2, 3... collectors writing one DuckLake store.

Starts a throwaway PostgreSQL cluster (tests/pg_cluster.py: initdb + pg_ctl from the OS
packages on a free loopback port) unless ``--catalog`` names one, then for each writer
count N: a fresh catalog database and data directory, N ``tracesieve serve`` processes
on the lake, the same pre-generated traces split evenly across them (send.py, each
trace whole in one request, as a trace-id load balancer would route them), SIGTERM,
and a count of the stored spans through ``tracesieve query --config``. Prints one
line per N and the conflict retries each run needed.

    python bench/lake.py --traces 3000 --writers 1,2,3
    python bench/lake.py --traces 2000 --writers 1,3 --trace-stage off

Exit status: 0 when every run stored exactly the acknowledged spans, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import ingest  # noqa: E402
import send  # noqa: E402
from pg_cluster import PostgresCluster, postgres_bin_dir  # noqa: E402

CONFLICTS = re.compile(r"lake writer: (\d+) span commits, (\d+) commit conflicts retried, ([\d.]+) s committing")


def run_fleet(n: int, catalog: str, pool: list[send.Payload], n_requests: int, a: argparse.Namespace) -> dict:
    data = tempfile.mkdtemp(prefix=f"tracesieve-lake-{n}-")
    lake = {"storage": {"ducklake": {"catalog": catalog, "data_path": data + "/"}}}
    servers = [ingest.Server(pii=a.pii == "on", trace_stage=a.trace_stage == "on", extra_config=lake)
               for _ in range(n)]
    try:
        for s in servers:
            s.start(timeout=a.ready_timeout)
        # Each writer gets an even share of the requests (distinct traces: the routing a load balancer does).
        share = [n_requests // n + (1 if i < n_requests % n else 0) for i in range(n)]
        results: list[send.Result | None] = [None] * n
        offset = 0

        def sender(i: int, start: int) -> None:
            source = send.PayloadSource(pool[start:] + pool[:start], share[i], seed=a.seed + i)
            results[i] = send.run(source, transport="grpc", endpoint=servers[i].grpc_endpoint,
                                  concurrency=a.concurrency)

        threads = []
        for i in range(n):
            threads.append(threading.Thread(target=sender, args=(i, offset % len(pool))))
            offset += share[i]
        load_before = os.getloadavg()[0]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        acked = sum(r.spans_acked for r in results if r)
        sent = sum(r.spans_sent for r in results if r)
        exits = [s.stop(timeout=a.stop_timeout) for s in servers]
        commits = conflicts = 0
        busy = 0.0
        for s in servers:
            with open(s.log_path, errors="replace") as fh:
                for m in CONFLICTS.finditer(fh.read()):
                    commits += int(m.group(1))
                    conflicts += int(m.group(2))
                    busy += float(m.group(3))
        row = servers[0].query("SELECT count(*) AS n, count(DISTINCT (trace_id, span_id)) AS d FROM spans")[0]
        stored = row["n"] if row["n"] == row["d"] else f"{row['n']} ({row['n'] - row['d']} duplicates!)"
        files = sum(len(f) for _, _, f in os.walk(data))
        return {"n": n, "sent": sent, "acked": acked, "stored": stored, "wall": wall, "exits": exits,
                "commits": commits, "conflicts": conflicts, "busy": busy, "files": files, "load": load_before,
                "p50": send.pct([x for r in results if r for x in r.request_latencies], 50)}
    finally:
        for s in servers:
            s.kill()
            s.cleanup()
        subprocess.run(["rm", "-rf", data], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=3000, help="traces per run (split across the writers)")
    ap.add_argument("--writers", default="1,2,3", help="comma-separated writer counts")
    ap.add_argument("--concurrency", type=int, default=2, help="concurrent exports per writer")
    ap.add_argument("--traces-per-request", type=int, default=8)
    ap.add_argument("--pii", choices=["on", "off"], default="on")
    ap.add_argument("--trace-stage", choices=["on", "off"], default="on")
    ap.add_argument("--catalog", default=None, help="an existing PostgreSQL server as 'postgres:host=... port=... "
                                                    "user=...' (a database per run is created with createdb)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--stop-timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    counts = [int(x) for x in a.writers.split(",") if x.strip()]

    pool = send.build_pool(min(a.traces, 3000), seed=a.seed, traces_per_request=a.traces_per_request)
    n_requests = -(-a.traces // a.traces_per_request)
    spans_per_request = sum(p.spans for p in pool) / len(pool)
    print(f"workload           {a.traces} traces, ~{n_requests * spans_per_request:,.0f} spans in {n_requests} "
          f"requests, pii {a.pii}, trace stage {a.trace_stage}, {a.concurrency} concurrent exports per writer; "
          f"{os.cpu_count()} cores")
    cluster = None
    if a.catalog is None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            print("no PostgreSQL binaries: apt-get install postgresql, or pass --catalog", file=sys.stderr)
            return 1
        cluster = PostgresCluster(bin_dir).start()
    ok = True
    try:
        for n in counts:
            name = f"bench_lake_{n}_{os.getpid()}"
            if cluster is not None:
                catalog = cluster.create_database(name)
            else:
                subprocess.run(["createdb", *_libpq_args(a.catalog), name], check=True)
                catalog = f"{a.catalog} dbname={name}"
            r = run_fleet(n, catalog, pool, n_requests, a)
            good = r["stored"] == r["acked"] == r["sent"] and all(e == 0 for e in r["exits"])
            ok = ok and good
            print(f"{n} writer{'s' if n > 1 else ' '}          {r['acked'] / r['wall']:8,.0f} spans/s aggregate "
                  f"({r['acked']:,} spans in {r['wall']:.1f} s), request p50 {r['p50'] * 1e3:,.0f} ms, "
                  f"{r['commits']} span commits ({r['busy'] / max(1, r['commits']) * 1e3:,.0f} ms each incl. retries), "
                  f"{r['conflicts']} conflicts retried, {r['files']} data files, "
                  f"load avg before {r['load']:.1f}; stored {r['stored']} {'OK' if good else 'MISMATCH'}")
    finally:
        if cluster is not None:
            cluster.stop()
    return 0 if ok else 1


def _libpq_args(catalog: str) -> list[str]:
    fields = dict(part.split("=", 1) for part in catalog.removeprefix("postgres:").split() if "=" in part)
    flags = {"host": "-h", "port": "-p", "user": "-U"}
    return [x for k, v in fields.items() if k in flags for x in (flags[k], v)]


if __name__ == "__main__":
    sys.exit(main())
