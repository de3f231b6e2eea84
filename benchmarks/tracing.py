"""``--tracing``: run the workloads with a no-op tracer provider or with the SDK's.

``noop`` is the API's ``NoOpTracerProvider``, which Conveyor takes as tracing off (it
checks for it on every add and attempt). ``sdk`` is the SDK's ``TracerProvider`` with a
batching span processor whose exporter drops the spans: the cost of recording them, not
of sending them.
Both need the ``[otel]`` extra; ``sdk`` needs ``opentelemetry-sdk`` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conveyor_core import telemetry

CHOICES = ("off", "noop", "sdk")


def use_tracing(mode: str) -> Any:
    """Trace Conveyor with ``mode``'s provider; returns it (to shut it down), or None."""
    if mode == "off":
        telemetry.use_tracer_provider(None)
        return None
    if mode == "noop":
        from opentelemetry.trace import NoOpTracerProvider

        provider: Any = NoOpTracerProvider()
    else:
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Dropped(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
    telemetry.use_tracer_provider(provider)
    return provider
