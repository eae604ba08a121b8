"""Servers of their own for the tests and the benchmarks: a free port on 127.0.0.1, and a
PostgreSQL cluster (Debian's `postgresql`) in a temporary directory, run as its non-root `postgres`
user when this is root."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_tool(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or where Debian puts it; None when not installed."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


class Postgres:
    """One PostgreSQL cluster in a temporary directory, run as the `postgres` user when this is root."""

    def __init__(self):
        self.where = Path(tempfile.mkdtemp(prefix="kiwi-pg-"))
        self.port = free_port()
        self.data, self.log = self.where / "data", self.where / "server.log"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.where, "postgres")
        self.uri = f"postgresql+psycopg://kiwi@127.0.0.1:{self.port}/postgres"

    def _run(self, *args):
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])

    def _ctl(self, *args):
        self._run(str(pg_tool("pg_ctl")), "-D", str(self.data), "-l", str(self.log), "-w", *args, "-o",
                  f"-p {self.port} -k {self.where} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")

    def start(self):
        self._run(str(pg_tool("initdb")), "-D", str(self.data), "-U", "kiwi", "-A", "trust", "--no-sync")
        self._ctl("start")

    def database(self, name: str) -> str:
        """A new database of this cluster (an Optuna study beside MLflow's tables, whose
        migrations share one table name); its ``postgresql://`` URL."""
        import psycopg

        with psycopg.connect(f"postgresql://kiwi@127.0.0.1:{self.port}/postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://kiwi@127.0.0.1:{self.port}/{name}"

    def restart(self):
        self._ctl("-m", "immediate", "restart")  # as a crashed database comes back: no clean shutdown

    def stop(self):
        self._ctl("-m", "fast", "stop")
        shutil.rmtree(self.where, ignore_errors=True)
