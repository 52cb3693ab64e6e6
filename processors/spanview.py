"""Reading OpenInference and OTel GenAI facts out of stored span rows, defensively.

Every function here takes a :data:`~tracesieve.processors.base.SpanRow` (JSON
columns already parsed, attributes nested back from their dotted keys) and
returns plain Python values. Producers disagree on shapes -- a list may arrive
flattened, as a JSON string, or as a native array; a leaf holding JSON is a
string -- so every accessor accepts all of them and never raises on odd data.
Pure functions; no state.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from tracesieve.processors.base import SpanRow

#: A PII placeholder left by the sanitizer: ``<EMAIL>`` or ``<EMAIL:3f9a1c>``.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*(?::[0-9a-f]{6})?>")
#: The marker the collector appends to a value it cut at ``max_value_size``.
TRUNCATED_MARK = re.compile(r"…\[truncated \d+ bytes\]$")

JSON_MIME = "application/json"


def declares_json(mime: object) -> bool:
    """Whether a mime type says JSON: ``application/json`` in any case, with parameters
    (``; charset=utf-8``) or not. Compared as a whole string, a declared JSON output with a charset was
    never checked, and its text was taken for the answer."""
    return isinstance(mime, str) and mime.split(";", 1)[0].strip().lower() == JSON_MIME
#: What OpenInference's OPENINFERENCE_HIDE_* settings leave in place of a value: present, but unknown.
HIDDEN = "__REDACTED__"


def dig(obj: Any, *path: str | int) -> Any:
    """``obj[p0][p1]...`` through dicts and lists; None when any step is missing."""
    for step in path:
        if isinstance(obj, dict):
            obj = obj.get(step)  # type: ignore[call-overload]
        elif isinstance(obj, list) and isinstance(step, int) and 0 <= step < len(obj):
            obj = obj[step]
        else:
            return None
    return obj


def attrs(span: SpanRow) -> dict[str, Any]:
    value = span.get("attributes")
    return value if isinstance(value, dict) else {}


def try_json(value: Any) -> tuple[bool, Any]:
    """(True, parsed) for JSON text, (True, value) for an already structured value, (False, error) otherwise.

    Rules ask for the same raw request/response JSON of a span many times; long
    texts are parsed once and remembered by content (callers never mutate what
    they get back). orjson parses, the standard library only what orjson refuses
    (NaN, huge integers), so what counts as JSON is unchanged.
    """
    if isinstance(value, (dict, list)):
        return True, value
    if not isinstance(value, str):
        return False, "not a string"
    remembered = len(value) >= _REMEMBER_FROM and value[:1] in ("{", "[")
    if remembered:
        hit = _PARSED.get(value, _NOT_PARSED)
        if hit is not _NOT_PARSED:
            return hit  # type: ignore[no-any-return]
    try:
        result: tuple[bool, Any] = (True, orjson.loads(value))
    except ValueError:
        try:
            result = (True, json.loads(value))
        except ValueError as exc:
            result = (False, str(exc))
    if remembered:
        global _parsed_chars
        _parsed_chars += len(value)
        if _parsed_chars > _REMEMBER_CHARS:
            _PARSED.clear()
            _parsed_chars = len(value)
        _PARSED[value] = result
    return result


_REMEMBER_FROM = 64
_REMEMBER_CHARS = 4 * 1024 * 1024  # bounded by text size: a value may be up to max_value_size
_PARSED: dict[str, tuple[bool, Any]] = {}
_parsed_chars = 0
_NOT_PARSED = object()


def loose(value: Any) -> Any:
    """A JSON string parsed when it parses, any other value unchanged."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        ok, parsed = try_json(value)
        if ok:
            return parsed
    return value


def list_item(value: Any) -> Any:
    """A list item, a JSON object text parsed: an SDK that cannot send a list of maps (OpenTelemetry
    Python's attributes are primitives or lists of them) sends ``gen_ai.output.messages``,
    ``gen_ai.retrieval.documents`` and the like as one JSON text per item."""
    if isinstance(value, str) and value[:1] == "{":
        ok, parsed = try_json(value)
        if ok and isinstance(parsed, dict):
            return parsed
    return value


def as_list(value: Any) -> list[Any]:
    """A list from a list (its JSON object texts parsed), a JSON list string, or a dict with all-digit keys;
    [] otherwise."""
    value = loose(value)
    if isinstance(value, list):
        return [list_item(v) for v in value]
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.isdecimal() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    return []


def as_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def clip(value: Any, limit: int = 2000) -> Any:
    """Bound a string for evidence (evidence rows stay small); other values unchanged."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"…[{len(value) - limit} more chars]"
    return value


def is_collector_truncated(value: Any) -> bool:
    return isinstance(value, str) and bool(TRUNCATED_MARK.search(value))


def span_kind(span: SpanRow) -> str:
    return str(span.get("span_kind") or "UNKNOWN").upper()


def is_error(span: SpanRow) -> bool:
    return span.get("status_code") == "ERROR"


# LangGraph control flow and generator plumbing are raised as exceptions but are not failures.
_CONTROL_FLOW_EXCEPTIONS = frozenset({
    "GraphInterrupt", "NodeInterrupt", "ParentCommand", "Command", "GeneratorExit", "StopIteration",
    "StopAsyncIteration",
})


# asyncio cancels what is left of a streamed run when its loop closes: openinference-instrumentation-autogen-agentchat
# (0.1.22) records that CancelledError on the agent's span after setting it OK, and a finished, clean run was an
# llm_error. On a span its producer closed OK a cancellation is plumbing; without that status it stays a failure.
_CANCELLATIONS = frozenset({"CancelledError"})


def exception_events(span: SpanRow) -> list[dict[str, Any]]:
    """The span's ``exception`` events as {type, message, escaped}, control-flow exceptions left out."""
    found = []
    closed_ok = span.get("status_code") == "OK"
    for event in span.get("events") or []:
        if not isinstance(event, dict) or event.get("name") != "exception":
            continue
        exc = dig(event, "attributes", "exception") or {}
        etype = exc.get("type") if isinstance(exc, dict) else None
        short = str(etype).rsplit(".", 1)[-1] if etype else ""
        if short in _CONTROL_FLOW_EXCEPTIONS or (closed_ok and short in _CANCELLATIONS):
            continue
        found.append({
            "type": etype,
            "message": clip(exc.get("message") if isinstance(exc, dict) else None, 500),
        })
    return found


