"""The failure dataset on disk: ``cases.yaml``, its removal ledger and its history.

Three files live side by side (DESIGN.md, "Failure dataset file")::

    cases.yaml           schema_version, failure_modes (the whole taxonomy), cases: [...]
    cases_removed.yaml   append-only ledger   removed: [{id, reason, by, at}]
    history.jsonl        append-only events   {"at", "event", "case_id", "detail"} per line

:func:`promote_case` only ever appends: an existing ``cases.yaml`` keeps its bytes
(comments, order, quoting) and the new case's lines are inserted after the last case; when the
file's shape makes a plain text insert unsafe (an empty or flow-style ``cases``
list), it falls back to a ruamel.yaml round-trip, which still keeps comments and
order. Case ids are ``TS-0001``, ``TS-0002``, ... and never reused: the next id is one
past the highest found in any of the three files.

Nothing here prints or exits; errors are :class:`UsageError` / :class:`NotFoundError`.
Not safe for two writers at once on the same files (the CLI is the only writer).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import fcntl
import functools
import inspect
import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import jsonschema
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, CommentedSet, TaggedScalar
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import YAMLError

from tracesieve.collector.gate_scorers import expected_problems
from tracesieve.collector.strict_json import strict_json_line
from tracesieve.storage.errors import NotFoundError, UsageError
from tracesieve.storage.schema import (
    BLAST_RADII,
    DATASET_SCHEMA_VERSION,
    FAILURE_MODES,
    SEVERITIES,
    utcnow,
)

REMOVED_FILE = "cases_removed.yaml"
HISTORY_FILE = "history.jsonl"
HISTORY_EVENTS = ("promoted", "passed", "failed", "flipped", "removed")
CASE_STATUSES = ("active", "deprecated")
CASE_ID = re.compile(r"^TS-(\d{4,})$")

#: The fields of a case, in the order promote writes them.
CASE_FIELDS = (
    "id", "failure_mode", "severity", "blast_radius", "status", "discovered_at", "discovered_by",
    "source", "input", "context", "expected_behavior", "remediation", "regressed_count",
)

_NULLABLE_STR = {"type": ["string", "null"]}

#: JSON Schema of one case (after YAML timestamps are turned into ISO strings).
#: ``failure_mode`` is checked against the taxonomy separately, for a clearer message. Keys of
#: people's own (``ticket``, ``notes``, ``owner_team``) are allowed: a reviewer annotating a case
#: must not make the dataset fail lint, and with it every later promote and gate. A key that looks
#: like a misspelt field is still reported (:func:`_misspelt_keys`).
CASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(CASE_FIELDS),
    "properties": {
        "id": {"type": "string", "pattern": CASE_ID.pattern},
        "failure_mode": {"type": "string"},
        "severity": {"enum": list(SEVERITIES)},
        "blast_radius": {"enum": list(BLAST_RADII)},
        "status": {"enum": list(CASE_STATUSES)},
        "discovered_at": {"type": "string"},
        "discovered_by": {"type": "string", "minLength": 1},
        "source": {
            "type": "object",
            "required": ["trace_id"],
            "properties": {
                "trace_id": {"type": "string"},
                "span_ids": {"type": "array", "items": {"type": "string"}},
                "candidate_id": _NULLABLE_STR,
                "model": _NULLABLE_STR,
                "prompt_version": {"type": ["string", "number", "null"]},
            },
        },
        "input": {
            "type": "object",
            "required": ["user_message", "conversation_history"],
            "properties": {
                "user_message": {"type": "string"},
                "conversation_history": {"type": "array"},
            },
        },
        "context": {"type": "object"},
        "expected_behavior": {"type": "object"},
        "remediation": {"type": "array"},
        "regressed_count": {"type": "integer", "minimum": 0},
    },
}

_HEADER = (
    "# tracesieve failure dataset (schema_version 1).\n"
    "# `tracesieve promote` appends cases; edit expected_behavior and remediation by hand.\n"
    "# Remove a case only together with an entry in cases_removed.yaml (see `tracesieve cases lint`).\n"
)


# ---------------------------------------------------------------------------
# YAML plumbing

def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    value = value.astimezone(dt.timezone.utc)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 1_000_000  # never fold long strings
    y.representer.add_representer(
        dt.datetime, lambda rep, data: rep.represent_scalar("tag:yaml.org,2002:timestamp", _iso(data))
    )
    y.representer.add_representer(str, _represent_str)
    y.constructor.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
    for tag, construct in _CHECKED_CONSTRUCTORS.items():
        y.constructor.add_constructor(tag, _checked(construct))
    return y


def _construct_timestamp(constructor: RoundTripConstructor, node: Any) -> Any:
    """A YAML timestamp; a YAML error naming its line when it is no real date or time.

    ruamel builds it with ``datetime()``, whose ValueError went through every reader: a hand-edited
    ``discovered_at: 2026-02-30T10:00:00Z`` made ``cases lint`` (and promote, gate, export) exit 2 with
    "internal error: ValueError: day is out of range for month" instead of reporting the problem.
    """
    try:
        return RoundTripConstructor.construct_yaml_timestamp(constructor, node)
    except (ValueError, OverflowError) as exc:
        raise ConstructorError(None, None, f"{node.value!r} is not a real date or time ({exc})",
                               node.start_mark) from None


#: Constructors of explicit tags that raise a plain Python error on a value the tag cannot hold
#: (``!!int x``, ``!!bool maybe``, ``!!set x``): :func:`_checked` turns it into a YAML error.
_CHECKED_CONSTRUCTORS: dict[str, Callable[..., Any]] = {
    "tag:yaml.org,2002:bool": RoundTripConstructor.construct_yaml_sbool,
    "tag:yaml.org,2002:int": RoundTripConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": RoundTripConstructor.construct_yaml_float,
    "tag:yaml.org,2002:binary": RoundTripConstructor.construct_yaml_binary,
    "tag:yaml.org,2002:omap": RoundTripConstructor.construct_yaml_omap,
    "tag:yaml.org,2002:pairs": RoundTripConstructor.construct_yaml_pairs,
    "tag:yaml.org,2002:set": RoundTripConstructor.construct_yaml_set,
}


def _checked(construct: Callable[..., Any]) -> Callable[..., Any]:
    """``construct`` raising a YAML error that names the value and its line, never ValueError or KeyError.

    A hand-edited ``regressed_count: !!int x`` or ``status: !!set x`` made ``cases lint`` (and promote,
    gate, export) exit 2 with "internal error: ValueError: invalid literal for int()" (or KeyError,
    AttributeError) instead of reporting the problem. Collection constructors are generators, which
    ruamel runs after the call returns: those are wrapped as generators.
    """
    def failure(node: Any, exc: Exception) -> ConstructorError:
        tag = getattr(node.tag, "value", node.tag)
        value = repr(node.value) if isinstance(node.value, str) else f"a {node.id}"
        return ConstructorError(None, None, f"{value} is not a valid {tag} value ({type(exc).__name__}: {exc})",
                                node.start_mark)

    if inspect.isgeneratorfunction(construct):
        def constructed_in_steps(constructor: RoundTripConstructor, node: Any) -> Iterator[Any]:
            try:
                yield from construct(constructor, node)
            except (ValueError, KeyError, AttributeError, TypeError, OverflowError) as exc:
                raise failure(node, exc) from None
        return constructed_in_steps

    def constructed(constructor: RoundTripConstructor, node: Any) -> Any:
        try:
            return construct(constructor, node)
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError) as exc:
            raise failure(node, exc) from None
    return constructed


#: PyYAML's (YAML 1.1) tag for a plain scalar: it reads `no`, `on`, `1:20` as false, true, 80.
_resolve_1_1: Callable[[type[yaml.Node], str, tuple[bool, bool]], str] = yaml.resolver.Resolver().resolve
_STR_TAG = "tag:yaml.org,2002:str"


def _represent_str(rep: Any, data: str) -> Any:
    """A string, quoted when a YAML 1.1 reader (PyYAML, most CI tools) would take its plain form for a
    bool or a number: cases.yaml is read by more than ruamel's YAML 1.2."""
    node = rep.represent_scalar(_STR_TAG, data)
    if node.style is None and _resolve_1_1(yaml.ScalarNode, data, (True, False)) != _STR_TAG:
        node.style = "'"
    return node


