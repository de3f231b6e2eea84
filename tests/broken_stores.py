"""Deliberately broken stores: each is ``MemoryStore`` with exactly one defect.

``test_conformance_catches_broken.py`` runs the conformance suite against each of them
and checks that the suite fails: a suite that passes a broken store proves nothing.
Every defect is written with the protocol's own calls, so it is the kind of mistake a
store author could really make, not a change of ``MemoryStore``'s internals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel

from conveyor_core.engine import Engine
from conveyor_core.errors import DuplicateJobError
from conveyor_core.job import parse_opts
from conveyor_core.models import JobState
from conveyor_core.queue import options_json
from conveyor_core.store import (
    Completion,
    DagEdge,
    DeduplicatedAdd,
    DeduplicationKey,
    DependencyPage,
    DependencyStatus,
    Failure,
    GroupLimits,
    JobRecord,
    MetricKind,
    NewJob,
    ParentLink,
    Release,
    SearchPage,
    StoreCapabilities,
    TakeResult,
)
from conveyor_stores import MemoryStore


class ForgetsParentCounter(MemoryStore):
    """Defect: a parent's counter misses its last child.

    The last child of every parent with several children is written without its link
    to the parent, so the parent is released as soon as the other children resolve,
    runs before that child has finished and never sees its value.
    """

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        return await super().add_jobs([_forget_last_children(group) for group in groups], now)


def _forget_last_children(group: Sequence[NewJob]) -> list[NewJob]:
    children: dict[tuple[str | None, str | None], list[int]] = {}
    for index, job in enumerate(group):
        if job.parent_id is not None:
            children.setdefault((job.parent_queue, job.parent_id), []).append(index)
    forgotten = {indexes[-1] for indexes in children.values() if len(indexes) > 1}
    return [
        dataclasses.replace(job, parent_id=None, parent_queue=None, parent_policy=None)
        if index in forgotten
        else job
        for index, job in enumerate(group)
    ]


class HandsJobsOutTwice(MemoryStore):
    """Defect: every job taken is handed out once more, to the next take of its queue.

    As if taking a job forgot to remove it from the waiting list: two workers end up
    running the same job.
    """

    def __init__(self) -> None:
        super().__init__()
        self._again: dict[str, list[JobRecord]] = {}

    async def take_jobs(
        self,
        queue: str,
        *,
        limit: int,
        token: str,
        lock_until: float,
        now: float,
        rate_limit: tuple[int, float] | None = None,
    ) -> TakeResult:
        pending = self._again.setdefault(queue, [])
        if pending:
            handed, pending[:] = pending[:limit], pending[limit:]
            return TakeResult(handed)
        result = await super().take_jobs(
            queue, limit=limit, token=token, lock_until=lock_until, now=now, rate_limit=rate_limit
        )
        pending.extend(dataclasses.replace(job) for job in result.jobs)
        return result


class _CompletesThroughCompleteJobs(MemoryStore):
    """COMPLETE AND TAKE as two calls of this store, so a defect of ``complete_jobs``
    reaches a worker's combined calls too."""

    async def complete_and_take(
        self, queue: str, completions: Sequence[Completion], now: float, **take: Any
    ) -> tuple[list[bool], TakeResult]:
        applied = await self.complete_jobs(queue, completions, now)
        return applied, await self.take_jobs(queue, now=now, **take)


class IgnoresLockTokens(_CompletesThroughCompleteJobs):
    """Defect: any token opens any lock.

    Every transition of an active job goes through with whatever token it carries, so a
    worker that lost a job (or never had it) can still finish it.
    """

    async def _token(self, queue: str, job_id: str, token: str) -> str:
        record = await self.get_job(queue, job_id)
        if record is not None and record.lock_token is not None:
            return record.lock_token
        return token

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        forged = [
            dataclasses.replace(item, token=await self._token(queue, item.id, item.token))
            for item in completions
        ]
        return await super().complete_jobs(queue, forged, now)

    async def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        forged = [
            dataclasses.replace(item, token=await self._token(queue, item.id, item.token))
            for item in failures
        ]
        return await super().fail_jobs(queue, forged, now)

    async def release_jobs(self, queue: str, releases: Sequence[Release], now: float) -> list[bool]:
        forged = [
            dataclasses.replace(item, token=await self._token(queue, item.id, item.token))
            for item in releases
        ]
        return await super().release_jobs(queue, forged, now)

    async def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> list[str]:
        forged = [(job_id, await self._token(queue, job_id, token)) for job_id, token in locks]
        return await super().extend_locks(queue, forged, lock_until)


