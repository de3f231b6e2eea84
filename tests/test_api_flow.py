"""FlowProducer smoke tests, on the memory store (the conformance suite covers flows
in depth on every store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor_core import (
    DuplicateJobError,
    FlowJob,
    FlowProducer,
    Job,
    JobState,
    PayloadError,
    Queue,
    Worker,
)
from conveyor_stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as store:
        yield store


def report_flow() -> dict[str, Any]:
    return {
        "name": "send-report",
        "queue_name": "reports",
        "data": {"to": "ops"},
        "opts": {"job_id": "report-1"},
        "children": [
            {"name": "fetch", "queue_name": "fetch", "data": {"src": "sales"}},
            {"name": "fetch", "queue_name": "fetch", "data": {"src": "stock"}},
        ],
    }


async def test_flow_runs_parent_after_children(store: MemoryStore) -> None:
    flow = FlowProducer(store=store)
    node = await flow.add(report_flow())
    assert node.job.state is JobState.WAITING_CHILDREN
    assert [child.job.state for child in node.children] == [JobState.WAITING] * 2
    assert all(child.job.parent_id == "report-1" for child in node.children)

    async def fetch(job: Job) -> str:
        return f"rows of {job.data['src']}"

    async def send(job: Job) -> dict[str, Any]:
        return await job.get_children_values()

    async with (
        Worker("fetch", fetch, store=store, drain_delay=0.05),
        Worker("reports", send, store=store, drain_delay=0.05),
    ):
        values = await node.job.wait_until_finished(timeout=5)
    assert sorted(values.values()) == ["rows of sales", "rows of stock"]
    assert set(values) == {child.job.id for child in node.children}


async def test_flow_add_is_atomic_on_bad_input(store: MemoryStore) -> None:
    flow = FlowProducer(store=store)
    bad_data = report_flow()
    bad_data["children"][1]["data"] = {"when": object()}
    with pytest.raises(PayloadError, match="'fetch'"):
        await flow.add(bad_data)
    bad_opts = report_flow()
    bad_opts["children"][0]["opts"] = {"attempts": 0}
    with pytest.raises(ValidationError):
        await flow.add(bad_opts)
    duplicate = report_flow()
    duplicate["children"][0]["opts"] = {"job_id": "twin"}
    duplicate["children"][1]["opts"] = {"job_id": "twin"}
    with pytest.raises(DuplicateJobError, match="twin"):
        await flow.add(duplicate)
    for name in ("reports", "fetch"):
        counts = await Queue(name, store=store).get_job_counts()
        assert sum(counts.values()) == 0


async def test_adding_an_existing_root_returns_the_existing_flow(store: MemoryStore) -> None:
    flow = FlowProducer(store=store)
    first = await flow.add(report_flow())
    second = await flow.add(report_flow())
    assert second.job.id == first.job.id
    assert [c.job.id for c in second.children] == [c.job.id for c in first.children]
    assert sum((await Queue("fetch", store=store).get_job_counts()).values()) == 2


async def test_queues_options_and_child_policies(store: MemoryStore) -> None:
    flow = FlowProducer(store=store)
    tree = FlowJob(
        name="parent",
        queue_name="p",
        opts={"fail_parent_on_child_failure": "ignore"},
        children=[
            FlowJob(name="a", queue_name="c"),
            FlowJob(name="b", queue_name="c", opts={"fail_parent_on_failure": True}),
        ],
    )
    node = await flow.add(tree, queues_options={"c": {"attempts": 3, "priority": 2}})
    a, b = (child.job for child in node.children)
    assert a.opts.attempts == b.opts.attempts == 3
    assert a.record.parent_policy == "ignore"
    assert b.record.parent_policy == "fail"
    assert node.job.opts.attempts == 1


async def test_deep_chain_and_get_flow(store: MemoryStore) -> None:
    flow = FlowProducer(store=store)
    tree: dict[str, Any] = {"name": "level-0", "queue_name": "chain"}
    leaf = tree
    for level in range(1, 1000):
        child = {"name": f"level-{level}", "queue_name": "chain"}
        leaf["children"] = [child]
        leaf = child
    node = await flow.add(tree)
    deepest = node.walk()[-1]
    assert len(node.walk()) == 1000
    assert deepest.job.name == "level-999"
    assert deepest.job.state is JobState.WAITING

    got = await flow.get_flow(node.job.id, "chain", depth=3)
    assert got is not None
    assert [n.job.name for n in got.walk()] == ["level-0", "level-1", "level-2"]
    full = await flow.get_flow(node.job.id, "chain", depth=2000)
    assert full is not None and len(full.walk()) == 1000
    assert await flow.get_flow("missing", "chain") is None


class _CountsFullReads(MemoryStore):
    """A MemoryStore that counts how often a parent's whole list of children is read."""

    def __init__(self) -> None:
        super().__init__()
        self.full_reads = 0

    async def get_dependencies(self, queue: str, job_id: str) -> Any:
        self.full_reads += 1
        return await super().get_dependencies(queue, job_id)


