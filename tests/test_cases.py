"""The failure dataset files: promote (append-only), ids, re-promotion, lint, export records."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tracesieve.collector.cases import (
    bump_regressed_count, export_record, lint_cases, promote_and_mark, promote_case, remove_case,
)
from tracesieve.storage.errors import NotFoundError, UsageError
from tracesieve.storage.schema import FAILURE_MODES

NOW = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.timezone.utc)


def candidate(cid: str = "c0123456789a", mode: str = "tool_argument", **extra: Any) -> dict[str, Any]:
    row = {
        "candidate_id": cid, "detector": "tool_schema", "failure_mode": mode, "severity": "P1",
        "blast_radius": "irreversible_write", "status": "new", "occurrences": 3,
        "trace_ids": ["a" * 32, "b" * 32],
        "input": {"user_message": "Refund order 42 for <EMAIL>", "conversation_history": []},
        "context": {"documents": [], "tool_calls": [{"name": "refund_payment", "arguments": {"order_id": "42"}}]},
        "observed": {"final_answer": "Done."},
        "expected": {"tool_arguments_schema": {"refund_payment": {"type": "object"}},
                     "required_tool_sequence": ["refund_payment"]},
        "source": {"trace_id": "a" * 32, "span_ids": ["1" * 16], "model": "gpt-4o", "prompt_version": "v7",
                   "service": "support-agent"},
        "first_seen": NOW, "last_seen": NOW,
    }
    row.update(extra)
    return row


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


HAND_WRITTEN = """\
# Our failure dataset. Reviewed weekly.
schema_version: 1
failure_modes: [tool_invocation, tool_argument, retrieval_miss, hallucination, format_violation, truncation,
  refusal_overreach, latency_breach, loop, blast_radius_breach, llm_error, negative_feedback]
cases:
# the refund incident of November
- id: TS-0001
  failure_mode: tool_invocation
  severity: P0     # customers were charged twice
  blast_radius: irreversible_write
  status: active
  discovered_at: 2026-11-01T09:00:00Z
  discovered_by: ann
  source: {trace_id: "0000000000000000000000000000000f", span_ids: [], candidate_id: cold, model: null, prompt_version: null}
  input: {user_message: "Refund me", conversation_history: []}
  context: {}
  expected_behavior: {tool_calls_succeed: [refund_payment]}
  remediation:
    - "2026-11-02 ann: retry with idempotency key"
  regressed_count: 0
"""


# ---------------------------------------------------------------------------
# promote


def test_promote_creates_the_dataset_with_the_whole_taxonomy(tmp_path):
    path = tmp_path / "cases.yaml"
    case = promote_case(path, candidate(), owner="ann", now=NOW)
    doc = load(path)
    assert doc["schema_version"] == 1
    assert doc["failure_modes"] == list(FAILURE_MODES)
    assert [c["id"] for c in doc["cases"]] == ["TS-0001"] == [case["id"]]
    assert list(doc["cases"][0]) == ["id", "failure_mode", "severity", "blast_radius", "status", "discovered_at",
                                     "discovered_by", "source", "input", "context", "expected_behavior",
                                     "remediation", "regressed_count"]
    assert case["source"] == {"trace_id": "a" * 32, "span_ids": ["1" * 16], "candidate_id": "c0123456789a",
                              "model": "gpt-4o", "prompt_version": "v7"}
    assert (case["status"], case["remediation"], case["regressed_count"]) == ("active", [], 0)
    assert case["discovered_at"] == "2026-11-21T10:00:00Z"
    assert lint_cases(path) == []


def test_promote_records_a_history_event(tmp_path):
    path = tmp_path / "cases.yaml"
    promote_case(path, candidate(), owner="ann", now=NOW)
    (line,) = (tmp_path / "history.jsonl").read_text().splitlines()
    event = json.loads(line)
    assert (event["at"], event["event"], event["case_id"]) == ("2026-11-21T10:00:00Z", "promoted", "TS-0001")
    assert event["detail"]["candidate_id"] == "c0123456789a"


def test_each_history_event_stays_on_one_line_whatever_line_breaks_its_detail_holds(tmp_path):
    """A removal reason pasted with U+2028 / U+2029 / NEL was written raw: a reader splitting history.jsonl
    into lines (str.splitlines, most JSON Lines readers) saw half an event."""
    path = tmp_path / "cases.yaml"
    promote_case(path, candidate(), owner="ann\u2028bob", now=NOW)
    promote_case(path, candidate("c0123456789b"), owner="ann\x85\u2029", now=NOW)
    lines = (tmp_path / "history.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == ["TS-0001", "TS-0002"]
    assert lint_cases(path) == []


def test_an_event_appended_to_a_history_without_a_final_newline_starts_its_own_line(tmp_path):
    """A history.jsonl saved without its last newline (an editor, a merge) passed lint, then the next
    promote or gate glued its event onto that line: lint failed and every later gate refused to run."""
    path = tmp_path / "cases.yaml"
    promote_case(path, candidate(), owner="ann", now=NOW)
    history = tmp_path / "history.jsonl"
    history.write_text(history.read_text().rstrip("\n"))
    assert lint_cases(path) == []
    promote_case(path, candidate("c0123456789b"), owner="ann", now=NOW)
    assert [json.loads(line)["case_id"] for line in history.read_text().splitlines()] == ["TS-0001", "TS-0002"]
    assert lint_cases(path) == []


def test_a_dataset_with_crlf_line_ends_keeps_them_through_promote_gate_and_remove(tmp_path):
    """cases.yaml saved with CRLF (a Windows checkout) came back from promote, gate's regressed_count
    and cases remove with every line end rewritten to LF: each write changed every line of the file."""
    path = tmp_path / "cases.yaml"
    crlf = HAND_WRITTEN.replace("\n", "\r\n").encode()
    path.write_bytes(crlf)
    assert bump_regressed_count(path, ["TS-0001"]) == {"TS-0001": 1}
    assert path.read_bytes() == crlf.replace(b"regressed_count: 0", b"regressed_count: 1")
    promote_case(path, candidate(), owner="bob", now=NOW)
    text = path.read_bytes()
    assert text.startswith(crlf.replace(b"regressed_count: 0", b"regressed_count: 1"))
    assert text.count(b"\n") == text.count(b"\r\n")
    remove_case(path, "TS-0002", reason="duplicate of TS-0001", by="ann", now=NOW)
    assert path.read_bytes() == crlf.replace(b"regressed_count: 0", b"regressed_count: 1")
    assert lint_cases(path) == []


def test_a_symlinked_dataset_is_written_through_the_link(tmp_path):
    """cases.yaml as a symlink to a shared dataset was replaced by a regular file on the first promote or
    gate regression: the shared file never got the change and the link was gone."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "cases.yaml").write_text(HAND_WRITTEN)
    link = tmp_path / "cases.yaml"
    link.symlink_to(shared / "cases.yaml")
    bump_regressed_count(link, ["TS-0001"])
    promote_case(link, candidate(), owner="bob", now=NOW)
    assert link.is_symlink()
    assert [c["regressed_count"] for c in load(shared / "cases.yaml")["cases"]] == [1, 0]
    assert lint_cases(link) == []


