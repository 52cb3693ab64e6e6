"""Promotion: turn the detections on settled traces into candidate regression rows.

One candidate per (trace, detector, failure_mode): several detections of the same
rule on one trace make one candidate. Each candidate carries

* ``input``    -- ``{user_message, conversation_history}``, read from the first AGENT, then
  LLM span with input messages (OpenInference ``llm.input_messages``, GenAI
  ``gen_ai.input.messages``, legacy ``gen_ai.prompt`` / ``llm.prompts``), else from the
  root span's ``input_value`` (an OpenAI-style ``{"messages": [...]}`` request, a JSON
  object with an ``input``/``query``/``question``/``message`` field, or plain text), then
  an AGENT's, then any other span's but a TOOL's, RETRIEVER's and the like (their input is
  the agent's, not the user's). A user turn the messages hold without its text takes the user
  message from that ``input_value`` too.
  An AGENT given only the new turn takes its history from the first model call given that turn.
  System messages are left out (``source`` has the prompt: template, version, system prompt); messages
  after the last user message are left out too;
* ``context``  -- retrieved ``documents`` (id, score, content, span_id), ``retrieval_queries``,
  ``tool_calls`` (name, arguments, result, status, error, span_id) and ``available_tools``; in a
  trace without TOOL spans, the calls the model asked for (``requested_only``), each with the
  ``result`` a later model call was given in a tool message;
* ``observed`` -- ``final_answer``, ``tool_sequence`` (the TOOL spans, else the calls the model asked
  for), ``failing_calls`` (one per detection span) and the ``detections`` (message + evidence);
* ``expected`` -- a draft assertion fitted to the failure mode (see :func:`draft_expected`);
* ``source``   -- trace_id, span_ids, service, model, prompt template / version / id, the first
  model call's system prompt, agent name / version, session, detector.

Dedupe, in this order, for a candidate whose id is not stored yet:

1. **same candidate**: ``candidate_id`` derives from detector + failure_mode + ``input_hash``,
   the sha256 of the input's normal form (:func:`normal_form`: placeholders reduced to
   their type, whitespace collapsed, case folded). A known id is passed on unchanged;
   the upsert appends the trace and counts the occurrence.
2. **near duplicate**: a MinHash signature over word shingles of the normal form is
   compared (through a banded LSH index, each hit verified) with the stored non-duplicate
   candidates of the same failure mode and those earlier in the batch; at or over
   ``near_duplicate_threshold`` the candidate gets status ``duplicate`` and
   ``duplicate_of`` = the most similar one (earliest on ties). An equal input (the same
   input_hash from another detector of the mode) is not a near duplicate: it stays ``new``.
3. **cap**: at most ``max_per_intent`` rows (any status) per (failure_mode, intent);
   past it a new candidate is not emitted and ``stats["capped"]`` counts it. Recurrences
   of stored candidates are never capped.

Intent (our choice): ``tool:<name>`` when the failure is on a tool (the detection's
span is a TOOL span, or its evidence names ``tool_name``/``tool``), else ``text:`` + the
first ``intent_words`` words of the normalized user message, else ``span:<name>``.

An input with no text at all (content capture off) is hashed as ``{"empty_input": true,
"span": <first failing span's tool or span name>}``, so such failures group per failing
call instead of all into one.

Options (``processors.promotion``), defaults::

    near_duplicate_threshold: 0.8   # estimated Jaccard similarity of word shingles, (0, 1]
    max_per_intent: 20              # rows per (failure_mode, intent); 0 = no cap
    minhash_permutations: 64        # 64 or 128 (stored in candidates.signature)
    shingle_words: 3                # words per shingle
    intent_words: 4                 # words of the user message in a text intent
    max_text_chars: 2000            # longer context / observed strings are cut and marked

Evidence keys read when a detector provides them (all optional; the spans are the
fallback): ``tool_name``/``tool``, ``schema``/``json_schema``/``output_schema``,
``cited_ids``/``missing_ids``/``unknown_ids``, ``phrase``/``matched``, ``threshold_ms``,
``max_identical_calls``/``limit``, ``min_score``/``threshold``, ``annotation``/``name``.

Runs on the judge thread; deterministic for a given batch and store content. Reads the
store only through ``StoreReader.query``; stores nothing itself (the writer upserts
``batch.candidates``). Near-duplicate and cap checks see what is committed, the current
batch, and the candidates this processor emitted that are not committed yet: the judge
judges its next round while the writer still stores the last one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from tracesieve.processors.base import SpanRow, StoreReader, TraceBatch
from tracesieve.processors.options import OptionReader
from tracesieve.processors.spanview import (
    assistant_text, callback_arguments, fill_document_ids, langchain_requested_arguments, langchain_tool_call_id,
    list_item, response_text, tool_message_content, tool_span_schema, vercel_input_messages, vercel_output_messages,
    vercel_tool_definitions,
)
from tracesieve.storage.candidates import EXISTING_SQL, INTENT_COUNT_SQL, SIGNATURES_SQL
from tracesieve.storage.schema import SEVERITIES, Candidate, Detection
from tracesieve.storage.sqlparams import packed

# ---------------------------------------------------------------------------
# normal form, hash, MinHash

_KEYED_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*):[0-9a-fA-F]{6}>")
_WS = re.compile(r"\s+")
_WORD = re.compile(r"<[a-z_]+>|\w+")
_MERSENNE = (1 << 61) - 1


def normalize_text(text: str) -> str:
    """Redaction-stable text: ``<EMAIL:3f9a1c>`` -> ``<EMAIL>``, whitespace collapsed, case folded."""
    return _WS.sub(" ", _KEYED_PLACEHOLDER.sub(r"<\1>", text)).strip().casefold()


def normal_form(inp: Mapping[str, Any], empty_key: str = "") -> str:
    """The canonical JSON text the input hash is taken over.

    Covers the user message and, per history message, role, content and the names of
    tool calls (never ids or arguments, which differ per run).
    """
    history = []
    for msg in inp.get("conversation_history") or []:
        if not isinstance(msg, dict):
            continue
        item: dict[str, Any] = {
            "role": normalize_text(str(msg.get("role") or "")),
            "content": normalize_text(str(msg.get("content") or "")),
        }
        calls = [str(c.get("name") or "") for c in msg.get("tool_calls") or [] if isinstance(c, dict)]
        if calls:
            item["tool_calls"] = calls
        history.append(item)
    user = normalize_text(str(inp.get("user_message") or ""))
    if not user and not any(h["content"] or h.get("tool_calls") for h in history):
        form: dict[str, Any] = {"empty_input": True, "span": normalize_text(empty_key)}
    else:
        form = {"user_message": user, "conversation_history": history}
    return json.dumps(form, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def input_hash(inp: Mapping[str, Any], empty_key: str = "") -> str:
    """sha256 hex of :func:`normal_form`: equal for the same input from different customers."""
    return hashlib.sha256(normal_form(inp, empty_key).encode("utf-8")).hexdigest()


def _shingle_text(inp: Mapping[str, Any]) -> str:
    parts = [str(m.get("content") or "") for m in inp.get("conversation_history") or [] if isinstance(m, dict)]
    parts.append(str(inp.get("user_message") or ""))
    return normalize_text(" ".join(parts))


def shingles(text: str, k: int = 3) -> set[str]:
    """Word k-shingles of already normalized text (placeholders count as words)."""
    words = _WORD.findall(text)
    if not words:
        return set()
    if len(words) <= k:
        return {" ".join(words)}
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def _perm_params(num_perm: int) -> list[tuple[int, int]]:
    params = []
    for i in range(num_perm):
        seed = hashlib.sha256(f"tracesieve-minhash-{i}".encode()).digest()
        a = int.from_bytes(seed[:8], "big") % (_MERSENNE - 1) + 1
        b = int.from_bytes(seed[8:16], "big") % _MERSENNE
        params.append((a, b))
    return params


_PERMS: dict[int, list[tuple[int, int]]] = {}


def minhash(items: Iterable[str], num_perm: int = 64) -> list[int]:
    """MinHash signature (values < 2**61, fit UBIGINT); empty input gives an empty signature."""
    hashes = [int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "big") for s in items]
    if not hashes:
        return []
    perms = _PERMS.get(num_perm)
    if perms is None:
        perms = _PERMS[num_perm] = _perm_params(num_perm)
    return [min((a * x + b) % _MERSENNE for x in hashes) for a, b in perms]


def similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """Estimated Jaccard similarity of two signatures of equal length (0.0 otherwise)."""
    if not a or len(a) != len(b):
        return 0.0
    return sum(map(operator.eq, a, b)) / len(a)


class LshIndex:
    """Banded MinHash index: finds the signatures likely to be at or over a threshold without comparing all.

    Bands of 4 rows (16 bands for 64 permutations): two inputs with similarity 0.8 share
    a band with probability 1 - (1 - 0.8**4)**16 > 0.999. Every hit is then checked with
    :func:`similarity`, so the index never reports a pair under the threshold.
    """

    ROWS = 4

    def __init__(self) -> None:
        self._buckets: dict[tuple[int, tuple[int, ...]], list[str]] = {}
        self._sigs: dict[str, tuple[int, Sequence[int]]] = {}  # key -> (insertion order, signature)
        self._inputs: dict[str, str] = {}                      # key -> input_hash

    def add(self, key: str, sig: Sequence[int], input_hash: str = "") -> None:
        if not sig or key in self._sigs:
            return
        self._sigs[key] = (len(self._sigs), sig)
        self._inputs[key] = input_hash
        for band in range(len(sig) // self.ROWS):
            self._buckets.setdefault((band, tuple(sig[band * self.ROWS:(band + 1) * self.ROWS])), []).append(key)

    def best(self, sig: Sequence[int], threshold: float, input_hash: str = "") -> tuple[float, str] | None:
        """The most similar stored key at or over ``threshold`` (the earliest added on ties).

        A key with the same ``input_hash`` is no near-duplicate: DESIGN's duplicate is a very similar
        but not equal input (the same input failing another detector is a failure of its own).
        """
        if not sig:
            return None
        seen: set[str] = set()
        best: tuple[float, int, str] | None = None
        for band in range(len(sig) // self.ROWS):
            for key in self._buckets.get((band, tuple(sig[band * self.ROWS:(band + 1) * self.ROWS])), ()):
                if key in seen:
                    continue
                seen.add(key)
                if input_hash and self._inputs[key] == input_hash:
                    continue
                order, other = self._sigs[key]
                sim = similarity(sig, other)
                if sim >= threshold and (best is None or (sim, -order) > (best[0], -best[1])):
                    best = (sim, order, key)
        return None if best is None else (best[0], best[2])


# ---------------------------------------------------------------------------
# reading spans

def _get(obj: Any, dotted: str) -> Any:
    """``attributes`` lookup by dotted key: nested (as stored) first, then a flat key."""
    if not isinstance(obj, dict):
        return None
    cur: Any = obj
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            cur = None
            break
    if cur is None and dotted in obj:
        cur = obj[dotted]
    return cur


def _attrs(span: SpanRow) -> Mapping[str, Any]:
    a = span.get("attributes")
    return a if isinstance(a, dict) else {}


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in ("{", "[", '"'):
            try:
                return json.loads(s)
            except ValueError:
                return value
    return value


def _as_list(value: Any) -> list[Any]:
    value = _maybe_json(value)
    if isinstance(value, list):
        return [list_item(v) for v in value if v is not None]
    if isinstance(value, dict):  # a list whose indices arrived as object keys
        try:
            return [value[k] for k in sorted(value, key=int)]
        except (TypeError, ValueError):
            return []
    return []


def _clip(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"…[truncated {len(value) - limit} chars]"
    if isinstance(value, list):
        return [_clip(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: _clip(v, limit) for k, v in value.items()}
    return value


_ROLES = {"human": "user", "ai": "assistant", "model": "assistant", "agent": "assistant",
          "developer": "system", "function": "tool"}


def _role(value: Any) -> str:
    r = str(value or "").strip().lower()
    return _ROLES.get(r, r)


def _content_text(value: Any) -> str:
    """Text of a message content in any of the shapes producers send."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(t for t in (_content_text(v) for v in value) if t)
    if isinstance(value, dict):
        if "message_content" in value:
            return _content_text(value["message_content"])
        kind = value.get("type")
        if kind not in (None, "text", "input_text", "output_text"):
            return ""
        for key in ("text", "content"):
            if isinstance(value.get(key), str):
                return value[key]
        return ""
    return str(value)


