"""Edges of single transitions: a retried attempt's lock, removing children whose link
to the parent is gone or resolved, obliterating a queue that holds another queue's
children, and long scans."""

from __future__ import annotations

import time

from conveyor_core import JobState
from conveyor_core.store import Failure

from ._support import Harness, Runs, nodes_by_name

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
FAILED = JobState.FAILED
COMPLETED = JobState.COMPLETED
WAITING_CHILDREN = JobState.WAITING_CHILDREN


class EdgeTests:
    """Transitions at their edges, each a behaviour a user can see."""

    async def test_a_failed_attempt_that_is_retried_holds_no_lock(self, env: Harness) -> None:
        q = env.name("retried")
        soon = await env.queue(q).add("soon", None, {"attempts": 3})
        later = await env.queue(q).add("later", None, {"attempts": 3})
        now = time.time()
        taken = await env.store.take_jobs(q, limit=2, token="first", lock_until=now + 60, now=now)
        assert {job.id for job in taken.jobs} == {soon.id, later.id}
        applied = await env.store.fail_jobs(
            q,
            [
                Failure(soon.id, "first", "broke", retry_at=now),
                Failure(later.id, "first", "broke", retry_at=now + 3600),
            ],
            now,
        )
        assert applied == [True, True]
        for job, state in ((soon, WAITING), (later, DELAYED)):
            record = await env.store.get_job(q, job.id)
            assert record is not None and record.state is state
            assert (record.lock_token, record.lock_until) == (None, None), job.name
            assert (record.attempts_made, record.failed_reason) == (1, "broke")

    async def test_children_removed_after_their_link_was_dropped_or_resolved(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {
                        "name": "dropped",
                        "queue_name": child_q,
                        "opts": {"remove_dependency_on_failure": True},
                    },
                    {"name": "kept", "queue_name": child_q},
                ],
            }
        )
        jobs = nodes_by_name(node)
        async with env.workers({child_q: Runs().handler(fail={"dropped"})}):
            await env.wait_state(jobs["parent"], WAITING)
        assert await env.state(jobs["dropped"]) is FAILED
        # The failed child no longer counts for its parent: removing it changes nothing
        # there.
        await jobs["dropped"].remove()
        assert await env.reread(jobs["dropped"]) is None
        # A completed child's value stays with its parent after the child is removed.
        await jobs["kept"].remove()
        assert await env.reread(jobs["kept"]) is None
        assert await env.state(jobs["parent"]) is WAITING
        assert await jobs["parent"].get_children_values() == {jobs["kept"].id: {"done": "kept"}}

    async def test_obliterating_a_queue_releases_parents_waiting_on_its_jobs(
        self, env: Harness
    ) -> None:
        parent_q, child_q = env.name("parent"), env.name("child")
        node = await env.flow.add(
            {
                "name": "parent",
                "queue_name": parent_q,
                "children": [
                    {"name": "first", "queue_name": child_q},
                    {"name": "second", "queue_name": child_q, "opts": {"delay": 3600}},
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert await env.state(jobs["parent"]) is WAITING_CHILDREN
        await env.queue(child_q).obliterate()
        assert await env.total(child_q) == 0
        assert await env.state(jobs["parent"]) is WAITING
        assert await jobs["parent"].get_children_values() == {}

    async def test_a_search_over_hundreds_of_jobs_finds_every_match(self, env: Harness) -> None:
        q = env.name("many")
        queue = env.queue(q)
        added = await queue.add_bulk(
            [{"name": "hit" if i % 3 else "miss", "data": {"i": i}} for i in range(250)]
        )
        newest_first = sorted(added, key=lambda job: (job.record.created_at, job.id), reverse=True)
        hits = [job.id for job in newest_first if job.name == "hit"]
        found: list[str] = []
        cursor: str | None = None
        for _ in range(1000):
            page = await queue.search_jobs(text="hit", limit=1000, cursor=cursor)
            found += [job.id for job in page.jobs]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert found == hits