async def test_get_flow_with_max_children_reads_a_page_and_counts_the_rest() -> None:
    children: list[dict[str, Any]] = [
        {"name": f"part-{i}", "queue_name": "parts"} for i in range(40)
    ]
    children[0]["children"] = [{"name": f"piece-{i}", "queue_name": "pieces"} for i in range(3)]
    async with _CountsFullReads() as store:
        flow = FlowProducer(store=store)
        node = await flow.add({"name": "big", "queue_name": "big", "children": children})
        tree = await flow.get_flow(node.job.id, "big", max_children=5)
        assert tree is not None
        assert [child.job.name for child in tree.children] == [f"part-{i}" for i in range(5)]
        assert tree.hidden_children == 35
        first = tree.children[0]
        assert [child.job.name for child in first.children] == ["piece-0", "piece-1", "piece-2"]
        assert first.hidden_children == 0
        assert store.full_reads == 0, "max_children must read a page, not every child"
        whole = await flow.get_flow(node.job.id, "big")
        assert whole is not None and len(whole.children) == 40 and whole.hidden_children == 0
        nothing = await flow.get_flow(node.job.id, "big", max_children=0)
        assert nothing is not None and nothing.children == [] and nothing.hidden_children == 40


async def test_add_dag_input_errors_name_the_field_and_write_nothing(store: MemoryStore) -> None:
    flow = FlowProducer(store=store)
    assert await flow.add_dag([]) == {}
    with pytest.raises(ValidationError, match="depends_on"):
        await flow.add_dag([{"id": "a", "name": "a", "queue_name": "q", "depends_on": "b"}])
    with pytest.raises(ValidationError, match="colour"):
        await flow.add_dag([{"id": "a", "name": "a", "queue_name": "q", "colour": "red"}])
    with pytest.raises(PayloadError, match="set"):
        await flow.add_dag(
            [
                {"id": "a", "name": "a", "queue_name": "q"},
                {"id": "b", "name": "b", "queue_name": "q", "data": {1, 2}, "depends_on": ["a"]},
            ]
        )
    with pytest.raises(ValidationError, match="attempts"):
        await flow.add_dag([{"id": "a", "name": "a", "queue_name": "q", "opts": {"attempts": 0}}])
    assert sum((await Queue("q", store=store).get_job_counts()).values()) == 0


async def test_add_dag_returns_jobs_by_id_with_their_first_dependent(store: MemoryStore) -> None:
    jobs = await FlowProducer(store=store).add_dag(
        [
            {"id": "shared", "name": "shared", "queue_name": "q", "opts": {"job_id": "s-1"}},
            {"id": "one", "name": "one", "queue_name": "q", "depends_on": ["shared"]},
            {"id": "two", "name": "two", "queue_name": "q", "depends_on": ["shared"]},
        ]
    )
    shared = jobs["shared"]
    assert shared.id == "s-1"
    assert (shared.parent_id, shared.parent_queue) == (jobs["one"].id, "q")
    stored = await Queue("q", store=store).get_job("s-1")
    assert stored is not None and stored.parent_id == jobs["one"].id
    assert [job.id for job in await shared.get_parents()] == [jobs["one"].id, jobs["two"].id]


