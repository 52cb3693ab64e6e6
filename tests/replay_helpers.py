"""Replaying spans a real exporter sent, captured as OTLP/JSON under tests/testdata/.

CI has no Node and must not depend on the agent frameworks, so the tests of those frameworks post
the exact payload their exporters produced once and judge what the collector made of it.
"""

from __future__ import annotations

from typing import Any

import httpx

from conftest import TESTDATA


def replay(c: Any, payload: str) -> None:
    """Post ``tests/testdata/<payload>`` (OTLP/JSON) to the collector's HTTP port, as the exporter did."""
    body = (TESTDATA / payload).read_bytes()
    response = httpx.post(f"{c.http_url}/v1/traces", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def judged(c: Any, traces: int) -> None:
    """Wait until ``traces`` traces are judged up to their last span."""
    c.wait_for("SELECT 1 FROM trace_state WHERE judged_seq = received_seq", lambda r: len(r) == traces)
