"""Groups: lanes taken round-robin, and limits that hold for each group apart (GROUPS and
TAKE BY LANES of the store protocol).

Jobs are taken through the store's own ``take_jobs`` with an explicit ``now`` where the
order or a time window is the point, and by real workers on both store objects where the
point is a limit held across processes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from conveyor_core import Job, JobState, Queue, QueueEvent, QueueEvents
from conveyor_core.store import (
    Completion,
    Failure,
    GroupLimits,
    Release,
    StoreInterface,
    TakeResult,
)

from ._support import Harness, racing_takes

T0 = 1_800_000_000.0
"""A fixed moment the tests move time from."""


def _in(group: str, **more: Any) -> dict[str, Any]:
    return {"group_id": group, **more}


async def _add(queue: Queue, group: str | None, count: int, **opts: Any) -> list[str]:
    """Add ``count`` jobs of ``group`` (``None``: without a group) named after it."""
    jobs = []
    for index in range(count):
        options = dict(opts) if group is None else _in(group, **opts)
        jobs.append(await queue.add(group or "own", {"n": index}, options))
    return [job.id for job in jobs]


async def _take(
    queue: Queue, limit: int, *, now: float = T0, store: StoreInterface | None = None
) -> list[tuple[str, int]]:
    """Take up to ``limit`` jobs: ``(name, data["n"])`` of each, in the order handed out."""
    result = await (store or queue.store).take_jobs(
        queue.name, limit=limit, token="tok", lock_until=now + 600, now=now
    )
    return [(job.name, _n(job.data)) for job in result.jobs]


async def _take_result(queue: Queue, now: float = T0) -> TakeResult:
    return await queue.store.take_jobs(
        queue.name, limit=5, token="tok", lock_until=now + 600, now=now
    )


def _n(data: str) -> int:
    value = json.loads(data)
    assert isinstance(value, dict)
    return int(value["n"])


async def _complete(queue: Queue, ids: Sequence[str], now: float = T0) -> None:
    applied = await queue.store.complete_jobs(
        queue.name, [Completion(job_id, "tok", "null") for job_id in ids], now
    )
    assert all(applied)


class GroupTests:
    """GROUPS and TAKE BY LANES of the store protocol."""

    async def test_groups_are_taken_round_robin_whatever_their_backlog(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-rr"))
        await _add(queue, "tenant-a", 6)
        await _add(queue, "tenant-b", 2)
        await _add(queue, "tenant-c", 1)
        assert await _take(queue, 9) == [
            ("tenant-a", 0),
            ("tenant-b", 0),
            ("tenant-c", 0),
            ("tenant-a", 1),
            ("tenant-b", 1),
            ("tenant-a", 2),
            ("tenant-a", 3),
            ("tenant-a", 4),
            ("tenant-a", 5),
        ]

    async def test_the_rotation_goes_on_from_one_take_to_the_next(self, env: Harness) -> None:
        # With group limits (that hold nothing back here) or without.
        for limited in (False, True):
            queue = env.queue(env.name(f"groups-turns-{limited}"))
            if limited:
                await queue.set_group_limits(concurrency=10)
            await _add(queue, "a", 3)
            await _add(queue, "b", 3)
            await _add(queue, "c", 3)
            turns = [
                await _take(queue, 2, store=(env.store, env.second_store)[i % 2]) for i in range(4)
            ]
            assert turns == [
                [("a", 0), ("b", 0)],
                [("c", 0), ("a", 1)],
                [("b", 1), ("c", 1)],
                [("a", 2), ("b", 2)],
            ], f"limited: {limited}"
            # A group that empties and comes back joins the end of the rotation.
            await _add(queue, "a", 1)
            assert await _take(queue, 3) == [("c", 2), ("a", 0)]

    async def test_a_single_job_of_another_group_overtakes_a_backlog(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-backlog"))
        await queue.add_bulk(
            [{"name": "bulk", "data": {"n": i}, "opts": _in("big")} for i in range(2000)]
        )
        assert await _take(queue, 3) == [("bulk", 0), ("bulk", 1), ("bulk", 2)]
        await _add(queue, "small", 1)
        # The lane served least recently goes first: the newcomer, at once.
        assert await _take(queue, 1) == [("small", 0)]
        assert await _take(queue, 1) == [("bulk", 3)]

    async def test_jobs_without_a_group_are_one_lane_of_the_rotation(self, env: Harness) -> None:
        # With group limits or without, within a take and from one take to the next.
        for limited in (False, True):
            queue = env.queue(env.name(f"groups-own-{limited}"))
            if limited:
                await queue.set_group_limits(concurrency=10)
            await _add(queue, None, 3)
            await _add(queue, "g", 3)
            await _add(queue, "h", 3)
            assert await _take(queue, 4) == [("own", 0), ("g", 0), ("h", 0), ("own", 1)]
            assert [await _take(queue, 1) for _ in range(5)] == [
                [("g", 1)],
                [("h", 1)],
                [("own", 2)],
                [("g", 2)],
                [("h", 2)],
            ], f"limited: {limited}"

    async def test_the_own_lane_counts_its_own_waiting_jobs_only(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-own-count"))
        # Finished jobs of the queue, and waiting jobs of another queue (with a group or
        # not), count for nothing.
        done = await _add(queue, None, 3)
        assert len(await _take(queue, 3)) == 3
        await _complete(queue, done)
        other = env.queue(env.name("groups-own-count-other"))
        await _add(other, None, 10)
        await _add(other, "b", 10)
        await _add(queue, None, 1)
        await _add(queue, "a", 5)
        for each in (queue, other):
            await each.get_job_counts()
        assert await _take(queue, 4) == [("own", 0), ("a", 0), ("a", 1), ("a", 2)]

    async def test_an_emptied_lane_takes_no_place_in_a_take(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-emptied"))
        await _add(queue, "a", 1)
        await _add(queue, "b", 2)
        await _add(queue, "c", 2)
        assert await _take(queue, 3) == [("a", 0), ("b", 0), ("c", 0)]
        # Lane "a", served longest ago, has no job left: the take goes to "b" and "c".
        assert await _take(queue, 2) == [("b", 1), ("c", 1)]

    async def test_a_plain_take_serves_no_lane(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-plain"))
        await _add(queue, "a", 1)
        assert await _take(queue, 1) == [("a", 0)]
        # No waiting job has a group now (lane "a" is empty): a plain take.
        await _add(queue, None, 2)
        assert await _take(queue, 1) == [("own", 0)]
        # The own lane was never served by lanes: it still goes before lane "a".
        await _add(queue, "a", 1)
        assert await _take(queue, 1) == [("own", 1)]
        assert await _take(queue, 1) == [("a", 0)]

    async def test_waiting_jobs_list_by_priority_and_entry_whatever_their_group(
        self, env: Harness
    ) -> None:
        # A listing of waiting jobs follows priority, then lifo before fifo, then entry,
        # across the lanes: the groups decide only which lane a take serves.
        queue = env.queue(env.name("list-lanes"))
        added: list[tuple[str, dict[str, Any]]] = [
            ("a", {}),
            ("b", {"group_id": "g1"}),
            ("c", {"priority": 2}),
            ("d", {"group_id": "g2", "priority": 1}),
            ("e", {"group_id": "g1"}),
            ("f", {"lifo": True}),
            ("g", {"group_id": "g2", "lifo": True}),
            ("h", {"group_id": "g2", "priority": 2}),
            ("i", {}),
        ]
        for name, opts in added:
            await queue.add(name, None, opts)
        listed = await queue.get_jobs("waiting")
        assert [job.name for job in listed] == ["g", "f", "a", "b", "e", "i", "d", "c", "h"]

    async def test_a_take_by_lanes_publishes_active_in_the_order_taken(self, env: Harness) -> None:
        # With and without group limits: a store may take the lanes differently when it
        # has no group's limits to check.
        for concurrency in (None, 5):
            q = env.name(f"groups-events-{concurrency}")
            queue = env.queue(q)
            await queue.set_group_limits(concurrency=concurrency)
            seen: list[QueueEvent] = []
            async with QueueEvents(q, store=env.second_store) as listener:
                listener.on("active", seen.append)
                a = await _add(queue, "a", 2)
                b = await _add(queue, "b", 1)
                assert len(await _take(queue, 3)) == 3

                async def arrived(seen: list[QueueEvent] = seen) -> bool:
                    return len(seen) == 3

                await env.wait_for(arrived, "the active events of the take")
            assert [event.job_id for event in seen] == [a[0], b[0], a[1]], concurrency

    async def test_a_lane_keeps_priority_then_entry_order(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-order"))
        await _add(queue, "g", 2)
        await queue.add("g", {"n": 7}, _in("g", priority=1, lifo=True))
        await queue.add("g", {"n": 8}, _in("g", lifo=True))
        await _add(queue, "h", 1)
        assert await _take(queue, 5) == [("g", 8), ("h", 0), ("g", 0), ("g", 1), ("g", 7)]

    async def test_delayed_retried_and_released_jobs_return_to_their_lane(
        self, env: Harness
    ) -> None:
        name = env.name("groups-return")
        queue = Queue(name, store=env.store, clock=lambda: T0)
        (delayed,) = await _add(queue, "a", 1, delay=5)
        (flaky,) = await _add(queue, "b", 1, attempts=2)
        taken = await _take(queue, 5)
        assert taken == [("b", 0)]
        store = queue.store
        await store.fail_jobs(name, [Failure(flaky, "tok", "boom", [], T0 + 1)], T0)
        assert (await store.get_job(name, flaky)).group_id == "b"  # type: ignore[union-attr]
        assert await _take(queue, 5, now=T0 + 2) == [("b", 0)]
        # The delayed job is promoted by the take and taken from its lane.
        await _add(queue, "b", 1)
        assert await _take(queue, 5, now=T0 + 6) == [("a", 0), ("b", 0)]
        counts = await queue.get_group_counts()
        assert counts["a"]["active"] == 1 and counts["b"]["active"] == 2
        assert (await store.get_job(name, delayed)).group_id == "a"  # type: ignore[union-attr]

    async def test_a_removed_or_reprioritised_job_leaves_or_moves_in_its_lane(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("groups-edit"))
        first, _, third = await _add(queue, "a", 3)
        removed, moved = await queue.get_job(first), await queue.get_job(third)
        assert removed is not None and moved is not None
        await removed.remove()
        await moved.change_priority(0, lifo=True)
        assert await _take(queue, 5) == [("a", 2), ("a", 1)]
        await _add(queue, "a", 1)
        await queue.drain()
        assert await _take(queue, 5) == []
        assert (await queue.get_group_counts())["a"]["waiting"] == 0

    async def test_a_lane_emptied_by_a_removal_or_a_cancel_gives_up_its_place_in_a_take(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("groups-emptied"))
        (removed_id,) = await _add(queue, "a", 1)
        (cancelled_id,) = await _add(queue, "b", 1)
        await _add(queue, "c", 3)
        removed = await queue.get_job(removed_id)
        cancelled = await queue.get_job(cancelled_id)
        assert removed is not None and cancelled is not None
        await removed.remove()
        assert await cancelled.cancel() == 1
        # Lanes a and b come first (never served, and "a" < "b" < "c") but have nothing
        # left: the take is c's alone.
        assert await _take(queue, 3) == [("c", 0), ("c", 1), ("c", 2)]

    async def test_a_group_concurrency_holds_each_group_apart(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-conc"))
        await queue.set_group_limits(concurrency=2)
        a = await _add(queue, "a", 4)
        await _add(queue, "b", 4)
        await _add(queue, None, 3)
        assert await _take(queue, 20) == [
            ("own", 0),
            ("a", 0),
            ("b", 0),
            ("own", 1),
            ("a", 1),
            ("b", 1),
            ("own", 2),
        ]
        held = await env.second_store.take_jobs(
            queue.name, limit=5, token="t2", lock_until=T0 + 60, now=T0
        )
        assert (held.jobs, held.concurrency_limited) == ([], True)
        await _complete(queue, a[:1])
        assert await _take(queue, 5, store=env.second_store) == [("a", 2)]
        await queue.set_group_limits(concurrency=3)
        assert await _take(queue, 5) == [("b", 2), ("a", 3)]
        await queue.set_group_limits()
        assert await _take(queue, 5) == [("b", 3)]

    async def test_a_group_at_its_concurrency_goes_on_whichever_way_its_job_leaves(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("groups-leave"))
        await queue.set_group_limits(concurrency=1)
        ids = await _add(queue, "a", 5)

        async def take() -> list[str]:
            result = await env.store.take_jobs(
                queue.name, limit=5, token="tok", lock_until=T0 + 600, now=T0
            )
            return [job.id for job in result.jobs]

        assert await take() == ids[:1]
        assert await take() == []
        # Each way an active job leaves lets the group's next job start: a final
        # failure, a retry at once, a retry later, a release.
        await env.store.fail_jobs(queue.name, [Failure(ids[0], "tok", "broke")], T0)
        assert await take() == ids[1:2]
        assert await take() == []
        retried = Failure(ids[1], "tok", "again", retry_at=T0)
        await env.store.fail_jobs(queue.name, [retried], T0)
        [third] = await take()
        assert await take() == []
        later = Failure(third, "tok", "later", retry_at=T0 + 3600)
        await env.store.fail_jobs(queue.name, [later], T0)
        [fourth] = await take()
        assert await take() == []
        await env.store.release_jobs(queue.name, [Release(fourth, "tok")], T0)
        assert len(await take()) == 1

    async def test_a_take_with_nothing_left_is_not_held_by_a_released_group(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("groups-released"))
        await queue.set_group_limits(concurrency=1)
        first, second = await _add(queue, "a", 2)

        async def take() -> TakeResult:
            return await env.store.take_jobs(
                queue.name, limit=5, token="tok", lock_until=T0 + 600, now=T0
            )

        assert [job.id for job in (await take()).jobs] == [first]
        held = await take()
        assert (held.jobs, held.concurrency_limited) == ([], True)
        await env.store.fail_jobs(queue.name, [Failure(first, "tok", "broke")], T0)
        assert [job.id for job in (await take()).jobs] == [second]
        await env.store.fail_jobs(queue.name, [Failure(second, "tok", "broke")], T0)
        # Nothing waits and nothing is active: no group's concurrency holds the take.
        empty = await take()
        assert (empty.jobs, empty.concurrency_limited) == ([], False)

    async def test_a_group_let_go_by_its_limit_keeps_its_turn(self, env: Harness) -> None:
        # "b" is served first, "a" after; both are then held by their concurrency, and
        # "a" is let go first (its job completes, or fails for good): "b", served less
        # recently, still goes first.
        for way in ("completes", "fails"):
            queue = env.queue(env.name(f"groups-turn-kept-{way}"))
            await queue.set_group_limits(concurrency=1)
            b = await _add(queue, "b", 2)
            assert await _take(queue, 1) == [("b", 0)]
            a = await _add(queue, "a", 2)
            assert await _take(queue, 5) == [("a", 0)]
            assert await _take(queue, 5) == []
            if way == "completes":
                await _complete(queue, a[:1])
            else:
                failed = await env.store.fail_jobs(queue.name, [Failure(a[0], "tok", "x")], T0)
                assert all(failed)
            await _complete(queue, b[:1])
            assert await _take(queue, 1) == [("b", 1)], way
            assert await _take(queue, 1) == [("a", 1)], way

    async def test_a_group_emptied_while_held_no_longer_holds_a_take(self, env: Harness) -> None:
        # Held by its rate window: "a" started at T0, "b" at T0 + 5.
        queue = env.queue(env.name("groups-emptied-rate"))
        await queue.set_group_limits(rate_limit={"max": 1, "duration": 60})
        a = await _add(queue, "a", 2)
        await _add(queue, "b", 2)
        assert await _take(queue, 1) == [("a", 0)]
        assert await _take(queue, 1, now=T0 + 5) == [("b", 0)]
        held = await _take_result(queue, T0 + 10)
        assert (held.jobs, held.rate_limited_until) == ([], T0 + 60)
        assert await env.store.remove_job(queue.name, a[1])
        # "a" has nothing left to wait for: only "b"'s window holds the take.
        held = await _take_result(queue, T0 + 10)
        assert (held.jobs, held.rate_limited_until) == ([], T0 + 65)
        # Held by its concurrency ("a") and by its rate window ("b").
        queue = env.queue(env.name("groups-emptied-conc"))
        await queue.set_group_limits(concurrency=1, rate_limit={"max": 1, "duration": 60})
        a = await _add(queue, "a", 2)
        b = await _add(queue, "b", 2)
        assert await _take(queue, 5) == [("a", 0), ("b", 0)]
        await _complete(queue, b[:1])
        held = await _take_result(queue, T0 + 10)
        assert (held.jobs, held.concurrency_limited) == ([], True)
        assert await env.store.remove_job(queue.name, a[1])
        held = await _take_result(queue, T0 + 10)
        assert (held.jobs, held.concurrency_limited, held.rate_limited_until) == (
            [],
            False,
            T0 + 60,
        )

    async def test_a_waiting_grouped_job_removed_or_cancelled_leaves_its_lane(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("groups-gone"))
        removed, cancelled, kept = await _add(queue, "a", 3)
        assert await env.store.remove_job(queue.name, removed)
        assert await env.store.cancel_job(queue.name, cancelled, "cancelled: no", T0) == 1
        counts = await env.store.get_counts(queue.name)
        assert (counts[JobState.WAITING], counts[JobState.FAILED]) == (1, 1)
        assert [job.id for job in await queue.get_jobs("waiting")] == [kept]
        groups = await queue.get_group_counts()
        assert (groups["a"]["waiting"], groups["a"]["failed"]) == (1, 1)
        assert await _take(queue, 5) == [("a", 2)]

    async def test_racing_takes_never_pass_a_group_concurrency(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-race"))
        await queue.set_group_limits(concurrency=2)
        for group in ("a", "b", "c"):
            await queue.add_bulk([{"name": group, "opts": _in(group)} for _ in range(10)])
        taken = await racing_takes(env, queue.name, 12, 3, T0)
        assert len(taken) == len(set(taken)) == 6
        counts = await queue.get_group_counts()
        assert {group: counts[group]["active"] for group in counts} == {"a": 2, "b": 2, "c": 2}

    async def test_racing_takes_hand_out_own_and_grouped_jobs_once(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-race-own"))
        await queue.set_group_limits(concurrency=2)
        own = await queue.add_bulk([{"name": "own"} for _ in range(10)])
        for group in ("a", "b", "c"):
            await queue.add_bulk([{"name": group, "opts": _in(group)} for _ in range(10)])
        taken = await racing_takes(env, queue.name, 12, 3, T0)
        taken += [job.id for job in (await _take_result(queue)).jobs]
        assert len(taken) == len(set(taken)) == 16
        assert {job.id for job in own} <= set(taken)
        counts = await queue.get_group_counts()
        assert {group: counts[group]["active"] for group in counts} == {"a": 2, "b": 2, "c": 2}

    async def test_workers_on_two_store_objects_keep_each_group_to_its_limit(
        self, env: Harness
    ) -> None:
        name = env.name("groups-workers")
        queue = env.queue(name)
        await queue.set_group_limits(concurrency=1)
        for group in ("a", "b"):
            await queue.add_bulk(
                [{"name": "work", "data": i, "opts": _in(group)} for i in range(12)]
            )
        running: dict[str, int] = {"a": 0, "b": 0}
        most: dict[str, int] = {"a": 0, "b": 0}

        async def handle(job: Job) -> None:
            group = job.opts.group_id
            assert group is not None
            running[group] += 1
            most[group] = max(most[group], running[group])
            await anyio.sleep(0.01)
            running[group] -= 1

        async with (
            env.workers({name: handle}, concurrency=4),
            env.workers({name: handle}, store=env.second_store, concurrency=4),
        ):
            await env.wait_count(name, JobState.COMPLETED, 24)
        assert most == {"a": 1, "b": 1}

    async def test_a_group_rate_limit_holds_each_group_apart(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-rate"))
        await queue.set_group_limits(rate_limit={"max": 2, "duration": 10})
        await _add(queue, "a", 5)
        await _add(queue, "b", 1)
        assert await _take(queue, 10) == [("a", 0), ("b", 0), ("a", 1)]
        result = await queue.store.take_jobs(
            queue.name, limit=10, token="tok", lock_until=T0 + 60, now=T0 + 4
        )
        assert (result.jobs, result.rate_limited_until) == ([], T0 + 10)
        assert not result.concurrency_limited
        await _add(queue, "b", 1)
        # b started one job in its window: it has room for one more.
        assert await _take(queue, 10, now=T0 + 5) == [("b", 0)]
        assert await _take(queue, 10, now=T0 + 10) == [("a", 2), ("a", 3)]

    async def test_a_group_let_go_by_its_rate_window_keeps_its_turn(self, env: Harness) -> None:
        # "b" is served before "a"; both fill their windows, which end together: "b",
        # served less recently, goes first again.
        queue = env.queue(env.name("groups-window-turn"))
        await queue.set_group_limits(rate_limit={"max": 2, "duration": 60})
        await _add(queue, "b", 3)
        assert await _take(queue, 1) == [("b", 0)]
        await _add(queue, "a", 3)
        assert await _take(queue, 5) == [("a", 0), ("b", 1), ("a", 1)]
        assert await _take(queue, 5, now=T0 + 30) == []
        assert await _take(queue, 1, now=T0 + 61) == [("b", 2)]
        assert await _take(queue, 1, now=T0 + 61) == [("a", 2)]
        # Both emptied: a later take finds nothing holding it, and a new group's job.
        await _add(queue, "c", 1)
        later = await queue.store.take_jobs(
            queue.name, limit=5, token="tok", lock_until=T0 + 600, now=T0 + 200
        )
        assert [job.name for job in later.jobs] == ["c"]
        assert (later.rate_limited_until, later.concurrency_limited) == (None, False)

    async def test_active_grouped_jobs_list_in_the_order_they_started(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-active-order"))
        ids = await _add(queue, "g", 4) + await _add(queue, "h", 2)
        assert len(await _take(queue, 4)) == 4
        assert len(await _take(queue, 1)) == 1
        assert len(await _take(queue, 1)) == 1
        started = [ids[0], ids[4], ids[1], ids[5], ids[2], ids[3]]
        listed = await queue.store.get_jobs(queue.name, [JobState.ACTIVE], 0, None)
        assert [job.id for job in listed] == started

    async def test_the_own_lane_of_plain_takes_keeps_its_turn_when_groups_come(
        self, env: Harness
    ) -> None:
        # Takes with no grouped job waiting serve no lane: the own lane has not been
        # served when the first group comes, so it goes first (the empty id).
        queue = env.queue(env.name("groups-after-plain"))
        await _add(queue, None, 4)
        assert await _take(queue, 2) == [("own", 0), ("own", 1)]
        await _add(queue, "g", 2)
        assert await _take(queue, 3) == [("own", 2), ("g", 0), ("own", 3)]

    async def test_the_queue_limits_bound_a_take_by_lanes(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-global"))
        await _add(queue, "a", 3)
        await _add(queue, "b", 3)
        await queue.set_global_concurrency(3)
        assert await _take(queue, 10) == [("a", 0), ("b", 0), ("a", 1)]
        await queue.remove_global_concurrency()
        await queue.pause()
        assert await _take(queue, 10) == []
        await queue.resume()
        assert await _take(queue, 10) == [("b", 1), ("a", 2), ("b", 2)]

    async def test_a_workers_rate_limit_bounds_a_take_by_lanes(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-limiter"))
        await _add(queue, "a", 2)
        await _add(queue, "b", 2)

        async def take(now: float) -> tuple[list[tuple[str, int]], float | None]:
            result = await queue.store.take_jobs(
                queue.name, limit=10, token="tok", lock_until=now + 60, now=now,
                rate_limit=(3, 10.0),
            )  # fmt: skip
            return [(job.name, _n(job.data)) for job in result.jobs], result.rate_limited_until

        assert (await take(T0))[0] == [("a", 0), ("b", 0), ("a", 1)]
        assert await take(T0 + 1) == ([], T0 + 10)
        assert (await take(T0 + 10))[0] == [("b", 1)]

    async def test_a_lane_held_by_its_limit_does_not_shorten_a_take(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-held-first"))
        await queue.set_group_limits(concurrency=1)
        await _add(queue, "a", 2)
        assert await _take(queue, 1) == [("a", 0)]
        b = await _add(queue, "b", 2)
        c = await _add(queue, "c", 2)
        assert await _take(queue, 2) == [("b", 0), ("c", 0)]
        await _complete(queue, [b[0], c[0]])
        # a is the lane served least recently, still at its limit: the take passes over
        # it and fills up from the others, and says nothing of a (it took jobs).
        result = await queue.store.take_jobs(
            queue.name, limit=2, token="tok", lock_until=T0 + 60, now=T0
        )
        assert [(job.name, _n(job.data)) for job in result.jobs] == [("b", 1), ("c", 1)]
        assert (result.concurrency_limited, result.rate_limited_until) == (False, None)

    async def test_groups_held_by_their_rate_limit_are_taken_once_it_is_lifted(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("groups-lifted"))
        await queue.set_group_limits(rate_limit={"max": 1, "duration": 10})
        await _add(queue, "a", 3)
        await _add(queue, "b", 3)
        assert await _take(queue, 10) == [("a", 0), ("b", 0)]
        assert await _take(queue, 10, now=T0 + 1) == []
        await queue.set_group_limits()
        assert await _take(queue, 10, now=T0 + 1) == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]

    async def test_a_rate_window_starts_afresh_after_the_limit_was_lifted(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("groups-window"))
        await queue.set_group_limits(rate_limit={"max": 2, "duration": 10})
        await _add(queue, "a", 6)
        assert await _take(queue, 1) == [("a", 0)]
        await queue.set_group_limits()
        assert await _take(queue, 2, now=T0 + 1) == [("a", 1), ("a", 2)]
        # Served without a rate limit, a keeps no window: the limit set again counts
        # from its next take.
        await queue.set_group_limits(rate_limit={"max": 2, "duration": 10})
        assert await _take(queue, 5, now=T0 + 2) == [("a", 3), ("a", 4)]

    async def test_group_counts_cover_each_group_in_every_state(self, env: Harness) -> None:
        queue = Queue(env.name("groups-counts"), store=env.store, clock=lambda: T0)
        a = await _add(queue, "a", 3)
        await _add(queue, "b", 1, delay=60)
        await _add(queue, None, 2)
        assert await queue.get_group_counts() == {
            "a": {**_zero(), "waiting": 3},
            "b": {**_zero(), "delayed": 1},
        }
        await _take(queue, 2)
        await _complete(queue, [a[0]])
        counts = await queue.get_group_counts()
        assert counts["a"] == {**_zero(), "waiting": 2, "completed": 1}
        other = Queue(queue.name, store=env.second_store)
        assert await other.get_group_counts() == counts
        assert (await queue.get_job_counts())["active"] == 1  # the own lane's job

    async def test_group_counts_follow_finished_jobs_retried_removed_and_cleaned(
        self, env: Harness
    ) -> None:
        queue = Queue(env.name("groups-finished"), store=env.store, clock=lambda: T0)
        a = await _add(queue, "a", 3)
        b = await _add(queue, "b", 2)
        assert len(await _take(queue, 5)) == 5
        await _complete(queue, a)
        assert await env.store.fail_jobs(
            queue.name, [Failure(job_id, "tok", "broke") for job_id in b], T0
        ) == [True, True]
        assert await queue.get_group_counts() == {
            "a": {**_zero(), "completed": 3},
            "b": {**_zero(), "failed": 2},
        }
        # One failed job runs again: it leaves the failed count for waiting.
        await (await queue.get_job(b[0])).retry()  # type: ignore[union-attr]
        assert (await queue.get_group_counts())["b"] == {**_zero(), "waiting": 1, "failed": 1}
        await (await queue.get_job(a[0])).remove()  # type: ignore[union-attr]
        assert (await queue.get_group_counts())["a"] == {**_zero(), "completed": 2}
        # A group whose last jobs are cleaned away is no longer listed.
        await queue.clean(0, 10, JobState.COMPLETED)
        other = Queue(queue.name, store=env.second_store)
        assert await other.get_group_counts() == {"b": {**_zero(), "waiting": 1, "failed": 1}}
        assert await _take(queue, 1) == [("b", 0)]
        await _complete(queue, [b[0]])
        await queue.clean(0, 10, JobState.FAILED)
        assert await queue.get_group_counts() == {"b": {**_zero(), "completed": 1}}

    async def test_clean_and_drain_walk_grouped_and_own_waiting_jobs_in_one_order(
        self, env: Harness
    ) -> None:
        # Waiting jobs are cleaned in the order they are listed: by priority, then in
        # the order they entered waiting (a lifo job first), whichever lane they are in.
        queue = Queue(env.name("groups-clean"), store=env.store, clock=lambda: T0)
        for name, opts in (
            ("own1", {}),
            ("a1", _in("a")),
            ("own2", {"priority": 2}),
            ("b1", _in("b", priority=1)),
            ("a2", _in("a")),
            ("own3", {}),
            ("b2", _in("b", lifo=True)),
            ("own4", {"lifo": True}),
            ("a3", _in("a", priority=2)),
        ):
            await queue.add(name, {}, opts)
        expected = ["own4", "b2", "own1", "a1", "a2", "own3", "b1", "own2", "a3"]
        assert [job.name for job in await queue.get_jobs("waiting")] == expected

        async def clean(limit: int | None) -> list[str]:
            names = {job.id: job.name for job in await queue.get_jobs("waiting")}
            removed = await env.store.clean(queue.name, JobState.WAITING, T0 + 1, limit)
            return [names[job_id] for job_id in removed]

        assert await clean(3) == expected[:3]
        assert await clean(4) == expected[3:7]
        assert [job.name for job in await queue.get_jobs("waiting")] == expected[7:]
        assert await clean(None) == expected[7:]
        assert await queue.get_group_counts() == {}
        # A drain takes the last job of each kind of lane too.
        await queue.add("own5", {}, {})
        await queue.add("a4", {}, _in("a"))
        await queue.add("own6", {}, {"priority": 3})
        assert await queue.drain() == 3
        assert (await queue.get_job_counts())["waiting"] == 0
        assert await queue.get_group_counts() == {}

    async def test_limits_are_read_back_and_bad_ones_refused(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-limits"))
        assert await queue.get_group_limits() == GroupLimits()
        await queue.set_group_limits(concurrency=3, rate_limit={"max": 5, "duration": 2.5})
        other = Queue(queue.name, store=env.second_store)
        assert await other.get_group_limits() == GroupLimits(3, (5, 2.5))
        for bad in (
            {"concurrency": 0},
            {"concurrency": True},
            {"rate_limit": {"max": 0, "duration": 1}},
            {"rate_limit": {"max": 1, "duration": 0}},
            {"rate_limit": {"max": 1}},
        ):
            with pytest.raises((ValueError, TypeError)):
                await queue.set_group_limits(**bad)
        assert await queue.get_group_limits() == GroupLimits(3, (5, 2.5))
        await queue.set_group_limits(concurrency=1)
        assert await other.get_group_limits() == GroupLimits(1, None)
        await queue.set_group_limits(rate_limit={"max": 2, "duration": 1})
        assert await other.get_group_limits() == GroupLimits(None, (2, 1.0))
        await queue.set_group_limits()
        assert await other.get_group_limits() == GroupLimits()

    async def test_a_blank_group_id_is_refused_and_nothing_written(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-bad"))
        for bad in ("", "   ", "a\x00b", 7):
            with pytest.raises(ValueError, match="group_id"):
                await queue.add("x", None, {"group_id": bad})
        assert await queue.get_job_counts() == _zero()
        assert await queue.get_group_counts() == {}

    async def test_obliterate_drops_the_limits_and_the_rotation(self, env: Harness) -> None:
        queue = env.queue(env.name("groups-gone"))
        await queue.set_group_limits(concurrency=1)
        await _add(queue, "a", 2)
        await _add(queue, "b", 2)
        assert await _take(queue, 1) == [("a", 0)]
        await queue.obliterate(force=True)
        assert await queue.get_group_limits() == GroupLimits()
        assert await queue.get_group_counts() == {}
        # A fresh start: no limit, and no lane remembers being served.
        await _add(queue, "b", 1)
        await _add(queue, "a", 2)
        assert await _take(queue, 3) == [("a", 0), ("b", 0), ("a", 1)]

    async def test_a_flows_children_keep_their_groups(self, env: Harness) -> None:
        name = env.name("groups-flow")
        await env.flow.add(
            {
                "name": "parent",
                "queue_name": name,
                "children": [
                    {"name": "a", "queue_name": name, "data": {"n": 0}, "opts": _in("a")},
                    {"name": "a", "queue_name": name, "data": {"n": 1}, "opts": _in("a")},
                    {"name": "b", "queue_name": name, "data": {"n": 0}, "opts": _in("b")},
                ],
            }
        )
        queue = env.queue(name)
        assert await _take(queue, 1) == [("a", 0)]
        assert await _take(queue, 1) == [("b", 0)]
        counts = await queue.get_group_counts()
        assert counts["a"]["waiting"] == 1 and counts["b"]["active"] == 1


def _zero() -> dict[str, int]:
    return {state.value: 0 for state in JobState}
