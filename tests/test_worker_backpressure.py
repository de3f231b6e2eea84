"""A worker whose store is slower than its handlers does not run far ahead of it."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from conveyor_core import Job, JobState, Queue, Worker
from conveyor_core.store import Completion
from conveyor_stores import MemoryStore

pytestmark = pytest.mark.anyio


class SlowCompletions(MemoryStore):
    """Takes a while to write completions, and records how many jobs were active."""

    def __init__(self) -> None:
        super().__init__()
        self.most_active = 0
        self.largest_batch = 0

    async def complete_jobs(
        self, queue: str, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        counts = await self.get_counts(queue)
        self.most_active = max(self.most_active, counts[JobState.ACTIVE])
        self.largest_batch = max(self.largest_batch, len(completions))
        await anyio.sleep(0.02)
        return await super().complete_jobs(queue, completions, now)


async def test_finished_handlers_wait_for_their_outcomes_to_be_written() -> None:
    async with SlowCompletions() as store:
        queue = Queue("fast", store=store)
        await queue.add_bulk([{"name": "noop", "data": i} for i in range(600)])

        ran = 0
        all_ran = anyio.Event()

        async def noop(job: Job) -> int:
            nonlocal ran
            ran += 1
            if ran == 600:
                all_ran.set()
            return int(job.data)

        async with Worker("fast", noop, store=store, concurrency=5):
            with anyio.fail_after(30):
                await all_ran.wait()
        assert (await queue.get_job_counts())["completed"] == 600
        # Without back-pressure the worker keeps taking jobs while their outcomes
        # queue up, and hundreds sit "active" although their handlers are done.
        assert store.most_active <= 5 * 3
        assert store.largest_batch <= 5 * 3
