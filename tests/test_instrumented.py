"""Spans made by real instrumentation libraries, through a real `tracesieve serve`, read back with the real CLI.

The OpenAI SDK and its OpenInference instrumentor run in this process against a small local stand-in for
the chat completions API (below); the spans go out through the OTel SDK's OTLP exporters. Where a library
is not a test dependency, the span is rebuilt with the plain OTel SDK key for key, and the comment names
the library and version it was copied from.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openinference.instrumentation import TraceConfig
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode, Tracer

from conftest import FAST_JUDGE, TESTDATA
from sdk_helpers import sdk_tracer

LOOKUP_ORDER = {"type": "function", "function": {
    "name": "lookup_order", "description": "Look up an order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}

#: The user's question -> the assistant message the stand-in model answers with (and its finish reason).
ANSWERS: dict[str, tuple[dict[str, Any], str]] = {
    "Cancel my subscription": ({"content": None, "refusal": "I'm sorry, I cannot assist with that request."}, "stop"),
    "What does the warranty cover?": ({"content": "The warranty covers the motor for five years and"}, "length"),
    "Summarize ticket 9 as JSON": ({"content": None, "refusal": "I'm sorry, I cannot help with that."}, "stop"),
    "Summarize ticket 10 as JSON": ({"content": "Summary: the customer wants a new lid."}, "stop"),
    "Summarize ticket 11 as JSON": ({"content": '{"summary": "wants a new lid"}'}, "stop"),
    "Where is order 12?": ({"content": None, "tool_calls": [{"id": "call_12", "type": "function", "function": {
        "name": "lookup_order", "arguments": '{"order": 12}'}}]}, "tool_calls"),
    "Where are orders 12 and 13?": ({"content": None, "tool_calls": [  # parallel tool calls, both breaking the schema
        {"id": "call_12", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order": 12}'}},
        {"id": "call_13", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order": 13}'}}]},
        "tool_calls"),
}


#: The Responses API: the user's input -> the answer's text.
RESPONSES = {
    "Summarize ticket 7 as JSON": "Summary: the customer wants a new lid.",
    "Summarize ticket 8 as JSON": '{"summary": "wants a new lid"}',
}


def _response(request: dict[str, Any]) -> dict[str, Any]:
    """A ``POST /v1/responses`` answer, as the OpenAI API shapes it."""
    return {
        "id": "resp_1", "object": "response", "created_at": 1_763_700_000, "status": "completed",
        "incomplete_details": None, "error": None, "model": "gpt-4o-mini-2024-07-18", "instructions": None,
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": RESPONSES[request["input"]], "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "metadata": {}, "temperature": 1.0,
        "top_p": 1.0, "text": request.get("text") or {"format": {"type": "text"}},
        "usage": {"input_tokens": 30, "output_tokens": 8, "total_tokens": 38,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    }


class _ChatCompletions(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.path.endswith("/responses"):
            body = json.dumps(_response(request)).encode()
        else:
            question = request["messages"][-1]["content"]
            message, finish = ANSWERS[question]
            body = json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_763_700_000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "refusal": None, **message},
                             "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
            }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass


@pytest.fixture
def model_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@contextmanager
def openinference_openai(grpc_endpoint: str, config: TraceConfig | None = None) -> Iterator[Tracer]:
    """openinference-instrumentation-openai on the real OpenAI SDK, exporting over OTLP/gRPC; undone on exit."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://{grpc_endpoint}", insecure=True), schedule_delay_millis=100))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider, config=config or TraceConfig())
    try:
        yield provider.get_tracer("support-bot")
    finally:
        instrumentor.uninstrument()
        provider.force_flush(30_000)
        provider.shutdown()


def ask(model_url: str, question: str) -> None:
    client = openai.OpenAI(base_url=model_url, api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", tools=[LOOKUP_ORDER], max_tokens=12, messages=[
        {"role": "system", "content": "You are a support agent."}, {"role": "user", "content": question}])


def candidates_of(c: Any, mode: str) -> list[dict[str, Any]]:
    c.wait_for(f"SELECT 1 FROM candidates WHERE failure_mode = '{mode}'", lambda rows: len(rows) == 1)
    listed = c.cli("candidates", "--mode", mode, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return rows


def test_an_openai_refusal_field_inside_an_agent_is_refusal_overreach(start_collector, model_url):
    c = start_collector(FAST_JUDGE)
    with openinference_openai(c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:  # the app's own span around the call
            root.set_attribute("openinference.span.kind", "AGENT")
            ask(model_url, "Cancel my subscription")
    [candidate] = candidates_of(c, "refusal_overreach")
    llm = c.query("SELECT span_id FROM spans WHERE span_kind = 'LLM'")
    assert candidate["source"]["span_ids"] == [llm[0]["span_id"]]
    assert candidate["observed"]["final_answer"] == "I'm sorry, I cannot assist with that request."


def test_an_openai_refusal_of_a_json_request_is_not_a_format_violation(start_collector, model_url):
    c = start_collector(FAST_JUDGE)
    client = openai.OpenAI(base_url=model_url, api_key="sk-test", max_retries=0)
    with openinference_openai(c.grpc_endpoint):  # no tools, no documents: not refusal_overreach either
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "Summarize ticket 9 as JSON"}], response_format={"type": "json_object"})
    c.wait_for("SELECT 1 FROM trace_state WHERE judged_seq = received_seq", lambda r: len(r) == 1)
    assert c.query("SELECT failure_mode FROM detections") == []


def test_a_parse_call_whose_answer_is_not_the_json_model_is_a_format_violation(start_collector, model_url):
    class TicketSummary(pydantic.BaseModel):
        summary: str

    c = start_collector(FAST_JUDGE)
    client = openai.OpenAI(base_url=model_url, api_key="sk-test", max_retries=0)
    with openinference_openai(c.grpc_endpoint), pytest.raises(pydantic.ValidationError):
        # the SDK parses the answer inside the instrumented call: the LLM span errors, with no output
        client.chat.completions.parse(model="gpt-4o-mini", response_format=TicketSummary, messages=[
            {"role": "user", "content": "Summarize ticket 10 as JSON"}])
    rows = c.wait_for("SELECT failure_mode, detector FROM detections", lambda r: len(r) > 0)
    assert rows == [{"failure_mode": "format_violation", "detector": "json_output"}]


