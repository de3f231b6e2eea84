"""``FlowProducer``: add trees of jobs whose parents wait for their children."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio

from . import codec
from .clock import Clock, system_clock
from .errors import DuplicateJobError
from .ids import new_id
from .job import Job
from .models import MAX_JOB_NAME_BYTES, FlowJob, JobOptions, ParentPolicy
from .pacing import Pacer
from .queue import (
    OptionsLike,
    build_new_job,
    check_name,
    explicit_fields,
    record_of,
    resolve_options,
)
from .store import ChildDependency, NewJob, StoreInterface
from .telemetry import sending_flows

__all__ = ["FlowProducer", "JobNode"]

FlowLike = FlowJob | Mapping[str, Any]
T = TypeVar("T")

_READ_CONCURRENCY = 32


@dataclass(eq=False, slots=True)
class JobNode:
    """A job of a flow and the nodes of its children, in the order they were added."""

    job: Job
    children: list[JobNode] = field(default_factory=list)
    hidden_children: int = 0
    """How many of the job's children ``get_flow(max_children=...)`` left out (counted
    from the store's dependency counts, without reading them); 0 when none were."""

    def __repr__(self) -> str:
        # Shallow on purpose: a flow may nest far deeper than the recursion limit.
        return f"JobNode(job={self.job!r}, children=<{len(self.children)}>)"

    def walk(self) -> list[JobNode]:
        """This node and all its descendants, parents before children."""
        out: list[JobNode] = []
        stack = [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out


@dataclass(slots=True)
class _Planned:
    """One tree ready to be written: its jobs (parents first) and its result nodes."""

    group: list[NewJob]
    root: JobNode
    depth: int


def _data_of(name: str, queue: str) -> str:
    return f"data of job {name!r} in queue {queue!r}"


_NODE_KEYS = frozenset({"name", "queue_name", "data", "opts", "children"})


def _node_fields(raw: object) -> tuple[str, str, Any, Any, Sequence[object]]:
    """A node's ``(name, queue_name, data, opts, children)``, its fields validated.

    Validates one level at a time so a tree of any depth is accepted: pydantic's own
    nested validation stops at a few hundred levels. A plain dict with string names
    skips pydantic (names and options are validated later either way); anything else
    goes through ``FlowJob`` so the error names the bad field.
    """
    if isinstance(raw, FlowJob):
        return raw.name, raw.queue_name, raw.data, raw.opts, raw.children
    if isinstance(raw, Mapping):
        children = raw.get("children", ())
        name, queue = raw.get("name"), raw.get("queue_name")
        if (
            isinstance(children, list | tuple)
            and isinstance(name, str)
            and isinstance(queue, str)
            and _NODE_KEYS.issuperset(raw)
        ):
            return name, queue, raw.get("data"), raw.get("opts"), children
        if isinstance(children, list | tuple):
            shallow = dict(raw)
            shallow["children"] = []
            node = FlowJob.model_validate(shallow)
            return node.name, node.queue_name, node.data, node.opts, children
        FlowJob.model_validate(raw)  # raises, naming the bad "children" field
    raise TypeError(f"a flow node must be a FlowJob or a dict, got {type(raw).__name__}")


async def _gather(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the calls concurrently (bounded) and return their results in order."""
    results: list[Any] = [None] * len(calls)
    if len(calls) == 1:
        results[0] = await calls[0]()
        return results
    limiter = anyio.CapacityLimiter(_READ_CONCURRENCY)

    async def run(index: int) -> None:
        async with limiter:
            results[index] = await calls[index]()

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(run, index)
    return results


class FlowProducer:
    """Adds flows (trees of jobs across any queues of one store) atomically.

    The producer does not own the store: :meth:`close` leaves it open.
    """

    def __init__(self, *, store: StoreInterface, clock: Clock = system_clock) -> None:
        self.store = store
        self._clock = clock

    # ------------------------------------------------------------------ adding

    async def _plan(
        self,
        tree: FlowLike,
        queue_defaults: Mapping[str, dict[str, Any]],
        now: float,
        pacer: Pacer,
    ) -> _Planned:
        """Validate one tree and turn it into ``NewJob``s, parents before children.

        A wide or deep tree takes a while: ``pacer`` lets other tasks run meanwhile.
        """
        group: list[NewJob] = []
        seen: set[str] = set()
        root: JobNode | None = None
        max_depth = 0
        # (raw node, parent node, parent's options, depth)
        stack: list[tuple[object, JobNode | None, JobOptions | None, int]] = [(tree, None, None, 1)]
        while stack:
            if pacer.due():
                await pacer.pause()
            raw, parent, parent_opts, depth = stack.pop()
            name, queue, node_data, node_opts, children = _node_fields(raw)
            check_name(name, "job name", MAX_JOB_NAME_BYTES)
            check_name(queue, "queue name")
            opts = resolve_options(node_opts, queue_defaults.get(queue))
            job_id = opts.job_id or new_id()
            if job_id in seen:
                raise DuplicateJobError(f"job id {job_id!r} is used twice in one flow")
            seen.add(job_id)
            data = codec.dumps(node_data, what=partial(_data_of, name, queue))
            new = build_new_job(
                queue=queue,
                name=name,
                data=data,
                opts=opts,
                job_id=job_id,
                has_children=bool(children),
            )
            if parent is not None and parent_opts is not None:
                new.parent_id = parent.job.id
                new.parent_queue = parent.job.queue_name
                new.parent_policy = opts.child_policy() or ParentPolicy(
                    parent_opts.fail_parent_on_child_failure
                )
            group.append(new)
            node = JobNode(Job(self.store, record_of(new, now), clock=self._clock))
            if parent is None:
                root = node
            else:
                parent.children.append(node)
            max_depth = max(max_depth, depth)
            for child in reversed(children):
                stack.append((child, node, opts, depth + 1))
        assert root is not None
        return _Planned(group, root, max_depth)

    def _queue_defaults(
        self, queues_options: Mapping[str, OptionsLike] | None
    ) -> dict[str, dict[str, Any]]:
        if not queues_options:
            return {}
        return {queue: explicit_fields(opts) for queue, opts in queues_options.items()}

    async def add(
        self, flow: FlowLike, queues_options: Mapping[str, OptionsLike] | None = None
    ) -> JobNode:
        """Add one flow atomically; returns its tree of jobs.

        If the root's ``job_id`` already exists, nothing is written and the existing
        flow is returned.
        """
        return (await self.add_bulk([flow], queues_options))[0]

    async def add_bulk(
        self,
        flows: Sequence[FlowLike],
        queues_options: Mapping[str, OptionsLike] | None = None,
    ) -> list[JobNode]:
        """Add several flows in one atomic step: every job of every tree, or none."""
        defaults = self._queue_defaults(queues_options)
        now = self._clock()
        pacer = Pacer()
        plans = [await self._plan(tree, defaults, now, pacer) for tree in flows]
        taken: set[tuple[str, str]] = set()
        for plan in plans:
            for new in plan.group:
                if pacer.due():
                    await pacer.pause()
                key = (new.queue, new.id)
                if key in taken:
                    raise DuplicateJobError(
                        f"job id {new.id!r} of queue {new.queue!r} is used in two flows "
                        "of one add_bulk call"
                    )
                taken.add(key)
        if not plans:
            return []
        groups = [plan.group for plan in plans]
        with sending_flows(groups):
            written = await self.store.add_jobs(groups, now)
        nodes: list[JobNode] = []
        for plan, ok in zip(plans, written, strict=True):
            if ok:
                nodes.append(plan.root)
                continue
            root = plan.root.job
            existing = await self.get_flow(root.id, root.queue_name, depth=max(plan.depth, 10))
            if existing is None:
                raise DuplicateJobError(
                    f"job id {root.id!r} already exists in queue {root.queue_name!r}"
                )
            nodes.append(existing)
        return nodes

    # ------------------------------------------------------------------ reading

    async def get_flow(
        self,
        job_id: str,
        queue_name: str,
        depth: int = 10,
        max_children: int | None = None,
    ) -> JobNode | None:
        """The tree under a job, or ``None`` if the job does not exist.

        ``depth`` counts levels, the job's own included (``1``: the job alone);
        ``max_children`` keeps only the first children of each node: only that page of
        each node's children is read, and ``hidden_children`` tells how many were left
        out. Children that no longer exist are left out.
        """
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if max_children is not None and max_children < 0:
            raise ValueError(f"max_children must not be negative, got {max_children}")
        record = await self.store.get_job(queue_name, job_id)
        if record is None:
            return None
        root = JobNode(Job(self.store, record, clock=self._clock))
        level = [root]
        for _ in range(depth - 1):
            if not level:
                break
            dependencies = await _gather(
                [partial(self._children_of, node, max_children) for node in level]
            )
            wanted: list[tuple[JobNode, str, str]] = []
            for node, chosen in zip(level, dependencies, strict=True):
                wanted.extend((node, dep.queue, dep.id) for dep in chosen)
            records = await _gather(
                [partial(self.store.get_job, queue, child_id) for _, queue, child_id in wanted]
            )
            next_level: list[JobNode] = []
            for (parent, _, _), child in zip(wanted, records, strict=True):
                if child is None:
                    continue
                node = JobNode(Job(self.store, child, clock=self._clock))
                parent.children.append(node)
                next_level.append(node)
            level = next_level
        return root

    async def _children_of(self, node: JobNode, max_children: int | None) -> list[ChildDependency]:
        """The node's dependency records to draw: all of them, or the first page of
        ``max_children``, noting in ``node.hidden_children`` how many more there are."""
        queue, job_id = node.job.queue_name, node.job.id
        if max_children is None:
            return await self.store.get_dependencies(queue, job_id)
        chosen: list[ChildDependency] = []
        more = True
        if max_children > 0:
            page = await self.store.get_dependency_page(
                queue, job_id, cursor=None, limit=max_children
            )
            chosen, more = page.dependencies, page.next_cursor is not None
        if more:
            counts = await self.store.get_dependency_counts(queue, job_id)
            node.hidden_children = max(0, sum(counts.values()) - len(chosen))
        return chosen

    async def close(self) -> None:
        """Nothing to release: the store stays open for its other users."""
