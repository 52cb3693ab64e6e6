"""Read-only figures about the store that ``/metrics`` and the status line show, read on demand.

Each function runs a few aggregate queries on the cursor it is given (any
thread with its own cursor); none writes.
"""

from __future__ import annotations

import duckdb
from tracesieve.storage.sqlparams import first_row


def detections_by_mode(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {str(m): int(n) for m, n in con.execute(
        "SELECT failure_mode, count(*) FROM detections GROUP BY 1").fetchall()}


def candidates_by_status(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {str(s): int(n) for s, n in con.execute(
        "SELECT status, count(*) FROM candidates GROUP BY 1").fetchall()}


def count_detections(con: duckdb.DuckDBPyConnection) -> int:
    row = first_row(con, "SELECT count(*) FROM detections")
    return int(row[0]) if row else 0
