"""Hot statements: compiled once by SQLAlchemy, run by asyncpg itself.

Through ``AsyncConnection.execute``, SQLAlchemy spends two to three times asyncpg's own
CPU on each statement (a greenlet, the execution context, the result), so an endpoint
of twenty small reads runs at a third of the speed of the same endpoint on asyncpg.
``Prepared`` takes a statement built once with SQLAlchemy, and on an autocommit
asyncpg connection (the read connection; behind PgBouncer's transaction pooling, a
read-only one, whose transaction it begins as the cursor would) hands the compiled SQL
and the ordered parameters straight to the asyncpg adapter's prepared statement, as
SQLAlchemy's own cursor would: under the adapter's lock, so that concurrent calls on
one connection take turns as ``execute``'s do, and after the connection's autobegin,
so that it is left as ``execute`` leaves it. The rows are made by the maker SQLAlchemy
used for the same statement, so they are keyed by name, by ``Column`` and by label as
``Result`` rows are; errors go through SQLAlchemy's own error handling with a real
execution context: the same exception classes and messages, the engine's
``handle_error`` hooks, invalidation of a lost connection.

``run_statement`` does the same for one write (an ``insert``, ``update`` or
``delete``, or an ``executemany`` of one) that is a transaction of its own: asyncpg
sends it in PostgreSQL's implicit one-statement transaction, all rows or none, with
no ``BEGIN`` and ``COMMIT`` round trips; elsewhere SQLAlchemy runs it between them.
Values computed in Python at run time (column defaults) and ``RETURNING`` leave it
to SQLAlchemy too.

The first run of a statement (of a write: of each shape of its parameters) on each
engine goes through SQLAlchemy, and the fast path is learnt from it: the SQL and the
driver arguments SQLAlchemy produced must be exactly those the fast path would send,
or the statement stays with SQLAlchemy. After that, SQLAlchemy runs the statement
whenever the driver alone would not give what ``connection.execute`` gives: another
driver, a transaction that may write (whose ``BEGIN`` SQLAlchemy's adapter sends
lazily), a type that
converts values (``Enum``, ``JSON``, ``Numeric(asdecimal=False)``, a ``TypeDecorator``,
...), expanding ``IN`` parameters, values given by ``.params()``, any execution option
on the statement, or on the connection or its engine (``schema_translate_map``,
``yield_per``, ...; only ``isolation_level`` is checked at its source instead),
logging, or a listener to the events of a statement's execution (a listener may
rewrite statements), but for those whose work the fast path does itself: OpenTelemetry's
SQLAlchemy instrumentation and the library's statement timing (the slow-statement log,
the statement duration metrics: ``statements``).

Every private SQLAlchemy name used here lives in ``_compat``; without them (another
SQLAlchemy version), every run goes through SQLAlchemy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Generic, NoReturn, TypeVarTuple
from weakref import WeakKeyDictionary

from sqlalchemy import Select, UpdateBase
from sqlalchemy.engine import Connection, CursorResult, Dialect, Row
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

from . import _compat, statements

__all__ = ["Prepared", "keep_write_fast_path_off", "run_statement"]

logger = logging.getLogger(__name__)

_Ts = TypeVarTuple("_Ts")
Parameters = Mapping[str, Any]
_REQUIRED = object()


# Dialects (one per engine) whose writes all go through SQLAlchemy, and why.
_kept_off: WeakKeyDictionary[Dialect, str] = WeakKeyDictionary()
_reasons_logged: set[str] = set()


def keep_write_fast_path_off(dialect: Dialect, reason: str) -> None:
    """Make ``run_statement`` leave every write of this dialect's engine to SQLAlchemy;
    the reason is logged once per process."""
    _kept_off[dialect] = reason
    if reason not in _reasons_logged:
        _reasons_logged.add(reason)
        logger.info("%s", reason)


class _Plan:
    """How one dialect runs the statement on its driver.

    It holds no compilation, statement or dialect: a plan lives as long as its
    statement and is dropped with its engine's dialect (the error path compiles again).
    """

    __slots__ = ("binds", "make_rows", "sql")

    def __init__(
        self,
        sql: str,
        binds: list[tuple[str, str, Any]],
        make_rows: _compat.MakeRows | None = None,  # None: a write, no rows
    ) -> None:
        self.sql = sql
        # (key, compiled name, value when none is given) per positional parameter.
        self.binds = binds
        self.make_rows = make_rows

    def arguments(self, parameters: Parameters | None) -> list[Any] | None:
        """The driver's positional arguments, as SQLAlchemy builds them from the
        parameters; None if one is missing (SQLAlchemy says so)."""
        if parameters is None:
            given: Parameters = {}
        elif type(parameters) is dict or isinstance(parameters, Mapping):
            given = parameters
        else:
            return None  # a list: SQLAlchemy reads it its own way
        arguments = []
        for key, name, default in self.binds:
            if key in given:
                arguments.append(given[key])
            elif name in given:
                arguments.append(given[name])
            elif default is not _REQUIRED:
                arguments.append(default)
            else:
                return None
        return arguments


def _new_plan(
    compiled: object, dialect: Dialect, make_rows: _compat.MakeRows | None = None
) -> _Plan | None:
    """A plan for ``compiled``, or None when SQLAlchemy would change the SQL or a value
    on its way to the driver."""
    driver_compiled = _compat.compiled_for_driver(compiled)
    if driver_compiled is None:
        return None
    binds = _compat.binds_by_position(driver_compiled)
    if binds is None or any(
        bind.callable is not None
        or bind.expanding
        or bind.type.dialect_impl(dialect).bind_processor(dialect) is not None
        for bind in _compat.all_binds(driver_compiled)
    ):
        return None
    positional = [
        (bind.key, name, _REQUIRED if bind.required else bind.value)
        for bind, name in zip(binds, _compat.positional_names(driver_compiled), strict=True)
    ]
    return _Plan(driver_compiled.string, positional, make_rows)


def _sent_as_planned(
    plan: _Plan, result: CursorResult[*tuple[Any, ...]], rows: Sequence[Parameters | None]
) -> bool:
    """Whether SQLAlchemy, running the statement into ``result``, sent the driver exactly
    the SQL and the arguments the plan sends for the same parameters."""
    context: Any = result.context
    sent = [list(arguments) for arguments in context.parameters]
    return context.statement == plan.sql and sent == [plan.arguments(row) for row in rows]


class Prepared(Generic[*_Ts]):
    """A ``select()`` built once, run at the driver's own speed where that is exact.

    Build it at module level, next to the model, and run it on the connection of a
    unit of work::

        WORLD_BY_ID = Prepared(
            select(World.id, World.randomnumber).where(World.id == bindparam("id"))
        )

        @app.get("/world/{world_id}")
        async def world(world_id: int, connection: ReadConnectionDep) -> WorldOut:
            row = await WORLD_BY_ID.one(connection, {"id": world_id})
            return WorldOut(id=row.id, randomNumber=row.randomnumber)

    The first run on each dialect goes through SQLAlchemy and decides whether later
    runs may skip it. Results and errors are those of ``connection.execute``.
    """

    __slots__ = ("_learnable", "_plans", "_statement")

    def __init__(self, statement: Select[*_Ts]) -> None:
        self._statement = statement
        # A statement's own execution options (schema_translate_map, yield_per, ...)
        # act inside SQLAlchemy's execute; the statement is immutable, so once is enough.
        self._learnable = not statement.get_execution_options()
        # None: this dialect always runs the statement through SQLAlchemy. Weak: an
        # engine disposed of takes its plan with it.
        self._plans: WeakKeyDictionary[Dialect, _Plan | None] = WeakKeyDictionary()

    @property
    def statement(self) -> Select[*_Ts]:
        return self._statement

    def __repr__(self) -> str:
        return f"Prepared({self._statement})"

    async def all(
        self, connection: AsyncConnection, parameters: Parameters | None = None
    ) -> Sequence[Row[*_Ts]]:
        """Every row, as ``(await connection.execute(statement, parameters)).all()``."""
        rows = await self._driver_rows(connection, parameters)
        if rows is None:
            return (await self._through_sqlalchemy(connection, parameters)).all()
        return rows

    async def one(
        self, connection: AsyncConnection, parameters: Parameters | None = None
    ) -> Row[*_Ts]:
        """Exactly one row, or SQLAlchemy's ``NoResultFound`` / ``MultipleResultsFound``."""
        rows = await self._driver_rows(connection, parameters)
        if rows is None:
            return (await self._through_sqlalchemy(connection, parameters)).one()
        if len(rows) == 1:
            return rows[0]
        if rows:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        raise NoResultFound("No row was found when one was required")

    async def one_or_none(
        self, connection: AsyncConnection, parameters: Parameters | None = None
    ) -> Row[*_Ts] | None:
        """One row or None; more than one raises ``MultipleResultsFound``."""
        rows = await self._driver_rows(connection, parameters)
        if rows is None:
            return (await self._through_sqlalchemy(connection, parameters)).one_or_none()
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return rows[0] if rows else None

    async def scalar(
        self, connection: AsyncConnection, parameters: Parameters | None = None
    ) -> Any:
        """The first column of the first row, or None when there is no row."""
        rows: list[Any] | None = await self._driver_rows(connection, parameters)
        if rows is None:
            result: Any = await self._through_sqlalchemy(connection, parameters)
            return result.scalar()
        return rows[0][0] if rows else None

    async def _driver_rows(
        self, connection: AsyncConnection, parameters: Parameters | None
    ) -> list[Row[*_Ts]] | None:
        """The rows, from the driver; None when SQLAlchemy must run the statement."""
        sync = connection.sync_connection
        if sync is None:
            return None
        plan = self._plans.get(sync.dialect)
        if plan is None:
            return None
        arguments = plan.arguments(parameters)
        if arguments is None:
            return None
        watch, traced, known = None, False, False
        if _compat.has_execution_listeners(sync):  # tracing, or the slow-statement log
            known, watch, traced = statements.driver_watch(sync)
            if not known:
                return None
        if not _compat.may_read_on_driver(sync, listeners_known=known):
            return None
        _compat.begin_implicitly(sync)
        try:
            if watch is None:
                records = await _compat.driver_fetch(sync, plan.sql, arguments)
            else:
                records = await statements.observed(
                    watch, traced, plan.sql, _compat.driver_fetch, sync, plan.sql, arguments
                )
        except BaseException as error:
            await _compat.run_in_greenlet(
                _compat.raise_as_sqlalchemy_would,
                sync,
                self._statement.compile(dialect=sync.dialect),
                [] if parameters is None else [parameters],
                error,
            )
            raise  # not reached: the line above raises SQLAlchemy's exception
        make_rows = plan.make_rows
        assert make_rows is not None  # a read's plan
        rows: list[Row[*_Ts]] = make_rows(records)  # no cast: its generic costs at run time
        return rows

    async def _through_sqlalchemy(
        self, connection: AsyncConnection, parameters: Parameters | None
    ) -> CursorResult[*_Ts]:
        sync = connection.sync_connection
        learn = (
            self._learnable
            and sync is not None
            and sync.dialect not in self._plans
            and (parameters is None or isinstance(parameters, Mapping))  # not a list
            and _may_learn_from(sync)
        )
        result = await connection.execute(self._statement, parameters)
        if learn and sync is not None and _may_learn_from(sync):
            self._plans[sync.dialect] = self._plan(sync, result, parameters)
        return result

    def _plan(
        self, connection: Connection, result: CursorResult[*_Ts], parameters: Parameters | None
    ) -> _Plan | None:
        """A plan when asyncpg alone returns exactly what SQLAlchemy returned in ``result``."""
        dialect = connection.dialect
        if not _compat.fast_path_supported(connection) or not _compat.cacheable(self._statement):
            return None
        make_rows = _compat.row_maker(result)
        if make_rows is None:
            return None
        # Compiled here, not taken from SQLAlchemy's cache: a cached compilation of an
        # equal statement carries that statement's literal values.
        plan = _new_plan(self._statement.compile(dialect=dialect), dialect, make_rows)
        if plan is None or not _sent_as_planned(plan, result, [parameters]):
            return None
        return plan


