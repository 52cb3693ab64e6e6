"""Deterministic scorers for a case's ``expected_behavior``: one per key, each a pure check over one run's spans.

Every key that promotion drafts (see ``draft_expected`` in
``tracesieve.processors.promotion``) has a scorer here, plus a few that people
add by hand (``must_include``, ``allowed_citation_ids``, ``max_latency_ms``).
:data:`SCORERS` is the table; README's gate section lists the same keys.

A run may export several traces (one per turn, say); the gate pools the spans
of one run and scores them together, ordered by start time.

An ``expected_behavior`` key without a scorer, or a value of the wrong shape,
is a dataset error (:func:`dataset_problems`), reported before anything runs:
a check the gate cannot perform must never pass silently.

Pure and thread-safe: nothing here reads files, the clock or the environment.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema

from tracesieve.processors.base import SpanRow
from tracesieve.processors.rules import (
    RuleSettings, TraceView, answer_after_empty_retrieval, negative_feedback, uncited_id,
)
from tracesieve.processors.spanview import (
    JSON_MIME, assistant_text, canonical_arguments, documents, duration_ms, failed, finish_reasons,
    is_collector_truncated, plain_text_holds_arguments, requested_tool_calls, response_text, span_kind, tool_name,
    tool_span_arguments, try_json,
)
from tracesieve.storage.schema import SPAN_KINDS

#: Finish reasons that all mean "cut at the token limit": banning one bans them all.
TRUNCATING = frozenset({"length", "max_tokens", "max_output_tokens", "model_length", "max_tokens_reached"})


# ---------------------------------------------------------------------------
# one run, seen the way the scorers need it


def _start(span: Mapping[str, Any]) -> float:
    value = span.get("start_time")
    return value.timestamp() if isinstance(value, dt.datetime) else 0.0


def _end(span: Mapping[str, Any]) -> float:
    value = span.get("end_time")
    return value.timestamp() if isinstance(value, dt.datetime) else _start(span)


@dataclasses.dataclass
class Run:
    """The spans of one agent run (all its traces), ordered by start time, and the rule settings."""

    spans: list[SpanRow]
    settings: RuleSettings

    def __post_init__(self) -> None:
        self.spans = sorted(self.spans, key=_start)  # stable: spans without a start keep their order
        self.view = TraceView(str(self.spans[0].get("trace_id") or "") if self.spans else "", self.spans)
        ids = {s.get("span_id") for s in self.spans}
        self.roots = [s for s in self.spans if s.get("parent_span_id") not in ids]

    def of_kind(self, *kinds: str) -> list[SpanRow]:
        return [s for s in self.spans if span_kind(s) in kinds]

    def final_answer(self) -> tuple[SpanRow | None, str]:
        """The answer the run gave: the last root's output, else the last LLM text (or raw output)."""
        for root in reversed(self.roots):
            out = root.get("output_value")
            if isinstance(out, str) and out.strip():
                return root, _answer_text(out)
        for s in sorted(self.of_kind("LLM"), key=_end, reverse=True):
            text = assistant_text(s) or s.get("output_value")
            if isinstance(text, str) and text.strip():
                return s, text
        return None, ""

    def answer_texts(self) -> list[str]:
        """Every text that counts as the run's answer: the final answer and the last LLM text, deduplicated."""
        texts = [self.final_answer()[1]]
        if self.spans:
            last = self.view.final_answer
            if last:
                texts.append(last[1])
        return [t for t in dict.fromkeys(texts) if t]

    def tool_calls(self) -> list[tuple[str, Any, SpanRow]]:
        """(tool name, raw arguments, span) in order: TOOL spans, else the calls the model requested."""
        tools = self.of_kind("TOOL")
        if tools:
            return [(tool_name(s) or str(s.get("name") or ""), (tool_span_arguments(s) or ("", None, False))[1], s)
                    for s in tools]
        return [(str(c.get("name") or ""), c.get("arguments"), s)
                for s in self.of_kind("LLM") for c in requested_tool_calls(s)]


