"""Time helpers: the core reads the clock, stores only get ``now`` as a float."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from .models import MAX_SECONDS

__all__ = ["Clock", "seconds", "system_clock", "to_datetime"]

Clock = Callable[[], float]
"""A function returning the current POSIX time in seconds; ``time.time`` by default."""

system_clock: Clock = time.time


def to_datetime(timestamp: float | None) -> datetime | None:
    """An aware UTC ``datetime`` for a POSIX timestamp (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC)


def seconds(duration: float | timedelta, *, what: str = "duration") -> float:
    """A duration in seconds from a number or a ``timedelta``; negative is an error."""
    value = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    if not 0 <= value <= MAX_SECONDS:
        raise ValueError(
            f"{what} must be a number of seconds from 0 to {MAX_SECONDS:.0f}, got {duration!r}"
        )
    return value
