from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from fastapi_asyncdb import Database, DatabaseUnavailableError

from .proxy import Forwarder, forwarder_for, free_port

pytestmark = pytest.mark.usefixtures("clean_environment")

SECRET = "tok-9f8e7d"


async def scalar(database: Database, sql: str, *, read: bool = False) -> object:
    unit = database.read_session() if read else database.transaction()
    async with unit as session:
        return (await session.execute(text(sql))).scalar_one()


@pytest.mark.backends("postgresql")
async def test_postgresql_sessions_carry_server_side_timeouts(database_url: str) -> None:
    database = Database(
        url=database_url,
        statement_timeout=3,
        idle_in_transaction_timeout=4,
        client_connection_check_interval=0.5,
    )
    async with database:
        for read in (False, True):
            assert await scalar(database, "SHOW statement_timeout", read=read) == "3s"
            assert (
                await scalar(database, "SHOW idle_in_transaction_session_timeout", read=read)
                == "4s"
            )
            assert (
                await scalar(database, "SHOW client_connection_check_interval", read=read)
                == "500ms"
            )
        assert await scalar(database, "SHOW default_transaction_read_only", read=True) == "on"
        assert await scalar(database, "SHOW default_transaction_read_only") == "off"


@pytest.mark.backends("postgresql")
async def test_postgresql_statement_timeout_stops_a_long_query(database_url: str) -> None:
    async with Database(url=database_url, statement_timeout=0.3) as database:
        started = time.monotonic()
        with pytest.raises(DBAPIError, match="statement timeout"):
            await scalar(database, "SELECT pg_sleep(5)")
        assert time.monotonic() - started < 1.3
        assert await scalar(database, "SELECT 1") == 1


@pytest.mark.backends("mysql")
async def test_mariadb_sessions_carry_statement_and_idle_timeouts(database_url: str) -> None:
    async with Database(url=database_url, statement_timeout=3, idle_in_transaction_timeout=4) as db:
        for read in (False, True):
            assert float(str(await scalar(db, "SELECT @@max_statement_time", read=read))) == 3
            assert int(str(await scalar(db, "SELECT @@idle_transaction_timeout", read=read))) == 4
        assert int(str(await scalar(db, "SELECT @@tx_read_only", read=True))) == 1
        assert int(str(await scalar(db, "SELECT @@tx_read_only"))) == 0


@pytest.mark.backends("sqlite")
async def test_sqlite_runs_in_wal_mode_with_a_read_only_reader(database_url: str) -> None:
    async with Database(url=database_url) as database:
        assert await scalar(database, "PRAGMA journal_mode") == "wal"
        assert await scalar(database, "PRAGMA foreign_keys") == 1
        assert await scalar(database, "PRAGMA query_only", read=True) == 1
        assert await scalar(database, "PRAGMA query_only") == 0


@pytest.mark.backends("postgresql", "mysql")
async def test_stale_pooled_connection_is_replaced_by_the_idle_pre_ping(
    database_url: str,
) -> None:
    async with Database(url=database_url, pool_size=1, pre_ping_after_idle=0.05) as database:
        await kill_pooled_connection(database)
        await asyncio.sleep(0.1)
        assert await scalar(database, "SELECT 1", read=True) == 1


@pytest.mark.backends("postgresql", "mysql")
async def test_without_pre_ping_a_stale_connection_fails_the_next_request(
    database_url: str,
) -> None:
    # The counterpart of the test above: it shows that the pre-ping is what saves it.
    async with Database(url=database_url, pool_size=1, pool_pre_ping=False) as database:
        await kill_pooled_connection(database)
        with pytest.raises(DBAPIError) as caught:
            await scalar(database, "SELECT 1", read=True)
        assert caught.value.connection_invalidated


async def kill_pooled_connection(database: Database) -> None:
    """Terminate the read pool's one connection from the server side, as a restart would."""
    backend_id = await scalar(
        database,
        "SELECT pg_backend_pid()"
        if database.backend.name == "postgresql"
        else "SELECT CONNECTION_ID()",
        read=True,
    )
    async with database.engine.connect() as admin:
        if database.backend.name == "postgresql":
            await admin.execute(text(f"SELECT pg_terminate_backend({backend_id})"))
        else:
            await admin.execute(text(f"KILL {backend_id}"))
    await asyncio.sleep(0.05)


