"""The whole loop through real processes: SDK -> receivers -> detectors -> candidates -> CLI review -> cases.yaml."""

from __future__ import annotations

import json
import re
import signal
import time
from typing import Any

import httpx
import yaml
from opentelemetry.trace import Status, StatusCode

from conftest import FAST_JUDGE, run_cli
from sdk_helpers import emit_agent_trace, recorded_spans, sdk_tracer

SLOW_JUDGE = {"processors": {"detectors": {"decision_wait": "1m"}}}


def detections_for(c, trace_id: str, timeout: float = 30) -> list[dict]:
    return c.wait_for(f"SELECT failure_mode, detector, span_id FROM detections WHERE trace_id = '{trace_id}'",
                      lambda rows: len(rows) > 0, timeout)


def test_failed_tool_call_becomes_a_detection_and_a_candidate(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        failing = emit_agent_trace(tracer, tool_error=True)
        clean = emit_agent_trace(tracer, question="Do you ship to Canada?")
    rows = detections_for(c, failing)
    assert [r["failure_mode"] for r in rows] == ["tool_invocation"]
    tool_span = c.query(f"SELECT span_id FROM spans WHERE trace_id = '{failing}' AND span_kind = 'TOOL'")
    assert rows[0]["span_id"] == tool_span[0]["span_id"]
    c.wait_for(f"SELECT 1 FROM trace_state WHERE trace_id = '{clean}' AND judged_seq = received_seq",
               lambda r: len(r) == 1)
    assert c.query(f"SELECT count(*) AS n FROM detections WHERE trace_id = '{clean}'") == [{"n": 0}]
    candidates = c.wait_for("SELECT candidate_id, failure_mode, status, occurrences FROM candidates",
                            lambda r: len(r) == 1)
    assert candidates[0]["failure_mode"] == "tool_invocation" and candidates[0]["status"] == "new"


def test_review_commands_while_serve_runs_and_after(start_collector, tmp_path):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("http", c.http_url) as tracer:
        emit_agent_trace(tracer, tool_error=True, question="Cancel order ORD-1 please")
        emit_agent_trace(tracer, tool_error=True, question="Where is the nearest store to Paris?")
    c.wait_for("SELECT candidate_id FROM candidates", lambda r: len(r) == 2)

    listed = c.cli("candidates", "--format", "json", "--status", "new")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 2 and {r["failure_mode"] for r in rows} == {"tool_invocation"}
    first, second = sorted(r["candidate_id"] for r in rows)
    table = c.cli("candidates", "--mode", "tool_invocation")
    assert table.returncode == 0 and first in table.stdout

    show = c.cli("show", first)
    assert show.returncode == 0, show.stderr
    assert "tool_invocation" in show.stdout and "TOOL lookup_order" in show.stdout
    # the promote command names the store, as the report's does (without it, it would look in ./tracesieve.duckdb)
    assert f"tracesieve promote {first} --cases cases.yaml --owner YOU --db {c.db_path.resolve()}" in show.stdout
    shown = json.loads(c.cli("show", first, "--format", "json").stdout)
    assert shown["detections"][0]["evidence"]

    cases = tmp_path / "dataset" / "cases.yaml"
    cases.parent.mkdir()
    promoted = c.cli("promote", first, "--cases", str(cases), "--owner", "alice", "--severity", "P1")
    assert promoted.returncode == 0, promoted.stderr
    assert "TS-0001" in promoted.stdout
    doc = yaml.safe_load(cases.read_text())
    assert doc["schema_version"] == 1 and len(doc["failure_modes"]) == 12
    case = doc["cases"][0]
    assert case["id"] == "TS-0001" and case["discovered_by"] == "alice" and case["severity"] == "P1"
    assert case["source"]["candidate_id"] == first
    history = [json.loads(line) for line in (cases.parent / "history.jsonl").read_text().splitlines()]
    assert history[0]["event"] == "promoted" and history[0]["case_id"] == "TS-0001"

    again = c.cli("promote", first, "--cases", str(cases), "--owner", "bob")
    assert again.returncode == 2 and "already promoted" in again.stderr
    assert yaml.safe_load(cases.read_text())["cases"].__len__() == 1

    assert c.cli("cases", "lint", str(cases)).returncode == 0
    page = tmp_path / "review.html"
    reported = c.cli("report", "--out", str(page))
    assert reported.returncode == 0, reported.stderr
    html_text = page.read_text()
    assert first in html_text and second in html_text and "lookup_order" in html_text
    assert "<script src" not in html_text and "http://" not in html_text
    # the page's promote command names the store it was made from, so it works pasted anywhere
    assert f"tracesieve promote {second} --cases cases.yaml --owner YOU --db {c.db_path.resolve()}" in html_text
    assert c.cli("show", "cdoesnotexist").returncode == 2

    assert c.stop() == 0
    # the same commands open the file directly when no collector runs
    rejected = c.cli("reject", second, "--reason", "flaky upstream, not the agent")
    assert rejected.returncode == 0, rejected.stderr
    statuses = {r["candidate_id"]: r["status"] for r in json.loads(c.cli("candidates", "--format", "json").stdout)}
    assert statuses == {first: "promoted", second: "rejected"}
    assert "flaky upstream, not the agent" in c.cli("show", second).stdout  # the text form says why, as json does
    assert "promoted by alice" in c.cli("show", first).stdout and "as TS-0001" in c.cli("show", first).stdout
    exported = c.cli("export", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(records) == 1 and set(records[0]) == {"input", "expected", "metadata"}
    assert records[0]["metadata"]["candidate_id"] == first


def test_report_with_more_candidates_than_its_limit_says_so(start_collector, tmp_path):
    """`report --limit 2` on a store of 3 candidates printed "wrote ...: 2 candidates" and a page that read
    like the whole store."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        for question in ("Cancel order ORD-1", "Where is my parcel?", "Change my address"):
            emit_agent_trace(tracer, tool_error=True, question=question)
    c.wait_for("SELECT candidate_id FROM candidates", lambda r: len(r) == 3)
    page = tmp_path / "review.html"
    cut = c.cli("report", "--out", str(page), "--limit", "2")
    assert cut.returncode == 0, cut.stderr
    assert "2 of 3 candidates" in cut.stdout and "--limit" in cut.stdout
    assert "showing 2 of 3 candidates" in page.read_text()
    whole = c.cli("report", "--out", str(page))
    assert whole.returncode == 0 and whole.stdout.strip() == f"wrote {page}: 3 candidates"
    assert " of 3" not in page.read_text()
    one = c.cli("report", "--out", str(page), "--limit", "1")
    assert "1 of 3 candidates" in one.stdout
    piped = c.cli("report", "--out", "-")  # the page on stdout, the summary on stderr (was: a file named "-")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.lstrip().startswith("<!DOCTYPE html>") and piped.stdout.rstrip().endswith("</html>")
    assert "wrote the page to stdout: 3 candidates" in piped.stderr and not (c.workdir / "-").exists()


def test_an_empty_db_path_is_refused_not_read_as_the_default_store(tmp_path):
    """`--db "$STORE"` with STORE unset silently opened ./tracesieve.duckdb."""
    for args in (("query", "SELECT 1"), ("candidates",), ("report", "--out", "-")):
        result = run_cli(*args, "--db", "", cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "--db" in result.stderr and "empty" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tracesieve.duckdb").exists()


def test_export_with_nothing_promoted_says_what_else_there_is(start_collector):
    """`export --format jsonl` on a store of new candidates printed nothing at all and exited 0."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        emit_agent_trace(tracer, tool_error=True)
    c.wait_for("SELECT candidate_id FROM candidates", lambda r: len(r) == 1)
    for served in (True, False):
        if not served:
            c.stop()
        exported = c.cli("export", "--format", "jsonl")
        assert exported.returncode == 0 and exported.stdout == ""
        assert exported.stderr.count("\n") == 1 and "no promoted candidate" in exported.stderr
        assert "1 other" in exported.stderr and "--status all" in exported.stderr
        every = c.cli("export", "--format", "jsonl", "--status", "all")
        assert len(every.stdout.splitlines()) == 1 and every.stderr == ""


def test_a_reject_reason_quoting_a_customer_is_stored_sanitized(start_collector):
    """`reject --reason` wrote the reviewer's text into the candidates table as typed: an e-mail address or
    an API key pasted from a ticket went to disk unredacted. It is sanitized like span text now, with the
    store's pii config: through the collector, and on the file itself with the same --config."""
    config = {"processors": {"pii": {"secret_key": "review-key"}, "detectors": {"decision_wait": "300ms"}}}
    c = start_collector(config)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        emit_agent_trace(tracer, question="Where is my refund?", tool_error=True)
        emit_agent_trace(tracer, question="Cancel my subscription", tool_error=True)
    ids = [r["candidate_id"] for r in c.wait_for("SELECT candidate_id FROM candidates ORDER BY 1", lambda r: len(r) == 2)]
    reason = "jane.doe@example.com called twice; her key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD leaked"
    assert c.cli("reject", ids[0], "--reason", reason, "--by", "ops@example.com").returncode == 0
    c.stop()
    assert c.cli("reject", ids[1], "--reason", reason, "--config", str(c.config_path)).returncode == 0
    rows = {r["candidate_id"]: r for r in json.loads(c.cli("candidates", "--format", "json").stdout)}
    for cid in ids:
        stored = rows[cid]["review_reason"]
        assert "example.com" not in stored and "sk-proj" not in stored, stored
        assert re.fullmatch(r"<EMAIL:[0-9a-f]{6}> called twice; her key <API_KEY:[0-9a-f]{6}> leaked", stored)
    assert rows[ids[0]]["review_reason"] == rows[ids[1]]["review_reason"]  # one pseudonym, either way
    assert "example.com" not in rows[ids[0]]["reviewed_by"]


def test_export_jsonl_keeps_each_record_on_one_line_whatever_line_breaks_the_input_holds(start_collector):
    """A user message holding U+2028, U+2029 or NEL was exported with them raw (JSON allows it), so
    `stdout.splitlines()` cut its record in two and neither half parsed. They are escaped now."""
    c = start_collector(FAST_JUDGE)
    question = "first line\u2028second\u2029third\x85fourth: where is my refund?"
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        emit_agent_trace(tracer, question=question, tool_error=True)
    c.wait_for("SELECT candidate_id FROM candidates", lambda r: len(r) == 1)
    for served in (True, False):
        if not served:
            c.stop()
        exported = c.cli("export", "--format", "jsonl", "--status", "all")
        assert exported.returncode == 0, exported.stderr
        lines = exported.stdout.splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["input"]["user_message"] == question


def test_span_content_cannot_send_escape_sequences_to_the_operators_terminal(start_collector):
    """A user's message holding ESC sequences reached the terminal raw through `query`, `candidates` and
    `show` (rich drops BEL and CR, not ESC): span content could recolour, retitle or hide what the operator
    reads. Table and text output show control characters escaped; json escapes them; csv keeps the data."""
    c = start_collector(FAST_JUDGE)
    hostile = "refund \x1b[8mhidden\x1b[0m \x1b]0;pwned\x07 \x9b31m done"
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, tool_error=True, question=hostile)
    rows = c.wait_for("SELECT candidate_id FROM candidates", lambda r: len(r) == 1)
    outputs = [c.cli("query", f"SELECT name, input_value FROM spans WHERE trace_id = '{trace_id}'"),
               c.cli("candidates"), c.cli("show", rows[0]["candidate_id"])]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert not any(ch in result.stdout for ch in "\x1b\x07\x9b"), result.stdout
    assert "refund \\x1b[8mhidden\\x1b[0m \\x1b]0;pwned\\x07 \\x9b31m done" in outputs[0].stdout
    raw = c.cli("query", f"SELECT input_value FROM spans WHERE trace_id = '{trace_id}' AND span_kind = 'AGENT'",
                "--format", "csv")
    assert raw.stdout.splitlines()[1] == hostile  # csv is data for a file: kept as stored
    failed = c.cli("query", f"SELECT input_value::INTEGER FROM spans WHERE trace_id = '{trace_id}'")
    assert failed.returncode == 2 and "refund" in failed.stderr  # DuckDB names the value it could not convert
    assert not any(ch in failed.stderr for ch in "\x1b\x07\x9b") and failed.stderr.count("\n") == 1


def test_same_failure_from_four_customers_is_one_candidate(start_collector):
    c = start_collector(FAST_JUDGE)
    emails = ["ann@example.com", "bob.smith@corp.example.org", "c.lee@mail.example.net", "dana+x@example.io"]
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        traces = [emit_agent_trace(tracer, tool_error=True, question=f"I am {e}, where is my refund?")
                  for e in emails]
    rows = c.wait_for("SELECT candidate_id, occurrences, trace_ids FROM candidates",
                      lambda r: len(r) == 1 and r[0]["occurrences"] == 4)
    assert sorted(rows[0]["trace_ids"]) == sorted(traces)
    stored = json.dumps(c.query("SELECT input FROM candidates"))
    for e in emails:
        assert e not in stored


def test_late_span_rejudges_without_duplicates(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, tool_error=True)
    detections_for(c, trace_id)
    first_ids = c.query(f"SELECT detection_id FROM detections WHERE trace_id = '{trace_id}'")
    # the same spans again (a client retry) and one more late span of the same trace
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from test_receivers import post

    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex("00aa00aa00aa00aa"), name="late_tool",
        start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns() + 1000)
    span.attributes.add(key="openinference.span.kind").value.string_value = "TOOL"
    span.attributes.add(key="tool.name").value.string_value = "late_tool"
    span.status.code = 2
    assert post(c, req.SerializeToString()).status_code == 200
    rows = c.wait_for(f"SELECT detection_id, span_id FROM detections WHERE trace_id = '{trace_id}'",
                      lambda r: len(r) == 2)
    assert {r["detection_id"] for r in first_ids} < {r["detection_id"] for r in rows}
    cand = c.query("SELECT occurrences FROM candidates WHERE failure_mode = 'tool_invocation'")
    assert all(r["occurrences"] == 1 for r in cand)


