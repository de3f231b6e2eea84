"""``RedisStore`` through the store protocol: the same transitions as the reference
engine (checked side by side with ``MemoryStore``), the key layout, wake-ups, events
across store objects, closing, and surviving dropped connections."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest
import redis.asyncio

from conveyor_core.errors import (
    ConveyorError,
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    PayloadError,
    StoreClosedError,
    StoreUnavailableError,
)
from conveyor_core.models import JobState, ParentPolicy
from conveyor_core.store import (
    METRICS_MINUTES,
    Completion,
    EventRecord,
    EventSubscription,
    Failure,
    NewJob,
    Release,
    StoreInterface,
)
from conveyor_stores import MemoryStore
from conveyor_stores.redis import RedisStore, queue_key_base
from conveyor_stores.redis.store import OFFLOAD_JOBS

pytestmark = pytest.mark.anyio

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
WAITING_CHILDREN = JobState.WAITING_CHILDREN


async def _delete_prefix(url: str, prefix: str) -> None:
    async with redis.asyncio.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, to look at keys and to kill the store's connections."""
    async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


@pytest.fixture
def client_name() -> str:
    return f"conveyor-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(redis_url: str, redis_prefix: str, client_name: str) -> AsyncIterator[RedisStore]:
    async with RedisStore(redis_url, prefix=redis_prefix, client_name=client_name) as store:
        try:
            yield store
        finally:
            await _delete_prefix(redis_url, redis_prefix)


def job(
    job_id: str,
    queue: str = "q",
    state: JobState = WAITING,
    **fields: Any,
) -> NewJob:
    return NewJob(
        id=job_id,
        queue=queue,
        name=fields.pop("name", "task"),
        data=fields.pop("data", "{}"),
        opts="{}",
        state=state,
        **fields,
    )


async def take(store: StoreInterface, queue: str, now: float, limit: int = 10) -> list[str]:
    result = await store.take_jobs(queue, limit=limit, token="tok", lock_until=now + 30, now=now)
    return [record.id for record in result.jobs]


async def next_events(sub: EventSubscription, count: int) -> list[EventRecord]:
    events: list[EventRecord] = []
    with anyio.fail_after(5):
        async for event in sub:
            events.append(event)
            if len(events) == count:
                break
    return events


# ---------------------------------------------------------------------- basics


async def test_a_flow_across_queues_releases_its_parent(store: RedisStore) -> None:
    now = 1_000.0
    parent = job("order", "orders{eu}", WAITING_CHILDREN)
    children = [
        job(f"item-{i}", 'items:"x"', parent_id="order", parent_queue="orders{eu}")
        for i in range(3)
    ]
    assert await store.add_jobs([[parent, *children]], now) == [True]
    assert await take(store, 'items:"x"', now) == ["item-0", "item-1", "item-2"]
    done = [Completion(f"item-{i}", "tok", str(i)) for i in range(3)]
    assert await store.complete_jobs('items:"x"', done, now + 1) == [True, True, True]
    released = await store.get_job("orders{eu}", "order")
    assert released is not None and released.state is WAITING
    deps = await store.get_dependencies("orders{eu}", "order")
    assert [(d.id, d.status, d.value) for d in deps] == [
        ("item-0", "processed", "0"),
        ("item-1", "processed", "1"),
        ("item-2", "processed", "2"),
    ]
    assert await store.list_queues() == ['items:"x"', "orders{eu}"]


async def test_a_big_flow_packed_off_the_event_loop_is_written_whole(store: RedisStore) -> None:
    """An add of hundreds of jobs is packed on a worker thread; it must write exactly what
    a small add writes."""
    now = 1_000.0
    size = OFFLOAD_JOBS + 44
    parent = job("batch", "reports", WAITING_CHILDREN, delay=5.0)
    children = [
        job(
            f"row-{i}",
            "rows{é}",
            data=f'{{"i":{i}}}',
            priority=i % 3,
            parent_id="batch",
            parent_queue="reports",
        )
        for i in range(size)
    ]
    assert await store.add_jobs([[parent, *children]], now) == [True]
    counts = await store.get_counts("rows{é}")
    assert counts[WAITING] == size
    row = await store.get_job("rows{é}", "row-7")
    assert row is not None and row.data == '{"i":7}' and row.priority == 1
    assert row.parent_id == "batch" and row.parent_queue == "reports"
    top = await store.get_job("reports", "batch")
    assert top is not None and top.state is WAITING_CHILDREN and top.delay == 5.0
    assert len(await store.get_dependencies("reports", "batch")) == size
    # The existing-id rule holds on this path too: nothing of a clashing bulk is written.
    clash = [[job(f"new-{i}", "rows{é}") for i in range(size)] + [job("row-3", "rows{é}")]]
    with pytest.raises(DuplicateJobError):
        await store.add_jobs(clash, now)
    assert (await store.get_counts("rows{é}"))[WAITING] == size


