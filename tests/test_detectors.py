"""The detectors processor: one behaviour per test, OpenInference and GenAI forms, near misses beside hits."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import pytest

from detector_builders import (
    EMAIL_TOOL, WEATHER_TOOL, llm, make_span, make_trace, retriever, store_with, tool, unflatten,
)
from tracesieve.processors.base import TraceBatch, TraceProcessor
from tracesieve.processors.detectors import DetectorsConfig, DetectorsProcessor
from tracesieve.processors.rules import BUILTIN_DETECTORS, classify_error
from tracesieve.storage.errors import ConfigError
from tracesieve.storage.schema import BLAST_RADII, FAILURE_MODES, SEVERITIES


class NoStore:
    """A StoreReader for batches without operator rules: it must never be asked."""

    def query(self, sql: str, params: Sequence[Any] = (), *, time_limit: float | None = None) -> list[dict[str, Any]]:
        raise AssertionError("no operator rule configured, the store must not be queried")


def processor(**options: Any) -> DetectorsProcessor:
    return DetectorsProcessor(DetectorsConfig.from_options(options, "processors.detectors"), strict=True)


def detect(trace: list[dict[str, Any]], store: Any = None, **options: Any):
    batch = TraceBatch(traces={trace[0]["trace_id"]: trace})
    return processor(**options).process_traces(batch, store or NoStore()).detections


def modes(trace, **options) -> list[str]:
    return sorted(d.failure_mode for d in detect(trace, **options))


def only(trace, mode: str, **options):
    found = [d for d in detect(trace, **options) if d.failure_mode == mode]
    assert len(found) == 1, found
    return found[0]


# ====================================================================== builders


def test_unflatten_builds_lists_from_digit_segments_with_gaps():
    nested = unflatten({"llm.input_messages.0.message.content": "hi", "llm.input_messages.2.message.role": "user",
                        "gen_ai.operation.name": "chat"})
    assert nested["llm"]["input_messages"][0]["message"]["content"] == "hi"
    assert nested["llm"]["input_messages"][1] is None
    assert nested["gen_ai"]["operation"]["name"] == "chat"


def test_processor_is_a_trace_processor_with_decision_wait_in_seconds():
    p = DetectorsProcessor.from_config({"decision_wait": "750ms"}, path="processors.detectors")
    assert isinstance(p, TraceProcessor) and p.kind == "trace"
    assert p.decision_wait == pytest.approx(0.75)
    assert DetectorsProcessor.from_config({}, path="processors.detectors").decision_wait == 5.0
    p.shutdown()
    p.shutdown()


def test_every_failure_mode_has_a_builtin_detector():
    assert {mode for mode, _ in BUILTIN_DETECTORS.values()} == set(FAILURE_MODES)
    assert all(definition.strip() for _, definition in BUILTIN_DETECTORS.values())


# ====================================================================== tool_invocation


@pytest.mark.parametrize("genai", [False, True])
def test_tool_error_is_a_tool_invocation_failure(genai):
    bad = tool(status="ERROR", status_message="ConnectionError: weather API down", genai=genai)
    d = only(make_trace(llm(None, tool_calls=[("get_weather", '{"city": "Paris"}')], tools=[WEATHER_TOOL], finish="tool_calls",
                            genai=genai), bad, llm("It is 18C in Paris.", genai=genai)), "tool_invocation")
    assert (d.detector, d.span_id) == ("tool_error", bad["span_id"])
    assert "weather API down" in d.message and d.evidence["tool"] == "get_weather"


def test_exception_event_on_an_ok_tool_span_is_a_tool_invocation_failure():
    bad = tool(exception=("TimeoutError", "read timed out"))
    assert only(make_trace(bad), "tool_invocation").evidence["exceptions"][0]["type"] == "TimeoutError"


def test_tool_error_retried_successfully_is_still_a_tool_invocation_failure():
    bad, retry = tool(status="ERROR", status_message="503"), tool()
    d = only(make_trace(bad, retry, llm("18C in Paris.")), "tool_invocation")
    assert d.span_id == bad["span_id"]
    assert d.evidence["retried_successfully"] is True and d.evidence["retry_span_id"] == retry["span_id"]


def test_langgraph_interrupt_event_is_not_a_tool_failure():
    t = tool(exception=("langgraph.errors.GraphInterrupt", "waiting for human"))
    assert modes(make_trace(t)) == []


def test_tool_error_takes_the_tool_blast_radius_from_config():
    bad = tool("refund_payment", '{"amount": 10}', status="ERROR", status_message="declined")
    d = only(make_trace(bad), "tool_invocation", blast_radius={"refund_payment": "reversible_write"})
    assert (d.severity, d.blast_radius) == ("P2", "reversible_write")


@pytest.mark.parametrize("genai", [False, True])
def test_every_finding_on_a_tool_span_takes_that_tools_blast_radius(genai):
    """A slow send_email took the latency default (internal_visible) while its error, bad arguments and loop
    took its configured class; a TOOL span named by its span name alone took none. All are that tool's findings."""
    options = {"blast_radius": {"send_email": "irreversible_write"}}
    slow = tool("send_email", '{"to": "<EMAIL>"}', genai=genai, duration_ms=11_000)
    assert [(d.failure_mode, d.blast_radius) for d in detect(make_trace(slow), **options)] == [
        ("latency_breach", "irreversible_write")]
    unnamed = make_span("TOOL", name="send_email", status="ERROR", status_message="SMTP 550")
    assert [(d.failure_mode, d.blast_radius) for d in detect(make_trace(unnamed), **options)] == [
        ("tool_invocation", "irreversible_write")]
    bad_args = make_span("TOOL", name="send_email", input='{"to": ', input_mime="application/json")
    assert [(d.failure_mode, d.blast_radius) for d in detect(make_trace(bad_args), **options)
            if d.failure_mode == "tool_argument"] == [("tool_argument", "irreversible_write")]


def test_blast_radius_takes_a_default_per_failure_mode_and_a_tool_class_still_wins(tmp_path):
    """The issue: blast_radius defaults per mode and per tool; only per tool was configurable."""
    options = {"blast_radius": {"tool_invocation": "no_external_effect", "hallucination": "internal_visible",
                                "refund_payment": "reversible_write"},
               "rules": [rule("empty_tool_result", GOOD_SQL)]}
    trace = make_trace(tool("lookup", status="ERROR"), tool("refund_payment", status="ERROR"),
                       tool("search_kb", '{"q": "x"}', result="[]"), llm("See [doc-9]."))
    p = processor(**options)
    ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    assert sorted((d.detector, d.evidence.get("tool"), d.blast_radius) for d in ds) == [
        ("empty_tool_result", "search_kb", "no_external_effect"),  # a rule naming none takes its mode's
        ("tool_error", "lookup", "no_external_effect"),
        ("tool_error", "refund_payment", "reversible_write"),
        ("uncited_id", None, "internal_visible"),
    ]
    assert p.config.blast_radius == {"refund_payment": "reversible_write"}  # modes arm no blast_radius_breach


# ====================================================================== tool_argument


@pytest.mark.parametrize("genai", [False, True])
def test_llm_tool_call_breaking_the_declared_schema_is_a_tool_argument_failure(genai):
    call = llm(None, tool_calls=[("get_weather", {"city": "Paris", "unit": "kelvin"})], tools=[WEATHER_TOOL],
               finish="tool_calls", genai=genai)
    d = only(make_trace(call), "tool_argument")
    assert (d.detector, d.span_id) == ("tool_schema", call["span_id"])
    assert d.evidence["errors"][0]["path"] == "$.unit" and "kelvin" in d.evidence["arguments"]


def test_llm_tool_call_with_invalid_json_arguments_is_a_tool_argument_failure():
    call = llm(None, tool_calls=[("get_weather", '{"city": "Paris"')], tools=[WEATHER_TOOL], finish="tool_calls")
    d = only(make_trace(call), "tool_argument")
    assert d.detector == "tool_args_json" and d.evidence["arguments"] == '{"city": "Paris"'


def test_genai_tool_call_with_unparseable_string_arguments_is_a_tool_argument_failure():
    call = llm(None, tool_calls=[("get_weather", "city=Paris")], tools=[WEATHER_TOOL], finish="tool_call", genai=True)
    assert only(make_trace(call), "tool_argument").detector == "tool_args_json"


@pytest.mark.parametrize("genai", [False, True])
def test_tool_span_arguments_are_checked_against_the_schema_declared_on_llm_spans(genai):
    decl = llm("Let me check.", tools=[WEATHER_TOOL], genai=genai)
    run = tool("get_weather", '{"town": "Paris"}', genai=genai)
    d = only(make_trace(decl, run), "tool_argument")
    assert (d.detector, d.span_id) == ("tool_schema", run["span_id"])
    assert d.evidence["source"] == ("gen_ai.tool.call.arguments" if genai else "input.value")


