"""Big adds leave the event loop free for other tasks.

Validating and planning thousands of jobs, and writing them to SQLite, must not hold the
event loop's thread from start to end: heartbeats, lock renewals and other requests of
the same process keep running meanwhile. Each test counts how often another task got a
turn while one big call was in progress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from conveyor_core import FlowProducer, JobState, Queue
from conveyor_core.store import NewJob, StoreInterface
from conveyor_stores.memory import MemoryStore
from conveyor_stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

SIZE = 1700


async def turns_during(call: Callable[[], Awaitable[Any]]) -> int:
    """How many turns another task got while ``call`` ran."""
    turns = 0
    running = True

    async def other_task() -> None:
        nonlocal turns
        while running:
            await anyio.lowlevel.checkpoint()
            turns += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        await anyio.lowlevel.checkpoint()  # let it start
        before = turns
        await call()
        running = False
        during = turns - before
    return during


@pytest.fixture
async def memory() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as store:
        yield store


async def test_add_bulk_of_thousands_lets_other_tasks_run(memory: MemoryStore) -> None:
    queue = Queue("bulk", store=memory)
    items = [{"name": "noop", "data": {"i": i}} for i in range(SIZE)]
    jobs: list[Any] = []

    async def add() -> None:
        jobs.extend(await queue.add_bulk(items))

    assert await turns_during(add) >= 2
    assert len(jobs) == SIZE
    assert (await queue.get_job_counts())["waiting"] == SIZE


async def test_flow_of_thousands_lets_other_tasks_run(memory: MemoryStore) -> None:
    producer = FlowProducer(store=memory)
    tree = {
        "name": "parent",
        "queue_name": "parents",
        "children": [
            {"name": "child", "queue_name": "children", "data": {"i": i}} for i in range(SIZE - 1)
        ],
    }
    nodes: list[Any] = []

    async def add() -> None:
        nodes.append(await producer.add(tree))

    assert await turns_during(add) >= 2
    assert len(nodes[0].children) == SIZE - 1
    assert (await Queue("children", store=memory).get_job_counts())["waiting"] == SIZE - 1


def _news(count: int) -> list[list[NewJob]]:
    return [
        [
            NewJob(
                id=f"job-{i}",
                queue="bulk",
                name="noop",
                data="{}",
                opts="{}",
                state=JobState.WAITING,
                priority=0,
                lifo=False,
                delay=0.0,
            )
        ]
        for i in range(count)
    ]


async def test_memory_writes_thousands_of_jobs_without_holding_the_loop(
    memory: MemoryStore,
) -> None:
    store: StoreInterface = memory
    groups = _news(SIZE)

    async def add() -> None:
        assert await store.add_jobs(groups, 0.0) == [True] * SIZE

    assert await turns_during(add) >= 3
    assert (await store.get_counts("bulk"))[JobState.WAITING] == SIZE


async def test_sqlite_writes_thousands_of_jobs_without_holding_the_loop(
    sqlite_path: str,
) -> None:
    async with SQLiteStore(sqlite_path) as store:
        sqlite: StoreInterface = store
        groups = _news(SIZE)

        async def add() -> None:
            assert await sqlite.add_jobs(groups, 0.0) == [True] * SIZE

        # The store's own call, without the core's planning: the write itself must not
        # run on the event loop's thread.
        assert await turns_during(add) >= 3
        assert (await sqlite.get_counts("bulk"))[JobState.WAITING] == SIZE
