"""DuckLake storage: three `tracesieve serve` processes write one lake (PostgreSQL catalog, Parquet data).

Real everything: a throwaway PostgreSQL cluster from the OS packages, real serve
subprocesses, real OTel SDK exporters, the CLI as a subprocess, and a plain DuckDB
session attaching the lake the way the README tells operators to.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from conftest import free_port, run_cli
from lake_helpers import LakeCollector, PostgresCluster, lake_config, postgres_bin_dir
from sdk_helpers import emit_agent_trace, emit_conversation, emit_thumbs_down, recorded_spans, sdk_tracer
from tracesieve.storage.lake import COMMIT_LOCK_KEY as LAKE_COMMIT_LOCK_KEY
from tracesieve.storage.lake import LAKE_MIGRATIONS

pytestmark = pytest.mark.timeout(240)

PG_BIN = postgres_bin_dir()
needs_postgres = pytest.mark.skipif(
    PG_BIN is None, reason="no PostgreSQL server binaries (initdb) on this machine: apt-get install postgresql")
needs_lake_extra = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("duckdb_extension_ducklake") is None,
    reason="the lake extra is not installed: pip install -e '.[lake]'")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    assert PG_BIN is not None
    cluster = PostgresCluster(PG_BIN).start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Tee(SpanExporter):
    """Exports every batch through several real OTLP exporters: the same spans reach several collectors."""

    def __init__(self, exporters: Sequence[SpanExporter]) -> None:
        self.exporters = list(exporters)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        results = [e.export(spans) for e in self.exporters]
        return SpanExportResult.SUCCESS if all(r == SpanExportResult.SUCCESS for r in results) \
            else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        for e in self.exporters:
            e.shutdown()


def _provider(endpoints: Sequence[str], service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporters = [OTLPSpanExporter(endpoint=f"http://{ep}", insecure=True, timeout=30) for ep in endpoints]
    provider.add_span_processor(BatchSpanProcessor(exporters[0] if len(exporters) == 1 else Tee(exporters),
                                                   schedule_delay_millis=100))
    return provider


def _failing_tool(tracer: otel_trace.Tracer, name: str = "lookup_order") -> None:
    with tracer.start_as_current_span(name) as tool:
        tool.set_attribute("openinference.span.kind", "TOOL")
        tool.set_attribute("tool.name", name)
        tool.set_attribute("input.value", json.dumps({"order_id": "ORD-9"}))
        tool.record_exception(RuntimeError("order service returned 502"))
        tool.set_status(Status(StatusCode.ERROR, "order service returned 502"))


def _split_trace(first: otel_trace.Tracer, second: otel_trace.Tracer) -> str:
    """One trace whose root and LLM span go to one collector and whose failing tool span goes to another."""
    with first.start_as_current_span("agent") as root:
        root.set_attribute("openinference.span.kind", "AGENT")
        root.set_attribute("input.value", "Where is my split order?")
        with first.start_as_current_span("llm") as llm:
            llm.set_attribute("openinference.span.kind", "LLM")
            llm.set_attribute("llm.model_name", "gpt-4o")
        _failing_tool(second)  # the current context carries the trace: same trace id, other collector
        return format(root.get_span_context().trace_id, "032x")


def _wait_all_judged(c: LakeCollector, expected_traces: int) -> None:
    c.wait_for(
        "SELECT count(*) AS traces, count(*) FILTER (WHERE judged_seq IS DISTINCT FROM received_seq) AS pending "
        "FROM trace_state",
        lambda rows: rows and rows[0]["traces"] == expected_traces and rows[0]["pending"] == 0,
        timeout=90,
    )


@needs_postgres
@needs_lake_extra
def test_three_collectors_write_one_lake_exactly_once(postgres: PostgresCluster, tmp_path: Path) -> None:
    catalog = postgres.create_database("fleet")
    data = tmp_path / "lake-data"
    collectors = []
    for i in range(3):
        workdir = tmp_path / f"c{i}"
        workdir.mkdir()
        collectors.append(LakeCollector(workdir, lake_config(catalog, data, {"service": {"span_workers": 0}})))
    # All three start at once on an empty catalog: concurrent migrations must settle on one schema.
    errors: list[BaseException] = []

    def start(c: LakeCollector) -> None:
        try:
            c.start(timeout=120)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(c,)) for c in collectors]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        a, b, c = collectors
        # Distinct traffic on each collector, in parallel: commits race; the same failure everywhere.
        per_collector = 4

        def send(col: LakeCollector, k: int) -> None:
            with sdk_tracer("grpc", col.grpc_endpoint, service=f"agent-{k}") as tracer:
                for j in range(per_collector):
                    emit_agent_trace(tracer, question="Where is my order ORD-1?", tool_error=(j % 2 == 0),
                                     session=f"s-{k}-{j}")

        senders = [threading.Thread(target=send, args=(col, k)) for k, col in enumerate(collectors)]
        for t in senders:
            t.start()
        # Overlap while they run: every span of two traces reaches b and c (re-delivery / failover)...
        tee = _provider([b.grpc_endpoint, c.grpc_endpoint], "tee-agent")
        tee_traces = [emit_agent_trace(tee.get_tracer("t"), question="Where is my order ORD-1?", tool_error=True,
                                       session=f"tee-{i}") for i in range(2)]
        tee.shutdown()
        # ...and one trace is split: root + LLM on a, its failing tool call on b.
        pa, pb = _provider([a.grpc_endpoint], "split-agent"), _provider([b.grpc_endpoint], "split-agent")
        split = _split_trace(pa.get_tracer("a"), pb.get_tracer("b"))
        pa.shutdown()
        pb.shutdown()
        for t in senders:
            t.join()

        traces = 3 * per_collector + len(tee_traces) + 1
        _wait_all_judged(a, traces)
        # Exactly once: 5 spans per agent trace, 3 in the split trace, no (trace_id, span_id) twice;
        # one tool_invocation per failing trace, no detection twice.
        failing = 3 * len(range(0, per_collector, 2)) + len(tee_traces) + 1
        got = a.query(
            "SELECT (SELECT count(*) FROM spans) AS spans, "
            "(SELECT count(DISTINCT (trace_id, span_id)) FROM spans) AS distinct_spans, "
            "(SELECT count(*) FROM detections WHERE failure_mode = 'tool_invocation') AS tool_detections, "
            "(SELECT count(DISTINCT trace_id) FROM detections WHERE failure_mode = 'tool_invocation') AS failing, "
            f"(SELECT count(*) FROM detections WHERE trace_id = '{split}') AS split_detections, "
            "(SELECT count(*) - count(DISTINCT detection_id) FROM detections) AS repeated_detections, "
            "(SELECT count(*) FROM schema_version) AS migrations, (SELECT count(*) FROM commit_token) AS tokens")[0]
        spans = 5 * (traces - 1) + 3
        assert got == {"spans": spans, "distinct_spans": spans, "tool_detections": failing, "failing": failing,
                       "split_detections": 1, "repeated_detections": 0, "migrations": len(LAKE_MIGRATIONS),
                       "tokens": 1}
        # The same failure seen by all three collectors is one candidate with every occurrence.
        cands = a.query("SELECT candidate_id, occurrences, len(trace_ids) AS n_traces, "
                        "len(list_distinct(trace_ids)) AS n_distinct FROM candidates "
                        "WHERE failure_mode = 'tool_invocation' AND status <> 'duplicate' "
                        "AND input::VARCHAR LIKE '%ORD-1%'")
        assert len(cands) == 1, cands
        assert cands[0]["occurrences"] == failing - 1 == cands[0]["n_traces"] == cands[0]["n_distinct"]

        # A late failing span on another collector re-judges its trace there: extended, not duplicated.
        late_trace = tee_traces[0]
        provider = _provider([c.grpc_endpoint], "tee-agent")
        parent = otel_trace.SpanContext(int(late_trace, 16), 0x1234567890ABCDEF, is_remote=True,
                                        trace_flags=otel_trace.TraceFlags(1))
        with otel_trace.use_span(otel_trace.NonRecordingSpan(parent)):
            _failing_tool(provider.get_tracer("late"), "refund_payment")
        provider.shutdown()
        rows = c.wait_for(f"SELECT tool_name FROM spans s JOIN detections d USING (trace_id, span_id) "
                          f"WHERE d.trace_id = '{late_trace}' AND d.failure_mode = 'tool_invocation' ORDER BY 1",
                          lambda r: len(r) == 2, timeout=90)
        assert [r["tool_name"] for r in rows] == ["lookup_order", "refund_payment"]

        # Every CLI command works against the lake while the collectors run (no file lock).
        cid = cands[0]["candidate_id"]
        listed = json.loads(a.cli("candidates", "--mode", "tool_invocation", "--format", "json").stdout)
        assert cid in {r["candidate_id"] for r in listed}
        show = a.cli_via_db("show", cid)  # --db: through the running collector's query surface
        assert show.returncode == 0 and "tool_invocation" in show.stdout, show.stderr
        promoted = a.cli("promote", cid, "--cases", str(tmp_path / "cases.yaml"), "--owner", "lake-team")
        assert promoted.returncode == 0, promoted.stderr
        other = next(r["candidate_id"] for r in listed if split in r["trace_ids"])
        rejected = b.cli("reject", other, "--reason", "split test trace")
        assert rejected.returncode == 0, rejected.stderr
        refused = a.cli("query", "DELETE FROM spans")
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1

        for col in collectors:
            assert col.stop() == 0, col.log()
            assert not col.db_path.exists()  # serve --db only named the discovery file: the lake is the store
    finally:
        for col in collectors:
            col.kill()

    # The CLI still works with every collector stopped; the candidate kept its review.
    status = run_cli("query", f"SELECT candidate_id, status FROM candidates WHERE candidate_id IN ('{cid}', "
                     f"'{other}') ORDER BY status", "--config", str(a.config_path), "--format", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == [{"candidate_id": cid, "status": "promoted"},
                                         {"candidate_id": other, "status": "rejected"}]
    exported = run_cli("export", "--format", "jsonl", "--config", str(a.config_path))
    assert exported.returncode == 0 and cid in exported.stdout, exported.stderr
    report = run_cli("report", "--out", str(tmp_path / "report.html"), "--config", str(a.config_path))
    assert report.returncode == 0 and "DuckLake" in (tmp_path / "report.html").read_text(), report.stderr
    # An operator's plain DuckDB session attaches the lake (extensions loaded from the pip packages).
    plain = subprocess.run([sys.executable, "-c", OPERATOR_SESSION, catalog, str(tmp_path / "ext")],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == {"spans": spans + 1, "promoted": 1}


#: What README "Querying a lake from DuckDB" tells operators to run, as a script.
OPERATOR_SESSION = r"""
import json, pathlib, sys
import duckdb, duckdb_extension_ducklake, duckdb_extension_postgres
catalog, ext_dir = sys.argv[1], sys.argv[2]
con = duckdb.connect(config={"extension_directory": ext_dir})
for pkg, name in ((duckdb_extension_ducklake, "ducklake"), (duckdb_extension_postgres, "postgres")):
    path = pathlib.Path(pkg.__path__[0], "extensions", "v" + duckdb.__version__, name + ".duckdb_extension")
    con.execute(f"INSTALL '{path}'")
