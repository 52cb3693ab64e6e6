"""The group-commit writer stores each (trace_id, span_id) once, whichever insert path it takes, and
checkpoints its WAL itself after acknowledging."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import duckdb
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tracesieve.collector.metrics import Metrics
from tracesieve.storage import schema, stats, store
from tracesieve.storage.errors import PermanentError
from tracesieve.storage.schema import SPAN_SCHEMA, Detection
from tracesieve.storage.writer import GroupCommitWriter


def _tid(trace: int) -> str:
    return f"{trace:032x}"


def _spans(trace: int, span_ids: range, payload: str = "x") -> pa.Table:
    n = len(span_ids)
    cols = {f.name: pa.nulls(n, f.type) for f in SPAN_SCHEMA}
    cols["trace_id"] = pa.array([_tid(trace)] * n)
    cols["span_id"] = pa.array([f"{i:016x}" for i in span_ids])
    cols["name"] = pa.array([f"{payload}-{i}" for i in span_ids])
    return pa.table(cols, schema=SPAN_SCHEMA)


def _open(tmp_path) -> tuple[duckdb.DuckDBPyConnection, GroupCommitWriter]:
    """A fresh store and its writer (close the writer before reading what it committed)."""
    con = store.open_database(str(tmp_path / "w.duckdb"))
    return con, GroupCommitWriter(con)


def _write(writer: GroupCommitWriter, batch: pa.Table) -> int:
    writer.reserve(batch.num_rows)
    return writer.submit_spans(batch, batch.num_rows).result(timeout=30)


def _stored(con, trace: int) -> list[tuple[str, str]]:
    return con.execute("SELECT span_id, name FROM spans WHERE trace_id = ? ORDER BY span_id",
                       [_tid(trace)]).fetchall()


def test_a_request_the_store_cannot_take_is_refused_alone_and_its_commit_partners_are_stored(tmp_path):
    con, writer = _open(tmp_path)
    good_a, good_b = _spans(1, range(1, 4)), _spans(3, range(1, 3))
    bad = _spans(2, range(1, 3))
    bad = bad.set_column(bad.schema.get_field_index("attributes"), "attributes",
                         pa.array(['{"card": <CARD>}', "{}"], pa.string()))  # not JSON: DuckDB refuses it
    gate = threading.Event()
    held = writer.submit_task(lambda _con: gate.wait(30))  # keeps the writer busy: the three commit as a group
    futures = []
    for batch in (good_a, bad, good_b):
        writer.reserve(batch.num_rows)
        futures.append(writer.submit_spans(batch, batch.num_rows))
    gate.set()
    held.result(timeout=30)
    assert futures[0].result(timeout=30) == 3
    with pytest.raises(PermanentError, match="cannot store this request"):
        futures[1].result(timeout=30)
    assert futures[2].result(timeout=30) == 2
    writer.close()
    assert len(_stored(con, 1)) == 3 and len(_stored(con, 3)) == 2 and _stored(con, 2) == []


def test_redelivered_and_overlapping_spans_are_stored_once(tmp_path):
    con, writer = _open(tmp_path)
    try:
        _write(writer, _spans(1, range(0, 4), "first"))
        _write(writer, _spans(1, range(2, 6), "second"))   # known trace: 2 and 3 again, 4 and 5 new
        _write(writer, _spans(2, range(0, 3), "new"))      # new trace: plain insert
        _write(writer, _spans(1, range(0, 6), "third"))    # all six again
    finally:
        writer.close()
    rows = _stored(con, 1)
    assert [r[0] for r in rows] == [f"{i:016x}" for i in range(6)]
    # the first copy stays
    assert [r[1] for r in rows] == ["first-0", "first-1", "first-2", "first-3", "second-4", "second-5"]
    assert len(_stored(con, 2)) == 3
    assert writer.stats.committed_spans == 4 + 2 + 3
    assert writer.stats.duplicate_spans == 2 + 6
    seq = con.execute("SELECT received_seq FROM trace_state WHERE trace_id = ?", [_tid(1)]).fetchone()
    assert seq == (2,)  # the third batch, all stored already, is no arrival: the trace is not judged again
    con.close()



class SteppedWall:
    """A system clock an operator (or NTP) can step: the wall time CommitClock reads."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now


