"""The conformance suite against ``PostgresStore``, with a second store object (its own
pool and listener) on the same schema, so events and worker races cross store objects
as they cross processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

asyncpg = pytest.importorskip("asyncpg")

from conveyor_core.conformance import StoreConformance  # noqa: E402
from conveyor_stores.postgres import PostgresStore  # noqa: E402


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop the test's schema from a separate connection."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


_CLEAN: list[tuple[str, str]] = []
"""Schemas of earlier tests, emptied: a test takes one rather than creating its own (a
new schema costs its tables, functions and triggers; emptying one costs one TRUNCATE)."""


async def _empty(dsn: str, schema: str) -> bool:
    """Bring a schema back to how its creation left it: no rows but its version, every
    sequence at its start. False if that could not be done (a lock held elsewhere)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET lock_timeout = '2s'")
        # Statements built by the server, which quotes the names (format's %I).
        statements = await conn.fetchval(
            "SELECT (SELECT 'TRUNCATE ' || string_agg(format('%I.%I', schemaname, tablename), "
            "', ') FROM pg_tables WHERE schemaname = $1 AND tablename <> 'schema_version') "
            "|| '; ' || coalesce((SELECT string_agg(format('ALTER SEQUENCE %I.%I RESTART', "
            "schemaname, sequencename), '; ') FROM pg_sequences WHERE schemaname = $1), '')",
            schema,
        )
        await conn.execute(statements)
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()
    return True


@pytest.fixture(scope="module")
def _drop_clean_schemas() -> Iterator[None]:
    yield
    while _CLEAN:
        anyio.run(drop_schema, *_CLEAN.pop())


class TestPostgresStoreConformance(StoreConformance):
    @pytest.fixture
    async def store(
        self, pg_dsn: str, pg_schema: str, _drop_clean_schemas: None
    ) -> AsyncIterator[PostgresStore]:
        dsn, schema = _CLEAN.pop() if _CLEAN else (pg_dsn, pg_schema)
        clean = False
        try:
            async with PostgresStore(dsn, schema=schema, min_size=1, max_size=6) as store:
                yield store
            clean = await _empty(dsn, schema)
        finally:
            if clean:
                _CLEAN.append((dsn, schema))
            else:
                await drop_schema(dsn, schema)

    @pytest.fixture
    async def second_store(self, store: PostgresStore, pg_dsn: str) -> AsyncIterator[PostgresStore]:
        async with PostgresStore(pg_dsn, schema=store.schema, min_size=1, max_size=6) as second:
            yield second