class WritesFlowsJobByJob(MemoryStore):
    """Defect: a flow is written one job at a time, stopping at the first error.

    A flow whose third job clashes with an existing id leaves its first two jobs
    behind: a parent waiting for children that will never all exist.
    """

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        written: list[bool] = []
        for group in groups:
            head = group[0]
            if await self.get_job(head.queue, head.id) is not None:
                written.append(False)
                continue
            for job in group:
                if await self.get_job(job.queue, job.id) is not None:
                    raise DuplicateJobError(
                        f"job id {job.id!r} already exists in queue {job.queue!r}"
                    )
                await super().add_jobs([[job]], now)
            written.append(True)
        return written


class IgnoresTickCompareAndSet(MemoryStore):
    """Defect: a scheduler's tick fires whatever ``next_run_at`` the scheduler holds now.

    As if the fire checked only that the scheduler exists: a worker that read a tick
    another worker already fired writes that tick's jobs a second time.
    """

    async def fire_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        expected: float,
        next_run_at: float | None,
        jobs: Sequence[NewJob],
        now: float,
    ) -> bool:
        for record in await self.get_schedulers(queue):
            if record.id == scheduler_id and record.next_run_at is not None:
                return await super().fire_scheduler(
                    queue, scheduler_id, record.next_run_at, next_run_at, jobs, now
                )
        return False


BROKEN_STORES: dict[str, type[MemoryStore]] = {
    "ForgetsParentCounter": ForgetsParentCounter,
    "HandsJobsOutTwice": HandsJobsOutTwice,
    "IgnoresLockTokens": IgnoresLockTokens,
    "WritesFlowsJobByJob": WritesFlowsJobByJob,
    "IgnoresTickCompareAndSet": IgnoresTickCompareAndSet,
}


class ClaimsBlockingWakeup(MemoryStore):
    """Defect: declares ``blocking_wakeup``, but an idle wait sleeps out its whole timeout
    instead of waking when work arrives."""

    capabilities = StoreCapabilities(blocking_wakeup=True)

    async def wait_for_work(self, queue: str, timeout: float) -> None:
        await anyio.sleep(timeout)


class ClaimsSharing(MemoryStore):
    """Defect: declares ``shared`` and ``cross_process_events``, but each object keeps its
    own jobs in its own memory, so a second object never sees them."""

    capabilities = StoreCapabilities(shared=True, cross_process_events=True)


class CountsMissIgnoredChildren(MemoryStore):
    """Defect: the ignore policy forgets to move the parent's counters, so a child whose
    failure the parent ignores is still counted as pending."""

    async def get_dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        counts = await super().get_dependency_counts(queue, job_id)
        counts["pending"] += counts["ignored"]
        counts["ignored"] = 0
        return counts


class PagesSkipTheChildAfterTheCursor(MemoryStore):
    """Defect: a page after the first starts one child too late (``>=`` read as ``>``
    once too often), so a walk through the pages never sees the first child of each
    following page."""

    async def get_dependency_page(
        self, queue: str, job_id: str, *, cursor: str | None, limit: int
    ) -> DependencyPage:
        if cursor is None:
            return await super().get_dependency_page(queue, job_id, cursor=cursor, limit=limit)
        page = await super().get_dependency_page(queue, job_id, cursor=cursor, limit=limit + 1)
        return DependencyPage(page.dependencies[1:], page.next_cursor)


class CountsOneFinishPerCall(MemoryStore):
    """Defect: the per-minute metrics count a call that finishes several jobs as one."""

    def __init__(self) -> None:
        super().__init__()
        record = self._backend.record_metric

        def once_per_call(queue: str, kind: MetricKind, minute: int, count: int) -> None:
            record(queue, kind, minute, min(count, 1))

        self._backend.record_metric = once_per_call  # type: ignore[method-assign]


