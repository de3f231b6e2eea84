"""OpenTelemetry: producer and consumer spans, trace context carried in the job.

The spans are caught with the SDK's in-memory exporter. The test across processes runs a
worker in another OS process (this file as a script, ``python test_telemetry.py work
...``) that prints the spans it recorded as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from conveyor_core import FlowProducer, Job, JobState, Queue, Worker, telemetry
from conveyor_core.store import StoreInterface
from conveyor_stores import open_store
from conveyor_stores.memory import MemoryStore

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.use_tracer_provider(provider)
    try:
        yield spans
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as opened:
        yield opened


async def _run_until(store: StoreInterface, queue: str, handler: Any, count: int) -> list[Job]:
    """Run a worker on ``queue`` until ``count`` attempts have ended."""
    ended: list[Job] = []
    done = anyio.Event()

    def seen(job: Job, *_: Any) -> None:
        ended.append(job)
        if len(ended) >= count:
            done.set()

    worker = Worker(queue, handler, store=store, drain_delay=0.05)
    worker.on("completed", seen)
    worker.on("failed", seen)
    async with worker:
        with anyio.fail_after(20):
            await done.wait()
    return ended


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is kind]


def _parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def _echo(job: Job) -> Any:
    return job.data


async def test_a_job_is_traced_from_add_to_processing(
    exporter: InMemorySpanExporter, store: MemoryStore
) -> None:
    queue = Queue("mail", store=store)
    job = await queue.add("welcome", {"to": "ada"}, {"attempts": 3})
    (done,) = await _run_until(store, "mail", _echo, 1)
    assert done.return_value == {"to": "ada"}

    spans = exporter.get_finished_spans()
    (send,) = _by_kind(spans, SpanKind.PRODUCER)
    (process,) = _by_kind(spans, SpanKind.CONSUMER)
    assert send.name == "send mail"
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "conveyor"
    assert send.attributes["messaging.destination.name"] == "mail"
    assert send.attributes["messaging.message.id"] == job.id
    assert send.attributes["conveyor.job.name"] == "welcome"
    assert process.name == "process mail"
    assert dict(process.attributes or {}) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": job.id,
        "conveyor.job.name": "welcome",
        "conveyor.job.attempt": 1,
        "conveyor.job.outcome": "completed",
    }
    assert process.context is not None and send.context is not None
    assert process.context.trace_id == send.context.trace_id
    assert _parent_id(process) == send.context.span_id
    assert process.status.status_code is StatusCode.UNSET


async def test_the_trace_context_is_not_data_nor_an_option(
    exporter: InMemorySpanExporter,
    store: MemoryStore,
) -> None:
    queue = Queue("mail", store=store)
    job = await queue.add("welcome", {"to": "ada"}, {"attempts": 3, "priority": 2})
    stored = await queue.get_job(job.id)
    assert stored is not None
    assert stored.data == {"to": "ada"}
    assert stored.opts.attempts == 3 and stored.opts.priority == 2
    assert "_trace" not in stored.opts.model_dump()
    # ... yet the store holds it, in W3C trace context form.
    carrier = telemetry.carrier_of(stored.record.opts)
    assert carrier is not None
    (send,) = exporter.get_finished_spans()
    assert send.context is not None
    assert carrier["traceparent"] == (
        f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}"
        f"-{int(send.context.trace_flags):02x}"
    )


async def test_the_handlers_spans_nest_under_the_attempts_span(
    exporter: InMemorySpanExporter,
    store: MemoryStore,
) -> None:
    await Queue("work", store=store).add("async")
    await Queue("sync", store=store).add("sync")

    async def handler(job: Job) -> None:
        with telemetry.tracer().start_as_current_span("inside"):  # type: ignore[union-attr]
            pass

    def sync_handler(job: Job) -> None:
        with telemetry.tracer().start_as_current_span("inside sync"):  # type: ignore[union-attr]
            pass

    await _run_until(store, "work", handler, 1)
    await _run_until(store, "sync", sync_handler, 1)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    for outer, nested in (("process work", "inside"), ("process sync", "inside sync")):
        context = spans[outer].context
        assert context is not None
        assert _parent_id(spans[nested]) == context.span_id


async def test_a_failed_attempt_records_the_error(
    exporter: InMemorySpanExporter, store: MemoryStore
) -> None:
    await Queue("pay", store=store).add("charge", None, {"attempts": 2})

    async def broken(job: Job) -> None:
        raise ValueError(f"card declined on attempt {job.attempts_made + 1}")

    await _run_until(store, "pay", broken, 2)
    spans = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert [span.attributes["conveyor.job.attempt"] for span in spans] == [1, 2]  # type: ignore[index]
    assert [span.attributes["conveyor.job.outcome"] for span in spans] == [  # type: ignore[index]
        "retried",
        "failed",
    ]
    for attempt, span in enumerate(spans, 1):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == f"card declined on attempt {attempt}"
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"
    (send,) = _by_kind(exporter.get_finished_spans(), SpanKind.PRODUCER)
    assert send.context is not None
    assert {_parent_id(span) for span in spans} == {send.context.span_id}


async def test_add_bulk_opens_one_span_for_all_its_jobs(
    exporter: InMemorySpanExporter, store: MemoryStore
) -> None:
    await Queue("bulk", store=store).add_bulk([{"name": f"n{i}", "data": i} for i in range(3)])
    await _run_until(store, "bulk", _echo, 3)
    spans = exporter.get_finished_spans()
    (send,) = _by_kind(spans, SpanKind.PRODUCER)
    assert send.attributes is not None
    assert send.attributes["messaging.batch.message_count"] == 3
    processed = _by_kind(spans, SpanKind.CONSUMER)
    assert len(processed) == 3
    assert send.context is not None
    assert {_parent_id(span) for span in processed} == {send.context.span_id}


FLOW = {
    "name": "report",
    "queue_name": "reports",
    "children": [
        {"name": "fetch-a", "queue_name": "fetch", "data": 1},
        {"name": "fetch-b", "queue_name": "fetch", "data": 2},
    ],
}


def _check_flow_trace(send: list[ReadableSpan], process: list[ReadableSpan]) -> None:
    """One trace; each child's producer span under the root's; each attempt under its
    job's producer span."""
    assert len(send) == 3 and len(process) == 3
    traces = {span.context.trace_id for span in send + process if span.context is not None}
    assert len(traces) == 1
    by_job = {span.attributes["messaging.message.id"]: span for span in send}  # type: ignore[index]
    (root,) = [span for span in send if span.attributes["conveyor.job.name"] == "report"]  # type: ignore[index]
    assert root.context is not None
    for span in send:
        if span is not root:
            assert _parent_id(span) == root.context.span_id
    for span in process:
        producer = by_job[span.attributes["messaging.message.id"]]  # type: ignore[index]
        assert producer.context is not None
        assert _parent_id(span) == producer.context.span_id
        assert span.attributes["conveyor.job.outcome"] == "completed"  # type: ignore[index]