def test_a_tool_span_known_by_its_span_name_alone_is_checked_against_the_declared_schema():
    """An OpenInference TOOL span without ``tool.name`` is named for its tool; its arguments broke the declared
    schema unnoticed because the schema was looked up by ``tool.name`` only."""
    run = make_span("TOOL", name="get_weather", input='{"town": "Paris"}', input_mime="application/json")
    d = only(make_trace(llm("Let me check.", tools=[WEATHER_TOOL]), run), "tool_argument")
    assert (d.detector, d.span_id) == ("tool_schema", run["span_id"])


def test_tool_parameters_attribute_holds_arguments_too():
    run = tool("get_weather", None, extra={"tool.parameters": '{"city": 42}'})
    assert only(make_trace(llm(tools=[WEATHER_TOOL]), run), "tool_argument").evidence["source"] == "tool.parameters"


def test_tool_parameters_holding_a_schema_is_not_taken_for_arguments():
    schema = json.dumps(WEATHER_TOOL["function"]["parameters"])
    run = tool("get_weather", '{"city": "Paris"}', extra={"tool.parameters": schema})
    assert modes(make_trace(llm(tools=[WEATHER_TOOL]), run)) == []


def test_bad_call_requested_and_executed_is_reported_once_on_the_llm_span():
    call = llm(None, tool_calls=[("get_weather", '{"city": 7}')], tools=[WEATHER_TOOL], finish="tool_calls")
    run = tool("get_weather", '{"city": 7}')
    assert [d.span_id for d in detect(make_trace(call, run)) if d.failure_mode == "tool_argument"] == [call["span_id"]]


def test_two_bad_calls_on_one_llm_span_are_one_detection_listing_both():
    call = llm(None, tool_calls=[("get_weather", '{"city": 1}'), ("get_weather", '{"unit": "c"}')],
               tools=[WEATHER_TOOL], finish="tool_calls")
    d = only(make_trace(call), "tool_argument")
    assert len(d.evidence["calls"]) == 2 and "+1 more" in d.message


def test_bad_arguments_of_a_call_without_a_tool_name_say_which_call_not_none():
    """The message read "arguments requested for tool None are not valid JSON"."""
    asked = llm(None, tool_calls=[(None, '{"city": ')], finish="tool_calls")
    ran = make_span("TOOL", name="weather_lookup", input='{"town": ', input_mime="application/json")
    messages = sorted(d.message for d in detect(make_trace(asked, ran)) if d.failure_mode == "tool_argument")
    assert messages == ["arguments received for span weather_lookup are not valid JSON (Expecting value: line 1 column 10 (char 9))",
                        "arguments requested for an unnamed tool are not valid JSON (Expecting value: line 1 column 10 (char 9))"]


def test_valid_arguments_are_not_a_tool_argument_failure():
    call = llm(None, tool_calls=[("get_weather", '{"city": "Paris", "unit": "c"}')], tools=[WEATHER_TOOL], finish="tool_calls")
    assert modes(make_trace(call, tool("get_weather", '{"city": "Paris", "unit": "c"}'))) == []


def test_pii_placeholder_does_not_break_a_pattern_in_the_schema():
    call = llm(None, tool_calls=[("send_email", '{"to": "<EMAIL:3f9a1c>", "body": "hi"}')], tools=[EMAIL_TOOL],
               finish="tool_calls")
    assert modes(make_trace(call)) == []


def test_broken_json_arguments_of_a_tool_span_without_a_mime_type_are_a_tool_argument_failure():
    """OpenInference TOOL spans often leave input.mime_type out; ``{"order_id": 5`` was then taken for plain
    text and never judged. Plain text, and LangChain's Python repr of the arguments, still are not judged."""
    def untyped(args: str) -> dict[str, Any]:
        return make_span("TOOL", name="lookup_order", attrs={"tool.name": "lookup_order"}, input=args)

    run = untyped('{"order_id": 5')
    d = only(make_trace(run), "tool_argument")
    assert (d.detector, d.span_id, d.evidence["source"]) == ("tool_args_json", run["span_id"], "input.value")
    for text in ('{"order_id": 5}', "{'order_id': 5}", "order 5 for {customer}", "Paris"):
        assert modes(make_trace(untyped(text))) == [], text


def test_a_number_the_sanitizer_replaced_does_not_break_an_integer_type_in_the_schema():
    """{"phone": 4155550132} is stored {"phone": "<PHONE>"}: the placeholder is a string where the schema wants an
    integer, but the sanitizer put it there. Anything else of the wrong type still is a finding."""
    dial = {"type": "function", "function": {"name": "dial", "parameters": {
        "type": "object", "properties": {"phone": {"type": "integer"}}, "required": ["phone"]}}}
    replaced = tool("dial", '{"phone": "<PHONE:3f9a1c>"}')
    assert modes(make_trace(llm(tools=[dial]), replaced)) == []
    wrong = tool("dial", '{"phone": "call me"}')
    assert only(make_trace(llm(tools=[dial]), wrong), "tool_argument").detector == "tool_schema"


def test_undeclared_tool_and_plain_text_tool_input_are_not_judged():
    run = tool("search", "refund policy for <EMAIL>", result="Refunds within 30 days.")
    run["input_mime_type"] = "text/plain"
    assert modes(make_trace(llm(tools=[WEATHER_TOOL]), run)) == []


# ====================================================================== retrieval_miss


def test_a_retriever_whose_json_output_lists_results_but_records_no_documents_is_no_retrieval_miss():
    """No retrieval.documents keys but an output.value listing what came back: it returned something, so neither
    "returned no documents" nor a fact-stating answer right after it is a finding. An empty output still is."""
    answer = llm("The Model X200 warranty covers parts and labour for 36 months from the date of purchase.")
    for out in ('[{"id": "kb-7", "text": "X200 warranty: 36 months"}]', '{"documents": [{"page_content": "36 months"}]}'):
        r = make_span("RETRIEVER", name="kb_search", input="x200 warranty", output=out)
        assert modes(make_trace(r, answer)) == [], out
    listed = make_span("RETRIEVER", name="kb_search", input="x200 warranty", output='[{"id": "doc-7", "text": "36 months"}]')
    assert modes(make_trace(listed, llm("The X200 warranty lasts 36 months [doc-7]."))) == []
    assert modes(make_trace(listed, llm("It lasts 36 months [doc-9]."))) == ["hallucination"]
    for out in ('{"documents": []}', "[]", "No documents found."):
        r = make_span("RETRIEVER", name="kb_search", input="x200 warranty", output=out)
        assert "retrieval_miss" in modes(make_trace(r, answer)), out


@pytest.mark.parametrize("genai", [False, True])
def test_retriever_with_no_documents_is_a_retrieval_miss(genai):
    r = retriever([], genai=genai)
    d = only(make_trace(r, llm("I could not find anything about that.", genai=genai)), "retrieval_miss")
    assert (d.detector, d.span_id) == ("empty_retrieval", r["span_id"])


@pytest.mark.parametrize("genai", [False, True])
def test_all_scores_under_the_floor_is_a_retrieval_miss(genai):
    r = retriever([("doc-1", 0.11), ("doc-2", 0.08)], genai=genai)
    d = only(make_trace(r, llm("Refunds take 30 days [doc-1].", genai=genai)), "retrieval_miss", retrieval_min_score=0.3)
    assert d.detector == "low_score_retrieval" and d.evidence["scores"] == [0.11, 0.08]


def test_one_score_over_the_floor_is_not_a_retrieval_miss():
    r = retriever([("doc-1", 0.11), ("doc-2", 0.5)])
    assert modes(make_trace(r, llm("Refunds take 30 days [doc-2].")), retrieval_min_score=0.3) == []


@pytest.mark.parametrize("genai", [False, True])
def test_the_default_floor_finds_a_retrieval_whose_every_score_is_low(genai):
    """DESIGN: "every score is under the threshold" with no threshold configured; scores were judged only
    once an operator set retrieval_min_score."""
    r = retriever([("doc-1", 0.12), ("doc-2", 0.05)], genai=genai)
    d = only(make_trace(r, llm("Refunds take 30 days [doc-1].", genai=genai)), "retrieval_miss")
    assert (d.detector, d.span_id, d.evidence["min_score"]) == ("low_score_retrieval", r["span_id"], 0.3)
    assert modes(make_trace(retriever([("doc-1", 0.62), ("doc-2", 0.2)], genai=genai),
                            llm("Refunds take 30 days [doc-1].", genai=genai))) == []


def test_scores_are_not_judged_with_the_floor_turned_off():
    assert modes(make_trace(retriever([("doc-1", 0.01)]), llm("See [doc-1].")), retrieval_min_score=None) == []


def test_a_retriever_whose_output_openinference_hid_is_not_a_retrieval_miss():
    """OPENINFERENCE_HIDE_OUTPUTS: "__REDACTED__" is present but unknown; it was read as no documents."""
    hidden = make_span("RETRIEVER", name="retrieve", input="refund policy", output="__REDACTED__")
    assert modes(make_trace(hidden, llm("Refunds are accepted within 30 days of purchase for all items bought."))) == []


