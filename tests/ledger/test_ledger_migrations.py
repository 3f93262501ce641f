"""The Alembic migrations: they build the schema on an empty database, idempotently."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from fastapi_asyncdb import Database
from ledger.migrate import upgrade
from ledger.models import Base

ROOT = Path(__file__).resolve().parents[2]
HEAD = "0001"
MARIADB_CHECK_VIOLATION = 4025


async def _tables_and_version(database_url: str) -> tuple[set[str], list[str]]:
    async with Database(url=database_url) as database, database.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        versions: list[str] = []
        if "alembic_version" in tables:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            versions = list(result.scalars())
    return tables, versions


async def _run_cli(database_url: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ledger",
        *args,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_migrations_create_the_schema_on_an_empty_database(empty_database_url: str) -> None:
    assert await _tables_and_version(empty_database_url) == (set(), [])

    async with Database(url=empty_database_url) as database:
        await upgrade(database)
        await upgrade(database)

    tables, versions = await _tables_and_version(empty_database_url)
    assert tables == {"accounts", "transfers", "alembic_version"}
    assert versions == [HEAD]


async def test_migrate_command_twice_is_idempotent(empty_database_url: str) -> None:
    first_code, first_output = await _run_cli(empty_database_url, "migrate")
    second_code, second_output = await _run_cli(empty_database_url, "migrate")

    assert first_code == 0, first_output
    assert second_code == 0, second_output
    assert "Running upgrade  -> 0001" in first_output
    assert "Running upgrade" not in second_output
    tables, versions = await _tables_and_version(empty_database_url)
    assert tables == {"accounts", "transfers", "alembic_version"}
    assert versions == [HEAD]


async def test_migrated_schema_matches_the_models(empty_database_url: str) -> None:
    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with Database(url=empty_database_url) as database:
        await upgrade(database)
        async with database.engine.connect() as connection:
            diff = await connection.run_sync(differences)

    assert diff == []


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("INSERT INTO accounts (owner, balance) VALUES ('x', -1)", id="negative"),
        pytest.param(
            "INSERT INTO transfers (idempotency_key, request_hash, from_account, to_account,"
            " amount) VALUES ('k', 'h', 1, 1, 0)",
            id="zero-amount",
        ),
    ],
)
async def test_migrated_schema_itself_refuses_invalid_money(
    empty_database_url: str, statement: str
) -> None:
    async with Database(url=empty_database_url) as database:
        await upgrade(database)
        async with database.transaction() as session:
            await session.execute(text("INSERT INTO accounts (owner, balance) VALUES ('a', 5)"))
        with pytest.raises(DBAPIError) as refused:
            async with database.transaction() as session:
                await session.execute(text(statement))

    # MariaDB reports a CHECK violation as error 4025, which asyncmy raises as an
    # OperationalError rather than an IntegrityError.
    error = refused.value
    code = getattr(error.orig, "args", (None,))[0]
    assert isinstance(error, IntegrityError) or code == MARIADB_CHECK_VIOLATION