def failed(span: SpanRow) -> bool:
    """Status ERROR, an ``exception`` event that is not control flow, or an ``error.type`` on a span whose
    status is not OK.

    The GenAI conventions set ``error.type`` (stable) exactly when the operation ended in an error; the
    status that should come with it is left UNSET by some producers, whose failed tool calls and model
    calls were then judged successful. An explicit OK status wins.
    """
    return is_error(span) or bool(exception_events(span)) or error_type(span) is not None


def error_type(span: SpanRow) -> str | None:
    """The span's ``error.type`` attribute when it says the operation failed (a non-empty text, status not OK)."""
    if span.get("status_code") == "OK":
        return None
    value = dig(attrs(span), "error", "type")
    return value.strip() or None if isinstance(value, str) else None


def duration_ms(span: SpanRow) -> float | None:
    value = span.get("duration_ms")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    start, end = span.get("start_time"), span.get("end_time")
    try:
        return (end - start).total_seconds() * 1000.0  # type: ignore[operator]
    except TypeError:
        return None


# ---------------------------------------------------------------- messages


def _message_obj(item: Any) -> dict[str, Any]:
    """OpenInference list items are {"message": {...}}; a JSON-string list holds the bare message."""
    if isinstance(item, dict):
        inner = item.get("message")
        return dict(inner) if isinstance(inner, dict) else dict(item)
    return {}


def _oi_tool_call(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    call = item.get("tool_call") if isinstance(item.get("tool_call"), dict) else item
    fn = call.get("function") if isinstance(call.get("function"), dict) else {}
    name = fn.get("name") or call.get("name")
    if name is None and "arguments" not in fn:
        return None
    return {"id": call.get("id"), "name": name, "arguments": fn.get("arguments", call.get("arguments"))}


def _oi_text(message: Mapping[str, Any]) -> str:
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    for item in as_list(message.get("contents")):
        mc = item.get("message_content") if isinstance(item, dict) else None
        if isinstance(mc, dict) and mc.get("type", "text") == "text" and isinstance(mc.get("text"), str):
            parts.append(mc["text"])
    return "\n".join(parts)


def _call_key(call: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two records of a tool call the same call: its id, else its name and arguments."""
    if call.get("id") is not None:
        return ("id", call["id"])
    return ("call", call.get("name"), json.dumps(call.get("arguments"), sort_keys=True, default=str))


def _oi_messages(value: Any) -> list[dict[str, Any]]:
    out = []
    for item in as_list(value):
        msg = _message_obj(item)
        calls = [c for c in (_oi_tool_call(x) for x in as_list(msg.get("tool_calls"))) if c]
        # openinference-instrumentation-anthropic records each tool_use block twice: in the message's
        # `tool_calls` and again as a `contents` part. Counting both made one call two (evidence listed it
        # twice and the promotion draft lost the tool's name and schema), so a part repeating a call
        # already in `tool_calls` is the same call.
        listed = [_call_key(c) for c in calls]
        for part in as_list(msg.get("contents")):
            if isinstance(part, dict):
                tc = part.get("tool_call") or dig(part, "message_content", "tool_call")
                call = _oi_tool_call({"tool_call": tc}) if isinstance(tc, dict) else None
                if call and _call_key(call) in listed:
                    listed.remove(_call_key(call))
                elif call:
                    calls.append(call)
        out.append({
            "role": msg.get("role"),
            "text": _oi_text(msg),
            "tool_calls": calls,
            "finish_reason": msg.get("finish_reason"),
        })
    return out


def _genai_messages(value: Any) -> list[dict[str, Any]]:
    out = []
    for msg in as_list(value):
        if not isinstance(msg, dict):
            continue
        texts, calls, responses = [], [], []
        for part in as_list(msg.get("parts")):
            if not isinstance(part, dict):
                continue
            ptype = part.get("type")
            if ptype == "text" and isinstance(part.get("content"), str):
                texts.append(part["content"])
            elif ptype == "tool_call":
                calls.append({"id": part.get("id"), "name": part.get("name"), "arguments": part.get("arguments")})
            elif ptype == "tool_call_response":
                responses.append(part.get("response", part.get("result")))
        out.append({
            "role": msg.get("role"),
            "text": "\n".join(texts),
            "tool_calls": calls,
            "finish_reason": msg.get("finish_reason"),
            "responses": responses,
        })
    return out


def _legacy_genai_messages(value: Any) -> list[dict[str, Any]]:
    out = []
    for msg in as_list(value):
        if not isinstance(msg, dict):
            continue
        calls = []
        for c in as_list(msg.get("tool_calls")):
            if isinstance(c, dict):
                fn = c.get("function") if isinstance(c.get("function"), dict) else {}
                calls.append({"id": c.get("id"), "name": c.get("name", fn.get("name")),
                              "arguments": c.get("arguments", fn.get("arguments"))})
        out.append({"role": msg.get("role"), "text": msg.get("content") if isinstance(msg.get("content"), str) else "",
                    "tool_calls": calls, "finish_reason": msg.get("finish_reason")})
    return out


#: The Vercel AI SDK's (npm ``ai``, ``experimental_telemetry``) provider calls, by ``ai.operationId``: one per
#: step of its generate/stream loop. Only they record what the model was offered (``ai.prompt.tools``,
#: ``ai.prompt.messages``) and what it answered (``ai.response.toolCalls``); the outer ``ai.generateText``
#: repeats the last step's text, and reading it too would count each answer twice.
VERCEL_MODEL_CALLS = frozenset({"ai.generateText.doGenerate", "ai.streamText.doStream",
                                "ai.generateObject.doGenerate", "ai.streamObject.doStream"})


def is_vercel_model_call(span: SpanRow) -> bool:
    """Whether the span is one of the Vercel AI SDK's provider calls (see :data:`VERCEL_MODEL_CALLS`)."""
    return dig(attrs(span), "ai", "operationId") in VERCEL_MODEL_CALLS


def _vercel_tool_call(part: Mapping[str, Any]) -> dict[str, Any]:
    """A Vercel tool call as a GenAI ``tool_call`` part: its ``input`` is JSON text from a generate step, an
    object from a stream step (``args`` before ``ai`` 5)."""
    return {"type": "tool_call", "id": part.get("toolCallId"), "name": part.get("toolName"),
            "arguments": part.get("input", part.get("args"))}


def vercel_output_messages(span: SpanRow) -> list[dict[str, Any]]:
    """The answer of a Vercel provider call as GenAI output messages (``{role, parts, finish_reason}``):
    ``ai.response.text`` (or ``.object``, generateObject's JSON) and the tool calls the model asked for in
    ``ai.response.toolCalls``, which the SDK validates against the tool's schema before running it: a call it
    refused never became an ``ai.toolCall`` span. Empty for any other span."""
    response = dig(attrs(span), "ai", "response") if is_vercel_model_call(span) else None
    if not isinstance(response, dict):
        return []
    parts = [_vercel_tool_call(c) for c in as_list(response.get("toolCalls")) if isinstance(c, dict)]
    text = response.get("text") or response.get("object")
    if isinstance(text, str):
        parts.insert(0, {"type": "text", "content": text})
    reason = response.get("finishReason")
    return [{"role": "assistant", "parts": parts, "finish_reason": reason}] if parts else []


def vercel_input_messages(span: SpanRow) -> list[dict[str, Any]]:
    """The messages a Vercel provider call sent (``ai.prompt.messages``: ``{role, content}``, content a text or
    parts: ``text``, ``tool-call``, ``tool-result`` with its ``output: {type, value}``, ``result`` before 5) as
    GenAI input messages (``{role, parts}``). Empty for any other span."""
    if not is_vercel_model_call(span):
        return []
    out = []
    for msg in as_list(dig(attrs(span), "ai", "prompt", "messages")):
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        parts: list[dict[str, Any]] = [{"type": "text", "content": content}] if isinstance(content, str) else []
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            ptype = part.get("type")
            if ptype == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "content": part["text"]})
            elif ptype == "tool-call":
                parts.append(_vercel_tool_call(part))
            elif ptype == "tool-result":
                result = part.get("output", part.get("result"))
                parts.append({"type": "tool_call_response", "id": part.get("toolCallId"),
                              "response": result.get("value") if isinstance(result, dict) and "type" in result
                              else result})
        out.append({"role": msg.get("role"), "parts": parts})
    return out


