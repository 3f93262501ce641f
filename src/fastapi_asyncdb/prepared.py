"""Hot statements: compiled once by SQLAlchemy, run by asyncpg itself.

Through ``AsyncConnection.execute``, SQLAlchemy spends two to three times asyncpg's own
CPU on each statement (a greenlet, the execution context, the result), so an endpoint
of twenty small reads runs at a third of the speed of the same endpoint on asyncpg.
``Prepared`` takes a statement built once with SQLAlchemy, compiles it for the
connection's dialect, and on an autocommit asyncpg connection (the read connection)
hands the compiled SQL and the ordered parameters straight to asyncpg, which keeps it
prepared on that connection. The rows come back as SQLAlchemy ``Row`` objects, and
errors go through SQLAlchemy's own error handling: the same exception classes, the
engine's ``handle_error`` hooks, invalidation of a lost connection.

``run_statement`` does the same for one write (an ``insert``, ``update`` or
``delete``, or an ``executemany`` of one) that is a transaction of its own: asyncpg
sends it in PostgreSQL's implicit one-statement transaction, all rows or none, with
no ``BEGIN`` and ``COMMIT`` round trips; elsewhere SQLAlchemy runs it between them.
Values computed in Python at run time (column defaults) and ``RETURNING`` leave it
to SQLAlchemy too.

Whenever that would not give what ``connection.execute`` gives, SQLAlchemy runs the
statement instead: another driver, a transaction (whose ``BEGIN`` SQLAlchemy's
adapter sends lazily), a type that converts values (``Enum``, ``JSON``,
``Numeric(asdecimal=False)``, a ``TypeDecorator``, ...), expanding ``IN``
parameters, execution options, ``echo``, or a listener to any of the connection's
events (a listener may rewrite statements; tracing instrumentation sees every one).

The error path borrows SQLAlchemy's own handling, so that a failure is SQLAlchemy's
rather than an imitation; that and every other private name used here live in
``_compat``. Without them (another SQLAlchemy version), every run goes through
SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVarTuple, cast
from weakref import WeakKeyDictionary

from sqlalchemy import Select, UpdateBase
from sqlalchemy.engine import Connection, CursorResult, Dialect, Row
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

from . import _compat

__all__ = ["Prepared", "run_statement"]

_Ts = TypeVarTuple("_Ts")
Parameters = Mapping[str, Any]

# Execution options that change nothing a driver-run statement depends on.
_NEUTRAL_OPTIONS = frozenset({"isolation_level"})


class _Plan:
    """How one dialect runs the statement on its driver."""

    __slots__ = ("binds", "make_row", "sql")

    def __init__(
        self,
        sql: str,
        binds: list[tuple[str, str, Any]],
        make_row: Callable[[Iterable[Any]], Any] | None = None,  # None: a write, no rows
    ) -> None:
        self.sql = sql
        # (key, compiled name, value when none is given) per positional parameter.
        self.binds = binds
        self.make_row = make_row

    def arguments(self, parameters: Parameters | None) -> list[Any] | None:
        """The driver's positional arguments; None if one is missing (SQLAlchemy says so)."""
        given = parameters or {}
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


_REQUIRED = object()


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

    __slots__ = ("_plans", "_statement")

    def __init__(self, statement: Select[*_Ts]) -> None:
        self._statement = statement
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
        arguments = None if plan is None else plan.arguments(parameters)
        if plan is None or arguments is None or not _driver_may_run(sync):
            return None
        driver: Any = sync.connection.driver_connection
        try:
            records = await driver.fetch(plan.sql, *arguments)
        except BaseException as error:
            await _compat.run_in_greenlet(
                _compat.raise_as_sqlalchemy_would, sync, plan.sql, arguments, error
            )
            raise  # not reached: the line above raises SQLAlchemy's exception
        make_row = plan.make_row
        assert make_row is not None  # a read's plan
        return [make_row(record) for record in records]

    async def _through_sqlalchemy(
        self, connection: AsyncConnection, parameters: Parameters | None
    ) -> CursorResult[*_Ts]:
        result = await connection.execute(self._statement, parameters)
        sync = connection.sync_connection
        if sync is not None and sync.dialect not in self._plans and not sync.invalidated:
            self._plans[sync.dialect] = _plan(self._statement, sync, result)
        return result


WriteParameters = Parameters | Sequence[Parameters] | None
# Per statement (built once, at import), per dialect and parameter shape.
_write_plans: WeakKeyDictionary[
    UpdateBase, dict[tuple[Dialect, tuple[str, ...], bool], _Plan | None]
]
_write_plans = WeakKeyDictionary()


