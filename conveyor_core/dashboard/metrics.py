"""Prometheus exposition of the queues' state, for the dashboard's ``/metrics``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import operations as ops
from ..queue import Queue
from ..store import METRICS_MINUTES, StoreInterface

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
WINDOW_MINUTES = 60


class _Snapshot(Collector):
    """Metric families read beforehand from the store (collecting is synchronous)."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


async def render_metrics(store: StoreInterface) -> bytes:
    """Per queue: jobs in each state, whether it is paused, and jobs completed and failed
    in the last hour and in the store's whole metrics window (a week)."""
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
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot([jobs, paused, hour, window]))
    return generate_latest(registry)
