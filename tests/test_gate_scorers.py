"""gate's pieces without processes: one scorer per expected_behavior key, dataset checks, regressed_count, output."""

from __future__ import annotations

import inspect
import json
import os
import re
import xml.etree.ElementTree as ET

import pytest
from detector_builders import WEATHER_TOOL, llm, make_span, make_trace, retriever, tool

from tracesieve.collector.cases import bump_regressed_count
from tracesieve.collector.gate import CaseResult, RunResult, resource_attributes
from tracesieve.collector.gate_output import failing, junit_xml, mode_matrix
from tracesieve.collector.gate_scorers import SCORERS, expected_problems, score
from tracesieve.processors.detectors import rule_settings
from tracesieve.processors import promotion

SETTINGS = rule_settings(None)


def answered(text: str, *spans, mime: str | None = None):
    """A trace whose root AGENT span answered ``text``."""
    return make_trace(*spans, root=make_span("AGENT", name="support_agent", output=text, output_mime=mime))


def annotated(label: str):
    return make_trace(llm(), root=make_span("AGENT", name="support_agent", attrs={
        "annotations.0.annotation.name": "correctness", "annotations.0.annotation.label": label}))


# key: (value, a run that meets it, a run that breaks it, what the problem says)
SCORER_CASES = {
    "required_tool_sequence": (["search", "refund"],
                               lambda: make_trace(tool("search"), tool("lookup"), tool("refund")),
                               lambda: make_trace(tool("refund"), tool("search")), "does not contain ['search', 'refund'] in order"),
    "tool_calls_succeed": (["refund"], lambda: make_trace(tool("refund"), tool("lookup", status="ERROR")),
                           lambda: make_trace(tool("refund", status="ERROR")), "tool calls failed: refund"),
    "tool_arguments_schema": ({"get_weather": WEATHER_TOOL["function"]["parameters"]},
                              lambda: make_trace(tool(args='{"city": "Paris"}')),
                              lambda: make_trace(tool(args='{"town": "Paris"}')), "'city' is a required property"),
    "min_retrieved_documents": (1, lambda: make_trace(retriever()), lambda: make_trace(retriever([])),
                                "returned 0 documents"),
    "min_document_score": (0.5, lambda: make_trace(retriever([("doc-1", 0.8)])),
                           lambda: make_trace(retriever([("doc-1", 0.2)])), "best score 0.2 is under 0.5"),
    "cited_ids_within_retrieved": (True, lambda: make_trace(retriever(), llm("Within 30 days [doc-1].")),
                                   lambda: make_trace(retriever(), llm("Within 30 days [doc-9].")), "doc-9"),
    "allowed_citation_ids": (["doc-1"], lambda: answered("Yes [doc-1]."), lambda: answered("Yes [doc-2]."),
                             "cites doc-2"),
    "no_facts_without_retrieval": (
        True, lambda: make_trace(retriever([]), llm("I could not find anything about that.")),
        lambda: make_trace(retriever([]), llm("Our refund window is thirty days from delivery for every item "
                                              "bought online or in a store.")), "answered with"),
    "must_not": (["I cannot"], lambda: answered("Here is your refund."), lambda: answered("Sorry, I  CANNOT help."),
                 "contains 'I cannot'"),
    "must_include": (["refund issued"], lambda: answered("Refund issued today."), lambda: answered("Done."),
                     "does not contain 'refund issued'"),
    "output_schema": ({"type": "object", "required": ["order_id"]}, lambda: answered('{"order_id": "ORD-1"}'),
                      lambda: answered('{"id": 1}'), "'order_id' is a required property"),
    "output_mime_type": ("application/json", lambda: answered('{"ok": true}', mime="application/json"),
                         lambda: answered("all good", mime="text/plain"), "declared text/plain"),
    "finish_reason_not": (["length"], lambda: make_trace(llm(finish="stop")),
                          lambda: make_trace(llm(finish="max_tokens")), "finished with max_tokens"),
    "max_duration_ms": ({"LLM": 30_000}, lambda: make_trace(llm(duration_ms=1_000)),
                        lambda: make_trace(llm(duration_ms=45_000)), "took 45000ms"),
    "max_latency_ms": (5_000, lambda: make_trace(llm(duration_ms=500)),
                       lambda: make_trace(llm(duration_ms=9_000)), "end to end"),
    "max_identical_calls": (2, lambda: make_trace(tool(args='{"q": 1}'), tool(args='{"q": 1}')),
                            lambda: make_trace(*[tool(args='{"q": 1}') for _ in range(3)]), "3 times"),
    "max_steps": (3, lambda: make_trace(llm(), tool()), lambda: make_trace(llm(), tool(), llm(), tool()),
                  "4 steps"),
    "must_not_call_after_error": (["refund_payment"],
                                  lambda: make_trace(tool("refund_payment"), tool("lookup", status="ERROR")),
                                  lambda: make_trace(tool("lookup", status="ERROR"), tool("refund_payment")),
                                  "refund_payment ran after lookup failed"),
    "no_error_spans": (True, lambda: make_trace(llm()), lambda: make_trace(llm(status="ERROR")), "spans failed"),
    "feedback_passes": (["correctness"], lambda: annotated("correct"), lambda: annotated("incorrect"),
                        "judged this"),
}


