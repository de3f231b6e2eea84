"""``FlowProducer``: add trees of jobs whose parents wait for their children."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as replaced
from functools import partial
from typing import Any, TypeVar

import anyio

from . import codec
from .clock import Clock, system_clock
from .errors import DagError, DuplicateJobError, InvalidJobStateError, JobNotFoundError
from .ids import new_id
from .job import Job, cancel_job
from .models import (
    MAX_JOB_ID_BYTES,
    MAX_JOB_NAME_BYTES,
    DagJob,
    FlowJob,
    JobOptions,
    JobState,
    ParentPolicy,
)
from .pacing import Pacer
from .queue import (
    OptionsLike,
    adopt,
    build_new_job,
    check_name,
    explicit_fields,
    record_of,
    resolve_options,
)
from .store import (
    ChildDependency,
    DagEdge,
    DeduplicatedAdd,
    DeduplicationKey,
    NewJob,
    StoreInterface,
)
from .telemetry import sending_flows

__all__ = ["FlowProducer", "JobNode"]

FlowLike = FlowJob | Mapping[str, Any]
DagLike = DagJob | Mapping[str, Any]
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
    shown_elsewhere: bool = False
    """This job is a DAG's shared node already drawn at another place of the same
    ``get_flow`` result, with its children there; this node has none."""

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
    root_opts: JobOptions
    deduplication: list[tuple[int, DeduplicationKey]] = field(default_factory=list)
    """``(index into group, key)`` of its deduplicated leaves (DEDUPLICATED NODE)."""


def _dag_order(nodes: Sequence[DagJob], local: Mapping[str, DagJob]) -> list[DagJob]:
    """The nodes, each after every node of the DAG it depends on; ``DagError`` naming a
    cycle if there is one."""
    order: list[DagJob] = []
    mark: dict[str, int] = {}  # 1: on the current path, 2: placed
    inner = {node.id: [dep for dep in node.depends_on if dep in local] for node in nodes}
    for start in nodes:
        if start.id in mark:
            continue
        # Iterative depth-first walk: (node, index of the next dependency to visit).
        path: list[tuple[DagJob, int]] = [(start, 0)]
        mark[start.id] = 1
        while path:
            node, index = path[-1]
            deps = inner[node.id]
            if index < len(deps):
                path[-1] = (node, index + 1)
                target = local[deps[index]]
                state = mark.get(target.id)
                if state == 1:
                    ids = [entry.id for entry, _ in path]
                    cycle = [*ids[ids.index(target.id) :], target.id]
                    raise DagError("the DAG has a cycle: " + " -> ".join(map(repr, cycle)))
                if state is None:
                    mark[target.id] = 1
                    path.append((target, 0))
                continue
            mark[node.id] = 2
            order.append(node)
            path.pop()
    return order


_DAG_KEYS = frozenset({"id", "name", "queue_name", "data", "opts", "depends_on"})


def _dag_node(raw: DagLike) -> DagJob:
    """A DAG entry as a ``DagJob``. A plain dict of the right shape skips pydantic (names
    and options are validated later either way); anything else goes through it, so the
    error names the bad field."""
    if isinstance(raw, DagJob):
        return raw
    if isinstance(raw, Mapping) and _DAG_KEYS.issuperset(raw):
        depends_on = raw.get("depends_on", [])
        fields = (raw.get("id"), raw.get("name"), raw.get("queue_name"))
        opts = raw.get("opts")
        if (
            all(isinstance(value, str) and value for value in fields)
            and isinstance(depends_on, list)
            and all(isinstance(ref, str) for ref in depends_on)
            and (opts is None or isinstance(opts, dict | JobOptions))
        ):
            return DagJob.model_construct(
                id=raw["id"],
                name=raw["name"],
                queue_name=raw["queue_name"],
                data=raw.get("data"),
                opts=opts,
                depends_on=depends_on,
            )
    return DagJob.model_validate(raw)


def _existing_ref(ref: str, node_id: str) -> tuple[str, str]:
    """``(queue, id)`` of a ``"queue/id"`` dependency; ``DagError`` if ``ref`` is neither
    that nor an id of the DAG."""
    queue, sep, job_id = ref.rpartition("/")
    if not sep or not queue or not job_id:
        raise DagError(f"job {node_id!r} of the DAG depends on unknown id {ref!r}")
    return queue, job_id


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


def _key_of(opts: JobOptions) -> DeduplicationKey | None:
    dedup = opts.deduplication
    if dedup is None:
        return None
    return DeduplicationKey(dedup.id, dedup.ttl, dedup.extend, dedup.replace)


def _leaf_only(name: str, queue: str) -> ValueError:
    return ValueError(
        f"opts.deduplication of job {name!r} of queue {queue!r}: only a leaf of a flow "
        "(a node without children) can be deduplicated"
    )


def _as_dag(
    plans: Sequence[_Planned],
) -> tuple[list[NewJob], list[DagEdge], list[tuple[int, DeduplicationKey]]]:
    """Trees as one DAG for ``add_dag``: their jobs without parents, each child one edge
    to its parent with its policy (in the order of the jobs, so each parent keeps its
    children in order), and the deduplicated leaves by index into the jobs."""
    jobs: list[NewJob] = []
    edges: list[DagEdge] = []
    entries: list[tuple[int, DeduplicationKey]] = []
    for plan in plans:
        entries.extend((len(jobs) + index, key) for index, key in plan.deduplication)
        for new in plan.group:
            if new.parent_id is not None and new.parent_queue is not None:
                policy = new.parent_policy or ParentPolicy.FAIL
                edges.append(DagEdge(new.parent_queue, new.parent_id, new.queue, new.id, policy))
            jobs.append(replaced(new, parent_id=None, parent_queue=None, parent_policy=None))
    return jobs, edges, entries


def _link_root(plan: _Planned) -> None:
    """Copy the root's parent link (set after planning) into its returned job."""
    head, record = plan.group[0], plan.root.job.record
    record.parent_id, record.parent_queue = head.parent_id, head.parent_queue
    record.parent_policy = head.parent_policy


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
        deduplicable: bool = False,
    ) -> _Planned:
        """Validate one tree and turn it into ``NewJob``s, parents before children.

        ``deduplicable``: its leaves may carry ``opts.deduplication`` (``add``,
        ``add_bulk``); elsewhere it is refused. A wide or deep tree takes a while:
        ``pacer`` lets other tasks run meanwhile.
        """
        group: list[NewJob] = []
        deduplication: list[tuple[int, DeduplicationKey]] = []
        seen: set[str] = set()
        root: JobNode | None = None
        root_opts = JobOptions()
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
            if parent is not None and opts.parent is not None:
                raise ValueError(
                    f"job {name!r} of queue {queue!r}: opts.parent is only for the root of "
                    "a flow (a child's parent is the node above it)"
                )
            job_id = opts.job_id or new_id()
            if job_id in seen:
                raise DuplicateJobError(f"job id {job_id!r} is used twice in one flow")
            seen.add(job_id)
            data = codec.dumps(node_data, what=partial(_data_of, name, queue))
            key = _key_of(opts)
            if key is not None and deduplicable and children:
                raise _leaf_only(name, queue)
            new = build_new_job(
                queue=queue,
                name=name,
                data=data,
                opts=opts,
                job_id=job_id,
                has_children=bool(children),
                deduplicable=deduplicable,
            )
            if key is not None:
                deduplication.append((len(group), key))
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
                root_opts = opts
            else:
                parent.children.append(node)
            max_depth = max(max_depth, depth)
            for child in reversed(children):
                stack.append((child, node, opts, depth + 1))
        assert root is not None
        return _Planned(group, root, max_depth, root_opts, deduplication)

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
        flow is returned. A leaf with ``opts.deduplication`` whose id a live job holds is
        not added: that job becomes its parent's dependency and takes its place in the
        returned tree (see ``add_bulk``).
        """
        return (await self.add_bulk([flow], queues_options))[0]

    async def add_bulk(
        self,
        flows: Sequence[FlowLike],
        queues_options: Mapping[str, OptionsLike] | None = None,
    ) -> list[JobNode]:
        """Add several flows in one atomic step: every job of every tree, or none.

        A root with ``opts.parent`` becomes a child of that existing job, which must be
        in ``waiting-children`` or ``active`` (``InvalidJobStateError`` otherwise,
        ``JobNotFoundError`` if it does not exist; nothing is written either way).

        A leaf (a node without children) may carry ``opts.deduplication``: while a live
        job holds its id (in the leaf's queue), the leaf is not added and that job becomes
        its parent's dependency instead (its completion resolves every parent waiting for
        it; a completed one resolves the parent at once), in the same atomic step; the
        returned tree shows that job in the leaf's place. A free id is taken by the new
        leaf. Such flows are written as one DAG (``add_dag``); their roots must not set
        ``opts.parent``.
        """
        defaults = self._queue_defaults(queues_options)
        now = self._clock()
        pacer = Pacer()
        plans = [await self._plan(tree, defaults, now, pacer, True) for tree in flows]
        if any(plan.deduplication for plan in plans):
            for plan in plans:
                if plan.root_opts.parent is not None:
                    head = plan.group[0]
                    raise ValueError(
                        f"job {head.name!r} of queue {head.queue!r}: a flow with a "
                        "deduplicated leaf is added on its own, without opts.parent on "
                        "its root (in add_bulk, no root may set opts.parent then)"
                    )
            return await self._write_dag(plans, now, pacer)
        for plan in plans:
            await adopt(self.store, plan.group[0], plan.root_opts)
            _link_root(plan)
        return await self._write(plans, now, pacer, self.store.add_jobs)

    async def _add_children(
        self,
        parent: Job,
        token: str,
        flows: Sequence[FlowLike],
        queues_options: Mapping[str, OptionsLike] | None = None,
    ) -> list[JobNode]:
        """Add trees as children of the running job ``parent`` (``Job.add_children``)."""
        defaults = self._queue_defaults(queues_options)
        now = self._clock()
        pacer = Pacer()
        plans = [await self._plan(tree, defaults, now, pacer) for tree in flows]
        parent_policy = ParentPolicy(parent.opts.fail_parent_on_child_failure)
        for plan in plans:
            if plan.root_opts.parent is not None:
                raise ValueError(
                    f"job {plan.group[0].name!r}: a child added by add_children must not "
                    "set opts.parent (its parent is the running job)"
                )
            head = plan.group[0]
            head.parent_id, head.parent_queue = parent.id, parent.queue_name
            head.parent_policy = plan.root_opts.child_policy() or parent_policy
            _link_root(plan)

        def call(groups: Sequence[Sequence[NewJob]], when: float) -> Awaitable[list[bool]]:
            return self.store.add_children(parent.queue_name, parent.id, token, groups, when)

        return await self._write(plans, now, pacer, call)

    @staticmethod
    async def _check_taken(plans: list[_Planned], pacer: Pacer) -> None:
        """``DuplicateJobError`` for a ``(queue, id)`` used in two flows of one call."""
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

    async def _write(
        self,
        plans: list[_Planned],
        now: float,
        pacer: Pacer,
        call: Callable[[Sequence[Sequence[NewJob]], float], Awaitable[list[bool]]],
    ) -> list[JobNode]:
        """Write the planned trees in one store call; an existing root's flow is read."""
        await self._check_taken(plans, pacer)
        if not plans:
            return []
        groups = [plan.group for plan in plans]
        with sending_flows(groups):
            written = await call(groups, now)
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

    async def _write_dag(self, plans: list[_Planned], now: float, pacer: Pacer) -> list[JobNode]:
        """Write planned trees with deduplicated leaves as one DAG (``add_dag``): each
        child one edge to its parent with its policy. As a tree add, a flow whose root
        exists already is not written and is returned as it is."""
        await self._check_taken(plans, pacer)
        heads = [plan.group[0] for plan in plans]
        found = await _gather([partial(self.store.get_job, h.queue, h.id) for h in heads])
        writing = [plan for plan, record in zip(plans, found, strict=True) if record is None]
        by_index: dict[int, DeduplicatedAdd] = {}
        if writing:
            # The spans carry their trace contexts into the jobs' options: copy after.
            with sending_flows([plan.group for plan in writing]):
                jobs, edges, entries = _as_dag(writing)
                results = await self.store.add_dag(jobs, edges, now, entries)
            by_index = dict(zip((index for index, _ in entries), results, strict=True))
        nodes: list[JobNode] = []
        offset = 0
        for plan, record in zip(plans, found, strict=True):
            if record is not None:
                existing = await self.get_flow(record.id, record.queue, depth=max(plan.depth, 10))
                if existing is None:
                    raise DuplicateJobError(
                        f"job id {record.id!r} already exists in queue {record.queue!r}"
                    )
                nodes.append(existing)
                continue
            await self._show_holders(plan, offset, by_index)
            offset += len(plan.group)
            nodes.append(plan.root)
        return nodes

    async def _show_holders(
        self, plan: _Planned, offset: int, results: Mapping[int, DeduplicatedAdd]
    ) -> None:
        """Put each live job that deduplicated a leaf of ``plan`` in the leaf's place."""
        if not any(not results[offset + index].written for index, _ in plan.deduplication):
            return
        placed: dict[int, JobNode] = {}
        parents: dict[int, JobNode] = {}
        for index, node in enumerate(plan.root.walk()):  # parents first, as the group
            assert node.job.id == plan.group[index].id
            placed[index] = node
            for child in node.children:
                parents[id(child)] = node
        for index, _ in plan.deduplication:
            added = results[offset + index]
            if added.written:
                continue
            node = placed[index]
            record = await self.store.get_job(node.job.queue_name, added.job_id)
            parent = parents.get(id(node))
            if record is not None:
                node.job = Job(self.store, record, clock=self._clock)
            elif parent is not None:  # finished and removed since: nothing to show
                parent.children.remove(node)

    async def add_dag(
        self,
        nodes: Sequence[DagLike],
        queues_options: Mapping[str, OptionsLike] | None = None,
    ) -> dict[str, Job]:
        """Add a DAG (jobs with any number of parents) atomically; returns ``{id: Job}``.

        Each node waits in ``waiting-children`` for every job it ``depends_on``: ids of
        this DAG, or ``"queue/id"`` of jobs already in the store (a completed one resolves
        at once with its value; a failed one is refused with ``InvalidJobStateError``; a
        missing one with ``JobNotFoundError``). A duplicate id, an unknown id or a cycle
        is an error naming it, and nothing is written. Failure policies apply per edge:
        a node's own child flag wins, else each dependent's
        ``fail_parent_on_child_failure``.

        A node without ``depends_on`` may carry ``opts.deduplication``: while a live job
        holds its id (in the node's queue), the node is not added, its dependents depend
        on that job instead, and the result maps the node's id to that job.
        """
        defaults = self._queue_defaults(queues_options)
        parsed = [_dag_node(node) for node in nodes]
        if not parsed:
            return {}
        local: dict[str, DagJob] = {}
        for node in parsed:
            if node.id in local:
                raise DuplicateJobError(f"id {node.id!r} is used twice in one DAG")
            local[node.id] = node
        existing: dict[tuple[str, str], None] = {}
        for node in parsed:
            if len(set(node.depends_on)) != len(node.depends_on):
                twice = next(ref for ref in node.depends_on if node.depends_on.count(ref) > 1)
                raise DagError(f"job {node.id!r} of the DAG depends on {twice!r} twice")
            for ref in node.depends_on:
                if ref not in local:
                    existing[_existing_ref(ref, node.id)] = None
        order = _dag_order(parsed, local)
        now = self._clock()
        pacer = Pacer()
        options: dict[str, JobOptions] = {}
        jobs: dict[str, Job] = {}
        news: dict[str, NewJob] = {}
        keys: set[tuple[str, str]] = set()
        deduplicated: dict[str, DeduplicationKey] = {}
        for node in order:
            if pacer.due():
                await pacer.pause()
            check_name(node.name, "job name", MAX_JOB_NAME_BYTES)
            check_name(node.queue_name, "queue name")
            opts = resolve_options(node.opts, defaults.get(node.queue_name))
            job_id = opts.job_id or new_id()
            if (node.queue_name, job_id) in keys:
                raise DuplicateJobError(
                    f"job id {job_id!r} of queue {node.queue_name!r} is used twice in one DAG"
                )
            keys.add((node.queue_name, job_id))
            data = codec.dumps(node.data, what=partial(_data_of, node.name, node.queue_name))
            key = _key_of(opts)
            if key is not None and node.depends_on:
                raise ValueError(
                    f"opts.deduplication of job {node.id!r} of the DAG: only a node without "
                    "depends_on can be deduplicated"
                )
            new = build_new_job(
                queue=node.queue_name,
                name=node.name,
                data=data,
                opts=opts,
                job_id=job_id,
                has_children=bool(node.depends_on),
                deduplicable=True,
            )
            if key is not None:
                deduplicated[node.id] = key
            options[node.id] = opts
            news[node.id] = new
        # An existing job's own child flag decides its edges too: read it first (the
        # flags never change; the store checks the job's state again when writing).
        found = await _gather([partial(self.store.get_job, q, i) for q, i in existing])
        flags: dict[tuple[str, str], ParentPolicy | None] = {}
        for (queue, job_id), record in zip(existing, found, strict=True):
            if record is None:
                raise JobNotFoundError(queue, job_id)
            if record.state is JobState.FAILED:
                raise InvalidJobStateError(
                    f"job {job_id!r} of queue {queue!r} has failed: "
                    "retry it before a new job depends on it"
                )
            flags[(queue, job_id)] = JobOptions.model_validate_json(record.opts).child_policy()
        edges: list[DagEdge] = []
        for node in parsed:
            parent = news[node.id]
            policy = ParentPolicy(options[node.id].fail_parent_on_child_failure)
            for ref in node.depends_on:
                if ref in local:
                    child_queue, child_id = news[ref].queue, news[ref].id
                    own = options[ref].child_policy()
                else:
                    child_queue, child_id = _existing_ref(ref, node.id)
                    own = flags[(child_queue, child_id)]
                edges.append(DagEdge(parent.queue, parent.id, child_queue, child_id, own or policy))
        ordered = [news[node.id] for node in order]
        place = {node.id: index for index, node in enumerate(order)}
        entries = [(place[node_id], key) for node_id, key in deduplicated.items()]
        results = await self.store.add_dag(ordered, edges, now, entries)
        records = {node.id: record_of(news[node.id], now) for node in parsed}
        for node_id, added in zip(deduplicated, results, strict=True):
            if not added.written:
                holder = await self.store.get_job(news[node_id].queue, added.job_id)
                if holder is not None:
                    records[node_id] = holder
        by_key = {(record.queue, record.id): record for record in records.values()}
        for edge in edges:  # the first dependent of each new job is its parent_id
            record = by_key.get((edge.child_queue, edge.child_id))
            if record is not None and record.parent_id is None:
                record.parent_queue, record.parent_id = edge.parent_queue, edge.parent_id
                record.parent_policy = edge.policy
        for node in parsed:
            jobs[node.id] = Job(self.store, records[node.id], clock=self._clock)
        return jobs

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
        out. Children that no longer exist are left out. A DAG's shared job appears
        once with its children, at its first place level by level; its other places
        hold a node with ``shown_elsewhere`` set and no children.
        """
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if max_children is not None and max_children < 0:
            raise ValueError(f"max_children must not be negative, got {max_children}")
        record = await self.store.get_job(queue_name, job_id)
        if record is None:
            return None
        root = JobNode(Job(self.store, record, clock=self._clock))
        drawn = {(queue_name, job_id)}
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
                if (child.queue, child.id) in drawn:
                    node.shown_elsewhere = True
                    continue
                drawn.add((child.queue, child.id))
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

    async def cancel(self, job_id: str, queue_name: str, reason: str | None = None) -> int:
        """Cancel a job of a flow and every unfinished job below it; returns how many.

        The same as ``Job.cancel`` (see there) without reading the job first:
        ``JobNotFoundError`` if it does not exist, 0 if it has finished.
        """
        check_name(queue_name, "queue name")
        check_name(job_id, "job id", MAX_JOB_ID_BYTES)
        return await cancel_job(self.store, queue_name, job_id, reason, self._clock())

    async def close(self) -> None:
        """Nothing to release: the store stays open for its other users."""
