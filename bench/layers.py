"""Where the time goes: client CPU per primary-key read, layer by layer, in one process.

Each layer adds one piece on top of the previous one, reading one random `world` row:
raw asyncpg, the SQLAlchemy engine with a text statement, Core `select()`, the ORM's
`session.get` in an autocommit session, and the same in the recipe's transaction
(BEGIN + SELECT + ROLLBACK); then fastapi-asyncdb's own read paths, each a whole unit
of work (gate, warm connection, statement, return), ``Prepared`` among them, with and
without statement tracing (OpenTelemetry's SQLAlchemy instrumentation on its engines,
the SDK set up by ``bench.apps.otel``). Then one write of 20 rows (the work
of `/updates`): asyncpg's `executemany` alone and in a transaction, the library's
session transaction and `run_statement`. CPU is `time.process_time()`, so waiting on
PostgreSQL is not counted; one query at a time.

Run: .venv/bin/python -m bench.layers [--reads 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from bench.apps.models import World
from bench.apps.otel import configure_tracing
from bench.config import SQLALCHEMY_URL, WORLD_ROWS
from bench.pg import connect
from fastapi_asyncdb import Database, Prepared

READ_SQL = "SELECT id, randomnumber FROM world WHERE id = $1"
WRITE_PREFIX = "write: "
Read = Callable[[int], Awaitable[object]]


async def _cpu_per_read(read: Read, reads: int) -> float:
    for _ in range(200):  # warm caches: statement cache, compiled cache, pool
        await read(random.randint(1, WORLD_ROWS))
    ids = [random.randint(1, WORLD_ROWS) for _ in range(reads)]
    began = time.process_time()
    for row_id in ids:
        await read(row_id)
    return (time.process_time() - began) * 1e6 / reads


async def _layers(
    raw: asyncpg.Connection,
    engine: AsyncEngine,
    autocommit: AsyncEngine,
    database: Database,
    traced: Database,
) -> dict[str, Read]:
    core_conn = await autocommit.connect()
    sessions = async_sessionmaker(autocommit, expire_on_commit=False)
    recipe_sessions = async_sessionmaker(engine)
    statement = text("SELECT id, randomnumber FROM world WHERE id = :id")

    async def asyncpg_fetchrow(row_id: int) -> object:
        return await raw.fetchrow(READ_SQL, row_id)

    async def engine_text(row_id: int) -> object:
        return (await core_conn.execute(statement, {"id": row_id})).one()

    async def core_select(row_id: int) -> object:
        return (await core_conn.execute(select(World.__table__).where(World.id == row_id))).one()

    async def orm_get_autocommit(row_id: int) -> object:
        async with sessions() as session:
            return await session.get(World, row_id)

    async def orm_get_recipe(row_id: int) -> object:
        async with recipe_sessions() as session:
            return await session.get(World, row_id)

    world_by_id = select(World.id, World.randomnumber).where(World.id == bindparam("id"))

    async def library_read_connection(row_id: int) -> object:
        async with database.read_connection() as connection:
            return (await connection.execute(world_by_id, {"id": row_id})).one()

    prepared_world_by_id = Prepared(world_by_id)

    async def library_prepared(row_id: int) -> object:
        async with database.read_connection() as connection:
            return await prepared_world_by_id.one(connection, {"id": row_id})

    async def library_prepared_traced(row_id: int) -> object:
        async with traced.read_connection() as connection:
            return await prepared_world_by_id.one(connection, {"id": row_id})

    async def library_read_session(row_id: int) -> object:
        async with database.read_session() as session:
            return await session.get(World, row_id)

    return {
        "asyncpg fetchrow": asyncpg_fetchrow,
        "engine + text (autocommit)": engine_text,
        "engine + Core select (autocommit)": core_select,
        "ORM session.get, new session (autocommit)": orm_get_autocommit,
        "ORM session.get, new session (recipe: BEGIN/ROLLBACK)": orm_get_recipe,
        "fastapi-asyncdb read_connection() + Core select built once": library_read_connection,
        "fastapi-asyncdb read_connection() + Prepared": library_prepared,
        "fastapi-asyncdb read_connection() + Prepared, statements traced": library_prepared_traced,
        "fastapi-asyncdb read_session() + session.get": library_read_session,
    }


WRITE_ROWS = 20
WRITE_SQL = "UPDATE world SET randomnumber = $2 WHERE id = $1"
SET_NUMBER = (
    update(World).where(World.id == bindparam("world_id")).values(randomnumber=bindparam("number"))
)


def _new_numbers() -> list[tuple[int, int]]:
    ids = sorted(random.sample(range(1, WORLD_ROWS + 1), WRITE_ROWS))
    return [(row_id, random.randint(1, WORLD_ROWS)) for row_id in ids]


def _write_layers(raw: asyncpg.Connection, database: Database) -> dict[str, Read]:
    """One write of 20 rows, the work of `/updates`, each way there is to send it."""

    async def asyncpg_executemany(_: int) -> object:
        return await raw.executemany(WRITE_SQL, _new_numbers())

    async def asyncpg_transaction(_: int) -> object:
        async with raw.transaction():
            return await raw.executemany(WRITE_SQL, _new_numbers())

    def rows() -> list[dict[str, int]]:
        return [{"world_id": row_id, "number": n} for row_id, n in _new_numbers()]

    async def library_transaction(_: int) -> object:
        async with database.transaction() as session:
            # On the session's connection: Core's executemany, not the ORM's bulk update.
            connection = await session.connection()
            return await connection.execute(SET_NUMBER, rows())

    async def library_run_statement(_: int) -> object:
        await database.run_statement(SET_NUMBER, rows())
        return None

    return {
        "asyncpg executemany (its own implicit transaction)": asyncpg_executemany,
        "asyncpg BEGIN + executemany + COMMIT": asyncpg_transaction,
        "fastapi-asyncdb transaction() + executemany (as SessionDep)": library_transaction,
        "fastapi-asyncdb run_statement": library_run_statement,
    }


async def measure(reads: int) -> dict[str, float]:
    engine = create_async_engine(SQLALCHEMY_URL, pool_size=2, max_overflow=0)
    autocommit = create_async_engine(
        SQLALCHEMY_URL, pool_size=2, max_overflow=0, isolation_level="AUTOCOMMIT"
    )
    raw = await connect()
    try:
        async with (
            Database(url=SQLALCHEMY_URL, pool_size=2, max_overflow=0) as database,
            Database(url=SQLALCHEMY_URL, pool_size=2, max_overflow=0) as traced,
        ):
            configure_tracing()
            SQLAlchemyInstrumentor().instrument(
                engines=[traced.engine.sync_engine, traced.read_engine.sync_engine],
                skip_dep_check=True,  # it declares SQLAlchemy < 2.1
            )
            layers = await _layers(raw, engine, autocommit, database, traced)
            results = {name: await _cpu_per_read(read, reads) for name, read in layers.items()}
            writes = _write_layers(raw, database)
            # Fewer: a write costs about ten reads. Keyed apart from the reads.
            for name, write in writes.items():
                results[WRITE_PREFIX + name] = await _cpu_per_read(write, max(reads // 10, 50))
            return results
    finally:
        await raw.close()
        await engine.dispose()
        await autocommit.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__)
    parser.add_argument("--reads", type=int, default=3000)
    args = parser.parse_args()
    results = asyncio.run(measure(args.reads))
    base = results["asyncpg fetchrow"]
    write_base = results[WRITE_PREFIX + "asyncpg executemany (its own implicit transaction)"]
    for name, micros in results.items():
        if name.startswith(WRITE_PREFIX):
            label = f"us CPU/write of {WRITE_ROWS} rows  {micros / write_base:5.1f}x"
            print(f"{micros:8.1f} {label}  {name.removeprefix(WRITE_PREFIX)}", flush=True)
        else:
            print(f"{micros:8.1f} us CPU/read  {micros / base:5.1f}x  {name}", flush=True)


if __name__ == "__main__":
    main()
