"""The ``tracesieve`` command line. The only module that prints, exits or reads the environment.

Exit codes: 0 ok; 1 gate or lint found failures; 2 usage error, bad input,
unknown id, missing file, refused statement. Every error is one line on stderr.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import sys
import threading
import time


class _StopRequest:
    """SIGTERM/SIGINT for ``serve``, recorded from the first line of this module on.

    The default action of SIGTERM kills the process without a word, so a stop asked for while
    ``serve`` was still importing and opening its store ended it with -15 instead of 0. Until the
    collector runs, a request is only recorded; ``serve`` honours it once start-up reaches the
    point where it can drain (or exits 0 at once when nothing is open yet). Main thread only.

    The handler takes no lock: it runs in the main thread between two bytecodes, possibly while
    that thread holds a lock itself (setting a threading.Event there deadlocked inside
    Event.wait). It stores the signal number and writes a byte to a pipe that :meth:`wait` watches.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._wake: tuple[int, int] | None = None  # (read end, non-blocking write end)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def record(self, signum: int, frame: object) -> None:
        self.signum = signum
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"\0")
            except OSError:  # the pipe is full: wait() wakes anyway
                pass

    def install(self) -> None:
        if self._wake is None:
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            self._wake = (read_end, write_end)
        signal.signal(signal.SIGTERM, self.record)
        signal.signal(signal.SIGINT, self.record)
        # A closed terminal or SSH session (SIGHUP) used to kill serve on the spot: no drain, a stale
        # <db>.serve.json and token left behind. There is no configuration to reload, so it stops gracefully.
        signal.signal(signal.SIGHUP, self.record)

    def wait(self, timeout: float) -> bool:
        """Sleep until a stop is requested or ``timeout`` seconds pass; returns whether one was requested."""
        if self.signum is None:
            if self._wake is None:
                time.sleep(timeout)
            else:
                select.select([self._wake[0]], [], [], timeout)
        return self.signum is not None


def _aborted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while the CLI is still importing (its first few tenths of a second): one line, exit 2, as
    Ctrl-C on a running command says, where Python printed a KeyboardInterrupt traceback from whichever
    import it hit. :func:`main` puts Python's own handler back once it runs (a query's Ctrl-C needs it)."""
    os.write(2, b"tracesieve: error: aborted\n")
    raise SystemExit(2)


#: This process is the command line (the console script, or ``python -m``), not a program importing it.
_RUN_AS_THE_CLI = __name__ == "__main__" or os.path.basename(sys.argv[0]) == "tracesieve"
_stop_request = _StopRequest()
if threading.current_thread() is threading.main_thread():
    if sys.argv[1:2] == ["serve"]:
        _stop_request.install()  # before the imports below and serve's own: they take most of a second
    elif _RUN_AS_THE_CLI and signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (`&`)
        signal.signal(signal.SIGINT, _aborted_while_starting)

import csv
import functools
import getpass
import io
import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracesieve.collector.shown_text import printable
from tracesieve.collector.strict_json import strict_json, strict_json_line
from tracesieve.storage.errors import ConfigError, TraceSieveError, UsageError

DEFAULT_DB = "tracesieve.duckdb"
EXIT_FAILURES = 1
EXIT_USAGE = 2

def _store_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--db ""`` (an unset shell variable) is refused: it silently meant ./tracesieve.duckdb."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty; give the store's path, or leave --db out for ./tracesieve.duckdb")
    return value


db_option = click.option("--db", "db_path", default=None, metavar="PATH", callback=_store_path,
                         help="DuckDB store (default ./tracesieve.duckdb, or storage.duckdb.path of --config).")
config_option = click.option("--config", "config_path", default=None, metavar="FILE",
                             help="YAML config (see README, Configuration).")


class _Seconds(click.FloatRange):
    """A FloatRange that refuses NaN.

    ``float("nan")`` fails every comparison, so FloatRange let ``--timeout nan`` through: every run
    of the gate then "timed out after nans" and the gate exited 1, as if the agent had failed,
    instead of 2 for the mistyped option.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:
            self.fail(f"{value!r} is not a number of seconds.", param, ctx)
        return seconds


class CommandFailed(Exception):
    """Raised to end a command with exit code 1 (gate or lint found failures), after its output."""


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head``): the command ends quietly with exit 0."""


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich's own handler exits 1; the json and csv output (click.echo) end with 0, and so does this."""
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more reaches the closed pipe, not even the final flush
        raise StdoutClosed


def _console() -> Console:
    if sys.stdout.isatty():
        return _Console()
    return _Console(width=100_000, no_color=True, soft_wrap=False)


