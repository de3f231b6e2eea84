"""How long the event loop is blocked: a ticker task that asks to wake every millisecond.

Each tick records how much later than asked it woke up: a late tick means something held
the event loop's thread for that long, or that the machine ran other processes meanwhile.
To tell the two apart on a busy machine, each tick also records the CPU time the event
loop's thread used while it waited ("busy"): work done on the loop's thread counts, time
the process spent descheduled does not. The garbage
collector's pauses are recorded too, so that a late tick caused by a full collection of
the whole process's objects can be told from one caused by Conveyor's own code.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from time import perf_counter, thread_time

import anyio

TICK = 0.001
"""Seconds each tick asks to sleep."""


@dataclass
class LagSamples:
    """Lateness of each tick, in seconds."""

    lags: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    """CPU seconds the loop's thread used during each late tick, beyond the tick itself."""
    gc_pauses: list[float] = field(default_factory=list)
    """Seconds each garbage collection took."""

    def stats_ms(self) -> dict[str, float]:
        """p50, p99 and max of the lateness and of the busy time, in milliseconds."""
        out: dict[str, float] = {}
        for name, values in (("lag", self.lags), ("busy", self.busy)):
            ordered = sorted(values) or [0.0]
            p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
            out[f"{name}_p50_ms"] = round(statistics.median(ordered) * 1000, 2)
            out[f"{name}_p99_ms"] = round(p99 * 1000, 2)
            out[f"{name}_max_ms"] = round(ordered[-1] * 1000, 2)
        return out

    @property
    def max_ms(self) -> float:
        return round(max(self.lags, default=0.0) * 1000, 2)

    @property
    def busy_max_ms(self) -> float:
        return round(max(self.busy, default=0.0) * 1000, 2)

    @property
    def gc_max_ms(self) -> float:
        return round(max(self.gc_pauses, default=0.0) * 1000, 2)


@asynccontextmanager
async def ticker() -> AsyncIterator[LagSamples]:
    """Sample the loop's lateness every ``TICK`` while the block runs."""
    samples = LagSamples()
    gc_started = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_started
        if phase == "start":
            gc_started = perf_counter()
        else:
            samples.gc_pauses.append(perf_counter() - gc_started)

    async def tick() -> None:
        while True:
            asked, cpu = perf_counter(), thread_time()
            await anyio.sleep(TICK)
            lag = max(0.0, perf_counter() - asked - TICK)
            samples.lags.append(lag)
            samples.busy.append(min(lag, thread_time() - cpu))

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        # Let the ticker take its first sample before the measured work starts.
        await anyio.sleep(2 * TICK)
        samples.lags.clear()
        samples.busy.clear()
        gc.callbacks.append(on_gc)
        try:
            yield samples
            # The tick that was due while the block's last step ran records its lateness.
            await anyio.sleep(2 * TICK)
        finally:
            gc.callbacks.remove(on_gc)
            tg.cancel_scope.cancel()
