"""run_statement against SQLAlchemy's own unit of work: generated writes, rows, options.

Each example builds an ``insert``, ``update`` or ``delete`` from generated parts (the
columns it sets, literal or bound values, a Python-side default, ``RETURNING``,
statement-level execution options), and generated parameter sets (one row, or an
executemany of several, some of which collide with a key or carry a value of the
wrong type). Each set runs three times from the same table contents: through
``async with connection.begin(): await connection.execute(...)`` (the reference),
then twice through ``run_statement`` (the first run of a statement and shape goes
through SQLAlchemy; the second may be the driver's). The outcome (nothing, or the
exception) and the contents of the tables afterwards, in every schema, must agree.
On PostgreSQL the tables exist in a second schema too, so a write that ignores a
``schema_translate_map`` changes the wrong table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from fastapi_asyncdb import Database
from fastapi_asyncdb.prepared import run_statement

from .differential import DIFFERENTIAL, Tally, assert_same, describe_error, one_in
from .prepared_runs import sqlalchemy_runs

pytestmark = pytest.mark.usefixtures("clean_environment")

OTHER_SCHEMA = "diff_write_other"
metadata = MetaData()
target = Table(
    "diff_target",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", Integer, nullable=False),
    Column("label", String(20)),
    Column("amount", Numeric(10, 2)),
    Column("flag", Boolean),
)
defaulted = Table(
    "diff_defaulted",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", Integer, nullable=False),
    Column("label", String(20), default=lambda: "computed in Python"),
)
TABLES = (target, defaulted)
INITIAL: dict[Table, list[dict[str, Any]]] = {
    target: [
        {"id": n, "value": n * 10, "label": f"l{n}", "amount": Decimal(n), "flag": n % 2 == 0}
        for n in (1, 2, 3)
    ],
    defaulted: [{"id": n, "value": n * 10, "label": f"l{n}"} for n in (1, 2, 3)],
}


@asynccontextmanager
async def started(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url, hide_parameters=False) as database:
        async with database.engine.begin() as connection:
            if database.backend.name == "postgresql":
                await connection.execute(text(f"DROP SCHEMA IF EXISTS {OTHER_SCHEMA} CASCADE"))
                await connection.execute(text(f"CREATE SCHEMA {OTHER_SCHEMA}"))
            for schema in schemas(database):
                translated = await connection.execution_options(schema_translate_map={None: schema})
                await translated.run_sync(metadata.drop_all)
                await translated.run_sync(metadata.create_all)
            await connection.execution_options(schema_translate_map=None)
        yield database


def schemas(database: Database) -> list[str | None]:
    return [None, OTHER_SCHEMA] if database.backend.name == "postgresql" else [None]


async def reset(database: Database) -> None:
    async with database.engine.begin() as connection:
        for schema in schemas(database):
            translated = await connection.execution_options(schema_translate_map={None: schema})
            for table in TABLES:
                await translated.execute(delete(table))
                await translated.execute(insert(table), INITIAL[table])
        await connection.execution_options(schema_translate_map=None)


async def contents(database: Database) -> list[Any]:
    async with database.engine.connect() as connection:
        snapshot = []
        for schema in schemas(database):
            translated = await connection.execution_options(schema_translate_map={None: schema})
            for table in TABLES:
                rows = await translated.execute(select(table).order_by(table.c.id))
                snapshot.append((schema, table.name, [tuple(row) for row in rows]))
        return snapshot


# ---------------------------------------------------------------------------------
# Generated writes

ROW_IDS = st.integers(1, 6)
VALUES = st.one_of(st.integers(-5, 50), st.integers(-5, 50), st.none(), st.just("wrong"))


@dataclass
class WriteCase:
    statement: Any
    calls: list[Any]  # each: one parameter set, a list of them, or None
    via: str
    connection_options: dict[str, Any]
    engine_options: dict[str, Any] | None

    def __repr__(self) -> str:
        options = self.statement.get_execution_options()
        return (
            f"WriteCase({str(self.statement)!r}, statement options {options}, calls "
            f"{self.calls}, via {self.via}, connection options {self.connection_options}, "
            f"engine options {self.engine_options})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # how Hypothesis shows a failing case


@st.composite
def write_cases(draw: st.DrawFn, postgresql: bool) -> WriteCase:
    table = draw(st.sampled_from([target, target, target, defaulted]))
    kind = draw(st.sampled_from(["insert", "update", "update literal", "delete"]))
    optional = [column for column in ("label", "amount", "flag") if column in table.c]
    extra = draw(st.lists(st.sampled_from(optional), unique=True))
    statement: Any
    if kind == "insert":
        statement = insert(table)
        keys = ["id", "value", *extra]
    elif kind == "update":
        values: dict[str, Any] = {"value": bindparam("new_value")} | {
            key: bindparam(f"new_{key}") for key in extra
        }
        statement = update(table).where(table.c.id == bindparam("key")).values(values)
        keys = ["key", "new_value", *(f"new_{key}" for key in extra)]
    elif kind == "update literal":
        statement = update(table).where(table.c.id == draw(ROW_IDS)).values(value=7)
        keys = []
    else:
        statement = delete(table).where(table.c.id == bindparam("key"))
        keys = ["key"]
    if kind != "update literal" and draw(one_in(6)):
        statement = statement.returning(table.c.id)
    plain = not draw(one_in(3))
    translate = {"schema_translate_map": {None: OTHER_SCHEMA}}
    statement_options: list[dict[str, Any]] = [{"logging_token": "statement"}]
    connection_options: list[dict[str, Any]] = [{}, {"isolation_level": "AUTOCOMMIT"}]
    engine_options: list[dict[str, Any] | None] = [None]
    if not plain:
        connection_options += [{"isolation_level": "SERIALIZABLE"}, {"logging_token": "c"}]
        if postgresql:
            statement_options.append(translate)
            connection_options.append(translate)
            engine_options.append(translate)
    if not plain and draw(st.booleans()):
        statement = statement.execution_options(**draw(st.sampled_from(statement_options)))

    def value_for(key: str) -> st.SearchStrategy[Any]:
        if key in ("id", "key"):
            return ROW_IDS
        if key.endswith("amount"):
            return st.one_of(st.decimals(0, 99, places=2), st.none())
        if key.endswith("flag"):
            return st.one_of(st.booleans(), st.none())
        if key.endswith("label"):
            return st.one_of(st.text("abc", max_size=5), st.none())
        return VALUES

    row = st.fixed_dictionaries({key: value_for(key) for key in keys})
    parameters = (
        st.none()
        if not keys
        else st.one_of(
            row, st.lists(row, min_size=1, max_size=4), st.lists(row, min_size=2, max_size=4)
        )
    )
    calls = draw(st.lists(parameters, min_size=1, max_size=3))
    # Only a run that succeeds teaches the fast path a shape; most cases start with a
    # run of each shape that does, so the generated ones (failures too) meet the driver.
    if not draw(one_in(4)):
        calls = [succeeding(call) for call in calls] + calls
    return WriteCase(
        statement=statement,
        calls=calls,
        via=draw(st.sampled_from(["connection", "connection", "database"])),
        connection_options=draw(st.sampled_from(connection_options)),
        engine_options=draw(st.sampled_from(engine_options)),
    )


def succeeding(parameters: Any) -> Any:
    """The same shape of parameters with values that write without error: new keys
    for an insert, existing ones for an update, valid values everywhere."""
    if parameters is None:
        return None
    rows = [parameters] if isinstance(parameters, dict) else parameters
    valid = [
        {
            key: 100 + index if key == "id" else 1 if key in ("key", "value", "new_value") else None
            for key in row
        }
        for index, row in enumerate(rows)
    ]
    return valid[0] if isinstance(parameters, dict) else valid


# ---------------------------------------------------------------------------------
# Running a case


@asynccontextmanager
async def connection_for(database: Database, case: WriteCase) -> AsyncIterator[AsyncConnection]:
    engine = database.engine
    if case.engine_options is not None:
        engine = engine.execution_options(**case.engine_options)
    async with engine.connect() as connection:
        if case.connection_options:
            await connection.execution_options(**case.connection_options)
        yield connection


async def outcome(database: Database, run: Any) -> Any:
    await reset(database)
    try:
        await run()
        result: Any = ("done",)
    except Exception as error:
        result = describe_error(error)
    return result, await contents(database)


async def compare_writes(database: Database, case: WriteCase, tally: Tally) -> None:
    tally.examples += 1
    for parameters in case.calls:

        async def through_execute(parameters: Any = parameters) -> None:
            async with connection_for(database, case) as connection, connection.begin():
                await connection.execute(case.statement, parameters)

        async def through_run_statement(parameters: Any = parameters) -> None:
            if (
                case.via == "database"
                and case.engine_options is None
                and not case.connection_options
            ):
                await database.run_statement(case.statement, parameters)
                return
            async with connection_for(database, case) as connection:
                await run_statement(connection, case.statement, parameters)

        expected = await outcome(database, through_execute)
        for _ in range(2):  # the first run of a shape, and a later one
            with sqlalchemy_runs() as runs:
                observed = await outcome(database, through_run_statement)
            assert_same(observed, expected)
            tally.calls += 1
            tally.through_sqlalchemy += runs.of(case.statement)


def test_run_statement_writes_what_execute_in_a_transaction_writes(
    database_url: str, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()
    postgresql = backend == "postgresql"
    with asyncio.Runner() as runner:
        database_context = started(database_url)
        database = runner.run(database_context.__aenter__())
        try:

            @settings(DIFFERENTIAL, max_examples=40 if postgresql else 15)
            @given(case=write_cases(postgresql))
            def check(case: WriteCase) -> None:
                runner.run(compare_writes(database, case, tally))

            check()
        finally:
            runner.run(database_context.__aexit__(None, None, None))
    with capsys.disabled():
        print(f"\n[{backend}] run_statement vs execute: {tally}")
    assert tally.examples >= 15
    if postgresql:
        assert tally.fast >= tally.calls // 6
    else:
        assert tally.fast == 0
