"""Research: what a client sees when PgBouncer 1.18 fails it, and how to tell it is there.

PgBouncer reports its own failures as SQLSTATE 08P01 (asyncpg's
``ProtocolViolationError``) at login, and after login by closing the connection with
an error message, which asyncpg raises as ``ConnectionDoesNotExistError`` naming it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from .pgbouncer import PgBouncer
from .processes import free_port

StartPgBouncer = Callable[..., PgBouncer]
NO_STATEMENT_CACHE = {"statement_cache_size": 0}
WAIT = 0.5


async def _elapsed(awaitable: Any) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await awaitable
    except BaseException as error:  # what the client gets is the finding
        return error, time.monotonic() - started
    return None, time.monotonic() - started


async def test_query_wait_timeout_closes_the_waiting_client(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(default_pool_size=1, query_wait_timeout=WAIT)
    dsn = bouncer.dsn(pgbouncer_database)
    holder = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    waiter = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    try:
        async with holder.transaction():  # the only server connection, held
            error, seconds = await _elapsed(waiter.fetchval("SELECT 1"))
    finally:
        await holder.close()
    assert isinstance(error, asyncpg.ConnectionDoesNotExistError)
    assert str(error) == "connection was closed in the middle of operation: query_wait_timeout"
    assert seconds >= WAIT
    assert waiter.is_closed()


async def test_sqlalchemy_sees_query_wait_timeout_as_a_disconnect(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(default_pool_size=1, query_wait_timeout=WAIT)
    engine = create_async_engine(
        bouncer.url(pgbouncer_database), connect_args=NO_STATEMENT_CACHE, pool_size=2
    )
    holder = await asyncpg.connect(bouncer.dsn(pgbouncer_database), **NO_STATEMENT_CACHE)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.commit()  # leave the server connection to the holder
            async with holder.transaction():
                error, _ = await _elapsed(connection.execute(text("SELECT 2")))
    finally:
        await holder.close()
        await engine.dispose()
    assert isinstance(error, DBAPIError)
    assert error.connection_invalidated
    assert "query_wait_timeout" in str(error.orig)


async def test_restart_mid_query_and_between_queries_breaks_the_connection(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    dsn = pgbouncer_transaction.dsn(pgbouncer_database)
    busy = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    idle = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    await idle.fetchval("SELECT 1")
    query = asyncio.ensure_future(busy.fetchval("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.3)
    pgbouncer_transaction.restart()
    mid_query, seconds = await _elapsed(query)
    between, _ = await _elapsed(idle.fetchval("SELECT 1"))
    assert isinstance(mid_query, asyncpg.ConnectionDoesNotExistError)
    assert str(mid_query) == "connection was closed in the middle of operation"
    assert seconds < 5
    # The idle client learns only when it sends: the same error at its next query, or,
    # if its event loop has already seen the socket close, "connection is closed".
    assert isinstance(between, asyncpg.ConnectionDoesNotExistError | asyncpg.InterfaceError)
    assert idle.is_closed()


async def test_a_crash_between_queries_looks_like_a_restart(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    client = await asyncpg.connect(
        pgbouncer_transaction.dsn(pgbouncer_database), **NO_STATEMENT_CACHE
    )
    await client.fetchval("SELECT 1")
    pgbouncer_transaction.kill()
    pgbouncer_transaction.start()
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await client.fetchval("SELECT 1")


async def test_pause_holds_queries_then_times_them_out(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(query_wait_timeout=WAIT * 2)
    dsn = bouncer.dsn(pgbouncer_database)
    client = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    await client.fetchval("SELECT 1")
    bouncer.admin("PAUSE")
    try:
        # Logging in needs no server once the pool knows the server's parameters.
        started = time.monotonic()
        newcomer = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
        login_seconds = time.monotonic() - started
        await newcomer.close()
        resumed = asyncio.ensure_future(client.fetchval("SELECT 2"))
        await asyncio.sleep(WAIT)
        bouncer.admin("RESUME")
        assert await resumed == 2
        bouncer.admin("PAUSE")
        timed_out, seconds = await _elapsed(client.fetchval("SELECT 3"))
    finally:
        bouncer.admin("RESUME")
        await client.close()
    # It did not wait for RESUME, which would have ended it at query_wait_timeout.
    assert login_seconds < WAIT * 2
    assert isinstance(timed_out, asyncpg.ConnectionDoesNotExistError)
    assert "query_wait_timeout" in str(timed_out)
    assert seconds >= WAIT * 2


async def test_server_down_fails_the_login_at_query_wait_timeout(
    start_pgbouncer: StartPgBouncer,
) -> None:
    # Nothing listens on the target: PgBouncer retries it every server_login_retry.
    bouncer = start_pgbouncer(
        target_port=free_port(), query_wait_timeout=WAIT, server_login_retry=WAIT / 2
    )
    error, seconds = await _elapsed(asyncpg.connect(bouncer.dsn("anything")))
    short, short_seconds = await _elapsed(
        asyncpg.connect(bouncer.dsn("anything"), timeout=WAIT / 2)
    )
    assert isinstance(error, asyncpg.ProtocolViolationError)
    assert (error.sqlstate, str(error)) == ("08P01", "query_wait_timeout")
    assert seconds >= WAIT
    # A client connect timeout below query_wait_timeout ends it first, without a reason.
    assert isinstance(short, TimeoutError)
    assert short_seconds < WAIT


async def test_server_refusing_the_login_is_reported_with_its_own_message(
    start_pgbouncer: StartPgBouncer,
) -> None:
    bouncer = start_pgbouncer(server_login_retry=WAIT)
    dsn = bouncer.dsn("no_such_database_here")
    first, _ = await _elapsed(asyncpg.connect(dsn))
    again, again_seconds = await _elapsed(asyncpg.connect(dsn))
    # PostgreSQL says 3D000; through PgBouncer it is 08P01 with PostgreSQL's words.
    for error in (first, again):
        assert isinstance(error, asyncpg.ProtocolViolationError)
        assert str(error) == 'database "no_such_database_here" does not exist'
    # Within server_login_retry the next login waits for the retry.
    assert again_seconds >= WAIT * 0.8


async def test_refused_startup_parameter_through_sqlalchemy(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    engine = create_async_engine(
        pgbouncer_transaction.url(pgbouncer_database),
        connect_args={"server_settings": {"client_connection_check_interval": "1000"}},
    )
    try:
        error, _ = await _elapsed(engine.connect())
    finally:
        await engine.dispose()
    assert isinstance(error, DBAPIError)
    assert error.orig is not None
    assert isinstance(error.orig.__cause__, asyncpg.ProtocolViolationError)
    assert str(error.orig) == "unsupported startup parameter: client_connection_check_interval"


async def test_a_client_can_tell_it_talks_to_pgbouncer(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    async def identity(dsn: str, port: int) -> tuple[bool, bool, str]:
        connection = await asyncpg.connect(
            dsn, server_settings={"application_name": "probe"}, **NO_STATEMENT_CACHE
        )
        try:
            backend_pid, server_port, name = await connection.fetchrow(
                "SELECT pg_backend_pid(), inet_server_port(), current_setting('application_name')"
            )
            # PgBouncer hands out its own cancel key, not the backend's process id.
            same_pid = connection.get_server_pid() == backend_pid
            return same_pid, server_port == port, name
        finally:
            await connection.close()

    target = pgbouncer_transaction.config
    direct = f"postgresql://postgres@{target.target_host}:{target.target_port}/{pgbouncer_database}"
    assert await identity(direct, target.target_port) == (True, True, "probe")
    through = pgbouncer_transaction.dsn(pgbouncer_database)
    assert await identity(through, pgbouncer_transaction.port) == (False, False, "probe")


async def test_admin_commands_are_not_served_on_a_database_connection(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    client = await asyncpg.connect(
        pgbouncer_transaction.dsn(pgbouncer_database), **NO_STATEMENT_CACHE
    )
    try:
        with pytest.raises(asyncpg.UndefinedObjectError, match='parameter "pools"'):
            await client.fetch("SHOW POOLS")
    finally:
        await client.close()
