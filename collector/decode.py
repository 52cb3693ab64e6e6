"""OTLP trace requests (protobuf or OTLP/JSON) -> one columnar span batch per request.

This is the only place that knows the OTLP wire shapes. It validates each span
(bad ids, end before start are rejected one by one, for ``partial_success``),
applies the per-span limits, re-nests flattened attribute keys, derives the
OpenInference span kind (also from ``gen_ai.*`` keys) and fills the promoted
columns of the ``spans`` table. Runs on a receiver worker thread; pure function.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import pyarrow as pa
from google.protobuf import json_format, unknown_fields
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracesieve.collector.deep_values import TOO_DEEP, clamp_json, clamp_wire
from tracesieve.processors.spanview import haystack_reply_finish_reason
from tracesieve.storage.errors import PermanentError
from tracesieve.storage.schema import SPAN_KINDS, SPAN_SCHEMA

_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_OTEL_KIND = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_GENAI_OPERATION_KIND = {
    "chat": "LLM", "text_completion": "LLM", "generate_content": "LLM",
    "embeddings": "EMBEDDING", "retrieval": "RETRIEVER", "execute_tool": "TOOL",
    "invoke_agent": "AGENT", "create_agent": "AGENT", "plan": "AGENT",
    "invoke_workflow": "CHAIN", "handle_conversation_turn": "CHAIN",
    "execute_task": "CHAIN",  # OpenLLMetry's LangChain steps (prompt templates, parsers, sub-chains)
}
#: Mastra's spans around a model call (@mastra/otel-exporter 1.4: ``mastra.span.type``, with the custom operation
#: names model_generation / model_step / model_chunk): the call itself is the ``chat`` span inside, which names the
#: model and its tokens. As LLM spans they were four model calls for every one (a run of 13 calls met step_limit).
_MASTRA_WRAPPERS = frozenset({"model_generation", "model_step", "model_chunk"})
#: OpenLLMetry copies LangChain run metadata / association properties here (session_id, thread_id, ...).
_TRACELOOP_SESSION = tuple(f"traceloop.association.properties.{k}" for k in ("session_id", "conversation_id", "thread_id"))
#: The Vercel AI SDK copies ``experimental_telemetry.metadata`` here; ``sessionId`` / ``userId`` are the keys
#: its tracing integrations (Langfuse's among them) ask users to set for the conversation and the user.
_VERCEL_SESSION, _VERCEL_USER = "ai.telemetry.metadata.sessionId", "ai.telemetry.metadata.userId"
_TRACELOOP_KIND = {"workflow": "CHAIN", "task": "TOOL", "agent": "AGENT", "tool": "TOOL", "llm": "LLM"}
#: OpenLLMetry's model calls say which API they called in ``llm.request.type`` (no gen_ai.operation.name
#: before its v0.55): an embeddings or rerank call is not a chat.
_TRACELOOP_REQUEST_KIND = {"chat": "LLM", "completion": "LLM", "embedding": "EMBEDDING", "rerank": "RERANKER"}
#: The Vercel AI SDK (`ai`, Node) names each span's operation in ``ai.operationId``; its tool calls
#: and its outer generate/stream calls (the agent loop) carry no gen_ai key.
_VERCEL_AI_KIND = {
    "ai.toolCall": "TOOL", "ai.generateText": "AGENT", "ai.streamText": "AGENT", "ai.generateObject": "AGENT",
    "ai.streamObject": "AGENT", "ai.generateText.doGenerate": "LLM", "ai.streamText.doStream": "LLM",
    "ai.generateObject.doGenerate": "LLM", "ai.streamObject.doStream": "LLM", "ai.embed": "EMBEDDING",
    "ai.embedMany": "EMBEDDING", "ai.embed.doEmbed": "EMBEDDING", "ai.embedMany.doEmbed": "EMBEDDING",
    "ai.rerank": "RERANKER", "ai.rerank.doRerank": "RERANKER",
}
#: Its provider calls (``.doGenerate``, ``.doStream``, ``.doEmbed``, ``.doRerank``), one per model request. Only
#: they name the model and count tokens: the outer call (``ai.generateText``, ``ai.embed``) sums or repeats
#: its steps' counts, and reading both doubled a trace's token spend.
_VERCEL_PROVIDER_CALLS = frozenset(op for op in _VERCEL_AI_KIND if ".do" in op)
_KNOWN_KINDS = frozenset(SPAN_KINDS)
_ZERO_SPAN = bytes(8)
#: What an OTLP/JSON id that is neither hex nor base64 of the right size decodes to: a length no id
#: has, so its span is rejected, and a value ``_validate`` recognises to say "not hex" rather than
#: quote a byte count the sender never wrote.
_NOT_HEX_ID = b"not hex"
_MAX_ERRORS_REPORTED = 10
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    max_attributes_per_span: int = 2048
    max_value_size: int = 1024 * 1024
    max_nesting_depth: int = 32
    #: (text, cut) -> where to cut a too-long value instead, so that no PII is cut in two
    #: (the pii processor's Sanitizer.safe_cut, when it is in the pipeline)
    safe_cut: Callable[[str, int], int] | None = dataclasses.field(default=None, compare=False)
    #: key -> True when the key holds PII that its dots would cut in two (an e-mail address, a
    #: JWT): such a key is kept whole, unnested, so the scan sees the value entire
    #: (the pii processor's Sanitizer.key_holds_pii, when it is in the pipeline)
    whole_key: Callable[[str], bool] | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass
class DecodeResult:
    """The accepted spans as one Arrow table, and what was rejected (for partial_success)."""

    batch: pa.Table
    rejected: int
    errors: list[str]

    @property
    def error_message(self) -> str:
        if not self.errors:
            return ""
        more = self.rejected - len(self.errors)
        tail = f"; and {more} more" if more > 0 else ""
        return "; ".join(self.errors) + tail


# --------------------------------------------------------------------------- wire -> request


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Parse a binary OTLP request; undecodable bytes (or invalid UTF-8 in a string) are a PermanentError."""
    legacy = _LEGACY_SCOPE_SPANS_KEY in body  # cheap: only such a body is searched for the old field
    try:
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(body)
        return _read_legacy_scope_spans(request) if legacy else request
    except (DecodeError, ValueError, RuntimeError) as exc:
        error = exc
    try:  # attribute values nested past what the parser takes become "[too deep]" (deep_values.py)
        clamped: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(clamp_wire(body))
        return _read_legacy_scope_spans(clamped) if legacy else clamped
    except (DecodeError, ValueError, RuntimeError, RecursionError):
        raise PermanentError(f"request body is not a valid ExportTraceServiceRequest: {error}") from None


