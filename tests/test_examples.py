"""examples/: the support agent (real OpenAI SDK + OpenInference instrumentation, local fake model) against a
real `tracesieve serve`, the operator queries in examples/queries.sql, and the review page in headless Chromium.

One store is built for the whole module (the agent's mix takes a few seconds to play and settle);
every test reads it through the running collector, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import RunningCollector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SUPPORT_AGENT = EXAMPLES / "support_agent.py"

#: What the mix of conversations in examples/support_agent.py must show (every mode the detectors know).
EXPECTED_MODES = {
    "tool_invocation", "tool_argument", "retrieval_miss", "hallucination", "format_violation", "truncation",
    "refusal_overreach", "latency_breach", "loop", "blast_radius_breach", "llm_error", "negative_feedback",
}
#: Sessions whose conversation goes right: no detection may land on them.
CLEAN_SESSIONS = ("sess-1001", "sess-1002", "sess-1003", "sess-1004", "sess-1015", "sess-1016", "sess-1018")


@pytest.fixture(scope="module")
def support_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    """`tracesieve serve --config examples/support_config.yaml` after one run of the support agent, judged."""
    workdir = tmp_path_factory.mktemp("support")
    config = yaml.safe_load((EXAMPLES / "support_config.yaml").read_text())
    config["processors"]["detectors"]["decision_wait"] = "300ms"  # settle fast; everything else as shipped
    collector = RunningCollector(workdir, config)
    try:
        collector.start()
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.grpc_endpoint}",
               "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        run = subprocess.run([sys.executable, str(SUPPORT_AGENT)], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        collector.wait_for("SELECT DISTINCT failure_mode FROM candidates",
                           lambda rows: {r["failure_mode"] for r in rows} >= EXPECTED_MODES, timeout=90)
        yield collector
    finally:
        collector.kill()


# --- the support agent ------------------------------------------------------------------------------

def test_the_support_agent_shows_every_failure_mode_and_its_good_runs_stay_clean(support_store):
    modes = {r["failure_mode"] for r in support_store.query("SELECT DISTINCT failure_mode FROM detections")}
    assert modes == EXPECTED_MODES
    flagged = support_store.query(
        "SELECT s.session_id, d.failure_mode, d.message FROM detections d JOIN spans s USING (trace_id, span_id) "
        f"WHERE d.failure_mode <> 'latency_breach' AND s.trace_id IN (SELECT trace_id FROM spans "
        f"WHERE session_id IN {CLEAN_SESSIONS!r})")
    assert flagged == []
    same_question = support_store.query(
        "SELECT occurrences FROM candidates WHERE failure_mode = 'hallucination' "
        "AND (input->>'$.user_message') = 'Do you ship to Canada?'")
    assert same_question == [{"occurrences": 2}]  # two customers, one candidate
    rate_limited = support_store.query("SELECT source->>'$.model' AS model FROM candidates "
                                       "WHERE failure_mode = 'llm_error'")
    assert rate_limited == [{"model": "gpt-4o"}]  # the model it asked for, though none answered


def test_the_readme_quickstart_shows_a_candidate_the_support_agent_produces(support_store):
    """Candidate ids derive from detector, mode and input, so the quickstart can name one."""
    quickstart = (EXAMPLES.parent / "README.md").read_text().split("## Quickstart", 1)[1]
    shown = re.search(r"tracesieve show (\w+)", quickstart).group(1)
    rows = support_store.query(f"SELECT failure_mode FROM candidates WHERE candidate_id = '{shown}'")
    assert rows == [{"failure_mode": "blast_radius_breach"}]


def test_its_model_calls_are_openinference_spans_from_the_openai_instrumentor(support_store):
    rows = support_store.query(
        "SELECT scope_name, llm_provider, attributes->>'$.llm.tools[0].tool.json_schema' AS tool_schema, "
        "llm_finish_reason, llm_token_count_total, session_id FROM spans WHERE span_kind = 'LLM'")
    assert len(rows) >= 20
    assert {r["scope_name"] for r in rows} == {"openinference.instrumentation.openai"}
    with_tools = [r for r in rows if r["tool_schema"]]
    assert with_tools and json.loads(with_tools[0]["tool_schema"])["function"]["name"] == "lookup_order"
    assert {"stop", "tool_calls", "length"} <= {r["llm_finish_reason"] for r in rows}
    assert all(r["session_id"] for r in rows)


def test_customer_emails_never_reach_the_store(support_store):
    leaks = support_store.query(
        "SELECT count(*) AS n FROM spans WHERE concat_ws(' ', input_value, output_value, attributes::VARCHAR) "
        "LIKE '%@example.%'")
    assert leaks == [{"n": 0}]


# --- examples/queries.sql -------------------------------------------------------------------------------

def split_queries(text: str) -> list[tuple[str, str]]:
    """(question, statement) pairs: each statement is preceded by its `-- N. question` comment and ends in `;`."""
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not lines:
            match = re.match(r"--\s*(\d+)\.\s+(.+)", stripped)
            if match:
                question = match.group(2)
                continue
            if not stripped or stripped.startswith("--"):
                continue
            assert question, f"a statement without a `-- N. question` comment: {line!r}"
        lines.append(line)
        if stripped.endswith(";"):
            pairs.append((question or "", "\n".join(lines)))
            question, lines = None, []
    assert not lines, "the last statement does not end with ';'"
    return pairs


def test_queries_sql_holds_ten_questions():
    pairs = split_queries((EXAMPLES / "queries.sql").read_text())
    assert len(pairs) == 10
    assert all(q.endswith("?") for q, _ in pairs), [q for q, _ in pairs]


def test_every_operator_query_answers_on_the_support_store(support_store):
    for question, sql in split_queries((EXAMPLES / "queries.sql").read_text()):
        result = support_store.cli("query", sql, "--format", "json")
        assert result.returncode == 0, f"{question}\n{result.stderr}"
        assert json.loads(result.stdout), f"no rows for: {question}"


def test_query_tables_print_bracketed_values_as_they_are(support_store):
    result = support_store.cli(
        "query", "SELECT output_value FROM spans WHERE output_value LIKE '%doc-intl-07%' AND parent_span_id IS NULL "
        "LIMIT 1")
    assert result.returncode == 0, result.stderr
    assert "[doc-intl-07]" in result.stdout  # a citation is data, not terminal markup


# --- the review page in headless Chromium ---------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,2400"]


def chromium() -> str:
    """The Chromium binary; skipped locally when absent, a failure in CI (conftest: TRACESIEVE_NO_SKIPS)."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return path


