"""trace_state keeps the recent traces only, so its key index stays within the collector's memory.

Real DuckDB files and the real GroupCommitWriter; the judge's part is the real store function it
calls (mark_judged_pending).
"""

from __future__ import annotations

import logging

from test_writer import _spans, _tid, _write
from tracesieve.storage import recent_traces, store
from tracesieve.storage.schema import utcnow
from tracesieve.storage.writer import GroupCommitWriter


def _judge_all_but(writer: GroupCommitWriter, keep_pending: set[str]) -> None:
    """What the judge does for every settled trace: mark it judged at its received version."""
    def judge(con):
        due = [d for d in store.settled_traces(con, None, 100_000) if d[0] not in keep_pending]
        store.mark_judged_pending(con, due, utcnow())
    writer.submit_task(judge).result(timeout=30)


def _traces(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT trace_id FROM trace_state").fetchall()}


def test_trace_state_keeps_the_latest_traces_and_every_unjudged_or_active_one(tmp_path, monkeypatch):
    monkeypatch.setattr(recent_traces, "KEEP_TRACES", 40)
    con = store.open_database(str(tmp_path / "s.duckdb"))
    writer = GroupCommitWriter(con)
    try:
        for trace in range(60):
            _write(writer, _spans(trace, range(0, 2)))
        unjudged = {_tid(3)}
        for trace in range(60, 120):
            _write(writer, _spans(trace, range(0, 2)))
            if trace == 100:
                _write(writer, _spans(5, range(2, 3)))   # trace 5, first received long ago, is active again
            _judge_all_but(writer, unjudged)
        _write(writer, _spans(110, range(0, 3)))         # a re-delivery of a kept trace, and one new span
        rows = writer.recent_traces.rows if writer.recent_traces else -1
    finally:
        writer.close()
    kept = _traces(con)
    assert rows == len(kept) == 40
    assert {_tid(3), _tid(5)} <= kept                  # unjudged; and active, though it first arrived long ago
    assert {_tid(t) for t in range(82, 120)} <= kept   # the latest, with traces 3 and 5: 40 in all
    assert not {_tid(t) for t in (0, 1, 2, 4, 6, 50)} & kept
    # Pruning never touches spans: every span is there, the re-delivered ones once.
    assert con.execute("SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans").fetchone() == \
        (120 * 2 + 1 + 1, 120 * 2 + 1 + 1)
    con.close()


def test_a_store_from_before_pruning_is_trimmed_once_and_then_takes_commits_in_little_memory(tmp_path, caplog,
                                                                                            monkeypatch):
    """With a row for every trace ever received, trace_state's key index outgrew memory_limit and
    every commit failed (6 million traces at the collector's 256 MiB: bench/bigstore.py --traces)."""
    path = str(tmp_path / "old.duckdb")
    con = store.open_database(path)
    con.execute("INSERT INTO trace_state (trace_id, first_received_at, last_received_at, received_seq, judged_seq) "
                "SELECT md5('t' || i::VARCHAR), now() - INTERVAL 1 DAY + INTERVAL (i) MILLISECOND, "
                "now() - INTERVAL 1 DAY + INTERVAL (i) MILLISECOND, 1, 1 FROM range(600000) AS r(i)")
    con.execute("INSERT INTO pending_traces SELECT trace_id, 2, first_received_at, last_received_at "
                "FROM trace_state WHERE trace_id = md5('t0')")  # the oldest trace, not judged yet
    con.execute("CHECKPOINT")
    con.close()

    monkeypatch.setattr(recent_traces, "KEEP_TRACES", 20_000)
    con = store.open_database(path)
    with caplog.at_level(logging.INFO, logger="tracesieve.store"):
        dropped = recent_traces.fit_at_start(con)
    assert dropped == 600_000 - 20_001
    assert "keeping the 20000 most recent of 600000 traces" in caplog.text
    assert con.execute("SELECT count(*), min(first_received_at) < now() - INTERVAL 23 HOUR FROM trace_state "
                       "WHERE trace_id = md5('t0') OR first_received_at IS NOT NULL").fetchone() == (20_001, True)
    store.tune_for_ingest(con)
    con.execute("SET memory_limit = '24MiB'")  # the index of 600,000 keys alone took ~26 MB
    writer = GroupCommitWriter(con)
    try:
        for trace in range(20):
            _write(writer, _spans(trace, range(0, 200)))
        _write(writer, _spans(0, range(0, 200)))     # the key still finds known traces
    finally:
        writer.close()
    assert writer.fatal is None
    assert con.execute("SELECT count(*) FROM spans").fetchone() == (20 * 200,)
    assert fit_again(con) == 0
    con.close()


def fit_again(con) -> int:
    return recent_traces.fit_at_start(con)
