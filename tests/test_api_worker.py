"""Worker behaviour a user notices, on the memory store."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import pytest

from conveyor_core import (
    Job,
    JobFailedError,
    JobState,
    LockLostError,
    Queue,
    StoreClosedError,
    UnrecoverableError,
    Worker,
)
from conveyor_stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

FAST = {"drain_delay": 0.05}


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as store:
        yield store


async def test_worker_processes_jobs_and_stores_return_values(store: MemoryStore) -> None:
    queue = Queue("math", store=store)
    jobs = await queue.add_bulk([{"name": "square", "data": {"x": x}} for x in range(25)])

    async def square(job: Job) -> dict[str, int]:
        return {"y": job.data["x"] ** 2}

    completed: list[str] = []
    worker = Worker("math", square, store=store, concurrency=4, **FAST)
    worker.on("completed", lambda job, value: completed.append(job.id))
    async with worker:
        values = [await job.wait_until_finished(timeout=5) for job in jobs]
    assert values == [{"y": x**2} for x in range(25)]
    assert sorted(completed) == sorted(job.id for job in jobs)
    stored = await queue.get_job(jobs[3].id)
    assert stored is not None
    assert stored.state is JobState.COMPLETED
    assert stored.return_value == {"y": 9}
    assert stored.attempts_made == 1
    assert stored.finished_at is not None and stored.processed_at is not None
    assert (await queue.get_job_counts())["completed"] == 25


async def test_idle_worker_picks_up_new_job_promptly(store: MemoryStore) -> None:
    queue = Queue("q", store=store)

    async def echo(job: Job) -> Any:
        return job.data

    # A long drain delay: only a wake-up can make this finish in time.
    async with Worker("q", echo, store=store, drain_delay=30):
        await anyio.sleep(0.01)
        job = await queue.add("echo", "hello")
        assert await job.wait_until_finished(timeout=5) == "hello"


async def test_retries_with_backoff_then_succeeds(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add(
        "flaky", None, {"attempts": 3, "backoff": {"type": "exponential", "delay": 0.01}}
    )
    failures: list[str] = []

    async def flaky(job: Job) -> str:
        if job.attempts_made < 2:
            raise RuntimeError(f"boom {job.attempts_made}")
        return "ok"

    worker = Worker("q", flaky, store=store, **FAST)
    worker.on("failed", lambda job, error: failures.append(str(error)))
    async with worker:
        assert await job.wait_until_finished(timeout=5) == "ok"
    await job.refresh()
    assert job.attempts_made == 3
    assert failures == ["boom 0", "boom 1"]


async def test_final_failure_after_attempts(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("doomed", None, {"attempts": 2, "backoff": 0.01})

    async def doomed(job: Job) -> None:
        raise ValueError("bad input")

    async with Worker("q", doomed, store=store, **FAST):
        with pytest.raises(JobFailedError, match="bad input"):
            await job.wait_until_finished(timeout=5)
    await job.refresh()
    assert job.state is JobState.FAILED
    assert job.attempts_made == 2
    assert job.failed_reason == "bad input"
    assert any("ValueError" in line for line in job.stacktrace)


async def test_named_backoff_strategy_and_unknown_name(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    custom = await queue.add("custom", None, {"attempts": 2, "backoff": "tiny"})
    unknown = await queue.add("unknown", None, {"attempts": 5, "backoff": "nope"})
    seen: list[tuple[int, str]] = []

    def tiny(attempts_made: int, error: BaseException, job: Job) -> float:
        seen.append((attempts_made, str(error)))
        return 0.01

    async def fail_once(job: Job) -> str:
        if job.attempts_made == 0:
            raise RuntimeError("first try")
        return "second try"

    async with Worker("q", fail_once, store=store, backoff_strategies={"tiny": tiny}, **FAST):
        assert await custom.wait_until_finished(timeout=5) == "second try"
        with pytest.raises(JobFailedError, match="unknown backoff strategy 'nope'"):
            await unknown.wait_until_finished(timeout=5)
    assert seen == [(1, "first try")]
    await unknown.refresh()
    assert unknown.attempts_made == 1


async def test_unrecoverable_error_fails_at_once(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("charge", None, {"attempts": 5})

    async def charge(job: Job) -> None:
        raise UnrecoverableError("card declined")

    async with Worker("q", charge, store=store, **FAST):
        with pytest.raises(JobFailedError, match="card declined"):
            await job.wait_until_finished(timeout=5)
    await job.refresh()
    assert job.attempts_made == 1


async def test_timeout_fails_the_attempt(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("slow", None, {"timeout": 0.05})

    async def slow(job: Job) -> None:
        await anyio.sleep(30)

    async with Worker("q", slow, store=store, **FAST):
        with pytest.raises(JobFailedError, match=r"timed out after 0\.05s"):
            await job.wait_until_finished(timeout=5)


async def test_non_json_return_value_fails_the_attempt(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("sets")
    errors: list[BaseException] = []

    async def returns_set(job: Job) -> set[int]:
        return {1, 2}

    worker = Worker("q", returns_set, store=store, **FAST)
    worker.on("error", errors.append)
    async with worker:
        with pytest.raises(JobFailedError) as info:
            await job.wait_until_finished(timeout=5)
    assert "return value" in str(info.value) and "set" in str(info.value)
    assert errors == []


async def test_sync_handler_runs_in_a_thread(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("blocking", {"n": 3})
    main_thread = threading.get_ident()

    def blocking(job: Job) -> dict[str, Any]:
        time.sleep(0.01)
        return {"n": job.data["n"], "other_thread": threading.get_ident() != main_thread}

    async with Worker("q", blocking, store=store, **FAST):
        assert await job.wait_until_finished(timeout=5) == {"n": 3, "other_thread": True}


async def test_close_lets_active_handlers_finish(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    jobs = await queue.add_bulk([{"name": "n", "data": i} for i in range(3)])
    started = anyio.Event()
    events: list[str] = []

    async def slowish(job: Job) -> int:
        started.set()
        await anyio.sleep(0.05)
        return int(job.data)

    worker = Worker("q", slowish, store=store, concurrency=3, **FAST)
    worker.on("closed", lambda: events.append("closed"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await started.wait()
        await worker.close()
        await worker.close()  # idempotent
    assert events == ["closed"]
    for job in jobs:
        await job.refresh()
        assert job.state is JobState.COMPLETED


async def test_close_with_timeout_returns_jobs_to_waiting(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("hang")
    started = anyio.Event()

    async def hang(job: Job) -> None:
        started.set()
        await anyio.sleep_forever()

    worker = Worker("q", hang, store=store, **FAST)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await started.wait()
        assert (await queue.get_job_counts())["active"] == 1
        await worker.close(timeout=0.05)
    await job.refresh()
    assert job.state is JobState.WAITING
    assert job.attempts_made == 0


async def test_completion_after_lost_lock_is_refused(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("slow")
    started, release = anyio.Event(), anyio.Event()
    errors: list[BaseException] = []
    refused = anyio.Event()

    async def slow(job: Job) -> str:
        started.set()
        await release.wait()
        return "too late"

    def on_error(error: BaseException) -> None:
        errors.append(error)
        refused.set()

    worker = Worker("q", slow, store=store, **FAST)
    worker.on("error", on_error)
    async with worker:
        await started.wait()
        # The lock expires (as if the worker hung) and another process recovers the job.
        await queue.pause()
        outcomes = await store.recover_stalled("q", time.time() + 3600, 1)
        assert [outcome.id for outcome in outcomes] == [job.id]
        release.set()
        with anyio.fail_after(5):
            await refused.wait()
    assert isinstance(errors[0], LockLostError)
    await job.refresh()
    assert job.state is JobState.WAITING
    assert job.return_value is None


async def test_progress_and_logs_from_a_handler(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("report")
    progress: list[Any] = []

    async def report(job: Job) -> None:
        await job.log("starting")
        await job.update_progress(50)
        await job.update_progress({"stage": "done"})

    worker = Worker("q", report, store=store, **FAST)
    worker.on("progress", lambda job, value: progress.append(value))
    async with worker:
        await job.wait_until_finished(timeout=5)
    assert progress == [50, {"stage": "done"}]
    await job.refresh()
    assert job.progress == {"stage": "done"}
    assert await job.get_logs() == ["starting"]


async def test_callback_errors_do_not_stop_the_worker(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    jobs = await queue.add_bulk([{"name": "a"}, {"name": "b"}])
    errors: list[BaseException] = []

    def broken(job: Job) -> None:
        raise RuntimeError("callback bug")

    async def ok(job: Job) -> str:
        return "ok"

    worker = Worker("q", ok, store=store, **FAST)
    worker.on("active", broken)
    worker.on("error", errors.append)
    async with worker:
        for job in jobs:
            assert await job.wait_until_finished(timeout=5) == "ok"
    assert [str(error) for error in errors] == ["callback bug", "callback bug"]


async def test_stalled_job_is_recovered_at_start(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("orphan")
    # A worker that died: it took the job and its lock ran out.
    now = time.time()
    taken = await store.take_jobs("q", limit=1, token="dead", lock_until=now - 1, now=now)
    assert [record.id for record in taken.jobs] == [job.id]
    stalled: list[tuple[str, bool]] = []

    async def work(job: Job) -> str:
        return "recovered"

    worker = Worker("q", work, store=store, **FAST)
    worker.on("stalled", lambda job_id, failed: stalled.append((job_id, failed)))
    async with worker:
        assert await job.wait_until_finished(timeout=5) == "recovered"
    assert stalled == [(job.id, False)]


async def test_rate_limited_worker_still_runs_everything(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    jobs = await queue.add_bulk([{"name": "n", "data": i} for i in range(4)])

    async def echo(job: Job) -> Any:
        return job.data

    limiter = {"max": 2, "duration": 0.05}
    async with Worker("q", echo, store=store, limiter=limiter, **FAST):
        assert [await job.wait_until_finished(timeout=5) for job in jobs] == [0, 1, 2, 3]


async def test_sync_handler_reports_progress_through_the_event_loop(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    job = await queue.add("blocking")

    def blocking(job: Job) -> str:
        anyio.from_thread.run(job.update_progress, 75)
        return "done"

    async with Worker("q", blocking, store=store, **FAST):
        assert await job.wait_until_finished(timeout=5) == "done"
    await job.refresh()
    assert job.progress == 75


async def test_failed_jobs_can_be_retried_and_cleaned(store: MemoryStore) -> None:
    queue = Queue("q", store=store)
    jobs = await queue.add_bulk([{"name": "n", "data": i} for i in range(3)])
    allowed = False

    async def picky(job: Job) -> int:
        if not allowed:
            raise RuntimeError("not yet")
        return int(job.data)

    async with Worker("q", picky, store=store, **FAST):
        for job in jobs:
            with pytest.raises(JobFailedError):
                await job.wait_until_finished(timeout=5)
        allowed = True
        assert await queue.retry_jobs() == 3
        assert [await job.wait_until_finished(timeout=5) for job in jobs] == [0, 1, 2]
    assert sorted(await queue.clean(0)) == sorted(job.id for job in jobs)
    assert sum((await queue.get_job_counts()).values()) == 0


class FlakyStore(MemoryStore):
    """A memory store whose first call recording completions (``complete_jobs`` or
    ``complete_and_take``) fails as a lost connection would, changing nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.failures_left = 1

    def _flake(self) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("connection reset")

    async def complete_jobs(self, queue: str, completions: Any, now: float) -> list[bool]:
        self._flake()
        return await super().complete_jobs(queue, completions, now)

    async def complete_and_take(self, *args: Any, **kwargs: Any) -> Any:
        self._flake()
        return await super().complete_and_take(*args, **kwargs)


