"""Model-based test of the store protocol: random sequences of transitions, checked step by
step against an independent reference model (``tests/reliability/model.py``).

The state machine drives stores at the protocol level (``NewJob``, ``take_jobs``,
``Completion``, ``Failure``, ...) with a clock of its own: every call gets ``now`` from
the machine, and a rule moves time forward, so locks expire and delayed jobs fall due
on demand. After each step every store is read back whole (jobs, listings, counts,
dependencies, paused flags) and compared with the model. MemoryStore runs alone; each
other store runs beside MemoryStore on the same sequence, each against its own model.

``CONVEYOR_FAULT_SCALE=10`` multiplies the number of examples for a long run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from reliability.model import STORE_CLOCK, Key, Model, Snapshot, is_subsequence, orderings
from reliability.stores import drop_location, make_store, new_location, skip_unless_available

from conveyor_core.errors import ConveyorError, JobNotFoundError
from conveyor_core.models import JobState, ParentPolicy
from conveyor_core.store import (
    Completion,
    DagEdge,
    EventSubscription,
    Failure,
    NewJob,
    Release,
    StoreInterface,
)

SCALE = max(1, int(os.environ.get("CONVEYOR_FAULT_SCALE", "1")))
T0 = 3_000_000_000.0
"""Far ahead of the wall clock, which a store must use where the protocol passes no
``now`` (``remove_job`` releasing a delayed parent): such a ``run_at`` is always due."""
ODD_ID_STEMS = ("j", "j:'", 'j"{x}', "jé ", "j%*", "j\\n")
POLICIES = tuple(ParentPolicy)


def _run_settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


class ProtocolMachine(RuleBasedStateMachine):
    """Applies each step to every store under test and to one model per store."""

    runner: ClassVar[asyncio.Runner]
    stores: ClassVar[list[StoreInterface]]
    labels: ClassVar[list[str]]

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:8]
        self.flow_queues = [f"{tag}:a", f"{tag}{{b}}'\""]
        self.ret_queue = f"{tag} ret é"
        self.queues = [*self.flow_queues, self.ret_queue]
        self.now = T0
        self.models = [Model(self.queues) for _ in self.stores]
        self.counter = 0
        self.rng = random.Random(0)
        self.subs: list[list[EventSubscription]] = []

    # ------------------------------------------------------------------ plumbing

    def run(self, awaitable: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await awaitable

        return self.runner.run(wrap())

    def fresh(self, stem: str = "j") -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def pairs(self) -> list[tuple[int, StoreInterface, Model]]:
        for model in self.models:
            model.now = self.now
        return [(i, s, m) for i, (s, m) in enumerate(zip(self.stores, self.models, strict=True))]

    def same(
        self,
        what: str,
        call: Callable[[StoreInterface], Awaitable[Any]],
        apply: Callable[[Model], Any],
        norm: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        """Run one transition on every store and model; results and errors must agree."""
        for i, store, model in self.pairs():
            want: tuple[str, Any]
            got: tuple[str, Any]
            try:
                want = ("ok", norm(apply(model)))
            except ConveyorError as exc:
                want = ("error", type(exc).__name__)
            try:
                got = ("ok", norm(self.run(call(store))))
            except ConveyorError as exc:
                got = ("error", type(exc).__name__)
            assert got == want, f"{self.labels[i]}: {what}: store gave {got}, model {want}"

    @initialize()
    def subscribe(self) -> None:
        for store in self.stores:
            self.subs.append([self.run(store.subscribe(q)) for q in self.queues])

    # ------------------------------------------------------------------ adding

    def _job(self, data: st.DataObject, queue: str, state: JobState, **extra: Any) -> NewJob:
        job_id = self.fresh(data.draw(st.sampled_from(ODD_ID_STEMS)))
        keep_failed_choices = [None, 0, 2] if queue == self.ret_queue else [None, 0]
        return NewJob(
            id=job_id,
            queue=queue,
            name=f"task-{job_id}",
            data=json.dumps({"n": self.counter, "text": "héllo \u2603"}, ensure_ascii=False),
            opts=json.dumps({"attempts": 3}),
            state=state,
            priority=data.draw(st.sampled_from([0, 0, 0, 1, 2])),
            lifo=data.draw(st.booleans()),
            delay=extra.pop("delay", 0.0),
            keep_completed=data.draw(st.sampled_from([None, None, 0, 2])),
            keep_failed=data.draw(st.sampled_from(keep_failed_choices)),
            group_id=data.draw(st.sampled_from([None, None, "a", "b"])),
            **extra,
        )

    def _standalone(self, data: st.DataObject) -> NewJob:
        queue = data.draw(st.sampled_from(self.queues))
        delay = data.draw(st.sampled_from([0.0, 0.0, 0.0, 2.0, 10.0]))
        state = JobState.DELAYED if delay else JobState.WAITING
        return self._job(data, queue, state, delay=delay)

    def _flow(self, data: st.DataObject) -> list[NewJob]:
        """A tree of up to three levels, parents before children (pre-order)."""
        out: list[NewJob] = []

        def node(depth: int, parent: NewJob | None) -> None:
            queue = data.draw(st.sampled_from(self.flow_queues))
            fanout = 0
            if depth < 3:
                low = 1 if depth == 1 else 0
                fanout = data.draw(st.integers(low, 3 if depth == 1 else 2))
            delay = data.draw(st.sampled_from([0.0, 0.0, 0.0, 3.0]))
            if fanout:
                state = JobState.WAITING_CHILDREN
            else:
                state = JobState.DELAYED if delay else JobState.WAITING
            extra: dict[str, Any] = {"delay": delay}
            if parent is not None:
                extra.update(
                    parent_id=parent.id,
                    parent_queue=parent.queue,
                    parent_policy=data.draw(st.sampled_from(POLICIES)),
                )
            job = self._job(data, queue, state, **extra)
            out.append(job)
            for _ in range(fanout):
                node(depth + 1, job)

        node(1, None)
        return out

    def _existing(self, data: st.DataObject) -> Key | None:
        keys = sorted(self.models[0].jobs)
        return data.draw(st.sampled_from(keys)) if keys else None

    def _add(self, groups: list[list[NewJob]]) -> None:
        self.same(
            f"add_jobs {[[(j.queue, j.id) for j in g] for g in groups]}",
            lambda s: s.add_jobs(groups, self.now),
            lambda m: m.add_jobs(groups),
        )

    @rule(data=st.data())
    def add_standalone(self, data: st.DataObject) -> None:
        self._add([[self._standalone(data)]])

    @rule(data=st.data())
    def add_flow(self, data: st.DataObject) -> None:
        self._add([self._flow(data)])

    @rule(data=st.data())
    def add_bulk(self, data: st.DataObject) -> None:
        groups: list[list[NewJob]] = []
        for _ in range(data.draw(st.integers(2, 4))):
            groups.append(
                self._flow(data) if data.draw(st.booleans()) else [self._standalone(data)]
            )
        twist = data.draw(st.sampled_from(["none", "none", "skip", "clash", "twice"]))
        existing = self._existing(data)
        if twist == "skip" and existing is not None:
            # A group whose first job exists is skipped; the other groups are written.
            head = groups[0][0]
            old_key = (head.queue, head.id)
            head.queue, head.id = existing
            for job in groups[0][1:]:
                if (job.parent_queue, job.parent_id) == old_key:
                    job.parent_queue, job.parent_id = existing
        elif twist == "clash" and existing is not None and len(groups[-1]) > 1:
            # Any other job whose id exists: the whole call writes nothing.
            groups[-1][-1].queue, groups[-1][-1].id = existing
        elif twist == "twice":
            dup = groups[0][0]
            groups.append([NewJob(dup.id, dup.queue, "again", "1", "{}", JobState.WAITING)])
        self._add(groups)

    def _adopted(self, data: st.DataObject, parent: Key) -> list[list[NewJob]]:
        """One or two groups (a flow or a standalone job) whose first jobs are children of
        the existing job ``parent``."""
        groups = []
        for _ in range(data.draw(st.integers(1, 2))):
            group = self._flow(data) if data.draw(st.booleans()) else [self._standalone(data)]
            head = group[0]
            head.parent_queue, head.parent_id = parent
            head.parent_policy = data.draw(st.sampled_from(POLICIES))
            groups.append(group)
        return groups

    @rule(data=st.data())
    def add_to_existing_parent(self, data: st.DataObject) -> None:
        """``opts.parent``: any job, in any state (or a missing one), as the parent."""
        existing = self._existing(data)
        if existing is None or data.draw(st.integers(0, 9)) == 0:
            existing = (self.queues[0], "missing")
        self._add(self._adopted(data, existing))

    @rule(data=st.data())
    def add_children(self, data: st.DataObject) -> None:
        queue, job_id, token = self._target(data)
        groups = self._adopted(data, (queue, job_id))
        self.same(
            f"add_children {(queue, job_id, token)} {[[j.id for j in g] for g in groups]}",
            lambda s: s.add_children(queue, job_id, token, groups, self.now),
            lambda m: m.add_children(queue, job_id, token, groups),
        )

    @rule(data=st.data())
    def park(self, data: st.DataObject) -> None:
        queue, job_id, token = self._target(data)
        self.same(
            f"park_job {(queue, job_id, token)}",
            lambda s: s.park_job(queue, job_id, token, self.now),
            lambda m: m.park(queue, job_id, token),
        )

    @rule(data=st.data())
    def add_dag(self, data: st.DataObject) -> None:
        """A DAG of new jobs, each depending on some of the earlier ones (shared jobs),
        sometimes on a job already in the store; each edge with its own policy."""
        jobs: list[NewJob] = []
        edges: list[DagEdge] = []
        for index in range(data.draw(st.integers(1, 5))):
            picks = data.draw(st.sets(st.integers(0, index - 1), max_size=3)) if index else set()
            deps = [(jobs[i].queue, jobs[i].id) for i in sorted(picks)]
            existing = self._existing(data) if data.draw(st.integers(0, 4)) == 0 else None
            if existing is not None and existing not in deps:
                deps.append(existing)
            queue = data.draw(st.sampled_from(self.flow_queues))
            delay = data.draw(st.sampled_from([0.0, 0.0, 0.0, 3.0]))
            if deps:
                state = JobState.WAITING_CHILDREN
            else:
                state = JobState.DELAYED if delay else JobState.WAITING
            job = self._job(data, queue, state, delay=delay)
            if not deps:
                job.priority = -1  # taken first: shared jobs run (and fail) in few steps
            jobs.append(job)
            for child_queue, child_id in deps:
                policy = data.draw(st.sampled_from(POLICIES))
                edges.append(DagEdge(job.queue, job.id, child_queue, child_id, policy))
        if data.draw(st.integers(0, 9)) == 0 and (existing := self._existing(data)):
            # The last job takes the key of a job that exists (nothing is written), as a
            # leaf: its edges go, so the DAG's shape stays valid.
            last = (jobs[-1].queue, jobs[-1].id)
            jobs[-1].queue, jobs[-1].id = existing
            edges = [e for e in edges if (e.parent_queue, e.parent_id) != last]
        self.same(
            f"add_dag {[(j.queue, j.id) for j in jobs]} {edges}",
            lambda s: s.add_dag(jobs, edges, self.now),
            lambda m: m.add_dag(jobs, edges),
        )

    # ------------------------------------------------------------------ working

    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        queue = data.draw(st.sampled_from(self.queues))
        limit = data.draw(st.integers(1, 3))
        token = self.fresh("tok-")
        lock_until = self.now + data.draw(st.sampled_from([1.0, 10.0]))
        for i, store, model in self.pairs():
            result = self.run(
                store.take_jobs(
                    queue, limit=limit, token=token, lock_until=lock_until, now=self.now
                )
            )
            problems = model.take(queue, [j.id for j in result.jobs], limit, token, lock_until)
            if model.next_run_at(queue) != STORE_CLOCK and result.next_run_at != model.next_run_at(
                queue
            ):
                problems.append(
                    f"next_run_at {result.next_run_at}, model {model.next_run_at(queue)}"
                )
            for job in result.jobs:
                if job.state is not JobState.ACTIVE or job.lock_token != token:
                    problems.append(f"taken job {job.id} came back as {job.state}/{job.lock_token}")
            assert not problems, f"{self.labels[i]}: take({queue!r}, {limit}): {problems}"

    def _target(self, data: st.DataObject) -> tuple[str, str, str]:
        """(queue, job id, token): usually an active job with its own token."""
        active = sorted(
            (k, j.lock_token or "") for k, j in self.models[0].jobs.items() if j.lock_token
        )
        if not active or data.draw(st.integers(0, 9)) == 0:
            key = self._existing(data) or (self.queues[0], "nope")
            return key[0], key[1], "tok-wrong"
        (queue, job_id), token = data.draw(st.sampled_from(active))
        if data.draw(st.integers(0, 5)) == 0:
            token = data.draw(st.sampled_from([t for _, t in active] + ["tok-wrong"]))
        return queue, job_id, token

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        items = [self._target(data) for _ in range(data.draw(st.integers(1, 2)))]
        queue = items[0][0]
        completions = [
            Completion(job_id, token, json.dumps({"v": job_id}, ensure_ascii=False))
            for _, job_id, token in items
        ]
        self.same(
            f"complete_jobs {items}",
            lambda s: s.complete_jobs(queue, completions, self.now),
            lambda m: [m.complete(queue, c.id, c.token, c.return_value) for c in completions],
        )

    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        items = [self._target(data) for _ in range(data.draw(st.integers(1, 2)))]
        queue = items[0][0]
        failures = []
        for _, job_id, token in items:
            retry = data.draw(st.sampled_from([None, None, 0.0, 3.0]))
            retry_at = None if retry is None else self.now + retry
            failures.append(Failure(job_id, token, f"boom {job_id}", ["line 1"], retry_at))
        self.same(
            f"fail_jobs {failures}",
            lambda s: s.fail_jobs(queue, failures, self.now),
            lambda m: [m.fail(queue, f.id, f.token, f.reason, f.retry_at) for f in failures],
        )

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        queue, job_id, token = self._target(data)
        self.same(
            f"release_jobs {(queue, job_id, token)}",
            lambda s: s.release_jobs(queue, [Release(job_id, token)], self.now),
            lambda m: [m.release(queue, job_id, token)],
        )

    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        queue, job_id, token = self._target(data)
        until = self.now + 10.0
        self.same(
            f"extend_locks {(queue, job_id, token)}",
            lambda s: s.extend_locks(queue, [(job_id, token)], until),
            lambda m: m.extend_locks(queue, [(job_id, token)], until),
            norm=set,
        )

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 11.0, 31.0]))
    def advance_time(self, seconds: float) -> None:
        self.now += seconds

    @rule(data=st.data())
    def recover_stalled(self, data: st.DataObject) -> None:
        queue = data.draw(st.sampled_from(self.queues))
        most = data.draw(st.integers(0, 2))
        for i, store, model in self.pairs():
            outcomes = self.run(store.recover_stalled(queue, self.now, most))
            got = {(o.id, o.failed) for o in outcomes}
            candidates = []
            for order in orderings(model.expired(queue), self.rng):
                candidate = model.clone()
                candidates.append((candidate, candidate.recover_stalled(order, most)))
            self._choose(i, f"recover_stalled({queue!r}, {most})", got, candidates)

    def _choose(self, i: int, what: str, got: Any, candidates: list[tuple[Model, Any]]) -> None:
        """Keep the first modelled outcome the store's matches (result and state)."""
        snap = self.run(snapshot(self.stores[i], self.queues, self.models[i].ever_parent))
        first: list[str] | None = None
        for candidate, result in candidates:
            problems = candidate.check(snap)
            if result != got:
                problems.insert(0, f"result {got}, model {result}")
            if not problems:
                self.models[i] = candidate
                return
            first = first or problems
        raise AssertionError(f"{self.labels[i]}: {what}: no allowed order matches: {first}")

    # ------------------------------------------------------------------ job and queue changes

    @rule(data=st.data())
    def retry_job(self, data: st.DataObject) -> None:
        failed = sorted(k for k, j in self.models[0].jobs.items() if j.state is JobState.FAILED)
        if failed and data.draw(st.integers(0, 4)):
            queue, job_id = data.draw(st.sampled_from(failed))
        else:
            queue, job_id = self._existing(data) or (self.queues[0], "nope")
        self.same(
            f"retry_job {(queue, job_id)}",
            lambda s: s.retry_job(queue, job_id, self.now),
            lambda m: m.retry_job(queue, job_id),
        )

    @rule(data=st.data())
    def retry_jobs(self, data: st.DataObject) -> None:
        queue = data.draw(st.sampled_from(self.queues))
        if any(len(m.failed_keys(queue)) > 5 for m in self.models):
            return
        for i, store, model in self.pairs():
            count = self.run(store.retry_jobs(queue, JobState.FAILED, self.now))
            candidates = []
            for order in orderings(model.failed_keys(queue), self.rng):
                candidate = model.clone()
                candidates.append((candidate, candidate.retry_jobs(order)))
            self._choose(i, f"retry_jobs({queue!r})", count, candidates)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        queue, job_id = self._existing(data) or (self.queues[0], "nope")
        reason = data.draw(st.sampled_from(["cancelled", "cancelled: stop ☃"]))
        self.same(
            f"cancel_job {(queue, job_id)}",
            lambda s: s.cancel_job(queue, job_id, reason, self.now),
            lambda m: m.cancel(queue, job_id, reason),
        )
        active = sorted(j.id for j in self.models[0].jobs.values() if j.queue == queue)
        self.same(
            f"cancel_requests {queue}",
            lambda s: s.cancel_requests(queue, [*active, "nope"]),
            lambda m: m.cancel_requests(queue, [*active, "nope"]),
        )

    @rule(data=st.data())
    def remove_job(self, data: st.DataObject) -> None:
        queue, job_id = self._existing(data) or (self.queues[0], "nope")
        self.same(
            f"remove_job {(queue, job_id)}",
            lambda s: s.remove_job(queue, job_id),
            lambda m: m.remove_job(queue, job_id),
        )

    @rule(data=st.data())
    def promote_job(self, data: st.DataObject) -> None:
        delayed = sorted(k for k, j in self.models[0].jobs.items() if j.state is JobState.DELAYED)
        if delayed and data.draw(st.booleans()):
            queue, job_id = data.draw(st.sampled_from(delayed))
        else:
            queue, job_id = self._existing(data) or (self.queues[0], "nope")
        self.same(
            f"promote_job {(queue, job_id)}",
            lambda s: s.promote_job(queue, job_id, self.now),
            lambda m: m.promote_job(queue, job_id),
        )

    @rule(data=st.data())
    def promote_jobs(self, data: st.DataObject) -> None:
        queue = data.draw(st.sampled_from(self.queues))
        self.same(
            f"promote_jobs {queue!r}",
            lambda s: s.promote_jobs(queue, self.now),
            lambda m: m.promote_jobs(queue),
        )

    @rule(data=st.data(), pause=st.booleans())
    def pause_or_resume(self, data: st.DataObject, pause: bool) -> None:
        queue = data.draw(st.sampled_from(self.queues))

        def apply(model: Model) -> None:
            if pause:
                model.paused.add(queue)
            else:
                model.paused.discard(queue)

        self.same(
            f"{'pause' if pause else 'resume'} {queue!r}",
            lambda s: s.pause(queue) if pause else s.resume(queue),
            apply,
        )

    # ------------------------------------------------------------------ checking

    @invariant()
    def stores_match_models(self) -> None:
        for i, store, model in self.pairs():
            snap = self.run(snapshot(store, self.queues, model.ever_parent))
            problems = model.check(snap)
            assert not problems, f"{self.labels[i]} differs from the model:\n" + "\n".join(problems)

    def teardown(self) -> None:
        """Parents were released at most once per entry into waiting-children."""
        try:
            for i, subs in enumerate(self.subs):
                seen = self.run(_collect(subs, 0.002 if self.labels[i] == "memory" else 0.05))
                model = self.models[i]
                for key in sorted(model.ever_parent):
                    expected = model.parent_events.get(key, [])
                    observed = seen.get(key, [])
                    ok = (
                        observed == expected
                        if self.labels[i] == "memory"
                        else is_subsequence(observed, expected)
                    )
                    assert ok, (
                        f"{self.labels[i]}: events of parent {key}: {observed}, "
                        f"model {expected} (releases: {model.releases.get(key, 0)})"
                    )
        finally:
            for subs in self.subs:
                for sub in subs:
                    self.run(sub.aclose())


