"""The PII and secret sanitizer: the ``pii`` span-stage processor.

Every column of :data:`~tracesieve.storage.schema.TEXT_SPAN_COLUMNS` is scanned;
each match is replaced by ``<TYPE>`` or, with ``secret_key``, by a keyed
pseudonym ``<TYPE:hhhhhh>`` (first 6 hex of HMAC-SHA256(key, "TYPE:value"), so
the same value gets the same token in every span). Only the matched substring
changes: JSON columns are never re-serialised and stay valid JSON. The span's
``pii_redactions`` column receives the count per type, never a value.

How it is fast (the kernel is columnar, the seam is batch in, batch out):

1. all text columns of a batch are concatenated and tested by RE2
   (``pyarrow.compute``) in one call against the *trigger* pattern: small,
   literal-anchored patterns (``@``, ``eyJ``, ``password=``, digit shapes, ...)
   whose automaton is cheap to build per call; a trigger fires wherever some
   rule could accept a value;
2. on the flagged cells only, RE2 wraps every trigger in marker characters;
3. Python re-matches the exact combined pattern (the built-in rules of
   :mod:`.pii_patterns`) at the few positions where a value containing that
   trigger can start, and runs the rule's validator (Luhn, mod-97, JSON
   escapes, HMAC, ...). Rows without a trigger never reach Python.

``Sanitizer.redact`` (one string) runs the exact pattern over the whole text;
the columnar path gives the same result (a test holds them equal on the corpus).

Options (``processors.pii``)::

    secret_key: "..."                 # keyed pseudonyms instead of bare <TYPE>
    extra_patterns: [{name: EMPLOYEE_ID, regex: "EMP-[0-9]{6}"}]
    skip_keys: [http.user_agent]      # attribute keys (leaf or full dotted) left unscanned
    disable_types: [IP]               # built-in types to turn off

Thread safety: a processor is immutable after ``from_config`` except a bounded
pseudonym cache; ``process`` may run on several receiver threads at once.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import re
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from tracesieve.processors.options import OptionReader
from tracesieve.processors.pii_patterns import BACK_CHARS, BUILTIN_RULES, KNOWN_TYPES, Rule
from tracesieve.storage.errors import ConfigError
from tracesieve.storage.schema import JSON_SPAN_COLUMNS, TEXT_SPAN_COLUMNS

__all__ = ["PiiProcessor", "Sanitizer", "ExtraPattern"]

_START, _END = "\x01", "\x02"
_STAND_IN = "\x03"   # takes the place of a marker character the text itself holds (see _redact_marked)
_TYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")
_LEADING_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")
_CACHE_MAX = 65536
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_SLACK = 96          # how far past a trigger the exact pass looks for the start of its value
# How far before a trigger a value (its key, its local part) may start, where extra patterns are
# configured (their search from there is a scan). Without a bound, every trigger in a long run of word
# characters ("AB12" x 25,000: each an IBAN trigger) searched back to the last match. The built-in rules
# need none: they try each position once (Sanitizer._marked_matches).
_BACK_LIMIT = 256
_INSIDE_SLACK = 32  # how far past a rejected IBAN shape a value found inside it may run (a card: 23 characters)

#: Text columns that carry one attribute's value: skip_keys match them by this key.
COLUMN_KEYS = {
    "input_value": "input.value", "output_value": "output.value", "session_id": "session.id",
    "user_id": "user.id", "llm_model_name": "llm.model_name", "tool_name": "tool.name",
    "service_name": "service.name", "status_message": "status.message", "scope_name": "scope.name",
    "scope_version": "scope.version", "trace_state": "trace_state", "name": "name",
    "input_mime_type": "input.mime_type", "output_mime_type": "output.mime_type",
}

#: Columns that copy a value out of the span's attributes or its resource (decode lifts them), so
#: whatever they hold was counted once already where it came from.
LIFTED_COLUMNS = frozenset({"input_value", "output_value", "session_id", "user_id", "llm_model_name",
                            "llm_provider", "llm_finish_reason", "tool_name", "service_name",
                            "input_mime_type", "output_mime_type"})

# A tolerant JSON tokenizer for skip_keys and bare numbers: strings, punctuation, bare scalars.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^\s{}\[\],:"]+', re.DOTALL)


class ExtraPattern(Rule):
    """A user rule from ``extra_patterns``: the whole match is the value."""


def _python_flags(regex: str) -> str:
    """Turn leading global flags ``(?i)`` into a scoped group, which an alternation allows."""
    m = _LEADING_FLAGS.match(regex)
    if m:
        return f"(?{m.group(1)}:{regex[m.end():]})"
    return regex


def _re2_check(regex: str) -> str | None:
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), regex)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return f"not valid RE2 syntax (lookarounds and backreferences are not supported): {exc}"
    return None


def _backslash_run(text: str, end: int) -> int:
    n = 0
    while end - n > 0 and text[end - n - 1] == "\\":
        n += 1
    return n


#: What a key must contain to hold a value that its dots could cut in two (see key_holds_pii).
_KEY_SCREEN = re.compile(r"[@=:]|eyJ|[0-9]\.[0-9]")

#: Characters either side of a cut that safe_cut reads: more than any PII value the rules accept.
_CUT_CONTEXT = 4096


class Sanitizer:
    """Finds and replaces PII in text. Immutable after construction (but for a pseudonym cache).

    ``redact`` works on one string, ``redact_array`` on a whole Arrow column (the fast path).
    """

    def __init__(
        self,
        *,
        secret_key: str | bytes | None = None,
        extra_patterns: Sequence[tuple[str, str]] = (),
        skip_keys: Iterable[str] = (),
        disable_types: Iterable[str] = (),
    ) -> None:
        disabled = set(disable_types)
        rules: list[Rule] = [ExtraPattern(name, _python_flags(rx)) for name, rx in extra_patterns]
        rules += [r for r in BUILTIN_RULES if r.type not in disabled]
        self.rules = tuple(rules)
        self._has_extras = any(isinstance(r, ExtraPattern) for r in rules)
        self._key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        #: the key as configured (so the log can hide it); None without one
        self.secret_key = secret_key.decode(errors="replace") if isinstance(secret_key, bytes) else secret_key
        self._cache: dict[tuple[str, str], str] = {}
        self.skip_keys = tuple(tuple(k.split(".")) for k in skip_keys if k)

        py_parts, re2_parts = [], []
        self._value_groups: list[tuple[str, ...]] = []
        for i, rule in enumerate(self.rules):
            if isinstance(rule, ExtraPattern):
                body = f"(?P<_v{i}_0>{rule.pattern})"
                groups = (f"_v{i}_0",)
            else:
                counter = iter(range(10))
                body = re.sub(r"\(\?P<v[0-9]?>", lambda _m: f"(?P<_v{i}_{next(counter)}>", rule.pattern)
                groups = tuple(f"_v{i}_{j}" for j in range(body.count(f"(?P<_v{i}_")))
            self._value_groups.append(groups)
            py_parts.append(f"(?P<_a{i}>{body})")
            re2_parts.append(f"(?:{_NAMED_GROUP.sub('(?:', rule.pattern)})")
        self.enabled = bool(self.rules)
        self.python_pattern = "|".join(py_parts) or "(?!)"
        #: the exact pattern in RE2 syntax (same candidates as ``python_pattern``); kept for tests
        self.re2_pattern = "|".join(re2_parts)
        triggers = [r.pattern if isinstance(r, ExtraPattern) else r.trigger for r in self.rules]
        #: the column prefilter: fires wherever some rule could accept a value
        self.trigger_pattern = "|".join(f"(?:{_NAMED_GROUP.sub('(?:', t)})" for t in dict.fromkeys(triggers) if t)
        self._exact = re.compile(self.python_pattern, re.ASCII)
        self._rule_of_group = {f"_a{i}": i for i in range(len(self.rules))}

    # ------------------------------------------------------------------ one string

    def redact(self, text: str, *, json_text: bool = False, column_key: str | None = None) -> tuple[str, Counter]:
        """Return the redacted text and the count per type (empty Counter when nothing changed)."""
        if not self.enabled or not text or (column_key and self._skipped_path(column_key.split("."))):
            return text, Counter()
        # the triggers first, as for a column: the exact pass over a whole text is quadratic on a long run
        # of key characters (gate redacts an agent's stderr line, up to 64 KiB, with this)
        out, counts = self._redact_cells(pa.array([text], pa.string()), [json_text])
        return out[0].as_py(), counts[0] or Counter()

    # ------------------------------------------------------------------ one column

    def redact_array(
        self, arr: pa.Array | pa.ChunkedArray, json_text: bool, *, column_key: str | None = None,
    ) -> tuple[pa.Array, list[Counter | None]]:
        """Redact a string column. Returns the new column and, per row, a Counter (None: nothing found).

        Rows where no trigger fires are never touched by Python. Nulls stay null.
        """
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
        n = len(arr)
        if (not self.enabled or n == 0 or arr.null_count == n
                or (column_key and self._skipped_path(column_key.split(".")))):
            return arr, [None] * n
        return self._redact_cells(arr, [json_text] * n)

    def _redact_cells(self, arr: pa.Array, json_flags: Sequence[bool]) -> tuple[pa.Array, list[Counter | None]]:
        """One RE2 pass over ``arr`` (any mix of columns), then the exact pass on the cells it flags."""
        n = len(arr)
        counters: list[Counter | None] = [None] * n
        mask = pc.fill_null(pc.match_substring_regex(arr, self.trigger_pattern), False)
        hits = pc.indices_nonzero(mask).to_pylist()
        if not hits:
            return arr, counters
        subset = arr.filter(mask)
        originals = subset.to_pylist()
        marked = pc.replace_substring_regex(subset, self.trigger_pattern, _START + r"\0" + _END).to_pylist()
        new_values: list[str] = []
        changed = False
        for row, text, mk in zip(hits, originals, marked):
            out, counts = self._redact_marked(text, mk, json_flags[row])
            if counts:
                counters[row] = counts
                changed = True
            new_values.append(out)
        if not changed:
            return arr, counters
        return pc.replace_with_mask(arr, mask, pa.array(new_values, arr.type)), counters

    def _redact_marked(self, text: str, marked: str, json_text: bool) -> tuple[str, Counter]:
        """Exact pass near each trigger: the value starts at the trigger, or just before it, or at
        the start of the key/local-part run that ends at the trigger."""
        if _START in text or _END in text:
            # The text's own marker characters cannot be told from the markers: mark a copy where they are
            # another control character (same length and class), and apply its matches to the text. The
            # plain Python pass over the whole text was quadratic on long runs of key characters: 100 KB of
            # "1-" in a span name with a \x01 and a trigger in it held a span worker for 5 minutes.
            plain = text.replace(_START, _STAND_IN).replace(_END, _STAND_IN)
            marked = pc.replace_substring_regex(pa.array([plain], pa.string()), self.trigger_pattern,
                                                _START + r"\0" + _END)[0].as_py()
            return self._apply(text, self._marked_matches(plain, marked), json_text)
        return self._apply(text, self._marked_matches(text, marked), json_text)

    def _marked_matches(self, text: str, marked: str) -> list[re.Match[str]]:
        """The exact matches near each trigger of ``marked`` (``text`` with its triggers marked)."""
        exact = self._exact
        pieces = marked.split(_START)
        matches: list[re.Match[str]] = []
        covered = 0                      # the exact pass never looks before this again
        # Every start before this failed already: the match at a position does not depend on the trigger,
        # so the next trigger's back walk and tries stop here (each position is tried once).
        tried = 0
        ts = len(pieces[0])
        for piece in pieces[1:]:
            trig, _, rest = piece.partition(_END)
            te = ts + len(trig)
            if te > covered:
                bs = ts
                floor = max(covered, ts - _BACK_LIMIT) if self._has_extras else max(covered, tried)
                while bs > floor:
                    ch = text[bs - 1]
                    if ch in BACK_CHARS or (ch > "\x7f" and ch.isalpha()):
                        bs -= 1
                    elif ch == "\\" and text.startswith("u", bs):  # a \u escape inside the run (josé as jos\u00e9)
                        bs -= _backslash_run(text, bs)
                    elif ch == "'" and bs - 1 > floor and text[bs - 2].isalnum() and text[bs].isalnum():
                        bs -= 1      # an apostrophe inside a word (o'brien@example.com)
                    else:
                        break
                m = None
                if self._has_extras:
                    m0 = exact.search(text, max(floor, bs - 2), te + _SLACK)
                    if m0 is not None:
                        m = exact.match(text, m0.start())
                else:
                    # a built-in value starts right after its left context: the start of text, an
                    # escape, or a non-word character -- only those positions can begin a match. A
                    # digit trigger that began inside a word ("#A1234 4111 1111": the card trigger fired
                    # at "1234") holds the value's own trigger, which never fires apart: they run on
                    # inside it then.
                    stop = te if ts and text[ts - 1] in _WORD and text[ts].isdigit() else ts + 1
                    for q in range(max(floor, bs - 2), stop):
                        if text[q] in _WORD and q:
                            continue
                        m = exact.match(text, q)
                        if m is not None:
                            break
                    else:
                        tried = stop
                if m is not None and m.end() > m.start():
                    matches.append(m)
                    covered = m.end()
            ts = te + len(rest)
        return matches

    def _redact_python(self, text: str, json_text: bool) -> tuple[str, Counter]:
        return self._apply(text, self._exact.finditer(text), json_text)

    def _apply(self, text: str, matches: Iterable[re.Match[str]], json_text: bool) -> tuple[str, Counter]:
        counts: Counter = Counter()
        out: list[str] = []
        last = 0
        for type_, s, e, quote in self._accepted(text, matches, json_text):
            out.append(text[last:s])
            placeholder = self._placeholder(type_, text[s:e], json_text)
            out.append(f"{quote}{placeholder}{quote}" if quote else placeholder)
            last = e
            counts[type_] += 1
        if not counts:
            return text, counts
        out.append(text[last:])
        return "".join(out), counts

    def _accepted(
        self, text: str, matches: Iterable[re.Match[str]], json_text: bool,
    ) -> Iterator[tuple[str, int, int, str]]:
        """(type, start, end, quote) of each match that is PII to replace, in order, none overlapping.

        ``quote``: the match is (part of) a number outside any JSON string, such as an integer
        attribute holding a card number. Its whole token is replaced, by a quoted placeholder: a bare
        ``<CARD>`` would leave JSON that DuckDB refuses, and with it the whole commit. The same holds
        for JSON in a text column (a tool call's ``input.value``) and for JSON held in a JSON string
        (the arguments attribute), quoted there as ``\\"<CARD>\\"``: a tool call's valid arguments
        stay valid JSON, not a tool_argument failure of the sanitizer's making.
        """
        last = 0
        paths: tuple[list[int], list[int], list[tuple[str, ...]]] | None = None
        given_back: list[re.Match[str]] = []  # matches inside text a validator gave back (see below)
        rescanned: set[re.Match[str]] = set()  # found inside a rejected IBAN shape: never searched inside again
        # (start, end) of every match given back after a cut value: handed back once. Each cut value gave
        # back the next one, which was cut in turn, and every match the trigger pass found started that
        # chain again to the end of the run: 10 KB of "sig=a&" held a span worker for 4 s, 20 KB 17 s.
        handed_back: set[tuple[int, int]] = set()
        strings: dict[int, list[Any] | None] = {}  # JSON strings that may hold JSON (see _bare_in_string)
        queue = iter(matches)
        while True:
            m = given_back.pop(0) if given_back else next(queue, None)
            if m is None:
                break
            i = self._rule_of_group[m.lastgroup]  # type: ignore[index]
            rule = self.rules[i]
            for g in self._value_groups[i]:
                s = m.start(g)
                if s >= 0:
                    e = m.end(g)
                    break
            else:
                continue
            if s == e:
                continue
            if rule.validate is not None:
                found = rule.validate(text, s, e, json_text)
                if found is None:
                    if rule.type == "IBAN" and m not in rescanned:
                        # An IBAN shape that fails mod-97 ("GB00 4111 1111 1111 1111") may hold a card or
                        # a phone: the pass never looked inside it. Once: what it finds is not re-read.
                        inside = self._matches_between(text, s + 1, e, endpos=min(len(text), e + _INSIDE_SLACK))
                        rescanned.update(inside)
                        given_back = inside + given_back
                    elif rule.type == "SECRET" and text.startswith("&", s):
                        # "?password=&token=abc": no password, and the bare value read the next key; the
                        # pass went on after it. That key (and its value) starts at the "&".
                        # Once each: a run of "password=&password=&..." would start the chain again at each.
                        following = self._exact.match(text, s)
                        if following is not None and following.span() not in handed_back:
                            handed_back.add(following.span())
                            given_back = [following] + given_back
                    continue
                value_end = e
                type_, s, e = found
                if e < value_end:
                    # The validator cut the value short (``api_key=X&token=Y``: the bare value ran into the
                    # next key). What it gave back was never scanned on its own: it may hold a value.
                    cut_off = [g for g in self._matches_between(text, e, value_end) if g.span() not in handed_back]
                    handed_back.update(g.span() for g in cut_off)
                    given_back = cut_off + given_back
            else:
                type_ = rule.type
            token: tuple[int, int] | None = None  # the number outside any JSON string the match lies in
            quote = ""  # what quotes its placeholder: '"', or '\\"' in JSON held in a JSON string, ...
            if json_text:
                value = text[s:e]
                # never start inside an escape, never cut one, never swallow a quote
                if _backslash_run(text, s) % 2 or _backslash_run(text, e) % 2:
                    continue
                if isinstance(rule, ExtraPattern) and ('"' in value or "\\" in value):
                    continue
                if self.skip_keys:
                    if paths is None:
                        paths = _json_value_paths(text)
                    path = _path_at(paths, s)
                    if path is not None and self._skipped_path(path):
                        continue
                if _maybe_bare(text, s, e):  # cheap; the whole text is tokenized only to confirm
                    if paths is None:
                        paths = _json_value_paths(text)
                    token, quote = _bare_token(text, paths, s, strings)
            elif _maybe_bare(text, s, e) and _JSON_START.match(text):
                # JSON in a text column (input.value of a tool call): a number stays a JSON value
                if paths is None:
                    paths = _json_value_paths(text)
                token, quote = _bare_token(text, paths, s, strings)
            if token is not None:
                s, e = token
            if s < last:
                continue
            yield type_, s, e, quote
            last = e

    def _matches_between(self, text: str, start: int, stop: int, *, endpos: int | None = None) -> list[re.Match[str]]:
        """Exact matches that start in ``text[start:stop]`` (they may end past it, up to ``endpos``), in order."""
        found = []
        pos = start
        end = len(text) if endpos is None else endpos
        while pos < stop:
            m = self._exact.search(text, pos, end)
            if m is None or m.start() >= stop:
                break
            found.append(m)
            pos = max(m.end(), m.start() + 1)
        return found

    def key_holds_pii(self, key: str) -> bool:
        """Whether an attribute key holds a value some rule finds (decode then keeps the key whole).

        Runs while decode nests a key set it has not seen twice (nesting plans are cached per key
        set), so only on new key sets; a cheap screen passes only keys with what a value that can
        contain a dot needs (``@``, ``=``, ``:``, ``eyJ``, digit.digit) to the exact rules.
        """
        return bool(self.enabled and _KEY_SCREEN.search(key) and self._redact_python(key, False)[1])

    def safe_cut(self, text: str, cut: int) -> int:
        """Where to cut ``text`` at or before character ``cut`` so that no PII is cut in two.

        Decoding cuts a value over ``max_value_size`` before this processor sees it, and half a
        card number or e-mail address is no longer found: it would be stored as it is. The cut
        moves back to the start of any PII that runs across it.
        """
        if not self.enabled or cut >= len(text):
            return cut
        start = max(0, cut - _CUT_CONTEXT)
        window = text[start:cut + _CUT_CONTEXT]
        for _, s, e, _ in self._accepted(window, self._exact.finditer(window), False):
            if start + s < cut < start + e:
                return start + s
        return cut

    def _placeholder(self, type_: str, value: str, json_text: bool) -> str:
        if self._key is None:
            return f"<{type_}>"
        # The same value hashes alike in plain text and as JSON (jos\u00e9@x.com), also as JSON held in a
        # text column (a tool call's input.value) or in JSON (\\u00e9 in the arguments attribute).
        for _ in range(2):
            if "\\" not in value:
                break
            try:
                value = json.loads(f'"{value}"')
            except ValueError:
                break
        if type_ == "EMAIL" and "%" in value:
            value = urllib.parse.unquote(value)      # jane%40example.com in a URL is jane@example.com
        key = (type_, value)
        token = self._cache.get(key)
        if token is None:
            digest = hmac.new(self._key, f"{type_}:{value}".encode("utf-8", "surrogatepass"), hashlib.sha256)
            token = f"<{type_}:{digest.hexdigest()[:6]}>"
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = token
        return token

    def _skipped_path(self, path: Sequence[str]) -> bool:
        for key in self.skip_keys:
            k = len(key)
            for j in range(len(path) - k + 1):
                if tuple(path[j:j + k]) == key:
                    return True
        return False


def _json_value_paths(text: str) -> tuple[list[int], list[int], list[tuple[str, ...]]]:
    """Spans of the scalar values of a JSON text with their key paths (dotted segments)."""
    starts: list[int] = []
    ends: list[int] = []
    paths: list[tuple[str, ...]] = []
    stack: list[list[Any]] = []            # [is_object, current key or index, expecting_key]
    for tok in _JSON_TOKEN.finditer(text):
        t = tok.group()
        c = t[0]
        if c in "{[":
            stack.append([c == "{", "" if c == "{" else 0, c == "{"])
        elif c in "}]":
            if stack:
                stack.pop()
        elif c == ",":
            if stack:
                top = stack[-1]
                if top[0]:
                    top[2] = True
                else:
                    top[1] += 1
        elif c == ":":
            continue
        else:
            if stack and stack[-1][0] and stack[-1][2]:
                try:
                    stack[-1][1] = json.loads(t) if c == '"' else t
                except ValueError:
                    stack[-1][1] = t.strip('"')
                stack[-1][2] = False
                continue
            path: list[str] = []
            for frame in stack:
                path.extend(str(frame[1]).split("."))
            starts.append(tok.start())
            ends.append(tok.end())
            paths.append(tuple(path))
    return starts, ends, paths


_NUMBER_CHARS = frozenset("0123456789+-.eE")
_JSON_START = re.compile(r"[ \t\r\n]*[\[{]")


def _bare_token(
    text: str, paths: tuple[list[int], list[int], list[tuple[str, ...]]], pos: int,
    seen: dict[int, list[Any] | None],
) -> tuple[tuple[int, int] | None, str]:
    """The number outside any JSON string that ``pos`` lies in, and the quote its placeholder takes as
    written in ``text``; (None, "") when ``pos`` is in no such number."""
    token = _value_at(paths, pos)
    if token is None:
        return None, ""
    if text[token[0]] != '"':
        return token, '"'
    inside = _bare_in_string(text, token, pos, seen)
    return (None, "") if inside is None else ((inside[0], inside[1]), inside[2])


#: How many JSON-in-a-JSON-string levels a number is looked for in (a provider response in
#: ``input.value``, in the attributes JSON, holding tool-call arguments: three).
_MAX_JSON_IN_STRING = 4


def _bare_in_string(
    text: str, token: tuple[int, int], pos: int, seen: dict[int, list[Any] | None], depth: int = 1,
) -> tuple[int, int, str] | None:
    """(start, end, quote) in ``text`` of the number outside any string that ``pos`` lies in, in the JSON
    text that the JSON string ``token`` holds (``{"arguments": "{\\"phone\\": 4155550132}"}``), or in JSON
    held in a string of that (and so on); None when there is none. ``quote`` is a JSON quote as written
    at that depth (``\\"``). Numbers hold no escapes, so the number's characters are the same at every depth.

    ``seen`` keeps, per string, its decoded text, its tokens and the last position mapped, so that a
    string holding many numbers is decoded and tokenized once and walked once (matches come in order).
    """
    state = seen.get(token[0], [])
    if state is None:
        return None
    if not state:
        try:
            inner = json.loads(text[token[0]:token[1]])
        except ValueError:
            inner = None
        if not isinstance(inner, str) or not _JSON_START.match(inner):
            seen[token[0]] = None
            return None
        state = seen[token[0]] = [inner, _json_value_paths(inner), token[0] + 1, 0, {}]
    inner, paths, outer_at, inner_at, deeper = state
    start = pos
    while start > token[0] + 1 and text[start - 1] in _NUMBER_CHARS:
        start -= 1
    if start < outer_at:
        return None
    try:
        at = inner_at + len(json.loads('"' + text[outer_at:start] + '"'))
    except ValueError:
        return None
    state[2], state[3] = start, at
    found = _value_at(paths, at)
    if found is None:
        return None
    if inner[found[0]] == '"':
        nested = _bare_in_string(inner, found, at, deeper, depth + 1) if depth < _MAX_JSON_IN_STRING else None
        if nested is None or nested[0] != at:
            return None
        found, quote = (nested[0], nested[1]), nested[2]
    elif found[0] != at:
        return None
    else:
        quote = '"'
    end = start + found[1] - found[0]
    if text[start:end] != inner[found[0]:found[1]]:
        return None
    return start, end, json.dumps(quote)[1:-1]


def _maybe_bare(text: str, s: int, e: int) -> bool:
    """Whether ``text[s:e]`` could lie in a number outside any JSON string: the run of number
    characters around it opens after ``:``, ``,`` or ``[`` and closes before ``,``, ``]`` or ``}``
    (blanks between). A string holding "..., 4111 1111 1111 1111, ..." can pass this too; the
    tokenizer then decides."""
    n = len(text)
    while s > 0 and text[s - 1] in _NUMBER_CHARS:
        s -= 1
    while e < n and text[e] in _NUMBER_CHARS:
        e += 1
    while s > 0 and text[s - 1] in " \t\r\n":
        s -= 1
    while e < n and text[e] in " \t\r\n":
        e += 1
    return s > 0 and text[s - 1] in ":,[" and e < n and text[e] in ",]}"


def _value_index(paths: tuple[list[int], list[int], list[tuple[str, ...]]], pos: int) -> int | None:
    starts, ends, _ = paths
    i = bisect.bisect_right(starts, pos) - 1
    return i if i >= 0 and pos < ends[i] else None


def _path_at(paths: tuple[list[int], list[int], list[tuple[str, ...]]], pos: int) -> tuple[str, ...] | None:
    i = _value_index(paths, pos)
    return None if i is None else paths[2][i]


def _value_at(paths: tuple[list[int], list[int], list[tuple[str, ...]]], pos: int) -> tuple[int, int] | None:
    """(start, end) of the scalar value token holding ``pos``, quotes included for a string."""
    i = _value_index(paths, pos)
    return None if i is None else (paths[0][i], paths[1][i])


class PiiProcessor:
    """Span-stage processor ``pii``: redacts every text column of a batch and counts per type."""

    kind: ClassVar[str] = "span"

    def __init__(self, sanitizer: Sanitizer) -> None:
        self.sanitizer = sanitizer

    @classmethod
    def from_config(cls, options: Mapping[str, Any] | None, *, path: str) -> PiiProcessor:
        """Validate every option (all problems at once, each with its YAML path) and compile the rules."""
        opts = OptionReader(options, path)
        secret_key = opts.secret("secret_key", None)
        if secret_key == "":
            opts.problem("secret_key", "must not be empty (leave it out for plain <TYPE> placeholders)")
            secret_key = None
        extras: list[tuple[str, str]] = []
        for i, item in enumerate(opts.list("extra_patterns")):
            where = f"{opts.here('extra_patterns')}[{i}]"
            if not isinstance(item, Mapping):
                opts.problems.append(f"{where}: expected a mapping with name and regex")
                continue
            unknown = sorted(set(item) - {"name", "regex"})
            for key in unknown:
                opts.problems.append(f"{where}.{key}: unknown key")
            name, regex = item.get("name"), item.get("regex")
            ok = True
            if not isinstance(name, str) or not _TYPE_NAME.match(name):
                opts.problems.append(f"{where}.name: expected an UPPER_SNAKE type name, got {name!r}")
                ok = False
            if not isinstance(regex, str) or not regex:
                opts.problems.append(f"{where}.regex: expected a non-empty string")
                continue
            problem = _check_regex(regex)
            if problem:
                opts.problems.append(f"{where}: {problem}")
                ok = False
            if ok:
                extras.append((name, regex))   # type: ignore[arg-type]
        skip_keys = _str_list(opts, "skip_keys")
        disable = _str_list(opts, "disable_types")
        known = set(KNOWN_TYPES) | {name for name, _ in extras}
        for i, t in enumerate(disable):
            if t not in known:
                opts.problems.append(
                    f"{opts.here('disable_types')}[{i}]: unknown type {t!r} (known: {', '.join(KNOWN_TYPES)})")
        opts.finish()
        try:
            sanitizer = Sanitizer(secret_key=secret_key, extra_patterns=extras, skip_keys=skip_keys,
                                  disable_types=disable)
        except re.error as exc:  # pragma: no cover - each pattern was checked alone above
            raise ConfigError([f"{opts.here('extra_patterns')}: {exc}"]) from None
        return cls(sanitizer)

    def process(self, batch: pa.Table) -> pa.Table:
        """Return the batch with every text column redacted and ``pii_redactions`` merged. Pure.

        All text columns go through RE2 together (one kernel call per batch: building the
        regex automaton is the fixed cost that matters at request-sized batches).
        """
        n = batch.num_rows
        san = self.sanitizer
        if n == 0 or not san.enabled:
            return batch
        names = batch.schema.names
        cols = [c for c in TEXT_SPAN_COLUMNS
                if c in names and not (c in COLUMN_KEYS and san._skipped_path(COLUMN_KEYS[c].split(".")))]
        arrays = []
        for c in cols:
            a = batch.column(c)
            arrays.append(a.combine_chunks() if a.num_chunks != 1 else a.chunk(0))
        if not arrays:
            return batch
        flags = [c in JSON_SPAN_COLUMNS for c in cols for _ in range(n)]
        whole = pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]
        new, counters = san._redact_cells(whole, flags)
        # A value in input_value (or another column lifted out of the attributes) is also in the
        # attributes JSON: counted in both, one e-mail would count twice. Per type, a span counts the
        # larger of what its own fields held and what the lifted copies held.
        totals: list[Counter | None] = [None] * n
        copies: list[Counter | None] = [None] * n
        for k, c in enumerate(cols):
            part = counters[k * n:(k + 1) * n]
            if not any(part):
                continue
            i = names.index(c)
            batch = batch.set_column(i, batch.schema.field(i), new.slice(k * n, n))
            into = copies if c in LIFTED_COLUMNS else totals
            for row, cnt in enumerate(part):
                if cnt:
                    t = into[row]
                    if t is None:
                        into[row] = Counter(cnt)
                    else:
                        t.update(cnt)
        for row, lifted in enumerate(copies):
            if lifted:
                totals[row] = (totals[row] or Counter()) | lifted  # per type: the larger count
        if "pii_redactions" in names:
            i = names.index("pii_redactions")
            old = batch.column(i).to_pylist()
            merged = []
            for before, c in zip(old, totals):
                if not c:
                    merged.append("{}" if before is None else before)  # scanned, nothing found
                    continue
                prior = _parse_counts(before)
                prior.update(c)
                merged.append(json.dumps(dict(sorted(prior.items())), separators=(",", ":")))
            batch = batch.set_column(i, batch.schema.field(i), pa.array(merged, pa.string()))
        return batch

    def shutdown(self) -> None:
        """Nothing to release; idempotent."""


def _check_regex(regex: str) -> str | None:
    try:
        compiled = re.compile(_python_flags(regex), re.ASCII)
    except re.error as exc:
        return str(exc)
    if compiled.fullmatch(""):
        return "matches the empty string"
    return _re2_check(regex)


def _str_list(opts: OptionReader, key: str) -> list[str]:
    items = opts.list(key)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item:
            out.append(item)
        else:
            opts.problems.append(f"{opts.here(key)}[{i}]: expected a non-empty string, got {item!r}")
    return out


def _parse_counts(text: str | None) -> Counter:
    if not text:
        return Counter()
    try:
        doc = json.loads(text)
    except ValueError:
        return Counter()
    if not isinstance(doc, dict):
        return Counter()
    return Counter({k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, int)})
