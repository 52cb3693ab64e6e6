"""The single writer: one thread owns every write to the database and commits many requests at once.

Receivers call :meth:`GroupCommitWriter.reserve` (which refuses with a
RetryableError when ``max_queued_spans`` would be exceeded), then
:meth:`submit_spans`, and wait on the returned future: it resolves only after
the transaction holding those spans has committed, so a client is acknowledged
only for stored spans. All span batches waiting when the thread wakes go into
one transaction (group commit). Other writes (judge results, CLI review actions)
are submitted as callables and run in their own transactions on the same
thread, so there is never a write-write conflict between threads.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import duckdb
import pyarrow as pa

from tracesieve.storage.errors import PermanentError, RetryableError
from tracesieve.storage.recent_traces import RecentTraces
from tracesieve.storage.schema import utcnow
from tracesieve.storage.sqlparams import first_row, packed, registered, unpacked
from tracesieve.storage.store import RECEIVED_MARGIN

log = logging.getLogger("tracesieve.writer")

#: DuckDB errors about a value in the batch (a JSON text that does not parse, a number out of range):
#: committing the same rows again fails again, unlike running out of memory or a busy checkpoint.
_DATA_ERRORS = (duckdb.ConversionException, duckdb.InvalidInputException)

WriteTask = Callable[[duckdb.DuckDBPyConnection], Any]

#: How DuckDB reports that its file system refused a write of the store's files (the WAL, the database
#: file, spill files): the path and the operating system's reason, no span content.
_WRITE_REFUSED = re.compile(r'Could not write file "([^"]*)": ([^\n"]{1,200})')


def store_write_refused(exc: BaseException) -> str | None:
    """``cannot write PATH: REASON`` when ``exc`` is DuckDB failing to write the store's files, else None.

    A full disk, a file size limit or an I/O error fail the commit (a TransactionException) or the
    checkpoint (an IOException that invalidates the instance). Retrying such a commit is not harmless:
    DuckDB keeps a failed commit's long strings in memory (13 MB per ten failed 200-row commits in
    a probe), so a collector that answered "retry" on a full disk grew to 1.8 GB and then failed
    every commit with OutOfMemoryException, even after space was freed, until it was restarted.
    """
    if not isinstance(exc, duckdb.Error):
        return None
    match = _WRITE_REFUSED.search(str(exc))
    return f"cannot write {match.group(1)}: {match.group(2).strip()}" if match else None

#: How long a due checkpoint waits for a reader's transaction (GroupCommitWriter.reading) to end.
CHECKPOINT_GATE_SECONDS = 2.0


@dataclasses.dataclass
class _SpanJob:
    batch: pa.Table
    future: Future[int]


@dataclasses.dataclass
class _TaskJob:
    task: WriteTask
    future: Future[Any]


@dataclasses.dataclass
class WriterStats:
    committed_spans: int = 0
    duplicate_spans: int = 0
    commits: int = 0
    last_commit_seconds: float = 0.0
    commit_seconds_total: float = 0.0
    checkpoints: int = 0
    checkpoints_deferred: int = 0  # refused by DuckDB, or a reader held the gate too long; retried later


class GroupCommitWriter:
    """Owns ``con`` for writing. Thread-safe ``reserve``/``submit_*``; one background thread commits."""

    #: CHECKPOINT after the last commit (a lake subclass leaves maintenance to the operator).
    checkpoint_on_close = True
    #: CHECKPOINT once the WAL holds this many bytes, right after acknowledging the commit that grew
    #: it (None: leave it to DuckDB). DuckDB's own checkpoint runs inside that COMMIT, so every
    #: request of the group waited for it (p99 Export ~500 ms at half load); this way only the
    #: requests that arrive during it wait, and for what is left of it. store.INGEST_SETTINGS keeps
    #: DuckDB's threshold above it, as a backstop.
    checkpoint_wal_bytes: int | None = 32 * 1024 * 1024
    #: What the error messages call the database.
    store_noun = "store"
    #: Keep trace_state to the recent traces (recent_traces.py): a key index DuckDB holds in memory.
    prunes_trace_state = True

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        max_queued_spans: int = 200_000,
        max_spans_per_commit: int = 50_000,
        retry_after: float = 1.0,
        on_commit: Callable[[int, int, float], None] | None = None,
        on_checkpoint: Callable[[bool, float], None] | None = None,
    ) -> None:
        """``on_commit(spans, already_stored, seconds)`` is called on the writer thread after each group
        commit of ``spans`` (``already_stored`` of them re-sent copies, not stored again),
        ``on_checkpoint(done, seconds)`` after each checkpoint it ran (done) or DuckDB refused."""
        self._con = con
        self._on_commit = on_commit
        self._on_checkpoint = on_checkpoint
        self.max_queued_spans = max_queued_spans
        self._max_per_commit = max_spans_per_commit
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: collections.deque[_SpanJob | _TaskJob] = collections.deque()
        self._queued_spans = 0  # reserved: accepted but not yet committed
        self._closing = False
        self._stopped = False  # the thread took its last job: nothing queued now would ever run
        self.stats = WriterStats()
        #: The DuckDB error that invalidated the database, once one has (see :meth:`_note_fatal`).
        self.fatal: BaseException | None = None
        #: What to tell the operator about it: the error's type, or what could not be written and why.
        self.fatal_reason = ""
        self._wal_path = _wal_path(con) if self.checkpoint_wal_bytes else None
        self.recent_traces = RecentTraces(con) if self.prunes_trace_state else None
        self._read_gate = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tracesieve-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side

    @property
    def queued_spans(self) -> int:
        return self._queued_spans

    @property
    def running(self) -> bool:
        """True while the writer thread runs and takes spans (False once closing starts)."""
        return self._thread.is_alive() and not self._closing

    def reserve(self, n_spans: int) -> None:
        """Count ``n_spans`` as queued, or raise RetryableError when that would pass the limit.

        A single request larger than the limit is accepted when nothing is queued.
        Every successful reserve must be followed by ``submit_spans`` or ``release``.
        """
        with self._lock:
            if self._closing:
                raise RetryableError("the collector is shutting down; retry against the new instance",
                                     self._retry_after)
            if self._queued_spans and self._queued_spans + n_spans > self.max_queued_spans:
                raise RetryableError(
                    f"write queue is full ({self._queued_spans} spans waiting for commit); retry shortly",
                    self._retry_after,
                )
            self._queued_spans += n_spans

    def release(self, n_spans: int) -> None:
        with self._lock:
            self._queued_spans -= n_spans

    def submit_spans(self, batch: pa.Table, reserved: int) -> Future[int]:
        """Queue a reserved batch; the future gives the number of new spans once committed."""
        future: Future[int] = Future()
        with self._lock:
            if self._stopped:
                self._queued_spans -= reserved
                future.set_exception(RetryableError("the collector is shutting down; retry against the new instance",
                                                    self._retry_after))
                return future
            if reserved != batch.num_rows:
                self._queued_spans += batch.num_rows - reserved
            self._queue.append(_SpanJob(batch, future))
            self._wakeup.notify()
        return future

    def submit_task(self, task: WriteTask) -> Future[Any]:
        """Run ``task(con)`` on the writer thread inside its own transaction; the future gives its result."""
        future: Future[Any] = Future()
        with self._lock:
            if self._stopped:
                future.set_exception(RetryableError("the writer is closed"))
                return future
            self._queue.append(_TaskJob(task, future))
            self._wakeup.notify()
        return future

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold while another cursor has a transaction open that may overlap commits (the judge's read).

        DuckDB refused CHECKPOINT ("other write transactions active") in 12-78 of ~40-120 tries under
        overload while the judge's reads overlapped commits; it skips its own checkpoint then, and
        the WAL and the uncompressed rows behind it keep growing. The writer takes this gate before
        it checkpoints, so a steady reader (a judge round every few hundred ms) cannot keep
        deferring them (3-8 refusals in the same runs with the gate; those were a result the judge
        left open between rounds, and with sqlparams.first_row they are 0).
        """
        with self._read_gate:
            yield

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking spans, commit everything queued, checkpoint. Idempotent."""
        with self._lock:
            self._closing = True
            self._wakeup.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wakeup.wait()
                if not self._queue and self._closing:
                    self._stopped = True
                    break
                span_jobs: list[_SpanJob] = []
                task_jobs: list[_TaskJob] = []
                n = 0
                while self._queue:
                    job = self._queue[0]
                    if isinstance(job, _SpanJob):
                        if span_jobs and n + job.batch.num_rows > self._max_per_commit:
                            break
                        n += job.batch.num_rows
                        span_jobs.append(job)
                    else:
                        task_jobs.append(job)
                    self._queue.popleft()
            if span_jobs:
                self._commit_spans(span_jobs, n)
            for task_job in task_jobs:
                self._run_task(task_job)
            self._prune_if_due()
            self._checkpoint_if_due()
        if not self.checkpoint_on_close:
            return
        try:
            self._con.execute("CHECKPOINT")
        except duckdb.Error as exc:  # pragma: no cover - reported, data is in the WAL anyway
            log.warning("checkpoint at shutdown failed: %s", exc)

    @property
    def wal_bytes(self) -> int | None:
        """Bytes in the store's write-ahead log now; None where the writer checkpoints none (a lake)."""
        if self._wal_path is None:
            return None
        try:
            return os.path.getsize(self._wal_path)
        except OSError:  # no WAL file: everything is checkpointed
            return 0

    def _checkpoint_if_due(self) -> None:
        wal = self.wal_bytes
        if wal is None or self.checkpoint_wal_bytes is None or self.fatal is not None:
            return
        if wal < self.checkpoint_wal_bytes:
            return
        started = time.perf_counter()
        if not self._read_gate.acquire(timeout=CHECKPOINT_GATE_SECONDS):
            self._checkpointed(False, started)
            return
        try:
            self._con.execute("CHECKPOINT")
        except duckdb.TransactionException as exc:  # the commits are in the WAL; try again after the next
            log.debug("checkpoint deferred: %s", str(exc)[:200])
            self._checkpointed(False, started)
        except duckdb.Error as exc:
            self._note_fatal(exc)
            log.warning("checkpoint failed (%s); will retry after the next commit", type(exc).__name__)
            self._checkpointed(False, started)
        else:
            self._checkpointed(True, started)
        finally:
            self._read_gate.release()

    def _prune_if_due(self) -> None:
        """Drop the oldest quiet, judged traces from trace_state once it holds too many (after the acks)."""
        recent = self.recent_traces
        if recent is None or not recent.due or self.fatal is not None:
            return
        try:
            recent.prune(self._con)
        except duckdb.Error as exc:
            self._note_fatal(exc)
            log.warning("pruning trace_state failed (%s); will retry after the next commit", type(exc).__name__)

    def _checkpointed(self, done: bool, started: float) -> None:
        if done:
            self.stats.checkpoints += 1
        else:
            self.stats.checkpoints_deferred += 1
        if self._on_checkpoint is not None:
            self._on_checkpoint(done, time.perf_counter() - started)

    def _commit_spans(self, jobs: list[_SpanJob], n: int) -> None:
        started = time.perf_counter()
        try:
            table = pa.concat_tables([j.batch for j in jobs]) if len(jobs) > 1 else jobs[0].batch
            inserted = self._store_spans(_drop_repeated_keys(table))
        except Exception as exc:
            self._note_fatal(exc)
            log.error("commit of %d spans to the %s failed: %s", n, self.store_noun, self._describe(exc))
            if isinstance(exc, _DATA_ERRORS):
                self._commit_one_by_one(jobs)
            else:
                self._refuse(jobs, RetryableError(
                    f"the {self.store_noun} could not commit the spans ({type(exc).__name__}); retry", 1.0))
        else:
            self._acknowledge(jobs, n, inserted, time.perf_counter() - started)
        finally:
            self.release(n)

    def _commit_one_by_one(self, jobs: list[_SpanJob]) -> None:
        """After a group commit failed on a value DuckDB would not take, commit each request alone.

        One request's bad value must not cost the others their spans: the rest are committed and
        acknowledged, and only a request that fails alone on such a value is refused, as permanent
        (the same bytes would fail the same way on every retry).
        """
        for job in jobs:
            started = time.perf_counter()
            try:
                inserted = self._store_spans(_drop_repeated_keys(job.batch))
            except _DATA_ERRORS as exc:
                log.error("a request of %d spans cannot be stored (%s); refused, the other requests of its "
                          "commit are not", job.batch.num_rows, self._describe(exc))
                job.future.set_exception(PermanentError(
                    f"the {self.store_noun} cannot store this request's spans ({type(exc).__name__}); "
                    "they were not stored, see the collector's log"))
            except Exception as exc:
                self._note_fatal(exc)
                job.future.set_exception(RetryableError(
                    f"the {self.store_noun} could not commit the spans ({type(exc).__name__}); retry", 1.0))
            else:
                self._acknowledge([job], job.batch.num_rows, inserted, time.perf_counter() - started)

    def _store_spans(self, table: pa.Table) -> int:
        """Commit ``table`` (no key twice in it); returns how many spans were new."""
        # received_at is the commit time, the same instant trace_state records: the judge can then
        # find a trace's spans by received_at >= first_received_at exactly (store.load_traces_table).
        now = utcnow()
        at = table.schema.get_field_index("received_at")
        table = table.set_column(at, table.schema.field(at), pa.repeat(pa.scalar(now, table.schema.field(at).type),
                                                                      table.num_rows))
        inserted, new_traces = self._transaction(lambda con: insert_new_spans(con, table, now))
        if self.recent_traces is not None:
            self.recent_traces.committed(now, new_traces)
        return int(inserted)

    def _transaction(self, work: WriteTask) -> Any:
        """``work(con)`` in its own transaction: committed when it returns, rolled back when it raises."""
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            result = work(con)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT leaves no transaction to roll back
                con.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _describe(exc: BaseException) -> str:
        """How a failed commit is logged: the error's type (its text may quote span content), or the file
        system's refusal, which names only a path and a reason."""
        return store_write_refused(exc) or type(exc).__name__

    def _note_fatal(self, exc: BaseException) -> None:
        """After a DuckDB FatalException the database instance refuses every statement until reopened.

        A write the file system refused (:func:`store_write_refused`: a full disk) is treated the same
        way: retried in this instance it only grows memory, while a restart replays the WAL.

        Answering "retry" forever would leave clients to drop spans once their retries run out, so
        the writer stops taking spans (``running`` turns False: ``/readyz`` answers 503) and
        ``serve`` exits non-zero: a restart replays the WAL, and nothing acknowledged is lost.
        """
        if self.fatal is not None:
            return
        refused = store_write_refused(exc)
        if refused is None and not isinstance(exc, duckdb.FatalException):
            return
        self.fatal = exc
        self.fatal_reason = refused or type(exc).__name__
        log.critical("the %s failed and must be reopened (%s); refusing spans until restart",
                     self.store_noun, self.fatal_reason)
        with self._lock:
            self._closing = True
            self._wakeup.notify_all()

    def _acknowledge(self, jobs: list[_SpanJob], n: int, inserted: int, elapsed: float) -> None:
        """After a group commit of ``n`` spans (``inserted`` of them new): count it, then answer its requests."""
        self.stats.commits += 1
        self.stats.committed_spans += inserted
        self.stats.duplicate_spans += n - inserted
        self.stats.last_commit_seconds = elapsed
        self.stats.commit_seconds_total += elapsed
        for job in jobs:
            job.future.set_result(job.batch.num_rows)
        if self._on_commit is not None:
            self._on_commit(n, n - inserted, elapsed)

    @staticmethod
    def _refuse(jobs: list[_SpanJob], error: RetryableError) -> None:
        for job in jobs:
            job.future.set_exception(error)

    def _run_task(self, job: _TaskJob) -> None:
        try:
            result = self._transaction(job.task)
        except Exception as exc:
            self._note_fatal(exc)
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)


