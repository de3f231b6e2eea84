"""GROUPS and TAKE BY LANES on ``RedisStore``, driven through the store protocol directly
against the real server: lanes served round-robin, per-group concurrency and rate windows,
counts, and every path that puts a grouped job into ``waiting`` or takes it out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio

from conveyor_core.models import JobState
from conveyor_core.store import Completion, Failure, GroupLimits, NewJob, Release, TakeResult
from conveyor_stores.redis import RedisStore

pytestmark = pytest.mark.anyio

Q = "lanes"
NOW = 1_000.0


async def delete_prefix(url: str, prefix: str) -> None:
    async with redis.asyncio.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    async with RedisStore(redis_url, prefix=redis_prefix) as store:
        try:
            yield store
        finally:
            await delete_prefix(redis_url, redis_prefix)


@pytest.fixture
async def second(store: RedisStore, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    async with RedisStore(redis_url, prefix=redis_prefix) as second:
        yield second


def new(
    job_id: str,
    group: str | None = None,
    *,
    state: JobState = JobState.WAITING,
    priority: int = 0,
    delay: float = 0.0,
    queue: str = Q,
    parent: str | None = None,
) -> NewJob:
    return NewJob(
        id=job_id,
        queue=queue,
        name="n",
        data="{}",
        opts="{}",
        state=state,
        priority=priority,
        delay=delay,
        group_id=group,
        parent_id=parent,
        parent_queue=None if parent is None else queue,
    )


async def add(store: RedisStore, *jobs: NewJob, now: float = NOW) -> None:
    await store.add_jobs([[job] for job in jobs], now)


async def take(
    store: RedisStore,
    limit: int = 1,
    *,
    now: float = NOW,
    token: str = "t",
    rate_limit: tuple[int, float] | None = None,
) -> TakeResult:
    return await store.take_jobs(
        Q, limit=limit, token=token, lock_until=now + 30, now=now, rate_limit=rate_limit
    )


def ids(result: TakeResult) -> list[str]:
    return [job.id for job in result.jobs]


async def take_all(store: RedisStore, now: float = NOW) -> list[str]:
    out: list[str] = []
    while True:
        got = ids(await take(store, now=now))
        if not got:
            return out
        out += got


async def complete(store: RedisStore, job_ids: Sequence[str], token: str = "t") -> None:
    done = await store.complete_jobs(Q, [Completion(i, token, "null") for i in job_ids], NOW)
    assert all(done)


def zero() -> dict[JobState, int]:
    return {state: 0 for state in JobState}


def counts(**by_state: int) -> dict[JobState, int]:
    out = zero()
    for name, n in by_state.items():
        out[JobState(name.replace("_", "-"))] = n
    return out


async def test_group_id_is_kept_and_read_back(store: RedisStore) -> None:
    await add(store, new("a", "g1"), new("b"))
    a, b = await store.get_job(Q, "a"), await store.get_job(Q, "b")
    assert a is not None and a.group_id == "g1"
    assert b is not None and b.group_id is None
    taken = await take(store, 2)
    assert {job.id: job.group_id for job in taken.jobs} == {"a": "g1", "b": None}


async def test_round_robin_between_uneven_groups_and_the_own_lane(store: RedisStore) -> None:
    await add(store, *(new(f"a{i}", "A") for i in range(4)))
    await add(store, new("b0", "B"))
    await add(store, *(new(f"c{i}", "C") for i in range(2)))
    await add(store, *(new(f"o{i}") for i in range(3)))
    # All served 0: the own lane (empty id) first, then A, B, C; each served lane goes
    # last; a lane without waiting jobs drops out.
    assert await take_all(store) == [
        "o0", "a0", "b0", "c0", "o1", "a1", "c1", "o2", "a2", "a3"
    ]  # fmt: skip


async def test_one_take_returns_the_jobs_in_lane_order(store: RedisStore) -> None:
    await add(store, *(new(f"a{i}", "A") for i in range(3)))
    await add(store, *(new(f"b{i}", "B") for i in range(3)))
    assert ids(await take(store, 4)) == ["a0", "b0", "a1", "b1"]
    # A group served earlier stays behind a group that comes new (served 0).
    await add(store, new("c0", "C"))
    assert ids(await take(store, 3)) == ["c0", "a2", "b2"]


async def test_a_lane_keeps_priority_then_entry_order(store: RedisStore) -> None:
    await add(store, new("low", "A", priority=5), new("high", "A", priority=1), new("next", "A"))
    assert await take_all(store) == ["next", "high", "low"]


async def test_a_plain_take_changes_no_served_number(store: RedisStore) -> None:
    await add(store, *(new(f"o{i}") for i in range(3)))
    assert ids(await take(store, 3)) == ["o0", "o1", "o2"]
    # The own lane was never served by lanes: it still comes first among equals.
    await add(store, new("a0", "A"), new("o3"))
    assert ids(await take(store, 2)) == ["o3", "a0"]


async def test_group_concurrency_holds_a_group_back(store: RedisStore) -> None:
    await store.set_group_limits(Q, 1, None)
    assert await store.get_group_limits(Q) == GroupLimits(concurrency=1)
    await add(store, *(new(f"a{i}", "A") for i in range(3)))
    await add(store, new("b0", "B"))
    assert ids(await take(store, 5)) == ["a0", "b0"]
    held = await take(store, 5)
    assert held.jobs == [] and held.concurrency_limited
    await complete(store, ["a0"])
    assert ids(await take(store, 5)) == ["a1"]
    await store.set_group_limits(Q, None, None)
    assert await store.get_group_limits(Q) == GroupLimits()
    assert ids(await take(store, 5)) == ["a2"]


async def test_a_held_group_does_not_stop_the_others(store: RedisStore) -> None:
    await store.set_group_limits(Q, 1, None)
    await add(store, *(new(f"a{i}", "A") for i in range(2)))
    assert ids(await take(store)) == ["a0"]
    await add(store, new("b0", "B"), new("b1", "B"), new("o0"))
    taken = await take(store, 5)
    assert ids(taken) == ["o0", "b0"] and not taken.concurrency_limited


async def test_group_concurrency_across_two_store_objects(
    store: RedisStore, second: RedisStore
) -> None:
    await store.set_group_limits(Q, 2, None)
    for g in "ABC":
        await add(store, *(new(f"{g}{i}", g) for i in range(10)))

    async def racer(s: RedisStore, token: str) -> list[str]:
        got: list[str] = []
        for _ in range(5):
            got += ids(await take(s, 3, token=token))
        return got

    results = await asyncio.gather(*(racer(s, f"t{i}") for i, s in enumerate([store, second] * 3)))
    taken = [job_id for got in results for job_id in got]
    assert len(taken) == len(set(taken)) == 6
    for g in "ABC":
        assert sum(job_id.startswith(g) for job_id in taken) == 2
    assert (await store.get_group_counts(Q))["A"] == counts(waiting=8, active=2)


async def test_group_rate_window(store: RedisStore) -> None:
    await store.set_group_limits(Q, None, (2, 10.0))
    assert await store.get_group_limits(Q) == GroupLimits(rate_limit=(2, 10.0))
    await add(store, *(new(f"a{i}", "A") for i in range(5)))
    await add(store, new("b0", "B"))
    assert ids(await take(store, 5)) == ["a0", "b0", "a1"]
    held = await take(store, 5, now=NOW + 5)
    assert held.jobs == [] and held.rate_limited_until == NOW + 10
    assert not held.concurrency_limited
    # The window ends; the next one starts at the first take after it.
    assert ids(await take(store, 5, now=NOW + 12)) == ["a2", "a3"]
    held = await take(store, 5, now=NOW + 13)
    assert held.jobs == [] and held.rate_limited_until == NOW + 22


async def test_the_queue_rate_limit_bounds_a_take_by_lanes(store: RedisStore) -> None:
    await add(store, *(new(f"a{i}", "A") for i in range(3)))
    await add(store, *(new(f"b{i}", "B") for i in range(3)))
    assert ids(await take(store, 5, rate_limit=(3, 10.0))) == ["a0", "b0", "a1"]
    held = await take(store, 5, rate_limit=(3, 10.0))
    assert held.jobs == [] and held.rate_limited_until == NOW + 10


async def test_counts_include_grouped_jobs(store: RedisStore) -> None:
    await add(store, new("a0", "A"), new("a1", "A", state=JobState.DELAYED, delay=5))
    await add(store, new("b0", "B"), new("o0"), new("o1", priority=1))
    assert await store.get_group_counts(Q) == {
        "A": counts(waiting=1, delayed=1),
        "B": counts(waiting=1),
    }
    assert (await store.get_counts(Q))[JobState.WAITING] == 4
    listed = await store.get_jobs(Q, [JobState.WAITING], 0, None)
    assert [job.id for job in listed] == ["a0", "b0", "o0", "o1"]
    assert [job.id for job in await store.get_jobs(Q, [JobState.WAITING], 1, 2)] == ["b0", "o0"]
    assert [
        job.id for job in await store.get_jobs(Q, [JobState.WAITING, JobState.DELAYED], 3, 4)
    ] == ["o1", "a1"]
    assert await store.list_queues() == [Q]
    assert ids(await take(store, 2)) == ["o0", "a0"]
    await complete(store, ["a0"])
    assert await store.get_group_counts(Q) == {
        "A": counts(delayed=1, completed=1),
        "B": counts(waiting=1),
    }
    page = await store.search_jobs(
        Q, text=None, name=None, states=[JobState.WAITING], limit=10, cursor=None
    )
    assert {job.id for job in page.jobs} == {"b0", "o1"}


async def test_a_queue_with_only_grouped_waiting_jobs_is_listed(store: RedisStore) -> None:
    await add(store, new("a0", "A"))
    assert await store.list_queues() == [Q]


async def test_remove_retry_and_promote_of_grouped_jobs(store: RedisStore) -> None:
    await add(
        store, new("a0", "A"), new("a1", "A"), new("d0", "A", state=JobState.DELAYED, delay=60)
    )
    assert await store.remove_job(Q, "a0")
    assert await store.get_group_counts(Q) == {"A": counts(waiting=1, delayed=1)}
    assert await store.remove_job(Q, "a1")
    assert await store.get_group_counts(Q) == {"A": counts(delayed=1)}
    assert (await take(store)).jobs == []
    await store.promote_job(Q, "d0", NOW)
    assert await store.get_group_counts(Q) == {"A": counts(waiting=1)}
    [job] = (await take(store)).jobs
    assert job.id == "d0"
    done = await store.fail_jobs(Q, [Failure("d0", "t", "boom")], NOW)
    assert done == [True]
    assert await store.get_group_counts(Q) == {"A": counts(failed=1)}
    await store.retry_job(Q, "d0", NOW)
    assert await store.get_group_counts(Q) == {"A": counts(waiting=1)}
    assert ids(await take(store)) == ["d0"]
    await store.fail_jobs(Q, [Failure("d0", "t", "again", retry_at=NOW)], NOW)
    assert ids(await take(store)) == ["d0"]
    await store.fail_jobs(Q, [Failure("d0", "t", "later", retry_at=NOW + 5)], NOW)
    assert await store.get_group_counts(Q) == {"A": counts(delayed=1)}
    # A due delayed job is promoted by the take into its group's lane.
    assert ids(await take(store, now=NOW + 6)) == ["d0"]
    await store.release_jobs(Q, [Release("d0", "t")], NOW)
    assert await store.get_group_counts(Q) == {"A": counts(waiting=1)}
    assert ids(await take(store)) == ["d0"]
    # A stalled job goes back to its lane.
    outcome = await store.recover_stalled(Q, NOW + 60, 5)
    assert [o.id for o in outcome] == ["d0"]
    assert await store.get_group_counts(Q) == {"A": counts(waiting=1)}
    await store.remove_job(Q, "d0")
    assert await store.get_group_counts(Q) == {}
    assert (await store.get_counts(Q)) == zero()


async def test_change_priority_reorders_within_the_lane(store: RedisStore) -> None:
    await add(store, new("a0", "A"), new("a1", "A"))
    await store.change_priority(Q, "a1", -1, False)
    assert await store.get_group_counts(Q) == {"A": counts(waiting=2)}
    assert await take_all(store) == ["a1", "a0"]


async def test_a_released_parent_enters_its_lane(store: RedisStore) -> None:
    parent = new("p", "P", state=JobState.WAITING_CHILDREN)
    child = new("c", None, parent="p")
    await store.add_jobs([[parent, child]], NOW)
    assert await store.get_group_counts(Q) == {"P": counts(waiting_children=1)}
    assert ids(await take(store)) == ["c"]
    await complete(store, ["c"])
    assert await store.get_group_counts(Q) == {"P": counts(waiting=1)}
    assert ids(await take(store)) == ["p"]


async def test_drain_clean_and_cancel(store: RedisStore) -> None:
    await add(store, new("a0", "A"), new("o0"), new("b0", "B"))
    assert await store.clean(Q, JobState.WAITING, NOW, 1) == ["a0"]
    assert await store.drain(Q, False, NOW) == 2
    assert await store.get_group_counts(Q) == {}
    assert (await store.get_counts(Q)) == zero()
    await add(store, new("a1", "A"))
    assert await store.cancel_job(Q, "a1", "cancelled", NOW) == 1
    assert await store.get_group_counts(Q) == {"A": counts(failed=1)}
    assert (await take(store)).jobs == []


async def test_obliterate_drops_every_group_key(
    store: RedisStore, redis_url: str, redis_prefix: str
) -> None:
    await store.set_group_limits(Q, 2, (5, 1.0))
    await add(store, new("a0", "A"), new("a1", "A"), new("b0", "B"), new("o0"))
    assert len(ids(await take(store, 2))) == 2
    await store.obliterate(Q, True)
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        left = [key async for key in client.scan_iter(match=f"{redis_prefix}:{{*", count=1000)]
    # The events stream stays for listeners, as for any obliterated queue.
    assert [key.decode() for key in left] == [f"{redis_prefix}:{{{Q}}}:events"]
    assert await store.get_group_limits(Q) == GroupLimits()
    assert await store.get_group_counts(Q) == {}


async def test_dedup_dag_and_scheduler_adds_keep_the_group(store: RedisStore) -> None:
    from conveyor_core.store import DeduplicationKey

    await store.add_deduplicated(new("x", "A"), DeduplicationKey("k"), NOW)
    await store.add_dag([new("y", "B"), new("z", "A", state=JobState.DELAYED, delay=1)], [], NOW)
    await store.upsert_scheduler(Q, "s", "{}", "{}", NOW, NOW)
    assert await store.fire_scheduler(Q, "s", NOW, None, [new("w", "C")], NOW)
    assert await store.get_group_counts(Q) == {
        "A": counts(waiting=1, delayed=1),
        "B": counts(waiting=1),
        "C": counts(waiting=1),
    }
    for job_id, group in (("x", "A"), ("y", "B"), ("z", "A"), ("w", "C")):
        job = await store.get_job(Q, job_id)
        assert job is not None and job.group_id == group
    assert await take_all(store, now=NOW + 2) == ["x", "y", "w", "z"]


async def test_retention_and_stalls_keep_the_group_counts(store: RedisStore) -> None:
    gone = NewJob(
        id="k0",
        queue=Q,
        name="n",
        data="{}",
        opts="{}",
        state=JobState.WAITING,
        keep_completed=0,
        group_id="A",
    )
    await add(store, gone, new("k1", "A"))
    assert ids(await take(store, 2)) == ["k0", "k1"]
    await complete(store, ["k0"])
    assert await store.get_group_counts(Q) == {"A": counts(active=1)}
    # Stalled more often than allowed: fails, and leaves its group's active count.
    outcome = await store.recover_stalled(Q, NOW + 60, 0)
    assert [(o.id, o.failed) for o in outcome] == [("k1", True)]
    assert await store.get_group_counts(Q) == {"A": counts(failed=1)}
    await store.set_group_limits(Q, 1, None)
    await add(store, new("k2", "A"))
    assert ids(await take(store)) == ["k2"]


async def test_a_held_group_comes_back_when_its_limit_may_let_it_go(store: RedisStore) -> None:
    await store.set_group_limits(Q, 1, None)
    await add(store, *(new(f"a{i}", "A") for i in range(6)))
    assert ids(await take(store, 3)) == ["a0"]
    assert (await take(store)).concurrency_limited
    # Each way an active job leaves lets the group go again.
    await store.fail_jobs(Q, [Failure("a0", "t", "x", retry_at=NOW + 100)], NOW)
    assert ids(await take(store, 3)) == ["a1"]
    await store.release_jobs(Q, [Release("a1", "t")], NOW)
    assert ids(await take(store, 3)) == ["a2"]
    await store.fail_jobs(Q, [Failure("a2", "t", "x")], NOW)
    assert ids(await take(store, 3)) == ["a3"]
    assert [o.id for o in await store.recover_stalled(Q, NOW + 60, 5)] == ["a3"]
    # Released and stalled jobs entered waiting again: behind a4 and a5.
    assert ids(await take(store, 3)) == ["a4"]
    # A held group that loses its waiting jobs and gets new ones is a lane again.
    for job_id in ("a5", "a1", "a3"):
        assert await store.remove_job(Q, job_id)
    await add(store, new("a6", "A"), new("b0", "B"))
    held = await take(store, 3)
    assert ids(held) == ["b0"]
    await complete(store, ["a4", "b0"])
    assert ids(await take(store, 3)) == ["a6"]


async def test_many_held_groups_are_stepped_over_once(
    store: RedisStore, redis_url: str, redis_prefix: str
) -> None:
    await store.set_group_limits(Q, 1, None)
    await store.add_jobs([[new(f"g{i}-{k}", f"g{i}")] for i in range(300) for k in range(2)], NOW)
    assert len(ids(await take(store, 300))) == 300
    held = await take(store, 10)
    assert held.jobs == [] and held.concurrency_limited
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        base = f"{redis_prefix}:{{{Q}}}:"
        assert await client.zcard(base + "gready") == 0
        assert await client.scard(base + "gmax") == 300
    await complete(store, ["g7-0"])
    assert ids(await take(store, 10)) == ["g7-1"]


async def test_a_group_let_go_keeps_its_place_in_the_rotation(store: RedisStore) -> None:
    await store.set_group_limits(Q, 1, None)
    await add(store, new("b0", "B"), new("b1", "B"), new("c0", "C"), new("c1", "C"))
    assert ids(await take(store, 2)) == ["b0", "c0"]
    await add(store, new("a0", "A"), new("a1", "A"))
    assert ids(await take(store, 5)) == ["a0"]
    assert (await take(store, 5)).concurrency_limited
    await complete(store, ["a0", "b0", "c0"])
    # Served last, A goes last, whatever order the groups were let go in.
    assert ids(await take(store, 5)) == ["b1", "c1", "a1"]


async def test_a_group_without_waiting_jobs_is_no_lane(store: RedisStore) -> None:
    await store.set_group_limits(Q, 1, None)
    await add(store, new("a0", "A"), new("b0", "B"), new("b1", "B"))
    assert ids(await take(store, 5)) == ["a0", "b0"]
    await complete(store, ["a0"])
    await complete(store, ["b0"])
    assert ids(await take(store, 5)) == ["b1"]
    assert (await take(store, 5)).jobs == []
