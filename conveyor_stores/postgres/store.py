"""``PostgresStore``: the store protocol on PostgreSQL, over asyncpg connections.

Every transition is one call of a PL/pgSQL function installed in the store's schema (see
:mod:`.schema`), so each protocol call is one round trip and one transaction. Events are
published with ``pg_notify`` inside that transaction and reach every process through one
listener connection per store object; the same notifications wake idle workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import anyio.to_thread
import asyncpg

from conveyor_core.engine import decode_cursor, encode_cursor, fold_ascii, split_due
from conveyor_core.errors import (
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    LockLostError,
    PayloadError,
    StoreClosedError,
    StoreUnavailableError,
)
from conveyor_core.models import JobState, ParentPolicy
from conveyor_core.redaction import redact_text
from conveyor_core.store import (
    DEPENDENCY_STATUSES,
    STALLED_REASON,
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
    check_children_of,
    check_dag,
    check_dependency_limit,
    decode_dependency_cursor,
    encode_dependency_cursor,
    lock_not_held,
)

from . import schema as sql_schema
from .pool import ConnectionPool, PoolClosedError

__all__ = ["PostgresStore"]

log = logging.getLogger("conveyor.postgres")

T = TypeVar("T")

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    """An application's asyncpg connection, plain or from its own pool."""

_JOB_COLUMNS = (
    "id, queue, name, data, opts, state, priority, lifo, delay, attempts_made, "
    "stalled_count, progress, return_value, failed_reason, stacktrace, created_at, "
    "processed_at, finished_at, run_at, keep_completed, keep_failed, parent_id, "
    "parent_queue, parent_policy, lock_token, lock_until, cancel_reason, group_id"
)

_UNSTORABLE_TEXT = frozenset({"22021", "22P05"})
"""``character_not_in_repertoire`` (a NUL character) and ``untranslatable_character``."""

_INT4_MAX = 2**31 - 1
_INT8_MAX = 2**63 - 1

_STATES = {state.value: state for state in JobState}
_POLICIES = {policy.value: policy for policy in ParentPolicy}

_WAKE_ONLY = "wake"
"""The kind of a notification that is no event: it only wakes idle workers (change_delay
moves a delayed job's run_at without an event)."""

_WAKE_TYPES = frozenset({"waiting", "resumed", "delayed", _WAKE_ONLY})
"""Events after which an idle worker of the queue takes again (WAIT FOR WORK: a delayed
job may be due sooner than the worker's timeout, and change_delay counts too)."""

_DEADLOCK_RETRIES = 8

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.CrashShutdownError,
    ConnectionError,
    OSError,
)
_RECONNECT_ERRORS: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, asyncpg.PostgresError)
_LOST_RETRIES = 3
"""Attempts of a call that may be repeated after its connection was lost, each (after
the first) on a newly opened connection."""

_CLOSE_GRACE = 1.0
"""Seconds ``close`` gives connections to end politely before it cuts them."""
_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection it came from is gone (not a statement error
    on a connection that still works)."""
    if isinstance(exc, asyncpg.PostgresError):
        return isinstance(exc, _CONNECTION_ERRORS)
    return True


def _never_sent(exc: BaseException) -> bool:
    """Whether asyncpg refused ``exc``'s statement before sending any of it.

    asyncpg checks that its connection is idle before it writes a statement. A
    connection whose server process has already said goodbye (``pg_terminate_backend``,
    a shutdown) but whose end of stream asyncpg has not read yet fails that check with
    these messages: the statement never reached the server, so any call can be repeated.
    """
    return isinstance(exc, asyncpg.exceptions.InternalClientError) and str(exc).startswith(
        ("cannot switch to state", "cannot perform operation")
    )


def _rate_args(rate_limit: tuple[int, float] | None) -> tuple[int | None, float | None]:
    """A rate limit as SQL arguments: ``(max, duration)``, the max kept within int4."""
    if rate_limit is None:
        return None, None
    return min(rate_limit[0], _INT4_MAX), rate_limit[1]


def _take_result(row: Sequence[Any]) -> TakeResult:
    """A take's ``(taken, next_run_at, rate_limited_until, concurrency_limited)``."""
    return TakeResult([_record(r) for r in row[0]], row[1], row[2], bool(row[3]))


def _record(r: Any) -> JobRecord:
    """A :class:`JobRecord` from a row of the job columns (or a ``jobs`` composite)."""
    policy = r[23]
    return JobRecord(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        _STATES[r[5]],
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        list(r[14]),
        r[15],
        r[16],
        r[17],
        r[18],
        r[19],
        r[20],
        r[21],
        r[22],
        None if policy is None else _POLICIES[policy],
        r[24],
        r[25],
        r.get("cancel_reason"),
        r.get("group_id"),
    )


