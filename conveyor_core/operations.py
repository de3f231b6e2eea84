"""The operations layer: what an operator does to a running system, written once.

The command line (``conveyor queues``, ``conveyor job retry``, …) and the dashboard call
these functions and nothing else for these operations, so an operation behaves the same
wherever it is started. Each takes a connected store and returns plain data;
:func:`job_to_json` and the other ``*_to_json`` functions give the JSON form both show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import JobNotFoundError
from .flow import FlowProducer, JobNode
from .job import Dependencies, Job, JobPage
from .models import JobState
from .queue import Queue
from .store import StoreInterface

if TYPE_CHECKING:
    from .schedulers import JobScheduler

__all__ = [
    "JOB_ACTIONS",
    "QUEUE_ACTIONS",
    "JobAction",
    "JobDetail",
    "QueueAction",
    "QueueInfo",
    "add_flow",
    "add_job",
    "cancel_job",
    "detail_to_json",
    "get_job_detail",
    "job_action",
    "job_to_json",
    "list_queues",
    "list_schedulers",
    "load_flow_file",
    "queue_action",
    "queue_to_json",
    "search_jobs",
]

JobAction = Literal["retry", "remove", "promote", "cancel"]
JOB_ACTIONS: tuple[JobAction, ...] = ("retry", "remove", "promote", "cancel")
QueueAction = Literal["pause", "resume", "drain", "clean", "obliterate", "retry-failed"]
QUEUE_ACTIONS: tuple[QueueAction, ...] = (
    "pause",
    "resume",
    "drain",
    "clean",
    "obliterate",
    "retry-failed",
)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue as :func:`list_queues` sees it."""

    name: str
    counts: dict[str, int]
    """Jobs per state, every state present."""
    paused: bool


@dataclass(slots=True)
class JobDetail:
    """Everything shown about one job: :func:`get_job_detail`."""

    job: Job
    logs: list[Any]
    children: Dependencies = field(default_factory=Dependencies)
    """The job's children by how they resolved (empty for a job without children)."""
    parent: Job | None = None


async def list_queues(store: StoreInterface) -> list[QueueInfo]:
    """Every queue of the store that holds jobs or is paused, with its counts, by name."""
    infos: list[QueueInfo] = []
    for name in await store.list_queues():
        queue = Queue(name, store=store)
        infos.append(QueueInfo(name, await queue.get_job_counts(), await queue.is_paused()))
    return infos


async def list_schedulers(store: StoreInterface, queue: str | None = None) -> list[JobScheduler]:
    """The job schedulers of ``queue``, or of every queue :func:`list_queues` lists (a
    queue whose scheduler has not yet added a job is listed only by name), by queue then
    id."""
    names = [queue] if queue is not None else await store.list_queues()
    found: list[JobScheduler] = []
    for name in names:
        found += await Queue(name, store=store).get_job_schedulers()
    return found


