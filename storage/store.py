"""Opening the DuckDB store, read-only SQL, and the reads and writes of the trace stage.

Every function takes an open connection (or cursor); which thread may call what
is said on each. Writes are only ever run by the writer thread
(:mod:`tracesieve.storage.writer`) or by a CLI process that owns the file.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from tracesieve.storage.errors import StoreLockedError, UsageError
from tracesieve.storage.migrations import LATEST_VERSION, current_version, migrate
from tracesieve.storage.schema import Detection, JSON_SPAN_COLUMNS
from tracesieve.storage.sqlparams import first_row, packed, registered, unpacked

#: Rows per row group of tables this code creates or appends to (DuckDB's default is 122,880).
#: A checkpoint compresses the last, partly filled row group again from its start, so with LLM spans
#: of kilobytes the default re-compressed up to half a gigabyte of text at every checkpoint; with
#: 16,384 at most ~70 MB. Inserting 245k bench spans 2,048 at a time: 92 -> 68 us/span (with a
#: 64 MiB checkpoint threshold), a 15% smaller file, and finer zonemaps for the judge's
#: ``received_at`` scans. It is an attach option, not stored in the file: every open passes it.
ROW_GROUP_SIZE = 16_384


def no_store_message(path: str) -> str:
    """The one line for a store path that does not exist, with the ``serve`` command that creates it
    quoted so that it runs as pasted (a path with a space was split in two)."""
    return f"no store at {path} (start `tracesieve serve --db {shlex.quote(path)}` or pass --db)"


def open_database(path: str, *, read_only: bool = False, existing_store: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating and migrating when writable) the store at ``path``.

    The file is attached to an in-memory instance (as the catalog a plain ``duckdb.connect(path)``
    would name, the file's stem) and made the default, so that :data:`ROW_GROUP_SIZE` applies.
    With ``existing_store`` a DuckDB file without tracesieve's tables is refused, never given them
    (the CLI opens stores that ``serve`` made; an older one is still migrated when writable).

    Raises UsageError with a one-line explanation when the file is missing (read
    only), locked by another process, not a DuckDB file, (``existing_store``) not a tracesieve store, or
    (writable) a store a newer tracesieve migrated past what this one knows.
    """
    if read_only and not os.path.exists(path):
        raise UsageError(no_store_message(path))
    options = "READ_ONLY" if read_only else f"STORAGE_VERSION 'latest', ROW_GROUP_SIZE {ROW_GROUP_SIZE}"
    # Spills go next to the store, as for a plain ``duckdb.connect(path)`` (an in-memory default would
    # put them in the working directory).
    con = duckdb.connect(config={"storage_compatibility_version": "latest", "temp_directory": f"{path}.tmp"})
    try:
        con.execute(f"ATTACH {_sql_string(path)} AS {_catalog_name(path)} ({options})")
    except duckdb.IOException as exc:
        con.close()
        text = str(exc)
        if "lock" in text.lower():
            raise StoreLockedError(
                f"{path} is locked by another process (is `tracesieve serve` running on it without its "
                f"query surface? stop it or use the same --db)"
            ) from None
        raise UsageError(f"cannot open {path}: {text.splitlines()[0]}") from None
    except duckdb.Error as exc:
        con.close()
        raise UsageError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None
    con.execute(f"USE {_catalog_name(path)}")
    read_times_in_utc(con)
    if existing_store and current_version(con) == 0:
        others = _foreign_tables(con)
        con.close()
        if others:
            raise UsageError(_foreign_store(path, others))
        raise UsageError(f"{path} is not a tracesieve store: it has no tracesieve tables "
                         f"(`tracesieve serve --db {path}` creates them)")
    if not read_only:
        found = current_version(con)
        if found > LATEST_VERSION:  # its newer tables would be written as this version knows them
            con.close()
            raise UsageError(f"{path} was written by a newer tracesieve (schema version {found}; this one knows "
                             f"up to {LATEST_VERSION}): upgrade tracesieve to write to it (queries still work)")
        others = [] if found else _foreign_tables(con)
        if others:  # someone else's database: our tables would be created among theirs
            con.close()
            raise UsageError(_foreign_store(path, others))
        migrate(con)
    return con


