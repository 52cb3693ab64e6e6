"""Read-only figures about the store that ``/metrics`` and the status line show, read on demand.

Each function runs a few aggregate queries on the cursor it is given (any
thread with its own cursor); none writes.
"""

from __future__ import annotations

import datetime as dt

import duckdb


def detections_by_mode(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {str(m): int(n) for m, n in con.execute(
        "SELECT failure_mode, count(*) FROM detections GROUP BY 1").fetchall()}


def candidates_by_status(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {str(s): int(n) for s, n in con.execute(
        "SELECT status, count(*) FROM candidates GROUP BY 1").fetchall()}


def count_detections(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT count(*) FROM detections").fetchone()
    return int(row[0]) if row else 0


def settled_backlog_seconds(con: duckdb.DuckDBPyConnection, quiet_since: dt.datetime, *, lake: bool = False) -> float:
    """How long the oldest trace that is settled (quiet since ``quiet_since``) but not judged has been waiting.

    0.0 when every settled trace is judged: the trace stage is caught up. A file store keeps its
    unjudged traces in pending_traces; a lake has only trace_state.
    """
    sql = ("SELECT min(last_received_at) FROM trace_state WHERE judged_seq IS DISTINCT FROM received_seq "
           "AND last_received_at <= ?" if lake else
           "SELECT min(last_received_at) FROM pending_traces WHERE last_received_at <= ?")
    row = con.execute(sql, [quiet_since]).fetchone()
    if not row or row[0] is None:
        return 0.0
    oldest: dt.datetime = row[0]
    return max(0.0, (quiet_since - oldest).total_seconds())
