"""The `spans` columns as operators query them, filled by the real OpenTelemetry SDK through a real `serve`."""

from __future__ import annotations

import json

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
