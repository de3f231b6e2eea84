"""Flow control holds across OS processes: the store enforces it, not one process.

Two processes on one SQLite file, PostgreSQL schema or Redis prefix:

* add the same deduplication id many times at once: exactly one job is written;
* run workers (concurrency 4 each) on a queue with a global concurrency of 2: each
  handler writes when it starts and ends, and no moment ever sees more than 2 running;
* run them on jobs of three groups with a group concurrency of 1: no moment ever sees
  two jobs of one group running.

The processes run this very file as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import anyio
import pytest

from conveyor_core import Job, JobState, Queue, Worker

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from reliability.stores import (  # noqa: E402
    drop_location,
    make_store,
    new_location,
    skip_unless_available,
)

QUEUE = "limited"
ADDS = 20
JOBS = 30


def _open_log(path: str) -> TextIO:
    return open(path, "a", buffering=1)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


async def _add_many(location: dict[str, str], out: str, go: str) -> None:
    """Wait for ``go``, then add one deduplication id ADDS times at once."""
    async with make_store(location) as store:
        queue = Queue(QUEUE, store=store)
        _write(out + ".ready", "")
        while not _exists(go):  # noqa: ASYNC110 - a file, not an event
            await anyio.sleep(0.005)
        ids: list[str] = []

        async def add(index: int) -> None:
            job = await queue.add("once", {"i": index}, {"deduplication": {"id": "the-one"}})
            ids.append(job.id)

        async with anyio.create_task_group() as tg:
            for index in range(ADDS):
                tg.start_soon(add, index)
        _write(out, "\n".join(ids))


async def _serve(location: dict[str, str], out: str, stop: str) -> None:
    """Run a worker until ``stop`` exists; log each handler's start and end."""
    with _open_log(out) as log:

        async def handle(job: Job) -> None:
            group = job.opts.group_id or "-"
            log.write(f"{time.time()!r} +1 {group}\n")
            await anyio.sleep(0.02)
            log.write(f"{time.time()!r} -1 {group}\n")

        async with make_store(location) as store, Worker(QUEUE, handle, store=store, concurrency=4):
            _write(out + ".ready", "")
            while not _exists(stop):  # noqa: ASYNC110 - a file, not an event
                await anyio.sleep(0.05)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    pythonpath = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


async def _until(check: Any, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - polling other processes' writes
            await anyio.sleep(0.05)


def _join(procs: list[subprocess.Popen[bytes]]) -> list[int | None]:
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [proc.returncode for proc in procs]


pytestmark = pytest.mark.anyio

KINDS = ["sqlite", "postgres", "redis"]


@pytest.mark.parametrize("kind", KINDS)
async def test_processes_adding_one_deduplication_id_write_one_job(
    kind: str, tmp_path: Path
) -> None:
    skip_unless_available(kind)
    location = new_location(kind, str(tmp_path))
    go = tmp_path / "go"
    outs = [tmp_path / f"ids-{i}.txt" for i in range(2)]
    try:
        async with make_store(location) as store:
            queue = Queue(QUEUE, store=store)
            procs = [_spawn("add", json.dumps(location), str(out), str(go)) for out in outs]
            try:

                async def ready() -> bool:
                    return all(out.with_name(out.name + ".ready").exists() for out in outs)

                await _until(ready, timeout=60)
                go.touch()
            finally:
                codes = _join(procs)
            assert codes == [0, 0]
            returned = {line for out in outs for line in out.read_text().splitlines()}
            jobs = await queue.get_jobs(list(JobState))
            assert len(jobs) == 1
            assert returned == {jobs[0].id}
    finally:
        await drop_location(location)


async def _run_workers(
    kind: str, tmp_path: Path, limit: Any, jobs: list[dict[str, Any]]
) -> dict[str, int]:
    """Two worker processes (concurrency 4 each) run ``jobs`` on a queue ``limit`` was
    called on; the most handlers that ever ran at once, in all and per group."""
    skip_unless_available(kind)
    location = new_location(kind, str(tmp_path))
    stop = tmp_path / "stop"
    outs = [tmp_path / f"runs-{i}.txt" for i in range(2)]
    try:
        async with make_store(location) as store:
            queue = Queue(QUEUE, store=store)
            await limit(queue)
            procs = [_spawn("serve", json.dumps(location), str(out), str(stop)) for out in outs]
            try:

                async def ready() -> bool:
                    return all(out.with_name(out.name + ".ready").exists() for out in outs)

                await _until(ready, timeout=60)
                await queue.add_bulk(jobs)

                async def all_done() -> bool:
                    return (await queue.get_job_counts())["completed"] == len(jobs)

                await _until(all_done, timeout=60)
            finally:
                stop.touch()
                codes = _join(procs)
            assert codes == [0, 0]
            marks: list[tuple[float, int, str]] = []
            for out in outs:
                for line in out.read_text().splitlines():
                    stamp, step, group = line.split()
                    marks.append((float(stamp), int(step), group))
    finally:
        await drop_location(location)
    assert len(marks) == 2 * len(jobs)
    # Ends sort before starts at the same instant: a handler ending and another starting
    # in one tick of the clock did not overlap.
    marks.sort()
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    for _, step, group in marks:
        for key in ("all", group):
            running[key] = running.get(key, 0) + step
            most[key] = max(most.get(key, 0), running[key])
    return most


@pytest.mark.parametrize("kind", KINDS)
async def test_worker_processes_keep_to_the_global_concurrency(kind: str, tmp_path: Path) -> None:
    async def limit(queue: Queue) -> None:
        await queue.set_global_concurrency(2)

    jobs = [{"name": "work", "data": i} for i in range(JOBS)]
    most = await _run_workers(kind, tmp_path, limit, jobs)
    assert most["all"] <= 2


@pytest.mark.parametrize("kind", KINDS)
async def test_worker_processes_keep_each_group_to_its_concurrency(
    kind: str, tmp_path: Path
) -> None:
    async def limit(queue: Queue) -> None:
        await queue.set_group_limits(concurrency=1)

    groups = ("acme", "globex", "initech")
    jobs = [{"name": "work", "data": i, "opts": {"group_id": groups[i % 3]}} for i in range(JOBS)]
    most = await _run_workers(kind, tmp_path, limit, jobs)
    assert {group: most[group] for group in groups} == dict.fromkeys(groups, 1)
    # The three groups did run side by side: the limit is per group, not per queue.
    assert most["all"] >= 2


if __name__ == "__main__":
    mode, raw, out_path, flag_path = sys.argv[1:]
    run = _add_many if mode == "add" else _serve
    anyio.run(run, json.loads(raw), out_path, flag_path)