def _may_learn_from(connection: Connection) -> bool:
    """``_compat.may_learn_from``, with the listeners whose work the fast path does
    (tracing, the slow-statement log) accepted."""
    return _compat.may_learn_from(
        connection, listeners_known=statements.listeners_known(connection)
    )


WriteParameters = Parameters | Sequence[Parameters] | None
_Shape = tuple[tuple[str, ...], bool]  # the first parameter set's keys; executemany or not
# Per statement (built once, at import), per dialect, per parameter shape; a shape not
# yet run through SQLAlchemy has no entry. Weak both ways: neither a statement made
# for one call nor a disposed engine's dialect is kept alive here.
_write_plans: WeakKeyDictionary[UpdateBase, WeakKeyDictionary[Dialect, dict[_Shape, _Plan | None]]]
_write_plans = WeakKeyDictionary()


async def run_statement(
    connection: AsyncConnection, statement: UpdateBase, parameters: WriteParameters = None
) -> None:
    """Run one write statement on ``connection`` as a transaction of its own.

    ``connection`` must not be in a transaction yet. A list of parameter sets is one
    ``executemany``: every row or none; an empty list writes nothing. On asyncpg the
    driver runs the statement itself, in PostgreSQL's implicit transaction of one
    statement, with no ``BEGIN`` or ``COMMIT`` round trip; wherever that would not be
    exact (see the module), and on other drivers, SQLAlchemy runs it between ``BEGIN``
    and ``COMMIT``.
    """
    rows = (
        [parameters or {}] if parameters is None or isinstance(parameters, Mapping) else parameters
    )
    if not rows:
        return
    sync = connection.sync_connection
    if sync is None or sync.in_transaction():
        raise RuntimeError("run_statement needs a connection with no transaction begun")
    # SQLAlchemy compiles for the first parameter set's keys (an UPDATE sets the
    # columns it names), and for executemany when there is more than one. Anything but
    # mappings it refuses in its own words.
    shape = (tuple(sorted(rows[0])), len(rows) > 1) if isinstance(rows[0], Mapping) else None
    by_dialect = _write_plans.get(statement)
    plans = None if by_dialect is None or shape is None else by_dialect.get(sync.dialect)
    plan = None if plans is None or shape is None else plans.get(shape)
    if plan is not None:
        watch, traced, known = None, False, False
        if _compat.has_execution_listeners(sync):
            known, watch, traced = statements.driver_watch(sync)
        arguments = [plan.arguments(row) for row in rows]
        if (
            (known or not _compat.has_execution_listeners(sync))
            and _compat.may_write_on_driver(sync, listeners_known=known)
            and None not in arguments
        ):
            await _write_on_driver(sync, statement, plan, rows, arguments, watch, traced)
            return
    learn = shape is not None and (plans is None or shape not in plans) and _may_learn_from(sync)
    async with connection.begin():
        result = await connection.execute(statement, parameters)
    if learn and shape is not None and _may_learn_from(sync):
        by_dialect = _write_plans.setdefault(statement, WeakKeyDictionary())
        by_dialect.setdefault(sync.dialect, {})[shape] = _write_plan(statement, sync, rows, result)


