"""The Vercel AI SDK's own telemetry (npm ``ai``, ``experimental_telemetry: {isEnabled: true}``), end to end.

Node is not in CI: ``testdata/vercel_ai_sdk_6_runs.json`` holds the OTLP/JSON requests the real SDK
(``ai`` 6.0.333, ``@ai-sdk/openai`` 3.0.141 against a local stand-in of the chat completions API) exported
through ``@opentelemetry/exporter-trace-otlp-http`` 0.223.1, one trace per run, keyed by run. Each test
posts them to a real ``tracesieve serve`` and reads the rows and detections back with the CLI.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from conftest import FAST_JUDGE, TESTDATA

RUNS: dict[str, Any] = json.loads((TESTDATA / "vercel_ai_sdk_6_runs.json").read_text())


def send_runs(collector: Any, *runs: str) -> None:
    """Post the recorded runs, as the SDK's OTLP/JSON exporter did, and wait until all are judged."""
    for run in runs:
        response = httpx.post(f"{collector.http_url}/v1/traces", json=RUNS[run])
        assert response.status_code == 200, response.text
    collector.wait_for("SELECT count(*) AS n FROM trace_state WHERE judged_seq = received_seq",
                       lambda rows: rows[0]["n"] == len(runs))


def detections_by_run(collector: Any) -> dict[str, list[tuple[str, str, str]]]:
    """run (its ``ai.telemetry.functionId``) -> [(span name, failure_mode, detector)]."""
    rows = collector.query(
        "SELECT s.attributes->>'$.ai.telemetry.functionId' AS run, s.name, d.failure_mode, d.detector "
        "FROM detections d JOIN spans s USING (trace_id, span_id) ORDER BY run, d.failure_mode")
    found: dict[str, list[tuple[str, str, str]]] = {}
    for r in rows:
        found.setdefault(r["run"], []).append((r["name"], r["failure_mode"], r["detector"]))
    return found


def test_tool_calls_the_sdk_refused_are_tool_argument_failures_and_its_tools_count(start_collector):
    """The SDK checks a tool call's input against the tool's zod schema before running it: a call that
    breaks it (``{"city": 42}``) or is not JSON never becomes an ``ai.toolCall`` span. It is recorded only
    on the provider call, in ``ai.response.toolCalls``, with the tools offered in ``ai.prompt.tools``
    (``inputSchema``). Neither was read: no tool_argument finding, a refusal although a tool was offered
    went unreported (no tools "available"), and candidates listed no available tools."""
    c = start_collector(FAST_JUDGE)
    send_runs(c, "arguments_break_schema", "arguments_not_json", "refusal_with_tools", "clean_tool_run",
              "streamed_tool_run")
    assert detections_by_run(c) == {
        "badargs": [("ai.generateText.doGenerate", "tool_argument", "tool_schema")],
        "badjson": [("ai.generateText.doGenerate", "tool_argument", "tool_args_json")],
        "refusal": [("ai.generateText.doGenerate", "refusal_overreach", "refusal")],
    }
    [candidate] = c.query("SELECT context FROM candidates WHERE failure_mode = 'tool_argument' "
                          "AND observed::VARCHAR LIKE '%is not of type%'")
    tools = json.loads(candidate["context"])["available_tools"]
    assert tools == ["get_weather"]
