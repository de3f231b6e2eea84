"""SQLiteStore behaviour a user notices: durability, schema, atomicity, sharing a file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from conveyor_core import (
    DuplicateJobError,
    FlowProducer,
    JobState,
    Queue,
    StoreClosedError,
    StoreUnavailableError,
    Worker,
)
from conveyor_core.store import Completion, EventRecord, EventSubscription, Failure, NewJob
from conveyor_stores import open_store
from conveyor_stores.sqlite import SQLiteStore
from conveyor_stores.sqlite import backend as sqlite_backend
from conveyor_stores.sqlite.schema import SCHEMA_VERSION, queue_key

pytestmark = pytest.mark.anyio

WAITING = JobState.WAITING


def new_job(job_id: str, queue: str = "q", **fields: object) -> NewJob:
    job = NewJob(id=job_id, queue=queue, name="n", data="{}", opts="{}", state=WAITING)
    for name, value in fields.items():
        setattr(job, name, value)
    return job


async def next_event(sub: EventSubscription, timeout: float = 5.0) -> EventRecord:
    with anyio.fail_after(timeout):
        return await sub.__anext__()


@pytest.fixture
async def store(sqlite_path: str) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(sqlite_path) as store:
        yield store


async def test_jobs_dependencies_and_logs_survive_a_reopen(sqlite_path: str) -> None:
    async with SQLiteStore(sqlite_path) as store:
        node = await FlowProducer(store=store).add(
            {
                "name": "report",
                "queue_name": "reports",
                "children": [
                    {"name": "fetch", "queue_name": "fetch", "data": {"n": 1}},
                    {"name": "fetch", "queue_name": "fetch", "data": {"n": 2}},
                ],
            }
        )
        first = node.children[0].job
        await first.log("fetched")

        async def fetch(job: object) -> int:
            return 7

        done = anyio.Event()
        finished: list[object] = []

        def completed(job: object, result: object) -> None:
            finished.append(job)
            if len(finished) == 2:
                done.set()

        worker = Worker("fetch", fetch, store=store, concurrency=1)
        worker.on("completed", completed)
        async with worker:
            with anyio.fail_after(10):
                await done.wait()

    async with SQLiteStore(sqlite_path) as reopened:
        parent = await Queue("reports", store=reopened).get_job(node.job.id)
        assert parent is not None
        assert parent.state is WAITING
        values = await parent.get_children_values()
        assert values == {child.job.id: 7 for child in node.children}
        child = await Queue("fetch", store=reopened).get_job(first.id)
        assert child is not None
        assert await child.get_logs() == ["fetched"]
        assert await reopened.list_queues() == ["fetch", "reports"]


async def test_schema_version_is_recorded_and_a_reopen_migrates_nothing(
    sqlite_path: str,
) -> None:
    async with SQLiteStore(sqlite_path) as store:
        assert store.migrations_applied == SCHEMA_VERSION
        await store.add_jobs([[new_job("a")]], time.time())
    async with SQLiteStore(sqlite_path) as store:
        assert store.migrations_applied == 0
        assert await store.get_job("q", "a") is not None
    with sqlite3.connect(sqlite_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _back_one_version(path: str) -> None:
    """Take the file back one schema version: the group index over every unfinished
    state, lanes that count only waiting and finished jobs, and the queues' last served
    numbers in their rows."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("DROP INDEX jobs_group_waiting")
        conn.execute(
            "CREATE INDEX jobs_group ON jobs (queue, state, group_id, order_key) "
            "WHERE group_id IS NOT NULL AND state NOT IN ('completed', 'failed')"
        )
        conn.execute("ALTER TABLE jobs DROP COLUMN queue_key")
        conn.execute(
            "INSERT INTO queues (name, served) SELECT queue, last_served FROM lanes "
            "WHERE group_id = '' ON CONFLICT (name) DO UPDATE SET served = excluded.served"
        )
        conn.execute("DELETE FROM lanes WHERE group_id = '' AND served = 0")
        for column in ("active", "delayed", "waiting_children", "last_served"):
            conn.execute(f"ALTER TABLE lanes DROP COLUMN {column}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")


async def test_a_file_written_before_lanes_counted_every_state_keeps_its_groups(
    sqlite_path: str,
) -> None:
    async with SQLiteStore(sqlite_path) as store:
        queue = Queue("mail", store=store)
        await queue.set_group_limits(concurrency=1)
        for group in ("a", "a", "b", "c"):
            await queue.add("send", None, {"group_id": group})
        await queue.add("later", None, {"group_id": "d", "delay": 600})
        now = time.time()
        taken = await store.take_jobs("mail", limit=4, token="t", lock_until=now + 60, now=now)
        first_a, b, c = (job.id for job in taken.jobs)
        await store.complete_jobs("mail", [Completion(b, "t", "null")], now)
        await store.fail_jobs("mail", [Failure(c, "t", "broke")], now)
        expected = await queue.get_group_counts()
    assert expected["a"]["active"] == 1 and expected["a"]["waiting"] == 1
    assert expected["d"]["delayed"] == 1
    _back_one_version(sqlite_path)
    async with SQLiteStore(sqlite_path) as store:
        assert store.migrations_applied == 1
        queue = Queue("mail", store=store)
        assert await queue.get_group_counts() == expected
        # The group's active job still holds its concurrency of one.
        held = await store.take_jobs("mail", limit=4, token="u", lock_until=now + 60, now=now)
        assert held.jobs == [] and held.concurrency_limited
        await store.complete_jobs("mail", [Completion(first_a, "t", "null")], now)
        again = await store.take_jobs("mail", limit=4, token="u", lock_until=now + 60, now=now)
        assert [job.group_id for job in again.jobs] == ["a"]
        counts = await queue.get_group_counts()
        assert counts["a"]["completed"] == 1 and counts["a"]["active"] == 1
        assert counts["a"]["waiting"] == 0


