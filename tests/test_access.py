"""Access control: bearer token or API key (from env or a file) on both receivers and the query surface.

The real OTel SDK exporters send the credential the way deployments configure
it, through ``OTEL_EXPORTER_OTLP_HEADERS``; a wrong or missing one gets
401 / UNAUTHENTICATED and stores nothing. Secrets never reach the log.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from conftest import free_port, run_cli
from test_receivers import make_request, post

TOKEN = "tok-9f2c1d7e5b-bearer-secret"
API_KEY = "key-4a8e6c0b2d-api-secret"
NO_JUDGE = {"service": {"span_workers": 0, "pipelines": {"traces": {"processors": []}}}}


@pytest.fixture
def guarded(start_collector, tmp_path):
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")  # as `echo` writes it: the newline is not part of the token
    return start_collector({**NO_JUDGE, "receivers": {"otlp": {"auth": {
        "bearer_token_file": str(token_file), "api_key": "${env:TS_TEST_API_KEY}"}}}},
        env={"TS_TEST_API_KEY": API_KEY})


def export_with_env_headers(c, transport: str, headers_env: str | None, service: str, monkeypatch) -> None:
    """One span through the real SDK exporter, whose headers come from OTEL_EXPORTER_OTLP_HEADERS only."""
    if headers_env is None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers_env)
    if transport == "grpc":
        exporter = GrpcExporter(endpoint=f"http://{c.grpc_endpoint}", insecure=True, timeout=20)
    else:
        exporter = HttpExporter(endpoint=f"{c.http_url}/v1/traces", timeout=20)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("access").start_as_current_span("guarded-span"):
        pass
    provider.shutdown()


def test_sdk_exporters_with_token_or_key_in_otel_headers_are_stored_wrong_or_none_are_not(guarded, monkeypatch):
    c = guarded
    cases = {
        "bearer": f"authorization=Bearer%20{TOKEN}",
        "apikey": f"x-api-key={API_KEY}",
        "wrong-bearer": "authorization=Bearer%20not-the-token",
        "wrong-key": f"x-api-key={TOKEN}",  # the token is not the API key
        "key-as-bearer": f"authorization=Bearer%20{API_KEY}x",
        "none": None,
    }
    for transport in ("grpc", "http"):
        for name, headers in cases.items():
            export_with_env_headers(c, transport, headers, f"svc-{transport}-{name}", monkeypatch)
    result = c.cli("query", "SELECT service_name, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1", "--format",
                   "json", env={"TRACESIEVE_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows == [{"service_name": f"svc-{t}-{name}", "n": 1}
                    for t in ("grpc", "http") for name in ("apikey", "bearer")]


def test_raw_answers_query_surface_and_cli(guarded):
    c = guarded
    body = make_request(2).SerializeToString()
    assert post(c, body).status_code == 401
    assert post(c, body, authorization=f"Basic {TOKEN}").status_code == 401
    assert post(c, body, **{"x-api-key": ""}).status_code == 401
    assert post(c, b"hello", "text/plain").status_code == 401  # the token first, then what the body is
    assert post(c, b"hello", "text/plain", authorization=f"Bearer {TOKEN}").status_code == 415
    denied = post(c, body, authorization="Bearer nope")
    assert denied.status_code == 401 and TOKEN not in denied.text and API_KEY not in denied.text
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer nope"),), (("x-api-key", "nope"),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Export(make_request(1), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.Export(make_request(1), metadata=(("x-api-key", API_KEY),), timeout=10)
    assert httpx.get(f"{c.http_url}/healthz").status_code == 200
    assert httpx.get(f"{c.http_url}/readyz").status_code == 200
    assert httpx.get(f"{c.http_url}/metrics").status_code == 401
    assert httpx.get(f"{c.http_url}/metrics", headers={"x-api-key": API_KEY}).status_code == 200
    assert httpx.post(f"{c.http_url}/api/query", json={"sql": "SELECT 1"}).status_code == 401
    assert post(c, body, authorization=f"Bearer {TOKEN}").status_code == 200

    refused_cli = c.cli("query", "SELECT count(*) FROM spans")
    assert refused_cli.returncode == 2 and "TRACESIEVE_TOKEN" in refused_cli.stderr
    for secret in (TOKEN, API_KEY):  # TRACESIEVE_TOKEN may hold either credential
        ok = c.cli("query", "SELECT count(*) AS n FROM spans", "--format", "json", env={"TRACESIEVE_TOKEN": secret})
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout) == [{"n": 3}]
    printed = run_cli("serve", "--config", str(c.config_path), "--print-config", env={"TS_TEST_API_KEY": API_KEY})
    assert printed.returncode == 0 and TOKEN not in printed.stdout and API_KEY not in printed.stdout
    assert c.stop() == 0
    log = c.log()
    assert TOKEN not in log and API_KEY not in log


def test_auth_config_problems_are_one_line_each(tmp_path):
    def serve_with(auth: dict) -> subprocess.CompletedProcess[str]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"receivers": {"otlp": {"auth": auth}}}))
        return run_cli("serve", "--config", str(cfg), "--print-config")

    missing = serve_with({"bearer_token_file": str(tmp_path / "absent")})
    assert missing.returncode == 2 and "receivers.otlp.auth.bearer_token_file" in missing.stderr
    (tmp_path / "empty").write_text("\n")
    empty = serve_with({"api_key_file": str(tmp_path / "empty")})
    assert empty.returncode == 2 and "is empty" in empty.stderr
    both = serve_with({"bearer_token": "a", "bearer_token_file": str(tmp_path / "empty")})
    assert both.returncode == 2 and "not both" in both.stderr
    assert all(r.stderr.count("\n") == 1 for r in (missing, empty, both))


def test_an_auth_block_without_a_credential_is_a_config_error_not_an_open_collector(tmp_path):
    """`auth:` whose credential line is commented out, `auth: {}` or `bearer_token:` with no value served with
    no auth at all (`bearer_token: ''` was already refused): anyone could send spans and query the store while
    the operator believed the collector guarded."""
    cfg = tmp_path / "c.yaml"
    for text, problem in [
        ("receivers:\n  otlp:\n    auth:\n      # bearer_token: ${env:TS_TOKEN}\n",
         "receivers.otlp.auth: names no credential"),
        ("receivers: {otlp: {auth: {}}}\n", "receivers.otlp.auth: names no credential"),
        ("receivers: {otlp: {auth: {bearer_token: }}}\n", "receivers.otlp.auth.bearer_token: expected a non-empty"),
        ("receivers: {otlp: {auth: {api_key_file: }}}\n", "receivers.otlp.auth.api_key_file: expected a file path"),
        ("receivers: {otlp: {auth: {bearer_token: s3cret, api_key: }}}\n", "receivers.otlp.auth.api_key: expected"),
    ]:
        cfg.write_text(text)
        result = run_cli("serve", "--config", str(cfg), "--print-config")
        assert result.returncode == 2, (text, result.stdout)
        assert result.stderr.count("\n") == 1 and problem in result.stderr and str(cfg) in result.stderr, result.stderr
    cfg.write_text("receivers: {otlp: {auth: {bearer: s3cret}}}\n")  # a misspelt key is said once, as itself
    result = run_cli("serve", "--config", str(cfg), "--print-config")
    assert result.returncode == 2 and "receivers.otlp.auth.bearer: unknown key" in result.stderr
    assert "names no credential" not in result.stderr and "s3cret" not in result.stderr


def test_a_token_no_header_can_carry_is_a_config_error_that_does_not_quote_it(tmp_path):
    """A secret passed through ${env:...} with its file's trailing newline (or a non-ASCII one) was taken as is:
    no HTTP header or gRPC metadata can carry it, so every exporter and CLI command was refused."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"receivers": {"otlp": {"auth": {"bearer_token": "${env:TS_TEST_TOKEN}",
                                                                    "api_key": "${env:TS_TEST_KEY}"}}}}))
    for bad in (TOKEN + "\n", " " + TOKEN, TOKEN[:5] + "\u00e9" + TOKEN[5:], TOKEN[:5] + "\x07" + TOKEN[5:]):
        result = run_cli("serve", "--config", str(cfg), "--print-config",
                         env={"TS_TEST_TOKEN": bad, "TS_TEST_KEY": API_KEY})
        assert result.returncode == 2, repr(bad)
        assert "receivers.otlp.auth.bearer_token: " in result.stderr and "header" in result.stderr
        assert TOKEN[:8] not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    spaced = run_cli("serve", "--config", str(cfg), "--print-config",
                     env={"TS_TEST_TOKEN": "two words", "TS_TEST_KEY": API_KEY})
    assert spaced.returncode == 0, spaced.stderr  # a space inside is sendable


