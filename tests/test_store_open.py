"""How the store file is opened: attached with small row groups, under its usual catalog name."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tracesieve.storage import store
from tracesieve.storage.errors import UsageError
from tracesieve.storage.schema import SPAN_SCHEMA


def _spans(n: int) -> pa.Table:
    cols = {f.name: pa.nulls(n, f.type) for f in SPAN_SCHEMA}
    cols["trace_id"] = pa.array([f"{i // 4:032x}" for i in range(n)])
    cols["span_id"] = pa.array([f"{i:016x}" for i in range(n)])
    return pa.table(cols, schema=SPAN_SCHEMA)


def test_spans_are_stored_in_row_groups_of_row_group_size(tmp_path):
    con = store.open_database(str(tmp_path / "t.duckdb"))
    con.register("incoming", _spans(3 * store.ROW_GROUP_SIZE))
    con.execute("INSERT INTO spans SELECT * FROM incoming")
    con.execute("CHECKPOINT")
    groups = con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('spans')").fetchone()[0]
    con.close()
    # DuckDB's default (122,880 rows) would hold all 49,152 rows in one group.
    assert groups == 3


def test_catalog_is_the_file_stem_and_cursors_keep_it(tmp_path):
    con = store.open_database(str(tmp_path / "bench.duckdb"))
    assert con.execute("SELECT count(*) FROM bench.spans").fetchone() == (0,)
    cur = store.cursor(con)
    assert cur.execute("SELECT current_database()").fetchone() == ("bench",)
    # spills go next to the store, not into the working directory
    assert cur.execute("SELECT current_setting('temp_directory')").fetchone() == (f"{tmp_path / 'bench.duckdb'}.tmp",)
    assert cur.execute("SELECT count(*) FROM trace_state").fetchone() == (0,)
    con.close()
    # What was written is where a plain DuckDB open finds it, and nothing is left to replay.
    assert not (tmp_path / "bench.duckdb.wal").exists()
    ro = store.open_database(str(tmp_path / "bench.duckdb"), read_only=True)
    assert ro.execute("SELECT count(*) FROM spans").fetchone() == (0,)
    ro.close()


def test_a_file_named_like_a_builtin_catalog_still_opens(tmp_path):
    con = store.open_database(str(tmp_path / "memory.duckdb"))
    assert con.execute("SELECT count(*) FROM spans").fetchone() == (0,)
    con.close()


def test_not_a_duckdb_file_is_one_line_usage_error(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n" * 100)
    with pytest.raises(UsageError) as err:
        store.open_database(str(path))
    assert "cannot open" in str(err.value) and "\n" not in str(err.value)
    assert path.read_text() == "not a database\n" * 100


@pytest.mark.parametrize("foreign", [False, True])
def test_a_duckdb_file_without_tracesieve_tables_is_refused_and_left_alone(tmp_path, foreign):
    """candidates printed 'internal error: CatalogException ...'; reject and promote created the tables."""
    import duckdb

    from conftest import run_cli

    db = tmp_path / "other.duckdb"
    con = duckdb.connect(str(db))
    if foreign:
        con.execute("CREATE TABLE foo AS SELECT 1 AS a")
    con.close()
    for args in (["candidates"], ["show", "c0123456789"], ["export"], ["query", "SELECT 1"],
                 ["report", "--out", str(tmp_path / "r.html")], ["reject", "c0123456789", "--reason", "no"],
                 ["promote", "c0123456789", "--cases", str(tmp_path / "cases.yaml"), "--owner", "ann"]):
        result = run_cli(*args, "--db", str(db))
        assert result.returncode == 2, (args, result.stdout)
        assert result.stderr.count("\n") == 1 and "is not a tracesieve store" in result.stderr, (args, result.stderr)
    con = duckdb.connect(str(db), read_only=True)
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    con.close()
    assert tables == (["foo"] if foreign else [])
    assert not (tmp_path / "cases.yaml").exists()


def test_serve_refuses_a_duckdb_file_holding_other_tables_and_leaves_it_alone(tmp_path):
    """``serve --db`` on someone's analytics database created every tracesieve table among theirs and
    wrote spans into it; a new or empty file is still made a store."""
    import duckdb

    from conftest import run_cli

    db = tmp_path / "analytics.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA sales; CREATE TABLE sales.orders AS SELECT 1 AS id; CREATE VIEW v AS SELECT 2 AS x")
    con.close()
    config = tmp_path / "config.yaml"
    config.write_text("receivers: {otlp: {protocols: {grpc: {endpoint: '127.0.0.1:0'}, http: {endpoint: '127.0.0.1:0'}}}}\n")
    result = run_cli("serve", "--db", str(db), "--config", str(config), timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "is not a tracesieve store" in result.stderr and "sales.orders" in result.stderr
    con = duckdb.connect(str(db), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()) == ["orders"]
    con.close()


def test_a_store_from_a_newer_tracesieve_is_not_written_but_still_queried(tmp_path):
    """A store a newer release had migrated past this one's schema was served and written as if it
    were current; its new tables and columns went unknown."""
    import duckdb

    from conftest import run_cli
    from tracesieve.storage.migrations import LATEST_VERSION

    db = tmp_path / "s.duckdb"
    store.open_database(str(db)).close()
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version (version, description) VALUES (?, 'from the future')", [LATEST_VERSION + 1])
    con.close()
    with pytest.raises(UsageError) as err:
        store.open_database(str(db))
    assert f"schema version {LATEST_VERSION + 1}" in str(err.value) and "newer tracesieve" in str(err.value)
    config = tmp_path / "c.yaml"
    config.write_text("receivers: {otlp: {protocols: {grpc: {endpoint: '127.0.0.1:0'}, http: {endpoint: '127.0.0.1:0'}}}}\n")
    served = run_cli("serve", "--config", str(config), "--db", str(db), timeout=60)
    assert served.returncode == 2 and served.stderr.count("\n") == 1, served.stderr
    assert "newer tracesieve" in served.stderr, served.stderr
    rejected = run_cli("reject", "c0123456789", "--reason", "no", "--db", str(db))
    assert rejected.returncode == 2 and "newer tracesieve" in rejected.stderr, rejected.stderr
    queried = run_cli("query", "SELECT max(version) AS v FROM schema_version", "--format", "json", "--db", str(db))
    assert queried.returncode == 0, queried.stderr
    assert queried.stdout.split() == ["[", "{", '"v":', f"{LATEST_VERSION + 1}", "}", "]"]
