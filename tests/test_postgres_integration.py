"""PostgresStore in an application: transactional enqueue, several processes sharing a
schema, migrations, and surviving terminated database connections."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")

from private_postgres import private_postgres  # noqa: E402

from conveyor_core import FlowProducer, Job, JobState, Queue, Worker  # noqa: E402
from conveyor_core.errors import StoreClosedError, StoreUnavailableError  # noqa: E402
from conveyor_core.store import Completion  # noqa: E402
from conveyor_stores.postgres import PostgresStore, migrate  # noqa: E402
from conveyor_stores.postgres.schema import LATEST, MIGRATIONS  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def store(pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresStore]:
    try:
        async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=4) as s:
            yield s
    finally:
        await drop_schema(pg_dsn, pg_schema)


@pytest.fixture
async def app_conn(pg_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def run_until_finished(store: PostgresStore, queue: str, job_id: str) -> Any:
    """Run a worker on ``queue`` until ``job_id`` finished; returns its return value."""

    async def handle(job: Job) -> Any:
        return {"ran": job.name}

    async with Worker(queue, handle, store=store, concurrency=2):
        job = await Queue(queue, store=store).get_job(job_id)
        assert job is not None
        return await job.wait_until_finished(timeout=20)


class Rollback(Exception):
    pass


async def test_transactional_enqueue_commits_and_rolls_back_with_the_app(
    store: PostgresStore, app_conn: Any
) -> None:
    await app_conn.execute("CREATE TEMP TABLE orders (id text PRIMARY KEY)")
    with pytest.raises(Rollback):
        async with app_conn.transaction():
            await app_conn.execute("INSERT INTO orders VALUES ('o1')")
            await Queue("mail", store=store.using(app_conn)).add("confirm", {"order": "o1"})
            await FlowProducer(store=store.using(app_conn)).add(
                {
                    "name": "ship",
                    "queue_name": "ship",
                    "children": [{"name": "pack", "queue_name": "pack"}],
                }
            )
            raise Rollback
    assert await app_conn.fetchval("SELECT count(*) FROM orders") == 0
    assert await store.list_queues() == []

    async with app_conn.transaction():
        await app_conn.execute("INSERT INTO orders VALUES ('o2')")
        job = await Queue("mail", store=store.using(app_conn)).add("confirm", {"order": "o2"})
        # Not visible outside the transaction before it commits.
        assert await Queue("mail", store=store).get_job(job.id) is None
    assert await run_until_finished(store, "mail", job.id) == {"ran": "confirm"}


async def test_transactional_flow_runs_after_commit(store: PostgresStore, app_conn: Any) -> None:
    async with app_conn.transaction():
        node = await FlowProducer(store=store.using(app_conn)).add(
            {
                "name": "ship",
                "queue_name": "ship",
                "children": [{"name": "pack", "queue_name": "pack"}],
            }
        )
    [child] = node.children

    async def handle(job: Job) -> Any:
        return job.name

    async with Worker("pack", handle, store=store), Worker("ship", handle, store=store):
        assert await node.job.wait_until_finished(timeout=20) == "ship"
    assert await child.job.get_state() == JobState.COMPLETED


async def test_two_store_objects_share_one_schema(
    store: PostgresStore, pg_dsn: str, pg_schema: str
) -> None:
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as other:
        job = await Queue("shared", store=other).add("x")
        assert await run_until_finished(store, "shared", job.id) == {"ran": "x"}


async def test_many_processes_migrating_at_once(pg_dsn: str, pg_schema: str) -> None:
    stores = [PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=1) for _ in range(5)]
    try:
        await asyncio.gather(*(s.connect() for s in stores))
        conn = await asyncpg.connect(pg_dsn)
        try:
            versions = await conn.fetch(f'SELECT version FROM "{pg_schema}".schema_version')
            # every migration ran, once each, in order (numbers may leave gaps)
            assert [r["version"] for r in versions] == [version for version, _ in MIGRATIONS]
            assert await migrate(conn, pg_schema) == LATEST
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(s.close() for s in stores))
        await drop_schema(pg_dsn, pg_schema)


async def terminate_backends(dsn: str) -> int:
    """Terminate every other backend of the test database; returns how many."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = 'conveyor-test-drop'"
            )
        )
    finally:
        await conn.close()


