"""PostgresStore's search walks: a page's walk looks at ``SEARCH_SCAN`` jobs at most and
the next page resumes right below the last of them, and a text of three characters or
more that the walk finds few of goes through the trigram index from the cursor on.

Each test gets its own schema, dropped afterwards from a separate connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")

from conveyor_core.models import JobState  # noqa: E402
from conveyor_core.store import NewJob  # noqa: E402
from conveyor_stores.postgres import PostgresStore  # noqa: E402
from conveyor_stores.postgres.schema import SEARCH_SCAN  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

NOW = 1_000_000.0


@pytest.fixture
async def store(pg_dsn: str, pg_schema: str, pg_conn: Any) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(pg_dsn, schema=pg_schema, min_size=1, max_size=2) as s:
        yield s


def job(job_id: str, name: str, data: str = "{}") -> NewJob:
    return NewJob(id=job_id, queue="q", name=name, data=data, opts="{}", state=JobState.WAITING)


async def walk(store: PostgresStore, limit: int, **filters: Any) -> list[str]:
    """Every id a walk through the pages finds, in order."""
    found: list[str] = []
    cursor = None
    for _ in range(100):
        page = await store.search_jobs(
            "q",
            text=filters.get("text"),
            name=filters.get("name"),
            states=filters.get("states"),
            limit=limit,
            cursor=cursor,
        )
        found.extend(record.id for record in page.jobs)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor
    raise AssertionError("the walk did not end")


async def test_a_walk_resumes_right_below_the_last_job_a_page_looked_at(
    store: PostgresStore,
) -> None:
    # One moment, ids in order: newest first is the highest id. The jobs right at the
    # walk's bound (the SEARCH_SCAN-th newest and the next one) are the needles.
    total = SEARCH_SCAN + 2
    needles = {f"j{total - SEARCH_SCAN:05d}", f"j{total - SEARCH_SCAN - 1:05d}"}
    jobs = [job(f"j{i:05d}", "needle" if f"j{i:05d}" in needles else "hay") for i in range(total)]
    await store.add_jobs([[new] for new in jobs], NOW)
    assert await walk(store, 10, name="needle") == sorted(needles, reverse=True)


async def test_a_text_walk_through_the_index_resumes_below_its_cursor(
    store: PostgresStore,
) -> None:
    texts = [job(f"t{i}", "mail", '{"note": "zqx"}') for i in range(3)]
    others = [job("o1", "sms", '{"note": "zqx"}'), job("o2", "mail", '{"note": "other"}')]
    await store.add_jobs([[new] for new in [*others, *texts]], NOW)
    assert await walk(store, 1, text="zqx", name="mail") == ["t2", "t1", "t0"]
    assert await walk(store, 1, text="zqx", states=[JobState.WAITING]) == ["t2", "t1", "t0", "o1"]
