"""The timed workloads. Each adds its own jobs to fresh queues and returns its figures.

They mirror the peer scripts in the shared bench directory one for one, so a figure can
be set beside a peer's: ``enqueue_seq``, ``process``, ``flow_add`` and ``flow_run``.
``flow_big`` adds and runs one very wide flow, to show how both grow with its size.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter, process_time
from typing import Any

import anyio

from conveyor_core import FlowProducer, Job, Queue, Worker
from conveyor_core.store import StoreInterface
from conveyor_stores.memory import MemoryStore

from .lag import LagSamples, ticker
from .pickup import measure
from .stores import analyze

CONCURRENCY = 10
"""Worker concurrency, as in the peer scripts."""
GROUPS = 100
"""Groups of the ``process_groups`` workload."""

BULK_CHUNK = 1000
"""Jobs per ``add_bulk`` call when filling a queue before a timed run."""

TIMEOUT = 900.0
"""Seconds a single timed phase may take before the run is abandoned."""


@dataclass(frozen=True)
class Params:
    """Sizes of one benchmark run."""

    jobs: int = 2000
    children: int = 500
    big_children: tuple[int, ...] = (10_000,)
    lag_jobs: int = 1700
    """Jobs of the ``add_bulk`` call and of the flow that ``loop_lag`` adds."""
    pickup_jobs: int = 200
    """Jobs ``pickup`` adds one at a time."""
    idle_seconds: float = 10.0
    """Seconds ``pickup``'s worker process idles while its CPU time is measured."""
    url: str = ""
    """The store's URL, for workloads that start another process on the same store."""
    search_jobs: int = 1_000_000


@dataclass
class Figure:
    """One measured figure. ``count`` is what ``per_s`` divides by ``seconds``."""

    workload: str
    seconds: float
    count: int
    size: dict[str, int]
    """``{"n": N}`` or ``{"children": C}``: identifies the figure across repeats."""
    extra: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    """Further measured figures (e.g. loop lag in ms); repeats report their median."""


Workload = Callable[[StoreInterface, Params], Awaitable[list[Figure]]]


def fresh_name(kind: str) -> str:
    """A queue name no earlier run has used."""
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


async def _cleanup(store: StoreInterface, *names: str) -> None:
    """Delete what a run left behind in a shared database (untimed)."""
    for name in names:
        queue = Queue(name, store=store)
        await queue.obliterate(force=True)
        await queue.close()


async def _fill(queue: Queue, n: int, groups: int | None = None) -> None:
    """Add ``n`` no-op jobs quickly (untimed); with ``groups``, job ``i`` belongs to
    group ``i % groups``. The store's statistics are refreshed after (:func:`analyze`)."""
    for start in range(0, n, BULK_CHUNK):
        await queue.add_bulk(
            [
                {"name": "noop", "data": {"i": i}}
                if groups is None
                else {"name": "noop", "data": {"i": i}, "opts": {"group_id": f"g{i % groups}"}}
                for i in range(start, min(n, start + BULK_CHUNK))
            ]
        )
    await analyze(queue.store)


async def enqueue_seq(store: StoreInterface, params: Params) -> list[Figure]:
    """N jobs added one at a time, each awaited."""
    return await _add_one_at_a_time(store, params, "enqueue_seq", lambda i: None)


async def enqueue_dedup(store: StoreInterface, params: Params) -> list[Figure]:
    """``enqueue_seq`` with a deduplication id per job: N adds one at a time, each
    checking and taking its own id (none is a duplicate, so N jobs are written)."""
    return await _add_one_at_a_time(
        store, params, "enqueue_dedup", lambda i: {"deduplication": {"id": f"d{i}"}}
    )


async def _add_one_at_a_time(
    store: StoreInterface,
    params: Params,
    workload: str,
    opts_of: Callable[[int], dict[str, Any] | None],
) -> list[Figure]:
    """N adds, each awaited, job ``i`` with the options ``opts_of(i)``; the figure gives
    the CPU time of this process per job too (see ``_process``)."""
    queue = Queue(fresh_name(workload.replace("_", "-")), store=store)
    started, cpu = perf_counter(), process_time()
    for i in range(params.jobs):
        await queue.add("noop", {"i": i}, opts_of(i))
    elapsed, cpu = perf_counter() - started, process_time() - cpu
    await _cleanup(store, queue.name)
    n = params.jobs
    return [Figure(workload, elapsed, n, {"n": n}, stats={"cpu_us_per_job": cpu / n * 1e6})]


