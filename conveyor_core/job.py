"""``Job``: one job as a user sees it, a thin view of a store's ``JobRecord``."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, cast, overload

import anyio
from typing_extensions import TypeVar

from . import codec
from .clock import Clock, seconds, system_clock, to_datetime
from .errors import (
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    LockLostError,
    WaitingForChildren,
)
from .models import MAX_PRIORITY, JobOptions, JobState, shown, text_problem
from .payloads import validate
from .store import JobRecord, StoreInterface, cancelled_reason
from .telemetry import without_trace

if TYPE_CHECKING:
    from .flow import JobNode

__all__ = ["Dependencies", "DependencyCounts", "Job", "JobPage"]

DataT = TypeVar("DataT", default=Any)
T = TypeVar("T")
"""The type of a job's data: ``Job[Order]`` in a handler's annotation (see
:mod:`conveyor_core.payloads`); ``Any`` for a plain ``Job``."""

_DEFAULT_OPTS = JobOptions()
_OPTS_CACHE: dict[str, JobOptions] = {"{}": _DEFAULT_OPTS, "": _DEFAULT_OPTS}
_OPTS_CACHE_SIZE = 512
DEFAULT_DEPENDENCY_PAGE = 100
"""Children per page of ``Job.get_dependencies(cursor=...)`` when no ``limit`` is given."""
_FINISHED_EVENTS = frozenset({"completed", "failed", "removed"})
MAX_CANCEL_REASON_BYTES = 10_000
"""The longest cancel reason, in bytes of UTF-8."""


def check_cancel_reason(reason: str | None) -> str:
    """The ``failed_reason`` of a cancel with ``reason``, after checking it: a text
    without NUL characters or lone surrogates, at most :data:`MAX_CANCEL_REASON_BYTES`."""
    if reason is None:
        return cancelled_reason(None)
    if not isinstance(reason, str):
        raise TypeError(f"a cancel reason must be a str, got {type(reason).__name__}")
    if (problem := text_problem(reason, MAX_CANCEL_REASON_BYTES)) is not None:
        raise ValueError(f"cancel reason {shown(reason)} {problem}")
    return cancelled_reason(reason)


async def cancel_job(
    store: StoreInterface, queue: str, job_id: str, reason: str | None, now: float
) -> int:
    """CANCEL a job (see ``Job.cancel``): the one place the API calls the store for it."""
    return await store.cancel_job(queue, job_id, check_cancel_reason(reason), now)


def parse_opts(text: str) -> JobOptions:
    """The ``JobOptions`` of a stored job; identical texts share one (frozen) model.

    The trace context a job may carry (:data:`conveyor_core.telemetry.TRACE_KEY`) is
    not an option: it is left out."""
    text = without_trace(text)
    opts = _OPTS_CACHE.get(text)
    if opts is None:
        opts = JobOptions.model_validate_json(text)
        if len(_OPTS_CACHE) >= _OPTS_CACHE_SIZE:
            _OPTS_CACHE.clear()
            _OPTS_CACHE["{}"] = _DEFAULT_OPTS
        _OPTS_CACHE[text] = opts
    return opts


def _decode(text: str | None) -> Any:
    return None if text is None else codec.loads(text)


@dataclass(slots=True)
class Dependencies:
    """A parent's children grouped by how they resolved (``Job.get_dependencies``)."""

    processed: dict[str, Any] = field(default_factory=dict)
    """Completed children: ``{child_id: return_value}``."""
    unprocessed: list[str] = field(default_factory=list)
    """Children still pending, in the order they were added."""
    failed: dict[str, str] = field(default_factory=dict)
    """Children whose final failure was recorded on the parent: ``{child_id: reason}``."""
    ignored: dict[str, str] = field(default_factory=dict)
    """Failed children the parent ignores: ``{child_id: reason}``."""
    next_cursor: str | None = None
    """When read a page at a time: pass it as ``cursor`` for the next page; ``None``
    after the last page (and always when every child was read at once)."""


