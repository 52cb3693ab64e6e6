"""The running collector: wires the store, writer, judge and both receivers, and shuts them down in order.

Lifecycle (``start`` then ``stop``, each called once from the main thread):

* start: open + migrate the store, start the writer and the judge (which first
  judges whatever a crash left pending), start gRPC and HTTP, then publish the
  query surface address in ``<db>.serve.json`` so CLI commands find it.
* stop (bounded by a deadline): stop accepting, let in-flight exports commit,
  judge every pending trace, commit, checkpoint, close, remove the address file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any

import duckdb
import uvicorn

from tracesieve.collector.api import Hangup, StoreApi, discovery_path, local_token_path
from tracesieve.collector.client import LOCK_POLL_SECONDS, LOCK_WAIT_SECONDS, running_collector
from tracesieve.collector.config import Config, Endpoint
from tracesieve.collector.export import ExportService, span_stage_for
from tracesieve.collector.grpc_receiver import start_grpc_server
from tracesieve.collector.http_receiver import build_app
from tracesieve.collector.judge import Judge
from tracesieve.collector.metrics import Metrics, StateSource, StoreState
from tracesieve.collector.runtime import HeapTrimmer, MemoryWatch, tune_garbage_collector
from tracesieve.collector.span_stage import ProcessSpanStage
from tracesieve.processors.promotion import PromotionProcessor
from tracesieve.storage import lake, recent_traces, stats, store
from tracesieve.storage.errors import ConfigError, StoreLockedError, UsageError
from tracesieve.storage.lake_writes import LakeTraceStore, LakeWriter
from tracesieve.storage.schema import CLOCK, utcnow
from tracesieve.storage.writer import GroupCommitWriter

log = logging.getLogger("tracesieve.server")

#: How long the HTTP port keeps an idle keep-alive connection open. The OTel SDKs' batch processors export
#: every 5 s and keep their connection (Node's exporters, Python's session); uvicorn's own 5 s closed it
#: just as the next export went out on it, and about one export in twenty from a steady Node agent met a
#: reset connection and waited a retry. Well above the SDKs' interval, so that race is gone; short enough
#: that a quiet agent's connection is given back.
HTTP_KEEP_ALIVE_SECONDS = 30


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it resolves beyond this machine


_PROTOCOL_NAMES = {"grpc": "gRPC", "http": "HTTP"}


def ensure_free(endpoint: Endpoint, protocol: str) -> None:
    """Raise OSError (one clear line) when nothing can listen on ``endpoint``, before anything starts.

    Otherwise a taken port surfaced as gRPC's own log line plus a RuntimeError, or uvicorn's, after
    the store and the span workers had started. SO_REUSEADDR, as the receivers bind: a port in
    TIME_WAIT after a restart is free.
    """
    if endpoint.port == 0:
        return
    where = f"receivers.otlp.protocols.{protocol}.endpoint"
    try:
        addresses = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {endpoint.address}: {exc.strerror} (check {where})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise OSError(f"cannot listen on {endpoint.address} for OTLP/{_PROTOCOL_NAMES[protocol]}: "
                              f"{exc.strerror or exc}; stop what uses it or change {where}") from None


def check_tls(endpoint: Endpoint, protocol: str, source: str) -> None:
    """Raise ConfigError (one line) when the endpoint's TLS certificate or key does not load, before anything starts.

    The receivers load them only once they start: a bad file surfaced as a traceback from the HTTP
    receiver's thread, or gRPC's own log lines, each followed by a misleading "address in use?".
    Loads them as the receivers will (PEM, an unencrypted key that matches the certificate).
    """
    tls = endpoint.tls
    if tls is None:
        return
    where = f"receivers.otlp.protocols.{protocol}.tls"

    def refuse(problem: str) -> ConfigError:
        return ConfigError([f"{where}: {problem}"], source)

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=tls.cert_file)
    except ssl.SSLError:
        raise refuse(f"cert_file {tls.cert_file} holds no PEM certificate") from None
    except OSError as exc:
        raise refuse(f"cannot read cert_file {tls.cert_file}: {exc.strerror or exc}") from None
    try:
        # A password callback: an encrypted key fails here instead of prompting on the terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise refuse(f"key_file {tls.key_file} is not the key of cert_file {tls.cert_file}") from None
        raise refuse(f"key_file {tls.key_file} holds no unencrypted PEM private key") from None
    except OSError as exc:
        raise refuse(f"cannot read key_file {tls.key_file}: {exc.strerror or exc}") from None


def warn_if_exposed(cfg: Config) -> list[str]:
    """Log a WARNING for each receiver bound beyond loopback with no auth; returns the addresses."""
    if cfg.bearer_token or cfg.api_key:
        return []
    exposed = [ep.address for ep in (cfg.grpc, cfg.http) if ep is not None and not is_loopback(ep.host)]
    for address in exposed:
        log.warning("listening on %s without auth: anyone who can reach it can send spans and query the store; "
                    "set receivers.otlp.auth (bearer_token or api_key) or bind 127.0.0.1", address)
    return exposed



def _write_atomically(path: str, text: str, mode: int) -> None:
    """Write ``path`` through a temporary file (readers never see half of it), with ``mode``.

    On a full disk the temporary file is removed and the error names ``path``: the bare OSError
    said "[Errno 28] No space left on device" and left ``<path>.tmp`` behind.
    """
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(exc.errno, exc.strerror, path) from None


class _HttpServer(uvicorn.Server):
    """uvicorn, except that at shutdown an idle TLS connection is dropped at once.

    uvicorn ends an idle keep-alive connection with ``transport.close()``, which on TLS sends
    close_notify and waits for the client's; an exporter's pooled connection (the OTel HTTP exporter
    keeps one per process) never answers, so with TLS on every stop waited uvicorn's whole 10 s grace,
    and took those 10 s from judging the pending traces. A connection still answering a request is left
    to finish, as before; one uvicorn cancels at the end of the grace is let finish its answer.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            idle = cycle is None or getattr(cycle, "response_complete", False)
            if idle and transport is not None and transport.get_extra_info("sslcontext") is not None:
                transport.abort()
        await super().shutdown(sockets)
        # The calls cancelled at the end of the grace are writing their "shutting down" answer; let them
        # finish it before the loop closes rather than cancel them a second time halfway through.
        answering = [task for task in self.server_state.tasks if not task.done()]
        if answering:
            await asyncio.wait(answering, timeout=2.0)