async def process(store: StoreInterface, params: Params) -> list[Figure]:
    """One worker, concurrency 10, draining N pre-added no-op jobs.

    Timed from the worker's start until the N-th handler has run, as the peers do.
    """
    return await _process(store, params, "process")


async def process_limited(store: StoreInterface, params: Params) -> list[Figure]:
    """``process`` on a queue with a global concurrency of 10: the store checks the
    queue's active count at every take."""
    return await _process(store, params, "process_limited", global_concurrency=CONCURRENCY)


async def process_groups(store: StoreInterface, params: Params) -> list[Figure]:
    """``process`` with the N jobs spread over 100 groups: every take serves the groups
    round-robin (TAKE BY LANES)."""
    return await _process(store, params, "process_groups", groups=GROUPS)


async def _process(
    store: StoreInterface,
    params: Params,
    workload: str,
    *,
    global_concurrency: int | None = None,
    groups: int | None = None,
) -> list[Figure]:
    n = params.jobs
    queue = Queue(fresh_name(workload.replace("_", "-")), store=store)
    if global_concurrency is not None:
        await queue.set_global_concurrency(global_concurrency)
    await _fill(queue, n, groups)
    done = anyio.Event()
    handled = 0

    async def noop(job: Job) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    started = perf_counter()
    cpu = process_time()
    async with Worker(queue.name, noop, store=store, concurrency=CONCURRENCY):
        with anyio.fail_after(TIMEOUT):
            await done.wait()
        elapsed = perf_counter() - started
        cpu = process_time() - cpu
    await _cleanup(store, queue.name)
    # CPU time of this process per job: what the client side costs, little changed by
    # other processes on a busy machine (unlike the wall-clock figure).
    stats = {"cpu_us_per_job": cpu / n * 1e6}
    extra: dict[str, Any] = {"concurrency": CONCURRENCY}
    if global_concurrency is not None:
        extra["global_concurrency"] = global_concurrency
    if groups is not None:
        extra["groups"] = groups
    return [Figure(workload, elapsed, n, {"n": n}, extra, stats)]


def _wide_flow(parent_queue: str, child_queue: str, children: int) -> dict[str, Any]:
    return {
        "name": "parent",
        "queue_name": parent_queue,
        "data": {},
        "children": [
            {"name": f"c{i}", "queue_name": child_queue, "data": {"i": i}} for i in range(children)
        ],
    }


async def _add_flow(store: StoreInterface, children: int) -> tuple[float, str, str]:
    """Add one wide flow; returns the seconds it took and its two queue names."""
    parent_queue, child_queue = fresh_name("parent"), fresh_name("child")
    producer = FlowProducer(store=store)
    tree = _wide_flow(parent_queue, child_queue, children)
    started = perf_counter()
    await producer.add(tree)
    elapsed = perf_counter() - started
    await producer.close()
    return elapsed, parent_queue, child_queue


async def _run_flow(
    store: StoreInterface, parent_queue: str, child_queue: str
) -> tuple[float, int]:
    """Start the child and parent workers; seconds until the parent read its children's
    values, and how many values it read."""
    done = anyio.Event()
    values_read = 0

    async def child(job: Job) -> Any:
        return job.data["i"]

    async def parent(job: Job) -> int:
        nonlocal values_read
        values_read = len(await job.get_children_values())
        done.set()
        return values_read

    started = perf_counter()
    async with (
        Worker(child_queue, child, store=store, concurrency=CONCURRENCY),
        Worker(parent_queue, parent, store=store, concurrency=CONCURRENCY),
    ):
        with anyio.fail_after(TIMEOUT):
            await done.wait()
        elapsed = perf_counter() - started
    return elapsed, values_read


async def flow_add(store: StoreInterface, params: Params) -> list[Figure]:
    """Adding one flow: a parent with CHILDREN children in another queue."""
    c = params.children
    elapsed, parent_queue, child_queue = await _add_flow(store, c)
    await _cleanup(store, parent_queue, child_queue)
    return [Figure("flow_add", elapsed, c + 1, {"children": c})]


async def flow_run(store: StoreInterface, params: Params) -> list[Figure]:
    """From starting the workers until the parent has run and read its children's values."""
    c = params.children
    _, parent_queue, child_queue = await _add_flow(store, c)
    elapsed, values = await _run_flow(store, parent_queue, child_queue)
    await _cleanup(store, parent_queue, child_queue)
    return [Figure("flow_run", elapsed, c + 1, {"children": c}, {"values": values})]