def test_genai_retriever_that_did_not_capture_documents_is_not_a_retrieval_miss():
    assert modes(make_trace(retriever([], genai=True, record_documents=False), llm("Refunds take 30 days."))) == []


# ====================================================================== hallucination


@pytest.mark.parametrize("genai", [False, True])
def test_citing_an_id_that_was_not_retrieved_is_hallucination(genai):
    answer = llm("Refunds take 30 days [doc-1], shipping is free [doc-99].", genai=genai)
    d = only(make_trace(retriever(genai=genai), answer), "hallucination")
    assert (d.detector, d.span_id, d.evidence["missing_ids"]) == ("uncited_id", answer["span_id"], ["doc-99"])
    assert (d.severity, d.blast_radius) == ("P1", "customer_visible")


def test_a_capitalised_citation_is_read_too():
    """[DOC-7] and [Doc-1] are the default pattern's ids as much as [doc-7]: DOC-7 was never checked."""
    d = only(make_trace(retriever([("doc-1", 0.9)]), llm("Refunds take 30 days [Doc-1][DOC-7].")), "hallucination")
    assert d.evidence["missing_ids"] == ["DOC-7"]


def test_citing_only_retrieved_ids_is_not_hallucination():
    assert modes(make_trace(retriever(), llm("Refunds take 30 days [doc-1][doc-2]."))) == []


def test_an_id_returned_by_a_tool_counts_as_retrieved():
    search = tool("search_kb", '{"q": "refunds"}', result='[{"id": "doc-7", "text": "30 days"}]')
    assert modes(make_trace(search, llm("Refunds take 30 days [doc-7]."))) == []


def test_a_custom_citation_pattern_finds_other_id_shapes():
    answer = llm("Refunds take 30 days (source: kb-42).")
    d = only(make_trace(retriever([("kb-1", 0.9)]), answer), "hallucination", citation_pattern=r"\(source: ([\w-]+)\)")
    assert d.evidence["missing_ids"] == ["kb-42"]


def test_a_citation_pattern_without_a_group_takes_the_id_inside_its_brackets():
    """With no group the whole match is the id: '[KB-1]' was compared with the retrieved 'KB-1' and never matched."""
    answer = llm("Refunds take 30 days [KB-1] (see also [KB-7, KB-42]).")
    trace = make_trace(retriever([("KB-1", 0.9), ("KB-7", 0.8)]), answer)
    d = only(trace, "hallucination", citation_pattern=r"\[KB-\d+(?:,\s*KB-\d+)*\]")
    assert d.evidence["missing_ids"] == ["KB-42"]


def test_the_same_missing_id_in_the_llm_output_and_the_root_output_is_one_detection():
    answer_text = "Shipping is free [doc-99]."
    root = make_span("AGENT", name="agent", output=answer_text)
    trace = make_trace(retriever(), llm(answer_text), root=root)
    assert len([d for d in detect(trace) if d.failure_mode == "hallucination"]) == 1


@pytest.mark.parametrize("genai", [False, True])
def test_a_substantive_answer_right_after_an_empty_retrieval_is_hallucination(genai):
    answer = llm("Our premium plan includes unlimited seats, a dedicated manager, 24/7 phone support and a "
                 "99.99% uptime guarantee backed by service credits.", genai=genai)
    ds = [d for d in detect(make_trace(retriever([], genai=genai), answer)) if d.failure_mode == "hallucination"]
    assert [(d.detector, d.span_id) for d in ds] == [("answer_after_empty_retrieval", answer["span_id"])]


@pytest.mark.parametrize("text", ["The warranty lasts 24 months and covers water damage.",
                                  "Your plan includes unlimited seats and a dedicated account manager."])
def test_a_short_factual_answer_after_an_empty_retrieval_is_hallucination_too(text):
    answer = llm(text)
    assert modes(make_trace(retriever([]), answer)) == ["hallucination", "retrieval_miss"]


@pytest.mark.parametrize("text", ["Could you tell me which order you mean, and its number?",
                                  "Sorry, let me check that for you.", "No results for that."])
def test_a_question_or_a_short_non_answer_after_an_empty_retrieval_is_not_hallucination(text):
    assert modes(make_trace(retriever([]), llm(text))) == ["retrieval_miss"]


@pytest.mark.parametrize("text", [
    "I wasn't able to find anything about the premium plan in our documentation.",
    "I was not able to find any details about the premium plan in our help center.",
    "Sorry, I could not locate any documents about the premium plan for your account.",
    "Unfortunately I found nothing about the premium plan in the knowledge base today.",
    "I searched our knowledge base but found no matching articles about the premium plan.",
])
def test_saying_nothing_was_found_in_other_words_after_an_empty_retrieval_is_not_hallucination(text):
    """An agent that says it found nothing ("wasn't able to find", "could not locate", "found nothing")
    answered honestly; only the empty retrieval itself is a failure."""
    assert modes(make_trace(retriever([]), llm(text))) == ["retrieval_miss"]


def test_saying_nothing_was_found_after_an_empty_retrieval_is_not_hallucination():
    answer = llm("I'm sorry, I couldn't find any information about the premium plan in our knowledge base right now.")
    assert modes(make_trace(retriever([]), answer)) == ["retrieval_miss"]


def test_an_answer_grounded_by_a_later_tool_after_an_empty_retrieval_is_not_hallucination():
    answer = llm("Our premium plan includes unlimited seats, a dedicated manager, 24/7 phone support and a "
                 "99.99% uptime guarantee backed by service credits.")
    web = tool("web_search", '{"q": "premium plan"}', result="Premium: unlimited seats, dedicated manager ...")
    assert modes(make_trace(retriever([]), web, answer)) == ["retrieval_miss"]


# ====================================================================== format_violation


@pytest.mark.parametrize("genai", [False, True])
def test_declared_json_answer_that_does_not_parse_is_a_format_violation(genai):
    answer = llm("Sure! Here is the JSON: {name: Paris}", response_format={"type": "json_object"}, genai=genai)
    d = only(make_trace(answer), "format_violation")
    assert (d.detector, d.span_id) == ("json_output", answer["span_id"])


def test_json_answer_breaking_the_response_format_schema_is_a_format_violation():
    rf = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}}, "required": ["city", "temp"]}}}
    d = only(make_trace(llm('{"city": "Paris"}', response_format=rf)), "format_violation")
    assert d.detector == "output_schema" and "temp" in d.evidence["errors"][0]["message"]