def output_messages(span: SpanRow) -> list[dict[str, Any]]:
    """The model's output messages as {role, text, tool_calls: [{id, name, arguments}], finish_reason}.

    Read from ``llm.output_messages`` (flattened or JSON), ``gen_ai.output.messages``,
    the legacy ``gen_ai.completion`` keys, the Vercel AI SDK's ``ai.response.*`` and ``llm.choices``, in that
    order; the first source present wins.
    """
    a = attrs(span)
    msgs = _oi_messages(dig(a, "llm", "output_messages"))
    if msgs:
        return msgs
    msgs = _genai_messages(dig(a, "gen_ai", "output", "messages"))
    if msgs:
        return msgs
    msgs = _legacy_genai_messages(dig(a, "gen_ai", "completion"))
    if msgs:
        return msgs
    msgs = _genai_messages(vercel_output_messages(span))
    if msgs:
        return msgs
    choices = as_list(dig(a, "llm", "choices"))
    return [{"role": "assistant", "text": t, "tool_calls": [], "finish_reason": None}
            for t in (dig(c, "completion", "text") for c in choices) if isinstance(t, str)]


def input_messages(span: SpanRow) -> list[dict[str, Any]]:
    a = attrs(span)
    msgs = _oi_messages(dig(a, "llm", "input_messages"))
    if msgs:
        return msgs
    msgs = _genai_messages(dig(a, "gen_ai", "input", "messages"))
    if msgs:
        return msgs
    msgs = _genai_messages(vercel_input_messages(span))
    if msgs:
        return msgs
    return _legacy_genai_messages(dig(a, "gen_ai", "prompt"))


def _provider_response(span: SpanRow) -> Any:
    value = span.get("output_value")
    if isinstance(value, str) and value[:1] == "{":
        ok, parsed = try_json(value)
        if ok and isinstance(parsed, dict):
            return parsed
    return None


