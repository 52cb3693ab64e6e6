"""The ``detectors`` trace-stage processor: built-in failure rules plus operator SQL rules.

Runs on the judge thread once a trace has settled (no new span for
``decision_wait``). For every trace of the batch it runs the built-in rules of
:mod:`tracesieve.processors.rules` (one or more per failure mode of the closed
taxonomy), then the operator's SQL rules, then the blast-radius rule (which
needs every other finding), and appends one :class:`Detection` per
(trace, span, detector, failure_mode) to ``batch.detections``; several findings
with the same key are merged into one detection whose evidence lists them all.
Deterministic: judging a trace twice yields the same detections and ids.

Config (``processors.detectors``; every default lives in :class:`DetectorsConfig`)::

    decision_wait: 5s
    latency_breach: {LLM: 30s, TOOL: 10s, RETRIEVER: 5s, AGENT: 120s}   # merged over the defaults; null turns a kind off
    blast_radius: {send_email: irreversible_write}   # per tool: its blast radius on tool findings;
                                                     # a failure mode as key: that mode's default
    severity: {hallucination: P0}                    # per failure mode, over the built-in defaults
    retrieval_min_score: 0.3                         # every score under it: low_score_retrieval; null: off
    citation_pattern: '\\[((?:doc|document|source|src)...)\\]'  # group 1 = the cited id(s)
    refusal_phrases: [...]                           # replaces the built-in list
    loop: {max_repeats: 3, max_steps: 50}
    feedback_score_threshold: 0.0
    disable: [latency_breach]                        # failure modes, detector or operator rule names
    rules:                                           # operator SQL rules over `spans`
      - {name: ..., failure_mode: ..., severity: P2, blast_radius: internal_visible, sql: SELECT ...}
    rule_time_limit: 10s                             # an operator rule running longer is interrupted
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from tracesieve.processors.base import SpanRow, StoreReader, TraceBatch
from tracesieve.processors.options import OptionReader
from tracesieve.processors.rules import (
    BUILTIN_DETECTORS, DEFAULT_REFUSAL_PHRASES, TRACE_RULES, Finding, RuleSettings, TraceView,
    irreversible_after_failure,
)
from tracesieve.processors.spanview import clip, loose
from tracesieve.storage.errors import ConfigError
from tracesieve.storage.schema import BLAST_RADII, FAILURE_MODES, SEVERITIES, SPAN_KINDS, Detection
from tracesieve.storage.sqlcheck import RuleSqlChecker, fails_on_data, wrap_rule_sql
from tracesieve.storage.sqlparams import packed
from tracesieve.storage.units import format_duration, typed_env

log = logging.getLogger(__name__)

_ID = r"(?i:doc|document|source|src)[-_:#]?[A-Za-z0-9][\w.:/-]*"  # [doc-1], [Doc-1], [DOC-1]

#: The longest ``decision_wait``: a trace quiet for a day has settled.
MAX_DECISION_WAIT = 24 * 3600.0

#: Built-in (severity, blast_radius) per failure mode.
DEFAULT_SEVERITY: dict[str, tuple[str, str]] = {
    "tool_invocation": ("P2", "internal_visible"),
    "tool_argument": ("P1", "internal_visible"),
    "retrieval_miss": ("P2", "internal_visible"),
    "hallucination": ("P1", "customer_visible"),
    "format_violation": ("P2", "internal_visible"),
    "truncation": ("P2", "customer_visible"),
    "refusal_overreach": ("P2", "customer_visible"),
    "latency_breach": ("P3", "internal_visible"),
    "loop": ("P2", "internal_visible"),
    "blast_radius_breach": ("P0", "irreversible_write"),
    "llm_error": ("P2", "internal_visible"),
    "negative_feedback": ("P2", "customer_visible"),
}


@dataclasses.dataclass(frozen=True)
class SqlRule:
    """One operator rule, already checked against the spans table shape."""

    name: str
    failure_mode: str
    severity: str
    blast_radius: str
    sql: str


@dataclasses.dataclass(frozen=True)
class DetectorsConfig:
    """The typed config of ``processors.detectors``; its defaults are the documented ones."""

    decision_wait: float = 5.0
    latency_breach: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"LLM": 30.0, "TOOL": 10.0, "RETRIEVER": 5.0, "AGENT": 120.0})
    blast_radius: Mapping[str, str] = dataclasses.field(default_factory=dict)  # per tool
    mode_blast_radius: Mapping[str, str] = dataclasses.field(default_factory=dict)  # per failure mode
    severity: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # DESIGN: a retrieval_miss is no documents "or every score under the threshold", a threshold on by
    # default. 0.3 reads scores as similarity or relevance, higher is better (OpenInference's
    # document.score from llama-index, rerankers, cosine similarity): a best match under it found
    # nothing useful. A retriever that records distances (lower is better) wants null.
    retrieval_min_score: float | None = 0.3
    citation_pattern: str = rf"\[\s*({_ID}(?:\s*[,;]\s*{_ID})*)\s*\]"
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSAL_PHRASES
    max_repeats: int = 3
    max_steps: int = 50
    feedback_score_threshold: float = 0.0
    disable: frozenset[str] = frozenset()
    rules: tuple[SqlRule, ...] = ()
    #: Seconds an operator SQL rule may run on one round's traces before it is interrupted and skipped for
    #: them (logged like a failed rule). The judge runs one statement at a time, and checkpoints wait on it:
    #: a rule that joins spans to itself without a key would otherwise stall every detection.
    rule_time_limit: float = 10.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, path: str) -> DetectorsConfig:
        """Validate every option; raise ConfigError listing each problem with its YAML path."""
        d = cls()
        opts = OptionReader(options, path)
        wait = opts.duration("decision_wait", d.decision_wait)
        if wait > MAX_DECISION_WAIT:  # the settler subtracts it from now: a huge one never lets a trace settle
            opts.problem("decision_wait", f"at most 24h, got {opts.raw('decision_wait')!r}")
            wait = d.decision_wait

        latency = dict(d.latency_breach)
        for kind, value in opts.mapping("latency_breach").items():
            where = f"{opts.here('latency_breach')}.{kind}"
            if not isinstance(kind, str) or kind.upper() not in SPAN_KINDS:
                opts.problems.append(f"{where}: unknown span kind (one of {', '.join(SPAN_KINDS)})")
                continue
            if value is None:
                latency.pop(kind.upper(), None)
                continue
            sub = OptionReader({"v": value}, where)
            seconds = sub.duration("v", 0.0)
            opts.problems.extend(p.replace(f"{where}.v", where) for p in sub.problems)
            if not sub.problems:
                latency[kind.upper()] = seconds

        blast: dict[str, str] = {}
        mode_blast: dict[str, str] = {}
        for tool, cls_ in opts.mapping("blast_radius").items():
            if cls_ not in BLAST_RADII:
                opts.problems.append(f"{opts.here('blast_radius')}.{tool}: expected one of {', '.join(BLAST_RADII)}, got {cls_!r}")
            elif tool in FAILURE_MODES:  # a mode's default blast radius; a tool's own class still wins
                mode_blast[tool] = cls_
            else:
                blast[str(tool)] = cls_

        severity: dict[str, str] = {}
        for mode, sev in opts.mapping("severity").items():
            where = f"{opts.here('severity')}.{mode}"
            if mode not in FAILURE_MODES:
                opts.problems.append(f"{where}: unknown failure mode (one of {', '.join(FAILURE_MODES)})")
            elif sev not in SEVERITIES:
                opts.problems.append(f"{where}: expected one of {', '.join(SEVERITIES)}, got {sev!r}")
            else:
                severity[mode] = sev

        min_score = typed_env(opts.raw("retrieval_min_score", d.retrieval_min_score))
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not math.isfinite(min_score)):
            opts.problem("retrieval_min_score", f"expected a finite number or null, got {min_score!r}")
            min_score = None

        pattern = opts.str("citation_pattern", d.citation_pattern)
        try:
            compiled = re.compile(pattern)
            if compiled.groups > 1:
                opts.problem("citation_pattern", "use at most one capturing group (the cited id); make others (?:...)")
        except re.error as exc:
            opts.problem("citation_pattern", f"not a valid regular expression: {exc}")

        phrases = opts.list("refusal_phrases", list(d.refusal_phrases))
        clean_phrases = []
        for i, p in enumerate(phrases):
            if not isinstance(p, str) or not p.strip():
                opts.problems.append(f"{opts.here('refusal_phrases')}[{i}]: expected a non-empty string")
            else:
                clean_phrases.append(p.strip().lower().replace("\u2019", "'"))

        loop = OptionReader(opts.mapping("loop"), opts.here("loop"))
        max_repeats = loop.int("max_repeats", d.max_repeats)
        max_steps = loop.int("max_steps", d.max_steps)
        if max_repeats < 2:
            loop.problem("max_repeats", f"must be at least 2, got {max_repeats}")
        if max_steps < 1:
            loop.problem("max_steps", f"must be at least 1, got {max_steps}")
        _absorb(opts, loop)

        threshold = opts.number("feedback_score_threshold", d.feedback_score_threshold)

        rule_items = opts.list("rules")
        rule_names = {item.get("name") for item in rule_items if isinstance(item, Mapping)}
        disable = set()
        for i, item in enumerate(opts.list("disable")):
            if item not in FAILURE_MODES and item not in BUILTIN_DETECTORS and item not in rule_names:
                opts.problems.append(f"{opts.here('disable')}[{i}]: {item!r} is neither a failure mode, "
                                     "a detector nor an operator rule")
            else:
                disable.add(item)

        rules = _read_rules(opts, rule_items, mode_blast)
        rule_time_limit = opts.duration("rule_time_limit", d.rule_time_limit)
        if rule_time_limit <= 0:
            opts.problem("rule_time_limit", f"must be more than 0s, got {opts.raw('rule_time_limit')!r}")
            rule_time_limit = d.rule_time_limit
        opts.finish()
        return cls(
            decision_wait=wait, latency_breach=latency, blast_radius=blast, mode_blast_radius=mode_blast,
            severity=severity,
            retrieval_min_score=float(min_score) if min_score is not None else None,
            citation_pattern=pattern, refusal_phrases=tuple(clean_phrases), max_repeats=max_repeats,
            max_steps=max_steps, feedback_score_threshold=threshold, disable=frozenset(disable), rules=rules,
            rule_time_limit=rule_time_limit,
        )

    def as_options(self) -> dict[str, Any]:
        """The effective options in config shape, defaults included (what ``serve --print-config`` shows)."""
        return {
            "decision_wait": format_duration(self.decision_wait),
            "latency_breach": {**{kind: None for kind in DetectorsConfig().latency_breach},  # a default turned off
                               **{kind: format_duration(s) for kind, s in self.latency_breach.items()}},
            "blast_radius": {**self.blast_radius, **self.mode_blast_radius},
            "severity": dict(self.severity),
            "retrieval_min_score": self.retrieval_min_score,
            "citation_pattern": self.citation_pattern,
            "refusal_phrases": list(self.refusal_phrases),
            "loop": {"max_repeats": self.max_repeats, "max_steps": self.max_steps},
            "feedback_score_threshold": self.feedback_score_threshold,
            "disable": sorted(self.disable),
            "rules": [dataclasses.asdict(r) for r in self.rules],
            "rule_time_limit": format_duration(self.rule_time_limit),
        }


def _on_root(finding: Finding, root_id: str) -> Finding:
    """An operator rule's finding on a span that is not one of the trace's (NULL, or another trace's id):
    the trace's root shows it, and the evidence keeps the id the rule returned."""
    evidence = {**finding.evidence, "span_id_returned": finding.span_id} if finding.span_id else finding.evidence
    return dataclasses.replace(finding, span_id=root_id, evidence=evidence)


_MESSAGE_CHARS = 500



def one_line(text: str, limit: int = _MESSAGE_CHARS) -> str:
    """A detection's message as one line a human reads: an exception text or a rule's message may span
    several lines (the whole text stays in evidence); whitespace runs fold to one space, and a long one is
    clipped so that with its ``…[N more chars]`` mark it is at most ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = max(0, limit - len(f"…[{len(flat)} more chars]"))  # the mark's count is at most len(flat)
    return flat[:cut] + f"…[{len(flat) - cut} more chars]"


def _absorb(parent: OptionReader, child: OptionReader) -> None:
    """Collect a nested reader's problems (unknown keys included) into its parent."""
    try:
        child.finish()
    except ConfigError as exc:
        parent.problems.extend(exc.problems)


_RULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _read_rules(opts: OptionReader, items: Sequence[Any], mode_blast: Mapping[str, str]) -> tuple[SqlRule, ...]:
    rules: list[SqlRule] = []
    seen: set[str] = set()
    checker: RuleSqlChecker | None = None
    try:
        for i, item in enumerate(items):
            where = f"{opts.here('rules')}[{i}]"
            r = OptionReader(item, where)
            name = r.str("name", None)
            mode = r.str("failure_mode", None)
            severity = r.str("severity", None)
            blast = r.str("blast_radius", None)
            sql = r.str("sql", None)
            if name is None:
                r.problem("name", "required")
            elif not _RULE_NAME.match(name):
                r.problem("name", f"use lower_snake_case, got {name!r}")
            elif name in BUILTIN_DETECTORS or name in seen:
                r.problem("name", f"{name!r} is already a detector name")
            elif name in FAILURE_MODES:  # `disable: [name]` would turn the whole mode off too
                r.problem("name", f"{name!r} is a failure mode; name the rule after what it finds")
            if mode is None:
                r.problem("failure_mode", "required")
            elif mode not in FAILURE_MODES:
                r.problem("failure_mode", f"{mode!r} is not in the failure taxonomy ({', '.join(FAILURE_MODES)})")
            if severity is None:
                r.problem("severity", "required")
            elif severity not in SEVERITIES:
                r.problem("severity", f"expected one of {', '.join(SEVERITIES)}, got {severity!r}")
            if blast is not None and blast not in BLAST_RADII:
                r.problem("blast_radius", f"expected one of {', '.join(BLAST_RADII)}, got {blast!r}")
            if sql is None:
                r.problem("sql", "required")
            else:
                checker = checker or RuleSqlChecker()
                r.problems.extend(f"{where}.{p}" for p in checker.check(sql))
            before = len(opts.problems)
            _absorb(opts, r)
            if name:  # the index says where to look; the name is what the operator calls the rule
                opts.problems[before:] = [p if repr(name) in p else f"{p} (rule {name!r})"
                                          for p in opts.problems[before:]]
            if len(opts.problems) == before and name and mode and severity and sql:
                seen.add(name)
                rules.append(SqlRule(name, mode, severity, blast or mode_blast.get(mode, DEFAULT_SEVERITY[mode][1]), sql))
    finally:
        if checker is not None:
            checker.close()
    return tuple(rules)



def rule_settings(config: DetectorsConfig | None = None) -> RuleSettings:
    """The rule knobs (thresholds, citation pattern, refusal phrases, ...) of a detectors config.

    The gate's scorers use the same settings, so a case is judged by the rules production runs.
    """
    c = config or DetectorsConfig()
    return RuleSettings(
        latency_ms={k: v * 1000.0 for k, v in c.latency_breach.items()},
        retrieval_min_score=c.retrieval_min_score,
        citation_pattern=re.compile(c.citation_pattern),
        refusal_phrases=c.refusal_phrases,
        max_repeats=c.max_repeats,
        max_steps=c.max_steps,
        feedback_score_threshold=c.feedback_score_threshold,
        tool_classes=c.blast_radius,
    )

class DetectorsProcessor:
    """Trace-stage processor that judges settled traces and appends detections.

    Runs on the single judge thread. ``process_traces`` does not mutate spans;
    it only appends to ``batch.detections``. ``decision_wait`` (seconds) is read
    by the collector's settler. A built-in rule that raises on one trace or an
    operator rule that fails at run time is counted in ``errors`` and skipped
    (logged once per batch without span content), unless ``strict`` is set.
    """

    kind: ClassVar[str] = "trace"

    def __init__(self, config: DetectorsConfig | None = None, *, strict: bool = False) -> None:
        self.config = config or DetectorsConfig()
        self.decision_wait: float = self.config.decision_wait
        self.strict = strict
        self.errors = 0
        self._settings = rule_settings(self.config)
        self._sql_rules = {r.name: r for r in self.config.rules}

    @classmethod
    def from_config(cls, options: Mapping[str, Any] | None, *, path: str = "processors.detectors") -> DetectorsProcessor:
        return cls(DetectorsConfig.from_options(options, path))

    # ------------------------------------------------------------------ judging

    def _enabled(self, detector: str, mode: str) -> bool:
        return detector not in self.config.disable and mode not in self.config.disable

    def judge(self, trace_id: str, spans: Sequence[SpanRow], extra: Sequence[Finding] = ()) -> list[Finding]:
        """Every enabled finding for one trace: built-in rules, then ``extra`` (operator rules), then blast radius."""
        if not spans:
            return []
        view = TraceView(trace_id, spans)
        findings: list[Finding] = []
        failed: list[str] = []  # "rule (ErrorType)": the error's text may quote span content
        for rule in TRACE_RULES:
            try:
                found = rule(view, self._settings)
            except Exception as exc:
                if self.strict:
                    raise
                failed.append(f"{rule.__name__} ({type(exc).__name__})")
                continue
            findings.extend(f for f in found if self._enabled(f.detector, f.failure_mode))
        findings.extend(f if f.span_id in view.by_id else _on_root(f, view.root_id)
                        for f in extra if self._enabled(f.detector, f.failure_mode))
        if self._enabled("irreversible_after_failure", "blast_radius_breach"):
            try:
                findings.extend(irreversible_after_failure(view, self._settings, findings))
            except Exception as exc:
                if self.strict:
                    raise
                failed.append(f"irreversible_after_failure ({type(exc).__name__})")
        self.errors += len(failed)
        if failed:  # named, with the trace, so that it can be reported and reproduced
            log.warning("detectors: built-in rule(s) %s failed on trace %s and were skipped",
                        ", ".join(failed), trace_id)
        return findings

    def findings_by_trace(self, traces: Mapping[str, Sequence[SpanRow]]) -> dict[str, list[Finding]]:
        """The built-in findings (blast radius included, operator rules not) of each trace that has any.

        Needs nothing but the spans, so the collector runs it in a span worker process, off the
        judge's GIL; ``process_traces`` gives the same result for traces no operator rule matched.
        """
        found = {}
        for trace_id, spans in traces.items():
            findings = self.judge(trace_id, spans)
            if findings:
                found[trace_id] = findings
        return found

    def detections_for(self, trace_id: str, findings: Sequence[Finding]) -> list[Detection]:
        """One Detection per (span, detector, failure_mode) of ``findings``, with severity and blast radius."""
        groups: dict[tuple[str, str, str], list[Finding]] = {}
        for f in findings:
            groups.setdefault((f.span_id, f.detector, f.failure_mode), []).append(f)
        sql_rules = self._sql_rules
        out = []
        for (span_id, detector, mode), group in groups.items():
            first = group[0]
            if detector in sql_rules:
                rule = sql_rules[detector]
                severity, blast = rule.severity, rule.blast_radius
            else:
                severity = self.config.severity.get(mode, DEFAULT_SEVERITY[mode][0])
                blast = self.config.mode_blast_radius.get(mode, DEFAULT_SEVERITY[mode][1])
                if first.tool and first.tool in self.config.blast_radius:
                    blast = self.config.blast_radius[first.tool]
            if len(group) == 1:
                message = one_line(first.message)
                evidence = first.evidence
            else:
                more = f" (+{len(group) - 1} more)"
                message = one_line(first.message, _MESSAGE_CHARS - len(more)) + more
                evidence = {"count": len(group), "findings": [g.evidence for g in group]}
            out.append(Detection(trace_id, span_id, detector, mode, severity, blast, message, dict(evidence)))
        return out

    def sql_findings(self, trace_ids: Sequence[str], received_at: Sequence[Any],
                     store: StoreReader) -> dict[str, list[Finding]]:
        """The operator rules' findings per trace; ``received_at``: every judged span's (bounds the scan).

        A finding whose rule returned no span_id has span_id "" until :meth:`judge` gives it the root's.
        """
        per_trace: dict[str, list[Finding]] = {}
        rules = [r for r in self.config.rules if self._enabled(r.name, r.failure_mode)]
        if not rules or not trace_ids:
            return per_trace
        judged = set(trace_ids)
        # The spans the judge loaded are all these traces have: none was received before the earliest.
        bounded = bool(received_at) and all(isinstance(r, dt.datetime) for r in received_at)
        since = [min(received_at)] if bounded else []
        failed: list[str] = []
        for rule in rules:
            sql = wrap_rule_sql(rule.sql, received_bound=bounded)
            try:
                rows = store.query(sql, [*since, packed(sorted(judged))], time_limit=self.config.rule_time_limit)
            except Exception as exc:
                if self.strict:
                    raise
                # One trace's data (a value a cast breaks) must not cost the traces that settled with it
                # their findings: run the rule again trace by trace, and skip only where it still fails.
                # A structural error (a missing table, memory) would only fail again, once per trace.
                retry = sorted(judged) if fails_on_data(exc) else []
                rows, errors = [], len(judged) - len(retry)
                for trace_id in retry:
                    try:
                        rows.extend(store.query(sql, [*since, packed([trace_id])],
                                                time_limit=self.config.rule_time_limit))
                    except Exception:
                        errors += 1
                if errors:  # its text may quote span content: the class only
                    failed.append(f"{rule.name} ({type(exc).__name__}) on {errors} of {len(judged)} traces")
            for row in rows:
                trace_id = row.get("trace_id")
                if trace_id not in judged:
                    continue
                evidence = loose(row.get("evidence"))
                if not isinstance(evidence, dict):
                    evidence = {"value": clip(evidence) if evidence is not None else None}
                message = str(row.get("message") or "") or f"operator rule {rule.name} matched"
                if len(" ".join(message.split())) > _MESSAGE_CHARS and "message" not in evidence:
                    evidence = {**evidence, "message": clip(message)}  # the detection's message is clipped
                per_trace.setdefault(trace_id, []).append(Finding(
                    str(row.get("span_id") or ""), rule.name, rule.failure_mode, message,
                    {"rule": rule.name, **evidence},
                ))
        self.errors += len(failed)
        if failed:
            log.warning("detectors: operator SQL rule(s) failed and were skipped on the traces they failed on: %s",
                        ", ".join(failed))
        return per_trace

    def process_traces(self, batch: TraceBatch, store: StoreReader) -> TraceBatch:
        """Append this batch's detections (idempotent ids) and return the same batch."""
        received = [s.get("received_at") for spans in batch.traces.values() for s in spans]
        sql_findings = self.sql_findings(list(batch.traces), received, store)
        for trace_id, spans in batch.traces.items():
            findings = self.judge(trace_id, spans, sql_findings.get(trace_id, ()))
            batch.detections.extend(self.detections_for(trace_id, findings))
        return batch

    def shutdown(self) -> None:
        """Nothing to release. Safe to call twice, and before any batch."""
