"""Large flows and leaving a flow: dependency pages, dependency counts kept exact by
every transition, ``remove_child_dependency`` and ``remove_unprocessed_children``."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from conveyor_core import DependencyCounts, Job, JobNotFoundError, JobState, QueueEvents
from conveyor_core.store import ChildDependency, Completion, Failure

from ._support import Harness, nodes_by_name, take_ids

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
ACTIVE = JobState.ACTIVE
WAITING = JobState.WAITING
WAITING_CHILDREN = JobState.WAITING_CHILDREN


def _parent(queue: str, children: list[dict[str, Any]], **opts: Any) -> dict[str, Any]:
    return {"name": "parent", "queue_name": queue, "opts": opts, "children": children}


def _child(name: str, queue: str, **opts: Any) -> dict[str, Any]:
    return {"name": name, "queue_name": queue, "data": {"n": name}, "opts": opts}


async def _walk(job: Job, limit: int) -> tuple[list[str], int]:
    """Every child id of ``job`` read page by page (pending, processed, failed and
    ignored alike, in page order), and how many pages it took."""
    ids: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await job.get_dependencies(cursor=cursor, limit=limit)
        pages += 1
        in_page = [*page.unprocessed, *page.processed, *page.failed, *page.ignored]
        assert len(in_page) <= limit, f"a page of limit {limit} held {len(in_page)} children"
        ids.extend(in_page)
        if page.next_cursor is None:
            return ids, pages
        assert in_page, "a page that is not the last must hold children"
        cursor = page.next_cursor


async def _ordered_ids(job: Job) -> list[str]:
    """Child ids of ``job`` in the order the store pages them, one child per page, so
    the order within a page cannot hide behind the grouping by status."""
    ids, _ = await _walk(job, 1)
    return ids


async def _counts_agree(job: Job) -> DependencyCounts:
    """The job's dependency counts, checked against its full list of children."""
    counts = await job.get_dependency_counts()
    deps = await job.get_dependencies()
    listed = DependencyCounts(
        processed=len(deps.processed),
        unprocessed=len(deps.unprocessed),
        failed=len(deps.failed),
        ignored=len(deps.ignored),
    )
    assert counts == listed, f"counts {counts} disagree with the children listed: {listed}"
    return counts


