"""What an operator sees of each statement: a span, its duration, a log line if slow.

Tracing. OpenTelemetry's SQLAlchemy instrumentation traces a statement from two
execution-event listeners (``before_cursor_execute``, ``after_cursor_execute``); any
listener would make the fast path (``prepared``) hand the statement back to SQLAlchemy,
since a listener may rewrite it. So the fast path recognises exactly the
instrumentation's listeners (its ``EngineTracer``, without the SQL commenter, which
does rewrite the SQL), runs the statement itself and opens the span in their place,
from the library's own tracer ``fastapi_asyncdb``. What SQLAlchemy runs keeps the
instrumentation's span: the listeners see only what SQLAlchemy runs, the library spans
only what it runs itself, so each statement has exactly one span. The instrumentation
is the switch: without it nothing here opens a span, and with it every statement is
traced, on either path.

Timing. With ``slow_statement_threshold`` set, or metrics on, every statement is timed
in one place (``Watch.took``): on the fast path around the driver's call, on
SQLAlchemy's by listeners of the library's own (``before_cursor_execute``,
``after_cursor_execute``, and ``handle_error`` for a failure), which the fast path
recognises as well, so timing leaves it on. The duration goes into the role's
statement histogram (``metrics``: ``read`` or ``write`` for what SQLAlchemy ran,
``fast_path`` for what the driver ran), and a statement that took at least the
threshold is logged once on ``fastapi_asyncdb.statements`` (WARNING), with its SQL as
sent (placeholders, never values), its duration, the role and the request id. A
failed statement is counted (``error``), never logged as slow: its error goes up to the
request. SQLAlchemy's cursor events see the statements it sends through a cursor, not the
``BEGIN`` and ``COMMIT`` its drivers send themselves.

Neither a span nor a log line carries a parameter value or an error message (a
driver's message may quote a value): errors are named by their class and SQLSTATE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.engine.url import URL

from . import _compat
from .request_id import current_request_id

if TYPE_CHECKING:
    from .metrics import Histogram, RoleMetrics

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the [otel] extra is not installed: the instrumentation is not either
    trace = None  # type: ignore[assignment]
else:
    # A proxy: it follows the tracer provider configured later, and costs nothing
    # until then.
    _tracer = trace.get_tracer("fastapi_asyncdb")

__all__ = [
    "Watch",
    "driver_watch",
    "listeners_known",
    "observed",
    "server_attributes",
    "watch_engine",
]

T = TypeVar("T")
logger = logging.getLogger("fastapi_asyncdb.statements")

_INSTRUMENTATION = "opentelemetry.instrumentation.sqlalchemy.engine"
# The instrumentation's statement listeners: what they do the fast path does.
_INSTRUMENTATION_LISTENERS = frozenset({"EngineTracer._before_cur_exec", "_after_cur_exec"})
_STARTED = "_fastapi_asyncdb_started"


class Watch:
    """One engine's observation: the role, the slow threshold, the statement histograms,
    the span attributes."""

    __slots__ = (
        "attributes",
        "driver",
        "listeners",
        "namespace",
        "role",
        "spans",
        "sqlalchemy",
        "system",
        "threshold",
        "timed",
        "verdict",
    )

    def __init__(
        self,
        engine: Engine,
        *,
        role: str | None,
        threshold: float | None,
        metrics: RoleMetrics | None = None,
    ) -> None:
        self.role = role
        self.threshold = threshold
        # (ok, error) histograms of what SQLAlchemy runs and of what the driver runs;
        # None with metrics off.
        self.sqlalchemy: tuple[Histogram, Histogram] | None = None
        self.driver: tuple[Histogram, Histogram] | None = None
        if metrics is not None:
            kinds = metrics.statements
            self.sqlalchemy = (kinds[metrics.role, "ok"], kinds[metrics.role, "error"])
            self.driver = (kinds["fast_path", "ok"], kinds["fast_path", "error"])
        self.timed = threshold is not None or metrics is not None
        url = engine.url
        self.system = "postgresql" if "postgres" in engine.dialect.name else engine.dialect.name
        self.namespace = url.database
        # The conventions' required and recommended attributes, no more: the SDK checks
        # each one at each span.
        self.attributes = {"db.system.name": self.system, **server_attributes(url, self.system)}
        # The engine's execution listeners when last read, and the verdict on them.
        self.listeners: list[Any] = []
        self.verdict: bool | None = False
        self.spans: dict[str, tuple[str, dict[str, str | int]]] = {}

    def took(
        self, sql: str, seconds: float, histogram: Histogram | None, *, log: bool = True
    ) -> None:
        """A statement ended after ``seconds``: counted, and logged if slow and ``log``."""
        if histogram is not None:
            histogram.observe(seconds)
        threshold = self.threshold
        if log and threshold is not None and seconds >= threshold:
            _log_slow(self, sql, seconds)

    def span_of(self, sql: str) -> tuple[str, dict[str, str | int]]:
        """The span's name and attributes for a statement, made once per statement (the
        fast path runs the few statements built once at import; the SDK copies them)."""
        made = self.spans.get(sql)
        if made is None:
            operation = _operation(sql)
            name = f"{operation} {self.namespace}" if self.namespace else operation
            attributes = {**self.attributes, "db.query.text": sql, "db.operation.name": operation}
            if len(self.spans) >= _MAX_SPANS_KEPT:
                self.spans.clear()
            made = self.spans[sql] = (name, attributes)
        return made


def server_attributes(url: URL, system: str) -> dict[str, str | int]:
    """The conventions' ``db.namespace``, ``server.address`` and ``server.port`` (only
    when not the default) of a database at ``url``."""
    attributes: dict[str, str | int] = {}
    if url.database:
        attributes["db.namespace"] = url.database
    if url.host:
        attributes["server.address"] = url.host
        if url.port is not None and url.port != _DEFAULT_PORTS.get(system):
            attributes["server.port"] = url.port
    return attributes


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
# Statements whose span name and attributes a watch keeps; beyond, it starts again.
_MAX_SPANS_KEPT = 1000
# Each engine's Watch lives on the engine itself, under this name: it is read at every
# statement, where a WeakKeyDictionary's lookup (a new weak reference each time) costs
# more than the rest of the timing together.
_WATCH = "_fastapi_asyncdb_watch"


def watch_engine(
    engine: Engine,
    *,
    role: str | None,
    slow_threshold: float | None,
    metrics: RoleMetrics | None = None,
) -> None:
    """Observe the statements of an engine the library built; ``metrics`` None: metrics
    are off."""
    watch = Watch(engine, role=role, threshold=slow_threshold, metrics=metrics)
    setattr(engine, _WATCH, watch)
    if watch.timed:
        # retval=True: SQLAlchemy keeps the function itself, which the fast path knows.
        event.listen(engine, "before_cursor_execute", _started, retval=True)
        event.listen(engine, "after_cursor_execute", _finished)
        # Not a statement event: the fast path ignores it (and times its own failures).
        event.listen(engine, "handle_error", _failed)


def _watch_of(engine: Engine) -> Watch:
    watch: Watch | None = engine.__dict__.get(_WATCH)
    if watch is None:  # an engine from elsewhere: traced, never logged
        watch = Watch(engine, role=None, threshold=None)
        setattr(engine, _WATCH, watch)
    return watch


def _is_known(listener: Any) -> bool | None:
    """True for the instrumentation's listener, False for the library's own, None for
    any other (or the instrumentation's with its commenter, which rewrites the SQL)."""
    if listener is _started or listener is _finished:
        return False
    function = getattr(listener, "__func__", listener)
    if (
        getattr(function, "__module__", None) != _INSTRUMENTATION
        or getattr(function, "__qualname__", None) not in _INSTRUMENTATION_LISTENERS
    ):
        return None
    tracer = getattr(listener, "__self__", None)
    if tracer is not None and getattr(tracer, "enable_commenter", True):
        return None
    return True


def _verdict(listeners: list[Any]) -> bool | None:
    """None if any listener is one the fast path cannot stand in for; else whether the
    instrumentation is among them."""
    traced = False
    for listener in listeners:
        known = _is_known(listener)
        if known is None:
            return None
        traced = traced or known
    return traced and trace is not None


def driver_watch(connection: Connection) -> tuple[bool, Watch | None, bool]:
    """Whether the fast path may run a statement on ``connection`` in spite of its
    execution listeners; what observes it there; whether it is traced.

    Called only when the connection may have listeners. The listeners are read at each
    statement (one added at any time sends the statement back to SQLAlchemy); the
    verdict on them is kept while they stay the same objects.
    """
    listeners = _compat.execution_listeners(connection)
    if listeners is None:
        return False, None, False
    watch = _watch_of(connection.engine)
    if watch.listeners != listeners:
        watch.listeners = listeners
        watch.verdict = _verdict(listeners)
    traced = watch.verdict
    if traced is None:
        return False, None, False
    if not traced and not watch.timed:
        return True, None, False
    return True, watch, traced


def listeners_known(connection: Connection) -> bool:
    """Whether ``connection`` has execution listeners, all of them ones the fast path
    stands in for (tracing, statement timing): ``listeners_known`` of ``_compat``."""
    return _compat.has_execution_listeners(connection) and driver_watch(connection)[0]


async def observed(
    watch: Watch,
    traced: bool,
    sql: str,
    run: Callable[..., Awaitable[T]],
    *arguments: Any,
) -> T:
    """``await run(*arguments)``, the driver running ``sql``, with its span and timing."""
    span = None
    if traced:
        name, attributes = watch.span_of(sql)
        span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    started = time.perf_counter()
    try:
        result = await run(*arguments)
    except BaseException as error:
        seconds = time.perf_counter() - started
        if span is not None:
            _record_error(span, error)
            span.end()
        # Not logged as slow: a failure goes up to the request, as on SQLAlchemy's path.
        watch.took(sql, seconds, None if watch.driver is None else watch.driver[1], log=False)
        raise
    seconds = time.perf_counter() - started
    if span is not None:
        span.end()
    watch.took(sql, seconds, None if watch.driver is None else watch.driver[0])
    return result


def _operation(sql: str) -> str:
    words = sql.split(None, 1)
    return words[0].upper() if words else "statement"


def _record_error(span: Any, error: BaseException) -> None:
    # The driver's own exception names the failure; its message may quote a value.
    cause = error.__cause__ if error.__cause__ is not None else error
    kind = type(cause)
    span.set_attribute("error.type", f"{kind.__module__}.{kind.__qualname__}")
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str):
        span.set_attribute("db.response.status_code", sqlstate)
    span.set_status(Status(StatusCode.ERROR))