@pytest.mark.parametrize("mime", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_output_mime_type_json_that_does_not_parse_is_a_format_violation(mime):
    """With a charset (what HTTP frameworks write) or in capitals the declaration was not recognised."""
    step = make_span("CHAIN", name="extract", output="{'city': 'Paris'}", output_mime=mime)
    assert only(make_trace(step), "format_violation").evidence["declared_by"] == "output.mime_type"


def test_valid_declared_json_is_not_a_format_violation():
    rf = {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object", "required": ["city"]}}}
    trace = make_trace(llm('{"city": "Paris"}', response_format=rf), llm('```json\n{"a": 1}\n```', genai=True,
                       response_format="json"))
    assert modes(trace) == []


def test_text_answer_without_declared_json_is_not_a_format_violation():
    assert modes(make_trace(llm("{not json at all"))) == []


def test_json_cut_by_the_token_limit_is_truncation_not_format_violation():
    assert modes(make_trace(llm('{"items": [1, 2,', response_format={"type": "json_object"}, finish="length"))) == ["truncation"]


def test_output_cut_by_the_collector_size_limit_is_not_a_format_violation():
    step = make_span("CHAIN", output='{"a": "xxxx…[truncated 2048 bytes]', output_mime="application/json")
    assert modes(make_trace(step)) == []


# ====================================================================== truncation


@pytest.mark.parametrize("genai,finish", [(False, "length"), (True, "length"), (False, "max_tokens"), (True, "MAX_TOKENS")])
def test_token_limit_finish_reason_is_truncation(genai, finish):
    span = llm("The refund process has three steps: first you", finish=finish, genai=genai)
    d = only(make_trace(span), "truncation")
    assert (d.detector, d.span_id) == ("finish_length", span["span_id"])
    assert finish in [r["value"] for r in d.evidence["finish_reasons"]]


def test_truncation_read_from_the_provider_response_in_output_value():
    span = llm(None, finish=None, output='{"id": "x", "choices": [{"index": 0, "finish_reason": "length", '
                                          '"message": {"role": "assistant", "content": "The steps are"}}]}',
               output_mime="application/json")
    assert only(make_trace(span), "truncation").evidence["finish_reasons"][0]["where"].startswith("output.value")


def test_truncation_read_from_genai_output_messages_only():
    span = llm("Partial", genai=True, finish=None,
               extra={"gen_ai.output.messages": json.dumps([{"role": "assistant", "finish_reason": "length",
                                                             "parts": [{"type": "text", "content": "Partial"}]}])})
    assert modes(make_trace(span)) == ["truncation"]


@pytest.mark.parametrize("finish", ["stop", "tool_calls", "end_turn", "STOP"])
def test_normal_finish_reasons_are_not_truncation(finish):
    assert modes(make_trace(llm("Done.", finish=finish))) == []


# ====================================================================== refusal_overreach


@pytest.mark.parametrize("genai", [False, True])
def test_refusing_while_tools_were_available_is_refusal_overreach(genai):
    answer = llm("I'm sorry, but I can't help with checking the weather.", tools=[WEATHER_TOOL], genai=genai)
    d = only(make_trace(answer), "refusal_overreach")
    assert (d.detector, d.span_id) == ("refusal", answer["span_id"]) and d.evidence["tools_available"] == ["get_weather"]


def test_refusing_with_retrieved_context_is_refusal_overreach():
    d = only(make_trace(retriever(), llm("I don't have access to our refund policy.")), "refusal_overreach")
    assert d.evidence["documents_retrieved"] == 2


@pytest.mark.parametrize("text", ["I'm sorry, I cannot help you with that.", "I cannot fulfill this request.",
                                  "Sorry, I can't assist.", "I'm not able to provide account details.",
                                  "As an AI, I cannot share personal data."])
def test_common_refusals_beyond_the_first_phrasings_are_refusal_overreach(text):
    """DESIGN: apology/cannot phrasing. These refusals slipped through ("i cannot help with" needs its "with")."""
    assert modes(make_trace(llm(text, tools=[WEATHER_TOOL]))) == ["refusal_overreach"]


@pytest.mark.parametrize("text", [
    "Sorry, I'm not able to answer that.", "I am not able to answer questions about the weather.",
    "I can not help with that.", "I'm sorry, I can't do this.", "Unfortunately, I'm not able to share that information.",
    "I won't be able to answer that.", "I will not be able to help you with that.", "I'm unable to do that.",
    "I'm sorry, but I cannot process this request.", "I can't discuss that.", "Sorry, I cannot fulfil that request.",
    "I'm not able to comply with that.", "I won't be able to provide that.",
])
def test_a_refusal_in_any_of_its_usual_wordings_is_refusal_overreach(text):
    """The built-in phrases had each verb with only some subjects: "I'm unable to answer" was a refusal,
    "I'm not able to answer" was not. Every refusing subject now goes with every verb."""
    assert modes(make_trace(retriever(), llm(text))) == ["refusal_overreach"]


@pytest.mark.parametrize("text", ["I can help you with that: it is 18C in Paris.", "Paris is sunny; I can share more."])
def test_an_answer_that_can_help_is_no_refusal(text):
    assert modes(make_trace(llm(text, tools=[WEATHER_TOOL]))) == []


def test_refusing_without_tools_or_context_is_not_refusal_overreach():
    assert modes(make_trace(llm("I can't help with that request."))) == []


def test_refusal_phrases_are_configurable():
    answer = llm("Désolé, je ne peux pas vous aider.", tools=[WEATHER_TOOL])
    assert modes(make_trace(answer), refusal_phrases=["je ne peux pas"]) == ["refusal_overreach"]
    assert modes(make_trace(llm("I can't help with that.", tools=[WEATHER_TOOL])), refusal_phrases=["je ne peux pas"]) == []


def test_an_apology_deep_inside_a_helpful_answer_is_not_a_refusal():
    text = "Here are the three options for your trip: " + "details " * 80 + "I can't provide prices for 2027 yet."
    assert modes(make_trace(llm(text, tools=[WEATHER_TOOL]))) == []


# ====================================================================== latency_breach


@pytest.mark.parametrize("kind,ms", [("LLM", 31_000), ("TOOL", 10_500), ("RETRIEVER", 6_000), ("AGENT", 121_000)])
def test_span_over_its_kind_threshold_is_a_latency_breach(kind, ms):
    span = make_span(kind, name=f"slow {kind}", duration_ms=ms)
    d = only(make_trace(span, root=make_span("CHAIN", name="root")), "latency_breach")
    assert (d.detector, d.span_id, d.severity, d.blast_radius) == ("slow_span", span["span_id"], "P3", "internal_visible")
    assert d.evidence["duration_ms"] == ms


def test_span_under_its_threshold_and_kinds_without_threshold_are_not_latency_breaches():
    trace = make_trace(make_span("LLM", duration_ms=29_000), make_span("EMBEDDING", duration_ms=900_000),
                       root=make_span("CHAIN", name="root"))
    assert modes(trace) == []


def test_latency_thresholds_are_configurable_per_kind():
    trace = make_trace(make_span("LLM", duration_ms=45_000), make_span("EMBEDDING", duration_ms=3_000))
    assert modes(trace, latency_breach={"LLM": "1m", "EMBEDDING": "2s"}) == ["latency_breach"]
    assert modes(make_trace(make_span("TOOL", duration_ms=60_000)), latency_breach={"TOOL": None}) == []


@pytest.mark.parametrize("took,threshold,message", [
    (150.2, "100ms", "took 150.2ms, over the 100ms threshold"),  # was "took 0.2s, over the 0.1s threshold"
    (120, "100ms", "took 120ms, over the 100ms threshold"),  # was "took 0.1s, over the 0.1s threshold"
    (31_250, "30s", "took 31.25s, over the 30s threshold"),
])
def test_a_latency_message_shows_durations_precisely_enough_to_compare(took, threshold, message):
    d = only(make_trace(make_span("LLM", name="chat", duration_ms=took)), "latency_breach",
             latency_breach={"LLM": threshold})
    assert d.message == f"LLM span chat {message}"


# ====================================================================== loop


@pytest.mark.parametrize("genai", [False, True])
def test_same_tool_with_same_arguments_three_times_is_a_loop_on_the_last_call(genai):
    calls = [tool("get_weather", '{"city": "Paris"}', genai=genai) for _ in range(2)]
    calls.append(tool("get_weather", '{ "city":"Paris" }', genai=genai))
    d = only(make_trace(*calls), "loop")
    assert (d.detector, d.span_id, d.evidence["count"]) == ("repeated_tool_call", calls[-1]["span_id"], 3)


@pytest.mark.parametrize("genai", [False, True])
def test_arguments_openinference_hid_are_unknown_not_a_loop_nor_bad_json(genai):
    """OpenInference: "__REDACTED__" is present but unknown. Three hidden calls were a loop and three tool_args_json."""
    calls = [tool("search_kb", "__REDACTED__", genai=genai) for _ in range(3)]
    asked = llm(None, tool_calls=[("search_kb", "__REDACTED__")] * 3, finish="tool_calls")
    assert modes(make_trace(*calls)) == []
    assert modes(make_trace(asked)) == []


def test_same_tool_with_different_arguments_is_not_a_loop():
    assert modes(make_trace(*(tool("get_weather", {"city": c}) for c in ("Paris", "Lyon", "Nice", "Lille")))) == []


def test_two_repeats_are_under_the_default_and_max_repeats_is_configurable():
    trace = make_trace(tool(), tool())
    assert modes(trace) == []
    assert modes(trace, loop={"max_repeats": 2}) == ["loop"]


def test_repeated_tool_calls_requested_by_the_model_count_when_no_tool_spans_exist():
    calls = [llm(None, tool_calls=[("get_weather", '{"city": "Paris"}')], finish="tool_calls") for _ in range(3)]
    assert only(make_trace(*calls), "loop").span_id == calls[-1]["span_id"]


def test_more_steps_than_the_limit_is_a_loop_on_the_root():
    steps = [llm(f"step {i}") if i % 2 else tool("lookup", {"i": i}) for i in range(12)]
    trace = make_trace(*steps)
    d = only(trace, "loop", loop={"max_steps": 10})
    assert (d.detector, d.span_id, d.evidence["steps"]) == ("step_limit", trace[0]["span_id"], 12)
    assert modes(make_trace(*[llm(f"step {i}") for i in range(10)]), loop={"max_steps": 10}) == []


@pytest.mark.parametrize(("status_message", "exception"), [
    # OpenAI Agents: Runner.run(..., max_turns=10) raises on the agent span
    (None, {"exception.type": "agents.exceptions.MaxTurnsExceeded", "exception.message": "Max turns (10) exceeded"}),
    # LangGraph: the graph's root chain span
    ("GraphRecursionError: Recursion limit of 25 reached without hitting a stop condition. You can increase the "
     "limit by setting the `recursion_limit` config key.", None),
])
def test_an_agent_framework_stopping_the_run_at_its_step_limit_is_a_loop_not_an_llm_error(status_message, exception):
    events = [{"name": "exception", "attributes": unflatten(exception)}] if exception else []
    agent = make_span("AGENT", name="agent", status="ERROR", status_message=status_message, events=events)
    root = make_span("CHAIN", name="run", status="ERROR", status_message=status_message,
                     events=[dict(e) for e in events])
    agent["parent_span_id"] = root["span_id"]
    steps = [llm("let me check", parent=agent["span_id"]), tool("lookup", {"q": 1}, parent=agent["span_id"])]
    d = only(make_trace(agent, *steps, root=root), "loop")
    assert (d.detector, d.span_id) == ("step_limit", agent["span_id"])
    assert "step limit" in d.message and d.evidence["framework_stop"]
    assert modes(make_trace(agent, *steps, root=root)) == ["loop"]


def test_langchain_agent_executor_stopping_at_its_iteration_limit_is_a_loop():
    agent = make_span("CHAIN", name="AgentExecutor", output="Agent stopped due to iteration limit or time limit.")
    assert modes(make_trace(agent, llm("thinking", parent=agent["span_id"]))) == ["loop"]
    done = make_span("CHAIN", name="AgentExecutor", output="The order shipped yesterday.")
    assert modes(make_trace(done, llm("thinking", parent=done["span_id"]))) == []


# ====================================================================== blast_radius_breach


def test_irreversible_tool_after_a_failure_is_a_blast_radius_breach():
    bad = tool("lookup_order", '{"id": 1}', status="ERROR", status_message="not found")
    email = tool("send_email", '{"to": "<EMAIL>", "body": "Your refund is on its way"}')
    ds = detect(make_trace(bad, email), blast_radius={"send_email": "irreversible_write"})
    d = next(d for d in ds if d.failure_mode == "blast_radius_breach")
    assert (d.detector, d.span_id, d.severity, d.blast_radius) == ("irreversible_after_failure", email["span_id"], "P0", "irreversible_write")
    assert d.evidence["after_failure"] is True and d.evidence["failures"][0]["span_id"] == bad["span_id"]


def test_irreversible_tool_in_a_trace_that_fails_later_is_a_blast_radius_breach():
    email = tool("send_email", '{"to": "<EMAIL>", "body": "done"}', genai=True)
    answer = llm("Done, I emailed you [doc-404].", genai=True)
    ds = detect(make_trace(email, answer), blast_radius={"send_email": "irreversible_write"})
    d = next(d for d in ds if d.failure_mode == "blast_radius_breach")
    assert d.evidence["after_failure"] is False and d.evidence["failures"][0]["failure_mode"] == "hallucination"


def test_irreversible_tool_in_a_clean_trace_is_not_a_breach():
    email = tool("send_email", '{"to": "<EMAIL>", "body": "done"}')
    assert modes(make_trace(email, llm("Sent.")), blast_radius={"send_email": "irreversible_write"}) == []


def test_reversible_tool_after_a_failure_is_not_a_breach():
    bad = tool("lookup_order", status="ERROR")
    note = tool("add_note", '{"text": "x"}')
    assert modes(make_trace(bad, note), blast_radius={"add_note": "reversible_write"}) == ["tool_invocation"]


def test_irreversible_tool_failing_by_itself_is_not_a_breach():
    email = tool("send_email", '{"to": "<EMAIL>"}', status="ERROR", status_message="SMTP 550")
    d = only(make_trace(email), "tool_invocation", blast_radius={"send_email": "irreversible_write"})
    assert d.blast_radius == "irreversible_write"
    assert modes(make_trace(email), blast_radius={"send_email": "irreversible_write"}) == ["tool_invocation"]


def test_a_slow_span_alone_does_not_make_an_irreversible_tool_a_breach():
    email = tool("send_email", '{"to": "<EMAIL>", "body": "x"}')
    slow = llm("Sent.", duration_ms=45_000)
    assert modes(make_trace(email, slow), blast_radius={"send_email": "irreversible_write"}) == ["latency_breach"]


# ====================================================================== llm_error


@pytest.mark.parametrize("message,expected", [
    ("RateLimitError: Error code: 429 - rate limit reached", "rate_limit"),
    ("APITimeoutError: Request timed out.", "timeout"),
    ("InternalServerError: Error code: 503 - overloaded", "provider_error"),
    ("BadRequestError: This model's maximum context length is 128000 tokens", "context_length"),
    ("AuthenticationError: Error code: 401 - invalid api key", "auth"),
])
def test_llm_span_error_is_an_llm_error_classified_in_evidence(message, expected):
    span = llm(None, finish=None, status="ERROR", status_message=message)
    d = only(make_trace(span), "llm_error")
    assert (d.detector, d.span_id, d.evidence["classification"]) == ("llm_call_error", span["span_id"], expected)


def test_genai_llm_error_is_classified_from_error_type_and_exception():
    span = llm(None, genai=True, finish=None, status="ERROR", extra={"error.type": "timeout"},
               events=[{"name": "exception", "timestamp": "2026-09-01T12:00:01Z",
                        "attributes": {"exception": {"type": "httpx.ReadTimeout", "message": "read"}}}])
    assert only(make_trace(span), "llm_error").evidence["classification"] == "timeout"


def test_a_genai_span_with_error_type_and_no_status_is_a_failure_and_an_ok_status_wins():
    """GenAI sets ``error.type`` exactly when the operation failed; a producer that left the status UNSET
    had its failed tool call and model call judged successful."""
    bad_tool = tool(genai=True, extra={"error.type": "TimeoutError"}, status="UNSET")
    d = only(make_trace(bad_tool), "tool_invocation")
    assert d.span_id == bad_tool["span_id"] and "TimeoutError" in d.message
    call = llm(None, genai=True, finish=None, status="UNSET", extra={"error.type": "RateLimitError"})
    d = only(make_trace(call), "llm_error")
    assert (d.span_id, d.evidence["classification"]) == (call["span_id"], "rate_limit")
    assert modes(make_trace(tool(genai=True, extra={"error.type": "TimeoutError"}, status="OK"))) == []
    assert modes(make_trace(tool(genai=True, extra={"error.type": ""}, status="UNSET"))) == []


def test_an_error_passed_up_to_the_agent_and_chain_is_reported_once_on_its_source():
    root = make_span("CHAIN", name="root", status="ERROR", status_message="RateLimitError: 429")
    agent = make_span("AGENT", name="agent", status="ERROR", status_message="RateLimitError: 429")
    call = llm(None, finish=None, status="ERROR", status_message="RateLimitError: 429", parent=agent["span_id"])
    ds = detect(make_trace(agent, call, root=root))
    assert [(d.failure_mode, d.span_id) for d in ds] == [("llm_error", call["span_id"])]


def test_a_tool_error_passed_up_to_the_agent_is_a_tool_invocation_only():
    agent = make_span("AGENT", name="agent", status="ERROR", status_message="ToolError: boom")
    bad = tool(status="ERROR", status_message="ToolError: boom", parent=agent["span_id"])
    assert modes(make_trace(agent, bad)) == ["tool_invocation"]


def test_agent_timeout_of_its_own_is_an_llm_error_on_the_agent():
    agent = make_span("AGENT", name="agent", status="ERROR", status_message="deadline exceeded after 300s")
    d = only(make_trace(agent, root=make_span("CHAIN", name="root")), "llm_error")
    assert (d.span_id, d.evidence["classification"]) == (agent["span_id"], "timeout")


def test_genai_finish_reason_error_on_an_ok_span_is_an_llm_error():
    assert modes(make_trace(llm("", genai=True, finish="error"))) == ["llm_error"]


def test_classify_error_falls_back_to_other():
    assert classify_error("ValueError: nope") == "other"


# ====================================================================== negative_feedback


def test_failing_annotation_label_on_a_span_is_negative_feedback():
    span = llm("It is 18C.", extra={"annotations.0.annotation.name": "correctness",
                                    "annotations.0.annotation.label": "incorrect",
                                    "annotations.0.annotation.annotator_kind": "HUMAN"})
    d = only(make_trace(span), "negative_feedback")
    assert (d.detector, d.span_id, d.evidence["feedback"][0]["label"]) == ("negative_annotation", span["span_id"], "incorrect")


def test_low_evaluation_score_is_negative_feedback_and_the_threshold_is_configurable():
    span = llm("ok", extra={"evaluations.0.evaluation.name": "helpfulness", "evaluations.0.evaluation.score": 0.3})
    assert modes(make_trace(span)) == []
    assert modes(make_trace(span), feedback_score_threshold=0.5) == ["negative_feedback"]


def test_passing_label_wins_over_a_low_score():
    span = llm("ok", extra={"evaluations.0.evaluation.label": "correct", "evaluations.0.evaluation.score": 0})
    assert modes(make_trace(span)) == []


def test_trace_annotation_is_reported_on_the_root():
    span = llm("ok", extra={"trace.annotations.0.annotation.name": "user", "trace.annotations.0.annotation.label": "thumbs_down"})
    trace = make_trace(span)
    assert only(trace, "negative_feedback").span_id == trace[0]["span_id"]


def test_evaluator_span_linked_to_a_span_reports_on_the_target():
    answer = llm("Paris is in Spain.")
    ev = make_span("EVALUATOR", name="hallucination_eval", links=[{"trace_id": None, "span_id": answer["span_id"]}],
                   attrs={"evaluations.0.evaluation.name": "hallucination", "evaluations.0.evaluation.label": "hallucinated",
                          "evaluations.0.evaluation.score": 1})
    trace = make_trace(answer, ev)
    ev["links"][0]["trace_id"] = trace[0]["trace_id"]
    d = only(trace, "negative_feedback")
    assert d.span_id == answer["span_id"] and d.evidence["feedback"][0]["carrier_span_id"] == ev["span_id"]


def test_evaluator_span_linked_to_another_trace_names_that_span_in_its_message():
    """Post-hoc feedback comes as its own trace; the message said "judged this trace as failed" of the carrier's."""
    ev = make_span("EVALUATOR", name="eval", links=[{"trace_id": "ab" * 16, "span_id": "cd" * 8}],
                   attrs={"evaluations.0.evaluation.name": "correctness", "evaluations.0.evaluation.label": "incorrect"})
    d = only(make_trace(root=ev), "negative_feedback")
    assert d.message == f"correctness judged span {'cd' * 8} of trace {'ab' * 16} as failed (incorrect)"
    assert d.evidence["feedback"][0]["target"] == {"trace_id": "ab" * 16, "span_id": "cd" * 8}


def test_evaluator_span_output_scoring_failed_is_negative_feedback():
    ev = make_span("EVALUATOR", name="qa_eval", output='{"passed": false, "explanation": "wrong city"}',
                   output_mime="application/json")
    trace = make_trace(llm("ok"), ev)
    d = only(trace, "negative_feedback")
    assert d.message == "qa_eval judged this trace as failed (passed: false)"  # was "(score None)"
    # It links no span: it judges the trace it sits in (the root), not the evaluator span itself.
    assert (d.span_id, d.evidence["feedback"][0]["carrier_span_id"]) == (trace[0]["span_id"], ev["span_id"])


@pytest.mark.parametrize("where", ["attribute", "event"])
def test_genai_evaluation_result_with_failing_label_is_negative_feedback(where):
    ev = {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.1,
          "gen_ai.evaluation.score.label": "irrelevant"}
    if where == "attribute":
        span = llm("ok", genai=True, extra=ev)
    else:
        span = llm("ok", genai=True, events=[{"name": "gen_ai.evaluation.result", "timestamp": "2026-09-01T12:00:02Z",
                                              "attributes": unflatten(ev)}])
    assert only(make_trace(span), "negative_feedback").evidence["feedback"][0]["label"] == "irrelevant"


@pytest.mark.parametrize("extra", [{"feedback.score": -1}, {"user_feedback": "thumbs_down"}, {"feedback.label": "bad"},
                                   {"feedback": "thumbs_down"}, {"feedback": 0}])  # the last two were not read
def test_negative_user_feedback_is_reported_on_the_root(extra):
    trace = make_trace(llm("ok"), root=make_span("AGENT", name="agent", attrs=extra))
    d = only(trace, "negative_feedback")
    assert (d.detector, d.span_id) == ("user_feedback", trace[0]["span_id"])


@pytest.mark.parametrize("extra", [{"feedback.score": 1}, {"user_feedback": "thumbs_up"}, {"feedback": "thumbs_up"},
                                   {"annotations.0.annotation.label": "correct", "annotations.0.annotation.score": 1}])
def test_positive_feedback_is_not_negative_feedback(extra):
    assert modes(make_trace(llm("ok", extra=extra))) == []


# ====================================================================== config, severity, merging, ids


def test_severity_is_overridable_per_mode():
    d = only(make_trace(llm("[doc-9]")), "hallucination", severity={"hallucination": "P0"})
    assert d.severity == "P0"


def test_disable_turns_off_modes_and_detectors():
    trace = make_trace(tool(status="ERROR"), llm("x", finish="length"))
    assert modes(trace, disable=["truncation"]) == ["tool_invocation"]
    assert modes(trace, disable=["tool_error"]) == ["truncation"]


def test_a_message_is_one_line_even_when_the_error_or_the_rule_text_spans_lines(tmp_path):
    """DESIGN: a one-line human message. A provider error's second line stays in evidence only."""
    failing = tool("lookup", status="ERROR", status_message="upstream said 502\n  Traceback (most recent call last):")
    trace = make_trace(failing, tool("search_kb", '{"q": "x"}', result="[]"))
    multi = GOOD_SQL.replace("'tool ' || tool_name || ' returned an empty result'",
                             "'tool ' || tool_name || chr(10) || repeat('returned nothing ', 100)")
    p = processor(rules=[rule("empty_tool_result", multi)])
    ds = {d.detector: d for d in p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}),
                                                   store_with(tmp_path, trace)).detections}
    assert ds["tool_error"].message == "tool lookup failed: upstream said 502 Traceback (most recent call last):"
    assert ds["tool_error"].evidence["status_message"].startswith("upstream said 502\n")
    assert "\n" not in ds["empty_tool_result"].message and len(ds["empty_tool_result"].message) <= 500
    assert ds["empty_tool_result"].message.startswith("tool search_kb returned nothing returned nothing")
    assert ds["empty_tool_result"].message.endswith(" more chars]")  # clipped, mark included in the 500
    assert ds["empty_tool_result"].evidence["message"].startswith("tool search_kb\nreturned nothing")  # kept whole


