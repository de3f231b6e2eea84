"""Cancelling jobs that run in another OS process, on SQLite, PostgreSQL and Redis: the
worker there cancels the handler; a worker killed while its job has a cancel request
leaves the job to fail as cancelled, never to run again.

The worker processes run this very file as a script (``python test_cancel_processes.py
LOCATION QUEUE LOG``); each writes one line per handler start and per handler
cancellation to its log, so the test sees what happened inside the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TextIO

import anyio
import pytest
from reliability.stores import drop_location, make_store, new_location, skip_unless_available

from conveyor_core import FlowProducer, Job, JobState, Queue, Worker
from conveyor_core.store import StoreInterface

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0
"""Seconds any one condition may take (generous: the machine may be busy)."""
LOCK = 1.0
"""The worker process's lock duration, so a killed worker's job stalls soon."""

pytestmark = pytest.mark.anyio


def _open_log(path: str) -> TextIO:
    return open(path, "a", buffering=1)


async def _serve(location: dict[str, str], queue: str, log_path: str) -> None:
    with _open_log(log_path) as log:

        async def hang(job: Job) -> None:
            log.write(f"started {job.id}\n")
            try:
                await anyio.sleep(3600)
            except anyio.get_cancelled_exc_class():
                log.write(f"cancelled {job.id}\n")
                raise

        async with (
            make_store(location) as store,
            Worker(queue, hang, store=store, lock_duration=LOCK, concurrency=5),
        ):
            log.write("ready\n")
            await anyio.sleep(3600)


@contextmanager
def worker_process(
    location: dict[str, str], queue: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, json.dumps(location), queue, str(log)]
    proc = subprocess.Popen(command, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def location(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    skip_unless_available(request.param)
    where = new_location(request.param, str(tmp_path))
    try:
        yield where
    finally:
        await drop_location(where)


@asynccontextmanager
async def opened(location: dict[str, str]) -> AsyncIterator[StoreInterface]:
    async with make_store(location) as store:
        yield store


async def test_a_handler_running_in_another_process_is_cancelled(
    location: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    async with opened(location) as store:
        flow = FlowProducer(store=store)
        node = await flow.add(
            {
                "name": "order",
                "queue_name": "orders",
                "children": [
                    {"name": "charge", "queue_name": "payments", "opts": {"attempts": 5}},
                    {"name": "ship", "queue_name": "shipping"},
                ],
            }
        )
        charge = next(child.job for child in node.children if child.job.name == "charge")
        with worker_process(location, "payments", log):
            await _until(lambda: f"started {charge.id}" in _lines(log), "the handler to start")
            assert await flow.cancel(node.job.id, "orders", "customer left") == 3
            await _until(
                lambda: f"cancelled {charge.id}" in _lines(log), "the handler's cancellation"
            )

            async def failed() -> bool:
                return await charge.get_state() is JobState.FAILED

            await _until(failed, "the running job to fail")
            await anyio.sleep(LOCK * 2)  # a retry, if there were one, would start by now
        done = await Queue("payments", store=store).get_job(charge.id)
        assert done is not None and done.failed_reason == "cancelled: customer left"
        assert done.attempts_made == 1
        assert _lines(log).count(f"started {charge.id}") == 1
        root = await Queue("orders", store=store).get_job(node.job.id)
        assert root is not None and root.failed_reason == "cancelled: customer left"


async def test_a_worker_killed_while_its_job_has_a_cancel_request(
    location: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    async with opened(location) as store:
        job = await Queue("payments", store=store).add("charge", None, opts={"attempts": 5})
        with worker_process(location, "payments", log) as proc:
            await _until(lambda: f"started {job.id}" in _lines(log), "the handler to start")
            # Frozen, the worker cannot learn of the cancel; then it dies with the request
            # still on its job.
            proc.send_signal(signal.SIGSTOP)
            assert await job.cancel("too late") == 1
            assert await store.cancel_requests("payments", [job.id]) == {
                job.id: "cancelled: too late"
            }
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert f"cancelled {job.id}" not in _lines(log)
        # Stalled-job recovery, as any worker of the queue runs it, finds the dead lock.
        await anyio.sleep(LOCK * 1.5)
        async with Worker(
            "payments", _never, store=store, lock_duration=LOCK, stalled_interval=0.2
        ):

            async def failed() -> bool:
                return await job.get_state() is JobState.FAILED

            await _until(failed, "the stalled job to fail as cancelled")
            await anyio.sleep(LOCK)
        done = await Queue("payments", store=store).get_job(job.id)
        assert done is not None and done.state is JobState.FAILED
        assert done.failed_reason == "cancelled: too late"
        assert done.stalled_count == 1 and done.attempts_made == 0
        assert _lines(log).count(f"started {job.id}") == 1


async def _never(job: Job) -> None:
    raise AssertionError(f"job {job.id} ran again after it was cancelled")


if __name__ == "__main__":
    anyio.run(_serve, json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])
