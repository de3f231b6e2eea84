"""``search``: one page of ``Queue.search_jobs`` on a queue of many jobs.

The queue gets ``--search-jobs`` jobs (1,000,000 by default; filling it takes minutes),
with names and data shaped like an application's. Each query is timed ``PAGE_REPEATS``
times and the median reported, for a first page and for a page deep in the walk, with
and without text. PostgreSQL and Redis runs use their own schema or key prefix, dropped
afterwards.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from time import perf_counter
from typing import Any

from conveyor_core import Queue
from conveyor_core.store import StoreInterface

from .stores import isolated_store

PAGE = 50
PAGE_REPEATS = 10
WARM_UP = 10
"""Untimed calls first, so every pooled connection has planned the query."""
FILL_CHUNK = 10_000
NAMES = ("send-email", "charge-card", "ship-order", "refresh-cache")


def isolated(url: str) -> AbstractAsyncContextManager[StoreInterface]:
    """A store of its own for one run (see :func:`~benchmarks.stores.isolated_store`)."""
    return isolated_store(url, "search")


async def fill(queue: Queue, total: int) -> float:
    """Add ``total`` jobs in bulk; returns the seconds it took."""
    started = perf_counter()
    for first in range(0, total, FILL_CHUNK):
        await queue.add_bulk(
            [
                {
                    "name": NAMES[i % len(NAMES)],
                    "data": {"customer": f"cust-{i}", "order": i, "region": "eu-west"},
                }
                for i in range(first, min(first + FILL_CHUNK, total))
            ]
        )
    return perf_counter() - started


async def _time_page(queue: Queue, **query: Any) -> tuple[float, int]:
    times = []
    found = 0
    for _ in range(WARM_UP):
        await queue.search_jobs(limit=PAGE, **query)
    for _ in range(PAGE_REPEATS):
        started = perf_counter()
        page = await queue.search_jobs(limit=PAGE, **query)
        times.append(perf_counter() - started)
        found = len(page.jobs)
    return statistics.median(times), found


async def run_search(url: str, label: str, total: int) -> AsyncIterator[dict[str, Any]]:
    """Fill a queue of ``total`` jobs on ``url`` and time pages of the queries; yields
    each figure as soon as it is known."""
    async with isolated(url) as store:
        queue = Queue("bench-search", store=store)
        fill_seconds = await fill(queue, total)
        yield (
            {
                "store": label,
                "workload": "search_fill",
                "n": total,
                "seconds": round(fill_seconds, 2),
                "per_s": round(total / fill_seconds),
            }
        )
        deep: str | None = None
        for _ in range(20):
            page = await queue.search_jobs(limit=PAGE, cursor=deep)
            deep = page.next_cursor
        queries: dict[str, dict[str, Any]] = {
            "first page": {},
            "21st page": {"cursor": deep},
            "by name": {"name": "ship-order"},
            "by state": {"states": ["waiting"]},
            "rare text": {"text": f"cust-{total // 2}"},
            "common text": {"text": "eu-west"},
        }
        for what, query in queries.items():
            seconds, found = await _time_page(queue, **query)
            yield (
                {
                    "store": label,
                    "workload": "search",
                    "n": total,
                    "query": what,
                    "seconds": round(seconds, 4),
                    "jobs": found,
                    "median_of": PAGE_REPEATS,
                }
            )
