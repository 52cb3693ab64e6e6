"""The support agent of the gate walkthrough: OpenTelemetry tracing, a scripted model, one tool, one retriever.

``agent_buggy.py`` and ``agent_fixed.py`` each supply a :class:`Behaviour` (the
three functions the fix changes) and call :func:`main`. Everything else, the
tracing included, is shared, so ``diff agent_buggy.py agent_fixed.py`` is the fix.

The agent answers one question: ``--question``, else the case input that
``tracesieve gate`` passes (JSON on stdin / ``TRACESIEVE_CASE_INPUT``, field
``user_message``). It routes by keyword, standing in for a model so the example
runs offline and deterministically:

* an order id (``ORD-1234``): the model asks for ``lookup_order``, the tool runs,
  the model answers with the order's status;
* "refund" / "return" / "policy": a retriever fetches policy documents and the
  model answers citing one of them;
* anything else ("summarize ..."): the model writes a summary of recent orders.

Spans carry OpenInference attributes; the exporter follows the standard
variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` =
grpc | http/protobuf, ``OTEL_RESOURCE_ATTRIBUTES``), so it exports to a running
``tracesieve serve`` or to the collector ``tracesieve gate`` embeds, unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode, Tracer

MODEL = "gpt-4o-mini-2024-07-18"
LOOKUP_ORDER = {"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order by its id",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^ORD-[0-9]+$"}},
                   "required": ["order_id"], "additionalProperties": False}}}
ORDERS = {"ORD-1042": "delivered on 2026-11-18", "ORD-1043": "in transit, arriving 2026-11-24",
          "ORD-1044": "waiting for pickup at the depot"}
POLICIES = [
    {"id": "doc-refunds", "content": "Refunds are accepted within 30 days of delivery.", "score": 0.92},
    {"id": "doc-returns", "content": "Returns are free with the prepaid label in the parcel.", "score": 0.81},
]
SUMMARY = ("You placed three orders this month: ORD-1042 was delivered on 2026-11-18, ORD-1043 is in transit "
           "and arrives on 2026-11-24, and ORD-1044 is waiting for pickup at the depot.")


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """What differs between the buggy and the fixed agent."""

    order_arguments: Callable[[str], dict[str, Any]]  # the arguments the model passes to lookup_order
    cite: Callable[[list[dict[str, Any]]], str]  # the document id the answer cites, from the ranked documents
    max_tokens: int  # the completion budget for the summary


def lookup_order(arguments: dict[str, Any]) -> str:
    """The tool: reads ``order_id`` (a KeyError when the caller sends something else)."""
    order_id = arguments["order_id"]
    return ORDERS.get(order_id, "not found")


def exporter() -> Any:
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    return HttpExporter()


def read_question(cli_question: str | None) -> str:
    if cli_question:
        return cli_question
    raw = os.environ.get("TRACESIEVE_CASE_INPUT")
    if raw is None and not sys.stdin.isatty():
        raw = sys.stdin.read()
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return raw or ""
    return str(data.get("user_message") or "") if isinstance(data, dict) else str(data)


def _llm(tracer: Tracer, question: str, *, tools: bool = False) -> Span:
    span = tracer.start_span("ChatCompletion")
    span.set_attribute("openinference.span.kind", "LLM")
    span.set_attribute("llm.model_name", MODEL)
    span.set_attribute("llm.provider", "openai")
    span.set_attribute("llm.input_messages.0.message.role", "user")
    span.set_attribute("llm.input_messages.0.message.content", question)
    if tools:
        span.set_attribute("llm.tools.0.tool.json_schema", json.dumps(LOOKUP_ORDER))
    return span


def _answer(span: Span, text: str, finish_reason: str = "stop") -> None:
    span.set_attribute("llm.output_messages.0.message.role", "assistant")
    span.set_attribute("llm.output_messages.0.message.content", text)
    span.set_attribute("llm.finish_reason", finish_reason)
    span.set_attribute("output.value", text)


def answer_order(tracer: Tracer, question: str, order_id: str, behaviour: Behaviour) -> str:
    arguments = behaviour.order_arguments(order_id)
    span = _llm(tracer, question, tools=True)
    with trace.use_span(span, end_on_exit=True):
        span.set_attribute("llm.output_messages.0.message.role", "assistant")
        prefix = "llm.output_messages.0.message.tool_calls.0.tool_call"
        span.set_attribute(f"{prefix}.function.name", "lookup_order")
        span.set_attribute(f"{prefix}.function.arguments", json.dumps(arguments))
        span.set_attribute("llm.finish_reason", "tool_calls")
    with tracer.start_as_current_span("lookup_order") as tool:
        tool.set_attribute("openinference.span.kind", "TOOL")
        tool.set_attribute("tool.name", "lookup_order")
        tool.set_attribute("input.value", json.dumps(arguments))
        tool.set_attribute("input.mime_type", "application/json")
        try:
            status = lookup_order(arguments)
            tool.set_attribute("output.value", status)
        except KeyError as exc:
            tool.record_exception(exc)
            tool.set_status(Status(StatusCode.ERROR, f"KeyError: {exc}"))
            status = ""
    span = _llm(tracer, question)
    with trace.use_span(span, end_on_exit=True):
        text = (f"Your order {order_id} is {status}." if status
                else f"The order service did not answer for {order_id}; please try again later.")
        _answer(span, text)
    return text


def answer_policy(tracer: Tracer, question: str, behaviour: Behaviour) -> str:
    with tracer.start_as_current_span("retrieve_policies") as r:
        r.set_attribute("openinference.span.kind", "RETRIEVER")
        r.set_attribute("input.value", question)
        for i, doc in enumerate(POLICIES):
            for key in ("id", "content", "score"):
                r.set_attribute(f"retrieval.documents.{i}.document.{key}", doc[key])
    span = _llm(tracer, question)
    with trace.use_span(span, end_on_exit=True):
        text = f"{POLICIES[0]['content']} [{behaviour.cite(POLICIES)}]"
        _answer(span, text)
    return text


def answer_summary(tracer: Tracer, question: str, behaviour: Behaviour) -> str:
    span = _llm(tracer, question)
    with trace.use_span(span, end_on_exit=True):
        span.set_attribute("llm.invocation_parameters", json.dumps({"max_tokens": behaviour.max_tokens}))
        words = SUMMARY.split()
        cut = len(words) > behaviour.max_tokens
        text = " ".join(words[:behaviour.max_tokens])
        _answer(span, text, "length" if cut else "stop")
    return text


def main(behaviour: Behaviour) -> int:
    parser = argparse.ArgumentParser(description="the support agent of the gate walkthrough")
    parser.add_argument("--question", help="the customer's question (default: the gate case input)")
    args = parser.parse_args()
    question = read_question(args.question)
    if not question:
        parser.error("no question: pass --question or a case input on stdin")

    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(BatchSpanProcessor(exporter(), schedule_delay_millis=200))
    tracer = provider.get_tracer("examples.gate.support_agent")
    with tracer.start_as_current_span("support_agent") as root:
        root.set_attribute("openinference.span.kind", "AGENT")
        root.set_attribute("agent.name", "support")
        root.set_attribute("input.value", question)
        order = re.search(r"\bORD-\d+\b", question)
        if order:
            answer = answer_order(tracer, question, order.group(0), behaviour)
        elif re.search(r"(?i)refund|return|policy", question):
            answer = answer_policy(tracer, question, behaviour)
        else:
            answer = answer_summary(tracer, question, behaviour)
        root.set_attribute("output.value", answer)
    provider.shutdown()  # flushes: the collector has stored the spans before we exit
    print(answer)
    return 0