def _storable(*texts: str) -> bool:
    """Whether PostgreSQL can hold every text (no NUL character, valid UTF-8). A read
    that names something PostgreSQL cannot hold finds nothing, rather than failing."""
    for text in texts:
        if "\x00" in text:
            return False
        try:
            text.encode()
        except UnicodeEncodeError:
            return False
    return True


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema: readable when it fits in an identifier."""
    channel = f"conveyor_events_{schema}"
    if len(channel) <= 63:
        return channel
    return "conveyor_events_" + hashlib.sha1(schema.encode()).hexdigest()[:40]


class _Subscription:
    """One queue's events as delivered by the store's listener."""

    def __init__(self, store: PostgresStore, queue: str) -> None:
        self._store = store
        self.queue = queue
        self._items: asyncio.Queue[EventRecord | None] = asyncio.Queue()
        self._closed = False

    def push(self, event: EventRecord | None) -> None:
        if not self._closed:
            self._items.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[EventRecord]:
        return self

    async def __anext__(self) -> EventRecord:
        if self._closed and self._items.empty():
            raise StopAsyncIteration
        event = await self._items.get()
        if event is None:
            self._closed = True
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if not self._closed:
            self._store._unsubscribe(self)
            self._closed = True
            self._items.put_nowait(None)


class _Operations:
    """The protocol calls, over an abstract way to run one statement.

    :class:`PostgresStore` runs each statement on a pooled connection;
    :class:`BoundPostgresStore` runs it on an application's own connection.
    """

    _schema: str
    _channel: str
    _text_index: bool | None = None
    _sql: dict[str, str]

    async def _run(self, method: str, op: Callable[[Any], Awaitable[T]], *, repeatable: bool) -> T:
        raise NotImplementedError

    capabilities = StoreCapabilities(
        shared=True,
        cross_process_events=True,
        blocking_wakeup=True,
        concurrent_calls=True,
        transactional_enqueue=True,
    )

    def _events_store(self) -> PostgresStore:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    async def _call(self, key: str, op: Callable[[Any], Awaitable[T]], repeatable: bool) -> T:
        try:
            return await self._run(key, op, repeatable=repeatable)
        except asyncpg.exceptions.DataError as exc:
            # Text PostgreSQL cannot hold (a lone surrogate) or a number out of range:
            # refused before anything was written.
            raise PayloadError(f"PostgreSQL cannot store a value of this call: {exc}") from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in _UNSTORABLE_TEXT:
                raise PayloadError(f"PostgreSQL cannot store this text: {exc}") from exc
            raise

    # ``repeatable=True`` marks a call that is safe to repeat: a read, or a write whose second
    # run changes nothing more than its first.

    async def _fetchval(self, key: str, *args: Any, repeatable: bool = False) -> Any:
        query = self._sql[key]
        return await self._call(key, lambda c: c.fetchval(query, *args), repeatable)

    async def _fetchrow(self, key: str, *args: Any, repeatable: bool = False) -> Any:
        query = self._sql[key]
        return await self._call(key, lambda c: c.fetchrow(query, *args), repeatable)

    async def _fetch(self, key: str, *args: Any, repeatable: bool = False) -> list[Any]:
        query = self._sql[key]
        return await self._call(key, lambda c: c.fetch(query, *args), repeatable)

    @staticmethod
    def _state_check(queue: str, job_id: str, state: str | None, wanted: str, what: str) -> None:
        if state is None:
            raise JobNotFoundError(queue, job_id)
        if state != wanted:
            raise InvalidJobStateError(f"job {job_id!r} is {state}, {what}")

    # ------------------------------------------------------------------ writing

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        if len(groups) == 1 and len(groups[0]) == 1 and groups[0][0].parent_id is None:
            written = await self._add_one(groups[0][0], now)
            if written is not None:
                return [written]
        grps: list[int] = []
        jobs: list[NewJob] = []
        for number, group in enumerate(groups, 1):
            if not group:
                raise ValueError("a group of jobs must not be empty")
            for new in group:
                grps.append(number)
                jobs.append(new)
        if not jobs:
            return []
        try:
            if len(jobs) >= OFFLOAD_JOBS:
                # Encoding fifteen arrays of thousands of values would hold the event
                # loop: a worker thread writes one JSON text the server unpacks.
                batch = await anyio.to_thread.run_sync(_batch_json, grps, jobs)
                result = await self._fetchval("add_jobs_batch", batch, now)
                return list(result)
            result = await self._fetchval("add_jobs", grps, *_job_columns(jobs), now)
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise await self._duplicate_error(groups, exc) from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == "CV410":
                raise DuplicateJobError(str(exc)) from exc
            mapped = _parent_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        return list(result)

    async def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        check_dag(jobs, edges, deduplication)
        columns = [*_job_columns(jobs)[:11], [j.group_id for j in jobs]]
        edge_columns = [
            [e.parent_queue for e in edges],
            [e.parent_id for e in edges],
            [e.child_queue for e in edges],
            [e.child_id for e in edges],
            [e.policy.value for e in edges],
        ]
        dedup_columns = [
            [index for index, _ in deduplication],
            [key.id for _, key in deduplication],
            [key.ttl for _, key in deduplication],
            [key.extend for _, key in deduplication],
            [key.replace for _, key in deduplication],
        ]
        try:
            rows = await self._fetch("add_dag", *dedup_columns, *columns, *edge_columns, now)
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise await self._duplicate_error([jobs], exc) from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == "CV410":
                raise DuplicateJobError(str(exc)) from exc
            if exc.sqlstate == "CV404":
                raise JobNotFoundError(str(exc.message), str(exc.detail)) from exc
            if exc.sqlstate == "CV409":
                raise InvalidJobStateError(str(exc)) from exc
            raise
        return [DeduplicatedAdd(row[0], bool(row[1])) for row in rows]

    async def add_children(
        self,
        queue: str,
        job_id: str,
        token: str,
        groups: Sequence[Sequence[NewJob]],
        now: float,
    ) -> list[bool]:
        check_children_of(queue, job_id, groups)
        grps: list[int] = []
        jobs: list[NewJob] = []
        for number, group in enumerate(groups, 1):
            for new in group:
                grps.append(number)
                jobs.append(new)
        if len(jobs) >= OFFLOAD_JOBS:
            batch = await anyio.to_thread.run_sync(_batch_json, grps, jobs)
        else:
            batch = _batch_json(grps, jobs)
        try:
            result = await self._fetchval("add_children", queue, job_id, token, batch, now)
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise await self._duplicate_error(groups, exc) from exc
        except asyncpg.PostgresError as exc:
            mapped = _parent_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        return list(result)

    async def park_job(self, queue: str, job_id: str, token: str, now: float) -> bool:
        parked = await self._fetchval("park_job", queue, job_id, token, now)
        if parked < 0:
            raise LockLostError(lock_not_held(queue, job_id, "wait for its children"))
        return bool(parked)

    async def add_deduplicated(
        self, new: NewJob, dedup: DeduplicationKey, now: float
    ) -> DeduplicatedAdd:
        if new.parent_id is not None or new.state is JobState.WAITING_CHILDREN:
            raise ValueError("add_deduplicated adds one standalone job")
        row = await self._fetchrow(
            "add_deduplicated",
            dedup.id,
            dedup.ttl,
            dedup.extend,
            dedup.replace,
            new.id,
            new.queue,
            new.name,
            new.data,
            new.opts,
            new.state.value,
            new.priority,
            new.lifo,
            new.delay,
            new.keep_completed,
            new.keep_failed,
            new.group_id,
            now,
        )
        return DeduplicatedAdd(row[0], bool(row[1]))

    async def _duplicate_error(
        self, groups: Sequence[Sequence[NewJob]], exc: asyncpg.PostgresError
    ) -> DuplicateJobError:
        """The error naming the job id and queue that made an add fail as a duplicate
        (nothing of the add was written)."""
        seen: set[tuple[str, str]] = set()
        for group in groups:
            for new in group:
                if (new.queue, new.id) in seen:
                    return DuplicateJobError(
                        f"job id {new.id!r} appears twice for queue {new.queue!r} in one add"
                    )
                seen.add((new.queue, new.id))
        queues = [new.queue for group in groups for new in group]
        ids = [new.id for group in groups for new in group]
        try:
            rows = await self._fetch("existing_jobs", queues, ids, repeatable=True)
        except (asyncpg.PostgresError, StoreUnavailableError):
            # Inside an application's failed transaction nothing more can be read.
            rows = []
        existing = {(r[0], r[1]) for r in rows}
        for group in groups:
            if (group[0].queue, group[0].id) in existing:
                continue  # an existing first job skips its group: not the culprit
            for new in group[1:]:
                if (new.queue, new.id) in existing:
                    return DuplicateJobError(
                        f"job id {new.id!r} already exists in queue {new.queue!r}"
                    )
        return DuplicateJobError(f"a job of this add already exists: {exc.detail or exc}")

    async def _add_one(self, new: NewJob, now: float) -> bool | None:
        """Add one standalone job in a single statement; ``None`` if it does not fit."""
        state = new.state.value
        run_at = now + new.delay if state == "delayed" else None
        events = [
            [new.queue, "added", new.id, {"name": new.name}, now],
            [new.queue, state, new.id, {} if run_at is None else {"run_at": run_at}, now],
        ]
        payload = json.dumps(events, separators=(",", ":"))
        if len(payload) > sql_schema.NOTIFY_LIMIT // 4:
            return None
        inserted = await self._fetchval(
            "add_one",
            new.id,
            new.queue,
            new.name,
            new.data,
            new.opts,
            state,
            new.priority,
            new.lifo,
            new.delay,
            now,
            run_at,
            new.keep_completed,
            new.keep_failed,
            self._channel,
            payload,
            new.group_id,
        )
        return bool(inserted)

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
        most, duration = _rate_args(rate_limit)
        self._events_store()._note_take(queue)
        row = await self._fetchrow(
            "take_jobs", queue, min(limit, _INT4_MAX), token, lock_until, now, most, duration
        )
        return _take_result(row)

    async def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> list[str]:
        if not locks:
            return []
        ids = [job_id for job_id, _ in locks]
        tokens = [token for _, token in locks]
        # Setting the same lock deadline twice is harmless: repeatable after a lost connection.
        return list(
            await self._fetchval("extend_locks", queue, ids, tokens, lock_until, repeatable=True)
        )

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        if not completions:
            return []
        return list(
            await self._fetchval(
                "complete_jobs",
                queue,
                [c.id for c in completions],
                [c.token for c in completions],
                [c.return_value for c in completions],
                now,
            )
        )

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
        most, duration = _rate_args(rate_limit)
        self._events_store()._note_take(queue)
        row = await self._fetchrow(
            "complete_and_take",
            queue,
            [c.id for c in completions],
            [c.token for c in completions],
            [c.return_value for c in completions],
            min(limit, _INT4_MAX),
            token,
            lock_until,
            now,
            most,
            duration,
        )
        return list(row[0] or ()), _take_result(tuple(row)[1:])

    async def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        if not failures:
            return []
        return list(
            await self._fetchval(
                "fail_jobs",
                queue,
                [f.id for f in failures],
                [f.token for f in failures],
                [f.reason for f in failures],
                json.dumps([list(f.stacktrace) for f in failures]),
                [f.retry_at for f in failures],
                now,
            )
        )

    async def release_jobs(self, queue: str, releases: Sequence[Release], now: float) -> list[bool]:
        if not releases:
            return []
        return list(
            await self._fetchval(
                "release_jobs",
                queue,
                [r.id for r in releases],
                [r.token for r in releases],
                now,
            )
        )

    async def recover_stalled(
        self, queue: str, now: float, max_stalled_count: int
    ) -> list[StallOutcome]:
        most = min(max_stalled_count, _INT8_MAX)
        row = await self._fetchrow("recover_stalled", queue, now, most)
        return [StallOutcome(i, f) for i, f in zip(row[0], row[1], strict=True)]

    async def wait_for_work(self, queue: str, timeout: float) -> None:
        await self._events_store()._wait_for_work(queue, timeout)

    # ------------------------------------------------------------------ job changes

    async def update_progress(self, queue: str, job_id: str, progress: str) -> None:
        # Repeatable after a lost connection: it sets the same value (and says so again).
        if not await self._fetchval(
            "update_progress", queue, job_id, progress, time.time(), repeatable=True
        ):
            raise JobNotFoundError(queue, job_id)

    async def add_log(self, queue: str, job_id: str, line: str) -> int:
        length = await self._fetchval("add_log", queue, job_id, line)
        if length is None:
            raise JobNotFoundError(queue, job_id)
        return int(length)

    async def get_logs(
        self, queue: str, job_id: str, start: int = 0, end: int | None = None
    ) -> list[str]:
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        if start >= 0 and (end is None or end >= 0):
            last = _INT8_MAX if end is None else min(end, _INT8_MAX)
            first = min(start, _INT8_MAX)
            row = await self._fetchrow("get_logs", queue, job_id, first, last, repeatable=True)
            if row is None:
                raise JobNotFoundError(queue, job_id)
            return list(row[0])
        row = await self._fetchrow("get_logs", queue, job_id, 0, _INT8_MAX, repeatable=True)
        if row is None:
            raise JobNotFoundError(queue, job_id)
        lines: list[str] = list(row[0])
        return lines[start : None if end is None else end + 1]

    async def update_data(self, queue: str, job_id: str, data: str) -> None:
        if await self._fetchval("update_data", queue, job_id, data, repeatable=True) is None:
            raise JobNotFoundError(queue, job_id)

    async def change_priority(self, queue: str, job_id: str, priority: int, lifo: bool) -> None:
        if await self._fetchval("change_priority", queue, job_id, priority, lifo) is None:
            raise JobNotFoundError(queue, job_id)

    async def change_delay(self, queue: str, job_id: str, run_at: float) -> None:
        state = await self._fetchval("change_delay", queue, job_id, run_at)
        self._state_check(queue, job_id, state, "delayed", "only a delayed job's delay can change")

    async def promote_job(self, queue: str, job_id: str, now: float) -> None:
        state = await self._fetchval("promote_job", queue, job_id, now)
        self._state_check(queue, job_id, state, "delayed", "only a delayed job can be promoted")

    async def promote_jobs(self, queue: str, now: float) -> int:
        return int(await self._fetchval("promote_jobs", queue, now))

    async def retry_job(self, queue: str, job_id: str, now: float) -> None:
        state = await self._fetchval("retry_job", queue, job_id, now)
        if state is None:
            raise JobNotFoundError(queue, job_id)
        if state != "failed":
            raise InvalidJobStateError(
                f"job {job_id!r} is {state}, only a failed job can be retried"
            )

    async def retry_jobs(self, queue: str, state: JobState, now: float) -> int:
        if not JobState(state).finished:
            raise InvalidJobStateError(f"only failed or completed jobs can be retried, not {state}")
        return int(await self._fetchval("retry_jobs", queue, JobState(state).value, now))

    async def cancel_job(self, queue: str, job_id: str, reason: str, now: float) -> int:
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        count = await self._fetchval("cancel_job", queue, job_id, reason, now)
        if count is None:
            raise JobNotFoundError(queue, job_id)
        return int(count)

    async def cancel_requests(self, queue: str, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids or not _storable(queue):
            return {}
        ids = [job_id for job_id in job_ids if _storable(job_id)]
        rows = await self._fetch("cancel_requests", queue, ids, repeatable=True)
        return {row[0]: row[1] for row in rows}

    async def remove_job(self, queue: str, job_id: str) -> bool:
        state = await self._fetchval("remove_job", queue, job_id, time.time())
        if state is None:
            return False
        if state == "active":
            raise InvalidJobStateError(f"job {job_id!r} is active and cannot be removed")
        return True

    # ------------------------------------------------------------------ queues

    async def pause(self, queue: str) -> None:
        await self._fetchval("set_paused", queue, True, time.time())

    async def resume(self, queue: str) -> None:
        await self._fetchval("set_paused", queue, False, time.time())

    async def is_paused(self, queue: str) -> bool:
        if not _storable(queue):
            return False
        return bool(await self._fetchval("is_paused", queue, repeatable=True))

    async def drain(self, queue: str, include_delayed: bool, now: float) -> int:
        return int(await self._fetchval("drain", queue, include_delayed, now))

    async def clean(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        state = JobState(state)
        if state is JobState.ACTIVE:
            raise InvalidJobStateError("active jobs cannot be cleaned")
        if limit is not None and limit <= 0:
            return []
        if limit is not None:
            limit = min(limit, _INT8_MAX)
        return list(
            await self._fetchval("clean", queue, state.value, older_than, limit, time.time())
        )

    async def obliterate(self, queue: str, force: bool) -> None:
        if not await self._fetchval("obliterate", queue, force, time.time()):
            raise InvalidJobStateError(
                f"queue {queue!r} has active jobs; pass force=True to obliterate it anyway"
            )

    # ------------------------------------------------------------------ flow control

    async def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        await self._fetchval("set_global_concurrency", queue, concurrency, repeatable=True)

    async def get_global_concurrency(self, queue: str) -> int | None:
        value = await self._fetchval("get_global_concurrency", queue, repeatable=True)
        return None if value is None else int(value)

    async def rate_limit_queue(self, queue: str, until: float) -> None:
        await self._fetchval("rate_limit_queue", queue, until, repeatable=True)

    async def set_group_limits(
        self, queue: str, concurrency: int | None, rate_limit: tuple[int, float] | None
    ) -> None:
        most, duration = _rate_args(rate_limit)
        if concurrency is not None:
            concurrency = min(concurrency, _INT4_MAX)
        await self._fetchval(
            "set_group_limits", queue, concurrency, most, duration, repeatable=True
        )

    async def get_group_limits(self, queue: str) -> GroupLimits:
        if not _storable(queue):
            return GroupLimits()
        row = await self._fetchrow("get_group_limits", queue, repeatable=True)
        if row is None:
            return GroupLimits()
        concurrency, most, duration = row
        return GroupLimits(
            None if concurrency is None else int(concurrency),
            None if most is None else (int(most), float(duration)),
        )

    async def get_group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        if not _storable(queue):
            return {}
        counts: dict[str, dict[JobState, int]] = {}
        for group_id, state, n in await self._fetch("get_group_counts", queue, repeatable=True):
            per_state = counts.get(group_id)
            if per_state is None:
                per_state = counts[group_id] = dict.fromkeys(JobState, 0)
            per_state[_STATES[state]] = int(n)
        return counts

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
        await self._fetchval(
            "upsert_scheduler", queue, scheduler_id, timing, template, next_run_at, repeatable=True
        )

    async def remove_scheduler(self, queue: str, scheduler_id: str) -> bool:
        return bool(await self._fetchval("remove_scheduler", queue, scheduler_id))

    async def get_schedulers(self, queue: str) -> list[SchedulerRecord]:
        rows = await self._fetch("get_schedulers", queue, repeatable=True)
        return [SchedulerRecord(*row) for row in rows]

    async def due_schedulers(self, queue: str, now: float, limit: int) -> DueSchedulers:
        rows = await self._fetch("schedulers_by_next_run", queue, limit + 1, repeatable=True)
        return split_due([SchedulerRecord(*row) for row in rows], now, limit)

    async def fire_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        expected: float,
        next_run_at: float | None,
        jobs: Sequence[NewJob],
        now: float,
    ) -> bool:
        try:
            return bool(
                await self._fetchval(
                    "fire_scheduler",
                    queue,
                    scheduler_id,
                    expected,
                    next_run_at,
                    *_job_columns(jobs),
                    now,
                )
            )
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise await self._duplicate_error([jobs], exc) from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == "CV410":
                raise DuplicateJobError(str(exc)) from exc
            raise

    # ------------------------------------------------------------------ reading

    async def get_job(self, queue: str, job_id: str) -> JobRecord | None:
        if not _storable(queue, job_id):
            return None
        row = await self._fetchrow("get_job", queue, job_id, repeatable=True)
        return None if row is None else _record(row)

    async def get_jobs(
        self, queue: str, states: Sequence[JobState], start: int, end: int | None
    ) -> list[JobRecord]:
        names = [JobState(s).value for s in states]
        if not names or not _storable(queue):
            return []
        if start >= 0 and (end is None or end >= 0):
            if end is not None and end < start:
                return []
            count = None if end is None else min(end - start + 1, _INT8_MAX)
            first = min(start, _INT8_MAX)
            rows = await self._fetch("get_jobs", queue, names, first, count, repeatable=True)
            return [_record(r) for r in rows]
        rows = await self._fetch("get_jobs", queue, names, 0, None, repeatable=True)
        return [_record(r) for r in rows][start : None if end is None else end + 1]

    async def get_counts(self, queue: str) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        if not _storable(queue):
            return counts
        for state, n in await self._fetch("get_counts", queue, repeatable=True):
            counts[_STATES[state]] = int(n)
        return counts

    async def get_dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        rows = await self._fetch("get_dependencies", queue, job_id, repeatable=True)
        if not rows:
            raise JobNotFoundError(queue, job_id)
        return [ChildDependency(d[0], d[1], d[2], d[3], d[4]) for d in rows if d[0] is not None]

    async def get_dependency_page(
        self, queue: str, job_id: str, *, cursor: str | None, limit: int
    ) -> DependencyPage:
        check_dependency_limit(limit)
        after = -1 if cursor is None else decode_dependency_cursor(cursor)
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        rows = await self._fetch(
            "get_dependency_page", queue, job_id, after, limit + 1, repeatable=True
        )
        if not rows:
            raise JobNotFoundError(queue, job_id)
        found = [row for row in rows if row[0] is not None]
        following = encode_dependency_cursor(found[limit - 1][0]) if len(found) > limit else None
        return DependencyPage(
            [ChildDependency(d[1], d[2], d[3], d[4], d[5]) for d in found[:limit]], following
        )

    async def get_dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        row = await self._fetchrow("get_dependency_counts", queue, job_id, repeatable=True)
        if row is None:
            raise JobNotFoundError(queue, job_id)
        return dict(zip(DEPENDENCY_STATUSES, (int(n) for n in row), strict=True))

    async def get_parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        rows = await self._fetch("get_parent_links", queue, job_id, repeatable=True)
        if not rows:
            raise JobNotFoundError(queue, job_id)
        return [ParentLink(r[0], r[1], ParentPolicy(r[2])) for r in rows if r[0] is not None]

    async def remove_child_dependency(self, queue: str, job_id: str, now: float) -> bool:
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        left = await self._fetchval("remove_child_dependency", queue, job_id, now)
        if left is None:
            raise JobNotFoundError(queue, job_id)
        return bool(left)

    async def remove_unprocessed_children(self, queue: str, job_id: str, now: float) -> int:
        if not _storable(queue, job_id):
            raise JobNotFoundError(queue, job_id)
        removed = await self._fetchval("remove_unprocessed_children", queue, job_id, now)
        if removed is None:
            raise JobNotFoundError(queue, job_id)
        return int(removed)

    async def list_queues(self) -> list[str]:
        return sorted(await self._fetchval("list_queues", repeatable=True))

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
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        after = (math.inf, "") if cursor is None else decode_cursor(cursor)
        if not _storable(queue) or (name is not None and not _storable(name)):
            return SearchPage([], None)
        if text is not None and not _storable(text):
            return SearchPage([], None)
        folded = None if text is None else fold_ascii(text)
        # ILIKE finds a superset of the rule's matches (it folds more than ASCII letters,
        # and pg_trgm's index serves it); the exact matches are kept below.
        pattern = None if folded is None else "%" + _LIKE_SPECIALS.sub(r"\\\g<0>", folded) + "%"
        wanted = None if states is None else [JobState(state).value for state in states]
        args = (queue, after[0], after[1], name, wanted, pattern, limit + 1)

        def exact(rows: list[Any]) -> list[JobRecord]:
            jobs = [_record(r) for r in rows[:limit]]
            if folded is None:
                return jobs
            return [
                job
                for job in jobs
                if any(folded in fold_ascii(field) for field in (job.id, job.name, job.data))
            ]

        def page_after(rows: list[Any]) -> SearchPage:
            last = rows[limit - 1]
            return SearchPage(exact(rows), encode_cursor(last["created_at"], last["id"]))

        if name is None and wanted is None and pattern is None:
            rows = await self._fetch(
                "search_all", queue, after[0], after[1], limit + 1, repeatable=True
            )
            return page_after(rows) if len(rows) > limit else SearchPage(exact(rows), None)
        rows = await self._fetch("search_scan", *args, repeatable=True)
        if len(rows) > limit:
            return page_after(rows)
        if folded is not None and len(folded) >= 3 and await self._has_text_index():
            # Few matches among the jobs walked: the trigram index finds the rest.
            rows = await self._fetch("search_text", *args, repeatable=True)
            return page_after(rows) if len(rows) > limit else SearchPage(exact(rows), None)
        # The walk looked at SEARCH_SCAN jobs at most: resume below the last of them.
        boundary = await self._fetchrow(
            "search_boundary", queue, after[0], after[1], repeatable=True
        )
        if boundary is None or boundary[0] is None:
            return SearchPage(exact(rows), None)
        return SearchPage(exact(rows), encode_cursor(boundary[0], boundary[1]))

    async def _has_text_index(self) -> bool:
        if self._text_index is None:
            self._text_index = bool(await self._fetchval("has_text_index", repeatable=True))
        return self._text_index

    async def get_metrics(
        self, queue: str, kind: MetricKind, start: int, end: int
    ) -> dict[int, int]:
        if not _storable(queue):
            return {}
        rows = await self._fetch("get_metrics", queue, kind, start, end, repeatable=True)
        return {int(minute): int(count) for minute, count in rows}

    # ------------------------------------------------------------------ events

    async def subscribe(self, queue: str) -> EventSubscription:
        return await self._events_store()._subscribe(queue)


_LIKE_SPECIALS = re.compile(r"[\\%_]")

_NEWEST_FIRST = 'ORDER BY created_at DESC, id COLLATE "C" DESC'
_BELOW = '(created_at, id COLLATE "C") < ($2::float8, $3::text)'
"""Below the cursor in search order, as one row comparison the index scan can use."""


def _parent_error(exc: asyncpg.PostgresError) -> Exception | None:
    """The Conveyor error of an add refused for its existing parent (ADD TO AN EXISTING
    PARENT) or for a lock not held (``add_children``); ``None`` for any other error."""
    if exc.sqlstate == "CV404":
        return JobNotFoundError(str(exc.detail), str(exc.hint))
    if exc.sqlstate == "CV409":
        return InvalidJobStateError(str(exc))
    if exc.sqlstate == "CV423":
        return LockLostError(str(exc))
    return None


OFFLOAD_JOBS = 256
"""An add of this many jobs or more is encoded on a worker thread (``add_jobs_batch``)."""


def _batch_json(groups: list[int], jobs: list[NewJob]) -> str:
    """The rows of ``add_jobs_batch``: one JSON array, a row per job of its group and the
    values of :func:`_job_columns`, in ``add_jobs``'s parameter order."""
    rows = list(zip(groups, *_job_columns(jobs), strict=True))
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def _job_columns(jobs: Sequence[NewJob]) -> list[list[Any]]:
    """The per-column arrays of ``jobs`` that ``add_jobs`` and ``fire_scheduler`` take."""
    return [
        [j.id for j in jobs],
        [j.queue for j in jobs],
        [j.name for j in jobs],
        [j.data for j in jobs],
        [j.opts for j in jobs],
        [j.state.value for j in jobs],
        [j.priority for j in jobs],
        [j.lifo for j in jobs],
        [j.delay for j in jobs],
        [j.keep_completed for j in jobs],
        [j.keep_failed for j in jobs],
        [j.parent_id for j in jobs],
        [j.parent_queue for j in jobs],
        [None if j.parent_policy is None else j.parent_policy.value for j in jobs],
        [j.group_id for j in jobs],
    ]


