"""Agent frameworks' traces, rebuilt key for key with the plain OTel SDK and sent to a real `tracesieve serve`.

CI does not install the frameworks: each helper below copies what the named framework and instrumentation
exported (captured against a local stand-in for the OpenAI API) and the comment names the versions. A clean run
must give no detection; each failure the framework can produce must give its one failure mode, on the span
that shows it, with a candidate whose input is the user's question.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

from conftest import FAST_JUDGE
from sdk_helpers import sdk_tracer

GET_ORDER_SCHEMA = {"properties": {"order_id": {"title": "Order Id", "type": "string"}}, "required": ["order_id"],
                    "title": "get_order_args", "type": "object", "additionalProperties": False}
SYSTEM = "You are a support agent. Use tools."


def _failed(span: Any, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))


# ------------------------------------------------------------------ OpenAI Agents (openinference)
# openai-agents 0.24.0 with openinference-instrumentation-openai-agents 2.6.0, the agent's model an
# OpenAIChatCompletionsModel: spans "Agent workflow" (AGENT) > "Agent workflow" (CHAIN) > the agent (AGENT)
# > "turn" (CHAIN) per model call > "generation" (LLM) and the function tool's span (TOOL).


@contextmanager
def openai_agents_run(tracer: Tracer, *, agent_error: str | None = None) -> Iterator[None]:
    with tracer.start_as_current_span("Agent workflow") as workflow:
        workflow.set_attribute("openinference.span.kind", "AGENT")
        with tracer.start_as_current_span("Agent workflow") as chain:
            chain.set_attribute("openinference.span.kind", "CHAIN")
            with tracer.start_as_current_span("Support") as agent:
                agent.set_attributes({"graph.node.id": "Support", "agent.name": "Support",
                                      "openinference.span.kind": "AGENT"})
                yield
                if agent_error:
                    _failed(agent, agent_error)


def openai_agents_generation(tracer: Tracer, question: str, *, tool_call: dict[str, Any] | None = None,
                             tool_result: str | None = None, answer: str | None = None,
                             error: str | None = None) -> None:
    """One "turn" with its "generation" span (a Chat Completions call: no ``llm.tools``, no finish reason)."""
    messages: list[dict[str, Any]] = [{"content": SYSTEM, "role": "system"}, {"role": "user", "content": question}]
    attributes: dict[str, Any] = {
        "llm.system": "openai", "llm.model_name": "gpt-4o-mini",
        "llm.invocation_parameters": json.dumps({"max_tokens": 60, "base_url": "http://127.0.0.1:41649/v1/"}),
        "input.mime_type": "application/json",
        "llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": SYSTEM,
        "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": question,
    }
    call = ({"id": "call_0_get_order", "type": "function",
             "function": {"name": "get_order", "arguments": json.dumps(tool_call)}} if tool_call is not None else None)
    if tool_result is not None and call is not None:
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": tool_result}]
        attributes.update({
            "llm.input_messages.2.message.role": "assistant",
            "llm.input_messages.2.message.tool_calls.0.tool_call.id": call["id"],
            "llm.input_messages.2.message.tool_calls.0.tool_call.function.name": "get_order",
            "llm.input_messages.2.message.tool_calls.0.tool_call.function.arguments": json.dumps(tool_call),
            "llm.input_messages.3.message.role": "tool", "llm.input_messages.3.message.content": tool_result,
            "llm.input_messages.3.message.tool_call_id": call["id"],
        })
    attributes["input.value"] = json.dumps(messages)
    if error is None:
        out = "llm.output_messages.0.message"
        attributes.update({"output.mime_type": "application/json", f"{out}.role": "assistant",
                           "llm.token_count.prompt": 40, "llm.token_count.completion": 12})
        if tool_result is None and call is not None:
            attributes["output.value"] = json.dumps([{"content": None, "refusal": None, "role": "assistant",
                                                      "tool_calls": [call]}])
            attributes.update({f"{out}.tool_calls.0.tool_call.id": call["id"],
                               f"{out}.tool_calls.0.tool_call.function.name": "get_order",
                               f"{out}.tool_calls.0.tool_call.function.arguments": json.dumps(tool_call)})
        else:
            attributes["output.value"] = json.dumps([{"content": answer, "refusal": None, "role": "assistant",
                                                      "tool_calls": None}])
            attributes[f"{out}.content"] = answer
    attributes["openinference.span.kind"] = "LLM"
    with tracer.start_as_current_span("turn") as turn:
        turn.set_attribute("openinference.span.kind", "CHAIN")
        with tracer.start_as_current_span("generation") as generation:
            generation.set_attributes(attributes)
            if error is not None:
                _failed(generation, error)


def openai_agents_function_tool(tracer: Tracer, arguments: dict[str, Any], *, result: str | None = None) -> None:
    """The function tool's span; ``result=None`` is a call the SDK failed (bad arguments, or the tool raised)."""
    with tracer.start_as_current_span("get_order") as tool:
        tool.set_attributes({
            "tool.name": "get_order", "input.value": json.dumps(arguments), "input.mime_type": "application/json",
            "output.value": result if result is not None else "An error occurred while running the tool. Please try again.",
            "tool.description": "Look up an order's shipping status by its id.",
            "tool.parameters": json.dumps(GET_ORDER_SCHEMA), "openinference.span.kind": "TOOL",
        })
        if result is not None:
            tool.set_attribute("output.mime_type", "application/json")
        else:
            _failed(tool, "Error running tool (non-fatal): {'tool_name': 'get_order', "
                          "'error': 'Tool execution failed. Error details are redacted.'}")


def openai_agents_tool_turns(tracer: Tracer, question: str, arguments: dict[str, Any], *, ok: bool) -> None:
    with openai_agents_run(tracer):
        openai_agents_generation(tracer, question, tool_call=arguments)
        result = json.dumps({"order_id": "42", "status": "shipped"}) if ok else None
        openai_agents_function_tool(tracer, arguments, result=result)
        openai_agents_generation(tracer, question, tool_call=arguments,
                                 tool_result=result or "An error occurred while running the tool. Please try again.",
                                 answer="Order 42 shipped on Monday." if ok else "Order 7 status is unknown.")


def detections_by_span(c: Any) -> list[tuple[str, str]]:
    rows = c.query("SELECT d.failure_mode, s.name FROM detections d JOIN spans s USING (trace_id, span_id) "
                   "ORDER BY d.failure_mode")
    return [(r["failure_mode"], r["name"]) for r in rows]


def test_a_clean_openai_agents_tool_run_has_no_detection(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="agents-bot") as tracer:
        openai_agents_tool_turns(tracer, "What is the status of order 42?", {"order_id": "42"}, ok=True)
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 8)
    assert c.stop() == 0  # judges every pending trace before it exits
    assert c.query("SELECT * FROM detections") == []
    assert c.query("SELECT * FROM candidates") == []


