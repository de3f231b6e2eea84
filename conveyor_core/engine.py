"""The reference implementation of the store transitions, over a record-level backend.

:class:`Engine` carries out every transition of :class:`~conveyor_core.store.StoreInterface`
exactly as the protocol's docstrings define them (FINAL FAILURE, RELEASE CHECK, REMOVE,
RETENTION, ordering, events), against a small synchronous :class:`Backend` that only
stores and indexes records. A store whose transactions can run Python (the memory store
inside one event-loop step, the SQLite store inside one ``BEGIN IMMEDIATE`` transaction)
plugs a backend in and inherits the semantics; stores that must run their transitions
server-side (PostgreSQL functions, Redis scripts) follow this module line by line.

Every engine method must run inside one atomic unit of the backend: the engine itself
does no locking and no I/O of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any, Protocol

from .errors import DuplicateJobError, InvalidJobStateError, JobNotFoundError, LockLostError
from .models import JobState, ParentPolicy
from .store import (
    DEPENDENCY_STATUSES,
    PARENT_FAILED_REASON,
    STALLED_REASON,
    ChildDependency,
    Completion,
    DagEdge,
    DeduplicatedAdd,
    DeduplicationKey,
    DependencyPage,
    DependencyStatus,
    DueSchedulers,
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
    TakeResult,
    check_children_of,
    check_dag,
    check_dependency_limit,
    child_failed_reason,
    decode_dependency_cursor,
    encode_dependency_cursor,
    lock_not_held,
)

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING_CHILDREN = JobState.WAITING_CHILDREN
UNSTARTED = (WAITING, DELAYED, WAITING_CHILDREN)
ADOPTING = (WAITING_CHILDREN, ACTIVE)
"""The states of an existing job that may take new children (ADD TO AN EXISTING PARENT)."""

_RECORD_FIELDS = fields(JobRecord)
if not all(f.init for f in _RECORD_FIELDS):
    raise TypeError("copy_of passes every field of JobRecord to its constructor")
_RECORD_VALUES = attrgetter(*(f.name for f in _RECORD_FIELDS))
"""A record's fields, in the order of its constructor's parameters."""


def copy_of(job: JobRecord) -> JobRecord:
    """A copy of ``job`` that shares no list with it, as a read or a take hands it out
    (in about a quarter of the time of ``dataclasses.replace``)."""
    copy = JobRecord(*_RECORD_VALUES(job))
    copy.stacktrace = list(job.stacktrace)
    return copy


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_ascii(text: str) -> str:
    """``text`` with ASCII letters lowered and every other character kept: the case
    folding of :meth:`StoreInterface.search_jobs`, the same on every store."""
    return text.translate(_ASCII_LOWER)


def minute_of(now: float) -> int:
    """The metrics minute of a transition at ``now``: ``floor(now / 60)`` as every store
    computes it (one division of doubles, then the floor)."""
    return math.floor(now / 60)


def encode_cursor(created_at: float, job_id: str) -> str:
    """A search cursor: resume below this ``created_at`` and id."""
    return f"{created_at!r}|{job_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The ``(created_at, id)`` of :func:`encode_cursor`; ``ValueError`` if malformed."""
    stamp, sep, job_id = cursor.partition("|")
    try:
        if not sep:
            raise ValueError
        return float(stamp), job_id
    except ValueError:
        raise ValueError(f"not a search cursor of this store: {cursor!r}") from None


def split_due(upcoming: Sequence[SchedulerRecord], now: float, limit: int) -> DueSchedulers:
    """The :meth:`StoreInterface.due_schedulers` answer from the queue's first
    ``limit + 1`` timed schedulers, by ``next_run_at`` then id."""
    due: list[SchedulerRecord] = []
    for record in upcoming:
        assert record.next_run_at is not None
        if len(due) >= limit or record.next_run_at > now:
            return DueSchedulers(due, record.next_run_at)
        due.append(record)
    return DueSchedulers(due, None)


@dataclass(slots=True, frozen=True)
class Lane:
    """What a queue keeps of one lane (see GROUPS): when it was last served, and its
    group's rate window ``(start, jobs started)``."""

    served: int = 0
    window: tuple[float, int] | None = None