async def test_survives_terminated_connections(pg_dsn: str, pg_schema: str) -> None:
    settings = {"application_name": "conveyor-test-drop"}
    store = PostgresStore(
        pg_dsn, schema=pg_schema, min_size=2, max_size=2, server_settings=settings
    )
    try:
        await store.connect()
        queue = Queue("resilient", store=store)
        await queue.add("before")
        waiter = asyncio.create_task(store.wait_for_work("resilient", 60))
        await asyncio.sleep(0.05)
        assert await terminate_backends(pg_dsn) >= 3
        # A wait in progress returns instead of hanging on the dead listener.
        await asyncio.wait_for(waiter, 10)
        # Reads retry; a write may fail once with a clear error, then works again.
        for _ in range(3):
            try:
                await queue.add("after")
                break
            except StoreUnavailableError:
                continue
        counts = await queue.get_job_counts()
        assert counts["waiting"] == 2
        # The listener is back: events and wake-ups flow again.
        events = await store.subscribe("resilient")
        for _ in range(100):
            if store._listener is not None and not store._listener.is_closed():
                break
            await asyncio.sleep(0.05)
        waiting = asyncio.create_task(store.wait_for_work("resilient", 60))
        await asyncio.sleep(0.05)
        await queue.add("wake")
        await asyncio.wait_for(waiting, 10)
        event = await asyncio.wait_for(events.__anext__(), 10)
        assert event.type == "added"
        await events.aclose()
    finally:
        await store.close()
        await drop_schema(pg_dsn, pg_schema)


def terminate_backends_blocking(dsn: str, application_name: str) -> int:
    """Terminate the backends of ``application_name`` and wait until the server has ended
    them, without letting the calling event loop run (from a thread of its own)."""

    async def terminate() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            count = int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    application_name,
                )
            )
            for _ in range(500):
                left = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    application_name,
                )
                if not left:
                    return count
                await asyncio.sleep(0.01)
            raise AssertionError("terminated backends did not end")
        finally:
            await conn.close()

    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(terminate())))
    thread.start()
    thread.join()
    assert results, "terminating the backends failed"
    return results[0]


