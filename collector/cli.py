"""The ``tracesieve`` command line. The only module that prints, exits or reads the environment.

Exit codes: 0 ok; 1 gate or lint found failures; 2 usage error, bad input,
unknown id, missing file, refused statement. Every error is one line on stderr.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from tracesieve.storage.errors import ConfigError, TraceSieveError, UsageError

DEFAULT_DB = "tracesieve.duckdb"
EXIT_FAILURES = 1
EXIT_USAGE = 2

db_option = click.option("--db", "db_path", default=None, metavar="PATH",
                         help="DuckDB store (default ./tracesieve.duckdb, or storage.duckdb.path of --config).")
config_option = click.option("--config", "config_path", default=None, metavar="FILE",
                             help="YAML config (see README, Configuration).")


class CommandFailed(Exception):
    """Raised to end a command with exit code 1 (gate or lint found failures), after its output."""


def _console() -> Console:
    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, no_color=True, soft_wrap=False)


def _token() -> str | None:
    return os.environ.get("TRACESIEVE_TOKEN") or None


def _resolve_db(db_path: str | None, config_path: str | None) -> str:
    if db_path:
        return db_path
    if config_path:
        from tracesieve.collector.config import load_config

        return load_config(config_path).db_path
    return DEFAULT_DB


def _store_label(db_path: str | None, config_path: str | None) -> str:
    """What a report names as its store: the DuckDB path, or the lake's catalog (password hidden)."""
    if config_path:
        from tracesieve.collector.config import load_config

        lake = load_config(config_path).lake
        if lake is not None:
            return f"DuckLake {lake.printable_catalog}"
    return _resolve_db(db_path, config_path)


def _client(db_path: str | None, config_path: str | None, *, write: bool = False) -> Any:
    from tracesieve.collector.client import connect, connect_lake

    if config_path:  # a lake has no file lock: open it directly, whether or not collectors run on it
        from tracesieve.collector.config import load_config

        config = load_config(config_path)
        if config.lake is not None:
            return connect_lake(config.lake, write=write)
    return connect(_resolve_db(db_path, config_path), write=write, token=_token())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _print_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, r)) for r in rows], ensure_ascii=False, indent=2))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_cell(v) for v in r])
        click.echo(buf.getvalue(), nl=False)
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for c in columns:
            table.add_column(str(c), overflow="fold")
        for r in rows:
            table.add_row(*[_cell(v) for v in r])
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
def serve(config_path: str | None, db_path: str | None, print_config: bool) -> None:
    """Run the collector (gRPC 127.0.0.1:4317, HTTP 127.0.0.1:4318, DuckDB ./tracesieve.duckdb by default)."""
    from tracesieve.collector.config import load_config
    from tracesieve.collector.server import Collector

    config = load_config(config_path, db_path=db_path)
    if print_config:
        click.echo(config.printable(), nl=False)
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    collector = Collector(config)
    try:
        collector.start()
    except OSError as exc:
        raise UsageError(str(exc)) from None
    while not stop.wait(1.0):
        pass
    logging.getLogger("tracesieve.server").info("signal received: draining and judging pending traces")
    collector.stop()


# --------------------------------------------------------------------------- query


@cli.command()
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


@cli.command()
@click.option("--status", type=click.Choice(["new", "promoted", "rejected", "duplicate"]), default=None)
@click.option("--mode", default=None, help="failure_mode, e.g. tool_argument")
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
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
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
        click.echo(json.dumps(detail, ensure_ascii=False, indent=2))
        return
    console = _console()
    c = detail["candidate"]
    console.print(f"[bold]candidate {c['candidate_id']}[/bold]  {c['failure_mode']}  {c.get('severity')}  "
                  f"{c.get('blast_radius')}  status={c['status']}  occurrences={c.get('occurrences')}",
                  highlight=False, markup=True)
    if c.get("duplicate_of"):
        console.print(f"duplicate of {c['duplicate_of']}", highlight=False)
    for key in ("input", "observed", "expected", "context", "source"):
        console.print(f"[bold]{key}[/bold]: " + json.dumps(c.get(key), ensure_ascii=False, indent=2),
                      highlight=False, markup=True)
    console.print(f"[bold]trace {detail.get('trace_id')}[/bold]", markup=True, highlight=False)
    for line in _tree_lines(detail.get("spans") or []):
        console.print(line, highlight=False, markup=False)
    console.print("[bold]detections[/bold]", markup=True)
    for d in detail.get("detections") or []:
        console.print(f"  {d['failure_mode']} ({d['detector']}, {d['severity']}) on span {d['span_id']}: "
                      f"{d['message']}", highlight=False, markup=False)
        console.print("    evidence: " + json.dumps(d.get("evidence"), ensure_ascii=False), highlight=False,
                      markup=False)
    if c["status"] in ("new", "duplicate"):
        console.print(f"promote with: tracesieve promote {c['candidate_id']} --cases cases.yaml --owner YOU",
                      highlight=False, markup=False)


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
    from tracesieve.collector.cases import promote_case

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
        case = promote_case(cases_path, candidate, owner, severity=severity, case_id=case_id)
        client.call("mark_promoted", {"candidate_id": candidate_id, "case_id": case["id"], "owner": owner})
    finally:
        client.close()
    click.echo(f"promoted {candidate_id} as {case['id']} into {cases_path}")