async def test_queue_names_with_braces_keep_one_hash_tag(store: RedisStore, raw: Any) -> None:
    name = "a}b{c%7Bd ünï"
    await store.add_jobs([[job("1", name)]], 1.0)
    keys = [key async for key in raw.scan_iter(match=f"{store.prefix}:*")]
    tagged = [key for key in keys if key.startswith(queue_key_base(store.prefix, name))]
    assert tagged and all(
        key.split("{", 1)[1].split("}", 1)[0] == "a%7Db%7Bc%257Bd ünï" for key in tagged
    )
    assert await store.list_queues() == [name]
    record = await store.get_job(name, "1")
    assert record is not None and record.queue == name


async def test_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://127.0.0.1:6379/0", prefix="a{b}")


@pytest.mark.parametrize(
    "prefix", ["app\x00", "a\nb", "tab\there", "\x1b[31m", "del\x7f", "c1\x85"]
)
async def test_prefix_with_control_characters_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="control characters") as refused:
        RedisStore("redis://127.0.0.1:6379/0", prefix=prefix)
    assert repr(prefix) in str(refused.value)


async def test_waiting_order_is_priority_then_fifo_or_lifo(store: RedisStore) -> None:
    adds = [
        job("a", priority=1),
        job("b", priority=0),
        job("c", priority=1, lifo=True),
        job("d", priority=0),
        job("e", priority=1, lifo=True),
    ]
    await store.add_jobs([[add] for add in adds], 1.0)
    listed = await store.get_jobs("q", [WAITING], 0, None)
    assert [record.id for record in listed] == ["b", "d", "e", "c", "a"]
    assert await take(store, "q", 2.0, limit=2) == ["b", "d"]
    await store.fail_jobs("q", [Failure("b", "tok", "boom", retry_at=2.0)], 2.0)
    # A retried job goes to the back of its priority.
    assert [r.id for r in await store.get_jobs("q", [WAITING], 0, None)] == ["b", "e", "c", "a"]


async def test_a_bulk_with_an_existing_child_id_writes_nothing(store: RedisStore) -> None:
    await store.add_jobs([[job("taken", "kids")]], 1.0)
    flow = [
        job("root", "roots", WAITING_CHILDREN),
        job("new", "kids", parent_id="root", parent_queue="roots"),
        job("taken", "kids", parent_id="root", parent_queue="roots"),
    ]
    with pytest.raises(DuplicateJobError):
        await store.add_jobs([[job("standalone")], flow], 1.0)
    assert await store.get_job("q", "standalone") is None
    assert await store.get_job("roots", "root") is None
    assert await store.get_job("kids", "new") is None
    # An existing first job skips its group only.
    assert await store.add_jobs([[job("taken", "kids")], [job("fresh", "kids")]], 2.0) == [
        False,
        True,
    ]


async def test_a_flow_of_many_children_is_one_call(store: RedisStore) -> None:
    parent = job("p", "parents", WAITING_CHILDREN)
    kids = [job(f"k{i}", "kids", parent_id="p", parent_queue="parents") for i in range(500)]
    assert await store.add_jobs([[parent, *kids]], 1.0) == [True]
    counts = await store.get_counts("kids")
    assert counts[WAITING] == 500
    deps = await store.get_dependencies("parents", "p")
    assert [d.id for d in deps] == [f"k{i}" for i in range(500)]