async def test_a_flow_is_one_trace(exporter: InMemorySpanExporter, store: MemoryStore) -> None:
    node = await FlowProducer(store=store).add(FLOW)
    await _run_until(store, "fetch", _echo, 2)
    await _run_until(store, "reports", _echo, 1)
    done = await node.job.refresh()
    assert done.state is JobState.COMPLETED
    spans = exporter.get_finished_spans()
    _check_flow_trace(_by_kind(spans, SpanKind.PRODUCER), _by_kind(spans, SpanKind.CONSUMER))


async def test_a_flow_added_inside_a_span_joins_its_trace(
    exporter: InMemorySpanExporter,
    store: MemoryStore,
) -> None:
    outer = telemetry.tracer()
    assert outer is not None
    with outer.start_as_current_span("request") as request:
        await FlowProducer(store=store).add(FLOW)
    spans = exporter.get_finished_spans()
    root = next(
        s for s in spans if s.attributes and s.attributes.get("conveyor.job.name") == "report"
    )
    assert _parent_id(root) == request.get_span_context().span_id


async def test_nothing_is_written_into_jobs_when_tracing_is_off(store: MemoryStore) -> None:
    queue = Queue("quiet", store=store)
    job = await queue.add("a", 1)
    assert job.record.opts == "{}"
    telemetry.use_tracer_provider(NoOpTracerProvider())
    try:
        other = await queue.add("b", 2, {"attempts": 2})
        await _run_until(store, "quiet", _echo, 2)
    finally:
        telemetry.use_tracer_provider(None)
    assert other.record.opts == '{"attempts":2}'


