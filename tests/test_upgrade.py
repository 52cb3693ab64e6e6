"""A store an older tracesieve wrote is taken over by this one: `serve` upgrades it, keeps every row,
and goes on judging. Each old store is built here from that version's own SQL, not its code."""

from __future__ import annotations

import duckdb

from conftest import FAST_JUDGE, run_cli
from sdk_helpers import emit_agent_trace, sdk_tracer

from tracesieve.storage import migrations

# trace_state as the first releases' migration 1 made it (40008ef..47f4347): no first_received_at,
# which migration 1 gained later. spans, detections and candidates are as migration 1 still makes them.
_FIRST_RELEASE_TRACE_STATE = """
CREATE TABLE trace_state (
    trace_id VARCHAR PRIMARY KEY,
    last_received_at TIMESTAMPTZ NOT NULL,
    received_seq BIGINT NOT NULL DEFAULT 1,
    judged_seq BIGINT,
    judged_at TIMESTAMPTZ
)
"""

_JUDGED, _PENDING = "a1" * 16, "b2" * 16


def _first_release_store(path: str) -> None:
    """A schema-1 store as the first releases left it: a judged trace, and one whose judging a kill cut off."""
    old = duckdb.connect(path)
    old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description VARCHAR, "
                "applied_at TIMESTAMPTZ DEFAULT now())")
    for ddl in (migrations._SPANS_V1_DDL, migrations.DETECTIONS_DDL, migrations.CANDIDATES_DDL,
                _FIRST_RELEASE_TRACE_STATE):
        old.execute(ddl)
    old.execute("CREATE INDEX detections_trace ON detections (trace_id)")
    old.execute("INSERT INTO schema_version (version, description) VALUES "
                "(1, 'spans, detections, candidates, trace_state')")
    for trace in (_JUDGED, _PENDING):
        old.execute(
            "INSERT INTO spans (trace_id, span_id, parent_span_id, name, span_kind, start_time, end_time, duration_ms, "
            "status_code, status_message, service_name, tool_name, input_value, input_mime_type, attributes, "
            "resource_attributes, events, links, scope_name, received_at, pii_redactions) VALUES "
            "(?, '00000000000000a1', NULL, 'agent', 'AGENT', now() - INTERVAL 61 SECOND, now() - INTERVAL 60 SECOND, "
            " 1000, 'UNSET', NULL, 'old-agent', NULL, 'Where is my order?', 'text/plain', '{}', "
            " '{\"service\": {\"name\": \"old-agent\"}}', '[]', '[]', 'tests', now() - INTERVAL 60 SECOND, '{}'), "
            "(?, '00000000000000b2', '00000000000000a1', 'lookup_order', 'TOOL', now() - INTERVAL 61 SECOND, "
            " now() - INTERVAL 60 SECOND, 500, 'ERROR', 'order service returned 502', 'old-agent', 'lookup_order', "
            " '{\"order_id\": \"ORD-1\"}', 'application/json', '{\"tool\": {\"name\": \"lookup_order\"}}', "
            " '{\"service\": {\"name\": \"old-agent\"}}', '[]', '[]', 'tests', now() - INTERVAL 60 SECOND, '{}')",
            [trace, trace])
    old.execute("INSERT INTO trace_state VALUES (?, now() - INTERVAL 60 SECOND, 1, 1, now() - INTERVAL 55 SECOND), "
                "(?, now() - INTERVAL 60 SECOND, 1, NULL, NULL)", [_JUDGED, _PENDING])
    old.close()