@dataclass(slots=True, frozen=True)
class DependencyCounts:
    """How many of a parent's children are in each status (``Job.get_dependency_counts``)."""

    processed: int = 0
    """Completed children."""
    unprocessed: int = 0
    """Children still pending."""
    failed: int = 0
    """Children whose final failure was recorded on the parent."""
    ignored: int = 0
    """Failed children the parent ignores."""

    @property
    def total(self) -> int:
        """Every child the parent holds a record of."""
        return self.processed + self.unprocessed + self.failed + self.ignored


class Job(Generic[DataT]):
    """A job of a queue: its stored fields (decoded) and the operations on it.

    A ``Job`` is a snapshot: its attributes change only when :meth:`refresh` (or an
    operation made through this object) re-reads the store.
    """

    def __init__(
        self, store: StoreInterface, record: JobRecord, *, clock: Clock = system_clock
    ) -> None:
        self._store = store
        self._clock = clock
        self._record = record
        self._data: Any = _UNSET
        self._opts: JobOptions | None = None
        self.token: str | None = None
        """The lock token while a worker runs this job, else ``None``."""
        self._progress_hook: Callable[[Job, Any], Awaitable[None] | None] | None = None

    # ------------------------------------------------------------------ fields

    @property
    def record(self) -> JobRecord:
        """The raw record as the store returned it (JSON fields undecoded)."""
        return self._record

    @property
    def id(self) -> str:
        """The job id, unique within its queue."""
        return self._record.id

    @property
    def name(self) -> str:
        """The job name given when it was added."""
        return self._record.name

    @property
    def queue_name(self) -> str:
        """The queue the job belongs to."""
        return self._record.queue

    @property
    def data(self) -> DataT:
        """The job's data, decoded from JSON (once); for a worker whose handler takes a
        ``Job[T]``, validated into a ``T`` before the handler runs."""
        if self._data is _UNSET:
            self._data = codec.loads(self._record.data)
        return cast(DataT, self._data)

    @property
    def opts(self) -> JobOptions:
        """The job's options (defaults for every field not set)."""
        if self._opts is None:
            self._opts = parse_opts(self._record.opts)
        return self._opts

    @property
    def state(self) -> JobState:
        """The state when this snapshot was read."""
        return self._record.state

    @property
    def priority(self) -> int:
        """The priority: lower runs first, 0 is the highest."""
        return self._record.priority

    @property
    def attempts_made(self) -> int:
        """How many attempts have ended (completed or failed)."""
        return self._record.attempts_made

    @property
    def stalled_count(self) -> int:
        """How many times the job stalled (its lock expired while active)."""
        return self._record.stalled_count

    @property
    def progress(self) -> Any:
        """The last progress reported, decoded from JSON (``None`` if none)."""
        return _decode(self._record.progress)

    @property
    def return_value(self) -> Any:
        """The handler's result, decoded from JSON, once the job completed."""
        return _decode(self._record.return_value)

    @property
    def failed_reason(self) -> str | None:
        """Why the last attempt failed, or ``None``."""
        return self._record.failed_reason

    @property
    def stacktrace(self) -> list[str]:
        """The formatted traceback of the last failed attempt."""
        return list(self._record.stacktrace)

    @property
    def created_at(self) -> datetime | None:
        """When the job was added."""
        return to_datetime(self._record.created_at)

    @property
    def processed_at(self) -> datetime | None:
        """When its latest attempt started."""
        return to_datetime(self._record.processed_at)

    @property
    def finished_at(self) -> datetime | None:
        """When it completed or failed for good."""
        return to_datetime(self._record.finished_at)

    @property
    def run_at(self) -> datetime | None:
        """For a delayed job: when it becomes waiting."""
        return to_datetime(self._record.run_at)

    @property
    def parent_id(self) -> str | None:
        """The id of the flow parent waiting for this job, if any (in a DAG, its first
        dependent; ``get_parents`` lists them all)."""
        return self._record.parent_id

    @property
    def parent_queue(self) -> str | None:
        """The queue of that parent."""
        return self._record.parent_queue

    def __repr__(self) -> str:
        return (
            f"<Job {self.id!r} name={self.name!r} queue={self.queue_name!r} "
            f"state={self.state.value}>"
        )

    def _set_record(self, record: JobRecord) -> None:
        self._record = record
        self._data = _UNSET
        self._opts = None

    def _what(self, part: str) -> str:
        return f"{part} of job {self.name!r} ({self.id}) in queue {self.queue_name!r}"

    # ------------------------------------------------------------------ reading

    async def refresh(self) -> Job:
        """Re-read everything from the store; ``JobNotFoundError`` if it is gone."""
        record = await self._store.get_job(self.queue_name, self.id)
        if record is None:
            raise JobNotFoundError(self.queue_name, self.id)
        self._set_record(record)
        return self

    async def get_state(self) -> JobState:
        """The job's current state in the store."""
        await self.refresh()
        return self.state

    async def get_logs(self, start: int = 0, end: int | None = None) -> list[Any]:
        """Log entries ``start`` up to and including ``end`` (``None``: to the last)."""
        lines = await self._store.get_logs(self.queue_name, self.id, start, end)
        return [codec.loads(line) for line in lines]

    async def get_dependencies(
        self, cursor: str | None = None, limit: int | None = None
    ) -> Dependencies:
        """The job's children grouped as processed, unprocessed, failed and ignored.

        Without arguments: every child, and ``next_cursor`` is ``None``. With ``limit``
        (or ``cursor``): one page of at most ``limit`` children (default 100) in the
        order they were added, starting after ``cursor`` (``None``: from the first), and
        ``next_cursor`` for the page after it (``None`` after the last). A page costs the
        page, however many children the job has. ``JobNotFoundError`` if the job is gone.
        """
        deps = Dependencies()
        if cursor is None and limit is None:
            records = await self._store.get_dependencies(self.queue_name, self.id)
        else:
            page = await self._store.get_dependency_page(
                self.queue_name,
                self.id,
                cursor=cursor,
                limit=DEFAULT_DEPENDENCY_PAGE if limit is None else limit,
            )
            records = page.dependencies
            deps.next_cursor = page.next_cursor
        for dep in records:
            if dep.status == "processed":
                deps.processed[dep.id] = _decode(dep.value)
            elif dep.status == "pending":
                deps.unprocessed.append(dep.id)
            elif dep.status == "failed":
                deps.failed[dep.id] = dep.reason or ""
            else:
                deps.ignored[dep.id] = dep.reason or ""
        return deps

    async def get_dependency_counts(self) -> DependencyCounts:
        """How many children are processed, unprocessed, failed and ignored, read from
        counters the store keeps (no child is read). ``JobNotFoundError`` if gone."""
        counts = await self._store.get_dependency_counts(self.queue_name, self.id)
        return DependencyCounts(
            processed=counts["processed"],
            unprocessed=counts["pending"],
            failed=counts["failed"],
            ignored=counts["ignored"],
        )

    @overload
    async def get_children_values(self) -> dict[str, Any]: ...

    @overload
    async def get_children_values(self, model: type[T]) -> dict[str, T]: ...

    async def get_children_values(self, model: type[T] | None = None) -> dict[str, Any]:
        """``{child_id: return_value}`` of the children that completed.

        With ``model`` (a pydantic model, or any type pydantic validates), each value is
        validated into it; a value that does not fit raises
        :class:`~conveyor_core.payloads.DataValidationError` naming the child and field.
        """
        values = (await self.get_dependencies()).processed
        if model is None:
            return values
        return {
            child_id: validate(model, value, what=f"return value of child {child_id!r}")
            for child_id, value in values.items()
        }

    async def get_ignored_children_failures(self) -> dict[str, str]:
        """``{child_id: reason}`` of failed children this job ignores."""
        return (await self.get_dependencies()).ignored

    async def get_parent(self) -> Job | None:
        """The parent job, or ``None`` without one (or if it no longer exists)."""
        if self.parent_id is None or self.parent_queue is None:
            return None
        record = await self._store.get_job(self.parent_queue, self.parent_id)
        return None if record is None else Job(self._store, record, clock=self._clock)

    async def get_parents(self) -> list[Job]:
        """Every job that depends on this one (one in a tree, any number in a DAG),
        first parent first; parents that no longer exist are left out."""
        links = await self._store.get_parent_links(self.queue_name, self.id)
        parents: list[Job] = []
        for link in links:
            record = await self._store.get_job(link.queue, link.id)
            if record is not None:
                parents.append(Job(self._store, record, clock=self._clock))
        return parents

    # ------------------------------------------------------------------ writing

    async def update_progress(self, progress: Any) -> None:
        """Set progress (a number or a JSON object); emits ``progress``."""
        if isinstance(progress, bool) or not isinstance(progress, int | float | dict):
            raise TypeError(f"progress must be a number or a dict, got {type(progress).__name__}")
        if isinstance(progress, float) and not math.isfinite(progress):
            raise ValueError(f"progress must be a finite number, got {progress!r}")
        text = codec.dumps(progress, what=self._what("progress"))
        await self._store.update_progress(self.queue_name, self.id, text)
        self._record.progress = text
        hook = self._progress_hook
        if hook is not None:
            result = hook(self, progress)
            if result is not None:
                await result

    async def log(self, line: Any) -> int:
        """Append a JSON value (usually a string) to the job's log; returns its length."""
        text = codec.dumps(line, what=self._what("log line"))
        return await self._store.add_log(self.queue_name, self.id, text)

    async def update_data(self, data: Any) -> None:
        """Replace the job's data (JSON)."""
        text = codec.dumps(data, what=self._what("data"))
        await self._store.update_data(self.queue_name, self.id, text)
        self._record.data = text
        self._data = _UNSET

    async def change_priority(self, priority: int, lifo: bool = False) -> None:
        """Change the priority (lower runs first); a waiting job is re-ordered."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be between 0 and {MAX_PRIORITY}, got {priority}")
        await self._store.change_priority(self.queue_name, self.id, priority, lifo)
        self._record.priority = priority
        self._record.lifo = lifo

    async def change_delay(self, delay: float | timedelta) -> None:
        """Make a delayed job run ``delay`` seconds from now."""
        run_at = self._clock() + seconds(delay, what="delay")
        await self._store.change_delay(self.queue_name, self.id, run_at)
        self._record.run_at = run_at

    async def promote(self) -> None:
        """Move a delayed job to waiting now."""
        await self._store.promote_job(self.queue_name, self.id, self._clock())
        self._record.state = JobState.WAITING
        self._record.run_at = None

    async def retry(self) -> None:
        """Run a failed job again from scratch."""
        await self._store.retry_job(self.queue_name, self.id, self._clock())
        await self.refresh()

    async def remove(self) -> None:
        """Remove the job and its unfinished descendants; ``JobNotFoundError`` if gone."""
        if not await self._store.remove_job(self.queue_name, self.id):
            raise JobNotFoundError(self.queue_name, self.id)

    async def cancel(self, reason: str | None = None) -> int:
        """Cancel this job and every unfinished job below it; returns how many.

        Jobs not started yet fail at once with ``failed_reason`` ``"cancelled"`` (or
        ``"cancelled: <reason>"``), and their parents apply their failure policy as for
        any final failure; a running job's handler is cancelled by its worker, in
        whatever process runs it, and the job then fails the same way. A cancelled job
        is never retried. Cancelling a finished job returns 0 and changes nothing;
        ``JobNotFoundError`` if the job is gone. Event ``cancelled`` for each.
        """
        return await cancel_job(self._store, self.queue_name, self.id, reason, self._clock())

    async def remove_child_dependency(self) -> bool:
        """Leave the parent: it no longer waits for this job (and is released if this
        was its last pending child), and this job's outcome no longer reaches it.

        Returns ``False`` if the job has no parent. A child that already resolved stays
        in the parent's record (a completed child keeps its value there).
        ``JobNotFoundError`` if the job is gone.
        """
        left = await self._store.remove_child_dependency(self.queue_name, self.id, self._clock())
        if left:
            self._record.parent_id = None
            self._record.parent_queue = None
            self._record.parent_policy = None
        return left

    async def remove_unprocessed_children(self) -> int:
        """Remove this job's children that are still pending (with their unfinished
        descendants), except running ones, which finish; returns how many children were
        removed. A parent left with no pending child is released.
        ``JobNotFoundError`` if the job is gone."""
        return await self._store.remove_unprocessed_children(
            self.queue_name, self.id, self._clock()
        )

    # ------------------------------------------------------------------ step jobs

    def _token_or_raise(self, what: str) -> str:
        if self.token is None:
            raise LockLostError(
                f"job {self.id!r} in queue {self.queue_name!r} is not running in this "
                f"worker: only its handler can {what}"
            )
        return self.token

    async def add_children(
        self,
        children: Sequence[Any],
        queues_options: Mapping[str, Any] | None = None,
    ) -> list[JobNode]:
        """Add flows (trees of jobs, as for ``FlowProducer.add``) as children of this
        running job, all or nothing; returns their trees.

        Only the handler running the job may call it (it holds the lock):
        ``LockLostError`` otherwise, and nothing is written. A child whose ``job_id``
        already exists is not added again (its existing tree is returned), so a handler
        that runs again can add the same children safely.
        """
        from .flow import FlowProducer

        token = self._token_or_raise("add children to it")
        producer = FlowProducer(store=self._store, clock=self._clock)
        return await producer._add_children(self, token, children, queues_options)

    async def wait_for_children(self) -> None:
        """Park the job until its pending children resolve.

        With a pending child, the job moves to ``waiting-children`` (its lock released,
        the attempt not counted) and :class:`WaitingForChildren` is raised: let it leave
        the handler. When the last pending child resolves, the job is ``waiting`` again
        and its handler runs from the start, with the data as last updated (use
        ``update_data`` to remember the step reached). Without a pending child it
        returns at once. ``LockLostError`` if this worker no longer holds the job.
        """
        token = self._token_or_raise("wait for its children")
        if not await self._store.park_job(self.queue_name, self.id, token, self._clock()):
            return
        record = self._record
        record.state = JobState.WAITING_CHILDREN
        record.lock_token = None
        record.lock_until = None
        self.token = None
        raise WaitingForChildren(self.queue_name, self.id)

    # ------------------------------------------------------------------ waiting

    async def wait_until_finished(self, timeout: float | timedelta | None = None) -> Any:
        """Wait until the job completes and return its value, or raise ``JobFailedError``.

        Raises ``JobTimeoutError`` (a ``TimeoutError`` naming the job) after ``timeout``
        seconds, and ``JobNotFoundError`` if the job is removed. Listens to the queue's
        events and re-reads the job once listening, so a job that finished just before
        the call is seen too.
        """
        limit = math.inf if timeout is None else seconds(timeout, what="timeout")
        with anyio.move_on_after(limit):
            return await self._wait_finished()
        raise JobTimeoutError(self.queue_name, self.id, limit)

    async def _wait_finished(self) -> Any:
        subscription = await self._store.subscribe(self.queue_name)
        try:
            if outcome := self._outcome(await self._store.get_job(self.queue_name, self.id)):
                return outcome()
            async for event in subscription:
                if event.job_id != self.id or event.type not in _FINISHED_EVENTS:
                    continue
                if event.type == "removed":
                    raise JobNotFoundError(self.queue_name, self.id)
                record = await self._store.get_job(self.queue_name, self.id)
                if record is None:
                    # Deleted on finishing (remove_on_complete/remove_on_fail).
                    if event.type == "completed":
                        return _decode(event.data.get("return_value"))
                    reason = event.data.get("failed_reason", event.data.get("reason"))
                    raise JobFailedError(self.id, reason)
                if (outcome := self._outcome(record)) is not None:
                    return outcome()
            raise JobNotFoundError(self.queue_name, self.id)
        finally:
            with anyio.CancelScope(shield=True):
                await subscription.aclose()

    def _outcome(self, record: JobRecord | None) -> Callable[[], Any] | None:
        """A function returning the result (or raising) if ``record`` is finished."""
        if record is None:
            raise JobNotFoundError(self.queue_name, self.id)
        if record.state is JobState.COMPLETED:
            self._set_record(record)
            return lambda: _decode(record.return_value)
        if record.state is JobState.FAILED:
            self._set_record(record)

            def fail() -> Any:
                raise JobFailedError(record.id, record.failed_reason)

            return fail
        return None


class _Unset:
    __slots__ = ()


_UNSET: Any = _Unset()


@dataclass(slots=True)
class JobPage:
    """One page of :meth:`Queue.search_jobs <conveyor_core.Queue.search_jobs>`."""

    jobs: list[Job]
    """The page's jobs, newest first."""
    next_cursor: str | None
    """Pass it as ``cursor`` for the next page; ``None`` after the last page."""