def test_a_parse_call_cut_at_the_token_limit_is_truncation(start_collector, model_url):
    class Warranty(pydantic.BaseModel):
        coverage: str

    c = start_collector(FAST_JUDGE)
    client = openai.OpenAI(base_url=model_url, api_key="sk-test", max_retries=0)
    with openinference_openai(c.grpc_endpoint), pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="gpt-4o-mini", response_format=Warranty, max_tokens=12, messages=[
            {"role": "user", "content": "What does the warranty cover?"}])
    rows = c.wait_for("SELECT failure_mode, detector FROM detections", lambda r: len(r) > 0)
    assert rows == [{"failure_mode": "truncation", "detector": "finish_length"}]


def test_a_json_answer_hidden_by_openinference_is_not_a_format_violation(start_collector, model_url):
    c = start_collector(FAST_JUDGE)
    client = openai.OpenAI(base_url=model_url, api_key="sk-test", max_retries=0)
    # OPENINFERENCE_HIDE_OUTPUTS: output.value is "__REDACTED__", hidden on purpose (present but unknown)
    with openinference_openai(c.grpc_endpoint, TraceConfig(hide_outputs=True)):
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "Summarize ticket 11 as JSON"}], response_format={"type": "json_object"})
    c.wait_for("SELECT 1 FROM trace_state WHERE judged_seq = received_seq", lambda r: len(r) == 1)
    assert c.query("SELECT output_value FROM spans") == [{"output_value": "__REDACTED__"}]
    assert c.query("SELECT failure_mode FROM detections") == []


def test_the_final_answer_of_a_model_call_alone_is_its_text_not_the_provider_response(start_collector, model_url):
    c = start_collector(FAST_JUDGE)
    with openinference_openai(c.grpc_endpoint):
        ask(model_url, "What does the warranty cover?")  # the LLM span is the root: output.value is the response JSON
    [candidate] = candidates_of(c, "truncation")
    assert candidate["observed"]["final_answer"] == "The warranty covers the motor for five years and"


def test_a_model_call_that_only_asked_for_tools_has_no_final_answer(start_collector, model_url):
    """The agent said nothing: the final answer is null, not the provider's whole response JSON."""
    c = start_collector(FAST_JUDGE)
    with openinference_openai(c.grpc_endpoint):
        ask(model_url, "Where is order 12?")  # arguments that break lookup_order's schema: a tool_argument
    [candidate] = candidates_of(c, "tool_argument")
    assert candidate["observed"]["final_answer"] is None
    assert "order" in json.dumps(candidate["observed"]["detections"][0]["evidence"])


def test_the_final_answer_of_a_genai_chat_span_alone_is_its_text(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("http", c.http_url) as tracer:
        # opentelemetry-instrumentation-openai-v2 2.4b0 with OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental
        # and OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=SPAN_ONLY: one CLIENT span, messages as JSON text.
        with tracer.start_as_current_span("chat gpt-4o-mini") as span:
            span.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.provider.name": "openai", "gen_ai.response.finish_reasons": ["length"],
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.response.id": "chatcmpl-5",
                "gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 10,
                "gen_ai.input.messages": json.dumps([
                    {"role": "system", "parts": [{"content": "You are support.", "type": "text"}]},
                    {"role": "user", "parts": [{"content": "What does the warranty cover?", "type": "text"}]}]),
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                    {"content": "The warranty covers the motor for five years and", "type": "text"}],
                    "finish_reason": "length"}]),
            })
    [candidate] = candidates_of(c, "truncation")
    assert candidate["input"]["user_message"] == "What does the warranty cover?"
    assert candidate["observed"]["final_answer"] == "The warranty covers the motor for five years and"


SUMMARY_SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}, "priority": {"type": "integer"}},
                  "required": ["summary", "priority"]}


@pytest.mark.parametrize("text_format", [
    {"type": "json_object"},
    {"type": "json_schema", "name": "ticket_summary", "schema": SUMMARY_SCHEMA},
])
def test_a_responses_api_answer_that_is_not_the_json_asked_for_is_a_format_violation(
        start_collector, model_url, text_format):
    c = start_collector(FAST_JUDGE)
    client = openai.OpenAI(base_url=model_url, api_key="sk-test", max_retries=0)
    with openinference_openai(c.grpc_endpoint):  # Responses API: the JSON request is `text.format`, not response_format
        client.responses.create(model="gpt-4o-mini", input="Summarize ticket 7 as JSON", text={"format": text_format})
    [candidate] = candidates_of(c, "format_violation")
    assert candidate["observed"]["final_answer"] == "Summary: the customer wants a new lid."
    assert candidate["expected"]["output_schema"] == text_format.get("schema", {})


def test_a_responses_api_json_answer_breaking_the_declared_schema_is_a_format_violation(start_collector, model_url):
    c = start_collector(FAST_JUDGE)
    client = openai.OpenAI(base_url=model_url, api_key="sk-test", max_retries=0)
    with openinference_openai(c.grpc_endpoint):
        client.responses.create(model="gpt-4o-mini", input="Summarize ticket 8 as JSON", text={"format": {
            "type": "json_schema", "name": "ticket_summary", "schema": SUMMARY_SCHEMA}})
    rows = c.wait_for("SELECT failure_mode, detector FROM detections", lambda r: len(r) > 0)
    assert rows == [{"failure_mode": "format_violation", "detector": "output_schema"}]


