"""The `spans` columns as operators query them, filled by the real OpenTelemetry SDK through a real `serve`."""

from __future__ import annotations

import json

from conftest import FAST_JUDGE
from sdk_helpers import sdk_tracer


def test_finish_reasons_sent_as_json_text_give_the_first_reason(start_collector):
    """An SDK that cannot send a string[] sends ``gen_ai.response.finish_reasons`` as its JSON text; the column
    held that text (``["length"]``), so ``WHERE llm_finish_reason = 'length'`` missed the truncated call."""
    collector = start_collector()
    with sdk_tracer("grpc", collector.grpc_endpoint) as tracer:
        for name, reasons in (("as_text", '["length", "stop"]'), ("as_list", ("length", "stop")),
                              ("empty_text", "[]"), ("plain", "content_filter")):
            with tracer.start_as_current_span(name) as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.response.finish_reasons", reasons)
    rows = collector.query("SELECT name, llm_finish_reason FROM spans ORDER BY name")
    assert {r["name"]: r["llm_finish_reason"] for r in rows} == {
        "as_text": "length", "as_list": "length", "empty_text": None, "plain": "content_filter"}


def test_a_genai_retrieval_or_embeddings_span_without_an_operation_name_keeps_its_kind(start_collector):
    """``gen_ai.operation.name`` is required but not always sent; a span with only ``gen_ai.retrieval.*`` keys
    (its query, its documents) was stored as an LLM call, so RETRIEVER queries and the retrieval rules missed it."""
    collector = start_collector(FAST_JUDGE)
    documents = json.dumps([{"id": "doc-1", "score": 0.9}])
    with sdk_tracer("http", collector.http_url) as tracer:
        for name, attributes in (
            ("search", {"gen_ai.retrieval.query.text": "refund policy", "gen_ai.retrieval.documents": documents}),
            ("search_content_not_captured", {"gen_ai.retrieval.query.text": "shipping"}),
            ("embed", {"gen_ai.request.model": "text-embedding-3-small", "gen_ai.embeddings.dimension.count": 1536}),
            ("answer", {"gen_ai.request.model": "gpt-4o"}),
            ("custom_search", {"gen_ai.operation.name": "vector_search", "gen_ai.retrieval.query.text": "refunds"}),
            ("named_retrieval", {"gen_ai.operation.name": "chat", "gen_ai.retrieval.query.text": "refunds"}),
        ):
            with tracer.start_as_current_span(name) as span:
                span.set_attributes(attributes)
    rows = collector.query("SELECT name, span_kind, input_value FROM spans")
    assert {r["name"]: r["span_kind"] for r in rows} == {
        "search": "RETRIEVER", "search_content_not_captured": "RETRIEVER", "embed": "EMBEDDING", "answer": "LLM",
        "custom_search": "RETRIEVER",
        "named_retrieval": "LLM"}
    assert {r["name"]: r["input_value"] for r in rows}["search"] == "refund policy"
    assert collector.stop() == 0  # judges every pending trace first
    # documents are opt-in content in GenAI: a search that did not record them is not a retrieval miss
    misses = json.loads(collector.cli("query", "SELECT * FROM detections WHERE failure_mode = 'retrieval_miss'",
                                      "--format", "json").stdout)
    assert misses == []


