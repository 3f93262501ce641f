"""Spans as an exporter receives them: one OpenTelemetry SDK tracer provider for the test
process (OpenTelemetry takes the global provider once), spans kept in memory while a
test records them, and
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

__all__ = [
    "exported_spans",
    "instrumented",
    "instrumented_before_engines",
    "recording",
    "statement_spans",
]


class _WhileRecording(SimpleSpanProcessor):
    """Keeps spans only while a test records them. Once a provider is set, FastAPI
    traces every request of every app in the process; those spans are dropped."""

    active = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            super().on_end(span)


_exporter = InMemorySpanExporter()
_processor = _WhileRecording(_exporter)
_provider = TracerProvider()
_provider.add_span_processor(_processor)
trace.set_tracer_provider(_provider)


@contextmanager
def recording() -> Iterator[None]:
    """Spans ended in the block are kept, and only those."""
    _exporter.clear()
    _processor.active = True
    try:
        yield
    finally:
        _processor.active = False


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
    try:
        with recording():
            yield
    finally:
        instrumentor.uninstrument()


@contextmanager
def instrumented_before_engines() -> Iterator[None]:
    """The SQLAlchemy instrumentation as docs/observability.md puts it: installed
    before any engine exists, so it wraps ``create_async_engine`` and its listeners
    are on each engine before the library's own."""
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(tracer_provider=_provider, skip_dep_check=True)
    try:
        with recording():
            yield
    finally:
        instrumentor.uninstrument()
