"""Promotion: detections -> candidates (input, context, observed, expected, source), dedupe, near-duplicates, cap."""

from __future__ import annotations

import ast
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tracesieve.processors.base import TraceBatch
from tracesieve.processors.promotion import (
    PromotionProcessor,
    extract_context,
    extract_input,
    extract_source,
    input_hash,
    normal_form,
)
from tracesieve.storage.candidates import (
    get_candidate,
    list_candidates,
    mark_promoted,
    mark_rejected,
    upsert_candidates,
)
from tracesieve.storage.errors import ConfigError, NotFoundError, UsageError
from tracesieve.storage.migrations import migrate
from tracesieve.storage.schema import Detection
from tracesieve.collector.decode import nest_attributes

from conftest import FAST_JUDGE
from sdk_helpers import emit_conversation, emit_late_span, emit_thumbs_down, sdk_tracer

T0 = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------------------
# builders


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Flattened OTLP keys -> the nested attributes the collector stores (the production function)."""
    return nest_attributes(flat)


def span(
    trace_id: str,
    span_id: str,
    kind: str = "CHAIN",
    *,
    parent: str | None = None,
    name: str | None = None,
    attrs: dict[str, Any] | None = None,
    input_value: str | None = None,
    output_value: str | None = None,
    status: str = "OK",
    status_message: str | None = None,
    tool_name: str | None = None,
    model: str | None = None,
    finish_reason: str | None = None,
    at: int = 0,
    service: str = "support-agent",
    session: str | None = None,
) -> dict[str, Any]:
    return {
        "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent,
        "name": name or f"{kind.lower()} {span_id}", "span_kind": kind,
        "start_time": T0 + dt.timedelta(milliseconds=at), "end_time": T0 + dt.timedelta(milliseconds=at + 10),
        "duration_ms": 10.0, "status_code": status, "status_message": status_message,
        "service_name": service, "session_id": session, "user_id": None,
        "input_value": input_value, "output_value": output_value,
        "llm_model_name": model, "llm_finish_reason": finish_reason, "tool_name": tool_name,
        "attributes": nest(attrs or {}), "resource_attributes": {"service": {"name": service}},
        "events": [], "links": [],
    }


def oi_messages(prefix: str, *messages: tuple[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (role, content) in enumerate(messages):
        out[f"{prefix}.{i}.message.role"] = role
        out[f"{prefix}.{i}.message.content"] = content
    return out


def agent_trace(trace_id: str, user_message: str, *, tool: str = "refund_payment",
                tool_status: str = "ERROR", answer: str = "Done.") -> list[dict[str, Any]]:
    """AGENT root -> LLM (OpenInference messages) -> TOOL."""
    return [
        span(trace_id, "a0", "AGENT", input_value=user_message, output_value=answer, at=0,
             attrs={"agent.name": "support"}),
        span(trace_id, "l1", "LLM", parent="a0", model="gpt-4o", at=1,
             attrs={**oi_messages("llm.input_messages", ("system", "You are support."), ("user", user_message)),
                    "llm.prompt_template.version": "v7"}),
        span(trace_id, "t2", "TOOL", parent="a0", tool_name=tool, status=tool_status, at=2,
             input_value='{"order_id": 42}', output_value='{"error": "gateway timeout"}',
             status_message="TimeoutError: gateway" if tool_status == "ERROR" else None),
    ]


def detection(trace_id: str, span_id: str = "t2", mode: str = "tool_invocation", detector: str = "tool_error",
              severity: str = "P1", evidence: dict[str, Any] | None = None) -> Detection:
    return Detection(trace_id=trace_id, span_id=span_id, detector=detector, failure_mode=mode, severity=severity,
                     blast_radius="irreversible_write", message=f"{mode} on {span_id}", evidence=evidence or {})


class DuckStore:
    """The StoreReader the trace stage gets, over a real DuckDB connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def query(self, sql: str, params: Any = (), *, time_limit: float | None = None) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect(str(tmp_path / "store.duckdb"))
    migrate(c)
    yield c
    c.close()


def judge(proc: PromotionProcessor, con: duckdb.DuckDBPyConnection, traces: dict[str, list[dict[str, Any]]],
          detections: list[Detection], now: dt.datetime = T0) -> TraceBatch:
    """What the judge thread + writer do: process, then upsert in one transaction."""
    batch = proc.process_traces(TraceBatch(traces=traces, detections=detections), DuckStore(con))
    con.execute("BEGIN TRANSACTION")
    upsert_candidates(con, batch.candidates, now)
    con.execute("COMMIT")
    return batch


def one(traces: dict[str, list[dict[str, Any]]], detections: list[Detection], **cfg: Any):
    proc = PromotionProcessor.from_config(cfg)
    return proc.process_traces(TraceBatch(traces=traces, detections=detections), _EmptyStore()).candidates


class _EmptyStore:
    def query(self, sql: str, params: Any = (), *, time_limit: float | None = None) -> list[dict[str, Any]]:
        return [{"n": 0}] if "count(*)" in sql else []


LONG = ("I ordered a blue winter jacket three weeks ago and it still has not arrived, the tracking page "
        "says it is stuck in the warehouse, can you please refund order 42 to my card")


# ---------------------------------------------------------------------------
# dedupe


def test_same_failure_from_four_customers_is_one_candidate(con):
    proc = PromotionProcessor.from_config({})
    emails = ["<EMAIL:aaaaaa>", "<EMAIL:bbbbbb>", "<EMAIL:cccccc>", "<EMAIL:dddddd>"]
    traces = {f"{i:032x}": agent_trace(f"{i:032x}", f"Refund order 42 for  {e}, please") for i, e in enumerate(emails, 1)}
    judge(proc, con, traces, [detection(t) for t in traces])
    rows = list_candidates(con)
    assert len(rows) == 1
    assert rows[0]["occurrences"] == 4
    assert sorted(rows[0]["trace_ids"]) == sorted(traces)


def test_recurrences_in_later_batches_grow_the_same_candidate(con):
    proc = PromotionProcessor.from_config({})
    for i, e in enumerate(["<EMAIL:aaaaaa>", "<EMAIL:bbbbbb>"], 1):
        tid = f"{i:032x}"
        judge(proc, con, {tid: agent_trace(tid, f"Refund order 42 for {e}")}, [detection(tid)],
              now=T0 + dt.timedelta(minutes=i))
    (row,) = list_candidates(con)
    assert row["occurrences"] == 2
    assert row["first_seen"] < row["last_seen"]


