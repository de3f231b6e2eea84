"""Shared fixtures: the anyio backend and access to the real PostgreSQL and Redis servers.

PostgreSQL and Redis tests talk to real servers. Without them they skip with the reason,
unless ``CONVEYOR_REQUIRE_ALL_STORES=1`` is set (as CI does): then a missing server is a
test failure, never a skip.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

PG_DSN = os.environ.get("CONVEYOR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_ALL = os.environ.get("CONVEYOR_REQUIRE_ALL_STORES", "") not in ("", "0", "false", "no")


def _reachable(url: str, default_port: int) -> str | None:
    """None if a TCP connection to the URL's host and port succeeds, else the reason."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"


def _need(kind: str, url: str, default_port: int, module: str) -> None:
    problem: str | None = None
    try:
        __import__(module)
    except ImportError:
        problem = f"the {module} package is not installed (pip install -e '.[dev]')"
    if problem is None:
        problem = _reachable(url, default_port)
    if problem is None:
        return
    message = f"{kind} tests need a server at {url}: {problem}"
    if REQUIRE_ALL:
        pytest.fail(f"{message} (CONVEYOR_REQUIRE_ALL_STORES is set, so this is a failure)")
    pytest.skip(message)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pg_dsn() -> str:
    """The DSN of the test PostgreSQL database; skips (or fails under CI) without it."""
    _need("PostgreSQL", PG_DSN, 5432, "asyncpg")
    return PG_DSN


@pytest.fixture
def pg_schema() -> str:
    """A fresh schema name for one test; the store creates it."""
    return f"conveyor_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_conn(pg_dsn: str, pg_schema: str) -> AsyncIterator[Any]:
    """A plain connection beside the stores of the test's schema; drops the schema at the
    end."""
    import asyncpg

    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        await conn.close()


@pytest.fixture
def redis_url() -> str:
    """The URL of the test Redis server; skips (or fails under CI) without it."""
    _need("Redis", REDIS_URL, 6379, "redis")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A fresh key prefix for one test."""
    return f"conveyor-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sqlite_path(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A fresh SQLite file path for one test."""
    yield os.path.join(os.fspath(tmp_path), "conveyor.db")