def test_openai_agents_arguments_breaking_the_function_tools_schema_are_a_tool_argument_failure(start_collector):
    """Over Chat Completions the model call records no ``llm.tools``: the tool's schema is only in its own span's
    ``tool.parameters``. A call the SDK refused for breaking it was a tool_invocation failure alone."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="agents-bot") as tracer:
        openai_agents_tool_turns(tracer, "Where is order 7?", {"order": 7}, ok=False)
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'tool_argument'", lambda r: len(r) == 1)
    # on the model call that asked for it, as when the call declares its tools (the Responses API)
    assert ("tool_argument", "generation") in detections_by_span(c)
    [candidate] = json.loads(c.cli("candidates", "--mode", "tool_argument", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": "Where is order 7?", "conversation_history": []}
    assert candidate["expected"]["tool_arguments_schema"] == {"get_order": GET_ORDER_SCHEMA}
    assert candidate["expected"]["required_tool_sequence"] == ["get_order"]


def test_an_openai_agents_rate_limit_is_one_llm_error_on_the_model_call(start_collector):
    """The agent span fails with the model call's error under another label ("Error in agent run: ..." around
    what the call said after "Error getting response: "): one failure, reported once, where it happened."""
    c = start_collector(FAST_JUDGE)
    error = "{'error': 'Error code: 429 - Rate limit reached for gpt-4o-mini'}"
    with sdk_tracer("grpc", c.grpc_endpoint, service="agents-bot") as tracer:
        with openai_agents_run(tracer, agent_error=f"Error in agent run: {error}"):
            openai_agents_generation(tracer, "Where is my parcel?", error=f"Error getting response: {error}")
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'llm_error'", lambda r: len(r) == 1)
    assert detections_by_span(c) == [("llm_error", "generation")]
    evidence = json.loads(c.query("SELECT evidence FROM detections")[0]["evidence"])
    assert evidence["classification"] == "rate_limit"
    [candidate] = json.loads(c.cli("candidates", "--mode", "llm_error", "--format", "json").stdout)
    assert candidate["input"]["user_message"] == "Where is my parcel?"


# openai-agents 0.25.0 with openinference-instrumentation-openai-agents 2.6.0, an `Agent` with an
# `@input_guardrail` (tripped, or raising) and an `@output_guardrail`: the guardrail's span is a GUARDRAIL closed
# OK either way; the SDK's span error "Guardrail tripwire triggered" with {'guardrail': name} lands on the turn
# for an input guardrail (InputGuardrailTripwireTriggered, no model call made) and on the agent for an output one.


def openai_agents_guardrail(tracer: Tracer, name: str) -> None:
    with tracer.start_as_current_span(name) as guardrail:
        guardrail.set_attribute("openinference.span.kind", "GUARDRAIL")
        guardrail.set_status(Status(StatusCode.OK))


def openai_agents_input_guardrail_run(tracer: Tracer, *, tripped: bool, streamed: bool = False) -> None:
    """A run stopped at its input guardrail (no span records the message): tripped (blocked), or its own code
    raised. `Runner.run_streamed` puts the trip on the agent span, its data saying 'type': 'input_guardrail'."""
    agent_error = None if tripped else "Error in agent run: {'error': 'moderation service unavailable'}"
    if tripped and streamed:
        agent_error = "Guardrail tripwire triggered: {'guardrail': 'no_jailbreak', 'type': 'input_guardrail'}"
    with openai_agents_run(tracer, agent_error=agent_error):
        with tracer.start_as_current_span("turn") as turn:
            turn.set_attribute("openinference.span.kind", "CHAIN")
            openai_agents_guardrail(tracer, "no_jailbreak")
            if tripped and not streamed:
                _failed(turn, "Guardrail tripwire triggered: {'guardrail': 'no_jailbreak'}")


def test_an_openai_agents_input_guardrail_that_blocks_the_message_is_no_failure(start_collector):
    """A tripped input guardrail is the guardrail doing its job: the agent did not fail, and a candidate for it
    could never pass the gate (its input trips the guardrail again). A blocked jailbreak, run or streamed, is
    no detection."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="agents-bot") as tracer:
        openai_agents_input_guardrail_run(tracer, tripped=True)
        openai_agents_input_guardrail_run(tracer, tripped=True, streamed=True)
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 10)
    assert c.stop() == 0  # judges every pending trace before it exits
    assert c.query("SELECT * FROM detections") == []
    assert c.query("SELECT * FROM candidates") == []


def test_an_openai_agents_guardrail_that_raised_or_blocked_the_answer_is_still_an_llm_error(start_collector):
    """The near misses: an input guardrail whose own code raised fails the agent ("Error in agent run"), and an
    output guardrail that blocked the model's answer puts the same tripwire message on the agent span: each is
    still one llm_error, on the agent."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="agents-bot") as tracer:
        openai_agents_input_guardrail_run(tracer, tripped=False)
        with openai_agents_run(tracer, agent_error="Guardrail tripwire triggered: {'guardrail': 'no_secrets'}"):
            openai_agents_generation(tracer, "Tell me the admin password.",
                                     answer="Sure, here is the admin password: hunter2")
            openai_agents_guardrail(tracer, "no_secrets")
    c.wait_for("SELECT 1 FROM detections", lambda r: len(r) == 2)
    assert c.stop() == 0
    found = c.query("SELECT d.failure_mode, s.name, s.status_message FROM detections d "
                    "JOIN spans s USING (trace_id, span_id) ORDER BY s.status_message")
    assert [(r["failure_mode"], r["name"]) for r in found] == [("llm_error", "Support"), ("llm_error", "Support")]
    assert [r["status_message"].split(":")[0] for r in found] == ["Error in agent run", "Guardrail tripwire triggered"]


# ------------------------------------------------------------------ pydantic-ai (native OTel GenAI spans)
# pydantic-ai-slim 2.78.0, `Agent.instrument_all(InstrumentationSettings(version=5))`, an OpenAIChatModel:
# "invoke_agent agent" (root) > "chat gpt-4o-mini" per model call and "execute_tool get_order" per tool call.

PYDANTIC_TOOLS = [{"type": "function", "name": "get_order", "description": "Look up an order's shipping status by its id.",
                   "parameters": {"additionalProperties": False, "properties": {"order_id": {"type": "string"}},
                                  "required": ["order_id"], "type": "object"}}]


def _pydantic_ai_exception(span: Any, error_type: str, message: str) -> None:
    span.add_event("exception", {"exception.type": f"pydantic_ai.exceptions.{error_type}",
                                 "exception.message": message, "exception.stacktrace": "Traceback (most recent call last): ...",
                                 "exception.escaped": "False"})
    _failed(span, f"{error_type}: {message}")


def _pydantic_ai_agent_attributes(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model_name": "gpt-4o-mini", "agent_name": "agent", "gen_ai.agent.name": "agent",
            "gen_ai.conversation.id": "01a250db-d1e2-7066-a3fa-ec6a9f8e03d0", "gen_ai.operation.name": "invoke_agent",
            "logfire.msg": "agent run", "pydantic_ai.all_messages": json.dumps(messages),
            "gen_ai.system_instructions": json.dumps([{"type": "text", "content": SYSTEM}])}


def _pydantic_ai_chat_attributes() -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", "gen_ai.agent.name": "agent", "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai", "server.address": "127.0.0.1", "server.port": 39031,
            "gen_ai.request.model": "gpt-4o-mini", "gen_ai.tool.definitions": json.dumps(PYDANTIC_TOOLS),
            "gen_ai.request.max_tokens": 60}


def test_a_clean_pydantic_ai_tool_run_has_no_detection(start_collector):
    c = start_collector(FAST_JUDGE)
    question = [{"role": "user", "parts": [{"type": "text", "content": "What is the status of order 42?"}]}]
    call = [{"role": "assistant", "parts": [{"type": "tool_call", "id": "call_0", "name": "get_order",
                                            "arguments": '{"order_id": "42"}'}], "finish_reason": "tool_call"}]
    result = [{"role": "user", "parts": [{"type": "tool_call_response", "id": "call_0", "name": "get_order",
                                         "result": '{"order_id": "42", "status": "shipped"}'}]}]
    answer = [{"role": "assistant", "parts": [{"type": "text", "content": "Order 42 shipped on Monday."}],
               "finish_reason": "stop"}]
    usage = {"gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 12,
             "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.response.id": "chatcmpl-1"}
    with sdk_tracer("grpc", c.grpc_endpoint, service="pyd-bot") as tracer:
        with tracer.start_as_current_span("invoke_agent agent") as agent:
            agent.set_attributes(_pydantic_ai_agent_attributes(question + call + result + answer))
            agent.set_attribute("final_result", "Order 42 shipped on Monday.")
            with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                chat.set_attributes({**_pydantic_ai_chat_attributes(), **usage,
                                     "gen_ai.input.messages": json.dumps(question),
                                     "gen_ai.output.messages": json.dumps(call),
                                     "gen_ai.response.finish_reasons": ["tool_call"]})
            with tracer.start_as_current_span("execute_tool get_order") as tool:
                tool.set_attributes({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_order",
                                     "gen_ai.tool.call.id": "call_0", "gen_ai.tool.call.arguments": '{"order_id":"42"}',
                                     "gen_ai.tool.call.result": '{"order_id": "42", "status": "shipped"}'})
            with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                chat.set_attributes({**_pydantic_ai_chat_attributes(), **usage,
                                     "gen_ai.input.messages": json.dumps(question + call + result),
                                     "gen_ai.output.messages": json.dumps(answer),
                                     "gen_ai.response.finish_reasons": ["stop"]})
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 4)
    assert c.stop() == 0  # judges every pending trace before it exits
    assert c.query("SELECT * FROM detections") == []
    assert c.query("SELECT * FROM candidates") == []


def test_a_pydantic_ai_run_whose_model_call_failed_files_the_users_question(start_collector):
    """pydantic-ai records a model call's messages only when it answers: after a rate limit the question is
    only in the agent span's ``pydantic_ai.all_messages``. Its candidate had the input ""."""
    c = start_collector(FAST_JUDGE)
    message = ("status_code: 429, model_name: gpt-4o-mini, body: {'message': 'Rate limit reached for gpt-4o-mini', "
               "'type': 'requests', 'code': 'rate_limit_exceeded'}")
    question = [{"role": "user", "parts": [{"type": "text", "content": "Where is my parcel?"}]}]
    with sdk_tracer("grpc", c.grpc_endpoint, service="pyd-bot") as tracer:
        with tracer.start_as_current_span("invoke_agent agent") as agent:
            agent.set_attributes(_pydantic_ai_agent_attributes(question))
            with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                chat.set_attributes(_pydantic_ai_chat_attributes())
                _pydantic_ai_exception(chat, "ModelRateLimitError", message)
            _pydantic_ai_exception(agent, "ModelRateLimitError", message)
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'llm_error'", lambda r: len(r) == 1)
    assert detections_by_span(c) == [("llm_error", "chat gpt-4o-mini")]
    [candidate] = json.loads(c.cli("candidates", "--mode", "llm_error", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": "Where is my parcel?", "conversation_history": []}


# ------------------------------------------------------------------ llama-index (openinference)
# llama-index-core 0.14.25, llama-index-llms-openai 0.8.3, openinference-instrumentation-llama-index 4.6.1:
# a FunctionAgent with one FunctionTool, and a VectorStoreIndex query engine. Each span is rebuilt with the
# keys the detectors and the candidate read; llama-index's Python reprs in other input values are cut short.

LLAMA_TOOL = {"type": "function", "function": {
    "name": "get_order", "description": "get_order(order_id: str) -> str\nLook up an order's shipping status by its id.",
    "parameters": {"properties": {"order_id": {"title": "Order Id", "type": "string"}}, "required": ["order_id"],
                   "type": "object", "additionalProperties": False}}}
LLAMA_LLM = {"llm.model_name": "gpt-4o-mini", "llm.provider": "openai", "llm.system": "openai",
             "llm.invocation_parameters": json.dumps({"context_window": 128000, "num_output": 60, "is_chat_model": True,
                                                      "model_name": "gpt-4o-mini"})}


def llama_index_agent_step(tracer: Tracer, question: str, *, arguments: dict[str, Any] | None = None,
                           result: str | None = None, answer: str | None = None) -> None:
    """One ``run_agent_step``: the streamed chat call, asking for get_order(arguments) or answering."""
    attributes: dict[str, Any] = {
        **LLAMA_LLM, "llm.tools.0.tool.json_schema": json.dumps(LLAMA_TOOL),
        "input.value": json.dumps({"messages": ["ChatMessage(role=<MessageRole.SYSTEM: 'system'>, ...)"]}),
        "input.mime_type": "application/json",
        "llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": SYSTEM,
        "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": question,
        "llm.token_count.prompt": 40, "llm.token_count.completion": 12, "llm.token_count.total": 52,
        "llm.output_messages.0.message.role": "assistant", "openinference.span.kind": "LLM",
    }
    if result is not None:
        call = "llm.input_messages.2.message.tool_calls.0.tool_call"
        attributes.update({"llm.input_messages.2.message.role": "assistant", f"{call}.id": "call_0",
                           f"{call}.function.name": "get_order", f"{call}.function.arguments": '{"order_id": "42"}',
                           "llm.input_messages.3.message.role": "tool", "llm.input_messages.3.message.content": result,
                           "llm.input_messages.3.message.tool_call_id": "call_0"})
    if answer is None:
        call = "llm.output_messages.0.message.tool_calls.0.tool_call"
        attributes.update({"llm.finish_reason": "tool_calls", "output.value": "assistant: ",
                           "llm.output_messages.0.message.contents.0.message_content.type": "text",
                           "llm.output_messages.0.message.contents.0.message_content.text": "",
                           f"{call}.id": "call_0", f"{call}.function.name": "get_order",
                           f"{call}.function.arguments": json.dumps(arguments)})
    else:
        attributes.update({"llm.finish_reason": "stop", "output.value": f"assistant: {answer}",
                           "llm.output_messages.0.message.content": answer})
    with tracer.start_as_current_span("BaseWorkflowAgent.run_agent_step") as step:
        step.set_attributes({"input.value": json.dumps({"ctx": "<workflows.context.context.Context object>",
                                                        "ev": "AgentSetup(...)"}),
                             "input.mime_type": "application/json", "openinference.span.kind": "CHAIN"})
        with tracer.start_as_current_span("OpenAI._prepare_chat_with_tools") as prepare:
            prepare.set_attributes({**LLAMA_LLM, "openinference.span.kind": "LLM", "input.mime_type": "application/json",
                                    "input.value": json.dumps({"tools": ["<FunctionTool object>"], "user_msg": None})})
        with tracer.start_as_current_span("OpenAI.astream_chat") as chat:
            chat.set_attributes(attributes)


def llama_index_function_tool(tracer: Tracer, arguments: dict[str, Any], result: str) -> None:
    with tracer.start_as_current_span("BaseWorkflowAgent.call_tool") as step:
        step.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                             "input.value": json.dumps({"ctx": "<workflows.context.context.Context object>",
                                                        "ev": f"ToolCall(tool_name='get_order', tool_kwargs={arguments!r})"})})
        with tracer.start_as_current_span("FunctionTool.acall") as tool:
            tool.set_attributes({
                "tool.description": LLAMA_TOOL["function"]["description"], "tool.name": "get_order",  # type: ignore[index]
                "tool.parameters": json.dumps({"properties": {"order_id": {"title": "Order Id", "type": "string"}},
                                               "required": ["order_id"], "type": "object"}),
                "input.value": json.dumps({"kwargs": arguments}), "input.mime_type": "application/json",
                "output.value": json.dumps({"blocks": [{"text": result}], "tool_name": "get_order",
                                            "raw_input": {"args": [], "kwargs": arguments}, "raw_output": result,
                                            "is_error": False}),
                "output.mime_type": "application/json", "openinference.span.kind": "TOOL",
            })