def test_promote_appends_and_keeps_every_existing_byte(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text(HAND_WRITTEN)
    promote_case(path, candidate(), owner="bob", now=NOW)
    text = path.read_text()
    assert text.startswith(HAND_WRITTEN)
    doc = load(path)
    assert [c["id"] for c in doc["cases"]] == ["TS-0001", "TS-0002"]
    assert doc["cases"][1]["discovered_by"] == "bob"
    assert lint_cases(path) == []


def test_promote_quotes_strings_a_yaml_1_1_reader_would_take_for_booleans_or_numbers(tmp_path):
    """A user message `no` was written bare: PyYAML (YAML 1.1), the usual reader of a CI's YAML, read it
    as false, `on` as true and `1:20` as 80; the file is for every reader, not only ours."""
    import yaml

    words = ["no", "Yes", "on", "OFF", "1:20", "1_000", "0b101", "y"]
    path = tmp_path / "cases.yaml"
    promote_case(path, candidate(input={"user_message": "no", "conversation_history": words},
                                 expected={"must_not": words}), owner="ann", now=NOW)
    (case,) = yaml.safe_load(path.read_text())["cases"]
    assert case["input"] == {"user_message": "no", "conversation_history": words}
    assert case["expected_behavior"] == {"must_not": words}
    assert load(path)["cases"][0]["input"]["conversation_history"] == words
    assert lint_cases(path) == []


def test_promote_inserts_before_the_next_key_when_cases_is_not_last(tmp_path):
    path = tmp_path / "cases.yaml"
    body = HAND_WRITTEN.split("cases:\n")
    original = "cases:\n" + body[1] + "\n# taxonomy below\n" + body[0]
    path.write_text(original)
    promote_case(path, candidate(), owner="bob", now=NOW)
    new_lines = path.read_text().splitlines()
    old_lines = original.splitlines()
    start = new_lines.index("- id: TS-0002")
    end = start + next(i for i, ln in enumerate(new_lines[start + 1:], 1) if not ln.startswith(" "))
    assert new_lines[:start] + new_lines[end:] == old_lines
    assert new_lines[end:end + 2] == ["", "# taxonomy below"]
    assert [c["id"] for c in load(path)["cases"]] == ["TS-0001", "TS-0002"]
    assert lint_cases(path) == []


def test_promote_into_an_empty_case_list(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text("schema_version: 1  # keep\nfailure_modes: [%s]\ncases: []\n" % ", ".join(FAILURE_MODES))
    promote_case(path, candidate(), owner="ann", now=NOW)
    assert "# keep" in path.read_text()
    assert [c["id"] for c in load(path)["cases"]] == ["TS-0001"]


def test_ids_follow_the_highest_used_in_cases_ledger_and_history(tmp_path):
    path = tmp_path / "cases.yaml"
    assert promote_case(path, candidate("c1"), owner="ann", now=NOW)["id"] == "TS-0001"
    assert promote_case(path, candidate("c2"), owner="ann", now=NOW)["id"] == "TS-0002"
    (tmp_path / "cases_removed.yaml").write_text(
        "removed:\n  - {id: TS-0007, reason: duplicate of TS-0001, by: ann, at: 2026-11-20T00:00:00Z}\n")
    assert promote_case(path, candidate("c3"), owner="ann", now=NOW)["id"] == "TS-0008"
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write(json.dumps({"at": "2026-11-20T00:00:00Z", "event": "removed", "case_id": "TS-0012",
                            "detail": "gone"}) + "\n")
    assert promote_case(path, candidate("c4"), owner="ann", now=NOW)["id"] == "TS-0013"


def test_promoting_the_same_candidate_twice_is_refused(tmp_path):
    path = tmp_path / "cases.yaml"
    promote_case(path, candidate(), owner="ann", now=NOW)
    before = path.read_text()
    with pytest.raises(UsageError, match="already case TS-0001"):
        promote_case(path, candidate(), owner="bob", now=NOW)
    assert path.read_text() == before
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1


def test_an_explicit_id_is_used_once(tmp_path):
    path = tmp_path / "cases.yaml"
    assert promote_case(path, candidate("c1"), owner="ann", case_id="TS-0100", now=NOW)["id"] == "TS-0100"
    with pytest.raises(UsageError, match="already used"):
        promote_case(path, candidate("c2"), owner="ann", case_id="TS-0100", now=NOW)
    with pytest.raises(UsageError, match="TS-0001"):
        promote_case(path, candidate("c2"), owner="ann", case_id="case-7", now=NOW)
    assert promote_case(path, candidate("c2"), owner="ann", now=NOW)["id"] == "TS-0101"


def test_severity_override_and_bad_severity(tmp_path):
    path = tmp_path / "cases.yaml"
    assert promote_case(path, candidate("c1"), owner="ann", severity="P0", now=NOW)["severity"] == "P0"
    with pytest.raises(UsageError):
        promote_case(path, candidate("c2"), owner="ann", severity="P9", now=NOW)
    with pytest.raises(UsageError):
        promote_case(path, candidate("c3"), owner="", now=NOW)


# ---------------------------------------------------------------------------
# lint


def write_cases(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    return path


def test_lint_is_clean_on_a_hand_written_dataset(tmp_path):
    assert lint_cases(write_cases(tmp_path, HAND_WRITTEN)) == []


def test_lint_reports_duplicate_ids(tmp_path):
    case = HAND_WRITTEN.split("cases:\n")[1]
    problems = lint_cases(write_cases(tmp_path, HAND_WRITTEN + case))
    assert len(problems) == 1
    assert "TS-0001: duplicate id" in problems[0]


def test_lint_reports_a_mode_outside_the_taxonomy(tmp_path):
    problems = lint_cases(write_cases(tmp_path, HAND_WRITTEN.replace(
        "failure_mode: tool_invocation", "failure_mode: vibes")))
    assert problems == ["cases.yaml:7: TS-0001: failure_mode 'vibes' is outside the taxonomy"]


def test_lint_reports_schema_errors(tmp_path):
    text = HAND_WRITTEN.replace("severity: P0", "severity: P7").replace("  regressed_count: 0\n", "")
    problems = lint_cases(write_cases(tmp_path, text))
    assert any("TS-0001: severity: 'P7' is not one of" in p for p in problems)
    assert any("TS-0001: 'regressed_count' is a required property" in p for p in problems)


@pytest.mark.parametrize("version", ["true", "1.0"])
def test_a_schema_version_that_only_equals_1_in_python_is_a_lint_problem(tmp_path, version):
    """``schema_version: true`` and ``1.0`` passed lint (True == 1.0 == 1 in Python); they are a bool and
    a float, not the dataset's schema version, and promote appended to them."""
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN.replace("schema_version: 1", f"schema_version: {version}"))
    lint = run_cli("cases", "lint", str(path))
    assert lint.returncode == 1 and "schema_version must be 1, got " in lint.stdout, lint.stdout + lint.stderr
    db, cid = store_with_candidate(tmp_path)
    promote = run_cli("promote", cid, "--cases", str(path), "--owner", "ann", "--db", str(db))
    assert promote.returncode == 2 and "schema_version" in promote.stderr, promote.stderr


def test_lint_reports_invalid_yaml(tmp_path):
    (problem,) = lint_cases(write_cases(tmp_path, "cases: [\n"))
    assert problem.startswith("cases.yaml: not valid YAML")


def test_files_that_are_not_utf8_are_lint_problems_not_crashes(tmp_path):
    """A byte that is not UTF-8 in cases.yaml, the ledger or history.jsonl ended `cases lint`, `gate`
    and `promote` with `internal error: UnicodeDecodeError` instead of naming the file."""
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN)
    path.write_bytes(HAND_WRITTEN.encode().replace(b"Refund me", b"Refund \xff me"))
    lint = run_cli("cases", "lint", str(path))
    assert lint.returncode == 1, lint.stderr
    assert lint.stdout.startswith("cases.yaml: not UTF-8 text (byte "), lint.stdout
    gate = run_cli("gate", "--cases", str(path), "--", sys.executable, "-c", "pass")
    assert gate.returncode == 2 and gate.stderr.startswith("tracesieve: error: invalid dataset: cases.yaml: not UTF-8")
    db, cid = store_with_candidate(tmp_path)
    promote = run_cli("promote", cid, "--cases", str(path), "--owner", "ann", "--db", str(db))
    assert promote.returncode == 2 and "not UTF-8 text" in promote.stderr and "internal" not in promote.stderr

    path.write_text(HAND_WRITTEN)
    (tmp_path / "cases_removed.yaml").write_bytes(b"removed: [\xff]\n")
    (tmp_path / "history.jsonl").write_bytes(b'{"at": "2026-11-01T09:00:00Z", "event": "promoted", '
                                             b'"case_id": "TS-0001", "detail": {}}\n\xff\n')
    assert lint_cases(path) == ["cases_removed.yaml: not UTF-8 text (byte 10)", "history.jsonl:2: not UTF-8 text"]


def test_lint_reports_a_promoted_case_missing_without_a_ledger_entry(tmp_path):
    path = tmp_path / "cases.yaml"
    promote_case(path, candidate("c1"), owner="ann", now=NOW)
    promote_case(path, candidate("c2"), owner="ann", now=NOW)
    doc = load(path)
    doc["cases"] = doc["cases"][:1]
    YAML(typ="safe").dump(doc, path)
    (problem,) = lint_cases(path)
    assert problem == ("history.jsonl:2: TS-0002: promoted but missing from cases.yaml "
                       "with no entry in cases_removed.yaml")
    (tmp_path / "cases_removed.yaml").write_text(
        "removed:\n  - {id: TS-0002, reason: flaky upstream, by: ann, at: 2026-11-22T00:00:00Z}\n")
    assert lint_cases(path) == []


def test_a_ledger_with_nothing_under_removed_yet_is_empty_not_a_lint_problem(tmp_path):
    """A hand-started ledger ``removed:`` (nothing under it yet) failed lint with "expected a mapping with
    a list under 'removed'", though `cases remove` appends to it and an empty ``cases:`` passes; a
    misspelt key is still reported."""
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN)
    ledger = tmp_path / "cases_removed.yaml"
    ledger.write_text("# cases taken out of the dataset, with why\nremoved:\n")
    lint = run_cli("cases", "lint", str(path))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    ledger.write_text("removd:\n")
    assert lint_cases(path) == ["cases_removed.yaml: expected a mapping with a list under 'removed'"]