def test_rejudging_a_trace_does_not_count_it_twice(con):
    proc = PromotionProcessor.from_config({})
    tid = "1" * 32
    traces = {tid: agent_trace(tid, "Refund order 42 for <EMAIL:aaaaaa>")}
    judge(proc, con, traces, [detection(tid)])
    judge(proc, con, traces, [detection(tid)], now=T0 + dt.timedelta(minutes=5))
    (row,) = list_candidates(con)
    assert row["occurrences"] == 1
    assert row["trace_ids"] == [tid]


def test_several_detections_of_one_rule_on_one_trace_make_one_candidate():
    tid = "2" * 32
    spans = agent_trace(tid, "Where is my parcel?")
    spans.append(span(tid, "t3", "TOOL", parent="a0", tool_name="refund_payment", status="ERROR", at=3))
    cands = one({tid: spans}, [detection(tid, "t2"), detection(tid, "t3", severity="P0"),
                               detection(tid, "l1", mode="llm_error", detector="llm_error")])
    assert sorted(c.failure_mode for c in cands) == ["llm_error", "tool_invocation"]
    tool = next(c for c in cands if c.failure_mode == "tool_invocation")
    assert tool.source["span_ids"] == ["t2", "t3"]
    assert tool.severity == "P0"


def test_normal_form_reduces_placeholders_whitespace_and_case():
    a = {"user_message": "Mail  <EMAIL:3f9a1c> NOW", "conversation_history": []}
    b = {"user_message": "mail <EMAIL:77b0e2>\n now", "conversation_history": []}
    c = {"user_message": "mail <PHONE:77b0e2> now", "conversation_history": []}
    assert input_hash(a) == input_hash(b)
    assert input_hash(a) != input_hash(c)
    assert "<email>" in normal_form(a)


def test_inputs_without_text_group_per_failing_call():
    t1, t2 = "3" * 32, "4" * 32
    bare = lambda tid, tool: [span(tid, "t2", "TOOL", tool_name=tool, status="ERROR")]  # noqa: E731
    a, b = one({t1: bare(t1, "search"), t2: bare(t2, "refund")}, [detection(t1), detection(t2)])
    assert a.input_hash != b.input_hash


# ---------------------------------------------------------------------------
# near duplicates and the cap


def test_near_duplicate_of_a_stored_candidate_is_marked_duplicate(con):
    proc = PromotionProcessor.from_config({})
    t1, t2 = "5" * 32, "6" * 32
    judge(proc, con, {t1: agent_trace(t1, LONG + " thanks")}, [detection(t1)])
    judge(proc, con, {t2: agent_trace(t2, LONG + " cheers")}, [detection(t2)], now=T0 + dt.timedelta(minutes=1))
    first = get_candidate(con, list_candidates(con, status="new")[0]["candidate_id"])
    (dup,) = list_candidates(con, status="duplicate")
    assert dup["duplicate_of"] == first["candidate_id"]
    assert dup["trace_ids"] == [t2]


def test_near_duplicates_within_one_batch_point_to_the_earlier_one():
    t1, t2 = "7" * 32, "8" * 32
    first = agent_trace(t1, LONG + " thanks")
    second = [dict(s, start_time=s["start_time"] + dt.timedelta(seconds=1)) for s in agent_trace(t2, LONG + " cheers")]
    a, b = one({t2: second, t1: first}, [detection(t2), detection(t1)])
    assert (a.trace_id, a.status) == (t1, "new")
    assert (b.status, b.duplicate_of) == ("duplicate", a.candidate_id)


def test_a_different_input_is_not_a_near_duplicate(con):
    proc = PromotionProcessor.from_config({})
    t1, t2 = "9" * 32, "a" * 32
    judge(proc, con, {t1: agent_trace(t1, LONG)}, [detection(t1)])
    judge(proc, con, {t2: agent_trace(t2, "Cancel my subscription to the premium plan today")}, [detection(t2)])
    assert {r["status"] for r in list_candidates(con)} == {"new"}


def test_the_same_input_failing_another_detector_of_the_mode_is_not_a_duplicate(con):
    """DESIGN: a duplicate is a very similar but not equal input; an equal one is its own candidate."""
    proc = PromotionProcessor.from_config({})
    t1, t2 = "d" * 32, "e" * 32
    judge(proc, con, {t1: agent_trace(t1, LONG)}, [detection(t1, mode="tool_argument", detector="tool_args_json")])
    judge(proc, con, {t2: agent_trace(t2, LONG)}, [detection(t2, mode="tool_argument", detector="tool_schema")],
          now=T0 + dt.timedelta(minutes=1))
    rows = list_candidates(con)
    assert sorted((r["status"], r.get("duplicate_of")) for r in rows) == [("new", None), ("new", None)]
    # and within one batch
    t3, t4 = "f" * 32, "1" * 32
    a, b = one({t3: agent_trace(t3, LONG), t4: agent_trace(t4, LONG)},
               [detection(t3, mode="retrieval_miss", detector="empty_retrieval"),
                detection(t4, mode="retrieval_miss", detector="low_score_retrieval")])
    assert (a.status, b.status) == ("new", "new")


def test_threshold_comes_from_config(con):
    proc = PromotionProcessor.from_config({"near_duplicate_threshold": 1.0})
    t1, t2 = "b" * 32, "c" * 32
    judge(proc, con, {t1: agent_trace(t1, LONG + " thanks")}, [detection(t1)])
    judge(proc, con, {t2: agent_trace(t2, LONG + " cheers")}, [detection(t2)])
    assert {r["status"] for r in list_candidates(con)} == {"new"}


def test_candidates_are_listed_most_severe_first_then_most_recent(con):
    proc = PromotionProcessor.from_config({})
    plan = [("P3", "Refund my order"), ("P0", "Cancel the premium plan"), ("P3", "Change my delivery address"),
            ("P1", "Why was I charged twice")]
    for i, (severity, text) in enumerate(plan):
        tid = f"{i + 60:032x}"
        judge(proc, con, {tid: agent_trace(tid, text)}, [detection(tid, severity=severity)],
              now=T0 + dt.timedelta(minutes=i))
    listed = [(r["severity"], r["input"]["user_message"]) for r in list_candidates(con)]
    assert listed == [("P0", "Cancel the premium plan"), ("P1", "Why was I charged twice"),
                      ("P3", "Change my delivery address"), ("P3", "Refund my order")]