def test_a_wall_clock_stepped_back_neither_runs_the_commit_clock_backwards_nor_stalls_it():
    wall, ticks = SteppedWall(), iter(float(t) for t in range(0, 1000, 10))
    clock = schema.CommitClock(wall, monotonic=lambda: next(ticks))
    first = clock.now()                                   # tick 0
    wall.now -= dt.timedelta(seconds=60)                  # stepped back a minute, 10 s later
    readings = [clock.now() for _ in range(12)]           # ticks 10..120
    assert readings == sorted(readings) and readings[0] > first
    assert readings[0] - first == dt.timedelta(seconds=5)  # half the monotonic rate until the wall catches up
    wall.now += dt.timedelta(seconds=200)
    assert clock.now() == wall.now                         # then the wall clock again
    clock.not_before(wall.now + dt.timedelta(hours=1))     # a store written by a clock an hour ahead
    assert clock.now() >= wall.now + dt.timedelta(hours=1)


def test_a_span_stored_after_the_clock_stepped_back_is_still_stored_once(tmp_path, monkeypatch):
    """The anti-join looks for stored copies received since the trace's first arrival (30 s slack)."""
    wall = SteppedWall()
    monkeypatch.setattr(schema, "CLOCK", schema.CommitClock(wall))
    con, writer = _open(tmp_path)
    try:
        _write(writer, _spans(1, range(0, 2), "first"))
        wall.now -= dt.timedelta(minutes=10)
        _write(writer, _spans(1, range(2, 4), "after the step"))
        _write(writer, _spans(1, range(0, 4), "redelivered"))
    finally:
        writer.close()
    assert [r[1] for r in _stored(con, 1)] == ["first-0", "first-1", "after the step-2", "after the step-3"]
    assert writer.stats.duplicate_spans == 4
    received = con.execute("SELECT received_at FROM spans ORDER BY span_id").fetchall()
    assert received == sorted(received)
    assert store.latest_received_at(con) >= received[-1][0]  # the redelivery, all duplicates, counts as received
    con.close()

def _finding(trace: int, span_id: str, message: str) -> Detection:
    return Detection(_tid(trace), span_id, "tool_error", "tool_invocation", "P1", "internal_visible", message, {})


def _save_detections(writer: GroupCommitWriter, trace_ids: list[str], detections: list[Detection],
                     since: dt.datetime) -> None:
    """What the judge's write of a round does with its findings, on the writer thread."""
    now = dt.datetime.now(dt.timezone.utc)
    writer.submit_task(lambda c: store.save_detections(c, trace_ids, detections, now, since)).result(timeout=30)


def _old_store(path: str, version: int = 2) -> duckdb.DuckDBPyConnection:
    """A store as an older version of the schema left it: the migrations up to ``version`` only."""
    from tracesieve.storage import migrations

    old = duckdb.connect(path)
    old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description VARCHAR, "
                "applied_at TIMESTAMPTZ DEFAULT now())")
    for number, description, step in migrations.MIGRATIONS[:version]:
        step(old)
        old.execute("INSERT INTO schema_version (version, description) VALUES (?, ?)", [number, description])
    return old


