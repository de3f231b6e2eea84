"""``RedisStore``: Conveyor on a Redis server, for workers on many hosts.

Every lifecycle transition is one Lua script (in ``lua/``), loaded once with
``SCRIPT LOAD`` and run with ``EVALSHA``: one round trip, atomic on the server. The calls
of all tasks share one pipelining connection (``_resp``). Queue names, job names, ids
and data reach the scripts only as arguments. The key layout is described in
``docs/redis.md`` and in :func:`queue_key_base`.

Idle workers block on a per-queue marker list (``BLPOP``) that scripts push to when jobs
enter ``waiting``; listeners read the queue's capped events stream with ``XREAD BLOCK``.
Both use connections of their own, so they never hold up the transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import unicodedata
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.to_thread
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor_core.engine import decode_cursor, encode_cursor, fold_ascii, split_due
from conveyor_core.errors import (
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    LockLostError,
    PayloadError,
    StoreClosedError,
    StoreCommandError,
    StoreConfigurationWarning,
    StoreOutOfMemoryError,
    StoreUnavailableError,
)
from conveyor_core.models import JobState, ParentPolicy
from conveyor_core.redaction import redact_text, redact_url
from conveyor_core.store import (
    DEPENDENCY_STATUSES,
    METRICS_MINUTES,
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

from ._resp import PackedArgs, RespConnection, RespConnectionLost, RespError, pack_args

__all__ = ["RedisStore", "queue_key_base"]

T = TypeVar("T")

_SCRIPTS = (
    "add_jobs",
    "add_dag",
    "take_jobs",
    "extend_locks",
    "complete_jobs",
    "fail_jobs",
    "release_jobs",
    "recover_stalled",
    "update_job",
    "queue_op",
    "search",
    "schedulers",
    "fire_scheduler",
    "dependencies",
    "cancel",
    "add_children",
    "park_job",
    "add_deduplicated",
)
OFFLOAD_JOBS = 256
"""An add of this many jobs or more is packed on a worker thread."""
SEARCH_SCAN = 5000
"""Jobs one search call looks at, at most: a page stays cheap on any queue; a sparse
match takes more pages."""
_STATES: dict[str, JobState] = {state.value: state for state in JobState}
_POLICIES: dict[str, ParentPolicy] = {policy.value: policy for policy in ParentPolicy}
_TEXT: dict[str | None, str] = {None: "", **{m.value: m.value for m in (*JobState, *ParentPolicy)}}
"""States and policies (enum members or their plain values) as script arguments."""
_SET_OF_STATE: dict[JobState, str] = {
    JobState.WAITING: "wait",
    JobState.DELAYED: "delayed",
    JobState.ACTIVE: "active",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.WAITING_CHILDREN: "children",
}
_NEWEST_FIRST = (JobState.COMPLETED, JobState.FAILED)
_NEW_STATES = frozenset({"waiting", "delayed", "waiting-children"})
_WAIT_MEMBER_PREFIX = 16
"""Waiting-set members are a 16-character order key followed by the job id."""
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_ATTEMPTS = 4
"""Tries of a command whose connection dropped (a fresh connection for each)."""
_LOADING_PAUSE = 0.1
"""Seconds between tries while the server loads its dataset."""
_CHECKED_SERVERS: set[str] = set()
"""Servers (address and run id) whose persistence and eviction settings this process
has checked."""


def _tag(queue: str) -> str:
    """The queue name made safe for a hash tag: ``%``, ``{`` and ``}`` are escaped."""
    return queue.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def queue_key_base(prefix: str, queue: str) -> str:
    """The common start of every key of ``queue``: ``<prefix>:{<escaped queue>}:``.

    The braces make the queue name Redis Cluster's hash tag, so all keys of one queue
    live in one slot; braces inside the name are percent-escaped so they cannot end the
    tag early.
    """
    return f"{prefix}:{{{_tag(queue)}}}:"


_DEFINES = re.compile(r"^(?:local function (\w+)|local (\w+)$|(\w+) = function)", re.M)
_WORDS = re.compile(r"\b[a-z_][a-z0-9_]*\b")


def _link(common: str, body: str) -> str:
    """The script ``body`` preceded by the header of ``common.lua`` and only the helpers
    it uses, directly or through other helpers: defining unused local functions on
    every call would cost the server time on every transition."""
    start = common.index("local function fmt(")
    header, blocks = common[:start], common[start:].split("\n\n")
    defined = [
        {name for match in _DEFINES.finditer(block) for name in match.groups() if name}
        for block in blocks
    ]
    needed = set(_WORDS.findall(body))
    chosen = [False] * len(blocks)
    changed = True
    while changed:
        changed = False
        for index, block in enumerate(blocks):
            if not chosen[index] and defined[index] & needed:
                chosen[index] = changed = True
                needed |= set(_WORDS.findall(block))
    kept = [block for block, keep in zip(blocks, chosen, strict=True) if keep]
    return header + "\n\n".join(kept) + "\n\n" + body


def _load_scripts() -> dict[str, str]:
    folder = resources.files(__package__).joinpath("lua")
    names = ("common", *_SCRIPTS)
    return assemble_scripts(
        {name: folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in names}
    )


def assemble_scripts(files: Mapping[str, str]) -> dict[str, str]:
    """The scripts sent to the server, by name, from the texts of the ``lua/`` files by
    file stem (``common`` and one per script)."""
    common = files["common"].replace("@METRICS_MINUTES", str(METRICS_MINUTES))
    bodies = {name: files[name] for name in _SCRIPTS}
    # A tick's jobs are written by add_jobs' own body, run inside the fire's
    # compare-and-set: one rule for adding, in one place.
    for name in ("fire_scheduler", "add_children", "add_deduplicated"):
        bodies[name] = bodies[name].replace("@ADD_JOBS", bodies["add_jobs"])
    return {name: _link(common, body) for name, body in bodies.items()}


def _job_fields(job: NewJob, base: Callable[[str], str]) -> tuple[Any, ...]:
    """The fields of a new job that every adding script reads, in its order."""
    return (
        job.id,
        base(job.queue),
        job.queue,
        job.name,
        job.data,
        job.opts,
        _TEXT[job.state],
        job.priority,
        "1" if job.lifo else "0",
        float(job.delay),
        "" if job.keep_completed is None else job.keep_completed,
        "" if job.keep_failed is None else job.keep_failed,
        job.group_id or "",
    )


def _opt_float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _record(queue: str, job_id: str, h: dict[str, str]) -> JobRecord:
    """A :class:`JobRecord` from a job hash."""
    policy = h.get("pol")
    stacktrace = h.get("st")
    return JobRecord(
        id=job_id,
        queue=queue,
        name=h["name"],
        data=h["data"],
        opts=h["opts"],
        state=_STATES[h["state"]],
        priority=int(h["pri"]),
        lifo=h["lifo"] == "1",
        delay=float(h["delay"]),
        attempts_made=int(h.get("att", 0)),
        stalled_count=int(h.get("stc", 0)),
        progress=h.get("prog"),
        return_value=h.get("rv"),
        failed_reason=h.get("fr"),
        stacktrace=json.loads(stacktrace) if stacktrace else [],
        created_at=float(h["cat"]),
        processed_at=_opt_float(h.get("pat")),
        finished_at=_opt_float(h.get("fat")),
        run_at=_opt_float(h.get("run")),
        keep_completed=_opt_int(h.get("kc")),
        keep_failed=_opt_int(h.get("kf")),
        parent_id=h.get("pid"),
        parent_queue=h.get("pq"),
        parent_policy=None if policy is None else _POLICIES[policy],
        lock_token=h.get("tok") or None,
        lock_until=_opt_float(h.get("lu") or None),
        cancel_reason=h.get("cx"),
        group_id=h.get("grp"),
    )


def _pairs(flat: list[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _flat_record(queue: str, flat: list[str]) -> JobRecord:
    """A record from ``[field, value, ..., id]`` as the take script returns it."""
    it = iter(flat)
    return _record(queue, flat[-1], dict(zip(it, it, strict=False)))


class _JobMissing(Exception):
    """A script found no job with the id it was given."""


def _reply_error(exc: RespError, what: str, where: str) -> Exception:
    """The Conveyor error for an error reply of the server to ``what``."""
    text = str(exc)
    code, _, detail = text.partition(" ")
    if code == "CONVEYOR_DUPLICATE":
        return DuplicateJobError(detail)
    if code == "CONVEYOR_INVALID_STATE":
        return InvalidJobStateError(detail)
    if code == "CONVEYOR_NOT_FOUND":
        return _JobMissing(detail)
    if code == "CONVEYOR_NO_PARENT":
        parent_queue, parent_id = json.loads(detail)
        return JobNotFoundError(parent_queue, parent_id)
    if code == "CONVEYOR_LOCK_LOST":
        return LockLostError(detail)
    if code == "OOM" or "OOM command not allowed" in text:
        return StoreOutOfMemoryError(
            f"Redis at {where} is out of memory (used memory is above its maxmemory) and "
            f"refused {what}; nothing was written. Free memory on the server (remove or "
            "clean finished jobs) or raise its maxmemory, then try again",
            command=what,
        )
    return StoreCommandError(f"Redis at {where} refused {what}: {text}", command=what)


def _command_name(args: Sequence[Any]) -> str:
    return " ".join(str(arg) for arg in args[:2]) if args[0] == "SCRIPT" else str(args[0])


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(
            f"a Redis key prefix must be a non-empty string (it starts every key of the "
            f"store), got {prefix!r}"
        )
    for index, char in enumerate(prefix):
        if char in "{}":
            raise ValueError(
                f"a Redis key prefix must not contain braces (they would end the queues' "
                f"hash tags), got {prefix!r}"
            )
        category = unicodedata.category(char)
        if category == "Cc":
            raise ValueError(
                f"a Redis key prefix must not contain control characters, got {prefix!r} "
                f"with {char!r} at position {index}"
            )
        if category == "Cs":
            raise ValueError(
                f"a Redis key prefix must be valid Unicode text, got {prefix!r} with a lone "
                f"surrogate at position {index}"
            )


_DEFAULT_TIMEOUTS = {
    "command_timeout": 10.0,
    "loading_timeout": 60.0,
    "socket_connect_timeout": 10.0,
}


def _seconds(name: str, value: object) -> float:
    """A positive number of seconds, or a ValueError naming the option."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def _split_timeouts(url: str, shown: str) -> tuple[str, dict[str, float]]:
    """``url`` without the store's own query parameters (``command_timeout``,
    ``loading_timeout``), and the timeouts the query sets (``socket_connect_timeout``
    too, which stays in the URL for redis-py)."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return url, {}
    found: dict[str, float] = {}
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key in _DEFAULT_TIMEOUTS:
            try:
                found[key] = _seconds(key, value)
            except ValueError as exc:
                raise ValueError(f"{exc} in the Redis URL {shown!r}") from None
        if key not in ("command_timeout", "loading_timeout"):
            kept.append((key, value))
    if len(kept) == len(query):
        return url, found
    return urlunsplit(parts._replace(query=urlencode(kept))), found


def _server_of(url: str) -> str:
    """The server a URL names (``host:port`` or the socket path), without credentials."""
    try:
        params = parse_url(url)
    except ValueError:
        return redact_url(url)
    if "path" in params:
        return str(params["path"])
    return f"{params.get('host', 'localhost')}:{params.get('port', 6379)}"


_WAKE_TTL_MS = 10_000
"""Milliseconds a timed wait's own list outlives a push its block did not take."""
_BLOCK_SLACK = 1.0
"""Seconds a blocking read's server timeout runs past its deadline: the push at the
deadline ends it first (see ``RedisStore._block``)."""


