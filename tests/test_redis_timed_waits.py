"""A worker's timed wait on Redis ends at its timeout by the worker's clock: Redis ends a
blocking read's timeout only at its next timer tick (every ``1/hz`` seconds), which
would make every timed wait late by up to that (a delayed job's run time, a scheduler's
tick). These tests run a private server with ``hz 1``, a tick a second."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from private_redis import private_redis

from conveyor_core import Queue, StoreConfigurationWarning
from conveyor_stores.redis import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def server_url(tmp_path: Path) -> AsyncIterator[str]:
    with private_redis(tmp_path, "--hz", "1") as server:
        yield server.url


async def _keys(url: str) -> list[str]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(await client.keys("*"))
    finally:
        await client.aclose()


async def test_timed_waits_end_at_their_timeouts_and_leave_no_key(server_url: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreConfigurationWarning)
        async with RedisStore(server_url, prefix="timed") as store:
            # Ten waits of 50 ms: about half a second in all, where ending each at the
            # server's next tick would take about five.
            with anyio.fail_after(2.5):
                for _ in range(10):
                    await store.wait_for_work("q", 0.05)
            assert await _keys(server_url) == []


async def test_a_wait_still_ends_at_once_when_work_arrives(server_url: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreConfigurationWarning)
        async with RedisStore(server_url, prefix="timed") as store:
            queue = Queue("q", store=store)
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(store.wait_for_work, "q", 30.0)
                    await anyio.sleep(0.1)
                    job = await queue.add("job", {})
            # The add woke the wait; only the queue's own keys are left.
            keys = await _keys(server_url)
            assert keys and not [key for key in keys if ":wake:" in key]
            assert await queue.get_job(job.id) is not None
