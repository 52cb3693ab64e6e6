"""Id lists bound as one packed string parameter come back as the same list in SQL."""

from __future__ import annotations

import duckdb
import pytest

from tracesieve.storage.sqlparams import packed, unpacked


def test_packed_ids_unpack_to_the_same_list() -> None:
    con = duckdb.connect()
    ids = [f"{i:032x}" for i in range(300)]
    assert con.execute(f"SELECT {unpacked('?')}", [packed(ids)]).fetchone()[0] == ids
    seqs = [1, 7, 2**40]
    assert con.execute(f"SELECT {unpacked('$1', 'BIGINT')}", [packed(seqs)]).fetchone()[0] == seqs


def test_an_empty_list_matches_no_id() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 'a' AS id")
    assert con.execute(f"SELECT count(*) FROM t WHERE id IN (SELECT unnest({unpacked('?')}))",
                       [packed([])]).fetchone()[0] == 0
    assert con.execute(f"SELECT count(*) FROM t WHERE list_contains({unpacked('?')}, id)",
                       [packed(["b", "a"])]).fetchone()[0] == 1


def test_a_value_holding_the_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="separator"):
        packed(["ok", "bad\x1fid"])


def test_a_registered_table_is_a_view_only_inside_its_block_even_when_it_raises() -> None:
    import pyarrow as pa

    from tracesieve.storage.sqlparams import registered

    con = duckdb.connect()
    with registered(con, "_rows", pa.table({"x": [1, 2]})):
        assert con.execute("SELECT sum(x) FROM _rows").fetchone() == (3,)
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT * FROM _rows")
    with pytest.raises(RuntimeError), registered(con, "_rows", pa.table({"x": [1]})):
        raise RuntimeError("inside")
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT * FROM _rows")