def test_a_clean_llama_index_function_agent_run_has_no_detection(start_collector):
    """The FunctionTool span's input is the bound call, ``{"kwargs": {"order_id": "42"}}``: read as the
    arguments themselves it broke the tool's schema ("'order_id' is a required property") on every clean run."""
    c = start_collector(FAST_JUDGE)
    question, result = "What is the status of order 42?", '{"order_id": "42", "status": "shipped"}'
    with sdk_tracer("grpc", c.grpc_endpoint, service="llama-bot") as tracer:
        with tracer.start_as_current_span("FunctionAgent.run") as root:
            root.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                                 "input.value": json.dumps({"init_state": {"is_running": False}})})
            llama_index_agent_step(tracer, question, arguments={"order_id": "42"})
            llama_index_function_tool(tracer, {"order_id": "42"}, result)
            llama_index_agent_step(tracer, question, result=result, answer="Order 42 shipped on Monday.")
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 9)
    assert c.stop() == 0  # judges every pending trace before it exits
    assert c.query("SELECT * FROM detections") == []
    assert c.query("SELECT * FROM candidates") == []


def test_llama_index_tool_calls_repeated_with_the_same_keyword_arguments_are_a_loop(start_collector):
    c = start_collector(FAST_JUDGE)
    question, result = "Check order 5 please", '{"order_id": "5", "status": "processing"}'
    with sdk_tracer("grpc", c.grpc_endpoint, service="llama-bot") as tracer:
        with tracer.start_as_current_span("FunctionAgent.run") as root:
            root.set_attribute("openinference.span.kind", "CHAIN")
            for _ in range(4):
                llama_index_agent_step(tracer, question, arguments={"order_id": "5"})
                llama_index_function_tool(tracer, {"order_id": "5"}, result)
            llama_index_agent_step(tracer, question, result=result, answer="Order 5 is still processing.")
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'loop'", lambda r: len(r) == 1)
    assert c.stop() == 0
    assert [mode for mode, _ in detections_by_span(c)] == ["loop"]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"]["user_message"] == question
    assert candidate["context"]["tool_calls"][0]["arguments"] == {"order_id": "5"}