def test_cap_per_intent_stops_new_candidates_but_not_recurrences(con):
    proc = PromotionProcessor.from_config({"max_per_intent": 2})
    messages = ["Refund my order", "Cancel the premium plan", "Change my delivery address", "Why was I charged twice"]
    tids = [f"{i:032x}" for i in range(20, 24)]
    judge(proc, con, {t: agent_trace(t, m) for t, m in zip(tids, messages)}, [detection(t) for t in tids])
    rows = list_candidates(con)
    assert len(rows) == 2
    assert {r["intent"] for r in rows} == {"tool:refund_payment"}
    assert proc.stats["capped"] == 2
    again = f"{99:032x}"
    judge(proc, con, {again: agent_trace(again, messages[0])}, [detection(again)])
    assert sum(r["occurrences"] for r in list_candidates(con)) == 3


def test_cap_counts_each_intent_separately(con):
    proc = PromotionProcessor.from_config({"max_per_intent": 1})
    t1, t2 = "d" * 32, "e" * 32
    judge(proc, con, {t1: agent_trace(t1, "Refund my order", tool="refund_payment"),
                      t2: agent_trace(t2, "Find my order", tool="search_orders")}, [detection(t1), detection(t2)])
    assert len(list_candidates(con)) == 2


def test_unknown_or_bad_options_are_config_errors():
    with pytest.raises(ConfigError) as err:
        PromotionProcessor.from_config({"near_duplicate_threshold": 1.5, "max_per_intnet": 3},
                                       path="processors.promotion")
    assert "processors.promotion.near_duplicate_threshold" in str(err.value)
    assert "processors.promotion.max_per_intnet: unknown key" in str(err.value)


# ---------------------------------------------------------------------------
# input extraction


def test_input_from_openinference_llm_messages():
    tid = "f" * 32
    spans = [span(tid, "l1", "LLM", attrs=oi_messages(
        "llm.input_messages", ("system", "You are support."), ("user", "Hi"), ("assistant", "Hello! How can I help?"),
        ("user", "Refund order 42"), ))]
    assert extract_input(spans) == {
        "user_message": "Refund order 42",
        "conversation_history": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello! How can I help?"}],
    }


def test_input_from_openinference_content_parts():
    tid = "f" * 32
    spans = [span(tid, "l1", "LLM", attrs={
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.contents.0.message_content.type": "text",
        "llm.input_messages.0.message.contents.0.message_content.text": "What does this invoice say?",
        "llm.input_messages.0.message.contents.1.message_content.type": "image",
        "llm.input_messages.0.message.contents.1.message_content.image.image.url": "https://x/y.png",
    })]
    assert extract_input(spans)["user_message"] == "What does this invoice say?"


def test_input_from_genai_messages():
    tid = "f" * 32
    messages = [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "get_weather",
                                         "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "rainy"}]},
        {"role": "user", "parts": [{"type": "text", "content": "And tomorrow?"}]},
    ]
    spans = [span(tid, "c0", "LLM", attrs={"gen_ai.operation.name": "chat",
                                           "gen_ai.input.messages": json.dumps(messages)})]
    got = extract_input(spans)
    assert got["user_message"] == "And tomorrow?"
    assert [m["role"] for m in got["conversation_history"]] == ["user", "assistant", "tool"]
    assert got["conversation_history"][1]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert got["conversation_history"][2]["content"] == "rainy"


def test_input_falls_back_to_the_root_input_value():
    tid = "f" * 32
    assert extract_input([span(tid, "r", "CHAIN", input_value="Where is my parcel?")]) == {
        "user_message": "Where is my parcel?", "conversation_history": []}
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi there"}]})
    assert extract_input([span(tid, "r", "CHAIN", input_value=request)])["user_message"] == "Hi there"
    assert extract_input([span(tid, "r", "CHAIN", input_value='{"question": "Why?"}')])["user_message"] == "Why?"


def test_a_tools_arguments_are_never_taken_for_the_user_message():
    """A GenAI agent root without input messages: its tool's arguments are not what the user asked."""
    tid = "e" * 32
    spans = [span(tid, "r", "AGENT"), span(tid, "t", "TOOL", parent="r", tool_name="lookup_order",
                                           input_value='{"order_id": "1234"}'),
             span(tid, "k", "RETRIEVER", parent="r", input_value="order 1234 status")]
    assert extract_input(spans) == {"user_message": "", "conversation_history": []}
    chain = span(tid, "c", "CHAIN", parent="r", input_value="Where is order 1234?")
    assert extract_input(spans + [chain])["user_message"] == "Where is order 1234?"


# ---------------------------------------------------------------------------
# context, observed, source


def test_context_holds_documents_and_tool_calls():
    tid = "1" * 32
    spans = [
        span(tid, "a0", "AGENT", input_value="q"),
        span(tid, "r1", "RETRIEVER", parent="a0", input_value="refund policy", attrs={
            "retrieval.documents.0.document.id": "doc-1", "retrieval.documents.0.document.score": 0.91,
            "retrieval.documents.0.document.content": "Refunds within 30 days.",
            "retrieval.documents.1.document.id": "doc-2", "retrieval.documents.1.document.score": 0.4}),
        span(tid, "t1", "TOOL", parent="a0", tool_name="lookup_order", input_value='{"order_id": 42}',
             output_value='{"status": "shipped"}'),
    ]
    ctx = extract_context(spans)
    assert [(d["id"], d["score"]) for d in ctx["documents"]] == [("doc-1", 0.91), ("doc-2", 0.4)]
    assert ctx["retrieval_queries"] == ["refund policy"]
    assert ctx["tool_calls"][0] == {"span_id": "t1", "name": "lookup_order", "arguments": {"order_id": 42},
                                    "result": {"status": "shipped"}, "status": "OK"}


def test_context_reads_genai_documents_and_tool_spans():
    tid = "1" * 32
    spans = [
        span(tid, "r1", "RETRIEVER", attrs={"gen_ai.retrieval.documents": json.dumps([{"id": "kb7", "score": 0.7}])}),
        span(tid, "t1", "TOOL", attrs={"gen_ai.tool.name": "get_weather",
                                       "gen_ai.tool.call.arguments": '{"city": "Paris"}',
                                       "gen_ai.tool.call.result": '"rainy"'}),
    ]
    ctx = extract_context(spans)
    assert ctx["documents"][0]["id"] == "kb7"
    assert ctx["tool_calls"][0]["name"] == "get_weather"
    assert ctx["tool_calls"][0]["arguments"] == {"city": "Paris"}
    assert ctx["tool_calls"][0]["result"] == "rainy"