async def test_missing_jobs_and_wrong_states_raise(store: RedisStore) -> None:
    with pytest.raises(JobNotFoundError):
        await store.update_progress("q", "nope", "1")
    with pytest.raises(JobNotFoundError):
        await store.get_logs("q", "nope")
    with pytest.raises(JobNotFoundError):
        await store.get_dependencies("q", "nope")
    assert await store.remove_job("q", "nope") is False
    await store.add_jobs([[job("w")]], 1.0)
    with pytest.raises(InvalidJobStateError):
        await store.promote_job("q", "w", 1.0)
    with pytest.raises(InvalidJobStateError):
        await store.retry_job("q", "w", 1.0)
    await take(store, "q", 1.0)
    with pytest.raises(InvalidJobStateError):
        await store.remove_job("q", "w")
    with pytest.raises(InvalidJobStateError):
        await store.obliterate("q", force=False)
    await store.obliterate("q", force=True)
    assert await store.list_queues() == []


async def test_logs_progress_and_data(store: RedisStore) -> None:
    await store.add_jobs([[job("j")]], 1.0)
    assert await store.add_log("q", "j", "one") == 1
    assert await store.add_log("q", "j", "two") == 2
    assert await store.get_logs("q", "j") == ["one", "two"]
    assert await store.get_logs("q", "j", 1) == ["two"]
    await store.update_progress("q", "j", '{"pct": 50}')
    await store.update_data("q", "j", '{"new": true}')
    record = await store.get_job("q", "j")
    assert record is not None
    assert (record.progress, record.data) == ('{"pct": 50}', '{"new": true}')


async def test_rate_limit_counts_across_callers(store: RedisStore) -> None:
    await store.add_jobs([[job(str(i))] for i in range(5)], 1.0)
    first = await store.take_jobs(
        "q", limit=10, token="a", lock_until=100, now=10.0, rate_limit=(2, 5.0)
    )
    second = await store.take_jobs(
        "q", limit=10, token="b", lock_until=100, now=11.0, rate_limit=(2, 5.0)
    )
    assert len(first.jobs) == 2 and not second.jobs
    assert second.rate_limited_until == 15.0
    third = await store.take_jobs(
        "q", limit=10, token="c", lock_until=100, now=15.0, rate_limit=(2, 5.0)
    )
    assert len(third.jobs) == 2


async def test_retention_keeps_the_newest_and_the_parents_values(store: RedisStore) -> None:
    parent = job("p", "parents", WAITING_CHILDREN)
    kids = [job(f"k{i}", parent_id="p", parent_queue="parents", keep_completed=1) for i in range(3)]
    await store.add_jobs([[parent, *kids]], 1.0)
    for i in range(3):
        await take(store, "q", 2.0 + i, limit=1)
        await store.complete_jobs("q", [Completion(f"k{i}", "tok", f'"v{i}"')], 2.0 + i)
    assert [r.id for r in await store.get_jobs("q", [JobState.COMPLETED], 0, None)] == ["k2"]
    values = [d.value for d in await store.get_dependencies("parents", "p")]
    assert values == ['"v0"', '"v1"', '"v2"']


async def test_metrics_keys_stay_bounded(store: RedisStore, raw: Any) -> None:
    # The counts hash and the sorted set of its minutes lose the minutes that fall out of
    # the kept week together: neither grows with the weeks a queue runs.
    await store.add_jobs([[job(f"m{i}")] for i in range(4)], 1.0)
    first = 28_000_000
    week_later = first + 1 + METRICS_MINUTES
    ids = await take(store, "q", first * 60.0, limit=4)
    for job_id, minute in zip(ids, (first, first + 1, week_later, week_later + 1), strict=True):
        await store.complete_jobs("q", [Completion(job_id, "tok", "1")], minute * 60.0)
    base = queue_key_base(store.prefix, "q")
    kept = [week_later, week_later + 1]
    assert sorted(int(m) for m in await raw.hkeys(base + "m:completed")) == kept
    assert [int(m) for m in await raw.zrange(base + "mm:completed", 0, -1)] == kept


async def test_wake_up_marks_stay_bounded(store: RedisStore, raw: Any) -> None:
    # Each add pushes a mark for the workers blocked on the queue; with none blocked, the
    # list keeps at most 64 marks, however many adds come, and each add still pushes one
    # for every job it makes takeable (at most 16).
    marker = queue_key_base(store.prefix, "q") + "marker"
    await store.add_jobs([[job("one")]], 1.0)
    assert await raw.llen(marker) == 1
    await store.add_jobs([[job(f"m{i}")] for i in range(20)], 1.0)
    assert await raw.llen(marker) == 17
    for i in range(100):
        await store.add_jobs([[job(f"n{i}")]], 1.0)
        assert await raw.llen(marker) <= 64
    assert await raw.llen(marker) == 64