def _plain(value: Any) -> Any:
    """ruamel round-trip data -> plain JSON-able Python (timestamps as ISO strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return str(value)
    return value


#: A YAML escape such as "\ud83d" (an emoji cut in half) loads as a lone surrogate, which UTF-8 cannot
#: hold: gate and export died on it with "internal error: UnicodeEncodeError".
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_KIND = "text with a lone surrogate escape (\\ud800-\\udfff, half a character such as an emoji)"


def _values_without_json(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, YAML kind) of each value in plain case data that JSON cannot hold.

    ``!!binary``, ``!!set`` and custom tags (``!vault x``) pass the case schema where any value is
    allowed (an input's extra keys, context), and then `export` died with "internal error: TypeError:
    Object of type bytes is not JSON serializable" while gate handed the agent ``"b'...'"``.
    """
    if isinstance(value, Mapping):
        for k, v in value.items():
            key_path = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _LONE_SURROGATE.search(k):
                yield key_path.encode("utf-8", "backslashreplace").decode("ascii", "replace"), _SURROGATE_KIND
            yield from _values_without_json(v, key_path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _values_without_json(v, f"{path}[{i}]")
    elif isinstance(value, str):
        if _LONE_SURROGATE.search(value):
            yield path, _SURROGATE_KIND
    elif not (value is None or isinstance(value, (int, float))):  # bool is an int
        if isinstance(value, bytes):
            yield path, "!!binary value"
        elif isinstance(value, CommentedSet):
            yield path, "!!set"
        elif isinstance(value, TaggedScalar):
            yield path, f"value tagged {getattr(value.tag, 'value', value.tag)}"
        else:
            yield path, f"{type(value).__name__} value"


def _load(path: Path) -> Any:
    """The YAML document in ``path``; YAMLError, or UnicodeDecodeError for a file that is not UTF-8."""
    return _yaml().load(path.read_bytes().decode("utf-8"))


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    return f"{path.name}: not UTF-8 text (byte {exc.start})"


def _line(node: Any, index: int | None = None) -> int | None:
    try:
        if index is None:
            return int(node.lc.line) + 1
        return int(node.lc.item(index)[0]) + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        return None


@contextlib.contextmanager
def _dataset_locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the dataset's directory while its files are read and rewritten.

    Each writer reads cases.yaml, picks the next id and replaces the file: two ``promote`` runs at
    once (or ``promote`` during a ``gate``) would each write the file they read plus their own case,
    and the last rename would drop the other's. The lock is the directory's, since the file itself
    is replaced on every write; it goes with the process, so a killed writer leaves none behind.
    A symlinked cases.yaml locks the directory of the file it points to, where it is rewritten.
    """
    directory = Path(os.path.realpath(path)).parent
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # no directory to lock: the write fails on its own, with its own error
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _under_dataset_lock(
    write: Callable[Concatenate[str | os.PathLike[str], _P], _R],
) -> Callable[Concatenate[str | os.PathLike[str], _P], _R]:
    """``write(cases_path, ...)`` run while holding the lock of the dataset at ``cases_path``."""
    @functools.wraps(write)
    def locked(cases_path: str | os.PathLike[str], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _dataset_locked(Path(cases_path)):
            return write(cases_path, *args, **kwargs)
    return locked


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (temp file + rename). The file keeps its mode; a new file gets
    the default one, 0666 less the umask, like the history.jsonl that is opened for appending. A
    symlink stays one: the file it points to is replaced."""
    path = Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_text(path: Path) -> str:
    """The file's text with its line ends as they are (CRLF stays CRLF: a write changes only what it must).

    UsageError when it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}); fix it first") from None


def _newline(text: str) -> str:
    """The line end a file uses: CRLF when its first line ends so, else LF."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def _umask() -> int:
    """The process umask (reading it means setting it: put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------
# reading the three files

def _read_history(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    events: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    if not path.exists():
        return events, problems
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                raw = line.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{path.name}:{n}: not UTF-8 text")
                continue
            if not raw.strip():
                continue
            try:
                ev = json.loads(raw)
            except ValueError:
                problems.append(f"{path.name}:{n}: not a JSON object")
                continue
            if not isinstance(ev, dict):
                problems.append(f"{path.name}:{n}: not a JSON object")
                continue
            missing = [k for k in ("at", "event", "case_id") if not ev.get(k)]
            if missing:
                problems.append(f"{path.name}:{n}: missing {', '.join(missing)}")
            elif ev["event"] not in HISTORY_EVENTS:
                problems.append(f"{path.name}:{n}: {ev['case_id']}: unknown event {ev['event']!r}")
            events.append((n, ev))
    return events, problems


def read_cases(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The cases of a dataset as plain data, read the way ``cases lint`` reads them (YAML 1.2, times as
    ISO strings): what gate hands the agent and scores is what lint checked. Empty when there is no
    ``cases`` list; YAMLError when the file is not YAML."""
    doc = _plain(_load(Path(path)))
    cases = doc.get("cases") if isinstance(doc, dict) else None
    return [c for c in cases if isinstance(c, dict)] if isinstance(cases, list) else []


def history_events(cases_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The well-formed events of the history.jsonl beside ``cases_path``, oldest first (lint reports the rest)."""
    events, _ = _read_history(Path(cases_path).parent / HISTORY_FILE)
    return [ev for _, ev in events]


def append_history(cases_path: str | os.PathLike[str], event: str, case_id: str, detail: Mapping[str, Any],
                   now: dt.datetime | None = None) -> None:
    """Append one ``{"at", "event", "case_id", "detail"}`` line to the history.jsonl beside ``cases_path``.

    A file whose last line has no newline (saved so by an editor or a merge) gets one first, so the
    event never joins that line."""
    if event not in HISTORY_EVENTS:
        raise ValueError(f"unknown history event {event!r}")
    record = {"at": _iso(now or dt.datetime.now(dt.timezone.utc)), "event": event, "case_id": case_id,
              "detail": dict(detail)}
    # one line whatever the detail holds: a reason with U+2028 written raw was two lines to a line reader
    line = (strict_json_line(record, default=str) + "\n").encode("utf-8")
    with (Path(cases_path).parent / HISTORY_FILE).open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)  # append mode: written at the end, whatever was read


def _read_removed(path: Path) -> tuple[dict[str, int | None], list[str]]:
    """Ledger ids -> line, and problems."""
    ids: dict[str, int | None] = {}
    problems: list[str] = []
    if not path.exists():
        return ids, problems
    try:
        doc = _load(path)
    except YAMLError as exc:
        return ids, [f"{path.name}: not valid YAML: {' '.join(str(exc).split())}"]
    except UnicodeDecodeError as exc:
        return ids, [_not_utf8(path, exc)]
    if doc is None:
        return ids, problems
    entries = doc.get("removed") if isinstance(doc, Mapping) else None
    if entries is None and isinstance(doc, Mapping) and "removed" in doc:
        return ids, problems  # `removed:` with nothing under it yet, as `cases remove` takes it too
    if not isinstance(entries, list):
        return ids, [f"{path.name}: expected a mapping with a list under 'removed'"]
    for i, entry in enumerate(entries):
        line = _line(entries, i)
        where = f"{path.name}:{line}" if line else path.name
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: removed[{i}]: expected a mapping with id, reason, by, at")
            continue
        missing = [k for k in ("id", "reason", "by", "at") if not entry.get(k)]
        label = entry.get("id") or f"removed[{i}]"
        if missing:
            problems.append(f"{where}: {label}: missing {', '.join(missing)}")
        problems.extend(f"{where}: {label}: {p}" for p in _ledger_field_problems(_plain(entry)))
        if entry.get("id"):
            ids[str(entry["id"])] = line
    return ids, problems


def _ledger_field_problems(entry: Mapping[str, Any]) -> list[str]:
    """Fields of a ledger entry that are present but of the wrong kind, checked like a case's own."""
    problems = []
    cid, at = entry.get("id"), entry.get("at")
    if cid and not (isinstance(cid, str) and CASE_ID.match(cid)):
        problems.append(f"id {cid!r} is not a case id (TS-0001, ...)")
    problems.extend(f"{key} {entry[key]!r} is not text" for key in ("reason", "by")
                    if entry.get(key) and not isinstance(entry[key], str))
    if at:
        try:
            iso = isinstance(at, str) and bool(dt.datetime.fromisoformat(at.replace("Z", "+00:00")))
        except ValueError:
            iso = False
        if not iso:
            problems.append(f"at {at!r} is not an ISO 8601 time")
    return problems


#: The top-level keys of a dataset.
DATASET_KEYS = ("schema_version", "failure_modes", "cases")


def _misspelt_keys(keys: Iterable[Any], known: Sequence[str]) -> Iterator[str]:
    """One problem per key that is not in ``known`` but nearly spells one of them.

    Other unknown keys are people's own annotations and are kept; a near miss is a typo whose value
    nobody reads (``expected_behaviour`` beside ``expected_behavior`` would never be scored).
    """
    for key in keys:
        if not isinstance(key, str) or key in known:
            continue
        near = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.8)
        if near:
            yield f"unknown key {key!r} (did you mean {near[0]!r}?)"


def _is_schema_version(value: Any) -> bool:
    """True for the integer this tracesieve writes. ``true`` and ``1.0`` equal 1 in Python, but a bool or
    a float is no schema version: they passed lint, and a stricter reader of the file would refuse them."""
    return type(value) is int and value == DATASET_SCHEMA_VERSION


def _case_ids(doc: Any) -> list[str]:
    cases = doc.get("cases") if isinstance(doc, Mapping) else None
    if not isinstance(cases, list):
        return []
    return [str(c["id"]) for c in cases if isinstance(c, Mapping) and c.get("id")]


def _id_number(case_id: str) -> int:
    m = CASE_ID.match(case_id)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------
# promote

def _build_case(
    case_id: str, candidate: Mapping[str, Any], owner: str, severity: str, now: dt.datetime
) -> CommentedMap:
    src = candidate.get("source") or {}
    trace_ids = candidate.get("trace_ids") or []
    inp = candidate.get("input") or {}
    case = CommentedMap()
    case["id"] = case_id
    case["failure_mode"] = candidate.get("failure_mode")
    case["severity"] = severity
    case["blast_radius"] = candidate.get("blast_radius")
    case["status"] = "active"
    case["discovered_at"] = now
    case["discovered_by"] = owner
    case["source"] = {
        "trace_id": src.get("trace_id") or (trace_ids[0] if trace_ids else None),
        "span_ids": list(src.get("span_ids") or []),
        "candidate_id": candidate.get("candidate_id"),
        "model": src.get("model"),
        "prompt_version": src.get("prompt_version"),
    }
    case["input"] = {
        "user_message": inp.get("user_message") or "",
        "conversation_history": list(inp.get("conversation_history") or []),
    }
    case["context"] = dict(candidate.get("context") or {})
    case["expected_behavior"] = dict(candidate.get("expected") or {})
    case["remediation"] = []
    case["regressed_count"] = 0
    return case


def _dump(y: YAML, data: Any) -> str:
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()


def _dataset(path: Path, text: str, y: YAML) -> tuple[CommentedMap, list[Any]]:
    """The parsed dataset and its cases list; UsageError naming the file when it is neither."""
    try:
        doc = y.load(text)
    except YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(exc).split())}); fix it first") from None
    cases = doc.get("cases") if isinstance(doc, CommentedMap) else None
    if not isinstance(cases, list):
        raise UsageError(f"{path}: not a failure dataset (no cases list)")
    return doc, cases