class GroupCountsKeepRemovedJobs(MemoryStore):
    """Defect: a finished job of a group that is removed stays in its group's counts."""

    def __init__(self) -> None:
        super().__init__()
        backend = self._backend
        delete = backend.delete

        def delete_but_count(queue: str, job_id: str) -> None:
            job = backend.jobs.get((queue, job_id))
            delete(queue, job_id)
            finished = (JobState.COMPLETED, JobState.FAILED)
            if job is not None and job.group_id is not None and job.state in finished:
                counts = backend._q(queue).group_states.setdefault(job.group_id, {})
                counts[job.state] = counts.get(job.state, 0) + 1

        backend.delete = delete_but_count  # type: ignore[method-assign]


class SearchDropsTheLastJobOfAPage(MemoryStore):
    """Defect: every page but the last leaves out its last job, though the cursor moves on
    past it, so a walk through the pages never sees those jobs."""

    async def search_jobs(
        self,
        queue: str,
        *,
        text: str | None,
        name: str | None,
        states: Sequence[JobState] | None,
        limit: int,
        cursor: str | None,
    ) -> SearchPage:
        page = await super().search_jobs(
            queue, text=text, name=name, states=states, limit=limit, cursor=cursor
        )
        if page.next_cursor is not None and page.jobs:
            return SearchPage(page.jobs[:-1], page.next_cursor)
        return page


class _CountsASharedJobTwice(Engine):
    """The transition code of :class:`ReleasesDagDependencyTwice`."""

    def _child_processed(self, child: JobRecord, link: ParentLink, now: float) -> None:
        pending = self.b.get_dependency(link.queue, link.id, child.queue, child.id)
        super()._child_processed(child, link, now)
        if pending is None or pending.status != "pending" or len(self._links(child)) < 2:
            return
        # The defect: the parent's count of pending dependencies drops once more, as if
        # the shared job were released twice; its next pending dependency is gone.
        for dep in self.b.dependencies(link.queue, link.id):
            if dep.status == "pending":
                self.b.delete_dependency(link.queue, link.id, dep.queue, dep.id)
                self._release_check(link.queue, link.id, now)
                return


class ReleasesDagDependencyTwice(MemoryStore):
    """Defect: a DAG dependency released twice.

    When a job that several jobs depend on completes, each dependent counts it as two
    resolved dependencies (a counter decremented once per parent link and once more),
    so a dependent waiting for it and for others runs before the others have finished
    and never sees their values.
    """

    def __init__(self) -> None:
        super().__init__()
        self._engine = _CountsASharedJobTwice(self._backend)


class RetriesCancelledJobs(MemoryStore):
    """Defect: a failed attempt that asks for a retry is retried even when the job has a
    cancel request: the request is only honoured by final failures, so a cancelled job
    whose worker had not yet learned of the cancel runs again."""

    async def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        retried = [item.id for item in failures if item.retry_at is not None]
        for job_id in await self.cancel_requests(queue, retried):
            record = self._backend.get(queue, job_id)
            if record is not None:
                record.cancel_reason = None
        return await super().fail_jobs(queue, failures, now)


class _AttemptCountingEngine(Engine):
    def park_job(self, queue: str, job_id: str, token: str, now: float) -> bool:
        parked = super().park_job(queue, job_id, token, now)
        if parked:
            job = self.b.get(queue, job_id)
            assert job is not None
            job.attempts_made += 1
            self.b.save(job, job.state)
        return parked


class ParkCountsAnAttempt(MemoryStore):
    """Defect: parking a step job (``wait_for_children``) counts an attempt, as if the
    park were a failed try: a job with ``attempts=2`` that parks once has one left."""

    def __init__(self) -> None:
        super().__init__()
        self._engine = _AttemptCountingEngine(self._backend)


class _RetrySkippingRunningParents(Engine):
    def _retry(self, job: JobRecord, now: float) -> None:
        kept = {}
        for link in self._links(job):
            parent = self.b.get(link.queue, link.id)
            if parent is not None and parent.state is JobState.ACTIVE:
                kept[link] = self.b.get_dependency(link.queue, link.id, job.queue, job.id)
        super()._retry(job, now)
        for link, dep in kept.items():
            if dep is not None:
                self.b.put_dependency(link.queue, link.id, dep)