def test_a_batch_re_sent_with_nothing_new_is_no_arrival(start_collector):
    """An exporter re-sends a batch whose ack it lost: its spans are stored once, and the trace must neither wait
    another decision_wait for each copy nor be judged again. Each copy used to count as the trace's latest
    arrival: re-sent every 200 ms, the trace was never judged; re-sent after its judgement, it was judged again.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult
    from test_metrics import scrape, value

    c = start_collector({"processors": {"detectors": {"decision_wait": "2s"}}})
    exporter = OTLPSpanExporter(endpoint=f"{c.http_url}/v1/traces", timeout=30)
    trace_id, spans = recorded_spans(lambda tracer: emit_agent_trace(tracer, tool_error=True))
    started = time.monotonic()
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    judged_after = None
    while time.monotonic() - started < 15:
        assert exporter.export(spans) == SpanExportResult.SUCCESS  # the same batch again, every ~200 ms
        if c.query(f"SELECT count(*) AS n FROM detections WHERE trace_id = '{trace_id}'") != [{"n": 0}]:
            judged_after = time.monotonic() - started
            break
        time.sleep(0.2)
    assert judged_after is not None and judged_after < 8, judged_after  # 2 s + polling, not never
    c.wait_for("SELECT count(*) AS n FROM candidates", lambda r: r == [{"n": 1}])
    time.sleep(1.0)
    before = scrape(c)
    stored = c.query("SELECT detection_id, detected_at FROM detections ORDER BY 1")
    candidate = c.query("SELECT candidate_id, occurrences, trace_ids, last_seen FROM candidates")
    for _ in range(3):  # after the judgement
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    time.sleep(3.0)  # past decision_wait (2 s): a re-sent copy taken for an arrival would be judged by then
    after = scrape(c)
    assert value(after, "tracesieve_traces_judged_total") == value(before, "tracesieve_traces_judged_total") == 1
    assert c.query(f"SELECT count(*) AS n FROM spans WHERE trace_id = '{trace_id}'") == [{"n": 5}]
    assert c.query("SELECT detection_id, detected_at FROM detections ORDER BY 1") == stored
    assert c.query("SELECT candidate_id, occurrences, trace_ids, last_seen FROM candidates") == candidate
    # accepted = acknowledged: every copy was answered "stored" (it is, once), as the README's metrics table says
    assert value(after, "tracesieve_spans_accepted_total", receiver="http") \
        - value(before, "tracesieve_spans_accepted_total", receiver="http") == 15
    # ... and counted apart, so an operator sees exporters retrying batches that were stored
    assert value(after, "tracesieve_spans_already_stored_total") \
        - value(before, "tracesieve_spans_already_stored_total") == 15
    assert value(before, "tracesieve_spans_already_stored_total") >= 5  # the copies sent while it settled
    assert value(after, "tracesieve_pending_traces") == 0
    exporter.shutdown()


def test_shutdown_judges_pending_traces(start_collector):
    c = start_collector(SLOW_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, tool_error=True)
    assert c.query("SELECT count(*) AS n FROM detections") == [{"n": 0}]
    assert c.stop() == 0
    rows = c.query(f"SELECT failure_mode FROM detections WHERE trace_id = '{trace_id}'")
    assert rows == [{"failure_mode": "tool_invocation"}]


def test_pending_traces_are_judged_after_a_crash(start_collector):
    c = start_collector(SLOW_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, tool_error=True)
    c.stop(signal.SIGKILL)
    c.config_path.write_text(c.config_path.read_text().replace("1m", "300ms"))
    c.start()
    detections_for(c, trace_id)


def test_genai_spans_are_judged_end_to_end(start_collector):
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("http", c.http_url) as tracer:
        with tracer.start_as_current_span("invoke_agent support") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            root.set_attribute("gen_ai.agent.name", "support")
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.provider.name", "openai")
                chat.set_attribute("gen_ai.request.model", "gpt-4o")
                chat.set_attribute("gen_ai.response.finish_reasons", ["length"])
                chat.set_attribute("gen_ai.input.messages", json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "Summarise my last 3 orders"}]}]))
                chat.set_attribute("gen_ai.output.messages", json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "Your orders were"}],
                      "finish_reason": "length"}]))
            with tracer.start_as_current_span("execute_tool lookup_order") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "lookup_order")
                tool.set_attribute("gen_ai.tool.call.arguments", '{"order_id": "ORD-9"}')
                tool.set_attribute("error.type", "TimeoutError")
                tool.set_status(Status(StatusCode.ERROR, "timed out"))
            trace_id = format(root.get_span_context().trace_id, "032x")
    kinds = c.query(f"SELECT span_kind FROM spans WHERE trace_id = '{trace_id}' ORDER BY span_kind")
    assert [k["span_kind"] for k in kinds] == ["AGENT", "LLM", "TOOL"]
    rows = c.wait_for(f"SELECT failure_mode FROM detections WHERE trace_id = '{trace_id}' ORDER BY 1",
                      lambda r: len(r) >= 2)
    assert {"truncation", "tool_invocation"} <= {r["failure_mode"] for r in rows}
    cand = c.wait_for("SELECT input FROM candidates WHERE failure_mode = 'truncation'", lambda r: len(r) == 1)
    assert "Summarise my last 3 orders" in cand[0]["input"]


def test_an_agent_given_only_the_new_turn_gets_the_history_its_model_saw(start_collector):
    """DESIGN: a candidate's input is the user message + conversation history. An ``invoke_agent`` span that
    records only the new turn (the agent keeps the thread) must not make the case lose the history the model
    answered from: replaying the user message alone would not reproduce the failure."""
    c = start_collector(FAST_JUDGE)
    question = "Refund the second one please"
    history = [{"role": "user", "parts": [{"type": "text", "content": "list my last orders"}]},
               {"role": "assistant", "parts": [{"type": "text", "content": "ORD-1 (shoes) and ORD-2 (a kettle)."}]}]
    turn = [{"role": "user", "parts": [{"type": "text", "content": question}]}]
    with sdk_tracer("http", c.http_url) as tracer:
        with tracer.start_as_current_span("invoke_agent support") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            root.set_attribute("gen_ai.input.messages", json.dumps(turn))
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.request.model", "gpt-4o")
                chat.set_attribute("gen_ai.input.messages", json.dumps(
                    [{"role": "system", "parts": [{"type": "text", "content": "Be brief."}]}, *history, *turn]))
            with tracer.start_as_current_span("execute_tool refund") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "refund")
                tool.set_status(Status(StatusCode.ERROR, "payments down"))
    rows = c.wait_for("SELECT input FROM candidates", lambda r: len(r) == 1)
    assert json.loads(rows[0]["input"]) == {"user_message": question, "conversation_history": [
        {"role": "user", "content": "list my last orders"},
        {"role": "assistant", "content": "ORD-1 (shoes) and ORD-2 (a kettle)."}]}


def test_a_candidates_model_is_the_one_that_answered_not_the_one_its_agent_requested(start_collector):
    """source.model: the agent span asks for the alias ``gpt-4o``; the model call names the model that ran."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("http", c.http_url) as tracer:
        with tracer.start_as_current_span("invoke_agent support") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            root.set_attribute("gen_ai.request.model", "gpt-4o")
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.request.model", "gpt-4o")
                chat.set_attribute("gen_ai.response.model", "gpt-4o-2024-08-06")
            with tracer.start_as_current_span("execute_tool refund") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "refund")
                tool.set_status(Status(StatusCode.ERROR, "payments down"))
    rows = c.wait_for("SELECT source FROM candidates", lambda r: len(r) == 1)
    assert json.loads(rows[0]["source"])["model"] == "gpt-4o-2024-08-06"