def test_every_scorer_has_a_case_here():
    assert set(SCORER_CASES) == set(SCORERS)


@pytest.mark.parametrize("key", sorted(SCORER_CASES))
def test_scorer_passes_a_good_run_and_names_the_problem_in_a_bad_one(key):
    value, good, bad, says = SCORER_CASES[key]
    assert expected_problems({key: value}) == []
    assert score({key: value}, good(), SETTINGS) == []
    problems = score({key: value}, bad(), SETTINGS)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: ") and says in problems[0], problems


def test_every_key_promotion_drafts_has_a_scorer():
    drafted = set(re.findall(r'exp\["(\w+)"\]', inspect.getsource(promotion.draft_expected)))
    assert len(drafted) >= 15
    assert drafted <= set(SCORERS), drafted - set(SCORERS)


def test_unknown_key_and_wrong_shape_are_dataset_errors():
    problems = expected_problems({"must_contain": ["x"], "max_identical_calls": "two", "must_not": ["ok"]})
    assert len(problems) == 2
    assert problems[0].startswith("expected_behavior.must_contain: no scorer for this key")
    assert problems[1] == 'expected_behavior.max_identical_calls: expected a whole number, got "two"'
    assert expected_problems({"output_schema": {"type": "nonsense"}}) != []
    assert expected_problems({"max_duration_ms": {"llm": 100, "TOOL": None}}) == []
    assert expected_problems({"max_duration_ms": {"LMM": 100}}) != []  # a typo must not turn the check off
    assert expected_problems(["not", "a", "mapping"]) == ["expected_behavior must be a mapping"]


def test_a_run_of_several_traces_is_scored_as_one():
    first = make_trace(tool("search"))
    second = make_trace(tool("refund", start=11), root=make_span("AGENT", name="turn2", start=10))
    assert score({"required_tool_sequence": ["search", "refund"]}, first + second, SETTINGS) == []
    assert score({"required_tool_sequence": ["search", "refund"]}, second + first, SETTINGS) == []


def test_ceilings_ignore_the_case_of_span_kinds_and_unrecorded_arguments_are_not_judged():
    slow = make_trace(llm(duration_ms=45_000))
    assert score({"max_duration_ms": {"llm": 30_000}}, slow, SETTINGS) != []
    silent = make_trace(tool(args=None))
    assert score({"tool_arguments_schema": {"*": {"type": "object"}}}, silent, SETTINGS) == []
    assert score({"tool_arguments_schema": {"*": {}}}, make_trace(tool(args="not json")), SETTINGS) == [
        "tool_arguments_schema: get_weather was called with arguments that are not JSON"]