def llama_index_query(tracer: Tracer, question: str, *, documents: list[tuple[str, str, float]],
                      answer: str | None) -> None:
    """``RetrieverQueryEngine.aquery`` > ``VectorIndexRetriever.aretrieve`` > ``._aretrieve`` (both RETRIEVER), then,
    when something was retrieved, the synthesizer's ``OpenAI.apredict`` (the prompt template) > ``OpenAI.achat``."""
    with tracer.start_as_current_span("RetrieverQueryEngine.aquery") as root:
        root.set_attributes({"input.value": question, "output.value": answer or "Empty Response",
                             "openinference.span.kind": "CHAIN"})
        nodes = [f"<NodeWithScore(node=TextNode(id_={node_id}), score={score})>" for node_id, _, score in documents]
        with tracer.start_as_current_span("VectorIndexRetriever.aretrieve") as outer:
            outer.set_attributes({"input.value": question, "output.value": json.dumps(nodes),
                                  "output.mime_type": "application/json", "openinference.span.kind": "RETRIEVER"})
            for i, (node_id, text, score) in enumerate(documents):
                outer.set_attributes({f"retrieval.documents.{i}.document.id": node_id,
                                      f"retrieval.documents.{i}.document.content": text,
                                      f"retrieval.documents.{i}.document.score": score})
            with tracer.start_as_current_span("VectorIndexRetriever._aretrieve") as inner:
                inner.set_attributes({"input.value": json.dumps({"query_bundle": {"query_str": question}}),
                                      "input.mime_type": "application/json", "output.value": json.dumps(nodes),
                                      "output.mime_type": "application/json", "openinference.span.kind": "RETRIEVER"})
        if answer is None:
            return
        context = "\n\n".join(text for _, text, _ in documents)
        template = ("Context information is below.\n---------------------\n{context_str}\n---------------------\n"
                    "Given the context information and not prior knowledge, answer the query.\nQuery: {query_str}\n"
                    "Answer: ")
        prompt = template.format(context_str=context, query_str=question)
        with tracer.start_as_current_span("OpenAI.apredict") as predict:
            predict.set_attributes({**LLAMA_LLM, "openinference.span.kind": "LLM", "output.value": answer,
                                    "input.value": json.dumps({"prompt": "SelectorPromptTemplate(...)"}),
                                    "input.mime_type": "application/json", "llm.prompt_template.template": template,
                                    "llm.prompt_template.variables": json.dumps({"context_str": context,
                                                                                 "query_str": question})})
            with tracer.start_as_current_span("OpenAI.achat") as chat:
                chat.set_attributes({
                    **LLAMA_LLM, "openinference.span.kind": "LLM", "input.mime_type": "application/json",
                    "input.value": json.dumps({"messages": ["ChatMessage(...)"]}),
                    "llm.input_messages.0.message.role": "system",
                    "llm.input_messages.0.message.content": "You are an expert Q&A system that is trusted around the world.",
                    "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": prompt,
                    "output.value": f"assistant: {answer}", "llm.finish_reason": "length",
                    "llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": answer,
                    "llm.token_count.prompt": 40, "llm.token_count.completion": 60, "llm.token_count.total": 100,
                })


def test_a_llama_index_retrieval_that_found_nothing_is_one_retrieval_miss(start_collector):
    """llama-index records one retrieval as two nested RETRIEVER spans (``aretrieve`` around ``_aretrieve``):
    an empty index gave two retrieval_miss detections of one failure."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="llama-bot") as tracer:
        llama_index_query(tracer, "What does the refund rule say?", documents=[], answer=None)
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'retrieval_miss'", lambda r: len(r) == 1)
    assert c.stop() == 0
    assert detections_by_span(c) == [("retrieval_miss", "VectorIndexRetriever._aretrieve")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": "What does the refund rule say?", "conversation_history": []}


def test_a_llama_index_query_engine_failure_files_the_question_not_the_rendered_prompt(start_collector):
    """The query engine asks the model with its QA template rendered around the question and the retrieved
    text: that prompt was the candidate's input, so the case replayed no question and every retrieval made
    another candidate of the same failure."""
    c = start_collector(FAST_JUDGE)
    docs = [("5ba12afa-900a-4532-b116-d51502f67b39", "The warranty covers the motor for five years.", 0.91),
            ("248c1e7d-69a3-442a-a8a3-ec51951e093a", "Refunds are issued within 14 days of the return.", 0.88)]
    with sdk_tracer("grpc", c.grpc_endpoint, service="llama-bot") as tracer:
        llama_index_query(tracer, "What does the warranty cover?", documents=docs,
                          answer="The warranty covers the motor for five years and")
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'truncation'", lambda r: len(r) == 1)
    assert detections_by_span(c) == [("truncation", "OpenAI.achat")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": "What does the warranty cover?", "conversation_history": []}


# ------------------------------------------------------------------ smolagents (openinference)
# smolagents 1.26.0 with openinference-instrumentation-smolagents 0.1.43, a ToolCallingAgent on an
# OpenAIServerModel: "ToolCallingAgent.run" (AGENT) > "Step N" (CHAIN) > "OpenAIModel.generate" (LLM) and the
# tool's span ("SimpleTool" for a @tool function, "FinalAnswerTool" for the answer, both TOOL).

SMOL_TOOLS = [
    {"type": "function", "function": {"name": "get_order", "description": "Look up an order's shipping status by its id.",
                                      "parameters": {"type": "object", "properties": {"order_id": {
                                          "type": "string", "description": "the order's id"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "final_answer", "description": "Provides a final answer to the given problem.",
                                      "parameters": {"type": "object", "properties": {"answer": {
                                          "type": "string", "description": "The final answer to the problem"}},
                                          "required": ["answer"]}}},
]
SMOL_SYSTEM = "You are an expert assistant who can solve any task using tool calls."


@contextmanager
def smolagents_run(tracer: Tracer, task: str) -> Iterator[None]:
    with tracer.start_as_current_span("ToolCallingAgent.run") as agent:
        agent.set_attributes({"input.value": json.dumps({"task": task, "stream": False, "reset": True, "images": None,
                                                         "additional_args": None, "max_steps": None}),
                              "smolagents.max_steps": 6, "smolagents.tools_names": ["get_order", "final_answer"],
                              "openinference.span.kind": "AGENT"})
        yield


def smolagents_generate(tracer: Tracer, task: str, tool: str, arguments: dict[str, Any], *,
                        error: str | None = None) -> None:
    with tracer.start_as_current_span("OpenAIModel.generate") as generate:
        attributes: dict[str, Any] = {
            "input.mime_type": "application/json", "input.value": json.dumps({"messages": ["ChatMessage(...)"]}),
            "llm.invocation_parameters": json.dumps({"max_tokens": 60}),
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.contents.0.message_content.type": "text",
            "llm.input_messages.0.message.contents.0.message_content.text": SMOL_SYSTEM,
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.contents.0.message_content.type": "text",
            "llm.input_messages.1.message.contents.0.message_content.text": f"New task:\n{task}",
            "llm.model_name": "gpt-4o-mini", "llm.provider": "openai", "llm.system": "openai",
            "llm.tools.0.tool.json_schema": json.dumps(SMOL_TOOLS[0]),
            "llm.tools.1.tool.json_schema": json.dumps(SMOL_TOOLS[1]), "openinference.span.kind": "LLM",
        }
        if error is None:
            call = "llm.output_messages.0.message.tool_calls.0.tool_call"
            attributes.update({
                "llm.token_count.prompt": 40, "llm.token_count.completion": 12, "llm.token_count.total": 52,
                "llm.output_messages.0.message.role": "assistant", f"{call}.id": f"call_{tool}",
                f"{call}.function.name": tool, f"{call}.function.arguments": json.dumps(arguments),
                "output.mime_type": "application/json",
                "output.value": json.dumps({"role": "assistant", "content": None, "tool_calls": [
                    {"function": {"arguments": json.dumps(arguments), "name": tool, "description": None},
                     "id": f"call_{tool}", "type": "function"}], "raw": "ChatCompletion(...)"}),
            })
        generate.set_attributes(attributes)
        if error is not None:
            generate.add_event("exception", {"exception.type": "openai.RateLimitError", "exception.message": error})
            _failed(generate, f"RateLimitError: {error}")


def smolagents_tool(tracer: Tracer, tool: str, arguments: dict[str, Any], output: str) -> None:
    spec = ({"order_id": {"type": "string", "description": "the order's id"}} if tool == "get_order"
            else {"answer": {"type": "any", "description": "The final answer to the problem"}})
    with tracer.start_as_current_span("SimpleTool" if tool == "get_order" else "FinalAnswerTool") as span:
        span.set_attributes({
            "input.value": json.dumps({"args": [], "sanitize_inputs_outputs": True, "kwargs": arguments}),
            "tool.name": tool, "tool.description": "...", "tool.parameters": json.dumps(spec),
            "output.value": output, "output.mime_type": "text/plain", "openinference.span.kind": "TOOL"})


@contextmanager
def smolagents_step(tracer: Tracer, number: int, *, error: str | None = None) -> Iterator[None]:
    with tracer.start_as_current_span(f"Step {number}") as step:
        step.set_attributes({"input.value": json.dumps({"memory_step": f"ActionStep(step_number={number}, ...)"}),
                             "openinference.span.kind": "CHAIN"})
        yield
        if error is not None:
            error_type, _, message = error.partition(": ")
            step.add_event("exception", {"exception.type": f"smolagents.utils.{error_type}",
                                         "exception.message": message})
            _failed(step, error)


def test_a_clean_smolagents_tool_calling_run_has_no_detection(start_collector):
    """smolagents' TOOL spans record the tool's ``inputs`` spec in ``tool.parameters`` and the bound call
    ``{"args": [], "sanitize_inputs_outputs": true, "kwargs": {...}}`` as input: read as the arguments, every
    clean call broke the tool's schema ("... is not of type 'string'")."""
    c = start_collector(FAST_JUDGE)
    task, answer = "What is the status of order 42?", "Order 42 shipped on Monday."
    with sdk_tracer("grpc", c.grpc_endpoint, service="smol-bot") as tracer:
        with smolagents_run(tracer, task):
            with smolagents_step(tracer, 1):
                smolagents_generate(tracer, task, "get_order", {"order_id": "42"})
                smolagents_tool(tracer, "get_order", {"order_id": "42"}, '{"order_id": "42", "status": "shipped"}')
            with smolagents_step(tracer, 2):
                smolagents_generate(tracer, task, "final_answer", {"answer": answer})
                smolagents_tool(tracer, "final_answer", {"answer": answer}, answer)
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 7)
    assert c.stop() == 0  # judges every pending trace before it exits
    assert c.query("SELECT * FROM detections") == []
    assert c.query("SELECT * FROM candidates") == []


