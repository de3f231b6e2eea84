"""Operating a queue: searching and paging its jobs, and the metrics the store keeps."""

from __future__ import annotations

import time

import anyio
import pytest

from conveyor_core import Job, JobState, Queue
from conveyor_core.store import METRICS_MINUTES, Completion, Failure

from ._support import Harness

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING = JobState.WAITING


async def _walk(queue: Queue, cursor: str | None = None, **filters: object) -> list[str]:
    """Every job id a search returns, page after page, in order."""
    ids: list[str] = []
    for _ in range(10_000):
        page = await queue.search_jobs(cursor=cursor, **filters)  # type: ignore[arg-type]
        ids += [job.id for job in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("the search never ended")


async def _take_and(env: Harness, q: str, count: int, now: float) -> list[str]:
    taken = await env.store.take_jobs(q, limit=count, token="op", lock_until=now + 60, now=now)
    return [job.id for job in taken.jobs]


class OperatingTests:
    """Search pages through a queue newest first; metrics count finished jobs per minute."""

    async def test_search_pages_through_every_job_newest_first(self, env: Harness) -> None:
        q = env.name("search")
        queue = env.queue(q)
        added: list[Job] = []
        for i in range(7):
            added += await queue.add_bulk(
                [{"name": "batch", "data": {"i": i, "j": j}} for j in range(3)]
            )
        expected = [
            job.id
            for job in sorted(added, key=lambda job: (job.record.created_at, job.id), reverse=True)
        ]
        page = await queue.search_jobs(limit=5)
        assert 1 <= len(page.jobs) <= 5
        assert page.next_cursor is not None
        assert await _walk(queue, limit=5) == expected
        assert await _walk(queue, limit=1) == expected
        assert await _walk(queue, limit=100) == expected

    async def test_search_matches_ids_names_and_data_ignoring_ascii_case(
        self, env: Harness
    ) -> None:
        q = env.name("text")
        queue = env.queue(q)
        by_id = await queue.add("plain", {"n": 1}, opts={"job_id": "Invoice-0042"})
        by_name = await queue.add("Send-INVOICE", {"n": 2})
        by_data = await queue.add("plain", {"customer": "ACME invoicE dept"})
        await queue.add("plain", {"note": "nothing to see"})
        accented = await queue.add("plain", {"city": "Zürich"})
        other = env.queue(env.name("other"))
        await other.add("invoice", {"x": "invoice"})

        found = set(await _walk(queue, text="invoice"))
        assert found == {by_id.id, by_name.id, by_data.id}
        assert set(await _walk(queue, text="INVOICE")) == found
        assert await _walk(queue, text="Zürich") == [accented.id]
        assert await _walk(queue, text="ZÜRICH") == [], "only ASCII letters ignore case"
        # "-0042", not "0042": generated ids are hex and may hold any four digits.
        assert await _walk(queue, text="-0042") == [by_id.id]
        assert await _walk(queue, text="no such text anywhere") == []
        # Two characters: in an id, a name, some data.
        twos = [
            await queue.add("plain", None, opts={"job_id": "x-q9"}),
            await queue.add("q9-name", None),
            await queue.add("plain", {"k": "q9"}),
        ]
        assert set(await _walk(queue, text="Q9")) == {job.id for job in twos}

    async def test_search_filters_by_name_and_state(self, env: Harness) -> None:
        q = env.name("filters")
        queue = env.queue(q)
        mails = await queue.add_bulk([{"name": "mail", "data": {"i": i}} for i in range(4)])
        await queue.add_bulk([{"name": "sms", "data": {"i": i}} for i in range(3)])
        later = await queue.add("mail", {"i": 9}, opts={"delay": 3600})
        now = time.time()
        taken = await _take_and(env, q, 7, now)
        mail_ids = {job.id for job in mails}
        done = [job_id for job_id in taken if job_id in mail_ids][:2]
        applied = await env.store.complete_jobs(
            q, [Completion(job_id, "op", "null") for job_id in done], now
        )
        assert applied == [True, True]

        assert set(await _walk(queue, name="mail")) == mail_ids | {later.id}
        assert set(await _walk(queue, states=[COMPLETED])) == set(done)
        assert set(await _walk(queue, name="mail", states=["delayed", "completed"])) == {
            later.id,
            *done,
        }
        assert await _walk(queue, name="sms", states=COMPLETED) == []
        assert set(await _walk(queue, text="mail", states=JobState.ACTIVE)) == mail_ids - set(done)

    async def test_search_continues_after_the_last_job_of_a_page_is_removed(
        self, env: Harness
    ) -> None:
        q = env.name("moving")
        queue = env.queue(q)
        added = await queue.add_bulk([{"name": "same-moment", "data": {"i": i}} for i in range(6)])
        added += await queue.add_bulk([{"name": "later", "data": {"i": i}} for i in range(3)])
        first = await queue.search_jobs(limit=4)
        assert len(first.jobs) == 4 and first.next_cursor is not None
        await first.jobs[-1].remove()
        rest = await _walk(queue, limit=4, cursor=first.next_cursor)
        seen = [job.id for job in first.jobs] + rest
        assert len(seen) == len(set(seen)), "a job came back twice"
        assert set(seen) == {job.id for job in added}

    async def test_search_continues_after_the_last_job_of_a_page_is_added_again(
        self, env: Harness
    ) -> None:
        q = env.name("again")
        queue = env.queue(q)
        added = await queue.add_bulk([{"name": "early", "data": {"i": i}} for i in range(8)])
        first = await queue.search_jobs(limit=4)
        assert len(first.jobs) == 4 and first.next_cursor is not None
        last = first.jobs[-1]
        await last.remove()
        await anyio.sleep(0.01)
        # The same id again, newer than every job: it sorts before the page's end.
        await queue.add("again", None, {"job_id": last.id})
        rest = await _walk(queue, limit=4, cursor=first.next_cursor)
        assert sorted(rest) == sorted({job.id for job in added} - {job.id for job in first.jobs})

    async def test_search_resumes_among_jobs_of_one_moment_whose_ids_share_beginnings(
        self, env: Harness
    ) -> None:
        # Jobs created at one moment list by id, descending by code point; a walk goes
        # on after each page's last job is removed, whatever the ids have in common.
        queue = Queue(env.name("one-moment"), store=env.store, clock=lambda: 1_800_000_000.0)
        for job_id in ("a", "bz", "x", "xa", "xb"):
            await queue.add("tie", None, {"job_id": job_id})
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(10):
            page = await queue.search_jobs(limit=2, cursor=cursor)
            seen += [job.id for job in page.jobs]
            if page.jobs:
                await page.jobs[-1].remove()
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == ["xb", "xa", "x", "bz", "a"]

    async def test_a_long_search_page_holds_each_job_once(self, env: Harness) -> None:
        queue = env.queue(env.name("long-page"))
        await queue.add_bulk([{"name": "n", "data": {"i": i}} for i in range(160)])
        everything = await _walk(queue, limit=500)
        assert len(everything) == 160
        page = await queue.search_jobs(limit=150)
        assert [job.id for job in page.jobs] == everything[: len(page.jobs)]

    async def test_search_text_has_no_pattern_characters(self, env: Harness) -> None:
        queue = env.queue(env.name("literal"))
        dotted = await queue.add("n", {"v": "a.c"})
        percent = await queue.add("n", {"v": "50%d"})
        await queue.add("n", {"v": "abc"})
        await queue.add("n", {"v": "50xd"})
        assert await _walk(queue, text="a.c", limit=10) == [dotted.id]
        assert await _walk(queue, text="0%d", limit=10) == [percent.id]

    async def test_search_goes_on_after_a_full_page_found_among_the_newest_jobs(
        self, env: Harness
    ) -> None:
        q = env.name("full-page")
        queue = env.queue(q)
        oldest = await queue.add("needle", None)
        await queue.add_bulk([{"name": "hay", "data": None} for _ in range(130)])
        newer = [await queue.add("needle", None) for _ in range(2)]
        expected = [newer[1].id, newer[0].id, oldest.id]
        assert await _walk(queue, name="needle", limit=2) == expected

    async def test_search_goes_on_past_many_jobs_that_do_not_match(self, env: Harness) -> None:
        q = env.name("sparse")
        queue = env.queue(q)
        needle = await queue.add("needle", None)
        await queue.add_bulk([{"name": "hay", "data": None} for _ in range(6000)])
        assert await _walk(queue, name="needle", limit=5) == [needle.id]

    async def test_search_of_an_unknown_queue_is_empty(self, env: Harness) -> None:
        page = await env.queue(env.name("nothing")).search_jobs(text="x")
        assert page.jobs == [] and page.next_cursor is None

    async def test_search_refuses_bad_input(self, env: Harness) -> None:
        queue = env.queue(env.name("bad"))
        with pytest.raises(ValueError):
            await queue.search_jobs(limit=0)
        with pytest.raises(ValueError):
            await queue.search_jobs(text="a\x00b")
        with pytest.raises(ValueError):
            await queue.search_jobs(states=["finished"])

    async def test_metrics_count_finished_jobs_per_minute(self, env: Harness) -> None:
        q = env.name("metrics")
        queue = env.queue(q)
        await queue.add_bulk([{"name": f"job-{i}", "opts": {"attempts": 2}} for i in range(6)])
        minute = int(time.time() // 60)
        base = minute * 60.0
        first = await _take_and(env, q, 6, base + 1)
        assert await env.store.complete_jobs(
            q, [Completion(job_id, "op", "1") for job_id in first[:3]], base + 2
        ) == [True, True, True]
        retried, final = first[3], first[4:]
        await env.store.fail_jobs(
            q,
            [
                Failure(retried, "op", "try again", retry_at=base + 2),
                *(Failure(job_id, "op", "broken") for job_id in final),
            ],
            base + 3,
        )
        assert await env.store.get_metrics(q, "completed", minute, minute) == {minute: 3}
        assert await env.store.get_metrics(q, "failed", minute, minute) == {minute: 2}, (
            "a retried attempt is not a failed job"
        )

        again = await _take_and(env, q, 1, base + 61)
        assert again == [retried]
        await env.store.complete_jobs(q, [Completion(retried, "op", "1")], base + 62)
        assert await env.store.get_metrics(q, "completed", minute, minute + 1) == {
            minute: 3,
            minute + 1: 1,
        }
        assert await env.store.get_metrics(q, "completed", minute + 2, minute + 9) == {}
        other = env.name("quiet")
        assert await env.store.get_metrics(other, "completed", minute, minute + 1) == {}

    async def test_metrics_keep_a_week_of_minutes_and_drop_older_ones(self, env: Harness) -> None:
        # What a store keeps stays bounded: a minute written for the first time drops
        # the minutes more than METRICS_MINUTES before it, and only those.
        q = env.name("metrics-week")
        await env.queue(q).add_bulk([{"name": "tick"} for _ in range(4)])
        first = int(time.time() // 60) - METRICS_MINUTES - 10
        ids = await _take_and(env, q, 4, first * 60.0)
        week_later = first + 1 + METRICS_MINUTES
        kept = []
        for job_id, minute in zip(ids, (first, first + 1, week_later, week_later), strict=True):
            done = await env.store.complete_jobs(q, [Completion(job_id, "op", "1")], minute * 60.0)
            assert done == [True]
            kept.append(await env.store.get_metrics(q, "completed", first, week_later))
        assert kept == [
            {first: 1},
            {first: 1, first + 1: 1},
            # Written for the first time a week later: the first minute goes at once.
            {first + 1: 1, week_later: 1},
            {first + 1: 1, week_later: 2},
        ]

    async def test_a_call_that_finishes_no_job_writes_no_minute(self, env: Harness) -> None:
        # Only a finished job writes its minute: a call whose jobs were all refused
        # writes none, and so drops none of the minutes before it.
        q = env.name("metrics-none")
        await env.queue(q).add("tick", None)
        first = int(time.time() // 60) - METRICS_MINUTES - 10
        (job_id,) = await _take_and(env, q, 1, first * 60.0)
        done = [Completion(job_id, "op", "1")]
        assert await env.store.complete_jobs(q, done, first * 60.0) == [True]
        week_later = (first + 1 + METRICS_MINUTES) * 60.0
        assert await env.store.complete_jobs(q, done, week_later) == [False]
        assert await env.store.fail_jobs(q, [Failure(job_id, "op", "late")], week_later) == [False]
        last = first + 1 + METRICS_MINUTES
        assert await env.store.get_metrics(q, "completed", first, last) == {first: 1}
        assert await env.store.get_metrics(q, "failed", first, last) == {}

    async def test_metrics_count_every_job_that_enters_failed(self, env: Harness) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "breaks", "queue_name": child_q},
                    {
                        "name": "never-runs",
                        "queue_name": child_q,
                        "opts": {"delay": 3600},
                    },
                ],
            }
        )
        minute = int(time.time() // 60)
        now = minute * 60.0 + 1
        taken = await env.store.take_jobs(
            child_q, limit=1, token="op", lock_until=now + 60, now=now
        )
        assert len(taken.jobs) == 1
        await env.store.fail_jobs(child_q, [Failure(taken.jobs[0].id, "op", "boom")], now)
        # The child failed, its parent failed by policy, its sibling failed with it.
        assert await env.store.get_metrics(child_q, "failed", minute, minute) == {minute: 2}
        assert await env.store.get_metrics(parent_q, "failed", minute, minute) == {minute: 1}

    async def test_stalled_jobs_that_fail_are_counted(self, env: Harness) -> None:
        q = env.name("stalls")
        await env.queue(q).add("hangs", None)
        minute = int(time.time() // 60)
        now = minute * 60.0 + 1
        await env.store.take_jobs(q, limit=1, token="op", lock_until=now + 1, now=now)
        outcomes = await env.store.recover_stalled(q, now + 5, max_stalled_count=0)
        assert [outcome.failed for outcome in outcomes] == [True]
        assert await env.store.get_metrics(q, "failed", minute, minute) == {minute: 1}

    async def test_queue_metrics_series_ends_with_the_current_minute(self, env: Harness) -> None:
        q = env.name("series")
        queue = env.queue(q)
        job = await queue.add("one", None)

        async def handle(job: Job) -> str:
            return "ok"

        async with env.workers({q: handle}):
            await job.wait_until_finished(timeout=env.timeout)
        series = await queue.get_metrics("completed", minutes=3)
        assert len(series) == 3
        # The job finished in this minute or, at a minute's turn, the one before.
        assert series[-1] + series[-2] == 1 and sum(series) == 1
        assert await queue.get_metrics("failed", minutes=3) == [0, 0, 0]
        with pytest.raises(ValueError):
            await queue.get_metrics("retried", minutes=3)  # type: ignore[arg-type]

    async def test_obliterate_deletes_a_queues_metrics(self, env: Harness) -> None:
        q = env.name("gone")
        await env.queue(q).add("one", None)
        minute = int(time.time() // 60)
        now = minute * 60.0 + 1
        (job_id,) = await _take_and(env, q, 1, now)
        await env.store.complete_jobs(q, [Completion(job_id, "op", "1")], now)
        assert await env.store.get_metrics(q, "completed", minute, minute) == {minute: 1}
        await env.queue(q).obliterate()
        assert await env.store.get_metrics(q, "completed", minute, minute) == {}
