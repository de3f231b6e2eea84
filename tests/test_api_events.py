"""QueueEvents as a user sees them, on the memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from conveyor_core import Job, Queue, QueueEvent, QueueEvents, Worker
from conveyor_stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as store:
        yield store


async def test_events_from_another_queue_object_reach_listeners(store: MemoryStore) -> None:
    producer = Queue("reports", store=store)
    seen: list[str] = []
    async with QueueEvents("reports", store=store) as events:
        events.on("completed", lambda event: seen.append(event.type))

        async def handle(job: Job) -> str:
            return "done"

        job = await producer.add("fetch", {"n": 1})
        async with Worker("reports", handle, store=store, drain_delay=0.05):
            completed = await events.wait_for("completed", job_id=job.id, timeout=5)
    assert completed.job_id == job.id
    assert completed.queue_name == "reports"
    assert completed.timestamp.tzinfo is not None
    assert seen == ["completed"]


async def test_async_iteration_yields_events_in_order(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    received: list[QueueEvent] = []
    async with QueueEvents("q", store=store) as events:
        job = await queue.add("a")
        await queue.pause()
        await queue.resume()
        with anyio.fail_after(5):
            async for event in events:
                received.append(event)
                if event.type == "resumed":
                    break
    types = [event.type for event in received]
    assert types == ["added", "waiting", "paused", "resumed"]
    assert received[0].job_id == job.id
    assert received[0].data == {"name": "a"}


async def test_async_callbacks_and_close_end_iteration(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    added: list[str | None] = []

    async def on_added(event: QueueEvent) -> None:
        await anyio.lowlevel.checkpoint()
        added.append(event.job_id)

    events = QueueEvents("q", store=store)
    events.on("added", on_added)
    async with events:
        job = await queue.add("a")
        await events.wait_for("waiting", job_id=job.id, timeout=5)
        await events.close()
        assert [event async for event in events] == []
    assert added == [job.id]


async def test_exception_in_async_with_block_comes_out_as_itself(store: MemoryStore) -> None:
    with pytest.raises(KeyError) as caught:
        async with QueueEvents("reports", store=store):
            raise KeyError("missing")
    assert caught.value.args == ("missing",)
