"""The store protocol: the one boundary between Conveyor's core and a storage backend.

Everything above this module (``Queue``, ``Job``, ``Worker``, ``FlowProducer``,
``QueueEvents``) talks to a store only through :class:`StoreInterface`; nothing in the
core reaches into a store any other way. A store author needs nothing but this module.

Division of labour
==================
The core makes every *decision*: it validates input, serialises data to JSON text,
assigns job ids, picks a new job's initial state, resolves which failure policy a child
carries toward its parent (the child's own flag wins, else the parent's
``fail_parent_on_child_failure``), decides retry versus final failure and computes the
backoff, and reads the clock. The store carries out *transitions*: each method below is
one atomic change of the store, so a crash between two calls loses no job and leaves no
parent counter wrong. Every transition that touches an active job carries its lock token,
and the store refuses (without changing anything) when the token does not match.

Conventions
===========
* Times are POSIX timestamps (``float`` seconds, UTC) passed in by the caller as ``now``;
  a store never reads its own clock for job semantics, which keeps stores deterministic
  and lets tests move time.
* ``data``, ``opts``, ``return_value``, ``progress`` and log lines are JSON text; a store
  keeps them byte for byte and never parses them.
* Queue names, job names and ids are arbitrary non-empty strings (quotes, colons, braces,
  unicode). They are data: never spliced into SQL or script source. The core refuses
  NUL characters, lone surrogates and text over the limits in ``conveyor_core.models``
  (``MAX_QUEUE_NAME_BYTES``, ``MAX_JOB_ID_BYTES``, ``MAX_JOB_NAME_BYTES``, in bytes of
  UTF-8) before a store sees it; a store must accept every name and id within them,
  including a key that holds two queue names and two ids at their limits.
* Ordering of waiting jobs: ascending ``priority``, then by entry into ``waiting``: a job
  entering ``waiting`` is put behind all jobs of its priority, or, if it is ``lifo``, in
  front of them. Every entry into ``waiting`` counts (add, promotion from ``delayed``,
  release of a parent, stall recovery, retry), so a retried job goes to the back.
* Events: each transition publishes the events listed in its docstring, to listeners of
  that queue in every process (see :meth:`StoreInterface.subscribe`). Publishing is part
  of the transition (best effort for delivery: a listener that is not connected misses
  events), never a separate call.

Parents (``PARENT LINKS``)
==========================
A job may have several parents (a DAG, see :meth:`StoreInterface.add_dag`): the jobs that
depend on it. Its *parent links* are, in order, its ``parent_id``/``parent_queue``/
``parent_policy`` (its first parent; a tree's job has this one at most), then its further
:class:`ParentLink` records, in the order they were made. Each link is one edge with its
own policy, and its parent holds one dependency record on the job. A job has further links
only while it has a first parent. A link whose parent no longer exists is skipped by every
rule below (the parent was removed).

A parent ``P`` *still needs* a job ``C`` when ``P`` exists, is neither ``completed`` nor
``failed``, and holds a ``pending`` dependency on ``C``. In a tree, a job's one parent is
the only one that can need it, so the rules below read as they did before DAGs.

The rules of a final failure (``FINAL FAILURE``)
=================================================
Used by :meth:`fail_jobs`, :meth:`recover_stalled` and recursively by itself. When job
``J`` fails for good with reason ``R``:

1. ``J`` becomes ``failed`` with ``failed_reason = R``, ``finished_at = now``; event
   ``failed``.
2. For each of ``J``'s parent links, in order, whose parent ``P`` (still existing) holds
   a ``pending`` dependency on ``J``, that link's policy is carried out on ``P``:

   * ``fail``: the dependency becomes ``failed`` (reason ``R``). If ``P`` is in
     ``waiting-children``, ``waiting``, ``delayed`` or ``active`` (a step job still
     running, or a parent released early by ``continue``; its lock is void from then
     on, so its worker's result is refused), first every *pending* dependency of
     ``P`` whose job is ``waiting``, ``delayed`` or ``waiting-children`` is marked
     ``failed`` with reason ``"parent failed"``, and such a job that no parent still
     needs then (every job depending on it has failed, is failing here, or is gone)
     itself fails with reason ``"parent failed"``, recursively (its own pending unstarted
     children are treated the same way; these cascaded failures do not apply policies
     upward). A shared job another parent still needs is left as it is; it is looked at
     again when that parent fails in the same cascade. Then ``P`` itself goes through
     FINAL FAILURE with reason ``"child <J.id> failed: <R>"``: it fails at once (step 1),
     and its own parent links (step 2) are carried out after those of every job failed
     before it in this FINAL FAILURE, level by level; RETENTION (step 3) of all of them
     runs last, the latest failed first. Active siblings are left
     to finish; their outcome is recorded on ``P``'s dependencies and changes nothing
     else.
   * ``ignore``: the dependency becomes ``ignored`` (reason ``R``) and counts as
     resolved (RELEASE CHECK).
   * ``drop``: the dependency is deleted without a record and counts as resolved
     (RELEASE CHECK).
   * ``continue``: the dependency becomes ``failed`` (reason ``R``); if ``P`` is in
     ``waiting-children`` it is RELEASED at once, pending children or not. An ``active``
     ``P`` is left running (its handler can read the failure); if it PARKS later, it
     waits for the children still pending.
   * ``remove``: ``P`` is REMOVED (with its unfinished descendants).

3. Then ``J``'s ``keep_failed`` retention applies (see RETENTION).

A later link's policy sees what the earlier ones did (a parent failed or removed by an
earlier link is skipped, as its dependency is no longer ``pending`` or it is gone).

RELEASE CHECK: when a parent in ``waiting-children`` has no ``pending`` dependency left,
it is RELEASED: it enters ``waiting`` (event ``waiting``), or, if it was added with a
``delay``, enters ``delayed`` with ``run_at = now + delay`` (event ``delayed``). A parent
is released at most once per time it enters ``waiting-children``.

RELEASE CHECK moves only a parent in ``waiting-children``: a child that resolves while
its parent is ``active`` (a step job) records its outcome and moves nothing.

ADD TO AN EXISTING PARENT (step jobs, ``opts.parent``): the first job of a group written
by :meth:`StoreInterface.add_jobs` may name a parent that is not in the group, an
existing job. That parent must exist (else ``JobNotFoundError`` naming it) and be in
``waiting-children`` or ``active`` (else ``InvalidJobStateError``); either error leaves
the whole call unwritten. It gets one more ``pending`` dependency (appended, counted)
and keeps its state: a parent in ``waiting-children`` waits for the new child too. A
skipped group (its first id exists) is not checked.

PARK of an active job ``J`` (``wait_for_children``): if ``J`` holds a ``pending``
dependency, ``J`` enters ``waiting-children`` (event ``waiting-children``), its lock is
cleared and ``attempts_made`` stays as it is (a park is not an attempt), and its delay is
spent (its RELEASE enters ``waiting``). Then RELEASE CHECK applies to it as to any
parent: when its last pending child resolves it re-enters ``waiting`` and runs again
from the start, with its data as last updated. Without a pending dependency nothing
changes and ``J`` keeps running. A ``J`` with a CANCEL REQUEST ``R`` goes through FINAL
FAILURE with reason ``R`` instead (no attempt counted), reported as parked.

REMOVE of a job ``J``: ``J`` and every descendant of ``J`` that is not ``completed`` or
``failed`` (found below finished descendants too) and that no parent outside the removal
still needs (a shared job another remaining job waits for stays, losing only the
dependencies the removed jobs held on it) are deleted with their logs, dependency records
and parent links (event ``removed`` for each); an active descendant's lock is void from
then on. For each of ``J``'s parent links whose parent ``P`` still holds a ``pending``
dependency on ``J``, that dependency is deleted and counts as resolved (RELEASE CHECK on
``P``). A ``processed`` dependency keeps its value.

JOB SCHEDULERS: a scheduler (``queue``, ``id``) adds one job, or one flow, per tick.
The core computes the ticks (``next_run_at``) and builds each tick's jobs; the store keeps
:class:`SchedulerRecord` rows and offers four transitions. The rule that makes a tick
fire exactly once, however many workers in however many processes see it due, is the
compare-and-set of :meth:`StoreInterface.fire_scheduler`: a tick is fired by the one
caller that finds the stored ``next_run_at`` still equal to the tick it read, and that
call writes the tick's jobs and advances ``next_run_at`` in one atomic step. The first
job of a tick has the id ``sched:<scheduler id>:<tick in whole milliseconds>``, so even
a repeated add of the same tick collapses (as by ``add_jobs``, an existing first job
skips its group). ``obliterate`` deletes the queue's schedulers.

REMOVE CHILD DEPENDENCY of a job ``C`` (a child leaving its parents): ``C`` keeps
running or waiting as it is, but no longer has a parent: its ``parent_id``,
``parent_queue`` and ``parent_policy`` are cleared and its further parent links deleted,
so its completion, failure or retry no longer touches any parent. For each parent ``P``
of those links that still holds a ``pending`` dependency on ``C``, that dependency is
deleted and counts as resolved (RELEASE CHECK on ``P``). A dependency that already
resolved (``processed``, ``failed``, ``ignored``) stays on ``P`` as its record: a
processed child keeps its value.

REMOVE UNPROCESSED CHILDREN of a parent ``P``: every child on which ``P`` holds a
``pending`` dependency is REMOVED (with its unfinished descendants; its dependency is
deleted and counts as resolved), except a child that is ``active``: a running child is
left to finish, and its outcome is recorded on ``P`` as usual. A pending dependency whose
child no longer exists is deleted too. Then RELEASE CHECK on ``P`` (once). Resolved
dependencies stay.

DEPENDENCY COUNTS: a store keeps, per parent, how many of its dependency records are in
each status, exact after every transition that writes, changes or deletes a dependency
record (add, complete, every failure policy, retry putting a dependency back, REMOVE,
REMOVE CHILD DEPENDENCY, obliterate), so :meth:`StoreInterface.get_dependency_counts`
reads counters instead of the records; and it keeps a parent's records readable by range
in insertion order, so a page of :meth:`StoreInterface.get_dependency_page` costs the
page, not the flow.

CANCEL of a job ``J`` with reason ``R`` (the whole ``failed_reason`` text, built by the
core with :func:`cancelled_reason`: ``"cancelled"`` or ``"cancelled: <reason>"``), in one
atomic step. ``J`` must exist (``JobNotFoundError``); if ``J`` is ``completed`` or
``failed``, nothing changes and the count is 0. Otherwise the jobs cancelled are ``J`` and
every descendant of ``J`` that is not ``completed`` or ``failed`` (found below finished
descendants too), taken children before parents, ``J`` last:

* a descendant: each ``pending`` dependency on it held by a job of the cancelled subtree
  (``J`` or a descendant of ``J``) becomes ``failed`` (reason ``R``) and no policy applies
  to it (that parent is cancelled too, or has finished);
* an unstarted one (``waiting``, ``delayed``, ``waiting-children``): event ``cancelled``
  (``{"reason": R}``), then FINAL FAILURE with reason ``R``: its parent links whose parent
  still holds a ``pending`` dependency on it (``J``'s parents, and a shared descendant's
  parents outside the subtree, see PARENT LINKS) apply their policy;
* an ``active`` one without a cancel request: it gets the CANCEL REQUEST ``R`` and keeps
  its lock; event ``cancelled``. One that already has a request is left as it is and is
  not counted.

Returns how many were cancelled (failed now, or given a request now).

CANCEL REQUEST: an ``active`` job holding a cancel request ``R`` never completes and is
never retried. When its worker completes it, fails it (with or without ``retry_at``) or
releases it, or it is recovered as stalled, it goes through FINAL FAILURE with reason
``R`` instead (a completion or failure counts its attempt; a stall first counts the stall
and publishes ``stalled``), whatever attempts or stalls remain; the call reports the item
as applied. The request ends when the job leaves ``active``.

DEDUPLICATION: a queue holds deduplication entries, one per deduplication id: the id
of the job that took it and ``expires_at`` (``None`` without a ttl). An entry is *live*
at ``now`` while its job exists and, without ``expires_at``, is not ``completed`` or
``failed``; with ``expires_at``, while ``now < expires_at`` (whatever the job does). So
an id is freed when its job finishes or is deleted (no ttl), or when the ttl passes.
:meth:`StoreInterface.add_deduplicated` of a job ``N`` with deduplication
``(id, ttl, extend, replace)``, in one atomic step:

1. If the entry of ``id`` is live, with job ``J``: nothing new is written. If
   ``replace`` and ``J`` is ``delayed``, ``J.data`` becomes ``N.data`` and its delay
   starts again: ``run_at = now + N.delay`` (event ``delayed`` with ``{"run_at"}``). If
   ``extend`` (and ``ttl``), ``expires_at = now + ttl``. Event ``deduplicated`` on ``J``
   with ``{"deduplication_id": id, "deduplicated_job_id": N.id}``. Returns ``J.id``, not
   written.
2. Otherwise ``N`` is added as one group of :meth:`StoreInterface.add_jobs` (an existing
   ``N.id`` writes nothing and returns ``N.id``, not written, leaving the entry as it
   was); if written, the entry becomes ``(N.id, now + ttl or None)``. Returns ``N.id``.

Two concurrent adds of one deduplication id write exactly one job. ``obliterate`` drops
the queue's entries.

DEDUPLICATED NODE: :meth:`StoreInterface.add_dag` may carry deduplication entries
``(index, key)``: the node ``N = jobs[index]``, a leaf (no edge has it as its parent),
under the deduplication id ``key.id`` of ``N.queue`` (at most one entry per node and per
``(queue, id)``: see :func:`check_dag`). In the same atomic step as the
rest of the DAG, for each entry in order, as DEDUPLICATION step 1 defines *live*:

1. If the entry of ``key.id`` is live, with job ``J``: ``N`` is not written, and every
   edge whose child is ``N`` gets ``J`` as its child instead (an edge that then repeats
   an earlier edge's parent and child is dropped). So ``J`` gets a parent link with the
   edge's policy and the parent a dependency on ``J``, as for any existing child of a
   DAG: ``processed`` at once with ``J``'s value if ``J`` is ``completed`` (possible
   under a ttl), refused with ``InvalidJobStateError`` (nothing written) if ``J`` has
   ``failed``. ``replace`` and ``extend`` act on ``J`` as in DEDUPLICATION step 1, and
   ``J`` gets the event ``deduplicated`` with ``{"deduplication_id": key.id,
   "deduplicated_job_id": N.id}``. The entry's result is ``(J.id, written=False)``.
2. Otherwise ``N`` is written as any job of the DAG (an existing ``N.id`` refuses the
   call with ``DuplicateJobError``), and the entry becomes ``(N.id, now + ttl or
   None)``. The result is ``(N.id, written=True)``.

Two concurrent adds of one deduplication id (by ``add_dag`` or ``add_deduplicated``)
write exactly one job.

GROUPS: a job may belong to a group (``group_id``: a non-empty string given when it is
added, never changed). A queue's waiting jobs form *lanes*: one per group that has a
waiting job, and the queue's own lane of its waiting jobs without a group. The queue
keeps, per group, a ``served`` number (0 until the group is first served) and a rate
window; the queue's own lane has a ``served`` number too. The queue's *group limits*
(:meth:`StoreInterface.set_group_limits`) hold for each group apart: ``concurrency``
(at most that many active jobs of the group) and ``rate_limit = (max, duration)`` (at
most ``max`` jobs of the group start in any window of ``duration`` seconds; a window
starts at the first take of the group after the previous window ended, and a group
served while the queue has no rate limit keeps no window: a rate limit set later counts
from the next take).

TAKE BY LANES: while the queue has a waiting job with a group, :meth:`take_jobs` takes
(after its checks of pause, manual rate limit, global concurrency and ``rate_limit``,
which bound ``limit`` as for a plain take) one job at a time, each from the lane served
least recently among the lanes that can give a job: lanes ordered by ``served``, then by
group id in code point order, the queue's own lane counting as the empty id (so it comes
first among equals). A lane's job is its first waiting job by priority, then entry order
(as a plain take). Each job taken sets its lane's ``served`` to a number greater than
every ``served`` number of the queue, so that lane goes last. A group's lane cannot give
a job while the group has ``concurrency`` or more active jobs, or while its rate window
is full; the queue's own lane has no group limits. The take ends at ``limit`` jobs, or
when no lane can give one, and returns the jobs in the order taken. When it takes none
but a group with a waiting job was held back by its limits: ``concurrency_limited`` if
one was held back by its concurrency, and ``rate_limited_until`` the earliest end of the
full windows that held one back (a take that takes a job sets neither for its groups).
While no waiting job has a group, a take is a plain take and changes no ``served``
number. ``obliterate`` drops the queue's group limits and lanes.

RETENTION: ``keep_completed`` / ``keep_failed`` of a job are ``None`` (keep), ``0``
(delete the job as soon as it finishes) or ``N`` (after it finishes, keep only the ``N``
most recently finished jobs of its queue in that state; delete older ones). Deleting a
finished job for retention never touches its parent's dependency record, so
``get_children_values`` keeps its value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, runtime_checkable

from .models import JobState, ParentPolicy

DependencyStatus = Literal["pending", "processed", "failed", "ignored"]


@dataclass(slots=True)
class NewJob:
    """A job to be written by :meth:`StoreInterface.add_jobs`. Built by the core."""

    id: str
    queue: str
    name: str
    data: str
    """JSON text."""
    opts: str
    """JSON text of the job's ``JobOptions``; stored and returned verbatim, keys the core
    adds beside the options (a trace context, ``conveyor_core.telemetry.TRACE_KEY``)
    included."""
    state: JobState
    """``waiting``, ``delayed`` or ``waiting-children``; chosen by the core."""
    priority: int = 0
    lifo: bool = False
    delay: float = 0.0
    """Seconds. A ``delayed`` job runs at ``now + delay``; a parent in ``waiting-children``
    enters ``delayed`` for this long when it is released (0: it enters ``waiting``)."""
    keep_completed: int | None = None
    keep_failed: int | None = None
    parent_id: str | None = None
    parent_queue: str | None = None
    """The parent's id and queue: both given, or neither (no parent)."""
    parent_policy: ParentPolicy | None = None
    """What this job's final failure does to its parent; ``None`` without a parent."""
    group_id: str | None = None
    """The job's group (``opts.group_id``; see GROUPS), or ``None``."""


