"""Several OS processes sharing one SQLite file: exactly-once work, flows, crash recovery.

The worker processes run this very file as a script (``python test_sqlite_processes.py
serve ...``); each appends one line per handler run to a file of its own, so the test can
count how often every job ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
import pytest

from conveyor_core import FlowProducer, Job, JobState, Queue, Worker
from conveyor_stores.sqlite import SQLiteStore
from conveyor_stores.sqlite import store as sqlite_store

ROOT = Path(__file__).resolve().parent.parent
COMPLETED = JobState.COMPLETED
ACTIVE = JobState.ACTIVE
HOUR = 3600.0


# ---------------------------------------------------------------------- worker processes


def _open_log(path: str) -> TextIO:
    return open(path, "a", buffering=1)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _touch(path: str) -> None:
    Path(path).touch()


async def _serve(path: str, out: str, stop: str, mode: str) -> None:
    """Run workers on the shared file until ``stop`` exists."""
    with _open_log(out) as log:

        async def leaf(job: Job) -> int:
            log.write(f"{job.queue_name} {job.id}\n")
            return int(job.data["n"]) * 2

        async def parent(job: Job) -> dict[str, Any]:
            log.write(f"{job.queue_name} {job.id}\n")
            values = await job.get_children_values()
            total = sum(
                value if isinstance(value, int) else value["total"] for value in values.values()
            )
            return {"total": total, "values": values}

        async def hang(job: Job) -> None:
            log.write(f"{job.queue_name} {job.id}\n")
            await anyio.sleep(3600)

        poll_interval = 0.02
        if mode == "hang":
            handlers = {"leaf": hang}
            options: dict[str, Any] = {"lock_duration": 1.0, "stalled_interval": 0.5}
        elif mode == "idle":
            # Polls, and ends its waits, only once an hour: only a wake-up from the
            # committing process can get a job to it sooner.
            handlers = {"jobs": leaf}
            options = {"drain_delay": HOUR}
            poll_interval = HOUR
        else:
            handlers = {"jobs": leaf, "leaf": leaf, "mid": parent, "root": parent}
            options = {}
        async with (
            SQLiteStore(path, poll_interval=poll_interval) as store,
            AsyncExitStack() as stack,
        ):
            for queue, handler in handlers.items():
                await stack.enter_async_context(
                    Worker(queue, handler, store=store, concurrency=10, **options)
                )
            _touch(out + ".ready")
            while not _exists(stop):  # noqa: ASYNC110 - a file, not an event
                await anyio.sleep(0.05)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    """Run this file as a script in a new process."""
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


@contextmanager
def _processes(
    path: str, tmp: Path, count: int, mode: str
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[Path]]]:
    """Start ``count`` worker processes; stop them gracefully (or kill them) on exit."""
    stop = tmp / f"stop-{mode}"
    outs = [tmp / f"runs-{mode}-{i}.txt" for i in range(count)]
    procs = [_spawn("serve", path, str(out), str(stop), mode) for out in outs]
    try:
        yield procs, outs
    finally:
        stop.touch()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _runs(outs: list[Path]) -> Counter[str]:
    runs: Counter[str] = Counter()
    for out in outs:
        if out.exists():
            runs.update(line for line in out.read_text().splitlines() if line)
    return runs


async def _until(check: Any, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - polling another process's writes
            await anyio.sleep(0.05)


# ---------------------------------------------------------------------- tests

pytestmark = pytest.mark.anyio


async def test_three_processes_run_every_job_once_and_complete_every_flow(
    sqlite_path: str, tmp_path: Path
) -> None:
    n_jobs, n_flows = 2000, 50
    async with SQLiteStore(sqlite_path) as store:
        with _processes(sqlite_path, tmp_path, 3, "serve") as (_, outs):

            async def all_ready() -> bool:
                return all(out.with_name(out.name + ".ready").exists() for out in outs)

            # Add the work once every process's workers run, so that all of them race.
            await _until(all_ready, timeout=60)
            jobs = await Queue("jobs", store=store).add_bulk(
                [{"name": "plain", "data": {"n": i}} for i in range(n_jobs)]
            )
            roots = await FlowProducer(store=store).add_bulk(
                [
                    {
                        "name": "root",
                        "queue_name": "root",
                        "children": [
                            {
                                "name": "mid",
                                "queue_name": "mid",
                                "children": [
                                    {
                                        "name": "leaf",
                                        "queue_name": "leaf",
                                        "data": {"n": 9 * f + 3 * m + i},
                                    }
                                    for i in range(3)
                                ],
                            }
                            for m in range(3)
                        ],
                    }
                    for f in range(n_flows)
                ]
            )
            expected = {f"jobs {job.id}" for job in jobs}
            for root in roots:
                expected.add(f"root {root.job.id}")
                for mid in root.children:
                    expected.add(f"mid {mid.job.id}")
                    expected.update(f"leaf {leaf.job.id}" for leaf in mid.children)

            async def all_done() -> bool:
                counts = [await store.get_counts(q) for q in ("jobs", "root", "mid", "leaf")]
                return sum(c[COMPLETED] for c in counts) == len(expected)

            await _until(all_done, timeout=60)
        runs = _runs(outs)
        assert set(runs) == expected
        assert [line for line, times in runs.items() if times != 1] == []
        # Every process took part.
        assert all(out.read_text() for out in outs)

        for f, root in enumerate(roots):
            job = await Queue("root", store=store).get_job(root.job.id)
            assert job is not None and job.state is COMPLETED
            result = job.return_value
            assert set(result["values"]) == {mid.job.id for mid in root.children}
            assert result["total"] == sum(2 * (9 * f + k) for k in range(9))


async def test_a_killed_worker_process_loses_nothing(sqlite_path: str, tmp_path: Path) -> None:
    async with SQLiteStore(sqlite_path, poll_interval=0.02) as store:
        root = await FlowProducer(store=store).add(
            {
                "name": "root",
                "queue_name": "root",
                "children": [
                    {"name": "leaf", "queue_name": "leaf", "data": {"n": i}} for i in range(4)
                ],
            }
        )
        leaf_ids = {child.job.id for child in root.children}

        async def all_running() -> bool:
            active = (await store.get_counts("leaf"))[ACTIVE]
            return active == len(leaf_ids) and len(_runs(outs)) == len(leaf_ids)

        with _processes(sqlite_path, tmp_path, 1, "hang") as ([victim], outs):
            await _until(all_running, timeout=20)
            # Killed while its handlers run and it holds the leaves' locks.
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        assert _runs(outs) == Counter(f"leaf {job_id}" for job_id in leaf_ids)
        assert (await store.get_counts("leaf"))[ACTIVE] == len(leaf_ids)

        ran: Counter[str] = Counter()

        async def leaf(job: Job) -> int:
            ran[job.id] += 1
            return int(job.data["n"]) * 2

        async def parent(job: Job) -> dict[str, Any]:
            return await job.get_children_values()

        done = anyio.Event()
        async with (
            Worker("leaf", leaf, store=store, stalled_interval=0.1),
            Worker("root", parent, store=store) as root_worker,
        ):
            root_worker.on("completed", lambda job, result: done.set())
            with anyio.fail_after(20):
                await done.wait()
        assert ran == {job_id: 1 for job_id in leaf_ids}
        finished = await Queue("root", store=store).get_job(root.job.id)
        assert finished is not None and finished.state is COMPLETED
        values = {child.job.id: 2 * child.job.data["n"] for child in root.children}
        assert finished.return_value == values


async def test_processes_opening_a_new_file_at_once_create_the_schema_once(
    sqlite_path: str,
) -> None:
    procs = [_spawn("add", sqlite_path, f"job-{i}") for i in range(3)]
    assert [proc.wait(timeout=30) for proc in procs] == [0, 0, 0]
    async with SQLiteStore(sqlite_path) as store:
        assert store.migrations_applied == 0
        jobs = await Queue("q", store=store).get_jobs(JobState.WAITING)
        assert sorted(job.id for job in jobs) == [f"job-{i}" for i in range(3)]


async def test_another_process_wakes_idle_workers_and_reaches_listeners(
    sqlite_path: str,
) -> None:
    async with SQLiteStore(sqlite_path, poll_interval=0.02) as store:
        subscription = await store.subscribe("q")
        proc = _spawn("add", sqlite_path, "from-afar")
        try:
            with anyio.fail_after(30):
                while (await store.get_counts("q"))[JobState.WAITING] == 0:
                    await store.wait_for_work("q", 30.0)
                first = await subscription.__anext__()
                second = await subscription.__anext__()
        finally:
            assert proc.wait(timeout=30) == 0
            await subscription.aclose()
        assert [(e.type, e.job_id) for e in (first, second)] == [
            ("added", "from-afar"),
            ("waiting", "from-afar"),
        ]


async def test_an_idle_worker_in_another_process_takes_a_new_job_at_once(
    sqlite_path: str, tmp_path: Path
) -> None:
    async with SQLiteStore(sqlite_path) as store:
        with _processes(sqlite_path, tmp_path, 1, "idle") as (_, [out]):

            async def ready() -> bool:
                return out.with_name(out.name + ".ready").exists()

            await _until(ready, timeout=60)
            await anyio.sleep(0.5)  # it has looked for work, found none, and waits
            job = await Queue("jobs", store=store).add("plain", {"n": 1})

            async def ran() -> bool:
                return _runs([out]) == Counter({f"jobs {job.id}": 1})

            # Its next look of its own is an hour away.
            await _until(ran, timeout=20)


async def test_a_listener_hears_of_another_process_s_job_at_once(sqlite_path: str) -> None:
    async with SQLiteStore(sqlite_path, poll_interval=HOUR) as store:
        subscription = await store.subscribe("q")
        proc = _spawn("add", sqlite_path, "from-afar")
        try:
            with anyio.fail_after(20):  # the next poll is an hour away
                first = await subscription.__anext__()
        finally:
            assert proc.wait(timeout=30) == 0
            await subscription.aclose()
        assert (first.type, first.job_id) == ("added", "from-afar")


async def test_without_a_file_watch_another_process_s_job_is_seen_by_data_version(
    sqlite_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a system without inotify: the store compares PRAGMA data_version on a timer.
    monkeypatch.setattr(sqlite_store, "wal_notifier", lambda database: None)
    async with SQLiteStore(sqlite_path, poll_interval=HOUR) as store:
        await store.wait_for_work("q", 0.0)  # the file exists and has been read once
        proc = _spawn("add", sqlite_path, "from-afar")
        try:
            with anyio.fail_after(20):  # the next poll is an hour away
                await store.wait_for_work("q", HOUR)
        finally:
            assert proc.wait(timeout=30) == 0
        assert (await store.get_counts("q"))[JobState.WAITING] == 1


async def _add_one(path: str, job_id: str) -> None:
    async with SQLiteStore(path) as store:
        await Queue("q", store=store).add("n", None, {"job_id": job_id})


if __name__ == "__main__":
    if sys.argv[1] == "add":
        anyio.run(_add_one, *sys.argv[2:])
    else:
        _, command, path, out, stop, mode = sys.argv
        assert command == "serve"
        anyio.run(_serve, path, out, stop, mode)
