"""``python -m benchmarks``: run the workloads and print one JSON line per figure.

Examples::

    python -m benchmarks                                   # memory and a fresh SQLite file
    python -m benchmarks --store postgres --store redis --repeat 3
    python -m benchmarks --store postgres --store postgres-fast --workload process
    python -m benchmarks --store sqlite --workload flow_big --big-children 1000 10000
    python -m benchmarks --store postgres --workload search --search-jobs 1000000
    python -m benchmarks --store sqlite --store postgres --workload schedule
    python -m benchmarks --store redis --workload large_flow --large-children 10000 100000
    python -m benchmarks --store sqlite --workload dashboard --search-jobs 100000
    python -m benchmarks --store postgres --workload dag --dag-jobs 1000 5000 10000
    python -m benchmarks --store postgres --workload cancel_flow --cancel-jobs 10000
    python -m benchmarks --store memory --workload process --tracing sdk --repeat 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio

from .cancel_flow import run_cancel_flow
from .dag import run_dag
from .large_flow import run_large_flow
from .schedule import run_schedule
from .search import run_search
from .stores import SHORTCUTS, VARIANTS, isolated_store_and_url, label, resolve
from .tracing import CHOICES, use_tracing
from .workloads import DEFAULT_WORKLOADS, WORKLOADS, Figure, Params

_SPECIAL = ("search", "schedule", "large_flow", "dashboard", "dag", "cancel_flow")
"""Workloads run only when named: they take long, or spawn processes."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time Conveyor on the peer workloads; prints one JSON line per figure.",
    )
    parser.add_argument(
        "--store",
        action="append",
        metavar="URL",
        help="store URL, or one of " + ", ".join([*SHORTCUTS, *VARIANTS]) + " (repeatable; "
        "default: memory and sqlite). A SQLite file in the temp directory is made "
        "fresh for every run.",
    )
    parser.add_argument("--jobs", type=int, default=2000, help="N for enqueue_seq and process")
    parser.add_argument(
        "--children", type=int, default=500, help="children for flow_add and flow_run"
    )
    parser.add_argument(
        "--big-children",
        type=int,
        nargs="+",
        default=[10_000],
        metavar="C",
        help="children of the flow_big flow; several sizes show how time grows",
    )
    parser.add_argument(
        "--workload",
        action="extend",
        nargs="+",
        choices=sorted([*WORKLOADS, *_SPECIAL]),
        help="workloads to run (default: " + ", ".join(DEFAULT_WORKLOADS) + "; search fills "
        "a queue of --search-jobs jobs first, schedule runs --schedule-seconds, and "
        "large_flow adds and runs flows of --large-children children; dashboard fills a "
        "queue of --search-jobs jobs and needs the dashboard extra)",
    )
    parser.add_argument(
        "--schedule-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="how long the schedule workload's scheduler ticks (every 100 ms)",
    )
    parser.add_argument(
        "--schedule-processes",
        type=int,
        default=3,
        metavar="P",
        help="worker processes of the schedule workload",
    )
    parser.add_argument(
        "--large-children",
        type=int,
        nargs="+",
        default=[100_000],
        metavar="C",
        help="children of the large_flow flow; several sizes show whether reads grow",
    )
    parser.add_argument(
        "--dag-jobs",
        type=int,
        nargs="+",
        default=[10_000],
        metavar="N",
        help="jobs of the dag workload's diamond-heavy DAG; several sizes show how time grows",
    )
    parser.add_argument(
        "--cancel-jobs",
        type=int,
        default=10_000,
        metavar="N",
        help="jobs of the flow that cancel_flow cancels while 10 of them run",
    )
    parser.add_argument(
        "--search-jobs",
        type=int,
        default=1_000_000,
        metavar="N",
        help="jobs in the queue the search and dashboard workloads page through",
    )
    parser.add_argument(
        "--lag-jobs",
        type=int,
        default=1700,
        metavar="N",
        help="jobs of the add_bulk call and of the flow that loop_lag adds",
    )
    parser.add_argument(
        "--pickup-jobs",
        type=int,
        default=200,
        metavar="N",
        help="jobs that pickup adds one at a time for a worker in another process",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds pickup's worker process idles while its CPU time is measured",
    )
    parser.add_argument(
        "--tracing",
        choices=CHOICES,
        default="off",
        help="trace with OpenTelemetry: off (no tracer provider), noop (the API's no-op "
        "provider) or sdk (the SDK's provider, batching to an exporter that drops spans); "
        "needs the otel extra",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="K", help="run each K times, report the median"
    )
    return parser