def test_a_failed_tool_call_says_what_failed_and_with_which_arguments(start_collector):
    """A reviewer reads the detection alone: the GenAI ``error.type`` (the class a status text often lacks), the
    exception's type when only an event was recorded, and the arguments the tool was called with."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("http", c.http_url) as tracer:
        with tracer.start_as_current_span("invoke_agent support") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            with tracer.start_as_current_span("execute_tool lookup_order") as genai_tool:
                genai_tool.set_attribute("gen_ai.operation.name", "execute_tool")
                genai_tool.set_attribute("gen_ai.tool.name", "lookup_order")
                genai_tool.set_attribute("gen_ai.tool.call.arguments", '{"order_id": "ORD-9"}')
                genai_tool.set_attribute("error.type", "ConnectionError")
                genai_tool.set_status(Status(StatusCode.ERROR, "order service returned 502"))
            with tracer.start_as_current_span("find_invoice") as oi_tool:
                oi_tool.set_attribute("openinference.span.kind", "TOOL")
                oi_tool.set_attribute("tool.name", "find_invoice")
                oi_tool.set_attribute("input.value", '{"invoice": "INV-3"}')
                oi_tool.add_event("exception", {"exception.type": "KeyError", "exception.message": "'INV-3'"})
            with tracer.start_as_current_span("execute_tool send_sms") as other:  # the semconv's "no type known"
                other.set_attribute("gen_ai.operation.name", "execute_tool")
                other.set_attribute("gen_ai.tool.name", "send_sms")
                other.set_attribute("error.type", "_OTHER")
                other.set_status(Status(StatusCode.ERROR, "quota exceeded"))
            trace_id = format(root.get_span_context().trace_id, "032x")
    rows = c.wait_for(f"SELECT message, evidence FROM detections WHERE trace_id = '{trace_id}' ORDER BY message",
                      lambda r: len(r) == 3)
    invoice, order, sms = rows
    assert sms["message"] == "tool send_sms failed: quota exceeded"
    assert invoice["message"] == "tool find_invoice failed: KeyError: 'INV-3'"
    assert json.loads(invoice["evidence"])["arguments"] == '{"invoice": "INV-3"}'
    assert order["message"] == "tool lookup_order failed: ConnectionError: order service returned 502"
    evidence = json.loads(order["evidence"])
    assert (evidence["error_type"], evidence["arguments"]) == ("ConnectionError", '{"order_id": "ORD-9"}')


def test_an_evaluation_labelled_as_passing_is_no_negative_feedback_whatever_its_score(start_collector):
    """A toxicity evaluator scores a clean answer 0 and labels it ``non-toxic``: that is no failure (it was
    reported as "toxicity judged this span as failed (non-toxic)"). A ``not relevant`` label fails a span
    whatever its score."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_ids = []
        for label, score in (("non-toxic", 0.0), ("Not Relevant", 1.0)):
            with tracer.start_as_current_span("llm") as llm:
                llm.set_attribute("openinference.span.kind", "LLM")
                llm.set_attribute("llm.output_messages.0.message.role", "assistant")
                llm.set_attribute("llm.output_messages.0.message.content", "The kettle is in stock.")
                llm.set_attribute("evaluations.0.evaluation.name", "toxicity" if score == 0.0 else "relevance")
                llm.set_attribute("evaluations.0.evaluation.label", label)
                llm.set_attribute("evaluations.0.evaluation.score", score)
                trace_ids.append(format(llm.get_span_context().trace_id, "032x"))
    clean, irrelevant = trace_ids
    rows = c.wait_for(f"SELECT message FROM detections WHERE trace_id = '{irrelevant}'", lambda r: len(r) == 1)
    assert rows[0]["message"] == "relevance judged this trace as failed (Not Relevant)"
    c.wait_for(f"SELECT 1 FROM trace_state WHERE trace_id = '{clean}' AND judged_seq = received_seq",
               lambda r: len(r) == 1)
    assert c.query(f"SELECT message FROM detections WHERE trace_id = '{clean}'") == []


