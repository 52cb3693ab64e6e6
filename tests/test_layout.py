"""The package layout of DESIGN.md: three floors, imports one way, every command documented."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"storage": 0, "processors": 1, "collector": 2}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("floor", sorted(FLOORS))
def test_imports_run_one_way(floor):
    for path in (ROOT / floor).rglob("*.py"):
        for module in imported_modules(path):
            if module.startswith("tracesieve."):
                target = module.split(".")[1]
                assert FLOORS[target] <= FLOORS[floor], f"{path.relative_to(ROOT)} imports {module}"
            if floor != "collector":
                assert module.split(".")[0] not in {"grpc", "starlette", "uvicorn", "click", "rich"}, \
                    f"{path.relative_to(ROOT)} imports {module}: wire and CLI code stays in collector/"
            if floor == "processors":
                assert module.split(".")[0] != "duckdb", f"{path.relative_to(ROOT)}: DuckDB lives in storage/"


def test_only_the_tracesieve_namespace_is_installed(tmp_path):
    import subprocess
    import sys

    for generic in ("storage", "processors", "collector"):
        probe = subprocess.run([sys.executable, "-c", f"import {generic}"], cwd=tmp_path, capture_output=True)
        assert probe.returncode != 0, f"a top-level package named {generic!r} is installed"
    ok = subprocess.run([sys.executable, "-c", "import tracesieve.collector, tracesieve.processors, "
                         "tracesieve.storage"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("command", ["serve", "query", "candidates", "show", "promote", "reject", "export",
                                     "cases lint", "cases remove", "gate", "report", "completion"])
def test_every_command_has_help_and_is_in_the_readme(command):
    result = run_cli(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert f"tracesieve {command}" in (ROOT / "README.md").read_text()


def test_every_command_takes_db_and_config():
    """DESIGN: every command takes --db PATH and --config FILE (`completion` took neither)."""
    import click

    from tracesieve.collector.cli import _commands, cli

    for path, command in _commands(cli).items():
        if path and not isinstance(command, click.Group):
            options = {o for p in command.params for o in getattr(p, "opts", [])}
            assert {"--db", "--config"} <= options, path


def test_every_openinference_span_kind_is_a_known_kind():
    from openinference.semconv.trace import OpenInferenceSpanKindValues

    from tracesieve.storage.schema import SPAN_KINDS

    assert {k.value for k in OpenInferenceSpanKindValues} <= set(SPAN_KINDS)