def _median(
    runs: list[list[Figure]], store: str, repeat: int, tracing: str = "off"
) -> list[dict[str, Any]]:
    """One output line per figure: the median of ``seconds`` over the runs."""
    lines: list[dict[str, Any]] = []
    for index, first in enumerate(runs[0]):
        seconds = statistics.median(run[index].seconds for run in runs)
        line: dict[str, Any] = {"store": store, "workload": first.workload, **first.size}
        line["seconds"] = round(seconds, 4)
        line["per_s"] = round(first.count / seconds) if seconds > 0 else None
        line.update(first.extra)
        for key in first.stats:
            line[key] = round(statistics.median(run[index].stats[key] for run in runs), 2)
        if repeat > 1:
            line["median_of"] = repeat
        if tracing != "off":
            line["tracing"] = tracing
        lines.append(line)
    return lines


async def run_benchmarks(
    stores: Sequence[str],
    workloads: Sequence[str],
    params: Params,
    repeat: int,
    schedule: tuple[float, int] = (60.0, 3),
    large_children: tuple[int, ...] = (100_000,),
    dag_jobs: tuple[int, ...] = (10_000,),
    cancel_jobs: int = 10_000,
    tracing: str = "off",
) -> None:
    """Run every workload on every store, printing each figure as soon as it is known.

    The repeats of consecutive timed workloads (:data:`WORKLOADS`) take turns (all of
    them once, then all again), each run on a store of its own (:func:`isolated_store`:
    a schema, key prefix or SQLite file, dropped after), so a workload is neither
    favoured by the machine's quieter moments nor slowed by what an earlier run left in
    the database."""
    for url in stores:
        for timed, group in itertools.groupby(workloads, key=lambda name: name in WORKLOADS):
            if timed:
                await _run_block(url, list(group), params, repeat, tracing)
                continue
            for name in group:
                await _run_other(url, name, params, schedule, large_children, dag_jobs, cancel_jobs)


async def _run_other(
    url: str,
    name: str,
    params: Params,
    schedule: tuple[float, int],
    large_children: tuple[int, ...],
    dag_jobs: tuple[int, ...],
    cancel_jobs: int,
) -> None:
    """A workload outside :data:`WORKLOADS`, which sets up its own stores."""
    if name == "schedule":
        line = await run_schedule(url, label(url), *schedule)
        print(json.dumps(line), flush=True)
        return
    if name == "search":
        async for line in run_search(url, label(url), params.search_jobs):
            print(json.dumps(line), flush=True)
        return
    if name == "large_flow":
        for line in await run_large_flow(url, label(url), large_children):
            print(json.dumps(line), flush=True)
        return
    if name == "dag":
        for line in await run_dag(url, label(url), dag_jobs):
            print(json.dumps(line), flush=True)
        return
    if name == "cancel_flow":
        print(json.dumps(await run_cancel_flow(url, label(url), cancel_jobs)), flush=True)
        return
    if name == "dashboard":
        from .dashboard import run_dashboard

        for line in await run_dashboard(url, label(url), params.search_jobs):
            print(json.dumps(line), flush=True)


async def _run_block(
    url: str, names: Sequence[str], params: Params, repeat: int, tracing: str
) -> None:
    runs: dict[str, list[list[Figure]]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            async with isolated_store_and_url(url, name) as (store, store_url):
                runs[name].append(await WORKLOADS[name](store, replace(params, url=store_url)))
    for name in names:
        for line in _median(runs[name], label(url), repeat, tracing):
            print(json.dumps(line), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = (
        args.jobs,
        args.children,
        *args.big_children,
        *args.large_children,
        *args.dag_jobs,
        args.cancel_jobs,
    )
    if min(sizes) < 1 or args.repeat < 1:
        print(
            "--jobs, --children, --big-children, --large-children, --dag-jobs, --cancel-jobs "
            "and --repeat must be positive",
            file=sys.stderr,
        )
        return 2
    if args.pickup_jobs < 1 or args.idle_seconds <= 0:
        print("--pickup-jobs and --idle-seconds must be positive", file=sys.stderr)
        return 2
    if args.lag_jobs < 2:
        print("--lag-jobs must be at least 2 (a flow's parent and a child)", file=sys.stderr)
        return 2
    stores = [resolve(s) for s in (args.store or ["memory", "sqlite"])]
    workloads = args.workload or list(DEFAULT_WORKLOADS)
    params = Params(
        args.jobs,
        args.children,
        tuple(args.big_children),
        args.lag_jobs,
        args.pickup_jobs,
        args.idle_seconds,
        search_jobs=args.search_jobs,
    )
    if args.schedule_seconds <= 0 or args.schedule_processes < 1:
        print("--schedule-seconds and --schedule-processes must be positive", file=sys.stderr)
        return 2
    schedule = (args.schedule_seconds, args.schedule_processes)
    provider = use_tracing(args.tracing)
    anyio.run(
        run_benchmarks,
        stores,
        workloads,
        params,
        args.repeat,
        schedule,
        tuple(args.large_children),
        tuple(args.dag_jobs),
        args.cancel_jobs,
        args.tracing,
    )
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
