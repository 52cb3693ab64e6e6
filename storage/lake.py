"""Opening a DuckLake store: offline extensions, the catalog attach, lake migrations and serialised commits.

A lake is many writers on one store: its catalog is a PostgreSQL database, its
data Parquet files under ``data_path``. DuckLake has no primary keys and no
``ON CONFLICT``, and two concurrent inserts of the same row both commit. So
every tracesieve write transaction on a lake also bumps the one row of
``commit_token``: DuckLake then sees any two overlapping write transactions as
conflicting, exactly one commits and the other is retried from the start (new
snapshot, so its anti-joins see what the winner stored). Writes are therefore
serialisable across processes and machines, and the anti-join inserts of
:mod:`tracesieve.storage.lake_writes` are exact. Collectors also queue on a
PostgreSQL advisory lock (:class:`CommitLock`) before each write, so that
overlapping writers wait rather than redo their work; correctness never rests
on that lock.

The extensions come from the PyPI packages ``duckdb-extension-ducklake`` and
``duckdb-extension-postgres`` (extra ``tracesieve[lake]``): they are installed
from those files into a private extension directory, never from the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from tracesieve.storage import store
from tracesieve.storage.errors import UsageError
from tracesieve.storage.migrations import CANDIDATES_DDL, DETECTIONS_DDL, SPANS_DDL, TRACE_STATE_DDL

log = logging.getLogger("tracesieve.lake")

T = TypeVar("T")

#: (PyPI distribution, import package, file in the package, name DuckDB loads it under)
EXTENSION_PACKAGES = (
    ("duckdb-extension-ducklake", "duckdb_extension_ducklake", "ducklake.duckdb_extension", "ducklake"),
    ("duckdb-extension-postgres", "duckdb_extension_postgres", "postgres.duckdb_extension", "postgres_scanner"),
)
INSTALL_HINT = "pip install 'tracesieve[lake]'"

#: How long one write may keep retrying commit conflicts before the caller is told to retry.
RETRY_SECONDS = 60.0
_ALIAS = "tracesieve_lake"


@dataclasses.dataclass(frozen=True)
class LakeTarget:
    """Where a lake lives: ``catalog`` is ``postgres:<libpq connection string>``; data under ``data_path``."""

    catalog: str
    data_path: str

    @property
    def printable_catalog(self) -> str:
        return redact(self.catalog)


def redact(text: str) -> str:
    """The text with any ``password=...`` value hidden (catalog strings reach logs and errors), and the
    password of a libpq URI (``postgresql://user:secret@host/db``), which libpq takes as well."""
    # libpq values are bare words or single-quoted (with \' and \\ escapes, spaces allowed); error
    # texts quote the whole connection string in double quotes, which end a bare value.
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s'\"]+)", r"\1<redacted>", text,
                  flags=re.IGNORECASE)
    return re.sub(r"(postgres(?:ql)?://[^\s:/@'\"]*:)[^\s@'\"]*@", r"\1<redacted>@", text, flags=re.IGNORECASE)


# --------------------------------------------------------------------------- extensions


def missing_extension_packages() -> list[str]:
    """PyPI names of the extension packages that are not installed (empty when the lake can be used)."""
    return [dist for dist, module, _, _ in EXTENSION_PACKAGES if importlib.util.find_spec(module) is None]


def _extension_file(module: str, filename: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"DuckLake storage needs the DuckDB extension packages: {INSTALL_HINT}")
    base = Path(list(spec.submodule_search_locations)[0]) / "extensions" / f"v{duckdb.__version__}" / filename
    if not base.exists():
        raise UsageError(
            f"{module} carries no extension for DuckDB {duckdb.__version__} ({base} is missing): install the "
            f"package version matching duckdb=={duckdb.__version__}"
        )
    return base


def default_extension_directory() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "tracesieve", "duckdb-extensions")