def _appended(text: str, doc: CommentedMap, item: CommentedMap, y: YAML, key: str) -> str:
    """The file text with ``item`` appended to the list under ``key``.

    Appended as text when that parses to exactly the old document plus the item (no existing line
    changes); else through a round-trip dump, which keeps comments and order but may restyle.
    """
    new_text = _append_text(text, doc, item, y, key=key) or ""
    if new_text and _plain(y.load(new_text)) != {**_plain(doc), key: _plain(doc.get(key) or []) + [_plain(item)]}:
        new_text = ""
    if not new_text:
        entries = doc.get(key)
        if not isinstance(entries, CommentedSeq):
            entries = CommentedSeq(entries or [])
            doc[key] = entries
        entries.fa.set_block_style()
        entries.append(item)
        new_text = _dump(y, doc)
    return new_text


def _append_text(text: str, doc: CommentedMap, case: CommentedMap, y: YAML, key: str = "cases") -> str | None:
    """The file text with ``case`` inserted after the last item of the list under ``key``, or None
    when that is unsafe.

    Existing lines are never changed: the new item goes at the end of the file when
    ``key`` is the last key, else just before the comments and blank lines that lead
    into the next top-level key.
    """
    cases = doc.get(key)
    if not (isinstance(cases, CommentedSeq) and len(cases)) or cases.fa.flow_style():
        return None
    first_line = _line(cases, 0)
    lines = text.splitlines()
    if first_line is None or first_line > len(lines):
        return None
    head = lines[first_line - 1]
    dash = len(head) - len(head.lstrip(" "))
    if not head[dash:].startswith("-"):
        return None
    keys = list(doc.keys())
    at = len(lines)
    if keys[-1] != key:
        try:
            at = int(doc.lc.key(keys[keys.index(key) + 1])[0])
        except (AttributeError, KeyError, IndexError, TypeError):
            return None
        last_item = _line(cases, len(cases) - 1) or first_line
        while at - 1 >= last_item and (not lines[at - 1].strip() or lines[at - 1].lstrip().startswith("#")):
            at -= 1
    snippet = _dump(y, {key: [case]}).splitlines()[1:]  # drop "<key>:"; items start at column 2
    shift = dash - 2
    out = []
    for ln in snippet:
        if shift >= 0:
            out.append(" " * shift + ln)
        elif ln[: -shift].strip():
            return None
        else:
            out.append(ln[-shift:])
    new_lines = lines[:at] + out + lines[at:]
    return _newline(text).join(new_lines) + _newline(text)