@cli.command()
@click.argument("candidate_id")
@click.option("--reason", required=True, help="why this is not a case worth keeping")
@click.option("--by", default=None, help="reviewer (default: $USER)")
@db_option
@config_option
def reject(candidate_id: str, reason: str, by: str | None, db_path: str | None, config_path: str | None) -> None:
    """Reject a candidate; it is kept, with the reason."""
    if not reason.strip():
        raise UsageError("--reason must say why")
    client = _client(db_path, config_path, write=True)
    try:
        client.call("mark_rejected", {"candidate_id": candidate_id, "reason": reason,
                                      "by": by or os.environ.get("USER") or "unknown"})
    finally:
        client.close()
    click.echo(f"rejected {candidate_id}")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json"]), default="jsonl", show_default=True)
@click.option("--status", type=click.Choice(["new", "promoted", "rejected", "duplicate", "all"]),
              default="promoted", show_default=True, help="which candidates to export")
@click.option("--id", "ids", multiple=True, help="export these candidates (repeatable) instead of --status")
@click.option("--out", "out_path", default=None, metavar="FILE", help="write here instead of stdout")
@db_option
@config_option
def export(fmt: str, status: str, ids: tuple[str, ...], out_path: str | None, db_path: str | None,
           config_path: str | None) -> None:
    """Dataset rows {input, expected, metadata} for Phoenix, Langfuse, Braintrust and similar tools."""
    from tracesieve.collector.cases import export_record

    client = _client(db_path, config_path)
    try:
        rows = client.call("export", {"status": None if status == "all" else status, "ids": list(ids) or None})
    finally:
        client.close()
    records = [export_record(r) for r in rows]
    if fmt == "json":
        text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out_path:
        with open(out_path, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {len(records)} records to {out_path}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--out", "out_path", required=True, metavar="FILE.html", help="where to write the page")
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
    html_text = render_report(data)
    with open(out_path, "w", encoding="utf-8") as fh:
        fh.write(html_text)
    click.echo(f"wrote {out_path}: {len(data['candidates'])} candidates")


@cli.group()
def cases() -> None:
    """Work with the failure dataset (cases.yaml)."""


@cases.command("lint")
@click.argument("path")
@db_option
@config_option
def cases_lint(path: str, db_path: str | None, config_path: str | None) -> None:
    """Validate cases.yaml, its removal ledger and history; exit 1 on any problem.

    (--db and --config are accepted like on every command; lint reads only the dataset files.)
    """
    from tracesieve.collector.cases import lint_cases

    problems = lint_cases(path)
    for p in problems:
        click.echo(p)
    if problems:
        raise CommandFailed(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {path}")
    click.echo(f"ok: {path}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--cases", "cases_path", required=True, metavar="PATH", help="the failure dataset (cases.yaml)")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True, help="runs per case")
@click.option("--case", "only", multiple=True, metavar="ID", help="run only these cases (repeatable)")
@click.option("--protocol", type=click.Choice(["grpc", "http/protobuf"]), default="grpc", show_default=True,
              help="OTEL_EXPORTER_OTLP_PROTOCOL given to the agent")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds per agent run")
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def gate(cases_path: str, repeat: int, only: tuple[str, ...], protocol: str, timeout: float,
         db_path: str | None, config_path: str | None, fmt: str, command: tuple[str, ...]) -> None:
    """Run the agent on every active case (tracesieve gate --cases cases.yaml -- CMD...); exit 1 on any failure.

    The agent gets the case input as JSON on stdin and in TRACESIEVE_CASE_INPUT, the id in
    TRACESIEVE_CASE_ID, and OTEL_EXPORTER_OTLP_ENDPOINT / _PROTOCOL / OTEL_RESOURCE_ATTRIBUTES
    pointing at an embedded collector (its store is temporary; --db is not written).
    """
    from tracesieve.collector.config import load_config
    from tracesieve.collector.gate import run_gate

    config = load_config(config_path)
    results = run_gate(config, cases_path, command, repeat=repeat, only=only, protocol=protocol,
                       timeout=timeout, workdir=os.getcwd())
    failed = [r for r in results if not r.passed]
    if fmt == "json":
        click.echo(json.dumps([{"case_id": r.case_id, "failure_mode": r.failure_mode,
                                "result": "passed" if r.passed else "failed", "runs": r.runs,
                                "traces": r.traces, "reasons": r.reasons} for r in results], indent=2))
    else:
        _print_rows(("case", "failure_mode", "result", "runs", "traces", "why"),
                    [[r.case_id, r.failure_mode, "pass" if r.passed else "FAIL", r.runs, len(r.traces),
                      "; ".join(r.reasons)] for r in results], "table")
    summary = f"gate: {len(results) - len(failed)} of {len(results)} cases passed"
    if failed:
        raise CommandFailed(summary + f"; failing: {', '.join(r.case_id for r in failed)}")
    click.echo(summary, err=True)


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> None:
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
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # never a bare traceback
        _fail(f"internal error: {type(exc).__name__}: {exc}")
    else:
        sys.exit(0)


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    click.echo(f"tracesieve: error: {first}", err=True)
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