class RetryForgetsRunningParents(MemoryStore):
    """Defect: retrying a failed child puts its dependency back only in parents that have
    not started, so a step job still running when its child is retried no longer waits
    for that child, and reduces without its value."""

    def __init__(self) -> None:
        super().__init__()
        self._engine = _RetrySkippingRunningParents(self._backend)


class ReleasesActiveParents(_CompletesThroughCompleteJobs):
    """Defect: a child's completion releases its parent even while the parent is still
    ``active`` (a step job whose handler runs), so the running job is handed back to
    ``waiting`` under its handler and runs twice."""

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        children = [await self.get_job(queue, item.id) for item in completions]
        applied = await super().complete_jobs(queue, completions, now)
        for child, ok in zip(children, applied, strict=True):
            if not ok or child is None or child.parent_id is None or child.parent_queue is None:
                continue
            parent = await self.get_job(child.parent_queue, child.parent_id)
            if parent is None or parent.state is not JobState.ACTIVE or parent.lock_token is None:
                continue
            counts = await self.get_dependency_counts(parent.queue, parent.id)
            if counts["pending"] == 0:
                await self.release_jobs(parent.queue, [Release(parent.id, parent.lock_token)], now)
        return applied


class _SharingEngine(Engine):
    """The transition code of :class:`HandsOutItsOwnRecords`."""

    def _start(self, job: JobRecord, token: str, lock_until: float, now: float) -> JobRecord:
        super()._start(job, token, lock_until, now)
        return job  # the defect: the stored record itself, not a copy

    def get_job(self, queue: str, job_id: str) -> JobRecord | None:
        return self.b.get(queue, job_id)


class HandsOutItsOwnRecords(MemoryStore):
    """Defect: a take or a read returns the record the store holds, not a copy, so a
    caller that changes what it got changes the stored job."""

    def __init__(self) -> None:
        super().__init__()
        self._engine = _SharingEngine(self._backend)


class KeepsOnlyTheOptions(MemoryStore):
    """Defect: the options text is rewritten from the options it holds, so whatever the
    core keeps beside them (a job's trace context) is lost."""

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        return await super().add_jobs(
            [
                [dataclasses.replace(job, opts=options_json(parse_opts(job.opts))) for job in group]
                for group in groups
            ],
            now,
        )


