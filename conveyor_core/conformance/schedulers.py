"""Job schedulers: one job (or flow) per tick, however many callers fire it.

Time is moved by hand: queues get a fake clock and ticks are fired through the core's
:func:`~conveyor_core.schedulers.fire_due_schedulers` with an explicit ``now``, the way
workers fire them. One test runs real workers to show they alone keep a schedule going.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
import pytest

from conveyor_core import Job, JobState, Queue
from conveyor_core.errors import DuplicateJobError
from conveyor_core.queue import build_new_job, resolve_options
from conveyor_core.schedulers import fire_due_schedulers, fire_scheduler_tick, tick_job_id
from conveyor_core.store import Completion, SchedulerRecord, StoreInterface

from ._support import Harness

T0 = 1_800_000_000.0
"""A fixed moment (2027-01-15 08:00 UTC) the tests move time from."""


class _Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _queue(env: Harness, base: str, clock: _Clock, store: StoreInterface | None = None) -> Queue:
    return Queue(env.name(base), store=env.store if store is None else store, clock=clock)


async def _ids(queue: Queue) -> list[str]:
    jobs = await queue.get_jobs(list(JobState))
    return sorted(job.id for job in jobs)


async def _fire(queue: Queue, now: float, store: StoreInterface | None = None) -> float | None:
    return await fire_due_schedulers(queue.store if store is None else store, queue.name, now)


async def _fire_into(
    fired: list[bool], store: StoreInterface, record: SchedulerRecord, now: float
) -> None:
    ok, _ = await fire_scheduler_tick(store, record, now)
    fired.append(ok)


class SchedulerTests:
    """Ticks, their jobs, and the compare-and-set that makes each tick fire once."""

    async def test_an_interval_fires_one_job_per_tick_with_a_tick_id(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "every", clock)
        made = await queue.upsert_job_scheduler(
            "poll", every=10.0, template={"name": "poll", "data": {"n": 1}}
        )
        assert made.next_run_at == datetime.fromtimestamp(T0, UTC)
        assert made.iterations == 0
        assert await _fire(queue, T0 - 1) == T0
        assert await _ids(queue) == []
        assert await _fire(queue, T0) == T0 + 10
        assert await _fire(queue, T0) == T0 + 10
        assert await _fire(queue, T0 + 5) == T0 + 10
        assert await _ids(queue) == [tick_job_id("poll", T0)]
        job = await queue.get_job(tick_job_id("poll", T0))
        assert job is not None
        assert (job.name, job.data, job.state) == ("poll", {"n": 1}, JobState.WAITING)
        await _fire(queue, T0 + 10)
        assert await _ids(queue) == sorted([tick_job_id("poll", T0), tick_job_id("poll", T0 + 10)])
        (scheduler,) = await queue.get_job_schedulers()
        assert scheduler.iterations == 2
        assert scheduler.every == 10.0
        assert scheduler.next_run_at == datetime.fromtimestamp(T0 + 20, UTC)

    async def test_two_store_objects_racing_for_a_tick_write_one_job(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "race", clock)
        # Each tick's job deletes itself when done, so only the compare-and-set (not the
        # tick's job id) can keep a late second fire from writing the tick again.
        await queue.upsert_job_scheduler(
            "race", every=1.0, template={"name": "tick", "opts": {"remove_on_complete": True}}
        )
        stores = (env.store, env.second_store)
        fired: list[bool] = []
        for round_ in range(12):
            now = T0 + round_
            records = [
                (await store.due_schedulers(queue.name, now, 10)).schedulers for store in stores
            ]
            assert [len(found) for found in records] == [1, 1]

            async with anyio.create_task_group() as tg:
                for index, store in enumerate(stores):
                    tg.start_soon(_fire_into, fired, store, records[index][0], now)
            assert fired.count(True) == round_ + 1
            ids = await _ids(queue)
            assert ids == [tick_job_id("race", now)], f"tick {round_} wrote {ids}"
            # The tick's job runs and deletes itself; a stale fire must not bring it back.
            taken = await env.store.take_jobs(
                queue.name, limit=5, token="t", lock_until=now + 60, now=now
            )
            assert [job.id for job in taken.jobs] == ids
            await env.store.complete_jobs(queue.name, [Completion(ids[0], "t", "null")], now)
            stale = records[0][0]
            ok, _ = await fire_scheduler_tick(env.second_store, stale, now)
            assert not ok
            assert await _ids(queue) == []
        assert len(fired) == 24
        (scheduler,) = await queue.get_job_schedulers()
        assert scheduler.iterations == 12

    async def test_a_fire_with_a_stale_tick_writes_nothing(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "stale", clock)
        await queue.upsert_job_scheduler("s", every=10.0, template={"name": "s"})
        (record,) = (await env.store.due_schedulers(queue.name, T0, 10)).schedulers
        first = build_new_job(
            queue=queue.name,
            name="first",
            data="null",
            opts=resolve_options(None),
            job_id="first-of-a-tick",
        )
        assert await env.store.fire_scheduler(queue.name, "s", T0, T0 + 10, [first], T0)
        again = build_new_job(
            queue=queue.name, name="again", data="null", opts=resolve_options(None), job_id="again"
        )
        assert not await env.second_store.fire_scheduler(
            queue.name, "s", record.next_run_at or 0.0, T0 + 10, [again], T0
        )
        assert await _ids(queue) == ["first-of-a-tick"]
        (scheduler,) = await queue.get_job_schedulers()
        assert (scheduler.iterations, scheduler.next_run_at) == (
            1,
            datetime.fromtimestamp(T0 + 10, UTC),
        )

    async def test_a_fire_whose_add_fails_changes_nothing(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "atomic", clock)
        await queue.add("taken", opts={"job_id": "taken"})
        await queue.upsert_job_scheduler("a", every=10.0, template={"name": "a"})
        opts = resolve_options(None)
        root = build_new_job(
            queue=queue.name, name="root", data="null", opts=opts, job_id="root", has_children=True
        )
        child = build_new_job(queue=queue.name, name="c", data="null", opts=opts, job_id="taken")
        child.parent_id, child.parent_queue = "root", queue.name
        with pytest.raises(DuplicateJobError):
            await env.store.fire_scheduler(queue.name, "a", T0, T0 + 10, [root, child], T0)
        assert await _ids(queue) == ["taken"]
        (scheduler,) = await queue.get_job_schedulers()
        assert scheduler.iterations == 0
        assert scheduler.next_run_at == datetime.fromtimestamp(T0, UTC)

    async def test_ticks_missed_while_no_worker_ran_give_one_job(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "missed", clock)
        await queue.upsert_job_scheduler("m", every=10.0, template={"name": "m"})
        assert await _fire(queue, T0 + 95) == T0 + 100
        assert await _fire(queue, T0 + 99) == T0 + 100
        assert await _ids(queue) == [tick_job_id("m", T0)]
        (scheduler,) = await queue.get_job_schedulers()
        assert scheduler.iterations == 1

    async def test_a_cron_pattern_ticks_in_its_timezone(self, env: Harness) -> None:
        clock = _Clock(datetime(2027, 1, 10, 12, 0, tzinfo=UTC).timestamp())
        queue = _queue(env, "cron", clock)
        made = await queue.upsert_job_scheduler(
            "nightly", cron="0 3 * * *", tz="Europe/Paris", template={"name": "report"}
        )
        first = datetime(2027, 1, 11, 2, 0, tzinfo=UTC)  # 03:00 in Paris, winter time
        assert made.next_run_at == first
        assert (made.cron, made.tz) == ("0 3 * * *", "Europe/Paris")
        await _fire(queue, first.timestamp() - 1)
        assert await _ids(queue) == []
        following = await _fire(queue, first.timestamp() + 1)
        assert following == datetime(2027, 1, 12, 2, 0, tzinfo=UTC).timestamp()
        assert await _ids(queue) == [tick_job_id("nightly", first.timestamp())]

    async def test_limit_caps_the_ticks(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "limit", clock)
        await queue.upsert_job_scheduler("l", every=10.0, template={"name": "l"}, limit=2)
        for step in range(5):
            await _fire(queue, T0 + 10 * step)
        assert len(await _ids(queue)) == 2
        (scheduler,) = await queue.get_job_schedulers()
        assert (scheduler.iterations, scheduler.next_run_at) == (2, None)

    async def test_a_limit_lowered_to_the_ticks_made_ends_the_schedule_without_a_job(
        self, env: Harness
    ) -> None:
        clock = _Clock()
        queue = _queue(env, "lowered", clock)
        await queue.upsert_job_scheduler("l", every=10.0, template={"name": "l"}, limit=5)
        for step in range(2):
            await _fire(queue, T0 + 10 * step)
        lowered = await queue.upsert_job_scheduler("l", every=20.0, template={"name": "l"}, limit=2)
        assert lowered.iterations == 2
        await _fire(queue, T0 + 1000)
        assert len(await _ids(queue)) == 2
        (scheduler,) = await queue.get_job_schedulers()
        assert (scheduler.iterations, scheduler.next_run_at) == (2, None)

    async def test_start_date_delays_and_end_date_stops(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "window", clock)
        made = await queue.upsert_job_scheduler(
            "w",
            every=10.0,
            template={"name": "w"},
            start_date=datetime.fromtimestamp(T0 + 100, UTC),
            end_date=T0 + 115,
        )
        assert made.next_run_at == datetime.fromtimestamp(T0 + 100, UTC)
        assert await _fire(queue, T0 + 50) == T0 + 100
        assert await _ids(queue) == []
        for now in (T0 + 100, T0 + 110, T0 + 120, T0 + 500):
            await _fire(queue, now)
        assert await _ids(queue) == sorted([tick_job_id("w", T0 + 100), tick_job_id("w", T0 + 110)])
        (scheduler,) = await queue.get_job_schedulers()
        assert (scheduler.iterations, scheduler.next_run_at) == (2, None)

    async def test_upserting_replaces_the_pattern_and_the_template(self, env: Harness) -> None:
        clock = _Clock(datetime(2027, 1, 10, 12, 1, tzinfo=UTC).timestamp())
        queue = _queue(env, "replace", clock)
        await queue.upsert_job_scheduler("r", cron="0 3 * * *", template={"name": "old"})
        clock.now += 60
        # The same pattern again keeps the next tick and takes the new template.
        same = await queue.upsert_job_scheduler("r", cron="0 3 * * *", template={"name": "new"})
        assert same.next_run_at == datetime(2027, 1, 11, 3, 0, tzinfo=UTC)
        changed = await queue.upsert_job_scheduler(
            "r", cron="*/15 * * * *", template={"name": "newer", "data": [1]}
        )
        quarter = datetime(2027, 1, 10, 12, 15, tzinfo=UTC)
        assert changed.next_run_at == quarter
        assert changed.cron == "*/15 * * * *"
        assert [s.id for s in await queue.get_job_schedulers()] == ["r"]
        await _fire(queue, quarter.timestamp())
        job = await queue.get_job(tick_job_id("r", quarter.timestamp()))
        assert job is not None
        assert (job.name, job.data) == ("newer", [1])
        every = await queue.upsert_job_scheduler("r", every=30.0, template={"name": "e"})
        assert (every.cron, every.every, every.iterations) == (None, 30.0, 1)

    async def test_the_same_interval_again_keeps_its_next_tick_and_takes_the_template(
        self, env: Harness
    ) -> None:
        clock = _Clock()
        queue = _queue(env, "same", clock)
        await queue.upsert_job_scheduler("s", every=10.0, template={"name": "first"})
        # An interval ticks first at once: T0, kept by the same interval upserted again
        # 5 s later (where a new interval would tick at T0 + 5).
        clock.now = T0 + 5
        again = await queue.upsert_job_scheduler("s", every=10.0, template={"name": "second"})
        assert again.next_run_at == datetime.fromtimestamp(T0, UTC)
        (kept,) = await env.store.get_schedulers(queue.name)
        assert (kept.next_run_at, json.loads(kept.template)["name"]) == (T0, "second")
        await _fire(queue, T0 + 5)
        job = await queue.get_job(tick_job_id("s", T0))
        assert job is not None and job.name == "second"

    async def test_a_schedule_ended_by_an_upsert_is_no_longer_due(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "ended", clock)
        await queue.upsert_job_scheduler("a", every=10.0, template={"name": "a"})
        await queue.upsert_job_scheduler(
            "b",
            every=10.0,
            template={"name": "b"},
            start_date=datetime.fromtimestamp(T0 + 20, UTC),
        )
        clock.now = T0 + 10
        ended = await queue.upsert_job_scheduler(
            "a", every=20.0, template={"name": "a"}, end_date=T0 + 5
        )
        assert ended.next_run_at is None
        due = await env.store.due_schedulers(queue.name, T0 + 100, 1)
        assert [record.id for record in due.schedulers] == ["b"]

    async def test_bad_schedules_are_refused_before_anything_is_written(self, env: Harness) -> None:
        queue = _queue(env, "bad", _Clock())
        cases = [
            ({"cron": "61 * * * *"}, "61 * * * *"),
            ({"cron": "every day"}, "every day"),
            ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "Mars/Olympus"),
            ({"cron": "0 3 * * *", "every": 5.0}, "cron"),
            ({}, "every"),
            ({"every": 0}, "every"),
            ({"every": 5.0, "limit": 0}, "limit"),
        ]
        for kwargs, named in cases:
            with pytest.raises(ValueError, match=named.replace("*", r"\*")):
                await queue.upsert_job_scheduler("b", template={"name": "b"}, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="job_id"):
            await queue.upsert_job_scheduler(
                "b", every=5.0, template={"name": "b", "opts": {"job_id": "fixed"}}
            )
        with pytest.raises(ValueError, match="template"):
            await queue.upsert_job_scheduler("b", every=5.0)
        with pytest.raises(ValueError):
            await queue.upsert_job_scheduler(
                "b", every=5.0, template={"name": "b", "opts": {"attempts": 0}}
            )
        assert await queue.get_job_schedulers() == []
        assert await _ids(queue) == []

    async def test_a_flow_per_tick(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "etl", clock)
        other = env.name("etl-load")
        await queue.upsert_job_scheduler(
            "etl",
            every=60.0,
            flow={
                "name": "report",
                "data": {"kind": "etl"},
                "children": [
                    {"name": "extract", "queue_name": queue.name},
                    {"name": "load", "queue_name": other, "data": {"to": "db"}},
                ],
            },
        )
        await _fire(queue, T0)
        await _fire(queue, T0)
        await _fire(queue, T0 + 60)
        for tick in (T0, T0 + 60):
            root = await queue.get_job(tick_job_id("etl", tick))
            assert root is not None
            assert root.state is JobState.WAITING_CHILDREN
            assert root.data == {"kind": "etl"}
            deps = await env.store.get_dependencies(queue.name, root.id)
            assert [(d.queue, d.status) for d in deps] == [
                (queue.name, "pending"),
                (other, "pending"),
            ]
        counts = await queue.get_job_counts()
        assert (counts["waiting-children"], counts["waiting"]) == (2, 2)
        assert (await Queue(other, store=env.store).get_job_counts())["waiting"] == 2
        with pytest.raises(ValueError, match="root"):
            await queue.upsert_job_scheduler(
                "elsewhere", every=60.0, flow={"name": "x", "queue_name": other}
            )

    async def test_remove_and_obliterate_end_a_schedule(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "remove", clock)
        await queue.upsert_job_scheduler("a", every=10.0, template={"name": "a"})
        await queue.upsert_job_scheduler("b", every=10.0, template={"name": "b"})
        await _fire(queue, T0)
        assert await queue.remove_job_scheduler("a")
        assert not await queue.remove_job_scheduler("a")
        await _fire(queue, T0 + 10)
        assert [s.id for s in await queue.get_job_schedulers()] == ["b"]
        assert sorted(await _ids(queue)) == sorted(
            [tick_job_id("a", T0), tick_job_id("b", T0), tick_job_id("b", T0 + 10)]
        )
        await queue.obliterate()
        assert await queue.get_job_schedulers() == []
        assert await _fire(queue, T0 + 20) is None
        assert await _ids(queue) == []

    async def test_due_schedulers_come_earliest_first_with_the_next_tick(
        self, env: Harness
    ) -> None:
        clock = _Clock()
        queue = _queue(env, "due", clock)
        for name, start in (("c", 30.0), ("a", 10.0), ("b", 20.0), ("late", 500.0)):
            await queue.upsert_job_scheduler(
                name, every=1000.0, template={"name": name}, start_date=T0 + start
            )
        due = await env.store.due_schedulers(queue.name, T0 + 25, 10)
        assert [r.id for r in due.schedulers] == ["a", "b"]
        assert due.next_run_at == T0 + 30
        cut = await env.store.due_schedulers(queue.name, T0 + 100, 2)
        assert [r.id for r in cut.schedulers] == ["a", "b"]
        assert cut.next_run_at == T0 + 30
        assert [r.id for r in await env.store.get_schedulers(queue.name)] == [
            "a",
            "b",
            "c",
            "late",
        ]
        # A fired scheduler takes its place by its new next tick.
        assert await env.store.fire_scheduler(queue.name, "a", T0 + 10, T0 + 1010, [], T0 + 25)
        due = await env.store.due_schedulers(queue.name, T0 + 100, 1)
        assert ([r.id for r in due.schedulers], due.next_run_at) == (["b"], T0 + 30)
        after = await env.store.due_schedulers(queue.name, T0 + 600, 10)
        assert [r.id for r in after.schedulers] == ["b", "c", "late"]
        assert after.next_run_at == T0 + 1010

    async def test_idle_workers_alone_keep_a_schedule_going(self, env: Harness) -> None:
        q = env.name("workers")
        queue = env.queue(q)
        ran: list[Job] = []

        async def handle(job: Job) -> None:
            ran.append(job)

        await queue.upsert_job_scheduler("tick", every=0.1, template={"name": "tick"})
        # drain_delay far beyond the test's deadline: only waking up for the ticks
        # themselves keeps the schedule going.
        async with (
            env.workers({q: handle}, drain_delay=60.0),
            env.workers({q: handle}, store=env.second_store, drain_delay=60.0),
        ):

            async def four_ran() -> bool:
                return len(ran) >= 4

            await env.wait_for(four_ran, "four ticks to run")
        ids = [job.id for job in ran]
        assert len(ids) == len(set(ids))
        assert all(job.id.startswith("sched:tick:") for job in ran)