def response_text(resp: Any, refusals: bool = True) -> str | None:
    """The answer text inside a provider's or framework's raw response; None when ``resp`` has no known shape.

    Shapes: OpenAI chat (``choices[].message.content``, else its ``refusal``) and completions
    (``choices[].text``), Anthropic ``content`` blocks, OpenAI Responses ``output`` items,
    LangChain's ``LLMResult`` (``generations``) and a dumped LangChain AI message
    (``{"type": "ai", "data": {...}}``), and a GenAI ``output.messages`` list. With ``refusals``
    False an OpenAI refusal (said instead of the answer, not as it) is left out.
    """
    found: list[str] = []
    if isinstance(resp, list):
        if resp and all(isinstance(m, dict) and "parts" in m for m in resp):
            messages = _genai_messages(resp)
        elif resp and all(_is_legacy_genai_output(m) for m in resp):
            messages = _legacy_genai_messages([m.get("message", m) for m in resp])
        else:
            return None
        return "\n".join(m["text"] for m in messages
                         if m["text"] and m.get("role") in (None, "assistant", "model", "ai")) or ""
    if not isinstance(resp, dict):
        return None
    if "choices" in resp:
        for choice in as_list(resp.get("choices")):
            message = dig(choice, "message")
            text = _message_text(message, refusals) if isinstance(message, dict) else dig(choice, "text")
            if isinstance(text, str) and text:
                found.append(text)
    elif isinstance(resp.get("content"), list):
        for block in resp["content"]:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                found.append(block["text"])
    elif isinstance(resp.get("output"), list) and "object" in resp:
        for item in resp["output"]:
            for part in as_list(dig(item, "content")) if dig(item, "type") == "message" else []:
                text = dig(part, "text") if dig(part, "type") == "output_text" else refusals and dig(part, "refusal")
                if isinstance(text, str) and text:
                    found.append(text)
    elif "generations" in resp:
        for gen in as_list(dig(resp, "generations", 0)):
            text = _message_text(dig(gen, "message", "kwargs"), refusals) or dig(gen, "text")
            if isinstance(text, str) and text:
                found.append(text)
    elif resp.get("type") in ("ai", "AIMessage", "AIMessageChunk") and isinstance(resp.get("data"), dict):
        found.append(_message_text(resp["data"], refusals))
    elif (said := _langchain_message(resp)) is not None and said[0] == "ai":
        found.append(_message_text(said[1], refusals))
    elif isinstance(resp.get("messages"), list) and resp["messages"]:
        return _conversation_answer(resp["messages"], refusals)
    else:
        return None
    return "\n".join(t for t in found if t)


#: LangChain message classes by the role they speak for, as ``Serializable.toJSON()`` names them in ``id``.
_LANGCHAIN_MESSAGE_ROLES = {"AIMessage": "ai", "AIMessageChunk": "ai", "HumanMessage": "human",
                            "HumanMessageChunk": "human", "SystemMessage": "system", "ToolMessage": "tool",
                            "ToolMessageChunk": "tool", "FunctionMessage": "tool", "ChatMessage": "chat"}
_MESSAGE_ROLES = {"assistant": "ai", "ai": "ai", "user": "human", "human": "human", "system": "system",
                  "developer": "system", "tool": "tool", "function": "tool"}


def _conversation_answer(messages: list[Any], refusals: bool) -> str | None:
    """The answer a LangGraph run's final state ``{"messages": [...]}`` ends with: its last AI message's
    text ("" when the conversation ends on the user's turn or an AI message that only called tools);
    None when an item is not a message (then the state is no conversation)."""
    said = [_langchain_message(m) for m in messages]
    roles = [m[0] for m in said if m is not None]
    if len(roles) < len(said) or "ai" not in roles or roles[-1] == "human":
        return None if len(roles) < len(said) else ""
    last_ai = [m[1] for m in said if m is not None and m[0] == "ai"][-1]
    return _message_text(last_ai, refusals)


def tool_message_content(value: Any) -> Any:
    """What a tool returned, when its recorded output is the LangChain ``ToolMessage`` wrapping it; else ``value``.

    @arizeai/openinference-instrumentation-langchain 4.1 (LangChain.js) records a tool run's output as
    ``{"output": {"lc": 1, "type": "constructor", "id": [..., "ToolMessage"], "kwargs": {"content": ...}}}``:
    the tool's result is the message's content, not the serialized message around it.
    """
    inner = value.get("output") if isinstance(value, dict) and value.keys() == {"output"} else value
    said = _langchain_message(inner)
    if said is None or said[0] != "tool":
        return value
    return said[1].get("content")


def langchain_tool_call_id(span: SpanRow) -> str | None:
    """The id of the model's tool call a TOOL span answered, from the LangChain ``ToolMessage`` it returned."""
    ok, value = try_json(span.get("output_value")) if isinstance(span.get("output_value"), str) else (False, None)
    inner = value.get("output") if ok and isinstance(value, dict) and value.keys() == {"output"} else value
    said = _langchain_message(inner) if ok else None
    call_id = said[1].get("tool_call_id") if said is not None and said[0] == "tool" else None
    return call_id if isinstance(call_id, str) and call_id else None


def langchain_requested_arguments(span: SpanRow) -> dict[str, Any]:
    """Tool call id -> the arguments the model asked for, from the AIMessage in a LangChain LLMResult
    (``generations[0][i].message.kwargs.tool_calls``: ``{id, name, args}``, the arguments parsed)."""
    resp = _provider_response(span)
    found: dict[str, Any] = {}
    if resp is None or "generations" not in resp:
        return found
    for gen in as_list(dig(resp, "generations", 0)):
        for call in as_list(dig(gen, "message", "kwargs", "tool_calls")):
            if isinstance(call, dict) and isinstance(call.get("id"), str) and isinstance(call.get("args"), dict):
                found[call["id"]] = call["args"]
    return found


