"""GROUPS and TAKE BY LANES on ``PostgresStore``: lanes served round-robin (the queue's
own lane included), per-group concurrency across store objects, per-group rate windows,
group counts, the lanes' waiting counters and obliterate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

asyncpg = pytest.importorskip("asyncpg")

from conveyor_core.models import JobState, ParentPolicy  # noqa: E402
from conveyor_core.store import (  # noqa: E402
    STALLED_REASON,
    Completion,
    DagEdge,
    DeduplicationKey,
    GroupLimits,
    NewJob,
)
from conveyor_stores.postgres import PostgresStore  # noqa: E402
from conveyor_stores.postgres import schema as sql_schema  # noqa: E402
from conveyor_stores.postgres.store import channel_for  # noqa: E402

pytestmark = pytest.mark.anyio

NOW = 1_000.0
Q = "q"


def job(job_id: str, group: str | None = None, **kw: Any) -> NewJob:
    kw.setdefault("state", JobState.WAITING)
    return NewJob(job_id, Q, "n", "{}", "{}", group_id=group, **kw)


@pytest.fixture
async def store(pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresStore]:
    try:
        async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=4) as store:
            yield store
    finally:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        finally:
            await conn.close()


async def take_ids(store: PostgresStore, limit: int, now: float = NOW) -> list[str]:
    taken = await store.take_jobs(Q, limit=limit, token="t", lock_until=now + 60, now=now)
    return [j.id for j in taken.jobs]


async def lane_counters_match(pg_dsn: str, schema: str) -> None:
    """Every lane's waiting counter equals its group's waiting jobs."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        wrong = await conn.fetch(
            "SELECT l.queue, l.group_id, l.waiting, count(j.id) AS n "
            f'FROM "{schema}".group_lanes l '
            f'LEFT JOIN "{schema}".jobs j ON j.queue = l.queue AND j.group_id = l.group_id '
            "AND j.state = 'waiting' GROUP BY l.queue, l.group_id, l.waiting "
            "HAVING l.waiting <> count(j.id)"
        )
        missing = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".jobs j WHERE j.group_id IS NOT NULL '
            "AND j.state = 'waiting' AND NOT EXISTS (SELECT 1 FROM "
            f'"{schema}".group_lanes l WHERE l.queue = j.queue AND l.group_id = j.group_id)'
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in wrong] == []
    assert missing == 0


async def test_lanes_round_robin_with_the_queues_own_lane(store: PostgresStore) -> None:
    jobs = [job("a1", "a"), job("a2", "a"), job("a3", "a"), job("b1", "b")]
    jobs += [job("c1", "c"), job("c2", "c"), job("o1"), job("o2")]
    await store.add_jobs([[j] for j in jobs], NOW)
    taken = await store.take_jobs(Q, limit=10, token="t", lock_until=NOW + 60, now=NOW)
    assert [j.id for j in taken.jobs] == ["o1", "a1", "b1", "c1", "o2", "a2", "c2", "a3"]
    assert [j.group_id for j in taken.jobs] == [None, "a", "b", "c", None, "a", "c", "a"]
    assert all(j.state is JobState.ACTIVE and j.lock_token == "t" for j in taken.jobs)


async def test_lanes_remember_who_was_served_between_takes(
    store: PostgresStore, pg_dsn: str
) -> None:
    # Uneven backlogs, one job per take: each take moves to the next lane.
    jobs = [job(f"a{i}", "a") for i in range(5)] + [job(f"b{i}", "b") for i in range(2)]
    jobs += [job("o0"), job(f"c{0}", "c")]
    await store.add_jobs([jobs[:1], *[[j] for j in jobs[1:]]], NOW)
    order = [x for _ in range(9) for x in await take_ids(store, 1)]
    assert order == ["o0", "a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"]
    assert await take_ids(store, 1) == []
    await lane_counters_match(pg_dsn, store.schema)


async def test_a_group_added_later_comes_first_and_priority_orders_a_lane(
    store: PostgresStore,
) -> None:
    await store.add_jobs([[job("a1", "a")], [job("a2", "a", priority=-1)]], NOW)
    assert await take_ids(store, 1) == ["a2"]
    await store.add_jobs([[job("z1", "z")]], NOW)
    # z was never served (0): it goes before a.
    assert await take_ids(store, 2) == ["z1", "a1"]


async def test_a_plain_queue_takes_as_before_and_serves_no_lane(
    store: PostgresStore, pg_dsn: str
) -> None:
    await store.add_jobs([[job("p1")], [job("p2", lifo=True)]], NOW)
    assert await take_ids(store, 5) == ["p2", "p1"]
    conn = await asyncpg.connect(pg_dsn)
    try:
        served = await conn.fetchval(
            f'SELECT served FROM "{store.schema}".queues WHERE queue = $1', Q
        )
    finally:
        await conn.close()
    assert served in (None, 0)


