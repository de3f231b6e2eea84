"""Job schedulers: one job, or one flow, per tick of a cron pattern or an interval.

The core makes every decision here: it validates a schedule, computes its ticks (cron
patterns through ``cronsim``, in the schedule's timezone) and builds each tick's jobs.
A store only keeps the schedulers and fires a tick through the compare-and-set of
:meth:`~conveyor_core.store.StoreInterface.fire_scheduler`, which is what makes a tick
produce exactly one job however many workers see it due (JOB SCHEDULERS in
``conveyor_core.store``). There is no scheduler process: workers fire their queue's due
ticks in their fetch loop (:func:`fire_due_schedulers`).

Ticks:

* ``cron``: every match of the pattern (5 fields, or 6 with seconds first) in ``tz``
  (default UTC), strictly after the moment the schedule is set, and at or after
  ``start_date``.
* ``every``: ``start_date`` (default: the moment the schedule is set), then every
  ``every`` seconds from there.
* After a tick fires at time ``now``, the next tick is the first one after both the
  tick and ``now``: ticks missed while no worker ran give one job, not a backlog.
* ``limit`` caps how many ticks write jobs; a tick after ``end_date`` never fires.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict

from . import codec
from .clock import to_datetime
from .flow import FlowProducer, _node_fields
from .models import MAX_JOB_ID_BYTES, MAX_JOB_NAME_BYTES, MAX_SECONDS, FlowJob, JobOptions
from .pacing import Pacer
from .queue import OptionsLike, build_new_job, check_name, options_json, resolve_options
from .store import NewJob, SchedulerRecord, StoreInterface

__all__ = [
    "MAX_SCHEDULER_ID_BYTES",
    "JobScheduler",
    "fire_due_schedulers",
    "tick_job_id",
]

_ID_PREFIX = "sched:"
MAX_SCHEDULER_ID_BYTES = MAX_JOB_ID_BYTES - len(_ID_PREFIX) - 1 - 20
"""The longest scheduler id, in bytes of UTF-8: its tick job ids must fit the job id
limit."""
MIN_EVERY = 0.001
"""The shortest interval: ticks are told apart by their millisecond."""
DUE_BATCH = 16
"""Due schedulers one worker fires per look."""


def tick_job_id(scheduler_id: str, tick: float) -> str:
    """The id of the first job of a tick: the same for everyone who fires it."""
    return f"{_ID_PREFIX}{scheduler_id}:{round(tick * 1000)}"


class JobScheduler(BaseModel):
    """A job scheduler as :meth:`Queue.get_job_schedulers` reports it."""

    model_config = ConfigDict(frozen=True)

    id: str
    queue_name: str
    cron: str | None = None
    """The cron pattern, or ``None`` for an interval."""
    every: float | None = None
    """The interval in seconds, or ``None`` for a cron pattern."""
    tz: str | None = None
    """The timezone of the cron pattern (``None``: UTC)."""
    start_date: datetime | None = None
    end_date: datetime | None = None
    limit: int | None = None
    """How many ticks write jobs in all; ``None``: no limit."""
    template: dict[str, Any] | None = None
    """``{"name", "data", "opts"}`` of each tick's job, or ``None`` for a flow."""
    flow: dict[str, Any] | None = None
    """The flow each tick adds, or ``None`` for a single job."""
    next_run_at: datetime | None = None
    """The next tick; ``None`` once the scheduler is exhausted (limit or end date)."""
    iterations: int = 0
    """Ticks that wrote their job or flow so far."""

    @property
    def pattern(self) -> str:
        """The cron pattern, or ``every <seconds>s``."""
        return self.cron if self.cron is not None else f"every {self.every:g}s"