@dataclass(slots=True)
class JobRecord:
    """A job as the store holds it. Returned by reads and by :meth:`take_jobs`, each
    record the caller's own: changing it, or its ``stacktrace`` list, changes nothing the
    store holds."""

    id: str
    queue: str
    name: str
    data: str
    opts: str
    state: JobState
    priority: int = 0
    lifo: bool = False
    delay: float = 0.0
    attempts_made: int = 0
    """Attempts that have ended (completed, failed or retried); stalls do not count."""
    stalled_count: int = 0
    progress: str | None = None
    return_value: str | None = None
    failed_reason: str | None = None
    stacktrace: list[str] = field(default_factory=list)
    created_at: float = 0.0
    processed_at: float | None = None
    """When the latest attempt started."""
    finished_at: float | None = None
    run_at: float | None = None
    """For a ``delayed`` job: when it becomes ``waiting``."""
    keep_completed: int | None = None
    keep_failed: int | None = None
    parent_id: str | None = None
    parent_queue: str | None = None
    parent_policy: ParentPolicy | None = None
    lock_token: str | None = None
    """Set while ``active``."""
    lock_until: float | None = None
    cancel_reason: str | None = None
    """While ``active``: the reason of its CANCEL REQUEST, if it has one."""
    group_id: str | None = None
    """The job's group (see GROUPS), or ``None``."""


