"""``tracesieve gate``: replay the failure dataset against the agent and fail CI when a case fails again.

Order of work (:func:`run_gate`):

1. Check before running anything: the dataset passes the same validation as
   ``tracesieve cases lint``, every ``expected_behavior`` key has a scorer and a
   value of the right shape, the agent command exists. Any problem is a
   :class:`UsageError` (exit 2).
2. Start an embedded collector (free loopback ports, temporary store, the
   user's detectors config) and run the agent once per active case and repeat,
   ``jobs`` at a time. Each run gets the case input as JSON on stdin and (when it fits in
   one environment variable) in ``TRACESIEVE_CASE_INPUT``, the id in ``TRACESIEVE_CASE_ID``,
   and OTel variables (none that turn tracing off) whose ``OTEL_RESOURCE_ATTRIBUTES``
   carry ``tracesieve.case_id=<id>`` and ``tracesieve.run=<n>`` (merged into any the
   caller set). A run ends when the agent exits (what it left holding its output gets a
   short grace); one that outlives ``timeout`` has its whole process group killed.
3. Stop the collector, which judges every pending trace with the detectors.
4. Judge each run on its own: the agent exited 0, a trace arrived, no detection
   of the case's failure_mode, every ``expected_behavior`` scorer holds. A case
   passes when all its runs pass.
5. Record ``passed`` / ``failed`` (and ``flipped``) in history.jsonl and add 1 to
   ``regressed_count`` of each case that passed last time and fails now.

Library code: nothing here prints or exits (the CLI formats results).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import string
import time
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from tracesieve.collector.cases import (
    HISTORY_FILE, append_history, bump_regressed_count, history_events, lint_cases, read_cases,
)
from tracesieve.collector.config import Config, Endpoint
from tracesieve.collector.gate_scorers import expected_problems, score
from tracesieve.collector.server import Collector
from tracesieve.collector.strict_json import strict_json
from tracesieve.processors.detectors import DetectorsProcessor, rule_settings
from tracesieve.processors.pii import PiiProcessor, Sanitizer
from tracesieve.processors.rules import RuleSettings
from tracesieve.storage import store
from tracesieve.storage.errors import NotFoundError, UsageError

CASE_ATTRIBUTE = "tracesieve.case_id"
RUN_ATTRIBUTE = "tracesieve.run"
STDERR_TAIL = 300  # characters of a failing agent's last stderr line kept in the reason
#: The caller's variables that would keep a run's trace from the gate (SDK off, a sampler, another exporter).
TRACING_OFF = frozenset({"OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER"})
INPUT_VARIABLE = "TRACESIEVE_CASE_INPUT"
ENV_STRING_MAX = 128 * 1024  # Linux's MAX_ARG_STRLEN: one NAME=value string (with its NUL) may not be longer
LEFTOVER_GRACE = 5.0  # seconds the processes an exited agent left holding its output get before they are killed
POLL_SECONDS = 0.25  # how often a run's wait looks whether the agent itself has exited


@dataclasses.dataclass
class RunResult:
    """One run of the agent on one case, judged on its own."""

    run: int
    exit_code: int | None  # None: killed at the timeout
    seconds: float
    traces: list[str] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons


@dataclasses.dataclass
class CaseResult:
    case_id: str
    failure_mode: str
    runs: list[RunResult]
    previous: str | None = None  # the last recorded outcome before this gate: passed | failed | None
    #: The case's ``regressed_count`` after this gate: as cases.yaml holds it, plus 1 when this gate is a
    #: regression (``--format json`` shows it for every case, so CI can read a case's record without the file).
    regressed_count: int = 0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs)

    @property
    def regressed(self) -> bool:
        """Passed last time, fails now."""
        return self.previous == "passed" and not self.passed

    @property
    def traces(self) -> list[str]:
        return [t for r in self.runs for t in r.traces]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def reasons(self) -> list[str]:
        """Why it failed: each failing run's reasons, prefixed with the run when there are several."""
        many = len(self.runs) > 1
        return [f"run {r.run}/{len(self.runs)}: {why}" if many else why for r in self.runs for why in r.reasons]


# ---------------------------------------------------------------------------
# before running anything


