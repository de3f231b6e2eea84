"""A running worker fires the ticks of a scheduler set in its own process at once."""

from __future__ import annotations

import anyio
import pytest

from conveyor_core import Job, Queue, Worker
from conveyor_stores import MemoryStore, SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_scheduler_set_while_workers_idle_fires_without_waiting_out_drain_delay(
    kind: str, tmp_path: object
) -> None:
    store = MemoryStore() if kind == "memory" else SQLiteStore(f"{tmp_path}/s.db")
    async with store:
        ran: list[Job] = []
        two = anyio.Event()

        async def handle(job: Job) -> None:
            ran.append(job)
            if len(ran) == 2:
                two.set()

        # The worker has looked at the (empty) schedulers before the scheduler is set and
        # would look again only after drain_delay, far beyond the deadline below.
        async with Worker("idle", handle, store=store, drain_delay=60.0):
            await anyio.sleep(0.2)
            await Queue("idle", store=store).upsert_job_scheduler(
                "soon", every=0.1, template={"name": "tick"}
            )
            with anyio.fail_after(10):
                await two.wait()
        assert [job.name for job in ran[:2]] == ["tick", "tick"]