def _wal_path(con: duckdb.DuckDBPyConnection) -> str | None:
    """The write-ahead log of the connection's current database file (None in memory)."""
    row = first_row(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return f"{row[0]}.wal" if row and row[0] else None


def insert_new_spans(con: duckdb.DuckDBPyConnection, table: pa.Table, now: Any) -> tuple[int, int]:
    """Store the rows of ``table`` not stored yet and record their traces; returns (new spans, new traces).

    This is what keeps (trace_id, span_id) unique: ``spans`` has no primary key, whose index DuckDB
    would hold whole in memory (migrations._v3). ``table`` has no key twice (``_drop_repeated_keys``).
    Only a trace ``trace_state`` already knew can have stored spans, so the upsert of ``trace_state``
    goes first and says which; spans of new traces are inserted plainly, spans of known ones through
    an anti-join over the rows received since those traces first were. Every stored span of a trace
    has ``received_at`` at or after its ``first_received_at`` (both are the commit time, and
    migration 3 lowered first_received_at where an older version had stored earlier spans);
    store.RECEIVED_MARGIN is kept as slack. Only a trace that got a new span counts as an arrival
    (see _not_an_arrival).
    """
    with registered(con, "_incoming_spans", table):
        return _insert_incoming(con, now)


def _insert_incoming(con: duckdb.DuckDBPyConnection, now: Any) -> tuple[int, int]:
    returned = con.execute(
        "INSERT INTO trace_state (trace_id, first_received_at, last_received_at, received_seq) "
        "SELECT DISTINCT trace_id, $1::TIMESTAMPTZ, $1::TIMESTAMPTZ, 1 FROM _incoming_spans "
        "ON CONFLICT (trace_id) DO UPDATE SET last_received_at = excluded.last_received_at, "
        "received_seq = trace_state.received_seq + 1 "
        "RETURNING trace_id, first_received_at, received_seq",
        [now],
    ).fetchall()
    known = [(tid, first) for tid, first, seq in returned if seq > 1]
    if not known:
        row = con.execute("INSERT INTO spans SELECT * FROM _incoming_spans").fetchone()
        _mark_pending(con, returned, now)
        return (int(row[0]) if row else 0), len(returned)
    window, since = _received_since(known, "s.received_at")
    ids = unpacked("$1")
    params: list[Any] = [packed(tid for tid, _ in known), *since]
    arrived = con.execute(
        f"INSERT INTO spans SELECT i.* FROM _incoming_spans AS i WHERE NOT (list_contains({ids}, "
        f"i.trace_id) AND EXISTS (SELECT 1 FROM spans AS s WHERE {window}list_contains({ids}, "
        "s.trace_id) AND s.trace_id = i.trace_id AND s.span_id = i.span_id)) RETURNING trace_id", params).fetchall()
    with_new_spans = {r[0] for r in arrived}
    nothing_new = [(tid, first) for tid, first in known if tid not in with_new_spans]
    if nothing_new:
        _not_an_arrival(con, nothing_new)
    _mark_pending(con, [r for r in returned if r[0] in with_new_spans], now)
    return len(arrived), len(returned) - len(known)


def _not_an_arrival(con: duckdb.DuckDBPyConnection, traces: Sequence[tuple[str, Any]]) -> None:
    """Take back the upsert's arrival for known traces whose incoming spans were all stored already.

    An exporter re-sending a batch whose ack it lost (or two members sent the same spans) brings
    nothing new: counted as an arrival, its trace was judged again, and its judgement waited another
    ``decision_wait`` for every copy (one re-sent every few seconds was never judged). Such a trace
    keeps its received_seq and its last arrival (its latest stored span's ``received_at``, the
    commit time that stamped it), and is not put back on pending_traces. Rare: a re-delivery only.
    """
    window, since = _received_since(traces, "received_at")
    con.execute(
        "UPDATE trace_state SET received_seq = trace_state.received_seq - 1, last_received_at = latest.at "
        f"FROM (SELECT trace_id, max(received_at) AS at FROM spans WHERE {window}"
        f"list_contains({unpacked('$1')}, trace_id) GROUP BY trace_id) AS latest "
        "WHERE trace_state.trace_id = latest.trace_id",
        [packed(tid for tid, _ in traces), *since])


def _received_since(traces: Sequence[tuple[str, Any]], column: str) -> tuple[str, list[Any]]:
    """The ``<column> >= $2 AND `` filter (and its parameter) that keeps a scan of ``spans`` to the row
    groups received since the earliest first arrival of ``traces`` (trace_id, first_received_at); none
    when one of them has no first arrival recorded."""
    firsts = [first for _, first in traces if first is not None]
    if not firsts or len(firsts) != len(traces):
        return "", []
    return f"{column} >= $2 AND ", [min(firsts) - RECEIVED_MARGIN]


def _mark_pending(con: duckdb.DuckDBPyConnection, returned: list[tuple[Any, ...]], now: Any) -> None:
    """Record in pending_traces the traces just committed, at their new received_seq (see migrations)."""
    if not returned:
        return
    rows = pa.table({
        "trace_id": pa.array([r[0] for r in returned], pa.string()),
        "received_seq": pa.array([r[2] for r in returned], pa.int64()),
        "first_received_at": pa.array([r[1] for r in returned], pa.timestamp("us", tz="UTC")),
    })
    with registered(con, "_committed_traces", rows):
        con.execute(
            "INSERT INTO pending_traces SELECT trace_id, received_seq, first_received_at, $1::TIMESTAMPTZ "
            "FROM _committed_traces ON CONFLICT (trace_id) DO UPDATE SET received_seq = excluded.received_seq, "
            "last_received_at = excluded.last_received_at", [now])


def _drop_repeated_keys(table: pa.Table) -> pa.Table:
    """Keep the first copy of a (trace_id, span_id) repeated inside one group commit."""
    if table.num_rows < 2:
        return table
    seen: set[tuple[str, str]] = set()
    keep: list[int] = []
    for i, key in enumerate(zip(table.column("trace_id").to_pylist(), table.column("span_id").to_pylist())):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if len(keep) == table.num_rows:
        return table
    return table.take(pa.array(keep))
