"""``SQLiteStore``: Conveyor in one SQLite file, shared by the processes of one host.

Design
======
Each transition of the store protocol is carried out by the reference
:class:`~conveyor_core.engine.Engine` over :class:`~.backend.SQLiteBackend`, *whole*
inside one ``BEGIN IMMEDIATE … COMMIT`` transaction: the write lock is taken up front, so
two processes never interleave inside a transition and no transaction ever has to
upgrade a read lock (which SQLite cannot wait for). Any exception rolls the transaction
back: a failed transition writes nothing, and publishes no event. Reads run in a plain
(deferred) transaction, so they see one consistent snapshot and, in WAL mode, never wait
for writers. A take by an idle worker, or a stalled-job check that finds nothing,
changes nothing: it is answered by a read, without taking the write lock.

Each store object has one ``sqlite3`` connection, used by one call at a time, and a
thread of its own that runs the calls. A transition of more than a few jobs (``_SMALL``),
a transition over a whole queue (drain, clean, retry or promote all, obliterate), and
every read whose size depends on the data (listings, counts, events), runs on that
thread while the event loop awaits it as one future: it may touch thousands of rows,
which must not hold up the loop's other tasks. A transition of a few jobs, point reads
(one job, a queue's paused flag, whether a queue has work) and the read that answers an
idle worker's take run inline on the event loop's thread when the connection is idle,
with a busy timeout of zero: they take less time than a round trip to the thread and
back. If the connection is in use, or another process holds the write lock, they go to
the thread too. The thread waits up to ``busy_timeout`` for a lock held by another
process, so the loop never waits for another process. The standard library's
``sqlite3`` is used directly rather than ``aiosqlite`` because ``aiosqlite`` costs one
thread hop per statement, while here a transition of any size costs at most one.

Within a transition, new jobs, their dependency records and events are buffered and
written with ``executemany`` (a 10,000-child flow is a handful of statements); every
other change is written at once. One secondary index, ``jobs (queue, state,
order_key)``, serves the take order, due delayed jobs, listings, counts, retention,
clean and stalled recovery: each page a commit touches is written to the WAL, so few
indexes keep commits cheap. ``order_key`` is ``priority << 41`` plus a fifo/lifo offset
for waiting jobs, ``run_at`` in microseconds for delayed jobs, and the order of entry
into the state otherwise. A parent's count of pending children is a column kept exact
in the same transactions, so resolving a child is O(1) however many siblings it has.

Settings
========
``SQLiteStore(path, *, poll_interval=1.0, change_interval=0.005, busy_timeout=10.0,
events_retention=10_000, events_min_age=10.0)``; ``open_store("sqlite:///relative.db")``
and ``open_store("sqlite:////absolute.db")`` pass their keyword options through.

* ``path``: the database file (created if missing), or ``":memory:"`` for a private
  in-memory database (one connection, so one store object in one process).
* ``change_interval``: where the WAL file cannot be watched (no ``inotify-simple``, or
  not Linux), seconds between two checks, while a worker waits or an event listener
  listens, of whether *another* process committed anything (``PRAGMA data_version``: a
  few microseconds, no query). ``0`` turns watching for other processes off altogether,
  leaving ``poll_interval``.
* ``poll_interval``: seconds between two full looks for changes made by other processes
  (new waiting jobs, earlier delayed jobs, events), whatever was heard meanwhile: a
  backstop, e.g. for rows written by other programs. Changes made in the same process
  (through any store object on the same file and event loop) wake idle workers and event
  listeners at once.
* ``busy_timeout``: seconds a transition waits for the write lock held by another
  process before failing with ``StoreUnavailableError`` (nothing is written).
* ``events_retention`` / ``events_min_age``: the events table keeps at least the newest
  ``events_retention`` events, and every event younger than ``events_min_age`` seconds;
  older ones are pruned every 1,000 events a process writes.

The connection uses ``journal_mode=WAL`` (readers never wait for the writer) and
``synchronous=NORMAL``: a committed transition survives a crash of the process; a power
loss may lose the last transitions but never corrupts the file.

Multi-process behaviour and limits
==================================
* Any number of processes on one host may share the file (worker processes, producers,
  the CLI): every transition holds the write lock for its whole duration, so each job is
  taken by one worker only and a parent's counter is never wrong, whatever crashes. A
  worker process killed while it holds jobs loses nothing: their locks expire and any
  worker's stalled check puts them back to waiting. Writes are serialised, so the
  throughput of all processes together is that of one writer; beyond one machine, use
  PostgreSQL or Redis. Network file systems are not supported (WAL needs memory shared
  between the processes of one host).
* Wake-ups across processes: a commit that makes work or events sets the modification
  time of the ``-wal`` file (see :mod:`.notify`). A store with a waiting worker or a
  listener watches that file with inotify and, when it changes, asks SQLite whether
  another connection committed (``PRAGMA data_version`` reads a counter in the shared
  WAL index, without a query; the store's own commits do not count). Only then does an
  idle worker check, with one indexed read, whether its queue has a waiting job or an
  earlier delayed one, and an event listener read the new rows of the events table (an
  id range scan, so a listener of a quiet queue costs little however busy the others
  are). So a job added by another process is taken within a few milliseconds, and an
  idle worker wakes only for its ``poll_interval`` look. Without inotify, the
  ``data_version`` check runs every ``change_interval`` instead. Within a process,
  wake-ups are immediate.
* Events are rows of the ``events`` table, written in the transition's own transaction
  and read by every subscriber, in any process, in commit order. A subscriber sees the
  events committed after it subscribed; one that falls behind by more than the
  retention loses the oldest events it had not read.
* The schema version is ``PRAGMA user_version``; forward migrations run inside
  ``BEGIN IMMEDIATE`` when a store connects, so processes that start together migrate
  once. A file written by a newer Conveyor is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from queue import SimpleQueue
from typing import Any, TypeVar

from conveyor_core.engine import Engine
from conveyor_core.errors import StoreClosedError, StoreUnavailableError
from conveyor_core.models import JobState
from conveyor_core.store import (
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

from .backend import SQLiteBackend
from .notify import WalNotifier, touch_wal, wal_notifier
from .schema import migrate

T = TypeVar("T")

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_EVENT_BATCH = 1000
_SMALL = 4
"""Transitions of at most this many jobs run inline when the connection is idle: they
take less time than a round trip to the store's thread and back (a fraction of a
millisecond), while a batch of ten takes about as long as a tick of a busy event loop."""
WAL_CHECKPOINT_PAGES = 10_000
"""Pages the write-ahead log may hold before a commit copies them into the database
(SQLite's default is 1,000). A checkpoint copies each page once however often the log
holds it and syncs the file twice: a worker's transitions write the same few pages over
and over, so a longer log makes far fewer, cheaper checkpoints (the log file then grows to
about 40 MB)."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    message = str(exc)
    return "locked" in message or "busy" in message


_OPEN: dict[str, weakref.WeakSet[SQLiteStore]] = {}
"""The connected store objects of this process, by the real path of their file."""


def _settle(
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
    then: Callable[[Any], None] | None,
) -> None:
    try:
        if error is None and then is not None:
            then(result)
    finally:
        if not future.cancelled():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


class _DatabaseThread:
    """The store's own thread: runs calls one at a time, in order, and hands each result
    back to the event loop that asked for it."""

    def __init__(self, name: str, lock: threading.Lock) -> None:
        self._lock = lock
        self._calls: SimpleQueue[
            tuple[
                Callable[[], Any],
                asyncio.AbstractEventLoop,
                asyncio.Future[Any],
                Callable[[Any], None] | None,
            ]
            | None
        ] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            call, loop, future, then = item
            result: Any = None
            error: BaseException | None = None
            try:
                with self._lock:
                    result = call()
            except BaseException as exc:
                error = exc
            # A closed loop raises RuntimeError: nobody waits for this result any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error, then)
            del item, call, future, result, error, then

    def submit(
        self, call: Callable[[], T], then: Callable[[T], None] | None = None
    ) -> asyncio.Future[T]:
        """Run ``call`` on the thread; its result settles the returned future.

        ``then(result)`` runs on the event loop first when ``call`` succeeded, even if the
        future was cancelled meanwhile.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((call, loop, future, then))
        return future

    def stop(self) -> None:
        """Let the thread end once the calls made so far have run."""
        self._calls.put(None)


class _State:
    """What the store's thread owns: the connection, the backend and the engine."""

    __slots__ = ("backend", "conn", "engine", "migrated")

    def __init__(self, conn: sqlite3.Connection, backend: SQLiteBackend, migrated: int) -> None:
        self.conn = conn
        self.backend = backend
        self.engine = Engine(backend)
        self.migrated = migrated


class _Subscription:
    """Events of one queue with ids above ``last_id``, read from the events table.

    Looks every ``poll_interval``; a commit made in the same process (through this or
    another store object on the file) nudges it, and so does one the store hears of from
    another process, so events arrive at once.
    """

    def __init__(self, store: SQLiteStore, queue: str, last_id: int) -> None:
        self._store = store
        self.queue = queue
        self._last_id = last_id
        self._buffer: deque[EventRecord] = deque()
        self._nudged = asyncio.Event()
        self._closed = False

    def nudge(self) -> None:
        self._nudged.set()

    def __aiter__(self) -> AsyncIterator[EventRecord]:
        return self

    async def __anext__(self) -> EventRecord:
        store = self._store
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._nudged.clear()
            try:
                events, self._last_id = await store._read(
                    lambda state: state.backend.events_after(
                        self.queue, self._last_id, _EVENT_BATCH
                    )
                )
            except StoreClosedError:
                self._closed = True
                raise StopAsyncIteration from None
            if events:
                self._buffer.extend(events)
                continue
            if self._closed:
                raise StopAsyncIteration
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), store.poll_interval)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._store._unsubscribe(self)
        self._buffer.clear()
        self._nudged.set()