def _foreign_store(path: str, tables: list[str]) -> str:
    listed = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    return (f"{path} is not a tracesieve store: it is a DuckDB database with other tables ({listed}); "
            "give --db a new path")


def _foreign_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables and views of the attached file (any schema), for a file that holds no tracesieve store
    (its own empty ``schema_version``, from a start that stopped before the first migration, is no other table)."""
    rows = con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND NOT (schema_name = current_schema() AND table_name = 'schema_version') "
        "UNION ALL SELECT schema_name || '.' || view_name FROM duckdb_views() "
        "WHERE database_name = current_database() AND NOT internal ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


def read_times_in_utc(con: duckdb.DuckDBPyConnection) -> None:
    """Make UTC the time zone of every cursor of ``con``'s instance.

    DuckDB prints TIMESTAMPTZ values, and computes ``date_trunc('day', ...)``, ``strftime`` and casts to
    DATE, in the session time zone, by default the process's own: ``tracesieve query`` answered in the
    collector's zone while ``serve`` ran and in the CLI's zone on the file, so the same SQL grouped the
    same store into other days depending on the path. Both paths read in UTC.
    """
    con.execute("SET GLOBAL TimeZone = 'UTC'")


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A new cursor on ``con``'s database instance, on the same default catalog.

    DuckDB does not carry ``USE`` over to cursors, and :func:`open_database` attaches the store
    next to an in-memory default. Not for concurrent use with ``con`` (it runs one query on it).
    """
    row = first_row(con, "SELECT current_database()")
    cur = con.cursor()
    if row is not None:
        cur.execute(f"USE {_quote(str(row[0]))}")
    return cur


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _catalog_name(path: str) -> str:
    """The quoted catalog name of the store: the file's stem, as ``duckdb.connect(path)`` names it."""
    stem = os.path.splitext(os.path.basename(path))[0] or "store"
    if stem.lower() in ("memory", "system", "temp", "main"):
        stem = "store"
    return _quote(stem)


#: Settings for the collector's own (long-lived, write-heavy) connection; see :func:`tune_for_ingest`.
INGEST_SETTINGS = {
    # DuckDB checkpoints every 16 MiB of WAL by default, and each checkpoint compresses the current,
    # partly filled row group again from its start. With ROW_GROUP_SIZE rows per group the insert
    # itself was fastest at 64 MiB (245k spans inserted 2,048 at a time: 68 / 69 / 77 us/span at
    # 64 / 128 / 256 MiB), but until a checkpoint the appended rows stay in memory, uncompressed:
    # bench/ingest.py (default pipeline, 100k spans) peaked at 878 / 776 / 760 MB of RSS with
    # 64 / 32 / 16 MiB, for 348 / 362 / 374 us/span of server CPU. 32 MiB is the middle: the writer
    # checkpoints there itself, after acknowledging (GroupCommitWriter.checkpoint_wal_bytes); DuckDB's
    # own checkpoint, inside a COMMIT, is the backstop should that ever fall behind.
    "checkpoint_threshold": "128MiB",
    # One thread: a commit of a few thousand spans gains nothing from a second thread but pays for
    # the hand-off, and the collector's span workers already keep both cores busy.
    "threads": 1,
    # No vacuum at checkpoints. DuckDB merges a table's partly filled row groups at each checkpoint,
    # unless the table has a key index; ``spans`` has none (migrations._v3), and the writer's
    # checkpoint every few thousand spans then rewrote them again and again: 133-152 us of writer CPU
    # a span against 66-73 without vacuum (86-94 with the old key), and 140 MB more at the peak
    # (README, Performance). The collector never deletes spans, so vacuum has nothing else to reclaim.
    "max_vacuum_tasks": 0,
    # DuckDB would otherwise cache up to 80% of RAM; the collector's budget is a few hundred MB in all.
    "memory_limit": "256MiB",
}


def tune_for_ingest(con: duckdb.DuckDBPyConnection) -> None:
    """Apply :data:`INGEST_SETTINGS` to the collector's database instance (CLI processes keep the defaults)."""
    for name, value in INGEST_SETTINGS.items():
        con.execute(f"SET {name} = '{value}'")


