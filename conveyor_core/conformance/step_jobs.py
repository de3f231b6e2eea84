"""Step jobs: children added while a job runs (``Job.add_children``), parking until they
resolve (``Job.wait_for_children``), and ``opts.parent`` onto an existing job."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor_core import (
    DuplicateJobError,
    InvalidJobStateError,
    Job,
    JobNotFoundError,
    JobState,
    LockLostError,
    QueueEvent,
    QueueEvents,
)
from conveyor_core.models import ParentPolicy
from conveyor_core.queue import build_new_job, resolve_options
from conveyor_core.store import Completion, child_failed_reason

from ._support import Harness, Runs, nodes_by_name

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
ACTIVE = JobState.ACTIVE
WAITING = JobState.WAITING
WAITING_CHILDREN = JobState.WAITING_CHILDREN


def _part(queue: str, n: int, **opts: Any) -> dict[str, Any]:
    return {"name": f"part-{n}", "queue_name": queue, "data": {"n": n}, "opts": opts}


async def _square(job: Job) -> Any:
    return job.data["n"] ** 2


async def _nothing_added(env: Harness, parent: Job, *queues: str) -> None:
    """Nothing of a refused add reached the store: no job in ``queues``, no dependency
    record on ``parent``."""
    for queue in queues:
        assert await env.total(queue) == 0, f"queue {queue!r} got jobs from a refused add"
    counts = await parent.get_dependency_counts()
    assert counts.total == 0, f"the parent got dependency records from a refused add: {counts}"


class StepJobTests:
    """``add_children``, ``wait_for_children`` and ``opts.parent``.

    Every test's name holds ``step_job``: select them with ``-k step_job``.
    """

    async def test_step_job_map_reduce_runs_end_to_end(self, env: Harness) -> None:
        main, parts = env.name("reduce"), env.name("map")
        runs = Runs()

        async def reduce(job: Job) -> Any:
            runs.record(job)
            if job.data.get("step") != "merge":
                added = await job.add_children([_part(parts, n) for n in range(1, 6)])
                assert [node.job.parent_id for node in added] == [job.id] * 5
                await job.update_data({**job.data, "step": "merge"})
                await job.wait_for_children()
            values = await job.get_children_values()
            return {"total": sum(values.values()), "parts": len(values)}

        job = await env.queue(main).add("reduce", {"step": "split"})
        # the parts run once the job parked, so it certainly waits for them
        async with env.workers({main: reduce}):
            await env.wait_state(job, WAITING_CHILDREN)
        async with env.workers({main: reduce, parts: _square}):
            done = await env.wait_state(job, COMPLETED, FAILED)
        assert done.state is COMPLETED, done.failed_reason
        assert done.return_value == {"total": 1 + 4 + 9 + 16 + 25, "parts": 5}
        assert runs.count(job) == 2, "the handler runs once per step"
        assert done.attempts_made == 1, "the park counted no attempt"
        assert done.data == {"step": "merge"}
        assert await env.counts(parts) == {**await env.counts(parts), "completed": 5}

    async def test_step_job_a_parked_job_counts_no_attempt_and_holds_no_lock(
        self, env: Harness
    ) -> None:
        main, idle = env.name("park"), env.name("park-idle")
        tokens: list[str] = []
        attempts_seen: list[int] = []

        async def step(job: Job) -> Any:
            attempts_seen.append(job.attempts_made)
            if job.data.get("step") != "merge":
                await job.add_children([_part(idle, 1)])
                await job.update_data({"step": "merge"})
                assert job.token is not None
                tokens.append(job.token)
                await job.wait_for_children()
            raise RuntimeError("the merge step broke")

        job = await env.queue(main).add("step", {}, {"attempts": 2})
        seen: list[QueueEvent] = []
        listener = QueueEvents(main, store=env.event_store)
        listener.on("*", seen.append)
        async with listener, env.workers({main: step}):
            parked = await env.wait_state(job, WAITING_CHILDREN)

            async def announced() -> bool:
                return any(e.type == "waiting-children" and e.job_id == job.id for e in seen)

            await env.wait_for(announced, "the waiting-children event of the park")
        assert not [e for e in seen if e.type == "failed"], "a park is not a failure"
        assert parked.attempts_made == 0, "a park is not an attempt"
        counts = await env.counts(main)
        assert counts["waiting-children"] == 1 and counts["active"] == 0, counts
        assert parked.record.lock_token is None and parked.record.lock_until is None
        # the worker that parked it (or any other) can no longer finish it
        (token,) = tokens
        assert await env.store.complete_jobs(main, [_completion(job.id, token)], time.time()) == [
            False
        ]
        assert await env.store.extend_locks(main, [(job.id, token)], time.time() + 30) == []
        assert await env.state(job) is WAITING_CHILDREN

        async with env.workers({idle: _square, main: step}):
            # both attempts are still there after the park: one failure is retried
            failed = await env.wait_state(job, FAILED)
        assert attempts_seen == [0, 0, 1], "the park left the attempts budget untouched"
        assert failed.attempts_made == 2
        assert failed.failed_reason == "the merge step broke"

    async def test_step_job_the_handler_runs_again_with_the_data_as_updated(
        self, env: Harness
    ) -> None:
        main, parts = env.name("rerun"), env.name("rerun-parts")
        seen: list[Any] = []

        async def step(job: Job) -> Any:
            seen.append(job.data)
            if job.data["step"] == 1:
                await job.add_children([_part(parts, 3)])
                await job.update_data({"step": 2, "note": "children added"})
                await job.wait_for_children()
            return job.data["step"]

        job = await env.queue(main).add("step", {"step": 1})
        async with env.workers({main: step}):
            await env.wait_state(job, WAITING_CHILDREN)
        async with env.workers({main: step, parts: _square}):
            done = await env.wait_state(job, COMPLETED, FAILED)
        assert done.state is COMPLETED and done.return_value == 2
        assert seen == [{"step": 1}, {"step": 2, "note": "children added"}]

    async def test_step_job_waiting_without_pending_children_returns_at_once(
        self, env: Harness
    ) -> None:
        main, parts = env.name("no-wait"), env.name("no-wait-parts")
        runs = Runs()

        async def step(job: Job) -> Any:
            runs.record(job)
            await job.wait_for_children()  # no child at all
            (node,) = await job.add_children([_part(parts, 4)])
            # the child resolves while this job runs: the job is not moved
            await env.wait_state(node.job, COMPLETED)
            current = await env.reread(job)
            assert current is not None and current.state is ACTIVE
            await job.wait_for_children()  # every child resolved already
            return await job.get_children_values()

        job = await env.queue(main).add("step")
        async with env.workers({main: step, parts: _square}):
            done = await env.wait_state(job, COMPLETED, FAILED)
        assert done.state is COMPLETED, done.failed_reason
        assert list(done.return_value.values()) == [16]
        assert runs.count(job) == 1, "nothing to wait for: the handler ran once"

    async def test_step_job_a_delayed_job_parks_and_is_released_to_waiting(
        self, env: Harness
    ) -> None:
        main, idle = env.name("delayed-step"), env.name("delayed-step-idle")

        async def step(job: Job) -> Any:
            await job.add_children([_part(idle, 1)])
            await job.wait_for_children()

        job = await env.queue(main).add("step", opts={"delay": 0.05})
        async with env.workers({main: step}):
            await env.wait_state(job, WAITING_CHILDREN)
        async with env.workers({idle: _square}):
            # its delay was spent before it first ran: it does not wait it out again
            released = await env.wait_state(job, WAITING, JobState.DELAYED)
        assert released.state is WAITING

    async def test_step_job_add_children_is_all_or_nothing(self, env: Harness) -> None:
        main, parts = env.name("atomic-step"), env.name("atomic-parts")
        taken = await env.queue(env.name("taken")).add("taken", opts={"job_id": "taken-id"})
        errors: list[BaseException] = []

        async def step(job: Job) -> Any:
            bad_tree = {
                "name": "tree",
                "queue_name": parts,
                "children": [
                    _part(parts, 1),
                    {"name": "dup", "queue_name": taken.queue_name, "opts": {"job_id": "taken-id"}},
                ],
            }
            try:
                await job.add_children([_part(parts, 0), bad_tree])
            except DuplicateJobError as exc:
                errors.append(exc)
            # a group whose first job names another parent is refused by the store
            stray = build_new_job(
                queue=parts, name="stray", data="null", opts=resolve_options(None), job_id="s"
            )
            assert job.token is not None
            try:
                await env.store.add_children(main, job.id, job.token, [[stray]], time.time())
            except ValueError as exc:
                errors.append(exc)
            return "done"

        job = await env.queue(main).add("step")
        async with env.workers({main: step}):
            await env.wait_state(job, COMPLETED)
        assert len(errors) == 2 and "taken-id" in str(errors[0])
        assert isinstance(errors[1], ValueError)
        await _nothing_added(env, job, parts)
        assert await env.total(taken.queue_name) == 1

    async def test_step_job_add_children_without_the_lock_is_refused(self, env: Harness) -> None:
        main, parts = env.name("no-lock"), env.name("no-lock-parts")
        tokens: list[str] = []

        async def step(job: Job) -> Any:
            assert job.token is not None
            tokens.append(job.token)
            return "done"

        job = await env.queue(main).add("step")
        # a job read from the queue is not held by this caller
        with pytest.raises(LockLostError, match="add children"):
            await job.add_children([_part(parts, 1)])
        with pytest.raises(LockLostError):
            await job.wait_for_children()
        async with env.workers({main: step}):
            await env.wait_state(job, COMPLETED)
        # the store refuses a token that no longer holds the job
        child = build_new_job(
            queue=parts, name="late", data="null", opts=resolve_options(None), job_id="late"
        )
        child.parent_id, child.parent_queue = job.id, main
        with pytest.raises(LockLostError):
            await env.store.add_children(main, job.id, tokens[0], [[child]], time.time())
        with pytest.raises(LockLostError):
            await env.store.park_job(main, job.id, tokens[0], time.time())
        await _nothing_added(env, job, parts)
        assert await env.state(job) is COMPLETED
        # nor another token while the job is active under its own
        held = await env.queue(main).add("held")
        now = time.time()
        taken = await env.store.take_jobs(
            main, limit=1, token="holder", lock_until=now + 60, now=now
        )
        assert [record.id for record in taken.jobs] == [held.id]
        child.parent_id = held.id
        with pytest.raises(LockLostError):
            await env.store.add_children(main, held.id, "intruder", [[child]], now)
        with pytest.raises(LockLostError):
            await env.store.park_job(main, held.id, "intruder", now)
        await _nothing_added(env, held, parts)
        assert await env.state(held) is ACTIVE

    async def test_step_job_park_says_whether_it_parked(self, env: Harness) -> None:
        main, parts = env.name("park-says"), env.name("park-says-parts")
        # Added in one call (the path of adds of several jobs).
        _, job = await env.queue(main).add_bulk(
            [
                {"name": "before", "opts": {"delay": 3600}},
                {"name": "step", "opts": {"delay": 0.001}},
            ]
        )
        now = time.time() + 1
        taken = await env.store.take_jobs(main, limit=1, token="tok", lock_until=now + 60, now=now)
        assert [record.id for record in taken.jobs] == [job.id]
        assert await env.store.park_job(main, job.id, "tok", now) is False, "no pending child"
        assert await env.state(job) is ACTIVE
        child = build_new_job(
            queue=parts, name="part", data="null", opts=resolve_options(None), job_id="part"
        )
        child.parent_id, child.parent_queue = job.id, main
        assert await env.store.add_children(main, job.id, "tok", [[child]], now) == [True]
        assert await env.store.park_job(main, job.id, "tok", now) is True
        parked = await env.reread(job)
        assert parked is not None and parked.state is WAITING_CHILDREN
        assert parked.record.delay == 0, "its delay is spent"
        # Its one child done, it waits again.
        taken = await env.store.take_jobs(parts, limit=1, token="kid", lock_until=now + 60, now=now)
        assert [record.id for record in taken.jobs] == ["part"]
        assert await env.store.complete_jobs(parts, [_completion("part", "kid")], now) == [True]
        assert await env.state(job) is JobState.WAITING

    async def test_step_job_opts_parent_onto_a_job_waiting_for_children(self, env: Harness) -> None:
        main, kids, late = env.name("adopt"), env.name("adopt-kids"), env.name("adopt-late")
        node = await env.flow.add(
            {"name": "parent", "queue_name": main, "children": [_part(kids, 2)]}
        )
        parent = node.job
        ref = {"id": parent.id, "queue": main}
        extra = await env.queue(late).add("extra", {"n": 5}, {"parent": ref, "remove_on_fail": 3})
        assert extra.parent_id == parent.id and extra.parent_queue == main
        # As the store keeps it: the parent and the policy the child's failure applies.
        kept = await env.store.get_job(late, extra.id)
        assert kept is not None
        assert (kept.parent_id, kept.parent_queue, kept.parent_policy) == (
            parent.id,
            main,
            ParentPolicy.FAIL,
        )
        tree = await env.flow.add(
            {
                "name": "sub",
                "queue_name": late,
                "data": {"n": 1},
                "opts": {"parent": ref},
                "children": [_part(kids, 3)],
            }
        )
        async with env.workers({kids: _square}):
            await env.wait_state(tree.children[0].job, COMPLETED)
            await env.wait_state(nodes_by_name(node)["part-2"], COMPLETED)
        # the original child resolved, but the parent also waits for the added ones
        assert await env.state(parent) is WAITING_CHILDREN
        assert (await parent.get_dependency_counts()).unprocessed == 2
        async with env.workers({late: _square}):
            await env.wait_state(parent, WAITING)
        values = await parent.get_children_values()
        assert sorted(values.values()) == [1, 4, 25]

    async def test_step_job_opts_parent_onto_a_running_job(self, env: Harness) -> None:
        main, kids = env.name("adopt-run"), env.name("adopt-run-kids")
        runs = Runs()

        async def step(job: Job) -> Any:
            runs.record(job)
            if job.data.get("step") != "merge":
                ref = {"id": job.id, "queue": job.queue_name}
                await env.queue(kids).add_bulk(
                    [{"name": f"k{n}", "data": {"n": n}, "opts": {"parent": ref}} for n in (2, 3)]
                )
                await job.update_data({"step": "merge"})
                await job.wait_for_children()
            return sorted((await job.get_children_values()).values())

        job = await env.queue(main).add("step", {})
        async with env.workers({main: step}):
            await env.wait_state(job, WAITING_CHILDREN)
        async with env.workers({main: step, kids: _square}):
            done = await env.wait_state(job, COMPLETED, FAILED)
        assert done.state is COMPLETED and done.return_value == [4, 9]
        assert runs.count(job) == 2

    async def test_step_job_opts_parent_refuses_other_states_and_missing_parents(
        self, env: Harness
    ) -> None:
        main, kids = env.name("refuse"), env.name("refuse-kids")
        done = await env.queue(main).add("done")
        async with env.workers({main: _none}):
            await env.wait_state(done, COMPLETED)
        waiting = await env.queue(main).add("waiting")
        delayed = await env.queue(main).add("delayed", opts={"delay": 3600})
        queue = env.queue(kids)
        for parent, state in ((waiting, "waiting"), (delayed, "delayed"), (done, "completed")):
            ref = {"id": parent.id, "queue": main}
            with pytest.raises(InvalidJobStateError, match=rf"queue .{main}. is {state}"):
                await queue.add("child", opts={"parent": ref})
            with pytest.raises(InvalidJobStateError):
                await queue.add_bulk([{"name": "free"}, {"name": "child", "opts": {"parent": ref}}])
            with pytest.raises(InvalidJobStateError):
                await env.flow.add(
                    {
                        "name": "root",
                        "queue_name": kids,
                        "opts": {"parent": ref},
                        "children": [_part(kids, 1)],
                    }
                )
            await _nothing_added(env, parent, kids)
        missing = {"id": "no-such-job", "queue": main}
        with pytest.raises(JobNotFoundError) as caught:
            await queue.add("child", opts={"parent": missing})
        assert (caught.value.queue, caught.value.job_id) == (main, "no-such-job")
        with pytest.raises(JobNotFoundError):
            await env.flow.add({"name": "root", "queue_name": kids, "opts": {"parent": missing}})
        assert await env.total(kids) == 0

    async def test_step_job_release_is_exactly_once_when_many_children_finish_at_once(
        self, env: Harness
    ) -> None:
        main, parts = env.name("fan"), env.name("fan-parts")
        runs = Runs()
        count = 40

        async def fan(job: Job) -> Any:
            runs.record(job)
            if job.data.get("step") != "merge":
                await job.add_children([_part(parts, n) for n in range(count)])
                await job.update_data({"step": "merge"})
                await job.wait_for_children()
            return len(await job.get_children_values())

        jobs = [await env.queue(main).add("fan", {}) for _ in range(3)]
        async with env.workers({main: fan}):
            for job in jobs:
                await env.wait_state(job, WAITING_CHILDREN)
        # every child finishes with parents parked: workers on two store objects race
        async with (
            env.workers({parts: _square, main: fan}, concurrency=8),
            env.workers({parts: _square, main: fan}, store=env.second_store, concurrency=8),
        ):
            done = await env.wait_finished(*jobs)
        for job in done:
            assert job.state is COMPLETED and job.return_value == count, job.failed_reason
            assert runs.count(job) == 2, "a parent released twice would run three times"
        assert (await env.counts(parts))["completed"] == 3 * count

    async def test_step_job_a_child_failing_while_its_parent_runs_fails_the_parent(
        self, env: Harness
    ) -> None:
        main, parts, idle = env.name("fail-run"), env.name("fail-parts"), env.name("fail-idle")
        outcome: list[str] = []
        first: list[str] = []

        async def step(job: Job) -> Any:
            nodes = await job.add_children([_part(parts, 1), _part(idle, 2)])
            first.append(nodes[0].job.id)
            await env.wait_state(nodes[0].job, FAILED)
            try:
                await job.wait_for_children()
            except LockLostError:
                outcome.append("lock lost")
                raise
            return "not reached"

        async def broken(job: Job) -> Any:
            raise RuntimeError("part broke")

        job = await env.queue(main).add("step")
        async with env.workers({main: step, parts: broken}):
            failed = await env.wait_state(job, FAILED)
            await env.wait_for(lambda: _true(bool(outcome)), "the handler to see its lock lost")
        assert outcome == ["lock lost"], "the parent's lock is void once it failed"
        failed = await env.wait_state(job, FAILED)
        assert failed.failed_reason == child_failed_reason(first[0], "part broke")
        assert failed.attempts_made == 0
        counts = await failed.get_dependency_counts()
        assert counts.failed == 2 and counts.unprocessed == 0, "the unstarted sibling failed too"

    async def test_step_job_a_continue_child_failing_while_its_parent_runs_leaves_it_running(
        self, env: Harness
    ) -> None:
        main, parts = env.name("cont-run"), env.name("cont-parts")
        later = env.name("cont-later")
        seen: list[Any] = []

        async def step(job: Job) -> Any:
            if job.data.get("step") != "merge":
                nodes = await job.add_children(
                    [_part(parts, 1, continue_parent_on_failure=True), _part(later, 2)]
                )
                await env.wait_state(nodes[0].job, FAILED)
                await job.update_data({"step": "merge"})
                await job.wait_for_children()  # still waits for the pending one
            deps = await job.get_dependencies()
            seen.append((sorted(deps.processed.values()), len(deps.failed)))
            return "merged"

        async def broken(job: Job) -> Any:
            raise RuntimeError("part broke")

        job = await env.queue(main).add("step", {})
        async with env.workers({main: step, parts: broken}):
            await env.wait_state(job, WAITING_CHILDREN)
        async with env.workers({main: step, later: _square}):
            done = await env.wait_state(job, COMPLETED, FAILED)
        assert done.state is COMPLETED, done.failed_reason
        assert seen == [([4], 1)]

    async def test_step_job_retrying_a_failed_child_of_a_running_parent_puts_it_back(
        self, env: Harness
    ) -> None:
        main, parts = env.name("retry-run"), env.name("retry-parts")
        failing = {"left": 1}
        seen: list[Any] = []

        async def step(job: Job) -> Any:
            if job.data.get("step") != "merge":
                (node,) = await job.add_children([_part(parts, 3, continue_parent_on_failure=True)])
                await env.wait_state(node.job, FAILED)
                # Retried while this handler still runs: the parent waits for it again.
                await node.job.retry()
                await job.update_data({"step": "merge"})
                await job.wait_for_children()
            seen.append(await job.get_children_values())
            return "merged"

        async def part(job: Job) -> Any:
            if failing["left"]:
                failing["left"] -= 1
                raise RuntimeError("first try broke")
            return await _square(job)

        job = await env.queue(main).add("step", {})
        async with env.workers({main: step, parts: part}):
            done = await env.wait_state(job, COMPLETED, FAILED)
        assert done.state is COMPLETED, done.failed_reason
        assert [sorted(values.values()) for values in seen] == [[9]]
        assert done.attempts_made == 1


async def _true(value: bool) -> bool:
    return value


async def _none(job: Job) -> Any:
    return None


def _completion(job_id: str, token: str) -> Completion:
    return Completion(job_id, token, "null")
