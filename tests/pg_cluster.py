"""A throwaway PostgreSQL cluster: the DuckLake catalog for tests and bench/lake.py.

The cluster lives in a temporary directory on a free loopback port (initdb + pg_ctl
from the OS packages, run as the ``postgres`` user when running as root, since
initdb refuses root) and is stopped and removed afterwards, so nothing but the
binaries is needed. No pytest imports: the bench uses it too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

from ports import free_port


def postgres_bin_dir() -> str | None:
    """The newest PostgreSQL server binaries on this machine (Debian layout first), or None."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                            key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                            reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresCluster:
    """initdb + pg_ctl start on 127.0.0.1:<free port>; ``stop()`` stops it and deletes its files."""

    def __init__(self, bin_dir: str) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="tracesieve-pg-")
        self.data = os.path.join(self.root, "data")
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            os.chmod(self.root, 0o755)
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [os.path.join(self.bin_dir, args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stdout}{result.stderr}")

    def start(self) -> PostgresCluster:
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start the (initialised) server on its port; with ``stop_server``, an outage of the catalog."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c max_connections=200")
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")

    def stop_server(self) -> None:
        """Stop the server, keeping its files (``start_server`` brings the same databases back)."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create a database; returns its DuckLake catalog string (``postgres:...``)."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.catalog(name)

    def catalog(self, name: str) -> str:
        return f"postgres:dbname={name} host=127.0.0.1 port={self.port} user=postgres"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