def test_genai_values_sent_as_one_json_text_per_item_are_read_as_the_items(start_collector):
    """The Python SDK cannot send a list of maps: ``gen_ai.retrieval.documents`` and ``gen_ai.output.messages``
    can arrive as string lists, one JSON object each. An answer citing the retrieved document is no failure (it
    was a retrieval_miss and a hallucination: no document and no answer were read), and the columns hold the
    messages themselves."""
    c = start_collector(FAST_JUDGE)
    answer = "Hats can be returned within 14 days [doc-61]."
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("invoke_agent support") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            with tracer.start_as_current_span("retrieval kb") as retrieval:
                retrieval.set_attribute("gen_ai.operation.name", "retrieval")
                retrieval.set_attribute("gen_ai.retrieval.documents",
                                        [json.dumps({"id": "doc-61", "score": 0.9, "content": "Hats: 14 days."})])
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.request.model", "gpt-4o")
                chat.set_attribute("gen_ai.output.messages", [json.dumps(
                    {"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"})])
                chat_id = format(chat.get_span_context().span_id, "016x")
            trace_id = format(root.get_span_context().trace_id, "032x")
    c.wait_for(f"SELECT 1 FROM trace_state WHERE trace_id = '{trace_id}' AND judged_seq = received_seq",
               lambda r: len(r) == 1)
    assert c.query(f"SELECT failure_mode, message FROM detections WHERE trace_id = '{trace_id}'") == []
    row = c.query(f"SELECT output_value, llm_finish_reason FROM spans WHERE span_id = '{chat_id}'")[0]
    assert json.loads(row["output_value"])[0]["parts"][0]["content"] == answer
    assert row["llm_finish_reason"] == "stop"