#: ``instrumentation_library_spans``: field 1000 of ResourceSpans before OTLP 0.19 (2022), reserved since.
#: Its messages have ScopeSpans' layout (library = scope: name 1, version 2; spans 2; schema_url 3).
_LEGACY_SCOPE_SPANS_FIELD = 1000
_LEGACY_SCOPE_SPANS_KEY = b"\xc2\x3e"  # its key on the wire: field 1000, length-delimited
_LEGACY_JSON_KEYS = (("instrumentationLibrarySpans", "instrumentationLibrary", "scopeSpans"),
                     ("instrumentation_library_spans", "instrumentation_library", "scope_spans"))


def _read_legacy_scope_spans(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """Read the spans of an exporter older than OTLP 0.19 as scope spans. A current parser skips the
    old field as unknown, and such a client was answered "stored" for spans nobody stored."""
    for rs in request.resource_spans:
        legacy = [f.data for f in unknown_fields.UnknownFieldSet(rs)
                  if f.field_number == _LEGACY_SCOPE_SPANS_FIELD and f.wire_type == 2]
        if legacy:
            rs.DiscardUnknownFields()  # read once: a request serialized again must not carry them twice
            for data in legacy:
                rs.scope_spans.add().MergeFromString(data)
    return request


def _read_legacy_scope_spans_json(doc: dict[str, Any]) -> None:
    """The OTLP/JSON form of :func:`_read_legacy_scope_spans`: ``instrumentationLibrarySpans`` become
    ``scopeSpans`` (their ``instrumentationLibrary`` the ``scope``), after the current ones."""
    for rs in _items(doc, "resourceSpans", "resource_spans"):
        for legacy_key, library_key, scope_spans_key in _LEGACY_JSON_KEYS:
            legacy = rs.pop(legacy_key, None)
            if not isinstance(legacy, list):
                continue
            target = next((k for k in ("scopeSpans", "scope_spans") if k in rs), scope_spans_key)
            current = rs.get(target)
            rs[target] = (current if isinstance(current, list) else []) + [
                {("scope" if key == library_key else key): value for key, value in item.items()}
                if isinstance(item, dict) else item for item in legacy]


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON. Trace and span ids are hex there (not base64 as plain proto3 JSON assumes);
    base64 ids of the right length are taken too (``json_format.MessageToJson`` of a request writes them).

    An empty body is an empty request, as it is in protobuf (zero bytes are the empty message).
    """
    if not body or body.isspace():
        return ExportTraceServiceRequest()
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PermanentError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise PermanentError("request body is not valid OTLP/JSON: it is nested too deeply") from None
    if not isinstance(doc, dict):
        raise PermanentError("request body must be a JSON object with resourceSpans")
    _read_legacy_scope_spans_json(doc)
    _hex_ids_to_base64(doc)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
        return request
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        error = exc
    try:  # attribute values nested past what the parser takes become "[too deep]" (deep_values.py)
        request = ExportTraceServiceRequest()
        # clamped first: the repair walks the whole document, and only a clamped one is shallow enough
        repaired = _repair_javascript_values(clamp_json(doc), surrogates=_is_strict_utf8(body))
        json_format.ParseDict(repaired, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError):
        raise PermanentError("request body is not a valid OTLP/JSON ExportTraceServiceRequest: "
                             f"{_parse_error_without_values(error)}") from None
    return request


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64_MIN, _INT64_END = -(2 ** 63), 2 ** 63


def _is_strict_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _repair_javascript_values(node: Any, *, surrogates: bool) -> Any:
    """What JSON.stringify makes of JS values, as the Node OTLP/JSON exporter sends them, made what
    the same SDK's protobuf exporter sends: a lone surrogate escape (``"\\ud83c"``, a string cut
    mid-emoji by ``slice``) becomes U+FFFD, and an ``intValue`` past int64 (``2 ** 64``) a
    ``doubleValue``. Only run after a request failed to parse, so well-formed requests pay nothing.
    ``surrogates`` is False when the body is not strict UTF-8: surrogates written as raw bytes are
    invalid UTF-8 and stay an error."""
    if isinstance(node, str):
        return _LONE_SURROGATE.sub("\ufffd", node) if surrogates else node
    if isinstance(node, list):
        return [_repair_javascript_values(item, surrogates=surrogates) for item in node]
    if not isinstance(node, dict):
        return node
    out = {_repair_javascript_values(key, surrogates=surrogates):
           _repair_javascript_values(value, surrogates=surrogates) for key, value in node.items()}
    for key in ("intValue", "int_value"):
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _INT64_MIN <= value < _INT64_END:
            try:
                out["doubleValue"] = float(value)
            except OverflowError:
                continue
            del out[key]
    return out


_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field")


def _parse_error_without_values(exc: Exception) -> str:
    """Name the field that failed, never the value: json_format quotes the offending value (could be PII)."""
    fields = _FAILED_FIELD.findall(str(exc))
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return f"bad value in field {'.'.join(fields)}" if fields else "a value has the wrong type"


_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(doc: dict[str, Any]) -> None:
    for rs in _items(doc, "resourceSpans", "resource_spans"):
        for ss in _items(rs, "scopeSpans", "scope_spans"):
            for span in _items(ss, "spans"):
                _fix_ids(span)
                for link in _items(span, "links"):
                    _fix_ids(link)


def _items(obj: Any, *keys: str) -> Iterable[dict[str, Any]]:
    if not isinstance(obj, dict):
        return ()
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            return [v for v in value if isinstance(v, dict)]
    return ()


def _fix_ids(obj: dict[str, Any]) -> None:
    for key in _ID_KEYS:
        value = obj.get(key)
        if not isinstance(value, str):
            continue
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = _base64_id(value, 16 if key in ("traceId", "trace_id") else 8)
        obj[key] = base64.b64encode(raw).decode("ascii")


def _base64_id(value: str, size: int) -> bytes:
    """An id that is not hex: base64 of exactly ``size`` bytes is taken (proto3 JSON's form, which
    ``json_format.MessageToJson`` writes; its length never collides with hex's), anything else becomes
    an invalid id so that its span alone is rejected, with the id rule in the message."""
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return _NOT_HEX_ID
    return raw if len(raw) == size else _NOT_HEX_ID


# --------------------------------------------------------------------------- request -> batch


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def decode_request(
    request: ExportTraceServiceRequest,
    limits: DecodeLimits | None = None,
    received_at: dt.datetime | None = None,
) -> DecodeResult:
    """Validate and flatten every span of ``request`` into one table of SPAN_SCHEMA."""
    limits = limits or DecodeLimits()
    now = received_at or dt.datetime.now(dt.timezone.utc)
    walker = _AttributeWalker(limits)
    cols: dict[str, list[Any]] = {name: [] for name in SPAN_SCHEMA.names}
    rejected = 0
    errors: list[str] = []

    for ri, rs in enumerate(request.resource_spans):
        resource_flat, _ = walker.flat(rs.resource.attributes)
        resource_json = _dumps(walker.nest(resource_flat))
        service = resource_flat.get("service.name")
        # a string by the conventions; a number or flag some SDK sent is still the service's name, as text
        service_name = service if isinstance(service, str) else (
            _dumps(service) if isinstance(service, (int, float, bool)) else None)
        for si, ss in enumerate(rs.scope_spans):
            # cut like every other string the request carries: a scope name is whatever the library passed
            scope_name = walker.text(ss.scope.name) or None
            scope_version = walker.text(ss.scope.version) or None
            # the instrumentation scope's own attributes (rare, and redacted like the rest): NULL when none
            scope_json = _dumps(walker.nest(walker.flat(ss.scope.attributes)[0])) if ss.scope.attributes else None
            for pi, span in enumerate(ss.spans):
                problem = _validate(span)
                if problem:
                    rejected += 1
                    if len(errors) < _MAX_ERRORS_REPORTED:
                        errors.append(f"resource_spans[{ri}].scope_spans[{si}].spans[{pi}]: {problem}")
                    continue
                flat, over_limit = walker.flat(span.attributes)
                _append_span(cols, span, flat, over_limit, walker, service_name, resource_json,
                             scope_name, scope_version, scope_json, now)

    batch = pa.Table.from_pydict(cols, schema=SPAN_SCHEMA)
    return DecodeResult(batch=batch, rejected=rejected, errors=errors)


def _validate(span: Any) -> str:
    """Why ``span`` is rejected alone ("" when it is stored). A link's ids are checked too: a link
    names another span, and an id that is not one would be stored as an invented value."""
    tid, sid, pid = span.trace_id, span.span_id, span.parent_span_id
    problem = (_id_problem("trace_id", tid, 16, may_be_empty=False)
               or _id_problem("span_id", sid, 8, may_be_empty=False)
               or _id_problem("parent_span_id", pid, 8, may_be_empty=True))
    if problem:
        return problem
    for i, link in enumerate(span.links):
        problem = (_id_problem(f"links[{i}].trace_id", link.trace_id, 16, may_be_empty=True)
                   or _id_problem(f"links[{i}].span_id", link.span_id, 8, may_be_empty=True))
        if problem:
            return problem
    if span.end_time_unix_nano and span.end_time_unix_nano < span.start_time_unix_nano:
        return "span ends before it starts (end_time_unix_nano < start_time_unix_nano)"
    return ""


def _id_problem(field: str, value: bytes, size: int, *, may_be_empty: bool) -> str:
    """The id rule ``value`` breaks, named by ``field`` ("" when it is a valid id of ``size`` bytes).
    A span's own trace and span ids must not be all zeros; a parent or a link's id may be empty."""
    if value == _NOT_HEX_ID:
        return f"{field} is not hex: ids are {2 * size} hex characters in OTLP/JSON"
    if len(value) != size and not (may_be_empty and not value):
        rule = f"{'empty or ' if may_be_empty else ''}{size} bytes, {2 * size} hex characters in OTLP/JSON"
        return f"{field} must be {rule} (got {len(value)} bytes)"
    if not may_be_empty and value == bytes(size):
        return f"{field} is all zeros"
    return ""


def _append_span(
    cols: dict[str, list[Any]], span: Any, flat: dict[str, Any], over_limit: int,
    walker: _AttributeWalker, service_name: str | None, resource_json: str,
    scope_name: str | None, scope_version: str | None, scope_json: str | None, now: dt.datetime,
) -> None:
    start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
    pid = span.parent_span_id
    kind = span_kind_of(flat)
    prompt = _first_int(flat, "llm.token_count.prompt", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    completion = _first_int(flat, "llm.token_count.completion", "gen_ai.usage.output_tokens",
                            "gen_ai.usage.completion_tokens")
    total = _first_int(flat, "llm.token_count.total", "llm.usage.total_tokens", "gen_ai.usage.total_tokens")
    vercel_call = flat.get("ai.operationId") in _VERCEL_PROVIDER_CALLS
    if prompt is None and vercel_call:
        prompt = _first_int(flat, "ai.usage.tokens")  # an embedding call: its gen_ai-less input token count
    if total is None and prompt is not None:
        if completion is not None:
            total = prompt + completion if prompt + completion in _INT64 else None
        elif kind == "EMBEDDING":  # an embedding call has input tokens only (GenAI sends no output count)
            total = prompt
    input_value, input_mime = _io_value(flat, "input", kind, span.events, walker)
    output_value, output_mime = _io_value(flat, "output", kind, span.events, walker)

    append = cols.__getitem__
    append("trace_id").append(span.trace_id.hex())
    append("span_id").append(span.span_id.hex())
    append("parent_span_id").append(pid.hex() if pid and pid != _ZERO_SPAN else None)
    append("name").append(walker.text(span.name))
    append("span_kind").append(kind)
    append("start_time").append(start_ns // 1000 if start_ns else None)
    append("end_time").append(end_ns // 1000 if end_ns else None)
    append("duration_ms").append((end_ns - start_ns) / 1e6 if start_ns and end_ns else None)
    append("status_code").append(_STATUS.get(span.status.code, "UNSET"))
    append("status_message").append(walker.text(span.status.message) or None)
    append("service_name").append(service_name)
    append("session_id").append(_first_str(flat, "session.id", "gen_ai.conversation.id", *_TRACELOOP_SESSION,
                                           _VERCEL_SESSION))
    append("user_id").append(_first_str(flat, "user.id", "enduser.id", "traceloop.association.properties.user_id",
                                        _VERCEL_USER))
    append("input_value").append(input_value)
    append("input_mime_type").append(input_mime)
    append("output_value").append(output_value)
    append("output_mime_type").append(output_mime)
    append("llm_model_name").append(_model_name(flat, kind, output_value)
                                    or (_first_str(flat, "ai.model.id") if vercel_call else None))
    provider = (_first_str(flat, "llm.provider", "gen_ai.provider.name", "gen_ai.system", "llm.system")
                or (_first_str(flat, "ai.model.provider") if vercel_call else None))
    append("llm_provider").append(provider.lower() if provider else None)
    append("llm_finish_reason").append(_finish_reason(flat, span.events, output_value, kind))
    append("llm_token_count_prompt").append(prompt)
    append("llm_token_count_completion").append(completion)
    append("llm_token_count_total").append(total)
    tool = _first_str(flat, "tool.name", "gen_ai.tool.name", "ai.toolCall.name")
    if tool is None and kind == "TOOL" and span.name.startswith("execute_tool "):
        tool = walker.text(span.name[13:].strip()) or None  # GenAI names the span "execute_tool {gen_ai.tool.name}"
    elif tool is None and kind == "TOOL" and span.name.endswith(_DSPY_TOOL_CALL_SUFFIXES):
        # openinference-instrumentation-dspy (0.1.48) sets no tool.name: it names the span "{tool.name}.__call__"
        # (".acall"); without the name a `blast_radius` class never matched a DSPy tool
        tool = walker.text(span.name.rsplit(".", 1)[0].strip()) or None
    if tool is None and kind == "TOOL" and flat.get("traceloop.span.kind") in ("tool", "task"):
        # OpenLLMetry JS (@traceloop/node-server-sdk 0.27 withTool / withTask) names the tool only in
        # traceloop.entity.name; its span is "lookup_order.tool", which no blast_radius entry matches.
        tool = _first_str(flat, "traceloop.entity.name")
    append("tool_name").append(tool)
    append("attributes").append(_dumps(walker.nest(flat)))
    append("resource_attributes").append(resource_json)
    append("events").append(_dumps([_event(e, walker) for e in span.events]))
    append("links").append(_dumps([_link(link, walker) for link in span.links]))
    append("scope_name").append(scope_name)
    append("scope_version").append(scope_version)
    append("scope_attributes").append(scope_json)
    append("otel_span_kind").append(_OTEL_KIND.get(span.kind, "UNSPECIFIED"))
    append("trace_state").append(walker.text(span.trace_state) or None)
    append("dropped_attributes_count").append(span.dropped_attributes_count + over_limit)
    append("dropped_events_count").append(span.dropped_events_count)
    append("dropped_links_count").append(span.dropped_links_count)
    append("received_at").append(now)
    append("pii_redactions").append(None)


def span_kind_of(flat: dict[str, Any]) -> str:
    """The OpenInference kind: explicit ``openinference.span.kind``, else derived from gen_ai / traceloop keys."""
    oi = flat.get("openinference.span.kind")
    if isinstance(oi, str) and oi:
        upper = oi.strip().upper()
        return upper if upper in _KNOWN_KINDS else "UNKNOWN"
    op = flat.get("gen_ai.operation.name")
    if isinstance(op, str) and op:
        known = _GENAI_OPERATION_KIND.get(op.strip().lower())
        if known is not None:
            return known  # a custom operation (custom values are allowed) is judged by its keys below
    tl = flat.get("traceloop.span.kind")
    if isinstance(tl, str) and tl.lower() in _TRACELOOP_KIND:
        return _TRACELOOP_KIND[tl.lower()]
    request_type = flat.get("llm.request.type")
    if isinstance(request_type, str) and request_type.lower() in _TRACELOOP_REQUEST_KIND:
        return _TRACELOOP_REQUEST_KIND[request_type.lower()]
    vercel = flat.get("ai.operationId")
    if isinstance(vercel, str) and vercel in _VERCEL_AI_KIND:
        return _VERCEL_AI_KIND[vercel]
    mastra = flat.get("mastra.span.type")
    if mastra in _MASTRA_WRAPPERS and not any(k in flat for k in ("gen_ai.request.model", "gen_ai.response.model")):
        return "CHAIN"
    has_genai = False
    for key in flat:
        if key.startswith("gen_ai."):
            if key.startswith("gen_ai.agent."):
                return "AGENT"
            if key.startswith("gen_ai.tool.") and not key.startswith("gen_ai.tool.definitions"):
                return "TOOL"  # the tools a model call was offered say nothing of a tool running
            if key.startswith("gen_ai.retrieval."):
                return "RETRIEVER"  # its query or documents: a search, not a model call
            if key.startswith("gen_ai.embeddings."):
                return "EMBEDDING"
            has_genai = True
    return "LLM" if has_genai else "UNKNOWN"


def _io_value(flat: dict[str, Any], side: str, kind: str, events: Any,
              walker: _AttributeWalker) -> tuple[str | None, str | None]:
    value = flat.get(f"{side}.value")
    mime = flat.get(f"{side}.mime_type")
    if value is None:
        fallbacks = (
            ("gen_ai.tool.call.arguments", "gen_ai.input.messages", "gen_ai.retrieval.query.text",
             "traceloop.entity.input", "ai.toolCall.args", "ai.prompt")
            if side == "input"
            else ("gen_ai.tool.call.result", "gen_ai.output.messages", "traceloop.entity.output",
                  "ai.toolCall.result", "ai.response.text", "ai.response.object")
        )
        for key in fallbacks:
            if flat.get(key) is not None:
                if key == "ai.response.text" and flat[key] == "" and flat.get("ai.response.toolCalls") is not None:
                    continue  # a stream step that only called tools records an empty text; its calls say more
                value = flat[key]
                if mime is None and (key in _JSON_FALLBACKS or key in _TOOL_IO_KEYS and _is_json_text(value)):
                    mime = "application/json"
                break
    if value is None and isinstance(flat.get("ai.operationId"), str):
        value, vercel_mime = _vercel_content(flat, side)
        mime = mime or vercel_mime
    if value is None:
        value, mime = _mastra_content(flat, side, mime)
    if value is None:
        value = _legacy_genai_content(flat, side, events, walker)
        if mime is None and (isinstance(value, list) or (isinstance(value, str) and value[:1] in ("[", "{"))):
            mime = "application/json"
    if value is None:
        return None, mime if isinstance(mime, str) else None
    if not isinstance(value, str):
        value = _dumps([_json_item(v) for v in value] if isinstance(value, list) else value)
        mime = mime or "application/json"
    return value, mime if isinstance(mime, str) else None


def _mastra_content(flat: dict[str, Any], side: str, mime: Any) -> tuple[Any, Any]:
    """What a Mastra span sent or received, in Mastra's own keys: @mastra/otel-exporter (1.4, @mastra/core 1.71)
    records the agent run's input (the user's message) and output only as ``mastra.agent_run.input`` /
    ``.output``, a model step's as ``mastra.model_step.*``, keyed by ``mastra.span.type``; without them a Mastra
    run had no input anywhere and its candidates no user message. (value, mime type); (None, mime) if none."""
    span_type = flat.get("mastra.span.type")
    value = flat.get(f"mastra.{span_type}.{side}") if isinstance(span_type, str) else None
    if value is None:
        return None, mime
    if side == "output" and isinstance(value, str) and value[:1] == "{":
        answer = _mastra_answer(value)
        if answer is not None:
            return answer or None, mime
    return value, mime or ("application/json" if _is_json_text(value) else None)


def _mastra_answer(output: str) -> str | None:
    """The text of a Mastra run's or step's output, ``{"text": ..., "files": []}``, when text is all it answered
    (no structured ``object``, no tool calls): ``""`` for an empty answer (a failed call's), None to keep the JSON."""
    try:
        parsed = orjson.loads(output)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str):
        return None
    if parsed.get("object") is not None or parsed.get("toolCalls"):
        return None
    return str(parsed["text"])


