"""``schedule``: a job scheduler ticking every 100 ms, kept going by worker processes.

Three worker processes (``--schedule-processes``) share one store (for ``memory``, which
cannot be shared, three workers in this process) and nothing else: no scheduler process.
The scheduler is set once every worker runs, its first tick a few seconds ahead so
that every worker knows of it by then; after ``--schedule-seconds`` of ticks the workers
stop and the run reports:

* ``ticks``: ticks fired (the scheduler's ``iterations``);
* ``jobs``: jobs created in the queue (must equal ``ticks``: one job per tick);
* ``max_lateness_ms`` / ``median_lateness_ms``: how long after its tick each tick's job
  was written (the job's ``created_at`` minus the tick time in its id).

A worker process runs this module: ``python -m benchmarks.schedule URL READY STOP``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from conveyor_core import Job, JobState, Queue, Worker
from conveyor_core.store import StoreInterface
from conveyor_stores import open_store

from .search import isolated
from .stores import SHORTCUTS, VARIANTS

QUEUE = "bench-schedule"
EVERY = 0.1
STARTUP = 6.0
"""Seconds between setting the scheduler (once every worker runs) and its first tick:
workers that are already running look for new schedulers every ``drain_delay`` (5 s)."""
ROOT = Path(__file__).resolve().parent.parent


async def _noop(job: Job) -> None:
    return None


def _touch(path: str) -> None:
    Path(path).touch()


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def _serve(url: str, ready: str, stop: str) -> None:
    """One worker process: run a worker until the ``stop`` file exists."""
    async with open_store(url) as store, Worker(QUEUE, _noop, store=store):
        _touch(ready)
        while not _exists(stop):  # noqa: ASYNC110 - a file, not an event
            await anyio.sleep(0.05)


@asynccontextmanager
async def _shared(url: str) -> AsyncIterator[tuple[str, StoreInterface]]:
    """A store on a fresh file, schema or key prefix, and the URL other processes use."""
    if url in VARIANTS:
        url = SHORTCUTS[VARIANTS[url][0]]
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            path_url = f"sqlite:///{tmp}/schedule.db"
            async with open_store(path_url) as store:
                yield path_url, store
        return
    async with isolated(url) as store:
        if scheme in ("postgresql", "postgres"):
            full = f"{url}{'&' if '?' in url else '?'}schema={store.schema}"  # type: ignore[attr-defined]
        elif scheme in ("redis", "rediss"):
            full = f"{url}{'&' if '?' in url else '?'}prefix={store.prefix}"  # type: ignore[attr-defined]
        else:
            full = url
        yield full, store


async def _workers_in_process(store: StoreInterface, count: int, seconds: float) -> None:
    async with AsyncExitStack() as stack:
        for _ in range(count):
            await stack.enter_async_context(Worker(QUEUE, _noop, store=store))
        await anyio.sleep(seconds)


def _spawn(url: str, ready: Path, stop: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    args = [sys.executable, "-m", "benchmarks.schedule", url, str(ready), str(stop)]
    return subprocess.Popen(args, env=env, cwd=ROOT)


async def _wait_ready(readies: list[Path], procs: list[subprocess.Popen[bytes]]) -> None:
    with anyio.fail_after(60):
        while not all(ready.exists() for ready in readies):
            if any(proc.poll() is not None for proc in procs):
                raise RuntimeError("a worker process of the schedule benchmark exited early")
            await anyio.sleep(0.05)


async def run_schedule(url: str, label: str, seconds: float, processes: int) -> dict[str, Any]:
    """Run the workload on ``url``; returns its JSON line."""
    async with _shared(url) as (shared_url, store):
        queue = Queue(QUEUE, store=store)

        async def set_scheduler() -> float:
            first_tick = time.time() + STARTUP
            await queue.upsert_job_scheduler(
                "tick",
                every=EVERY,
                template={"name": "tick"},
                start_date=first_tick,
                end_date=first_tick + seconds,
            )
            return first_tick

        if label == "memory":
            first_tick = await set_scheduler()
            await _workers_in_process(store, processes, STARTUP + seconds + 1.0)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                stop = Path(tmp) / "stop"
                readies = [Path(tmp) / f"ready-{i}" for i in range(processes)]
                procs = [_spawn(shared_url, ready, stop) for ready in readies]
                try:
                    await _wait_ready(readies, procs)
                    first_tick = await set_scheduler()
                    await anyio.sleep(max(0.0, first_tick + seconds + 1.0 - time.time()))
                finally:
                    stop.touch()
                    for proc in procs:
                        try:
                            proc.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
        (scheduler,) = await queue.get_job_schedulers()
        jobs = await queue.get_jobs(list(JobState))
        lateness = sorted(
            job.record.created_at - int(job.id.rsplit(":", 1)[1]) / 1000 for job in jobs
        )
        return {
            "store": label,
            "workload": "schedule",
            "seconds": seconds,
            "every": EVERY,
            "processes": 1 if label == "memory" else processes,
            "workers": processes,
            "ticks": scheduler.iterations,
            "jobs": len(jobs),
            "max_lateness_ms": round(lateness[-1] * 1000, 1) if lateness else None,
            "median_lateness_ms": round(statistics.median(lateness) * 1000, 1)
            if lateness
            else None,
        }


if __name__ == "__main__":
    _, store_url, ready_path, stop_path = sys.argv
    anyio.run(_serve, store_url, ready_path, stop_path)