def _token() -> str | None:
    """TRACESIEVE_TOKEN without surrounding whitespace (a secret file's newline, as ``*_file`` drops it)."""
    return os.environ.get("TRACESIEVE_TOKEN", "").strip() or None


@functools.lru_cache(maxsize=4)
def _config(config_path: str) -> Any:
    """The loaded ``--config`` file: one command asks for its store, its lake and its label, and loading
    builds every processor (compiled patterns and all), so it is loaded once."""
    from tracesieve.collector.config import load_config

    return load_config(config_path)


@functools.lru_cache(maxsize=1)
def _default_config() -> Any:
    """The config ``serve`` runs with when given none (its ``pii`` on with the built-in rules)."""
    from tracesieve.collector.config import load_config

    return load_config(None)


def _check_config(config_path: str | None) -> None:
    """Load ``--config`` for a command that needs nothing from it: a bad config is an error on every command."""
    if config_path:
        _config(config_path)


def _resolve_db(db_path: str | None, config_path: str | None) -> str:
    if db_path:
        return db_path
    if config_path:
        return str(_config(config_path).db_path)
    return DEFAULT_DB


def _store_label(db_path: str | None, config_path: str | None) -> str:
    """What a report names as its store: the DuckDB path, or the lake's catalog (password hidden)."""
    if config_path:
        lake = _config(config_path).lake
        if lake is not None:
            return f"DuckLake {lake.printable_catalog}"
    db = _resolve_db(db_path, config_path)
    from tracesieve.collector.client import running_collector

    info = running_collector(db)  # a collector on a lake, reached through its --db
    return str(info["store"]) if info and info.get("store") else db


def _store_args(db_path: str | None, config_path: str | None) -> str:
    """The options that name this store on another command line (absolute: a page is read anywhere)."""
    args = []
    if config_path:
        args += ["--config", os.path.abspath(config_path)]
    if db_path:
        args += ["--db", os.path.abspath(db_path)]
    return shlex.join(args)


def _client(db_path: str | None, config_path: str | None, *, write: bool = False) -> Any:
    from tracesieve.collector.client import connect, connect_lake

    def redact_text(text: str) -> str:
        """A review's free text sanitized by this config's ``pii`` (the defaults without --config), loaded
        only when a write on the file itself needs it."""
        config = _config(config_path) if config_path else _default_config()
        redacted: str = config.redact_text(text)
        return redacted

    redact = redact_text if write else None
    if config_path:  # a lake has no file lock: open it directly, whether or not collectors run on it
        config = _config(config_path)
        if config.lake is not None:
            return connect_lake(config.lake, write=write, redact_text=redact)
    return connect(_resolve_db(db_path, config_path), write=write, token=_token(), redact_text=redact)


def _reviewer(by: str | None) -> str:
    """``--by``, or the account running the command. ``$USER`` alone is unset in containers, cron jobs and
    CI runners, where the ledger and the reject reason's reviewer read "unknown"."""
    if by:
        return by
    try:
        return getpass.getuser()  # LOGNAME, USER, LNAME, USERNAME, then the password database
    except (OSError, KeyError):
        return "unknown"


