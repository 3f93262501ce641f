"""Keyset pages cover every row exactly once, in order, whatever the page size; offset pages
agree with their total."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

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
