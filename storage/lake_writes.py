"""The writes of a collector on a lake: span group commits and trace-stage results, exact across collectors.

Every write runs through :func:`tracesieve.storage.lake.run_in_transaction`, which
serialises all tracesieve writers on the lake and retries lost commits from the
start. Inside that guarantee:

* spans are inserted with an anti-join on (trace_id, span_id): a re-delivered span,
  or the same span sent to two collectors, is stored once;
* ``trace_state`` is upserted (UPDATE + anti-join INSERT) and records the ``owner`` (the collector
  that last received spans of the trace): the owner judges it, so a fleet routed by
  trace id judges each trace once; a trace whose owner went quiet for ``takeover``
  is judged by whoever sees it (crash recovery);
* a judgement is written only if no collector has already judged that trace at the
  same or a newer version; detections are replaced per trace and keyed by their
  deterministic id (UPDATE + anti-join INSERT), candidates are upserted inside the same serialised
  transaction, so the same failure seen by two collectors is one candidate.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from tracesieve.storage import candidates as candidate_store
from tracesieve.storage import store
from tracesieve.storage.errors import RetryableError
from tracesieve.storage.lake import CommitLock, redact, run_in_transaction
from tracesieve.storage.schema import Candidate, Detection, utcnow
from tracesieve.storage.sqlparams import first_row, packed, registered, unpacked
from tracesieve.storage.writer import GroupCommitWriter, WriteTask

log = logging.getLogger("tracesieve.lake")

#: A trace whose owner received nothing for this long is judged by any collector (its owner may be gone).
DEFAULT_TAKEOVER = dt.timedelta(seconds=60)


def insert_spans(con: duckdb.DuckDBPyConnection, table: pa.Table, owner: str, now: dt.datetime) -> int:
    """Store the spans not stored yet and record their traces; returns how many spans were new.

    Runs inside a serialised lake transaction (see module docstring). Only traces already known to
    ``trace_state`` can have stored spans, so the anti-join reads spans received since the earliest
    of those traces' first_received_at (minus store.RECEIVED_MARGIN) and is skipped for new traces.
    ``received_at`` is stamped ``now`` (this attempt's commit time, as in the file writer): stamped at
    decode, a span whose commit waited over the margin (queued on the commit lock, answered "retry",
    committed anyway) fell outside the window, and the client's retry stored it a second time.
    """
    at = table.schema.get_field_index("received_at")
    table = table.set_column(at, table.schema.field(at),
                             pa.repeat(pa.scalar(now, table.schema.field(at).type), table.num_rows))
    with registered(con, "_incoming_spans", table):
        row = con.execute(
            "SELECT min(first_received_at), count(*) FROM trace_state "
            "WHERE trace_id IN (SELECT DISTINCT trace_id FROM _incoming_spans)").fetchone()
        stored: list[tuple[str, str]] = []
        if row and int(row[1]):
            since = row[0] - store.RECEIVED_MARGIN if row[0] is not None else None
            window = "s.received_at >= $1 AND " if since is not None else ""
            stored = [(str(trace_id), str(span_id)) for trace_id, span_id in con.execute(
                "SELECT i.trace_id, i.span_id FROM _incoming_spans AS i WHERE EXISTS ("
                f"SELECT 1 FROM spans AS s WHERE {window}s.trace_id = i.trace_id AND s.span_id = i.span_id)",
                [since] if since is not None else []).fetchall()]
    # Only the traces that got a new span count as an arrival (received_seq + 1, owner, quiet time):
    # a re-delivery of stored spans (a retry after a lost ack) would otherwise be judged again, later.
    fresh = without_keys(table, stored) if stored else table
    if not fresh.num_rows:
        return 0
    with registered(con, "_incoming_spans", fresh):
        con.execute("INSERT INTO spans SELECT * FROM _incoming_spans")
        # UPDATE + anti-join INSERT, not MERGE: DuckLake 1.5.5's MERGE fails ("Out of buffer") on this table.
        con.execute(
            "UPDATE trace_state SET last_received_at = $1, received_seq = received_seq + 1, owner = $2 "
            "WHERE trace_id IN (SELECT trace_id FROM _incoming_spans)", [now, owner])
        con.execute(
            "INSERT INTO trace_state (trace_id, first_received_at, last_received_at, received_seq, owner) "
            "SELECT DISTINCT trace_id, $1::TIMESTAMPTZ, $1::TIMESTAMPTZ, 1, $2 FROM _incoming_spans "
            "WHERE trace_id NOT IN (SELECT trace_id FROM trace_state)", [now, owner])
    return int(fresh.num_rows)


def without_keys(table: pa.Table, keys: Sequence[tuple[str, str]]) -> pa.Table:
    """``table`` without the rows whose (trace_id, span_id) is one of ``keys``."""
    drop = set(keys)
    keep = [i for i, key in enumerate(zip(table.column("trace_id").to_pylist(), table.column("span_id").to_pylist()))
            if key not in drop]
    return table.take(pa.array(keep, pa.int64()))


class LakeWriter(GroupCommitWriter):
    """GroupCommitWriter for a lake: the same queue, group commit and acks; lake SQL and conflict retries.

    A client is acknowledged only after the transaction holding its spans committed (after any
    retries). No CHECKPOINT at close: lake maintenance is an operator decision (README).
    """

    checkpoint_on_close = False
    checkpoint_wal_bytes = None
    prunes_trace_state = False  # a lake has no key indexes

    def __init__(self, con: duckdb.DuckDBPyConnection, *, owner: str, lock: CommitLock | None = None,
                 **kwargs: Any) -> None:
        self.owner = owner
        self._lock_pg = lock
        self.conflict_retries = 0
        super().__init__(con, **kwargs)

    def _count_conflict(self) -> None:
        self.conflict_retries += 1  # writer thread only

    def close(self, timeout: float = 30.0) -> None:
        super().close(timeout)
        log.info("lake writer: %d span commits, %d commit conflicts retried, %.1f s committing spans",
                 self.stats.commits, self.conflict_retries, self.stats.commit_seconds_total)

    store_noun = "lake"

    def _store_spans(self, table: pa.Table) -> int:
        inserted: int = self._transaction(lambda con: insert_spans(con, table, self.owner, utcnow()))
        return inserted

    def _transaction(self, work: WriteTask) -> Any:
        """Serialised on the lake's commit lock, redone when another writer's commit conflicts."""
        return run_in_transaction(self._con, work, writer=self.owner, on_conflict=self._count_conflict,
                                  lock=self._lock_pg)

    @staticmethod
    def _describe(exc: BaseException) -> str:
        first = redact(str(exc).splitlines()[0][:200]) if str(exc) else ""
        return f"{type(exc).__name__}: {first}"


class LakeTraceStore:
    """The trace-stage reads and writes of one collector on a lake (the judge's storage seam)."""

    def __init__(self, owner: str, takeover: dt.timedelta = DEFAULT_TAKEOVER, max_per_intent: int = 0,
                 near_duplicate_threshold: float = 0.0) -> None:
        self.owner = owner
        self.takeover = takeover
        # promotion's cap and near-duplicate bar, applied again inside the write (0: none)
        self.max_per_intent = max_per_intent
        self.near_duplicate_threshold = near_duplicate_threshold

    def settled_traces(self, con: duckdb.DuckDBPyConnection, quiet_since: dt.datetime | None,
                       limit: int) -> list[tuple[str, int, dt.datetime | None]]:
        """Like store.settled_traces, for the traces this collector owns (or whose owner went quiet).

        ``quiet_since=None`` (shutdown drain) returns every unjudged trace this collector owns.
        """
        sql = ("SELECT trace_id, received_seq, first_received_at FROM trace_state "
               "WHERE judged_seq IS DISTINCT FROM received_seq AND (owner = ? OR owner IS NULL")
        params: list[Any] = [self.owner]
        if quiet_since is not None:
            sql += " OR last_received_at <= ?) AND last_received_at <= ?"
            params += [quiet_since - self.takeover, quiet_since]
        else:
            sql += ")"
        sql += " ORDER BY last_received_at LIMIT ?"
        params.append(limit)
        return [(r[0], int(r[1]), r[2]) for r in con.execute(sql, params).fetchall()]

    def settled_backlog_seconds(self, con: duckdb.DuckDBPyConnection, quiet_since: dt.datetime) -> float:
        """:func:`store.settled_backlog_seconds` over the whole lake (every collector's traces)."""
        row = first_row(con, "SELECT min(last_received_at) FROM trace_state WHERE judged_seq IS DISTINCT FROM "
                        "received_seq AND last_received_at <= ?", [quiet_since])
        return store.backlog_seconds(row[0] if row else None, quiet_since)

    def count_unjudged(self, con: duckdb.DuckDBPyConnection) -> int:
        row = first_row(con, "SELECT count(*) FROM trace_state WHERE judged_seq IS DISTINCT FROM received_seq "
                        "AND owner = ?", [self.owner])
        return int(row[0]) if row else 0

    def save_judgement(self, con: duckdb.DuckDBPyConnection, due: Sequence[tuple[str, int, Any]],
                       detections: Sequence[Detection], candidates: Sequence[Candidate],
                       now: dt.datetime) -> None:
        """Write one judge round (inside the serialised transaction; may run again after a conflict).

        Traces another collector already judged at this version or a newer one are left alone, so
        judging twice never duplicates or rolls back anything.
        """
        if not due:
            return
        rows = con.execute(
            f"SELECT trace_id, judged_seq, judged_at FROM trace_state WHERE trace_id IN (SELECT unnest({unpacked('?')}))",
            [packed(d[0] for d in due)]).fetchall()
        current = {r[0]: r[1] for r in rows}
        judged_at = {r[0]: r[2] for r in rows}
        fresh = [d for d in due if current.get(d[0]) is None or int(current[d[0]]) < d[1]]
        if not fresh:
            return
        keep = {d[0] for d in fresh}
        # with the findings these traces' feedback moved onto the traces it judges (Judge._linked_feedback)
        ours = [d for d in detections if d.trace_id in keep or d.evidence.get(store.CARRIER_TRACE_KEY) in keep]
        save_detections(con, sorted(keep), ours, now)
        mine = [c for c in candidates if c.trace_id in keep or c.trace_id in {d.trace_id for d in ours}]
        if mine and (self.max_per_intent or self.near_duplicate_threshold):
            stored = candidate_store.stored_candidate_ids(con, mine)
            mine = candidate_store.within_intent_cap(con, mine, self.max_per_intent, stored)
            candidate_store.mark_late_near_duplicates(con, mine, self.near_duplicate_threshold, stored)
        if mine:
            candidate_store.upsert_candidates(con, mine, now)
        rejudged = [d[0] for d in fresh if current.get(d[0]) is not None]
        if rejudged:
            candidate_store.withdraw_stale(con, rejudged, mine, ours)
        store.mark_judged(con, fresh, now)
        firsts = [d[2] for d in fresh if d[2] is not None]
        requeue_stranded_feedback(con, sorted(keep), min(firsts) if len(firsts) == len(fresh) else None,
                                  [d for d in ours if _stranded(d)], judged_at)

    def mark_judged(self, con: duckdb.DuckDBPyConnection, due: Sequence[tuple[str, int, Any]],
                    now: dt.datetime) -> None:
        store.mark_judged(con, due, now)


def _stranded(d: Detection) -> bool:
    """Feedback filed under its own carrier trace because the trace it links to was not in the lake."""
    return (d.failure_mode == "negative_feedback" and isinstance(d.evidence.get("target"), Mapping)
            and store.CARRIER_TRACE_KEY not in d.evidence)


def requeue_stranded_feedback(con: duckdb.DuckDBPyConnection, judged: Sequence[str], since: dt.datetime | None,
                              stranded_now: Sequence[Detection],
                              judged_at_before: Mapping[str, dt.datetime | None]) -> int:
    """store.requeue_stranded_feedback for a lake: carriers of early feedback are judged again once it can move.

    Feedback that arrives before the conversation it scores stays with its carrier trace (see
    Judge._linked_feedback). The file store puts the carrier back on pending_traces once the
    conversation is judged; a lake has no such queue and never judges a trace again at the same
    version, so the thumbs-down stayed on its carrier for good and the conversation's candidate
    never got its negative_feedback. Here the carrier's received_seq is raised (no span is added):
    whoever owns it judges it again, and the finding then moves onto the conversation.

    Two sources, in the serialised write of a judge round:

    * the carriers whose stranded feedback targets a trace judged in this round (``judged``; the
      scan bounded, as on the file store, to detections made from STRANDED_FEEDBACK_WINDOW before
      ``since``, the round's earliest first arrival);
    * the carriers this round strands (``stranded_now``) while their target is already in the lake:
      with two collectors, the target's judgement may have been written between this carrier's read
      and this write, finding nothing to put back. Only a target that arrived after the carrier's
      previous judgement (``judged_at_before``) counts, so a carrier is put back once, not in a loop.

    Returns how many carriers were put back.
    """
    carriers: set[str] = set()
    if judged:
        window = "AND detected_at >= $2 " if since is not None else ""
        params: list[Any] = [packed(judged)]
        if since is not None:
            params.append(since - store.STRANDED_FEEDBACK_WINDOW)
        carriers.update(str(r[0]) for r in con.execute(
            f"SELECT DISTINCT trace_id FROM detections WHERE failure_mode = 'negative_feedback' {window}"
            f"AND json_extract_string(evidence, '$.{store.CARRIER_TRACE_KEY}') IS NULL "
            f"AND list_contains({unpacked('$1')}, json_extract_string(evidence, '$.target.trace_id')) "
            f"AND NOT list_contains({unpacked('$1')}, trace_id)", params).fetchall())
    pairs = {(d.trace_id, str(d.evidence["target"].get("trace_id"))) for d in stranded_now} if stranded_now else set()
    if pairs:
        arrived = dict(con.execute(
            f"SELECT trace_id, first_received_at FROM trace_state WHERE list_contains({unpacked('?')}, trace_id)",
            [packed(sorted({target for _, target in pairs}))]).fetchall())
        for carrier, target in sorted(pairs):
            before = judged_at_before.get(carrier)
            if target in arrived and (before is None or arrived[target] > before):
                carriers.add(carrier)
    if carriers:
        con.execute(f"UPDATE trace_state SET received_seq = received_seq + 1 "
                    f"WHERE list_contains({unpacked('?')}, trace_id)", [packed(sorted(carriers))])
    return len(carriers)


_DETECTION_SCHEMA = pa.schema([
    ("detection_id", pa.string()), ("trace_id", pa.string()), ("span_id", pa.string()),
    ("detector", pa.string()), ("failure_mode", pa.string()), ("severity", pa.string()),
    ("blast_radius", pa.string()), ("message", pa.string()), ("evidence", pa.string()),
    ("detected_at", pa.timestamp("us", tz="UTC")),
])


def save_detections(con: duckdb.DuckDBPyConnection, trace_ids: Sequence[str], detections: Sequence[Detection],
                    now: dt.datetime) -> None:
    """store.save_detections for a lake: the trace's detections become exactly ``detections``.

    Stored ones keep their detection_id and detected_at (upsert on the deterministic id).
    """
    unique = {d.detection_id: d for d in detections}
    con.execute(
        f"DELETE FROM detections WHERE trace_id IN (SELECT unnest({unpacked('$1')})) "
        f"AND detection_id NOT IN (SELECT unnest({unpacked('$2')})) "
        f"AND json_extract_string(evidence, '$.{store.CARRIER_TRACE_KEY}') IS NULL",  # see store.save_detections
        [packed(trace_ids), packed(unique)],
    )
    if not unique:
        return
    rows = [d.as_row(now) for d in unique.values()]
    with registered(con, "_incoming_detections", pa.Table.from_pylist(rows, schema=_DETECTION_SCHEMA)):
        con.execute(
            "UPDATE detections SET message = i.message, evidence = i.evidence, severity = i.severity, "
            "blast_radius = i.blast_radius FROM _incoming_detections AS i "
            "WHERE detections.detection_id = i.detection_id")
        con.execute(
            "INSERT INTO detections (detection_id, trace_id, span_id, detector, failure_mode, severity, "
            "blast_radius, message, evidence, detected_at) SELECT detection_id, trace_id, span_id, detector, "
            "failure_mode, severity, blast_radius, message, evidence, detected_at FROM _incoming_detections "
            "WHERE detection_id NOT IN (SELECT detection_id FROM detections)")
