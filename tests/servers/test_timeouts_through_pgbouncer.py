"""Research: keeping server-side timeouts in force behind PgBouncer 1.18.

A statement that sleeps for ``SLEEP`` seconds meets a limit of ``LIMIT_MS``; a test
asserts the error and that it came long before the sleep would have ended. Costs are
counted in round trips on the wire (``RoundTripCounter``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .pgbouncer import PgBouncer
from .postgresql import PostgresCluster
from .wire import RoundTripCounter

StartPgBouncer = Callable[..., PgBouncer]
NO_STATEMENT_CACHE = {"statement_cache_size": 0}
SLEEP = 5
LIMIT_MS = 500
# Below the statement limit, so that a lock wait meets its own limit first.
LOCK_LIMIT_MS = LIMIT_MS // 2
SET_LOCAL_TIMEOUTS = (
    f"SET LOCAL statement_timeout = {LIMIT_MS}; "
    f"SET LOCAL lock_timeout = {LOCK_LIMIT_MS}; "
    f"SET LOCAL idle_in_transaction_session_timeout = {LIMIT_MS}"
)
# The same as one statement: a prepared statement may hold one command only.
SET_CONFIG_LOCAL_TIMEOUTS = (
    f"SELECT set_config('statement_timeout', '{LIMIT_MS}', true), "
    f"set_config('lock_timeout', '{LOCK_LIMIT_MS}', true), "
    f"set_config('idle_in_transaction_session_timeout', '{LIMIT_MS}', true)"
)


class TimeoutsWithBegin(asyncpg.Connection):  # type: ignore[misc]
    """Sends the SET LOCALs in BEGIN's own message (simple protocol runs both)."""

    # asyncpg's own signature, timeout included.
    async def execute(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        # asyncpg's Transaction.start(), which SQLAlchemy's dialect calls, runs BEGIN here.
        if not args and query.startswith("BEGIN"):
            query = f"{query.rstrip(';')}; {SET_LOCAL_TIMEOUTS}"
        return str(await super().execute(query, *args, timeout=timeout))


async def _elapsed(awaitable: Any) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await awaitable
    except BaseException as error:  # what the client gets is the finding
        return error, time.monotonic() - started
    return None, time.monotonic() - started


def _asyncpg_error(error: BaseException | None) -> BaseException | None:
    """The asyncpg exception under SQLAlchemy's (its DBAPI adapter's cause)."""
    assert isinstance(error, DBAPIError)
    return None if error.orig is None else error.orig.__cause__


async def _running_on_server(bouncer: PgBouncer, marker: str) -> list[str]:
    """States of the server backends whose query carries ``marker``, asked directly."""
    direct = await asyncpg.connect(
        f"postgresql://postgres@{bouncer.config.target_host}:{bouncer.config.target_port}/postgres"
    )
    try:
        rows = await direct.fetch(
            "SELECT state FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
            f"%{marker}%",
        )
    finally:
        await direct.close()
    return [row["state"] for row in rows]


@pytest.fixture
def bouncer(start_pgbouncer: StartPgBouncer, pgbouncer_database: str) -> PgBouncer:
    return start_pgbouncer(pool_mode="transaction", default_pool_size=2)


# -- as startup parameters: refused, or dropped without a word --------------------------


@pytest.mark.parametrize(
    "parameters",
    [
        {"statement_timeout": str(LIMIT_MS)},
        {"idle_in_transaction_session_timeout": str(LIMIT_MS)},
        {"lock_timeout": str(LIMIT_MS)},
        {"default_transaction_read_only": "on"},
        {"options": f"-c statement_timeout={LIMIT_MS}"},
    ],
    ids=lambda parameters: next(iter(parameters)),
)
async def test_timeouts_in_the_startup_packet_are_refused_or_dropped(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, parameters: dict[str, str]
) -> None:
    (name,) = parameters
    strict = start_pgbouncer()
    with pytest.raises(
        asyncpg.ProtocolViolationError, match=f"unsupported startup parameter: {name}"
    ):
        await asyncpg.connect(strict.dsn(pgbouncer_database), server_settings=parameters)
    lenient = start_pgbouncer(ignore_startup_parameters=("extra_float_digits", name))
    client = await asyncpg.connect(
        lenient.dsn(pgbouncer_database), server_settings=parameters, **NO_STATEMENT_CACHE
    )
    try:
        # The server default stands, as a direct connection without the parameter sees it.
        setting = "statement_timeout" if name == "options" else name
        value = await client.fetchval(f"SELECT current_setting('{setting}')")
        direct = await asyncpg.connect(
            f"postgresql://postgres@127.0.0.1:{strict.config.target_port}/{pgbouncer_database}"
        )
        try:
            assert value == await direct.fetchval(f"SELECT current_setting('{setting}')")
        finally:
            await direct.close()
    finally:
        await client.close()


# -- SET LOCAL at the start of each transaction --------------------------------------------


def _set_local_in_begin_event(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "begin")
    def _timeouts(connection: Connection) -> None:
        connection.exec_driver_sql(SET_CONFIG_LOCAL_TIMEOUTS)


@pytest.mark.parametrize("how", ["begin event", "with BEGIN"])
async def test_set_local_bounds_statements_locks_and_idle_transactions(
    bouncer: PgBouncer, pgbouncer_database: str, how: str
) -> None:
    connect_args: dict[str, Any] = dict(NO_STATEMENT_CACHE)
    if how == "with BEGIN":
        connect_args["connection_class"] = TimeoutsWithBegin
    engine = create_async_engine(bouncer.url(pgbouncer_database), connect_args=connect_args)
    if how == "begin event":
        _set_local_in_begin_event(engine)
    table = f"lock_probe_{uuid.uuid4().hex[:8]}"
    holder = await asyncpg.connect(bouncer.dsn(pgbouncer_database), **NO_STATEMENT_CACHE)
    try:
        async with engine.connect() as connection:
            error, seconds = await _elapsed(connection.execute(text(f"SELECT pg_sleep({SLEEP})")))
            await connection.rollback()
        assert isinstance(_asyncpg_error(error), asyncpg.QueryCanceledError)
        assert seconds < SLEEP / 2

        await holder.execute(f"CREATE TABLE {table} (id int)")
        async with holder.transaction():
            await holder.execute(f"LOCK {table}")
            async with engine.connect() as connection:
                error, seconds = await _elapsed(connection.execute(text(f"SELECT * FROM {table}")))
                await connection.rollback()
        assert isinstance(_asyncpg_error(error), asyncpg.LockNotAvailableError)
        assert seconds < SLEEP / 2

        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await asyncio.sleep(LIMIT_MS / 1000 * 3)
            # The server ended the session; PgBouncer then closed the client.
            error, _ = await _elapsed(connection.execute(text("SELECT 1")))
        assert isinstance(error, DBAPIError)
        assert error.connection_invalidated
        assert "connection is closed" in str(error.orig)
    finally:
        await holder.execute(f"DROP TABLE IF EXISTS {table}")
        await holder.close()
        await engine.dispose()


async def test_set_local_costs_a_round_trip_unless_sent_with_begin(
    bouncer: PgBouncer, pgbouncer_database: str
) -> None:
    counter = RoundTripCounter(bouncer.port)
    costs: dict[str, int] = {}
    sent: dict[str, list[str]] = {}
    async with counter.running():
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{counter.port}/{pgbouncer_database}"
        for how in ("plain", "begin event", "with BEGIN"):
            connect_args: dict[str, Any] = dict(NO_STATEMENT_CACHE)
            if how == "with BEGIN":
                connect_args["connection_class"] = TimeoutsWithBegin
            engine = create_async_engine(url, connect_args=connect_args)
            if how == "begin event":
                _set_local_in_begin_event(engine)
            try:
                for _warm in range(2):  # the second one runs with every cache warm
                    counter.reset()
                    async with engine.begin() as connection:
                        await connection.execute(text("SELECT 1"))
                costs[how], sent[how] = counter.round_trips, counter.queries
            finally:
                await engine.dispose()
    # BEGIN, the statement, COMMIT.
    assert costs == {"plain": 3, "begin event": 4, "with BEGIN": 3}
    assert sent["with BEGIN"][0].startswith("BEGIN")
    assert "; SET LOCAL statement_timeout" in sent["with BEGIN"][0]


# -- defaults every server connection starts with -----------------------------------------


async def test_connect_query_bounds_autocommit_statements_in_transaction_mode(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(connect_query=f"SET statement_timeout = {LIMIT_MS}")
    client = await asyncpg.connect(bouncer.dsn(pgbouncer_database), **NO_STATEMENT_CACHE)
    try:
        error, seconds = await _elapsed(client.fetchval(f"SELECT pg_sleep({SLEEP})"))
    finally:
        await client.close()
    assert isinstance(error, asyncpg.QueryCanceledError)
    assert seconds < SLEEP / 2


async def test_connect_query_is_lost_after_discard_all_in_session_mode(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(
        pool_mode="session",
        default_pool_size=1,
        connect_query=f"SET statement_timeout = {LIMIT_MS}",
    )
    seen = []
    for _ in range(2):  # one server connection, two clients one after the other
        client = await asyncpg.connect(bouncer.dsn(pgbouncer_database))
        seen.append(await client.fetchval("SHOW statement_timeout"))
        await client.close()
    # server_reset_query (DISCARD ALL) resets what connect_query SET.
    assert seen[0] == f"{LIMIT_MS}ms"
    assert seen[1] != seen[0]


async def test_connect_query_makes_a_read_only_pool(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    # What default_transaction_read_only as a startup parameter did for the read engine.
    bouncer = start_pgbouncer(connect_query="SET default_transaction_read_only = on")
    client = await asyncpg.connect(bouncer.dsn(pgbouncer_database), **NO_STATEMENT_CACHE)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await client.execute("CREATE TEMPORARY TABLE refused (id int)")
    finally:
        await client.close()


@pytest.mark.parametrize("scope", ["ROLE", "DATABASE"])
@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
async def test_role_and_database_settings_hold_for_every_server_connection(
    start_pgbouncer: StartPgBouncer,
    postgresql_plaintext: PostgresCluster,
    pool_mode: str,
    scope: str,
) -> None:
    name = f"pooled_{pool_mode}_{scope.lower()}"
    postgresql_plaintext.psql(f"DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN")
    postgresql_plaintext.psql(f"DROP DATABASE IF EXISTS {name}")
    postgresql_plaintext.psql(f"CREATE DATABASE {name}")
    postgresql_plaintext.psql(
        f"ALTER {scope} {name} SET statement_timeout = {LIMIT_MS};"
        f"ALTER {scope} {name} SET idle_in_transaction_session_timeout = {LIMIT_MS}"
    )
    bouncer = start_pgbouncer(
        pool_mode=pool_mode,
        default_pool_size=1,
        target_port=postgresql_plaintext.port,
        users={name: ""},  # even trust wants the user listed
    )
    outcomes = []
    for _ in range(2):  # two clients on one server connection, DISCARD ALL between
        client = await asyncpg.connect(bouncer.dsn(name, name), **NO_STATEMENT_CACHE)
        try:
            outcomes.append(await _elapsed(client.fetchval(f"SELECT pg_sleep({SLEEP})")))
        finally:
            await client.close()
    assert all(isinstance(error, asyncpg.QueryCanceledError) for error, _ in outcomes)
    assert all(seconds < SLEEP / 2 for _, seconds in outcomes)


# -- PgBouncer's own limits, and the client's -----------------------------------------------


async def test_pgbouncer_query_timeout_drops_the_client_and_leaves_the_query_running(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(query_timeout=LIMIT_MS / 1000)
    marker = f"query_timeout_{uuid.uuid4().hex[:8]}"
    client = await asyncpg.connect(bouncer.dsn(pgbouncer_database), **NO_STATEMENT_CACHE)
    error, seconds = await _elapsed(client.fetchval(f"SELECT pg_sleep({SLEEP}) /* {marker} */"))
    still = await _running_on_server(bouncer, marker)
    assert isinstance(error, asyncpg.ConnectionDoesNotExistError)
    assert "query timeout" in str(error)
    assert seconds < SLEEP / 2
    assert client.is_closed()
    assert still == ["active"]


async def test_pgbouncer_idle_transaction_timeout_closes_the_client(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(idle_transaction_timeout=LIMIT_MS / 1000)
    client = await asyncpg.connect(bouncer.dsn(pgbouncer_database), **NO_STATEMENT_CACHE)
    await client.execute("BEGIN")
    await asyncio.sleep(LIMIT_MS / 1000 * 3)
    # Nothing tells the client until it sends again.
    with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
        await client.fetchval("SELECT 1")


async def test_asyncpg_command_timeout_cancels_the_server_query_through_pgbouncer(
    bouncer: PgBouncer, pgbouncer_database: str
) -> None:
    marker = f"command_timeout_{uuid.uuid4().hex[:8]}"
    client = await asyncpg.connect(
        bouncer.dsn(pgbouncer_database), command_timeout=LIMIT_MS / 1000, **NO_STATEMENT_CACHE
    )
    try:
        error, seconds = await _elapsed(client.fetchval(f"SELECT pg_sleep({SLEEP}) /* {marker} */"))
        # asyncpg waits for the cancel's outcome before it returns the connection.
        after = await client.fetchval("SELECT 1")
        states = await _running_on_server(bouncer, marker)
    finally:
        await client.close()
    assert isinstance(error, TimeoutError)
    assert seconds < SLEEP / 2
    assert after == 1
    assert "active" not in states
