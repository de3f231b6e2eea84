"""``RedisStore`` against server-level faults, each on a private server of its own: a
full memory, a dataset still loading after a restart, a refused write, a frozen
server. Every fault reaches the caller as a Conveyor error, in bounded time, with
nothing half written."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
import redis.asyncio
from private_redis import PrivateRedis, ping, private_redis

from conveyor_core import (
    ConveyorError,
    FlowProducer,
    Queue,
    StoreCommandError,
    StoreOutOfMemoryError,
    StoreUnavailableError,
)
from conveyor_core.models import JobState
from conveyor_core.store import NewJob
from conveyor_stores import open_store
from conveyor_stores.redis import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

PREFIX = "faults"


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    return tmp_path


async def _snapshot(url: str) -> dict[str, bytes]:
    """Every key of the server with its serialized value."""
    async with redis.asyncio.Redis.from_url(url) as client:
        keys = sorted([key async for key in client.scan_iter(count=1000)])
        values = [await client.dump(key) for key in keys]
    return dict(zip(keys, values, strict=True))


FLOW = {
    "name": "ship",
    "queue_name": "orders",
    "data": {"order": 7},
    "children": [
        {"name": "pick", "queue_name": "items", "data": {"item": 1}},
        {"name": "pack", "queue_name": "items", "data": {"item": 2}},
    ],
}


async def test_a_full_memory_refuses_adds_and_flows_and_writes_nothing(server_dir: Path) -> None:
    with private_redis(server_dir, "--maxmemory-policy", "noeviction") as server:
        async with RedisStore(server.url, prefix=PREFIX) as store:
            queue = Queue("orders", store=store)
            await queue.add("first", {"n": 1})
            async with redis.asyncio.Redis.from_url(server.url) as client:
                used = int((await client.info("memory"))["used_memory"])
                await client.config_set("maxmemory", used // 2)
            before = await _snapshot(server.url)

            with pytest.raises(StoreOutOfMemoryError) as added:
                await queue.add("second", {"n": 2})
            with pytest.raises(StoreOutOfMemoryError) as flowed:
                await FlowProducer(store=store).add_bulk([FLOW, {**FLOW, "name": "ship-2"}])

            for error in (added.value, flowed.value):
                text = str(error)
                assert isinstance(error, ConveyorError)
                assert "out of memory" in text and "nothing was written" in text
                assert "add_jobs" in text and "RespError" not in repr(error)
            assert await _snapshot(server.url) == before
            assert [job.name for job in await queue.get_jobs(["waiting"])] == ["first"]

            # Once the server has room again, the same calls go through.
            async with redis.asyncio.Redis.from_url(server.url) as client:
                await client.config_set("maxmemory", 0)
            await queue.add("second", {"n": 2})
            nodes = await FlowProducer(store=store).add_bulk([FLOW])
            assert len(nodes[0].children) == 2


async def test_an_unexpected_error_reply_names_the_refused_call(server_dir: Path) -> None:
    with private_redis(server_dir) as server:
        async with RedisStore(server.url, prefix=PREFIX) as store:
            queue = Queue("orders", store=store)
            # The store's server became a read-only replica (a failover, say).
            spare = PrivateRedis(server_dir)
            async with redis.asyncio.Redis.from_url(server.url) as client:
                await client.replicaof("127.0.0.1", spare.port)
            with pytest.raises(StoreCommandError) as refused:
                await queue.add("first", {"n": 1})
            text = str(refused.value)
            assert "add_jobs" in text and "READONLY" in text
            assert "RespError" not in text and "_resp" not in text
            # Reads still work on a replica.
            assert await queue.get_job_counts() is not None


async def _fill_and_save(url: str, keys: int) -> None:
    """Write ``keys`` small keys outside the store's prefix and save them to disk."""
    async with redis.asyncio.Redis.from_url(url) as client:
        for start in range(0, keys, 5_000):
            async with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + 5_000, keys)):
                    pipe.set(f"ballast:{i}", "x" * 20)
                await pipe.execute()
        await client.save()


def _restart_into_a_slow_load(server: PrivateRedis, delay_us: int) -> None:
    """Restart the server so that it loads its saved keys ``delay_us`` apart, and wait
    until it answers ``LOADING``."""
    server.stop()
    server.start(
        "--key-load-delay",
        str(delay_us),
        "--loading-process-events-interval-bytes",
        "1024",
        ready=("-LOADING",),
    )


