"""serve's lifecycle and the query path: graceful shutdown, restart persistence, query with and without serve."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml

from conftest import FAST_JUDGE, free_port, run_cli
from proc_helpers import children_of
from sdk_helpers import emit_agent_trace, sdk_tracer
from test_receivers import make_request, post

NO_JUDGE = {"service": {"pipelines": {"traces": {"processors": []}}}}


def test_sigterm_drains_commits_and_exits_zero_then_restart_keeps_everything(start_collector, tmp_path):
    c = start_collector(NO_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_ids = [emit_agent_trace(tracer) for _ in range(5)]
    assert post(c, make_request(7).SerializeToString()).status_code == 200
    started = time.monotonic()
    assert c.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert not os.path.exists(str(c.db_path) + ".serve.json")
    # the file is closed: the CLI opens it directly now
    direct = c.cli("query", "SELECT count(*) AS n, count(DISTINCT trace_id) AS t FROM spans", "--format", "json")
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) == [{"n": 5 * 5 + 7, "t": 6}]
    c.start()
    rows = c.query("SELECT DISTINCT trace_id FROM spans WHERE service_name = 'test-agent'")
    assert sorted(r["trace_id"] for r in rows) == sorted(trace_ids)
    assert c.stop(signal.SIGINT) == 0


def test_sighup_drains_and_exits_zero_like_sigterm(start_collector):
    """A closed terminal or SSH session sends SIGHUP: serve used to die of it at once (no drain, its
    <db>.serve.json and token left behind); it now stops the way SIGTERM stops it."""
    c = start_collector(NO_JUDGE)
    assert post(c, make_request(4).SerializeToString()).status_code == 200
    assert c.stop(signal.SIGHUP) == 0
    assert "signal received: draining" in c.log(), c.log()[-2000:]
    assert not os.path.exists(str(c.db_path) + ".serve.json")
    assert not os.path.exists(str(c.db_path) + ".serve.token")
    direct = c.cli("query", "SELECT count(*) AS n FROM spans", "--format", "json")
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) == [{"n": 4}]


def test_query_refuses_writes_and_changes_nothing(start_collector):
    c = start_collector(NO_JUDGE)
    assert post(c, make_request(3).SerializeToString()).status_code == 200
    for statement in ("DELETE FROM spans", "DROP TABLE spans", "INSERT INTO spans (trace_id, span_id) VALUES ('a','b')",
                      "SELECT 1; DELETE FROM spans", "COPY spans TO '/tmp/x.csv'", "ATTACH '/tmp/other.db'"):
        result = c.cli("query", statement)
        assert result.returncode == 2, statement
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("tracesieve: error:")
    assert "refused an INSERT statement" in c.cli("query", "INSERT INTO spans (trace_id) VALUES ('a')").stderr
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 3}]
    c.stop()
    offline = c.cli("query", "UPDATE spans SET name = 'x'")
    assert offline.returncode == 2
    assert c.cli("query", "SELECT count(*) AS n FROM spans WHERE name = 'x'", "--format", "json").stdout.strip() \
        == '[\n  {\n    "n": 0\n  }\n]'


#: Statements that parse as a read (EXPLAIN, SELECT) or as settings, but write or change something.
DISGUISED_WRITES = (
    "EXPLAIN ANALYZE DELETE FROM spans", "explain analyse UPDATE spans SET name = 'x'",
    "EXPLAIN ANALYZE INSERT INTO spans (trace_id, span_id) VALUES ('a', 'b')",
    "EXPLAIN ANALYZE CREATE TABLE stolen AS SELECT * FROM spans", "EXPLAIN ANALYZE DROP TABLE detections",
    "EXPLAIN (ANALYZE, FORMAT json) DELETE FROM spans", "/* hi */ EXPLAIN -- there\n ANALYZE DELETE FROM spans",
    "EXPLAIN DELETE FROM spans", "EXPLAIN ANALYZE SET threads = 1", "SET threads = 1", "RESET threads",
    "PRAGMA enable_profiling", "CALL checkpoint()", "SELECT * FROM checkpoint()", "SELECT * FROM force_checkpoint()",
    "SELECT * FROM enable_profiling()", "SELECT setseed(0.5)", "SELECT nextval('s')",
    "SELECT * FROM query('SELECT * FROM checkpoint()')", "EXPLAIN ANALYZE SELECT * FROM checkpoint()",
    "INSTALL json", "LOAD json", "EXPORT DATABASE '/tmp/ts-export'", "CHECKPOINT", "VACUUM",
)


def test_explain_analyze_and_writing_functions_are_refused_in_both_modes(start_collector):
    """EXPLAIN ANALYZE runs the statement it explains: through the collector, EXPLAIN ANALYZE DELETE
    FROM spans emptied the store."""
    c = start_collector(NO_JUDGE)
    assert post(c, make_request(3).SerializeToString()).status_code == 200
    for served in (True, False):
        if not served:
            c.stop()
        for statement in DISGUISED_WRITES:
            result = c.cli("query", statement)
            assert result.returncode == 2, (served, statement, result.stdout)
            assert result.stderr.count("\n") == 1 and result.stderr.startswith("tracesieve: error:"), result.stderr
        assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 3}]
        for statement in ("EXPLAIN SELECT * FROM spans", "EXPLAIN ANALYZE SELECT count(*) FROM spans",
                          "EXPLAIN (FORMAT json) SELECT 1", "SELECT * FROM query('SELECT count(*) FROM spans')"):
            result = c.cli("query", statement)
            assert result.returncode == 0, (served, statement, result.stderr)


def test_a_pivot_without_values_is_refused_for_what_it_is_and_with_values_answers(start_collector):
    """DuckDB expands a PIVOT without an IN list into two statements (a CREATE TYPE, then the query):
    one read statement was refused with "only one statement per query is allowed"."""
    c = start_collector(NO_JUDGE)
    assert post(c, make_request(3).SerializeToString()).status_code == 200
    for served in (True, False):
        if not served:
            c.stop()
        refused = c.cli("query", "PIVOT spans ON status_code USING count(*)")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "PIVOT without an IN list" in refused.stderr and "IN (" in refused.stderr, refused.stderr
        assert "only one statement" in c.cli("query", "SELECT 1; SELECT 2").stderr
        named = c.cli("query", "PIVOT (SELECT status_code FROM spans) ON status_code IN ('UNSET', 'OK') USING count(*)",
                      "--format", "json")
        assert named.returncode == 0, named.stderr
        assert json.loads(named.stdout) == [{"UNSET": 3, "OK": 0}], named.stdout


def test_a_symlink_or_another_spelling_of_the_store_finds_the_running_collector(start_collector, tmp_path):
    """--db through a symlink looked for <link>.serve.json, found none, and hit the file lock."""
    c = start_collector(NO_JUDGE)
    assert post(c, make_request(3).SerializeToString()).status_code == 200
    link = tmp_path / "link.duckdb"
    link.symlink_to(c.db_path)
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    for db in (str(link), str(tmp_path / "alias" / "store.duckdb"), "link.duckdb"):
        result = run_cli("query", "SELECT count(*) AS n FROM spans", "--format", "json", "--db", db, cwd=tmp_path)
        assert result.returncode == 0, (db, result.stderr)
        assert json.loads(result.stdout) == [{"n": 3}]


def test_a_stale_discovery_file_with_a_live_pid_falls_back_to_the_file(tmp_path):
    """serve killed hard leaves <db>.serve.json; once its pid is reused, every command failed with
    'cannot reach the collector ... Connection refused' although the file was free to open."""
    from conftest import free_port
    from tracesieve.storage.store import open_database

    db = tmp_path / "store.duckdb"
    con = open_database(str(db))
    con.execute("CREATE TABLE marker AS SELECT 42 AS answer")
    con.close()
    (tmp_path / "store.duckdb.serve.json").write_text(json.dumps(
        {"pid": os.getpid(), "url": f"http://127.0.0.1:{free_port()}", "cafile": None, "db": str(db)}))
    result = run_cli("query", "SELECT answer FROM marker", "--format", "json", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"answer": 42}]
    rejected = run_cli("reject", "c00000000000", "--reason", "no such", "--db", str(db))  # a write, opened directly
    assert rejected.returncode == 2 and "no candidate" in rejected.stderr, rejected.stderr
    locked = duckdb.connect(str(db))  # now something holds the file: the error names both problems
    try:
        held = run_cli("query", "SELECT 1", "--db", str(db))
    finally:
        locked.close()
    assert held.returncode == 2 and held.stderr.count("\n") == 1
    assert "cannot reach the collector" in held.stderr and "locked" in held.stderr


def test_a_write_command_waits_for_the_file_another_command_holds_for_a_moment(start_collector, tmp_path):
    """Without `serve`, `promote` exited 2 "locked by another process" while another command (a
    colleague's `candidates`, a report) had the file open for a moment; it now waits for the lock."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        emit_agent_trace(tracer, tool_error=True)
    (row,) = c.wait_for("SELECT candidate_id FROM candidates WHERE failure_mode = 'tool_invocation'", lambda r: r)
    assert c.stop() == 0
    reader = duckdb.connect(str(c.db_path), read_only=True)  # another process's read holds the file
    try:
        promote = subprocess.Popen(
            [sys.executable, "-m", "tracesieve.collector.cli", "promote", row["candidate_id"], "--cases",
             str(tmp_path / "cases.yaml"), "--owner", "qa", "--db", str(c.db_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
    finally:
        reader.close()
    out, err = promote.communicate(timeout=60)
    assert promote.returncode == 0, err
    assert "TS-0001" in out and (tmp_path / "cases.yaml").exists()


def test_serve_restarting_waits_for_the_file_a_command_holds_for_a_moment(start_collector):
    """A supervisor restarts `serve` after a crash while an operator's `tracesieve query` (a dashboard, a
    cron job) has the file open, as commands do while no collector serves it: `serve` exited 2 "locked by
    another process" at once. It now waits for the lock, as the commands do, and serves the store."""
    import threading

    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer)
    assert c.stop() == 0
    reader = duckdb.connect(str(c.db_path), read_only=True)  # another process's read holds the file
    release = threading.Timer(2.0, reader.close)
    release.start()
    try:
        c.start(timeout=30)
    finally:
        release.join()
    assert c.query(f"SELECT count(*) AS n FROM spans WHERE trace_id = '{trace_id}'") == [{"n": 5}]
    assert c.stop() == 0


def test_queries_through_the_collector_cannot_read_its_files(start_collector):
    c = start_collector(NO_JUDGE)
    result = c.cli("query", "SELECT * FROM read_text('/etc/hostname')")
    assert result.returncode == 2
    assert "file system operations" in result.stderr or "Permission" in result.stderr
    c.stop()
    offline = c.cli("query", "SELECT * FROM read_text('/etc/hostname')")  # the store opened directly
    assert offline.returncode == 2 and offline.stderr.count("\n") == 1
    assert "file system operations" in offline.stderr or "Permission" in offline.stderr


def test_query_formats_table_json_csv(start_collector):
    c = start_collector(NO_JUDGE)
    assert post(c, make_request(2).SerializeToString()).status_code == 200
    table = c.cli("query", "SELECT span_kind, count(*) AS n FROM spans GROUP BY 1")
    assert table.returncode == 0 and "CHAIN" in table.stdout and "(1 row)" in table.stdout
    csv_out = c.cli("query", "SELECT span_kind, count(*) AS n FROM spans GROUP BY 1", "--format", "csv")
    assert csv_out.stdout.splitlines() == ["span_kind,n", "CHAIN,2"]
    js = c.cli("query", "SELECT span_kind, count(*) AS n FROM spans GROUP BY 1", "--format", "json")
    assert json.loads(js.stdout) == [{"span_kind": "CHAIN", "n": 2}]


def test_query_json_keeps_every_column_when_two_share_a_name_in_both_modes(start_collector):
    """`SELECT s.span_id, d.span_id ... --format json` printed one span_id: the other column was silently lost."""
    c = start_collector(NO_JUDGE)
    sql = "SELECT 1 AS span_id, 2 AS span_id, 3 AS span_id_1, 4 AS name"
    for served in (True, False):
        if not served:
            c.stop()
        result = c.cli("query", sql, "--format", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [{"span_id": 1, "span_id_1": 2, "span_id_1_1": 3, "name": 4}], served
        assert c.cli("query", sql, "--format", "csv").stdout.splitlines()[0] == "span_id,span_id_1,span_id_1_1,name"


def test_a_big_query_through_the_collector_costs_it_about_its_answer_in_memory(start_collector):
    """A 3-million-row `query` while serve ran took the collector from 0.2 to 3 GB: rows as Python tuples, a
    JSON text of them parsed back, and the answer encoded again. Ingest shares that process."""
    from proc_helpers import rss_kib

    c = start_collector(NO_JUDGE)
    sql = "SELECT range AS i, repeat('x', 100) AS s FROM range(1000000)"
    before = rss_kib(c.proc.pid, "VmHWM")
    result = c.cli("query", sql, "--format", "csv", timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1_000_001
    answer_kib = len(result.stdout) // 1024  # about the JSON answer's size
    grew = rss_kib(c.proc.pid, "VmHWM") - before
    assert grew < 3 * answer_kib, f"the collector grew {grew} KiB for a {answer_kib} KiB answer"


def test_a_query_through_serve_stops_at_the_query_time_limit_and_says_so(start_collector):
    """A runaway query through the collector ran on after the CLI had given up (120 s), holding a core that
    ingest needs, for as long as it took. It now stops at service.query_time_limit with a one-line reason."""
    config = {"service": {"pipelines": {"traces": {"processors": []}}, "query_time_limit": "1s"}}
    c = start_collector(config)
    runaway = "SELECT count(*) AS n FROM range(1000000000000) AS a WHERE a.range % 7 = 3"
    started = time.monotonic()
    result = c.cli("query", runaway, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "query stopped after 1 s" in result.stderr, result.stderr
    assert "service.query_time_limit" in result.stderr
    assert time.monotonic() - started < 30
    assert post(c, make_request(3).SerializeToString()).status_code == 200  # ingest carries on
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 3}]
    assert json.loads((c.workdir / "store.duckdb.serve.json").read_text())["query_time_limit"] == 1
    c.stop()
    offline = c.cli("query", "SELECT count(*) AS n FROM range(3000000) AS a WHERE a.range % 7 = 3")
    assert offline.returncode == 0, offline.stderr  # the CLI on the file itself has no such limit


def test_a_query_answer_too_big_for_the_collector_is_refused_in_one_line_and_ingest_carries_on(start_collector):
    """``SELECT *`` over a big store was built whole in the collector's memory (~4.5 GB a million spans):
    the OOM killer's pick. Past 256 MiB of answer the query stops with a line saying what to do."""
    c = start_collector({"service": {"pipelines": {"traces": {"processors": []}}}})
    huge = "SELECT repeat('x', 1000000) AS filler FROM range(400)"  # ~400 MB of answer
    result = c.cli("query", huge, "--format", "csv", timeout=120)
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.count("\n") == 1 and "the answer passed 256MiB" in result.stderr, result.stderr
    assert "LIMIT" in result.stderr and result.stdout == ""
    fits = c.cli("query", "SELECT repeat('x', 1000000) AS filler FROM range(20)", "--format", "csv", timeout=120)
    assert fits.returncode == 0 and fits.stdout.count("x" * 1000000) == 20
    assert post(c, make_request(3).SerializeToString()).status_code == 200
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 3}]


def test_query_time_limit_out_of_range_is_a_config_error(tmp_path):
    config = tmp_path / "c.yaml"
    for bad in ("0s", "2d", "soon"):
        config.write_text(yaml.safe_dump({"service": {"query_time_limit": bad}}))
        result = run_cli("serve", "--config", str(config), "--db", str(tmp_path / "x.duckdb"), "--print-config")
        assert result.returncode == 2 and "service.query_time_limit" in result.stderr, (bad, result.stderr)
    config.write_text(yaml.safe_dump({"service": {"query_time_limit": "5m"}}))
    shown = run_cli("serve", "--config", str(config), "--db", str(tmp_path / "x.duckdb"), "--print-config")
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["service"]["query_time_limit"] == "5m"  # as written, like decision_wait


def test_a_client_hanging_up_during_a_big_answer_leaves_the_log_quiet(start_collector):
    """An answer sent in pieces to a client gone after the first one logged "socket.send() raised exception."
    once per piece left (hundreds of lines for a Ctrl-C'd query)."""
    c = start_collector(NO_JUDGE)
    info = json.loads((c.workdir / "store.duckdb.serve.json").read_text())
    token = (c.workdir / "store.duckdb.serve.token").read_text().strip()
    with httpx.Client(base_url=info["url"], headers={"x-tracesieve-local-token": token}, timeout=60) as client:
        with client.stream("POST", "/api/query", json={"sql": "SELECT range, repeat('x', 100) FROM range(2000000)"}) as r:
            assert r.status_code == 200
            next(r.iter_bytes())
    assert c.query("SELECT 1 AS x") == [{"x": 1}]  # still answering
    assert "socket.send() raised" not in c.log()


def _start_runaway_query(c, served: bool = True):
    """A `query` CLI whose statement would run for hours, started once the collector (``served``) or the
    CLI itself is busy running it."""
    import sys

    from proc_helpers import cpu_seconds

    cli = subprocess.Popen(
        [sys.executable, "-m", "tracesieve.collector.cli", "query", "--db", str(c.db_path),
         "SELECT count(*) FROM range(100000000000) t(a) WHERE a % 7 = 3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runner = c.proc.pid if served else cli.pid
    deadline, used = time.monotonic() + 20, 0.0
    while used < 0.3 and time.monotonic() < deadline:  # the CLI starts, sends the query, the collector runs it
        busy = cpu_seconds(runner)
        time.sleep(1)
        used = cpu_seconds(runner) - busy
    assert used >= 0.3, "the query is not running"
    return cli


def test_a_query_whose_client_hangs_up_stops_in_the_collector(start_collector):
    """A runaway `query` Ctrl-C'd while serve ran kept running inside the collector (a core busy for as
    long as the query would take, up to service.query_time_limit) after the CLI had exited: nothing told
    DuckDB to stop."""
    from proc_helpers import cpu_seconds

    c = start_collector(NO_JUDGE)
    cli = _start_runaway_query(c)
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=15)
    assert cli.returncode == 2 and err.strip() == "tracesieve: error: aborted", err
    time.sleep(1)  # the collector notices the hang-up
    idle = cpu_seconds(c.proc.pid)
    time.sleep(3)
    assert cpu_seconds(c.proc.pid) - idle < 0.5, "the query still runs after its client left"
    assert c.query("SELECT 1 AS x") == [{"x": 1}]
    assert "Traceback" not in c.log()


def test_ctrl_c_stops_a_query_on_the_file(start_collector):
    """Without a collector, Ctrl-C on a runaway `query` left the CLI running on (most times: DuckDB's own
    check for signals stopped it only now and then, and then as `internal error: RuntimeError`)."""
    c = start_collector(NO_JUDGE)
    assert c.stop() == 0
    cli = _start_runaway_query(c, served=False)
    cli.send_signal(signal.SIGINT)
    try:
        _, err = cli.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        cli.kill()
        cli.communicate()
        raise AssertionError("the CLI still ran 10 s after Ctrl-C") from None
    assert cli.returncode == 2 and err.strip() == "tracesieve: error: aborted", err


@pytest.mark.parametrize("interrupted_after", ["click", "tracesieve.storage.errors"])
def test_ctrl_c_while_the_cli_is_still_importing_is_one_line(tmp_path, interrupted_after):
    """Ctrl-C in a command's first tenths of a second printed a KeyboardInterrupt traceback from whichever
    import it hit; inside `import duckdb` (right after tracesieve.storage.errors) DuckDB's module init turned
    it into an ImportError, and the error handler, importing duckdb again, crashed with a second traceback."""
    import sys

    from tracesieve.storage.store import open_database

    db = tmp_path / "s.duckdb"
    open_database(str(db)).close()
    # -X importtime: each import's line on stderr once it is done, so the signal lands in the imports after it
    cli = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "tracesieve.collector.cli", "query",
                            "SELECT 1", "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cli.stderr is not None
    lines = []
    for line in cli.stderr:
        lines.append(line)
        if line.rstrip().endswith(f"| {interrupted_after}"):
            cli.send_signal(signal.SIGINT)
            break
    else:
        raise AssertionError("the import was not seen:\n" + "".join(lines[-20:]))
    out, err = cli.communicate(timeout=30)
    messages = [line for line in err.splitlines() if line.strip() and not line.startswith("import time:")]
    assert cli.returncode == 2 and messages == ["tracesieve: error: aborted"], (cli.returncode, err[-3000:])


def test_serve_stops_on_sigterm_while_a_query_runs(start_collector):
    """SIGTERM while a client waited for a long query: uvicorn gave up on the request after its grace
    period, but the query ran on in its thread and serve did not exit until service.query_time_limit
    (110 s) stopped it."""
    c = start_collector(NO_JUDGE)
    cli = _start_runaway_query(c)
    started = time.monotonic()
    assert c.stop(signal.SIGTERM, timeout=40) == 0
    assert time.monotonic() - started < 30
    _, err = cli.communicate(timeout=15)
    assert cli.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in c.log()


def test_a_query_serve_stops_at_shutdown_says_so(start_collector):
    """The CLI whose query serve's SIGTERM interrupted said `the collector failed: Internal Server Error`
    (uvicorn's bare 500 for a cancelled request), as if the collector had crashed."""
    c = start_collector(NO_JUDGE)
    cli = _start_runaway_query(c)
    assert c.stop(signal.SIGTERM, timeout=40) == 0
    _, err = cli.communicate(timeout=15)
    assert cli.returncode == 2, err
    assert err.strip().splitlines() == ["tracesieve: error: serve is shutting down and stopped this call before it "
                                        "finished; run it again once serve has stopped (the CLI then opens the "
                                        "store itself)"], err


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_query_json_prints_null_for_nan_and_infinities_in_both_modes(start_collector):
    c = start_collector(NO_JUDGE)
    sql = ("SELECT 'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, '-inf'::DOUBLE AS ninf, 1.5::DOUBLE AS x, "
           "['nan'::DOUBLE, 2.0] AS l")
    expected = [{"nan": None, "inf": None, "ninf": None, "x": 1.5, "l": [None, 2.0]}]
    for served in (True, False):
        if not served:
            c.stop()
        result = c.cli("query", sql, "--format", "json")
        assert result.returncode == 0, result.stderr
        assert _strict_json(result.stdout) == expected, (served, result.stdout)
        table = c.cli("query", sql)  # the table keeps showing what DuckDB returned
        assert "nan" in table.stdout and "inf" in table.stdout


def test_query_json_prints_decimals_as_numbers_in_both_modes(start_collector):
    """`SELECT 0.5`, `sum()` of a DECIMAL column and `100.0 * n` are DECIMALs in DuckDB: `--format json`
    printed them as strings ("0.5"), so `jq '.[] | select(.share > 0.2)'` or a dashboard compared text."""
    c = start_collector(NO_JUDGE)
    sql = ("SELECT 0.5 AS half, 12.30::DECIMAL(10,2) AS price, 10::DECIMAL(18,0) AS whole, [1.5, 2.5] AS l, "
           "123456789012345678901234567890::DECIMAL(38,0) AS big")
    expected = [{"half": 0.5, "price": 12.3, "whole": 10, "l": [1.5, 2.5], "big": 123456789012345678901234567890}]
    for served in (True, False):
        if not served:
            c.stop()
        result = c.cli("query", sql, "--format", "json")
        assert result.returncode == 0, result.stderr
        rows = _strict_json(result.stdout)
        assert rows == expected, (served, result.stdout)
        assert isinstance(rows[0]["whole"], int) and isinstance(rows[0]["half"], float)


def test_query_prints_intervals_as_duckdb_writes_them_in_both_modes(start_collector):
    """`end_time - start_time` and `now() - last_seen` are INTERVALs: every format printed Python's
    timedelta text, `0:00:00.056000`, and a negative one as `-1 day, 23:59:59`."""
    c = start_collector(NO_JUDGE)
    sql = ("SELECT INTERVAL '56 milliseconds' AS took, INTERVAL '1 day 2 hours' AS age, INTERVAL '2 days' AS days, "
           "-INTERVAL 1 SECOND AS back, INTERVAL 0 SECOND AS zero")
    expected = {"took": "00:00:00.056", "age": "1 day 02:00:00", "days": "2 days", "back": "-00:00:01",
                "zero": "00:00:00"}
    for served in (True, False):
        if not served:
            c.stop()
        result = c.cli("query", sql, "--format", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [expected], (served, result.stdout)
        csv_out = c.cli("query", sql, "--format", "csv")
        assert csv_out.stdout.splitlines()[1] == ",".join(expected.values()), (served, csv_out.stdout)


def test_query_csv_records_end_with_a_bare_newline(tmp_path):
    """`--format csv` ended every record with "\\r\\n": `... --format csv | tail -n +2 | xargs tracesieve show`
    passed ids ending in "\\r" (not found), and `cut`/`awk` kept it on the last column."""
    import csv
    import io

    from tracesieve.storage.store import open_database

    db = tmp_path / "s.duckdb"
    open_database(str(db)).close()
    sql = "SELECT 'c1' AS id, 'a,\"b\"' || chr(10) || 'c' AS text, 'x' || chr(13) || 'y' AS cr, NULL AS none"
    result = subprocess.run([sys.executable, "-m", "tracesieve.collector.cli", "query", sql, "--db", str(db),
                             "--format", "csv"], capture_output=True, timeout=60)  # bytes: no newline translation
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out == 'id,text,cr,none\nc1,"a,""b""\nc","x\ry",\n', repr(out)
    expected = [["id", "text", "cr", "none"], ["c1", 'a,"b"\nc', "x\ry", ""]]
    assert list(csv.reader(io.StringIO(out, newline=""))) == expected  # every value reads back as stored


def test_query_prints_booleans_as_sql_writes_them_in_csv_and_the_table(tmp_path):
    """CSV and the table printed BOOLEANs as Python's `True` / `False`; DuckDB's COPY, its shell and psql
    write `true` / `false`, and a script comparing a column with `true` found nothing."""
    from tracesieve.storage.store import open_database

    db = tmp_path / "s.duckdb"
    open_database(str(db)).close()
    sql = "SELECT true AS yes, false AS no, NULL::BOOLEAN AS unknown, [true] AS listed"
    csv_out = run_cli("query", sql, "--db", str(db), "--format", "csv")
    assert csv_out.returncode == 0, csv_out.stderr
    assert csv_out.stdout == "yes,no,unknown,listed\ntrue,false,,[true]\n", csv_out.stdout
    table = run_cli("query", sql, "--db", str(db))
    assert table.stdout.split("\n")[2].split() == ["true", "false", "[true]"], table.stdout
    assert json.loads(run_cli("query", sql, "--db", str(db), "--format", "json").stdout) == \
        [{"yes": True, "no": False, "unknown": None, "listed": [True]}]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_query_output_into_a_pipe_closed_early_exits_0_quietly(tmp_path, fmt):
    """`tracesieve query ... | head -2`: the table output (rich) exited 1 where json and csv exited 0."""
    import subprocess
    import sys

    from tracesieve.storage.store import open_database

    db = tmp_path / "s.duckdb"
    open_database(str(db)).close()
    proc = subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", "query", "SELECT * FROM range(200000)",
                             "--db", str(db), "--format", fmt], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # what head does after its lines
    assert proc.wait(60) == 0
    assert proc.stderr.read() == b""


def test_the_missing_store_error_suggests_a_serve_command_that_runs_as_pasted(tmp_path):
    """`no store at my store.duckdb (start `tracesieve serve --db my store.duckdb` ...)`: pasted, that command
    passed `my` as the store and `store.duckdb` as a stray argument."""
    db = tmp_path / "my store.duckdb"
    missing = run_cli("candidates", "--db", str(db))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    suggested = missing.stderr.split("`")[1]
    assert shlex.split(suggested) == ["tracesieve", "serve", "--db", str(db)], missing.stderr


def test_query_errors_are_one_line_with_exit_2(tmp_path):
    missing = run_cli("query", "SELECT 1", "--db", str(tmp_path / "nope.duckdb"))
    assert missing.returncode == 2 and "no store at" in missing.stderr
    assert missing.stderr.count("\n") == 1
    duckdb.connect(str(tmp_path / "x.duckdb")).close()
    bad_sql = run_cli("query", "SELEC nonsense", "--db", str(tmp_path / "x.duckdb"))
    assert bad_sql.returncode == 2 and bad_sql.stderr.count("\n") == 1
    # an error met while rows stream out: DuckDB puts the cause on its message's second line
    from tracesieve.storage.store import open_database

    open_database(str(tmp_path / "s.duckdb")).close()
    late = run_cli("query", "SELECT i, (CASE WHEN i > 200000 THEN 'x' ELSE '1' END)::INTEGER FROM range(300000) t(i)",
                   "--db", str(tmp_path / "s.duckdb"))
    assert late.returncode == 2 and late.stderr.count("\n") == 1
    assert "Could not convert string 'x' to INT32" in late.stderr, late.stderr


def test_sql_that_opens_with_a_line_comment_is_the_statement_not_an_option(tmp_path):
    """`tracesieve query "-- top models\nSELECT ..."` exited 2 with "No such option '-- top models...'"."""
    from tracesieve.storage.store import open_database

    db = tmp_path / "s.duckdb"
    open_database(str(db)).close()
    for args in (("-- how many\nSELECT 42 AS n", "--db", str(db), "--format", "json"),
                 ("--db", str(db), "--format", "json", "--\tevery row\nSELECT 42 AS n; -- done"),
                 ("--format=json", "--db", str(db), "--no-space-here\nSELECT 42 AS n")):
        result = run_cli("query", *args)
        assert result.returncode == 0, (args, result.stderr)
        assert json.loads(result.stdout) == [{"n": 42}]
    refused = run_cli("query", "-- sneaky\nDELETE FROM spans", "--db", str(db))
    assert refused.returncode == 2 and "DELETE" in refused.stderr and refused.stderr.count("\n") == 1
    typo = run_cli("query", "SELECT 1", "--db", str(db), "--fromat", "json")  # a mistyped option is still one
    assert typo.returncode == 2 and "No such option" in typo.stderr


def test_store_is_migrated_and_versioned(tmp_path):
    from tracesieve.storage.migrations import LATEST_VERSION
    from tracesieve.storage.store import open_database

    path = str(tmp_path / "old.duckdb")
    old = duckdb.connect(path)
    old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description VARCHAR, "
                "applied_at TIMESTAMPTZ DEFAULT now())")
    old.close()  # a store from before any migration ran
    con = open_database(path)
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == LATEST_VERSION
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"spans", "detections", "candidates", "trace_state"} <= tables
    con.close()
    again = open_database(path)  # opening again runs nothing twice
    assert again.execute("SELECT count(*) FROM schema_version").fetchone()[0] == LATEST_VERSION
    again.close()


def test_serve_on_a_busy_port_fails_with_one_line(start_collector, tmp_path):
    c = start_collector(NO_JUDGE)
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.yaml").write_text(
        f"receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{c.grpc_port}'}}, "
        f"http: {{endpoint: '127.0.0.1:{c.http_port}'}}}}}}}}\n")
    result = run_cli("serve", "--config", str(other / "c.yaml"), "--db", str(other / "s.duckdb"), timeout=60)
    assert result.returncode == 2
    assert "tracesieve: error:" in result.stderr and "Traceback" not in result.stderr


