"""Keyset pages cover every row exactly once, in order, whatever the page size; offset pages
agree with their total."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    UniqueConstraint,
    delete,
    insert,
    select,
)
from sqlalchemy.orm import aliased

from fastapi_asyncdb import Database
from fastapi_asyncdb.pagination import KeysetPage, keyset_page, offset_page

from .models import Note, create_tables

pytestmark = pytest.mark.usefixtures("clean_environment")

ROWS = 23


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url) as database:
        await create_tables(database)
        async with database.transaction() as session:
            session.add_all(Note(id=i, body=f"note {i:02}") for i in range(1, ROWS + 1))
        yield database


async def walk_keyset(database: Database, limit: int, *, core: bool) -> list[int]:
    seen: list[int] = []
    after = None
    while True:
        async with database.read_session() as session:
            statement: Any = select(Note.id, Note.body) if core else select(Note)
            page: KeysetPage[object] = await keyset_page(
                session, statement, key=Note.id, after=after, limit=limit
            )
        seen.extend(item.id for item in page.items)  # type: ignore[attr-defined]
        if page.next_after is None:
            return seen
        after = page.next_after


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=st.integers(min_value=1, max_value=ROWS + 3), core=st.booleans())
async def test_keyset_pages_cover_every_row_once_in_order(
    database: Database, limit: int, core: bool
) -> None:
    assert await walk_keyset(database, limit, core=core) == list(range(1, ROWS + 1))


async def test_keyset_page_gives_entities_for_an_entity_select(database: Database) -> None:
    async with database.read_session() as session:
        page = await keyset_page(session, select(Note), key=Note.id, after=20, limit=2)
    assert [note.body for note in page.items] == ["note 21", "note 22"]
    assert page.next_after == 22


async def test_keyset_page_of_an_aliased_entity_orders_by_the_alias(database: Database) -> None:
    note = aliased(Note)
    async with database.read_session() as session:
        by_column = await keyset_page(
            session, select(note), key=Note.__table__.c.body, after="note 20", limit=2
        )
        by_attribute = await keyset_page(session, select(note), key=note.id, after=20, limit=2)
    assert [n.id for n in by_column.items] == [21, 22]
    assert by_column.next_after == "note 22"
    assert [n.id for n in by_attribute.items] == [21, 22]
    assert by_attribute.next_after == 22


async def test_keyset_page_works_on_a_core_connection(database: Database) -> None:
    async with database.read_connection() as connection:
        page = await keyset_page(connection, select(Note.id), key=Note.id, after=None, limit=ROWS)
    assert len(page.items) == ROWS
    assert page.next_after is None


async def test_offset_pages_agree_with_their_total(database: Database) -> None:
    async with database.read_session() as session:
        pages = [
            await offset_page(session, select(Note).order_by(Note.id), offset=o, limit=10)
            for o in (0, 10, 20)
        ]
    assert [page.total for page in pages] == [ROWS] * 3
    assert [note.id for page in pages for note in page.items] == list(range(1, ROWS + 1))


# --- generated row sets, and what keyset_page refuses ----------------------------------

page_metadata = MetaData()
PAGE_ROWS = Table(
    "page_rows",
    page_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("code", Integer, unique=True, nullable=False),
    Column("rank", Integer, unique=True, nullable=True),
)
# Keys that look usable but are not unique: part of a composite primary key, a NOT NULL
# column without a unique declaration; and a join whose two tables both have an "id".
LINES = Table(
    "page_lines",
    page_metadata,
    Column("order_id", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, primary_key=True, autoincrement=False),
)
EVENTS = Table(
    "page_events",
    page_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("day", Integer, nullable=False),
    Column("serial", Integer, nullable=False),
    Column("tag", Integer, nullable=False),
    UniqueConstraint("serial"),
    Index("page_events_tag", "tag", unique=True),
)
OWNERS = Table(
    "page_owners", page_metadata, Column("id", Integer, primary_key=True, autoincrement=False)
)
ACCOUNTS = Table(
    "page_accounts",
    page_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("owner_id", Integer, ForeignKey("page_owners.id"), nullable=False),
)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@pytest.fixture
async def page_database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(page_metadata.drop_all)
            await connection.run_sync(page_metadata.create_all)
        yield database


async def walk_rows(database: Database, key: Any, limit: int) -> list[int]:
    seen: list[int] = []
    after = None
    for _ in range(1000):
        async with database.read_connection() as connection:
            page = await keyset_page(
                connection, select(PAGE_ROWS.c.id, key), key=key, after=after, limit=limit
            )
        seen.extend(row.id for row in page.items)
        if page.next_after is None:
            return seen
        after = page.next_after
    raise AssertionError("the walk did not end")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.dictionaries(INT32, INT32, max_size=30).filter(
        lambda rows: len(set(rows.values())) == len(rows)
    ),
    limit=st.integers(min_value=1, max_value=8),
    by_code=st.booleans(),
)
async def test_a_walk_visits_each_generated_row_once_in_key_order(
    page_database: Database, rows: dict[int, int], limit: int, by_code: bool
) -> None:
    async with page_database.transaction() as session:
        await session.execute(delete(PAGE_ROWS))
        if rows:
            await session.execute(
                insert(PAGE_ROWS), [{"id": i, "code": code} for i, code in rows.items()]
            )
    key = PAGE_ROWS.c.code if by_code else PAGE_ROWS.c.id
    expected = sorted(rows, key=rows.__getitem__) if by_code else sorted(rows)
    assert await walk_rows(page_database, key, limit) == expected


async def test_keyset_page_refuses_a_limit_below_one(database: Database) -> None:
    async with database.read_session() as session:
        with pytest.raises(ValueError, match="limit of at least 1, got 0"):
            await keyset_page(session, select(Note), key=Note.id, after=None, limit=0)


async def test_keyset_page_refuses_a_statement_with_its_own_order(database: Database) -> None:
    async with database.read_session() as session:
        with pytest.raises(ValueError, match="remove the order_by of the statement"):
            await keyset_page(
                session, select(Note).order_by(Note.body), key=Note.id, after=None, limit=2
            )


async def test_keyset_page_refuses_a_key_that_may_be_null(page_database: Database) -> None:
    async with page_database.read_connection() as connection:
        with pytest.raises(ValueError, match="rank, may be NULL"):
            await keyset_page(
                connection, select(PAGE_ROWS), key=PAGE_ROWS.c.rank, after=None, limit=2
            )
        with pytest.raises(ValueError, match=r"select the key page_rows\.code itself"):
            await keyset_page(
                connection, select(PAGE_ROWS.c.id), key=PAGE_ROWS.c.code, after=None, limit=2
            )
        with pytest.raises(ValueError, match="needs a table column as its key"):
            await keyset_page(
                connection, select(PAGE_ROWS), key=PAGE_ROWS.c.id + 1, after=None, limit=2
            )


async def test_keyset_page_refuses_a_key_that_is_not_provably_unique(
    page_database: Database,
) -> None:
    async with page_database.read_connection() as connection:
        for statement, key in [
            (select(LINES.c.order_id, LINES.c.n), LINES.c.order_id),
            (select(EVENTS.c.id, EVENTS.c.day), EVENTS.c.day),
        ]:
            with pytest.raises(ValueError, match=r"not provably unique.*declared unique=True"):
                await keyset_page(connection, statement, key=key, after=None, limit=2)


async def test_keyset_page_refuses_a_key_of_another_table_with_the_same_name(
    page_database: Database,
) -> None:
    statement = select(ACCOUNTS.c.id, ACCOUNTS.c.owner_id).join(OWNERS)
    async with page_database.read_connection() as connection:
        with pytest.raises(ValueError, match=r"select the key page_owners\.id itself"):
            await keyset_page(connection, statement, key=OWNERS.c.id, after=None, limit=2)


async def walk_with(database: Database, statement: Any, key: Any) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []
    after = None
    while True:
        async with database.read_connection() as connection:
            page = await keyset_page(connection, statement, key=key, after=after, limit=2)
        seen.extend(tuple(row) for row in page.items)
        if page.next_after is None:
            return seen
        after = page.next_after


async def test_keyset_pages_a_join_by_a_selected_key_and_unique_constraints(
    page_database: Database,
) -> None:
    async with page_database.transaction() as session:
        await session.execute(insert(OWNERS), [{"id": 1}, {"id": 2}])
        await session.execute(
            insert(ACCOUNTS), [{"id": i, "owner_id": 1 + i % 2} for i in range(1, 6)]
        )
        await session.execute(
            insert(EVENTS), [{"id": i, "day": 0, "serial": -i, "tag": 10 - i} for i in range(5)]
        )
    accounts = [(i, 1 + i % 2) for i in range(1, 6)]
    joined = select(ACCOUNTS.c.id, OWNERS.c.id.label("owner")).join(OWNERS)
    assert await walk_with(page_database, joined, ACCOUNTS.c.id) == accounts
    labelled = select(ACCOUNTS.c.id.label("account"), ACCOUNTS.c.owner_id).join(OWNERS)
    assert await walk_with(page_database, labelled, ACCOUNTS.c.id) == accounts
    by_serial = select(EVENTS.c.id, EVENTS.c.serial)
    assert [i for i, _ in await walk_with(page_database, by_serial, EVENTS.c.serial)] == [
        4,
        3,
        2,
        1,
        0,
    ]
    by_tag = select(EVENTS.c.id, EVENTS.c.tag)
    assert [i for i, _ in await walk_with(page_database, by_tag, EVENTS.c.tag)] == [4, 3, 2, 1, 0]


@pytest.mark.parametrize(("offset", "limit"), [(-1, 10), (0, -1)])
async def test_offset_page_refuses_a_negative_offset_or_limit(
    database: Database, offset: int, limit: int
) -> None:
    async with database.read_session() as session:
        with pytest.raises(ValueError, match="at least 0"):
            await offset_page(session, select(Note).order_by(Note.id), offset=offset, limit=limit)


async def test_an_offset_page_of_limit_zero_gives_the_total_alone(database: Database) -> None:
    async with database.read_session() as session:
        page = await offset_page(session, select(Note).order_by(Note.id), offset=0, limit=0)
    assert (page.items, page.total) == ([], ROWS)