def _vercel_content(flat: dict[str, Any], side: str) -> tuple[Any, str | None]:
    """What a Vercel AI SDK span sent or received beyond its tool call and answer text: a provider call's
    messages (``ai.prompt.messages``) and the tool calls it got back (``ai.response.toolCalls``), an embedding
    call's text (``ai.value``, or ``ai.values``, one JSON text per value). (value, mime type); (None, None)."""
    if side == "output":
        calls = flat.get("ai.response.toolCalls")
        return (calls, "application/json") if calls is not None else (None, None)
    if flat.get("ai.prompt.messages") is not None:
        return flat["ai.prompt.messages"], "application/json"
    values = flat.get("ai.values")
    if isinstance(values, list):
        return _dumps([_json_value(v) for v in values]), "application/json"
    value = _json_value(flat.get("ai.value"))
    if value is None or isinstance(value, str):
        return value, None
    return _dumps(value), "application/json"


def _json_value(text: Any) -> Any:
    """A value the Vercel AI SDK recorded as its JSON text (``"\"sunny day\""``) parsed back; else unchanged."""
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


#: The deprecated GenAI conventions' per-message span events (semconv 1.28 - 1.36), input side; their
#: output is the ``gen_ai.choice`` event, ``{index, finish_reason, message}``.
_GENAI_MESSAGE_EVENTS = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                         "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}
_GENAI_EVENT_FIELDS = ("role", "content", "tool_calls", "id", "index", "finish_reason", "message")