async def test_group_concurrency_holds_across_racing_store_objects(
    store: PostgresStore, pg_dsn: str
) -> None:
    await store.set_group_limits(Q, 2, None)
    assert await store.get_group_limits(Q) == GroupLimits(2, None)
    jobs = [job(f"g{i}", "g") for i in range(12)] + [job(f"h{i}", "h") for i in range(12)]
    await store.add_jobs([[j] for j in jobs], NOW)
    async with PostgresStore(pg_dsn, schema=store.schema, min_size=1, max_size=4) as other:
        held: list[str] = []
        for _ in range(6):
            results: list[list[str]] = []

            async def take(s: PostgresStore, out: list[list[str]] = results) -> None:
                t = await s.take_jobs(Q, limit=3, token="t", lock_until=NOW + 60, now=NOW)
                out.append([j.id for j in t.jobs])

            async with anyio.create_task_group() as tg:
                for s in (store, other, store, other):
                    tg.start_soon(take, s)
            fresh = [i for r in results for i in r]
            held += fresh
            counts = await store.get_group_counts(Q)
            assert counts["g"][JobState.ACTIVE] <= 2
            assert counts["h"][JobState.ACTIVE] <= 2
            assert counts["g"][JobState.ACTIVE] + counts["h"][JobState.ACTIVE] == len(held)
            assert len(fresh) == 4 - (len(held) - len(fresh))
            blocked = await other.take_jobs(Q, limit=3, token="t", lock_until=NOW + 60, now=NOW)
            assert blocked.jobs == []
            assert blocked.concurrency_limited == (counts["g"][JobState.WAITING] > 0)
            assert blocked.rate_limited_until is None
            await store.complete_jobs(Q, [Completion(i, "t", "1") for i in held], NOW)
            held = []
    counts = await store.get_group_counts(Q)
    assert counts["g"][JobState.COMPLETED] == 12 and counts["h"][JobState.COMPLETED] == 12


async def test_group_rate_window(store: PostgresStore) -> None:
    await store.set_group_limits(Q, None, (2, 10.0))
    assert await store.get_group_limits(Q) == GroupLimits(None, (2, 10.0))
    jobs = [job(f"g{i}", "g") for i in range(5)] + [job("h0", "h"), job("o0")]
    await store.add_jobs([[j] for j in jobs], NOW)
    assert await take_ids(store, 10) == ["o0", "g0", "h0", "g1"]
    later = await store.take_jobs(Q, limit=10, token="t", lock_until=NOW + 60, now=NOW + 1)
    assert later.jobs == [] and later.rate_limited_until == NOW + 10
    assert not later.concurrency_limited
    assert await take_ids(store, 10, NOW + 10) == ["g2", "g3"]
    assert await take_ids(store, 10, NOW + 19) == []
    assert await take_ids(store, 10, NOW + 20) == ["g4"]


async def test_limits_hold_one_group_back_while_others_run(store: PostgresStore) -> None:
    await store.set_group_limits(Q, 1, None)
    await store.add_jobs([[job("g0", "g")], [job("g1", "g")], [job("h0", "h")]], NOW)
    assert await take_ids(store, 10) == ["g0", "h0"]
    # A take that gets a job reports no limit.
    await store.add_jobs([[job("o0")]], NOW)
    taken = await store.take_jobs(Q, limit=10, token="t", lock_until=NOW + 60, now=NOW)
    assert [j.id for j in taken.jobs] == ["o0"] and not taken.concurrency_limited
    await store.set_group_limits(Q, None, None)
    assert await store.get_group_limits(Q) == GroupLimits()
    assert await take_ids(store, 10) == ["g1"]