def test_a_copy_stored_before_its_traces_first_arrival_is_still_not_stored_twice(tmp_path):
    # An older version stored received_at as the receiving instant, before trace_state's
    # first_received_at; the writer's anti-join reads only from first_received_at on, and no
    # primary key catches what it misses. Migration 3 lowers first_received_at to the earliest span.
    path = str(tmp_path / "old.duckdb")
    old = _old_store(path)
    old.execute("INSERT INTO spans (trace_id, span_id, name, received_at) VALUES "
                f"('{_tid(7)}', '{0:016x}', 'old-0', TIMESTAMPTZ '2020-01-01'), "
                f"('{_tid(7)}', '{1:016x}', 'old-1', TIMESTAMPTZ '2020-01-01')")
    old.execute(f"INSERT INTO trace_state VALUES ('{_tid(7)}', now(), now(), 1, 1, now())")
    old.close()
    con = store.open_database(path)
    writer = GroupCommitWriter(con)
    try:
        assert _write(writer, _spans(7, range(0, 4), "again")) == 4
    finally:
        writer.close()
    assert [r[1] for r in _stored(con, 7)] == ["old-0", "old-1", "again-2", "again-3"]
    assert writer.stats.duplicate_spans == 2
    con.close()


def test_a_store_with_the_spans_key_is_rebuilt_without_it_and_keeps_every_span(tmp_path, caplog):
    path = str(tmp_path / "old.duckdb")
    old = _old_store(path)
    old.execute("INSERT INTO spans (trace_id, span_id, name, received_at) SELECT lpad(to_hex(i // 4), 32, '0'), "
                "lpad(to_hex(i), 16, '0'), 'old', now() FROM range(1000) AS r(i)")
    columns = [r[0] for r in old.execute("DESCRIBE spans").fetchall()]
    old.close()
    with caplog.at_level("INFO", logger="tracesieve.store"):
        con = store.open_database(path)
    assert "copying 1000 spans into a table without a primary key" in caplog.text
    assert con.execute("SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans").fetchone() == (1000, 1000)
    assert [r[0] for r in con.execute("DESCRIBE spans").fetchall()] == [*columns, "scope_attributes"]  # + migration 5
    assert _key_constraints(con, "spans") == []
    con.close()


def _key_constraints(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = ? AND constraint_type IN "
        "('PRIMARY KEY', 'UNIQUE')", [table]).fetchall()]


def test_a_store_too_big_for_a_key_index_in_memory_still_takes_commits(tmp_path):
    # With the spans primary key, DuckDB loads the key's whole index into memory at the first commit
    # (~85 bytes a span) and counts it against memory_limit: past that, every commit failed.
    path = str(tmp_path / "big.duckdb")
    con = store.open_database(path)
    con.execute("INSERT INTO spans (trace_id, span_id, name, received_at) SELECT md5('t' || (i // 8)::VARCHAR), "
                "substr(md5('s' || i::VARCHAR), 1, 16), 'old', now() FROM range(600000) AS r(i)")
    con.execute("CHECKPOINT")
    con.close()
    con = store.open_database(path)
    store.tune_for_ingest(con)
    con.execute("SET memory_limit = '24MiB'")  # the index of 600,000 keys alone took ~50 MB
    writer = GroupCommitWriter(con)
    try:
        for trace in range(20):
            assert _write(writer, _spans(trace, range(0, 500), "new")) == 500
    finally:
        writer.close()
    assert con.execute("SELECT count(*) FROM spans").fetchone() == (600000 + 20 * 500,)
    con.close()


def test_after_a_fatal_store_error_the_writer_refuses_spans_instead_of_retrying_forever(tmp_path):
    import pytest

    from tracesieve.storage.errors import RetryableError

    con, writer = _open(tmp_path)
    _write(writer, _spans(3, range(0, 2)))

    def invalidated(_con):
        # What DuckDB raises once the instance is invalidated (e.g. a commit that ran out of memory).
        raise duckdb.FatalException("database has been invalidated")

    with pytest.raises(duckdb.FatalException):
        writer.submit_task(invalidated).result(timeout=30)
    assert isinstance(writer.fatal, duckdb.FatalException)
    assert not writer.running           # /readyz answers 503
    with pytest.raises(RetryableError):
        writer.reserve(1)
    writer.close()
    late = writer.submit_task(lambda c: c.execute("SELECT 1").fetchone())
    with pytest.raises(RetryableError):
        late.result(timeout=30)         # answered, not left waiting on a thread that is gone
    assert con.execute("SELECT count(*) FROM spans").fetchone() == (2,)
    con.close()