async def _write_on_driver(
    connection: Connection,
    statement: UpdateBase,
    plan: _Plan,
    rows: Sequence[Parameters],
    arguments: list[Any],  # a list of arguments per row
    watch: statements.Watch | None,
    traced: bool,
) -> None:
    transaction = _compat.begin_without_io(connection)
    try:
        run: Any = _compat.driver_executemany if len(arguments) > 1 else _compat.driver_fetch
        run_arguments = arguments if len(arguments) > 1 else arguments[0]
        if watch is None:
            await run(connection, plan.sql, run_arguments)
        else:
            await statements.observed(
                watch, traced, plan.sql, run, connection, plan.sql, run_arguments
            )
    except BaseException as error:
        compiled = _compile_write(statement, connection.dialect, rows)
        await _compat.run_in_greenlet(
            _fail_in_transaction, connection, transaction, compiled, rows, error
        )
        raise  # not reached: the line above raises SQLAlchemy's exception
    _compat.commit_without_io(transaction)


def _fail_in_transaction(
    connection: Connection,
    transaction: Any,
    compiled: SQLCompiler,
    rows: Sequence[Parameters],
    error: BaseException,
) -> NoReturn:
    try:
        _compat.raise_as_sqlalchemy_would(connection, compiled, rows, error)
    except BaseException as raised:
        _compat.roll_back_after(transaction, raised)