con.execute("LOAD ducklake")
con.execute("LOAD postgres_scanner")
con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (READ_ONLY)")
spans = con.execute("SELECT count(*) FROM lake.spans").fetchone()[0]
promoted = con.execute("SELECT count(*) FROM lake.candidates WHERE status = 'promoted'").fetchone()[0]
print(json.dumps({"spans": spans, "promoted": promoted}))
"""


@needs_lake_extra
def test_lake_config_errors_are_one_line(tmp_path: Path) -> None:
    def serve(config: dict[str, Any], *python_prefix: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(config))
        code = ("".join(python_prefix) + "from tracesieve.collector.cli import main; "
                f"main(['serve', '--config', {str(path)!r}])")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)

    # The catalog cannot be reached (nothing listens on that port).
    nobody = f"postgres:dbname=x host=127.0.0.1 port={free_port()} user=postgres password=s3cret"
    result = serve(lake_config(nobody, tmp_path / "d"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DuckLake catalog" in lines[0] and "s3cret" not in result.stderr, result.stderr
    # Both backends at once.
    both = lake_config(nobody, tmp_path / "d")
    both["storage"]["duckdb"] = {"path": "x.duckdb"}
    result = serve(both)
    assert result.returncode == 2 and "exactly one of duckdb" in result.stderr
    # Not a PostgreSQL catalog.
    result = serve(lake_config("sqlite:meta.db", tmp_path / "d"))
    assert result.returncode == 2 and "storage.ducklake.catalog" in result.stderr
    # The extension packages are missing: the pip command to run.
    result = serve(lake_config(nobody, tmp_path / "d"), "import sys; sys.modules['duckdb_extension_ducklake'] = None; ")
    assert result.returncode == 2 and "tracesieve[lake]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # --print-config never shows the catalog password.
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(lake_config(nobody, tmp_path / "d")))
    printed = run_cli("serve", "--config", str(path), "--print-config")
    assert printed.returncode == 0 and "ducklake" in printed.stdout and "s3cret" not in printed.stdout


@needs_lake_extra
def test_the_password_of_a_uri_catalog_stays_out_of_errors_and_print_config(tmp_path: Path) -> None:
    """libpq takes a URI too (`postgresql://user:secret@host/db`): only `password=` was hidden, so the
    URI's password was printed by every catalog error and by --print-config."""
    uri = f"postgres:postgresql://postgres:s3cret@127.0.0.1:{free_port()}/tracesieve"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(lake_config(uri, tmp_path / "lake")))
    for args in (("serve",), ("query", "SELECT count(*) FROM spans"), ("candidates",)):
        result = run_cli(*args, "--config", str(path), "--db", str(tmp_path / "x.duckdb"), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "postgres:<redacted>@127.0.0.1" in lines[0] and "s3cret" not in lines[0], lines
    printed = run_cli("serve", "--config", str(path), "--print-config")
    assert printed.returncode == 0 and "ducklake" in printed.stdout and "s3cret" not in printed.stdout


@needs_postgres
@needs_lake_extra
def test_a_catalog_database_that_does_not_exist_is_named_in_one_line(postgres: PostgresCluster,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(lake_config(postgres.catalog("nosuchdb"), tmp_path / "lake")))
    for args in (("serve",), ("query", "SELECT count(*) FROM spans")):
        result = run_cli(*args, "--config", str(path), "--db", str(tmp_path / "x.duckdb"), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and 'database "nosuchdb" does not exist' in lines[0] and "createdb" in lines[0], lines
        assert "__ducklake_metadata" not in lines[0]  # DuckDB's wrapping, not the operator's words
    # The database exists but no collector has created the lake in it yet: readers say so.
    path.write_text(yaml.safe_dump(lake_config(postgres.create_database("empty"), tmp_path / "lake")))
    result = run_cli("query", "SELECT count(*) FROM spans", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "holds no lake yet" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@needs_postgres
@needs_lake_extra
def test_promote_and_reject_never_create_a_lake_in_an_empty_catalog(postgres: PostgresCluster,
                                                                    tmp_path: Path) -> None:
    """Only `serve` creates a lake: a review command pointed at an empty database (a mistyped catalog)
    used to create the whole lake there, pinned to its own data path, and then answer "no candidate"."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(lake_config(postgres.create_database("reviewonly"), tmp_path / "lake")))
    for args in (("reject", "c0", "--reason", "noise"),
                 ("promote", "c0", "--cases", str(tmp_path / "cases.yaml"), "--owner", "me")):
        result = run_cli(*args, "--config", str(path), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "holds no lake yet" in lines[0], lines
    # ...and the database still holds no lake: readers say so too.
    result = run_cli("query", "SELECT count(*) FROM spans", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "holds no lake yet" in result.stderr, result.stderr
    assert not (tmp_path / "cases.yaml").exists()


@needs_postgres
@needs_lake_extra
def test_a_data_path_that_cannot_be_written_stops_serve_in_one_line(postgres: PostgresCluster,
                                                                    tmp_path: Path) -> None:
    catalog = postgres.create_database("unwritable")
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a path under a regular file: not writable, even for root
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(lake_config(catalog, blocker / "lake")))
    for args in (("serve",), ("promote", "c0", "--cases", str(tmp_path / "cases.yaml"), "--owner", "me")):
        result = run_cli(*args, "--config", str(path), "--db", str(tmp_path / "x.duckdb"), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "storage.ducklake.data_path" in lines[0] and str(blocker) in lines[0], lines
        assert "internal error" not in lines[0]


@needs_postgres
@needs_lake_extra
def test_a_reject_racing_a_promote_on_the_lake_leaves_one_decision(postgres: PostgresCluster,
                                                                   tmp_path: Path) -> None:
    """Two reviewers on two machines decide the same candidate at once: one wins, the other is refused,
    and the loser's cases.yaml does not keep a case for it."""
    c = LakeCollector(tmp_path, lake_config(postgres.create_database("review_race"), tmp_path / "data"))
    try:
        c.start(timeout=120)
        with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
            for i in range(3):
                emit_agent_trace(tracer, question=f"Where is my order ORD-{i}?", tool_error=True)
        rows = c.wait_for("SELECT candidate_id FROM candidates ORDER BY 1", lambda r: len(r) == 3, timeout=60)
        # A report made through the collector's --db names the lake, not the --db path (no file there).
        page = tmp_path / "review.html"
        made = c.cli_via_db("report", "--out", str(page))
        assert made.returncode == 0 and "DuckLake postgres:dbname=review_race" in page.read_text(), made.stderr
    finally:
        c.kill()
    for i, row in enumerate(rows):
        cid, cases = row["candidate_id"], tmp_path / f"cases-{i}.yaml"
        procs = [subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", *args, "--config",
                                   str(c.config_path)], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for args in (("reject", cid, "--reason", "noise"),
                              ("promote", cid, "--cases", str(cases), "--owner", "ann"))]
        (reject, promote) = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
        assert sorted([reject[0], promote[0]]) == [0, 2], (reject, promote)
        status = c.query(f"SELECT status FROM candidates WHERE candidate_id = '{cid}'")[0]["status"]
        assert status == ("rejected" if reject[0] == 0 else "promoted")
        assert (cid in (cases.read_text() if cases.exists() else "")) == (promote[0] == 0)


@needs_postgres
@needs_lake_extra
def test_a_span_retried_after_a_slow_lake_commit_is_stored_once(postgres: PostgresCluster, tmp_path: Path) -> None:
    """Another writer holds the lake's commit lock for longer than a client waits: the client is told to
    retry, the spans are committed once the lock is free, and the client's retry must not store them again."""
    from tracesieve.storage import lake

    catalog = postgres.create_database("slow_commit")
    c = LakeCollector(tmp_path, lake_config(catalog, tmp_path / "data"))
    holder = lake.open_lake(lake.LakeTarget(catalog, str(tmp_path / "data") + "/"))
    try:
        c.start(timeout=120)
        ids: dict[str, str] = {}
        body = _otlp_protobuf(lambda t: ids.setdefault("id", emit_agent_trace(t, tool_error=True)))
        url, headers = f"http://127.0.0.1:{c.http_port}/v1/traces", {"Content-Type": "application/x-protobuf"}
        with lake.CommitLock(holder, lake.LakeTarget(catalog, str(tmp_path / "data") + "/")):
            slow = httpx.post(url, content=body, headers=headers, timeout=120)
        assert slow.status_code in (429, 503), slow.text  # the commit waited past the export's patience
        deadline = time.monotonic() + 60
        while (retry := httpx.post(url, content=body, headers=headers, timeout=120)).status_code != 200:
            assert time.monotonic() < deadline, retry.text
            time.sleep(0.5)
        rows = c.query(f"SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans WHERE trace_id = '{ids['id']}'")
        assert rows == [{"n": 5, "d": 5}]
    finally:
        holder.close()
        c.kill()


@needs_postgres
@needs_lake_extra
def test_a_batch_re_sent_to_the_lake_with_nothing_new_is_no_arrival(postgres: PostgresCluster, tmp_path: Path) -> None:
    """test_flow's re-sent batch on a lake: each stored-again copy used to count as the trace's arrival
    (received_seq + 1), so a batch re-sent every 200 ms kept its trace from ever settling, and one re-sent
    after the judgement had it judged again."""
    from opentelemetry.sdk.trace.export import SpanExportResult
    from test_metrics import scrape, value

    c = LakeCollector(tmp_path, lake_config(postgres.create_database("resent"), tmp_path / "data",
                                            {"processors": {"detectors": {"decision_wait": "2s"}}}))
    try:
        c.start(timeout=120)
        exporter = OTLPSpanExporter(endpoint=f"http://{c.grpc_endpoint}", insecure=True, timeout=30)
        trace_id, spans = recorded_spans(lambda tracer: emit_agent_trace(tracer, tool_error=True))
        stop, results = threading.Event(), []

        def resend() -> None:  # the same batch, again and again, every 200 ms (a query here takes ~1 s)
            while not stop.is_set():
                results.append(exporter.export(spans))
                stop.wait(0.2)

        started = time.monotonic()
        sender = threading.Thread(target=resend)
        sender.start()
        try:
            c.wait_for(f"SELECT count(*) AS n FROM detections WHERE trace_id = '{trace_id}'",
                       lambda r: r != [{"n": 0}], timeout=20)
        finally:
            stop.set()
            sender.join()
        assert time.monotonic() - started < 15 and set(results) == {SpanExportResult.SUCCESS}
        _wait_all_judged(c, 1)
        before = scrape(c)
        for _ in range(3):
            assert exporter.export(spans) == SpanExportResult.SUCCESS
        time.sleep(3.5)  # past decision_wait: a copy taken for an arrival would be judged by then
        after = scrape(c)
        assert value(after, "tracesieve_traces_judged_total") == value(before, "tracesieve_traces_judged_total") == 1
        assert value(after, "tracesieve_spans_already_stored_total") \
            - value(before, "tracesieve_spans_already_stored_total") == 15
        assert c.query("SELECT received_seq, judged_seq FROM trace_state") == [{"received_seq": 1, "judged_seq": 1}]
        assert c.query(f"SELECT count(*) AS n FROM spans WHERE trace_id = '{trace_id}'") == [{"n": 5}]
        exporter.shutdown()
        assert c.stop() == 0
    finally:
        c.kill()


@needs_postgres
@needs_lake_extra
def test_the_startup_record_names_the_lake_as_the_store(postgres: PostgresCluster, tmp_path: Path) -> None:
    """README: serve logs the store path when it is up. On a lake it named `--db` (store.duckdb), a file that
    only tells commands where the query surface is: an operator read that spans went to a local file."""
    catalog = postgres.create_database("startup") + " password=hunter2"  # trust auth: the password is ignored
    c = LakeCollector(tmp_path, lake_config(catalog, tmp_path / "data"), args=("--log-format", "json"))
    try:
        c.start(timeout=120)
        up = next(json.loads(line) for line in c.log().splitlines() if '"tracesieve is up"' in line)
        assert up["store"].startswith("DuckLake postgres:") and str(tmp_path / "data") in up["store"], up
        assert "store.duckdb" not in up["store"] and "hunter2" not in c.log()
        assert c.stop() == 0
    finally:
        c.kill()


@needs_postgres
@needs_lake_extra
def test_a_restarted_collector_judges_what_it_left_pending_on_the_lake(postgres: PostgresCluster,
                                                                       tmp_path: Path) -> None:
    catalog = postgres.create_database("restart")
    c = LakeCollector(tmp_path, lake_config(catalog, tmp_path / "data",
                                            {"processors": {"detectors": {"decision_wait": "1m"}}}))
    try:
        c.start(timeout=120)
        with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
            trace_id = emit_agent_trace(tracer, tool_error=True)
        c.stop(signal.SIGKILL)  # stored and acknowledged, never judged
        # The same instance (same host and ports: the same trace_state owner) comes back.
        c.config_path.write_text(c.config_path.read_text().replace("1m", "300ms"))
        c.start(timeout=120)
        rows = c.wait_for(f"SELECT failure_mode FROM detections WHERE trace_id = '{trace_id}'",
                          lambda r: len(r) == 1, timeout=20)  # well before another member's takeover (30 s)
        assert rows == [{"failure_mode": "tool_invocation"}]
        assert c.stop() == 0
    finally:
        c.kill()


@needs_postgres
@needs_lake_extra
def test_overlapping_lake_writes_conflict_and_the_retry_sees_the_winner(postgres: PostgresCluster,
                                                                        tmp_path: Path) -> None:
    """Two writers insert the same row at once: one commits, the other retries and stores nothing."""
    from tracesieve.storage import lake

    target = lake.LakeTarget(postgres.create_database("race"), str(tmp_path / "data") + "/")
    con = lake.open_lake(target)
    try:
        lake.run_in_transaction(con, lambda c: c.execute("CREATE TABLE race (k VARCHAR, writer VARCHAR)"),
                                writer="setup")
        both_inside = threading.Barrier(2, timeout=30)
        conflicts: dict[str, int] = {"a": 0, "b": 0}
        inserted: dict[str, int] = {}

        def write(name: str) -> None:
            cursor = con.cursor()
            attempts = 0

            def body(c: Any) -> int:
                nonlocal attempts
                attempts += 1
                row = c.execute("INSERT INTO race SELECT 'k', ? WHERE NOT EXISTS "
                                "(SELECT 1 FROM race WHERE k = 'k')", [name]).fetchone()
                if attempts == 1:
                    both_inside.wait()  # both transactions are open and have inserted before either commits
                return int(row[0])

            def count() -> None:
                conflicts[name] += 1

            inserted[name] = lake.run_in_transaction(cursor, body, writer=name, on_conflict=count)

        threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(inserted.values()) == [0, 1]  # the loser's retry found the winner's row
        assert sorted(conflicts.values()) == [0, 1]
        assert con.execute("SELECT count(*) FROM race").fetchone() == (1,)
    finally:
        con.close()


def _otlp_protobuf(trace: Callable[[otel_trace.Tracer], object]) -> bytes:
    """An OTLP/HTTP protobuf body, encoded by the real SDK, of the spans ``trace`` records."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "outage-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace(provider.get_tracer("outage"))
    provider.shutdown()
    return bytes(encode_spans(memory.get_finished_spans()).SerializeToString())


@needs_postgres
@needs_lake_extra
def test_a_catalog_outage_under_a_running_collector(tmp_path: Path) -> None:
    """PostgreSQL restarts under a running collector: clients are told to retry, nothing acknowledged is
    lost, the collector recovers by itself, and its log neither leaks the catalog password nor floods."""
    assert PG_BIN is not None
    cluster = PostgresCluster(PG_BIN).start()
    # trust authentication ignores the password, but it is in the connection string every error quotes
    catalog = cluster.create_database("outage") + " password=s3cret"
    c = LakeCollector(tmp_path, lake_config(catalog, tmp_path / "data"))
    url = f"http://127.0.0.1:{c.http_port}/v1/traces"
    headers = {"Content-Type": "application/x-protobuf"}
    try:
        c.start(timeout=120)
        with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
            before = emit_agent_trace(tracer, tool_error=True)
        c.wait_for(f"SELECT 1 FROM detections WHERE trace_id = '{before}'", lambda r: len(r) == 1, timeout=60)

        cluster.stop_server()
        refused = {}
        body = _otlp_protobuf(lambda t: refused.setdefault("id", emit_agent_trace(t, tool_error=True)))
        answer = httpx.post(url, content=body, headers=headers, timeout=60)
        assert answer.status_code in (429, 503) and "retry-after" in answer.headers, answer.text
        # /metrics still answers with the process's own series (commit failures included); /readyz stays up
        scrape = httpx.get(f"{c.http_url}/metrics", timeout=30)
        assert scrape.status_code == 200 and 'tracesieve_spans_refused_total{reason="commit_failed"' in scrape.text
        time.sleep(4)  # the judge keeps polling a catalog that is down
        cluster.start_server()

        acked = {}
        body = _otlp_protobuf(lambda t: acked.setdefault("id", emit_agent_trace(t, tool_error=True)))
        deadline = time.monotonic() + 60
        while (answer := httpx.post(url, content=body, headers=headers, timeout=60)).status_code != 200:
            assert answer.status_code in (429, 503) and time.monotonic() < deadline, answer.text
            time.sleep(0.5)
        rows = c.wait_for(f"SELECT trace_id, count(*) AS n FROM detections WHERE trace_id IN "
                          f"('{before}', '{acked['id']}', '{refused['id']}') GROUP BY 1",
                          lambda r: len(r) == 2, timeout=60)
        assert {r["trace_id"] for r in rows} == {before, acked["id"]}  # the refused request stored nothing
        assert 'tracesieve_candidates{status="new"} 1.0' in httpx.get(f"{c.http_url}/metrics", timeout=30).text
        # Stopped while the catalog is down: the drain cannot judge; it says so and exits 0 (nothing is lost)
        cluster.stop_server()
        assert c.stop() == 0, c.log()[-2000:]
        cluster.start_server()
        log = c.log()
        assert "judged on the next start" in log and "internal error" not in log
        assert "s3cret" not in log, [line for line in log.splitlines() if "s3cret" in line][:3]
        failures = [line for line in log.splitlines() if "judging failed" in line]
        assert 1 <= len(failures) <= 3, failures  # logged once, then at most every few seconds: not 4 a second
    finally:
        c.kill()
        cluster.stop()


@needs_postgres
@needs_lake_extra
def test_commands_through_a_collector_say_when_its_catalog_is_down(tmp_path: Path) -> None:
    """While PostgreSQL is down, a command answered through the running collector (--db) got
    "the collector failed: internal error: IOException": now it names the catalog (password hidden)
    and what to do, in one line, and works again once the catalog is back."""
    assert PG_BIN is not None
    cluster = PostgresCluster(PG_BIN).start()
    catalog = cluster.create_database("down") + " password=s3cret"  # trust ignores it; errors quote it
    c = LakeCollector(tmp_path, lake_config(catalog, tmp_path / "data", {"service": {"span_workers": 0}}))
    try:
        c.start(timeout=120)
        cluster.stop_server()
        for args in (("query", "SELECT count(*) FROM spans"), ("candidates",), ("reject", "c0", "--reason", "noise")):
            result = c.cli_via_db(*args)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "DuckLake catalog" in lines[0] and "Connection refused" in lines[0], lines
            assert "internal error" not in lines[0] and "s3cret" not in lines[0], lines
        cluster.start_server()
        assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 0}]
        assert c.stop() == 0
    finally:
        c.kill()
        cluster.stop()


@contextlib.contextmanager
def _commit_lock_held(postgres: PostgresCluster, database: str, seconds: float) -> Iterator[None]:
    """A psql session holding the collectors' commit lock (the advisory lock every lake write queues on)
    in ``database`` for ``seconds``: every collector then judges its round before any of them writes."""
    assert PG_BIN is not None
    held = subprocess.Popen(["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p",
                             str(postgres.port), "-d", database, "-c",
                             f"SELECT pg_advisory_lock({LAKE_COMMIT_LOCK_KEY}), pg_sleep({seconds})"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        held.wait(30)


@contextlib.contextmanager
def _collectors_on_one_lake(tmp_path: Path, catalog: str, extra: dict[str, Any],
                            count: int = 3) -> Iterator[list[LakeCollector]]:
    """``count`` started collectors on one lake, each in its own folder; stopped (exit 0) when the block
    ends, killed if it fails."""
    collectors = []
    for i in range(count):
        (tmp_path / f"c{i}").mkdir()
        collectors.append(LakeCollector(tmp_path / f"c{i}", lake_config(catalog, tmp_path / "data", extra)))
    try:
        for c in collectors:
            c.start(timeout=120)
        yield collectors
        for c in collectors:
            assert c.stop() == 0, c.log()[-2000:]
    finally:
        for c in collectors:
            c.kill()


@needs_postgres
@needs_lake_extra
def test_the_per_intent_cap_holds_across_collectors(postgres: PostgresCluster, tmp_path: Path) -> None:
    """`max_per_intent` caps the rows of one (failure_mode, intent): collectors judging at once each read
    the count before the others' writes, and each filed up to the cap on its own (49 rows under 20)."""
    catalog = postgres.create_database("capped")
    extra = {"service": {"span_workers": 0},
             "processors": {"detectors": {"decision_wait": "2s"}, "promotion": {"max_per_intent": 5}}}
    with _collectors_on_one_lake(tmp_path, catalog, extra) as collectors:
        for k, c in enumerate(collectors):
            with sdk_tracer("grpc", c.grpc_endpoint, service=f"agent-{k}") as tracer:
                for j in range(8):  # distinct inputs, one failing tool: one intent, tool:lookup_order
                    emit_agent_trace(tracer, tool_error=True, session=f"{k}-{j}",
                                     question=f"Why was I charged twice for the order ORD-{k}{j} last week?")
        # Every write queues on the collectors' advisory lock: held here while the traces settle, every
        # collector judges its round at once, and the three writes then run one after the other.
        with _commit_lock_held(postgres, "capped", seconds=5):
            _wait_all_judged(collectors[0], 24)
        rows = collectors[0].query("SELECT intent, count(*) AS n FROM candidates GROUP BY 1")
        assert rows == [{"intent": "tool:lookup_order", "n": 5}], rows


@needs_postgres
@needs_lake_extra
def test_near_duplicates_seen_by_different_collectors_at_once_are_marked(postgres: PostgresCluster,
                                                                         tmp_path: Path) -> None:
    """Three very similar inputs of one failure, one per collector, judged at once: one `new` candidate and
    two `duplicate`s of it, as one collector files them (each collector used to file its own `new`)."""
    catalog = postgres.create_database("neardup")
    extra = {"service": {"span_workers": 0}, "processors": {"detectors": {"decision_wait": "2s"}}}
    with _collectors_on_one_lake(tmp_path, catalog, extra) as collectors:
        question = ("I was charged twice for my order and I would like a full refund of the second charge "
                    "to my card please thank you very much for helping")
        for c, tail in zip(collectors, ("", " today", " asap")):
            with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
                emit_agent_trace(tracer, question=question + tail, tool_error=True)
        with _commit_lock_held(postgres, "neardup", seconds=5):  # the writes wait while all three judge
            _wait_all_judged(collectors[0], 3)
        rows = collectors[0].query("SELECT candidate_id, status, duplicate_of FROM candidates ORDER BY status")
        assert [r["status"] for r in rows] == ["duplicate", "duplicate", "new"], rows
        assert {r["duplicate_of"] for r in rows[:2]} == {rows[2]["candidate_id"]}, rows


@needs_postgres
@needs_lake_extra
def test_feedback_sent_later_lands_on_the_conversation_it_links_to_on_the_lake(postgres: PostgresCluster,
                                                                            tmp_path: Path) -> None:
    """The lake saves a judge round on its own path (lake_writes): the moved finding and its candidate,
    filed under a trace outside the round, were dropped there at first."""
    c = LakeCollector(tmp_path, lake_config(postgres.create_database("feedback"), tmp_path / "data"))
    try:
        c.start(timeout=120)
        with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
            conversation, answer = emit_conversation(tracer, "Can I return a blender after 40 days?")
        c.wait_for(f"SELECT count(*) AS n FROM spans WHERE trace_id = '{conversation}'", lambda r: r[0]["n"] == 2)
        time.sleep(1.0)
        with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
            emit_thumbs_down(tracer, conversation, answer)
        rows = c.wait_for("SELECT trace_id, span_id FROM detections WHERE failure_mode = 'negative_feedback'",
                          lambda r: len(r) == 1, timeout=30)
        assert rows == [{"trace_id": conversation, "span_id": answer}]
        cands = c.wait_for("SELECT input, trace_ids FROM candidates WHERE failure_mode = 'negative_feedback'",
                           lambda r: len(r) == 1)
        assert json.loads(cands[0]["input"])["user_message"] == "Can I return a blender after 40 days?"
        assert cands[0]["trace_ids"] == [conversation]
        assert c.stop() == 0
    finally:
        c.kill()


@needs_postgres
@needs_lake_extra
def test_feedback_that_arrives_before_its_conversation_lands_on_it_on_the_lake(postgres: PostgresCluster,
                                                                              tmp_path: Path) -> None:
    """The thumbs-down reaches one collector before the conversation it scores reaches another. The file store
    judges the carrier again once the conversation is judged (test_promotion); a lake never judged a trace
    again at the same version, so the finding stayed on its carrier for good: no negative_feedback on the
    conversation, and a candidate with the carrier's empty input."""
    from opentelemetry.sdk.trace.export import SpanExportResult
    from test_metrics import scrape, value

    catalog = postgres.create_database("early_feedback")
    with _collectors_on_one_lake(tmp_path, catalog, {}, count=2) as (agent_side, feedback_side):
        (conversation, answer), spans = recorded_spans(
            lambda tracer: emit_conversation(tracer, "Can I return a blender after 40 days?"), service="support-agent")
        with sdk_tracer("http", feedback_side.http_url, service="feedback") as tracer:
            carrier = emit_thumbs_down(tracer, conversation, answer)
        feedback_side.wait_for(f"SELECT count(*) AS n FROM detections WHERE trace_id = '{carrier}'",
                               lambda r: r == [{"n": 1}])  # judged alone: the conversation is not there yet
        exporter = OTLPSpanExporter(endpoint=f"http://{agent_side.grpc_endpoint}", insecure=True, timeout=30)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()

        rows = agent_side.wait_for("SELECT trace_id, span_id, evidence FROM detections "
                                   "WHERE failure_mode = 'negative_feedback'",
                                   lambda r: [x["trace_id"] for x in r] == [conversation], timeout=60)
        assert rows[0]["span_id"] == answer and json.loads(rows[0]["evidence"])["carrier_trace_id"] == carrier
        cands = agent_side.wait_for("SELECT input, trace_ids, occurrences FROM candidates "
                                    "WHERE failure_mode = 'negative_feedback'",
                                    lambda r: [x["trace_ids"] for x in r] == [[conversation]], timeout=60)
        assert json.loads(cands[0]["input"])["user_message"] == "Can I return a blender after 40 days?"
        assert cands[0]["occurrences"] == 1
        _wait_all_judged(agent_side, 2)
        judged = [value(scrape(c), "tracesieve_traces_judged_total") for c in (agent_side, feedback_side)]
        time.sleep(2.0)  # the carrier is judged again once, not over and over
        assert [value(scrape(c), "tracesieve_traces_judged_total") for c in (agent_side, feedback_side)] == judged
        assert sum(judged) == 3, judged  # the carrier alone, the conversation, the carrier again
        assert feedback_side.query("SELECT trace_id FROM detections") == [{"trace_id": conversation}]


@needs_postgres
@needs_lake_extra
def test_a_carrier_stranded_while_its_conversation_was_judged_elsewhere_is_judged_again_once(
        postgres: PostgresCluster, tmp_path: Path) -> None:
    """Two collectors: one reads the carrier's round before the conversation arrives, and writes it after the
    other collector has judged the conversation (whose write then found no stranded feedback to put back).
    The carrier's own write sees the conversation in the lake and puts itself back, once: judged again and
    still stranded (say the conversation's spans could not be read), it is not put back over and over."""
    import pyarrow as pa

    from tracesieve.storage import lake, lake_writes
    from tracesieve.storage.schema import SPAN_SCHEMA, Detection, utcnow

    def one_span(trace_id: str) -> pa.Table:
        cols = {f.name: pa.nulls(1, f.type) for f in SPAN_SCHEMA}
        cols.update(trace_id=pa.array([trace_id]), span_id=pa.array(["12" * 8]), name=pa.array(["s"]))
        return pa.table(cols, schema=SPAN_SCHEMA)

    def in_transaction(work: Callable[[Any], object]) -> None:
        con.execute("BEGIN TRANSACTION")
        work(con)
        con.execute("COMMIT")

    con = lake.open_lake(lake.LakeTarget(postgres.create_database("stranded_race"), str(tmp_path / "data") + "/"))
    try:
        carrier, conversation = "ab" * 16, "cd" * 16
        in_transaction(lambda c: lake_writes.insert_spans(c, one_span(carrier), "feedback-side", utcnow()))
        in_transaction(lambda c: lake_writes.insert_spans(c, one_span(conversation), "agent-side", utcnow()))
        first = con.execute(f"SELECT first_received_at FROM trace_state WHERE trace_id = '{carrier}'").fetchone()[0]
        thumbs_down = Detection(carrier, "12" * 8, "feedback", "negative_feedback", "P2", "customer_visible",
                                "thumbs down", {"target": {"trace_id": conversation, "span_id": "34" * 8}})
        states = lake_writes.LakeTraceStore("feedback-side")
        seqs = f"SELECT received_seq, judged_seq FROM trace_state WHERE trace_id = '{carrier}'"

        in_transaction(lambda c: states.save_judgement(c, [(carrier, 1, first)], [thumbs_down], [], utcnow()))
        assert con.execute(seqs).fetchall() == [(2, 1)]  # to be judged again: the finding can move now
        in_transaction(lambda c: states.save_judgement(c, [(carrier, 2, first)], [thumbs_down], [], utcnow()))
        assert con.execute(seqs).fetchall() == [(2, 2)]  # and once only
    finally:
        con.close()


@needs_postgres
@needs_lake_extra
def test_a_lake_made_before_scope_attributes_is_migrated_and_stores_them(postgres: PostgresCluster, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Lake migration 5 adds spans.scope_attributes to a lake the previous release made (spans without it)."""
    from tracesieve.storage import lake, migrations

    catalog = postgres.create_database("before_scope")
    with monkeypatch.context() as before:  # the previous release: migration 1 only, its spans table
        before.setattr(lake, "LAKE_MIGRATIONS", lake.LAKE_MIGRATIONS[:1])
        before.setattr(lake, "SPANS_DDL", migrations._SPANS_V3_DDL)
        lake.open_lake(lake.LakeTarget(catalog, str(tmp_path / "data") + "/")).close()
    c = LakeCollector(tmp_path, lake_config(catalog, tmp_path / "data"))
    try:
        c.start(timeout=120)
        with sdk_tracer("grpc", c.grpc_endpoint, scope_attributes={"library.language": "python"}) as tracer:
            trace_id = emit_agent_trace(tracer, tool_error=True)
        rows = c.wait_for(f"SELECT DISTINCT scope_attributes->>'$.library.language' AS language FROM spans "
                          f"WHERE trace_id = '{trace_id}'", lambda r: len(r) == 1, timeout=60)
        assert rows == [{"language": "python"}]
        assert c.query("SELECT max(version) AS v FROM schema_version") == [{"v": 5}]
        assert c.stop() == 0
    finally:
        c.kill()
