"""Decoding: the compiled attribute nesting plans, and the columns decode derives from attributes."""

from __future__ import annotations

import json
import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tracesieve.collector import decode
from tracesieve.collector.decode import DecodeLimits, _AttributeWalker, decode_request, span_kind_of


def nest_three_times(flat):
    """First sight: slow walk; second: compiles a plan; third: runs the plan."""
    walker = _AttributeWalker(DecodeLimits())
    return [walker.nest(dict(flat)) for _ in range(3)]


def test_flattened_openinference_keys_become_objects_and_lists():
    flat = {"llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "hi",
            "llm.input_messages.1.message.role": "assistant", "llm.model_name": "gpt-4o", "input.value": "hi"}
    for nested in nest_three_times(flat):
        assert nested == {"llm": {"input_messages": [{"message": {"role": "user", "content": "hi"}},
                                                     {"message": {"role": "assistant"}}],
                                  "model_name": "gpt-4o"},
                          "input": {"value": "hi"}}


def test_a_leaf_that_is_also_a_prefix_is_kept_under_the_empty_key():
    for nested in nest_three_times({"a.b": 1, "a.b.c": 2}):
        assert nested == {"a": {"b": {"": 1, "c": 2}}}


def test_structured_values_never_get_keys_merged_into_them():
    flat = {"tags": ["x", "y"], "tags.0": "z", "meta": {"k": 1}, "meta.k.j": 2}
    for nested in nest_three_times(flat):
        assert nested == decode._AttributeWalker(DecodeLimits()).nest_slowly(flat)
        assert nested["tags"] == ["x", "y"] and nested["meta"] == {"k": 1}


def test_the_same_keys_with_a_structured_value_in_a_new_place_get_their_own_plan():
    walker = _AttributeWalker(DecodeLimits())
    scalar = {"a": 1, "a.b": 2}
    structured = {"a": [1], "a.b": 2}
    for _ in range(3):
        assert walker.nest(dict(scalar)) == {"a": {"": 1, "b": 2}}
        assert walker.nest(dict(structured)) == {"a": [1], "a.b": 2}


def test_plans_are_made_per_key_set_and_values_are_not_shared_between_calls():
    walker = _AttributeWalker(DecodeLimits())
    first = [walker.nest({"k.0": i, "k.1": str(i)}) for i in range(4)]
    assert first == [{"k": [i, str(i)]} for i in range(4)]
    first[3]["k"].append("changed")
    assert walker.nest({"k.0": 9, "k.1": "9"}) == {"k": [9, "9"]}


def test_keys_that_look_like_code_are_only_data():
    flat = {"__import__('os').system('false')": 1, "a.}'\"\\n.0": 2, "a.}'\"\\n.1": 3, "": 4, ".": 5, "..x": 6}
    reference = _AttributeWalker(DecodeLimits()).nest_slowly(dict(flat))
    for nested in nest_three_times(flat):
        assert nested == reference


def test_very_deep_keys_fall_back_to_the_walk():
    flat = {".".join(["d"] * 300): 1, "x": 2}
    reference = _AttributeWalker(DecodeLimits()).nest_slowly(dict(flat))
    for nested in nest_three_times(flat):
        assert nested == reference


def test_random_key_sets_nest_the_same_through_plans_and_the_walk():
    rng = random.Random(7)
    segments = ["a", "b", "0", "1", "2", "5", "msg", "", "10"]
    for _ in range(400):
        keys = {".".join(rng.choice(segments) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 9))}
        flat = {}
        for key in sorted(keys, key=lambda _k: rng.random()):
            roll = rng.random()
            flat[key] = [1, 2] if roll < 0.1 else ({"z": 1} if roll < 0.2 else rng.randint(0, 9))
        reference = _AttributeWalker(DecodeLimits()).nest_slowly(dict(flat))
        for nested in nest_three_times(flat):
            assert nested == reference, flat

# --------------------------------------------------------------------------- derived columns


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


def test_a_genai_tool_span_without_gen_ai_tool_name_takes_the_tool_from_its_span_name():
    """The GenAI conventions name an execute_tool span ``execute_tool {gen_ai.tool.name}``; the attribute is only
    recommended, and without it tool_name was empty. Another span's name is never taken for a tool."""
    def tool_column(name: str, op: str = "execute_tool") -> str | None:
        request = ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, name
        span.start_time_unix_nano, span.end_time_unix_nano = 1_000_000_000, 2_000_000_000
        span.attributes.append(KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value=op)))
        return decode_request(request).batch.column("tool_name")[0].as_py()

    assert tool_column("execute_tool get_weather") == "get_weather"
    assert tool_column("execute_tool") is None and tool_column("lookup") is None
    assert tool_column("execute_tool gpt-4o", op="chat") is None


def test_a_model_call_offered_tools_without_an_operation_name_is_an_llm_span_not_a_tool():
    """With no gen_ai.operation.name, any gen_ai.tool.* key made the span a TOOL, gen_ai.tool.definitions (the
    tools a chat call offers the model) included."""
    kinds = [span_kind_of({"gen_ai.system": "openai", "gen_ai.tool.definitions": "[]"}),
             span_kind_of({"gen_ai.tool.definitions": "[]", "gen_ai.tool.name": "lookup"}),
             span_kind_of({"gen_ai.tool.call.arguments": "{}"})]
    assert kinds == ["LLM", "TOOL", "TOOL"]


