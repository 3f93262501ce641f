"""Research: which asyncpg and SQLAlchemy settings work behind PgBouncer 1.18 transaction pooling.

Each test is an experiment against a real PgBouncer; its assertions are the findings.
The mechanism, read off asyncpg 0.32: with ``statement_cache_size=0`` asyncpg (and
SQLAlchemy's ``prepare()``, which leaves the name to asyncpg) uses the *unnamed*
statement, and marks it unprepared, so each execution sends Parse, Bind, Execute and
Sync in one message: whatever server connection PgBouncer picks has the statement.
A named statement (asyncpg's cache, or ``prepared_statement_name_func``) lives on one
server connection only, and the next Sync may move the client to another one.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .pgbouncer import PgBouncer
from .wire import RoundTripCounter

StartPgBouncer = Callable[..., PgBouncer]
NO_STATEMENT_CACHE = {"statement_cache_size": 0}
CLIENTS = 6


@pytest.fixture
def bouncer(start_pgbouncer: StartPgBouncer, pgbouncer_database: str) -> PgBouncer:
    """Fewer server connections than clients, so clients share them."""
    return start_pgbouncer(pool_mode="transaction", default_pool_size=2)


def _unique_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


# -- plain asyncpg ---------------------------------------------------------------------


async def test_asyncpg_statement_cache_fails_once_the_server_connection_changes(
    bouncer: PgBouncer, pgbouncer_database: str
) -> None:
    client = await asyncpg.connect(bouncer.dsn(pgbouncer_database))
    try:
        assert await client.fetchval("SELECT $1::int", 1) == 1
        # Server connections are replaced (server_lifetime, a restart of PostgreSQL...):
        bouncer.admin("RECONNECT")
        with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
            await client.fetchval("SELECT $1::int", 2)
    finally:
        await client.close()


_ONE_STATEMENT = """
import asyncio, sys
import asyncpg

async def main() -> None:
    connection = await asyncpg.connect(sys.argv[1])
    try:
        print(await connection.fetchval(sys.argv[2], 1))
    except asyncpg.PostgresError as error:
        print(type(error).__name__, error)
    finally:
        await connection.close()