def test_pending_traces_follow_commits_and_judgements(tmp_path):
    con, writer = _open(tmp_path)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        _write(writer, _spans(1, range(0, 2)))
        _write(writer, _spans(2, range(0, 2)))
        assert store.count_unjudged(con) == 2
        due = store.settled_traces(con, None, 10)
        assert sorted((tid, seq) for tid, seq, _ in due) == [(_tid(1), 1), (_tid(2), 1)]
        _write(writer, _spans(1, range(2, 3)))  # trace 1 gets a span while being judged at version 1
        writer.submit_task(lambda c: store.mark_judged_pending(c, due, now)).result(timeout=30)
    finally:
        writer.close()
    # trace 2 is done; trace 1 stays pending at version 2, and trace_state agrees
    assert [(tid, seq) for tid, seq, _ in store.settled_traces(con, None, 10)] == [(_tid(1), 2)]
    assert con.execute("SELECT trace_id FROM trace_state WHERE judged_seq IS DISTINCT FROM received_seq").fetchall() \
        == [(_tid(1),)]
    con.close()


def test_mark_judged_records_exactly_the_judged_versions_among_older_and_newer_traces(tmp_path):
    con, writer = _open(tmp_path)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        for trace in range(1, 6):  # five commits, five first_received_at instants
            _write(writer, _spans(trace, range(0, 2)))
        due = [d for d in store.settled_traces(con, None, 10) if d[0] in (_tid(2), _tid(3))]
        assert len(due) == 2 and all(d[2] is not None for d in due)
        writer.submit_task(lambda c: store.mark_judged(c, due, now)).result(timeout=30)
    finally:
        writer.close()
    judged = con.execute("SELECT trace_id FROM trace_state WHERE judged_seq = received_seq ORDER BY trace_id").fetchall()
    assert judged == [(_tid(2),), (_tid(3),)]  # the earliest judged one included, no other
    con.close()


def test_a_store_from_before_pending_traces_gets_its_unjudged_traces_listed(tmp_path):
    from tracesieve.storage import migrations

    path = str(tmp_path / "old.duckdb")
    old = _old_store(path, version=1)
    old.execute("INSERT INTO trace_state VALUES ('a', now(), now(), 2, 2, now()), ('b', now(), now(), 3, 2, now()), "
                "('c', now(), now(), 1, NULL, NULL)")
    old.close()
    con = store.open_database(path)
    assert sorted(t for t, _, _ in store.settled_traces(con, None, 10)) == ["b", "c"]
    assert con.execute("SELECT max(version) FROM schema_version").fetchone() == (migrations.LATEST_VERSION,)
    con.close()


def test_judging_again_replaces_a_traces_detections_within_the_received_bound(tmp_path):
    con, writer = _open(tmp_path)
    try:
        _write(writer, _spans(1, range(0, 3)))
        _write(writer, _spans(2, range(0, 3)))
        (first,) = [d[2] for d in store.settled_traces(con, None, 10) if d[0] == _tid(1)]

        def found(span: int, trace: int = 1) -> Detection:
            return _finding(trace, f"{span:016x}", f"span {span} failed")

        _save_detections(writer, [_tid(1), _tid(2)], [found(0), found(1), found(0, trace=2)], first)
        _save_detections(writer, [_tid(1)], [found(1)], first)  # judged again: span 0's gone, trace 2 untouched
    finally:
        writer.close()
    rows = con.execute("SELECT trace_id, span_id FROM detections ORDER BY trace_id, span_id").fetchall()
    assert rows == [(_tid(1), f"{1:016x}"), (_tid(2), f"{0:016x}")]
    con.close()