def test_a_custom_genai_operation_takes_its_kind_from_its_keys_and_a_known_one_always_wins():
    """Custom gen_ai.operation.name values are allowed; one with gen_ai.agent.* keys was an LLM span."""
    assert span_kind_of({"gen_ai.operation.name": "run_crew", "gen_ai.agent.name": "planner"}) == "AGENT"
    assert span_kind_of({"gen_ai.operation.name": "call_function", "gen_ai.tool.name": "lookup"}) == "TOOL"
    assert span_kind_of({"gen_ai.operation.name": "chat.completions", "gen_ai.request.model": "m"}) == "LLM"
    assert span_kind_of({"gen_ai.operation.name": "chat", "gen_ai.agent.name": "planner"}) == "LLM"


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


def test_plans_are_kept_apart_for_walkers_with_different_depth_limits():
    flat = {"a.b.c.d.e.f": 1, "a.b.x": 2}
    shallow, deep = _AttributeWalker(DecodeLimits(max_nesting_depth=3)), _AttributeWalker(DecodeLimits())
    for _ in range(3):
        assert shallow.nest(dict(flat)) == shallow.nest_slowly(dict(flat))
        assert deep.nest(dict(flat)) == deep.nest_slowly(dict(flat))
    assert shallow.nest(dict(flat)) != deep.nest(dict(flat))


def finish_column(request: ExportTraceServiceRequest) -> str | None:
    return decode_request(request).batch.column("llm_finish_reason")[0].as_py()


def test_the_finish_reason_column_reads_every_place_the_conventions_put_it():
    """The truncation rule reads these too; the column used to stay NULL for the last four."""
    messages = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "Once"}],
                            "finish_reason": "length"}])
    assert finish_column(llm_span_request(llm__finish_reason="stop")) == "stop"
    assert finish_column(llm_span_request(gen_ai__output__messages=messages)) == "length"
    assert finish_column(llm_span_request(gen_ai__completion__0__finish_reason="max_tokens")) == "max_tokens"
    response = json.dumps({"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "length"}]})
    assert finish_column(llm_span_request(output__value=response)) == "length"
    assert finish_column(llm_span_request(output__value=json.dumps({"stop_reason": "max_tokens"}))) == "max_tokens"
    assert finish_column(llm_span_request(output__value="The answer is 42.")) is None

    request = llm_span_request()
    event = request.resource_spans[0].scope_spans[0].spans[0].events.add(name="gen_ai.choice", time_unix_nano=1)
    event.attributes.extend([KeyValue(key="index", value=AnyValue(int_value=0)),
                             KeyValue(key="finish_reason", value=AnyValue(string_value="max_tokens"))])
    assert finish_column(request) == "max_tokens"


def test_a_gen_ai_choice_event_with_max_tokens_is_truncation():
    from tracesieve.collector.config import load_config
    from tracesieve.collector.span_stage import run_inline
    from tracesieve.processors.detectors import DetectorsProcessor
    from tracesieve.storage.store import traces_from_table

    request = llm_span_request()
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="gen_ai.system", value=AnyValue(string_value="anthropic"))
    event = span.events.add(name="gen_ai.choice", time_unix_nano=1)
    event.attributes.add(key="finish_reason", value=AnyValue(string_value="max_tokens"))
    config = load_config(None, db_path="unused.duckdb")
    rows = run_inline(request, config.decode_limits, config.span_processors).batch
    detectors = next(p for p in config.trace_processors if isinstance(p, DetectorsProcessor))
    found = detectors.findings_by_trace(traces_from_table(rows, [span.trace_id.hex()]))
    assert [f.failure_mode for f in found[span.trace_id.hex()]] == ["truncation"]


def test_a_genai_tool_calls_json_arguments_and_result_are_marked_json_and_plain_text_is_not():
    """OpenInference says what input.value is in input.mime_type; a GenAI tool span's arguments and result,
    stored in input_value / output_value, had no mime type, so an operator could not tell JSON from text."""
    def io_columns(arguments: str, result: str) -> tuple[str | None, str | None]:
        request = ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "execute_tool lookup_order"
        span.start_time_unix_nano, span.end_time_unix_nano = 1_000_000_000, 2_000_000_000
        span.attributes.extend([KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in (
            ("gen_ai.operation.name", "execute_tool"), ("gen_ai.tool.call.arguments", arguments),
            ("gen_ai.tool.call.result", result))])
        batch = decode_request(request).batch
        return batch.column("input_mime_type")[0].as_py(), batch.column("output_mime_type")[0].as_py()

    assert io_columns('{"order_id": "ORD-9"}', ' [{"id": 1}]') == ("application/json", "application/json")
    assert io_columns("ORD-9", "shipped") == (None, None)
    assert io_columns('{"order_id": "ORD-9', "[doc-1] says so") == (None, None)  # cut JSON, a citation


def test_a_service_name_sent_as_a_number_is_the_service_name_as_text():
    """service.name is a string by the conventions, but a resource that sent it as an int (a build number
    for a name) left service_name NULL: the spans fell out of every per-service query."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(int_value=7)))
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "agent"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_000_000_000, 2_000_000_000
    assert decode_request(request).batch.column("service_name")[0].as_py() == "7"
