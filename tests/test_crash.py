"""Crash tests: the workload of ``tests/reliability/workload.py`` (>= 2,000 jobs and 100
three-level flows, retries and every failure policy) runs in worker processes that are
killed, stopped or cut off from the server while they work; afterwards every job must
have ended as its plan says, no parent may have run before its children resolved, and
nothing may be lost or stuck.

Figures of each run are printed; ``CONVEYOR_FAULT_REPORT=path.json`` also saves them.
``CONVEYOR_FAULT_SCALE=10`` makes each run ten times longer (30 s of faults) and the
workload ten times bigger.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from reliability.stores import drop_location, new_location, skip_unless_available
from reliability.supervisor import CrashReport, run_crash, run_in_process, save_report

from conveyor_stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

SCALE = max(1, int(os.environ.get("CONVEYOR_FAULT_SCALE", "1")))
FAULT_SECONDS = 3.0 * SCALE
JOBS = 2000 * SCALE
FLOWS = 100 * SCALE
REPORT = os.environ.get("CONVEYOR_FAULT_REPORT")


def check(report: CrashReport) -> None:
    save_report(report, REPORT)
    assert not report.problems, report.summary() + "\n" + "\n".join(report.problems[:40])
    assert report.lost == 0
    assert report.unexpected_exits == 0, "a worker process died on its own"


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("sqlite", "kill"),
        ("sqlite", "term"),
        pytest.param("postgres", "kill", marks=pytest.mark.postgres),
        pytest.param("postgres", "term", marks=pytest.mark.postgres),
        pytest.param("postgres", "drop", marks=pytest.mark.postgres),
        pytest.param("redis", "kill", marks=pytest.mark.redis),
        pytest.param("redis", "term", marks=pytest.mark.redis),
        pytest.param("redis", "drop", marks=pytest.mark.redis),
    ],
)
async def test_workers_under_faults(kind: str, mode: str, tmp_path: Path) -> None:
    skip_unless_available(kind)
    location = new_location(kind, str(tmp_path))
    try:
        report = await run_crash(
            location,
            mode,
            tmp_path,
            fault_seconds=FAULT_SECONDS,
            jobs=JOBS if mode == "kill" else JOBS // 4,
            flows=FLOWS if mode == "kill" else FLOWS // 4,
            settle_timeout=120.0 * SCALE,
        )
    finally:
        await drop_location(location)
    check(report)
    if mode == "term":
        assert report.extra_handler_runs == 0, "a graceful close made a handler run twice"
        assert report.stalled_jobs == 0, "a gracefully closed worker left a job to stall"


@pytest.mark.parametrize("mode", ["cancel", "close"])
async def test_in_process_workers_under_faults(mode: str, tmp_path: Path) -> None:
    async with MemoryStore() as store:
        report = await run_in_process(
            store,
            mode,
            tmp_path,
            fault_seconds=FAULT_SECONDS,
            jobs=JOBS,
            flows=FLOWS,
            settle_timeout=120.0 * SCALE,
        )
    check(report)
    if mode == "close":
        assert report.extra_handler_runs == 0, "a graceful close made a handler run twice"
    assert report.stalled_jobs == 0, "a closed worker left a job to stall"
