"""The trace waterfall of the review page: one row per span, in tree order, with a bar on the trace's time axis.

Pure functions over plain span dicts (span_id, parent_span_id, name, span_kind, status_code,
status_message, start_time, end_time, duration_ms, tool_name, llm_model_name); every value is
escaped. The styles live with the page's (collector/report.py).
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from typing import Any

from tracesieve.collector.shown_text import printable
from tracesieve.storage.schema import SPAN_KINDS

#: Depth past which the waterfall stops indenting (the row still shows its depth).
_MAX_INDENT_DEPTH = 24
#: The narrowest bar drawn, in percent of the trace, so a 0 ms span stays visible.
_MIN_BAR_PCT = 0.4

_KIND_COLOURS = {
    "LLM": "#7c5cff", "TOOL": "#1f9d8b", "AGENT": "#3a6fd8", "RETRIEVER": "#d98a1c",
    "CHAIN": "#6b7a90", "EMBEDDING": "#b55fb5", "RERANKER": "#c0792f", "GUARDRAIL": "#2f8f4e",
    "EVALUATOR": "#8a6d3b", "PROMPT": "#5b8fa8", "DECISION": "#a05a7a", "UNKNOWN": "#9aa3ad",
}


def _e(value: Any, empty: str = "—") -> str:
    """Escaped text of a value, control characters shown as ``\\x1b`` (span names are user data)."""
    if value is None or value == "":
        return empty
    return html.escape(printable(str(value)), quote=True)


def parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        ts = value
    elif isinstance(value, str) and value:
        try:
            ts = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and f >= 0 else None  # NaN and negatives mean "unknown"


def _span_times(span: Mapping[str, Any]) -> tuple[dt.datetime | None, dt.datetime | None]:
    start, end = parse_time(span.get("start_time")), parse_time(span.get("end_time"))
    dur = _float(span.get("duration_ms"))
    if start and end is None and dur is not None:
        end = start + dt.timedelta(milliseconds=dur)
    if end and start is None and dur is not None:
        start = end - dt.timedelta(milliseconds=dur)
    if start and end and end < start:
        end = start
    return start, end


def tree_order(spans: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], int]]:
    """Spans depth first from the roots, siblings by start time, each with its depth.

    A span whose parent is absent from the trace counts as a root; spans caught in a parent cycle
    come last at depth 0, so every span appears exactly once.
    """
    by_id = {str(s.get("span_id")): s for s in spans}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots: list[Mapping[str, Any]] = []
    for s in spans:
        parent = s.get("parent_span_id")
        if parent and str(parent) in by_id and str(parent) != str(s.get("span_id")):
            children.setdefault(str(parent), []).append(s)
        else:
            roots.append(s)

    def key(s: Mapping[str, Any]) -> tuple[int, str, str]:
        start = _span_times(s)[0]
        return (start is None, start.isoformat() if start else "", str(s.get("span_id")))

    out: list[tuple[Mapping[str, Any], int]] = []
    seen: set[int] = set()
    stack = [(s, 0) for s in sorted(roots, key=key, reverse=True)]
    while stack:
        span, depth = stack.pop()
        if id(span) in seen:
            continue
        seen.add(id(span))
        out.append((span, depth))
        kids = children.get(str(span.get("span_id")), [])
        stack.extend((k, depth + 1) for k in sorted(kids, key=key, reverse=True))
    out.extend((s, 0) for s in sorted((s for s in spans if id(s) not in seen), key=key))
    return out


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    if 0 < ms < 0.1:
        return "<0.1 ms"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def bar_geometry(start: dt.datetime, end: dt.datetime, t0: dt.datetime, total_ms: float) -> tuple[float, float]:
    """(left, width) in percent of the trace, both within 0..100 and left + width <= 100."""
    if total_ms <= 0:
        return 0.0, 100.0
    left = (start - t0).total_seconds() * 1000 / total_ms * 100
    width = (end - start).total_seconds() * 1000 / total_ms * 100
    left = min(max(left, 0.0), 100.0 - _MIN_BAR_PCT)
    width = min(max(width, _MIN_BAR_PCT), 100.0 - left)
    return round(left, 3), round(width, 3)


def render_waterfall(spans: Sequence[Mapping[str, Any]], flagged: set[str]) -> str:
    """The legend and the rows; spans whose id is in ``flagged`` are highlighted as showing the failure."""
    times = [_span_times(s) for s in spans]
    starts = [t[0] for t in times if t[0]]
    ends = [t[1] or t[0] for t in times if t[0]]
    t0 = min(starts) if starts else None
    total_ms = (max(e for e in ends if e) - t0).total_seconds() * 1000 if t0 and ends else 0.0
    kinds = sorted({_kind(s) for s in spans}, key=lambda k: SPAN_KINDS.index(k))
    legend = ("<div class=\"legend\">" + "".join(
        f"<span><i style=\"background:{_KIND_COLOURS[k]}\"></i>{k}</span>" for k in kinds)
        + "<span><i style=\"background:#d32f2f\"></i>error</span>"
        "<span><i style=\"background:#fff4c2;outline:2px solid #f0b400\"></i>span that shows the failure</span></div>\n")
    rows = [legend, "<div class=\"wf\">\n",
            f"<div class=\"row head\"><div class=\"label\">span ({len(spans)})</div>"
            f"<div class=\"label\">0 → {_e(_fmt_ms(total_ms if t0 else None))}</div><div class=\"st\">status</div>"
            "<div class=\"dur\">duration</div></div>\n"]
    for span, depth in tree_order(spans):
        sid = str(span.get("span_id"))
        kind = _kind(span)
        is_err = str(span.get("status_code") or "").upper() == "ERROR"
        is_hl = sid in flagged
        classes = "row" + (" hl" if is_hl else "") + (" error" if is_err else "")
        indent = min(depth, _MAX_INDENT_DEPTH) * 14 + 8
        extra = next((str(v) for v in (span.get("tool_name"), span.get("llm_model_name"))
                      if v and str(v) != str(span.get("name"))), None)
        status = str(span.get("status_code") or "UNSET").upper()
        title = f"{span.get('name')} · span {sid}" + (f" · {span.get('status_message')}" if span.get("status_message") else "")
        label = (f"<span class=\"kind\" style=\"background:{_KIND_COLOURS[kind]}\">{kind}</span>"
                 + ("<span class=\"flag\">▶ failure</span> " if is_hl else "")
                 + ("<span class=\"errmark\">ERROR</span> " if is_err else "")
                 + _e(span.get("name"))
                 + (f" <span class=\"muted\">({_e(extra)})</span>" if extra else ""))
        start, end = _span_times(span)
        if t0 and start:
            left, width = bar_geometry(start, end or start, t0, total_ms)
            track = (f"<div class=\"track\"><div class=\"bar{' err' if is_err else ''}\" "
                     f"style=\"left:{left}%;width:{width}%;background:{_KIND_COLOURS[kind]}\"></div></div>")
        else:
            track = "<div class=\"notime\">no timing recorded</div>"
        dur = _float(span.get("duration_ms"))
        if dur is None and start and end:
            dur = (end - start).total_seconds() * 1000
        rows.append(f"<div class=\"{classes}\" data-span-id=\"{_e(sid)}\" title=\"{_e(title)}\">"
                    f"<div class=\"label\" style=\"padding-left:{indent}px\">{label}</div>{track}"
                    f"<div class=\"st st-{_e(status.lower())}\">{_e(status)}</div>"
                    f"<div class=\"dur\">{_e(_fmt_ms(dur))}</div></div>\n")
        if is_err and span.get("status_message"):
            rows.append(f"<div class=\"row{' hl' if is_hl else ''}\"><div class=\"label muted msg\" "
                        f"style=\"padding-left:{indent + 14}px\">↳ {_e(span.get('status_message'))}</div></div>\n")
    rows.append("</div>\n")
    return "".join(rows)


def _kind(span: Mapping[str, Any]) -> str:
    kind = str(span.get("span_kind") or "UNKNOWN").upper()
    return kind if kind in _KIND_COLOURS else "UNKNOWN"
