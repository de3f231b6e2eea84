"""A Redis server of a test's own, on a free port in a temporary directory, for faults
that must not touch the shared server: freezing it, filling its memory, restarting it
into a slow load, requiring a password, disabling ``CONFIG``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REQUIRE_ALL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 1.0) -> str | None:
    """The first line of the server's reply to ``PING`` (``+PONG``, ``-LOADING ...``,
    ``-NOAUTH ...``), or None if nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(200).split(b"\r\n", 1)[0].decode()
    except OSError:
        return None


class PrivateRedis:
    """One ``redis-server`` process; :meth:`start` it (again) with extra arguments."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *args: str, ready: tuple[str, ...] = ("+PONG", "-NOAUTH")) -> None:
        """Start the server and wait until ``PING`` gets a reply starting with one of
        ``ready``."""
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            *args,
        ]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = ping(self.port)
            if reply is not None and reply.startswith(ready):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"private redis-server did not start: {log}")

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (thawed first); nothing is saved."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def private_redis(directory: os.PathLike[str], *args: str) -> Iterator[PrivateRedis]:
    """A started private server, always stopped (and thawed) on the way out."""
    if shutil.which("redis-server") is None:
        message = "these tests start a private redis-server, which is not installed"
        if REQUIRE_ALL:
            pytest.fail(f"{message} (CONVEYOR_REQUIRE_ALL_STORES is set)")
        pytest.skip(message)
    server = PrivateRedis(Path(directory))
    try:
        server.start(*args)
        yield server
    finally:
        server.stop()
