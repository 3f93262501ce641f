"""What the ledger's tables hold, read from outside any test's transaction."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

LEDGER_TABLES = ("accounts", "transfers")


async def ledger_rows(url: str) -> dict[str, int]:
    """How many rows each ledger table holds, read on a connection of its own."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return {
                table: (
                    await connection.execute(text(f"SELECT count(*) FROM {table}"))
                ).scalar_one()
                for table in LEDGER_TABLES
            }
    finally:
        await engine.dispose()
