"""Create the `bench` database and fill TechEmpower's `world` and `fortune` tables, idempotently.

Run: .venv/bin/python -m bench.schema
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

from bench.config import BENCH_DB, BOOTSTRAP_DSN, WORLD_ROWS
from bench.pg import connect

FORTUNES: Final[tuple[tuple[int, str], ...]] = (
    (1, "fortune: No such file or directory"),
    (2, "A computer scientist is someone who fixes things that aren't broken."),
    (3, "After enough decimal points, nobody gives a damn."),
    (4, "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1"),
    (5, "A computer program does what you tell it to do, not what you want it to do."),
    (6, "Emacs is a nice operating system, but I prefer UNIX. \u2014 Tom Christaensen"),
    (7, "Any program that runs right is obsolete."),
    (8, "A list is only as strong as its weakest link. \u2014 Donald Knuth"),
    (9, "Feature: A bug with seniority."),
    (10, "Computers make very fast, very accurate mistakes."),
    (11, '<script>alert("This should not be displayed in a browser alert box.");</script>'),
    (12, "フレームワークのベンチマーク"),
)

_CREATE_TABLES: Final = """
CREATE TABLE IF NOT EXISTS world (
    id integer PRIMARY KEY,
    randomnumber integer NOT NULL
);
CREATE TABLE IF NOT EXISTS fortune (
    id integer PRIMARY KEY,
    message varchar(2048) NOT NULL
);
"""


async def ensure_database() -> None:
    """CREATE DATABASE cannot run in a transaction nor use IF NOT EXISTS: check first."""
    conn = await connect(BOOTSTRAP_DSN)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BENCH_DB)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    finally:
        await conn.close()


async def fill_tables() -> None:
    conn = await connect()
    try:
        async with conn.transaction():
            await conn.execute(_CREATE_TABLES)
            # Only the ids present are kept: updates change random numbers, never the row set.
            world_count = await conn.fetchval("SELECT count(*) FROM world")
            if world_count != WORLD_ROWS:
                await conn.execute("TRUNCATE world")
                await conn.copy_records_to_table(
                    "world",
                    records=[(i, random.randint(1, WORLD_ROWS)) for i in range(1, WORLD_ROWS + 1)],
                    columns=["id", "randomnumber"],
                )
            stored = await conn.fetch("SELECT id, message FROM fortune ORDER BY id")
            if [(r["id"], r["message"]) for r in stored] != list(FORTUNES):
                await conn.execute("TRUNCATE fortune")
                await conn.executemany(
                    "INSERT INTO fortune (id, message) VALUES ($1, $2)", FORTUNES
                )
        await conn.execute("ANALYZE world; ANALYZE fortune")
    finally:
        await conn.close()


async def prepare() -> None:
    await ensure_database()
    await fill_tables()


def main() -> None:
    asyncio.run(prepare())
    print(f"database {BENCH_DB!r} ready: world {WORLD_ROWS} rows, fortune {len(FORTUNES)} rows")


if __name__ == "__main__":
    main()