def _promote_case(
    cases_path: str | os.PathLike[str],
    candidate: Mapping[str, Any],
    owner: str,
    severity: str | None = None,
    case_id: str | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Append ``candidate`` (a dict as :func:`get_candidate` returns it) to cases.yaml as a new case.

    Creates cases.yaml (schema_version 1, the whole taxonomy) when missing; appends a
    ``promoted`` event to history.jsonl beside it. ``severity`` overrides the
    candidate's; ``case_id`` overrides the next free ``TS-NNNN``. Returns the case as
    plain data. Raises UsageError when the candidate is already a case, the id is used
    (in cases.yaml, cases_removed.yaml or history.jsonl) or malformed, the owner is
    empty, or the existing file is not a failure dataset or does not pass :func:`lint_cases`. Appends only; not idempotent
    (a second call is refused, not repeated).
    """
    path = Path(cases_path)
    now = (now or utcnow()).replace(microsecond=0)
    if not owner or not str(owner).strip():
        raise UsageError("promote needs an owner (--owner NAME)")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise NotFoundError(f"no directory {directory} for {path.name} (create it first)")
    candidate_id = candidate.get("candidate_id")
    if not candidate_id:
        raise UsageError("the candidate has no candidate_id")
    severity = severity or candidate.get("severity")
    if severity not in SEVERITIES:
        raise UsageError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    if candidate.get("failure_mode") not in FAILURE_MODES:
        raise UsageError(f"failure_mode {candidate.get('failure_mode')!r} is not in the taxonomy")

    y = _yaml()
    doc: Any = None
    text = ""
    if path.exists():
        text = _read_text(path)
        try:
            doc = y.load(text)
        except YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({' '.join(str(exc).split())}); fix it first") from None
    if doc is not None:
        if not isinstance(doc, CommentedMap):
            raise UsageError(f"{path}: not a failure dataset (expected schema_version, failure_modes, cases)")
        if not _is_schema_version(doc.get("schema_version")):
            raise UsageError(
                f"{path}: schema_version {doc.get('schema_version')!r}; this tracesieve writes {DATASET_SCHEMA_VERSION}"
            )
        if doc.get("cases") is not None and not isinstance(doc.get("cases"), list):
            raise UsageError(f"{path}: 'cases' must be a list")
        for case in doc.get("cases") or []:
            if isinstance(case, Mapping) and isinstance(case.get("source"), Mapping) \
                    and case["source"].get("candidate_id") == candidate_id:
                raise UsageError(f"candidate {candidate_id} is already case {case.get('id')} in {path}")
        problems = lint_cases(path)  # appending to a broken dataset would bury the problem under a new case
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UsageError(f"{path} does not pass `tracesieve cases lint`: {problems[0]}{more}; fix it first")

    removed, _ = _read_removed(path.parent / REMOVED_FILE)
    events, _ = _read_history(path.parent / HISTORY_FILE)
    used = set(_case_ids(doc)) | set(removed) | {str(ev.get("case_id")) for _, ev in events if ev.get("case_id")}
    if case_id is not None:
        if not CASE_ID.match(case_id):
            raise UsageError(f"case id {case_id!r} must look like TS-0001")
        if case_id in used:
            raise UsageError(f"case id {case_id} is already used (cases.yaml, {REMOVED_FILE} or {HISTORY_FILE})")
    else:
        case_id = f"TS-{max((_id_number(i) for i in used), default=0) + 1:04d}"

    case = _build_case(case_id, candidate, str(owner).strip(), severity, now)
    plain: dict[str, Any] = _plain(case)
    errors = sorted(jsonschema.Draft202012Validator(CASE_SCHEMA).iter_errors(plain), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.path) or "case"
        raise UsageError(f"candidate {candidate_id} does not make a valid case: {where}: {first.message}")

    if doc is None:
        new_doc = CommentedMap()
        new_doc["schema_version"] = DATASET_SCHEMA_VERSION
        modes = CommentedSeq(FAILURE_MODES)
        modes.fa.set_flow_style()
        new_doc["failure_modes"] = modes
        new_doc["cases"] = CommentedSeq([case])
        new_text = _HEADER + _dump(y, new_doc)
    else:
        new_text = _appended(text, doc, case, y, "cases")
    _atomic_write(path, new_text)

    append_history(path, "promoted", case_id,
                   {"candidate_id": candidate_id, "by": str(owner).strip(),
                    "failure_mode": candidate.get("failure_mode"), "trace_id": plain["source"]["trace_id"]}, now)
    return plain


promote_case = _under_dataset_lock(_promote_case)


def promote_and_mark(cases_path: str | os.PathLike[str], candidate: Mapping[str, Any], owner: str,
                     mark: Callable[[dict[str, Any]], object], *, severity: str | None = None,
                     case_id: str | None = None) -> dict[str, Any]:
    """:func:`promote_case`, then ``mark(case)`` (the store records the promotion), under one dataset lock.

    If ``mark`` raises (another reviewer rejected or promoted the candidate since it was read), the
    case and its history event are taken back out (the files are put back as they were) and the
    error propagates. The lock is held across ``mark``, so no other writer's change is undone.
    """
    path = Path(cases_path)
    with _dataset_locked(path):
        saved = {p: p.read_bytes() if p.exists() else None for p in (path, path.parent / HISTORY_FILE)}
        case = _promote_case(path, candidate, owner, severity=severity, case_id=case_id)
        try:
            mark(case)
        except BaseException:
            for p, data in saved.items():
                with contextlib.suppress(OSError):
                    if data is None:
                        p.unlink(missing_ok=True)
                    else:
                        p.write_bytes(data)
            raise
    return case


# ---------------------------------------------------------------------------
# remove

def _without_case_text(text: str, doc: CommentedMap, index: int) -> str | None:
    """The file text without the ``index``-th case's lines, or None when they cannot be told apart.

    The case's lines run from its ``- id`` line to the next case (or the next top-level key, or the
    end of the file), less the comments and blank lines that lead into what follows.
    """
    cases = doc.get("cases")
    if not isinstance(cases, CommentedSeq) or cases.fa.flow_style():
        return None
    start = _line(cases, index)
    lines = text.splitlines()
    if start is None:
        return None
    start -= 1
    if index + 1 < len(cases):
        end = (_line(cases, index + 1) or 0) - 1
    else:
        keys = list(doc.keys())
        end = len(lines)
        if keys[-1] != "cases":
            try:
                end = int(doc.lc.key(keys[keys.index("cases") + 1])[0])
            except (AttributeError, KeyError, IndexError, TypeError):
                return None
    if not 0 <= start < end <= len(lines):
        return None
    while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return _newline(text).join(lines[:start] + lines[end:]) + _newline(text)


def _appended_to_ledger(path: Path, entry: CommentedMap, y: YAML) -> str:
    """The text of cases_removed.yaml with ``entry`` appended under ``removed:`` (created when missing)."""
    if not path.exists():
        return _dump(y, {"removed": [entry]})
    text = _read_text(path)
    try:
        doc = y.load(text)
    except YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(exc).split())}); fix it first") from None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("removed", []), (list, type(None))):
        raise UsageError(f"{path}: expected a mapping with a list under 'removed'; fix it first")
    return _appended(text, doc, entry, y, "removed")


@_under_dataset_lock
def remove_case(
    cases_path: str | os.PathLike[str], case_id: str, reason: str, by: str, now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Remove case ``case_id`` from cases.yaml, with an entry in cases_removed.yaml and a ``removed``
    event in history.jsonl; returns the ledger entry as plain data.

    The other cases keep their bytes (comments, order, quoting) when the case's lines can be cut out
    alone, else the file goes through a ruamel.yaml round-trip. The ledger is written first, so a
    run cut short leaves a state ``cases lint`` reports and a second run completes. Raises
    NotFoundError for a missing file or an unknown id, UsageError for an empty reason or remover or
    a file that is not a failure dataset. Not idempotent: a second call finds no such case.
    """
    path = Path(cases_path)
    now = (now or utcnow()).replace(microsecond=0)
    reason, by = str(reason).strip(), str(by).strip()
    if not reason:
        raise UsageError("removing a case needs a reason (--reason TEXT)")
    if not by:
        raise UsageError("removing a case needs who removes it (--by NAME)")
    if not path.is_file():
        raise NotFoundError(f"no failure dataset at {path}")
    y = _yaml()
    text = _read_text(path)
    doc, cases = _dataset(path, text, y)
    found = [i for i, c in enumerate(cases) if isinstance(c, Mapping) and str(c.get("id")) == case_id]
    if not found:
        raise NotFoundError(f"no case {case_id!r} in {path}")
    if len(found) > 1:
        raise UsageError(f"{path}: {case_id} is there {len(found)} times; fix the duplicate ids first")
    index = found[0]

    new_text = _without_case_text(text, doc, index) or ""
    if new_text:  # verify the cut parses to exactly the old dataset less this case
        try:
            check = y.load(new_text)
        except YAMLError:  # the cut took an anchor (`&id001`) that a later case's alias still names
            check = None
        expected = _plain(doc)
        expected["cases"] = [c for i, c in enumerate(expected["cases"]) if i != index]
        got = _plain(check) if isinstance(check, Mapping) else None
        if got is not None and got.get("cases") is None and expected["cases"] == []:
            got["cases"] = []
        if got != expected:
            new_text = ""
    if not new_text:  # round-trip fallback: keeps comments and order, may restyle
        del cases[index]
        new_text = _dump(y, doc)

    entry = CommentedMap()
    entry["id"] = case_id
    entry["reason"] = reason
    entry["by"] = by
    entry["at"] = now
    ledger = path.parent / REMOVED_FILE
    removed, _ = _read_removed(ledger)
    if case_id not in removed:  # else an earlier run was cut short after writing the ledger
        _atomic_write(ledger, _appended_to_ledger(ledger, entry, y))
    _atomic_write(path, new_text)
    append_history(path, "removed", case_id, {"reason": reason, "by": by}, now)
    plain: dict[str, Any] = _plain(entry)
    return plain