def run_chromium(args: list[str], profile: Path, timeout: float = 90) -> str:
    """Run headless Chromium in its own process group, so a hang takes all its helper processes with it."""
    proc = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {timeout}s: {' '.join(args)}") from None
    assert proc.returncode == 0, err[-2000:]
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def review_page(support_store: RunningCollector) -> tuple[Path, list[dict[str, Any]]]:
    out = support_store.workdir / "review.html"
    result = support_store.cli("report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    candidates = json.loads(support_store.cli("candidates", "--format", "json").stdout)
    return out, candidates


def test_the_review_page_shows_every_candidate_in_chromium(review_page, tmp_path):
    page, candidates = review_page
    dom = run_chromium(["--dump-dom", page.as_uri()], tmp_path / "profile")
    assert len(candidates) >= len(EXPECTED_MODES)
    shown = re.findall(r'<section class="cand [^"]*" id="c-(\w+)" data-mode="([a-z_]+)"', dom)
    assert sorted(shown) == sorted((c["candidate_id"], c["failure_mode"]) for c in candidates)
    for c in candidates:
        assert f"tracesieve promote {c['candidate_id']} --cases cases.yaml --owner YOU" in dom
    groups = re.findall(r'<section class="group [^"]*" id="g-(P\d)-([a-z_]+)">', dom)
    assert {mode for _, mode in groups} == EXPECTED_MODES
    assert groups[0] == ("P0", "blast_radius_breach")  # the most severe group leads
    assert dom.count('class="wf"') == len(candidates)  # one waterfall per candidate
    assert '<div id="filters" class="on">' in dom  # the inline script ran: its CSP hash matches


def test_the_review_page_filters_by_the_query_string_in_chromium(review_page, tmp_path):
    page, candidates = review_page
    dom = run_chromium(["--dump-dom", page.as_uri() + "?severity=P1"], tmp_path / "profile")
    sections = re.findall(r'<section class="cand [^"]*" id="c-(\w+)" data-mode="[a-z_]+" data-severity="(P\d)"'
                          r'[^>]*?(style="display: none;")?>', dom)
    visible = sorted(cid for cid, _, hidden in sections if not hidden)
    assert visible and visible == sorted(c["candidate_id"] for c in candidates if c["severity"] == "P1")
    assert len(sections) == len(candidates)  # the others are on the page, hidden


def test_the_review_page_screenshot(review_page, tmp_path):
    page, _ = review_page
    shot = tmp_path / "review.png"
    run_chromium([f"--screenshot={shot}", page.as_uri()], tmp_path / "profile")
    assert png_size(shot) == (1400, 2400)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank canvas


def test_a_query_string_filter_no_candidate_matches_hides_them_all_in_chromium(tmp_path):
    """`review.html?severity=P0` on a page without a P0 showed every candidate: the select had no P0 option,
    so the value fell back to "all". The filter now keeps the value it was given and hides the rest."""
    from test_report import make_candidate, report_data

    from tracesieve.collector.report import render_report

    page = tmp_path / "review.html"
    page.write_text(render_report(report_data([make_candidate("c1", severity="P2"), make_candidate("c2", severity="P3")])))
    for query, visible in (("?severity=P0&status=new", []), ("?severity=P3", ["c2"]), ("?mode=nonesuch", [])):
        dom = run_chromium(["--dump-dom", page.as_uri() + query], tmp_path / "profile")
        sections = re.findall(r'<section class="cand [^"]*" id="c-(\w+)"[^>]*?(style="display: none;")?>', dom)
        assert sorted(cid for cid, hidden in sections) == ["c1", "c2"]
        assert [cid for cid, hidden in sections if not hidden] == visible, query