def load_active_cases(path: str, only: Sequence[str] = (),
                      statuses: Collection[str] = ("active",)) -> list[dict[str, Any]]:
    """The active cases (or those of ``statuses``) of a dataset that passes ``cases lint``, in file order;
    UsageError / NotFoundError otherwise."""
    if not os.path.isfile(path):
        raise NotFoundError(f"no dataset at {path} (promote a candidate with `tracesieve promote` first)")
    problems = lint_cases(path)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"invalid dataset: {problems[0]}{more}; see `tracesieve cases lint {path}`")
    active = [c for c in read_cases(path) if c.get("status") in statuses]  # lint checked they are scorable
    if only:
        known = {str(c["id"]) for c in active}
        missing = [i for i in only if i not in known]
        if missing:
            raise NotFoundError(f"no {'active ' if set(statuses) == {'active'} else ''}case {missing[0]!r} in {path}")
        active = [c for c in active if str(c["id"]) in set(only)]
    return active


def _check_command(command: Sequence[str], workdir: str | None, env: Mapping[str, str]) -> None:
    if not command:
        raise UsageError("give the agent command after --, e.g. tracesieve gate --cases cases.yaml -- python agent.py")
    exe = command[0]
    if exe.startswith("-"):  # a misspelt gate option lands here, the command being everything not parsed
        raise UsageError(f"no such option: {exe} (the agent command goes after --, "
                         "e.g. tracesieve gate --cases cases.yaml -- python agent.py)")
    if os.sep in exe:
        target = os.path.join(workdir or ".", exe)
        if not (os.path.isfile(target) and os.access(target, os.X_OK)):
            raise UsageError(f"agent command {exe} is not an executable file")
    elif shutil.which(exe, path=env.get("PATH", os.defpath)) is None:
        raise UsageError(f"agent command not found on PATH: {exe}")


def _check_results_writable(cases_path: str) -> None:
    """The gate can append to history.jsonl and replace cases.yaml (its regressed counts) when it is done.

    A dataset in a read-only checkout let every agent run, then the gate died on writing the
    history with a bare ``Operation not permitted: history.jsonl`` (exit 2) and printed no result:
    a green run went red and a red one lost its report. It is refused before any agent runs.
    """
    history = Path(cases_path).parent / HISTORY_FILE
    dataset_folder = Path(os.path.realpath(cases_path)).parent  # a symlinked cases.yaml is written through the link
    where = history
    try:
        if history.exists():
            with history.open("ab"):
                pass
        for where in dict.fromkeys([dataset_folder] + ([] if history.exists() else [history.parent])):
            with tempfile.NamedTemporaryFile(dir=where, prefix=".tracesieve-gate-check-"):
                pass
    except OSError as exc:
        raise UsageError(f"cannot record results beside {cases_path} ({where}: {exc.strerror or exc}); the gate "
                         f"appends to {HISTORY_FILE} and updates regressed_count in cases.yaml: run it on a "
                         "writable copy of the dataset folder") from None


# ---------------------------------------------------------------------------
# running


#: Longest key or value (decoded) the JS SDK's env detector takes; past it, it discards the whole variable.
RESOURCE_VALUE_MAX = 255
#: What a pair may hold unencoded: printable ASCII but the separators and the escape character.
_RESOURCE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,=")


def resource_attributes(existing: str | None, case_id: str, run: int | None) -> str:
    """OTEL_RESOURCE_ATTRIBUTES: the caller's pairs (minus ours) followed by the case id and the run number
    (None: no run number, DESIGN's ``tracesieve.case_id=<id>`` exactly when the caller set none).

    The spec has an SDK discard the *whole* variable on one malformed pair (an unencoded ``=`` in a
    value, a bad ``%`` escape, a value over 255 characters), and the JS SDK does: a CI environment's
    ``build.url=https://ci/?job=7`` cost a Node agent the case id, so its trace never counted. The
    caller's pairs are therefore passed on well-formed: a strict pair unchanged, any other re-encoded
    to what the lenient Python SDK reads from it, one no SDK could read (no ``=``, no key, too long) left out.
    """
    ours = {CASE_ATTRIBUTE: case_id, RUN_ATTRIBUTE: "" if run is None else str(run)}
    kept = [pair for pair in map(_well_formed_resource_pair, (existing or "").split(","))
            if pair and pair.split("=", 1)[0] not in ours]
    return ",".join(kept + [f"{k}={v}" for k, v in ours.items() if v])


def _well_formed_resource_pair(pair: str) -> str | None:
    """One ``key=value`` of OTEL_RESOURCE_ATTRIBUTES as every SDK reads it alike, or None to leave it out."""
    key, sep, value = pair.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        return None
    if "=" not in value and _strictly_decodable(key) and _strictly_decodable(value):
        if max(len(urllib.parse.unquote(key)), len(urllib.parse.unquote(value))) > RESOURCE_VALUE_MAX:
            return None
        return f"{key}={value}"
    decoded_value = urllib.parse.unquote(value)  # as the Python SDK reads it: the rest after the first =
    if max(len(key), len(decoded_value)) > RESOURCE_VALUE_MAX:
        return None
    return f"{urllib.parse.quote(key, safe=_RESOURCE_SAFE)}={urllib.parse.quote(decoded_value, safe=_RESOURCE_SAFE)}"