def _log_slow(watch: Watch, sql: str, seconds: float) -> None:
    request_id = current_request_id.get()
    logger.warning(
        "slow statement: %.3f s on %s (request %s): %s",
        seconds,
        watch.role or "an engine",
        request_id or "-",
        sql,
        extra={
            "db_duration_s": seconds,
            "db_statement": sql,
            "db_role": watch.role,
            "request_id": request_id,
        },
    )


# SQLAlchemy's path: the library's own listeners, installed with a threshold or metrics on.


def _started(
    connection: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> tuple[str, Any]:
    if context is not None:
        setattr(context, _STARTED, time.perf_counter())
    return statement, parameters


def _finished(
    connection: Connection,
    cursor: Any,
    statement: str,
    parameters: Sequence[Any] | Any,
    context: Any,
    executemany: bool,
) -> None:
    started = getattr(context, _STARTED, None)
    if started is not None:
        # Timed once: an error while fetching the rows reaches _failed with this context.
        setattr(context, _STARTED, None)
        watch = _watch_of(connection.engine)
        histogram = None if watch.sqlalchemy is None else watch.sqlalchemy[0]
        watch.took(statement, time.perf_counter() - started, histogram)


def _failed(exception: ExceptionContext) -> None:
    context = exception.execution_context
    started = getattr(context, _STARTED, None)
    if started is None or exception.connection is None:
        return  # no statement sent (a connection failed), or already timed
    setattr(context, _STARTED, None)
    watch = _watch_of(exception.connection.engine)
    histogram = None if watch.sqlalchemy is None else watch.sqlalchemy[1]
    # Counted, not logged as slow: a failure goes up to the request.
    watch.took(exception.statement or "", time.perf_counter() - started, histogram, log=False)
