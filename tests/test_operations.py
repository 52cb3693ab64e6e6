"""What an operator sees: serve's startup block, JSON logs, the terminal status line, --help examples, completion."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import run_cli

STATUS_LINE = re.compile(r"\d+\.\d spans/s, queue \d+ spans, \d+ pending traces, \d+ detections")
TOKEN = "ops-test-token-5e1d"
LIGHT = {"service": {"span_workers": 0}}


def test_serve_prints_one_startup_block_with_endpoints_store_pipeline_and_limits(start_collector):
    c = start_collector({**LIGHT, "receivers": {"otlp": {"limits": {"max_queued_spans": 1234}}}})
    log = c.log()
    assert log.count("tracesieve is up") == 1
    block = log[log.index("tracesieve is up"):]
    assert f"OTLP/gRPC      http://127.0.0.1:{c.grpc_port}" in block
    assert f"OTLP/HTTP      http://127.0.0.1:{c.http_port}" in block
    assert f"store          {c.db_path}" in block
    assert "pipeline       pii -> detectors -> promotion" in block
    assert "max_queued_spans 1234" in block and "max_request_size 64MiB" in block
    assert "span workers   0" in block
    assert "decision_wait  5s" in block
    assert "auth           off" in block
    assert not STATUS_LINE.search(log), "no status line when stderr is not a terminal"


def test_json_log_format_is_one_object_per_line_without_secrets(start_collector):
    c = start_collector({**LIGHT, "receivers": {"otlp": {"auth": {"bearer_token": "${env:TS_OPS_TOKEN}"}}}},
                        env={"TS_OPS_TOKEN": TOKEN}, args=("--log-format", "json", "--status-interval", "0.2"))
    good = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "mail bob@example.com",
            "startTimeUnixNano": "1795300000000000000", "endTimeUnixNano": "1795300001000000000",
            "attributes": [{"key": "input.value", "value": {"stringValue": "write to bob@example.com"}}]}
    bad = {**good, "traceId": "zz"}  # rejected alone, and logged (without its content)
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [good, bad]}]}]}).encode()
    for token, status in ((TOKEN + "x", 401), (TOKEN, 200)):
        answer = httpx.post(f"{c.http_url}/v1/traces", content=body, timeout=30,
                            headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
        assert answer.status_code == status, answer.text
    time.sleep(1.0)  # several status intervals: none may be logged without a terminal
    assert c.stop() == 0
    lines = [line for line in c.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
    up = [r for r in records if r["msg"] == "tracesieve is up"]
    assert len(up) == 1
    assert up[0]["http"] == f"http://127.0.0.1:{c.http_port}" and up[0]["grpc"] == f"http://127.0.0.1:{c.grpc_port}"
    assert up[0]["store"] == str(c.db_path) and up[0]["pipeline"] == ["pii", "detectors", "promotion"]
    assert up[0]["limits"]["max_queued_spans"] == 200000 and up[0]["auth"] == "bearer token"
    assert not [r for r in records if r["logger"] == "tracesieve.status"]
    assert [r for r in records if r["logger"] == "tracesieve.export" and "rejected 1 of 2 spans" in r["msg"]]
    assert TOKEN not in c.log() and "bob@example.com" not in c.log()


def test_a_pipeline_without_pii_is_named_in_a_startup_warning(start_collector, tmp_path):
    """DESIGN: nothing unredacted is ever written. A pipeline may leave pii out, but not silently."""
    warning = "WARNING tracesieve.serve: pii is not in service.pipelines.traces.processors: spans are stored as received"
    for pipeline in (["detectors", "promotion"], ["pii", "detectors", "promotion"]):
        where = tmp_path / "-".join(pipeline)
        where.mkdir()
        c = start_collector({"service": {"pipelines": {"traces": {"processors": pipeline}}}}, workdir=where)
        assert c.stop() == 0
        assert (warning in c.log()) == ("pii" not in pipeline), c.log()


def test_status_line_is_printed_periodically_on_a_terminal(tmp_path):
    from conftest import free_port

    config = tmp_path / "c.yaml"
    config.write_text(f"receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{free_port()}'}}, "
                      f"http: {{endpoint: '127.0.0.1:{free_port()}'}}}}}}}}\nservice: {{span_workers: 0}}\n")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", "serve", "--config", str(config),
                             "--db", str(tmp_path / "s.duckdb"), "--status-interval", "0.3"],
                            stdin=secondary, stdout=secondary, stderr=secondary, cwd=tmp_path)
    os.close(secondary)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not STATUS_LINE.search(output.decode(errors="replace")):
            if select.select([primary], [], [], 0.5)[0]:
                try:
                    output += os.read(primary, 65536)
                except OSError:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        os.close(primary)
    text = output.decode(errors="replace")
    assert STATUS_LINE.search(text), text
    assert "tracesieve.status" in text and text.count("tracesieve is up") == 1
    assert code == 0


def _command_paths() -> list[str]:
    from tracesieve.collector.cli import _commands, cli

    return sorted(path for path in _commands(cli) if path)


@pytest.mark.parametrize("command", _command_paths())
def test_every_command_help_shows_an_example(command):
    result = run_cli(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    examples = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith(f"tracesieve {command}")]
    assert examples, f"`tracesieve {command} --help` shows no example line:\n{result.stdout}"
    assert "Examples:" in result.stdout


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o nosort -F _tracesieve_completion tracesieve"),
                                          ("zsh", "#compdef tracesieve"),
                                          ("fish", "complete --no-files --command tracesieve")])
def test_completion_prints_the_script_for_each_shell(shell, marker):
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout and "_TRACESIEVE_COMPLETE" in result.stdout


def test_bash_completion_completes_commands_and_choices(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    # a `tracesieve` on PATH that is this checkout's CLI, as the installed console script would be
    wrapper = tmp_path / "tracesieve"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tracesieve.collector.cli "$@"\n')
    wrapper.chmod(0o755)
    script = ('source <(tracesieve completion bash)\n'
              'COMP_WORDS=(tracesieve se); COMP_CWORD=1; _tracesieve_completion tracesieve; echo "${COMPREPLY[@]}"\n'
              'COMPREPLY=(); COMP_WORDS=(tracesieve serve --log-format ""); COMP_CWORD=3; _tracesieve_completion tracesieve; '
              'echo "${COMPREPLY[@]}"\n'
              # --mode is free text (its error names every mode) but completes the taxonomy like a choice
              'COMPREPLY=(); COMP_WORDS=(tracesieve candidates --mode tool_); COMP_CWORD=3; '
              '_tracesieve_completion tracesieve; echo "${COMPREPLY[@]}"\n')
    result = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["serve", "text json", "tool_invocation tool_argument"], \
        result.stdout + result.stderr


def test_status_fields_turn_two_snapshots_into_a_rate():
    from tracesieve.collector.status import status_fields, status_line

    fields = status_fields({"spans_accepted": 100}, {"spans_accepted": 600, "queued_spans": 12, "pending_traces": 3,
                                                     "detections": 7}, 10.0)
    assert status_line(fields) == "50.0 spans/s, queue 12 spans, 3 pending traces, 7 detections"


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_metric_the_collector_exposes():
    from prometheus_client.parser import text_string_to_metric_families

    from tracesieve.collector.metrics import Metrics, StateSource, StoreState

    metrics = Metrics()
    metrics.watch(StateSource(lambda: 0, lambda: 0, lambda: StoreState({"tool_invocation": 1}, {"new": 1}, 0.0)))
    readme = README.read_text()
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation timestamps, which `serve` turns off
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}" in readme, f"{shown} is not documented in README.md"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_never_carry_the_token_or_an_exception_message(log_format):
    import io
    import logging

    from tracesieve.collector.logs import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(log_format, stream, secrets=[TOKEN])
        try:
            raise ValueError("the payload was jane.roe@example.org")
        except ValueError:
            logging.getLogger("tracesieve.test").exception("failed with Bearer %s", TOKEN)
        logging.getLogger("tracesieve.test").info("up", extra={"header": f"Bearer {TOKEN}"})
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    text = stream.getvalue()
    assert "ValueError" in text and "failed with Bearer [redacted]" in text
    assert TOKEN not in text and "jane.roe@example.org" not in text
    if log_format == "json":
        assert [json.loads(line)["level"] for line in text.splitlines()] == ["error", "info"]


def test_out_of_file_descriptors_logs_one_clear_line_and_serve_recovers(start_collector):
    """With its open files limit reached, serve's HTTP port cannot accept: asyncio used to log a traceback
    per waiting connection, again and again (780,000 lines in 5 s). Now one line, and serve recovers."""
    import random
    import resource
    import socket

    from test_crash import canary_request

    c = start_collector({"service": {"span_workers": 0}})
    resource.prlimit(c.proc.pid, resource.RLIMIT_NOFILE, (64, 64))  # once it is up: start-up needs more
    port = int(c.http_url.rsplit(":", 1)[1])
    held = []
    try:
        for _ in range(120):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(2)
    finally:
        for sock in held:
            sock.close()
    time.sleep(2)
    request, _ = canary_request(random.Random(3), 3)
    reply = httpx.post(f"{c.http_url}/v1/traces", content=request.SerializeToString(),
                       headers={"content-type": "application/x-protobuf"}, timeout=30)
    assert reply.status_code == 200
    log = c.log()
    assert log.count("cannot accept connections on the HTTP port: Too many open files") == 1, log[-3000:]
    assert len(log.splitlines()) < 40, log[-3000:]
    assert c.stop() == 0