def test_lint_reports_an_incomplete_ledger_entry(tmp_path):
    path = write_cases(tmp_path, HAND_WRITTEN)
    (tmp_path / "cases_removed.yaml").write_text("removed:\n  - {id: TS-0003, by: ann}\n")
    (problem,) = lint_cases(path)
    assert "TS-0003: missing reason, at" in problem


def test_lint_reports_ledger_fields_of_the_wrong_type(tmp_path):
    """A ledger entry is {id, reason, by, at} like a case's own fields: `at: yesterday`, `at: 5`, an
    id that is no case id and a list for a reason passed lint (only missing fields were reported)."""
    path = write_cases(tmp_path, HAND_WRITTEN)
    (tmp_path / "cases_removed.yaml").write_text(
        "removed:\n"
        "  - {id: TS-0003, reason: dup, by: ann, at: yesterday}\n"
        "  - {id: TS-0004, reason: dup, by: ann, at: 5}\n"
        "  - {id: 9, reason: dup, by: ann, at: 2026-11-22T00:00:00Z}\n"
        "  - {id: TS-0005, reason: [dup], by: ann, at: 2026-11-22T00:00:00Z}\n"
        "  - {id: TS-0006, reason: dup, by: ann, at: 2026-11-22T00:00:00Z}\n")
    assert lint_cases(path) == [
        "cases_removed.yaml:2: TS-0003: at 'yesterday' is not an ISO 8601 time",
        "cases_removed.yaml:3: TS-0004: at 5 is not an ISO 8601 time",
        "cases_removed.yaml:4: 9: id 9 is not a case id (TS-0001, ...)",
        "cases_removed.yaml:5: TS-0005: reason ['dup'] is not text",
    ]


