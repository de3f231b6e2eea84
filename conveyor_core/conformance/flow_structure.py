"""Flow shape: nesting, deep chains, cross-queue children, and atomic adds."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from conveyor_core import ConveyorError, Job, JobState

from ._support import Harness, Runs, nodes_by_name

COMPLETED = JobState.COMPLETED
WAITING = JobState.WAITING
WAITING_CHILDREN = JobState.WAITING_CHILDREN

CHAIN_LENGTH = 1000


def _chain(queue: str, length: int) -> dict[str, Any]:
    """A flow of ``length`` levels: ``level-{length-1}`` on top, ``level-0`` at the bottom."""
    tree: dict[str, Any] = {"name": "level-0", "queue_name": queue, "data": {"level": 0}}
    for level in range(1, length):
        tree = {
            "name": f"level-{level}",
            "queue_name": queue,
            "data": {"level": level},
            "children": [tree],
        }
    return tree


async def _counts_one_below(job: Job) -> int:
    """A chain link's value: one more than its child's (the bottom returns 1)."""
    values = await job.get_children_values()
    return 1 + sum(int(value) for value in values.values())


class FlowStructureTests:
    """Flows of every shape are written whole and resolve level by level."""

    async def test_each_level_waits_only_for_its_direct_children(self, env: Harness) -> None:
        q = env.name("levels")
        node = await env.flow.add(
            {
                "name": "top",
                "queue_name": q,
                "children": [
                    {
                        "name": "middle",
                        "queue_name": q,
                        "children": [{"name": "bottom", "queue_name": q}],
                    },
                    {"name": "side", "queue_name": q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert jobs["top"].state is WAITING_CHILDREN
        assert jobs["middle"].state is WAITING_CHILDREN
        assert jobs["bottom"].state is WAITING and jobs["side"].state is WAITING
        assert jobs["bottom"].parent_id == jobs["middle"].id
        assert jobs["middle"].parent_id == jobs["top"].id and jobs["middle"].parent_queue == q
        runs = Runs()
        async with env.workers({q: runs.handler()}, concurrency=1):
            await env.wait_state(jobs["top"], COMPLETED)
        assert runs.order.index("bottom") < runs.order.index("middle") < runs.order.index("top")
        assert runs.order.index("side") < runs.order.index("top")
        assert sorted(runs.order) == ["bottom", "middle", "side", "top"]

    async def test_a_thousand_level_chain_is_added_whole_and_runs(self, env: Harness) -> None:
        q = env.name("chain")
        node = await env.flow.add(_chain(q, CHAIN_LENGTH))
        counts = await env.counts(q)
        assert counts["waiting"] == 1
        assert counts["waiting-children"] == CHAIN_LENGTH - 1
        assert sum(counts.values()) == CHAIN_LENGTH

        read = await env.flow.get_flow(node.job.id, q, depth=CHAIN_LENGTH)
        assert read is not None
        names: list[str] = []
        current: Any = read
        while current is not None:
            names.append(current.job.name)
            assert len(current.children or []) <= 1
            current = current.children[0] if current.children else None
        assert names == [f"level-{level}" for level in reversed(range(CHAIN_LENGTH))]

        async with env.workers({q: _counts_one_below}, concurrency=1):
            top = await env.wait_state(node.job, COMPLETED, timeout=max(env.timeout, 60.0))
        assert top.return_value == CHAIN_LENGTH
        assert (await env.counts(q))["completed"] == CHAIN_LENGTH

    async def test_get_flow_reads_the_tree_back(self, env: Harness) -> None:
        top_q, low_q = env.name("top"), env.name("low")
        node = await env.flow.add(
            {
                "name": "root",
                "queue_name": top_q,
                "data": {"r": 1},
                "children": [
                    {
                        "name": "a",
                        "queue_name": low_q,
                        "children": [{"name": "a1", "queue_name": low_q}],
                    },
                    {"name": "b", "queue_name": top_q},
                ],
            }
        )
        read = await env.flow.get_flow(node.job.id, top_q)
        assert read is not None
        assert read.job.name == "root" and read.job.data == {"r": 1}
        assert read.job.state is WAITING_CHILDREN
        assert [child.job.name for child in read.children] == ["a", "b"]
        assert [child.job.queue_name for child in read.children] == [low_q, top_q]
        assert [grand.job.name for grand in read.children[0].children] == ["a1"]
        assert await env.flow.get_flow("no-such-job", top_q) is None

    async def test_flow_whose_middle_node_already_exists_writes_nothing(self, env: Harness) -> None:
        top_q, mid_q, low_q = env.name("top"), env.name("middle"), env.name("low")
        existing = await env.queue(mid_q).add("existing", {"keep": True}, {"job_id": "taken"})
        tree = {
            "name": "root",
            "queue_name": top_q,
            "children": [
                {"name": "first", "queue_name": low_q},
                {
                    "name": "middle",
                    "queue_name": mid_q,
                    "opts": {"job_id": "taken"},
                    "children": [{"name": "leaf", "queue_name": low_q}],
                },
                {"name": "last", "queue_name": top_q},
            ],
        }
        with pytest.raises(ConveyorError):
            await env.flow.add(tree)
        assert await env.total(top_q) == 0
        assert await env.total(low_q) == 0
        assert await env.total(mid_q) == 1
        kept = await env.job(mid_q, existing.id)
        assert kept is not None
        assert (kept.name, kept.data, kept.state, kept.parent_id) == (
            "existing",
            {"keep": True},
            WAITING,
            None,
        )

    async def test_add_bulk_of_flows_is_all_or_nothing(self, env: Harness) -> None:
        first_q, second_q = env.name("first"), env.name("second")
        await env.queue(second_q).add("existing", None, {"job_id": "taken"})
        good = {
            "name": "good-root",
            "queue_name": first_q,
            "children": [{"name": "good-child", "queue_name": second_q}],
        }
        bad = {
            "name": "bad-root",
            "queue_name": first_q,
            "children": [
                {"name": "fine", "queue_name": first_q},
                {"name": "clash", "queue_name": second_q, "opts": {"job_id": "taken"}},
            ],
        }
        with pytest.raises(ConveyorError):
            await env.flow.add_bulk([good, bad])
        assert await env.total(first_q) == 0
        assert await env.total(second_q) == 1

        nodes = await env.flow.add_bulk([good, {**bad, "children": bad["children"][:1]}])
        assert [n.job.name for n in nodes] == ["good-root", "bad-root"]
        assert await env.total(first_q) == 3
        assert await env.total(second_q) == 2

    async def test_flow_with_non_json_data_in_a_middle_node_writes_nothing(
        self, env: Harness
    ) -> None:
        top_q, low_q = env.name("top"), env.name("low")
        tree = {
            "name": "root",
            "queue_name": top_q,
            "children": [
                {"name": "fine", "queue_name": low_q, "data": {"ok": True}},
                {
                    "name": "broken",
                    "queue_name": low_q,
                    "data": {"when": object()},
                    "children": [{"name": "leaf", "queue_name": low_q}],
                },
            ],
        }
        with pytest.raises(ConveyorError) as caught:
            await env.flow.add(tree)
        assert "object" in str(caught.value)
        assert await env.total(top_q) == 0
        assert await env.total(low_q) == 0

    async def test_flow_with_invalid_options_in_a_middle_node_writes_nothing(
        self, env: Harness
    ) -> None:
        top_q, low_q = env.name("top"), env.name("low")
        tree = {
            "name": "root",
            "queue_name": top_q,
            "children": [
                {"name": "fine", "queue_name": low_q},
                {"name": "broken", "queue_name": low_q, "opts": {"attempts": 0}},
            ],
        }
        with pytest.raises(ValidationError) as caught:
            await env.flow.add(tree)
        assert "attempts" in str(caught.value)
        assert await env.total(top_q) == 0
        assert await env.total(low_q) == 0

    async def test_duplicate_ids_within_one_flow_write_nothing(self, env: Harness) -> None:
        top_q, low_q = env.name("top"), env.name("low")
        tree = {
            "name": "root",
            "queue_name": top_q,
            "children": [
                {"name": "one", "queue_name": low_q, "opts": {"job_id": "twin"}},
                {"name": "two", "queue_name": low_q, "opts": {"job_id": "twin"}},
            ],
        }
        with pytest.raises(ConveyorError) as caught:
            await env.flow.add(tree)
        assert "twin" in str(caught.value)
        assert await env.total(top_q) == 0
        assert await env.total(low_q) == 0

    async def test_queues_options_give_flow_nodes_their_queue_defaults(self, env: Harness) -> None:
        top_q, low_q = env.name("top"), env.name("low")
        node = await env.flow.add(
            {
                "name": "root",
                "queue_name": top_q,
                "children": [
                    {"name": "defaulted", "queue_name": low_q},
                    {"name": "own", "queue_name": low_q, "opts": {"attempts": 2}},
                ],
            },
            queues_options={low_q: {"attempts": 4}},
        )
        jobs = nodes_by_name(node)
        assert jobs["defaulted"].opts.attempts == 4
        assert jobs["own"].opts.attempts == 2
        assert jobs["root"].opts.attempts == 1
        stored = await env.reread(jobs["defaulted"])
        assert stored is not None and stored.opts.attempts == 4