class Backend(Protocol):
    """Record storage for :class:`Engine`. Synchronous; called inside one atomic unit.

    Records returned by ``get`` and the listing methods may be the backend's own objects:
    the engine mutates them and hands them back through ``save``. The engine copies
    records before they leave the store.
    """

    def get(self, queue: str, job_id: str) -> JobRecord | None:
        """The job, or ``None``."""
        ...

    def save(self, job: JobRecord, old_state: JobState | None, *, requeue: bool = False) -> None:
        """Persist every field of ``job``; ``old_state`` ``None`` means a new job.

        Maintains the state indexes. When ``job.state`` is ``waiting`` and it was not
        before (or ``requeue``), the job takes a new place in its queue's waiting order:
        behind all jobs of its priority, or in front of them if ``job.lifo``.
        """
        ...

    def delete(self, queue: str, job_id: str) -> None:
        """Delete the job, its log, the dependency records it holds as a parent and its
        further parent links."""
        ...

    def first_waiting(self, queue: str, limit: int) -> list[JobRecord]:
        """The first ``limit`` waiting jobs in order; the engine moves all of them out of
        ``waiting`` at once."""
        ...

    def first_waiting_each(
        self, queue: str, groups: Sequence[str | None]
    ) -> list[JobRecord | None]:
        """The first waiting job, in take order, of each of several distinct lanes (see
        GROUPS), in one look: of the group, or of the jobs without a group for ``None``;
        ``None`` for a lane with no waiting job."""
        ...

    def has_grouped_waiting(self, queue: str) -> bool:
        """Whether a waiting job of the queue has a group. Cost: one index probe."""
        ...

    def ready_lanes(self, queue: str, limit: int) -> list[tuple[str, Lane]]:
        """The first ``limit`` lanes that have a waiting job, by ``served`` then group id
        (``""``: the queue's own lane), each with its ``served`` number and rate window;
        a lane never written reads as ``Lane()``. Cost: the lanes returned, not the
        queue's groups."""
        ...

    def put_lane(self, queue: str, group: str, lane: Lane) -> None: ...

    def next_served(self, queue: str) -> int:
        """A number greater than every ``served`` number handed out for the queue."""
        ...

    def count_group(self, queue: str, group: str, state: JobState) -> int:
        """How many jobs of the group are in ``state``."""
        ...

    def group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        """Per group with at least one job: its jobs per state (states with none may be
        missing)."""
        ...

    def group_limits(self, queue: str) -> GroupLimits: ...

    def set_group_limits(self, queue: str, limits: GroupLimits) -> None: ...

    def due_delayed(self, queue: str, now: float) -> list[JobRecord]:
        """Delayed jobs with ``run_at <= now``, earliest first."""
        ...

    def next_run_at(self, queue: str) -> float | None:
        """The earliest ``run_at`` of the queue's delayed jobs."""
        ...

    def expired_active(self, queue: str, now: float) -> list[JobRecord]:
        """Active jobs whose ``lock_until < now``."""
        ...

    def list_jobs(
        self, queue: str, state: JobState, start: int = 0, end: int | None = None
    ) -> list[JobRecord]:
        """Jobs in ``state``, indexes ``start`` to ``end`` inclusive, in listing order:
        waiting in take order, delayed by ``run_at``, finished newest first, others
        oldest first."""
        ...

    def count(self, queue: str, state: JobState) -> int:
        """How many jobs of the queue are in ``state``."""
        ...

    def finished_beyond(self, queue: str, state: JobState, keep: int) -> list[str]:
        """Ids of jobs in a finished ``state`` other than the ``keep`` most recently
        finished."""
        ...

    def clean_candidates(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        """Ids in ``state`` finished (or, unfinished, created) at or before
        ``older_than``, oldest first, at most ``limit``."""
        ...

    def dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        """The job's dependency records in insertion order."""
        ...

    def get_dependency(
        self, queue: str, job_id: str, child_queue: str, child_id: str
    ) -> ChildDependency | None:
        """One dependency record of a parent."""
        ...

    def put_dependency(self, queue: str, job_id: str, dep: ChildDependency) -> None:
        """Insert a dependency record (appended) or replace it in place."""
        ...

    def delete_dependency(self, queue: str, job_id: str, child_queue: str, child_id: str) -> None:
        """Delete one dependency record, if present."""
        ...

    def parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        """The job's further parent links (beyond its ``parent_id``), in the order they
        were added."""
        ...

    def add_parent_link(self, queue: str, job_id: str, link: ParentLink) -> None:
        """Append a further parent link to the job."""
        ...

    def delete_parent_links(self, queue: str, job_id: str) -> None:
        """Delete every further parent link of the job (``delete`` does so too)."""
        ...

    def pending_count(self, queue: str, job_id: str) -> int:
        """How many of the parent's dependencies are ``pending``."""
        ...

    def dependency_page(
        self, queue: str, job_id: str, after: int | None, limit: int
    ) -> list[tuple[int, ChildDependency]]:
        """Up to ``limit`` of the parent's dependency records whose insertion position
        is greater than ``after`` (all, for ``None``), in insertion order, each with its
        position. Cost: the page (an ordered index), not the parent's whole list."""
        ...

    def dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        """How many of the parent's dependency records are in each status (every status
        present), from counters kept by ``put_dependency``/``delete_dependency`` and the
        deletion of the parent, never by reading the records."""
        ...

    def add_log(self, queue: str, job_id: str, line: str) -> int:
        """Append a log line; returns the new length."""
        ...

    def get_logs(self, queue: str, job_id: str, start: int, end: int | None) -> list[str]:
        """Log lines ``start`` to ``end`` inclusive."""
        ...

    def is_paused(self, queue: str) -> bool: ...

    def set_paused(self, queue: str, paused: bool) -> None: ...

    def rate_window(self, queue: str) -> tuple[float, int] | None:
        """The current rate-limit window of the queue: ``(start, jobs started)``."""
        ...

    def set_rate_window(self, queue: str, start: float, count: int) -> None: ...

    def forget_queue(self, queue: str) -> None:
        """Drop what the backend keeps about an emptied queue (paused flag, window,
        deduplication entries, group limits and lanes)."""
        ...

    def global_concurrency(self, queue: str) -> int | None:
        """The queue's global concurrency, or ``None``."""
        ...

    def set_global_concurrency(self, queue: str, concurrency: int | None) -> None: ...

    def limited_until(self, queue: str) -> float | None:
        """The queue's manual rate limit: no take before this time; or ``None``."""
        ...

    def set_limited_until(self, queue: str, until: float) -> None: ...

    def get_deduplication(self, queue: str, dedup_id: str) -> tuple[str, float | None] | None:
        """The deduplication entry ``(job id, expires_at)`` of ``dedup_id``, or ``None``."""
        ...

    def put_deduplication(
        self, queue: str, dedup_id: str, job_id: str, expires_at: float | None
    ) -> None:
        """Insert or replace a deduplication entry."""
        ...

    def queues(self) -> list[str]:
        """Every queue holding jobs or flagged paused, sorted."""
        ...

    def emit(
        self, type: str, queue: str, job_id: str | None, data: dict[str, Any] | None, now: float
    ) -> None:
        """Publish an event as part of the current atomic unit."""
        ...

    def wake(self, queue: str) -> None:
        """Note that jobs entered ``waiting`` or ``delayed`` in the queue (or it was
        resumed), so idle workers are woken once the atomic unit ends."""
        ...

    def record_metric(self, queue: str, kind: MetricKind, minute: int, count: int) -> None:
        """Add ``count`` to the queue's ``kind`` count of ``minute``, and drop the
        queue's ``kind`` minutes before ``minute - METRICS_MINUTES``."""
        ...

    def metrics(self, queue: str, kind: MetricKind, start: int, end: int) -> dict[int, int]:
        """The queue's non-zero ``kind`` counts of minutes ``start`` to ``end``."""
        ...

    def search(
        self,
        queue: str,
        folded_text: str | None,
        name: str | None,
        states: Sequence[JobState] | None,
        limit: int,
        after: tuple[float, str] | None,
    ) -> tuple[list[JobRecord], tuple[float, str] | None]:
        """Up to ``limit`` jobs of the queue matching the filters, ordered by
        ``(created_at, id)`` descending, all strictly below ``after`` in that order; and
        the ``(created_at, id)`` to resume below for the next page, or ``None`` when no
        job past this page matches.

        ``folded_text``: the id, name or data, with ASCII letters lowered, contains it
        (it arrives lowered). ``name``: equal. ``states``: one of them. A backend may stop
        early (fewer than ``limit`` jobs) to bound the work of one call, returning where
        it stopped.
        """
        ...

    def get_scheduler(self, queue: str, scheduler_id: str) -> SchedulerRecord | None:
        """The scheduler, or ``None``."""
        ...

    def put_scheduler(self, record: SchedulerRecord) -> None:
        """Insert or replace a scheduler (every field)."""
        ...

    def delete_scheduler(self, queue: str, scheduler_id: str) -> bool:
        """Delete a scheduler; whether it existed."""
        ...

    def schedulers(self, queue: str) -> list[SchedulerRecord]:
        """The queue's schedulers by id (code point order)."""
        ...

    def schedulers_by_next_run(self, queue: str, limit: int) -> list[SchedulerRecord]:
        """Up to ``limit`` of the queue's schedulers with a ``next_run_at``, by
        ``next_run_at`` then id."""
        ...

    def delete_schedulers(self, queue: str) -> None:
        """Delete every scheduler of the queue."""
        ...


class Engine:
    """The transitions of the store protocol over a :class:`Backend`."""

    __slots__ = ("b",)

    def __init__(self, backend: Backend) -> None:
        self.b = backend

    # ------------------------------------------------------------------ helpers

    def _require(self, queue: str, job_id: str) -> JobRecord:
        job = self.b.get(queue, job_id)
        if job is None:
            raise JobNotFoundError(queue, job_id)
        return job

    def _enter_waiting(self, job: JobRecord, old: JobState | None, now: float) -> None:
        job.state = WAITING
        job.run_at = None
        self.b.save(job, old)
        self.b.emit("waiting", job.queue, job.id, None, now)
        self.b.wake(job.queue)

    def _enter_delayed(
        self, job: JobRecord, old: JobState | None, run_at: float, now: float
    ) -> None:
        job.state = DELAYED
        job.run_at = run_at
        self.b.save(job, old)
        self.b.emit("delayed", job.queue, job.id, {"run_at": run_at}, now)
        self.b.wake(job.queue)

    def _release(self, parent: JobRecord, now: float) -> None:
        """RELEASE: a parent leaves ``waiting-children``."""
        if parent.delay > 0:
            self._enter_delayed(parent, WAITING_CHILDREN, now + parent.delay, now)
        else:
            self._enter_waiting(parent, WAITING_CHILDREN, now)

    def _release_check(self, queue: str, job_id: str, now: float) -> None:
        parent = self.b.get(queue, job_id)
        if (
            parent is not None
            and parent.state is WAITING_CHILDREN
            and self.b.pending_count(queue, job_id) == 0
        ):
            self._release(parent, now)

    def _retain(self, job: JobRecord, state: JobState, now: float) -> None:
        """RETENTION after a job finished."""
        keep = job.keep_completed if state is COMPLETED else job.keep_failed
        if keep is None:
            return
        if keep == 0:
            self.b.delete(job.queue, job.id)
            return
        for old_id in self.b.finished_beyond(job.queue, state, keep):
            self.b.delete(job.queue, old_id)

    def _links(self, job: JobRecord) -> list[ParentLink]:
        """PARENT LINKS of the job: its first parent, then its further links."""
        if job.parent_id is None or job.parent_queue is None:
            return []
        first = ParentLink(job.parent_queue, job.parent_id, job.parent_policy or ParentPolicy.FAIL)
        return [first, *self.b.parent_links(job.queue, job.id)]

    def _still_needed(self, job: JobRecord, leaving: set[tuple[str, str]]) -> bool:
        """Whether a parent outside ``leaving`` still needs ``job`` (PARENT LINKS)."""
        for link in self._links(job):
            if (link.queue, link.id) in leaving:
                continue
            parent = self.b.get(link.queue, link.id)
            if parent is None or parent.state.finished:
                continue
            dep = self.b.get_dependency(link.queue, link.id, job.queue, job.id)
            if dep is not None and dep.status == "pending":
                return True
        return False

    def _link(self, child: JobRecord, link: ParentLink) -> None:
        """Give ``child`` one more parent link: its first parent, or a further one."""
        if child.parent_id is None or child.parent_queue is None:
            child.parent_queue, child.parent_id = link.queue, link.id
            child.parent_policy = link.policy
            self.b.save(child, child.state)
        else:
            self.b.add_parent_link(child.queue, child.id, link)

    @staticmethod
    def _clear_lock(job: JobRecord) -> None:
        job.lock_token = None
        job.lock_until = None
        job.cancel_reason = None

    # ------------------------------------------------------------------ adding

    def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        written: list[bool] = []
        seen: set[tuple[str, str]] = set()
        for group in groups:
            if not group:
                raise ValueError("a group of jobs must not be empty")
            head = group[0]
            skip = self.b.get(head.queue, head.id) is not None
            for index, new in enumerate(group):
                key = (new.queue, new.id)
                if key in seen:
                    raise DuplicateJobError(
                        f"job id {new.id!r} appears twice for queue {new.queue!r} in one add"
                    )
                seen.add(key)
                if index and not skip and self.b.get(new.queue, new.id) is not None:
                    raise DuplicateJobError(
                        f"job id {new.id!r} already exists in queue {new.queue!r}"
                    )
            if not skip:
                self._check_existing_parent(group)
            written.append(not skip)
        for group, write in zip(groups, written, strict=True):
            if write:
                for new in group:
                    self._write_new(new, now)
        return written

    def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        b = self.b
        check_dag(jobs, edges, deduplication)
        # DEDUPLICATED NODE, decided first: a live holder stands in for its node.
        results: list[DeduplicatedAdd] = []
        holders: dict[tuple[str, str], JobRecord] = {}
        for index, dedup in deduplication:
            node = jobs[index]
            live = self._live_holder(node.queue, dedup.id, now)
            if live is None:
                results.append(DeduplicatedAdd(node.id, True))
            else:
                holders[(node.queue, node.id)] = live
                results.append(DeduplicatedAdd(live.id, False))
        nodes = jobs
        if holders:
            jobs = [new for new in jobs if (new.queue, new.id) not in holders]
            edges = self._edges_to_holders(edges, holders)
        new_keys: set[tuple[str, str]] = set()
        for new in jobs:
            key = (new.queue, new.id)
            if key in new_keys:
                raise DuplicateJobError(
                    f"job id {new.id!r} appears twice for queue {new.queue!r} in one add"
                )
            if b.get(new.queue, new.id) is not None:
                raise DuplicateJobError(f"job id {new.id!r} already exists in queue {new.queue!r}")
            new_keys.add(key)
        for edge in edges:
            if (edge.child_queue, edge.child_id) in new_keys:
                continue
            existing = b.get(edge.child_queue, edge.child_id)
            if existing is None:
                raise JobNotFoundError(edge.child_queue, edge.child_id)
            if existing.state is FAILED:
                raise InvalidJobStateError(
                    f"job {edge.child_id!r} of queue {edge.child_queue!r} has failed: "
                    "retry it before a new job depends on it"
                )
        for new in jobs:
            self._write_new(new, now)
        for (index, dedup), result in zip(deduplication, results, strict=True):
            node = nodes[index]
            if result.written:
                self._take_deduplication(node, dedup, now)
            else:
                self._deduplicated(holders[(node.queue, node.id)], node, dedup, now)
        for edge in edges:
            child = b.get(edge.child_queue, edge.child_id)
            assert child is not None
            self._link(child, ParentLink(edge.parent_queue, edge.parent_id, edge.policy))
            if child.state is COMPLETED:
                dep = ChildDependency(child.queue, child.id, "processed", child.return_value)
            else:
                dep = ChildDependency(child.queue, child.id, "pending")
            b.put_dependency(edge.parent_queue, edge.parent_id, dep)
        for new in jobs:
            if new.state is WAITING_CHILDREN:
                self._release_check(new.queue, new.id, now)
        return results

    def _check_existing_parent(self, group: Sequence[NewJob]) -> None:
        """ADD TO AN EXISTING PARENT: a group's first job may name a parent outside the
        group, which must exist and be ``waiting-children`` or ``active``."""
        head = group[0]
        pq, pid = head.parent_queue, head.parent_id
        if pq is None or pid is None:
            return
        parent = self.b.get(pq, pid)
        if parent is None:
            raise JobNotFoundError(pq, pid)
        if parent.state not in ADOPTING:
            raise InvalidJobStateError(
                f"job {pid!r} in queue {pq!r} is {parent.state.value}: only a job that is "
                "waiting-children or active can take new children"
            )

    def add_children(
        self,
        queue: str,
        job_id: str,
        token: str,
        groups: Sequence[Sequence[NewJob]],
        now: float,
    ) -> list[bool]:
        """ADD CHILDREN of the protocol: ``add_jobs`` under the parent's lock."""
        if self._owned(queue, job_id, token) is None:
            raise LockLostError(lock_not_held(queue, job_id, "add children to it"))
        check_children_of(queue, job_id, groups)
        return self.add_jobs(groups, now)

    def park_job(self, queue: str, job_id: str, token: str, now: float) -> bool:
        """PARK of the protocol (``wait_for_children``)."""
        job = self._owned(queue, job_id, token)
        if job is None:
            raise LockLostError(lock_not_held(queue, job_id, "wait for its children"))
        if job.cancel_reason is not None:
            self._final_failure(job, job.cancel_reason, now)
            return True
        if self.b.pending_count(queue, job_id) == 0:
            return False
        self._clear_lock(job)
        job.state = WAITING_CHILDREN
        job.delay = 0.0
        self.b.save(job, ACTIVE)
        self.b.emit("waiting-children", queue, job_id, None, now)
        return True

    def add_deduplicated(self, new: NewJob, dedup: DeduplicationKey, now: float) -> DeduplicatedAdd:
        """DEDUPLICATION of the protocol."""
        live = self._live_holder(new.queue, dedup.id, now)
        if live is not None:
            self._deduplicated(live, new, dedup, now)
            return DeduplicatedAdd(live.id, False)
        # As add_jobs of one standalone job: an existing id writes nothing.
        if self.b.get(new.queue, new.id) is not None:
            return DeduplicatedAdd(new.id, False)
        self._write_new(new, now)
        self._take_deduplication(new, dedup, now)
        return DeduplicatedAdd(new.id, True)

    def _live_holder(self, queue: str, dedup_id: str, now: float) -> JobRecord | None:
        """The job of the entry of ``dedup_id`` while the entry is live (DEDUPLICATION)."""
        entry = self.b.get_deduplication(queue, dedup_id)
        if entry is None:
            return None
        live = self.b.get(queue, entry[0])
        if live is None:
            return None
        expires_at = entry[1]
        if expires_at is None:
            return None if live.state.finished else live
        return live if now < expires_at else None

    def _deduplicated(
        self, live: JobRecord, new: NewJob, dedup: DeduplicationKey, now: float
    ) -> None:
        """DEDUPLICATION step 1: ``new`` is not written; ``replace``/``extend`` act on
        the live job, which gets the event ``deduplicated``."""
        if dedup.replace and live.state is DELAYED:
            live.data = new.data
            self._enter_delayed(live, DELAYED, now + new.delay, now)
        if dedup.extend and dedup.ttl is not None:
            self.b.put_deduplication(new.queue, dedup.id, live.id, now + dedup.ttl)
        self.b.emit(
            "deduplicated",
            new.queue,
            live.id,
            {"deduplication_id": dedup.id, "deduplicated_job_id": new.id},
            now,
        )

    def _take_deduplication(self, new: NewJob, dedup: DeduplicationKey, now: float) -> None:
        """The entry of ``dedup.id`` becomes ``new``'s, for its ttl."""
        expires_at = None if dedup.ttl is None else now + dedup.ttl
        self.b.put_deduplication(new.queue, dedup.id, new.id, expires_at)

    @staticmethod
    def _edges_to_holders(
        edges: Sequence[DagEdge], holders: Mapping[tuple[str, str], JobRecord]
    ) -> list[DagEdge]:
        """DEDUPLICATED NODE: each edge to a deduplicated node goes to its live holder;
        an edge repeating an earlier one's parent and child is dropped."""
        out: list[DagEdge] = []
        seen: set[tuple[str, str, str, str]] = set()
        for edge in edges:
            holder = holders.get((edge.child_queue, edge.child_id))
            if holder is not None:
                edge = DagEdge(
                    edge.parent_queue, edge.parent_id, holder.queue, holder.id, edge.policy
                )
            pair = (edge.parent_queue, edge.parent_id, edge.child_queue, edge.child_id)
            if pair in seen:
                continue
            seen.add(pair)
            out.append(edge)
        return out

    def _write_new(self, new: NewJob, now: float) -> None:
        policy = None if new.parent_policy is None else ParentPolicy(new.parent_policy)
        job = JobRecord(
            id=new.id,
            queue=new.queue,
            name=new.name,
            data=new.data,
            opts=new.opts,
            state=JobState(new.state),
            priority=new.priority,
            lifo=new.lifo,
            delay=new.delay,
            created_at=now,
            keep_completed=new.keep_completed,
            keep_failed=new.keep_failed,
            parent_id=new.parent_id,
            parent_queue=new.parent_queue,
            parent_policy=policy,
            group_id=new.group_id,
        )
        if new.parent_id is not None and new.parent_queue is not None:
            self.b.put_dependency(
                new.parent_queue, new.parent_id, ChildDependency(new.queue, new.id, "pending")
            )
        self.b.emit("added", job.queue, job.id, {"name": job.name}, now)
        if job.state is WAITING:
            self._enter_waiting(job, None, now)
        elif job.state is DELAYED:
            self._enter_delayed(job, None, now + job.delay, now)
        elif job.state is WAITING_CHILDREN:
            self.b.save(job, None)
            self.b.emit("waiting-children", job.queue, job.id, None, now)
        else:
            raise InvalidJobStateError(f"a new job cannot start in state {job.state.value!r}")

    # ------------------------------------------------------------------ working

    def take_jobs(
        self,
        queue: str,
        *,
        limit: int,
        token: str,
        lock_until: float,
        now: float,
        rate_limit: tuple[int, float] | None = None,
    ) -> TakeResult:
        b = self.b
        for job in b.due_delayed(queue, now):
            self._enter_waiting(job, DELAYED, now)
        if b.is_paused(queue) or limit <= 0:
            return TakeResult([], b.next_run_at(queue))
        held = b.limited_until(queue)
        if held is not None and now < held:
            return TakeResult([], b.next_run_at(queue), held)
        cap = b.global_concurrency(queue)
        if cap is not None:
            room = cap - b.count(queue, ACTIVE)
            if room <= 0:
                return TakeResult([], b.next_run_at(queue), concurrency_limited=True)
            limit = min(limit, room)
        window: tuple[float, int] | None = None
        if rate_limit is not None:
            most, duration = rate_limit
            window = b.rate_window(queue)
            if window is None or now >= window[0] + duration:
                window = (now, 0)
            room = most - window[1]
            if room <= 0:
                return TakeResult([], b.next_run_at(queue), window[0] + duration)
            limit = min(limit, room)
        if b.has_grouped_waiting(queue):
            result = self._take_by_lanes(queue, limit, token, lock_until, now)
            out = result.jobs
        else:
            out = [
                self._start(job, token, lock_until, now) for job in b.first_waiting(queue, limit)
            ]
            result = TakeResult(out)
        if window is not None and out:
            b.set_rate_window(queue, window[0], window[1] + len(out))
        result.next_run_at = b.next_run_at(queue)
        return result

    def _start(self, job: JobRecord, token: str, lock_until: float, now: float) -> JobRecord:
        job.state = ACTIVE
        job.lock_token = token
        job.lock_until = lock_until
        job.processed_at = now
        self.b.save(job, WAITING)
        self.b.emit("active", job.queue, job.id, None, now)
        return copy_of(job)

    def _take_by_lanes(
        self, queue: str, limit: int, token: str, lock_until: float, now: float
    ) -> TakeResult:
        """TAKE BY LANES (see GROUPS in the store protocol)."""
        b = self.b
        limits = b.group_limits(queue)
        cap, rate = limits.concurrency, limits.rate_limit
        out: list[JobRecord] = []
        held: set[str] = set()
        held_by_concurrency = False
        held_until: float | None = None
        while len(out) < limit:
            need = limit - len(out)
            lanes = [
                (group, lane)
                for group, lane in b.ready_lanes(queue, need + len(held))
                if group not in held
            ]
            if not lanes:
                break
            # Lanes in the order they were served: each one served now goes last, so
            # the next least recently served is the next of the list.
            lanes = lanes[:need]
            firsts = b.first_waiting_each(queue, [group or None for group, _ in lanes])
            for (group, lane), job in zip(lanes, firsts, strict=True):
                window = lane.window if group and rate is not None else None
                if group and cap is not None and b.count_group(queue, group, ACTIVE) >= cap:
                    held_by_concurrency = True
                    held.add(group)
                    continue
                if group and rate is not None:
                    most, duration = rate
                    if window is None or now >= window[0] + duration:
                        window = (now, 0)
                    if window[1] >= most:
                        end = window[0] + duration
                        held_until = end if held_until is None else min(held_until, end)
                        held.add(group)
                        continue
                if job is None:
                    held.add(group)
                    continue
                out.append(self._start(job, token, lock_until, now))
                if window is not None:
                    window = (window[0], window[1] + 1)
                b.put_lane(queue, group, Lane(b.next_served(queue), window))
        if out:
            return TakeResult(out)
        return TakeResult(out, None, held_until, held_by_concurrency)

    def _owned(self, queue: str, job_id: str, token: str) -> JobRecord | None:
        job = self.b.get(queue, job_id)
        if job is None or job.state is not ACTIVE or job.lock_token != token:
            return None
        return job

    def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> list[str]:
        kept: list[str] = []
        for job_id, token in locks:
            job = self._owned(queue, job_id, token)
            if job is not None:
                job.lock_until = lock_until
                self.b.save(job, ACTIVE)
                kept.append(job_id)
        return kept

    def complete_and_take(
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
        """COMPLETE AND TAKE of the protocol: the completions first, then the take."""
        applied = self.complete_jobs(queue, completions, now)
        taken = self.take_jobs(
            queue,
            limit=limit,
            token=token,
            lock_until=lock_until,
            now=now,
            rate_limit=rate_limit,
        )
        return applied, taken

    def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        applied: list[bool] = []
        completed = 0
        for item in completions:
            job = self._owned(queue, item.id, item.token)
            if job is None:
                applied.append(False)
                continue
            if job.cancel_reason is not None:
                job.attempts_made += 1
                self._final_failure(job, job.cancel_reason, now)
                applied.append(True)
                continue
            job.state = COMPLETED
            job.return_value = item.return_value
            job.finished_at = now
            job.attempts_made += 1
            self._clear_lock(job)
            self.b.save(job, ACTIVE)
            self.b.emit("completed", queue, job.id, {"return_value": item.return_value}, now)
            for link in self._links(job):
                self._child_processed(job, link, now)
            self._retain(job, COMPLETED, now)
            completed += 1
            applied.append(True)
        if completed:
            self.b.record_metric(queue, "completed", minute_of(now), completed)
        return applied

    def _child_processed(self, child: JobRecord, link: ParentLink, now: float) -> None:
        pq, pid = link.queue, link.id
        dep = self.b.get_dependency(pq, pid, child.queue, child.id)
        if dep is None:
            return
        self.b.put_dependency(
            pq, pid, ChildDependency(child.queue, child.id, "processed", child.return_value)
        )
        if dep.status == "pending":
            self._release_check(pq, pid, now)

    def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        applied: list[bool] = []
        for item in failures:
            job = self._owned(queue, item.id, item.token)
            if job is None:
                applied.append(False)
                continue
            job.attempts_made += 1
            job.failed_reason = item.reason
            job.stacktrace = list(item.stacktrace)
            cancelled = job.cancel_reason
            self._clear_lock(job)
            if cancelled is not None:
                self._final_failure(job, cancelled, now)
            elif item.retry_at is None:
                self._final_failure(job, item.reason, now)
            elif item.retry_at <= now:
                self._enter_waiting(job, ACTIVE, now)
            else:
                self._enter_delayed(job, ACTIVE, item.retry_at, now)
            applied.append(True)
        return applied

    def release_jobs(self, queue: str, releases: Sequence[Release], now: float) -> list[bool]:
        applied: list[bool] = []
        for item in releases:
            job = self._owned(queue, item.id, item.token)
            if job is None:
                applied.append(False)
                continue
            cancelled = job.cancel_reason
            self._clear_lock(job)
            if cancelled is not None:
                self._final_failure(job, cancelled, now)
            else:
                self._enter_waiting(job, ACTIVE, now)
            applied.append(True)
        return applied

    def recover_stalled(self, queue: str, now: float, max_stalled_count: int) -> list[StallOutcome]:
        outcomes: list[StallOutcome] = []
        for expired in self.b.expired_active(queue, now):
            # An earlier recovery in this call may have removed or failed this one.
            job = self.b.get(queue, expired.id)
            if (
                job is None
                or job.state is not ACTIVE
                or job.lock_until is None
                or job.lock_until >= now
            ):
                continue
            job.stalled_count += 1
            cancelled = job.cancel_reason
            self._clear_lock(job)
            self.b.emit("stalled", queue, job.id, {"count": job.stalled_count}, now)
            if cancelled is not None:
                self._final_failure(job, cancelled, now)
                outcomes.append(StallOutcome(job.id, True))
            elif job.stalled_count > max_stalled_count:
                job.failed_reason = STALLED_REASON
                self._final_failure(job, STALLED_REASON, now)
                outcomes.append(StallOutcome(job.id, True))
            else:
                self._enter_waiting(job, ACTIVE, now)
                outcomes.append(StallOutcome(job.id, False))
        return outcomes

    # ------------------------------------------------------------------ failure rules

    def _final_failure(
        self, job: JobRecord, reason: str, now: float, *, apply_policy: bool = True
    ) -> None:
        """FINAL FAILURE of the protocol.

        A parent failed by the ``fail`` policy fails at once; its own parent links are
        carried out after those of the jobs failed before it (level by level), and
        RETENTION runs last, the latest failed job first.
        """
        self._mark_failed(job, reason, now)
        failed = [(job, reason)]
        index = 0
        while apply_policy and index < len(failed):
            child, why = failed[index]
            index += 1
            for link in self._links(child):
                parent = self._apply_parent_policy(child, link, why, now)
                if parent is not None:
                    failed.append((parent, parent.failed_reason or ""))
        for done, _ in reversed(failed):
            self._retain(done, FAILED, now)

    def _mark_failed(self, job: JobRecord, reason: str, now: float) -> None:
        """Step 1 of FINAL FAILURE."""
        old = job.state
        job.state = FAILED
        job.failed_reason = reason
        job.finished_at = now
        self._clear_lock(job)
        self.b.save(job, old)
        self.b.emit("failed", job.queue, job.id, {"reason": reason}, now)
        self.b.record_metric(job.queue, "failed", minute_of(now), 1)

    def _apply_parent_policy(
        self, child: JobRecord, link: ParentLink, reason: str, now: float
    ) -> JobRecord | None:
        """Carry out one parent link's policy; returns the parent if the ``fail`` policy
        failed it (its own links are still to be carried out)."""
        pq, pid = link.queue, link.id
        b = self.b
        dep = b.get_dependency(pq, pid, child.queue, child.id)
        parent = b.get(pq, pid)
        if dep is None or dep.status != "pending" or parent is None:
            return None
        policy = link.policy
        if policy is ParentPolicy.FAIL:
            b.put_dependency(
                pq, pid, ChildDependency(child.queue, child.id, "failed", None, reason)
            )
            if parent.state in UNSTARTED or parent.state is ACTIVE:
                self._fail_unstarted_children(parent, now)
                self._mark_failed(parent, child_failed_reason(child.id, reason), now)
                return parent
        elif policy is ParentPolicy.IGNORE:
            b.put_dependency(
                pq, pid, ChildDependency(child.queue, child.id, "ignored", None, reason)
            )
            self._release_check(pq, pid, now)
        elif policy is ParentPolicy.DROP:
            b.delete_dependency(pq, pid, child.queue, child.id)
            self._release_check(pq, pid, now)
        elif policy is ParentPolicy.CONTINUE:
            b.put_dependency(
                pq, pid, ChildDependency(child.queue, child.id, "failed", None, reason)
            )
            if parent.state is WAITING_CHILDREN:
                self._release(parent, now)
        else:  # ParentPolicy.REMOVE
            self._remove(parent, now)
        return None

    def _fail_unstarted_children(self, parent: JobRecord, now: float) -> None:
        """Mark ``failed`` every pending dependency of ``parent`` on a job that has not
        started, and fail with "parent failed" each such job no parent still needs, and
        theirs in turn; no policy applies upward from these failures."""
        doomed: list[JobRecord] = []
        chosen: set[tuple[str, str]] = set()
        stack = [parent]
        while stack:
            node = stack.pop()
            for dep in self.b.dependencies(node.queue, node.id):
                if dep.status != "pending":
                    continue
                child = self.b.get(dep.queue, dep.id)
                if child is None or child.state not in UNSTARTED:
                    continue
                self.b.put_dependency(
                    node.queue,
                    node.id,
                    ChildDependency(dep.queue, dep.id, "failed", None, PARENT_FAILED_REASON),
                )
                # A shared job is looked at again from each of its failing parents; the
                # last of them finds no parent still needing it.
                if (child.queue, child.id) in chosen or self._still_needed(child, set()):
                    continue
                chosen.add((child.queue, child.id))
                doomed.append(child)
                stack.append(child)
        for child in doomed:
            self._final_failure(child, PARENT_FAILED_REASON, now, apply_policy=False)

    def _remove(self, job: JobRecord, now: float) -> None:
        """REMOVE of the protocol."""
        b = self.b
        links = self._links(job)
        doomed = [job]
        leaving = {(job.queue, job.id)}
        walked: set[tuple[str, str]] = set()
        stack = [job]
        while stack:
            node = stack.pop()
            for dep in b.dependencies(node.queue, node.id):
                key = (dep.queue, dep.id)
                if key in leaving:
                    continue
                child = b.get(dep.queue, dep.id)
                if child is None:
                    continue
                # A finished child stays, but may have unfinished children of its own
                # (released early by the continue policy): look below it too.
                if child.state.finished:
                    if key not in walked:
                        walked.add(key)
                        stack.append(child)
                    continue
                # A shared job is looked at again from each of its leaving parents; the
                # last of them finds no parent outside the removal still needing it.
                if self._still_needed(child, leaving):
                    continue
                leaving.add(key)
                doomed.append(child)
                stack.append(child)
        for node in doomed:
            b.delete(node.queue, node.id)
            b.emit("removed", node.queue, node.id, None, now)
        for link in links:
            record = b.get_dependency(link.queue, link.id, job.queue, job.id)
            if record is not None and record.status == "pending":
                b.delete_dependency(link.queue, link.id, job.queue, job.id)
                self._release_check(link.queue, link.id, now)

    # ------------------------------------------------------------------ job changes

    def update_progress(self, queue: str, job_id: str, progress: str, now: float) -> None:
        job = self._require(queue, job_id)
        job.progress = progress
        self.b.save(job, job.state)
        self.b.emit("progress", queue, job_id, {"progress": progress}, now)

    def add_log(self, queue: str, job_id: str, line: str) -> int:
        self._require(queue, job_id)
        return self.b.add_log(queue, job_id, line)

    def get_logs(self, queue: str, job_id: str, start: int, end: int | None) -> list[str]:
        self._require(queue, job_id)
        return self.b.get_logs(queue, job_id, start, end)

    def update_data(self, queue: str, job_id: str, data: str) -> None:
        job = self._require(queue, job_id)
        job.data = data
        self.b.save(job, job.state)

    def change_priority(self, queue: str, job_id: str, priority: int, lifo: bool) -> None:
        job = self._require(queue, job_id)
        job.priority = priority
        job.lifo = lifo
        self.b.save(job, job.state, requeue=job.state is WAITING)

    def change_delay(self, queue: str, job_id: str, run_at: float) -> None:
        job = self._require(queue, job_id)
        if job.state is not DELAYED:
            raise InvalidJobStateError(
                f"job {job_id!r} is {job.state.value}, only a delayed job's delay can change"
            )
        job.run_at = run_at
        self.b.save(job, DELAYED)
        self.b.wake(queue)

    def promote_job(self, queue: str, job_id: str, now: float) -> None:
        job = self._require(queue, job_id)
        if job.state is not DELAYED:
            raise InvalidJobStateError(
                f"job {job_id!r} is {job.state.value}, only a delayed job can be promoted"
            )
        self._enter_waiting(job, DELAYED, now)

    def promote_jobs(self, queue: str, now: float) -> int:
        jobs = self.b.list_jobs(queue, DELAYED)
        for job in jobs:
            self._enter_waiting(job, DELAYED, now)
        return len(jobs)

    def retry_job(self, queue: str, job_id: str, now: float) -> None:
        job = self._require(queue, job_id)
        if job.state is not FAILED:
            raise InvalidJobStateError(
                f"job {job_id!r} is {job.state.value}, only a failed job can be retried"
            )
        self._retry(job, now)

    def _retry(self, job: JobRecord, now: float) -> None:
        old = job.state
        job.attempts_made = 0
        job.stalled_count = 0
        job.failed_reason = None
        job.stacktrace = []
        job.return_value = None
        job.finished_at = None
        self._enter_waiting(job, old, now)
        for link in self._links(job):
            pq, pid = link.queue, link.id
            parent = self.b.get(pq, pid)
            if parent is None or (parent.state not in UNSTARTED and parent.state is not ACTIVE):
                continue
            dep = self.b.get_dependency(pq, pid, job.queue, job.id)
            if dep is None or dep.status != "pending":
                self.b.put_dependency(pq, pid, ChildDependency(job.queue, job.id, "pending"))
            if parent.state is WAITING or parent.state is DELAYED:
                prior = parent.state
                parent.state = WAITING_CHILDREN
                parent.run_at = None
                self.b.save(parent, prior)
                self.b.emit("waiting-children", pq, pid, None, now)

    def retry_jobs(self, queue: str, state: JobState, now: float) -> int:
        if not state.finished:
            raise InvalidJobStateError(f"only failed or completed jobs can be retried, not {state}")
        jobs = self.b.list_jobs(queue, state)
        for job in jobs:
            self._retry(job, now)
        return len(jobs)

    def cancel_job(self, queue: str, job_id: str, reason: str, now: float) -> int:
        """CANCEL of the protocol."""
        b = self.b
        top = self._require(queue, job_id)
        if top.state.finished:
            return 0
        subtree = [top]
        seen = {(top.queue, top.id)}
        stack = [top]
        while stack:
            node = stack.pop()
            for dep in b.dependencies(node.queue, node.id):
                child = b.get(dep.queue, dep.id)
                if child is None or (child.queue, child.id) in seen:
                    continue
                seen.add((child.queue, child.id))
                if not child.state.finished:
                    subtree.append(child)
                stack.append(child)
        count = 0
        # Children before parents: a parent deleted by its own retention no longer
        # holds the dependency records its children must mark.
        for stale in reversed(subtree):
            job = b.get(stale.queue, stale.id)  # a failure above may have changed it
            if job is None or job.state.finished:
                continue
            if (job.queue, job.id) != (top.queue, top.id):
                for link in self._links(job):
                    if (link.queue, link.id) not in seen:
                        continue
                    held = b.get_dependency(link.queue, link.id, job.queue, job.id)
                    if held is not None and held.status == "pending":
                        b.put_dependency(
                            link.queue,
                            link.id,
                            ChildDependency(job.queue, job.id, "failed", None, reason),
                        )
            if job.state is ACTIVE:
                if job.cancel_reason is not None:
                    continue
                job.cancel_reason = reason
                b.save(job, ACTIVE)
                b.emit("cancelled", job.queue, job.id, {"reason": reason}, now)
            else:
                b.emit("cancelled", job.queue, job.id, {"reason": reason}, now)
                self._final_failure(job, reason, now)
            count += 1
        return count

    def cancel_requests(self, queue: str, job_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for job_id in job_ids:
            job = self.b.get(queue, job_id)
            if job is not None and job.state is ACTIVE and job.cancel_reason is not None:
                found[job_id] = job.cancel_reason
        return found

    def remove_job(self, queue: str, job_id: str, now: float) -> bool:
        job = self.b.get(queue, job_id)
        if job is None:
            return False
        if job.state is ACTIVE:
            raise InvalidJobStateError(f"job {job_id!r} is active and cannot be removed")
        self._remove(job, now)
        return True

    def remove_child_dependency(self, queue: str, job_id: str, now: float) -> bool:
        """REMOVE CHILD DEPENDENCY of the protocol."""
        job = self._require(queue, job_id)
        links = self._links(job)
        if not links:
            return False
        job.parent_queue = job.parent_id = None
        job.parent_policy = None
        self.b.save(job, job.state)
        self.b.delete_parent_links(queue, job_id)
        for link in links:
            dep = self.b.get_dependency(link.queue, link.id, queue, job_id)
            if dep is not None and dep.status == "pending":
                self.b.delete_dependency(link.queue, link.id, queue, job_id)
                self._release_check(link.queue, link.id, now)
        return True

    def remove_unprocessed_children(self, queue: str, job_id: str, now: float) -> int:
        """REMOVE UNPROCESSED CHILDREN of the protocol."""
        self._require(queue, job_id)
        removed = 0
        for dep in self.b.dependencies(queue, job_id):
            if dep.status != "pending":
                continue
            child = self.b.get(dep.queue, dep.id)
            if child is None:
                self.b.delete_dependency(queue, job_id, dep.queue, dep.id)
            elif child.state is not ACTIVE:
                self._remove(child, now)
                removed += 1
        self._release_check(queue, job_id, now)
        return removed

    # ------------------------------------------------------------------ queues

    def pause(self, queue: str, now: float) -> None:
        self.b.set_paused(queue, True)
        self.b.emit("paused", queue, None, None, now)

    def resume(self, queue: str, now: float) -> None:
        self.b.set_paused(queue, False)
        self.b.emit("resumed", queue, None, None, now)
        self.b.wake(queue)

    def drain(self, queue: str, include_delayed: bool, now: float) -> int:
        states = (WAITING, DELAYED) if include_delayed else (WAITING,)
        removed = 0
        for state in states:
            for job in self.b.list_jobs(queue, state):
                if self.b.get(queue, job.id) is not None:
                    self._remove(job, now)
                    removed += 1
        self.b.emit("drained", queue, None, {"count": removed}, now)
        return removed

    def clean(
        self, queue: str, state: JobState, older_than: float, limit: int | None, now: float
    ) -> list[str]:
        if state is ACTIVE:
            raise InvalidJobStateError("active jobs cannot be cleaned")
        removed: list[str] = []
        for job_id in self.b.clean_candidates(queue, state, older_than, limit):
            job = self.b.get(queue, job_id)
            if job is not None:
                self._remove(job, now)
                removed.append(job_id)
        if removed:
            self.b.emit("cleaned", queue, None, {"count": len(removed)}, now)
        return removed

    def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        self.b.set_global_concurrency(queue, concurrency)
        self.b.wake(queue)

    def get_global_concurrency(self, queue: str) -> int | None:
        return self.b.global_concurrency(queue)

    def set_group_limits(
        self, queue: str, concurrency: int | None, rate_limit: tuple[int, float] | None
    ) -> None:
        self.b.set_group_limits(queue, GroupLimits(concurrency, rate_limit))
        self.b.wake(queue)

    def get_group_limits(self, queue: str) -> GroupLimits:
        return self.b.group_limits(queue)

    def get_group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        return {
            group: {state: counts.get(state, 0) for state in JobState}
            for group, counts in self.b.group_counts(queue).items()
            if any(counts.values())
        }

    def rate_limit_queue(self, queue: str, until: float) -> None:
        held = self.b.limited_until(queue)
        if held is None or until > held:
            self.b.set_limited_until(queue, until)

    def obliterate(self, queue: str, force: bool, now: float) -> None:
        if not force and self.b.count(queue, ACTIVE):
            raise InvalidJobStateError(
                f"queue {queue!r} has active jobs; pass force=True to obliterate it anyway"
            )
        # A removal can move a job of this queue into a state already swept (a parent
        # released by its last child's removal), so sweep until nothing is left.
        while any(self.b.count(queue, state) for state in JobState):
            for state in JobState:
                for job in self.b.list_jobs(queue, state):
                    current = self.b.get(queue, job.id)
                    if current is not None:
                        self._remove(current, now)
        self.b.forget_queue(queue)
        self.b.delete_schedulers(queue)

    # ------------------------------------------------------------------ reading

    def get_job(self, queue: str, job_id: str) -> JobRecord | None:
        job = self.b.get(queue, job_id)
        return None if job is None else copy_of(job)

    def get_jobs(
        self, queue: str, states: Sequence[JobState], start: int, end: int | None
    ) -> list[JobRecord]:
        if len(states) == 1:
            jobs = self.b.list_jobs(queue, states[0], start, end)
        else:
            every: list[JobRecord] = []
            for state in states:
                every.extend(self.b.list_jobs(queue, state))
            jobs = every[start : None if end is None else end + 1]
        return [copy_of(job) for job in jobs]

    def get_counts(self, queue: str) -> dict[JobState, int]:
        return {state: self.b.count(queue, state) for state in JobState}

    def get_dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        self._require(queue, job_id)
        return self.b.dependencies(queue, job_id)

    def get_parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        return self._links(self._require(queue, job_id))

    def get_dependency_page(
        self, queue: str, job_id: str, *, cursor: str | None, limit: int
    ) -> DependencyPage:
        check_dependency_limit(limit)
        after = None if cursor is None else decode_dependency_cursor(cursor)
        self._require(queue, job_id)
        rows = self.b.dependency_page(queue, job_id, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        following = encode_dependency_cursor(rows[-1][0]) if more else None
        return DependencyPage([dep for _, dep in rows], following)

    def get_dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        self._require(queue, job_id)
        counts = self.b.dependency_counts(queue, job_id)
        return {status: counts.get(status, 0) for status in DEPENDENCY_STATUSES}

    # ------------------------------------------------------------------ operating

    def search_jobs(
        self,
        queue: str,
        *,
        text: str | None,
        name: str | None,
        states: Sequence[JobState] | None,
        limit: int,
        cursor: str | None,
    ) -> SearchPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        after = None if cursor is None else decode_cursor(cursor)
        folded = None if text is None else fold_ascii(text)
        found, resume = self.b.search(queue, folded, name, states, limit, after)
        page = [copy_of(job) for job in found]
        return SearchPage(page, None if resume is None else encode_cursor(*resume))

    def get_metrics(self, queue: str, kind: MetricKind, start: int, end: int) -> dict[int, int]:
        return self.b.metrics(queue, kind, start, end)

    # ------------------------------------------------------------------ schedulers

    def upsert_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        timing: str,
        template: str,
        next_run_at: float | None,
        now: float,
    ) -> None:
        old = self.b.get_scheduler(queue, scheduler_id)
        if old is None:
            record = SchedulerRecord(queue, scheduler_id, timing, template, next_run_at, 0)
        elif old.timing == timing:
            record = replace(old, template=template)
        else:
            record = replace(old, timing=timing, template=template, next_run_at=next_run_at)
        self.b.put_scheduler(record)
        self.b.wake(queue)

    def remove_scheduler(self, queue: str, scheduler_id: str) -> bool:
        return self.b.delete_scheduler(queue, scheduler_id)

    def get_schedulers(self, queue: str) -> list[SchedulerRecord]:
        return [replace(record) for record in self.b.schedulers(queue)]

    def due_schedulers(self, queue: str, now: float, limit: int) -> DueSchedulers:
        upcoming = self.b.schedulers_by_next_run(queue, limit + 1)
        return split_due([replace(record) for record in upcoming], now, limit)

    def fire_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        expected: float,
        next_run_at: float | None,
        jobs: Sequence[NewJob],
        now: float,
    ) -> bool:
        record = self.b.get_scheduler(queue, scheduler_id)
        if record is None or record.next_run_at is None or record.next_run_at != expected:
            return False
        if jobs:
            self.add_jobs([jobs], now)
            record.iterations += 1
        record.next_run_at = next_run_at
        self.b.put_scheduler(record)
        return True
