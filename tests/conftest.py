"""Shared fixtures: a real ``tracesieve serve`` subprocess on free loopback ports, and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ports import free_port

TESTDATA = Path(__file__).parent / "testdata"

# A shell that starts the suite in the background (`cmd &` without job control) makes it ignore
# SIGINT, and an ignored signal stays ignored in every child: the CLIs the tests Ctrl-C would not
# notice it. Children of a process that handles SIGINT get the default disposition back at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With TRACESIEVE_NO_SKIPS=1 (``.ci/run`` sets it) a skipped test fails instead.

    A few tests skip on a developer machine that lacks what they drive (Chromium, bash, PostgreSQL,
    the lake extra); CI installs all of it, so a skip there means a test silently stopped running.
    """
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("TRACESIEVE_NO_SKIPS") == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and TRACESIEVE_NO_SKIPS=1 forbids skips: {reason}"


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            input_text: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``tracesieve ARGS`` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tracesieve.collector.cli", *args],
        cwd=cwd, env=full_env, input=input_text, capture_output=True, text=True, timeout=timeout,
    )


class RunningCollector:
    """A ``tracesieve serve`` subprocess; ``stop()`` sends SIGTERM and returns the exit code."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.args = args  # extra `serve` options, e.g. ("--log-format", "json")
        self.grpc_port = free_port()
        self.http_port = free_port()
        receivers = config.setdefault("receivers", {}).setdefault("otlp", {})
        protocols = receivers.setdefault("protocols", {"grpc": {}, "http": {}})
        if "grpc" in protocols:
            protocols["grpc"] = {**(protocols["grpc"] or {}), "endpoint": f"127.0.0.1:{self.grpc_port}"}
        if "http" in protocols:
            protocols["http"] = {**(protocols["http"] or {}), "endpoint": f"127.0.0.1:{self.http_port}"}
        http_tls = (protocols.get("http") or {}).get("tls") or {}
        self.cafile: str | None = http_tls.get("cert_file")
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.db_path = workdir / "store.duckdb"
        self.log_path = workdir / "serve.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec_fn: Any = None  # run in the child before `serve` starts (e.g. a resource limit)

    @property
    def http_url(self) -> str:
        return f"{'https' if self.cafile else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def verify(self) -> Any:
        return ssl.create_default_context(cafile=self.cafile) if self.cafile else True

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 30) -> RunningCollector:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracesieve.collector.cli", "serve", "--config", str(self.config_path),
             "--db", str(self.db_path), *self.args],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"serve did not exit within {timeout}s after signal {sig}")
        return int(self.proc.returncode)

    def kill(self) -> None:
        """Clean-up: a graceful stop first, SIGKILL only if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--db", str(self.db_path), cwd=self.workdir, **kwargs)

    def query(self, sql: str) -> list[dict[str, Any]]:
        result = self.cli("query", sql, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait_for(self, sql: str, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll ``sql`` through the CLI until ``predicate(rows)`` holds."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self.query(sql)
            if predicate(rows):
                return rows
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting on {sql!r}; last rows: {rows}")


@pytest.fixture
def start_collector(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_collector(config_dict=None, env=None, args=())`` -> a started RunningCollector."""
    started: list[RunningCollector] = []

    def factory(config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                workdir: Path | None = None, args: tuple[str, ...] = ()) -> RunningCollector:
        where = workdir or tmp_path
        collector = RunningCollector(where, json.loads(json.dumps(config or {})), env, args)
        started.append(collector)
        return collector.start()

    yield factory
    for c in started:
        c.kill()


FAST_JUDGE = {"processors": {"detectors": {"decision_wait": "300ms"}}}