async def _drop(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it is still running and wait for it to end; its outcome no
    longer matters."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _race(
    work: Awaitable[T], stop: asyncio.Future[None], timeout: float
) -> tuple[bool, T | None]:
    """Await ``work`` unless ``stop`` resolves first; ``(finished, result)``. Raises
    ``TimeoutError`` if neither happens within ``timeout`` seconds."""
    task = asyncio.ensure_future(work)
    waiters: set[asyncio.Future[Any]] = {task, stop}
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _drop(task)
    if task in done:
        return True, task.result()
    if stop in done:
        return False, None
    raise TimeoutError


class _RedisSubscription:
    """One queue's events, read from its stream with ``XREAD BLOCK`` on its own connection."""

    BLOCK_MS = 5_000
    BATCH = 500

    def __init__(self, store: RedisStore, queue: str, stream: str, last_id: str) -> None:
        self._store = store
        self._queue = queue
        self._stream = stream
        self._last_id = last_id
        self._buffer: deque[EventRecord] = deque()
        self._stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> AsyncIterator[EventRecord]:
        return self

    async def __anext__(self) -> EventRecord:
        while not self._buffer:
            if self._stop.done():
                raise StopAsyncIteration
            await self._read()
        return self._buffer.popleft()

    async def _read(self) -> None:
        client = self._store._blocking_client()
        try:
            finished, reply = await _race(
                cast(
                    "Awaitable[Any]",
                    client.xread(
                        {self._stream: self._last_id}, count=self.BATCH, block=self.BLOCK_MS
                    ),
                ),
                self._stop,
                self.BLOCK_MS / 1000 + self._store.command_timeout,
            )
        except _CONNECTION_ERRORS:
            # The server dropped the connection or did not answer in time (a timeout is
            # an OSError): read again on a fresh one, from where this subscription
            # stopped, unless it has been closed meanwhile.
            if not self._stop.done():
                await asyncio.sleep(0.05)
            return
        if not finished or not reply:
            return
        for _stream, entries in reply:
            for entry_id, fields in entries:
                self._last_id = entry_id
                job_id = fields.get("j")
                self._buffer.append(
                    EventRecord(
                        type=fields["t"],
                        queue=self._queue,
                        job_id=job_id,
                        data=json.loads(fields.get("d", "{}")),
                        timestamp=float(fields["ts"]),
                    )
                )

    async def aclose(self) -> None:
        if not self._stop.done():
            self._stop.set_result(None)
        self._store._subscriptions.discard(self)


