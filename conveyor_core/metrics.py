"""Prometheus metrics (the ``[prometheus]`` extra, included in ``[dashboard]``).

Two sources, because a store and a worker know different things:

- :func:`render_store_metrics` reads the store: per queue, jobs in each state, whether
  it is paused, and jobs completed and failed in the last hour and in the store's metrics
  window. The dashboard serves it at ``/metrics``; any process with the store can.
- :class:`WorkerMetrics` counts what workers do, in the process that runs them: per
  queue, jobs completed, failed for good and retried, and histograms of processing time
  (from an attempt's start until its outcome is recorded) and waiting time (from being
  added, after any delay, to the start of the first attempt).
  ``Worker(..., metrics=...)`` feeds it; ``conveyor worker --metrics-port N`` serves it
  over HTTP.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import operations as ops
from .models import JobState
from .queue import Queue
from .store import METRICS_MINUTES, StoreInterface

if TYPE_CHECKING:
    from .job import Job
    from .worker import Worker

__all__ = [
    "CONTENT_TYPE",
    "PROCESSING_BUCKETS",
    "WAITING_BUCKETS",
    "WorkerMetrics",
    "render_store_metrics",
    "store_metric_families",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of the text the functions here render."""
WINDOW_MINUTES = 60

PROCESSING_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)  # fmt: skip
"""Upper bounds (seconds) of the processing time histogram's buckets."""
WAITING_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400,
)  # fmt: skip
"""Upper bounds (seconds) of the waiting time histogram's buckets."""


# ---------------------------------------------------------------- what the store holds


class _Snapshot(Collector):
    """Metric families read beforehand from the store (collecting is synchronous)."""

    def __init__(self, families: Sequence[GaugeMetricFamily]) -> None:
        self.families = list(families)

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


async def store_metric_families(store: StoreInterface) -> list[GaugeMetricFamily]:
    """Per queue: jobs in each state, whether it is paused, and jobs completed and
    failed in the last hour and in the store's whole metrics window (a week)."""
    jobs = GaugeMetricFamily(
        "conveyor_jobs", "Jobs in the queue by state.", labels=["queue", "state"]
    )
    paused = GaugeMetricFamily(
        "conveyor_queue_paused", "1 if the queue is paused.", labels=["queue"]
    )
    hour = GaugeMetricFamily(
        "conveyor_jobs_finished_last_hour",
        "Jobs that finished in the last 60 minutes, by outcome.",
        labels=["queue", "outcome"],
    )
    window = GaugeMetricFamily(
        "conveyor_jobs_finished_window",
        f"Jobs that finished in the store's metrics window ({METRICS_MINUTES} minutes), "
        "by outcome.",
        labels=["queue", "outcome"],
    )
    for info in await ops.list_queues(store):
        for state, count in info.counts.items():
            jobs.add_metric([info.name, state], count)
        paused.add_metric([info.name], 1 if info.paused else 0)
        queue = Queue(info.name, store=store)
        for outcome in ("completed", "failed"):
            series = await queue.get_metrics(outcome, minutes=METRICS_MINUTES)
            hour.add_metric([info.name, outcome], sum(series[-WINDOW_MINUTES:]))
            window.add_metric([info.name, outcome], sum(series))
    return [jobs, paused, hour, window]


async def render_store_metrics(store: StoreInterface) -> bytes:
    """:func:`store_metric_families` in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await store_metric_families(store)))
    return generate_latest(registry)


# ---------------------------------------------------------------- what workers do


class WorkerMetrics:
    """Counters and histograms of the workers it is given, per queue.

    One object may serve many workers (of one or many queues). Its metrics live in
    ``registry`` (a new ``CollectorRegistry`` by default; pass
    ``prometheus_client.REGISTRY`` to expose them with the process's other metrics).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.completed = Counter(
            "conveyor_worker_jobs_completed",
            "Jobs this process completed.",
            ["queue"],
            registry=self.registry,
        )
        self.failed = Counter(
            "conveyor_worker_jobs_failed",
            "Jobs whose last attempt failed in this process (not retried).",
            ["queue"],
            registry=self.registry,
        )
        self.retried = Counter(
            "conveyor_worker_jobs_retried",
            "Attempts that failed in this process and will be retried.",
            ["queue"],
            registry=self.registry,
        )
        self.processing = Histogram(
            "conveyor_job_processing_seconds",
            "From an attempt's start until its outcome is recorded in the store.",
            ["queue"],
            buckets=PROCESSING_BUCKETS,
            registry=self.registry,
        )
        self.waiting = Histogram(
            "conveyor_job_waiting_seconds",
            "From a job's being added (after its delay) to the start of its first attempt.",
            ["queue"],
            buckets=WAITING_BUCKETS,
            registry=self.registry,
        )
        self._started: weakref.WeakKeyDictionary[Job, float] = weakref.WeakKeyDictionary()

    def attach(self, worker: Worker) -> None:
        """Count what ``worker`` does from now on (``Worker(metrics=...)`` calls it)."""
        queue = worker.queue_name
        processing = self.processing.labels(queue)
        waiting = self.waiting.labels(queue)
        completed = self.completed.labels(queue)
        failed = self.failed.labels(queue)
        retried = self.retried.labels(queue)
        started = self._started

        def on_active(job: Job) -> None:
            started[job] = perf_counter()
            record = job.record
            if record.attempts_made == 0 and record.processed_at is not None:
                ready = record.created_at + record.delay
                waiting.observe(max(0.0, record.processed_at - ready))

        def ran(job: Job) -> None:
            start = started.pop(job, None)
            if start is not None:
                processing.observe(perf_counter() - start)

        def on_completed(job: Job, result: Any) -> None:
            ran(job)
            completed.inc()

        def on_failed(job: Job, error: BaseException) -> None:
            ran(job)
            if job.record.state is JobState.FAILED:
                failed.inc()
            else:
                retried.inc()

        worker.on("active", on_active)
        worker.on("completed", on_completed)
        worker.on("failed", on_failed)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve the metrics over HTTP at ``http://addr:port/metrics`` from a daemon
        thread; ``port=0`` picks a free port. Returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)
