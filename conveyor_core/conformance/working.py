"""Working jobs: racing workers, locks, stalls, retries, backoff, delay and ordering."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel

from conveyor_core import Job, JobState, UnrecoverableError, Worker
from conveyor_core.store import (
    STALLED_REASON,
    Completion,
    Failure,
    Release,
    child_failed_reason,
)

from ._support import Harness, Runs, nodes_by_name

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
ACTIVE = JobState.ACTIVE
DELAYED = JobState.DELAYED
WAITING = JobState.WAITING
WAITING_CHILDREN = JobState.WAITING_CHILDREN

SLACK = 0.01
"""Seconds of rounding allowed when comparing stored times (datetimes keep microseconds)."""


async def _take_one(env: Harness, queue: str, token: str, lock_until: float) -> Job:
    """Take the next job of ``queue`` through the store directly, as a worker would."""
    taken = await env.store.take_jobs(
        queue, limit=1, token=token, lock_until=lock_until, now=time.time()
    )
    assert len(taken.jobs) == 1, f"expected one job to take from {queue!r}"
    job = await env.job(queue, taken.jobs[0].id)
    assert job is not None and job.state is ACTIVE
    return job


class WorkingTests:
    """Workers run each job once, in order, and locks protect every transition."""

    async def test_racing_workers_run_each_job_exactly_once(self, env: Harness) -> None:
        q = env.name("race")
        total = 200
        half = [{"name": "job", "data": {"i": i}} for i in range(total // 2)]
        await env.queue(q).add_bulk(half)
        runs = Runs()

        async def handle(job: Job) -> int:
            runs.record(job)
            await anyio.lowlevel.checkpoint()
            return int(job.data["i"])

        async with (
            env.workers({q: handle}, concurrency=5),
            env.workers({q: handle}, concurrency=5),
            env.workers({q: handle}, store=env.second_store, concurrency=5),
            env.workers({q: handle}, store=env.second_store, concurrency=5),
        ):
            # Half were waiting before the workers started, half arrive while they run.
            rest = [{"name": "job", "data": {"i": i}} for i in range(total // 2, total)]
            await env.queue(q, store=env.second_store).add_bulk(rest)
            await env.wait_count(q, COMPLETED, total)
        twice = {job_id: n for job_id, n in runs.ids.items() if n != 1}
        assert twice == {}, f"jobs handed out more than once: {twice}"
        assert len(runs.ids) == total
        counts = await env.counts(q)
        assert counts["completed"] == total and sum(counts.values()) == total

    async def test_a_lock_is_expired_only_once_its_time_has_passed(self, env: Harness) -> None:
        # Recovery takes the jobs whose lock_until is before now: one whose lock ends at
        # this very moment is still held.
        q = env.name("lock-edge")
        job = await env.queue(q).add("held", None)
        until = time.time() + 3600
        await _take_one(env, q, "worker", lock_until=until)
        assert await env.store.recover_stalled(q, until, 1) == []
        outcomes = await env.store.recover_stalled(q, until + 0.5, 1)
        assert [(o.id, o.failed) for o in outcomes] == [(job.id, False)]

    async def test_expired_lock_is_recovered_and_the_job_runs_again(self, env: Harness) -> None:
        parent_q, q = env.name("parent"), env.name("stall")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [{"name": "victim", "queue_name": q, "data": {"n": 7}}],
            }
        )
        jobs = nodes_by_name(node)
        # A worker takes the job and dies: its lock expires almost at once.
        await _take_one(env, q, "crashed-worker", lock_until=time.time() + 0.05)
        runs = Runs()

        async def handle(job: Job) -> int:
            runs.record(job)
            return int(job.data["n"]) * 6

        async def parent_handler(job: Job) -> dict[str, Any]:
            runs.record(job)
            return await job.get_children_values()

        async with env.workers(
            {q: handle, parent_q: parent_handler}, stalled_interval=0.2, max_stalled_count=1
        ):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        victim = await env.wait_state(jobs["victim"], COMPLETED)
        assert victim.return_value == 42
        assert victim.stalled_count == 1
        assert victim.attempts_made == 1
        assert runs.count(victim) == 1 and runs.count(parent) == 1
        assert parent.return_value == {victim.id: 42}
        # The dead worker wakes up: the store refuses its stale token.
        now, stale = time.time(), "crashed-worker"
        assert await env.store.complete_jobs(q, [Completion(victim.id, stale, "0")], now) == [False]
        assert await env.store.fail_jobs(q, [Failure(victim.id, stale, "late")], now) == [False]
        again = await env.reread(victim)
        assert again is not None and again.state is COMPLETED and again.return_value == 42

    async def test_job_stalling_too_often_fails_with_the_stalled_reason(self, env: Harness) -> None:
        parent_q, q = env.name("parent"), env.name("stall")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [{"name": "doomed", "queue_name": q}],
            }
        )
        jobs = nodes_by_name(node)
        first_lock = time.time() + 0.05
        await _take_one(env, q, "worker-1", lock_until=first_lock)
        outcomes = await env.store.recover_stalled(q, first_lock + 1, 1)
        assert [(o.id, o.failed) for o in outcomes] == [(jobs["doomed"].id, False)]
        assert await env.state(jobs["doomed"]) is WAITING
        # A stalled job is not failed by a second recovery pass.
        assert await env.store.recover_stalled(q, first_lock + 2, 1) == []

        await _take_one(env, q, "worker-2", lock_until=time.time() + 0.05)
        runs = Runs()
        async with env.workers(
            {q: runs.handler(), parent_q: runs.handler()},
            stalled_interval=0.2,
            max_stalled_count=1,
        ):
            doomed = await env.wait_state(jobs["doomed"], FAILED)
            parent = await env.wait_state(jobs["parent"], FAILED)
        assert doomed.failed_reason == STALLED_REASON
        assert doomed.stalled_count == 2
        assert parent.failed_reason == child_failed_reason(doomed.id, STALLED_REASON)
        assert runs.order == []

    async def test_locks_are_renewed_while_the_handler_runs(self, env: Harness) -> None:
        q = env.name("renew")
        runs = Runs()

        async def long_handler(job: Job) -> str:
            runs.record(job)
            await anyio.sleep(1.5)  # over two lock durations: only renewal keeps the lock
            return "held"

        job = await env.queue(q).add("long", None)
        async with env.workers(
            {q: long_handler}, lock_duration=0.6, stalled_interval=0.1, max_stalled_count=0
        ):
            (done,) = await env.wait_finished(job)
        assert done.state is COMPLETED and done.return_value == "held"
        assert done.stalled_count == 0
        assert runs.count(job) == 1

    async def test_closing_a_worker_hands_unfinished_jobs_back(self, env: Harness) -> None:
        q = env.name("close")
        started = anyio.Event()

        async def stuck(job: Job) -> None:
            started.set()
            await anyio.sleep(3600)

        job = await env.queue(q).add("stuck", None)
        worker = Worker(q, stuck, store=env.store)
        async with worker:
            try:
                with anyio.fail_after(env.timeout):
                    await started.wait()
                assert await env.state(job) is ACTIVE
            finally:
                await worker.close(timeout=0.1)
        back = await env.reread(job)
        assert back is not None and back.state is WAITING
        assert back.attempts_made == 0
        record = await env.store.get_job(q, job.id)
        assert record is not None and record.lock_token is None

    async def test_rate_limit_counts_every_taker(self, env: Harness) -> None:
        q = env.name("limited")
        await env.queue(q).add_bulk([{"name": f"job-{i}"} for i in range(5)])
        now = time.time()
        first = await env.store.take_jobs(
            q, limit=5, token="a", lock_until=now + 60, now=now, rate_limit=(2, 60.0)
        )
        assert len(first.jobs) == 2
        second = await env.second_store.take_jobs(
            q, limit=5, token="b", lock_until=now + 60, now=now + 1, rate_limit=(2, 60.0)
        )
        assert second.jobs == []
        assert second.rate_limited_until is not None and second.rate_limited_until > now + 1
        later = await env.second_store.take_jobs(
            q, limit=5, token="c", lock_until=now + 200, now=now + 61, rate_limit=(2, 60.0)
        )
        assert len(later.jobs) == 2
        assert {job.id for job in later.jobs}.isdisjoint(job.id for job in first.jobs)

    async def test_the_store_refuses_a_wrong_lock_token(self, env: Harness) -> None:
        q = env.name("locks")
        added = await env.queue(q).add("guarded", {"x": 1})
        job = await _take_one(env, q, "owner", lock_until=time.time() + 60)
        now = time.time()
        store = env.store
        stolen = Completion(job.id, "intruder", '"stolen"')
        assert await store.complete_jobs(q, [stolen], now) == [False]
        assert await store.fail_jobs(q, [Failure(job.id, "intruder", "sabotage")], now) == [False]
        assert await store.fail_jobs(
            q, [Failure(job.id, "intruder", "sabotage", retry_at=now)], now
        ) == [False]
        assert await store.release_jobs(q, [Release(job.id, "intruder")], now) == [False]
        assert await store.extend_locks(q, [(job.id, "intruder")], now + 600) == []
        record = await store.get_job(q, job.id)
        assert record is not None
        assert (record.state, record.lock_token, record.attempts_made) == (ACTIVE, "owner", 0)
        assert record.return_value is None and record.failed_reason is None
        assert record.lock_until is not None and record.lock_until < now + 600

        assert await store.extend_locks(q, [(job.id, "owner")], now + 120) == [job.id]
        # One call extends each lock it names, with its own token, and no other.
        others = [await env.queue(q).add(f"other-{i}", None) for i in range(3)]
        taken = await store.take_jobs(q, limit=3, token="others", lock_until=now + 60, now=now)
        assert [record.id for record in taken.jobs] == [other.id for other in others]
        locks = [(job.id, "owner"), *((other.id, "others") for other in others)]
        extended = await store.extend_locks(q, [*locks, (others[0].id, "owner")], now + 300)
        assert sorted(extended) == sorted([job.id, *(other.id for other in others)])
        for other in others:
            held = await store.get_job(q, other.id)
            assert held is not None and held.lock_until == now + 300
        assert await store.complete_jobs(q, [Completion(job.id, "owner", '"mine"')], now) == [True]
        done = await env.reread(added)
        assert done is not None and done.state is COMPLETED and done.return_value == "mine"
        # Completing twice is refused too: a finished job has no lock.
        again_done = Completion(job.id, "owner", '"again"')
        assert await store.complete_jobs(q, [again_done], now) == [False]
        again = await env.reread(added)
        assert again is not None and again.return_value == "mine" and again.attempts_made == 1

    async def test_a_lock_lost_to_stall_recovery_is_refused(self, env: Harness) -> None:
        q = env.name("locks")
        await env.queue(q).add("slow", None)
        lock = time.time() + 0.05
        job = await _take_one(env, q, "first", lock_until=lock)
        await env.store.recover_stalled(q, lock + 1, 5)
        second = await _take_one(env, q, "second", lock_until=time.time() + 60)
        assert second.id == job.id
        now = time.time()
        assert await env.store.extend_locks(q, [(job.id, "first")], now + 60) == []
        assert await env.store.complete_jobs(q, [Completion(job.id, "first", "1")], now) == [False]
        assert await env.store.complete_jobs(q, [Completion(job.id, "second", "2")], now) == [True]
        done = await env.reread(job)
        assert done is not None and done.return_value == 2

    async def test_fixed_backoff_delays_each_retry(self, env: Harness) -> None:
        await self._check_backoff(env, {"type": "fixed", "delay": 60}, [60, 60])

    async def test_exponential_backoff_doubles_each_retry(self, env: Harness) -> None:
        await self._check_backoff(env, {"type": "exponential", "delay": 10}, [10, 20, 40])

    async def _check_backoff(
        self, env: Harness, backoff: dict[str, Any], waits: list[float]
    ) -> None:
        """Fail ``len(waits)`` times; each time the job is delayed by the next wait,
        then promoted by hand so the test need not wait it out."""
        q = env.name("backoff")
        attempts = len(waits) + 1

        async def flaky(job: Job) -> str:
            if job.attempts_made < len(waits):
                raise RuntimeError(f"attempt {job.attempts_made + 1} broke")
            return "finally"

        mark = time.time()
        job = await env.queue(q).add("flaky", None, {"attempts": attempts, "backoff": backoff})
        async with env.workers({q: flaky}):
            for attempt, wait in enumerate(waits, start=1):
                delayed = await self._wait_delayed(env, job, attempt)
                assert delayed.failed_reason == f"attempt {attempt} broke"
                assert delayed.run_at is not None
                run_at = delayed.run_at.timestamp()
                assert mark + wait - SLACK <= run_at <= time.time() + wait + SLACK, (
                    f"retry {attempt} should wait {wait}s"
                )
                mark = time.time()
                await delayed.promote()
            done = await env.wait_state(job, COMPLETED)
        assert done.return_value == "finally"
        assert done.attempts_made == attempts

    @staticmethod
    async def _wait_delayed(env: Harness, job: Job, attempts_made: int) -> Job:
        found: list[Job] = []

        async def delayed() -> bool:
            current = await env.reread(job)
            if (
                current is not None
                and current.state is DELAYED
                and current.attempts_made == attempts_made
            ):
                found.append(current)
                return True
            return False

        await env.wait_for(delayed, f"retry {attempts_made} of {job.id} to be delayed")
        return found[-1]

    async def test_attempts_run_out_and_unrecoverable_errors_fail_at_once(
        self, env: Harness
    ) -> None:
        q = env.name("retries")
        queue = env.queue(q)
        always = await queue.add("always-fails", None, {"attempts": 3, "backoff": 0.01})
        fatal = await queue.add("fatal", None, {"attempts": 5, "backoff": 0.01})
        runs = Runs()

        async def handle(job: Job) -> None:
            runs.record(job)
            if job.name == "fatal":
                raise UnrecoverableError("cannot go on")
            raise RuntimeError("no luck")

        async with env.workers({q: handle}):
            always_done, fatal_done = await env.wait_finished(always, fatal)
        assert always_done.state is FAILED and always_done.attempts_made == 3
        assert always_done.failed_reason is not None and "no luck" in always_done.failed_reason
        assert runs.count(always) == 3
        assert fatal_done.state is FAILED and fatal_done.attempts_made == 1
        assert fatal_done.failed_reason is not None and "cannot go on" in fatal_done.failed_reason
        assert runs.count(fatal) == 1

    async def test_delayed_job_waits_for_its_time(self, env: Harness) -> None:
        q = env.name("delay")
        queue = env.queue(q)
        soon = await queue.add("soon", None, {"delay": 0.3})
        later = await queue.add("later", None, {"delay": 3600})
        other = await env.reread(await queue.add("other", None, {"delay": 7200}))
        assert other is not None
        stored = await env.reread(soon)
        assert stored is not None and stored.state is DELAYED
        assert stored.created_at is not None and stored.run_at is not None
        assert abs((stored.run_at - stored.created_at).total_seconds() - 0.3) <= SLACK
        before = time.time()
        await later.change_delay(0.4)
        moved = await env.reread(later)
        assert moved is not None and moved.state is DELAYED and moved.run_at is not None
        assert before + 0.4 - SLACK <= moved.run_at.timestamp() <= time.time() + 0.4 + SLACK
        unmoved = await env.reread(other)
        assert unmoved is not None and unmoved.run_at == other.run_at, "only its own delay"
        runs = Runs()
        async with env.workers({q: runs.handler()}):
            done, done_later = await env.wait_finished(soon, later)
        assert done.state is COMPLETED and done_later.state is COMPLETED
        assert done.processed_at is not None and done.created_at is not None
        assert (done.processed_at - done.created_at).total_seconds() >= 0.3 - SLACK
        assert done_later.processed_at is not None
        assert done_later.processed_at.timestamp() >= before + 0.4 - SLACK
        assert runs.order == ["soon", "later"]

    async def test_priority_and_lifo_decide_the_order(self, env: Harness) -> None:
        q = env.name("order")
        queue = env.queue(q)
        plan: list[tuple[str, dict[str, Any]]] = [
            ("p1-a", {"priority": 1}),
            ("p0-a", {}),
            ("p0-b", {}),
            ("p0-lifo-c", {"lifo": True}),
            ("p5-a", {"priority": 5}),
            ("p1-lifo-b", {"priority": 1, "lifo": True}),
            ("p0-lifo-d", {"lifo": True}),
            ("p0-e", {}),
            ("bumped", {"priority": 9}),
        ]
        jobs = {name: await queue.add(name, None, opts) for name, opts in plan}
        await jobs["bumped"].change_priority(1)
        expected = [
            "p0-lifo-d",
            "p0-lifo-c",
            "p0-a",
            "p0-b",
            "p0-e",
            "p1-lifo-b",
            "p1-a",
            "bumped",
            "p5-a",
        ]
        waiting = await queue.get_jobs(WAITING)
        assert [job.name for job in waiting] == expected
        runs = Runs()
        async with env.workers({q: runs.handler()}, concurrency=1):
            await env.wait_count(q, COMPLETED, len(plan))
        assert runs.order == expected

    async def test_a_result_that_is_not_json_fails_the_attempt(self, env: Harness) -> None:
        q = env.name("results")

        async def handle(job: Job) -> Any:
            return {"when": object()}

        job = await env.queue(q).add("bad-result", None)
        async with env.workers({q: handle}):
            (done,) = await env.wait_finished(job)
        assert done.state is FAILED
        assert done.failed_reason is not None and "object" in done.failed_reason

    async def test_timeout_fails_the_attempt(self, env: Harness) -> None:
        q = env.name("timeouts")
        finished = anyio.Event()

        async def handle(job: Job) -> str:
            try:
                await anyio.sleep(30)
            finally:
                finished.set()
            return "too late"

        job = await env.queue(q).add("sleepy", None, {"timeout": 0.2})
        async with env.workers({q: handle}):
            (done,) = await env.wait_finished(job)
        assert done.state is FAILED and done.attempts_made == 1
        assert finished.is_set(), "the handler was cancelled"

    async def test_progress_logs_and_data_are_kept(self, env: Harness) -> None:
        q = env.name("progress")

        async def handle(job: Job) -> str:
            await job.update_progress(50)
            await job.log("halfway")
            await job.update_progress({"step": "done", "pct": 100})
            await job.log({"rows": 10})
            return "ok"

        queue = env.queue(q)
        job = await queue.add("reporter", {"v": 1})
        await job.update_data({"v": 2, "text": "ünïcode"})
        async with env.workers({q: handle}):
            done = await env.wait_state(job, COMPLETED)
        assert done.data == {"v": 2, "text": "ünïcode"}
        assert done.progress == {"step": "done", "pct": 100}
        assert await done.get_logs() == ["halfway", {"rows": 10}]
        assert await done.get_logs(1, 1) == [{"rows": 10}]
