"""PostgresStore's events of one transaction, cut into NOTIFY payloads: a piece stays
under PostgreSQL's limit of 8,000 bytes however the events fall, a large event starting a
piece that many small ones then fill to the brim included.

Each test gets its own schema, dropped afterwards from a separate connection.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")

from conveyor_core.models import JobState  # noqa: E402
from conveyor_core.store import NewJob  # noqa: E402
from conveyor_stores.postgres import PostgresStore  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

NOW = 1.0
"""A moment that events print short (``1``): the small events are as small as can be."""

IDS = [*string.ascii_letters, *string.digits]


@pytest.fixture
async def store(pg_dsn: str, pg_schema: str, pg_conn: Any) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as s:
        yield s


def job(job_id: str, name: str = "n") -> list[NewJob]:
    return [NewJob(id=job_id, queue="q", name=name, data="{}", opts="{}", state=JobState.WAITING)]


@pytest.mark.parametrize("size", [3850, 3870, 3890, 3901])
async def test_a_large_event_and_many_small_ones_fit_their_pieces(
    store: PostgresStore, size: int
) -> None:
    # A job of a one-character id, one named with `size` characters (its "added" event
    # just under the piece size), then 150 more of one- and two-character ids: 302
    # events of 28 to 39 bytes.
    small = [*IDS, *(a + b for a in IDS for b in IDS)][:151]
    groups = [job(small[0]), job("_", "N" * size), *(job(i) for i in small[1:])]
    assert await store.add_jobs(groups, NOW) == [True] * len(groups)
    counts = await store.get_counts("q")
    assert counts[JobState.WAITING] == len(groups)
