"""``QueueEvents``: listen to what happens in a queue, from every process using the store."""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

from . import codec
from ._host import leave_host
from .clock import to_datetime
from .models import QueueEvent
from .queue import check_name
from .store import EventRecord, EventSubscription, StoreInterface

__all__ = ["EventCallback", "QueueEvents"]

logger = logging.getLogger("conveyor.events")

EventCallback = Callable[[QueueEvent], Awaitable[None] | None]

ALL_EVENTS = "*"
"""Pass to :meth:`QueueEvents.on` to get every event type."""


_JSON_FIELDS = ("return_value", "progress")
"""Event data fields that stores carry as JSON text and listeners get decoded."""


def to_queue_event(record: EventRecord) -> QueueEvent:
    """The public ``QueueEvent`` for a store's ``EventRecord``: JSON text fields
    (``return_value``, ``progress``) arrive decoded."""
    timestamp = to_datetime(record.timestamp)
    assert timestamp is not None
    data = record.data
    if any(isinstance(data.get(key), str) for key in _JSON_FIELDS):
        data = dict(data)
        for key in _JSON_FIELDS:
            text = data.get(key)
            if isinstance(text, str):
                # A store may have shortened an oversized value: then it stays as it came.
                with contextlib.suppress(ValueError):
                    data[key] = codec.loads(text)
    return QueueEvent(
        type=record.type,
        queue_name=record.queue,
        job_id=record.job_id,
        data=data,
        timestamp=timestamp,
    )


class QueueEvents:
    """A live feed of one queue's events.

    ``async with events:`` starts listening; callbacks registered with :meth:`on` are
    called for each event, and ``async for event in events`` yields them too (an
    iterator that falls far behind loses the oldest of up to ``buffer_size`` events).
    Events published before ``async with`` entered are not seen.
    """

    def __init__(
        self, queue_name: str, *, store: StoreInterface, buffer_size: int = 10_000
    ) -> None:
        self.queue_name = check_name(queue_name, "queue name")
        self.store = store
        self._callbacks: dict[str, list[EventCallback]] = {}
        self._buffer: collections.deque[QueueEvent] = collections.deque(maxlen=buffer_size)
        self._arrived = anyio.Event()
        self._subscription: EventSubscription | None = None
        self._task_group: TaskGroup | None = None
        self._pump_scope: anyio.CancelScope | None = None
        self._ended = False
        self.error: Exception | None = None
        """Why the feed ended, if it ended by an error."""

    def on(self, event_type: str, callback: EventCallback) -> EventCallback:
        """Call ``callback(event)`` for each event of ``event_type`` (``"*"``: all).

        The callback may be sync or async; an exception in it is logged and the feed
        goes on. Returns the callback, so this works as a decorator factory's target.
        """
        self._callbacks.setdefault(event_type, []).append(callback)
        return callback

    def off(self, event_type: str, callback: EventCallback) -> None:
        """Stop calling ``callback`` for ``event_type``."""
        callbacks = self._callbacks.get(event_type, [])
        if callback in callbacks:
            callbacks.remove(callback)

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("QueueEvents is already listening")
        self._subscription = await self.store.subscribe(self.queue_name)
        self._ended = False
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._pump, self._subscription)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group = self._task_group
        await self.close()
        if task_group is None:
            return None
        self._task_group = None
        return await leave_host(task_group, exc, f"QueueEvents({self.queue_name!r})")

    async def close(self) -> None:
        """Stop listening; an ``async for`` over the events ends. Idempotent."""
        subscription, self._subscription = self._subscription, None
        self._end()
        if self._pump_scope is not None:
            self._pump_scope.cancel()
        if subscription is not None:
            with anyio.CancelScope(shield=True):
                await subscription.aclose()

    def _end(self) -> None:
        self._ended = True
        self._arrived.set()

    async def _pump(self, subscription: EventSubscription) -> None:
        with anyio.CancelScope() as self._pump_scope:
            await self._pump_events(subscription)
        self._pump_scope = None

    async def _pump_events(self, subscription: EventSubscription) -> None:
        try:
            async for record in subscription:
                event = to_queue_event(record)
                self._buffer.append(event)
                self._arrived.set()
                for callback in (
                    *self._callbacks.get(event.type, ()),
                    *self._callbacks.get(ALL_EVENTS, ()),
                ):
                    await self._call(callback, event)
        except Exception as exc:
            # The feed broke (e.g. the server went away): end it rather than
            # cancelling the code inside ``async with``; ``error`` says why.
            self.error = exc
            logger.exception("event feed of queue %r ended", self.queue_name)
        finally:
            self._end()

    async def _call(self, callback: EventCallback, event: QueueEvent) -> None:
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("QueueEvents callback %r failed on %s event", callback, event.type)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> QueueEvent:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._ended or self._task_group is None:
                raise StopAsyncIteration
            self._arrived = anyio.Event()
            await self._arrived.wait()

    async def wait_for(
        self, event_type: str, job_id: str | None = None, timeout: float | None = None
    ) -> QueueEvent:
        """The next buffered or arriving event of ``event_type`` (for ``job_id``);
        ``TimeoutError`` after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            async for event in self:
                if event.type == event_type and (job_id is None or event.job_id == job_id):
                    return event
        raise RuntimeError("QueueEvents closed while waiting for an event")
