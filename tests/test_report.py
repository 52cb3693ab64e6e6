"""`tracesieve report`: one self-contained, escaped HTML review page built from plain data."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser
from typing import Any

from tracesieve.collector.report import render_report
from tracesieve.collector.waterfall import bar_geometry, tree_order

TRACE = "a" * 32
OTHER_TRACE = "b" * 32
T0 = dt.datetime(2025, 1, 1, 10, 0, 0, tzinfo=dt.timezone.utc)
XSS = "<script>alert(1)</script>"
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "source", "col", "area", "base", "embed", "track"}


# --- builders ---------------------------------------------------------------------------------

def make_span(span_id: str, parent: str | None = None, *, name: str = "step", kind: str = "CHAIN",
              status: str = "OK", start_ms: float | None = 0, duration_ms: float | None = 100,
              status_message: str | None = None, end: bool = True, tool_name: str | None = None) -> dict[str, Any]:
    start = T0 + dt.timedelta(milliseconds=start_ms) if start_ms is not None else None
    end_time = start + dt.timedelta(milliseconds=duration_ms) if (end and start and duration_ms is not None) else None
    return {"span_id": span_id, "parent_span_id": parent, "name": name, "span_kind": kind, "status_code": status,
            "status_message": status_message, "start_time": start.isoformat() if start else None,
            "end_time": end_time.isoformat() if end_time else None, "duration_ms": duration_ms,
            "tool_name": tool_name, "llm_model_name": "gpt-4o-mini" if kind == "LLM" else None}


def make_candidate(candidate_id: str, *, mode: str = "tool_invocation", severity: str = "P1",
                   status: str = "new", occurrences: int = 1, trace_id: str = TRACE,
                   span_ids: list[str] | None = None, user_message: str = "refund order A1") -> dict[str, Any]:
    return {"candidate_id": candidate_id, "failure_mode": mode, "severity": severity,
            "blast_radius": "irreversible_write", "status": status, "occurrences": occurrences,
            "first_seen": "2025-01-01T10:00:05+00:00", "last_seen": "2025-01-02T10:00:05+00:00",
            "input": {"user_message": user_message, "conversation_history": []},
            "context": {"tool_calls": [{"name": "refund_payment"}]},
            "observed": {"final_answer": "The refund failed.", "tool_sequence": ["refund_payment"]},
            "expected": {"required_tool_sequence": ["refund_payment"]},
            "source": {"trace_id": trace_id, "span_ids": span_ids or []},
            "duplicate_of": None, "trace_ids": [trace_id], "case_id": None}


def make_detection(span_id: str, *, mode: str = "tool_invocation", evidence: Any = None) -> dict[str, Any]:
    return {"detection_id": f"d-{span_id}", "span_id": span_id, "detector": "tool_error", "failure_mode": mode,
            "severity": "P1", "blast_radius": "irreversible_write", "message": "tool refund_payment failed",
            "evidence": evidence if evidence is not None else {"status_code": "ERROR", "http_status": 500},
            "detected_at": "2025-01-01T10:00:05+00:00"}


def agent_trace(tool_name: str = "refund_payment") -> list[dict[str, Any]]:
    return [
        make_span("0000000000000001", name="agent", kind="AGENT", start_ms=0, duration_ms=4000),
        make_span("0000000000000002", "0000000000000001", name="plan", kind="LLM", start_ms=100, duration_ms=1000),
        make_span("0000000000000003", "0000000000000001", name=tool_name, kind="TOOL", status="ERROR",
                  start_ms=1200, duration_ms=800, status_message="HTTP 500", tool_name="refund_payment"),
        make_span("0000000000000004", "0000000000000001", name="answer", kind="LLM", start_ms=2100, duration_ms=1900),
    ]


def report_data(candidates: list[dict[str, Any]], traces: dict[str, list[dict[str, Any]]] | None = None,
                detections: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    return {"generated_at": "2025-01-02T12:00:00+00:00", "db": "./tracesieve.duckdb", "candidates": candidates,
            "traces": traces if traces is not None else {TRACE: agent_trace()},
            "detections": detections if detections is not None else {TRACE: [make_detection("0000000000000003")]}}


# --- a small HTML reader ------------------------------------------------------------------------

class Page(HTMLParser):
    """Records every start tag with its attributes, and unbalanced end tags."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]