def test_cli_drops_whitespace_around_the_token_and_refuses_one_no_header_can_carry(guarded):
    """TRACESIEVE_TOKEN with a trailing newline (a secret file's, as *_file drops it) failed with the token
    quoted on stderr ("Illegal header value b'Bearer ...'"); a non-ASCII one with "internal error: UnicodeEncodeError"."""
    c = guarded
    ok = c.cli("query", "SELECT 1 AS n", "--format", "json", env={"TRACESIEVE_TOKEN": TOKEN + "\n"})
    assert ok.returncode == 0, ok.stderr
    for bad in (TOKEN[:5] + "\u00e9" + TOKEN[5:], TOKEN + "\r\nx-evil: 1"):
        refused = c.cli("query", "SELECT 1", env={"TRACESIEVE_TOKEN": bad})
        assert refused.returncode == 2, refused.stderr
        assert "TRACESIEVE_TOKEN" in refused.stderr and "internal error" not in refused.stderr
        assert TOKEN[:8] not in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert c.stop() == 0


def test_a_refused_cli_command_says_what_is_wrong_with_its_token(guarded):
    """The collector's own user, refused for want of TRACESIEVE_TOKEN (or for a wrong one), was told to
    "run the command as the collector's user" and shown the exporters' header advice."""
    c = guarded
    unset = c.cli("query", "SELECT 1", env={"TRACESIEVE_TOKEN": ""})
    assert unset.returncode == 2 and unset.stderr.count("\n") == 1, unset.stderr
    assert "auth is set and TRACESIEVE_TOKEN is not" in unset.stderr, unset.stderr
    assert "collector's user" not in unset.stderr and "x-api-key" not in unset.stderr, unset.stderr
    wrong = c.cli("candidates", env={"TRACESIEVE_TOKEN": "not-the-token"})
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "TRACESIEVE_TOKEN is not the configured bearer token or API key" in wrong.stderr, wrong.stderr
    assert "not-the-token" not in wrong.stderr and TOKEN not in wrong.stderr