def test_a_langchain_tools_one_bare_argument_is_plain_text_not_arguments_breaking_the_schema():
    # openinference-instrumentation-langchain 0.1.80 records lookup_order(order_id="12") as input.value "12", no
    # mime type: the JSON number 12 failed every fixed agent held to tool_arguments_schema.
    bare = make_trace(make_span("TOOL", name="lookup_order", attrs={"tool.name": "lookup_order"}, input="12"))
    schema = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
    assert score({"tool_arguments_schema": {"lookup_order": schema}}, bare, SETTINGS) == []
    declared = make_trace(tool("lookup_order", args="12"))  # declared application/json: held to the schema
    assert score({"tool_arguments_schema": {"lookup_order": schema}}, declared, SETTINGS) != []


def test_a_call_the_framework_refused_is_held_to_the_schema_beside_the_tools_that_ran():
    # The Vercel AI SDK (ai 6) and smolagents refuse a call breaking the tool's schema: no TOOL span records it.
    # With another tool run in the trace, only TOOL spans were judged and the regressed case passed.
    refused = make_trace(llm(None, tool_calls=[("get_weather", '{"town": "Paris"}'), ("lookup", '{"id": 1}')]),
                         tool("lookup", args='{"id": 1}'))
    schema = {"get_weather": WEATHER_TOOL["function"]["parameters"]}
    assert score({"tool_arguments_schema": schema}, refused, SETTINGS) == [
        "tool_arguments_schema: get_weather arguments break its schema: 'city' is a required property"]
    both = make_trace(llm(None, tool_calls=[("get_weather", '{"town": "Paris"}')]), tool(args='{"town": "Paris"}'))
    assert score({"tool_arguments_schema": schema}, both, SETTINGS) == [
        "tool_arguments_schema: get_weather arguments break its schema: 'city' is a required property"]
    fine = make_trace(llm(None, tool_calls=[("get_weather", '{"city": "Paris"}')]), tool("lookup", args='{"id": 1}'))
    assert score({"tool_arguments_schema": schema}, fine, SETTINGS) == []


def test_resource_attributes_keep_the_callers_pairs_and_replace_ours():
    assert resource_attributes(None, "TS-0001", 1) == "tracesieve.case_id=TS-0001,tracesieve.run=1"
    assert resource_attributes(None, "TS-0001", None) == "tracesieve.case_id=TS-0001"  # DESIGN's value, one run
    merged = resource_attributes("deployment.environment=ci, tracesieve.case_id=old,service.version=2", "TS-0002", 3)
    assert merged == ("deployment.environment=ci,service.version=2,"
                      "tracesieve.case_id=TS-0002,tracesieve.run=3")


DATASET = """\
# the failure dataset
schema_version: 1
failure_modes: [tool_invocation, truncation]
cases:
  - id: TS-0001   # the first one
    failure_mode: tool_invocation
    input: {user_message: 'quoted', conversation_history: []}
    regressed_count: 0
  - {id: TS-0002, failure_mode: truncation, regressed_count: 9}   # flow style
  - id: TS-0003
    failure_mode: truncation
    regressed_count: 4
# trailing comment
"""