@pytest.mark.parametrize("declared, answer, detector", [
    ({"type": "json_object"}, "Summary: the customer wants a new lid.", "json_output"),
    ({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]},
     '{"title": "lid"}', "output_schema"),
])
def test_openllmetry_structured_output_that_is_not_the_json_asked_for_is_a_format_violation(
        start_collector, declared, answer, detector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        # opentelemetry-instrumentation-openai 0.62.4 (OpenLLMetry) on chat.completions.create(response_format=...):
        # gen_ai.request.structured_output_schema holds {"type": "json_object"}, or json_schema's schema itself.
        with tracer.start_as_current_span("openai.chat") as span:
            span.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.is_streaming": False, "gen_ai.request.structured_output_schema": json.dumps(declared),
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                    {"content": "Summarize ticket 7 as JSON", "type": "text"}]}]),
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.response.finish_reasons": ["stop"],
                "gen_ai.usage.total_tokens": 60, "gen_ai.usage.output_tokens": 10, "gen_ai.usage.input_tokens": 50,
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                    {"content": answer, "type": "text"}], "finish_reason": "stop"}]),
            })
    rows = c.wait_for("SELECT failure_mode, detector FROM detections", lambda r: len(r) > 0)
    assert rows == [{"failure_mode": "format_violation", "detector": detector}]
    [candidate] = candidates_of(c, "format_violation")
    assert candidate["expected"]["output_schema"] == ({} if declared["type"] == "json_object" else declared)


def langchain_chat_span(tracer: Tracer, *, question: str, message_kwargs: dict[str, Any], finish: str) -> None:
    """A ChatOpenAI run as openinference-instrumentation-langchain 0.1.80 (langchain-openai 1.8.1) records it.

    LangChain parses the model's tool calls itself: arguments that are not JSON leave ``tool_calls``
    empty and land in the AIMessage's ``invalid_tool_calls``, which only ``output.value`` (the
    LLMResult) carries; ``llm.output_messages`` then holds the role alone. An OpenAI ``refusal`` is
    in ``additional_kwargs`` the same way.
    """
    message = {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "AIMessage"],
               "kwargs": {"content": "", "additional_kwargs": {"refusal": None}, "type": "ai",
                          "tool_calls": [], "invalid_tool_calls": [], **message_kwargs}}
    result = {"generations": [[{"text": "", "generation_info": {"finish_reason": finish, "logprobs": None},
                                "type": "ChatGeneration", "message": message}]],
              "llm_output": {"model_name": "gpt-4o-mini-2024-07-18", "id": "chatcmpl-4"}, "run": None,
              "type": "LLMResult"}
    schema = json.dumps(LOOKUP_ORDER)
    with tracer.start_as_current_span("ChatOpenAI") as span:
        span.set_attributes({
            "input.value": json.dumps({"messages": [[{"lc": 1, "type": "constructor", "id": [
                "langchain", "schema", "messages", "HumanMessage"], "kwargs": {"content": question, "type": "human"}}]]}),
            "input.mime_type": "application/json",
            "output.value": json.dumps(result), "output.mime_type": "application/json",
            "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": question,
            "llm.output_messages.0.message.role": "assistant",
            "llm.invocation_parameters": json.dumps({"model": "gpt-4o-mini", "_type": "openai-chat",
                                                     "tools": [LOOKUP_ORDER]}),
            "llm.tools.0.tool.json_schema": schema, "llm.provider": "openai", "llm.system": "openai",
            "llm.model_name": "gpt-4o-mini-2024-07-18", "llm.token_count.prompt": 50,
            "llm.token_count.completion": 10, "llm.token_count.total": 60, "llm.finish_reason": finish,
            "openinference.span.kind": "LLM",
        })


def test_langchain_invalid_tool_call_arguments_are_a_tool_argument_failure(start_collector):
    c = start_collector(FAST_JUDGE)
    invalid = {"type": "invalid_tool_call", "id": "call_2", "name": "lookup_order", "args": "{order_id: ORD-1",
               "error": "Function lookup_order arguments:\n\n{order_id: ORD-1\n\nare not valid JSON."}
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("RunnableSequence") as root:
            root.set_attribute("openinference.span.kind", "CHAIN")
            langchain_chat_span(tracer, question="Where is my order?", finish="tool_calls",
                                message_kwargs={"invalid_tool_calls": [invalid]})
    rows = c.wait_for("SELECT d.failure_mode, d.detector, d.evidence->>'$.arguments' AS arguments, s.name "
                      "FROM detections d JOIN spans s USING (trace_id, span_id)", lambda r: len(r) > 0)
    assert rows == [{"failure_mode": "tool_argument", "detector": "tool_args_json",
                     "arguments": "{order_id: ORD-1", "name": "ChatOpenAI"}]


