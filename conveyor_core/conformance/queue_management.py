"""Managing a queue: pause, remove, clean, drain, obliterate, promote, retry, read."""

from __future__ import annotations

import time

import pytest

from conveyor_core import InvalidJobStateError, Job, JobNotFoundError, JobState
from conveyor_core.store import Completion, Failure

from ._support import Harness, Runs, nodes_by_name

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
ACTIVE = JobState.ACTIVE
DELAYED = JobState.DELAYED
WAITING = JobState.WAITING


class QueueManagementTests:
    """Queue-level operations change exactly the jobs they name."""

    async def test_pause_holds_jobs_until_resume(self, env: Harness) -> None:
        q, other = env.name("paused"), env.name("witness")
        queue = env.queue(q)
        await queue.pause()
        assert await queue.is_paused()
        held = await queue.add("held", None)
        taken = await env.store.take_jobs(
            q, limit=10, token="probe", lock_until=time.time() + 60, now=time.time()
        )
        assert taken.jobs == [], "a paused queue hands out nothing"
        witness = await env.queue(other).add("witness", None)
        runs = Runs()
        async with env.workers({q: runs.handler(), other: runs.handler()}):
            await env.wait_state(witness, COMPLETED)
            assert await env.state(held) is WAITING
            await queue.resume()
            assert not await queue.is_paused()
            await env.wait_state(held, COMPLETED)
        assert runs.count(held) == 1

    async def test_remove_deletes_a_job_and_its_unfinished_descendants(self, env: Harness) -> None:
        q, child_q, idle_q = env.name("remove"), env.name("child"), env.name("idle")
        queue = env.queue(q)
        lone = await queue.add("lone", None)
        await lone.remove()
        assert await env.reread(lone) is None
        with pytest.raises(JobNotFoundError):
            await lone.remove()

        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": q,
                "children": [
                    {"name": "done", "queue_name": child_q},
                    {
                        # As many children done as pending: it still has children.
                        "name": "pending",
                        "queue_name": idle_q,
                        "children": [
                            {"name": "done-leaf", "queue_name": child_q},
                            {"name": "pending-leaf", "queue_name": idle_q},
                        ],
                    },
                ],
            }
        )
        jobs = nodes_by_name(node)
        async with env.workers({child_q: Runs().handler()}):
            await env.wait_finished(jobs["done"], jobs["done-leaf"])
        await jobs["parent"].remove()
        for name in ("parent", "pending", "pending-leaf"):
            assert await env.reread(jobs[name]) is None, f"{name} should be removed"
        for name in ("done", "done-leaf"):
            assert await env.state(jobs[name]) is COMPLETED, "finished descendants are kept"
        assert await env.total(q) == 0 and await env.total(idle_q) == 0

        busy = await queue.add("busy", None)
        await env.store.take_jobs(
            q, limit=1, token="t", lock_until=time.time() + 60, now=time.time()
        )
        with pytest.raises(InvalidJobStateError):
            await busy.remove()
        assert await env.state(busy) is ACTIVE

    async def test_clean_removes_old_finished_jobs(self, env: Harness) -> None:
        q = env.name("clean")
        queue = env.queue(q)
        jobs = [await queue.add(f"job-{i}", {"i": i}) for i in range(5)]
        failing = [await queue.add(f"bad-{i}", None) for i in range(2)]
        runs = Runs()
        async with env.workers({q: runs.handler(fail={"bad-0", "bad-1"})}, concurrency=1):
            await env.wait_finished(*jobs, *failing)
        assert await queue.clean(3600) == [], "nothing finished an hour ago"
        first = await queue.clean(0, limit=2)
        assert len(first) == 2 and set(first) <= {job.id for job in jobs}
        rest = await queue.clean(0)
        assert sorted(first + rest) == sorted(job.id for job in jobs)
        counts = await env.counts(q)
        assert counts["completed"] == 0 and counts["failed"] == 2
        assert sorted(await queue.clean(0, state="failed")) == sorted(j.id for j in failing)
        assert await env.total(q) == 0
        with pytest.raises(InvalidJobStateError):
            await queue.clean(0, state="active")

    async def test_drain_removes_waiting_and_optionally_delayed_jobs(self, env: Harness) -> None:
        q = env.name("drain")
        queue = env.queue(q)
        for i in range(3):
            await queue.add(f"now-{i}", None)
        for i in range(2):
            await queue.add(f"later-{i}", None, {"delay": 3600})
        assert await queue.drain() == 3
        counts = await env.counts(q)
        assert counts["waiting"] == 0 and counts["delayed"] == 2
        assert await queue.drain(include_delayed=True) == 2
        assert await env.total(q) == 0

    async def test_remove_and_a_child_leaving_look_at_the_job_named_only(
        self, env: Harness
    ) -> None:
        q = env.name("named-only")
        queue = env.queue(q)
        # The queue's first job is running and has no parent.
        first = await queue.add("first", None)
        now = time.time()
        taken = await env.store.take_jobs(q, limit=1, token="t", lock_until=now + 60, now=now)
        assert [job.id for job in taken.jobs] == [first.id]
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": env.name("named-only-parent"),
                "children": [{"name": "child", "queue_name": q}],
            }
        )
        child = nodes_by_name(node)["child"]
        assert await env.store.remove_job(q, "missing") is False
        assert await child.remove_child_dependency() is True
        assert await env.state(node.job) is WAITING
        plain = await queue.add("plain", None)
        assert await env.store.remove_job(q, plain.id) is True
        assert await env.reread(plain) is None
        assert await env.state(first) is ACTIVE

    async def test_drain_counts_a_job_its_parent_took_along_once(self, env: Harness) -> None:
        # "parent" started early (continue policy) while "kid", of its own queue, waits;
        # "parent" comes first (priority) and its removal takes "kid" along.
        q, qx = env.name("drain-flow"), env.name("drain-flow-x")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": q,
                "opts": {"priority": 1},
                "children": [
                    {"name": "bad", "queue_name": qx, "opts": {"continue_parent_on_failure": True}},
                    {"name": "kid", "queue_name": q, "opts": {"priority": 5}},
                ],
            }
        )
        jobs = nodes_by_name(node)
        later = await env.queue(q).add("later", None, {"delay": 3600})
        now = time.time()
        taken = await env.store.take_jobs(qx, limit=1, token="t", lock_until=now + 60, now=now)
        assert [job.id for job in taken.jobs] == [jobs["bad"].id]
        assert await env.store.fail_jobs(qx, [Failure(jobs["bad"].id, "t", "broke")], now)
        assert await env.state(jobs["parent"]) is WAITING
        assert await env.queue(q).drain() == 1
        for name in ("parent", "kid"):
            assert await env.reread(jobs[name]) is None, name
        assert await env.state(later) is DELAYED

    async def test_obliterate_refuses_while_active_unless_forced(self, env: Harness) -> None:
        q = env.name("obliterate")
        queue = env.queue(q)
        for i in range(3):
            await queue.add(f"job-{i}", None)
        await queue.add("delayed", None, {"delay": 3600})
        await env.store.take_jobs(
            q, limit=1, token="t", lock_until=time.time() + 60, now=time.time()
        )
        await queue.pause()
        with pytest.raises(InvalidJobStateError):
            await queue.obliterate()
        counts = await env.counts(q)
        assert (counts["active"], counts["waiting"], counts["delayed"]) == (1, 2, 1)
        assert await queue.is_paused()
        await queue.obliterate(force=True)
        assert await env.total(q) == 0
        assert not await queue.is_paused()
        assert q not in await env.store.list_queues()

    async def test_obliterate_deletes_the_jobs_of_every_state(self, env: Harness) -> None:
        q = env.name("obliterate-all")
        queue = env.queue(q)
        jobs = [await queue.add(f"job-{i}", None) for i in range(4)]
        delayed = await queue.add("delayed", None, {"delay": 3600})
        parent = await env.flow.add(
            {"name": "parent", "queue_name": q, "children": [{"name": "child", "queue_name": q}]}
        )
        now = time.time()
        taken = await env.store.take_jobs(q, limit=3, token="t", lock_until=now + 60, now=now)
        assert [job.id for job in taken.jobs] == [job.id for job in jobs[:3]]
        assert await env.store.complete_jobs(q, [Completion(jobs[0].id, "t", "1")], now) == [True]
        assert await env.store.fail_jobs(q, [Failure(jobs[1].id, "t", "boom")], now) == [True]
        counts = await env.counts(q)
        assert {state: counts[state.value] for state in JobState} == {
            JobState.WAITING: 2,
            JobState.DELAYED: 1,
            JobState.ACTIVE: 1,
            JobState.COMPLETED: 1,
            JobState.FAILED: 1,
            JobState.WAITING_CHILDREN: 1,
        }
        with pytest.raises(InvalidJobStateError) as refused:
            await queue.obliterate()
        assert q in str(refused.value)
        await queue.obliterate(force=True)
        for job in [*jobs, delayed, parent.job, *(child.job for child in parent.children)]:
            assert await env.store.get_job(q, job.id) is None, job.name
        assert await env.total(q) == 0
        assert q not in await env.store.list_queues()

    async def test_obliterate_forgets_the_queues_deduplication_ids(self, env: Harness) -> None:
        q = env.name("obliterate-dedup")
        queue = env.queue(q)
        await queue.add("first", None, {"job_id": "x", "deduplication": {"id": "d"}})
        await queue.obliterate()
        # A new job with the old job's id, not added under the deduplication id.
        await queue.add("plain", None, {"job_id": "x"})
        fresh = await queue.add("second", None, {"deduplication": {"id": "d"}})
        assert fresh.id != "x"
        assert (await env.counts(q))["waiting"] == 2

    async def test_a_paused_queue_is_listed_before_it_holds_a_job(self, env: Harness) -> None:
        q = env.name("paused-empty")
        queue = env.queue(q)
        await queue.pause()
        assert q in await env.store.list_queues()
        await queue.resume()
        assert q not in await env.store.list_queues()

    async def test_promote_moves_delayed_jobs_to_waiting(self, env: Harness) -> None:
        q = env.name("promote")
        queue = env.queue(q)
        delayed = [await queue.add(f"later-{i}", None, {"delay": 3600}) for i in range(3)]
        plain = await queue.add("plain", None)
        with pytest.raises(InvalidJobStateError):
            await plain.promote()
        await delayed[0].promote()
        assert await env.state(delayed[0]) is WAITING
        assert await queue.promote_jobs() == 2
        counts = await env.counts(q)
        assert counts["waiting"] == 4 and counts["delayed"] == 0

    async def test_retry_jobs_runs_failed_jobs_again(self, env: Harness) -> None:
        q = env.name("retry")
        queue = env.queue(q)
        jobs = [await queue.add(f"job-{i}", None) for i in range(3)]
        seen: set[str] = set()

        async def fails_first_time(job: Job) -> str:
            if job.id not in seen:
                seen.add(job.id)
                raise RuntimeError("first run broke")
            return "second run"

        not_failed = await queue.add("not-failed", None, {"delay": 3600})
        with pytest.raises(InvalidJobStateError):
            await not_failed.retry()
        await not_failed.remove()
        async with env.workers({q: fails_first_time}):
            await env.wait_count(q, FAILED, 3)
            assert await queue.retry_jobs() == 3
            done = await env.wait_finished(*jobs)
        for job in done:
            assert job.state is COMPLETED and job.return_value == "second run"
            assert job.attempts_made == 1 and job.failed_reason is None
        assert await queue.retry_jobs() == 0

    async def test_get_jobs_and_counts(self, env: Harness) -> None:
        q = env.name("read")
        queue = env.queue(q)
        counts = await queue.get_job_counts()
        assert counts == {state.value: 0 for state in JobState}
        a = await queue.add("a", None)
        b = await queue.add("b", None)
        c = await queue.add("c", None, {"priority": 3})
        d = await queue.add("d", None, {"delay": 3600})
        e = await queue.add("e", None, {"delay": 1800})
        active = await env.store.take_jobs(
            q, limit=1, token="t", lock_until=time.time() + 60, now=time.time()
        )
        assert [job.id for job in active.jobs] == [a.id]
        now = time.time()
        assert await env.store.complete_jobs(q, [Completion(a.id, "t", "1")], now) == [True]
        taken = await env.store.take_jobs(
            q, limit=1, token="u", lock_until=time.time() + 60, now=time.time()
        )
        assert [job.id for job in taken.jobs] == [b.id]

        counts = await queue.get_job_counts()
        assert counts == {
            "waiting": 1,
            "delayed": 2,
            "active": 1,
            "completed": 1,
            "failed": 0,
            "waiting-children": 0,
        }
        assert [job.id for job in await queue.get_jobs(DELAYED)] == [e.id, d.id]
        listed = await queue.get_jobs([WAITING, DELAYED, ACTIVE, COMPLETED])
        assert [job.id for job in listed] == [c.id, e.id, d.id, b.id, a.id]
        assert [job.id for job in await queue.get_jobs([WAITING, DELAYED], 1, 2)] == [e.id, d.id]
        assert [job.id for job in await queue.get_jobs(["delayed"], start=1)] == [d.id]
        fetched = await queue.get_job(a.id)
        assert fetched is not None and fetched.return_value == 1
        assert await queue.get_job("missing") is None

    async def test_adding_an_existing_custom_id_returns_the_existing_job(
        self, env: Harness
    ) -> None:
        q = env.name("ids")
        queue = env.queue(q)
        first = await queue.add("original", {"v": 1}, {"job_id": "order-17"})
        second = await queue.add("impostor", {"v": 2}, {"job_id": "order-17"})
        assert first.id == second.id == "order-17"
        assert (second.name, second.data) == ("original", {"v": 1})
        assert await env.total(q) == 1
        bulk = await queue.add_bulk(
            [
                {"name": "fresh", "data": {"v": 3}},
                {"name": "impostor", "data": {"v": 4}, "opts": {"job_id": "order-17"}},
            ]
        )
        assert bulk[1].id == "order-17" and bulk[1].data == {"v": 1}
        assert await env.total(q) == 2