async def test_group_counts_and_group_ids_on_every_add(store: PostgresStore, pg_dsn: str) -> None:
    await store.add_jobs([[job("one", "solo")]], NOW)  # the single-statement add
    await store.add_jobs(
        [
            [
                job("p", "fam", state=JobState.WAITING_CHILDREN),
                job("c", "kid", parent_id="p", parent_queue=Q, parent_policy=ParentPolicy.FAIL),
            ],
            [job("plain")],
        ],
        NOW,
    )
    await store.add_jobs([[job(f"b{i}", "bulk")] for i in range(300)], NOW)  # batch JSON
    await store.add_jobs([[job("d", "later", state=JobState.DELAYED, delay=5.0)]], NOW)
    await store.add_dag(
        [job("dp", "dag", state=JobState.WAITING_CHILDREN), job("dc", "dag")],
        [DagEdge(Q, "dp", Q, "dc", ParentPolicy.FAIL)],
        NOW,
    )
    added = await store.add_deduplicated(job("x", "dedup"), DeduplicationKey("k"), NOW)
    assert added.written
    for job_id, group in [
        ("one", "solo"),
        ("p", "fam"),
        ("c", "kid"),
        ("plain", None),
        ("b7", "bulk"),
        ("d", "later"),
        ("dc", "dag"),
        ("x", "dedup"),
    ]:
        record = await store.get_job(Q, job_id)
        assert record is not None and record.group_id == group
    counts = await store.get_group_counts(Q)
    assert set(counts) == {"solo", "fam", "kid", "bulk", "later", "dag", "dedup"}
    assert all(set(per) == set(JobState) for per in counts.values())
    assert counts["bulk"][JobState.WAITING] == 300
    assert counts["fam"][JobState.WAITING_CHILDREN] == 1
    assert counts["dag"] == {
        **dict.fromkeys(JobState, 0),
        JobState.WAITING: 1,
        JobState.WAITING_CHILDREN: 1,
    }
    assert counts["later"][JobState.DELAYED] == 1
    await lane_counters_match(pg_dsn, store.schema)
    # Promotion (inside a take) and every way out of waiting keep the counters exact.
    taken = await store.take_jobs(Q, limit=3, token="t", lock_until=NOW + 60, now=NOW + 6)
    assert len(taken.jobs) == 3
    await store.remove_job(Q, "b1")
    await store.clean(Q, JobState.WAITING, NOW + 100, 5)
    await lane_counters_match(pg_dsn, store.schema)
    await store.drain(Q, True, NOW + 6)
    await lane_counters_match(pg_dsn, store.schema)
    assert await store.get_group_counts(Q) != {}
    await store.obliterate(Q, force=True)
    assert await store.get_group_counts(Q) == {}


async def test_obliterate_drops_group_limits_and_lanes(store: PostgresStore, pg_dsn: str) -> None:
    await store.set_group_limits(Q, 1, (5, 1.0))
    await store.add_jobs([[job("b0", "b")], [job("a0", "a")], [job("a1", "a")]], NOW)
    assert await take_ids(store, 1) == ["a0"]
    await store.obliterate(Q, force=True)
    assert await store.get_group_limits(Q) == GroupLimits()
    conn = await asyncpg.connect(pg_dsn)
    try:
        lanes = await conn.fetchval(f'SELECT count(*) FROM "{store.schema}".group_lanes')
    finally:
        await conn.close()
    assert lanes == 0
    await store.add_jobs([[job("b1", "b")], [job("a2", "a")], [job("a3", "a")]], NOW)
    # Fresh lanes: a (never served again) comes first, and no concurrency limit remains.
    assert await take_ids(store, 3) == ["a2", "b1", "a3"]


async def test_retry_release_and_stall_bring_a_job_back_to_its_lane(
    store: PostgresStore, pg_dsn: str
) -> None:
    await store.add_jobs([[job("g0", "g")], [job("g1", "g")]], NOW)
    assert await take_ids(store, 2) == ["g0", "g1"]
    await lane_counters_match(pg_dsn, store.schema)
    from conveyor_core.store import Failure, Release

    await store.release_jobs(Q, [Release("g0", "t")], NOW)
    await store.fail_jobs(Q, [Failure("g1", "t", "boom", [], retry_at=NOW)], NOW)
    await lane_counters_match(pg_dsn, store.schema)
    assert sorted(await take_ids(store, 5)) == ["g0", "g1"]
    await store.recover_stalled(Q, NOW + 1000, 5)
    await lane_counters_match(pg_dsn, store.schema)
    assert sorted(await take_ids(store, 5, NOW + 1000)) == ["g0", "g1"]