def test_a_langchain_refusal_with_tools_declared_is_refusal_overreach(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:
            root.set_attribute("openinference.span.kind", "CHAIN")
            langchain_chat_span(tracer, question="Cancel my subscription", finish="stop", message_kwargs={
                "additional_kwargs": {"refusal": "I'm sorry, I cannot assist with that request."}})
    [candidate] = candidates_of(c, "refusal_overreach")
    assert candidate["observed"]["final_answer"] == "I'm sorry, I cannot assist with that request."


def openllmetry_langchain_agent(tracer: Tracer, *, question: str, arguments: dict[str, Any],
                                tool_error: str | None = None) -> None:
    """One agent turn as opentelemetry-instrumentation-langchain 0.62.4 (OpenLLMetry) records it.

    A workflow span, an ``execute_task`` span per chain step (here the prompt template), the chat
    calls, and an ``execute_tool`` span whose ``gen_ai.tool.call.arguments`` is LangChain's whole
    callback envelope (``input_str``, ``tags``, ``metadata``, ``inputs``, ``kwargs``), not the arguments.
    """
    tools = json.dumps([{"name": "lookup_order", "description": "Look up an order by id.",
                         "parameters": LOOKUP_ORDER["function"]["parameters"]}])  # type: ignore[index]
    call = {"type": "tool_call", "id": "call_5", "name": "lookup_order", "arguments": arguments}
    common = {"traceloop.workflow.name": "support_agent", "traceloop.entity.path": "",
              "traceloop.association.properties.session_id": "s-42"}

    def chat(messages: list[dict[str, Any]], output: dict[str, Any], finish: str) -> None:
        with tracer.start_as_current_span("ChatOpenAI.chat") as span:
            span.set_attributes({**common, "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                                 "gen_ai.tool.definitions": tools, "gen_ai.request.model": "gpt-4o-mini",
                                 "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
                                 "gen_ai.input.messages": json.dumps(messages),
                                 "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                                 "gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 10,
                                 "gen_ai.output.messages": json.dumps([{**output, "finish_reason": finish}]),
                                 "gen_ai.response.finish_reasons": [finish]})

    user = {"role": "user", "parts": [{"type": "text", "content": question}]}
    asked = {"role": "assistant", "parts": [call]}
    with tracer.start_as_current_span("support_agent.workflow") as root:
        root.set_attributes({**common, "traceloop.span.kind": "workflow", "traceloop.entity.name": "support_agent",
                             "gen_ai.provider.name": "langchain", "gen_ai.operation.name": "invoke_agent",
                             "gen_ai.agent.name": "support_agent",
                             "traceloop.entity.input": json.dumps({"inputs": question, "tags": [], "kwargs": {}}),
                             "traceloop.entity.output": json.dumps({"outputs": "It shipped.", "kwargs": {"tags": []}})})
        with tracer.start_as_current_span("execute_task ChatPromptTemplate") as task:
            task.set_attributes({**common, "traceloop.span.kind": "task", "traceloop.entity.name": "ChatPromptTemplate",
                                 "gen_ai.provider.name": "langchain", "gen_ai.operation.name": "execute_task",
                                 "gen_ai.task.name": "ChatPromptTemplate", "gen_ai.task.status": "success",
                                 "traceloop.entity.input": json.dumps({"inputs": {"question": question}, "tags": []})})
        chat([user], asked, "tool_call")
        envelope = json.dumps({"input_str": repr(arguments), "tags": [], "metadata": {"session_id": "s-42"},
                               "inputs": arguments, "kwargs": {"color": "green", "name": None, "tool_call_id": "call_5"}})
        with tracer.start_as_current_span("execute_tool lookup_order") as tool:
            tool.set_attributes({**common, "traceloop.span.kind": "tool", "traceloop.entity.name": "lookup_order",
                                 "gen_ai.provider.name": "langchain", "gen_ai.operation.name": "execute_tool",
                                 "gen_ai.tool.name": "lookup_order", "gen_ai.tool.type": "function",
                                 "traceloop.entity.input": envelope, "gen_ai.tool.call.arguments": envelope,
                                 "traceloop.entity.output": json.dumps({"output": "shipped", "kwargs": {}}),
                                 "gen_ai.task.status": "failure" if tool_error else "success"})
            if tool_error:
                tool.record_exception(RuntimeError(tool_error))
                tool.set_status(Status(StatusCode.ERROR, tool_error))
        result = {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_5", "response": "shipped"}]}
        chat([user, asked, result], {"role": "assistant", "parts": [{"type": "text", "content": "It shipped."}]}, "stop")


def test_a_clean_openllmetry_langchain_agent_turn_has_no_detection(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        openllmetry_langchain_agent(tracer, question="Where is ORD-1?", arguments={"order_id": "ORD-1"})
    c.wait_for("SELECT 1 FROM trace_state WHERE judged_seq = received_seq", lambda r: len(r) == 1)
    assert c.query("SELECT failure_mode, message FROM detections") == []
    kinds = c.query("SELECT name, span_kind FROM spans ORDER BY start_time")
    assert [r["span_kind"] for r in kinds] == ["AGENT", "CHAIN", "LLM", "TOOL", "LLM"]


def test_an_openllmetry_session_is_the_spans_session_id(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:  # LangChain run metadata {"session_id": "s-42"}
        openllmetry_langchain_agent(tracer, question="Where is ORD-1?", arguments={"order_id": "ORD-1"})
    rows = c.wait_for("SELECT DISTINCT session_id FROM spans", lambda r: len(r) > 0)
    assert rows == [{"session_id": "s-42"}]


def test_openllmetry_tool_arguments_are_read_from_the_callback_envelope(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        openllmetry_langchain_agent(tracer, question="Where is ORD-7?", arguments={"order_id": "ORD-7"},
                                    tool_error="order service returned 502")
    [candidate] = candidates_of(c, "tool_invocation")
    assert c.query("SELECT failure_mode FROM detections") == [{"failure_mode": "tool_invocation"}]
    [call] = candidate["context"]["tool_calls"]
    assert call["name"] == "lookup_order" and call["arguments"] == {"order_id": "ORD-7"}


def test_the_final_answer_of_an_openllmetry_workflow_is_its_output_not_the_envelope(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        openllmetry_langchain_agent(tracer, question="Where is ORD-8?", arguments={"order_id": "ORD-8"},
                                    tool_error="order service returned 502")
    [candidate] = candidates_of(c, "tool_invocation")
    assert candidate["observed"]["final_answer"] == "It shipped."  # traceloop.entity.output is {outputs, kwargs}


def test_a_genai_embeddings_span_counts_its_input_tokens_as_the_total(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("http", c.http_url) as tracer:
        # opentelemetry-instrumentation-genai-openai 1.3b0, client.embeddings.create(): input tokens only.
        with tracer.start_as_current_span("embeddings text-embedding-3-small") as span:
            span.set_attributes({
                "gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "text-embedding-3-small", "gen_ai.embeddings.dimension.count": 3,
                "gen_ai.response.model": "text-embedding-3-small", "gen_ai.usage.input_tokens": 5})
    rows = c.wait_for("SELECT span_kind, llm_model_name, llm_token_count_prompt, llm_token_count_completion, "
                      "llm_token_count_total FROM spans", lambda r: len(r) == 1)
    assert rows == [{"span_kind": "EMBEDDING", "llm_model_name": "text-embedding-3-small", "llm_token_count_prompt": 5,
                     "llm_token_count_completion": None, "llm_token_count_total": 5}]


def test_a_citation_of_a_retrieved_langchain_document_named_in_its_metadata_is_not_hallucination(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        # openinference-instrumentation-langchain 0.1.80: a BaseRetriever's Documents are recorded with their
        # content and metadata only (Document.id is not recorded); the id the app cites lives in the metadata.
        with tracer.start_as_current_span("rag_chain") as root:
            root.set_attributes({"openinference.span.kind": "CHAIN", "input.value": "How long do refunds take?"})
            with tracer.start_as_current_span("KB") as retriever:
                retriever.set_attributes({
                    "openinference.span.kind": "RETRIEVER", "input.value": "How long do refunds take?",
                    "retrieval.documents.0.document.content": "Refunds are issued within 30 days.",
                    "retrieval.documents.0.document.metadata": json.dumps({"source": "doc-refunds-01", "score": 0.9}),
                })
            with tracer.start_as_current_span("ChatOpenAI") as llm:
                llm.set_attributes({
                    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini-2024-07-18",
                    "llm.input_messages.0.message.role": "user",
                    "llm.input_messages.0.message.content": "How long do refunds take?",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": "Refunds are issued within 30 days [doc-refunds-01].",
                    "llm.finish_reason": "stop",
                })
    c.wait_for("SELECT 1 FROM trace_state WHERE judged_seq = received_seq", lambda r: len(r) == 1)
    assert c.query("SELECT failure_mode, message FROM detections") == []


def test_a_failing_vercel_ai_sdk_tool_call_is_a_tool_invocation_failure(start_collector):
    """The Vercel AI SDK (`ai` 6.0, Node's most used LLM library, `experimental_telemetry` on) names its
    spans by `ai.operationId` and records a tool call as an `ai.toolCall` span with `ai.toolCall.name` /
    `.args`, no `gen_ai.*` key: the tool span, and its failure, were UNKNOWN and unseen. The payload is
    what its OTLP/JSON exporter sent for `generateText` with a mock model calling a tool that throws."""
    c = start_collector(FAST_JUDGE)
    body = (TESTDATA / "vercel_ai_sdk_tool_error.json").read_bytes()
    response = httpx.post(f"{c.http_url}/v1/traces", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    rows = c.query("SELECT name, span_kind, tool_name, input_value, input_mime_type, output_value FROM spans "
                   "ORDER BY start_time")
    by_name = {r["name"]: r for r in rows}
    assert by_name["ai.generateText"]["span_kind"] == "AGENT"
    assert json.loads(by_name["ai.generateText"]["input_value"]) == {"prompt": "Refund ORD-1"}
    assert by_name["ai.generateText"]["output_value"] == "Sorry, the refund failed."
    tool = by_name["ai.toolCall"]
    assert (tool["span_kind"], tool["tool_name"]) == ("TOOL", "refund_payment")
    assert (json.loads(tool["input_value"]), tool["input_mime_type"]) == ({"order": "ORD-1"}, "application/json")
    assert {r["span_kind"] for r in rows if r["name"] == "ai.generateText.doGenerate"} == {"LLM"}
    found = c.wait_for("SELECT d.failure_mode, s.name FROM detections d JOIN spans s USING (span_id)",
                       lambda r: len(r) > 0)
    assert found == [{"failure_mode": "tool_invocation", "name": "ai.toolCall"}]


def anthropic_tool_use_span(tracer: Tracer, *, question: str, arguments: dict[str, Any]) -> None:
    """A ``messages.create`` answered with one tool_use block, as openinference-instrumentation-anthropic 3.1.0
    (anthropic 2.17.0) records it: the block goes both into the message's ``tool_calls`` and, again, into
    its ``contents`` as a ``tool_use`` part carrying the same tool call."""
    schema = {"name": "lookup_order", "description": "Look up an order",
              "input_schema": LOOKUP_ORDER["function"]["parameters"]}  # type: ignore[index]
    out = "llm.output_messages.0.message"
    with tracer.start_as_current_span("messages.create") as span:
        span.set_attributes({
            "openinference.span.kind": "LLM", "llm.provider": "anthropic", "llm.system": "anthropic",
            "llm.request.model_name": "claude-3-5-haiku-latest", "llm.model_name": "claude-3-5-haiku-20241022",
            "llm.invocation_parameters": json.dumps({"max_tokens": 50}),
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "You are a support agent.",
            "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": question,
            "llm.tools.0.tool.json_schema": json.dumps(schema),
            f"{out}.role": "assistant",
            f"{out}.tool_calls.0.tool_call.id": "toolu_1",
            f"{out}.tool_calls.0.tool_call.function.name": "lookup_order",
            f"{out}.tool_calls.0.tool_call.function.arguments": json.dumps(arguments),
            f"{out}.contents.0.message_content.type": "tool_use",
            f"{out}.contents.0.tool_call.id": "toolu_1",
            f"{out}.contents.0.tool_call.function.name": "lookup_order",
            f"{out}.contents.0.tool_call.function.arguments": json.dumps(arguments),
            "llm.finish_reason": "tool_use", "llm.token_count.prompt": 40, "llm.token_count.completion": 12,
            "llm.token_count.total": 52,
        })


def test_an_anthropic_tool_use_recorded_twice_by_openinference_is_one_call(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            anthropic_tool_use_span(tracer, question="Where is order 12?", arguments={"order": 12})
    [candidate] = candidates_of(c, "tool_argument")
    evidence = json.loads(c.query("SELECT evidence FROM detections")[0]["evidence"])
    assert (evidence["tool"], evidence["tool_call_id"]) == ("lookup_order", "toolu_1")  # one call, not a list of two
    assert candidate["expected"] == {"tool_arguments_schema": {"lookup_order": LOOKUP_ORDER["function"]["parameters"]},
                                     "required_tool_sequence": ["lookup_order"]}
    assert [call["name"] for call in candidate["context"]["tool_calls"]] == ["lookup_order"]


def test_parallel_tool_calls_breaking_the_schema_draft_the_tools_schema(start_collector, model_url):
    c = start_collector(FAST_JUDGE)
    with openinference_openai(c.grpc_endpoint):
        ask(model_url, "Where are orders 12 and 13?")
    [candidate] = candidates_of(c, "tool_argument")
    assert candidate["expected"] == {"tool_arguments_schema": {"lookup_order": LOOKUP_ORDER["function"]["parameters"]},
                                     "required_tool_sequence": ["lookup_order"]}


def test_a_claude_refusal_stop_reason_with_tools_declared_is_refusal_overreach(start_collector):
    """Claude declines with ``stop_reason: refusal`` and often no text; openinference-instrumentation-anthropic
    3.1.0 records that as ``llm.finish_reason`` and an output message holding its role alone."""
    c = start_collector(FAST_JUDGE)
    schema = {"name": "lookup_order", "description": "Look up an order",
              "input_schema": LOOKUP_ORDER["function"]["parameters"]}  # type: ignore[index]
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:
            root.set_attributes({"openinference.span.kind": "AGENT", "input.value": "Cancel my subscription"})
            with tracer.start_as_current_span("messages.create") as span:
                span.set_attributes({
                    "openinference.span.kind": "LLM", "llm.provider": "anthropic", "llm.system": "anthropic",
                    "llm.model_name": "claude-sonnet-4-5-20250929",
                    "llm.input_messages.0.message.role": "user",
                    "llm.input_messages.0.message.content": "Cancel my subscription",
                    "llm.tools.0.tool.json_schema": json.dumps(schema),
                    "llm.output_messages.0.message.role": "assistant", "llm.finish_reason": "refusal",
                    "llm.token_count.prompt": 40, "llm.token_count.completion": 0, "llm.token_count.total": 40,
                })
                llm_span_id = format(span.get_span_context().span_id, "016x")
            root.set_attribute("output.value", "")
    [candidate] = candidates_of(c, "refusal_overreach")
    assert candidate["source"]["span_ids"] == [llm_span_id]
    assert candidate["expected"] == {"finish_reason_not": ["refusal"]}


def test_a_clean_langchain_turn_with_a_one_argument_tool_has_no_detection(start_collector):
    """openinference-instrumentation-langchain 0.1.80 (langchain-core 1.8.3) records a tool with one argument by
    that argument's value alone, with no mime type: ``lookup_order(order_id="12")`` has ``input.value`` "12"."""
    c = start_collector(FAST_JUDGE)
    call = {"name": "lookup_order", "args": {"order_id": "12"}, "id": "call_1", "type": "tool_call"}
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:
            root.set_attributes({"openinference.span.kind": "CHAIN", "input.value": "Where is order 12?"})
            langchain_chat_span(tracer, question="Where is order 12?", finish="tool_calls",
                                message_kwargs={"tool_calls": [call]})
            with tracer.start_as_current_span("lookup_order") as span:
                span.set_attributes({"openinference.span.kind": "TOOL", "tool.name": "lookup_order",
                                     "tool.description": "Look up an order", "input.value": "12",
                                     "output.value": '{"order_id": "12", "status": "shipped"}',
                                     "output.mime_type": "application/json"})
            root.set_attribute("output.value", "Order 12 ships tomorrow.")
    c.wait_for("SELECT 1 FROM trace_state WHERE judged_seq = received_seq", lambda r: len(r) == 1)
    assert c.query("SELECT failure_mode, detector FROM detections") == []


def test_a_streamed_langchain_call_names_the_model_that_answered(start_collector):
    """A streamed ChatOpenAI run as openinference-instrumentation-langchain 0.1.80 records it: ``llm_output`` is
    null, so no ``llm.model_name``; the answering model is only in the LLMResult's generation."""
    c = start_collector(FAST_JUDGE)
    result = {"generations": [[{"text": "Order 12 ships tomorrow.",
                                "generation_info": {"finish_reason": "stop", "model_name": "gpt-4o-mini-2024-07-18"},
                                "type": "ChatGeneration"}]], "llm_output": None, "run": None, "type": "LLMResult"}
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("ChatOpenAI") as span:
            span.set_attributes({
                "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.system": "openai",
                "llm.invocation_parameters": json.dumps({"model": "gpt-4o-mini", "stream": True}),
                "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "Where is order 12?",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": "Order 12 ships tomorrow.",
                "output.value": json.dumps(result), "output.mime_type": "application/json",
            })
    rows = c.wait_for("SELECT llm_model_name FROM spans", lambda r: len(r) == 1)
    assert rows == [{"llm_model_name": "gpt-4o-mini-2024-07-18"}]


def test_a_user_turn_the_genai_instrumentor_left_empty_is_read_from_the_agents_input(start_collector):
    """opentelemetry-instrumentation-openai-v2 2.4b0 records a user message whose content is a list of parts
    (``[{"type": "text", "text": ...}]``) as ``"parts": []``; the app's AGENT span still says what was asked."""
    c = start_collector(FAST_JUDGE)
    questions = ("What does the warranty cover?", "Can I return the kettle?")
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        for question in questions:
            with tracer.start_as_current_span("support_agent") as root:
                root.set_attributes({"openinference.span.kind": "AGENT", "input.value": question})
                with tracer.start_as_current_span("chat gpt-4o-mini") as span:
                    span.set_attributes({
                        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.provider.name": "openai", "gen_ai.response.finish_reasons": ["length"],
                        "gen_ai.input.messages": json.dumps([
                            {"role": "system", "parts": [{"content": "You are support.", "type": "text"}]},
                            {"role": "user", "parts": [{"content": "Hello", "type": "text"}]},
                            {"role": "assistant", "parts": [{"content": "Hi! How can I help?", "type": "text"}]},
                            {"role": "user", "parts": []}]),
                        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                            {"content": "It covers the motor for", "type": "text"}], "finish_reason": "length"}]),
                    })
    rows = c.wait_for("SELECT input FROM candidates WHERE failure_mode = 'truncation'", lambda r: len(r) == 2)
    inputs = sorted((json.loads(r["input"]) for r in rows), key=lambda i: i["user_message"])
    assert [i["user_message"] for i in inputs] == sorted(questions)
    assert inputs[0]["conversation_history"] == [{"role": "user", "content": "Hello"},
                                                 {"role": "assistant", "content": "Hi! How can I help?"}]


def test_a_rate_limit_recorded_by_both_the_anthropic_sdk_and_openinference_is_one_llm_error(start_collector):
    """anthropic 2.17.0 records each call itself (scope ``com.anthropic.sdk.python``: GenAI keys, ``error.type``, a
    bare ERROR status) inside the span openinference-instrumentation-anthropic 3.1.0 wraps around it (the
    provider's message and the exception)."""
    c = start_collector(FAST_JUDGE)
    message = "429 Number of request tokens has exceeded your per-minute rate limit (type: rate_limit_error)"
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("messages.create", record_exception=False,
                                          set_status_on_exception=False) as outer:
            outer.set_attributes({
                "openinference.span.kind": "LLM", "llm.provider": "anthropic", "llm.system": "anthropic",
                "llm.model_name": "claude-3-5-haiku-latest", "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "Where is order 12?"})
            with tracer.start_as_current_span("anthropic.messages.create") as inner:
                inner.set_attributes({
                    "gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "claude-3-5-haiku-latest", "http.response.status_code": 429,
                    "error.type": "rate_limit_error"})
                inner.set_status(Status(StatusCode.ERROR))
            outer.record_exception(RuntimeError(message))
            outer.set_status(Status(StatusCode.ERROR, message))
    c.wait_for("SELECT 1 FROM trace_state WHERE judged_seq = received_seq", lambda r: len(r) == 1)
    rows = c.query("SELECT s.name, d.failure_mode FROM detections d JOIN spans s USING (trace_id, span_id)")
    assert rows == [{"name": "messages.create", "failure_mode": "llm_error"}]


WEATHER_TOOL_DEFINITIONS = json.dumps([{
    "name": "get_weather", "description": "Weather for a city", "type": "function",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}])


def util_genai_agent_span(tracer: Tracer, question: str) -> Any:
    """The invoke_agent span opentelemetry-util-genai 1.1b0's ``handler.invoke_local_agent()`` makes (with
    OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=
    SPAN_ONLY), as an app wraps its own agent loop around openai-v2's spans."""
    span = tracer.start_span("invoke_agent weather-agent", record_exception=False, set_status_on_exception=False)
    span.set_attributes({
        "gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.agent.name": "weather-agent", "gen_ai.tool.definitions": WEATHER_TOOL_DEFINITIONS,
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"content": question, "type": "text"}]}])})
    return span


@pytest.mark.parametrize(("child_name", "child_attributes", "message"), [
    # openai-v2 2.4b0's embeddings call answered 429
    ("embeddings text-embedding-3-small", {
        "gen_ai.operation.name": "embeddings", "gen_ai.request.model": "text-embedding-3-small",
        "gen_ai.provider.name": "openai", "error.type": "RateLimitError"}, "Error code: 429 - Rate limit reached"),
    # util-genai 1.3b0's handler.retrieval() failed: no gen_ai.retrieval.documents, so what came back is unknown
    ("retrieval kb", {
        "gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": "kb", "gen_ai.provider.name": "chroma",
        "gen_ai.retrieval.query.text": "Find documents like: my kettle leaks", "error.type": "ConnectionError"},
     "connection refused: kb:8000"),
])
def test_an_agent_failing_with_a_call_no_rule_reports_is_one_llm_error(start_collector, child_name,
                                                                         child_attributes, message):
    """util-genai's invoke_agent fails with the same error as its failed embeddings or retrieval span: no rule
    reports those spans' own failure, so the agent's is the finding (there was none at all)."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        agent = util_genai_agent_span(tracer, "Find documents like: my kettle leaks")
        with trace.use_span(agent, end_on_exit=False):
            with tracer.start_as_current_span(child_name, record_exception=False,
                                              set_status_on_exception=False) as child:
                child.set_attributes(child_attributes)
                child.set_status(Status(StatusCode.ERROR, message))
        agent.set_attribute("error.type", str(child_attributes["error.type"]))
        agent.set_status(Status(StatusCode.ERROR, message))
        agent.end()
    [candidate] = candidates_of(c, "llm_error")
    assert candidate["input"]["user_message"] == "Find documents like: my kettle leaks"
    rows = c.query("SELECT s.name, d.failure_mode FROM detections d JOIN spans s USING (trace_id, span_id)")
    assert rows == [{"name": "invoke_agent weather-agent", "failure_mode": "llm_error"}]


def test_an_agent_answer_cut_where_its_model_call_was_is_one_truncation(start_collector):
    """util-genai's invoke_agent records the answer it was given, finish reason and all: openai-v2's chat span
    and the agent both say ``length`` of one cut answer, reported once, on the model call (it was two)."""
    c = start_collector(FAST_JUDGE)
    question = "Describe the weather in Paris"
    answer = [{"role": "assistant", "parts": [{"content": "The weather in Paris is", "type": "text"}],
               "finish_reason": "length"}]
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        agent = util_genai_agent_span(tracer, question)
        with trace.use_span(agent, end_on_exit=False):
            with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                chat.set_attributes({
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.request.max_tokens": 5, "gen_ai.provider.name": "openai",
                    "gen_ai.response.finish_reasons": ["length"], "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                    "gen_ai.response.id": "chatcmpl-17", "gen_ai.usage.input_tokens": 42,
                    "gen_ai.usage.output_tokens": 9,
                    "gen_ai.input.messages": json.dumps([
                        {"role": "system", "parts": [{"content": "You are a weather bot.", "type": "text"}]},
                        {"role": "user", "parts": [{"content": question, "type": "text"}]}]),
                    "gen_ai.output.messages": json.dumps(answer)})
        agent.set_attribute("gen_ai.output.messages", json.dumps(answer))
        agent.end()
    [candidate] = candidates_of(c, "truncation")
    assert candidate["input"]["user_message"] == question
    rows = c.query("SELECT s.name, d.failure_mode FROM detections d JOIN spans s USING (trace_id, span_id)")
    assert rows == [{"name": "chat gpt-4o-mini", "failure_mode": "truncation"}]


def test_openai_agents_v2_max_turns_is_a_step_limit_not_an_llm_error(start_collector):
    """opentelemetry-instrumentation-openai-agents-v2 0.1.0 (openai-agents 0.25, Runner.run(max_turns=2)): the
    SDK's span error "Max turns exceeded" with its data becomes the agent span's status message."""
    c = start_collector(FAST_JUDGE)
    agent_keys = {"gen_ai.provider.name": "openai", "gen_ai.system": "openai", "gen_ai.agent.id": "agent",
                  "gen_ai.agent.name": "OpenAI Agent", "gen_ai.agent.description": "OpenAI Agents instrumentation"}
    question = [{"role": "system", "parts": [{"type": "text", "content": "You are a weather bot."}]},
                {"role": "user", "parts": [{"type": "text", "content": "What's the weather in Paris?"}]}]
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("turn", attributes={
                "gen_ai.provider.name": "openai", "gen_ai.system": "openai", "gen_ai.operation.name": "invoke_agent"}):
            with tracer.start_as_current_span("invoke_agent weather-agent", record_exception=False,
                                              set_status_on_exception=False) as agent:
                agent.set_attributes({**agent_keys, "gen_ai.operation.name": "invoke_agent",
                                      "gen_ai.agent.name": "weather-agent", "gen_ai.request.model": "gpt-4o-mini",
                                      "gen_ai.input.messages": json.dumps(question)})
                for turn in range(2):
                    with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                        chat.set_attributes({**agent_keys, "gen_ai.operation.name": "chat",
                                             "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 42,
                                             "gen_ai.usage.output_tokens": 9,
                                             "gen_ai.input.messages": json.dumps(question)})
                    with tracer.start_as_current_span("execute_tool get_weather") as tool:
                        tool.set_attributes({**agent_keys, "gen_ai.operation.name": "execute_tool",
                                             "gen_ai.tool.name": "get_weather", "gen_ai.tool.type": "function",
                                             "gen_ai.tool.call.arguments": json.dumps({"city": f"Paris {turn}"}),
                                             "gen_ai.tool.call.result": json.dumps({"temp_c": 21})})
                agent.set_status(Status(StatusCode.ERROR, "Max turns exceeded: {'max_turns': 2}"))
    [candidate] = candidates_of(c, "loop")
    assert candidate["input"]["user_message"] == "What's the weather in Paris?"
    rows = c.query("SELECT s.name, d.detector, d.failure_mode FROM detections d JOIN spans s USING (trace_id, span_id)")
    assert rows == [{"name": "invoke_agent weather-agent", "detector": "step_limit", "failure_mode": "loop"}]


def test_openai_agents_v2_output_type_that_does_not_parse_is_a_format_violation(start_collector):
    """opentelemetry-instrumentation-openai-agents-v2 0.1.0 (openai-agents 0.25, an Agent with a pydantic
    ``output_type`` answered in prose): the SDK's span error "Invalid JSON provided" lands on the agent's turn span
    (``gen_ai.operation.name`` "unknown"), the run raises ModelBehaviorError. It was an llm_error "(other)"."""
    c = start_collector(FAST_JUDGE)
    agent_keys = {"gen_ai.provider.name": "openai", "gen_ai.system": "openai", "gen_ai.agent.id": "agent",
                  "gen_ai.agent.name": "OpenAI Agent", "gen_ai.agent.description": "OpenAI Agents instrumentation"}
    question = [{"role": "system", "parts": [{"type": "text", "content": "You are a weather bot."}]},
                {"role": "user", "parts": [{"type": "text", "content": "What's the weather in Paris?"}]}]
    answer = [{"role": "assistant", "parts": [{"type": "text", "content": "Sure! city=Paris, temp=21"}]}]
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("turn", attributes={
                "gen_ai.provider.name": "openai", "gen_ai.system": "openai", "gen_ai.operation.name": "invoke_agent"}):
            with tracer.start_as_current_span("invoke_agent weather-agent") as agent:
                agent.set_attributes({**agent_keys, "gen_ai.operation.name": "invoke_agent",
                                      "gen_ai.agent.name": "weather-agent", "gen_ai.request.model": "gpt-4o-mini",
                                      "gen_ai.input.messages": json.dumps(question),
                                      "gen_ai.output.messages": json.dumps(answer), "gen_ai.output.type": "text"})
                with tracer.start_as_current_span("unknown", record_exception=False,
                                                  set_status_on_exception=False) as turn:
                    turn.set_attributes({**agent_keys, "gen_ai.operation.name": "unknown"})
                    with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                        chat.set_attributes({**agent_keys, "gen_ai.operation.name": "chat",
                                             "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 42,
                                             "gen_ai.usage.output_tokens": 9, "gen_ai.output.type": "text",
                                             "gen_ai.input.messages": json.dumps(question),
                                             "gen_ai.output.messages": json.dumps(answer)})
                    turn.set_status(Status(StatusCode.ERROR, "Invalid JSON provided: {}"))
    [candidate] = candidates_of(c, "format_violation")
    assert candidate["input"]["user_message"] == "What's the weather in Paris?"
    rows = c.query("SELECT s.name, d.detector, d.failure_mode FROM detections d JOIN spans s USING (trace_id, span_id)")
    assert rows == [{"name": "unknown", "detector": "json_output", "failure_mode": "format_violation"}]


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "RECITATION"])
def test_a_gemini_answer_blocked_by_its_safety_filter_is_an_llm_error(start_collector, reason):
    """opentelemetry-instrumentation-google-genai 1.3b0 (google-genai 1.x, OTEL_SEMCONV_STABILITY_OPT_IN=
    gen_ai_latest_experimental, content SPAN_ONLY): a candidate with no parts and finishReason SAFETY comes back
    without an error; the reason is lowercased in gen_ai.response.finish_reasons and kept in the output messages.
    It passed with no finding, where OpenAI's content_filter is an llm_error."""
    c = start_collector(FAST_JUDGE)
    question = "How do I make my kettle boil faster?"
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("generate_content gemini-2.0-flash") as span:
            span.set_attributes({
                "gen_ai.operation.name": "generate_content", "gen_ai.provider.name": "gemini",
                "gen_ai.request.model": "gemini-2.0-flash", "gen_ai.response.finish_reasons": [reason.lower()],
                "gen_ai.response.model": "gemini-2.0-flash-001", "gen_ai.usage.input_tokens": 42,
                "server.address": "generativelanguage.googleapis.com",
                "gen_ai.input.messages": json.dumps([
                    {"role": "user", "parts": [{"content": question, "type": "text"}], "name": None}]),
                "gen_ai.output.messages": json.dumps([
                    {"role": "assistant", "parts": [], "finish_reason": reason, "name": None}])})
    [candidate] = candidates_of(c, "llm_error")
    assert candidate["input"]["user_message"] == question
    rows = c.query("SELECT d.detector, d.evidence->>'$.classification' AS classification FROM detections d")
    assert rows == [{"detector": "llm_call_error", "classification": "content_filter"}]
