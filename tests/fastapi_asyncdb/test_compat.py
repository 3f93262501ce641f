"""Each touchpoint of SQLAlchemy's private API, checked against the installed SQLAlchemy.

A failure here means a SQLAlchemy release changed something ``_compat`` relies on:
adapt ``_compat`` (and nothing else) before widening the bound in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import (
    Column,
    Enum,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.engine import ExceptionContext, Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnClause

from fastapi_asyncdb import Database, Prepared, _compat

pytestmark = pytest.mark.usefixtures("clean_environment")

# asyncpg's dialect compiles positionally, as the fast path needs.
ASYNCPG: Any = asyncpg.dialect


class Size(enum.Enum):
    small = "small"


metadata = MetaData()
items = Table(
    "compat_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), unique=True),
    Column("tag", String(50), default=lambda: "computed"),
    Column("size", Enum(Size)),
)
ITEM_NAME = select(items.c.id, items.c.name).where(items.c.id == bindparam("id"))


def compile_for_driver(statement: Any, **kwargs: Any) -> SQLCompiler:
    compiled = _compat.compiled_for_driver(statement.compile(dialect=ASYNCPG(), **kwargs))
    assert compiled is not None
    return compiled


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    # Metrics off: their statement timing listens to the engine's execution events,
    # which these primitives refuse unless told the caller checked the listeners.
    async with Database(url=database_url, metrics=False) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
            await connection.run_sync(metadata.create_all)
            await connection.execute(
                insert(items),
                [{"id": 1, "name": "a", "size": Size.small}, {"id": 2, "name": "b", "size": None}],
            )
        yield database


def sync_of(connection: AsyncConnection) -> Any:
    sync = connection.sync_connection
    assert sync is not None
    return sync


def logged_queries(connection: AsyncConnection) -> list[str]:
    """What asyncpg sends through its simple query path (BEGIN, COMMIT, ROLLBACK)."""
    sent: list[str] = []
    driver: Any = sync_of(connection).connection.driver_connection
    driver.add_query_logger(lambda query: sent.append(query.query))
    return sent


async def test_run_in_greenlet_lets_sync_code_await_the_event_loop() -> None:
    async def answer() -> int:
        return 42

    def sync_caller() -> int:
        return _compat.await_in_greenlet(answer())

    assert await _compat.run_in_greenlet(sync_caller) == 42


async def test_fast_path_supported_on_asyncpg_with_a_compiled_cache_only(
    database: Database,
) -> None:
    async with database.read_connection() as connection:
        supported = _compat.fast_path_supported(sync_of(connection))
    assert supported is (database.backend.name == "postgresql")
    uncached = create_async_engine(database.settings.sqlalchemy_url, query_cache_size=0)
    try:
        async with uncached.connect() as connection:
            assert _compat.fast_path_supported(sync_of(connection)) is False
    finally:
        await uncached.dispose()


def test_cacheable_is_false_for_a_construct_sqlalchemy_cannot_cache() -> None:
    class Uncached(ColumnClause[Any]):
        inherit_cache = False

    @compiles(Uncached)
    def _compile(element: Uncached, compiler: Any, **kw: Any) -> str:
        return "1"

    assert _compat.cacheable(ITEM_NAME) is True
    assert _compat.cacheable(select(Uncached("x"))) is False


def test_order_by_clauses_are_the_statements_own_order() -> None:
    assert _compat.order_by_clauses(select(items.c.id)) == ()
    ordered = select(items.c.id).order_by(items.c.name, items.c.id.desc())
    assert [str(clause) for clause in _compat.order_by_clauses(ordered)] == [
        "compat_items.name",
        "compat_items.id DESC",
    ]
    assert _compat.order_by_clauses(ordered.order_by(None)) == ()


def test_compiled_for_driver_takes_a_positional_compilation() -> None:
    assert _compat.compiled_for_driver(ITEM_NAME.compile(dialect=ASYNCPG())) is not None


def test_compiled_for_driver_refuses_what_sqlalchemy_changes_at_run_time() -> None:
    refused = [
        select(items.c.name).where(items.c.id.in_(bindparam("ids", expanding=True))),
        select(items.c.name).where(items.c.id == bindparam("id", literal_execute=True)),
        ITEM_NAME.params(id=1),  # values collected from .params()
    ]
    for statement in refused:
        assert _compat.compiled_for_driver(statement.compile(dialect=ASYNCPG())) is None
    # An executemany of INSERT ... RETURNING is sent in batches of rows.
    batched = insert(items).returning(items.c.id)
    keys = ["id", "name", "size", "tag"]
    compiled = batched.compile(dialect=ASYNCPG(), column_keys=keys, for_executemany=True)
    assert _compat.compiled_for_driver(compiled) is None


def test_binds_by_position_follow_the_order_of_the_sql() -> None:
    statement = (
        sql_update(items).where(items.c.id == bindparam("key")).values(name=bindparam("new"))
    )
    binds = _compat.binds_by_position(compile_for_driver(statement))
    assert binds is not None
    assert [bind.key for bind in binds] == ["new", "key"]
    assert {bind.key for bind in _compat.all_binds(compile_for_driver(statement))} == {
        "new",
        "key",
    }


def test_positional_names_follow_the_placeholders_of_the_sql() -> None:
    statement = (
        sql_update(items).where(items.c.id == bindparam("key")).values(name=bindparam("new"))
    )
    compiled = compile_for_driver(statement)
    names = list(_compat.positional_names(compiled))
    assert names == ["new", "key"]
    assert compiled.string.index("$1") < compiled.string.index("$2")


def test_binds_by_position_take_a_required_name_used_twice_but_not_two_defaults() -> None:
    twice = select(items.c.id).where(
        or_(items.c.id == bindparam("n"), items.c.name == bindparam("n", type_=String))
    )
    binds = _compat.binds_by_position(compile_for_driver(twice))
    assert binds is not None
    assert {bind.key for bind in binds} == {"n"}
    defaults = select(items.c.id).where(
        or_(items.c.id == bindparam("n", 1), items.c.name == bindparam("n", "1"))
    )
    assert _compat.binds_by_position(compile_for_driver(defaults)) is None


def test_writes_computed_in_python_sees_python_defaults_and_returning() -> None:
    plain = compile_for_driver(
        sql_update(items).values(name=bindparam("name")), column_keys=["name"]
    )
    defaulted = compile_for_driver(insert(items), column_keys=["id", "name"])
    returning = compile_for_driver(
        insert(items).returning(items.c.id), column_keys=["id", "name", "tag"]
    )
    assert _compat.writes_computed_in_python(plain) is False
    assert _compat.writes_computed_in_python(defaulted) is True
    assert _compat.writes_computed_in_python(returning) is True


async def test_row_maker_makes_the_rows_the_result_makes(database: Database) -> None:
    async with database.read_connection() as connection:
        result = await connection.execute(ITEM_NAME, {"id": 1})
        make_rows = _compat.row_maker(result)
        assert make_rows is not None
        expected = result.one()
        (row,) = make_rows([(1, "a")])
        converting = _compat.row_maker(await connection.execute(select(items.c.size)))
        textual = _compat.row_maker(await connection.execute(text("SELECT id FROM compat_items")))
    assert isinstance(row, Row)
    assert row == expected
    assert row._fields == expected._fields
    assert row._mapping[items.c.name] == "a"
    assert items.c.id in row._mapping
    assert converting is None  # Enum converts each value
    assert textual is None  # a plain string's columns are matched again at each run


async def test_may_learn_from_refuses_listeners_logging_and_execution_options(
    database: Database,
) -> None:
    async with database.read_connection() as connection:
        sync = sync_of(connection)
        assert _compat.may_learn_from(sync) is True

        def listener(*_args: Any) -> None:
            pass

        await connection.execution_options(schema_translate_map={None: "other"})
        assert _compat.may_learn_from(sync) is False
        engine = database.read_engine.sync_engine
        event.listen(engine, "before_cursor_execute", listener)
        event.remove(engine, "before_cursor_execute", listener)
    async with database.read_connection() as connection:
        # SQLAlchemy keeps checking for listeners on an engine that ever had one.
        assert _compat.may_learn_from(sync_of(connection)) is False
    echoing = create_async_engine(database.settings.sqlalchemy_url, echo=True)
    try:
        async with echoing.connect() as connection:
            assert _compat.may_learn_from(sync_of(connection)) is False
    finally:
        await echoing.dispose()


@pytest.mark.backends("postgresql")
async def test_may_read_on_driver_only_outside_transactions_and_options(
    database: Database,
) -> None:
    async with database.read_connection() as connection:
        sync = sync_of(connection)
        assert _compat.may_read_on_driver(sync) is True
        async with connection.begin():  # a transaction context: SQLAlchemy checks it
            assert _compat.may_read_on_driver(sync) is False
        assert _compat.may_read_on_driver(sync) is True

        def do_execute(*_args: Any) -> None:
            return None

        dialect = database.read_engine.sync_engine
        event.listen(dialect, "do_execute", do_execute)
        try:
            assert _compat.may_read_on_driver(sync) is False
        finally:
            event.remove(dialect, "do_execute", do_execute)
        await connection.execution_options(logging_token="t")
        assert _compat.may_read_on_driver(sync) is False
    async with database.engine.connect() as connection:  # not autocommit
        assert _compat.may_read_on_driver(sync_of(connection)) is False
        await connection.invalidate()
        assert _compat.may_read_on_driver(sync_of(connection)) is False


@pytest.mark.backends("postgresql")
async def test_may_write_on_driver_only_with_no_transaction_and_default_isolation(
    database: Database,
) -> None:
    async with database.engine.connect() as connection:
        sync = sync_of(connection)
        assert _compat.may_write_on_driver(sync) is True
        await connection.execute(text("SELECT 1"))  # autobegun
        assert _compat.may_write_on_driver(sync) is False
        await connection.rollback()
        await connection.exec_driver_sql("SELECT 1")
        await connection.rollback()
        assert _compat.may_write_on_driver(sync) is True
        await connection.execution_options(isolation_level="SERIALIZABLE")
        assert _compat.may_write_on_driver(sync) is False
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        assert _compat.may_write_on_driver(sync) is True


@pytest.mark.backends("postgresql")
async def test_implicit_and_explicit_begin_send_nothing(database: Database) -> None:
    async with database.engine.connect() as connection:
        sync = sync_of(connection)
        sent = logged_queries(connection)
        _compat.begin_implicitly(sync)
        assert connection.in_transaction()
        await connection.rollback()
        transaction = _compat.begin_without_io(sync)
        assert connection.in_transaction()
        _compat.commit_without_io(transaction)
        assert not connection.in_transaction()
        transaction = _compat.begin_without_io(sync)
        with pytest.raises(ValueError, match="boom"):
            _compat.roll_back_after(transaction, ValueError("boom"))
        assert not connection.in_transaction()
        await asyncio.sleep(0.01)  # asyncpg logs soon after each query
        assert sent == []


async def test_without_autobegin_execute_and_prepared_leave_no_transaction(
    database: Database,
) -> None:
    prepared = Prepared(ITEM_NAME)
    async with database.read_connection() as connection:
        _compat.without_autobegin(sync_of(connection))
        await connection.execute(ITEM_NAME, {"id": 1})
        assert not connection.in_transaction()
        for _ in range(2):  # learnt, then the driver's on PostgreSQL
            assert (await prepared.one(connection, {"id": 1})).name == "a"
            assert not connection.in_transaction()
        async with connection.begin():
            assert connection.in_transaction()


@pytest.mark.backends("postgresql")
async def test_driver_fetch_takes_turns_with_sqlalchemy_on_one_connection(
    database: Database,
) -> None:
    sql = ITEM_NAME.compile(database.read_engine).string
    async with database.read_connection() as connection:
        sync = sync_of(connection)
        results: list[Any] = await asyncio.gather(
            *(_compat.driver_fetch(sync, sql, [1]) for _ in range(3)),
            connection.execute(ITEM_NAME, {"id": 1}),
            *(_compat.driver_fetch(sync, sql, [1]) for _ in range(3)),
        )
    assert [tuple(record) for record in results[0]] == [(1, "a")]
    assert all(list(map(tuple, records)) == [(1, "a")] for records in results[4:])


@pytest.mark.backends("postgresql")
async def test_driver_executemany_writes_every_row(database: Database) -> None:
    sql = "INSERT INTO compat_items (id, name) VALUES ($1, $2)"
    async with database.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await _compat.driver_executemany(sync_of(connection), sql, [[3, "c"], [4, "d"]])
        names = (await connection.execute(select(items.c.name).order_by(items.c.id))).scalars()
        assert list(names) == ["a", "b", "c", "d"]


@pytest.mark.backends("postgresql")
async def test_raise_as_sqlalchemy_would_wraps_a_driver_error_like_execute(
    database: Database,
) -> None:
    statement = sql_update(items).where(items.c.id == bindparam("key"))
    compiled = compile_for_driver(
        statement.values(name=bindparam("new")), column_keys=["key", "new"]
    )
    hooked: list[ExceptionContext] = []
    event.listen(database.engine.sync_engine, "handle_error", hooked.append)
    async with database.engine.connect() as connection:
        sync = sync_of(connection)
        parameters = [{"key": 2, "new": "a"}]  # "a" exists: a unique violation
        with pytest.raises(Exception) as from_driver:  # noqa: PT011  what the adapter raises
            await _compat.driver_fetch(sync, compiled.string, ["a", 2])
        assert not isinstance(from_driver.value, DBAPIError)  # translated, not yet wrapped
        with pytest.raises(IntegrityError) as raised:
            await _compat.run_in_greenlet(
                _compat.raise_as_sqlalchemy_would, sync, compiled, parameters, from_driver.value
            )
    assert raised.value.statement == compiled.string
    assert len(hooked) == 1  # the engine's handle_error hooks ran...
    context: Any = hooked[0].execution_context
    assert context is not None  # ...with an execution context, as through execute
    assert context.compiled is compiled


def test_handle_error_first_runs_before_listeners_added_earlier() -> None:
    engine = create_engine("sqlite://")  # the stdlib driver: no event loop needed
    seen: list[str] = []

    def earlier(_context: ExceptionContext) -> None:
        seen.append("earlier")

    def first(_context: ExceptionContext) -> None:
        seen.append("first")

    event.listen(engine, "handle_error", earlier)
    _compat.handle_error_first(engine, first)
    with pytest.raises(DBAPIError), engine.connect() as connection:
        connection.execute(text("SELECT * FROM no_such_table"))
    assert seen == ["first", "earlier"]
    event.remove(engine, "handle_error", first)  # the registry still knows it
    assert list(engine.dialect.dispatch.handle_error) == [earlier]


async def test_run_on_aiosqlite_thread_runs_after_the_call_in_progress_and_before_a_close(
    tmp_path: Path,
) -> None:
    ran: list[tuple[str, int]] = []
    started, release = threading.Event(), threading.Event()

    def block() -> int:
        ran.append(("statement", threading.get_ident()))
        started.set()
        release.wait(5)
        return 1

    def job(connection: sqlite3.Connection) -> None:
        assert isinstance(connection, sqlite3.Connection)
        ran.append(("job", threading.get_ident()))

    connection = await aiosqlite.connect(tmp_path / "compat.db")
    try:
        await connection.create_function("block", 0, block)
        statement = asyncio.ensure_future(connection.execute_fetchall("SELECT block()"))
        assert await asyncio.to_thread(started.wait, 5)
        assert _compat.run_on_aiosqlite_thread(connection, job)
        closing = asyncio.ensure_future(connection.close())
        await asyncio.sleep(0.05)
        assert [name for name, _ in ran] == ["statement"]  # queued, not run beside it
        release.set()
        assert list(await statement) == [(1,)]
        await closing
    finally:
        release.set()
        await connection.close()
    (_, worker), (_, job_thread) = ran
    assert [name for name, _ in ran] == ["statement", "job"]
    assert job_thread == worker != threading.get_ident()  # on the driver's own thread
