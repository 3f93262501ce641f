"""Each touchpoint of SQLAlchemy's private API, checked against the installed SQLAlchemy.

A failure here means a SQLAlchemy release changed something ``_compat`` relies on:
adapt ``_compat`` (and nothing else) before widening the bound in pyproject.toml.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, event, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, IntegrityError

from fastapi_asyncdb import Database, _compat

pytestmark = pytest.mark.usefixtures("clean_environment")

# asyncpg's dialect compiles positionally, as the fast path needs.
ASYNCPG: Any = asyncpg.dialect

metadata = MetaData()
items = Table(
    "compat_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), unique=True),
    Column("tag", String(50), default=lambda: "computed"),
)


async def test_run_in_greenlet_lets_sync_code_await_the_event_loop() -> None:
    async def answer() -> int:
        return 42

    def sync_caller() -> int:
        return _compat.await_in_greenlet(answer())

    assert await _compat.run_in_greenlet(sync_caller) == 42


def test_row_factory_makes_sqlalchemy_rows_with_named_fields() -> None:
    row = _compat.row_factory(["id", "name"])((1, "a"))
    assert isinstance(row, Row)
    assert row.id == 1
    assert row._mapping["name"] == "a"
    assert tuple(row) == (1, "a")


async def test_has_execution_listeners_sees_a_listener_on_the_engine(database_url: str) -> None:
    async with Database(url=database_url) as db, db.read_engine.connect() as connection:
        sync = connection.sync_connection
        assert sync is not None
        assert _compat.has_execution_listeners(sync) is False

        def listener(*_args: Any) -> None:
            pass

        event.listen(db.read_engine.sync_engine, "before_cursor_execute", listener)
        try:
            assert _compat.has_execution_listeners(sync) is True
        finally:
            event.remove(db.read_engine.sync_engine, "before_cursor_execute", listener)


@pytest.mark.backends("postgresql")
async def test_raise_as_sqlalchemy_would_wraps_a_driver_error_like_execute(
    database_url: str,
) -> None:
    async with Database(url=database_url) as db:
        async with db.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        async with db.engine.connect() as connection:
            sync = connection.sync_connection
            assert sync is not None
            assert _compat.error_path_available(sync)
            hooked: list[BaseException] = []
            event.listen(
                db.engine.sync_engine,
                "handle_error",
                lambda context: hooked.append(context.original_exception),
            )
            driver: Any = sync.connection.driver_connection
            sql = "INSERT INTO compat_items (id, name) VALUES ($1, $2)"
            await driver.execute(sql, 1, "a")
            try:
                await driver.execute(sql, 2, "a")
            except Exception as error:
                with pytest.raises(IntegrityError) as raised:
                    await _compat.run_in_greenlet(
                        _compat.raise_as_sqlalchemy_would, sync, sql, [2, "a"], error
                    )
            assert isinstance(raised.value, DBAPIError)
            assert raised.value.statement == sql
            assert len(hooked) == 1  # the engine's handle_error hooks ran


def test_compiled_for_driver_takes_a_positional_compilation() -> None:
    statement = select(items.c.name).where(items.c.id == bindparam("id"))
    compiled = _compat.compiled_for_driver(statement.compile(dialect=ASYNCPG()))
    assert compiled is not None
    assert _compat.positional_names(compiled) == ["id"]


def test_compiled_for_driver_refuses_what_is_rendered_at_run_time() -> None:
    expanding = select(items.c.name).where(items.c.id.in_(bindparam("ids", expanding=True)))
    literal = select(items.c.name).where(items.c.id == bindparam("id", literal_execute=True))
    dialect = ASYNCPG()
    assert _compat.compiled_for_driver(expanding.compile(dialect=dialect)) is None
    assert _compat.compiled_for_driver(literal.compile(dialect=dialect)) is None


def test_positional_names_follow_the_order_of_the_sql() -> None:
    statement = (
        sql_update(items).where(items.c.id == bindparam("key")).values(name=bindparam("new"))
    )
    compiled = _compat.compiled_for_driver(statement.compile(dialect=ASYNCPG()))
    assert compiled is not None
    assert _compat.positional_names(compiled) == ["new", "key"]


def test_writes_computed_in_python_sees_python_defaults_and_returning() -> None:
    dialect = ASYNCPG()

    def compile_write(statement: Any, keys: list[str]) -> Any:
        compiled = _compat.compiled_for_driver(statement.compile(dialect=dialect, column_keys=keys))
        assert compiled is not None
        return compiled

    plain = compile_write(sql_update(items).values(name=bindparam("name")), ["name"])
    defaulted = compile_write(insert(items), ["id", "name"])
    returning = compile_write(insert(items).returning(items.c.id), ["id", "name", "tag"])
    assert _compat.writes_computed_in_python(plain) is False
    assert _compat.writes_computed_in_python(defaulted) is True
    assert _compat.writes_computed_in_python(returning) is True


def test_connection_class_still_has_the_error_handler_the_fast_path_borrows() -> None:
    assert callable(getattr(Connection, "_handle_dbapi_exception", None))