def latest_received_at(con: duckdb.DuckDBPyConnection) -> dt.datetime | None:
    """The latest commit time the store holds (its last span's), which the collector's clock must not go behind."""
    row = first_row(con, "SELECT max(last_received_at) FROM trace_state")
    return row[0] if row else None


def forbid_file_access(con: duckdb.DuckDBPyConnection) -> None:
    """Stop SQL on this database from reading or writing other files (read_csv, COPY, ATTACH...).

    The running collector answers queries for other processes; they may read the store, not the
    collector's file system. Irreversible for the database instance, which needs nothing else.
    """
    con.execute("SET enable_external_access = false")


def check_read_only(sql: str) -> None:
    """Raise UsageError unless ``sql`` is exactly one read statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN...).

    ``EXPLAIN [ANALYZE]`` is a read only when the statement it explains is one: EXPLAIN ANALYZE runs it.
    A read may not call a function that changes something (:data:`_WRITING_FUNCTIONS`), and the SQL
    text given to ``query('...')`` is checked the same way. Pure; any thread.
    """
    statement = _one_statement(sql)
    if statement.type == duckdb.StatementType.EXPLAIN:
        statement = _explained(sql, statement)
    if statement.type != duckdb.StatementType.SELECT:
        name = getattr(statement.type, "name", str(statement.type))
        article = "an" if name[:1] in "AEIOU" else "a"
        raise UsageError(f"only read statements are allowed (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN); "
                         f"refused {article} {name} statement")
    _check_functions(statement.query)


#: Functions that a SELECT may call but that write or change settings: a checkpoint, sequences, the
#: session's random seed, logging and profiling switches, SQL run from a serialized plan, and the
#: maintenance and pass-through functions of the ducklake / postgres / mysql extensions.
_WRITING_FUNCTIONS = frozenset({
    "checkpoint", "force_checkpoint", "nextval", "setseed", "enable_logging", "disable_logging",
    "truncate_duckdb_logs", "enable_profiling", "disable_profiling", "json_execute_serialized_sql",
    "postgres_execute", "postgres_query", "mysql_execute", "mysql_query",
    "ducklake_expire_snapshots", "ducklake_merge_adjacent_files", "ducklake_cleanup_old_files",
    "ducklake_delete_orphaned_files", "ducklake_flush_inlined_data", "ducklake_rewrite_data_files",
    "ducklake_add_data_files", "ducklake_set_option", "ducklake_set_commit_message",
})