# ---------------------------------------------------------------------------
# regressed_count (written by gate)

_COUNT = re.compile(r"\d+")


@_under_dataset_lock
def bump_regressed_count(cases_path: str | os.PathLike[str], case_ids: Collection[str]) -> dict[str, int]:
    """Add 1 to ``regressed_count`` of each case in ``case_ids``; returns the new counts.

    Only the digits of those counts change: every other byte (comments, order,
    quoting) stays. When a count cannot be edited in place (an odd layout), the file
    goes through a ruamel.yaml round-trip instead, which keeps comments and order.
    The write is atomic (temp file + rename). Not idempotent: each call adds 1.
    Raises UsageError when the file is not a failure dataset.
    """
    path = Path(cases_path)
    wanted = set(case_ids)
    if not wanted:
        return {}
    text = _read_text(path)
    y = _yaml()
    doc, cases = _dataset(path, text, y)
    lines = text.split("\n")
    counts: dict[str, int] = {}
    edits: list[tuple[int, int, int, str]] = []  # line, column, length of the old digits, new digits
    in_place = True
    for case in cases:
        if not isinstance(case, CommentedMap) or str(case.get("id")) not in wanted:
            continue
        old = case.get("regressed_count")
        new = (old if isinstance(old, int) and not isinstance(old, bool) else 0) + 1
        counts[str(case["id"])] = new
        try:
            line, col = case.lc.value("regressed_count")
            m = _COUNT.match(lines[line], col) if isinstance(old, int) else None
        except (AttributeError, KeyError, IndexError, TypeError):
            m = None
        if m is None or int(m.group(0)) != old:
            in_place = False
        else:
            edits.append((line, col, len(m.group(0)), str(new)))
    if in_place:
        for line, col, length, digits in edits:
            lines[line] = lines[line][:col] + digits + lines[line][col + length:]
        new_text = "\n".join(lines)
        check = y.load(new_text)
        expected = _plain(doc)
        for case in expected["cases"]:
            if isinstance(case, dict) and str(case.get("id")) in counts:
                case["regressed_count"] = counts[str(case["id"])]
        in_place = _plain(check) == expected
    if not in_place:
        for case in cases:
            if isinstance(case, CommentedMap) and str(case.get("id")) in counts:
                case["regressed_count"] = counts[str(case["id"])]
        new_text = _dump(y, doc)
    _atomic_write(path, new_text)
    return counts


