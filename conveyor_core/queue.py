"""``Queue``: add jobs to a named queue and manage it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import codec
from .clock import Clock, seconds, system_clock
from .engine import minute_of
from .errors import DuplicateJobError, JobNotFoundError
from .ids import new_id
from .job import Job, JobPage, parse_opts
from .models import (
    CHILD_FAILURE_FLAGS,
    MAX_JOB_NAME_BYTES,
    MAX_QUEUE_NAME_BYTES,
    JobOptions,
    JobState,
    ParentPolicy,
    RateLimit,
    as_rate_limit,
    shown,
    text_problem,
)
from .pacing import Pacer
from .store import (
    METRICS_MINUTES,
    DeduplicationKey,
    GroupLimits,
    JobRecord,
    MetricKind,
    NewJob,
    StoreInterface,
)
from .telemetry import sending

if TYPE_CHECKING:
    from .models import FlowJob
    from .schedulers import JobScheduler

__all__ = ["Queue"]

OptionsLike = JobOptions | Mapping[str, Any]
StatesLike = JobState | str | Iterable[JobState | str]

_DEFAULT_OPTS = JobOptions()
# The model's own validator and serializer, called directly: at every add with options,
# model_validate and model_dump_json add a fifth and a third to their cost.
_validate_options = JobOptions.__pydantic_validator__.validate_python
_OPTIONS_SERIALIZER = JobOptions.__pydantic_serializer__


def check_name(value: object, what: str, max_bytes: int = MAX_QUEUE_NAME_BYTES) -> str:
    """``value`` if it is a non-empty string of at most ``max_bytes`` bytes of UTF-8
    (by default the queue name limit), else ``ValueError``/``TypeError``."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if (problem := text_problem(value, max_bytes)) is not None:
        raise ValueError(f"{what} {shown(value)} {problem}")
    return value


def explicit_fields(opts: OptionsLike) -> dict[str, Any]:
    """The fields a user set on ``opts`` (validated), for merging option layers."""
    model = opts if isinstance(opts, JobOptions) else JobOptions.model_validate(opts)
    return model.model_dump(exclude_unset=True)


def resolve_options(
    opts: OptionsLike | None, defaults: Mapping[str, Any] | None = None
) -> JobOptions:
    """A job's effective options: its own fields over ``defaults`` (explicit fields).

    A child failure flag set on the job replaces any child failure flag of the
    defaults, since at most one may be set.
    """
    if not defaults:
        if opts is None:
            return _DEFAULT_OPTS
        return opts if isinstance(opts, JobOptions) else _validate_options(opts)
    if opts is None:
        return JobOptions.model_validate(defaults)
    own = explicit_fields(opts)
    merged = dict(defaults)
    if any(own.get(flag) for flag in CHILD_FAILURE_FLAGS):
        for flag in CHILD_FAILURE_FLAGS:
            merged.pop(flag, None)
    merged.update(own)
    return JobOptions.model_validate(merged)


def options_json(opts: JobOptions) -> str:
    """The JSON text a store keeps for ``opts`` (only non-default fields)."""
    if opts is _DEFAULT_OPTS:
        return "{}"
    return _OPTIONS_SERIALIZER.to_json(opts, exclude_defaults=True).decode()


