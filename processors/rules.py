"""The built-in detector rules: one small, deterministic function per finding, over one settled trace.

A rule takes a :class:`TraceView` and the :class:`RuleSettings` and returns
:class:`Finding`s. It never mutates the trace, never reads anything but the
trace, and returns findings in span order, so judging the same trace twice
gives the same findings. Severity and blast radius are not decided here: the
processor assigns them from config (per mode, per tool).

The rule table is :data:`BUILTIN_DETECTORS` (detector name -> failure mode and
one-sentence definition); the functions' docstrings repeat that sentence.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema
import orjson

from tracesieve.processors.base import SpanRow
from tracesieve.processors.spanview import (
    HIDDEN, PLACEHOLDER, as_list, assistant_text, attrs, canonical_arguments, clip, declared_tools, declares_json, dig,
    documents, duration_ms, exception_events, failed, finish_reasons, input_messages, is_collector_truncated,
    is_error, is_hidden, loose, output_messages, plain_text_holds_arguments, requested_tool_calls, response_text,
    is_vercel_model_call, retrieval_outcome, span_kind, tool_name,
    tool_span_arguments, tool_span_schema, try_json, walk_strings,
)


@dataclasses.dataclass(frozen=True)
class Finding:
    """What a rule saw, before severity and blast radius are assigned."""

    span_id: str
    detector: str
    failure_mode: str
    message: str
    evidence: dict[str, Any]
    tool: str | None = None  # the tool whose configured blast radius applies, if any


@dataclasses.dataclass(frozen=True)
class RuleSettings:
    """The knobs the built-in rules read (built by the processor from config)."""

    latency_ms: Mapping[str, float]
    retrieval_min_score: float | None
    citation_pattern: re.Pattern[str]
    refusal_phrases: tuple[str, ...]
    max_repeats: int
    max_steps: int
    feedback_score_threshold: float
    tool_classes: Mapping[str, str]


#: Tools an agent framework calls to give its final answer: what they return is the answer, not a tool result.
ANSWER_TOOLS = frozenset({"final_answer"})


#: The instrumentation scope of openinference-instrumentation-autogen-agentchat's spans (its module's name).
_AUTOGEN_SCOPE = "openinference.instrumentation.autogen"


class TraceView:
    """One trace's spans with the lookups the rules share (built once per trace, read-only)."""

    def __init__(self, trace_id: str, spans: Sequence[SpanRow]) -> None:
        self.trace_id = trace_id
        self.spans = list(spans)
        self.by_id: dict[str, SpanRow] = {s["span_id"]: s for s in self.spans if s.get("span_id")}
        self.children: dict[str, list[SpanRow]] = {}
        roots = []
        for s in self.spans:
            parent = s.get("parent_span_id")
            if parent and parent in self.by_id and parent != s.get("span_id"):
                self.children.setdefault(parent, []).append(s)
            else:
                roots.append(s)
        self.root: SpanRow = roots[0] if roots else self.spans[0]
        self._kinds: list[str] | None = None
        self._finish_reasons: dict[int, list[tuple[str, str]]] = {}

    @property
    def root_id(self) -> str:
        return str(self.root["span_id"])

    def of_kind(self, *kinds: str) -> list[SpanRow]:
        if self._kinds is None:
            self._kinds = [span_kind(s) for s in self.spans]
        return [s for s, kind in zip(self.spans, self._kinds) if kind in kinds]

    def finish_reasons(self, span: SpanRow) -> list[tuple[str, str]]:
        """spanview.finish_reasons of one of this trace's spans, read once: three rules ask for them."""
        key = id(span)  # the view holds its spans, so an id is not reused while it lives
        if key not in self._finish_reasons:
            self._finish_reasons[key] = finish_reasons(span)
        return self._finish_reasons[key]

    def descendants(self, span_id: str) -> list[SpanRow]:
        out, stack, seen = [], list(self.children.get(span_id, ())), {span_id}
        while stack:
            s = stack.pop()
            if s["span_id"] in seen:
                continue
            seen.add(s["span_id"])
            out.append(s)
            stack.extend(self.children.get(s["span_id"], ()))
        return out

    def ancestors(self, span: SpanRow) -> list[SpanRow]:
        """The span's parent, its parent's parent, ... up to the root (a cycle of parent ids ends the walk)."""
        out, seen = [], {span["span_id"]}
        parent = self.by_id.get(str(span.get("parent_span_id") or ""))
        while parent is not None and parent["span_id"] not in seen:
            seen.add(parent["span_id"])
            out.append(parent)
            parent = self.by_id.get(str(parent.get("parent_span_id") or ""))
        return out

    @functools.cached_property
    def tool_schemas(self) -> dict[str, Any]:
        """Tool name -> declared parameters schema, from every LLM span of the trace (first declaration wins),
        else from the TOOL spans that declare their own (``tool.parameters`` holding a schema)."""
        found: dict[str, Any] = {}
        for s in self.spans:
            for name, schema in declared_tools(s).items():
                found.setdefault(name, schema)
        for s in self.of_kind("TOOL"):
            name = tool_name(s)
            if name and found.get(name) is None:  # parsed only when no model call declared the tool
                schema = tool_span_schema(s)
                if schema is not None:
                    found[name] = schema
        return found

    @functools.cached_property
    def tool_results_reported_failed(self) -> set[tuple[str, str]]:
        """(tool name, result text) of every tool result a model call was handed as failed.

        AutoGen AgentChat's instrumentor (openinference-instrumentation-autogen-agentchat 0.1.22) sets a tool's
        span OK before it learns the call failed, and OpenTelemetry keeps an OK status: the span says only what the
        tool returned (its error text), while the next model call gets it as
        ``llm.input_messages.<i>.function.<j>`` = ``{"name", "content", "call_id", "is_error": true}``.
        """
        found: set[tuple[str, str]] = set()
        for s in self.of_kind("LLM"):
            if not str(s.get("scope_name") or "").startswith(_AUTOGEN_SCOPE):
                continue  # only AutoGen's model calls carry these messages: the others' are not read at all
            for message in as_list(dig(attrs(s), "llm", "input_messages")):
                for item in as_list(dig(message, "function")):
                    result = loose(item)
                    if isinstance(result, dict) and result.get("is_error") is True \
                            and isinstance(result.get("name"), str) and isinstance(result.get("content"), str):
                        found.add((result["name"], result["content"]))
        return found

    @functools.cached_property
    def tools_available(self) -> bool:
        return bool(self.tool_schemas) or bool(self.of_kind("TOOL"))

    @functools.cached_property
    def retrieved_ids(self) -> set[str]:
        ids: set[str] = set()
        for s in self.of_kind("RETRIEVER", "RERANKER"):
            for d in documents(s) or []:
                if d.get("id") is not None:
                    ids.add(str(d["id"]).strip().lower())
        return ids

    @functools.cached_property
    def context_text(self) -> str:
        """Text the model was given from outside: tool results (spans and tool-role messages), the
        metadata of retrieved documents (LangChain's instrumentors record a Document's id only there), and
        the output of a retriever that recorded no documents. Not the output of an answer tool: smolagents'
        ``final_answer`` returns the agent's own answer, and an id it cites was thereby always "known"."""
        parts = [s["output_value"] for s in self.of_kind("TOOL")
                 if isinstance(s.get("output_value"), str) and tool_name(s) not in ANSWER_TOOLS]
        for s in self.of_kind("RETRIEVER", "RERANKER"):
            for item in as_list(dig(attrs(s), "retrieval", "documents")):
                parts.extend(walk_strings(dig(item, "document", "metadata")))
            if documents(s) is None and isinstance(s.get("output_value"), str):
                parts.append(s["output_value"])  # no documents recorded: what it returned is in its output
        for s in self.of_kind("LLM"):
            for m in input_messages(s):
                if m.get("role") in ("tool", "function"):
                    parts.append(m["text"])
                    parts.extend(walk_strings(m.get("responses")))
        return "\n".join(parts)

    @functools.cached_property
    def final_answer(self) -> tuple[SpanRow, str] | None:
        """The last LLM text answer of the trace (by end time), else the root span's output."""
        best: tuple[SpanRow, str] | None = None
        for s in self.of_kind("LLM"):
            text = assistant_text(s).strip()
            if text and (best is None or _end_key(s) >= _end_key(best[0])):
                best = (s, text)
        if best:
            return best
        out = root_answer(self.root)
        return (self.root, out) if out else None


def root_answer(root: SpanRow, raw: bool = True) -> str | None:
    """The root span's answer: its output read down to the text when it is a model response or GenAI output
    messages (an ``invoke_agent`` span stores its ``gen_ai.output.messages`` there); else, with ``raw``, the
    output as it is. Without ``raw``, None for JSON that holds no answer: its keys are no words said."""
    out = root.get("output_value")
    if not isinstance(out, str) or not out.strip():
        return None
    if out.lstrip()[:1] in ("{", "["):
        ok, value = try_json(out)
        text = response_text(value) if ok else None
        if text:
            return text
        return out if raw or not ok else None
    return out


def _ts(value: Any) -> float:
    try:
        return float(value.timestamp())
    except (AttributeError, TypeError, ValueError, OverflowError):
        return 0.0


def _end_key(span: SpanRow) -> float:
    return _ts(span.get("end_time") or span.get("start_time"))


Rule = Callable[[TraceView, RuleSettings], list[Finding]]


# ==================================================================== tool_invocation