def test_after_an_empty_retrieval_a_clarifying_question_or_a_no_answer_is_no_hallucination(start_collector):
    """DESIGN: hallucination is *answering with facts* after an empty retrieval. Asking which product the user
    means (a question of 21 words) and "I don't have any information about ..." state no facts; they were
    P1 hallucinations. Facts followed by a question still are."""
    c = start_collector(FAST_JUDGE)
    answers = {
        "question": "Could you tell me which model of blender you have, so I can look up the right warranty "
                    "details for you?",
        "no_answer": "I don't have any information about the Z9 blender in our knowledge base, sorry about that.",
        "facts": "The Z9 blender costs $129 and ships in two days. Anything else I can help you with today?",
    }
    trace_ids = {}
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        for name, answer in answers.items():
            with tracer.start_as_current_span("agent") as root:
                root.set_attribute("openinference.span.kind", "AGENT")
                with tracer.start_as_current_span("retrieve") as retrieve:
                    retrieve.set_attribute("openinference.span.kind", "RETRIEVER")
                    retrieve.set_attribute("input.value", "Z9 blender warranty")
                with tracer.start_as_current_span("llm") as llm:
                    llm.set_attribute("openinference.span.kind", "LLM")
                    llm.set_attribute("llm.output_messages.0.message.role", "assistant")
                    llm.set_attribute("llm.output_messages.0.message.content", answer)
                trace_ids[name] = format(root.get_span_context().trace_id, "032x")
    for name, trace_id in trace_ids.items():
        c.wait_for(f"SELECT 1 FROM trace_state WHERE trace_id = '{trace_id}' AND judged_seq = received_seq",
                   lambda r: len(r) == 1)
    found = {name: sorted(r["failure_mode"] for r in c.query(
        f"SELECT failure_mode FROM detections WHERE trace_id = '{trace_id}'")) for name, trace_id in trace_ids.items()}
    assert found == {"question": ["retrieval_miss"], "no_answer": ["retrieval_miss"],
                     "facts": ["hallucination", "retrieval_miss"]}


def test_a_genai_agent_passing_up_its_childs_error_type_is_not_a_second_failure(start_collector):
    """One rate limit is one llm_error: an ``invoke_agent`` span that fails with its chat call's ``error.type``
    (GenAI records no exception event, and the agent's status text is its own) re-reports the chat's failure,
    as an OpenInference agent re-raising the same exception does. It was a second llm_error on the agent; a
    tool's error passed up the same way was an llm_error besides the tool_invocation."""
    c = start_collector(FAST_JUDGE)
    spans = {}
    with sdk_tracer("http", c.http_url) as tracer:
        for failing in ("chat", "execute_tool"):
            with tracer.start_as_current_span("invoke_agent support") as root:
                root.set_attribute("gen_ai.operation.name", "invoke_agent")
                with tracer.start_as_current_span(f"{failing} child") as child:
                    child.set_attribute("gen_ai.operation.name", failing)
                    child.set_attribute("gen_ai.tool.name" if failing == "execute_tool" else "gen_ai.request.model",
                                        "lookup_order" if failing == "execute_tool" else "gpt-4o")
                    error_type = "RateLimitError" if failing == "chat" else "UpstreamError"
                    child.set_attribute("error.type", error_type)
                    child.set_status(Status(StatusCode.ERROR, "429 rate limit" if failing == "chat" else "502"))
                root.set_attribute("error.type", error_type)
                root.set_status(Status(StatusCode.ERROR, "agent run failed"))
                spans[failing] = (format(root.get_span_context().trace_id, "032x"),
                                  format(child.get_span_context().span_id, "016x"))
    for failing, mode in (("chat", "llm_error"), ("execute_tool", "tool_invocation")):
        trace_id, child_id = spans[failing]
        c.wait_for(f"SELECT 1 FROM trace_state WHERE trace_id = '{trace_id}' AND judged_seq = received_seq",
                   lambda r: len(r) == 1)
        rows = c.query(f"SELECT failure_mode, span_id FROM detections WHERE trace_id = '{trace_id}'")
        assert rows == [{"failure_mode": mode, "span_id": child_id}], rows


