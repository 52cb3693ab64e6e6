"""The HTML review page behind ``tracesieve report --out FILE.html``.

:func:`render_report` turns a plain dict (built by the store's query surface) into
one self-contained HTML5 document: inline CSS, no external resource, readable
without JavaScript (one small inline script adds a filter bar; a Content-Security-
Policy allows that script by hash and nothing else, so nothing on the page can
load or run anything else). The filters also read the query string, so
``review.html?severity=P0&status=new`` opens filtered. Every value that comes from the store is escaped:
span names, inputs and answers are user data.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tracesieve.collector.shown_text import printable
from tracesieve.collector.waterfall import parse_time, render_waterfall
from tracesieve.storage.schema import CANDIDATE_STATUSES, FAILURE_MODES, SEVERITIES

#: Statuses whose candidates still wait for a reviewer: the page shows their promote command.
REVIEWABLE_STATUSES = frozenset({"new", "duplicate"})


_CSS = """
:root{--fg:#1d232b;--muted:#5f6b7a;--line:#dde2e8;--bg:#f6f7f9;--card:#fff;--err:#d32f2f;--hl:#fff4c2}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d232b;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
header .meta{color:#b9c2cc;font-size:12px}
.counts{display:flex;flex-wrap:wrap;gap:10px;margin-top:12px}
.count{background:#2c3540;border-radius:6px;padding:6px 12px}
.count b{font-size:18px;display:block}
main{padding:20px 28px;max-width:1500px}
h2{font-size:18px;margin:26px 0 10px}
h3{font-size:14px;margin:16px 0 6px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
table.matrix{border-collapse:collapse;background:var(--card)}
table.matrix th,table.matrix td{border:1px solid var(--line);padding:5px 12px;text-align:right}
table.matrix th:first-child,table.matrix td:first-child{text-align:left}
table.matrix td.zero{color:#c2c8cf}
table.matrix tr.total td,table.matrix tr.total th{font-weight:600;background:#eef1f4}
.matrices{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
section.cand{background:var(--card);border:1px solid var(--line);border-left:6px solid #9aa3ad;border-radius:6px;margin:18px 0;padding:14px 18px}
section.cand.sev-P0{border-left-color:#b71c1c}section.cand.sev-P1{border-left-color:#ef6c00}
section.cand.sev-P2{border-left-color:#f9a825}section.cand.sev-P3{border-left-color:#78909c}
section.cand h2{margin:0 0 8px;font-size:17px}
.badge{display:inline-block;border-radius:4px;padding:1px 7px;font-size:12px;font-weight:600;background:#e8ecf0;margin-right:4px}
.badge.P0{background:#b71c1c;color:#fff}.badge.P1{background:#ef6c00;color:#fff}
.badge.P2{background:#f9a825}.badge.P3{background:#cfd8dc}
.badge.st-new{background:#e3f2fd}.badge.st-duplicate{background:#ede7f6}
.badge.st-promoted{background:#e8f5e9}.badge.st-rejected{background:#fbe9e7}
dl.facts{display:flex;flex-wrap:wrap;gap:4px 22px;margin:8px 0;font-size:13px}
dl.facts div{display:flex;gap:6px}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
p.headline{font-size:15px;margin:0 0 8px;color:#2b3440}
.answer{background:#f3f5f7;border-left:3px solid #1f9d8b;padding:6px 10px;white-space:pre-wrap;word-break:break-word}
.seq{margin:8px 0;font-size:13px}
.chip{display:inline-block;background:#e6f4f1;border:1px solid #b7ded6;border-radius:10px;padding:0 8px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.chip.bad{background:#fdecea;border-color:#f3b4ae;color:#b71c1c}
details>summary{cursor:pointer;color:var(--muted);margin:4px 0}
table.queue,table.ctx{border-collapse:collapse;background:var(--card);width:100%;font-size:13px}
table.queue th,table.queue td,table.ctx th,table.ctx td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
table.queue th,table.ctx th{background:#eef1f4;font-weight:600}
table.queue td.num,table.ctx td.num{text-align:right;white-space:nowrap}
table.queue .asked{font-size:12px;margin-top:2px}
table.ctx{margin:4px 0 8px}table.ctx tr.bad td{background:#fdecea}
section.group{margin:10px 0 30px}
h2.grouphead{font-size:18px;margin:30px 0 6px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h2.grouphead .muted{font-size:14px;font-weight:400}
pre{background:#f3f5f7;border:1px solid var(--line);border-radius:4px;padding:8px 10px;overflow:auto;max-height:360px;white-space:pre-wrap;word-break:break-word;margin:4px 0}
.usermsg{background:#f3f5f7;border-left:3px solid #3a6fd8;padding:6px 10px;white-space:pre-wrap;word-break:break-word}
.promote{background:#10161d;color:#d6f5d6;border:0;user-select:all;cursor:text}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
.det{border:1px solid var(--line);border-radius:4px;padding:6px 10px;margin:6px 0}
.det.other{opacity:.75}
.wf{border:1px solid var(--line);border-radius:4px;font-size:12px;background:var(--card)}
.wf .row{display:grid;grid-template-columns:minmax(260px,38%) 1fr 58px 76px;align-items:center;border-top:1px solid #eef0f3;min-height:24px}
.wf .row:first-child{border-top:0}
.wf .row.head{background:#eef1f4;font-weight:600}
.wf .row.hl{background:var(--hl);outline:2px solid #f0b400;outline-offset:-2px}
.wf .label{padding:2px 8px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.wf .kind{display:inline-block;min-width:64px;font-size:10px;font-weight:700;color:#fff;border-radius:3px;padding:0 4px;margin-right:6px;text-align:center}
.wf .track{position:relative;height:16px;margin:0 6px;background:repeating-linear-gradient(90deg,transparent 0,transparent calc(25% - 1px),#eef0f3 calc(25% - 1px),#eef0f3 25%)}
.wf .bar{position:absolute;top:2px;height:12px;border-radius:2px;min-width:2px}
.wf .bar.err{background:var(--err)!important;box-shadow:0 0 0 1px #7f0000}
.wf .dur{text-align:right;padding-right:8px;color:var(--muted)}
.wf .st{font-size:11px;font-weight:600;color:var(--muted)}.wf .st-ok{color:#2f8f4e}.wf .st-error{color:var(--err)}
.wf .row>.msg{grid-column:1/-1}
.wf .errmark{color:var(--err);font-weight:700}
.wf .flag{color:#a66f00;font-weight:700}
.wf .notime{color:var(--muted);font-style:italic;padding-left:8px}
.legend{font-size:12px;color:var(--muted);margin:4px 0}
.legend span{display:inline-block;margin-right:10px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:3px;vertical-align:middle}
.empty{background:var(--card);border:1px dashed var(--line);border-radius:6px;padding:40px;text-align:center;color:var(--muted)}
.muted{color:var(--muted)}
#filters{display:none;gap:10px;align-items:center;margin:10px 0}
#filters.on{display:flex}
"""

# A query-string value no candidate on the page has (?severity=P0 on a page without a P0) gets an option of
# its own: a select cannot take a value it lacks, and falling back to "all" showed every candidate under a
# link that asked for P0 only.
_SCRIPT = """
(function(){var f=document.getElementById('filters');if(!f)return;f.className='on';
var sel=f.querySelectorAll('select');function apply(){var want={},i,j,k;
for(i=0;i<sel.length;i++){want[sel[i].name]=sel[i].value;}
var cs=document.querySelectorAll('section.cand,tr.qrow');for(j=0;j<cs.length;j++){var c=cs[j],ok=true;
for(k in want){if(want[k]&&c.getAttribute('data-'+k)!==want[k])ok=false;}c.style.display=ok?'':'none';}
var gs=document.querySelectorAll('section.group');for(j=0;j<gs.length;j++){var kids=gs[j].querySelectorAll('section.cand'),vis=false;
for(k=0;k<kids.length;k++){if(kids[k].style.display!=='none')vis=true;}gs[j].style.display=vis?'':'none';}}
var q=new URLSearchParams(location.search);for(var i=0;i<sel.length;i++){sel[i].addEventListener('change',apply);
var v=q.get(sel[i].name);if(v!==null){sel[i].value=v;if(sel[i].value!==v){var o=document.createElement('option');
o.value=v;o.textContent=v;sel[i].appendChild(o);sel[i].value=v;}}}apply();})();
"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
_CSP = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
        "img-src 'none'; form-action 'none'; base-uri 'none'")


def render_report(data: Mapping[str, Any]) -> str:
    """Render the review page. Pure: no I/O, no clock, no environment; the same data gives the same text.

    ``data`` (every key optional; missing or NULL values are shown as such)::

        {"generated_at": str,                  # ISO 8601, shown in the header
         "db": str,                            # the store the page was made from
         "store_args": str,                    # --db/--config options naming it, for the promote command
         "total": int, "limit": int,           # candidates in the store with the page's status, and the
             # --limit that kept only the first ``limit`` of them (the page says so when it left some out)
         "candidates": [dict, ...],            # rows as storage.candidates.list_candidates returns them:
             # candidate_id, failure_mode, severity, blast_radius, status, occurrences,
             # first_seen, last_seen, input, context, observed, expected, source (JSON columns parsed;
             # source carries trace_id and span_ids), duplicate_of, trace_ids, case_id
         "traces": {trace_id: [dict, ...]},    # spans: span_id, parent_span_id, name, span_kind,
             # status_code, status_message, start_time, end_time (ISO str or datetime, may be None),
             # duration_ms, tool_name, llm_model_name
         "detections": {trace_id: [dict, ...]}}  # detection_id, span_id, detector, failure_mode,
             # severity, blast_radius, message, evidence (parsed JSON), detected_at

    Candidates appear in groups of one severity and one failure mode (P0 first, modes in taxonomy
    order), most occurrences first within a group; a review queue at the top lists them all in that
    order. Each shows the trace named by ``source.trace_id`` (else its first ``trace_ids`` entry) as a
    waterfall.
    """
    candidates = [c for c in (data.get("candidates") or []) if isinstance(c, Mapping)]
    traces: Mapping[str, Any] = data.get("traces") or {}
    detections: Mapping[str, Any] = data.get("detections") or {}
    store_args = str(data.get("store_args") or "")
    ordered = sorted(candidates, key=_candidate_order)

    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        f"<title>tracesieve review: {len(candidates)} candidate{'s' if len(candidates) != 1 else ''}</title>\n",
        f"<style>{_CSS}</style>\n</head>\n<body>\n",
        _header(data, candidates, traces, detections),
        "<main>\n",
    ]
    if not candidates:
        parts.append(
            "<div class=\"empty\"><h2>No candidates yet</h2>"
            "<p>Nothing has been detected in this store so far. Point an agent's OTLP exporter at "
            "<code>tracesieve serve</code>; failures found in settled traces show up here as candidates "
            "to review.</p></div>\n")
    else:
        parts.append(_summary(candidates))
        parts.append(_queue(ordered, detections))
        parts.append(_filters(candidates))
        parts.append("<h2>Candidates by severity and failure mode</h2>\n")
        for (severity, mode), group in _groups(ordered):
            parts.append(_group_open(severity, mode, group))
            for cand in group:
                parts.append(_candidate_section(cand, traces, detections, store_args))
            parts.append("</section>\n")
    parts.append(f"</main>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    return "".join(parts)


# --- pieces -------------------------------------------------------------------------------------

def _e(value: Any, empty: str = "—") -> str:
    """Escaped text of a value (quotes included, so it is safe in attributes too; control characters shown
    as ``\\x1b``, as the CLI shows them)."""
    if value is None or value == "":
        return empty
    if isinstance(value, (dt.datetime, dt.date)):
        value = value.isoformat()
    return html.escape(printable(str(value)), quote=True)


def _pretty(value: Any) -> str:
    """A value as escaped, indented JSON for a ``<pre>``."""
    if isinstance(value, str):
        return html.escape(printable(value))
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return html.escape(printable(text))


def _severity_rank(severity: Any) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _mode_rank(mode: Any) -> int:
    return FAILURE_MODES.index(mode) if mode in FAILURE_MODES else len(FAILURE_MODES)


def _candidate_order(cand: Mapping[str, Any]) -> tuple[int, int, str, int, str]:
    mode = cand.get("failure_mode")
    return (_severity_rank(cand.get("severity")), _mode_rank(mode), str(mode or ""),
            -_int(cand.get("occurrences")), str(cand.get("candidate_id") or ""))


def _groups(ordered: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[str, str], list[Mapping[str, Any]]]]:
    """Consecutive runs of one (severity, failure mode) in page order."""
    out: list[tuple[tuple[str, str], list[Mapping[str, Any]]]] = []
    for cand in ordered:
        key = (str(cand.get("severity") or ""), str(cand.get("failure_mode") or ""))
        if out and out[-1][0] == key:
            out[-1][1].append(cand)
        else:
            out.append((key, [cand]))
    return out


def _group_anchor(severity: str, mode: str) -> str:
    return "g-" + _e(f"{severity or 'none'}-{mode or 'none'}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _group_open(severity: str, mode: str, group: Sequence[Mapping[str, Any]]) -> str:
    sev_class = severity if severity in SEVERITIES else "unknown"
    occurrences = sum(_int(c.get("occurrences")) for c in group)
    waiting = sum(1 for c in group if str(c.get("status")) in REVIEWABLE_STATUSES)
    return (f"<section class=\"group sev-{sev_class}\" id=\"{_group_anchor(severity, mode)}\">\n"
            f"<h2 class=\"grouphead\"><span class=\"badge {sev_class}\">{_e(severity)}</span> {_e(mode)}"
            f" <span class=\"muted\">· {_plural(len(group), 'candidate')} · {_plural(occurrences, 'occurrence')}"
            f" · {waiting} awaiting review</span></h2>\n")


def _primary_detection(cand: Mapping[str, Any], detections: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The detection that made this candidate: its mode, on one of its source spans when possible."""
    raw_source = cand.get("source")
    source: Mapping[str, Any] = raw_source if isinstance(raw_source, Mapping) else {}
    trace_id = _trace_of(cand)
    dets = [d for d in (detections.get(trace_id) or []) if isinstance(d, Mapping)] if trace_id else []
    mine = [d for d in dets if d.get("failure_mode") == cand.get("failure_mode")]
    spans = {str(s) for s in (source.get("span_ids") or [])}
    on_span = [d for d in mine if str(d.get("span_id")) in spans]
    best = on_span or mine
    return best[0] if best else None


def _trace_of(cand: Mapping[str, Any]) -> str | None:
    raw_source = cand.get("source")
    source: Mapping[str, Any] = raw_source if isinstance(raw_source, Mapping) else {}
    trace_ids = [str(t) for t in (cand.get("trace_ids") or [])]
    raw_trace = source.get("trace_id") or (trace_ids[0] if trace_ids else None)
    return str(raw_trace) if raw_trace else None


def _user_message(cand: Mapping[str, Any]) -> Any:
    value = cand.get("input")
    return value.get("user_message") if isinstance(value, Mapping) else value


def _queue(ordered: Sequence[Mapping[str, Any]], detections: Mapping[str, Any]) -> str:
    """One line per candidate, in page order: what to look at first, with a link to its section."""
    rows = ["<h2>Review queue</h2>\n<table class=\"queue\" id=\"queue\">\n<thead><tr><th>severity</th>"
            "<th>failure mode</th><th>candidate</th><th>seen</th><th>status</th><th>what happened</th></tr></thead>\n<tbody>\n"]
    for cand in ordered:
        severity = str(cand.get("severity") or "")
        sev_class = severity if severity in SEVERITIES else ""
        status = str(cand.get("status") or "")
        det = _primary_detection(cand, detections)
        asked = _user_message(cand)
        rows.append(
            f"<tr class=\"qrow\" data-mode=\"{_e(cand.get('failure_mode'), '')}\" data-severity=\"{_e(severity, '')}\" "
            f"data-status=\"{_e(status, '')}\"><td><span class=\"badge {sev_class}\">{_e(severity)}</span></td>"
            f"<td>{_e(cand.get('failure_mode'))}</td>"
            f"<td><a href=\"#{_anchor(cand.get('candidate_id'))}\"><code>{_e(cand.get('candidate_id'))}</code></a></td>"
            f"<td class=\"num\">{_e(_int(cand.get('occurrences')))}×</td>"
            f"<td><span class=\"badge st-{_e(status, 'unknown')}\">{_e(status)}</span></td>"
            f"<td>{_e(det.get('message') if det else None)}"
            + (f"<div class=\"muted asked\">“{_e(_clip(asked, 140))}”</div>" if asked else "")
            + "</td></tr>\n")
    rows.append("</tbody>\n</table>\n")
    return "".join(rows)


def _clip(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _anchor(candidate_id: Any) -> str:
    return "c-" + _e(candidate_id, "unknown")


def _header(data: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]],
            traces: Mapping[str, Any], detections: Mapping[str, Any]) -> str:
    by_status = {s: 0 for s in CANDIDATE_STATUSES}
    for c in candidates:
        by_status[str(c.get("status"))] = by_status.get(str(c.get("status")), 0) + 1
    occurrences = sum(_int(c.get("occurrences")) for c in candidates)
    n_detections = sum(len(v) for v in detections.values() if isinstance(v, list))
    counts = [("candidates", len(candidates)), ("occurrences", occurrences), ("awaiting review",
              sum(n for s, n in by_status.items() if s in REVIEWABLE_STATUSES)),
              ("traces shown", len(traces)), ("detections shown", n_detections)]
    tiles = "".join(f"<div class=\"count\"><b>{n}</b>{_e(label)}</div>" for label, n in counts)
    total = _int(data.get("total"))
    cut = (f"<div class=\"meta cut\">showing {len(candidates)} of {_plural(total, 'candidate')}: the most severe, "
           f"most recently seen first (--limit {_e(data.get('limit'))}); raise --limit to see every one</div>\n"
           if total > len(candidates) else "")
    return (f"<header>\n<h1>tracesieve review</h1>\n<div class=\"meta\">store <code>{_e(data.get('db'))}</code>"
            f" · generated {_e(_short_time(data.get('generated_at')))}</div>\n{cut}"
            f"<div class=\"counts\">{tiles}</div>\n</header>\n")


def _ordered_values(seen: Iterable[Any], known: Sequence[str]) -> list[str]:
    present = {str(v) for v in seen}
    return [k for k in known if k in present] + sorted(present - set(known))


def _summary(candidates: Sequence[Mapping[str, Any]]) -> str:
    modes = _ordered_values((c.get("failure_mode") for c in candidates), FAILURE_MODES)
    sevs = list(SEVERITIES) + sorted({str(c.get("severity")) for c in candidates} - set(SEVERITIES))
    statuses = list(CANDIDATE_STATUSES) + sorted({str(c.get("status")) for c in candidates} - set(CANDIDATE_STATUSES))

    def cell(n: int) -> str:
        return f"<td class=\"zero\">{n}</td>" if n == 0 else f"<td>{n}</td>"

    def matrix(title: str, cols: Sequence[str]) -> str:
        key = "severity" if title == "severity" else "status"
        rows = [f"<table class=\"matrix\" id=\"matrix-{key}\">\n<caption class=\"muted\">failure mode × {title}"
                "</caption>\n<thead><tr><th>failure mode</th>"
                + "".join(f"<th>{_e(c)}</th>" for c in cols) + "<th>total</th></tr></thead>\n<tbody>\n"]
        for mode in modes:
            mine = [c for c in candidates if str(c.get("failure_mode")) == mode]
            counts = [sum(1 for c in mine if str(c.get(key)) == col) for col in cols]
            rows.append(f"<tr data-mode=\"{_e(mode)}\"><td>{_e(mode)}</td>" + "".join(cell(n) for n in counts)
                        + f"<td>{len(mine)}</td></tr>\n")
        totals = [sum(1 for c in candidates if str(c.get(key)) == col) for col in cols]
        rows.append("<tr class=\"total\"><th>all modes</th>" + "".join(cell(n) for n in totals)
                    + f"<td>{len(candidates)}</td></tr>\n</tbody>\n</table>\n")
        return "".join(rows)

    return ("<h2>Summary</h2>\n<div class=\"matrices\">\n" + matrix("severity", sevs)
            + matrix("status", statuses) + "</div>\n")


def _filters(candidates: Sequence[Mapping[str, Any]]) -> str:
    def select(name: str, values: list[str]) -> str:
        opts = "".join(f"<option value=\"{_e(v)}\">{_e(v)}</option>" for v in values)
        return f"<label>{name} <select name=\"{name}\"><option value=\"\">all</option>{opts}</select></label>"

    modes = _ordered_values((c.get("failure_mode") for c in candidates), FAILURE_MODES)
    sevs = _ordered_values((c.get("severity") for c in candidates), SEVERITIES)
    statuses = _ordered_values((c.get("status") for c in candidates), CANDIDATE_STATUSES)
    return (f"<div id=\"filters\">{select('mode', modes)}{select('severity', sevs)}"
            f"{select('status', statuses)}</div>\n")


def _candidate_section(cand: Mapping[str, Any], traces: Mapping[str, Any], detections: Mapping[str, Any],
                       store_args: str = "") -> str:
    cid = cand.get("candidate_id")
    status = str(cand.get("status") or "")
    severity = str(cand.get("severity") or "")
    mode = str(cand.get("failure_mode") or "")
    raw_source = cand.get("source")
    source: Mapping[str, Any] = raw_source if isinstance(raw_source, Mapping) else {}
    trace_ids = [str(t) for t in (cand.get("trace_ids") or [])]
    trace_id = _trace_of(cand)
    sev_class = severity if severity in SEVERITIES else "unknown"
    st_class = status if status in CANDIDATE_STATUSES else "unknown"
    primary = _primary_detection(cand, detections)

    out = [f"<section class=\"cand sev-{sev_class}\" id=\"{_anchor(cid)}\" data-mode=\"{_e(mode, '')}\" "
           f"data-severity=\"{_e(severity, '')}\" data-status=\"{_e(status, '')}\">\n",
           f"<h2><span class=\"badge {sev_class}\">{_e(severity)}</span>"
           f"<span class=\"badge st-{st_class}\">{_e(status)}</span> {_e(mode)} "
           f"<code>{_e(cid)}</code></h2>\n"]
    if primary is not None:
        out.append(f"<p class=\"headline\">{_e(primary.get('message'))}</p>\n")
    facts = [
        ("blast radius", _e(cand.get("blast_radius"))),
        ("occurrences", _e(cand.get("occurrences"))),
        ("first seen", _e(_short_time(cand.get("first_seen")))),
        ("last seen", _e(_short_time(cand.get("last_seen")))),
    ]
    for label, key in (("service", "service"), ("model", "model"), ("prompt version", "prompt_version"),
                       ("agent", "agent_name"), ("session", "session_id")):
        if source.get(key):
            facts.append((label, _e(source.get(key))))
    facts.append(("source trace", f"<code>{_e(trace_id)}</code>"))
    if len(trace_ids) > 1:
        facts.append(("all traces", " ".join(f"<code>{_e(t)}</code>" for t in trace_ids)))
    if cand.get("duplicate_of"):
        dup = cand.get("duplicate_of")
        facts.append(("duplicate of", f"<a href=\"#{_anchor(dup)}\"><code>{_e(dup)}</code></a>"))
    if cand.get("case_id"):
        facts.append(("case", f"<code>{_e(cand.get('case_id'))}</code>"))
    for key in ("reviewed_by", "review_reason"):
        if cand.get(key):
            facts.append((key.replace("_", " "), _e(cand.get(key))))
    out.append("<dl class=\"facts\">" + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
               + "</dl>\n")

    if status in REVIEWABLE_STATUSES:
        out.append("<h3>Promote</h3>\n<pre class=\"promote\" title=\"click once to select the whole command\">"
                   f"tracesieve promote {_e(cid)} --cases cases.yaml --owner YOU"
                   f"{' ' + _e(store_args) if store_args else ''}</pre>\n")

    out.append(_input_block(cand.get("input")))
    out.append("<div class=\"grid2\">\n<div><h3>Observed</h3>\n" + _observed_block(cand.get("observed"), cand.get("context"))
               + "</div>\n<div><h3>Expected (draft)</h3>\n<pre>" + _pretty(cand.get("expected")) + "</pre></div>\n</div>\n")

    trace_dets = [d for d in (detections.get(trace_id) or []) if isinstance(d, Mapping)] if trace_id else []
    mine = [d for d in trace_dets if d.get("failure_mode") == mode] or trace_dets
    flagged = {str(s) for s in (source.get("span_ids") or [])} | {str(d.get("span_id")) for d in mine if d.get("span_id")}
    out.append("<h3>Trace waterfall</h3>\n")
    spans = traces.get(trace_id) if trace_id else None
    if not spans:
        out.append(f"<p class=\"muted\">The spans of trace <code>{_e(trace_id)}</code> are not in this report "
                   "(trace not found in the store).</p>\n")
    else:
        out.append(render_waterfall([s for s in spans if isinstance(s, Mapping)], flagged))
    out.append(_detections_block(trace_dets, mine))
    out.append(_context_block(cand.get("context")))
    out.append("</section>\n")
    return "".join(out)


def _short_time(value: Any) -> Any:
    """An ISO timestamp to the second ("2026-11-22 00:52:26 UTC"); anything else unchanged."""
    ts = parse_time(value)
    if ts is None:
        return value
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _input_block(value: Any) -> str:
    out = ["<h3>User input</h3>\n"]
    if isinstance(value, Mapping):
        msg = value.get("user_message")
        if msg:
            out.append(f"<div class=\"usermsg\">{_e(msg)}</div>\n")
        rest = {k: v for k, v in value.items() if k != "user_message" and v not in (None, "", [], {})}
        if rest:
            out.append(f"<details><summary>{_e(', '.join(sorted(rest)))}</summary>\n<pre>{_pretty(rest)}</pre></details>\n")
        if not msg and not rest:
            out.append("<p class=\"muted\">no input captured</p>\n")
    elif value in (None, ""):
        out.append("<p class=\"muted\">no input captured</p>\n")
    else:
        out.append(f"<pre>{_pretty(value)}</pre>\n")
    return "".join(out)


def _observed_block(value: Any, context: Any = None) -> str:
    """The final answer and the tool sequence up front; the whole record folded away below them."""
    if not isinstance(value, Mapping) or not (value.get("final_answer") or value.get("tool_sequence")):
        return f"<pre>{_pretty(value)}</pre>\n"
    out = []
    if value.get("final_answer"):
        out.append(f"<div class=\"answer\">{_e(value.get('final_answer'))}</div>\n")
    else:
        out.append("<p class=\"muted\">no final answer</p>\n")
    sequence = value.get("tool_sequence")
    if isinstance(sequence, list) and sequence:
        failed = set()
        if isinstance(context, Mapping):
            for call in context.get("tool_calls") or []:
                if isinstance(call, Mapping) and str(call.get("status") or "").upper() == "ERROR":
                    failed.add(str(call.get("name")))
        chips = " → ".join(f"<span class=\"chip{' bad' if str(t) in failed else ''}\">{_e(t)}</span>" for t in sequence)
        out.append(f"<div class=\"seq\"><span class=\"muted\">tools called:</span> {chips}</div>\n")
    rest = {k: v for k, v in value.items() if k != "final_answer"}
    if rest:
        out.append(f"<details><summary>full observed record ({_e(', '.join(sorted(rest)))})</summary>\n"
                   f"<pre>{_pretty(rest)}</pre></details>\n")
    return "".join(out)


def _context_block(value: Any) -> str:
    """What the agent had to work with: retrieved documents and tool calls, then the raw record."""
    if not value:
        return ""
    out = ["<h3>Context</h3>\n"]
    if isinstance(value, Mapping):
        docs = [d for d in (value.get("documents") or []) if isinstance(d, Mapping)]
        if docs:
            out.append("<table class=\"ctx\"><thead><tr><th>retrieved document</th><th>score</th><th>content</th></tr>"
                       "</thead><tbody>" + "".join(
                           f"<tr><td><code>{_e(d.get('id'))}</code></td><td class=\"num\">{_e(d.get('score'))}</td>"
                           f"<td>{_e(_clip(d.get('content') or '', 300))}</td></tr>" for d in docs)
                       + "</tbody></table>\n")
        elif "documents" in value:
            out.append("<p class=\"muted\">no documents were retrieved</p>\n")
        calls = [c for c in (value.get("tool_calls") or []) if isinstance(c, Mapping)]
        if calls:
            rows = []
            for c in calls:
                bad = str(c.get("status") or "").upper() == "ERROR"
                result = c.get("error") if bad else c.get("result")
                row_class = " class=\"bad\"" if bad else ""
                rows.append(f"<tr{row_class}><td><code>{_e(c.get('name'))}</code></td>"
                            f"<td><code>{_e(_clip(c.get('arguments'), 300))}</code></td><td>{_e(c.get('status'))}</td>"
                            f"<td>{_e(_clip(result, 300) if result is not None else None)}</td></tr>")
            out.append("<table class=\"ctx\"><thead><tr><th>tool call</th><th>arguments</th><th>status</th>"
                       "<th>result</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>\n")
    out.append(f"<details><summary>raw context record</summary>\n<pre>{_pretty(value)}</pre></details>\n")
    return "".join(out)


def _detections_block(all_dets: Sequence[Mapping[str, Any]], mine: Sequence[Mapping[str, Any]]) -> str:
    if not all_dets:
        return "<h3>Detections</h3>\n<p class=\"muted\">no detections recorded for this trace</p>\n"
    out = [f"<h3>Detections ({len(all_dets)})</h3>\n"]
    mine_ids = {id(d) for d in mine}
    for d in sorted(all_dets, key=lambda d: (id(d) not in mine_ids, _severity_rank(d.get("severity")))):
        cls = "det" if id(d) in mine_ids else "det other"
        sev = str(d.get("severity") or "")
        out.append(
            f"<div class=\"{cls}\"><span class=\"badge {sev if sev in SEVERITIES else ''}\">{_e(sev)}</span>"
            f"<b>{_e(d.get('failure_mode'))}</b> by <code>{_e(d.get('detector'))}</code> on span "
            f"<code>{_e(d.get('span_id'))}</code> · {_e(d.get('blast_radius'))}"
            f"<div>{_e(d.get('message'))}</div>"
            f"<details{' open' if id(d) in mine_ids else ''}><summary>evidence</summary>"
            f"<pre>{_pretty(d.get('evidence'))}</pre></details></div>\n")
    return "".join(out)
