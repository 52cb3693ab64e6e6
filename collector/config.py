"""The config model: YAML shaped like the OpenTelemetry Collector's, every default in one place.

``load_config`` reads a file (or nothing: the documented defaults), substitutes
``${env:VAR}`` / ``${env:VAR:-default}``, validates every key and builds each
processor through its factory so that bad options are reported at startup, all
at once, each with its YAML path and the file name.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from tracesieve.collector.decode import DecodeLimits
from tracesieve.collector.registry import ProcessorRegistry
from tracesieve.processors.base import SpanProcessor, TraceProcessor
from tracesieve.processors.detectors import DetectorsProcessor
from tracesieve.processors.pii import PiiProcessor
from tracesieve.storage.errors import ConfigError
from tracesieve.storage.lake import INSTALL_HINT, LakeTarget, missing_extension_packages, redact
from tracesieve.storage.units import EnvText, format_duration, format_size, parse_duration, parse_size, typed_env

DEFAULT_GRPC_ENDPOINT = "127.0.0.1:4317"
DEFAULT_HTTP_ENDPOINT = "127.0.0.1:4318"
DEFAULT_DB_PATH = "tracesieve.duckdb"
DEFAULT_PIPELINE = ["pii", "detectors", "promotion"]
MAX_RETRY_HINT_SECONDS = 5.0
#: Below this a max_memory is a unit slip (``600`` meant as MB is 600 bytes); an idle collector holds more.
MIN_MEMORY_LIMIT = 64 * 1024 * 1024
# An operator's query through serve stops after this long; the CLI waits this plus a margin (client.py).
DEFAULT_QUERY_TIME_LIMIT = 110.0
MAX_QUERY_TIME_LIMIT = 24 * 3600.0
#: Deeper JSON would pass orjson's recursion limit once dotted keys and kvlist values stack up.
MAX_NESTING_DEPTH_LIMIT = 100
#: gRPC's max receive message length is a C int: 2GiB - 1 byte is the largest request either receiver takes.
MAX_REQUEST_SIZE_LIMIT = 2**31 - 1

#: The documented defaults (README "Configuration" shows this tree).
DEFAULTS: dict[str, Any] = {
    "receivers": {
        "otlp": {
            "protocols": {
                "grpc": {"endpoint": DEFAULT_GRPC_ENDPOINT},
                "http": {"endpoint": DEFAULT_HTTP_ENDPOINT},
            },
            "limits": {
                "max_request_size": "64MiB",
                "max_queued_spans": 200000,
                "max_attributes_per_span": 2048,
                "max_value_size": "1MiB",
                "max_nesting_depth": 32,
                "max_inflight_size": "256MiB",
                "max_memory": 0,
                "retry_after": "1s",
            },
        }
    },
    "processors": {"pii": {}, "detectors": {}, "promotion": {}},
    "storage": {"duckdb": {"path": DEFAULT_DB_PATH}},
    "service": {
        "pipelines": {"traces": {"receivers": ["otlp"], "processors": list(DEFAULT_PIPELINE)}},
        "span_workers": "auto",
        "query_time_limit": "110s",
    },
}


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str


@dataclasses.dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: TlsConfig | None = None

    @property
    def url_host(self) -> str:
        """The host as a URL or a gRPC target writes it: an IPv6 literal in brackets (``[::1]``).

        Bare, ``::1:4317`` is no address gRPC can bind and ``http://::1:4318`` no URL the CLI can reach.
        """
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def address(self) -> str:
        return f"{self.url_host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Limits:
    max_request_size: int = 64 * 1024 * 1024
    max_queued_spans: int = 200_000
    max_attributes_per_span: int = 2048
    max_value_size: int = 1024 * 1024
    max_nesting_depth: int = 32
    max_inflight_size: int = 256 * 1024 * 1024  # request bytes held at once; beyond it: the throttling answer
    max_memory: int = 0  # resident bytes of the collector and its span workers; beyond it: throttling. 0 = off
    retry_after: float = 1.0


@dataclasses.dataclass
class Config:
    """The validated, effective configuration."""

    source: str
    path: str | None  # the config file (worker processes load it again); None: the defaults
    grpc: Endpoint | None
    http: Endpoint | None
    bearer_token: str | None
    limits: Limits
    db_path: str
    span_processors: list[SpanProcessor]
    trace_processors: list[TraceProcessor]
    tree: dict[str, Any]  # the effective YAML tree (for --print-config)
    span_workers: int = 0  # worker processes for decode + span stage and the built-in rules; 0 = none
    api_key: str | None = None  # accepted in the x-api-key header (bearer_token: in Authorization: Bearer)
    lake: LakeTarget | None = None  # storage.ducklake: many collectors on one store (db_path is then unused)
    span_processor_ids: list[str] = dataclasses.field(default_factory=list)  # pipeline ids of span_processors
    trace_processor_ids: list[str] = dataclasses.field(default_factory=list)  # pipeline ids of trace_processors
    query_time_limit: float = DEFAULT_QUERY_TIME_LIMIT  # seconds an operator's query may run through serve

    @property
    def secrets(self) -> list[str]:
        """Every configured secret the log must never show: token, API key, the pii processors' keys."""
        keys = [p.sanitizer.secret_key for p in self.span_processors if isinstance(p, PiiProcessor)]
        return [s for s in (self.bearer_token, self.api_key, *keys) if s]

    @property
    def redacts_pii(self) -> bool:
        """Whether a ``pii`` processor is in the pipeline: without one, spans are stored as received."""
        return any(isinstance(p, PiiProcessor) for p in self.span_processors)

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_attributes_per_span=self.limits.max_attributes_per_span,
            max_value_size=self.limits.max_value_size,
            max_nesting_depth=self.limits.max_nesting_depth,
            safe_cut=next((p.sanitizer.safe_cut for p in self.span_processors if isinstance(p, PiiProcessor)), None),
            whole_key=next((p.sanitizer.key_holds_pii for p in self.span_processors if isinstance(p, PiiProcessor)),
                           None),
        )

    @property
    def redaction_types(self) -> list[str]:
        """Every placeholder type the pipeline's ``pii`` processors write: the built-in ones and each
        ``extra_patterns`` name."""
        return sorted({rule.type for proc in self.span_processors if isinstance(proc, PiiProcessor)
                       for rule in proc.sanitizer.rules})

    def redact_text(self, text: str) -> str:
        """``text`` as the ``pii`` processors of the pipeline leave span text: what a reviewer types into the
        store (a reject reason that quotes the customer's e-mail or a key) is sanitized like span content,
        with the same placeholders and pseudonyms. Unchanged when ``pii`` is not in the pipeline."""
        for proc in self.span_processors:
            if isinstance(proc, PiiProcessor):
                text, _ = proc.sanitizer.redact(text)
        return text

    @property
    def decision_wait(self) -> float:
        for proc in self.trace_processors:
            wait = getattr(proc, "decision_wait", None)
            if isinstance(wait, (int, float)):
                return float(wait)
        return 5.0

    def printable(self) -> str:
        tree = copy.deepcopy(self.tree)
        auth = tree.get("receivers", {}).get("otlp", {}).get("auth")
        if isinstance(auth, dict):
            for key in ("bearer_token", "api_key"):
                if auth.get(key):
                    auth[key] = "<redacted>"
        processors = tree.get("processors")
        if isinstance(processors, dict):
            for options in processors.values():
                _redact_secret_options(options)
        lake = tree.get("storage", {}).get("ducklake")
        if isinstance(lake, dict) and isinstance(lake.get("catalog"), str):
            lake["catalog"] = redact(lake["catalog"])
        return yaml.safe_dump(_dollars_escaped(_plain(tree)), sort_keys=False)

    def shutdown_processors(self) -> None:
        for span_proc in self.span_processors:
            span_proc.shutdown()
        for trace_proc in self.trace_processors:
            trace_proc.shutdown()