def _legacy_genai_content(flat: dict[str, Any], side: str, events: Any, walker: _AttributeWalker) -> Any:
    """The messages a span sent or received in a deprecated GenAI form, for ``input_value`` / ``output_value``.

    Before ``gen_ai.input.messages`` / ``gen_ai.output.messages``, instrumentations recorded content as the
    ``gen_ai.prompt`` / ``gen_ai.completion`` JSON text (on the span, or on a ``gen_ai.content.prompt`` /
    ``.completion`` event: semconv 1.27 and before), as OpenLLMetry's flattened ``gen_ai.prompt.<i>.role`` /
    ``.content`` keys, or as one event per message (``gen_ai.user.message``, ..., ``gen_ai.choice``). The
    detectors and candidates read all of these; without this the columns operators query stayed NULL.
    Returns the JSON text, a list of message objects, or None.
    """
    key = "gen_ai.prompt" if side == "input" else "gen_ai.completion"
    if flat.get(key) is not None:
        return flat[key]
    prefix = key + "."
    first = f"{prefix}0."
    if f"{first}content" in flat or f"{first}role" in flat:  # a dict lookup first: most spans have neither
        indexed = {f"m.{k[len(prefix):]}": v for k, v in flat.items()
                   if k.startswith(prefix) and k[len(prefix):len(prefix) + 1].isdigit()}
        messages = walker.nest(indexed).get("m")
        if isinstance(messages, list):
            return [m for m in messages if m is not None]
    content_event = "gen_ai.content.prompt" if side == "input" else "gen_ai.content.completion"
    found: list[Any] = []
    for event in events:
        if event.name == content_event:
            value = walker.flat(event.attributes)[0].get(key)
            if value is not None:
                return value
        elif (side == "input" and event.name in _GENAI_MESSAGE_EVENTS) or (
                side == "output" and event.name == "gen_ai.choice"):
            event_flat = walker.flat(event.attributes)[0]
            body = _json_item(event_flat.get("gen_ai.event.content"))  # Azure AI Inference: the body as JSON
            if not isinstance(body, dict):
                attributes = walker.nest(event_flat)
                body = {f: _json_item(attributes[f]) for f in _GENAI_EVENT_FIELDS if f in attributes}
            if event.name in _GENAI_MESSAGE_EVENTS:
                body = {"role": _GENAI_MESSAGE_EVENTS[event.name], **body}
            found.append(body)
    return found or None