def test_source_names_trace_spans_service_model_prompt_agent_session():
    tid = "1" * 32
    spans = agent_trace(tid, "Refund order 42")
    spans[0]["session_id"] = "sess-9"
    src = extract_source(spans, [detection(tid)])
    assert src["trace_id"] == tid
    assert src["span_ids"] == ["t2"]
    assert (src["service"], src["model"], src["prompt_version"]) == ("support-agent", "gpt-4o", "v7")
    assert (src["agent_name"], src["session_id"]) == ("support", "sess-9")
    assert src["session"] == "sess-9"  # DESIGN lists it as "session"


@pytest.mark.parametrize("key, name", [
    ("traceloop.workflow.name", "refund_flow"),   # @traceloop/node-server-sdk 0.27 withWorkflow, OpenLLMetry @workflow
    ("ai.telemetry.functionId", "support-chat"),  # the Vercel AI SDK's experimental_telemetry.functionId
])
def test_source_names_the_agent_by_the_workflow_or_function_its_producer_names(key, name):
    tid = "2" * 32
    spans = agent_trace(tid, "Refund order 42")
    spans[0]["attributes"] = {}
    spans[1]["attributes"] = {**spans[1]["attributes"], **nest({key: name})}
    assert extract_source(spans, [detection(tid)])["agent_name"] == name


def test_observed_holds_final_answer_and_failing_call():
    tid = "1" * 32
    (cand,) = one({tid: agent_trace(tid, "Refund order 42", answer="Your refund is on its way.")}, [detection(tid)])
    assert cand.observed["final_answer"] == "Your refund is on its way."
    assert cand.observed["failing_calls"][0]["tool"] == "refund_payment"
    assert cand.observed["failing_calls"][0]["error"] == "TimeoutError: gateway"


# ---------------------------------------------------------------------------
# expected drafts


def _tools_attr(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"llm.tools.0.tool.json_schema": json.dumps(
        {"type": "function", "function": {"name": name, "description": "", "parameters": params}})}


def test_tool_argument_draft_is_the_tools_declared_schema():
    tid = "1" * 32
    params = {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}
    spans = agent_trace(tid, "Refund order 42")
    spans[1]["attributes"].update(nest(_tools_attr("refund_payment", params)))
    (cand,) = one({tid: spans}, [detection(tid, mode="tool_argument", detector="tool_schema")])
    assert cand.expected["tool_arguments_schema"] == {"refund_payment": params}
    assert cand.expected["required_tool_sequence"] == ["refund_payment"]


def test_truncation_draft_forbids_finish_reason_length():
    tid = "1" * 32
    spans = [span(tid, "l1", "LLM", input_value="Summarise", finish_reason="length")]
    (cand,) = one({tid: spans}, [detection(tid, "l1", mode="truncation", detector="finish_reason")])
    assert cand.expected == {"finish_reason_not": ["length"]}


def test_hallucination_draft_keeps_citations_within_retrieved_ids():
    tid = "1" * 32
    spans = [span(tid, "a0", "AGENT", input_value="policy?", output_value="See [doc-9]."),
             span(tid, "r1", "RETRIEVER", parent="a0", attrs={"retrieval.documents.0.document.id": "doc-1"}),
             span(tid, "l1", "LLM", parent="a0")]
    (cand,) = one({tid: spans}, [detection(tid, "l1", mode="hallucination", detector="citations",
                                           evidence={"cited_ids": ["doc-9", "doc-1"]})])
    assert cand.expected["cited_ids_within_retrieved"] is True
    assert cand.expected["must_not"] == ["doc-9"]


def test_refusal_draft_forbids_the_refusal_phrase():
    tid = "1" * 32
    spans = agent_trace(tid, "Refund order 42", tool_status="OK",
                        answer="I'm sorry, I cannot help with refunds. Please call us.")
    (cand,) = one({tid: spans}, [detection(tid, "a0", mode="refusal_overreach", detector="refusal")])
    assert cand.expected["must_not"] == ["I'm sorry, I cannot help with refunds"]


def test_loop_draft_caps_identical_calls():
    tid = "1" * 32
    spans = agent_trace(tid, "Find order 42", tool="search_orders", tool_status="OK")
    (cand,) = one({tid: spans}, [detection(tid, mode="loop", detector="repeated_call",
                                           evidence={"max_identical_calls": 3})])
    assert cand.expected == {"max_identical_calls": 3, "required_tool_sequence": ["search_orders"]}


def test_tool_invocation_draft_requires_the_tool_to_succeed():
    tid = "1" * 32
    (cand,) = one({tid: agent_trace(tid, "Refund order 42")}, [detection(tid)])
    assert cand.expected == {"required_tool_sequence": ["refund_payment"], "tool_calls_succeed": ["refund_payment"]}


def test_format_violation_draft_uses_the_response_format_schema():
    tid = "1" * 32
    schema = {"type": "object", "required": ["answer"]}
    params = json.dumps({"model": "gpt-4o", "response_format": {"type": "json_schema",
                                                               "json_schema": {"name": "a", "schema": schema}}})
    spans = [span(tid, "l1", "LLM", input_value="q", attrs={"llm.invocation_parameters": params})]
    (cand,) = one({tid: spans}, [detection(tid, "l1", mode="format_violation", detector="json_output")])
    assert cand.expected["output_schema"] == schema


# ---------------------------------------------------------------------------
# the candidates table


def test_stored_candidate_parses_json_columns(con):
    tid = "1" * 32
    judge(PromotionProcessor.from_config({}), con, {tid: agent_trace(tid, "Refund order 42")}, [detection(tid)])
    (row,) = list_candidates(con, mode="tool_invocation", severity="P1", since=T0)
    got = get_candidate(con, row["candidate_id"])
    assert got["input"]["user_message"] == "Refund order 42"
    assert got["source"]["trace_id"] == tid
    assert got["status"] == "new"
    assert list_candidates(con, mode="loop") == []
    with pytest.raises(UsageError):
        list_candidates(con, status="open")


