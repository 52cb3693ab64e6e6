"""Spans the OpenAI Agents SDK for JS really sent, replayed through a real `tracesieve serve`.

Node is not available in CI, so each payload under tests/testdata/ is what @openai/agents 0.20.0 (openai 7.60.0)
exported through @arizeai/openinference-instrumentation-openai-agents 0.2.15 and
@opentelemetry/exporter-trace-otlp-proto 0.223.1 (captured once, stored as OTLP/JSON with hex ids; the resource
trimmed to `service.name`). The agents ran against a local stand-in for the Responses API. A run that throws
never exports its root "Agent workflow" AGENT span (the instrumentation ends it only on a finished run), so a
failed run's trace starts at the CHAIN span of the same name.
"""

from __future__ import annotations

import json

from conftest import FAST_JUDGE
from replay_helpers import judged, replay


def test_an_answer_the_agents_sdk_rejects_is_one_finding_under_its_own_mode(start_collector):
    """Five runs of one `Agent` that each threw: an `outputType` (zod) answer that is not JSON, and one that
    is JSON breaking the schema (`ModelBehaviorError: Invalid output type`); a refusal content part
    (`ModelRefusalError`); an answer cut at max_output_tokens (`unsuccessful terminal state
    "response.incomplete"`, on the model call and, JSON-escaped, on the turn around it); a 429. The SDK fails the
    turn, agent and workflow spans on the answer; each run is one finding, under the answer's mode, not also an
    llm_error (the rate limit is the only llm_error, reported once, on the model call)."""
    c = start_collector(FAST_JUDGE)
    replay(c, "openai_agents_js_rejected_answers.json")
    judged(c, 5)
    found = c.query("SELECT d.failure_mode, d.detector, s.name, s.span_kind FROM detections d "
                    "JOIN spans s USING (trace_id, span_id) ORDER BY 1, 2")
    assert found == [
        {"failure_mode": "format_violation", "detector": "json_output", "name": "response", "span_kind": "LLM"},
        {"failure_mode": "format_violation", "detector": "output_schema", "name": "response", "span_kind": "LLM"},
        {"failure_mode": "llm_error", "detector": "llm_call_error", "name": "response", "span_kind": "LLM"},
        {"failure_mode": "refusal_overreach", "detector": "refusal", "name": "response", "span_kind": "LLM"},
        {"failure_mode": "truncation", "detector": "finish_length", "name": "response", "span_kind": "LLM"},
    ]
    [rate_limit] = c.query("SELECT evidence->>'classification' AS classification FROM detections "
                           "WHERE failure_mode = 'llm_error'")
    assert rate_limit == {"classification": "rate_limit"}
    candidates = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert sorted(row["failure_mode"] for row in candidates) == [
        "format_violation", "format_violation", "llm_error", "refusal_overreach", "truncation"]
    asked = {row["input"]["user_message"] for row in candidates if row["failure_mode"] != "llm_error"}
    assert asked == {"What's the weather in Paris? Reply to <EMAIL> please.", "Give me the weather in Paris as JSON."}


