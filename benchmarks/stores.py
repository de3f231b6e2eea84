"""Which store a benchmark run uses: URL shortcuts, labels, fresh SQLite files."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conveyor_core.store import StoreInterface
from conveyor_stores import open_store

SHORTCUTS = {
    "memory": "memory://",
    "sqlite": "sqlite:///{tmp}/conveyor-bench.db",
    "postgres": os.environ.get(
        "CONVEYOR_BENCH_PG_DSN",
        os.environ.get("CONVEYOR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    ),
    "redis": os.environ.get(
        "CONVEYOR_BENCH_REDIS_URL",
        os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    ),
}
"""``--store memory|sqlite|postgres|redis`` stand for these URLs."""

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "postgres-fast": ("postgres", {"durable_worker_commits": False}),
}
"""Store names that stand for a shortcut with non-default store options, so that an
opt-in mode can be measured beside the default: ``postgres-fast`` is PostgreSQL with
worker transitions committed without waiting for the WAL flush (see docs/postgres.md)."""

_LABELS = {
    "memory": "memory",
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "redis": "redis",
    "rediss": "redis",
}


def resolve(url_or_name: str) -> str:
    """A full store URL from a URL or one of the shortcut names (a variant's name is
    kept: :func:`fresh_store` and :func:`label` know it)."""
    if url_or_name in VARIANTS:
        return url_or_name
    url = SHORTCUTS.get(url_or_name, url_or_name)
    return url.replace("{tmp}", tempfile.gettempdir())


def label(url: str) -> str:
    """The ``store`` field of a figure: ``memory``, ``sqlite``, ``postgres`` or ``redis``,
    or a variant's name such as ``postgres-fast``."""
    if url in VARIANTS:
        return url
    scheme = url.partition("://")[0].lower()
    return _LABELS.get(scheme, scheme)


def _sqlite_path(url: str) -> Path | None:
    if not url.lower().startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def _in_temp_dir(path: Path) -> bool:
    return path.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())


@asynccontextmanager
async def fresh_store(url: str) -> AsyncIterator[tuple[StoreInterface, str]]:
    """The store for one run, connected, and its URL; closed (and a temporary SQLite file
    deleted) after.

    A SQLite URL inside the temporary directory gets a new file for every run, so that
    runs do not slow each other down; other URLs are used as given (each run uses fresh
    queue names).
    """
    options: dict[str, Any] = {}
    if url in VARIANTS:
        base, options = VARIANTS[url]
        url = resolve(base)
    path = _sqlite_path(url)
    fresh: Path | None = None
    if path is not None and _in_temp_dir(path):
        fresh = path.with_name(f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}")
        url = "sqlite:///" + str(fresh)
    store = open_store(url, **options)
    try:
        await store.connect()
        yield store, url
    finally:
        await store.close()
        if fresh is not None:
            _delete_sqlite_files(fresh)


def _delete_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


@asynccontextmanager
async def isolated_store(url: str, kind: str, **options: Any) -> AsyncIterator[StoreInterface]:
    """A store for one big run, removed wholesale afterwards: on PostgreSQL its own schema
    and on Redis its own key prefix (both named ``bench_<kind>_<random>``), elsewhere as
    :func:`fresh_store` makes it (a new SQLite file, deleted after). ``options`` go to
    :func:`open_store` for PostgreSQL and Redis (a longer ``timeout`` for a huge add)."""
    async with isolated_store_and_url(url, kind, **options) as (store, _):
        yield store


@asynccontextmanager
async def isolated_store_and_url(
    url: str, kind: str, **options: Any
) -> AsyncIterator[tuple[StoreInterface, str]]:
    """:func:`isolated_store` and the URL that opens the same data (for other processes)."""
    if url in VARIANTS:
        base, variant_options = VARIANTS[url]
        url, options = resolve(base), {**variant_options, **options}
    scheme = url.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres", "redis", "rediss"):
        async with fresh_store(url) as (store, store_url):
            yield store, store_url
        return
    name = f"bench_{kind}_{uuid.uuid4().hex[:8]}"
    joiner = "&" if "?" in url else "?"
    option = "schema" if scheme.startswith("postgres") else "prefix"
    isolated_url = f"{url}{joiner}{option}={name}"
    store = open_store(isolated_url, **options)
    await store.connect()
    try:
        yield store, isolated_url
    finally:
        await store.close()
        await _drop(url.partition("?")[0], scheme, name)


async def _drop(url: str, scheme: str, name: str) -> None:
    """Drop the schema, or unlink every key of the prefix, ``name``."""
    if scheme.startswith("postgres"):
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
        return
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        batch = []
        async for key in client.scan_iter(match=f"{name}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


async def analyze(store: StoreInterface) -> None:
    """Refresh the planner's statistics of a PostgreSQL store's job tables, as autovacuum
    does on a busy database (elsewhere nothing). A run on a fresh schema would otherwise
    be planned with the estimates of empty tables, which hide the plans that real
    statistics choose."""
    if not type(store).__module__.startswith("conveyor_stores.postgres"):
        return  # (before any import of asyncpg, which only the postgres extra installs)
    import asyncpg

    from conveyor_stores.postgres import PostgresStore
    from conveyor_stores.postgres.schema import quote_ident

    assert isinstance(store, PostgresStore)

    conn = await asyncpg.connect(store.dsn)
    try:
        schema = quote_ident(store.schema)
        for table in ("jobs", "deps", "group_lanes", "state_counts"):
            await conn.execute(f"ANALYZE {schema}.{table}")
    finally:
        await conn.close()
