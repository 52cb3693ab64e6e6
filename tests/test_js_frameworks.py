"""Spans that Node agents' instrumentations really sent, replayed through a real `tracesieve serve`.

Node is not available in CI, so each payload under tests/testdata/ is what the named packages exported
(captured once from their OTLP/protobuf exporter, stored as OTLP/JSON with hex ids; the resource trimmed
to `service.name` and the runtime). The agents ran against a local stand-in for the chat completions API.
"""

from __future__ import annotations

import json
from typing import Any

from conftest import FAST_JUDGE
from replay_helpers import judged, replay
from test_instrumented import candidates_of

BLAST_RADIUS = {"processors": {"detectors": {**FAST_JUDGE["processors"]["detectors"],
                                             "blast_radius": {"send_email": "irreversible_write"}}}}


def test_a_traceloop_node_tool_is_named_by_its_entity_name(start_collector):
    """@traceloop/node-server-sdk 0.27.0 (openai 6.49 instrumented): `withTool({name: "send_email"})` records
    a span "send_email.tool" with `traceloop.span.kind: tool` and `traceloop.entity.name: send_email`, and no
    `tool.name` / `gen_ai.tool.name` (the Python SDK's LangChain spans carry one). The tool ran after the
    model's answer was cut at its token limit, so a tool classed irreversible_write ran in a failed trace."""
    c = start_collector(BLAST_RADIUS)
    replay(c, "traceloop_node_tool_after_truncation.json")
    assert c.query("SELECT name, span_kind, tool_name FROM spans WHERE span_kind = 'TOOL'") == [
        {"name": "send_email.tool", "span_kind": "TOOL", "tool_name": "send_email"}]
    found = c.wait_for("SELECT d.failure_mode, s.name FROM detections d JOIN spans s USING (span_id) ORDER BY 1",
                       lambda r: len(r) >= 2)
    assert found == [{"failure_mode": "blast_radius_breach", "name": "send_email.tool"},
                     {"failure_mode": "truncation", "name": "chat gpt-4o-mini"}]


