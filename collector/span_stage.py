"""Where decode and the span-stage processors run: inline, or in a pool of worker processes.

Decoding and sanitizing are pure-Python work per attribute; in one process they
hold the GIL that the judge and the receivers also need. With ``service.span_workers``
above zero they run in that many worker processes (spawned, so no gRPC or DuckDB
state is forked), each building the same processors from the same config file.
A request travels to a worker as serialized OTLP protobuf and comes back as an
Arrow IPC stream of the sanitized batch: nothing unredacted leaves the worker.

The same workers run the built-in detector rules for the judge (``find_rule_findings``): a
settled round's spans, already stored and sanitized, travel as Arrow IPC, and only the
findings come back.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracesieve.collector.decode import DecodeLimits, DecodeResult, decode_request, parse_protobuf
from tracesieve.processors.base import SpanProcessor
from tracesieve.processors.detectors import DetectorsConfig, DetectorsProcessor
from tracesieve.processors.rules import Finding
from tracesieve.storage.errors import ProcessorFailedError, RetryableError
from tracesieve.storage.schema import SPAN_SCHEMA
from tracesieve.storage.store import traces_from_table

log = logging.getLogger("tracesieve.span_stage")

#: How long an Export request waits while the workers finish nothing at all before the answer is "retry".
#: A worker that is stopped (SIGSTOP, a debugger) or stuck used to hold every request, and then `serve`'s
#: shutdown, forever. Measured from the pool's last finished job, not from the request's arrival: under
#: overload a request may queue behind many others, and healthy workers must not be taken for stuck ones.
WORKER_WAIT_SECONDS = 30.0
#: The same for the judge's rule jobs (~45 ms of work each); then it judges the round itself.
RULE_JOB_WAIT_SECONDS = 10.0
_WAIT_SLICE_SECONDS = 1.0  # how often a waiting caller looks whether the pool still finishes jobs
#: How long shutdown lets the workers finish their current job before it stops them (SIGKILL).
SHUTDOWN_WAIT_SECONDS = 5.0


class SpanStage(Protocol):
    def run(self, request: ExportTraceServiceRequest, wire: bytes | None) -> DecodeResult:
        """Decode ``request`` (``wire``: its protobuf bytes when already at hand) and run the processors."""
        ...

    def shutdown(self, timeout: float = ...) -> None: ...

    def worker_pids(self) -> list[int]:
        """The processes doing this stage's work besides the collector (their memory counts as its own)."""
        ...


def run_inline(request: ExportTraceServiceRequest, limits: DecodeLimits,
               processors: Sequence[SpanProcessor], ids: Sequence[str] = ()) -> DecodeResult:
    """Decode and run ``processors`` (pipeline ``ids``, for errors) in order.

    A processor that raises fails the whole request with ProcessorFailedError naming it.
    """
    result = decode_request(request, limits)
    batch = result.batch
    for i, proc in enumerate(processors):
        name = ids[i] if i < len(ids) else type(proc).__name__
        try:
            batch = proc.process(batch)
        except Exception as exc:
            raise ProcessorFailedError(f"span processor {name!r} failed: {type(exc).__name__}") from exc
        wrong = _not_a_span_batch(batch)
        if wrong:  # the writer would fail on it, and answer "retry" for a request that can never be stored
            raise ProcessorFailedError(f"span processor {name!r} failed: it returned {wrong}")
    result.batch = batch
    return result


def _not_a_span_batch(batch: object) -> str | None:
    """What is wrong with a span processor's output, in words without span content; None when it is a table
    of the ``spans`` schema (processors/base.py: it may rewrite any column but must keep the schema)."""
    if not isinstance(batch, pa.Table):
        return f"{type(batch).__name__}, not a pyarrow Table"
    if batch.schema.equals(SPAN_SCHEMA, check_metadata=False):
        return None
    missing = [n for n in SPAN_SCHEMA.names if n not in batch.schema.names]
    extra = [n for n in batch.schema.names if n not in SPAN_SCHEMA.names]
    if missing or extra:
        return (f"a table without the spans schema (missing: {', '.join(missing) or '-'}; "
                f"extra: {', '.join(extra) or '-'})")
    changed = [f.name for f in SPAN_SCHEMA if batch.schema.field(f.name).type != f.type]
    return f"a table whose columns differ from the spans schema ({', '.join(changed) or 'order or nullability'})"