# ---------------------------------------------------------------------------
# lint

def lint_cases(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of a failure dataset and its ledger, one line each; empty when clean.

    Reports: invalid YAML, schema errors (missing keys, misspelt ones, wrong types, severity /
    blast_radius / status outside their enums, malformed ids), an ``expected_behavior`` of an
    active case that ``gate`` cannot score (a key with no scorer, a value of the wrong shape),
    duplicate ids, a failure_mode outside the taxonomy, bad ledger entries or history lines, an id in both
    cases.yaml and the ledger, and an id that history.jsonl recorded as promoted that is
    missing from cases.yaml without a ledger entry. Raises NotFoundError when the file is
    missing. Read-only.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"no failure dataset at {p}")
    name = p.name
    try:
        doc = _load(p)
    except YAMLError as exc:
        return [f"{name}: not valid YAML: {' '.join(str(exc).split())}"]
    except UnicodeDecodeError as exc:
        return [_not_utf8(p, exc)]
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        return [f"{name}: expected a mapping with schema_version, failure_modes and cases"]
    problems.extend(f"{name}: {p}" for p in _misspelt_keys(doc, DATASET_KEYS))
    if not _is_schema_version(doc.get("schema_version")):
        problems.append(f"{name}: schema_version must be {DATASET_SCHEMA_VERSION}, got {doc.get('schema_version')!r}")
    modes = doc.get("failure_modes")
    if not isinstance(modes, list):
        problems.append(f"{name}: failure_modes must list the taxonomy")
    else:
        for m in modes:
            if m not in FAILURE_MODES:
                problems.append(f"{name}: failure_modes: {m!r} is not in the taxonomy (schema_version 1)")
        missing = [m for m in FAILURE_MODES if m not in modes]
        if missing:
            problems.append(f"{name}: failure_modes is missing {', '.join(missing)}")
    cases = doc.get("cases")
    if cases is None:
        cases = []
    if not isinstance(cases, list):
        problems.append(f"{name}: cases must be a list")
        cases = []

    validator = jsonschema.Draft202012Validator(CASE_SCHEMA)
    seen: dict[str, list[int | None]] = {}
    for i, case in enumerate(cases):
        line = _line(cases, i)
        where = f"{name}:{line}" if line else name
        if not isinstance(case, Mapping):
            problems.append(f"{where}: cases[{i}]: expected a mapping")
            continue
        label = str(case.get("id")) if case.get("id") else f"cases[{i}]"
        plain = _plain(case)
        for err in sorted(validator.iter_errors(plain), key=lambda e: [str(x) for x in e.path]):
            key = ".".join(str(x) for x in err.path)
            problems.append(f"{where}: {label}: {key + ': ' if key else ''}{err.message}")
        problems.extend(f"{where}: {label}: {p}" for p in _misspelt_keys(case, CASE_FIELDS))
        for key, kind in _values_without_json(plain):
            fix = ("write the whole character, or drop the half" if kind == _SURROGATE_KIND
                   else "use a string, number, list or mapping")
            problems.append(f"{where}: {label}: {key}: a YAML {kind} has no JSON form (gate hands the case to the "
                            f"agent as JSON and export writes it as JSON); {fix}")
        if case.get("status") == "active":  # what gate runs must be scorable: the gate's own check
            problems.extend(f"{where}: {label}: {p}" for p in expected_problems(case.get("expected_behavior")))
        mode = case.get("failure_mode")
        if mode is not None and mode not in FAILURE_MODES:
            problems.append(f"{where}: {label}: failure_mode {mode!r} is outside the taxonomy")
        at = plain.get("discovered_at")
        if isinstance(at, str):
            try:
                dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                problems.append(f"{where}: {label}: discovered_at {at!r} is not an ISO 8601 time")
        if case.get("id"):
            seen.setdefault(str(case["id"]), []).append(line)
    for cid, lines in seen.items():
        if len(lines) > 1:
            problems.append(f"{name}: {cid}: duplicate id (lines {', '.join(str(x) for x in lines)})")

    removed, removed_problems = _read_removed(p.parent / REMOVED_FILE)
    problems.extend(removed_problems)
    for cid in removed:
        if cid in seen:
            problems.append(f"{REMOVED_FILE}: {cid}: listed as removed but still in {name}")
    events, history_problems = _read_history(p.parent / HISTORY_FILE)
    problems.extend(history_problems)
    reported: set[str] = set()
    for n, ev in events:
        cid = str(ev.get("case_id") or "")
        if ev.get("event") == "promoted" and cid and cid not in seen and cid not in removed and cid not in reported:
            reported.add(cid)
            problems.append(
                f"{HISTORY_FILE}:{n}: {cid}: promoted but missing from {name} with no entry in {REMOVED_FILE}"
            )
    return problems


