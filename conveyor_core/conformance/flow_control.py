"""Flow control: deduplication, global concurrency and manual rate limits, enforced by
the store.

Time is moved by hand where a rule depends on it: queues get a fake clock and jobs are
taken and finished through the store's own transitions with an explicit ``now``. Races
run through both store objects at once (two processes' worth, for a shared store).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import anyio
import pytest

from conveyor_core import (
    FlowProducer,
    InvalidJobStateError,
    Job,
    JobNode,
    JobState,
    Queue,
    QueueEvent,
    QueueEvents,
    RateLimitedError,
)
from conveyor_core.store import Completion, Failure, StoreInterface

from ._support import Harness, racing_takes

T0 = 1_800_000_000.0
"""A fixed moment the tests move time from."""


class _Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _queue(env: Harness, base: str, clock: _Clock, store: StoreInterface | None = None) -> Queue:
    return Queue(env.name(base), store=env.store if store is None else store, clock=clock)


async def _finish(queue: Queue, now: float) -> list[str]:
    """Take every waiting job of ``queue`` and complete it at ``now``; their ids."""
    taken = await queue.store.take_jobs(
        queue.name, limit=1000, token="tok", lock_until=now + 60, now=now
    )
    await queue.store.complete_jobs(
        queue.name, [Completion(job.id, "tok", "null") for job in taken.jobs], now
    )
    return [job.id for job in taken.jobs]


def _dedup(dedup_id: str, **more: Any) -> dict[str, Any]:
    return {"deduplication": {"id": dedup_id, **more}}


def _node_dedup(dedup_id: str, **more: Any) -> dict[str, Any]:
    """A flow node's ``opts`` with a deduplication id."""
    return {"opts": _dedup(dedup_id, **more)}