def test_an_answer_recorded_on_the_genai_agent_span_only_is_judged_as_text(start_collector):
    """GenAI content captured on the ``invoke_agent`` span only (its chat calls record none): the agent's answer
    is what the user got. Facts stated after an empty retrieval are a hallucination (they were missed), and an
    invented citation's evidence quotes the answer, not the output messages' JSON."""
    c = start_collector(FAST_JUDGE)

    def messages(text: str) -> str:
        return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": "stop"}])

    answers = {"facts": "The Z2 battery lasts 14 hours and charges fully in 90 minutes.",
               "cites": "Kettles have a 2 year warranty [doc-3], 5 years for members [doc-44]."}
    trace_ids = {}
    with sdk_tracer("http", c.http_url) as tracer:
        for name, answer in answers.items():
            with tracer.start_as_current_span("invoke_agent support") as root:
                root.set_attribute("gen_ai.operation.name", "invoke_agent")
                root.set_attribute("gen_ai.output.messages", messages(answer))
                with tracer.start_as_current_span("retrieval kb") as retrieval:
                    retrieval.set_attribute("gen_ai.operation.name", "retrieval")
                    retrieval.set_attribute("gen_ai.retrieval.documents", json.dumps(
                        [{"id": "doc-3", "score": 0.9}] if name == "cites" else []))
                with tracer.start_as_current_span("chat gpt-4o") as chat:
                    chat.set_attribute("gen_ai.operation.name", "chat")
                    chat.set_attribute("gen_ai.request.model", "gpt-4o")
                trace_ids[name] = (format(root.get_span_context().trace_id, "032x"),
                                   format(root.get_span_context().span_id, "016x"))
    for name, (trace_id, root_id) in trace_ids.items():
        rows = c.wait_for(f"SELECT span_id, evidence FROM detections WHERE trace_id = '{trace_id}' "
                          "AND failure_mode = 'hallucination'", lambda r: len(r) == 1)
        assert rows[0]["span_id"] == root_id
        assert json.loads(rows[0]["evidence"])["answer"] == answers[name]


def test_tool_spans_without_tool_name_are_known_by_their_span_name(start_collector):
    """An OpenInference TOOL span names its tool; ``tool.name`` is optional. Without it, the failing lookup_order
    was "retried successfully" by send_email (both had no tool name), and send_email, classed irreversible_write,
    ran after the failure without a blast_radius_breach."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "300ms",
                                                      "blast_radius": {"send_email": "irreversible_write"}}}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            with tracer.start_as_current_span("lookup_order") as lookup:
                lookup.set_attribute("openinference.span.kind", "TOOL")
                lookup.set_attribute("input.value", '{"order_id": "ORD-4"}')
                lookup.set_status(Status(StatusCode.ERROR, "order service returned 502"))
            with tracer.start_as_current_span("send_email") as email:
                email.set_attribute("openinference.span.kind", "TOOL")
                email.set_attribute("input.value", '{"to": "customer", "body": "Your refund is on its way"}')
            trace_id = format(root.get_span_context().trace_id, "032x")
            email_id = format(email.get_span_context().span_id, "016x")
    rows = c.wait_for(f"SELECT failure_mode, span_id, message FROM detections WHERE trace_id = '{trace_id}' "
                      "ORDER BY failure_mode", lambda r: len(r) == 2)
    breach, failed_call = rows
    assert (breach["failure_mode"], breach["span_id"]) == ("blast_radius_breach", email_id)
    assert failed_call["message"] == "tool lookup_order failed: order service returned 502"


def test_a_tool_without_tool_name_called_again_and_again_is_a_loop(start_collector):
    """Three identical calls of a TOOL span named lookup_order, no tool.name: a loop (it was skipped, nameless)."""
    c = start_collector(FAST_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            for _ in range(3):
                with tracer.start_as_current_span("lookup_order") as call:
                    call.set_attribute("openinference.span.kind", "TOOL")
                    call.set_attribute("input.value", '{"order_id": "ORD-5"}')
                    call.set_attribute("output.value", '{"status": "pending"}')
            trace_id = format(root.get_span_context().trace_id, "032x")
            last_id = format(call.get_span_context().span_id, "016x")
    rows = c.wait_for(f"SELECT failure_mode, span_id, message FROM detections WHERE trace_id = '{trace_id}'",
                      lambda r: len(r) == 1)
    assert rows == [{"failure_mode": "loop", "span_id": last_id,
                     "message": "tool lookup_order was called 3 times with the same arguments"}]


def test_tool_arguments_holding_a_phone_number_stay_valid_json_and_are_no_failure(start_collector):
    """``{"customer_phone": 4155550132}`` became ``{"customer_phone": <PHONE>}`` in input.value and in the GenAI
    arguments attribute: no longer JSON, so the sanitizer itself made a tool_argument (and a format_violation
    on the declared JSON output) out of a good call. The number becomes a quoted placeholder instead."""
    c = start_collector(FAST_JUDGE)
    args = '{"customer_phone": 4155550132, "card": 4111111111111111, "attempts": 2}'
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            root.set_attribute("input.value", "Call the customer back")
            with tracer.start_as_current_span("call_customer") as tool:
                tool.set_attribute("openinference.span.kind", "TOOL")
                tool.set_attribute("tool.name", "call_customer")
                for io in ("input", "output"):
                    tool.set_attribute(f"{io}.value", args)
                    tool.set_attribute(f"{io}.mime_type", "application/json")
            with tracer.start_as_current_span("execute_tool call_customer") as call:
                call.set_attribute("gen_ai.operation.name", "execute_tool")
                call.set_attribute("gen_ai.tool.name", "call_customer")
                call.set_attribute("gen_ai.tool.call.arguments", args)
            trace_id = format(root.get_span_context().trace_id, "032x")
    c.wait_for(f"SELECT 1 FROM trace_state WHERE trace_id = '{trace_id}' AND judged_seq = received_seq",
               lambda r: len(r) == 1)
    rows = c.query(f"SELECT input_value, output_value, attributes FROM spans WHERE trace_id = '{trace_id}' "
                   "AND span_kind = 'TOOL' ORDER BY name")
    stored = [rows[0]["input_value"], rows[0]["output_value"],
              json.loads(rows[1]["attributes"])["gen_ai"]["tool"]["call"]["arguments"]]
    want = '{"customer_phone": "<PHONE>", "card": "<CARD>", "attempts": 2}'
    assert stored == [want, want, want]
    assert c.query(f"SELECT failure_mode FROM detections WHERE trace_id = '{trace_id}'") == []


def _failing_tool_judged_before_its_root(c: Any, agent_tracer: Any, question: str, order_id: str) -> str:
    """An AGENT root asking ``question`` whose failing lookup_order child goes out over HTTP and is judged
    (a candidate counts the trace) before the root ends and is exported: a long run's export order.
    Returns the trace id; the root's re-judgement is the caller's to wait for."""
    from opentelemetry import trace as otel_trace

    root = agent_tracer.start_span("agent")
    root.set_attribute("openinference.span.kind", "AGENT")
    root.set_attribute("input.value", question)
    trace_id = format(root.get_span_context().trace_id, "032x")
    with sdk_tracer("http", c.http_url) as tool_tracer:
        with tool_tracer.start_as_current_span("lookup_order", context=otel_trace.set_span_in_context(root)) as tool:
            tool.set_attribute("openinference.span.kind", "TOOL")
            tool.set_attribute("tool.name", "lookup_order")
            tool.set_attribute("input.value", json.dumps({"order_id": order_id}))
            tool.set_status(Status(StatusCode.ERROR, "order service returned 502"))
    c.wait_for(f"SELECT candidate_id FROM candidates WHERE list_contains(trace_ids, '{trace_id}')",
               lambda rows: len(rows) == 1)
    root.end()
    return trace_id


def test_a_root_span_arriving_after_the_judgement_leaves_one_candidate_for_the_trace(start_collector):
    """The SDK exports a long agent run's children before its root: the re-judgement sees the user's
    question, and the candidate built without it must not keep counting the trace."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "1s"}}})
    question = "Where is my parcel for order ORD-7?"
    with sdk_tracer("grpc", c.grpc_endpoint) as agent_tracer:
        trace_id = _failing_tool_judged_before_its_root(c, agent_tracer, question, "ORD-7")
    rows = c.wait_for(
        f"SELECT candidate_id, input, occurrences, trace_ids FROM candidates WHERE list_contains(trace_ids, '{trace_id}')",
        lambda rows: any(question in r["input"] for r in rows) and len(rows) == 1)
    assert rows[0]["occurrences"] == 1 and rows[0]["trace_ids"] == [trace_id]
    assert c.query("SELECT count(*) AS n FROM candidates") == [{"n": 1}]
    assert len(detections_for(c, trace_id)) == 1
    metrics = httpx.get(f"{c.http_url}/metrics").text
    assert 'tracesieve_candidates{status="new"} 1.0' in metrics


