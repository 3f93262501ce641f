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
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from fastapi_asyncdb import Database

__all__ = ["OTEL_METRICS_PATH", "configure_tracing", "serve_metrics_reader"]


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


# The path bench.overload reads the in-memory reader's points from.
OTEL_METRICS_PATH = "/otel-metrics"


def serve_metrics_reader(app: FastAPI, db: Database) -> None:
    """With ``BENCH_OTEL_METRICS=1``, ``db``'s metrics also go to an OpenTelemetry SDK
    meter provider with an in-memory reader, whose points ``OTEL_METRICS_PATH`` serves
    as JSON: ``bench.overload`` checks them, beside the Prometheus scrape, against what
    its clients saw. Off by default: recording into a second exporter costs the server."""
    if os.environ.get("BENCH_OTEL_METRICS") != "1":
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

    from fastapi_asyncdb.otel import instrument

    reader = InMemoryMetricReader()
    instrument(db, MeterProvider(metric_readers=[reader]))

    @app.get(OTEL_METRICS_PATH, include_in_schema=False)
    def otel_metrics() -> list[dict[str, Any]]:
        data = reader.get_metrics_data()
        points: list[dict[str, Any]] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        figures = (
                            {"count": point.count, "sum": point.sum}
                            if isinstance(point, HistogramDataPoint)
                            else {"value": getattr(point, "value", None)}
                        )
                        attributes = dict(point.attributes or {})
                        points.append({"name": metric.name, "attributes": attributes, **figures})
        return points
