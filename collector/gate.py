"""``tracesieve gate``: replay the failure dataset against the agent and fail CI when a case fails again.

For each active case the agent command runs once (or ``repeat`` times) with the
case input on stdin and in ``TRACESIEVE_CASE_INPUT``, and the standard OTel
variables pointing at an embedded collector whose resource attribute
``tracesieve.case_id`` tags the traces. After every run the embedded collector
is shut down, which judges every pending trace; then each case is judged on its
traces: the command must succeed, at least one trace must arrive, no detection
of the case's failure_mode may appear, and every ``expected_behavior`` assertion
must hold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

import jsonschema
import yaml

from tracesieve.collector.cases import append_history, history_events
from tracesieve.collector.config import Config, Endpoint
from tracesieve.collector.server import Collector
from tracesieve.storage import store
from tracesieve.storage.errors import NotFoundError, UsageError

LENGTH_REASONS = {"length", "max_tokens", "max_output_tokens"}


@dataclasses.dataclass
class CaseResult:
    case_id: str
    failure_mode: str
    passed: bool
    runs: int
    traces: list[str]
    reasons: list[str]


def load_active_cases(path: str, only: Sequence[str] = ()) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        raise NotFoundError(f"no dataset at {path} (promote a candidate with `tracesieve promote` first)")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    cases = doc.get("cases") if isinstance(doc, dict) else None
    if not isinstance(cases, list):
        raise UsageError(f"{path} has no cases list (run `tracesieve cases lint {path}`)")
    active = [c for c in cases if isinstance(c, dict) and c.get("status", "active") == "active" and c.get("id")]
    if only:
        known = {str(c["id"]) for c in active}
        missing = [i for i in only if i not in known]
        if missing:
            raise NotFoundError(f"no active case {missing[0]!r} in {path}")
        active = [c for c in active if str(c["id"]) in set(only)]
    return active


def run_gate(
    config: Config,
    cases_path: str,
    command: Sequence[str],
    *,
    repeat: int = 1,
    only: Sequence[str] = (),
    protocol: str = "grpc",
    timeout: float = 300.0,
    workdir: str | None = None,
) -> list[CaseResult]:
    """Run every active case through ``command`` and judge it. Records results in history.jsonl."""
    if not command:
        raise UsageError("give the agent command after --, e.g. tracesieve gate --cases cases.yaml -- python agent.py")
    cases = load_active_cases(cases_path, only)
    with tempfile.TemporaryDirectory(prefix="tracesieve-gate-") as tmp:
        gate_config = dataclasses.replace(
            config,
            grpc=Endpoint("127.0.0.1", 0),
            http=Endpoint("127.0.0.1", 0),
            bearer_token=None,
            db_path=os.path.join(tmp, "gate.duckdb"),
            lake=None,  # the gate never writes the production store, file or lake
        )
        collector = Collector(gate_config)
        collector.start()
        runs: dict[str, list[tuple[int, str]]] = {}
        try:
            for case in cases:
                case_id = str(case["id"])
                for _ in range(repeat):
                    runs.setdefault(case_id, []).append(
                        _run_agent(command, case, collector, protocol, timeout, workdir))
        finally:
            collector.stop(deadline_seconds=60)
        con = store.open_database(gate_config.db_path, read_only=True)
        try:
            results = [_judge_case(con, case, runs.get(str(case["id"]), [])) for case in cases]
        finally:
            con.close()
    _record_history(cases_path, results)
    return results


def _run_agent(command: Sequence[str], case: dict[str, Any], collector: Collector, protocol: str,
               timeout: float, workdir: str | None) -> tuple[int, str]:
    case_id = str(case["id"])
    payload = json.dumps(case.get("input") or {}, ensure_ascii=False, default=str)
    port = collector.grpc_port if protocol == "grpc" else collector.http_port
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("OTEL_EXPORTER_OTLP_")]:
        del env[key]  # nothing may send the case's traces elsewhere
    env.update({
        "TRACESIEVE_CASE_ID": case_id,
        "TRACESIEVE_CASE_INPUT": payload,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if protocol == "grpc" else "http/protobuf",
        "OTEL_RESOURCE_ATTRIBUTES": f"tracesieve.case_id={case_id}",
    })
    try:
        proc = subprocess.run(list(command), input=payload, text=True, env=env, cwd=workdir,
                              capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise UsageError(f"agent command not found: {command[0]}") from None
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:g}s"
    tail = (proc.stderr or "").strip().splitlines()[-1:] if proc.returncode else []
    return proc.returncode, tail[0] if tail else ""


def _judge_case(con: Any, case: dict[str, Any], runs: list[tuple[int, str]]) -> CaseResult:
    case_id = str(case["id"])
    mode = str(case.get("failure_mode", ""))
    reasons: list[str] = []
    for i, (code, tail) in enumerate(runs):
        if code != 0:
            reasons.append(f"run {i + 1}: the agent exited with {code}" + (f" ({tail})" if tail else ""))
    trace_ids = [r[0] for r in con.execute(
        "SELECT DISTINCT trace_id FROM spans WHERE resource_attributes->>'$.tracesieve.case_id' = ? ORDER BY 1",
        [case_id]).fetchall()]
    if not trace_ids:
        reasons.append("no trace arrived for this case (does the agent export OTLP with the OTEL_* variables?)")
    else:
        recurring = con.execute(
            "SELECT failure_mode, message FROM detections WHERE trace_id IN (SELECT unnest(?::VARCHAR[])) "
            "AND failure_mode = ? ORDER BY detected_at", [trace_ids, mode]).fetchall()
        for fm, message in recurring[:3]:
            reasons.append(f"{fm} again: {message}")
        traces = store.load_traces(con, trace_ids)
        for trace_id, spans in traces.items():
            reasons.extend(f"trace {trace_id[:12]}: {r}" for r in
                           check_expected(case.get("expected_behavior") or {}, spans))
    return CaseResult(case_id, mode, not reasons, len(runs), trace_ids, reasons)


def _final_answer(spans: list[dict[str, Any]]) -> str:
    roots = [s for s in spans if not s.get("parent_span_id")]
    for s in roots:
        if s.get("output_value"):
            return str(s["output_value"])
    llm = [s for s in spans if s.get("span_kind") == "LLM" and s.get("output_value")]
    return str(llm[-1]["output_value"]) if llm else ""


def check_expected(expected: dict[str, Any], spans: list[dict[str, Any]]) -> list[str]:
    """Problems with one trace against a case's expected_behavior (empty list: it holds)."""
    problems: list[str] = []
    answer = _final_answer(spans)
    folded = answer.casefold()
    tools = [s.get("tool_name") or s.get("name") for s in spans if s.get("span_kind") == "TOOL"]

    sequence = expected.get("required_tool_sequence")
    if isinstance(sequence, list) and sequence:
        it = iter(tools)
        if not all(any(t == want for t in it) for want in sequence):
            problems.append(f"tool sequence {tools} does not contain {sequence} in order")
    for phrase in expected.get("must_not") or []:
        if isinstance(phrase, str) and phrase.casefold() in folded:
            problems.append(f"the answer contains {phrase!r}")
    for phrase in expected.get("must_include") or []:
        if isinstance(phrase, str) and phrase.casefold() not in folded:
            problems.append(f"the answer does not contain {phrase!r}")
    schema = expected.get("output_schema")
    if isinstance(schema, dict) and schema:
        try:
            jsonschema.validate(json.loads(answer), schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            problems.append(f"the answer breaks output_schema: {str(exc).splitlines()[0]}")
    banned = {str(r).lower() for r in expected.get("finish_reason_not") or []}
    if banned & LENGTH_REASONS:
        banned |= LENGTH_REASONS
    for s in spans:
        reason = (s.get("llm_finish_reason") or "").lower()
        if reason and reason in banned:
            problems.append(f"span {s['span_id']} finished with {reason}")
    limit = expected.get("max_identical_calls")
    if isinstance(limit, int):
        seen: dict[tuple[str, str], int] = {}
        for s in spans:
            if s.get("span_kind") == "TOOL":
                key = (str(s.get("tool_name") or s.get("name")), str(s.get("input_value") or ""))
                seen[key] = seen.get(key, 0) + 1
        worst = max(seen.values(), default=0)
        if worst > limit:
            problems.append(f"a tool was called {worst} times with the same arguments (max {limit})")
    must_succeed = expected.get("tool_calls_succeed")
    if must_succeed:
        named = set(must_succeed) if isinstance(must_succeed, list) else None  # a list names the tools; true: all
        failed = [s.get("tool_name") or s.get("name") for s in spans
                  if s.get("span_kind") == "TOOL" and s.get("status_code") == "ERROR"
                  and (named is None or (s.get("tool_name") or s.get("name")) in named)]
        if failed:
            problems.append(f"tool calls failed: {failed}")
    if expected.get("no_error_spans"):
        failed = [s.get("name") for s in spans
                  if s.get("span_kind") in ("LLM", "AGENT", "CHAIN") and s.get("status_code") == "ERROR"]
        if failed:
            problems.append(f"spans errored: {failed}")
    minimum = expected.get("min_retrieved_documents")
    if isinstance(minimum, int):
        for s in spans:
            if s.get("span_kind") == "RETRIEVER":
                docs = ((s.get("attributes") or {}).get("retrieval") or {}).get("documents") or []
                if len([d for d in docs if d]) < minimum:
                    problems.append(f"retriever {s['span_id']} returned {len(docs)} documents (min {minimum})")
    durations = expected.get("max_duration_ms")
    if isinstance(durations, dict):
        for s in spans:
            limit_ms = durations.get(s.get("span_kind"))
            if isinstance(limit_ms, (int, float)) and (s.get("duration_ms") or 0) > limit_ms:
                problems.append(f"{s.get('span_kind')} span {s['span_id']} took {s['duration_ms']:.0f}ms "
                                f"(max {limit_ms:g}ms)")
    return problems


def _record_history(cases_path: str, results: list[CaseResult]) -> None:
    """passed/failed per case, and flipped when the outcome differs from the case's previous one."""
    last = {str(ev.get("case_id")): str(ev["event"]) for ev in history_events(cases_path)
            if ev.get("event") in ("passed", "failed")}
    now = dt.datetime.now(dt.timezone.utc)
    for r in results:
        outcome = "passed" if r.passed else "failed"
        detail: dict[str, Any] = {"runs": r.runs, "traces": r.traces[:20]}
        if r.reasons:
            detail["reasons"] = r.reasons[:10]
        if r.case_id in last and last[r.case_id] != outcome:
            append_history(cases_path, "flipped", r.case_id, {"from": last[r.case_id], "to": outcome}, now)
        append_history(cases_path, outcome, r.case_id, detail, now)