def test_a_late_root_span_completes_the_candidate_built_before_it_arrived(start_collector):
    """The same failure (same input) judged again with the root: source and observed show what it added."""
    from opentelemetry import trace as otel_trace

    c = start_collector({"processors": {"detectors": {"decision_wait": "1s"}}})
    answer = "Sorry, I could not look your order up."
    with sdk_tracer("grpc", c.grpc_endpoint, service="support-agent") as agent_tracer:
        root = agent_tracer.start_span("agent")
        root.set_attribute("openinference.span.kind", "AGENT")
        root.set_attribute("session.id", "sess-late-root")
        root.set_attribute("agent.name", "support")
        trace_id = format(root.get_span_context().trace_id, "032x")
        with sdk_tracer("http", c.http_url, service="support-agent") as child_tracer:
            inside = otel_trace.set_span_in_context(root)
            with child_tracer.start_as_current_span("llm", context=inside) as llm:
                llm.set_attribute("openinference.span.kind", "LLM")
                llm.set_attribute("llm.input_messages.0.message.role", "user")
                llm.set_attribute("llm.input_messages.0.message.content", "Where is order ORD-7?")
            with child_tracer.start_as_current_span("lookup_order", context=inside) as tool:
                tool.set_attribute("openinference.span.kind", "TOOL")
                tool.set_attribute("tool.name", "lookup_order")
                tool.set_attribute("input.value", json.dumps({"order_id": "ORD-7"}))
                tool.set_status(Status(StatusCode.ERROR, "order service returned 502"))
        first = c.wait_for("SELECT candidate_id, source FROM candidates", lambda rows: len(rows) == 1)
        assert json.loads(first[0]["source"])["session_id"] is None
        root.set_attribute("output.value", answer)
        root.end()
    rows = c.wait_for("SELECT candidate_id, source, observed, occurrences FROM candidates",
                      lambda rows: len(rows) == 1 and json.loads(rows[0]["source"])["session_id"] is not None)
    assert rows[0]["candidate_id"] == first[0]["candidate_id"] and rows[0]["occurrences"] == 1
    source = json.loads(rows[0]["source"])
    assert (source["session_id"], source["agent_name"], source["trace_id"]) == ("sess-late-root", "support", trace_id)
    assert json.loads(rows[0]["observed"])["final_answer"] == answer


def test_first_seen_is_when_the_failing_trace_arrived_not_when_a_restart_judged_it(start_collector):
    """A trace pending at a crash is judged on the next start; its candidate was seen when it arrived."""
    c = start_collector(SLOW_JUDGE)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, tool_error=True)
    arrived = c.query(f"SELECT max(received_at) AS at FROM spans WHERE trace_id = '{trace_id}'")[0]["at"]
    c.stop(signal.SIGKILL)
    c.config_path.write_text(c.config_path.read_text().replace("1m", "300ms"))
    c.start()
    rows = c.wait_for("SELECT first_seen, last_seen, trace_ids FROM candidates", lambda r: len(r) == 1)
    assert rows[0]["trace_ids"] == [trace_id]
    assert rows[0]["first_seen"] == arrived and rows[0]["last_seen"] == arrived


