"""The trace context a job carries: kept in its options text by every step of its life."""

from __future__ import annotations

import time

from conveyor_core.job import parse_opts
from conveyor_core.models import ParentPolicy
from conveyor_core.queue import build_new_job, resolve_options
from conveyor_core.store import Completion, Failure, JobRecord
from conveyor_core.telemetry import carrier_of, with_trace

from ._support import Harness

CARRIER = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=value",
}
"""A W3C trace context, as the producer's propagator writes it."""


def _carries(record: JobRecord | None, attempts: int = 1) -> None:
    assert record is not None
    assert carrier_of(record.opts) == CARRIER, record.opts
    assert parse_opts(record.opts).attempts == attempts


class TraceContextTests:
    """A job's options text comes back as written: its trace context (a key beside the
    options) survives reads, takes, retries and a flow's release, on every store object."""

    async def test_the_trace_context_survives_a_retry_and_completion(self, env: Harness) -> None:
        q = env.name("traced")
        opts = resolve_options({"attempts": 2})
        new = build_new_job(queue=q, name="traced", data="null", opts=opts, job_id="t1")
        new.opts = with_trace(new.opts, CARRIER)
        now = time.time()
        assert await env.store.add_jobs([[new]], now) == [True]
        _carries(await env.store.get_job(q, "t1"), 2)
        _carries(await env.second_store.get_job(q, "t1"), 2)
        (listed,) = await env.store.get_jobs(q, [new.state], 0, None)
        _carries(listed, 2)

        taken = await env.store.take_jobs(q, limit=1, token="a", lock_until=now + 60, now=now)
        (first,) = taken.jobs
        _carries(first, 2)
        retry = Failure("t1", "a", "boom", [], retry_at=now)
        assert await env.store.fail_jobs(q, [retry], now) == [True]
        _carries(await env.store.get_job(q, "t1"), 2)

        taken = await env.store.take_jobs(q, limit=1, token="b", lock_until=now + 60, now=now)
        (second,) = taken.jobs
        _carries(second, 2)
        assert await env.store.complete_jobs(q, [Completion("t1", "b", "1")], now) == [True]
        _carries(await env.second_store.get_job(q, "t1"), 2)

    async def test_a_flows_jobs_keep_their_trace_contexts(self, env: Harness) -> None:
        q = env.name("traced-flow")
        opts = resolve_options(None)
        parent = build_new_job(
            queue=q, name="parent", data="null", opts=opts, job_id="p", has_children=True
        )
        child = build_new_job(queue=q, name="child", data="null", opts=opts, job_id="c")
        child.parent_id, child.parent_queue = "p", q
        child.parent_policy = ParentPolicy.FAIL
        for new in (parent, child):
            new.opts = with_trace(new.opts, CARRIER)
        now = time.time()
        assert await env.store.add_jobs([[parent, child]], now) == [True]
        taken = await env.store.take_jobs(q, limit=1, token="a", lock_until=now + 60, now=now)
        (taken_child,) = taken.jobs
        assert taken_child.id == "c"
        _carries(taken_child)
        assert await env.store.complete_jobs(q, [Completion("c", "a", "2")], now) == [True]
        taken = await env.store.take_jobs(q, limit=1, token="b", lock_until=now + 60, now=now)
        (taken_parent,) = taken.jobs
        assert taken_parent.id == "p"
        _carries(taken_parent)