def test_content_in_the_deprecated_genai_forms_lands_in_input_value_and_output_value(start_collector):
    """GenAI content recorded before ``gen_ai.input.messages`` existed (the ``gen_ai.prompt`` / ``.completion``
    JSON, OpenLLMetry's ``gen_ai.prompt.<i>.*`` keys, per-message events, ``gen_ai.content.*`` events) was read
    by the detectors and candidates but left ``input_value`` / ``output_value`` NULL: an operator's
    ``SELECT input_value, output_value`` showed nothing of what such a chat was asked or answered."""
    collector = start_collector()
    question = "Where is order ORD-7? Mail me at jane.doe@example.com"
    asked = [{"role": "user", "content": question}]
    answered = [{"role": "assistant", "content": "It shipped on Monday."}]
    with sdk_tracer("grpc", collector.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("legacy_attributes") as span:
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.prompt": json.dumps(asked),
                                 "gen_ai.completion": json.dumps(answered)})
        with tracer.start_as_current_span("openllmetry") as span:
            span.set_attributes({"gen_ai.system": "openai", "llm.request.type": "chat",
                                 "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": question,
                                 "gen_ai.completion.0.role": "assistant",
                                 "gen_ai.completion.0.content": "It shipped on Monday.",
                                 "gen_ai.completion.0.finish_reason": "stop"})
        with tracer.start_as_current_span("content_events") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps(asked)})
            span.add_event("gen_ai.content.completion", {"gen_ai.completion": json.dumps(answered)})
        with tracer.start_as_current_span("message_events") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.add_event("gen_ai.system.message", {"gen_ai.system": "openai", "content": "You are support."})
            span.add_event("gen_ai.user.message", {"gen_ai.system": "openai", "content": question})
            span.add_event("gen_ai.choice", {"gen_ai.system": "openai", "index": 0, "finish_reason": "stop",
                                             "message": json.dumps(answered[0])})
    rows = {r["name"]: r for r in collector.query(
        "SELECT name, input_value, input_mime_type, output_value, output_mime_type, pii_redactions FROM spans")}
    assert set(rows) == {"legacy_attributes", "openllmetry", "content_events", "message_events"}
    redacted = [{"role": "user", "content": "Where is order ORD-7? Mail me at <EMAIL>"}]
    for name, row in rows.items():
        assert (row["input_mime_type"], row["output_mime_type"]) == ("application/json", "application/json"), name
        assert json.loads(row["pii_redactions"]) == {"EMAIL": 1}, name  # the lifted copy is not counted again
        got_in, got_out = json.loads(row["input_value"]), json.loads(row["output_value"])
        if name == "message_events":
            assert got_in == [{"role": "system", "content": "You are support."}, *redacted]
            assert got_out == [{"index": 0, "finish_reason": "stop", "message": answered[0]}]
        elif name == "openllmetry":
            assert (got_in, got_out) == (redacted, [{**answered[0], "finish_reason": "stop"}])
        else:
            assert (got_in, got_out) == (redacted, answered), name


def test_an_openllmetry_embeddings_or_rerank_call_is_not_stored_as_a_chat(start_collector):
    """OpenLLMetry (before v0.55) sends no gen_ai.operation.name; ``llm.request.type`` says which API a model
    call used. Its embeddings and rerank calls were LLM spans: counted among the chats, judged as chats."""
    collector = start_collector()
    with sdk_tracer("http", collector.http_url) as tracer:
        for name, request_type, system in (("openai.embeddings", "embedding", "openai"),
                                           ("cohere.rerank", "rerank", "cohere"), ("openai.chat", "chat", "openai")):
            with tracer.start_as_current_span(name) as span:
                span.set_attributes({"gen_ai.system": system, "llm.request.type": request_type,
                                     "gen_ai.request.model": "m", "gen_ai.usage.prompt_tokens": 8})
    rows = collector.query("SELECT name, span_kind, llm_token_count_total FROM spans")
    assert {r["name"]: (r["span_kind"], r["llm_token_count_total"]) for r in rows} == {
        "openai.embeddings": ("EMBEDDING", 8), "cohere.rerank": ("RERANKER", None), "openai.chat": ("LLM", None)}


def test_every_attribute_is_kept_when_two_keys_nest_to_the_same_place(start_collector):
    """``lead`` and ``.lead`` walk to the same place, ``a`` and ``a.`` both to ``a``'s empty key, ``x.0`` and
    ``x.00`` to one list index: the second value was silently dropped, though ``attributes`` holds every
    attribute. It is now kept under its whole dotted key, and ``0``/``00`` stay object keys."""
    collector = start_collector()
    attributes = {"lead": "y", ".lead": "x", "a": 1, "a.": 2, "a.b": 3, "x.0": "zero", "x.00": "double zero",
                  "list.0": "first", "list.1": "second"}
    with sdk_tracer("grpc", collector.grpc_endpoint) as tracer:
        for name in ("first", "second"):  # the second span's key set goes through a compiled nesting plan
            with tracer.start_as_current_span(name) as span:
                span.set_attributes(attributes)
    rows = collector.query("SELECT name, attributes, attributes->>'$.\".lead\"' AS dotted FROM spans")
    assert len(rows) == 2
    for row in rows:
        assert json.loads(row["attributes"]) == {
            "lead": "y", ".lead": "x", "a": {"": 1, "b": 3}, "a.": 2, "x": {"0": "zero", "00": "double zero"},
            "list": ["first", "second"]}, row["name"]
        assert row["dotted"] == "x"