_SCHEDULER_COLUMNS = "queue, id, timing, template, next_run_at, iterations"


def _statements(schema: str) -> dict[str, str]:
    """Every statement the store runs, for one schema."""
    s = sql_schema.quote_ident(schema)
    return {
        "add_jobs": f"SELECT {s}.add_jobs($1::int[], $2::text[], $3::text[], $4::text[], "
        "$5::text[], $6::text[], $7::text[], $8::int[], $9::bool[], $10::float8[], "
        "$11::int8[], $12::int8[], $13::text[], $14::text[], $15::text[], $16::text[], "
        "$17::float8)",
        "add_jobs_batch": f"SELECT {s}.add_jobs_batch($1::text, $2::float8)",
        "add_dag": f"SELECT * FROM {s}.add_dag($1::int[], $2::text[], $3::float8[], "
        "$4::bool[], $5::bool[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], "
        "$11::text[], $12::int[], $13::bool[], $14::float8[], $15::int8[], $16::int8[], "
        "$17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], "
        "$23::float8)",
        "get_parent_links": f"SELECT l.pq, l.pid, l.policy FROM {s}.jobs j "
        f"LEFT JOIN LATERAL {s}._links(j.queue, j.id) l ON true "
        "WHERE j.queue = $1::text AND j.id = $2::text",
        "add_deduplicated": f"SELECT * FROM {s}.add_deduplicated($1::text, $2::float8, "
        "$3::bool, $4::bool, $5::text, $6::text, $7::text, $8::text, $9::text, $10::text, "
        "$11::int, $12::bool, $13::float8, $14::int8, $15::int8, $16::text, $17::float8)",
        "add_one": f"WITH ins AS (INSERT INTO {s}.jobs (id, queue, name, data, opts, state, "
        "priority, lifo, delay, created_at, run_at, keep_completed, keep_failed, order_key, "
        "group_id) "
        "VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::int, "
        "$8::bool, $9::float8, $10::float8, $11::float8, $12::int8, $13::int8, "
        f"CASE WHEN $6::text = 'waiting' AND $8::bool THEN -nextval('{s}.order_seq') "
        f"ELSE nextval('{s}.order_seq') END, $16::text) "
        "ON CONFLICT (queue, id) DO NOTHING RETURNING 1) "
        "SELECT count(pg_notify($14::text, $15::text)) FROM ins",
        "take_jobs": f"SELECT taken, next_run_at, rate_limited_until, concurrency_limited "
        f"FROM {s}.take_jobs("
        "$1::text, $2::int, $3::text, $4::float8, $5::float8, $6::int, $7::float8)",
        "extend_locks": f"SELECT {s}.extend_locks($1::text, $2::text[], $3::text[], $4::float8)",
        "complete_jobs": f"SELECT {s}.complete_jobs($1::text, $2::text[], $3::text[], "
        "$4::text[], $5::float8)",
        "complete_and_take": "SELECT applied, taken, next_run_at, rate_limited_until, "
        f"concurrency_limited FROM {s}.complete_and_take($1::text, $2::text[], $3::text[], "
        "$4::text[], $5::int, $6::text, $7::float8, $8::float8, $9::int, $10::float8)",
        "fail_jobs": f"SELECT {s}.fail_jobs($1::text, $2::text[], $3::text[], $4::text[], "
        "$5::jsonb, $6::float8[], $7::float8)",
        "release_jobs": f"SELECT {s}.release_jobs($1::text, $2::text[], $3::text[], $4::float8)",
        "recover_stalled": f"SELECT ids, failed FROM {s}.recover_stalled($1::text, $2::float8, "
        "$3::int8)",
        "update_progress": f"SELECT {s}.update_progress($1::text, $2::text, $3::text, $4::float8)",
        "add_log": f"SELECT {s}.add_log($1::text, $2::text, $3::text)",
        "get_logs": f"SELECT ARRAY(SELECT line FROM {s}.logs l WHERE l.queue = $1::text "
        "AND l.id = $2::text AND l.idx BETWEEN $3::int8 AND $4::int8 ORDER BY l.idx) "
        f"FROM {s}.jobs j WHERE j.queue = $1::text AND j.id = $2::text",
        "update_data": f"UPDATE {s}.jobs SET data = $3::text WHERE queue = $1::text "
        "AND id = $2::text RETURNING 1",
        "change_priority": f"SELECT {s}.change_priority($1::text, $2::text, $3::int, $4::bool)",
        "change_delay": f"SELECT {s}.change_delay($1::text, $2::text, $3::float8)",
        "promote_job": f"SELECT {s}.promote_job($1::text, $2::text, $3::float8)",
        "promote_jobs": f"SELECT {s}.promote_jobs($1::text, $2::float8)",
        "retry_job": f"SELECT {s}.retry_job($1::text, $2::text, $3::float8)",
        "retry_jobs": f"SELECT {s}.retry_jobs($1::text, $2::text, $3::float8)",
        "remove_job": f"SELECT {s}.remove_job($1::text, $2::text, $3::float8)",
        "cancel_job": f"SELECT {s}.cancel_job($1::text, $2::text, $3::text, $4::float8)",
        "cancel_requests": f"SELECT id, cancel_reason FROM {s}.jobs WHERE queue = $1::text "
        "AND id = ANY($2::text[]) AND state = 'active' AND cancel_reason IS NOT NULL",
        "set_paused": f"SELECT {s}.set_paused($1::text, $2::bool, $3::float8)",
        "is_paused": f"SELECT coalesce((SELECT paused FROM {s}.queues WHERE queue = $1::text), "
        "false)",
        "drain": f"SELECT {s}.drain($1::text, $2::bool, $3::float8)",
        "clean": f"SELECT {s}.clean($1::text, $2::text, $3::float8, $4::int8, $5::float8)",
        "obliterate": f"SELECT {s}.obliterate($1::text, $2::bool, $3::float8)",
        "upsert_scheduler": f"SELECT {s}.upsert_scheduler($1::text, $2::text, $3::text, "
        "$4::text, $5::float8)",
        "remove_scheduler": f"DELETE FROM {s}.schedulers WHERE queue = $1::text "
        "AND id = $2::text RETURNING 1",
        "get_schedulers": f"SELECT {_SCHEDULER_COLUMNS} FROM {s}.schedulers "
        'WHERE queue = $1::text ORDER BY id COLLATE "C"',
        "schedulers_by_next_run": f"SELECT {_SCHEDULER_COLUMNS} FROM {s}.schedulers "
        "WHERE queue = $1::text AND next_run_at IS NOT NULL "
        'ORDER BY next_run_at, id COLLATE "C" LIMIT $2::int8',
        "fire_scheduler": f"SELECT {s}.fire_scheduler($1::text, $2::text, $3::float8, "
        "$4::float8, $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], "
        "$10::text[], $11::int[], $12::bool[], $13::float8[], $14::int8[], $15::int8[], "
        "$16::text[], $17::text[], $18::text[], $19::text[], $20::float8)",
        "get_job": f"SELECT {_JOB_COLUMNS} FROM {s}.jobs WHERE queue = $1::text AND id = $2::text",
        "search_all": f"SELECT {_JOB_COLUMNS} FROM {s}.jobs WHERE queue = $1::text "
        f"AND {_BELOW} {_NEWEST_FIRST} LIMIT $4::int8",
        "search_scan": f"SELECT {_JOB_COLUMNS} FROM {s}.search_scan($1::text, $2::float8, "
        "$3::text, $4::text, $5::text[], $6::text, $7::int)",
        "search_text": f"SELECT {_JOB_COLUMNS} FROM {s}.search_text($1::text, $2::float8, "
        "$3::text, $4::text, $5::text[], $6::text, $7::int)",
        "search_boundary": f"SELECT created_at, id FROM {s}.search_boundary($1::text, "
        "$2::float8, $3::text)",
        "has_text_index": f"SELECT to_regclass({sql_schema.quote_literal(s + '.jobs_text')}) "
        "IS NOT NULL",
        "get_metrics": f"SELECT minute, sum(count) FROM {s}.metrics WHERE queue = $1::text "
        "AND kind = $2::text AND minute BETWEEN $3::int8 AND $4::int8 "
        "GROUP BY minute HAVING sum(count) > 0 ORDER BY minute",
        "get_jobs": f"SELECT {_JOB_COLUMNS} FROM {s}.jobs j "
        "JOIN unnest($2::text[]) WITH ORDINALITY AS w(st, o) ON j.state = w.st "
        "WHERE j.queue = $1::text ORDER BY w.o, "
        "CASE j.state WHEN 'waiting' THEN j.priority::float8 WHEN 'delayed' THEN j.run_at "
        "ELSE 0 END, "
        "CASE WHEN j.state IN ('completed', 'failed') THEN -j.order_key "
        "WHEN j.state = 'delayed' THEN 0 ELSE j.order_key END, j.id "
        "OFFSET $3::int8 LIMIT $4::int8",
        "existing_jobs": f"SELECT j.queue, j.id FROM {s}.jobs j "
        "JOIN unnest($1::text[], $2::text[]) AS x(q, i) ON j.queue = x.q AND j.id = x.i",
        "get_counts": f"SELECT state, n FROM {s}.get_counts($1::text)",
        "get_dependencies": "SELECT d.child_queue, d.child_id, d.status, d.value, d.reason "
        f"FROM {s}.jobs j LEFT JOIN {s}.deps d ON d.parent_queue = j.queue "
        "AND d.parent_id = j.id WHERE j.queue = $1::text AND j.id = $2::text ORDER BY d.pos",
        "get_dependency_page": "SELECT d.pos, d.child_queue, d.child_id, d.status, d.value, "
        f"d.reason FROM {s}.jobs j LEFT JOIN LATERAL (SELECT * FROM {s}.deps d "
        "WHERE d.parent_queue = j.queue AND d.parent_id = j.id AND d.pos >= 0 AND d.pos > $3::int8 "
        "ORDER BY d.pos LIMIT $4::int8) d ON true WHERE j.queue = $1::text AND j.id = $2::text "
        "ORDER BY d.pos",
        "get_dependency_counts": "SELECT pending, deps_processed, deps_failed, deps_ignored "
        f"FROM {s}.jobs WHERE queue = $1::text AND id = $2::text",
        "remove_child_dependency": f"SELECT {s}.remove_child_dependency($1::text, $2::text, "
        "$3::float8)",
        "remove_unprocessed_children": f"SELECT {s}.remove_unprocessed_children($1::text, "
        "$2::text, $3::float8)",
        "add_children": f"SELECT {s}.add_children($1::text, $2::text, $3::text, $4::text, "
        "$5::float8)",
        "park_job": f"SELECT {s}.park_job($1::text, $2::text, $3::text, $4::float8)",
        "set_global_concurrency": f"INSERT INTO {s}.queues (queue, concurrency) "
        "VALUES ($1::text, $2::int) ON CONFLICT (queue) DO UPDATE "
        "SET concurrency = excluded.concurrency",
        "rate_limit_queue": f"INSERT INTO {s}.queues AS t (queue, limited_until) "
        "VALUES ($1::text, $2::float8) ON CONFLICT (queue) DO UPDATE "
        "SET limited_until = greatest(t.limited_until, excluded.limited_until)",
        "get_global_concurrency": f"SELECT concurrency FROM {s}.queues WHERE queue = $1::text",
        "set_group_limits": f"INSERT INTO {s}.queues (queue, group_concurrency, group_rate_max, "
        "group_rate_duration) VALUES ($1::text, $2::int, $3::int, $4::float8) "
        "ON CONFLICT (queue) DO UPDATE SET group_concurrency = excluded.group_concurrency, "
        "group_rate_max = excluded.group_rate_max, "
        "group_rate_duration = excluded.group_rate_duration",
        "get_group_limits": f"SELECT group_concurrency, group_rate_max, group_rate_duration "
        f"FROM {s}.queues WHERE queue = $1::text",
        "get_group_counts": f"SELECT group_id, state, count(*) FROM {s}.jobs "
        "WHERE queue = $1::text AND group_id IS NOT NULL GROUP BY group_id, state",
        "list_queues": "SELECT ARRAY(WITH RECURSIVE qs(q) AS ("
        f"(SELECT queue FROM {s}.jobs ORDER BY queue LIMIT 1) UNION ALL "
        f"SELECT (SELECT queue FROM {s}.jobs WHERE queue > qs.q ORDER BY queue LIMIT 1) "
        "FROM qs WHERE qs.q IS NOT NULL) "
        f"SELECT q FROM qs WHERE q IS NOT NULL UNION SELECT queue FROM {s}.queues "
        "WHERE paused)",
    }