class DeduplicatesByReadThenWrite(MemoryStore):
    """Defect: deduplication is a read, then a write, in two steps.

    The store looks up the job holding the deduplication id, then adds the new job in a
    separate call, so two adds of one id that interleave both find the id free and both
    write a job.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[tuple[str, str], str] = {}

    async def add_deduplicated(
        self, new: NewJob, dedup: DeduplicationKey, now: float
    ) -> DeduplicatedAdd:
        key = (new.queue, dedup.id)
        holder = self._held.get(key)
        live = None if holder is None else await self.get_job(new.queue, holder)
        await anyio.lowlevel.checkpoint()
        if live is not None and not live.state.finished:
            return DeduplicatedAdd(live.id, False)
        (written,) = await self.add_jobs([[new]], now)
        if written:
            self._held[key] = new.id
        return DeduplicatedAdd(new.id, written)


class WritesDeduplicatedNodes(MemoryStore):
    """Defect: ``add_dag`` ignores its deduplication entries.

    A flow's deduplicated leaf is written as a new job even while a live job holds its
    id, so the flow's parent waits for a duplicate instead of the live job (and the id
    is never taken by the new leaf either).
    """

    async def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        await super().add_dag(jobs, edges, now)
        return [DeduplicatedAdd(jobs[index].id, True) for index, _ in deduplication]


class CapsEachTakeNotTheQueue(MemoryStore):
    """Defect: the global concurrency caps each take, not the queue's active jobs.

    Every call may take up to the limit, whatever is already active, so two workers (or
    two takes of one worker) together run more jobs than the queue allows.
    """

    async def take_jobs(
        self,
        queue: str,
        *,
        limit: int,
        token: str,
        lock_until: float,
        now: float,
        rate_limit: tuple[int, float] | None = None,
    ) -> TakeResult:
        cap = await self.get_global_concurrency(queue)
        if cap is None:
            return await super().take_jobs(
                queue,
                limit=limit,
                token=token,
                lock_until=lock_until,
                now=now,
                rate_limit=rate_limit,
            )
        await self.set_global_concurrency(queue, None)
        try:
            return await super().take_jobs(
                queue,
                limit=min(limit, cap),
                token=token,
                lock_until=lock_until,
                now=now,
                rate_limit=rate_limit,
            )
        finally:
            await self.set_global_concurrency(queue, cap)


class TakesBeforeCompleting(MemoryStore):
    """Defect: COMPLETE AND TAKE takes first and completes after.

    Each call is right alone, but the take still counts the jobs being completed as
    active: on a queue at its global concurrency the worker's combined call takes
    nothing, and a parent the completions release waits for another take.
    """

    async def complete_and_take(
        self, queue: str, completions: Sequence[Completion], now: float, **take: Any
    ) -> tuple[list[bool], TakeResult]:
        taken = await self.take_jobs(queue, now=now, **take)
        return await self.complete_jobs(queue, completions, now), taken


class DropsTheManualRateLimit(MemoryStore):
    """Defect: the queue's manual rate limit is accepted and forgotten.

    A handler's ``RateLimitedError`` hands its job back, but the queue goes on taking
    jobs at once, so the outside limit the handler hit is hammered again.
    """

    async def rate_limit_queue(self, queue: str, until: float) -> None:
        return None


class ForgetsJobGroups(MemoryStore):
    """Defect: the store writes a new job without its group (a field added to the
    protocol and missed in the add path), so every job waits in the queue's own lane:
    taken in arrival order, one tenant's backlog ahead of everyone else's jobs."""

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        return await super().add_jobs(
            [[dataclasses.replace(new, group_id=None) for new in group] for group in groups], now
        )


class _ServesLanesByName(Engine):
    def _take_by_lanes(
        self, queue: str, limit: int, token: str, lock_until: float, now: float
    ) -> TakeResult:
        # The defect: a lane's served number is never kept, so lanes are always
        # served by group id, and the first group takes every turn it has jobs for.
        put_lane = self.b.put_lane
        self.b.put_lane = lambda queue, group, lane: None  # type: ignore[method-assign]
        try:
            return super()._take_by_lanes(queue, limit, token, lock_until, now)
        finally:
            self.b.put_lane = put_lane  # type: ignore[method-assign]


class ServesLanesByName(MemoryStore):
    """Defect: lanes are served by name instead of round-robin: within one take the
    rotation works, but no take remembers which lane it served, so every take starts
    again at the first group by name and a backlog there delays every other group."""

    def __init__(self) -> None:
        super().__init__()
        self._engine = _ServesLanesByName(self._backend)


class KeepsGroupLimitsOnlyForShow(MemoryStore):
    """Defect: group limits are stored and read back, but the take never sees them, so
    every group runs as many jobs at once as the workers can take."""

    def __init__(self) -> None:
        super().__init__()
        self._shown: dict[str, tuple[int | None, tuple[int, float] | None]] = {}

    async def set_group_limits(
        self, queue: str, concurrency: int | None, rate_limit: tuple[int, float] | None
    ) -> None:
        self._shown[queue] = (concurrency, rate_limit)
        await super().set_group_limits(queue, None, None)

    async def get_group_limits(self, queue: str) -> GroupLimits:
        return GroupLimits(*self._shown.get(queue, (None, None)))


class TrustsTheDagsShape(MemoryStore):
    """Defect: the store trusts the core to have checked a DAG's shape, so an edge whose
    parent is an existing job instead of a new one is not refused: the DAG is written
    without it, and the caller never learns that a dependency it asked for is missing."""

    async def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        new = {(job.queue, job.id) for job in jobs}
        kept = [edge for edge in edges if (edge.parent_queue, edge.parent_id) in new]
        return await super().add_dag(jobs, kept, now, deduplication)
