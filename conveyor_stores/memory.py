"""``MemoryStore``: the whole store in one process's memory, for tests and prototypes.

Each transition runs the reference :class:`~conveyor_core.engine.Engine` synchronously
inside one step of the event loop, so it is atomic without locks. Nothing survives the
process; one ``MemoryStore`` object is one database.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from conveyor_core.engine import Engine, Lane, fold_ascii
from conveyor_core.errors import StoreClosedError
from conveyor_core.models import JobState
from conveyor_core.store import (
    DEPENDENCY_STATUSES,
    METRICS_MINUTES,
    ChildDependency,
    Completion,
    DagEdge,
    DeduplicatedAdd,
    DeduplicationKey,
    DependencyPage,
    DependencyStatus,
    DueSchedulers,
    EventRecord,
    EventSubscription,
    Failure,
    GroupLimits,
    JobRecord,
    MetricKind,
    NewJob,
    ParentLink,
    Release,
    SchedulerRecord,
    SearchPage,
    StallOutcome,
    StoreCapabilities,
    TakeResult,
)

OFFLOAD_JOBS = 256
"""An ``add_jobs`` of this many jobs or more runs on a worker thread: writing 1,700 jobs
in one step would hold the event loop for tens of milliseconds."""

P = ParamSpec("P")
T = TypeVar("T")

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING_CHILDREN = JobState.WAITING_CHILDREN


@dataclass(slots=True)
class _QueueData:
    """The indexes of one queue."""

    waiting_heap: list[tuple[int, int, str]] = field(default_factory=list)
    waiting: dict[str, tuple[int, int]] = field(default_factory=dict)
    delayed_heap: list[tuple[float, str]] = field(default_factory=list)
    delayed: dict[str, float] = field(default_factory=dict)
    active: dict[str, JobRecord] = field(default_factory=dict)
    completed: dict[str, None] = field(default_factory=dict)
    failed: dict[str, None] = field(default_factory=dict)
    waiting_children: dict[str, None] = field(default_factory=dict)
    paused: bool = False
    window: tuple[float, int] | None = None
    concurrency: int | None = None
    limited_until: float | None = None
    group_heaps: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    """The waiting jobs of each group, in take order (``waiting_heap`` holds the jobs
    without a group); entries whose key no longer matches ``waiting`` are stale."""
    group_waiting: dict[str, int] = field(default_factory=dict)
    group_states: dict[str, dict[JobState, int]] = field(default_factory=dict)
    lanes: dict[str, Lane] = field(default_factory=dict)
    ready: list[tuple[int, str]] = field(default_factory=list)
    """The groups with a waiting job by when their lane was last served; an entry whose
    group has none, or whose lane was served since, is stale."""
    served: int = 0
    group_limits: GroupLimits = field(default_factory=GroupLimits)

    def size(self) -> int:
        return (
            len(self.waiting)
            + len(self.delayed)
            + len(self.active)
            + len(self.completed)
            + len(self.failed)
            + len(self.waiting_children)
        )


class _Dependencies:
    """One parent's dependency records: by child, by insertion position, and counted
    per status."""

    __slots__ = ("counts", "keys", "last", "positions", "records")

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, ChildDependency]] = {}
        self.keys: dict[int, tuple[str, str]] = {}
        self.positions: list[int] = []
        """Positions ascending, appended to; a deleted record's position stays (a page
        skips it) until more than half are such, then the list is compacted, so a
        delete costs O(1) amortised."""
        self.last = 0
        self.counts: dict[DependencyStatus, int] = dict.fromkeys(DEPENDENCY_STATUSES, 0)

    def put(self, dep: ChildDependency) -> None:
        key = (dep.queue, dep.id)
        old = self.records.get(key)
        if old is None:
            self.last += 1
            pos = self.last
            self.keys[pos] = key
            self.positions.append(pos)
        else:
            pos = old[0]
            self.counts[old[1].status] -= 1
        self.records[key] = (pos, dep)
        self.counts[dep.status] += 1

    def delete(self, key: tuple[str, str]) -> None:
        old = self.records.pop(key, None)
        if old is None:
            return
        pos, dep = old
        del self.keys[pos]
        self.counts[dep.status] -= 1
        if len(self.positions) > 2 * len(self.keys) + 16:
            self.positions = [p for p in self.positions if p in self.keys]

    def page(self, after: int | None, limit: int) -> list[tuple[int, ChildDependency]]:
        positions, keys, records = self.positions, self.keys, self.records
        index = 0 if after is None else bisect.bisect_right(positions, after)
        out: list[tuple[int, ChildDependency]] = []
        while index < len(positions) and len(out) < limit:
            key = keys.get(positions[index])
            if key is not None:
                out.append((positions[index], records[key][1]))
            index += 1
        return out


class MemoryBackend:
    """Dict-and-heap implementation of :class:`~conveyor_core.engine.Backend`."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], JobRecord] = {}
        self.queues_: dict[str, _QueueData] = {}
        self.deps: dict[tuple[str, str], _Dependencies] = {}
        self.links: dict[tuple[str, str], list[ParentLink]] = {}
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.order = 0
        self.listened: dict[str, int] = {}
        self.events: list[EventRecord] = []
        self.woken: set[str] = set()
        self.metrics_: dict[tuple[str, str], dict[int, int]] = {}
        self.schedulers_: dict[str, dict[str, SchedulerRecord]] = {}
        self.dedup: dict[str, dict[str, tuple[str, float | None]]] = {}

    def _q(self, queue: str) -> _QueueData:
        data = self.queues_.get(queue)
        if data is None:
            data = self.queues_[queue] = _QueueData()
        return data

    # ---------------------------------------------------------------- records

    def get(self, queue: str, job_id: str) -> JobRecord | None:
        return self.jobs.get((queue, job_id))

    def _unindex(self, q: _QueueData, job: JobRecord, state: JobState) -> None:
        job_id, group = job.id, job.group_id
        if group is not None:
            # Only the states a group has jobs in are kept, and only groups with jobs.
            by_state = q.group_states[group]
            left = by_state[state] - 1
            if left:
                by_state[state] = left
            else:
                del by_state[state]
                if not by_state:
                    del q.group_states[group]
        if state is WAITING:
            if q.waiting.pop(job_id, None) is not None and group is not None:
                left = q.group_waiting[group] - 1
                if left:
                    q.group_waiting[group] = left
                else:
                    del q.group_waiting[group]
        elif state is DELAYED:
            q.delayed.pop(job_id, None)
        elif state is ACTIVE:
            q.active.pop(job_id, None)
        elif state is COMPLETED:
            q.completed.pop(job_id, None)
        elif state is FAILED:
            q.failed.pop(job_id, None)
        else:
            q.waiting_children.pop(job_id, None)

    def _index(self, q: _QueueData, job: JobRecord) -> None:
        state, group = job.state, job.group_id
        if group is not None:
            by_state = q.group_states.get(group)
            if by_state is None:
                q.group_states[group] = {state: 1}
            else:
                by_state[state] = by_state.get(state, 0) + 1
        if state is WAITING:
            self.order += 1
            key = (job.priority, -self.order if job.lifo else self.order)
            q.waiting[job.id] = key
            if group is None:
                heapq.heappush(q.waiting_heap, (key[0], key[1], job.id))
            else:
                heapq.heappush(q.group_heaps.setdefault(group, []), (key[0], key[1], job.id))
                before = q.group_waiting.get(group, 0)
                q.group_waiting[group] = before + 1
                if not before:
                    lane = q.lanes.get(group)
                    heapq.heappush(q.ready, (lane.served if lane else 0, group))
        elif state is DELAYED:
            run_at = job.run_at if job.run_at is not None else 0.0
            q.delayed[job.id] = run_at
            heapq.heappush(q.delayed_heap, (run_at, job.id))
        elif state is ACTIVE:
            q.active[job.id] = job
        elif state is COMPLETED:
            q.completed[job.id] = None
        elif state is FAILED:
            q.failed[job.id] = None
        else:
            q.waiting_children[job.id] = None

    def save(self, job: JobRecord, old_state: JobState | None, *, requeue: bool = False) -> None:
        q = self._q(job.queue)
        if old_state is None:
            self.jobs[(job.queue, job.id)] = job
            self._index(q, job)
            return
        self.jobs[(job.queue, job.id)] = job
        if old_state is job.state and not requeue and job.state is not DELAYED:
            if job.state is ACTIVE:
                q.active[job.id] = job
            return
        self._unindex(q, job, old_state)
        self._index(q, job)

    def delete(self, queue: str, job_id: str) -> None:
        job = self.jobs.pop((queue, job_id), None)
        if job is not None:
            self._unindex(self._q(queue), job, job.state)
        key = (queue, job_id)
        self.logs.pop(key, None)
        self.deps.pop(key, None)
        self.links.pop(key, None)

    def first_waiting(self, queue: str, limit: int) -> list[JobRecord]:
        q = self._q(queue)
        heap, waiting = q.waiting_heap, q.waiting
        out: list[JobRecord] = []
        while heap and len(out) < limit:
            priority, order, job_id = heapq.heappop(heap)
            if waiting.get(job_id) == (priority, order):
                out.append(self.jobs[(queue, job_id)])
        if len(heap) > 2 * len(waiting) + 64:
            q.waiting_heap = [e for e in heap if waiting.get(e[2]) == (e[0], e[1])]
            heapq.heapify(q.waiting_heap)
        return out

    def _first_waiting_in(self, queue: str, group: str | None) -> JobRecord | None:
        q = self._q(queue)
        heap = q.waiting_heap if group is None else q.group_heaps.get(group)
        if heap is None:
            return None
        waiting = q.waiting
        while heap:
            priority, order, job_id = heap[0]
            if waiting.get(job_id) == (priority, order):
                return self.jobs[(queue, job_id)]
            heapq.heappop(heap)
            # Stale entries below the first (jobs that left the group's waiting jobs
            # other than by a take) are dropped when they outnumber the live ones.
            if group is not None and len(heap) > 2 * q.group_waiting.get(group, 0) + 64:
                heap[:] = [e for e in heap if waiting.get(e[2]) == (e[0], e[1])]
                heapq.heapify(heap)
        if group is not None:
            del q.group_heaps[group]
        return None

    def first_waiting_each(
        self, queue: str, groups: Sequence[str | None]
    ) -> list[JobRecord | None]:
        return [self._first_waiting_in(queue, group) for group in groups]

    def has_grouped_waiting(self, queue: str) -> bool:
        return bool(self._q(queue).group_waiting)

    def ready_lanes(self, queue: str, limit: int) -> list[tuple[str, Lane]]:
        q = self._q(queue)
        lanes, heap, waiting = q.lanes, q.ready, q.group_waiting
        ready: list[tuple[int, str]] = []
        while heap and len(ready) < limit:
            served, group = heapq.heappop(heap)
            lane = lanes.get(group)
            current = group in waiting and (lane.served if lane else 0) == served
            if current and (not ready or ready[-1] != (served, group)):
                ready.append((served, group))
        for entry in ready:
            heapq.heappush(heap, entry)
        if self._first_waiting_in(queue, None) is not None:
            own = lanes.get("")
            ready.append((own.served if own else 0, ""))
            ready.sort()
        return [(g, lanes.get(g) or Lane()) for _, g in ready[:limit]]

    def put_lane(self, queue: str, group: str, lane: Lane) -> None:
        q = self._q(queue)
        q.lanes[group] = lane
        if group and group in q.group_waiting:
            heapq.heappush(q.ready, (lane.served, group))

    def next_served(self, queue: str) -> int:
        q = self._q(queue)
        q.served += 1
        return q.served

    def count_group(self, queue: str, group: str, state: JobState) -> int:
        return self._q(queue).group_states.get(group, {}).get(state, 0)

    def group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        return {group: dict(counts) for group, counts in self._q(queue).group_states.items()}

    def group_limits(self, queue: str) -> GroupLimits:
        return self._q(queue).group_limits

    def set_group_limits(self, queue: str, limits: GroupLimits) -> None:
        self._q(queue).group_limits = limits

    def due_delayed(self, queue: str, now: float) -> list[JobRecord]:
        q = self._q(queue)
        heap, delayed = q.delayed_heap, q.delayed
        due: dict[str, JobRecord] = {}
        while heap and heap[0][0] <= now:
            run_at, job_id = heapq.heappop(heap)
            # A job saved again while delayed has an entry per save: one is due.
            if delayed.get(job_id) == run_at:
                due[job_id] = self.jobs[(queue, job_id)]
        return list(due.values())

    def next_run_at(self, queue: str) -> float | None:
        q = self._q(queue)
        heap, delayed = q.delayed_heap, q.delayed
        while heap and delayed.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expired_active(self, queue: str, now: float) -> list[JobRecord]:
        return [
            job
            for job in self._q(queue).active.values()
            if job.lock_until is not None and job.lock_until < now
        ]

    def _ids(self, q: _QueueData, state: JobState) -> list[str]:
        if state is WAITING:
            return [i for i, _ in sorted(q.waiting.items(), key=lambda item: item[1])]
        if state is DELAYED:
            return [i for i, _ in sorted(q.delayed.items(), key=lambda item: (item[1], item[0]))]
        if state is ACTIVE:
            return list(q.active)
        if state is COMPLETED:
            return list(reversed(q.completed))
        if state is FAILED:
            return list(reversed(q.failed))
        return list(q.waiting_children)

    def list_jobs(
        self, queue: str, state: JobState, start: int = 0, end: int | None = None
    ) -> list[JobRecord]:
        ids = self._ids(self._q(queue), state)[start : None if end is None else end + 1]
        return [self.jobs[(queue, i)] for i in ids]

    def count(self, queue: str, state: JobState) -> int:
        q = self._q(queue)
        if state is WAITING:
            return len(q.waiting)
        if state is DELAYED:
            return len(q.delayed)
        if state is ACTIVE:
            return len(q.active)
        if state is COMPLETED:
            return len(q.completed)
        if state is FAILED:
            return len(q.failed)
        return len(q.waiting_children)

    def finished_beyond(self, queue: str, state: JobState, keep: int) -> list[str]:
        q = self._q(queue)
        finished = q.completed if state is COMPLETED else q.failed
        excess = len(finished) - keep
        if excess <= 0:
            return []
        out: list[str] = []
        for job_id in finished:
            if len(out) >= excess:
                break
            out.append(job_id)
        return out

    def clean_candidates(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        q = self._q(queue)
        ids = self._ids(q, state)
        if state.finished:
            ids.reverse()
        out: list[str] = []
        for job_id in ids:
            job = self.jobs[(queue, job_id)]
            stamp = job.finished_at if state.finished else job.created_at
            if stamp is not None and stamp <= older_than:
                out.append(job_id)
                if limit is not None and len(out) >= limit:
                    break
        return out

    # ---------------------------------------------------------------- dependencies

    def dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        deps = self.deps.get((queue, job_id))
        return [] if deps is None else [dep for _, dep in deps.records.values()]

    def get_dependency(
        self, queue: str, job_id: str, child_queue: str, child_id: str
    ) -> ChildDependency | None:
        deps = self.deps.get((queue, job_id))
        found = None if deps is None else deps.records.get((child_queue, child_id))
        return None if found is None else found[1]

    def put_dependency(self, queue: str, job_id: str, dep: ChildDependency) -> None:
        deps = self.deps.get((queue, job_id))
        if deps is None:
            deps = self.deps[(queue, job_id)] = _Dependencies()
        deps.put(dep)

    def delete_dependency(self, queue: str, job_id: str, child_queue: str, child_id: str) -> None:
        deps = self.deps.get((queue, job_id))
        if deps is not None:
            deps.delete((child_queue, child_id))

    def parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        return list(self.links.get((queue, job_id), ()))

    def add_parent_link(self, queue: str, job_id: str, link: ParentLink) -> None:
        self.links.setdefault((queue, job_id), []).append(link)

    def delete_parent_links(self, queue: str, job_id: str) -> None:
        self.links.pop((queue, job_id), None)

    def pending_count(self, queue: str, job_id: str) -> int:
        deps = self.deps.get((queue, job_id))
        return 0 if deps is None else deps.counts["pending"]

    def dependency_page(
        self, queue: str, job_id: str, after: int | None, limit: int
    ) -> list[tuple[int, ChildDependency]]:
        deps = self.deps.get((queue, job_id))
        if deps is None:
            return []
        return deps.page(after, limit)

    def dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        deps = self.deps.get((queue, job_id))
        return {} if deps is None else dict(deps.counts)

    # ---------------------------------------------------------------- logs, queues

    def add_log(self, queue: str, job_id: str, line: str) -> int:
        log = self.logs.setdefault((queue, job_id), [])
        log.append(line)
        return len(log)

    def get_logs(self, queue: str, job_id: str, start: int, end: int | None) -> list[str]:
        return self.logs.get((queue, job_id), [])[start : None if end is None else end + 1]

    def is_paused(self, queue: str) -> bool:
        return self._q(queue).paused

    def set_paused(self, queue: str, paused: bool) -> None:
        self._q(queue).paused = paused

    def rate_window(self, queue: str) -> tuple[float, int] | None:
        return self._q(queue).window

    def set_rate_window(self, queue: str, start: float, count: int) -> None:
        self._q(queue).window = (start, count)

    def forget_queue(self, queue: str) -> None:
        self.queues_.pop(queue, None)
        self.dedup.pop(queue, None)
        self.metrics_.pop((queue, "completed"), None)
        self.metrics_.pop((queue, "failed"), None)

    def queues(self) -> list[str]:
        return sorted(name for name, q in self.queues_.items() if q.paused or q.size())

    def emit(
        self, type: str, queue: str, job_id: str | None, data: dict[str, Any] | None, now: float
    ) -> None:
        if queue in self.listened:
            self.events.append(EventRecord(type, queue, job_id, data or {}, now))

    def wake(self, queue: str) -> None:
        self.woken.add(queue)

    def global_concurrency(self, queue: str) -> int | None:
        return self._q(queue).concurrency

    def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        self._q(queue).concurrency = concurrency

    def limited_until(self, queue: str) -> float | None:
        return self._q(queue).limited_until

    def set_limited_until(self, queue: str, until: float) -> None:
        self._q(queue).limited_until = until

    def get_deduplication(self, queue: str, dedup_id: str) -> tuple[str, float | None] | None:
        return self.dedup.get(queue, {}).get(dedup_id)

    def put_deduplication(
        self, queue: str, dedup_id: str, job_id: str, expires_at: float | None
    ) -> None:
        self.dedup.setdefault(queue, {})[dedup_id] = (job_id, expires_at)

    # ---------------------------------------------------------------- schedulers

    def get_scheduler(self, queue: str, scheduler_id: str) -> SchedulerRecord | None:
        return self.schedulers_.get(queue, {}).get(scheduler_id)

    def put_scheduler(self, record: SchedulerRecord) -> None:
        self.schedulers_.setdefault(record.queue, {})[record.id] = record

    def delete_scheduler(self, queue: str, scheduler_id: str) -> bool:
        return self.schedulers_.get(queue, {}).pop(scheduler_id, None) is not None

    def schedulers(self, queue: str) -> list[SchedulerRecord]:
        return [record for _, record in sorted(self.schedulers_.get(queue, {}).items())]

    def schedulers_by_next_run(self, queue: str, limit: int) -> list[SchedulerRecord]:
        timed = [r for r in self.schedulers_.get(queue, {}).values() if r.next_run_at is not None]
        timed.sort(key=lambda r: (r.next_run_at, r.id))
        return timed[:limit]

    def delete_schedulers(self, queue: str) -> None:
        self.schedulers_.pop(queue, None)

    # ---------------------------------------------------------------- operating

    def record_metric(self, queue: str, kind: MetricKind, minute: int, count: int) -> None:
        series = self.metrics_.setdefault((queue, kind), {})
        if minute not in series:
            oldest = minute - METRICS_MINUTES
            for old in [m for m in series if m < oldest]:
                del series[old]
        series[minute] = series.get(minute, 0) + count

    def metrics(self, queue: str, kind: MetricKind, start: int, end: int) -> dict[int, int]:
        series = self.metrics_.get((queue, kind), {})
        return {m: n for m, n in sorted(series.items()) if start <= m <= end and n}

    def search(
        self,
        queue: str,
        folded_text: str | None,
        name: str | None,
        states: Sequence[JobState] | None,
        limit: int,
        after: tuple[float, str] | None,
    ) -> tuple[list[JobRecord], tuple[float, str] | None]:
        wanted = None if states is None else set(states)
        found: list[JobRecord] = []
        for (q, _), job in self.jobs.items():
            if q != queue or (name is not None and job.name != name):
                continue
            if wanted is not None and job.state not in wanted:
                continue
            if after is not None and (job.created_at, job.id) >= after:
                continue
            if folded_text is not None and not any(
                folded_text in fold_ascii(field) for field in (job.id, job.name, job.data)
            ):
                continue
            found.append(job)
        found.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        if len(found) <= limit:
            return found, None
        last = found[limit - 1]
        return found[:limit], (last.created_at, last.id)


class _Subscription:
    """A memory subscription: events are pushed into a bounded buffer."""

    MAX_BUFFER = 100_000

    def __init__(self, store: MemoryStore, queue: str) -> None:
        self._store = store
        self.queue = queue
        self._buffer: asyncio.Queue[EventRecord | None] = asyncio.Queue()
        self._closed = False

    def push(self, event: EventRecord | None) -> None:
        if self._buffer.qsize() >= self.MAX_BUFFER:
            self._buffer.get_nowait()
        self._buffer.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[EventRecord]:
        return self

    async def __anext__(self) -> EventRecord:
        if self._closed:
            raise StopAsyncIteration
        event = await self._buffer.get()
        if event is None:
            self._closed = True
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if not self._closed:
            self._store._unsubscribe(self)
            self.push(None)


class MemoryStore:
    """An in-process store. ``async with MemoryStore() as store: ...``."""

    capabilities = StoreCapabilities(blocking_wakeup=True)

    def __init__(self) -> None:
        self._backend = MemoryBackend()
        self._engine = Engine(self._backend)
        self._wakers: dict[str, asyncio.Event] = {}
        self._subscriptions: dict[str, set[_Subscription]] = {}
        self._connected = False
        self._offloaded: asyncio.Event | None = None

    def __repr__(self) -> str:
        return "MemoryStore()"

    async def __aenter__(self) -> MemoryStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        for subs in list(self._subscriptions.values()):
            for sub in list(subs):
                await sub.aclose()
        for event in self._wakers.values():
            event.set()
        self._wakers.clear()

    # ---------------------------------------------------------------- plumbing

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` as one atomic step of the event loop, after any big add on a thread."""
        while self._offloaded is not None:
            await self._offloaded.wait()
        return self._run(fn, *args, **kwargs)

    def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if not self._connected:
            raise StoreClosedError("MemoryStore is not connected: use 'async with store:'")
        try:
            return fn(*args, **kwargs)
        finally:
            self._flush()

    def _flush(self) -> None:
        backend = self._backend
        if backend.events:
            events, backend.events = backend.events, []
            for event in events:
                for sub in self._subscriptions.get(event.queue, ()):
                    sub.push(event)
        if backend.woken:
            woken, backend.woken = backend.woken, set()
            for queue in woken:
                waker = self._wakers.pop(queue, None)
                if waker is not None:
                    waker.set()

    def _unsubscribe(self, sub: _Subscription) -> None:
        subs = self._subscriptions.get(sub.queue)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscriptions[sub.queue]
        count = self._backend.listened.get(sub.queue, 0) - 1
        if count > 0:
            self._backend.listened[sub.queue] = count
        else:
            self._backend.listened.pop(sub.queue, None)

    # ---------------------------------------------------------------- protocol

    async def _add(self, size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """An add of ``size`` jobs: a big one runs on a worker thread, so the event loop
        keeps turning; every other call waits for it (see _call), which keeps it atomic."""
        if size < OFFLOAD_JOBS:
            return await self._call(fn, *args, **kwargs)
        while self._offloaded is not None:
            await self._offloaded.wait()
        if not self._connected:
            raise StoreClosedError("MemoryStore is not connected: use 'async with store:'")
        self._offloaded = finished = asyncio.Event()
        try:
            return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))
        finally:
            self._offloaded = None
            finished.set()
            self._flush()

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        size = sum(len(group) for group in groups)
        return await self._add(size, self._engine.add_jobs, groups, now)

    async def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        return await self._add(len(jobs), self._engine.add_dag, jobs, edges, now, deduplication)

    async def add_children(
        self,
        queue: str,
        job_id: str,
        token: str,
        groups: Sequence[Sequence[NewJob]],
        now: float,
    ) -> list[bool]:
        return await self._call(self._engine.add_children, queue, job_id, token, groups, now)

    async def park_job(self, queue: str, job_id: str, token: str, now: float) -> bool:
        return await self._call(self._engine.park_job, queue, job_id, token, now)

    async def add_deduplicated(
        self, new: NewJob, dedup: DeduplicationKey, now: float
    ) -> DeduplicatedAdd:
        return await self._call(self._engine.add_deduplicated, new, dedup, now)

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
        return await self._call(
            self._engine.take_jobs,
            queue,
            limit=limit,
            token=token,
            lock_until=lock_until,
            now=now,
            rate_limit=rate_limit,
        )

    async def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> list[str]:
        return await self._call(self._engine.extend_locks, queue, locks, lock_until)

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        return await self._call(self._engine.complete_jobs, queue, completions, now)

    async def complete_and_take(
        self,
        queue: str,
        completions: Sequence[Completion],
        now: float,
        *,
        limit: int,
        token: str,
        lock_until: float,
        rate_limit: tuple[int, float] | None = None,
    ) -> tuple[list[bool], TakeResult]:
        return await self._call(
            self._engine.complete_and_take,
            queue,
            completions,
            now,
            limit=limit,
            token=token,
            lock_until=lock_until,
            rate_limit=rate_limit,
        )

    async def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        return await self._call(self._engine.fail_jobs, queue, failures, now)

    async def release_jobs(self, queue: str, releases: Sequence[Release], now: float) -> list[bool]:
        return await self._call(self._engine.release_jobs, queue, releases, now)

    async def recover_stalled(
        self, queue: str, now: float, max_stalled_count: int
    ) -> list[StallOutcome]:
        return await self._call(self._engine.recover_stalled, queue, now, max_stalled_count)

    async def wait_for_work(self, queue: str, timeout: float) -> None:
        if not self._connected:
            raise StoreClosedError("MemoryStore is not connected: use 'async with store:'")
        backend = self._backend
        if backend.count(queue, WAITING) and not backend.is_paused(queue):
            await anyio.lowlevel.checkpoint()
            return
        waker = self._wakers.get(queue)
        if waker is None:
            waker = self._wakers[queue] = asyncio.Event()
        with anyio.move_on_after(max(timeout, 0.0)):
            await waker.wait()

    async def update_progress(self, queue: str, job_id: str, progress: str) -> None:
        self._run(self._engine.update_progress, queue, job_id, progress, time.time())

    async def add_log(self, queue: str, job_id: str, line: str) -> int:
        return await self._call(self._engine.add_log, queue, job_id, line)

    async def get_logs(
        self, queue: str, job_id: str, start: int = 0, end: int | None = None
    ) -> list[str]:
        return await self._call(self._engine.get_logs, queue, job_id, start, end)

    async def update_data(self, queue: str, job_id: str, data: str) -> None:
        self._run(self._engine.update_data, queue, job_id, data)

    async def change_priority(self, queue: str, job_id: str, priority: int, lifo: bool) -> None:
        self._run(self._engine.change_priority, queue, job_id, priority, lifo)

    async def change_delay(self, queue: str, job_id: str, run_at: float) -> None:
        self._run(self._engine.change_delay, queue, job_id, run_at)

    async def promote_job(self, queue: str, job_id: str, now: float) -> None:
        self._run(self._engine.promote_job, queue, job_id, now)

    async def promote_jobs(self, queue: str, now: float) -> int:
        return await self._call(self._engine.promote_jobs, queue, now)

    async def retry_job(self, queue: str, job_id: str, now: float) -> None:
        self._run(self._engine.retry_job, queue, job_id, now)

    async def retry_jobs(self, queue: str, state: JobState, now: float) -> int:
        return await self._call(self._engine.retry_jobs, queue, state, now)

    async def cancel_job(self, queue: str, job_id: str, reason: str, now: float) -> int:
        return await self._call(self._engine.cancel_job, queue, job_id, reason, now)

    async def cancel_requests(self, queue: str, job_ids: Sequence[str]) -> dict[str, str]:
        return self._run(self._engine.cancel_requests, queue, job_ids)

    async def remove_job(self, queue: str, job_id: str) -> bool:
        return await self._call(self._engine.remove_job, queue, job_id, time.time())

    async def pause(self, queue: str) -> None:
        self._run(self._engine.pause, queue, time.time())

    async def resume(self, queue: str) -> None:
        self._run(self._engine.resume, queue, time.time())

    async def is_paused(self, queue: str) -> bool:
        return await self._call(self._backend.is_paused, queue)

    async def drain(self, queue: str, include_delayed: bool, now: float) -> int:
        return await self._call(self._engine.drain, queue, include_delayed, now)

    async def clean(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        return await self._call(self._engine.clean, queue, state, older_than, limit, time.time())

    async def obliterate(self, queue: str, force: bool) -> None:
        self._run(self._engine.obliterate, queue, force, time.time())

    async def get_job(self, queue: str, job_id: str) -> JobRecord | None:
        return await self._call(self._engine.get_job, queue, job_id)

    async def get_jobs(
        self, queue: str, states: Sequence[JobState], start: int, end: int | None
    ) -> list[JobRecord]:
        return await self._call(self._engine.get_jobs, queue, states, start, end)

    async def get_counts(self, queue: str) -> dict[JobState, int]:
        return await self._call(self._engine.get_counts, queue)

    async def get_dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        return await self._call(self._engine.get_dependencies, queue, job_id)

    async def get_dependency_page(
        self, queue: str, job_id: str, *, cursor: str | None, limit: int
    ) -> DependencyPage:
        return self._run(
            self._engine.get_dependency_page, queue, job_id, cursor=cursor, limit=limit
        )

    async def get_dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        return self._run(self._engine.get_dependency_counts, queue, job_id)

    async def get_parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        return self._run(self._engine.get_parent_links, queue, job_id)

    async def remove_child_dependency(self, queue: str, job_id: str, now: float) -> bool:
        return self._run(self._engine.remove_child_dependency, queue, job_id, now)

    async def remove_unprocessed_children(self, queue: str, job_id: str, now: float) -> int:
        return self._run(self._engine.remove_unprocessed_children, queue, job_id, now)

    async def list_queues(self) -> list[str]:
        return await self._call(self._backend.queues)

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
        return await self._call(
            self._engine.search_jobs,
            queue,
            text=text,
            name=name,
            states=states,
            limit=limit,
            cursor=cursor,
        )

    async def get_metrics(
        self, queue: str, kind: MetricKind, start: int, end: int
    ) -> dict[int, int]:
        return await self._call(self._engine.get_metrics, queue, kind, start, end)

    async def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        self._run(self._engine.set_global_concurrency, queue, concurrency)

    async def get_global_concurrency(self, queue: str) -> int | None:
        return self._run(self._engine.get_global_concurrency, queue)

    async def set_group_limits(
        self, queue: str, concurrency: int | None, rate_limit: tuple[int, float] | None
    ) -> None:
        self._run(self._engine.set_group_limits, queue, concurrency, rate_limit)

    async def get_group_limits(self, queue: str) -> GroupLimits:
        return self._run(self._engine.get_group_limits, queue)

    async def get_group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        return self._run(self._engine.get_group_counts, queue)

    async def rate_limit_queue(self, queue: str, until: float) -> None:
        self._run(self._engine.rate_limit_queue, queue, until)

    async def upsert_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        timing: str,
        template: str,
        next_run_at: float | None,
        now: float,
    ) -> None:
        self._run(
            self._engine.upsert_scheduler, queue, scheduler_id, timing, template, next_run_at, now
        )

    async def remove_scheduler(self, queue: str, scheduler_id: str) -> bool:
        return self._run(self._engine.remove_scheduler, queue, scheduler_id)

    async def get_schedulers(self, queue: str) -> list[SchedulerRecord]:
        return self._run(self._engine.get_schedulers, queue)

    async def due_schedulers(self, queue: str, now: float, limit: int) -> DueSchedulers:
        return self._run(self._engine.due_schedulers, queue, now, limit)

    async def fire_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        expected: float,
        next_run_at: float | None,
        jobs: Sequence[NewJob],
        now: float,
    ) -> bool:
        return self._run(
            self._engine.fire_scheduler, queue, scheduler_id, expected, next_run_at, jobs, now
        )

    async def subscribe(self, queue: str) -> EventSubscription:
        if not self._connected:
            raise StoreClosedError("MemoryStore is not connected: use 'async with store:'")
        sub = _Subscription(self, queue)
        self._subscriptions.setdefault(queue, set()).add(sub)
        self._backend.listened[queue] = self._backend.listened.get(queue, 0) + 1
        return sub