class DeduplicationTests:
    """DEDUPLICATION of the store protocol, through ``Queue.add``."""

    async def test_a_live_job_holds_its_id_until_it_finishes(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "dedup", clock)
        first = await queue.add("send", {"n": 1}, _dedup("mail-7"))
        again = await queue.add("send", {"n": 2}, _dedup("mail-7"))
        other = await queue.add("send", {"n": 3}, _dedup("mail-8"))
        assert again.id == first.id
        assert again.data == {"n": 1}
        assert other.id != first.id
        assert (await queue.get_job_counts())["waiting"] == 2
        # Taken but not finished: still live.
        taken = await queue.store.take_jobs(
            queue.name, limit=1, token="tok", lock_until=T0 + 60, now=T0
        )
        assert [job.id for job in taken.jobs] == [first.id]
        assert (await queue.add("send", {"n": 4}, _dedup("mail-7"))).id == first.id
        await queue.store.complete_jobs(queue.name, [Completion(first.id, "tok", "null")], T0)
        fresh = await queue.add("send", {"n": 5}, _dedup("mail-7"))
        assert fresh.id != first.id
        assert fresh.data == {"n": 5}
        assert (await queue.get_job_counts())["waiting"] == 2

    async def test_a_deduplicated_lifo_job_is_taken_first(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "dedup-lifo", clock)
        await queue.add_bulk([{"name": "plain", "data": i} for i in range(2)])
        last = await queue.add("last", None, {**_dedup("lifo"), "lifo": True})
        taken = await queue.store.take_jobs(
            queue.name, limit=1, token="tok", lock_until=T0 + 60, now=T0
        )
        assert [job.id for job in taken.jobs] == [last.id]

    async def test_obliterate_drops_the_queues_ids_and_no_other_queues(self, env: Harness) -> None:
        clock = _Clock()
        gone, other = _queue(env, "dedup-gone", clock), _queue(env, "dedup-other", clock)
        old = await gone.add("a", None, _dedup("d", ttl=3600))
        held = await other.add("b", None, _dedup("d"))
        await gone.obliterate()
        fresh = await gone.add("a", None, _dedup("d", ttl=3600))
        assert fresh.id != old.id and await env.reread(fresh) is not None
        assert (await other.add("b", None, _dedup("d"))).id == held.id
        assert (await other.get_job_counts())["waiting"] == 1

    async def test_a_failed_or_removed_job_frees_its_id(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "dedup-free", clock)
        doomed = await queue.add("a", None, _dedup("d"))
        taken = await queue.store.take_jobs(
            queue.name, limit=1, token="tok", lock_until=T0 + 60, now=T0
        )
        assert [job.id for job in taken.jobs] == [doomed.id]
        await queue.store.fail_jobs(queue.name, [Failure(doomed.id, "tok", "broke")], T0)
        second = await queue.add("a", None, _dedup("d"))
        assert second.id != doomed.id
        assert (await queue.add("a", None, _dedup("d"))).id == second.id, "second holds it now"
        await second.remove()
        third = await queue.add("a", None, _dedup("d"))
        assert third.id not in (doomed.id, second.id)
        assert (await queue.add("a", None, _dedup("d"))).id == third.id

    async def test_with_a_ttl_the_id_is_held_until_it_passes(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "dedup-ttl", clock)
        first = await queue.add("a", None, _dedup("t", ttl=10))
        assert await _finish(queue, T0 + 1) == [first.id]
        clock.now = T0 + 9.5
        assert (await queue.add("a", None, _dedup("t", ttl=10))).id == first.id
        clock.now = T0 + 10
        second = await queue.add("a", None, _dedup("t", ttl=10))
        assert second.id != first.id
        assert (await queue.get_job_counts())["waiting"] == 1
        # The new job holds the id for a ttl of its own.
        clock.now = T0 + 19.5
        assert (await queue.add("a", None, _dedup("t", ttl=10))).id == second.id

    async def test_extend_restarts_the_ttl(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "dedup-extend", clock)
        first = await queue.add("a", None, _dedup("x", ttl=10, extend=True))
        other = await queue.add("a", None, _dedup("y", ttl=10))
        clock.now = T0 + 8
        assert (await queue.add("a", None, _dedup("x", ttl=10, extend=True))).id == first.id
        clock.now = T0 + 12
        # Only the id added again was extended: the other one's ttl has passed.
        assert (await queue.add("a", None, _dedup("y", ttl=10))).id != other.id
        clock.now = T0 + 17
        assert (await queue.add("a", None, _dedup("x", ttl=10))).id == first.id
        clock.now = T0 + 27
        assert (await queue.add("a", None, _dedup("x", ttl=10))).id != first.id

    async def test_replace_swaps_the_data_of_the_delayed_job(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "debounce", clock)
        opts = {**_dedup("search", ttl=30, replace=True, extend=True), "delay": 5}
        first = await queue.add("search", {"q": "c"}, opts)
        bystander = await queue.add("other", {"q": "keep"}, {"delay": 3600})
        clock.now = T0 + 3
        second = await queue.add("search", {"q": "co"}, opts)
        assert second.id == first.id
        # Only the deduplicated job takes the new data.
        assert (await queue.get_job(bystander.id)).data == {"q": "keep"}  # type: ignore[union-attr]
        job = await queue.get_job(first.id)
        assert job is not None
        assert job.data == {"q": "co"}
        assert job.state is JobState.DELAYED
        # The delay starts again from the last add: nothing is due at T0 + 5.
        assert await _finish(queue, T0 + 5) == []
        assert await _finish(queue, T0 + 8) == [first.id]
        assert (await queue.get_job_counts())["completed"] == 1

    async def test_replace_without_extend_swaps_the_data_and_keeps_the_ttl(
        self, env: Harness
    ) -> None:
        clock = _Clock()
        queue = _queue(env, "debounce-only", clock)
        opts = {**_dedup("s", ttl=10, replace=True), "delay": 5, "group_id": "g"}
        first = await queue.add("search", {"q": "a"}, opts)
        await queue.add("other", None, {"group_id": "g"})
        clock.now = T0 + 3
        assert (await queue.add("search", {"q": "b"}, opts)).id == first.id
        job = await queue.get_job(first.id)
        assert job is not None
        assert (job.data, job.state) == ({"q": "b"}, JobState.DELAYED)
        # Still one delayed job of its group, beside the other one waiting.
        group = (await queue.get_group_counts())["g"]
        assert (group["delayed"], group["waiting"]) == (1, 1)
        # The ttl was not extended: it lapses at T0 + 10.
        clock.now = T0 + 11
        assert (await queue.add("search", {"q": "c"}, opts)).id != first.id

    async def test_a_deduplicated_job_with_a_parent_is_refused(self, env: Harness) -> None:
        queue = env.queue(env.name("dedup-refused"))
        child = {"name": "c", "queue_name": queue.name}
        parent = await env.flow.add({"name": "p", "queue_name": queue.name, "children": [child]})
        ref = {"id": parent.job.id, "queue": queue.name}
        with pytest.raises(ValueError, match=r"opts\.parent or opts\.deduplication"):
            await queue.add("child", None, {"parent": ref, **_dedup("d")})
        assert await env.total(queue.name) == 2
        first = await queue.add("child", None, _dedup("d"))
        assert (await queue.add("child", None, _dedup("d"))).id == first.id

    async def test_replace_leaves_a_job_that_is_no_longer_delayed(self, env: Harness) -> None:
        clock = _Clock()
        queue = _queue(env, "debounce-late", clock)
        opts = {**_dedup("s", ttl=30, replace=True), "delay": 5}
        first = await queue.add("search", {"q": "a"}, opts)
        taken = await queue.store.take_jobs(
            queue.name, limit=1, token="tok", lock_until=T0 + 60, now=T0 + 6
        )
        assert [job.id for job in taken.jobs] == [first.id]
        clock.now = T0 + 7
        assert (await queue.add("search", {"q": "b"}, opts)).id == first.id
        job = await queue.get_job(first.id)
        assert job is not None
        assert (job.data, job.state) == ({"q": "a"}, JobState.ACTIVE)

    async def test_a_deduplicated_add_publishes_deduplicated(self, env: Harness) -> None:
        queue = env.queue(env.name("dedup-events"))
        seen: list[QueueEvent] = []
        listener = QueueEvents(queue.name, store=env.event_store)
        listener.on("*", seen.append)
        async with listener:
            first = await queue.add("a", None, _dedup("e"))
            await queue.add("a", None, {"job_id": "dropped", **_dedup("e")})
            later = await queue.add("b", None, {"delay": 600, **_dedup("f")})

            async def arrived() -> bool:
                return any(event.type == "deduplicated" for event in seen) and any(
                    event.type == "delayed" for event in seen
                )

            await env.wait_for(arrived, "the deduplicated and delayed events")
        (event,) = [event for event in seen if event.type == "deduplicated"]
        assert event.job_id == first.id
        assert event.data == {"deduplication_id": "e", "deduplicated_job_id": "dropped"}
        assert not [e for e in seen if e.job_id == "dropped"]
        assert await queue.get_job("dropped") is None
        # A written job's events are those of any add: added, then its state.
        record = await env.reread(later)
        assert record is not None and record.run_at is not None
        assert record.created_at is not None
        assert [(e.type, e.data) for e in seen if e.job_id == later.id] == [
            ("added", {"name": "b"}),
            ("delayed", {"run_at": pytest.approx(record.run_at.timestamp(), abs=0.001)}),
        ]
        assert record.run_at.timestamp() == pytest.approx(record.created_at.timestamp() + 600)
        assert [(e.type, e.data) for e in seen if e.job_id == first.id][:2] == [
            ("added", {"name": "a"}),
            ("waiting", {}),
        ]

    async def test_an_existing_job_id_wins_over_a_free_deduplication_id(self, env: Harness) -> None:
        queue = env.queue(env.name("dedup-jobid"))
        plain = await queue.add("a", {"n": 1}, {"job_id": "fixed"})
        same = await queue.add("a", {"n": 2}, {"job_id": "fixed", **_dedup("k")})
        assert same.id == plain.id
        assert same.data == {"n": 1}
        # Nothing took the deduplication id: a later add under it is written.
        later = await queue.add("a", {"n": 3}, _dedup("k"))
        assert later.id != plain.id
        assert (await queue.get_job_counts())["waiting"] == 2
        # ... and the ids other jobs hold stay theirs.
        holder = await queue.add("a", None, _dedup("held"))
        await queue.add("a", {"n": 4}, {"job_id": "fixed", **_dedup("other")})
        assert (await queue.add("a", None, _dedup("held"))).id == holder.id
        assert (await queue.add("a", None, _dedup("k"))).id == later.id

    async def test_racing_adds_of_one_id_write_one_job(self, env: Harness) -> None:
        name = env.name("dedup-race")
        queues = [Queue(name, store=env.store), Queue(name, store=env.second_store)]
        got: list[Job] = []

        async def add(index: int) -> None:
            got.append(await queues[index % 2].add("a", {"i": index}, _dedup("race")))

        async with anyio.create_task_group() as tg:
            for index in range(20):
                tg.start_soon(add, index)
        assert len({job.id for job in got}) == 1
        assert sum((await queues[0].get_job_counts()).values()) == 1

    async def test_bad_deduplication_options_are_refused(self, env: Harness) -> None:
        queue = env.queue(env.name("dedup-bad"))
        with pytest.raises(ValueError, match="deduplication"):
            await queue.add("a", None, _dedup(""))
        with pytest.raises(ValueError, match="extend=True needs a ttl"):
            await queue.add("a", None, _dedup("x", extend=True))
        with pytest.raises(ValueError, match="replace=True needs a delay"):
            await queue.add("a", None, _dedup("x", replace=True))
        with pytest.raises(ValueError, match="ttl"):
            await queue.add("a", None, _dedup("x", ttl=-1))
        with pytest.raises(ValueError, match=r"not to Queue\.add_bulk"):
            await queue.add_bulk([{"name": "a", "opts": _dedup("x")}, {"name": "b"}])
        assert sum((await queue.get_job_counts()).values()) == 0


