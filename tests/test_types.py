"""collector/ and storage/ pass a strict type checker (STYLE.md, habit 7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_collector_and_storage_pass_mypy_strict(tmp_path):
    # The source folders are installed as tracesieve.*; mirror that layout for mypy.
    package = tmp_path / "tracesieve"
    package.mkdir()
    for floor in ("collector", "processors", "storage"):
        (package / floor).symlink_to(ROOT / floor)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", "--follow-imports=silent",
         "--namespace-packages", "--explicit-package-bases", "--no-incremental",
         "tracesieve/storage", "tracesieve/collector"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
