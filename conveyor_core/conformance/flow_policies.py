"""Flow failure semantics (docs/flows.md): every policy, overrides, retries, resolution."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from conveyor_core import Job, JobState, QueueEvent, QueueEvents
from conveyor_core.store import PARENT_FAILED_REASON, Completion, Failure, child_failed_reason

from ._support import Harness, Runs, nodes_by_name, take_ids

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING = JobState.WAITING
WAITING_CHILDREN = JobState.WAITING_CHILDREN
ACTIVE = JobState.ACTIVE
_IGNORE = "ignore_dependency_on_failure"
_CONTINUE = "continue_parent_on_failure"


async def _released_early(
    env: Harness, parent_q: str, child_q: str, later_q: str, name: str = "parent", **opts: Any
) -> dict[str, Job]:
    """A flow whose parent ``name`` has a child "bad" in ``child_q`` that releases it at
    once if it fails (``continue``) and a child "later" in ``later_q`` under the default
    ``fail``; its jobs by name."""
    node = await env.flow.add(
        {
            "name": name,
            "queue_name": parent_q,
            "opts": opts,
            "children": [
                {
                    "name": "bad",
                    "queue_name": child_q,
                    "opts": {"continue_parent_on_failure": True},
                },
                {"name": "later", "queue_name": later_q},
            ],
        }
    )
    return nodes_by_name(node)


async def _report(job: Job) -> dict[str, Any]:
    """What a parent saw of its children when it ran."""
    deps = await job.get_dependencies()
    return {
        "values": await job.get_children_values(),
        "ignored": await job.get_ignored_children_failures(),
        "failed": deps.failed,
        "unprocessed": deps.unprocessed,
    }


class FlowPolicyTests:
    """What a child's final failure does to its parent, its siblings and the root."""

    async def test_fail_policy_fails_parent_naming_child_and_cascades_to_root(
        self, env: Harness
    ) -> None:
        top, middle, bottom = env.name("top"), env.name("middle"), env.name("bottom")
        node = await env.flow.add(
            {
                "name": "root",
                "queue_name": top,
                "children": [
                    {
                        "name": "middle",
                        "queue_name": middle,
                        "children": [
                            {
                                "name": "leaf",
                                "queue_name": bottom,
                                "opts": {"attempts": 2, "backoff": 0.01},
                            }
                        ],
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        handler = runs.handler(fail={"leaf"})
        async with env.workers({top: handler, middle: handler, bottom: handler}):
            root = await env.wait_state(jobs["root"], FAILED)
        leaf = await env.wait_state(jobs["leaf"], FAILED)
        mid = await env.wait_state(jobs["middle"], FAILED)
        assert leaf.attempts_made == 2
        assert leaf.failed_reason is not None and "leaf broke" in leaf.failed_reason
        assert mid.failed_reason == child_failed_reason(leaf.id, leaf.failed_reason)
        assert root.failed_reason == child_failed_reason(mid.id, mid.failed_reason)
        assert runs.order == ["leaf", "leaf"], "parents of a failed child must never run"

    async def test_fail_policy_stops_unstarted_siblings_and_lets_running_ones_finish(
        self, env: Harness
    ) -> None:
        parent_q, fast_q, slow_q, idle_q = (
            env.name("parent"),
            env.name("fast"),
            env.name("slow"),
            env.name("idle"),
        )
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "failing", "queue_name": fast_q},
                    {"name": "running", "queue_name": slow_q},
                    {"name": "unstarted", "queue_name": idle_q},
                    {
                        "name": "unstarted-branch",
                        "queue_name": idle_q,
                        "children": [{"name": "unstarted-leaf", "queue_name": idle_q}],
                    },
                ],
            }
        )
        jobs = nodes_by_name(node)
        started, release = anyio.Event(), anyio.Event()

        async def slow(job: Job) -> str:
            started.set()
            await release.wait()
            return "late"

        runs = Runs()
        async with env.workers({slow_q: slow}):
            try:
                with anyio.fail_after(env.timeout):
                    await started.wait()
                async with env.workers(
                    {fast_q: runs.handler(fail={"failing"}), parent_q: runs.handler()}
                ):
                    parent = await env.wait_state(jobs["parent"], FAILED)
                    failing = await env.wait_state(jobs["failing"], FAILED)
                    assert failing.failed_reason is not None
                    assert parent.failed_reason == child_failed_reason(
                        failing.id, failing.failed_reason
                    )
                    for name in ("unstarted", "unstarted-branch", "unstarted-leaf"):
                        sibling = await env.reread(jobs[name])
                        assert sibling is not None, f"{name} must be kept, failed"
                        assert sibling.state is FAILED, f"{name} is {sibling.state}"
                        assert sibling.failed_reason == PARENT_FAILED_REASON
                    assert await env.state(jobs["running"]) is ACTIVE
            finally:
                release.set()  # before the workers close, which waits for the handler
            running = await env.wait_state(jobs["running"], COMPLETED)
        assert running.return_value == "late"
        after = await env.reread(jobs["parent"])
        assert after is not None and after.state is FAILED
        assert after.failed_reason == parent.failed_reason, "a late sibling changes nothing"
        assert "parent" not in runs.order

    async def test_ignore_policy_runs_parent_and_lists_the_failure(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "opts": {"fail_parent_on_child_failure": "ignore"},
                "children": [
                    {"name": "bad", "queue_name": child_q},
                    {"name": "good", "queue_name": child_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        async with env.workers({child_q: runs.handler(fail={"bad"}), parent_q: _report}):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        bad = await env.wait_state(jobs["bad"], FAILED)
        seen = parent.return_value
        assert seen["values"] == {jobs["good"].id: {"done": "good"}}
        assert list(seen["ignored"]) == [bad.id]
        assert "bad broke" in seen["ignored"][bad.id]
        assert await jobs["parent"].get_ignored_children_failures() == seen["ignored"]

    async def test_remove_policy_removes_parent_and_unfinished_descendants(
        self, env: Harness
    ) -> None:
        top_q, parent_q, child_q, idle_q = (
            env.name("top"),
            env.name("parent"),
            env.name("child"),
            env.name("idle"),
        )
        node = await env.flow.add(
            {
                "name": "grandparent",
                "queue_name": top_q,
                "children": [
                    {
                        "name": "parent",
                        "queue_name": parent_q,
                        "opts": {"fail_parent_on_child_failure": "remove"},
                        "children": [
                            {"name": "bad", "queue_name": child_q},
                            {"name": "idle", "queue_name": idle_q},
                            {
                                "name": "idle-branch",
                                "queue_name": idle_q,
                                "children": [{"name": "idle-leaf", "queue_name": idle_q}],
                            },
                        ],
                    },
                    {"name": "uncle", "queue_name": child_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        handlers = {child_q: runs.handler(fail={"bad"}), top_q: _report, parent_q: _report}
        async with env.workers(handlers):
            grandparent = await env.wait_state(jobs["grandparent"], COMPLETED)
        for name in ("parent", "idle", "idle-branch", "idle-leaf"):
            assert await env.reread(jobs[name]) is None, f"{name} should have been removed"
        assert await env.state(jobs["bad"]) is FAILED, "a finished child is kept"
        assert grandparent.return_value["values"] == {jobs["uncle"].id: {"done": "uncle"}}
        assert grandparent.return_value["failed"] == {}
        assert "parent" not in runs.order

    async def test_removal_reaches_unfinished_jobs_below_a_finished_child(
        self, env: Harness
    ) -> None:
        top, middle, leaf, idle = (
            env.name("top"),
            env.name("middle"),
            env.name("leaf"),
            env.name("idle"),
        )
        node = await env.flow.add(
            {
                "name": "root",
                "queue_name": top,
                "children": [
                    {
                        "name": "middle",
                        "queue_name": middle,
                        "children": [
                            {
                                "name": "early",
                                "queue_name": leaf,
                                "opts": {"continue_parent_on_failure": True},
                            },
                            {"name": "late", "queue_name": idle},
                        ],
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        async with env.workers({leaf: runs.handler(fail={"early"}), middle: runs.handler()}):
            await env.wait_state(jobs["root"], WAITING)
        assert await env.state(jobs["middle"]) is COMPLETED
        assert await env.state(jobs["late"]) is WAITING, "no worker serves its queue"
        await jobs["root"].remove()
        assert await env.reread(jobs["root"]) is None
        assert await env.reread(jobs["late"]) is None, "unfinished under a finished child"
        assert await env.state(jobs["middle"]) is COMPLETED, "a finished child is kept"

    async def test_drop_policy_forgets_the_dependency(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {
                        "name": "optional",
                        "queue_name": child_q,
                        "opts": {"remove_dependency_on_failure": True},
                    },
                    {"name": "needed", "queue_name": child_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        async with env.workers({child_q: runs.handler(fail={"optional"}), parent_q: _report}):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        assert await env.state(jobs["optional"]) is FAILED
        seen = parent.return_value
        assert seen == {
            "values": {jobs["needed"].id: {"done": "needed"}},
            "ignored": {},
            "failed": {},
            "unprocessed": [],
        }
        deps = await env.store.get_dependencies(parent_q, parent.id)
        assert [dep.id for dep in deps] == [jobs["needed"].id], "no record of a dropped child"

    async def test_continue_policy_releases_parent_at_once_and_records_later_results(
        self, env: Harness
    ) -> None:
        parent_q, child_q, later_q = env.name("parent"), env.name("child"), env.name("later")
        jobs = await _released_early(env, parent_q, child_q, later_q)
        runs = Runs()
        async with env.workers({child_q: runs.handler(fail={"bad"}), parent_q: _report}):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        bad = await env.wait_state(jobs["bad"], FAILED)
        seen = parent.return_value
        assert seen["values"] == {}
        assert seen["unprocessed"] == [jobs["later"].id], "the parent ran with a child pending"
        assert seen["failed"] == {bad.id: bad.failed_reason}
        assert await env.state(jobs["later"]) is WAITING

        async with env.workers({later_q: runs.handler()}):
            await env.wait_state(jobs["later"], COMPLETED)
        assert await jobs["parent"].get_children_values() == {jobs["later"].id: {"done": "later"}}
        assert await env.state(jobs["parent"]) is COMPLETED
        assert runs.order.count("parent") == 0 and runs.order.count("later") == 1

    async def test_a_child_failing_after_its_released_parent_completed_leaves_it_completed(
        self, env: Harness
    ) -> None:
        parent_q, child_q, later_q = env.name("parent"), env.name("child"), env.name("later")
        jobs = await _released_early(env, parent_q, child_q, later_q)
        async with env.workers({child_q: Runs().handler(fail={"bad"}), parent_q: _report}):
            await env.wait_state(jobs["parent"], COMPLETED)
        # The other child fails by the "fail" policy, but its parent has finished.
        async with env.workers({later_q: Runs().handler(fail={"later"})}):
            await env.wait_state(jobs["later"], FAILED)
        parent = await env.reread(jobs["parent"])
        assert parent is not None and parent.state is COMPLETED
        assert parent.failed_reason is None

    async def test_a_released_parent_not_yet_run_fails_when_another_child_fails(
        self, env: Harness
    ) -> None:
        # Released early by a "continue" child, a parent still waiting (or delayed) is
        # failed by the next child that fails under "fail", publishes it, and its
        # retention applies.
        parent_q, child_q, later_q = env.name("parent"), env.name("child"), env.name("later")
        flows: dict[str, dict[str, Job]] = {}
        seen: list[QueueEvent] = []
        async with QueueEvents(parent_q, store=env.event_store) as listener:
            listener.on("*", seen.append)
            for name, opts in (
                ("waits", {}),
                ("delayed", {"delay": 3600}),
                ("gone", {"remove_on_fail": True}),
            ):
                flows[name] = await _released_early(env, parent_q, child_q, later_q, name, **opts)
            async with env.workers({child_q: Runs().handler(fail={"bad"})}):
                await env.wait_state(flows["waits"]["waits"], WAITING)
                await env.wait_state(flows["delayed"]["delayed"], JobState.DELAYED)
                await env.wait_state(flows["gone"]["gone"], WAITING)
            async with env.workers({later_q: Runs().handler(fail={"later"})}):
                for name in flows:
                    await env.wait_state(flows[name]["later"], FAILED)
            parent_ids = {flows[name][name].id for name in flows}

            async def all_failed() -> bool:
                return parent_ids <= {e.job_id for e in seen if e.type == "failed"}

            await env.wait_for(all_failed, "a failed event for each parent")
        for name in ("waits", "delayed"):
            parent = await env.reread(flows[name][name])
            assert parent is not None and parent.state is FAILED, name
            assert parent.failed_reason is not None
            assert parent.failed_reason.startswith(f"child {flows[name]['later'].id} failed")
        assert await env.reread(flows["gone"]["gone"]) is None, "removed on failure"
        for event in seen:
            if event.type == "failed":
                assert str(event.data.get("reason", "")).startswith("child "), event
        assert not any(e.type == "completed" for e in seen)

    async def test_child_flag_overrides_parent_policy(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        strict = nodes_by_name(
            await env.flow.add(
                {
                    "name": "lenient-parent",
                    "queue_name": parent_q,
                    "opts": {"fail_parent_on_child_failure": "ignore"},
                    "children": [
                        {
                            "name": "strict-child",
                            "queue_name": child_q,
                            "opts": {"fail_parent_on_failure": True},
                        },
                        {"name": "other-child", "queue_name": child_q},
                    ],
                }
            )
        )
        lenient = nodes_by_name(
            await env.flow.add(
                {
                    "name": "strict-parent",
                    "queue_name": parent_q,
                    "children": [
                        {
                            "name": "lenient-child",
                            "queue_name": child_q,
                            "opts": {"ignore_dependency_on_failure": True},
                        }
                    ],
                }
            )
        )
        runs = Runs()
        handlers = {
            child_q: runs.handler(fail={"strict-child", "lenient-child"}),
            parent_q: _report,
        }
        async with env.workers(handlers):
            failed_parent = await env.wait_state(strict["lenient-parent"], FAILED)
            ran_parent = await env.wait_state(lenient["strict-parent"], COMPLETED)
        child = await env.wait_state(strict["strict-child"], FAILED)
        assert failed_parent.failed_reason == child_failed_reason(
            child.id, child.failed_reason or ""
        )
        assert list(ran_parent.return_value["ignored"]) == [lenient["lenient-child"].id]

    async def test_retries_never_touch_the_parent(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {
                        "name": "flaky",
                        "queue_name": child_q,
                        "opts": {"attempts": 3, "backoff": {"type": "fixed", "delay": 0.01}},
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        parent_states: list[JobState] = []

        async def flaky(job: Job) -> str:
            parent = await job.get_parent()
            assert parent is not None
            parent_states.append(parent.state)
            if job.attempts_made < 2:
                raise RuntimeError(f"attempt {job.attempts_made + 1} broke")
            return "third time lucky"

        async with env.workers({child_q: flaky, parent_q: _report}):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        child = await env.wait_state(jobs["flaky"], COMPLETED)
        assert child.attempts_made == 3
        assert parent_states == [WAITING_CHILDREN] * 3
        assert parent.return_value["values"] == {child.id: "third time lucky"}
        assert parent.return_value["failed"] == {}

    async def test_children_values_survive_remove_on_complete(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {
                        "name": f"part-{i}",
                        "queue_name": child_q,
                        "data": {"i": i},
                        "opts": {"remove_on_complete": True},
                    }
                    for i in range(3)
                ],
            }
        )
        jobs = nodes_by_name(node)

        async def part(job: Job) -> int:
            return int(job.data["i"]) * 10

        async with env.workers({child_q: part, parent_q: _report}):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        expected = {jobs[f"part-{i}"].id: i * 10 for i in range(3)}
        assert parent.return_value["values"] == expected
        for i in range(3):
            assert await env.reread(jobs[f"part-{i}"]) is None, "remove_on_complete deletes"
        assert await jobs["parent"].get_children_values() == expected

    async def test_removing_a_pending_child_resolves_its_parent(self, env: Harness) -> None:
        parent_q, child_q, idle_q = env.name("parent"), env.name("child"), env.name("idle")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "done", "queue_name": child_q},
                    {"name": "abandoned", "queue_name": idle_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        async with env.workers({child_q: runs.handler(), parent_q: _report}):
            await env.wait_state(jobs["done"], COMPLETED)
            assert await env.state(jobs["parent"]) is WAITING_CHILDREN
            await jobs["abandoned"].remove()
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        assert parent.return_value["values"] == {jobs["done"].id: {"done": "done"}}
        assert parent.return_value["unprocessed"] == []
        assert await env.reread(jobs["abandoned"]) is None

    @pytest.mark.parametrize(
        "flag", ["ignore_dependency_on_failure", "remove_dependency_on_failure"]
    )
    async def test_retrying_a_failed_child_puts_the_dependency_back(
        self, env: Harness, flag: str
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [{"name": "flaky", "queue_name": child_q, "opts": {flag: True}}],
            }
        )
        jobs = nodes_by_name(node)
        tried: set[str] = set()

        async def fails_once(job: Job) -> str:
            if job.id not in tried:
                tried.add(job.id)
                raise RuntimeError("first run broke")
            return "fixed"

        async with env.workers({child_q: fails_once}):
            await env.wait_state(jobs["flaky"], FAILED)
        # Its only dependency resolved, so the parent was released (nobody runs it yet).
        assert await env.state(jobs["parent"]) is WAITING
        await jobs["flaky"].retry()
        assert await env.state(jobs["parent"]) is WAITING_CHILDREN
        deps = await env.store.get_dependencies(parent_q, jobs["parent"].id)
        assert [(dep.id, dep.status) for dep in deps] == [(jobs["flaky"].id, "pending")]

        async with env.workers({child_q: fails_once, parent_q: _report}):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
        assert parent.return_value["values"] == {jobs["flaky"].id: "fixed"}
        assert parent.return_value["ignored"] == {}
        assert parent.return_value["failed"] == {}

    async def test_parent_is_released_exactly_once(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        count = 30
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": f"part-{i}", "queue_name": child_q, "data": {"i": i}}
                    for i in range(count)
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()

        async def part(job: Job) -> int:
            runs.record(job)
            await anyio.lowlevel.checkpoint()
            return int(job.data["i"])

        async def parent_handler(job: Job) -> dict[str, Any]:
            runs.record(job)
            return await _report(job)

        async with (
            env.workers({child_q: part, parent_q: parent_handler}, concurrency=4),
            env.workers({child_q: part}, store=env.second_store, concurrency=4),
        ):
            parent = await env.wait_state(jobs["parent"], COMPLETED)
            await env.wait_count(child_q, COMPLETED, count)
        assert runs.count(parent) == 1
        assert parent.attempts_made == 1
        assert parent.return_value["values"] == {jobs[f"part-{i}"].id: i for i in range(count)}
        assert (await env.counts(parent_q))["completed"] == 1

    async def test_a_child_retried_after_its_parent_finished_completes_into_its_record(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("done-parent"), env.name("done-child")
        # A job of the parent's queue, written first, that has not run yet.
        idle = await env.queue(parent_q).add("idle", None, {"delay": 3600})
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "ignored", "queue_name": child_q, "opts": {_IGNORE: True}},
                    {"name": "going", "queue_name": child_q, "opts": {_CONTINUE: True}},
                ],
            }
        )
        jobs = nodes_by_name(node)
        kids = [jobs["ignored"].id, jobs["going"].id]
        now = time.time()
        assert await take_ids(env.store, child_q, now) == kids
        broke = [Failure(kid, "tok", "broke") for kid in kids]
        assert await env.store.fail_jobs(child_q, broke, now) == [True, True]
        assert await take_ids(env.store, parent_q, now) == [jobs["parent"].id]
        done = [Completion(jobs["parent"].id, "tok", "1")]
        assert await env.store.complete_jobs(parent_q, done, now) == [True]
        for kid in kids:
            await env.store.retry_job(child_q, kid, now)
        # The completed parent stays completed, its record as it was.
        assert await env.state(jobs["parent"]) is COMPLETED
        assert await env.state(idle) is JobState.DELAYED
        deps = await env.store.get_dependencies(parent_q, jobs["parent"].id)
        assert [(dep.id, dep.status) for dep in deps] == [(kids[0], "ignored"), (kids[1], "failed")]
        # Their second runs complete: the record takes their values.
        assert await take_ids(env.store, child_q, now) == kids
        values = [Completion(kid, "tok", f'"{n}"') for n, kid in enumerate(kids)]
        assert await env.store.complete_jobs(child_q, values, now) == [True, True]
        deps = await env.store.get_dependencies(parent_q, jobs["parent"].id)
        assert [(dep.id, dep.status, dep.value) for dep in deps] == [
            (kids[0], "processed", '"0"'),
            (kids[1], "processed", '"1"'),
        ]
        assert await env.state(jobs["parent"]) is COMPLETED

    async def test_retrying_a_child_puts_back_its_own_parent_only(self, env: Harness) -> None:
        parent_q, child_q = env.name("back-parent"), env.name("back-child")
        before = await env.queue(parent_q).add("before", None)
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [{"name": "child", "queue_name": child_q, "opts": {_IGNORE: True}}],
            }
        )
        after = await env.queue(parent_q).add("after", None)
        jobs = nodes_by_name(node)
        now = time.time()
        assert await take_ids(env.store, child_q, now) == [jobs["child"].id]
        broke = [Failure(jobs["child"].id, "tok", "broke")]
        assert await env.store.fail_jobs(child_q, broke, now) == [True]
        assert await env.state(jobs["parent"]) is WAITING
        await env.store.retry_job(child_q, jobs["child"].id, now)
        assert await env.state(jobs["parent"]) is WAITING_CHILDREN
        for job in (before, after):
            assert await env.state(job) is WAITING, job.name

    async def test_rerunning_a_finished_child_does_not_release_its_parent_again(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [{"name": "child", "queue_name": child_q}],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        handler = runs.handler(lambda job: runs.count(job))
        async with env.workers({parent_q: handler, child_q: handler}):
            await env.wait_state(jobs["parent"], COMPLETED)
            assert await env.queue(child_q).retry_jobs(COMPLETED) == 1

            async def ran_twice() -> bool:
                child = await env.reread(jobs["child"])
                return (
                    runs.count(jobs["child"]) == 2
                    and child is not None
                    and (child.state is COMPLETED)
                )

            await env.wait_for(ran_twice, "the child to run a second time")
        assert runs.count(jobs["parent"]) == 1
        parent = await env.reread(jobs["parent"])
        assert parent is not None and parent.state is COMPLETED and parent.attempts_made == 1
        assert (await env.counts(parent_q))["waiting"] == 0