async def test_a_groups_counts_go_with_its_last_job(store: RedisStore, raw: Any) -> None:
    # A group's per-state counts are a hash of their own, deleted when the group has no
    # job left: one-off groups leave no count behind.
    counts = queue_key_base(store.prefix, "q") + "gn:once"
    first = job("a", group_id="once", keep_completed=0)
    await store.add_jobs([[first], [job("b", group_id="once")]], 1.0)
    assert await raw.hget(counts, "n") == "2"
    assert await take(store, "q", 2.0, limit=1) == ["a"]
    assert await store.remove_job("q", "b")
    assert await raw.hget(counts, "n") == "1"
    # Completed and, keeping no completed job, deleted: the group's last job.
    assert await store.complete_jobs("q", [Completion("a", "tok", "1")], 3.0) == [True]
    assert not await raw.exists(counts)
    assert await store.get_group_counts("q") == {}


async def test_a_parent_kept_before_its_dependency_index_gets_it_on_first_use(
    store: RedisStore, raw: Any
) -> None:
    # A parent written before its records had an order and counters (no 'dv' mark on its
    # hash) gets both built from its records the first time one is read or written.
    base = queue_key_base(store.prefix, "q")
    parent = job("p", state=WAITING_CHILDREN)
    children = [
        job(f"c{i}", parent_id="p", parent_queue="q", parent_policy=ParentPolicy.IGNORE)
        for i in range(4)
    ]
    assert await store.add_jobs([[parent, *children]], 1.0) == [True]
    assert await take(store, "q", 2.0, limit=2) == ["c0", "c1"]
    assert await store.complete_jobs("q", [Completion("c0", "tok", "0")], 3.0) == [True]
    assert await store.fail_jobs("q", [Failure("c1", "tok", "broke")], 3.0) == [True]

    async def forget_the_index() -> None:
        await raw.hdel(base + "job:p", "dv", "pend", "dpro", "dfai", "dign")
        await raw.delete(base + "dord:p")

    await forget_the_index()
    counts = {"pending": 2, "processed": 1, "failed": 0, "ignored": 1}
    assert await store.get_dependency_counts("q", "p") == counts
    assert await raw.zrange(base + "dord:p", 0, -1) == [f"{base}job:c{i}" for i in range(4)]
    await forget_the_index()
    first = await store.get_dependency_page("q", "p", cursor=None, limit=3)
    assert [record.id for record in first.dependencies] == ["c0", "c1", "c2"]
    rest = await store.get_dependency_page("q", "p", cursor=first.next_cursor, limit=3)
    assert [record.id for record in rest.dependencies] == ["c3"]
    # Built once: a child finishing moves the counters from there.
    await forget_the_index()
    assert await take(store, "q", 4.0, limit=2) == ["c2", "c3"]
    assert await store.complete_jobs("q", [Completion("c2", "tok", "2")], 5.0) == [True]
    counts = {"pending": 1, "processed": 2, "failed": 0, "ignored": 1}
    assert await store.get_dependency_counts("q", "p") == counts
    assert await store.complete_jobs("q", [Completion("c3", "tok", "3")], 5.0) == [True]
    released = await store.get_job("q", "p")
    assert released is not None and released.state is WAITING
    assert await store.get_dependency_counts("q", "p") == {**counts, "pending": 0, "processed": 3}
    # A child leaving its parent, and a park, read the counters too.
    two = job("two", state=WAITING_CHILDREN)
    kids = [job(f"k{i}", parent_id="two", parent_queue="q") for i in range(2)]
    assert await store.add_jobs([[two, *kids]], 6.0) == [True]
    await raw.hdel(base + "job:two", "dv", "pend", "dpro", "dfai", "dign")
    assert await store.remove_child_dependency("q", "k0", 7.0) is True
    still = await store.get_job("q", "two")
    assert still is not None and still.state is WAITING_CHILDREN, "k1 is still pending"
    assert await store.add_jobs([[job("step", queue="s")]], 8.0) == [True]
    assert await take(store, "s", 9.0, limit=1) == ["step"]
    part = job("part", parent_id="step", parent_queue="s")
    assert await store.add_jobs([[part]], 9.0) == [True]
    step_key = queue_key_base(store.prefix, "s") + "job:step"
    await raw.hdel(step_key, "dv", "pend", "dpro", "dfai", "dign")
    assert await store.park_job("s", "step", "tok", 10.0) is True


