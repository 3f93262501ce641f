"""The one fence around SQLAlchemy's private API.

Everything this package uses of SQLAlchemy that is not public (an underscore name, an
internal module, a compiler attribute) is reached through this module and nowhere
else. ``tests/fastapi_asyncdb/test_compat.py`` checks each touchpoint against the
installed SQLAlchemy, so a release that changes one fails there, loudly, instead of
somewhere in a request. ``pyproject.toml`` bounds SQLAlchemy to the releases those
tests cover.

Where a touchpoint is missing (``error_path_available`` is false), the fast path steps
aside and SQLAlchemy runs every statement: slower, never wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar, cast

from sqlalchemy.engine import Connection
from sqlalchemy.engine.result import result_tuple
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util.concurrency import await_, greenlet_spawn

__all__ = [
    "await_in_greenlet",
    "compiled_for_driver",
    "error_path_available",
    "has_execution_listeners",
    "positional_names",
    "raise_as_sqlalchemy_would",
    "row_factory",
    "run_in_greenlet",
    "writes_computed_in_python",
]

T = TypeVar("T")


def run_in_greenlet(function: Callable[..., T], *args: Any) -> Awaitable[T]:
    """Run a synchronous SQLAlchemy function in its greenlet, from async code."""
    return greenlet_spawn(function, *args)


def await_in_greenlet(awaitable: Awaitable[T]) -> T:
    """Await from synchronous code that SQLAlchemy runs in its greenlet (a pool event)."""
    return await_(awaitable)


def row_factory(keys: Sequence[str]) -> Callable[[Iterable[Any]], Any]:
    """A maker of SQLAlchemy ``Row`` objects with the given keys."""
    return result_tuple(list(keys))


def has_execution_listeners(connection: Connection) -> bool:
    """Whether any execution event of this connection or its engine has a listener.

    SQLAlchemy's own flags, checked before each of its events: a listener may rewrite
    statements or trace them, so a statement that bypasses SQLAlchemy must not run.
    """
    return bool(
        getattr(connection, "_has_events", True) or getattr(connection.engine, "_has_events", True)
    )


def error_path_available(connection: Connection) -> bool:
    """Whether ``raise_as_sqlalchemy_would`` can work for this connection."""
    return hasattr(Connection, "_handle_dbapi_exception") and hasattr(
        connection.connection.dbapi_connection, "_handle_exception"
    )


def raise_as_sqlalchemy_would(
    connection: Connection, sql: str, arguments: Any, error: BaseException
) -> NoReturn:
    """SQLAlchemy's own handling of a statement that failed in the driver.

    Run in SQLAlchemy's greenlet. The DBAPI adapter translates the driver's exception
    into the DBAPI one, and the connection wraps it, runs the engine's ``handle_error``
    hooks and invalidates a lost connection: exactly as if the statement had gone
    through ``execute``.
    """
    dbapi_connection = connection.connection.dbapi_connection
    try:
        cast(Any, dbapi_connection)._handle_exception(error)
    except BaseException as dbapi_error:
        connection._handle_dbapi_exception(dbapi_error, sql, tuple(arguments), None, None)
    raise error  # the adapter re-raises what it does not translate; defensive only


def compiled_for_driver(compiled: object) -> SQLCompiler | None:
    """``compiled`` if SQLAlchemy would send its string as it is, with positional
    parameters and nothing rendered at run time; None otherwise."""
    if (
        isinstance(compiled, SQLCompiler)
        and compiled.positional
        and compiled.positiontup is not None
        and not compiled.literal_execute_params
        and not compiled.post_compile_params
    ):
        return compiled
    return None


def positional_names(compiled: SQLCompiler) -> list[str]:
    """The bind parameter names in the order the driver receives them."""
    assert compiled.positiontup is not None
    return list(compiled.positiontup)


def writes_computed_in_python(compiled: SQLCompiler) -> bool:
    """Whether running the write needs SQLAlchemy: Python-side defaults or RETURNING."""
    return bool(
        compiled.insert_prefetch or compiled.update_prefetch or compiled.effective_returning
    )
