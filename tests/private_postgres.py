"""A private PostgreSQL server for server-level faults (crash, freeze), on its own port in
a temporary directory, run as the ``postgres`` OS user; never the shared test server."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostgres:
    """One private server: ``start``, ``crash`` (an immediate stop), ``freeze``/``thaw``
    (SIGSTOP/SIGCONT of the postmaster and every backend), ``stop``."""

    def __init__(self, bin_dir: str, settings: dict[str, str]) -> None:
        self.bin_dir = bin_dir
        self.settings = settings
        self.dir = tempfile.mkdtemp(prefix="conveyor-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )
        self.frozen: list[int] = []

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", os.path.join(self.bin_dir, tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.dir}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._as_postgres(
            "pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60",
            "-o", " ".join(options), "start",
        )  # fmt: skip

    def crash(self) -> None:
        """Stop at once, as a crash would: nothing unflushed reaches the disk."""
        self._as_postgres("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def _pids(self) -> list[int]:
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True
        ).stdout.split()
        return [postmaster, *(int(pid) for pid in children)]

    def freeze(self) -> None:
        """Stop the postmaster and every backend: connections stay open, nothing answers."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)
            self.frozen.append(pid)

    def thaw(self) -> None:
        for pid in self.frozen:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen.clear()

    def stop(self) -> None:
        self.thaw()
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            with suppress(subprocess.CalledProcessError):
                self._as_postgres("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_postgres(**settings: str) -> Iterator[PrivatePostgres]:
    """A started private server with ``settings`` (``-c key=value``); always stopped and
    removed afterwards, thawed first if frozen."""
    bin_dir = _bin_dir()
    if bin_dir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        message = "a private PostgreSQL server needs initdb, runuser and root"
        if os.environ.get("CONVEYOR_REQUIRE_ALL_STORES", "") not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CONVEYOR_REQUIRE_ALL_STORES is set, so this is a failure)")
        pytest.skip(message)
    server = PrivatePostgres(bin_dir, settings)
    try:
        server.start()
        yield server
    finally:
        server.stop()
