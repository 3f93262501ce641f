"""The PgBouncer fixture runs a real PgBouncer that behaves as configured."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from .pgbouncer import PgBouncer

StartPgBouncer = Callable[..., PgBouncer]
# Behind transaction pooling asyncpg must not reuse named statements (see the research tests).
NO_STATEMENT_CACHE = {"statement_cache_size": 0}


async def _backend_pids(connection: asyncpg.Connection, transactions: int) -> list[int]:
    pids = []
    for _ in range(transactions):
        async with connection.transaction():
            pids.append(await connection.fetchval("SELECT pg_backend_pid()"))
    return pids


async def test_transaction_pool_serves_more_clients_than_server_connections(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    dsn = pgbouncer_transaction.dsn(pgbouncer_database)
    clients = [await asyncpg.connect(dsn, **NO_STATEMENT_CACHE) for _ in range(6)]
    try:
        pids = await asyncio.gather(*(_backend_pids(client, 5) for client in clients))
        pools = pgbouncer_transaction.pools(pgbouncer_database)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    server_connections = {pid for client_pids in pids for pid in client_pids}
    assert len(server_connections) <= pgbouncer_transaction.config.default_pool_size
    assert [pool["pool_mode"] for pool in pools] == ["transaction"]
    assert int(pools[0]["cl_active"]) + int(pools[0]["cl_waiting"]) == len(clients)


async def test_session_pool_gives_each_client_its_own_server_connection(
    pgbouncer_session: PgBouncer, pgbouncer_database: str
) -> None:
    dsn = pgbouncer_session.dsn(pgbouncer_database)
    first, second = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        first_pids, second_pids = await _backend_pids(first, 3), await _backend_pids(second, 3)
        pools = pgbouncer_session.pools(pgbouncer_database)
    finally:
        await first.close()
        await second.close()
    assert len(set(first_pids)) == len(set(second_pids)) == 1
    assert set(first_pids) != set(second_pids)
    assert [pool["pool_mode"] for pool in pools] == ["session"]


async def test_show_clients_and_stats_count_this_client(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    # Totals in SHOW STATS are published once per stats_period.
    bouncer = start_pgbouncer(extra={"stats_period": "1"})
    client = await asyncpg.connect(
        bouncer.dsn(pgbouncer_database),
        server_settings={"application_name": "fixture-probe"},
        **NO_STATEMENT_CACHE,
    )
    try:
        queries = 7
        for number in range(queries):
            await client.fetchval("SELECT $1::int", number)
        clients = bouncer.admin("SHOW CLIENTS")
        stats = await _stats_once_published(bouncer, pgbouncer_database)
    finally:
        await client.close()
    assert "fixture-probe" in {row["application_name"] for row in clients}
    assert int(stats["total_query_count"]) >= queries


async def _stats_once_published(bouncer: PgBouncer, database: str) -> dict[str, str]:
    for _ in range(40):
        rows = [row for row in bouncer.admin("SHOW STATS") if row["database"] == database]
        if rows and int(rows[0]["total_query_count"]) > 0:
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError("SHOW STATS never counted a query")


async def test_restart_keeps_the_port_and_closes_the_old_clients(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    dsn = pgbouncer_transaction.dsn(pgbouncer_database)
    before = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    port = pgbouncer_transaction.port
    pgbouncer_transaction.restart()
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await before.fetchval("SELECT 1")
    after = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    try:
        assert pgbouncer_transaction.port == port
        assert await after.fetchval("SELECT 1") == 1
    finally:
        await after.close()


async def test_pause_holds_queries_until_resume(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    client = await asyncpg.connect(
        pgbouncer_transaction.dsn(pgbouncer_database), **NO_STATEMENT_CACHE
    )
    try:
        await client.fetchval("SELECT 1")
        pgbouncer_transaction.admin("PAUSE")
        held = asyncio.ensure_future(client.fetchval("SELECT 2"))
        await asyncio.sleep(0.3)
        waiting = pgbouncer_transaction.pools(pgbouncer_database)[0]["cl_waiting"]
        assert not held.done()
        pgbouncer_transaction.admin("RESUME")
        assert await asyncio.wait_for(held, 5) == 2
    finally:
        await client.close()
    assert waiting == "1"


def test_reconfigure_reloads_the_pool_size(pgbouncer_transaction: PgBouncer) -> None:
    def configured() -> str:
        rows = pgbouncer_transaction.admin("SHOW CONFIG")
        return next(row["value"] for row in rows if row["key"] == "default_pool_size")

    before = configured()
    pgbouncer_transaction.reconfigure(default_pool_size=int(before) + 3)
    assert int(configured()) == int(before) + 3


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
async def test_password_auth_checks_the_userlist(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, auth_type: str
) -> None:
    bouncer = start_pgbouncer(
        auth_type=auth_type, users={"app": "app-secret"}, server_user="postgres"
    )
    client = await asyncpg.connect(
        bouncer.dsn(pgbouncer_database, "app", "app-secret"), **NO_STATEMENT_CACHE
    )
    try:
        # PgBouncer logs in to the server as the configured user, whoever the client is.
        assert await client.fetchval("SELECT current_user") == "postgres"
    finally:
        await client.close()
    # PgBouncer reports a wrong password as 08P01, not PostgreSQL's 28P01.
    with pytest.raises(
        asyncpg.ProtocolViolationError, match=r"(password|SASL) authentication failed"
    ):
        await asyncpg.connect(bouncer.dsn(pgbouncer_database, "app", "wrong"))


async def test_startup_parameters_are_refused_unless_ignored(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    parameter = {"client_connection_check_interval": "1000"}
    strict = start_pgbouncer()
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter"):
        await asyncpg.connect(strict.dsn(pgbouncer_database), server_settings=parameter)
    lenient = start_pgbouncer(
        ignore_startup_parameters=("extra_float_digits", "client_connection_check_interval")
    )
    client = await asyncpg.connect(
        lenient.dsn(pgbouncer_database), server_settings=parameter, **NO_STATEMENT_CACHE
    )
    try:
        # Ignored means dropped: the server never saw it.
        assert await client.fetchval("SHOW client_connection_check_interval") == "0"
    finally:
        await client.close()