def test_a_message_with_several_findings_stays_within_500_characters(tmp_path):
    trace = make_trace(tool("search_kb", '{"q": "x"}', result="[]"))
    long_sql = ("SELECT trace_id, span_id, repeat('no result ', 80) AS message, '{}' AS evidence FROM spans "
                "WHERE span_kind = 'TOOL' UNION ALL "
                "SELECT trace_id, span_id, 'again' AS message, '{}' AS evidence FROM spans WHERE span_kind = 'TOOL'")
    ds = processor(rules=[rule("twice", long_sql)]).process_traces(
        TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    twice = [d for d in ds if d.detector == "twice"]
    assert len(twice) == 1 and twice[0].message.endswith(" (+1 more)") and len(twice[0].message) <= 500


def test_judging_twice_gives_the_same_detection_ids():
    trace = make_trace(tool(status="ERROR"), retriever([]), llm("x [doc-5]", finish="length"))
    assert [d.detection_id for d in detect(trace)] == [d.detection_id for d in detect(trace)]


def test_no_two_detections_share_trace_span_detector_and_mode():
    trace = make_trace(*(tool(status="ERROR") for _ in range(4)), retriever([]), retriever([]),
                       llm("[doc-8] [doc-9]", finish="length"))
    keys = [(d.trace_id, d.span_id, d.detector, d.failure_mode) for d in detect(trace)]
    assert len(keys) == len(set(keys))


def test_detections_are_json_rows_with_taxonomy_values():
    trace = make_trace(tool(status="ERROR"), retriever([]), llm("x [doc-5]", finish="length"))
    for d in detect(trace):
        assert d.failure_mode in FAILURE_MODES and d.severity in SEVERITIES and d.blast_radius in BLAST_RADII
        json.loads(d.as_row(d_at := trace[0]["start_time"])["evidence"])
        assert d.message and "\n" not in d.message and d_at


@pytest.mark.parametrize("options,path", [
    ({"latency_breach": {"LLMM": "1s"}}, "processors.detectors.latency_breach.LLMM"),
    ({"latency_breach": {"LLM": "fast"}}, "processors.detectors.latency_breach.LLM"),
    ({"blast_radius": {"send_email": "very_bad"}}, "processors.detectors.blast_radius.send_email"),
    ({"severity": {"hallucination": "P5"}}, "processors.detectors.severity.hallucination"),
    ({"severity": {"made_up": "P1"}}, "processors.detectors.severity.made_up"),
    ({"citation_pattern": "[unclosed"}, "processors.detectors.citation_pattern"),
    ({"loop": {"max_repeats": "3"}}, "processors.detectors.loop.max_repeats"),
    ({"loop": {"max_reps": 3}}, "processors.detectors.loop.max_reps"),
    ({"disable": ["nonsense"]}, "processors.detectors.disable[0]"),
    ({"retrieval_min_score": "high"}, "processors.detectors.retrieval_min_score"),
    ({"decision_wait": "soon"}, "processors.detectors.decision_wait"),
    ({"feedback_score_threshold": "low"}, "processors.detectors.feedback_score_threshold"),
    ({"surprise": 1}, "processors.detectors.surprise"),
    ({"rule_time_limit": "0s"}, "processors.detectors.rule_time_limit"),
    ({"rule_time_limit": "forever"}, "processors.detectors.rule_time_limit"),
])
def test_bad_options_are_config_errors_naming_the_yaml_path(options, path):
    with pytest.raises(ConfigError) as exc:
        DetectorsProcessor.from_config(options, path="processors.detectors")
    assert any(p.startswith(path + ":") for p in exc.value.problems), exc.value.problems


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        DetectorsProcessor.from_config({"severity": {"loop": "P7"}, "surprise": 1,
                                        "rules": [{"name": "r", "failure_mode": "x", "severity": "P1", "sql": "SELEC"}]},
                                       path="processors.detectors")
    assert len(exc.value.problems) >= 4


# ====================================================================== operator SQL rules

GOOD_SQL = """
SELECT trace_id, span_id,
       'tool ' || tool_name || ' returned an empty result' AS message,
       json_object('tool', tool_name, 'output', output_value) AS evidence
FROM spans
WHERE span_kind = 'TOOL' AND trim(coalesce(output_value, '')) IN ('', '[]', '{}')
"""

CTE_SQL = """
WITH per_trace AS (
    SELECT trace_id, sum(llm_token_count_total) AS tokens, arg_min(span_id, start_time) AS first_span
    FROM spans GROUP BY trace_id
)
SELECT trace_id, first_span AS span_id, 'trace used ' || tokens || ' tokens' AS message,
       json_object('tokens', tokens) AS evidence
FROM per_trace WHERE tokens > 1000;
"""


def rule(name: str, sql: str, mode: str = "tool_invocation", **kw: Any) -> dict[str, Any]:
    return {"name": name, "failure_mode": mode, "severity": "P2", "sql": sql, **kw}


def test_operator_sql_rule_finds_spans_of_the_judged_traces_only(tmp_path):
    empty = tool("search_kb", '{"q": "x"}', result="[]")
    judged = make_trace(empty, llm("Nothing found."))
    other = make_trace(tool("search_kb", '{"q": "y"}', result="[]"))
    store = store_with(tmp_path, judged, other)
    p = processor(rules=[rule("empty_tool_result", GOOD_SQL, blast_radius="internal_visible")])
    ds = p.process_traces(TraceBatch(traces={judged[0]["trace_id"]: judged}), store).detections
    assert [(d.detector, d.span_id, d.failure_mode, d.severity) for d in ds] == [
        ("empty_tool_result", empty["span_id"], "tool_invocation", "P2")]
    assert ds[0].evidence == {"rule": "empty_tool_result", "tool": "search_kb", "output": "[]"}


def test_operator_sql_rule_sees_every_span_of_the_judged_traces_from_the_earliest_received(tmp_path):
    # As the judge loads them: every span carries received_at, and the rule's view is bounded by the
    # earliest of them, so the first span received (the empty tool result) must still be in view.
    import datetime as dt

    t0 = dt.datetime(2026, 11, 22, 6, 0, tzinfo=dt.timezone.utc)
    empty = dict(tool("search_kb", '{"q": "x"}', result="[]"), received_at=t0)
    answer = dict(llm("Nothing found."), received_at=t0 + dt.timedelta(seconds=3))
    judged = make_trace(empty, answer)
    older = make_trace(dict(tool("search_kb", '{"q": "y"}', result="[]"), received_at=t0 - dt.timedelta(hours=1)))
    store = store_with(tmp_path, judged, older)
    assert all(s.get("received_at") is not None for s in judged)
    p = processor(rules=[rule("empty_tool_result", GOOD_SQL, blast_radius="internal_visible")])
    ds = p.process_traces(TraceBatch(traces={judged[0]["trace_id"]: judged}), store).detections
    assert [(d.detector, d.span_id) for d in ds] == [("empty_tool_result", empty["span_id"])]


def test_operator_sql_rule_ending_in_a_semicolon_and_a_comment_runs(tmp_path):
    """One statement as DuckDB reads it: it was refused with 'syntax error at or near ";"'."""
    empty = tool("search_kb", '{"q": "x"}', result="[]")
    trace = make_trace(empty)
    p = processor(rules=[rule("empty_tool_result", GOOD_SQL.rstrip() + "; -- tools that found nothing\n")])
    ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    assert [(d.detector, d.span_id) for d in ds] == [("empty_tool_result", empty["span_id"])]


def test_operator_sql_rule_with_its_own_with_clause_runs(tmp_path):
    calls = [llm("step", extra={}) for _ in range(10)]
    trace = make_trace(*calls)
    store = store_with(tmp_path, trace)
    p = processor(rules=[rule("token_budget", CTE_SQL, mode="loop")])
    ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store).detections
    assert [(d.detector, d.message) for d in ds] == [("token_budget", "trace used 1600 tokens")]
    assert ds[0].blast_radius == "internal_visible"  # the mode's default when the rule names none