def test_review_transitions(con):
    proc = PromotionProcessor.from_config({})
    t1, t2 = "1" * 32, "2" * 32
    judge(proc, con, {t1: agent_trace(t1, "Refund order 42"), t2: agent_trace(t2, "Cancel my plan")},
          [detection(t1), detection(t2)])
    a, b = (r["candidate_id"] for r in list_candidates(con))
    mark_promoted(con, a, "TS-0001", "ann", T0)
    assert get_candidate(con, a)["case_id"] == "TS-0001"
    with pytest.raises(UsageError):
        mark_promoted(con, a, "TS-0002", "ann", T0)
    with pytest.raises(UsageError):
        mark_rejected(con, a, "noise", "ann", T0)
    mark_rejected(con, b, "flaky gateway, not our bug", "bob", T0)
    assert get_candidate(con, b)["review_reason"] == "flaky gateway, not our bug"
    with pytest.raises(UsageError):
        mark_rejected(con, b, "again", "bob", T0)
    with pytest.raises(UsageError, match="rejected"):  # a promote that read it before the reject committed
        mark_promoted(con, b, "TS-0002", "ann", T0)
    assert get_candidate(con, b)["status"] == "rejected"
    with pytest.raises(NotFoundError):
        mark_promoted(con, "cmissing", "TS-0003", "ann", T0)
    with pytest.raises(NotFoundError):
        mark_rejected(con, "cmissing", "x", "ann", T0)


