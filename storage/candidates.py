"""The ``candidates`` table: upsert from the trace stage, listing and review transitions for the CLI.

Every function takes an open DuckDB connection and runs plain statements on it;
none of them opens, commits or rolls back a transaction. The writer thread calls
:func:`upsert_candidates` inside its group-commit transaction; the CLI calls the
rest inside its own. Callers own the connection and its thread.

Review transitions (refused ones raise :class:`UsageError`)::

    new ───────┬──> promoted   (mark_promoted; final)
    duplicate ─┤
    rejected ──┘
    new / duplicate ──> rejected   (mark_rejected)

A promoted candidate can be neither promoted again nor rejected (remove the case
from cases.yaml through the removal ledger instead); a rejected one can still be
promoted when a reviewer changes their mind.

The processor reads the table through ``StoreReader.query``, with the SQL text
constants below (``EXISTING_SQL``, ``SIGNATURES_SQL``, ``INTENT_COUNT_SQL``), so
the SQL lives with the table.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tracesieve.storage.errors import NotFoundError, UsageError
from tracesieve.storage.schema import CANDIDATE_STATUSES, FAILURE_MODES, SEVERITIES, Candidate, Detection
from tracesieve.storage.sqlparams import first_row, packed, registered, unpacked

if TYPE_CHECKING:  # pragma: no cover - typing only; processors import this module without duckdb
    import duckdb

#: Columns returned by list/get, in table order (``signature`` is internal and left out).
PUBLIC_COLUMNS = (
    "candidate_id", "detector", "failure_mode", "severity", "blast_radius", "input_hash",
    "intent", "input", "context", "observed", "expected", "source", "status", "duplicate_of",
    "occurrences", "trace_ids", "first_seen", "last_seen", "case_id", "reviewed_by",
    "review_reason", "reviewed_at",
)
JSON_COLUMNS = frozenset({"input", "context", "observed", "expected", "source"})

#: Which of these candidate ids exist already, with their status. Param: the ids, sqlparams.packed.
EXISTING_SQL = (
    "SELECT candidate_id, status, duplicate_of FROM candidates "
    f"WHERE list_contains({unpacked('?')}, candidate_id)"
)
#: Signatures a new candidate of one failure mode is compared with: every non-duplicate
#: row of that mode whose signature has the same length. Params: failure_mode, length.
SIGNATURES_SQL = (
    "SELECT candidate_id, signature, input_hash FROM candidates "
    "WHERE failure_mode = ? AND status <> 'duplicate' AND signature IS NOT NULL "
    "AND len(signature) = ? ORDER BY first_seen, candidate_id"
)
#: Rows already stored for one (failure_mode, intent): the per-intent cap. Params: failure_mode, intent.
INTENT_COUNT_SQL = "SELECT count(*) AS n FROM candidates WHERE failure_mode = ? AND intent = ?"


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=False)


def _severity_rank(severity: str | None) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


_NEW_ROWS_SCHEMA = pa.schema([
    ("candidate_id", pa.string()), ("detector", pa.string()), ("failure_mode", pa.string()),
    ("severity", pa.string()), ("blast_radius", pa.string()), ("input_hash", pa.string()),
    ("intent", pa.string()), ("input", pa.string()), ("context", pa.string()), ("observed", pa.string()),
    ("expected", pa.string()), ("source", pa.string()), ("status", pa.string()), ("duplicate_of", pa.string()),
    ("occurrences", pa.int64()), ("trace_ids", pa.list_(pa.string())), ("signature", pa.list_(pa.uint64())),
    ("first_seen", pa.timestamp("us", tz="UTC")), ("last_seen", pa.timestamp("us", tz="UTC")),
])
_REFRESH_SCHEMA = pa.schema([
    (name, pa.string()) for name in ("candidate_id", "trace_id", "input", "context", "observed", "expected", "source")
])
_RECURRENCE_SCHEMA = pa.schema([
    ("candidate_id", pa.string()), ("add_trace_ids", pa.list_(pa.string())), ("severity", pa.string()),
    ("first_seen", pa.timestamp("us", tz="UTC")), ("last_seen", pa.timestamp("us", tz="UTC")),
])


def stored_candidate_ids(con: duckdb.DuckDBPyConnection, candidates: Sequence[Candidate]) -> set[str]:
    """The ids among ``candidates`` that ``con``'s transaction already holds (the others would be new rows)."""
    ids = sorted({c.candidate_id for c in candidates})
    return {r[0] for r in con.execute(
        f"SELECT candidate_id FROM candidates WHERE list_contains({unpacked('?')}, candidate_id)",
        [packed(ids)]).fetchall()}


