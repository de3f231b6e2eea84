"""Opening and cleaning up test stores outside pytest fixtures (state machines, worker
processes), isolated the same way the fixtures in ``tests/conftest.py`` isolate them:
a fresh SQLite file, PostgreSQL schema or Redis key prefix per use."""

from __future__ import annotations

import importlib
import os
import socket
import uuid
from typing import Any
from urllib.parse import urlparse

from conveyor_core.store import StoreInterface

PG_DSN = os.environ.get("CONVEYOR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_ALL = os.environ.get("CONVEYOR_REQUIRE_ALL_STORES", "") not in ("", "0", "false", "no")

KINDS = ("memory", "sqlite", "postgres", "redis")
_MODULES = {
    "sqlite": ("conveyor_stores.sqlite", "sqlite3"),
    "postgres": ("conveyor_stores.postgres", "asyncpg"),
    "redis": ("conveyor_stores.redis", "redis"),
}
_SERVERS = {"postgres": (PG_DSN, 5432), "redis": (REDIS_URL, 6379)}


def unavailable(kind: str) -> str | None:
    """Why the store ``kind`` cannot be used here, or ``None`` when it can."""
    if kind == "memory":
        return None
    module, driver = _MODULES[kind]
    for name in (driver, module):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{kind} store not importable ({name}): {exc}"
    if kind in _SERVERS:
        url, port = _SERVERS[kind]
        parsed = urlparse(url)
        try:
            with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or port), 2):
                pass
        except OSError as exc:
            return f"{kind} server at {url} unreachable: {exc}"
    return None


def skip_unless_available(kind: str) -> None:
    """Skip the current test without the store (fail instead under CI's strict flag)."""
    import pytest

    reason = unavailable(kind)
    if reason is None:
        return
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (CONVEYOR_REQUIRE_ALL_STORES is set)")
    pytest.skip(reason)


def new_location(kind: str, tmpdir: str) -> dict[str, str]:
    """A fresh, isolated place for one store: what :func:`make_store` needs."""
    tag = uuid.uuid4().hex[:12]
    if kind == "sqlite":
        return {"kind": kind, "path": os.path.join(tmpdir, f"conveyor-{tag}.db")}
    if kind == "postgres":
        return {"kind": kind, "dsn": PG_DSN, "schema": f"conveyor_test_{tag}"}
    if kind == "redis":
        return {"kind": kind, "url": REDIS_URL, "prefix": f"conveyor-test-{tag}"}
    return {"kind": kind}


def make_store(location: dict[str, str], **options: Any) -> StoreInterface:
    """A store (not yet connected) for a location from :func:`new_location`."""
    kind = location["kind"]
    if kind == "memory":
        from conveyor_stores.memory import MemoryStore

        return MemoryStore()
    if kind == "sqlite":
        from conveyor_stores.sqlite import SQLiteStore

        return SQLiteStore(location["path"], **options)  # type: ignore[no-any-return]
    if kind == "postgres":
        from conveyor_stores.postgres import PostgresStore

        return PostgresStore(location["dsn"], schema=location["schema"], **options)  # type: ignore[no-any-return]
    from conveyor_stores.redis import RedisStore

    return RedisStore(location["url"], prefix=location["prefix"], **options)  # type: ignore[no-any-return]


async def drop_location(location: dict[str, str]) -> None:
    """Delete what a test left on a server (schema or keys); files go with tmpdir."""
    kind = location["kind"]
    if kind == "postgres":
        import asyncpg

        conn = await asyncpg.connect(location["dsn"])
        try:
            schema = location["schema"].replace('"', '""')
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    elif kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(location["url"])
        try:
            keys = [key async for key in client.scan_iter(match=location["prefix"] + "*")]
            for start in range(0, len(keys), 500):
                await client.delete(*keys[start : start + 500])
        finally:
            await client.aclose()