async def flow_big(store: StoreInterface, params: Params) -> list[Figure]:
    """One very wide flow per size: the time to add it, and to run it to the parent's end."""
    figures: list[Figure] = []
    for c in params.big_children:
        added, parent_queue, child_queue = await _add_flow(store, c)
        ran, values = await _run_flow(store, parent_queue, child_queue)
        await _cleanup(store, parent_queue, child_queue)
        figures.append(Figure("flow_big_add", added, c + 1, {"children": c}))
        figures.append(Figure("flow_big_run", ran, c + 1, {"children": c}, {"values": values}))
    return figures


def _add_stats(lags: LagSamples) -> dict[str, float]:
    return {"max_lag_ms": lags.max_ms, "max_busy_ms": lags.busy_max_ms, "gc_max_ms": lags.gc_max_ms}


async def loop_lag(store: StoreInterface, params: Params) -> list[Figure]:
    """How long the event loop is blocked (a ticker asks to wake every millisecond):

    * ``lag_add_bulk``: the longest lateness while ``Queue.add_bulk`` adds ``lag_jobs``
      jobs in one call;
    * ``lag_flow_add``: the same while ``FlowProducer.add`` adds a flow of ``lag_jobs``
      jobs (a parent and ``lag_jobs - 1`` children in another queue);
    * ``lag_process``: p50, p99 and max lateness while one worker (concurrency 10)
      drains N pre-added jobs.
    """
    n = params.lag_jobs
    figures: list[Figure] = []

    queue = Queue(fresh_name("lag-bulk"), store=store)
    items = [{"name": "noop", "data": {"i": i}} for i in range(n)]
    async with ticker() as lags:
        started = perf_counter()
        await queue.add_bulk(items)
        elapsed = perf_counter() - started
    await _cleanup(store, queue.name)
    figures.append(
        Figure(
            "lag_add_bulk",
            elapsed,
            n,
            {"n": n},
            stats=_add_stats(lags),
        )
    )

    parent_queue, child_queue = fresh_name("lag-parent"), fresh_name("lag-child")
    producer = FlowProducer(store=store)
    tree = _wide_flow(parent_queue, child_queue, n - 1)
    async with ticker() as lags:
        started = perf_counter()
        await producer.add(tree)
        elapsed = perf_counter() - started
    await _cleanup(store, parent_queue, child_queue)
    figures.append(
        Figure(
            "lag_flow_add",
            elapsed,
            n,
            {"children": n - 1},
            stats=_add_stats(lags),
        )
    )

    jobs = params.jobs
    queue = Queue(fresh_name("lag-process"), store=store)
    await _fill(queue, jobs)
    done = anyio.Event()
    handled = 0

    async def noop(job: Job) -> None:
        nonlocal handled
        handled += 1
        if handled == jobs:
            done.set()

    async with ticker() as lags:
        started = perf_counter()
        async with Worker(queue.name, noop, store=store, concurrency=CONCURRENCY):
            with anyio.fail_after(TIMEOUT):
                await done.wait()
            elapsed = perf_counter() - started
    await _cleanup(store, queue.name)
    figures.append(
        Figure(
            "lag_process",
            elapsed,
            jobs,
            {"n": jobs},
            {"concurrency": CONCURRENCY, "ticks": len(lags.lags)},
            {**lags.stats_ms(), "gc_max_ms": lags.gc_max_ms},
        )
    )
    return figures


async def pickup(store: StoreInterface, params: Params) -> list[Figure]:
    """A worker in another process, idle, then given ``pickup_jobs`` jobs one at a time at
    random intervals: how long from ``add`` to the handler's start (p50, p99, max), and
    the share of a core the idle worker process used. The memory store has no other
    processes: it gives no figure."""
    if isinstance(store, MemoryStore):
        return []
    n = params.pickup_jobs
    name = fresh_name("pickup")
    started = perf_counter()
    stats = await measure(store, params.url, name, n, params.idle_seconds)
    elapsed = perf_counter() - started
    await _cleanup(store, name)
    return [Figure("pickup", elapsed, n, {"n": n}, {"idle_seconds": params.idle_seconds}, stats)]


WORKLOADS: dict[str, Workload] = {
    "enqueue_seq": enqueue_seq,
    "process": process,
    "enqueue_dedup": enqueue_dedup,
    "process_limited": process_limited,
    "process_groups": process_groups,
    "flow_add": flow_add,
    "flow_run": flow_run,
    "flow_big": flow_big,
    "loop_lag": loop_lag,
    "pickup": pickup,
}

DEFAULT_WORKLOADS = ("enqueue_seq", "process", "flow_add", "flow_run", "flow_big")
"""What runs when no ``--workload`` is named: the peers' workloads and ``flow_big``."""