def within_intent_cap(con: duckdb.DuckDBPyConnection, candidates: Sequence[Candidate],
                      max_per_intent: int, stored: set[str]) -> list[Candidate]:
    """``candidates`` without the new ones (id not stored yet) past ``max_per_intent`` rows per
    (failure_mode, intent), counted on what ``con``'s transaction sees; recurrences (ids in ``stored``,
    from :func:`stored_candidate_ids`) always pass.

    The promotion step caps from a read made before the write: on a lake several collectors judge
    at once, each read missed what the others were filing, and a fleet of three filed 49 rows for
    one intent under a cap of 20. Run inside the serialised write, the cap holds across collectors.
    """
    if not max_per_intent or not candidates:
        return list(candidates)
    counts: dict[tuple[str, str], int] = {}
    admitted: set[str] = set()
    kept = []
    for cand in candidates:
        cid = cand.candidate_id
        if cid not in stored and cid not in admitted:
            key = (cand.failure_mode, cand.intent)
            if key not in counts:
                row = con.execute(INTENT_COUNT_SQL, list(key)).fetchone()
                counts[key] = int(row[0]) if row else 0
            if counts[key] >= max_per_intent:
                continue
            counts[key] += 1
            admitted.add(cid)
        kept.append(cand)
    return kept


def mark_late_near_duplicates(con: duckdb.DuckDBPyConnection, candidates: Sequence[Candidate],
                              threshold: float, stored: set[str]) -> None:
    """Mark ``duplicate`` the new candidates (id not stored yet, status ``new``) that nearly duplicate a
    stored non-duplicate of their failure mode, as the promotion step would had it seen that row.

    The promotion step compares with the candidates it read before its write: on a lake, collectors
    judging at once each missed what the others were filing, and three near-duplicate inputs seen by
    three collectors became three ``new`` rows instead of one and two duplicates. Run inside the
    serialised write, it sees every earlier commit. Same measure and ties as the step (estimated
    Jaccard of the MinHash signatures, the earliest stored on ties; an equal input is no duplicate).
    """
    if not threshold or not candidates:
        return
    rows: dict[tuple[str, int], list[tuple[str, list[int], str]]] = {}
    repointed: dict[str, str] = {}
    for cand in candidates:
        if cand.candidate_id in stored or cand.status != "new" or not cand.signature:
            continue
        key = (cand.failure_mode, len(cand.signature))
        if key not in rows:
            rows[key] = [(r[0], list(r[1]), r[2]) for r in con.execute(SIGNATURES_SQL, list(key)).fetchall()]
        best: tuple[float, str] | None = None
        for other_id, other_sig, other_hash in rows[key]:
            if other_hash == cand.input_hash:
                continue
            sim = sum(1 for a, b in zip(cand.signature, other_sig) if a == b) / len(other_sig)
            if sim >= threshold and (best is None or sim > best[0]):
                best = (sim, other_id)
        if best is not None:
            cand.status, cand.duplicate_of = "duplicate", best[1]
            repointed[cand.candidate_id] = best[1]
    for cand in candidates:  # a duplicate of one that turned out a duplicate itself: of the one it duplicates
        if cand.status == "duplicate" and cand.duplicate_of in repointed:
            cand.duplicate_of = repointed[cand.duplicate_of]


