"""A SQLite writer cancelled inside a driver call gives up the write lock with its gate slot.

Cancelled mid-statement, SQLAlchemy invalidates the connection and leaves the
statement's cursor unclosed; sqlite3 then closes the database handle only once that
cursor is collected, and until then its transaction holds the file's write lock. The
gate, meanwhile, lets the next writer in, whose BEGIN IMMEDIATE would wait out the busy
timeout and fail. The garbage collector is off in these tests: nothing may depend on
when it runs.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_asyncdb import Database

from .models import Note, create_tables

pytestmark = [pytest.mark.usefixtures("clean_environment"), pytest.mark.backends("sqlite")]

# SQLite's busy timeout is the pool timeout: a writer stuck behind the lock waits this long.
POOL_TIMEOUT = 5.0
# Well under the busy timeout: a writer that waits longer waited for the lock.
PROMPTLY = POOL_TIMEOUT / 5
# Bounds the blocked statement should a test fail before releasing it.
BLOCK_LIMIT = 3 * POOL_TIMEOUT


@pytest.fixture
def without_garbage_collection() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class BlockingStatement:
    """A statement that runs on the driver's thread until released, as a slow query would."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    def block(self) -> int:
        self.started.set()
        self.released.wait(BLOCK_LIMIT)
        return 1

    async def install(self, session: AsyncSession) -> None:
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.create_function("block", 0, self.block)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, BLOCK_LIMIT)


async def write_then_block(database: Database, blocking: BlockingStatement) -> None:
    async with database.transaction() as session:
        session.add(Note(body="cancelled"))
        await session.flush()
        await blocking.install(session)
        await session.execute(text("SELECT block()"))


async def next_writer_gets_in_promptly(database: Database) -> float:
    started = time.monotonic()
    async with asyncio.timeout(PROMPTLY):
        async with database.transaction() as session:
            session.add(Note(body="next"))
    return time.monotonic() - started


async def stored_bodies(database: Database) -> set[str]:
    async with database.read_connection() as connection:
        return set((await connection.execute(select(Note.body))).scalars())


@pytest.mark.usefixtures("without_garbage_collection")
async def test_writer_cancelled_mid_statement_lets_the_next_writer_in_promptly(
    database_url: str,
) -> None:
    async with Database(url=database_url, pool_timeout=POOL_TIMEOUT) as database:
        await create_tables(database)
        blocking = BlockingStatement()
        writer = asyncio.create_task(write_then_block(database, blocking))
        await blocking.wait_started()
        writer.cancel()
        # The statement ends on the driver's thread; the cancelled unit's close waits
        # for it there.
        blocking.released.set()
        with pytest.raises(asyncio.CancelledError):
            await writer

        await next_writer_gets_in_promptly(database)
        assert await stored_bodies(database) == {"next"}


@pytest.mark.usefixtures("without_garbage_collection")
async def test_writer_cancelled_again_as_its_connection_closes_frees_the_lock_after_its_statement(
    database_url: str,
) -> None:
    # A second cancellation cuts SQLAlchemy's wait for the close short: the connection is
    # stopped without waiting, the unit leaves the gate while the statement still runs,
    # and the next writer waits in SQLite's busy handler only until the statement ends.
    async with Database(url=database_url, pool_timeout=POOL_TIMEOUT) as database:
        await create_tables(database)
        invalidated = asyncio.Event()
        event.listen(database.engine.sync_engine, "invalidate", lambda *_: invalidated.set())
        blocking = BlockingStatement()
        writer = asyncio.create_task(write_then_block(database, blocking))
        await blocking.wait_started()
        writer.cancel()
        # The invalidation runs in the writer's step that then waits for the close.
        await invalidated.wait()
        writer.cancel()
        # Ends without waiting for the statement, which still runs.
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(PROMPTLY):
                await writer
        assert not blocking.released.is_set()

        next_writer = asyncio.create_task(next_writer_gets_in_promptly(database))
        await asyncio.sleep(0.1)
        blocking.released.set()
        await next_writer
        assert await stored_bodies(database) == {"next"}