def _langchain_message(message: Any) -> tuple[str, dict[str, Any]] | None:
    """(role, fields) of one message in a LangChain / LangGraph output, else None.

    LangChain.js (``@langchain/core`` 1.x, traced by @arizeai/openinference-instrumentation-langchain 4.1)
    records a chain's or a LangGraph graph's output as the serialized messages,
    ``{"lc": 1, "type": "constructor", "id": [..., "AIMessage"], "kwargs": {"content": ...}}``, a graph's
    as its state ``{"messages": [...]}``; the state's input messages may be plain ``{role, content}``
    dicts, and LangChain Python dumps ``{"type": "ai", "content": ...}``. Read as the whole JSON, the
    final answer of such a run was the serialized conversation, the user's own words included.
    """
    if not isinstance(message, dict):
        return None
    cls = message.get("id")
    if message.get("type") == "constructor" and isinstance(cls, list) and cls and isinstance(message.get("kwargs"), dict):
        role = _LANGCHAIN_MESSAGE_ROLES.get(str(cls[-1]))
        return (role, message["kwargs"]) if role else None
    said_by = message.get("role", message.get("type"))
    if isinstance(said_by, str) and said_by in _MESSAGE_ROLES and "content" in message:
        return _MESSAGE_ROLES[said_by], message
    return None


def _is_legacy_genai_output(item: Any) -> bool:
    """An item of what decode stores as a deprecated GenAI span's output: a ``gen_ai.completion`` message
    (``{role, content}``) or a ``gen_ai.choice`` event's body (``{index, finish_reason, message}``)."""
    if not isinstance(item, dict):
        return False
    if isinstance(item.get("message"), dict):
        return "index" in item or "finish_reason" in item
    return isinstance(item.get("role"), str) and ("content" in item or "tool_calls" in item)


