"""Long synchronous loops on the event loop's thread, cut into short slices.

Validating and planning thousands of jobs is pure Python work; done in one go it would
hold the event loop for tens of milliseconds, delaying every other task (heartbeats,
lock renewals, other requests). A :class:`Pacer` lets such a loop give the event loop a
turn whenever the work since the last turn took more than ``SLICE`` seconds, so a small
batch runs straight through while a big one never blocks for long.
"""

from __future__ import annotations

from time import perf_counter

import anyio.lowlevel

__all__ = ["SLICE", "Pacer"]

SLICE = 0.002
"""Seconds of work between two turns of the event loop."""


class Pacer:
    """``if pacer.due(): await pacer.pause()`` inside a long loop."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = perf_counter()

    def due(self) -> bool:
        """Whether the work since the last pause took ``SLICE`` seconds or more."""
        return perf_counter() - self._since >= SLICE

    async def pause(self) -> None:
        """Give the event loop one turn (other ready tasks and I/O run), then go on."""
        await anyio.lowlevel.checkpoint()
        self._since = perf_counter()