def tool_error(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """A TOOL span ended with status ERROR or recorded an exception event (even if a later retry succeeded)."""
    found = []
    tools = view.of_kind("TOOL")
    reported = view.tool_results_reported_failed

    def tool_failed(s: SpanRow) -> bool:
        return failed(s) or (tool_name(s) or "", str(s.get("output_value") or "")) in reported

    for i, s in enumerate(tools):
        if not tool_failed(s):
            continue
        name = tool_name(s)
        key = _tool_key(s)
        retry = next((t for t in tools[i + 1:] if key and _tool_key(t) == key and not tool_failed(t)), None)
        exc = exception_events(s)
        error_type = dig(attrs(s), "error", "type")
        reason = s.get("status_message") or _exception_text(exc) or error_type
        if not failed(s):
            reason = f"its result was handed to the model as an error: {s.get('output_value')}"
        if error_type and error_type != "_OTHER" and reason and str(error_type) not in str(reason):
            reason = f"{error_type}: {reason}"
        found.append(Finding(
            s["span_id"], "tool_error", "tool_invocation",
            f"tool {name or s.get('name')!s} failed" + (f": {clip(str(reason), 160)}" if reason else "")
            + (" (a retry succeeded)" if retry else ""),
            {"tool": name, "status_code": s.get("status_code"), "status_message": clip(s.get("status_message"), 500),
             "error_type": error_type, "exceptions": exc,
             "arguments": clip((tool_span_arguments(s) or ("", None, False))[1], 1000),
             "retried_successfully": retry is not None, "retry_span_id": retry["span_id"] if retry else None},
            tool=key or None,
        ))
    return found


def _tool_key(span: SpanRow) -> str:
    """Which tool a TOOL span ran: its tool name, else its span name, which OpenInference instrumentors give the
    tool. Without it, every span lacking ``tool.name`` was the same tool (None), and none was ``send_email``."""
    return tool_name(span) or str(span.get("name") or "").strip()


def _exception_text(exc: Sequence[Mapping[str, Any]]) -> str | None:
    """The first exception as a reviewer reads it, ``KeyError: 'C-3'``: its message alone may not say what broke."""
    if not exc:
        return None
    kind, text = exc[0].get("type"), exc[0].get("message")
    return f"{kind}: {text}" if kind and text else (text or kind or None)


# ==================================================================== tool_argument


_PLACEHOLDER_SENSITIVE = frozenset({"pattern", "format", "minLength", "maxLength", "enum", "const"})


_VALIDATORS: dict[str, Any] = {}
_VALIDATOR_CACHE_SIZE = 4096


def _validator_for(schema: Mapping[str, Any]) -> Any:
    """A checked validator per distinct schema, cached: agents declare the same few tools on every call,
    and checking a schema against its meta-schema costs far more than validating arguments."""
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode("utf-8")  # 14x json.dumps
    except (TypeError, orjson.JSONEncodeError):
        try:
            key = json.dumps(schema, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return None
    if key in _VALIDATORS:
        return _VALIDATORS[key]
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        validator: Any = cls(schema)
    except (jsonschema.SchemaError, jsonschema.exceptions.UnknownType, TypeError, ValueError, RecursionError):
        validator = None
    if len(_VALIDATORS) >= _VALIDATOR_CACHE_SIZE:
        _VALIDATORS.clear()
    _VALIDATORS[key] = validator
    return validator


def _schema_errors(schema: Any, instance: Any) -> list[dict[str, Any]]:
    """Violations of ``schema`` by ``instance``; empty when it conforms or the schema itself is unusable.

    A string holding a PII placeholder (``<EMAIL>``) is not held against
    pattern/format/length/enum keywords, nor one that is only a placeholder against ``type``: the
    sanitizer put it there, not the model.
    """
    if not isinstance(schema, dict):
        return []
    validator = _validator_for(schema)
    if validator is None:
        return []
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    except (jsonschema.SchemaError, jsonschema.exceptions.UnknownType, TypeError, ValueError, RecursionError):
        return []
    out = []
    for e in errors:
        if e.validator in _PLACEHOLDER_SENSITIVE and isinstance(e.instance, str) and PLACEHOLDER.search(e.instance):
            continue
        if e.validator == "type" and isinstance(e.instance, str) and PLACEHOLDER.fullmatch(e.instance):
            continue  # a number the sanitizer replaced ({"phone": 4155550132} -> {"phone": "<PHONE>"})
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        out.append({"path": path, "validator": str(e.validator), "message": clip(e.message, 300)})
    return out[:5]


def _check_arguments(name: str | None, raw: Any, schema: Any, declared_json: bool) -> tuple[str, dict[str, Any]] | None:
    """(detector, evidence) when arguments are unparseable or break the schema; None when fine or unknowable."""
    if is_hidden(raw):
        return None
    if isinstance(raw, str):
        if not raw.strip():
            raw = "{}"  # providers send "" for a call without arguments
        ok, parsed = try_json(raw)
        if not ok:
            if not declared_json or is_collector_truncated(raw):
                return None
            return "tool_args_json", {"tool": name, "arguments": clip(raw), "error": parsed}
        if not declared_json and not plain_text_holds_arguments(parsed):
            return None
    else:
        parsed = raw
    errors = _schema_errors(schema, parsed)
    if errors:
        return "tool_schema", {"tool": name, "arguments": clip(json.dumps(parsed, ensure_ascii=False, default=str)),
                               "schema": schema, "errors": errors}
    return None


def tool_arguments(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """Tool-call arguments (requested by an LLM or received by a TOOL span) are not valid JSON or break the tool's declared schema."""
    schemas = view.tool_schemas
    found: list[Finding] = []
    flagged: set[tuple[str | None, str | None]] = set()
    # LLM-requested calls: one finding per (span, detector), every bad call listed.
    for s in view.of_kind("LLM", "AGENT", "CHAIN"):
        per: dict[str, list[dict[str, Any]]] = {}
        for call in requested_tool_calls(s):
            name = call.get("name")
            result = _check_arguments(name, call.get("arguments"), schemas.get(name) if name else None, True)
            if result:
                det, ev = result
                ev["tool_call_id"] = call.get("id")
                per.setdefault(det, []).append(ev)
                flagged.add((name, canonical_arguments(call.get("arguments"))))
        for det, calls in per.items():
            found.append(_args_finding(s["span_id"], det, calls, "requested"))
    # TOOL spans: skip a call already flagged where the model asked for it.
    for s in view.of_kind("TOOL"):
        args = tool_span_arguments(s)
        if args is None:
            continue
        source, raw, declared_json = args
        name = tool_name(s)
        key = _tool_key(s) or None  # tool.name, else the span name: which tool's schema and blast radius apply
        if (key, canonical_arguments(raw)) in flagged:
            continue
        result = _check_arguments(name, raw, schemas.get(key) if key else None, declared_json) or _refused_arguments(s)
        if result:
            det, ev = result
            ev["source"] = source
            finding = _args_finding(s["span_id"], det, [ev], "received", s.get("name"))
            found.append(dataclasses.replace(finding, tool=key))
    return found


#: What Mastra's tool (@mastra/core 1.71) returns when the arguments break its zod ``inputSchema``, instead of
#: running: ``{"error": true, "message": "Tool input validation failed for get_weather. Please fix ...",
#: "validationErrors": {...}}``, the TOOL span ending OK. No span declares that schema.
_TOOL_INPUT_REFUSED = re.compile(r"^Tool input validation failed\b")


def _refused_arguments(span: SpanRow) -> tuple[str, dict[str, Any]] | None:
    """("tool_schema", evidence) when a tool answered that the call's arguments broke its input schema."""
    out = span.get("output_value")
    if not isinstance(out, str) or not out.startswith("{") or "Tool input validation failed" not in out[:200]:
        return None
    ok, parsed = try_json(out)
    message = parsed.get("message") if ok and isinstance(parsed, dict) and parsed.get("error") is True else None
    if not isinstance(message, str) or not _TOOL_INPUT_REFUSED.search(message):
        return None
    problems = [line[2:] for line in message.splitlines() if line.startswith("- ")] or [message.splitlines()[0]]
    return "tool_schema", {"tool": tool_name(span), "arguments": clip((tool_span_arguments(span) or ("", None, False))[1], 1000),
                           "errors": [{"path": "$", "message": clip(p, 300)} for p in problems],
                           "declared_by": "the tool's answer"}


def _args_finding(span_id: str, detector: str, calls: list[dict[str, Any]], how: str,
                  span_name: Any = None) -> Finding:
    first = calls[0]
    tool = first.get("tool")
    label = f"tool {tool}" if tool else f"span {span_name}" if span_name else "an unnamed tool"  # not "tool None"
    if detector == "tool_args_json":
        msg = f"arguments {how} for {label} are not valid JSON ({first['error']})"
    else:
        err = first["errors"][0]
        msg = f"arguments {how} for {label} break its schema at {err['path']}: {err['message']}"
    if len(calls) > 1:
        msg += f" (+{len(calls) - 1} more call(s))"
    evidence: dict[str, Any] = dict(first) if len(calls) == 1 else {"calls": calls}
    return Finding(span_id, detector, "tool_argument", msg, evidence, tool=tool)


# ==================================================================== retrieval_miss


def retrieval(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """A RETRIEVER span returned no documents, or every returned score is under ``retrieval_min_score``."""
    found = []
    retrievers = view.of_kind("RETRIEVER")
    outcomes = {s["span_id"]: retrieval_outcome(s) for s in retrievers}
    for s in retrievers:
        outcome = outcomes[s["span_id"]]
        query = clip(s.get("input_value") or dig(attrs(s), "gen_ai", "retrieval", "query", "text"), 500)
        if outcome == "empty" and any(outcomes.get(d["span_id"]) == "empty" for d in view.descendants(s["span_id"])):
            # One retrieval recorded twice (llama-index's `retrieve` around its `_retrieve`, both
            # RETRIEVER spans): reported once, on the innermost span, which did the search.
            continue
        if outcome == "empty":
            found.append(Finding(
                s["span_id"], "empty_retrieval", "retrieval_miss",
                f"retriever {s.get('name')} returned no documents" + (" (it errored)" if is_error(s) else ""),
                {"query": query, "documents": 0, "status_code": s.get("status_code"),
                 "status_message": clip(s.get("status_message"), 300)},
            ))
        elif outcome == "found" and cfg.retrieval_min_score is not None:
            docs = documents(s) or []
            scores = [d["score"] for d in docs if isinstance(d.get("score"), (int, float)) and not isinstance(d.get("score"), bool)]
            if scores and len(scores) == len(docs) and max(scores) < cfg.retrieval_min_score:
                found.append(Finding(
                    s["span_id"], "low_score_retrieval", "retrieval_miss",
                    f"retriever {s.get('name')} returned {len(docs)} document(s), best score {max(scores):g} "
                    f"under the floor {cfg.retrieval_min_score:g}",
                    {"query": query, "scores": scores[:20], "ids": [d.get("id") for d in docs][:20],
                     "min_score": cfg.retrieval_min_score},
                ))
    return found


# ==================================================================== hallucination


_ID_PREFIX = re.compile(r"^(?:doc|document|source|src)[-_:#]?", re.IGNORECASE)


_BRACKETS = "[](){}<>"


def _cited_ids(pattern: re.Pattern[str], text: str) -> list[str]:
    ids: list[str] = []
    for m in pattern.finditer(text):
        group = m.group(1) if pattern.groups else m.group(0)
        for part in re.split(r"\s*[,;]\s*", group or ""):
            part = part.strip() if pattern.groups else part.strip().strip(_BRACKETS).strip()  # "[KB-1]" cites KB-1
            if part and part not in ids:
                ids.append(part)
    return ids


def _known(view: TraceView, cited: str) -> bool:
    key = cited.lower()
    if key in view.retrieved_ids or _ID_PREFIX.sub("", key) in view.retrieved_ids:
        return True
    return re.search(r"(?<![\w-])" + re.escape(cited) + r"(?![\w-])", view.context_text, re.IGNORECASE) is not None


def uncited_id(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """The answer cites a document id that no retriever, reranker or tool result of the trace returned."""
    found = []
    reported: set[str] = set()
    carriers = [(s, assistant_text(s)) for s in view.of_kind("LLM")]
    root_text = root_answer(view.root) if span_kind(view.root) != "LLM" else None
    if root_text:
        carriers.append((view.root, root_text))
    for s, text in carriers:
        missing = [c for c in _cited_ids(cfg.citation_pattern, text) if not _known(view, c) and c not in reported]
        if not missing:
            continue
        reported.update(missing)
        found.append(Finding(
            s["span_id"], "uncited_id", "hallucination",
            f"answer cites {', '.join(missing[:5])} but no such document was retrieved in this trace",
            {"missing_ids": missing, "retrieved_ids": sorted(view.retrieved_ids)[:50],
             "answer": clip(text, 1000)},
        ))
    return found


_NO_ANSWER = (
    "i don't know", "i do not know", "couldn't find", "could not find", "can't find", "cannot find",
    "no information", "no relevant", "not sure", "unable to find", "didn't find", "did not find",
    "no results", "no documents", "nothing relevant", "don't have information", "do not have information",
    "don't have enough information", "do not have enough information",
    # the same said otherwise: "I wasn't able to find ...", "I could not locate ...", "... but found nothing"
    "wasn't able to find", "was not able to find", "weren't able to find", "were not able to find",
    "couldn't locate", "could not locate", "can't locate", "cannot locate", "unable to locate",
    "found nothing", "no matching results", "no matching documents", "no matching articles", "no matching records",
)
#: "I don't have any information / details on that": the agent saying it found nothing, in the words the
#: fixed phrases above miss (the agent itself is the subject: "the Z9 doesn't have data export" is a fact).
_NO_ANSWER_PATTERN = re.compile(
    r"\b(?:i|we)\s+(?:don't|do not|didn't|did not)\s+have\s+(?:any\s+|enough\s+|specific\s+|the\s+|more\s+)?"
    r"(?:information|info|details|data|documentation|records?)\b")
#: An answer states facts when its statements (its questions left out) have 8 words, or 5 with a figure:
#: "The warranty lasts 24 months and covers water damage." is an answer the retrieval never backed.
_FACT_WORDS, _FIGURE_FACT_WORDS = 8, 5
_FIGURE = re.compile(r"[0-9]")
_SENTENCE = re.compile(r"[^.!?]*[.!?]+|[^.!?]+$")


def _states_facts(text: str) -> bool:
    """The answer asserts something. Its questions do not count: asking the user which product they mean,
    however long the question, is what an agent should do when its retrieval found nothing."""
    statements = " ".join(s for s in _SENTENCE.findall(text) if not s.rstrip().endswith("?"))
    words = len(statements.split())
    return words >= _FACT_WORDS or (words >= _FIGURE_FACT_WORDS and bool(_FIGURE.search(statements)))


def _normalize(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u2018", "'")


def _states_unbacked_facts(text: str, cfg: RuleSettings) -> bool:
    norm = _normalize(text)
    return (_states_facts(text) and not any(p in norm for p in _NO_ANSWER + cfg.refusal_phrases)
            and not _NO_ANSWER_PATTERN.search(norm))


def _answer_after_empty(span: SpanRow, retriever: SpanRow, text: str) -> Finding:
    return Finding(
        span["span_id"], "answer_after_empty_retrieval", "hallucination",
        f"answered with {len(text.split())} words right after retriever {retriever.get('name')} returned nothing",
        {"retriever_span_id": retriever["span_id"], "query": clip(retriever.get("input_value"), 500),
         "answer": clip(text, 1000)},
    )


def answer_after_empty_retrieval(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """The first LLM answer after an empty retrieval, with no grounding in between, states facts instead of saying it found nothing."""
    found = []
    spans = sorted(view.spans, key=lambda s: _ts(s.get("start_time")))
    for r in view.of_kind("RETRIEVER"):
        if retrieval_outcome(r) != "empty" or r.get("end_time") is None:
            continue
        for s in spans:
            if s is r or _ts(s.get("start_time")) < _ts(r["end_time"]):
                continue
            kind = span_kind(s)
            if kind in ("RETRIEVER", "RERANKER") and retrieval_outcome(s) == "found":
                break
            if kind == "TOOL" and not failed(s) and (s.get("output_value") or "").strip():
                break
            if kind != "LLM":
                continue
            text = assistant_text(s).strip()
            if not text:
                continue  # a tool call, not an answer: keep looking
            if _states_unbacked_facts(text, cfg):
                found.append(_answer_after_empty(s, r, text))
            break
        else:
            # No model call recorded an answer after it (GenAI content captured on the agent span only): the
            # agent's own answer is the one the user got.
            root = view.root
            speaks = root is not r and span_kind(root) in ("AGENT", "CHAIN", "UNKNOWN")
            text = (root_answer(root, raw=False) or "").strip() if speaks else ""
            if text and _ts(root.get("end_time")) >= _ts(r["end_time"]) and _states_unbacked_facts(text, cfg):
                found.append(_answer_after_empty(root, r, text))
    # Two empty retrievals before one answer are one finding on that answer.
    merged: dict[str, Finding] = {}
    for f in found:
        merged.setdefault(f.span_id, f)
    return list(merged.values())


# ==================================================================== format_violation


_TRUNCATING = frozenset({"length", "max_tokens", "max_output_tokens", "model_length", "max_tokens_reached"})


def _truncated(view: TraceView, span: SpanRow) -> bool:
    return any(v.lower() in _TRUNCATING for _, v in view.finish_reasons(span))


_MODEL_CLASS_REPR = re.compile(r"<class '[\w.]+'>")


def _declared_json(span: SpanRow) -> tuple[str, Any] | None:
    """(where, schema or None) when this LLM call asked the model for JSON output."""
    a = attrs(span)
    params = loose(dig(a, "llm", "invocation_parameters"))
    rf = loose(dig(params, "response_format")) if isinstance(params, dict) else None
    where = "llm.invocation_parameters.response_format"
    if rf is None and isinstance(params, dict):  # the Responses API asks through text.format
        rf, where = loose(dig(params, "text", "format")), "llm.invocation_parameters.text.format"
    if isinstance(rf, dict):
        rtype = rf.get("type")
        if rtype == "json_object":
            return where, None
        if rtype == "json_schema":  # chat: {json_schema: {name, schema}}; Responses: {name, schema}
            js = rf.get("json_schema") if isinstance(rf.get("json_schema"), dict) else rf
            return where, loose(js.get("schema"))
    elif rf in ("json_object", "json"):
        return where, None
    elif isinstance(rf, str) and _MODEL_CLASS_REPR.fullmatch(rf):
        # openinference-instrumentation-litellm (0.1.51) records `response_format=Order` (a pydantic model, which
        # LiteLLM sends as a json_schema) as the class's repr: JSON was required, its schema is unknown
        return where, None
    # OpenLLMetry (opentelemetry-instrumentation-openai 0.62): the response_format when it names no
    # schema ({"type": "json_object"}), else the JSON schema itself.
    structured = loose(dig(a, "gen_ai", "request", "structured_output_schema"))
    if isinstance(structured, dict):
        where = "gen_ai.request.structured_output_schema"
        if structured.get("type") == "json_object":
            return where, None
        if structured.get("type") == "json_schema":
            js = structured.get("json_schema") if isinstance(structured.get("json_schema"), dict) else structured
            return where, loose(js.get("schema"))
        return where, structured
    out_type = dig(a, "gen_ai", "output", "type")
    legacy = dig(a, "gen_ai", "openai", "request", "response_format")
    if out_type == "json" or legacy in ("json_object", "json_schema"):
        return "gen_ai.output.type", None
    return None


#: The Vercel AI SDK's calls that ask the model for JSON (``generateObject`` / ``streamObject``): the outer span
#: records the schema the answer must follow (``ai.schema``), its provider-call steps the answer.
_VERCEL_OBJECT_CALLS = frozenset({"ai.generateObject", "ai.streamObject"})


def _vercel_object_call(view: TraceView, step: SpanRow) -> SpanRow | None:
    """The ``generateObject`` / ``streamObject`` span a Vercel provider-call step belongs to, else None."""
    if not is_vercel_model_call(step):
        return None
    parent = view.by_id.get(str(step.get("parent_span_id") or ""))
    return parent if parent is not None and dig(attrs(parent), "ai", "operationId") in _VERCEL_OBJECT_CALLS else None


def _vercel_declared_json(view: TraceView, step: SpanRow) -> tuple[str, Any] | None:
    """(where, schema or None) when the step answers a Vercel ``generateObject`` / ``streamObject``: JSON always,
    and for ``ai.settings.output`` object (the default) the JSON schema in ``ai.schema``. (An array or enum
    output wraps its schema in an object the SDK does not record: only whether it parses is judged.)"""
    call = _vercel_object_call(view, step)
    if call is None:
        return None
    output = dig(attrs(call), "ai", "settings", "output")
    schema = loose(dig(attrs(call), "ai", "schema"))
    return "ai.schema", schema if isinstance(schema, dict) and output in (None, "object") else None


_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def _strip_fence(text: str) -> str:
    m = _FENCE.match(text.strip())
    return m.group(1) if m else text


#: Python: pydantic's ValidationError, json's JSONDecodeError; Node: JSON.parse's SyntaxError ("is not valid
#: JSON"), and the ZodError (zod 4: ``$ZodError``) openai-node's ``zodResponseFormat`` parse raises when the
#: answer is JSON that breaks the schema, as LangChain.js ``withStructuredOutput`` runs it inside the call.
_PARSE_FAILURE = re.compile(r"ValidationError|JSONDecodeError|Invalid JSON|json_invalid|is not valid JSON|ZodError")


def _client_parse_failure(span: SpanRow) -> str | None:
    """The error of an LLM call that failed because the client could not parse the JSON it asked for.

    ``client.chat.completions.parse(response_format=Model)`` raises inside the instrumented call when
    the answer is not the model's JSON, so the span errors (pydantic ValidationError) with no output.
    """
    hit = _llm_client_error(span, _PARSE_FAILURE)
    return hit if hit is not None and _declared_json(span) is not None else None


def _failure_texts(span: SpanRow) -> list[str]:
    """What a failed span says of its failure: its status message, then each exception event as ``Type: message``."""
    return [str(span.get("status_message") or "")] + [f"{e['type']}: {e['message']}" for e in exception_events(span)]


def _failure_saying(span: SpanRow, pattern: re.Pattern[str]) -> str | None:
    """The first of the span's failure texts (see :func:`_failure_texts`) that ``pattern`` finds, else None."""
    return next((t for t in _failure_texts(span) if pattern.search(t)), None)


def _llm_client_error(span: SpanRow, pattern: re.Pattern[str]) -> str | None:
    """The first error text of a failed LLM span (status message, then its exception events) that
    ``pattern`` finds: how a failure the client raised inside the traced call is told apart."""
    if span_kind(span) != "LLM" or not (is_error(span) or exception_events(span)):
        return None
    return _failure_saying(span, pattern)


#: LangChain's output parsers (``withStructuredOutput`` / ``with_structured_output``, ``JsonOutputParser``, ...)
#: failing on the model's answer: OutputParserException, whose JS message opens "Failed to parse. Text:" and
#: whose Python one "Failed to parse X from completion" / "Invalid json output". OpenAI Agents validating an
#: agent's ``output_type``: the span error "Invalid JSON provided" on its agent's turn (as
#: opentelemetry-instrumentation-openai-agents-v2 0.1.0 sends it: "Invalid JSON provided: {}"), and the
#: ModelBehaviorError "Invalid JSON when parsing ..." the run raises.
_OUTPUT_PARSER_FAILURE = re.compile(
    r"OutputParserException|OUTPUT_PARSING_FAILURE|^Failed to parse\b|^Invalid json output"
    r"|^Invalid JSON provided\b|ModelBehaviorError: Invalid JSON when parsing", re.MULTILINE)


def _output_parser_failure(span: SpanRow) -> str | None:
    """The error of a CHAIN span (an output parser) or AGENT span (OpenAI Agents' output_type) that failed
    because the model's answer did not parse or broke the structure asked for: the answer's format, not a
    provider or framework error."""
    if span_kind(span) not in ("CHAIN", "AGENT") or not failed(span):
        return None
    return _failure_saying(span, _OUTPUT_PARSER_FAILURE)


#: Mastra (@mastra/core 1.71) failing an agent run whose answer did not parse as, or broke, the ``structuredOutput``
#: schema it asked for: ``error.type`` STRUCTURED_OUTPUT_SCHEMA_VALIDATION_FAILED on ``invoke_agent``.
_STRUCTURED_OUTPUT_FAILURE = re.compile(r"STRUCTURED_OUTPUT_SCHEMA_VALIDATION_FAILED|^Structured output validation failed")


def _structured_output_failure(span: SpanRow) -> str | None:
    """The error of an AGENT span that failed because the model's answer was not the structured output asked
    for: the answer's format, not a provider error."""
    if span_kind(span) != "AGENT" or not failed(span):
        return None
    error_type = dig(attrs(span), "error", "type")
    texts = _failure_texts(span)
    if isinstance(error_type, str) and _STRUCTURED_OUTPUT_FAILURE.search(error_type):
        return next((t for t in texts if t), error_type)
    return next((t for t in texts if _STRUCTURED_OUTPUT_FAILURE.search(t)), None)


def _bad_requested_tool_call(view: TraceView) -> bool:
    """Some model call of the trace asked for a tool call whose arguments break the tool's schema (tool_argument)."""
    for s in view.of_kind("LLM"):
        for call in requested_tool_calls(s):
            name = call.get("name")
            if _check_arguments(name, call.get("arguments"), view.tool_schemas.get(name) if name else None, True):
                return True
    return False


_ADAPTER_PARSE_FAILURE = re.compile(r"AdapterParseError")


def _adapter_parse_failure(span: SpanRow) -> str | None:
    """The error of a DSPy adapter (``ChatAdapter.__call__``, ``JSONAdapter.__call__``: CHAIN spans) that could
    not parse the model's answer into the signature's output fields, else None.

    It is the model's answer breaking the format it was asked for, not a failed call: DSPy's ChatAdapter falls
    back to its JSONAdapter on it, and a fallback that parsed makes a clean run.
    """
    if span_kind(span) != "CHAIN" or not failed(span):
        return None
    return _failure_saying(span, _ADAPTER_PARSE_FAILURE)


def _unparsed_dspy_answers(view: TraceView) -> list[Finding]:
    """One format_violation per DSPy prediction that failed on its adapters' parse errors, on the model call whose
    answer the last adapter tried could not parse (unless that call asked for JSON: judged as such above)."""
    found = []
    for parent_id, children in view.children.items():
        if not failed(view.by_id[parent_id]):
            continue  # an adapter fell back to another that parsed the answer
        failing = [(c, e) for c in children for e in [_adapter_parse_failure(c)] if e is not None]
        if not failing:
            continue
        adapter, error = failing[-1]
        calls = [d for d in view.descendants(adapter["span_id"]) if span_kind(d) == "LLM"]
        call = max(calls, key=lambda d: str(d.get("start_time") or "")) if calls else adapter
        if call is not adapter and _declared_json(call) is not None:
            continue
        found.append(Finding(
            call["span_id"], "json_output", "format_violation",
            f"{adapter.get('name')} could not parse the model's answer into the output fields it asked for: "
            f"{clip(error, 200)}",
            {"declared_by": adapter.get("name"), "error": clip(error, 1000),
             "output": clip(assistant_text(call), 1000) if call is not adapter else None},
        ))
    return found


def json_output(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """Output declared as JSON (output mime type, response_format, gen_ai.output.type json) does not parse or breaks its declared schema."""
    found = _unparsed_dspy_answers(view)
    for s in view.spans:
        declared = (_declared_json(s) or _vercel_declared_json(view, s)) if span_kind(s) == "LLM" else None
        if declared is not None:
            if _truncated(view, s):
                continue  # cut off by the token limit: that is truncation, reported there
            where, schema = declared
            parse_error = _client_parse_failure(s)
            if parse_error is not None:
                found.append(Finding(
                    s["span_id"], "json_output", "format_violation",
                    f"model was asked for JSON ({where}) and the client could not parse the answer: "
                    f"{clip(parse_error, 200)}",
                    {"declared_by": where, "error": clip(parse_error, 1000), "schema": schema},
                ))
                continue
            answer = assistant_text(s, refusals=False)  # a refusal said instead of the JSON is no malformed JSON
            texts = [m["text"] for m in output_messages(s) if m["text"]] or ([answer] if answer else [])
            # OpenInference hid it, or the collector cut it at max_value_size: present but unknown
            texts = [t for t in texts if t.strip() != HIDDEN and not is_collector_truncated(t)]
            for text in texts:
                ok, parsed = try_json(_strip_fence(text))
                if not ok:
                    found.append(Finding(
                        s["span_id"], "json_output", "format_violation",
                        f"model was asked for JSON ({where}) but answered text that does not parse: {parsed}",
                        {"declared_by": where, "output": clip(text, 1000), "error": parsed},
                    ))
                    break
                errors = _schema_errors(schema, parsed)
                if errors:
                    found.append(Finding(
                        s["span_id"], "output_schema", "format_violation",
                        f"JSON answer breaks the declared schema at {errors[0]['path']}: {errors[0]['message']}",
                        {"declared_by": where, "output": clip(text, 1000), "schema": schema, "errors": errors},
                    ))
                    break
            continue
        out = s.get("output_value")
        if (declares_json(s.get("output_mime_type")) and isinstance(out, str) and not is_collector_truncated(out)
                and out.strip() != HIDDEN):
            ok, err = try_json(out)
            if not ok:
                found.append(Finding(
                    s["span_id"], "json_output", "format_violation",
                    f"output declared application/json does not parse: {err}",
                    {"declared_by": "output.mime_type", "output": clip(out, 1000), "error": err},
                ))
    parsers = [s for s in view.of_kind("CHAIN", "AGENT") if _output_parser_failure(s) is not None] if not found else []
    if parsers and not _bad_requested_tool_call(view):  # else that finding on the model call is the failure
        for s in parsers:  # the parser itself, not the chains that pass its error up
            error = _output_parser_failure(s)
            inner = {d["span_id"] for d in view.descendants(s["span_id"])}
            if error is not None and not any(p["span_id"] in inner for p in parsers):
                found.append(Finding(
                    s["span_id"], "json_output", "format_violation",
                    f"output parser {s.get('name')} could not parse the model's answer: {clip(error, 200)}",
                    {"declared_by": "output parser", "parser": s.get("name"), "error": clip(error, 1000)},
                ))
                break
    if not found:
        for s in view.of_kind("AGENT"):
            error = _structured_output_failure(s)
            if error is not None:
                found.append(Finding(
                    s["span_id"], "json_output", "format_violation",
                    f"agent {s.get('name')} asked for structured output and could not use the model's answer: "
                    f"{clip(error, 200)}",
                    {"declared_by": "structured output", "error": clip(error, 1000),
                     "output": clip(s.get("output_value"), 1000)},
                ))
                break
    order = {s.get("span_id"): i for i, s in enumerate(view.spans)}
    return sorted(found, key=lambda f: order.get(f.span_id, 0))


# ==================================================================== truncation


_CLIENT_TRUNCATION = re.compile(r"LengthFinishReasonError|length limit was reached|reason='max_output_tokens'")


def _client_truncation(span: SpanRow) -> str | None:
    """The error of an LLM call the client failed because the answer hit the token limit.

    The OpenAI SDK's ``parse()`` raises LengthFinishReasonError on finish reason length, and agent
    frameworks (OpenAI Agents) raise on an incomplete Responses answer (max_output_tokens): the span
    errors and records no finish reason.
    """
    return _llm_client_error(span, _CLIENT_TRUNCATION)


def finish_length(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """A model call stopped on its token limit (finish reason length / max_tokens / MAX_TOKENS / max_output_tokens)."""
    found = []
    for s in view.spans:
        hits = [(w, v) for w, v in view.finish_reasons(s) if v.lower() in _TRUNCATING]
        if hits and any(_truncated(view, d) for d in view.descendants(s["span_id"])):
            # An agent whose answer is its model call's, finish reason and all (util-genai's invoke_agent
            # records the output messages it was given): one cut answer, reported once, on the model call.
            continue
        if not hits:
            error = _client_truncation(s)
            if error is not None:
                found.append(Finding(
                    s["span_id"], "finish_length", "truncation",
                    f"{s.get('llm_model_name') or s.get('name')} stopped at its token limit "
                    f"(the client failed the call: {clip(error, 160)})",
                    {"finish_reasons": [], "error": clip(error, 1000)},
                ))
            continue
        a = attrs(s)
        params = loose(dig(a, "llm", "invocation_parameters"))
        limit = None
        if isinstance(params, dict):
            limit = params.get("max_tokens", params.get("max_completion_tokens", params.get("max_output_tokens")))
        if limit is None:
            limit = dig(a, "gen_ai", "request", "max_tokens")
        found.append(Finding(
            s["span_id"], "finish_length", "truncation",
            f"{s.get('llm_model_name') or s.get('name')} stopped at its token limit (finish reason {hits[0][1]})",
            {"finish_reasons": [{"where": w, "value": v} for w, v in hits],
             "completion_tokens": s.get("llm_token_count_completion")
             or dig(a, "gen_ai", "usage", "output_tokens"), "max_tokens": limit,
             "output_tail": clip(assistant_text(s)[-300:], 300)},
        ))
    return found


# ==================================================================== refusal_overreach


DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = tuple(dict.fromkeys((
    "i can't help with", "i cannot help with", "i can't assist with", "i cannot assist with",
    "i'm unable to help", "i am unable to help", "i'm unable to assist", "i am unable to assist",
    "i'm not able to help", "i am not able to help", "i can't provide", "i cannot provide",
    "i'm unable to provide", "i am unable to provide", "i don't have access to", "i do not have access to",
    "i don't have the ability to", "i do not have the ability to", "as an ai language model",
    "i can't do that", "i cannot do that", "i'm not allowed to", "i am not allowed to",
    "i can't answer", "i cannot answer", "i'm unable to answer", "i am unable to answer",
    "i must decline", "i won't be able to help",
    # the same refusals with another object or none ("I cannot help you with that", "I can't assist."), and
    # other verbs of refusing
    "i can't help", "i cannot help", "i can't assist", "i cannot assist", "i'm not able to assist",
    "i am not able to assist", "i'm not able to provide", "i am not able to provide", "i can't fulfill",
    "i cannot fulfill", "i'm unable to fulfill", "i am unable to fulfill", "i can't comply", "i cannot comply",
    "i'm unable to comply", "i am unable to comply", "i can't share", "i cannot share", "i'm unable to share",
    "i am unable to share", "i won't be able to assist", "as an ai, i can't", "as an ai, i cannot",
    # and every other way of saying it: each refusing subject with each verb ("I'm not able to answer that",
    # "I can not help", "I will not be able to provide that", "I'm unable to do this"), none missed for its wording
    *(f"{who} {verb}"
      for who in ("i can't", "i cannot", "i can not", "i'm unable to", "i am unable to", "i'm not able to",
                  "i am not able to", "i won't be able to", "i will not be able to")
      for verb in ("help", "assist", "provide", "answer", "fulfil", "comply", "share", "discuss", "do that",
                   "do this", "process this request", "process that request", "process your request")),
)))  # each phrase once, in this order (the first that matches is the one a detection names)
_REFUSAL_WINDOW = 400  # refusals lead the answer; a phrase deep inside a long answer is not one


def _declined_by_model(view: TraceView) -> SpanRow | None:
    """The last model call, when the provider reports it refused: finish reason ``refusal`` (Anthropic's
    ``stop_reason: refusal``, its answer often empty, so no phrase to match)."""
    llms = view.of_kind("LLM")
    last = max(llms, key=_end_key) if llms else None
    if last is not None and any(v.lower() == "refusal" for _, v in view.finish_reasons(last)):
        return last
    return None


def refusal(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """The final answer opens with refusal phrasing, or the last model call finished with reason ``refusal``,
    although the agent had tools or retrieved documents to work with."""
    answer = view.final_answer
    span, text = answer if answer is not None else (None, "")
    head = _normalize(text[:_REFUSAL_WINDOW])
    phrase = next((p for p in cfg.refusal_phrases if p in head), None)
    declined = _declined_by_model(view) if phrase is None else None
    if phrase is None and declined is None:
        return []
    tools = sorted(view.tool_schemas) or sorted({tool_name(s) or "?" for s in view.of_kind("TOOL")})
    docs = len(view.retrieved_ids) or sum(len(documents(s) or []) for s in view.of_kind("RETRIEVER"))
    if not tools and not docs:
        return []
    available = f"although {len(tools)} tool(s) and {docs} retrieved document(s) were available"
    if declined is not None:
        return [Finding(
            declined["span_id"], "refusal", "refusal_overreach",
            f"{declined.get('llm_model_name') or declined.get('name')} refused (finish reason refusal) {available}",
            {"finish_reason": "refusal", "answer": clip(assistant_text(declined), 1000), "tools_available": tools[:30],
             "documents_retrieved": docs},
        )]
    assert span is not None
    return [Finding(
        span["span_id"], "refusal", "refusal_overreach", f"answer refuses (\"{phrase}\") {available}",
        {"phrase": phrase, "answer": clip(text, 1000), "tools_available": tools[:30], "documents_retrieved": docs},
    )]


# ==================================================================== latency_breach


def _millis(ms: float) -> str:
    """A duration for a message: ``150.1ms`` under a second, else seconds to the millisecond (``31.25s``)."""
    if ms < 1000:
        return f"{ms:.1f}".rstrip("0").rstrip(".") + "ms"
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"


def slow_span(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """A span took longer than the threshold configured for its kind (``latency_breach``)."""
    found = []
    for s in view.spans:
        kind = span_kind(s)
        limit = cfg.latency_ms.get(kind)
        took = duration_ms(s)
        if limit is None or took is None or took <= limit:
            continue
        found.append(Finding(
            s["span_id"], "slow_span", "latency_breach",
            f"{kind} span {s.get('name')} took {_millis(took)}, over the {_millis(limit)} threshold",
            {"kind": kind, "name": s.get("name"), "duration_ms": took, "threshold_ms": limit,
             "tool": tool_name(s) if kind == "TOOL" else None, "model": s.get("llm_model_name")},
            tool=_tool_key(s) or None if kind == "TOOL" else None,  # a slow send_email is send_email's finding
        ))
    return found


# ==================================================================== loop


def repeated_tool_call(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """The same tool ran with the same arguments ``loop.max_repeats`` times or more; reported on the last repeat."""
    calls: list[tuple[SpanRow, str, str]] = []
    tool_spans = view.of_kind("TOOL")
    if tool_spans:
        for s in tool_spans:
            args = tool_span_arguments(s)
            name = _tool_key(s)
            canon = canonical_arguments(args[1]) if args else None
            if name and canon is not None:
                calls.append((s, name, canon))
    else:  # no TOOL spans recorded: count the calls the model asked for
        for s in view.of_kind("LLM"):
            for c in requested_tool_calls(s):
                canon = canonical_arguments(c.get("arguments") if c.get("arguments") is not None else "{}")
                if c.get("name") and canon is not None and not is_hidden(c.get("arguments")):
                    calls.append((s, c["name"], canon))
    groups: dict[tuple[str, str], list[SpanRow]] = {}
    for s, name, canon in calls:
        groups.setdefault((name, canon), []).append(s)
    found = []
    for (name, canon), spans in groups.items():
        if len(spans) < cfg.max_repeats:
            continue
        last = spans[-1]
        found.append(Finding(
            last["span_id"], "repeated_tool_call", "loop",
            f"tool {name} was called {len(spans)} times with the same arguments",
            {"tool": name, "arguments": clip(canon, 1000), "count": len(spans), "max_repeats": cfg.max_repeats,
             "span_ids": list(dict.fromkeys(s["span_id"] for s in spans))[:50]},
            tool=name,
        ))
    return found


def step_limit(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """The trace made more than ``loop.max_steps`` steps (LLM calls plus tool runs; reported on the root
    span), or the agent framework stopped it at its own step limit (reported on the span that says so)."""
    found = []
    for s in view.spans:
        said = _framework_step_limit(s)
        if said is not None and not any(_framework_step_limit(d) for d in view.descendants(s["span_id"])):
            found.append(Finding(
                s["span_id"], "step_limit", "loop",
                f"the agent framework stopped {span_kind(s)} span {s.get('name')} at its step limit: {clip(said, 160)}",
                {"framework_stop": clip(said, 1000), "llm_calls": len(view.of_kind("LLM")),
                 "tool_runs": len(view.of_kind("TOOL"))},
            ))
    llm = len(view.of_kind("LLM"))
    tools = len(view.of_kind("TOOL"))
    if llm + tools > cfg.max_steps:
        found.append(Finding(
            view.root_id, "step_limit", "loop",
            f"trace took {llm + tools} steps ({llm} LLM calls, {tools} tool runs), over the limit of {cfg.max_steps}",
            {"steps": llm + tools, "llm_calls": llm, "tool_runs": tools, "max_steps": cfg.max_steps},
        ))
    return found


#: How agent frameworks say they stopped a run at their step limit: OpenAI Agents (MaxTurnsExceeded
#: "Max turns (10) exceeded"; its traced span error "Max turns exceeded", which
#: opentelemetry-instrumentation-openai-agents-v2 0.1.0 sends as "Max turns exceeded: {'max_turns': 10}"),
#: LangGraph (GraphRecursionError "Recursion limit of 25 reached without hitting a stop condition"),
#: LangChain's AgentExecutor ("Agent stopped due to iteration limit or time limit.", an answer, not an
#: error), CrewAI / smolagents ("max iterations" / "max steps" reached).
_FRAMEWORK_STEP_LIMIT = re.compile(
    r"MaxTurnsExceeded|Max turns (?:\(\d+\) )?exceeded|GraphRecursionError|Recursion limit of \d+ reached"
    r"|Agent stopped due to (?:max )?iteration limit|(?:Reached|reached|exceeded) (?:the )?max(?:imum)?[ _]"
    r"(?:iterations|steps|turns)|max(?:imum)?[ _](?:iterations|steps|turns) (?:reached|exceeded)")


def _framework_step_limit(span: SpanRow) -> str | None:
    """What an AGENT / CHAIN span's error (or an agent's answer) says about a framework's step limit, if anything."""
    if span_kind(span) not in ("AGENT", "CHAIN"):
        return None
    texts = [str(span.get("status_message") or "")] if is_error(span) else []
    texts += [f"{e['type']}: {e['message']}" for e in exception_events(span)]
    out = span.get("output_value")
    if isinstance(out, str) and "Agent stopped due to" in out[:200]:
        texts.append(out[:200])
    return next((t for t in texts if _FRAMEWORK_STEP_LIMIT.search(t)), None)


# ==================================================================== llm_error


_ERROR_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(p, re.IGNORECASE)) for name, p in (
    ("rate_limit", r"\b429\b|rate.?limit|too many requests|quota|resource.?exhausted"),
    ("timeout", r"time.?out|timed out|deadline.?exceeded|\b408\b|\b504\b"),
    ("auth", r"\b401\b|\b403\b|authenticat|unauthori[sz]ed|permission.?denied|invalid.?api.?key"),
    ("context_length", r"context.?length|maximum context|prompt is too long|too many tokens"),
    ("content_filter", r"content.?filter|content management policy|safety"),
    ("provider_error", r"\b5\d\d\b|overloaded|internal.?server.?error|service.?unavailable|bad.?gateway"
                       r"|apierror|api.?connection|connection (?:error|reset|refused)"),
    ("bad_request", r"\b400\b|bad.?request|invalid.?request|unprocessable|\b422\b"),
))


def classify_error(*texts: Any) -> str:
    """rate_limit | timeout | auth | context_length | content_filter | provider_error | bad_request | other."""
    blob = " ".join(str(t) for t in texts if t)
    return next((name for name, rx in _ERROR_CLASSES if rx.search(blob)), "other")


def _error_facts(span: SpanRow) -> dict[str, Any]:
    exc = exception_events(span)
    error_type = dig(attrs(span), "error", "type")
    texts = [span.get("status_message"), error_type] + [f"{e['type']} {e['message']}" for e in exc]
    return {
        "classification": classify_error(*texts),
        "status_message": clip(span.get("status_message"), 500),
        "error_type": error_type,
        "exceptions": exc,
    }


def _error_types(span: SpanRow) -> set[str]:
    """The exception types a span recorded, its GenAI ``error.type`` among them (GenAI spans often record no
    exception event); the semconv's catch-all ``_OTHER`` names no type."""
    types = {e["type"] for e in exception_events(span) if e["type"]}
    error_type = dig(attrs(span), "error", "type")
    if isinstance(error_type, str) and error_type and error_type != "_OTHER":
        types.add(error_type)
    return types


#: A label before the error a span reports: the exception's type, or the framework's words around the error
#: it passes up. OpenAI Agents (openinference-instrumentation-openai-agents) says ``Error getting response:
#: {'error': '...'}`` on the model call and ``Error in agent run: {'error': '...'}`` on the agent span;
#: smolagents ``AgentGenerationError: Error while generating output: Error code: 429 - {...}`` on the step
#: around the model call's ``RateLimitError: Error code: 429 - {...}``.
_ERROR_LABEL = re.compile(r"^[A-Za-z][\w .()-]{0,60}?:\s+")
_MIN_ERROR_CORE = 12  # shorter than this, a bare text ("failed") says nothing of which failure it is


def _wrapped_error(text: str) -> str | None:
    """The error a framework wrapped in a JSON object, ``{"error": "..."}``: the OpenAI Agents SDK for JS
    (@arizeai/openinference-instrumentation-openai-agents 0.2) says ``Error in agent run: {"error":"ToolCallError:
    Failed to run function tools: Error: ..."}`` on the turn around the tool span's ``Error running tool:
    {"tool_name":"get_weather","error":"Error: ..."}``, its quotes JSON-escaped."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    ok, parsed = try_json(text)
    inner = parsed.get("error") if ok and isinstance(parsed, dict) else None
    return inner.strip() if isinstance(inner, str) else None


def _error_core(message: str) -> str:
    """A status message without the labels before the error it reports, nor the JSON object around it."""
    core = message.strip()
    for _ in range(8):
        stripped = _ERROR_LABEL.sub("", core, count=1)
        if stripped == core:
            stripped = _wrapped_error(core) or core
        if stripped == core or len(stripped) < _MIN_ERROR_CORE:
            break
        core = stripped
    return core


def _same_failure(ancestor: SpanRow, child: SpanRow) -> bool:
    """True when an errored ancestor only re-reports its errored descendant's failure."""
    a_msg = str(ancestor.get("status_message") or "")
    a_types = _error_types(ancestor)
    if not a_msg and not a_types:
        return True
    c_msg = str(child.get("status_message") or "")
    c_types = _error_types(child)
    if a_types & c_types:
        return True
    if not (c_msg and a_msg):
        return False
    if c_msg in a_msg or a_msg in c_msg:
        return True
    a_core, c_core = _error_core(a_msg), _error_core(c_msg)
    return min(len(a_core), len(c_core)) >= _MIN_ERROR_CORE and (c_core in a_core or a_core in c_core)


def _says_why(span: SpanRow) -> bool:
    return bool(span.get("status_message")) or any(e["type"] or e["message"] for e in exception_events(span))


def _reported_by_parent_call(view: TraceView, span: SpanRow) -> bool:
    """A failed LLM span that says nothing of why, directly inside a failed LLM span that does: one call
    recorded twice (anthropic 2.x's own span inside openinference-instrumentation-anthropic's), reported
    once, on the span with the provider's message (it was two llm_error detections of one failure)."""
    parent = view.by_id.get(str(span.get("parent_span_id") or ""))
    return (parent is not None and span_kind(span) == "LLM" and span_kind(parent) == "LLM" and failed(parent)
            and _says_why(parent) and not _says_why(span))


_TOOL_CALL_REFUSED = re.compile(r"ToolCallError|\bargument|input schema", re.IGNORECASE)


def _refused_a_bad_tool_call(view: TraceView, span: SpanRow) -> bool:
    """A step that failed because the model asked for a tool call breaking the tool's schema: smolagents fails
    the step (``AgentToolCallError: Argument order is not in the tool's input schema``) without running the
    tool. The tool_argument finding on the model call is that failure; as an llm_error too it was reported
    twice, once per step the model repeated it."""
    if span_kind(span) == "LLM" or not _TOOL_CALL_REFUSED.search(str(span.get("status_message") or "")):
        return False
    for d in view.descendants(span["span_id"]):
        for call in requested_tool_calls(d):
            name = call.get("name")
            if _check_arguments(name, call.get("arguments"), view.tool_schemas.get(name) if name else None, True):
                return True
    return False


def _vercel_object_rejected(view: TraceView, span: SpanRow, cfg: RuleSettings) -> bool:
    """A Vercel ``generateObject`` / ``streamObject`` that failed because its step's answer did not parse, broke
    ``ai.schema`` or was cut at the token limit (the SDK raises NoObjectGeneratedError on the outer span): the
    format_violation or truncation finding on that step is the failure; as an llm_error too it was reported
    twice, and under the wrong mode."""
    if dig(attrs(span), "ai", "operationId") not in _VERCEL_OBJECT_CALLS:
        return False
    steps = [c for c in view.children.get(span["span_id"], ()) if _vercel_object_call(view, c) is span]
    if not steps:
        return False
    if any(_truncated(view, step) for step in steps):
        return True
    reported = {f.span_id for f in json_output(view, cfg)}
    return any(step["span_id"] in reported for step in steps)


#: Finish reasons that say the provider blocked the answer: OpenAI's ``content_filter`` (the Vercel AI SDK's
#: ``content-filter``), Gemini's SAFETY / PROHIBITED_CONTENT / BLOCKLIST / SPII / IMAGE_SAFETY / RECITATION
#: (opentelemetry-instrumentation-google-genai 1.3b0 sends them lowercased in gen_ai.response.finish_reasons,
#: as is in the output messages).
_CONTENT_FILTER_FINISH = frozenset({
    "content_filter", "safety", "prohibited_content", "blocklist", "spii", "image_safety", "recitation"})


#: How the OpenAI Agents SDK for JS (@openai/agents 0.20, through @arizeai/openinference-instrumentation-openai-agents)
#: fails a run on the model's answer itself, on the turn and agent spans around the model call, and the rule
#: that reports that answer: an ``outputType`` answer that is not its JSON (``ModelBehaviorError: Invalid output
#: type``) and a refusal (``ModelRefusalError``). (An answer cut at ``max_output_tokens`` fails the model call too,
#: ``unsuccessful terminal state "response.incomplete"``: the turn passes that error up, and truncation reports it.)
_AGENT_RUN_REJECTED_ANSWER: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("json_output", re.compile(r"ModelBehaviorError: Invalid output type")),
    ("refusal", re.compile(r"ModelRefusalError|Model refused to produce output")),
)


def _agent_run_rejected_answer(view: TraceView, span: SpanRow, cfg: RuleSettings) -> bool:
    """An AGENT / CHAIN span that failed because the agent framework rejected the model's answer, which a
    format_violation, refusal_overreach or truncation finding on a model call inside it already reports (as an
    llm_error too, one failure was reported twice, the second time under a provider error's mode)."""
    if span_kind(span) not in ("AGENT", "CHAIN"):
        return False
    texts = _failure_texts(span)
    rules = {"json_output": json_output, "refusal": refusal}
    inner = {d["span_id"] for d in view.descendants(span["span_id"])}
    for detector, pattern in _AGENT_RUN_REJECTED_ANSWER:
        if any(pattern.search(t) for t in texts):
            if any(f.span_id in inner for f in rules[detector](view, cfg)):
                return True
    return False


def _abnormal_finish(reason: str) -> str | None:
    """``error`` or ``content_filter`` when a finish reason says the provider stopped the answer abnormally
    (a Gemini answer blocked for SAFETY came back empty with no error and no finding)."""
    normal = reason.lower().replace("-", "_")
    if normal == "error":
        return "error"
    return "content_filter" if normal in _CONTENT_FILTER_FINISH else None


def _failure_reported(span: SpanRow) -> bool:
    """True when a rule reports this failed span's own failure: TOOL (tool_error), LLM / AGENT / CHAIN
    (llm_call_error), a RETRIEVER that returned nothing (empty_retrieval). A failed span of another kind (an
    EMBEDDING call rate-limited, a GUARDRAIL, an HTTP client span, a GenAI retrieval whose documents were not
    captured) is reported by none: an agent failing with it passes up nothing reported, and was silent
    (util-genai's invoke_agent around openai-v2's failed `embeddings` span had no detection at all)."""
    kind = span_kind(span)
    return kind in ("TOOL", "LLM", "AGENT", "CHAIN") or (kind == "RETRIEVER" and retrieval_outcome(span) == "empty")


def _inside_a_failure_that_says_why(view: TraceView, span: SpanRow) -> bool:
    """A span inside a failed span that says why it failed: a model call whose finish reason says it stopped
    abnormally there is that failure, reported on the span with the message. Mastra (@mastra/otel-exporter 1.4)
    records a 429 as the ``chat`` span's finish reason ``error`` (status OK, no message) and the provider's
    message on the failed ``invoke_agent`` span: one rate limit was two llm_error detections."""
    return any(failed(parent) and _says_why(parent) for parent in view.ancestors(span))


#: How the OpenAI Agents SDK says an input guardrail blocked the user's message: the guardrail doing its job,
#: not the agent failing, and replaying that input trips it again. Python openai-agents (0.25.0, through
#: openinference-instrumentation-openai-agents 2.6.0) sets the span error "Guardrail tripwire triggered" with
#: {'guardrail': name} on the turn that ran it (a streamed run adds 'type': 'input_guardrail', on the agent);
#: the JS SDK (@openai/agents 0.20.0) fails the turn, the agent and the workflow with its
#: InputGuardrailTripwireTriggered. An output guardrail's trip (the model's answer blocked) has the same
#: Python message on the agent span, and the JS OutputGuardrailTripwireTriggered: both stay an llm_error, as
#: does a guardrail whose own code raised (GuardrailExecutionError, or its error passed up as is).
_INPUT_GUARDRAIL_TRIPPED = re.compile(r"\bInputGuardrailTripwireTriggered\b")
_PY_GUARDRAIL_TRIPPED = re.compile(r"^Guardrail tripwire triggered: \{'guardrail': .+?(?P<type>, 'type': '\w+')?\}$")


def _input_guardrail_tripped(span: SpanRow) -> bool:
    """True when this AGENT / CHAIN span failed only because an input guardrail blocked the user's message."""
    message = str(span.get("status_message") or "") if is_error(span) else ""
    texts = [message] + [f"{e['type']}: {e['message']}" for e in exception_events(span)]
    if any(_INPUT_GUARDRAIL_TRIPPED.search(t) for t in texts):
        return True
    python = _PY_GUARDRAIL_TRIPPED.match(message)
    if python is None:
        return False
    said = python.group("type")
    return said == ", 'type': 'input_guardrail'" if said else span_kind(span) == "CHAIN"


def llm_call_error(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """An LLM, AGENT or CHAIN span failed (provider error, rate limit, timeout, ...), not merely passing up a descendant's error."""
    found = []
    for s in view.of_kind("LLM", "AGENT", "CHAIN"):
        if failed(s):
            caused_by = [d for d in view.descendants(s["span_id"])
                         if failed(d) and _failure_reported(d) and _same_failure(s, d)]
            if (caused_by or _reported_by_parent_call(view, s) or _client_parse_failure(s) is not None
                    or _adapter_parse_failure(s) is not None or _client_truncation(s) is not None
                    or (span_kind(s) == "LLM" and _truncated(view, s))
                    or _framework_step_limit(s) is not None or _refused_a_bad_tool_call(view, s)
                    or _vercel_object_rejected(view, s, cfg) or _output_parser_failure(s) is not None
                    or _agent_run_rejected_answer(view, s, cfg) or _structured_output_failure(s) is not None
                    or _input_guardrail_tripped(s)):
                continue  # the failing descendant is the finding (here or in tool_error); json_output (also DSPy's);
                # finish_length; step_limit; tool_argument; json_output or finish_length on the object's step;
                # json_output or tool_argument (a parser's failure); the answer an agent run rejected; an input
                # guardrail that blocked the user's message (not a failure at all)
            facts = _error_facts(s)
            found.append(Finding(
                s["span_id"], "llm_call_error", "llm_error",
                f"{span_kind(s)} span {s.get('name')} failed ({facts['classification']})"
                + (f": {clip(str(facts['status_message']), 160)}" if facts["status_message"] else ""),
                {"kind": span_kind(s), "model": s.get("llm_model_name"), "provider": s.get("llm_provider"), **facts},
            ))
            continue
        bad = [(w, v) for w, v in view.finish_reasons(s) if _abnormal_finish(v) is not None]
        if bad and any(_abnormal_finish(v) is not None for d in view.descendants(s["span_id"])
                       for _, v in view.finish_reasons(d)):
            continue  # an agent repeating its model call's answer: reported once, on the model call
        if bad and not _inside_a_failure_that_says_why(view, s):
            cls = "content_filter" if _abnormal_finish(bad[0][1]) == "content_filter" else "provider_error"
            found.append(Finding(
                s["span_id"], "llm_call_error", "llm_error",
                f"{s.get('llm_model_name') or s.get('name')} stopped abnormally (finish reason {bad[0][1]})",
                {"kind": span_kind(s), "model": s.get("llm_model_name"), "classification": cls,
                 "finish_reasons": [{"where": w, "value": v} for w, v in bad]},
            ))
    return found


# ==================================================================== negative_feedback


FAILING_LABELS = frozenset({
    "incorrect", "bad", "fail", "failed", "failure", "thumbs_down", "thumbsdown", "thumb_down", "negative",
    "wrong", "hallucinated", "hallucination", "unhelpful", "not_helpful", "irrelevant", "toxic", "unsafe",
    "inaccurate", "unfaithful", "dislike", "down", "\U0001f44e",
})
PASSING_LABELS = frozenset({
    "correct", "good", "pass", "passed", "thumbs_up", "thumbsup", "thumb_up", "positive", "right", "factual",
    "helpful", "relevant", "accurate", "faithful", "like", "up", "\U0001f44d", "safe",
})
_NEGATED_LABEL = re.compile(r"(?:non|not|no)_?(.+)")


def _label_verdict(label: Any) -> bool | None:
    """True when a feedback label says failed, False when it says passed, None when it says neither.

    A label that negates one of the known words means the opposite of that word: an evaluator's
    ``non-toxic`` passes, ``not relevant`` fails. Read from its score instead, a toxicity check that
    scores 0 for a clean answer would be reported as a failure labelled "non-toxic".
    """
    norm = _norm_label(label)
    if norm is None:
        return None
    if norm in FAILING_LABELS:
        return True
    if norm in PASSING_LABELS:
        return False
    negated = _NEGATED_LABEL.fullmatch(norm)
    if negated:
        word = negated.group(1).lstrip("_")
        if word in FAILING_LABELS:
            return False
        if word in PASSING_LABELS:
            return True
    return None


def _norm_label(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return re.sub(r"[\s\-]+", "_", value.strip().lower())


def _number(value: Any) -> float | None:
    value = loose(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _feedback_records(span: SpanRow) -> list[dict[str, Any]]:
    """Every annotation / evaluation / user-feedback record on the span, with its scope."""
    a = attrs(span)
    records: list[dict[str, Any]] = []

    def listed(container: Any, list_key: str, item_key: str, scope: str, source: str) -> None:
        for item in as_list(dig(container, list_key)):
            rec = item.get(item_key) if isinstance(item, dict) and isinstance(item.get(item_key), dict) else item
            if isinstance(rec, dict):
                records.append({"scope": scope, "source": source, "name": rec.get("name"), "label": rec.get("label"),
                                "score": rec.get("score"), "explanation": rec.get("explanation"),
                                "annotator_kind": rec.get("annotator_kind")})

    for scope_key, scope in ((None, "span"), ("trace", "trace"), ("session", "session")):
        container = a if scope_key is None else a.get(scope_key)
        prefix = "" if scope_key is None else f"{scope_key}."
        listed(container, "annotations", "annotation", scope, f"{prefix}annotations")
        listed(container, "evaluations", "evaluation", scope, f"{prefix}evaluations")

    def genai(ev: Any, source: str) -> None:
        if isinstance(ev, dict):
            score = ev.get("score")
            records.append({"scope": "span", "source": source, "name": ev.get("name"),
                            "label": dig(score, "label") if isinstance(score, dict) else None,
                            "score": dig(score, "value") if isinstance(score, dict) else score,
                            "explanation": ev.get("explanation")})

    genai(dig(a, "gen_ai", "evaluation"), "gen_ai.evaluation")
    for event in span.get("events") or []:
        if isinstance(event, dict) and event.get("name") == "gen_ai.evaluation.result":
            genai(dig(event, "attributes", "gen_ai", "evaluation"), "event gen_ai.evaluation.result")

    fb = loose(a.get("feedback"))
    if isinstance(fb, dict):
        records.append({"scope": "trace", "source": "feedback", "name": "feedback",
                        "label": fb.get("label", fb.get("value") if isinstance(fb.get("value"), str) else fb.get("thumbs")),
                        "score": fb.get("score", fb.get("rating", fb.get("value"))), "explanation": fb.get("comment")})
    elif isinstance(fb, str) and _number(fb) is None:  # feedback: "thumbs_down", as user_feedback may be
        records.append({"scope": "trace", "source": "feedback", "name": "feedback", "label": fb, "score": None})
    elif _number(fb) is not None:
        records.append({"scope": "trace", "source": "feedback", "name": "feedback", "label": None, "score": fb})
    uf = loose(a.get("user_feedback"))
    if isinstance(uf, dict):
        records.append({"scope": "trace", "source": "user_feedback", "name": "user_feedback",
                        "label": uf.get("label", uf.get("value") if isinstance(uf.get("value"), str) else None),
                        "score": uf.get("score", uf.get("rating")), "explanation": uf.get("comment")})
    elif isinstance(uf, str) and _number(uf) is None:
        records.append({"scope": "trace", "source": "user_feedback", "name": "user_feedback", "label": uf, "score": None})
    elif _number(uf) is not None:
        records.append({"scope": "trace", "source": "user_feedback", "name": "user_feedback", "label": None, "score": uf})

    if span_kind(span) == "EVALUATOR" and not records:
        out = loose(span.get("output_value"))
        if isinstance(out, dict):
            passed = out.get("passed", out.get("pass"))
            records.append({"scope": "link", "source": "evaluator output", "name": span.get("name"),
                            "label": out.get("label", out.get("verdict", out.get("result"))),
                            "score": out.get("score"), "passed": passed if isinstance(passed, bool) else None,
                            "explanation": out.get("explanation", out.get("reason"))})
    return records


def _is_negative(rec: Mapping[str, Any], threshold: float) -> bool:
    verdict = _label_verdict(rec.get("label"))
    if verdict is not None:
        return verdict
    if rec.get("passed") is True:
        return False
    if rec.get("passed") is False:
        return True
    score = _number(rec.get("score"))
    return score is not None and score <= threshold


def _feedback_target(view: TraceView, span: SpanRow, scope: str) -> tuple[str, dict[str, Any] | None]:
    """The span the feedback judges: a linked span of this trace, the root for trace scope or an EVALUATOR
    carrier without a link, else the carrier.

    A carrier is an EVALUATOR span, or a span of no kind with exactly one link: OpenInference's post-hoc
    carrier is "usually" an EVALUATOR, and a producer that sends GenAI ``gen_ai.evaluation.result`` events
    later has no kind to give the span it sends them on (its feedback was filed under the carrier's own,
    empty trace)."""
    links = [l for l in span.get("links") or [] if isinstance(l, dict)]
    if (span_kind(span) == "EVALUATOR" or (span_kind(span) == "UNKNOWN" and len(links) == 1)) and links:
        link = links[0]
        if link.get("trace_id") == view.trace_id:
            target = link.get("span_id")
            if scope in ("trace", "session"):
                return view.root_id, None
            return (target if target in view.by_id else view.root_id), None
        return span["span_id"], {"trace_id": link.get("trace_id"), "span_id": link.get("span_id")}
    if scope == "trace" or span_kind(span) == "EVALUATOR":  # an evaluator linking nowhere judges its trace, not itself
        return view.root_id, None
    return span["span_id"], None


def negative_feedback(view: TraceView, cfg: RuleSettings) -> list[Finding]:
    """An annotation, evaluation (OpenInference, GenAI or an EVALUATOR span) or user feedback labels the span or trace as failed or scores it at or under ``feedback_score_threshold``."""
    per_target: dict[str, list[dict[str, Any]]] = {}
    for s in view.spans:
        for rec in _feedback_records(s):
            if not _is_negative(rec, cfg.feedback_score_threshold):
                continue
            target, elsewhere = _feedback_target(view, s, rec["scope"])
            entry = {k: clip(v, 500) for k, v in rec.items() if v is not None}
            entry["carrier_span_id"] = s["span_id"]
            if elsewhere:
                entry["target"] = elsewhere
            per_target.setdefault(target, []).append(entry)
    found = []
    for target, recs in per_target.items():
        user = [r for r in recs if r["source"] in ("feedback", "user_feedback")]
        detector = "user_feedback" if len(user) == len(recs) else "negative_annotation"
        first = recs[0]
        what = (first["label"] if first.get("label") is not None else f"score {first['score']}"
                if first.get("score") is not None else "passed: false")
        elsewhere = first.get("target")  # an EVALUATOR carrier linked to a span of another trace
        judged = (f"span {elsewhere.get('span_id')} of trace {elsewhere.get('trace_id')}" if elsewhere
                  else f"this {'trace' if target == view.root_id else 'span'}")
        evidence: dict[str, Any] = {"feedback": recs[:20], "score_threshold": cfg.feedback_score_threshold}
        if elsewhere:  # the judge moves this finding onto that trace when the store holds it (Judge._linked_feedback)
            evidence["target"] = {**elsewhere, "scope": first["scope"]}
        found.append(Finding(
            target, detector, "negative_feedback",
            f"{first.get('name') or first['source']} judged {judged} as failed ({what})"
            + (f" (+{len(recs) - 1} more)" if len(recs) > 1 else ""),
            evidence,
        ))
    return found


# ==================================================================== blast_radius_breach


def irreversible_after_failure(view: TraceView, cfg: RuleSettings, failures: Sequence[Finding]) -> list[Finding]:
    """A tool classed ``irreversible_write`` ran in a trace that also failed (any other finding except latency, or an errored span), before or after it."""
    irreversible = {name for name, cls in cfg.tool_classes.items() if cls == "irreversible_write"}
    found = []
    for s in view.of_kind("TOOL"):
        name = _tool_key(s)
        if name not in irreversible:
            continue
        others = [f for f in failures if f.failure_mode not in ("latency_breach", "blast_radius_breach")
                  and not (f.span_id == s["span_id"] and f.failure_mode == "tool_invocation")]
        causes = [{"span_id": f.span_id, "failure_mode": f.failure_mode, "detector": f.detector} for f in others]
        covered = {f.span_id for f in others} | _reporting_its_failure(view, s)
        causes += [{"span_id": e["span_id"], "failure_mode": None, "detector": None, "status_code": "ERROR"}
                   for e in view.spans if is_error(e) and e["span_id"] != s["span_id"] and e["span_id"] not in covered]
        if not causes:
            continue
        start = s.get("start_time")
        before = [c for c in causes if _ended_before(view.by_id.get(c["span_id"]), start)]
        first = (before or causes)[0]
        what = first["failure_mode"] or "an error"
        found.append(Finding(
            s["span_id"], "irreversible_after_failure", "blast_radius_breach",
            f"irreversible tool {name} ran " + ("after" if before else "in the same trace as")
            + f" a failure ({what} on span {first['span_id']})",
            {"tool": name, "tool_class": "irreversible_write", "after_failure": bool(before),
             "failures": causes[:20], "arguments": clip((tool_span_arguments(s) or ("", None, False))[1], 1000)},
            tool=name,
        ))
    return found


def _reporting_its_failure(view: TraceView, tool: SpanRow) -> set[str]:
    """The errored ancestors of a failed tool span that only pass its failure up (the agent call it ended:
    the Vercel AI SDK 4's ``generateText`` rethrows a tool's error). The tool's own failure is its
    tool_invocation; counted as another failure of the trace, the irreversible tool that failed was a
    blast_radius_breach of itself."""
    if not failed(tool):
        return set()
    return {p["span_id"] for p in view.ancestors(tool) if is_error(p) and _same_failure(p, tool)}


def _ended_before(span: SpanRow | None, start: Any) -> bool:
    if span is None or start is None:
        return False
    end = span.get("end_time") or span.get("start_time")
    try:
        return bool(end is not None and end <= start)
    except TypeError:
        return False


# ==================================================================== the table


#: Rules that read only the trace, in the order they run.
TRACE_RULES: tuple[Rule, ...] = (
    tool_error, tool_arguments, retrieval, uncited_id, answer_after_empty_retrieval, json_output,
    finish_length, refusal, slow_span, repeated_tool_call, step_limit, llm_call_error, negative_feedback,
)

#: detector name -> (failure_mode, one-sentence definition). Names are stable: they key detections and candidates.
BUILTIN_DETECTORS: dict[str, tuple[str, str]] = {
    "tool_error": ("tool_invocation", tool_error.__doc__ or ""),
    "tool_args_json": ("tool_argument", "Tool-call arguments (requested by an LLM or received by a TOOL span) are not valid JSON."),
    "tool_schema": ("tool_argument", "Tool-call arguments break the tool's JSON schema declared on an LLM span of the trace."),
    "empty_retrieval": ("retrieval_miss", "A RETRIEVER span returned no documents (or errored)."),
    "low_score_retrieval": ("retrieval_miss", "Every document a RETRIEVER returned scores under retrieval_min_score."),
    "uncited_id": ("hallucination", uncited_id.__doc__ or ""),
    "answer_after_empty_retrieval": ("hallucination", answer_after_empty_retrieval.__doc__ or ""),
    "json_output": ("format_violation", "Output declared as JSON (output mime type, response_format, gen_ai.output.type json) does not parse."),
    "output_schema": ("format_violation", "A JSON answer breaks the schema declared in response_format json_schema."),
    "finish_length": ("truncation", finish_length.__doc__ or ""),
    "refusal": ("refusal_overreach", refusal.__doc__ or ""),
    "slow_span": ("latency_breach", slow_span.__doc__ or ""),
    "repeated_tool_call": ("loop", repeated_tool_call.__doc__ or ""),
    "step_limit": ("loop", step_limit.__doc__ or ""),
    "irreversible_after_failure": ("blast_radius_breach", irreversible_after_failure.__doc__ or ""),
    "llm_call_error": ("llm_error", llm_call_error.__doc__ or ""),
    "negative_annotation": ("negative_feedback", "An annotation or evaluation (OpenInference, GenAI or an EVALUATOR span) labels the span or trace as failed or scores it at or under feedback_score_threshold."),
    "user_feedback": ("negative_feedback", "User feedback (feedback.*, user_feedback) is negative or scores at or under feedback_score_threshold."),
}