def _oi_message(item: Any, ids: bool = False) -> dict[str, Any] | None:
    """``{role, content, tool_calls?}``; ``ids`` adds each call's ``id`` and a tool message's ``tool_results``."""
    m = item.get("message", item) if isinstance(item, dict) else None
    if not isinstance(m, dict):
        return None
    content = _content_text(m.get("content"))
    if not content and m.get("contents") is not None:
        content = _content_text(_as_list(m.get("contents")))
    msg: dict[str, Any] = {"role": _role(m.get("role")), "content": content}
    calls = []
    for tc in _as_list(m.get("tool_calls")):
        call = tc.get("tool_call", tc) if isinstance(tc, dict) else None
        if isinstance(call, dict):
            fn = call.get("function") if isinstance(call.get("function"), dict) else {}
            calls.append({"name": fn.get("name") or call.get("name") or "",
                          "arguments": _maybe_json(fn.get("arguments", call.get("arguments")))})
            if ids:
                calls[-1]["id"] = call.get("id")
    if calls:
        msg["tool_calls"] = calls
    if ids and msg["role"] == "tool":
        msg["tool_results"] = [(m.get("tool_call_id"), content)]
    return msg


def _genai_message(item: Any, ids: bool = False) -> dict[str, Any] | None:
    """``{role, content, tool_calls?}``; ``ids`` adds each call's ``id`` and a tool message's ``tool_results``."""
    if not isinstance(item, dict):
        return None
    if "parts" not in item:  # deprecated {role, content} shapes and OpenAI-style requests
        msg = {"role": _role(item.get("role")), "content": _content_text(item.get("content"))}
        calls = []
        for tc in _as_list(item.get("tool_calls")):
            if isinstance(tc, dict):
                fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
                calls.append({"name": fn.get("name") or "", "arguments": _maybe_json(fn.get("arguments"))})
                if ids:
                    calls[-1]["id"] = tc.get("id")
        if calls:
            msg["tool_calls"] = calls
        if ids and msg["role"] == "tool":
            msg["tool_results"] = [(item.get("tool_call_id"), msg["content"])]
        return msg
    texts, calls, results = [], [], []
    for part in _as_list(item.get("parts")):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(_content_text(part.get("content")))
        elif kind == "tool_call":
            calls.append({"name": part.get("name") or "", "arguments": _maybe_json(part.get("arguments"))})
            if ids:
                calls[-1]["id"] = part.get("id")
        elif kind == "tool_call_response":
            resp = part.get("response", part.get("result"))
            texts.append(resp if isinstance(resp, str) else json.dumps(resp, ensure_ascii=False, default=str))
            results.append((part.get("id"), resp))
    msg = {"role": _role(item.get("role")), "content": "\n".join(t for t in texts if t)}
    if calls:
        msg["tool_calls"] = calls
    if ids and results:
        msg["tool_results"] = results
    return msg