async def test_calls_after_terminated_backends_run_on_new_connections(
    pg_dsn: str, pg_schema: str
) -> None:
    """Every pooled connection loses its server process; the next calls, issued just
    after asyncpg read the server's goodbye but before it saw the end of the stream,
    must all succeed: reads and repeatable calls on new connections, and a transition
    that asyncpg refused to send on a dead connection as well."""
    name = f"conveyor-drop-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(
        pg_dsn,
        schema=pg_schema,
        min_size=4,
        max_size=4,
        server_settings={"application_name": name},
    )
    try:
        await store.connect()
        node = await FlowProducer(store=store).add(
            {
                "name": "parent",
                "queue_name": "drops",
                "children": [{"name": f"child-{i}", "queue_name": "drops"} for i in range(3)],
            }
        )
        parent = node.job.id
        taken = await store.take_jobs(
            "drops", limit=3, token="tok", lock_until=time.time() + 60, now=time.time()
        )
        assert len(taken.jobs) == 3
        first, second, third = (j.id for j in taken.jobs)
        for _round in range(3):
            assert terminate_backends_blocking(pg_dsn, name) >= 5
            # One turn of the loop: asyncpg reads the server's goodbye on every pooled
            # connection, not yet the end of their streams.
            await asyncio.sleep(0)
            results = await asyncio.gather(
                store.get_dependencies("drops", parent),
                store.get_job("drops", first),
                store.get_counts("drops"),
                store.update_progress("drops", second, "50"),
                store.extend_locks("drops", [(third, "tok")], time.time() + 60),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            assert not failures, failures
        # Transitions issued at the same moment: asyncpg refuses to send them on the
        # dead connections, so they are sent again on new ones, exactly once.
        assert terminate_backends_blocking(pg_dsn, name) >= 5
        await asyncio.sleep(0)
        done = await asyncio.gather(
            *(
                store.complete_jobs("drops", [Completion(job_id, "tok", "1")], time.time())
                for job_id in (first, second, third)
            ),
            return_exceptions=True,
        )
        assert done == [[True]] * 3
        counts = await store.get_counts("drops")
        assert counts[JobState.COMPLETED] == 3
        assert await store.get_job("drops", parent) is not None
        assert counts[JobState.WAITING] == 1, "the parent is released once"
    finally:
        await store.close()
        await drop_schema(pg_dsn, pg_schema)


async def test_unreachable_server_raises_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none", schema="x")
    with pytest.raises(StoreUnavailableError):
        await store.connect()


@pytest.mark.parametrize("shape", ["Mixed_Case", "long"])
async def test_any_valid_schema_name_gets_wake_ups_and_events(
    pg_dsn: str, pg_schema: str, shape: str
) -> None:
    schema = f"Mixed_Case_{pg_schema}" if shape == "Mixed_Case" else (pg_schema + "_x" * 40)[:63]
    try:
        async with (
            PostgresStore(pg_dsn, schema=schema, min_size=1, max_size=2) as store,
            PostgresStore(pg_dsn, schema=schema, min_size=1, max_size=2) as other,
        ):
            events = await other.subscribe("q")
            waiting = asyncio.create_task(other.wait_for_work("q", 60))
            await asyncio.sleep(0.05)
            await Queue("q", store=store).add("x")
            await asyncio.wait_for(waiting, 10)
            event = await asyncio.wait_for(events.__anext__(), 10)
            assert (event.type, event.queue) == ("added", "q")
            await events.aclose()
    finally:
        await drop_schema(pg_dsn, schema)


async def take_all(store: PostgresStore, queue: str, n: int) -> list[str]:
    now = time.time()
    taken = await store.take_jobs(queue, limit=n, token="tok", lock_until=now + 300, now=now)
    assert len(taken.jobs) == n
    return [j.id for j in taken.jobs]


async def test_acknowledged_completions_survive_a_server_crash() -> None:
    """With default options, a completion the store acknowledged is on disk: a crash of
    the server (its WAL writer set to flush only every ten seconds) loses none."""
    with private_postgres(wal_writer_delay="10s", autovacuum="off") as server:
        store = PostgresStore(server.dsn, min_size=1, max_size=2)
        try:
            await store.connect()
            await Queue("durable", store=store).add_bulk(
                [{"name": f"job-{i}", "data": i} for i in range(20)]
            )
            ids = await take_all(store, "durable", 20)
            acknowledged = []
            for job_id in ids[:15]:
                done = await store.complete_jobs(
                    "durable", [Completion(job_id, "tok", "1")], time.time()
                )
                assert done == [True]
                acknowledged.append(job_id)
            server.crash()
        finally:
            await store.close()
        server.start()
        async with PostgresStore(server.dsn, min_size=1, max_size=2) as after:
            states = [(await after.get_job("durable", job_id)) for job_id in acknowledged]
            lost = [
                job_id
                for job_id, job in zip(acknowledged, states, strict=True)
                if job is None or job.state is not JobState.COMPLETED
            ]
            assert not lost, f"{len(lost)} acknowledged completions were rolled back"


async def test_frozen_server_calls_end_in_bounded_time_and_close_returns() -> None:
    """Against a server whose processes are all stopped, calls fail with
    StoreUnavailableError after the store's timeout, connecting fails the same way, and
    close returns even with a call in flight; after the server resumes, the transition
    that timed out either happened or did not, and nothing else changed."""
    with private_postgres(autovacuum="off") as server:
        store = PostgresStore(server.dsn, min_size=1, max_size=2, timeout=1.0)
        try:
            await store.connect()
            await Queue("frozen", store=store).add_bulk(
                [{"name": f"job-{i}", "data": i} for i in range(2)]
            )
            first, second = await take_all(store, "frozen", 2)
            server.freeze()
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(store.get_counts("frozen"), 30)
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(
                    store.complete_jobs("frozen", [Completion(first, "tok", "1")], time.time()),
                    30,
                )
            other = PostgresStore(server.dsn, min_size=1, max_size=1, timeout=1.0)
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(other.connect(), 30)
            in_flight = asyncio.create_task(store.get_job("frozen", second))
            await asyncio.sleep(0.2)
            await asyncio.wait_for(store.close(), 30)
            with pytest.raises((StoreUnavailableError, StoreClosedError)):
                await asyncio.wait_for(in_flight, 30)
        finally:
            server.thaw()
            await store.close()
        async with PostgresStore(server.dsn, min_size=1, max_size=2) as after:
            job = await after.get_job("frozen", first)
            assert job is not None and job.state in (JobState.ACTIVE, JobState.COMPLETED)
            if job.state is JobState.ACTIVE:
                assert job.lock_token == "tok" and job.return_value is None
                done = await after.complete_jobs(
                    "frozen", [Completion(first, "tok", "1")], time.time()
                )
                assert done == [True]
            else:
                assert job.return_value == "1"
            other_job = await after.get_job("frozen", second)
            assert other_job is not None and other_job.state is JobState.ACTIVE


async def _catalog(conn: Any, schema: str) -> set[tuple[str, ...]]:
    """Every function, trigger, column and index of ``schema``, with the schema's name
    and its notification channel written as placeholders."""
    from conveyor_stores.postgres.store import channel_for

    def plain(text: str) -> str:
        return text.replace(channel_for(schema), "@CHANNEL").replace(schema, "@S")

    rows: set[tuple[str, ...]] = set()
    for r in await conn.fetch(
        "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
        schema,
    ):
        rows.add(("function", r[0], plain(r[1])))
    for r in await conn.fetch(
        "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND NOT t.tgisinternal",
        schema,
    ):
        rows.add(("trigger", r[0], plain(r[1])))
    for r in await conn.fetch(
        "SELECT table_name, column_name, data_type, coalesce(column_default, '') "
        "FROM information_schema.columns WHERE table_schema = $1",
        schema,
    ):
        rows.add(("column", *(plain(str(v)) for v in r)))
    for r in await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
    ):
        rows.add(("index", r[0], plain(r[1])))
    return rows


