"""PostgresStore's per-state counts (base rows plus deltas) under concurrent transitions:
whatever runs at once, on several store objects, ``get_counts`` equals a count of the
jobs table, both after the fact and inside any one snapshot while it runs.

Each test gets its own schema, dropped afterwards from a separate connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")

from conveyor_core.errors import InvalidJobStateError, JobNotFoundError  # noqa: E402
from conveyor_core.models import JobState, ParentPolicy  # noqa: E402
from conveyor_core.store import STALLED_REASON, Completion, Failure, NewJob  # noqa: E402
from conveyor_stores.postgres import PostgresStore  # noqa: E402
from conveyor_stores.postgres import schema as sql_schema  # noqa: E402
from conveyor_stores.postgres.store import channel_for  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

NOW = 1_000_000.0
QUEUES = ("a", "b")


def new_job(job_id: str, queue: str, state: JobState = JobState.WAITING, **fields: Any) -> NewJob:
    return NewJob(id=job_id, queue=queue, name="n", data="{}", opts="{}", state=state, **fields)


def jobs_for(queue: str, tag: str, n: int) -> list[list[NewJob]]:
    """``n`` groups: plain jobs, delayed ones, some kept only briefly once finished, and
    small flows whose parents wait for children in the same queue."""
    groups: list[list[NewJob]] = []
    for i in range(n):
        jid = f"{tag}{i}"
        if i % 7 == 0:
            groups.append(
                [new_job(jid, queue, JobState.WAITING_CHILDREN)]
                + [
                    new_job(
                        f"{jid}.{k}",
                        queue,
                        parent_id=jid,
                        parent_queue=queue,
                        parent_policy=ParentPolicy.FAIL if k else ParentPolicy.IGNORE,
                    )
                    for k in range(2)
                ]
            )
        elif i % 5 == 0:
            groups.append([new_job(jid, queue, JobState.DELAYED, delay=0.5)])
        else:
            groups.append([new_job(jid, queue, keep_completed=3 if i % 3 == 0 else None)])
    return groups


async def table_counts(pg_conn: Any, schema: str, queue: str) -> dict[JobState, int]:
    rows = await pg_conn.fetch(
        f'SELECT state, count(*) FROM "{schema}".jobs WHERE queue = $1 GROUP BY state', queue
    )
    return dict.fromkeys(JobState, 0) | {JobState(state): int(n) for state, n in rows}


async def snapshot_agrees(pg_conn: Any, schema: str, queue: str) -> None:
    """In one snapshot, the function behind ``get_counts`` equals a count of the table."""
    async with pg_conn.transaction(isolation="repeatable_read"):
        rows = await pg_conn.fetch(f'SELECT state, n FROM "{schema}".get_counts($1)', queue)
        counted = dict.fromkeys(JobState, 0) | {JobState(s): int(n) for s, n in rows}
        assert counted == await table_counts(pg_conn, schema, queue)


async def worker(store: PostgresStore, queue: str, seed: int, stop: asyncio.Event) -> None:
    """Takes jobs and completes, retries or finally fails each, until ``stop``."""
    rng = random.Random(seed)
    token = f"w{seed}"
    now = NOW
    while not stop.is_set():
        now += 0.1
        taken = await store.take_jobs(queue, limit=4, token=token, lock_until=now + 60, now=now)
        if not taken.jobs:
            await asyncio.sleep(0.005)
            continue
        completions: list[Completion] = []
        failures: list[Failure] = []
        for record in taken.jobs:
            roll = rng.random()
            if roll < 0.6:
                completions.append(Completion(record.id, token, "1"))
            elif roll < 0.8:
                failures.append(Failure(record.id, token, "again", retry_at=now + rng.random()))
            else:
                failures.append(Failure(record.id, token, "broke"))
        if completions:
            await store.complete_jobs(queue, completions, now)
        if failures:
            await store.fail_jobs(queue, failures, now)


async def meddler(store: PostgresStore, pg_conn: Any, schema: str, stop: asyncio.Event) -> None:
    """Removes, cleans, retries, drains, obliterates and re-adds, and reads the counts
    (folding deltas) and compares them with the table in one snapshot, until ``stop``."""
    rng = random.Random(7)
    round_ = 0
    while not stop.is_set():
        round_ += 1
        queue = QUEUES[round_ % 2]
        with contextlib.suppress(InvalidJobStateError, JobNotFoundError):
            await store.remove_job(queue, f"{queue}{rng.randrange(200)}")
        if round_ % 3 == 0:
            await store.clean(queue, JobState.COMPLETED, NOW + 1e6, 5)
        if round_ % 4 == 0:
            await store.retry_jobs(queue, JobState.FAILED, NOW + 1)
        if round_ % 5 == 0:
            await store.promote_jobs(queue, NOW + 1)
        if round_ % 11 == 0:
            await store.drain(queue, include_delayed=True, now=NOW + 1)
        if round_ % 17 == 0:
            # A queue name used again after obliterate starts from nothing.
            await store.obliterate(queue, force=True)
            await store.add_jobs(jobs_for(queue, f"{queue}r{round_}.", 30), NOW)
        await store.recover_stalled(queue, NOW + 1e6, max_stalled_count=1)
        await store.get_counts(queue)
        await snapshot_agrees(pg_conn, schema, queue)
        await asyncio.sleep(0)


async def test_counts_stay_exact_under_concurrent_transitions(
    pg_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    stores = [PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=3) for _ in range(3)]
    for store in stores:
        await store.connect()
    try:
        for queue in QUEUES:
            for tag in ("", "x"):
                assert all(await stores[0].add_jobs(jobs_for(queue, f"{queue}{tag}", 200), NOW))
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(worker(stores[i % 3], QUEUES[i % 2], i, stop)) for i in range(6)
        ]
        meddling = asyncio.create_task(meddler(stores[1], pg_conn, pg_schema, stop))
        for adds in range(1, 21):
            await asyncio.sleep(0.2)
            await stores[2].add_jobs(jobs_for(QUEUES[adds % 2], f"late{adds}.", 10), NOW)
        stop.set()
        await asyncio.gather(*workers, meddling)
        finished = 0
        for queue in QUEUES:
            expected = await table_counts(pg_conn, pg_schema, queue)
            for store in stores:
                assert await store.get_counts(queue) == expected
            finished += expected[JobState.COMPLETED] + expected[JobState.FAILED]
        assert finished > 0, "the workers finished nothing: the run proves nothing"
        # Folding keeps the deltas to a handful once the counts are read.
        deltas = await pg_conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".state_count_deltas')
        assert deltas == 0
        for queue in QUEUES:
            await stores[0].obliterate(queue, force=True)
            assert await stores[0].get_counts(queue) == dict.fromkeys(JobState, 0)
        assert await pg_conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".state_counts') == 0
    finally:
        for store in stores:
            await store.close()


async def test_a_migrated_database_counts_the_jobs_it_already_held(
    pg_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    previous = [(v, text) for v, text in sql_schema.MIGRATIONS if v < sql_schema.LATEST]
    quoted = sql_schema.quote_ident(pg_schema)
    await pg_conn.execute(f"CREATE SCHEMA {quoted}")
    await pg_conn.execute(f"CREATE TABLE {quoted}.schema_version (version integer NOT NULL)")
    for version, text in previous:
        rendered = sql_schema.render(text, pg_schema, channel_for(pg_schema), STALLED_REASON)
        await pg_conn.execute(rendered)
        await pg_conn.execute(f"INSERT INTO {quoted}.schema_version VALUES ($1)", version)
    states = ["waiting", "waiting", "delayed", "completed", "failed", "waiting-children"]
    await pg_conn.execute(
        f"INSERT INTO {quoted}.jobs (id, queue, name, data, opts, state, created_at, "
        "run_at, finished_at, order_key) "
        "SELECT 'j' || i, 'q' || (i % 2), 'n', '{}', '{}', ($1::text[])[1 + i % 6], $2, "
        "$2, $2, i FROM generate_series(0, 599) i",
        states,
        NOW,
    )
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as store:
        for queue in ("q0", "q1"):
            counts = await store.get_counts(queue)
            assert counts == await table_counts(pg_conn, pg_schema, queue)
            assert counts[JobState.WAITING] > 0
        taken = await store.take_jobs("q0", limit=50, token="t", lock_until=NOW + 9, now=NOW)
        await store.complete_jobs("q0", [Completion(j.id, "t", "1") for j in taken.jobs], NOW)
        await store.clean("q1", JobState.FAILED, NOW, None)
        await store.remove_job("q1", "j1")
        for queue in ("q0", "q1"):
            assert await store.get_counts(queue) == await table_counts(pg_conn, pg_schema, queue)


async def deltas_of(pg_conn: Any, schema: str, queue: str) -> int:
    return int(
        await pg_conn.fetchval(
            f'SELECT count(*) FROM "{schema}".state_count_deltas WHERE queue = $1', queue
        )
    )


async def add_twelve_unfolded(store: PostgresStore, pg_conn: Any, schema: str) -> None:
    """Twelve waiting jobs in queue ``q``, their counts still in deltas."""
    assert all(await store.add_jobs([[new_job(f"j{i}", "q")] for i in range(12)], NOW))
    assert await deltas_of(pg_conn, schema, "q") > 0, "no deltas: the test proves nothing"


async def test_counts_read_in_a_repeatable_read_transaction_answer_from_its_snapshot(
    pg_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    """An application reading through ``using`` inside its own repeatable-read
    transaction gets the counts of its snapshot, even after other connections have
    folded the deltas that snapshot sees (a fold there would fail the read with a
    serialization error)."""
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as store:
        await add_twelve_unfolded(store, pg_conn, pg_schema)
        app = await asyncpg.connect(pg_dsn)
        try:
            async with app.transaction(isolation="repeatable_read"):
                bound = store.using(app)
                seen = await bound.get_jobs("q", [JobState.WAITING], 0, None)
                taken = await store.take_jobs("q", limit=5, token="t", lock_until=NOW + 9, now=NOW)
                await store.complete_jobs(
                    "q", [Completion(j.id, "t", "1") for j in taken.jobs], NOW
                )
                assert (await store.get_counts("q"))[JobState.COMPLETED] == 5
                assert await deltas_of(pg_conn, pg_schema, "q") == 0
                counts = await bound.get_counts("q")
                assert counts[JobState.WAITING] == len(seen) == 12
                assert counts[JobState.COMPLETED] == 0
        finally:
            await app.close()
        assert await store.get_counts("q") == await table_counts(pg_conn, pg_schema, "q")


async def test_counts_read_in_a_read_only_transaction(
    pg_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    """Inside the application's read-only transaction the counts are read, not folded
    (folding writes)."""
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as store:
        await add_twelve_unfolded(store, pg_conn, pg_schema)
        app = await asyncpg.connect(pg_dsn)
        try:
            async with app.transaction(readonly=True):
                counts = await store.using(app).get_counts("q")
        finally:
            await app.close()
        assert counts == await table_counts(pg_conn, pg_schema, "q")
        assert counts[JobState.WAITING] == 12


async def test_count_deltas_stay_few_while_jobs_are_added_and_nobody_reads_the_counts(
    pg_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    """Writers fold the deltas now and then themselves (one statement in FOLD_EVERY):
    a queue that is only ever written keeps a small delta table."""
    adds = 5 * sql_schema.FOLD_EVERY
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as store:
        for i in range(adds):
            assert await store.add_jobs([[new_job(f"j{i}", "q")]], NOW) == [True]
        assert await deltas_of(pg_conn, pg_schema, "q") < sql_schema.FOLD_EVERY
        assert await store.get_counts("q") == await table_counts(pg_conn, pg_schema, "q")
