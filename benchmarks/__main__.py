"""``python -m benchmarks``: run the workloads and print one JSON line per figure.

Examples::

    python -m benchmarks                                   # memory and a fresh SQLite file
    python -m benchmarks --store postgres --store redis --repeat 3
    python -m benchmarks --store postgres --store postgres-fast --workload process
    python -m benchmarks --store sqlite --workload flow_big --big-children 1000 10000
    python -m benchmarks --store postgres --workload search --search-jobs 1000000
    python -m benchmarks --store sqlite --workload dashboard --search-jobs 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from .search import run_search
from .stores import SHORTCUTS, VARIANTS, fresh_store, label, resolve
from .workloads import WORKLOADS, Figure, Params


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
        choices=sorted([*WORKLOADS, "search", "dashboard"]),
        help="workloads to run (default: all but search and dashboard, which fill a queue "
        "of --search-jobs jobs first; dashboard needs the dashboard extra)",
    )
    parser.add_argument(
        "--search-jobs",
        type=int,
        default=1_000_000,
        metavar="N",
        help="jobs in the queue the search and dashboard workloads page through",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="K", help="run each K times, report the median"
    )
    return parser


def _median(runs: list[list[Figure]], store: str, repeat: int) -> list[dict[str, Any]]:
    """One output line per figure: the median of ``seconds`` over the runs."""
    lines: list[dict[str, Any]] = []
    for index, first in enumerate(runs[0]):
        seconds = statistics.median(run[index].seconds for run in runs)
        line: dict[str, Any] = {"store": store, "workload": first.workload, **first.size}
        line["seconds"] = round(seconds, 4)
        line["per_s"] = round(first.count / seconds) if seconds > 0 else None
        line.update(first.extra)
        if repeat > 1:
            line["median_of"] = repeat
        lines.append(line)
    return lines


async def run_benchmarks(
    stores: Sequence[str], workloads: Sequence[str], params: Params, repeat: int
) -> None:
    """Run every workload on every store, printing each figure as soon as it is known."""
    for url in stores:
        for name in workloads:
            if name == "search":
                for line in await run_search(url, label(url), params.search_jobs):
                    print(json.dumps(line), flush=True)
                continue
            if name == "dashboard":
                from .dashboard import run_dashboard

                for line in await run_dashboard(url, label(url), params.search_jobs):
                    print(json.dumps(line), flush=True)
                continue
            runs: list[list[Figure]] = []
            for _ in range(repeat):
                async with fresh_store(url) as store:
                    runs.append(await WORKLOADS[name](store, params))
            for line in _median(runs, label(url), repeat):
                print(json.dumps(line), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.jobs, args.children, *args.big_children) < 1 or args.repeat < 1:
        print("--jobs, --children, --big-children and --repeat must be positive", file=sys.stderr)
        return 2
    stores = [resolve(s) for s in (args.store or ["memory", "sqlite"])]
    workloads = args.workload or list(WORKLOADS)
    params = Params(args.jobs, args.children, tuple(args.big_children), args.search_jobs)
    anyio.run(run_benchmarks, stores, workloads, params, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
