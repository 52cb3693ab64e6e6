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


def test_provider_calls_show_what_was_sent_and_answered_and_embeddings_their_model(start_collector):
    """A provider-call step (``ai.generateText.doGenerate``, ``ai.streamText.doStream``) records its messages in
    ``ai.prompt.messages`` and, when the model called a tool, the calls in ``ai.response.toolCalls`` (a stream
    step also an empty ``ai.response.text``); an ``ai.embed.doEmbed`` its model in ``ai.model.id``, its tokens
    in ``ai.usage.tokens`` and its text in ``ai.value`` (``ai.values``: one JSON text per value), with no
    ``gen_ai`` key. Their input_value, the tool-calling steps' output_value and the embedding's model and
    tokens were empty. The outer calls (ai.generateText, ai.embed) repeat or sum their steps: no model or
    tokens there, so a trace's spend is counted once."""
    c = start_collector(FAST_JUDGE)
    send_runs(c, "clean_tool_run", "streamed_tool_run", "embed", "embed_many")
    rows = c.query("SELECT name, input_value, input_mime_type, output_value, output_mime_type, llm_model_name, "
                   "llm_provider, llm_token_count_prompt, llm_token_count_total FROM spans ORDER BY start_time")
    steps = [r for r in rows if r["name"] in ("ai.generateText.doGenerate", "ai.streamText.doStream")]
    assert len(steps) == 4
    for step in steps:
        first = json.loads(step["input_value"])[0]
        assert first["role"] == "user" and first["content"][0]["text"] in ("What is the weather in Paris?",
                                                                          "Weather in Rome?")
        assert step["input_mime_type"] == "application/json"
    calling = [s for s in steps if s["output_mime_type"] == "application/json"]
    assert [json.loads(s["output_value"])[0]["toolName"] for s in calling] == ["get_weather", "get_weather"]
    assert [s["output_value"] for s in steps if s not in calling] == ["It is sunny in Paris, 21C.",
                                                                      "Rome is warm today."]
    by_name = {r["name"]: r for r in rows}
    tool = by_name["ai.toolCall"]  # the SDK JSON.stringify()s a tool's input and output alike
    assert (tool["input_mime_type"], tool["output_mime_type"]) == ("application/json", "application/json")
    embed_call = by_name["ai.embed.doEmbed"]
    assert (embed_call["llm_model_name"], embed_call["llm_provider"]) == ("text-embedding-3-small",
                                                                         "openai.embedding")
    assert (embed_call["llm_token_count_prompt"], embed_call["llm_token_count_total"]) == (5, 5)
    assert json.loads(embed_call["input_value"]) == ["sunny day in Paris"]
    assert by_name["ai.embed"]["input_value"] == "sunny day in Paris"
    assert by_name["ai.embed"]["llm_token_count_total"] is None
    assert by_name["ai.generateText"]["llm_token_count_total"] is None
    assert json.loads(by_name["ai.embedMany.doEmbed"]["input_value"]) == ["a", "b"]
    assert by_name["ai.embedMany.doEmbed"]["llm_model_name"] == "text-embedding-3-small"


def test_rerank_spans_are_rerankers(start_collector):
    """``rerank()`` (new in ``ai`` 6) records ``ai.rerank`` around ``ai.rerank.doRerank``, no gen_ai key: UNKNOWN."""
    c = start_collector(FAST_JUDGE)
    send_runs(c, "rerank")
    rows = c.query("SELECT name, span_kind FROM spans ORDER BY name")
    assert rows == [{"name": "ai.rerank", "span_kind": "RERANKER"},
                    {"name": "ai.rerank.doRerank", "span_kind": "RERANKER"}]
    assert c.query("SELECT failure_mode FROM detections") == []


def test_an_object_breaking_its_schema_is_a_format_violation_not_a_provider_error(start_collector):
    """``generateObject`` asks the model for JSON following a zod schema; the outer span records it in
    ``ai.schema``, the provider-call step the answer in ``ai.response.object``, and an answer that breaks it,
    does not parse or is cut at the token limit fails the outer span (NoObjectGeneratedError). That was an
    llm_error, as if the provider had failed; it is the format_violation (or the truncation) on the step."""
    c = start_collector(FAST_JUDGE)
    send_runs(c, "object_breaks_schema", "object_not_json", "object_cut_at_token_limit", "object_matches_schema")
    assert detections_by_run(c) == {
        "objbad": [("ai.generateObject.doGenerate", "format_violation", "output_schema")],
        "objtext": [("ai.generateObject.doGenerate", "format_violation", "json_output")],
        "objtrunc": [("ai.generateObject.doGenerate", "truncation", "finish_length")],
    }