async def test_deduplicated_leaves_are_refused_where_no_leaf_is_added(store: MemoryStore) -> None:
    """``opts.deduplication`` stays refused in ``Job.add_children`` and in a job
    scheduler's flow; nothing is written."""
    dedup = {"deduplication": {"id": "d"}}
    queue = Queue("dedup-refused", store=store)
    with pytest.raises(ValueError, match="deduplication"):
        await queue.upsert_job_scheduler(
            "f",
            every=60,
            flow={
                "name": "p",
                "queue_name": queue.name,
                "children": [{"name": "c", "queue_name": "leaves", "opts": dedup}],
            },
        )
    assert await queue.get_job_schedulers() == []
    refused: list[str] = []

    async def handle(job: Job) -> None:
        try:
            await job.add_children([{"name": "c", "queue_name": "leaves", "opts": dedup}])
        except ValueError as exc:
            refused.append(str(exc))

    parent = await queue.add("parent")
    async with Worker(queue.name, handle, store=store):
        await parent.wait_until_finished(timeout=5)
    assert len(refused) == 1 and "Job.add_children" in refused[0]
    assert sum((await Queue("leaves", store=store).get_job_counts()).values()) == 0


async def test_a_bulk_of_flows_with_a_deduplicated_leaf_keeps_existing_roots(
    store: MemoryStore,
) -> None:
    """Flows written as one DAG (for a deduplicated leaf) still return an existing root's
    flow as it is, and show the live job in the deduplicated leaf's place."""
    flow = FlowProducer(store=store)
    live = await Queue("leaves", store=store).add("c", None, {"deduplication": {"id": "d"}})
    existing = await flow.add(report_flow())
    leaf = {"name": "c", "queue_name": "leaves", "opts": {"deduplication": {"id": "d"}}}
    nodes = await flow.add_bulk(
        [report_flow(), {"name": "p", "queue_name": "reports", "children": [leaf]}]
    )
    assert nodes[0].job.id == existing.job.id
    assert [child.job.id for child in nodes[0].children] == [
        child.job.id for child in existing.children
    ]
    assert nodes[1].children[0].job.id == live.id
    assert nodes[1].children[0].job.data is None
    deps = await store.get_dependencies("reports", nodes[1].job.id)
    assert [dep.id for dep in deps] == [live.id]


async def test_a_dag_node_and_an_edge_to_its_holder_make_one_dependency(
    store: MemoryStore,
) -> None:
    queue = Queue("dag-dedup", store=store)
    live = await queue.add("shared", None, {"deduplication": {"id": "s"}})
    opts = {"deduplication": {"id": "s"}}
    jobs = await FlowProducer(store=store).add_dag(
        [
            {"id": "s", "name": "shared", "queue_name": queue.name, "opts": opts},
            {
                "id": "a",
                "name": "a",
                "queue_name": queue.name,
                "depends_on": ["s", f"{queue.name}/{live.id}"],
            },
        ]
    )
    assert jobs["s"].id == live.id
    deps = await store.get_dependencies(queue.name, jobs["a"].id)
    assert [(dep.id, dep.status) for dep in deps] == [(live.id, "pending")]
    assert [link.id for link in await store.get_parent_links(queue.name, live.id)] == [jobs["a"].id]
    with pytest.raises(ValueError, match="used twice"):
        await FlowProducer(store=store).add_dag(
            [
                {
                    "id": "x",
                    "name": "x",
                    "queue_name": queue.name,
                    "opts": {"deduplication": {"id": "t"}},
                },
                {
                    "id": "y",
                    "name": "y",
                    "queue_name": queue.name,
                    "opts": {"deduplication": {"id": "t"}},
                },
            ]
        )
    assert (await queue.get_job_counts())["waiting"] == 1
