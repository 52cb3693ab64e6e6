"""Spans Mastra's own observability really sent, replayed through a real `tracesieve serve`.

Node is not available in CI, so each payload under tests/testdata/ is what @mastra/core 1.71.0 exported through
@mastra/observability 1.17.9 and @mastra/otel-exporter 1.4.0 (provider `custom`, `http/protobuf`; captured once,
stored as OTLP/JSON with hex ids; the resource trimmed to `service.name`). Eight `agent.generate` runs of one
weather agent with a `get_weather` tool, against a local stand-in for the chat completions API: a clean run, a
tool that throws, arguments breaking the tool's zod schema, the same call four times, a 429, a refusal, an answer
cut at its token limit, and a `structuredOutput` answer that is not JSON. Mastra's spans follow the GenAI
conventions (`invoke_agent`, `chat`, `execute_tool`) but keep the run's input and output in its own keys
(`mastra.agent_run.input` / `.output`, `mastra.model_step.*`).
"""

from __future__ import annotations

import json

from conftest import FAST_JUDGE
from replay_helpers import judged, replay

QUESTION = "What's the weather in Paris? Reply to <EMAIL> please."


def test_a_mastra_run_has_the_users_message_in_and_the_answer_out(start_collector):
    """The agent span's input is the user's message (redacted) and its output the answer's text, so a candidate
    holds what the user asked and what the agent said; they were empty, every Mastra candidate had the user
    message ''."""
    c = start_collector(FAST_JUDGE)
    replay(c, "mastra_otel_exporter_runs.json")
    judged(c, 8)
    [clean] = c.query("SELECT input_value, output_value FROM spans WHERE name = 'invoke_agent weather_chat_clean'")
    assert clean == {"input_value": QUESTION, "output_value": "It is sunny in Paris today, 21 degrees."}
    assert c.query("SELECT count(*) AS n FROM spans WHERE CAST(attributes AS VARCHAR) LIKE '%jane.doe%'") == [{"n": 0}]
    listed = c.cli("candidates", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    by_mode = {row["failure_mode"]: row for row in json.loads(listed.stdout)}
    assert {mode: row["input"]["user_message"] for mode, row in by_mode.items()} == dict.fromkeys(by_mode, QUESTION)
    assert by_mode["tool_invocation"]["observed"]["final_answer"] == "It is sunny in Paris today, 21 degrees."
    assert by_mode["truncation"]["observed"]["final_answer"] == "The weather in Paris today is sunny with a"


def test_a_rate_limit_in_a_mastra_run_is_one_llm_error(start_collector):
    """Mastra records a 429 twice: the `chat` span ends OK with finish reason `error` and no message, the
    `invoke_agent` span around it fails with the provider's message. That is one llm_error, classed a rate limit,
    on the span that says so (it was two: the second "stopped abnormally (finish reason error)")."""
    c = start_collector(FAST_JUDGE)
    replay(c, "mastra_otel_exporter_runs.json")
    judged(c, 8)
    found = c.query("SELECT s.name, d.evidence->>'classification' AS classification FROM detections d "
                    "JOIN spans s USING (trace_id, span_id) WHERE s.trace_id IN "
                    "(SELECT trace_id FROM spans WHERE name = 'invoke_agent weather_chat_ratelimit')")
    assert found == [{"name": "invoke_agent weather_chat_ratelimit", "classification": "rate_limit"}]


def test_a_mastra_agent_refusing_although_it_had_a_tool_is_refusal_overreach(start_collector):
    """Mastra lists the agent's tools by name only, `gen_ai.tool.definitions: ["get_weather"]` on `invoke_agent`
    (no schema, and the `chat` span declares none): those are tools the agent had. The run that answered "I'm sorry,
    but I can't assist with that." without calling one is refusal_overreach; it went unreported, as if the agent
    had no tools."""
    c = start_collector(FAST_JUDGE)
    replay(c, "mastra_otel_exporter_runs.json")
    judged(c, 8)
    found = c.query("SELECT d.failure_mode, d.evidence->'tools_available' AS tools FROM detections d WHERE d.trace_id IN "
                    "(SELECT trace_id FROM spans WHERE name = 'invoke_agent weather_chat_refusal')")
    assert [(r["failure_mode"], json.loads(r["tools"])) for r in found] == [("refusal_overreach", ["get_weather"])]


def test_a_mastra_structured_output_that_is_not_json_is_a_format_violation(start_collector):
    """`agent.generate(q, {structuredOutput: {schema}})` whose answer is prose: Mastra fails `invoke_agent` with
    `error.type` STRUCTURED_OUTPUT_SCHEMA_VALIDATION_FAILED (the model call itself ends OK). That is the answer's
    format, a format_violation on the agent span, not an llm_error (it was one, classed "other")."""
    c = start_collector(FAST_JUDGE)
    replay(c, "mastra_otel_exporter_runs.json")
    judged(c, 8)
    found = c.query("SELECT d.failure_mode, s.name FROM detections d JOIN spans s USING (trace_id, span_id) "
                    "WHERE s.trace_id IN (SELECT trace_id FROM spans WHERE name = 'invoke_agent weather_chat_json')")
    assert found == [{"failure_mode": "format_violation", "name": "invoke_agent weather_chat_json"}]
    [candidate] = [row for row in json.loads(c.cli("candidates", "--format", "json").stdout)
                   if row["failure_mode"] == "format_violation"]
    assert candidate["input"]["user_message"] == QUESTION
    assert candidate["observed"]["final_answer"] == "Sure! The weather in Paris is lovely."


def test_arguments_a_mastra_tool_refused_for_its_schema_are_a_tool_argument(start_collector):
    """The model called `get_weather` with `{"town": 5}`, breaking the tool's zod `inputSchema` ({city: string}).
    Mastra does not run the tool: the `execute_tool` span ends OK with the output `{"error": true, "message": "Tool
    input validation failed for get_weather. ...\\n- city: Invalid input: ...", "validationErrors": {...}}`, and no
    span declares the schema. That is a tool_argument on the tool span; it went unreported."""
    c = start_collector(FAST_JUDGE)
    replay(c, "mastra_otel_exporter_runs.json")
    judged(c, 8)
    found = c.query("SELECT d.failure_mode, d.detector, s.name, d.message FROM detections d "
                    "JOIN spans s USING (trace_id, span_id) WHERE s.trace_id IN "
                    "(SELECT trace_id FROM spans WHERE name = 'invoke_agent weather_chat_badargs')")
    assert found == [{"failure_mode": "tool_argument", "detector": "tool_schema", "name": "execute_tool get_weather",
                      "message": "arguments received for tool get_weather break its schema at $: "
                                 "city: Invalid input: expected string, received undefined"}]


def test_only_the_model_calls_of_a_mastra_run_are_llm_spans(start_collector):
    """Mastra wraps each model call (`chat gpt-4o-mini`, which names the model and its tokens) in spans of its own
    with the custom operation names model_generation, agent_step and model_chunk. Those are steps around the call,
    CHAIN spans: as LLM spans every call counted four times or more (step_limit, the LLM spans an operator counts),
    and a refusal was reported on the wrapper, not on the call that said it."""
    c = start_collector(FAST_JUDGE)
    replay(c, "mastra_otel_exporter_runs.json")
    judged(c, 8)
    kinds = c.query("SELECT split_part(name, ' ', 1) AS op, span_kind, count(*) AS n FROM spans GROUP BY ALL ORDER BY 1")
    assert kinds == [
        {"op": "agent_step", "span_kind": "CHAIN", "n": 15}, {"op": "chat", "span_kind": "LLM", "n": 15},
        {"op": "execute_tool", "span_kind": "TOOL", "n": 7}, {"op": "invoke_agent", "span_kind": "AGENT", "n": 8},
        {"op": "model_chunk", "span_kind": "CHAIN", "n": 20}, {"op": "model_generation", "span_kind": "CHAIN", "n": 8},
    ]
    [refusal] = c.query("SELECT s.name FROM detections d JOIN spans s USING (trace_id, span_id) "
                        "WHERE d.failure_mode = 'refusal_overreach'")
    assert refusal == {"name": "chat gpt-4o-mini"}
