"""The one fence around SQLAlchemy's private API.

Everything this package uses of SQLAlchemy that is not public (an underscore name, an
internal module, a compiler attribute, the asyncpg adapter's internals) is reached
through this module and nowhere else. ``tests/fastapi_asyncdb/test_compat.py`` checks
each touchpoint against the installed SQLAlchemy, so a release that changes one fails
there, loudly, instead of somewhere in a request. ``pyproject.toml`` bounds SQLAlchemy
to the releases those tests cover. The one touchpoint of aiosqlite's internals
(``run_on_aiosqlite_thread``) is fenced and checked the same way.

The fast path (``prepared.py``) runs a statement on the driver the way SQLAlchemy's
asyncpg adapter would have run it: under the adapter's lock, through the adapter's
own prepared-statement cache, with the connection's autobegin, and on failure through
the connection's own error handling with a real execution context. Where a touchpoint
is missing (``fast_path_supported`` is false), the fast path steps aside and
SQLAlchemy runs every statement: slower, never wrong.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar, cast

from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Engine, ExceptionContext, RootTransaction
from sqlalchemy.engine.cursor import CursorResultMetaData
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.event.attr import _EmptyListener, _ListenerCollection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.util.concurrency import await_, greenlet_spawn

__all__ = [
    "all_binds",
    "await_in_greenlet",
    "begin_implicitly",
    "begin_without_io",
    "binds_by_position",
    "cacheable",
    "commit_without_io",
    "compiled_for_driver",
    "driver_executemany",
    "driver_fetch",
    "execution_listeners",
    "fast_path_supported",
    "handle_error_first",
    "has_execution_listeners",
    "may_learn_from",
    "may_read_on_driver",
    "may_write_on_driver",
    "order_by_clauses",
    "raise_as_sqlalchemy_would",
    "roll_back_after",
    "row_maker",
    "run_in_greenlet",
    "run_on_aiosqlite_thread",
    "without_autobegin",
    "writes_computed_in_python",
]

T = TypeVar("T")
# Makes Row objects from the driver's records; typed loosely so that callers assign
# its result to their own Row type without a cast, which costs at run time.
MakeRows = Callable[[Sequence[Any]], Any]

# Connection execution options that change nothing a driver-run statement depends on:
# isolation_level acts on the DBAPI connection, whose state is checked directly.
_NEUTRAL_OPTIONS = frozenset({"isolation_level"})


def run_in_greenlet(function: Callable[..., T], *args: Any) -> Awaitable[T]:
    """Run a synchronous SQLAlchemy function in its greenlet, from async code."""
    return greenlet_spawn(function, *args)


def await_in_greenlet(awaitable: Awaitable[T]) -> T:
    """Await from synchronous code that SQLAlchemy runs in its greenlet (a pool event)."""
    return await_(awaitable)


def fast_path_supported(connection: Connection) -> bool:
    """Whether every touchpoint below exists for this connection's dialect and adapter."""
    dialect = connection.dialect
    fairy = connection._dbapi_connection
    adapter = None if fairy is None else fairy.dbapi_connection
    return (
        dialect.driver == "asyncpg"
        and dialect.bind_typing is not BindTyping.SETINPUTSIZES
        # Without a compiled cache SQLAlchemy compiles, and lints, at every run.
        and getattr(connection.engine, "_compiled_cache", None) is not None
        and hasattr(dialect, "_invalidate_schema_cache_asof")
        and hasattr(dialect.execution_ctx_cls, "_init_compiled")
        and all(
            hasattr(connection, name)
            for name in (
                "_autobegin",
                "_handle_dbapi_exception",
                "_execution_options",
                "_transaction",
                "_nested_transaction",
                "_trans_context_manager",
                "_has_events",
                "_echo",
            )
        )
        and all(
            hasattr(adapter, name)
            for name in (
                "_execute_mutex",
                "_prepare",
                "_check_type_cache_invalidation",
                "_start_transaction",
                "_handle_exception",
                "_transaction",
                "isolation_level",
                "readonly",
                "deferrable",
            )
        )
    )


# ---------------------------------------------------------------------------------
# The compiled statement


def compiled_for_driver(compiled: object) -> SQLCompiler | None:
    """``compiled`` if SQLAlchemy would send its string as it is, with positional
    parameters, nothing rendered at run time, no values collected from
    ``.params()`` and no batching of an executemany; None otherwise."""
    if (
        isinstance(compiled, SQLCompiler)
        and compiled.positional
        and compiled.positiontup is not None
        and not compiled.literal_execute_params
        and not compiled.post_compile_params
        and not compiled._collected_params
        and compiled._insertmanyvalues is None
    ):
        return compiled
    return None


