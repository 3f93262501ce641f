"""Warm read connections: handed from one unit of work to the next, checked as the pool would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import column, table, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb import Database, ReadOnlySessionError, SharedConnectionTimeoutError

from .proxy import forwarder_for

pytestmark = pytest.mark.usefixtures("clean_environment")

SESSION_ID_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
KILL_SQL = {"postgresql": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}
SLEEP_SQL = {"postgresql": "SELECT pg_sleep(5)", "mysql": "SELECT SLEEP(5)"}


async def driver_connection(connection: AsyncConnection) -> Any:
    return (await connection.get_raw_connection()).driver_connection


async def read_session_id(database: Database) -> int:
    async with database.read_connection() as connection:
        sql = SESSION_ID_SQL[database.backend.name]
        return int((await connection.execute(text(sql))).scalar_one())


async def kill(database: Database, session_id: int) -> None:
    async with database.engine.connect() as connection:
        await connection.execute(text(KILL_SQL[database.backend.name].format(session_id)))


async def test_a_returned_read_connection_goes_to_the_next_unit_of_work(
    database_url: str,
) -> None:
    async with Database(url=database_url, pool_size=2, max_overflow=0) as database:
        async with database.read_connection() as connection:
            first = await driver_connection(connection)
        async with database.read_session() as session:
            second = await driver_connection(await session.connection())
        async with database.read_connection() as connection:
            third = await driver_connection(connection)
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
        status = database.pool_status()["read"]
    assert first is second is third
    assert status["checked_out"] == 0
    assert status["idle"] == 1


async def test_read_connection_refuses_writes(database_url: str) -> None:
    async with Database(url=database_url) as database:
        with pytest.raises(ReadOnlySessionError):
            async with database.read_connection() as connection:
                await connection.execute(text("CREATE TABLE refused (id INTEGER)"))


@pytest.mark.backends("postgresql", "mysql")
async def test_a_dead_connection_idle_past_the_ping_threshold_is_replaced(
    database_url: str,
) -> None:
    async with Database(url=database_url, pre_ping_after_idle=0.05) as database:
        killed = await read_session_id(database)
        await kill(database, killed)
        await asyncio.sleep(0.2)
        replacement = await read_session_id(database)
        status = database.pool_status()["read"]
    assert replacement != killed
    assert status["checked_out"] == 0


@pytest.mark.backends("postgresql", "mysql")
async def test_without_the_ping_a_dead_warm_connection_fails_once_and_is_discarded(
    database_url: str,
) -> None:
    async with Database(url=database_url, pool_pre_ping=False) as database:
        killed = await read_session_id(database)
        await kill(database, killed)
        await asyncio.sleep(0.2)
        with pytest.raises(DBAPIError) as failure:
            await read_session_id(database)
        replacement = await read_session_id(database)
    assert failure.value.connection_invalidated
    assert replacement != killed


async def test_a_connection_older_than_recycle_goes_back_to_the_pool(database_url: str) -> None:
    async with Database(url=database_url, pool_recycle=0.1) as database:
        async with database.read_connection() as connection:
            first = await driver_connection(connection)
        await asyncio.sleep(0.2)
        async with database.read_connection() as connection:
            second = await driver_connection(connection)
    # The pool recycled it: a new driver connection, not the old one handed on.
    assert second is not first


@pytest.mark.backends("postgresql", "mysql")
async def test_a_connection_cancelled_mid_statement_is_not_handed_on(database_url: str) -> None:
    async with Database(url=database_url) as database:

        async def sleep() -> None:
            async with database.read_connection() as connection:
                await connection.execute(text(SLEEP_SQL[database.backend.name]))

        before = await read_session_id(database)
        task = asyncio.create_task(sleep())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await read_session_id(database)
        status = database.pool_status()["read"]
    assert after != before
    assert status["in_use"] == 0
    assert status["checked_out"] == 0


async def test_execution_options_set_by_one_unit_of_work_do_not_reach_the_next(
    database_url: str,
) -> None:
    async with Database(url=database_url) as database:
        async with database.read_connection() as connection:
            await connection.execution_options(logging_token="first-request")
        async with database.read_connection() as connection:
            assert connection.sync_connection is not None
            options = connection.sync_connection.get_execution_options()
    assert "logging_token" not in options


SESSION_ALIVE_SQL = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = :id",
    "mysql": "SELECT count(*) FROM information_schema.processlist WHERE id = :id",
}


@pytest.mark.backends("postgresql", "mysql")
async def test_after_a_burst_only_the_pool_size_stays_open(database_url: str) -> None:
    async with Database(url=database_url, read_pool_size=1, read_max_overflow=2) as database:
        backend = database.backend.name
        release = asyncio.Event()
        session_ids: list[int] = []

        async def hold() -> None:
            async with database.read_connection() as connection:
                sql = text(SESSION_ID_SQL[backend])
                session_ids.append(int((await connection.execute(sql)).scalar_one()))
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0.2)
        busy = database.pool_status()["read"]["checked_out"]
        release.set()
        await asyncio.gather(*holders)
        await asyncio.sleep(0.2)  # the server forgets closed sessions within milliseconds
        async with database.engine.connect() as counter:
            alive = [
                (await counter.execute(text(SESSION_ALIVE_SQL[backend]), {"id": i})).scalar_one()
                for i in session_ids
            ]
        after = database.pool_status()["read"]
    assert busy == 3
    assert sorted(alive) == [0, 0, 1]
    assert after["checked_out"] == 0
    # Counted, not estimated: one connection kept warm, and the server holds just that one.
    assert after["idle"] == sum(alive) == 1


@pytest.mark.backends("postgresql", "mysql")
async def test_idle_counts_exactly_the_read_connections_the_server_still_holds(
    database_url: str,
) -> None:
    async with Database(url=database_url, read_pool_size=3) as database:
        backend = database.backend.name
        all_holding = asyncio.Event()
        release = asyncio.Event()
        session_ids: list[int] = []

        async def hold(change_options: bool) -> None:
            # Each in its own task: reads nested in one task would share one connection.
            async with database.read_connection() as connection:
                sql = text(SESSION_ID_SQL[backend])
                session_ids.append(int((await connection.execute(sql)).scalar_one()))
                if change_options:
                    await connection.execution_options(logging_token="changed")
                if len(session_ids) == 3:
                    all_holding.set()
                await release.wait()

        holders = [asyncio.create_task(hold(change_options=i == 0)) for i in range(3)]
        await all_holding.wait()
        release.set()
        await asyncio.gather(*holders)
        await asyncio.sleep(0.2)  # the server forgets closed sessions within milliseconds
        async with database.engine.connect() as counter:
            alive = [
                (await counter.execute(text(SESSION_ALIVE_SQL[backend]), {"id": i})).scalar_one()
                for i in session_ids
            ]
        status = database.pool_status()["read"]
    assert status["checked_out"] == 0
    # The one whose options changed was closed on the server; the count says so exactly.
    assert sorted(alive) == [0, 1, 1]
    assert status["idle"] == 2


async def test_stop_closes_warm_connections(database_url: str) -> None:
    database = Database(url=database_url)
    async with database:
        async with database.read_connection() as connection:
            await connection.execute(text("SELECT 1"))
        read_pool = database.read_engine.pool
    assert read_pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.backends("postgresql")
async def test_a_unit_of_work_cancelled_during_the_ping_leaves_nothing_checked_out(
    database_url: str,
) -> None:
    forwarder, url = forwarder_for(database_url)
    async with (
        forwarder.running(),
        Database(url=url, pre_ping_after_idle=0.05, health_timeout=5) as database,
    ):
        await read_session_id(database)
        forwarder.blackhole = True
        await asyncio.sleep(0.1)
        task = asyncio.create_task(read_session_id(database))
        await asyncio.sleep(0.3)  # inside the ping, which the blackhole never answers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        status = database.pool_status()["read"]
    assert (status["in_use"], status["checked_out"]) == (0, 0)


# SQLite: its writer gate bounds the wait already (a 503).
@pytest.mark.backends("postgresql", "mysql")
async def test_isolated_work_waiting_for_the_shared_connection_in_another_task_fails_in_time(
    database_url: str,
) -> None:
    # A request's unit of work awaiting one run in a task of its own: in production
    # each has a connection; under isolation they share one, and the wait is bounded.
    database = Database(url=database_url, pool_timeout=0.5)
    async with database:
        with pytest.raises(SharedConnectionTimeoutError, match="shared connection"):
            async with (
                asyncio.timeout(10),
                database.isolated(),
                database.transaction() as session,
            ):
                await session.execute(text("SELECT 1"))
                with pytest.raises(SharedConnectionTimeoutError, match="DB_POOL_TIMEOUT"):
                    # Never runs: the wait for the connection is what times out.
                    never = update(table("never_written", column("n"))).values(n=1)
                    await asyncio.gather(database.run_statement(never))
        # The shared connection is free again: a later isolation works.
        async with database.isolated(), database.transaction() as session:
            assert (await session.execute(text("SELECT 3"))).scalar_one() == 3


SESSION_ALIVE_SQL = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = :id",
    "mysql": "SELECT count(*) FROM information_schema.processlist WHERE id = :id",
}


@pytest.mark.backends("postgresql", "mysql")
async def test_an_engine_disposed_while_isolated_leaves_the_isolations_connection_closed(
    database_url: str,
) -> None:
    # db_faults.unreachable() disposes the engines inside a test's isolation; the
    # isolation's connection, returned to the replaced pool, stayed open until the
    # collector found it (asyncpg then warns: a ResourceWarning, an error under pytest).
    database = Database(url=database_url)
    name = database.backend.name
    async with database:
        async with database.isolated() as connection:
            session_id = int((await connection.execute(text(SESSION_ID_SQL[name]))).scalar_one())
            isolated_driver = await driver_connection(connection)
            await database.engine.dispose()
        async with database.engine.connect() as other:
            for _ in range(100):
                alive = await other.execute(text(SESSION_ALIVE_SQL[name]), {"id": session_id})
                if alive.scalar_one() == 0:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the isolation's connection is still open on the server")
        # The same driver connection: closed, not waiting in a pool nothing uses.
        if name == "postgresql":
            assert isolated_driver.is_closed()
        else:
            assert not isolated_driver.connected


async def session_gone(url: str, name: str, session_id: int) -> bool:
    """Whether the server's session ``session_id`` has ended, waiting up to 2 s for it."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            for _ in range(100):
                alive = await connection.execute(text(SESSION_ALIVE_SQL[name]), {"id": session_id})
                if alive.scalar_one() == 0:
                    return True
                await asyncio.sleep(0.02)
            return False
    finally:
        await engine.dispose()


@pytest.mark.backends("postgresql", "mysql")
async def test_a_database_stopped_while_isolated_closes_its_warm_read_connections(
    database_url: str,
) -> None:
    # Inside the block the roles hold the isolation's shared connection in place of
    # their own; stop() closed that one, and the warm read connection kept from a read
    # before the block stayed open (no warning: SQLAlchemy still held it as lent).
    database = Database(url=database_url)
    await database.start()
    warm_id = await read_session_id(database)
    async with database.isolated():
        await database.stop()
    assert await session_gone(database_url, database.backend.name, warm_id)
