from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.pool import QueuePool

from fastapi_asyncdb import (
    ConfigurationError,
    Database,
    DatabaseNotStartedError,
    DatabaseUnavailableError,
    ReadOnlySessionError,
)

from .models import Note, count_rows, create_tables

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url, pool_size=2, max_overflow=0, pool_timeout=0.5) as db:
        await create_tables(db)
        yield db


async def primary_capacity(database: Database) -> int:
    """Two on the servers; one on SQLite, which admits one writer at a time."""
    return int((await database.check_health())["pools"]["primary"]["capacity"])


async def test_transaction_commits_when_the_block_ends_normally(database: Database) -> None:
    async with database.transaction() as session:
        session.add(Note(body="kept"))
    assert await count_rows(database, Note) == 1


async def test_transaction_rolls_back_on_any_exception(database: Database) -> None:
    with pytest.raises(LookupError):
        async with database.transaction() as session:
            session.add(Note(body="discarded"))
            await session.flush()
            raise LookupError
    assert await count_rows(database, Note) == 0


async def test_objects_stay_readable_after_commit(database: Database) -> None:
    async with database.transaction() as session:
        note = Note(body="readable")
        session.add(note)
    assert note.body == "readable"
    assert note.id > 0


async def test_session_used_after_its_unit_of_work_raises_instead_of_leaking(
    database: Database,
) -> None:
    async with database.transaction() as session:
        await session.execute(text("SELECT 1"))
    with pytest.raises(InvalidRequestError, match="permanently closed"):
        await session.execute(text("SELECT 1"))
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0


async def test_read_session_refuses_orm_writes(database: Database) -> None:
    with pytest.raises(ReadOnlySessionError, match="use SessionDep"):
        async with database.read_session() as session:
            session.add(Note(body="refused"))
            await session.flush()
    assert await count_rows(database, Note) == 0


async def test_read_session_refuses_core_writes(database: Database) -> None:
    with pytest.raises(ReadOnlySessionError):
        async with database.read_session() as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('refused')"))
    assert await count_rows(database, Note) == 0


@pytest.mark.backends("postgresql")
async def test_read_session_runs_each_statement_outside_a_transaction(
    database: Database,
) -> None:
    # now() is the transaction's start: equal across statements of one transaction.
    async with database.read_session() as session:
        first = (await session.execute(text("SELECT now()"))).scalar_one()
        await asyncio.sleep(0.02)
        second = (await session.execute(text("SELECT now()"))).scalar_one()
    assert second > first
    async with database.transaction() as session:
        first = (await session.execute(text("SELECT now()"))).scalar_one()
        await asyncio.sleep(0.02)
        second = (await session.execute(text("SELECT now()"))).scalar_one()
    assert second == first


async def test_exhausted_pool_raises_unavailable_at_the_acquire_timeout(
    database: Database,
) -> None:
    capacity = await primary_capacity(database)
    held = asyncio.Semaphore(0)
    release = asyncio.Event()

    async def hold() -> None:
        async with database.transaction() as session:
            await session.execute(text("SELECT 1"))
            held.release()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(capacity)]
    for _ in range(capacity):
        await asyncio.wait_for(held.acquire(), 5)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with database.transaction():
            pass
    waited = time.monotonic() - started
    release.set()
    await asyncio.gather(*holders)
    assert 0.45 <= waited < 1.0
    assert caught.value.retry_after >= 1


async def test_waiters_are_served_in_arrival_order(database: Database) -> None:
    order: list[int] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with database.transaction():
            await release.wait()

    async def wait_turn(number: int) -> None:
        async with database.transaction():
            order.append(number)

    holders = [asyncio.create_task(hold()) for _ in range(await primary_capacity(database))]
    await asyncio.sleep(0.05)
    waiters = []
    for number in range(4):
        waiters.append(asyncio.create_task(wait_turn(number)))
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*holders, *waiters)
    assert order == [0, 1, 2, 3]


async def test_nothing_is_checked_out_after_stop(database_url: str) -> None:
    database = Database(url=database_url)
    async with database:
        await create_tables(database)
        async with database.transaction() as session:
            session.add(Note(body="x"))
        async with database.read_session() as session:
            await session.get(Note, 1)
        primary_pool = database.engine.pool
        read_pool = database.read_engine.pool
    assert isinstance(primary_pool, QueuePool)
    assert isinstance(read_pool, QueuePool)
    assert primary_pool.checkedout() == 0
    assert read_pool.checkedout() == 0


async def test_using_the_database_before_start_or_after_stop_raises_clearly(
    database_url: str,
) -> None:
    database = Database(url=database_url)
    with pytest.raises(DatabaseNotStartedError, match="lifespan"):
        _ = database.engine
    with pytest.raises(DatabaseNotStartedError):
        async with database.transaction():
            pass
    async with database:
        pass
    with pytest.raises(DatabaseNotStartedError):
        async with database.read_session():
            pass


async def test_health_reports_pools_and_a_reachable_database(database: Database) -> None:
    report = await database.check_health()
    assert report["status"] == "ok"
    assert set(report["pools"]) == {"primary", "read"}
    assert report["pools"]["read"]["capacity"] == 2
    assert report["pools"]["primary"]["in_use"] == 0


async def test_null_pool_opens_a_connection_per_unit_of_work_and_keeps_none(
    database_url: str,
) -> None:
    async with Database(url=database_url, pool_class="NullPool") as database:
        await create_tables(database)
        async with database.transaction() as session:
            session.add(Note(body="unpooled"))
        async with database.read_session() as session:
            assert (await session.get(Note, 1)) is not None
        status = database.pool_status()
    for role in ("primary", "read"):
        assert (status[role]["in_use"], status[role]["checked_out"], status[role]["idle"]) == (
            0,
            0,
            0,
        )


def test_configure_points_a_stopped_database_elsewhere_keeping_other_settings(
    tmp_path: Path,
) -> None:
    database = Database(url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", pool_size=3)
    database.configure(url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    assert database.settings.sqlalchemy_url.database == str(tmp_path / "b.db")
    assert database.settings.pool_size == 3
    with pytest.raises(ConfigurationError, match="postgresql\\+asyncpg://"):
        database.configure(url="postgresql://app@db/app")
    assert database.settings.sqlalchemy_url.database == str(tmp_path / "b.db")


async def test_configure_is_refused_while_started(database: Database) -> None:
    with pytest.raises(RuntimeError, match="stop the database"):
        database.configure(pool_size=4)