async def search_jobs(
    store: StoreInterface,
    queue: str,
    *,
    text: str | None = None,
    name: str | None = None,
    states: Sequence[JobState | str] | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobPage:
    """A page of the queue's jobs, newest first (see :meth:`Queue.search_jobs`)."""
    return await Queue(queue, store=store).search_jobs(
        text=text, name=name, states=states, limit=limit, cursor=cursor
    )


async def _require_job(store: StoreInterface, queue: str, job_id: str) -> Job:
    job = await Queue(queue, store=store).get_job(job_id)
    if job is None:
        raise JobNotFoundError(queue, job_id)
    return job


async def get_job_detail(store: StoreInterface, queue: str, job_id: str) -> JobDetail:
    """The job with its logs, children and parent; ``JobNotFoundError`` if it is gone."""
    job = await _require_job(store, queue, job_id)
    logs = await job.get_logs()
    try:
        children = await job.get_dependencies()
    except JobNotFoundError:  # removed between the two reads
        children = Dependencies()
    return JobDetail(job, logs, children, await job.get_parent())


async def cancel_job(
    store: StoreInterface, queue: str, job_id: str, reason: str | None = None
) -> tuple[int, Job | None]:
    """Cancel a job and its unfinished descendants (``Job.cancel``): how many were
    cancelled, and the job as it is afterwards (``None`` if it is gone by then, as a
    failed job kept for ``keep_failed=0`` is). ``JobNotFoundError`` for a missing job."""
    count = await FlowProducer(store=store).cancel(job_id, queue, reason)
    return count, await Queue(queue, store=store).get_job(job_id)


async def job_action(
    store: StoreInterface,
    queue: str,
    job_id: str,
    action: JobAction,
    *,
    reason: str | None = None,
) -> Job | None:
    """Retry a failed job, remove a job (and its unfinished descendants), promote a
    delayed one, or cancel a job (with ``reason``; see :func:`cancel_job`); returns the
    job as it is afterwards (``None`` once removed).

    ``JobNotFoundError`` for a missing job; ``InvalidJobStateError`` when the job's
    state does not allow the action (its message says which state it is in).
    """
    if action == "cancel":
        return (await cancel_job(store, queue, job_id, reason))[1]
    job = await _require_job(store, queue, job_id)
    if action == "retry":
        await job.retry()
    elif action == "remove":
        await job.remove()
        return None
    elif action == "promote":
        await job.promote()
    else:
        raise ValueError(f"unknown job action {action!r}; one of {', '.join(JOB_ACTIONS)}")
    return await Queue(queue, store=store).get_job(job_id)


async def queue_action(
    store: StoreInterface,
    queue: str,
    action: QueueAction,
    *,
    include_delayed: bool = False,
    grace: float = 0.0,
    state: JobState | str = JobState.COMPLETED,
    limit: int | None = None,
    force: bool = False,
) -> int | None:
    """Carry out ``action`` on the queue; returns how many jobs it touched (``None`` for
    pause, resume and obliterate).

    ``drain`` removes waiting jobs (and delayed ones with ``include_delayed``); ``clean``
    removes up to ``limit`` jobs in ``state`` finished at least ``grace`` seconds ago;
    ``retry-failed`` runs every failed job again; ``obliterate`` deletes the queue (and
    refuses while jobs are active, unless ``force``).
    """
    target = Queue(queue, store=store)
    if action == "pause":
        await target.pause()
        return None
    if action == "resume":
        await target.resume()
        return None
    if action == "drain":
        return await target.drain(include_delayed=include_delayed)
    if action == "clean":
        return len(await target.clean(grace, limit=limit, state=state))
    if action == "obliterate":
        await target.obliterate(force=force)
        return None
    if action == "retry-failed":
        return await target.retry_jobs(JobState.FAILED)
    raise ValueError(f"unknown queue action {action!r}; one of {', '.join(QUEUE_ACTIONS)}")


async def add_job(
    store: StoreInterface,
    queue: str,
    name: str,
    data: Any = None,
    opts: Mapping[str, Any] | None = None,
) -> Job:
    """Add one job (see :meth:`Queue.add`)."""
    return await Queue(queue, store=store).add(name, data, opts)


async def add_flow(
    store: StoreInterface,
    flows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    queues_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[JobNode]:
    """Add one flow (a mapping) or several (a list), all or nothing."""
    producer = FlowProducer(store=store)
    trees = [flows] if isinstance(flows, Mapping) else list(flows)
    return await producer.add_bulk(trees, queues_options=queues_options)


def load_flow_file(path: str | Path) -> dict[str, Any] | list[dict[str, Any]]:
    """A flow (or a list of flows) from a JSON file; ``ValueError`` naming the file and
    the problem when it is not one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read flow file {str(path)!r}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"flow file {str(path)!r} is not JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    if isinstance(value, dict) or (
        isinstance(value, list) and value and all(isinstance(item, dict) for item in value)
    ):
        return value
    raise ValueError(f"flow file {str(path)!r} must hold a flow (a JSON object) or a list of flows")


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def job_to_json(job: Job) -> dict[str, Any]:
    """Every field a user sees of a job, as JSON-ready values (times in ISO 8601)."""
    return {
        "id": job.id,
        "queue": job.queue_name,
        "name": job.name,
        "state": job.state.value,
        "data": job.data,
        "opts": job.opts.model_dump(mode="json", exclude_defaults=True),
        "attempts_made": job.attempts_made,
        "progress": job.progress,
        "return_value": job.return_value,
        "failed_reason": job.failed_reason,
        "stacktrace": job.stacktrace,
        "created_at": _stamp(job.created_at),
        "processed_at": _stamp(job.processed_at),
        "finished_at": _stamp(job.finished_at),
        "parent": None
        if job.parent_id is None
        else {"id": job.parent_id, "queue": job.parent_queue},
    }


def detail_to_json(detail: JobDetail) -> dict[str, Any]:
    """:func:`job_to_json` of the job, with its logs, children and parent."""
    children = detail.children
    return {
        **job_to_json(detail.job),
        "logs": detail.logs,
        "children": {
            "processed": children.processed,
            "unprocessed": children.unprocessed,
            "failed": children.failed,
            "ignored": children.ignored,
        },
        "parent": None if detail.parent is None else job_to_json(detail.parent),
    }


def queue_to_json(info: QueueInfo) -> dict[str, Any]:
    """A queue's name, counts and paused flag."""
    return {"name": info.name, "counts": info.counts, "paused": info.paused}