async def test_migration_10_upgrades_a_database_and_runs_again_unchanged(
    pg_dsn: str, pg_schema: str
) -> None:
    quoted = sql_schema.quote_ident(pg_schema)

    def rendered(text: str) -> str:
        return sql_schema.render(text, pg_schema, channel_for(pg_schema), STALLED_REASON)

    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {quoted}")
        await conn.execute(f"CREATE TABLE {quoted}.schema_version (version integer NOT NULL)")
        for version, text in sql_schema.MIGRATIONS:
            if version < 10:
                await conn.execute(rendered(text))
                await conn.execute(f"INSERT INTO {quoted}.schema_version VALUES ($1)", version)
        await conn.execute(
            f"INSERT INTO {quoted}.jobs (id, queue, name, data, opts, state, created_at, "
            "order_key) SELECT 'old' || i, $1, 'n', '{}', '{}', 'waiting', 0, i "
            "FROM generate_series(1, 3) i",
            Q,
        )
        async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as store:
            await store.add_jobs([[job("g0", "g")], [job("g1", "g")], [job("h0", "h")]], NOW)
            assert await take_ids(store, 2) == ["old1", "g0"]
            # Migration 10 again (its own files, then every function): nothing changes.
            again = [sql_schema.migration_sql("0010_groups"), sql_schema.all_functions_sql()]
            again.append(sql_schema.migration_sql("0010_groups_triggers"))
            await conn.execute(rendered("".join(again)))
            await lane_counters_match(pg_dsn, pg_schema)
            assert await take_ids(store, 5) == ["h0", "old2", "g1", "old3"]
            await store.add_jobs([[job("h1", "h")]], NOW)
            await lane_counters_match(pg_dsn, pg_schema)
            triggers = await conn.fetchval(
                "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = 'jobs' AND t.tgname LIKE 'jobs_group%'",
                pg_schema,
            )
            assert triggers == 3
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
        await conn.close()


async def test_bulk_moves_of_one_group_stay_linear(store: PostgresStore, pg_dsn: str) -> None:
    # A lane's count is folded once per transaction, not written once per job.
    size = 20_000
    with anyio.fail_after(60):
        await store.add_jobs([[job(f"b{i}", "big")] for i in range(size)], NOW)
        await store.add_jobs([[job("o0")], [job("s0", "small")]], NOW)
        await lane_counters_match(pg_dsn, store.schema)
        assert await take_ids(store, 4) == ["o0", "b0", "s0", "b1"]
        assert await store.drain(Q, False, NOW) == size - 2
    await lane_counters_match(pg_dsn, store.schema)
    assert (await store.get_group_counts(Q))["big"][JobState.WAITING] == 0


@pytest.mark.parametrize("concurrency", [2, None])
async def test_workers_and_producers_racing_keep_limits_and_counters(
    store: PostgresStore, pg_dsn: str, concurrency: int | None
) -> None:
    # With a group concurrency, takes serve one lane at a time under its row lock;
    # without one, each take serves its lanes in one set.
    await store.set_group_limits(Q, concurrency, None)
    groups = ["a", "b", "c", None]
    total = 240
    done: list[str] = []
    peak: dict[str, int] = {}
    async with PostgresStore(pg_dsn, schema=store.schema, min_size=1, max_size=4) as other:

        async def produce() -> None:
            for i in range(0, total, 8):
                batch = [[job(f"p{i + k}", groups[(i + k) % 4])] for k in range(8)]
                await (store if i % 16 else other).add_jobs(batch, NOW)

        async def work(s: PostgresStore, token: str) -> None:
            idle = 0
            while idle < 40:
                taken = await s.take_jobs(Q, limit=3, token=token, lock_until=NOW + 60, now=NOW)
                if not taken.jobs:
                    idle += 1
                    await anyio.sleep(0.01)
                    continue
                idle = 0
                counts = await s.get_group_counts(Q)
                for group, per in counts.items():
                    peak[group] = max(peak.get(group, 0), per[JobState.ACTIVE])
                await s.complete_jobs(Q, [Completion(j.id, token, "1") for j in taken.jobs], NOW)
                done.extend(j.id for j in taken.jobs)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                for n, s in enumerate((store, other, store, other)):
                    tg.start_soon(work, s, f"w{n}")
    assert sorted(done) == sorted(f"p{i}" for i in range(total))
    assert peak
    if concurrency is not None:
        assert max(peak.values()) <= concurrency
    await lane_counters_match(pg_dsn, store.schema)


async def test_a_take_by_lanes_publishes_active_in_the_order_taken(store: PostgresStore) -> None:
    sub = await store.subscribe(Q)
    try:
        await store.add_jobs([[job("d0", "a", state=JobState.DELAYED, delay=1.0)]], NOW)
        await store.add_jobs([[job("b0", "b")], [job("a1", "a")], [job("o0")]], NOW)
        assert await take_ids(store, 5, NOW + 1) == ["o0", "a1", "b0", "d0"]
        seen: list[tuple[str, str | None]] = []
        with anyio.fail_after(5):
            while len(seen) < 13:
                event = await sub.__anext__()
                seen.append((event.type, event.job_id))
    finally:
        await sub.aclose()
    assert seen[-5:] == [
        ("waiting", "d0"),
        ("active", "o0"),
        ("active", "a1"),
        ("active", "b0"),
        ("active", "d0"),
    ]