def test_an_answer_the_provider_filtered_is_an_llm_error(start_collector):
    """The SDK unifies providers' finish reasons and hyphenates them: OpenAI's ``content_filter`` is recorded as
    ``content-filter`` (in ``gen_ai.response.finish_reasons`` too), which was taken for a normal end."""
    c = start_collector(FAST_JUDGE)
    send_runs(c, "content_filtered")
    assert detections_by_run(c) == {"filtered": [("ai.generateText.doGenerate", "llm_error", "llm_call_error")]}
    [evidence] = c.query("SELECT evidence->>'$.classification' AS classification FROM detections")
    assert evidence["classification"] == "content_filter"


def test_session_and_user_come_from_the_telemetry_metadata(start_collector):
    """``experimental_telemetry: {metadata: {sessionId, userId}}`` (the keys the SDK's tracing integrations
    ask for) is recorded as ``ai.telemetry.metadata.sessionId`` / ``.userId`` on every span of the call: the
    session_id and user_id columns, and so a candidate's session, stayed empty."""
    c = start_collector(FAST_JUDGE)
    send_runs(c, "clean_tool_run", "arguments_break_schema")
    rows = c.query("SELECT DISTINCT session_id, user_id FROM spans ORDER BY 1")
    assert rows == [{"session_id": "sess-badargs", "user_id": "user-badargs"},
                    {"session_id": "sess-clean", "user_id": "user-clean"}]
    [source] = c.query("SELECT source->>'$.session_id' AS session FROM candidates")
    assert source["session"] == "sess-badargs"


def test_an_irreversible_tool_that_fails_is_not_a_breach_of_itself(start_collector):
    """``ai`` 4 (4.3.19, still widely deployed) rethrows a tool's error from ``generateText``: the outer span
    errors with the tool's own message (``testdata/vercel_ai_sdk_4_tool_error.json``). That re-report was
    taken for another failure of the trace, so an irreversible tool that failed was also a P0
    blast_radius_breach "in the same trace as a failure": itself. It is one tool_invocation."""
    c = start_collector({"processors": {"detectors": {
        "decision_wait": "300ms", "blast_radius": {"refund_payment": "irreversible_write"}}}})
    body = (TESTDATA / "vercel_ai_sdk_4_tool_error.json").read_bytes()
    response = httpx.post(f"{c.http_url}/v1/traces", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    c.wait_for("SELECT count(*) AS n FROM trace_state WHERE judged_seq = received_seq", lambda r: r[0]["n"] == 1)
    assert detections_by_run(c) == {"toolthrows": [("ai.toolCall", "tool_invocation", "tool_error")]}
    [candidate] = c.query("SELECT failure_mode, blast_radius FROM candidates")
    assert candidate == {"failure_mode": "tool_invocation", "blast_radius": "irreversible_write"}


def test_candidates_carry_the_calls_the_model_asked_for_and_the_system_prompt(start_collector):
    """A candidate's context lists the tool calls (executed, else requested) and its source the system prompt,
    read from the model calls' messages. A Vercel provider call's were not read: a tool_argument candidate
    listed no call at all (the refused one never ran), and no candidate had a system prompt."""
    c = start_collector(FAST_JUDGE)
    send_runs(c, "arguments_break_schema", "conversation_tool_error")
    rows = c.query("SELECT failure_mode, input, context, source->>'$.system_prompt' AS system_prompt FROM candidates "
                   "ORDER BY failure_mode")
    assert [r["failure_mode"] for r in rows] == ["tool_argument", "tool_invocation"]
    [requested] = json.loads(rows[0]["context"])["tool_calls"]
    assert (requested["name"], requested["arguments"], requested["requested_only"]) == (
        "get_weather", {"city": 42}, True)
    assert "Type validation failed" in requested["result"]  # what the SDK told the model
    assert rows[1]["system_prompt"] == "You are a support agent."
    assert json.loads(rows[1]["input"]) == {"user_message": "Refund order A-17", "conversation_history": [
        {"role": "user", "content": "Hi, I am Jane"}, {"role": "assistant", "content": "Hello Jane, how can I help?"}]}