def upsert_candidates(
    con: duckdb.DuckDBPyConnection, candidates: Iterable[Candidate], now: dt.datetime
) -> dict[str, int]:
    """Insert new candidates and record recurrences of known ones. Idempotent per (candidate, trace).

    * unknown candidate_id: inserted with ``trace_ids = [trace_id]``, ``occurrences`` = 1,
      ``first_seen = last_seen = seen_at`` (when the trace's latest span arrived, else ``now``) and
      the candidate's own status / duplicate_of / signature;
    * known candidate_id, trace not yet in ``trace_ids``: the trace id is appended,
      ``occurrences`` + 1, ``first_seen`` / ``last_seen`` widened to its ``seen_at`` (a trace
      judged late, after a restart, may have arrived before others), severity raised if the new
      one is more severe;
      status, content and review fields are left as they are;
    * known candidate_id and trace (the trace judged again): nothing is counted; when the row was
      built from this trace (``source.trace_id``) and nobody has reviewed it (``new`` /
      ``duplicate``), its input / context / observed / expected / source are rebuilt from this
      judgement, which may have seen spans that arrived late (the root, the final answer).

    Candidates sharing an id within one call count as recurrences of the first. A handful
    of statements per call whatever its size; runs inside the caller's transaction.
    Returns counts ``{"inserted", "recurred", "unchanged"}``.
    """
    cands = list(candidates)
    counts = {"inserted": 0, "recurred": 0, "unchanged": 0}
    if not cands:
        return counts
    ids = sorted({c.candidate_id for c in cands})
    stored = {
        cid: (list(tids or []), sev)
        for cid, tids, sev in con.execute(
            f"SELECT candidate_id, trace_ids, severity FROM candidates WHERE list_contains({unpacked('?')}, candidate_id)",
            [packed(ids)],
        ).fetchall()
    }
    new_rows: dict[str, dict[str, Any]] = {}
    recur: dict[str, dict[str, Any]] = {}
    refresh: dict[str, dict[str, Any]] = {}
    for cand in cands:
        cid = cand.candidate_id
        if cid in new_rows:
            row = new_rows[cid]
            if cand.trace_id in row["trace_ids"]:
                counts["unchanged"] += 1
            else:
                row["trace_ids"].append(cand.trace_id)
                row["occurrences"] += 1
                seen = cand.seen_at or now
                row["first_seen"], row["last_seen"] = min(row["first_seen"], seen), max(row["last_seen"], seen)
                if _severity_rank(cand.severity) < _severity_rank(row["severity"]):
                    row["severity"] = cand.severity
                counts["recurred"] += 1
            continue
        if cid not in stored:
            dup = cand.status == "duplicate"
            seen = cand.seen_at or now
            new_rows[cid] = {
                "candidate_id": cid, "detector": cand.detector, "failure_mode": cand.failure_mode,
                "severity": cand.severity, "blast_radius": cand.blast_radius, "input_hash": cand.input_hash,
                "intent": cand.intent, "input": _dumps(cand.input), "context": _dumps(cand.context),
                "observed": _dumps(cand.observed), "expected": _dumps(cand.expected), "source": _dumps(cand.source),
                "status": "duplicate" if dup else "new", "duplicate_of": cand.duplicate_of if dup else None,
                "occurrences": 1, "trace_ids": [cand.trace_id], "signature": list(cand.signature) or None,
                "first_seen": seen, "last_seen": seen,
            }
            counts["inserted"] += 1
            continue
        trace_ids, severity = stored[cid]
        seen = cand.seen_at or now
        entry = recur.setdefault(cid, {"candidate_id": cid, "add_trace_ids": [], "severity": severity,
                                       "first_seen": seen, "last_seen": seen})
        if cand.trace_id in trace_ids or cand.trace_id in entry["add_trace_ids"]:
            if cand.trace_id in trace_ids:  # the trace judged again: it may have more spans now
                refresh.setdefault(cid, {
                    "candidate_id": cid, "trace_id": cand.trace_id, "input": _dumps(cand.input),
                    "context": _dumps(cand.context), "observed": _dumps(cand.observed),
                    "expected": _dumps(cand.expected), "source": _dumps(cand.source)})
            counts["unchanged"] += 1
            continue
        entry["add_trace_ids"].append(cand.trace_id)
        entry["first_seen"], entry["last_seen"] = min(entry["first_seen"], seen), max(entry["last_seen"], seen)
        if _severity_rank(cand.severity) < _severity_rank(entry["severity"]):
            entry["severity"] = cand.severity
        counts["recurred"] += 1

    if new_rows:
        table = pa.Table.from_pylist(list(new_rows.values()), schema=_NEW_ROWS_SCHEMA)
        with registered(con, "_tracesieve_new_candidates", table):
            con.execute(
                "INSERT INTO candidates (candidate_id, detector, failure_mode, severity, blast_radius, input_hash, "
                "intent, input, context, observed, expected, source, status, duplicate_of, occurrences, trace_ids, "
                "signature, first_seen, last_seen) "
                "SELECT candidate_id, detector, failure_mode, severity, blast_radius, input_hash, intent, input, "
                "context, observed, expected, source, status, duplicate_of, occurrences, trace_ids, signature, "
                "first_seen, last_seen FROM _tracesieve_new_candidates",
            )
    updates = [e for e in recur.values() if e["add_trace_ids"]]
    if updates:
        table = pa.Table.from_pylist(updates, schema=_RECURRENCE_SCHEMA)
        with registered(con, "_tracesieve_recurrences", table):
            con.execute(
                "UPDATE candidates SET "
                "trace_ids = list_concat(coalesce(candidates.trace_ids, []::VARCHAR[]), u.add_trace_ids), "
                "occurrences = candidates.occurrences + len(u.add_trace_ids), "
                "first_seen = least(coalesce(candidates.first_seen, u.first_seen), u.first_seen), "
                "last_seen = greatest(coalesce(candidates.last_seen, u.last_seen), u.last_seen), "
                "severity = u.severity "
                "FROM _tracesieve_recurrences AS u WHERE candidates.candidate_id = u.candidate_id",
            )
    if refresh:
        table = pa.Table.from_pylist(list(refresh.values()), schema=_REFRESH_SCHEMA)
        with registered(con, "_tracesieve_refreshed", table):
            con.execute(
                "UPDATE candidates SET input = r.input, context = r.context, observed = r.observed, "
                "expected = r.expected, source = r.source FROM _tracesieve_refreshed AS r "
                "WHERE candidates.candidate_id = r.candidate_id AND candidates.status IN ('new', 'duplicate') "
                "AND json_extract_string(candidates.source, '$.trace_id') = r.trace_id")
    return counts