def ensure_extensions(extension_directory: str | None = None) -> str:
    """Install the lake extensions from their pip packages into a private directory; return the directory.

    Idempotent and safe when several processes start at once (a file lock guards the install).
    Raises UsageError (one line, with the pip command) when the packages are missing.
    """
    missing = missing_extension_packages()
    if missing:
        raise UsageError(f"DuckLake storage needs {', '.join(missing)}: {INSTALL_HINT}")
    directory = extension_directory or default_extension_directory()
    try:
        os.makedirs(directory, exist_ok=True)
        lock = open(os.path.join(directory, ".install.lock"), "a+")  # noqa: SIM115 - held for the block below
    except OSError as exc:
        raise UsageError(f"cannot prepare the DuckDB extension directory {directory}: {exc.strerror}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        con = duckdb.connect(config={"extension_directory": directory, "autoinstall_known_extensions": False})
        try:
            installed = {
                name for name, ok in con.execute(
                    "SELECT extension_name, installed FROM duckdb_extensions()").fetchall() if ok
            }
            for _, module, filename, name in EXTENSION_PACKAGES:
                if name not in installed:
                    con.execute(f"INSTALL '{_extension_file(module, filename)}'")
        finally:
            con.close()
    return directory


def _connect_config(extension_directory: str) -> dict[str, str | bool | int | float | list[str]]:
    return {
        "extension_directory": extension_directory,
        "autoinstall_known_extensions": False,  # never reach for the network
        "autoload_known_extensions": True,       # ducklake + postgres_scanner from the directory above
    }


# --------------------------------------------------------------------------- opening


def open_lake(target: LakeTarget, *, read_only: bool = False, migrate: bool = True, create: bool = True,
              extension_directory: str | None = None) -> duckdb.DuckDBPyConnection:
    """A connection whose default database is the lake (so every cursor sees the tables unqualified).

    With ``migrate`` (writers), the lake is first attached with its data path and migrated; several
    processes may do this at once. With ``create`` (``serve``) an empty catalog database gets a new
    lake; without it (``promote``, ``reject``) it is refused like a reader refuses it, so a mistyped
    catalog never becomes a lake pinned to that command's data path. Raises UsageError in one line
    when the extensions are missing or the catalog cannot be reached.
    """
    directory = ensure_extensions(extension_directory)
    if migrate and not read_only:
        _bootstrap(target, directory, create=create)
    try:
        con = duckdb.connect(f"ducklake:{target.catalog}", read_only=read_only, config=_connect_config(directory))
    except duckdb.Error as exc:
        raise UsageError(_catalog_problem(target, exc)) from None
    store.read_times_in_utc(con)
    return con


def _catalog_problem(target: LakeTarget, exc: BaseException) -> str:
    first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    # DuckDB wraps libpq's answer in the attach call and the connection string, twice; keep libpq's words
    reason = re.search(r'Unable to connect to Postgres at ".*?failed: (?:FATAL:\s*)?(.*)$', first)
    if reason:
        first = reason.group(1).strip()
        if "does not exist" in first and "database" in first:
            first += " (the catalog database must exist: create it with createdb; tracesieve creates the tables)"
    elif "creating a new DuckLake is explicitly disabled" in first:  # a reader on a catalog never written
        first = "it holds no lake yet (the first `tracesieve serve` on it creates the tables)"
    return f"cannot open the DuckLake catalog {target.printable_catalog}: {first}"


def catalog_unreachable(target: LakeTarget, exc: BaseException) -> str | None:
    """One line saying the catalog cannot be reached, when ``exc`` is a statement that failed for that; else None.

    A statement on an open lake connects to the catalog again: while PostgreSQL is down, a command
    answered through a running collector got "internal error: IOException", which named neither the
    catalog nor what to do; a query that met the outage later, "query failed: IO Error: ..." with the
    catalog string as DuckDB quotes it, password included.
    """
    if isinstance(exc, (duckdb.Error, UsageError)) and "Unable to connect to Postgres" in str(exc):
        return _catalog_problem(target, exc) + " (run the command again once the catalog is back)"
    return None


def _check_data_path(data_path: str) -> None:
    """Create a local data path if needed and make sure files can be written there (UsageError if not).

    Without it, the first Parquet file written (the migration, or a collector's first commit) failed
    with DuckDB's IOException.
    """
    try:
        os.makedirs(data_path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_path, prefix=".tracesieve-write-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"storage.ducklake.data_path {data_path}: cannot write there: "
                         f"{exc.strerror or type(exc).__name__}") from None


def _bootstrap(target: LakeTarget, directory: str, *, create: bool) -> None:
    """Attach with DATA_PATH (with ``create``, making the catalog tables if the database is empty) and migrate."""
    if "://" not in target.data_path:
        _check_data_path(target.data_path)
    con = duckdb.connect(config=_connect_config(directory))
    try:
        data_path = target.data_path.replace("'", "''")
        catalog = target.catalog.replace("'", "''")
        create_option = "" if create else ", CREATE_IF_NOT_EXISTS false"
        last: BaseException | None = None
        for attempt in range(6):  # concurrent first attaches race to create the catalog tables
            try:
                con.execute(f"ATTACH 'ducklake:{catalog}' AS {_ALIAS} (DATA_PATH '{data_path}'{create_option})")
                break
            except duckdb.Error as exc:
                last = exc
                if not (is_conflict(exc) or "already exists" in str(exc).lower()):
                    break  # unreachable catalog, wrong data path...: retrying will not help
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
        if not any(row[0] == _ALIAS for row in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()):
            raise UsageError(_catalog_problem(target, last or RuntimeError("attach failed")))
        con.execute(f"USE {_ALIAS}")
        with contextlib.suppress(duckdb.Error):  # smaller files; not every DuckLake version knows the option
            con.execute(f"CALL {_ALIAS}.set_option('parquet_compression', 'zstd')")
        migrate_lake(con)
    finally:
        con.close()


# --------------------------------------------------------------------------- migrations

#: The commit token: one row that every write transaction updates, which makes DuckLake detect any two
#: overlapping tracesieve writes as a conflict (see the module docstring).
COMMIT_TOKEN_DDL = """
CREATE TABLE IF NOT EXISTS commit_token (
    id INTEGER NOT NULL,
    commits BIGINT NOT NULL,
    last_commit_at TIMESTAMPTZ,
    last_writer VARCHAR
)
"""

SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, description VARCHAR, applied_at TIMESTAMPTZ)
"""


def lake_ddl(ddl: str) -> str:
    """A DuckDB-file table definition as DuckLake accepts it: no keys, no per-column compression.

    Uniqueness is kept by the writers instead (anti-join inserts inside serialised commits).
    """
    ddl = re.sub(r",\s*PRIMARY KEY \([^)]*\)", "", ddl)
    ddl = ddl.replace(" PRIMARY KEY", "").replace(" USING COMPRESSION zstd", "")
    return ddl


def _lake_v1(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in (SPANS_DDL, DETECTIONS_DDL, CANDIDATES_DDL, TRACE_STATE_DDL):
        con.execute(lake_ddl(ddl))
    # Which collector last received spans of the trace: that one judges it (see lake_writes.LakeTraceStore).
    con.execute("ALTER TABLE trace_state ADD COLUMN IF NOT EXISTS owner VARCHAR")


def _lake_v5(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ALTER TABLE spans ADD COLUMN IF NOT EXISTS scope_attributes JSON")  # a v1 lake's spans lack it


#: (version, description, migration) for lakes; the same numbers as storage.migrations. Append only.
LAKE_MIGRATIONS: list[tuple[int, str, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    (1, "spans, detections, candidates, trace_state (+ owner), commit_token", _lake_v1),
    (5, "spans.scope_attributes: the instrumentation scope's attributes", _lake_v5),
]


def migrate_lake(con: duckdb.DuckDBPyConnection) -> None:
    """Create or upgrade the lake's tables; safe when several collectors start at once.

    All in one transaction that also creates and bumps the commit token, so concurrent migrators
    conflict, the losers retry and then find the work done.
    """
    def step(c: duckdb.DuckDBPyConnection) -> None:
        c.execute(SCHEMA_VERSION_DDL)
        c.execute(COMMIT_TOKEN_DDL)
        row = c.execute("SELECT max(version) FROM schema_version").fetchone()
        start = int(row[0]) if row and row[0] is not None else 0
        for version, description, migration in LAKE_MIGRATIONS:
            if version > start:
                migration(c)
                c.execute("INSERT INTO schema_version VALUES (?, ?, now())", [version, description])
        c.execute("INSERT INTO commit_token SELECT 1, 0, now(), 'migration' "
                  "WHERE NOT EXISTS (SELECT 1 FROM commit_token)")

    run_in_transaction(con, step, writer="migration")


# --------------------------------------------------------------------------- serialised commits


#: The advisory lock key writers queue on (PostgreSQL scopes advisory locks to the catalog database).
COMMIT_LOCK_KEY = 0x74726163657369  # "tracesi"
_LOCK_ALIAS = "tracesieve_commit_lock"


class CommitLock:
    """A PostgreSQL advisory lock on the catalog database, held around each lake write (a context manager).

    Why: DuckLake commits are optimistic, so under contention the losing writer redoes all its work
    (Parquet files included). Queuing on this lock first makes overlapping writers wait instead, and
    a DuckLake snapshot taken after the lock sees every earlier commit. Correctness never rests on it:
    the commit token still turns any overlap into a retried conflict. Attach it before
    forbid_file_access. Used by one thread (the writer's).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, target: LakeTarget, timeout_seconds: float = 30.0) -> None:
        libpq = target.catalog[len("postgres:"):].replace("'", "''")
        try:
            con.execute(f"ATTACH '{libpq}' AS {_LOCK_ALIAS} (TYPE postgres)")
        except duckdb.Error as exc:
            raise UsageError(_catalog_problem(target, exc)) from None
        self._cursor = con.cursor()
        self._sql = (f"CALL postgres_execute('{_LOCK_ALIAS}', 'SET LOCAL lock_timeout = "
                     f"{int(timeout_seconds * 1000)}; SELECT pg_advisory_xact_lock({COMMIT_LOCK_KEY})')")

    def __enter__(self) -> CommitLock:
        self._cursor.execute("BEGIN TRANSACTION")
        try:
            self._cursor.execute(self._sql)  # held until this cursor's transaction ends
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self._cursor.execute("ROLLBACK")
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(duckdb.Error):
            self._cursor.execute("ROLLBACK")  # nothing was written through it: ending it releases the lock


def is_conflict(exc: BaseException) -> bool:
    """Whether a failed lake statement or commit lost a race with another writer (worth retrying)."""
    if isinstance(exc, duckdb.TransactionException):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("conflict", "could not serialize", "duplicate key value", "concurrent",
                                   "lock timeout"))