def test_detections_are_kept_unique_without_a_key_and_an_old_store_loses_its_key_once(tmp_path, caplog):
    """detections' key and trace_id index took ~113 bytes a detection of DuckDB's memory (migrations._v4)."""

    path = str(tmp_path / "old.duckdb")
    old = _old_store(path, 3)
    old.execute("INSERT INTO detections (detection_id, trace_id, span_id, detector, failure_mode, severity, "
                "blast_radius, message, evidence, detected_at) SELECT substr(md5('d' || i::VARCHAR), 1, 16), "
                "md5('t' || i::VARCHAR), 's', 'tool_error', 'tool_invocation', 'P2', 'internal_visible', 'm', '{}', "
                "now() - INTERVAL 1 DAY FROM range(300000) AS r(i)")
    old.close()
    with caplog.at_level(logging.INFO, logger="tracesieve.store"):
        con = store.open_database(path)
    assert "copying 300000 detections into a table without a primary key" in caplog.text
    assert _key_constraints(con, "detections") == []
    assert con.execute("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'detections'").fetchone() == (0,)
    store.tune_for_ingest(con)
    con.execute("SET memory_limit = '24MiB'")  # the two indexes of 300,000 detections alone took ~34 MB
    writer = GroupCommitWriter(con)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    try:
        for start in range(0, 2000, 40):  # judge rounds, each with findings on new traces
            traces = range(start, start + 40)
            _save_detections(writer, [_tid(t) for t in traces], [_finding(t, "s", "first") for t in traces], since)
        _save_detections(writer, [_tid(7)], [_finding(7, "s", "judged again")], since)  # updated, not duplicated
    finally:
        writer.close()
    assert writer.fatal is None
    assert con.execute("SELECT count(*), count(DISTINCT detection_id) FROM detections").fetchone() == (302000, 302000)
    assert con.execute("SELECT message FROM detections WHERE trace_id = ?", [_tid(7)]).fetchall() == [("judged again",)]
    con.close()


def _wal_bytes(tmp_path) -> int:
    wal = tmp_path / "w.duckdb.wal"
    return wal.stat().st_size if wal.exists() else 0


def test_the_writer_checkpoints_the_wal_itself_once_it_passes_its_size(tmp_path):
    """The collector's threshold (INGEST_SETTINGS) is DuckDB's backstop; the writer checkpoints first, after acking."""
    con = store.open_database(str(tmp_path / "w.duckdb"))
    store.tune_for_ingest(con)
    metrics = Metrics()
    writer = GroupCommitWriter(con, on_checkpoint=metrics.observe_checkpoint)
    writer.checkpoint_wal_bytes = 1024 * 1024
    try:
        biggest = 0
        for trace in range(12):
            _write(writer, _spans(trace, range(200), payload="p" * 1000))  # ~200 KB of WAL each
            biggest = max(biggest, _wal_bytes(tmp_path))
        assert biggest < 2 * 1024 * 1024  # never much past the mark (without the writer's checkpoints: below)
        assert writer.submit_task(lambda c: None).result(timeout=30) is None  # runs after the last check
        assert _wal_bytes(tmp_path) < 1024 * 1024
    finally:
        writer.close()
    assert con.execute("SELECT count(*) FROM spans").fetchone() == (2400,)
    # /metrics counts them, and how long they took (requests arriving meanwhile waited for that)
    scraped = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for family in text_string_to_metric_families(metrics.render().decode()) for m in family.samples}
    assert writer.stats.checkpoints >= 1
    assert scraped[("tracesieve_checkpoints_total", (("result", "done"),))] == writer.stats.checkpoints
    assert scraped[("tracesieve_checkpoints_total", (("result", "deferred"),))] == 0
    assert scraped[("tracesieve_checkpoint_duration_seconds_count", ())] == writer.stats.checkpoints
    assert scraped[("tracesieve_checkpoint_duration_seconds_sum", ())] > 0


