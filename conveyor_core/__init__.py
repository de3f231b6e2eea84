"""Conveyor: an embeddable, async job queue and flow orchestrator.

``Queue``, ``Worker``, ``FlowProducer`` and ``QueueEvents`` talk to a store only
through :class:`StoreInterface`; the stores themselves live in ``conveyor_stores``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ConveyorError,
    DagError,
    DuplicateJobError,
    InvalidJobStateError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    LockLostError,
    PayloadError,
    RateLimitedError,
    StoreClosedError,
    StoreCommandError,
    StoreConfigurationWarning,
    StoreOutOfMemoryError,
    StoreUnavailableError,
    UnrecoverableError,
    WaitingForChildren,
)
from .events import QueueEvents
from .flow import FlowProducer, JobNode
from .job import Dependencies, DependencyCounts, Job, JobPage
from .models import (
    Backoff,
    DagJob,
    Deduplication,
    FlowJob,
    JobOptions,
    JobState,
    ParentPolicy,
    QueueEvent,
    RateLimit,
)
from .operations import QueueInfo, list_queues
from .payloads import DataValidationError
from .queue import Queue
from .registry import open_store
from .schedulers import JobScheduler
from .store import GroupLimits, StoreInterface
from .worker import Worker

try:
    __version__ = version("conveyor-queue")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = [
    "Backoff",
    "ConveyorError",
    "DagError",
    "DagJob",
    "DataValidationError",
    "Deduplication",
    "Dependencies",
    "DependencyCounts",
    "DuplicateJobError",
    "FlowJob",
    "FlowProducer",
    "GroupLimits",
    "InvalidJobStateError",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobNode",
    "JobNotFoundError",
    "JobOptions",
    "JobPage",
    "JobScheduler",
    "JobState",
    "JobTimeoutError",
    "LockLostError",
    "ParentPolicy",
    "PayloadError",
    "Queue",
    "QueueEvent",
    "QueueEvents",
    "QueueInfo",
    "RateLimit",
    "RateLimitedError",
    "StoreClosedError",
    "StoreCommandError",
    "StoreConfigurationWarning",
    "StoreInterface",
    "StoreOutOfMemoryError",
    "StoreUnavailableError",
    "UnrecoverableError",
    "WaitingForChildren",
    "Worker",
    "__version__",
    "list_queues",
    "open_store",
]