async def test_obliterate_leaves_no_key_of_the_queue(store: RedisStore, raw: Any) -> None:
    # Every key of a queue but its event stream goes with it, whatever state its jobs
    # and groups were in: groups held by their limits, waiting, active, delayed and
    # finished jobs.
    base = queue_key_base(store.prefix, "q")
    await store.set_group_limits("q", 1, (1, 60.0))
    grouped = [job(f"{g}{i}", group_id=g) for g in ("a", "b", "c") for i in range(2)]
    await store.add_jobs([[new] for new in grouped], 1.0)
    await store.add_jobs(
        [[job("plain")], [job("later", state=JobState.DELAYED, delay=3600.0)]], 1.0
    )
    assert len(await take(store, "q", 2.0)) == 4  # a0, b0, c0 and plain
    assert await store.complete_jobs("q", [Completion("a0", "tok", "1")], 3.0) == [True]
    await store.pause("q")
    assert "q" in await store.list_queues()
    await store.obliterate("q", True)
    # The event stream stays (capped as ever): listeners read the removals from it.
    assert [key async for key in raw.scan_iter(match=base + "*")] == [base + "events"]
    assert not await raw.sismember(f"{store.prefix}:queues", "q")
    assert "q" not in await store.list_queues()


async def test_a_deleted_job_leaves_the_search_index(store: RedisStore, raw: Any) -> None:
    # Every job is in the queue's index of all jobs by creation time, which search
    # walks; a removed job, or one its retention deletes, leaves it.
    index = queue_key_base(store.prefix, "q") + "all"
    await store.add_jobs([[job("gone")], [job("done", keep_completed=0)], [job("kept")]], 1.0)
    assert await raw.zcard(index) == 3
    assert await store.remove_job("q", "gone")
    assert await take(store, "q", 2.0, limit=1) == ["done"]
    assert await store.complete_jobs("q", [Completion("done", "tok", "1")], 3.0) == [True]
    assert await raw.zrange(index, 0, -1) == ["kept"]


async def test_stream_is_capped(store: RedisStore, raw: Any, redis_url: str) -> None:
    async with RedisStore(redis_url, prefix=store.prefix, stream_max_len=10) as small:
        await small.add_jobs([[job(str(i))] for i in range(1_000)], 1.0)
    length = await raw.xlen(queue_key_base(store.prefix, "q") + "events")
    assert length < 500  # 2,000 events were published; MAXLEN ~ trims whole nodes


# ---------------------------------------------------------------------- waking, events


async def test_wait_for_work_wakes_when_another_store_adds(
    store: RedisStore, redis_url: str
) -> None:
    async with RedisStore(redis_url, prefix=store.prefix) as other:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.wait_for_work, "q", 60.0)
                await anyio.sleep(0.05)
                await other.add_jobs([[job("x")]], 1.0)


async def test_resume_wakes_idle_workers(store: RedisStore) -> None:
    await store.pause("q")
    await store.add_jobs([[job("x")]], 1.0)
    assert await take(store, "q", 1.0) == []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.wait_for_work, "q", 60.0)
            await anyio.sleep(0.05)
            await store.resume("q")
    assert await take(store, "q", 1.0) == ["x"]


async def test_events_reach_a_listener_on_another_store_object(
    store: RedisStore, redis_url: str
) -> None:
    async with RedisStore(redis_url, prefix=store.prefix) as listener_store:
        sub = await listener_store.subscribe("q")
        await store.add_jobs([[job("e", name="send")]], 1.0)
        await take(store, "q", 2.0)
        await store.complete_jobs("q", [Completion("e", "tok", '{"ok": 1}')], 3.0)
        events = await next_events(sub, 4)
        await sub.aclose()
    assert [(e.type, e.job_id) for e in events] == [
        ("added", "e"),
        ("waiting", "e"),
        ("active", "e"),
        ("completed", "e"),
    ]
    assert events[0].data == {"name": "send"}
    assert events[3].data == {"return_value": '{"ok": 1}'}
    assert events[3].timestamp == 3.0