class InlineSpanStage:
    """Runs in the receiver's worker thread."""

    def __init__(self, limits: DecodeLimits, processors: Sequence[SpanProcessor], ids: Sequence[str] = ()) -> None:
        self._limits = limits
        self._processors = list(processors)
        self._ids = list(ids)

    def run(self, request: ExportTraceServiceRequest, wire: bytes | None) -> DecodeResult:
        return run_inline(request, self._limits, self._processors, self._ids)

    def worker_pids(self) -> list[int]:
        return []

    def shutdown(self, timeout: float = 0.0) -> None:
        return None


# --------------------------------------------------------------------------- worker processes

_WORKER: tuple[DecodeLimits, list[SpanProcessor], list[str]] | None = None


def _init_worker(config_path: str | None, db_path: str, collector_pid: int) -> None:
    """Build the span stage from the same config file the collector loaded (runs once per worker)."""
    global _WORKER
    # The collector decides when workers stop: Ctrl-C or `kill %1` signal the whole process group, and
    # the drain at shutdown still runs the rules here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    threading.Thread(target=_exit_with_collector, args=(collector_pid,), name="watch-collector",
                     daemon=True).start()
    from tracesieve.collector.config import load_config

    from tracesieve.collector.runtime import HeapTrimmer, tune_garbage_collector

    config = load_config(config_path, db_path=db_path)
    _WORKER = (config.decode_limits, list(config.span_processors), list(config.span_processor_ids))
    tune_garbage_collector()
    HeapTrimmer().start()


def _exit_with_collector(collector_pid: int) -> None:
    """A collector killed with SIGKILL cannot stop its pool: each worker leaves when it is orphaned."""
    while os.getppid() == collector_pid:
        time.sleep(0.5)
    os._exit(0)


def _work(wire: bytes) -> tuple[bytes, int, list[str]]:
    assert _WORKER is not None, "worker used before its initializer ran"
    limits, processors, ids = _WORKER
    try:
        result = run_inline(parse_protobuf(wire), limits, processors, ids)
    except ProcessorFailedError as exc:
        raise ProcessorFailedError(str(exc)) from None  # the cause stays here: its text may quote span content
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, result.batch.schema) as writer:
        writer.write_table(result.batch)
    return sink.getvalue().to_pybytes(), result.rejected, result.errors