async def test_completion_is_sent_again_after_a_transient_store_error() -> None:
    async with FlakyStore() as store:
        queue = Queue("q", store=store)
        job = await queue.add("a", 21)
        errors: list[BaseException] = []

        async def double(job: Job) -> int:
            return int(job.data) * 2

        worker = Worker("q", double, store=store, **FAST)
        worker.on("error", errors.append)
        async with worker:
            assert await job.wait_until_finished(timeout=5) == 42
        assert [type(error) for error in errors] == [ConnectionError]


async def test_exception_in_async_with_block_comes_out_as_itself(store: MemoryStore) -> None:
    queue = Queue("plain-errors", store=store)
    job = await queue.add("work", None)

    async def handle(job: Job) -> str:
        return "done"

    with pytest.raises(KeyError) as caught:
        async with Worker("plain-errors", handle, store=store, **FAST):
            await job.wait_until_finished(timeout=5)
            raise KeyError("missing")
    assert caught.value.args == ("missing",)
    # The worker closed gracefully on the way out: the job it ran is recorded.
    assert (await queue.get_job_counts())["completed"] == 1


async def test_worker_failure_inside_async_with_comes_out_as_itself() -> None:
    store = MemoryStore()
    await store.connect()
    with anyio.fail_after(10), pytest.raises(StoreClosedError):
        async with Worker("orphaned", lambda job: None, store=store, **FAST):
            await store.close()
            await anyio.sleep(30)  # the worker's failure ends the block