def _answer_text(output: str) -> str:
    """A root's output, read down to the answer text when it is a model response or GenAI output messages
    (an invoke_agent span's ``gen_ai.output.messages`` is its stored output); else the output itself."""
    if output.lstrip()[:1] in ("{", "["):
        ok, value = try_json(output)
        text = response_text(value) if ok else None
        if text:
            return text
    return output


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _strip_fence(text: str) -> str:
    m = re.match(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", text, re.DOTALL)
    return m.group(1) if m else text


def _names(spans: Sequence[SpanRow]) -> str:
    names = [str(tool_name(s) or s.get("name")) for s in spans]
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


# ---------------------------------------------------------------------------
# the scorers: (value, run) -> problems


def required_tool_sequence(value: list[str], run: Run) -> list[str]:
    """The tools ran in this order; other calls may come in between (a subsequence)."""
    called = [name for name, _, _ in run.tool_calls()]
    it = iter(called)
    if all(any(name == want for name in it) for want in value):
        return []
    return [f"tool sequence {called} does not contain {value} in order"]


def tool_calls_succeed(value: bool | list[str], run: Run) -> list[str]:
    """No call of the named tools (``true``: of any tool) failed."""
    if value is False:
        return []
    named = set(value) if isinstance(value, list) else None
    bad = [s for s in run.of_kind("TOOL") if failed(s) and (named is None or tool_name(s) in named)]
    return [f"tool calls failed: {_names(bad)}"] if bad else []


def tool_arguments_schema(value: dict[str, Any], run: Run) -> list[str]:
    """Every call of the tool (``"*"``: of any tool) has JSON arguments that meet its schema (``{}``: any JSON).

    The calls the model asked for count as well as the TOOL spans that ran, as in the tool_argument detector: a
    framework that refuses a call breaking the tool's schema (the Vercel AI SDK, smolagents) records no TOOL span
    for it, so with another tool run in the trace, the bad call went unjudged and a regressed case passed."""
    problems: list[str] = []
    requested = [(str(c.get("name") or ""), c.get("arguments"), s) for s in run.of_kind("LLM")
                 for c in requested_tool_calls(s)]
    ran = run.tool_calls() if run.of_kind("TOOL") else []
    for name, raw, span in requested + ran:
        schema = value.get(name, value.get("*"))
        if schema is None or raw is None:  # not this tool, or its arguments were not recorded
            continue
        ok, args = try_json(raw)
        if not ok:
            problem = f"{name} was called with arguments that are not JSON"
        else:
            recorded = tool_span_arguments(span) if span_kind(span) == "TOOL" else None
            if recorded is not None and not recorded[2] and not plain_text_holds_arguments(args):
                continue  # plain text, as the detectors read it (a LangChain tool's one argument, bare)
            error = jsonschema.validators.validator_for(schema)(schema).iter_errors(args)
            first = next(iter(sorted(error, key=lambda e: list(e.path))), None)
            if first is None:
                continue
            problem = f"{name} arguments break its schema: {first.message}"
        if problem not in problems:  # a call asked for and run is one call
            problems.append(problem)
    return problems


def min_retrieved_documents(value: int, run: Run) -> list[str]:
    """A retriever ran, and each retriever returned at least this many documents."""
    retrievers = run.of_kind("RETRIEVER")
    if not retrievers:
        return ["no retriever ran"]
    return [f"retriever {s.get('name')} returned {len(documents(s) or [])} documents (at least {value} expected)"
            for s in retrievers if len(documents(s) or []) < value]


def min_document_score(value: float, run: Run) -> list[str]:
    """Each retriever that returned scored documents has its best score at or over this floor."""
    problems = []
    for s in run.of_kind("RETRIEVER"):
        scores = [d["score"] for d in documents(s) or []
                  if isinstance(d.get("score"), (int, float)) and not isinstance(d.get("score"), bool)]
        if scores and max(scores) < value:
            problems.append(f"retriever {s.get('name')} best score {max(scores):g} is under {value:g}")
    return problems


def cited_ids_within_retrieved(value: bool, run: Run) -> list[str]:
    """Every document id the answer cites was retrieved (or returned by a tool) in the run."""
    return [f.message for f in uncited_id(run.view, run.settings)] if value else []


def _cited(pattern: re.Pattern[str], text: str) -> list[str]:
    ids: list[str] = []
    for m in pattern.finditer(text):
        for part in re.split(r"\s*[,;]\s*", (m.group(1) if pattern.groups else m.group(0)) or ""):
            if part.strip() and part.strip() not in ids:
                ids.append(part.strip())
    return ids


def allowed_citation_ids(value: list[str], run: Run) -> list[str]:
    """The answer cites only these document ids (matched by the detectors' ``citation_pattern``)."""
    allowed = {v.casefold() for v in value}
    cited = [c for t in run.answer_texts() for c in _cited(run.settings.citation_pattern, t)]
    bad = list(dict.fromkeys(c for c in cited if c.casefold() not in allowed))
    return [f"the answer cites {', '.join(bad)}, outside {value}"] if bad else []


def no_facts_without_retrieval(value: bool, run: Run) -> list[str]:
    """After a retrieval that found nothing, the answer does not state facts."""
    return [f.message for f in answer_after_empty_retrieval(run.view, run.settings)] if value else []


def must_not(value: list[str], run: Run) -> list[str]:
    """The answer contains none of these phrases (case and whitespace folded)."""
    folded = [_fold(t) for t in run.answer_texts()]
    return [f"the answer contains {p!r}" for p in value if p.strip() and any(_fold(p) in t for t in folded)]


def must_include(value: list[str], run: Run) -> list[str]:
    """The answer contains every one of these phrases (case and whitespace folded)."""
    folded = [_fold(t) for t in run.answer_texts()]
    return [f"the answer does not contain {p!r}" for p in value if not any(_fold(p) in t for t in folded)]


#: Why a JSON answer the embedded collector cut cannot be judged: "not JSON" blamed the agent for the cut.
CUT_ANSWER = ("the answer is longer than the collector keeps (receivers.otlp.limits.max_value_size, 1MiB by "
              "default) and was cut, so it cannot be checked as JSON: raise max_value_size in the gate's --config")


def output_schema(value: dict[str, Any], run: Run) -> list[str]:
    """The final answer is JSON (a code fence around it is allowed) and meets this schema (``{}``: any JSON)."""
    _, answer = run.final_answer()
    if is_collector_truncated(answer):
        return [CUT_ANSWER]
    ok, data = try_json(_strip_fence(answer).strip())
    if not ok:
        return ["the answer is not JSON" if answer else "the run gave no answer (JSON expected)"]
    errors = sorted(jsonschema.validators.validator_for(value)(value).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path)
        return [f"the answer breaks output_schema{' at ' + where if where else ''}: {errors[0].message}"]
    return []


def output_mime_type(value: str, run: Run) -> list[str]:
    """The answer is not declared with another mime type; for ``application/json`` it parses as JSON.

    Types compare as media types do, by ``type/subtype`` in any case, parameters aside: an answer
    declared ``application/json; charset=utf-8`` failed ``output_mime_type: application/json`` as
    "declared another type", and an expected ``application/json; charset=utf-8`` skipped the JSON check.
    """
    span, answer = run.final_answer()
    declared = (span or {}).get("output_mime_type")
    if isinstance(declared, str) and declared.strip() and _media_type(declared) != _media_type(value):
        return [f"the answer is declared {declared}, not {value}"]
    if _media_type(value) == JSON_MIME and is_collector_truncated(answer):
        return [CUT_ANSWER]
    if _media_type(value) == JSON_MIME and not try_json(_strip_fence(answer).strip())[0]:
        return ["the answer is not JSON" if answer else "the run gave no answer (JSON expected)"]
    return []


def _media_type(mime: str) -> str:
    """``type/subtype`` of a mime type, lower case, without its parameters (``; charset=utf-8``)."""
    return mime.split(";", 1)[0].strip().lower()


def finish_reason_not(value: list[str], run: Run) -> list[str]:
    """No model call finished for one of these reasons (``length`` covers every token-limit spelling)."""
    banned = {str(v).lower() for v in value}
    if banned & TRUNCATING:
        banned |= TRUNCATING
    hits = [(s, r) for s in run.spans for r in {v.lower() for _, v in finish_reasons(s)} if r in banned]
    return [f"{span_kind(s)} span {s.get('name')} finished with {r}" for s, r in hits[:5]]


def max_identical_calls(value: int, run: Run) -> list[str]:
    """No tool ran more than this many times with the same arguments."""
    counts: dict[tuple[str, str], int] = {}
    for name, raw, _ in run.tool_calls():
        key = (name, canonical_arguments(raw) or "")
        counts[key] = counts.get(key, 0) + 1
    return [f"{name} was called {n} times with the same arguments (at most {value})"
            for (name, _), n in counts.items() if n > value]


def max_steps(value: int, run: Run) -> list[str]:
    """The run made at most this many steps (LLM calls plus tool runs)."""
    steps = len(run.of_kind("LLM")) + len(run.of_kind("TOOL"))
    return [f"the run took {steps} steps (at most {value})"] if steps > value else []


def max_duration_ms(value: dict[str, float | None] | float, run: Run) -> list[str]:
    """No span of a kind took longer than its ceiling (a plain number: the ceiling of every span)."""
    problems = []
    for s in run.spans:
        limit = value if isinstance(value, (int, float)) else {k.upper(): v for k, v in value.items()}.get(span_kind(s))
        took = duration_ms(s)
        if limit is not None and took is not None and took > limit:
            problems.append(f"{span_kind(s)} span {s.get('name')} took {took:.0f}ms (at most {limit:g}ms)")
    return problems


def max_latency_ms(value: float, run: Run) -> list[str]:
    """The whole run, from its first span's start to its last span's end, took at most this long."""
    if not run.spans:
        return []
    took = (max(_end(s) for s in run.spans) - min(_start(s) for s in run.spans)) * 1000.0
    return [f"the run took {took:.0f}ms end to end (at most {value:g}ms)"] if took > value else []


def must_not_call_after_error(value: list[str], run: Run) -> list[str]:
    """None of these tools (``[]``: no tool at all) starts after another span has failed."""
    errors = [s for s in run.spans if failed(s)]
    problems = []
    order = {id(s): i for i, s in enumerate(run.spans)}
    for s in run.of_kind("TOOL"):
        if value and tool_name(s) not in value:
            continue
        before = [e for e in errors if e is not s and (
            _end(e) <= _start(s) or _failed_first_in_its_millisecond(e, s, run, order))]
        if before:
            problems.append(f"{tool_name(s) or s.get('name')} ran after {_names(before[:1])} failed")
    return problems


def _failed_first_in_its_millisecond(error: SpanRow, call: SpanRow, run: Run, order: Mapping[int, int]) -> bool:
    """Whether ``error`` ended before ``call`` started, when ``call``'s start has only millisecond precision.

    The JavaScript SDK stamps a span's start in whole milliseconds and its end as start + a precise
    duration, so a tool that failed and the call right after it share a start, and the failed one
    seems to end after the next began (testdata/js_fast_agent_trace.json): a Node agent that
    refunded after a failed lookup passed the gate. Within that millisecond the run's order (starts,
    then the order the spans were exported in, which is the order they ended) decides; a span
    enclosing the call, or inside it, never counts.
    """
    start = call.get("start_time")
    if not isinstance(start, dt.datetime) or start.microsecond % 1000 or _start(error) > _start(call):
        return False
    if _end(error) >= _start(call) + 0.001 or order[id(error)] > order[id(call)]:
        return False
    by_id = {s.get("span_id"): s for s in run.spans}
    return not (_encloses(error, call, by_id) or _encloses(call, error, by_id))


def _encloses(outer: SpanRow, inner: SpanRow, by_id: Mapping[Any, SpanRow]) -> bool:
    """Whether ``outer`` is an ancestor of ``inner`` (through parent_span_id, among the run's spans)."""
    seen: set[Any] = set()
    parent = inner.get("parent_span_id")
    while parent is not None and parent not in seen:
        if parent == outer.get("span_id"):
            return True
        seen.add(parent)
        parent = (by_id.get(parent) or {}).get("parent_span_id")
    return False


def no_error_spans(value: bool, run: Run) -> list[str]:
    """No span of the run failed (status ERROR or an exception event)."""
    bad = [s for s in run.spans if failed(s)] if value else []
    return [f"spans failed: {_names(bad)}"] if bad else []


def feedback_passes(value: list[str], run: Run) -> list[str]:
    """No annotation, evaluation or user feedback with one of these names (``[]``: any) judges the run failed."""
    names = set(value)
    problems = []
    for finding in negative_feedback(run.view, run.settings):
        recs = [r for r in finding.evidence.get("feedback", []) if not names or r.get("name") in names]
        if recs:
            problems.append(finding.message)
    return problems


# ---------------------------------------------------------------------------
# value shapes


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _phrases(v: Any) -> bool:
    """Phrases with something to find: a blank one is in every answer, so ``must_include: [""]``
    passed every run and ``must_not: [""]`` was skipped, assertions that never broke."""
    return _str_list(v) and all(x.strip() for x in v)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:
    """A number a comparison can fail: YAML's ``.nan`` fails every one, so a ceiling or floor of NaN
    passed every run, an assertion that could never break."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _milliseconds(v: Any) -> bool:
    """A duration ceiling: a negative one failed every run, whatever the agent did."""
    return _number(v) and v >= 0


def _schema(v: Any) -> bool:
    if not isinstance(v, dict):
        return False
    try:
        jsonschema.validators.validator_for(v).check_schema(v)
    except jsonschema.SchemaError:
        return False
    return _refs_resolve(v)


#: The JSON Schema drafts' own meta-schemas, as jsonschema's validators find them without a network.
_META_SCHEMAS: referencing.Registry[Any] = getattr(jsonschema.validators, "SPECIFICATIONS", referencing.Registry())
#: Keywords whose values are data, not subschemas: a ``$ref`` key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def _refs_resolve(schema: dict[str, Any]) -> bool:
    """Every ``$ref`` of ``schema`` points inside it (the gate fetches nothing).

    A ``$ref`` to another document (``http://...``) or to a missing definition passed the checks and
    raised ``Unresolvable`` only while scoring, after every agent had run: the gate died with
    "internal error" instead of refusing the dataset before it ran anything.
    """
    spec = referencing.jsonschema.specification_with(
        str(schema.get("$schema", "")), default=referencing.jsonschema.DRAFT202012)
    root = spec.create_resource(schema)
    try:  # on top of the drafts' meta-schemas, which jsonschema resolves offline too
        registry = _META_SCHEMAS.with_resource(root.id() or "", root).crawl()
    except (referencing.exceptions.Unresolvable, TypeError, ValueError):
        return False

    def resolvable(node: Any, base: str) -> bool:
        if isinstance(node, list):
            return all(resolvable(item, base) for item in node)
        if not isinstance(node, dict):
            return True
        if isinstance(node.get("$id"), str):
            base = urllib.parse.urljoin(base, node["$id"])
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                registry.resolver(base_uri=base).lookup(ref)
            except (referencing.exceptions.Unresolvable, TypeError, ValueError):
                return False
        return all(resolvable(v, base) for k, v in node.items() if k not in _DATA_KEYWORDS)

    try:
        return resolvable(schema, root.id() or "")
    except RecursionError:
        return False


def _schemas_by_tool(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _schema(s) for k, s in v.items())


def _ceilings(v: Any) -> bool:
    if _milliseconds(v):
        return True
    return isinstance(v, dict) and all(isinstance(k, str) and k.upper() in SPAN_KINDS
                                       and (x is None or _milliseconds(x)) for k, x in v.items())


@dataclasses.dataclass(frozen=True)
class Scorer:
    check: Callable[[Any, Run], list[str]]
    accepts: Callable[[Any], bool]
    shape: str  # what a valid value looks like, for the error message


#: expected_behavior key -> scorer. Promotion drafts every key above the blank line.
SCORERS: dict[str, Scorer] = {
    "required_tool_sequence": Scorer(required_tool_sequence, _str_list, "a list of tool names"),
    "tool_calls_succeed": Scorer(tool_calls_succeed, lambda v: _flag(v) or _str_list(v),
                                 "true or a list of tool names"),
    "tool_arguments_schema": Scorer(tool_arguments_schema, _schemas_by_tool,
                                    "a mapping of tool name (or \"*\") to a JSON schema whose $refs point inside it"),
    "min_retrieved_documents": Scorer(min_retrieved_documents, _count, "a whole number"),
    "min_document_score": Scorer(min_document_score, _number, "a number"),
    "cited_ids_within_retrieved": Scorer(cited_ids_within_retrieved, _flag, "true or false"),
    "no_facts_without_retrieval": Scorer(no_facts_without_retrieval, _flag, "true or false"),
    "must_not": Scorer(must_not, _phrases, "a list of phrases (none blank)"),
    "output_schema": Scorer(output_schema, _schema, "a JSON schema (a mapping) whose $refs point inside it"),
    "output_mime_type": Scorer(output_mime_type, lambda v: isinstance(v, str) and "/" in v, "a mime type"),
    "finish_reason_not": Scorer(finish_reason_not, _str_list, "a list of finish reasons"),
    "max_duration_ms": Scorer(max_duration_ms, _ceilings,
                              "a mapping of span kind (LLM, TOOL, ...) to milliseconds (0 or more), or one number"),
    "max_identical_calls": Scorer(max_identical_calls, _count, "a whole number"),
    "max_steps": Scorer(max_steps, _count, "a whole number"),
    "must_not_call_after_error": Scorer(must_not_call_after_error, _str_list, "a list of tool names"),
    "no_error_spans": Scorer(no_error_spans, _flag, "true or false"),
    "feedback_passes": Scorer(feedback_passes, _str_list, "a list of annotation names"),

    "must_include": Scorer(must_include, _phrases, "a list of phrases (none blank)"),
    "allowed_citation_ids": Scorer(allowed_citation_ids, _str_list, "a list of document ids"),
    "max_latency_ms": Scorer(max_latency_ms, _milliseconds, "a number of milliseconds (0 or more)"),
}


def expected_problems(expected: Any) -> list[str]:
    """Why an ``expected_behavior`` value cannot be scored (unknown key, wrong shape); empty when it can."""
    if expected is None:
        return []
    if not isinstance(expected, Mapping):
        return ["expected_behavior must be a mapping"]
    problems = []
    for key, value in expected.items():
        scorer = SCORERS.get(str(key))
        if scorer is None:
            problems.append(f"expected_behavior.{key}: no scorer for this key (the gate checks: "
                            f"{', '.join(sorted(SCORERS))})")
        elif not scorer.accepts(value):
            problems.append(f"expected_behavior.{key}: expected {scorer.shape}, got {json.dumps(value, default=str)}")
    return problems


def score(expected: Mapping[str, Any], spans: Sequence[SpanRow], settings: RuleSettings) -> list[str]:
    """Every way one run's spans break ``expected`` (already checked by :func:`expected_problems`); empty: it holds."""
    run = Run(list(spans), settings)
    problems: list[str] = []
    for key, value in expected.items():
        problems.extend(f"{key}: {p}" for p in SCORERS[str(key)].check(value, run))
    return problems
