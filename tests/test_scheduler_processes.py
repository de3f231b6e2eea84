"""Several worker processes keep one job scheduler going: one job per tick, no more.

Three OS processes run workers on one SQLite file or one PostgreSQL schema (Redis too)
with a scheduler ticking every 0.2 s and no scheduler process of any kind. The worker
processes run this very file as a script; each appends one line per handler run to a
file of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
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

QUEUE = "ticks"
EVERY = 0.2


def _open_log(path: str) -> TextIO:
    return open(path, "a", buffering=1)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _touch(path: str) -> None:
    Path(path).touch()


async def _serve(location: dict[str, str], out: str, stop: str) -> None:
    """Run a worker until ``stop`` exists; log every job it runs."""
    with _open_log(out) as log:

        async def handle(job: Job) -> None:
            log.write(f"{job.id}\n")

        async with make_store(location) as store, Worker(QUEUE, handle, store=store):
            _touch(out + ".ready")
            while not _exists(stop):  # noqa: ASYNC110 - a file, not an event
                await anyio.sleep(0.05)


def _spawn(location: dict[str, str], out: Path, stop: Path) -> subprocess.Popen[bytes]:
    pythonpath = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    args = [sys.executable, __file__, json.dumps(location), str(out), str(stop)]
    return subprocess.Popen(args, env=env)


async def _until(check: Any, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - polling other processes' writes
            await anyio.sleep(0.05)


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_worker_processes_fire_each_tick_exactly_once(kind: str, tmp_path: Path) -> None:
    skip_unless_available(kind)
    location = new_location(kind, str(tmp_path))
    stop = tmp_path / "stop"
    outs = [tmp_path / f"runs-{i}.txt" for i in range(3)]
    try:
        async with make_store(location) as store:
            queue = Queue(QUEUE, store=store)
            procs = [_spawn(location, out, stop) for out in outs]
            try:

                async def all_ready() -> bool:
                    return all(out.with_name(out.name + ".ready").exists() for out in outs)

                await _until(all_ready, timeout=60)
                await queue.upsert_job_scheduler("poll", every=EVERY, template={"name": "poll"})

                async def enough_ran() -> bool:
                    return (await queue.get_job_counts())[JobState.COMPLETED.value] >= 15

                await _until(enough_ran, timeout=60)
            finally:
                stop.touch()
                for proc in procs:
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            assert [proc.returncode for proc in procs] == [0, 0, 0]
            # No worker runs now: what was fired is all there is to count.
            (scheduler,) = await queue.get_job_schedulers()

            jobs = await queue.get_jobs(list(JobState))
            runs: Counter[str] = Counter()
            for out in outs:
                runs.update(line for line in out.read_text().splitlines() if line)
            ids = {job.id for job in jobs}
            ticks = sorted(int(job_id.rsplit(":", 1)[1]) for job_id in ids)
            # Every job created is a tick of the scheduler, each tick has one job, and
            # each job ran at most once (the last ones may still have been waiting).
            assert all(job_id.startswith("sched:poll:") for job_id in ids)
            assert len(ticks) == len(set(ticks)) == len(jobs) == scheduler.iterations
            assert [line for line, times in runs.items() if times != 1] == []
            assert set(runs) <= ids
            # Consecutive ticks are whole intervals apart (to the millisecond).
            step = round(EVERY * 1000)
            gaps = {later - earlier for earlier, later in itertools.pairwise(ticks)}
            assert all(
                round(gap / step) >= 1 and abs(gap - step * round(gap / step)) <= 1 for gap in gaps
            ), gaps
    finally:
        await drop_location(location)


if __name__ == "__main__":
    _, raw, out_path, stop_path = sys.argv
    anyio.run(_serve, json.loads(raw), out_path, stop_path)
