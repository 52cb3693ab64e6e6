"""gate end to end: real agent processes exporting OTLP to the embedded collector, real cases.yaml files."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FAST_JUDGE, run_cli

ROOT = Path(__file__).resolve().parents[1]
AGENT = str(ROOT / "examples" / "agent.py")
WALKTHROUGH = ROOT / "examples" / "gate"


def otel_env(c, protocol: str = "grpc") -> dict[str, str]:
    port = c.grpc_port if protocol == "grpc" else c.http_port
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}


def history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def write_dataset(path: Path, cases: list[dict]) -> Path:
    """A cases.yaml that passes `cases lint`: every field a promoted case has."""
    full = [{"id": c["id"], "failure_mode": c.get("failure_mode", "tool_invocation"), "severity": "P2",
             "blast_radius": "internal_visible", "status": c.get("status", "active"),
             "discovered_at": "2026-11-01T10:00:00Z", "discovered_by": "qa",
             "source": {"trace_id": "0" * 31 + "1"}, "input": {"user_message": "Where is order ORD-1?",
                                                              "conversation_history": []},
             "context": {}, "expected_behavior": c.get("expected_behavior", {}), "remediation": [],
             "regressed_count": 0} for c in cases]
    path.write_text(yaml.safe_dump({"schema_version": 1, "failure_modes": list(_modes()), "cases": full},
                                   sort_keys=False))
    return path


def _modes() -> tuple[str, ...]:
    from tracesieve.storage.schema import FAILURE_MODES
    return tuple(FAILURE_MODES)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_gate_fails_while_the_bug_is_there_and_passes_once_fixed(start_collector, tmp_path):
    c = start_collector(FAST_JUDGE)
    run = subprocess.run([sys.executable, AGENT, "--question", "Where is order ORD-1? I am ann@example.com",
                          "--bug", "tool_error"], env={**os.environ, **otel_env(c, "http/protobuf")},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = c.wait_for("SELECT candidate_id FROM candidates WHERE failure_mode = 'tool_invocation'",
                      lambda r: len(r) == 1)
    cases = tmp_path / "cases.yaml"
    promoted = c.cli("promote", rows[0]["candidate_id"], "--cases", str(cases), "--owner", "qa")
    assert promoted.returncode == 0, promoted.stderr
    case = yaml.safe_load(cases.read_text())["cases"][0]
    assert "ann@example.com" not in json.dumps(case, default=str)
    c.stop()

    broken = run_cli("gate", "--cases", str(cases), "--format", "json", "--repeat", "2", "--", sys.executable, AGENT,
                     "--bug", "tool_error", cwd=tmp_path, timeout=180)
    assert broken.returncode == 1, broken.stderr
    result = json.loads(broken.stdout)[0]
    assert result["case_id"] == "TS-0001" and result["result"] == "failed"
    assert result["runs"] == 2 and len(result["traces"]) == 2
    assert [r["result"] for r in result["run_results"]] == ["failed", "failed"]
    assert any(r.startswith("run 2/2: tool_invocation again") for r in result["reasons"])

    fixed = run_cli("gate", "--cases", str(cases), "--protocol", "http/protobuf", "--", sys.executable, AGENT,
                    cwd=tmp_path, timeout=180)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "passed: TS-0001" in fixed.stdout
    assert [e["event"] for e in history(tmp_path)] == ["promoted", "failed", "flipped", "passed"]


def _walkthrough_commands() -> list[list[str]]:
    """The `$ tracesieve gate ...` lines of examples/gate/README.md, as argv lists for this interpreter."""
    lines = [line[2:] for line in (WALKTHROUGH / "README.md").read_text().splitlines()
             if line.startswith("$ tracesieve gate ")]
    commands = []
    for line in lines:
        argv = shlex.split(line, comments=True)
        argv = [sys.executable, "-m", "tracesieve.collector.cli"] + argv[1:]
        sep = argv.index("--")
        if argv[sep + 1] == "python":
            argv[sep + 1] = sys.executable
        commands.append(argv)
    return commands


def test_the_readme_walkthrough_goes_red_then_green_then_flags_the_regression(tmp_path):
    folder = tmp_path / "gate"
    shutil.copytree(WALKTHROUGH, folder, ignore=shutil.ignore_patterns("__pycache__"))
    original = (folder / "cases.yaml").read_text()
    promoted = len(history(folder))
    commands = _walkthrough_commands()
    assert len(commands) == 3
    readme = (ROOT / "README.md").read_text()
    for argv in commands:  # the main README shows the same walkthrough
        assert shlex.join(["tracesieve"] + argv[3:argv.index("--") + 1]) in readme

    runs = [subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=180) for argv in commands]
    assert [r.returncode for r in runs] == [1, 0, 1], [r.stdout + r.stderr for r in runs]

    red, green, regressed = runs
    assert red.stdout.splitlines()[0].split() == ["failure_mode", "cases", "passed", "failed"]
    assert red.stdout.splitlines()[5].split() == ["total", "4", "0", "4"]
    assert [line.split()[1] for line in red.stdout.splitlines() if line.startswith("FAILED")] == \
        ["TS-0001", "TS-0002", "TS-0003", "TS-0004"]
    suite = ET.parse(folder / "gate-junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "4"
    assert all(tc.find("failure").get("message") for tc in suite.findall("testcase"))
    assert "passed: TS-0001, TS-0002, TS-0003, TS-0004" in green.stdout
    assert [line.split()[1] for line in regressed.stdout.splitlines() if line.startswith("REGRESSED")] == \
        ["TS-0001", "TS-0002", "TS-0003", "TS-0004"]
    assert "regressed: TS-0001, TS-0002, TS-0003, TS-0004" in regressed.stderr

    events = [(e["event"], e["case_id"]) for e in history(folder)[promoted:]]
    for case_id in ("TS-0001", "TS-0002", "TS-0003", "TS-0004"):
        assert [ev for ev, cid in events if cid == case_id] == ["failed", "flipped", "passed", "flipped", "failed"]
    counts = [c["regressed_count"] for c in yaml.safe_load((folder / "cases.yaml").read_text())["cases"]]
    assert counts == [1, 1, 1, 1]
    assert (folder / "cases.yaml").read_text() == original.replace("regressed_count: 0", "regressed_count: 1")


AGENT_FOR_CASE = textwrap.dedent("""\
    import os, subprocess, sys, time
    case, run = os.environ["TRACESIEVE_CASE_ID"], os.environ["OTEL_RESOURCE_ATTRIBUTES"].split("tracesieve.run=")[1]
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, f"{case}-{run}.log"), "w") as fh:
        fh.write(f"{time.time()} {os.environ['OTEL_RESOURCE_ATTRIBUTES']}")
    if case == "TS-0001":  # hangs, with a child in its process group
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(os.path.join(here, f"child-{run}.pid"), "w").write(str(child.pid))
        time.sleep(120)
    if case == "TS-0003":  # exports nothing
        sys.exit(0)
    args = ["--bug", "tool_error"] if case == "TS-0002" and run == "2" else []  # flaky: fails on its second run
    if case == "TS-0004":  # labels its resource by hand, with the case id but not the run
        os.environ["OTEL_RESOURCE_ATTRIBUTES"] = "tracesieve.case_id=" + os.environ["TRACESIEVE_CASE_ID"]
    os.execv(sys.executable, [sys.executable, AGENT] + args)