def _compile_write(
    statement: UpdateBase, dialect: Dialect, rows: Sequence[Parameters]
) -> SQLCompiler:
    """As SQLAlchemy compiles it for these rows: for the first one's keys, and for
    executemany when there is more than one."""
    return statement.compile(
        dialect=dialect, column_keys=sorted(rows[0]), for_executemany=len(rows) > 1
    )


def _write_plan(
    statement: UpdateBase,
    connection: Connection,
    rows: Sequence[Parameters],
    result: CursorResult[Any],
) -> _Plan | None:
    """A plan when asyncpg alone sends exactly what SQLAlchemy sent for ``result``."""
    if (
        statement.get_execution_options()
        or connection.dialect in _kept_off
        or not _compat.fast_path_supported(connection)
        or not _compat.cacheable(statement)
    ):
        return None
    dialect = connection.dialect
    compiled = _compile_write(statement, dialect, rows)
    if not isinstance(compiled, SQLCompiler) or not (
        compiled.isinsert or compiled.isupdate or compiled.isdelete
    ):
        return None
    if _compat.writes_computed_in_python(compiled):  # defaults computed in Python, RETURNING
        return None
    plan = _new_plan(compiled, dialect)
    if plan is None or not _sent_as_planned(plan, result, rows):
        return None
    return plan
