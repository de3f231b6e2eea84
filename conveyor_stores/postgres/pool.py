"""A small connection pool for the store's one-statement calls.

Every protocol call holds a connection for exactly one statement, so the pool needs no
session reset, no transaction bookkeeping and no timeouts of its own: taking and
returning a connection are list operations. (asyncpg's general-purpose pool spends more
on acquiring and releasing than a short statement takes on the server.)
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
        self._size = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
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
            await self.close()
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

    async def acquire(self) -> Any:
        """A connection for one statement; give it back with :meth:`release`."""
        while True:
            if self._closed:
                raise PoolClosedError("the connection pool is closed")
            while self._idle:
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
        if broken or self._closed or conn.is_closed():
            self._size -= 1
            conn.terminate()
        else:
            self._idle.append(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def setup_all(self, setup: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``setup`` on every idle connection, and on every later new one."""
        self._setup = setup
        await asyncio.gather(*(setup(conn) for conn in self._idle))

    async def close(self) -> None:
        """Close idle connections; connections in use are closed when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        results = await asyncio.gather(
            *(asyncio.wait_for(conn.close(), 2) for conn in idle), return_exceptions=True
        )
        for conn, result in zip(idle, results, strict=True):
            if isinstance(result, BaseException):
                conn.terminate()