class LargeFlowTests:
    """A parent's children read a page at a time, and counted without reading them."""

    async def test_pages_walk_every_child_once_in_the_order_added(self, env: Harness) -> None:
        q = env.name("pages")
        names = [f"c{i:03d}" for i in range(23)]
        node = await env.flow.add(_parent(q, [_child(name, q) for name in names]))
        parent = node.job
        by_name = nodes_by_name(node)
        expected = [by_name[name].id for name in names]
        for limit in (1, 5, 7, 23, 50):
            ids, pages = await _walk(parent, limit)
            assert ids == expected, f"limit {limit}: pages gave {ids}, expected {expected}"
            assert pages == max(1, -(-len(names) // limit)), (
                f"limit {limit}: {pages} pages for {len(names)} children; the last full page "
                "must say no page follows"
            )
        everything = await parent.get_dependencies()
        assert everything.unprocessed == expected
        assert everything.next_cursor is None

    async def test_pages_stay_in_order_while_children_resolve(self, env: Harness) -> None:
        q, idle = env.name("resolving"), env.name("resolving-idle")
        names = [f"c{i:02d}" for i in range(12)]
        children = [_child(name, q if i % 2 else idle) for i, name in enumerate(names)]
        node = await env.flow.add(_parent(q + "-parent", children))
        parent = node.job
        by_name = nodes_by_name(node)
        expected = [by_name[name].id for name in names]
        first = await parent.get_dependencies(limit=4)
        async with env.workers({q: _value}):
            await env.wait_finished(*(by_name[name] for name in names[1::2]))
        rest, _ = await _walk_from(parent, first.next_cursor, 1)
        assert [*first.unprocessed, *rest] == expected, (
            "children resolving between two pages must keep their place in the walk"
        )
        assert await _ordered_ids(parent) == expected
        page = await parent.get_dependencies(limit=12)
        assert page.processed == {by_name[name].id: {"v": name} for name in names[1::2]}
        assert page.next_cursor is None

    async def test_a_page_deep_in_a_big_flow(self, env: Harness) -> None:
        q = env.name("deep")
        count = 1200
        node = await env.flow.add(_parent(q, [_child(f"c{i:04d}", q) for i in range(count)]))
        parent = node.job
        by_name = nodes_by_name(node)
        ids = [by_name[f"c{i:04d}"].id for i in range(count)]
        cursor: str | None = None
        for _ in range(6):
            page = await parent.get_dependencies(cursor=cursor, limit=100)
            cursor = page.next_cursor
        page = await parent.get_dependencies(cursor=cursor, limit=100)
        assert page.unprocessed == ids[600:700]
        # Pages of more than a thousand records, from the start and from a cursor.
        big = await parent.get_dependencies(limit=1100)
        assert big.unprocessed == ids[:1100] and big.next_cursor is not None
        rest = await parent.get_dependencies(cursor=page.next_cursor, limit=count)
        assert rest.unprocessed == ids[700:] and rest.next_cursor is None
        whole = await parent.get_dependencies(limit=count)
        assert whole.unprocessed == ids and whole.next_cursor is None
        counts = await parent.get_dependency_counts()
        assert counts == DependencyCounts(unprocessed=count)
        assert counts.total == count

    async def test_page_arguments_and_missing_jobs_are_refused(self, env: Harness) -> None:
        q = env.name("refused")
        node = await env.flow.add(_parent(q, [_child("only", q)]))
        parent = node.job
        with pytest.raises(ValueError, match="limit"):
            await parent.get_dependencies(limit=0)
        with pytest.raises(ValueError, match="not a dependency cursor"):
            await parent.get_dependencies(cursor="not-a-cursor", limit=10)
        await env.queue(q).obliterate(force=True)
        with pytest.raises(JobNotFoundError):
            await parent.get_dependency_counts()
        with pytest.raises(JobNotFoundError):
            await parent.get_dependencies(limit=10)
        with pytest.raises(JobNotFoundError):
            await parent.remove_unprocessed_children()
        with pytest.raises(JobNotFoundError):
            await parent.remove_child_dependency()


async def _value(job: Job) -> dict[str, Any]:
    return {"v": job.name}


async def _walk_from(job: Job, cursor: str | None, limit: int) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    while cursor is not None:
        page = await job.get_dependencies(cursor=cursor, limit=limit)
        pages += 1
        ids.extend([*page.unprocessed, *page.processed, *page.failed, *page.ignored])
        cursor = page.next_cursor
    return ids, pages


class DependencyCountTests:
    """Counts per status stay exact through every transition that changes a record."""

    async def test_counts_follow_complete_ignore_drop_retry_remove_leave_and_obliterate(
        self, env: Harness
    ) -> None:
        work, idle, top = env.name("work"), env.name("idle"), env.name("top")
        node = await env.flow.add(
            _parent(
                top,
                [
                    _child("ok", work),
                    _child("ignored", work, ignore_dependency_on_failure=True),
                    _child("dropped", work, remove_dependency_on_failure=True),
                    _child("removed", idle),
                    _child("leaving", idle),
                    _child("waiting", idle),
                ],
            )
        )
        jobs = nodes_by_name(node)
        parent = jobs["parent"]
        assert await _counts_agree(parent) == DependencyCounts(unprocessed=6)

        async def handle(job: Job) -> Any:
            if job.name in ("ignored", "dropped"):
                raise RuntimeError(f"{job.name} broke")
            return {"v": job.name}

        async with env.workers({work: handle}):
            await env.wait_finished(jobs["ok"], jobs["ignored"], jobs["dropped"])
        # complete -> processed, ignore -> ignored, drop -> no record
        assert await _counts_agree(parent) == DependencyCounts(
            processed=1, unprocessed=3, ignored=1
        )
        # retry puts an ignored dependency back, and re-creates a dropped one at the end
        await jobs["ignored"].retry()
        await jobs["dropped"].retry()
        assert await _counts_agree(parent) == DependencyCounts(processed=1, unprocessed=5)
        order = await _ordered_ids(parent)
        assert order[-1] == jobs["dropped"].id, "a re-created dependency goes to the end"
        # REMOVE of a pending child
        await jobs["removed"].remove()
        assert await _counts_agree(parent) == DependencyCounts(processed=1, unprocessed=4)
        # a child leaving its parent
        assert await jobs["leaving"].remove_child_dependency() is True
        assert await _counts_agree(parent) == DependencyCounts(processed=1, unprocessed=3)
        # a completed child run again from scratch takes its result back: pending again
        assert await env.queue(work).retry_jobs(COMPLETED) == 1
        assert await _counts_agree(parent) == DependencyCounts(unprocessed=4)
        # obliterating the children's queue resolves their pending dependencies
        await env.queue(work).obliterate(force=True)
        assert await _counts_agree(parent) == DependencyCounts(unprocessed=1)
        assert await env.state(parent) is WAITING_CHILDREN

    async def test_counts_follow_the_fail_and_continue_policies(self, env: Harness) -> None:
        work, idle = env.name("work"), env.name("idle")
        failing = await env.flow.add(
            _parent(
                env.name("failing"),
                [_child("bad", work), _child("s1", idle), _child("s2", idle)],
            )
        )
        going_on = await env.flow.add(
            _parent(
                env.name("going-on"),
                [_child("bad2", work, continue_parent_on_failure=True), _child("s3", idle)],
            )
        )
        jobs = {**nodes_by_name(failing), **nodes_by_name(going_on)}

        async def handle(job: Job) -> Any:
            raise RuntimeError(f"{job.name} broke")

        async with env.workers({work: handle}):
            await env.wait_state(failing.job, FAILED)
            await env.wait_finished(jobs["bad2"])
        # fail: the failed child and its unstarted siblings ("parent failed")
        assert await _counts_agree(failing.job) == DependencyCounts(failed=3)
        # continue: the failed child is recorded failed, the sibling still pending
        assert await _counts_agree(going_on.job) == DependencyCounts(failed=1, unprocessed=1)
        assert await env.state(going_on.job) is WAITING
        # the failed child retried is pending again, and its parent waits for it
        await jobs["bad2"].retry()
        assert await _counts_agree(going_on.job) == DependencyCounts(unprocessed=2)
        assert await env.state(going_on.job) is WAITING_CHILDREN


class LeavingFlowTests:
    """``remove_child_dependency`` and ``remove_unprocessed_children``."""

    async def test_a_child_leaving_releases_a_parent_with_no_other_pending_child(
        self, env: Harness
    ) -> None:
        q, idle = env.name("leave"), env.name("leave-idle")
        node = await env.flow.add(_parent(q, [_child("done", q), _child("only", idle)]))
        jobs = nodes_by_name(node)
        async with env.workers({q: _value}):
            await env.wait_finished(jobs["done"])
        assert await env.state(node.job) is WAITING_CHILDREN
        assert await jobs["only"].remove_child_dependency() is True
        assert jobs["only"].parent_id is None
        parent = await env.wait_state(node.job, WAITING, COMPLETED)
        child = await env.reread(jobs["only"])
        assert child is not None and child.state is WAITING and child.parent_id is None
        # the resolved child stays on record with its value; the one that left does not
        deps = await parent.get_dependencies()
        assert deps.processed == {jobs["done"].id: {"v": "done"}}
        assert deps.unprocessed == []
        page = await parent.get_dependencies(limit=5)
        assert (page.processed, page.unprocessed) == (deps.processed, [])
        assert page.next_cursor is None
        async with env.workers({idle: _value, q: _value}):
            await env.wait_finished(child)
            parent = (await env.wait_finished(parent))[0]
        assert parent.state is COMPLETED
        assert await parent.get_children_values() == {jobs["done"].id: {"v": "done"}}
        assert await child.remove_child_dependency() is False, "a job without a parent"

    async def test_a_running_child_can_leave_and_its_result_stays_its_own(
        self, env: Harness
    ) -> None:
        q, parents = env.name("runs"), env.name("runs-parent")
        node = await env.flow.add(_parent(parents, [_child("runner", q), _child("stays", q)]))
        jobs = nodes_by_name(node)

        async def handle(job: Job) -> Any:
            if job.name == "runner":
                assert await job.remove_child_dependency() is True
            return {"v": job.name}

        async with env.workers({q: handle, parents: _value}):
            await env.wait_finished(jobs["runner"], jobs["stays"])
            parent = (await env.wait_finished(node.job))[0]
        assert await parent.get_children_values() == {jobs["stays"].id: {"v": "stays"}}
        assert await _counts_agree(parent) == DependencyCounts(processed=1)

    async def test_removing_unprocessed_children_keeps_resolved_and_running_ones(
        self, env: Harness
    ) -> None:
        work, idle, top = env.name("work"), env.name("idle"), env.name("top")
        node = await env.flow.add(
            _parent(
                top,
                [
                    _child("done", work),
                    _child("running", work),
                    {**_child("deep", idle), "children": [_child("grandchild", idle)]},
                    _child("idle", idle),
                ],
            )
        )
        jobs = nodes_by_name(node)
        parent = jobs["parent"]
        started = anyio.Event()
        finish = anyio.Event()

        async def handle(job: Job) -> Any:
            if job.name == "running":
                started.set()
                await finish.wait()
            return {"v": job.name}

        async with env.workers({work: handle, top: _value}, concurrency=2):
            await env.wait_finished(jobs["done"])
            with anyio.fail_after(env.timeout):
                await started.wait()
            assert await parent.remove_unprocessed_children() == 2
            for name in ("deep", "grandchild", "idle"):
                assert await env.reread(jobs[name]) is None, f"{name} must be removed"
            assert await env.state(jobs["running"]) is ACTIVE
            assert await env.state(parent) is WAITING_CHILDREN
            assert await _counts_agree(parent) == DependencyCounts(processed=1, unprocessed=1)
            finish.set()
            done = (await env.wait_finished(parent))[0]
        assert done.state is COMPLETED
        assert await done.get_children_values() == {
            jobs["done"].id: {"v": "done"},
            jobs["running"].id: {"v": "running"},
        }

    async def test_removing_every_pending_child_releases_the_parent(self, env: Harness) -> None:
        q, idle = env.name("release"), env.name("release-idle")
        node = await env.flow.add(_parent(q, [_child("a", idle), _child("b", idle)]))
        jobs = nodes_by_name(node)
        assert await node.job.remove_unprocessed_children() == 2
        assert await env.state(node.job) is WAITING
        assert await env.reread(jobs["a"]) is None and await env.reread(jobs["b"]) is None
        assert await _counts_agree(node.job) == DependencyCounts()
        assert await node.job.remove_unprocessed_children() == 0

    async def test_removing_unprocessed_children_of_a_missing_job_is_an_error(
        self, env: Harness
    ) -> None:
        q = env.name("missing")
        await env.queue(q).add("present", None)
        with pytest.raises(JobNotFoundError):
            await env.store.remove_unprocessed_children(q, "missing", time.time())

    async def test_removing_unprocessed_children_reads_each_childs_own_state(
        self, env: Harness
    ) -> None:
        q, kids = env.name("own-state"), env.name("own-state-kids")
        # The children's queue holds a running job, written and taken first.
        busy = await env.queue(kids).add("busy", None)
        assert await take_ids(env.store, kids, time.time(), 1) == [busy.id]
        node = await env.flow.add(_parent(q, [_child("idle", kids)]))
        jobs = nodes_by_name(node)
        removed: list[str | None] = []
        async with QueueEvents(kids, store=env.event_store) as listener:
            listener.on("removed", lambda event: removed.append(event.job_id))
            assert await node.job.remove_unprocessed_children() == 1

            async def arrived() -> bool:
                return bool(removed)

            await env.wait_for(arrived, "the removed child's event")
        assert removed == [jobs["idle"].id]
        assert await env.reread(jobs["idle"]) is None
        assert await env.state(busy) is ACTIVE
        assert await env.state(node.job) is WAITING

    async def test_removing_unprocessed_children_drops_a_record_of_a_deleted_child(
        self, env: Harness
    ) -> None:
        # "done" started early ("bad" failed, continue policy) and completed while it
        # waited for "shared" and "running". "shared" then failed with its other
        # dependent "gone" (parent failed) and was deleted (remove_on_fail): "done" still
        # holds its pending record, which the call drops; "running" is left to finish.
        top, kids, qx = env.name("rec-top"), env.name("rec-kids"), env.name("rec-x")
        going = {"continue_parent_on_failure": True}
        jobs = await env.flow.add_dag(
            [
                {"id": "bad", "name": "bad", "queue_name": qx, "opts": going},
                {"id": "bad2", "name": "bad2", "queue_name": qx},
                {
                    "id": "shared",
                    "name": "shared",
                    "queue_name": kids,
                    "opts": {"remove_on_fail": True, "priority": 5},
                },
                {"id": "running", "name": "running", "queue_name": kids},
                {"id": "other", "name": "other", "queue_name": kids, "opts": {"priority": 9}},
                {
                    "id": "done",
                    "name": "done",
                    "queue_name": top,
                    "depends_on": ["bad", "shared", "running"],
                },
                {"id": "gone", "name": "gone", "queue_name": top, "depends_on": ["bad2", "shared"]},
                # Another job of the same queue, with a pending record of its own.
                {"id": "witness", "name": "witness", "queue_name": top, "depends_on": ["other"]},
            ]
        )
        now = time.time()
        assert await take_ids(env.store, kids, now, 1) == [jobs["running"].id]
        assert await take_ids(env.store, qx, now, 2) == [jobs["bad"].id, jobs["bad2"].id]
        assert await env.store.fail_jobs(qx, [Failure(jobs["bad"].id, "tok", "broke")], now)
        assert await take_ids(env.store, top, now, 1) == [jobs["done"].id]
        done = [Completion(jobs["done"].id, "tok", "1")]
        assert await env.store.complete_jobs(top, done, now)
        assert await env.store.fail_jobs(qx, [Failure(jobs["bad2"].id, "tok", "broke")], now)
        assert await env.state(jobs["gone"]) is FAILED
        assert await env.reread(jobs["shared"]) is None

        def records(deps: list[ChildDependency]) -> list[tuple[str, str]]:
            return [(dep.id, dep.status) for dep in deps]

        done_id, witness_id = jobs["done"].id, jobs["witness"].id
        before = records(await env.store.get_dependencies(top, done_id))
        assert before == [
            (jobs["bad"].id, "failed"),
            (jobs["shared"].id, "pending"),
            (jobs["running"].id, "pending"),
        ]
        assert await env.store.remove_unprocessed_children(top, done_id, now) == 0
        assert records(await env.store.get_dependencies(top, done_id)) == [
            (jobs["bad"].id, "failed"),
            (jobs["running"].id, "pending"),
        ]
        assert records(await env.store.get_dependencies(top, witness_id)) == [
            (jobs["other"].id, "pending")
        ]
        assert records(await env.store.get_dependencies(top, jobs["gone"].id)) == [
            (jobs["bad2"].id, "failed"),
            (jobs["shared"].id, "failed"),
        ]
        assert await env.state(jobs["done"]) is COMPLETED
        assert await env.state(jobs["running"]) is ACTIVE