def order_by_clauses(statement: Any) -> tuple[Any, ...]:
    """The ``order_by`` a ``Select`` already has (no public accessor exists)."""
    return tuple(statement._order_by_clauses)


def cacheable(statement: Any) -> bool:
    """Whether SQLAlchemy caches the statement's compilation: one it cannot cache it
    compiles (and warns about) at every run."""
    return statement._generate_cache_key() is not None


def positional_names(compiled: SQLCompiler) -> Sequence[str]:
    """The bind name behind each positional argument, in the driver's order."""
    return cast(Sequence[str], compiled.positiontup)


def binds_by_position(compiled: SQLCompiler) -> list[BindParameter[Any]] | None:
    """The bind parameter behind each positional argument, in the driver's order.

    None when a name stands for none (an escaped name), or for several parameters that
    could get different values (SQLAlchemy's value for the name then depends on the
    order of its bookkeeping): several parameters under one name are taken only when
    they have the same key and none has a value of its own.
    """
    by_name: dict[str, BindParameter[Any]] = {}
    for bind, name in compiled.bind_names.items():
        first = by_name.setdefault(name, bind)
        if first is not bind and not (first.key == bind.key and first.required and bind.required):
            return None
    binds = [by_name.get(name) for name in positional_names(compiled)]
    if any(bind is None for bind in binds):
        return None
    return cast(list[BindParameter[Any]], binds)


def all_binds(compiled: SQLCompiler) -> list[BindParameter[Any]]:
    """Every bind parameter of the compilation, positional or not."""
    return list(compiled.bind_names)


def writes_computed_in_python(compiled: SQLCompiler) -> bool:
    """Whether running the write needs SQLAlchemy: Python-side defaults or RETURNING."""
    return bool(
        compiled.insert_prefetch or compiled.update_prefetch or compiled.effective_returning
    )


# ---------------------------------------------------------------------------------
# The result


def row_maker(result: CursorResult[*tuple[Any, ...]]) -> MakeRows | None:
    """SQLAlchemy's own maker of this result's rows, if it applies nothing but the
    metadata: the rows it makes from the driver's records are those ``result`` makes,
    keyed by name, by ``Column`` and by label. None when it converts values, filters
    the tuple, logs rows, or the metadata is rebuilt from each execution."""
    metadata = result._metadata
    if (
        not isinstance(metadata, CursorResultMetaData)
        or not metadata._safe_for_cache
        or metadata._tuplefilter is not None
        or metadata._effective_processors is not None
        or result._row_logging_fn is not None
        or result._source_supports_scalars
    ):
        return None
    return cast(MakeRows, result._row_getter[1])


# ---------------------------------------------------------------------------------
# The connection, checked at each run


def _plain(connection: Connection, listeners_known: bool = False) -> bool:
    """Nothing between ``execute`` and the driver would act on the statement: no
    listener (it may rewrite or trace it) but those ``listeners_known`` vouches for,
    no logging, no execution option but the neutral ones."""
    if connection._echo or (
        not listeners_known and (connection._has_events or connection.engine._has_events)
    ):
        return False
    options = connection._execution_options
    return not options or _NEUTRAL_OPTIONS.issuperset(options)


def has_execution_listeners(connection: Connection) -> bool:
    """Whether any listener may be attached to this connection's execution events."""
    return bool(connection._has_events or connection.engine._has_events)


# The execution events a statement run on the driver does not fire (``begin``,
# ``commit`` and the others still fire: the fast path goes through them as ``execute``).
_STATEMENT_EVENTS = (
    "before_execute",
    "before_cursor_execute",
    "after_cursor_execute",
    "after_execute",
)


def execution_listeners(connection: Connection) -> list[Any] | None:
    """Every listener on the engine's events of a statement's execution (those set on
    the ``Engine`` class included), which a statement run on the driver bypasses;
    None when the connection has listeners of its own."""
    if connection._has_events:
        return None
    dispatch: Any = connection.engine.dispatch
    listeners: list[Any] = []
    for name in _STATEMENT_EVENTS:
        collection = getattr(dispatch, name)
        if type(collection) in _PLAIN_COLLECTIONS:
            # Read at every statement the fast path runs: the collection's own lists,
            # in its iteration order, without its Python-level __iter__.
            listeners += collection.parent_listeners
            listeners += collection.listeners
        else:
            listeners += collection
    return listeners


_PLAIN_COLLECTIONS = (_EmptyListener, _ListenerCollection)


