"""What a gate run reports: the per-failure-mode matrix, the failing lines, JSON records and JUnit XML.

Pure functions of the results (the CLI prints or writes what they return).
Failing cases are ordered regressions first (passed last time, fail now), then
the other failures, each in file order.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from tracesieve.collector.gate import CaseResult

MATRIX_COLUMNS = ("failure_mode", "cases", "passed", "failed")
MESSAGE_CHARS = 1000  # a JUnit failure message longer than this is cut (the element text has every reason)
_NOT_XML = re.compile(r"[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """Text with the characters XML 1.0 cannot carry (control bytes from an agent's stderr) replaced."""
    return _NOT_XML.sub("\ufffd", text)


def mode_matrix(results: Sequence[CaseResult]) -> list[list[Any]]:
    """One row per failure_mode that has cases (first-seen order), then a ``total`` row."""
    rows: dict[str, list[int]] = {}
    for r in results:
        row = rows.setdefault(r.failure_mode, [0, 0, 0])
        row[0] += 1
        row[1 if r.passed else 2] += 1
    total = [sum(v[i] for v in rows.values()) for i in range(3)]
    return [[mode, *counts] for mode, counts in rows.items()] + [["total", *total]]


def matrix_lines(results: Sequence[CaseResult]) -> list[str]:
    """The matrix as aligned text: a header, one line per failure_mode, the total."""
    rows = [list(MATRIX_COLUMNS)] + [[str(v) for v in row] for row in mode_matrix(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(MATRIX_COLUMNS))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


def failing(results: Sequence[CaseResult]) -> list[CaseResult]:
    """The failing cases, regressions first."""
    bad = [r for r in results if not r.passed]
    return [r for r in bad if r.regressed] + [r for r in bad if not r.regressed]


def failure_line(r: CaseResult) -> str:
    """``REGRESSED TS-0001 (tool_argument): reason; reason`` on one line."""
    label = "REGRESSED" if r.regressed else "FAILED"
    since = " (passed last time)" if r.regressed else ""
    return f"{label} {r.case_id} ({r.failure_mode}){since}: {'; '.join(r.reasons)}"


def summary(results: Sequence[CaseResult]) -> str:
    bad = failing(results)
    text = f"gate: {len(results) - len(bad)} of {len(results)} cases passed"
    regressed = [r.case_id for r in bad if r.regressed]
    if regressed:
        text += f"; regressed: {', '.join(regressed)}"
    others = [r.case_id for r in bad if not r.regressed]
    if others:
        text += f"; failing: {', '.join(others)}"
    return text


def json_records(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """One object per case (file order) with each run's outcome."""
    return [{
        "case_id": r.case_id, "failure_mode": r.failure_mode, "result": "passed" if r.passed else "failed",
        "previous": r.previous, "regressed": r.regressed, "regressed_count": r.regressed_count,
        "runs": len(r.runs), "traces": r.traces, "reasons": r.reasons, "seconds": round(r.seconds, 3),
        "run_results": [{"run": x.run, "result": "passed" if x.passed else "failed", "exit_code": x.exit_code,
                         "seconds": round(x.seconds, 3), "traces": x.traces, "reasons": x.reasons}
                        for x in r.runs],
    } for r in results]


def junit_xml(results: Sequence[CaseResult], seconds: float, name: str = "tracesieve gate") -> str:
    """JUnit XML: one testsuite, one testcase per case, a ``<failure>`` on each failing one."""
    bad = failing(results)
    suites = ET.Element("testsuites", name=name, tests=str(len(results)), failures=str(len(bad)), errors="0",
                        time=f"{seconds:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(results)), failures=str(len(bad)),
                          errors="0", skipped="0", time=f"{seconds:.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", name=r.case_id, classname=f"tracesieve.{r.failure_mode}",
                             time=f"{r.seconds:.3f}")
        if not r.passed:
            message = ("regressed (passed last time): " if r.regressed else "") + "; ".join(r.reasons)
            if len(message) > MESSAGE_CHARS:
                message = message[:MESSAGE_CHARS - 1] + "…"
            failure = ET.SubElement(case, "failure", message=_xml_text(message),
                                    type="regression" if r.regressed else "failure")
            failure.text = _xml_text("\n".join(r.reasons))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
