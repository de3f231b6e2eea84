"""Edges of single transitions: a retried attempt's lock, removing children whose link
to the parent is gone or resolved, obliterating a queue that holds another queue's
children, and long scans."""

from __future__ import annotations

import time

import pytest

from conveyor_core import JobState, QueueEvent, QueueEvents
from conveyor_core.errors import DuplicateJobError, InvalidJobStateError, JobNotFoundError
from conveyor_core.models import ParentPolicy
from conveyor_core.store import (
    Completion,
    DagEdge,
    DeduplicatedAdd,
    DeduplicationKey,
    Failure,
    NewJob,
    child_failed_reason,
)

from ._support import Harness, Runs, bare_job, nodes_by_name

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
FAILED = JobState.FAILED
COMPLETED = JobState.COMPLETED
WAITING_CHILDREN = JobState.WAITING_CHILDREN
ACTIVE = JobState.ACTIVE


class EdgeTests:
    """Transitions at their edges, each a behaviour a user can see."""

    async def test_a_failed_attempt_that_is_retried_holds_no_lock(self, env: Harness) -> None:
        q = env.name("retried")
        soon = await env.queue(q).add("soon", None, {"attempts": 3})
        later = await env.queue(q).add("later", None, {"attempts": 3})
        now = time.time()
        taken = await env.store.take_jobs(q, limit=2, token="first", lock_until=now + 60, now=now)
        assert {job.id for job in taken.jobs} == {soon.id, later.id}
        applied = await env.store.fail_jobs(
            q,
            [
                Failure(soon.id, "first", "broke", retry_at=now),
                Failure(later.id, "first", "broke", retry_at=now + 3600),
            ],
            now,
        )
        assert applied == [True, True]
        for job, state in ((soon, WAITING), (later, DELAYED)):
            record = await env.store.get_job(q, job.id)
            assert record is not None and record.state is state
            assert (record.lock_token, record.lock_until) == (None, None), job.name
            assert (record.attempts_made, record.failed_reason) == (1, "broke")

    async def test_children_removed_after_their_link_was_dropped_or_resolved(
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
        async with env.workers({child_q: Runs().handler(fail={"dropped"})}):
            await env.wait_state(jobs["parent"], WAITING)
        assert await env.state(jobs["dropped"]) is FAILED
        # The failed child no longer counts for its parent: removing it changes nothing
        # there.
        await jobs["dropped"].remove()
        assert await env.reread(jobs["dropped"]) is None
        # A completed child's value stays with its parent after the child is removed.
        await jobs["kept"].remove()
        assert await env.reread(jobs["kept"]) is None
        assert await env.state(jobs["parent"]) is WAITING
        assert await jobs["parent"].get_children_values() == {jobs["kept"].id: {"done": "kept"}}

    async def test_obliterating_a_queue_releases_parents_waiting_on_its_jobs(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "first", "queue_name": child_q},
                    {"name": "second", "queue_name": child_q, "opts": {"delay": 3600}},
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert await env.state(jobs["parent"]) is WAITING_CHILDREN
        await env.queue(child_q).obliterate()
        assert await env.total(child_q) == 0
        assert await env.state(jobs["parent"]) is WAITING
        assert await jobs["parent"].get_children_values() == {}

    async def test_a_search_over_hundreds_of_jobs_finds_every_match(self, env: Harness) -> None:
        q = env.name("many")
        queue = env.queue(q)
        added = await queue.add_bulk(
            [{"name": "hit" if i % 3 else "miss", "data": {"i": i}} for i in range(250)]
        )
        newest_first = sorted(added, key=lambda job: (job.record.created_at, job.id), reverse=True)
        hits = [job.id for job in newest_first if job.name == "hit"]
        found: list[str] = []
        cursor: str | None = None
        for _ in range(1000):
            page = await queue.search_jobs(text="hit", limit=1000, cursor=cursor)
            found += [job.id for job in page.jobs]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert found == hits

    async def test_one_add_of_many_jobs_keeps_their_order_whatever_their_ids(
        self, env: Harness
    ) -> None:
        q = env.name("order")
        queue = env.queue(q)
        ids = ["zeta", "yak", "xenon", "walrus"]
        fifo = await queue.add_bulk(
            [{"name": "fifo", "data": None, "opts": {"job_id": i}} for i in ids]
        )
        lifo = await queue.add_bulk(
            [
                {"name": "lifo", "data": None, "opts": {"job_id": f"l-{i}", "lifo": True}}
                for i in ids
            ]
        )
        now = time.time()
        taken = await env.store.take_jobs(q, limit=8, token="t", lock_until=now + 60, now=now)
        expected = [job.id for job in reversed(lifo)] + [job.id for job in fifo]
        assert [job.id for job in taken.jobs] == expected

    async def test_adding_a_delayed_job_publishes_delayed_with_its_run_time(
        self, env: Harness
    ) -> None:
        q = env.name("later")
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            job = await env.queue(q).add("later", None, {"delay": 3600})
            record = await env.store.get_job(q, job.id)
            assert record is not None and record.run_at is not None

            async def arrived() -> bool:
                return any(e.type == "delayed" and e.job_id == job.id for e in seen)

            await env.wait_for(arrived, "the delayed event of the added job")
        delayed = [e for e in seen if e.type == "delayed" and e.job_id == job.id]
        assert [e.data.get("run_at") for e in delayed] == [record.run_at]

    async def test_clean_of_waiting_jobs_goes_by_creation_and_of_finished_by_finish(
        self, env: Harness
    ) -> None:
        q = env.name("ages")
        queue = env.queue(q)
        waiting = [await queue.add(f"wait-{i}", None) for i in range(3)]
        created = max(job.record.created_at for job in waiting)
        assert await env.store.clean(q, WAITING, created - 3600, None) == []
        # At or before: the newest job's own creation time takes it too.
        removed = await env.store.clean(q, WAITING, created, None)
        assert sorted(removed) == sorted(job.id for job in waiting)
        assert await env.total(q) == 0
        # A job created long before it finished is cleaned by its finish time.
        done = await queue.add("done", None)
        broke = await queue.add("broke", None)
        start = done.record.created_at
        taken = await env.store.take_jobs(q, limit=2, token="t", lock_until=start + 7200, now=start)
        assert len(taken.jobs) == 2
        finished = start + 3600
        assert await env.store.complete_jobs(q, [Completion(done.id, "t", "null")], finished)
        assert await env.store.fail_jobs(q, [Failure(broke.id, "t", "broke")], finished)
        for state in (COMPLETED, FAILED):
            assert await env.store.clean(q, state, start + 1800, None) == []
        assert await env.store.clean(q, COMPLETED, finished + 1, None) == [done.id]
        assert await env.store.clean(q, FAILED, finished + 1, None) == [broke.id]
        # A clean of delayed jobs leaves the queue's jobs in other states.
        later = await queue.add("later", None, {"delay": 3600})
        stays = await queue.add("stays", None)
        cutoff = later.record.created_at
        assert await env.store.clean(q, DELAYED, cutoff, None) == [later.id]
        assert await env.state(stays) is WAITING
        # Jobs waiting for children, each as by REMOVE (its child goes with it).
        kids = env.name("ages-kids")
        node = await env.flow.add(
            {"name": "parent", "queue_name": q, "children": [{"name": "kid", "queue_name": kids}]}
        )
        born = node.job.record.created_at
        assert await env.store.clean(q, WAITING_CHILDREN, born - 1, None) == []
        assert await env.store.clean(q, WAITING_CHILDREN, born, None) == [node.job.id]
        assert await env.total(kids) == 0
        assert await env.state(stays) is WAITING

    async def test_a_big_add_keeps_each_retention_of_its_jobs(self, env: Harness) -> None:
        q = env.name("big-keep")
        queue = env.queue(q)
        opts = {"remove_on_fail": True, "remove_on_complete": 5}
        await queue.add_bulk([{"name": "n", "data": i, "opts": opts} for i in range(300)])
        now = time.time()
        taken = await env.store.take_jobs(q, limit=2, token="t", lock_until=now + 60, now=now)
        broke, done = taken.jobs
        assert await env.store.fail_jobs(q, [Failure(broke.id, "t", "broke")], now) == [True]
        assert await env.store.complete_jobs(q, [Completion(done.id, "t", "null")], now) == [True]
        assert await env.store.get_job(q, broke.id) is None, "no failed job is kept"
        kept = await env.store.get_job(q, done.id)
        assert kept is not None and kept.state is COMPLETED, "five completed are kept"

    async def test_completions_in_calls_of_different_sizes_list_newest_first(
        self, env: Harness
    ) -> None:
        q = env.name("batches")
        queue = env.queue(q)
        jobs = await queue.add_bulk([{"name": f"job-{i}", "data": None} for i in range(7)])
        now = time.time()
        taken = await env.store.take_jobs(q, limit=7, token="t", lock_until=now + 60, now=now)
        order = [job.id for job in taken.jobs]
        assert sorted(order) == sorted(job.id for job in jobs)
        small, big = order[:1], order[1:]
        await env.store.complete_jobs(q, [Completion(i, "t", "null") for i in small], now)
        await env.store.complete_jobs(q, [Completion(i, "t", "null") for i in big], now)
        listed = await queue.get_jobs(COMPLETED)
        assert [job.id for job in listed] == [*reversed(big), *reversed(small)]

    async def test_a_flow_of_five_thousand_children_is_added_whole(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        count = 5000
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": f"c{i:04d}", "queue_name": child_q, "data": None} for i in range(count)
                ],
            }
        )
        counts = await node.job.get_dependency_counts()
        assert counts.unprocessed == count
        assert await env.total(child_q) == count
        page = await node.job.get_dependencies(limit=10)
        assert page.unprocessed == [child.job.id for child in node.children[:10]]

    async def test_schedulers_made_again_after_obliterate_are_listed_and_due(
        self, env: Harness
    ) -> None:
        q = env.name("again")
        queue = env.queue(q)
        for sid in ("a", "b"):
            await queue.upsert_job_scheduler(sid, every=60.0, template={"name": sid})
        await queue.obliterate()
        assert await queue.get_job_schedulers() == []
        for sid in ("a", "b"):
            await queue.upsert_job_scheduler(sid, every=60.0, template={"name": sid})
        listed = await queue.get_job_schedulers()
        assert [s.id for s in listed] == ["a", "b"]
        due = await env.store.due_schedulers(q, time.time() + 3600, 10)
        assert sorted(record.id for record in due.schedulers) == ["a", "b"]

    async def test_removing_a_job_reaches_below_a_child_with_more_children_done_than_not(
        self, env: Harness
    ) -> None:
        q = env.name("remove-below")
        ignored = {"ignore_dependency_on_failure": True}
        node = await env.flow.add(
            {
                "name": "root",
                "queue_name": q,
                "children": [
                    {
                        "name": "middle",
                        "queue_name": q,
                        "children": [
                            {"name": "done", "queue_name": q},
                            {"name": "broke-1", "queue_name": q, "opts": ignored},
                            {"name": "broke-2", "queue_name": q, "opts": ignored},
                            {"name": "pending", "queue_name": q, "opts": {"delay": 3600}},
                        ],
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        now = time.time()
        taken = await env.store.take_jobs(q, limit=5, token="t", lock_until=now + 60, now=now)
        ids = {job.name: job.id for job in taken.jobs}
        assert sorted(ids) == ["broke-1", "broke-2", "done"]
        assert await env.store.complete_jobs(q, [Completion(ids["done"], "t", "1")], now) == [True]
        broke = [Failure(ids[name], "t", "broke") for name in ("broke-1", "broke-2")]
        assert await env.store.fail_jobs(q, broke, now) == [True, True]
        counts = await jobs["middle"].get_dependency_counts()
        assert (counts.processed, counts.ignored, counts.unprocessed) == (1, 2, 1)
        await jobs["root"].remove()
        # The unfinished jobs below are removed with it; the finished ones stay.
        for name in ("root", "middle", "pending"):
            assert await env.reread(jobs[name]) is None, name
        for name in ("done", "broke-1", "broke-2"):
            assert await env.reread(jobs[name]) is not None, name

    async def test_removing_a_job_keeps_the_logs_and_children_of_the_others(
        self, env: Harness
    ) -> None:
        q, child_q = env.name("jobs"), env.name("child")
        queue = env.queue(q)
        gone = await queue.add("gone", None, {"job_id": "gone"})
        kept = await queue.add("kept", None)
        await gone.log("gone-line")
        await kept.log("kept-line")
        first = await env.flow.add(
            {
                "name": "first",
                "queue_name": q,
                "opts": {"job_id": "first"},
                "children": [{"name": "a", "queue_name": child_q}],
            }
        )
        second = await env.flow.add(
            {"name": "second", "queue_name": q, "children": [{"name": "b", "queue_name": child_q}]}
        )
        await gone.remove()
        assert await kept.get_logs() == ["kept-line"]
        again = await queue.add("again", None, {"job_id": "gone"})
        assert await again.get_logs() == [], "a new job with a removed job's id has no log"
        await first.job.remove()
        deps = await env.store.get_dependencies(q, second.job.id)
        assert [dep.id for dep in deps] == [second.children[0].job.id]
        counts = await second.job.get_dependency_counts()
        assert counts.unprocessed == 1
        # A new parent with the removed parent's id depends on its own children only.
        reborn = await env.flow.add(
            {
                "name": "first",
                "queue_name": q,
                "opts": {"job_id": "first"},
                "children": [{"name": "c", "queue_name": child_q}],
            }
        )
        deps = await env.store.get_dependencies(q, "first")
        assert [dep.id for dep in deps] == [reborn.children[0].job.id]
        assert (await reborn.job.get_dependency_counts()).unprocessed == 1

    async def test_a_failed_parent_fails_its_unstarted_descendants_in_other_queues(
        self, env: Harness
    ) -> None:
        top_q, mid_q, leaf_q = env.name("top"), env.name("mid"), env.name("leaf")
        node = await env.flow.add(
            {
                "name": "top",
                "queue_name": top_q,
                "opts": {"fail_parent_on_child_failure": "fail"},
                "children": [
                    {"name": "bad", "queue_name": mid_q},
                    {
                        "name": "mid",
                        "queue_name": mid_q,
                        "children": [{"name": "leaf", "queue_name": leaf_q}],
                    },
                ],
            }
        )
        jobs = nodes_by_name(node)
        seen: list[QueueEvent] = []
        async with QueueEvents(leaf_q, store=env.event_store) as listener:
            listener.on("*", seen.append)
            async with env.workers({mid_q: Runs().handler(fail={"bad"})}):
                await env.wait_state(jobs["top"], FAILED)
            # Each job failed with its parent publishes its failed event, with the reason.
            failed = await env.wait_seen(
                seen,
                lambda e: e.type == "failed" and e.job_id == jobs["leaf"].id,
                "the failed event of the leaf",
            )
        assert failed.data.get("reason") == "parent failed"
        assert not any(e.type == "completed" for e in seen)
        for name in ("mid", "leaf"):
            job = await env.reread(jobs[name])
            assert job is not None and job.state is FAILED, name
            assert job.failed_reason == "parent failed", name

    async def test_a_failing_child_fails_its_parent_whatever_else_the_parents_queue_holds(
        self, env: Harness
    ) -> None:
        top_q, child_q = env.name("top"), env.name("child")
        # A finished job of the parent's queue, written before the flow.
        done = await env.queue(top_q).add("done", None)
        now = time.time()
        taken = await env.store.take_jobs(top_q, limit=1, token="t", lock_until=now + 60, now=now)
        assert [job.id for job in taken.jobs] == [done.id]
        assert await env.store.complete_jobs(top_q, [Completion(done.id, "t", "1")], now) == [True]
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": top_q,
                "children": [{"name": "child", "queue_name": child_q}],
            }
        )
        child_id = node.children[0].job.id
        taken = await env.store.take_jobs(child_q, limit=1, token="t", lock_until=now + 60, now=now)
        assert [job.id for job in taken.jobs] == [child_id]
        assert await env.store.fail_jobs(child_q, [Failure(child_id, "t", "broke")], now) == [True]
        parent = await env.reread(node.job)
        assert parent is not None and parent.state is FAILED
        assert parent.failed_reason == child_failed_reason(child_id, "broke")
        assert await env.state(done) is COMPLETED

    async def test_a_child_failed_with_its_parent_applies_its_failed_retention(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        old = await env.queue(child_q).add("old", None)
        now = time.time()
        taken = await env.store.take_jobs(child_q, limit=1, token="t", lock_until=now + 60, now=now)
        assert [job.id for job in taken.jobs] == [old.id]
        assert await env.store.fail_jobs(child_q, [Failure(old.id, "t", "old")], now)
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "breaks", "queue_name": child_q},
                    {
                        "name": "never-runs",
                        "queue_name": child_q,
                        "opts": {"delay": 3600, "remove_on_fail": 1},
                    },
                ],
            }
        )
        jobs = nodes_by_name(node)
        async with env.workers({child_q: Runs().handler(fail={"breaks"})}):
            await env.wait_state(jobs["parent"], FAILED)
        failed = await env.queue(child_q).get_jobs(FAILED)
        assert [job.id for job in failed] == [jobs["never-runs"].id], (
            "keeping one failed job, the child failed with its parent keeps only itself"
        )

    async def test_a_take_publishes_waiting_then_active_for_a_delayed_job_it_takes(
        self, env: Harness
    ) -> None:
        q = env.name("promoted")
        queue = env.queue(q)
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            later = await queue.add("later", None, {"delay": 30})
            due = time.time() + 60
            taken = await env.store.take_jobs(q, limit=5, token="t", lock_until=due + 60, now=due)
            assert [job.id for job in taken.jobs] == [later.id]

            def of_later() -> list[str]:
                return [e.type for e in seen if e.job_id == later.id]

            async def arrived() -> bool:
                return "active" in of_later()

            await env.wait_for(arrived, "the active event of the promoted job")
        assert of_later() == ["added", "delayed", "waiting", "active"]

    async def test_a_rate_limited_take_publishes_the_delayed_jobs_it_makes_waiting(
        self, env: Harness
    ) -> None:
        q = env.name("limited")
        queue = env.queue(q)
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            first = await queue.add("first", None)
            later = await queue.add("later", None, {"delay": 30})
            now = time.time()
            limit = (1, 3600.0)
            taken = await env.store.take_jobs(
                q, limit=5, token="t", lock_until=now + 60, now=now, rate_limit=limit
            )
            assert [job.id for job in taken.jobs] == [first.id]
            due = now + 60
            taken = await env.store.take_jobs(
                q, limit=5, token="t", lock_until=due + 60, now=due, rate_limit=limit
            )
            assert taken.jobs == [] and taken.rate_limited_until is not None
            assert await env.state(later) is WAITING

            async def arrived() -> bool:
                return any(e.type == "waiting" and e.job_id == later.id for e in seen)

            await env.wait_for(arrived, "the waiting event of the promoted delayed job")

    async def test_a_dag_edge_to_a_missing_or_failed_job_writes_nothing(self, env: Harness) -> None:
        # The core looks existing jobs up first; the store must still refuse them, as
        # when one is removed or fails between that look and the write. The error names
        # the job and its queue, here another queue than the new job's.
        q, other = env.name("dag-missing"), env.name("dag-missing-other")
        broken = await env.queue(other).add("broken", None)
        async with env.workers({other: Runs().handler(fail={"broken"})}):
            await env.wait_finished(broken)
        parent = NewJob(id="p", queue=q, name="p", data="null", opts="{}", state=WAITING_CHILDREN)
        gone = DagEdge(q, "p", other, "removed-meanwhile", ParentPolicy.FAIL)
        with pytest.raises(JobNotFoundError) as missing:
            await env.store.add_dag([parent], [gone], time.time())
        assert (missing.value.queue, missing.value.job_id) == (other, "removed-meanwhile")
        failed = DagEdge(q, "p", other, broken.id, ParentPolicy.FAIL)
        with pytest.raises(InvalidJobStateError, match=rf"{broken.id}. of queue .{other}."):
            await env.store.add_dag([parent], [failed], time.time())
        assert await env.store.get_job(q, "p") is None
        assert sum((await env.store.get_counts(q)).values()) == 0

    async def test_cancelling_a_parent_whose_completed_child_was_deleted(
        self, env: Harness
    ) -> None:
        # The processed dependency stays on the parent after the child is deleted by its
        # retention; a cancel walks past it and cancels the rest.
        q = env.name("cancel-kept")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": q,
                "children": [
                    {"name": "quick", "queue_name": q, "opts": {"remove_on_complete": True}},
                    {"name": "slow", "queue_name": q, "opts": {"delay": 3600}},
                ],
            }
        )
        jobs = nodes_by_name(node)
        now = time.time()
        taken = await env.store.take_jobs(q, limit=5, token="t", lock_until=now + 60, now=now)
        assert [job.id for job in taken.jobs] == [jobs["quick"].id]
        await env.store.complete_jobs(q, [Completion(jobs["quick"].id, "t", "1")], now)
        assert await env.store.get_job(q, jobs["quick"].id) is None
        count = await env.store.cancel_job(q, jobs["parent"].id, "cancelled", now)
        assert count == 2
        assert await env.state(jobs["slow"]) is FAILED
        assert await env.state(jobs["parent"]) is FAILED

    async def test_a_made_up_search_cursor_is_refused(self, env: Harness) -> None:
        q = env.name("cursor")
        await env.queue(q).add("job", None)
        for cursor in ("1700000000.5", "not a cursor", ""):
            with pytest.raises(ValueError, match="not a search cursor"):
                await env.store.search_jobs(
                    q, text=None, name=None, states=None, limit=5, cursor=cursor
                )

    async def test_a_cancelled_job_that_is_retried_runs_again_unhindered(
        self, env: Harness
    ) -> None:
        q = env.name("cancel-retry")
        job = await env.queue(q).add("job", None)
        now = time.time()
        await env.store.take_jobs(q, limit=1, token="t1", lock_until=now + 60, now=now)
        assert await env.store.cancel_job(q, job.id, "cancelled: stop", now) == 1
        # Asked again while its attempt still runs: nothing more to cancel.
        assert await env.store.cancel_job(q, job.id, "cancelled: again", now) == 0
        assert await env.store.cancel_requests(q, [job.id]) == {job.id: "cancelled: stop"}
        # The cancelled attempt ends: its completion is the job's final failure.
        await env.store.complete_jobs(q, [Completion(job.id, "t1", "1")], now)
        failed = await env.store.get_job(q, job.id)
        assert failed is not None and failed.state is FAILED
        assert (failed.failed_reason, failed.attempts_made) == ("cancelled: stop", 1)
        await env.store.retry_job(q, job.id, now)
        taken = await env.store.take_jobs(q, limit=1, token="t2", lock_until=now + 60, now=now)
        assert [record.id for record in taken.jobs] == [job.id]
        # No cancel request survives the retry: the new attempt runs and completes.
        assert await env.store.cancel_requests(q, [job.id]) == {}
        assert await env.store.complete_jobs(q, [Completion(job.id, "t2", "2")], now) == [True]
        done = await env.store.get_job(q, job.id)
        assert done is not None and (done.state, done.return_value) == (COMPLETED, "2")
        # A retry starts the count of attempts again.
        assert (done.attempts_made, done.lock_token, done.lock_until) == (1, None, None)
        # A finished job is not cancelled.
        assert await env.store.cancel_job(q, job.id, "cancelled: late", now) == 0
        assert await env.state(job) is COMPLETED

    async def test_a_child_of_a_missing_parent_is_refused_and_nothing_written(
        self, env: Harness
    ) -> None:
        q = env.name("orphan")
        child = NewJob(
            id="c",
            queue=q,
            name="c",
            data="null",
            opts="{}",
            state=WAITING,
            parent_id="gone",
            parent_queue=q,
            parent_policy=ParentPolicy.FAIL,
        )
        with pytest.raises(JobNotFoundError):
            await env.store.add_jobs([[child]], time.time())
        assert await env.store.get_job(q, "c") is None
        assert sum((await env.store.get_counts(q)).values()) == 0

    async def test_a_deduplicated_add_says_whether_it_wrote_the_job(self, env: Harness) -> None:
        q = env.name("dedup-said")

        def new(job_id: str) -> NewJob:
            return NewJob(id=job_id, queue=q, name="n", data="null", opts="{}", state=WAITING)

        now = time.time()
        key = DeduplicationKey("once")
        assert await env.store.add_deduplicated(new("first"), key, now) == DeduplicatedAdd(
            "first", True
        )
        assert await env.store.add_deduplicated(new("second"), key, now) == DeduplicatedAdd(
            "first", False
        )
        assert await env.store.get_job(q, "second") is None

    async def test_a_malformed_dag_is_refused_and_nothing_written(self, env: Harness) -> None:
        # The core checks a DAG before it sends it; the store must refuse one all the same.
        q = env.name("dag-malformed")

        def new(job_id: str, state: JobState = WAITING) -> NewJob:
            return NewJob(id=job_id, queue=q, name=job_id, data="null", opts="{}", state=state)

        def edge(parent: str, child: str) -> DagEdge:
            return DagEdge(q, parent, q, child, ParentPolicy.FAIL)

        now = time.time()
        existing = await env.queue(q).add("existing", None)
        parent = new("p", WAITING_CHILDREN)
        with pytest.raises(DuplicateJobError):
            await env.store.add_dag([parent, new("a"), new("a")], [edge("p", "a")], now)
        with pytest.raises(ValueError, match="must be a new job"):
            await env.store.add_dag([new("a")], [edge(existing.id, "a")], now)
        with pytest.raises(ValueError, match="only a leaf"):
            await env.store.add_dag(
                [parent, new("a")], [edge("p", "a")], now, [(0, DeduplicationKey("d"))]
            )
        with pytest.raises(ValueError, match="names no job"):
            await env.store.add_dag([new("a")], [], now, [(1, DeduplicationKey("d"))])
        for job_id in ("p", "a"):
            assert await env.store.get_job(q, job_id) is None
        assert await env.store.get_counts(q) == {**dict.fromkeys(JobState, 0), WAITING: 1}

    async def test_a_delayed_job_given_a_dependent_is_promoted_once(self, env: Harness) -> None:
        # Becoming a DAG job's dependency rewrites the delayed job's record; when its time
        # comes it enters waiting once, with one event, and its group counts it once.
        q = env.name("dag-delayed-dependency")
        now = time.time()
        later = [
            bare_job(q, job_id, DELAYED, delay=3.0, group_id=group)
            for job_id, group in (("later", None), ("later-a", "a"))
        ]
        assert await env.store.add_jobs([later], now) == [True]
        seen: list[str] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("waiting", lambda event: seen.append(event.job_id or ""))
            listener.on("paused", lambda event: seen.append("marker"))
            parent = NewJob(
                id="p", queue=q, name="p", data="null", opts="{}", state=WAITING_CHILDREN
            )
            edges = [DagEdge(q, "p", q, job.id, ParentPolicy.FAIL) for job in later]
            await env.store.add_dag([parent], edges, now)
            taken = await env.store.take_jobs(
                q, limit=5, token="t", lock_until=now + 60, now=now + 5
            )
            assert sorted(job.id for job in taken.jobs) == ["later", "later-a"]
            await env.store.pause(q)

            async def arrived() -> bool:
                return "marker" in seen

            await env.wait_for(arrived, "the promotion's events")
        assert sorted(seen) == ["later", "later-a", "marker"]
        counts = await env.store.get_counts(q)
        assert (counts[ACTIVE], counts[DELAYED], counts[WAITING]) == (2, 0, 0)
        groups = await env.store.get_group_counts(q)
        assert (groups["a"][ACTIVE], groups["a"][DELAYED]) == (1, 0)

    async def test_an_active_job_cancelled_publishes_cancelled_once(self, env: Harness) -> None:
        q = env.name("cancel-event")
        seen: list[str] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("cancelled", lambda event: seen.append(event.job_id or ""))
            listener.on("added", lambda event: seen.append("marker"))
            job = await env.queue(q).add("job", None)
            now = time.time()
            await env.store.take_jobs(q, limit=1, token="t", lock_until=now + 60, now=now)
            await env.store.cancel_job(q, job.id, "cancelled: stop", now)
            await env.store.cancel_job(q, job.id, "cancelled: again", now)
            await env.queue(q).add("marker", None)

            async def arrived() -> bool:
                return seen.count("marker") == 2

            await env.wait_for(arrived, "the cancel's events")
        assert seen == ["marker", job.id, "marker"]

    async def test_a_final_failure_holds_no_lock(self, env: Harness) -> None:
        q = env.name("failed-for-good")
        job = await env.queue(q).add("job", None)
        now = time.time()
        await env.store.take_jobs(q, limit=1, token="t", lock_until=now + 60, now=now)
        assert await env.store.fail_jobs(q, [Failure(job.id, "t", "broke")], now) == [True]
        record = await env.store.get_job(q, job.id)
        assert record is not None and record.state is FAILED
        assert (record.lock_token, record.lock_until) == (None, None)

    async def test_retrying_jobs_that_have_not_finished_is_refused(self, env: Harness) -> None:
        q = env.name("retry-unfinished")
        job = await env.queue(q).add("job", None)
        for state in (WAITING, ACTIVE, DELAYED):
            with pytest.raises(InvalidJobStateError):
                await env.store.retry_jobs(q, state, time.time())
        assert await env.state(job) is WAITING

    async def test_a_search_page_of_no_jobs_is_refused(self, env: Harness) -> None:
        q = env.name("search-limit")
        await env.queue(q).add("job", None)
        for limit in (0, -1):
            with pytest.raises(ValueError, match="limit"):
                await env.store.search_jobs(
                    q, text=None, name=None, states=None, limit=limit, cursor=None
                )

    async def test_removing_child_dependencies_clears_every_link_and_keeps_results(
        self, env: Harness
    ) -> None:
        q = env.name("unlink")
        jobs = await env.flow.add_dag(
            [
                {"id": "done", "name": "done", "queue_name": q},
                {"id": "open", "name": "open", "queue_name": q},
                {"id": "a", "name": "a", "queue_name": q, "depends_on": ["done", "open"]},
                {"id": "b", "name": "b", "queue_name": q, "depends_on": ["open"]},
            ]
        )
        now = time.time()
        taken = await env.store.take_jobs(q, limit=1, token="t", lock_until=now + 60, now=now)
        assert [record.id for record in taken.jobs] == [jobs["done"].id]
        await env.store.complete_jobs(q, [Completion(jobs["done"].id, "t", "7")], now)
        # A finished child's result stays with its parent.
        assert await env.store.remove_child_dependency(q, jobs["done"].id, now)
        assert (await jobs["a"].get_dependencies()).processed == {jobs["done"].id: 7}
        # A child with two parents leaves both, and both are released.
        assert await env.store.remove_child_dependency(q, jobs["open"].id, now)
        record = await env.store.get_job(q, jobs["open"].id)
        assert record is not None
        assert (record.parent_id, record.parent_queue, record.parent_policy) == (None, None, None)
        assert await env.store.get_parent_links(q, jobs["open"].id) == []
        for name in ("a", "b"):
            assert await env.state(jobs[name]) is WAITING, name
        assert not await env.store.remove_child_dependency(q, jobs["open"].id, now)
        # A new parent finds no trace of the old ones.
        later = await env.flow.add_dag(
            [{"id": "c", "name": "c", "queue_name": q, "depends_on": [f"{q}/{jobs['open'].id}"]}]
        )
        links = await env.store.get_parent_links(q, jobs["open"].id)
        assert [(link.queue, link.id) for link in links] == [(q, later["c"].id)]