class ProcessSpanStage:
    """A pool of spawned worker processes; a crashed pool is replaced and the request asked to retry."""

    def __init__(self, workers: int, config_path: str | None, db_path: str) -> None:
        _quiet_resource_tracker()
        self._workers = workers
        self._initargs = (config_path, db_path, os.getpid())
        self._lock = threading.Lock()
        self._closed = False
        self._finished_at = time.monotonic()  # when a job of the pool last finished (see _wait)
        self._pool = self._new_pool()
        # Start every worker now (and surface config problems) instead of on the first request.
        list(self._pool.map(_noop, range(workers)))

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(max_workers=self._workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=self._initargs)
        _widen_pipes(pool)
        return pool

    def worker_pids(self) -> list[int]:
        return [p.pid for p in _workers_of(self._pool) if p.pid is not None]

    def run(self, request: ExportTraceServiceRequest, wire: bytes | None) -> DecodeResult:
        payload = wire if wire is not None else request.SerializeToString()
        pool = self._pool
        future: Future[tuple[bytes, int, list[str]]] | None = None
        try:
            future = pool.submit(_work, payload)  # raises too when the pool is already broken
            ipc, rejected, errors = self._wait(future, WORKER_WAIT_SECONDS)
        except BrokenProcessPool:
            self._replace(pool)
            raise RetryableError("a span-stage worker died; retry", 1.0) from None
        except TimeoutError:
            if future is not None and not future.cancel():  # a worker took it and never answered: it is stuck
                self._replace_stuck(pool)
            raise RetryableError("the span-stage workers are not answering; retry", 1.0) from None
        except CancelledError:  # shutdown cancelled it before a worker took it
            raise RetryableError("the collector is shutting down; retry", 1.0) from None
        batch = pa.ipc.open_stream(pa.py_buffer(ipc)).read_all()
        return DecodeResult(batch=batch, rejected=rejected, errors=errors)

    def _wait(self, future: Future[Any], patience: float) -> Any:
        """``future``'s result; TimeoutError once no job of the pool has finished for ``patience`` seconds."""
        future.add_done_callback(self._finished)
        since = time.monotonic()
        while True:
            try:
                return future.result(timeout=_WAIT_SLICE_SECONDS)
            except TimeoutError:
                if time.monotonic() - max(self._finished_at, since) >= patience:
                    raise

    def _finished(self, future: Future[Any]) -> None:
        if not future.cancelled():
            self._finished_at = time.monotonic()

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Start a new pool in place of ``broken`` (once, whoever notices first), and say so in the log.

        A worker killed from outside (the kernel's OOM killer picks the biggest process) used to be
        replaced silently: its requests got "retry", and the operator had nothing to explain them.
        """
        with self._lock:
            if self._pool is broken and not self._closed:
                log.warning("a span-stage worker died (%s); the requests it held were answered 'retry' "
                            "and new workers were started", _how_workers_ended(broken))
                self._pool = self._new_pool()

    def _replace_stuck(self, stuck: ProcessPoolExecutor) -> None:
        """Stop the workers of ``stuck`` (their requests get "retry") and start a new pool, once."""
        with self._lock:
            if self._pool is not stuck or self._closed:
                return
            log.warning("a span-stage worker did not answer within %.0f s (stopped or stuck); its workers were "
                        "killed, the requests they held were answered 'retry' and new workers were started",
                        WORKER_WAIT_SECONDS)
            _kill(_workers_of(stuck))
            stuck.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def find_rule_findings(self, detectors: DetectorsProcessor, table: pa.Table, *,
                           behind: bool = False) -> dict[str, list[Finding]]:
        """The built-in findings of the traces in ``table``, found by the worker processes.

        What the judge thread spent most of its GIL on (span rows as dicts, then every rule) runs
        beside decoding, in another process. Raises when the pool cannot (shut down, a worker
        died): the judge then finds them itself.

        At most one job per worker is queued at a time. The pool serves its queue in order, so an
        Export request that arrives during a round waits for one job (~45 ms), not for the round's
        four or five. Unless the judge is ``behind`` (its traces settled more than judge.LAG_BUDGET_SECONDS
        ago): then the whole round is queued at once, and the rules share the workers with Export
        requests instead of waiting for every request in between. Spans first, always, made the
        trace stage fall further behind under full load (bench/ingest.py, 4 senders: the shutdown
        drain hit its deadline, against 6-8 s), while detections within decision_wait + 2 s are a
        target too.
        """
        pool = self._pool
        found: dict[str, list[Finding]] = {}
        queued: deque[Future[tuple[dict[str, list[Finding]], int]]] = deque()

        def collect() -> None:
            part, failed = self._wait(queued.popleft(), RULE_JOB_WAIT_SECONDS)
            found.update(part)
            detectors.errors += failed

        try:
            jobs = rule_jobs(table, RULE_JOB_SPANS)
            window = len(jobs) if behind else self._workers
            for job in jobs:
                if len(queued) >= window:
                    collect()
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, job.schema) as writer:
                    writer.write_table(job)
                queued.append(pool.submit(_find_rule_findings, detectors.config, detectors.strict,
                                          sink.getvalue().to_pybytes()))
            while queued:
                collect()
        except BrokenProcessPool:
            self._replace(pool)
            raise
        return found

    def shutdown(self, timeout: float = SHUTDOWN_WAIT_SECONDS) -> None:
        """Let the workers finish their current job for up to ``timeout`` seconds, then stop the rest.

        A stopped or stuck worker used to keep `serve` from ever exiting after SIGTERM; the request it
        held is answered "retry" (BrokenProcessPool), so nothing acknowledged is lost.
        """
        pool = self._pool
        with self._lock:
            self._closed = True
        processes = _workers_of(pool)
        # The pool's manager thread tells the workers to exit and reaps them: its end is theirs. Joining the
        # processes from here as well raced it for the same exit status (the loser saw "still running"),
        # which logged a stuck worker and sent SIGKILL to a reaped pid at every shutdown after traffic.
        manager: threading.Thread | None = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        if manager is not None:
            manager.join(timeout)
        if manager is not None and manager.is_alive():  # it waits on a worker that never exits
            log.warning("a span-stage worker did not finish within %.0f s of shutdown (stopped or stuck); "
                        "it was killed and the request it held answered 'retry'", timeout)
            _kill(processes)
            # The manager now finds the pool broken and closes its wake-up pipe: let it finish here. At
            # exit, concurrent.futures writes to every manager's pipe without a lock, and one closing at
            # that moment printed a "Bad file descriptor" traceback on serve's stderr (seen once in CI).
            manager.join(timeout)


#: The warning multiprocessing's resource tracker prints when the collector was killed (see below).
_LEAKED_SEMAPHORES_WARNING = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    """Keep the resource tracker's "leaked semaphore objects" warning off the collector's stderr.

    The pool's queues register semaphores with multiprocessing's resource tracker, a helper process
    that outlives a collector killed with SIGKILL (the OOM killer, a supervisor's last resort), cleans
    them up, and then wrote a two-line UserWarning into the collector's log. It is not an error: the
    crash is, and the restart is what tells about it. The tracker takes its warning filters from this
    process's ``-W`` options when it starts, which is with the first pool.
    """
    if _LEAKED_SEMAPHORES_WARNING not in sys.warnoptions:
        sys.warnoptions.append(_LEAKED_SEMAPHORES_WARNING)


def _workers_of(pool: ProcessPoolExecutor) -> list[Any]:
    """The worker processes of ``pool`` (read before its shutdown, which forgets them)."""
    processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
    return list(processes.values())


def _kill(processes: list[Any]) -> None:
    """SIGKILL the live ones of ``processes`` (a stopped process dies of it too); their pool then breaks."""
    for proc in processes:
        if proc.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                proc.kill()


def _how_workers_ended(pool: ProcessPoolExecutor) -> str:
    """How the pool's dead workers ended ("killed by SIGKILL", "exit code 1"), as far as the pool still knows."""
    ends = []
    processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
    for proc in list(processes.values()):
        code = proc.exitcode
        if code is None:
            continue
        if code < 0:
            try:
                ends.append(f"killed by {signal.Signals(-code).name}")
            except ValueError:
                ends.append(f"killed by signal {-code}")
        else:
            ends.append(f"exit code {code}")
    return ", ".join(dict.fromkeys(ends)) or "how is unknown"


_PIPE_SIZE = 1024 * 1024


def _widen_pipes(pool: ProcessPoolExecutor) -> None:
    """Give the pool's request and result pipes 1 MiB instead of 64 KiB, where the OS allows it.

    A 512-span request travels as ~2.4 MB each way. Through 64 KiB pipes that is ~40 reads and
    wake-ups per direction; with 1 MiB a round trip took 3.7 ms instead of 8.9 and half the
    collector's CPU (bench: 2.4 MB echoed through a spawned pool). Best effort: the pipes are the
    pool's internals, and an unprivileged process may not raise a pipe past
    /proc/sys/fs/pipe-max-size; either way the pool works as before.
    """
    try:
        queues: tuple[Any, ...] = (getattr(pool, "_call_queue"), getattr(pool, "_result_queue"))
        for queue in queues:
            for conn in (queue._reader, queue._writer):
                fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)  # Linux
    except (AttributeError, OSError, ValueError):
        return


def _noop(_: int) -> None:
    return None


# --------------------------------------------------------------------------- the built-in rules, off the judge's GIL

#: Spans per job: a round (up to 300 traces, ~2,000 spans) is cut into a few jobs at trace boundaries,
#: so span requests queued behind a round in the pool wait for one job (~45 ms), not the whole round.
RULE_JOB_SPANS = 512

_RULES: DetectorsProcessor | None = None


def _find_rule_findings(config: DetectorsConfig, strict: bool, ipc: bytes) -> tuple[dict[str, list[Finding]], int]:
    """Run the built-in rules on one job's traces; returns the findings per trace and the rules that failed."""
    global _RULES
    if _RULES is None or _RULES.config != config or _RULES.strict != strict:
        _RULES = DetectorsProcessor(config, strict=strict)
    before = _RULES.errors
    found = findings_of(_RULES, pa.ipc.open_stream(pa.py_buffer(ipc)).read_all())
    return found, _RULES.errors - before


def findings_of(detectors: DetectorsProcessor, table: pa.Table) -> dict[str, list[Finding]]:
    """The built-in findings of the traces whose spans are the rows of ``table``."""
    trace_ids = list(dict.fromkeys(table.column("trace_id").to_pylist()))
    return detectors.findings_by_trace(traces_from_table(table, trace_ids))


def rule_jobs(table: pa.Table, job_spans: int = RULE_JOB_SPANS) -> list[pa.Table]:
    """``table`` cut into slices of about ``job_spans`` spans that never split a trace."""
    if table.num_rows <= job_spans:
        return [table]
    table = table.take(pc.sort_indices(table, [("trace_id", "ascending")]))
    ids = table.column("trace_id").to_pylist()
    jobs, start = [], 0
    for i in range(job_spans, len(ids)):
        if i - start >= job_spans and ids[i] != ids[i - 1]:
            jobs.append(table.slice(start, i - start))
            start = i
    jobs.append(table.slice(start))
    return jobs