# ---------------------------------------------------------------------------
# export

def export_record(candidate: Mapping[str, Any]) -> dict[str, Any]:
    """One dataset row for other eval tools: ``{input, expected, metadata}`` (JSON-able).

    | record field | taken from the candidate | Phoenix example (`datasets.create_dataset` `inputs` / `outputs` / `metadata`) | Langfuse (`create_dataset_item`) | Braintrust (`dataset.insert`) |
    |---|---|---|---|---|
    | `input` | `input`: `{user_message, conversation_history}` | `input` | `input` | `input` |
    | `expected` | `expected`: the draft assertions (`required_tool_sequence`, `must_not`, `output_schema`, ...) | `output` | `expected_output` | `expected` |
    | `metadata` | `candidate_id`, `case_id`, `failure_mode`, `severity`, `blast_radius`, `detector`, `status`, `duplicate_of`, `occurrences`, `trace_ids`, `first_seen`, `last_seen`, `source`, `context`, `observed` | `metadata` | `metadata` (and `metadata.source.trace_id` fits `source_trace_id`) | `metadata` (and `metadata.candidate_id` fits `id`) |

    Times are ISO 8601 strings (UTC, ``Z``). Pure.
    """
    meta_keys = ("candidate_id", "case_id", "failure_mode", "severity", "blast_radius", "detector",
                 "status", "duplicate_of", "occurrences", "trace_ids", "first_seen", "last_seen",
                 "source", "context", "observed")
    metadata = {k: _plain(candidate.get(k)) for k in meta_keys if candidate.get(k) is not None}
    return {
        "input": _plain(candidate.get("input") or {"user_message": "", "conversation_history": []}),
        "expected": _plain(candidate.get("expected") or {}),
        "metadata": metadata,
    }


def export_case_record(case: Mapping[str, Any]) -> dict[str, Any]:
    """One dataset row from a reviewed case of ``cases.yaml``, shaped like :func:`export_record`.

    ``expected`` is the case's ``expected_behavior`` as people left it in review (the store keeps only the
    candidate's draft); ``metadata`` carries ``case_id`` and the candidate id from ``source``, so rows from
    either origin line up in another tool.
    """
    source = case.get("source")
    if not isinstance(source, Mapping):
        source = {}
    metadata: dict[str, Any] = {"case_id": case.get("id"), "candidate_id": source.get("candidate_id")}
    for key in ("failure_mode", "severity", "blast_radius", "status", "discovered_at", "discovered_by",
                "regressed_count", "remediation", "source", "context"):
        metadata[key] = case.get(key)
    return {
        "input": _plain(case.get("input") or {"user_message": "", "conversation_history": []}),
        "expected": _plain(case.get("expected_behavior") or {}),
        "metadata": {k: _plain(v) for k, v in metadata.items() if v is not None},
    }