@dataclass(slots=True, frozen=True)
class ChildDependency:
    """One child as its parent sees it."""

    queue: str
    id: str
    status: DependencyStatus
    value: str | None = None
    """JSON text of the child's return value when ``processed``."""
    reason: str | None = None
    """The child's failure reason when ``failed`` or ``ignored``."""


@dataclass(slots=True, frozen=True)
class ParentLink:
    """One parent of a job and the policy of that edge (see PARENT LINKS)."""

    queue: str
    id: str
    policy: ParentPolicy
    """What the job's final failure does to this parent."""


@dataclass(slots=True, frozen=True)
class DagEdge:
    """A dependency of :meth:`StoreInterface.add_dag`: ``parent`` waits for ``child``.

    The parent is a job of the same call; the child is one too, or a job already in the
    store. ``policy`` is what the child's final failure does to this parent (the core
    resolves it: the child's own flag, else the parent's ``fail_parent_on_child_failure``).
    """

    parent_queue: str
    parent_id: str
    child_queue: str
    child_id: str
    policy: ParentPolicy


@dataclass(slots=True)
class DependencyPage:
    """One page of :meth:`StoreInterface.get_dependency_page`."""

    dependencies: list[ChildDependency]
    """The page's dependency records, in the order they were added to the parent."""
    next_cursor: str | None
    """Pass it back for the next page; ``None`` when no record follows this page."""