async def _complete(queue: Queue, job_id: str, value: str, now: float) -> None:
    """Take the waiting jobs of ``queue`` at ``now`` and complete ``job_id`` with
    ``value`` (JSON text); ``job_id`` must be among them."""
    taken = await queue.store.take_jobs(
        queue.name, limit=1000, token="tok", lock_until=now + 60, now=now
    )
    assert job_id in [job.id for job in taken.jobs]
    await queue.store.complete_jobs(queue.name, [Completion(job_id, "tok", value)], now)


class FlowDeduplicationTests:
    """DEDUPLICATED NODE of the store protocol, through ``FlowProducer.add``,
    ``add_bulk`` and ``add_dag``: a flow's leaf whose deduplication id a live job holds
    is not added; the live job becomes its parent's dependency."""

    async def test_flow_dedup_leaf_of_a_live_job_becomes_a_dependency(self, env: Harness) -> None:
        clock = _Clock()
        flow = FlowProducer(store=env.store, clock=clock)
        leaves, parents = env.name("fd-leaves"), env.name("fd-parents")
        first = await flow.add(
            {
                "name": "report",
                "queue_name": parents,
                "children": [{"name": "fetch", "queue_name": leaves, **_node_dedup("f-1")}],
            }
        )
        live = first.children[0].job
        assert live.state is JobState.WAITING
        second = await flow.add(
            {
                "name": "summary",
                "queue_name": parents,
                "children": [
                    {"name": "fetch", "queue_name": leaves, **_node_dedup("f-1")},
                    {"name": "other", "queue_name": leaves},
                ],
            }
        )
        fetch, other = second.children
        assert fetch.job.id == live.id
        assert other.job.id != live.id
        assert second.job.state is JobState.WAITING_CHILDREN
        leaf_queue = Queue(leaves, store=env.store, clock=clock)
        counts = await leaf_queue.get_job_counts()
        assert counts["waiting"] == 2  # the live job and "other"; no second fetch
        deps = await env.store.get_dependencies(parents, second.job.id)
        assert [(d.id, d.status) for d in deps] == [(live.id, "pending"), (other.job.id, "pending")]
        links = await env.store.get_parent_links(leaves, live.id)
        assert [(link.id, link.policy.value) for link in links] == [
            (first.job.id, "fail"),
            (second.job.id, "fail"),
        ]

        # The live job's completion resolves both parents with its value.
        taken = await env.store.take_jobs(leaves, limit=10, token="tok", lock_until=T0 + 60, now=T0)
        assert sorted(job.id for job in taken.jobs) == sorted([live.id, other.job.id])
        await env.store.complete_jobs(
            leaves,
            [Completion(live.id, "tok", '{"rows": 3}'), Completion(other.job.id, "tok", "1")],
            T0,
        )
        for parent in (first.job.id, second.job.id):
            record = await env.store.get_job(parents, parent)
            assert record is not None and record.state is JobState.WAITING
            values = {d.id: d.value for d in await env.store.get_dependencies(parents, parent)}
            assert values[live.id] == '{"rows": 3}'

    async def test_flow_dedup_leaf_with_a_free_id_takes_it(self, env: Harness) -> None:
        clock = _Clock()
        flow = FlowProducer(store=env.store, clock=clock)
        leaves, parents = env.name("fd-free"), env.name("fd-free-p")
        tree = await flow.add(
            {
                "name": "p",
                "queue_name": parents,
                "children": [{"name": "c", "queue_name": leaves, **_node_dedup("free")}],
            }
        )
        child = tree.children[0].job
        assert child.parent_id == tree.job.id
        record = await env.store.get_job(leaves, child.id)
        assert record is not None
        assert (record.parent_id, record.state) == (tree.job.id, JobState.WAITING)
        queue = Queue(leaves, store=env.store, clock=clock)
        assert (await queue.add("c", None, _dedup("free"))).id == child.id
        assert (await queue.get_job_counts())["waiting"] == 1
        # A one-node flow that is itself a deduplicated leaf.
        alone = await flow.add({"name": "c", "queue_name": leaves, **_node_dedup("free")})
        assert alone.job.id == child.id
        assert alone.children == []

    async def test_flow_dedup_leaf_takes_an_id_its_removed_holder_freed(self, env: Harness) -> None:
        clock = _Clock()
        leaves, parents = env.name("fd-freed"), env.name("fd-freed-p")
        queue = Queue(leaves, store=env.store, clock=clock)
        gone = await queue.add("gone", None, _dedup("freed"))
        kept = await queue.add("kept", None, _dedup("kept"))
        await gone.remove()
        tree = await FlowProducer(store=env.store, clock=clock).add(
            {
                "name": "p",
                "queue_name": parents,
                "children": [{"name": "c", "queue_name": leaves, **_node_dedup("freed")}],
            }
        )
        child = tree.children[0].job
        assert child.id != gone.id
        # The entry now names the new child; the queue's other entry is unchanged.
        assert (await queue.add("again", None, _dedup("freed"))).id == child.id
        assert (await queue.add("other", None, _dedup("kept"))).id == kept.id
        assert (await queue.get_job_counts())["waiting"] == 2

    async def test_flow_dedup_in_a_dag(self, env: Harness) -> None:
        clock = _Clock()
        q, other_q = env.name("fd-dag"), env.name("fd-dag-other")
        queue = Queue(q, store=env.store, clock=clock)
        live = await queue.add("shared", {"v": 1}, _dedup("shared"))
        jobs = await FlowProducer(store=env.store, clock=clock).add_dag(
            [
                {"id": "s", "name": "shared", "queue_name": q, **_node_dedup("shared")},
                {"id": "n", "name": "new-leaf", "queue_name": q, **_node_dedup("n-id")},
                {"id": "z", "name": "elsewhere", "queue_name": other_q},
                {"id": "a", "name": "a", "queue_name": q, "depends_on": ["s", "n"]},
                {"id": "b", "name": "b", "queue_name": q, "depends_on": ["s"]},
                # The node and its holder named directly, with a job of another queue
                # between them: one edge, one dependency.
                {
                    "id": "c",
                    "name": "c",
                    "queue_name": q,
                    "depends_on": ["s", "z", f"{q}/{live.id}"],
                },
            ]
        )
        assert jobs["s"].id == live.id
        assert jobs["n"].id != live.id
        assert (await queue.add("x", None, _dedup("n-id"))).id == jobs["n"].id
        assert (await queue.get_job_counts())["waiting"] == 2
        for parent in ("a", "b"):
            deps = await env.store.get_dependencies(q, jobs[parent].id)
            assert live.id in [d.id for d in deps]
        deps = await env.store.get_dependencies(q, jobs["c"].id)
        assert [(d.id, d.status) for d in deps] == [
            (live.id, "pending"),
            (jobs["z"].id, "pending"),
        ]
        links = await env.store.get_parent_links(q, live.id)
        assert [link.id for link in links] == [jobs["a"].id, jobs["b"].id, jobs["c"].id]
        await _complete(queue, live.id, "7", T0)
        b = await env.store.get_job(q, jobs["b"].id)
        a = await env.store.get_job(q, jobs["a"].id)
        assert b is not None and b.state is JobState.WAITING
        assert a is not None and a.state is JobState.WAITING_CHILDREN

    async def test_flow_dedup_a_dag_node_with_its_holders_id_is_deduplicated(
        self, env: Harness
    ) -> None:
        clock = _Clock()
        q = env.name("fd-dag-same-id")
        queue = Queue(q, store=env.store, clock=clock)
        live = await queue.add("shared", None, {"job_id": "held", **_dedup("shared")})
        # The node names the live job's id as its own: it is the live job, not a duplicate.
        jobs = await FlowProducer(store=env.store, clock=clock).add_dag(
            [
                {
                    "id": "s",
                    "name": "shared",
                    "queue_name": q,
                    "opts": {"job_id": "held", **_dedup("shared")},
                },
                {"id": "a", "name": "a", "queue_name": q, "depends_on": ["s"]},
            ]
        )
        assert jobs["s"].id == live.id == "held"
        deps = await env.store.get_dependencies(q, jobs["a"].id)
        assert [(d.id, d.status) for d in deps] == [("held", "pending")]
        assert (await queue.get_job_counts())["waiting"] == 1

    async def test_flow_dedup_in_a_dag_checks_every_node(self, env: Harness) -> None:
        clock = _Clock()
        q, other_q = env.name("fd-dag-many"), env.name("fd-dag-many-other")
        queue = Queue(q, store=env.store, clock=clock)
        one = await queue.add("one", None, _dedup("one"))
        two = await queue.add("two", None, _dedup("two"))
        jobs = await FlowProducer(store=env.store, clock=clock).add_dag(
            [
                {"id": "x", "name": "x", "queue_name": q, **_node_dedup("free")},
                {"id": "o", "name": "one", "queue_name": q, **_node_dedup("one")},
                {"id": "t", "name": "two", "queue_name": q, **_node_dedup("two")},
                # One job id in two queues: two jobs, two dependencies.
                {"id": "y", "name": "y", "queue_name": q, "opts": {"job_id": "same"}},
                {"id": "z", "name": "z", "queue_name": other_q, "opts": {"job_id": "same"}},
                {"id": "p", "name": "p", "queue_name": q, "depends_on": ["x", "o", "t", "y", "z"]},
            ]
        )
        assert (jobs["o"].id, jobs["t"].id) == (one.id, two.id)
        deps = await env.store.get_dependencies(q, jobs["p"].id)
        assert sorted((d.queue, d.id) for d in deps) == sorted(
            [(q, jobs["x"].id), (q, one.id), (q, two.id), (q, "same"), (other_q, "same")]
        )
        assert (await queue.get_job_counts())["waiting"] == 4

    async def test_flow_dedup_ttl_extend_and_replace_on_a_node(self, env: Harness) -> None:
        clock = _Clock()
        flow = FlowProducer(store=env.store, clock=clock)
        leaves, parents = env.name("fd-ttl"), env.name("fd-ttl-p")
        queue = Queue(leaves, store=env.store, clock=clock)
        opts = {**_dedup("deb", ttl=10, replace=True, extend=True), "delay": 5}
        live = await queue.add("deb", {"q": "a"}, opts)

        def tree(data: Any) -> dict[str, Any]:
            leaf = {"name": "deb", "queue_name": leaves, "data": data, "opts": opts}
            return {"name": "p", "queue_name": parents, "children": [leaf]}

        clock.now = T0 + 8
        first = await flow.add(tree({"q": "ab"}))
        assert first.children[0].job.id == live.id
        record = await env.store.get_job(leaves, live.id)
        assert record is not None
        # replace: the node's data, and its delay starts again.
        assert (record.data, record.state, record.run_at) == (
            '{"q":"ab"}',
            JobState.DELAYED,
            T0 + 13,
        )
        # extend: held until T0 + 18 now, not T0 + 10.
        clock.now = T0 + 15
        second = await flow.add(tree({"q": "abc"}))
        assert second.children[0].job.id == live.id
        clock.now = T0 + 26
        third = await flow.add(tree({"q": "new"}))
        assert third.children[0].job.id != live.id
        assert (await queue.get_job_counts())["delayed"] == 2
        # Without extend, a ttl lapses on time.
        plain = {"deduplication": {"id": "plain", "ttl": 10}}
        held = await queue.add("p", None, plain)
        clock.now = T0 + 35
        leaf = {"name": "p", "queue_name": leaves, "opts": plain}
        assert (await flow.add({"name": "p", "queue_name": parents, "children": [leaf]})).children[
            0
        ].job.id == held.id
        clock.now = T0 + 36
        fresh = await flow.add({"name": "p", "queue_name": parents, "children": [leaf]})
        assert fresh.children[0].job.id != held.id

    async def test_flow_dedup_a_dag_node_holds_its_id_for_its_ttl(self, env: Harness) -> None:
        clock = _Clock()
        flow = FlowProducer(store=env.store, clock=clock)
        leaves = env.name("fd-node-ttl")
        queue = Queue(leaves, store=env.store, clock=clock)
        node = {"id": "n", "name": "n", "queue_name": leaves, **_node_dedup("nt", ttl=10)}
        first = (await flow.add_dag([node]))["n"]
        assert await _finish(queue, T0 + 1) == [first.id]
        clock.now = T0 + 9
        assert (await queue.add("n", None, _dedup("nt", ttl=10))).id == first.id
        # Lapsed: the next node takes the id, for a ttl of its own.
        clock.now = T0 + 11
        second = (await flow.add_dag([node]))["n"]
        assert second.id != first.id
        clock.now = T0 + 20
        assert (await queue.add("n", None, _dedup("nt", ttl=10))).id == second.id

    async def test_flow_dedup_extend_or_replace_alone_on_a_dag_node(self, env: Harness) -> None:
        clock = _Clock()
        flow = FlowProducer(store=env.store, clock=clock)
        q = env.name("fd-dag-ttl")
        queue = Queue(q, store=env.store, clock=clock)
        debounce = {**_dedup("deb", ttl=10, replace=True), "delay": 5}
        extended = _dedup("ext", ttl=10, extend=True)
        debounced = await queue.add("deb", {"q": "a"}, debounce)
        held = await queue.add("ext", None, extended)

        async def node(name: str, data: Any, opts: dict[str, Any]) -> str:
            jobs = await flow.add_dag(
                [{"id": "n", "name": name, "queue_name": q, "data": data, "opts": opts}]
            )
            return jobs["n"].id

        clock.now = T0 + 8
        assert await node("deb", {"q": "ab"}, debounce) == debounced.id
        assert await node("ext", None, extended) == held.id
        record = await env.store.get_job(q, debounced.id)
        assert record is not None
        # replace without extend: the node's data, and its delay starts again ...
        assert (record.data, record.state, record.run_at) == (
            '{"q":"ab"}',
            JobState.DELAYED,
            T0 + 13,
        )
        clock.now = T0 + 15
        # ... while its ttl lapses on time (T0 + 10); extend alone held "ext" to T0 + 18.
        assert await node("deb", {"q": "new"}, debounce) != debounced.id
        assert await node("ext", None, extended) == held.id

    async def test_flow_dedup_completed_holder_resolves_the_parent_at_once(
        self, env: Harness
    ) -> None:
        clock = _Clock()
        flow = FlowProducer(store=env.store, clock=clock)
        leaves, parents = env.name("fd-done"), env.name("fd-done-p")
        queue = Queue(leaves, store=env.store, clock=clock)
        held = await queue.add("c", None, _dedup("done", ttl=60))
        await _complete(queue, held.id, '"cached"', T0 + 1)
        clock.now = T0 + 2
        tree = await flow.add(
            {
                "name": "p",
                "queue_name": parents,
                "children": [{"name": "c", "queue_name": leaves, **_node_dedup("done", ttl=60)}],
            }
        )
        assert tree.children[0].job.id == held.id
        assert tree.children[0].job.state is JobState.COMPLETED
        parent = await env.store.get_job(parents, tree.job.id)
        assert parent is not None and parent.state is JobState.WAITING
        (dep,) = await env.store.get_dependencies(parents, tree.job.id)
        assert (dep.id, dep.status, dep.value) == (held.id, "processed", '"cached"')

    async def test_flow_dedup_publishes_deduplicated(self, env: Harness) -> None:
        leaves, parents = env.name("fd-events"), env.name("fd-events-p")
        queue = env.queue(leaves)
        seen: list[QueueEvent] = []
        listener = QueueEvents(leaves, store=env.event_store)
        listener.on("*", seen.append)
        async with listener:
            live = await queue.add("a", None, _dedup("ev"))
            leaf = {
                "name": "a",
                "queue_name": leaves,
                "opts": {"job_id": "dropped", **_dedup("ev")},
            }
            await env.flow.add({"name": "p", "queue_name": parents, "children": [leaf]})

            async def arrived() -> bool:
                return any(event.type == "deduplicated" for event in seen)

            await env.wait_for(arrived, "the deduplicated event")
        (event,) = [event for event in seen if event.type == "deduplicated"]
        assert event.job_id == live.id
        assert event.data == {"deduplication_id": "ev", "deduplicated_job_id": "dropped"}
        assert not [e for e in seen if e.job_id == "dropped"]
        assert await queue.get_job("dropped") is None

    async def test_flow_dedup_racing_flows_write_one_job(self, env: Harness) -> None:
        leaves, parents = env.name("fd-race"), env.name("fd-race-p")
        producers = [FlowProducer(store=env.store), FlowProducer(store=env.second_store)]
        roots: list[JobNode] = []

        async def add(index: int) -> None:
            leaf = {"name": "once", "queue_name": leaves, "data": index, **_node_dedup("one")}
            tree = {"name": "p", "queue_name": parents, "children": [leaf]}
            roots.append(await producers[index % 2].add(tree))

        async with anyio.create_task_group() as tg:
            for index in range(6):
                tg.start_soon(add, index)
        held = {root.children[0].job.id for root in roots}
        assert len(held) == 1
        (holder,) = held
        queue = Queue(leaves, store=env.store)
        assert sum((await queue.get_job_counts()).values()) == 1
        links = await env.store.get_parent_links(leaves, holder)
        assert sorted(link.id for link in links) == sorted(root.job.id for root in roots)
        for root in roots:
            deps = await env.store.get_dependencies(parents, root.job.id)
            assert [(d.id, d.status) for d in deps] == [(holder, "pending")]

    async def test_flow_dedup_refusals_write_nothing(self, env: Harness) -> None:
        leaves, parents = env.name("fd-refuse"), env.name("fd-refuse-p")
        queue = env.queue(leaves)
        flow = env.flow
        with pytest.raises(ValueError, match="only a leaf"):
            await flow.add(
                {
                    "name": "p",
                    "queue_name": parents,
                    **_node_dedup("inner"),
                    "children": [{"name": "c", "queue_name": leaves}],
                }
            )
        with pytest.raises(ValueError, match="without depends_on"):
            await flow.add_dag(
                [
                    {"id": "a", "name": "a", "queue_name": leaves},
                    {
                        "id": "b",
                        "name": "b",
                        "queue_name": parents,
                        "depends_on": ["a"],
                        **_node_dedup("b"),
                    },
                ]
            )
        parent = await env.queue(parents).add("holder", None, {"delay": 100})
        ref = {"id": parent.id, "queue": parents}
        with pytest.raises(ValueError, match=r"opts\.parent"):
            await flow.add(
                {"name": "c", "queue_name": leaves, "opts": {"parent": ref, **_dedup("x")}}
            )
        with pytest.raises(ValueError, match=r"opts\.parent"):
            await flow.add(
                {
                    "name": "p",
                    "queue_name": parents,
                    "opts": {"parent": ref},
                    "children": [{"name": "c", "queue_name": leaves, **_node_dedup("x")}],
                }
            )
        with pytest.raises(ValueError, match="deduplication"):
            await queue.add_bulk([{"name": "a", "opts": _dedup("bulk")}])
        # A live holder that failed under its ttl is refused, nothing written.
        clock = _Clock()
        held = await Queue(leaves, store=env.store, clock=clock).add("h", None, _dedup("f", ttl=60))
        taken = await env.store.take_jobs(leaves, limit=10, token="tok", lock_until=T0 + 60, now=T0)
        assert held.id in [job.id for job in taken.jobs]
        await env.store.fail_jobs(leaves, [Failure(held.id, "tok", "broke")], T0)
        with pytest.raises(InvalidJobStateError):
            await FlowProducer(store=env.store, clock=clock).add(
                {
                    "name": "p",
                    "queue_name": parents,
                    "children": [{"name": "h", "queue_name": leaves, **_node_dedup("f", ttl=60)}],
                }
            )
        assert sum((await queue.get_job_counts()).values()) == 1
        assert sum((await env.queue(parents).get_job_counts()).values()) == 1
        assert (await queue.add("n", None, _dedup("x"))).id  # "x" was never taken
        assert sum((await queue.get_job_counts()).values()) == 2