""")


def test_gate_runs_cases_in_parallel_kills_a_hung_agent_and_judges_each_repeat(tmp_path):
    script = tmp_path / "agent_for_case.py"
    script.write_text(f"AGENT = {AGENT!r}\n" + AGENT_FOR_CASE)
    cases = write_dataset(tmp_path / "cases.yaml", [
        {"id": "TS-0001"}, {"id": "TS-0002", "expected_behavior": {"tool_calls_succeed": True}},
        {"id": "TS-0003", "failure_mode": "truncation"}, {"id": "TS-0004", "failure_mode": "truncation"},
        {"id": "TS-0005", "status": "deprecated"}])
    result = run_cli("gate", "--cases", str(cases), "--repeat", "2", "--jobs", "8", "--timeout", "8",
                     "--format", "json", "--junit", str(tmp_path / "junit.xml"), "--", sys.executable, str(script),
                     cwd=tmp_path, env={"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"}, timeout=120)
    assert result.returncode == 1, result.stderr
    by_id = {r["case_id"]: r for r in json.loads(result.stdout)}
    assert sorted(by_id) == ["TS-0001", "TS-0002", "TS-0003", "TS-0004"]

    hung = by_id["TS-0001"]
    assert hung["result"] == "failed"
    assert [r["exit_code"] for r in hung["run_results"]] == [None, None]
    assert all(r["reasons"] == ["timed out after 8s: the agent's process group was killed"]
               for r in hung["run_results"])
    for run in (1, 2):
        assert not alive(int((tmp_path / f"child-{run}.pid").read_text()))

    flaky = by_id["TS-0002"]
    assert [r["result"] for r in flaky["run_results"]] == ["passed", "failed"]
    assert flaky["reasons"][0].startswith("run 2/2: tool_invocation again")
    assert any(r.startswith("run 2/2: tool_calls_succeed: tool calls failed: lookup_order") for r in flaky["reasons"])
    assert all(len(r["traces"]) == 1 for r in flaky["run_results"])

    assert by_id["TS-0003"]["reasons"][0].startswith("run 1/2: no trace arrived")
    unlabelled = by_id["TS-0004"]
    assert unlabelled["result"] == "passed"
    assert [len(r["traces"]) for r in unlabelled["run_results"]] == [2, 2]  # both runs' traces count for each

    # each run saw the caller's resource attributes, then the case and run; all eight ran at once
    logs = {p.stem: p.read_text().split(" ", 1) for p in tmp_path.glob("TS-*.log")}
    assert len(logs) == 8
    assert logs["TS-0002-2"][1] == "deployment.environment=ci,tracesieve.case_id=TS-0002,tracesieve.run=2"
    starts = sorted(float(t) for t, _ in logs.values())
    assert starts[-1] - starts[0] < 6, "runs did not start together under --jobs 8"

    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("4", "3")


def test_gate_refuses_bad_usage_and_invalid_datasets_with_exit_2_before_running(tmp_path):
    ran = tmp_path / "ran"
    agent = ["--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"]
    missing = run_cli("gate", "--cases", str(tmp_path / "none.yaml"), *agent, cwd=tmp_path)
    assert missing.returncode == 2 and "no dataset" in missing.stderr

    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": {"must_contain": ["x"]}}])
    unknown = run_cli("gate", "--cases", str(cases), *agent, cwd=tmp_path)
    assert unknown.returncode == 2
    (line,) = unknown.stderr.strip().splitlines()
    assert re.match(r"tracesieve: error: invalid dataset: cases\.yaml:\d+: TS-0001: expected_behavior\.must_contain: "
                    r"no scorer for this key \(the gate checks: .*\); see `tracesieve cases lint ", line), line

    write_dataset(cases, [{"id": "TS-0001", "failure_mode": "not_a_mode"}])
    invalid = run_cli("gate", "--cases", str(cases), *agent, cwd=tmp_path)
    assert invalid.returncode == 2 and len(invalid.stderr.strip().splitlines()) == 1
    assert "invalid dataset" in invalid.stderr and "outside the taxonomy" in invalid.stderr

    write_dataset(cases, [{"id": "TS-0001"}])
    no_cmd = run_cli("gate", "--cases", str(cases), cwd=tmp_path)
    assert no_cmd.returncode == 2 and "agent command" in no_cmd.stderr
    not_found = run_cli("gate", "--cases", str(cases), "--", "no-such-agent-xyz", cwd=tmp_path)
    assert not_found.returncode == 2 and "not found" in not_found.stderr

    assert not ran.exists()
    assert not (tmp_path / "history.jsonl").exists()


def test_a_cancelled_gate_kills_the_agents_it_started(tmp_path):
    import signal
    import time

    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}, {"id": "TS-0002"}])
    hang = "import os, time; open(os.environ['TRACESIEVE_CASE_ID'] + '.pid', 'w').write(str(os.getpid())); time.sleep(120)"
    gate = subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", "gate", "--cases", str(cases), "--",
                             sys.executable, "-c", hang], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = [int(p.read_text()) for p in tmp_path.glob("TS-*.pid") if p.read_text()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        gate.send_signal(signal.SIGTERM)  # what a CI system sends a cancelled job
        assert gate.wait(30) != 0
        assert not any(alive(p) for p in pids)
        assert not (tmp_path / "history.jsonl").exists()  # an interrupted gate records nothing
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_failing_agents_stderr_is_redacted_before_the_gate_reports_or_records_it(tmp_path):
    """The last stderr line of a crashed agent goes into the reasons, the JUnit file and history.jsonl
    (a file committed beside cases.yaml): an exception message there quoted what the user typed."""
    from test_pii_canary import CANARIES, assert_no_canary

    script = tmp_path / "crashing_agent.py"
    script.write_text("import sys\n"
                      f"sys.stderr.write('ValueError: card {CANARIES['CARD']} declined for {CANARIES['EMAIL']} '\n"
                      f"                 'with {CANARIES['API_KEY']}\\n')\n"
                      "sys.exit(3)\n")
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    for fmt in ("table", "json"):
        result = run_cli("gate", "--cases", str(cases), "--format", fmt, "--junit", str(tmp_path / "junit.xml"),
                         "--", sys.executable, str(script), cwd=tmp_path, timeout=120)
        assert result.returncode == 1, result.stderr
        assert "the agent exited with 3 (ValueError: card <CARD> declined for <EMAIL> with <API_KEY>)" in result.stdout
        assert_no_canary((result.stdout + result.stderr).encode(), f"gate --format {fmt}")
        assert_no_canary((tmp_path / "junit.xml").read_bytes(), "the JUnit file")
    assert [e["event"] for e in history(tmp_path)] == ["failed", "failed"]
    assert_no_canary((tmp_path / "history.jsonl").read_bytes(), "history.jsonl")


def test_the_agent_gets_the_case_input_as_cases_lint_reads_it_and_scorers_get_the_same_values(tmp_path):
    """gate read cases.yaml as YAML 1.1 (PyYAML) where lint and promote read YAML 1.2: the agent was
    handed `false` for the user message `no`, 80 for `1:20`, a reformatted timestamp, and a
    `must_not: [no]` that lint passed crashed the gate after every agent had run."""
    record = tmp_path / "stdin.json"
    script = tmp_path / "echo_agent.py"
    script.write_text("import os, sys\n"
                      f"open({str(record)!r}, 'w').write(sys.stdin.read() + '\\n' + os.environ['TRACESIEVE_CASE_INPUT']"
                      " + '\\n' + os.environ['OTEL_RESOURCE_ATTRIBUTES'])\n"
                      f"os.execv(sys.executable, [sys.executable, {AGENT!r}])\n")
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": {"must_not": ["@@"]}}])
    text = cases.read_text()
    cases.write_text(text.replace("    user_message: Where is order ORD-1?\n    conversation_history: []",
                                  "    user_message: no\n    conversation_history: [yes, 1:20, 2026-11-01T10:00:00Z]")
                     .replace("- '@@'", "- no"))
    assert run_cli("cases", "lint", str(cases)).returncode == 0
    result = run_cli("gate", "--cases", str(cases), "--", sys.executable, str(script), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    want = {"user_message": "no", "conversation_history": ["yes", "1:20", "2026-11-01T10:00:00Z"]}
    stdin, variable, resource = record.read_text().split("\n")
    assert [json.loads(stdin), json.loads(variable)] == [want, want]
    assert resource == "tracesieve.case_id=TS-0001"  # DESIGN's value exactly: one run needs no run number


def test_an_agent_that_exits_is_judged_then_though_a_process_it_started_still_holds_its_output(tmp_path):
    """An agent that left a background process behind (a helper server, `cmd &`) holding its stdout
    and stderr was waited for until --timeout and failed as `timed out`, though it had exported and
    exited 0: the run ends when the agent exits, and what it left behind gets a short grace, then is killed."""
    import time

    script = tmp_path / "leaves_a_helper.py"
    script.write_text("import os, subprocess, sys\n"
                      "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                      "open('helper.pid', 'w').write(str(helper.pid))\n"
                      f"os.execv(sys.executable, [sys.executable, {AGENT!r}])\n")
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    started = time.monotonic()
    result = run_cli("gate", "--cases", str(cases), "--timeout", "60", "--format", "json", "--",
                     sys.executable, str(script), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 40, "the gate waited for the helper until --timeout"
    (record,) = json.loads(result.stdout)
    assert record["run_results"][0]["exit_code"] == 0
    assert not alive(int((tmp_path / "helper.pid").read_text()))


def failed_case_record(tmp_path: Path, script: Path) -> dict[str, Any]:
    """Gate one case (TS-0001) with ``script`` as the agent, which must fail it; the case's JSON record."""
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    result = run_cli("gate", "--cases", str(cases), "--format", "json", "--", sys.executable, str(script),
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    (record,) = json.loads(result.stdout)
    return record


def test_an_agent_writing_bytes_that_are_not_utf8_is_judged_not_a_gate_crash(tmp_path):
    """A crashing agent whose stderr (or stdout) held a byte that is not UTF-8 ended the whole gate with
    `internal error: UnicodeDecodeError` (exit 2, nothing recorded) instead of failing that case."""
    script = tmp_path / "binary_agent.py"
    script.write_text("import sys\n"
                      "sys.stdout.buffer.write(b'\\x89PNG\\r\\n\\x1a\\n\\xff')\n"
                      "sys.stderr.buffer.write(b'ValueError: bad byte \\xff\\xfe here\\n')\n"
                      "sys.exit(3)\n")
    record = failed_case_record(tmp_path, script)
    assert record["reasons"][0] == "the agent exited with 3 (ValueError: bad byte \ufffd\ufffd here)"
    assert [e["event"] for e in history(tmp_path)] == ["failed"]


def test_a_junit_path_that_cannot_be_written_or_a_misspelt_option_is_refused_before_any_agent_runs(tmp_path):
    """--junit into a missing directory ran every agent and recorded history, then ended with exit 2
    and no report at all; a misspelt gate option (--repaet 2) was taken for the agent command
    (`agent command not found on PATH: --repaet`)."""
    ran = tmp_path / "ran"
    agent = ["--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"]
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    for junit in (tmp_path / "no" / "such" / "junit.xml", tmp_path):
        result = run_cli("gate", "--cases", str(cases), "--junit", str(junit), *agent, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"tracesieve: error: --junit {junit}: "), line
    typo = run_cli("gate", "--cases", str(cases), "--repaet", "2", *agent, cwd=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr.strip() == ("tracesieve: error: no such option: --repaet "
                                   "(the agent command goes after --, e.g. tracesieve gate --cases cases.yaml -- "
                                   "python agent.py)"), typo.stderr
    assert not ran.exists() and not (tmp_path / "history.jsonl").exists()


def test_the_embedded_collector_takes_the_agents_spans_when_production_requires_an_api_key(tmp_path):
    """With `auth: {api_key: ...}` in the production config, the gate's embedded collector kept
    requiring the key (only bearer_token was dropped): the agent, whose OTLP headers the gate removes,
    was refused, every case failed with `no trace arrived`, and a passing case was flagged REGRESSED."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"receivers": {"otlp": {"auth": {"api_key": "k-" + "7" * 30}}},
                                      "processors": {"detectors": {"decision_wait": "300ms"}}}))
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    result = run_cli("gate", "--cases", str(cases), "--config", str(config), "--", sys.executable, AGENT,
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed: TS-0001" in result.stdout


def test_an_input_too_long_for_an_environment_variable_reaches_the_agent_on_stdin(tmp_path):
    """Linux caps one environment string at 128 KiB: a case whose input (a long conversation) was
    longer made every run fail to start, and the whole gate ended with exit 2 `Argument list too long`
    naming no case. Such an input now goes on stdin only, with TRACESIEVE_CASE_INPUT unset."""
    record = tmp_path / "seen.json"
    script = tmp_path / "stdin_agent.py"
    script.write_text("import json, os, sys\n"
                      "data = sys.stdin.read()\n"
                      f"json.dump({{'stdin': data, 'env': os.environ.get('TRACESIEVE_CASE_INPUT')}}, open({str(record)!r}, 'w'))\n"
                      "os.environ['TRACESIEVE_CASE_INPUT'] = json.dumps({'user_message': 'short'})\n"
                      f"os.execv(sys.executable, [sys.executable, {AGENT!r}])\n")
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    doc = yaml.safe_load(cases.read_text())
    long_input = {"user_message": "Where is order ORD-1?", "conversation_history": ["é" * 100_000]}
    doc["cases"][0]["input"] = long_input
    cases.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    result = run_cli("gate", "--cases", str(cases), "--", sys.executable, str(script), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(record.read_text())
    assert json.loads(seen["stdin"]) == long_input and seen["env"] is None


CURL_AGENT = r"""
# A non-Python agent: posts one TOOL span as OTLP/JSON with curl, labelled from the gate's variables.
case="$TRACESIEVE_CASE_ID"; run="$TRACESIEVE_RUN"
[ "$OTEL_EXPORTER_OTLP_PROTOCOL" = "http/json" ] || { echo "protocol $OTEL_EXPORTER_OTLP_PROTOCOL" >&2; exit 9; }
now=$(date +%s)000000000
curl -sS -f -H 'Content-Type: application/json' "$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces" --data-binary @- <<JSON
{"resourceSpans": [{"resource": {"attributes": [
   {"key": "tracesieve.case_id", "value": {"stringValue": "$case"}},
   {"key": "tracesieve.run", "value": {"stringValue": "$run"}}]},
 "scopeSpans": [{"spans": [{"traceId": "$(printf '%032x' $$)", "spanId": "00000000000000a1",
   "name": "lookup_order", "startTimeUnixNano": "$now", "endTimeUnixNano": "$now",
   "attributes": [{"key": "openinference.span.kind", "value": {"stringValue": "TOOL"}}],
   "status": {"code": ${STATUS:-1}}}]}]}]}
JSON
"""


def test_a_shell_agent_posting_otlp_json_with_curl_is_gated_with_protocol_http_json(tmp_path):
    """`--protocol` offered grpc and http/protobuf only, though http/json is the third value the OTel spec
    gives OTEL_EXPORTER_OTLP_PROTOCOL (the JS and Go SDKs, or curl, export it) and the HTTP port takes it."""
    script = tmp_path / "agent.sh"
    script.write_text(CURL_AGENT)
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    gate = ["gate", "--cases", str(cases), "--protocol", "http/json", "--", "sh", str(script)]
    fixed = run_cli(*gate, cwd=tmp_path, timeout=120)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    broken = run_cli(*gate, cwd=tmp_path, env={"STATUS": "2"}, timeout=120)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "REGRESSED TS-0001 (tool_invocation) (passed last time): tool_invocation again" in broken.stdout


def test_a_ci_environment_that_turns_tracing_off_or_samples_does_not_blind_the_gate(tmp_path):
    """OTEL_SDK_DISABLED=true (tests often set it) or a sampler copied from production
    (OTEL_TRACES_SAMPLER=traceidratio, ARG 0.1) reached the agent: it exported nothing, or one run in
    ten, and every case failed with `no trace arrived`. The gate needs every run's trace."""
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    env = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0",
           "OTEL_TRACES_EXPORTER": "console"}
    for name, value in env.items():
        result = run_cli("gate", "--cases", str(cases), "--", sys.executable, AGENT, cwd=tmp_path,
                         env={name: value}, timeout=120)
        assert result.returncode == 0, f"{name}={value}: " + result.stdout + result.stderr


def test_an_agent_killed_by_a_signal_is_reported_by_the_signals_name(tmp_path):
    """A crashed agent (a segfault in a native extension, the OOM killer) was reported as
    `the agent exited with -11`, a negative exit code no shell prints."""
    script = tmp_path / "segfault_agent.py"
    script.write_text("import os, signal, sys\nsys.stderr.write('loading model\\n')\nsys.stderr.flush()\n"
                      "os.kill(os.getpid(), signal.SIGSEGV)\n")
    record = failed_case_record(tmp_path, script)
    assert record["reasons"][0] == "the agent was killed by SIGSEGV (loading model)"
    assert record["run_results"][0]["exit_code"] == -11


REPLAY_NODE_AGENT = r"""
# Sends what a Node agent (@opentelemetry/sdk-trace-node 2.12, BatchSpanProcessor, OTLP/JSON) exported
# for one run, labelled with the gate's OTEL_RESOURCE_ATTRIBUTES as the SDK's envDetector would.
import json, os, sys, urllib.request
body = json.load(open(sys.argv[1]))
pairs = [p.split("=", 1) for p in os.environ["OTEL_RESOURCE_ATTRIBUTES"].split(",") if "=" in p]
body["resourceSpans"][0]["resource"]["attributes"] += [{"key": k, "value": {"stringValue": v}} for k, v in pairs]
urllib.request.urlopen(urllib.request.Request(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] + "/v1/traces",
                       json.dumps(body).encode(), {"Content-Type": "application/json"}), timeout=30)
"""


def test_a_node_agents_tools_are_judged_in_the_order_they_ran_though_they_started_in_one_millisecond(tmp_path):
    """The JS SDK stamps a span's start with Date.now() (whole milliseconds) and its end as that start
    plus a sub-millisecond duration, so stubbed tools run back to back share one start time, and their
    ends say nothing about their order (here the first, still-cold call is the slowest:
    testdata/js_fast_agent_trace.json). The tie was broken by span id: a Node agent calling
    lookup_order, refund_payment, send_email failed `required_tool_sequence` at random. Spans that
    start together are taken in the order they were received, the order the SDK ended them."""
    trace = json.loads((ROOT / "tests" / "testdata" / "js_fast_agent_trace.json").read_text())
    tools = [s for s in trace["resourceSpans"][0]["scopeSpans"][0]["spans"] if s["name"] != "agent"]
    assert [s["name"] for s in tools] == ["lookup_order", "refund_payment", "send_email"]
    assert len({s["startTimeUnixNano"] for s in tools}) == 1
    assert [s["name"] for s in sorted(tools, key=lambda s: s["spanId"])][0] != "lookup_order"
    assert [s["name"] for s in sorted(tools, key=lambda s: int(s["endTimeUnixNano"]))][0] != "lookup_order"
    script = tmp_path / "replay_node_agent.py"
    script.write_text(REPLAY_NODE_AGENT)
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": {
        "required_tool_sequence": ["lookup_order", "refund_payment", "send_email"]}}])
    result = run_cli("gate", "--cases", str(cases), "--protocol", "http/json", "--format", "json", "--",
                     sys.executable, str(script), str(ROOT / "tests" / "testdata" / "js_fast_agent_trace.json"),
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_node_agent_that_refunds_right_after_a_failed_lookup_fails_must_not_call_after_error(tmp_path):
    """The same Node run with lookup_order failed: its end (start + 57 us) lies after refund_payment's
    start (the same whole millisecond), so the refund did not count as "after" the failure and the
    gate passed an agent that pays out after an error. A failing agent span around the calls still
    does not count: it encloses them."""
    trace = json.loads((ROOT / "tests" / "testdata" / "js_fast_agent_trace.json").read_text())
    spans = {s["name"]: s for s in trace["resourceSpans"][0]["scopeSpans"][0]["spans"]}
    assert int(spans["lookup_order"]["endTimeUnixNano"]) > int(spans["refund_payment"]["startTimeUnixNano"])
    script = tmp_path / "replay_node_agent.py"
    script.write_text(REPLAY_NODE_AGENT)
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": {
        "must_not_call_after_error": ["refund_payment"]}}])
    outcomes = {}
    for failing in ("lookup_order", "agent"):
        body = json.loads(json.dumps(trace))
        for s in body["resourceSpans"][0]["scopeSpans"][0]["spans"]:
            if s["name"] == failing:
                s["status"] = {"code": 2, "message": "upstream 502"}
        replay = tmp_path / f"{failing}.json"
        replay.write_text(json.dumps(body))
        result = run_cli("gate", "--cases", str(cases), "--protocol", "http/json", "--format", "json", "--",
                         sys.executable, str(script), str(replay), cwd=tmp_path, timeout=120)
        outcomes[failing] = (result.returncode, result.stdout + result.stderr)
    assert outcomes["lookup_order"][0] == 1 and "refund_payment ran after lookup_order failed" in outcomes["lookup_order"][1]
    assert outcomes["agent"][0] == 0, outcomes["agent"][1]