def span_input_messages(span: SpanRow, ids: bool = False) -> list[dict[str, Any]]:
    """Input messages of a span in OpenInference or GenAI form, or a Vercel AI SDK provider call's (empty when it
    has none)."""
    a = _attrs(span)
    oi = [m for m in (_oi_message(i, ids) for i in _as_list(_get(a, "llm.input_messages"))) if m]
    if oi:
        return oi
    for key in ("gen_ai.input.messages", "gen_ai.prompt"):
        msgs = [m for m in (_genai_message(i, ids) for i in _as_list(_get(a, key))) if m]
        if msgs:
            return msgs
    msgs = [m for m in (_genai_message(i, ids) for i in vercel_input_messages(span)) if m]
    if msgs:
        return msgs
    prompts = [_content_text(_get(p, "prompt.text") if isinstance(p, dict) else p)
               for p in _as_list(_get(a, "llm.prompts"))]
    prompts = [p for p in prompts if p]
    if prompts:
        return [{"role": "user", "content": prompts[-1]}]
    return _event_messages(span, ids)


#: Older GenAI instrumentations record each message as a span event named for its role (deprecated in
#: semconv 1.37; the body as JSON in ``gen_ai.event.content``, as Azure AI Inference writes it, or as
#: attributes), or the whole prompt in one ``gen_ai.content.prompt`` event (semconv 1.27 and before).
_MESSAGE_EVENTS = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                   "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}


def _event_body(event: Mapping[str, Any]) -> dict[str, Any]:
    a = event.get("attributes") if isinstance(event.get("attributes"), dict) else {}
    body = _maybe_json(_get(a, "gen_ai.event.content"))
    if isinstance(body, dict):
        return body
    return {k: v for k in ("role", "content", "tool_calls", "id", "message") if (v := _get(a, k)) is not None}


def _event_messages(span: SpanRow, ids: bool = False) -> list[dict[str, Any]]:
    """Input messages a span recorded as events (see :data:`_MESSAGE_EVENTS`); empty when it has none."""
    msgs = []
    for ev in span.get("events") or []:
        if not isinstance(ev, dict):
            continue
        name = ev.get("name")
        if name == "gen_ai.content.prompt":
            a = ev.get("attributes") if isinstance(ev.get("attributes"), dict) else {}
            got = [m for m in (_genai_message(i, ids) for i in _as_list(_get(a, "gen_ai.prompt"))) if m]
            if got:
                return got
        elif name in _MESSAGE_EVENTS:
            body = _event_body(ev)
            body["role"] = body.get("role") or _MESSAGE_EVENTS[name]
            if name == "gen_ai.tool.message":
                body.setdefault("tool_call_id", body.get("id"))
            msg = _genai_message(body, ids)
            if msg:
                msgs.append(msg)
    return msgs


def _event_output_text(span: SpanRow) -> str:
    """The answer a span recorded as a ``gen_ai.content.completion`` or ``gen_ai.choice`` event (choice 0)."""
    for ev in span.get("events") or []:
        if not isinstance(ev, dict):
            continue
        if ev.get("name") == "gen_ai.content.completion":
            a = ev.get("attributes") if isinstance(ev.get("attributes"), dict) else {}
            for item in _as_list(_get(a, "gen_ai.completion"))[:1]:
                msg = _genai_message(item)
                if msg and msg["content"]:
                    return str(msg["content"])
        elif ev.get("name") == "gen_ai.choice":
            body = _event_body(ev)
            if body.get("index") not in (None, 0, "0"):
                continue
            message = body.get("message") if isinstance(body.get("message"), dict) else body
            text = _content_text(message.get("content"))
            if text:
                return text
    return ""


def span_output_text(span: SpanRow) -> str:
    """The text an LLM span answered (choice 0), OpenInference or GenAI."""
    a = _attrs(span)
    for item in _as_list(_get(a, "llm.output_messages"))[:1]:
        msg = _oi_message(item)
        if msg and msg["content"]:
            return msg["content"]
    for key in ("gen_ai.output.messages", "gen_ai.completion"):
        for item in _as_list(_get(a, key))[:1]:
            msg = _genai_message(item)
            if msg and msg["content"]:
                return msg["content"]
    return _event_output_text(span)


def _split_messages(messages: list[dict[str, Any]]) -> dict[str, Any]:
    convo = [m for m in messages if m.get("role") != "system"]
    last_user = max((i for i, m in enumerate(convo) if m.get("role") == "user"), default=None)
    if last_user is None:
        return {"user_message": "", "conversation_history": convo}
    return {"user_message": convo[last_user]["content"], "conversation_history": convo[:last_user]}


_INPUT_KEYS = ("input", "query", "question", "message", "user_message", "prompt", "text", "task")


def _input_from_value(value: Any) -> dict[str, Any]:
    parsed = _maybe_json(value)
    if isinstance(parsed, dict):
        msgs = parsed.get("messages")
        if isinstance(msgs, list):
            got = [m for m in (_genai_message(i) for i in msgs) if m]
            if got:
                return _split_messages(got)
        for key in _INPUT_KEYS:
            if isinstance(parsed.get(key), str):
                return {"user_message": parsed[key], "conversation_history": []}
    if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and "role" in m for m in parsed):
        got = [m for m in (_genai_message(i) for i in parsed) if m]
        return _split_messages(got)
    if value is None:
        return {"user_message": "", "conversation_history": []}
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return {"user_message": text, "conversation_history": []}


_NOT_USER_INPUT = frozenset({"TOOL", "RETRIEVER", "EMBEDDING", "RERANKER", "GUARDRAIL", "EVALUATOR"})


def _root(spans: Sequence[SpanRow]) -> SpanRow | None:
    for s in spans:
        if not s.get("parent_span_id"):
            return s
    return spans[0] if spans else None


def _history_the_model_saw(spans: Sequence[SpanRow], user_message: Any) -> list[dict[str, Any]]:
    """The turns before ``user_message`` in the first model call that was given it, else none.

    An agent handed only the new turn (an ``invoke_agent`` span whose input is that one message) keeps the
    conversation itself and passes it to the model: the case must carry that history to replay the failure.
    """
    asked = " ".join(str(user_message or "").split())
    if not asked:
        return []
    for s in spans:
        if s.get("span_kind") != "LLM":
            continue
        msgs = span_input_messages(s)
        if not msgs:
            continue
        split = _split_messages(msgs)
        if " ".join(str(split["user_message"] or "").split()) == asked:
            return list(split["conversation_history"])
    return []


def extract_input(spans: Sequence[SpanRow]) -> dict[str, Any]:
    """``{user_message, conversation_history}`` of a trace (see the module docstring for the order)."""
    for kinds in (("AGENT",), ("LLM",), None):
        for s in spans:
            if kinds is not None and s.get("span_kind") not in kinds:
                continue
            msgs = span_input_messages(s)
            if msgs:
                split = _split_messages(msgs)
                if split["user_message"] or split["conversation_history"]:
                    if not split["user_message"]:
                        # The instrumentor kept the history but not the user's turn (opentelemetry-instrumentation-
                        # openai-v2 2.4b0 records a message whose content is a list of parts as `"parts": []`):
                        # every such failure had the input "" and was one candidate. The app's root says what
                        # was asked.
                        asked = _input_from_root(spans)["user_message"]
                        split = {**split, "user_message": asked} if asked else split
                    if kinds == ("AGENT",) and not split["conversation_history"]:
                        split["conversation_history"] = _history_the_model_saw(spans, split["user_message"])
                    if kinds == ("LLM",):
                        asked = _question_behind_template(spans, split["user_message"])
                        split = {**split, "user_message": asked} if asked else split
                    return split
    recorded = _agent_conversation(spans)
    if recorded is not None:
        return recorded
    return _input_from_root(spans)


