"""``dashboard``: the time to render each dashboard page next to a queue of many jobs.

The queue gets ``--search-jobs`` jobs (as for ``search``), then each page is requested
from the ASGI app in process (no network, no browser: the time is the app's and the
store's) ``PAGE_REPEATS`` times after a warm-up, and the median reported.
"""

from __future__ import annotations

import statistics
from time import perf_counter
from typing import Any
from urllib.parse import urlencode

from conveyor_core import Queue
from conveyor_core.dashboard import create_app

from .search import fill, isolated

PAGE_REPEATS = 10
WARM_UP = 3


async def _get(app: Any, path: str, params: dict[str, Any] | None = None) -> tuple[int, int]:
    """GET ``path`` from the ASGI app; returns the status and the body's size."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(params or {}).encode(),
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    status = 0
    size = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    await app(scope, receive, send)
    return status, size


async def run_dashboard(url: str, label: str, total: int) -> list[dict[str, Any]]:
    """Fill a queue of ``total`` jobs on ``url`` and time each page of the dashboard."""
    lines: list[dict[str, Any]] = []
    # Its own schema or key prefix on a server, a new file for SQLite: the queues page
    # lists every queue of the store, so it must hold only this run's.
    async with isolated(url) as store:
        queue = Queue("bench-dashboard", store=store)
        await fill(queue, total)
        app = create_app(store)
        deep: str | None = None
        for _ in range(20):
            page = await queue.search_jobs(limit=50, cursor=deep)
            deep = page.next_cursor
        some_job = (await queue.search_jobs(limit=1)).jobs[0]
        name = queue.name
        pages: dict[str, tuple[str, dict[str, Any]]] = {
            "queues": ("/", {}),
            "jobs, first page": ("/jobs", {"queue": name}),
            "jobs, 21st page": ("/jobs", {"queue": name, "cursor": deep}),
            "jobs, waiting": ("/jobs", {"queue": name, "state": "waiting"}),
            "jobs, by name": ("/jobs", {"queue": name, "name": "ship-order"}),
            "jobs, rare text": ("/jobs", {"queue": name, "text": f"cust-{total // 2}"}),
            "job": ("/job", {"queue": name, "id": some_job.id}),
            "metrics": ("/metrics", {}),
            "schedulers": ("/schedulers", {}),
        }
        for what, (path, params) in pages.items():
            for _ in range(WARM_UP):
                await _get(app, path, params)
            times = []
            status = size = 0
            for _ in range(PAGE_REPEATS):
                started = perf_counter()
                status, size = await _get(app, path, params)
                times.append(perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"dashboard page {what!r} answered {status}")
            lines.append(
                {
                    "store": label,
                    "workload": "dashboard",
                    "n": total,
                    "page": what,
                    "seconds": round(statistics.median(times), 4),
                    "bytes": size,
                    "median_of": PAGE_REPEATS,
                }
            )
    return lines