class GlobalConcurrencyTests:
    """GLOBAL CONCURRENCY of the store protocol: the store never hands out more."""

    async def test_set_get_and_remove(self, env: Harness) -> None:
        queue = env.queue(env.name("conc-set"))
        assert await queue.get_global_concurrency() is None
        await queue.set_global_concurrency(4)
        assert await queue.get_global_concurrency() == 4
        other = Queue(queue.name, store=env.second_store)
        assert await other.get_global_concurrency() == 4
        await queue.remove_global_concurrency()
        assert await other.get_global_concurrency() is None

    async def test_a_take_stops_at_the_limit_until_a_job_finishes(self, env: Harness) -> None:
        queue = env.queue(env.name("conc-take"))
        await queue.add_bulk([{"name": "a"} for _ in range(10)])
        await queue.set_global_concurrency(3)
        store, name = queue.store, queue.name
        first = await store.take_jobs(name, limit=10, token="t1", lock_until=T0 + 60, now=T0)
        assert len(first.jobs) == 3
        assert not first.concurrency_limited
        full = await env.second_store.take_jobs(
            name, limit=10, token="t2", lock_until=T0 + 60, now=T0
        )
        assert (full.jobs, full.concurrency_limited) == ([], True)
        assert full.rate_limited_until is None
        await store.complete_jobs(name, [Completion(first.jobs[0].id, "t1", "null")], T0)
        again = await env.second_store.take_jobs(
            name, limit=10, token="t2", lock_until=T0 + 60, now=T0
        )
        assert len(again.jobs) == 1
        await queue.set_global_concurrency(5)
        more = await store.take_jobs(name, limit=10, token="t3", lock_until=T0 + 60, now=T0)
        assert len(more.jobs) == 2
        await queue.remove_global_concurrency()
        rest = await store.take_jobs(name, limit=10, token="t4", lock_until=T0 + 60, now=T0)
        assert len(rest.jobs) == 4
        assert (await queue.get_job_counts())["active"] == 9

    async def test_racing_takes_never_pass_the_limit(self, env: Harness) -> None:
        queue = env.queue(env.name("conc-race"))
        await queue.add_bulk([{"name": "a"} for _ in range(40)])
        await queue.set_global_concurrency(5)
        taken = await racing_takes(env, queue.name, 16, 3, T0)
        assert len(taken) == len(set(taken)) == 5
        assert (await queue.get_job_counts())["active"] == 5

    async def test_workers_on_two_store_objects_keep_to_the_limit(self, env: Harness) -> None:
        name = env.name("conc-workers")
        queue = env.queue(name)
        await queue.set_global_concurrency(2)
        await queue.add_bulk([{"name": "a", "data": i} for i in range(24)])
        running = 0
        most = 0

        async def handle(job: Job) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await anyio.sleep(0.01)
            running -= 1

        async with (
            env.workers({name: handle}, concurrency=4),
            env.workers({name: handle}, store=env.second_store, concurrency=4),
        ):
            await env.wait_count(name, JobState.COMPLETED, 24)
        assert most == 2

    async def test_complete_and_take_takes_the_room_its_completions_make(
        self, env: Harness
    ) -> None:
        queue = env.queue(env.name("conc-cat"))
        await queue.add_bulk([{"name": "a", "data": i} for i in range(6)])
        await queue.set_global_concurrency(2)
        store, name = queue.store, queue.name
        first = await store.take_jobs(name, limit=10, token="t1", lock_until=T0 + 60, now=T0)
        assert len(first.jobs) == 2
        done = [Completion(job.id, "t1", f'"{job.id}"') for job in first.jobs]
        applied, taken = await store.complete_and_take(
            name,
            [*done, Completion("no-such-job", "t1", "null")],
            T0 + 1,
            limit=10,
            token="t2",
            lock_until=T0 + 60,
        )
        assert applied == [True, True, False]
        assert len(taken.jobs) == 2 and not taken.concurrency_limited
        assert {job.id for job in taken.jobs}.isdisjoint(job.id for job in first.jobs)
        assert all(job.lock_token == "t2" and job.processed_at == T0 + 1 for job in taken.jobs)
        for job in first.jobs:
            stored = await queue.get_job(job.id)
            assert stored is not None and stored.state is JobState.COMPLETED
            assert stored.return_value == job.id
        # At the limit again: completions that are refused make no room.
        applied, full = await store.complete_and_take(
            name,
            [Completion(first.jobs[0].id, "t1", "null")],
            T0 + 2,
            limit=10,
            token="t3",
            lock_until=T0 + 60,
        )
        assert applied == [False]
        assert (full.jobs, full.concurrency_limited) == ([], True)
        counts = await queue.get_job_counts()
        assert (counts["completed"], counts["active"], counts["waiting"]) == (2, 2, 2)

    async def test_complete_and_take_takes_the_parent_its_completion_released(
        self, env: Harness
    ) -> None:
        name = env.name("conc-cat-flow")
        tree = await env.flow.add(
            {
                "name": "parent",
                "queue_name": name,
                "children": [{"name": "child", "queue_name": name}],
            }
        )
        store = env.store
        child = await store.take_jobs(name, limit=10, token="t1", lock_until=T0 + 60, now=T0)
        assert [job.id for job in child.jobs] == [tree.children[0].job.id]
        applied, taken = await store.complete_and_take(
            name,
            [Completion(child.jobs[0].id, "t1", "7")],
            T0 + 1,
            limit=10,
            token="t2",
            lock_until=T0 + 60,
        )
        assert applied == [True]
        assert [job.id for job in taken.jobs] == [tree.job.id]
        parent = await env.queue(name).get_job(tree.job.id)
        assert parent is not None and parent.state is JobState.ACTIVE
        assert await parent.get_children_values() == {child.jobs[0].id: 7}

    async def test_a_bad_concurrency_is_refused(self, env: Harness) -> None:
        queue = env.queue(env.name("conc-bad"))
        with pytest.raises(ValueError, match="at least 1"):
            await queue.set_global_concurrency(0)
        with pytest.raises(TypeError, match="must be an int"):
            await queue.set_global_concurrency("3")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be an int"):
            await queue.set_global_concurrency(True)
        assert await queue.get_global_concurrency() is None


