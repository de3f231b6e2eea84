"""``cancel_flow``: cancel a flow of 10,000 jobs while 10 of them run in another process.

The flow: a root, ``RUNNING`` children that a worker runs (handlers that wait until
they are cancelled), and the other jobs as children of intermediate jobs of
``FANOUT`` children each, all unstarted. Once the ``RUNNING`` handlers have started, the
root is cancelled (``FlowProducer.cancel``); timed: the cancel call itself, the time
until every running handler saw its cancellation, and until every job of the flow is
``failed`` as cancelled.

The worker runs in another process (``python -m benchmarks.cancel_flow URL QUEUE``),
which prints one line per handler started and per handler cancelled; on the memory
store, which one process owns, it runs in this process. PostgreSQL and Redis runs use
their own schema or key prefix, dropped afterwards; a SQLite run gets a fresh file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from conveyor_core import FlowProducer, Job, Worker
from conveyor_core.store import StoreInterface
from conveyor_stores import open_store

from .stores import isolated_store_and_url
from .workloads import TIMEOUT, fresh_name

RUNNING = 10
"""Jobs of the flow running (in the worker process) when the flow is cancelled."""
FANOUT = 100
"""Children per intermediate job."""
READY_TIMEOUT = 120.0
POLL = 0.005
"""Seconds between two looks at the flow's counts while waiting for it to fail."""


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _hanging(report: Any) -> Any:
    async def handle(job: Job) -> None:
        report(started=job.id, at=time.time())
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            report(cancelled=job.id, at=time.time())
            raise

    return handle


async def serve(url: str, queue: str) -> None:
    """The worker process: run the queue's jobs (each until it is cancelled) until
    standard input closes."""
    async with (
        open_store(url) as store,
        Worker(queue, _hanging(_say), store=store, concurrency=RUNNING),
    ):
        await anyio.to_thread.run_sync(sys.stdin.read)


def _tree(n: int, root_q: str, run_q: str, mid_q: str, leaf_q: str) -> dict[str, Any]:
    """A flow of exactly ``n`` jobs (``n >= RUNNING + 1``)."""
    children: list[dict[str, Any]] = [
        {"name": f"run-{i}", "queue_name": run_q, "opts": {"attempts": 3}} for i in range(RUNNING)
    ]
    left = n - 1 - RUNNING
    m = 0
    while left > 0:
        leaves = min(FANOUT, left - 1)
        children.append(
            {
                "name": f"mid-{m}",
                "queue_name": mid_q,
                "children": [
                    {"name": f"leaf-{m}-{i}", "queue_name": leaf_q} for i in range(leaves)
                ],
            }
        )
        left -= 1 + leaves
        m += 1
    return {"name": "root", "queue_name": root_q, "children": children}


async def _failed(store: StoreInterface, queues: list[str]) -> int:
    total = 0
    for queue in queues:
        total += (await store.get_counts(queue))["failed"]  # type: ignore[index]
    return total


async def run_cancel_flow(url: str, label: str, n: int) -> dict[str, Any]:
    """Cancel a flow of ``n`` jobs with ``RUNNING`` of them running; one figure."""
    n = max(n, RUNNING + 1)
    async with isolated_store_and_url(url, "cancel") as (store, store_url):
        queues = [fresh_name(kind) for kind in ("cancel-root", "cancel-run", "cancel-mid", "leaf")]
        root_q, run_q, mid_q, leaf_q = queues
        producer = FlowProducer(store=store)
        node = await producer.add(_tree(n, root_q, run_q, mid_q, leaf_q))
        shared = store.capabilities.shared
        started: set[str] = set()
        cancelled: dict[str, float] = {}
        lines: BufferedByteReceiveStream | None = None
        process: Process | None = None

        all_started, all_cancelled = anyio.Event(), anyio.Event()

        def note(**fields: Any) -> None:
            if "started" in fields:
                started.add(fields["started"])
                if len(started) >= RUNNING:
                    all_started.set()
            else:
                cancelled[fields["cancelled"]] = fields["at"]
                if len(cancelled) >= RUNNING:
                    all_cancelled.set()

        async with anyio.create_task_group() as group:
            if shared:
                env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
                command = [sys.executable, "-m", "benchmarks.cancel_flow", store_url, run_q]
                process = await anyio.open_process(command, env=env, stderr=None)
                assert process.stdout is not None
                lines = BufferedByteReceiveStream(process.stdout)

                async def read() -> None:
                    assert lines is not None
                    while True:
                        try:
                            line = await lines.receive_until(b"\n", 1 << 16)
                        except (anyio.EndOfStream, anyio.IncompleteRead):
                            return  # the worker process ended
                        note(**json.loads(line))

                group.start_soon(read)
            else:
                worker = Worker(run_q, _hanging(note), store=store, concurrency=RUNNING)
                await group.start(worker.run)
            try:
                with anyio.fail_after(READY_TIMEOUT):
                    await all_started.wait()
                at = time.time()
                begun = perf_counter()
                count = await producer.cancel(node.job.id, root_q, "benchmark")
                call = perf_counter() - begun
                with anyio.fail_after(TIMEOUT):
                    await all_cancelled.wait()
                    while True:
                        if await _failed(store, queues) >= n:
                            break
                        await anyio.sleep(POLL)
                total = perf_counter() - begun
            finally:
                if process is not None:
                    assert process.stdin is not None
                    await process.stdin.aclose()
                    with anyio.move_on_after(10):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                group.cancel_scope.cancel()
        await producer.close()
    handlers = max(cancelled.values()) - at
    return {
        "store": label,
        "workload": "cancel_flow",
        "n": n,
        "running": RUNNING,
        "worker": "other process" if shared else "same process",
        "cancelled": count,
        "seconds": round(total, 4),
        "per_s": round(n / total),
        "cancel_call_s": round(call, 4),
        "handlers_cancelled_s": round(handlers, 4),
    }


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1], sys.argv[2])