def _message_text(message: Any, refusals: bool = True) -> str:
    """An OpenAI / LangChain message's text content, else the refusal it carries instead."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    if isinstance(content, list):
        text = "\n".join(p["text"] for p in content
                         if isinstance(p, dict) and p.get("type") in ("text", None) and isinstance(p.get("text"), str))
        if text:
            return text
    refusal = message.get("refusal", dig(message, "additional_kwargs", "refusal")) if refusals else None
    return refusal if isinstance(refusal, str) else ""


def assistant_text(span: SpanRow, refusals: bool = True) -> str:
    """The text the model answered on this span (output messages, else the provider response or plain output).

    With ``refusals`` False an OpenAI refusal recorded only in the raw response is not taken for the answer.
    """
    texts = [m["text"] for m in output_messages(span) if m["text"] and m.get("role") in (None, "assistant", "model", "ai")]
    if texts:
        return "\n".join(texts)
    resp = _provider_response(span)
    if resp is not None:
        return response_text(resp, refusals) or ""
    value = span.get("output_value")
    if isinstance(value, str) and not declares_json(span.get("output_mime_type")) and value[:1] not in ("{", "["):
        return value
    return ""


def _legacy_function_calls(span: SpanRow) -> list[dict[str, Any]]:
    """Calls recorded one per ``gen_ai.completion.<i>.function_call.{name, arguments}``, as LiteLLM's own
    OpenTelemetry callback (``litellm.callbacks = ["otel"]``, 1.110) writes each tool call of the answer."""
    calls = []
    for item in as_list(dig(attrs(span), "gen_ai", "completion")):
        fn = dig(item, "function_call")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            calls.append({"id": None, "name": fn["name"], "arguments": fn.get("arguments")})
    return calls


def requested_tool_calls(span: SpanRow) -> list[dict[str, Any]]:
    """Tool calls the model asked for on this span: {id, name, arguments} (arguments raw: string or object)."""
    calls = [c for m in output_messages(span) for c in m["tool_calls"]] or _legacy_function_calls(span)
    resp = _provider_response(span)
    if resp is not None and "generations" in resp:
        # LangChain parses the model's calls itself: arguments that are not JSON are left out of
        # its tool_calls (so out of llm.output_messages) and kept in the AIMessage's invalid_tool_calls.
        for gen in as_list(dig(resp, "generations", 0)):
            for bad in as_list(dig(gen, "message", "kwargs", "invalid_tool_calls")):
                if isinstance(bad, dict):
                    calls.append({"id": bad.get("id"), "name": bad.get("name"), "arguments": bad.get("args")})
    if calls or resp is None:
        return calls
    for choice in as_list(resp.get("choices")):
        for item in as_list(dig(choice, "message", "tool_calls")):
            call = _oi_tool_call(item)
            if call:
                calls.append(call)
    for block in as_list(resp.get("content")):
        if isinstance(block, dict) and block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "name": block.get("name"), "arguments": block.get("input")})
    return calls


# ---------------------------------------------------------------- finish reasons

_HAYSTACK_META_REASON = re.compile(r"'finish_reason': '([A-Za-z_]+)'")


def haystack_reply_finish_reason(output_value: Any) -> str | None:
    """The first reply's finish reason in a Haystack chat generator's output, else None.

    openinference-instrumentation-haystack (0.1.46, haystack-ai 3.4) records the replies only as the repr of each
    ``ChatMessage`` (``{"replies": ["ChatMessage(..., _meta={..., 'finish_reason': 'length', ...})"]}``) and sets
    no finish-reason key: a reply cut at its token limit was never a truncation. The reason is read from the
    last ``_meta={`` of the repr, after the reply's own text, which may quote anything.
    """
    if not isinstance(output_value, str) or '"replies"' not in output_value or "_meta={" not in output_value:
        return None
    ok, parsed = try_json(output_value)
    replies = parsed.get("replies") if ok and isinstance(parsed, dict) else None
    first = replies[0] if isinstance(replies, list) and replies else None
    if not isinstance(first, str) or not first.startswith("ChatMessage("):
        return None
    found = _HAYSTACK_META_REASON.search(first, first.rfind("_meta={"))
    return found.group(1) if found else None


def finish_reasons(span: SpanRow) -> list[tuple[str, str]]:
    """Every finish reason the span reports, as (where, value), raw values kept."""
    a = attrs(span)
    found: list[tuple[str, str]] = []

    def add(where: str, value: Any) -> None:
        if isinstance(value, str) and value and (where, value) not in found:
            found.append((where, value))

    add("llm_finish_reason", span.get("llm_finish_reason"))
    add("llm.finish_reason", dig(a, "llm", "finish_reason"))
    reasons = loose(dig(a, "gen_ai", "response", "finish_reasons"))
    for r in reasons if isinstance(reasons, list) else [reasons]:
        add("gen_ai.response.finish_reasons", r)
    for m in _oi_messages(dig(a, "llm", "output_messages")):
        add("llm.output_messages.message.finish_reason", m["finish_reason"])
    for m in _genai_messages(dig(a, "gen_ai", "output", "messages")):
        add("gen_ai.output.messages.finish_reason", m["finish_reason"])
    for m in _legacy_genai_messages(dig(a, "gen_ai", "completion")):
        add("gen_ai.completion.finish_reason", m["finish_reason"])
    for event in as_list(span.get("events")):  # the deprecated gen_ai.choice event: {index, finish_reason, message}
        if isinstance(event, dict) and event.get("name") == "gen_ai.choice":
            add("gen_ai.choice event", dig(event, "attributes", "finish_reason"))
    add("output.value replies ChatMessage _meta", haystack_reply_finish_reason(span.get("output_value")))
    resp = _provider_response(span)
    if resp is not None:
        for choice in as_list(resp.get("choices")):
            add("output.value choices.finish_reason", dig(choice, "finish_reason"))
        for cand in as_list(resp.get("candidates")):
            add("output.value candidates.finishReason", dig(cand, "finishReason"))
        add("output.value stop_reason", resp.get("stop_reason"))
        add("output.value incomplete_details.reason", dig(resp, "incomplete_details", "reason"))
    return found


# ---------------------------------------------------------------- tools


_HAYSTACK_TOOL_REPR = re.compile(r"\w*Tool\(name='((?:[^'\\]|\\.)*)'")


def _balanced_braces(text: str, start: int) -> str | None:
    """The ``{...}`` opening at ``start``, its quoted strings skipped, else None."""
    depth, quote, i = 0, "", start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1
    return None


def _haystack_tool_repr(text: str) -> tuple[str, Any] | None:
    """(name, parameters schema) from the repr of a Haystack ``Tool`` (``ComponentTool``...), else None.

    openinference-instrumentation-haystack (0.1.46) records a chat generator's tools only in its
    ``input.value`` as ``"tools": ["Tool(name='get_order', description=..., parameters={...}, function=<...>)"]``:
    without them a refusal although tools were offered, or a call breaking a tool's schema, went unseen.
    """
    found = _HAYSTACK_TOOL_REPR.match(text)
    if not found:
        return None
    params: Any = None
    at = text.find(", parameters={", found.end())
    literal = _balanced_braces(text, at + len(", parameters=")) if at >= 0 else None
    if literal is not None:
        try:
            params = ast.literal_eval(literal)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            params = None
    return found.group(1), params if isinstance(params, dict) else None


_BARE_TOOL_NAME = re.compile(r"[A-Za-z_][\w.-]{0,127}")


def _tool_definition(raw: Any) -> tuple[str, Any] | None:
    """(name, parameters schema) from OpenAI-nested, GenAI-flat, Anthropic or Vercel AI SDK tool definitions
    (``inputSchema``; ``parameters`` before ``ai`` 5), a Haystack tool's repr, or a bare tool name with no
    schema, as Mastra (@mastra/otel-exporter 1.4) lists its agent's tools in ``gen_ai.tool.definitions``
    (``["get_weather"]``)."""
    d = loose(raw)
    if isinstance(d, str) and _BARE_TOOL_NAME.fullmatch(d):
        return d, None
    if isinstance(d, str):
        return _haystack_tool_repr(d)
    if not isinstance(d, dict):
        return None
    fn = d.get("function") if isinstance(d.get("function"), dict) else d
    name = fn.get("name")
    if not isinstance(name, str):
        return None
    params = fn.get("parameters", fn.get("input_schema", fn.get("parametersJsonSchema", fn.get("inputSchema"))))
    params = loose(params)
    return name, params


def _openllmetry_function(item: Any) -> Any:
    """A tool an OpenLLMetry model call declared in its older form, ``llm.request.functions.<i>.name`` /
    ``.description`` / ``.parameters``, which @traceloop/instrumentation-together (0.27, Node) writes as
    ``.arguments``: the parameters JSON schema either way (JSON text)."""
    if isinstance(item, dict) and "parameters" not in item and "arguments" in item:
        return {**item, "parameters": item["arguments"]}
    return item


def declared_tools(span: SpanRow) -> dict[str, Any]:
    """Tools this LLM span offered the model: name -> parameters JSON schema (None when not declared)."""
    a = attrs(span)
    found: dict[str, Any] = {}
    sources = [dig(item, "tool", "json_schema") if isinstance(item, dict) and "tool" in item else item
               for item in as_list(dig(a, "llm", "tools"))]
    sources += as_list(dig(a, "gen_ai", "tool", "definitions"))
    sources += vercel_tool_definitions(span)
    # OpenLLMetry's and LiteLLM's own callback: llm.request.functions.<i>.{name, description, parameters}
    sources += [_openllmetry_function(item) for item in as_list(dig(a, "llm", "request", "functions"))]
    if not sources:
        request = _provider_request(span)
        if request is not None:
            sources = as_list(request.get("tools"))
    for raw in sources:
        entry = _tool_definition(raw)
        if entry and entry[0] not in found:
            found[entry[0]] = entry[1]
    return found


def vercel_tool_definitions(span: SpanRow) -> list[Any]:
    """The tools a Vercel AI SDK provider call offered the model: ``ai.prompt.tools``, one JSON text per tool
    (``{type: "function", name, description, inputSchema}``)."""
    return as_list(dig(attrs(span), "ai", "prompt", "tools")) if is_vercel_model_call(span) else []


def _provider_request(span: SpanRow) -> dict[str, Any] | None:
    value = span.get("input_value")
    if isinstance(value, str) and value[:1] == "{":
        ok, parsed = try_json(value)
        if ok and isinstance(parsed, dict):
            return parsed
    return None


def tool_name(span: SpanRow) -> str | None:
    a = attrs(span)
    for value in (span.get("tool_name"), dig(a, "tool", "name"), dig(a, "gen_ai", "tool", "name")):
        if isinstance(value, str) and value:
            return value
    name = span.get("name")
    if isinstance(name, str) and name.startswith("execute_tool "):
        return name[len("execute_tool "):]
    return None


def _looks_like_schema(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "object" and isinstance(value.get("properties"), dict)


def _looks_like_parameter_specs(value: Any) -> bool:
    """A map of parameter name -> its spec (``{"type": ..., "description": ...}``), as smolagents declares a tool's
    ``inputs`` and openinference-instrumentation-smolagents records them in ``tool.parameters``: a definition,
    not the call's arguments (read as arguments, ``order_id`` "was not of type string" on every clean call)."""
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(spec, dict) and "type" in spec and "description" in spec for spec in value.values()))


