"""A small reference model of the store protocol, for model-based tests.

Written from SPEC sections 4-5 and the docstrings of ``conveyor_core/store.py`` (FINAL
FAILURE, RELEASE CHECK, REMOVE, RETENTION, ordering), deliberately *not* from
``conveyor_core.engine``: the model is the second opinion the engine is checked against.

Where the protocol leaves a choice to the store the model accepts every allowed outcome:

* jobs entering ``waiting`` in one call that moves many at once (promotion of due delayed
  jobs, ``promote_jobs``, stall recovery, ``retry_jobs``) share one place in the waiting
  order and may come out in any order among themselves;
* calls that apply the same rule to several jobs in an unspecified order
  (``recover_stalled``, ``retry_jobs``) are modelled for every order, and the store's
  outcome must match one of them (see :func:`orderings`);
* finished and active listings are compared as sets, delayed listings by ``run_at`` only.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor_core.errors import (
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    LockLostError,
)
from conveyor_core.models import JobState, ParentPolicy
from conveyor_core.store import (
    PARENT_FAILED_REASON,
    STALLED_REASON,
    ChildDependency,
    DagEdge,
    JobRecord,
    NewJob,
    child_failed_reason,
)

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING_CHILDREN = JobState.WAITING_CHILDREN
UNSTARTED = (WAITING, DELAYED, WAITING_CHILDREN)

STORE_CLOCK = float("-inf")
"""A ``run_at`` the store took from its own clock, which the tests keep behind theirs."""

Key = tuple[str, str]
"""``(queue, job_id)``."""


@dataclass
class MJob:
    """A job as the model holds it."""

    queue: str
    id: str
    name: str
    data: str
    opts: str
    state: JobState
    priority: int
    lifo: bool
    delay: float
    keep_completed: int | None
    keep_failed: int | None
    parent: Key | None
    policy: ParentPolicy | None
    created_at: float
    attempts_made: int = 0
    stalled_count: int = 0
    return_value: str | None = None
    failed_reason: str | None = None
    processed_at: float | None = None
    finished_at: float | None = None
    run_at: float | None = None
    lock_token: str | None = None
    lock_until: float | None = None
    cancel_request: str | None = None
    """While active: the reason of a CANCEL REQUEST."""
    place: tuple[int, int] | None = None
    """Place in the waiting order: ``(priority, signed entry number)``."""
    finish_order: int = 0
    links: list[tuple[Key, ParentPolicy]] | None = None
    """Parent links beyond ``parent`` (a DAG's shared job), in order."""
    group: str | None = None


@dataclass
class MDep:
    """One dependency record of a parent."""

    status: str
    value: str | None = None
    reason: str | None = None


@dataclass
class Snapshot:
    """Everything the model compares, read from a store after a step."""

    jobs: dict[Key, JobRecord]
    listings: dict[tuple[str, JobState], list[str]]
    counts: dict[str, dict[JobState, int]]
    paused: dict[str, bool]
    deps: dict[Key, list[ChildDependency] | None]
    queues: list[str]


class Model:
    """The protocol's semantics over plain dicts, driven with an explicit clock."""

    def __init__(self, queues: Sequence[str]) -> None:
        self.queues = list(queues)
        self.jobs: dict[Key, MJob] = {}
        self.deps: dict[Key, dict[Key, MDep]] = {}
        self.children: dict[Key, list[Key]] = {}
        """Every job ever created under a parent (a static tree, for REMOVE)."""
        self.recreated: set[Key] = set()
        """Parents with a dependency re-created by a retry (its place is then open)."""
        self.paused: set[str] = set()
        self.served: dict[tuple[str, str], int] = {}
        """GROUPS: each lane's served number (``""``: a queue's own lane)."""
        self.serve_no: dict[str, int] = {}
        self.ever_parent: set[Key] = set()
        self.parent_events: dict[Key, list[str]] = {}
        """For jobs that had children: their waiting/delayed/waiting-children events."""
        self.releases: dict[Key, int] = {}
        self.entry = 0
        self.batch: int | None = None
        self.finishes = 0
        self.now = 0.0
        self.store_clock = False
        """Set while a transition runs that the protocol gives no ``now`` (``remove_job``):
        a parent it releases into ``delayed`` gets a ``run_at`` from the store's own clock,
        which the model records as :data:`STORE_CLOCK`."""

    # ------------------------------------------------------------------ helpers

    def clone(self) -> Model:
        return copy.deepcopy(self)

    def _note(self, job: MJob, event: str) -> None:
        # Every job's events are kept: a standalone job may become a parent later (a
        # step job, or a child added by opts.parent), and then all of them are checked.
        self.parent_events.setdefault((job.queue, job.id), []).append(event)

    def _enter_waiting(self, job: MJob) -> None:
        if self.batch is not None:
            number = self.batch
        else:
            self.entry += 1
            number = self.entry
        job.state = WAITING
        job.run_at = None
        job.lock_token = job.lock_until = None
        job.place = (job.priority, -number if job.lifo else number)
        self._note(job, "waiting")

    def _enter_delayed(self, job: MJob, run_at: float) -> None:
        job.state = DELAYED
        job.run_at = run_at
        job.place = None
        job.lock_token = job.lock_until = None
        self._note(job, "delayed")

    def _enter_waiting_children(self, job: MJob) -> None:
        job.state = WAITING_CHILDREN
        job.run_at = None
        job.place = None
        self._note(job, "waiting-children")

    def begin_batch(self) -> None:
        """Jobs entering waiting until :meth:`end_batch` share one place in the order."""
        self.entry += 1
        self.batch = self.entry

    def end_batch(self) -> None:
        self.batch = None

    def _finish(self, job: MJob, state: JobState) -> None:
        job.state = state
        job.finished_at = self.now
        job.lock_token = job.lock_until = None
        job.cancel_request = None
        job.place = None
        self.finishes += 1
        job.finish_order = self.finishes

    def _delete(self, key: Key) -> None:
        self.jobs.pop(key, None)
        self.deps.pop(key, None)

    def _owned(self, queue: str, job_id: str, token: str) -> MJob | None:
        job = self.jobs.get((queue, job_id))
        if job is None or job.state is not ACTIVE or job.lock_token != token:
            return None
        return job

    def pending(self, key: Key) -> list[Key]:
        return [k for k, d in self.deps.get(key, {}).items() if d.status == "pending"]

    @staticmethod
    def parent_links(job: MJob) -> list[tuple[Key, ParentPolicy]]:
        """PARENT LINKS: the first parent, then the further ones."""
        if job.parent is None:
            return []
        return [(job.parent, job.policy or ParentPolicy.FAIL), *(job.links or [])]

    def still_needed(self, job: MJob, leaving: set[Key]) -> bool:
        """Whether a parent outside ``leaving`` still needs ``job``."""
        key = (job.queue, job.id)
        for pkey, _ in self.parent_links(job):
            parent = self.jobs.get(pkey)
            if pkey in leaving or parent is None or parent.state.finished:
                continue
            dep = self.deps.get(pkey, {}).get(key)
            if dep is not None and dep.status == "pending":
                return True
        return False

    # ------------------------------------------------------------------ the rules

    def _retain(self, job: MJob, state: JobState) -> None:
        """RETENTION."""
        keep = job.keep_completed if state is COMPLETED else job.keep_failed
        if keep is None:
            return
        if keep == 0:
            self._delete((job.queue, job.id))
            return
        finished = sorted(
            (j for j in self.jobs.values() if j.queue == job.queue and j.state is state),
            key=lambda j: j.finish_order,
        )
        for old in finished[: max(0, len(finished) - keep)]:
            self._delete((old.queue, old.id))

    def _release(self, parent: MJob) -> None:
        key = (parent.queue, parent.id)
        self.releases[key] = self.releases.get(key, 0) + 1
        if parent.delay > 0:
            self._enter_delayed(
                parent, STORE_CLOCK if self.store_clock else self.now + parent.delay
            )
        else:
            self._enter_waiting(parent)

    def _release_check(self, key: Key) -> None:
        """RELEASE CHECK."""
        parent = self.jobs.get(key)
        if parent is not None and parent.state is WAITING_CHILDREN and not self.pending(key):
            self._release(parent)

    def final_failure(self, job: MJob, reason: str, *, apply_policy: bool = True) -> None:
        """FINAL FAILURE: parents failed by the fail policy fail at once, their own
        links are carried out level by level, RETENTION runs last (latest first)."""
        job.failed_reason = reason
        self._finish(job, FAILED)
        failed = [(job, reason)]
        index = 0
        while apply_policy and index < len(failed):
            child, why = failed[index]
            index += 1
            for pkey, policy in self.parent_links(child):
                parent = self._apply_policy(child, pkey, policy, why)
                if parent is not None:
                    failed.append((parent, parent.failed_reason or ""))
        for done, _ in reversed(failed):
            self._retain(done, FAILED)

    def _apply_policy(self, job: MJob, pkey: Key, policy: ParentPolicy, reason: str) -> MJob | None:
        key = (job.queue, job.id)
        dep = self.deps.get(pkey, {}).get(key)
        parent = self.jobs.get(pkey)
        if dep is None or dep.status != "pending" or parent is None:
            return None
        if policy is ParentPolicy.FAIL:
            self.deps[pkey][key] = MDep("failed", None, reason)
            if parent.state in UNSTARTED or parent.state is ACTIVE:
                self._fail_unstarted_children(parent)
                parent.failed_reason = child_failed_reason(job.id, reason)
                self._finish(parent, FAILED)
                return parent
        elif policy is ParentPolicy.IGNORE:
            self.deps[pkey][key] = MDep("ignored", None, reason)
            self._release_check(pkey)
        elif policy is ParentPolicy.DROP:
            del self.deps[pkey][key]
            self._release_check(pkey)
        elif policy is ParentPolicy.CONTINUE:
            self.deps[pkey][key] = MDep("failed", None, reason)
            if parent.state is WAITING_CHILDREN:
                self._release(parent)
        else:
            self.remove(parent)
        return None

    def _fail_unstarted_children(self, parent: MJob) -> None:
        doomed: list[MJob] = []
        chosen: set[Key] = set()
        stack = [parent]
        while stack:
            node = stack.pop()
            nkey = (node.queue, node.id)
            for ckey, dep in list(self.deps.get(nkey, {}).items()):
                child = self.jobs.get(ckey)
                if dep.status != "pending" or child is None or child.state not in UNSTARTED:
                    continue
                self.deps[nkey][ckey] = MDep("failed", None, PARENT_FAILED_REASON)
                # A shared job fails with the last of its parents that needed it.
                if ckey in chosen or self.still_needed(child, set()):
                    continue
                chosen.add(ckey)
                doomed.append(child)
                stack.append(child)
        for child in doomed:
            if (child.queue, child.id) in self.jobs:
                self.final_failure(child, PARENT_FAILED_REASON, apply_policy=False)

    def _reached(self, key: Key, leaving: set[Key]) -> Iterator[Key]:
        """Jobs below ``key`` reached through leaving or finished jobs."""
        seen: set[Key] = set()
        stack = list(self.children.get(key, ()))
        while stack:
            child = stack.pop()
            if child in seen:
                continue
            seen.add(child)
            yield child
            found = self.jobs.get(child)
            if child in leaving or (found is not None and found.state.finished):
                stack.extend(self.children.get(child, ()))

    def remove(self, job: MJob) -> None:
        """REMOVE: the job and its unfinished descendants no parent outside the removal
        still needs; its parents' pending dependencies on it resolve."""
        key = (job.queue, job.id)
        links = self.parent_links(job)
        leaving = {key}
        changed = True
        while changed:
            changed = False
            for desc in list(self._reached(key, leaving)):
                found = self.jobs.get(desc)
                if desc in leaving or found is None or found.state.finished:
                    continue
                if not self.still_needed(found, leaving):
                    leaving.add(desc)
                    changed = True
        for gone in leaving:
            self._delete(gone)
        for pkey, _ in links:
            dep = self.deps.get(pkey, {}).get(key)
            if dep is not None and dep.status == "pending":
                del self.deps[pkey][key]
                self._release_check(pkey)

    # ------------------------------------------------------------------ transitions

    def add_jobs(self, groups: Sequence[Sequence[NewJob]]) -> list[bool]:
        written: list[bool] = []
        seen: set[Key] = set()
        for group in groups:
            skip = (group[0].queue, group[0].id) in self.jobs
            for index, new in enumerate(group):
                key = (new.queue, new.id)
                if key in seen:
                    raise DuplicateJobError(key)
                seen.add(key)
                if index and not skip and key in self.jobs:
                    raise DuplicateJobError(key)
            head = group[0]
            if not skip and head.parent_id is not None:
                # ADD TO AN EXISTING PARENT
                pkey = (str(head.parent_queue), head.parent_id)
                parent = self.jobs.get(pkey)
                if parent is None:
                    raise JobNotFoundError(*pkey)
                if parent.state not in (WAITING_CHILDREN, ACTIVE):
                    raise InvalidJobStateError(f"{pkey} is {parent.state}")
            written.append(not skip)
        for group, write in zip(groups, written, strict=True):
            if write:
                for new in group:
                    self._write(new)
        return written

    def add_dag(self, jobs: Sequence[NewJob], edges: Sequence[DagEdge]) -> list[object]:
        """``add_dag`` without deduplication entries: its result is an empty list."""
        new_keys: set[Key] = set()
        for new in jobs:
            key = (new.queue, new.id)
            if key in new_keys or key in self.jobs:
                raise DuplicateJobError(key)
            new_keys.add(key)
        for edge in edges:
            ckey = (edge.child_queue, edge.child_id)
            if ckey in new_keys:
                continue
            child = self.jobs.get(ckey)
            if child is None:
                raise JobNotFoundError(*ckey)
            if child.state is FAILED:
                raise InvalidJobStateError(ckey)
        for new in jobs:
            self._write(new)
        for edge in edges:
            pkey, ckey = (edge.parent_queue, edge.parent_id), (edge.child_queue, edge.child_id)
            child = self.jobs[ckey]
            if child.parent is None:
                child.parent, child.policy = pkey, edge.policy
            else:
                child.links = [*(child.links or []), (pkey, edge.policy)]
            if child.state is COMPLETED:
                dep = MDep("processed", child.return_value)
            else:
                dep = MDep("pending")
            self.deps.setdefault(pkey, {})[ckey] = dep
            self.children.setdefault(pkey, []).append(ckey)
        for new in jobs:
            if new.state is WAITING_CHILDREN:
                self._release_check((new.queue, new.id))
        return []

    def _write(self, new: NewJob) -> None:
        key = (new.queue, new.id)
        job = MJob(
            queue=new.queue,
            id=new.id,
            name=new.name,
            data=new.data,
            opts=new.opts,
            state=new.state,
            priority=new.priority,
            lifo=new.lifo,
            delay=new.delay,
            keep_completed=new.keep_completed,
            keep_failed=new.keep_failed,
            parent=None if new.parent_id is None else (str(new.parent_queue), new.parent_id),
            policy=new.parent_policy,
            created_at=self.now,
            group=new.group_id,
        )
        self.jobs[key] = job
        if job.parent is not None:
            self.deps.setdefault(job.parent, {})[key] = MDep("pending")
            self.children.setdefault(job.parent, []).append(key)
            self.ever_parent.add(job.parent)
        if new.state is WAITING_CHILDREN:
            self.ever_parent.add(key)
            self._enter_waiting_children(job)
        elif new.state is DELAYED:
            self._enter_delayed(job, self.now + new.delay)
        else:
            self._enter_waiting(job)

    def add_children(
        self, queue: str, job_id: str, token: str, groups: Sequence[Sequence[NewJob]]
    ) -> list[bool]:
        """ADD CHILDREN: ``add_jobs`` under the parent's lock."""
        if self._owned(queue, job_id, token) is None:
            raise LockLostError((queue, job_id))
        return self.add_jobs(groups)

    def park(self, queue: str, job_id: str, token: str) -> bool:
        """PARK: no attempt counted, lock cleared, delay spent."""
        job = self._owned(queue, job_id, token)
        if job is None:
            raise LockLostError((queue, job_id))
        if job.cancel_request is not None:
            self.final_failure(job, job.cancel_request)
            return True
        if not self.pending((queue, job_id)):
            return False
        job.lock_token = job.lock_until = None
        job.delay = 0.0
        self._enter_waiting_children(job)
        return True

    def waiting_order(self, queue: str) -> list[MJob]:
        jobs = [j for j in self.jobs.values() if j.queue == queue and j.state is WAITING]
        return sorted(jobs, key=lambda j: j.place or (0, 0))

    def promote_due(self, queue: str) -> None:
        due = [
            j
            for j in self.jobs.values()
            if j.queue == queue
            and j.state is DELAYED
            and j.run_at is not None
            and j.run_at <= self.now
        ]
        self.begin_batch()
        for job in due:
            self._enter_waiting(job)
        self.end_batch()

    def next_run_at(self, queue: str) -> float | None:
        times = [
            j.run_at
            for j in self.jobs.values()
            if j.queue == queue and j.state is DELAYED and j.run_at is not None
        ]
        return min(times) if times else None

    def take(
        self, queue: str, taken: Sequence[str], limit: int, token: str, lock_until: float
    ) -> list[str]:
        """Apply a take whose store result was ``taken``; returns the problems found."""
        self.promote_due(queue)
        problems: list[str] = []
        order = [] if queue in self.paused else self.waiting_order(queue)
        if any(job.group is not None for job in order):
            return self._take_by_lanes(queue, order, taken, limit, token, lock_until)
        expect = order[:limit]
        got: list[MJob] = []
        for job_id in taken:
            job = self.jobs.get((queue, job_id))
            if job is None or job.state is not WAITING:
                problems.append(f"take returned {job_id!r}, which is not waiting")
            else:
                got.append(job)
        if problems:
            return problems
        if len(set(taken)) != len(taken):
            problems.append(f"take returned a job twice: {list(taken)}")
        if len(got) != len(expect) or sorted(j.place or (0, 0) for j in got) != [
            j.place for j in expect
        ]:
            problems.append(
                f"take returned {list(taken)}, expected the first {limit} of "
                f"{[j.id for j in order]}" + (" (queue paused)" if queue in self.paused else "")
            )
        places = [j.place or (0, 0) for j in got]
        if places != sorted(places):
            problems.append(f"take returned {list(taken)} out of waiting order")
        for job in got:
            job.state = ACTIVE
            job.place = None
            job.lock_token = token
            job.lock_until = lock_until
            job.processed_at = self.now
        return problems

    def _take_by_lanes(
        self,
        queue: str,
        order: list[MJob],
        taken: Sequence[str],
        limit: int,
        token: str,
        lock_until: float,
    ) -> list[str]:
        """TAKE BY LANES (no group limits): one job at a time from the lane served least
        recently (then by group id, the own lane as ""); jobs of one lane in place order,
        where jobs sharing a place may come in any order."""
        lanes: dict[str, list[MJob]] = {}
        for job in order:
            lanes.setdefault(job.group or "", []).append(job)
        expect: list[tuple[str, tuple[int, int]]] = []
        while len(expect) < limit and any(lanes.values()):
            lane = min(
                (g for g, jobs in lanes.items() if jobs),
                key=lambda g: (self.served.get((queue, g), 0), g),
            )
            job = lanes[lane].pop(0)
            expect.append((lane, job.place or (0, 0)))
            self.serve_no[queue] = self.serve_no.get(queue, 0) + 1
            self.served[(queue, lane)] = self.serve_no[queue]
        got: list[MJob] = []
        for job_id in taken:
            job = self.jobs.get((queue, job_id))
            if job is None or job.state is not WAITING or job in got:
                return [f"take returned {job_id!r}, which is not waiting (or twice)"]
            got.append(job)
        actual = [(job.group or "", job.place or (0, 0)) for job in got]
        if actual != expect:
            return [f"take by lanes returned {actual}, expected {expect}"]
        for job in got:
            job.state = ACTIVE
            job.place = None
            job.lock_token = token
            job.lock_until = lock_until
            job.processed_at = self.now
        return []

    def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> set[str]:
        kept: set[str] = set()
        for job_id, token in locks:
            job = self._owned(queue, job_id, token)
            if job is not None:
                job.lock_until = lock_until
                kept.add(job_id)
        return kept

    def complete(self, queue: str, job_id: str, token: str, value: str) -> bool:
        job = self._owned(queue, job_id, token)
        if job is None:
            return False
        if job.cancel_request is not None:
            job.attempts_made += 1
            self.final_failure(job, job.cancel_request)
            return True
        job.return_value = value
        job.attempts_made += 1
        self._finish(job, COMPLETED)
        key = (job.queue, job.id)
        for pkey, _ in self.parent_links(job):
            dep = self.deps.get(pkey, {}).get(key)
            if dep is not None:
                was_pending = dep.status == "pending"
                self.deps[pkey][key] = MDep("processed", value)
                if was_pending:
                    self._release_check(pkey)
        self._retain(job, COMPLETED)
        return True

    def fail(
        self, queue: str, job_id: str, token: str, reason: str, retry_at: float | None
    ) -> bool:
        job = self._owned(queue, job_id, token)
        if job is None:
            return False
        job.attempts_made += 1
        job.failed_reason = reason
        job.lock_token = job.lock_until = None
        if job.cancel_request is not None:
            self.final_failure(job, job.cancel_request)
        elif retry_at is None:
            self.final_failure(job, reason)
        elif retry_at <= self.now:
            self._enter_waiting(job)
        else:
            self._enter_delayed(job, retry_at)
        return True

    def release(self, queue: str, job_id: str, token: str) -> bool:
        job = self._owned(queue, job_id, token)
        if job is None:
            return False
        if job.cancel_request is not None:
            self.final_failure(job, job.cancel_request)
        else:
            self._enter_waiting(job)
        return True

    def expired(self, queue: str) -> list[Key]:
        return [
            k
            for k, j in self.jobs.items()
            if j.queue == queue
            and j.state is ACTIVE
            and j.lock_until is not None
            and j.lock_until < self.now
        ]

    def recover_stalled(self, keys: Sequence[Key], max_stalled_count: int) -> set[tuple[str, bool]]:
        """Recover the given expired jobs in this order (see :func:`orderings`)."""
        outcomes: set[tuple[str, bool]] = set()
        self.begin_batch()
        for key in keys:
            job = self.jobs.get(key)
            if job is None or job.state is not ACTIVE:
                continue  # removed by an earlier job's failure in the same call
            job.stalled_count += 1
            job.lock_token = job.lock_until = None
            if job.cancel_request is not None:
                self.final_failure(job, job.cancel_request)
                outcomes.add((job.id, True))
            elif job.stalled_count > max_stalled_count:
                self.final_failure(job, STALLED_REASON)
                outcomes.add((job.id, True))
            else:
                self._enter_waiting(job)
                outcomes.add((job.id, False))
        self.end_batch()
        return outcomes

    def promote_job(self, queue: str, job_id: str) -> None:
        job = self.jobs.get((queue, job_id))
        if job is None:
            raise JobNotFoundError(queue, job_id)
        if job.state is not DELAYED:
            raise InvalidJobStateError(job.state)
        self._enter_waiting(job)

    def promote_jobs(self, queue: str) -> int:
        delayed = [j for j in self.jobs.values() if j.queue == queue and j.state is DELAYED]
        self.begin_batch()
        for job in delayed:
            self._enter_waiting(job)
        self.end_batch()
        return len(delayed)

    def retry_job(self, queue: str, job_id: str) -> None:
        job = self.jobs.get((queue, job_id))
        if job is None:
            raise JobNotFoundError(queue, job_id)
        if job.state is not FAILED:
            raise InvalidJobStateError(job.state)
        self._retry(job)

    def _retry(self, job: MJob) -> None:
        job.attempts_made = 0
        job.stalled_count = 0
        job.failed_reason = None
        job.finished_at = None
        job.return_value = None
        self._enter_waiting(job)
        key = (job.queue, job.id)
        for pkey, _ in self.parent_links(job):
            parent = self.jobs.get(pkey)
            if parent is None or (parent.state not in UNSTARTED and parent.state is not ACTIVE):
                continue
            deps = self.deps.setdefault(pkey, {})
            if key not in deps:
                self.recreated.add(pkey)
            deps[key] = MDep("pending")
            if parent.state is WAITING or parent.state is DELAYED:
                self._enter_waiting_children(parent)

    def failed_keys(self, queue: str) -> list[Key]:
        return [k for k, j in self.jobs.items() if j.queue == queue and j.state is FAILED]

    def retry_jobs(self, keys: Sequence[Key]) -> int:
        """``retry_jobs(queue, failed)`` retrying in this order (see :func:`orderings`)."""
        self.begin_batch()
        for key in keys:
            self._retry(self.jobs[key])
        self.end_batch()
        return len(keys)

    def cancel(self, queue: str, job_id: str, reason: str) -> int:
        """CANCEL: the job and its unfinished descendants, children before parents."""
        top = self.jobs.get((queue, job_id))
        if top is None:
            raise JobNotFoundError(queue, job_id)
        if top.state.finished:
            return 0
        found: list[MJob] = []
        seen = {(queue, job_id)}
        stack = [(queue, job_id)]
        while stack:
            key = stack.pop()
            for child_key in self.deps.get(key, {}):
                child = self.jobs.get(child_key)
                if child is not None and child_key not in seen:
                    seen.add(child_key)
                    if not child.state.finished:
                        found.append(child)
                    stack.append(child_key)
        count = 0
        for job in [*reversed(found), top]:
            key = (job.queue, job.id)
            if key not in self.jobs or job.state.finished:
                continue
            if job is not top:
                # Its parents inside the subtree are cancelled too: no policy for them.
                for pkey, _ in self.parent_links(job):
                    dep = self.deps.get(pkey, {}).get(key)
                    if pkey in seen and dep is not None and dep.status == "pending":
                        self.deps[pkey][key] = MDep("failed", None, reason)
            if job.state is ACTIVE:
                if job.cancel_request is None:
                    job.cancel_request = reason
                    count += 1
            else:
                self.final_failure(job, reason)
                count += 1
        return count

    def cancel_requests(self, queue: str, job_ids: Sequence[str]) -> dict[str, str]:
        found = {}
        for job_id in job_ids:
            job = self.jobs.get((queue, job_id))
            if job is not None and job.state is ACTIVE and job.cancel_request is not None:
                found[job_id] = job.cancel_request
        return found

    def remove_job(self, queue: str, job_id: str) -> bool:
        job = self.jobs.get((queue, job_id))
        if job is None:
            return False
        if job.state is ACTIVE:
            raise InvalidJobStateError(job.state)
        self.store_clock = True
        try:
            self.remove(job)
        finally:
            self.store_clock = False
        return True

    # ------------------------------------------------------------------ comparing

    def check(self, snap: Snapshot) -> list[str]:
        """Differences between the model and what the store shows."""
        problems: list[str] = []
        add = problems.append
        model_keys = set(self.jobs)
        store_keys = set(snap.jobs)
        for key in sorted(model_keys - store_keys):
            add(f"job {key} is {self.jobs[key].state} in the model but missing in the store")
        for key in sorted(store_keys - model_keys):
            add(f"job {key} exists in the store ({snap.jobs[key].state}) but not in the model")
        for key in sorted(model_keys & store_keys):
            problems.extend(_compare_job(self.jobs[key], snap.jobs[key]))
        for queue in self.queues:
            counts = {s: 0 for s in JobState}
            for job in self.jobs.values():
                if job.queue == queue:
                    counts[job.state] += 1
            if snap.counts[queue] != counts:
                add(f"counts of {queue!r}: store {dict(snap.counts[queue])}, model {counts}")
            if snap.paused[queue] != (queue in self.paused):
                add(f"paused of {queue!r}: store {snap.paused[queue]}")
            waiting = snap.listings[(queue, WAITING)]
            places = [self.jobs[(queue, i)].place for i in waiting if (queue, i) in self.jobs]
            if None not in places and places != sorted(places):  # type: ignore[type-var]
                expected = [j.id for j in self.waiting_order(queue)]
                add(f"waiting order of {queue!r}: store {waiting}, model {expected}")
            run_ats = [snap.jobs[(queue, i)].run_at for i in snap.listings[(queue, DELAYED)]]
            if run_ats != sorted(run_ats):  # type: ignore[type-var]
                add(f"delayed listing of {queue!r} not by run_at: {run_ats}")
            for state in JobState:
                listed = snap.listings[(queue, state)]
                wanted = {j.id for j in self.jobs.values() if j.queue == queue and j.state is state}
                if sorted(listed) != sorted(wanted):
                    add(f"get_jobs({queue!r}, {state}): store {listed}, model {sorted(wanted)}")
        holding = sorted(q for q in self.queues if q in self.paused or _has_jobs(self, q))
        if snap.queues != holding:
            add(f"list_queues: store {snap.queues}, model {holding}")
        for key in sorted(self.ever_parent):
            deps = snap.deps.get(key)
            if key not in self.jobs:
                if deps is not None:
                    add(f"dependencies of removed job {key} still readable: {deps}")
                continue
            problems.extend(self._compare_deps(key, deps or []))
        return problems

    def _compare_deps(self, key: Key, deps: list[ChildDependency]) -> list[str]:
        mine = self.deps.get(key, {})
        got = {(d.queue, d.id): MDep(d.status, d.value, d.reason) for d in deps}
        problems = []
        if got != mine:
            problems.append(f"dependencies of {key}: store {got}, model {mine}")
        elif key not in self.recreated and [(d.queue, d.id) for d in deps] != list(mine):
            problems.append(f"dependencies of {key} out of insertion order")
        return problems


def _has_jobs(model: Model, queue: str) -> bool:
    return any(j.queue == queue for j in model.jobs.values())


def _compare_job(mine: MJob, got: JobRecord) -> list[str]:
    key = (mine.queue, mine.id)
    wanted: dict[str, Any] = {
        "state": mine.state,
        "name": mine.name,
        "data": mine.data,
        "opts": mine.opts,
        "priority": mine.priority,
        "lifo": mine.lifo,
        "attempts_made": mine.attempts_made,
        "stalled_count": mine.stalled_count,
        "failed_reason": mine.failed_reason,
        "created_at": mine.created_at,
        "parent_id": None if mine.parent is None else mine.parent[1],
        "parent_queue": None if mine.parent is None else mine.parent[0],
        "parent_policy": mine.policy,
        "keep_completed": mine.keep_completed,
        "keep_failed": mine.keep_failed,
        "group_id": mine.group,
    }
    if mine.state is COMPLETED:
        wanted["return_value"] = mine.return_value
    if mine.state.finished:
        wanted["finished_at"] = mine.finished_at
    if mine.state is DELAYED and mine.run_at != STORE_CLOCK:
        wanted["run_at"] = mine.run_at
    if mine.state is ACTIVE:
        wanted["lock_token"] = mine.lock_token
        wanted["lock_until"] = mine.lock_until
        wanted["processed_at"] = mine.processed_at
    else:
        wanted["lock_token"] = None
    problems = []
    for name, value in wanted.items():
        actual = getattr(got, name)
        if actual != value:
            problems.append(f"job {key}: {name} is {actual!r} in the store, {value!r} in the model")
    return problems


def orderings(keys: Sequence[Key], rng: random.Random, cap: int = 720) -> Iterable[list[Key]]:
    """Every order of ``keys`` when there are few, else ``cap`` sampled ones."""
    if len(keys) <= 6:
        return [list(p) for p in itertools.permutations(keys)]
    out = [list(keys), list(reversed(keys))]
    for _ in range(cap):
        shuffled = list(keys)
        rng.shuffle(shuffled)
        out.append(shuffled)
    return out


def is_subsequence(short: Sequence[str], long: Sequence[str]) -> bool:
    it = iter(long)
    return all(any(x == y for y in it) for x in short)