def test_a_second_serve_on_the_same_store_names_the_running_one_and_exits_2(start_collector, tmp_path):
    c = start_collector(NO_JUDGE)
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.yaml").write_text(
        f"receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{free_port()}'}}, "
        f"http: {{endpoint: '127.0.0.1:{free_port()}'}}}}}}}}\n")
    result = run_cli("serve", "--config", str(other / "c.yaml"), "--db", str(c.db_path), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracesieve: error:"), result.stderr
    assert f"pid {c.proc.pid}" in lines[0] and f"127.0.0.1:{c.http_port}" in lines[0]
    assert "without its query surface" not in lines[0]
    assert c.query("SELECT 1 AS x") == [{"x": 1}]  # the running one still answers the CLI


def test_the_same_serve_command_run_twice_names_the_running_one_not_its_ports(start_collector):
    """Run twice with the same config, the second one's ports are taken before it reaches the store's
    lock: "cannot listen on 127.0.0.1:<port>; stop what uses it" hid that another serve holds the store."""
    c = start_collector(NO_JUDGE)
    result = run_cli("serve", "--config", str(c.config_path), "--db", str(c.db_path), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracesieve: error:"), result.stderr
    assert "already served" in lines[0], lines[0]
    assert f"pid {c.proc.pid}" in lines[0] and f"127.0.0.1:{c.http_port}" in lines[0]
    assert c.query("SELECT 1 AS x") == [{"x": 1}]


def test_healthz_and_readyz(start_collector):
    c = start_collector(NO_JUDGE)
    assert httpx.get(f"{c.http_url}/healthz").text == "ok\n"
    assert httpx.get(f"{c.http_url}/readyz").status_code == 200


def _self_signed_tls(tmp_path: Path) -> dict[str, str]:
    """A `tls` block with a one-day self-signed certificate for localhost and 127.0.0.1, made by openssl."""
    import shutil

    assert shutil.which("openssl"), "openssl makes the test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return {"cert_file": str(cert), "key_file": str(key)}


def test_tls_on_both_receivers_and_the_query_surface(start_collector, tmp_path):
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    tls = _self_signed_tls(tmp_path)
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"protocols": {"grpc": {"tls": tls}, "http": {"tls": tls}}}}})
    assert c.http_url.startswith("https://")
    response = httpx.post(f"{c.http_url}/v1/traces", content=make_request(2).SerializeToString(), verify=c.verify,
                          headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{c.http_port}/v1/traces", content=b"", timeout=5)
    creds = grpc.ssl_channel_credentials(root_certificates=Path(tls["cert_file"]).read_bytes())
    with grpc.secure_channel(c.grpc_endpoint, creds) as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(make_request(3), timeout=10)
    # the CLI reaches the TLS query surface with the certificate the collector published
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 5}]