def tool_span_schema(span: SpanRow) -> Any:
    """The parameters schema a TOOL span declares in ``tool.parameters`` (None when it holds arguments or nothing).

    OpenInference defines ``tool.parameters`` as the tool's parameter definition, and
    openinference-instrumentation-openai-agents records the function tool's JSON schema there, on a model
    call (Chat Completions) that itself declares no ``llm.tools``: it is the trace's only declaration.
    """
    value = loose(dig(attrs(span), "tool", "parameters"))
    return value if _looks_like_schema(value) else None


def tool_span_arguments(span: SpanRow) -> tuple[str, Any, bool] | None:
    """(source, raw arguments, declared_json) of a TOOL span, or None when none were recorded.

    Sources in order: ``gen_ai.tool.call.arguments``, ``tool.parameters`` (when it
    holds arguments rather than a parameter schema), ``input.value``.
    ``declared_json`` says the source is JSON by contract, so text that does not
    parse is a finding rather than a plain-text input. Arguments OpenInference hid
    (``__REDACTED__``) are present but unknown: None, as if none were recorded.
    """
    a = attrs(span)
    value = dig(a, "gen_ai", "tool", "call", "arguments")
    if value is not None:
        return None if is_hidden(value) else callback_arguments("gen_ai.tool.call.arguments", value, True)
    value = dig(a, "tool", "parameters")
    if value is not None and not _looks_like_schema(loose(value)) and not _looks_like_parameter_specs(loose(value)):
        return None if is_hidden(value) else ("tool.parameters", value, True)
    value = span.get("input_value")
    if value is not None:
        mime = span.get("input_mime_type")
        declared = declares_json(mime) or (mime is None and _meant_as_json_object(value))
        return None if is_hidden(value) else callback_arguments("input.value", value, declared)
    return None


def _meant_as_json_object(value: Any) -> bool:
    """An ``input.value`` with no mime type that opens an object but is neither JSON nor a Python literal.

    The arguments of a TOOL span are JSON (an object) by contract, so ``{"order_id": 5`` is bad JSON
    whether or not the producer declared the type; plain text (a search query) is not judged, nor is
    LangChain's Python repr of the arguments (``{'query': 'x'}``).
    """
    if not isinstance(value, str) or not value.lstrip().startswith("{"):
        return False
    if try_json(value)[0]:
        return True  # parsed once here, remembered for the rule that reads it next
    try:
        ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return True
    return False


def plain_text_holds_arguments(parsed: Any) -> bool:
    """Whether an undeclared ``input.value`` that parsed as JSON is the tool's arguments (an object).

    openinference-instrumentation-langchain records a one-argument tool's input as that argument's value
    alone, with no mime type: ``lookup_order(order_id="12")`` is ``input.value = "12"``, which parses as
    the JSON number 12 and broke every object schema. Such plain text is not judged.
    """
    return isinstance(parsed, dict)


def is_hidden(value: Any) -> bool:
    """True for a value OpenInference hid on purpose (``OPENINFERENCE_HIDE_*``): present, but unknown."""
    return isinstance(value, str) and value.strip() == HIDDEN


def callback_arguments(source: str, value: Any, declared_json: bool) -> tuple[str, Any, bool]:
    """(source, arguments, declared_json), looking inside LangChain's tool-callback envelope.

    OpenLLMetry's LangChain instrumentation (0.62) records the whole ``on_tool_start`` call as the
    arguments: ``{"input_str": <repr of the arguments>, "tags", "metadata", "inputs": {...},
    "kwargs"}``. The arguments are ``inputs``; without it ``input_str`` is a Python repr, not JSON.
    openinference-instrumentation-llama-index (4.6) records the bound call ``FunctionTool.acall(**kwargs)``:
    ``{"kwargs": {"order_id": "42"}}``, or with ``"args": []`` (smolagents' instrumentation too); the
    arguments are ``kwargs``.
    """
    bound = _bound_call_kwargs(value)
    if bound is not None:
        return f"{source} kwargs", bound, True
    if not (isinstance(value, str) and '"input_str"' in value) and not (isinstance(value, dict) and "input_str" in value):
        return source, value, declared_json
    envelope = loose(value)
    if not isinstance(envelope, dict) or "input_str" not in envelope:
        return source, value, declared_json
    inputs = envelope.get("inputs")
    if isinstance(inputs, dict):
        return f"{source} inputs", inputs, True
    return f"{source} input_str", envelope.get("input_str"), False