def test_bump_regressed_count_changes_only_those_digits_and_replaces_the_file(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text(DATASET)
    inode = os.stat(path).st_ino
    assert bump_regressed_count(path, ["TS-0001", "TS-0002"]) == {"TS-0001": 1, "TS-0002": 10}
    expected = DATASET.replace("    regressed_count: 0", "    regressed_count: 1").replace(
        "regressed_count: 9}", "regressed_count: 10}")
    assert path.read_text() == expected
    assert os.stat(path).st_ino != inode  # written beside and renamed over: readers never see half a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.yaml"]


def test_bump_regressed_count_falls_back_to_a_round_trip_that_keeps_comments(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text(DATASET.replace("regressed_count: 4", "regressed_count: !!int '4'"))
    assert bump_regressed_count(path, ["TS-0003"]) == {"TS-0003": 5}
    text = path.read_text()
    assert "# the first one" in text and "# trailing comment" in text and "# flow style" in text
    assert re.search(r"regressed_count: 5\b", text) and "regressed_count: 9" in text


def _result(case_id: str, mode: str, reasons: list[str], previous: str | None = None) -> CaseResult:
    r = CaseResult(case_id, mode, [RunResult(1, 0 if not reasons else 1, 0.5, ["t" * 32], list(reasons))])
    r.previous = previous
    return r


def test_matrix_counts_per_mode_and_regressions_come_first():
    results = [_result("TS-0001", "truncation", ["cut"]), _result("TS-0002", "truncation", []),
               _result("TS-0003", "loop", ["again"], previous="passed")]
    assert mode_matrix(results) == [["truncation", 2, 1, 1], ["loop", 1, 0, 1], ["total", 3, 1, 2]]
    assert [r.case_id for r in failing(results)] == ["TS-0003", "TS-0001"]


def test_junit_has_one_testcase_per_case_and_a_failure_on_each_failing_one():
    results = [_result("TS-0001", "truncation", ["cut \x1b[31m<here>"]), _result("TS-0002", "loop", [])]
    root = ET.fromstring(junit_xml(results, 1.5))
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("tests") == "2" and suites[0].get("failures") == "1"
    cases = suites[0].findall("testcase")
    assert [c.get("name") for c in cases] == ["TS-0001", "TS-0002"]
    assert cases[0].find("failure").get("message") == "cut \ufffd[31m<here>"
    assert cases[1].find("failure") is None
    assert cases[0].get("classname") == "tracesieve.truncation"


def test_check_expected_scores_bare_span_rows_in_their_given_order():
    from tracesieve.collector.gate import check_expected

    def span(kind, name, *, parent="root", status="OK", output=None, reason=None, args=None, ms=10.0):
        return {"span_id": name, "parent_span_id": parent, "span_kind": kind, "name": name, "tool_name":
                name if kind == "TOOL" else None, "status_code": status, "output_value": output,
                "llm_finish_reason": reason, "input_value": args, "duration_ms": ms, "attributes": {}}

    trace = [span("AGENT", "root", parent=None, output='{"answer": "sorry, I cannot"}'),
             span("TOOL", "search", args='{"q": 1}'), span("TOOL", "search", args='{"q": 1}'),
             span("TOOL", "refund", status="ERROR"), span("LLM", "llm", reason="length", ms=45_000.0)]
    assert check_expected({}, trace) == []
    cases = {
        "required_tool_sequence": (["refund", "search"], "does not contain"),
        "must_not": (["cannot"], "contains 'cannot'"),
        "output_schema": ({"type": "object", "required": ["order_id"]}, "breaks output_schema"),
        "finish_reason_not": (["length"], "finished with length"),
        "max_identical_calls": (1, "called 2 times"),
        "tool_calls_succeed": (["refund"], "tool calls failed"),
        "max_duration_ms": ({"LLM": 30_000}, "took 45000ms"),
    }
    for key, (value, message) in cases.items():
        problems = check_expected({key: value}, trace)
        assert len(problems) == 1 and message in problems[0], (key, problems)
    assert check_expected({"required_tool_sequence": ["search", "refund"], "tool_calls_succeed": ["search"]},
                          trace) == []
    with pytest.raises(Exception, match="no scorer"):
        check_expected({"must_sparkle": True}, trace)


def test_a_genai_agent_root_answering_in_output_messages_is_judged_on_its_text():
    """An invoke_agent root records its answer as ``gen_ai.output.messages`` (stored as its output): the answer
    is the text in it (output_schema judged the message list, so the fixed agent of a promoted
    format_violation case failed the gate with "[{'role': 'assistant', ...}] is not of type 'object'")."""
    def genai_root(text: str):
        msgs = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": "stop"}])
        return make_trace(llm(text), root=make_span("AGENT", name="invoke_agent support", genai=True, output=msgs,
                                                     attrs={"gen_ai.operation.name": "invoke_agent",
                                                            "gen_ai.output.messages": msgs}))
    expected = {"output_schema": {"type": "object", "required": ["order_id"]}, "output_mime_type": "application/json",
                "must_include": ["ORD-1"]}
    assert score(expected, genai_root('{"order_id": "ORD-1"}'), SETTINGS) == []
    assert score(expected, genai_root("Your order ORD-1 has shipped."), SETTINGS) == [
        "output_schema: the answer is not JSON", "output_mime_type: the answer is not JSON"]
