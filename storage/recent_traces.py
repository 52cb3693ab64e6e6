"""``trace_state`` kept to the most recently received traces, so that its key index fits in memory.

The writer looks every incoming trace up in ``trace_state`` (an upsert on its primary key) to tell
a re-delivered span from a new one. DuckDB holds the whole index of a key in memory once a write
touches it, counted against the collector's ``memory_limit``: ~43 bytes a trace. With a row for
every trace ever received, commits failed (OutOfMemoryException) once a store held about six
million traces (~40 million spans), and again after every restart.

So ``trace_state`` keeps the :data:`KEEP_TRACES` traces that arrived last, and every trace not yet
judged or still receiving spans. A span of a trace pruned from it is taken for the first span of a
new trace: stored without the re-delivery check, and judged with the spans received since (the
trace's earlier detections stay). With 500,000 traces kept, that takes a trace idle for ~30 minutes
at 300 new traces a second, far longer than any OTLP exporter retries a request.

Rows are pruned by ``first_received_at``, which is the commit time of a trace's first spans: rows
are appended in that order, never changed, and DuckDB's zonemaps skip everything newer.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging

import duckdb

from tracesieve.storage.migrations import TRACE_STATE_DDL
from tracesieve.storage.sqlparams import first_row

log = logging.getLogger("tracesieve.store")

#: Traces ``trace_state`` keeps (besides those pending): ~21 MB of key index in DuckDB's memory.
KEEP_TRACES = 500_000
#: Prune once this many rows are over: each pruned trace costs ~50 us of the writer's time, so
#: pruning after every commit (a few hundred traces, ~15 ms) spreads the cost evenly.
PRUNE_SLACK = 1


def fit_at_start(con: duckdb.DuckDBPyConnection, keep: int | None = None) -> int:
    """Rebuild ``trace_state`` with only the rows :class:`RecentTraces` would keep; returns rows dropped.

    For stores written before pruning (and any store far over the bound): deleting millions of rows
    one index entry at a time would take minutes, and would need the whole index in memory first.
    Run it before the collector's memory limit applies.
    """
    keep = KEEP_TRACES if keep is None else keep
    row = first_row(con, "SELECT count(*) FROM trace_state")
    total = int(row[0]) if row else 0
    if total <= keep + keep // 5:
        return 0
    log.info("trimming trace_state: keeping the %d most recent of %d traces, and the unjudged ones (once)",
             keep, total)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(TRACE_STATE_DDL.replace("CREATE TABLE IF NOT EXISTS trace_state", "CREATE TABLE trace_state_kept"))
        con.execute(
            "INSERT INTO trace_state_kept SELECT * FROM trace_state WHERE trace_id IN ("
            "SELECT trace_id FROM (SELECT trace_id FROM trace_state ORDER BY last_received_at DESC LIMIT $1) "
            "UNION SELECT trace_id FROM pending_traces)", [keep])
        kept = first_row(con, "SELECT count(*) FROM trace_state_kept")
        con.execute("DROP TABLE trace_state")
        con.execute("ALTER TABLE trace_state_kept RENAME TO trace_state")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return total - (int(kept[0]) if kept else 0)


class RecentTraces:
    """Counts ``trace_state`` rows by first arrival, and prunes the oldest past :data:`KEEP_TRACES`.

    Lives in the writer thread: told of every commit's new traces, it deletes, after the commit
    was acknowledged, the oldest rows that are judged and quiet.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, keep: int | None = None) -> None:
        self.keep = KEEP_TRACES if keep is None else keep
        # (latest first_received_at, traces) per bucket of up to ~keep/1000 first arrivals, oldest first:
        # a thousand or two entries however slowly traces arrive, and pruned in steps of 0.1% of keep
        self._bucket = max(1, self.keep // 1000)
        self._arrivals: collections.deque[tuple[dt.datetime, int]] = collections.deque(
            (at, int(n)) for at, n in con.execute(
                "SELECT max(first_received_at), count(*) FROM (SELECT first_received_at, row_number() OVER "
                "(ORDER BY first_received_at) - 1 AS i FROM trace_state WHERE first_received_at IS NOT NULL) "
                "GROUP BY i // $1 ORDER BY 1", [self._bucket]).fetchall())
        row = first_row(con, "SELECT count(*) FROM trace_state")
        self.rows = int(row[0]) if row else 0
        self.pruned = 0

    def committed(self, at: dt.datetime, new_traces: int) -> None:
        """``new_traces`` traces first arrived in the commit made at ``at``."""
        if not new_traces:
            return
        self.rows += new_traces
        if self._arrivals and self._arrivals[-1][1] + new_traces <= self._bucket:
            self._arrivals[-1] = (at, self._arrivals[-1][1] + new_traces)
        else:
            self._arrivals.append((at, new_traces))

    @property
    def due(self) -> bool:
        return self.rows >= self.keep + PRUNE_SLACK and bool(self._arrivals)

    def prune(self, con: duckdb.DuckDBPyConnection) -> int:
        """Delete the oldest judged, quiet traces down to ``keep`` rows (in its own transaction)."""
        over = self.rows - self.keep
        cutoff = None
        while over > 0 and self._arrivals:
            cutoff, n = self._arrivals.popleft()
            over -= n
        if cutoff is None:
            return 0
        con.execute("BEGIN TRANSACTION")
        try:
            row = con.execute(
                "DELETE FROM trace_state WHERE first_received_at <= $1 AND last_received_at <= $1 "
                "AND trace_id NOT IN (SELECT trace_id FROM pending_traces)", [cutoff]).fetchone()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        deleted = int(row[0]) if row else 0
        self.rows -= deleted
        self.pruned += deleted
        return deleted
