"""The exact effects of single transitions: every field they reset, every event they
publish, every job they keep or delete, and the errors they raise for a missing job."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor_core import (
    DuplicateJobError,
    InvalidJobStateError,
    Job,
    JobNotFoundError,
    JobState,
    QueueEvent,
    QueueEvents,
)
from conveyor_core.store import (
    PARENT_FAILED_REASON,
    STALLED_REASON,
    Completion,
    Failure,
    NewJob,
    Release,
    child_failed_reason,
)

from ._support import Harness, Runs, bare_job, nodes_by_name

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
ACTIVE = JobState.ACTIVE
DELAYED = JobState.DELAYED
WAITING = JobState.WAITING
WAITING_CHILDREN = JobState.WAITING_CHILDREN


async def _expire_lock(env: Harness, queue: str) -> Job:
    """Take the next job of ``queue`` with a lock that has already run out."""
    now = time.time()
    taken = await env.store.take_jobs(queue, limit=1, token="gone", lock_until=now - 1, now=now)
    assert len(taken.jobs) == 1, f"expected one job to take from {queue!r}"
    job = await env.job(queue, taken.jobs[0].id)
    assert job is not None and job.state is ACTIVE
    return job


async def _seen(
    env: Harness, seen: list[QueueEvent], wanted: Callable[[QueueEvent], bool], what: str
) -> list[QueueEvent]:
    """Wait until at least one event of ``seen`` matches; returns every match."""

    async def arrived() -> bool:
        return any(wanted(event) for event in seen)

    await env.wait_for(arrived, what)
    return [event for event in seen if wanted(event)]


class TransitionTests:
    """What one transition changes, down to single fields and events."""

    async def test_a_released_parent_with_a_delay_waits_out_its_delay(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "opts": {"delay": 3600},
                "children": [{"name": "child", "queue_name": child_q}],
            }
        )
        brief = await env.flow.add(
            {
                "name": "brief",
                "queue_name": parent_q,
                "opts": {"delay": 0.5},
                "children": [{"name": "quick", "queue_name": child_q}],
            }
        )
        jobs = nodes_by_name(node)
        assert await env.state(jobs["parent"]) is WAITING_CHILDREN
        async with env.workers({child_q: Runs().handler()}):
            child = await env.wait_state(jobs["child"], COMPLETED)
            await env.wait_state(brief.children[0].job, COMPLETED)
        # Nobody takes from the parents' queue, so a due delayed job stays delayed.
        assert await env.state(brief.job) is DELAYED, "a delay under a second counts too"
        parent = await env.reread(jobs["parent"])
        assert parent is not None and parent.state is DELAYED, "the delay runs from the release"
        assert parent.run_at is not None and child.finished_at is not None
        waited = (parent.run_at - child.finished_at).total_seconds()
        assert 3600 - 5 <= waited <= 3600 + 5, f"released with a delay of {waited}s"
        parents = env.queue(parent_q)
        assert await parents.get_jobs(WAITING) == []
        assert await parents.get_jobs(WAITING_CHILDREN) == []
        counts = await parents.get_job_counts()
        assert (counts["delayed"], counts["waiting-children"]) == (2, 0)

    async def test_finished_jobs_are_listed_newest_first_across_calls_of_any_size(
        self, env: Harness
    ) -> None:
        # Calls of 3, 1, 8 and 1 jobs, each finishing its jobs in the reverse of the
        # order they were added: the listing is the reverse of the order they finished.
        sizes = (3, 1, 8, 1)
        for state in (COMPLETED, FAILED):
            q = env.name(f"newest-{state.value}")
            queue = env.queue(q)
            ids = [(await queue.add(f"j{i}", None)).id for i in range(sum(sizes))]
            now = time.time()
            taken = await env.store.take_jobs(
                q, limit=len(ids), token="tok", lock_until=now + 600, now=now
            )
            assert len(taken.jobs) == len(ids)
            finished: list[str] = []
            start = 0
            for size in sizes:
                batch = ids[start : start + size][::-1]
                start += size
                if state is COMPLETED:
                    done = [Completion(job_id, "tok", "null") for job_id in batch]
                    assert await env.store.complete_jobs(q, done, now) == [True] * size
                else:
                    failed = [Failure(job_id, "tok", "boom") for job_id in batch]
                    assert await env.store.fail_jobs(q, failed, now) == [True] * size
                finished += batch
            listed = await env.store.get_jobs(q, [state], 0, None)
            assert [job.id for job in listed] == finished[::-1], state

    async def test_remove_on_complete_and_on_fail_keep_only_the_newest_jobs(
        self, env: Harness
    ) -> None:
        q = env.name("keep")
        queue = env.queue(q)
        good = [await queue.add(f"good-{i}", None, {"remove_on_complete": 2}) for i in range(4)]
        bad = [await queue.add(f"bad-{i}", None, {"remove_on_fail": 1}) for i in range(3)]
        runs = Runs()
        failing = {job.name for job in bad}

        async def all_ran() -> bool:
            counts = await env.counts(q)
            return len(runs.order) == 7 and counts["waiting"] + counts["active"] == 0

        async with env.workers({q: runs.handler(fail=failing)}, concurrency=1):
            await env.wait_for(all_ran, "every job to run once")
        assert runs.order == [job.name for job in good + bad]
        completed = await queue.get_jobs(COMPLETED)
        assert [job.id for job in completed] == [good[3].id, good[2].id]
        failed = await queue.get_jobs(FAILED)
        assert [job.id for job in failed] == [bad[2].id]
        for job in [*good[:2], *bad[:2]]:
            assert await env.reread(job) is None, f"{job.name} should be deleted"

    async def test_a_stall_publishes_stalled_events_and_then_fails_the_job(
        self, env: Harness
    ) -> None:
        q = env.name("stall")
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            job = await env.queue(q).add("fragile", None)
            await _expire_lock(env, q)
            outcomes = await env.store.recover_stalled(q, time.time(), 1)
            assert [(o.id, o.failed) for o in outcomes] == [(job.id, False)]
            again = await env.reread(job)
            assert again is not None and again.state is WAITING
            assert again.stalled_count == 1 and again.failed_reason is None
            record = await env.store.get_job(q, job.id)
            assert record is not None and record.lock_token is None and record.lock_until is None
            await _expire_lock(env, q)
            outcomes = await env.store.recover_stalled(q, time.time(), 1)
            assert [(o.id, o.failed) for o in outcomes] == [(job.id, True)]
            failed = await _seen(
                env, seen, lambda e: e.type == "failed", "the failed event after the stall"
            )
        stalls = [e.data.get("count") for e in seen if e.type == "stalled" and e.job_id == job.id]
        assert stalls == [1, 2]
        assert failed[0].data.get("reason") == STALLED_REASON
        final = await env.reread(job)
        assert final is not None and final.state is FAILED
        assert final.failed_reason == STALLED_REASON and final.stalled_count == 2
        assert final.finished_at is not None

    async def test_failures_of_one_call_keep_their_own_reasons_and_stacks(
        self, env: Harness
    ) -> None:
        q = env.name("fail-batch")
        now = time.time()
        ids = ["a", "b", "c"]
        assert await env.store.add_jobs([[bare_job(q, i, WAITING)] for i in ids], now)
        taken = await env.store.take_jobs(q, limit=3, token="t", lock_until=now + 60, now=now)
        assert sorted(job.id for job in taken.jobs) == ids
        failures = [
            Failure(
                i, "t", f"{i} broke", [f"{i} line 1", f"{i} line 2"], now + 60 if i == "b" else None
            )
            for i in ids
        ]
        assert await env.store.fail_jobs(q, failures, now) == [True, True, True]
        for i in ids:
            job = await env.store.get_job(q, i)
            assert job is not None, i
            assert job.state is (DELAYED if i == "b" else FAILED), i
            assert job.failed_reason == f"{i} broke", i
            assert job.stacktrace == [f"{i} line 1", f"{i} line 2"], i
            assert job.attempts_made == 1, i

    async def test_a_record_handed_out_is_the_callers_own(self, env: Harness) -> None:
        # Changing a record a take or a read returned, its stack's list included,
        # changes nothing the store holds.
        q = env.name("own-record")
        now = time.time()
        assert await env.store.add_jobs([[bare_job(q, "a", WAITING)]], now)
        taken = await env.store.take_jobs(q, limit=1, token="t", lock_until=now + 60, now=now)
        (record,) = taken.jobs
        data = record.data
        record.stacktrace.append("changed by the caller")
        record.data = '"changed by the caller"'
        held = await env.store.get_job(q, "a")
        assert held is not None and held.stacktrace == [] and held.data == data
        failure = Failure("a", "t", "broke", ["line 1"], now + 60)
        assert await env.store.fail_jobs(q, [failure], now) == [True]
        read = await env.store.get_job(q, "a")
        assert read is not None and read.stacktrace == ["line 1"]
        read.stacktrace.append("changed by the caller")
        again = await env.store.get_job(q, "a")
        assert again is not None and again.stacktrace == ["line 1"]

    async def test_retry_forgets_the_previous_run(self, env: Harness) -> None:
        q = env.name("retry")
        queue = env.queue(q)
        broken = await queue.add("broken", None)
        fine = await queue.add("fine", None)
        runs = Runs()
        async with env.workers({q: runs.handler(fail={"broken"})}):
            failed, completed = await env.wait_finished(broken, fine)
        assert failed.state is FAILED and failed.stacktrace and failed.finished_at is not None
        assert completed.state is COMPLETED and completed.return_value == {"done": "fine"}

        await broken.retry()
        assert await queue.retry_jobs(COMPLETED) == 1
        for job in (broken, fine):
            again = await env.reread(job)
            assert again is not None and again.state is WAITING, job.name
            assert again.attempts_made == 0, job.name
            assert again.failed_reason is None and again.stacktrace == [], job.name
            assert again.return_value is None and again.finished_at is None, job.name

        stalled_q = env.name("stalled")
        stalled = await env.queue(stalled_q).add("stalled", None)
        await _expire_lock(env, stalled_q)
        await env.store.recover_stalled(stalled_q, time.time(), 0)
        dead = await env.reread(stalled)
        assert dead is not None and dead.state is FAILED and dead.stalled_count == 1
        await stalled.retry()
        again = await env.reread(stalled)
        assert again is not None and again.state is WAITING and again.stalled_count == 0

    async def test_a_retried_child_puts_its_released_parent_back_to_waiting_for_it(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "opts": {"delay": 3600},
                "children": [
                    {
                        "name": "flaky",
                        "queue_name": child_q,
                        "opts": {"continue_parent_on_failure": True},
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        async with env.workers({child_q: Runs().handler(fail={"flaky"})}):
            await env.wait_state(jobs["flaky"], FAILED)
        assert await env.state(jobs["parent"]) is DELAYED
        seen: list[QueueEvent] = []
        async with QueueEvents(parent_q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            await jobs["flaky"].retry()
            await _seen(
                env,
                seen,
                lambda e: e.type == "waiting-children" and e.job_id == jobs["parent"].id,
                "the parent's waiting-children event after the retry",
            )
        parent = await env.reread(jobs["parent"])
        assert parent is not None and parent.state is WAITING_CHILDREN
        assert parent.run_at is None, "a parent waiting for children has no run time"
        assert await env.queue(parent_q).get_jobs(DELAYED) == []
        deps = await parent.get_dependencies()
        assert deps.unprocessed == [jobs["flaky"].id] and deps.failed == {}

    async def test_lifo_jobs_keep_their_order_whichever_way_they_entered_waiting(
        self, env: Harness
    ) -> None:
        # Jobs added to waiting and jobs coming out of delayed, one after the other, all
        # lifo: the last to enter waiting is taken first.
        q = env.name("lifo-paths")
        now = time.time()

        def lifo(job_id: str, state: JobState, delay: float = 0.0) -> NewJob:
            return bare_job(q, job_id, state, lifo=True, delay=delay)

        await env.store.pause(q)
        later = [lifo("a-promoted", DELAYED, 1.0), lifo("c-promoted", DELAYED, 3.0)]
        assert await env.store.add_jobs([[job] for job in later], now) == [True, True]

        async def promote(at: float) -> None:
            # A paused queue's take moves its due delayed jobs and starts none.
            taken = await env.store.take_jobs(q, limit=1, token="t", lock_until=at + 60, now=at)
            assert taken.jobs == []

        await promote(now + 2)
        assert await env.store.add_jobs([[lifo("b-added", WAITING)]], now + 2) == [True]
        await promote(now + 4)
        waiting = await env.store.get_jobs(q, [WAITING], 0, None)
        assert [job.id for job in waiting] == ["c-promoted", "b-added", "a-promoted"]
        # Promoted by hand, too.
        assert await env.store.add_jobs([[lifo("d-promoted", DELAYED, 3600.0)]], now + 4) == [True]
        await env.store.promote_job(q, "d-promoted", now + 5)
        waiting = await env.store.get_jobs(q, [WAITING], 0, None)
        assert [job.id for job in waiting] == ["d-promoted", "c-promoted", "b-added", "a-promoted"]

    async def test_a_big_add_keeps_each_jobs_priority_and_lifo(self, env: Harness) -> None:
        # 300 jobs in one call (a store may send a big add another way than a small one).
        q = env.name("big-add")
        specs: list[dict[str, Any]] = [{"name": f"job-{i}"} for i in range(297)]
        specs += [
            {"name": "lifo", "opts": {"lifo": True}},
            {"name": "later", "opts": {"priority": 1}},
            {"name": "later-lifo", "opts": {"priority": 1, "lifo": True}},
        ]
        await env.queue(q).add_bulk(specs)
        now = time.time()
        taken = await env.store.take_jobs(q, limit=4, token="t", lock_until=now + 60, now=now)
        assert [job.name for job in taken.jobs] == ["lifo", "job-0", "job-1", "job-2"]
        waiting = await env.store.get_jobs(q, [WAITING], 0, 1)
        assert [job.name for job in waiting] == ["job-3", "job-4"]
        listed = await env.store.get_jobs(q, [WAITING], 0, None)
        assert [job.name for job in listed][-2:] == ["later-lifo", "later"]

    async def test_change_priority_with_lifo_puts_the_job_first_of_its_priority(
        self, env: Harness
    ) -> None:
        q = env.name("lifo")
        queue = env.queue(q)
        a, b, c = [await queue.add(name, None, {"priority": 3}) for name in "abc"]
        urgent = await queue.add("urgent", None, {"priority": 1})

        async def order() -> list[str]:
            return [job.name for job in await queue.get_jobs(WAITING)]

        await c.change_priority(3, lifo=True)
        assert await order() == ["urgent", "c", "a", "b"]
        await a.change_priority(3)
        assert await order() == ["urgent", "c", "b", "a"]
        await urgent.change_priority(3)
        assert await order() == ["c", "b", "a", "urgent"]
        taken = await env.store.take_jobs(
            q, limit=2, token="t", lock_until=time.time() + 60, now=time.time()
        )
        assert [job.id for job in taken.jobs] == [c.id, b.id]

    async def test_get_jobs_end_is_inclusive(self, env: Harness) -> None:
        q = env.name("range")
        queue = env.queue(q)
        waiting = [await queue.add(f"w{i}", None) for i in range(3)]
        delayed = [await queue.add(f"d{i}", None, {"delay": 3600 + i}) for i in range(2)]

        async def ids(states: list[JobState], start: int, end: int | None) -> list[str]:
            return [job.id for job in await queue.get_jobs(states, start, end)]

        everything = [job.id for job in waiting + delayed]
        assert await ids([WAITING], 0, 1) == everything[:2]
        assert await ids([WAITING, DELAYED], 0, 0) == everything[:1]
        assert await ids([WAITING, DELAYED], 2, 3) == everything[2:4]
        assert await ids([WAITING, DELAYED], 3, None) == everything[3:]

    async def test_drain_clean_and_remove_publish_their_events(self, env: Harness) -> None:
        q = env.name("tidy")
        queue = env.queue(q)
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            drained = [await queue.add(f"drained-{i}", None) for i in range(2)]
            assert await queue.drain() == 2
            done = await queue.add("done", None)
            async with env.workers({q: Runs().handler()}):
                await env.wait_state(done, COMPLETED)
            assert await queue.clean(3600) == []
            assert await queue.clean(0) == [done.id]
            lone = await queue.add("lone", None)
            await lone.remove()
            await _seen(env, seen, lambda e: e.type == "removed" and e.job_id == lone.id, "removed")
        drains = [e.data.get("count") for e in seen if e.type == "drained"]
        assert drains == [2]
        cleans = [e.data.get("count") for e in seen if e.type == "cleaned"]
        assert cleans == [1], "one cleaned event, for the clean that removed a job"
        removed = [e.job_id for e in seen if e.type == "removed"]
        assert removed == [drained[0].id, drained[1].id, done.id, lone.id]

    async def test_promote_all_and_obliterate_publish_their_events(self, env: Harness) -> None:
        q = env.name("promote-obliterate")
        queue = env.queue(q)
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            later = [await queue.add(f"later-{i}", None, {"delay": 3600}) for i in range(2)]
            assert await queue.promote_jobs() == 2
            ids = [job.id for job in later]

            def of(kind: str) -> list[str | None]:
                return [e.job_id for e in seen if e.type == kind]

            await _seen(env, seen, lambda e: e.type == "waiting" and e.job_id == ids[1], "waiting")
            assert of("waiting") == ids
            await queue.obliterate()
            await _seen(env, seen, lambda e: e.type == "removed" and e.job_id == ids[1], "removed")
            assert of("removed") == ids

    async def test_release_retry_all_and_a_child_leaving_publish_their_events(
        self, env: Harness
    ) -> None:
        q, parents = env.name("hand-back"), env.name("hand-back-parents")
        queue = env.queue(q)
        seen: list[QueueEvent] = []
        async with (
            QueueEvents(q, store=env.second_store) as listener,
            QueueEvents(parents, store=env.second_store) as parent_listener,
        ):
            listener.on("*", seen.append)
            parent_listener.on("*", seen.append)

            def waiting_twice(job_id: str) -> Callable[[], Awaitable[bool]]:
                """Its add's waiting event and a second one."""

                async def arrived() -> bool:
                    waits = [e for e in seen if e.type == "waiting" and e.job_id == job_id]
                    return len(waits) == 2

                return arrived

            jobs = [await queue.add(f"job-{i}", None) for i in range(2)]
            ids = [job.id for job in jobs]
            now = time.time()
            taken = await env.store.take_jobs(q, limit=2, token="t", lock_until=now + 60, now=now)
            assert [job.id for job in taken.jobs] == ids
            released = [Release(ids[0], "t")]
            assert await env.store.release_jobs(q, released, now) == [True]
            await env.wait_for(waiting_twice(ids[0]), "the release's waiting event")
            assert await env.store.fail_jobs(q, [Failure(ids[1], "t", "broke")], now) == [True]
            assert await queue.retry_jobs() == 1
            await env.wait_for(waiting_twice(ids[1]), "the retry's waiting event")
            node = await env.flow.add(
                {
                    "name": "parent",
                    "queue_name": parents,
                    "children": [{"name": "leaving", "queue_name": q}],
                }
            )
            assert await node.children[0].job.remove_child_dependency() is True
            parent_id = node.job.id
            await _seen(env, seen, lambda e: e.type == "waiting" and e.job_id == parent_id, "left")

    async def test_removing_a_parents_last_pending_child_releases_it_with_its_event(
        self, env: Harness
    ) -> None:
        q, kids = env.name("released"), env.name("released-kids")
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            node = await env.flow.add(
                {
                    "name": "parent",
                    "queue_name": q,
                    "children": [{"name": "kid", "queue_name": kids}],
                }
            )
            await node.children[0].job.remove()
            await _seen(
                env,
                seen,
                lambda e: e.type == "waiting" and e.job_id == node.job.id,
                "the released parent's waiting event",
            )
        assert await env.state(node.job) is WAITING
        assert [e.type for e in seen if e.job_id == node.job.id] == [
            "added",
            "waiting-children",
            "waiting",
        ]

    async def test_operations_on_a_missing_job_raise_job_not_found(self, env: Harness) -> None:
        q = env.name("missing")
        queue = env.queue(q)
        job = await queue.add("ghost", None, {"delay": 3600})
        kept = await queue.add("kept", None)
        await job.remove()
        attempts: dict[str, Callable[[], Awaitable[object]]] = {
            "get_dependencies": job.get_dependencies,
            "get_logs": job.get_logs,
            "log": lambda: job.log("line"),
            "update_progress": lambda: job.update_progress(50),
            "update_data": lambda: job.update_data({"v": 2}),
            "change_priority": lambda: job.change_priority(4),
            "change_delay": lambda: job.change_delay(10),
            "promote": job.promote,
            "retry": job.retry,
        }
        for name, attempt in attempts.items():
            with pytest.raises(JobNotFoundError):
                await attempt()
            assert await env.reread(job) is None, f"{name} wrote the missing job"
        assert await env.total(q) == 1 and await env.state(kept) is WAITING

    async def test_a_retry_without_backoff_runs_again_at_once(self, env: Harness) -> None:
        q = env.name("again")
        job = await env.queue(q).add("twice", None, {"attempts": 2})
        tries: list[int] = []

        async def fails_first(job: Job) -> str:
            tries.append(job.attempts_made)
            if len(tries) == 1:
                raise RuntimeError("first try broke")
            return "second try"

        async with env.workers({q: fails_first}):
            done = await env.wait_state(job, COMPLETED, FAILED)
        assert done.state is COMPLETED and done.return_value == "second try"
        assert tries == [0, 1] and done.attempts_made == 2

    async def test_release_hands_a_job_back_with_its_own_token_only(self, env: Harness) -> None:
        q = env.name("release")
        job = await env.queue(q).add("handed-back", None)
        now = time.time()
        taken = await env.store.take_jobs(q, limit=1, token="mine", lock_until=now + 60, now=now)
        assert [j.id for j in taken.jobs] == [job.id]
        assert await env.store.release_jobs(q, [Release(job.id, "other")], time.time()) == [False]
        assert await env.state(job) is ACTIVE
        assert await env.store.release_jobs(q, [Release(job.id, "mine")], time.time()) == [True]
        assert await env.state(job) is WAITING
        assert await env.store.release_jobs(q, [Release(job.id, "mine")], time.time()) == [False]
        now = time.time()
        again = await env.store.take_jobs(q, limit=1, token="next", lock_until=now + 60, now=now)
        assert [j.id for j in again.jobs] == [job.id]
        failure = Failure(job.id, "next", "gave up", [], None)
        assert await env.store.fail_jobs(q, [failure], time.time()) == [True]
        assert await env.store.fail_jobs(q, [failure], time.time()) == [False]
        assert await env.state(job) is FAILED

    async def test_a_stall_that_removes_a_parent_skips_its_stalled_sibling(
        self, env: Harness
    ) -> None:
        parent_q, q = env.name("parent"), env.name("stall")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "opts": {"fail_parent_on_child_failure": "remove"},
                "children": [
                    {"name": "first", "queue_name": q},
                    {"name": "second", "queue_name": q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        now = time.time()
        taken = await env.store.take_jobs(q, limit=2, token="gone", lock_until=now - 1, now=now)
        assert len(taken.jobs) == 2
        outcomes = await env.store.recover_stalled(q, time.time(), 0)
        assert len(outcomes) == 1 and outcomes[0].failed
        failed_id = outcomes[0].id
        other = next(job for job in taken.jobs if job.id != failed_id)
        assert await env.reread(jobs["parent"]) is None, "the remove policy removed the parent"
        assert await env.job(q, other.id) is None, "its unfinished sibling went with it"
        failed = await env.job(q, failed_id)
        assert failed is not None and failed.failed_reason == STALLED_REASON

    async def test_a_child_retried_after_its_parent_failed_changes_nothing_in_it(
        self, env: Harness
    ) -> None:
        parent_q, child_q, idle_q = env.name("parent"), env.name("child"), env.name("idle")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "bad", "queue_name": child_q},
                    {"name": "unstarted", "queue_name": idle_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        failures: list[str] = []

        async def breaks(job: Job) -> None:
            failures.append(f"broke {len(failures) + 1}")
            raise RuntimeError(failures[-1])

        async with env.workers({child_q: breaks}):
            await env.wait_state(jobs["parent"], FAILED)
            parent = await env.reread(jobs["parent"])
            assert parent is not None
            deps = await parent.get_dependencies()
            assert deps.failed == {
                jobs["bad"].id: "broke 1",
                jobs["unstarted"].id: PARENT_FAILED_REASON,
            }
            assert deps.unprocessed == []
            await jobs["bad"].retry()
            await env.wait_for(lambda: _true(len(failures) == 2), "the second failure")
            await env.wait_state(jobs["bad"], FAILED)
        after = await env.reread(jobs["parent"])
        assert after is not None and after.state is FAILED
        assert after.failed_reason == child_failed_reason(jobs["bad"].id, "broke 1")
        assert (await after.get_dependencies()).failed == deps.failed

    async def test_a_dropped_child_retried_after_its_parent_ran_stays_out_of_it(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {
                        "name": "dropped",
                        "queue_name": child_q,
                        "opts": {"remove_dependency_on_failure": True},
                    },
                    {"name": "kept", "queue_name": child_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        async with env.workers({child_q: runs.handler(fail={"dropped"}), parent_q: runs.handler()}):
            await env.wait_state(jobs["parent"], COMPLETED)
        await jobs["dropped"].retry()
        async with env.workers({child_q: runs.handler()}):
            await env.wait_state(jobs["dropped"], COMPLETED)
        assert await jobs["parent"].get_children_values() == {jobs["kept"].id: {"done": "kept"}}
        deps = await env.store.get_dependencies(parent_q, jobs["parent"].id)
        assert [dep.id for dep in deps] == [jobs["kept"].id]

    async def test_a_parent_whose_finished_child_was_deleted_can_be_removed(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "gone", "queue_name": child_q, "opts": {"remove_on_complete": True}}
                ],
            }
        )
        jobs = nodes_by_name(node)
        async with env.workers({child_q: Runs().handler()}):
            await env.wait_state(jobs["parent"], WAITING)
        assert await env.reread(jobs["gone"]) is None
        await jobs["parent"].remove()
        assert await env.reread(jobs["parent"]) is None
        assert await env.total(parent_q) == 0

    async def test_a_group_whose_first_job_exists_is_skipped_wherever_it_stands(
        self, env: Harness
    ) -> None:
        q = env.name("skip")
        now = time.time()
        old = bare_job(q, "old", WAITING)
        assert await env.store.add_jobs([[old]], now) == [True]
        fresh = [bare_job(q, f"new-{i}", WAITING) for i in range(3)]
        # First, between two others, last: only that group is skipped.
        assert await env.store.add_jobs([[old], [fresh[0]]], now) == [False, True]
        assert await env.store.add_jobs([[fresh[1]], [old], [fresh[2]]], now) == [
            True,
            False,
            True,
        ]
        assert await env.total(q) == 4
        record = await env.store.get_job(q, "old")
        assert record is not None and record.state is WAITING

    async def test_groups_of_one_add_reach_new_and_existing_parents_wherever_they_stand(
        self, env: Harness
    ) -> None:
        q = env.name("parents")
        now = time.time()
        parent = bare_job(q, "p", WAITING_CHILDREN)
        first = bare_job(q, "c0", WAITING, parent_id="p", parent_queue=q)
        assert await env.store.add_jobs([[parent, first]], now) == [True]
        # A child of the existing parent first, then a flow of its own second.
        late = bare_job(q, "c1", WAITING, parent_id="p", parent_queue=q)
        flow = [
            bare_job(q, "f", WAITING_CHILDREN),
            bare_job(q, "f0", WAITING, parent_id="f", parent_queue=q),
        ]
        assert await env.store.add_jobs([[late], flow], now) == [True, True]
        taken = await env.store.take_jobs(q, limit=10, token="t", lock_until=now + 60, now=now)
        assert sorted(job.id for job in taken.jobs) == ["c0", "c1", "f0"]
        assert await env.store.complete_jobs(q, [Completion("c0", "t", "0")], now) == [True]
        assert await _state(env, q, "p") is WAITING_CHILDREN, "c1 is still pending"
        done = [Completion("c1", "t", "1"), Completion("f0", "t", "2")]
        assert await env.store.complete_jobs(q, done, now) == [True, True]
        assert await _state(env, q, "p") is WAITING
        assert await _state(env, q, "f") is WAITING

    async def test_a_skipped_group_gives_its_existing_parent_no_child(self, env: Harness) -> None:
        q = env.name("skip-parent")
        now = time.time()
        for parent in ("p1", "p2"):
            first = bare_job(q, f"{parent}-c0", WAITING, parent_id=parent, parent_queue=q)
            assert await env.store.add_jobs([[bare_job(q, parent, WAITING_CHILDREN), first]], now)
        # The first group names a job that exists (skipped), the second a new one.
        again = bare_job(q, "p1-c0", WAITING, parent_id="p1", parent_queue=q)
        late = bare_job(q, "p2-c1", WAITING, parent_id="p2", parent_queue=q)
        assert await env.store.add_jobs([[again], [late]], now) == [False, True]
        taken = await env.store.take_jobs(q, limit=10, token="t", lock_until=now + 60, now=now)
        assert sorted(job.id for job in taken.jobs) == ["p1-c0", "p2-c0", "p2-c1"]
        done = [Completion("p1-c0", "t", "0"), Completion("p2-c0", "t", "0")]
        assert await env.store.complete_jobs(q, done, now) == [True, True]
        assert await _state(env, q, "p1") is WAITING, "p1 waits for no new child"
        assert await _state(env, q, "p2") is WAITING_CHILDREN, "p2-c1 is still pending"
        assert await env.store.complete_jobs(q, [Completion("p2-c1", "t", "1")], now) == [True]
        assert await _state(env, q, "p2") is WAITING

    async def test_one_add_naming_a_job_twice_writes_nothing(self, env: Harness) -> None:
        q = env.name("twice")
        queue = env.queue(q)
        with pytest.raises(DuplicateJobError):
            await queue.add_bulk(
                [
                    {"name": "first", "data": None, "opts": {"job_id": "same"}},
                    {"name": "second", "data": None, "opts": {"job_id": "same"}},
                ]
            )
        assert await env.total(q) == 0
        # The store refuses it too, whoever builds the call.
        twins = [
            [NewJob(id="same", queue=q, name=name, data="null", opts="{}", state=WAITING)]
            for name in ("first", "second")
        ]
        # Refused with the job and its queue named (quoted as the store quotes them).
        named = rf"same. appears twice for queue .{re.escape(q)}. in one add"
        with pytest.raises(DuplicateJobError, match=named):
            await env.store.add_jobs(twins, time.time())
        # A DAG naming a job twice, refused the same way.
        with pytest.raises(DuplicateJobError, match=named):
            await env.store.add_dag([group[0] for group in twins], [], time.time())
        assert await env.total(q) == 0

    async def test_a_job_leaving_delayed_has_no_run_time(self, env: Harness) -> None:
        q = env.name("run-at")
        queue = env.queue(q)
        job = await queue.add("later", None, {"delay": 3600})
        delayed = await env.reread(job)
        assert delayed is not None and delayed.run_at is not None
        await job.promote()
        waiting = await env.reread(job)
        assert waiting is not None and waiting.state is WAITING and waiting.run_at is None
        with pytest.raises(InvalidJobStateError):
            await job.change_delay(10)
        unchanged = await env.reread(job)
        assert unchanged is not None and unchanged.state is WAITING
        assert unchanged.run_at is None

    async def test_every_take_says_when_the_next_delayed_job_is_due(self, env: Harness) -> None:
        q = env.name("next-run")
        queue = env.queue(q)
        store = env.store
        now = time.time()

        async def take(limit: int = 10, **kw: Any) -> tuple[int, object]:
            taken = await store.take_jobs(
                q, limit=limit, token="t", lock_until=now + 60, now=now, **kw
            )
            return len(taken.jobs), taken.next_run_at

        await env.queue(env.name("next-run-other")).add("elsewhere", None, {"delay": 60})
        assert await take() == (0, None), "no delayed job (of this queue): nothing to wait for"
        later = await env.reread(await queue.add("later", None, {"delay": 3600}))
        sooner = await env.reread(await queue.add("sooner", None, {"delay": 600}))
        assert later is not None and sooner is not None and sooner.run_at is not None
        due = pytest.approx(sooner.run_at.timestamp(), abs=0.001)
        await queue.add_bulk([{"name": "now"} for _ in range(4)])
        assert await take(1) == (1, due), "a take of some of the waiting jobs"
        assert await take() == (3, due), "a take of the last waiting jobs"
        assert await take() == (0, due), "a take of nothing"
        await queue.pause()
        assert await take() == (0, due), "a paused queue"
        await queue.resume()
        await queue.add("now", None)
        await queue.set_global_concurrency(4)
        assert await take() == (0, due), "a queue at its global concurrency"
        await queue.remove_global_concurrency()
        window = (1, 60.0)
        assert await take(rate_limit=window) == (1, due), "a take that fills its rate window"
        assert await take(rate_limit=window) == (0, due), "a queue at its rate limit"
        await queue.add("now", None)
        await store.rate_limit_queue(q, now + 30)
        assert await take() == (0, due), "a queue under a manual rate limit"

    @pytest.mark.parametrize("held", ["paused", "concurrency", "manual", "window"])
    async def test_a_take_held_back_still_promotes_due_jobs_with_their_events(
        self, env: Harness, held: str
    ) -> None:
        q = env.name(f"held-{held}")
        queue = env.queue(q)
        store = env.store
        now = time.time()
        busy = await queue.add("busy", None)
        window = (1, 60.0)
        taken = await store.take_jobs(
            q, limit=1, token="t", lock_until=now + 60, now=now, rate_limit=window
        )
        assert [job.id for job in taken.jobs] == [busy.id]
        later = await queue.add("later", None, {"delay": 5})
        if held == "paused":
            await queue.pause()
        elif held == "concurrency":
            await queue.set_global_concurrency(1)
        elif held == "manual":
            await store.rate_limit_queue(q, now + 60)
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("waiting", seen.append)
            rate = window if held == "window" else None
            taken = await store.take_jobs(
                q, limit=1, token="t", lock_until=now + 60, now=now + 10, rate_limit=rate
            )
            assert taken.jobs == []
            await _seen(env, seen, lambda e: e.job_id == later.id, "the promoted job's event")
        assert await env.state(later) is WAITING

    async def test_a_take_of_no_job_reports_no_limit(self, env: Harness) -> None:
        q, held, grouped = env.name("zero"), env.name("zero-held"), env.name("zero-groups")
        store = env.store
        now = time.time()

        async def take(name: str, limit: int, **kw: Any) -> tuple[int, object, object, bool]:
            taken = await store.take_jobs(
                name, limit=limit, token="t", lock_until=now + 60, now=now, **kw
            )
            hints = (taken.next_run_at, taken.rate_limited_until, taken.concurrency_limited)
            return (len(taken.jobs), *hints)

        none = (0, None, None, False)
        queue = env.queue(q)
        await queue.add_bulk([{"name": f"job-{i}"} for i in range(3)])
        window = (1, 60.0)
        assert await take(q, 1, rate_limit=window) == (1, None, None, False)
        assert await take(q, 1, rate_limit=window) == (0, None, now + 60, False)
        await queue.set_global_concurrency(1)
        assert await take(q, 1, rate_limit=window) == (0, None, None, True)
        # At its global concurrency with its rate window full: a take of nothing says
        # neither.
        assert await take(q, 0, rate_limit=window) == none
        assert await take(q, -1, rate_limit=window) == none
        await queue.remove_global_concurrency()
        assert await take(q, 5, rate_limit=(3, 60.0)) == (2, None, None, False)

        await env.queue(held).add("held", None)
        await store.rate_limit_queue(held, now + 30)
        assert await take(held, 1) == (0, None, now + 30, False)
        assert await take(held, 0) == none, "under a manual rate limit"

        lanes = env.queue(grouped)
        await lanes.set_group_limits(concurrency=1)
        await lanes.add_bulk([{"name": f"a-{i}", "opts": {"group_id": "a"}} for i in range(3)])
        assert (await take(grouped, 5))[0] == 1
        assert await take(grouped, 5) == (0, None, None, True)
        assert await take(grouped, 0) == none, "a group at its concurrency"
        await lanes.set_group_limits(rate_limit={"max": 1, "duration": 60})
        assert (await take(grouped, 5))[0] == 1
        assert await take(grouped, 5) == (0, None, now + 60, False)
        assert await take(grouped, 0) == none, "a group at its rate limit"

    async def test_remove_on_complete_deletes_only_the_job_itself(self, env: Harness) -> None:
        q = env.name("own")
        queue = env.queue(q)
        kept = await queue.add("kept", None)
        gone = await queue.add("gone", None, {"remove_on_complete": True})
        runs = Runs()

        async def both_ran() -> bool:
            return len(runs.order) == 2 and await env.reread(gone) is None

        async with env.workers({q: runs.handler()}, concurrency=1):
            await env.wait_for(both_ran, "both jobs to run")
        assert runs.order == ["kept", "gone"]
        assert await env.state(kept) is COMPLETED, "another job's setting leaves it alone"

    async def test_a_rate_limit_window_adds_up_every_take(self, env: Harness) -> None:
        q = env.name("window")
        await env.queue(q).add_bulk([{"name": f"job-{i}"} for i in range(6)])
        now = time.time()
        sizes = []
        for _ in range(3):
            taken = await env.store.take_jobs(
                q, limit=2, token="t", lock_until=now + 60, now=now, rate_limit=(3, 60.0)
            )
            sizes.append(len(taken.jobs))
        assert sizes == [2, 1, 0], "three jobs per window, however they are taken"

    async def test_a_rate_window_starts_with_the_first_job_it_counts(self, env: Harness) -> None:
        # A take that finds no job starts no window; each kind of lane alike.
        for group in (None, "g"):
            q = env.name(f"window-start-{group}")
            queue = env.queue(q)
            t0 = time.time()

            async def take(now: float, q: str = q) -> tuple[int, float | None]:
                taken = await env.store.take_jobs(
                    q, limit=5, token="t", lock_until=now + 600, now=now, rate_limit=(1, 60.0)
                )
                return len(taken.jobs), taken.rate_limited_until

            assert await take(t0) == (0, None)
            await queue.add_bulk([{"name": "job", "opts": {"group_id": group}} for _ in range(2)])
            assert await take(t0 + 30) == (1, None)
            assert await take(t0 + 40) == (0, t0 + 90), f"group: {group}"


async def _true(value: bool) -> bool:
    return value


async def _state(env: Harness, queue: str, job_id: str) -> JobState | None:
    record = await env.store.get_job(queue, job_id)
    return None if record is None else record.state