class PostgresStore(_Operations):
    """A store on PostgreSQL: many processes on many hosts can share one database.

    ``dsn`` is a libpq connection string or URL; ``schema`` names the PostgreSQL schema
    that holds the store's tables and functions (created and migrated on ``connect``).
    ``min_size`` and ``max_size`` size the connection pool; further keyword ``options``
    go to ``asyncpg.connect`` for every connection (for example
    ``statement_cache_size=0`` behind a transaction-pooling PgBouncer, ``ssl``,
    ``server_settings``). ``listen_dsn`` lets the event listener connect
    elsewhere than the pool (a direct connection when the pool goes through a proxy).

    ``timeout`` bounds, in seconds, every wait on PostgreSQL: opening a connection,
    each statement (including those of the event listener) and waiting for a free pooled
    connection. A call that exceeds it raises ``StoreUnavailableError``; a transition
    cut off that way either committed or is rolled back whole, never half done.
    ``close`` never waits on the server for more than about a second. (asyncpg's own
    ``timeout`` and ``command_timeout`` options, if given, override it for connecting
    and for statements.)

    Every call commits durably: once it returns, its change survives a crash of the
    database server. ``durable_worker_commits=False`` is a faster opt-in for worker
    transitions (take, lock renewal, complete, fail, release, stall recovery): they then
    commit without waiting for the WAL flush, so a server crash (not a mere restart) can
    roll back the last fraction of a second of them *after* workers were told they were
    stored: completed jobs go back to active or waiting and run again, a retry's
    attempt count goes back. Adding jobs and every other call stay durable either way.
    """

    def __init__(
        self,
        dsn: str,
        schema: str = "conveyor",
        *,
        min_size: int = 4,
        max_size: int = 10,
        listen_dsn: str | None = None,
        durable_worker_commits: bool = True,
        timeout: float = 30.0,
        **options: Any,
    ) -> None:
        sql_schema.quote_ident(schema)
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.dsn = dsn
        self._schema = schema
        self._channel = channel_for(schema)
        self._min_size = min_size
        self._max_size = max_size
        self._listen_dsn = listen_dsn or dsn
        self._timeout = float(timeout)
        self._options = {"timeout": self._timeout, "command_timeout": self._timeout, **options}
        self._durable_worker_commits = durable_worker_commits
        self._sql = _statements(schema)
        self._pool: ConnectionPool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._listener_lost: asyncio.Event | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._sync_lock: asyncio.Lock | None = None
        self._closed = False
        self._subscriptions: dict[str, set[_Subscription]] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._wakes: dict[str, int] = {}
        self._seen_wakes: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self._schema!r})"

    def _redact(self, exc: BaseException) -> str:
        """``exc`` as text, without the password of either DSN."""
        return redact_text(str(exc), self.dsn, self._listen_dsn)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the store."""
        return self._schema

    async def __aenter__(self) -> PostgresStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def using(self, connection: Connection) -> BoundPostgresStore:
        """A store that runs every call on ``connection``, inside the application's
        own transaction: jobs and flows added through it commit or roll back with it."""
        return BoundPostgresStore(self, connection)

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Open the pool and the listener, create or migrate the schema. Idempotent."""
        if self._pool is not None and not self._closed:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._pool is not None and not self._closed:
                return
            self._closed = False
            options = dict(self._options)
            if not self._durable_worker_commits:
                settings = dict(options.get("server_settings") or {})
                settings.setdefault("conveyor.worker_commit", "off")
                options["server_settings"] = settings
            pool = ConnectionPool(
                self.dsn, min_size=self._min_size, max_size=self._max_size, **options
            )
            try:
                await pool.open()
            except TimeoutError as exc:
                raise StoreUnavailableError(
                    f"cannot reach PostgreSQL: no answer within {self._timeout:g} s"
                ) from exc
            except _CONNECTION_ERRORS as exc:
                raise StoreUnavailableError(
                    f"cannot reach PostgreSQL: {self._redact(exc)}"
                ) from exc
            try:
                conn = await pool.acquire(timeout=self._timeout)
                try:
                    await migrate(conn, self._schema)
                finally:
                    pool.release(conn)
                await pool.setup_all(self._warm)
                self._listener_lost = asyncio.Event()
                await self._open_listener()
            except BaseException as exc:
                await pool.close(0)
                if isinstance(exc, TimeoutError):
                    raise StoreUnavailableError(
                        f"PostgreSQL did not answer within {self._timeout:g} s while connecting"
                    ) from exc
                if isinstance(exc, _CONNECTION_ERRORS):
                    raise StoreUnavailableError(
                        f"lost PostgreSQL while connecting: {self._redact(exc)}"
                    ) from exc
                raise
            self._pool = pool
            self._listener_task = asyncio.get_running_loop().create_task(
                self._keep_listening(), name=f"conveyor-listener-{self._schema}"
            )

    async def close(self) -> None:
        """Close the pool and the listener; end subscriptions and waits. Idempotent."""
        if self._closed or self._pool is None:
            self._closed = True
            return
        self._closed = True
        task, self._listener_task = self._listener_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        await asyncio.gather(self._close_listener(listener), pool.close(_CLOSE_GRACE))
        for subs in list(self._subscriptions.values()):
            for sub in list(subs):
                sub.push(None)
        self._subscriptions.clear()
        self._wake_all()

    @staticmethod
    async def _close_listener(listener: asyncpg.Connection | None) -> None:
        if listener is None:
            return
        try:
            await listener.close(timeout=_CLOSE_GRACE)
        except Exception:
            listener.terminate()

    async def _warm(self, conn: Any) -> None:
        """Prepare the hot statements and plan their functions on a new connection.

        PostgreSQL compiles PL/pgSQL and plans its statements once per connection; doing
        it here, with calls that change nothing, keeps that cost off the first jobs.
        """
        sql = self._sql
        empty: list[Any] = []
        try:
            await conn.fetchval(sql["add_jobs"], *([empty] * 16), 0.0)
            await conn.fetchrow(sql["take_jobs"], "", 1, "", 0.0, 0.0, None, None)
            await conn.fetchval(sql["complete_jobs"], "", empty, empty, empty, 0.0)
            await conn.fetchrow(
                sql["complete_and_take"], "", empty, empty, empty, 1, "", 0.0, 0.0, None, None
            )
            await conn.fetchval(sql["extend_locks"], "", empty, empty, 0.0)
            await conn.fetchval(sql["fail_jobs"], "", empty, empty, empty, "[]", empty, 0.0)
        except asyncpg.PostgresError as exc:  # a warm-up is never worth failing for
            log.debug("connection warm-up skipped: %s", self._redact(exc))

    # ------------------------------------------------------------------ running

    def _events_store(self) -> PostgresStore:
        return self

    async def _run(self, method: str, op: Callable[[Any], Awaitable[T]], *, repeatable: bool) -> T:
        pool = self._pool
        if pool is None or self._closed:
            raise StoreClosedError("PostgresStore is not connected: use 'async with store:'")
        attempt = lost = 0
        while True:
            attempt += 1
            try:
                # After a lost connection, the call is repeated on a new one: the other
                # idle connections may have lost their server too.
                conn = await pool.acquire(timeout=self._timeout, fresh=lost > 0)
            except PoolClosedError as exc:
                raise StoreClosedError("PostgresStore was closed") from exc
            except TimeoutError as exc:
                raise StoreUnavailableError(
                    f"no PostgreSQL connection for {method} within {self._timeout:g} s"
                ) from exc
            except _RECONNECT_ERRORS as exc:
                if self._closed:
                    raise StoreClosedError("PostgresStore was closed") from exc
                raise StoreUnavailableError(f"cannot reach PostgreSQL for {method}: {exc}") from exc
            try:
                result = await op(conn)
            except BaseException as exc:
                # A connection that is gone, or was interrupted mid-statement (a timeout,
                # a cancellation), is never reused.
                broken = _connection_lost(exc)
                pool.release(conn, broken=broken)
                if not isinstance(exc, Exception):
                    raise  # a cancellation
                if isinstance(exc, _RETRY_ERRORS) and attempt < _DEADLOCK_RETRIES:
                    await asyncio.sleep(0.001 * attempt)
                    continue
                if self._closed and broken:
                    raise StoreClosedError("PostgresStore was closed") from exc
                if isinstance(exc, TimeoutError):
                    # asyncpg cancelled the statement; the server rolls back whatever it
                    # had not committed.
                    raise StoreUnavailableError(
                        f"PostgreSQL did not answer {method} within {self._timeout:g} s"
                    ) from exc
                if isinstance(exc, _CONNECTION_ERRORS):
                    pool.discard_idle()
                    lost += 1
                    if (repeatable or _never_sent(exc)) and lost < _LOST_RETRIES:
                        continue
                    raise StoreUnavailableError(
                        f"PostgreSQL connection lost during {method}: {self._redact(exc)}"
                    ) from exc
                raise
            pool.release(conn)
            return result

    # ------------------------------------------------------------------ listener

    async def _open_listener(self) -> None:
        conn = await asyncpg.connect(self._listen_dsn, **self._options)
        try:
            async with asyncio.timeout(self._timeout):
                await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        lost = self._listener_lost
        assert lost is not None
        lost.clear()
        conn.add_termination_listener(lambda _c: lost.set())
        self._listener = conn

    async def _keep_listening(self) -> None:
        """Reopen the listener whenever its connection ends, with backoff."""
        lost = self._listener_lost
        assert lost is not None
        while not self._closed:
            await lost.wait()
            if self._closed:
                return
            # Events may have been missed: let every idle worker look again.
            self._wake_all()
            old, self._listener = self._listener, None
            if old is not None:
                old.terminate()
            delay = 0.05
            while not self._closed:
                try:
                    await self._open_listener()
                    break
                except _RECONNECT_ERRORS as exc:
                    log.warning("event listener reconnect failed: %s", self._redact(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            self._wake_all()

    def _note_take(self, queue: str) -> None:
        """Remember the wake-ups seen before a take, so a wake-up that arrives between
        an empty take and the following ``wait_for_work`` is not lost."""
        self._seen_wakes[queue] = self._wakes.get(queue, 0)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            events = json.loads(str(payload))
        except ValueError:
            log.warning("ignoring a malformed event notification")
            return
        subscriptions = self._subscriptions
        waiters = self._waiters
        for queue, kind, job_id, data, ts in events:
            subs = subscriptions.get(queue)
            if subs and kind != _WAKE_ONLY:
                record = EventRecord(kind, queue, job_id, data, ts)
                for sub in subs:
                    sub.push(record)
            if kind in _WAKE_TYPES:
                self._wakes[queue] = self._wakes.get(queue, 0) + 1
                if queue in waiters:
                    self._wake(queue)

    def _wake(self, queue: str) -> None:
        for fut in self._waiters.pop(queue, ()):
            if not fut.done():
                fut.set_result(None)

    def _wake_all(self) -> None:
        """Wake every idle worker (events may have been missed), now and at its next wait."""
        for queue in self._seen_wakes:
            self._wakes[queue] = self._wakes.get(queue, 0) + 1
        for queue in list(self._waiters):
            self._wake(queue)

    async def _wait_for_work(self, queue: str, timeout: float) -> None:
        if self._closed or self._pool is None:
            raise StoreClosedError("PostgresStore is not connected: use 'async with store:'")
        if timeout <= 0:
            return
        if self._wakes.get(queue, 0) != self._seen_wakes.get(queue, 0):
            self._seen_wakes[queue] = self._wakes.get(queue, 0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(queue, set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(queue)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    del self._waiters[queue]

    async def _subscribe(self, queue: str) -> EventSubscription:
        if self._closed or self._pool is None:
            raise StoreClosedError("PostgresStore is not connected: use 'async with store:'")
        sub = _Subscription(self, queue)
        # Notifications already on their way belong to events published before this call:
        # a round trip on the listener connection lets them pass before the feed starts.
        if self._sync_lock is None:
            self._sync_lock = asyncio.Lock()
        async with self._sync_lock:
            listener = self._listener
            if listener is not None and not listener.is_closed():
                try:
                    await listener.execute("SELECT 1", timeout=self._timeout)
                except TimeoutError:
                    # An unresponsive listener: cut it, so that it is reopened.
                    listener.terminate()
                except _CONNECTION_ERRORS:
                    pass
        self._subscriptions.setdefault(queue, set()).add(sub)
        return sub

    def _unsubscribe(self, sub: _Subscription) -> None:
        subs = self._subscriptions.get(sub.queue)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscriptions[sub.queue]


class BoundPostgresStore(_Operations):
    """A :class:`PostgresStore` view that runs every call on one application connection.

    Nothing is committed here: calls join whatever transaction the connection has open,
    so jobs commit or roll back with the application's own writes. Waiting for work and
    subscriptions go through the parent store's listener.
    """

    def __init__(self, store: PostgresStore, connection: Connection) -> None:
        self._store = store
        self._conn = connection
        self._schema = store.schema
        self._channel = store._channel
        self._sql = store._sql

    def __repr__(self) -> str:
        return f"BoundPostgresStore(schema={self._schema!r})"

    async def __aenter__(self) -> BoundPostgresStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect the parent store (the connection itself belongs to the application)."""
        await self._store.connect()

    async def close(self) -> None:
        """Nothing to close: the connection and the parent store stay open."""

    def _events_store(self) -> PostgresStore:
        return self._store

    async def _run(self, method: str, op: Callable[[Any], Awaitable[T]], *, repeatable: bool) -> T:
        try:
            return await op(self._conn)
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(
                f"PostgreSQL connection lost during {method}: "
                f"{redact_text(str(exc), self._store.dsn)}"
            ) from exc


async def migrate(conn: Any, schema: str) -> int:
    """Create or migrate ``schema`` to the latest version; safe across processes.

    ``conn`` is an asyncpg connection (or a pooled one).

    Runs in one transaction under an advisory lock keyed on the schema name, so of many
    processes connecting at once one migrates and the others then find it done.
    Returns the version the schema was at before.
    """
    quoted = sql_schema.quote_ident(schema)
    channel = channel_for(schema)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('conveyor-schema:' || $1::text, 0))",
            schema,
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_version (version integer NOT NULL)"
        )
        current = await conn.fetchval(f"SELECT max(version) FROM {quoted}.schema_version")
        before = int(current or 0)
        pending = [(version, text) for version, text in sql_schema.MIGRATIONS if version > before]
        for version, text in sql_schema.plan(pending):
            if text:
                await conn.execute(sql_schema.render(text, schema, channel, STALLED_REASON))
            await conn.execute(
                f"INSERT INTO {quoted}.schema_version (version) VALUES ($1)", version
            )
    return before
