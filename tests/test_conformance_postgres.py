"""The conformance suite against ``PostgresStore``, with a second store object (its own
pool and listener) on the same schema, so events and worker races cross store objects
as they cross processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

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


class TestPostgresStoreConformance(StoreConformance):
    @pytest.fixture
    async def store(self, pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresStore]:
        try:
            async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=6) as store:
                yield store
        finally:
            await drop_schema(pg_dsn, pg_schema)

    @pytest.fixture
    async def second_store(
        self, store: PostgresStore, pg_dsn: str, pg_schema: str
    ) -> AsyncIterator[PostgresStore]:
        async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=6) as second:
            yield second
