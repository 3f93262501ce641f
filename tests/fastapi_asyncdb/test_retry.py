from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_asyncdb import Database, Retry

from .models import Note, create_tables

pytestmark = [
    pytest.mark.usefixtures("clean_environment"),
    pytest.mark.backends("postgresql", "mysql"),
]


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url, pool_size=4) as db:
        await create_tables(db)
        async with db.transaction() as session:
            session.add_all([Note(id=1, body="a"), Note(id=2, body="b")])
        yield db


async def deadlock_pair(database: Database, retry: Retry | None) -> tuple[list[str], list[object]]:
    """Two units that lock the same two rows in opposite orders, forced to interleave."""
    runs: list[str] = []
    both_hold_first_lock = asyncio.Barrier(2)

    def unit(first: int, second: int, name: str) -> Callable[[AsyncSession], Awaitable[str]]:
        async def work(session: AsyncSession) -> str:
            runs.append(name)
            lock = "SELECT id FROM notes WHERE id = :id FOR UPDATE"
            await session.execute(text(lock), {"id": first})
            if runs.count(name) == 1:
                await both_hold_first_lock.wait()
            await session.execute(text(lock), {"id": second})
            return name

        return work

    results = await asyncio.gather(
        database.run_transaction(unit(1, 2, "left"), retry=retry),
        database.run_transaction(unit(2, 1, "right"), retry=retry),
        return_exceptions=True,
    )
    return runs, list(results)


async def test_deadlocked_unit_is_repeated_and_both_succeed(database: Database) -> None:
    runs, results = await deadlock_pair(database, Retry(attempts=3))
    assert sorted(str(result) for result in results) == ["left", "right"]
    # At least the loser's one repeat; a repeat can meet the winner's locks again.
    assert len(runs) >= 3


async def test_without_retry_the_deadlock_victim_fails(database: Database) -> None:
    runs, results = await deadlock_pair(database, None)
    failures = [result for result in results if isinstance(result, DBAPIError)]
    assert len(failures) == 1
    assert len(runs) == 2


async def test_errors_that_are_not_races_are_never_repeated(database: Database) -> None:
    calls = 0

    async def broken(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(DBAPIError):
        await database.run_transaction(broken, retry=Retry(attempts=5))
    assert calls == 1


def test_retry_refuses_zero_attempts() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Retry(attempts=0)