def _check_concurrency(value: object, what: str) -> None:
    """A concurrency limit is an ``int`` of at least 1 (``bool`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value!r}")


def build_new_job(
    *,
    queue: str,
    name: str,
    data: str,
    opts: JobOptions,
    job_id: str,
    has_children: bool = False,
    deduplicable: bool = False,
) -> NewJob:
    """A ``NewJob`` with the initial state the core picks for it. ``deduplicable``: the
    caller adds it under its deduplication id (``Queue.add`` through
    ``add_deduplicated``, a flow's or DAG's leaf through ``add_dag``); elsewhere an
    ``opts.deduplication`` is refused."""
    if opts.deduplication is not None and not deduplicable:
        raise ValueError(
            f"opts.deduplication of job {name!r}: deduplication applies to Queue.add and "
            "to leaves of FlowProducer flows and DAGs, not to Queue.add_bulk, "
            "Job.add_children or job schedulers"
        )
    if opts.deduplication is not None and opts.parent is not None:
        raise ValueError(
            f"opts.deduplication of job {name!r}: a deduplicated job has no parent; "
            "drop opts.parent or opts.deduplication"
        )
    if has_children:
        state = JobState.WAITING_CHILDREN
    elif opts.delay > 0:
        state = JobState.DELAYED
    else:
        state = JobState.WAITING
    return NewJob(
        id=job_id,
        queue=queue,
        name=name,
        data=data,
        opts=options_json(opts),
        state=state,
        priority=opts.priority,
        lifo=opts.lifo,
        delay=opts.delay,
        keep_completed=opts.keep_count("complete"),
        keep_failed=opts.keep_count("fail"),
        group_id=opts.group_id,
    )


async def adopt(store: StoreInterface, new: NewJob, opts: JobOptions) -> None:
    """Make ``new`` a child of the existing job ``opts.parent`` names (if any).

    The child's policy is its own flag, else the parent's ``fail_parent_on_child_failure``
    (read from the parent's stored options). The store checks the parent's state when it
    writes (ADD TO AN EXISTING PARENT); a parent missing already is reported here.
    """
    ref = opts.parent
    if ref is None:
        return
    record = await store.get_job(ref.queue, ref.id)
    if record is None:
        raise JobNotFoundError(ref.queue, ref.id)
    policy = opts.child_policy() or ParentPolicy(
        parse_opts(record.opts).fail_parent_on_child_failure
    )
    new.parent_id, new.parent_queue, new.parent_policy = ref.id, ref.queue, policy


def record_of(new: NewJob, now: float) -> JobRecord:
    """The record a store holds right after writing ``new`` at ``now``."""
    return JobRecord(
        id=new.id,
        queue=new.queue,
        name=new.name,
        data=new.data,
        opts=new.opts,
        state=new.state,
        priority=new.priority,
        lifo=new.lifo,
        delay=new.delay,
        created_at=now,
        run_at=now + new.delay if new.state is JobState.DELAYED else None,
        keep_completed=new.keep_completed,
        keep_failed=new.keep_failed,
        parent_id=new.parent_id,
        parent_queue=new.parent_queue,
        parent_policy=new.parent_policy,
    )


def normalize_states(states: StatesLike) -> list[JobState]:
    """One or many states (``JobState`` or their string values) as a list."""
    if isinstance(states, JobState | str):
        return [JobState(states)]
    return [JobState(state) for state in states]


class Queue:
    """A named queue in a store: add jobs, read them, pause, clean.

    The queue does not own the store: :meth:`close` leaves it open.
    """

    def __init__(
        self,
        name: str,
        *,
        store: StoreInterface,
        default_job_options: OptionsLike | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.name = check_name(name, "queue name")
        self.store = store
        self._clock = clock
        self._defaults: dict[str, Any] | None = (
            explicit_fields(default_job_options) if default_job_options is not None else None
        )
        self.default_job_options: JobOptions = resolve_options(None, self._defaults)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    # ------------------------------------------------------------------ adding

    def _prepare(
        self, name: str, data: Any, opts: OptionsLike | None, *, single: bool = False
    ) -> tuple[NewJob, JobOptions]:
        check_name(name, "job name", MAX_JOB_NAME_BYTES)
        options = resolve_options(opts, self._defaults)
        text = codec.dumps(data, what=lambda: f"data of job {name!r} in queue {self.name!r}")
        new = build_new_job(
            queue=self.name,
            name=name,
            data=text,
            opts=options,
            job_id=options.job_id or new_id(),
            deduplicable=single,
        )
        return new, options

    async def add(self, name: str, data: Any = None, opts: OptionsLike | None = None) -> Job:
        """Add one job. With an ``opts.job_id`` that already exists in this queue,
        nothing is written and the existing job is returned. With
        ``opts.deduplication`` whose id a live job holds, nothing is written and that
        job is returned (see ``Deduplication``)."""
        new, options = self._prepare(name, data, opts, single=True)
        await adopt(self.store, new, options)
        now = self._clock()
        if (dedup := options.deduplication) is not None:
            key = DeduplicationKey(dedup.id, dedup.ttl, dedup.extend, dedup.replace)
            with sending(self.name, [new]):
                added = await self.store.add_deduplicated(new, key, now)
            if added.written:
                return Job(self.store, record_of(new, now), clock=self._clock)
            holder = await self.get_job(added.job_id)
            if holder is None:
                # Finished and removed between the two calls: report what happened.
                raise DuplicateJobError(
                    f"job {new.id!r} was deduplicated by job {added.job_id!r} "
                    f"(deduplication id {dedup.id!r}), which has since been removed"
                )
            return holder
        with sending(self.name, [new]):
            (written,) = await self.store.add_jobs([[new]], now)
        if not written:
            existing = await self.get_job(new.id)
            if existing is not None:
                return existing
            # Removed between the two calls: report it as the duplicate it was.
            raise DuplicateJobError(f"job id {new.id!r} already exists in queue {self.name!r}")
        return Job(self.store, record_of(new, now), clock=self._clock)

    async def add_bulk(self, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Add many jobs in one atomic step: all are written or none.

        Each item is ``{"name": ..., "data": ..., "opts": ...}`` (``data`` and ``opts``
        optional). An item whose ``job_id`` already exists is returned as it is.
        """
        news: list[NewJob] = []
        seen: set[str] = set()
        # Thousands of jobs take tens of milliseconds to validate: let other tasks run
        # every few milliseconds meanwhile (nothing is written before the store call).
        pacer = Pacer()
        for index, item in enumerate(jobs):
            if pacer.due():
                await pacer.pause()
            if not isinstance(item, Mapping):
                raise TypeError(f"add_bulk item {index} must be a dict, got {type(item).__name__}")
            unknown = set(item) - {"name", "data", "opts"}
            if unknown:
                raise ValueError(f"add_bulk item {index} has unknown keys: {sorted(unknown)}")
            new, options = self._prepare(item.get("name"), item.get("data"), item.get("opts"))  # type: ignore[arg-type]
            await adopt(self.store, new, options)
            if new.id in seen:
                raise DuplicateJobError(f"job id {new.id!r} is used twice in one add_bulk call")
            seen.add(new.id)
            news.append(new)
        if not news:
            return []
        now = self._clock()
        with sending(self.name, news):
            written = await self.store.add_jobs([[new] for new in news], now)
        result: list[Job] = []
        pacer = Pacer()
        for new, ok in zip(news, written, strict=True):
            if pacer.due():
                await pacer.pause()
            if ok:
                result.append(Job(self.store, record_of(new, now), clock=self._clock))
                continue
            existing = await self.get_job(new.id)
            if existing is None:
                raise DuplicateJobError(f"job id {new.id!r} already exists in queue {self.name!r}")
            result.append(existing)
        return result

    # ------------------------------------------------------------------ reading

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or ``None``."""
        record = await self.store.get_job(self.name, job_id)
        return None if record is None else Job(self.store, record, clock=self._clock)

    async def get_jobs(
        self, states: StatesLike, start: int = 0, end: int | None = None
    ) -> list[Job]:
        """Jobs in one or many states, from index ``start`` to ``end`` inclusive; ``end``
        ``None`` or ``-1`` lists to the last job."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int of at least 0, got {start!r}")
        if end == -1 and not isinstance(end, bool):
            end = None
        elif end is not None and (isinstance(end, bool) or not isinstance(end, int) or end < 0):
            raise ValueError(f"end must be None, -1 (the last job) or an index, got {end!r}")
        records = await self.store.get_jobs(self.name, normalize_states(states), start, end)
        return [Job(self.store, record, clock=self._clock) for record in records]

    async def get_job_counts(self) -> dict[str, int]:
        """How many jobs are in each state, keyed by the state's value."""
        counts = await self.store.get_counts(self.name)
        return {state.value: counts.get(state, 0) for state in JobState}

    async def search_jobs(
        self,
        text: str | None = None,
        name: str | None = None,
        states: StatesLike | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of this queue's jobs, newest first, matching every filter given.

        ``text`` matches jobs whose id, name or data contains it (ASCII letters in any
        case); ``name`` a job name exactly; ``states`` one state or several. Pass the
        page's ``next_cursor`` back as ``cursor`` for the next page; it is ``None`` after
        the last. A page may hold fewer than ``limit`` jobs while more remain (a store
        bounds the work of one call), so keep going until ``next_cursor`` is ``None``.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be an int from 1 to 10000, got {limit!r}")
        if text is not None:
            if not isinstance(text, str):
                raise TypeError(f"search text must be a str, got {type(text).__name__}")
            if (problem := text_problem(text)) is not None:
                raise ValueError(f"search text {text!r} {problem}")
        if name is not None:
            name = check_name(name, "job name", MAX_JOB_NAME_BYTES)
        wanted = None if states is None else normalize_states(states)
        page = await self.store.search_jobs(
            self.name, text=text or None, name=name, states=wanted, limit=limit, cursor=cursor
        )
        return JobPage(
            [Job(self.store, record, clock=self._clock) for record in page.jobs],
            page.next_cursor,
        )

    async def get_metrics(self, kind: MetricKind, minutes: int = 60) -> list[int]:
        """Jobs that finished as ``kind`` (``"completed"`` or ``"failed"``) in each of the
        last ``minutes`` minutes, oldest first, the current minute last; kept by the
        store inside the transitions that finish jobs."""
        if kind not in ("completed", "failed"):
            raise ValueError(f"kind must be 'completed' or 'failed', got {kind!r}")
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, int)
            or not 1 <= minutes <= METRICS_MINUTES
        ):
            raise ValueError(f"minutes must be an int from 1 to {METRICS_MINUTES}, got {minutes!r}")
        end = minute_of(self._clock())
        start = end - minutes + 1
        counts = await self.store.get_metrics(self.name, kind, start, end)
        return [counts.get(minute, 0) for minute in range(start, end + 1)]

    # ------------------------------------------------------------------ managing

    async def pause(self) -> None:
        """Stop workers from taking this queue's jobs."""
        await self.store.pause(self.name)

    async def resume(self) -> None:
        """Let workers take this queue's jobs again."""
        await self.store.resume(self.name)

    async def is_paused(self) -> bool:
        return await self.store.is_paused(self.name)

    async def drain(self, include_delayed: bool = False) -> int:
        """Remove every waiting (and, if asked, delayed) job, each with its unfinished
        descendants; returns how many it removed, not counting a job that went with the
        removal of its parent."""
        return await self.store.drain(self.name, include_delayed, self._clock())

    async def clean(
        self,
        grace: float | timedelta,
        limit: int | None = None,
        state: JobState | str = JobState.COMPLETED,
    ) -> list[str]:
        """Remove up to ``limit`` jobs in ``state`` finished (or, for unfinished states,
        created) at least ``grace`` seconds ago; returns their ids."""
        older_than = self._clock() - seconds(grace, what="grace")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        return await self.store.clean(self.name, JobState(state), older_than, limit)

    async def obliterate(self, force: bool = False) -> None:
        """Delete the queue and all its jobs; refuses while jobs are active unless
        ``force``."""
        await self.store.obliterate(self.name, force)

    async def retry_jobs(self, state: JobState | str = JobState.FAILED) -> int:
        """Re-run every failed (or completed) job; returns how many."""
        return await self.store.retry_jobs(self.name, JobState(state), self._clock())

    async def promote_jobs(self) -> int:
        """Move every delayed job to waiting now; returns how many."""
        return await self.store.promote_jobs(self.name, self._clock())

    # ------------------------------------------------------------------ schedulers

    # ------------------------------------------------------------------ flow control

    async def set_global_concurrency(self, concurrency: int) -> None:
        """At most ``concurrency`` jobs of this queue are active at once, across every
        worker and process (enforced by the store when jobs are taken)."""
        _check_concurrency(concurrency, "concurrency")
        await self.store.set_global_concurrency(self.name, concurrency)

    async def get_global_concurrency(self) -> int | None:
        """The queue's global concurrency, or ``None`` if it has none."""
        return await self.store.get_global_concurrency(self.name)

    async def remove_global_concurrency(self) -> None:
        """Remove the queue's global concurrency: workers' own concurrency alone applies."""
        await self.store.set_global_concurrency(self.name, None)

    async def set_group_limits(
        self,
        concurrency: int | None = None,
        rate_limit: RateLimit | Mapping[str, Any] | None = None,
    ) -> None:
        """Limits that hold for each group of this queue apart (``opts.group_id``): at
        most ``concurrency`` active jobs per group, and at most ``rate_limit.max`` jobs
        of a group started per ``rate_limit.duration`` seconds, across every worker and
        process. ``None`` lifts a limit; calling it with neither lifts both."""
        if concurrency is not None:
            _check_concurrency(concurrency, "group concurrency")
        limit = as_rate_limit(rate_limit)
        await self.store.set_group_limits(
            self.name, concurrency, None if limit is None else (limit.max, limit.duration)
        )

    async def get_group_limits(self) -> GroupLimits:
        """The queue's group limits (both ``None`` when it has none)."""
        return await self.store.get_group_limits(self.name)

    async def get_group_counts(self) -> dict[str, dict[str, int]]:
        """For each group with jobs in this queue: how many are in each state."""
        counts = await self.store.get_group_counts(self.name)
        return {
            group: {state.value: by_state.get(state, 0) for state in JobState}
            for group, by_state in sorted(counts.items())
        }

    async def upsert_job_scheduler(
        self,
        scheduler_id: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        tz: str | None = None,
        template: Mapping[str, Any] | None = None,
        flow: FlowJob | Mapping[str, Any] | None = None,
        start_date: datetime | float | None = None,
        end_date: datetime | float | None = None,
        limit: int | None = None,
    ) -> JobScheduler:
        """Create or replace the job scheduler ``scheduler_id`` of this queue.

        Each tick of ``cron`` (a cron pattern, 5 fields or 6 with seconds first, in
        timezone ``tz``, UTC by default) or of ``every`` (seconds) adds one job built
        from ``template`` (``{"name", "data", "opts"}``) or one ``flow`` whose root is in
        this queue, exactly once however many workers run: workers fire the ticks, no
        other process is needed. ``start_date`` delays the first tick, ``end_date`` ends
        the schedule, ``limit`` caps how many ticks add jobs.

        Replacing a scheduler with another pattern moves its next tick to the new
        pattern's; upserting the same pattern again keeps the next tick (and only
        replaces the template), so every process may upsert its schedules at start.
        Bad input (both or neither of ``cron`` and ``every``, an invalid pattern or
        timezone, a template a plain add would refuse) raises before anything is written.
        """
        from .schedulers import MAX_SCHEDULER_ID_BYTES, describe, make_template, make_timing

        check_name(scheduler_id, "scheduler id", MAX_SCHEDULER_ID_BYTES)
        timing = make_timing(
            cron=cron, every=every, tz=tz, start_date=start_date, end_date=end_date, limit=limit
        )
        text = await make_template(self.name, template, flow, self._defaults, self.store)
        now = self._clock()
        await self.store.upsert_scheduler(
            self.name, scheduler_id, timing.to_json(), text, timing.first_run(now), now
        )
        from .worker import schedules_changed

        schedules_changed(self.store, self.name)
        for record in await self.store.get_schedulers(self.name):
            if record.id == scheduler_id:
                return describe(record)
        raise LookupError(f"scheduler {scheduler_id!r} was removed while it was being set")

    async def get_job_schedulers(self) -> list[JobScheduler]:
        """This queue's job schedulers, by id."""
        from .schedulers import describe

        return [describe(record) for record in await self.store.get_schedulers(self.name)]

    async def get_job_scheduler(self, scheduler_id: str) -> JobScheduler | None:
        """One job scheduler, or ``None``."""
        for scheduler in await self.get_job_schedulers():
            if scheduler.id == scheduler_id:
                return scheduler
        return None

    async def remove_job_scheduler(self, scheduler_id: str) -> bool:
        """Delete a job scheduler (the jobs it added stay); ``False`` if there was none."""
        return await self.store.remove_scheduler(self.name, scheduler_id)

    async def close(self) -> None:
        """Nothing to release: the store stays open for its other users."""
