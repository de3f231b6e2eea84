"""OpenTelemetry spans for adding and processing jobs (the ``[otel]`` extra).

Tracing is on when ``opentelemetry-api`` is installed and a tracer provider other than
the API's no-op one has been set, globally (``opentelemetry.trace.set_tracer_provider``)
or for this library alone (:func:`use_tracer_provider`); otherwise every function here
returns at once and nothing is written into the jobs.

- Adding a job (``Queue.add``, ``Queue.add_bulk``) opens a producer span ``send <queue>``;
  adding a flow opens one per node, each child's under its parent's, the root's under
  the caller's current span. The span's context goes into the job, in W3C trace context
  form (``traceparent``), through the globally configured propagator.
- The worker opens a consumer span ``process <queue>`` for each attempt, as a child of
  the job's producer span, so one flow is one trace, even across processes. The span is
  current while the handler runs: the handler's own spans nest under it.

Where the context lives: a reserved key, :data:`TRACE_KEY`, of the job's options text,
which every store keeps verbatim. ``Job.opts`` leaves it out and ``job.data`` never
sees it; no option can have its name, since options never start with an underscore.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from .job import Job
    from .store import NewJob

__all__ = [
    "SYSTEM",
    "TRACE_KEY",
    "carrier_of",
    "processing",
    "sending",
    "sending_flows",
    "use_tracer_provider",
    "without_trace",
]

TRACE_KEY = "_trace"
"""The key of a job's options text that holds its trace context."""
SYSTEM = "conveyor"
"""The ``messaging.system`` attribute of every span."""