def _json_item(value: Any) -> Any:
    """A list item, a JSON object text parsed: the OpenTelemetry Python SDK sends a list of maps (messages,
    documents) as one JSON text per item, and the column should hold the messages, not JSON texts of them."""
    if isinstance(value, str) and value[:1] == "{":
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return value


#: A GenAI tool call's arguments and result: JSON text when the tool takes or gives an object (most do),
#: plain text otherwise. The mime type says which, as OpenInference's ``input.mime_type`` does.
_TOOL_IO_KEYS = frozenset({"gen_ai.tool.call.arguments", "gen_ai.tool.call.result"})


def _is_json_text(value: Any) -> bool:
    """Whether ``value`` is a JSON object or array as text."""
    if not isinstance(value, str) or value.lstrip()[:1] not in ("{", "["):
        return False
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


#: Content keys that always hold JSON text (the Vercel AI SDK ``JSON.stringify``s a tool's input and its output).
_JSON_FALLBACKS = frozenset({"gen_ai.input.messages", "gen_ai.output.messages", "ai.toolCall.args", "ai.prompt",
                             "ai.response.object", "ai.toolCall.result"})


_DSPY_TOOL_CALL_SUFFIXES = (".__call__", ".acall")


def _finish_reason(flat: dict[str, Any], events: Any, output_value: str | None, kind: str) -> str | None:
    """The first choice's finish reason, from where the conventions put it, in the detectors' order
    (``spanview.finish_reasons``): the column and the truncation rule must not disagree."""
    reason = _first_str(flat, "llm.finish_reason")
    if reason:
        return reason
    reasons = flat.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, str) and reasons[:1] == "[":
        # an SDK that cannot send a string[] sends its JSON text: the column holds the first reason, as the
        # truncation rule reads it, not '["length"]'
        parsed = _json_holding(reasons, ("[",))
        reasons = parsed if isinstance(parsed, list) else reasons
    if isinstance(reasons, list) and reasons and isinstance(reasons[0], str) and reasons[0]:
        return reasons[0]
    if isinstance(reasons, str) and reasons:
        return reasons
    reason = _first_str(flat, "llm.output_messages.0.message.finish_reason")
    if reason:
        return reason
    reason = _message_finish_reason(flat.get("gen_ai.output.messages"))
    if reason:
        return reason
    reason = (_first_str(flat, "gen_ai.completion.0.finish_reason")
              or _message_finish_reason(flat.get("gen_ai.completion")))  # the legacy JSON text of the messages
    if reason:
        return reason
    for event in events:  # the deprecated gen_ai.choice event: {index, finish_reason, message}
        if event.name == "gen_ai.choice":
            for kv in event.attributes:
                if kv.key == "finish_reason" and kv.value.string_value:
                    return str(kv.value.string_value)
    if kind != "LLM":
        return None
    return _response_finish_reason(output_value) or haystack_reply_finish_reason(output_value)


