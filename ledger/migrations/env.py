"""Alembic environment: migrations run on fastapi-asyncdb's engine, configured from the env."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection

from fastapi_asyncdb import Database, DatabaseSettings
from ledger.models import Base

config = context.config
target_metadata = Base.metadata


def do_run_migrations(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=is_sqlite,
        # SQLite's DDL is transactional, though Alembic assumes not: one transaction for
        # the whole upgrade, so a failure leaves no revision half applied.
        transactional_ddl=True if is_sqlite else None,
        compare_type=True,
    )
    with _sqlite_foreign_keys_off(connection), context.begin_transaction():
        context.run_migrations()
        if is_sqlite:
            # Inside the transaction: a rebuild that lost a referenced row rolls back.
            orphans = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if orphans:
                raise RuntimeError(f"the migration broke {len(orphans)} foreign key(s)")


@contextmanager
def _sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite only: foreign keys unenforced while batch mode rebuilds tables.

    A rebuild drops the old table, and dropping a table that other rows reference fails
    while foreign keys are enforced, even though the copy is renamed into its place right
    after. SQLite ignores this pragma inside a transaction, so it is set on the driver's
    connection before Alembic begins one (SQLAlchemy's execute would begin it first).
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    if connection.in_transaction():
        raise RuntimeError("SQLite migrations must start outside a transaction")
    driver_connection = connection.connection.dbapi_connection
    assert driver_connection is not None
    _pragma(driver_connection, "PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        _pragma(driver_connection, "PRAGMA foreign_keys=ON")


def _pragma(driver_connection: Any, statement: str) -> None:
    cursor = driver_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


async def run_async_migrations() -> None:
    async with Database() as database, database.engine.connect() as connection:
        await connection.run_sync(do_run_migrations)


def run_migrations_offline() -> None:
    context.configure(
        url=DatabaseSettings().sqlalchemy_url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # ledger.migrate.upgrade hands over a connection from the running app's engine;
    # the alembic CLI has none and starts its own Database.
    connection = config.attributes.get("connection")
    if connection is None:
        if config.config_file_name is not None:
            fileConfig(config.config_file_name, disable_existing_loggers=False)
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