def encode_dependency_cursor(position: int) -> str:
    """The cursor of a dependency page: resume after the record at ``position``.

    ``position`` is the store's insertion-order number of the last record of the page
    (a non-negative integer: a sequence, a score, a counter); every store writes cursors
    this way, so a cursor is a plain decimal text.
    """
    return str(position)


def decode_dependency_cursor(cursor: str) -> int:
    """The position of :func:`encode_dependency_cursor`; ``ValueError`` naming the cursor
    if it is not one."""
    if not isinstance(cursor, str) or not cursor.isascii() or not cursor.isdigit():
        raise ValueError(f"not a dependency cursor: {cursor!r}")
    return int(cursor)


def check_dependency_limit(limit: int) -> int:
    """``limit`` of a dependency page, checked: an ``int`` of at least 1."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    return limit


DEPENDENCY_STATUSES: tuple[DependencyStatus, ...] = ("pending", "processed", "failed", "ignored")


# Not frozen, as DeduplicatedAdd below: one of each is made at every deduplicated add,
# and a frozen dataclass costs three times as much to make.
@dataclass(slots=True)
class DeduplicationKey:
    """How :meth:`StoreInterface.add_deduplicated` deduplicates a job (DEDUPLICATION)."""

    id: str
    ttl: float | None = None
    """Seconds the id stays held from the add; ``None``: until the job finishes."""
    extend: bool = False
    replace: bool = False


@dataclass(slots=True)
class DeduplicatedAdd:
    """What :meth:`StoreInterface.add_deduplicated` did."""

    job_id: str
    """The job that holds the deduplication id: the new one, or the live one."""
    written: bool
    """Whether the new job was written."""


@dataclass(slots=True, frozen=True)
class Completion:
    """A successful attempt, for :meth:`StoreInterface.complete_jobs`."""

    id: str
    token: str
    return_value: str
    """JSON text."""


@dataclass(slots=True, frozen=True)
class Failure:
    """A failed attempt, for :meth:`StoreInterface.fail_jobs`.

    ``retry_at`` set: the job is retried (``delayed`` until then, or ``waiting`` if it is
    not later than ``now``). ``retry_at`` ``None``: FINAL FAILURE.
    """

    id: str
    token: str
    reason: str
    stacktrace: list[str] = field(default_factory=list)
    retry_at: float | None = None


@dataclass(slots=True, frozen=True)
class Release:
    """An active job handed back unfinished (graceful shutdown), for ``release_jobs``."""

    id: str
    token: str


@dataclass(slots=True, frozen=True)
class GroupLimits:
    """A queue's group limits (see GROUPS)."""

    concurrency: int | None = None
    rate_limit: tuple[int, float] | None = None
    """``(max, duration)``: at most ``max`` jobs of a group start in ``duration`` seconds."""


@dataclass(slots=True)
class TakeResult:
    """What :meth:`StoreInterface.take_jobs` hands a worker."""

    jobs: list[JobRecord]
    next_run_at: float | None = None
    """The earliest ``run_at`` of the queue's delayed jobs, so an idle worker knows
    when to look again; ``None`` if there is none."""
    rate_limited_until: float | None = None
    """Set when the queue's rate limit stopped the take: no job starts before then."""
    concurrency_limited: bool = False
    """Set when the queue's global concurrency stopped the take, or when a take by lanes
    took nothing and a group's concurrency held one back: as many jobs as it allows are
    active; one must finish before another starts."""


@dataclass(slots=True)
class SearchPage:
    """One page of :meth:`StoreInterface.search_jobs`."""

    jobs: list[JobRecord]
    next_cursor: str | None
    """Pass it back for the next page; ``None`` when no job after this page matches."""


@dataclass(slots=True, frozen=True)
class StallOutcome:
    """One stalled job found by :meth:`StoreInterface.recover_stalled`."""

    id: str
    failed: bool
    """``True``: it stalled too often and failed; ``False``: it is back in ``waiting``."""


@dataclass(slots=True, frozen=True)
class EventRecord:
    """An event as a store publishes it. ``data`` must be JSON-serialisable."""

    type: str
    queue: str
    job_id: str | None
    data: dict[str, Any]
    timestamp: float


@dataclass(slots=True, frozen=True)
class StoreCapabilities:
    """What a store can do beyond the baseline every store owes.

    A store declares these as its ``capabilities``; the conformance suite adapts to the
    declaration and checks that each claim holds. The default claims nothing: one store
    object in one process, as ``MemoryStore`` is.
    """

    shared: bool = False
    """Several store objects (in several processes, on several hosts) can open the same
    data: a job added through one is seen, taken and finished through any other, and
    two objects never take the same job."""
    cross_process_events: bool = False
    """Events published through one store object reach subscribers on every other object
    of the same data (implies ``shared``)."""
    blocking_wakeup: bool = False
    """:meth:`StoreInterface.wait_for_work` returns as soon as work arrives, through any
    object of the same data, without waiting for a polling interval."""
    concurrent_calls: bool = False
    """Calls on one store object run at the same time (on a pool of connections). A
    worker then takes while the store records its finished jobs, on another connection;
    on a store that runs its calls one at a time (one thread, one connection) it records
    them and takes in one call instead (:meth:`StoreInterface.complete_and_take`). A
    hint for the worker, not a rule: the suite does not check it."""
    transactional_enqueue: bool = False
    """Jobs can be added inside the application's own database transaction, committing
    or rolling back with it (``PostgresStore.using(connection)``). The suite cannot
    check this one: the store's own tests must."""


@dataclass(slots=True)
class SchedulerRecord:
    """A job scheduler as the store holds it (see JOB SCHEDULERS)."""

    queue: str
    id: str
    timing: str
    """JSON text of when it fires (pattern, timezone, bounds); built by the core, kept
    verbatim and compared as text by :meth:`StoreInterface.upsert_scheduler`."""
    template: str
    """JSON text of what each tick adds; built and read by the core only."""
    next_run_at: float | None
    """The next tick; ``None`` once the scheduler is exhausted."""
    iterations: int = 0
    """Ticks that wrote their jobs."""


@dataclass(slots=True)
class DueSchedulers:
    """What :meth:`StoreInterface.due_schedulers` hands a worker."""

    schedulers: list[SchedulerRecord]
    next_run_at: float | None
    """The earliest ``next_run_at`` of the queue's schedulers not returned; ``None`` if
    there is none."""


STALLED_REASON = "job stalled more than allowable limit"
METRICS_MINUTES = 7 * 24 * 60
"""Minutes of finished-job counts a store keeps per queue and kind (a week)."""
MetricKind = Literal["completed", "failed"]
PARENT_FAILED_REASON = "parent failed"


CANCELLED_REASON = "cancelled"