def test_promotion_imports_no_duckdb_and_no_collector():
    tree = ast.parse(Path(__file__).parents[1].joinpath("processors", "promotion.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n.startswith(("duckdb", "tracesieve.collector")) for n in names)


def test_a_near_duplicate_judged_while_the_first_is_still_being_written_is_a_duplicate(con):
    """The judge judges a round while the writer still stores the last one's candidates."""
    proc = PromotionProcessor.from_config({"max_per_intent": 2})
    t1, t2, t3 = "1" * 31 + "a", "1" * 31 + "b", "1" * 31 + "c"
    first = proc.process_traces(TraceBatch(traces={t1: agent_trace(t1, LONG + " thanks")},
                                           detections=[detection(t1)]), DuckStore(con))
    (new,) = first.candidates  # not written: its round is still with the writer
    second = proc.process_traces(TraceBatch(traces={t2: agent_trace(t2, LONG + " cheers")},
                                            detections=[detection(t2)]), DuckStore(con))
    (dup,) = second.candidates
    assert (new.status, dup.status, dup.duplicate_of) == ("new", "duplicate", new.candidate_id)
    # Both count toward the cap of their intent as if stored; the third is capped.
    third = proc.process_traces(TraceBatch(traces={t3: agent_trace(t3, "Something else entirely")},
                                           detections=[detection(t3)]), DuckStore(con))
    assert third.candidates == [] and proc.stats["capped"] == 1


# ---------------------------------------------------------------------------
# drafts from real detections: the SDK -> serve -> detectors -> candidate


def _timed_agent_turn(tracer: Any, question: str, steps: list[tuple[str, str, float]]) -> str:
    """An OpenInference AGENT root with children ``(kind, name, seconds)`` one after another, on explicit
    timestamps (a 12 s tool call without waiting 12 s); a TOOL child is ``lookup_order({"order_id": "ORD-7"})``.
    Returns the trace id."""
    from opentelemetry import trace as otel_trace

    ns = 1_000_000_000
    now = time.time_ns() - 600 * ns
    root = tracer.start_span("support_agent", start_time=now)
    root.set_attribute("openinference.span.kind", "AGENT")
    root.set_attribute("input.value", question)
    ctx = otel_trace.set_span_in_context(root)
    for kind, name, seconds in steps:
        child = tracer.start_span(name, context=ctx, start_time=now)
        child.set_attribute("openinference.span.kind", kind)
        if kind == "TOOL":
            child.set_attribute("tool.name", name)
            child.set_attribute("input.value", json.dumps({"order_id": "ORD-7"}))
            child.set_attribute("output.value", json.dumps({"status": "shipped"}))
        if kind == "RETRIEVER":
            child.set_attribute("input.value", question)
            child.set_attribute("retrieval.documents.0.document.id", "doc-1")
        now += int(seconds * ns)
        child.end(end_time=now)
    root.set_attribute("output.value", "Your order ORD-7 has shipped.")
    root.end(end_time=now + ns // 10)
    return format(root.get_span_context().trace_id, "032x")


def _draft(c: Any, trace_id: str, mode: str) -> dict[str, Any]:
    rows = c.wait_for(f"SELECT expected FROM candidates WHERE failure_mode = '{mode}' "
                      f"AND list_contains(trace_ids, '{trace_id}')", lambda r: len(r) == 1)
    expected = rows[0]["expected"]
    return json.loads(expected) if isinstance(expected, str) else expected


def test_a_latency_draft_holds_each_span_kind_to_its_own_threshold(start_collector):
    """A slow retriever (5 s ceiling) and a slow tool (10 s) in one trace: the draft must not hold the
    tool to the retriever's 5 s (it did), or a fixed agent whose tool takes 7 s would fail the gate."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "300ms",
                                                      "latency_breach": {"RETRIEVER": "5s", "TOOL": "10s"}}}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        tid = _timed_agent_turn(tracer, "Where is order ORD-7?",
                                [("RETRIEVER", "search_help", 6), ("TOOL", "lookup_order", 12)])
    assert _draft(c, tid, "latency_breach") == {"max_duration_ms": {"RETRIEVER": 5000.0, "TOOL": 10000.0}}


def test_a_loop_draft_allows_one_identical_call_less_than_the_configured_max_repeats(start_collector):
    """With ``loop.max_repeats: 5`` four identical calls are no loop: the draft allows 4 (it said 2,
    failing an agent that the detectors pass)."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "300ms", "loop": {"max_repeats": 5}}}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        tid = _timed_agent_turn(tracer, "Where is order ORD-7?", [("TOOL", "lookup_order", 0.1)] * 5)
    assert _draft(c, tid, "loop") == {"max_identical_calls": 4, "required_tool_sequence": ["lookup_order"]}


def _chat_turn_without_tool_spans(tracer: Any, form: str, question: str, *, root: bool) -> str:
    """An app that runs its tool itself, unrecorded: model call 1 asks for cancel_order, model call 2 gets the
    tool's answer in its input messages and refuses. ``root=False``: only call 2 is in its trace (each model
    call its own trace, as a bare instrumented client sends them). Returns call 2's trace id."""
    import contextlib

    call = {"id": "call_9", "type": "function",
            "function": {"name": "cancel_order", "arguments": json.dumps({"order_id": "ORD-555"})}}
    result = json.dumps({"ok": False, "reason": "order already shipped"})
    turn = [{"role": "system", "content": "You are support."}, {"role": "user", "content": question}]
    asked = {"role": "assistant", "content": None, "tool_calls": [call]}
    answered = {"role": "tool", "tool_call_id": "call_9", "content": result}
    refusal = {"role": "assistant", "content": "I'm sorry, I can't help with cancellations."}

    def attrs(inputs: list[dict[str, Any]], output: dict[str, Any]) -> dict[str, Any]:
        if form == "genai":
            def parts(m: dict[str, Any]) -> dict[str, Any]:
                ps: list[dict[str, Any]] = []
                if m["role"] == "tool":
                    ps.append({"type": "tool_call_response", "id": m["tool_call_id"], "response": m["content"]})
                elif m.get("content"):
                    ps.append({"type": "text", "content": m["content"]})
                ps += [{"type": "tool_call", "id": c["id"], "name": c["function"]["name"],
                        "arguments": json.loads(c["function"]["arguments"])} for c in m.get("tool_calls", [])]
                return {"role": m["role"], "parts": ps}
            return {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                    "gen_ai.tool.definitions": json.dumps([{"type": "function", "name": "cancel_order"}]),
                    "gen_ai.input.messages": json.dumps([parts(m) for m in inputs]),
                    "gen_ai.output.messages": json.dumps([parts(output)])}
        flat: dict[str, Any] = {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o",
                                "llm.tools.0.tool.json_schema": json.dumps({"type": "function",
                                                                            "function": {"name": "cancel_order"}})}
        for prefix, msgs in (("llm.input_messages", inputs), ("llm.output_messages", [output])):
            for i, m in enumerate(msgs):
                flat[f"{prefix}.{i}.message.role"] = m["role"]
                if m.get("content"):
                    flat[f"{prefix}.{i}.message.content"] = m["content"]
                if m.get("tool_call_id"):
                    flat[f"{prefix}.{i}.message.tool_call_id"] = m["tool_call_id"]
                for j, c in enumerate(m.get("tool_calls", [])):
                    flat[f"{prefix}.{i}.message.tool_calls.{j}.tool_call.id"] = c["id"]
                    flat[f"{prefix}.{i}.message.tool_calls.{j}.tool_call.function.name"] = c["function"]["name"]
                    flat[f"{prefix}.{i}.message.tool_calls.{j}.tool_call.function.arguments"] = c["function"]["arguments"]
        return flat

    with tracer.start_as_current_span("agent run") if root else contextlib.nullcontext():
        if root:
            with tracer.start_as_current_span("chat gpt-4o", attributes=attrs(turn, asked)):
                pass
        with tracer.start_as_current_span("chat gpt-4o", attributes=attrs(turn + [asked, answered], refusal)) as last:
            return format(last.get_span_context().trace_id, "032x")


@pytest.mark.parametrize("form", ["openinference", "genai"])
def test_tool_calls_the_app_ran_unrecorded_come_with_the_results_the_model_was_given(start_collector, form):
    """No TOOL spans: the tool's answer is only in the next model call's input (a tool message). The reviewer
    must see it (the call's ``result`` was missing, and with the asking call in another trace, the call too)."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        traces = {root: _chat_turn_without_tool_spans(tracer, form, f"Cancel order ORD-555 ({form}, {root})", root=root)
                  for root in (True, False)}
    for root, tid in traces.items():
        rows = c.wait_for(f"SELECT context, observed FROM candidates WHERE list_contains(trace_ids, '{tid}')",
                          lambda r: len(r) == 1)
        context, observed = (json.loads(v) if isinstance(v, str) else v for v in (rows[0]["context"], rows[0]["observed"]))
        (call,) = context["tool_calls"]
        assert (call["name"], call["arguments"], call["result"]) == (
            "cancel_order", {"order_id": "ORD-555"}, {"ok": False, "reason": "order already shipped"}), root
        assert observed["tool_sequence"] == ["cancel_order"], root


@pytest.mark.parametrize("style", ["content_events", "message_events"])
def test_a_genai_chat_that_records_its_messages_as_span_events_gives_the_candidate_its_input_and_answer(
        start_collector, style):
    """Older GenAI instrumentations put the content in span events: one ``gen_ai.content.prompt`` /
    ``gen_ai.content.completion`` pair (Semantic Kernel, semconv <= 1.27), or one event per message with the
    body in ``gen_ai.event.content`` (Azure AI Inference). The candidate had an empty input and no answer."""
    c = start_collector(FAST_JUDGE)
    question = f"Summarise my three invoices please ({style})"
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.request.model", "gpt-4o")
            chat.set_attribute("gen_ai.response.finish_reasons", ["length"])
            if style == "content_events":
                chat.add_event("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps(
                    [{"role": "system", "content": "You are a billing bot."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": question}])})
                chat.add_event("gen_ai.content.completion", {"gen_ai.completion": json.dumps(
                    [{"role": "assistant", "content": "Your three invoices total"}])})
            else:
                for event, body in (("gen_ai.system.message", {"role": "system", "content": "You are a billing bot."}),
                                    ("gen_ai.user.message", {"role": "user", "content": "Hi"}),
                                    ("gen_ai.assistant.message", {"role": "assistant", "content": "Hello! How can I help?"}),
                                    ("gen_ai.user.message", {"content": question}),
                                    ("gen_ai.choice", {"index": 0, "finish_reason": "length",
                                                       "message": {"content": "Your three invoices total"}})):
                    chat.add_event(event, {"gen_ai.system": "az.ai.inference", "gen_ai.event.content": json.dumps(body)})
            tid = format(chat.get_span_context().trace_id, "032x")
    rows = c.wait_for(f"SELECT input, observed FROM candidates WHERE list_contains(trace_ids, '{tid}')",
                      lambda r: len(r) == 1)
    inp, observed = (json.loads(v) if isinstance(v, str) else v for v in (rows[0]["input"], rows[0]["observed"]))
    assert inp == {"user_message": question, "conversation_history": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]}
    assert observed["final_answer"] == "Your three invoices total"


def test_a_negative_feedback_draft_names_the_annotations_that_judged_the_trace_failed(start_collector):
    """The draft checks the evaluators that failed the trace (it was always ``[]``: the detector lists the
    records under ``feedback``, a key the draft did not read)."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            root.set_attribute("input.value", "Can I return a blender after 40 days?")
            root.set_attribute("output.value", "Yes, any time.")
            root.set_attribute("annotations.0.annotation.name", "correctness")
            root.set_attribute("annotations.0.annotation.label", "incorrect")
            root.add_event("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "helpfulness",
                                                        "gen_ai.evaluation.score.label": "fail"})
            tid = format(root.get_span_context().trace_id, "032x")
    assert _draft(c, tid, "negative_feedback") == {"feedback_passes": ["correctness", "helpfulness"]}


def test_a_hallucination_draft_does_not_ban_an_invented_id_inside_a_retrieved_one(start_collector):
    """The answer cites [doc-1], never retrieved; doc-12 was. ``must_not: [doc-1]`` (a substring check) would
    fail the fixed answer citing [doc-12]: the draft bans the citation as written, ``[doc-1]``."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "300ms"}}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            root.set_attribute("input.value", "How long is the blender warranty?")
            with tracer.start_as_current_span("search_help") as r:
                r.set_attribute("openinference.span.kind", "RETRIEVER")
                r.set_attribute("retrieval.documents.0.document.id", "doc-12")
                r.set_attribute("retrieval.documents.0.document.content", "Blenders carry a 2-year warranty.")
            root.set_attribute("output.value", "Blenders carry a 5-year warranty [doc-1].")
            tid = format(root.get_span_context().trace_id, "032x")
    assert _draft(c, tid, "hallucination") == {"cited_ids_within_retrieved": True, "must_not": ["[doc-1]"]}


@pytest.mark.parametrize("form", ["openinference", "genai"])
def test_the_system_prompt_left_out_of_the_input_is_in_the_source(start_collector, form):
    """The input leaves system messages out; without prompt-template attributes (most instrumentors send
    none) the reviewer saw the prompt nowhere. ``source.system_prompt`` carries it (sanitized)."""
    c = start_collector(FAST_JUDGE)
    system = "You are Acme support. Escalate refunds to ops@example.com. Never promise refunds."
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            if form == "genai":
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.system_instructions", json.dumps([{"type": "text", "content": system}]))
                chat.set_attribute("gen_ai.input.messages", json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "Refund ORD-3 now"}]}]))
                chat.set_attribute("gen_ai.response.finish_reasons", ["length"])
            else:
                chat.set_attribute("openinference.span.kind", "LLM")
                chat.set_attribute("llm.input_messages.0.message.role", "system")
                chat.set_attribute("llm.input_messages.0.message.content", system)
                chat.set_attribute("llm.input_messages.1.message.role", "user")
                chat.set_attribute("llm.input_messages.1.message.content", "Refund ORD-3 now")
                chat.set_attribute("llm.finish_reason", "length")
            tid = format(chat.get_span_context().trace_id, "032x")
    rows = c.wait_for(f"SELECT input, source FROM candidates WHERE list_contains(trace_ids, '{tid}')",
                      lambda r: len(r) == 1)
    inp, source = (json.loads(v) if isinstance(v, str) else v for v in (rows[0]["input"], rows[0]["source"]))
    assert inp == {"user_message": "Refund ORD-3 now", "conversation_history": []}
    assert source["system_prompt"] == "You are Acme support. Escalate refunds to <EMAIL>. Never promise refunds."


def test_a_step_limit_draft_caps_the_steps_and_guesses_no_repeat_limit(start_collector):
    """Too many steps (``loop.max_steps: 4``, five different lookups): the draft is ``max_steps: 4``. It also
    said ``max_identical_calls: 2``, a limit the detectors do not hold (``max_repeats: 5`` here), failing a
    fixed agent that looks one order up three times."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "300ms",
                                                      "loop": {"max_repeats": 5, "max_steps": 4}}}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        tid = _timed_agent_turn(tracer, "Where are my five orders?",
                                [("TOOL", f"lookup_{n}", 0.1) for n in ("a", "b", "c", "d", "e")])
    assert _draft(c, tid, "loop") == {"max_steps": 4}