def test_gate_json_gives_every_case_its_regressed_count_not_only_a_regression(tmp_path):
    """``--format json`` showed ``regressed_count: null`` for every case that did not regress in this gate
    (a pass, or a failure that also failed last time): CI reading the record could not tell 0 from 4."""
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    cases.write_text(cases.read_text().replace("regressed_count: 0", "regressed_count: 4"))

    def gate_record(*bug: str) -> dict[str, Any]:
        result = run_cli("gate", "--cases", str(cases), "--format", "json", "--", sys.executable, AGENT, *bug,
                         cwd=tmp_path, timeout=180)
        assert result.returncode == (1 if bug else 0), result.stdout + result.stderr
        return json.loads(result.stdout)[0]

    passed = gate_record()
    assert (passed["result"], passed["regressed"], passed["regressed_count"]) == ("passed", False, 4)
    regressed = gate_record("--bug", "tool_error")
    assert (regressed["result"], regressed["regressed"], regressed["regressed_count"]) == ("failed", True, 5)
    failed_again = gate_record("--bug", "tool_error")
    assert (failed_again["result"], failed_again["regressed"], failed_again["regressed_count"]) == ("failed", False, 5)
    assert yaml.safe_load(cases.read_text())["cases"][0]["regressed_count"] == 5


def test_the_case_input_reaches_the_agent_as_strict_json_when_yaml_holds_nan_or_infinity(tmp_path):
    """A case input with YAML's ``.nan`` / ``.inf`` went to the agent as ``NaN`` / ``Infinity``, which no strict
    JSON parser (Node's JSON.parse, Go) reads: the agent died on its own input. They arrive as null."""
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    doc = yaml.safe_load(cases.read_text())
    doc["cases"][0]["input"]["threshold"] = float("nan")
    doc["cases"][0]["input"]["limits"] = [float("inf"), 2.5]
    cases.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert ".nan" in cases.read_text() and ".inf" in cases.read_text()
    seen = tmp_path / "seen.json"
    script = tmp_path / "strict_agent.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        def refuse(name):
            raise ValueError("not JSON: " + name)
        stdin = json.loads(sys.stdin.read(), parse_constant=refuse)
        env = json.loads(os.environ["TRACESIEVE_CASE_INPUT"], parse_constant=refuse)
        open({str(seen)!r}, "w").write(json.dumps([stdin, env]))
    """))
    result = run_cli("gate", "--cases", str(cases), "--", sys.executable, str(script), cwd=tmp_path, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr  # no trace: the input is what is checked here
    assert "exited with" not in result.stdout, result.stdout
    stdin, env = json.loads(seen.read_text())
    assert stdin == env
    assert (stdin["threshold"], stdin["limits"]) == (None, [None, 2.5])
    assert stdin["user_message"] == "Where is order ORD-1?"


def test_a_schema_ref_the_gate_cannot_resolve_is_refused_before_any_agent_runs(tmp_path):
    """``output_schema: {$ref: http://...}`` passed `cases lint`; the gate ran every agent, then died scoring
    with "internal error: _WrappedReferencingError: Unresolvable" (exit 2, no verdict, no history)."""
    ran = tmp_path / "ran"
    agent = ["--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"]
    local = {"type": "object", "properties": {"order": {"$ref": "#/$defs/Order"}},
             "$defs": {"Order": {"type": "string"}}}
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": {"output_schema": local}}])
    assert run_cli("cases", "lint", str(cases)).returncode == 0  # a reference inside the schema is fine

    for schema in ({"$ref": "http://127.0.0.1:9/order.json"}, {**local, "$defs": {}}):
        write_dataset(cases, [{"id": "TS-0001", "expected_behavior": {"output_schema": schema}}])
        lint = run_cli("cases", "lint", str(cases))
        assert lint.returncode == 1 and "output_schema" in lint.stdout and "$refs point inside it" in lint.stdout, (
            lint.stdout + lint.stderr)
        refused = run_cli("gate", "--cases", str(cases), *agent, cwd=tmp_path, timeout=120)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "internal error" not in refused.stderr and "output_schema" in refused.stderr
    assert not ran.exists() and not (tmp_path / "history.jsonl").exists()


def test_the_gate_table_shows_control_characters_from_the_agent_escaped(tmp_path):
    """A failing run's reason quotes the agent's last stderr line (and detectors quote span status messages,
    which carry what users typed): the table printed them raw, so a BEL or NUL reached the operator's
    terminal, which `candidates` and `show` never let through."""
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    agent = [sys.executable, "-c", "import sys; sys.stdin.read(); sys.stderr.write('boom \\x07\\x00\\x9b end\\n'); "
                                   "sys.exit(3)"]
    result = run_cli("gate", "--cases", str(cases), "--", *agent, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("FAILED TS-0001")]
    assert "boom \\x07\\x00\\x9b end" in line, line
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.stdout), repr(result.stdout)


CITING_AGENT = '''
import json, sys
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

question = json.loads(sys.stdin.read() or "{}").get("user_message") or "How long is the refund window?"
documents = [] if sys.argv[1] == "empty_retrieval" else ["doc-1", "doc-2"]
answer = "Refunds are accepted within 30 days [doc-1]."
provider = TracerProvider(resource=Resource.create({"service.name": "citing-agent"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
tracer = provider.get_tracer("citing-agent")
with tracer.start_as_current_span("agent") as root:
    root.set_attribute("openinference.span.kind", "AGENT")
    root.set_attribute("input.value", question)
    with tracer.start_as_current_span("retrieve") as retriever:
        retriever.set_attribute("openinference.span.kind", "RETRIEVER")
        retriever.set_attribute("input.value", question)
        for i, doc in enumerate(documents):
            retriever.set_attribute(f"retrieval.documents.{i}.document.id", doc)
            retriever.set_attribute(f"retrieval.documents.{i}.document.score", 0.9)
            retriever.set_attribute(f"retrieval.documents.{i}.document.content", "Refunds within 30 days.")
    with tracer.start_as_current_span("llm") as llm:
        llm.set_attribute("openinference.span.kind", "LLM")
        llm.set_attribute("llm.model_name", "gpt-4o")
        llm.set_attribute("llm.input_messages.0.message.role", "user")
        llm.set_attribute("llm.input_messages.0.message.content", question)
        llm.set_attribute("llm.output_messages.0.message.role", "assistant")
        llm.set_attribute("llm.output_messages.0.message.content", answer)
        llm.set_attribute("llm.finish_reason", "stop")
    root.set_attribute("output.value", answer)
provider.shutdown()
'''


def test_a_citation_after_an_empty_retrieval_is_not_banned_for_the_agent_that_retrieves_it(start_collector, tmp_path):
    """The retriever returned nothing and the answer cited [doc-1] anyway: the promoted draft banned ``doc-1``
    (must_not), so the fixed agent, which retrieves doc-1 and cites it, failed the gate forever."""
    script = tmp_path / "citing_agent.py"
    script.write_text(CITING_AGENT)
    c = start_collector(FAST_JUDGE)
    run = subprocess.run([sys.executable, str(script), "empty_retrieval"], input="{}", capture_output=True, text=True,
                         env={**os.environ, **otel_env(c)}, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = c.wait_for("SELECT candidate_id, expected::VARCHAR AS expected FROM candidates "
                      "WHERE failure_mode = 'hallucination'", lambda r: r)
    cases = tmp_path / "cases.yaml"
    for row in rows:
        assert "doc-1" not in json.loads(row["expected"]).get("must_not", []), row
        assert c.cli("promote", row["candidate_id"], "--cases", str(cases), "--owner", "qa").returncode == 0
    c.stop()

    still = run_cli("gate", "--cases", str(cases), "--", sys.executable, str(script), "empty_retrieval",
                    cwd=tmp_path, timeout=180)
    assert still.returncode == 1, still.stdout + still.stderr
    fixed = run_cli("gate", "--cases", str(cases), "--", sys.executable, str(script), "retrieves",
                    cwd=tmp_path, timeout=180)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


STRICT_RESOURCE_AGENT = r"""
# An agent whose SDK reads OTEL_RESOURCE_ATTRIBUTES as the spec (and @opentelemetry/resources'
# envDetector) says: one pair with an unencoded '=' or ',', a bad '%' escape or a value over 255
# characters, and the whole variable is discarded.
import json, os, sys
from urllib.parse import unquote_to_bytes
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

def strict(text):
    parts = text.split("%")
    if any(len(p) < 2 or any(c not in "0123456789abcdefABCDEF" for c in p[:2]) for p in parts[1:]):
        raise ValueError(text)
    return unquote_to_bytes(text).decode("utf-8")

attributes = {}
try:
    for pair in filter(str.strip, os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")):
        fields = pair.split("=")
        if len(fields) != 2 or not fields[0].strip():
            raise ValueError(pair)
        key, value = strict(fields[0].strip()), strict(fields[1].strip())
        if max(len(key), len(value)) > 255:
            raise ValueError(pair)
        attributes[key] = value
except ValueError as bad:
    print(f"OTEL_RESOURCE_ATTRIBUTES discarded: {bad}", file=sys.stderr)
    attributes = {}
with open(sys.argv[1], "w") as fh:
    json.dump(attributes, fh)
provider = TracerProvider(resource=Resource(attributes))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
with provider.get_tracer("strict").start_as_current_span("agent") as span:
    span.set_attribute("openinference.span.kind", "AGENT")
    span.set_attribute("output.value", "Order ORD-1 ships tomorrow.")
provider.shutdown()
"""


def test_a_ci_resource_pair_a_strict_sdk_refuses_does_not_cost_the_agent_its_case_id(tmp_path):
    """The gate appended its case id to the caller's OTEL_RESOURCE_ATTRIBUTES as they were. A CI
    variable like `build.url=https://ci/job?id=7` (an unencoded '='), `coverage=50%` (a bad escape) or
    a long value is malformed, and a spec-strict SDK (Node's envDetector) discards the whole variable
    on it: the case id went too, and every case failed with `no trace arrived`. The caller's pairs now
    reach the agent well-formed, meaning what the lenient Python SDK reads from them."""
    script = tmp_path / "strict_resource_agent.py"
    script.write_text(STRICT_RESOURCE_AGENT)
    seen = tmp_path / "resource.json"
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    ci = "build.url=https://ci.example/job?id=7, coverage=50%,deployment.environment=ci,garbage,notes=" + "n" * 300
    result = run_cli("gate", "--cases", str(cases), "--repeat", "2", "--", sys.executable, str(script), str(seen),
                     cwd=tmp_path, env={"OTEL_RESOURCE_ATTRIBUTES": ci}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    resource = json.loads(seen.read_text())
    assert resource.pop("tracesieve.run") in ("1", "2")
    assert resource == {"build.url": "https://ci.example/job?id=7", "coverage": "50%",
                        "deployment.environment": "ci", "tracesieve.case_id": "TS-0001"}


def test_a_timeout_that_is_not_a_number_is_a_usage_error_not_a_failed_case(tmp_path):
    """`--timeout nan` passed click's range check (NaN fails every comparison): every run "timed
    out after nans" and the gate exited 1 as if the agent had failed again, recording `failed` and
    bumping regressed_count. It is a usage error (exit 2), refused before any agent runs."""
    ran = tmp_path / "ran"
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    before = cases.read_text()
    result = run_cli("gate", "--cases", str(cases), "--timeout", "nan", "--", sys.executable, "-c",
                     f"open({str(ran)!r}, 'w')", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--timeout" in result.stderr and "Traceback" not in result.stderr
    assert not ran.exists() and not (tmp_path / "history.jsonl").exists() and cases.read_text() == before


def test_a_ceiling_of_nan_or_below_zero_is_refused_not_a_case_that_never_or_always_fails(tmp_path):
    """`max_latency_ms: .nan` (or `max_duration_ms: {TOOL: .nan}`, `min_document_score: .nan`) fails
    every comparison, so the scorer passed every run: the case could never catch its failure again.
    `max_duration_ms: -5` failed every run whatever the agent did. Both are values of the wrong
    shape: `cases lint` exits 1 and the gate 2, before any agent runs."""
    ran = tmp_path / "ran"
    for expected in ({"max_latency_ms": float("nan")}, {"max_duration_ms": {"TOOL": float("nan")}},
                     {"max_duration_ms": float("nan")}, {"min_document_score": float("nan")},
                     {"max_duration_ms": -5}, {"max_duration_ms": {"LLM": -1}}, {"max_latency_ms": -1}):
        cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": expected}])
        lint = run_cli("cases", "lint", str(cases), cwd=tmp_path)
        assert lint.returncode == 1 and "expected_behavior." in lint.stdout + lint.stderr, (expected, lint)
        result = run_cli("gate", "--cases", str(cases), "--", sys.executable, "-c", f"open({str(ran)!r}, 'w')",
                         cwd=tmp_path, timeout=120)
        assert result.returncode == 2, (expected, result.stdout + result.stderr)
        assert not ran.exists()
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": {
        "max_latency_ms": 0, "max_duration_ms": {"TOOL": 10000, "LLM": None}, "min_document_score": -2.5}}])
    assert run_cli("cases", "lint", str(cases), cwd=tmp_path).returncode == 0


MIME_AGENT = r"""
# An agent whose root span declares its answer's mime type with a parameter, as HTTP layers write it.
import sys
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider(resource=Resource.create({}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
with provider.get_tracer("mime").start_as_current_span("agent") as span:
    span.set_attribute("openinference.span.kind", "AGENT")
    span.set_attribute("output.value", sys.argv[1])
    span.set_attribute("output.mime_type", sys.argv[2])
provider.shutdown()
"""


def test_output_mime_type_compares_media_types_without_their_parameters(tmp_path):
    """An answer declared `application/json; charset=utf-8` failed `output_mime_type: application/json`
    as "declared another type", and an expected `application/json; charset=utf-8` never checked that
    the answer parses. Mime types compare by type/subtype, in any case, parameters aside."""
    script = tmp_path / "mime_agent.py"
    script.write_text(MIME_AGENT)
    for expected, answer, declared, code in [
            ("application/json", '{"status": "shipped"}', "application/json; charset=utf-8", 0),
            ("Application/JSON", '{"status": "shipped"}', "application/json", 0),
            ("application/json; charset=utf-8", "It has shipped.", "", 1),
            ("application/json", '{"status": "shipped"}', "text/plain; charset=utf-8", 1)]:
        cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": {
            "output_mime_type": expected}}])
        (tmp_path / "history.jsonl").unlink(missing_ok=True)
        result = run_cli("gate", "--cases", str(cases), "--", sys.executable, str(script), answer, declared,
                         cwd=tmp_path, timeout=120)
        assert result.returncode == code, (expected, declared, result.stdout + result.stderr)


def _make_read_only(path: Path) -> None:
    """Read-only even for root (the immutable flag), as a read-only checkout is; skip where it cannot be."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("cannot make a file immutable here")


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_dataset_the_gate_cannot_record_into_is_refused_before_any_agent_runs(tmp_path):
    """In a read-only checkout every agent ran, then the gate died writing history.jsonl with a bare
    `Operation not permitted: history.jsonl` (exit 2) and printed no result: a green run went red
    and a red one lost its report. It is refused up front, saying what to do."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    ran = tmp_path / "ran"
    cases = write_dataset(folder / "cases.yaml", [{"id": "TS-0001"}])
    history_file = folder / "history.jsonl"
    history_file.write_text("")
    agent = ["--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"]
    for read_only in (history_file, folder):
        _make_read_only(read_only)
        try:
            result = run_cli("gate", "--cases", str(cases), *agent, cwd=tmp_path, timeout=120)
        finally:
            _make_writable(read_only)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "cannot record results beside" in result.stderr and "writable copy" in result.stderr, result.stderr
        assert not ran.exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_a_blank_phrase_is_refused_not_an_assertion_that_never_breaks(tmp_path):
    """A blank phrase is in every answer: `must_include: [""]` passed every run and `must_not: [" "]`
    was skipped, so a hand-edited case could never fail again. Lint exits 1, the gate 2."""
    ran = tmp_path / "ran"
    for expected in ({"must_include": [""]}, {"must_not": ["refund", " "]}, {"must_include": ["\n"]}):
        cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "expected_behavior": expected}])
        lint = run_cli("cases", "lint", str(cases), cwd=tmp_path)
        assert lint.returncode == 1 and "none blank" in lint.stdout + lint.stderr, (expected, lint)
        result = run_cli("gate", "--cases", str(cases), "--", sys.executable, "-c", f"open({str(ran)!r}, 'w')",
                         cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and not ran.exists(), (expected, result.stdout + result.stderr)


LONG_JSON_AGENT = r"""
# An agent asked for JSON (response_format) whose valid answer is longer than max_value_size (1MiB).
import json
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

answer = json.dumps({"items": ["x" * 100] * 15000, "status": "ok"})
provider = TracerProvider(resource=Resource.create({}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
tracer = provider.get_tracer("long-json")
with tracer.start_as_current_span("agent") as root:
    root.set_attribute("openinference.span.kind", "AGENT")
    with tracer.start_as_current_span("llm") as llm:
        llm.set_attribute("openinference.span.kind", "LLM")
        llm.set_attribute("llm.invocation_parameters", json.dumps({"response_format": {"type": "json_object"}}))
        llm.set_attribute("llm.output_messages.0.message.role", "assistant")
        llm.set_attribute("llm.output_messages.0.message.content", answer)
        llm.set_attribute("llm.finish_reason", "stop")
    root.set_attribute("output.value", answer)
provider.shutdown()
"""


def test_a_json_answer_the_collector_cut_is_not_blamed_on_the_agent(tmp_path):
    """A valid 1.5 MB JSON answer is cut at max_value_size (1MiB) by the embedded collector: the gate
    then failed the case with `format_violation again: ... does not parse` and `output_schema: the
    answer is not JSON`, blaming a correct agent. The detector now treats a cut answer as unknown,
    and the scorers fail it saying why and what to raise; with the limit raised, it passes."""
    script = tmp_path / "long_json_agent.py"
    script.write_text(LONG_JSON_AGENT)
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001", "failure_mode": "format_violation",
                                                     "expected_behavior": {"output_schema": {
                                                         "type": "object", "required": ["status"]}}}])
    cut = run_cli("gate", "--cases", str(cases), "--", sys.executable, str(script), cwd=tmp_path, timeout=120)
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "format_violation again" not in cut.stdout and "not JSON" not in cut.stdout, cut.stdout
    assert "max_value_size" in cut.stdout, cut.stdout
    config = tmp_path / "gate.yaml"
    config.write_text("receivers:\n  otlp:\n    limits: {max_value_size: 4MiB}\n")
    whole = run_cli("gate", "--config", str(config), "--cases", str(cases), "--", sys.executable, str(script),
                    cwd=tmp_path, timeout=120)
    assert whole.returncode == 0, whole.stdout + whole.stderr


def test_a_case_text_with_half_an_emoji_is_a_lint_problem_not_an_internal_error(tmp_path):
    """A YAML escape `"\\ud83d"` (an emoji cut in half, pasted from a log) loads as a lone surrogate,
    which UTF-8 cannot hold: `cases lint` passed it, then `gate` and `export --cases` died with
    `internal error: UnicodeEncodeError`. Lint names the value (exit 1); gate and export refuse the
    dataset with that line (exit 2), before any agent runs."""
    ran = tmp_path / "ran"
    cases = write_dataset(tmp_path / "cases.yaml", [{"id": "TS-0001"}])
    cases.write_text(cases.read_text().replace("user_message: Where is order ORD-1?",
                                               'user_message: "Where is my \\ud83d order?"'))
    lint = run_cli("cases", "lint", str(cases), cwd=tmp_path)
    assert lint.returncode == 1 and "input.user_message" in lint.stdout + lint.stderr, lint
    for command in (["gate", "--cases", str(cases), "--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"],
                    ["export", "--format", "jsonl", "--cases", str(cases)]):
        result = run_cli(*command, cwd=tmp_path, timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "internal error" not in result.stderr and "input.user_message" in result.stderr, result.stderr
    assert not ran.exists()