class Collector:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.metrics.expect_redaction_types(config.redaction_types)
        self._ready = False
        self._read_lock = threading.Lock()
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._query_port: int | None = None  # the query surface's own port, when the HTTP receiver is off

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        cfg = self.config
        for endpoint, name in ((cfg.grpc, "grpc"), (cfg.http, "http")):
            if endpoint is not None:
                check_tls(endpoint, name, cfg.source)
        for endpoint, name in ((cfg.grpc, "grpc"), (cfg.http, "http")):
            if endpoint is not None:
                try:
                    ensure_free(endpoint, name)
                except OSError:
                    if cfg.lake is None:
                        refuse_if_served(cfg.db_path)
                    raise
        trace_store: LakeTraceStore | None = None
        self.writer: GroupCommitWriter
        if cfg.lake is not None:
            # One store, many collectors: serialised lake commits, and this collector judges the traces it owns.
            owner = lake_owner_id(cfg)
            self.con = lake.open_lake(cfg.lake)
            commit_lock = lake.CommitLock(self.con, cfg.lake)
            lake.forbid_file_access(self.con, cfg.lake)
            self.writer = LakeWriter(self.con, owner=owner, lock=commit_lock,
                                     max_queued_spans=cfg.limits.max_queued_spans, retry_after=cfg.limits.retry_after,
                                     on_commit=self.metrics.observe_commit)
            # promotion decides from a read made before its write: the lake applies its cap and
            # near-duplicate bar again inside the serialised write, where other collectors' rows are seen
            promotion = next((p.config for p in cfg.trace_processors if isinstance(p, PromotionProcessor)), None)
            trace_store = LakeTraceStore(owner, takeover=lake_takeover(cfg.decision_wait),
                                         max_per_intent=promotion.max_per_intent if promotion else 0,
                                         near_duplicate_threshold=(promotion.near_duplicate_threshold
                                                                   if promotion else 0.0))
        else:
            self.con = _open_store(cfg.db_path)
            recent_traces.fit_at_start(self.con)  # before the memory limit: a store from before pruning
            store.tune_for_ingest(self.con)
            CLOCK.not_before(store.latest_received_at(self.con))  # a clock stepped back while stopped
            store.forbid_file_access(self.con)
            self.writer = GroupCommitWriter(self.con, max_queued_spans=cfg.limits.max_queued_spans,
                                            retry_after=cfg.limits.retry_after, on_commit=self.metrics.observe_commit,
                                            on_checkpoint=self.metrics.observe_checkpoint)
        self._trace_store = trace_store
        self._read_base = store.cursor(self.con)
        self._stage = span_stage_for(cfg)
        self.memory = MemoryWatch(self._stage.worker_pids).start()
        self.service = ExportService(cfg, self.writer, self.metrics.receiver("grpc"), self._stage, self.memory)
        self.http_service = ExportService(cfg, self.writer, self.metrics.receiver("http"), self._stage, self.memory)
        self.judge = Judge(store.cursor(self.con), self.writer, cfg.trace_processors, cfg.decision_wait, self.metrics,
                           trace_store, rule_finder=self._stage if isinstance(self._stage, ProcessSpanStage) else None,
                           step_ids=cfg.trace_processor_ids)
        self.api = StoreApi(self._new_read_cursor, lambda task: self.writer.submit_task(task).result(timeout=60),
                            query_time_limit=cfg.query_time_limit, redact_text=cfg.redact_text)
        self.judge.start()
        self.metrics.watch(StateSource(lambda: self.writer.queued_spans, lambda: self.judge.pending,
                                       self._store_state, lambda: self.writer.wal_bytes, lambda: self.memory.resident))
        self._grpc = None
        self._uvicorn: uvicorn.Server | None = None
        try:
            if cfg.grpc:
                self._grpc, self.grpc_port = start_grpc_server(cfg.grpc, self.service)
            if cfg.http:
                self._start_http()
            else:
                self._start_query_surface()
        except BaseException:
            self._abort_start()
            raise
        # Only once both listen: a port refused at start is one error line, not a warning about
        # a listener that never was before it.
        warn_if_exposed(cfg)
        tune_garbage_collector()
        self._trimmer = HeapTrimmer().start()
        self._ready = True
        self._write_discovery()

    def _start_http(self) -> None:
        ep = self.config.http
        assert ep is not None
        app = build_app(self.http_service, metrics_text=self.metrics.render, ready=self.ready, api=self._api_call)
        tls = {"ssl_certfile": ep.tls.cert_file, "ssl_keyfile": ep.tls.key_file} if ep.tls else {}
        self.http_port = self._serve_http(app, ep.host, ep.port, f"the HTTP receiver on {ep.address}", tls)

    def _api_call(self, op: str, args: dict[str, Any], hangup: Hangup | None = None) -> list[bytes]:
        """The query surface's call; on a lake, a catalog that cannot be reached is said so in one line."""
        try:
            return self.api.call_json(op, args, hangup)
        except (duckdb.Error, UsageError) as exc:
            unreachable = lake.catalog_unreachable(self.config.lake, exc) if self.config.lake else None
            if unreachable is None:
                raise
            raise UsageError(unreachable) from None

    def _start_query_surface(self) -> None:
        """With the HTTP receiver off, the query surface alone on a free loopback port: every CLI command
        must work while ``serve`` runs (DuckDB lets only this process open the store), whatever it receives."""
        app = build_app(self.http_service, metrics_text=self.metrics.render, ready=self.ready, api=self._api_call,
                        otlp=False)
        self._query_port = self._serve_http(app, "127.0.0.1", 0, "the query surface on 127.0.0.1", {})

    def _serve_http(self, app: Any, host: str, port: int, what: str, tls: dict[str, Any]) -> int:
        """Run ``app`` on uvicorn in a thread; returns the bound port once it listens (``what``: its name
        in the error when it cannot)."""
        server = _HttpServer(uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=10, limit_concurrency=1024, backlog=2048,
            timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS, **tls,
        ))
        self._uvicorn = server
        self._http_thread = threading.Thread(target=server.run, name="tracesieve-http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"cannot start {what} (address in use?)")
            time.sleep(0.02)
        sockets = [s for srv in server.servers for s in srv.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _abort_start(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0)
        self.memory.stop()
        self._stage.shutdown()
        self.judge.stop()
        self.writer.close()
        self.con.close()

    def _new_read_cursor(self) -> Any:
        with self._read_lock:
            return store.cursor(self._read_base)

    def _write_discovery(self) -> None:
        ep = self.config.http
        if ep is None:
            url, cafile = f"http://127.0.0.1:{self._query_port}", None
        else:
            host = "127.0.0.1" if ep.host in ("0.0.0.0", "", "::") else ep.url_host
            url = f"{'https' if ep.tls else 'http'}://{host}:{self.http_port}"
            # absolute: a path relative to serve's directory named no file for a command run elsewhere
            cafile = os.path.abspath(ep.tls.cert_file) if ep.tls else None
        info = {"pid": os.getpid(), "url": url, "cafile": cafile, "db": os.path.abspath(self.config.db_path),
                "query_time_limit": self.config.query_time_limit}
        if self.config.lake is not None:  # --db only names this record: what a report calls the store
            info["store"] = f"DuckLake {self.config.lake.printable_catalog}"
        # the local token first (the CLI reads it once it finds the collector), for this user only
        _write_atomically(local_token_path(self.config.db_path), self.http_service.local_token, 0o600)
        # readable by other accounts, unlike the store (serve runs with umask 077): it holds no secret, and
        # an account that holds the token finds the collector through it
        _write_atomically(discovery_path(self.config.db_path), json.dumps(info), 0o644)

    # ------------------------------------------------------------------ metrics

    def ready(self) -> bool:
        """Storage open, receivers started and the writer thread running; False from the start of ``stop``."""
        return self._ready and self.writer.running

    def _store_state(self) -> StoreState:
        cur = self._new_read_cursor()
        quiet_since = utcnow() - dt.timedelta(seconds=self.config.decision_wait)
        return StoreState(stats.detections_by_mode(cur), stats.candidates_by_status(cur),
                          (self._trace_store or store).settled_backlog_seconds(cur, quiet_since))

    def status(self) -> dict[str, float]:
        """Figures for the periodic status line: spans accepted so far, queued spans, pending traces, detections."""
        return {"spans_accepted": self.metrics.spans_accepted_total(), "queued_spans": self.writer.queued_spans,
                "pending_traces": self.judge.pending,
                "detections": stats.count_detections(self._new_read_cursor())}

    def _store_description(self) -> str:
        """The store spans are written to: the DuckDB file, or a lake's catalog (password hidden) and data path.

        With a lake, ``--db`` only names where the query surface is published; the startup block named
        that unwritten ``tracesieve.duckdb`` as the store.
        """
        lake = self.config.lake
        if lake is None:
            return os.path.abspath(self.config.db_path)
        return f"DuckLake {lake.printable_catalog}, data {lake.data_path}"

    def startup_info(self) -> dict[str, Any]:
        """What ``serve`` prints once it is up: endpoints with scheme, store, pipeline, effective limits."""
        cfg = self.config

        def url(ep: Any, port: int | None) -> str | None:
            if ep is None:
                return None
            return f"{'https' if ep.tls else 'http'}://{ep.url_host}:{port}"

        tree = cfg.tree
        return {
            "grpc": url(cfg.grpc, self.grpc_port),
            "http": url(cfg.http, self.http_port),
            "query_surface": f"http://127.0.0.1:{self._query_port}" if self._query_port else None,
            "store": self._store_description(),
            "pipeline": list(tree.get("service", {}).get("pipelines", {}).get("traces", {}).get("processors", [])),
            "limits": dict(tree.get("receivers", {}).get("otlp", {}).get("limits", {})),
            "span_workers": cfg.span_workers,
            "decision_wait_seconds": cfg.decision_wait,
            "auth": "bearer token" if cfg.bearer_token else "off",
        }

    # ------------------------------------------------------------------ stop

    def stop(self, deadline_seconds: float = 20.0) -> None:
        """Stop accepting, commit everything acknowledged, judge pending traces, close. Idempotent."""
        if not self._ready:
            return
        self._ready = False
        deadline = time.monotonic() + deadline_seconds
        with contextlib.suppress(OSError):
            path = discovery_path(self.config.db_path)
            with open(path, encoding="utf-8") as fh:
                if json.load(fh).get("pid") == os.getpid():
                    os.remove(path)
                    with contextlib.suppress(OSError):
                        os.remove(local_token_path(self.config.db_path))
        grpc_stopped = self._grpc.stop(grace=min(5.0, deadline_seconds / 4)) if self._grpc else None
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            # uvicorn cancels a call still open after its grace, and that call then answers "serve is
            # shutting down": wait past the grace for that answer, or the process can exit halfway through
            # it (the client read the headers and then a closed connection)
            grace = self._uvicorn.config.timeout_graceful_shutdown or 0.0
            self._http_thread.join(timeout=max(1.0, min(grace + 3.0, deadline - time.monotonic())))
        if grpc_stopped is not None:
            grpc_stopped.wait(timeout=max(0.5, deadline - time.monotonic()))
        self.judge.stop()
        self._trimmer.stop()
        self.memory.stop()
        if self.writer.fatal is not None:
            self._stage.shutdown()
            # The instance refuses every statement: nothing to judge or checkpoint; the WAL holds the commits.
            self.writer.close(timeout=1.0)
            self.config.shutdown_processors()
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            log.info("tracesieve stopped after a store failure: %d spans committed this run",
                     self.writer.stats.committed_spans)
            return
        try:
            judged = self.judge.drain(deadline - 2.0)  # the span workers are still up: they run the rules
        except Exception as exc:  # e.g. a lake's catalog is down: what is pending stays pending, not lost
            judged = 0
            log.error("judging at shutdown failed (%s: %s); the pending traces are judged on the next start",
                      type(exc).__name__, lake.redact(str(exc)[:200]))
        self._stage.shutdown()
        self.writer.close(timeout=max(1.0, deadline - time.monotonic()))
        self.config.shutdown_processors()
        self.con.close()
        log.info("tracesieve stopped: %d spans committed this run, %d traces judged at shutdown, "
                 "%d checkpoints (%d deferred)", self.writer.stats.committed_spans, judged,
                 self.writer.stats.checkpoints, self.writer.stats.checkpoints_deferred)


def lake_owner_id(cfg: Config) -> str:
    """This collector's name in a lake's trace_state.owner: stable across restarts of the same instance.

    Host plus the receiver endpoints, so a restarted instance finds the traces it left pending, and
    two collectors on one host (different ports) never share a name.
    """
    ports = ",".join(ep.address for ep in (cfg.grpc, cfg.http) if ep is not None)
    return f"{socket.gethostname()}/{ports}"


def lake_takeover(decision_wait: float) -> dt.timedelta:
    """How long a trace's owner may stay silent before any collector judges it (owner crashed or gone)."""
    return dt.timedelta(seconds=max(30.0, 6 * decision_wait))


def refuse_if_served(db_path: str) -> None:
    """Raise UsageError naming the live ``serve`` (pid, query surface) that serves ``db_path``, if any.

    Also asked when a receiver's port is taken: the same ``serve`` command run twice collides on its
    ports before it reaches the store's lock, and "another serve holds this store" is what to fix.
    """
    info = running_collector(db_path)
    if info is not None:
        raise UsageError(f"{db_path} is already served by tracesieve serve (pid {info.get('pid')}, "
                         f"{info.get('url')}); stop that one first, or give this one another --db") from None


def _open_store(db_path: str) -> duckdb.DuckDBPyConnection:
    """The store for ``serve``; a store another ``serve`` holds is refused naming that one (pid, query surface).

    A lock held for a moment by something else (a command reading the file while no collector serves it,
    as an operator's dashboard or cron job does) is waited for up to LOCK_WAIT_SECONDS, as the commands
    wait: a supervisor's restart after a crash failed (exit 2, "locked by another process") whenever a
    ``tracesieve query`` happened to be reading the file at that moment.
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            return store.open_database(db_path)
        except StoreLockedError:
            refuse_if_served(db_path)
            if time.monotonic() >= deadline:
                raise
            time.sleep(LOCK_POLL_SECONDS)
        except UsageError:
            refuse_if_served(db_path)
            raise
