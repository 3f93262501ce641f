"""Execution options and row keys: what ``execute`` honours, the fast path honours too,
on the first call and on every later one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fastapi_asyncdb import Database, Prepared
from fastapi_asyncdb.prepared import run_statement

from .prepared_runs import sqlalchemy_runs

pytestmark = pytest.mark.usefixtures("clean_environment")

OTHER = "prepared_other"
TRANSLATE = {None: OTHER}
metadata = MetaData()
thing = Table(
    "prepared_thing",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(20), nullable=False),
)
tag = Table(
    "prepared_tag",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(20), nullable=False),
)
NAME_BY_ID = select(thing.c.id, thing.c.name).where(thing.c.id == bindparam("id"))
RENAME = thing.update().where(thing.c.id == bindparam("key")).values(name=bindparam("new"))


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """Each table in the default schema and, on PostgreSQL, in a second one with other rows."""
    async with Database(url=database_url) as database:
        async with database.engine.begin() as connection:
            schemas: list[str | None] = [None]
            if database.backend.name == "postgresql":
                await connection.execute(text(f"DROP SCHEMA IF EXISTS {OTHER} CASCADE"))
                await connection.execute(text(f"CREATE SCHEMA {OTHER}"))
                schemas.append(OTHER)
            for schema in schemas:
                translated = await connection.execution_options(schema_translate_map={None: schema})
                await translated.run_sync(metadata.drop_all)
                await translated.run_sync(metadata.create_all)
                where = schema or "default"
                await translated.execute(
                    insert(thing), [{"id": n, "name": f"{where} {n}"} for n in (1, 2)]
                )
                await translated.execute(insert(tag), [{"id": 1, "name": f"{where} tag"}])
            await connection.execution_options(schema_translate_map=None)
        yield database


async def names_in(engine: AsyncEngine, schema: str | None) -> list[str]:
    async with engine.connect() as connection:
        translated = await connection.execution_options(schema_translate_map={None: schema})
        return list((await translated.execute(select(thing.c.name).order_by(thing.c.id))).scalars())


@pytest.mark.backends("postgresql")
async def test_prepared_reads_the_schema_of_the_statements_translate_map_on_every_call(
    database: Database,
) -> None:
    prepared = Prepared(NAME_BY_ID.execution_options(schema_translate_map=TRANSLATE))
    async with database.read_connection() as connection:
        names = [(await prepared.one(connection, {"id": 1})).name for _ in range(3)]
    assert names == [f"{OTHER} 1"] * 3


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("level", ["connection", "engine"])
async def test_prepared_reads_the_schema_of_a_connection_or_engine_translate_map(
    database: Database, level: str
) -> None:
    prepared = Prepared(NAME_BY_ID)
    async with database.read_connection() as connection:
        await prepared.one(connection, {"id": 1})  # learnt on a plain connection
        assert (await prepared.one(connection, {"id": 1})).name == "default 1"
    engine = database.read_engine
    if level == "engine":
        engine = engine.execution_options(schema_translate_map=TRANSLATE)
    async with engine.connect() as connection:
        if level == "connection":
            await connection.execution_options(schema_translate_map=TRANSLATE)
        names = [(await prepared.one(connection, {"id": 2})).name for _ in range(2)]
    assert names == [f"{OTHER} 2"] * 2


@pytest.mark.backends("postgresql")
async def test_run_statement_writes_the_table_of_the_statements_translate_map(
    database: Database,
) -> None:
    statement = RENAME.execution_options(schema_translate_map=TRANSLATE)
    for n in (1, 2):  # the first run of the shape, then a later one
        await database.run_statement(statement, {"key": n, "new": f"renamed {n}"})
    assert await names_in(database.engine, None) == ["default 1", "default 2"]
    assert await names_in(database.engine, OTHER) == ["renamed 1", "renamed 2"]


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("level", ["connection", "engine"])
async def test_run_statement_writes_the_table_of_a_connection_or_engine_translate_map(
    database: Database, level: str
) -> None:
    await database.run_statement(RENAME, {"key": 1, "new": "plain"})  # learnt, default schema
    engine = database.engine
    if level == "engine":
        engine = engine.execution_options(schema_translate_map=TRANSLATE)
    async with engine.connect() as connection:
        if level == "connection":
            await connection.execution_options(schema_translate_map=TRANSLATE)
        await run_statement(connection, RENAME, {"key": 2, "new": "translated"})
    assert await names_in(database.engine, None) == ["plain", "default 2"]
    assert await names_in(database.engine, OTHER) == [f"{OTHER} 1", "translated"]


async def test_prepared_rows_are_keyed_by_column_label_and_name_on_every_call(
    database: Database,
) -> None:
    # Two columns named "id", two named "name" (one under a label): the collisions
    # SQLAlchemy resolves.
    label = tag.c.name.label("tag_name")
    statement = (
        select(thing.c.id, thing.c.name, tag.c.id, label)
        .join_from(thing, tag, tag.c.id == thing.c.id)
        .where(thing.c.id == bindparam("id"))
    )
    prepared = Prepared(statement)
    with sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            rows = [await prepared.one(connection, {"id": 1}) for _ in range(3)]
            expected = (await connection.execute(statement, {"id": 1})).one()
    fast_path = 2 if database.backend.name == "postgresql" else 0
    assert runs.of(statement) == 4 - fast_path
    for row in rows:
        assert row == expected
        assert row._fields == expected._fields
        assert row._mapping[thing.c.name] == "default 1"
        assert row._mapping[tag.c.id] == 1
        assert row._mapping[label] == row._mapping["tag_name"] == row.tag_name == "default tag"
        assert thing.c.id in row._mapping
        # A column selected only under a label: no key of its own, in either row.
        assert tag.c.name not in row._mapping
        assert tag.c.name not in expected._mapping
        assert row._asdict() == expected._asdict()
        # The second "id" was renamed by SQLAlchemy; both keep their own key.
        assert (row._mapping["id"], row._mapping["id_1"]) == (1, 1)


async def test_prepared_leaves_the_connection_as_execute_leaves_it(database: Database) -> None:
    prepared = Prepared(NAME_BY_ID)

    async def state_after(run: Any) -> tuple[bool, str]:
        async with database.read_connection() as connection:
            await run(connection)
            in_transaction = connection.in_transaction()
            try:
                await connection.begin()
                began = "began"
            except Exception as error:
                began = f"{type(error).__name__}: {error}"
            return in_transaction, began

    async def through_execute(connection: AsyncConnection) -> None:
        await connection.execute(NAME_BY_ID, {"id": 1})

    async def through_prepared(connection: AsyncConnection) -> None:
        await prepared.one(connection, {"id": 1})

    expected = await state_after(through_execute)
    assert expected[0] is False  # read connections begin no SQLAlchemy transaction of their own
    for _ in range(3):  # learning, then the driver's runs
        assert await state_after(through_prepared) == expected


async def test_a_list_of_one_parameter_set_is_read_as_execute_reads_it(
    database: Database,
) -> None:
    prepared = Prepared(NAME_BY_ID)
    with sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            as_list: Any = [{"id": 2}]  # not what the signature says; execute takes it
            for _ in range(2):
                assert (await prepared.one(connection, as_list)).name == "default 2"
            for _ in range(2):  # the list taught nothing wrong: the fast path serves these
                assert (await prepared.one(connection, {"id": 1})).name == "default 1"
    fast_path = 1 if database.backend.name == "postgresql" else 0
    assert runs.of(NAME_BY_ID) == 4 - fast_path