#: Option names whose values --print-config never shows (pii's secret_key; a plugin's token or password).
_SECRET_OPTION = re.compile(r"secret|token|password|passwd|api_?key|credential", re.IGNORECASE)


def _redact_secret_options(node: Any) -> None:
    """Replace, in place, every scalar value under a secret-looking key of a processor's options."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and _SECRET_OPTION.search(key) and value is not None and not isinstance(
                    value, (dict, list, bool)):
                node[key] = "<redacted>"
            else:
                _redact_secret_options(value)
    elif isinstance(node, list):
        for item in node:
            _redact_secret_options(item)


_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: What substitution replaces, left to right: ``$$`` (a literal ``$``, as in the OpenTelemetry Collector:
#: ``$${env:X}`` stays the text ``${env:X}``), a reference, or a ``${`` that opens no reference (an error).
_SUBSTITUTION = re.compile(r"\$\$|" + _ENV.pattern + r"|\$\{")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, as the OpenTelemetry Collector does.

    PyYAML keeps the last value: a second ``receivers:`` silently dropped the first one's ``auth``.
    Keys a merge (``<<``) brings in may still be overridden.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if (key_node.tag, key_node.value) in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key_node.value!r}",
                                                        key_node.start_mark)
            seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | None = None, *, db_path: str | None = None,
                registry: ProcessorRegistry | None = None) -> Config:
    """Read, validate and build the config. Raises ConfigError naming the file and every bad key."""
    source = path or "<defaults>"
    raw: Any = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            raw = yaml.load(data.decode("utf-8"), Loader=_UniqueKeyLoader)
        except FileNotFoundError:
            raise ConfigError(["config file not found"], source) from None
        except OSError as exc:
            raise ConfigError([f"cannot read the config file ({exc.strerror or type(exc).__name__})"], source) from None
        except UnicodeDecodeError as exc:
            # Said like a YAML error, with its line: "internal error: UnicodeDecodeError" named neither the
            # file nor where in it (a config saved as Latin-1, a stray byte pasted into a value).
            line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigError([f"not valid UTF-8 (line {line}): save the file as UTF-8"], source) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError([f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"], source) from None
        if raw is None:
            raw = {}
    problems: list[str] = []
    raw = _substitute_env(raw, "", problems)
    substitution_problems = list(problems)
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping (receivers, processors, storage, service)"], source)
    config = _build(raw, db_path, registry or ProcessorRegistry.load(), problems)
    if problems:
        raise ConfigError(_without_consequences(problems, substitution_problems), source)
    assert config is not None
    config.source = source
    config.path = path
    return config


def _without_consequences(problems: list[str], substitution_problems: list[str]) -> list[str]:
    """``problems`` less those of a value whose substitution already failed (each is ``path: what``).

    An unset ``${env:VAR}`` leaves an empty value, and the check of that value added a second
    problem with the same cause (``decision_wait: expected a duration ..., got ''``).
    """
    failed = {problem.split(": ", 1)[0] for problem in substitution_problems}
    return [problem for problem in problems
            if problem in substitution_problems or problem.split(": ", 1)[0] not in failed]


def _substitute_env(node: Any, path: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str) and ("${" in node or "$$" in node):
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            if m.group(0) == "${":
                # `${env:TS-TOKEN}`, the OTel Collector's `${file:...}`, a bare `${VAR}`: kept as text, a bearer
                # token was the string written in the config. The value is never quoted (it may be a secret).
                problems.append(f"{path}: a '${{' that is no reference tracesieve substitutes: write ${{env:NAME}} "
                                "or ${env:NAME:-default} (NAME of letters, digits and _), or $$ for a literal $")
                return m.group(0)
            value = os.environ.get(m.group(1))
            if value is None:
                if m.group(2) is None:
                    problems.append(f"{path}: environment variable {m.group(1)} is not set "
                                    f"(write ${{env:{m.group(1)}:-default}} to give a default)")
                    return ""
                return m.group(2)
            return value
        whole = _ENV.fullmatch(node.strip())
        text = _SUBSTITUTION.sub(repl, node)
        return EnvText(text) if whole else text
    return node


def _plain(node: Any) -> Any:
    """``node`` with every :class:`EnvText` as the value it configures (YAML cannot dump a str subclass)."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, EnvText):
        value = typed_env(node)
        return str(value) if isinstance(value, EnvText) else value
    return node


