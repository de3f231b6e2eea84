"""Jobs for the dashboard tests: a queue with jobs in every finished state, and a flow."""

from __future__ import annotations

from typing import Any

import anyio

from conveyor_core import FlowProducer, Job, Queue, Worker
from conveyor_core.store import StoreInterface

EVIL_NAME = "<script>alert(1)</script>"
EVIL_DATA = '"><img src=x onerror=alert(2)>'
EVIL_QUEUE = "q\"><svg onload='alert(3)'>"


async def handle(job: Job[Any]) -> Any:
    await job.log(f"working on {job.name}")
    await job.update_progress({"done": 1})
    if isinstance(job.data, dict) and job.data.get("fail"):
        raise RuntimeError(f"refused {job.data.get('to')}")
    return {"sent_to": job.data.get("to") if isinstance(job.data, dict) else None}


async def run_until_finished(store: StoreInterface, queue_name: str, total: int) -> None:
    """Run a worker on the queue until ``total`` of its jobs have finished."""
    queue = Queue(queue_name, store=store)
    async with Worker(queue_name, handle, store=store, drain_delay=0.05):
        with anyio.fail_after(20):
            while True:
                counts = await queue.get_job_counts()
                if counts["completed"] + counts["failed"] >= total:
                    return
                await anyio.sleep(0.02)


async def seed_mail(store: StoreInterface) -> dict[str, str]:
    """Queue ``mail``: two completed, one failed, then one waiting and one delayed job;
    returns their ids by role."""
    mail = Queue("mail", store=store)
    done_a = await mail.add("welcome", {"to": "ada@example.com"})
    done_b = await mail.add("welcome", {"to": "bob@example.com"})
    failed = await mail.add("invoice", {"to": "eve@example.com", "fail": True})
    await run_until_finished(store, "mail", 3)
    waiting = await mail.add("digest", {"to": "zed@example.com"})
    delayed = await mail.add("reminder", {"to": "kim@example.com"}, {"delay": 3600})
    return {
        "completed": done_a.id,
        "completed_b": done_b.id,
        "failed": failed.id,
        "waiting": waiting.id,
        "delayed": delayed.id,
    }


async def seed_evil(store: StoreInterface) -> str:
    """A job whose queue, name and data are markup; returns its id."""
    job = await Queue(EVIL_QUEUE, store=store).add(EVIL_NAME, {"note": EVIL_DATA})
    await job.log(EVIL_DATA)
    return job.id


async def seed_flow(store: StoreInterface) -> str:
    """A report in ``reports`` waiting for three parts in ``parts``; returns its id."""
    node = await FlowProducer(store=store).add(
        {
            "name": "report",
            "queue_name": "reports",
            "data": {"month": "2026-11"},
            "children": [
                {"name": f"part-{i}", "queue_name": "parts", "data": {"to": f"p{i}"}}
                for i in range(3)
            ],
        }
    )
    return node.job.id
