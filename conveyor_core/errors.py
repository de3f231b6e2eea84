"""The exceptions Conveyor raises. ``ConveyorError`` is the base of all of them."""

from __future__ import annotations

from datetime import timedelta


class ConveyorError(Exception):
    """Base class of every error raised by Conveyor."""


class JobNotFoundError(ConveyorError, LookupError):
    """The job does not exist (never added, or removed)."""

    def __init__(self, queue: str, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found in queue {queue!r}")
        self.queue = queue
        self.job_id = job_id


class InvalidJobStateError(ConveyorError):
    """The job is not in a state that allows the operation."""


class LockLostError(ConveyorError):
    """The worker no longer owns the job's lock: the store refused the transition."""


class JobFailedError(ConveyorError):
    """Raised by ``Job.wait_until_finished`` when the job ended in ``failed``."""

    def __init__(self, job_id: str, reason: str | None) -> None:
        super().__init__(f"job {job_id!r} failed: {reason}")
        self.job_id = job_id
        self.reason = reason


class JobTimeoutError(ConveyorError, TimeoutError):
    """``Job.wait_until_finished`` gave up: the job had not finished within ``timeout``.

    The job itself is untouched and may still finish later.
    """

    def __init__(self, queue: str, job_id: str, timeout: float) -> None:
        super().__init__(
            f"job {job_id!r} in queue {queue!r} did not finish within {timeout:g} seconds"
        )
        self.queue = queue
        self.job_id = job_id
        self.timeout = timeout


class JobCancelledError(ConveyorError):
    """A running job was cancelled (``Job.cancel``): its handler was cancelled, and the
    job fails with ``reason``, never retried. Passed to the worker's ``failed`` event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnrecoverableError(ConveyorError):
    """Raise from a handler to fail the job at once, whatever attempts remain."""


class WaitingForChildren(ConveyorError):
    """Raised by ``Job.wait_for_children`` when the job parked in ``waiting-children``.

    Let it propagate out of the handler: the Worker treats it as "parked", not as a
    failure (no attempt counted, no retry). The handler runs again from the start once
    the job's last pending child resolves.
    """

    def __init__(self, queue: str, job_id: str) -> None:
        super().__init__(f"job {job_id!r} in queue {queue!r} is waiting for its children")
        self.queue = queue
        self.job_id = job_id


class RateLimitedError(ConveyorError):
    """Raise from a handler that hit an outside rate limit: the job goes back to waiting
    without an attempt counted, and the queue starts no job for ``delay`` seconds (a
    number or a ``timedelta``), across every worker and process."""

    def __init__(self, delay: float | timedelta) -> None:
        value = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= 100 * 366 * 24 * 3600
        ):
            raise ValueError(
                f"RateLimitedError delay must be a number of seconds from 0 to a hundred "
                f"years, got {delay!r}"
            )
        super().__init__(f"rate limited: the queue takes no job for {value:g} seconds")
        self.delay = float(value)


class PayloadError(ConveyorError, TypeError):
    """Job data, a result, progress or a log line is not JSON; nothing was written."""


class DuplicateJobError(ConveyorError):
    """A job id is used twice in one call, or already exists where it must not."""


class DagError(ConveyorError, ValueError):
    """A DAG given to ``FlowProducer.add_dag`` is not valid: a cycle, or a dependency on
    an id it does not hold. The message names them; nothing was written."""


class StoreClosedError(ConveyorError):
    """The store is not connected (never connected, or already closed)."""


class StoreUnavailableError(ConveyorError):
    """The store's server could not be reached."""


class StoreCommandError(ConveyorError):
    """The store's server refused a command with an error of its own (not one of the
    refusals above); the message names the command and quotes the server."""

    def __init__(self, message: str, *, command: str) -> None:
        super().__init__(message)
        self.command = command


class StoreOutOfMemoryError(StoreCommandError):
    """The store's server is out of memory and refused the write; nothing was written.

    Free memory on the server (remove or clean finished jobs, raise its memory limit)
    and try again.
    """


class StoreConfigurationWarning(UserWarning):
    """The store's server is set up in a way that can lose jobs (for example it keeps
    nothing on disk, or may evict keys when full). Issued once per server and process."""