def _cell(value: Any) -> str:
    """A value as CSV and the table print it: booleans as SQL and DuckDB write them (``true``), not Python's ``True``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _json(value: Any, indent: int | None = 2) -> str:
    """``value`` as strict JSON: NaN and the infinities, which JSON has no spelling for, become null."""
    return strict_json(value, indent=indent)


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """CSV whose records end with "\n", as DuckDB's ``COPY ... (FORMAT csv)`` and ``psql --csv`` write them.

    The csv module ends records with "\r\n", which left a "\r" on the last field for ``cut``, ``awk``,
    ``read`` and ``xargs`` (an id piped on to ``tracesieve show`` was not found). Its quoting is kept as
    it is with "\r\n" (a value holding "\r" or "\n" is quoted, and kept as stored): only the terminator
    of each record is replaced.
    """
    record = io.StringIO()
    writer = csv.writer(record)  # lineterminator "\r\n": both characters make a value quoted
    out = io.StringIO()
    for row in itertools.chain([columns], rows):
        record.seek(0)
        record.truncate()
        writer.writerow(row)
        out.write(record.getvalue()[:-2])
        out.write("\n")
    return out.getvalue()


def _print_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(_json([dict(zip(columns, r)) for r in rows]))
    elif fmt == "csv":
        text = _csv_text(columns, ([_cell(v) for v in r] for r in rows))
        click.echo(text, nl=False, color=True)  # color=True: click would cut ESC [ sequences out of the data
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for c in columns:
            table.add_column(Text(printable(str(c))), overflow="fold")
        for r in rows:  # Text: "[doc-7]" in a value is data, not rich markup
            table.add_row(*[Text(printable(_cell(v))) for v in r])
        console = _console()
        console.print(table)
        console.print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracesieve")
def cli() -> None:
    """tracesieve: an OTLP collector for LLM agents that turns failed traces into regression cases."""


# --------------------------------------------------------------------------- serve


@cli.command()
@config_option
@db_option
@click.option("--print-config", is_flag=True, help="Print the effective config and exit.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines as text, or as one JSON object per line (ts, level, logger, msg, fields).")
@click.option("--status-interval", type=_Seconds(min=0), default=10.0, show_default=True,
              metavar="SECONDS", help="Log a one-line status this often when stderr is a terminal (0: never).")
def serve(config_path: str | None, db_path: str | None, print_config: bool, log_format: str,
          status_interval: float) -> None:
    """Run the collector (gRPC 127.0.0.1:4317, HTTP 127.0.0.1:4318, DuckDB ./tracesieve.duckdb by default)."""
    if _stop_request.requested and not print_config:
        return  # stopped before anything was imported or opened
    from prometheus_client import disable_created_metrics

    from tracesieve.collector.config import load_config
    from tracesieve.collector.logs import configure_logging
    from tracesieve.collector.server import Collector
    from tracesieve.collector.status import startup_block, status_fields, status_line

    config = load_config(config_path, db_path=db_path)
    if print_config:
        click.echo(config.printable(), nl=False)
        return
    configure_logging(log_format, sys.stderr, secrets=config.secrets)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series on /metrics
    log = logging.getLogger("tracesieve.serve")
    _stop_request.install()  # already in place when started as `tracesieve serve`; not when called in-process
    stop = _stop_request
    if stop.requested:
        log.info("signal received during start-up: exiting before opening the store")
        return
    # The store, its WAL and spill files hold what users typed: readable by this user only, whatever
    # the umask (the discovery record sets its own mode).
    os.umask(os.umask(0o077) | 0o077)
    collector = Collector(config)
    try:
        collector.start()
    except OSError as exc:
        raise UsageError(str(exc)) from None
    info = collector.startup_info()
    log.info("tracesieve is up", extra={**info, "block": startup_block(info)})
    if not config.redacts_pii:  # DESIGN: nothing unredacted is written; a pipeline may still leave pii out
        log.warning("pii is not in service.pipelines.traces.processors: spans are stored as received, "
                    "with any PII and secrets they carry")
    interval = status_interval if status_interval > 0 and sys.stderr.isatty() else 0.0
    previous, taken = (collector.status() if interval else {}), time.monotonic()
    while not stop.wait(interval or 1.0):
        if collector.writer.fatal is not None:
            break
        if interval:
            try:
                current, now = collector.status(), time.monotonic()
            except Exception as exc:  # a status line is never worth stopping the collector for
                log.warning("status unavailable: %s", type(exc).__name__)
                continue
            fields = status_fields(previous, current, now - taken)
            logging.getLogger("tracesieve.status").info(status_line(fields), extra=fields)
            previous, taken = current, now
    if collector.writer.fatal is not None:
        log.critical("exiting: the store failed (%s); restart tracesieve to reopen it and replay its WAL",
                     collector.writer.fatal_reason)
        collector.stop()
        sys.exit(1)
    log.info("signal received: draining and judging pending traces")
    collector.stop()


# --------------------------------------------------------------------------- query


class _SqlCommand(click.Command):
    """``query``: SQL that opens with a ``--`` comment is the statement, not an unknown option.

    An option name never holds whitespace, so an argument that starts with ``-`` and holds some (and is
    not the value of the option before it, nor ``--opt=value``) is the SQL: it is moved behind ``--``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" not in args:
            names = {n for p in self.params if isinstance(p, click.Option) for n in (*p.opts, *p.secondary_opts)}
            takes_value = {n for p in self.params if isinstance(p, click.Option) and not p.is_flag
                           for n in p.opts}
            for i, arg in enumerate(args):
                if (arg.startswith("-") and any(ch.isspace() for ch in arg)
                        and arg.split("=", 1)[0] not in names and not (i and args[i - 1] in takes_value)):
                    args = [*args[:i], *args[i + 1:], "--", arg]
                    break
        return super().parse_args(ctx, args)