def test_a_smolagents_step_that_refused_a_bad_tool_call_is_a_tool_argument_failure_of_the_task(start_collector):
    """smolagents fails the step (AgentToolCallError) instead of running a call breaking the schema: that was an
    llm_error besides the tool_argument finding, and the candidate's input was the prompt "New task:\\n..."."""
    c = start_collector(FAST_JUDGE)
    task = "Where is order 7?"
    with sdk_tracer("grpc", c.grpc_endpoint, service="smol-bot") as tracer:
        with smolagents_run(tracer, task):
            with smolagents_step(tracer, 1, error="AgentToolCallError: Argument order is not in the tool's input schema"):
                smolagents_generate(tracer, task, "get_order", {"order": 7})
            with smolagents_step(tracer, 2):
                smolagents_generate(tracer, task, "final_answer", {"answer": "I could not find order 7."})
                smolagents_tool(tracer, "final_answer", {"answer": "I could not find order 7."}, "I could not find order 7.")
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'tool_argument'", lambda r: len(r) == 1)
    assert c.stop() == 0
    assert detections_by_span(c) == [("tool_argument", "OpenAIModel.generate")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": task, "conversation_history": []}


def test_a_smolagents_rate_limit_is_one_llm_error_on_the_model_call(start_collector):
    """The step fails with "AgentGenerationError: Error while generating output: <the model call's error>"."""
    c = start_collector(FAST_JUDGE)
    error = "Error code: 429 - {'error': {'message': 'Rate limit reached for gpt-4o-mini', 'type': 'requests'}}"
    with sdk_tracer("grpc", c.grpc_endpoint, service="smol-bot") as tracer:
        with smolagents_run(tracer, "Where is my parcel?"):
            with smolagents_step(tracer, 1, error=f"AgentGenerationError: Error while generating output: {error}"):
                smolagents_generate(tracer, "Where is my parcel?", "get_order", {}, error=error)
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'llm_error'", lambda r: len(r) == 1)
    assert c.stop() == 0
    assert detections_by_span(c) == [("llm_error", "OpenAIModel.generate")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"]["user_message"] == "Where is my parcel?"


def test_a_smolagents_final_answer_citing_a_document_never_retrieved_is_hallucination(start_collector):
    """smolagents answers through its final_answer tool, whose output is the answer itself: read as a tool
    result, it made every id the answer cites "retrieved", so no citation was ever found missing."""
    c = start_collector(FAST_JUDGE)
    task, answer = "What does the refund policy say?", "Refunds take 30 days [doc-99]."
    with sdk_tracer("grpc", c.grpc_endpoint, service="smol-bot") as tracer:
        with smolagents_run(tracer, task):
            with smolagents_step(tracer, 1):
                smolagents_generate(tracer, task, "final_answer", {"answer": answer})
                smolagents_tool(tracer, "final_answer", {"answer": answer}, answer)
            trace.get_current_span().set_attribute("output.value", answer)
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'hallucination'", lambda r: len(r) == 1)
    assert c.stop() == 0
    assert detections_by_span(c) == [("hallucination", "ToolCallingAgent.run")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": task, "conversation_history": []}


# ------------------------------------------------------------------ DSPy (openinference)
# dspy 3.4.1 with openinference-instrumentation-dspy 0.1.48, `dspy.ReAct("question -> answer", tools=[get_order])`
# over `dspy.LM("openai/gpt-4o-mini")`: "ReAct.forward" (CHAIN, its input `{"input_args": {...}}`) > per step
# "Predict.forward" > "Predict(StringSignature).forward" > "ChatAdapter.__call__" (CHAIN) > "LM.__call__" (LLM, the
# question rendered into the ChatAdapter's "[[ ## question ## ]]" fields), then the tool's "get_order.__call__"
# (TOOL, no `tool.name`), and "ChainOfThought.forward" extracting the answer.

DSPY_REACT_SYSTEM = ("Your input fields are:\n1. `question` (str): \n2. `trajectory` (str):\nYour output fields are:\n"
                     "1. `next_thought` (str): \n2. `next_tool_name` (Literal['get_order', 'finish']): \n"
                     "3. `next_tool_args` (dict[str, Any]):\n...")


def dspy_lm_call(tracer: Tracer, question: str, trajectory: str, answer: str) -> None:
    user = (f"[[ ## question ## ]]\n{question}\n\n[[ ## trajectory ## ]]\n{trajectory}\n\nRespond with the "
            "corresponding output fields, starting with the field `[[ ## next_thought ## ]]`, then "
            "`[[ ## next_tool_name ## ]]` (must be formatted as a valid Python Literal['get_order', 'finish']), then "
            "`[[ ## next_tool_args ## ]]` (must be formatted as a valid Python dict[str, Any]), and then ending with "
            "the marker for `[[ ## completed ## ]]`.")
    messages = [{"role": "system", "content": DSPY_REACT_SYSTEM}, {"role": "user", "content": user}]
    with tracer.start_as_current_span("Predict.forward") as predict:
        predict.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                                "input.value": json.dumps({"question": question, "trajectory": trajectory})})
        with tracer.start_as_current_span("ChatAdapter.__call__") as adapter:
            adapter.set_attribute("openinference.span.kind", "CHAIN")
            with tracer.start_as_current_span("LM.__call__") as lm:
                lm.set_attributes({
                    "input.mime_type": "application/json",
                    "input.value": json.dumps({"prompt": None, "messages": messages, "kwargs": {}}),
                    "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
                    "llm.invocation_parameters": json.dumps({"temperature": None, "max_tokens": None,
                                                             "api_base": "http://127.0.0.1:42945/v1"}),
                    "llm.input_messages.0.message.role": "system",
                    "llm.input_messages.0.message.content": DSPY_REACT_SYSTEM,
                    "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": user,
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": answer,
                    "output.value": json.dumps([answer]), "output.mime_type": "application/json",
                    "openinference.span.kind": "LLM",
                })


def test_a_dspy_react_tool_failure_files_the_question_not_the_adapters_rendered_fields(start_collector):
    """ReAct records its call as ``{"input_args": {"question": ...}}`` and the model gets the question inside
    DSPy's "[[ ## question ## ]]" envelope: the candidate held that envelope, the tool's signature and format
    instructions with it, instead of what the user asked."""
    c = start_collector(FAST_JUDGE)
    question = "Where is order 42?"
    with sdk_tracer("grpc", c.grpc_endpoint, service="dspy-bot") as tracer:
        with tracer.start_as_current_span("ReAct.forward") as react:
            react.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                                  "input.value": json.dumps({"input_args": {"question": question}})})
            dspy_lm_call(tracer, question, "", "[[ ## next_thought ## ]]\nI should look up the order.\n\n"
                         "[[ ## next_tool_name ## ]]\nget_order\n\n[[ ## next_tool_args ## ]]\n"
                         '{"order_id": "42"}\n\n[[ ## completed ## ]]')
            with tracer.start_as_current_span("get_order.__call__") as tool:
                tool.set_attributes({"openinference.span.kind": "TOOL", "input.mime_type": "application/json",
                                     "input.value": json.dumps({"kwargs": {"order_id": "42"}})})
                tool.record_exception(RuntimeError("order service returned 502"))
                _failed(tool, "RuntimeError: order service returned 502")
            react.set_attributes({"output.mime_type": "application/json",
                                  "output.value": json.dumps({"answer": "I could not reach the order service."})})
    c.wait_for("SELECT 1 FROM candidates WHERE failure_mode = 'tool_invocation'", lambda r: len(r) == 1)
    assert detections_by_span(c) == [("tool_invocation", "get_order.__call__")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": question, "conversation_history": []}


# ------------------------------------------------------------------ Haystack (openinference)
# haystack-ai 3.4.1 with openinference-instrumentation-haystack 0.1.46, a RAG `Pipeline`: InMemoryBM25Retriever >
# ChatPromptBuilder ("Context: ... Question: {{ question }}") > OpenAIChatGenerator. "Pipeline.run" (CHAIN) records
# the run's inputs per component, `{"data": {"retriever": {"query": ...}, "prompt": {"question": ...}}}`.


def test_a_haystack_rag_pipeline_that_retrieved_nothing_files_the_question_not_the_prompt(start_collector):
    """The model's message is the template rendered around the question; the question sits two levels deep in the
    pipeline's inputs, beside the retriever's keyword query (which a rendered context may hold too)."""
    c = start_collector(FAST_JUDGE)
    question = "How long is the return window for shoes?"
    rendered = f"Context:\n\nQuestion: {question}"
    answer = "The return window is 60 days for shoes bought online, and 30 days in stores."
    with sdk_tracer("grpc", c.grpc_endpoint, service="haystack-bot") as tracer:
        with tracer.start_as_current_span("Pipeline.run") as run:
            run.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                                "input.value": json.dumps({"data": {"retriever": {"query": "return window"},
                                                                    "prompt": {"question": question}}})})
            with tracer.start_as_current_span("InMemoryBM25Retriever.run") as retriever:
                retriever.set_attributes({
                    "openinference.span.kind": "RETRIEVER", "input.mime_type": "application/json",
                    "input.value": json.dumps({"query": "return window", "filters": None, "top_k": None,
                                               "scale_score": None}),
                    "output.mime_type": "application/json", "output.value": json.dumps({"documents": []})})
            with tracer.start_as_current_span("ChatPromptBuilder.run") as builder:
                builder.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                                        "input.value": json.dumps({"template": None, "template_variables": None,
                                                                   "kwargs": {"question": question, "documents": []}})})
            with tracer.start_as_current_span("OpenAIChatGenerator.run") as llm:
                llm.set_attributes({
                    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini-2024-07-18",
                    "llm.provider": "openai", "llm.system": "openai",
                    "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": rendered,
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": answer,
                    "llm.token_count.prompt": 42, "llm.token_count.completion": 19, "llm.token_count.total": 61})
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 2)
    assert detections_by_span(c) == [("hallucination", "OpenAIChatGenerator.run"),
                                     ("retrieval_miss", "InMemoryBM25Retriever.run")]
    for candidate in json.loads(c.cli("candidates", "--format", "json").stdout):
        assert candidate["input"] == {"user_message": question, "conversation_history": []}


