"""Closing a worker, and stopping ``conveyor worker``, while the store does not answer.

The stores really block: a SQLite file on which another process holds an exclusive
write transaction (so every write waits for the lock), or a private ``redis-server`` or
PostgreSQL server (``initdb`` + ``pg_ctl`` in a temporary directory) stopped with
SIGSTOP. Deadlines in the assertions are generous: they check that closing ends, not
how fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from conveyor_core import Job, JobState, Queue, Worker
from conveyor_core.store import StoreInterface
from conveyor_stores import PostgresStore, RedisStore, SQLiteStore

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
CLOSE_TIMEOUT = 1.0
ENDS_WITHIN = 10.0
"""How long closing may take in these tests, told ``CLOSE_TIMEOUT``: generous on purpose."""
SETTLE = 60.0
"""How long jobs left behind may take to be recovered and run once the store is back."""

LOCKER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.read()
    conn.execute("ROLLBACK")
    """
)


# ---------------------------------------------------------------------- blocking stores


class Blocker:
    """Makes a store's calls hang (``block``) and answer again (``unblock``)."""

    async def block(self) -> None:
        raise NotImplementedError

    async def unblock(self) -> None:
        raise NotImplementedError


class SQLiteLock(Blocker):
    """Another process holding ``BEGIN EXCLUSIVE`` on the file: writes wait for it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.process: Process | None = None

    async def block(self) -> None:
        self.process = await anyio.open_process(
            [sys.executable, "-c", LOCKER, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        with anyio.fail_after(30):
            line = await self.process.stdout.receive()
        assert line.startswith(b"locked"), line

    async def unblock(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        assert process.stdin is not None
        await process.stdin.aclose()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


class RedisFreeze(Blocker):
    """A private ``redis-server`` stopped with SIGSTOP: every call waits for it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.frozen = False

    async def block(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    async def unblock(self) -> None:
        if self.frozen:
            self.process.send_signal(signal.SIGCONT)
            self.frozen = False


KINDS = ["sqlite", "redis", "postgres"]

SAVE_NOTHING = ("--save", "", "--appendonly", "no")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def private_redis(tmp_path: Path) -> Iterator[tuple[str, RedisFreeze]]:
    """A redis-server of this test's own, on a free port, stopped (and thawed) after."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    directory = tmp_path / "redis"
    directory.mkdir()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            *SAVE_NOTHING,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    freeze = RedisFreeze(process)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", freeze
    finally:
        if freeze.frozen:
            process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ProcessFreeze(Blocker):
    """Processes of a private server stopped with SIGSTOP: every call waits for them."""

    def __init__(self, find: Callable[[], list[int]]) -> None:
        self.find = find
        self.frozen: list[int] = []

    async def block(self) -> None:
        for pid in self.find():
            os.kill(pid, signal.SIGSTOP)
            self.frozen.append(pid)

    async def unblock(self) -> None:
        self.thaw()

    def thaw(self) -> None:
        while self.frozen:
            with suppress(ProcessLookupError):
                os.kill(self.frozen.pop(), signal.SIGCONT)


@contextmanager
def private_postgres() -> Iterator[tuple[str, ProcessFreeze]]:
    """A PostgreSQL server of this test's own (as user postgres when run as root),
    stopped and removed after; its processes (postmaster and backends) can be frozen."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = shutil.which("initdb") or (str(found[-1]) if found else None)
    if initdb is None:
        pytest.skip("PostgreSQL's initdb is not installed")
    bin_dir = Path(initdb).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    if as_user:
        shutil.chown(base, "postgres")
    data, port = base / "data", free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    # The server's output goes to a log file: it must not hold a pipe of ours open.
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", str(base / "log"), "-w", "start"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )

    def server_processes() -> list[int]:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True
        ).stdout.split()
        return [postmaster, *map(int, children)]

    freeze = ProcessFreeze(server_processes)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", freeze
    finally:
        freeze.thaw()
        subprocess.run(
            [*pg_ctl, "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


@asynccontextmanager
async def blockable_store(
    kind: str, tmp_path: Path
) -> AsyncIterator[tuple[str, StoreInterface, Blocker]]:
    """``(url, connected store, blocker)`` for ``kind``; the blocker is always undone."""
    if kind == "sqlite":
        path = str(tmp_path / "conveyor.db")
        blocker: Blocker = SQLiteLock(path)
        # A busy timeout far beyond the test: a write genuinely waits for the lock.
        async with SQLiteStore(path, busy_timeout=600, poll_interval=0.05) as store:
            try:
                yield f"sqlite:///{path}", store, blocker
            finally:
                await blocker.unblock()
        return
    if kind == "postgres":
        with private_postgres() as (url, pg_freeze):
            async with PostgresStore(url) as store:  # the default schema, as the command uses
                try:
                    yield url, store, pg_freeze
                finally:
                    await pg_freeze.unblock()
        return
    with private_redis(tmp_path) as (url, freeze):
        async with RedisStore(url) as store:  # the default prefix, as the command uses
            try:
                yield url, store, freeze
            finally:
                await freeze.unblock()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds, looking again every few hundredths of a second."""
    with anyio.fail_after(timeout):
        while not await condition():  # noqa: ASYNC110 - a condition on the store, not an event
            await anyio.sleep(0.05)


async def has_state(store: StoreInterface, job: Job, state: JobState) -> bool:
    record = await store.get_job(job.queue_name, job.id)
    return record is not None and record.state is state


# ---------------------------------------------------------------------- the API


@pytest.mark.parametrize("kind", KINDS)
async def test_close_returns_by_its_deadline_while_the_store_hangs(
    kind: str, tmp_path: Path
) -> None:
    async with blockable_store(kind, tmp_path) as (_, store, blocker):
        queue = Queue("frozen", store=store)
        quick = await queue.add("quick", None)
        stuck = await queue.add("stuck", None)
        started: set[str] = set()
        both_started = anyio.Event()
        finish_quick = anyio.Event()
        blocked = False

        async def handle(job: Job) -> str:
            if blocked:  # a later worker, once the store answers again
                return "later"
            started.add(job.name)
            if len(started) == 2:
                both_started.set()
            if job.name == "quick":
                await finish_quick.wait()
                return "quick"
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        errors: list[BaseException] = []
        worker = Worker("frozen", handle, store=store, concurrency=2, lock_duration=3.0)
        worker.on("error", errors.append)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            with anyio.fail_after(30):
                await both_started.wait()
            await blocker.block()
            blocked = True
            finish_quick.set()  # its result now waits for the store
            try:
                with anyio.fail_after(ENDS_WITHIN):
                    await worker.close(timeout=CLOSE_TIMEOUT)
            finally:
                # Let a worker that did not give up finish, so a failure is a failure.
                await blocker.unblock()
        assert any("did not answer in time" in str(error) for error in errors), errors

        # Once the store answers again, nothing is lost: both jobs end completed, either
        # by the writes that were waiting or by stalled-job recovery and another run.
        later = Worker("frozen", handle, store=store, stalled_interval=0.5, drain_delay=0.1)
        async with later:
            for job in (quick, stuck):
                await until(partial(has_state, store, job, JobState.COMPLETED), SETTLE)
        assert (await queue.get_job_counts())["completed"] == 2


# ---------------------------------------------------------------------- the command line

HANDLERS = textwrap.dedent(
    """
    import anyio

    async def handle(job):
        await anyio.sleep_forever()
    """
)


@asynccontextmanager
async def worker_process(
    url: str, tmp_path: Path, *options: str
) -> AsyncIterator[tuple[Process, list[bytes]]]:
    """``conveyor worker`` in a process of its own, its output collected as it comes."""
    (tmp_path / "hanging_handlers.py").write_text(HANDLERS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("CONVEYOR_STORE_URL", None)
    command = [sys.executable, "-m", "conveyor_core.cli", "worker", "hanging_handlers:handle"]
    output: list[bytes] = []
    async with await anyio.open_process(
        [*command, "--queue", "frozen", "--store", url, *options],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.STDOUT,
    ) as process:

        async def collect() -> None:
            assert process.stdout is not None
            async for chunk in process.stdout:
                output.append(chunk)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                yield process, output
                tg.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def printed(output: list[bytes], text: str) -> bool:
    return text.encode() in b"".join(output)


async def exit_code(process: Process, output: list[bytes]) -> int:
    try:
        with anyio.fail_after(ENDS_WITHIN):
            return await process.wait()
    except TimeoutError:
        raise AssertionError(
            f"still running {ENDS_WITHIN}s later: {b''.join(output).decode()}"
        ) from None


@pytest.mark.parametrize("kind", KINDS)
async def test_worker_command_exits_by_its_shutdown_timeout_while_the_store_hangs(
    kind: str, tmp_path: Path
) -> None:
    async with blockable_store(kind, tmp_path) as (url, store, blocker):
        job = await Queue("frozen", store=store).add("hang", None)
        async with worker_process(url, tmp_path, "--shutdown-timeout", str(CLOSE_TIMEOUT)) as (
            process,
            output,
        ):
            await until(lambda: has_state(store, job, JobState.ACTIVE))
            await blocker.block()
            process.send_signal(signal.SIGTERM)
            try:
                code = await exit_code(process, output)
            finally:
                await blocker.unblock()
            text = b"".join(output).decode()
            assert code == 0, text
            assert "did not answer in time" in text and "worker closed" in text, text


@pytest.mark.parametrize("kind", KINDS)
async def test_second_signal_ends_the_worker_command_at_once(kind: str, tmp_path: Path) -> None:
    async with blockable_store(kind, tmp_path) as (url, store, blocker):
        job = await Queue("frozen", store=store).add("hang", None)
        async with worker_process(url, tmp_path) as (process, output):
            await until(lambda: has_state(store, job, JobState.ACTIVE))
            process.send_signal(signal.SIGTERM)
            try:
                await until(partial(printed, output, "finishing active jobs"))
            except TimeoutError:
                raise AssertionError(b"".join(output).decode()) from None
            await blocker.block()
            process.send_signal(signal.SIGINT)
            try:
                code = await exit_code(process, output)
            finally:
                await blocker.unblock()
            text = b"".join(output).decode()
            assert code != 0, text
            last = text.strip().splitlines()[-1]
            assert "SIGINT again: exiting now" in last, text
            assert "Traceback" not in text
        # Not lost: the job is still there, active until its lock expires.
        left = await store.get_job("frozen", job.id)
        assert left is not None and left.state is JobState.ACTIVE
