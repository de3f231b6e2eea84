"""Bad input is refused before anything is written; odd names work end to end."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor_core import (
    ConveyorError,
    Job,
    JobState,
    Queue,
    QueueEvent,
    QueueEvents,
    Worker,
)
from conveyor_core.errors import DuplicateJobError
from conveyor_core.models import MAX_JOB_ID_BYTES, MAX_JOB_NAME_BYTES, MAX_QUEUE_NAME_BYTES

from ._support import Harness, nodes_by_name

COMPLETED = JobState.COMPLETED

ODD_NAMES = [
    "quote'single",
    'quote"double',
    "colon:separated:name",
    "{braces}{0}%s",
    "ünïcödé-队列-🚀",
    "semi;colon -- drop table jobs;",
    "back\\slash and space",
]

INVALID_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"attempts": 0}, "attempts"),
    ({"delay": -1}, "delay"),
    ({"priority": -1}, "priority"),
    ({"fail_parent_on_child_failure": "explode"}, "fail_parent_on_child_failure"),
    ({"backoff": {"type": "linear", "delay": 1}}, "backoff"),
    ({"unknown_option": True}, "unknown_option"),
    (
        {"fail_parent_on_failure": True, "ignore_dependency_on_failure": True},
        "fail_parent_on_failure",
    ),
]


def four_byte_text(seed: str, size: int) -> str:
    """``size`` bytes of UTF-8 made of 4-byte characters (CJK Extension B), varied so
    that a store cannot shrink them by compression, and unique to ``seed``."""
    assert size % 4 == 0
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x20000, 0x2A6D0)) for _ in range(size // 4))


def assert_names_limit(error: BaseException, what: str, size: int, limit: int) -> None:
    message = str(error)
    assert what in message, message
    assert f"{size} bytes" in message and f"{limit} bytes" in message, message


class InputTests:
    """The store only ever sees valid, JSON-only jobs; names are data."""

    async def test_non_json_data_is_refused_and_nothing_written(self, env: Harness) -> None:
        q = env.name("input")
        queue = env.queue(q)
        for bad in ({"when": object()}, {1, 2}, {"nan": float("nan")}, {3: "int key"}):
            with pytest.raises(ConveyorError) as caught:
                await queue.add("bad-data", bad)
            assert "bad-data" in str(caught.value), "the error names the job"
        with pytest.raises(ConveyorError) as caught:
            await queue.add_bulk(
                [
                    {"name": "fine", "data": {"ok": True}},
                    {"name": "broken", "data": {"when": b"bytes"}},
                ]
            )
        assert "bytes" in str(caught.value), "the error names the offending type"
        assert await env.total(q) == 0

    @pytest.mark.parametrize(("opts", "field"), INVALID_OPTIONS)
    async def test_invalid_options_are_refused_naming_the_field(
        self, env: Harness, opts: dict[str, Any], field: str
    ) -> None:
        q = env.name("input")
        with pytest.raises(ValidationError) as caught:
            await env.queue(q).add("job", None, opts)
        assert field in str(caught.value)
        with pytest.raises(ValidationError):
            await env.queue(q).add_bulk(
                [{"name": "fine", "data": None}, {"name": "job", "data": None, "opts": opts}]
            )
        assert await env.total(q) == 0

    async def test_existing_child_id_in_a_flow_is_named_in_the_error(self, env: Harness) -> None:
        parent_q, child_q = env.name("dup-parent"), env.name("dup-child")
        await env.queue(child_q).add("earlier", None, {"job_id": "taken-child-id"})
        with pytest.raises(DuplicateJobError) as caught:
            await env.flow.add(
                {
                    "name": "root",
                    "queue_name": parent_q,
                    "opts": {"job_id": "fresh-root-id"},
                    "children": [
                        {"name": "ok", "queue_name": child_q, "opts": {"job_id": "fresh-id"}},
                        {
                            "name": "dup",
                            "queue_name": child_q,
                            "opts": {"job_id": "taken-child-id"},
                        },
                    ],
                }
            )
        message = str(caught.value)
        assert "taken-child-id" in message, message
        # The queue by its name, quoted as the store quotes names.
        assert re.search(rf"queue .{re.escape(child_q)}.", message), message
        assert await env.total(parent_q) == 0
        assert await env.total(child_q) == 1

    async def test_empty_names_are_refused(self, env: Harness) -> None:
        q = env.name("input")
        with pytest.raises((ValueError, ConveyorError)):
            await env.queue(q).add("", None)
        with pytest.raises((ValueError, ConveyorError)):
            Queue("", store=env.store)
        with pytest.raises((ValueError, ConveyorError)):
            await env.flow.add(
                {"name": "root", "queue_name": q, "children": [{"name": "", "queue_name": q}]}
            )
        with pytest.raises((ValueError, ConveyorError)):
            await env.flow.add({"name": "root", "queue_name": ""})
        assert await env.total(q) == 0

    @pytest.mark.parametrize("odd", ODD_NAMES)
    async def test_odd_names_work_end_to_end(self, env: Harness, odd: str) -> None:
        parent_q, child_q = env.name(odd), env.name(f"{odd}-child")
        seen: list[QueueEvent] = []
        async with QueueEvents(child_q, store=env.event_store) as listener:
            listener.on("completed", seen.append)
            node = await env.flow.add(
                {
                    "name": odd,
                    "queue_name": parent_q,
                    "data": {odd: odd},
                    "opts": {"job_id": f"{odd}-parent"},
                    "children": [
                        {"name": f"{odd}-child", "queue_name": child_q, "opts": {"job_id": odd}},
                    ],
                }
            )
            standalone = await env.queue(child_q).add(odd, {"k": odd}, {"job_id": f"{odd}!"})

            async def handle(job: Job) -> dict[str, Any]:
                return {"name": job.name, "values": await job.get_children_values()}

            async with env.workers({parent_q: handle, child_q: handle}):
                parent = await env.wait_state(node.job, COMPLETED)
                await env.wait_state(standalone, COMPLETED)

                async def child_event_seen() -> bool:
                    return any(event.job_id == odd for event in seen)

                await env.wait_for(child_event_seen, "the child's completed event")
        jobs = nodes_by_name(node)
        assert parent.id == f"{odd}-parent" and parent.data == {odd: odd}
        assert parent.return_value == {
            "name": odd,
            "values": {odd: {"name": f"{odd}-child", "values": {}}},
        }
        child = await env.job(child_q, odd)
        assert child is not None and child.parent_id == parent.id
        assert child.parent_queue == parent_q and child.name == f"{odd}-child"
        assert jobs[f"{odd}-child"].id == odd
        completed = await env.queue(child_q).get_jobs(COMPLETED)
        assert sorted(job.id for job in completed) == sorted([f"{odd}!", odd])
        stored = await env.reread(standalone)
        assert stored is not None and stored.data == {"k": odd} and stored.name == odd
        assert parent_q in await env.store.list_queues()
        await standalone.remove()
        assert await env.job(child_q, f"{odd}!") is None
        await env.queue(parent_q).obliterate()
        assert await env.total(parent_q) == 0

    async def test_names_and_ids_at_their_byte_limits_work_end_to_end(self, env: Harness) -> None:
        parent_q = four_byte_text(f"{env.suffix}-parent-queue", MAX_QUEUE_NAME_BYTES)
        child_q = four_byte_text(f"{env.suffix}-child-queue", MAX_QUEUE_NAME_BYTES)
        parent_id = four_byte_text(f"{env.suffix}-parent-id", MAX_JOB_ID_BYTES)
        child_id = four_byte_text(f"{env.suffix}-child-id", MAX_JOB_ID_BYTES)
        single_id = four_byte_text(f"{env.suffix}-single-id", MAX_JOB_ID_BYTES)
        name = four_byte_text(f"{env.suffix}-name", MAX_JOB_NAME_BYTES)
        assert len(parent_q.encode()) == MAX_QUEUE_NAME_BYTES
        assert len(name.encode()) == MAX_JOB_NAME_BYTES

        node = await env.flow.add(
            {
                "name": name,
                "queue_name": parent_q,
                "data": {name: parent_q},
                "opts": {"job_id": parent_id},
                "children": [{"name": name, "queue_name": child_q, "opts": {"job_id": child_id}}],
            }
        )
        single = await env.queue(child_q).add(name, {"id": single_id}, {"job_id": single_id})

        async def handle(job: Job) -> dict[str, Any]:
            await job.log(job.name)
            return {"id": job.id, "values": await job.get_children_values()}

        async with env.workers({parent_q: handle, child_q: handle}):
            parent = await env.wait_state(node.job, COMPLETED)
            await env.wait_state(single, COMPLETED)
        assert (parent.id, parent.queue_name, parent.name) == (parent_id, parent_q, name)
        assert parent.data == {name: parent_q}
        assert parent.return_value == {
            "id": parent_id,
            "values": {child_id: {"id": child_id, "values": {}}},
        }
        child = await env.job(child_q, child_id)
        assert child is not None and (child.name, child.queue_name) == (name, child_q)
        assert (child.parent_id, child.parent_queue) == (parent_id, parent_q)
        assert await child.get_logs() == [name]
        dependencies = await parent.get_dependencies()
        assert list(dependencies.processed) == [child_id]
        stored = await env.job(child_q, single_id)
        assert stored is not None and stored.return_value == {"id": single_id, "values": {}}
        assert {parent_q, child_q} <= set(await env.store.list_queues())
        await env.queue(parent_q).obliterate()
        await env.queue(child_q).obliterate()
        assert await env.total(parent_q) == 0 and await env.total(child_q) == 0

    async def test_names_and_ids_one_byte_over_are_refused_and_nothing_written(
        self, env: Harness
    ) -> None:
        q = env.name("limits")
        queue = env.queue(q)
        over_queue = four_byte_text(f"{env.suffix}-queue", MAX_QUEUE_NAME_BYTES) + "x"
        over_id = four_byte_text(f"{env.suffix}-id", MAX_JOB_ID_BYTES) + "x"
        over_name = four_byte_text(f"{env.suffix}-name", MAX_JOB_NAME_BYTES) + "x"
        queue_size, name_size = MAX_QUEUE_NAME_BYTES + 1, MAX_JOB_NAME_BYTES + 1

        for make in (
            lambda: Queue(over_queue, store=env.store),
            lambda: Worker(over_queue, lambda job: None, store=env.store),
            lambda: QueueEvents(over_queue, store=env.store),
        ):
            with pytest.raises(ValueError) as caught:
                make()
            assert_names_limit(caught.value, "queue name", queue_size, MAX_QUEUE_NAME_BYTES)
        with pytest.raises(ValueError) as caught:
            await queue.add(over_name, None)
        assert_names_limit(caught.value, "job name", name_size, MAX_JOB_NAME_BYTES)
        with pytest.raises(ValidationError) as caught_id:
            await queue.add("job", None, {"job_id": over_id})
        assert_names_limit(caught_id.value, "job_id", MAX_JOB_ID_BYTES + 1, MAX_JOB_ID_BYTES)
        with pytest.raises(ValidationError):
            await queue.add_bulk(
                [{"name": "fine", "data": None}, {"name": "job", "opts": {"job_id": over_id}}]
            )
        with pytest.raises(ValueError) as caught:
            await queue.add_bulk([{"name": "fine", "data": None}, {"name": over_name}])
        assert_names_limit(caught.value, "job name", name_size, MAX_JOB_NAME_BYTES)

        child_variants: list[tuple[dict[str, Any], str]] = [
            ({"name": "child", "queue_name": over_queue}, "queue name"),
            ({"name": over_name, "queue_name": q}, "job name"),
            ({"name": "child", "queue_name": q, "opts": {"job_id": over_id}}, "job_id"),
        ]
        for child, what in child_variants:
            tree = {"name": "root", "queue_name": q, "children": [{"name": "ok", "queue_name": q}]}
            for nested in (child, {"name": "mid", "queue_name": q, "children": [child]}):
                with pytest.raises(ValueError) as caught:
                    await env.flow.add({**tree, "children": [*tree["children"], nested]})
                assert what in str(caught.value)
        with pytest.raises(ValueError):
            await env.flow.add_bulk(
                [{"name": "fine", "queue_name": q}, {"name": over_name, "queue_name": q}]
            )
        assert await env.total(q) == 0
        assert over_queue not in await env.store.list_queues()
