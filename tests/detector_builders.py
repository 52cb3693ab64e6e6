"""Builders for trace-stage tests: SpanRow dicts shaped like the stored, normalized ``spans`` rows.

Attributes are written as flat OTLP keys (``llm.output_messages.0.message.content``)
and nested back the way the store does it (dots make objects, digit segments
make lists), so fixtures read like what instrumentors emit.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Sequence
from typing import Any

import duckdb

from tracesieve.collector.decode import nest_attributes
from tracesieve.storage.migrations import migrate
from tracesieve.storage.schema import SPAN_COLUMNS

T0 = dt.datetime(2026, 9, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
_ids = itertools.count(1)

_GENAI_KIND = {
    "chat": "LLM", "text_completion": "LLM", "generate_content": "LLM", "embeddings": "EMBEDDING",
    "retrieval": "RETRIEVER", "execute_tool": "TOOL", "invoke_agent": "AGENT", "create_agent": "AGENT",
    "invoke_workflow": "CHAIN",
}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Flattened OTLP keys -> the nested attributes the collector stores (the production function)."""
    return nest_attributes(flat)


def make_span(kind: str = "CHAIN", *, name: str | None = None, status: str = "OK", status_message: str | None = None,
              attrs: dict[str, Any] | None = None, input: str | None = None, output: str | None = None,
              input_mime: str | None = None, output_mime: str | None = None, duration_ms: float = 500.0,
              events: list[dict[str, Any]] | None = None, links: list[dict[str, Any]] | None = None,
              span_id: str | None = None, parent: str | None = None, start: float | None = None,
              genai: bool = False) -> dict[str, Any]:
    """One span row. ``kind`` is the OpenInference kind; with ``genai=True`` it is not written as an attribute."""
    flat = dict(attrs or {})
    if not genai:
        flat.setdefault("openinference.span.kind", kind)
    if input is not None:
        flat["input.value"] = input
    if output is not None:
        flat["output.value"] = output
    if input_mime:
        flat["input.mime_type"] = input_mime
    if output_mime:
        flat["output.mime_type"] = output_mime
    if genai and "gen_ai.operation.name" in flat:
        kind = _GENAI_KIND.get(flat["gen_ai.operation.name"], kind)
    nested = unflatten(flat)
    finish = flat.get("llm.finish_reason")
    if finish is None and flat.get("gen_ai.response.finish_reasons"):
        finish = flat["gen_ai.response.finish_reasons"][0]
    if finish is None:
        finish = flat.get("llm.output_messages.0.message.finish_reason")
    sid = span_id or f"{next(_ids):016x}"
    return {
        "trace_id": None, "span_id": sid, "parent_span_id": parent, "name": name or kind.lower(),
        "span_kind": kind, "start_time": None if start is None else T0 + dt.timedelta(seconds=start),
        "end_time": None, "duration_ms": float(duration_ms), "status_code": status,
        "status_message": status_message, "service_name": "support-agent", "session_id": "sess-1",
        "user_id": "<EMAIL>", "input_value": input, "input_mime_type": input_mime, "output_value": output,
        "output_mime_type": output_mime, "llm_model_name": flat.get("llm.model_name") or flat.get("gen_ai.request.model"),
        "llm_provider": flat.get("llm.provider") or flat.get("gen_ai.provider.name"), "llm_finish_reason": finish,
        "llm_token_count_prompt": flat.get("llm.token_count.prompt"),
        "llm_token_count_completion": flat.get("llm.token_count.completion"),
        "llm_token_count_total": flat.get("llm.token_count.total"),
        "tool_name": flat.get("tool.name") or flat.get("gen_ai.tool.name"), "attributes": nested,
        "resource_attributes": {"service": {"name": "support-agent"}}, "events": events or [], "links": links or [],
        "scope_name": "openinference.instrumentation.openai", "received_at": T0, "pii_redactions": {},
    }