class _CountsCombinedTakes(MemoryStore):
    """A memory store that counts the jobs handed out by COMPLETE AND TAKE."""

    combined = 0

    async def complete_and_take(self, *args: Any, **kwargs: Any) -> Any:
        applied, taken = await super().complete_and_take(*args, **kwargs)
        self.combined += len(taken.jobs)
        return applied, taken


async def test_a_worker_at_the_global_concurrency_records_and_takes_in_one_call() -> None:
    async with _CountsCombinedTakes() as store:
        queue = Queue("held", store=store)
        await queue.set_global_concurrency(3)
        await queue.add_bulk([{"name": "n", "data": i} for i in range(30)])
        running = most = 0
        all_done = anyio.Event()

        async def handle(job: Job) -> int:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await anyio.sleep(0.002)
            running -= 1
            return int(job.data)

        worker = Worker("held", handle, store=store, concurrency=5, **FAST)
        finished: list[str] = []

        def note(job: Job, value: Any) -> None:
            finished.append(job.id)
            if len(finished) == 30:
                all_done.set()

        worker.on("completed", note)
        async with worker:
            with anyio.fail_after(10):
                await all_done.wait()
        assert most == 3, "the queue's limit holds with takes made by the finisher"
        assert store.combined > 0, "finished jobs were recorded and new ones taken in one call"
        assert (await queue.get_job_counts())["active"] == 0


async def test_a_worker_records_its_finished_jobs_and_takes_more_in_one_call() -> None:
    async with _CountsCombinedTakes() as store:
        queue = Queue("plain", store=store)
        jobs = await queue.add_bulk([{"name": "n", "data": i} for i in range(40)])

        async def handle(job: Job) -> int:
            await anyio.sleep(0.001)
            return int(job.data)

        async with Worker("plain", handle, store=store, concurrency=4, **FAST):
            with anyio.fail_after(10):
                results = [await job.wait_until_finished(timeout=10) for job in jobs]
        assert results == list(range(40))
        assert store.combined > 0, "finished jobs were recorded and new ones taken in one call"
        assert (await queue.get_job_counts())["completed"] == 40
