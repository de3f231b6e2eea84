"""A lean, pipelining Redis connection for the store's script calls.

The store's transitions are single ``EVALSHA`` calls, sent from many tasks at once. Here
they share one connection: each call writes its command (packed by hiredis) and waits
for its reply, which arrives in order, so concurrent calls are pipelined for free and a
call costs little more than the round trip. Blocking commands never use it (they go
through redis-py on connections of their own).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

__all__ = ["RespConnection", "RespConnectionLost", "RespError"]


class RespError(Exception):
    """An error reply from the server; the message is the server's text."""


class PackedArgs:
    """The last arguments of a command, already in the wire format (bulk strings), so a
    caller can pack a huge command on a worker thread and the event loop only joins it.
    Made by :func:`pack_args`; pass it as the last argument of :meth:`RespConnection.send`.
    """

    __slots__ = ("count", "data")

    def __init__(self, count: int, data: bytes) -> None:
        self.count = count
        self.data = data


def pack_args(args: tuple[Any, ...] | list[Any]) -> PackedArgs:
    """``args`` as bulk strings, ready to end a command (see :class:`PackedArgs`)."""
    packed = bytes(hiredis.pack_command(tuple(args)))
    return PackedArgs(len(args), packed[packed.index(b"\r\n") + 2 :])


def _pack(args: tuple[Any, ...]) -> bytes:
    if not args or not isinstance(args[-1], PackedArgs):
        return bytes(hiredis.pack_command(args))
    tail: PackedArgs = args[-1]
    head = bytes(hiredis.pack_command(args[:-1]))
    body = head[head.index(b"\r\n") + 2 :]
    return b"*%d\r\n" % (len(args) - 1 + tail.count) + body + tail.data


class RespConnectionLost(ConnectionError):
    """The connection closed before the reply arrived (the command may or may not have
    run)."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8", replyError=RespError)
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        while True:
            reply = reader.gets()
            if reply is False:
                return
            waiter = waiters.popleft()
            if not waiter.done():
                if isinstance(reply, RespError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or RespConnectionLost("connection closed by the server")
        self.transport = None
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RespConnectionLost(f"connection lost: {self.lost}"))


class RespConnection:
    """One TCP, TLS or unix-socket connection to the server of a ``redis://`` URL."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0, **options: Any) -> None:
        """``connect_timeout`` bounds opening the connection and its set-up commands.
        ``options``: ``client_name``, and for TLS ``ssl_ca_certs`` and ``ssl_cert_reqs``
        (``"none"`` skips verification), as redis-py takes them."""
        self._params = {**parse_url(url), **options}
        self._client_name = self._params.get("client_name")
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        params = self._params
        context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
        if str(params.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none", "0"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def connected(self) -> bool:
        protocol = self._protocol
        return protocol is not None and protocol.transport is not None

    async def connect(self) -> None:
        """Open the connection and authenticate, select the database, name the client,
        all within the connect timeout (``TimeoutError`` after it)."""
        self.close()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._open()
        except BaseException:
            self.close()
            raise

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        params = self._params
        cls = params.get("connection_class")
        if cls is UnixDomainSocketConnection:
            _, protocol = await loop.create_unix_connection(_Protocol, params["path"])
        else:
            context = self._ssl_context() if cls is SSLConnection else None
            _, protocol = await loop.create_connection(
                _Protocol,
                params.get("host", "localhost"),
                params.get("port", 6379),
                ssl=context,
            )
        self._protocol = protocol
        setup: list[tuple[Any, ...]] = []
        if params.get("password") is not None:
            user = params.get("username")
            setup.append(
                ("AUTH", user, params["password"]) if user else ("AUTH", params["password"])
            )
        if params.get("db"):
            setup.append(("SELECT", params["db"]))
        if self._client_name:
            setup.append(("CLIENT", "SETNAME", self._client_name))
        if setup:
            await self.call_many(setup)

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """Write one command; the future resolves with its reply."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            raise RespConnectionLost("not connected")
        packed = _pack(args)  # may raise (unencodable text): nothing sent
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.waiters.append(waiter)
        protocol.transport.write(packed)
        return waiter

    async def call(self, *args: Any) -> Any:
        return await self.send(*args)

    async def call_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands in one write; replies in order (the first error is raised)."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            raise RespConnectionLost("not connected")
        packed = b"".join(_pack(args) for args in commands)
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Any]] = []
        for _ in commands:
            waiter: asyncio.Future[Any] = loop.create_future()
            waiters.append(waiter)
            protocol.waiters.append(waiter)
        protocol.transport.write(packed)
        results: list[Any] = []
        error: BaseException | None = None
        try:
            for waiter in waiters:
                try:
                    results.append(await waiter)
                except RespError as exc:
                    error = error or exc
                    results.append(None)
        finally:
            for waiter in waiters[len(results) :]:
                # Retrieve (or cancel) what is left so nothing is reported as lost.
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()
                else:
                    waiter.cancel()
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Drop the connection at once (without waiting for the server); replies still
        awaited fail with :class:`RespConnectionLost`."""
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
