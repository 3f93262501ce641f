"""Where the ledger's migrations are; fastapi-asyncdb runs them, one replica at a time."""

from __future__ import annotations

from pathlib import Path

from fastapi_asyncdb import Database, migrations

__all__ = ["ALEMBIC_INI", "downgrade", "upgrade"]

ALEMBIC_INI = Path(__file__).parent / "migrations" / "alembic.ini"


async def upgrade(database: Database, revision: str = "head") -> None:
    """Upgrade the started ``database`` to ``revision``; a no-op when already there."""
    await database.migrate(ALEMBIC_INI, revision)


async def downgrade(database: Database, revision: str) -> None:
    """Downgrade the started ``database`` to ``revision``, for an operator rolling back."""
    await migrations.downgrade(database.engine, database.backend, ALEMBIC_INI, revision)