def test_operator_rule_findings_count_as_failures_for_blast_radius(tmp_path):
    empty = tool("search_kb", '{"q": "x"}', result="[]")
    email = tool("send_email", '{"to": "<EMAIL>", "body": "b"}')
    trace = make_trace(empty, email)
    p = processor(rules=[rule("empty_tool_result", GOOD_SQL)], blast_radius={"send_email": "irreversible_write"})
    ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    assert sorted(d.failure_mode for d in ds) == ["blast_radius_breach", "tool_invocation"]


def test_operator_rule_naming_a_span_outside_the_trace_reports_on_the_root(tmp_path):
    """DESIGN: span_id is a span that shows the failure; a rule's made-up or foreign id was stored as is."""
    sql = ("SELECT trace_id, CASE WHEN tool_name = 'a' THEN 'ffffffffffffffff' ELSE '42' END AS span_id, "
           "'odd span' AS message, '{}' AS evidence FROM spans WHERE span_kind = 'TOOL'")
    trace = make_trace(tool("a"), tool("b"))
    p = processor(rules=[rule("odd_span", sql)])
    ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    assert [(d.span_id, d.message) for d in ds] == [(trace[0]["span_id"], "odd span (+1 more)")]
    assert sorted(f["span_id_returned"] for f in ds[0].evidence["findings"]) == ["42", "ffffffffffffffff"]