async def test_a_new_schema_installs_the_functions_only_where_needed_and_ends_the_same(
    pg_dsn: str,
) -> None:
    from conveyor_stores.postgres import schema as sql_schema
    from conveyor_stores.postgres.store import STALLED_REASON, channel_for

    planned, full = (f"conveyor_plan_{uuid.uuid4().hex[:8]}" for _ in range(2))
    conn = await asyncpg.connect(pg_dsn)
    try:
        # Every step's whole text, each function install included.
        await conn.execute(f'CREATE SCHEMA "{full}"')
        await conn.execute(f'CREATE TABLE "{full}".schema_version (version integer NOT NULL)')
        for _, text in MIGRATIONS:
            await conn.execute(sql_schema.render(text, full, channel_for(full), STALLED_REASON))
        assert await migrate(conn, planned) == 0
        installs = [
            text.count(sql_schema.all_functions_sql())
            for _, text in sql_schema.plan(list(MIGRATIONS))
        ]
        assert 1 <= sum(installs) < len(MIGRATIONS), "a new schema skips needless installs"
        planned_catalog = await _catalog(conn, planned)
        assert planned_catalog == await _catalog(conn, full)
        assert sum(1 for row in planned_catalog if row[0] == "function") == len(
            sql_schema.FUNCTIONS
        )
    finally:
        for name in (planned, full):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()
