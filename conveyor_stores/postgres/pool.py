"""A small connection pool for the store's one-statement calls.

Every protocol call holds a connection for exactly one statement, so the pool needs no
session reset and no transaction bookkeeping: taking and returning a connection are list
operations. (asyncpg's general-purpose pool spends more on acquiring and releasing than
a short statement takes on the server.) Every wait is bounded: opening a connection by
the connect timeout given to asyncpg, waiting for a free one by ``acquire``'s timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


class PoolClosedError(Exception):
    """The pool was closed while a connection was wanted."""


class ConnectionPool:
    """Up to ``max_size`` asyncpg connections, ``min_size`` of them opened up front.

    ``setup`` runs on every new connection before its first use. A connection that a
    caller reports broken (or finds closed) is dropped and replaced on demand.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int,
        max_size: int,
        setup: Callable[[Any], Awaitable[None]] | None = None,
        **connect_options: Any,
    ) -> None:
        if max_size < 1 or min_size < 0 or min_size > max_size:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size=} {max_size=}"
            )
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._setup = setup
        self._options = connect_options
        self._idle: list[Any] = []
        self._in_use: set[Any] = set()
        self._size = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all_back: asyncio.Event | None = None
        self._closed = False

    async def open(self) -> None:
        """Open ``min_size`` connections."""
        conns = await asyncio.gather(
            *(self._new() for _ in range(self._min_size)), return_exceptions=True
        )
        errors = [c for c in conns if isinstance(c, BaseException)]
        for conn in conns:
            if not isinstance(conn, BaseException):
                self._idle.append(conn)
        if errors:
            await self.close(0)
            raise errors[0]

    async def _new(self) -> Any:
        self._size += 1
        try:
            conn = await asyncpg.connect(self._dsn, **self._options)
        except BaseException:
            self._size -= 1
            raise
        if self._setup is not None:
            try:
                await self._setup(conn)
            except BaseException:
                self._size -= 1
                conn.terminate()
                raise
        return conn

    async def acquire(self, *, timeout: float | None = None, fresh: bool = False) -> Any:
        """A connection for one statement; give it back with :meth:`release`.

        ``fresh`` opens a new connection rather than reusing an idle one (an idle one
        is closed if the pool is full). Waiting for a free connection ends with
        ``TimeoutError`` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            conn = await self._acquire(fresh)
        self._in_use.add(conn)
        return conn

    async def _acquire(self, fresh: bool) -> Any:
        while True:
            if self._closed:
                raise PoolClosedError("the connection pool is closed")
            if fresh:
                while self._idle and self._size >= self._max_size:
                    self._size -= 1
                    self._idle.pop(0).terminate()
            while self._idle and not fresh:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._size -= 1
            if self._size < self._max_size:
                return await self._new()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def release(self, conn: Any, *, broken: bool = False) -> None:
        """Give a connection back; ``broken`` drops it (it is terminated)."""
        self._in_use.discard(conn)
        if broken or self._closed or conn.is_closed():
            self._size -= 1
            conn.terminate()
        else:
            self._idle.append(conn)
        if not self._in_use and self._all_back is not None:
            self._all_back.set()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def discard_idle(self) -> None:
        """Drop every idle connection: after one connection was lost, its siblings may
        be gone too (a server restart, a network cut, terminated backends), and asyncpg
        may not have noticed yet. New connections replace them on demand."""
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for conn in idle:
            conn.terminate()

    async def setup_all(self, setup: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``setup`` on every idle connection, and on every later new one."""
        self._setup = setup
        await asyncio.gather(*(setup(conn) for conn in self._idle))

    async def close(self, grace: float) -> None:
        """Close every connection within about ``grace`` seconds.

        Idle connections are closed politely; connections in use get ``grace`` seconds
        to come back, after which they are terminated (a statement in flight then either
        committed or is rolled back by the server). Nothing waits on an unresponsive
        server for longer than ``grace``.
        """
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        results = await asyncio.gather(
            *(asyncio.wait_for(conn.close(), grace) for conn in idle), return_exceptions=True
        )
        for conn, result in zip(idle, results, strict=True):
            if isinstance(result, BaseException):
                conn.terminate()
        if self._in_use:
            self._all_back = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_back.wait(), max(0.0, deadline - loop.time()))
            for conn in list(self._in_use):
                conn.terminate()