def test_an_operator_rule_failing_at_run_time_is_named_in_the_log_without_span_content(tmp_path, caplog):
    """The warning said only "1 operator SQL rule(s) failed": with several rules, the operator could not tell which."""
    cast = ("SELECT trace_id, span_id, 'n' AS message, CAST(tool_name AS INTEGER)::VARCHAR AS evidence "
            "FROM spans WHERE span_kind = 'TOOL'")
    trace = make_trace(tool("search_kb", '{"q": "x"}', result="[]"))
    options = {"rules": [rule("casts_names", cast), rule("empty_tool_result", GOOD_SQL)]}
    p = DetectorsProcessor(DetectorsConfig.from_options(options, "processors.detectors"))
    with caplog.at_level("WARNING", logger="tracesieve.processors.detectors"):
        ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    assert [d.detector for d in ds] == ["empty_tool_result"] and p.errors == 1
    assert "casts_names (ConversionException)" in caplog.text and "search_kb" not in caplog.text


def test_an_operator_rule_failing_on_one_trace_still_finds_in_the_traces_judged_with_it(tmp_path, caplog):
    """It used to be skipped for the whole round: whether a trace got the rule's finding depended on
    which other traces happened to settle with it."""
    cast = ("SELECT trace_id, span_id, 'count ' || CAST(output_value AS INTEGER) AS message, '{}' AS evidence "
            "FROM spans WHERE span_kind = 'TOOL'")
    traces = [make_trace(tool("count", '{"q": "x"}', result=out)) for out in ("12", "not a number", "7")]
    p = DetectorsProcessor(DetectorsConfig.from_options({"rules": [rule("counts", cast)]}, "processors.detectors"))
    with caplog.at_level("WARNING", logger="tracesieve.processors.detectors"):
        ds = p.process_traces(TraceBatch(traces={t[0]["trace_id"]: t for t in traces}),
                              store_with(tmp_path, *traces)).detections
    assert sorted((d.trace_id, d.message) for d in ds) == sorted(
        [(traces[0][0]["trace_id"], "count 12"), (traces[2][0]["trace_id"], "count 7")])
    assert "counts (ConversionException) on 1 of 3 traces" in caplog.text and "not a number" not in caplog.text


def test_an_operator_rule_failing_for_want_of_a_table_is_not_run_again_per_trace(caplog):
    """Only an error from the values read is worth a run per trace; a missing table fails every trace alike."""
    import duckdb

    class MissingTable:
        calls = 0

        def query(self, sql, params=(), *, time_limit=None):
            MissingTable.calls += 1
            raise duckdb.CatalogException("Table with name spans does not exist!")

    traces = [make_trace(tool("search_kb", '{"q": "x"}', result="[]")) for _ in range(3)]
    options = {"rules": [rule("empty_tool_result", GOOD_SQL)]}
    p = DetectorsProcessor(DetectorsConfig.from_options(options, "processors.detectors"))
    with caplog.at_level("WARNING", logger="tracesieve.processors.detectors"):
        p.process_traces(TraceBatch(traces={t[0]["trace_id"]: t for t in traces}), MissingTable())
    assert MissingTable.calls == 1
    assert "empty_tool_result (CatalogException) on 3 of 3 traces" in caplog.text


def test_a_built_in_rule_that_raises_is_named_with_its_trace_and_the_others_still_judge(monkeypatch, caplog):
    """The warning said only "1 rule(s) failed on one trace": nothing to report or reproduce it by."""
    from tracesieve.processors import detectors as detectors_module

    def broken_rule(view, settings):
        raise KeyError("customer jane@example.com")  # an error's text may quote span content

    monkeypatch.setattr(detectors_module, "TRACE_RULES", (broken_rule, *detectors_module.TRACE_RULES))
    trace = make_trace(tool("lookup_order", '{"id": 1}', status="ERROR"))
    p = DetectorsProcessor(DetectorsConfig.from_options({}, "processors.detectors"))  # as serve runs it: not strict
    with caplog.at_level("WARNING", logger="tracesieve.processors.detectors"):
        found = p.judge(trace[0]["trace_id"], trace)
    assert [f.failure_mode for f in found] == ["tool_invocation"] and p.errors == 1
    assert f"broken_rule (KeyError) failed on trace {trace[0]['trace_id']}" in caplog.text
    assert "jane@example.com" not in caplog.text


