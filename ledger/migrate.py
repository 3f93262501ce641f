"""Bring the schema to the newest Alembic revision, through the Database's own engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from fastapi_asyncdb import Database

__all__ = ["alembic_config", "downgrade", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"

# Any constant works; it only has to be the same for every replica of the service.
_PG_LOCK_ID = 0x1ED6E5
_MYSQL_LOCK_NAME = "ledger_migrations"
_MYSQL_LOCK_TIMEOUT_SECONDS = 60


def alembic_config() -> Config:
    """The configuration of ledger/migrations/alembic.ini, wherever the process runs from."""
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(database: Database, revision: str = "head") -> None:
    """Upgrade the started ``database`` to ``revision``; a no-op when already there."""
    async with database.engine.connect() as connection:
        await connection.run_sync(_migrate, command.upgrade, revision)


async def downgrade(database: Database, revision: str) -> None:
    """Downgrade the started ``database`` to ``revision``, for an operator rolling back."""
    async with database.engine.connect() as connection:
        await connection.run_sync(_migrate, command.downgrade, revision)


def _migrate(
    connection: Connection, alembic_command: Callable[[Config, str], None], revision: str
) -> None:
    # Replicas starting together would otherwise race to create the same tables.
    # SQLite needs no lock: its write transactions (BEGIN IMMEDIATE) already serialize.
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _PG_LOCK_ID})
    elif dialect in ("mysql", "mariadb"):
        acquired = connection.execute(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": _MYSQL_LOCK_NAME, "timeout": _MYSQL_LOCK_TIMEOUT_SECONDS},
        ).scalar()
        if acquired != 1:
            raise TimeoutError("another process holds the migration lock")
    # Session-level locks outlive transactions; commit so Alembic starts its own.
    connection.commit()
    try:
        config = alembic_config()
        config.attributes["connection"] = connection
        alembic_command(config, revision)
    finally:
        if dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _PG_LOCK_ID})
        elif dialect in ("mysql", "mariadb"):
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK_NAME})
        connection.commit()