def _json_holding(text: str, needles: Sequence[str]) -> Any:
    """``text`` parsed, when it names one of ``needles`` (cheap to look for) and is JSON; else None."""
    if not any(n in text for n in needles):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _message_finish_reason(messages: Any) -> str | None:
    """finish_reason of the first ``gen_ai.output.messages`` (or legacy ``gen_ai.completion``) item that has one
    (JSON text or a list)."""
    if isinstance(messages, str):
        messages = _json_holding(messages, ('"finish_reason"',))
    if not isinstance(messages, list):
        return None
    for m in map(_json_item, messages):
        reason = m.get("finish_reason") if isinstance(m, dict) else None
        if isinstance(reason, str) and reason:
            return reason
    return None


_RESPONSE_REASON_KEYS = ('"finish_reason"', '"stop_reason"', '"finishReason"', '"incomplete_details"')


def _response_finish_reason(output_value: str | None) -> str | None:
    """From a provider's raw response in output.value (OpenAI choices, Anthropic stop_reason, Gemini
    candidates, OpenAI Responses incomplete_details): all that spans before semconv 0.1.29 carry."""
    resp = _json_holding(output_value, _RESPONSE_REASON_KEYS) if output_value and output_value[:1] == "{" else None
    if not isinstance(resp, dict):
        return None
    candidates: list[Any] = []
    for key, field in (("choices", "finish_reason"), ("candidates", "finishReason")):
        items = resp.get(key)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            candidates.append(items[0].get(field))
    candidates.append(resp.get("stop_reason"))
    details = resp.get("incomplete_details")
    candidates.append(details.get("reason") if isinstance(details, dict) else None)
    return next((c for c in candidates if isinstance(c, str) and c), None)


def _model_name(flat: dict[str, Any], kind: str, output_value: str | None) -> str | None:
    """The model that answered, else the one asked for.

    @arizeai/openinference-instrumentation-langchain (LangChain.js, 4.1) sets ``llm.model_name`` from the
    invocation parameters, the alias asked for (``gpt-4o-mini``); the snapshot that answered
    (``gpt-4o-mini-2024-07-18``) is only in the LLMResult in ``output.value``. So a model key that merely
    repeats the requested model gives way to the one the response names.
    """
    named = _first_str(flat, "llm.model_name", "gen_ai.response.model", "gen_ai.request.model",
                       "llm.response.model_name", "llm.request.model_name", "embedding.model_name")
    if named is not None and kind != "LLM":
        return named
    requested = _requested_model(flat)
    if kind != "LLM":
        return requested
    if named is None or named == requested:
        return _response_model(output_value) or named or requested
    return named


def _response_model(output_value: str | None) -> str | None:
    """The model that answered, from a provider's raw response in output.value (OpenAI, Anthropic: ``model``)
    or LangChain's LLMResult (``generation_info.model_name``), for spans whose instrumentor set no model key.

    openinference-instrumentation-langchain sets ``llm.model_name`` from ``llm_output``, which a streamed
    ChatOpenAI run leaves empty: without this its spans named the alias asked for (``gpt-4o-mini``), not
    the snapshot that answered (``gpt-4o-mini-2024-07-18``).
    """
    resp = _json_holding(output_value, ('"model',)) if output_value and output_value[:1] == "{" else None
    if not isinstance(resp, dict):
        return None
    candidates: list[Any] = [resp.get("model")]
    generations = resp.get("generations")
    first = generations[0] if isinstance(generations, list) and generations else None
    first = first[0] if isinstance(first, list) and first else first
    if isinstance(first, dict):
        info = first.get("generation_info", first.get("generationInfo"))  # Python / LangChain.js
        candidates.append(info.get("model_name") if isinstance(info, dict) else None)
        message = first.get("message")
        kwargs = message.get("kwargs") if isinstance(message, dict) else None
        meta = kwargs.get("response_metadata") if isinstance(kwargs, dict) else None
        candidates.append(meta.get("model_name") if isinstance(meta, dict) else None)
    llm_output = resp.get("llm_output")
    candidates.append(llm_output.get("model_name") if isinstance(llm_output, dict) else None)
    return next((c for c in candidates if isinstance(c, str) and c), None)