def _row_dict(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(names, row):
        if name in JSON_COLUMNS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[name] = value
    return out


def _check_choice(what: str, value: str | None, choices: Sequence[str]) -> None:
    if value is not None and value not in choices:
        raise UsageError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def list_candidates(
    con: duckdb.DuckDBPyConnection,
    status: str | None = None,
    mode: str | None = None,
    severity: str | None = None,
    since: dt.datetime | str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Candidates matching every given filter, most severe first, then most recently seen (JSON columns parsed).

    ``since`` keeps rows whose ``last_seen`` is at or after it (a datetime or an ISO 8601
    string). Unknown status / mode / severity values and a negative limit raise UsageError.
    Read-only.
    """
    _check_choice("status", status, CANDIDATE_STATUSES)
    _check_choice("failure mode", mode, FAILURE_MODES)
    _check_choice("severity", severity, SEVERITIES)
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("status", status), ("failure_mode", mode), ("severity", severity)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        if isinstance(since, str):
            try:
                since = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError:
                raise UsageError(f"--since {since!r} is not an ISO 8601 time") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
        where.append("last_seen >= ?")
        params.append(since)
    sql = f"SELECT {', '.join(PUBLIC_COLUMNS)} FROM candidates"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY severity, last_seen DESC, candidate_id"  # most severe first (P0 < P3), newest first
    if limit is not None:
        if limit < 0:
            raise UsageError(f"limit must be 0 or more, got {limit}")
        sql += f" LIMIT {int(limit)}"
    rows = con.execute(sql, params).fetchall()
    return [_row_dict(PUBLIC_COLUMNS, row) for row in rows]


def count_candidates(con: duckdb.DuckDBPyConnection, status: str | None = None) -> int:
    """How many candidates there are (with ``status``, when given). Read-only."""
    _check_choice("status", status, CANDIDATE_STATUSES)
    if status is None:
        row = first_row(con, "SELECT count(*) FROM candidates")
    else:
        row = first_row(con, "SELECT count(*) FROM candidates WHERE status = ?", [status])
    return int(row[0]) if row is not None else 0


def get_candidate(con: duckdb.DuckDBPyConnection, candidate_id: str) -> dict[str, Any] | None:
    """One candidate as a dict (JSON columns parsed), or None. Read-only."""
    row = first_row(con, f"SELECT {', '.join(PUBLIC_COLUMNS)} FROM candidates WHERE candidate_id = ?",
                    [candidate_id])
    return None if row is None else _row_dict(PUBLIC_COLUMNS, row)


def _require(con: duckdb.DuckDBPyConnection, candidate_id: str) -> tuple[str, str | None]:
    row = first_row(con, "SELECT status, case_id FROM candidates WHERE candidate_id = ?", [candidate_id])
    if row is None:
        raise NotFoundError(f"no candidate {candidate_id!r} (list them with `tracesieve candidates`)")
    return row[0], row[1]


def mark_promoted(
    con: duckdb.DuckDBPyConnection, candidate_id: str, case_id: str, owner: str, now: dt.datetime
) -> None:
    """Record that ``candidate_id`` became case ``case_id``, reviewed by ``owner``.

    NotFoundError for an unknown id; UsageError when it is already promoted or rejected (checked here,
    inside the write, since another reviewer may have decided since the caller read it).
    """
    status, existing_case = _require(con, candidate_id)
    if status == "promoted":
        raise UsageError(f"candidate {candidate_id} is already promoted as {existing_case}")
    if status == "rejected":
        raise UsageError(f"candidate {candidate_id} was rejected meanwhile; it cannot be promoted")
    if not owner:
        raise UsageError("promoting needs an owner (--owner NAME)")
    con.execute(
        "UPDATE candidates SET status = 'promoted', case_id = ?, reviewed_by = ?, reviewed_at = ? "
        "WHERE candidate_id = ?",
        [case_id, owner, now, candidate_id],
    )


def mark_rejected(
    con: duckdb.DuckDBPyConnection, candidate_id: str, reason: str, by: str, now: dt.datetime
) -> None:
    """Reject ``candidate_id`` with a reason; the row is kept.

    NotFoundError for an unknown id; UsageError for an empty reason or a candidate that
    is already promoted (remove its case instead) or already rejected.
    """
    status, existing_case = _require(con, candidate_id)
    if not reason or not reason.strip():
        raise UsageError("rejecting needs a reason (--reason TEXT)")
    if status == "promoted":
        raise UsageError(
            f"candidate {candidate_id} is promoted as {existing_case}; remove the case through "
            "cases_removed.yaml instead of rejecting it"
        )
    if status == "rejected":
        raise UsageError(f"candidate {candidate_id} is already rejected")
    con.execute(
        "UPDATE candidates SET status = 'rejected', review_reason = ?, reviewed_by = ?, reviewed_at = ? "
        "WHERE candidate_id = ?",
        [reason.strip(), by, now, candidate_id],
    )


def signatures_for_mode(
    con: duckdb.DuckDBPyConnection, failure_mode: str, length: int
) -> list[tuple[str, list[int]]]:
    """``(candidate_id, signature)`` of every non-duplicate candidate of a mode, oldest first."""
    return [(cid, list(sig)) for cid, sig in con.execute(SIGNATURES_SQL, [failure_mode, length]).fetchall()]


def withdraw_stale(con: duckdb.DuckDBPyConnection, trace_ids: Sequence[str], candidates: Iterable[Candidate],
                   detections: Iterable[Detection]) -> int:
    """Take ``trace_ids`` (traces judged again) off the candidates this judgement replaced or cleared.

    A span arriving after its trace was judged can change what the trace's failure is filed under (the
    root, with the user's question, is often exported last) or end the failure. A candidate that
    counts one of these traces loses it (from ``trace_ids``, and one occurrence) when this judgement
    files the trace's failure of the same detector and mode under another candidate, or finds no
    such failure any more. A failure still detected but filed nowhere (past ``max_per_intent``)
    stays where it was. A candidate left with no trace is deleted when nobody has reviewed it
    (``new`` / ``duplicate``), and the rows marked a duplicate of it become ``new``; a reviewed one
    (promoted / rejected) is kept, since the review is a record of its own.

    Writer thread, inside the caller's transaction; one read when no candidate counts these traces.
    Returns how many candidates lost a trace.
    """
    if not trace_ids:
        return 0
    filed = {(c.trace_id, c.detector, c.failure_mode): c.candidate_id for c in candidates}
    found = {(d.trace_id, d.detector, d.failure_mode) for d in detections}
    rejudged = set(trace_ids)
    rows = con.execute(
        "SELECT candidate_id, detector, failure_mode, trace_ids, status FROM candidates "
        f"WHERE list_has_any(trace_ids, {unpacked('?')})", [packed(sorted(rejudged))]).fetchall()
    updates: list[dict[str, Any]] = []
    gone: list[str] = []
    for cid, detector, mode, tids, status in rows:
        stale = [t for t in tids or [] if t in rejudged and (
            (t, detector, mode) not in found or filed.get((t, detector, mode), cid) != cid)]
        if not stale:
            continue
        left = [t for t in tids if t not in stale]
        if not left and status in ("new", "duplicate"):
            gone.append(cid)
        else:
            updates.append({"candidate_id": cid, "trace_ids": left, "removed": len(stale)})
    if updates:
        table = pa.Table.from_pylist(updates, schema=pa.schema([
            ("candidate_id", pa.string()), ("trace_ids", pa.list_(pa.string())), ("removed", pa.int64())]))
        with registered(con, "_tracesieve_withdrawn", table):
            con.execute(
                "UPDATE candidates SET trace_ids = w.trace_ids, "
                "occurrences = greatest(candidates.occurrences - w.removed, 0) "
                "FROM _tracesieve_withdrawn AS w WHERE candidates.candidate_id = w.candidate_id")
    if gone:
        con.execute(f"DELETE FROM candidates WHERE list_contains({unpacked('?')}, candidate_id)", [packed(gone)])
        con.execute(
            "UPDATE candidates SET status = 'new', duplicate_of = NULL "
            f"WHERE status = 'duplicate' AND list_contains({unpacked('?')}, duplicate_of)", [packed(gone)])
    return len(updates) + len(gone)
