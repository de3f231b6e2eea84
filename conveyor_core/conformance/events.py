"""Events reach listeners on every store object sharing the database."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor_core import Job, JobState, QueueEvent, QueueEvents
from conveyor_core.store import Failure

from ._support import Harness, Runs


class EventTests:
    """``QueueEvents`` on one store object sees what workers do through another."""

    async def test_events_reach_a_listener_on_another_store_object(self, env: Harness) -> None:
        q = env.name("events")
        seen: list[QueueEvent] = []
        listener = QueueEvents(q, store=env.event_store)
        listener.on("*", seen.append)
        called: list[str] = []
        listener.on("completed", lambda event: called.append(event.job_id or ""))

        async def handle(job: Job) -> dict[str, int]:
            await job.update_progress(40)
            if job.name == "bad":
                raise RuntimeError("bad broke")
            return {"ok": 1}

        async with listener:
            queue = env.queue(q)
            await queue.pause()
            await queue.resume()
            good = await queue.add("good", {"n": 1}, {"job_id": "watched"})
            bad = await queue.add("bad", None, {"job_id": "doomed"})
            async with env.workers({q: handle}):
                done = await env.wait_seen(
                    seen,
                    lambda e: e.type == "completed" and e.job_id == good.id,
                    "the completed event on the other store object",
                )
                await env.wait_seen(
                    seen,
                    lambda e: e.type == "failed" and e.job_id == bad.id,
                    "the failed event on the other store object",
                )

        assert [e.type for e in seen if e.job_id is None][:2] == ["paused", "resumed"]
        assert all(e.queue_name == q for e in seen)
        mine = [e.type for e in seen if e.job_id == good.id]
        for earlier, later in [
            ("added", "waiting"),
            ("waiting", "active"),
            ("active", "progress"),
            ("progress", "completed"),
        ]:
            assert earlier in mine and later in mine, mine
            assert mine.index(earlier) < mine.index(later), mine
        progress = next(e for e in seen if e.type == "progress" and e.job_id == good.id)
        assert progress.data.get("progress") == 40
        assert done.data.get("return_value") == {"ok": 1}
        assert good.id in called

    async def test_each_event_arrives_once(self, env: Harness) -> None:
        q = env.name("once")
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.event_store) as listener:
            listener.on("*", seen.append)
            queue = env.queue(q)
            # One add of one job, and one of 25 whose 50 events take some 6 KB (a store
            # may cut a big batch into several notifications).
            jobs = [await queue.add("once", None)]
            jobs += await queue.add_bulk([{"name": f"{n:02d}" * 20} for n in range(25)])
            marker = await queue.add("marker", None)
            await env.wait_seen(
                seen, lambda e: e.type == "added" and e.job_id == marker.id, "the marker's event"
            )
        for job in jobs:
            assert [e.type for e in seen if e.job_id == job.id] == ["added", "waiting"], job.name

    async def test_a_huge_result_or_reason_still_publishes_its_event(self, env: Harness) -> None:
        # A store may leave a bulky field out of an event (and say "truncated"), but the
        # event itself, its job and its other fields always arrive.
        q = env.name("huge-events")
        seen: list[QueueEvent] = []
        listener = QueueEvents(q, store=env.event_store)
        listener.on("*", seen.append)
        huge = "x" * 20_000

        async def handle(job: Job) -> str:
            if job.name == "bad":
                raise RuntimeError(huge)
            return huge

        async with listener:
            queue = env.queue(q)
            good = await queue.add("good", None)
            bad = await queue.add("bad", None)
            async with env.workers({q: handle}):
                done = await env.wait_seen(
                    seen,
                    lambda e: e.type == "completed" and e.job_id == good.id,
                    "the completed event of the huge result",
                )
                failed = await env.wait_seen(
                    seen,
                    lambda e: e.type == "failed" and e.job_id == bad.id,
                    "the failed event of the huge reason",
                )
        assert done.queue_name == failed.queue_name == q
        for event, field in ((done, "return_value"), (failed, "reason")):
            if event.data.get("truncated") is True:
                assert set(event.data) <= {field, "truncated"}, event.data
            else:
                assert field in event.data, event.data
        assert done.data.get("return_value", huge) == huge
        stored = await queue.get_job(good.id)
        assert stored is not None and stored.return_value == huge

    async def test_listener_added_before_a_flow_sees_its_states(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        seen: list[QueueEvent] = []
        async with QueueEvents(parent_q, store=env.event_store) as listener:
            listener.on("*", seen.append)
            node = await env.flow.add(
                {
                    "name": "parent",
                    "queue_name": parent_q,
                    "children": [{"name": "child", "queue_name": child_q}],
                }
            )

            async def handle(job: Job) -> str:
                return job.name

            async with env.workers({parent_q: handle, child_q: handle}):
                await env.wait_seen(
                    seen,
                    lambda e: e.type == "completed" and e.job_id == node.job.id,
                    "the parent's completed event",
                )
        types = [e.type for e in seen if e.job_id == node.job.id]
        assert types[:2] == ["added", "waiting-children"], types
        assert types.index("waiting") < types.index("active") < types.index("completed")

    async def test_a_job_entering_delayed_publishes_delayed_with_its_run_at(
        self, env: Harness
    ) -> None:
        # A failed attempt retried later, and a released parent with a delay.
        q, kids = env.name("to-delayed"), env.name("to-delayed-kids")
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.event_store) as listener:
            listener.on("*", seen.append)
            first, bulk = await env.queue(q).add_bulk(
                [{"name": "bulk-now"}, {"name": "bulk-later", "opts": {"delay": 300}}]
            )
            flaky = await env.queue(q).add("flaky", None)
            now = time.time()
            taken = await env.store.take_jobs(q, limit=2, token="t", lock_until=now + 60, now=now)
            assert [job.id for job in taken.jobs] == [first.id, flaky.id]
            retry = Failure(flaky.id, "t", "later", retry_at=now + 900)
            assert await env.store.fail_jobs(q, [retry], now) == [True]
            node = await env.flow.add(
                {
                    "name": "parent",
                    "queue_name": q,
                    "opts": {"delay": 600},
                    "children": [{"name": "kid", "queue_name": kids}],
                }
            )
            async with env.workers({kids: Runs().handler()}):
                await env.wait_state(node.job, JobState.DELAYED)
            await env.wait_seen(
                seen,
                lambda e: e.type == "delayed" and e.job_id == node.job.id,
                "the parent's delayed event",
            )
        parent = await env.reread(node.job)
        assert parent is not None and parent.run_at is not None
        later = await env.reread(bulk)
        assert later is not None and later.run_at is not None
        delayed = [(e.job_id, e.data) for e in seen if e.type == "delayed"]
        assert delayed == [
            (bulk.id, {"run_at": pytest.approx(later.run_at.timestamp(), abs=0.001)}),
            (flaky.id, {"run_at": pytest.approx(now + 900, abs=0.001)}),
            (node.job.id, {"run_at": pytest.approx(parent.run_at.timestamp(), abs=0.001)}),
        ]

    async def test_each_job_of_a_large_dag_is_added_before_its_first_state(
        self, env: Harness
    ) -> None:
        q = env.name("dag-events")
        seen: list[QueueEvent] = []
        nodes: list[dict[str, Any]] = [
            {
                "id": f"leaf-{n}",
                "name": "leaf",
                "queue_name": q,
                "opts": {"delay": 600.0} if n % 3 == 0 else {},
            }
            for n in range(300)
        ]
        nodes += [
            {
                "id": f"sink-{n}",
                "name": "sink",
                "queue_name": q,
                "depends_on": [f"leaf-{2 * n}", f"leaf-{2 * n + 1}"],
            }
            for n in range(150)
        ]
        async with QueueEvents(q, store=env.event_store) as listener:
            listener.on("*", seen.append)
            jobs = await env.flow.add_dag(nodes)
            marker = await env.queue(q).add("marker", None)
            await env.wait_seen(
                seen,
                lambda e: e.type == "added" and e.job_id == marker.id,
                "the marker's added event",
            )
        types: dict[str, list[str]] = {}
        for event in seen:
            if event.job_id is not None:
                types.setdefault(event.job_id, []).append(event.type)
        for node in nodes:
            first = (
                "waiting-children"
                if "depends_on" in node
                else "delayed"
                if node["opts"]
                else "waiting"
            )
            job = jobs[node["id"]]
            assert types.get(job.id, [])[:2] == ["added", first], (node["id"], types.get(job.id))
        added = {e.job_id: e.data for e in seen if e.type == "added"}
        assert all(added[jobs[node["id"]].id] == {"name": node["name"]} for node in nodes)
        # A delayed job's event says when it runs; the other first states say nothing.
        delayed = {e.job_id: e.data for e in seen if e.type == "delayed"}
        for name in ("leaf-0", "leaf-3", "leaf-297"):
            record = await env.reread(jobs[name])
            assert record is not None and record.run_at is not None
            due = pytest.approx(record.run_at.timestamp(), abs=0.001)
            assert delayed[record.id] == {"run_at": due}, name
        firsts = [e for e in seen if e.type in ("waiting", "waiting-children")]
        assert firsts and all(e.data == {} for e in firsts)
