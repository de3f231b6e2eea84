"""Flows written before dependency pages and counts existed keep exact counts and their
order after the upgrade: the SQLite and PostgreSQL migrations fill the counters from
the records, and Redis builds a parent's order set and counters on first use."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg
import pytest
import redis.asyncio

from conveyor_core.models import JobState, ParentPolicy
from conveyor_core.store import Completion, Failure, NewJob, StoreInterface
from conveyor_stores.postgres import PostgresStore
from conveyor_stores.postgres import schema as pg_schema_module
from conveyor_stores.redis import RedisStore
from conveyor_stores.redis.store import queue_key_base
from conveyor_stores.sqlite import SQLiteStore
from conveyor_stores.sqlite import schema as sqlite_schema

pytestmark = pytest.mark.anyio

NOW = 1_000.0
CHILDREN = [f"c{i}" for i in range(5)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _write_flow(store: StoreInterface) -> None:
    """A parent with five children: two completed, one failed and ignored, two pending."""
    parent = NewJob("p", "parents", "p", "{}", "{}", JobState.WAITING_CHILDREN)
    children = [
        NewJob(
            child,
            "kids",
            "c",
            "{}",
            "{}",
            JobState.WAITING,
            parent_id="p",
            parent_queue="parents",
            parent_policy=ParentPolicy.IGNORE if child == "c2" else ParentPolicy.FAIL,
        )
        for child in CHILDREN
    ]
    assert await store.add_jobs([[parent, *children]], NOW) == [True]
    taken = await store.take_jobs("kids", limit=3, token="t", lock_until=NOW + 30, now=NOW)
    assert [job.id for job in taken.jobs] == ["c0", "c1", "c2"]
    done = [Completion("c0", "t", "0"), Completion("c1", "t", "1")]
    assert await store.complete_jobs("kids", done, NOW) == [True, True]
    assert await store.fail_jobs("kids", [Failure("c2", "t", "broke")], NOW) == [True]


async def _check_upgraded(store: StoreInterface) -> None:
    counts = await store.get_dependency_counts("parents", "p")
    assert counts == {"pending": 2, "processed": 2, "failed": 0, "ignored": 1}
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.get_dependency_page("parents", "p", cursor=cursor, limit=2)
        seen.extend(dep.id for dep in page.dependencies)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == CHILDREN
    taken = await store.take_jobs("kids", limit=1, token="u", lock_until=NOW + 30, now=NOW)
    assert [job.id for job in taken.jobs] == ["c3"]
    assert await store.complete_jobs("kids", [Completion("c3", "u", "3")], NOW) == [True]
    counts = await store.get_dependency_counts("parents", "p")
    assert counts == {"pending": 1, "processed": 3, "failed": 0, "ignored": 1}


async def test_sqlite_migration_counts_existing_dependencies(sqlite_path: str) -> None:
    async with SQLiteStore(sqlite_path) as old:
        await _write_flow(old)
    # Take the file back to schema version 3: no order index, no counter columns (and
    # none of the columns later steps add).
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        for index in ("dependencies_order", "jobs_own_waiting", "jobs_group_waiting"):
            conn.execute(f"DROP INDEX {index}")
        for column in (
            "deps_processed",
            "deps_failed",
            "deps_ignored",
            "cancel_reason",
            "group_id",
            "queue_key",
        ):
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        for table in ("parent_links", "deduplication", "lanes"):
            conn.execute(f"DROP TABLE {table}")
        for column in (
            "concurrency",
            "limited_until",
            "group_concurrency",
            "group_rate_max",
            "group_rate_duration",
            "served",
        ):
            conn.execute(f"ALTER TABLE queues DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 3")
    finally:
        conn.close()
    async with SQLiteStore(sqlite_path) as store:
        assert store.migrations_applied == len(sqlite_schema.MIGRATIONS) - 3
        await _check_upgraded(store)


async def test_postgres_migration_counts_existing_dependencies(
    pg_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        with monkeypatch.context() as patched:
            # The functions of this version, installed with every step, read what
            # migrations 5, 7, 8 and 10 add: the old schema gets it early (those
            # migrations are idempotent), and stays without the large-flow counters of
            # migration 4.
            first, (version, second) = pg_schema_module.MIGRATIONS[:2]
            later = ("0005_cancel", "0007_dag", "0008_flow_control", "0010_groups")
            early = "".join(pg_schema_module.migration_sql(name) for name in later)
            early = second + early + pg_schema_module.all_functions_sql()
            patched.setattr(pg_schema_module, "MIGRATIONS", [first, (version, early)])
            async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as old:
                await _write_flow(old)
        async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as store:
            await _check_upgraded(store)
    finally:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        finally:
            await conn.close()


async def test_redis_builds_order_and_counts_of_parents_written_before(
    redis_url: str, redis_prefix: str
) -> None:
    client: Any = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with RedisStore(redis_url, prefix=redis_prefix) as store:
            await _write_flow(store)
            # As a parent written before the order set and the counters existed holds it.
            base = queue_key_base(redis_prefix, "parents")
            await client.hdel(base + "job:p", "dv", "dpro", "dfai", "dign")
            await client.delete(base + "dord:p")
            await _check_upgraded(store)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