@cli.command(cls=_SqlCommand)
@click.argument("sql")
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def query(sql: str, db_path: str | None, config_path: str | None, fmt: str) -> None:
    """Run one read-only SQL statement against the store (also while serve runs)."""
    from tracesieve.storage.store import check_read_only

    check_read_only(sql)  # refuse before touching anything
    client = _client(db_path, config_path)
    try:
        result = client.call("query", {"sql": sql})
    finally:
        client.close()
    _print_rows(result["columns"], result["rows"], fmt)


# --------------------------------------------------------------------------- candidates


CANDIDATE_COLUMNS = ("candidate_id", "status", "failure_mode", "severity", "blast_radius", "occurrences",
                     "last_seen", "summary")


def _summary(row: dict[str, Any]) -> str:
    inp = row.get("input") or {}
    text = inp.get("user_message") if isinstance(inp, dict) else None
    text = str(text or "")
    return text if len(text) <= 60 else text[:57] + "..."


def _complete_failure_mode(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """--mode's shell completion: the taxonomy. The option is not a click.Choice, so that a wrong mode gets
    the one-line error naming every mode; completion offered nothing for it (README: choices complete)."""
    from tracesieve.storage.schema import FAILURE_MODES

    return [mode for mode in FAILURE_MODES if mode.startswith(incomplete)]


@cli.command()
@click.option("--status", type=click.Choice(["new", "promoted", "rejected", "duplicate"]), default=None)
@click.option("--mode", default=None, help="failure_mode, e.g. tool_argument", shell_complete=_complete_failure_mode)
@click.option("--severity", type=click.Choice(["P0", "P1", "P2", "P3"]), default=None)
@click.option("--since", default=None, help="last seen within a duration (30m, 2h) or since an ISO date")
@click.option("--limit", type=int, default=None)
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def candidates(status: str | None, mode: str | None, severity: str | None, since: str | None,
               limit: int | None, db_path: str | None, config_path: str | None, fmt: str) -> None:
    """List candidate regression cases (the promotion table)."""
    from tracesieve.storage.schema import FAILURE_MODES

    if mode is not None and mode not in FAILURE_MODES:
        raise UsageError(f"--mode {mode!r} is not a failure mode (one of: {', '.join(FAILURE_MODES)})")
    client = _client(db_path, config_path)
    try:
        rows = client.call("candidates", {"status": status, "mode": mode, "severity": severity,
                                          "since": since, "limit": limit})
    finally:
        client.close()
    if fmt == "json":
        click.echo(_json(rows))
        return
    _print_rows(CANDIDATE_COLUMNS, [[r.get(c) if c != "summary" else _summary(r) for c in CANDIDATE_COLUMNS]
                                    for r in rows], "table")


@cli.command()
@click.argument("candidate_id")
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def show(candidate_id: str, db_path: str | None, config_path: str | None, fmt: str) -> None:
    """Show one candidate with its trace tree, detections and evidence."""
    client = _client(db_path, config_path)
    try:
        detail = client.call("show", {"candidate_id": candidate_id})
    finally:
        client.close()
    if fmt == "json":
        click.echo(_json(detail))
        return
    console = _console()
    c = detail["candidate"]
    console.print(Text.assemble((f"candidate {c['candidate_id']}", "bold"),
                                f"  {c['failure_mode']}  {c.get('severity')}  {c.get('blast_radius')}  "
                                f"status={c['status']}  occurrences={c.get('occurrences')}"), highlight=False)
    if c.get("duplicate_of"):
        console.print(f"duplicate of {c['duplicate_of']}", highlight=False)
    if c.get("reviewed_by") or c.get("case_id"):  # what a reviewer decided, as --format json has it
        review = f"{c['status']} by {c.get('reviewed_by') or '?'} at {c.get('reviewed_at') or '?'}"
        review += f" as {c['case_id']}" if c.get("case_id") else ""
        review += f": {c['review_reason']}" if c.get("review_reason") else ""
        console.print(printable(review), highlight=False, markup=False)
    for key in ("input", "observed", "expected", "context", "source"):
        console.print(Text.assemble((f"{key}: ", "bold"),
                                    printable(json.dumps(c.get(key), ensure_ascii=False, indent=2))), highlight=False)
    console.print(Text(f"trace {detail.get('trace_id')}", style="bold"), highlight=False)
    for line in _tree_lines(detail.get("spans") or []):
        console.print(printable(line), highlight=False, markup=False)
    console.print("[bold]detections[/bold]", markup=True)
    for d in detail.get("detections") or []:
        console.print(printable(f"  {d['failure_mode']} ({d['detector']}, {d['severity']}) on span {d['span_id']}: "
                                 f"{d['message']}"), highlight=False, markup=False)
        console.print("    evidence: " + printable(json.dumps(d.get("evidence"), ensure_ascii=False)), highlight=False,
                      markup=False)
    if c["status"] in ("new", "duplicate"):
        store_args = _store_args(db_path, config_path)  # pasted anywhere, it reaches this store
        console.print(f"promote with: tracesieve promote {c['candidate_id']} --cases cases.yaml --owner YOU"
                      + (f" {store_args}" if store_args else ""), highlight=False, markup=False)


def _tree_lines(spans: list[dict[str, Any]]) -> list[str]:
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        parent = s.get("parent_span_id")
        children.setdefault(parent if parent in ids else None, []).append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            dur = s.get("duration_ms")
            dur_text = f"{dur:.0f}ms" if isinstance(dur, (int, float)) else "?"
            status = "" if s.get("status_code") in (None, "UNSET", "OK") else f" [{s['status_code']}]"
            extra = s.get("tool_name") or s.get("llm_model_name") or ""
            lines.append(f"  {'  ' * depth}{s.get('span_kind')} {s.get('name')} {extra} {dur_text}{status}"
                         f"  ({s['span_id']})")
            walk(s["span_id"], depth + 1)

    walk(None, 0)
    return lines


@cli.command()
@click.argument("candidate_id")
@click.option("--cases", "cases_path", required=True, metavar="PATH", help="the failure dataset (cases.yaml)")
@click.option("--owner", required=True, help="who owns this case")
@click.option("--severity", type=click.Choice(["P0", "P1", "P2", "P3"]), default=None)
@click.option("--id", "case_id", default=None, help="case id to use instead of the next TS-NNNN")
@db_option
@config_option
def promote(candidate_id: str, cases_path: str, owner: str, severity: str | None, case_id: str | None,
            db_path: str | None, config_path: str | None) -> None:
    """Append a reviewed case to the failure dataset and mark the candidate promoted."""
    from tracesieve.collector.cases import promote_and_mark

    if not owner.strip():
        raise UsageError("--owner must name a person or team")
    client = _client(db_path, config_path, write=True)
    try:
        candidate = client.call("candidate", {"candidate_id": candidate_id})
        if candidate["status"] == "promoted":
            raise UsageError(f"candidate {candidate_id} is already promoted"
                             + (f" as {candidate['case_id']}" if candidate.get("case_id") else ""))
        if candidate["status"] == "rejected":
            raise UsageError(f"candidate {candidate_id} was rejected ({candidate.get('review_reason')}); "
                             "it cannot be promoted")
        # the mark is refused if another reviewer decided since the read above; the case is then taken back
        case = promote_and_mark(cases_path, candidate, owner, lambda case: client.call(
            "mark_promoted", {"candidate_id": candidate_id, "case_id": case["id"], "owner": owner}),
            severity=severity, case_id=case_id)
    finally:
        client.close()
    click.echo(f"promoted {candidate_id} as {case['id']} into {cases_path}")


@cli.command()
@click.argument("candidate_id")
@click.option("--reason", required=True, help="why this is not a case worth keeping")
@click.option("--by", default=None, help="reviewer (default: the account running the command)")
@db_option
@config_option
def reject(candidate_id: str, reason: str, by: str | None, db_path: str | None, config_path: str | None) -> None:
    """Reject a candidate; it is kept, with the reason."""
    if not reason.strip():
        raise UsageError("--reason must say why")
    client = _client(db_path, config_path, write=True)
    try:
        client.call("mark_rejected", {"candidate_id": candidate_id, "reason": reason,
                                      "by": _reviewer(by)})
    finally:
        client.close()
    click.echo(f"rejected {candidate_id}")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json"]), default="jsonl", show_default=True)
@click.option("--status", type=click.Choice(["new", "promoted", "rejected", "duplicate", "all"]),
              default="promoted", show_default=True, help="which candidates to export")
@click.option("--id", "ids", multiple=True, help="export these candidates (repeatable) instead of --status; "
              "with --cases: these case ids")
@click.option("--cases", "cases_path", default=None, metavar="PATH",
              help="export the reviewed dataset (cases.yaml) instead of the store's candidates: each active case "
                   "with its expected_behavior as people edited it (--status all adds deprecated ones)")
@click.option("--out", "out_path", default=None, metavar="FILE", help="write here instead of stdout")
@db_option
@config_option
def export(fmt: str, status: str, ids: tuple[str, ...], cases_path: str | None, out_path: str | None,
           db_path: str | None, config_path: str | None) -> None:
    """Dataset rows {input, expected, metadata} for Phoenix, Langfuse, Braintrust and similar tools."""
    from tracesieve.collector.cases import export_case_record, export_record

    if cases_path is not None:
        _check_config(config_path)
        cases = _dataset_cases(cases_path, status, ids)
        _write_records([export_case_record(c) for c in cases], fmt, out_path)
        return
    client = _client(db_path, config_path)
    try:
        rows = client.call("export", {"status": None if status == "all" else status, "ids": list(ids) or None})
        others = 0
        if not rows and not ids and status != "all":  # say why nothing came out, when something else is there
            others = int(client.call("query", {"sql": "SELECT count(*) FROM candidates"})["rows"][0][0])
    finally:
        client.close()
    if others:
        click.echo(f"tracesieve: no {status} candidate to export; {others} other{'s are' if others != 1 else ' is'} "
                   f"in the store (--status all exports every one)", err=True)
    _write_records([export_record(r) for r in rows], fmt, out_path)


def _dataset_cases(path: str, status: str, ids: tuple[str, ...]) -> list[dict[str, Any]]:
    """The cases ``export --cases`` writes: active ones (all with ``--status all``), of a lint-clean dataset."""
    from tracesieve.collector.gate import load_active_cases

    if status not in ("promoted", "all"):
        raise UsageError(f"--status {status} names candidates in the store; with --cases the dataset's active "
                         "cases are exported (--status all adds deprecated ones)")
    # refuses a missing or invalid dataset, and an unknown id, in one line
    return load_active_cases(path, ids, ("active", "deprecated") if status == "all" else ("active",))


def _write_records(records: list[dict[str, Any]], fmt: str, out_path: str | None) -> None:
    if fmt == "json":
        text = _json(records) + "\n"
    else:
        text = "".join(strict_json_line(r) + "\n" for r in records)
    if out_path:
        with open(out_path, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {len(records)} records to {out_path}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--out", "out_path", required=True, metavar="FILE.html", help="where to write the page (- for stdout)")
@click.option("--status", type=click.Choice(["new", "promoted", "rejected", "duplicate"]), default=None,
              help="only candidates with this status")
@click.option("--limit", type=click.IntRange(1, 100_000), default=500, show_default=True)
@db_option
@config_option
def report(out_path: str, status: str | None, limit: int, db_path: str | None, config_path: str | None) -> None:
    """Write one self-contained HTML review page: candidates by mode and severity, traces as waterfalls."""
    from tracesieve.collector.report import render_report

    db = _store_label(db_path, config_path)
    client = _client(db_path, config_path)
    try:
        data = client.call("report_data", {"status": status, "limit": limit})
    finally:
        client.close()
    data["db"] = db
    data["store_args"] = _store_args(db_path, config_path)
    html_text = render_report(data)
    to_stdout = out_path == "-"  # `--out -`: the page on stdout (piped to a file, a mail, an upload), the summary on stderr
    if to_stdout:
        click.echo(html_text, nl=False, color=True)  # color=True: click would cut ESC [ sequences out of the page
    else:
        with open(out_path, "w", encoding="utf-8") as fh:
            fh.write(html_text)
    shown, total = len(data["candidates"]), int(data.get("total") or 0)
    where = "the page to stdout" if to_stdout else out_path
    if total > shown:
        click.echo(f"wrote {where}: {shown} of {total} candidates (--limit {limit}; raise it to see every one)",
                   err=to_stdout)
    else:
        click.echo(f"wrote {where}: {shown} candidate{'' if shown == 1 else 's'}", err=to_stdout)


@cli.group()
def cases() -> None:
    """Work with the failure dataset (cases.yaml)."""


@cases.command("lint")
@click.argument("path")
@db_option
@config_option
def cases_lint(path: str, db_path: str | None, config_path: str | None) -> None:
    """Validate cases.yaml, its removal ledger and history; exit 1 on any problem.

    (--db is accepted like on every command; --config is validated, but lint reads only the dataset files.)
    """
    from tracesieve.collector.cases import lint_cases

    _check_config(config_path)
    problems = lint_cases(path)
    for p in problems:
        click.echo(p)
    if problems:
        raise CommandFailed(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {path}")
    click.echo(f"ok: {path}")


@cases.command("remove")
@click.argument("case_id")
@click.option("--cases", "cases_path", required=True, metavar="PATH", help="the failure dataset (cases.yaml)")
@click.option("--reason", required=True, help="why the case no longer belongs in the dataset")
@click.option("--by", default=None, help="who removes it (default: the account running the command)")
@db_option
@config_option
def cases_remove(case_id: str, cases_path: str, reason: str, by: str | None, db_path: str | None,
                 config_path: str | None) -> None:
    """Remove a case from cases.yaml, recording it in cases_removed.yaml and history.jsonl.

    (--db is accepted like on every command; remove writes only the dataset files.)
    """
    from tracesieve.collector.cases import remove_case

    _check_config(config_path)
    if not reason.strip():
        raise UsageError("--reason must say why")
    remove_case(cases_path, case_id, reason, _reviewer(by))
    click.echo(f"removed {case_id} from {cases_path} (recorded in cases_removed.yaml and history.jsonl)")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--cases", "cases_path", required=True, metavar="PATH", help="the failure dataset (cases.yaml)")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True,
              help="runs per case; every run must pass")
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="agent runs at once")
@click.option("--case", "only", multiple=True, metavar="ID", help="run only these cases (repeatable)")
@click.option("--protocol", type=click.Choice(["grpc", "http/protobuf", "http/json"]), default="grpc",
              show_default=True,
              help="OTEL_EXPORTER_OTLP_PROTOCOL given to the agent")
@click.option("--timeout", type=_Seconds(min=0, min_open=True), default=300.0, show_default=True,
              help="seconds per agent run; then its process group is killed and the case fails")
@click.option("--junit", "junit_path", default=None, metavar="PATH", help="also write JUnit XML here")
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def gate(cases_path: str, repeat: int, jobs: int, only: tuple[str, ...], protocol: str, timeout: float,
         junit_path: str | None, db_path: str | None, config_path: str | None, fmt: str,
         command: tuple[str, ...]) -> None:
    """Run the agent on every active case (tracesieve gate --cases cases.yaml -- CMD...); exit 1 on any failure.

    The agent gets the case input as JSON on stdin and in TRACESIEVE_CASE_INPUT, the id in
    TRACESIEVE_CASE_ID, the run number in TRACESIEVE_RUN, and OTEL_EXPORTER_OTLP_ENDPOINT /
    _PROTOCOL / OTEL_RESOURCE_ATTRIBUTES (tracesieve.case_id, tracesieve.run) pointing at an
    embedded collector (its store is temporary; --db is not written). Exit 0 when every active case
    passes, 1 otherwise, 2 on bad usage or an invalid dataset.
    """
    import time

    from tracesieve.collector.config import load_config
    from tracesieve.collector.gate import run_gate
    from tracesieve.collector.gate_output import (
        failing, failure_line, json_records, junit_xml, matrix_lines, summary,
    )

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # a cancelled CI job: run_gate kills the agents it started, then we exit 130

    signal.signal(signal.SIGTERM, interrupted)
    config = load_config(config_path)
    if junit_path:  # checked before any agent runs: the report must not be lost after the gate
        folder = os.path.dirname(os.path.abspath(junit_path))
        if os.path.isdir(junit_path):
            raise UsageError(f"--junit {junit_path}: is a directory (give the XML file's path)")
        if not os.path.isdir(folder):
            raise UsageError(f"--junit {junit_path}: no directory {folder}")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--junit {junit_path}: cannot write in {folder}")
    started = time.monotonic()
    results = run_gate(config, cases_path, command, repeat=repeat, jobs=jobs, only=only, protocol=protocol,
                       timeout=timeout, workdir=os.getcwd(), env=dict(os.environ))
    if junit_path:
        with open(junit_path, "w", encoding="utf-8") as fh:
            fh.write(junit_xml(results, time.monotonic() - started))
    bad = failing(results)
    if fmt == "json":
        click.echo(_json(json_records(results)))
    else:
        for line in matrix_lines(results):
            click.echo(line)
        for r in bad:  # reasons quote the agent's stderr and span status messages: not for the terminal raw
            click.echo(printable(failure_line(r)))
        passed = [r.case_id for r in results if r.passed]
        if passed:
            click.echo(f"passed: {', '.join(passed)}")
    if bad:
        raise CommandFailed(summary(results))
    click.echo(summary(results) if results else f"gate: no active case in {cases_path}", err=True)


# --------------------------------------------------------------------------- completion and examples

COMPLETION_SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_TRACESIEVE_COMPLETE"


@cli.command()
@click.argument("shell", type=click.Choice(COMPLETION_SHELLS))
@db_option
@config_option
def completion(shell: str, db_path: str | None, config_path: str | None) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Same as click's built-in: eval "$(_TRACESIEVE_COMPLETE=bash_source tracesieve)" (zsh_source, fish_source).
    --db is taken, as by every command, and not needed; --config is checked.
    """
    from click.shell_completion import get_completion_class

    _check_config(config_path)
    completer = get_completion_class(shell)
    assert completer is not None  # every COMPLETION_SHELLS entry is built into click
    click.echo(completer(cli, {}, "tracesieve", COMPLETE_VAR).source())


#: Shown under "Examples:" at the end of each command's --help (a test checks every command has some).
EXAMPLES: dict[str, list[str]] = {
    "": [
        "tracesieve serve",
        "tracesieve candidates --status new",
        "tracesieve report --out review.html",
    ],
    "serve": [
        "tracesieve serve",
        "tracesieve serve --config tracesieve.yaml --db /var/lib/tracesieve/store.duckdb",
        "tracesieve serve --log-format json --status-interval 0",
        "tracesieve serve --config tracesieve.yaml --print-config",
    ],
    "query": [
        'tracesieve query "SELECT span_kind, count(*) AS n FROM spans GROUP BY 1"',
        'tracesieve query "SELECT failure_mode, message FROM detections LIMIT 5" --format json',
    ],
    "candidates": [
        "tracesieve candidates --status new",
        "tracesieve candidates --mode tool_invocation --since 2h --format json",
    ],
    "show": [
        "tracesieve show CANDIDATE_ID",
        "tracesieve show CANDIDATE_ID --format json",
    ],
    "promote": [
        "tracesieve promote CANDIDATE_ID --cases cases.yaml --owner alice",
        "tracesieve promote CANDIDATE_ID --cases cases.yaml --owner support-team --severity P1 --id TS-0042",
    ],
    "reject": [
        'tracesieve reject CANDIDATE_ID --reason "the refusal was correct: no order id given"',
    ],
    "export": [
        "tracesieve export --format jsonl --out dataset.jsonl",
        "tracesieve export --status all --format json",
    ],
    "cases": [
        "tracesieve cases lint cases.yaml",
        'tracesieve cases remove TS-0007 --cases cases.yaml --reason "the tool was retired" --by alice',
    ],
    "cases lint": [
        "tracesieve cases lint cases.yaml",
    ],
    "cases remove": [
        'tracesieve cases remove TS-0007 --cases cases.yaml --reason "the tool was retired" --by alice',
    ],
    "gate": [
        "tracesieve gate --cases cases.yaml -- python examples/agent.py",
        "tracesieve gate --cases cases.yaml --repeat 3 --protocol http/protobuf -- python agent.py",
    ],
    "report": [
        "tracesieve report --out review.html",
        "tracesieve report --out new.html --status new",
    ],
    "completion": [
        "tracesieve completion bash > ~/.local/share/bash-completion/completions/tracesieve",
        'tracesieve completion zsh > "${fpath[1]}/_tracesieve"',
        "tracesieve completion fish > ~/.config/fish/completions/tracesieve.fish",
    ],
}


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every command under ``group`` by its path ("" is the group itself, "cases lint" a subcommand)."""
    found: dict[str, click.Command] = {prefix.strip(): group}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(_commands(command, path + " "))
        else:
            found[path] = command
    return found


def _add_examples() -> None:
    for path, command in _commands(cli).items():
        lines = EXAMPLES.get(path)
        if lines:
            # \b keeps click from re-wrapping the block
            command.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


_add_examples()


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> None:
    if signal.getsignal(signal.SIGINT) is _aborted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt again
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="tracesieve", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "tracesieve"
        _fail(f"{exc.format_message()} (see {where} --help)")
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as exc:
        _fail(exc.format_message())
    except CommandFailed as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_FAILURES)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    except TraceSieveError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename}" if getattr(exc, "filename", None) else str(exc))
    except StdoutClosed:
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # never a bare traceback
        if _interrupted(exc):  # Ctrl-C inside `import duckdb`: its module init failed with an ImportError
            _fail("aborted")
        try:
            from tracesieve.storage.lake import redact
        except ImportError:  # duckdb itself failed to import: no lake was opened, so no catalog to hide
            _fail(f"internal error: {type(exc).__name__}: {exc}")
        _fail(f"internal error: {type(exc).__name__}: {redact(str(exc))}")  # a lake's errors quote its catalog
    else:
        sys.exit(0)


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt caused ``exc`` (directly or while it was being handled)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    click.echo(f"tracesieve: error: {printable(first)}", err=True)  # DuckDB errors quote the values they hit
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
