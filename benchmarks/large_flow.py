"""``large_flow``: one parent with very many children (100,000 by default).

Timed: adding the flow; running it (children and parent workers, concurrency 10 each,
until the parent has run; the parent reads its dependency counts, not its children);
then, on the finished flow, ``Job.get_dependency_counts()`` and one page of
``PAGE`` children of ``Job.get_dependencies(cursor=..., limit=...)``, both the first
page and a page half-way through the walk. Each read is timed ``REPEATS`` times after
``WARM_UP`` untimed calls; the median is reported, and the slowest call
(``max_seconds``). PostgreSQL and Redis runs use their
own schema or key prefix, dropped afterwards; a SQLite run gets a fresh file.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import anyio

from conveyor_core import FlowProducer, Job, Worker
from conveyor_core.store import StoreInterface

from .stores import isolated_store
from .workloads import CONCURRENCY, TIMEOUT, fresh_name

PAGE = 100
REPEATS = 20
WARM_UP = 5
WALK_PAGE = 1000
"""Children per call while walking to the page half-way through (untimed)."""


def _long_calls(url: str) -> dict[str, Any]:
    """Store options that let one call run for minutes: adding 100,000 children is one
    atomic call, longer than a store's default bound on a busy machine."""
    scheme = url.partition("://")[0].lower()
    if scheme.startswith("postgres"):
        return {"timeout": LONG_CALL}
    if scheme.startswith("redis"):
        return {"command_timeout": LONG_CALL}
    return {}


LONG_CALL = 600.0
"""Seconds one store call of the run may take."""


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """The median and the slowest of ``REPEATS`` timed calls (after ``WARM_UP``)."""
    for _ in range(WARM_UP):
        await call()
    times = []
    for _ in range(REPEATS):
        started = perf_counter()
        await call()
        times.append(perf_counter() - started)
    return statistics.median(times), max(times)


async def _run(store: StoreInterface, parent_queue: str, child_queue: str) -> float:
    done = anyio.Event()

    async def child(job: Job) -> Any:
        return job.data["i"]

    async def parent(job: Job) -> int:
        counts = await job.get_dependency_counts()
        done.set()
        return counts.processed

    started = perf_counter()
    async with (
        Worker(child_queue, child, store=store, concurrency=CONCURRENCY),
        Worker(parent_queue, parent, store=store, concurrency=CONCURRENCY),
    ):
        with anyio.fail_after(TIMEOUT):
            await done.wait()
        elapsed = perf_counter() - started
    return elapsed


async def run_large_flow(url: str, label: str, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Add, run and inspect one flow of each size on ``url``; one line per figure."""
    lines: list[dict[str, Any]] = []
    for children in sizes:
        async with isolated_store(url, "large", **_long_calls(url)) as store:
            parent_queue, child_queue = fresh_name("large-parent"), fresh_name("large-child")
            producer = FlowProducer(store=store)
            tree = {
                "name": "parent",
                "queue_name": parent_queue,
                "children": [
                    {"name": f"c{i}", "queue_name": child_queue, "data": {"i": i}}
                    for i in range(children)
                ],
            }
            started = perf_counter()
            node = await producer.add(tree)
            added = perf_counter() - started
            base = {"store": label, "children": children}
            lines.append(
                {
                    **base,
                    "workload": "large_flow_add",
                    "seconds": round(added, 4),
                    "per_s": round((children + 1) / added),
                }
            )
            ran = await _run(store, parent_queue, child_queue)
            lines.append(
                {
                    **base,
                    "workload": "large_flow_run",
                    "seconds": round(ran, 4),
                    "per_s": round((children + 1) / ran),
                    "concurrency": CONCURRENCY,
                }
            )
            parent = node.job
            counts = await parent.get_dependency_counts()
            seconds, slowest = await _timed(parent.get_dependency_counts)
            lines.append(
                {
                    **base,
                    "workload": "large_flow_counts",
                    "seconds": round(seconds, 6),
                    "max_seconds": round(slowest, 6),
                    "per_s": round(1 / seconds),
                    "processed": counts.processed,
                    "median_of": REPEATS,
                }
            )
            deep: str | None = None
            walked = 0
            while walked < children // 2:
                step = min(WALK_PAGE, children // 2 - walked)
                page = await parent.get_dependencies(cursor=deep, limit=step)
                deep = page.next_cursor
                walked += len(page.processed) + len(page.unprocessed)
                if deep is None:
                    break
            for where, cursor, position in (("first", None, 0), ("deep", deep, walked)):
                page = await parent.get_dependencies(cursor=cursor, limit=PAGE)

                async def read(cursor: str | None = cursor, job: Job = parent) -> None:
                    await job.get_dependencies(cursor=cursor, limit=PAGE)

                seconds, slowest = await _timed(read)
                lines.append(
                    {
                        **base,
                        "workload": "large_flow_page",
                        "page": where,
                        "position": position,
                        "limit": PAGE,
                        "seconds": round(seconds, 6),
                        "max_seconds": round(slowest, 6),
                        "per_s": round(1 / seconds),
                        "children_read": len(page.processed),
                        "median_of": REPEATS,
                    }
                )
            await producer.close()
    return lines