def _question_behind_template(spans: Sequence[SpanRow], message: Any) -> str | None:
    """The user's question when the model was given it wrapped in more text, else None.

    A RAG pipeline (llama-index's query engine, a LangChain prompt) asks the model with a template rendered
    around the question and the retrieved context ("Context information is below. ... Query: <question>"),
    and smolagents prefixes the task ("New task:\n<question>"): as a case's input that text replays neither
    the question nor the failure, and a RAG prompt's hash changes with every retrieval. The question is the
    root's ``input.value`` (its ``task``, ``query``, ... when it is an object) when the message holds it.
    """
    if not isinstance(message, str) or not message:
        return None
    root = _root(spans)
    asked = _input_from_value(root.get("input_value")) if root is not None and root.get("input_value") else None
    question = asked["user_message"] if asked and not asked["conversation_history"] else None
    if isinstance(question, str) and question.strip() and question.strip() != message.strip() \
            and question.strip() in message:
        return question
    return _argument_the_message_holds(_maybe_json(root.get("input_value")) if root is not None else None, message)


def _argument_the_message_holds(arguments: Any, message: str) -> str | None:
    """The longest text among the root's nested call arguments that ``message`` wraps, else None.

    Frameworks record a program's call whole: DSPy's ReAct ``{"input_args": {"question": ...}}``, a Haystack
    pipeline ``{"data": {"retriever": {"query": ...}, "prompt": {"question": ...}}}``. The model's message is
    the question rendered into the framework's envelope ("[[ ## question ## ]]\n...", "Context: ...
    Question: ..."); a value under an input-like key (``question``, ``query``...) is preferred over any other
    text of two words or more, and the longest held wins (a retriever's keyword query is held by the
    retrieved context too).
    """
    if not isinstance(arguments, (dict, list)):
        return None
    preferred: list[str] = []
    other: list[str] = []
    stack: list[tuple[Any, str, int]] = [(arguments, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if isinstance(value, str):
            text = value.strip()
            if text and text != message.strip() and text in message:
                if key in _INPUT_KEYS:
                    preferred.append(value)
                elif len(text.split()) > 1:  # a lone word (a language, an id) is no question
                    other.append(value)
        elif depth < 4 and isinstance(value, dict):
            stack.extend((v, str(k), depth + 1) for k, v in value.items())
        elif depth < 4 and isinstance(value, list):
            stack.extend((v, key, depth + 1) for v in value)
    held = preferred or other
    return max(held, key=lambda text: len(text.strip())) if held else None


def _agent_conversation(spans: Sequence[SpanRow]) -> dict[str, Any] | None:
    """The input from the conversation an AGENT span recorded as its own (pydantic-ai's
    ``pydantic_ai.all_messages``, GenAI messages), or None.

    pydantic-ai records the messages on a model call only when the call answers: a run whose first call
    failed (a rate limit, a provider error) held the user's question nowhere else, and its candidate had
    the input "" (one candidate for every such failure, and nothing to replay).
    """
    for s in spans:
        if s.get("span_kind") != "AGENT":
            continue
        msgs = [m for m in (_genai_message(i) for i in _as_list(_get(_attrs(s), "pydantic_ai.all_messages"))) if m]
        split = _split_messages(msgs) if msgs else None
        if split and split["user_message"]:
            return split
    return None


def _input_from_root(spans: Sequence[SpanRow]) -> dict[str, Any]:
    """The input read from ``input.value``: the root's, else an AGENT's, else another span's that speaks for
    the user or the model. A tool's or retriever's input is what the agent sent it, not what the user asked."""
    root = _root(spans)
    ordered = ([root] if root else []) + [s for s in spans if s.get("span_kind") == "AGENT"] + [
        s for s in spans if s.get("span_kind") not in _NOT_USER_INPUT]
    for s in ordered:
        if s.get("input_value"):
            return _input_from_value(s["input_value"])
    return {"user_message": "", "conversation_history": []}


def _tool_name(span: SpanRow) -> str:
    a = _attrs(span)
    return str(span.get("tool_name") or _get(a, "tool.name") or _get(a, "gen_ai.tool.name") or "")


def _exception_message(span: SpanRow) -> str | None:
    for ev in span.get("events") or []:
        if isinstance(ev, dict) and ev.get("name") == "exception":
            attrs = ev.get("attributes") if isinstance(ev.get("attributes"), dict) else ev
            msg = _get(attrs, "exception.message") or _get(attrs, "exception.type")
            if msg:
                return str(msg)
    return None


def tool_arguments(span: SpanRow) -> Any:
    """Arguments of a TOOL span: ``input_value`` (JSON), else ``tool.parameters``, else GenAI's."""
    a = _attrs(span)
    for value in (span.get("input_value"), _get(a, "tool.parameters"), _get(a, "gen_ai.tool.call.arguments")):
        if value not in (None, ""):
            return _maybe_json(callback_arguments("", value, False)[1])
    return None


def _requested_arguments(spans: Sequence[SpanRow]) -> dict[str, Any]:
    """Tool call id -> the arguments the model asked for, over the trace's LLM spans (LangChain's LLMResult)."""
    found: dict[str, Any] = {}
    for s in spans:
        if s.get("span_kind") == "LLM" and '"tool_calls"' in str(s.get("output_value") or ""):
            found.update(langchain_requested_arguments(s))
    return found


def _call_arguments(span: SpanRow, requested: Mapping[str, Any]) -> Any:
    """A TOOL span's arguments; when it recorded a bare value, the arguments the model asked for in the call it
    answered. @arizeai/openinference-instrumentation-langchain 4.1 (LangChain.js) records a tool whose input has
    one string value as that value alone (``ORD-9`` for ``{"order_id": "ORD-9"}``), the name lost."""
    arguments = tool_arguments(span)
    if isinstance(arguments, (dict, list)) or not requested:
        return arguments
    call_id = langchain_tool_call_id(span)
    return requested.get(call_id, arguments) if call_id else arguments


def _tool_call(span: SpanRow, limit: int, requested: Mapping[str, Any]) -> dict[str, Any]:
    a = _attrs(span)
    result = span.get("output_value")
    if result in (None, ""):
        result = _get(a, "gen_ai.tool.call.result")
    call: dict[str, Any] = {
        "span_id": span.get("span_id"),
        "name": _tool_name(span) or span.get("name"),
        "arguments": _clip(_call_arguments(span, requested), limit),
        "result": _clip(_maybe_json(tool_message_content(_maybe_json(result))), limit),
        "status": span.get("status_code"),
    }
    error = span.get("status_message") or _exception_message(span)
    if error or span.get("status_code") == "ERROR":
        call["error"] = _clip(error or "", limit)
    return call


def _documents(span: SpanRow, limit: int) -> list[dict[str, Any]]:
    a = _attrs(span)
    docs = []
    for item in _as_list(_get(a, "retrieval.documents")):
        d = item.get("document", item) if isinstance(item, dict) else None
        if isinstance(d, dict):
            docs.append({"id": d.get("id"), "score": d.get("score"), "content": _clip(d.get("content"), limit)})
    fill_document_ids(span, docs)
    if not docs:
        for d in _as_list(_get(a, "gen_ai.retrieval.documents")):
            if isinstance(d, dict):
                docs.append({"id": d.get("id"), "score": d.get("score"),
                             "content": _clip(d.get("content"), limit)})
    for d in docs:
        d["span_id"] = span.get("span_id")
    return docs


def available_tools(spans: Sequence[SpanRow]) -> dict[str, Any]:
    """Tool name -> declared JSON schema of its parameters, from ``llm.tools``, ``gen_ai.tool.definitions``,
    ``llm.request.functions`` or the Vercel AI SDK's ``ai.prompt.tools``, else from a TOOL span's own
    ``tool.parameters`` schema (OpenAI Agents over Chat Completions)."""
    tools: dict[str, Any] = {}
    for s in spans:
        a = _attrs(s)
        for item in _as_list(_get(a, "llm.tools")):
            raw = _get(item, "tool.json_schema") if isinstance(item, dict) else item
            spec = _maybe_json(raw)
            if isinstance(spec, dict):
                fn = spec.get("function") if isinstance(spec.get("function"), dict) else spec
                if fn.get("name"):
                    tools.setdefault(str(fn["name"]), fn.get("parameters") or fn.get("input_schema") or {})
        for spec in _as_list(_get(a, "gen_ai.tool.definitions")) + _as_list(_get(a, "llm.request.functions")):
            if isinstance(spec, dict):  # GenAI, else OpenLLMetry's older llm.request.functions.<i>.*
                fn = spec.get("function") if isinstance(spec.get("function"), dict) else spec
                if fn.get("name"):
                    tools.setdefault(str(fn["name"]), _maybe_json(fn.get("parameters", fn.get("arguments"))) or {})
        for spec in vercel_tool_definitions(s):
            if isinstance(spec, dict) and spec.get("name"):
                tools.setdefault(str(spec["name"]), spec.get("inputSchema") or spec.get("parameters") or {})
    for s in spans:
        name, schema = s.get("tool_name"), tool_span_schema(s)
        if isinstance(name, str) and name and schema is not None and not tools.get(name):
            tools[name] = schema
    return tools


def _requested_calls(spans: Sequence[SpanRow], limit: int) -> list[dict[str, Any]]:
    """The tool calls the model asked for, in a trace without TOOL spans (the app ran them unrecorded).

    Asked for in an LLM's output messages or, when the span that asked is not in the trace, seen in a
    later call's input after its last user message; each with its ``result`` when a later call's input
    carries the tool message answering it (by tool call id, else in order).
    """
    calls: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    in_order: list[Any] = []  # results without ids: the longest run wins (each call's input repeats the earlier ones)

    def add(span: SpanRow, c: Mapping[str, Any], echoed: bool) -> None:
        cid = c.get("id")
        if cid and cid in by_id:
            return
        arguments = _clip(c["arguments"], limit)
        if echoed and not cid and any(k["name"] == c["name"] and k["arguments"] == arguments for k in calls):
            return
        call = {"span_id": span.get("span_id"), "name": c["name"], "arguments": arguments, "requested_only": True}
        if cid:
            by_id[cid] = call
        calls.append(call)

    for s in spans:
        a = _attrs(s)
        inputs = span_input_messages(s, ids=True)
        last_user = max((i for i, m in enumerate(inputs) if m.get("role") == "user"), default=-1)
        unnamed = []
        for msg in inputs[last_user + 1:]:  # this turn's calls so far and what they returned
            for c in msg.get("tool_calls", []):
                add(s, c, True)
            for rid, result in msg.get("tool_results", []):
                if rid:
                    results.setdefault(str(rid), result)
                else:
                    unnamed.append(result)
        if len(unnamed) > len(in_order):
            in_order = unnamed
        outs = [_oi_message(i, True) for i in _as_list(_get(a, "llm.output_messages"))]
        outs += [_genai_message(i, True) for i in _as_list(_get(a, "gen_ai.output.messages"))]
        outs += [_genai_message(i, True) for i in vercel_output_messages(s)]
        for out in outs:
            for c in (out or {}).get("tool_calls", []):
                add(s, c, False)
    for cid, call in by_id.items():
        if str(cid) in results:
            call["result"] = _clip(_maybe_json(results[str(cid)]), limit)
    for call, result in zip((c for c in calls if "result" not in c), in_order):
        call["result"] = _clip(_maybe_json(result), limit)
    return calls


def extract_context(spans: Sequence[SpanRow], limit: int = 2000) -> dict[str, Any]:
    """Retrieved documents, retrieval queries, tool calls (executed, else requested) and available tools."""
    documents: list[dict[str, Any]] = []
    queries: list[str] = []
    calls: list[dict[str, Any]] = []
    requested = _requested_arguments(spans)
    for s in spans:
        kind = s.get("span_kind")
        if kind == "RETRIEVER":
            documents.extend(_documents(s, limit))
            q = s.get("input_value") or _get(_attrs(s), "gen_ai.retrieval.query.text")
            if q:
                queries.append(_clip(str(q), limit))
        elif kind == "TOOL":
            calls.append(_tool_call(s, limit, requested))
    if not calls:  # no TOOL spans: the calls the model asked for
        calls = _requested_calls(spans, limit)
    context: dict[str, Any] = {"documents": documents, "tool_calls": calls,
                               "available_tools": sorted(available_tools(spans))}
    if queries:
        context["retrieval_queries"] = queries
    return context


def _final_answer(spans: Sequence[SpanRow], limit: int) -> Any:
    """The root's output, else the last LLM answer; a raw model response (an LLM span's output.value:
    OpenAI / Anthropic JSON, LangChain's LLMResult or AI message, GenAI output messages) is read down
    to the text it answers."""
    root = _root(spans)
    if root is not None and root.get("output_value"):
        value = _maybe_json(root["output_value"])
        if isinstance(value, dict) and "outputs" in value and value.keys() <= {"outputs", "kwargs"}:
            value = value["outputs"]  # OpenLLMetry's traceloop.entity.output: {outputs, kwargs}
        text = response_text(value) if isinstance(value, (dict, list)) else None
        if text == "":
            return None  # a model response that answered nothing (tool calls only): no answer was said
        return _clip(text if text else value, limit)
    for s in reversed(spans):
        if s.get("span_kind") == "LLM":
            text = span_output_text(s) or assistant_text(s)
            if text:
                return _clip(text, limit)
            if s.get("output_value"):
                value = _maybe_json(s["output_value"])
                if isinstance(value, (dict, list)) and response_text(value) == "":
                    return None  # the last model call asked for tools and said nothing
                return _clip(value, limit)
    return None


def _call_summary(span: SpanRow, limit: int, requested: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "span_id": span.get("span_id"), "name": span.get("name"), "kind": span.get("span_kind"),
        "status": span.get("status_code"), "duration_ms": span.get("duration_ms"),
    }
    if span.get("span_kind") == "TOOL":
        out["tool"] = _tool_name(span)
        out["arguments"] = _clip(_call_arguments(span, requested), limit)
    if span.get("output_value"):
        output = _maybe_json(span["output_value"])
        if span.get("span_kind") == "TOOL":
            output = _maybe_json(tool_message_content(output))
        out["output"] = _clip(output, limit)
    elif span.get("span_kind") == "LLM" and span_output_text(span):
        out["output"] = _clip(span_output_text(span), limit)
    error = span.get("status_message") or _exception_message(span)
    if error:
        out["error"] = _clip(error, limit)
    if span.get("llm_finish_reason"):
        out["finish_reason"] = span["llm_finish_reason"]
    return out


def extract_observed(spans: Sequence[SpanRow], detections: Sequence[Detection], limit: int = 2000) -> dict[str, Any]:
    """What the agent did and said: final answer, tool sequence, failing calls, detections."""
    by_id = {s.get("span_id"): s for s in spans}
    failing, seen = [], set()
    requested = _requested_arguments(spans)
    for d in detections:
        if d.span_id in by_id and d.span_id not in seen:
            seen.add(d.span_id)
            failing.append(_call_summary(by_id[d.span_id], limit, requested))
    return {
        "final_answer": _final_answer(spans, limit),
        "tool_sequence": [_tool_name(s) or s.get("name") for s in spans if s.get("span_kind") == "TOOL"]
        or [c["name"] for c in _requested_calls(spans, limit)],  # no TOOL spans: what the model called
        "failing_calls": failing,
        "detections": [{"detector": d.detector, "span_id": d.span_id, "message": d.message,
                        "evidence": _clip(dict(d.evidence), limit)} for d in detections],
    }


def _first_model(spans: Sequence[SpanRow], prefer: Sequence[str]) -> str | None:
    """The failing spans' model, else the first model call's, else any span's.

    A model call names the model that answered (``gpt-4o-2024-08-06``); an agent span names at most the one
    it was configured to request (``gpt-4o``), which need not be the one that ran.
    """
    by_id = {s.get("span_id"): s for s in spans}
    for sid in prefer:
        s = by_id.get(sid)
        if s is not None and s.get("llm_model_name"):
            return s["llm_model_name"]
    for s in sorted(spans, key=lambda s: s.get("span_kind") != "LLM"):
        if s.get("llm_model_name"):
            return s["llm_model_name"]
    return None


def _first_attr(spans: Sequence[SpanRow], *keys: str) -> Any:
    for s in spans:
        for key in keys:
            v = _get(_attrs(s), key)
            if v not in (None, ""):
                return v
    return None


def _system_prompt(spans: Sequence[SpanRow]) -> str | None:
    """The first model call's system prompt: its system messages, else GenAI ``gen_ai.system_instructions``."""
    for s in spans:
        if s.get("span_kind") != "LLM":
            continue
        texts = [m["content"] for m in span_input_messages(s) if m.get("role") == "system" and m.get("content")]
        if not texts:
            texts = [t for t in (_content_text(p) for p in _as_list(_get(_attrs(s), "gen_ai.system_instructions"))) if t]
        if texts:
            return "\n".join(texts)
    return None


def extract_source(spans: Sequence[SpanRow], detections: Sequence[Detection], limit: int = 2000) -> dict[str, Any]:
    """Where the failure came from: trace, spans, service, model, prompt, agent, session."""
    span_ids = list(dict.fromkeys(d.span_id for d in detections))
    root = _root(spans) or {}
    resource = root.get("resource_attributes") if isinstance(root.get("resource_attributes"), dict) else {}
    template = _first_attr(spans, "llm.prompt_template.template")
    system = _system_prompt(spans)
    session = (next((s.get("session_id") for s in spans if s.get("session_id")), None)
               or _first_attr(spans, "gen_ai.conversation.id"))
    return {
        "trace_id": detections[0].trace_id if detections else root.get("trace_id"),
        "span_ids": span_ids,
        "detector": detections[0].detector if detections else None,
        "service": root.get("service_name") or next((s.get("service_name") for s in spans if s.get("service_name")), None),
        "service_version": _get(resource, "service.version"),
        "model": _first_model(spans, span_ids),
        "prompt_template": _clip(template, limit) if template else None,
        "system_prompt": _clip(system, limit) if system else None,
        "prompt_version": _first_attr(spans, "llm.prompt_template.version"),
        "prompt_id": _first_attr(spans, "prompt.id", "gen_ai.prompt.name"),
        # OpenLLMetry's @workflow name and the Vercel AI SDK's telemetry functionId are the names those
        # producers give the agent when no agent.name is recorded.
        "agent_name": _first_attr(spans, "agent.name", "gen_ai.agent.name", "traceloop.workflow.name",
                                  "ai.telemetry.functionId"),
        "agent_version": _first_attr(spans, "gen_ai.agent.version", "agent.version"),
        "session": session,  # DESIGN's name for it
        "session_id": session,  # the spans column's name, as the report and earlier rows read it
    }


# ---------------------------------------------------------------------------
# expected drafts

def _evidence(detections: Sequence[Detection], *keys: str) -> Any:
    for d in detections:
        for key in keys:
            v = d.evidence.get(key) if isinstance(d.evidence, dict) else None
            if v not in (None, "", []):
                return v
    return None


_REFUSAL = re.compile(
    r"(?i)\b(i(?:'| a)?m sorry|i apologi[sz]e|i (?:cannot|can't|can not|am unable to|'m unable to|won't be able to)"
    r"|unfortunately,? i|as an ai)\b[^.!?\n]{0,80}"
)


def _refusal_phrase(detections: Sequence[Detection], observed: Mapping[str, Any]) -> str | None:
    phrase = _evidence(detections, "phrase", "matched", "match", "refusal")
    if isinstance(phrase, str):
        return phrase
    answer = observed.get("final_answer")
    if isinstance(answer, str):
        m = _REFUSAL.search(answer)
        if m:
            return m.group(0).strip()
        first = re.split(r"(?<=[.!?])\s", answer.strip(), maxsplit=1)[0]
        return first[:120] or None
    return None


def _banned_citation(cited: str, retrieved: Iterable[str], answer: str) -> str | None:
    """The phrase a ``must_not`` bans for an invented citation: the id itself, unless it is part of a
    retrieved id (must_not matches substrings, and ``doc-1`` would fail an answer citing the retrieved
    ``doc-12``); then the bracketed citation as the answer wrote it (``[doc-1]``), else nothing."""
    if not any(cited.casefold() in r.casefold() for r in retrieved):
        return cited
    m = re.search(r"[\[(]\s*" + re.escape(cited) + r"\s*[\])]", answer, re.IGNORECASE)
    return m.group(0) if m else None


def failing_tool(spans: Sequence[SpanRow], detections: Sequence[Detection]) -> str | None:
    """The tool a failure is about: a detection span that is a TOOL, else the evidence's tool name."""
    by_id = {s.get("span_id"): s for s in spans}
    for d in detections:
        s = by_id.get(d.span_id)
        if s is not None and s.get("span_kind") == "TOOL" and _tool_name(s):
            return _tool_name(s)
    name = _evidence(detections, "tool_name", "tool")
    return str(name) if isinstance(name, str) and name else None


def _bad_calls_schemas(spans: Sequence[SpanRow], detections: Sequence[Detection]) -> dict[str, Any]:
    """Tool -> schema for each named call of a multi-call ``tool_argument`` finding (``{"calls": [...]}``):
    the schema the call broke, else the tool's declared one, else ``{}`` (any JSON)."""
    declared: dict[str, Any] | None = None
    out: dict[str, Any] = {}
    for d in detections:
        calls = d.evidence.get("calls") if isinstance(d.evidence, dict) else None
        for call in calls if isinstance(calls, list) else []:
            name = call.get("tool") if isinstance(call, dict) else None
            if not isinstance(name, str) or not name:
                continue
            schema = call.get("schema")
            if schema is None:
                declared = available_tools(spans) if declared is None else declared
                schema = declared.get(name)
            if schema is not None or name not in out:
                out[name] = schema if schema is not None else {}
    return out


def _gave_the_answer(spans: Sequence[SpanRow], detections: Sequence[Detection]) -> bool:
    """Whether a detection is on the span that gave the trace's answer: the root or the last model call
    (not a tool's output, a step's, or a router's JSON before the answer)."""
    root = _root(spans)
    llms = [s.get("span_id") for s in spans if s.get("span_kind") == "LLM"]
    answering = {root.get("span_id") if root else None, llms[-1] if llms else None} - {None}
    return any(d.span_id in answering for d in detections)


def _response_format_schema(spans: Sequence[SpanRow]) -> Any:
    for s in spans:
        params = _maybe_json(_get(_attrs(s), "llm.invocation_parameters"))
        if isinstance(params, dict):
            rf = params.get("response_format")
            if isinstance(rf, dict):
                js = rf.get("json_schema")
                if isinstance(js, dict):
                    return js.get("schema", js)
            text_format = _get(params, "text.format")  # the Responses API: {type: json_schema, name, schema}
            if isinstance(text_format, dict) and isinstance(text_format.get("schema"), dict):
                return text_format["schema"]
        structured = _maybe_json(_get(_attrs(s), "gen_ai.request.structured_output_schema"))  # OpenLLMetry
        if isinstance(structured, dict) and structured.get("type") != "json_object":
            js = structured.get("json_schema")
            return js.get("schema", js) if isinstance(js, dict) else structured
    return None


def draft_expected(
    failure_mode: str,
    spans: Sequence[SpanRow],
    detections: Sequence[Detection],
    context: Mapping[str, Any],
    observed: Mapping[str, Any],
) -> dict[str, Any]:
    """A draft ``expected_behavior`` for the failure mode; the reviewer edits it before promoting.

    | failure_mode        | draft |
    |---------------------|-------|
    | tool_invocation     | ``required_tool_sequence: [tool]``, ``tool_calls_succeed: [tool]`` |
    | tool_argument       | ``tool_arguments_schema: {tool: declared schema}``, ``required_tool_sequence: [tool]`` |
    | retrieval_miss      | ``min_retrieved_documents: 1`` (+ ``min_document_score`` from evidence) |
    | hallucination       | ``cited_ids_within_retrieved: true``, ``must_not: [invented ids]`` (``[id]`` when inside a retrieved id; none after an empty retrieval), ``no_facts_without_retrieval`` after one |
    | format_violation    | ``output_schema`` (evidence, else response_format), ``output_mime_type``; none when the output that broke was not the answer (a tool's, a step's) |
    | truncation          | ``finish_reason_not: [length]`` |
    | refusal_overreach   | ``must_not: [the refusal phrase]``; ``finish_reason_not: [refusal]`` for a provider's refusal |
    | latency_breach      | ``max_duration_ms: {KIND: threshold}`` (each kind its own threshold) |
    | loop                | ``max_identical_calls: N`` (evidence; ``max_repeats`` - 1; else 2, unless ``max_steps``), ``max_steps``, ``required_tool_sequence: [tool]`` |
    | blast_radius_breach | ``must_not_call_after_error: [tool]`` |
    | llm_error           | ``no_error_spans: true`` |
    | negative_feedback   | ``feedback_passes: [annotation names]`` |
    """
    tool = failing_tool(spans, detections)
    exp: dict[str, Any] = {}
    if failure_mode == "tool_invocation":
        if tool:
            exp["required_tool_sequence"] = [tool]
            exp["tool_calls_succeed"] = [tool]
        else:
            exp["no_error_spans"] = True
    elif failure_mode == "tool_argument":
        per_tool = _bad_calls_schemas(spans, detections)
        if per_tool and tool is None:
            # One model answer with several bad calls (parallel tool calls): the evidence lists them under
            # `calls`, with no single tool; each tool keeps its own declared schema.
            exp["tool_arguments_schema"] = per_tool
            if len(per_tool) == 1:
                exp["required_tool_sequence"] = list(per_tool)
        else:
            schema = _evidence(detections, "schema", "json_schema", "tool_schema")
            if schema is None and tool:
                schema = available_tools(spans).get(tool)
            exp["tool_arguments_schema"] = {tool or "*": schema if schema is not None else {}}
            if tool:
                exp["required_tool_sequence"] = [tool]
    elif failure_mode == "retrieval_miss":
        exp["min_retrieved_documents"] = 1
        score = _evidence(detections, "min_score", "score_threshold", "threshold")
        if isinstance(score, (int, float)):
            exp["min_document_score"] = score
    elif failure_mode == "hallucination":
        exp["cited_ids_within_retrieved"] = True
        invented = _evidence(detections, "missing_ids", "unknown_ids", "invented_ids", "cited_ids")
        retrieved = {str(d.get("id")) for d in context.get("documents", []) if d.get("id") is not None}
        # After an empty retrieval a cited id may be a real document the retriever failed to return: banning
        # it failed the fixed agent that retrieves and cites it, and cited_ids_within_retrieved holds already.
        if isinstance(invented, list) and retrieved:
            answer = _evidence(detections, "answer")
            answer = answer if isinstance(answer, str) else str(observed.get("final_answer") or "")
            bad = [_banned_citation(str(i), retrieved, answer) for i in invented if str(i) not in retrieved]
            if any(bad):
                exp["must_not"] = [b for b in bad if b]
        if not retrieved:
            exp["no_facts_without_retrieval"] = True
    elif failure_mode == "format_violation":
        if _gave_the_answer(spans, detections):  # the gate's output_* keys judge the run's answer only
            schema = _evidence(detections, "schema", "output_schema", "json_schema")
            exp["output_schema"] = schema if schema is not None else (_response_format_schema(spans) or {})
            exp["output_mime_type"] = "application/json"
    elif failure_mode == "truncation":
        exp["finish_reason_not"] = ["length"]
    elif failure_mode == "refusal_overreach":
        if _evidence(detections, "finish_reason") == "refusal" and _evidence(detections, "phrase") is None:
            exp["finish_reason_not"] = ["refusal"]  # the provider's own refusal (Claude's stop_reason), often no text
        else:
            phrase = _refusal_phrase(detections, observed)
            exp["must_not"] = [phrase] if phrase else []
    elif failure_mode == "latency_breach":
        by_id = {s.get("span_id"): s for s in spans}
        limits: dict[str, Any] = {}
        threshold = _evidence(detections, "threshold_ms", "limit_ms")
        for d in detections:  # each kind keeps its own ceiling: a slow RETRIEVER's 5 s is not the TOOL's
            kind = (by_id.get(d.span_id) or {}).get("span_kind") or "UNKNOWN"
            own = _evidence([d], "threshold_ms", "limit_ms")
            limits[kind] = own if own is not None else limits.get(kind, threshold)
        exp["max_duration_ms"] = limits or {"UNKNOWN": threshold}
    elif failure_mode == "loop":
        limit = _evidence(detections, "max_identical_calls", "limit")
        repeats = _evidence(detections, "max_repeats")  # repeated_tool_call fires at max_repeats identical calls
        if not (isinstance(limit, int) and limit > 0) and isinstance(repeats, int) and repeats >= 2:
            limit = repeats - 1
        steps = _evidence(detections, "max_steps")
        if (isinstance(limit, int) and limit > 0) or not isinstance(steps, int):
            exp["max_identical_calls"] = limit if isinstance(limit, int) and limit > 0 else 2
        if isinstance(steps, int):  # too many steps: the steps are the assertion, not a guess at repeats
            exp["max_steps"] = steps
        if tool:
            exp["required_tool_sequence"] = [tool]
    elif failure_mode == "blast_radius_breach":
        exp["must_not_call_after_error"] = [tool] if tool else []
    elif failure_mode == "llm_error":
        exp["no_error_spans"] = True
    elif failure_mode == "negative_feedback":
        name = _evidence(detections, "annotation", "name", "evaluation")
        names = [name] if isinstance(name, str) else []
        for d in detections:  # the feedback detectors list each negative record (its name) under "feedback"
            records = d.evidence.get("feedback") if isinstance(d.evidence, dict) else None
            for r in records if isinstance(records, list) else []:
                if isinstance(r, dict) and isinstance(r.get("name"), str) and r["name"]:
                    names.append(r["name"])
        exp["feedback_passes"] = list(dict.fromkeys(names))
    return exp


# ---------------------------------------------------------------------------
# the processor

def _intent(inp: Mapping[str, Any], tool: str | None, span_name: str, words: int) -> str:
    if tool:
        return f"tool:{normalize_text(tool)}"[:80]
    text = normalize_text(str(inp.get("user_message") or ""))
    toks = _WORD.findall(text)[:words]
    if toks:
        return ("text:" + " ".join(toks))[:80]
    return f"span:{normalize_text(span_name)}"[:80]


#: Most to least severe, for the blast radius of a group of detections.
_BLAST_RANK = ("irreversible_write", "customer_visible", "reversible_write", "internal_visible", "no_external_effect")


#: Emitted candidates remembered until the store shows them.
_UNSETTLED_MAX = 2000


def _worst(values: Iterable[str], order: Sequence[str]) -> str:
    vals = list(values)
    return min(vals, key=lambda v: order.index(v) if v in order else len(order))


@dataclasses.dataclass(frozen=True)
class PromotionConfig:
    near_duplicate_threshold: float = 0.8
    max_per_intent: int = 20
    minhash_permutations: int = 64
    shingle_words: int = 3
    intent_words: int = 4
    max_text_chars: int = 2000


class PromotionProcessor:
    """Trace-stage step: detections -> candidates, deduped, near-duplicates marked, capped per intent.

    ``stats`` (cumulative since start, for metrics and the per-batch log line):
    ``new`` candidates emitted for the first time (duplicates included), ``duplicates``
    among them, ``recurrences`` of known candidates, ``capped`` dropped by the per-intent cap.
    """

    kind: ClassVar[str] = "trace"

    def __init__(self, config: PromotionConfig | None = None) -> None:
        self.config = config or PromotionConfig()
        self.stats = {"new": 0, "duplicates": 0, "recurrences": 0, "capped": 0}
        # Candidates emitted that the store did not show yet, oldest first (see process_traces).
        self._unsettled: dict[str, Candidate] = {}

    @classmethod
    def from_config(cls, options: Mapping[str, Any] | None, *, path: str = "processors.promotion") -> PromotionProcessor:
        opts = OptionReader(options, path)
        d = PromotionConfig()
        threshold = opts.number("near_duplicate_threshold", d.near_duplicate_threshold)
        if not 0 < threshold <= 1:
            opts.problem("near_duplicate_threshold", f"must be over 0 and at most 1, got {threshold}")
        cap = opts.int("max_per_intent", d.max_per_intent)
        if cap < 0:
            opts.problem("max_per_intent", f"must be 0 (no cap) or more, got {cap}")
        perms = opts.int("minhash_permutations", d.minhash_permutations)
        if perms not in (64, 128):
            opts.problem("minhash_permutations", f"expected 64 or 128, got {perms}")
        shingle = opts.int("shingle_words", d.shingle_words)
        if not 1 <= shingle <= 10:
            opts.problem("shingle_words", f"expected 1 to 10, got {shingle}")
        words = opts.int("intent_words", d.intent_words)
        if not 1 <= words <= 20:
            opts.problem("intent_words", f"expected 1 to 20, got {words}")
        chars = opts.int("max_text_chars", d.max_text_chars)
        if chars < 100:
            opts.problem("max_text_chars", f"expected 100 or more, got {chars}")
        opts.finish()
        return cls(PromotionConfig(threshold, cap, perms, shingle, words, chars))

    # -- building -----------------------------------------------------------

    def build_candidate(self, spans: Sequence[SpanRow], detections: Sequence[Detection],
                        *, with_signature: bool = True) -> Candidate:
        """One candidate from the detections of one (trace, detector, failure_mode). Pure.

        ``with_signature=False`` leaves the MinHash signature empty: it is only needed
        when the candidate turns out to be new, and it is the costliest part.
        """
        cfg = self.config
        first = detections[0]
        inp = extract_input(spans)
        by_id = {s.get("span_id"): s for s in spans}
        fail_span = by_id.get(first.span_id) or {}
        span_name = _tool_name(fail_span) or str(fail_span.get("name") or "")
        context = extract_context(spans, cfg.max_text_chars)
        observed = extract_observed(spans, detections, cfg.max_text_chars)
        tool = failing_tool(spans, detections)
        return Candidate(
            detector=first.detector,
            failure_mode=first.failure_mode,
            severity=_worst((d.severity for d in detections), SEVERITIES),
            blast_radius=_worst((d.blast_radius for d in detections), _BLAST_RANK),
            input_hash=input_hash(inp, span_name),
            input=inp,
            context=context,
            observed=observed,
            expected=draft_expected(first.failure_mode, spans, detections, context, observed),
            source=extract_source(spans, detections, cfg.max_text_chars),
            trace_id=first.trace_id,
            intent=_intent(inp, tool, span_name, cfg.intent_words),
            signature=self.signature(inp) if with_signature else [],
            seen_at=max((r for r in (s.get("received_at") for s in spans) if isinstance(r, dt.datetime)), default=None),
        )

    def signature(self, inp: Any) -> list[int]:
        """The MinHash signature of a candidate input (what near-duplicates are found by)."""
        cfg = self.config
        return minhash(shingles(_shingle_text(inp), cfg.shingle_words), cfg.minhash_permutations)

    # -- the stage ----------------------------------------------------------

    def process_traces(self, batch: TraceBatch, store: StoreReader) -> TraceBatch:
        """Add one candidate per (trace, detector, failure_mode) to ``batch.candidates``.

        Never mutates spans or detections. Deterministic: traces in order of their first
        span's start time (then id), groups by (detector, failure_mode).
        """
        groups: dict[tuple[str, str, str], list[Detection]] = {}
        for d in batch.detections:
            if d.trace_id in batch.traces:
                groups.setdefault((d.trace_id, d.detector, d.failure_mode), []).append(d)
        if not groups:
            return batch

        def trace_order(tid: str) -> tuple[str, str]:
            spans = batch.traces[tid]
            start = spans[0].get("start_time") if spans else None
            return (start.isoformat() if hasattr(start, "isoformat") else str(start or ""), tid)

        keys = sorted(groups, key=lambda k: (trace_order(k[0]), k[1], k[2]))
        built = [self.build_candidate(batch.traces[k[0]], groups[k], with_signature=False) for k in keys]

        # The last round's candidates may still be on their way to the store: the ones it does not
        # show yet count as if they were there, or two near-duplicates judged a round apart would
        # both be new (and the cap per intent passed).
        ids = {c.candidate_id for c in built} | set(self._unsettled)
        existing = {r["candidate_id"]: r for r in store.query(EXISTING_SQL, [packed(sorted(ids))])}
        for cid in [cid for cid in self._unsettled if cid in existing]:
            del self._unsettled[cid]
        unsettled = list(self._unsettled.values())
        indexes: dict[str, LshIndex] = {}
        intent_counts: dict[tuple[str, str], int] = {}
        emitted: dict[str, Candidate] = {}
        cfg = self.config
        for cand in built:
            cid = cand.candidate_id
            if cid in existing or cid in emitted or cid in self._unsettled:
                prior = existing.get(cid)
                if prior is not None:
                    cand.status, cand.duplicate_of = prior["status"], prior.get("duplicate_of")
                else:
                    earlier = emitted.get(cid) or self._unsettled[cid]
                    cand.status, cand.duplicate_of = earlier.status, earlier.duplicate_of
                batch.candidates.append(cand)
                self.stats["recurrences"] += 1
                continue
            mode = cand.failure_mode
            cand.signature = self.signature(cand.input)
            if mode not in indexes:
                indexes[mode] = LshIndex()
                for r in store.query(SIGNATURES_SQL, [mode, cfg.minhash_permutations]):
                    indexes[mode].add(r["candidate_id"], list(r["signature"]), r["input_hash"])
                for u in unsettled:
                    if u.failure_mode == mode and u.status != "duplicate" and len(u.signature) == cfg.minhash_permutations:
                        indexes[mode].add(u.candidate_id, u.signature, u.input_hash)
            best = indexes[mode].best(cand.signature, cfg.near_duplicate_threshold, cand.input_hash)
            key = (mode, cand.intent)
            if key not in intent_counts:
                rows = store.query(INTENT_COUNT_SQL, [mode, cand.intent])
                intent_counts[key] = (int(rows[0]["n"]) if rows else 0) + sum(
                    1 for u in unsettled if (u.failure_mode, u.intent) == key)
            if cfg.max_per_intent and intent_counts[key] >= cfg.max_per_intent:
                self.stats["capped"] += 1
                continue
            intent_counts[key] += 1
            if best is not None:
                cand.status, cand.duplicate_of = "duplicate", best[1]
                self.stats["duplicates"] += 1
            else:
                indexes[mode].add(cid, cand.signature, cand.input_hash)
            emitted[cid] = cand
            batch.candidates.append(cand)
            self.stats["new"] += 1
        self._unsettled.update(emitted)
        while len(self._unsettled) > _UNSETTLED_MAX:  # a write that failed: its traces are judged again
            del self._unsettled[next(iter(self._unsettled))]
        return batch

    def shutdown(self) -> None:
        """Nothing to release."""