def _bound_call_kwargs(value: Any) -> dict[str, Any] | None:
    """The keyword arguments of a recorded ``{"args": [], "kwargs": {...}}`` call, else None (positional
    arguments cannot be matched to the schema's names: such a call is taken as it is).
    openinference-instrumentation-smolagents adds the tool's ``sanitize_inputs_outputs`` flag to it."""
    if not (isinstance(value, dict) or (isinstance(value, str) and '"kwargs"' in value)):
        return None
    call = loose(value)
    if not (isinstance(call, dict) and "kwargs" in call and set(call) <= {"args", "kwargs", "sanitize_inputs_outputs"}):
        return None
    kwargs, args = call.get("kwargs"), call.get("args", [])
    return kwargs if isinstance(kwargs, dict) and args == [] else None


def canonical_arguments(value: Any) -> str | None:
    """A stable text form of tool arguments (sorted-key JSON when they parse); None when absent."""
    if value is None:
        return None
    ok, parsed = try_json(value)
    if ok:
        try:
            return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        except (ValueError, TypeError, RecursionError):
            pass
    return str(value).strip()


# ---------------------------------------------------------------- retrieval


def documents(span: SpanRow) -> list[dict[str, Any]] | None:
    """Documents a RETRIEVER/RERANKER span returned as {id, score}; None when the span records none at all."""
    a = attrs(span)
    present = False
    docs: list[dict[str, Any]] = []
    oi_sources = [dig(a, "retrieval", "documents")]
    if span_kind(span) == "RERANKER":
        oi_sources.append(dig(a, "reranker", "output_documents"))
    for source in oi_sources:
        if source is None:
            continue
        present = True
        for item in as_list(source):
            doc = item.get("document") if isinstance(item, dict) and isinstance(item.get("document"), dict) else item
            if isinstance(doc, dict):
                docs.append({"id": doc.get("id"), "score": doc.get("score")})
            elif item is not None:
                docs.append({"id": None, "score": None})
    fill_document_ids(span, docs)
    genai = dig(a, "gen_ai", "retrieval", "documents")
    if genai is not None:
        present = True
        for doc in as_list(genai):
            if isinstance(doc, dict):
                docs.append({"id": doc.get("id"), "score": doc.get("score")})
    return docs if present or docs else None


def fill_document_ids(span: SpanRow, docs: list[dict[str, Any]]) -> None:
    """Give the OpenInference documents of a RETRIEVER span that carry no id the ``id`` its ``output.value``
    lists for the document at the same place (in place; only when both list the same number of documents).

    @arizeai/openinference-instrumentation-langchain 4.1 (LangChain.js) records a Document's content and
    metadata but not its ``id`` (``new Document({id: "doc-1", ...})``); the id is only in the output,
    ``{"documents": [{"pageContent", "metadata", "id"}]}``. Without it an answer citing ``[doc-1]`` cited
    a document "not retrieved", a hallucination on a clean run.
    """
    if not docs or all(d.get("id") is not None for d in docs):
        return
    value = span.get("output_value")
    if not isinstance(value, str) or value.lstrip()[:1] not in ("{", "["):
        return
    ok, listed = try_json(value)
    if ok and isinstance(listed, dict):
        listed = listed.get("documents")
    if not ok or not isinstance(listed, list) or len(listed) != len(docs):
        return
    for doc, item in zip(docs, listed):
        if doc.get("id") is None and isinstance(item, dict) and isinstance(item.get("id"), (str, int)):
            doc["id"] = item["id"]


def retrieval_outcome(span: SpanRow) -> str:
    """'found', 'empty' or 'unknown' for a RETRIEVER span.

    OpenInference cannot flatten an empty list, so a retriever with no
    ``retrieval.documents`` keys returned nothing, unless its ``output.value`` lists
    what came back as JSON (then what is unknown). A GenAI retrieval span that
    lacks ``gen_ai.retrieval.documents`` did not capture content (it is opt-in):
    unknown, not empty.
    """
    docs = documents(span)
    if docs:
        return "found"
    if docs is not None:
        return "empty"
    a = attrs(span)
    genai_only = isinstance(dig(a, "gen_ai"), dict) and dig(a, "openinference") is None  # its kind came from gen_ai.*
    out = span.get("output_value")
    if isinstance(out, str) and _empty_output(out):
        return "empty"
    if genai_only or is_hidden(out):  # OpenInference hid the output: what came back is unknown
        return "unknown"
    if isinstance(out, str) and _listed_output(out):
        return "unknown"  # its output lists what came back, just not as documents
    return "empty"


def _empty_output(out: str) -> bool:
    """``""``, ``[]``, ``{}``, ``null`` or an object of empty lists (``{"documents": []}``)."""
    text = out.strip()
    if text in ("", "[]", "{}", "null"):
        return True
    if text[:1] != "{":
        return False
    ok, parsed = try_json(text)
    return ok and isinstance(parsed, dict) and all(v in ([], None) for v in parsed.values())


def _listed_output(out: str) -> bool:
    """A JSON list with items, or an object holding one (``{"documents": [...]}``)."""
    text = out.strip()
    if text[:1] not in ("[", "{"):
        return False
    ok, parsed = try_json(text)
    if not ok:
        return False
    return bool(parsed) if isinstance(parsed, list) else isinstance(parsed, dict) and any(
        isinstance(v, list) and v for v in parsed.values())


def walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_strings(v)
