"""The real OpenTelemetry SDK as the client: providers wired to the OTLP gRPC / HTTP exporters."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from openinference.semconv.trace import SpanAttributes
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode, Tracer


@contextmanager
def sdk_tracer(transport: str, endpoint: str, *, service: str = "test-agent", headers: Mapping[str, str] | None = None,
               compression: str | None = None, resource: Mapping[str, Any] | None = None,
               scope: str = "tests", scope_version: str | None = None,
               scope_attributes: Mapping[str, Any] | None = None) -> Iterator[Tracer]:
    """A tracer whose spans go through BatchSpanProcessor + the real OTLP exporter; flushed on exit.

    ``scope`` / ``scope_version`` / ``scope_attributes``: what the instrumentation scope the tracer reports says
    of itself (an instrumentor names it after its module).
    """
    if transport == "grpc":
        import grpc

        exporter: Any = GrpcExporter(
            endpoint=f"http://{endpoint}", insecure=True, headers=dict(headers or {}),
            compression=grpc.Compression.Gzip if compression == "gzip" else None, timeout=30,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression

        exporter = HttpExporter(
            endpoint=f"{endpoint}/v1/traces", headers=dict(headers or {}),
            compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression, timeout=30,
        )
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, **(resource or {})}),
        span_limits=SpanLimits(max_span_attributes=10_000),
    )
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=100, max_export_batch_size=256)
    provider.add_span_processor(processor)
    try:
        yield provider.get_tracer(scope, scope_version, attributes=dict(scope_attributes) if scope_attributes else None)
    finally:
        provider.force_flush(30_000)
        provider.shutdown()


def emit_agent_trace(tracer: Tracer, *, question: str = "What is our refund policy?",
                     tool_error: bool = False, session: str = "sess-1") -> str:
    """An OpenInference agent trace: AGENT -> RETRIEVER -> LLM -> TOOL -> LLM. Returns the trace id (hex)."""
    with tracer.start_as_current_span("agent") as root:
        root.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, "AGENT")
        root.set_attribute(SpanAttributes.INPUT_VALUE, question)
        root.set_attribute(SpanAttributes.SESSION_ID, session)
        with tracer.start_as_current_span("retrieve") as r:
            r.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, "RETRIEVER")
            r.set_attribute(SpanAttributes.INPUT_VALUE, question)
            for i in range(2):
                r.set_attribute(f"retrieval.documents.{i}.document.id", f"doc-{i + 1}")
                r.set_attribute(f"retrieval.documents.{i}.document.score", 0.9 - i * 0.1)
                r.set_attribute(f"retrieval.documents.{i}.document.content", f"Policy text {i}")
        with tracer.start_as_current_span("llm") as llm:
            llm.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, "LLM")
            llm.set_attribute(SpanAttributes.LLM_MODEL_NAME, "gpt-4o-2024-08-06")
            llm.set_attribute("llm.provider", "openai")
            llm.set_attribute("llm.input_messages.0.message.role", "system")
            llm.set_attribute("llm.input_messages.0.message.content", "You are a helpful support agent.")
            llm.set_attribute("llm.input_messages.1.message.role", "user")
            llm.set_attribute("llm.input_messages.1.message.content", question)
            llm.set_attribute("llm.output_messages.0.message.role", "assistant")
            llm.set_attribute("llm.output_messages.0.message.tool_calls.0.tool_call.function.name", "lookup_order")
            llm.set_attribute("llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
                              json.dumps({"order_id": "ORD-1"}))
            llm.set_attribute("llm.token_count.prompt", 120)
            llm.set_attribute("llm.token_count.completion", 12)
            llm.set_attribute("llm.finish_reason", "tool_calls")
        with tracer.start_as_current_span("lookup_order") as tool:
            tool.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, "TOOL")
            tool.set_attribute(SpanAttributes.TOOL_NAME, "lookup_order")
            tool.set_attribute(SpanAttributes.INPUT_VALUE, json.dumps({"order_id": "ORD-1"}))
            tool.set_attribute("input.mime_type", "application/json")
            if tool_error:
                tool.record_exception(RuntimeError("order service returned 502"))
                tool.set_status(Status(StatusCode.ERROR, "order service returned 502"))
            else:
                tool.set_attribute(SpanAttributes.OUTPUT_VALUE, json.dumps({"status": "shipped"}))
        with tracer.start_as_current_span("llm") as final:
            final.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, "LLM")
            final.set_attribute(SpanAttributes.LLM_MODEL_NAME, "gpt-4o-2024-08-06")
            final.set_attribute("llm.input_messages.0.message.role", "user")
            final.set_attribute("llm.input_messages.0.message.content", question)
            final.set_attribute("llm.output_messages.0.message.role", "assistant")
            final.set_attribute("llm.output_messages.0.message.content", "Refunds are accepted within 30 days [doc-1].")
            final.set_attribute(SpanAttributes.OUTPUT_VALUE, "Refunds are accepted within 30 days [doc-1].")
            final.set_attribute("llm.finish_reason", "stop")
        root.set_attribute(SpanAttributes.OUTPUT_VALUE, "Refunds are accepted within 30 days [doc-1].")
        return format(root.get_span_context().trace_id, "032x")


def emit_conversation(tracer: Any, question: str) -> tuple[str, str]:
    """A support agent's turn (AGENT -> LLM answer); returns (trace_id, the LLM span's id)."""
    with tracer.start_as_current_span("support_agent") as root:
        root.set_attribute("openinference.span.kind", "AGENT")
        root.set_attribute("input.value", question)
        with tracer.start_as_current_span("llm") as llm:
            llm.set_attribute("openinference.span.kind", "LLM")
            llm.set_attribute("llm.input_messages.0.message.role", "user")
            llm.set_attribute("llm.input_messages.0.message.content", question)
            llm.set_attribute("output.value", "Returns are accepted within 90 days.")
            llm_id = format(llm.get_span_context().span_id, "016x")
        root.set_attribute("output.value", "Returns are accepted within 90 days.")
        return format(root.get_span_context().trace_id, "032x"), llm_id


def emit_thumbs_down(tracer: Any, trace_id: str, span_id: str, *, scope: str = "annotations") -> str:
    """Post-hoc feedback as OpenInference sends it: a new EVALUATOR span linked to its target; returns its trace."""
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    target = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1))
    with tracer.start_as_current_span("user_feedback", links=[Link(target)]) as carrier:
        carrier.set_attribute("openinference.span.kind", "EVALUATOR")
        carrier.set_attribute(f"{scope}.0.annotation.name", "thumbs")
        carrier.set_attribute(f"{scope}.0.annotation.label", "thumbs_down")
        carrier.set_attribute(f"{scope}.0.annotation.annotator_kind", "HUMAN")
        return format(carrier.get_span_context().trace_id, "032x")


def emit_late_span(tracer: Any, trace_id: str, parent_id: str) -> None:
    """A span of an existing trace, exported after it (a late child of ``parent_id``)."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    parent = SpanContext(int(trace_id, 16), int(parent_id, 16), is_remote=True, trace_flags=TraceFlags(1))
    with tracer.start_as_current_span("late_step", context=set_span_in_context(NonRecordingSpan(parent))) as s:
        s.set_attribute("openinference.span.kind", "CHAIN")



def recorded_spans(record: Any, service: str = "test-agent") -> tuple[Any, list[Any]]:
    """(what ``record(tracer)`` returns, the finished SDK spans it made), exported nowhere yet: hand them to a
    real exporter's ``export`` as many times as a test needs (a retry after a lost ack re-sends the batch)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    result = record(provider.get_tracer("tests"))
    provider.shutdown()
    return result, list(memory.get_finished_spans())