def test_without_its_own_checkpoints_the_wal_grows_to_duckdbs_threshold(tmp_path):
    con = store.open_database(str(tmp_path / "w.duckdb"))
    store.tune_for_ingest(con)
    writer = GroupCommitWriter(con)
    writer.checkpoint_wal_bytes = None
    try:
        for trace in range(12):
            _write(writer, _spans(trace, range(200), payload="p" * 1000))
        assert _wal_bytes(tmp_path) > 2 * 1024 * 1024
    finally:
        writer.close()


def test_a_due_checkpoint_waits_for_a_reader_holding_the_gate(tmp_path):
    """The judge reads inside writer.reading(): a checkpoint then waits for it instead of being refused."""
    con = store.open_database(str(tmp_path / "w.duckdb"))
    store.tune_for_ingest(con)
    writer = GroupCommitWriter(con)
    writer.checkpoint_wal_bytes = 1024 * 1024
    gate = writer.reading()
    gate.__enter__()
    wal_while_held: list[int] = []

    def release() -> None:
        wal_while_held.append(_wal_bytes(tmp_path))
        gate.__exit__(None, None, None)

    timer = threading.Timer(1.0, release)
    timer.start()
    try:
        for trace in range(8):
            _write(writer, _spans(trace, range(200), payload="p" * 1000))
        assert writer.submit_task(lambda c: None).result(timeout=30) is None
    finally:
        timer.join()
        writer.close()
    assert wal_while_held and wal_while_held[0] >= 1024 * 1024  # no checkpoint while the reader held the gate
    assert writer.stats.checkpoints >= 1
    assert writer.stats.checkpoints_deferred == 0
    assert _wal_bytes(tmp_path) < 1024 * 1024


#: Reads that run on a cursor which then waits: the judge's between rounds, /metrics' and the status
#: line's, and the base that the query surface's cursors are made from (store.cursor runs one query on it).
IDLE_CURSOR_READS = {
    "query surface cursor": lambda cur: store.cursor(cur),
    "judge: count_unjudged": store.count_unjudged,
    "metrics: settled backlog": lambda cur: store.settled_backlog_seconds(cur, dt.datetime.now(dt.timezone.utc)),
    "status line: count_detections": stats.count_detections,
}


@pytest.mark.parametrize("read", IDLE_CURSOR_READS.values(), ids=IDLE_CURSOR_READS.keys())
def test_a_read_on_a_waiting_cursor_does_not_hold_off_checkpoints(tmp_path, read):
    """A result read with fetchone() kept its transaction open until the cursor's next statement.

    DuckDB then refused every CHECKPOINT: one `tracesieve query` under load left the WAL growing
    for the rest of the run (5 checkpoints done, 412 refused).
    """
    con = store.open_database(str(tmp_path / "w.duckdb"))
    store.tune_for_ingest(con)
    waiting = store.cursor(con)
    writer = GroupCommitWriter(con)
    writer.checkpoint_wal_bytes = 1024 * 1024
    try:
        _write(writer, _spans(99, range(10)))
        due = store.settled_traces(con, None, 10)
        read(waiting)  # and then the cursor waits, as between two judge rounds or two scrapes
        # the judge's commit: trace 99 marked judged (an UPDATE and a DELETE, whose old rows a reader
        # that is still open may need; appends alone never held a checkpoint off)
        writer.submit_task(lambda c: store.mark_judged_pending(c, due, dt.datetime.now(dt.timezone.utc))).result(30)
        for trace in range(8):
            _write(writer, _spans(trace, range(200), payload="p" * 1000))
        assert writer.submit_task(lambda c: None).result(timeout=30) is None
    finally:
        writer.close()
    assert writer.stats.checkpoints_deferred == 0
    assert writer.stats.checkpoints >= 1
    assert _wal_bytes(tmp_path) < 1024 * 1024
