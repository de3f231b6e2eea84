"""``Worker``: takes a queue's jobs and runs a handler on each, many at a time."""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import math
import random
import traceback
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus

from . import codec
from ._host import leave_host
from .clock import Clock, seconds, system_clock
from .errors import (
    JobCancelledError,
    LockLostError,
    RateLimitedError,
    StoreClosedError,
    StoreUnavailableError,
    UnrecoverableError,
    WaitingForChildren,
)
from .ids import new_id
from .job import Job
from .models import MAX_SECONDS, Backoff, JobOptions, JobState, RateLimit, as_rate_limit
from .payloads import data_type_of, validate
from .queue import check_name
from .schedulers import fire_due_schedulers
from .store import Completion, Failure, Release, StoreInterface, TakeResult
from .telemetry import Processing, processing

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

__all__ = [
    "CANCEL_POLL_SECONDS",
    "HAND_BACK_SECONDS",
    "BackoffStrategy",
    "Handler",
    "Worker",
    "WorkerCallback",
    "backoff_delay",
]

logger = logging.getLogger("conveyor.worker")

Handler = Callable[[Job], Any]
"""``async def handle(job) -> result`` or a plain ``def`` (run in a thread)."""

CONCURRENCY_RECHECK = 0.05
"""Seconds a worker held back by its queue's global concurrency waits before it looks
again, unless one of its own jobs finishes first."""

BackoffStrategy = Callable[[int, BaseException, Job], float]
"""``strategy(attempts_made, error, job) -> seconds`` before the next try;
``attempts_made`` counts the attempt that just failed."""

WorkerCallback = Callable[..., Awaitable[None] | None]

WORKER_EVENTS = frozenset(
    {
        "active",
        "completed",
        "failed",
        "progress",
        "stalled",
        "waiting-children",
        "error",
        "drained",
        "closed",
    }
)

_MAX_BACKOFF_EXPONENT = 62
_CLEANUP_SECONDS = 10.0
"""The longest a worker's final hand-back may take when nothing else bounds it."""
HAND_BACK_SECONDS = 1.0
"""After ``close(timeout)`` cancels the handlers still running: how long handing their
jobs back (and sending results not sent yet) may take before the worker gives up."""
CANCEL_POLL_SECONDS = 0.4
"""How often a worker that holds jobs asks the store whether any was cancelled."""
_FINISH_RETRY_PAUSES = (0.05, 0.25, None)
"""Pauses between tries of a batch of completions or failures; ``None``: give up."""
T = TypeVar("T")

_RUNNING: weakref.WeakSet[Worker] = weakref.WeakSet()
"""The workers running in this process, told at once of schedulers set here."""


def schedules_changed(store: StoreInterface, queue_name: str) -> None:
    """Make this process's running workers of ``queue_name`` on ``store`` look at the
    queue's job schedulers now (workers of other processes look every ``drain_delay``)."""
    for worker in list(_RUNNING):
        if worker.store is store and worker.queue_name == queue_name:
            worker._look_at_schedules()


class _NoRetry(Exception):
    """The job cannot be retried for a reason that is the worker's, not the handler's."""