def cancelled_reason(reason: str | None) -> str:
    """The ``failed_reason`` of a cancelled job: ``"cancelled"`` or ``"cancelled: <reason>"``."""
    return CANCELLED_REASON if reason is None else f"{CANCELLED_REASON}: {reason}"


def child_failed_reason(child_id: str, reason: str) -> str:
    """The ``failed_reason`` of a parent failed by its child under the ``fail`` policy."""
    return f"child {child_id} failed: {reason}"


def lock_not_held(queue: str, job_id: str, what: str) -> str:
    """The ``LockLostError`` message of a call only the job's running worker may make."""
    return (
        f"job {job_id!r} in queue {queue!r} is not active with this lock token: "
        f"only the worker running it can {what}"
    )


def check_children_of(queue: str, job_id: str, groups: Sequence[Sequence[NewJob]]) -> None:
    """:meth:`StoreInterface.add_children`'s ``ValueError``: every group's first job must
    name ``(queue, job_id)`` as its parent."""
    for group in groups:
        if not group or (group[0].parent_queue, group[0].parent_id) != (queue, job_id):
            raise ValueError(f"every group must be a child of job {job_id!r}")


def check_dag(
    jobs: Sequence[NewJob],
    edges: Sequence[DagEdge],
    deduplication: Sequence[tuple[int, DeduplicationKey]],
) -> None:
    """:meth:`StoreInterface.add_dag`'s ``ValueError`` for a DAG whose shape is wrong,
    whatever the store holds: an edge whose parent is not one of ``jobs``, or a
    deduplication entry (DEDUPLICATED NODE) that does not name a job of ``jobs`` by
    index, at most once, that is no edge's parent, with no two entries holding one
    deduplication id of one queue."""
    new = {(job.queue, job.id) for job in jobs}
    parents = {(edge.parent_queue, edge.parent_id) for edge in edges}
    for edge in edges:
        if (edge.parent_queue, edge.parent_id) not in new:
            raise ValueError(f"the parent of a DAG edge must be a new job: {edge.parent_id!r}")
    indexes: set[int] = set()
    ids: set[tuple[str, str]] = set()
    for index, key in deduplication:
        if isinstance(index, bool) or not 0 <= index < len(jobs):
            raise ValueError(f"deduplication entry names no job of the DAG: {index!r}")
        node = jobs[index]
        if index in indexes:
            raise ValueError(f"job {node.id!r} has two deduplication entries")
        if (node.queue, node.id) in parents:
            raise ValueError(
                f"job {node.id!r} of queue {node.queue!r} has children: only a leaf of a "
                "DAG can be deduplicated"
            )
        if (node.queue, key.id) in ids:
            raise ValueError(
                f"deduplication id {key.id!r} of queue {node.queue!r} is used twice in one add"
            )
        indexes.add(index)
        ids.add((node.queue, key.id))