def make_trace(*spans: dict[str, Any], root: dict[str, Any] | None = None, trace_id: str | None = None,
               gap_s: float = 1.0) -> list[dict[str, Any]]:
    """A trace: an AGENT root (unless given) with the spans as children, started one after another."""
    tid = trace_id or f"{next(_ids):032x}"
    root = root or make_span("AGENT", name="support_agent")
    t = 0.0
    if root["start_time"] is None:
        root["start_time"] = T0
    out = [root]
    for s in spans:
        if s["start_time"] is None:
            t += gap_s
            s["start_time"] = T0 + dt.timedelta(seconds=t)
        if s["parent_span_id"] is None:
            s["parent_span_id"] = root["span_id"]
        out.append(s)
    for s in out:
        s["trace_id"] = tid
        s["end_time"] = s["start_time"] + dt.timedelta(milliseconds=s["duration_ms"])
    last_end = max(s["end_time"] for s in out)
    if root["end_time"] < last_end:
        root["end_time"] = last_end
        root["duration_ms"] = (last_end - root["start_time"]).total_seconds() * 1000
    return sorted(out, key=lambda s: s["start_time"])


# ---------------------------------------------------------------- kind-specific builders

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                               "unit": {"type": "string", "enum": ["c", "f"]}},
                               "required": ["city"], "additionalProperties": False}}}
EMAIL_TOOL = {"type": "function", "function": {"name": "send_email", "parameters": {
    "type": "object", "properties": {"to": {"type": "string", "pattern": "^[^@]+@[^@]+$"}, "body": {"type": "string"}},
    "required": ["to", "body"]}}}


