"""Config: collector-shaped YAML, validation that names file and key, defaults, env substitution, plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from tracesieve.collector.config import load_config
from test_receivers import make_request, post

NO_JUDGE = {"service": {"pipelines": {"traces": {"processors": []}}}}
EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "processor-plugin"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracesieve.yaml"
    path.write_text(text)
    return path


def test_no_config_means_the_documented_defaults(tmp_path):
    result = run_cli("serve", "--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tree = yaml.safe_load(result.stdout)
    assert tree["receivers"]["otlp"]["protocols"] == {"grpc": {"endpoint": "127.0.0.1:4317"},
                                                      "http": {"endpoint": "127.0.0.1:4318"}}
    assert tree["storage"] == {"duckdb": {"path": "tracesieve.duckdb"}}
    assert tree["service"]["pipelines"]["traces"]["processors"] == ["pii", "detectors", "promotion"]
    assert tree["receivers"]["otlp"]["limits"]["max_request_size"] == "64MiB"
    assert tree["receivers"]["otlp"]["limits"]["max_queued_spans"] == 200000


def test_print_config_shows_the_effective_detector_options_and_reads_back_the_same(tmp_path):
    """README: --print-config prints the effective config, detectors' thresholds included (it printed {})."""
    result = run_cli("serve", "--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    detectors = yaml.safe_load(result.stdout)["processors"]["detectors"]
    assert detectors["decision_wait"] == "5s"
    assert detectors["latency_breach"] == {"LLM": "30s", "TOOL": "10s", "RETRIEVER": "5s", "AGENT": "2m"}
    assert detectors["loop"] == {"max_repeats": 3, "max_steps": 50} and "i can't help with" in detectors["refusal_phrases"]
    path = write(tmp_path, "processors: {detectors: {latency_breach: {TOOL: null, LLM: 250ms},\n"
                           "  blast_radius: {send_email: irreversible_write}, refusal_phrases: [no way]}}\n")
    first = run_cli("serve", "--config", str(path), "--print-config")
    assert first.returncode == 0, first.stderr
    detectors = yaml.safe_load(first.stdout)["processors"]["detectors"]
    assert detectors["latency_breach"] == {"LLM": "250ms", "TOOL": None, "RETRIEVER": "5s", "AGENT": "2m"}
    assert (detectors["blast_radius"], detectors["refusal_phrases"]) == ({"send_email": "irreversible_write"}, ["no way"])
    again = tmp_path / "printed.yaml"
    again.write_text(first.stdout)
    assert run_cli("serve", "--config", str(again), "--print-config").stdout == first.stdout


@pytest.mark.parametrize("text,expected", [
    ("exporters: {}\n", "exporters: unknown key"),
    ("receivers: {otlp: {protocols: {grpc: {endpiont: 1.2.3.4:1}}}}\n",
     "receivers.otlp.protocols.grpc.endpiont: unknown key"),
    ("receivers: {otlp: {limits: {max_queued_spans: lots}}}\n",
     "receivers.otlp.limits.max_queued_spans: expected a positive integer"),
    ("receivers: {otlp: {limits: {max_request_size: 12 parsecs}}}\n",
     "receivers.otlp.limits.max_request_size: expected a size"),
    ("receivers: {otlp: {limits: {max_request_size: 2GiB}}}\n",
     "receivers.otlp.limits.max_request_size: at most 2GiB - 1 byte (2147483647 bytes"),
    ("receivers: {otlp: {protocols: {grpc: {endpoint: '127.0.0.1:4400'}, http: {endpoint: '127.0.0.1:4400'}}}}\n",
     "receivers.otlp.protocols: grpc and http cannot share 127.0.0.1:4400; give each its own port"),
    ("receivers: {otlp: {protocols: {grpc: {endpoint: '0.0.0.0:4400'}, http: {endpoint: 'localhost:4400'}}}}\n",
     "receivers.otlp.protocols: grpc and http cannot share localhost:4400"),
    ("processors: {piii: {}}\n", "processors.piii: unknown processor 'piii'"),
    ("service: {pipelines: {traces: {processors: [pii, nosuch]}}}\n",
     "service.pipelines.traces.processors[1]: unknown processor 'nosuch'"),
    ("processors: {detectors: {decision_wait: soon}}\n", "processors.detectors.decision_wait"),
    # A wait no trace outlives (or YAML's .inf / .nan) left the judge failing every round, forever.
    ("processors: {detectors: {decision_wait: .inf}}\n",
     "processors.detectors.decision_wait: expected a finite duration"),
    ("processors: {detectors: {decision_wait: .nan}}\n",
     "processors.detectors.decision_wait: expected a finite duration"),
    ("processors: {detectors: {decision_wait: 99999999999s}}\n",
     "processors.detectors.decision_wait: at most 24h, got '99999999999s'"),
    ("processors: {detectors: {latency_breach: {LLM: .nan}}}\n",
     "processors.detectors.latency_breach.LLM: expected a finite duration"),
    ("processors: {detectors: {retrieval_min_score: .nan}}\n",
     "processors.detectors.retrieval_min_score: expected a finite number or null, got nan"),
    ("processors: {detectors: {feedback_score_threshold: .inf}}\n",
     "processors.detectors.feedback_score_threshold: expected a finite number, got inf"),
    ("processors: {pii: {extra_patterns: [{name: X, regex: '(unclosed'}]}}\n", "processors.pii.extra_patterns[0]"),
    ("receivers: {otlp: {auth: {bearer_token: '${env:TS_SURELY_UNSET_VAR}'}}}\n",
     "receivers.otlp.auth.bearer_token: environment variable TS_SURELY_UNSET_VAR is not set"),
    ("receivers: [otlp\n", "not valid YAML"),
    ("service: {span_workers: many}\n", "service.span_workers: expected auto or a number"),
    ("receivers: {otlp: {limits: {max_memory: 600}}}\n", "receivers.otlp.limits.max_memory: at least 64MiB"),
    ("receivers: {otlp: {limits: {max_memory: lots}}}\n", "receivers.otlp.limits.max_memory: expected a size"),
    ("processors: {detectors: {rules: [{name: bad_rule, failure_mode: loop, severity: P2,\n"
     "  sql: 'SELECT trace_id, span_id, nme AS message, NULL AS evidence FROM spans'}]}}\n",
     "processors.detectors.rules[0]"),
    ("processors: {detectors: {rules: [{name: odd_mode, failure_mode: vibes, severity: P2,\n"
     "  sql: 'SELECT trace_id, span_id, name AS message, NULL AS evidence FROM spans'}]}}\n",
     "processors.detectors.rules[0].failure_mode"),
])
def test_bad_config_names_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1


def test_an_unset_variable_is_one_problem_not_also_the_empty_value_it_left(tmp_path):
    """`${env:VAR}` unset was reported, then the empty string it left was checked and reported too:
    "... TS_DW is not set (...); processors.detectors.decision_wait: expected a duration ..., got ''"."""
    path = write(tmp_path, "processors: {detectors: {decision_wait: '${env:TS_SURELY_UNSET_DW}'}}\n"
                           "receivers: {otlp: {auth: {bearer_token: '${env:TS_SURELY_UNSET_TOKEN}'},\n"
                           "  limits: {max_value_size: lots}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "processors.detectors.decision_wait: environment variable TS_SURELY_UNSET_DW is not set" in result.stderr
    assert "receivers.otlp.auth.bearer_token: environment variable TS_SURELY_UNSET_TOKEN is not set" in result.stderr
    assert "got ''" not in result.stderr and "non-empty" not in result.stderr, result.stderr
    assert "receivers.otlp.limits.max_value_size: expected a size" in result.stderr  # other problems still all shown


def test_a_key_given_twice_is_an_error_naming_it_not_silently_the_last(tmp_path):
    """The second `receivers:` dropped the first one's auth without a word (PyYAML keeps the last value);
    the OpenTelemetry Collector refuses a mapping key that is already defined."""
    path = write(tmp_path, "receivers: {otlp: {auth: {bearer_token: s3cret}}}\n"
                           "processors: {detectors: {decision_wait: 2s}}\n"
                           "receivers: {otlp: {protocols: {grpc: {endpoint: '127.0.0.1:4400'}}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2, result.stdout
    assert str(path) in result.stderr
    assert "line 3" in result.stderr and "duplicate key 'receivers'" in result.stderr
    assert result.stderr.count("\n") == 1
    # a key given again inside one mapping too; a YAML merge key (<<) may still be overridden
    path = write(tmp_path, "processors: {detectors: {decision_wait: 2s, decision_wait: 3s}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2 and "duplicate key 'decision_wait'" in result.stderr, result.stderr
    path = write(tmp_path, "processors:\n  detectors:\n    <<: {decision_wait: 2s}\n    decision_wait: 3s\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["processors"]["detectors"]["decision_wait"] == "3s"


@pytest.mark.parametrize("reference", ["${env:TS-TOKEN}", "${file:/run/secrets/ts}", "${TS_TOKEN}", "${env:TS_TOKEN",
                                       "${env:}"])
def test_a_reference_tracesieve_does_not_substitute_is_an_error_not_the_literal_text(tmp_path, reference):
    """`${env:TS-TOKEN}` (not a variable name), the OTel Collector's `${file:...}` or a bare `${VAR}` stayed the
    literal text: the bearer token became the string written in the config file, which anyone could send."""
    path = write(tmp_path, f"receivers: {{otlp: {{auth: {{bearer_token: 'x{reference}'}}}}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env={"TS_TOKEN": "s3cret"})
    assert result.returncode == 2, result.stdout
    assert str(path) in result.stderr and "receivers.otlp.auth.bearer_token: " in result.stderr
    assert "${env:NAME}" in result.stderr and "$$" in result.stderr
    assert result.stderr.count("\n") == 1
    escaped = write(tmp_path, "storage: {duckdb: {path: 'a$${file:b}.duckdb'}}\n")  # $$ is still a literal $
    result = run_cli("serve", "--config", str(escaped), "--print-config")
    assert result.returncode == 0 and "a$${file:b}.duckdb" in result.stdout, result.stderr  # printed as written


def test_print_config_writes_a_literal_dollar_so_that_it_reads_back_the_same(tmp_path):
    """README: the printed file reads back as the same config. A value holding a literal `${` or `$$` (written
    `$${...}` / `$$$$`) was printed unescaped: read back, `${env:X}` was substituted (an error while X is
    unset) and `$$` became `$`."""
    path = write(tmp_path, "processors: {detectors: {citation_pattern: 'cite$${env:X}|a$$$$b|\\[(\\d+)\\]$'}}\n"
                           "storage: {duckdb: {path: 'a$${file:b}.duckdb'}}\n")
    first = run_cli("serve", "--config", str(path), "--print-config")
    assert first.returncode == 0, first.stderr
    again = tmp_path / "printed.yaml"
    again.write_text(first.stdout)
    second = run_cli("serve", "--config", str(again), "--print-config")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    plain = write(tmp_path, "processors: {detectors: {citation_pattern: '\\[(\\d+)\\]$'}}\n")
    assert "citation_pattern: \\[(\\d+)\\]$\n" in run_cli("serve", "--config", str(plain), "--print-config").stdout


def test_a_config_file_that_is_not_utf8_or_not_a_file_is_a_config_error_naming_it(tmp_path):
    """A config saved as Latin-1 ended as "internal error: UnicodeDecodeError: 'utf-8' codec can't decode byte
    0xe9 in position 41", naming neither the file nor the line; a directory given for the file named no config."""
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"processors:\n  detectors: {decision_wait: 2s}\n# r\xe9sum\xe9 of the options\n")
    for command in (("serve", "--print-config"), ("query", "SELECT 1")):
        result = run_cli(*command, "--config", str(latin1), "--db", str(tmp_path / "s.duckdb"))
        assert result.returncode == 2, result.stdout
        assert result.stderr == f"tracesieve: error: config error: {latin1}: not valid UTF-8 (line 3): " \
                                "save the file as UTF-8\n", result.stderr
    result = run_cli("serve", "--config", str(tmp_path), "--print-config")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"config error: {tmp_path}: cannot read the config file (Is a directory)" in result.stderr
    with_bom = write(tmp_path, "\ufeffprocessors: {detectors: {decision_wait: 2s}}\n")  # UTF-8 with a BOM still reads
    result = run_cli("serve", "--config", str(with_bom), "--print-config")
    assert result.returncode == 0 and yaml.safe_load(result.stdout)["processors"]["detectors"]["decision_wait"] == "2s"


def test_the_largest_request_size_serves(start_collector):
    """2GiB - 1 byte is the gRPC max message size's largest value (a C int); 2GiB is refused by validation."""
    c = start_collector({**NO_JUDGE, "receivers": {"otlp": {"limits": {"max_request_size": 2**31 - 1}}}})
    assert post(c, make_request(2).SerializeToString()).status_code == 200
    assert c.stop() == 0


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "exporters: {}\nreceivers: {otlp: {limits: {max_nesting_depth: -1}}}\n"
                           "processors: {detectors: {decision_wait: never}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2
    for key in ("exporters", "max_nesting_depth", "decision_wait"):
        assert key in result.stderr


def test_durations_sizes_and_env_defaults(tmp_path):
    path = write(tmp_path, "receivers: {otlp: {limits: {max_value_size: 512KiB, retry_after: 250ms},\n"
                           "  protocols: {http: {endpoint: '127.0.0.1:${env:TS_UNSET_PORT:-4999}'}}}}\n"
                           "processors: {detectors: {decision_wait: 2m}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 0, result.stderr
    tree = yaml.safe_load(result.stdout)
    assert tree["receivers"]["otlp"]["limits"]["max_value_size"] == "512KiB"
    assert tree["receivers"]["otlp"]["protocols"] == {"http": {"endpoint": "127.0.0.1:4999"}}
    assert tree["processors"]["detectors"]["decision_wait"] == "2m"
    assert tree["receivers"]["otlp"]["limits"]["max_memory"] == 0  # off unless set
    path.write_text("receivers: {otlp: {limits: {max_memory: 600MiB}}}\n")
    shown = run_cli("serve", "--config", str(path), "--print-config")
    assert yaml.safe_load(shown.stdout)["receivers"]["otlp"]["limits"]["max_memory"] == "600MiB"


def test_double_dollar_is_a_literal_dollar_as_in_the_otel_collector(tmp_path, monkeypatch):
    monkeypatch.setenv("TS_SET_VAR", "value")
    monkeypatch.setenv("TS_DOLLARS", "x$$y")  # a variable's value is taken as it is
    path = write(tmp_path, "storage: {duckdb: {path: 'a$$b-$${env:TS_SET_VAR}-$$${env:TS_SET_VAR}-${env:TS_SET_VAR}-"
                           "${env:TS_DOLLARS}'}}\n")
    result = run_cli("query", "SELECT 1", "--config", str(path), cwd=tmp_path)  # the error names the store path
    assert result.returncode == 2 and "no store at a$b-${env:TS_SET_VAR}-$value-value-x$$y (" in result.stderr
    printed = run_cli("serve", "--config", str(path), "--print-config")  # written as the config language reads it
    assert yaml.safe_load(printed.stdout)["storage"]["duckdb"]["path"] == "a$$b-$${env:TS_SET_VAR}-$$value-value-x$$$$y"


def test_go_compound_durations_are_read_and_every_printed_duration_reads_back_the_same(tmp_path):
    """The OpenTelemetry Collector's configs write Go durations (``1m30s``, ``1h30m``): they were refused.
    And ``--print-config`` kept six digits (``%g``): 3600001ms printed as ``3600s``, 0.0005s as ``0ms``."""
    path = write(tmp_path, "processors: {detectors: {decision_wait: 1m30s,\n"
                           "  latency_breach: {LLM: 1h0m0s, TOOL: 3600001ms, RETRIEVER: 0.0005s, AGENT: 61001ms}}}\n"
                           "receivers: {otlp: {limits: {retry_after: 1s500ms}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 0, result.stderr
    detectors = yaml.safe_load(result.stdout)["processors"]["detectors"]
    assert detectors["decision_wait"] == "90s"
    assert detectors["latency_breach"] == {"LLM": "60m", "TOOL": "3600.001s", "RETRIEVER": "0.0005s",
                                           "AGENT": "61.001s"}
    assert yaml.safe_load(result.stdout)["receivers"]["otlp"]["limits"]["retry_after"] == "1.5s"
    printed = tmp_path / "printed.yaml"
    printed.write_text(result.stdout)
    again = run_cli("serve", "--config", str(printed), "--print-config")
    assert again.returncode == 0 and again.stdout == result.stdout, again.stderr
    for bad in ("1m5", "m5s", "1mm", "5S"):
        path.write_text(f"processors: {{detectors: {{decision_wait: '{bad}'}}}}\n")
        refused = run_cli("serve", "--config", str(path), "--print-config")
        assert refused.returncode == 2 and "expected a duration" in refused.stderr, (bad, refused.stderr)


def test_number_and_boolean_settings_take_their_value_from_the_environment(tmp_path, monkeypatch):
    """An environment variable is text: ${env:VAR} as a whole value is typed where it is read."""
    path = write(tmp_path, "receivers: {otlp: {auth: {bearer_token: '${env:TS_TOKEN}'},\n"
                           "  limits: {max_queued_spans: '${env:TS_QUEUE}', max_nesting_depth: '${env:TS_DEPTH:-12}'}}}\n"
                           "processors: {detectors: {retrieval_min_score: '${env:TS_FLOOR}',\n"
                           "  loop: {max_repeats: '${env:TS_REPEATS}'}}}\n"
                           "service: {span_workers: '${env:TS_WORKERS}'}\n")
    env = {"TS_TOKEN": "123456", "TS_QUEUE": "77", "TS_FLOOR": "0.25", "TS_REPEATS": "4", "TS_WORKERS": "0"}
    result = run_cli("serve", "--config", str(path), "--print-config", env=env)
    assert result.returncode == 0, result.stderr
    tree = yaml.safe_load(result.stdout)
    limits = tree["receivers"]["otlp"]["limits"]
    assert (limits["max_queued_spans"], limits["max_nesting_depth"]) == (77, 12)
    detectors = tree["processors"]["detectors"]
    assert (detectors["retrieval_min_score"], detectors["loop"]["max_repeats"]) == (0.25, 4)
    assert tree["service"]["span_workers"] == 0
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_config(str(path)).bearer_token == "123456"  # a token of digits stays text
    bad = run_cli("serve", "--config", str(path), "--print-config", env={**env, "TS_QUEUE": "many"})
    assert bad.returncode == 2
    assert "max_queued_spans: expected a positive integer, got 'many'" in bad.stderr


def test_a_bare_number_from_the_environment_is_seconds_like_a_bare_number_in_yaml(tmp_path, monkeypatch):
    """`decision_wait: 2` is 2 s; `decision_wait: ${env:DW}` with DW=2 was refused as no duration."""
    path = write(tmp_path, "receivers: {otlp: {limits: {retry_after: '${env:TS_RETRY}'}}}\n"
                           "processors: {detectors: {decision_wait: '${env:TS_WAIT}'}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env={"TS_WAIT": "2", "TS_RETRY": "0.5"})
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("TS_WAIT", "2")
    monkeypatch.setenv("TS_RETRY", "0.5")
    assert load_config(str(path)).decision_wait == 2.0
    bad = run_cli("serve", "--config", str(path), "--print-config", env={"TS_WAIT": "soon", "TS_RETRY": "1"})
    assert bad.returncode == 2 and "decision_wait: expected a duration such as 250ms, 5s or 2m, got 'soon'" in bad.stderr


def test_print_config_never_shows_the_token(tmp_path):
    path = write(tmp_path, "receivers: {otlp: {auth: {bearer_token: hunter2-token}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 0
    assert "hunter2-token" not in result.stdout and "<redacted>" in result.stdout


def test_print_config_and_config_errors_never_show_the_pii_key(tmp_path):
    """The pii ``secret_key`` keys every pseudonym: whoever has it can test guesses against <EMAIL:hhhhhh>."""
    path = write(tmp_path, "processors: {pii/strict: {secret_key: '${env:TS_PII_KEY}'}}\n"
                           "service: {pipelines: {traces: {processors: [pii/strict]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env={"TS_PII_KEY": "pii-key-7c1e-secret"})
    assert result.returncode == 0, result.stderr
    assert "pii-key-7c1e-secret" not in result.stdout
    assert yaml.safe_load(result.stdout)["processors"]["pii/strict"]["secret_key"] == "<redacted>"
    wrong_type = write(tmp_path, "processors: {pii: {secret_key: 8675309112233}}\n")
    bad = run_cli("serve", "--config", str(wrong_type), "--print-config")
    assert bad.returncode == 2
    assert "processors.pii.secret_key: expected a string" in bad.stderr
    assert "8675309112233" not in bad.stderr


def test_third_party_processor_from_an_installed_package_runs_in_the_pipeline(start_collector, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(site), str(EXAMPLE_PLUGIN)], check=True, capture_output=True, timeout=300)
    config = {
        "processors": {"drop_spans": {"names": ["span-1"]}},
        "service": {"pipelines": {"traces": {"processors": ["pii", "drop_spans"]}}},
    }
    c = start_collector(config, env={"PYTHONPATH": str(site)})
    assert post(c, make_request(3).SerializeToString()).status_code == 200
    names = [r["name"] for r in c.query("SELECT name FROM spans ORDER BY name")]
    assert names == ["span-0", "span-2"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("processors: {drop_spans: {names: [1], colour: red}}\n"
                   "service: {pipelines: {traces: {processors: [drop_spans]}}}\n")
    result = run_cli("serve", "--config", str(bad), "--print-config", env={"PYTHONPATH": str(site)})
    assert result.returncode == 2
    assert "processors.drop_spans.colour: unknown key" in result.stderr
    assert "processors.drop_spans.names" in result.stderr


FAKE_PLUGINS = """\
from typing import ClassVar


class RaiseSpan:
    kind: ClassVar[str] = "span"

    @classmethod
    def from_config(cls, options, *, path):
        return cls()

    def process(self, batch):
        raise RuntimeError("span text that must never reach a log")

    def shutdown(self):
        return None


class RaiseConfig(RaiseSpan):
    @classmethod
    def from_config(cls, options, *, path):
        raise ValueError("colour must be a colour")


class DropsName(RaiseSpan):
    def process(self, batch):
        return batch.drop_columns(["name"])


class ForgetsReturn:
    kind: ClassVar[str] = "trace"

    @classmethod
    def from_config(cls, options, *, path):
        return cls()

    def process_traces(self, batch, store):
        batch.detections.clear()  # works on the batch in place, then forgets to return it

    def shutdown(self):
        return None


class NoProcessTraces:
    kind: ClassVar[str] = "trace"

    @classmethod
    def from_config(cls, options, *, path):
        return cls()

    def shutdown(self):
        return None
"""


def installed_plugins(tmp_path: Path) -> dict[str, str]:
    """A distribution on PYTHONPATH, as an installer leaves it (module + dist-info), registering
    processors in the entry-point group: one whose module is missing, one whose from_config raises
    ValueError, one whose process() raises, one without process_traces(), one whose process() drops a
    column, one whose process_traces() returns nothing. Returns the env for the subprocess."""
    site = tmp_path / "site"
    info = site / "ts_fake_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "ts_fake_plugins.py").write_text(FAKE_PLUGINS)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ts-fake-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tracesieve.processors]\nbroken = no_such_module_xyz:X\n"
                                           "raise_config = ts_fake_plugins:RaiseConfig\n"
                                           "raise_span = ts_fake_plugins:RaiseSpan\n"
                                           "no_process = ts_fake_plugins:NoProcessTraces\n"
                                           "drops_name = ts_fake_plugins:DropsName\n"
                                           "forgets_return = ts_fake_plugins:ForgetsReturn\n")
    return {"PYTHONPATH": str(site)}


def test_a_plugin_that_cannot_be_imported_is_reported_with_its_import_error(tmp_path):
    env = installed_plugins(tmp_path)
    path = write(tmp_path, "service: {pipelines: {traces: {processors: [pii, broken, detectors]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(path) in result.stderr
    assert ("service.pipelines.traces.processors[1]: processor 'broken' (entry point broken = "
            "'no_such_module_xyz:X') could not be loaded: ModuleNotFoundError: No module named "
            "'no_such_module_xyz'") in result.stderr
    assert "unknown processor" not in result.stderr


def test_a_plugin_that_cannot_be_imported_is_reported_once_when_it_also_has_options(tmp_path):
    env = installed_plugins(tmp_path)
    path = write(tmp_path, "processors: {broken: {colour: red}}\n"
                           "service: {pipelines: {traces: {processors: [pii, broken]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env=env)
    assert result.returncode == 2
    assert result.stderr.count("could not be loaded") == 1, result.stderr
    assert "processors.broken: processor 'broken' (entry point broken = 'no_such_module_xyz:X')" in result.stderr


def test_a_plugin_factory_that_raises_is_a_config_error_naming_it(tmp_path):
    env = installed_plugins(tmp_path)
    path = write(tmp_path, "processors: {raise_config: {colour: red}}\n"
                           "service: {pipelines: {traces: {processors: [pii, raise_config]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"config error: {path}: processors.raise_config: processor 'raise_config' refused its options: " \
           "ValueError: colour must be a colour" in result.stderr
    assert "internal error" not in result.stderr


def test_a_plugin_without_its_stage_method_is_a_config_error_naming_it(tmp_path):
    env = installed_plugins(tmp_path)
    path = write(tmp_path, "service: {pipelines: {traces: {processors: [pii, detectors, no_process]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env=env)
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert (f"config error: {path}: processors.no_process: processor 'no_process' (kind 'trace') has no "
            "process_traces() method") in result.stderr


def test_a_processor_named_twice_in_the_pipeline_is_a_config_error(tmp_path):
    path = write(tmp_path, "service: {pipelines: {traces: {processors: [pii, detectors, pii]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert "service.pipelines.traces.processors[2]: 'pii' is already in the pipeline at [0]" in result.stderr


def test_a_plugin_registering_a_built_in_name_is_refused_not_left_to_the_install_order(tmp_path):
    # Which of two `pii` entry points loads first depends on the order packages are found in: a plugin
    # must never silently take the redaction's place (or lose to it), so the name is refused.
    site = tmp_path / "site"
    info = site / "ts_shadow-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "ts_shadow.py").write_text(FAKE_PLUGINS)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ts-shadow\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tracesieve.processors]\npii = ts_shadow:RaiseSpan\n")
    path = write(tmp_path, "service: {pipelines: {traces: {processors: [pii, detectors]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config", env={"PYTHONPATH": str(site)})
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert "processor 'pii' is registered by two packages, " in result.stderr
    assert "tracesieve" in result.stderr and "ts-shadow" in result.stderr


def test_options_of_a_processor_left_out_of_the_pipeline_are_still_checked(tmp_path):
    # Otherwise the typo waits until the day someone adds the processor to the pipeline.
    path = write(tmp_path, "processors: {promotion: {near_duplicate_treshold: 0.9}}\n"
                           "service: {pipelines: {traces: {processors: [pii, detectors]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert "processors.promotion.near_duplicate_treshold: unknown key" in result.stderr


def test_promotion_before_detectors_is_a_config_error_not_a_pipeline_that_files_nothing(tmp_path):
    path = write(tmp_path, "service: {pipelines: {traces: {processors: [pii, promotion, detectors]}}}\n")
    result = run_cli("serve", "--config", str(path), "--print-config")
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert ("service.pipelines.traces.processors[2]: 'detectors' must come before 'promotion' (at [1])"
            in result.stderr)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_span_processor_that_raises_refuses_the_request_naming_it(start_collector, tmp_path, workers):
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    env = installed_plugins(tmp_path)
    c = start_collector({"service": {"span_workers": workers,
                                     "pipelines": {"traces": {"processors": ["pii", "raise_span"]}}}}, env=env)
    response = post(c, make_request(2).SerializeToString())
    assert response.status_code == 500
    assert b"span processor 'raise_span' failed: RuntimeError" in response.content
    with grpc.insecure_channel(c.grpc_endpoint) as channel:
        with pytest.raises(grpc.RpcError) as failed:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(make_request(2), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "span processor 'raise_span' failed: RuntimeError"
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 0}]  # it may be a redactor: nothing stored
    assert c.stop() == 0
    log = c.log()
    assert log.count("export failed: span processor 'raise_span' failed: RuntimeError") == 2, log
    assert "span text that must never reach a log" not in log and "Traceback" not in log


@pytest.mark.parametrize("workers", [0, 1])
def test_a_span_processor_that_breaks_the_schema_refuses_the_request_naming_it(start_collector, tmp_path, workers):
    # It used to reach the writer, whose failed commit answered "retry" for a request that can never be stored.
    env = installed_plugins(tmp_path)
    c = start_collector({"service": {"span_workers": workers,
                                     "pipelines": {"traces": {"processors": ["pii", "drops_name"]}}}}, env=env)
    response = post(c, make_request(2).SerializeToString())
    assert response.status_code == 500
    assert b"span processor 'drops_name' failed: it returned a table without the spans schema (missing: name" \
        in response.content
    assert c.query("SELECT count(*) AS n FROM spans") == [{"n": 0}]
    assert c.stop() == 0
    assert "tracesieve.writer" not in c.log(), c.log()


def test_a_trace_processor_that_returns_nothing_costs_only_its_own_output(start_collector, tmp_path):
    # The judge used to fail the whole round on the None, again and again, and at shutdown: the detectors'
    # findings before it were never stored.
    from sdk_helpers import emit_agent_trace, sdk_tracer

    env = installed_plugins(tmp_path)
    c = start_collector({"processors": {"detectors": {"decision_wait": "300ms"}},
                         "service": {"pipelines": {"traces": {"processors": ["pii", "detectors", "forgets_return",
                                                                             "promotion"]}}}}, env=env)
    with sdk_tracer("grpc", c.grpc_endpoint) as tracer:
        trace_id = emit_agent_trace(tracer, tool_error=True)
    c.wait_for(f"SELECT detector FROM detections WHERE trace_id = '{trace_id}'",
               lambda rows: rows == [{"detector": "tool_error"}])
    c.wait_for("SELECT count(*) AS n FROM candidates", lambda rows: rows == [{"n": 1}])
    assert c.stop() == 0
    # named by its pipeline id, as the operator wrote it, not by its class
    assert f"trace processor forgets_return failed on trace {trace_id} (TypeError)" in c.log(), c.log()


def test_span_stage_runs_inline_or_in_worker_processes_with_the_same_result(start_collector, tmp_path):
    rows = {}
    for workers in (0, 2):
        where = tmp_path / f"w{workers}"
        where.mkdir()
        c = start_collector({"service": {"span_workers": workers, "pipelines": {"traces": {"processors": ["pii"]}}}},
                            workdir=where)
        req = make_request(3)
        req.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="input.value").value.string_value = \
            "mail ann@example.com please"
        assert post(c, req.SerializeToString()).status_code == 200
        rows[workers] = c.query("SELECT input_value, pii_redactions FROM spans WHERE input_value IS NOT NULL")
        c.stop()
    assert rows[0] == rows[2]
    assert rows[0][0]["input_value"] == "mail <EMAIL> please"
    assert json.loads(rows[0][0]["pii_redactions"])["EMAIL"] >= 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_serve_on_a_taken_port_exits_2_with_one_line(tmp_path, protocol):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = {"grpc": "http", "http": "grpc"}[protocol]
        path = write(tmp_path, f"receivers: {{otlp: {{protocols: {{{protocol}: {{endpoint: '127.0.0.1:{port}'}},\n"
                               f"  {other}: {{endpoint: '127.0.0.1:0'}}}}}}}}\n")
        result = run_cli("serve", "--config", str(path), "--db", str(tmp_path / "t.duckdb"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert f"receivers.otlp.protocols.{protocol}.endpoint" in result.stderr


@pytest.mark.parametrize("value", ["[]", "''", "false", "[secret_key, abc]"])
def test_processor_options_that_are_no_mapping_are_a_config_error(tmp_path, value):
    """``pii: []`` (or a list where a mapping was meant) started the collector with the default options,
    silently: a pii section whose settings were never read looks configured. ``pii:`` alone still means
    the defaults."""
    path = write(tmp_path, f"processors: {{pii: {value}}}\n")
    bad = run_cli("serve", "--config", str(path), "--print-config")
    assert bad.returncode == 2, bad.stdout
    assert "processors.pii: expected a mapping, got" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    empty = write(tmp_path, "processors: {pii: }\n")
    assert run_cli("serve", "--config", str(empty), "--print-config").returncode == 0