def final_answers(c: Any) -> dict[str, Any]:
    rows = c.wait_for("SELECT failure_mode FROM candidates", lambda r: len(r) >= 3)
    assert sorted(r["failure_mode"] for r in rows) == ["hallucination", "retrieval_miss", "truncation"]
    listed = c.cli("candidates", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    return {row["failure_mode"]: row["observed"]["final_answer"] for row in json.loads(listed.stdout)}


def test_the_final_answer_of_a_langchainjs_run_is_the_ai_messages_text(start_collector):
    """@arizeai/openinference-instrumentation-langchain 4.1.1 on @langchain/core 1.5.0: the root's output is
    the serialized messages. A LangGraph `createReactAgent` (@langchain/langgraph 1.7.5) run records its final
    state, `{"messages": [{"lc": 1, "type": "constructor", "id": [..., "AIMessage"], "kwargs": {...}}, ...]}`
    (here its answer was cut at the token limit); a `RunnableSequence` (retriever -> prompt -> ChatOpenAI) its
    AIMessage alone. The candidate's final answer is what the assistant said, not the serialized run."""
    c = start_collector(FAST_JUDGE)
    replay(c, "langchainjs_openinference_answers.json")
    answers = final_answers(c)
    assert answers["truncation"] == "The warranty covers the motor for five years and the"
    premium = "Our premium plan costs 49 dollars per month and includes 24/7 phone support for all customers."
    assert answers["hallucination"] == answers["retrieval_miss"] == premium


def test_a_citation_of_a_langchainjs_document_by_its_id_is_not_hallucination(start_collector):
    """@arizeai/openinference-instrumentation-langchain 4.1.1 (@langchain/core 1.5.0) records a retrieved
    `new Document({id: "doc-1", ...})` with its content and metadata but without its id, which only the
    retriever's output.value lists (`{"documents": [{"pageContent", "metadata", "id"}]}`). Two RAG turns:
    one answer cites [doc-1] and [doc-2], both retrieved; the other cites [doc-1] and an invented [doc-999]."""
    c = start_collector(FAST_JUDGE)
    replay(c, "langchainjs_openinference_document_ids.json")
    judged(c, 2)
    found = c.query("SELECT failure_mode, evidence->'missing_ids' AS missing FROM detections")
    assert [(r["failure_mode"], json.loads(r["missing"])) for r in found] == [("hallucination", ["doc-999"])]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert [d["id"] for d in candidate["context"]["documents"]] == ["doc-1", "doc-2"]


def test_a_langchainjs_model_call_names_the_model_that_answered(start_collector):
    """@arizeai/openinference-instrumentation-langchain 4.1.1 sets `llm.model_name` from the invocation
    parameters, the alias asked for (`gpt-4o-mini`); the snapshot that answered is in the LLMResult in
    output.value (the AIMessage's `response_metadata.model_name`)."""
    c = start_collector(FAST_JUDGE)
    replay(c, "langchainjs_openinference_answers.json")
    rows = c.query("SELECT DISTINCT llm_model_name, llm_token_count_prompt, llm_token_count_completion, "
                   "llm_token_count_total FROM spans WHERE span_kind = 'LLM'")
    assert rows == [{"llm_model_name": "gpt-4o-mini-2024-07-18", "llm_token_count_prompt": 40,
                     "llm_token_count_completion": 12, "llm_token_count_total": 52}]


def test_a_langchainjs_structured_answer_breaking_its_zod_schema_is_a_format_violation(start_collector):
    """`model.withStructuredOutput(z.object({summary: z.string(), priority: z.number()}))` on @langchain/openai
    1.5.8 sends the schema as `response_format` and parses the answer with openai-node's zod helper inside the
    traced call: `{"summary": 5}` is JSON but breaks the schema, so the ChatOpenAI span ends in a ZodError
    (@arizeai/openinference-instrumentation-langchain 4.1.1 records its message, no exception type). That is
    the answer breaking the JSON asked for, not a provider error. (Stack paths in the payload rewritten to /app/.)"""
    c = start_collector(FAST_JUDGE)
    replay(c, "langchainjs_openinference_structured_output_zod_error.json")
    [candidate] = candidates_of(c, "format_violation")
    assert candidate["input"]["user_message"] == "Summarize ticket 10 as JSON [[jsonbad]]"
    assert candidate["expected"]["output_schema"]["required"] == ["summary", "priority"]
    assert c.query("SELECT failure_mode FROM detections") == [{"failure_mode": "format_violation"}]


def test_a_langchainjs_output_parser_failing_on_the_answer_is_its_format_not_an_llm_error(start_collector):
    """`withStructuredOutput(z.object({summary: z.string(), priority: z.number()}), {method})` on @langchain/openai
    1.5.8 parses the answer in a parser run after the model call; @arizeai/openinference-instrumentation-langchain
    4.1.1 records that parser as a CHAIN span that fails with OutputParserException ("Failed to parse. Text: ...").
    Three turns: function calling with arguments breaking the schema (tool_argument on the model call), JSON mode
    answering prose (format_violation on the model call), JSON mode answering JSON that breaks the zod schema
    (only the parser knows: format_violation on it). The parser's failure is the answer's format, never an
    llm_error. (Stack paths in the payload rewritten to /app/.)"""
    c = start_collector(FAST_JUDGE)
    replay(c, "langchainjs_openinference_output_parser_errors.json")
    judged(c, 3)
    rows = c.query("SELECT regexp_extract(r.input_value, '\\[\\[(\\w+)\\]\\]', 1) AS turn, d.failure_mode, s.name "
                   "FROM detections d JOIN spans s USING (trace_id, span_id) "
                   "JOIN spans r ON r.trace_id = d.trace_id AND r.parent_span_id IS NULL ORDER BY turn")
    assert rows == [{"turn": "fcbad", "failure_mode": "tool_argument", "name": "ChatOpenAI"},
                    {"turn": "jmbad", "failure_mode": "format_violation", "name": "ChatOpenAI"},
                    {"turn": "jmschema", "failure_mode": "format_violation", "name": "StructuredOutputParser"}]


def test_a_langchainjs_tool_call_in_a_candidate_shows_its_arguments_and_result(start_collector):
    """A LangGraph `createReactAgent` (@langchain/langgraph 1.7.5) calling `lookup_order` ({order_id: z.string()})
    four times with the same arguments, as @arizeai/openinference-instrumentation-langchain 4.1.1 records it:
    the TOOL span's input is the one string value alone (`ORD-9`) and its output the serialized ToolMessage,
    `{"output": {"lc": 1, "type": "constructor", "id": [..., "ToolMessage"], "kwargs": {"content", "tool_call_id"}}}`.
    The candidate's tool calls show the arguments the model asked for and what the tool returned."""
    c = start_collector(FAST_JUDGE)
    replay(c, "langchainjs_openinference_repeated_tool_call.json")
    [candidate] = candidates_of(c, "loop")
    calls = candidate["context"]["tool_calls"]
    assert [(call["name"], call["arguments"], call["result"]) for call in calls] == [
        ("lookup_order", {"order_id": "ORD-9"}, {"order_id": "ORD-9", "status": "shipped"})] * 4
    [failing] = candidate["observed"]["failing_calls"]
    assert (failing["arguments"], failing["output"]) == ({"order_id": "ORD-9"}, {"order_id": "ORD-9", "status": "shipped"})


def test_tools_declared_by_traceloop_nodes_together_instrumentation_are_held_to_their_schema(start_collector):
    """@traceloop/instrumentation-together-ai 0.27.0 (together-ai 0.52, via @traceloop/node-server-sdk 0.27.0)
    still writes OpenLLMetry's older keys: `gen_ai.prompt.<i>.*`, `gen_ai.completion.<i>.*`, `gen_ai.usage.*`,
    and the tools offered as `llm.request.functions.<i>.name` / `.description` / `.arguments` (the parameters
    schema, as JSON text). Three turns: a clean tool call, a call asking `lookup_order` for `{"order": 12}`,
    and a refusal although the tool was offered."""
    c = start_collector(FAST_JUDGE)
    replay(c, "traceloop_node_together_tools.json")
    judged(c, 3)
    rows = c.query("SELECT regexp_extract(r.input_value, '\\[\\[(\\w+)\\]\\]', 1) AS turn, d.failure_mode "
                   "FROM detections d JOIN spans r ON r.trace_id = d.trace_id AND r.parent_span_id IS NULL ORDER BY turn")
    assert rows == [{"turn": "badargs", "failure_mode": "tool_argument"},
                    {"turn": "refusal", "failure_mode": "refusal_overreach"}]
    [candidate] = candidates_of(c, "tool_argument")
    assert candidate["expected"]["tool_arguments_schema"]["lookup_order"]["required"] == ["order_id"]
    assert candidate["context"]["available_tools"] == ["lookup_order"]
