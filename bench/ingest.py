"""Ingest throughput of the real collector, end to end.

Starts ``python -m tracesieve.collector.cli serve --db <tmp>/bench.duckdb --config <tmp>/config.yaml``
on free loopback ports, waits for ``GET /readyz`` == 200, sends pre-generated
traces with ``send.py``, SIGTERMs the server and waits for it to drain and exit,
then counts the stored spans with ``tracesieve query``.  Prints one block of
figures.  The server's peak RSS is its VmHWM from /proc/<pid>/status (plus the
VmHWM of any child processes it started).

    python bench/ingest.py --traces 5000 --concurrency 4 --transport grpc
    python bench/ingest.py --traces 5000 --transport http --gzip --pii off

Exit status: 0 when every span sent was acknowledged and stored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402

import send  # noqa: E402

DEFAULT_CLI = [sys.executable, "-m", "tracesieve.collector.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return 0


def _proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds a live process has used (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError):
        return 0.0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return out


class Server:
    """The collector as a subprocess on free loopback ports, with a private temp dir."""

    def __init__(self, *, pii: bool = True, decision_wait: str | None = None, workdir: str | None = None,
                 cli: list[str] | None = None, keep: bool = False, extra_config: dict | None = None,
                 max_queued_spans: int | None = None, trace_stage: bool = True,
                 span_workers: str | None = None, max_memory: str | None = None) -> None:
        self.cli = cli or DEFAULT_CLI
        self.keep = keep
        self.dir = workdir or tempfile.mkdtemp(prefix="tracesieve-bench-")
        os.makedirs(self.dir, exist_ok=True)
        self.db = os.path.join(self.dir, "bench.duckdb")
        self.config_path = os.path.join(self.dir, "config.yaml")
        self.log_path = os.path.join(self.dir, "server.log")
        self.grpc_port = free_port()
        self.http_port = free_port()
        procs = (["pii"] if pii else []) + (["detectors", "promotion"] if trace_stage else [])
        processors: dict = {name: {} for name in procs}
        if decision_wait is not None and trace_stage:
            processors["detectors"]["decision_wait"] = decision_wait
        self.config = {
            "receivers": {"otlp": {"protocols": {
                "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"},
                "http": {"endpoint": f"127.0.0.1:{self.http_port}"}}}},
            "processors": processors,
            "service": {"pipelines": {"traces": {"receivers": ["otlp"], "processors": procs}}},
        }
        limits = self.config["receivers"]["otlp"].setdefault("limits", {})
        if max_queued_spans is not None:
            limits["max_queued_spans"] = max_queued_spans
        if max_memory is not None:
            limits["max_memory"] = max_memory
        if span_workers is not None:
            self.config["service"]["span_workers"] = int(span_workers) if span_workers.isdigit() else span_workers
        for k, v in (extra_config or {}).items():
            self.config[k] = v
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f, sort_keys=False)
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kib = 0
        self.peak_rss_sampled_kib = 0  # the largest sum of the processes' RSS at one sampling instant
        self.startup_cpu_s = 0.0
        self.cpu_s = 0.0
        self.startup_s = float("nan")
        self.drain_s = float("nan")
        self.exit_code: int | None = None
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._log = None

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def endpoint(self, transport: str) -> str:
        return self.grpc_endpoint if transport == "grpc" else self.http_endpoint

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 90.0) -> None:
        cmd = self.cli + ["serve", "--db", self.db, "--config", self.config_path]
        self._log = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.dir)
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        url = f"{self.http_endpoint}/readyz"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(f"collector exited with {rc} before it was ready; command: {shlex.join(cmd)}\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise RuntimeError(f"collector not ready after {timeout:g}s (GET {url}); command: {shlex.join(cmd)}\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - t0
        pid = self.proc.pid
        self.startup_cpu_s = _proc_cpu_s(pid) + sum(_proc_cpu_s(c) for c in _children(pid))

    def _sample(self) -> None:
        deadline = time.monotonic() + 6 * 3600  # bounded even if nobody stops us
        while not self._sampling.is_set() and time.monotonic() < deadline:
            self._read_rss()
            self._sampling.wait(0.2)

    def _read_rss(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = self.proc.pid
        children = _children(pid)
        total = _proc_kib(pid, "VmHWM") + sum(_proc_kib(c, "VmHWM") for c in children)
        self.peak_rss_kib = max(self.peak_rss_kib, total)
        together = _proc_kib(pid, "VmRSS") + sum(_proc_kib(c, "VmRSS") for c in children)
        self.peak_rss_sampled_kib = max(self.peak_rss_sampled_kib, together)

    def stop(self, timeout: float = 180.0) -> int | None:
        """SIGTERM and wait for the drain; SIGKILL (this process only) after ``timeout``."""
        if self.proc is None:
            return None
        self._read_rss()
        t0 = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.drain_s = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The server is reaped here, with the span workers it reaped: its whole life's CPU, all processes.
        self.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) - self.startup_cpu_s
        self.exit_code = self.proc.returncode
        self._sampling.set()
        if self._log:
            self._log.close()
        return self.exit_code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._sampling.set()

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -------------------------------------------------------------- helpers
    def query(self, sql: str, timeout: float = 60.0, with_config: bool = True) -> list[dict]:
        """``tracesieve query SQL --db DB [--config CFG] --format json``; goes through the collector while it runs."""
        cmd = self.cli + ["query", sql, "--db", self.db, "--format", "json"]
        if with_config:
            cmd += ["--config", self.config_path]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"query exited {r.returncode}: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout or "[]")

    def db_bytes(self) -> int:
        total = 0
        for name in os.listdir(self.dir):
            if name.startswith("bench.duckdb"):
                total += os.path.getsize(os.path.join(self.dir, name))
        return total

    def log_tail(self, n: int = 25) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return "(no server log)"
        return "server log (last lines):\n  " + "\n  ".join(lines[-n:])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        self.cleanup()


def first_value(rows: list[dict]):
    if not rows:
        return None
    return next(iter(rows[0].values()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--transport", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--pii", choices=["on", "off"], default="on")
    ap.add_argument("--trace-stage", choices=["on", "off"], default="on",
                    help="off: no detectors/promotion, to see what the span stage and writer alone sustain")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--traces-per-request", type=int, default=8)
    ap.add_argument("--pool-traces", type=int, default=3000,
                    help="distinct traces generated up front; beyond that they are resent with fresh trace ids")
    ap.add_argument("--failure-rate", type=float, default=0.0)
    ap.add_argument("--genai", action="store_true", help="30%% of traces with OTel GenAI conventions")
    ap.add_argument("--cli", default=None, help="command that runs the tracesieve CLI (default: this python -m "
                                                "tracesieve.collector.cli)")
    ap.add_argument("--max-memory", default=None, metavar="SIZE",
                    help="set receivers.otlp.limits.max_memory (e.g. 600MiB): backpressure by resident memory")
    ap.add_argument("--max-queued-spans", type=int, default=None,
                    help="set receivers.otlp.limits.max_queued_spans (small values exercise throttling)")
    ap.add_argument("--span-workers", default=None, help="service.span_workers (default: the config default, auto)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (db, config, server log)")
    ap.add_argument("--ready-timeout", type=float, default=90.0)
    ap.add_argument("--stop-timeout", type=float, default=300.0)
    a = ap.parse_args(argv)

    n_pool = max(1, min(a.traces, a.pool_traces))
    t = time.perf_counter()
    pool = send.build_pool(n_pool, seed=a.seed, traces_per_request=a.traces_per_request,
                           failure_rate=a.failure_rate, genai_variant=a.genai)
    gen_s = time.perf_counter() - t
    pool_spans = sum(p.spans for p in pool)
    pool_bytes = sum(len(p.body) for p in pool)
    n_requests = -(-a.traces // a.traces_per_request)
    print(f"generated          {n_pool} distinct traces, {pool_spans:,} spans, {pool_bytes / pool_spans:,.0f} B/span "
          f"on the wire, {gen_s:.1f} s; sending {a.traces} traces in {n_requests} requests")

    server = Server(pii=a.pii == "on", trace_stage=a.trace_stage == "on", cli=shlex.split(a.cli) if a.cli else None, keep=a.keep,
                    max_queued_spans=a.max_queued_spans, span_workers=a.span_workers, max_memory=a.max_memory)
    ok = False
    try:
        server.start(timeout=a.ready_timeout)
        print(f"collector ready    in {server.startup_s:.1f} s (grpc {server.grpc_endpoint}, http {server.http_endpoint},"
              f" dir {server.dir})")
        res = send.run(send.PayloadSource(pool, n_requests, seed=a.seed), transport=a.transport,
                       endpoint=server.endpoint(a.transport), concurrency=a.concurrency, use_gzip=a.gzip)
        rc = server.stop(timeout=a.stop_timeout)
        stored = None
        stored_err = ""
        try:
            stored = first_value(server.query("SELECT count(*) AS n FROM spans"))
        except Exception as e:  # report, do not crash: the figures above are still worth printing
            stored_err = str(e).splitlines()[0][:200]
        print(f"== ingest: {a.traces} traces, transport {a.transport}{' +gzip' if a.gzip else ''}, "
              f"concurrency {a.concurrency}, pii {a.pii}, trace stage {a.trace_stage}, seed {a.seed}"
              + (f", max_queued_spans {a.max_queued_spans}" if a.max_queued_spans is not None else "")
              + (f", max_memory {a.max_memory}" if a.max_memory is not None else ""))
        print(send.format_result(res))
        print(f"peak RSS           {server.peak_rss_kib / 1024:,.0f} MB (server VmHWM: each process's own peak, summed); "
          f"{server.peak_rss_sampled_kib / 1024:,.0f} MB at once (VmRSS sum, sampled every 0.2 s)")
        print(f"db file size       {server.db_bytes() / 1e6:,.1f} MB "
              f"({server.db_bytes() / max(1, res.spans_acked):,.0f} B/span)")
        print(f"shutdown           SIGTERM -> exit {rc} in {server.drain_s:.1f} s")
        if res.spans_acked:
            per_span = server.cpu_s / res.spans_acked
            print(f"server CPU         {server.cpu_s:,.1f} s user+sys after ready, workers and drain included: "
                  f"{per_span * 1e6:,.0f} us/span, a ceiling of {os.cpu_count() / per_span:,.0f} spans/s "
                  f"on {os.cpu_count()} cores")
        print(f"stored spans       {stored if stored is not None else 'query failed: ' + stored_err}"
              f" (acked {res.spans_acked:,})")
        ok = (stored is not None and int(stored) == res.spans_acked == res.spans_sent and rc == 0)
        if not ok:
            print(server.log_tail())
    except RuntimeError as e:
        print(f"ingest: {e}", file=sys.stderr)
    finally:
        server.kill()
        if a.keep:
            print(f"kept               {server.dir}")
        server.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