# ---------------------------------------------------------------------- across processes


async def _work(url: str, count: int) -> None:
    """In the worker process: run both queues of :data:`FLOW` on the store at ``url``
    until ``count`` jobs have completed, then print the spans as JSON."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)  # the global provider, as an application would
    completed = 0
    done = anyio.Event()

    def seen(*_: Any) -> None:
        nonlocal completed
        completed += 1
        if completed >= count:
            done.set()

    async with open_store(url) as store:
        workers = [
            Worker(name, _echo, store=store, drain_delay=0.05) for name in ("fetch", "reports")
        ]
        for worker in workers:
            worker.on("completed", seen)
        async with workers[0], workers[1]:
            with anyio.fail_after(60):
                await done.wait()
    print(
        json.dumps(
            [
                {
                    "kind": span.kind.name,
                    "trace_id": span.context.trace_id if span.context else None,
                    "parent_id": _parent_id(span),
                    "attributes": dict(span.attributes or {}),
                }
                for span in spans.get_finished_spans()
            ]
        )
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store URL two processes can share: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'traced.db'}"
        return
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"conveyor_trace_{uuid.uuid4().hex[:10]}"
    yield f"{dsn}?schema={schema}"
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_a_worker_in_another_process_continues_the_flows_trace(
    exporter: InMemorySpanExporter, store_url: str
) -> None:
    async with open_store(store_url) as store:
        await FlowProducer(store=store).add(FLOW)
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = await anyio.run_process(
        [sys.executable, __file__, "work", store_url, "3"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    remote = json.loads(result.stdout)
    send = _by_kind(exporter.get_finished_spans(), SpanKind.PRODUCER)
    assert len(send) == 3
    by_job = {span.attributes["messaging.message.id"]: span for span in send}  # type: ignore[index]
    assert len(remote) == 3
    for span in remote:
        assert span["kind"] == "CONSUMER"
        producer = by_job[span["attributes"]["messaging.message.id"]]
        assert producer.context is not None
        assert span["trace_id"] == producer.context.trace_id
        assert span["parent_id"] == producer.context.span_id
        assert span["attributes"]["conveyor.job.outcome"] == "completed"


if __name__ == "__main__":
    if sys.argv[1:2] != ["work"]:
        raise SystemExit(f"usage: {sys.argv[0]} work STORE_URL COUNT")
    anyio.run(_work, sys.argv[2], int(sys.argv[3]))


@pytest.mark.parametrize(
    "opts",
    ["{}", '{"attempts":3}', '{"job_id":"a \\"_trace\\": b}","priority":1}'],
)
@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": 'odd=va}l"ue,x=}',
        },
    ],
)
def test_the_options_text_gives_back_the_options_and_the_context(
    opts: str, carrier: dict[str, str]
) -> None:
    traced = telemetry.with_trace(opts, carrier)
    assert json.loads(telemetry.without_trace(traced)) == json.loads(opts)
    assert telemetry.carrier_of(traced) == carrier
    assert telemetry.without_trace(opts) == opts
    assert telemetry.carrier_of(opts) is None
    # Written by something else, the context first: parsed whole, the same answer.
    moved = json.dumps({"_trace": carrier, **json.loads(opts)})
    assert json.loads(telemetry.without_trace(moved)) == json.loads(opts)
    assert telemetry.carrier_of(moved) == carrier