def test_a_late_root_whose_candidate_is_capped_leaves_the_trace_where_it_was(start_collector):
    """Past max_per_intent the re-judged failure is filed nowhere new: the trace must not vanish from the table."""
    c = start_collector({"processors": {"detectors": {"decision_wait": "1s"}, "promotion": {"max_per_intent": 2}}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        emit_agent_trace(tracer, tool_error=True, question="Where is my first order?")
        trace_id = _failing_tool_judged_before_its_root(c, tracer, "And where is my second order, please?", "ORD-2")
    c.wait_for(f"SELECT received_seq FROM trace_state WHERE trace_id = '{trace_id}' AND received_seq = judged_seq "
               "AND received_seq > 1", lambda rows: len(rows) == 1)
    rows = c.query(f"SELECT occurrences FROM candidates WHERE list_contains(trace_ids, '{trace_id}')")
    assert rows == [{"occurrences": 1}]
    assert c.query("SELECT count(*) AS n FROM candidates") == [{"n": 2}]


def test_a_late_span_that_clears_a_failure_takes_its_detection_and_unreviewed_candidate_away(start_collector):
    """The answer cited [doc-9]; the retriever span that returned doc-9 arrives after the judgement."""
    from opentelemetry import trace as otel_trace

    c = start_collector({"processors": {"detectors": {"decision_wait": "1s"}}})
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            root.set_attribute("input.value", "How long is the refund window?")
            with tracer.start_as_current_span("retrieve") as r:
                r.set_attribute("openinference.span.kind", "RETRIEVER")
                r.set_attribute("retrieval.documents.0.document.id", "doc-1")
                r.set_attribute("retrieval.documents.0.document.score", 0.9)
            late = tracer.start_span("retrieve_more")
            with tracer.start_as_current_span("llm") as llm:
                llm.set_attribute("openinference.span.kind", "LLM")
                llm.set_attribute("output.value", "Refunds are accepted within 60 days [doc-9].")
            trace_id = format(root.get_span_context().trace_id, "032x")
        c.wait_for(f"SELECT failure_mode FROM detections WHERE trace_id = '{trace_id}'",
                   lambda rows: rows == [{"failure_mode": "hallucination"}])
        c.wait_for("SELECT candidate_id FROM candidates", lambda rows: len(rows) == 1)
        # the first spans may have come in two exports: the late span's arrival is the one after these
        judged = c.query(f"SELECT received_seq FROM trace_state WHERE trace_id = '{trace_id}'")[0]["received_seq"]
        with otel_trace.use_span(late, end_on_exit=True):
            late.set_attribute("openinference.span.kind", "RETRIEVER")
            late.set_attribute("retrieval.documents.0.document.id", "doc-9")
            late.set_attribute("retrieval.documents.0.document.score", 0.8)
    c.wait_for(f"SELECT received_seq FROM trace_state WHERE trace_id = '{trace_id}' AND received_seq = judged_seq "
               f"AND received_seq > {judged}", lambda rows: len(rows) == 1)
    assert c.query(f"SELECT count(*) AS n FROM detections WHERE trace_id = '{trace_id}'") == [{"n": 0}]
    assert c.query("SELECT count(*) AS n FROM candidates") == [{"n": 0}]
    metrics = httpx.get(f"{c.http_url}/metrics").text
    assert 'tracesieve_detections{failure_mode="hallucination"} 0.0' in metrics
    assert 'tracesieve_candidates{status="new"} 0.0' in metrics


def test_an_operator_rule_that_runs_too_long_is_interrupted_and_the_built_in_rules_still_judge(start_collector):
    """A rule joining spans to a huge range (or to itself without a key) held the judge thread for as long as
    it ran, with checkpoints waiting on it: no trace got a detection. It is now interrupted after
    ``rule_time_limit``, skipped for that round (logged by name), and every built-in finding is still filed."""
    # fast on no spans (the startup check), a scan of 10^11 rows once there is one
    slow = ("SELECT s.trace_id, s.span_id, 'never' AS message, '{}' AS evidence "
            "FROM range(100000000000) r JOIN spans s ON r.range = length(s.name) - 100")
    config = {"processors": {"detectors": {
        "decision_wait": "300ms", "rule_time_limit": "1s",
        "rules": [{"name": "slow_join", "failure_mode": "tool_invocation", "severity": "P3", "sql": slow}]}}}
    c = start_collector(config)
    started = time.monotonic()
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, tool_error=True)
    rows = c.wait_for(f"SELECT detector FROM detections WHERE trace_id = '{trace_id}'", lambda r: len(r) >= 1,
                      timeout=60)
    assert [r["detector"] for r in rows] == ["tool_error"]
    assert time.monotonic() - started < 30  # the rule alone would run for many minutes
    assert "slow_join (InterruptException)" in c.log()


def test_detector_options_and_operator_rules_hold_through_serve_and_its_span_workers(start_collector):
    """The knobs fixed in the rules audit, end to end: a rule turned off by name, a rule's finding with no span
    on the root, one-line messages, a mode's configured blast radius, ms in a sub-second latency message."""
    rule_sql = ("SELECT trace_id, NULL AS span_id, 'tool failures:' || chr(10) || count(*) AS message, "
                "json_object('n', count(*)) AS evidence FROM spans WHERE span_kind = 'TOOL' AND status_code = 'ERROR' "
                "GROUP BY trace_id; -- one per trace")
    config = {"processors": {"detectors": {
        "decision_wait": "300ms", "latency_breach": {"TOOL": "50ms"},
        "blast_radius": {"tool_invocation": "no_external_effect"}, "disable": ["off_rule"],
        "rules": [{"name": "failed_tools", "failure_mode": "tool_invocation", "severity": "P3", "sql": rule_sql},
                  {"name": "off_rule", "failure_mode": "loop", "severity": "P3", "sql": rule_sql}]}}}
    c = start_collector(config)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        with tracer.start_as_current_span("agent") as root:
            root.set_attribute("openinference.span.kind", "AGENT")
            with tracer.start_as_current_span("lookup_order") as tool:
                tool.set_attribute("openinference.span.kind", "TOOL")
                tool.set_attribute("tool.name", "lookup_order")
                tool.set_status(Status(StatusCode.ERROR, "order service returned 502\nretry later"))
                time.sleep(0.08)
            trace_id = format(root.get_span_context().trace_id, "032x")
            root_id, tool_id = (format(s.get_span_context().span_id, "016x") for s in (root, tool))
    rows = c.wait_for(f"SELECT detector, span_id, blast_radius, message FROM detections WHERE trace_id = '{trace_id}' "
                      "ORDER BY detector", lambda r: len(r) >= 3)
    by = {r["detector"]: r for r in rows}
    assert sorted(by) == ["failed_tools", "slow_span", "tool_error"]
    assert (by["failed_tools"]["span_id"], by["failed_tools"]["message"]) == (root_id, "tool failures: 1")
    assert (by["tool_error"]["span_id"], by["tool_error"]["blast_radius"]) == (tool_id, "no_external_effect")
    assert by["tool_error"]["message"] == "tool lookup_order failed: order service returned 502 retry later"
    assert re.fullmatch(r"TOOL span lookup_order took \d+(\.\d)?ms, over the 50ms threshold", by["slow_span"]["message"])