def backoff_delay(backoff: Backoff, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
    delay = backoff.delay
    if backoff.type == "exponential":
        delay *= 2.0 ** min(attempt - 1, _MAX_BACKOFF_EXPONENT)
    if backoff.jitter:
        delay *= 1.0 - random.random() * backoff.jitter
    return min(max(0.0, delay), MAX_SECONDS)


def _is_async(handler: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects
    return call is not None and inspect.iscoroutinefunction(call)


@dataclass(slots=True, eq=False)
class _Running:
    """A job this worker holds the lock of."""

    job: Job
    token: str
    lost: bool = False
    finished: bool = False
    scope: anyio.CancelScope | None = None
    """The handler's own scope while it runs."""
    cancel_reason: str | None = None
    """Set when the job was cancelled (``Job.cancel``): its handler is cancelled."""


@dataclass(slots=True, eq=False)
class _Outcome:
    """A finished attempt waiting to be sent to the store."""

    running: _Running
    item: Completion | Failure | Release
    value: Any
    """The handler's return value, or the exception it raised."""


def _cancelled(running: _Running, error: JobCancelledError, span: Processing) -> _Outcome:
    """The outcome of an attempt whose job was cancelled: failed, never retried."""
    span.failed(error, retried=False)
    return _Outcome(running, Failure(running.job.id, running.token, error.reason, [], None), error)


class Worker:
    """Runs ``handler(job)`` for the jobs of one queue, up to ``concurrency`` at a time.

    Events (see :meth:`on`), with their callback arguments:
    ``active(job)``, ``completed(job, result)``, ``failed(job, error)`` (every failed
    attempt, retried or not), ``progress(job, progress)``, ``stalled(job_id, failed)``,
    ``waiting-children(job)`` (the handler parked the job with ``wait_for_children``),
    ``error(error)``, ``drained()`` (the queue ran out of waiting jobs), ``closed()``.

    Plain ``def`` handlers run in worker threads (at most ``concurrency`` at once); from
    there, call the job's coroutines with ``anyio.from_thread.run(job.update_progress,
    50)``. A sync handler that times out or is cancelled by ``close(timeout)`` cannot be
    stopped: its thread runs on, and its result is discarded.

    A job cancelled while its handler runs (``Job.cancel``, from any process) has its
    handler cancelled: the worker asks the store every :data:`CANCEL_POLL_SECONDS` about
    the jobs it holds, cancels the handler's scope (a sync handler's thread is let go, as
    above) and fails the job with the cancel reason, never retried.

    ``metrics``: a :class:`conveyor_core.metrics.WorkerMetrics` (the ``[prometheus]``
    extra) that counts this worker's jobs and times them.

    The worker does not own the store: closing the worker leaves the store open.
    """

    def __init__(
        self,
        queue_name: str,
        handler: Handler,
        *,
        store: StoreInterface,
        concurrency: int = 10,
        lock_duration: float | timedelta = 30.0,
        stalled_interval: float | timedelta = 30.0,
        max_stalled_count: int = 1,
        limiter: RateLimit | Mapping[str, Any] | None = None,
        backoff_strategies: Mapping[str, BackoffStrategy] | None = None,
        drain_delay: float | timedelta = 5.0,
        stacktrace_limit: int = 10,
        clock: Clock = system_clock,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.queue_name = check_name(queue_name, "queue name")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        if max_stalled_count < 0:
            raise ValueError(f"max_stalled_count must not be negative, got {max_stalled_count}")
        self.handler = handler
        self._data_type = data_type_of(handler)
        self.store = store
        self.concurrency = concurrency
        self.lock_duration = seconds(lock_duration, what="lock_duration")
        self.stalled_interval = seconds(stalled_interval, what="stalled_interval")
        self.drain_delay = seconds(drain_delay, what="drain_delay")
        if self.lock_duration <= 0 or self.stalled_interval <= 0:
            raise ValueError("lock_duration and stalled_interval must be positive")
        self.max_stalled_count = max_stalled_count
        self.limiter: RateLimit | None = as_rate_limit(limiter)
        self.backoff_strategies: dict[str, BackoffStrategy] = dict(backoff_strategies or {})
        self.stacktrace_limit = stacktrace_limit
        self._clock = clock
        self._is_async = _is_async(handler)
        self._rate_limit = (
            None if self.limiter is None else (self.limiter.max, self.limiter.duration)
        )
        self._callbacks: dict[str, list[WorkerCallback]] = {}

        self._running: dict[str, _Running] = {}
        self._outcomes: list[_Outcome] = []
        self._sending = 0
        """How many outcomes the finisher's current store call carries."""
        self._held_by_concurrency = False
        """Whether a take met the queue's global concurrency."""
        self._reserved = 0
        """Slots promised to a take in flight (the fetch loop's or the finisher's)."""
        self._started = False
        self._closing = False
        self._finisher_closing = False
        self._closed_emitted = False
        self._fatal: BaseException | None = None
        self._stopped = anyio.Event()
        self._finisher_wake = anyio.Event()
        self._finisher_done = anyio.Event()
        self._queued: collections.deque[_Running] = collections.deque()
        self._work_ready = anyio.Event()
        self._slot_freed = anyio.Event()
        self._fetch_done = False
        self._idle_scope: anyio.CancelScope | None = None
        self._schedules_at = -math.inf
        """When to look at the queue's job schedulers next (fire due ticks)."""
        self._handler_scope: anyio.CancelScope | None = None
        self._fetch_scope: anyio.CancelScope | None = None
        self._give_up_at = math.inf
        """When (``anyio.current_time()``) store calls made while closing are abandoned."""
        self._bounded: dict[anyio.CancelScope, float] = {}
        self._thread_limiter = anyio.CapacityLimiter(concurrency)
        self._host: TaskGroup | None = None
        self._progress_hook = self._on_progress
        if metrics is not None:
            metrics.attach(self)

    def __repr__(self) -> str:
        return f"<Worker queue={self.queue_name!r} concurrency={self.concurrency}>"

    @property
    def running(self) -> bool:
        """Whether the worker is taking or finishing jobs."""
        return self._started and not self._stopped.is_set()

    @property
    def active_count(self) -> int:
        """How many handlers are running now."""
        return len(self._running)

    # ------------------------------------------------------------------ events

    def on(self, event: str, callback: WorkerCallback) -> WorkerCallback:
        """Call ``callback`` on ``event`` (sync or async; see the class docstring).

        Callbacks run in the worker's tasks, so an async one should be quick; an
        exception in a callback is reported as an ``error`` event (or logged), never
        stops the worker.
        """
        if event not in WORKER_EVENTS:
            raise ValueError(f"unknown worker event {event!r}; known: {sorted(WORKER_EVENTS)}")
        self._callbacks.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: WorkerCallback) -> None:
        """Stop calling ``callback`` on ``event``."""
        callbacks = self._callbacks.get(event, [])
        if callback in callbacks:
            callbacks.remove(callback)

    async def _emit(self, event: str, *args: Any) -> None:
        callbacks = self._callbacks.get(event)
        if not callbacks:
            if event == "error":
                error = args[0] if args else None
                logger.error(
                    "worker of queue %r: %s",
                    self.queue_name,
                    error,
                    exc_info=error if isinstance(error, BaseException) else None,
                )
            return
        for callback in tuple(callbacks):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                if event == "error":
                    logger.exception("worker %r error callback failed", self.queue_name)
                else:
                    await self._emit("error", exc)

    async def _emit_error(self, error: BaseException) -> None:
        await self._emit("error", error)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take and run jobs until :meth:`close` is called or the task is cancelled.

        Works with ``task_group.start(worker.run)``: it reports started once its
        background tasks are up.
        """
        if self._started:
            raise RuntimeError("a Worker runs once; create a new one to run again")
        self._started = True
        _RUNNING.add(self)
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self._renew_locks_loop)
                services.start_soon(self._stalled_loop)
                services.start_soon(self._cancel_watch_loop)
                services.start_soon(self._finisher_loop)
                async with anyio.create_task_group() as slots:
                    self._handler_scope = slots.cancel_scope
                    for _ in range(self.concurrency):
                        slots.start_soon(self._slot)
                    task_status.started()
                    with anyio.CancelScope() as self._fetch_scope:
                        await self._fetch_loop()
                    self._fetch_done = True
                    self._work_ready.set()
                # Every handler is done: send what is left, then stop the services.
                self._finisher_closing = True
                self._finisher_wake.set()
                await self._finisher_done.wait()
                services.cancel_scope.cancel()
        finally:
            _RUNNING.discard(self)
            with self._closing_call(within=_CLEANUP_SECONDS) as cleanup:
                await self._cleanup()
            if cleanup.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    await self._emit_error(self._gave_up("handing back unfinished jobs"))
            self._stopped.set()
            if not self._closed_emitted:
                self._closed_emitted = True
                with anyio.CancelScope(shield=True):
                    await self._emit("closed")
        if self._fatal is not None:
            raise self._fatal

    async def _cleanup(self) -> None:
        """Send unsent outcomes and hand unfinished jobs back (after cancellation)."""
        if self._outcomes:
            outcomes, self._outcomes = self._outcomes, []
            await self._send(outcomes)
        leftovers = [r for r in self._running.values() if not r.finished and not r.lost]
        self._running.clear()
        if not leftovers:
            return
        try:
            await self.store.release_jobs(
                self.queue_name,
                [Release(r.job.id, r.token) for r in leftovers],
                self._clock(),
            )
        except Exception as exc:
            await self._emit_error(exc)

    async def close(self, timeout: float | timedelta | None = None) -> None:
        """Stop taking jobs and wait for the active ones to finish.

        With ``timeout``, handlers still running after that many seconds are cancelled
        and their jobs go back to waiting; ``close`` returns within ``timeout`` plus
        :data:`HAND_BACK_SECONDS`, however the store behaves. Every store call the
        worker makes while closing is bounded by that deadline: if the store does not
        answer in time (a frozen server, a locked database), the jobs whose results or
        hand-back could not be written stay active, and stalled-job recovery hands them
        out again once their locks expire, so none is lost; an ``error`` event says so.

        Without ``timeout`` it waits as long as the handlers and the store take.
        Idempotent; a later call with a shorter timeout shortens the wait. Do not await
        it (without a timeout) from inside this worker's own handler: it would wait for
        itself.
        """
        self._closing = True
        self._wake()
        if not self._started:
            if not self._closed_emitted:
                self._closed_emitted = True
                await self._emit("closed")
            return
        if timeout is None:
            await self._stopped.wait()
            return
        limit = seconds(timeout, what="timeout")
        self._give_up_by(anyio.current_time() + limit + HAND_BACK_SECONDS)
        with anyio.move_on_after(limit):
            await self._stopped.wait()
            return
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        if self._handler_scope is not None:
            self._handler_scope.cancel()
        await self._stopped.wait()

    def _give_up_by(self, deadline: float) -> None:
        """Abandon store calls made while closing at ``deadline`` (if that is sooner)."""
        if deadline >= self._give_up_at:
            return
        self._give_up_at = deadline
        for scope, limit in self._bounded.items():
            scope.deadline = min(limit, deadline)

    @contextlib.contextmanager
    def _closing_call(self, within: float = math.inf) -> Iterator[anyio.CancelScope]:
        """A shielded scope for store calls that must finish even while the worker is
        cancelled, yet never outlive the close deadline (nor ``within`` seconds)."""
        limit = anyio.current_time() + within
        scope = anyio.CancelScope(shield=True, deadline=min(limit, self._give_up_at))
        self._bounded[scope] = limit
        try:
            with scope:
                yield scope
        finally:
            del self._bounded[scope]

    def _gave_up(self, doing: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"worker of queue {self.queue_name!r} closing: the store did not answer in time "
            f"while {doing}; those jobs stay active until their locks expire, then "
            "stalled-job recovery hands them out again"
        )

    async def __aenter__(self) -> Self:
        if self._host is not None:
            raise RuntimeError("the worker is already running")
        host = anyio.create_task_group()
        await host.__aenter__()
        try:
            await host.start(self.run)
        except BaseException as exc:
            await host.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._host = host
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        host, self._host = self._host, None
        if exc is None or isinstance(exc, Exception):
            await self.close()
        if host is None:
            return None
        return await leave_host(host, exc, repr(self))

    # ------------------------------------------------------------------ fetching

    def _wake(self) -> None:
        """Interrupt the fetch loop's waits (on closing)."""
        self._slot_freed.set()
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    def _look_at_schedules(self) -> None:
        """Look at the queue's job schedulers at the next turn of the fetch loop, ending
        an idle wait for it."""
        self._schedules_at = -math.inf
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def _wait_for_work(self, timeout: float, *, sleep: bool = False) -> None:
        """Wait for the store's wake-up (or, ``sleep``, just for ``timeout``: a full rate
        limit window is not shortened by new jobs); ``close()`` interrupts both."""
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if not self._closing:
                if sleep:
                    await anyio.sleep(timeout)
                else:
                    await self.store.wait_for_work(self.queue_name, timeout)
        self._idle_scope = None

    async def _fetch_loop(self) -> None:
        """Take as many jobs as there are free slots, in one call; wait when idle."""
        announced_drained = False
        errors_in_row = 0
        while not self._closing:
            free = self._free_slots()
            backlog = len(self._outcomes) + self._sending
            if free <= 0:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
                continue
            if backlog and self._finisher_takes():
                # The finisher records these outcomes and takes the slots they free in
                # the same store call (COMPLETE AND TAKE); it ends this wait. A take of
                # its own now would be a second call for the same room, and on a queue
                # with a global concurrency, which counts finished jobs as active until
                # they are recorded, would ask for room not there yet.
                await self._wait_for_work(CONCURRENCY_RECHECK, sleep=True)
                continue
            now = self._clock()
            if now >= self._schedules_at:
                await self._fire_schedules(now)
            token = new_id()
            self._reserved += free
            try:
                result = await self.store.take_jobs(
                    self.queue_name,
                    limit=free,
                    token=token,
                    lock_until=now + self.lock_duration,
                    now=now,
                    rate_limit=self._rate_limit,
                )
            except StoreClosedError as exc:
                self._fatal = exc
                self._closing = True
                break
            except Exception as exc:
                await self._emit_error(exc)
                errors_in_row += 1
                await anyio.sleep(min(0.05 * 2**errors_in_row, self.drain_delay, 5.0))
                continue
            finally:
                self._reserved -= free
            errors_in_row = 0
            if self._accept(result, token):
                announced_drained = False
                continue
            held = result.rate_limited_until is not None or result.concurrency_limited
            if not announced_drained and not held:
                announced_drained = True
                await self._emit("drained")
            timeout = self.drain_delay
            for at in (result.next_run_at, result.rate_limited_until):
                if at is not None:
                    timeout = min(timeout, max(0.0, at - now))
            if result.concurrency_limited:
                # Room comes back when an active job finishes: this worker's own end the
                # wait as soon as they are recorded; other workers' are seen by looking
                # again shortly.
                timeout = min(timeout, CONCURRENCY_RECHECK)
            # An idle worker wakes up in time for the next tick of a job scheduler.
            timeout = min(timeout, max(0.0, self._schedules_at - now))
            await self._wait_for_work(timeout, sleep=held)

    def _free_slots(self) -> int:
        """Slots a take may fill now. Back-pressure: handlers that finished faster than
        the store takes their outcomes hold their slots beyond a backlog of twice the
        concurrency, so a slow store is never handed thousands of outcomes at once (and
        a crash never re-runs thousands of already finished jobs)."""
        backlog = len(self._outcomes) + self._sending
        return (
            self.concurrency
            - len(self._running)
            - self._reserved
            - max(0, backlog - 2 * self.concurrency)
        )

    def _finisher_takes(self) -> bool:
        """Whether the finisher takes the slots it frees (COMPLETE AND TAKE), and the
        fetch loop waits for it while there are outcomes to record: on a store that runs
        its calls one at a time, where one call does the work of two; and on a queue
        held at its global concurrency, where the room a take needs comes from the
        outcomes recorded. A store with concurrent calls otherwise takes on one
        connection while it records on another."""
        return self._held_by_concurrency or not self.store.capabilities.concurrent_calls

    def _accept(self, result: TakeResult, token: str) -> bool:
        """Hand the jobs of a take to the slots; whether there were any."""
        if result.concurrency_limited:
            self._held_by_concurrency = True
        if not result.jobs:
            return False
        for record in result.jobs:
            job = Job(self.store, record, clock=self._clock)
            job.token = token
            running = _Running(job, token)
            self._running[record.id] = running
            self._queued.append(running)
        self._work_ready.set()
        return True

    async def _fire_schedules(self, now: float) -> None:
        """Fire the due ticks of the queue's job schedulers; look again at the next tick,
        and at least every ``drain_delay`` (schedulers set by other processes)."""
        look_again = now + max(self.drain_delay, 0.05)
        try:
            next_tick = await fire_due_schedulers(self.store, self.queue_name, now)
        except StoreClosedError:
            return
        except Exception as exc:
            self._schedules_at = look_again
            await self._emit_error(exc)
            return
        if next_tick is not None:
            look_again = min(look_again, next_tick)
        self._schedules_at = look_again

    # ------------------------------------------------------------------ handling

    async def _slot(self) -> None:
        """One of ``concurrency`` long-lived tasks running handlers one after another."""
        queued = self._queued
        while True:
            if queued:
                await self._process(queued.popleft())
                continue
            if self._fetch_done:
                return
            if self._work_ready.is_set():
                self._work_ready = anyio.Event()
            await self._work_ready.wait()

    async def _process(self, running: _Running) -> None:
        job = running.job
        job._progress_hook = self._progress_hook
        if "active" in self._callbacks:
            await self._emit("active", job)
        with processing(self.queue_name, job) as span:
            try:
                with anyio.CancelScope() as scope:
                    running.scope = scope
                    if running.cancel_reason is not None:
                        scope.cancel()
                    if self._data_type is not None:
                        job._data = validate(self._data_type, job.data, what=self._what_data(job))
                    if self._is_async and job.opts.timeout is None:
                        value = await self.handler(job)
                    else:
                        value = await self._call_handler(job)
                running.scope = None
                if running.cancel_reason is not None:
                    raise JobCancelledError(running.cancel_reason)
                text = "null" if value is None else codec.dumps(value, what=self._what(job))
            except anyio.get_cancelled_exc_class():
                # Forced close or cancellation: the job is handed back in cleanup.
                raise
            except JobCancelledError as exc:
                outcome = _cancelled(running, exc, span)
            except RateLimitedError as exc:
                outcome = _Outcome(running, Release(job.id, running.token), exc)
            except WaitingForChildren as exc:
                if job.token is not None:  # raised by hand, not by a park: a failed attempt
                    outcome = await self._attempt_failed(running, exc, span)
                else:
                    span.parked()
                    await self._parked(running)
                    return
            except Exception as exc:
                if running.cancel_reason is not None:
                    # The handler turned its cancellation into an error: still cancelled.
                    cancelled = JobCancelledError(running.cancel_reason)
                    cancelled.__cause__ = exc
                    outcome = _cancelled(running, cancelled, span)
                else:
                    outcome = await self._attempt_failed(running, exc, span)
            else:
                span.completed()
                outcome = _Outcome(running, Completion(job.id, running.token, text), value)
        running.finished = True
        if self._running.get(job.id) is running:
            del self._running[job.id]
        self._outcomes.append(outcome)
        self._finisher_wake.set()
        self._slot_freed.set()

    async def _attempt_failed(
        self, running: _Running, error: Exception, span: Processing
    ) -> _Outcome:
        """The outcome of an attempt whose handler raised ``error``."""
        failure = await self._failure(running, error)
        span.failed(error, retried=failure.retry_at is not None)
        return _Outcome(running, failure, error)

    async def _parked(self, running: _Running) -> None:
        """The handler parked its job (``wait_for_children``): nothing to record, the
        store already holds it in ``waiting-children`` without a lock."""
        running.finished = True
        if self._running.get(running.job.id) is running:
            del self._running[running.job.id]
        self._slot_freed.set()
        await self._emit("waiting-children", running.job)

    def _what_data(self, job: Job) -> str:
        return f"data of job {job.name!r} ({job.id}) in queue {self.queue_name!r}"

    def _what(self, job: Job) -> str:
        return f"return value of job {job.name!r} ({job.id}) in queue {self.queue_name!r}"

    async def _call_handler(self, job: Job) -> Any:
        timeout = job.opts.timeout
        if timeout is None:
            return await self._invoke(job)
        with anyio.move_on_after(timeout):
            return await self._invoke(job)
        raise TimeoutError(f"job timed out after {timeout}s")

    async def _invoke(self, job: Job) -> Any:
        if self._is_async:
            return await self.handler(job)
        value = await anyio.to_thread.run_sync(
            self.handler, job, limiter=self._thread_limiter, abandon_on_cancel=True
        )
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _on_progress(self, job: Job, progress: Any) -> None:
        await self._emit("progress", job, progress)

    async def _failure(self, running: _Running, exc: BaseException) -> Failure:
        """The store item for a failed attempt: retry (with backoff) or final."""
        job = running.job
        reason = str(exc) or type(exc).__name__
        stack = traceback.format_exception(exc, limit=-self.stacktrace_limit)
        attempt = job.attempts_made + 1
        retry_at: float | None = None
        try:
            opts = job.opts
        except Exception as opts_error:  # unreadable stored options: fail for good
            opts = JobOptions()
            reason = f"{reason} (not retried: invalid options: {opts_error})"
        if not isinstance(exc, UnrecoverableError) and attempt < opts.attempts:
            try:
                delay = await self._backoff(opts.backoff, attempt, exc, job)
            except _NoRetry as no_retry:
                reason = f"{reason} (not retried: {no_retry})"
            else:
                retry_at = self._clock() + delay
        return Failure(job.id, running.token, reason, stack, retry_at)

    async def _backoff(
        self, backoff: Backoff | str | None, attempt: int, exc: BaseException, job: Job
    ) -> float:
        if backoff is None:
            return 0.0
        if isinstance(backoff, Backoff):
            return backoff_delay(backoff, attempt)
        strategy = self.backoff_strategies.get(backoff)
        if strategy is None:
            if backoff == "fixed":
                return backoff_delay(Backoff(type="fixed"), attempt)
            if backoff == "exponential":
                return backoff_delay(Backoff(type="exponential"), attempt)
            raise _NoRetry(f"unknown backoff strategy {backoff!r}")
        try:
            delay: Any = strategy(attempt, exc, job)
            if inspect.isawaitable(delay):
                delay = await delay
            value = float(delay)
        except Exception as strategy_error:
            raise _NoRetry(f"backoff strategy {backoff!r} failed: {strategy_error}") from None
        if not math.isfinite(value):
            raise _NoRetry(f"backoff strategy {backoff!r} returned {value!r}")
        return max(0.0, value)

    # ------------------------------------------------------------------ finishing

    async def _finisher_loop(self) -> None:
        """Send finished attempts in batches: all that piled up while the last call ran."""
        try:
            while True:
                if not self._outcomes:
                    if self._finisher_closing:
                        return
                    self._finisher_wake = anyio.Event()
                    if self._outcomes or self._finisher_closing:
                        continue
                    await self._finisher_wake.wait()
                    continue
                outcomes, self._outcomes = self._outcomes, []
                self._sending = len(outcomes)
                try:
                    with self._closing_call() as sending:
                        await self._send(outcomes)
                finally:
                    self._sending = 0
                if sending.cancelled_caught:
                    await self._emit_error(self._gave_up(f"recording {len(outcomes)} results"))
                self._slot_freed.set()
                # A retry (or a parent released with a delay) may now be due sooner
                # than the idle fetch loop's wait: let it take again and learn when.
                if self._idle_scope is not None:
                    self._idle_scope.cancel()
        finally:
            self._finisher_done.set()

    async def _send(self, outcomes: list[_Outcome]) -> None:
        completions: list[Completion] = []
        failures: list[Failure] = []
        completed: list[_Outcome] = []
        failed: list[_Outcome] = []
        releases: list[Release] = []
        held_until: float | None = None
        now = self._clock()
        for outcome in outcomes:
            if isinstance(outcome.item, Completion):
                completions.append(outcome.item)
                completed.append(outcome)
            elif isinstance(outcome.item, Release):
                # A handler's RateLimitedError: the job goes back without an attempt.
                releases.append(outcome.item)
                delay = outcome.value.delay if isinstance(outcome.value, RateLimitedError) else 0
                held_until = max(held_until or now, now + delay)
            else:
                failures.append(outcome.item)
                failed.append(outcome)
        if held_until is not None:
            # MANUAL RATE LIMIT first, so no worker takes the handed-back jobs at once.
            await self._finish_call(self._rate_limit_queue, [held_until], now)
            await self._finish_call(self.store.release_jobs, releases, now)
        if completions:
            applied = await self._complete(completions, now)
            for outcome, ok in zip(completed, applied or (), strict=applied is not None):
                await self._completed(outcome, ok, now)
        if failures:
            applied = await self._finish_call(self.store.fail_jobs, failures, now)
            for outcome, ok in zip(failed, applied or (), strict=applied is not None):
                await self._failed(outcome, ok, now)

    async def _complete(self, completions: list[Completion], now: float) -> list[bool] | None:
        """Record completions; when the finisher takes (see :meth:`_finisher_takes`),
        take jobs for the slots free now in the same store call (COMPLETE AND TAKE):
        one call (one transaction, one round trip) where a completion and a take of
        their own were two."""
        free = self._free_slots()
        if not self._finisher_takes() or self._closing or self._fetch_done or free <= 0:
            return await self._finish_call(self.store.complete_jobs, completions, now)
        token = new_id()
        self._reserved += free
        try:
            applied, result = await self.store.complete_and_take(
                self.queue_name,
                completions,
                now,
                limit=free,
                token=token,
                lock_until=now + self.lock_duration,
                rate_limit=self._rate_limit,
            )
        except StoreClosedError as exc:
            await self._emit_error(exc)
            return None
        except Exception as exc:
            # Whether it applied is unknown: record the completions alone (a repeat of
            # applied ones is refused and reported), and let the fetch loop take.
            await self._emit_error(exc)
            return await self._finish_call(self.store.complete_jobs, completions, now)
        finally:
            self._reserved -= free
        self._accept(result, token)
        return applied

    async def _rate_limit_queue(self, queue: str, until: Sequence[float], now: float) -> list[bool]:
        await self.store.rate_limit_queue(queue, until[0])
        return [True]

    async def _finish_call(
        self,
        call: Callable[[str, Sequence[T], float], Awaitable[list[bool]]],
        items: Sequence[T],
        now: float,
    ) -> list[bool] | None:
        """``call(queue, items, now)``, tried again after a transient store error.

        A store changes all or nothing of a failed call, so trying again is safe; if the
        first try did apply after all, the repeat is refused and reported as a lost
        lock. ``None`` when every try failed: the jobs stay active until their locks
        expire and stalled recovery hands them out again.
        """
        for pause in _FINISH_RETRY_PAUSES:
            try:
                return await call(self.queue_name, items, now)
            except StoreClosedError as exc:
                await self._emit_error(exc)
                return None
            except Exception as exc:
                await self._emit_error(exc)
                if pause is None:
                    return None
                await anyio.sleep(pause)
        return None

    def _lock_lost(self, job: Job, what: str) -> LockLostError:
        return LockLostError(
            f"lock of job {job.id!r} in queue {self.queue_name!r} was lost; {what}"
        )

    async def _completed(self, outcome: _Outcome, ok: bool, now: float) -> None:
        job = outcome.running.job
        if not ok:
            await self._emit_error(self._lock_lost(job, "its result was not recorded"))
            return
        assert isinstance(outcome.item, Completion)
        record = job.record
        record.state = JobState.COMPLETED
        record.return_value = outcome.item.return_value
        record.finished_at = now
        record.attempts_made += 1
        record.lock_token = None
        job.token = None
        await self._emit("completed", job, outcome.value)

    async def _failed(self, outcome: _Outcome, ok: bool, now: float) -> None:
        job = outcome.running.job
        if not ok:
            await self._emit_error(self._lock_lost(job, "its failure was not recorded"))
            return
        failure = outcome.item
        assert isinstance(failure, Failure)
        record = job.record
        record.attempts_made += 1
        record.failed_reason = failure.reason
        record.stacktrace = list(failure.stacktrace)
        record.lock_token = None
        job.token = None
        if failure.retry_at is None:
            record.state = JobState.FAILED
            record.finished_at = now
        elif failure.retry_at > now:
            record.state = JobState.DELAYED
            record.run_at = failure.retry_at
        else:
            record.state = JobState.WAITING
        await self._emit("failed", job, outcome.value)

    # ------------------------------------------------------------------ upkeep

    async def _renew_locks_loop(self) -> None:
        """Extend the locks of every running job in one call, every half lock duration."""
        while True:
            await anyio.sleep(self.lock_duration / 2)
            held = [r for r in self._running.values() if not r.lost and not r.finished]
            if not held:
                continue
            try:
                extended = set(
                    await self.store.extend_locks(
                        self.queue_name,
                        [(r.job.id, r.token) for r in held],
                        self._clock() + self.lock_duration,
                    )
                )
            except Exception as exc:
                await self._emit_error(exc)
                continue
            for running in held:
                if running.job.id in extended or running.finished:
                    continue
                if self._running.get(running.job.id) is running:
                    running.lost = True
                    await self._emit_error(
                        self._lock_lost(running.job, "its handler's result will be refused")
                    )

    async def _cancel_watch_loop(self) -> None:
        """Ask the store, every :data:`CANCEL_POLL_SECONDS` while handlers run, which of
        this worker's jobs were cancelled, and cancel their handlers."""
        while True:
            await anyio.sleep(CANCEL_POLL_SECONDS)
            held = [r for r in self._running.values() if not r.lost and not r.finished]
            if not held:
                continue
            try:
                requests = await self.store.cancel_requests(
                    self.queue_name, [r.job.id for r in held]
                )
            except Exception as exc:
                await self._emit_error(exc)
                continue
            for running in held:
                reason = requests.get(running.job.id)
                if reason is None or running.cancel_reason is not None:
                    continue
                running.cancel_reason = reason
                if running.scope is not None:
                    running.scope.cancel()

    async def _stalled_loop(self) -> None:
        """Recover this queue's stalled jobs at start and every ``stalled_interval``."""
        while True:
            try:
                outcomes = await self.store.recover_stalled(
                    self.queue_name, self._clock(), self.max_stalled_count
                )
            except Exception as exc:
                await self._emit_error(exc)
            else:
                for outcome in outcomes:
                    await self._emit("stalled", outcome.id, outcome.failed)
            await anyio.sleep(self.stalled_interval)