_MARK = f'"{TRACE_KEY}"'
_ENTRY = f'"{TRACE_KEY}":'
_DECODER = json.JSONDecoder()
_NOTHING: AbstractContextManager[None] = nullcontext()
_cached: tuple[object, Tracer] | None = None
_own_provider: TracerProvider | None = None


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` rather than the global one; ``None`` goes back to the
    global provider."""
    global _own_provider, _cached
    _own_provider = provider
    _cached = None


def tracer() -> Tracer | None:
    """The tracer to use, or ``None`` when tracing is off: no extra, no provider set, or
    the API's ``NoOpTracerProvider``.

    Nothing is imported here: a program that set a tracer provider has imported the
    OpenTelemetry API already, so one that has not costs a dictionary lookup."""
    global _cached
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    provider = api.get_tracer_provider() if _own_provider is None else _own_provider
    if isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider):
        return None
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]
    from . import __version__

    found = provider.get_tracer("conveyor_core", __version__)
    _cached = (provider, found)
    return found


# ---------------------------------------------------------------- the job's options text


def with_trace(opts: str, carrier: Mapping[str, str]) -> str:
    """``opts`` (a JSON object's text) with ``carrier`` under :data:`TRACE_KEY`."""
    value = json.dumps(dict(carrier), separators=(",", ":"), ensure_ascii=False)
    body = opts.strip()
    if body in ("", "{}"):
        return f'{{"{TRACE_KEY}":{value}}}'
    return f'{body[:-1]},"{TRACE_KEY}":{value}}}'


def _split(opts: str) -> tuple[str, Any]:
    """``opts`` without its trace context, and the context's value (``None`` if none).

    :func:`with_trace` puts the context last, so it is cut off the end without parsing
    the options; any other text is parsed whole.
    """
    at = opts.rfind(_ENTRY)
    if at < 1:
        return opts, None
    try:
        value, end = _DECODER.raw_decode(opts, at + len(_ENTRY))
    except ValueError:
        value, end = None, -1
    before = opts[at - 1]
    if end == len(opts) - 1 and opts[end] == "}" and before in ",{":
        return (opts[: at - 1] + "}" if before == "," else "{}"), value
    try:
        parsed = json.loads(opts)
    except ValueError:
        return opts, None
    if not isinstance(parsed, dict) or TRACE_KEY not in parsed:
        return opts, None
    value = parsed.pop(TRACE_KEY)
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False), value


def carrier_of(opts: str) -> dict[str, str] | None:
    """The trace context kept in a job's options text, if any."""
    if _MARK not in opts:
        return None
    value = _split(opts)[1]
    if not isinstance(value, dict):
        return None
    return {str(key): str(item) for key, item in value.items()}


def without_trace(opts: str) -> str:
    """A job's options text without its trace context (what ``JobOptions`` parses)."""
    if _MARK not in opts:
        return opts
    return _split(opts)[0]


# ---------------------------------------------------------------- producer spans


def _send_attributes(queue: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
    }


def _carry(span: Span, new: NewJob) -> None:
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    if carrier:
        new.opts = with_trace(new.opts, carrier)


def _ended(spans: Sequence[Span], error: BaseException | None) -> None:
    from opentelemetry.trace import StatusCode

    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, str(error) or type(error).__name__)
        span.end()


def sending(queue: str, news: Sequence[NewJob]) -> AbstractContextManager[None]:
    """Around writing ``news`` to ``queue``: one producer span, its context put into
    every job. Does nothing when tracing is off."""
    found = tracer()
    if found is None or not news:
        return _NOTHING
    return _sending(found, queue, news)


@contextmanager
def _sending(found: Tracer, queue: str, news: Sequence[NewJob]) -> Iterator[None]:
    from opentelemetry.trace import SpanKind

    attributes = _send_attributes(queue, "add" if len(news) == 1 else "add_bulk")
    if len(news) == 1:
        attributes["messaging.message.id"] = news[0].id
        attributes["conveyor.job.name"] = news[0].name
    else:
        attributes["messaging.batch.message_count"] = len(news)
    span = found.start_span(f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes)
    for new in news:
        _carry(span, new)
    try:
        yield
    except BaseException as exc:
        _ended([span], exc)
        raise
    _ended([span], None)


def sending_flows(groups: Sequence[Sequence[NewJob]]) -> AbstractContextManager[None]:
    """Around writing flows (each group parents before children): one producer span
    per job, a child's under its parent's. Does nothing when tracing is off."""
    found = tracer()
    if found is None:
        return _NOTHING
    return _sending_flows(found, groups)


@contextmanager
def _sending_flows(found: Tracer, groups: Sequence[Sequence[NewJob]]) -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    spans: list[Span] = []
    for group in groups:
        opened: dict[tuple[str, str], Span] = {}
        for new in group:
            parent = (
                None
                if new.parent_id is None or new.parent_queue is None
                else opened.get((new.parent_queue, new.parent_id))
            )
            attributes = _send_attributes(new.queue, "add_flow")
            attributes["messaging.message.id"] = new.id
            attributes["conveyor.job.name"] = new.name
            if new.parent_id is not None:
                attributes["conveyor.job.parent_id"] = new.parent_id
            span = found.start_span(
                f"send {new.queue}",
                context=None if parent is None else trace.set_span_in_context(parent),
                kind=SpanKind.PRODUCER,
                attributes=attributes,
            )
            spans.append(span)
            opened[(new.queue, new.id)] = span
            _carry(span, new)
    try:
        yield
    except BaseException as exc:
        _ended(spans, exc)
        raise
    _ended(spans, None)


# ---------------------------------------------------------------- consumer spans


class Processing:
    """The consumer span of one attempt; see :func:`processing`."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def completed(self) -> None:
        if self._span is not None:
            self._span.set_attribute("conveyor.job.outcome", "completed")

    def parked(self) -> None:
        if self._span is not None:
            self._span.set_attribute("conveyor.job.outcome", "parked")

    def failed(self, error: BaseException, *, retried: bool) -> None:
        span = self._span
        if span is not None:
            from opentelemetry.trace import StatusCode

            span.set_attribute("conveyor.job.outcome", "retried" if retried else "failed")
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, str(error) or type(error).__name__)


_IDLE = Processing(None)


def processing(queue: str, job: Job) -> AbstractContextManager[Processing]:
    """Around one attempt of ``job``: a consumer span, current while it is open, child of
    the job's producer span. Does nothing when tracing is off."""
    found = tracer()
    if found is None:
        return nullcontext(_IDLE)
    return _processing(found, queue, job)


@contextmanager
def _processing(found: Tracer, queue: str, job: Job) -> Iterator[Processing]:
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind, StatusCode

    carrier = carrier_of(job.record.opts)
    parent = None if carrier is None else propagate.extract(carrier)
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": job.id,
        "conveyor.job.name": job.name,
        "conveyor.job.attempt": job.attempts_made + 1,
    }
    with found.start_as_current_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield Processing(span)
        except BaseException as exc:
            # Cancelled (a forced close): the job is handed back, not finished.
            span.set_attribute("conveyor.job.outcome", "interrupted")
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
