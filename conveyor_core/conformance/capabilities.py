"""A store's declared capabilities hold: each claim is checked by what it promises.

A store that claims nothing is not tested for sharing, cross-process events or prompt
wake-ups (those tests are skipped with the reason); a store that claims one of them
must show it, through two store objects on the same data where the claim is about
sharing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from conveyor_core import Job, QueueEvent, QueueEvents
from conveyor_core.store import Failure, StoreCapabilities

from ._support import Harness


def _require(env: Harness, capability: str) -> None:
    if not getattr(env.capabilities, capability):
        pytest.skip(f"the store does not declare the {capability!r} capability")


async def _wakes(env: Harness, q: str, action: Callable[[], Awaitable[object]], what: str) -> None:
    """A wait for work on the second store object ends within the harness's timeout of
    ``action``."""
    woke = anyio.Event()
    # A wake-up left over from what came before (allowed: spurious) would end the wait
    # below whatever ``action`` does: spend them first, until a short wait runs its time.
    for _ in range(100):
        started = time.monotonic()
        await env.second_store.wait_for_work(q, 0.05)
        if time.monotonic() - started >= 0.04:
            break

    async def wait() -> None:
        await env.second_store.wait_for_work(q, 3600.0)
        woke.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.2)  # let the waiter settle into its wait
        await action()
        with anyio.move_on_after(env.timeout):
            await woke.wait()
        tg.cancel_scope.cancel()
    assert woke.is_set(), (
        "the store declares 'blocking_wakeup', but a wait for work was not woken "
        f"within {env.timeout:g}s of {what}"
    )


class CapabilityTests:
    """Every capability the store declares is true of it."""

    async def test_capabilities_are_declared_consistently(self, env: Harness) -> None:
        caps = env.store.capabilities
        assert isinstance(caps, StoreCapabilities), (
            f"store.capabilities must be a StoreCapabilities, got {type(caps).__name__}"
        )
        if caps.cross_process_events:
            assert caps.shared, "cross_process_events is declared without shared"

    async def test_a_shared_store_is_tested_through_a_second_object(self, env: Harness) -> None:
        _require(env, "shared")
        assert env.second_store is not env.store, (
            "the store declares 'shared': give the suite a second store object on the same "
            "data (override the second_store fixture) so the claim can be checked"
        )

    async def test_objects_of_a_shared_store_see_and_take_the_same_jobs(self, env: Harness) -> None:
        _require(env, "shared")
        q = env.name("shared")
        added = await env.queue(q).add("visible", {"n": 1})
        seen = await env.queue(q, store=env.second_store).get_job(added.id)
        assert seen is not None and seen.data == {"n": 1}

        async def handle(job: Job) -> str:
            return f"done by the second object: {job.data['n']}"

        async with env.workers({q: handle}, store=env.second_store):
            assert await added.wait_until_finished(timeout=env.timeout) == (
                "done by the second object: 1"
            )

    async def test_events_cross_store_objects(self, env: Harness) -> None:
        _require(env, "cross_process_events")
        q = env.name("crossing")
        seen: list[QueueEvent] = []
        async with QueueEvents(q, store=env.second_store) as listener:
            listener.on("*", seen.append)
            added = await env.queue(q).add("announced")

            async def arrived() -> bool:
                return any(e.type == "added" and e.job_id == added.id for e in seen)

            await env.wait_for(arrived, "an 'added' event published through the other object")

    async def test_an_idle_wait_wakes_when_work_arrives(self, env: Harness) -> None:
        _require(env, "blocking_wakeup")
        q = env.name("wake")
        await _wakes(env, q, lambda: env.queue(q).add("wake-up"), "a job being added")

    async def test_an_idle_wait_wakes_for_delayed_jobs_changed_delays_and_a_resume(
        self, env: Harness
    ) -> None:
        _require(env, "blocking_wakeup")
        q = env.name("wake-more")
        queue = env.queue(q)
        later = await queue.add("later", None, {"delay": 3600})
        await queue.pause()
        added = lambda: queue.add("soon", None, {"delay": 60})  # noqa: E731
        await _wakes(env, q, added, "a delayed job being added")
        await _wakes(env, q, lambda: later.change_delay(30), "a delayed job's delay being changed")
        await _wakes(env, q, queue.resume, "the queue being resumed")

    async def test_an_idle_wait_wakes_for_the_jobs_of_a_dag(self, env: Harness) -> None:
        _require(env, "blocking_wakeup")
        q = env.name("wake-dag")

        def dag(name: str, opts: dict[str, object]) -> Callable[[], Awaitable[object]]:
            return lambda: env.flow.add_dag(
                [{"id": name, "name": name, "queue_name": q, "opts": opts}]
            )

        await _wakes(env, q, dag("soon", {"delay": 60}), "a delayed job of a DAG being added")
        await _wakes(env, q, dag("now", {}), "a waiting job of a DAG being added")

    async def test_an_idle_wait_wakes_when_a_failed_attempt_waits_for_its_retry(
        self, env: Harness
    ) -> None:
        _require(env, "blocking_wakeup")
        q = env.name("wake-retry")
        await env.queue(q).add("flaky", None, {"attempts": 2})
        now = time.time()
        taken = await env.store.take_jobs(q, limit=1, token="t", lock_until=now + 60, now=now)
        (job,) = taken.jobs
        failure = Failure(job.id, "t", "flaky broke", retry_at=now + 3600)
        await _wakes(
            env,
            q,
            lambda: env.store.fail_jobs(q, [failure], time.time()),
            "a failed attempt entering delayed until its retry",
        )

    async def test_an_idle_wait_returns_by_its_timeout(self, env: Harness) -> None:
        q = env.name("quiet")
        with anyio.fail_after(env.timeout):
            await env.store.wait_for_work(q, 0.2)
