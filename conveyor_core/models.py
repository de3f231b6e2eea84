"""Pydantic models of the public API: job options, backoff, flow nodes, states, events."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_PRIORITY = 2**21
"""Priorities range over ``0 .. MAX_PRIORITY``; lower runs first."""

MAX_SECONDS = 100 * 366 * 24 * 3600.0
"""The longest delay, backoff or timeout accepted: a hundred years."""


MAX_QUEUE_NAME_BYTES = 512
"""The longest queue name, in bytes of UTF-8 (128 characters of 4 bytes, 512 of ASCII)."""

MAX_JOB_ID_BYTES = 512
"""The longest job id (``opts.job_id``), in bytes of UTF-8."""

MAX_JOB_NAME_BYTES = 1024
"""The longest job name, in bytes of UTF-8."""

# Why these sizes: every store must accept exactly the same names and ids, so the limits
# fit the tightest store. PostgreSQL limits a btree index entry to about 2,700 bytes, and
# its widest entry holds two queue names and two job ids (a parent-child dependency):
# 4 x 512 bytes plus headers fits. Job names are not indexed, so they may be longer.


def text_problem(value: str, max_bytes: int | None = None) -> str | None:
    """Why ``value`` cannot be a name or id in every store, or ``None`` if it can.

    Names and ids are arbitrary text, but text all the same: a NUL character or a lone
    surrogate (which is not Unicode and has no UTF-8 form) is refused up front, so no
    store has to decide what to do with it. With ``max_bytes``, text longer than that
    many bytes of UTF-8 is refused too.
    """
    if "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "is not valid Unicode text (it holds a lone surrogate)"
    else:
        size = len(value)
    if max_bytes is not None and size > max_bytes:
        return f"is {size} bytes long in UTF-8; the limit is {max_bytes} bytes"
    return None


def shown(value: str, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters, for error messages."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}…"


def _seconds(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]
"""A duration in seconds; a ``datetime.timedelta`` is accepted too."""


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    WAITING_CHILDREN = "waiting-children"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED)


ALL_STATES: tuple[JobState, ...] = tuple(JobState)


class ParentPolicy(enum.StrEnum):
    """What a child's final failure does to its parent (docs/flows.md, "When a child fails").

    The core resolves it when a flow is added (the child's own flag wins, else the
    parent's ``fail_parent_on_child_failure``) and stores it on the child, so a store
    only carries out the policy it is given.
    """

    FAIL = "fail"
    IGNORE = "ignore"
    REMOVE = "remove"
    DROP = "drop"
    CONTINUE = "continue"

    def __str__(self) -> str:
        return self.value


class Backoff(BaseModel):
    """How long to wait before a retry.

    ``fixed`` waits ``delay`` every time; ``exponential`` waits
    ``delay * 2 ** (attempt - 1)``. ``jitter`` (0..1) takes a random share of up to that
    fraction off each wait, so that many failing jobs do not retry in lockstep.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["fixed", "exponential"]
    delay: Seconds = Field(default=1.0, ge=0, le=MAX_SECONDS)
    jitter: float = Field(default=0.0, ge=0, le=1)


class RateLimit(BaseModel):
    """At most ``max`` jobs of a queue start per ``duration`` seconds, across all workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max: int = Field(ge=1)
    duration: Seconds = Field(gt=0, le=MAX_SECONDS)


def as_rate_limit(value: RateLimit | Mapping[str, Any] | None) -> RateLimit | None:
    """A ``RateLimit`` from one or its fields (``{"max": ..., "duration": ...}``)."""
    return None if value is None else RateLimit.model_validate(value)


class ParentRef(BaseModel):
    """An existing job to become the parent of a new job (``opts.parent``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    """The parent's job id."""
    queue: str = Field(min_length=1)
    """The parent's queue."""

    @field_validator("id", "queue")
    @classmethod
    def _printable(cls, value: str, info: ValidationInfo) -> str:
        limit = MAX_JOB_ID_BYTES if info.field_name == "id" else MAX_QUEUE_NAME_BYTES
        if (problem := text_problem(value, limit)) is not None:
            raise ValueError(f"parent {info.field_name} {shown(value)} {problem}")
        return value


class Deduplication(BaseModel):
    """``opts.deduplication``: while a job added with this ``id`` is live, adding another
    with the same ``id`` to the queue returns the live job and writes nothing new.

    Without ``ttl`` the id is held until its job completes or fails; with ``ttl`` it is
    held for ``ttl`` seconds from the add (throttle), whatever the job does. ``extend``
    restarts the ``ttl`` at each deduplicated add; ``replace`` (for a job added with a
    ``delay``) gives the still-delayed job the new add's data and restarts its delay
    (debounce).

    It applies to ``Queue.add`` and to leaves of flows and DAGs (``FlowProducer``): a
    leaf whose id a live job holds is not added; the live job becomes its parent's
    dependency instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    ttl: Seconds | None = Field(default=None, gt=0, le=MAX_SECONDS)
    extend: bool = False
    replace: bool = False

    @model_validator(mode="after")
    def _checked(self) -> Deduplication:
        # One validator for both rules: it runs at every deduplicated add.
        if (problem := text_problem(self.id, MAX_JOB_ID_BYTES)) is not None:
            raise ValueError(f"deduplication id {shown(self.id)} {problem}")
        if self.extend and self.ttl is None:
            raise ValueError("deduplication extend=True needs a ttl to extend")
        return self


CHILD_FAILURE_FLAGS = (
    "fail_parent_on_failure",
    "continue_parent_on_failure",
    "ignore_dependency_on_failure",
    "remove_dependency_on_failure",
)
"""The options of a child that say what its final failure does to its parent: at most
one may be set."""


class JobOptions(BaseModel):
    """Options of one job (``opts``). Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str | None = Field(default=None, min_length=1)
    """The job's id (default: a new unique one); adding an existing id returns that job."""
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)
    """Lower runs first; 0, the default, is the highest."""
    lifo: bool = False
    """Run before the jobs already waiting at the same priority, not after them."""
    delay: Seconds = Field(default=0.0, ge=0, le=MAX_SECONDS)
    """Seconds (or a ``timedelta``) to wait in ``delayed`` before the job may run."""
    attempts: int = Field(default=1, ge=1)
    """How many times the job may run in all, the first attempt included."""
    backoff: Backoff | str | None = None
    """The wait before each retry: seconds, a ``Backoff``, or a registered strategy name."""
    timeout: Seconds | None = Field(default=None, gt=0, le=MAX_SECONDS)
    """Seconds an attempt may run before it is cancelled and fails."""
    remove_on_complete: bool | Annotated[int, Field(ge=0)] = False
    """``True`` deletes the job when it completes; ``N`` keeps the newest ``N``."""
    remove_on_fail: bool | Annotated[int, Field(ge=0)] = False
    """``True`` deletes the job when it fails for good; ``N`` keeps the newest ``N``."""
    fail_parent_on_child_failure: Literal["fail", "ignore", "remove"] = "fail"
    """As a parent: what a child's final failure does to this job."""
    fail_parent_on_failure: bool = False
    """As a child: its final failure fails the parent (the ``fail`` policy)."""
    continue_parent_on_failure: bool = False
    """As a child: its final failure releases the parent at once."""
    ignore_dependency_on_failure: bool = False
    """As a child: its final failure is recorded and ignored."""
    remove_dependency_on_failure: bool = False
    """As a child: its final failure drops the dependency unrecorded."""
    parent: ParentRef | None = None
    """An existing job (``{"id": ..., "queue": ...}``) in ``waiting-children`` or
    ``active`` that this job (or flow) becomes a child of."""
    deduplication: Deduplication | None = None
    """Add nothing while a live job holds this deduplication id (see ``Deduplication``)."""
    group_id: str | None = None
    """The job's group: a queue takes the waiting jobs of its groups round-robin, and its
    group limits (``Queue.set_group_limits``) hold for each group apart."""

    @field_validator("backoff", mode="before")
    @classmethod
    def _number_is_fixed_backoff(cls, value: Any) -> Any:
        if isinstance(value, int | float | timedelta) and not isinstance(value, bool):
            return Backoff(type="fixed", delay=_seconds(value))
        if isinstance(value, str) and not value:
            raise ValueError("backoff strategy name must not be empty")
        return value

    @field_validator("job_id")
    @classmethod
    def _job_id_printable(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.strip():
                raise ValueError("job_id must not be blank")
            if (problem := text_problem(value, MAX_JOB_ID_BYTES)) is not None:
                raise ValueError(f"job_id {shown(value)} {problem}")
        return value

    @field_validator("group_id")
    @classmethod
    def _group_id_printable(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.strip():
                raise ValueError("group_id must not be blank")
            if (problem := text_problem(value, MAX_JOB_ID_BYTES)) is not None:
                raise ValueError(f"group_id {shown(value)} {problem}")
        return value

    # The rules across fields are field validators, not one model validator: they run
    # only when their fields are given, where a model validator runs at every add with
    # options. Fields are validated in order, so each sees the ones before it.
    @field_validator(*CHILD_FAILURE_FLAGS)
    @classmethod
    def _one_child_flag(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            flags = [name for name in CHILD_FAILURE_FLAGS if info.data.get(name)]
            if flags:
                flags.append(str(info.field_name))
                raise ValueError(
                    f"at most one child failure flag may be set, got {', '.join(flags)}"
                )
        return value

    @field_validator("deduplication")
    @classmethod
    def _replace_needs_delay(
        cls, value: Deduplication | None, info: ValidationInfo
    ) -> Deduplication | None:
        delay = info.data.get("delay")  # missing if it was refused itself
        if value is not None and value.replace and delay is not None and delay <= 0:
            raise ValueError(
                "deduplication replace=True needs a delay: only a delayed job is replaced"
            )
        return value

    def child_policy(self) -> ParentPolicy | None:
        """The policy this job's own flags ask for as a child, if any."""
        if self.fail_parent_on_failure:
            return ParentPolicy.FAIL
        if self.continue_parent_on_failure:
            return ParentPolicy.CONTINUE
        if self.ignore_dependency_on_failure:
            return ParentPolicy.IGNORE
        if self.remove_dependency_on_failure:
            return ParentPolicy.DROP
        return None

    def keep_count(self, which: Literal["complete", "fail"]) -> int | None:
        """How many finished jobs to keep: ``None`` keeps all, ``0`` deletes this one."""
        value = self.remove_on_complete if which == "complete" else self.remove_on_fail
        if value is True:
            return 0
        if value is False:
            return None
        return int(value)


def _name_within_limits(cls: type[BaseModel], value: str, info: ValidationInfo) -> str:
    """A flow node's ``name`` or ``queue_name`` within its byte limit, printable."""
    limit = MAX_JOB_NAME_BYTES if info.field_name == "name" else MAX_QUEUE_NAME_BYTES
    if (problem := text_problem(value, limit)) is not None:
        raise ValueError(f"{info.field_name} {shown(value)} {problem}")
    return value


class FlowJob(BaseModel):
    """One node of a flow tree: a job and the children it waits for."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    queue_name: str = Field(min_length=1)
    data: Any = None
    opts: JobOptions | None = None
    children: list[FlowJob] = Field(default_factory=list)

    _within_limits = field_validator("name", "queue_name")(_name_within_limits)


class DagJob(BaseModel):
    """One job of a DAG (``FlowProducer.add_dag``) and the jobs it waits for.

    ``id`` names the job within the DAG (the job's own id is ``opts.job_id``, or a new
    one). ``depends_on`` lists ids of the same DAG, or ``"queue/id"`` of jobs already in
    the store (split at the last ``/``).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    queue_name: str = Field(min_length=1)
    data: Any = None
    opts: JobOptions | None = None
    depends_on: list[str] = Field(default_factory=list)

    _within_limits = field_validator("name", "queue_name")(_name_within_limits)


class QueueEvent(BaseModel):
    """Something that happened to a job or a queue, as seen by ``QueueEvents``."""

    model_config = ConfigDict(frozen=True)

    type: str
    """The event type, e.g. ``"completed"``."""
    queue_name: str
    """The queue it happened in."""
    job_id: str | None = None
    """The job it concerns; ``None`` for queue events (``paused``, ``drained``, ...)."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Details; ``return_value`` and ``progress`` arrive decoded from JSON."""
    timestamp: datetime
    """When it happened."""


EVENT_TYPES: frozenset[str] = frozenset(
    {
        "added",
        "waiting",
        "waiting-children",
        "delayed",
        "active",
        "progress",
        "completed",
        "failed",
        "stalled",
        "removed",
        "paused",
        "resumed",
        "drained",
        "retried",
        "cleaned",
        "cancelled",
        "deduplicated",
    }
)