def test_the_cli_reaches_a_tls_collector_whose_certificate_names_its_dns_name_or_is_ca_signed(tmp_path):
    """An operator's certificate names the collector's DNS name, not 127.0.0.1, and is often signed by their
    CA: every CLI command failed while `serve` ran ("IP address mismatch, certificate is not valid for
    '127.0.0.1'", or "unable to get local issuer certificate" with the leaf the collector publishes)."""
    import shutil
    import ssl

    from conftest import RunningCollector

    assert shutil.which("openssl"), "openssl makes the test certificates"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=tmp_path)

    name = ["-subj", "/CN=collector.internal", "-addext", "subjectAltName=DNS:collector.internal"]
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *name, "-keyout", "self.key",
            "-out", "self.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Ops CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", *name, "-keyout", "leaf.key", "-out", "leaf.csr")
    (tmp_path / "leaf.ext").write_text("subjectAltName=DNS:collector.internal\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "leaf.ext", "-out", "leaf.pem")

    class NamedCertificateCollector(RunningCollector):
        @property
        def verify(self) -> ssl.SSLContext:  # the readiness probe trusts the CA, by address
            context = ssl.create_default_context(cafile=str(tmp_path / trusted))
            context.check_hostname = False
            return context

    for cert, key, trusted in (("self.pem", "self.key", "self.pem"), ("leaf.pem", "leaf.key", "ca.pem")):
        workdir = tmp_path / cert.removesuffix(".pem")
        workdir.mkdir()
        tls = {"cert_file": str(tmp_path / cert), "key_file": str(tmp_path / key)}
        c = NamedCertificateCollector(workdir, {**NO_JUDGE, "receivers": {"otlp": {"protocols": {
            "grpc": {"tls": tls}, "http": {"tls": tls}}}}})
        try:
            c.start()
            assert c.query("SELECT 1 AS one") == [{"one": 1}], cert
            assert c.cli("candidates").returncode == 0
        finally:
            c.kill()


def test_the_cli_run_elsewhere_reaches_a_tls_collector_configured_with_relative_certificate_paths(tmp_path):
    """`cert_file: certs/cert.pem` was published as written in `<db>.serve.json`: a command run from another
    directory failed with a bare "[Errno 2] No such file or directory", naming no file."""
    import shutil
    import ssl

    from conftest import RunningCollector

    assert shutil.which("openssl"), "openssl makes the test certificate"
    (tmp_path / "certs").mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "certs/key.pem", "-out", "certs/cert.pem"],
                   check=True, capture_output=True, timeout=60, cwd=tmp_path)
    cert = tmp_path / "certs" / "cert.pem"

    class RelativeCertificateCollector(RunningCollector):
        @property
        def verify(self) -> ssl.SSLContext:  # the relative path is serve's; the probe runs elsewhere
            return ssl.create_default_context(cafile=str(cert))

    tls = {"cert_file": "certs/cert.pem", "key_file": "certs/key.pem"}
    c = RelativeCertificateCollector(tmp_path, {**NO_JUDGE, "receivers": {"otlp": {"protocols": {
        "grpc": {"tls": tls}, "http": {"tls": tls}}}}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        c.start()
        result = run_cli("query", "SELECT 1 AS one", "--format", "json", "--db", str(c.db_path), cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [{"one": 1}]
        record = json.loads((tmp_path / "store.duckdb.serve.json").read_text())
        assert record["cafile"] == str(cert)
        cert.rename(tmp_path / "certs" / "moved.pem")  # a certificate gone since: one line naming it
        result = run_cli("query", "SELECT 1", "--db", str(c.db_path), cwd=elsewhere)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"cannot read the collector's certificate {cert}" in result.stderr
    finally:
        c.kill()


def test_with_tls_a_connected_exporter_does_not_hold_up_the_stop(start_collector, tmp_path, monkeypatch):
    """The OTel HTTP exporter keeps its connection open between batches. On TLS uvicorn closed such an idle
    connection by waiting for the client's close_notify, which never came: every SIGTERM took uvicorn's whole
    10 s grace, taken from the time left to judge pending traces, while an agent was running."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    tls = _self_signed_tls(tmp_path)
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"protocols": {"grpc": {"tls": tls}, "http": {"tls": tls}}}}})
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests lets these override the exporter's CA file
        monkeypatch.delenv(name, raising=False)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{c.http_url}/v1/traces",
                                                                     certificate_file=tls["cert_file"], timeout=10)))
    try:
        with provider.get_tracer("tests").start_as_current_span("before the stop"):
            pass
        assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 1}]
        started = time.monotonic()
        assert c.stop() == 0
        assert time.monotonic() - started < 5, f"stop took {time.monotonic() - started:.1f} s"
    finally:
        provider.shutdown()


def _catches(pid, sig):
    """Whether process ``pid`` has a handler installed for ``sig`` (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        caught = next(line for line in fh if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) & (1 << (sig - 1)))


def test_sigterm_during_startup_exits_zero_at_any_point(tmp_path):
    """From the moment the CLI module runs, a stop request is recorded, never the default action (-15).

    Delay 0 lands while serve is still importing: it exits 0 without ever opening the store.
    """
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**NO_JUDGE, "receivers": {"otlp": {"protocols": {
        "grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}}}}))
    for i, delay in enumerate((0.0, 0.1, 0.3, 0.6, 1.0)):
        db = tmp_path / f"s{i}.duckdb"
        proc = subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", "serve", "--config", str(config),
                                 "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not _catches(proc.pid, signal.SIGTERM):
                assert proc.poll() is None and time.monotonic() < deadline, "serve never caught SIGTERM"
                time.sleep(0.001)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (delay, stderr)
        assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr
        if delay == 0.0:
            assert not db.exists(), "the store was opened although the stop came first"


STOP_HANDLER_PROBE = """
import signal, sys
from tracesieve.collector.cli import _StopRequest

for n in range(1, 80):  # the signal lands at the n-th line run inside wait(), wherever that is
    stop, count = _StopRequest(), 0
    stop.install()

    def tracer(frame, event, arg):
        global count
        if event == "line":
            count += 1
            if count == n:
                signal.raise_signal(signal.SIGTERM)
        return tracer

    sys.settrace(tracer)
    try:
        stop.wait(0.01)
    finally:
        sys.settrace(None)
    if count < n:
        signal.raise_signal(signal.SIGTERM)
    assert stop.requested and stop.wait(5), n
"""


def test_a_stop_signal_never_deadlocks_the_main_loop_whatever_line_it_interrupts():
    """The handler runs between two bytecodes of the main thread, which may hold a lock right then.

    When it set a threading.Event, a signal landing inside Event.wait (serve's main loop) just after
    the wait re-took the Event's lock blocked forever: serve never exited (--status-interval 0.3
    made it likely enough to hang test_operations once).
    """
    import subprocess
    import sys

    try:
        result = subprocess.run([sys.executable, "-c", STOP_HANDLER_PROBE], capture_output=True, text=True,
                                timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the stop handler deadlocked") from None
    assert result.returncode == 0, result.stderr


def _self_signed(where, name):
    import shutil
    import subprocess

    assert shutil.which("openssl"), "openssl makes the test certificate"
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_files_that_do_not_load_exit_2_with_one_line_before_anything_opens(tmp_path, protocol):
    cert, key = _self_signed(tmp_path, "a")
    _, other_key = _self_signed(tmp_path, "b")
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    db = tmp_path / "t.duckdb"
    cases = [  # (cert_file, key_file, what the line says)
        (junk, junk, f"cert_file {junk} holds no PEM certificate"),
        (cert, cert, f"key_file {cert} holds no unencrypted PEM private key"),
        (cert, other_key, f"key_file {other_key} is not the key of cert_file {cert}"),
    ]
    for cert_file, key_file, expected in cases:
        tls = {"cert_file": str(cert_file), "key_file": str(key_file)}
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}, protocol: {
                "endpoint": "127.0.0.1:0", "tls": tls}}}}}))
        result = run_cli("serve", "--config", str(config), "--db", str(db), timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"receivers.otlp.protocols.{protocol}.tls: {expected}" in result.stderr
        assert str(config) in result.stderr
        assert not db.exists()  # refused before the store was opened


def test_span_workers_do_not_outlive_a_killed_collector(start_collector):
    c = start_collector({**NO_JUDGE, "service": {"span_workers": 2, "pipelines": {"traces": {"processors": []}}}})
    assert post(c, make_request(2).SerializeToString()).status_code == 200
    children = [int(p) for p in open(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read().split()]
    assert len(children) >= 2
    c.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and "Z" not in _state(p)]
        time.sleep(0.2)
    assert alive == [], f"orphaned span workers still running: {alive}"


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_sigterm_to_the_whole_process_group_still_judges_pending_traces_in_the_span_workers(start_collector):
    """`kill %1` and Ctrl-C reach the span workers too: they keep running the rules for the shutdown drain."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "60s"}},
                         "service": {"span_workers": 1}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        failing = emit_agent_trace(tracer, tool_error=True)
    workers = children_of(c.proc.pid)
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    assert c.stop(signal.SIGTERM) == 0
    assert "judging with the span workers failed" not in c.log()
    judged = c.cli("query", f"SELECT failure_mode FROM detections WHERE trace_id = '{failing}'", "--format", "json")
    assert judged.returncode == 0, judged.stderr
    assert {"failure_mode": "tool_invocation"} in json.loads(judged.stdout)


def test_with_the_http_receiver_off_cli_commands_still_reach_the_running_store(tmp_path):
    """Every command works while `serve` runs. With only gRPC configured there was no HTTP port, hence
    no query surface, and `query` exited 2 ("running without its query surface?"): the store is
    locked by serve. The surface now runs alone on a free loopback port, with no OTLP route."""
    grpc_port = free_port()
    (tmp_path / "c.yaml").write_text(
        f"receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{grpc_port}'}}}}}}}}\n"
        "service: {pipelines: {traces: {processors: []}}}\n")
    db = tmp_path / "s.duckdb"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", "serve", "--config",
                             str(tmp_path / "c.yaml"), "--db", str(db)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        discovery = tmp_path / "s.duckdb.serve.json"
        deadline = time.monotonic() + 30
        while not discovery.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert discovery.exists(), (tmp_path / "serve.log").read_text()
        with sdk_tracer("grpc", f"127.0.0.1:{grpc_port}") as tracer:
            trace_id = emit_agent_trace(tracer)
        result = run_cli("query", f"SELECT count(*) AS n FROM spans WHERE trace_id = '{trace_id}'",
                         "--format", "json", "--db", str(db), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [{"n": 5}]
        surface = json.loads(discovery.read_text())["url"]
        assert surface.startswith("http://127.0.0.1:")
        assert f"OTLP/HTTP      off  (query surface {surface}/api/<op>)" in (tmp_path / "serve.log").read_text()
        assert httpx.post(f"{surface}/v1/traces", content=make_request(1).SerializeToString(),
                          headers={"content-type": "application/x-protobuf"}).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
