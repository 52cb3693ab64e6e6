"""How a CLI command reaches a store: through the running collector, or by opening the file itself.

A lake (``storage.ducklake``) is always opened directly: it has no file lock.
``serve`` publishes its query surface in ``<db>.serve.json``; when that file
names a live process that accepts connections, commands talk to it over loopback
HTTP (DuckDB lets only one process open the file for writing). Otherwise they
open the file directly (read-only for reads). Both paths run the same :class:`StoreApi` operations.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import duckdb
import httpx

from tracesieve.collector.api import StoreApi, discovery_path, local_token_path
from tracesieve.storage import lake, store
from tracesieve.storage.errors import NotFoundError, StoreLockedError, TraceSieveError, UsageError
from tracesieve.storage.migrations import LATEST_VERSION, current_version


class StoreClient(Protocol):
    def call(self, op: str, args: dict[str, Any] | None = None) -> Any: ...

    def close(self) -> None: ...


#: How long the CLI waits for an answer beyond the collector's own query time limit.
ANSWER_MARGIN_SECONDS = 10.0
#: How long a command waits for the store file's lock when no collector serves it. DuckDB lets one
#: process write or several read: without a wait, `promote` failed while a colleague's `candidates`
#: held the file for a moment, and a command run just as `serve` started (before it published its
#: query surface) failed instead of finding the collector.
LOCK_WAIT_SECONDS = 10.0
LOCK_POLL_SECONDS = 0.1


def _published_certificate_context(cafile: str) -> ssl.SSLContext:
    """Trust the certificate the collector published in its discovery record, whatever names it carries.

    The CLI reaches the collector on 127.0.0.1 (or the endpoint's address), but an operator's certificate
    names the collector's DNS name: checking the name failed every command while `serve` ran ("IP address
    mismatch, certificate is not valid for '127.0.0.1'"). The file is the collector's own certificate (or
    its chain), so it is the trust anchor itself: partial-chain verification also accepts a leaf a CA
    signed, which the file alone could not otherwise verify.
    """
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:  # said bare, "[Errno 2] No such file or directory" named no file
        raise UsageError(f"cannot read the collector's certificate {cafile} (named in its .serve.json): "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class RemoteClient:
    def __init__(self, url: str, token: str | None, cafile: str | None = None, local_token: str | None = None,
                 query_time_limit: float | None = None) -> None:
        # The collector may guard its surface with a bearer token or an API key: send the one secret as both.
        if token is not None and not (token.isascii() and token.isprintable()):
            raise UsageError("TRACESIEVE_TOKEN holds a control or non-ASCII character, which no HTTP header can carry; "
                             "set it to the configured bearer token or API key")
        headers = {"authorization": f"Bearer {token}", "x-api-key": token} if token else {}
        if local_token:  # the collector's own secret for its user (<db>.serve.token)
            headers["x-tracesieve-local-token"] = local_token
        self.url = url
        self._sent_token = bool(token)
        self._sent_local_token = bool(local_token)
        verify: Any = _published_certificate_context(cafile) if cafile else True
        # The collector stops a query at its limit and answers why; waiting past that would hide the answer.
        timeout = max(120.0, (query_time_limit or 0.0) + ANSWER_MARGIN_SECONDS)
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=verify, trust_env=False)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.post(f"/api/{op}", json=args or {})
        except httpx.HTTPError as exc:
            raise TraceSieveError(f"cannot reach the collector at {self.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text.strip()[:200]}
        if response.status_code == 200:
            return body.get("result")
        message = body.get("error") or f"HTTP {response.status_code}"
        if response.status_code == 401:
            raise UsageError(f"the collector at {self.url} refused the request: {self._unauthenticated_hint(message)}")
        if response.status_code == 404 and body.get("kind") == "not_found":
            raise NotFoundError(message)
        if response.status_code in (400, 404):
            raise UsageError(message)
        if response.status_code == 503 and body.get("kind") == "unavailable":
            raise TraceSieveError(message)  # the collector says what stopped it (its shutdown)
        raise TraceSieveError(f"the collector failed: {message}")

    def _unauthenticated_hint(self, message: str) -> str:
        """What to do about a 401, from what was sent: the local token is refused only when auth is set.

        The one hint for every case told the collector's own user, refused for want of TRACESIEVE_TOKEN,
        to "run the command as the collector's user", and a wrong TRACESIEVE_TOKEN to set it.
        """
        if self._sent_local_token:  # this is the collector's user: auth is set and wants its credential
            if self._sent_token:
                return "TRACESIEVE_TOKEN is not the configured bearer token or API key"
            return "auth is set and TRACESIEVE_TOKEN is not; set it to the configured bearer token or API key"
        return (f"{message} (set TRACESIEVE_TOKEN to the configured bearer token or API key, or run the "
                "command as the collector's user)")

    def close(self) -> None:
        self._http.close()


class LocalClient:
    """``older_schema``: the version of a store an older tracesieve left, which a read opens without
    upgrading; a query that names what a later migration made (``scope_attributes``) is told so."""

    def __init__(self, con: duckdb.DuckDBPyConnection,
                 run_write: Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any] | None = None,
                 redact_text: Callable[[str], str] | None = None, older_schema: int | None = None) -> None:
        self._con = con
        self._older_schema = older_schema
        self.api = StoreApi(lambda: con, run_write or self._run_write, redact_text=redact_text)

    def _run_write(self, task: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        self._con.execute("BEGIN TRANSACTION")
        try:
            result = task(self._con)
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")
        return result

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """``op`` on the file, run in a thread so that Ctrl-C interrupts it: DuckDB's own check for signals
        stopped a running query only now and then (and then as a RuntimeError), else the CLI ran on."""
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, self.api.call(op, args or {})))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))

        worker = threading.Thread(target=run, name="tracesieve-call", daemon=True)
        worker.start()
        try:
            worker.join()
        except KeyboardInterrupt:
            self._con.interrupt()
            worker.join(5)
            raise
        ok, value = outcome[0]
        if not ok:
            if (op == "query" and self._older_schema is not None and isinstance(value, UsageError)
                    and "not found" in str(value)):
                raise UsageError(
                    f"{value} (this store is at schema version {self._older_schema} of {LATEST_VERSION}, as an older "
                    "tracesieve left it: the next `tracesieve serve` on it upgrades it)") from None
            raise value
        return value

    def close(self) -> None:
        self._con.close()


def running_collector(db_path: str) -> dict[str, Any] | None:
    """The discovery record of a live ``serve`` on this store, or None."""
    path = discovery_path(db_path)
    try:
        with open(path, encoding="utf-8") as fh:
            info: dict[str, Any] = json.load(fh)
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


def _seconds(value: Any) -> float | None:
    """A number of seconds from a discovery record (None when absent or not a number: an older collector)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _local_token(db_path: str) -> str | None:
    """The running collector's local token, when this user may read it (the collector's own user)."""
    try:
        with open(local_token_path(db_path), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _refused(url: str) -> bool:
    """True when nothing listens at ``url`` (a connection is refused); any other outcome is left to the call."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        with socket.create_connection((parsed.host, port), timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError, httpx.InvalidURL):
        return False


def connect(db_path: str, *, write: bool, token: str | None,
            redact_text: Callable[[str], str] | None = None) -> StoreClient:
    """A client on the store at ``db_path``: the running collector's, or the file opened directly.

    ``redact_text`` sanitizes what a review writes when the file is opened directly (a running
    collector sanitizes it with its own config).

    A discovery record whose pid is alive but whose port refuses connections is stale (serve was
    killed and the pid reused, or another process holds it): the file is then opened directly,
    unless something still holds its lock. A held lock is waited for up to :data:`LOCK_WAIT_SECONDS`
    (another command's moment on the file, or a `serve` that has opened it and not yet published).
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        info = running_collector(db_path)  # again after a wait: a starting `serve` publishes it late
        stale: str | None = None
        if info is not None:
            url = str(info["url"])
            if not _refused(url):
                return RemoteClient(url, token, info.get("cafile"), _local_token(db_path),
                                    _seconds(info.get("query_time_limit")))
            stale = url
        if not os.path.exists(db_path):
            raise NotFoundError(store.no_store_message(db_path))
        try:
            con = store.open_database(db_path, read_only=not write, existing_store=True)
            break
        except StoreLockedError as exc:
            if time.monotonic() < deadline:
                time.sleep(LOCK_POLL_SECONDS)
                continue
            error: UsageError = exc
        except UsageError as exc:
            error = exc
        if stale is None:
            raise error
        raise UsageError(f"cannot reach the collector at {stale} (connection refused), and {error}") from None
    store.forbid_file_access(con)  # the same SQL as through a running collector: no read_csv('/etc/...')
    found = current_version(con)  # a read leaves an older store as it is (only a writer migrates)
    return LocalClient(con, redact_text=redact_text, older_schema=found if found < LATEST_VERSION else None)


def connect_lake(target: lake.LakeTarget, *, write: bool,
                 redact_text: Callable[[str], str] | None = None) -> StoreClient:
    """A client on a lake: opened directly (no file lock), even while collectors write to it.

    Writes (promote, reject) run in serialised lake transactions, retried when they race a collector.
    """
    # a write migrates an existing lake but never creates one: only `serve` does, as for a DuckDB file
    con = lake.open_lake(target, read_only=not write, migrate=write, create=False)
    lake.forbid_file_access(con, target)
    return LocalClient(con, lambda task: lake.run_in_transaction(con, task, writer="cli"), redact_text)