def test_the_finish_reason_column_agrees_with_the_truncation_rule(start_collector):
    """The truncation rule skips an empty finish reason and reads the legacy ``gen_ai.completion`` JSON; the
    column stored ``""`` for ``["", "length"]`` and NULL for the legacy JSON, so it disagreed with the rule."""
    collector = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", collector.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("empty_first") as span:
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.response.finish_reasons": ("", "stop"),
                                 "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [],
                                                                        "finish_reason": "length"}])})
        with tracer.start_as_current_span("legacy_completion") as span:
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.completion": json.dumps(
                [{"role": "assistant", "content": "Your three invoices total", "finish_reason": "length"}])})
    rows = collector.query("SELECT name, llm_finish_reason FROM spans")
    assert {r["name"]: r["llm_finish_reason"] for r in rows} == {"empty_first": "length", "legacy_completion": "length"}
    assert collector.stop() == 0
    truncated = json.loads(collector.cli("query", "SELECT DISTINCT s.name FROM detections d JOIN spans s USING"
                                         " (span_id) WHERE d.failure_mode = 'truncation' ORDER BY 1",
                                         "--format", "json").stdout)
    assert [r["name"] for r in truncated] == ["empty_first", "legacy_completion"]


def test_a_query_reads_times_alike_through_serve_and_on_the_file(start_collector):
    """DuckDB shows TIMESTAMPTZ and computes ``date_trunc`` in the process's time zone: the same query gave
    the collector's zone while ``serve`` ran and the CLI's on the file, so a store grouped into other days
    depending on the path. Both read in UTC."""
    from conftest import run_cli

    collector = start_collector(env={"TZ": "America/New_York"})
    start_ns = 1_765_000_000_123_456_789  # 2025-12-06T05:46:40Z: 00:46 in New York, 14:46 in Tokyo
    with sdk_tracer("grpc", collector.grpc_endpoint) as tracer:
        tracer.start_span("late_night", start_time=start_ns).end(end_time=start_ns + 1_000_000)
    sql = ("SELECT start_time, CAST(date_trunc('day', start_time) AS VARCHAR) AS day,"
           " strftime(start_time, '%H') AS hour FROM spans")
    tokyo = {"TZ": "Asia/Tokyo"}
    served = collector.cli("query", sql, "--format", "json", env=tokyo)
    assert collector.stop() == 0
    on_file = run_cli("query", sql, "--format", "json", "--db", str(collector.db_path), env=tokyo)
    assert served.returncode == 0 and on_file.returncode == 0, served.stderr + on_file.stderr
    expected = [{"start_time": "2025-12-06T05:46:40.123456+00:00", "day": "2025-12-06 00:00:00+00", "hour": "05"}]
    assert json.loads(served.stdout) == expected
    assert json.loads(on_file.stdout) == expected


def test_the_instrumentation_scopes_own_attributes_are_stored_redacted_and_queryable(start_collector):
    """A scope's attributes (what the instrumentation library says of itself) were dropped at decode, the
    trap STYLE.md names after Phoenix; stored now as scope_attributes JSON, sanitized like every column."""
    collector = start_collector()
    scope = {"library.language": "python", "deployment.owner": "ops-lead@example.com", "shard": 3}
    with sdk_tracer("grpc", collector.grpc_endpoint, scope_version="1.2.3", scope_attributes=scope) as tracer:
        with tracer.start_as_current_span("with_scope_attributes"):
            pass
    with sdk_tracer("http", collector.http_url) as tracer:
        with tracer.start_as_current_span("without"):
            pass
    rows = collector.query("SELECT name, scope_version, scope_attributes, scope_attributes->>'$.library.language' "
                           "AS language, pii_redactions FROM spans ORDER BY name")
    by = {r["name"]: r for r in rows}
    assert json.loads(by["with_scope_attributes"]["scope_attributes"]) == {
        "library": {"language": "python"}, "deployment": {"owner": "<EMAIL>"}, "shard": 3}
    assert (by["with_scope_attributes"]["language"], by["with_scope_attributes"]["scope_version"]) == ("python", "1.2.3")
    assert json.loads(by["with_scope_attributes"]["pii_redactions"]) == {"EMAIL": 1}
    assert by["without"]["scope_attributes"] is None
    for stored in collector.db_path.parent.glob(collector.db_path.name + "*"):  # the file and its WAL
        if stored.is_file():
            assert b"ops-lead@example.com" not in stored.read_bytes(), stored
