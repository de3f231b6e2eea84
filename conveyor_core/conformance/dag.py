"""DAGs (SPEC section 9): jobs with several parents, per-edge policies, shared nodes."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from conveyor_core import (
    DagError,
    DependencyCounts,
    DuplicateJobError,
    Job,
    JobState,
    QueueEvent,
    QueueEvents,
)
from conveyor_core.errors import InvalidJobStateError, JobNotFoundError
from conveyor_core.store import PARENT_FAILED_REASON, Completion, Failure, child_failed_reason

from ._support import Harness, Runs

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING = JobState.WAITING
WAITING_CHILDREN = JobState.WAITING_CHILDREN


async def _arrived(seen: list[str], item: str) -> bool:
    return item in seen


def _value(job: Job) -> dict[str, Any]:
    return {"done": job.name}


class DagTests:
    """Jobs that wait for several jobs, and jobs that several jobs wait for."""

    async def test_dag_a_diamond_runs_its_shared_job_once_and_the_sink_sees_both_values(
        self, env: Harness
    ) -> None:
        etl, out = env.name("etl"), env.name("out")
        jobs = await env.flow.add_dag(
            [
                {"id": "extract", "name": "extract", "queue_name": etl},
                {"id": "clean", "name": "clean", "queue_name": etl, "depends_on": ["extract"]},
                {"id": "stats", "name": "stats", "queue_name": etl, "depends_on": ["extract"]},
                {
                    "id": "report",
                    "name": "report",
                    "queue_name": out,
                    "depends_on": ["clean", "stats"],
                },
            ]
        )
        assert set(jobs) == {"extract", "clean", "stats", "report"}
        assert await env.state(jobs["extract"]) is WAITING
        for name in ("clean", "stats", "report"):
            assert await env.state(jobs[name]) is WAITING_CHILDREN, name
        seen: dict[str, dict[str, Any]] = {}
        runs = Runs()

        async def handle(job: Job) -> Any:
            runs.record(job)
            seen[job.name] = await job.get_children_values()
            return {"done": job.name}

        async with env.workers({etl: handle, out: handle}, concurrency=4):
            report = await env.wait_state(jobs["report"], COMPLETED)
        assert report.return_value == {"done": "report"}
        assert runs.order.count("extract") == 1, runs.order
        assert sorted(runs.order) == ["clean", "extract", "report", "stats"]
        assert runs.order[0] == "extract" and runs.order[-1] == "report"
        extract_value = {jobs["extract"].id: {"done": "extract"}}
        assert seen["clean"] == extract_value
        assert seen["stats"] == extract_value
        assert seen["report"] == {
            jobs["clean"].id: {"done": "clean"},
            jobs["stats"].id: {"done": "stats"},
        }
        parents = await jobs["extract"].get_parents()
        assert sorted(parent.name for parent in parents) == ["clean", "stats"]

    async def test_dag_a_shared_job_resolves_every_dependent_exactly_once(
        self, env: Harness
    ) -> None:
        shared_q, waiting_q = env.name("shared"), env.name("dependents")
        names = [f"dependent-{index}" for index in range(4)]
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": shared_q},
                *(
                    {"id": name, "name": name, "queue_name": waiting_q, "depends_on": ["shared"]}
                    for name in names
                ),
            ]
        )
        async with env.workers({shared_q: Runs().handler()}):
            await env.wait_state(jobs["shared"], COMPLETED)
        for name in names:
            dependent = await env.reread(jobs[name])
            assert dependent is not None
            assert dependent.state is WAITING, f"{name} is {dependent.state}"
            assert await dependent.get_children_values() == {jobs["shared"].id: {"done": "shared"}}
            counts = await dependent.get_dependency_counts()
            assert counts.processed == 1 and counts.unprocessed == 0, (name, counts)
        assert (await env.counts(waiting_q))["waiting"] == len(names)

    async def test_dag_invalid_dags_name_the_problem_and_write_nothing(self, env: Harness) -> None:
        queue = env.name("invalid")

        def node(node_id: str, *deps: str) -> dict[str, Any]:
            return {"id": node_id, "name": node_id, "queue_name": queue, "depends_on": list(deps)}

        with pytest.raises(DagError, match="cycle") as cycle:
            await env.flow.add_dag([node("a"), node("b", "a", "d"), node("c", "b"), node("d", "c")])
        message = str(cycle.value)
        assert all(f"'{name}'" in message for name in "bcd"), message
        assert "'a'" not in message, message
        with pytest.raises(DagError, match="'self'"):
            await env.flow.add_dag([node("self", "self")])
        with pytest.raises(DagError, match="'ghost'"):
            await env.flow.add_dag([node("a"), node("b", "a", "ghost")])
        with pytest.raises(DuplicateJobError, match="'twin'"):
            await env.flow.add_dag([node("twin"), node("other", "twin"), node("twin")])
        with pytest.raises(DagError, match="'a'"):
            await env.flow.add_dag([node("a"), node("b", "a", "a")])
        with pytest.raises(JobNotFoundError):
            await env.flow.add_dag([node("a"), node("b", "a", f"{queue}/no-such-job")])
        assert await env.total(queue) == 0

    async def test_dag_jobs_read_back_as_added_and_their_queues_are_listed(
        self, env: Harness
    ) -> None:
        leaves_q, sink_q = env.name("dag-leaves"), env.name("dag-sink")
        jobs = await env.flow.add_dag(
            [
                {
                    "id": "first",
                    "name": "first",
                    "queue_name": leaves_q,
                    "data": {"n": 1},
                    "opts": {"priority": 3, "attempts": 4},
                },
                {"id": "second", "name": "second", "queue_name": leaves_q, "data": [2]},
                {
                    "id": "sink",
                    "name": "sink",
                    "queue_name": sink_q,
                    "data": "three",
                    "depends_on": ["first", "second"],
                },
            ]
        )
        expected = {
            "first": ({"n": 1}, 3, 4, WAITING),
            "second": ([2], 0, 1, WAITING),
            "sink": ("three", 0, 1, WAITING_CHILDREN),
        }
        for name, (data, priority, attempts, state) in expected.items():
            job = await env.reread(jobs[name])
            assert job is not None, name
            assert (job.name, job.data, job.priority, job.opts.attempts, job.state) == (
                name,
                data,
                priority,
                attempts,
                state,
            )
            assert (job.attempts_made, job.stalled_count) == (0, 0), name
        assert await jobs["sink"].get_dependency_counts() == DependencyCounts(unprocessed=2)
        assert await jobs["first"].get_dependency_counts() == DependencyCounts()
        assert {leaves_q, sink_q} <= set(await env.store.list_queues())
        # A search of their queues finds them.
        page = await env.queue(leaves_q).search_jobs()
        assert sorted(job.id for job in page.jobs) == sorted((jobs["first"].id, jobs["second"].id))
        page = await env.queue(sink_q).search_jobs(text="sink")
        assert [job.id for job in page.jobs] == [jobs["sink"].id]

    async def test_dag_jobs_keep_their_group_and_each_retention(self, env: Harness) -> None:
        q = env.name("dag-keep")
        opts = {"group_id": "g", "remove_on_complete": 1, "remove_on_fail": 2, "attempts": 1}
        jobs = await env.flow.add_dag(
            [{"id": f"n{i}", "name": f"n{i}", "queue_name": q, "opts": opts} for i in range(5)]
        )
        for job in jobs.values():
            record = await env.store.get_job(q, job.id)
            assert record is not None and record.group_id == "g"
        assert (await env.queue(q).get_group_counts())["g"]["waiting"] == 5
        before = time.time()
        later = await env.flow.add_dag(
            [{"id": "l", "name": "l", "queue_name": q, "opts": {"lifo": True, "delay": 30}}]
        )
        record = await env.store.get_job(q, later["l"].id)
        assert record is not None and (record.lifo, record.delay) == (True, 30)
        assert record.group_id is None
        assert record.run_at is not None and before + 30 <= record.run_at <= time.time() + 30
        now = time.time()
        taken = await env.store.take_jobs(q, limit=5, token="t", lock_until=now + 60, now=now)
        assert len(taken.jobs) == 5
        done, broke = taken.jobs[:2], taken.jobs[2:]
        await env.store.complete_jobs(q, [Completion(j.id, "t", "1") for j in done], now)
        await env.store.fail_jobs(q, [Failure(j.id, "t", "broke") for j in broke], now)
        counts = await env.queue(q).get_job_counts()
        assert (counts["completed"], counts["failed"]) == (1, 2)

    async def test_dag_jobs_keep_a_retention_given_alone(self, env: Harness) -> None:
        # Jobs without a group, each with one retention and not the other.
        q = env.name("dag-keep-one")
        done = {"remove_on_complete": 1}
        broke = {"remove_on_fail": 1, "attempts": 1}
        jobs = await env.flow.add_dag(
            [
                {"id": name, "name": name, "queue_name": q, "opts": opts}
                for name, opts in (("c0", done), ("c1", done), ("f0", broke), ("f1", broke))
            ]
        )
        assert await env.queue(q).get_group_counts() == {}
        now = time.time()
        taken = await env.store.take_jobs(q, limit=4, token="t", lock_until=now + 60, now=now)
        assert sorted(j.id for j in taken.jobs) == sorted(j.id for j in jobs.values())
        assert all(job.group_id is None for job in taken.jobs)
        ids = {name: job.id for name, job in jobs.items()}
        await env.store.complete_jobs(q, [Completion(ids[n], "t", "1") for n in ("c0", "c1")], now)
        await env.store.fail_jobs(q, [Failure(ids[n], "t", "broke") for n in ("f0", "f1")], now)
        counts = await env.queue(q).get_job_counts()
        assert (counts["completed"], counts["failed"]) == (1, 1)

    async def test_dag_is_written_all_or_nothing(self, env: Harness) -> None:
        queue, other = env.name("atomic"), env.name("atomic-other")
        taken = await env.queue(other).add("taken", None, {"job_id": "taken-id"})
        # The error names the job and its queue (quoted as the store quotes them).
        with pytest.raises(DuplicateJobError, match=rf"taken-id.*in queue .{re.escape(other)}."):
            await env.flow.add_dag(
                [
                    {"id": "first", "name": "first", "queue_name": queue},
                    {
                        "id": "second",
                        "name": "second",
                        "queue_name": queue,
                        "depends_on": ["first"],
                    },
                    {
                        "id": "clash",
                        "name": "clash",
                        "queue_name": other,
                        "opts": {"job_id": "taken-id"},
                        "depends_on": ["second"],
                    },
                ]
            )
        assert await env.total(queue) == 0
        assert await env.total(other) == 1
        assert await env.reread(taken) is not None
        # The same id in another queue is no clash: ids are unique per queue.
        jobs = await env.flow.add_dag(
            [{"id": "same", "name": "same", "queue_name": queue, "opts": {"job_id": "taken-id"}}]
        )
        assert jobs["same"].id == "taken-id" and await env.total(queue) == 1

    async def test_dag_a_lifo_node_is_taken_first(self, env: Harness) -> None:
        q = env.name("dag-lifo")
        await env.queue(q).add("before", None)
        await env.flow.add_dag(
            [
                {"id": "fifo", "name": "fifo", "queue_name": q},
                {"id": "lifo", "name": "lifo", "queue_name": q, "opts": {"lifo": True}},
                {"id": "later", "name": "later", "queue_name": q, "opts": {"delay": 60}},
            ]
        )
        now = time.time()
        taken = await env.store.take_jobs(q, limit=5, token="t", lock_until=now + 60, now=now)
        assert [job.name for job in taken.jobs] == ["lifo", "before", "fifo"]

    async def test_dag_dependencies_on_jobs_already_in_the_store(self, env: Harness) -> None:
        old_q, new_q, tree_q = env.name("old"), env.name("new"), env.name("tree")
        done = await env.queue(old_q).add("done", {"n": 1})
        broken = await env.queue(old_q).add("broken", None)
        async with env.workers({old_q: Runs().handler(fail={"broken"})}):
            await env.wait_finished(done, broken)
        # A job that already waits in a tree gets a second dependent.
        tree = await env.flow.add(
            {
                "name": "tree-parent",
                "queue_name": tree_q,
                "children": [{"name": "later", "queue_name": old_q}],
            }
        )
        later = tree.children[0].job
        # The job resolved at once is not the DAG's first.
        seen: list[QueueEvent] = []
        async with QueueEvents(new_q, store=env.event_store) as listener:
            listener.on("*", seen.append)
            jobs = await env.flow.add_dag(
                [
                    {
                        "id": "on-both",
                        "name": "on-both",
                        "queue_name": new_q,
                        "depends_on": [f"{old_q}/{done.id}", f"{old_q}/{later.id}"],
                    },
                    {
                        "id": "on-done",
                        "name": "on-done",
                        "queue_name": new_q,
                        "depends_on": [f"{old_q}/{done.id}"],
                    },
                    {
                        "id": "on-later",
                        "name": "on-later",
                        "queue_name": new_q,
                        "depends_on": [f"{old_q}/{later.id}"],
                    },
                ]
            )
            await env.wait_seen(
                seen,
                lambda e: e.type == "waiting" and e.job_id == jobs["on-done"].id,
                "the waiting event of the job released at once",
            )
        assert [e.type for e in seen if e.job_id == jobs["on-done"].id] == [
            "added",
            "waiting-children",
            "waiting",
        ]
        # A completed job resolves at once, with its value.
        on_done = await env.wait_state(jobs["on-done"], WAITING)
        assert await on_done.get_children_values() == {done.id: {"done": "done"}}
        on_both = await env.reread(jobs["on-both"])
        assert on_both is not None and on_both.state is WAITING_CHILDREN
        # ... and is counted as processed from the start.
        counts = await on_done.get_dependency_counts()
        assert (counts.processed, counts.unprocessed, counts.total) == (1, 0, 1)
        counts = await on_both.get_dependency_counts()
        assert (counts.processed, counts.unprocessed, counts.total) == (1, 1, 2)
        on_later = await env.reread(jobs["on-later"])
        assert on_later is not None
        counts = await on_later.get_dependency_counts()
        assert (counts.processed, counts.unprocessed, counts.total) == (0, 1, 1)
        parents = await later.get_parents()
        assert [parent.id for parent in parents] == [
            tree.job.id,
            jobs["on-both"].id,
            jobs["on-later"].id,
        ]
        async with env.workers({old_q: Runs().handler()}):
            on_both = await env.wait_state(jobs["on-both"], WAITING)
        assert await on_both.get_children_values() == {
            done.id: {"done": "done"},
            later.id: {"done": "later"},
        }
        counts = await on_both.get_dependency_counts()
        assert (counts.processed, counts.unprocessed, counts.total) == (2, 0, 2)
        tree_parent = await env.wait_state(tree.job, WAITING)
        assert await tree_parent.get_children_values() == {later.id: {"done": "later"}}
        # A failed job is refused, a missing one too; nothing is written.
        with pytest.raises(InvalidJobStateError, match=rf"{broken.id}. of queue .{old_q}."):
            await env.flow.add_dag(
                [
                    {
                        "id": "x",
                        "name": "x",
                        "queue_name": new_q,
                        "depends_on": [f"{old_q}/{broken.id}"],
                    }
                ]
            )
        with pytest.raises(JobNotFoundError) as missing:
            await env.flow.add_dag(
                [{"id": "y", "name": "y", "queue_name": new_q, "depends_on": [f"{old_q}/missing"]}]
            )
        assert (missing.value.queue, missing.value.job_id) == (old_q, "missing")
        assert await env.total(new_q) == 3

    async def test_dag_a_shared_job_fails_with_parent_failed_only_when_every_dependent_failed(
        self, env: Harness
    ) -> None:
        top, first_q, second_q, idle = (
            env.name("top"),
            env.name("first"),
            env.name("second"),
            env.name("idle"),
        )
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": idle},
                {"id": "only-a", "name": "only-a", "queue_name": idle},
                {"id": "only-b", "name": "only-b", "queue_name": idle},
                {"id": "bad-a", "name": "bad-a", "queue_name": first_q},
                {"id": "bad-b", "name": "bad-b", "queue_name": second_q},
                {
                    "id": "a",
                    "name": "a",
                    "queue_name": top,
                    "depends_on": ["bad-a", "shared", "only-a"],
                },
                # A job of the shared job's queue fails first: that does not count as
                # the shared job having failed already.
                {
                    "id": "b",
                    "name": "b",
                    "queue_name": top,
                    "depends_on": ["bad-b", "only-b", "shared"],
                },
            ]
        )
        async with env.workers({first_q: Runs().handler(fail={"bad-a"})}):
            a = await env.wait_state(jobs["a"], FAILED)
        bad_a = await env.reread(jobs["bad-a"])
        assert bad_a is not None and bad_a.failed_reason is not None
        assert a.failed_reason == child_failed_reason(bad_a.id, bad_a.failed_reason)
        only_a = await env.reread(jobs["only-a"])
        assert only_a is not None and only_a.state is FAILED
        assert only_a.failed_reason == PARENT_FAILED_REASON
        shared = await env.reread(jobs["shared"])
        assert shared is not None and shared.state is WAITING, "b still needs it"
        assert await env.state(jobs["b"]) is WAITING_CHILDREN
        assert (await jobs["b"].get_dependency_counts()).unprocessed == 3

        async with env.workers({second_q: Runs().handler(fail={"bad-b"})}):
            await env.wait_state(jobs["b"], FAILED)
        for name in ("only-b", "shared"):
            job = await env.reread(jobs[name])
            assert job is not None and job.state is FAILED, name
            assert job.failed_reason == PARENT_FAILED_REASON, name

    async def test_dag_a_shared_job_fails_with_its_last_dependent_whatever_other_queues_hold(
        self, env: Harness
    ) -> None:
        top, bad_q, idle, other = (
            env.name("top"),
            env.name("bad"),
            env.name("idle"),
            env.name("other"),
        )
        jobs = await env.flow.add_dag(
            [
                {"id": "bad", "name": "bad", "queue_name": bad_q},
                # A job of another queue with the shared job's id, failed first in the
                # same walk: it is not the shared job.
                {"id": "twin", "name": "twin", "queue_name": other, "opts": {"job_id": "x"}},
                {"id": "shared", "name": "shared", "queue_name": idle, "opts": {"job_id": "x"}},
                {"id": "mid", "name": "mid", "queue_name": top, "depends_on": ["shared"]},
                {
                    "id": "root",
                    "name": "root",
                    "queue_name": top,
                    "depends_on": ["bad", "twin", "mid", "shared"],
                },
            ]
        )
        async with env.workers({bad_q: Runs().handler(fail={"bad"})}):
            await env.wait_state(jobs["root"], FAILED)
        for name in ("twin", "mid", "shared"):
            job = await env.reread(jobs[name])
            assert job is not None and job.state is FAILED, name
            assert job.failed_reason == PARENT_FAILED_REASON, name

    async def test_dag_a_shared_job_fails_once_its_dependents_fail_whatever_else_they_wait_for(
        self, env: Harness
    ) -> None:
        # "m1" and "m2" share "shared"; "m1" waits for "other" of the same queue after it.
        # "root" fails, so they fail, and with them every job they alone wait for.
        top, bad_q, mid, idle = (env.name(n) for n in ("top", "bad", "mid", "idle"))
        jobs = await env.flow.add_dag(
            [
                {"id": "bad", "name": "bad", "queue_name": bad_q},
                {"id": "shared", "name": "shared", "queue_name": idle},
                {"id": "other", "name": "other", "queue_name": idle},
                {"id": "m1", "name": "m1", "queue_name": mid, "depends_on": ["shared", "other"]},
                {"id": "m2", "name": "m2", "queue_name": mid, "depends_on": ["shared"]},
                {
                    "id": "root",
                    "name": "root",
                    "queue_name": top,
                    "depends_on": ["bad", "m1", "m2"],
                },
            ]
        )
        async with env.workers({bad_q: Runs().handler(fail={"bad"})}):
            await env.wait_state(jobs["root"], FAILED)
        for name in ("m1", "m2", "shared", "other"):
            job = await env.reread(jobs[name])
            assert job is not None and job.state is FAILED, name
            assert job.failed_reason == PARENT_FAILED_REASON, name

    async def test_dag_a_job_whose_other_dependent_was_removed_fails_with_the_last_one(
        self, env: Harness
    ) -> None:
        top, bad_q, idle = env.name("top"), env.name("bad"), env.name("idle")
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": idle},
                {"id": "bad", "name": "bad", "queue_name": bad_q},
                {"id": "gone", "name": "gone", "queue_name": top, "depends_on": ["shared"]},
                {"id": "a", "name": "a", "queue_name": top, "depends_on": ["bad", "shared"]},
            ]
        )
        await jobs["gone"].remove()
        assert await env.state(jobs["shared"]) is WAITING, "a still needs it"
        async with env.workers({bad_q: Runs().handler(fail={"bad"})}):
            await env.wait_state(jobs["a"], FAILED)
        shared = await env.wait_state(jobs["shared"], FAILED)
        assert shared.failed_reason == PARENT_FAILED_REASON

    async def test_dag_policies_apply_per_edge(self, env: Harness) -> None:
        bad_q, top, idle = env.name("bad"), env.name("top"), env.name("idle")
        jobs = await env.flow.add_dag(
            [
                {"id": "bad", "name": "bad", "queue_name": bad_q},
                {"id": "hold", "name": "hold", "queue_name": idle},
                {
                    "id": "ignoring",
                    "name": "ignoring",
                    "queue_name": top,
                    "opts": {"fail_parent_on_child_failure": "ignore"},
                    "depends_on": ["bad"],
                },
                {
                    "id": "failing",
                    "name": "failing",
                    "queue_name": top,
                    "depends_on": ["bad", "hold"],
                },
                {
                    "id": "removing",
                    "name": "removing",
                    "queue_name": top,
                    "opts": {"fail_parent_on_child_failure": "remove"},
                    "depends_on": ["bad"],
                },
            ]
        )
        seen: list[QueueEvent] = []
        async with QueueEvents(top, store=env.event_store) as listener:
            listener.on("*", seen.append)
            async with env.workers({bad_q: Runs().handler(fail={"bad"})}):
                await env.wait_state(jobs["bad"], FAILED)
            await env.wait_seen(
                seen,
                lambda e: e.type == "removed" and e.job_id == jobs["removing"].id,
                "the removed event of the removing dependent",
            )
        # Each dependent's outcome is published once, whatever the links after it do.
        released = [e for e in seen if e.type == "waiting" and e.job_id == jobs["ignoring"].id]
        assert len(released) == 1, seen
        ignoring = await env.wait_state(jobs["ignoring"], WAITING)
        assert list(await ignoring.get_ignored_children_failures()) == [jobs["bad"].id]
        failing = await env.wait_state(jobs["failing"], FAILED)
        assert failing.failed_reason is not None
        assert failing.failed_reason.startswith(f"child {jobs['bad'].id} failed")
        hold = await env.reread(jobs["hold"])
        assert hold is not None and hold.failed_reason == PARENT_FAILED_REASON
        assert await env.reread(jobs["removing"]) is None

    async def test_dag_a_shared_job_is_removed_only_when_no_remaining_job_depends_on_it(
        self, env: Harness
    ) -> None:
        bad_q, top, idle = env.name("bad"), env.name("top"), env.name("idle")
        jobs = await env.flow.add_dag(
            [
                {"id": "bad", "name": "bad", "queue_name": bad_q},
                {"id": "shared", "name": "shared", "queue_name": idle},
                {"id": "own", "name": "own", "queue_name": idle},
                {"id": "deep", "name": "deep", "queue_name": idle},
                {"id": "mid", "name": "mid", "queue_name": idle, "depends_on": ["deep", "shared"]},
                {
                    "id": "removing",
                    "name": "removing",
                    "queue_name": top,
                    "opts": {"fail_parent_on_child_failure": "remove"},
                    "depends_on": ["bad", "shared", "own", "mid"],
                },
                {"id": "keeper", "name": "keeper", "queue_name": top, "depends_on": ["shared"]},
            ]
        )
        async with env.workers({bad_q: Runs().handler(fail={"bad"})}):
            await env.wait_state(jobs["bad"], FAILED)
        await env.wait_for(
            lambda: _gone(env, jobs["removing"]), "the dependent with the remove policy to go"
        )
        for name in ("own", "mid", "deep"):
            assert await env.reread(jobs[name]) is None, f"{name} must be removed"
        shared = await env.reread(jobs["shared"])
        assert shared is not None and shared.state is WAITING, "keeper still needs it"
        assert [p.id for p in await shared.get_parents()] == [jobs["keeper"].id]
        await jobs["keeper"].remove()
        assert await env.reread(jobs["shared"]) is None, "no job depends on it any more"

    async def test_dag_a_finished_dependent_no_longer_keeps_a_shared_job_from_removal(
        self, env: Harness
    ) -> None:
        # "early" starts when "going" fails (continue policy) and finishes, its
        # dependency on "shared" still pending; removing "removed", the one other job
        # that depends on "shared", removes "shared" too, whether "early" completed or failed.
        for end in ("completed", "failed"):
            bad_q, top, idle = env.name(f"bad-{end}"), env.name(f"top-{end}"), env.name("idle")
            going = {"continue_parent_on_failure": True}
            jobs = await env.flow.add_dag(
                [
                    {"id": "going", "name": "going", "queue_name": bad_q, "opts": going},
                    {"id": "shared", "name": "shared", "queue_name": idle},
                    {
                        "id": "early",
                        "name": "early",
                        "queue_name": top,
                        "depends_on": ["going", "shared"],
                    },
                    {
                        "id": "removed",
                        "name": "removed",
                        "queue_name": top,
                        "depends_on": ["shared"],
                    },
                ]
            )
            fail = {"going", "early"} if end == "failed" else {"going"}
            async with env.workers(
                {bad_q: Runs().handler(fail=fail), top: Runs().handler(fail=fail)}
            ):
                await env.wait_state(jobs["early"], JobState(end))
            assert await env.state(jobs["shared"]) is WAITING, end
            await jobs["removed"].remove()
            assert await env.reread(jobs["shared"]) is None, f"its other dependent {end}"
            assert await env.state(jobs["early"]) is JobState(end)

    async def test_dag_drop_and_continue_flags_apply_to_every_dependent(self, env: Harness) -> None:
        bad_q, top, idle = env.name("bad"), env.name("top"), env.name("idle")
        jobs = await env.flow.add_dag(
            [
                {
                    "id": "dropped",
                    "name": "dropped",
                    "queue_name": bad_q,
                    "opts": {"remove_dependency_on_failure": True},
                },
                {
                    "id": "going-on",
                    "name": "going-on",
                    "queue_name": bad_q,
                    "opts": {"continue_parent_on_failure": True},
                },
                {"id": "hold", "name": "hold", "queue_name": idle},
                {"id": "p1", "name": "p1", "queue_name": top, "depends_on": ["dropped"]},
                {"id": "p2", "name": "p2", "queue_name": top, "depends_on": ["dropped"]},
                {"id": "c1", "name": "c1", "queue_name": top, "depends_on": ["going-on", "hold"]},
                {"id": "c2", "name": "c2", "queue_name": top, "depends_on": ["going-on", "hold"]},
            ]
        )
        async with env.workers({bad_q: Runs().handler(fail={"dropped", "going-on"})}):
            await env.wait_finished(jobs["dropped"], jobs["going-on"])
        for name in ("p1", "p2"):
            dependent = await env.wait_state(jobs[name], WAITING)
            deps = await dependent.get_dependencies()
            assert not deps.failed and not deps.processed and not deps.unprocessed, name
        for name in ("c1", "c2"):
            dependent = await env.wait_state(jobs[name], WAITING)
            deps = await dependent.get_dependencies()
            assert list(deps.failed) == [jobs["going-on"].id], name
            assert deps.unprocessed == [jobs["hold"].id], name

    async def test_dag_retrying_a_shared_job_puts_it_back_in_each_unfinished_dependent(
        self, env: Harness
    ) -> None:
        shared_q, top, idle = env.name("shared"), env.name("top"), env.name("idle")
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": shared_q},
                {"id": "hold", "name": "hold", "queue_name": idle},
                {
                    "id": "p1",
                    "name": "p1",
                    "queue_name": top,
                    "opts": {"fail_parent_on_child_failure": "ignore"},
                    "depends_on": ["shared", "hold"],
                },
                {
                    "id": "p2",
                    "name": "p2",
                    "queue_name": top,
                    "opts": {"fail_parent_on_child_failure": "ignore"},
                    "depends_on": ["shared"],
                },
            ]
        )
        flaky = {"fail": True}

        async def handle(job: Job) -> Any:
            if flaky["fail"]:
                raise RuntimeError("not yet")
            return "second try"

        async with env.workers({shared_q: handle}):
            shared = await env.wait_state(jobs["shared"], FAILED)
        await env.wait_state(jobs["p2"], WAITING)
        assert (await jobs["p1"].get_dependency_counts()).ignored == 1
        flaky["fail"] = False
        await shared.retry()
        assert (await jobs["p1"].get_dependency_counts()).unprocessed == 2
        # p2 was released (waiting, not started): it goes back to waiting for it.
        p2 = await env.wait_state(jobs["p2"], WAITING_CHILDREN)
        assert (await p2.get_dependency_counts()).unprocessed == 1
        async with env.workers({shared_q: handle}):
            await env.wait_state(jobs["shared"], COMPLETED)
        p2 = await env.wait_state(jobs["p2"], WAITING)
        assert await p2.get_children_values() == {jobs["shared"].id: "second try"}
        p1 = await env.reread(jobs["p1"])
        assert p1 is not None and p1.state is WAITING_CHILDREN
        assert await p1.get_children_values() == {jobs["shared"].id: "second try"}

    async def test_dag_concurrent_completions_release_each_dependent_exactly_once(
        self, env: Harness
    ) -> None:
        layer_q, sink_q = env.name("layer"), env.name("sink")
        width = 12
        nodes: list[dict[str, Any]] = [{"id": "source", "name": "source", "queue_name": layer_q}]
        for index in range(width):
            nodes.append(
                {
                    "id": f"m{index}",
                    "name": f"m{index}",
                    "queue_name": layer_q,
                    "depends_on": ["source"],
                }
            )
        middle = [f"m{index}" for index in range(width)]
        nodes.append({"id": "all", "name": "all", "queue_name": sink_q, "depends_on": middle})
        nodes.append(
            {"id": "evens", "name": "evens", "queue_name": sink_q, "depends_on": middle[::2]}
        )
        nodes.append(
            {"id": "odds", "name": "odds", "queue_name": sink_q, "depends_on": middle[1::2]}
        )
        jobs = await env.flow.add_dag(nodes)
        runs = Runs()
        handler = runs.handler()
        async with (
            env.workers({layer_q: handler, sink_q: handler}, concurrency=8),
            env.workers({layer_q: handler}, store=env.second_store, concurrency=8),
        ):
            await env.wait_finished(jobs["all"], jobs["evens"], jobs["odds"])
        for sink, members in (("all", middle), ("evens", middle[::2]), ("odds", middle[1::2])):
            job = await env.reread(jobs[sink])
            assert job is not None and job.state is COMPLETED, sink
            assert runs.count(jobs[sink]) == 1, sink
            values = await job.get_children_values()
            assert values == {jobs[name].id: {"done": name} for name in members}, sink
        assert all(count == 1 for count in runs.ids.values()), runs.ids

    async def test_dag_get_flow_shows_a_shared_job_once(self, env: Harness) -> None:
        queue = env.name("drawn")
        jobs = await env.flow.add_dag(
            [
                {"id": "base", "name": "base", "queue_name": queue},
                {"id": "left", "name": "left", "queue_name": queue, "depends_on": ["base"]},
                {"id": "right", "name": "right", "queue_name": queue, "depends_on": ["base"]},
                {"id": "top", "name": "top", "queue_name": queue, "depends_on": ["left", "right"]},
            ]
        )
        tree = await env.flow.get_flow(jobs["top"].id, queue)
        assert tree is not None
        names = [node.job.name for node in tree.walk()]
        assert sorted(names) == ["base", "base", "left", "right", "top"]
        bases = [node for node in tree.walk() if node.job.name == "base"]
        assert sorted(node.shown_elsewhere for node in bases) == [False, True]
        assert all(not node.children for node in bases)

    async def test_dag_removing_a_shared_job_resolves_it_in_every_dependent(
        self, env: Harness
    ) -> None:
        queue = env.name("resolve")
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": queue, "opts": {"job_id": "s"}},
                {"id": "p1", "name": "p1", "queue_name": queue, "depends_on": ["shared"]},
                {"id": "p2", "name": "p2", "queue_name": queue, "depends_on": ["shared"]},
            ]
        )
        await jobs["shared"].remove()
        for name in ("p1", "p2"):
            dependent = await env.wait_state(jobs[name], WAITING)
            assert await dependent.get_children_values() == {}
        # A new job with the removed one's id has no parent.
        again = await env.queue(queue).add("shared", None, {"job_id": "s"})
        assert await again.get_parents() == []

    async def test_dag_removing_a_diamond_removes_its_shared_job_once(self, env: Harness) -> None:
        q = env.name("diamond-remove")
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": q},
                {"id": "left", "name": "left", "queue_name": q, "depends_on": ["shared"]},
                {"id": "right", "name": "right", "queue_name": q, "depends_on": ["shared"]},
                {"id": "sink", "name": "sink", "queue_name": q, "depends_on": ["left", "right"]},
            ]
        )
        removed = await _removed_by(env, jobs["sink"])
        assert sorted(removed) == sorted(
            jobs[name].id for name in ("shared", "left", "right", "sink")
        )
        assert await env.queue(q).get_job_counts() == {
            **dict.fromkeys([state.value for state in JobState], 0),
            "waiting": 1,
        }

    async def test_dag_a_removal_looks_below_each_finished_dependency(self, env: Harness) -> None:
        # Three jobs "top" waits for started early (continue policy) and completed, each
        # with a dependency of its own still pending: two share a queue, two an id.
        qx, qa, qb = env.name("below-x"), env.name("below-a"), env.name("below-b")
        idle, top = env.name("below-idle"), env.name("below-top")
        places = {"a1": (qa, "early"), "b1": (qb, "early"), "a2": (qa, "early-2")}
        spec: list[dict[str, Any]] = [{"id": "top", "name": "top", "queue_name": top}]
        going = {"continue_parent_on_failure": True}
        for key, (queue, job_id) in places.items():
            spec += [
                {"id": f"broken-{key}", "name": "broken", "queue_name": qx, "opts": going},
                {"id": f"pending-{key}", "name": "pending", "queue_name": idle},
                {
                    "id": key,
                    "name": "early",
                    "queue_name": queue,
                    "opts": {"job_id": job_id},
                    "depends_on": [f"broken-{key}", f"pending-{key}"],
                },
            ]
        spec[0]["depends_on"] = list(places)
        jobs = await env.flow.add_dag(spec)
        handlers = {qx: Runs().handler(fail={"broken"}), qa: Runs().handler()}
        async with env.workers({**handlers, qb: Runs().handler()}):
            for key in places:
                await env.wait_state(jobs[key], COMPLETED)
        await jobs["top"].remove()
        for key in places:
            assert await env.reread(jobs[f"pending-{key}"]) is None, key
            assert await env.state(jobs[key]) is COMPLETED, key

    async def test_dag_a_job_reached_twice_in_one_removal_is_removed_once(
        self, env: Harness
    ) -> None:
        # "top" waits for "shared" and "early"; so did "early", which started when
        # "broken" failed (continue policy) and completed. Removing "top" reaches
        # "shared" from "top" and again below "early", which stays.
        q, qx, qe = env.name("twice"), env.name("twice-x"), env.name("twice-e")
        jobs = await env.flow.add_dag(
            [
                {"id": "leaf", "name": "leaf", "queue_name": q},
                {"id": "shared", "name": "shared", "queue_name": q, "depends_on": ["leaf"]},
                {
                    "id": "broken",
                    "name": "broken",
                    "queue_name": qx,
                    "opts": {"continue_parent_on_failure": True},
                },
                {
                    "id": "early",
                    "name": "early",
                    "queue_name": qe,
                    "depends_on": ["shared", "broken"],
                },
                {"id": "top", "name": "top", "queue_name": q, "depends_on": ["shared", "early"]},
            ]
        )
        async with env.workers({qx: Runs().handler(fail={"broken"}), qe: Runs().handler()}):
            await env.wait_state(jobs["early"], COMPLETED)
        assert await env.state(jobs["shared"]) is WAITING_CHILDREN
        assert await env.state(jobs["top"]) is WAITING_CHILDREN
        removed = await _removed_by(env, jobs["top"])
        assert sorted(removed) == sorted(jobs[name].id for name in ("leaf", "shared", "top"))
        assert await env.reread(jobs["shared"]) is None
        assert await env.state(jobs["early"]) is COMPLETED


async def _removed_by(env: Harness, job: Job) -> list[str]:
    """Remove ``job``; the ids of the ``removed`` events of its queue that the removal
    published. Events come in order: those of the removal come before the ``added``
    event of a marker job added after it."""
    removed: list[str] = []
    async with QueueEvents(job.queue_name, store=env.second_store) as listener:

        def note(event: QueueEvent) -> None:
            if event.type == "removed" and event.job_id is not None:
                removed.append(event.job_id)
            elif event.type == "added":
                removed.append("marker")

        listener.on("removed", note)
        listener.on("added", note)
        await job.remove()
        await env.queue(job.queue_name).add("marker", None)
        await env.wait_for(lambda: _arrived(removed, "marker"), "the events of the removal")
    return removed[: removed.index("marker")]


async def _gone(env: Harness, job: Job) -> bool:
    return await env.reread(job) is None


__all__ = ["DagTests"]
