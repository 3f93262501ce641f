"""Statement tracing the way tracing integrations hook into SQLAlchemy: an OpenTelemetry
client span opened before the cursor runs a statement and ended after it (or on its
error).

The spans go to whatever tracer provider is configured; with none, OpenTelemetry's API
hands out spans that record nothing, so what is measured is what the hooks cost and what
they change in the library's own path.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["trace_statements"]

TRACER = trace.get_tracer("bench.tracing")
# Where the open span waits on the statement's execution context.
SPAN_ATTRIBUTE = "_bench_span"


def _open_span(
    connection: Any,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    name = statement.split(None, 1)[0] if statement else "statement"
    span = TRACER.start_span(
        name,
        kind=SpanKind.CLIENT,
        attributes={"db.system": connection.dialect.name, "db.statement": statement},
    )
    if context is not None:
        setattr(context, SPAN_ATTRIBUTE, span)


def _end_span(
    connection: Any,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    span = getattr(context, SPAN_ATTRIBUTE, None)
    if span is not None:
        span.end()


def _end_span_with_error(exception_context: Any) -> None:
    span = getattr(exception_context.execution_context, SPAN_ATTRIBUTE, None)
    if span is not None:
        span.set_status(
            Status(StatusCode.ERROR, type(exception_context.original_exception).__name__)
        )
        span.end()


def trace_statements(target: Engine | type[Engine]) -> None:
    """Traces every statement of one engine, or of every engine when given the class."""
    event.listen(target, "before_cursor_execute", _open_span)
    event.listen(target, "after_cursor_execute", _end_span)
    event.listen(target, "handle_error", _end_span_with_error)
