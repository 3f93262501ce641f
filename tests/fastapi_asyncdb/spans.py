"""Spans as an exporter receives them: one OpenTelemetry SDK tracer provider for the test
process (OpenTelemetry takes the global provider once), spans kept in memory, and
SQLAlchemy's OpenTelemetry instrumentation put on a database's engines for a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fastapi_asyncdb import Database

__all__ = ["clear_spans", "exported_spans", "instrumented", "statement_spans"]

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)


def clear_spans() -> None:
    _exporter.clear()


def exported_spans() -> list[ReadableSpan]:
    return list(_exporter.get_finished_spans())


def statement_spans() -> list[ReadableSpan]:
    """Spans of statements, not of the instrumentation's ``connect``."""
    return [span for span in exported_spans() if span.name != "connect"]


@contextmanager
def instrumented(database: Database, **options: Any) -> Iterator[None]:
    """The SQLAlchemy instrumentation on the database's engines, as an app puts it,
    with the spans exported so far cleared."""
    instrumentor = SQLAlchemyInstrumentor()
    # The instrumentation declares SQLAlchemy < 2.1; it works on 2.1 when told to.
    instrumentor.instrument(
        engines=[database.engine.sync_engine, database.read_engine.sync_engine],
        tracer_provider=_provider,
        skip_dep_check=True,
        **options,
    )
    _exporter.clear()
    try:
        yield
    finally:
        instrumentor.uninstrument()
        _exporter.clear()