def _dollars_escaped(node: Any) -> Any:
    """``node`` with each string that substitution would change written with ``$$`` for every ``$``.

    --print-config's output reads back as the same config: a value holding ``${`` or ``$$`` (configured
    as ``$${env:X}``, or a regex with ``$$``) was printed as it is, and reading it back substituted it
    or refused it. A string without either prints unchanged (a regex's lone ``$`` anchor stays ``$``).
    """
    if isinstance(node, dict):
        return {k: _dollars_escaped(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_dollars_escaped(v) for v in node]
    if isinstance(node, str) and ("${" in node or "$$" in node):
        return node.replace("$", "$$")
    return node


def _check_keys(node: Any, allowed: set[str], path: str, problems: list[str], hint: str = "") -> dict[str, Any]:
    if node is None:
        return {}
    if not isinstance(node, dict):
        problems.append(f"{path}: expected a mapping, got {type(node).__name__}")
        return {}
    for key in node:
        if key not in allowed:
            extra = hint if hint else f" (known: {', '.join(sorted(allowed))})"
            problems.append(f"{path}.{key}: unknown key{extra}" if path else f"{key}: unknown key{extra}")
    return node


def _build(raw: dict[str, Any], db_override: str | None, registry: ProcessorRegistry,
           problems: list[str]) -> Config | None:
    top = _check_keys(raw, {"receivers", "processors", "storage", "service"}, "", problems,
                      " (known: receivers, processors, storage, service; tracesieve has storage: where "
                      "the OpenTelemetry Collector has exporters:)")
    tree: dict[str, Any] = {}

    # receivers -------------------------------------------------------------
    receivers = _check_keys(top.get("receivers", DEFAULTS["receivers"]), {"otlp"}, "receivers", problems)
    otlp = _check_keys(receivers.get("otlp", {}), {"protocols", "auth", "limits"}, "receivers.otlp", problems)
    protocols_raw = otlp.get("protocols", DEFAULTS["receivers"]["otlp"]["protocols"])
    protocols = _check_keys(protocols_raw, {"grpc", "http"}, "receivers.otlp.protocols", problems)
    grpc = _endpoint(protocols, "grpc", DEFAULT_GRPC_ENDPOINT, problems)
    http = _endpoint(protocols, "http", DEFAULT_HTTP_ENDPOINT, problems)
    if grpc is None and http is None and not problems:
        problems.append("receivers.otlp.protocols: enable at least one of grpc, http")
    if grpc is not None and http is not None and _same_socket(grpc, http):
        problems.append(f"receivers.otlp.protocols: grpc and http cannot share {http.address}; "
                        "give each its own port (defaults: 4317 and 4318)")

    before = len(problems)
    auth = _check_keys(otlp.get("auth"), {"bearer_token", "bearer_token_file", "api_key", "api_key_file"},
                       "receivers.otlp.auth", problems)
    token = _secret(auth, "bearer_token", problems)
    api_key = _secret(auth, "api_key", problems)
    if "auth" in otlp and token is None and api_key is None and len(problems) == before:
        # `auth:` with its credential line commented out, or `auth: {}`: the collector would have been open
        # to anyone while its operator believed it guarded
        problems.append("receivers.otlp.auth: names no credential; give bearer_token, bearer_token_file, "
                        "api_key or api_key_file, or leave auth out to accept every client")

    limits = _limits(otlp.get("limits"), problems)
    tree["receivers"] = {"otlp": {
        "protocols": {k: _endpoint_tree(v) for k, v in (("grpc", grpc), ("http", http)) if v is not None},
        **({"auth": {k: v for k, v in (("bearer_token", token), ("api_key", api_key)) if v}}
           if token or api_key else {}),
        "limits": {
            "max_request_size": format_size(limits.max_request_size),
            "max_queued_spans": limits.max_queued_spans,
            "max_attributes_per_span": limits.max_attributes_per_span,
            "max_value_size": format_size(limits.max_value_size),
            "max_nesting_depth": limits.max_nesting_depth,
            "max_inflight_size": format_size(limits.max_inflight_size),
            "max_memory": format_size(limits.max_memory) if limits.max_memory else 0,
            "retry_after": f"{limits.retry_after:g}s",
        },
    }}

    # storage ---------------------------------------------------------------
    storage = _check_keys(top.get("storage", DEFAULTS["storage"]), {"duckdb", "ducklake"}, "storage", problems)
    db_path = DEFAULT_DB_PATH
    lake: LakeTarget | None = None
    if "ducklake" in storage and "duckdb" in storage:
        problems.append("storage: give exactly one of duckdb (one machine) or ducklake (many collectors)")
    elif "ducklake" in storage:  # --db then only names where serve publishes its query surface (<db>.serve.json)
        lake = _lake(storage["ducklake"], problems)
    duck = _check_keys(storage.get("duckdb", {}), {"path"}, "storage.duckdb", problems)
    if "path" in duck:
        if isinstance(duck["path"], str) and duck["path"]:
            db_path = duck["path"]
        else:
            problems.append("storage.duckdb.path: expected a file path")
    if db_override:
        db_path = db_override
    if lake is not None:
        tree["storage"] = {"ducklake": {"catalog": lake.catalog, "data_path": lake.data_path}}
    else:
        tree["storage"] = {"duckdb": {"path": db_path}}

    # processors + pipeline --------------------------------------------------
    proc_section = top.get("processors")
    if proc_section is None:
        proc_section = {}
    if not isinstance(proc_section, dict):
        problems.append("processors: expected a mapping of processor id to options")
        proc_section = {}
    service = _check_keys(top.get("service", {}), {"pipelines", "span_workers", "query_time_limit"}, "service",
                          problems)
    span_workers = _span_workers(service.get("span_workers", "auto"), problems)
    query_time_limit = _query_time_limit(service.get("query_time_limit", DEFAULT_QUERY_TIME_LIMIT), problems)
    pipelines = _check_keys(service.get("pipelines", {}), {"traces"}, "service.pipelines", problems)
    traces = _check_keys(pipelines.get("traces", {}), {"receivers", "processors"}, "service.pipelines.traces",
                         problems)
    pipeline_receivers = traces.get("receivers", ["otlp"])
    if pipeline_receivers != ["otlp"]:
        problems.append("service.pipelines.traces.receivers: only [otlp] is available")
    names = traces.get("processors", list(DEFAULT_PIPELINE))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("service.pipelines.traces.processors: expected a list of processor ids")
        names = []
    for pid in proc_section:
        if registry.get(str(pid).split("/", 1)[0]) is None:
            problems.append(f"processors.{pid}: {registry.unknown(str(pid).split('/', 1)[0])}")
    span_procs: list[SpanProcessor] = []
    span_ids: list[str] = []
    trace_procs: list[TraceProcessor] = []
    trace_ids: list[str] = []
    tree_procs: dict[str, Any] = {}
    seen_trace = False
    for i, pid in enumerate(names):
        type_name = pid.split("/", 1)[0]
        factory = registry.get(type_name)
        where = f"service.pipelines.traces.processors[{i}]"
        filed_before = [j for j, earlier in enumerate(names[:i]) if earlier.split("/", 1)[0] == "promotion"]
        if type_name == "detectors" and filed_before:  # promotion files only the detections made before it
            problems.append(f"{where}: 'detectors' must come before 'promotion' (at [{filed_before[0]}]), "
                            "which files the detections made before it into candidates")
        if pid in names[:i]:  # run twice, it would judge twice and redact placeholders; OTel refuses it too
            problems.append(f"{where}: {pid!r} is already in the pipeline at [{names.index(pid)}]; "
                            f"a second instance needs its own id, {type_name}/<name>")
            continue
        if factory is None:
            if pid not in proc_section:  # else processors.<pid> already says it, and the line would say it twice
                problems.append(f"{where}: {registry.unknown(type_name)}")
            continue
        if pid not in proc_section and "/" in pid:
            problems.append(f"{where}: {pid!r} is not defined under processors:")
            continue
        options = proc_section.get(pid)
        if options is None:          # `pii:` alone; `pii: []` or `pii: false` is the processor's to refuse
            options = {}
        tree_procs[pid] = options
        try:
            proc = factory.from_config(options, path=f"processors.{pid}")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except Exception as exc:  # a third-party factory's own bug: still a config problem, named
            problems.append(f"processors.{pid}: processor {type_name!r} refused its options: "
                            f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            continue
        missing = _missing_methods(proc, factory.kind)
        if missing:
            problems.append(f"processors.{pid}: processor {type_name!r} (kind {factory.kind!r}) has no "
                            f"{' or '.join(missing)} method; see the processor protocol in tracesieve.processors")
            continue
        if isinstance(proc, DetectorsProcessor):  # --print-config shows its effective thresholds, defaults too
            tree_procs[pid] = proc.config.as_options()
        if factory.kind == "span":
            if seen_trace:
                problems.append(f"{where}: span-stage processor {pid!r} must come before trace-stage processors")
            span_procs.append(proc)  # type: ignore[arg-type]
            span_ids.append(pid)
        else:
            seen_trace = True
            trace_procs.append(proc)  # type: ignore[arg-type]
            trace_ids.append(pid)
    for pid in proc_section:  # configured but not in the pipeline: its options are still checked, as OTel does
        unused = registry.get(str(pid).split("/", 1)[0])
        if unused is None or pid in names:
            continue
        try:
            unused.from_config(proc_section.get(pid) or {}, path=f"processors.{pid}").shutdown()
        except ConfigError as exc:
            problems.extend(exc.problems)
        except Exception as exc:
            problems.append(f"processors.{pid}: processor {str(pid).split('/', 1)[0]!r} refused its options: "
                            f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    tree["processors"] = tree_procs
    tree["service"] = {"pipelines": {"traces": {"receivers": ["otlp"], "processors": names}},
                       "span_workers": service.get("span_workers", "auto"),
                       "query_time_limit": format_duration(query_time_limit)}
    if problems:
        return None
    return Config(
        source="", path=None, grpc=grpc, http=http, span_workers=span_workers, bearer_token=token, api_key=api_key,
        limits=limits, db_path=db_path,
        span_processors=span_procs, trace_processors=trace_procs, tree=tree, lake=lake, span_processor_ids=span_ids,
        trace_processor_ids=trace_ids,
        query_time_limit=query_time_limit,
    )



#: The methods each stage calls on a processor (processors/base.py): checked once the processor is built, so
#: a plugin of the wrong shape stops startup naming itself instead of failing every judge round or request.
_STAGE_METHODS: dict[str, tuple[str, ...]] = {"span": ("process", "shutdown"), "trace": ("process_traces", "shutdown")}


def _missing_methods(proc: Any, kind: str) -> list[str]:
    """The stage methods ``proc`` (what ``from_config`` returned) lacks or holds as non-callables."""
    return [f"{name}()" for name in _STAGE_METHODS.get(kind, ()) if not callable(getattr(proc, name, None))]


#: What a credential may hold: visible ASCII, spaces only inside (what a header and gRPC metadata carry).
_HEADER_SAFE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def _secret(auth: dict[str, Any], name: str, problems: list[str]) -> str | None:
    """``name`` given inline (``${env:...}`` works) or read from ``name_file`` (trailing newline dropped)."""
    path = f"receivers.otlp.auth.{name}"
    inline, file_name = auth.get(name), auth.get(f"{name}_file")
    if f"{name}_file" in auth and file_name is None:  # `bearer_token_file:` with no value: not "no auth"
        problems.append(f"{path}_file: expected a file path")
        return None
    if name in auth and inline is None:  # `bearer_token:` with no value: not "no auth", as '' is not either
        problems.append(f"{path}: expected a non-empty string")
        return None
    if inline is not None and file_name is not None:
        problems.append(f"{path}: give {name} or {name}_file, not both")
        return None
    if file_name is not None:
        if not isinstance(file_name, str) or not file_name:
            problems.append(f"{path}_file: expected a file path")
            return None
        try:
            with open(file_name, encoding="utf-8") as fh:
                inline = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}_file: cannot read {file_name} ({type(exc).__name__})")
            return None
        if not inline:
            problems.append(f"{path}_file: {file_name} is empty")
            return None
        return str(inline)
    if inline is not None and (not isinstance(inline, str) or not inline):
        problems.append(f"{path}: expected a non-empty string")
        return None
    if isinstance(inline, str) and not _HEADER_SAFE.fullmatch(inline):
        # Never quoted: a newline from the secret's file, a non-ASCII or control character.
        problems.append(f"{path}: holds surrounding whitespace, a control or a non-ASCII character, which no HTTP "
                        "header or gRPC metadata can carry (every client would be refused)")
        return None
    return inline if isinstance(inline, str) else None


def _lake(node: Any, problems: list[str]) -> LakeTarget | None:
    """storage.ducklake: {catalog: "postgres:dbname=... host=...", data_path: DIR}; the extensions must be installed."""
    where = "storage.ducklake"
    lake = _check_keys(node, {"catalog", "data_path"}, where, problems)
    catalog, data_path = lake.get("catalog"), lake.get("data_path")
    before = len(problems)
    if not isinstance(catalog, str) or not catalog.startswith("postgres:") or not catalog[len("postgres:"):].strip():
        problems.append(f"{where}.catalog: expected a PostgreSQL connection string such as "
                        "\"postgres:dbname=tracesieve host=127.0.0.1\" (the database must exist)")
    if not isinstance(data_path, str) or not data_path:
        problems.append(f"{where}.data_path: expected the directory (or object store URL) for the lake's Parquet files")
    if len(problems) > before:
        return None
    missing = missing_extension_packages()
    if missing:
        problems.append(f"{where}: the DuckDB extensions are not installed ({', '.join(missing)}): {INSTALL_HINT}")
        return None
    assert isinstance(catalog, str) and isinstance(data_path, str)
    return LakeTarget(catalog=catalog, data_path=data_path)


def _query_time_limit(value: Any, problems: list[str]) -> float:
    try:
        seconds = parse_duration(value)
        if not 1 <= seconds <= MAX_QUERY_TIME_LIMIT:
            raise ValueError(f"must be between 1s and {MAX_QUERY_TIME_LIMIT / 3600:g}h")
    except ValueError as exc:
        problems.append(f"service.query_time_limit: {exc}")
        return DEFAULT_QUERY_TIME_LIMIT
    return seconds


def _span_workers(value: Any, problems: list[str]) -> int:
    """``auto``: one worker process per core but one, at most 4; none on a single core.

    The collector's own process keeps a core busy too (commits and the trace stage). On two cores
    a second worker acknowledges more (bench/ingest.py, default pipeline, session 12: 6,592 against
    5,186 spans/s from 4 senders; 8,130 against 6,319 from 12) and keeps the detection lag within
    decision_wait + 2 s at 4,000 spans/s (p95 5.9 against 10.3 s), but holds 200-250 MB more
    (1,071-1,116 against 821-921 MB at once): ``auto`` keeps to the memory, ``span_workers: 2`` buys
    the throughput. (Session 2 measured no gain, with a bench client that took half a core.)
    """
    value = typed_env(value)
    if value == "auto":
        cores = os.cpu_count() or 1
        return min(4, cores - 1) if cores > 1 else 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        problems.append(f"service.span_workers: expected auto or a number from 0 to 64, got {value!r}")
        return 0
    return value


def _endpoint(protocols: dict[str, Any], name: str, default: str, problems: list[str]) -> Endpoint | None:
    if name not in protocols:
        return None
    path = f"receivers.otlp.protocols.{name}"
    node = _check_keys(protocols[name] or {}, {"endpoint", "tls"}, path, problems)
    endpoint = node.get("endpoint", default)
    if not isinstance(endpoint, str) or ":" not in endpoint:
        problems.append(f"{path}.endpoint: expected host:port, got {endpoint!r}")
        return None
    host, _, port_text = endpoint.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        problems.append(f"{path}.endpoint: port must be a number from 0 to 65535, got {port_text!r}")
        return None
    tls = None
    if "tls" in node:
        tls_node = _check_keys(node["tls"], {"cert_file", "key_file"}, f"{path}.tls", problems)
        cert, key = tls_node.get("cert_file"), tls_node.get("key_file")
        if not isinstance(cert, str) or not isinstance(key, str):
            problems.append(f"{path}.tls: both cert_file and key_file are required")
        elif not os.path.exists(cert) or not os.path.exists(key):
            problems.append(f"{path}.tls: certificate or key file not found ({cert}, {key})")
        else:
            tls = TlsConfig(cert, key)
    return Endpoint(host, int(port_text), tls)


_ANY_HOST = ("0.0.0.0", "::", "")


def _same_socket(a: Endpoint, b: Endpoint) -> bool:
    """Whether two receivers would bind the same port: same host, or one listens on every address."""
    if a.port == 0 or a.port != b.port:
        return False

    def norm(host: str) -> str:
        return "127.0.0.1" if host.lower() == "localhost" else host.lower()

    return norm(a.host) == norm(b.host) or a.host in _ANY_HOST or b.host in _ANY_HOST


def _endpoint_tree(ep: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": ep.address}
    if ep.tls:
        out["tls"] = {"cert_file": ep.tls.cert_file, "key_file": ep.tls.key_file}
    return out


def _limits(node: Any, problems: list[str]) -> Limits:
    path = "receivers.otlp.limits"
    defaults = Limits()
    node = _check_keys(node, {f.name for f in dataclasses.fields(Limits)}, path, problems)
    values: dict[str, Any] = {}
    for key in ("max_request_size", "max_value_size", "max_inflight_size"):
        if key in node:
            try:
                values[key] = parse_size(node[key])
                if values[key] <= 0:
                    raise ValueError("must be greater than zero")
                if key == "max_request_size" and values[key] > MAX_REQUEST_SIZE_LIMIT:
                    raise ValueError(f"at most 2GiB - 1 byte ({MAX_REQUEST_SIZE_LIMIT} bytes, gRPC's largest "
                                     f"message), got {node[key]}")
            except ValueError as exc:
                problems.append(f"{path}.{key}: {exc}")
    if "max_memory" in node:
        try:
            values["max_memory"] = parse_size(node["max_memory"])  # 0: off
            if 0 < values["max_memory"] < MIN_MEMORY_LIMIT:
                raise ValueError(f"at least {format_size(MIN_MEMORY_LIMIT)} (an idle collector holds more), or 0 "
                                 f"for no limit; got {node['max_memory']}")
        except ValueError as exc:
            problems.append(f"{path}.max_memory: {exc}")
    for key in ("max_queued_spans", "max_attributes_per_span", "max_nesting_depth"):
        if key in node:
            value = typed_env(node[key])
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{path}.{key}: expected a positive integer, got {value!r}")
            elif key == "max_nesting_depth" and value > MAX_NESTING_DEPTH_LIMIT:
                problems.append(f"{path}.{key}: at most {MAX_NESTING_DEPTH_LIMIT}, got {value}")
            else:
                values[key] = value
    if "retry_after" in node:
        try:
            hint = parse_duration(node["retry_after"])
            if not 0 < hint <= MAX_RETRY_HINT_SECONDS:
                raise ValueError(f"must be between 1ms and {MAX_RETRY_HINT_SECONDS:g}s (longer hints make "
                                 "exporters drop data)")
            values["retry_after"] = hint
        except ValueError as exc:
            problems.append(f"{path}.retry_after: {exc}")
    return dataclasses.replace(defaults, **values)


def default_tree() -> Mapping[str, Any]:
    return copy.deepcopy(DEFAULTS)