def test_clean_openai_agents_js_runs_are_read_and_not_judged_failed(start_collector):
    """Three runs that went well: a tool call (`get_weather`) and its answer; an `outputType` answer that is the
    JSON asked for; a handoff from a triage agent to the weather agent, which calls the tool. Kinds, model,
    tokens, tool names and the tool's I/O are read from the OpenInference keys, the user's e-mail is redacted
    everywhere, and no detector fires."""
    c = start_collector(FAST_JUDGE)
    replay(c, "openai_agents_js_clean_runs.json")
    judged(c, 3)
    assert c.query("SELECT count(*) AS n FROM detections") == [{"n": 0}]
    llm = c.query("SELECT DISTINCT llm_model_name, llm_token_count_prompt AS p, llm_token_count_completion AS c, "
                  "llm_token_count_total AS t FROM spans WHERE span_kind = 'LLM'")
    assert llm == [{"llm_model_name": "gpt-4o-mini-2024-07-18", "p": 52, "c": 17, "t": 69}]
    tools = c.query("SELECT tool_name, input_value, output_value FROM spans WHERE span_kind = 'TOOL' ORDER BY 1")
    assert tools == [
        {"tool_name": "get_weather", "input_value": '{"city": "Paris"}', "output_value": "sunny, 21C in Paris"},
        {"tool_name": "get_weather", "input_value": '{"city": "Paris"}', "output_value": "sunny, 21C in Paris"},
        {"tool_name": "handoff_to_Weather agent", "input_value": '{"from_agent":"Triage agent"}',
         "output_value": '{"to_agent":"Weather agent"}'},
    ]
    leaked = c.query("SELECT count(*) AS n FROM spans WHERE CAST(attributes AS VARCHAR) LIKE '%jane.doe%' "
                     "OR input_value LIKE '%jane.doe%' OR output_value LIKE '%jane.doe%'")
    assert leaked == [{"n": 0}]
    roots = c.query("SELECT output_value FROM spans WHERE parent_span_id IS NULL ORDER BY output_value")
    assert roots == [{"output_value": "It is sunny in Paris today, 21 degrees."},
                     {"output_value": "It is sunny in Paris today, 21 degrees."},
                     {"output_value": '{"city": "Paris", "temp_c": 21}'}]


def test_a_tool_error_the_agents_sdk_passes_up_is_one_tool_invocation(start_collector):
    """A tool that throws with `errorFunction: null` fails the run: the SDK's `ToolCallError` says `Error in agent
    run: {"error":"ToolCallError: Failed to run function tools: Error: ..."}` on the turn, agent and workflow spans
    around the tool span's `Error running tool: {"tool_name":"get_weather","error":"Error: ..."}`, once through the
    Responses API and once through chat completions (`OpenAIChatCompletionsModel`). That is the tool's failure,
    one tool_invocation each, not also an llm_error on the turn (it was classed a provider error). A third run
    stopped at `maxTurns` (`MaxTurnsExceededError`) is the loop's step_limit, on the agent span."""
    c = start_collector(FAST_JUDGE)
    replay(c, "openai_agents_js_failed_runs.json")
    judged(c, 3)
    found = c.query("SELECT d.failure_mode, s.name, s.span_kind FROM detections d "
                    "JOIN spans s USING (trace_id, span_id) ORDER BY 1")
    assert found == [
        {"failure_mode": "loop", "name": "Weather assistant", "span_kind": "AGENT"},
        {"failure_mode": "tool_invocation", "name": "get_weather", "span_kind": "TOOL"},
        {"failure_mode": "tool_invocation", "name": "get_weather", "span_kind": "TOOL"},
    ]


def test_an_input_guardrail_that_blocks_the_message_is_no_failure_but_one_that_raised_is(start_collector):
    """Three runs of one `Agent` (the payload openai_agents_js_guardrails.json): an input guardrail that tripped
    (`InputGuardrailTripwireTriggered` on the turn, agent and workflow: the guardrail did its job, and replaying
    the message trips it again), one whose own `execute` threw (`GuardrailExecutionError`, the guardrail span
    failed too), and an output guardrail that blocked the model's answer (`OutputGuardrailTripwireTriggered`).
    Only the last two are llm_error findings, each once, on the agent's innermost failed span."""
    c = start_collector(FAST_JUDGE)
    replay(c, "openai_agents_js_guardrails.json")
    judged(c, 3)
    found = c.query("SELECT d.failure_mode, s.name, s.status_message FROM detections d "
                    "JOIN spans s USING (trace_id, span_id) ORDER BY s.status_message")
    assert [(row["failure_mode"], row["name"]) for row in found] == [("llm_error", "turn"), ("llm_error", "turn")]
    assert "GuardrailExecutionError: Input guardrail failed to complete" in found[0]["status_message"]
    assert "OutputGuardrailTripwireTriggered" in found[1]["status_message"]
    candidates = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert sorted(row["failure_mode"] for row in candidates) == ["llm_error", "llm_error"]
