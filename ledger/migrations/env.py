"""Alembic environment: migrations run on fastapi-asyncdb's engine, configured from the env."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from fastapi_asyncdb import Database, DatabaseSettings
from ledger.models import Base

config = context.config
target_metadata = Base.metadata


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


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
