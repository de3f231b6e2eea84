"""Helpers shared by the conformance tests: a per-test harness, waiting, recording.

Everything here drives a store through the public API (``Queue``, ``Worker``,
``FlowProducer``, ``Job``). Waiting is always on a condition with a deadline, never a
fixed sleep, so a fast store runs the suite fast and a slow one still passes.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio

from conveyor_core import FlowProducer, Job, JobState, Queue, QueueEvent, Worker
from conveyor_core.store import NewJob, StoreInterface


def bare_job(queue: str, job_id: str, state: JobState, **fields: Any) -> NewJob:
    """A new job named after its id, without data, for a test that writes through the
    store itself."""
    return NewJob(
        id=job_id, queue=queue, name=job_id, data="null", opts="{}", state=state, **fields
    )


async def take_ids(
    store: StoreInterface, queue: str, now: float, limit: int = 10, token: str = "tok"
) -> list[str]:
    """The ids of the jobs a take of ``queue`` at ``now`` hands out, in order (each
    locked for a minute with ``token``)."""
    taken = await store.take_jobs(queue, limit=limit, token=token, lock_until=now + 60, now=now)
    return [record.id for record in taken.jobs]


Handler = Callable[[Job], Awaitable[Any]]

FINISHED = (JobState.COMPLETED, JobState.FAILED)

POLL_INTERVAL = 0.01
"""Seconds between two looks at a condition that is not true yet."""


class Harness:
    """One test's view of the store(s): unique queue names, queues, workers, waiting.

    Queue names get a per-test suffix, so tests never see each other's jobs even when
    every test shares one database (as when the suite runs from the command line).
    """

    def __init__(
        self, store: StoreInterface, second_store: StoreInterface, *, timeout: float
    ) -> None:
        self.store = store
        self.second_store = second_store
        self.capabilities = store.capabilities
        self.timeout = timeout
        self.suffix = uuid.uuid4().hex[:10]
        self._queues: dict[tuple[str, int], Queue] = {}
        self._flow: FlowProducer | None = None

    # ------------------------------------------------------------------ objects

    def name(self, base: str) -> str:
        """A queue name unique to this test, starting with ``base``."""
        return f"{base}-{self.suffix}"

    def queue(self, name: str, *, store: StoreInterface | None = None) -> Queue:
        """A ``Queue`` on ``store`` (the main store by default), cached per test."""
        target = self.store if store is None else store
        key = (name, id(target))
        if key not in self._queues:
            self._queues[key] = Queue(name, store=target)
        return self._queues[key]

    @property
    def event_store(self) -> StoreInterface:
        """Where listeners subscribe: the second store object when the store declares
        cross-process events, else the store itself."""
        return self.second_store if self.capabilities.cross_process_events else self.store

    @property
    def flow(self) -> FlowProducer:
        """A ``FlowProducer`` on the main store, made once per test."""
        if self._flow is None:
            self._flow = FlowProducer(store=self.store)
        return self._flow

    @asynccontextmanager
    async def workers(
        self,
        handlers: Mapping[str, Handler],
        *,
        store: StoreInterface | None = None,
        **options: Any,
    ) -> AsyncIterator[list[Worker]]:
        """Run one ``Worker`` per queue of ``handlers`` for the block, then close them.

        Closing waits for running handlers at most ``timeout`` seconds, then cancels
        them, so a handler left hanging by a failed assertion cannot hang the test.
        """
        target = self.store if store is None else store
        async with AsyncExitStack() as stack:
            running: list[Worker] = []
            for queue_name, handler in handlers.items():
                worker = Worker(queue_name, handler, store=target, **options)
                await stack.enter_async_context(worker)
                running.append(worker)
            try:
                yield running
            finally:
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as closing:
                        for worker in running:
                            closing.start_soon(worker.close, self.timeout)

    async def aclose(self) -> None:
        """Close the queues and the producer made for the test (the stores stay open)."""
        for queue in self._queues.values():
            await queue.close()
        if self._flow is not None:
            await self._flow.close()

    # ------------------------------------------------------------------ reading

    async def job(self, queue: str, job_id: str) -> Job | None:
        """The job as stored now, or ``None`` if it does not exist."""
        return await self.queue(queue).get_job(job_id)

    async def reread(self, job: Job) -> Job | None:
        """``job`` as stored now, or ``None`` if it was removed."""
        return await self.job(job.queue_name, job.id)

    async def state(self, job: Job) -> JobState | None:
        """``job``'s state now, or ``None`` if it was removed."""
        current = await self.reread(job)
        return None if current is None else current.state

    async def counts(self, queue: str) -> dict[str, int]:
        """The queue's job counts per state, as ``Queue.get_job_counts`` gives them."""
        return await self.queue(queue).get_job_counts()

    async def total(self, queue: str) -> int:
        """How many jobs the queue holds, in any state."""
        return sum((await self.counts(queue)).values())

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self,
        condition: Callable[[], Awaitable[bool]],
        what: str,
        *,
        timeout: float | None = None,
    ) -> None:
        """Return once ``condition()`` is true; fail the test after the deadline."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            if await condition():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {limit:g}s waiting for {what}")
            await anyio.sleep(POLL_INTERVAL)

    async def wait_seen(
        self, seen: list[QueueEvent], wanted: Callable[[QueueEvent], bool], what: str
    ) -> QueueEvent:
        """Wait until an event of ``seen`` (a listener's list) is ``wanted``; returns the
        first such event."""
        found: list[QueueEvent] = []

        async def arrived() -> bool:
            found.extend(event for event in seen if wanted(event))
            return bool(found)

        await self.wait_for(arrived, what)
        return found[0]

    async def wait_state(self, job: Job, *states: JobState, timeout: float | None = None) -> Job:
        """Wait until ``job`` is in one of ``states``; returns it re-read."""
        found: list[Job] = []

        async def reached() -> bool:
            current = await self.reread(job)
            if current is not None and current.state in states:
                found.append(current)
                return True
            return False

        wanted = " or ".join(state.value for state in states)
        await self.wait_for(reached, f"job {job.name!r} ({job.id}) to be {wanted}", timeout=timeout)
        return found[-1]

    async def wait_finished(self, *jobs: Job, timeout: float | None = None) -> list[Job]:
        """Wait until every job is completed or failed; returns them re-read."""
        return [await self.wait_state(job, *FINISHED, timeout=timeout) for job in jobs]

    async def wait_count(
        self, queue: str, state: JobState, count: int, timeout: float | None = None
    ) -> None:
        """Wait until the queue holds at least ``count`` jobs in ``state``."""

        async def reached() -> bool:
            return (await self.counts(queue))[state.value] >= count

        await self.wait_for(reached, f"{count} {state.value} jobs in {queue!r}", timeout=timeout)


class Runs:
    """Records which jobs handlers ran, in order; the witness of "ran exactly once"."""

    def __init__(self) -> None:
        self.order: list[str] = []
        """Job names in the order their handlers started."""
        self.ids: Counter[str] = Counter()
        """How many times a handler started for each job id."""

    def record(self, job: Job) -> None:
        self.order.append(job.name)
        self.ids[job.id] += 1

    def count(self, job: Job) -> int:
        return self.ids[job.id]

    def handler(
        self,
        result: Callable[[Job], Any] | None = None,
        *,
        fail: Iterable[str] = (),
    ) -> Handler:
        """A handler recording each run; it raises for job names in ``fail``, else
        returns ``result(job)`` (default ``{"done": job.name}``)."""
        failing = frozenset(fail)

        async def handle(job: Job) -> Any:
            self.record(job)
            if job.name in failing:
                raise RuntimeError(f"{job.name} broke")
            return {"done": job.name} if result is None else result(job)

        return handle


def nodes_by_name(node: Any) -> dict[str, Job]:
    """Every ``Job`` of a ``JobNode`` tree keyed by its name (names unique in the tree)."""
    found: dict[str, Job] = {}
    stack = [node]
    while stack:
        current = stack.pop()
        assert current.job.name not in found, f"duplicate name {current.job.name!r} in tree"
        found[current.job.name] = current.job
        stack.extend(current.children or [])
    return found


async def final_states(harness: Harness, jobs: Mapping[str, Job]) -> dict[str, str | None]:
    """``{name: state value}`` of each job as stored now (``None``: removed)."""
    states: dict[str, str | None] = {}
    for name, job in jobs.items():
        state = await harness.state(job)
        states[name] = None if state is None else state.value
    return states


async def racing_takes(
    harness: Harness, queue: str, takes: int, limit: int, now: float
) -> list[str]:
    """``takes`` concurrent takes of up to ``limit`` jobs each, alternating between the
    two store objects; the ids they handed out, in all."""
    taken: list[str] = []

    async def take(index: int) -> None:
        store = (harness.store, harness.second_store)[index % 2]
        result = await store.take_jobs(
            queue, limit=limit, token=f"t{index}", lock_until=now + 60, now=now
        )
        taken.extend(job.id for job in result.jobs)

    async with anyio.create_task_group() as tg:
        for index in range(takes):
            tg.start_soon(take, index)
    return taken
