"""Columns that decode derives from attributes, checked on one decoded request (no server needed)."""

from __future__ import annotations

import json

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tracesieve.collector.decode import decode_request


def llm_span_request(**attributes: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "ChatCompletion"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_000_000_000, 2_000_000_000
    span.attributes.extend([KeyValue(key="openinference.span.kind", value=AnyValue(string_value="LLM"))]
                           + [KeyValue(key=k.replace("__", "."), value=AnyValue(string_value=v))
                              for k, v in attributes.items()])
    return request


def model_column(**attributes: str) -> str | None:
    return decode_request(llm_span_request(**attributes)).batch.column("llm_model_name")[0].as_py()


def test_a_failed_openai_call_is_attributed_to_the_model_it_requested():
    # The OpenAI instrumentor names the model from the response; a rate-limited call has none.
    params = json.dumps({"model": "gpt-4o", "max_tokens": 400})
    assert model_column(llm__invocation_parameters=params) == "gpt-4o"


def test_the_model_that_answered_wins_over_the_requested_one():
    params = json.dumps({"model": "gpt-4o"})
    assert model_column(llm__model_name="gpt-4o-2024-08-06", llm__invocation_parameters=params) == "gpt-4o-2024-08-06"


def test_invocation_parameters_that_are_not_json_leave_the_model_empty():
    assert model_column(llm__invocation_parameters='{"model": gpt-4o') is None
    assert model_column(llm__invocation_parameters=json.dumps(["model"])) is None
