"""Operator SQL detector rules: how they are wrapped to run, and how they are checked at config time.

An operator rule is one ``SELECT`` over a table named ``spans`` that returns the
columns ``trace_id, span_id, message, evidence``. At judge time it must see only
the spans of the traces being judged, so :func:`wrap_rule_sql` puts it inside a
query whose CTE ``spans`` shadows the real table::

    WITH spans AS (SELECT * FROM main.spans
                   WHERE received_at >= ? AND trace_id IN (SELECT unnest(string_split(?, chr(31)))))
    SELECT trace_id, span_id, message, evidence FROM (<rule sql>) AS operator_rule

The rule sits in a subquery, so a rule that has its own ``WITH`` (even
``WITH RECURSIVE``) needs no rewriting: its CTEs are scoped to the subquery and
still see the outer ``spans``. The parameters: the earliest ``received_at`` among the judged
spans (so DuckDB skips older row groups instead of joining the whole table each round; left out
when some span has none), and the trace ids, packed into one string
(:mod:`tracesieve.storage.sqlparams`).

:class:`RuleSqlChecker` compiles a rule at config time against an in-memory
DuckDB holding an empty ``spans`` table of the real shape
(:data:`tracesieve.storage.migrations.SPANS_DDL`), so syntax errors, unknown
columns, wrong result columns and extra parameters are found at startup. The
checker connection has external access disabled, and keeps its table outside
``main``: a rule reads ``spans`` only, never the stored table by a qualified name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator

import duckdb

from tracesieve.storage.migrations import SPANS_DDL
from tracesieve.storage.sqlparams import packed, unpacked

#: The columns an operator rule must return, in any order.
RULE_COLUMNS: tuple[str, ...] = ("trace_id", "span_id", "message", "evidence")


def strip_rule_sql(sql: str) -> str:
    """The rule text without surrounding whitespace and trailing semicolons (and what follows them:
    ``SELECT ...; -- note`` is one statement, which the wrapper's parentheses must not see the ``;`` of)."""
    text = sql.strip()
    try:
        tokens = duckdb.tokenize(text)  # comments are no tokens; a ';' in a string literal is inside one
    except (duckdb.Error, RuntimeError):
        tokens = []
    cut = None
    for pos, kind in reversed(tokens):
        if kind != duckdb.token_type.operator or text[pos] != ";":
            break
        cut = pos
    if cut is not None:
        text = text[:cut].rstrip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


#: Where the checker keeps its empty ``spans`` table: not ``main``, so that a rule naming the stored table
#: itself (``main.spans``, which at judge time is every span in the store) finds nothing and is refused.
_CHECK_SOURCE = "rule_check_source.spans"


def wrap_rule_sql(sql: str, *, received_bound: bool = True, source: str = "main.spans") -> str:
    """The statement to run for one rule; bind the earliest received_at of the judged spans (only with
    ``received_bound``), then their trace ids ``packed``. ``source`` is the stored table the CTE narrows."""
    body = strip_rule_sql(sql)
    columns = ", ".join(f"operator_rule.{c}" for c in RULE_COLUMNS)
    bound = "received_at >= ? AND " if received_bound else ""
    return (
        f"WITH spans AS (SELECT * FROM {source} WHERE {bound}trace_id IN (SELECT unnest({unpacked('?')})))\n"
        f"SELECT {columns} FROM (\n{body}\n) AS operator_rule"
    )


def fails_on_data(exc: BaseException) -> bool:
    """Whether a rule's run-time error comes from the values it read (a cast, a range, malformed JSON), so that
    the same rule may still run on other traces; not a missing table, a bind error or running out of memory."""
    return isinstance(exc, (duckdb.DataError, duckdb.InvalidInputException, duckdb.TypeMismatchException))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if line.startswith("Catalog Error: Table with name spans does not exist"):  # only a qualified name misses it
        return ("reads the stored table by a qualified name (main.spans: every span in the store); "
                "read spans, which holds only the traces being judged")
    return line


#: Seconds a rule may take on an empty ``spans`` at startup: one that runs longer on no spans at all (a join
#: to a huge ``range``) would hold the judge every round; it stalled startup instead of being reported.
CHECK_TIME_LIMIT = 5.0
_TOO_SLOW = (f"sql: still running after {CHECK_TIME_LIMIT:g}s on an empty spans table; a rule runs every few "
             "seconds, so it must not scan or generate rows of its own (range, a join without a key)")


@contextlib.contextmanager
def _interrupted_after(cur: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[None]:
    """Interrupt ``cur``'s statement once it has run ``seconds`` (it then raises InterruptException).

    The timer thread is joined, not left to die as a daemon: a CLI that exits right after a config error
    with it still holding the cursor aborted in DuckDB's destructor ("terminate called", SIGABRT).
    """
    timer = threading.Timer(seconds, cur.interrupt)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


class RuleSqlChecker:
    """Compiles operator rules against an empty in-memory ``spans`` table. Thread-safe; cheap to keep."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._con = duckdb.connect(":memory:")
        self._con.execute(SPANS_DDL)
        schema = _CHECK_SOURCE.split(".")[0]
        self._con.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {_CHECK_SOURCE} AS FROM main.spans; "
                          "DROP TABLE main.spans")
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")

    def check(self, sql: object) -> list[str]:
        """Every problem with one rule's SQL, as short messages (empty when the rule is usable)."""
        if not isinstance(sql, str) or not sql.strip():
            return ["sql: expected a non-empty SELECT statement"]
        body = strip_rule_sql(sql)
        try:
            statements = duckdb.extract_statements(body)
        except duckdb.Error as exc:
            return [f"sql: {_first_line(exc)}"]
        if len(statements) != 1:
            return [f"sql: expected exactly one statement, got {len(statements)}"]
        if statements[0].type != duckdb.StatementType.SELECT:
            return [f"sql: expected a SELECT statement, got {statements[0].type.name}"]
        if statements[0].named_parameters:  # nothing binds them: DuckDB's own words were about prepared statements
            return ["sql: a rule takes no parameters (? or $1); write the values into the SQL"]
        with self._lock:
            # The raw rule first: its own columns, before the wrapper reports them as missing.
            try:
                cur = self._con.cursor()
                with _interrupted_after(cur, CHECK_TIME_LIMIT):
                    cur.execute(f"WITH spans AS (FROM {_CHECK_SOURCE})\nSELECT * FROM (\n{body}\n) AS operator_rule LIMIT 0")
                names = [d[0] for d in (cur.description or [])]
                types = {d[0]: str(d[1]) for d in (cur.description or [])}
            except duckdb.InterruptException:
                return [_TOO_SLOW]
            except duckdb.Error as exc:
                return [f"sql: {_first_line(exc)}"]
            missing = [c for c in RULE_COLUMNS if c not in names]
            extra = [c for c in names if c not in RULE_COLUMNS]
            problems: list[str] = []
            if missing:
                problems.append(f"sql: result is missing column(s) {', '.join(missing)} "
                                f"(a rule returns {', '.join(RULE_COLUMNS)})")
            if extra:
                problems.append(f"sql: result has unexpected column(s) {', '.join(extra)} "
                                f"(put extra facts into evidence)")
            if len(set(names)) != len(names):
                problems.append("sql: result has duplicate column names")
            if not missing and types["trace_id"] != "VARCHAR":  # it could never name a judged trace
                problems.append(f"sql: trace_id must be text (VARCHAR), got {types['trace_id']}")
            if problems:
                return problems
            try:
                cur = self._con.cursor()
                with _interrupted_after(cur, CHECK_TIME_LIMIT):
                    cur.execute(wrap_rule_sql(body, source=_CHECK_SOURCE), [dt.datetime.now(dt.timezone.utc), packed([])])
                    cur.fetchall()
            except duckdb.InterruptException:
                return [_TOO_SLOW]
            except duckdb.Error as exc:
                return [f"sql: {_first_line(exc)}"]
        return []

    def close(self) -> None:
        """Release the in-memory database. Safe to call twice."""
        with self._lock:
            try:
                self._con.close()
            except duckdb.Error:
                pass


def check_rule_sql(sql: object) -> list[str]:
    """Problems with one operator rule (see :class:`RuleSqlChecker`); empty when it is usable."""
    checker = RuleSqlChecker()
    try:
        return checker.check(sql)
    finally:
        checker.close()
