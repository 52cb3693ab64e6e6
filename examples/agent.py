"""A tiny support agent that exports real OTLP (OpenInference attributes) — for trying tracesieve and for `gate`.

It answers one question: from ``--question``, else the case input that
``tracesieve gate`` passes (JSON on stdin / TRACESIEVE_CASE_INPUT, field
``user_message``). ``--bug`` injects a failure so there is something to catch:

    python examples/agent.py --question "Where is order ORD-1?" --bug tool_error
    python examples/agent.py --bug truncation

The exporter follows the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_PROTOCOL = grpc | http/protobuf, OTEL_RESOURCE_ATTRIBUTES).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

TOOL_SCHEMA = {"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order by id",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
DOCS = [("doc-1", "Refunds are accepted within 30 days of delivery.", 0.91),
        ("doc-2", "Orders ship within 2 business days.", 0.84)]


def exporter():
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def read_question(cli_question: str | None) -> str:
    if cli_question:
        return cli_question
    raw = os.environ.get("TRACESIEVE_CASE_INPUT")
    if raw is None and not sys.stdin.isatty():
        raw = sys.stdin.read()
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return raw or "Where is my order?"
    if isinstance(data, dict):
        return str(data.get("user_message") or "Where is my order?")
    return str(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question")
    parser.add_argument("--bug", choices=["none", "tool_error", "truncation", "bad_arguments"], default="none")
    args = parser.parse_args()
    question = read_question(args.question)

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                     "example-agent")}))
    provider.add_span_processor(BatchSpanProcessor(exporter(), schedule_delay_millis=200))
    tracer = provider.get_tracer("examples.agent")

    answer = "Refunds are accepted within 30 days of delivery [doc-1]."
    with tracer.start_as_current_span("support_agent") as root:
        root.set_attribute("openinference.span.kind", "AGENT")
        root.set_attribute("input.value", question)
        root.set_attribute("agent.name", "support")
        with tracer.start_as_current_span("retrieve_policies") as r:
            r.set_attribute("openinference.span.kind", "RETRIEVER")
            r.set_attribute("input.value", question)
            for i, (doc_id, text, score) in enumerate(DOCS):
                r.set_attribute(f"retrieval.documents.{i}.document.id", doc_id)
                r.set_attribute(f"retrieval.documents.{i}.document.content", text)
                r.set_attribute(f"retrieval.documents.{i}.document.score", score)
        arguments = {"order_id": "ORD-1"} if args.bug != "bad_arguments" else {"order": 1}
        with tracer.start_as_current_span("ChatCompletion") as llm:
            llm.set_attribute("openinference.span.kind", "LLM")
            llm.set_attribute("llm.model_name", "gpt-4o-2024-08-06")
            llm.set_attribute("llm.provider", "openai")
            llm.set_attribute("llm.tools.0.tool.json_schema", json.dumps(TOOL_SCHEMA))
            llm.set_attribute("llm.input_messages.0.message.role", "user")
            llm.set_attribute("llm.input_messages.0.message.content", question)
            llm.set_attribute("llm.output_messages.0.message.role", "assistant")
            llm.set_attribute("llm.output_messages.0.message.tool_calls.0.tool_call.function.name", "lookup_order")
            llm.set_attribute("llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
                              json.dumps(arguments))
            llm.set_attribute("llm.finish_reason", "tool_calls")
        with tracer.start_as_current_span("lookup_order") as tool:
            tool.set_attribute("openinference.span.kind", "TOOL")
            tool.set_attribute("tool.name", "lookup_order")
            tool.set_attribute("input.value", json.dumps(arguments))
            if args.bug == "tool_error":
                tool.record_exception(TimeoutError("order service timed out"))
                tool.set_status(Status(StatusCode.ERROR, "TimeoutError: order service timed out"))
            else:
                tool.set_attribute("output.value", json.dumps({"status": "delivered"}))
        with tracer.start_as_current_span("ChatCompletion") as final:
            final.set_attribute("openinference.span.kind", "LLM")
            final.set_attribute("llm.model_name", "gpt-4o-2024-08-06")
            final.set_attribute("llm.input_messages.0.message.role", "user")
            final.set_attribute("llm.input_messages.0.message.content", question)
            if args.bug == "truncation":
                answer = "Refunds are accepted within"
                final.set_attribute("llm.finish_reason", "length")
            else:
                final.set_attribute("llm.finish_reason", "stop")
            final.set_attribute("llm.output_messages.0.message.role", "assistant")
            final.set_attribute("llm.output_messages.0.message.content", answer)
            final.set_attribute("output.value", answer)
        root.set_attribute("output.value", answer)
        time.sleep(0.01)
    provider.shutdown()  # flushes: the spans are acknowledged (stored) before we exit
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
