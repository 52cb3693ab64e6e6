"""``tracesieve serve`` processes on a lake, and their config (the PostgreSQL cluster is pg_cluster.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from conftest import RunningCollector, run_cli
from pg_cluster import PostgresCluster, postgres_bin_dir

__all__ = ["LakeCollector", "PostgresCluster", "lake_config", "postgres_bin_dir"]


class LakeCollector(RunningCollector):
    """A ``tracesieve serve`` on a lake. ``cli`` passes --config (the CLI opens the lake itself);
    ``cli_via_db`` passes --db (the CLI finds the running collector through <db>.serve.json)."""

    def cli_via_db(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return super().cli(*args, **kwargs)

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--config", str(self.config_path), cwd=self.workdir, **kwargs)


def lake_config(catalog: str, data_path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"storage": {"ducklake": {"catalog": catalog, "data_path": str(data_path) + "/"}},
                              "processors": {"detectors": {"decision_wait": "300ms"}}}
    config.update(extra or {})
    return config
