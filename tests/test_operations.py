"""The operations layer the command line and the dashboard share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor_core import (
    InvalidJobStateError,
    Job,
    JobNotFoundError,
    Queue,
    QueueInfo,
    Worker,
    list_queues,
)
from conveyor_core import operations as ops
from conveyor_stores import MemoryStore

pytestmark = pytest.mark.anyio


async def test_list_queues_gives_counts_and_paused_flags() -> None:
    async with MemoryStore() as store:
        await Queue("mail", store=store).add_bulk([{"name": "a"}, {"name": "b"}])
        await Queue("idle", store=store).pause()
        infos = await list_queues(store)
    assert [info.name for info in infos] == ["idle", "mail"]
    assert infos[0] == QueueInfo("idle", {**infos[0].counts}, True)
    assert infos[1].counts["waiting"] == 2 and not infos[1].paused
    assert set(infos[1].counts) == {
        "waiting",
        "delayed",
        "active",
        "completed",
        "failed",
        "waiting-children",
    }


async def test_job_detail_holds_logs_children_and_parent() -> None:
    async def child(job: Job) -> int:
        await job.log("child ran")
        return 5

    async def parent(job: Job) -> int:
        return sum((await job.get_children_values()).values())

    async with MemoryStore() as store:
        node = await ops.add_flow(
            store,
            {
                "name": "sum",
                "queue_name": "parents",
                "children": [{"name": "part", "queue_name": "parts", "opts": {"job_id": "p1"}}],
            },
        )
        async with Worker("parts", child, store=store), Worker("parents", parent, store=store):
            await node[0].job.wait_until_finished(timeout=10)
        top = await ops.get_job_detail(store, "parents", node[0].job.id)
        part = await ops.get_job_detail(store, "parts", "p1")
    assert top.children.processed == {"p1": 5} and top.parent is None
    assert part.logs == ["child ran"]
    assert part.parent is not None and part.parent.id == node[0].job.id
    shown = ops.detail_to_json(part)
    assert shown["state"] == "completed" and shown["return_value"] == 5
    assert shown["parent"]["id"] == node[0].job.id
    json.dumps(shown)  # JSON-ready as it is


async def test_job_actions_change_the_job_or_say_why_not() -> None:
    async with MemoryStore() as store:
        queue = Queue("q", store=store)
        later = await queue.add("later", None, opts={"delay": 3600})
        promoted = await ops.job_action(store, "q", later.id, "promote")
        assert promoted is not None and promoted.state.value == "waiting"
        with pytest.raises(InvalidJobStateError):
            await ops.job_action(store, "q", later.id, "retry")  # only failed jobs retry
        assert await ops.job_action(store, "q", later.id, "remove") is None
        with pytest.raises(JobNotFoundError):
            await ops.job_action(store, "q", later.id, "remove")
        with pytest.raises(ValueError, match="unknown job action"):
            await ops.job_action(store, "q", (await queue.add("x")).id, "explode")  # type: ignore[arg-type]


async def test_queue_actions() -> None:
    async with MemoryStore() as store:
        queue = Queue("q", store=store)
        await queue.add_bulk([{"name": "a"}, {"name": "b", "opts": {"delay": 60}}])
        assert await ops.queue_action(store, "q", "pause") is None
        assert await queue.is_paused()
        assert await ops.queue_action(store, "q", "resume") is None
        assert await ops.queue_action(store, "q", "drain") == 1
        assert await ops.queue_action(store, "q", "drain", include_delayed=True) == 1
        assert await ops.queue_action(store, "q", "retry-failed") == 0
        assert await ops.queue_action(store, "q", "obliterate") is None
        assert await list_queues(store) == []


def test_flow_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "flow.json"
    good.write_text(json.dumps({"name": "n", "queue_name": "q"}), encoding="utf-8")
    assert ops.load_flow_file(good) == {"name": "n", "queue_name": "q"}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json.*not JSON"):
        ops.load_flow_file(broken)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold a flow"):
        ops.load_flow_file(scalar)
    with pytest.raises(ValueError, match="cannot read"):
        ops.load_flow_file(tmp_path / "missing.json")