async def test_queues_sharing_a_number_keep_their_groups_apart(store: SQLiteStore) -> None:
    # The grouped jobs' index leads with a 32-bit number of the queue's name; these two
    # names share one, so their groups' waiting jobs sit side by side in it.
    first, second = "q12301", "q27064"
    assert queue_key(first) == queue_key(second)
    for queue, ids in ((first, ["a1", "a2", "a3"]), (second, ["b1", "b2"])):
        jobs = [new_job(i, queue=queue, group_id="g") for i in ids]
        assert await store.add_jobs([jobs], time.time()) == [True]
    now = time.time()
    taken = await store.take_jobs(second, limit=5, token="t", lock_until=now + 60, now=now)
    assert [(job.queue, job.id) for job in taken.jobs] == [(second, "b1"), (second, "b2")]
    assert (await store.get_counts(first))[WAITING] == 3
    taken = await store.take_jobs(first, limit=5, token="t", lock_until=now + 60, now=now)
    assert [job.id for job in taken.jobs] == ["a1", "a2", "a3"]


async def test_a_file_written_before_the_last_served_number_moved_serves_in_turn(
    sqlite_path: str,
) -> None:
    async with SQLiteStore(sqlite_path) as store:
        queue = Queue("mail", store=store)
        for group in ("a", "b", "c", "a", "c"):
            await queue.add("send", None, {"group_id": group})
        now = time.time()
        taken = await store.take_jobs("mail", limit=3, token="t", lock_until=now + 60, now=now)
        assert [job.group_id for job in taken.jobs] == ["a", "b", "c"]
    _back_one_version(sqlite_path)
    async with SQLiteStore(sqlite_path) as store:
        assert store.migrations_applied == 1
        queue = Queue("mail", store=store)
        for _ in range(2):
            await queue.add("send", None, {"group_id": "d"})
        # The group never served goes first, and is then served after the groups served
        # before the upgrade, as its served number follows theirs.
        first = await store.take_jobs("mail", limit=1, token="u", lock_until=now + 60, now=now)
        assert [job.group_id for job in first.jobs] == ["d"]
        rest = await store.take_jobs("mail", limit=3, token="u", lock_until=now + 60, now=now)
        assert [job.group_id for job in rest.jobs] == ["a", "c", "d"]