async def test_close_ends_waits_and_subscriptions(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    await store.connect()
    sub = await store.subscribe("q")
    seen: list[EventRecord] = []

    async def listen() -> None:
        async for event in sub:
            seen.append(event)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.wait_for_work, "q", 60.0)
            tg.start_soon(listen)
            await anyio.sleep(0.05)
            await store.close()
    await store.close()  # idempotent
    assert seen == []
    with pytest.raises(StoreClosedError):
        await store.get_job("q", "x")


async def test_unreachable_server_is_reported() -> None:
    with pytest.raises(StoreUnavailableError):
        await RedisStore("redis://127.0.0.1:1/0").connect()


# ---------------------------------------------------------------------- dropped connections


async def _kill_store_connections(raw: Any, client_name: str) -> int:
    clients = await raw.client_list()
    killed = 0
    for client in clients:
        if client.get("name") == client_name:
            await raw.execute_command("CLIENT", "KILL", "ID", client["id"])
            killed += 1
    return killed


async def test_calls_survive_killed_connections(
    store: RedisStore, raw: Any, client_name: str
) -> None:
    await store.add_jobs([[job("before")]], 1.0)
    assert await _kill_store_connections(raw, client_name) >= 1
    assert await store.add_jobs([[job("after")]], 2.0) == [True]
    assert await take(store, "q", 3.0) == ["before", "after"]
    await _kill_store_connections(raw, client_name)
    record = await store.get_job("q", "after")
    assert record is not None and record.state is JobState.ACTIVE


async def test_blocked_waits_and_listeners_survive_killed_connections(
    store: RedisStore, raw: Any, client_name: str
) -> None:
    sub = await store.subscribe("q")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.wait_for_work, "q", 60.0)
            await anyio.sleep(0.1)
            assert await _kill_store_connections(raw, client_name) >= 2
            await anyio.sleep(0.1)
            # The wait returned or blocks again on a fresh connection: a new job ends it.
            await store.add_jobs([[job("x")]], 1.0)
        events = await next_events(sub, 2)
    await sub.aclose()
    assert [(e.type, e.job_id) for e in events] == [("added", "x"), ("waiting", "x")]


async def test_text_redis_cannot_hold_is_refused_and_later_calls_work(
    store: RedisStore,
) -> None:
    with pytest.raises(PayloadError):
        await store.add_jobs([[job("x", data='"\ud800"')]], 1.0)
    assert await store.get_counts("q") == dict.fromkeys(JobState, 0)
    assert await store.add_jobs([[job("y")]], 1.0) == [True]
    assert await take(store, "q", 1.0) == ["y"]


async def test_a_lost_script_cache_is_reloaded(store: RedisStore) -> None:
    store._sha["add_jobs"] = "0" * 40  # as after SCRIPT FLUSH or a server restart
    assert await store.add_jobs([[job("x")]], 1.0) == [True]
    assert store._sha["add_jobs"] != "0" * 40


# ---------------------------------------------------------------------- side by side


