"""The operations behind the query surface, shared by the running collector and the CLI.

While ``serve`` runs it holds the only writable handle on the DuckDB file, so
every CLI command goes through ``POST /api/<op>`` on the collector's HTTP port
(loopback, bearer token when auth is set). When no collector runs, the CLI
opens the file itself and calls the very same :class:`StoreApi`. Reads use
their own cursor; writes go through ``run_write`` (the writer thread in the
collector, a plain transaction in the CLI).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import duckdb

from tracesieve.storage import candidates as candidate_store
from tracesieve.storage import store
from tracesieve.storage.errors import NotFoundError, UsageError
from tracesieve.storage.schema import utcnow
from tracesieve.storage.units import format_size

WriteRunner = Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any]


#: The largest answer the running collector builds for one ``query`` (JSON text). The answer is made whole
#: before it is sent (an open result holds back checkpoints): ``SELECT * FROM spans`` on a store of a
#: million spans was ~4.5 GB in the collector's memory, and the kernel's OOM killer takes the biggest
#: process -- the collector, with the spans it had not committed yet.
MAX_QUERY_ANSWER_BYTES = 256 * 1024 * 1024


def discovery_path(db_path: str) -> str:
    """Where a running ``serve`` publishes its query surface for the store at ``db_path``.

    Beside the store's real path: a symlink to the store, or another spelling of its path, finds
    the same collector (instead of failing on the file's lock).
    """
    return os.path.realpath(db_path) + ".serve.json"


def local_token_path(db_path: str) -> str:
    """Where a running ``serve`` keeps the query surface's local token (mode 0600) for the store at ``db_path``."""
    return os.path.realpath(db_path) + ".serve.token"


def jsonable(value: Any) -> Any:
    """Rows as the wire would carry them (datetimes as ISO text), so local and remote answers are identical."""
    return json.loads(json.dumps(value, default=_default, ensure_ascii=False))


def _encode(value: Any) -> bytes:
    """``value`` as the wire carries it: what ``json.dumps(jsonable(value))`` writes, without the round trip."""
    return json.dumps(value, default=_default, ensure_ascii=False).encode()


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return _decimal_number(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _interval_text(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def _decimal_number(value: decimal.Decimal) -> int | float | None:
    """A DECIMAL as a JSON number, as DuckDB's own JSON writes it: ``SELECT 0.5``, ``sum(price)`` on a
    DECIMAL column and ``100.0 * n`` are DECIMALs, and an operator's ``--format json`` reader (``jq``, a
    dashboard) compares numbers, not the text "0.5". Whole values stay exact integers; others are doubles
    (a DECIMAL past ~15 significant digits loses its last ones: cast it to VARCHAR to keep them)."""
    if not value.is_finite():
        return None
    exponent = value.as_tuple().exponent
    return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)


def _interval_text(value: dt.timedelta) -> str:
    """An INTERVAL as DuckDB writes it (``1 day 02:00:00``, ``00:00:00.056``, ``-00:00:01``), where ``str()``
    wrote Python's ``0:00:00.056000`` and ``-1 day, 23:59:59``: ``end_time - start_time`` and
    ``now() - last_seen`` are INTERVALs. DuckDB's Python API hands months over as 30 days, and hours past
    a day as days."""
    total = value // dt.timedelta(microseconds=1)
    sign = "-" if total < 0 else ""
    days, micros = divmod(abs(total), 86_400_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{sign}{days} day{'s' if days != 1 else ''}"] if days else []
    if hours or minutes or seconds or micros or not days:
        fraction = f".{micros:06d}".rstrip("0") if micros else ""
        parts.append(f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}")
    return " ".join(parts)


class Hangup:
    """Stops the reads of one query-surface call whose client has gone (a Ctrl-C'd runaway query):
    ``cancel()``, from any thread, interrupts every cursor the call opened and refuses it new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cancelled = False

    def track(self, cur: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._cancelled:
                raise UsageError("the client hung up")
            self._cursors.append(cur)
        return cur

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            cursors = list(self._cursors)
        for cur in cursors:
            cur.interrupt()


class StoreApi:
    def __init__(self, read_cursor: Callable[[], duckdb.DuckDBPyConnection], run_write: WriteRunner,
                 query_time_limit: float | None = None, redact_text: Callable[[str], str] | None = None) -> None:
        self._new_cursor = read_cursor
        self._run_write = run_write
        # A reviewer's reason and name go into the candidates table: sanitized first, as span text is
        # (nothing unredacted is written to disk). None: kept as typed (no pii in this store's pipeline).
        self._redact_text = redact_text or (lambda text: text)
        # In the collector an operator's SQL shares the process with ingest: a runaway join would hold a
        # core (and the CLI would give up long before it ends). None: no limit (the CLI on the file itself).
        self._query_time_limit = query_time_limit
        self._call = threading.local()  # the Hangup of the call this thread runs

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        hangup: Hangup | None = getattr(self._call, "hangup", None)
        return hangup.track(self._new_cursor()) if hangup is not None else self._new_cursor()

    def call(self, op: str, args: dict[str, Any]) -> Any:
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise UsageError(f"unknown operation {op!r}")
        return jsonable(handler(**args))

    def call_json(self, op: str, args: dict[str, Any], hangup: Hangup | None = None) -> list[bytes]:
        """``call``, answered as the query surface's body ``{"result": ...}`` (UTF-8 JSON, in pieces to send
        one after the other): the same values as ``call`` gives, encoded once. A query's rows are read and
        encoded a chunk at a time, so a big answer costs the collector about its text, not its rows as
        Python objects twice over besides. The whole answer is made before it returns (its result closed).
        ``hangup.cancel()`` stops the call's reads when its client has gone."""
        self._call.hangup = hangup
        try:
            if op != "query":
                return [_encode({"result": self.call(op, args)})]
            return self._query_pieces(**args)
        finally:
            self._call.hangup = None

    def _query_pieces(self, sql: str) -> list[bytes]:
        cursor = self._cursor()
        with self._time_limited(cursor):
            columns, chunks = store.read_query_chunks(cursor, sql)
            pieces = [b'{"result": {"columns": ' + _encode(columns) + b', "rows": [']
            size = 0
            for rows in chunks:
                pieces.append((b", " if len(pieces) > 1 else b"") + _encode([list(r) for r in rows])[1:-1])
                size += len(pieces[-1])
                if size > MAX_QUERY_ANSWER_BYTES:
                    raise UsageError(
                        f"the answer passed {format_size(MAX_QUERY_ANSWER_BYTES)}, more than the running collector "
                        "builds for one query: select fewer columns or rows (LIMIT ... OFFSET pages), or aggregate in SQL")
        pieces.append(b"]}}")
        return pieces

    @contextlib.contextmanager
    def _time_limited(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """Interrupt ``cursor``'s query once it has run ``query_time_limit``, and say so in one line."""
        limit = self._query_time_limit
        if limit is None:
            yield
            return
        fired = threading.Event()

        def interrupt() -> None:
            fired.set()
            cursor.interrupt()

        timer = threading.Timer(limit, interrupt)
        timer.daemon = True
        timer.start()
        try:
            yield
        except UsageError:
            if fired.is_set():
                raise UsageError(
                    f"query stopped after {limit:g} s, the running collector's limit (service.query_time_limit): "
                    "narrow it with WHERE or LIMIT, or run it on a copy of the store") from None
            raise
        finally:
            timer.cancel()

    # reads ------------------------------------------------------------------

    def op_query(self, sql: str) -> dict[str, Any]:
        cursor = self._cursor()
        with self._time_limited(cursor):
            columns, rows = store.run_read_query(cursor, sql)
        return {"columns": columns, "rows": [list(r) for r in rows]}

    def op_candidates(self, status: str | None = None, mode: str | None = None, severity: str | None = None,
                      since: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        since_ts = _parse_since(since)
        return candidate_store.list_candidates(self._cursor(), status=status, mode=mode, severity=severity,
                                               since=since_ts, limit=limit)

    def op_candidate(self, candidate_id: str) -> dict[str, Any]:
        row = candidate_store.get_candidate(self._cursor(), candidate_id)
        if row is None:
            raise NotFoundError(f"no candidate {candidate_id!r} (list them with `tracesieve candidates`)")
        return row

    def op_show(self, candidate_id: str) -> dict[str, Any]:
        candidate = self.op_candidate(candidate_id)
        trace_id = _source_trace(candidate)
        spans, detections = self._trace_detail(trace_id) if trace_id else ([], [])
        return {"candidate": candidate, "trace_id": trace_id, "spans": spans, "detections": detections}

    def op_report_data(self, status: str | None = None, limit: int | None = 500) -> dict[str, Any]:
        """Everything ``tracesieve report`` renders: candidates with their source trace and its detections,
        and ``total``, how many candidates match ``status`` (more than are listed when ``limit`` cut them)."""
        candidates = candidate_store.list_candidates(self._cursor(), status=status, limit=limit)
        total = candidate_store.count_candidates(self._cursor(), status)
        traces: dict[str, Any] = {}
        detections: dict[str, Any] = {}
        for c in candidates:
            trace_id = _source_trace(c)
            if trace_id and trace_id not in traces:
                traces[trace_id], detections[trace_id] = self._trace_detail(trace_id)
        return {"generated_at": utcnow().isoformat(), "candidates": candidates, "total": max(total, len(candidates)),
                "limit": limit, "traces": traces, "detections": detections}

    def _trace_detail(self, trace_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        cur = self._cursor()
        rel = cur.execute(
            "SELECT span_id, parent_span_id, name, span_kind, status_code, status_message, start_time, end_time, "
            "duration_ms, tool_name, llm_model_name FROM spans WHERE trace_id = ? ORDER BY start_time", [trace_id])
        cols = [d[0] for d in rel.description or []]
        spans = [dict(zip(cols, r)) for r in rel.fetchall()]
        rel = cur.execute(
            "SELECT detection_id, span_id, detector, failure_mode, severity, blast_radius, message, evidence, "
            "detected_at FROM detections WHERE trace_id = ? ORDER BY detected_at, detection_id", [trace_id])
        cols = [d[0] for d in rel.description or []]
        detections = [dict(zip(cols, r)) for r in rel.fetchall()]
        for d in detections:
            d["evidence"] = store_json(d.get("evidence"))
        return spans, detections

    def op_export(self, status: str | None = "promoted", ids: list[str] | None = None) -> list[dict[str, Any]]:
        if ids:  # each once, in the order given: `--id A --id A` is one dataset row, as with --cases
            return [self.op_candidate(i) for i in dict.fromkeys(ids)]
        return candidate_store.list_candidates(self._cursor(), status=status)

    # writes -----------------------------------------------------------------

    def op_mark_promoted(self, candidate_id: str, case_id: str, owner: str) -> dict[str, Any]:
        self._run_write(lambda con: candidate_store.mark_promoted(con, candidate_id, case_id, owner, utcnow()))
        return self.op_candidate(candidate_id)

    def op_mark_rejected(self, candidate_id: str, reason: str, by: str) -> dict[str, Any]:
        reason, by = self._redact_text(reason), self._redact_text(by)
        self._run_write(lambda con: candidate_store.mark_rejected(con, candidate_id, reason, by, utcnow()))
        return self.op_candidate(candidate_id)


def _source_trace(candidate: dict[str, Any]) -> str | None:
    source = candidate.get("source") or {}
    trace_ids = list(candidate.get("trace_ids") or [])
    return source.get("trace_id") or (trace_ids[0] if trace_ids else None)


def store_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


#: Days and weeks in front of a ``--since`` window (``7d``, ``2w``, ``1d12h``): how far back a reviewer looks
#: is counted in days, which config durations (Go's units, up to hours) do not spell.
_SINCE_DAYS = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(.*)\Z", re.DOTALL)


def _since_seconds(since: str) -> float:
    """Seconds of a ``--since`` duration: a config duration, optionally after weeks and days. ValueError else."""
    from tracesieve.storage.units import parse_duration

    weeks, days, rest = _SINCE_DAYS.match(since).groups()  # type: ignore[union-attr]  # matches any text
    if weeks is None and days is None:
        return parse_duration(since)
    return (int(weeks or 0) * 7 + int(days or 0)) * 86400.0 + (parse_duration(rest) if rest else 0.0)


def _parse_since(since: str | None) -> dt.datetime | None:
    if not since:
        return None
    try:
        return utcnow() - dt.timedelta(seconds=_since_seconds(since))
    except OverflowError:  # further back than any time a datetime holds: every row is within it
        return None
    except ValueError:
        pass
    try:
        ts = dt.datetime.fromisoformat(since)
    except ValueError:
        raise UsageError(f"--since {since!r}: give a duration (30m, 2h, 7d) or an ISO date (2026-11-21)") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)
