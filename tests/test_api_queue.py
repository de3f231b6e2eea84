"""Queue and Job as a user sees them, on the memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, timedelta

import pytest
from pydantic import ValidationError

from conveyor_core import (
    Backoff,
    ConveyorError,
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    JobOptions,
    JobState,
    JobTimeoutError,
    PayloadError,
    Queue,
)
from conveyor_stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

EMPTY_COUNTS = {state.value: 0 for state in JobState}


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as store:
        yield store


async def counts(queue: Queue) -> dict[str, int]:
    return {k: v for k, v in (await queue.get_job_counts()).items() if v}


async def test_add_and_get_job(store: MemoryStore) -> None:
    queue = Queue("reports", store=store)
    job = await queue.add("fetch-sales", {"source": "sales", "rows": [1, 2]})
    assert job.name == "fetch-sales"
    assert job.queue_name == "reports"
    assert job.data == {"source": "sales", "rows": [1, 2]}
    assert job.state is JobState.WAITING
    assert job.created_at is not None and job.created_at.tzinfo is UTC

    again = await queue.get_job(job.id)
    assert again is not None
    assert again.data == job.data
    assert again.opts == JobOptions()
    assert again.attempts_made == 0
    assert await queue.get_job("no-such-id") is None
    assert await queue.get_job_counts() == {**EMPTY_COUNTS, "waiting": 1}


async def test_initial_states_from_options(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    delayed = await queue.add("later", None, {"delay": 60})
    also = await queue.add("later", None, JobOptions(delay=timedelta(minutes=1)))
    assert delayed.state is JobState.DELAYED
    assert also.state is JobState.DELAYED
    assert delayed.run_at is not None and delayed.created_at is not None
    assert await counts(queue) == {"delayed": 2}
    assert await queue.promote_jobs() == 2
    assert await counts(queue) == {"waiting": 2}


async def test_add_with_existing_id_returns_existing_job(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    first = await queue.add("a", {"v": 1}, {"job_id": "order-42"})
    second = await queue.add("b", {"v": 2}, {"job_id": "order-42"})
    assert first.id == second.id == "order-42"
    assert second.name == "a"
    assert second.data == {"v": 1}
    assert await counts(queue) == {"waiting": 1}


async def test_non_json_data_names_job_and_type_and_writes_nothing(store: MemoryStore) -> None:
    queue = Queue("reports", store=store)
    with pytest.raises(PayloadError) as info:
        await queue.add("fetch", {"tags": {"a", "b"}})
    message = str(info.value)
    assert "'fetch'" in message and "'reports'" in message and "set" in message
    with pytest.raises(PayloadError, match="bytes"):
        await queue.add("fetch", b"raw")
    with pytest.raises(PayloadError, match="key"):
        await queue.add("fetch", {1: "int keys would come back as strings"})
    with pytest.raises(PayloadError):
        await queue.add("fetch", float("nan"))
    assert await counts(queue) == {}


async def test_invalid_options_raise_validation_error_and_write_nothing(
    store: MemoryStore,
) -> None:
    queue = Queue("q", store=store)
    bad_options: list[dict[str, object]] = [
        {"attempts": 0},
        {"delay": -1},
        {"fail_parent_on_child_failure": "explode"},
        {"fail_parent_on_failure": True, "ignore_dependency_on_failure": True},
        {"no_such_option": 1},
    ]
    for opts in bad_options:
        with pytest.raises(ValidationError):
            await queue.add("job", {}, opts)
    with pytest.raises(ValueError, match="job name"):
        await queue.add("", {})
    with pytest.raises(ValueError, match="queue name"):
        Queue("", store=store)
    assert await counts(queue) == {}


async def test_rules_across_options_name_the_fields_they_refuse(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    flags = {"continue_parent_on_failure": True, "remove_dependency_on_failure": True}
    with pytest.raises(ValidationError, match="continue_parent_on_failure, remove_dependency"):
        await queue.add("job", {}, flags)
    with pytest.raises(ValidationError, match="replace=True needs a delay"):
        await queue.add("job", {}, {"deduplication": {"id": "d", "replace": True}})
    with pytest.raises(ValidationError, match="extend=True needs a ttl"):
        await queue.add("job", {}, {"deduplication": {"id": "d", "extend": True}})
    with pytest.raises(ValidationError, match="deduplication id 'a\\\\x00b' must not contain NUL"):
        await queue.add("job", {}, {"deduplication": {"id": "a\x00b"}})
    # A delay refused itself is the one error: the replace rule does not guess one.
    with pytest.raises(ValidationError, match="1 validation error") as info:
        await queue.add("job", {}, {"delay": -1, "deduplication": {"id": "d", "replace": True}})
    assert [error["loc"] for error in info.value.errors()] == [("delay",)]
    assert await counts(queue) == {}
    debounced = await queue.add(
        "job", {}, {"delay": 5, "deduplication": {"id": "d", "replace": True}}
    )
    assert debounced.opts.deduplication is not None and debounced.opts.deduplication.replace


async def test_default_job_options_merge_under_own_options(store: MemoryStore) -> None:
    queue = Queue(
        "q",
        store=store,
        default_job_options={"attempts": 5, "backoff": {"type": "fixed", "delay": 2}},
    )
    plain = await queue.add("plain")
    own = await queue.add("own", None, {"attempts": 2, "priority": 3})
    assert plain.opts.attempts == 5
    assert plain.opts.backoff == Backoff(type="fixed", delay=2)
    assert own.opts.attempts == 2
    assert own.opts.priority == 3
    assert own.opts.backoff == Backoff(type="fixed", delay=2)
    stored = await queue.get_job(own.id)
    assert stored is not None and stored.opts == own.opts


async def test_add_bulk_is_all_or_none(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    jobs = await queue.add_bulk(
        [{"name": "a", "data": 1}, {"name": "b", "data": 2, "opts": {"priority": 1}}]
    )
    assert [job.data for job in jobs] == [1, 2]
    assert await counts(queue) == {"waiting": 2}

    with pytest.raises(PayloadError, match="'bad'"):
        await queue.add_bulk([{"name": "ok", "data": 1}, {"name": "bad", "data": object()}])
    with pytest.raises(ValidationError):
        await queue.add_bulk([{"name": "ok"}, {"name": "bad", "opts": {"attempts": 0}}])
    with pytest.raises(DuplicateJobError, match="twice"):
        await queue.add_bulk(
            [{"name": "x", "opts": {"job_id": "same"}}, {"name": "y", "opts": {"job_id": "same"}}]
        )
    assert await counts(queue) == {"waiting": 2}


async def test_get_jobs_by_state_in_order(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    low = await queue.add("low", None, {"priority": 5})
    high = await queue.add("high", None, {"priority": 1})
    later = await queue.add("later", None, {"delay": 30})
    waiting = await queue.get_jobs("waiting")
    assert [job.id for job in waiting] == [high.id, low.id]
    both = await queue.get_jobs([JobState.WAITING, "delayed"])
    assert [job.id for job in both] == [high.id, low.id, later.id]
    assert [job.id for job in await queue.get_jobs("waiting", 1, 1)] == [low.id]
    # -1 lists to the last job, as None does; other negative indexes are refused.
    assert [job.id for job in await queue.get_jobs("waiting", 0, -1)] == [high.id, low.id]
    assert [job.id for job in await queue.get_jobs("waiting", 1, -1)] == [low.id]
    with pytest.raises(ValueError, match="end must be None, -1"):
        await queue.get_jobs("waiting", 0, -2)
    with pytest.raises(ValueError, match="start must be an int of at least 0"):
        await queue.get_jobs("waiting", -1)


async def test_pause_resume_drain_and_obliterate(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    assert not await queue.is_paused()
    await queue.pause()
    assert await queue.is_paused()
    await queue.resume()
    assert not await queue.is_paused()

    await queue.add_bulk([{"name": "a"}, {"name": "b"}])
    await queue.add("later", None, {"delay": 60})
    assert await queue.drain() == 2
    assert await counts(queue) == {"delayed": 1}
    await queue.obliterate()
    assert await counts(queue) == {}


async def test_job_progress_logs_and_data(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("a", {"step": 0})
    await job.update_progress(40)
    await job.update_progress({"done": 4, "of": 10})
    assert await job.log("fetched 10 rows") == 1
    assert await job.log({"rows": 10}) == 2
    await job.update_data({"step": 1})
    with pytest.raises(PayloadError):
        await job.update_data({"when": object()})
    with pytest.raises(TypeError):
        await job.update_progress("half")

    await job.refresh()
    assert job.progress == {"done": 4, "of": 10}
    assert job.data == {"step": 1}
    assert await job.get_logs() == ["fetched 10 rows", {"rows": 10}]
    assert await job.get_state() is JobState.WAITING


async def test_job_priority_delay_promote_and_remove(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    first = await queue.add("first")
    second = await queue.add("second")
    await second.change_priority(0, lifo=True)
    assert [job.id for job in await queue.get_jobs("waiting")] == [second.id, first.id]

    delayed = await queue.add("delayed", None, {"delay": 600})
    await delayed.change_delay(1200)
    with pytest.raises(InvalidJobStateError):
        await first.change_delay(5)
    await delayed.promote()
    assert await delayed.get_state() is JobState.WAITING

    await first.remove()
    assert await queue.get_job(first.id) is None
    with pytest.raises(JobNotFoundError):
        await first.remove()


async def test_wait_until_finished_times_out_naming_the_job(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("never-run")
    with pytest.raises(JobTimeoutError) as caught:
        await job.wait_until_finished(timeout=0.05)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, ConveyorError)
    message = str(caught.value)
    assert job.id in message and "'q'" in message and "0.05 seconds" in message
    assert (caught.value.job_id, caught.value.queue) == (job.id, "q")