class ManualRateLimitTests:
    """MANUAL RATE LIMIT of the store protocol, and ``RateLimitedError`` in a handler."""

    async def test_a_limited_queue_takes_nothing_until_then(self, env: Harness) -> None:
        queue = env.queue(env.name("limited"))
        start = time.time()
        await queue.add_bulk([{"name": "a"}, {"name": "b"}])
        delayed = await queue.add("later", None, {"delay": 1})
        store, other, name = env.store, env.second_store, queue.name
        await store.rate_limit_queue(name, start + 5)
        held = await other.take_jobs(name, limit=5, token="t", lock_until=start + 60, now=start + 2)
        assert held.jobs == []
        assert held.rate_limited_until == start + 5
        assert not held.concurrency_limited
        # Due delayed jobs still become waiting meanwhile.
        assert await env.state(delayed) is JobState.WAITING
        # An earlier limit never shortens a later one.
        await other.rate_limit_queue(name, start + 3)
        still = await store.take_jobs(
            name, limit=5, token="t", lock_until=start + 60, now=start + 4
        )
        assert (still.jobs, still.rate_limited_until) == ([], start + 5)
        free = await store.take_jobs(name, limit=5, token="t", lock_until=start + 60, now=start + 5)
        assert len(free.jobs) == 3
        assert free.rate_limited_until is None

    async def test_rate_limited_error_hands_the_job_back_unattempted(self, env: Harness) -> None:
        name = env.name("limited-worker")
        queue = env.queue(name)
        job = await queue.add("call-api", {"n": 1}, {"attempts": 1})
        calls: list[str] = []

        async def handle(job: Job) -> None:
            calls.append(job.id)
            raise RateLimitedError(600)

        async with env.workers({name: handle}):

            async def handed_back() -> bool:
                return bool(calls) and await env.state(job) is JobState.WAITING

            await env.wait_for(handed_back, "the job back in waiting")
        current = await env.reread(job)
        assert current is not None
        assert (current.state, current.attempts_made, current.failed_reason) == (
            JobState.WAITING,
            0,
            None,
        )
        assert calls == [job.id]
        now = time.time()
        later = await env.second_store.take_jobs(
            name, limit=5, token="t", lock_until=now + 60, now=now + 60
        )
        assert later.jobs == []
        assert later.rate_limited_until is not None
        assert later.rate_limited_until >= now + 500

    async def test_a_bad_delay_is_refused(self, env: Harness) -> None:
        with pytest.raises(ValueError, match="delay must be a number of seconds"):
            RateLimitedError(-1)
        with pytest.raises(ValueError, match="delay must be a number of seconds"):
            RateLimitedError("soon")  # type: ignore[arg-type]
        assert RateLimitedError(timedelta(seconds=2)).delay == 2.0