def run_in_transaction(con: duckdb.DuckDBPyConnection, body: Callable[[duckdb.DuckDBPyConnection], T], *,
                       writer: str, retry_seconds: float = RETRY_SECONDS,
                       on_conflict: Callable[[], None] | None = None, lock: CommitLock | None = None) -> T:
    """Run ``body(con)`` in one lake transaction that also bumps the commit token; retry lost races.

    ``body`` must be safe to run again from scratch (it is, when it reads what it needs inside the
    transaction). Non-conflict errors are raised at once; conflicts are retried with jittered
    backoff until ``retry_seconds`` pass, then the last conflict is raised; ``on_conflict`` is
    called before each retry. With ``lock``, each attempt first queues on the fleet's commit lock.
    Caller's thread.
    """
    deadline = time.monotonic() + retry_seconds
    delay = 0.02
    attempt = 0
    while True:
        attempt += 1
        try:
            with lock if lock is not None else contextlib.nullcontext():
                con.execute("BEGIN TRANSACTION")
                try:
                    result = body(con)
                    con.execute(
                        "UPDATE commit_token SET commits = commits + 1, last_commit_at = now(), last_writer = ?",
                        [writer])
                    con.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(duckdb.Error):  # a failed COMMIT already ended the transaction
                        con.execute("ROLLBACK")
                    raise
            return result
        except duckdb.Error as exc:
            if not is_conflict(exc) or time.monotonic() + delay > deadline:
                raise
            log.debug("lake commit conflict (attempt %d, %s); retrying", attempt, writer)
            if on_conflict is not None:
                on_conflict()
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


def forbid_file_access(con: duckdb.DuckDBPyConnection, target: LakeTarget) -> None:
    """Like store.forbid_file_access, but the lake's own data directory stays readable and writable."""
    if "://" in target.data_path:
        log.warning("the query surface can reach remote files: the lake data path %s is not local",
                    target.data_path)
        return
    path = (os.path.abspath(target.data_path).rstrip("/") + "/").replace("'", "''")
    con.execute(f"SET allowed_directories = ['{path}']")
    con.execute("SET enable_external_access = false")
