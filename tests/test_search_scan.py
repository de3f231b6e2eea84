"""Search that walks a queue (no index serves its filters) bounds the work of one call:
pages may come back short, yet a walk through every page finds every match once."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from reliability.stores import drop_location, make_store, new_location, skip_unless_available

from conveyor_core import JobState, Queue
from conveyor_core.store import Completion, StoreInterface

pytestmark = pytest.mark.anyio

SCAN_LIMITS = {
    "sqlite": ("conveyor_stores.sqlite.backend", "_SEARCH_SCAN"),
    "postgres": ("conveyor_stores.postgres.schema", "SEARCH_SCAN"),
    "redis": ("conveyor_stores.redis.store", "SEARCH_SCAN"),
}


@pytest.fixture(params=list(SCAN_LIMITS))
async def store(
    request: pytest.FixtureRequest, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StoreInterface]:
    kind = request.param
    skip_unless_available(kind)
    module, name = SCAN_LIMITS[kind]
    monkeypatch.setattr(f"{module}.{name}", 7)
    location = new_location(kind, str(tmp_path))
    try:
        async with make_store(location) as opened:
            yield opened
    finally:
        await drop_location(location)


async def test_a_sparse_match_is_found_across_short_pages(store: StoreInterface) -> None:
    queue = Queue("sparse", store=store)
    jobs = []
    for i in range(40):
        jobs.append(await queue.add("rare" if i % 13 == 0 else "common", {"i": i}))
    rare = [job.id for job in reversed(jobs) if job.name == "rare"]
    taken = await store.take_jobs("sparse", limit=40, token="t", lock_until=9e9, now=1.0)
    done = [job.id for job in taken.jobs if job.data == '{"i":26}']
    await store.complete_jobs("sparse", [Completion(done[0], "t", "1")], 2.0)

    for filters, expected in (
        ({"name": "rare"}, rare),
        ({"states": [JobState.COMPLETED]}, done),
        ({"text": "ra"}, rare),  # too short for any text index: a walk
    ):
        found: list[str] = []
        pages = 0
        cursor: str | None = None
        while True:
            page = await queue.search_jobs(limit=2, cursor=cursor, **filters)  # type: ignore[arg-type]
            pages += 1
            found += [job.id for job in page.jobs]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert found == expected, filters
        assert pages >= 40 // 7, "each call looks at no more than its budget of jobs"


@pytest.mark.parametrize("one_moment", [False, True], ids=["apart", "one-moment"])
async def test_a_walk_of_short_pages_returns_each_job_once(
    store: StoreInterface, one_moment: bool
) -> None:
    # Every job matches and a call runs out of its budget before its page is full:
    # the next page starts right after the last job looked at, whether the jobs were
    # created apart or at one moment (then ordered by id alone).
    ticks = itertools.count(1_800_000_000)
    queue = Queue(
        "walk",
        store=store,
        clock=(lambda: 1_800_000_000.0) if one_moment else (lambda: float(next(ticks))),
    )
    added = [(await queue.add("job", {"i": i})).id for i in range(120)]
    found: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page = await queue.search_jobs(limit=10, cursor=cursor, states=[JobState.WAITING])
        found += [job.id for job in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = sorted(added, reverse=True) if one_moment else added[::-1]
    assert found == expected