def _requested_model(flat: dict[str, Any]) -> str | None:
    """The model a call asked for, from OpenInference's ``llm.invocation_parameters`` JSON.

    The OpenAI instrumentor sets ``llm.model_name`` from the provider's response, so a call that failed
    (rate limit, timeout) names its model only there; without this the failures have no model.
    """
    raw = flat.get("llm.invocation_parameters")
    if not isinstance(raw, str) or '"model"' not in raw:
        return None
    try:
        params = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    model = params.get("model") if isinstance(params, dict) else None
    return model if isinstance(model, str) and model else None


def _first_str(flat: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = flat.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    return None


_INT64 = range(-(2**63), 2**63)


def _first_int(flat: dict[str, Any], *keys: str) -> int | None:
    """The first value of ``keys`` that is a whole number a BIGINT column holds (a number past it is skipped)."""
    for key in keys:
        value = flat.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and math.isfinite(value):
            value = int(value)
        elif isinstance(value, str) and value.isdecimal() and len(value) < 20:  # isdigit() takes "²"; int() not
            value = int(value)
        if isinstance(value, int) and value in _INT64:
            return value
    return None


def _event(event: Any, walker: _AttributeWalker) -> dict[str, Any]:
    flat, over = walker.flat(event.attributes)
    ns = event.time_unix_nano
    return {
        "name": walker.text(event.name),
        "timestamp": (_EPOCH + dt.timedelta(microseconds=ns // 1000)).isoformat() if ns else None,
        "time_unix_nano": ns,
        "attributes": walker.nest(flat),
        "dropped_attributes_count": event.dropped_attributes_count + over,
    }


def _link(link: Any, walker: _AttributeWalker) -> dict[str, Any]:
    flat, over = walker.flat(link.attributes)
    return {
        "trace_id": link.trace_id.hex(),
        "span_id": link.span_id.hex(),
        "trace_state": walker.text(link.trace_state) or None,
        "attributes": walker.nest(flat),
        "dropped_attributes_count": link.dropped_attributes_count + over,
    }


def nest_attributes(flat: dict[str, Any], limits: DecodeLimits | None = None) -> dict[str, Any]:
    """The nested ``attributes`` object stored for flattened OTLP keys (also what test builders use)."""
    return _AttributeWalker(limits or DecodeLimits()).nest(flat)


def _dumps(value: Any) -> str:
    """Compact JSON text; orjson writes the same bytes as ``json.dumps(ensure_ascii=False)`` ~4x faster."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class _AttributeWalker:
    """Turns KeyValue lists into Python values under the configured limits."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.max_attributes = limits.max_attributes_per_span
        self.max_value = limits.max_value_size
        self.max_depth = limits.max_nesting_depth
        # A string of fewer than max_value/4 characters cannot exceed max_value bytes in UTF-8.
        self._cheap_len = limits.max_value_size // 4
        self._safe_cut = limits.safe_cut
        self._whole_key = limits.whole_key
        # nesting plans are shared by every walker: one made without the check must not serve one with it
        self._plan_tag = id(getattr(limits.whole_key, "__self__", limits.whole_key)) if limits.whole_key else 0

    def text(self, s: str) -> str:
        if len(s) <= self._cheap_len:
            return s
        raw = s.encode("utf-8")
        if len(raw) <= self.max_value:
            return s
        kept = raw[: self.max_value].decode("utf-8", "ignore")
        if self._safe_cut is not None:
            kept = s[: self._safe_cut(s, len(kept))]
        return f"{kept}…[truncated {len(raw) - len(kept.encode('utf-8'))} bytes]"

    def flat(self, attributes: Any) -> tuple[dict[str, Any], int]:
        """Dotted key -> value, first occurrence of a duplicate key wins; returns (attrs, dropped over limit)."""
        out: dict[str, Any] = {}
        dropped = 0
        for kv in attributes:
            key = kv.key
            if len(key) > self._cheap_len:  # a key is a string too: one over max_value_size is cut
                key = self.text(key)
            if key in out:
                continue
            if len(out) >= self.max_attributes:
                dropped += 1
                continue
            out[key] = self.value(kv.value, 1)
        return out, dropped

    def value(self, v: Any, depth: int) -> Any:
        which = v.WhichOneof("value")
        if which == "string_value":
            return self.text(v.string_value)
        if which == "int_value":
            return v.int_value
        if which == "bool_value":
            return v.bool_value
        if which == "double_value":
            d = v.double_value
            return d if math.isfinite(d) else str(d)
        if which == "array_value":
            if depth >= self.max_depth:
                return TOO_DEEP
            return [self.value(x, depth + 1) for x in v.array_value.values]
        if which == "kvlist_value":
            if depth >= self.max_depth:
                return TOO_DEEP
            out: dict[str, Any] = {}
            for kv in v.kvlist_value.values:
                key = kv.key if len(kv.key) <= self._cheap_len else self.text(kv.key)
                if key not in out:
                    out[key] = self.value(kv.value, depth + 1)
            return out
        if which == "bytes_value":
            return self.text(base64.b64encode(v.bytes_value).decode("ascii"))
        return None

    def nest(self, flat: dict[str, Any]) -> dict[str, Any]:
        """:meth:`nest_slowly`, through a compiled plan when this key set was seen before.

        Spans of one kind from one instrumentor carry the same keys request after
        request, and walking the dotted keys was the largest cost of decoding. The
        second time a key set (with the same values structured) appears, its
        nesting is compiled into one function that builds the object directly.
        """
        values = list(flat.values())
        structured = tuple(i for i, x in enumerate(values) if type(x) is dict or type(x) is list)
        signature = (tuple(flat), structured, self.max_depth, self._plan_tag)  # the depth limit shapes long keys too
        plan = _PLANS.get(signature)
        if plan is not None:
            return plan(values)
        if signature in _SEEN_ONCE:
            plan = _compile_plan(flat, structured, self.nest_slowly)
            if plan is not None:
                if len(_PLANS) >= _MAX_PLANS:
                    _PLANS.clear()
                _PLANS[signature] = plan
                return plan(values)
        else:
            if len(_SEEN_ONCE) >= _MAX_PLANS:
                _SEEN_ONCE.clear()
            _SEEN_ONCE.add(signature)
        return self.nest_slowly(flat)

    def nest_slowly(self, flat: dict[str, Any]) -> dict[str, Any]:
        """Re-nest dotted keys: dots make objects, all-digit segments make lists (gaps are null).

        Where a key is both a leaf and a prefix (``a.b`` and ``a.b.c``), the object
        wins and the leaf is kept under the empty key ``""`` of that object; a
        structured (kvlist/array) value never gets keys merged into it: the rest of
        the key stays dotted beside it.
        """
        root: dict[str, Any] = {}
        nodes: dict[str, dict[str, Any]] = {"": root}  # dotted prefix -> the object made for it
        made: list[tuple[dict[str, Any], dict[str, Any], str]] = []  # (object, parent, key), creation order
        made_ids: set[int] = set()
        digit_keyed: set[int] = set()
        whole_key = self._whole_key
        for key, value in flat.items():
            if whole_key is not None and "." in key and whole_key(key):
                prefix, last = "", key  # PII across a dot: the key stays one string for the scan
            elif key.count(".") >= self.max_depth:  # a key of many dots must not nest past the depth limit
                parts = key.split(".", self.max_depth - 1)  # the rest of the key stays dotted in the leaf
                prefix, last = ".".join(parts[:-1]), parts[-1]
            else:
                prefix, _, last = key.rpartition(".")
            node = nodes.get(prefix)
            if node is None:
                node, last = self._path(root, nodes, prefix, last, made, made_ids, digit_keyed)
            existing = node.get(last, _MISSING)
            if existing is _MISSING:
                node[last] = value
                if last.isdecimal():  # not isdigit(): int() refuses digits such as "²"
                    digit_keyed.add(id(node))
            elif id(existing) in made_ids and "" not in existing:
                existing[""] = value
            else:
                # Another key already took this place (``lead`` and ``.lead``, ``a.b`` and ``a..b`` walk the
                # same way; ``a`` and ``a.`` both want ``a``'s empty key): every attribute is stored, so this
                # one stays whole, its dotted key at the top level.
                root.setdefault(key, value)
        for obj, parent, key in reversed(made):  # children before parents
            if id(obj) in digit_keyed and obj and all(k.isdecimal() for k in obj):
                top = max(int(k) for k in obj)
                if top < 2 * len(obj) + 64 and len({int(k) for k in obj}) == len(obj):  # "0" and "00": an object
                    items: list[Any] = [None] * (top + 1)
                    for k, child in obj.items():
                        items[int(k)] = child
                    parent[key] = items
        return root  # the top level stays an object even when every key is a number

    @staticmethod
    def _path(root: dict[str, Any], nodes: dict[str, dict[str, Any]], prefix: str, last: str,
              made: list[tuple[dict[str, Any], dict[str, Any], str]],
              made_ids: set[int], digit_keyed: set[int]) -> tuple[dict[str, Any], str]:
        """Walk/create the objects for ``prefix``; returns (object to hold the leaf, leaf key)."""
        node = root
        walked = ""
        parts = prefix.split(".")
        for i, part in enumerate(parts):
            walked = f"{walked}.{part}" if walked else part
            cached = nodes.get(walked)
            if cached is not None:
                node = cached
                continue
            child = node.get(part, _MISSING)
            if child is _MISSING or not (isinstance(child, dict) and id(child) in made_ids):
                if child is not _MISSING and isinstance(child, (dict, list)):
                    # A structured value sits where an object is needed: keep the rest of the key dotted.
                    return node, ".".join([*parts[i:], last])
                new: dict[str, Any] = {} if child is _MISSING else {"": child}
                node[part] = new
                if part.isdecimal():
                    digit_keyed.add(id(node))
                made.append((new, node, part))
                made_ids.add(id(new))
                child = new
            nodes[walked] = child
            node = child
        return node, last


_MISSING = object()


# --------------------------------------------------------------------------- compiled nesting plans

_MAX_PLANS = 4096
_MAX_PLAN_KEYS = 1024
_MAX_PLAN_DEPTH = 48  # well under the Python parser's limit on nested brackets
_Plan = Callable[[list[Any]], dict[str, Any]]
_Signature = tuple[tuple[str, ...], tuple[int, ...], int, int]
_PLANS: dict[_Signature, _Plan] = {}
_SEEN_ONCE: set[_Signature] = set()


class _Slot:
    """Stands for the value at ``index`` while a plan's shape is worked out."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


class _StructuredSlot(list):  # type: ignore[type-arg]
    """A structured (array/kvlist) value's stand-in: a list, so nesting never merges keys into it."""

    def __init__(self, position: int) -> None:
        super().__init__()
        self.position = position


def _compile_plan(flat: dict[str, Any], structured: tuple[int, ...],
                  nest_slowly: Callable[[dict[str, Any]], dict[str, Any]]) -> _Plan | None:
    """A function ``values -> nested object`` equal to ``nest_slowly(flat)`` for any values of this shape.

    The shape is found by nesting stand-ins with the slow walk itself, so both
    paths agree by construction; keys enter the source only through ``repr``.
    None when the key set is too large or too deep to be worth compiling.
    """
    if len(flat) > _MAX_PLAN_KEYS:
        return None
    marked = set(structured)
    stand_ins = {key: (_StructuredSlot(i) if i in marked else _Slot(i)) for i, key in enumerate(flat)}
    shape = nest_slowly(stand_ins)
    try:
        source = _plan_source(shape, 0)
        code = compile(f"lambda v: {source}", "<nesting plan>", "eval")
    except (RecursionError, SyntaxError, MemoryError, ValueError, _TooDeep):
        return None
    plan: _Plan = eval(code, {"__builtins__": {}})  # noqa: S307 - source built above from repr() of keys only
    return plan


class _TooDeep(Exception):
    pass


def _plan_source(node: Any, depth: int) -> str:
    if depth > _MAX_PLAN_DEPTH:
        raise _TooDeep
    if isinstance(node, (_Slot, _StructuredSlot)):
        return f"v[{node.position}]"
    if isinstance(node, dict):
        return "{" + ",".join(f"{key!r}:{_plan_source(child, depth + 1)}" for key, child in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_plan_source(child, depth + 1) for child in node) + "]"
    if node is None:
        return "None"
    raise ValueError(f"unexpected node in a nesting plan: {type(node).__name__}")