async def run_statement(
    connection: AsyncConnection, statement: UpdateBase, parameters: WriteParameters = None
) -> None:
    """Run one write statement on ``connection`` as a transaction of its own.

    ``connection`` must not be in a transaction yet. A list of parameter sets is one
    ``executemany``: every row or none. On asyncpg the driver runs the statement
    itself, in PostgreSQL's implicit transaction of one statement, with no ``BEGIN``
    or ``COMMIT`` round trip; wherever that would not be exact (see the module), and
    on other drivers, SQLAlchemy runs it between ``BEGIN`` and ``COMMIT``.
    """
    rows = (
        [parameters or {}] if parameters is None or isinstance(parameters, Mapping) else parameters
    )
    if not rows:
        return
    sync = connection.sync_connection
    if sync is None or sync.in_transaction():
        raise RuntimeError("run_statement needs a connection with no transaction begun")
    plan = _write_plan(statement, sync, rows)
    arguments = [] if plan is None else [plan.arguments(row) for row in rows]
    if plan is None or None in arguments or not _nothing_between(sync):
        async with connection.begin():
            await connection.execute(statement, parameters)
        return
    driver: Any = sync.connection.driver_connection
    try:
        if len(arguments) > 1:
            await driver.executemany(plan.sql, arguments)
        else:
            await driver.execute(plan.sql, *cast(list[Any], arguments[0]))
    except BaseException as error:
        await _compat.run_in_greenlet(
            _compat.raise_as_sqlalchemy_would, sync, plan.sql, arguments, error
        )
        raise  # not reached: the line above raises SQLAlchemy's exception


def _write_plan(
    statement: UpdateBase, connection: Connection, rows: Sequence[Parameters]
) -> _Plan | None:
    dialect = connection.dialect
    if dialect.driver != "asyncpg":
        return None
    # SQLAlchemy compiles for the first parameter set's keys (an UPDATE sets the
    # columns it names), and for executemany when there is more than one.
    keys, many = tuple(sorted(rows[0])), len(rows) > 1
    plans = _write_plans.setdefault(statement, {})
    shape = (dialect, keys, many)
    if shape not in plans:
        compiled = _compat.compiled_for_driver(
            statement.compile(dialect=dialect, column_keys=list(keys), for_executemany=many)
        )
        plan = None
        if (
            compiled is not None
            and _compat.error_path_available(connection)
            and (compiled.isinsert or compiled.isupdate or compiled.isdelete)
            # Nothing computed in Python at run time, nothing to return.
            and not _compat.writes_computed_in_python(compiled)
        ):
            binds = _positional_binds(compiled, dialect)
            plan = None if binds is None else _Plan(compiled.string, binds)
        plans[shape] = plan
    return plans[shape]


def _plan(
    statement: Select[*tuple[Any, ...]],
    connection: Connection,
    result: CursorResult[*tuple[Any, ...]],
) -> _Plan | None:
    """A plan when asyncpg alone returns exactly what SQLAlchemy returned in ``result``."""
    dialect = connection.dialect
    if dialect.driver != "asyncpg" or not _compat.error_path_available(connection):
        return None
    # Compiled here, not taken from SQLAlchemy's cache: a cached compilation of an
    # equal statement carries that statement's literal values.
    compiled = _compat.compiled_for_driver(statement.compile(dialect=dialect))
    if compiled is None:
        return None
    binds = _positional_binds(compiled, dialect)
    if binds is None:
        return None
    cursor = result.cursor
    description = None if cursor is None else cursor.description
    columns = list(statement.selected_columns)
    if description is None or len(description) != len(columns):
        return None
    for column, described in zip(columns, description, strict=True):
        if column.type.dialect_impl(dialect).result_processor(dialect, described[1]) is not None:
            return None
    return _Plan(compiled.string, binds, _compat.row_factory(list(result.keys())))


def _positional_binds(compiled: SQLCompiler, dialect: Dialect) -> list[tuple[str, str, Any]] | None:
    """(key, compiled name, value when none is given) per driver argument, or None when
    SQLAlchemy would change a value on its way to the driver."""
    binds: list[tuple[str, str, Any]] = []
    for name in _compat.positional_names(compiled):
        bind = compiled.binds.get(name)
        if (
            bind is None  # an escaped name: left to SQLAlchemy, which knows its escaping
            or bind.callable is not None
            or bind.expanding
            or bind.type.dialect_impl(dialect).bind_processor(dialect) is not None
        ):
            return None
        binds.append((bind.key, name, _REQUIRED if bind.required else bind.value))
    return binds


def _driver_may_run(connection: Connection) -> bool:
    """Whether a driver-run read on this connection, now, gives SQLAlchemy's result."""
    # Autocommit only: in a transaction, SQLAlchemy's adapter sends BEGIN with its
    # first statement, and a statement that bypassed it would run outside.
    return _nothing_between(connection) and (
        getattr(connection.connection.dbapi_connection, "autocommit", False) is True
    )


def _nothing_between(connection: Connection) -> bool:
    """No SQLAlchemy feature on this connection would act on a statement it runs."""
    if (
        connection.closed
        or connection.invalidated
        or connection.engine.echo
        or _compat.has_execution_listeners(connection)
    ):
        return False
    return _NEUTRAL_OPTIONS.issuperset(connection.get_execution_options())