asyncio.run(main())
"""


async def test_asyncpg_statement_names_collide_between_processes(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(default_pool_size=1)

    async def in_a_fresh_process(query: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _ONE_STATEMENT,
            bouncer.dsn(pgbouncer_database),
            query,
            stdout=asyncio.subprocess.PIPE,
        )
        output, _ = await process.communicate()
        return output.decode().strip()

    # asyncpg numbers statements per process, from 1: every worker process (and every
    # restart of the app) names its first statement alike, and the server connection
    # keeps the name after the client that prepared it has gone.
    assert await in_a_fresh_process("SELECT $1::int") == "1"
    second = await in_a_fresh_process("SELECT $1::text")
    assert second.startswith("DuplicatePreparedStatementError")
    assert '"__asyncpg_stmt_1__" already exists' in second


async def test_without_statement_cache_every_asyncpg_call_survives_server_changes(
    bouncer: PgBouncer, pgbouncer_database: str
) -> None:
    client = await asyncpg.connect(bouncer.dsn(pgbouncer_database), **NO_STATEMENT_CACHE)
    try:
        prepared = await client.prepare("SELECT $1::int * 10")
        results = []
        for number in range(3):
            bouncer.admin("RECONNECT")
            results.append(await client.fetchval("SELECT $1::int", number))
            results.append(await prepared.fetchval(number))
            await client.executemany("SELECT $1::int", [(number,), (number + 1,)])
        assert results == [0, 0, 1, 10, 2, 20]
        assert prepared.get_name() == ""
    finally:
        await client.close()


async def _random_client_work(
    client: asyncpg.Connection, rng: random.Random, rounds: int
) -> list[tuple[object, object]]:
    """Statements of different shapes, each with a result that names its input."""
    outcomes: list[tuple[object, object]] = []
    # Kept for the whole run, as a fast path would keep it: re-parsed at each use.
    kept = await client.prepare("SELECT $1::int - 1")
    for _ in range(rounds):
        value = rng.randrange(1_000_000)
        kind = rng.randrange(6)
        if kind == 0:
            outcomes.append((value, await client.fetchval("SELECT $1::int", value)))
        elif kind == 1:
            row = await client.fetchrow("SELECT $1::text AS t, 7 AS seven", str(value))
            outcomes.append((str(value), row["t"] if row else None))
        elif kind == 2:
            statement = await client.prepare("SELECT $1::bigint * 2")
            outcomes.append((value * 2, await statement.fetchval(value)))
        elif kind == 3:
            async with client.transaction():
                outcomes.append((value, await client.fetchval("SELECT $1::int + 0", value)))
        elif kind == 4:
            await client.executemany("SELECT $1::int, $2::text", [(value, "a"), (value, "b")])
            outcomes.append((value, value))
        else:
            outcomes.append((value - 1, await kept.fetchval(value)))
    return outcomes


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_unnamed_statements_stay_correct_with_more_clients_than_servers(
    bouncer: PgBouncer, pgbouncer_database: str, seed: int
) -> None:
    dsn = bouncer.dsn(pgbouncer_database)
    clients = [await asyncpg.connect(dsn, **NO_STATEMENT_CACHE) for _ in range(CLIENTS)]
    try:
        outcomes = await asyncio.gather(
            *(
                _random_client_work(client, random.Random(seed * 100 + index), 40)
                for index, client in enumerate(clients)
            )
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    pairs = [pair for client_outcomes in outcomes for pair in client_outcomes]
    assert len(pairs) == CLIENTS * 40
    assert all(expected == actual for expected, actual in pairs)


# -- SQLAlchemy's asyncpg dialect ----------------------------------------------------------

# name -> (connect_args, URL query, pool class, works behind transaction pooling)
VARIANTS: dict[str, tuple[dict[str, Any], str, str, bool]] = {
    "defaults": ({}, "", "queue", False),
    "statement_cache_size=0": (NO_STATEMENT_CACHE, "", "queue", True),
    "statement_cache_size=0, NullPool": (NO_STATEMENT_CACHE, "", "null", True),
    "statement_cache_size=0, prepared_statement_cache_size=0": (
        NO_STATEMENT_CACHE,
        "?prepared_statement_cache_size=0",
        "queue",
        True,
    ),
    "statement_cache_size=0, unique names": (
        {**NO_STATEMENT_CACHE, "prepared_statement_name_func": _unique_name},
        "",
        "queue",
        False,
    ),
    "unique names, prepared_statement_cache_size=0": (
        {"prepared_statement_name_func": _unique_name},
        "?prepared_statement_cache_size=0",
        "queue",
        False,
    ),
    "defaults, NullPool": ({}, "", "null", False),
}


def _engine(bouncer: PgBouncer, database: str, variant: str) -> AsyncEngine:
    connect_args, query, pool, _ = VARIANTS[variant]
    pooling: dict[str, Any] = (
        {"poolclass": NullPool} if pool == "null" else {"pool_size": CLIENTS, "max_overflow": 0}
    )
    return create_async_engine(bouncer.url(database) + query, connect_args=connect_args, **pooling)


# Unique names with SQLAlchemy's cache off fail only under concurrency (next test).
@pytest.mark.parametrize(
    "variant",
    [name for name in VARIANTS if name != "unique names, prepared_statement_cache_size=0"],
)
async def test_sqlalchemy_autocommit_read_after_the_server_connection_changes(
    bouncer: PgBouncer, pgbouncer_database: str, variant: str
) -> None:
    """The read engine's case: no transaction holds the server connection."""
    works = VARIANTS[variant][3]
    engine = _engine(bouncer, pgbouncer_database, variant)
    statement = text("SELECT CAST(:value AS int)")
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            assert (await connection.execute(statement, {"value": 1})).scalar() == 1
            bouncer.admin("RECONNECT")
            if works:
                assert (await connection.execute(statement, {"value": 2})).scalar() == 2
            else:
                with pytest.raises(DBAPIError, match=r"prepared statement .* does not exist"):
                    await connection.execute(statement, {"value": 2})
    finally:
        await engine.dispose()


