"""gate end to end: a real agent process exporting OTLP, a promoted case, the same failure caught again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import FAST_JUDGE, run_cli

AGENT = str(Path(__file__).resolve().parents[1] / "examples" / "agent.py")


def otel_env(c, protocol: str = "grpc") -> dict[str, str]:
    port = c.grpc_port if protocol == "grpc" else c.http_port
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}


def test_gate_fails_while_the_bug_is_there_and_passes_once_fixed(start_collector, tmp_path):
    import subprocess

    c = start_collector(FAST_JUDGE)
    run = subprocess.run([sys.executable, AGENT, "--question", "Where is order ORD-1? I am ann@example.com",
                          "--bug", "tool_error"], env={**__import__("os").environ, **otel_env(c, "http/protobuf")},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = c.wait_for("SELECT candidate_id FROM candidates WHERE failure_mode = 'tool_invocation'",
                      lambda r: len(r) == 1)
    cases = tmp_path / "cases.yaml"
    promoted = c.cli("promote", rows[0]["candidate_id"], "--cases", str(cases), "--owner", "qa")
    assert promoted.returncode == 0, promoted.stderr
    case = __import__("yaml").safe_load(cases.read_text())["cases"][0]
    assert "ann@example.com" not in json.dumps(case, default=str)
    c.stop()

    broken = run_cli("gate", "--cases", str(cases), "--format", "json", "--repeat", "2", "--", sys.executable, AGENT,
                     "--bug", "tool_error", cwd=tmp_path, timeout=180)
    assert broken.returncode == 1, broken.stderr
    result = json.loads(broken.stdout)[0]
    assert result["case_id"] == "TS-0001" and result["result"] == "failed"
    assert result["runs"] == 2 and len(result["traces"]) == 2
    assert any("tool_invocation again" in r for r in result["reasons"])

    fixed = run_cli("gate", "--cases", str(cases), "--protocol", "http/protobuf", "--", sys.executable, AGENT,
                    cwd=tmp_path, timeout=180)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "TS-0001" in fixed.stdout and "pass" in fixed.stdout
    events = [json.loads(line)["event"] for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert events == ["promoted", "failed", "flipped", "passed"]


def test_gate_reports_an_agent_that_sends_nothing(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text("schema_version: 1\ncases:\n  - id: TS-0001\n    failure_mode: truncation\n"
                     "    severity: P2\n    status: active\n    input: {user_message: hi}\n")
    result = run_cli("gate", "--cases", str(cases), "--", sys.executable, "-c", "print('no telemetry')",
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "no trace arrived" in result.stdout


def test_gate_usage_errors_exit_2(tmp_path):
    missing = run_cli("gate", "--cases", str(tmp_path / "none.yaml"), "--", "true", cwd=tmp_path)
    assert missing.returncode == 2 and "no dataset" in missing.stderr
    (tmp_path / "cases.yaml").write_text("schema_version: 1\ncases: []\n")
    no_cmd = run_cli("gate", "--cases", str(tmp_path / "cases.yaml"), cwd=tmp_path)
    assert no_cmd.returncode == 2 and "agent command" in no_cmd.stderr


def test_expected_behavior_assertions_each_catch_their_failure():
    from tracesieve.collector.gate import check_expected

    def span(kind, name, *, parent="root", status="OK", output=None, reason=None, args=None, ms=10.0):
        return {"span_id": name, "parent_span_id": parent, "span_kind": kind, "name": name, "tool_name":
                name if kind == "TOOL" else None, "status_code": status, "output_value": output,
                "llm_finish_reason": reason, "input_value": args, "duration_ms": ms, "attributes": {}}

    trace = [span("AGENT", "root", parent=None, output='{"answer": "sorry, I cannot"}'),
             span("TOOL", "search", args='{"q": 1}'), span("TOOL", "search", args='{"q": 1}'),
             span("TOOL", "refund", status="ERROR"), span("LLM", "llm", reason="length", ms=45_000.0)]
    assert check_expected({}, trace) == []
    cases = {
        "required_tool_sequence": (["refund", "search"], "does not contain"),
        "must_not": (["cannot"], "contains 'cannot'"),
        "must_include": (["refund issued"], "does not contain 'refund issued'"),
        "output_schema": ({"type": "object", "required": ["order_id"]}, "breaks output_schema"),
        "finish_reason_not": (["length"], "finished with length"),
        "max_identical_calls": (1, "called 2 times"),
        "tool_calls_succeed": (["refund"], "tool calls failed"),
        "max_duration_ms": ({"LLM": 30_000}, "took 45000ms"),
    }
    for key, (value, message) in cases.items():
        problems = check_expected({key: value}, trace)
        assert len(problems) == 1 and message in problems[0], (key, problems)
    assert check_expected({"required_tool_sequence": ["search", "refund"], "tool_calls_succeed": ["search"]},
                          trace) == []