@dataclass(frozen=True, slots=True)
class Timing:
    """When a scheduler fires; stored as JSON text (compared as text by the store)."""

    cron: str | None
    every: float | None
    tz: str | None
    start: float | None
    end: float | None
    limit: int | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "cron": self.cron,
                "every": self.every,
                "tz": self.tz,
                "start": self.start,
                "end": self.end,
                "limit": self.limit,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Timing:
        raw = json.loads(text)
        return cls(raw["cron"], raw["every"], raw["tz"], raw["start"], raw["end"], raw["limit"])

    def _zone(self) -> tzinfo:
        return UTC if self.tz is None else ZoneInfo(self.tz)

    def _cron_after(self, moment: float) -> float:
        """The first match of the cron pattern strictly after ``moment``."""
        assert self.cron is not None
        start = datetime.fromtimestamp(moment, tz=self._zone())
        return next(CronSim(self.cron, start)).timestamp()

    def first_run(self, now: float) -> float | None:
        """The first tick of a schedule set at ``now``."""
        if self.cron is not None:
            tick = self._cron_after(now)
            if self.start is not None:
                # Matches at or after the start: step back a second to include it.
                tick = self._cron_after(max(now, self.start - 1.0))
                while tick < self.start:
                    tick = self._cron_after(tick)
        else:
            tick = now if self.start is None else self.start
        return self._bounded(tick)

    def next_run(self, tick: float, now: float) -> float | None:
        """The tick after ``tick`` once it fires at ``now``: the first one after both."""
        if self.cron is not None:
            following = self._cron_after(max(tick, now))
        else:
            assert self.every is not None
            steps = max(1, math.floor((now - tick) / self.every) + 1)
            following = tick + steps * self.every
            while following <= now:
                following += self.every
        return self._bounded(following)

    def _bounded(self, tick: float) -> float | None:
        if self.end is not None and tick > self.end:
            return None
        return tick


def _timestamp(value: datetime | float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what} must be an aware datetime (with a timezone), got {value}")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{what} must be a datetime or a POSIX timestamp, got {value!r}")
    return float(value)