def _busy_port() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_binding_beyond_loopback_without_auth_logs_a_warning(tmp_path):
    """Logged once the receiver listens. Only gRPC ingest is bound beyond loopback, for the moment it
    takes to start and stop (the query surface stays on loopback)."""
    grpc_port = free_port()
    otlp: dict = {"protocols": {"grpc": {"endpoint": f"0.0.0.0:{grpc_port}"},
                                "http": {"endpoint": f"127.0.0.1:{free_port()}"}}}
    cfg = tmp_path / "exposed.yaml"
    cfg.write_text(yaml.safe_dump({"receivers": {"otlp": otlp}, **NO_JUDGE}))
    proc = subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", "serve", "--config", str(cfg),
                             "--db", str(tmp_path / "s.duckdb")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "tracesieve is up" in line:
                break
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + out
    assert proc.returncode == 0, out
    assert f"WARNING tracesieve.server: listening on 0.0.0.0:{grpc_port} without auth" in out, out
    assert out.count("without auth") == 1, out  # the loopback HTTP receiver is not named

    # the same config with a credential, or on loopback, warns about nothing
    from tracesieve.collector.config import load_config
    from tracesieve.collector.server import warn_if_exposed

    otlp["auth"] = {"api_key": API_KEY}
    cfg.write_text(yaml.safe_dump({"receivers": {"otlp": otlp}, **NO_JUDGE}))
    assert warn_if_exposed(load_config(str(cfg))) == []
    loopback = {"protocols": {"grpc": {"endpoint": "localhost:4317"}, "http": {"endpoint": "[::1]:4318"}}}
    cfg.write_text(yaml.safe_dump({"receivers": {"otlp": loopback}, **NO_JUDGE}))
    assert warn_if_exposed(load_config(str(cfg))) == []


def test_a_busy_port_beyond_loopback_is_one_error_line_and_no_warning_about_listening(tmp_path):
    """A port that cannot be bound is exactly one line on stderr: the exposure warning ("listening on
    0.0.0.0:... without auth") was logged before the bind, for a listener that never was."""
    held = [_busy_port(), _busy_port()]
    try:
        grpc_port, http_port = (s.getsockname()[1] for s in held)
        otlp: dict = {"protocols": {"grpc": {"endpoint": f"0.0.0.0:{grpc_port}"},
                                    "http": {"endpoint": f"0.0.0.0:{http_port}"}}}
        cfg = tmp_path / "exposed.yaml"
        cfg.write_text(yaml.safe_dump({"receivers": {"otlp": otlp}, **NO_JUDGE}))
        result = run_cli("serve", "--config", str(cfg), "--db", str(tmp_path / "s.duckdb"), timeout=60)
    finally:
        for s in held:
            s.close()
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"tracesieve: error: cannot listen on 0.0.0.0:{grpc_port}"), result.stderr
    assert not (tmp_path / "s.duckdb").exists()  # refused before the store was opened