def _strictly_decodable(text: str) -> bool:
    """Whether a percent-decoder that refuses bad escapes (JS's ``decodeURIComponent``) takes ``text``."""
    try:
        urllib.parse.unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(len(part) >= 2 and all(c in string.hexdigits for c in part[:2]) for part in text.split("%")[1:])


def agent_env(base: Mapping[str, str], case: Mapping[str, Any], run: int, endpoint: str,
              protocol: str, repeat: int = 1) -> dict[str, str]:
    """The agent's environment: ``base`` without OTLP exporter settings, plus the gate protocol variables.

    The resource carries the run number only when a case runs more than once (``--repeat``): a trace
    without one counts for every run of its case, which for a single run is the same thing.
    """
    case_id = str(case["id"])
    # nothing goes elsewhere, and every run's trace comes: no exporter, sampler or off switch of the caller's
    env = {k: v for k, v in base.items() if not k.startswith("OTEL_EXPORTER_OTLP_") and k not in TRACING_OFF}
    env.pop(INPUT_VARIABLE, None)
    payload = case_payload(case)
    if len(INPUT_VARIABLE) + 2 + len(payload.encode("utf-8")) <= ENV_STRING_MAX:
        env[INPUT_VARIABLE] = payload  # else the input is on stdin only: exec would refuse the whole run
    env.update({
        "TRACESIEVE_CASE_ID": case_id,
        "TRACESIEVE_RUN": str(run),
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_RESOURCE_ATTRIBUTES": resource_attributes(base.get("OTEL_RESOURCE_ATTRIBUTES"), case_id,
                                                        run if repeat > 1 else None),
    })
    return env


def case_payload(case: Mapping[str, Any]) -> str:
    """The case input as strict JSON, for the agent's stdin and ``TRACESIEVE_CASE_INPUT``.

    YAML's ``.nan`` / ``.inf`` have no JSON spelling: they went out as ``NaN`` / ``Infinity``, which
    a strict parser (Node's ``JSON.parse``, Go's ``encoding/json``) refuses, so the agent failed before
    it ran. They go as ``null``, as ``export`` writes them.
    """
    return strict_json(case.get("input") or {}, default=str)


class _Runner:
    """Runs agent processes, each in its own process group, and kills the groups still alive on close."""

    def __init__(self, command: Sequence[str], workdir: str | None, timeout: float,
                 sanitizer: Sanitizer | None = None) -> None:
        self.command = list(command)
        # the agent's stderr is as full of user data as its spans: redacted before it is reported
        self._sanitizer = sanitizer or Sanitizer()
        self.workdir = workdir
        self.timeout = timeout
        self._live: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def run(self, env: dict[str, str], stdin: str, run: int) -> RunResult:
        started = time.monotonic()
        # the input is UTF-8 JSON whatever the locale; output bytes that are not UTF-8 are replaced, not a crash
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                encoding="utf-8", errors="replace", env=env, cwd=self.workdir, start_new_session=True)
        with self._lock:
            self._live.add(proc)
            closed = self._closed
        if closed:  # the gate is stopping: this run started too late to matter
            self._kill(proc)
        try:
            err = self._communicate(proc, stdin, started + self.timeout)
            if err is None:
                return RunResult(run, None, time.monotonic() - started,
                                 reasons=[f"timed out after {self.timeout:g}s: the agent's process group was killed"])
        finally:
            with self._lock:
                self._live.discard(proc)
        result = RunResult(run, proc.returncode, time.monotonic() - started)
        if proc.returncode != 0:
            # redacted before the cut to STDERR_TAIL, so no half of a value escapes the rules
            tail = [self._sanitizer.redact(line[:65536])[0] for line in (err or "").strip().splitlines()[-1:]]
            code = proc.returncode
            why = f"the agent exited with {code}" if code > 0 else f"the agent was killed by {_signal_name(-code)}"
            result.reasons.append(why + (f" ({tail[0][:STDERR_TAIL]})" if tail else ""))
        return result

    def _communicate(self, proc: subprocess.Popen[str], stdin: str, deadline: float) -> str | None:
        """Feed the agent its input and collect its stderr until it exits; None when it outlived ``deadline``.

        The run ends when the agent exits: processes it started that still hold its output open get
        LEFTOVER_GRACE seconds (never past ``deadline``) to finish, a child flushing its spans, then the
        group is killed. The exit is seen without reaping the agent, so its process group cannot be
        reused meanwhile.
        """
        # communicate() is retried below, and a retried one stops sending input: a thread of its own feeds stdin
        pipe, proc.stdin = proc.stdin, None
        threading.Thread(target=_feed, args=(pipe, stdin), name="gate-stdin", daemon=True).start()
        until = deadline  # then: the agent's group is killed
        exited = False
        while True:
            try:
                return proc.communicate(timeout=min(max(0.0, until - time.monotonic()), POLL_SECONDS))[1] or ""
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if not exited and _exited(proc):
                exited, until = True, min(now + LEFTOVER_GRACE, deadline)
            if now < until:
                continue
            self._kill(proc)  # the agent at its timeout, or what it left behind
            try:
                err = proc.communicate(timeout=10)[1] or ""
            except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipes
                proc.wait()
                err = ""
            return err if exited else None

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        """SIGKILL the run's process group; the thread that owns ``proc`` reaps it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """Kill every run still going (and any that starts from now on). Any thread; idempotent."""
        with self._lock:
            self._closed = True
            live = list(self._live)
        for proc in live:
            self._kill(proc)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _feed(pipe: Any, text: str) -> None:
    """Write the case input to the agent's stdin and close it; an agent that does not read it is no error."""
    try:
        with pipe:
            pipe.write(text)
    except (BrokenPipeError, OSError, ValueError):
        pass


