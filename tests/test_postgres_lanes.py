"""PostgresStore's take by lanes while another transaction holds a lane's row: a take
that holds a lane already steps over a lane held elsewhere instead of waiting for it (two
takes never wait on each other in a circle), a take that holds none waits for it (one
without group limits, made in one set, never waits), and a take that waited for a lane
looks again when the other transaction served or emptied it meanwhile.

Each test gets its own schema, dropped afterwards from a separate connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import pytest

asyncpg = pytest.importorskip("asyncpg")

from conveyor_core.models import JobState  # noqa: E402
from conveyor_core.store import NewJob, TakeResult  # noqa: E402
from conveyor_stores.postgres import PostgresStore  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

NOW = 1_000_000.0


@pytest.fixture
async def store(pg_dsn: str, pg_schema: str, pg_conn: Any) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=3) as s:
        # Group limits (that hold nothing back here) send takes down the one-lane-at-a-time path.
        await s.set_group_limits("q", 10, None)
        yield s


def job(job_id: str, group: str | None = None) -> list[NewJob]:
    return [
        NewJob(
            id=job_id,
            queue="q",
            name="n",
            data="{}",
            opts="{}",
            state=JobState.WAITING,
            group_id=group,
        )
    ]


async def take(store: PostgresStore, limit: int) -> list[str]:
    with anyio.fail_after(20):
        taken = await store.take_jobs("q", limit=limit, token="t", lock_until=NOW + 60, now=NOW)
    return [record.id for record in taken.jobs]


@asynccontextmanager
async def holding(
    pg_conn: Any, schema: str, table: str, column: str, key: str
) -> AsyncIterator[None]:
    """The row of queue "q" whose ``column`` is ``key`` locked by a transaction of
    ``pg_conn`` while the body runs; it commits when the body ends."""
    async with pg_conn.transaction():
        await pg_conn.execute(
            f'SELECT 1 FROM "{schema}".{table} WHERE queue = $1 AND {column} = $2 FOR UPDATE',
            "q",
            key,
        )
        yield


async def take_while_lane_a_is_held(
    store: PostgresStore,
    pg_conn: Any,
    schema: str,
    meanwhile: Callable[[], Awaitable[object]] | None = None,
) -> TakeResult:
    """A take of one job that starts while another transaction holds lane a's row and
    waits for it; ``meanwhile`` runs in that transaction, which then commits."""
    results: list[TakeResult] = []

    async def first() -> None:
        with anyio.fail_after(20):
            taken = await store.take_jobs("q", limit=1, token="t", lock_until=NOW + 60, now=NOW)
        results.append(taken)

    # The lock is let go (committed) before the task group waits for the take.
    async with (
        anyio.create_task_group() as tg,
        holding(pg_conn, schema, "group_lanes", "group_id", "a"),
    ):
        tg.start_soon(first)
        await anyio.sleep(0.5)  # the take waits for lane a's row
        if meanwhile is not None:
            await meanwhile()
    return results[0]


async def test_a_take_holding_the_own_lane_steps_over_a_held_lane(
    store: PostgresStore, pg_conn: Any, pg_schema: str
) -> None:
    await store.add_jobs([job("own"), job("a1", "a"), job("b1", "b")], NOW)
    async with holding(pg_conn, pg_schema, "group_lanes", "group_id", "a"):
        assert await take(store, 3) == ["own", "b1"]
    assert await take(store, 3) == ["a1"]


async def test_a_take_holding_a_group_lane_steps_over_a_held_lane(
    store: PostgresStore, pg_conn: Any, pg_schema: str
) -> None:
    await store.add_jobs([job("a1", "a"), job("b1", "b"), job("c1", "c")], NOW)
    async with holding(pg_conn, pg_schema, "group_lanes", "group_id", "b"):
        assert await take(store, 3) == ["a1", "c1"]
    assert await take(store, 3) == ["b1"]


async def test_a_take_that_waited_for_a_lane_served_meanwhile_looks_again(
    store: PostgresStore, pg_conn: Any, pg_schema: str
) -> None:
    # Queue "other" has a lane of group "a" too, written first and never served.
    await store.add_jobs([[replace(job("x1", "a")[0], queue="other")]], NOW)
    await store.add_jobs([job("a1", "a"), job("a2", "a"), job("b1", "b")], NOW)

    async def serve_a() -> object:
        # Another transaction serves lane a meanwhile: it goes last in the rotation.
        return await pg_conn.execute(
            f'UPDATE "{pg_schema}".group_lanes SET served = 1000000 '
            "WHERE queue = $1 AND group_id = $2",
            "q",
            "a",
        )

    taken = await take_while_lane_a_is_held(store, pg_conn, pg_schema, serve_a)
    assert [record.id for record in taken.jobs] == ["b1"]


async def test_a_take_steps_over_a_lane_whose_job_another_transaction_holds(
    store: PostgresStore, pg_conn: Any, pg_schema: str
) -> None:
    await store.add_jobs([job("a1", "a"), job("b1", "b")], NOW)
    async with holding(pg_conn, pg_schema, "jobs", "id", "a1"):
        assert await take(store, 2) == ["b1"]
    assert await take(store, 2) == ["a1"]


async def test_a_take_holding_no_lane_waits_for_a_held_one(
    store: PostgresStore, pg_conn: Any, pg_schema: str
) -> None:
    await store.add_jobs([job("a1", "a")], NOW)
    taken = await take_while_lane_a_is_held(store, pg_conn, pg_schema)
    assert [record.id for record in taken.jobs] == ["a1"]


async def test_a_take_that_waited_for_a_lane_emptied_meanwhile_reports_no_limit(
    store: PostgresStore, pg_conn: Any, pg_schema: str
) -> None:
    await store.set_group_limits("q", 1, None)
    await store.add_jobs([job("a1", "a"), job("a2", "a")], NOW)
    assert await take(store, 1) == ["a1"]  # group a is at its concurrency

    async def remove_a2() -> object:
        # Another transaction removes lane a's last waiting job meanwhile.
        return await pg_conn.execute(f'SELECT "{pg_schema}".remove_job($1, $2, $3)', "q", "a2", NOW)

    taken = await take_while_lane_a_is_held(store, pg_conn, pg_schema, remove_a2)
    assert [record.id for record in taken.jobs] == []
    assert taken.concurrency_limited is False, "no job was held back"


async def test_a_take_without_group_limits_passes_over_a_held_lane(
    store: PostgresStore, pg_conn: Any, pg_schema: str
) -> None:
    # Without group limits a take is made in one set, which never waits for a lane.
    await store.set_group_limits("q", None, None)
    await store.add_jobs([job("a1", "a"), job("b1", "b")], NOW)
    async with holding(pg_conn, pg_schema, "group_lanes", "group_id", "a"):
        assert await take(store, 2) == ["b1"]
    assert await take(store, 2) == ["a1"]