class RedisStore:
    """A store on a Redis server (6.2 or newer): ``RedisStore("redis://localhost:6379/0")``.

    ``prefix`` starts every key, so several applications (or test runs) can share one
    database; it must be non-empty, without ``{``, ``}`` or control characters.
    ``stream_max_len`` caps each queue's events stream (approximately, ``XTRIM MAXLEN ~``).

    ``command_timeout`` (seconds, 10 by default) bounds every call: a server that does
    not answer in time (frozen, or unreachable without a reset) makes the call raise
    :class:`StoreUnavailableError`; a script that was sent either ran whole or not at
    all. Blocking reads wait their block time plus ``command_timeout``. Opening a
    connection is bounded by ``socket_connect_timeout`` (10 s unless given). While the
    server loads its dataset (after a restart) calls are retried for up to
    ``loading_timeout`` seconds (60 s by default), then raise
    :class:`StoreUnavailableError`. The three timeouts can also be given in the URL's
    query (``redis://host/0?command_timeout=2``), so ``open_store`` and the CLI can set
    them; keyword arguments take precedence.

    Other keyword options go to ``redis.asyncio.Redis.from_url`` for the blocking
    connections; ``client_name`` also names the command connection. See
    ``docs/redis.md``.
    """

    capabilities = StoreCapabilities(shared=True, cross_process_events=True, blocking_wakeup=True)

    def __init__(
        self,
        url: str,
        prefix: str = "conveyor",
        *,
        stream_max_len: int = 10_000,
        command_timeout: float | None = None,
        loading_timeout: float | None = None,
        **options: Any,
    ) -> None:
        _check_prefix(prefix)
        if stream_max_len < 1:
            raise ValueError(f"stream_max_len must be at least 1, got {stream_max_len!r}")
        self._where = redact_url(url)
        self._url, in_url = _split_timeouts(url, self._where)
        timeouts = {
            "command_timeout": _DEFAULT_TIMEOUTS["command_timeout"],
            "loading_timeout": _DEFAULT_TIMEOUTS["loading_timeout"],
            "socket_connect_timeout": _DEFAULT_TIMEOUTS["socket_connect_timeout"],
            **in_url,
        }
        given = {
            "command_timeout": command_timeout,
            "loading_timeout": loading_timeout,
            "socket_connect_timeout": options.get("socket_connect_timeout"),
        }
        for name, value in given.items():
            if value is not None:
                timeouts[name] = _seconds(name, value)
        self.url = url
        self.prefix = prefix
        self.stream_max_len = stream_max_len
        self.command_timeout = timeouts["command_timeout"]
        self.loading_timeout = timeouts["loading_timeout"]
        self._connect_timeout = timeouts["socket_connect_timeout"]
        self._options = options
        self._root = f"{prefix}:"
        self._bases: dict[str, str] = {}
        self._conn: RespConnection | None = None
        self._reconnecting: asyncio.Future[None] | None = None
        self._blocking: aioredis.Redis | None = None
        self._sources: dict[str, str] = {}
        self._sha: dict[str, str] = {}
        self._stop: asyncio.Future[None] | None = None
        self._subscriptions: set[_RedisSubscription] = set()

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self.prefix!r})"

    async def __aenter__(self) -> RedisStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- lifecycle

    def _blocking_redis(self) -> aioredis.Redis:
        """The redis-py client for blocking reads; every concurrent read gets its own
        connection from its pool, and a dropped one is replaced on the next read."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.01), 3),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            **self._options,
            "socket_connect_timeout": self._connect_timeout,
            # Blocking reads wait longer than any sensible socket timeout; each read is
            # bounded by its block time plus the command timeout instead.
            "socket_timeout": None,
        }
        return aioredis.Redis.from_url(self._url, **options)

    async def connect(self) -> None:
        """Connect and load the scripts. Idempotent. Redis needs no schema.

        Warns (:class:`StoreConfigurationWarning`, once per server and process) if the
        server keeps nothing on disk or may evict keys when its memory is full.
        """
        if self._conn is not None:
            return
        if not self._sources:
            self._sources = _load_scripts()
        conn = RespConnection(
            self._url,
            connect_timeout=self._connect_timeout,
            **{
                key: value
                for key, value in self._options.items()
                if key in ("client_name", "ssl_ca_certs", "ssl_cert_reqs")
            },
        )
        loop = asyncio.get_running_loop()
        loading_until = loop.time() + self.loading_timeout
        names = list(self._sources)
        while True:
            try:
                await conn.connect()
                async with asyncio.timeout(self.command_timeout):
                    shas = await conn.call_many(
                        [("SCRIPT", "LOAD", self._sources[name]) for name in names]
                    )
                    settings = await self._server_settings(conn)
                break
            except RespError as exc:
                conn.close()
                if str(exc).startswith("LOADING") and loop.time() < loading_until:
                    await asyncio.sleep(_LOADING_PAUSE)
                    continue
                raise StoreUnavailableError(
                    f"cannot use Redis at {self._where}: {redact_text(str(exc), self.url)}"
                ) from exc
            except TimeoutError as exc:
                conn.close()
                raise StoreUnavailableError(
                    f"cannot use Redis at {self._where}: no answer within "
                    f"{self._connect_timeout:g} s (socket_connect_timeout) or "
                    f"{self.command_timeout:g} s (command_timeout)"
                ) from exc
            except OSError as exc:
                conn.close()
                raise StoreUnavailableError(
                    f"cannot use Redis at {self._where}: {redact_text(str(exc), self.url)}"
                ) from exc
        self._sha = dict(zip(names, shas, strict=True))
        self._conn = conn
        self._reconnecting = None
        self._blocking = self._blocking_redis()
        self._stop = loop.create_future()
        if settings is not None:
            self._warn_about(settings)

    @staticmethod
    async def _server_settings(conn: RespConnection) -> dict[str, str] | None:
        """The server's persistence and eviction settings, or ``None`` where ``CONFIG``
        is disabled or not permitted."""
        try:
            replies = await conn.call_many(
                [
                    ("CONFIG", "GET", "save"),
                    ("CONFIG", "GET", "appendonly"),
                    ("CONFIG", "GET", "maxmemory-policy"),
                    ("INFO", "server"),
                ]
            )
        except RespError:
            return None
        settings: dict[str, str] = {}
        for reply in replies[:-1]:
            settings.update(_pairs(list(reply)))
        for line in str(replies[-1]).splitlines():
            if line.startswith("run_id:"):
                settings["run_id"] = line[len("run_id:") :].strip()
        return settings

    def _warn_about(self, settings: dict[str, str]) -> None:
        # The run id tells a server apart from a later one on the same address.
        server = f"{_server_of(self._url)} {settings.get('run_id', '')}"
        if server in _CHECKED_SERVERS:
            return
        _CHECKED_SERVERS.add(server)
        problems: list[str] = []
        if not settings.get("save", "").strip() and settings.get("appendonly") == "no":
            problems.append(
                "it keeps nothing on disk (no RDB save points and appendonly off), so a "
                "restart loses every job; set appendonly yes"
            )
        policy = settings.get("maxmemory-policy")
        if policy is not None and policy != "noeviction":
            problems.append(
                f"its maxmemory-policy is {policy}, so when its memory is full it may "
                "delete jobs; set maxmemory-policy noeviction"
            )
        if problems:
            warnings.warn(
                f"Redis at {self._where} can lose jobs: {'; and '.join(problems)} "
                "(see docs/redis.md, Durability)",
                StoreConfigurationWarning,
                stacklevel=3,
            )

    async def close(self) -> None:
        """Close the connections; blocked waits return and subscriptions end. Returns
        promptly even when the server does not answer. Idempotent."""
        conn, blocking, stop = self._conn, self._blocking, self._stop
        if conn is None:
            return
        self._conn = self._blocking = self._stop = None
        if stop is not None and not stop.done():
            stop.set_result(None)
        for sub in list(self._subscriptions):
            await sub.aclose()
        # Let blocked waits and reads see the stop before their connections go away.
        await asyncio.sleep(0)
        conn.close()
        if blocking is not None:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await blocking.aclose()
            except (TimeoutError, *_CONNECTION_ERRORS):
                pass  # the connections are dropped either way

    def _blocking_client(self) -> aioredis.Redis:
        client = self._blocking
        if client is None:
            raise StoreClosedError("RedisStore is not connected: use 'async with store:'")
        return client

    def _base(self, queue: str) -> str:
        base = self._bases.get(queue)
        if base is None:
            if len(self._bases) > 10_000:
                self._bases.clear()
            base = self._bases[queue] = queue_key_base(self.prefix, queue)
        return base

    async def _ready(self) -> RespConnection:
        """The command connection, reconnected (once, for all callers) if it dropped."""
        conn = self._conn
        if conn is None:
            raise StoreClosedError("RedisStore is not connected: use 'async with store:'")
        if conn.connected:
            return conn
        pending = self._reconnecting
        if pending is None:
            pending = self._reconnecting = asyncio.ensure_future(conn.connect())
            pending.add_done_callback(self._reconnected)
        try:
            await asyncio.shield(pending)
        except RespError as exc:
            raise StoreUnavailableError(
                f"cannot reconnect to Redis at {self._where}: {redact_text(str(exc), self.url)}"
            ) from exc
        return conn

    def _reconnected(self, attempt: asyncio.Future[None]) -> None:
        self._reconnecting = None
        if not attempt.cancelled():
            attempt.exception()  # reported to the waiting callers, not here

    async def _command(self, *args: Any, what: str | None = None) -> Any:
        """One command; reconnects and resends when the connection dropped.

        A command whose connection dropped after it was sent may have run; every script
        tolerates running again (a repeated transition is refused or finds nothing to do).
        """
        return await self._resending(lambda conn: conn.send(*args), what or _command_name(args))

    async def _commands(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several read commands in one write, with the same reconnection as ``_command``."""
        names = ", ".join(dict.fromkeys(_command_name(args) for args in commands))
        result: list[Any] = await self._resending(lambda conn: conn.call_many(commands), names)
        return result

    async def _resending(self, call: Callable[[Any], Awaitable[Any]], what: str) -> Any:
        """``call(connection)``, reconnecting and resending when the connection dropped,
        waiting while the server loads its dataset, within the command timeout.

        An error reply becomes a Conveyor error, except ``NOSCRIPT`` (raised as it is,
        for :meth:`_run` to load the script again).
        """
        loop = asyncio.get_running_loop()
        timeout = self.command_timeout
        deadline = loop.time() + timeout
        loading_until: float | None = None
        attempt = 0
        while True:
            conn: RespConnection | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._ready()
                    return await call(conn)
            except UnicodeEncodeError as exc:
                raise PayloadError(
                    f"Redis cannot store this text (it is not valid Unicode): {exc}"
                ) from None
            except TimeoutError:
                if conn is not None and conn is self._conn:
                    # Replies may still come, in an order no caller waits for any more.
                    conn.close()
                raise StoreUnavailableError(
                    f"Redis at {self._where} did not answer {what} within {timeout:g} s "
                    "(command_timeout); it ran whole or not at all"
                ) from None
            except RespError as exc:
                text = str(exc)
                if text.startswith("NOSCRIPT"):
                    raise
                if not text.startswith("LOADING"):
                    raise _reply_error(exc, what, self._where) from None
                now = loop.time()
                if loading_until is None:
                    loading_until = now + self.loading_timeout
                if now >= loading_until:
                    raise StoreUnavailableError(
                        f"Redis at {self._where} was still loading its dataset after "
                        f"{self.loading_timeout:g} s (loading_timeout); {what} did not run"
                    ) from None
                await asyncio.sleep(min(_LOADING_PAUSE, loading_until - now))
                deadline = loop.time() + timeout
            except (RespConnectionLost, OSError) as exc:
                if self._conn is None:
                    raise StoreClosedError("RedisStore was closed during the call") from exc
                attempt += 1
                if attempt == _ATTEMPTS:
                    raise StoreUnavailableError(
                        f"Redis at {self._where} is unreachable: {redact_text(str(exc), self.url)}"
                    ) from exc
                await asyncio.sleep(0.01 * 3 ** (attempt - 1))

    async def _run(self, script: str, base: str, now: float, *args: Any) -> Any:
        """Run one script: ``KEYS = (queue base, prefix base)``, ``ARGV = (cap, now, *args)``."""
        what = f"the {script} script"

        def evalsha() -> Awaitable[Any]:
            return self._command(
                "EVALSHA",
                self._sha[script],
                2,
                base,
                self._root,
                self.stream_max_len,
                now,
                *args,
                what=what,
            )

        try:
            return await evalsha()
        except RespError:
            # NOSCRIPT: the server lost its script cache (restart, SCRIPT FLUSH): load again.
            pass
        self._sha[script] = await self._command(
            "SCRIPT", "LOAD", self._sources[script], what=f"loading {what}"
        )
        try:
            return await evalsha()
        except RespError as exc:
            raise _reply_error(exc, what, self._where) from None

    async def _job_op(self, queue: str, job_id: str, op: str, *args: Any, now: float = 0.0) -> Any:
        try:
            return await self._run("update_job", self._base(queue), now, op, job_id, *args)
        except _JobMissing:
            raise JobNotFoundError(queue, job_id) from None

    async def _queue_op(self, queue: str, op: str, *args: Any, now: float = 0.0) -> Any:
        return await self._run("queue_op", self._base(queue), now or time.time(), op, *args)

    # ---------------------------------------------------------------- writing

    async def add_jobs(self, groups: Sequence[Sequence[NewJob]], now: float) -> list[bool]:
        if not groups:
            return []
        if not all(groups):
            raise ValueError("a group of jobs must not be empty")
        first_base = self._base(groups[0][0].queue)
        if sum(len(group) for group in groups) < OFFLOAD_JOBS:
            args: list[Any] = [len(groups)]
            for group in groups:
                args += self._add_arguments(group)
            written = await self._run("add_jobs", first_base, now, *args)
        else:
            # Building and packing thousands of arguments would hold the event loop:
            # a worker thread does it, and the loop only sends the bytes.
            prefix = self.prefix

            def pack() -> PackedArgs:
                def base(queue: str) -> str:  # the cache belongs to the loop's thread
                    return queue_key_base(prefix, queue)

                args: list[Any] = [len(groups)]
                for group in groups:
                    args += self._add_arguments(group, base)
                return pack_args(args)

            try:
                packed = await anyio.to_thread.run_sync(pack)
            except UnicodeEncodeError as exc:
                raise PayloadError(
                    f"Redis cannot store this text (it is not valid Unicode): {exc}"
                ) from None
            written = await self._run("add_jobs", first_base, now, packed)
        return [flag == 1 for flag in written]

    async def add_dag(
        self,
        jobs: Sequence[NewJob],
        edges: Sequence[DagEdge],
        now: float,
        deduplication: Sequence[tuple[int, DeduplicationKey]] = (),
    ) -> list[DeduplicatedAdd]:
        if not jobs:
            raise ValueError("a DAG must hold at least one job")
        check_dag(jobs, edges, deduplication)
        for new in jobs:
            if new.state not in _NEW_STATES:
                raise InvalidJobStateError(f"a new job cannot start in state {str(new.state)!r}")
        prefix = self.prefix

        def arguments() -> list[Any]:
            def base(queue: str) -> str:  # no shared cache: this may run on a thread
                return queue_key_base(prefix, queue)

            args: list[Any] = [len(jobs)]
            for job in jobs:
                args += _job_fields(job, base)
            args.append(len(edges))
            for edge in edges:
                args += (
                    base(edge.parent_queue),
                    edge.parent_queue,
                    edge.parent_id,
                    base(edge.child_queue),
                    edge.child_queue,
                    edge.child_id,
                    _TEXT[edge.policy],
                )
            args.append(len(deduplication))
            for index, key in deduplication:
                args += (
                    index,
                    key.id,
                    "" if key.ttl is None else repr(float(key.ttl)),
                    "1" if key.extend else "0",
                    "1" if key.replace else "0",
                )
            return args

        first_base = self._base(jobs[0].queue)
        try:
            if len(jobs) < OFFLOAD_JOBS:
                held = await self._run("add_dag", first_base, now, *arguments())
            else:
                try:
                    packed = await anyio.to_thread.run_sync(lambda: pack_args(arguments()))
                except UnicodeEncodeError as exc:
                    raise PayloadError(
                        f"Redis cannot store this text (it is not valid Unicode): {exc}"
                    ) from None
                held = await self._run("add_dag", first_base, now, packed)
        except _JobMissing as exc:
            queue, job_id = json.loads(str(exc))
            raise JobNotFoundError(queue, job_id) from None
        return [DeduplicatedAdd(held[n], held[n + 1] == 1) for n in range(0, len(held or ()), 2)]

    async def add_children(
        self,
        queue: str,
        job_id: str,
        token: str,
        groups: Sequence[Sequence[NewJob]],
        now: float,
    ) -> list[bool]:
        check_children_of(queue, job_id, groups)
        args: list[Any] = [len(groups)]
        for group in groups:
            args += self._add_arguments(group)
        written = await self._run("add_children", self._base(queue), now, *args, job_id, token)
        return [flag == 1 for flag in written]

    async def park_job(self, queue: str, job_id: str, token: str, now: float) -> bool:
        parked = await self._run("park_job", self._base(queue), now, job_id, token)
        if parked < 0:
            raise LockLostError(lock_not_held(queue, job_id, "wait for its children"))
        return bool(parked == 1)

    async def add_deduplicated(
        self, new: NewJob, dedup: DeduplicationKey, now: float
    ) -> DeduplicatedAdd:
        if new.parent_id is not None or new.state is JobState.WAITING_CHILDREN:
            raise ValueError("add_deduplicated adds one standalone job")
        args: list[Any] = [1, *self._add_arguments([new])]
        args += [
            dedup.id,
            "" if dedup.ttl is None else repr(float(dedup.ttl)),
            "1" if dedup.extend else "0",
            "1" if dedup.replace else "0",
            new.id,
            float(new.delay),
        ]
        job_id, written = await self._run("add_deduplicated", self._base(new.queue), now, *args)
        return DeduplicatedAdd(job_id, written == 1)

    def _add_arguments(
        self, group: Sequence[NewJob], base: Callable[[str], str] | None = None
    ) -> list[Any]:
        """One group's arguments of the add_jobs script: its size, then 17 per job.
        ``base`` makes key bases (the default caches them: for the loop's thread only)."""
        if not group:
            raise ValueError("a group of jobs must not be empty")
        for new in group:
            if new.state not in _NEW_STATES:
                raise InvalidJobStateError(f"a new job cannot start in state {str(new.state)!r}")
        base = base or self._base
        text = _TEXT
        args: list[Any] = [len(group)]
        for job in group:
            pq = job.parent_queue
            args += _job_fields(job, base)
            args += (
                job.parent_id or "",
                pq or "",
                base(pq) if pq is not None and job.parent_id is not None else "",
                text[job.parent_policy],
            )
        return args

    # ---------------------------------------------------------------- working

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
        if rate_limit is None:
            most: Any = ""
            duration: Any = ""
        else:
            most, duration = rate_limit[0], float(rate_limit[1])
        reply = await self._run(
            "take_jobs", self._base(queue), now, limit, token, lock_until, most, duration
        )
        next_run_at, limited_until = reply[0], reply[1]
        return TakeResult(
            jobs=[_flat_record(queue, flat) for flat in reply[3:]],
            next_run_at=None if next_run_at is None else float(next_run_at),
            rate_limited_until=None if limited_until is None else float(limited_until),
            concurrency_limited=reply[2] == 1,
        )

    async def extend_locks(
        self, queue: str, locks: Sequence[tuple[str, str]], lock_until: float
    ) -> list[str]:
        if not locks:
            return []
        args: list[Any] = [lock_until]
        for job_id, token in locks:
            args += (job_id, token)
        kept = await self._run("extend_locks", self._base(queue), 0.0, *args)
        return list(kept)

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        if not completions:
            return []
        args: list[Any] = []
        for item in completions:
            args += (item.id, item.token, item.return_value)
        applied = await self._run("complete_jobs", self._base(queue), now, *args)
        return [flag == 1 for flag in applied]

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
        # Two scripts, each atomic (a take of its own keeps the Lua of a take in one
        # place), sent together: calls on the connection are written and answered in
        # order, so the server runs the completions first, in one round trip for both.
        completing = asyncio.ensure_future(self.complete_jobs(queue, completions, now))
        taking = asyncio.ensure_future(
            self.take_jobs(
                queue,
                limit=limit,
                token=token,
                lock_until=lock_until,
                now=now,
                rate_limit=rate_limit,
            )
        )
        applied, taken = await asyncio.gather(completing, taking, return_exceptions=True)
        if isinstance(applied, BaseException):
            if isinstance(taken, TakeResult) and taken.jobs:
                # Nobody will run what the take got: hand it back, no attempt counted.
                releases = [Release(job.id, token) for job in taken.jobs]
                with contextlib.suppress(Exception):
                    await self.release_jobs(queue, releases, now)
            raise applied
        if isinstance(taken, BaseException):
            raise taken
        return applied, taken

    async def fail_jobs(self, queue: str, failures: Sequence[Failure], now: float) -> list[bool]:
        if not failures:
            return []
        args: list[Any] = []
        for item in failures:
            args += (
                item.id,
                item.token,
                item.reason,
                json.dumps(list(item.stacktrace)),
                "" if item.retry_at is None else float(item.retry_at),
            )
        applied = await self._run("fail_jobs", self._base(queue), now, *args)
        return [flag == 1 for flag in applied]

    async def release_jobs(self, queue: str, releases: Sequence[Release], now: float) -> list[bool]:
        if not releases:
            return []
        args: list[Any] = []
        for item in releases:
            args += (item.id, item.token)
        applied = await self._run("release_jobs", self._base(queue), now, *args)
        return [flag == 1 for flag in applied]

    async def recover_stalled(
        self, queue: str, now: float, max_stalled_count: int
    ) -> list[StallOutcome]:
        reply = await self._run("recover_stalled", self._base(queue), now, max_stalled_count)
        return [StallOutcome(reply[i], reply[i + 1] == 1) for i in range(0, len(reply), 2)]

    async def wait_for_work(self, queue: str, timeout: float) -> None:
        """Block on the queue's marker list (``BLPOP``) on a connection of its own, until
        ``timeout`` by this process's clock (see :meth:`_block`)."""
        stop = self._stop
        if stop is None:
            raise StoreClosedError("RedisStore is not connected: use 'async with store:'")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        base = self._base(queue)
        marker = base + "marker"
        own = f"{base}wake:{uuid.uuid4().hex}"
        while not stop.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            client = self._blocking
            if client is None:
                return
            try:
                await _race(
                    self._block(client, marker, own, remaining),
                    stop,
                    remaining + _BLOCK_SLACK + self.command_timeout,
                )
                return
            except _CONNECTION_ERRORS:
                # Dropped connection, or no answer within the block time plus the
                # command timeout (a TimeoutError is an OSError): block again on a fresh
                # connection for the time left, if any.
                await asyncio.sleep(min(0.05, max(remaining, 0.0)))
        await asyncio.sleep(0)

    async def _block(self, client: aioredis.Redis, marker: str, own: str, seconds: float) -> None:
        """``BLPOP`` of ``marker`` for ``seconds``, ended on time by this process's clock.

        Redis ends a block at its timeout only at its next timer tick (every ``1/hz``
        seconds: up to 100 ms late with the default ``hz`` of 10), which would make every
        timed wait of a worker late (a delayed job's run time, a scheduler's tick). So the
        block also watches ``own``, a list of this wait alone in the queue's hash slot,
        and a push to it at the deadline ends the block; the server's timeout, a little
        later, only backs that push up (or stands in for it when the push fails). A push the
        block did not take is deleted, and expires anyway (a wait cancelled meanwhile, a
        push sent twice over a dropped connection)."""
        block = asyncio.ensure_future(client.blpop([marker, own], timeout=seconds + _BLOCK_SLACK))
        pushed = False
        try:
            done, _ = await asyncio.wait({block}, timeout=seconds)
            if not done:
                try:
                    await self._commands([("RPUSH", own, "1"), ("PEXPIRE", own, _WAKE_TTL_MS)])
                    pushed = True
                except StoreUnavailableError:
                    pass  # the server's timeout ends the block, a little later
            popped = await block
        finally:
            await _drop(block)
        if pushed and (popped is None or popped[0] != own):
            with contextlib.suppress(StoreUnavailableError):  # it expires anyway
                await self._command("DEL", own)

    # ---------------------------------------------------------------- job changes

    async def update_progress(self, queue: str, job_id: str, progress: str) -> None:
        await self._job_op(queue, job_id, "progress", progress, now=time.time())

    async def add_log(self, queue: str, job_id: str, line: str) -> int:
        return int(await self._job_op(queue, job_id, "log", line))

    async def get_logs(
        self, queue: str, job_id: str, start: int = 0, end: int | None = None
    ) -> list[str]:
        base = self._base(queue)
        exists, lines = await self._commands(
            [
                ("EXISTS", base + "job:" + job_id),
                ("LRANGE", base + "logs:" + job_id, start, -1 if end is None else end),
            ]
        )
        if not exists:
            raise JobNotFoundError(queue, job_id)
        return list(lines)

    async def update_data(self, queue: str, job_id: str, data: str) -> None:
        await self._job_op(queue, job_id, "data", data)

    async def change_priority(self, queue: str, job_id: str, priority: int, lifo: bool) -> None:
        await self._job_op(queue, job_id, "priority", priority, "1" if lifo else "0")

    async def change_delay(self, queue: str, job_id: str, run_at: float) -> None:
        await self._job_op(queue, job_id, "delay", float(run_at))

    async def promote_job(self, queue: str, job_id: str, now: float) -> None:
        await self._job_op(queue, job_id, "promote", now=now)

    async def promote_jobs(self, queue: str, now: float) -> int:
        return int(await self._queue_op(queue, "promote_all", now=now))

    async def retry_job(self, queue: str, job_id: str, now: float) -> None:
        await self._job_op(queue, job_id, "retry", now=now)

    async def retry_jobs(self, queue: str, state: JobState, now: float) -> int:
        state = _STATES[str(state)]
        if not state.finished:
            raise InvalidJobStateError(f"only failed or completed jobs can be retried, not {state}")
        return int(await self._queue_op(queue, "retry_all", state.value, now=now))

    async def remove_job(self, queue: str, job_id: str) -> bool:
        removed = await self._job_op(queue, job_id, "remove", now=time.time())
        return bool(removed)

    # ---------------------------------------------------------------- queues

    async def pause(self, queue: str) -> None:
        await self._queue_op(queue, "pause", queue)

    async def resume(self, queue: str) -> None:
        await self._queue_op(queue, "resume")

    async def is_paused(self, queue: str) -> bool:
        meta = self._base(queue) + "meta"
        return bool(await self._command("HEXISTS", meta, "paused"))

    async def drain(self, queue: str, include_delayed: bool, now: float) -> int:
        return int(await self._queue_op(queue, "drain", "1" if include_delayed else "0", now=now))

    async def clean(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        state = _STATES[str(state)]
        if state is JobState.ACTIVE:
            raise InvalidJobStateError("active jobs cannot be cleaned")
        removed = await self._queue_op(
            queue, "clean", state.value, float(older_than), "" if limit is None else limit
        )
        return list(removed)

    async def obliterate(self, queue: str, force: bool) -> None:
        await self._queue_op(queue, "obliterate", "1" if force else "0", queue)

    # ---------------------------------------------------------------- flow control

    async def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        value = "" if concurrency is None else str(concurrency)
        await self._queue_op(queue, "concurrency", value)

    async def get_global_concurrency(self, queue: str) -> int | None:
        value = await self._command("HGET", self._base(queue) + "meta", "conc", what="HGET")
        return None if value is None else int(value)

    async def set_group_limits(
        self, queue: str, concurrency: int | None, rate_limit: tuple[int, float] | None
    ) -> None:
        most, duration = (
            ("", "") if rate_limit is None else (rate_limit[0], repr(float(rate_limit[1])))
        )
        await self._queue_op(
            queue, "group_limits", "" if concurrency is None else concurrency, most, duration
        )

    async def get_group_limits(self, queue: str) -> GroupLimits:
        conc, most, duration = await self._command(
            "HMGET", self._base(queue) + "meta", "gconc", "grmax", "grdur", what="HMGET"
        )
        return GroupLimits(
            concurrency=None if conc is None else int(conc),
            rate_limit=None if most is None else (int(most), float(duration)),
        )

    async def get_group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        reply = await self._queue_op(queue, "group_counts")
        counts: dict[str, dict[JobState, int]] = {}
        for k in range(0, len(reply), 2):
            held = _pairs(reply[k + 1])
            counts[reply[k]] = {state: int(held.get(state.value, 0)) for state in JobState}
        return dict(sorted(counts.items()))

    async def rate_limit_queue(self, queue: str, until: float) -> None:
        await self._queue_op(queue, "rate_limit", repr(float(until)))

    # ---------------------------------------------------------------- schedulers

    async def upsert_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        timing: str,
        template: str,
        next_run_at: float | None,
        now: float,
    ) -> None:
        await self._run(
            "schedulers",
            self._base(queue),
            now,
            "upsert",
            scheduler_id,
            timing,
            template,
            "" if next_run_at is None else repr(next_run_at),
        )

    async def remove_scheduler(self, queue: str, scheduler_id: str) -> bool:
        removed = await self._run(
            "schedulers", self._base(queue), time.time(), "remove", scheduler_id
        )
        return bool(removed)

    @staticmethod
    def _schedulers(queue: str, rows: list[list[str]]) -> list[SchedulerRecord]:
        return [
            SchedulerRecord(queue, sid, timing, template, _opt_float(nxt or None), int(it or 0))
            for sid, timing, template, nxt, it in rows
        ]

    async def get_schedulers(self, queue: str) -> list[SchedulerRecord]:
        rows = await self._run("schedulers", self._base(queue), time.time(), "list")
        return self._schedulers(queue, rows)

    async def due_schedulers(self, queue: str, now: float, limit: int) -> DueSchedulers:
        rows = await self._run("schedulers", self._base(queue), now, "due", limit + 1)
        return split_due(self._schedulers(queue, rows), now, limit)

    async def fire_scheduler(
        self,
        queue: str,
        scheduler_id: str,
        expected: float,
        next_run_at: float | None,
        jobs: Sequence[NewJob],
        now: float,
    ) -> bool:
        args: list[Any] = [1, *self._add_arguments(jobs)] if jobs else [0]
        args += [scheduler_id, repr(expected), "" if next_run_at is None else repr(next_run_at)]
        fired = await self._run("fire_scheduler", self._base(queue), now, *args)
        return bool(fired)

    # ---------------------------------------------------------------- reading

    async def get_job(self, queue: str, job_id: str) -> JobRecord | None:
        flat = await self._command("HGETALL", self._base(queue) + "job:" + job_id)
        return _record(queue, job_id, _pairs(flat)) if flat else None

    async def _ids(self, queue: str, state: JobState, start: int, end: int) -> list[str]:
        key = self._base(queue) + _SET_OF_STATE[state]
        if state is JobState.WAITING:
            return await self._waiting_ids(queue, start, end)
        command = "ZREVRANGE" if state in _NEWEST_FIRST else "ZRANGE"
        ids: list[str] = await self._command(command, key, start, end)
        return ids

    async def _waiting_ids(self, queue: str, start: int, end: int) -> list[str]:
        """Waiting ids from ``start`` to ``end`` of the queue's waiting order: its own
        lane's set and the set of every group's waiting jobs, merged (members of both
        order by priority, then by their unique order key)."""
        base = self._base(queue)
        if not await self._command("EXISTS", base + "gwait"):
            members: list[str] = await self._command("ZRANGE", base + "wait", start, end)
        else:
            own, grouped = await self._commands(
                [
                    ("ZRANGE", base + "wait", 0, end, "WITHSCORES"),
                    ("ZRANGE", base + "gwait", 0, end, "WITHSCORES"),
                ]
            )
            scored = [
                (float(pairs[k + 1]), pairs[k][:_WAIT_MEMBER_PREFIX], pairs[k])
                for pairs in (own, grouped)
                for k in range(0, len(pairs), 2)
            ]
            scored.sort()
            members = [member for _, _, member in scored]
            members = members[start:] if end == -1 else members[start : end + 1]
        return [member[_WAIT_MEMBER_PREFIX:] for member in members]

    async def get_jobs(
        self, queue: str, states: Sequence[JobState], start: int, end: int | None
    ) -> list[JobRecord]:
        if not states:
            return []
        if start < 0 or (end is not None and end < 0):
            # Negative indexes slice the whole listing, as Python slices do.
            every = await self.get_jobs(queue, states, 0, None)
            return every[start : None if end is None else end + 1]
        wanted: list[str] = []
        if len(states) == 1:
            wanted = await self._ids(
                queue, _STATES[str(states[0])], start, -1 if end is None else end
            )
        else:
            counts = await self.get_counts(queue)
            offset = 0
            for state in states:
                state = _STATES[str(state)]
                size = counts[state]
                lo = max(start - offset, 0)
                hi = size - 1 if end is None else min(end - offset, size - 1)
                if lo <= hi:
                    wanted += await self._ids(queue, state, lo, hi)
                offset += size
        if not wanted:
            return []
        base = self._base(queue)
        hashes = await self._commands([("HGETALL", base + "job:" + job_id) for job_id in wanted])
        return [
            _record(queue, job_id, _pairs(flat))
            for job_id, flat in zip(wanted, hashes, strict=True)
            if flat
        ]

    async def get_counts(self, queue: str) -> dict[JobState, int]:
        base = self._base(queue)
        sizes = await self._commands(
            [("ZCARD", base + _SET_OF_STATE[state]) for state in JobState]
            + [("ZCARD", base + "gwait")]
        )
        counts = {state: int(size) for state, size in zip(JobState, sizes, strict=False)}
        counts[JobState.WAITING] += int(sizes[-1])
        return counts

    async def get_dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        base = self._base(queue)
        exists, flat = await self._commands(
            [("EXISTS", base + "job:" + job_id), ("HVALS", base + "deps:" + job_id)]
        )
        if not exists:
            raise JobNotFoundError(queue, job_id)
        records = sorted((json.loads(text) for text in flat), key=lambda d: d["o"])
        return [
            ChildDependency(
                queue=d["q"], id=d["i"], status=d["s"], value=d.get("v"), reason=d.get("r")
            )
            for d in records
        ]

    async def _dependency_op(
        self, queue: str, job_id: str, op: str, *args: Any, now: float = 0.0
    ) -> Any:
        try:
            return await self._run("dependencies", self._base(queue), now, op, job_id, *args)
        except _JobMissing:
            raise JobNotFoundError(queue, job_id) from None

    async def get_dependency_page(
        self, queue: str, job_id: str, *, cursor: str | None, limit: int
    ) -> DependencyPage:
        check_dependency_limit(limit)
        after = "" if cursor is None else str(decode_dependency_cursor(cursor))
        flat = await self._dependency_op(queue, job_id, "page", after, limit + 1)
        rows = [(int(flat[k]), json.loads(flat[k + 1])) for k in range(0, len(flat), 2)]
        following = encode_dependency_cursor(rows[limit - 1][0]) if len(rows) > limit else None
        return DependencyPage(
            [
                ChildDependency(
                    queue=d["q"], id=d["i"], status=d["s"], value=d.get("v"), reason=d.get("r")
                )
                for _, d in rows[:limit]
            ],
            following,
        )

    async def get_dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        counts = await self._dependency_op(queue, job_id, "counts")
        return {status: int(n or 0) for status, n in zip(DEPENDENCY_STATUSES, counts, strict=True)}

    async def get_parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        flat = await self._dependency_op(queue, job_id, "parents")
        return [
            ParentLink(flat[k], flat[k + 1], ParentPolicy(flat[k + 2]))
            for k in range(0, len(flat), 3)
        ]

    async def remove_child_dependency(self, queue: str, job_id: str, now: float) -> bool:
        return bool(await self._dependency_op(queue, job_id, "leave", now=now))

    async def remove_unprocessed_children(self, queue: str, job_id: str, now: float) -> int:
        return int(await self._dependency_op(queue, job_id, "prune", now=now))

    async def cancel_job(self, queue: str, job_id: str, reason: str, now: float) -> int:
        try:
            return int(await self._run("cancel", self._base(queue), now, "cancel", job_id, reason))
        except _JobMissing:
            raise JobNotFoundError(queue, job_id) from None

    async def cancel_requests(self, queue: str, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        flat = await self._run("cancel", self._base(queue), 0.0, "requests", *job_ids)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def list_queues(self) -> list[str]:
        names: list[str] = sorted(await self._command("SMEMBERS", self._root + "queues"))
        if not names:
            return []
        commands: list[tuple[Any, ...]] = []
        for name in names:
            base = self._base(name)
            commands.append(
                ("EXISTS", base + "gwait", *(base + suffix for suffix in _SET_OF_STATE.values()))
            )
            commands.append(("HEXISTS", base + "meta", "paused"))
        flags = await self._commands(commands)
        return [name for i, name in enumerate(names) if flags[2 * i] or flags[2 * i + 1]]

    # ---------------------------------------------------------------- operating

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
        after = ("", "") if cursor is None else decode_cursor(cursor)
        reply = await self._run(
            "search",
            self._base(queue),
            time.time(),
            "" if text is None else fold_ascii(text),
            "" if name is None else name,
            "" if states is None else "|".join(JobState(state).value for state in states) or "-",
            limit,
            repr(after[0]) if cursor is not None else "",
            after[1],
            SEARCH_SCAN,
        )
        resume_score, resume_id, ids = reply[0], reply[1], reply[2:]
        base = self._base(queue)
        hashes = await self._commands([("HGETALL", base + "job:" + job_id) for job_id in ids])
        jobs = [
            _record(queue, job_id, _pairs(flat))
            for job_id, flat in zip(ids, hashes, strict=True)
            if flat
        ]
        if resume_id == "" and resume_score == "":
            return SearchPage(jobs, None)
        return SearchPage(jobs, encode_cursor(float(resume_score), resume_id))

    async def get_metrics(
        self, queue: str, kind: MetricKind, start: int, end: int
    ) -> dict[int, int]:
        flat = await self._command("HGETALL", self._base(queue) + "m:" + kind)
        counts = {int(minute): int(count) for minute, count in _pairs(flat).items()}
        return {m: counts[m] for m in sorted(counts) if start <= m <= end and counts[m]}

    # ---------------------------------------------------------------- events

    async def subscribe(self, queue: str) -> EventSubscription:
        """Listen from the stream's newest entry at this moment on."""
        stream = self._base(queue) + "events"

        last = await self._command("XREVRANGE", stream, "+", "-", "COUNT", 1)
        sub = _RedisSubscription(self, queue, stream, last[0][0] if last else "0-0")
        self._subscriptions.add(sub)
        return sub