async def _collect(subs: Sequence[EventSubscription], quiet: float) -> dict[Key, list[str]]:
    """Read what each subscription has until it is quiet for ``quiet`` seconds."""
    seen: dict[Key, list[str]] = {}
    for sub in subs:
        while True:
            event = None
            with anyio.move_on_after(quiet):
                event = await sub.__anext__()
            if event is None:
                break
            if event.job_id is not None and event.type in (
                "waiting",
                "delayed",
                "waiting-children",
            ):
                seen.setdefault((event.queue, event.job_id), []).append(event.type)
    return seen


async def snapshot(store: StoreInterface, queues: Sequence[str], parents: set[Key]) -> Snapshot:
    """Everything the model checks, read from the store."""
    jobs = {}
    listings = {}
    counts = {}
    paused = {}
    for queue in queues:
        for state in JobState:
            records = await store.get_jobs(queue, [state], 0, None)
            listings[(queue, state)] = [r.id for r in records]
            for record in records:
                assert (queue, record.id) not in jobs, f"{record.id} listed in two states"
                jobs[(queue, record.id)] = record
        counts[queue] = {JobState(k): v for k, v in (await store.get_counts(queue)).items()}
        paused[queue] = await store.is_paused(queue)
    deps = {}
    for key in sorted(parents):
        try:
            deps[key] = await store.get_dependencies(*key)
        except JobNotFoundError:
            deps[key] = None
    wanted = set(queues)
    listed = [q for q in await store.list_queues() if q in wanted]
    return Snapshot(jobs, listings, counts, paused, deps, listed)


def _check(kinds: list[str], tmpdir: str, examples: int, steps: int) -> None:
    for kind in kinds:
        skip_unless_available(kind)
    with asyncio.Runner() as runner:
        locations = [new_location(kind, tmpdir) for kind in kinds]
        stores = [make_store(location) for location in locations]
        try:
            for store in stores:
                runner.run(store.connect())
            machine = type(
                "ProtocolMachine_" + "_".join(kinds),
                (ProtocolMachine,),
                {"runner": runner, "stores": stores, "labels": kinds},
            )
            run_state_machine_as_test(machine, settings=_run_settings(examples, steps))
        finally:
            for store in stores:
                runner.run(store.close())
            for location in locations:
                runner.run(drop_location(location))


def test_memory_store_matches_model(tmp_path: Any) -> None:
    _check(["memory"], str(tmp_path), examples=60, steps=40)


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def test_store_replays_like_memory(kind: str, tmp_path: Any) -> None:
    _check(["memory", kind], str(tmp_path), examples=12, steps=30)