def test_lint_of_a_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        lint_cases(tmp_path / "cases.yaml")


# ---------------------------------------------------------------------------
# export


def test_export_record_has_input_expected_and_metadata():
    rec = export_record(candidate(case_id="TS-0004"))
    assert set(rec) == {"input", "expected", "metadata"}
    assert rec["input"] == {"user_message": "Refund order 42 for <EMAIL>", "conversation_history": []}
    assert rec["expected"]["required_tool_sequence"] == ["refund_payment"]
    meta = rec["metadata"]
    assert (meta["candidate_id"], meta["case_id"], meta["failure_mode"]) == ("c0123456789a", "TS-0004", "tool_argument")
    assert meta["first_seen"] == "2026-11-21T10:00:00Z"
    json.dumps(rec)


def test_export_of_the_dataset_gives_reviewed_expectations_without_a_store(tmp_path):
    """export read only the store's candidates, whose `expected` is the draft: what a reviewer changed in
    cases.yaml never reached Phoenix / Langfuse / Braintrust, and CI (no store) could not export at all."""
    from conftest import run_cli

    path = tmp_path / "cases.yaml"
    promote_case(path, candidate(), owner="ann", now=NOW)
    promote_case(path, candidate("c0123456789b", mode="truncation"), owner="ann", now=NOW)
    text = path.read_text()
    first, second = text.split("- id: TS-0002")
    first = first.replace("required_tool_sequence:", "must_not: [refund twice]\n      required_tool_sequence:", 1)
    path.write_text(first + "- id: TS-0002" + second.replace("status: active", "status: deprecated", 1))
    assert lint_cases(path) == []

    out = run_cli("export", "--cases", str(path), "--format", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["expected"]["must_not"] == ["refund twice"]  # the reviewer's edit, not the draft
    assert row["input"] == {"user_message": "Refund order 42 for <EMAIL>", "conversation_history": []}
    meta = row["metadata"]
    assert (meta["case_id"], meta["candidate_id"], meta["failure_mode"], meta["status"]) == (
        "TS-0001", "c0123456789a", "tool_argument", "active")
    assert meta["discovered_at"] == "2026-11-21T10:00:00Z" and meta["discovered_by"] == "ann"
    assert not list(tmp_path.glob("*.duckdb"))  # no store opened or created

    every = run_cli("export", "--cases", str(path), "--status", "all", cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    assert [json.loads(line)["metadata"]["case_id"] for line in every.stdout.splitlines()] == ["TS-0001", "TS-0002"]
    one = run_cli("export", "--cases", str(path), "--status", "all", "--id", "TS-0002", cwd=tmp_path)
    assert [json.loads(line)["metadata"]["case_id"] for line in one.stdout.splitlines()] == ["TS-0002"]

    for args in (("--id", "TS-0002"), ("--id", "TS-0009"), ("--status", "new")):
        refused = run_cli("export", "--cases", str(path), *args, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, (args, refused.stderr)
    missing = run_cli("export", "--cases", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    path.write_text(path.read_text().replace("failure_mode: truncation", "failure_mode: vibes"))
    invalid = run_cli("export", "--cases", str(path), cwd=tmp_path)
    assert invalid.returncode == 2 and "invalid dataset" in invalid.stderr and invalid.stderr.count("\n") == 1


# --------------------------------------------------------------------------- the CLI, as a real subprocess


def test_cases_lint_command_exit_codes(tmp_path):
    from conftest import run_cli

    clean = write_cases(tmp_path, HAND_WRITTEN)
    ok = run_cli("cases", "lint", str(clean))
    assert ok.returncode == 0 and ok.stdout.startswith("ok")

    clean.write_text(HAND_WRITTEN.replace("failure_mode: tool_invocation", "failure_mode: vibes"))
    bad = run_cli("cases", "lint", str(clean))
    assert bad.returncode == 1
    assert "failure_mode 'vibes' is outside the taxonomy" in bad.stdout
    assert "1 problem" in bad.stderr

    missing = run_cli("cases", "lint", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("tracesieve: error:")
    assert missing.stderr.count("\n") == 1


def _promote_in_a_process(path: str, cid: str) -> str:
    return promote_case(path, candidate(cid), "ann", now=NOW)["id"]


def test_promotions_running_at_once_each_get_their_own_case(tmp_path):
    """Each promote reads cases.yaml, picks the next id and replaces the file: without a lock, four
    at once wrote TS-0001 three times and the file kept two cases (a black-box run)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path = str(tmp_path / "cases.yaml")
    cids = [f"c{i:011x}" for i in range(12)]
    with ProcessPoolExecutor(6, mp_context=multiprocessing.get_context("fork")) as pool:
        ids = list(pool.map(_promote_in_a_process, [path] * len(cids), cids))
    assert sorted(ids) == [f"TS-{i:04d}" for i in range(1, 13)]
    cases = load(Path(path))["cases"]
    assert sorted(c["source"]["candidate_id"] for c in cases) == sorted(cids)
    assert lint_cases(path) == []


def test_a_promotion_the_store_refuses_leaves_the_dataset_as_it_was(tmp_path):
    """promote appends the case, then the store marks the candidate; another reviewer may have rejected
    it since promote read it: the store refuses, and the case must not stay in cases.yaml."""
    path = write_cases(tmp_path, HAND_WRITTEN)
    promote_case(path, candidate("c000000000aa"), owner="ann", now=NOW)
    before = {p.name: p.read_bytes() for p in (path, tmp_path / "history.jsonl")}

    def refused(case):
        raise UsageError("candidate c000000000bb was rejected meanwhile; it cannot be promoted")

    with pytest.raises(UsageError, match="rejected meanwhile"):
        promote_and_mark(path, candidate("c000000000bb"), "bob", refused)
    assert {p.name: p.read_bytes() for p in (path, tmp_path / "history.jsonl")} == before
    marked = []
    case = promote_and_mark(path, candidate("c000000000bb"), "bob", marked.append)
    assert marked == [case] and case["source"]["candidate_id"] == "c000000000bb"
    assert lint_cases(path) == []


# --------------------------------------------------------------------------- file modes


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_promote_creates_cases_yaml_with_the_default_mode_like_history(tmp_path, umask_027):
    """The temp file + rename left cases.yaml at 0600 whatever the umask: a CI job under another user
    could not read the dataset it gates on."""
    path = tmp_path / "cases.yaml"
    promote_case(path, candidate(), owner="ann", now=NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "history.jsonl").stat().st_mode) == 0o640


def test_promote_and_gate_keep_the_mode_of_an_existing_dataset(tmp_path, umask_027):
    path = write_cases(tmp_path, HAND_WRITTEN)
    path.chmod(0o664)
    promote_case(path, candidate(), owner="bob", now=NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    path.chmod(0o604)
    assert bump_regressed_count(path, ["TS-0001"]) == {"TS-0001": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o604


# --------------------------------------------------------------------------- cases remove


def test_cases_remove_cuts_the_case_and_records_it_in_the_ledger_and_history(tmp_path):
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN)
    promote_case(path, candidate(), owner="bob", now=NOW)
    promote_case(path, candidate("c1"), owner="bob", now=NOW)
    before = path.read_text()
    result = run_cli("cases", "remove", "TS-0002", "--cases", str(path), "--reason", "a duplicate of TS-0003",
                     "--by", "ann")
    assert result.returncode == 0, result.stderr
    after = path.read_text()
    assert after.startswith(HAND_WRITTEN)  # every other case keeps its bytes
    assert [c["id"] for c in load(path)["cases"]] == ["TS-0001", "TS-0003"]
    lines = before.splitlines()
    start = lines.index("- id: TS-0002")
    end = lines.index("- id: TS-0003")
    assert after.splitlines() == lines[:start] + lines[end:]  # exactly the case's lines went
    (entry,) = load(tmp_path / "cases_removed.yaml")["removed"]
    assert (entry["id"], entry["reason"], entry["by"]) == ("TS-0002", "a duplicate of TS-0003", "ann")
    event = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])
    assert (event["event"], event["case_id"], event["detail"]) == (
        "removed", "TS-0002", {"reason": "a duplicate of TS-0003", "by": "ann"})
    assert run_cli("cases", "lint", str(path)).returncode == 0
    assert lint_cases(path) == []
    # without --by, the reviewer is the account, also where $USER is unset (a container, cron, CI)
    no_user = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME")}
    result = subprocess.run([sys.executable, "-m", "tracesieve.collector.cli", "cases", "remove", "TS-0003",
                             "--cases", str(path), "--reason", "retired"], env=no_user, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert load(tmp_path / "cases_removed.yaml")["removed"][-1]["by"] == pwd.getpwuid(os.getuid()).pw_name
    # removed ids are never handed out again
    assert promote_case(path, candidate("c2"), owner="bob", now=NOW)["id"] == "TS-0004"


@pytest.mark.parametrize(("case_id", "reason"), [("TS-0099", "gone"), ("TS-0001", "  ")])
def test_cases_remove_of_an_unknown_id_or_without_a_reason_exits_2_and_changes_nothing(tmp_path, case_id, reason):
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN)
    result = run_cli("cases", "remove", case_id, "--cases", str(path), "--reason", reason, "--by", "ann")
    assert result.returncode == 2
    assert result.stderr.startswith("tracesieve: error:") and result.stderr.count("\n") == 1
    assert path.read_text() == HAND_WRITTEN
    assert not (tmp_path / "cases_removed.yaml").exists() and not (tmp_path / "history.jsonl").exists()


def test_cases_remove_appends_to_an_existing_ledger_keeping_its_bytes(tmp_path):
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN)
    ledger = tmp_path / "cases_removed.yaml"
    old = "# removed cases, never edited\nremoved:\n- id: TS-0000\n  reason: test\n  by: ann\n  at: 2026-10-01T00:00:00Z\n"
    ledger.write_text(old)
    assert run_cli("cases", "remove", "TS-0001", "--cases", str(path), "--reason", "fixed for good",
                   "--by", "ann").returncode == 0
    assert ledger.read_text().startswith(old)
    assert [e["id"] for e in load(ledger)["removed"]] == ["TS-0000", "TS-0001"]
    assert load(path)["cases"] in (None, [])
    assert lint_cases(path) == []


def test_cases_remove_of_a_case_whose_anchor_a_later_case_aliases_keeps_the_later_case_whole(tmp_path):
    """A dataset that shares a block through a YAML anchor (``&shared`` on the removed case, ``*shared`` on
    the next one, as ``yaml.safe_dump`` writes a repeated object): cutting the removed case's lines left a
    dangling alias, and ``cases remove`` died with "internal error: ComposerError" instead of removing it."""
    from conftest import run_cli

    shared = HAND_WRITTEN.replace("  context: {}\n", "  context: &shared {documents: [refund-policy]}\n")
    second = shared[shared.index("- id: TS-0001"):].replace("TS-0001", "TS-0002").replace(
        "context: &shared {documents: [refund-policy]}", "context: *shared")
    path = write_cases(tmp_path, shared + second)
    assert lint_cases(path) == []
    result = run_cli("cases", "remove", "TS-0001", "--cases", str(path), "--reason", "fixed for good", "--by", "ann")
    assert result.returncode == 0, result.stderr
    (left,) = load(path)["cases"]
    assert (left["id"], left["context"]) == ("TS-0002", {"documents": ["refund-policy"]})
    assert [e["id"] for e in load(tmp_path / "cases_removed.yaml")["removed"]] == ["TS-0001"]
    assert lint_cases(path) == []


@pytest.mark.parametrize("value", ["!!int x", "!!float zz", "!!bool maybe", "!!set x", "!!omap x"])
def test_a_value_its_yaml_tag_cannot_hold_is_a_lint_problem_not_an_internal_error(tmp_path, value):
    """``regressed_count: !!int x`` (a hand edit): ruamel's int() raised ValueError (KeyError for a bool,
    AttributeError for a set) through every reader, so `cases lint` exited 2 "internal error: ValueError:
    invalid literal for int()" instead of 1 naming the value and its line; promote, export and gate
    died the same way."""
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN.replace("regressed_count: 0", f"regressed_count: {value}"))
    lint = run_cli("cases", "lint", str(path))
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert f"'x' is not a valid" in lint.stdout or "'zz' is not a valid" in lint.stdout \
        or "'maybe' is not a valid" in lint.stdout, lint.stdout
    assert "line 20" in lint.stdout and "internal error" not in lint.stderr
    db, cid = store_with_candidate(tmp_path)
    for args in (("export", "--format", "jsonl", "--cases", str(path)),
                 ("gate", "--cases", str(path), "--", sys.executable, "-c", "pass"),
                 ("promote", cid, "--cases", str(path), "--owner", "ann", "--db", str(db))):
        refused = run_cli(*args)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "internal error" not in refused.stderr and "line 20" in refused.stderr, refused.stderr


def test_an_impossible_date_is_a_lint_problem_not_an_internal_error(tmp_path):
    """``discovered_at: 2026-02-30T09:00:00Z`` (a hand edit): ruamel's datetime() raised ValueError through
    every reader, so `cases lint` exited 2 "internal error: ValueError: day is out of range for month"
    instead of 1 with the problem, and gate, export and promote died the same way."""
    from conftest import run_cli

    assert "discovered_at: 2026-11-01T09:00:00Z" in HAND_WRITTEN
    path = write_cases(tmp_path, HAND_WRITTEN.replace("2026-11-01T09:00:00Z", "2026-02-30T09:00:00Z"))
    lint = run_cli("cases", "lint", str(path))
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert "'2026-02-30T09:00:00Z' is not a real date or time" in lint.stdout and "line 12" in lint.stdout
    for args in (("export", "--format", "jsonl", "--cases", str(path)),
                 ("gate", "--cases", str(path), "--", sys.executable, "-c", "pass")):
        refused = run_cli(*args)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "internal error" not in refused.stderr and "not a real date" in refused.stderr
    assert path.read_text() == HAND_WRITTEN.replace("2026-11-01T09:00:00Z", "2026-02-30T09:00:00Z")


@pytest.mark.parametrize(("value", "kind"), [("!!binary aGVsbG8=", "!!binary value"), ("!!set {a, b}", "!!set"),
                                           ("!vault secret/refund", "value tagged !vault")])
def test_a_case_value_json_cannot_hold_is_a_lint_problem_not_an_export_crash(tmp_path, value, kind):
    """A tagged value under a key the case schema leaves open (an input's extra key) passed lint; then
    `export --cases` died with "internal error: TypeError: Object of type bytes is not JSON serializable",
    and gate handed the agent the Python repr ("b'hello'") as the input."""
    from conftest import run_cli

    old = 'input: {user_message: "Refund me", conversation_history: []}'
    assert old in HAND_WRITTEN
    path = write_cases(tmp_path, HAND_WRITTEN.replace(old, old[:-1] + f", attachment: {value}}}"))
    lint = run_cli("cases", "lint", str(path))
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert f"TS-0001: input.attachment: a YAML {kind} has no JSON form" in lint.stdout, lint.stdout
    export = run_cli("export", "--format", "jsonl", "--cases", str(path))
    assert export.returncode == 2 and export.stderr.count("\n") == 1, export.stderr
    assert "internal error" not in export.stderr and "input.attachment" in export.stderr


def test_cases_lint_validates_its_config_like_every_command(tmp_path):
    """lint accepted --config and never read it: a missing file or an unknown key exited 0."""
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN)
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: {duckdb: {path: x.duckdb}}\nexporters: {}\n")
    good = tmp_path / "good.yaml"
    good.write_text("storage: {duckdb: {path: x.duckdb}}\n")
    for config, word in ((tmp_path / "missing.yaml", "not found"), (bad, "exporters")):
        result = run_cli("cases", "lint", str(path), "--config", str(config))
        assert result.returncode == 2, result.stdout
        assert result.stderr.startswith("tracesieve: error: config error:") and word in result.stderr
        assert result.stderr.count("\n") == 1
    assert run_cli("cases", "lint", str(path), "--config", str(good)).returncode == 0


def test_cases_lint_reports_what_gate_cannot_score(tmp_path):
    """lint passed a dataset whose expected_behavior key had no scorer, which gate then refused."""
    from conftest import run_cli

    path = write_cases(tmp_path, HAND_WRITTEN.replace("expected_behavior: {tool_calls_succeed: [refund_payment]}",
                                                      "expected_behavior: {finish_reasons_are_not: [length]}"))
    result = run_cli("cases", "lint", str(path))
    assert result.returncode == 1
    assert "TS-0001: expected_behavior.finish_reasons_are_not: no scorer for this key" in result.stdout
    assert "1 problem" in result.stderr
    path.write_text(HAND_WRITTEN.replace("{tool_calls_succeed: [refund_payment]}", "{max_identical_calls: two}"))
    assert "expected_behavior.max_identical_calls: expected a whole number" in run_cli("cases", "lint", str(path)).stdout
    path.write_text(HAND_WRITTEN.replace("status: active", "status: deprecated")
                    .replace("{tool_calls_succeed: [refund_payment]}", "{finish_reasons_are_not: [length]}"))
    assert run_cli("cases", "lint", str(path)).returncode == 0  # gate does not run deprecated cases either


# --------------------------------------------------------------------------- promote through the CLI


def store_with_candidate(tmp_path: Path, mode: str = "tool_argument") -> tuple[Path, str]:
    """A closed store file holding one new candidate, as the trace stage would have left it."""
    from tracesieve.storage.candidates import upsert_candidates
    from tracesieve.storage.schema import Candidate
    from tracesieve.storage.store import open_database

    db = tmp_path / "store.duckdb"
    row = candidate(mode=mode)
    c = Candidate(detector="tool_schema", failure_mode=mode, severity="P1", blast_radius="irreversible_write",
                  input_hash="h" * 16, input=row["input"], context=row["context"], observed=row["observed"],
                  expected=row["expected"], source=row["source"], trace_id="a" * 32)
    con = open_database(str(db))
    con.execute("BEGIN TRANSACTION")
    upsert_candidates(con, [c], NOW)
    con.execute("COMMIT")
    con.close()
    return db, c.candidate_id


@pytest.mark.parametrize(("broken", "problem"), [
    (HAND_WRITTEN.replace("tool_invocation, tool_argument, ", "tool_invocation, "), "failure_modes is missing"),
    (HAND_WRITTEN.replace("failure_mode: tool_invocation", "failure_mode: vibes"), "outside the taxonomy"),
])
def test_promote_refuses_a_dataset_that_fails_lint_and_changes_nothing(tmp_path, broken, problem):
    """promote appended into a dataset lint rejects: a mode missing from failure_modes, a case outside
    the taxonomy; the new case then hid behind a file that could never pass."""
    from conftest import run_cli

    db, cid = store_with_candidate(tmp_path)
    path = write_cases(tmp_path, broken)
    result = run_cli("promote", cid, "--cases", str(path), "--owner", "ann", "--db", str(db))
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1 and "cases lint" in result.stderr and problem in result.stderr
    assert path.read_text() == broken and not (tmp_path / "history.jsonl").exists()
    status = run_cli("candidates", "--format", "json", "--db", str(db))
    assert [r["status"] for r in json.loads(status.stdout)] == ["new"]
    path.write_text(HAND_WRITTEN)
    fixed = run_cli("promote", cid, "--cases", str(path), "--owner", "ann", "--db", str(db))
    assert fixed.returncode == 0, fixed.stderr
    assert lint_cases(path) == []


def test_a_reviewers_own_keys_pass_lint_and_survive_promote_and_gate_but_a_misspelt_field_does_not(tmp_path):
    """A key of the reviewer's own in a case (``ticket``, ``notes``) or beside ``cases`` made the dataset
    fail lint ("Additional properties are not allowed"), and so every later promote and gate exited 2.
    They are people's annotations and are kept; only a key that nearly spells a field is a problem,
    since its value would never be read (an ``expected_behaviour`` the gate never scores)."""
    from conftest import run_cli

    db, cid = store_with_candidate(tmp_path)
    annotated = HAND_WRITTEN.replace("# Our failure dataset.", "owner_team: payments\n# Our failure dataset.").replace(
        "  status: active\n", "  status: active\n  ticket: PAY-1234   # the incident\n  notes: [charged twice]\n")
    path = write_cases(tmp_path, annotated)
    lint = run_cli("cases", "lint", str(path))
    assert lint.returncode == 0, lint.stdout + lint.stderr

    promoted = run_cli("promote", cid, "--cases", str(path), "--owner", "ann", "--db", str(db))
    assert promoted.returncode == 0, promoted.stderr
    assert path.read_text().startswith(annotated)
    case = load(path)["cases"][0]
    assert (case["ticket"], case["notes"]) == ("PAY-1234", ["charged twice"])
    gate = run_cli("gate", "--cases", str(path), "--case", "TS-0001", "--", sys.executable, "-c", "pass")
    assert gate.returncode == 1 and "no trace arrived" in gate.stdout, gate.stdout + gate.stderr

    path.write_text(annotated.replace("  ticket:", "  expected_behaviour: {must_include: [refund]}\n  ticket:"))
    misspelt = run_cli("cases", "lint", str(path))
    assert misspelt.returncode == 1
    assert "TS-0001: unknown key 'expected_behaviour' (did you mean 'expected_behavior'?)" in misspelt.stdout
    path.write_text(annotated.replace("cases:\n", "case:\n", 1))
    top = run_cli("cases", "lint", str(path))
    assert top.returncode == 1 and "unknown key 'case' (did you mean 'cases'?)" in top.stdout, top.stdout


def test_promote_into_a_missing_directory_names_the_directory(tmp_path):
    """The error named the internal temp file (.cases.yaml.abc123) instead of the missing directory."""
    from conftest import run_cli

    db, cid = store_with_candidate(tmp_path)
    missing = tmp_path / "no" / "such"
    result = run_cli("promote", cid, "--cases", str(missing / "cases.yaml"), "--owner", "ann", "--db", str(db))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"no directory {missing} " in result.stderr and ".cases.yaml." not in result.stderr, result.stderr
    status = run_cli("candidates", "--format", "json", "--db", str(db))
    assert [r["status"] for r in json.loads(status.stdout)] == ["new"]


def test_candidates_since_takes_a_duration_or_a_date_of_any_size(tmp_path):
    """``--since 999999999999999999999999h`` ended in "internal error: OverflowError": a window reaching
    further back than any time keeps every candidate."""
    from conftest import run_cli

    db, cid = store_with_candidate(tmp_path)  # last seen at NOW

    def listed(since: str) -> list[str]:
        result = run_cli("candidates", "--since", since, "--format", "json", "--db", str(db))
        assert result.returncode == 0, result.stderr
        return [r["candidate_id"] for r in json.loads(result.stdout)]

    assert listed("999999999999999999999999h") == [cid]
    assert listed((NOW - dt.timedelta(days=1)).isoformat()) == [cid]
    assert listed((NOW + dt.timedelta(days=1)).isoformat()) == []
    assert listed("1s") == []  # NOW is in the past
    bad = run_cli("candidates", "--since", "yesterday", "--db", str(db))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since 'yesterday'" in bad.stderr


def test_candidates_since_counts_back_in_days_and_weeks(tmp_path):
    """``--since 7d`` (how far back a reviewer looks) was refused: durations stopped at hours."""
    from conftest import run_cli

    db, cid = store_with_candidate(tmp_path)  # last seen at NOW, over a day ago

    def listed(since: str) -> list[str]:
        result = run_cli("candidates", "--since", since, "--format", "json", "--db", str(db))
        assert result.returncode == 0, result.stderr
        return [r["candidate_id"] for r in json.loads(result.stdout)]

    assert listed("1d") == [] and listed("23h") == []
    assert listed("5000w") == [cid] and listed("5000w3d12h") == [cid] and listed("35000d") == [cid]
    bad = run_cli("candidates", "--since", "3dd", "--db", str(db))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "7d" in bad.stderr


def test_export_of_an_id_given_twice_writes_its_row_once(tmp_path):
    """`export --id C --id C` wrote C's record twice: an eval tool importing the file got a duplicate item
    (`export --cases` with a case id given twice wrote it once)."""
    from conftest import run_cli

    db, cid = store_with_candidate(tmp_path)
    result = run_cli("export", "--format", "jsonl", "--id", cid, "--id", cid, "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["metadata"]["candidate_id"] for line in result.stdout.splitlines()] == [cid]