@pytest.mark.backends("postgresql")
async def test_unreachable_database_fails_fast_then_recovers_by_itself(
    database_url: str,
) -> None:
    port = free_port()
    url = make_url(database_url).set(port=port).render_as_string(hide_password=False)
    async with Database(url=url, connect_timeout=1) as database:
        with pytest.raises(DatabaseUnavailableError, match="cannot connect"):
            await scalar(database, "SELECT 1")
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="cannot be reached"):
            await scalar(database, "SELECT 1")
        assert time.monotonic() - started < 0.05
        report = await database.check_health()
        assert report["status"] == "unavailable"

        async with Forwarder(make_url(database_url).port or 5432, port=port).running():
            back_at = time.monotonic()
            while True:
                try:
                    assert await scalar(database, "SELECT 1") == 1
                    break
                except DatabaseUnavailableError:
                    assert time.monotonic() - back_at < 2
                    await asyncio.sleep(0.05)
            assert (await database.check_health())["status"] == "ok"


@pytest.mark.backends("postgresql")
async def test_connect_errors_keep_passwords_and_query_secrets_out_of_logs_and_messages(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = (
        make_url(database_url)
        .set(port=free_port())
        .update_query_dict({"password": SECRET})
        .render_as_string(hide_password=False)
    )
    database = Database(url=url, echo=True, echo_pool=True, connect_timeout=1)
    async with database:
        assert SECRET not in repr(database.engine)
        assert SECRET not in repr(database.engine.url)
        with pytest.raises(DatabaseUnavailableError) as caught:
            await scalar(database, "SELECT 1")
        assert SECRET not in str(caught.value)
        assert SECRET not in repr(caught.value)
        health = await database.check_health()
    assert SECRET not in str(health)
    assert SECRET not in caplog.text


@pytest.mark.backends("postgresql")
async def test_bound_parameters_stay_out_of_errors_and_logs(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Database(url=database_url, echo=True) as database:
        with pytest.raises(DBAPIError) as caught:
            async with database.transaction() as session:
                await session.execute(text("SELECT CAST(:value AS integer)"), {"value": SECRET})
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text


@pytest.mark.backends("postgresql", "mysql")
async def test_blackholed_database_fails_within_the_ping_and_connect_timeouts(
    database_url: str,
) -> None:
    forwarder, url = forwarder_for(database_url)
    async with (
        forwarder.running(),
        Database(
            url=url,
            pre_ping_after_idle=0.05,
            health_timeout=0.5,
            connect_timeout=0.5,
            command_timeout=30,
        ) as database,
    ):
        assert await scalar(database, "SELECT 1", read=True) == 1
        forwarder.blackhole = True
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError):
            await scalar(database, "SELECT 1", read=True)
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="cannot be reached"):
            await scalar(database, "SELECT 1", read=True)
        assert time.monotonic() - started < 0.05

        forwarder.blackhole = False
        back_at = time.monotonic()
        while True:
            try:
                assert await scalar(database, "SELECT 1", read=True) == 1
                break
            except DatabaseUnavailableError:
                assert time.monotonic() - back_at < 3
                await asyncio.sleep(0.05)


@pytest.mark.backends("postgresql", "mysql")
async def test_a_silent_server_fails_the_login_within_the_connect_timeout_alone(
    database_url: str,
) -> None:
    # No command timeout to fall back on: the connect timeout must bound the whole
    # login, handshake included (asyncmy's own timeout covers only the TCP connect).
    forwarder, url = forwarder_for(database_url)
    async with forwarder.running():
        forwarder.blackhole = True
        async with Database(url=url, connect_timeout=0.5, command_timeout=None) as database:
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailableError):
                await scalar(database, "SELECT 1", read=True)
            assert time.monotonic() - started < 2.0
