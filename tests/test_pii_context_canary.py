"""PERSON, ADDRESS, DOB and PASSPORT never reach the database, its WAL or the logs (real server, both receivers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import FAST_JUDGE
from sdk_helpers import sdk_tracer
from test_receivers import post

# One value per context type, each unique so a hit anywhere is unambiguous.
VALUES = {
    "PERSON": "Quillon Vantreska",
    "ADDRESS": "4817 Marrowgate Street",
    "DOB": "1983-07-29",
    "PASSPORT": "K73920518",
}
PROSE = (f"my name is {VALUES['PERSON']}, I live at {VALUES['ADDRESS']}, DOB: {VALUES['DOB']}, "
         f"passport number {VALUES['PASSPORT']}")
ARGS = json.dumps({"customer": {"name": VALUES["PERSON"], "shipping_address": VALUES["ADDRESS"] + ", Springfield",
                                "date_of_birth": VALUES["DOB"], "passport_number": VALUES["PASSPORT"]}})


def assert_absent(blob: bytes, where: str) -> None:
    for type_, value in VALUES.items():
        assert value.encode() not in blob, f"{type_} {value!r} found in {where}"


def test_context_types_never_reach_the_database_wal_or_logs(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            root.set_attribute("input.value", PROSE)
            with tracer.start_as_current_span("update_customer") as tool:
                tool.set_attribute("openinference.span.kind", "TOOL")
                tool.set_attribute("tool.name", "update_customer")
                tool.set_attribute("input.value", ARGS)
    attr = lambda k, v: {"key": k, "value": {"stringValue": v}}  # noqa: E731
    doc = {"resourceSpans": [{"resource": {"attributes": [attr("service.name", "context-canary")]},
                              "scopeSpans": [{"scope": {"name": "canary"}, "spans": [{
                                  "traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": "lookup",
                                  "startTimeUnixNano": "1795300000000000000", "endTimeUnixNano": "1795300001000000000",
                                  "attributes": [attr("openinference.span.kind", "CHAIN"), attr("output.value", ARGS)],
                                  "status": {"code": 2, "message": PROSE}}]}]}]}
    assert post(c, json.dumps(doc).encode(), "application/json").status_code == 200
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 3)

    wal = Path(str(c.db_path) + ".wal")
    if wal.exists():
        assert_absent(wal.read_bytes(), "the WAL")
    for table in ("spans", "detections", "candidates"):
        assert_absent(json.dumps(c.query(f"SELECT * FROM {table}"), default=str, ensure_ascii=False).encode(),
                      f"table {table}")
    rows = c.query("SELECT name, input_value, pii_redactions FROM spans WHERE name IN ('agent', 'update_customer')")
    by_name = {r["name"]: r for r in rows}
    assert by_name["agent"]["input_value"] == ("my name is <PERSON>, I live at <ADDRESS>, DOB: <DOB>, "
                                               "passport number <PASSPORT>")
    stored = json.loads(by_name["update_customer"]["input_value"])["customer"]
    assert stored == {"name": "<PERSON>", "shipping_address": "<ADDRESS>", "date_of_birth": "<DOB>",
                      "passport_number": "<PASSPORT>"}
    for r in rows:        # input.value is both a column and an attribute: each value is counted where it was
        counts = json.loads(r["pii_redactions"])
        assert set(counts) == set(VALUES) and all(n >= 1 for n in counts.values()), counts

    assert c.stop() == 0
    assert_absent(Path(c.db_path).read_bytes(), "the database file")
    if wal.exists():
        assert_absent(wal.read_bytes(), "the WAL after shutdown")
    assert_absent(c.log().encode(), "the server log")