def _free_ipv6_loopback_port() -> int | None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError:
        return None


def test_receivers_on_ipv6_loopback_take_spans_and_answer_the_cli(tmp_path):
    """``[::1]:PORT`` endpoints: gRPC was handed ``::1:PORT``, which it cannot bind (serve exited 2,
    "address in use?"), and the discovery record's URL ``http://::1:PORT`` was no URL for the CLI."""
    grpc_port, http_port = _free_ipv6_loopback_port(), _free_ipv6_loopback_port()
    if grpc_port is None or http_port is None:
        pytest.skip("this host has no IPv6 loopback")
    cfg = tmp_path / "v6.yaml"
    cfg.write_text(yaml.safe_dump({"receivers": {"otlp": {"protocols": {
        "grpc": {"endpoint": f"[::1]:{grpc_port}"}, "http": {"endpoint": f"[::1]:{http_port}"}}}}, **NO_JUDGE}))
    db = tmp_path / "s.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "tracesieve.collector.cli", "serve", "--config", str(cfg),
                             "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://[::1]:{http_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        for transport, endpoint in (("grpc", f"[::1]:{grpc_port}"), ("http", f"http://[::1]:{http_port}")):
            exporter: Any = (GrpcExporter(endpoint=f"http://{endpoint}", insecure=True, timeout=20)
                             if transport == "grpc" else HttpExporter(endpoint=f"{endpoint}/v1/traces", timeout=20))
            provider = TracerProvider(resource=Resource.create({"service.name": f"v6-{transport}"}))
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            with provider.get_tracer("access").start_as_current_span("v6-span"):
                pass
            provider.shutdown()
        assert json.loads(db.with_name("s.duckdb.serve.json").read_text())["url"] == f"http://[::1]:{http_port}"
        answer = run_cli("query", "SELECT service_name FROM spans ORDER BY 1", "--format", "json", "--db", str(db))
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) == [{"service_name": "v6-grpc"}, {"service_name": "v6-http"}]
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_the_store_serve_creates_is_readable_by_its_own_user_only(start_collector):
    """The store holds what users typed (redacted, but still their words): no other account reads it,
    whatever umask serve was started with. The discovery record names only a pid, a URL and paths:
    it stays readable, so an account that holds the token can find the collector."""
    previous = os.umask(0o022)
    try:
        c = start_collector(NO_JUDGE)
    finally:
        os.umask(previous)
    assert post(c, make_request(3).SerializeToString()).status_code == 200
    wal = Path(f"{c.db_path}.wal")
    assert wal.exists()  # the acknowledged spans sit in the WAL until a checkpoint
    for path in (Path(c.db_path), wal):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} is {oct(path.stat().st_mode)}"
    discovery = Path(f"{c.db_path}.serve.json")
    assert stat.S_IMODE(discovery.stat().st_mode) == 0o644
    assert json.loads(discovery.read_text())["url"] == c.http_url
    assert c.stop() == 0


def test_without_auth_the_query_surface_answers_only_the_collectors_user(start_collector):
    """Loopback is open to every account on the host: without auth, /api/<op> served the whole store
    (and took promote/reject writes) from anyone, though the file itself is private. The CLI of the
    collector's user reads the local token from <db>.serve.token (0600) and works as before."""
    c = start_collector(NO_JUDGE)
    assert post(c, make_request(3).SerializeToString()).status_code == 200  # ingest stays open without auth
    refused = httpx.post(f"{c.http_url}/api/query", json={"sql": "SELECT count(*) FROM spans"})
    assert refused.status_code == 401 and "local token" in refused.json()["error"]
    assert httpx.post(f"{c.http_url}/api/mark_rejected", json={"candidate_id": "x", "reason": "r", "by": "me"}
                      ).status_code == 401
    token_file = Path(f"{c.db_path}.serve.token")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token not in Path(f"{c.db_path}.serve.json").read_text()
    assert httpx.post(f"{c.http_url}/api/query", json={"sql": "SELECT 1 AS n"},
                      headers={"x-tracesieve-local-token": "wrong"}).status_code == 401
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 3}]  # through the collector, token read from the file
    assert httpx.get(f"{c.http_url}/metrics").status_code == 200  # scrapes need no token without auth
    assert c.stop() == 0
    assert not token_file.exists()
    assert token not in c.log()
