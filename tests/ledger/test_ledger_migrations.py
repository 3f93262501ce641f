"""The Alembic migrations: they build the schema on an empty database, idempotently."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from fastapi_asyncdb import Database
from fastapi_asyncdb.migrations import alembic_config
from ledger.migrate import ALEMBIC_INI, downgrade, upgrade
from ledger.models import Base
from ledger.schemas import MAX_CENTS
from tests.conftest import prepare_server

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ScriptDirectory.from_config(alembic_config(ALEMBIC_INI))
HEAD = SCRIPTS.get_current_head()
# Oldest first: every revision, so each step is run by the tests below.
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]
FIRST = REVISIONS[0]
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
    for revision in REVISIONS:
        assert f"-> {revision}," in first_output
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
            f"INSERT INTO accounts (owner, balance) VALUES ('x', {MAX_CENTS + 1})",
            id="past-the-maximum",
        ),
        pytest.param(
            f"UPDATE accounts SET balance = balance + {MAX_CENTS}", id="credit-past-the-maximum"
        ),
        pytest.param(
            "INSERT INTO transfers (idempotency_key, request_hash, from_account, to_account,"
            " amount) VALUES ('k', 'h', 1, 1, 0)",
            id="zero-amount",
        ),
        pytest.param(
            "INSERT INTO transfers (idempotency_key, request_hash, from_account, to_account,"
            " amount) VALUES ('k', 'h', 1, 9999, 1)",
            id="unknown-account",
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


async def _rows(database: Database) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    async with database.engine.connect() as connection:
        accounts = await connection.execute(
            text("SELECT id, owner, balance FROM accounts ORDER BY id")
        )
        transfers = await connection.execute(
            text(
                "SELECT id, idempotency_key, from_account, to_account, amount"
                " FROM transfers ORDER BY id"
            )
        )
        return [tuple(row) for row in accounts], [tuple(row) for row in transfers]


async def _version(database: Database) -> str:
    async with database.engine.connect() as connection:
        return str(
            (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        )


async def test_upgrade_from_the_first_revision_keeps_every_row(empty_database_url: str) -> None:
    async with Database(url=empty_database_url) as database:
        await upgrade(database, FIRST)
        async with database.transaction() as session:
            await session.execute(
                text("INSERT INTO accounts (owner, balance) VALUES (:owner, :balance)"),
                [
                    {"owner": "Zoë 🎉", "balance": MAX_CENTS},
                    {"owner": "bob", "balance": 0},
                    {"owner": "carol", "balance": 2**32},
                ],
            )
            await session.execute(
                text(
                    "INSERT INTO transfers (idempotency_key, request_hash, from_account,"
                    " to_account, amount) VALUES ('k1', 'h', 1, 2, 5), ('k2', 'h', 3, 1, 7)"
                )
            )
        before = await _rows(database)

        await upgrade(database)

        assert await _rows(database) == before
        assert await _version(database) == HEAD


async def test_upgrade_refuses_a_balance_past_the_maximum_and_says_what_to_do(
    empty_database_url: str,
) -> None:
    async with Database(url=empty_database_url) as database:
        await upgrade(database, FIRST)
        async with database.transaction() as session:
            await session.execute(
                text("INSERT INTO accounts (owner, balance) VALUES ('x', :balance)"),
                {"balance": MAX_CENTS + 1},
            )
        before = await _rows(database)

        with pytest.raises(RuntimeError, match=r"1 account\(s\) hold more than .* move the excess"):
            await upgrade(database)

        assert await _version(database) == FIRST
        assert await _rows(database) == before


async def test_downgrade_then_upgrade_comes_back_to_the_models(empty_database_url: str) -> None:
    async with Database(url=empty_database_url) as database:
        await upgrade(database)
        await downgrade(database, FIRST)
        # The first revision had no maximum.
        async with database.transaction() as session:
            await session.execute(
                text("INSERT INTO accounts (owner, balance) VALUES ('x', :balance)"),
                {"balance": MAX_CENTS + 1},
            )
            await session.execute(text("DELETE FROM accounts"))

        await upgrade(database)

        async with database.engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: list(
                    compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}),
                        Base.metadata,
                    )
                )
            )
    assert diff == []
    assert await _tables_and_version(empty_database_url) == (
        {"accounts", "transfers", "alembic_version"},
        [HEAD],
    )


@pytest.fixture
def mariadb_url() -> str:
    """A MariaDB database of this test's own, whatever the ledger_backend under test."""
    return prepare_server("mysql", "ledger_latin1")


async def test_mariadb_stores_any_owner_even_where_the_database_defaults_to_latin1(
    mariadb_url: str,
) -> None:
    url = mariadb_url
    owner = "Zoë 🎉 日本"
    async with Database(url=url) as database:
        async with database.engine.connect() as connection:
            name = connection.dialect.identifier_preparer.quote(str(make_url(url).database))
            await connection.execute(text(f"ALTER DATABASE {name} CHARACTER SET latin1"))
        await upgrade(database)
        async with database.transaction() as session:
            await session.execute(
                text("INSERT INTO accounts (owner, balance) VALUES (:owner, 0)"), {"owner": owner}
            )
        async with database.engine.connect() as connection:
            stored = (await connection.execute(text("SELECT owner FROM accounts"))).scalar_one()

    assert stored == owner