async def test_an_add_while_the_server_loads_goes_through_after_the_load(
    server_dir: Path,
) -> None:
    with private_redis(server_dir) as server:
        await _fill_and_save(server.url, 20_000)
        async with RedisStore(server.url, prefix=PREFIX, loading_timeout=60) as store:
            queue = Queue("orders", store=store)
            _restart_into_a_slow_load(server, delay_us=100)  # about 2 s of loading
            assert (ping(server.port) or "").startswith("-LOADING")
            added: list[str] = []

            async def connect_and_add() -> None:
                # A store that connects while the server loads waits for the load too.
                async with RedisStore(server.url, prefix=PREFIX) as late:
                    added.append((await Queue("orders", store=late).add("late", {})).id)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(connect_and_add)
                    added.append((await queue.add("during-load", {"n": 1})).id)
            assert ping(server.port) == "+PONG"
            names = {job.name for job in await queue.get_jobs(["waiting"])}
            assert names == {"during-load", "late"} and len(added) == 2
            async with redis.asyncio.Redis.from_url(server.url) as client:
                assert await client.exists("ballast:19999") == 1


async def test_a_load_longer_than_the_loading_timeout_makes_the_store_unavailable(
    server_dir: Path,
) -> None:
    with private_redis(server_dir) as server:
        await _fill_and_save(server.url, 20_000)
        async with RedisStore(server.url, prefix=PREFIX, loading_timeout=1) as store:
            _restart_into_a_slow_load(server, delay_us=2_000)  # about 40 s of loading
            queue = Queue("orders", store=store)
            with anyio.fail_after(20), pytest.raises(StoreUnavailableError, match="loading"):
                await queue.add("during-load", {"n": 1})
            assert (ping(server.port) or "").startswith("-LOADING")


def _new_job(job_id: str) -> NewJob:
    return NewJob(
        id=job_id, queue="orders", name="task", data="{}", opts="{}", state=JobState.WAITING
    )


async def test_calls_to_a_frozen_server_fail_in_bounded_time_and_close_returns(
    server_dir: Path,
) -> None:
    with private_redis(server_dir) as server:
        try:
            store = RedisStore(server.url, prefix=PREFIX, command_timeout=1)
            await store.connect()
            await store.add_jobs([[_new_job("before")]], time.time())
            server.freeze()
            with anyio.fail_after(15):
                with pytest.raises(StoreUnavailableError, match="did not answer"):
                    await store.add_jobs([[_new_job("frozen")]], time.time())
                with pytest.raises(StoreUnavailableError):
                    await store.get_job("orders", "before")
                await store.wait_for_work("orders", 0.2)
            with anyio.fail_after(5):
                await store.close()
        finally:
            server.thaw()
        # The add that timed out ran whole or not at all.
        async with RedisStore(server.url, prefix=PREFIX) as store:
            before = await store.get_job("orders", "before")
            frozen = await store.get_job("orders", "frozen")
            counts = await store.get_counts("orders")
        assert before is not None and before.state is JobState.WAITING
        assert counts[JobState.WAITING] == (1 if frozen is None else 2)
        if frozen is not None:
            assert frozen.state is JobState.WAITING and frozen.name == "task"


def test_timeouts_must_be_positive() -> None:
    for option in ("command_timeout", "loading_timeout"):
        with pytest.raises(ValueError, match=option):
            RedisStore("redis://127.0.0.1:6379/0", **{option: 0})


async def test_timeouts_in_the_url_bound_calls_of_a_store_opened_by_url(
    server_dir: Path,
) -> None:
    with private_redis(server_dir) as server:
        store = open_store(f"{server.url}?command_timeout=1&loading_timeout=5", prefix=PREFIX)
        assert isinstance(store, RedisStore)
        assert (store.command_timeout, store.loading_timeout) == (1.0, 5.0)
        try:
            await store.connect()
            await store.wait_for_work("orders", 0.05)
            server.freeze()
            with anyio.fail_after(15), pytest.raises(StoreUnavailableError, match="within 1 s"):
                await store.add_jobs([[_new_job("frozen")]], time.time())
            with anyio.fail_after(5):
                await store.close()
        finally:
            server.thaw()


def test_a_timeout_in_the_url_must_be_a_positive_number() -> None:
    with pytest.raises(ValueError, match="command_timeout") as refused:
        RedisStore("redis://:s3cret@127.0.0.1:6379/0?command_timeout=soon")
    assert "s3cret" not in str(refused.value)