def test_a_first_release_store_is_upgraded_and_its_pending_trace_judged(start_collector, tmp_path):
    """The first releases' trace_state had no first_received_at: `serve` on their store stopped with
    "internal error: BinderException: ... first_received_at not found" and never came up."""
    workdir = tmp_path / "old"
    workdir.mkdir()
    _first_release_store(str(workdir / "store.duckdb"))
    c = start_collector(FAST_JUDGE, workdir=workdir)
    assert "adding trace_state.first_received_at" in c.log()
    assert c.query("SELECT max(version) AS v FROM schema_version") == [{"v": migrations.LATEST_VERSION}]
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 4}]
    c.wait_for(f"SELECT failure_mode FROM detections WHERE trace_id = '{_PENDING}'",
               lambda rows: [r["failure_mode"] for r in rows] == ["tool_invocation"])
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:  # and new traffic is stored and judged as ever
        new = emit_agent_trace(tracer, tool_error=True)
    c.wait_for(f"SELECT failure_mode FROM detections WHERE trace_id = '{new}'",
               lambda rows: "tool_invocation" in [r["failure_mode"] for r in rows])
    assert c.stop() == 0
    first_log = c.log()
    again = start_collector(FAST_JUDGE, workdir=workdir)  # the second start migrates nothing
    assert "upgrading the store" not in again.log()[len(first_log):]
    assert again.query("SELECT count(*) AS n FROM schema_version") == [{"n": migrations.LATEST_VERSION}]


def test_serve_says_in_one_line_which_schema_versions_it_upgraded_the_store_between(start_collector, tmp_path):
    """Upgrading a schema-4 store (migration 5 only adds a column) logged nothing at all."""
    workdir = tmp_path / "old"
    workdir.mkdir()
    old = duckdb.connect(str(workdir / "store.duckdb"))
    old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description VARCHAR, "
                "applied_at TIMESTAMPTZ DEFAULT now())")
    for number, description, step in migrations.MIGRATIONS[:4]:  # what a release of 2026-12-07 morning left
        step(old)
        old.execute("INSERT INTO schema_version (version, description) VALUES (?, ?)", [number, description])
    old.close()
    c = start_collector(FAST_JUDGE, workdir=workdir)
    upgraded = [line for line in c.log().splitlines() if "upgraded the store" in line]
    assert len(upgraded) == 1, c.log()
    assert f"from schema version 4 to {migrations.LATEST_VERSION}: 5 spans.scope_attributes" in upgraded[0]
    assert c.stop() == 0
    first_log = c.log()
    again = start_collector(FAST_JUDGE, workdir=workdir)
    assert "upgraded the store" not in again.log()[len(first_log):]


def test_a_query_on_an_older_store_naming_a_newer_column_says_serve_upgrades_it(tmp_path):
    """Read commands leave an older store as it is; `query` naming scope_attributes (migration 5) said only
    "Binder Error: Referenced column ... not found", as for a typo, and not that the store is an old one."""
    db = tmp_path / "store.duckdb"
    _first_release_store(str(db))
    result = run_cli("query", "SELECT scope_attributes FROM spans", "--db", str(db))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "scope_attributes" in lines[0], result.stderr
    assert f"schema version 1 of {migrations.LATEST_VERSION}" in lines[0] and "`tracesieve serve`" in lines[0]
    answered = run_cli("query", "SELECT count(*) AS n, (SELECT max(version) FROM schema_version) AS v FROM spans",
                       "--db", str(db), "--format", "json")
    assert answered.returncode == 0 and '"n": 4' in answered.stdout and '"v": 1' in answered.stdout  # read, not migrated


def test_a_first_release_trace_state_keeps_its_column_order_for_the_trim_at_start(tmp_path):
    """The trim at start (recent_traces.fit_at_start) copies trace_state by position: the column a
    first-release store lacked must come back in migration 1's place, not at the end."""
    from tracesieve.storage import recent_traces, store

    path = str(tmp_path / "store.duckdb")
    _first_release_store(path)
    old = duckdb.connect(path)
    old.execute("INSERT INTO trace_state SELECT lpad(to_hex(i), 32, '0'), now() - to_seconds(i), 1, 1, now() "
                "FROM range(100, 130) AS r(i)")
    old.close()
    con = store.open_database(path)
    assert [r[0] for r in con.execute("DESCRIBE trace_state").fetchall()][:3] == [
        "trace_id", "first_received_at", "last_received_at"]
    assert recent_traces.fit_at_start(con, keep=5) > 0
    assert con.execute(f"SELECT count(*) FROM trace_state WHERE trace_id = '{_PENDING}'").fetchone() == (1,)
    con.close()
