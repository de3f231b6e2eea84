"""Prometheus metrics of workers: counters and histograms scraped as text, from the object,
over HTTP, and from ``conveyor worker --metrics-port``; and the store's gauges."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor_core import Job, JobFailedError, Queue, Worker
from conveyor_core.metrics import WorkerMetrics, render_store_metrics
from conveyor_stores import open_store
from conveyor_stores.memory import MemoryStore

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as opened:
        yield opened


async def _run(store: MemoryStore, queue: str, handler: Any, attempts: int, **kw: Any) -> None:
    ended = 0
    done = anyio.Event()

    def seen(*_: Any) -> None:
        nonlocal ended
        ended += 1
        if ended >= attempts:
            done.set()

    worker = Worker(queue, handler, store=store, drain_delay=0.05, **kw)
    worker.on("completed", seen)
    worker.on("failed", seen)
    async with worker:
        with anyio.fail_after(20):
            await done.wait()


async def test_a_worker_counts_and_times_its_jobs(store: MemoryStore) -> None:
    metrics = WorkerMetrics()
    queue = Queue("mail", store=store)
    for n in range(3):
        await queue.add("send", {"n": n})
    await queue.add("bounce", {"n": -1}, {"attempts": 2})
    # Added 100 seconds ago (by the queue's clock): it has waited that long.
    await Queue("mail", store=store, clock=lambda: time.time() - 100).add("old", {"n": 9})

    async def handle(job: Job) -> int:
        if job.name == "bounce":
            raise ValueError("mailbox full")
        return int(job.data["n"])

    await _run(store, "mail", handle, 6, metrics=metrics)
    text = metrics.render().decode()
    assert value(text, "conveyor_worker_jobs_completed_total", queue="mail") == 4
    assert value(text, "conveyor_worker_jobs_failed_total", queue="mail") == 1
    assert value(text, "conveyor_worker_jobs_retried_total", queue="mail") == 1
    # One processing time per attempt, one waiting time per job's first attempt.
    assert value(text, "conveyor_job_processing_seconds_count", queue="mail") == 6
    assert value(text, "conveyor_job_waiting_seconds_count", queue="mail") == 5
    waited = {
        le: value(text, "conveyor_job_waiting_seconds_bucket", queue="mail", le=le)
        for le in ("60.0", "300.0")
    }
    assert waited == {"60.0": 4, "300.0": 5}
    total = value(text, "conveyor_job_waiting_seconds_sum", queue="mail")
    assert total is not None and total >= 100


async def test_one_metrics_object_serves_several_queues_over_http(store: MemoryStore) -> None:
    metrics = WorkerMetrics()
    port = metrics.serve(0)
    await Queue("a", store=store).add("x")
    await Queue("b", store=store).add_bulk([{"name": "y"}, {"name": "y"}])

    async def handle(job: Job) -> None:
        return None

    await _run(store, "a", handle, 1, metrics=metrics)
    await _run(store, "b", handle, 2, metrics=metrics)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())

    text = await anyio.to_thread.run_sync(scrape)
    assert value(text, "conveyor_worker_jobs_completed_total", queue="a") == 1
    assert value(text, "conveyor_worker_jobs_completed_total", queue="b") == 2
    assert value(text, "conveyor_worker_jobs_failed_total", queue="b") == 0


async def test_the_store_gauges_count_jobs_by_state(store: MemoryStore) -> None:
    queue = Queue("reports", store=store)
    await queue.add_bulk([{"name": "r"} for _ in range(3)])
    await queue.add("later", opts={"delay": 3600})

    async def handle(job: Job) -> None:
        return None

    text = (await render_store_metrics(store)).decode()
    assert value(text, "conveyor_jobs", queue="reports", state="waiting") == 3
    assert value(text, "conveyor_jobs", queue="reports", state="delayed") == 1
    await _run(store, "reports", handle, 3)
    text = (await render_store_metrics(store)).decode()
    assert value(text, "conveyor_jobs", queue="reports", state="waiting") == 0
    assert value(text, "conveyor_jobs", queue="reports", state="completed") == 3
    assert (
        value(text, "conveyor_jobs_finished_last_hour", queue="reports", outcome="completed") == 3
    )


async def test_the_worker_command_serves_its_metrics(sqlite_path: str, tmp_path: Path) -> None:
    (tmp_path / "metric_handlers.py").write_text(
        textwrap.dedent(
            """
            async def handle(job):
                if job.data["n"] < 0:
                    raise ValueError("negative")
                return job.data["n"]
            """
        )
    )
    url = f"sqlite:///{sqlite_path}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("CONVEYOR_STORE_URL", None)
    command = [sys.executable, "-m", "conveyor_core.cli", "worker", "metric_handlers:handle"]
    async with (
        open_store(url) as opened,
        await anyio.open_process(
            [*command, "--queue", "nums", "--store", url, "--metrics-port", "0"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        try:
            assert process.stdout is not None
            output = ""
            with anyio.fail_after(30):
                while (found := re.search(r"http://127\.0\.0\.1:(\d+)/metrics", output)) is None:
                    output += (await process.stdout.receive()).decode()
            queue = Queue("nums", store=opened)
            jobs = [await queue.add("n", {"n": n}) for n in (1, 2, -1)]
            for job in jobs:
                with contextlib.suppress(JobFailedError):
                    await job.wait_until_finished(timeout=30)

            def scrape() -> str:
                address = f"http://127.0.0.1:{found.group(1)}/metrics"
                with urllib.request.urlopen(address, timeout=10) as reply:
                    return str(reply.read().decode())

            text = await anyio.to_thread.run_sync(scrape)
            assert value(text, "conveyor_worker_jobs_completed_total", queue="nums") == 2
            assert value(text, "conveyor_worker_jobs_failed_total", queue="nums") == 1
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()


def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    from click.testing import CliRunner

    from conveyor_core.cli import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["worker", "json:loads", "--queue", "q", "--store", "memory://"]
        result = CliRunner().invoke(cli, [*args, "--metrics-port", str(port)])
    assert result.exit_code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