def llm(text: str | None = "Here is the answer.", *, tool_calls: list[tuple[str, Any]] | None = None,
        tools: list[dict[str, Any]] | None = None, finish: str | None = "stop", genai: bool = False,
        response_format: Any = None, model: str = "gpt-4o-mini", status: str = "OK", status_message: str | None = None,
        user: str = "What is the weather in Paris?", extra: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """An LLM span in OpenInference form, or GenAI form with ``genai=True``. Tool-call arguments: str or object."""
    a: dict[str, Any] = {}
    calls = tool_calls or []
    if genai:
        a.update({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model})
        a["gen_ai.input.messages"] = json.dumps([{"role": "user", "parts": [{"type": "text", "content": user}]}])
        parts: list[dict[str, Any]] = []
        if text is not None:
            parts.append({"type": "text", "content": text})
        for i, (name, args) in enumerate(calls):
            parts.append({"type": "tool_call", "id": f"call_{i}", "name": name,
                          "arguments": json.loads(args) if isinstance(args, str) and _parses(args) else args})
        msg: dict[str, Any] = {"role": "assistant", "parts": parts}
        if finish is not None:
            msg["finish_reason"] = finish
            a["gen_ai.response.finish_reasons"] = [finish]
        a["gen_ai.output.messages"] = json.dumps([msg])
        if tools:
            a["gen_ai.tool.definitions"] = json.dumps([{"type": "function", **t["function"]} for t in tools])
        if response_format is not None:
            a["gen_ai.output.type"] = "json"
        kw.setdefault("name", f"chat {model}")
    else:
        a.update({"llm.system": "openai", "llm.provider": "openai", "llm.model_name": model,
                  "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": user,
                  "llm.output_messages.0.message.role": "assistant"})
        params: dict[str, Any] = {"model": model, "temperature": 0}
        if response_format is not None:
            params["response_format"] = response_format
        a["llm.invocation_parameters"] = json.dumps(params)
        if text is not None:
            a["llm.output_messages.0.message.content"] = text
        for i, (name, args) in enumerate(calls):
            p = f"llm.output_messages.0.message.tool_calls.{i}.tool_call"
            a[f"{p}.id"] = f"call_{i}"
            a[f"{p}.function.name"] = name
            a[f"{p}.function.arguments"] = args if isinstance(args, str) else json.dumps(args)
        for i, t in enumerate(tools or []):
            a[f"llm.tools.{i}.tool.json_schema"] = json.dumps(t)
        if finish is not None:
            a["llm.finish_reason"] = finish
        a.update({"llm.token_count.prompt": 120, "llm.token_count.completion": 40, "llm.token_count.total": 160})
        kw.setdefault("name", "ChatCompletion")
    a.update(extra or {})
    return make_span("LLM", attrs=a, genai=genai, status=status, status_message=status_message, **kw)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def tool(name: str = "get_weather", args: Any = '{"city": "Paris"}', *, result: str | None = '{"temp_c": 18}',
         status: str = "OK", status_message: str | None = None, exception: tuple[str, str] | None = None,
         genai: bool = False, extra: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """A TOOL span; OpenInference carries arguments in input.value, GenAI in gen_ai.tool.call.arguments."""
    a: dict[str, Any] = {}
    events = kw.pop("events", None) or []
    if exception:
        events.append({"name": "exception", "timestamp": "2026-09-01T12:00:01Z",
                       "attributes": {"exception": {"type": exception[0], "message": exception[1]}}})
    if genai:
        a.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.call.id": "call_0"})
        if args is not None:
            a["gen_ai.tool.call.arguments"] = args if isinstance(args, str) else json.dumps(args)
        if result is not None:
            a["gen_ai.tool.call.result"] = result
        if status == "ERROR":
            a["error.type"] = (exception or ("ToolError",))[0]
        a.update(extra or {})
        return make_span("TOOL", name=f"execute_tool {name}", attrs=a, genai=True, status=status,
                         status_message=status_message, events=events, **kw)
    a["tool.name"] = name
    a.update(extra or {})
    return make_span("TOOL", name=name, attrs=a, status=status, status_message=status_message, events=events,
                     input=args if isinstance(args, str) or args is None else json.dumps(args),
                     input_mime="application/json" if args is not None else None, output=result,
                     output_mime="application/json" if result and result[:1] in "{[" else "text/plain", **kw)


def retriever(docs: list[tuple[str, float]] | None = None, *, genai: bool = False, query: str = "refund policy",
              record_documents: bool = True, **kw: Any) -> dict[str, Any]:
    """A RETRIEVER span returning (id, score) documents; an empty list is an empty retrieval."""
    docs = docs if docs is not None else [("doc-1", 0.82), ("doc-2", 0.77)]
    a: dict[str, Any] = {}
    if genai:
        a.update({"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": "kb",
                  "gen_ai.retrieval.query.text": query})
        if record_documents:
            a["gen_ai.retrieval.documents"] = json.dumps([{"id": i, "score": s} for i, s in docs])
        return make_span("RETRIEVER", name="retrieval kb", attrs=a, genai=True, **kw)
    for n, (doc_id, score) in enumerate(docs):
        a[f"retrieval.documents.{n}.document.id"] = doc_id
        a[f"retrieval.documents.{n}.document.score"] = score
        a[f"retrieval.documents.{n}.document.content"] = f"Passage {doc_id} about {query}."
    return make_span("RETRIEVER", name="VectorStoreRetriever", attrs=a, input=query, **kw)


# ---------------------------------------------------------------- a real store holding the fixtures


class DuckStore:
    """A StoreReader over a real DuckDB connection, as the collector gives one to the judge."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def query(self, sql: str, params: Sequence[Any] = (), *, time_limit: float | None = None) -> list[dict[str, Any]]:
        cur = self.con.cursor()
        cur.execute(sql, list(params))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def store_with(tmp_path: Any, *traces: list[dict[str, Any]]) -> DuckStore:
    """A migrated DuckDB file in ``tmp_path`` holding the traces as stored rows (JSON columns as text)."""
    con = duckdb.connect(str(tmp_path / "tracesieve.duckdb"))
    migrate(con)
    for trace in traces:
        for span in trace:
            row = {c: span.get(c) for c in SPAN_COLUMNS}
            for c in ("attributes", "resource_attributes", "events", "links", "pii_redactions"):
                row[c] = json.dumps(row[c]) if row[c] is not None else None
            cols = ", ".join(row)
            con.execute(f"INSERT INTO spans ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    return DuckStore(con)