def test_a_format_violation_on_a_step_before_the_answer_drafts_no_assertion_on_the_answer(start_collector):
    """A router call asked for JSON and broke it; the agent then answered in text. ``output_schema`` /
    ``output_mime_type`` judge the run's answer, so drafting them (as it did) failed every fixed run; the
    gate's format_violation detectors still judge the router call."""
    c = start_collector(FAST_JUDGE)
    schema = {"type": "object", "properties": {"route": {"enum": ["orders", "billing"]}}, "required": ["route"]}
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("support_agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            root.set_attribute("input.value", "Where is order ORD-77?")
            for name, answer, params in (
                    ("route", "orders", {"response_format": {"type": "json_schema",
                                                             "json_schema": {"name": "route", "schema": schema}}}),
                    ("answer", "Your order ORD-77 has shipped.", {})):
                with tracer.start_as_current_span(name) as call:
                    call.set_attribute("openinference.span.kind", "LLM")
                    call.set_attribute("llm.invocation_parameters", json.dumps({"model": "gpt-4o", **params}))
                    call.set_attribute("llm.input_messages.0.message.role", "user")
                    call.set_attribute("llm.input_messages.0.message.content", "Where is order ORD-77?")
                    call.set_attribute("llm.output_messages.0.message.role", "assistant")
                    call.set_attribute("llm.output_messages.0.message.content", answer)
            root.set_attribute("output.value", "Your order ORD-77 has shipped.")
            tid = format(root.get_span_context().trace_id, "032x")
    assert _draft(c, tid, "format_violation") == {}


def test_feedback_sent_later_on_a_span_of_no_kind_is_a_failure_of_the_conversation_it_links_to(start_collector):
    """The carrier need not say EVALUATOR: a GenAI producer has no span kind for it and sends the
    ``gen_ai.evaluation.result`` event on a plain span linked to the answer; an OpenInference one may leave the
    kind out too. Both were filed under the carrier's own trace, with an empty input; both now land on the answer.
    """
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        first, first_llm = emit_conversation(tracer, "Is the X200 blender dishwasher safe?")
        second, second_llm = emit_conversation(tracer, "Can I pay with PayPal?")
    c.wait_for("SELECT trace_id FROM spans WHERE name = 'llm'", lambda r: len(r) == 2)
    time.sleep(1.0)  # judged (clean) before the feedback arrives
    with sdk_tracer("http", c.http_url) as tracer:
        answer = SpanContext(int(first, 16), int(first_llm, 16), is_remote=True, trace_flags=TraceFlags(1))
        with tracer.start_as_current_span("feedback", links=[Link(answer)]) as carrier:
            carrier.add_event("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "thumbs",
                                                           "gen_ai.evaluation.score.label": "thumbs_down"})
        answer = SpanContext(int(second, 16), int(second_llm, 16), is_remote=True, trace_flags=TraceFlags(1))
        with tracer.start_as_current_span("feedback", links=[Link(answer)]) as carrier:
            carrier.set_attribute("annotations.0.annotation.name", "thumbs")
            carrier.set_attribute("annotations.0.annotation.score", 0)

    rows = c.wait_for("SELECT trace_id, span_id FROM detections WHERE failure_mode = 'negative_feedback'",
                      lambda r: len(r) == 2)
    assert sorted((r["trace_id"], r["span_id"]) for r in rows) == sorted([(first, first_llm), (second, second_llm)])
    cands = c.wait_for("SELECT input FROM candidates WHERE failure_mode = 'negative_feedback'", lambda r: len(r) == 2)
    assert sorted(json.loads(r["input"])["user_message"] for r in cands) == [
        "Can I pay with PayPal?", "Is the X200 blender dishwasher safe?"]