@runtime_checkable
class EventSubscription(Protocol):
    """A live feed of one queue's events; iterate it, then ``aclose()`` it."""

    def __aiter__(self) -> AsyncIterator[EventRecord]: ...

    async def __anext__(self) -> EventRecord: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class StoreInterface(Protocol):
    """A storage backend for Conveyor.

    Every method is a coroutine, safe to call concurrently from many tasks of one process
    and from many processes at once (for stores that can be shared). Unless said
    otherwise, a method that names a job which does not exist raises
    ``JobNotFoundError``; a store that cannot reach its server raises
    ``StoreUnavailableError`` (or lets the driver's connection error through) and has then
    changed nothing or everything of the transition, never part of it.
    """

    @property
    def capabilities(self) -> StoreCapabilities:
        """What this store can do beyond the baseline (see :class:`StoreCapabilities`);
        a class attribute is enough."""
        ...

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Open connections and create or migrate the schema. Idempotent."""
        ...

    async def close(self) -> None:
        """Close connections and end subscriptions and waits. Idempotent."""
        ...

    async def __aenter__(self) -> Self:
        """``connect()``, then the store itself."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """``close()``."""
        ...

    # ------------------------------------------------------------------ writing

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        """Write jobs, all of them or none, in one atomic step.

        Each group is one standalone job or one whole flow; a flow's jobs come parents
        before children, and each child's ``parent_id``/``parent_queue`` names a job of
        the same group, except the first job's, which may name an existing job (ADD TO AN
        EXISTING PARENT: ``JobNotFoundError`` or ``InvalidJobStateError`` and nothing
        written when that parent is missing or in another state). A parent gets one
        ``pending`` dependency per child, in the order the children appear.

        Existing ids: if the *first* job of a group has an id that already exists in its
        queue, that group is skipped and nothing of it is written (result ``False``; its
        other jobs are not checked); any other job whose id already exists, or a
        ``(queue, id)`` given twice in the call, raises ``DuplicateJobError`` and the whole
        call writes nothing. Returns, per group, whether it was written.

        ``created_at = now``; a ``delayed`` job gets ``run_at = now + delay``.
        Events per written job: ``added`` (data ``{"name": ...}``), then its state's event
        (``waiting``, ``delayed`` with ``{"run_at": ...}`` or ``waiting-children``).
        Idle workers of the queues that got waiting jobs are woken.
        """
        ...

    async def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        """Write a DAG: the new ``jobs`` and their dependencies ``edges``, all or nothing,
        in one atomic step.

        ``deduplication``: ``(index into jobs, key)`` of leaves added under a
        deduplication id (DEDUPLICATED NODE, decided first, in order: a node a live job
        deduplicates is not written and its edges take that job as their child, before
        any check below). Returns one :class:`DeduplicatedAdd` per entry, in order
        (an empty list without entries). ``ValueError`` (nothing written) for entries
        :func:`check_dag` refuses (an edge's parent not among ``jobs`` too).

        ``jobs`` carry no parent (``parent_id`` ``None``); a job with edges as a parent
        comes in ``waiting-children``, the others ``waiting`` or ``delayed``. Each edge's
        parent is one of ``jobs``; its child is one of ``jobs`` or a job already in the
        store. Edges come in the order their parents' dependency records are to be kept.

        Refused, writing nothing: a job whose ``(queue, id)`` already exists or is given
        twice (``DuplicateJobError``); an edge whose child is neither new nor in the store
        (``JobNotFoundError`` naming it); an edge whose existing child is ``failed``
        (``InvalidJobStateError`` naming it: retry it first).

        Writing: every job as by :meth:`add_jobs` (``created_at = now``, events ``added``
        and its state's event). Then, per edge in order, the child gets a parent link to
        the edge's parent with the edge's policy (as its ``parent_id``/``parent_queue``/
        ``parent_policy`` if it has no parent yet, else as a further :class:`ParentLink`)
        and the parent a dependency record on the child: ``processed`` with the child's
        ``return_value`` if the child is ``completed`` (it resolves at once), else
        ``pending``. Then RELEASE CHECK on every new job in ``waiting-children``, in the
        order of ``jobs`` (a job whose dependencies all completed already is released at
        once, event ``waiting`` or ``delayed``). Idle workers of queues that got waiting
        jobs are woken.
        """
        ...

    async def add_children(
        self,
        queue: str,
        job_id: str,
        token: str,
        groups: Sequence[Sequence[NewJob]],
        now: float,
    ) -> list[bool]:
        """:meth:`add_jobs` of groups whose first jobs are all children of the active
        job ``(queue, job_id)`` (ADD TO AN EXISTING PARENT), in one atomic step, only while
        that job is ``active`` with ``token``.

        Raises ``LockLostError`` (nothing written) if the job is not ``active`` with that
        token (the caller does not hold its lock: it stalled, finished or was removed), and
        ``ValueError`` if a group's first job does not name that job as its parent. Every
        other rule, result and event is that of :meth:`add_jobs`.
        """
        ...

    async def add_deduplicated(
        self, new: NewJob, dedup: DeduplicationKey, now: float
    ) -> DeduplicatedAdd:
        """Add one standalone job (no parent, no children) under a deduplication id:
        DEDUPLICATION, in one atomic step, across every process using the store."""
        ...

    # ------------------------------------------------------------------ working

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
        """Move up to ``limit`` waiting jobs to ``active`` and return them, in order.

        First moves the queue's ``delayed`` jobs with ``run_at <= now`` to ``waiting``
        (event ``waiting``). Nothing is taken while the queue is paused. Each taken job
        gets ``lock_token = token``, ``lock_until``, ``processed_at = now`` and event
        ``active``. Two concurrent takes never return the same job. A take with
        ``limit`` 0 or less takes nothing and reports no limit (only ``next_run_at``), as
        does a take of a paused queue; both still promote the due delayed jobs.

        ``rate_limit = (max, duration)``: at most ``max`` jobs of this queue start in any
        window of ``duration`` seconds, counted across all callers; when the window is
        full, returns no job and ``rate_limited_until``.

        GLOBAL CONCURRENCY: with a global concurrency ``n`` set on the queue (see
        :meth:`set_global_concurrency`), at most ``n - active`` jobs are taken, where
        ``active`` counts the queue's active jobs of every caller; when that is zero or
        less, returns no job and ``concurrency_limited`` (checked before the rate limit,
        so a full queue spends nothing of the rate window). Concurrent takes through
        any number of store objects and processes never leave more than ``n`` active.

        MANUAL RATE LIMIT: while ``now`` is before the queue's ``limited_until`` (see
        :meth:`rate_limit_queue`), returns no job and ``rate_limited_until =
        limited_until``; checked after due delayed jobs are promoted and before the
        global concurrency and the rate limit.

        While the queue has a waiting job with a group, the jobs are chosen by TAKE BY
        LANES (see GROUPS), which may also set ``concurrency_limited`` or
        ``rate_limited_until`` for the groups' own limits.
        """
        ...

    async def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> list[str]:
        """Extend the locks of active jobs given as ``(job_id, token)`` pairs.

        Returns the ids whose lock was extended; an id missing from the result is no
        longer held with that token (stalled and recovered, removed, or finished).
        """
        ...

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        """Complete active jobs, each atomically; returns, per item, whether it applied.

        An item whose job is not ``active`` with that exact lock token is refused
        (``False``) and changes nothing. Otherwise: state ``completed``,
        ``return_value``, ``finished_at = now``, ``attempts_made += 1``, lock cleared,
        event ``completed`` (data ``{"return_value": <JSON text>}``). For each of the
        job's parent links, in order, whose parent holds a dependency on it, that
        dependency becomes ``processed`` with the value (exactly once; it counts as
        resolved only if it was ``pending``), then RELEASE CHECK on that parent. Then
        RETENTION (``keep_completed``). A job with a CANCEL REQUEST
        fails instead (see there).
        """
        ...

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
        """COMPLETE AND TAKE: :meth:`complete_jobs` of ``completions``, then
        :meth:`take_jobs` with the other arguments, in that order; returns what each
        returns.

        The take sees every change of the completions: a job they completed no longer
        counts against the queue's GLOBAL CONCURRENCY, and a parent they released to
        ``waiting`` may be taken. A worker records its finished jobs and takes new ones
        in one call this way, whenever it has completions to record and free slots. The
        two need not be one atomic step (another caller may act between them), but a
        store that can run them in one round trip should: while a worker has outcomes
        to record, its next take waits for this call.

        If it raises, the caller cannot tell whether the completions applied, so no
        job it took may be left with the caller's token: a store that took jobs after
        completions that failed hands them back (as :meth:`release_jobs` does) before
        raising.
        """
        ...

    async def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        """Fail attempts of active jobs, each atomically; returns per item whether it applied.

        Refused (``False``, nothing changes) unless the job is ``active`` with that lock
        token. ``attempts_made += 1``, ``failed_reason`` and ``stacktrace`` are set, lock
        cleared. With ``retry_at``: the job enters ``delayed`` (``run_at = retry_at``,
        event ``delayed``) or, if ``retry_at <= now``, ``waiting`` (event ``waiting``);
        its parent is not touched. Without: FINAL FAILURE. A job with a CANCEL REQUEST
        fails for good with the request's reason instead, ``retry_at`` or not.
        """
        ...

    async def release_jobs(self, queue: str, releases: Sequence[Release], now: float) -> list[bool]:
        """Hand active jobs back to ``waiting`` without counting an attempt.

        Used when a worker shuts down with jobs unfinished. Refused per item unless the
        job is ``active`` with that token. Event ``waiting``. A job with a CANCEL REQUEST
        fails for good with the request's reason instead.
        """
        ...

    async def park_job(self, queue: str, job_id: str, token: str, now: float) -> bool:
        """PARK the active job, in one atomic step (``Job.wait_for_children``).

        Returns ``True`` if it moved to ``waiting-children`` (lock released, no attempt
        counted, event ``waiting-children``), ``False`` if it holds no ``pending``
        dependency (nothing changes; it stays ``active`` with its lock). Raises
        ``LockLostError`` (nothing changes) unless it is ``active`` with that token.
        """
        ...

    async def recover_stalled(
        self, queue: str, now: float, max_stalled_count: int
    ) -> list[StallOutcome]:
        """Recover active jobs of the queue whose ``lock_until < now``.

        Each: ``stalled_count += 1``, lock cleared, event ``stalled``; if
        ``stalled_count > max_stalled_count`` it goes through FINAL FAILURE with reason
        ``STALLED_REASON``, else it enters ``waiting``; one with a CANCEL REQUEST goes
        through FINAL FAILURE with the request's reason (``failed`` is true). Each job is
        recovered atomically and by one caller only, however many run this at once.
        """
        ...

    async def wait_for_work(self, queue: str, timeout: float) -> None:
        """Wait until a job of the queue may have become waiting, or ``timeout`` passes.

        Returns early (promptly, without busy polling where the backend allows) after
        jobs enter ``waiting`` or ``delayed`` in the queue (a delayed job's ``run_at`` may
        be sooner than the caller's timeout; ``change_delay`` counts too) or the queue is
        resumed. A spurious early
        return is allowed; the caller then simply takes again.
        """
        ...

    # ------------------------------------------------------------------ job changes

    async def update_progress(self, queue: str, job_id: str, progress: str) -> None:
        """Set a job's progress (JSON text). Event ``progress`` (``{"progress": text}``)."""
        ...

    async def add_log(self, queue: str, job_id: str, line: str) -> int:
        """Append a line to a job's log; returns the log's new length."""
        ...

    async def get_logs(
        self, queue: str, job_id: str, start: int = 0, end: int | None = None
    ) -> list[str]:
        """Log lines ``start`` up to and including ``end`` (``None``: to the last)."""
        ...

    async def update_data(self, queue: str, job_id: str, data: str) -> None:
        """Replace a job's data (JSON text)."""
        ...

    async def change_priority(self, queue: str, job_id: str, priority: int, lifo: bool) -> None:
        """Change a job's priority; a waiting job is re-ordered as if it entered now."""
        ...

    async def change_delay(self, queue: str, job_id: str, run_at: float) -> None:
        """Move a ``delayed`` job's ``run_at``; ``InvalidJobStateError`` if not delayed."""
        ...

    async def promote_job(self, queue: str, job_id: str, now: float) -> None:
        """Move a ``delayed`` job to ``waiting`` now; ``InvalidJobStateError`` if not delayed."""
        ...

    async def promote_jobs(self, queue: str, now: float) -> int:
        """Move every ``delayed`` job of the queue to ``waiting``; returns how many."""
        ...

    async def retry_job(self, queue: str, job_id: str, now: float) -> None:
        """Move a ``failed`` job back to ``waiting`` (``attempts_made`` and
        ``stalled_count`` reset, ``failed_reason`` and ``finished_at`` cleared).

        ``InvalidJobStateError`` unless it is ``failed``. For each of its parent links,
        in order, whose parent exists and is in ``waiting-children``, ``waiting``,
        ``delayed`` or ``active`` (a step job still running, which keeps running), the
        dependency is put back to ``pending`` (re-created if it was dropped) and a
        ``waiting`` or ``delayed`` parent returns to ``waiting-children`` (event
        ``waiting-children``). Event ``waiting``.
        """
        ...

    async def retry_jobs(self, queue: str, state: JobState, now: float) -> int:
        """``retry_job`` every job of the queue in ``state`` (``failed`` or
        ``completed``; a completed job is re-run from scratch). Returns how many."""
        ...

    async def cancel_job(self, queue: str, job_id: str, reason: str, now: float) -> int:
        """CANCEL the job and its unfinished descendants, in one atomic step; returns how
        many were cancelled.

        ``reason`` is the whole failed reason (see :func:`cancelled_reason`). A finished
        job: 0, nothing changes. ``JobNotFoundError`` if the job does not exist. Events:
        ``cancelled`` for each job cancelled, and those of each FINAL FAILURE.
        """
        ...

    async def cancel_requests(self, queue: str, job_ids: Sequence[str]) -> dict[str, str]:
        """The CANCEL REQUESTs among the given jobs of the queue: ``{job_id: reason}`` for
        each one that is ``active`` with a request; others (no request, not active,
        missing) are left out. Reads only.

        Workers call it a few times a second while they hold jobs, so it must stay cheap:
        a lookup by key per job, never a scan.
        """
        ...

    async def remove_job(self, queue: str, job_id: str) -> bool:
        """REMOVE a job. Returns ``False`` if it did not exist.

        Raises ``InvalidJobStateError`` if the job itself is ``active``.
        """
        ...

    # ------------------------------------------------------------------ queues

    async def pause(self, queue: str) -> None:
        """Stop the queue's jobs from being taken. Event ``paused``."""
        ...

    async def resume(self, queue: str) -> None:
        """Let the queue's jobs be taken again and wake its workers. Event ``resumed``."""
        ...

    async def is_paused(self, queue: str) -> bool:
        """Whether the queue is paused."""
        ...

    async def drain(self, queue: str, include_delayed: bool, now: float) -> int:
        """REMOVE every ``waiting`` (and, if asked, ``delayed``) job, in the order
        ``get_jobs`` lists them (``waiting`` first); returns how many REMOVEs it made: a
        job an earlier REMOVE of the drain took along (an unfinished descendant) is not
        counted. Event ``drained`` (``{"count": n}``)."""
        ...

    async def clean(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        """Delete up to ``limit`` jobs in ``state`` whose ``finished_at`` (or, for
        unfinished states, ``created_at``) is at or before ``older_than``, oldest first,
        each as by REMOVE. ``active`` is refused with ``InvalidJobStateError``. Returns
        their ids. Event ``cleaned`` (``{"count": n}``) when any was deleted."""
        ...

    async def obliterate(self, queue: str, force: bool) -> None:
        """Delete the queue and everything in it, including its paused flag and its job
        schedulers.

        Raises ``InvalidJobStateError`` while the queue has active jobs, unless
        ``force``. Dependencies that jobs of other queues hold on this queue's jobs are
        resolved as by REMOVE.
        """
        ...

    # ------------------------------------------------------------------ reading

    async def get_job(self, queue: str, job_id: str) -> JobRecord | None:
        """The job, or ``None``."""
        ...

    async def get_jobs(
        self, queue: str, states: Sequence[JobState], start: int, end: int | None
    ) -> list[JobRecord]:
        """Jobs in any of ``states``, from index ``start`` to ``end`` inclusive.

        Order: for ``waiting``, the order they will be taken in; ``delayed`` by
        ``run_at``; finished states newest first; other states oldest first. Several
        states are listed one state after the other, in the order given.
        """
        ...

    async def get_counts(self, queue: str) -> dict[JobState, int]:
        """How many jobs the queue has in each state; every state is present."""
        ...

    async def get_dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        """The job's dependencies (children), in the order they were added."""
        ...

    async def get_dependency_page(
        self, queue: str, job_id: str, *, cursor: str | None, limit: int
    ) -> DependencyPage:
        """A page of the job's dependency records, in the order they were added.

        ``cursor`` is ``None`` for the first page, else the ``next_cursor`` of the page
        before (see :func:`encode_dependency_cursor`: the position of the last record
        returned; the next page starts strictly after it). ``limit`` is at least 1
        (``ValueError`` otherwise, and for a text that is not a cursor). A page holds
        ``limit`` records, fewer only at the end; ``next_cursor`` is ``None`` exactly when
        no record follows the page. A record replaced in place (a child completing, a
        policy) keeps its position; a record re-created by ``retry_job`` after a ``drop``
        is appended at the end. A walk returns each record present through the walk
        exactly once; records added or deleted meanwhile may or may not appear.

        Cost: the page, not the flow (a range read of an index ordered by insertion);
        ``JobNotFoundError`` if the job does not exist.
        """
        ...

    async def get_dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        """How many of the job's dependency records are in each status; every status of
        :data:`DEPENDENCY_STATUSES` is present. Read from counters the store keeps exact
        (DEPENDENCY COUNTS), never by reading the records. ``JobNotFoundError`` if the job
        does not exist."""
        ...

    async def get_parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        """The job's parent links (PARENT LINKS), first parent first; ``[]`` without a
        parent. Links whose parent no longer exists are included. ``JobNotFoundError`` if
        the job does not exist."""
        ...

    async def remove_child_dependency(self, queue: str, job_id: str, now: float) -> bool:
        """REMOVE CHILD DEPENDENCY of the job, in one atomic step.

        Returns ``True`` if the job had a parent link (now cleared), ``False`` if it had
        none (nothing changes). Releasing the parent publishes its ``waiting`` or
        ``delayed`` event. ``JobNotFoundError`` if the job does not exist.
        """
        ...

    async def remove_unprocessed_children(self, queue: str, job_id: str, now: float) -> int:
        """REMOVE UNPROCESSED CHILDREN of the job, in one atomic step; returns how many
        children were removed (not counting their descendants). Event ``removed`` for each
        job deleted. ``JobNotFoundError`` if the job does not exist."""
        ...

    async def list_queues(self) -> list[str]:
        """Names of every queue that holds jobs or is paused, sorted."""
        ...

    # ------------------------------------------------------------------ operating

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
        """Jobs of the queue that match every given filter, newest first, a page at a time.

        ``text``: the job's id, name or data (its stored JSON text) contains ``text``,
        ignoring the case of ASCII letters (every other character matches exactly).
        ``name``: the job's name equals it. ``states``: the job is in one of them.
        ``None`` leaves a filter out. Order: ``created_at`` descending, then ``id``
        descending (by code point). ``cursor`` is ``None`` for the first page, else the
        ``next_cursor`` of the page before (opaque to the caller; valid for the same
        filters). ``limit`` is at least 1.

        A page holds at most ``limit`` jobs and may hold fewer while more match (a store
        may bound the work of one call, as a scan does); ``next_cursor`` is ``None`` only
        when no job after this page matches. A walk through the pages returns each
        matching job at most once; jobs added or changed meanwhile may or may not appear.
        Cost: a store keeps a page cheap on a queue of millions of jobs (an index for
        the order, and for ``text`` where the backend has one).
        """
        ...

    async def get_metrics(
        self, queue: str, kind: MetricKind, start: int, end: int
    ) -> dict[int, int]:
        """Finished-job counts per minute: ``{minute: count}`` for the minutes from
        ``start`` to ``end`` inclusive that have a count (others are zero).

        A minute is ``floor(now / 60)`` of the transition that finished the job.
        ``completed`` counts jobs that completed; ``failed`` counts jobs that entered
        ``failed`` (attempts used up, unrecoverable, stalled too often, or failed by the
        ``fail`` policy with "parent failed" or a child's failure); retried attempts are
        not counted. The counts are written inside those transitions, never by a separate
        call. When a minute is first written for a queue and kind, the minutes more than
        ``METRICS_MINUTES`` before it are dropped, so what a store keeps stays bounded;
        ``obliterate`` deletes them.
        """
        ...

    # ------------------------------------------------------------------ flow control

    async def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        """Set the queue's global concurrency (an ``int`` of at least 1, checked by the
        core), or remove it with ``None``. It stays until removed or the queue is
        obliterated. Idle workers of the queue may be woken."""
        ...

    async def get_global_concurrency(self, queue: str) -> int | None:
        """The queue's global concurrency, or ``None``."""
        ...

    async def set_group_limits(
        self, queue: str, concurrency: int | None, rate_limit: tuple[int, float] | None
    ) -> None:
        """Set the queue's group limits (see GROUPS): ``concurrency`` (an ``int`` of at
        least 1) and ``rate_limit = (max, duration)`` (``max`` at least 1, ``duration``
        above 0), both checked by the core; ``None`` lifts that limit. They stay until
        changed or the queue is obliterated. Idle workers of the queue may be woken."""
        ...

    async def get_group_limits(self, queue: str) -> GroupLimits:
        """The queue's group limits; both ``None`` when none is set."""
        ...

    async def get_group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        """For each group with at least one job in the queue, how many of its jobs are in
        each state; every state is present. Jobs without a group are not counted."""
        ...

    async def rate_limit_queue(self, queue: str, until: float) -> None:
        """MANUAL RATE LIMIT: no job of the queue is taken before ``until``, by any
        caller. A later ``until`` than the queue holds replaces it; an earlier one
        changes nothing. (A handler's ``RateLimitedError``: the worker calls this, then
        hands its job back with :meth:`release_jobs`.)"""
        ...

    # ------------------------------------------------------------------ schedulers

    async def upsert_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        timing: str,
        template: str,
        next_run_at: float | None,
        now: float,
    ) -> None:
        """Create or replace a job scheduler (JOB SCHEDULERS), atomically.

        A new scheduler gets ``timing``, ``template``, ``next_run_at`` and
        ``iterations = 0``. An existing one with the same ``timing`` text gets the new
        ``template`` and keeps its ``next_run_at`` (so upserting the same schedule again,
        as every process does at start, never moves or repeats a tick); one with another
        ``timing`` gets the new ``timing``, ``template`` and ``next_run_at``. Either way
        ``iterations`` is kept. A store may wake the queue's idle workers (workers
        look at their schedulers at least every ``drain_delay`` either way).
        """
        ...

    async def remove_scheduler(self, queue: str, scheduler_id: str) -> bool:
        """Delete a scheduler; ``False`` if it did not exist. Jobs it added stay."""
        ...

    async def get_schedulers(self, queue: str) -> list[SchedulerRecord]:
        """Every scheduler of the queue, by id (code point order)."""
        ...

    async def due_schedulers(self, queue: str, now: float, limit: int) -> DueSchedulers:
        """Up to ``limit`` (at least 1) schedulers of the queue whose ``next_run_at <=
        now``, earliest first (then by id), and the earliest ``next_run_at`` of the others.
        Exhausted schedulers (``next_run_at`` ``None``) are never returned. Reads only."""
        ...

    async def fire_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        expected: float,
        next_run_at: float | None,
        jobs: Sequence[NewJob],
        now: float,
    ) -> bool:
        """Fire one tick: the compare-and-set of JOB SCHEDULERS, in one atomic step.

        Only if the scheduler exists and its stored ``next_run_at`` equals ``expected``
        exactly: ``jobs`` (one standalone job, or one flow parents first, as one group of
        :meth:`add_jobs`, with its rules, events and wake-ups; none when the core
        exhausts the scheduler without a job) are written, ``next_run_at`` becomes the
        given value and, if ``jobs`` is not empty, ``iterations += 1``; returns ``True``.
        Otherwise (another caller fired this tick first, the scheduler was replaced or
        removed) nothing changes and it returns ``False``. An error of the add (a
        ``DuplicateJobError``) leaves the scheduler unchanged too.
        """
        ...

    # ------------------------------------------------------------------ events

    async def subscribe(self, queue: str) -> EventSubscription:
        """Start listening to the queue's events, from every process using the store.

        Events published after this returns are delivered in order; the subscription
        ends when ``aclose()`` is called or the store closes.
        """
        ...