def _exited(proc: subprocess.Popen[str]) -> bool:
    """True once the agent has exited, without reaping it (its pid and process group stay reserved)."""
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: reaping is the only way to look
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped meanwhile
        return True


def run_gate(
    config: Config,
    cases_path: str,
    command: Sequence[str],
    *,
    repeat: int = 1,
    jobs: int = 1,
    only: Sequence[str] = (),
    protocol: str = "grpc",
    timeout: float = 300.0,
    workdir: str | None = None,
    env: Mapping[str, str] | None = None,
) -> list[CaseResult]:
    """Run every active case ``repeat`` times through ``command`` (``jobs`` at once), judge, record history.

    ``env`` is the base environment of the agent (the CLI passes its own; None: this process's). Raises
    UsageError / NotFoundError before running anything when the dataset, the
    expected behaviours or the command are unusable. Results are in file order.
    """
    if repeat < 1 or jobs < 1 or timeout <= 0:
        raise UsageError("--repeat and --jobs must be at least 1, --timeout over 0")
    base_env: Mapping[str, str] = os.environ if env is None else env
    _check_command(command, workdir, base_env)
    cases = load_active_cases(cases_path, only)
    _check_results_writable(cases_path)
    detectors = next((p for p in config.trace_processors if isinstance(p, DetectorsProcessor)), None)
    if detectors is None:  # the gate always judges with the detectors, even if this pipeline left them out
        detectors = DetectorsProcessor()
    settings = rule_settings(detectors.config)
    pii = next((p.sanitizer for p in config.span_processors if isinstance(p, PiiProcessor)), None)
    runner = _Runner(command, workdir, timeout, pii)
    with tempfile.TemporaryDirectory(prefix="tracesieve-gate-") as tmp:
        gate_config = dataclasses.replace(
            config,
            grpc=Endpoint("127.0.0.1", 0),
            http=Endpoint("127.0.0.1", 0),
            bearer_token=None,  # the agent's OTLP headers are removed: the embedded collector asks no credential
            api_key=None,
            db_path=os.path.join(tmp, "gate.duckdb"),
            span_workers=0,  # a gate's volume does not need worker processes
            trace_processors=[detectors],  # candidates are of no use in a throwaway store
            trace_processor_ids=["detectors"],
            lake=None,  # the gate never writes the production store, file or lake
        )
        collector = Collector(gate_config)
        collector.start()
        port = collector.grpc_port if protocol == "grpc" else collector.http_port
        endpoint = f"http://127.0.0.1:{port}"
        outcomes: dict[tuple[str, int], RunResult] = {}
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="gate-run")
        try:
            futures = {
                pool.submit(runner.run, agent_env(base_env, case, n, endpoint, protocol, repeat), case_payload(case), n):
                (str(case["id"]), n)
                for case in cases for n in range(1, repeat + 1)
            }
            for future in concurrent.futures.as_completed(futures):
                outcomes[futures[future]] = future.result()
        except OSError as exc:
            raise UsageError(f"cannot run the agent command {command[0]}: {exc.strerror or exc}") from None
        finally:  # on an error or an interrupt: no new run starts, and the running ones are killed
            pool.shutdown(wait=False, cancel_futures=True)
            runner.close()
            pool.shutdown(wait=True)
            collector.stop(deadline_seconds=60)
        con = store.open_database(gate_config.db_path, read_only=True)
        try:
            results = _judge(con, cases, outcomes, repeat, settings)
        finally:
            con.close()
    _record_history(cases_path, results)
    return results


