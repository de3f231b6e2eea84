"""PostgresStore through the store protocol, against a real PostgreSQL server.

Each test gets its own schema, dropped afterwards from a separate connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")

from conveyor_core.errors import (  # noqa: E402
    DuplicateJobError,
    InvalidJobStateError,
    JobNotFoundError,
    PayloadError,
    StoreClosedError,
)
from conveyor_core.models import JobState, ParentPolicy  # noqa: E402
from conveyor_core.store import (  # noqa: E402
    STALLED_REASON,
    Completion,
    EventRecord,
    EventSubscription,
    Failure,
    NewJob,
    Release,
    StoreInterface,
)
from conveyor_stores.postgres import PostgresStore  # noqa: E402
from conveyor_stores.postgres.store import OFFLOAD_JOBS  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

W, D, WC = JobState.WAITING, JobState.DELAYED, JobState.WAITING_CHILDREN
NOW = 1_000_000.0


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def store(pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=4) as s:
        yield s
    await drop_schema(pg_dsn, pg_schema)


def job(
    job_id: str,
    queue: str = "q",
    state: JobState = W,
    *,
    parent: str | None = None,
    parent_queue: str = "q",
    policy: ParentPolicy = ParentPolicy.FAIL,
    **fields: Any,
) -> NewJob:
    return NewJob(
        id=job_id,
        queue=queue,
        name=fields.pop("name", "n"),
        data=fields.pop("data", "{}"),
        opts=fields.pop("opts", "{}"),
        state=state,
        parent_id=parent,
        parent_queue=parent_queue if parent else None,
        parent_policy=policy if parent else None,
        **fields,
    )


async def test_a_big_add_sent_as_one_batch_writes_exactly_what_a_small_add_writes(
    store: PostgresStore,
) -> None:
    """Hundreds of jobs go to the server as one JSON text encoded off the event loop; every
    field must arrive as the array form sends it."""
    size = OFFLOAD_JOBS + 30
    data = '{"text":"é \\u0000 \\"quoted\\" 𝄞","n":1.25}'
    parent = job("batch", "reports", WC, delay=0.1 + 0.2, keep_completed=2**40)
    children = [
        job(
            f"row-{i}",
            "rows",
            parent="batch",
            parent_queue="reports",
            policy=ParentPolicy.IGNORE,
            data=data,
            priority=i % 3,
            lifo=i % 2 == 1,
        )
        for i in range(size)
    ]
    assert await store.add_jobs([[parent, *children]], NOW) == [True]
    top = await store.get_job("reports", "batch")
    assert top is not None and top.state is WC
    assert top.delay == 0.1 + 0.2 and top.keep_completed == 2**40
    row = await store.get_job("rows", "row-5")
    assert row is not None and row.data == data and row.priority == 2 and row.lifo
    assert row.parent_policy is ParentPolicy.IGNORE
    assert len(await store.get_dependencies("reports", "batch")) == size
    assert (await store.get_counts("rows"))[W] == size
    clash = [[job(f"new-{i}", "rows") for i in range(size)] + [job("row-3", "rows")]]
    with pytest.raises(DuplicateJobError, match="row-3"):
        await store.add_jobs(clash, NOW)
    assert (await store.get_counts("rows"))[W] == size


async def take(
    store: PostgresStore, queue: str = "q", limit: int = 10, now: float = NOW
) -> list[str]:
    result = await store.take_jobs(queue, limit=limit, token="tok", lock_until=now + 30, now=now)
    return [j.id for j in result.jobs]


async def state_of(store: PostgresStore, job_id: str, queue: str = "q") -> JobState | None:
    record = await store.get_job(queue, job_id)
    return None if record is None else record.state


async def next_events(sub: EventSubscription, n: int) -> list[EventRecord]:
    out: list[EventRecord] = []
    for _ in range(n):
        out.append(await asyncio.wait_for(sub.__anext__(), 5))
    return out


# ---------------------------------------------------------------------- basics


async def test_is_a_store_and_rejects_bad_schema_names(pg_dsn: str) -> None:
    assert isinstance(PostgresStore(pg_dsn), StoreInterface)
    for bad in ("1abc", "a-b", 'x"; DROP TABLE t; --', "", "a" * 64, "x\n", "abc\n"):
        with pytest.raises(ValueError, match="invalid schema name"):
            PostgresStore(pg_dsn, schema=bad)


async def test_calls_before_connect_raise_closed(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    with pytest.raises(StoreClosedError):
        await store.get_job("q", "x")
    await store.close()


async def test_add_take_complete_round_trip(store: PostgresStore) -> None:
    assert await store.add_jobs([[job("a", data='{"x": [1, 2]}')]], NOW) == [True]
    record = await store.get_job("q", "a")
    assert record is not None and record.state is W and record.created_at == NOW
    assert record.data == '{"x": [1, 2]}'
    result = await store.take_jobs("q", limit=5, token="t1", lock_until=NOW + 30, now=NOW + 1)
    [taken] = result.jobs
    assert (taken.id, taken.state, taken.lock_token, taken.processed_at) == (
        "a",
        JobState.ACTIVE,
        "t1",
        NOW + 1,
    )
    assert await store.complete_jobs("q", [Completion("a", "wrong", "1")], NOW + 2) == [False]
    assert await store.complete_jobs("q", [Completion("a", "t1", '"ok"')], NOW + 2) == [True]
    done = await store.get_job("q", "a")
    assert done is not None
    assert (done.state, done.return_value, done.attempts_made, done.lock_token) == (
        JobState.COMPLETED,
        '"ok"',
        1,
        None,
    )
    assert await store.complete_jobs("q", [Completion("a", "t1", '"ok"')], NOW + 3) == [False]


async def test_names_with_quotes_and_unicode_are_data(store: PostgresStore) -> None:
    queue = 'q\'; DROP TABLE jobs; --{}:"ü"'
    job_id = "id'\"$1{x}:é"
    assert await store.add_jobs([[job(job_id, queue, name="n'\"")]], NOW) == [True]
    assert await take(store, queue) == [job_id]
    assert await store.list_queues() == [queue]


async def test_text_postgres_cannot_hold_is_refused_and_never_found(store: PostgresStore) -> None:
    for bad in (job("nul\x00id"), job("a", "q\x00"), job("b", data='"\ud800"')):
        with pytest.raises(PayloadError):
            await store.add_jobs([[bad]], NOW)
    assert await store.get_job("q", "nul\x00id") is None
    assert await store.get_counts("q\x00") == dict.fromkeys(JobState, 0)
    assert await store.list_queues() == []


async def test_existing_first_id_skips_group_other_duplicate_raises(store: PostgresStore) -> None:
    await store.add_jobs([[job("a")]], NOW)
    assert await store.add_jobs([[job("a")], [job("b")]], NOW) == [False, True]
    with pytest.raises(DuplicateJobError):
        await store.add_jobs([[job("p", state=WC), job("b", parent="p")]], NOW)
    assert await store.get_job("q", "p") is None
    with pytest.raises(DuplicateJobError):
        await store.add_jobs([[job("c")], [job("c")]], NOW)
    assert await store.get_job("q", "c") is None
    with pytest.raises(ValueError):
        await store.add_jobs([[]], NOW)


async def test_priority_fifo_lifo_and_retry_goes_to_back(store: PostgresStore) -> None:
    await store.add_jobs(
        [
            [job("a")],
            [job("b")],
            [job("c", lifo=True)],
            [job("urgent", priority=0)],
            [job("late", priority=5)],
        ],
        NOW,
    )
    listed = await store.get_jobs("q", [W], 0, None)
    assert [j.id for j in listed] == ["c", "a", "b", "urgent", "late"]
    assert await take(store, limit=1) == ["c"]
    assert await store.fail_jobs("q", [Failure("c", "tok", "boom", ["tb"], NOW)], NOW) == [True]
    retried = await store.get_job("q", "c")
    assert retried is not None and retried.attempts_made == 1 and retried.stacktrace == ["tb"]
    assert retried.failed_reason == "boom"
    # A lifo job re-entering waiting goes in front of its priority again.
    assert [j.id for j in await store.get_jobs("q", [W], 0, None)] == [
        "c",
        "a",
        "b",
        "urgent",
        "late",
    ]
    assert await take(store, limit=1) == ["c"]
    await store.fail_jobs("q", [Failure("c", "tok", "boom", [], NOW)], NOW)
    await store.change_priority("q", "c", 0, False)
    assert [j.id for j in await store.get_jobs("q", [W], 0, 3)] == ["a", "b", "urgent", "c"]
    await store.change_priority("q", "late", 0, True)
    assert await take(store, limit=2) == ["late", "a"]


async def test_delayed_jobs_promote_on_take_and_report_next_run(store: PostgresStore) -> None:
    await store.add_jobs([[job("d1", state=D, delay=10)], [job("d2", state=D, delay=20)]], NOW)
    d1 = await store.get_job("q", "d1")
    assert d1 is not None and d1.run_at == NOW + 10
    result = await store.take_jobs("q", limit=5, token="t", lock_until=NOW + 30, now=NOW + 1)
    assert result.jobs == [] and result.next_run_at == NOW + 10
    result = await store.take_jobs("q", limit=5, token="t", lock_until=NOW + 40, now=NOW + 10)
    assert [j.id for j in result.jobs] == ["d1"] and result.next_run_at == NOW + 20
    await store.change_delay("q", "d2", NOW + 100)
    with pytest.raises(InvalidJobStateError):
        await store.change_delay("q", "d1", NOW)
    with pytest.raises(JobNotFoundError):
        await store.promote_job("q", "nope", NOW)
    await store.promote_job("q", "d2", NOW)
    assert await state_of(store, "d2") is W
    await store.add_jobs([[job("d3", state=D, delay=5)], [job("d4", state=D, delay=1)]], NOW)
    assert await store.promote_jobs("q", NOW) == 2
    assert [j.id for j in await store.get_jobs("q", [W], 0, None)] == ["d2", "d4", "d3"]


async def test_rate_limit_fixed_window(store: PostgresStore) -> None:
    await store.add_jobs([[job(str(i))] for i in range(5)], NOW)
    limit = (2, 10.0)
    r = await store.take_jobs(
        "q", limit=5, token="t", lock_until=NOW + 30, now=NOW, rate_limit=limit
    )
    assert len(r.jobs) == 2
    r = await store.take_jobs(
        "q", limit=5, token="t", lock_until=NOW + 30, now=NOW + 1, rate_limit=limit
    )
    assert r.jobs == [] and r.rate_limited_until == NOW + 10
    r = await store.take_jobs(
        "q", limit=5, token="t", lock_until=NOW + 30, now=NOW + 10, rate_limit=limit
    )
    assert len(r.jobs) == 2


async def test_locks_extend_release_and_stall(store: PostgresStore) -> None:
    await store.add_jobs([[job("a")], [job("b")], [job("c")]], NOW)
    assert await take(store) == ["a", "b", "c"]
    assert await store.extend_locks("q", [("a", "tok"), ("b", "bad")], NOW + 100) == ["a"]
    assert await store.release_jobs("q", [Release("c", "tok"), Release("c", "tok")], NOW) == [
        True,
        False,
    ]
    outcomes = await store.recover_stalled("q", NOW + 50, max_stalled_count=1)
    assert [(o.id, o.failed) for o in outcomes] == [("b", False)]
    assert await store.complete_jobs("q", [Completion("b", "tok", "1")], NOW) == [False]
    again = await take(store, now=NOW + 50)
    assert set(again) == {"b", "c"}
    outcomes = await store.recover_stalled("q", NOW + 200, max_stalled_count=1)
    assert {(o.id, o.failed) for o in outcomes} == {("a", False), ("b", True), ("c", False)}
    b = await store.get_job("q", "b")
    assert b is not None and b.state is JobState.FAILED and b.failed_reason == STALLED_REASON
    assert b.stalled_count == 2


async def test_concurrent_takes_never_share_a_job(store: PostgresStore) -> None:
    await store.add_jobs([[job(str(i))] for i in range(200)], NOW)

    async def taker(n: int) -> list[str]:
        got: list[str] = []
        while True:
            ids = await take(store, limit=3)
            if not ids:
                return got
            got.extend(ids)

    results = await asyncio.gather(*(taker(i) for i in range(6)))
    every = [i for ids in results for i in ids]
    assert len(every) == 200 and len(set(every)) == 200


# ---------------------------------------------------------------------- flows


def flow(policy: ParentPolicy = ParentPolicy.FAIL, n: int = 3, delay: float = 0.0) -> list[NewJob]:
    return [job("p", state=WC, delay=delay)] + [
        job(f"c{i}", "cq", parent="p", policy=policy) for i in range(n)
    ]


async def finish_children(store: PostgresStore, outcomes: dict[str, str | None]) -> None:
    """Take every child of ``cq`` and complete (value) or finally fail (None) each."""
    await take(store, "cq", limit=100)
    for child, value in outcomes.items():
        if value is None:
            await store.fail_jobs("cq", [Failure(child, "tok", f"{child} broke")], NOW)
        else:
            await store.complete_jobs("cq", [Completion(child, "tok", value)], NOW)


async def test_parent_released_when_last_child_completes(store: PostgresStore) -> None:
    assert await store.add_jobs([flow()], NOW) == [True]
    deps = await store.get_dependencies("q", "p")
    assert [(d.id, d.status) for d in deps] == [
        ("c0", "pending"),
        ("c1", "pending"),
        ("c2", "pending"),
    ]
    await finish_children(store, {"c0": "1", "c1": "2"})
    assert await state_of(store, "p") is WC
    await finish_children(store, {"c2": "3"})
    assert await state_of(store, "p") is W
    deps = await store.get_dependencies("q", "p")
    assert [(d.status, d.value) for d in deps] == [
        ("processed", "1"),
        ("processed", "2"),
        ("processed", "3"),
    ]


async def test_parent_with_delay_is_released_to_delayed(store: PostgresStore) -> None:
    await store.add_jobs([flow(n=1, delay=5)], NOW)
    await finish_children(store, {"c0": "1"})
    parent = await store.get_job("q", "p")
    assert parent is not None and parent.state is D and parent.run_at == NOW + 5


async def test_fail_policy_fails_parent_and_unstarted_siblings(store: PostgresStore) -> None:
    group = [job("root", state=WC), job("p", state=WC, parent="root")]
    group += [job(f"c{i}", "cq", parent="p") for i in range(3)]
    group += [job("gc", "cq", parent="c2", parent_queue="cq")]
    group[4] = job("c2", "cq", WC, parent="p")
    await store.add_jobs([group], NOW)
    assert await take(store, "cq", limit=1) == ["c0"]
    assert await take(store, "cq", limit=1) == ["c1"]
    await store.fail_jobs("cq", [Failure("c0", "tok", "boom")], NOW)
    p = await store.get_job("q", "p")
    assert (
        p is not None and p.state is JobState.FAILED and p.failed_reason == "child c0 failed: boom"
    )
    root = await store.get_job("q", "root")
    assert root is not None and root.failed_reason == "child p failed: child c0 failed: boom"
    for unstarted in ("c2", "gc"):
        record = await store.get_job("cq", unstarted)
        assert record is not None and record.failed_reason == "parent failed"
    assert await state_of(store, "c1", "cq") is JobState.ACTIVE
    deps = {d.id: (d.status, d.reason) for d in await store.get_dependencies("q", "p")}
    assert deps == {
        "c0": ("failed", "boom"),
        "c1": ("pending", None),
        "c2": ("failed", "parent failed"),
    }
    assert await store.complete_jobs("cq", [Completion("c1", "tok", "7")], NOW) == [True]
    deps = {d.id: (d.status, d.value) for d in await store.get_dependencies("q", "p")}
    assert deps["c1"] == ("processed", "7")
    assert await state_of(store, "p") is JobState.FAILED


@pytest.mark.parametrize(
    ("policy", "parent_state", "dep_status"),
    [
        (ParentPolicy.IGNORE, W, "ignored"),
        (ParentPolicy.DROP, W, None),
        (ParentPolicy.CONTINUE, W, "failed"),
    ],
)
async def test_resolving_policies(
    store: PostgresStore, policy: ParentPolicy, parent_state: JobState, dep_status: str | None
) -> None:
    await store.add_jobs([flow(policy, n=2)], NOW)
    await finish_children(
        store, {"c0": None} if policy is ParentPolicy.CONTINUE else {"c0": None, "c1": "1"}
    )
    assert await state_of(store, "p") is parent_state
    deps = {d.id: d for d in await store.get_dependencies("q", "p")}
    if dep_status is None:
        assert "c0" not in deps
    else:
        assert deps["c0"].status == dep_status and deps["c0"].reason == "c0 broke"


async def test_remove_policy_removes_parent_and_unfinished_children(store: PostgresStore) -> None:
    group = [job("root", state=WC), job("p", state=WC, parent="root")]
    group += [job(f"c{i}", "cq", parent="p", policy=ParentPolicy.REMOVE) for i in range(3)]
    await store.add_jobs([group], NOW)
    await take(store, "cq", limit=2)
    await store.complete_jobs("cq", [Completion("c1", "tok", "1")], NOW)
    await store.fail_jobs("cq", [Failure("c0", "tok", "boom")], NOW)
    assert await store.get_job("q", "p") is None
    assert await store.get_job("cq", "c2") is None
    assert await state_of(store, "c1", "cq") is JobState.COMPLETED
    assert await state_of(store, "c0", "cq") is JobState.FAILED
    assert await state_of(store, "root") is W


async def test_retry_of_failed_child_puts_dependency_back(store: PostgresStore) -> None:
    await store.add_jobs([flow(ParentPolicy.DROP, n=2)], NOW)
    await finish_children(store, {"c0": None, "c1": "1"})
    assert await state_of(store, "p") is W
    await store.retry_job("cq", "c0", NOW)
    assert await state_of(store, "p") is WC
    c0 = await store.get_job("cq", "c0")
    assert c0 is not None and c0.state is W and c0.attempts_made == 0 and c0.failed_reason is None
    deps = {d.id: d.status for d in await store.get_dependencies("q", "p")}
    assert deps == {"c0": "pending", "c1": "processed"}
    await finish_children(store, {"c0": "2"})
    assert await state_of(store, "p") is W
    with pytest.raises(InvalidJobStateError):
        await store.retry_job("q", "p", NOW)
    with pytest.raises(InvalidJobStateError):
        await store.retry_job("cq", "c1", NOW)  # completed: only retry_jobs re-runs those


async def test_removing_a_child_resolves_it(store: PostgresStore) -> None:
    await store.add_jobs([flow(n=2)], NOW)
    assert await take(store, "cq", limit=1) == ["c0"]
    await store.complete_jobs("cq", [Completion("c0", "tok", "1")], NOW)
    assert await store.remove_job("cq", "c1") is True
    assert await store.remove_job("cq", "c1") is False
    assert await state_of(store, "p") is W
    assert [d.id for d in await store.get_dependencies("q", "p")] == ["c0"]


async def test_deep_chain_fails_to_the_root(store: PostgresStore) -> None:
    depth = 300
    group = [job("n0", state=WC)]
    group += [job(f"n{i}", state=WC, parent=f"n{i - 1}") for i in range(1, depth)]
    group[-1] = job(f"n{depth - 1}", parent=f"n{depth - 2}")
    await store.add_jobs([group], NOW)
    assert await take(store) == [f"n{depth - 1}"]
    await store.fail_jobs("q", [Failure(f"n{depth - 1}", "tok", "deep")], NOW)
    root = await store.get_job("q", "n0")
    assert root is not None and root.state is JobState.FAILED
    assert root.failed_reason is not None and root.failed_reason.endswith(": deep")


async def test_big_flow_is_added_and_runs(store: PostgresStore) -> None:
    group = [job("p", state=WC)] + [job(f"c{i}", "cq", parent="p") for i in range(500)]
    assert await store.add_jobs([group], NOW) == [True]
    counts = await store.get_counts("cq")
    assert counts[W] == 500
    while ids := await take(store, "cq", limit=50):
        await store.complete_jobs("cq", [Completion(i, "tok", json.dumps(i)) for i in ids], NOW)
    assert await state_of(store, "p") is W
    deps = await store.get_dependencies("q", "p")
    assert [d.value for d in deps] == [json.dumps(f"c{i}") for i in range(500)]


# ---------------------------------------------------------------------- retention


async def test_retention_keeps_children_values(store: PostgresStore) -> None:
    group = [job("p", state=WC)] + [
        job(f"c{i}", "cq", parent="p", keep_completed=0) for i in range(2)
    ]
    await store.add_jobs([group], NOW)
    await finish_children(store, {"c0": "10", "c1": "11"})
    assert await store.get_job("cq", "c0") is None
    assert [d.value for d in await store.get_dependencies("q", "p")] == ["10", "11"]
    await store.add_jobs([[job(f"k{i}", "kq", keep_completed=2)] for i in range(4)], NOW)
    for i in range(4):
        assert await take(store, "kq", limit=1) == [f"k{i}"]
        await store.complete_jobs("kq", [Completion(f"k{i}", "tok", "0")], NOW + i)
    done = await store.get_jobs("kq", [JobState.COMPLETED], 0, None)
    assert [j.id for j in done] == ["k3", "k2"]
    # In one batch, each job's retention applies as of its own completion.
    await store.add_jobs([[job("b1", "bq", keep_completed=1)], [job("b2", "bq")]], NOW)
    assert await take(store, "bq") == ["b1", "b2"]
    await store.complete_jobs(
        "bq", [Completion("b1", "tok", "1"), Completion("b2", "tok", "2")], NOW
    )
    done = await store.get_jobs("bq", [JobState.COMPLETED], 0, None)
    assert [j.id for j in done] == ["b2", "b1"]


# ---------------------------------------------------------------------- job changes


async def test_progress_logs_data(store: PostgresStore) -> None:
    await store.add_jobs([[job("a")]], NOW)
    await store.update_progress("q", "a", "50")
    assert await store.add_log("q", "a", "one") == 1
    assert await store.add_log("q", "a", "two") == 2
    assert await store.add_log("q", "a", "three") == 3
    assert await store.get_logs("q", "a") == ["one", "two", "three"]
    assert await store.get_logs("q", "a", 1, 1) == ["two"]
    assert await store.get_logs("q", "a", -2) == ["two", "three"]
    await store.update_data("q", "a", '{"new": true}')
    record = await store.get_job("q", "a")
    assert record is not None and record.progress == "50" and record.data == '{"new": true}'
    for call in (
        store.update_progress("q", "x", "1"),
        store.add_log("q", "x", "l"),
        store.get_logs("q", "x"),
        store.update_data("q", "x", "1"),
        store.change_priority("q", "x", 1, False),
        store.get_dependencies("q", "x"),
        store.retry_job("q", "x", NOW),
    ):
        with pytest.raises(JobNotFoundError):
            await call


async def test_remove_active_is_refused(store: PostgresStore) -> None:
    await store.add_jobs([[job("a")]], NOW)
    await take(store)
    with pytest.raises(InvalidJobStateError):
        await store.remove_job("q", "a")


# ---------------------------------------------------------------------- queues


async def test_pause_resume_drain_clean_obliterate(store: PostgresStore) -> None:
    await store.add_jobs([[job("a")], [job("b")], [job("d", state=D, delay=50)]], NOW)
    await store.pause("q")
    assert await store.is_paused("q") is True
    assert await take(store) == []
    await store.resume("q")
    assert await take(store, limit=1) == ["a"]
    assert await store.drain("q", include_delayed=False, now=NOW) == 1
    assert await store.drain("q", include_delayed=True, now=NOW) == 1
    await store.complete_jobs("q", [Completion("a", "tok", "1")], NOW)
    with pytest.raises(InvalidJobStateError):
        await store.clean("q", JobState.ACTIVE, NOW, None)
    assert await store.clean("q", JobState.COMPLETED, NOW - 1, None) == []
    assert await store.clean("q", JobState.COMPLETED, NOW, None) == ["a"]
    await store.add_jobs([[job("e")]], NOW)
    await take(store)
    with pytest.raises(InvalidJobStateError):
        await store.obliterate("q", force=False)
    await store.pause("q")
    await store.obliterate("q", force=True)
    assert await store.list_queues() == []
    assert await store.is_paused("q") is False


async def test_counts_and_listing_orders(store: PostgresStore) -> None:
    await store.add_jobs(
        [[job("w1")], [job("w2")], [job("d1", state=D, delay=9)], [job("d2", state=D, delay=3)]],
        NOW,
    )
    await store.add_jobs([[job("a1")], [job("a2")]], NOW)
    counts = await store.get_counts("q")
    assert counts == {s: 0 for s in JobState} | {W: 4, D: 2}
    listed = await store.get_jobs("q", [D, W], 1, 3)
    assert [j.id for j in listed] == ["d1", "w1", "w2"]
    await store.pause("idle")
    assert await store.list_queues() == ["idle", "q"]


# ---------------------------------------------------------------------- events and waking


async def test_events_reach_another_store_object(
    store: PostgresStore, pg_dsn: str, pg_schema: str
) -> None:
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as other:
        sub = await other.subscribe("q")
        await store.add_jobs([[job("a", name="hello")]], NOW)
        await take(store)
        await store.complete_jobs("q", [Completion("a", "tok", '{"r": 1}')], NOW)
        events = await next_events(sub, 4)
        assert [(e.type, e.job_id) for e in events] == [
            ("added", "a"),
            ("waiting", "a"),
            ("active", "a"),
            ("completed", "a"),
        ]
        assert events[0].data == {"name": "hello"}
        assert events[3].data == {"return_value": '{"r": 1}'} and events[3].timestamp == NOW
        await sub.aclose()
        assert [e async for e in sub] == []


async def test_big_batches_of_events_are_split_and_huge_ones_truncated(
    store: PostgresStore,
) -> None:
    sub = await store.subscribe("q")
    await store.add_jobs([[job(f"j{i:03}", name="x" * 300)] for i in range(100)], NOW)
    events = await next_events(sub, 200)
    assert [e.job_id for e in events[::2]] == [f"j{i:03}" for i in range(100)]
    await store.add_jobs([[job("big")]], NOW)
    assert len(await take(store, limit=200)) == 101
    await store.complete_jobs("q", [Completion("big", "tok", json.dumps("y" * 20000))], NOW)
    events = await next_events(sub, 104)
    assert events[-1].type == "completed" and events[-1].data == {"truncated": True}
    await sub.aclose()


async def test_wait_for_work_wakes_on_add_and_resume_and_times_out(store: PostgresStore) -> None:
    start = time.monotonic()
    await store.wait_for_work("q", 0.05)
    assert time.monotonic() - start >= 0.04

    async def add_soon(action: Callable[[], Any]) -> None:
        await asyncio.sleep(0.05)
        await action()

    for action in (
        lambda: store.add_jobs([[job("a")]], NOW),
        lambda: store.resume("q"),
    ):
        task = asyncio.create_task(add_soon(action))
        await asyncio.wait_for(store.wait_for_work("q", 30), 10)
        await task


async def test_close_ends_subscriptions_and_is_idempotent(pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        await store.connect()
        await store.connect()
        sub = await store.subscribe("q")
        waiter = asyncio.create_task(store.wait_for_work("q", 30))
        await asyncio.sleep(0.01)
        await store.close()
        await store.close()
        assert [e async for e in sub] == []
        await asyncio.wait_for(waiter, 5)
    finally:
        await store.close()
        await drop_schema(pg_dsn, pg_schema)