def test_example_rules_file_is_valid_and_runs(tmp_path):
    import pathlib

    import yaml

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sql_rules.yaml"
    options = yaml.safe_load(path.read_text())["processors"]["detectors"]
    p = DetectorsProcessor(DetectorsConfig.from_options(options, "processors.detectors"), strict=True)
    assert len(p.config.rules) == 2
    trace = make_trace(llm("ok"))
    p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace))


def test_disable_names_an_operator_rule_to_turn_it_off(tmp_path):
    """README_rules.md: ``disable: [empty_tool_result]`` turns a rule off (it was refused as no detector)."""
    empty = tool("search_kb", '{"q": "x"}', result="[]")
    trace = make_trace(empty, tool("lookup", status="ERROR"))
    p = processor(rules=[rule("empty_tool_result", GOOD_SQL)], disable=["empty_tool_result"])
    ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    assert [d.detector for d in ds] == ["tool_error"]
    with pytest.raises(ConfigError) as exc:
        processor(rules=[rule("empty_tool_result", GOOD_SQL)], disable=["empty_tool_reslt"])
    assert exc.value.problems == ["processors.detectors.disable[0]: 'empty_tool_reslt' is neither a failure mode, "
                                  "a detector nor an operator rule"]


@pytest.mark.parametrize("bad,fragment", [
    (rule("r", "SELEC trace_id FROM spans"), "syntax error"),
    (rule("r", "SELECT trace_id, span_id, nope AS message, '{}' AS evidence FROM spans"), "nope"),
    (rule("r", "SELECT trace_id, span_id, name AS message FROM spans"), "missing column(s) evidence"),
    (rule("r", "SELECT trace_id, span_id, name AS message, '{}' AS evidence, 1 AS extra FROM spans"), "unexpected column(s) extra"),
    (rule("r", "DELETE FROM spans"), "SELECT"),
    (rule("r", "SELECT trace_id, span_id, name AS message, '{}' AS evidence FROM spans WHERE duration_ms > ?"),
     "a rule takes no parameters"),
    (rule("r", "SELECT 1 AS trace_id, span_id, name AS message, '{}' AS evidence FROM spans"),
     "trace_id must be text (VARCHAR), got INTEGER"),
    (rule("r", "SELECT trace_id, span_id, name AS message, '{}' AS evidence FROM spans", mode="vibes"), "failure taxonomy"),
    (rule("r", "SELECT trace_id, span_id, name AS message, '{}' AS evidence FROM spans", blast_radius="huge"), "blast_radius"),
    (rule("tool_error", "SELECT trace_id, span_id, name AS message, '{}' AS evidence FROM spans"), "already a detector"),
    (rule("loop", "SELECT trace_id, span_id, name AS message, '{}' AS evidence FROM spans"), "'loop' is a failure mode"),
    ({"name": "r", "failure_mode": "loop", "severity": "P1"}, "sql: required"),
    # the stored table by name is every span in the store, not the judged traces' spans
    (rule("r", "SELECT trace_id, span_id, name AS message, '{}' AS evidence FROM main.spans"), "qualified name"),
    (rule("r", "SELECT s.trace_id, s.span_id, 'm' AS message, '{}' AS evidence FROM spans s "
               "JOIN \"main\".\"spans\" o ON o.trace_id <> s.trace_id"), "qualified name"),
    # slow on no spans at all: it held startup for as long as it ran, and would hold every judge round
    (rule("r", "SELECT s.trace_id, s.span_id, 'm' AS message, '{}' AS evidence FROM spans s, range(100000000000) r "
               "WHERE r.range = -1"), "still running after 5s on an empty spans table"),
])
def test_broken_operator_rule_is_a_config_error_naming_the_rule(bad, fragment):
    good = rule("fine", GOOD_SQL)
    with pytest.raises(ConfigError) as exc:
        DetectorsProcessor.from_config({"rules": [good, bad]}, path="processors.detectors")
    assert all(p.startswith("processors.detectors.rules[1]") for p in exc.value.problems), exc.value.problems
    assert all(repr(bad["name"]) in p for p in exc.value.problems), exc.value.problems  # the rule by its name too
    assert fragment in str(exc.value)


# ====================================================================== a clean corpus


def _clean_trace(rng: random.Random, n: int) -> list[dict[str, Any]]:
    genai = n % 2 == 1
    shape = n % 5
    city = rng.choice(["Paris", "Lyon", "Nice", "Lille", "Nantes"])
    if shape == 0:  # tool use, arguments valid
        return make_trace(
            llm(None, tool_calls=[("get_weather", {"city": city, "unit": rng.choice("cf")})], tools=[WEATHER_TOOL],
                finish="tool_calls" if not genai else "tool_call", genai=genai),
            tool("get_weather", {"city": city}, result=f'{{"temp_c": {rng.randint(5, 30)}}}', genai=genai),
            llm(f"It is sunny in {city} today.", tools=[WEATHER_TOOL], genai=genai, duration_ms=rng.randint(300, 9000)))
    if shape == 1:  # RAG with correct citations
        ids = [f"doc-{rng.randint(1, 999)}" for _ in range(3)]
        docs = [(i, round(rng.uniform(0.5, 0.95), 2)) for i in ids]
        return make_trace(retriever(docs, genai=genai),
                          llm(f"Refunds are processed within 14 days [{ids[0]}], see also [{ids[1]}].", genai=genai))
    if shape == 2:  # structured output
        rf = {"type": "json_schema", "json_schema": {"name": "t", "schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
        return make_trace(llm(json.dumps({"city": city, "confidence": rng.random()}), response_format=rf if not genai else "json",
                              genai=genai))
    if shape == 3:  # plain chat with positive feedback and a guardrail
        guard = make_span("GUARDRAIL", name="moderation", output="pass")
        return make_trace(guard, llm(f"Hello! How can I help you plan a trip to {city}?", genai=genai,
                                     extra={"annotations.0.annotation.name": "helpfulness",
                                            "annotations.0.annotation.label": "helpful",
                                            "annotations.0.annotation.score": 1}),
                          root=make_span("AGENT", name="agent", attrs={"feedback.score": 1}))
    # multi-step agent: distinct tool calls, a chain, an embedding, send_email after success
    steps = [make_span("EMBEDDING", name="CreateEmbeddings", duration_ms=120)]
    for i in range(rng.randint(2, 6)):
        steps.append(llm(None, tool_calls=[("lookup_order", {"order": i})], finish="tool_calls", genai=genai))
        steps.append(tool("lookup_order", {"order": i}, result='{"status": "shipped"}', genai=genai))
    steps.append(tool("send_email", {"to": "<EMAIL>", "body": "Your order shipped."}, genai=genai))
    steps.append(llm("All your orders have shipped; I emailed you the details.", genai=genai))
    return make_trace(*steps, root=make_span("CHAIN", name="workflow", output="All your orders have shipped."))


def test_a_corpus_of_clean_realistic_traces_yields_no_detections():
    rng = random.Random(7)
    traces = [_clean_trace(rng, n) for n in range(50)]
    batch = TraceBatch(traces={t[0]["trace_id"]: t for t in traces})
    p = processor(blast_radius={"send_email": "irreversible_write"}, retrieval_min_score=0.3)
    found = p.process_traces(batch, NoStore()).detections
    assert found == [], [(d.detector, d.message) for d in found]
    assert len(batch.traces) == 50 and p.errors == 0


def test_example_token_budget_rule_fires_on_a_runaway_trace(tmp_path):
    import pathlib

    import yaml

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sql_rules.yaml"
    p = processor(**yaml.safe_load(path.read_text())["processors"]["detectors"])
    root = make_span("AGENT", name="agent")
    trace = make_trace(*(llm("step", extra={"llm.token_count.total": 90_000}) for _ in range(3)), root=root)
    ds = p.process_traces(TraceBatch(traces={trace[0]["trace_id"]: trace}), store_with(tmp_path, trace)).detections
    budget = [d for d in ds if d.detector == "token_budget"]
    assert [(d.span_id, d.failure_mode, d.evidence["tokens"]) for d in budget] == [(root["span_id"], "loop", 270000)]


def test_messages_keyed_by_digits_int_refuses_are_not_read_as_a_list():
    """The decoder stores a key segment such as "\u00b2" as an object key (isdigit() says digit, int() refuses)."""
    from tracesieve.processors.spanview import output_messages

    span = make_span("LLM")
    span["attributes"]["llm"] = {"output_messages": {"\u00b2": {"message": {"role": "assistant", "content": "hi"}}}}
    assert output_messages(span) == []