def may_learn_from(connection: Connection, *, listeners_known: bool = False) -> bool:
    """Whether ``execute`` on this connection, now, sends the driver what a plan made
    from the statement alone would send, and makes its rows the same way.

    ``listeners_known``: the caller checked the execution listeners (``statements``)."""
    dispatch = connection.dialect.dispatch
    return _plain(connection, listeners_known) and not (
        dispatch.do_execute or dispatch.do_execute_no_params or dispatch.do_executemany
    )


def may_read_on_driver(connection: Connection, *, listeners_known: bool = False) -> bool:
    """Whether ``execute`` on this connection, now, would send the statement as it is,
    outside any transaction, and give it nothing else to do.

    On every read: ordered and inlined for speed.
    """
    fairy = connection._dbapi_connection
    if fairy is None or connection._echo:
        return False
    transaction = connection._transaction
    if (
        (transaction is not None and not transaction.is_active)
        or connection._nested_transaction is not None
        or connection._trans_context_manager is not None
        or (not listeners_known and (connection._has_events or connection.engine._has_events))
    ):
        return False
    options = connection._execution_options
    if options and not _NEUTRAL_OPTIONS.issuperset(options):
        return False
    adapter: Any = fairy.dbapi_connection
    # Autocommit: the statement is all there is. Read-only (the read engine behind
    # PgBouncer's transaction pooling): ``driver_fetch`` begins the adapter's
    # transaction first, as its cursor would, and nothing in it can write. A read with
    # parameters or without reaches the dialect's do_execute (do_execute_no_params
    # needs an execution option, and there is none).
    return (
        adapter is not None
        and (adapter.isolation_level == "autocommit" or adapter.readonly)
        and not connection.dialect.dispatch.do_execute
    )


def may_write_on_driver(connection: Connection, *, listeners_known: bool = False) -> bool:
    """Whether ``begin()`` plus ``execute`` on this connection would run the statement
    in a transaction of its own with the server's defaults, as PostgreSQL's implicit
    transaction of one statement does."""
    fairy = connection._dbapi_connection
    if (
        fairy is None
        or connection._transaction is not None
        or connection._trans_context_manager is not None
        or not _plain(connection, listeners_known)
    ):
        return False
    dispatch = connection.dialect.dispatch
    if dispatch.do_execute or dispatch.do_executemany:
        return False
    adapter: Any = fairy.dbapi_connection
    if adapter is None or adapter._transaction is not None:
        return False
    if adapter.isolation_level == "autocommit":
        return True
    # BEGIN with no isolation level, READ ONLY or DEFERRABLE, and no transaction
    # started by hand underneath.
    return (
        adapter.isolation_level is None
        and not adapter.readonly
        and not adapter.deferrable
        and not cast(Any, fairy.driver_connection).is_in_transaction()
    )


def begin_implicitly(connection: Connection) -> None:
    """The connection's autobegin, as ``execute`` does first (on an autocommit
    connection it sends nothing: ``in_transaction()`` is then true, as after
    ``execute``)."""
    if connection._transaction is None:
        connection._autobegin()


def without_autobegin(connection: Connection) -> None:
    """Make ``execute`` (and so the fast path) on this connection begin no SQLAlchemy
    transaction of its own, as SQLAlchemy's own first-connect initialisation does.

    For an autocommit connection that transaction sends nothing and guards nothing,
    yet beginning it at the first statement and ending it after the last costs as
    much CPU as the fast path saves elsewhere. ``begin()`` still begins one.
    """
    connection._allow_autobegin = False


def begin_without_io(connection: Connection) -> RootTransaction:
    """``connection.begin()`` entered as a context manager, as ``async with
    connection.begin()`` does; the adapter sends BEGIN only with a statement, and the
    driver-run statement does not go through it."""
    transaction = connection.begin()
    transaction.__enter__()
    return transaction


def commit_without_io(transaction: RootTransaction) -> None:
    """Leave ``begin_without_io``'s transaction normally: its commit, which sends
    nothing, since no BEGIN was sent."""
    transaction.__exit__(None, None, None)


def roll_back_after(transaction: RootTransaction, error: BaseException) -> NoReturn:
    """Leave ``begin_without_io``'s transaction with ``error``, as ``async with`` would."""
    transaction.__exit__(type(error), error, error.__traceback__)
    raise error


# ---------------------------------------------------------------------------------
# The driver, called as SQLAlchemy's asyncpg cursor calls it


