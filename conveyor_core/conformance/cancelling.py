"""Cancelling (docs/flows.md): a job and its unfinished descendants, running ones too."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from conveyor_core import Job, JobNotFoundError, JobState, QueueEvent, QueueEvents
from conveyor_core.store import (
    PARENT_FAILED_REASON,
    Completion,
    Failure,
    Release,
    child_failed_reason,
)

from ._support import Harness, Runs, nodes_by_name

ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
WAITING_CHILDREN = JobState.WAITING_CHILDREN


class _Hanging:
    """A handler that runs until it is cancelled, and remembers that it was."""

    def __init__(self, *, convert: bool = False) -> None:
        self.convert = convert
        """Turn the cancellation into an ordinary error, as careless handlers do."""
        self.started: dict[str, int] = {}
        self.cancelled: set[str] = set()
        self.running = anyio.Event()

    async def __call__(self, job: Job) -> Any:
        self.started[job.id] = self.started.get(job.id, 0) + 1
        self.running.set()
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            self.cancelled.add(job.id)
            if self.convert:
                raise RuntimeError("interrupted") from None
            raise
        return "never"


async def _order_flow(env: Harness) -> tuple[dict[str, Job], dict[str, str]]:
    """An order flow across four queues: order <- (payment, shipping <- packing)."""
    queues = {
        "order": env.name("orders"),
        "payment": env.name("payments"),
        "shipping": env.name("shipping"),
        "packing": env.name("packing"),
    }
    node = await env.flow.add(
        {
            "name": "order",
            "queue_name": queues["order"],
            "children": [
                {"name": "payment", "queue_name": queues["payment"], "opts": {"attempts": 3}},
                {
                    "name": "shipping",
                    "queue_name": queues["shipping"],
                    "opts": {"delay": 3600},
                    "children": [{"name": "packing", "queue_name": queues["packing"]}],
                },
            ],
        }
    )
    return nodes_by_name(node), queues


async def _take(env: Harness, queue: str, token: str, lock_for: float = 30.0) -> list[str]:
    now = time.time()
    taken = await env.store.take_jobs(
        queue, limit=10, token=token, lock_until=now + lock_for, now=now
    )
    return [record.id for record in taken.jobs]


class CancellingTests:
    """``job.cancel`` / ``flow.cancel``: what is cancelled, how, and what follows."""

    async def test_cancel_fails_every_unstarted_job_of_the_subtree_at_once(
        self, env: Harness
    ) -> None:
        jobs, _ = await _order_flow(env)
        count = await env.flow.cancel(jobs["order"].id, jobs["order"].queue_name, "out of stock")
        assert count == 4
        for name, job in jobs.items():
            now = await env.reread(job)
            assert now is not None, name
            assert now.state is FAILED, name
            assert now.failed_reason == "cancelled: out of stock", name
            assert now.finished_at is not None, name
        order = await env.reread(jobs["order"])
        assert order is not None
        deps = await order.get_dependencies()
        assert deps.failed == {
            jobs["payment"].id: "cancelled: out of stock",
            jobs["shipping"].id: "cancelled: out of stock",
        }
        assert deps.unprocessed == [] and deps.processed == {}
        counts = await order.get_dependency_counts()
        assert (counts.failed, counts.unprocessed, counts.total) == (2, 0, 2)

    @pytest.mark.parametrize("policy", ["fail", "ignore"])
    async def test_cancel_of_a_dag_job_reaches_a_shared_job_and_its_other_dependents_policy(
        self, env: Harness, policy: str
    ) -> None:
        q = env.name("dag")
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": q},
                {"id": "mine", "name": "mine", "queue_name": q, "depends_on": ["shared"]},
                {
                    "id": "theirs",
                    "name": "theirs",
                    "queue_name": q,
                    "depends_on": ["shared"],
                    "opts": {"fail_parent_on_child_failure": policy},
                },
            ]
        )
        # A DAG of the same queue sharing a job of its own, which the cancel leaves.
        other = await env.flow.add_dag(
            [
                {"id": "other-shared", "name": "other-shared", "queue_name": q},
                {"id": "x", "name": "x", "queue_name": q, "depends_on": ["other-shared"]},
                {"id": "y", "name": "y", "queue_name": q, "depends_on": ["other-shared"]},
            ]
        )
        assert await jobs["mine"].cancel("no longer needed") == 2
        assert await env.state(other["other-shared"]) is WAITING
        reason = "cancelled: no longer needed"
        for name in ("mine", "shared"):
            now = await env.reread(jobs[name])
            assert now is not None and now.state is FAILED, name
            assert now.failed_reason == reason, name
        theirs = await env.reread(jobs["theirs"])
        assert theirs is not None
        # The job outside the cancelled subtree no longer waits for the shared job: its
        # own policy for that dependency applies, as for any final failure.
        if policy == "fail":
            assert theirs.state is FAILED
            assert theirs.failed_reason == child_failed_reason(jobs["shared"].id, reason)
        else:
            assert theirs.state is WAITING
            assert (await theirs.get_dependencies()).ignored == {jobs["shared"].id: reason}

    async def test_cancel_of_a_dag_job_reaches_shared_jobs_delayed_or_waiting_for_children(
        self, env: Harness
    ) -> None:
        q = env.name("dag-states")
        jobs = await env.flow.add_dag(
            [
                {"id": "later", "name": "later", "queue_name": q, "opts": {"delay": 3600}},
                {"id": "leaf", "name": "leaf", "queue_name": q},
                {"id": "holder", "name": "holder", "queue_name": q, "depends_on": ["leaf"]},
                {"id": "mine", "name": "mine", "queue_name": q, "depends_on": ["later", "holder"]},
                {
                    "id": "theirs",
                    "name": "theirs",
                    "queue_name": q,
                    "depends_on": ["later", "holder"],
                    "opts": {"fail_parent_on_child_failure": "ignore"},
                },
            ]
        )
        assert await env.state(jobs["later"]) is DELAYED
        assert await env.state(jobs["holder"]) is WAITING_CHILDREN
        await jobs["mine"].cancel("stop")
        for name in ("mine", "later", "holder", "leaf"):
            assert await env.state(jobs[name]) is FAILED, name
        theirs = await env.reread(jobs["theirs"])
        assert theirs is not None and theirs.state is WAITING
        assert set((await theirs.get_dependencies()).ignored) == {
            jobs["later"].id,
            jobs["holder"].id,
        }

    async def test_a_cancelled_step_job_that_parks_fails_as_cancelled(self, env: Harness) -> None:
        q, parts, tops = env.name("steps"), env.name("parts"), env.name("tops")
        top = await env.flow.add(
            {"name": "top", "queue_name": tops, "children": [{"name": "step", "queue_name": q}]}
        )
        parent = top.children[0].job
        assert await _take(env, q, "tok") == [parent.id]
        child = await env.queue(parts).add(
            "part", None, opts={"parent": {"id": parent.id, "queue": q}}
        )
        assert await parent.cancel("stop") == 2
        # Its handler parks it before learning of the cancel: it fails, never waits.
        assert await env.store.park_job(q, parent.id, "tok", time.time()) is True
        now = await env.reread(parent)
        assert now is not None and now.state is FAILED
        assert now.failed_reason == "cancelled: stop"
        assert now.attempts_made == 0
        assert await env.state(child) is FAILED
        above = await env.reread(top.job)
        assert above is not None and above.state is FAILED, "its own parent applies its policy"

    async def test_cancel_without_reason_and_of_a_single_job(self, env: Harness) -> None:
        q = env.name("single")
        waiting = await env.queue(q).add("now", None)
        delayed = await env.queue(q).add("later", None, opts={"delay": 3600})
        assert await waiting.cancel() == 1
        assert await delayed.cancel("changed my mind") == 1
        first, second = await env.reread(waiting), await env.reread(delayed)
        assert first is not None and first.state is FAILED and first.failed_reason == "cancelled"
        assert second is not None and second.state is FAILED
        assert second.failed_reason == "cancelled: changed my mind"
        counts = await env.counts(q)
        assert counts["failed"] == 2 and counts["waiting"] == 0 and counts["delayed"] == 0
        # A parent of one child: its one dependency failed.
        node = await env.flow.add(
            {"name": "parent", "queue_name": q, "children": [{"name": "kid", "queue_name": q}]}
        )
        assert await node.job.cancel() == 2
        deps = await node.job.get_dependency_counts()
        assert (deps.failed, deps.unprocessed, deps.total) == (1, 0, 1)

    async def test_cancelling_a_child_fails_its_parent_by_the_default_policy(
        self, env: Harness
    ) -> None:
        jobs, _ = await _order_flow(env)
        count = await jobs["shipping"].cancel()
        assert count == 2
        shipping, packing = await env.reread(jobs["shipping"]), await env.reread(jobs["packing"])
        assert shipping is not None and shipping.failed_reason == "cancelled"
        assert packing is not None and packing.failed_reason == "cancelled"
        # The order applies its (default) fail policy to the cancelled shipping job: it
        # fails, and so does its unstarted payment, as by any child's final failure.
        order = await env.reread(jobs["order"])
        assert order is not None and order.state is FAILED
        assert order.failed_reason == child_failed_reason(shipping.id, "cancelled")
        payment = await env.reread(jobs["payment"])
        assert payment is not None and payment.failed_reason == PARENT_FAILED_REASON

    async def test_a_finished_job_is_not_cancelled_and_a_missing_one_is_an_error(
        self, env: Harness
    ) -> None:
        q = env.name("finished")
        job = await env.queue(q).add("done", None)
        async with env.workers({q: Runs().handler()}):
            await env.wait_state(job, COMPLETED)
        assert await job.cancel() == 0
        again = await env.reread(job)
        assert again is not None and again.state is COMPLETED
        assert again.return_value == {"done": "done"}
        with pytest.raises(JobNotFoundError):
            await env.flow.cancel("no-such-job", q)
        await job.remove()
        with pytest.raises(JobNotFoundError):
            await job.cancel()

    async def test_a_bad_reason_is_refused_before_anything_changes(self, env: Harness) -> None:
        q = env.name("bad-reason")
        job = await env.queue(q).add("x", None)
        with pytest.raises(TypeError, match="reason"):
            await job.cancel(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="reason"):
            await job.cancel("nul\x00inside")
        assert await env.state(job) is WAITING

    @pytest.mark.parametrize(
        ("opts", "parent_opts", "expected"),
        [
            ({}, {}, "fail"),
            ({"ignore_dependency_on_failure": True}, {}, "ignore"),
            ({"remove_dependency_on_failure": True}, {}, "drop"),
            ({"continue_parent_on_failure": True}, {}, "continue"),
            ({}, {"fail_parent_on_child_failure": "remove"}, "remove"),
        ],
    )
    async def test_the_parent_applies_its_policy_to_a_cancelled_child(
        self, env: Harness, opts: dict[str, Any], parent_opts: dict[str, Any], expected: str
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "opts": parent_opts,
                "children": [
                    {
                        "name": "doomed",
                        "queue_name": child_q,
                        "opts": opts,
                        "children": [{"name": "grandchild", "queue_name": child_q}],
                    },
                    {"name": "sibling", "queue_name": child_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert await jobs["doomed"].cancel("stop") == 2
        parent = await env.reread(jobs["parent"])
        sibling = await env.reread(jobs["sibling"])
        grandchild = await env.reread(jobs["grandchild"])
        assert grandchild is not None and grandchild.failed_reason == "cancelled: stop"
        if expected == "fail":
            assert parent is not None and parent.state is FAILED
            assert parent.failed_reason == child_failed_reason(jobs["doomed"].id, "cancelled: stop")
            assert sibling is not None and sibling.state is FAILED
            return
        if expected == "remove":
            assert parent is None and sibling is None
            return
        assert parent is not None and sibling is not None and sibling.state is WAITING
        if expected == "continue":
            assert parent.state is WAITING
            return
        assert parent.state is WAITING_CHILDREN
        if expected == "ignore":
            assert await parent.get_ignored_children_failures() == {
                jobs["doomed"].id: "cancelled: stop"
            }
        async with env.workers({child_q: Runs().handler(), parent_q: Runs().handler()}):
            await env.wait_state(parent, COMPLETED)
        values = await parent.get_children_values()
        assert list(values.values()) == [{"done": "sibling"}]

    @pytest.mark.parametrize("convert", [False, True], ids=["reraises", "raises-an-error"])
    async def test_a_running_handler_is_cancelled_and_the_job_never_retried(
        self, env: Harness, convert: bool
    ) -> None:
        q = env.name("running")
        job = await env.queue(q).add("slow", None, opts={"attempts": 5, "backoff": 0.01})
        handler = _Hanging(convert=convert)
        failures: list[BaseException] = []
        async with env.workers({q: handler}) as workers:
            workers[0].on("failed", lambda _job, error: failures.append(error))
            await env.wait_state(job, ACTIVE)
            with anyio.fail_after(env.timeout):
                await handler.running.wait()
            assert await job.cancel("user pressed stop") == 1
            done = await env.wait_state(job, FAILED)
            # A second cancel of a job already cancelled changes nothing.
            assert await job.cancel() == 0
        assert handler.cancelled == {job.id}
        assert handler.started == {job.id: 1}
        assert done.failed_reason == "cancelled: user pressed stop"
        assert done.attempts_made == 1
        assert len(failures) == 1 and "user pressed stop" in str(failures[0])

    async def test_a_handler_running_through_another_store_object_is_cancelled(
        self, env: Harness
    ) -> None:
        parent_q, q, idle_q = env.name("root"), env.name("remote"), env.name("idle")
        node = await env.flow.add(
            {
                "name": "root",
                "queue_name": parent_q,
                "children": [
                    {"name": "running", "queue_name": q, "opts": {"attempts": 3}},
                    {"name": "queued", "queue_name": idle_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        handler = _Hanging()
        async with env.workers({q: handler}, store=env.second_store):
            await env.wait_state(jobs["running"], ACTIVE)
            with anyio.fail_after(env.timeout):
                await handler.running.wait()
            assert await env.flow.cancel(jobs["root"].id, parent_q) == 3
            running = await env.wait_state(jobs["running"], FAILED)
        assert handler.cancelled == {jobs["running"].id}
        assert running.failed_reason == "cancelled"
        root = await env.reread(jobs["root"])
        assert root is not None and root.state is FAILED and root.failed_reason == "cancelled"
        root_deps = await root.get_dependencies()
        assert len(root_deps.failed) == 2 and root_deps.unprocessed == []

    async def test_cancelling_a_failed_parent_leaves_its_running_child(self, env: Harness) -> None:
        parent_q, q = env.name("failed-parent"), env.name("failed-parent-kids")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "breaks", "queue_name": q},
                    {"name": "runs", "queue_name": q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert sorted(await _take(env, q, "tok")) == sorted((jobs["breaks"].id, jobs["runs"].id))
        failure = Failure(jobs["breaks"].id, "tok", "broke")
        assert await env.store.fail_jobs(q, [failure], time.time()) == [True]
        await env.wait_state(jobs["parent"], FAILED)
        # A finished job is not cancelled, nor is what still runs below it.
        assert await env.flow.cancel(jobs["parent"].id, parent_q) == 0
        assert await env.store.cancel_requests(q, [jobs["runs"].id]) == {}

    async def test_cancel_requests_answer_for_the_ids_asked_only(self, env: Harness) -> None:
        # Ids are data: one that reads like a word of the store's own commands too.
        q = env.name("requests-of")
        queue = env.queue(q)
        named = await queue.add("named", None, {"job_id": "requests"})
        other = await queue.add("other", None)
        assert sorted(await _take(env, q, "tok")) == sorted((named.id, other.id))
        assert await named.cancel("halt") == 1
        assert await env.store.cancel_requests(q, [other.id]) == {}
        assert await env.store.cancel_requests(q, ["requests"]) == {"requests": "cancelled: halt"}

    async def test_a_cancel_request_wins_over_whatever_the_worker_reports(
        self, env: Harness
    ) -> None:
        q = env.name("requested")
        queue = env.queue(q)
        jobs = [await queue.add(f"job{i}", None, opts={"attempts": 5}) for i in range(4)]
        ids = await _take(env, q, "tok")
        assert sorted(ids) == sorted(job.id for job in jobs)
        for job in jobs:
            assert await job.cancel("halt") == 1
        assert await env.store.cancel_requests(q, [*ids, "missing"]) == dict.fromkeys(
            ids, "cancelled: halt"
        )
        now = time.time()
        first, second, third, fourth = (job.id for job in jobs)
        assert await env.store.complete_jobs(q, [Completion(first, "tok", "1")], now) == [True]
        retry = Failure(second, "tok", "boom", [], now)
        assert await env.store.fail_jobs(q, [retry], now) == [True]
        assert await env.store.fail_jobs(q, [Failure(third, "tok", "boom")], now) == [True]
        assert await env.store.release_jobs(q, [Release(fourth, "tok")], now) == [True]
        for job in jobs:
            again = await env.reread(job)
            assert again is not None and again.state is FAILED, job.name
            assert again.failed_reason == "cancelled: halt", job.name
        assert await env.store.cancel_requests(q, ids) == {}
        counts = await env.counts(q)
        assert counts["failed"] == 4 and counts["completed"] == 0

    async def test_a_cancel_requested_job_that_finishes_counts_its_attempt_and_its_parent_fails(
        self, env: Harness
    ) -> None:
        for outcome in ("completes", "fails", "stalls", "is released"):
            jobs, queues = await _order_flow(env)
            payment, q = jobs["payment"], queues["payment"]
            # A first attempt fails and is retried; the second is running when the
            # cancel request comes, and whatever its worker reports, it ends failed with
            # that attempt counted.
            assert await _take(env, q, "tok") == [payment.id]
            now = time.time()
            retry = Failure(payment.id, "tok", "boom", [], now)
            assert await env.store.fail_jobs(q, [retry], now) == [True]
            lock_for = -1.0 if outcome == "stalls" else 30.0
            assert await _take(env, q, "tok2", lock_for=lock_for) == [payment.id]
            assert await payment.cancel("halt") == 1
            if outcome == "stalls":
                outcomes = await env.store.recover_stalled(q, time.time(), 10)
                assert [(o.id, o.failed) for o in outcomes] == [(payment.id, True)]
            elif outcome == "is released":
                released = [Release(payment.id, "tok2")]
                assert await env.store.release_jobs(q, released, time.time()) == [True]
            elif outcome == "completes":
                done = [Completion(payment.id, "tok2", "1")]
                assert await env.store.complete_jobs(q, done, time.time()) == [True]
            else:
                again = Failure(payment.id, "tok2", "boom", [], time.time())
                assert await env.store.fail_jobs(q, [again], time.time()) == [True]
            ended = await env.reread(payment)
            assert ended is not None and ended.state is FAILED, outcome
            assert ended.failed_reason == "cancelled: halt", outcome
            # A stall or a release is not an attempt the worker reported.
            counted = outcome in ("completes", "fails")
            assert ended.attempts_made == (2 if counted else 1), outcome
            # Its parent applies its (default) fail policy, as to any child's final
            # failure.
            order = await env.reread(jobs["order"])
            assert order is not None and order.state is FAILED, outcome
            assert order.failed_reason == child_failed_reason(payment.id, "cancelled: halt")

    async def test_a_cancel_requested_job_that_stalls_ends_cancelled(self, env: Harness) -> None:
        q = env.name("stalls")
        job = await env.queue(q).add("lost", None, opts={"attempts": 5})
        assert await _take(env, q, "dead-worker", lock_for=-1.0) == [job.id]
        assert await job.cancel("gone") == 1
        outcomes = await env.store.recover_stalled(q, time.time(), 10)
        assert [(o.id, o.failed) for o in outcomes] == [(job.id, True)]
        again = await env.reread(job)
        assert again is not None and again.state is FAILED
        assert again.failed_reason == "cancelled: gone" and again.stalled_count == 1

    async def test_each_cancelled_job_publishes_a_cancelled_event(self, env: Harness) -> None:
        jobs, queues = await _order_flow(env)
        seen: list[QueueEvent] = []
        async with AsyncExitStack() as stack:
            for queue in queues.values():
                listener = QueueEvents(queue, store=env.event_store)
                await stack.enter_async_context(listener)
                listener.on("*", seen.append)
            await env.flow.cancel(jobs["order"].id, queues["order"], "bye")

            async def all_seen() -> bool:
                cancelled = {e.job_id for e in seen if e.type == "cancelled"}
                failed = {e.job_id for e in seen if e.type == "failed"}
                wanted = {job.id for job in jobs.values()}
                return cancelled == wanted and failed == wanted

            await env.wait_for(all_seen, "a cancelled and a failed event for each job")
        for event in seen:
            if event.type == "cancelled":
                assert event.data.get("reason") == "cancelled: bye"

    async def test_cancelled_jobs_count_as_failed_and_follow_their_retention(
        self, env: Harness
    ) -> None:
        q, kids = env.name("cancel-kept"), env.name("cancel-kept-kids")
        first = int(time.time() // 60)
        # The children's queue holds two completed jobs and a failed one already.
        earlier = [await env.queue(kids).add(name, None) for name in ("c1", "c2", "f0")]
        assert await _take(env, kids, "tok") == [job.id for job in earlier]
        now = time.time()
        done = [Completion(job.id, "tok", "1") for job in earlier[:2]]
        assert await env.store.complete_jobs(kids, done, now) == [True, True]
        assert await env.store.fail_jobs(kids, [Failure(earlier[2].id, "tok", "broke")], now)
        node = await env.flow.add(
            {
                "name": "top",
                "queue_name": q,
                "children": [
                    {"name": "gone", "queue_name": kids, "opts": {"remove_on_fail": True}},
                    {"name": "kept", "queue_name": kids, "opts": {"remove_on_fail": 1}},
                    {
                        "name": "later",
                        "queue_name": kids,
                        "opts": {"delay": 3600, "remove_on_fail": True},
                    },
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert await jobs["top"].cancel("stop") == 4
        last = int(time.time() // 60)
        assert await env.reread(jobs["gone"]) is None
        assert await env.reread(jobs["later"]) is None
        assert await env.state(jobs["kept"]) is FAILED
        # "kept" keeps one failed job: itself; the completed ones are not its business.
        assert await env.reread(earlier[2]) is None
        for job in earlier[:2]:
            assert await env.state(job) is COMPLETED, job.name
        failed = await env.store.get_metrics(kids, "failed", first, last)
        assert sum(failed.values()) == 4, "every cancelled child is a failed job"
        assert sum((await env.store.get_metrics(q, "failed", first, last)).values()) == 1
        completed = await env.store.get_metrics(kids, "completed", first, last)
        assert sum(completed.values()) == 2

    async def test_cancel_leaves_the_counts_of_other_parents_alone(self, env: Harness) -> None:
        # Beside the cancelled parent: one of the same queue, one with the same id.
        q, elsewhere, kids = env.name("own"), env.name("own-other"), env.name("own-kids")
        flows = {}
        for key, queue, job_id in (("mine", q, "p"), ("next", q, "n"), ("twin", elsewhere, "p")):
            flows[key] = nodes_by_name(
                await env.flow.add(
                    {
                        "name": key,
                        "queue_name": queue,
                        "opts": {"job_id": job_id},
                        "children": [
                            {"name": f"{key}-1", "queue_name": kids},
                            {"name": f"{key}-2", "queue_name": kids},
                        ],
                    }
                )
            )
        assert await flows["mine"]["mine"].cancel("stop") == 3
        assert sorted(await _take(env, kids, "tok")) == sorted(
            flows[key][f"{key}-{n}"].id for key in ("next", "twin") for n in (1, 2)
        )
        now = time.time()
        for n in (1, 2):
            done = [Completion(flows[key][f"{key}-{n}"].id, "tok", "1") for key in ("next", "twin")]
            assert await env.store.complete_jobs(kids, done, now) == [True, True]
            for key in ("next", "twin"):
                expected = WAITING_CHILDREN if n == 1 else WAITING
                assert await env.state(flows[key][key]) is expected, (key, n)

    async def test_cancel_of_a_dag_job_fails_a_shared_job_alone_in_its_queue(
        self, env: Harness
    ) -> None:
        q, qs = env.name("alone"), env.name("alone-shared")
        # The shared job's queue holds one finished job besides it.
        before = await env.queue(qs).add("before", None)
        assert await _take(env, qs, "tok") == [before.id]
        done = [Completion(before.id, "tok", "1")]
        assert await env.store.complete_jobs(qs, done, time.time()) == [True]
        jobs = await env.flow.add_dag(
            [
                {"id": "shared", "name": "shared", "queue_name": qs},
                {"id": "mine", "name": "mine", "queue_name": q, "depends_on": ["shared"]},
                {
                    "id": "theirs",
                    "name": "theirs",
                    "queue_name": q,
                    "depends_on": ["shared"],
                    "opts": {"fail_parent_on_child_failure": "ignore"},
                },
            ]
        )
        seen: list[QueueEvent] = []
        async with QueueEvents(qs, store=env.event_store) as listener:
            listener.on("*", seen.append)
            assert await jobs["mine"].cancel("stop") == 2

            async def arrived() -> bool:
                return {e.type for e in seen if e.job_id == jobs["shared"].id} >= {
                    "cancelled",
                    "failed",
                }

            await env.wait_for(arrived, "the shared job's cancelled and failed events")
        shared = await env.reread(jobs["shared"])
        assert shared is not None and shared.state is FAILED
        assert shared.failed_reason == "cancelled: stop"
        cancelled = [e for e in seen if e.type == "cancelled"]
        assert [(e.job_id, e.data.get("reason")) for e in cancelled] == [
            (jobs["shared"].id, "cancelled: stop")
        ]
        theirs = await env.reread(jobs["theirs"])
        assert theirs is not None and theirs.state is WAITING
        assert (await theirs.get_dependencies()).ignored == {jobs["shared"].id: "cancelled: stop"}
        assert await env.state(before) is COMPLETED

    async def test_a_completed_parent_keeps_its_record_of_a_retried_child(
        self, env: Harness
    ) -> None:
        # A child failed under "ignore", its parent completed, and the child was retried:
        # cancelling the flow's top cancels the child, and marks failed only the
        # dependencies still pending; the completed parent's record stays as it was.
        q = env.name("kept-record")
        node = await env.flow.add(
            {
                "name": "top",
                "queue_name": q,
                "children": [
                    {
                        "name": "middle",
                        "queue_name": q,
                        "children": [
                            {
                                "name": "leaf",
                                "queue_name": q,
                                "opts": {"ignore_dependency_on_failure": True},
                            }
                        ],
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        now = time.time()
        assert await _take(env, q, "t1") == [jobs["leaf"].id]
        await env.store.fail_jobs(q, [Failure(jobs["leaf"].id, "t1", "broke")], now)
        assert await _take(env, q, "t2") == [jobs["middle"].id]
        await env.store.complete_jobs(q, [Completion(jobs["middle"].id, "t2", "1")], now)
        await env.store.retry_job(q, jobs["leaf"].id, now)
        # The completed middle job is not cancelled, nor is anything below it.
        assert await jobs["middle"].cancel("stop") == 0
        assert await env.state(jobs["leaf"]) is WAITING
        assert await jobs["top"].cancel("stop") == 2
        for name in ("top", "leaf"):
            assert await env.state(jobs[name]) is FAILED, name
        middle = await env.reread(jobs["middle"])
        assert middle is not None and middle.state is COMPLETED
        assert (await middle.get_dependencies()).ignored == {jobs["leaf"].id: "broke"}

    async def test_a_subtree_job_failed_by_an_outside_parent_is_not_cancelled_again(
        self, env: Harness
    ) -> None:
        # "early" (a dependency of "top") completed after its other dependency failed
        # under the continue policy, so only "outside" (not below "top") still needs
        # "shared". Cancelling "top" cancels "leaf" first; its failure fails "outside"
        # (the fail policy), whose failure fails "shared" as no longer needed, before
        # the cancel walk reaches it: "shared" keeps that failure and is not counted.
        q, qx, qc = env.name("walk"), env.name("walk-x"), env.name("walk-c")
        jobs = await env.flow.add_dag(
            [
                {"id": "leaf", "name": "leaf", "queue_name": q},
                {"id": "shared", "name": "shared", "queue_name": q},
                {
                    "id": "broken",
                    "name": "broken",
                    "queue_name": qx,
                    "opts": {"continue_parent_on_failure": True},
                },
                {"id": "middle", "name": "middle", "queue_name": q, "depends_on": ["leaf"]},
                {
                    "id": "early",
                    "name": "early",
                    "queue_name": qc,
                    "depends_on": ["shared", "broken"],
                },
                {"id": "top", "name": "top", "queue_name": q, "depends_on": ["middle", "early"]},
                {
                    "id": "outside",
                    "name": "outside",
                    "queue_name": q,
                    "depends_on": ["leaf", "shared"],
                },
            ]
        )
        now = time.time()
        assert await _take(env, qx, "x") == [jobs["broken"].id]
        await env.store.fail_jobs(qx, [Failure(jobs["broken"].id, "x", "broke")], now)
        assert await _take(env, qc, "c") == [jobs["early"].id]
        await env.store.complete_jobs(qc, [Completion(jobs["early"].id, "c", "1")], now)
        assert await env.state(jobs["shared"]) is WAITING

        assert await jobs["top"].cancel("stop") == 3
        reason = "cancelled: stop"
        for name in ("top", "middle", "leaf"):
            now_job = await env.reread(jobs[name])
            assert now_job is not None and now_job.state is FAILED, name
            assert now_job.failed_reason == reason, name
        outside = await env.reread(jobs["outside"])
        assert outside is not None and outside.state is FAILED
        assert outside.failed_reason == child_failed_reason(jobs["leaf"].id, reason)
        shared = await env.reread(jobs["shared"])
        assert shared is not None and shared.state is FAILED
        assert shared.failed_reason == PARENT_FAILED_REASON