# ------------------------------------------------------------------ LiteLLM's own OpenTelemetry callback
# litellm 1.110.2, `litellm.callbacks = [OpenTelemetry(OpenTelemetryConfig(exporter="otlp_grpc", ...))]`, a bare
# `litellm.completion(model="openai/gpt-4o-mini", tools=[...])`: "litellm_request" (GenAI chat) > "raw_gen_ai_request".
# The tools are OpenLLMetry's `llm.request.functions.<i>.*`; each tool call of the answer is a
# `gen_ai.completion.<i>.function_call.*` (its `gen_ai.output.messages` item keeps no part for it).

LITELLM_PARAMETERS = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"],
                      "additionalProperties": False}


def litellm_request(tracer: Tracer, question: str, *, answer: str | None = None,
                    tool_call: dict[str, Any] | None = None) -> None:
    finish = "tool_calls" if tool_call is not None else "stop"
    parts = [{"type": "text", "content": answer}] if answer is not None else []
    attributes: dict[str, Any] = {
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.system": "openai", "gen_ai.operation.name": "chat",
        "gen_ai.response.id": "chatcmpl-1796687102421881931", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.finish_reasons": json.dumps([finish]),
        "gen_ai.usage.input_tokens": 42, "gen_ai.usage.output_tokens": 9, "gen_ai.usage.total_tokens": 51,
        "gen_ai.input.messages": json.dumps([
            {"role": "system", "parts": [{"type": "text", "content": SYSTEM}]},
            {"role": "user", "parts": [{"type": "text", "content": question}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": parts, "finish_reason": finish}]),
        "litellm.provider.model": "openai/gpt-4o-mini", "llm.request.type": "completion", "llm.is_streaming": "False",
        "llm.request.functions.0.name": "get_order",
        "llm.request.functions.0.description": "Look up an order's shipping status by its id.",
        "llm.request.functions.0.parameters": json.dumps(LITELLM_PARAMETERS),
    }
    if tool_call is not None:
        attributes.update({"gen_ai.completion.0.function_call.arguments": json.dumps(tool_call),
                           "gen_ai.completion.0.function_call.name": "get_order"})
    with tracer.start_as_current_span("litellm_request") as span:
        span.set_attributes(attributes)
        with tracer.start_as_current_span("raw_gen_ai_request") as raw:
            raw.set_attributes({"llm.openai.model": "gpt-4o-mini-2024-07-18", "llm.openai.object": "chat.completion"})


def test_litellm_otel_callback_tool_calls_are_judged_against_the_declared_functions(start_collector):
    """The call's arguments and the tool's schema were both there, under keys nothing read: a call breaking the
    schema went unreported, and a well-formed one must stay clean."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="litellm-bot") as tracer:
        litellm_request(tracer, "What is the status of order 42?", tool_call={"order_id": "42"})
        litellm_request(tracer, "Where is order 7?", tool_call={"order": 7})
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 1)
    assert c.stop() == 0  # judges every pending trace before it exits
    assert detections_by_span(c) == [("tool_argument", "litellm_request")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"] == {"user_message": "Where is order 7?", "conversation_history": []}
    assert candidate["expected"]["tool_arguments_schema"] == {"get_order": LITELLM_PARAMETERS}


def test_litellm_otel_callback_refusal_although_functions_were_offered_is_refusal_overreach(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="litellm-bot") as tracer:
        litellm_request(tracer, "Where is order 42?", answer="I'm sorry, but I can't help with that request.")
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 1)
    assert detections_by_span(c) == [("refusal_overreach", "litellm_request")]


def haystack_chat_generator(tracer: Tracer, question: str, answer: str, finish_reason: str) -> None:
    """"Pipeline.run" > "OpenAIChatGenerator.run": the replies only as each ChatMessage's repr, no finish-reason key."""
    def chat_message(role: str, text: str, meta: str) -> str:
        return (f"ChatMessage(_role=<ChatRole.{role.upper()}: '{role}'>, _content=[TextContent(text={text!r})], "
                f"_name=None, _meta={meta})")
    meta = (f"{{'model': 'gpt-4o-mini-2024-07-18', 'index': 0, 'finish_reason': '{finish_reason}', 'usage': "
            "{'completion_tokens': 9, 'prompt_tokens': 42, 'total_tokens': 51, 'completion_tokens_details': None, "
            "'prompt_tokens_details': None}}")
    user = chat_message("user", question, "{}")
    with tracer.start_as_current_span("Pipeline.run") as run:
        run.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                            "input.value": json.dumps({"data": {"llm": {"messages": [user]}}})})
        with tracer.start_as_current_span("OpenAIChatGenerator.run") as llm:
            llm.set_attributes({
                "openinference.span.kind": "LLM", "input.mime_type": "application/json",
                "input.value": json.dumps({"messages": [user], "streaming_callback": None, "generation_kwargs": None,
                                           "tools": None, "tools_strict": None}),
                "llm.model_name": "gpt-4o-mini-2024-07-18", "llm.provider": "openai", "llm.system": "openai",
                "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": question,
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": answer,
                "llm.token_count.prompt": 42, "llm.token_count.completion": 9, "llm.token_count.total": 51,
                "output.mime_type": "application/json",
                "output.value": json.dumps({"replies": [chat_message("assistant", answer, meta)]})})


def test_a_haystack_reply_cut_at_its_token_limit_is_truncation(start_collector):
    """The finish reason is only in the reply's ``_meta`` inside its repr; a whole reply, whose text quotes a
    finish reason of its own, stays clean."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="haystack-bot") as tracer:
        haystack_chat_generator(tracer, "Tell me about order 42", "Order 42 shipped on Mon", "length")
        haystack_chat_generator(tracer, "What does the API return?",
                                "It returns {'finish_reason': 'length'} when a reply is cut.", "stop")
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 1)
    assert c.stop() == 0
    assert detections_by_span(c) == [("truncation", "OpenAIChatGenerator.run")]
    assert c.query("SELECT llm_finish_reason AS r FROM spans WHERE span_kind = 'LLM' ORDER BY start_time") == [
        {"r": "length"}, {"r": "stop"}]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"]["user_message"] == "Tell me about order 42"


def dspy_tool_call(tracer: Tracer, tool: str, kwargs: dict[str, Any], *, result: str | None = None,
                   error: Exception | None = None) -> None:
    """A DSPy ``Tool``'s span: named "<tool>.__call__", no ``tool.name``, the call as ``{"kwargs": {...}}``."""
    with tracer.start_as_current_span(f"{tool}.__call__") as span:
        span.set_attributes({"openinference.span.kind": "TOOL", "input.mime_type": "application/json",
                             "input.value": json.dumps({"kwargs": kwargs})})
        if error is not None:
            span.record_exception(error)
            _failed(span, f"{type(error).__name__}: {error}")
        else:
            span.set_attributes({"output.mime_type": "application/json", "output.value": json.dumps(result)})


def test_a_dspy_tool_is_named_so_its_blast_radius_class_applies(start_collector):
    """Without ``tool.name`` the tool was nameless in ``spans.tool_name`` and ``blast_radius: {send_email: ...}``
    never matched: an e-mail sent after the refund failed was no blast_radius_breach."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "300ms",
                                                      "blast_radius": {"send_email": "irreversible_write"}}}})
    question = "Refund order 42 and tell me by e-mail."
    with sdk_tracer("grpc", c.grpc_endpoint, service="dspy-bot") as tracer:
        with tracer.start_as_current_span("ReAct.forward") as react:
            react.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                                  "input.value": json.dumps({"input_args": {"question": question}})})
            dspy_tool_call(tracer, "refund_payment", {"order_id": "42"}, error=RuntimeError("payment gateway 502"))
            dspy_tool_call(tracer, "send_email", {"to": "customer", "body": "Your refund is on its way."},
                           result="sent")
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 2)
    assert c.query("SELECT tool_name FROM spans WHERE span_kind = 'TOOL' ORDER BY start_time") == [
        {"tool_name": "refund_payment"}, {"tool_name": "send_email"}]
    assert detections_by_span(c) == [("blast_radius_breach", "send_email.__call__"),
                                     ("tool_invocation", "refund_payment.__call__")]


HAYSTACK_TOOL = ("Tool(name='get_order', description=\"Look up an order's shipping status by its id.\", "
                 "parameters={'type': 'object', 'properties': {'order_id': {'type': 'string'}}, 'required': "
                 "['order_id'], 'additionalProperties': False}, function=<function get_order at 0x7f2864305e40>, "
                 "outputs_to_string=None, inputs_from_state=None, outputs_to_state=None, async_function=None)")


def haystack_agent_generator(tracer: Tracer, question: str, *, answer: str | None = None,
                             tool_call: dict[str, Any] | None = None) -> None:
    """A Haystack ``Agent``'s "OpenAIChatGenerator.run" (run outside a pipeline, each model call is a trace): its
    tools only as each ``Tool``'s repr in ``input.value``, never as ``llm.tools``."""
    messages = ["ChatMessage(_role=<ChatRole.SYSTEM: 'system'>, _content=[TextContent(text='You are a support "
                "agent. Use tools.')], _name=None, _meta={})",
                f"ChatMessage(_role=<ChatRole.USER: 'user'>, _content=[TextContent(text={question!r})], _name=None, "
                "_meta={})"]
    out = "llm.output_messages.0.message"
    attributes: dict[str, Any] = {
        "openinference.span.kind": "LLM", "input.mime_type": "application/json",
        "input.value": json.dumps({"messages": messages, "tools": [HAYSTACK_TOOL]}),
        "llm.model_name": "gpt-4o-mini-2024-07-18", "llm.provider": "openai", "llm.system": "openai",
        "llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": SYSTEM,
        "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": question,
        f"{out}.role": "assistant",
        "llm.token_count.prompt": 42, "llm.token_count.completion": 9, "llm.token_count.total": 51,
    }
    if tool_call is not None:
        attributes.update({f"{out}.tool_calls.0.tool_call.function.name": "get_order",
                           f"{out}.tool_calls.0.tool_call.function.arguments": json.dumps(tool_call)})
    else:
        attributes[f"{out}.content"] = answer
    with tracer.start_as_current_span("OpenAIChatGenerator.run") as llm:
        llm.set_attributes(attributes)


def test_haystack_agent_tools_recorded_as_reprs_are_offered_tools_with_their_schema(start_collector):
    """A refusal although the agent had a tool, and a call breaking the tool's parameters, went unseen: the only
    record of the tools was their repr. A well-formed call stays clean."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="haystack-bot") as tracer:
        haystack_agent_generator(tracer, "Where is order 42?", tool_call={"order_id": "42"})
        haystack_agent_generator(tracer, "Where is order 7?", tool_call={"order": 7})
        haystack_agent_generator(tracer, "Where is order 9?", answer="I'm sorry, but I can't help with that request.")
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 2)
    assert c.stop() == 0
    rows = c.query("SELECT d.failure_mode, s.input_value FROM detections d JOIN spans s USING (trace_id, span_id) "
                   "ORDER BY d.failure_mode")
    assert [(r["failure_mode"], "order 9" in r["input_value"], "order 7" in r["input_value"]) for r in rows] == [
        ("refusal_overreach", True, False), ("tool_argument", False, True)]
    [tool_argument] = json.loads(c.cli("candidates", "--mode", "tool_argument", "--format", "json").stdout)
    assert tool_argument["expected"]["tool_arguments_schema"] == {"get_order": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"],
        "additionalProperties": False}}


# ------------------------------------------------------------------ AutoGen AgentChat (openinference)
# autogen-agentchat 0.7.5 with openinference-instrumentation-autogen-agentchat 0.1.22, an `AssistantAgent` with a
# `FunctionTool` over `OpenAIChatCompletionClient`: "support.on_messages_stream" (AGENT) > per model call
# "OpenAIChatCompletionClient.create" (LLM) and per tool call "support.get_order" (TOOL), all from the tracer the
# instrumentor names after its module.
AUTOGEN_SCOPE = "openinference.instrumentation.autogen_agentchat"


def autogen_create(tracer: Tracer, question: str, *, tool_result: str | None = None, is_error: bool = False) -> None:
    out = "llm.output_messages.0.message"
    attributes: dict[str, Any] = {
        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini-2024-07-18",
        "llm.input_messages.0.message.role": "developer", "llm.input_messages.0.message.content": SYSTEM,
        "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": question,
        "llm.token_count.prompt": 42, "llm.token_count.completion": 9, "llm.token_count.total": 51,
        "output.mime_type": "application/json", f"{out}.role": "assistant",
    }
    call = {"id": "call_8", "arguments": json.dumps({"order_id": "42"}), "name": "get_order"}
    if tool_result is None:
        attributes.update({f"{out}.tool_calls.0.tool_call.id": "call_8",
                           f"{out}.tool_calls.0.tool_call.function.name": "get_order",
                           f"{out}.tool_calls.0.tool_call.function.arguments": call["arguments"],
                           "output.value": json.dumps({"finish_reason": "function_calls", "content": [call],
                                                       "usage": {"prompt_tokens": 42, "completion_tokens": 9},
                                                       "cached": False, "logprobs": None, "thought": None})})
    else:
        answer = "Order 42 shipped on Monday. Anything else?"
        attributes.update({
            "llm.input_messages.2.message.role": "assistant",
            "llm.input_messages.2.message.tool_calls.0.tool_call.id": "call_8",
            "llm.input_messages.2.message.tool_calls.0.tool_call.function.name": "get_order",
            "llm.input_messages.2.message.tool_calls.0.tool_call.function.arguments": call["arguments"],
            "llm.input_messages.3.message.role": "function",
            "llm.input_messages.3.function.0": json.dumps({"name": "get_order", "content": tool_result,
                                                           "call_id": "call_8", "is_error": is_error}),
            f"{out}.content": answer,
            "output.value": json.dumps({"finish_reason": "stop", "content": answer,
                                        "usage": {"prompt_tokens": 42, "completion_tokens": 9}, "cached": False,
                                        "logprobs": None, "thought": None})})
    with tracer.start_as_current_span("OpenAIChatCompletionClient.create") as span:
        span.set_attributes(attributes)


def test_a_clean_autogen_run_whose_stream_was_cancelled_at_close_has_no_detection(start_collector):
    """The instrumentor sets the agent's span OK, then records the CancelledError asyncio throws into the run's
    stream when the loop closes: the answered, clean run was an llm_error."""
    c = start_collector(FAST_JUDGE)
    question = "What is the status of order 42?"
    message = (f"id='bae4f253-7545-4191-a337-e0566f124ddf' source='user' models_usage=None metadata={{}} "
               f"created_at=datetime.datetime(2026, 12, 8, 0, 1, 40, 384871, tzinfo=datetime.timezone.utc) "
               f"content='{question}' type='TextMessage'")
    result = json.dumps({"order_id": "42", "status": "shipped"})
    with sdk_tracer("grpc", c.grpc_endpoint, service="autogen-bot", scope=AUTOGEN_SCOPE) as tracer:
        with tracer.start_as_current_span("support.on_messages_stream") as agent:
            agent.set_attributes({"openinference.span.kind": "AGENT", "graph.node.id": "support",
                                  "graph.node.parent_id": "start", "input.value": json.dumps({
                                      "messages": [message], "cancellation_token":
                                      "<autogen_core._cancellation_token.CancellationToken object at 0x7f8129>"})})
            autogen_create(tracer, question)
            with tracer.start_as_current_span("support.get_order") as tool:
                tool.set_attributes({"openinference.span.kind": "TOOL", "tool.name": "get_order",
                                     "tool.description": "Look up an order's shipping status by its id.",
                                     "tool.parameters": json.dumps({"order_id": "42"}),
                                     "input.value": json.dumps({"order_id": "42"}),
                                     "input.mime_type": "application/json",
                                     "output.value": result, "output.mime_type": "application/json"})
            autogen_create(tracer, question, tool_result=result)
            agent.set_status(Status(StatusCode.OK))
            agent.add_event("exception", {
                "exception.type": "asyncio.exceptions.CancelledError", "exception.message": "",
                "exception.stacktrace": "Traceback (most recent call last):\n  File \"_wrappers.py\", line 231, in "
                                        "wrapped_generator\n    yield event\nasyncio.exceptions.CancelledError\n",
                "exception.escaped": "False"})
    c.wait_for("SELECT count(*) AS n FROM spans", lambda r: r[0]["n"] == 4)
    assert c.stop() == 0  # judges every pending trace before it exits
    assert c.query("SELECT * FROM detections") == []
    assert c.query("SELECT * FROM candidates") == []


def autogen_run(tracer: Tracer, question: str, tool_result: str, *, is_error: bool) -> None:
    with tracer.start_as_current_span("support.on_messages_stream") as agent:
        agent.set_attributes({"openinference.span.kind": "AGENT", "graph.node.id": "support",
                              "graph.node.parent_id": "start"})
        autogen_create(tracer, question)
        with tracer.start_as_current_span("support.get_order") as tool:
            # the tool wrapper sets OK first: its later ERROR for a failed call is dropped (OK is final)
            tool.set_attributes({"openinference.span.kind": "TOOL", "tool.name": "get_order",
                                 "tool.description": "Look up an order's shipping status by its id.",
                                 "tool.parameters": json.dumps({"order_id": "42"}),
                                 "input.value": json.dumps({"order_id": "42"}), "input.mime_type": "application/json",
                                 "output.value": tool_result, "output.mime_type": "text/plain"})
            tool.set_status(Status(StatusCode.OK))
            if is_error:
                tool.set_status(Status(StatusCode.ERROR, "Tool execution failed"))
        autogen_create(tracer, question, tool_result=tool_result, is_error=is_error)
        agent.set_status(Status(StatusCode.OK))


def test_an_autogen_tool_that_raised_is_a_tool_invocation_failure(start_collector):
    """AutoGen hands the tool's exception text to the model as a result with ``is_error: true``; the tool's span
    stays OK. The failure went unreported; a result that was no error, even one that reads like one, stays clean."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="autogen-bot", scope=AUTOGEN_SCOPE) as tracer:
        autogen_run(tracer, "Where is my order 42?", "order service returned 502", is_error=True)
        autogen_run(tracer, "Why did order 43 fail?", "order service returned 502", is_error=False)
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 1)
    assert c.stop() == 0
    assert detections_by_span(c) == [("tool_invocation", "support.get_order")]
    [candidate] = json.loads(c.cli("candidates", "--format", "json").stdout)
    assert candidate["input"]["user_message"] == "Where is my order 42?"
    assert candidate["context"]["tool_calls"][0]["result"] == "order service returned 502"


# ------------------------------------------------------------------ LiteLLM (openinference)
# litellm 1.110.2 with openinference-instrumentation-litellm 0.1.51: one "completion" (LLM) span per call.


def litellm_completion(tracer: Tracer, question: str, answer: str, **parameters: Any) -> None:
    with tracer.start_as_current_span("completion") as span:
        span.set_attributes({
            "llm.model_name": "openai/gpt-4o-mini", "llm.provider": "openai",
            "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": question,
            "llm.invocation_parameters": json.dumps({"model": "openai/gpt-4o-mini",
                                                     "api_base": "http://127.0.0.1:46633/v1", **parameters}),
            "llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": answer,
            "llm.finish_reason": "stop", "llm.token_count.prompt": 42, "llm.token_count.completion": 9,
            "llm.token_count.total": 51, "llm.cost.total": 1.17e-05,
            "input.value": json.dumps({"messages": [{"role": "user", "content": question}]}),
            "input.mime_type": "application/json", "output.value": answer, "openinference.span.kind": "LLM",
        })


def test_a_litellm_answer_that_is_not_the_pydantic_models_json_is_a_format_violation(start_collector):
    """``litellm.completion(response_format=Order)`` is recorded as the class's repr, ``"<class '__main__.Order'>"``:
    the request for JSON went unseen and a prose answer was no failure. A JSON answer stays clean."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint, service="litellm-bot") as tracer:
        litellm_completion(tracer, "Give me order 42 as JSON", "Sure! The order is shipped.",
                           response_format="<class '__main__.Order'>")
        litellm_completion(tracer, "Give me order 43 as JSON", json.dumps({"order_id": "43", "status": "shipped"}),
                           response_format="<class '__main__.Order'>")
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 1)
    assert c.stop() == 0
    rows = c.query("SELECT d.failure_mode, s.input_value FROM detections d JOIN spans s USING (trace_id, span_id)")
    assert [(r["failure_mode"], "order 42" in r["input_value"]) for r in rows] == [("format_violation", True)]


def dspy_adapter_call(tracer: Tracer, adapter: str, question: str, answer: str, *, parsed: bool,
                      response_format: str | None = None) -> None:
    """A DSPy adapter's span over its LM call; an answer it cannot parse fails it with AdapterParseError."""
    with tracer.start_as_current_span(f"{adapter}.__call__") as span:
        span.set_attribute("openinference.span.kind", "CHAIN")
        parameters: dict[str, Any] = {"temperature": None, "max_tokens": None, "api_base": "http://127.0.0.1:35241/v1"}
        if response_format is not None:
            parameters["response_format"] = response_format
        user = f"[[ ## question ## ]]\n{question}\n\nRespond with the corresponding output fields..."
        with tracer.start_as_current_span("LM.__call__") as lm:
            lm.set_attributes({
                "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini", "llm.provider": "openai",
                "llm.invocation_parameters": json.dumps(parameters),
                "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": user,
                "llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": answer,
                "input.mime_type": "application/json", "input.value": json.dumps({
                    "prompt": None, "messages": [{"role": "user", "content": user}], "kwargs": {}}),
                "output.mime_type": "application/json", "output.value": json.dumps([answer])})
        if not parsed:
            error = (f"Adapter {adapter} failed to parse the LM response. \n\nLM Response: {answer} \n\n"
                     "Expected to find output fields in the LM response: [answer]")
            span.add_event("exception", {"exception.type": "dspy.utils.exceptions.AdapterParseError",
                                         "exception.message": error, "exception.escaped": "False"})
            _failed(span, f"AdapterParseError: {error}")


def dspy_predict(tracer: Tracer, question: str, attempts: list[tuple[str, str, bool]]) -> None:
    """``dspy.Predict("question -> answer")``: ChatAdapter, then (on a parse error) its JSONAdapter fallback."""
    with tracer.start_as_current_span("Predict.forward") as predict:
        predict.set_attributes({"openinference.span.kind": "CHAIN", "input.mime_type": "application/json",
                                "input.value": json.dumps({"question": question})})
        for adapter, answer, parsed in attempts:
            dspy_adapter_call(tracer, adapter, question, answer, parsed=parsed, response_format=(
                "<class 'dspy.adapters.json_adapter.DSPyProgramOutputs'>" if adapter == "JSONAdapter" else None))
        if not attempts[-1][2]:
            _failed(predict, "AdapterParseError: the LM response could not be parsed")


def test_a_dspy_answer_no_adapter_could_parse_is_one_format_violation_and_a_recovered_one_none(start_collector):
    """An adapter's AdapterParseError was an llm_error on every adapter span tried, also when the JSONAdapter
    fallback then parsed the answer and the prediction succeeded."""
    c = start_collector(FAST_JUDGE)
    answer_json = json.dumps({"answer": "Order 42 shipped on Monday."})
    with sdk_tracer("grpc", c.grpc_endpoint, service="dspy-bot") as tracer:
        dspy_predict(tracer, "Where is order 42?", [("ChatAdapter", answer_json, False),
                                                    ("JSONAdapter", answer_json, True)])
        dspy_predict(tracer, "Where is order 7?", [("ChatAdapter", "Sure! The order is shipped.", False),
                                                   ("JSONAdapter", "Sure! The order is shipped.", False)])
        dspy_predict(tracer, "Where is order 9?", [("ChatAdapter", "Sure! It is on its way.", False)])
    c.wait_for("SELECT 1 FROM candidates", lambda r: len(r) == 2)
    assert c.stop() == 0
    rows = c.query("SELECT d.failure_mode, p.name AS adapter, s.input_value FROM detections d "
                   "JOIN spans s USING (trace_id, span_id) JOIN spans p ON p.trace_id = s.trace_id "
                   "AND p.span_id = s.parent_span_id ORDER BY adapter")
    assert [(r["failure_mode"], r["adapter"], "order 9" in r["input_value"]) for r in rows] == [
        ("format_violation", "ChatAdapter.__call__", True), ("format_violation", "JSONAdapter.__call__", False)]