class SQLiteStore:
    """A store in one SQLite file. ``async with SQLiteStore("app.db") as store: ...``."""

    capabilities = StoreCapabilities(shared=True, cross_process_events=True)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 1.0,
        change_interval: float = 0.005,
        busy_timeout: float = 10.0,
        events_retention: int = 10_000,
        events_min_age: float = 10.0,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        if change_interval < 0:
            raise ValueError(f"change_interval must not be negative, got {change_interval!r}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must not be negative, got {busy_timeout!r}")
        if events_retention < 0:
            raise ValueError(f"events_retention must not be negative, got {events_retention!r}")
        self.path = os.fspath(path)
        self.poll_interval = float(poll_interval)
        self.change_interval = float(change_interval)
        self.busy_timeout = float(busy_timeout)
        self.events_retention = int(events_retention)
        self.events_min_age = float(events_min_age)
        self._thread: _DatabaseThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._key = "" if self.path in ("", ":memory:") else os.path.realpath(self.path)
        self._state: _State | None = None
        self._connect_lock = asyncio.Lock()
        self._wakers: dict[str, asyncio.Event] = {}
        self._subscriptions: dict[str, set[_Subscription]] = {}
        # Workers inside wait_for_work, and the task checking for other processes' commits.
        self._waiting = 0
        self._watch_on = False
        self._watcher: asyncio.Task[None] | None = None
        self._notifier: WalNotifier | None = None
        self._notifier_tried = False
        self._version: int | None = None
        self._retry: asyncio.TimerHandle | None = None
        # Held while a call uses the connection, on the store's thread or inline.
        self._conn_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    async def __aenter__(self) -> SQLiteStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- lifecycle

    @property
    def migrations_applied(self) -> int:
        """How many schema migration steps the last ``connect`` ran (0: none needed)."""
        return 0 if self._state is None else self._state.migrated

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._thread is not None:
                return
            thread = _DatabaseThread(f"conveyor-sqlite {self.path}", self._conn_lock)
            try:
                await asyncio.shield(thread.submit(self._open))
            except BaseException:
                thread.submit(self._close_connection)
                thread.stop()
                raise
            self._thread = thread
            self._loop = asyncio.get_running_loop()
            if self._key:
                _OPEN.setdefault(self._key, weakref.WeakSet()).add(self)

    def _open(self) -> None:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot open SQLite database {self.path!r}: {exc}"
            ) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000):d}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES:d}")
            migrated = migrate(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise self._unavailable(exc, "opening") from exc
        except BaseException:
            conn.close()
            raise
        backend = SQLiteBackend(
            conn, events_retention=self.events_retention, events_min_age=self.events_min_age
        )
        self._state = _State(conn, backend, migrated)

    def _close_connection(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            state.conn.close()

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        peers = _OPEN.get(self._key)
        if peers is not None:
            peers.discard(self)
            if not peers:
                del _OPEN[self._key]
        if self._watch_on:
            self._stop_watching()
        notifier, self._notifier = self._notifier, None
        self._notifier_tried = False
        if notifier is not None:
            notifier.close()
        for subs in list(self._subscriptions.values()):
            for sub in list(subs):
                await sub.aclose()
        for waker in self._wakers.values():
            waker.set()
        self._wakers.clear()
        if thread is None:
            return
        try:
            await asyncio.shield(thread.submit(self._close_connection))
        finally:
            thread.stop()

    # ---------------------------------------------------------------- plumbing

    def _unavailable(self, exc: sqlite3.OperationalError, doing: str) -> Exception:
        if _is_busy(exc):
            return StoreUnavailableError(
                f"SQLite database {self.path!r} stayed locked by another connection for more "
                f"than busy_timeout={self.busy_timeout:g}s while {doing}; nothing was written"
            )
        return StoreUnavailableError(f"SQLite error on {self.path!r} while {doing}: {exc}")

    def _thread_or_raise(self) -> _DatabaseThread:
        thread = self._thread
        if thread is None:
            raise StoreClosedError(f"{self!r} is not connected: use 'async with store:'")
        return thread

    def _state_or_raise(self) -> _State:
        state = self._state
        if state is None:
            raise StoreClosedError(f"{self!r} is closed")
        return state

    def _transact(
        self, call: Callable[[_State], T], shortcut: Callable[[_State], T | None] | None = None
    ) -> tuple[T, set[str], set[str]]:
        """Run ``call`` in one write transaction, on the store's thread.

        ``shortcut``, if given, first runs outside any transaction (each of its queries
        sees the latest commit): when it returns a result (not ``None``), the transition
        would change nothing and that result is returned without taking the write lock.
        """
        state = self._state_or_raise()
        if shortcut is not None:
            try:
                early = shortcut(state)
            except sqlite3.OperationalError as exc:
                raise self._unavailable(exc, "reading") from exc
            if early is not None:
                return early, set(), set()
        conn, backend = state.conn, state.backend
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc, "waiting for the write lock") from exc
        try:
            result = call(state)
            backend.finish()
            conn.execute("COMMIT")
        except BaseException as exc:
            backend.discard()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise self._unavailable(exc, "writing") from exc
            raise
        woken, emitted = backend.take_signals()
        if (woken or emitted) and self._key:
            touch_wal(self._key)  # other processes' waiting workers and listeners look
        return result, woken, emitted

    def _query(self, call: Callable[[_State], T]) -> T:
        """Run ``call`` in one read transaction, on the store's thread."""
        state = self._state_or_raise()
        conn = state.conn
        try:
            conn.execute("BEGIN")
            try:
                return call(state)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc, "reading") from exc

    def _check(self, shortcut: Callable[[_State], T | None]) -> T | None:
        """Run a write's ``shortcut`` outside any transaction (see :meth:`_transact`)."""
        state = self._state_or_raise()
        try:
            return shortcut(state)
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc, "reading") from exc

    def _inline(self, run: Callable[[], T]) -> tuple[bool, T | None]:
        """Run a point read on the event loop's own thread when that cannot block it.

        A round trip to the store's thread costs more than a point read itself, so when
        the connection is idle the read runs inline, with a busy timeout of zero: if the
        database is locked, ``(False, None)`` comes back at once and the caller goes
        through the thread, which may wait up to ``busy_timeout``.
        """
        state = self._state
        if state is None or not self._conn_lock.acquire(blocking=False):
            return False, None
        conn = state.conn
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                return True, run()
            except StoreUnavailableError as exc:
                if isinstance(exc.__cause__, sqlite3.OperationalError) and _is_busy(exc.__cause__):
                    return False, None
                raise
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000):d}")
        finally:
            self._conn_lock.release()

    async def _write(
        self,
        call: Callable[[_State], T],
        shortcut: Callable[[_State], T | None] | None = None,
        *,
        small: bool = False,
    ) -> T:
        """Run ``call`` in a write transaction (see :meth:`_transact`): inline when it is
        ``small`` and the connection is idle, else on the store's thread."""
        thread = self._thread_or_raise()
        if small:
            done, outcome = self._inline(functools.partial(self._transact, call, shortcut))
            if done:
                assert outcome is not None
                self._signal(outcome)
                await asyncio.sleep(0)
                result: T = outcome[0]
                return result
        if shortcut is not None:
            # The shortcut is a small read: inline, unless the connection is busy.
            done, early = self._inline(functools.partial(self._check, shortcut))
            if done:
                if early is not None:
                    await asyncio.sleep(0)
                    return early
                shortcut = None
        # Wakes and nudges go out once the transaction committed, even if the caller
        # was cancelled while it ran.
        outcome_result, _, _ = await thread.submit(
            functools.partial(self._transact, call, shortcut), self._signal
        )
        return outcome_result

    def _signal(self, outcome: tuple[Any, set[str], set[str]]) -> None:
        _, woken, emitted = outcome
        if not (woken or emitted):
            return
        self._notify(woken, emitted)
        # Other store objects on the same file in this process and event loop hear of
        # the commit at once too, instead of at their next poll.
        loop = asyncio.get_running_loop()
        for other in list(_OPEN.get(self._key, ())):
            if other is not self and other._loop is loop:
                other._notify(woken, emitted)

    def _notify(self, woken: set[str], emitted: set[str]) -> None:
        for queue in woken:
            waker = self._wakers.pop(queue, None)
            if waker is not None:
                waker.set()
        for queue in emitted:
            for sub in self._subscriptions.get(queue, ()):
                sub.nudge()

    async def _read(self, call: Callable[[_State], T], *, point: bool = False) -> T:
        """Run ``call`` in a read transaction: on the store's thread, or inline when it
        is a ``point`` read (bounded and small) and the connection is idle."""
        thread = self._thread_or_raise()
        if point:
            done, outcome = self._inline(functools.partial(self._query, call))
            if done:
                await asyncio.sleep(0)
                return outcome  # type: ignore[return-value]
        return await thread.submit(functools.partial(self._query, call))

    # ---------------------------------------------------------------- other processes

    def _data_version(self) -> int | None:
        """SQLite's count of commits by other connections, or ``None`` if the connection
        is in use (or closed) right now. Microseconds: it reads the shared WAL index."""
        state = self._state
        if state is None or not self._conn_lock.acquire(blocking=False):
            return None
        try:
            return int(state.conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            self._conn_lock.release()

    def _watch_other_processes(self) -> None:
        """Start watching for other processes' commits, if nobody does yet.

        Called before a worker reads whether it has work, and when a listener
        subscribes. The WAL file's watch is set and the first version read at once, so
        a commit made after that is seen as a change.

        With a WAL file notifier, each touch of the WAL file (see :mod:`.notify`) makes
        the event loop call :meth:`_on_wal_touched`: no timer runs. Without one, a task
        compares ``PRAGMA data_version`` every ``change_interval``.
        """
        if self._watch_on or not self._key or self.change_interval <= 0:
            return
        if self._notifier is None and not self._notifier_tried:
            self._notifier_tried = True
            self._notifier = wal_notifier(self._key)
        loop = asyncio.get_running_loop()
        self._watch_on = True
        if self._notifier is not None:
            self._notifier.drain()
            self._version = self._data_version()
            loop.add_reader(self._notifier.fileno(), self._on_wal_touched)
        else:
            self._watcher = loop.create_task(
                self._poll_version(self._data_version()),
                name=f"conveyor-sqlite-watch {self.path}",
            )

    def _watching(self) -> bool:
        return self._thread is not None and bool(self._waiting or self._subscriptions)

    def _stop_watching(self) -> None:
        self._watch_on = False
        if self._notifier is not None and self._loop is not None:
            self._loop.remove_reader(self._notifier.fileno())
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()

    def _on_wal_touched(self) -> None:
        """A process touched the WAL file (this one too, after its own commits): if
        ``PRAGMA data_version`` moved, another connection committed."""
        self._retry = None
        if self._notifier is not None:
            self._notifier.drain()
        if not self._watching():
            self._stop_watching()  # nobody waits: the next waiter starts afresh
            return
        current = self._data_version()
        if current is None:
            # The connection is in use: look again shortly (a touch is not repeated).
            if self._loop is not None and self._retry is None:
                self._retry = self._loop.call_later(self.change_interval, self._on_wal_touched)
            return
        if current != self._version:
            self._version = current
            self._changed_elsewhere()  # also if there was nothing to compare to

    async def _poll_version(self, version: int | None) -> None:
        """Without a notifier: compare ``PRAGMA data_version`` every ``change_interval``
        while a worker waits or a listener listens."""
        try:
            while self._watching():
                await asyncio.sleep(self.change_interval)
                current = self._data_version()
                if current is None:
                    continue  # the connection is in use: the counter keeps the change
                if current != version:
                    self._changed_elsewhere()  # also if there was nothing to compare to
                version = current
        finally:
            if self._watcher is asyncio.current_task():
                self._watcher = None
                self._watch_on = False

    def _changed_elsewhere(self) -> None:
        # Wakers are set but left in place: a waiting worker tells this from a commit in
        # this process (which removes its waker) and looks again instead of returning.
        for waker in self._wakers.values():
            waker.set()
        for subs in self._subscriptions.values():
            for sub in subs:
                sub.nudge()

    def _unsubscribe(self, sub: _Subscription) -> None:
        subs = self._subscriptions.get(sub.queue)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscriptions[sub.queue]

    # ---------------------------------------------------------------- protocol: writing

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        def add(state: _State) -> list[bool]:
            state.backend.prefetch_absent(
                [(job.queue, job.id) for group in groups for job in group]
            )
            return state.engine.add_jobs(groups, now)

        return await self._write(add, small=sum(map(len, groups)) <= _SMALL)

    async def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        def add(state: _State) -> list[DeduplicatedAdd]:
            state.backend.prefetch_absent([(job.queue, job.id) for job in jobs])
            return state.engine.add_dag(jobs, edges, now, deduplication)

        return await self._write(add, small=len(jobs) <= _SMALL)

    async def add_children(
        self,
        queue: str,
        job_id: str,
        token: str,
        groups: Sequence[Sequence[NewJob]],
        now: float,
    ) -> list[bool]:
        def add(state: _State) -> list[bool]:
            state.backend.prefetch_absent(
                [(job.queue, job.id) for group in groups for job in group]
            )
            return state.engine.add_children(queue, job_id, token, groups, now)

        return await self._write(add, small=sum(map(len, groups)) <= _SMALL)

    async def park_job(self, queue: str, job_id: str, token: str, now: float) -> bool:
        return await self._write(lambda s: s.engine.park_job(queue, job_id, token, now), small=True)

    async def add_deduplicated(
        self, new: NewJob, dedup: DeduplicationKey, now: float
    ) -> DeduplicatedAdd:
        def add(state: _State) -> DeduplicatedAdd:
            state.backend.prefetch_deduplication(new.queue, dedup.id, new.id)
            return state.engine.add_deduplicated(new, dedup, now)

        return await self._write(add, small=True)

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
        def idle(state: _State) -> TakeResult | None:
            # An idle worker's take changes nothing: answer it from a read, without the
            # write lock that other processes may be waiting for.
            next_run_at = state.backend.idle_take(queue, now)
            return None if next_run_at is False else TakeResult([], next_run_at)

        return await self._write(
            lambda s: s.engine.take_jobs(
                queue,
                limit=limit,
                token=token,
                lock_until=lock_until,
                now=now,
                rate_limit=rate_limit,
            ),
            idle,
            small=limit <= _SMALL,
        )

    async def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> list[str]:
        return await self._write(
            lambda s: s.engine.extend_locks(queue, locks, lock_until), small=len(locks) <= _SMALL
        )

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        return await self._write(
            lambda s: s.engine.complete_jobs(queue, completions, now),
            small=len(completions) <= _SMALL,
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
        return await self._write(
            lambda s: s.engine.complete_and_take(
                queue,
                completions,
                now,
                limit=limit,
                token=token,
                lock_until=lock_until,
                rate_limit=rate_limit,
            ),
            small=len(completions) <= _SMALL and limit <= _SMALL,
        )

    async def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        return await self._write(
            lambda s: s.engine.fail_jobs(queue, failures, now), small=len(failures) <= _SMALL
        )

    async def release_jobs(self, queue: str, releases: Sequence[Release], now: float) -> list[bool]:
        return await self._write(
            lambda s: s.engine.release_jobs(queue, releases, now), small=len(releases) <= _SMALL
        )

    async def recover_stalled(
        self, queue: str, now: float, max_stalled_count: int
    ) -> list[StallOutcome]:
        return await self._write(
            lambda s: s.engine.recover_stalled(queue, now, max_stalled_count),
            lambda s: None if s.backend.has_expired_locks(queue, now) else [],
        )

    async def wait_for_work(self, queue: str, timeout: float) -> None:
        self._thread_or_raise()
        self._waiting += 1
        try:
            await self._wait_for_work(queue, timeout)
        finally:
            self._waiting -= 1

    async def _wait_for_work(self, queue: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        first = True
        earliest: int | None = None
        while True:
            waker = self._wakers.get(queue)
            if waker is None or waker.is_set():
                waker = self._wakers[queue] = asyncio.Event()
            if self._thread is None:
                return
            self._watch_other_processes()
            try:
                ready, run_at = await self._read(lambda s: s.backend.work_hint(queue), point=True)
            except StoreClosedError:
                return
            if ready:
                return
            # Another process added a delayed job, or moved one, to run earlier than
            # any seen so far: return so the caller learns the new next run time.
            if first:
                first, earliest = False, run_at
            elif run_at is not None and (earliest is None or run_at < earliest):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(waker.wait(), min(self.poll_interval, remaining))
            except TimeoutError:
                continue
            if self._wakers.get(queue) is waker and self._thread is not None:
                continue  # another process committed something: look again
            return

    # ---------------------------------------------------------------- protocol: job changes

    async def update_progress(self, queue: str, job_id: str, progress: str) -> None:
        now = time.time()
        await self._write(
            lambda s: s.engine.update_progress(queue, job_id, progress, now), small=True
        )

    async def add_log(self, queue: str, job_id: str, line: str) -> int:
        return await self._write(lambda s: s.engine.add_log(queue, job_id, line), small=True)

    async def get_logs(
        self, queue: str, job_id: str, start: int = 0, end: int | None = None
    ) -> list[str]:
        return await self._read(lambda s: s.engine.get_logs(queue, job_id, start, end))

    async def update_data(self, queue: str, job_id: str, data: str) -> None:
        await self._write(lambda s: s.engine.update_data(queue, job_id, data), small=True)

    async def change_priority(self, queue: str, job_id: str, priority: int, lifo: bool) -> None:
        await self._write(
            lambda s: s.engine.change_priority(queue, job_id, priority, lifo), small=True
        )

    async def change_delay(self, queue: str, job_id: str, run_at: float) -> None:
        await self._write(lambda s: s.engine.change_delay(queue, job_id, run_at), small=True)

    async def promote_job(self, queue: str, job_id: str, now: float) -> None:
        await self._write(lambda s: s.engine.promote_job(queue, job_id, now), small=True)

    async def promote_jobs(self, queue: str, now: float) -> int:
        return await self._write(lambda s: s.engine.promote_jobs(queue, now))

    async def retry_job(self, queue: str, job_id: str, now: float) -> None:
        await self._write(lambda s: s.engine.retry_job(queue, job_id, now))

    async def retry_jobs(self, queue: str, state: JobState, now: float) -> int:
        return await self._write(lambda s: s.engine.retry_jobs(queue, state, now))

    async def cancel_job(self, queue: str, job_id: str, reason: str, now: float) -> int:
        return await self._write(lambda s: s.engine.cancel_job(queue, job_id, reason, now))

    async def cancel_requests(self, queue: str, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        return await self._read(
            lambda s: s.engine.cancel_requests(queue, job_ids), point=len(job_ids) <= _SMALL
        )

    async def remove_job(self, queue: str, job_id: str) -> bool:
        now = time.time()
        return await self._write(lambda s: s.engine.remove_job(queue, job_id, now))

    # ---------------------------------------------------------------- protocol: queues

    async def pause(self, queue: str) -> None:
        now = time.time()
        await self._write(lambda s: s.engine.pause(queue, now), small=True)

    async def resume(self, queue: str) -> None:
        now = time.time()
        await self._write(lambda s: s.engine.resume(queue, now), small=True)

    async def is_paused(self, queue: str) -> bool:
        return await self._read(lambda s: s.backend.is_paused(queue), point=True)

    async def drain(self, queue: str, include_delayed: bool, now: float) -> int:
        return await self._write(lambda s: s.engine.drain(queue, include_delayed, now))

    async def clean(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        now = time.time()
        return await self._write(lambda s: s.engine.clean(queue, state, older_than, limit, now))

    async def obliterate(self, queue: str, force: bool) -> None:
        now = time.time()
        await self._write(lambda s: s.engine.obliterate(queue, force, now))

    # ---------------------------------------------------------------- protocol: reading

    async def get_job(self, queue: str, job_id: str) -> JobRecord | None:
        return await self._read(lambda s: s.engine.get_job(queue, job_id), point=True)

    async def get_jobs(
        self, queue: str, states: Sequence[JobState], start: int, end: int | None
    ) -> list[JobRecord]:
        return await self._read(lambda s: s.engine.get_jobs(queue, states, start, end))

    async def get_counts(self, queue: str) -> dict[JobState, int]:
        return await self._read(lambda s: s.backend.counts(queue))

    async def get_dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        return await self._read(lambda s: s.engine.get_dependencies(queue, job_id))

    async def get_dependency_page(
        self, queue: str, job_id: str, *, cursor: str | None, limit: int
    ) -> DependencyPage:
        return await self._read(
            lambda s: s.engine.get_dependency_page(queue, job_id, cursor=cursor, limit=limit)
        )

    async def get_dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        return await self._read(lambda s: s.engine.get_dependency_counts(queue, job_id))

    async def get_parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        return await self._read(lambda s: s.engine.get_parent_links(queue, job_id))

    async def remove_child_dependency(self, queue: str, job_id: str, now: float) -> bool:
        return await self._write(lambda s: s.engine.remove_child_dependency(queue, job_id, now))

    async def remove_unprocessed_children(self, queue: str, job_id: str, now: float) -> int:
        return await self._write(lambda s: s.engine.remove_unprocessed_children(queue, job_id, now))

    async def list_queues(self) -> list[str]:
        return await self._read(lambda s: s.backend.queues())

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
        return await self._read(
            lambda s: s.engine.search_jobs(
                queue, text=text, name=name, states=states, limit=limit, cursor=cursor
            )
        )

    async def get_metrics(
        self, queue: str, kind: MetricKind, start: int, end: int
    ) -> dict[int, int]:
        return await self._read(lambda s: s.engine.get_metrics(queue, kind, start, end))

    # ---------------------------------------------------------------- protocol: schedulers

    async def upsert_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        timing: str,
        template: str,
        next_run_at: float | None,
        now: float,
    ) -> None:
        await self._write(
            lambda s: s.engine.upsert_scheduler(
                queue, scheduler_id, timing, template, next_run_at, now
            )
        )

    async def remove_scheduler(self, queue: str, scheduler_id: str) -> bool:
        return await self._write(lambda s: s.engine.remove_scheduler(queue, scheduler_id))

    async def get_schedulers(self, queue: str) -> list[SchedulerRecord]:
        return await self._read(lambda s: s.engine.get_schedulers(queue))

    async def due_schedulers(self, queue: str, now: float, limit: int) -> DueSchedulers:
        return await self._read(lambda s: s.engine.due_schedulers(queue, now, limit))

    async def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        await self._write(lambda s: s.engine.set_global_concurrency(queue, concurrency))

    async def get_global_concurrency(self, queue: str) -> int | None:
        return await self._read(lambda s: s.engine.get_global_concurrency(queue), point=True)

    async def set_group_limits(
        self, queue: str, concurrency: int | None, rate_limit: tuple[int, float] | None
    ) -> None:
        await self._write(lambda s: s.engine.set_group_limits(queue, concurrency, rate_limit))

    async def get_group_limits(self, queue: str) -> GroupLimits:
        return await self._read(lambda s: s.engine.get_group_limits(queue), point=True)

    async def get_group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        return await self._read(lambda s: s.engine.get_group_counts(queue))

    async def rate_limit_queue(self, queue: str, until: float) -> None:
        await self._write(lambda s: s.engine.rate_limit_queue(queue, until))

    async def fire_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        expected: float,
        next_run_at: float | None,
        jobs: Sequence[NewJob],
        now: float,
    ) -> bool:
        return await self._write(
            lambda s: s.engine.fire_scheduler(queue, scheduler_id, expected, next_run_at, jobs, now)
        )

    # ---------------------------------------------------------------- protocol: events

    async def subscribe(self, queue: str) -> EventSubscription:
        last_id = await self._read(lambda s: s.backend.last_event_id(), point=True)
        sub = _Subscription(self, queue, last_id)
        self._subscriptions.setdefault(queue, set()).add(sub)
        self._watch_other_processes()
        return sub