def make_timing(
    *,
    cron: str | None,
    every: float | timedelta | None,
    tz: str | None,
    start_date: datetime | float | None,
    end_date: datetime | float | None,
    limit: int | None,
) -> Timing:
    """A validated :class:`Timing`; ``ValueError``/``TypeError`` naming what is wrong."""
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of cron and every")
    interval: float | None = None
    if cron is not None:
        if not isinstance(cron, str):
            raise TypeError(f"cron must be a str, got {type(cron).__name__}")
        try:
            CronSim(cron, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None
        if tz is not None:
            if not isinstance(tz, str):
                raise TypeError(f"tz must be a str, got {type(tz).__name__}")
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {tz!r}") from None
    else:
        if tz is not None:
            raise ValueError("tz applies to cron patterns only, not to every")
        assert every is not None
        if isinstance(every, bool) or not isinstance(every, int | float | timedelta):
            raise TypeError(f"every must be seconds or a timedelta, got {every!r}")
        interval = every.total_seconds() if isinstance(every, timedelta) else float(every)
        if not MIN_EVERY <= interval <= MAX_SECONDS:
            raise ValueError(
                f"every must be from {MIN_EVERY} to {MAX_SECONDS:.0f} seconds, got {every!r}"
            )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    start = _timestamp(start_date, "start_date")
    end = _timestamp(end_date, "end_date")
    if start is not None and end is not None and end < start:
        raise ValueError("end_date is before start_date")
    return Timing(cron, interval, tz, start, end, limit)


def _check_no_job_id(opts: Any, where: str) -> None:
    job_id = opts.job_id if isinstance(opts, JobOptions) else None
    if isinstance(opts, Mapping):
        job_id = opts.get("job_id")
    if job_id is not None:
        raise ValueError(f"{where} sets a job_id; a scheduler gives each tick's jobs their own ids")
    parent = opts.parent if isinstance(opts, JobOptions) else None
    if isinstance(opts, Mapping):
        parent = opts.get("parent")
    if parent is not None:
        raise ValueError(f"{where} sets a parent; a scheduler's jobs start flows of their own")


async def make_template(
    queue: str,
    template: Mapping[str, Any] | None,
    flow: FlowJob | Mapping[str, Any] | None,
    defaults: Mapping[str, Any] | None,
    store: StoreInterface,
) -> str:
    """The JSON text of what each tick adds, validated as a real add would be."""
    if (template is None) == (flow is None):
        raise ValueError("give exactly one of template and flow")
    if template is not None:
        if not isinstance(template, Mapping):
            raise TypeError(f"template must be a dict, got {type(template).__name__}")
        unknown = set(template) - {"name", "data", "opts"}
        if unknown:
            raise ValueError(f"template has unknown keys: {sorted(unknown)}")
        name = check_name(template.get("name"), "template name", MAX_JOB_NAME_BYTES)
        raw_opts: OptionsLike | None = template.get("opts")
        _check_no_job_id(raw_opts, "the template's opts")
        opts = resolve_options(raw_opts, defaults)
        data = codec.dumps(template.get("data"), what=f"data of scheduler template {name!r}")
        return json.dumps(
            {"name": name, "data": json.loads(data), "opts": json.loads(options_json(opts))},
            separators=(",", ":"),
            ensure_ascii=False,
        )
    tree: Any = flow.model_dump(mode="json") if isinstance(flow, FlowJob) else flow
    if not isinstance(tree, Mapping):
        raise TypeError(f"flow must be a FlowJob or a dict, got {type(tree).__name__}")
    tree = dict(tree)
    tree.setdefault("queue_name", queue)
    if tree["queue_name"] != queue:
        raise ValueError(
            f"the flow's root is in queue {tree['queue_name']!r}; a scheduler of queue "
            f"{queue!r} adds flows whose root is in that queue"
        )
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        name, _, _, opts, children = _node_fields(node)
        _check_no_job_id(opts, f"flow node {name!r}")
        stack.extend(children)
    text = codec.dumps(tree, what=f"flow of a scheduler of queue {queue!r}")
    # Plan it once now, so a bad flow is refused before anything is written.
    await FlowProducer(store=store)._plan(json.loads(text), {}, 0.0, Pacer())
    return json.dumps({"flow": json.loads(text)}, separators=(",", ":"), ensure_ascii=False)


async def tick_jobs(store: StoreInterface, record: SchedulerRecord, tick: float) -> list[NewJob]:
    """The jobs of one tick, parents first; the first has :func:`tick_job_id`."""
    template = json.loads(record.template)
    job_id = tick_job_id(record.id, tick)
    if "flow" in template:
        tree = template["flow"]
        tree["opts"] = {**(tree.get("opts") or {}), "job_id": job_id}
        return (await FlowProducer(store=store)._plan(tree, {}, tick, Pacer())).group
    opts = JobOptions.model_validate(template["opts"])
    return [
        build_new_job(
            queue=record.queue,
            name=template["name"],
            data=json.dumps(template["data"], separators=(",", ":"), ensure_ascii=False),
            opts=opts,
            job_id=job_id,
        )
    ]


def describe(record: SchedulerRecord) -> JobScheduler:
    """The public view of a stored scheduler."""
    timing = Timing.from_json(record.timing)
    template = json.loads(record.template)
    return JobScheduler(
        id=record.id,
        queue_name=record.queue,
        cron=timing.cron,
        every=timing.every,
        tz=timing.tz,
        start_date=to_datetime(timing.start),
        end_date=to_datetime(timing.end),
        limit=timing.limit,
        template=None if "flow" in template else template,
        flow=template.get("flow"),
        next_run_at=to_datetime(record.next_run_at),
        iterations=record.iterations,
    )


async def fire_scheduler_tick(
    store: StoreInterface, record: SchedulerRecord, now: float
) -> tuple[bool, float | None]:
    """Fire the due tick of ``record`` at ``now``: whether this call fired it (``False``:
    another caller fired it, or the scheduler changed, first, and nothing was written),
    and the next tick it set."""
    tick = record.next_run_at
    assert tick is not None
    timing = Timing.from_json(record.timing)
    jobs: list[NewJob] = []
    following: float | None = None
    if timing.limit is None or record.iterations < timing.limit:
        jobs = await tick_jobs(store, record, tick)
        if timing.limit is None or record.iterations + 1 < timing.limit:
            following = timing.next_run(tick, now)
    fired = await store.fire_scheduler(record.queue, record.id, tick, following, jobs, now)
    return fired, following


async def fire_due_schedulers(store: StoreInterface, queue: str, now: float) -> float | None:
    """Fire every due tick of the queue's schedulers once; returns when to look again
    (the earliest next tick known, or ``now`` if a tick changed under us; ``None``: no
    tick is left).

    What workers run in their fetch loop. Ticks are fired through the store's
    compare-and-set, so any number of callers may run this at once.
    """
    due = await store.due_schedulers(queue, now, DUE_BATCH)
    look_again = due.next_run_at
    for record in due.schedulers:
        fired, following = await fire_scheduler_tick(store, record, now)
        if not fired:
            following = now
        if following is not None and (look_again is None or following < look_again):
            look_again = following
    return look_again
