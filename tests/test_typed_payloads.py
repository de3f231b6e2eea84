"""Typed payloads: pydantic models in, validated models out, types a checker can see."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor_core import (
    DataValidationError,
    FlowProducer,
    Job,
    JobFailedError,
    JobState,
    PayloadError,
    Queue,
    Worker,
)
from conveyor_stores import MemoryStore

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: int
    items: list[str]


class Receipt(BaseModel):
    order_id: int
    total: float


async def charge(job: Job[Order]) -> Receipt:
    assert isinstance(job.data, Order)
    return Receipt(order_id=job.data.order_id, total=9.5 * len(job.data.items))


async def test_a_model_goes_in_as_json_and_the_handler_gets_the_model() -> None:
    async with MemoryStore() as store:
        queue = Queue("orders", store=store)
        job = await queue.add("charge", Order(order_id=7, items=["pen", "ink"]))
        assert (await queue.get_job(job.id)).data == {"order_id": 7, "items": ["pen", "ink"]}  # type: ignore[union-attr]
        async with Worker("orders", charge, store=store):
            result = await job.wait_until_finished(timeout=10)
        assert result == {"order_id": 7, "total": 19.0}  # stored as JSON


async def test_data_that_does_not_fit_fails_at_once_naming_the_field() -> None:
    async with MemoryStore() as store:
        queue = Queue("orders", store=store)
        job = await queue.add(
            "charge", {"order_id": "seven", "items": ["pen"]}, opts={"attempts": 5}
        )
        async with Worker("orders", charge, store=store):
            with pytest.raises(JobFailedError) as info:
                await job.wait_until_finished(timeout=10)
        failed = await queue.get_job(job.id)
        assert failed is not None and failed.state is JobState.FAILED
        assert failed.attempts_made == 1, "no retry can make stored data fit"
        assert "order_id" in str(info.value) and "Order" in str(info.value)


async def test_children_values_as_models() -> None:
    seen: dict[str, Receipt] = {}

    async def report(job: Job) -> int:
        seen.update(await job.get_children_values(model=Receipt))
        return len(seen)

    async with MemoryStore() as store:
        node = await FlowProducer(store=store).add(
            {
                "name": "report",
                "queue_name": "reports",
                "children": [
                    {"name": "charge", "queue_name": "orders", "data": {"order_id": i, "items": []}}
                    for i in range(3)
                ],
            }
        )
        async with Worker("orders", charge, store=store), Worker("reports", report, store=store):
            assert await node.job.wait_until_finished(timeout=10) == 3
    assert sorted(receipt.order_id for receipt in seen.values()) == [0, 1, 2]
    assert all(isinstance(receipt, Receipt) for receipt in seen.values())


async def test_a_child_value_that_does_not_fit_the_model_names_the_child() -> None:
    async with MemoryStore() as store:
        node = await FlowProducer(store=store).add(
            {
                "name": "parent",
                "queue_name": "p",
                "children": [{"name": "c", "queue_name": "c", "opts": {"job_id": "odd-child"}}],
            }
        )

        async def child(job: Job) -> dict[str, str]:
            return {"unexpected": "shape"}

        errors: list[str] = []

        async def parent(job: Job) -> None:
            try:
                await job.get_children_values(model=Receipt)
            except DataValidationError as exc:
                errors.append(str(exc))

        async with Worker("c", child, store=store), Worker("p", parent, store=store):
            await node.job.wait_until_finished(timeout=10)
    assert len(errors) == 1 and "odd-child" in errors[0] and "order_id" in errors[0]


async def test_an_untyped_handler_gets_plain_json() -> None:
    async def plain(job: Job) -> str:
        return type(job.data).__name__

    async with MemoryStore() as store:
        job = await Queue("q", store=store).add("x", Order(order_id=1, items=[]))
        async with Worker("q", plain, store=store):
            assert await job.wait_until_finished(timeout=10) == "dict"


def test_an_unresolvable_job_annotation_is_a_clear_error() -> None:
    namespace: dict[str, object] = {}
    exec(  # a handler whose annotation names a class it cannot see
        "from __future__ import annotations\n"
        "from conveyor_core import Job\n"
        "async def handle(job: Job[Missing]) -> None: ...\n",
        namespace,
    )
    with pytest.raises(TypeError, match=r"Job\[Missing\]"):
        Worker("q", namespace["handle"], store=MemoryStore())  # type: ignore[arg-type]


async def test_a_non_json_value_is_still_refused() -> None:
    async with MemoryStore() as store:
        with pytest.raises(PayloadError, match="set"):
            await Queue("q", store=store).add("x", {"s": {1, 2}})


def test_mypy_sees_the_types(tmp_path: Path) -> None:
    from mypy import api

    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from conveyor_core import Job

            class Order(BaseModel):
                order_id: int

            class Receipt(BaseModel):
                total: float

            async def handle(job: Job[Order]) -> None:
                reveal_type(job.data)
                reveal_type(await job.get_children_values(model=Receipt))

            async def untyped(job: Job) -> None:
                reveal_type(job.data)
            """
        ),
        encoding="utf-8",
    )
    out, err, _ = api.run(
        [str(sample), "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache")]
    )
    assert 'Revealed type is "sample.Order"' in out, out + err
    assert re.search(
        r'Revealed type is "(builtins\.)?dict\[(builtins\.)?str, sample\.Receipt\]"', out
    ), out + err
    assert 'Revealed type is "Any"' in out, out + err