def _one_statement(sql: str) -> Any:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UsageError(f"cannot parse the SQL: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise UsageError("no SQL statement given")
    if len(statements) > 1:
        if any(not statement.query for statement in statements):
            # Statements DuckDB made itself carry no text: a PIVOT without an IN list becomes a CREATE TYPE
            # (an enum of the values found) plus the query, and "only one statement" named no mistake.
            raise UsageError("a PIVOT without an IN list is refused: DuckDB runs it as a CREATE TYPE plus the "
                             "query; name the values instead: PIVOT ... ON column IN ('a', 'b') USING ...")
        raise UsageError("only one statement per query is allowed")
    return statements[0]


def _explained(sql: str, explain: Any) -> Any:
    """The statement an ``EXPLAIN [ANALYZE] [(options)]`` statement explains (parsed alone)."""
    text = explain.query or sql
    tokens = duckdb.tokenize(text)
    i = 1  # tokens[0] is EXPLAIN (comments are not tokens)
    if i < len(tokens) and _token_text(text, tokens, i).upper() in ("ANALYZE", "ANALYSE"):
        i += 1
    starts = [tokens[i][0]] if i < len(tokens) else []
    if i < len(tokens) and _token_text(text, tokens, i) == "(":  # an option list, or a parenthesised query
        depth = 0
        for j in range(i, len(tokens)):
            token = _token_text(text, tokens, j)
            depth += token == "("
            depth -= token == ")"
            if depth == 0:
                if j + 1 < len(tokens):
                    starts.append(tokens[j + 1][0])
                break
    for start in starts:
        try:
            statements = duckdb.extract_statements(text[start:])
        except duckdb.Error:
            continue
        if len(statements) == 1:
            return statements[0]
    raise UsageError("cannot tell which statement the EXPLAIN explains; refused")


def _token_text(text: str, tokens: list[Any], i: int) -> str:
    end = tokens[i + 1][0] if i + 1 < len(tokens) else len(text)
    return text[tokens[i][0]:end].strip()


def _check_functions(sql: str) -> None:
    """Refuse a read that calls one of :data:`_WRITING_FUNCTIONS` (or ``query()`` on SQL that does)."""
    tree = orjson.loads(_serialized(sql))
    if tree.get("error"):
        raise UsageError(f"cannot check the SQL: {tree.get('error_message') or 'not a plain read'}")
    for node in _function_calls(tree):
        name = str(node.get("function_name") or "").lower()
        if name in _WRITING_FUNCTIONS:
            raise UsageError(f"only read statements are allowed; refused a call of {name}(), which changes the store "
                             "or its settings")
        if name == "query":
            args = node.get("children") or []
            inner = args[0].get("value") if args and args[0].get("class") == "CONSTANT" else None
            if not isinstance(inner, dict) or not isinstance(inner.get("value"), str):
                raise UsageError("query() needs its SQL as a plain string literal here")
            check_read_only(inner["value"])


_parser: duckdb.DuckDBPyConnection | None = None
_parser_lock = threading.Lock()


def _serialized(sql: str) -> str:
    """DuckDB's parse tree of a SELECT as JSON, from one in-memory instance kept for it (opening one costs ~10 ms)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect()
        row = _parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    return str(row[0]) if row else "{}"


def _function_calls(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        if "function_name" in node:
            yield node
        for value in node.values():
            yield from _function_calls(value)
    elif isinstance(node, list):
        for value in node:
            yield from _function_calls(value)


def run_read_query(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Check and run one read statement; returns (column names, rows). Any thread, own cursor.

    Column names are unique (a repeated one gets ``_1``, as DuckDB names them in a subquery), so that a
    row read as an object keeps every column: ``SELECT s.span_id, d.span_id`` gives span_id, span_id_1.
    """
    check_read_only(sql)
    try:
        rel = con.execute(sql, list(params)) if params else con.execute(sql)
        columns = _unique_names([d[0] for d in rel.description or []])
        rows = rel.fetchall()
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {_query_error(exc)}") from None
    return columns, rows


def read_query_chunks(
    con: duckdb.DuckDBPyConnection, sql: str, chunk_rows: int = 10_000
) -> tuple[list[str], Iterator[list[tuple[Any, ...]]]]:
    """``run_read_query`` a chunk of rows at a time: (column names, chunks). The result stays open until
    the chunks are consumed (read them at once: an open result holds back checkpoints). Any thread, own cursor."""
    check_read_only(sql)
    try:
        rel = con.execute(sql)
        columns = _unique_names([d[0] for d in rel.description or []])
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {_query_error(exc)}") from None

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        while True:
            try:
                rows = rel.fetchmany(chunk_rows)
            except duckdb.Error as exc:
                raise UsageError(f"query failed: {_query_error(exc)}") from None
            if not rows:
                return
            yield rows

    return columns, chunks()


def _query_error(exc: duckdb.Error) -> str:
    """The line of a DuckDB error that says what went wrong. An error met while the rows are fetched reads
    "Attempting to execute an unsuccessful or closed pending query result" and gives the cause below it."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    if "unsuccessful or closed pending query result" in lines[0]:
        cause = next((line for line in lines[1:] if line.startswith("Error: ")), None)
        if cause:
            return cause[len("Error: "):]
    return lines[0]


def _unique_names(names: list[str]) -> list[str]:
    used: set[str] = set()
    out = []
    for name in names:
        unique, k = name, 0
        while unique in used:
            k += 1
            unique = f"{name}_{k}"
        used.add(unique)
        out.append(unique)
    return out


def rows_as_dicts(columns: list[str], rows: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row)) for row in rows]


# --------------------------------------------------------------------------- trace stage


def settled_traces(
    con: duckdb.DuckDBPyConnection, quiet_since: dt.datetime | None, limit: int
) -> list[tuple[str, int, dt.datetime | None]]:
    """(trace_id, received_seq, first_received_at) of traces not judged at their latest version and quiet
    since ``quiet_since``. ``quiet_since=None`` returns every unjudged trace (shutdown, crash recovery).
    """
    sql = "SELECT trace_id, received_seq, first_received_at FROM pending_traces"
    params: list[Any] = []
    if quiet_since is not None:
        sql += " WHERE last_received_at <= ?"
        params.append(quiet_since)
    sql += " ORDER BY last_received_at LIMIT ?"
    params.append(limit)
    return [(r[0], int(r[1]), r[2]) for r in con.execute(sql, params).fetchall()]


def settled_backlog_seconds(con: duckdb.DuckDBPyConnection, quiet_since: dt.datetime) -> float:
    """How long the oldest trace that is settled (quiet since ``quiet_since``) but not judged has been waiting.

    0.0 when every settled trace is judged: the trace stage is caught up.
    """
    row = first_row(con, "SELECT min(last_received_at) FROM pending_traces WHERE last_received_at <= ?",
                    [quiet_since])
    return backlog_seconds(row[0] if row else None, quiet_since)


def backlog_seconds(oldest: dt.datetime | None, quiet_since: dt.datetime) -> float:
    return 0.0 if oldest is None else max(0.0, (quiet_since - oldest).total_seconds())


def count_unjudged(con: duckdb.DuckDBPyConnection) -> int:
    row = first_row(con, "SELECT count(*) FROM pending_traces")
    return int(row[0]) if row else 0


#: The writer stamps ``received_at`` with the commit time that trace_state records, so no margin is
#: needed for new rows; stores written before that stamped it at decode, up to the 30 s an export
#: waits for its commit earlier. The judge's scan covers this much more than the traces' own window.
RECEIVED_MARGIN = dt.timedelta(seconds=30)
#: On a lake, spans of one trace are stamped by several collectors, each at decode, on its own clock.
LAKE_RECEIVED_MARGIN = dt.timedelta(minutes=5)
#: Rows per Arrow batch of the judge's reads. DuckDB reserves every column's buffers for a whole
#: batch up front, and its default batch is a million rows: for a round of ~2,000 spans that was
#: ~500 MB allocated and freed per read (memray: 50 GB in a 52 s overload run, more than anything
#: else in the collector). With 8,192 rows: ~50 MB, and the read took 34 ms instead of 46.
ARROW_BATCH_ROWS = 8192


def load_traces_table(
    con: duckdb.DuckDBPyConnection, trace_ids: Sequence[str], received_since: dt.datetime | None = None,
    margin: dt.timedelta = RECEIVED_MARGIN,
) -> pa.Table:
    """The spans rows of the given traces as one Arrow table (JSON columns still text).

    ``received_since`` (the earliest first_received_at of those traces) lets DuckDB skip every older
    row group instead of scanning the whole table on each judge round.
    """
    # list_contains is a filter DuckDB evaluates inside the scan, so the wide columns are read only
    # around matching rows; ``IN (SELECT unnest(?))`` is a join after a full-width scan (3x the CPU).
    sql = f"SELECT * FROM spans WHERE list_contains({unpacked('?')}, trace_id)"
    params: list[Any] = [packed(trace_ids)]
    if received_since is not None:
        sql += " AND received_at >= ?"
        params.append(received_since - margin)
    # Unordered: sorting whole rows (LLM spans are kilobytes) in DuckDB cost more than sorting each
    # trace's few spans in traces_from_table.
    table: pa.Table = con.execute(sql, params).to_arrow_table(ARROW_BATCH_ROWS)
    return table


def traces_from_table(table: pa.Table, trace_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """SpanRow dicts grouped by trace (JSON columns parsed), each trace by start_time (unset first), then
    in table order (see _span_order).

    A trace's spans mostly carry the same resource, links and events text (``{...}``, ``[]``): each
    distinct text is parsed once per call and its value shared by those spans, so callers must treat
    the parsed JSON as read-only. That was ~14 of the ~42 us a span this function cost (39-45 -> 27-29).
    """
    out: dict[str, list[dict[str, Any]]] = {tid: [] for tid in trace_ids}
    json_columns = [c for c in table.column_names if c in JSON_SPAN_COLUMNS]
    parsed: dict[str, Any] = {}
    time_columns = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
    times = {c: utc_datetimes(table.column(c)) for c in time_columns}
    for i, span in enumerate(table.drop_columns(time_columns).to_pylist()):
        for c in time_columns:
            span[c] = times[c][i]
        for c in json_columns:
            value = span[c]
            if value is None:
                continue
            if c != "attributes":  # attributes are nearly always distinct: hashing them would not pay
                known = parsed.get(value, _UNPARSED)
                if known is not _UNPARSED:
                    span[c] = known
                    continue
            try:
                span[c] = orjson.loads(value)
            except ValueError:  # orjson.JSONDecodeError is a ValueError: the text stays as it is
                span[c] = value
            if c != "attributes":
                parsed[value] = span[c]
        out.setdefault(span["trace_id"], []).append(span)
    for spans in out.values():
        spans.sort(key=_span_order)
    return out


_UNPARSED = object()


def _span_order(span: dict[str, Any]) -> tuple[bool, dt.datetime]:
    """Spans that start together keep the order they were stored in (a stable sort over the scan,
    which DuckDB returns in insertion order): the order they were received, which for one SDK is the
    order they ended. The JS SDK stamps starts in whole milliseconds, so tools run back to back share
    a start, and their ends (that start plus a measured duration) do not order them either; the span
    id, the tie-breaker before, is random."""
    start = span.get("start_time")
    return (start is not None, start or _EPOCH)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def utc_datetimes(column: pa.ChunkedArray) -> list[dt.datetime | None]:
    """Aware UTC datetimes of a timestamp column; about 6x faster than Arrow's per-value zone lookup."""
    unit = column.type.unit
    per_us = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0}[unit]
    values = column.cast(pa.int64()).to_pylist()
    if per_us:
        return [None if v is None else _EPOCH + dt.timedelta(microseconds=v * per_us) for v in values]
    return [None if v is None else _EPOCH + dt.timedelta(microseconds=v // 1000) for v in values]


def load_traces(
    con: duckdb.DuckDBPyConnection, trace_ids: Sequence[str], received_since: dt.datetime | None = None,
    margin: dt.timedelta = RECEIVED_MARGIN,
) -> dict[str, list[dict[str, Any]]]:
    """Spans of the given traces as SpanRow dicts (JSON columns parsed), each trace sorted by start_time."""
    if not trace_ids:
        return {}
    return traces_from_table(load_traces_table(con, trace_ids, received_since, margin), trace_ids)


def save_detections(
    con: duckdb.DuckDBPyConnection, trace_ids: Sequence[str], detections: Sequence[Detection], now: dt.datetime,
    received_since: dt.datetime | None = None,
) -> None:
    """Make the stored detections of ``trace_ids`` equal to ``detections`` (writer thread, in a transaction).

    Detections already stored keep their detection_id and detected_at, so judging
    a trace again never duplicates a finding.

    ``received_since`` (the earliest first_received_at of those traces) bounds the search for
    their stored detections: a trace is judged only after its first spans were committed, so
    each of its detections was made later (less store.RECEIVED_MARGIN, for a clock stepped
    back), and DuckDB skips the older row groups. Unbounded, the delete scanned the whole table:
    7 ms a judge round at 100,000 detections, 45 ms at a million.
    """
    ids = [d.detection_id for d in detections]
    # The same bound for the delete, the update and the anti-join below: detections has no key
    # (migrations._v4), so these three statements are what keep detection_id unique.
    since = [received_since - RECEIVED_MARGIN] if received_since is not None else []
    window = " AND detections.detected_at >= ?" if since else ""
    # Feedback another trace carried (linked_feedback) is that trace's to keep or replace, not this one's.
    con.execute(
        f"DELETE FROM detections WHERE trace_id IN (SELECT unnest({unpacked('?')})) "
        f"AND detection_id NOT IN (SELECT unnest({unpacked('?')})){window} "
        f"AND json_extract_string(evidence, '$.{CARRIER_TRACE_KEY}') IS NULL",
        [packed(trace_ids), packed(ids), *since],
    )
    if not detections:
        return
    # One Arrow batch, not executemany: DuckDB runs executemany as one statement per row.
    columns = ("detection_id", "trace_id", "span_id", "detector", "failure_mode", "severity", "blast_radius",
               "message", "evidence", "detected_at")
    # One row per detection_id (the last, as row-by-row upserts would leave it): a single INSERT may
    # not touch one key twice.
    rows = list({d.detection_id: d.as_row(now) for d in detections}.values())
    incoming = pa.table({c: pa.array([r[c] for r in rows], type=pa.timestamp("us", tz="UTC")
                                     if c == "detected_at" else pa.string()) for c in columns})
    # A detection already stored is updated in place, the others inserted.
    with registered(con, "_incoming_detections", incoming):
        con.execute(
            "UPDATE detections SET message = i.message, evidence = i.evidence, severity = i.severity, "
            f"blast_radius = i.blast_radius FROM _incoming_detections AS i WHERE detections.detection_id = "
            f"i.detection_id{window}", since)
        con.execute(
            f"INSERT INTO detections ({', '.join(columns)}) SELECT {', '.join(columns)} FROM _incoming_detections "
            f"AS i WHERE NOT EXISTS (SELECT 1 FROM detections WHERE detections.detection_id = i.detection_id"
            f"{window})", since)


#: Evidence key of a detection moved onto the trace it judges from the trace that carried the feedback.
CARRIER_TRACE_KEY = "carrier_trace_id"


def linked_feedback(con: duckdb.DuckDBPyConnection, trace_ids: Sequence[str],
                    received_since: dt.datetime | None = None,
                    margin: dt.timedelta = RECEIVED_MARGIN) -> list[Detection]:
    """The stored detections of ``trace_ids`` that feedback sent later, in a trace of its own, put there.

    A trace judged again finds only its own spans' findings: these are added to them, so the
    judgement keeps their candidate (see save_detections, which never deletes them for the trace
    they judge). ``received_since`` bounds the scan as in save_detections: they were made after
    the trace's first spans were stored.
    """
    if not trace_ids:
        return []
    sql = (f"SELECT trace_id, span_id, detector, failure_mode, severity, blast_radius, message, evidence "
           f"FROM detections WHERE list_contains({unpacked('?')}, trace_id) "
           f"AND json_extract_string(evidence, '$.{CARRIER_TRACE_KEY}') IS NOT NULL")
    params: list[Any] = [packed(trace_ids)]
    if received_since is not None:
        sql += " AND detected_at >= ?"
        params.append(received_since - margin)
    out = []
    for trace_id, span_id, detector, mode, severity, blast, message, evidence in con.execute(sql, params).fetchall():
        try:
            parsed = orjson.loads(evidence) if isinstance(evidence, str) else evidence
        except ValueError:
            continue
        if isinstance(parsed, dict):
            out.append(Detection(trace_id, span_id, detector, mode, severity, blast, message, parsed))
    return out


#: How long before its conversation feedback may arrive and still be moved onto it: the exporters' retries
#: through a collector restart or an outage take minutes. Bounds the judge's scan of detections.
STRANDED_FEEDBACK_WINDOW = dt.timedelta(hours=1)


def requeue_stranded_feedback(con: duckdb.DuckDBPyConnection, trace_ids: Sequence[str],
                              received_since: dt.datetime | None = None) -> int:
    """Put back on pending_traces the carrier traces whose feedback targets ``trace_ids`` but stayed with them.

    Feedback is moved onto the trace it links to only when the store holds that trace (see
    Judge._linked_feedback). When it arrives first (the agent's exporter retries through a
    collector restart while the feedback service's gets through, or simply flushes later), the
    carrier is judged alone and its finding is filed under the carrier: the thumbs-down names a
    span of another trace, and its candidate holds the carrier's empty input, so every such
    feedback became one candidate nobody could replay. Once the target is judged, its carriers are
    judged again (at once: they are long settled), which moves the finding onto it. Writer thread,
    in the transaction that saves the target's judgement. Returns how many carriers were put back.

    ``received_since`` (the earliest first_received_at of ``trace_ids``) bounds the scan to the
    detections made from STRANDED_FEEDBACK_WINDOW before it, so DuckDB skips the older row groups:
    unbounded, it cost 34 ms a judge round at a million detections.
    """
    if not trace_ids:
        return 0
    window = "AND detected_at >= $2 " if received_since is not None else ""
    stranded = (
        f"SELECT DISTINCT trace_id FROM detections WHERE failure_mode = 'negative_feedback' {window}"
        f"AND json_extract_string(evidence, '$.{CARRIER_TRACE_KEY}') IS NULL "
        f"AND list_contains({unpacked('$1')}, json_extract_string(evidence, '$.target.trace_id')) "
        f"AND NOT list_contains({unpacked('$1')}, trace_id)")
    params: list[Any] = [packed(trace_ids)]
    if received_since is not None:
        params.append(received_since - STRANDED_FEEDBACK_WINDOW)
    rows = con.execute(
        "INSERT INTO pending_traces SELECT trace_id, received_seq, first_received_at, last_received_at "
        f"FROM trace_state WHERE trace_id IN ({stranded}) ON CONFLICT (trace_id) DO NOTHING RETURNING trace_id",
        params).fetchall()
    return len(rows)


def judged_before(con: duckdb.DuckDBPyConnection, due: Sequence[tuple[str, int, Any]]) -> list[str]:
    """Which of the ``due`` traces (as :func:`settled_traces` returns them) a judgement was already saved for.

    Writer thread, in its transaction, before :func:`mark_judged`. Bounded by the traces'
    first_received_at like :func:`mark_judged`, so DuckDB skips the older row groups of trace_state.
    """
    if not due:
        return []
    firsts = [d[2] for d in due if d[2] is not None]
    bounded = len(firsts) == len(due)
    rows = con.execute(
        f"SELECT trace_id FROM trace_state WHERE list_contains({unpacked('$1')}, trace_id) AND judged_seq IS NOT NULL"
        + (" AND first_received_at >= $2" if bounded else ""),
        [packed(d[0] for d in due)] + ([min(firsts)] if bounded else []),
    ).fetchall()
    return [str(r[0]) for r in rows]


def mark_judged(con: duckdb.DuckDBPyConnection, judged: Sequence[tuple[str, int, Any]], now: dt.datetime) -> None:
    """Record that each trace was judged at the given received_seq, never moving it backwards (writer thread).

    Also what a lake runs: there two collectors may judge one trace at different versions.

    ``judged`` carries each trace's first_received_at as ``settled_traces`` read it, and a trace's
    first_received_at never changes: bounding the scan by the earliest one lets DuckDB skip every
    older row group of trace_state (a row per trace ever received). Unbounded, the join scanned it
    all: 4.6 ms a round at 100,000 traces, 30 ms at a million; bounded, 1.3-1.6 ms at both.
    """
    if not judged:
        return
    firsts = [j[2] for j in judged if j[2] is not None]
    bounded = len(firsts) == len(judged)
    con.execute(
        "UPDATE trace_state SET judged_seq = j.seq, judged_at = $1 "
        f"FROM (SELECT unnest({unpacked('$2')}) AS tid, unnest({unpacked('$3', 'BIGINT')}) AS seq) AS j "
        "WHERE trace_state.trace_id = j.tid AND coalesce(trace_state.judged_seq, 0) < j.seq"
        + (" AND trace_state.first_received_at >= $4" if bounded else ""),
        [now, packed(j[0] for j in judged), packed(j[1] for j in judged)] + ([min(firsts)] if bounded else []),
    )


def mark_judged_pending(con: duckdb.DuckDBPyConnection, judged: Sequence[tuple[str, int, Any]],
                        now: dt.datetime) -> None:
    """:func:`mark_judged` on a file store: also take the traces off pending_traces, unless a commit
    after the judged version put them back (writer thread, in its transaction)."""
    mark_judged(con, judged, now)
    if not judged:
        return
    con.execute(
        f"DELETE FROM pending_traces USING (SELECT unnest({unpacked('$1')}) AS tid, "
        f"unnest({unpacked('$2', 'BIGINT')}) AS seq) AS j "
        "WHERE pending_traces.trace_id = j.tid AND pending_traces.received_seq <= j.seq",
        [packed(j[0] for j in judged), packed(j[1] for j in judged)],
    )
