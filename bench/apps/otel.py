"""The OpenTelemetry SDK as a traced service configures it, with spans that go nowhere.

Every span is created, recorded (attributes, timing, status) and handed to a
``BatchSpanProcessor``, as in production; its exporter drops each batch, so what is
measured is the cost of tracing inside the server and not of a collector.
``BENCH_SPAN_PROCESSOR=simple`` ends each span into the exporter at once instead;
``BENCH_SPAN_PROCESSOR=none`` configures no tracer provider at all, so that every span
is OpenTelemetry's API's non-recording one: the cost of the hooks alone.
``BENCH_TRACE_SAMPLE_RATIO`` (default 1: every trace) samples traces as production
services usually do (``ParentBased(TraceIdRatioBased(ratio))``): a span of a trace left
out is created but not recorded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

__all__ = ["configure_tracing"]


class DroppingExporter(SpanExporter):
    """Receives every finished span, keeps none."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def configure_tracing() -> TracerProvider | None:
    if os.environ.get("BENCH_SPAN_PROCESSOR") == "none":
        return None
    ratio = float(os.environ.get("BENCH_TRACE_SAMPLE_RATIO", "1"))
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    exporter = DroppingExporter()
    simple = os.environ.get("BENCH_SPAN_PROCESSOR") == "simple"
    provider.add_span_processor(
        SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter)
    )
    trace.set_tracer_provider(provider)
    return provider
