"""Step jobs as the Worker and the API show them, on the memory store: a park is not a
failure, a sync handler can park too, and misplaced ``opts.parent`` is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import pytest
from pydantic import ValidationError

from conveyor_core import (
    FlowProducer,
    Job,
    JobState,
    Queue,
    WaitingForChildren,
    Worker,
)
from conveyor_stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

FAST = {"drain_delay": 0.05}


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as store:
        yield store


async def _wait_state(job: Job, state: JobState) -> Job:
    with anyio.fail_after(10):
        while True:
            if (await job.refresh()).state is state:
                return job
            await anyio.sleep(0.01)


async def test_a_park_emits_waiting_children_and_no_failure(store: MemoryStore) -> None:
    events: list[tuple[str, str]] = []

    async def step(job: Job) -> Any:
        await job.add_children([{"name": "part", "queue_name": "parts"}])
        await job.wait_for_children()

    job = await Queue("steps", store=store).add("step")
    worker = Worker("steps", step, store=store, **FAST)
    for name in ("waiting-children", "failed", "completed", "error"):
        worker.on(name, lambda *args, name=name: events.append((name, args[0].id)))
    async with worker:
        await _wait_state(job, JobState.WAITING_CHILDREN)
    assert events == [("waiting-children", job.id)]
    assert job.failed_reason is None and job.stacktrace == []


async def test_a_sync_handler_parks_through_its_thread(store: MemoryStore) -> None:
    runs: list[Any] = []

    def step(job: Job) -> Any:
        runs.append(job.data)
        if not job.data.get("merged"):
            anyio.from_thread.run(job.add_children, [{"name": "p", "queue_name": "parts"}])
            anyio.from_thread.run(job.update_data, {"merged": True})
            anyio.from_thread.run(job.wait_for_children)
        return "merged"

    async def part(job: Job) -> Any:
        return 1

    job = await Queue("steps", store=store).add("step", {})
    async with Worker("steps", step, store=store, **FAST):
        await _wait_state(job, JobState.WAITING_CHILDREN)
        async with Worker("parts", part, store=store, **FAST):
            await _wait_state(job, JobState.COMPLETED)
    assert job.return_value == "merged"
    assert runs == [{}, {"merged": True}]


async def test_waiting_for_children_raised_by_hand_is_a_failed_attempt(store: MemoryStore) -> None:
    async def step(job: Job) -> Any:
        raise WaitingForChildren(job.queue_name, job.id)

    job = await Queue("steps", store=store).add("step")
    async with Worker("steps", step, store=store, **FAST):
        await _wait_state(job, JobState.FAILED)
    assert job.attempts_made == 1 and "waiting for its children" in (job.failed_reason or "")


async def test_opts_parent_is_only_for_a_flow_root(store: MemoryStore) -> None:
    parent = await FlowProducer(store=store).add(
        {"name": "p", "queue_name": "q", "children": [{"name": "c", "queue_name": "q"}]}
    )
    ref = {"id": parent.job.id, "queue": "q"}
    with pytest.raises(ValueError, match="only for the root"):
        await FlowProducer(store=store).add(
            {
                "name": "r",
                "queue_name": "q",
                "children": [{"name": "c", "queue_name": "q", "opts": {"parent": ref}}],
            }
        )
    with pytest.raises(ValidationError, match="parent"):
        await Queue("q", store=store).add("c", opts={"parent": {"id": "", "queue": "q"}})
    with pytest.raises(ValidationError, match="parent"):
        await Queue("q", store=store).add("c", opts={"parent": {"id": "x"}})
    assert (await Queue("q", store=store).get_job_counts())["waiting"] == 1


async def test_a_child_added_by_add_children_must_not_name_a_parent(store: MemoryStore) -> None:
    errors: list[str] = []

    async def step(job: Job) -> Any:
        try:
            await job.add_children(
                [
                    {
                        "name": "c",
                        "queue_name": "parts",
                        "opts": {"parent": {"id": "x", "queue": "y"}},
                    }
                ]
            )
        except ValueError as exc:
            errors.append(str(exc))
        return "done"

    job = await Queue("steps", store=store).add("step")
    async with Worker("steps", step, store=store, **FAST):
        await _wait_state(job, JobState.COMPLETED)
    assert len(errors) == 1 and "must not set opts.parent" in errors[0]
    assert (await Queue("parts", store=store).get_job_counts())["waiting"] == 0


async def test_a_scheduler_refuses_opts_parent(store: MemoryStore) -> None:
    queue = Queue("ticks", store=store)
    ref = {"id": "p", "queue": "q"}
    with pytest.raises(ValueError, match="sets a parent"):
        await queue.upsert_job_scheduler(
            "s", every=60, template={"name": "t", "opts": {"parent": ref}}
        )
    with pytest.raises(ValueError, match="sets a parent"):
        await queue.upsert_job_scheduler(
            "s", every=60, flow={"name": "root", "opts": {"parent": ref}}
        )
    assert await queue.get_job_schedulers() == []