def _event_ids(path: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM events ORDER BY id")]


async def _add_one_by_one(store: SQLiteStore, ids: range) -> None:
    for i in ids:  # two events each: "added" and "waiting"
        await store.add_jobs([[new_job(f"j{i}")]], time.time())


async def test_events_beyond_the_retention_are_pruned_once_old_enough(
    sqlite_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "PRUNE_EVERY", 10)
    async with SQLiteStore(sqlite_path, events_retention=4, events_min_age=3600) as store:
        await _add_one_by_one(store, range(10))
        # Every event is younger than the minimum age: all are kept.
        assert len(_event_ids(sqlite_path)) == 20
        # The first twelve grow old; the rest stay young.
        with sqlite3.connect(sqlite_path) as conn:
            conn.execute("UPDATE events SET written_at = 0 WHERE id <= 12")
        await _add_one_by_one(store, range(10, 15))
        # Pruned: the old events but the newest four; every young event is kept.
        assert _event_ids(sqlite_path) == list(range(13, 31))
        # A young event among old ones is kept, and so are the newest four.
        with sqlite3.connect(sqlite_path) as conn:
            conn.execute("UPDATE events SET written_at = 0 WHERE id <= 30 AND id != 14")
        await _add_one_by_one(store, range(15, 20))
        ids = _event_ids(sqlite_path)
        assert ids[0] == 14 and ids[-4:] == [37, 38, 39, 40]
    async with SQLiteStore(sqlite_path, events_retention=4, events_min_age=0) as store:
        await _add_one_by_one(store, range(20, 25))
        # Old enough at once: the newest four are kept.
        assert _event_ids(sqlite_path) == list(range(47, 51))
        sub = await store.subscribe("q")
        await store.pause("q")
        assert (await next_event(sub)).type == "paused"
        assert _event_ids(sqlite_path) == list(range(47, 52))
        await sub.aclose()


async def test_a_file_from_a_newer_version_is_refused(sqlite_path: str) -> None:
    async with SQLiteStore(sqlite_path):
        pass
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        await SQLiteStore(sqlite_path).connect()


async def test_a_failed_transition_writes_nothing(store: SQLiteStore) -> None:
    await store.add_jobs([[new_job("taken")]], time.time())
    sub = await store.subscribe("q")
    flow = [
        new_job("parent", state=JobState.WAITING_CHILDREN),
        new_job("child-1", parent_id="parent", parent_queue="q"),
        new_job("taken", parent_id="parent", parent_queue="q"),
    ]
    with pytest.raises(DuplicateJobError):
        await store.add_jobs([[new_job("alone")], flow], time.time())
    assert await store.get_job("q", "alone") is None
    assert await store.get_job("q", "parent") is None
    assert await store.get_job("q", "child-1") is None
    counts = await store.get_counts("q")
    assert counts[WAITING] == 1 and sum(counts.values()) == 1
    # No event of the rolled-back transition was published: the next one is ours.
    await store.pause("q")
    event = await next_event(sub)
    assert event.type == "paused"
    await sub.aclose()


async def test_two_store_objects_on_one_file_share_jobs_events_and_wakes(
    sqlite_path: str,
) -> None:
    async with (
        SQLiteStore(sqlite_path, poll_interval=0.02) as one,
        SQLiteStore(sqlite_path, poll_interval=0.02) as two,
    ):
        sub = await two.subscribe("q")
        waited = anyio.Event()

        async def wait() -> None:
            await two.wait_for_work("q", 30.0)
            waited.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.05)
            assert not waited.is_set()
            await one.add_jobs([[new_job("j1")]], time.time())
            with anyio.fail_after(5):
                await waited.wait()

        record = await two.get_job("q", "j1")
        assert record is not None and record.state is WAITING
        first, second = await next_event(sub), await next_event(sub)
        assert (first.type, first.job_id, first.data) == ("added", "j1", {"name": "n"})
        assert (second.type, second.job_id) == ("waiting", "j1")

        taken = await two.take_jobs("q", limit=5, token="t", lock_until=time.time() + 30, now=0)
        assert [job.id for job in taken.jobs] == ["j1"]
        assert (await next_event(sub)).type == "active"
        again = await one.take_jobs("q", limit=5, token="u", lock_until=1e12, now=0)
        assert again.jobs == []
        await sub.aclose()


async def test_a_locked_database_fails_the_transition_cleanly(sqlite_path: str) -> None:
    async with SQLiteStore(sqlite_path, busy_timeout=0.05) as store:
        blocker = sqlite3.connect(sqlite_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailableError, match="locked"):
                await store.add_jobs([[new_job("a")]], time.time())
            # Reads still work while another process writes (WAL).
            assert await store.get_job("q", "a") is None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await store.add_jobs([[new_job("a")]], time.time()) == [True]


async def test_memory_database_and_open_store_url() -> None:
    async with SQLiteStore(":memory:") as store:
        await store.add_jobs([[new_job("a")]], time.time())
        assert (await store.get_counts("q"))[WAITING] == 1
    async with open_store("sqlite:///:memory:") as store:
        assert await store.list_queues() == []


async def test_close_ends_waits_and_subscriptions_and_is_idempotent(sqlite_path: str) -> None:
    store = SQLiteStore(sqlite_path)
    await store.connect()
    await store.connect()
    sub = await store.subscribe("q")
    ended: list[str] = []

    async def listen() -> None:
        async for _ in sub:
            pass
        ended.append("subscription")

    async def wait() -> None:
        await store.wait_for_work("q", 30.0)
        ended.append("wait")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            tg.start_soon(wait)
            await anyio.sleep(0.05)
            await store.close()
    assert sorted(ended) == ["subscription", "wait"]
    await store.close()
    with pytest.raises(StoreClosedError):
        await store.get_job("q", "a")


async def test_delayed_jobs_order_and_next_run_time(store: SQLiteStore) -> None:
    now = time.time()
    await store.add_jobs(
        [
            [new_job("late", state=JobState.DELAYED, delay=20.0)],
            [new_job("soon", state=JobState.DELAYED, delay=10.0)],
            [new_job("lifo", lifo=True)],
            [new_job("fifo")],
            [new_job("urgent", priority=0, lifo=True)],
            [new_job("low", priority=3)],
        ],
        now,
    )
    waiting = await store.get_jobs("q", [WAITING], 0, None)
    assert [job.id for job in waiting] == ["urgent", "lifo", "fifo", "low"]
    delayed = await store.get_jobs("q", [JobState.DELAYED], 0, None)
    assert [job.id for job in delayed] == ["soon", "late"]
    taken = await store.take_jobs("q", limit=10, token="t", lock_until=now + 60, now=now + 15)
    # A promoted job goes behind the waiting jobs of its priority.
    assert [job.id for job in taken.jobs] == ["urgent", "lifo", "fifo", "soon", "low"]
    assert taken.next_run_at == pytest.approx(now + 20.0)