async def driver_fetch(connection: Connection, sql: str, arguments: Sequence[Any]) -> list[Any]:
    """The records of one statement, run as the adapter's cursor runs it.

    Under the adapter's lock (so it waits for, and is waited for by, any other
    statement on the connection), through the adapter's prepared statements (shared
    with ``execute``, invalidated with the dialect's schema cache), with the driver's
    errors translated by the adapter.
    """
    fairy: Any = connection._dbapi_connection
    adapter = fairy.dbapi_connection
    dialect: Any = connection.dialect
    async with adapter._execute_mutex:
        # A read-only adapter's read begins its transaction, as the adapter's cursor
        # would (writes run on the driver only where nothing begins one).
        if adapter.readonly and adapter._transaction is None:
            await adapter._start_transaction()
        try:
            prepared, _attributes = await adapter._prepare(
                sql, dialect._invalidate_schema_cache_asof
            )
            records: list[Any] = await prepared.fetch(*arguments)
            return records
        except Exception as error:
            adapter._handle_exception(error)
            raise  # not reached: the adapter raises


async def driver_executemany(
    connection: Connection, sql: str, arguments: Sequence[Sequence[Any]]
) -> None:
    """One executemany, run as the adapter's cursor runs it."""
    fairy: Any = connection._dbapi_connection
    adapter = fairy.dbapi_connection
    dialect: Any = connection.dialect
    async with adapter._execute_mutex:
        await adapter._check_type_cache_invalidation(dialect._invalidate_schema_cache_asof)
        try:
            await adapter._connection.executemany(sql, arguments)
        except Exception as error:
            adapter._handle_exception(error)


def raise_as_sqlalchemy_would(
    connection: Connection,
    compiled: SQLCompiler,
    parameters: Sequence[Mapping[str, Any]],
    error: BaseException,
) -> NoReturn:
    """SQLAlchemy's own handling of a statement that failed in the driver.

    Run in SQLAlchemy's greenlet, with ``error`` as the adapter raised it. The
    connection wraps it, runs the engine's ``handle_error`` hooks (which see a real
    execution context, as through ``execute``), lets the dialect react (asyncpg's
    invalidates its schema cache on a stale statement) and invalidates a lost
    connection: exactly as if the statement had gone through ``execute``.
    """
    context: Any = None
    if connection._dbapi_connection is not None:
        dialect: Any = connection.dialect
        context = dialect.execution_ctx_cls._init_compiled(
            dialect,
            connection,
            connection._dbapi_connection,
            connection._execution_options,
            compiled,
            list(parameters),
            compiled.statement,
            None,
            dialect.CACHE_HIT,
        )
    try:
        raise error
    except BaseException as active:  # the connection reads the exception being handled
        if context is None:
            connection._handle_dbapi_exception(active, compiled.string, None, None, None)
        many = context.executemany
        connection._handle_dbapi_exception(
            active,
            context.statement,
            context.parameters if many else context.parameters[0],
            context.cursor,
            context,
        )
    raise error  # not reached: the connection raises; defensive only


def handle_error_first(engine: Engine, listener: Callable[[ExceptionContext], None]) -> None:
    """Add a ``handle_error`` listener that runs before every other of the engine's.

    ``event.listen(..., insert=True)`` would say so, but ``DialectEvents._listen``
    (where ``handle_error`` lives since 2.0) drops ``insert``: the listener is appended.
    So it is appended, then moved to the head of the dialect's own listener deque (what
    ``insert`` does); the registry that ``event.remove`` consults keeps no order.
    Listeners set on the ``Engine`` or ``Dialect`` class still run before it.
    """
    event.listen(engine, "handle_error", listener)
    listeners = engine.dialect.dispatch.handle_error.listeners
    listeners.remove(listener)
    listeners.appendleft(listener)


# ---------------------------------------------------------------------------------
# aiosqlite


def run_on_aiosqlite_thread(connection: Any, job: Callable[[sqlite3.Connection], object]) -> bool:
    """Queue ``job(sqlite3 connection)`` on an aiosqlite connection's worker thread, without
    waiting for it: it runs after the calls already queued (the statement in progress)
    and before those queued later (a close, a stop). False if it cannot be queued.

    aiosqlite runs each call on its one thread, in the order of its queue, and has no
    public call that does not wait. Not waiting matters: the caller may be a cancelled
    task (which must not wait again), or the garbage collector on any thread. The job
    finds no connection once the thread has closed it, and is then skipped; its errors
    are the job's to handle (aiosqlite only logs them).
    """

    def run() -> None:
        sqlite_connection = connection._connection
        if sqlite_connection is not None:
            job(sqlite_connection)

    if hasattr(connection, "stop"):
        # aiosqlite 0.22+: the worker takes a call without a future.
        connection._tx.put_nowait((None, run))
        return True
    # Older: every call needs a future, which needs the event loop.
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    future = loop.create_future()
    future.add_done_callback(_consume)
    connection._tx.put_nowait((future, run))
    return True


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
