"""``dag``: a diamond-heavy DAG of 10,000 jobs (by default) added and run.

The DAG is ``CHAINS`` chains of diamonds side by side: each chain starts with one job,
then repeats a diamond (two jobs that both depend on the chain's last job, and a join
that depends on both); a final sink depends on the end of every chain. So nearly every
job is shared by two dependents or waits for two. Timed: ``FlowProducer.add_dag`` of the
whole DAG (one atomic step), then running it (one worker, concurrency 10, until the sink
has run; each job reads its dependencies' values). Several sizes show how time grows.
PostgreSQL and Redis runs use their own schema or key prefix, dropped afterwards; a
SQLite run gets a fresh file.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import anyio

from conveyor_core import FlowProducer, Job, Worker
from conveyor_core.store import StoreInterface

from .stores import isolated_store
from .workloads import CONCURRENCY, TIMEOUT, fresh_name

CHAINS = 20


def diamond_dag(jobs: int, queue: str) -> list[dict[str, Any]]:
    """About ``jobs`` DAG entries: ``CHAINS`` chains of diamonds and one sink."""
    diamonds = max(1, round((jobs - 1 - CHAINS) / (3 * CHAINS)))
    nodes: list[dict[str, Any]] = []
    ends: list[str] = []
    for chain in range(CHAINS):
        last = f"c{chain}"
        nodes.append({"id": last, "name": "start", "queue_name": queue})
        for step in range(diamonds):
            left, right, join = (f"c{chain}.{step}.{part}" for part in ("l", "r", "j"))
            nodes.append({"id": left, "name": "left", "queue_name": queue, "depends_on": [last]})
            nodes.append({"id": right, "name": "right", "queue_name": queue, "depends_on": [last]})
            nodes.append(
                {"id": join, "name": "join", "queue_name": queue, "depends_on": [left, right]}
            )
            last = join
        ends.append(last)
    nodes.append({"id": "sink", "name": "sink", "queue_name": queue, "depends_on": ends})
    return nodes


async def _run(store: StoreInterface, queue: str) -> float:
    done = anyio.Event()

    async def handle(job: Job) -> int:
        values = await job.get_children_values()
        if job.name == "sink":
            done.set()
        return 1 + sum(int(value) for value in values.values())

    started = perf_counter()
    async with Worker(queue, handle, store=store, concurrency=CONCURRENCY):
        with anyio.fail_after(TIMEOUT):
            await done.wait()
        elapsed = perf_counter() - started
    return elapsed


async def run_dag(url: str, label: str, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Add and run one diamond-heavy DAG of each size on ``url``; one line per figure."""
    lines: list[dict[str, Any]] = []
    for size in sizes:
        async with isolated_store(url, "dag") as store:
            queue = fresh_name("dag")
            nodes = diamond_dag(size, queue)
            producer = FlowProducer(store=store)
            started = perf_counter()
            await producer.add_dag(nodes)
            added = perf_counter() - started
            base = {"store": label, "n": len(nodes), "chains": CHAINS}
            lines.append(
                {
                    **base,
                    "workload": "dag_add",
                    "seconds": round(added, 4),
                    "per_s": round(len(nodes) / added),
                }
            )
            ran = await _run(store, queue)
            lines.append(
                {
                    **base,
                    "workload": "dag_run",
                    "seconds": round(ran, 4),
                    "per_s": round(len(nodes) / ran),
                    "concurrency": CONCURRENCY,
                }
            )
            await producer.close()
    return lines