# ---------------------------------------------------------------------------
# judging


def _judge(con: Any, cases: Sequence[Mapping[str, Any]], outcomes: Mapping[tuple[str, int], RunResult],
           repeat: int, settings: RuleSettings) -> list[CaseResult]:
    traces_of: dict[tuple[str, int], list[str]] = {}  # run 0: traces with the case id but no run number
    for case_id, run, trace_id in con.execute(
            f"SELECT DISTINCT resource_attributes->>'$.{CASE_ATTRIBUTE}', "
            f"resource_attributes->>'$.{RUN_ATTRIBUTE}', trace_id FROM spans "
            f"WHERE resource_attributes->>'$.{CASE_ATTRIBUTE}' IS NOT NULL ORDER BY 3").fetchall():
        n = int(run) if str(run or "").isdigit() else 0
        traces_of.setdefault((str(case_id), n), []).append(str(trace_id))
    all_traces = sorted({t for ts in traces_of.values() for t in ts})
    spans = store.load_traces(con, all_traces)
    detections: dict[str, list[tuple[str, str]]] = {}
    for trace_id, mode, message in con.execute(
            "SELECT trace_id, failure_mode, message FROM detections WHERE trace_id IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY detected_at, detection_id", [all_traces]).fetchall():
        detections.setdefault(str(trace_id), []).append((str(mode), str(message)))

    results = []
    for case in cases:
        case_id, mode = str(case["id"]), str(case.get("failure_mode"))
        expected = case.get("expected_behavior") or {}
        runs = []
        for n in range(1, repeat + 1):
            run = outcomes[(case_id, n)]
            # An agent that builds its resource by hand may carry the case id without the run: such
            # traces cannot be told apart, so they count for every run of the case.
            run.traces = traces_of.get((case_id, n), []) + traces_of.get((case_id, 0), [])
            if not run.traces:
                if run.exit_code is None:
                    runs.append(run)  # killed at the timeout: that is the reason
                    continue
                run.reasons.append("no trace arrived (does the agent export OTLP using the OTEL_* variables, "
                                   "with OTEL_RESOURCE_ATTRIBUTES in its resource?)")
            else:
                again = [msg for t in run.traces for m, msg in detections.get(t, []) if m == mode]
                run.reasons.extend(f"{mode} again: {msg}" for msg in again[:3])
                run_spans = [s for t in run.traces for s in spans.get(t, [])]
                run.reasons.extend(score(expected, run_spans, settings))
            runs.append(run)
        results.append(CaseResult(case_id, mode, runs, regressed_count=int(case.get("regressed_count") or 0)))
    return results


def check_expected(expected: Mapping[str, Any], spans: Sequence[dict[str, Any]],
                   settings: RuleSettings | None = None) -> list[str]:
    """Problems of one run's spans against ``expected_behavior`` (empty: it holds); default detector settings."""
    problems = expected_problems(expected)
    if problems:
        raise UsageError(problems[0])
    return score(expected, spans, settings or rule_settings(None))


# ---------------------------------------------------------------------------
# history


def _record_history(cases_path: str, results: list[CaseResult]) -> None:
    """passed/failed per case, flipped when the outcome changed, and regressed_count + 1 on passed -> failed."""
    last: dict[str, str] = {}
    for ev in history_events(cases_path):
        if ev.get("event") in ("passed", "failed"):
            last[str(ev.get("case_id"))] = str(ev["event"])
    now = dt.datetime.now(dt.timezone.utc)
    for r in results:
        r.previous = last.get(r.case_id)
    regressed = [r.case_id for r in results if r.regressed]
    counts = bump_regressed_count(cases_path, regressed) if regressed else {}
    for r in results:
        outcome = "passed" if r.passed else "failed"
        detail: dict[str, Any] = {"runs": len(r.runs), "traces": r.traces[:20]}
        if r.reasons:
            detail["reasons"] = r.reasons[:10]
        if r.previous is not None and r.previous != outcome:
            flip: dict[str, Any] = {"from": r.previous, "to": outcome}
            if r.case_id in counts:
                r.regressed_count = counts[r.case_id]
                flip["regressed_count"] = counts[r.case_id]
            append_history(cases_path, "flipped", r.case_id, flip, now)
        append_history(cases_path, outcome, r.case_id, detail, now)