class _Model:
    """Random protocol calls applied to two stores, comparing every answer and state."""

    QUEUES = ("alpha", "beta{x}", "gamma")

    def __init__(self, seed: int, stores: Sequence[StoreInterface]) -> None:
        self.rng = random.Random(seed)
        self.stores = stores
        self.now = 1_000.0
        self.serial = 0
        self.ids: dict[str, list[str]] = {queue: [] for queue in self.QUEUES}
        self.tokens: dict[tuple[str, str], str] = {}
        self.history: list[str] = []

    def new_id(self) -> str:
        self.serial += 1
        return f"j{self.serial}"

    async def both(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.history.append(f"{method}{args}{kwargs}")
        outcomes = []
        for target in self.stores:
            try:
                outcomes.append(("ok", await getattr(target, method)(*args, **kwargs)))
            except ConveyorError as exc:
                outcomes.append(("error", type(exc).__name__))
        assert outcomes[0] == outcomes[1], "\n".join(
            [*(line for line in self.history[-40:] if not line.startswith("get_")), str(outcomes)]
        )
        return outcomes[0][1] if outcomes[0][0] == "ok" else None

    def standalone(self) -> NewJob:
        queue = self.rng.choice(self.QUEUES)
        delayed = self.rng.random() < 0.2
        return job(
            self.new_id(),
            queue,
            DELAYED if delayed else WAITING,
            priority=self.rng.choice((0, 0, 1, 2)),
            lifo=self.rng.random() < 0.2,
            delay=float(self.rng.randint(1, 4)) if delayed else 0.0,
            keep_completed=self.rng.choice((None, None, 0, 2)),
            keep_failed=self.rng.choice((None, None, 0, 1)),
        )

    def flow(self, depth: int = 0) -> list[NewJob]:
        rng = self.rng
        root = job(self.new_id(), rng.choice(self.QUEUES), WAITING_CHILDREN)
        jobs = [root]
        for _ in range(rng.randint(1, 3)):
            policy = ParentPolicy(
                rng.choice(("fail", "fail", "ignore", "drop", "continue", "remove"))
            )
            if depth < 1 and rng.random() < 0.3:
                sub = self.flow(depth + 1)
                sub[0].parent_id, sub[0].parent_queue = root.id, root.queue
                sub[0].parent_policy = policy
                jobs += sub
            else:
                child = self.standalone()
                child.parent_id, child.parent_queue = root.id, root.queue
                child.parent_policy = policy
                jobs.append(child)
        return jobs

    def any_id(self) -> tuple[str, str]:
        queue = self.rng.choice(self.QUEUES)
        ids = self.ids[queue]
        return queue, (self.rng.choice(ids) if ids else "missing")

    def active(self) -> list[tuple[str, str, str]]:
        return [(q, i, t) for (q, i), t in self.tokens.items()]

    async def step(self) -> None:
        rng = self.rng
        self.now += rng.choice((0.0, 0.5, 1.0, 2.0))
        now = self.now
        op = rng.choices(
            (
                "add",
                "flow",
                "bulk",
                "take",
                "complete",
                "fail",
                "release",
                "stalled",
                "remove",
                "retry",
                "promote",
                "change",
                "pause",
                "queue",
            ),
            weights=(8, 5, 2, 10, 8, 6, 1, 2, 2, 2, 1, 2, 1, 1),
        )[0]
        if op in ("add", "flow", "bulk"):
            groups: list[list[NewJob]]
            if op == "add":
                groups = [[self.standalone()]]
            elif op == "flow":
                groups = [self.flow()]
            else:
                groups = [[self.standalone()] for _ in range(rng.randint(2, 4))]
                if rng.random() < 0.5:
                    queue, existing = self.any_id()
                    groups.append([job(existing, queue)])
            written = await self.both("add_jobs", groups, now)
            if written:
                for group, ok in zip(groups, written, strict=True):
                    if ok:
                        for new in group:
                            self.ids[new.queue].append(new.id)
        elif op == "take":
            queue = rng.choice(self.QUEUES)
            token = f"t{self.new_id()}"
            limit = rng.randint(1, 4)
            rate = (2, 3.0) if rng.random() < 0.2 else None
            result = await self.both(
                "take_jobs",
                queue,
                limit=limit,
                token=token,
                lock_until=now + 10,
                now=now,
                rate_limit=rate,
            )
            for record in result.jobs:
                self.tokens[(queue, record.id)] = token
        elif op in ("complete", "fail", "release") and self.active():
            queue, job_id, token = rng.choice(self.active())
            if rng.random() < 0.1:
                token = "wrong"
            if op == "complete":
                await self.both("complete_jobs", queue, [Completion(job_id, token, '"r"')], now)
            elif op == "fail":
                retry_at = rng.choice((None, None, now, now + 2))
                failure = Failure(job_id, token, "bad", ["line"], retry_at)
                await self.both("fail_jobs", queue, [failure], now)
            else:
                await self.both("release_jobs", queue, [Release(job_id, token)], now)
            if token != "wrong":
                self.tokens.pop((queue, job_id), None)
        elif op == "stalled":
            queue = rng.choice(self.QUEUES)
            outcomes = await self.both("recover_stalled", queue, now + 11, rng.choice((0, 1)))
            for outcome in outcomes:
                self.tokens.pop((queue, outcome.id), None)
        elif op == "remove":
            queue, job_id = self.any_id()
            await self.both("remove_job", queue, job_id)
        elif op == "retry":
            queue, job_id = self.any_id()
            if rng.random() < 0.7:
                await self.both("retry_job", queue, job_id, now)
            else:
                state = rng.choice((JobState.FAILED, JobState.COMPLETED, WAITING))
                await self.both("retry_jobs", queue, state, now)
        elif op == "promote":
            queue, job_id = self.any_id()
            if rng.random() < 0.5:
                await self.both("promote_job", queue, job_id, now)
            else:
                await self.both("promote_jobs", queue, now)
        elif op == "change":
            queue, job_id = self.any_id()
            which = rng.randint(0, 4)
            if which == 0:
                await self.both(
                    "change_priority", queue, job_id, rng.randint(0, 2), rng.random() < 0.5
                )
            elif which == 1:
                await self.both("change_delay", queue, job_id, now + rng.randint(1, 5))
            elif which == 2:
                await self.both("update_data", queue, job_id, '{"v": 2}')
            elif which == 3:
                await self.both("update_progress", queue, job_id, "50")
            else:
                await self.both("add_log", queue, job_id, "line")
        elif op == "pause":
            queue = rng.choice(self.QUEUES)
            await self.both("resume" if rng.random() < 0.6 else "pause", queue)
        elif op == "queue":
            queue = rng.choice(self.QUEUES)
            which = rng.randint(0, 2)
            if which == 0:
                await self.both("drain", queue, rng.random() < 0.5, now)
            elif which == 1:
                state = rng.choice(tuple(JobState))
                await self.both("clean", queue, state, now - 2, rng.choice((None, 1, 3)))
            else:
                await self.both("promote_jobs", queue, now)

    async def compare_state(self) -> None:
        await self.both("list_queues")
        for queue in self.QUEUES:
            await self.both("get_counts", queue)
            await self.both("is_paused", queue)
            for state in JobState:
                await self.both("get_jobs", queue, [state], 0, None)
            await self.both("get_jobs", queue, [JobState.FAILED, WAITING], 1, 4)
            for job_id in self.ids[queue]:
                await self.both("get_dependencies", queue, job_id)
                await self.both("get_logs", queue, job_id)


@pytest.mark.parametrize("seed", range(6))
async def test_same_answers_as_the_reference_engine(store: RedisStore, seed: int) -> None:
    async with MemoryStore() as memory:
        model = _Model(seed, [memory, store])
        subs = {
            queue: (await memory.subscribe(queue), await store.subscribe(queue))
            for queue in model.QUEUES
        }
        for step in range(250):
            await model.step()
            if step % 10 == 0:
                await model.compare_state()
        await model.compare_state()
        for queue, (mem_sub, redis_sub) in subs.items():
            expected: list[EventRecord] = []
            with anyio.move_on_after(0.2):
                async for event in mem_sub:
                    expected.append(event)
            got = await next_events(redis_sub, len(expected)) if expected else []
            assert [(e.type, e.job_id, e.data) for e in got] == [
                (e.type, e.job_id, e.data) for e in expected
            ], queue
            await mem_sub.aclose()
            await redis_sub.aclose()


class _CompletionsFail(RedisStore):
    """A Redis store whose completions fail after they were sent (as a lost reply would
    look), so the take sent with them in COMPLETE AND TAKE has run."""

    async def complete_jobs(self, queue: str, completions: Any, now: float) -> list[bool]:
        await anyio.sleep(0.05)  # the take, sent after, runs on the server meanwhile
        raise ConnectionError("reply lost")


async def test_complete_and_take_that_raises_leaves_no_job_under_the_callers_token(
    redis_url: str, redis_prefix: str
) -> None:
    now = 1_000.0
    try:
        async with _CompletionsFail(redis_url, prefix=redis_prefix) as store:
            await store.add_jobs([[job("a")], [job("b")], [job("c")]], now)
            assert await take(store, "q", now, limit=1) == ["a"]
            with pytest.raises(ConnectionError, match="reply lost"):
                await store.complete_and_take(
                    "q", [Completion("a", "tok", "1")], now, limit=2, token="t2",
                    lock_until=now + 30,
                )  # fmt: skip
            # What the take got is back in waiting, with no attempt counted.
            for job_id in ("b", "c"):
                record = await store.get_job("q", job_id)
                assert record is not None
                assert (record.state, record.attempts_made, record.lock_token) == (
                    WAITING,
                    0,
                    None,
                )
            assert await take(store, "q", now + 1) == ["b", "c"]
    finally:
        await _delete_prefix(redis_url, redis_prefix)