def style_pct(style: str, prop: str) -> float:
    match = re.search(rf"(?:^|;)\s*{prop}:\s*([0-9.]+)%", style)
    assert match, f"{prop} not in {style!r}"
    return float(match.group(1))


# --- the document ---------------------------------------------------------------------------------

def test_the_page_is_one_balanced_html5_document():
    text = render_report(report_data([make_candidate("c0000000001a")]))
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")
    assert page.problems == []
    assert page.stack == []
    assert [t for t, _ in page.tags].count("main") == 1
    assert [t for t, _ in page.tags][:1] == ["html"]


def test_the_page_loads_nothing_from_outside():
    text = render_report(report_data([make_candidate("c0000000001a")]))
    page = Page(text)
    assert "<link" not in text
    for tag, attrs in page.tags:
        for attr in ("src", "href", "action", "data", "poster"):
            value = attrs.get(attr, "")
            assert not re.match(r"\s*(https?:)?//", value), f"<{tag} {attr}={value!r}>"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text)
    assert not re.search(r"@import", text)
    csp = [a["content"] for a in page.find("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]


def test_the_page_reads_without_javascript():
    text = render_report(report_data([make_candidate("c0000000001a")]))
    no_js = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert "c0000000001a" in no_js
    assert 'class="bar' in no_js
    assert text.count("<script>") == 1


def test_every_candidate_is_on_the_page_most_severe_first():
    cands = [make_candidate("c00000000p2x", severity="P2", occurrences=50),
             make_candidate("c00000000p0x", severity="P0", occurrences=1),
             make_candidate("c00000000p1a", severity="P1", occurrences=3),
             make_candidate("c00000000p1b", severity="P1", occurrences=9)]
    page = Page(render_report(report_data(cands)))
    sections = [a["id"] for a in page.find("section", "cand")]
    assert sections == ["c-c00000000p0x", "c-c00000000p1b", "c-c00000000p1a", "c-c00000000p2x"]


def test_the_matrix_counts_candidates_by_mode_and_severity():
    cands = [make_candidate("c1", mode="tool_invocation", severity="P1"),
             make_candidate("c2", mode="tool_invocation", severity="P1", status="promoted"),
             make_candidate("c3", mode="tool_invocation", severity="P0", status="rejected"),
             make_candidate("c4", mode="hallucination", severity="P0", status="duplicate")]
    text = render_report(report_data(cands))
    matrix = re.search(r'<table class="matrix" id="matrix-severity">.*?</table>', text, re.S).group(0)
    rows = {m.group(1): re.findall(r"<td[^>]*>(\d+)</td>", m.group(0))
            for m in re.finditer(r'<tr data-mode="([a-z_]+)">.*?</tr>', matrix, re.S)}
    #                         P0   P1   P2   P3  total
    assert rows == {"tool_invocation": ["1", "2", "0", "0", "3"], "hallucination": ["1", "0", "0", "0", "1"]}
    assert list(rows) == ["tool_invocation", "hallucination"]  # taxonomy order
    total = re.search(r'<tr class="total">.*?</tr>', matrix, re.S).group(0)
    assert re.findall(r"<td[^>]*>(\d+)</td>", total) == ["2", "2", "0", "0", "4"]


def test_the_status_matrix_counts_candidates_by_mode_and_status():
    cands = [make_candidate("c1"), make_candidate("c2", status="promoted"), make_candidate("c3", status="promoted")]
    text = render_report(report_data(cands))
    matrix = re.search(r'<table class="matrix" id="matrix-status">.*?</table>', text, re.S).group(0)
    row = re.search(r'<tr data-mode="tool_invocation">.*?</tr>', matrix, re.S).group(0)
    #                                              new promoted rejected duplicate total
    assert re.findall(r"<td[^>]*>(\d+)</td>", row) == ["1", "2", "0", "0", "3"]


def test_the_header_counts_candidates_and_occurrences():
    cands = [make_candidate("c1", occurrences=7), make_candidate("c2", occurrences=5, status="promoted")]
    text = render_report(report_data(cands))
    header = re.search(r"<header>.*?</header>", text, re.S).group(0)
    assert "<b>2</b>candidates" in header
    assert "<b>12</b>occurrences" in header
    assert "<b>1</b>awaiting review" in header


# --- the promote command ----------------------------------------------------------------------------

def test_the_promote_command_is_shown_only_while_a_candidate_awaits_review():
    cands = [make_candidate("cnew00000001", status="new"), make_candidate("cdup00000001", status="duplicate"),
             make_candidate("cpro00000001", status="promoted"), make_candidate("crej00000001", status="rejected")]
    text = render_report(report_data(cands))
    assert "tracesieve promote cnew00000001 --cases cases.yaml --owner YOU" in text
    assert "tracesieve promote cdup00000001 --cases cases.yaml --owner YOU" in text
    assert "tracesieve promote cpro00000001" not in text
    assert "tracesieve promote crej00000001" not in text


# --- escaping -------------------------------------------------------------------------------------

def test_a_script_in_a_span_name_is_escaped():
    data = report_data([make_candidate("c1")], traces={TRACE: agent_trace(tool_name=XSS)})
    text = render_report(data)
    assert text.count("<script>") == 1  # the page's own filter script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert XSS in "".join(Page(text).text)  # still shown to the reader, as text


def test_a_script_in_the_user_input_and_evidence_is_escaped():
    cand = make_candidate("c1", user_message=f"refund {XSS} now")
    cand["observed"] = {"final_answer": XSS}
    data = report_data([cand], detections={TRACE: [make_detection("0000000000000003", evidence={"arg": XSS})]})
    text = render_report(data)
    assert text.count("<script>") == 1
    assert "refund &lt;script&gt;alert(1)&lt;/script&gt; now" in text
    assert "alert(1)&lt;/script&gt;&quot;" in text  # inside the pretty JSON evidence


def test_control_characters_in_span_content_are_shown_escaped_never_written_raw():
    """ESC sequences and other control characters in a user message, a span name, an answer or evidence
    were written into the page raw: HTML parse errors a browser shows as nothing, and escape sequences
    for the terminal of whoever reads the file with `cat` or `less`. They are shown as `\\x1b`, as the CLI does."""
    hostile = "evil \x1b[2J\x1b]0;owned\x07 text \x9b31m"
    cand = make_candidate("c1", user_message=hostile)
    cand["observed"] = {"final_answer": hostile}
    data = report_data([cand], traces={TRACE: agent_trace(tool_name=hostile)},
                       detections={TRACE: [make_detection("0000000000000003", evidence={"arg": hostile})]})
    text = render_report(data)
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
    assert "evil \\x1b[2J\\x1b]0;owned\\x07 text \\x9b31m" in "".join(Page(text).text)


def test_quotes_in_values_cannot_break_out_of_attributes():
    cand = make_candidate('c1" onmouseover="alert(1)', mode='loop" x="y')
    text = render_report(report_data([cand]))
    page = Page(text)
    assert not any("onmouseover" in attrs for _, attrs in page.tags)
    assert not any("x" in attrs for _, attrs in page.tags)


# --- the waterfall ----------------------------------------------------------------------------------

def test_waterfall_rows_follow_the_span_tree():
    spans = [make_span("03", "01", start_ms=300), make_span("01", start_ms=0, duration_ms=1000),
             make_span("02", "01", start_ms=100), make_span("04", "02", start_ms=150),
             make_span("05", "missing-parent", start_ms=500)]
    assert [(s["span_id"], depth) for s, depth in tree_order(spans)] == [
        ("01", 0), ("02", 1), ("04", 2), ("03", 1), ("05", 0)]


def test_a_parent_cycle_still_lists_every_span_once():
    spans = [make_span("01", "02"), make_span("02", "01")]
    assert sorted(s["span_id"] for s, _ in tree_order(spans)) == ["01", "02"]


def test_waterfall_bars_are_positioned_in_percent_of_the_trace():
    page = Page(render_report(report_data([make_candidate("c1")])))
    bars = [a["style"] for a in page.find("div", "bar")]
    assert len(bars) == 4
    geometry = [(style_pct(s, "left"), style_pct(s, "width")) for s in bars]
    for left, width in geometry:
        assert 0 <= left <= 100 and 0 < width <= 100 and left + width <= 100.0001
    # agent 0..4000 ms, plan 100..1100, tool 1200..2000, answer 2100..4000 (tree order = start order here)
    assert geometry == [(0.0, 100.0), (2.5, 25.0), (30.0, 20.0), (52.5, 47.5)]


def test_bar_geometry_stays_inside_the_track():
    assert bar_geometry(T0, T0, T0, 0) == (0.0, 100.0)
    left, width = bar_geometry(T0 + dt.timedelta(seconds=5), T0 + dt.timedelta(seconds=5), T0, 5000)
    assert 0 < width and left + width <= 100
    left, width = bar_geometry(T0 - dt.timedelta(seconds=1), T0 + dt.timedelta(seconds=9), T0, 5000)
    assert (left, width) == (0.0, 100.0)


def test_error_spans_are_red_and_the_failing_span_is_highlighted():
    page = Page(render_report(report_data([make_candidate("c1")])))
    rows = {a["data-span-id"]: a["class"].split() for a in page.find("div", "row") if "data-span-id" in a}
    assert "error" in rows["0000000000000003"]
    assert "hl" in rows["0000000000000003"]
    assert [sid for sid, cls in rows.items() if "hl" in cls] == ["0000000000000003"]
    assert len(page.find("div", "err")) == 1


def test_the_source_span_ids_are_highlighted_even_without_a_detection():
    data = report_data([make_candidate("c1", span_ids=["0000000000000002"])], detections={})
    page = Page(render_report(data))
    highlighted = [a["data-span-id"] for a in page.find("div", "hl") if "data-span-id" in a]
    assert highlighted == ["0000000000000002"]


def test_detections_show_their_evidence_as_pretty_json():
    text = render_report(report_data([make_candidate("c1")]))
    assert '<pre>{\n  &quot;http_status&quot;: 500,\n  &quot;status_code&quot;: &quot;ERROR&quot;\n}</pre>' in text
    assert "tool refund_payment failed" in text


def test_spans_without_times_are_listed_without_a_bar():
    spans = [make_span("01", start_ms=0, duration_ms=1000),
             make_span("02", "01", start_ms=None, duration_ms=None, name="untimed"),
             make_span("03", "01", start_ms=200, duration_ms=300, end=False)]  # end_time NULL, duration known
    page = Page(render_report(report_data([make_candidate("c1")], traces={TRACE: spans}, detections={})))
    assert len(page.find("div", "bar")) == 2
    assert "no timing recorded" in "".join(page.text)
    bars = [a["style"] for a in page.find("div", "bar")]
    assert (style_pct(bars[1], "left"), style_pct(bars[1], "width")) == (20.0, 30.0)


def test_a_trace_of_only_untimed_spans_still_renders():
    spans = [make_span("01", start_ms=None, duration_ms=None)]
    page = Page(render_report(report_data([make_candidate("c1")], traces={TRACE: spans}, detections={})))
    assert page.problems == [] and page.find("div", "bar") == []


def test_a_missing_trace_is_said_plainly():
    data = report_data([make_candidate("c1", trace_id=OTHER_TRACE)])
    text = render_report(data)
    assert f"The spans of trace <code>{OTHER_TRACE}</code> are not in this report" in text
    assert Page(text).problems == []


# --- empty and sparse data --------------------------------------------------------------------------

def test_an_empty_store_gives_a_friendly_page():
    text = render_report({"generated_at": "2025-01-02T12:00:00+00:00", "db": "x.duckdb", "candidates": [],
                          "traces": {}, "detections": {}})
    page = Page(text)
    assert "No candidates yet" in text
    assert page.problems == [] and page.stack == []
    assert page.find("table") == []


def test_a_page_cut_by_limit_says_how_many_candidates_it_leaves_out():
    """With more candidates than --limit, the page read like the whole store: "2 candidates", no word of the rest."""
    data = {**report_data([make_candidate("c1"), make_candidate("c2")]), "total": 7, "limit": 2}
    page = Page(render_report(data))
    text = " ".join(" ".join(page.text).split())
    assert "showing 2 of 7 candidates" in text and "raise --limit" in text
    assert "of 7" not in " ".join(Page(render_report(report_data([make_candidate("c1")]))).text)


def test_missing_keys_and_null_columns_do_not_break_the_page():
    cand = {"candidate_id": "c1", "status": None, "severity": None, "occurrences": None, "input": None,
            "source": None, "trace_ids": None, "expected": None, "observed": None}
    for data in ({}, {"candidates": [cand]}):
        page = Page(render_report(data))
        assert page.problems == [] and page.stack == []


# --- grouping, the review queue, the candidate card ---------------------------------------------------

def test_candidates_are_grouped_by_severity_then_failure_mode_with_counts():
    cands = [make_candidate("c1", mode="hallucination", severity="P1", occurrences=2),
             make_candidate("c2", mode="tool_invocation", severity="P1", occurrences=5),
             make_candidate("c3", mode="tool_invocation", severity="P1", occurrences=1, status="promoted"),
             make_candidate("c4", mode="loop", severity="P0", occurrences=1)]
    text = render_report(report_data(cands))
    page = Page(text)
    assert [a["id"] for a in page.find("section", "group")] == [
        "g-P0-loop", "g-P1-tool_invocation", "g-P1-hallucination"]  # severity, then taxonomy order
    groups = re.findall(r'<section class="group[^"]*" id="([^"]+)">(.*?)(?=<section class="group|</main>)', text, re.S)
    members = {gid: re.findall(r'<section class="cand[^"]*" id="c-(\w+)"', body) for gid, body in groups}
    assert members == {"g-P0-loop": ["c4"], "g-P1-tool_invocation": ["c2", "c3"], "g-P1-hallucination": ["c1"]}
    heading = re.search(r'id="g-P1-tool_invocation">\s*<h2[^>]*>(.*?)</h2>', text, re.S).group(1)
    assert "2 candidates · 6 occurrences · 1 awaiting review" in heading


def test_the_review_queue_lists_every_candidate_with_what_happened_and_a_link():
    cands = [make_candidate("c00000000p2x", severity="P2"), make_candidate("c00000000p0x", severity="P0")]
    text = render_report(report_data(cands))
    queue = re.search(r'<table class="queue" id="queue">.*?</table>', text, re.S).group(0)
    links = re.findall(r'<a href="#c-(\w+)">', queue)
    assert links == ["c00000000p0x", "c00000000p2x"]
    assert queue.count("tool refund_payment failed") == 2  # the detection's message is the headline
    assert "refund order A1" in queue  # and what the user asked
    assert re.search(r'<tr class="qrow" data-mode="tool_invocation" data-severity="P0" data-status="new">', queue)


def test_each_waterfall_row_shows_the_span_status():
    page = Page(render_report(report_data([make_candidate("c1")])))
    statuses = [a["class"].split()[1] for a in page.find("div", "st") if len(a["class"].split()) > 1]
    assert statuses == ["st-ok", "st-ok", "st-error", "st-ok"]


def test_the_context_lists_retrieved_documents_and_tool_calls_with_their_outcome():
    cand = make_candidate("c1")
    cand["context"] = {"documents": [{"id": "doc-7", "score": 0.8, "content": "Refunds take 5 days."}],
                       "tool_calls": [{"name": "refund_payment", "arguments": {"order_id": "A1"},
                                       "status": "ERROR", "error": "HTTP 500"}]}
    text = render_report(report_data([cand]))
    assert "<td><code>doc-7</code></td>" in text
    assert re.search(r'<tr class="bad"><td><code>refund_payment</code></td>.*?HTTP 500', text)


def test_the_observed_answer_comes_first_and_failed_tools_are_marked():
    cand = make_candidate("c1")
    cand["observed"] = {"final_answer": "Done.", "tool_sequence": ["lookup_order", "refund_payment"]}
    cand["context"] = {"tool_calls": [{"name": "lookup_order", "status": "OK"},
                                      {"name": "refund_payment", "status": "ERROR"}]}
    text = render_report(report_data([cand]))
    assert '<div class="answer">Done.</div>' in text
    assert '<span class="chip">lookup_order</span> → <span class="chip bad">refund_payment</span>' in text
