"""Pickup across processes: how soon an idle worker in another process starts a new job.

The ``pickup`` workload runs this module as a worker process on the store's URL
(``python -m benchmarks.pickup URL QUEUE IDLE_SECONDS``). The worker process first sits
idle for ``IDLE_SECONDS`` and reports the share of one core it used meanwhile (its CPU
time from ``time.process_time()`` over the wall-clock time), then prints one line per
job as its handler starts, until its standard input closes.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from conveyor_core import Job, Queue, Worker
from conveyor_core.store import StoreInterface
from conveyor_stores import open_store

READY_TIMEOUT = 60.0
"""Seconds the worker process may take to start and report its idle CPU time."""

GAP = (0.01, 0.1)
"""The producer waits a random time in this range (seconds) before each job."""


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def serve(url: str, queue: str, idle_seconds: float) -> None:
    """The worker process: idle for ``idle_seconds``, then report each job's start."""

    async def handle(job: Job) -> None:
        _say(job=job.id, started=time.time())

    async with open_store(url) as store, Worker(queue, handle, store=store, concurrency=1):
        _say(ready=True)
        cpu, wall = time.process_time(), perf_counter()
        await anyio.sleep(idle_seconds)
        _say(idle_cpu=(time.process_time() - cpu) / (perf_counter() - wall))
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes it


def _spawn_command(url: str, queue: str, idle_seconds: float) -> list[str]:
    return [sys.executable, "-m", "benchmarks.pickup", url, queue, str(idle_seconds)]


async def _next(lines: BufferedByteReceiveStream) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await lines.receive_until(b"\n", 1 << 16))
    return message


async def measure(
    store: StoreInterface, url: str, queue_name: str, jobs: int, idle_seconds: float
) -> dict[str, float]:
    """Start the worker process, let it idle, then add ``jobs`` jobs one at a time at
    random intervals; pickup latencies (add called to handler started) and idle CPU."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent)])}
    queue = Queue(queue_name, store=store)
    process: Process = await anyio.open_process(
        _spawn_command(url, queue_name, idle_seconds), env=env, stderr=None
    )
    assert process.stdout is not None and process.stdin is not None
    lines = BufferedByteReceiveStream(process.stdout)
    try:
        with anyio.fail_after(READY_TIMEOUT + idle_seconds):
            assert (await _next(lines)).get("ready")
            idle_cpu = float((await _next(lines))["idle_cpu"])
        added: dict[str, float] = {}
        started: dict[str, float] = {}

        async def read_starts() -> None:
            while len(started) < jobs:
                message = await _next(lines)
                started[message["job"]] = message["started"]

        with anyio.fail_after(READY_TIMEOUT + jobs * (GAP[1] + 1.0)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_starts)
                for _ in range(jobs):
                    await anyio.sleep(random.uniform(*GAP))
                    at = time.time()
                    job = await queue.add("ping")
                    added[job.id] = at
    finally:
        await process.stdin.aclose()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    latencies = sorted(started[job_id] - at for job_id, at in added.items())
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return {
        "pickup_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "pickup_p99_ms": round(p99 * 1000, 2),
        "pickup_max_ms": round(latencies[-1] * 1000, 2),
        "idle_cpu_pct": round(idle_cpu * 100, 3),
    }


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1], sys.argv[2], float(sys.argv[3]))