def test_feedback_that_arrives_before_its_conversation_still_lands_on_it(start_collector):
    """The thumbs-down reaches the collector before the conversation it links to: the agent's batch
    processor flushes later than the feedback service's, or its exporter retries through a restart.

    The carrier was judged alone and its finding stayed with it for good: no negative_feedback on the
    conversation, and one candidate with an empty input that every such thumbs-down joined. Once the
    conversation is judged, its carriers are judged again and the finding moves onto its answer.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    c = start_collector(FAST_JUDGE)
    agent = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    agent.add_span_processor(BatchSpanProcessor(  # holds the conversations until force_flush
        OTLPSpanExporter(endpoint=f"http://{c.grpc_endpoint}", insecure=True, timeout=30),
        schedule_delay_millis=600_000))
    try:
        tracer = agent.get_tracer("agent")
        first, first_llm = emit_conversation(tracer, "Can I return a blender after 40 days?")
        second, second_llm = emit_conversation(tracer, "Do you ship to Canada?")
        with sdk_tracer("http", c.http_url, service="feedback") as feedback:
            emit_thumbs_down(feedback, first, first_llm)
            emit_thumbs_down(feedback, second, second_llm)
        c.wait_for("SELECT count(*) AS n FROM detections", lambda r: r[0]["n"] == 2)  # the carriers, judged alone
        assert agent.force_flush(30_000)
    finally:
        agent.shutdown()

    rows = c.wait_for("SELECT trace_id, span_id FROM detections WHERE failure_mode = 'negative_feedback' "
                      "ORDER BY trace_id", lambda r: {x["trace_id"] for x in r} == {first, second})
    assert sorted((r["trace_id"], r["span_id"]) for r in rows) == sorted([(first, first_llm), (second, second_llm)])
    cands = c.wait_for("SELECT input, trace_ids, occurrences FROM candidates WHERE failure_mode = 'negative_feedback'",
                       lambda r: len(r) == 2 and all(x["occurrences"] == 1 for x in r))
    assert sorted((json.loads(r["input"])["user_message"], r["trace_ids"][0]) for r in cands) == sorted([
        ("Can I return a blender after 40 days?", first), ("Do you ship to Canada?", second)])


def test_feedback_sent_later_in_its_own_trace_is_a_failure_of_the_conversation_it_links_to(start_collector):
    """A thumbs-down arrives after the conversation, on a carrier span of its own trace linked to the answer.

    Before, the detection was filed under the carrier's trace and its candidate held the carrier's empty
    input: every thumbs-down on every conversation became one candidate with nothing to replay. Now the
    detection lands on the answer it judges, the candidate holds that conversation's question (two
    conversations, two candidates), and judging either trace again keeps exactly one of each.
    """
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        first, first_llm = emit_conversation(tracer, "Can I return a blender after 40 days?")
        second, second_llm = emit_conversation(tracer, "Do you ship to Canada?")
    c.wait_for("SELECT trace_id FROM spans WHERE name = 'llm'", lambda r: len(r) == 2)
    time.sleep(1.0)  # both conversations settle and are judged (clean) before the feedback arrives
    with sdk_tracer("http", c.http_url) as tracer:
        carrier = emit_thumbs_down(tracer, first, first_llm)
        emit_thumbs_down(tracer, second, second_llm, scope="trace.annotations")
        unknown = emit_thumbs_down(tracer, "ab" * 16, "cd" * 8)  # a conversation the store never saw

    sql = ("SELECT trace_id, span_id, evidence FROM detections WHERE failure_mode = 'negative_feedback' "
           "ORDER BY trace_id")
    rows = c.wait_for(sql, lambda r: len(r) == 3)
    by_trace = {r["trace_id"]: r for r in rows}
    assert by_trace[first]["span_id"] == first_llm
    assert json.loads(by_trace[first]["evidence"])["carrier_trace_id"] == carrier
    second_root = c.query(f"SELECT span_id FROM spans WHERE trace_id = '{second}' AND parent_span_id IS NULL")
    assert by_trace[second]["span_id"] == second_root[0]["span_id"]  # trace feedback: the root
    assert unknown in by_trace  # nothing to move it to: it stays with its carrier

    cands = c.wait_for("SELECT input, source, trace_ids, occurrences FROM candidates "
                       "WHERE failure_mode = 'negative_feedback' AND len(trace_ids) = 1", lambda r: len(r) >= 2)
    questions = {json.loads(r["input"])["user_message"]: r for r in cands}
    assert {"Can I return a blender after 40 days?", "Do you ship to Canada?"} <= set(questions)
    blender = questions["Can I return a blender after 40 days?"]
    assert json.loads(blender["source"])["trace_id"] == first and blender["trace_ids"] == [first]

    # A late span in the conversation and one in the carrier's trace: both are judged again.
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        emit_late_span(tracer, first, first_llm)
        emit_late_span(tracer, carrier, "ef" * 8)
    c.wait_for(f"SELECT count(*) AS n FROM spans WHERE name = 'late_step'", lambda r: r[0]["n"] == 2)
    c.wait_for("SELECT count(*) AS n FROM trace_state WHERE judged_seq < received_seq", lambda r: r[0]["n"] == 0)
    time.sleep(1.0)
    again = c.query(f"SELECT span_id FROM detections WHERE trace_id = '{first}' AND failure_mode = 'negative_feedback'")
    assert again == [{"span_id": first_llm}]
    kept = c.query("SELECT trace_ids, occurrences FROM candidates WHERE list_contains(trace_ids, "
                   f"'{first}') AND failure_mode = 'negative_feedback'")
    assert kept == [{"trace_ids": [first], "occurrences": 1}]