async def _sqlalchemy_load(engine: AsyncEngine, dsn: str, rounds: int) -> tuple[int, list[str]]:
    """Autocommit reads, and transactions with a read and an executemany, from several
    tasks at once; returns (right answers, errors)."""
    right, errors = 0, []
    reader = engine.execution_options(isolation_level="AUTOCOMMIT")
    table = f"pgbouncer_research_{uuid.uuid4().hex[:8]}"
    # Set up and torn down outside the engine under test, which may fail any statement.
    admin = await asyncpg.connect(dsn, **NO_STATEMENT_CACHE)
    await admin.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, value int);"
        f"INSERT INTO {table} SELECT g, 0 FROM generate_series(0, {CLIENTS}) g"
    )
    update = text(f"UPDATE {table} SET value = :value WHERE id = :id")

    async def client(number: int) -> None:
        nonlocal right
        for step in range(rounds):
            statement = text(f"SELECT CAST(:value AS int) + {step % 3}")
            try:
                async with reader.connect() as connection:
                    result = await connection.execute(statement, {"value": number})
                    right += result.scalar() == number + step % 3
                async with engine.begin() as connection:
                    rows = [{"id": number, "value": step}, {"id": CLIENTS, "value": step}]
                    await connection.execute(update, rows)
                    result = await connection.execute(statement, {"value": number})
                    right += result.scalar() == number + step % 3
            except DBAPIError as error:
                errors.append(str(error.orig))

    try:
        await asyncio.gather(*(client(number) for number in range(CLIENTS)))
    finally:
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()
    return right, errors


@pytest.mark.parametrize(
    "variant",
    [
        "statement_cache_size=0",
        "statement_cache_size=0, NullPool",
        "statement_cache_size=0, prepared_statement_cache_size=0",
        "unique names, prepared_statement_cache_size=0",
    ],
)
async def test_sqlalchemy_under_load_with_more_clients_than_servers(
    bouncer: PgBouncer, pgbouncer_database: str, variant: str
) -> None:
    engine = _engine(bouncer, pgbouncer_database, variant)
    rounds = 30
    try:
        right, errors = await _sqlalchemy_load(engine, bouncer.dsn(pgbouncer_database), rounds)
    finally:
        await engine.dispose()
    if VARIANTS[variant][3]:
        assert (right, errors) == (CLIENTS * rounds * 2, [])
    else:
        # Named statements: asyncpg closes the last one (Close, Sync) between this one's
        # Parse and its Bind, and that Sync lets PgBouncer hand the server to another client.
        assert errors
        assert all("does not exist" in error for error in errors)


# -- what each setting costs, in round trips ---------------------------------------------


async def test_round_trips_per_statement_for_each_setting(
    bouncer: PgBouncer, pgbouncer_database: str
) -> None:
    counter = RoundTripCounter(bouncer.port)
    statements = 10
    costs: dict[str, int] = {}
    async with counter.running():
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{counter.port}/{pgbouncer_database}"
        for label, query in (
            ("sqlalchemy", ""),
            ("sqlalchemy, no cache", "?prepared_statement_cache_size=0"),
        ):
            engine = create_async_engine(url + query, connect_args=NO_STATEMENT_CACHE)
            try:
                async with engine.connect() as connection:
                    await connection.execution_options(isolation_level="AUTOCOMMIT")
                    statement = text("SELECT CAST(:value AS int)")
                    await connection.execute(statement, {"value": 0})
                    counter.reset()
                    for number in range(statements):
                        await connection.execute(statement, {"value": number})
                    costs[label] = counter.round_trips
                    driver = (await connection.get_raw_connection()).driver_connection
                    assert driver is not None
                    counter.reset()
                    for number in range(statements):
                        await driver.fetch("SELECT $1::int", number)
                    costs["asyncpg fetch"] = counter.round_trips
                    prepared = await driver.prepare("SELECT $1::int")
                    counter.reset()
                    for number in range(statements):
                        await prepared.fetch(number)
                    costs["asyncpg prepared once"] = counter.round_trips
                    counter.reset()
                    await driver.executemany("SELECT $1::int", [(n,) for n in range(statements)])
                    costs["asyncpg executemany"] = counter.round_trips
            finally:
                await engine.dispose()
    # One message per statement (Parse+Bind+Execute+Sync) where the row description is
    # already known; asking for it first (Parse+Describe+Flush) is a second round trip.
    assert costs == {
        "sqlalchemy": statements,
        "sqlalchemy, no cache": 2 * statements,
        "asyncpg fetch": 2 * statements,
        "asyncpg prepared once": statements,
        "asyncpg executemany": 2,
    }
